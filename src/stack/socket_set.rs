//! The socket set: every socket in a slab, addressed by small `Copy` ids,
//! and the timer queue that wakes them.
//!
//! Each TCP connection and UDP socket owns a smoltcp `SocketSet` holding
//! exactly one smoltcp socket. smoltcp's interface scans the set it is
//! given for a socket that accepts a packet, so by handing it a one-socket
//! set the stack makes that scan O(1): the port table already decided which
//! connection a packet is for.
//!
//! Listeners are ours alone (smoltcp's listen socket turns into the
//! connection it accepts): a listener is a bound port, a count of
//! half-open connections and a bounded accept queue.
//!
//! Egress is driven by a dirty list (sockets with something new to send)
//! and a timer queue fed by each socket's own `poll_at`, so nothing walks
//! all sockets on a timer tick.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use smoltcp::socket::tcp;
use smoltcp::time::Instant;

use super::conn::TcpConn;
use super::listener::Listener;
use super::udp::UdpSock;

/// A socket's id: slab index plus a generation, so a stale id never reaches
/// a socket that reused its slot.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SocketId {
    index: u32,
    generation: u32,
}

/// What a [`Stack`](super::Stack)'s port table holds for each bind and
/// flow: the socket (listener, connection or UDP socket) it belongs to.
/// Opaque to users of [`Stack::port_table`](super::Stack::port_table),
/// who see which entries exist and whether two belong to the same socket.
///
/// Inside, beside the socket's id, a TCP connection's owner records where
/// the memory a segment will touch lies: its smoltcp socket and receive
/// ring. The demux reads the owner with the flow, so it can start loading
/// all of it at once, while the slab slot is still on its way from memory,
/// instead of one after the other. The addresses are prefetch hints only,
/// never dereferenced, and `Debug` leaves them out.
#[derive(Copy, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The socket.
    pub(crate) id: SocketId,
    socket: usize,
    rx: usize,
    /// The sequence number stored at the ring's offset 0: the peer's
    /// ISN + 1 (`rx` is 0 until the ISN is known).
    rx_seq: u32,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Owner").field(&self.id).finish()
    }
}

impl Owner {
    /// The owner `id`, with no hints (listeners, UDP sockets, and a
    /// connection until its socket exists).
    pub(crate) fn of(id: SocketId) -> Owner {
        Owner {
            id,
            socket: 0,
            rx: 0,
            rx_seq: 0,
        }
    }

    /// The owner `id` whose smoltcp socket lies at `socket` and whose
    /// receive ring starts at `rx` (0: not known yet) with sequence number
    /// `rx_seq` at its offset 0.
    pub(crate) fn hinted(id: SocketId, socket: usize, rx: usize, rx_seq: u32) -> Owner {
        Owner {
            id,
            socket,
            rx,
            rx_seq,
        }
    }

    /// Start loading what a segment at `seq` for this owner will touch:
    /// every line of its smoltcp socket, and the receive-ring lines the
    /// payload lands in (`rx_len`: the ring's size). smoltcp's ring starts
    /// at offset 0 and its read position advances by what the application
    /// reads, so in-order data lands at (seq − ISN − 1) mod ring size.
    #[inline]
    pub(crate) fn prefetch(&self, seq: u32, rx_len: usize) {
        if self.socket != 0 {
            for off in (0..std::mem::size_of::<tcp::Socket<'static>>()).step_by(64) {
                prefetch(self.socket + off);
            }
        }
        if self.rx != 0 && rx_len > 0 {
            let at = seq.wrapping_sub(self.rx_seq) as usize % rx_len;
            prefetch(self.rx + at);
            prefetch(self.rx + (at + 64) % rx_len);
        }
    }
}

/// A slab of values addressed by [`SocketId`].
pub(crate) struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// The id the next [`insert`](Self::insert) will return.
    pub(crate) fn next_id(&self) -> SocketId {
        match self.free.last() {
            Some(&index) => SocketId {
                index,
                generation: self.slots[index as usize].0,
            },
            None => SocketId {
                index: self.slots.len() as u32,
                generation: 0,
            },
        }
    }

    /// Store `value`, returning its id.
    pub(crate) fn insert(&mut self, value: T) -> SocketId {
        let id = self.next_id();
        match self.free.pop() {
            Some(index) => self.slots[index as usize].1 = Some(value),
            None => self.slots.push((0, Some(value))),
        }
        self.len += 1;
        id
    }

    /// The value at `id`, if it is still there.
    pub(crate) fn get(&self, id: SocketId) -> Option<&T> {
        match self.slots.get(id.index as usize) {
            Some((generation, Some(v))) if *generation == id.generation => Some(v),
            _ => None,
        }
    }

    /// The value at `id`, mutably.
    pub(crate) fn get_mut(&mut self, id: SocketId) -> Option<&mut T> {
        match self.slots.get_mut(id.index as usize) {
            Some((generation, Some(v))) if *generation == id.generation => Some(v),
            _ => None,
        }
    }

    /// Take the value out; the slot's generation moves on so `id` goes stale.
    pub(crate) fn remove(&mut self, id: SocketId) -> Option<T> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.0 != id.generation || slot.1.is_none() {
            return None;
        }
        let v = slot.1.take();
        slot.0 = slot.0.wrapping_add(1);
        self.free.push(id.index);
        self.len -= 1;
        v
    }

    /// Number of values stored.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every stored value with its id (O(capacity): for display only).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (SocketId, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, (generation, v))| {
                v.as_ref().map(|v| {
                    (
                        SocketId {
                            index: i as u32,
                            generation: *generation,
                        },
                        v,
                    )
                })
            })
    }
}

