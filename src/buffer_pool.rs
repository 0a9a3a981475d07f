//! TCP buffers that hold memory only while they hold data.
//!
//! smoltcp's TCP socket takes its two ring buffers when it is created and
//! can neither grow nor shrink them. So ephemera carves every connection's
//! buffers out of large anonymous mappings reserved with `MAP_NORESERVE`:
//! the kernel backs a page only when it is first written. When a
//! connection's buffers are both empty the stack may hand their pages back
//! with `madvise(MADV_DONTNEED)` ([`BufferPool::shrink`]); the next write
//! faults in fresh zero pages. An idle connection then holds no buffer
//! memory at all, whatever its configured buffer sizes — the kernel's own
//! trick for idle sockets, done from user space.
//!
//! Safety rests on three rules, kept by [`Stack`](crate::Stack):
//! - a chunk's slices are given to exactly one smoltcp socket, and the
//!   chunk goes back to the pool only after that socket is dropped;
//! - pages are released only while both ring buffers are empty, when
//!   smoltcp never reads their contents;
//! - the pool outlives every socket (it is declared after the socket slab
//!   in `Stack`, so it is dropped after it).
//!
//! **The warm cache.** Handing a chunk's pages back costs more than the
//! connection that used them when connections are short: `madvise` walks
//! and unmaps the range, and in a process with threads on other CPUs it
//! sends each of them a TLB-shootdown interrupt; the next connection then
//! faults fresh pages in. So a released chunk whose connection touched
//! only a few pages ([`WARM_PAGES`], with what it carried before) is kept
//! *warm*: on a LIFO list of at most [`WARM_CHUNKS`] chunks, pages still
//! backed, and leased again before any clean chunk. Each chunk carries its
//! [`Residual`], the pages earlier leases may have left backed, and the
//! pool counts them ([`BufferPool::residual_pages`]) so that the stack's
//! budget stays an upper bound of what is resident: while the chunk is
//! warm, and after it is leased again until it is shrunk or released. A
//! reused chunk holds stale octets of an earlier connection; smoltcp's
//! ring buffers never read an octet they did not write since they were
//! made (`RingBuffer` reads only its allocated run, which grows only by
//! what was enqueued), so none of them reaches the new connection.
//!
//! Sizes come from the configuration, so every size is checked when the
//! pool is made ([`BufferPool::new`]): each buffer at most
//! [`MAX_BUFFER`], and every product of sizes computed with checked
//! arithmetic. A chunk is then always large enough for the slices
//! [`BufferPool::slices`] cuts from it.

use std::io;
use std::num::NonZeroUsize;
use std::ptr::NonNull;

use nix::sys::mman::{madvise, mmap_anonymous, munmap, MapFlags, MmapAdvise, ProtFlags};

/// The page size the pool rounds chunks to and accounts in.
pub(crate) const PAGE: usize = 4096;
/// Chunks per mapping: few enough mappings for `vm.max_map_count` at
/// 100 k connections, small enough not to reserve much unused space.
const CHUNKS_PER_ARENA: usize = 256;
/// Largest mapping reserved at once: chunks of large buffers come fewer
/// to a mapping (at least one).
const MAX_ARENA: usize = 256 << 20;
/// Most chunks kept warm: 128 chunks of at most [`WARM_PAGES`] pages hold
/// at most 2 MiB.
pub(crate) const WARM_CHUNKS: usize = 128;
/// Most pages a chunk may carry and still be kept warm: a short
/// request/response connection touches one or two each way.
pub(crate) const WARM_PAGES: u32 = 4;
/// Page runs a [`Residual`] can hold.
const RUNS: usize = 4;
/// Largest receive or send buffer: 1 GiB, the largest window TCP can
/// advertise (RFC 7323 §2.3, window scale 14); smoltcp refuses larger
/// receive buffers.
pub(crate) const MAX_BUFFER: usize = 1 << 30;

/// Buffer sizes a pool cannot be made for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum PoolError {
    /// A buffer of zero octets.
    Empty,
    /// A buffer larger than [`MAX_BUFFER`].
    TooLarge(usize),
}

/// Pages of a chunk that may be backed: a few runs of page indices from
/// the chunk's start, an upper bound of what was written since its pages
/// were last handed back.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Residual {
    /// `[start, end)` page runs, sorted, disjoint and not adjacent; the
    /// first `len` are used.
    runs: [(u32, u32); RUNS],
    len: u8,
}

