//! The memory budget, after Linux's `tcp_mem`: how much TCP buffer memory
//! the stack may have backed by the kernel, and how many connections it
//! may hold (`StackConfig::max_memory`, `StackConfig::max_connections`).
//!
//! **What is counted.** A connection's *charge* is the number of pages of
//! its two ring buffers that may be backed now: the pages the octets
//! written into them since they were last handed back (`madvise`) can have
//! touched. It is an upper bound computed from what the stack sees (the
//! peer's sequence numbers, the octets the application queued), never by
//! asking the kernel, and `Stack::check_invariants` checks it against
//! `mincore(2)`. Each connection also has a *reserve* of one page each
//! way (Linux's `tcp_rmem[0]` and `tcp_wmem[0]`), so it can always make
//! progress; the budget counts every connection at its charge or its
//! reserve, whichever is larger (*committed*). Not counted: the per
//! connection structures (the smoltcp socket, the slab slot, the port
//! table entry: about 1.5 KiB each, bounded by `max_connections`), TIME-WAIT
//! records (bounded by `PortTableConfig::max_time_wait`), UDP buffers,
//! packets queued for the driver, and the heap's own overhead.
//!
//! **The buffer pool's pages.** Chunks the pool keeps warm, and chunks
//! leased again from its warm cache until they are shrunk, carry pages
//! earlier connections left backed (`buffer_pool`'s residual). The
//! budget counts them as the pool's, in committed and charged memory both,
//! beside the connections' own charges (a page counted twice is allowed:
//! the figures are upper bounds). The pool keeps a chunk warm only while
//! that stays below the soft mark, and gives every warm chunk back once
//! the stack is under pressure.
//!
//! **The marks.** `limit` is `max_memory`; `pressure` is two thirds of
//! it (Linux's `tcp_mem[1]` to `tcp_mem[2]`).
//! - Below `pressure` a connection grows as its traffic needs.
//! - From `pressure` on, no connection grows past its reserve: received
//!   octets that would are dropped (counted; the peer sends them again),
//!   `send` takes only what fits; new connections get rings of one page
//!   each way ([`PRESSURE_RING`]), and idle buffers go back to the kernel
//!   as soon as they are empty instead of after `shrink_idle_after`.
//! - A new connection opens only while its reserve fits under `limit`
//!   and fewer than `max_connections` exist; beyond that SYNs are dropped
//!   and `connect` fails with ENOBUFS, both counted. Connections already
//!   open keep working within what they hold.
//!
//! So committed memory never exceeds `limit`, and the room between the
//! marks is kept for the reserves of new connections: a fresh client is
//! served until `(limit − pressure) / 8 KiB` connections have opened under
//! pressure.

use crate::buffer_pool::{Residual, PAGE};

/// Pages every connection may always hold: one each way.
const RESERVE_PAGES: u32 = 2;

/// Ring size of a connection opened under memory pressure (Linux clamps
/// to `tcp_rmem[0]` / `tcp_wmem[0]`, 4 KiB).
pub(crate) const PRESSURE_RING: usize = PAGE;

/// The smallest `StackConfig::max_memory`: room for a few connections'
/// reserves.
pub(crate) const MIN_MEMORY: usize = 64 * 1024;

/// The sizes of a connection's two ring buffers, laid out in its chunk as
/// the buffer pool cuts them: the receive ring at offset 0, the send ring
/// right after it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rings {
    /// Receive ring, octets.
    pub rx: usize,
    /// Send ring, octets.
    pub tx: usize,
}

impl Rings {
    /// Pages the two rings span.
    pub(crate) fn span(self) -> u32 {
        pages(self.rx + self.tx)
    }

    /// Pages the connection may always hold.
    pub(crate) fn reserve(self) -> u32 {
        RESERVE_PAGES.min(self.span())
    }

    /// Pages of the receive ring that `len` octets from ring offset
    /// `start` (wrapping) touch; `start` unknown, the most any `len`
    /// octets can touch.
    fn rx_pages(self, start: Option<usize>, len: usize) -> u32 {
        let all = pages(self.rx);
        if len == 0 {
            return 0;
        }
        if len >= self.rx {
            return all;
        }
        let touched = match start {
            Some(s) if s + len <= self.rx => pages(s + len) - (s / PAGE) as u32,
            Some(s) => (all - (s / PAGE) as u32) + pages(s + len - self.rx),
            // An unaligned run, possibly wrapped: two partial pages more.
            None => pages(len) + 2,
        };
        touched.min(all)
    }