/// Hint the CPU to load the cache line at `addr`. A prefetch never faults
/// and has no visible effect, whatever the address.
#[inline(always)]
fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` only hints the cache; it does not access memory
    // architecturally and cannot fault, even on an unmapped address.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(addr as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// Anything the slab holds.
pub(crate) enum Socket {
    /// A TCP connection.
    Tcp(TcpConn),
    /// A TCP listener.
    Listener(Listener),
    /// A UDP socket.
    Udp(Box<UdpSock>),
}

/// The stack's sockets, looked up by kind: a stale id, or one of another
/// kind, finds nothing.
impl Slab<Socket> {
    /// The TCP connection at `id`.
    #[inline]
    pub(crate) fn tcp(&self, id: SocketId) -> Option<&TcpConn> {
        match self.get(id) {
            Some(Socket::Tcp(c)) => Some(c),
            _ => None,
        }
    }

    /// The TCP connection at `id`, mutably.
    #[inline]
    pub(crate) fn tcp_mut(&mut self, id: SocketId) -> Option<&mut TcpConn> {
        match self.get_mut(id) {
            Some(Socket::Tcp(c)) => Some(c),
            _ => None,
        }
    }

    /// The listener at `id`.
    pub(crate) fn listener(&self, id: SocketId) -> Option<&Listener> {
        match self.get(id) {
            Some(Socket::Listener(l)) => Some(l),
            _ => None,
        }
    }

    /// The listener at `id`, mutably.
    pub(crate) fn listener_mut(&mut self, id: SocketId) -> Option<&mut Listener> {
        match self.get_mut(id) {
            Some(Socket::Listener(l)) => Some(l),
            _ => None,
        }
    }

    /// The UDP socket at `id`.
    pub(crate) fn udp(&self, id: SocketId) -> Option<&UdpSock> {
        match self.get(id) {
            Some(Socket::Udp(u)) => Some(u),
            _ => None,
        }
    }

    /// The UDP socket at `id`, mutably.
    pub(crate) fn udp_mut(&mut self, id: SocketId) -> Option<&mut UdpSock> {
        match self.get_mut(id) {
            Some(Socket::Udp(u)) => Some(u),
            _ => None,
        }
    }
}

/// Deadlines of sockets, earliest first. Entries go stale when a socket is
/// rescheduled or freed; the owner checks `scheduled` when popping.
#[derive(Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(Instant, SocketId)>>,
}

impl TimerQueue {
    /// Queue `id` for `at`.
    pub(crate) fn push(&mut self, at: Instant, id: SocketId) {
        self.heap.push(Reverse((at, id)));
    }

    /// The earliest deadline (possibly stale, so possibly early).
    pub(crate) fn peek(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Drop the entries in front for which `live` is false (stale ones),
    /// so that [`peek`](Self::peek) names a deadline someone waits for;
    /// how many were dropped.
    pub(crate) fn prune(&mut self, mut live: impl FnMut(Instant, SocketId) -> bool) -> usize {
        let mut n = 0;
        while let Some(&Reverse((at, id))) = self.heap.peek() {
            if live(at, id) {
                break;
            }
            self.heap.pop();
            n += 1;
        }
        n
    }

    /// How many entries are queued, stale ones included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Pop the earliest entry if it is due by `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, SocketId)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_drops_stale_deadlines_in_front_only() {
        let mut q = TimerQueue::default();
        let mut s: Slab<()> = Slab::default();
        let (a, b, c) = (s.insert(()), s.insert(()), s.insert(()));
        let at = Instant::from_millis;
        q.push(at(1), a);
        q.push(at(2), b);
        q.push(at(3), c);
        q.push(at(4), a);
        // `a` now waits for 4 and `b` is gone: 1 and 2 are stale, 3 is
        // live and stops the pruning before 4.
        let live = |t: Instant, id| id == c || (id == a && t == at(4));
        assert_eq!(q.prune(live), 2);
        assert_eq!(q.peek(), Some(at(3)));
        assert_eq!(q.len(), 2);
        assert_eq!(q.prune(live), 0);
        assert_eq!(q.pop_due(at(3)), Some((at(3), c)));
        assert_eq!(q.prune(|_, _| false), 1);
        assert_eq!(q.peek(), None);
    }

    #[test]
    fn slab_ids_go_stale_after_remove() {
        let mut s: Slab<&str> = Slab::default();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!(s.get(a), Some(&"a"));
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.get(a), None);
        assert_eq!(s.remove(a), None);
        let c = s.insert("c");
        // Slot reused, generation moved on.
        assert_ne!(a, c);
        assert_eq!(s.get(a), None);
        assert_eq!(s.get(c), Some(&"c"));
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.len(), 2);
        assert_eq!(s.iter().count(), 2);
    }

    #[test]
    fn next_id_predicts_insert() {
        let mut s: Slab<u8> = Slab::default();
        for i in 0..10 {
            let want = s.next_id();
            assert_eq!(s.insert(i), want);
        }
        let third = s.iter().nth(3).unwrap().0;
        s.remove(third);
        let want = s.next_id();
        assert_eq!(s.insert(99), want);
    }

    #[test]
    fn timers_pop_in_order_and_only_when_due() {
        let mut s: Slab<u8> = Slab::default();
        let (a, b) = (s.insert(1), s.insert(2));
        let mut q = TimerQueue::default();
        q.push(Instant::from_millis(20), a);
        q.push(Instant::from_millis(10), b);
        assert_eq!(q.peek(), Some(Instant::from_millis(10)));
        assert_eq!(q.pop_due(Instant::from_millis(5)), None);
        assert_eq!(
            q.pop_due(Instant::from_millis(25)),
            Some((Instant::from_millis(10), b))
        );
        assert_eq!(
            q.pop_due(Instant::from_millis(25)),
            Some((Instant::from_millis(20), a))
        );
        assert_eq!(q.peek(), None, "empty");
    }
}
