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

/// One connection's buffer memory: `rx` then `tx` octets, page aligned.
#[derive(Debug)]
pub(crate) struct Chunk {
    ptr: NonNull<u8>,
}

impl Chunk {
    /// The address of its first octet (the receive buffer's start).
    pub(crate) fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
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
    free: Vec<NonNull<u8>>,
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
            leased: 0,
        })
    }

    /// Lease a chunk, reserving a new mapping if none is free.
    pub(crate) fn lease(&mut self) -> io::Result<Chunk> {
        if self.free.is_empty() {
            self.grow()?;
        }
        let ptr = self.free.pop().expect("grow added chunks");
        self.leased += 1;
        Ok(Chunk { ptr })
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

    /// Give the chunk's pages back to the kernel; it reads as zeros after.
    /// Only while both ring buffers in it are empty.
    pub(crate) fn shrink(&self, chunk: &Chunk) {
        // SAFETY: the range is the page-aligned chunk, inside our mapping;
        // the caller keeps its ring buffers empty, so no live data is lost.
        let _ = unsafe { madvise(chunk.ptr.cast(), self.chunk, MmapAdvise::MADV_DONTNEED) };
    }

    /// Take a chunk back once its socket is gone; its pages are released.
    pub(crate) fn release(&mut self, chunk: Chunk) {
        self.shrink(&chunk);
        self.leased -= 1;
        self.free.push(chunk.ptr);
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
        pool.shrink(&chunks[3]);
        assert_eq!(pool.resident_bytes(), 0);
        // Reads as zeros afterwards, and is writable again.
        assert_eq!((rx[0], tx[tx.len() - 1]), (0, 0));
        rx[5] = 9;
        assert_eq!(rx[5], 9);
        for c in chunks {
            pool.release(c);
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
        pool.release(a);
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
        pool.release(c);
        assert_eq!(pool.resident_bytes(), 0);
    }
}