    /// Pages of the send ring that `written` octets queued since it was
    /// last empty and handed back touch. smoltcp starts writing an empty
    /// send ring at its offset 0, so they lie in its first `written`
    /// octets (all of it once they wrap).
    fn tx_pages(self, written: usize) -> u32 {
        if written == 0 {
            return 0;
        }
        let end = self.rx + written.min(self.tx);
        pages(end) - (self.rx / PAGE) as u32
    }
}

fn pages(octets: usize) -> u32 {
    u32::try_from(octets.div_ceil(PAGE)).unwrap_or(u32::MAX)
}

/// One connection's use of the budget.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MemUse {
    /// The sequence number where the receive ring's touched run begins:
    /// RCV.NXT when its pages were last handed back (at first, the peer's
    /// ISN + 1).
    pub rx_base: u32,
    /// Octets the application queued since the send ring's pages were
    /// last handed back (saturating).
    pub tx_written: u32,
    /// Pages charged now.
    pub charge: u32,
}

impl MemUse {
    /// The charge with the receive ring filled up to `rx_end` (the
    /// sequence number past the last octet smoltcp may have stored) and
    /// `tx_written` octets queued; `isn` is the peer's ISN, if known (no
    /// data is received before it).
    ///
    /// smoltcp stores octet `s` at ring offset `(s − ISN − 1) mod size`:
    /// its read position only moves by what the application reads. So for
    /// a ring whose size divides 2^32 (a power of two: the default and
    /// pressure sizes), the touched pages are known exactly; for others,
    /// two partial pages are added.
    pub(crate) fn charge_for(
        &self,
        rings: Rings,
        isn: Option<u32>,
        rx_end: u32,
        tx_written: u32,
    ) -> u32 {
        let (start, len) = match isn {
            None => (None, 0),
            Some(isn) => {
                let len = (rx_end.wrapping_sub(self.rx_base) as i32).max(0) as usize;
                let start = rings.rx.is_power_of_two().then(|| {
                    self.rx_base.wrapping_sub(isn).wrapping_sub(1) as usize & (rings.rx - 1)
                });
                (start, len)
            }
        };
        let touched = rings.rx_pages(start, len) + rings.tx_pages(tx_written as usize);
        touched.min(rings.span())
    }

    /// Octets the application may queue now, beyond what it has, without
    /// the charge passing `allowed` pages (receive side as it is, up to
    /// `rx_end`); `usize::MAX` when even a full send ring fits.
    pub(crate) fn tx_room(
        &self,
        rings: Rings,
        isn: Option<u32>,
        rx_end: u32,
        allowed: u32,
    ) -> usize {
        if self.charge_for(rings, isn, rx_end, u32::MAX) <= allowed {
            return usize::MAX;
        }
        let rx = self.charge_for(rings, isn, rx_end, 0);
        let tx_pages = allowed.saturating_sub(rx) as usize;
        // The send ring's first `w` octets reach offset `rings.rx + w` of
        // the chunk, from the page the ring starts in.
        let reach = (rings.rx / PAGE + tx_pages) * PAGE;
        reach
            .saturating_sub(rings.rx)
            .saturating_sub(self.tx_written as usize)
    }

    /// Pages of the chunk (in chunk pages: the receive ring from 0, the
    /// send ring after it) that the connection may have written since its
    /// pages were last handed back, on the same reasoning as
    /// [`charge_for`](Self::charge_for): the receive ring filled up to
    /// `rx_end` from the run that starts at `rx_base`, wrapping, and the
    /// send ring's first `tx_written` octets. `isn` is the peer's ISN, if
    /// known. A receive ring whose offsets are not known exactly (its size
    /// not a power of two of at least a page) counts whole.
    pub(crate) fn touched(&self, rings: Rings, isn: Option<u32>, rx_end: u32) -> Residual {
        if self.charge == 0 {
            return Residual::EMPTY;
        }
        let tx = if self.tx_written == 0 {
            Residual::EMPTY
        } else {
            let first = (rings.rx / PAGE) as u32;
            Residual::run(first, first + rings.tx_pages(self.tx_written as usize))
        };
        let rx = match isn {
            None => Residual::EMPTY,
            Some(isn) if rings.rx.is_power_of_two() && rings.rx >= PAGE => {
                let ring = (rings.rx / PAGE) as u32;
                let offset =
                    self.rx_base.wrapping_sub(isn).wrapping_sub(1) as usize & (rings.rx - 1);
                let len = (rx_end.wrapping_sub(self.rx_base) as i32).max(0) as usize;
                let start = (offset / PAGE) as u32;
                let end = start + rings.rx_pages(Some(offset), len);
                let head = Residual::run(start, end.min(ring));
                let wrapped = Residual::run(0, end.saturating_sub(ring));
                head.union(&wrapped).expect("two runs fit")
            }
            Some(_) => Residual::run(0, pages(rings.rx)),
        };
        rx.union(&tx).expect("three runs fit")
    }