impl Residual {
    /// No page.
    pub(crate) const EMPTY: Residual = Residual {
        runs: [(0, 0); RUNS],
        len: 0,
    };

    /// Pages `[start, end)`.
    pub(crate) fn run(start: u32, end: u32) -> Residual {
        let mut r = Residual::EMPTY;
        if start < end {
            r.runs[0] = (start, end);
            r.len = 1;
        }
        r
    }

    /// Pages it holds.
    pub(crate) fn pages(&self) -> u32 {
        self.runs[..self.len as usize]
            .iter()
            .map(|(a, b)| b - a)
            .sum()
    }

    /// Whether it holds no page.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pages in either; `None` if that takes more runs than it can hold.
    pub(crate) fn union(&self, other: &Residual) -> Option<Residual> {
        let mut all = [(0u32, 0u32); 2 * RUNS];
        let n = self.len as usize + other.len as usize;
        all[..self.len as usize].copy_from_slice(&self.runs[..self.len as usize]);
        all[self.len as usize..n].copy_from_slice(&other.runs[..other.len as usize]);
        let all = &mut all[..n];
        all.sort_unstable();
        let mut out = Residual::EMPTY;
        for &(a, b) in all.iter() {
            match out.len.checked_sub(1) {
                Some(last) if a <= out.runs[last as usize].1 => {
                    let end = &mut out.runs[last as usize].1;
                    *end = (*end).max(b);
                }
                _ => {
                    if out.len as usize == RUNS {
                        return None;
                    }
                    out.runs[out.len as usize] = (a, b);
                    out.len += 1;
                }
            }
        }
        Some(out)
    }
}

/// One connection's buffer memory: `rx` then `tx` octets, page aligned.
#[derive(Debug)]
pub(crate) struct Chunk {
    ptr: NonNull<u8>,
    /// Pages earlier leases may have left backed (counted by the pool).
    residual: Residual,
}

impl Chunk {
    /// The address of its first octet (the receive buffer's start).
    pub(crate) fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Pages earlier leases may have left backed: nonzero for a chunk
    /// taken from the warm cache, until it is shrunk.
    pub(crate) fn residual_pages(&self) -> u32 {
        self.residual.pages()
    }
}

// SAFETY: a chunk is a unique lease on its memory; nothing else aliases it.
unsafe impl Send for Chunk {}

struct Arena {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the arena owns its mapping; chunks handed out are unique.
unsafe impl Send for Arena {}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from one successful mmap, and no chunk
        // of it is in use once the pool (and so the arena) is dropped.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

/// A pool of equally sized, lazily backed buffer chunks.
pub(crate) struct BufferPool {
    rx: usize,
    tx: usize,
    chunk: usize,
    /// Chunks in each mapping.
    per_arena: usize,
    arenas: Vec<Arena>,
    /// Clean chunks: no page backed.
    free: Vec<NonNull<u8>>,
    /// Warm chunks, the last released on top; at most [`WARM_CHUNKS`].
    warm: Vec<(NonNull<u8>, Residual)>,
    /// Pages the warm chunks carry.
    warm_pages: usize,
    /// Pages the leased chunks carry from earlier leases.
    leased_residual: usize,
    leased: usize,
}

// SAFETY: see `Chunk` and `Arena`.
unsafe impl Send for BufferPool {}

impl BufferPool {
    /// A pool whose chunks hold an `rx`-octet and a `tx`-octet buffer,
    /// each from 1 to [`MAX_BUFFER`] octets.
    pub(crate) fn new(rx: usize, tx: usize) -> Result<BufferPool, PoolError> {
        for n in [rx, tx] {
            if n == 0 {
                return Err(PoolError::Empty);
            }
            if n > MAX_BUFFER {
                return Err(PoolError::TooLarge(n));
            }
        }
        // Both at most 2^30: no overflow on any target of 32 bits or more,
        // and checked all the same.
        let chunk = rx
            .checked_add(tx)
            .and_then(|n| n.checked_next_multiple_of(PAGE))
            .ok_or(PoolError::TooLarge(rx.max(tx)))?;
        let per_arena = (MAX_ARENA / chunk).clamp(1, CHUNKS_PER_ARENA);
        chunk
            .checked_mul(per_arena)
            .ok_or(PoolError::TooLarge(rx.max(tx)))?;
        Ok(BufferPool {
            rx,
            tx,
            chunk,
            per_arena,
            arenas: Vec::new(),
            free: Vec::new(),
            warm: Vec::with_capacity(WARM_CHUNKS),
            warm_pages: 0,
            leased_residual: 0,
            leased: 0,
        })
    }