    /// The pages were handed back: nothing is charged, and the touched
    /// runs start again at `rcv_nxt` and the send ring's start.
    pub(crate) fn shrunk(&mut self, rcv_nxt: u32) {
        self.rx_base = rcv_nxt;
        self.tx_written = 0;
        self.charge = 0;
    }
}

/// Why no new connection may open.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` are open.
    Connections,
    /// The budget has no room for another connection's reserve.
    Memory,
}

/// The stack's budget: the marks, and what all connections hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Pages: the hard mark.
    limit: usize,
    /// Pages: the soft mark.
    pressure: usize,
    /// Pages: every connection at its charge or its reserve.
    committed: usize,
    /// Pages: every connection's charge.
    charged: usize,
    /// Pages: what the buffer pool holds beyond the connections' charges
    /// (warm chunks, and the residual of chunks leased from them).
    pool: usize,
    /// Pages: of `pool`, the warm chunks'.
    warm: usize,
    /// TCP connections.
    connections: usize,
    max_connections: usize,
}

/// A stack's memory budget and its use ([`Stack::budget`](crate::Stack::budget)).
/// Sizes in octets, whole pages.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BudgetUse {
    /// The hard mark, `StackConfig::max_memory`: committed memory never
    /// exceeds it, and no connection opens beyond it.
    pub limit: usize,
    /// The soft mark, two thirds of the limit: above it connections stop
    /// growing, new ones get one page each way, idle buffers go back at
    /// once.
    pub pressure: usize,
    /// Committed: every connection at its charge, or its reserve of one
    /// page each way if that is larger.
    pub committed: usize,
    /// Charged: ring-buffer memory that may be backed now, an upper bound
    /// of the TCP buffer memory resident (connection structures, TIME-WAIT
    /// records and UDP buffers are not included).
    pub charged: usize,
    /// Of committed and charged memory, what the buffer pool keeps warm:
    /// buffers of closed connections, still backed, for the next ones
    /// (at most 2 MiB, and none under pressure).
    pub warm: usize,
    /// TCP connections open (half-open and closing ones too).
    pub connections: usize,
    /// `StackConfig::max_connections`.
    pub max_connections: usize,
}

impl BudgetUse {
    /// Whether the stack is under memory pressure (committed at or above
    /// the soft mark).
    pub fn under_pressure(&self) -> bool {
        self.committed >= self.pressure
    }
}

impl Budget {
    /// A budget of `max_memory` octets and `max_connections` connections.
    pub(crate) fn new(max_memory: usize, max_connections: usize) -> Budget {
        let limit = max_memory / PAGE;
        Budget {
            limit,
            pressure: limit / 3 * 2 + limit % 3 * 2 / 3,
            committed: 0,
            charged: 0,
            pool: 0,
            warm: 0,
            connections: 0,
            max_connections,
        }
    }

    /// Whether committed memory has reached the soft mark.
    #[inline]
    pub(crate) fn under_pressure(&self) -> bool {
        self.committed + self.pool >= self.pressure
    }

    /// Pages the buffer pool may add to what it holds and stay below the
    /// soft mark; `None` under pressure, when it keeps nothing warm.
    pub(crate) fn pool_room(&self) -> Option<usize> {
        // Below the soft mark, `pressure - 1 - held` cannot underflow.
        (!self.under_pressure()).then(|| self.pressure - 1 - (self.committed + self.pool))
    }

    /// The buffer pool now holds `pool` pages beyond the connections'
    /// charges, `warm` of them in warm chunks.
    #[inline]
    pub(crate) fn set_pool(&mut self, pool: usize, warm: usize) {
        self.pool = pool;
        self.warm = warm;
    }

    /// The rings a new connection gets: the `configured` ones, or under
    /// pressure at most a page each way.
    pub(crate) fn rings(&self, configured: Rings) -> Rings {
        if self.under_pressure() {
            Rings {
                rx: configured.rx.min(PRESSURE_RING),
                tx: configured.tx.min(PRESSURE_RING),
            }
        } else {
            configured
        }
    }

    /// Whether a connection with rings `rings` may open now.
    pub(crate) fn admit(&self, rings: Rings) -> Result<(), Refusal> {
        if self.connections >= self.max_connections {
            return Err(Refusal::Connections);
        }
        if self.committed + self.pool + rings.reserve() as usize > self.limit {
            return Err(Refusal::Memory);
        }
        Ok(())
    }

    /// A connection with rings `rings` opened, charged nothing yet.
    pub(crate) fn open(&mut self, rings: Rings) {
        self.connections += 1;
        self.committed += rings.reserve() as usize;
    }

    /// A connection charged `charge` pages closed.
    pub(crate) fn close(&mut self, rings: Rings, charge: u32) {
        self.connections -= 1;
        self.committed -= charge.max(rings.reserve()) as usize;
        self.charged -= charge as usize;
    }

    /// Whether a connection may go from `old` to `new` pages: always
    /// within its reserve or what it holds, beyond that only below the
    /// soft mark.
    #[inline]
    pub(crate) fn allows(&self, rings: Rings, old: u32, new: u32) -> bool {
        let held = old.max(rings.reserve());
        new <= held || self.committed + self.pool + (new - held) as usize <= self.pressure
    }

    /// A connection's charge moved from `old` to `new` pages.
    #[inline]
    pub(crate) fn recharge(&mut self, rings: Rings, old: u32, new: u32) {
        let r = rings.reserve();
        self.committed = self.committed + new.max(r) as usize - old.max(r) as usize;
        self.charged = self.charged + new as usize - old as usize;
    }

    /// The budget and its use, in octets.
    pub(crate) fn usage(&self) -> BudgetUse {
        BudgetUse {
            limit: self.limit * PAGE,
            pressure: self.pressure * PAGE,
            committed: (self.committed + self.pool) * PAGE,
            charged: (self.charged + self.pool) * PAGE,
            warm: self.warm * PAGE,
            connections: self.connections,
            max_connections: self.max_connections,
        }
    }