    /// Lease a chunk: the warm one released last, else a clean one,
    /// reserving a new mapping if none is free.
    pub(crate) fn lease(&mut self) -> io::Result<Chunk> {
        if let Some((ptr, residual)) = self.warm.pop() {
            let pages = residual.pages() as usize;
            self.warm_pages -= pages;
            self.leased_residual += pages;
            self.leased += 1;
            return Ok(Chunk { ptr, residual });
        }
        if self.free.is_empty() {
            self.grow()?;
        }
        let ptr = self.free.pop().expect("grow added chunks");
        self.leased += 1;
        Ok(Chunk {
            ptr,
            residual: Residual::EMPTY,
        })
    }

    fn grow(&mut self) -> io::Result<()> {
        // Checked in `new`.
        let len = self.chunk * self.per_arena;
        let size = NonZeroUsize::new(len).expect("chunks are at least a page");
        // SAFETY: a fresh private anonymous mapping at an address the
        // kernel picks; no file, nothing else aliases it.
        let p = unsafe {
            mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )?
        };
        let base = p.cast::<u8>();
        self.arenas.push(Arena { ptr: base, len });
        // Hand out low addresses first.
        for i in (0..self.per_arena).rev() {
            let chunk = base.as_ptr().wrapping_add(i * self.chunk);
            self.free
                .push(NonNull::new(chunk).expect("inside the mapping just made"));
        }
        Ok(())
    }

    /// The chunk's receive and send buffers, for one smoltcp socket: `rx`
    /// and `tx` octets (at most the pool's sizes, which they are cut to),
    /// the send buffer right after the receive buffer.
    ///
    /// # Safety
    /// Call once per lease, and drop the socket holding the slices before
    /// the chunk goes back with [`release`](Self::release).
    pub(crate) unsafe fn slices(
        &self,
        chunk: &Chunk,
        rx: usize,
        tx: usize,
    ) -> (&'static mut [u8], &'static mut [u8]) {
        let (rx, tx) = (rx.min(self.rx), tx.min(self.tx));
        let p = chunk.ptr.as_ptr();
        // SAFETY: the caller guarantees one set of slices per lease; the
        // two ranges do not overlap, and `rx + tx <= self.rx + self.tx <=
        // self.chunk` (checked in `new`), so both lie inside the chunk.
        unsafe {
            (
                std::slice::from_raw_parts_mut(p, rx),
                std::slice::from_raw_parts_mut(p.add(rx), tx),
            )
        }
    }

    /// Give the chunk's pages back to the kernel; it reads as zeros after,
    /// and carries no residual. Only while both ring buffers in it are
    /// empty.
    pub(crate) fn shrink(&mut self, chunk: &mut Chunk) {
        self.dontneed(chunk.ptr);
        self.leased_residual -= chunk.residual.pages() as usize;
        chunk.residual = Residual::EMPTY;
    }

    fn dontneed(&self, ptr: NonNull<u8>) {
        // SAFETY: the range is one page-aligned chunk, inside our mapping;
        // its ring buffers are empty or gone, so no live data is lost.
        let _ = unsafe { madvise(ptr.cast(), self.chunk, MmapAdvise::MADV_DONTNEED) };
    }