    /// Check the totals against the connections' own figures and the
    /// pool's: `conns` gives each connection's rings and charge, `pool`
    /// and `warm` the pages the buffer pool holds beyond them.
    pub(crate) fn check(
        &self,
        conns: impl Iterator<Item = (Rings, u32)>,
        pool: usize,
        warm: usize,
    ) -> Result<(), String> {
        if (pool, warm) != (self.pool, self.warm) {
            return Err(format!(
                "budget counts {} pool pages, {} warm; the pool holds {pool}, {warm}",
                self.pool, self.warm
            ));
        }
        let (mut n, mut committed, mut charged) = (0, 0, 0);
        for (rings, charge) in conns {
            n += 1;
            committed += charge.max(rings.reserve()) as usize;
            charged += charge as usize;
            if charge > rings.span() {
                return Err(format!("{charge} pages charged to rings of {rings:?}"));
            }
        }
        if (n, committed, charged) != (self.connections, self.committed, self.charged) {
            return Err(format!(
                "budget counts {} connections, {} pages committed, {} charged; they hold {n}, {committed}, {charged}",
                self.connections, self.committed, self.charged
            ));
        }
        if self.committed + self.pool > self.limit {
            return Err(format!(
                "{} pages committed over the limit of {}",
                self.committed + self.pool,
                self.limit
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: Rings = Rings {
        rx: 64 * 1024,
        tx: 64 * 1024,
    };

    #[test]
    fn receive_pages_follow_the_ring_offsets_and_wrap() {
        let isn = 999;
        let m = MemUse {
            rx_base: 1000,
            ..MemUse::default()
        };
        // Octets 1000.. land at offset 0.
        assert_eq!(m.charge_for(FULL, Some(isn), 1000, 0), 0);
        assert_eq!(m.charge_for(FULL, Some(isn), 1001, 0), 1);
        assert_eq!(m.charge_for(FULL, Some(isn), 1000 + 4096, 0), 1);
        assert_eq!(m.charge_for(FULL, Some(isn), 1000 + 4097, 0), 2);
        assert_eq!(
            m.charge_for(FULL, Some(isn), 1000 + 70_000, 0),
            16,
            "all of it"
        );
        // A run from offset 4000: two pages for 200 octets.
        let m = MemUse {
            rx_base: 1000 + 4000,
            ..m
        };
        assert_eq!(m.charge_for(FULL, Some(isn), 1000 + 4200, 0), 2);
        // Wrapping the ring: the tail page and the head page.
        let m = MemUse {
            rx_base: 1000 + 65_000,
            ..m
        };
        assert_eq!(m.charge_for(FULL, Some(isn), 1000 + 65_000 + 1000, 0), 2);
        // Across 2^32 of sequence space, offsets stay right.
        let m = MemUse { rx_base: 5, ..m };
        let isn = u32::MAX - 10;
        // Octet 5 is 15 octets after ISN + 1: offset 15.
        assert_eq!(m.charge_for(FULL, Some(isn), 5 + 4081, 0), 1);
        assert_eq!(m.charge_for(FULL, Some(isn), 5 + 4082, 0), 2);
        // No ISN: nothing received.
        assert_eq!(m.charge_for(FULL, None, 70_000, 0), 0);
        // An odd ring size: offsets unknown, two partial pages added.
        let odd = Rings {
            rx: 10_000,
            tx: 10_000,
        };
        assert_eq!(m.charge_for(odd, Some(isn), 5 + 100, 0), 3);
        assert_eq!(
            m.charge_for(odd, Some(isn), 5 + 9_999, 0),
            3,
            "the ring's pages"
        );
    }

    #[test]
    fn send_pages_count_from_the_send_rings_start() {
        let m = MemUse::default();
        assert_eq!(m.charge_for(FULL, None, 0, 1), 1);
        assert_eq!(m.charge_for(FULL, None, 0, 4096), 1);
        assert_eq!(m.charge_for(FULL, None, 0, 4097), 2);
        assert_eq!(m.charge_for(FULL, None, 0, u32::MAX), 16);
        // A send ring starting mid-page shares that page.
        let odd = Rings { rx: 1000, tx: 1000 };
        assert_eq!(odd.span(), 1);
        assert_eq!(m.charge_for(odd, None, 0, 1000), 1);
        // Both rings full: every page of the chunk, no more.
        let m = MemUse { rx_base: 1, ..m };
        assert_eq!(m.charge_for(FULL, Some(0), 70_000, 70_000), 32);
        assert_eq!(m.charge_for(odd, Some(0), 70_000, 70_000), 1);
    }

    #[test]
    fn touched_pages_name_the_runs_the_charge_counts() {
        let pages = |m: &MemUse, isn, rx_end| m.touched(FULL, isn, rx_end);
        // Nothing charged: nothing touched.
        assert!(pages(&MemUse::default(), Some(0), 5000).is_empty());
        // 100 octets received from offset 0, 5000 queued to send: the
        // receive ring's first page, the send ring's (page 16) first two.
        let m = MemUse {
            rx_base: 1,
            tx_written: 5000,
            charge: 3,
        };
        let t = pages(&m, Some(0), 101);
        assert_eq!(t.pages(), 3);
        assert_eq!(
            Some(t),
            Residual::run(0, 1).union(&Residual::run(16, 18)),
            "{t:?}"
        );
        // A run near the ring's end wraps to its head.
        let m = MemUse {
            rx_base: 1 + 65_000,
            tx_written: 0,
            charge: 2,
        };
        let t = pages(&m, Some(0), 1 + 65_000 + 1000);
        assert_eq!(
            Some(t),
            Residual::run(15, 16).union(&Residual::run(0, 1)),
            "{t:?}"
        );
        // No ISN: nothing received; an odd ring: all of its pages.
        let m = MemUse {
            rx_base: 1,
            tx_written: 1,
            charge: 1,
        };
        assert_eq!(m.touched(FULL, None, 9999), Residual::run(16, 17));
        let odd = Rings {
            rx: 10_000,
            tx: 10_000,
        };
        // The send ring starts in the receive ring's last page.
        assert_eq!(m.touched(odd, Some(0), 10), Residual::run(0, 3));
    }

    #[test]
    fn the_pools_pages_count_toward_the_marks() {
        // 96 pages: pressure at 64.
        let mut b = Budget::new(96 * PAGE, 40);
        assert_eq!(b.pool_room(), Some(63));
        b.open(FULL);
        b.recharge(FULL, 0, 20);
        b.set_pool(40, 30);
        assert_eq!(b.pool_room(), Some(3));
        let u = b.usage();
        assert_eq!(
            (u.committed, u.charged, u.warm),
            (60 * PAGE, 60 * PAGE, 30 * PAGE)
        );
        assert!(!b.allows(FULL, 20, 25));
        b.set_pool(44, 34);
        assert!(b.under_pressure());
        assert_eq!(b.pool_room(), None);
        b.check([(FULL, 20)].into_iter(), 44, 34).unwrap();
        assert!(b.check([(FULL, 20)].into_iter(), 44, 0).is_err());
        b.set_pool(76, 76);
        assert_eq!(b.admit(FULL), Err(Refusal::Memory));
        b.check([(FULL, 20)].into_iter(), 76, 76).unwrap();
        b.set_pool(77, 77);
        assert!(
            b.check([(FULL, 20)].into_iter(), 77, 77).is_err(),
            "over the limit"
        );
    }

    #[test]
    fn send_room_stops_at_the_allowed_pages() {
        let m = MemUse {
            rx_base: 1,
            tx_written: 100,
            ..MemUse::default()
        };
        // The receive side holds one page; two allowed: the send ring may
        // fill its first page.
        assert_eq!(m.tx_room(FULL, Some(0), 1 + 10, 2), 4096 - 100);
        assert_eq!(m.charge_for(FULL, Some(0), 11, 4096), 2);
        assert_eq!(m.charge_for(FULL, Some(0), 11, 4097), 3);
        assert_eq!(m.tx_room(FULL, Some(0), 11, 1), 0);
        assert_eq!(m.tx_room(FULL, Some(0), 11, 40), usize::MAX);
    }

    #[test]
    fn the_marks_admit_grow_and_refuse() {
        // 96 pages: pressure at 64.
        let mut b = Budget::new(96 * PAGE, 40);
        assert_eq!((b.limit, b.pressure), (96, 64));
        let mut held = Vec::new();
        // Below the soft mark: full rings, growing freely.
        for _ in 0..3 {
            let rings = b.rings(FULL);
            assert_eq!(rings, FULL);
            b.admit(rings).unwrap();
            b.open(rings);
            assert!(b.allows(rings, 0, 20));
            b.recharge(rings, 0, 20);
            held.push((rings, 20));
        }
        // 60 committed: growing by 5 would pass the soft mark.
        assert_eq!(b.usage().committed, 60 * PAGE);
        assert!(b.allows(FULL, 20, 24));
        assert!(!b.allows(FULL, 20, 25));
        b.recharge(FULL, 20, 24);
        held[0].1 = 24;
        assert!(b.under_pressure());
        // Under pressure: new connections get a page each way, and may use
        // them; nothing grows past its reserve.
        let small = b.rings(FULL);
        assert_eq!(small, Rings { rx: 4096, tx: 4096 });
        assert!(!b.allows(FULL, 0, 3));
        assert!(b.allows(small, 0, 2));
        // Reserves fill the room up to the hard mark: 32 pages, 16
        // connections, then no more.
        let mut opened = 0;
        while b.admit(small).is_ok() {
            b.open(small);
            b.recharge(small, 0, 2);
            held.push((small, 2));
            opened += 1;
        }
        assert_eq!(opened, 16);
        assert_eq!(b.admit(small), Err(Refusal::Memory));
        assert_eq!(b.usage().committed, b.usage().limit);
        b.check(held.iter().copied(), 0, 0).unwrap();
        // Handing pages back makes room again.
        let (rings, charge) = held.remove(0);
        b.recharge(rings, charge, 0);
        held.insert(0, (rings, 0));
        assert!(b.admit(small).is_ok());
        b.check(held.iter().copied(), 0, 0).unwrap();
        // The connection limit.
        let mut b = Budget::new(1 << 30, 1);
        b.open(FULL);
        assert_eq!(b.admit(FULL), Err(Refusal::Connections));
        b.close(FULL, 0);
        assert!(b.admit(FULL).is_ok());
    }
}