    /// Take a chunk back once its socket is gone. `touched` is what its
    /// connection may have written since the chunk was leased or shrunk
    /// (`None`: unknown). The chunk is kept warm if what it then carries is
    /// at most [`WARM_PAGES`] pages, the cache has room and `room` allows
    /// the pages it adds to what the pool holds (`None`: keep nothing
    /// warm); else its pages go back to the kernel, unless none is backed.
    /// Returns whether it was kept warm.
    pub(crate) fn release(
        &mut self,
        chunk: Chunk,
        touched: Option<Residual>,
        room: Option<usize>,
    ) -> bool {
        self.leased -= 1;
        let old = chunk.residual.pages() as usize;
        self.leased_residual -= old;
        let carried = touched.and_then(|t| t.union(&chunk.residual));
        if let (Some(carried), Some(room)) = (carried, room) {
            let pages = carried.pages() as usize;
            if !carried.is_empty()
                && pages <= WARM_PAGES as usize
                && pages.saturating_sub(old) <= room
                && self.warm.len() < WARM_CHUNKS
            {
                self.warm_pages += pages;
                self.warm.push((chunk.ptr, carried));
                return true;
            }
        }
        if carried.is_none_or(|c| !c.is_empty()) {
            self.dontneed(chunk.ptr);
        }
        self.free.push(chunk.ptr);
        false
    }

    /// Hand every warm chunk's pages back (memory pressure); returns how
    /// many there were.
    pub(crate) fn drain_warm(&mut self) -> usize {
        let n = self.warm.len();
        while let Some((ptr, _)) = self.warm.pop() {
            self.dontneed(ptr);
            self.free.push(ptr);
        }
        self.warm_pages = 0;
        n
    }

    /// Chunks kept warm now.
    pub(crate) fn warm_chunks(&self) -> usize {
        self.warm.len()
    }

    /// Pages the warm chunks carry.
    pub(crate) fn warm_pages(&self) -> usize {
        self.warm_pages
    }

    /// Pages all chunks carry from earlier leases, warm or leased again:
    /// what the pool holds beyond its connections' own charges.
    pub(crate) fn residual_pages(&self) -> usize {
        self.warm_pages + self.leased_residual
    }

    /// Check the pool's counts against its chunks: `leased` gives the
    /// residual of every chunk leased out.
    pub(crate) fn check(&self, leased: impl Iterator<Item = u32>) -> Result<(), String> {
        let warm: usize = self.warm.iter().map(|(_, r)| r.pages() as usize).sum();
        let (mut n, mut residual) = (0, 0);
        for pages in leased {
            n += 1;
            residual += pages as usize;
        }
        if (warm, residual, n) != (self.warm_pages, self.leased_residual, self.leased) {
            return Err(format!(
                "buffer pool counts {} warm pages, {} residual pages in {} leased chunks; \
                 they hold {warm}, {residual} in {n}",
                self.warm_pages, self.leased_residual, self.leased
            ));
        }
        if self.warm.len() > WARM_CHUNKS
            || self
                .warm
                .iter()
                .any(|(_, r)| r.pages() > WARM_PAGES || r.is_empty())
        {
            return Err(format!("{} warm chunks out of bounds", self.warm.len()));
        }
        Ok(())
    }

    /// Chunks leased out now.
    pub(crate) fn leased(&self) -> usize {
        self.leased
    }

    /// Bytes of buffer memory the kernel actually backs right now
    /// (`mincore(2)` over every mapping).
    pub(crate) fn resident_bytes(&self) -> usize {
        let mut total = 0;
        for a in &self.arenas {
            let mut vec = vec![0u8; a.len / PAGE];
            // SAFETY: a page-aligned range of our own mapping and a vector
            // with one byte per page.
            let r = unsafe { libc::mincore(a.ptr.as_ptr().cast(), a.len, vec.as_mut_ptr()) };
            if r == 0 {
                total += vec.iter().filter(|&&b| b & 1 != 0).count() * PAGE;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_backed_only_when_written_and_given_back_by_shrink() {
        let mut pool = BufferPool::new(64 * 1024, 64 * 1024).unwrap();
        let chunks: Vec<Chunk> = (0..10).map(|_| pool.lease().unwrap()).collect();
        assert_eq!(pool.resident_bytes(), 0, "reserving costs nothing");
        // SAFETY: one set of slices for this lease, dropped (last used)
        // before the chunk goes back.
        let (rx, tx) = unsafe { pool.slices(&chunks[3], 64 * 1024, 64 * 1024) };
        rx[0] = 1;
        tx[tx.len() - 1] = 2;
        assert_eq!(pool.resident_bytes(), 2 * PAGE);
        assert_eq!((rx[0], tx[tx.len() - 1]), (1, 2));
        let mut chunks = chunks;
        pool.shrink(&mut chunks[3]);
        assert_eq!(pool.resident_bytes(), 0);
        // Reads as zeros afterwards, and is writable again.
        assert_eq!((rx[0], tx[tx.len() - 1]), (0, 0));
        rx[5] = 9;
        assert_eq!(rx[5], 9);
        for c in chunks {
            pool.release(c, None, None);
        }
        assert_eq!(pool.leased(), 0);
        assert_eq!(pool.resident_bytes(), 0);
    }

    #[test]
    fn chunks_never_overlap_and_are_reused() {
        let mut pool = BufferPool::new(1000, 3000).unwrap();
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        // SAFETY: one set of slices per lease, last used before the chunks
        // go back.
        let (ar, at) = unsafe { pool.slices(&a, 1000, 3000) };
        // SAFETY: as above.
        let (br, _) = unsafe { pool.slices(&b, usize::MAX, usize::MAX) };
        assert_eq!((ar.len(), at.len()), (1000, 3000));
        assert_eq!(br.len(), 1000, "cut to the pool's sizes");
        ar.fill(1);
        at.fill(2);
        br.fill(3);
        assert!(ar.iter().all(|&x| x == 1) && at.iter().all(|&x| x == 2));
        let pa = a.ptr;
        pool.release(a, None, None);
        let c = pool.lease().unwrap();
        assert_eq!(c.ptr, pa, "a released chunk is leased again first");
        let many: Vec<Chunk> = (0..CHUNKS_PER_ARENA * 2)
            .map(|_| pool.lease().unwrap())
            .collect();
        assert_eq!(pool.leased(), 2 + CHUNKS_PER_ARENA * 2);
        drop(many);
    }

    #[test]
    fn absurd_sizes_are_refused_and_the_largest_fit_their_chunk() {
        assert_eq!(BufferPool::new(0, 10).err(), Some(PoolError::Empty));
        assert_eq!(
            BufferPool::new(usize::MAX, 4096).err(),
            Some(PoolError::TooLarge(usize::MAX))
        );
        assert_eq!(
            BufferPool::new(4096, MAX_BUFFER + 1).err(),
            Some(PoolError::TooLarge(MAX_BUFFER + 1))
        );
        // Sizes whose sum would wrap a 64-bit word once rounded to pages.
        let wrap = usize::MAX / 2 + 1;
        assert!(BufferPool::new(wrap, wrap).is_err());

        // The largest: one chunk to a mapping, and its last octet writable.
        let mut pool = BufferPool::new(MAX_BUFFER, MAX_BUFFER).unwrap();
        assert_eq!(pool.per_arena, 1);
        let c = pool.lease().unwrap();
        // SAFETY: one set of slices for this lease, last used before the
        // chunk goes back.
        let (rx, tx) = unsafe { pool.slices(&c, MAX_BUFFER, MAX_BUFFER) };
        assert_eq!((rx.len(), tx.len()), (MAX_BUFFER, MAX_BUFFER));
        rx[MAX_BUFFER - 1] = 1;
        tx[MAX_BUFFER - 1] = 2;
        assert_eq!(pool.resident_bytes(), 2 * PAGE);
        pool.release(c, None, None);
        assert_eq!(pool.resident_bytes(), 0);
    }

    fn touch(pool: &BufferPool, c: &Chunk, rx_octets: usize, tx_octets: usize, v: u8) {
        // SAFETY: the tests take one set of slices per lease at a time and
        // drop them (last use here) before the chunk goes back.
        let (rx, tx) = unsafe { pool.slices(c, usize::MAX, usize::MAX) };
        rx[..rx_octets].fill(v);
        tx[..tx_octets].fill(v);
    }

    #[test]
    fn residual_runs_merge_and_overflow() {
        let a = Residual::run(0, 2).union(&Residual::run(16, 17)).unwrap();
        assert_eq!(a.pages(), 3);
        assert_eq!(a.union(&a), Some(a), "the same pages again: no growth");
        let b = a.union(&Residual::run(1, 5)).unwrap();
        assert_eq!((b.pages(), b.len), (6, 2), "overlapping runs merge");
        let c = b.union(&Residual::run(5, 6)).unwrap();
        assert_eq!((c.pages(), c.len), (7, 2), "adjacent runs merge");
        let d = c
            .union(&Residual::run(8, 9))
            .unwrap()
            .union(&Residual::run(10, 11))
            .unwrap();
        assert_eq!(d.len as usize, RUNS);
        assert_eq!(d.union(&Residual::run(12, 13)), None, "too many runs");
        assert!(Residual::run(3, 3).is_empty());
    }

    #[test]
    fn warm_chunks_are_reused_last_in_first_out_and_counted() {
        let mut pool = BufferPool::new(64 * 1024, 64 * 1024).unwrap();
        let (a, b) = (pool.lease().unwrap(), pool.lease().unwrap());
        let (pa, pb) = (a.ptr, b.ptr);
        touch(&pool, &a, 100, 100, 7);
        touch(&pool, &b, 100, 100, 8);
        assert_eq!(pool.resident_bytes(), 4 * PAGE);
        let pages = Residual::run(0, 1).union(&Residual::run(16, 17));
        assert!(pool.release(a, pages, Some(100)));
        assert!(pool.release(b, pages, Some(100)));
        assert_eq!((pool.warm_chunks(), pool.warm_pages()), (2, 4));
        assert_eq!(pool.resident_bytes(), 4 * PAGE, "no madvise");
        assert!(pool.resident_bytes() <= pool.residual_pages() * PAGE);
        pool.check(std::iter::empty()).unwrap();

        // The last released comes back first, its pages still backed, and
        // still counted while leased.
        let c = pool.lease().unwrap();
        assert_eq!((c.ptr, c.residual_pages()), (pb, 2));
        assert_eq!((pool.warm_pages(), pool.residual_pages()), (2, 4));
        pool.check([2].into_iter()).unwrap();
        // Used again on the same pages: it carries no more than before.
        touch(&pool, &c, 50, 50, 9);
        assert!(pool.release(c, pages, Some(0)));
        assert_eq!(pool.warm_pages(), 4);
        // A leased warm chunk that is shrunk carries nothing.
        let mut c = pool.lease().unwrap();
        pool.shrink(&mut c);
        assert_eq!((c.residual_pages(), pool.residual_pages()), (0, 2));
        assert_eq!(pool.resident_bytes(), 2 * PAGE);
        pool.check([0].into_iter()).unwrap();
        // Clean and untouched: back without a page.
        assert!(!pool.release(c, Some(Residual::EMPTY), Some(100)));
        let d = pool.lease().unwrap();
        assert_eq!(d.ptr, pa);
        // A chunk that touched too many pages, or more than the room, or
        // unknown pages, or with no room at all, goes back clean.
        touch(&pool, &d, 3 * PAGE, PAGE, 1);
        assert!(!pool.release(d, Some(Residual::run(0, 5)), Some(100)));
        for (touched, room) in [(pages, Some(1)), (None, Some(100)), (pages, None)] {
            let e = pool.lease().unwrap();
            touch(&pool, &e, 1, 1, 2);
            assert!(!pool.release(e, touched, room));
            assert_eq!(pool.resident_bytes(), 0);
            assert_eq!(pool.residual_pages(), 0);
        }
        pool.check(std::iter::empty()).unwrap();
    }

    #[test]
    fn the_warm_cache_is_bounded_and_drains() {
        let mut pool = BufferPool::new(4096, 4096).unwrap();
        let chunks: Vec<Chunk> = (0..WARM_CHUNKS + 10)
            .map(|_| pool.lease().unwrap())
            .collect();
        let mut kept = 0;
        for c in chunks {
            touch(&pool, &c, 1, 1, 3);
            kept += usize::from(pool.release(c, Some(Residual::run(0, 2)), Some(usize::MAX)));
        }
        assert_eq!(kept, WARM_CHUNKS, "full: the rest go back clean");
        assert_eq!(pool.warm_chunks(), WARM_CHUNKS);
        assert_eq!(pool.warm_pages(), 2 * WARM_CHUNKS);
        assert_eq!(pool.resident_bytes(), 2 * WARM_CHUNKS * PAGE);
        pool.check(std::iter::empty()).unwrap();
        assert_eq!(pool.drain_warm(), WARM_CHUNKS);
        assert_eq!((pool.warm_chunks(), pool.residual_pages()), (0, 0));
        assert_eq!(pool.resident_bytes(), 0);
        pool.check(std::iter::empty()).unwrap();
        let c = pool.lease().unwrap();
        assert_eq!(c.residual_pages(), 0, "drained chunks are clean");
    }
}
