//! Ephemeral ports: RFC 6056 §3.3.4 (Algorithm 4, double-hash) with the
//! random increments of §3.3.5 for connections, and a random start for a
//! bind to port 0.
//!
//! For a connection, a keyed hash of (local address, remote address,
//! remote port) gives the starting offset, a second keyed hash picks a
//! slot in a perturbation table, and the slot advances by a random step
//! after each pick. Uniqueness is per destination, so one local address
//! holds a full range of ports towards every destination. The search never
//! walks the range: a destination's ports in use (live or TIME-WAIT) are a
//! [`PortSet`], where "first free port at or after the candidate" costs a
//! few word operations even at 99 % occupancy.

use std::fmt;
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};

use siphasher::sip128::{Hasher128, SipHasher13 as SipHasher13x128};

use super::{ip16, plain, AllocError, DestKey, FlowKey, FlowState, PortTable, Protocol, TABLE_LEN};
use crate::rng::Rng;

impl<H: Copy + Eq + fmt::Debug> PortTable<H> {
    /// Give a new connection from `local_ip` to `remote` an ephemeral port
    /// (RFC 6056 Algorithm 4 with random increments) and register it.
    pub fn allocate(
        &mut self,
        proto: Protocol,
        local_ip: IpAddr,
        remote: SocketAddr,
        owner: H,
        rng: &mut dyn Rng,
    ) -> Result<FlowKey, AllocError> {
        let remote = plain(remote);
        let dest = DestKey {
            proto,
            local: local_ip,
            remote,
        };
        let (offset, index) = self.double_hash(&dest);
        // Offsets are indices into the table's share of the range (the
        // whole range unless sharded, where index k is port start + k).
        let n = self.share.len();
        let start = ((offset % n as u64) as u32 + self.perturb[index]) % n;

        // First free offset at or after `start` (cyclically) that no
        // listener holds; each probe is O(1) and bound ports are skipped.
        let mut from = start;
        let mut probed = 0u32;
        let found = loop {
            let free = match self.dests.get(&dest) {
                Some(set) => set.first_free_from(from, n),
                None => Some(from),
            };
            let Some(off) = free else { break None };
            let port = self.port_at(off);
            if !self.port_bound_at(proto, local_ip, port) {
                break Some(off);
            }
            let dist = (off + n - from) % n + 1;
            probed += dist;
            if probed >= n {
                break None;
            }
            from = (off + 1) % n;
        };
        let off = found.ok_or(AllocError::AddrNotAvailable)?;

        let walked = (off + n - start) % n;
        let step = 1 + rng.below(self.config.max_step as u64) as u32;
        self.perturb[index] = (self.perturb[index] + walked + step) % n;

        let key = FlowKey::new(proto, SocketAddr::new(local_ip, self.port_at(off)), remote);
        self.dests
            .entry(dest)
            .or_insert_with(PortSet::new)
            .insert(off, n);
        self.flows.insert(&key, FlowState::Live(owner));
        Ok(key)
    }

    /// The port at index `off` (below the share's length) of the share.
    fn port_at(&self, off: u32) -> u16 {
        self.share
            .port(off)
            .unwrap_or(*self.config.ephemeral.start())
    }

    fn double_hash(&self, dest: &DestKey) -> (u64, usize) {
        let mut h = SipHasher13x128::new_with_keys(self.hash_key.0, self.hash_key.1);
        let mut buf = [0u8; 35];
        buf[0] = dest.proto as u8;
        buf[1..17].copy_from_slice(&ip16(dest.local));
        buf[17..33].copy_from_slice(&ip16(dest.remote.ip()));
        buf[33..35].copy_from_slice(&dest.remote.port().to_be_bytes());
        h.write(&buf);
        let h = h.finish128();
        (h.h1, (h.h2 % TABLE_LEN as u64) as usize)
    }

    /// A free port for a bind to port 0: the first without a conflicting
    /// bind, scanning the table's share from a random point (RFC 6056
    /// §3.3.1 style; a bind has no destination to key a hash with).
    pub(super) fn free_bind_port(
        &self,
        proto: Protocol,
        addr: IpAddr,
        rng: &mut dyn Rng,
    ) -> Option<u16> {
        let n = self.share.len();
        let first = rng.below(u64::from(n)) as u32;
        (0..n)
            .map(|i| self.port_at((first + i) % n))
            .find(|&port| !self.bind_conflicts(proto, addr, port))
    }
}

/// Offsets (port − range start) taken towards one destination.
///
/// Small sets are a sorted vector; past [`SPARSE_MAX`] entries the set turns
/// into a two-level bitmap: one bit per port, plus one bit per 64-port word
/// saying "this word is full", so a search skips 4096 taken ports per
/// summary word it reads.
#[derive(Clone, Debug)]
pub(super) struct PortSet {
    /// Number of offsets in the set.
    pub(super) len: u32,
    repr: PortSetRepr,
}

#[derive(Clone, Debug)]
enum PortSetRepr {
    Sparse(Vec<u32>),
    Dense { words: Box<[u64]>, full: Box<[u64]> },
}

const SPARSE_MAX: usize = 64;

impl PortSet {
    pub(super) fn new() -> PortSet {
        PortSet {
            len: 0,
            repr: PortSetRepr::Sparse(Vec::new()),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn contains(&self, off: u32) -> bool {
        match &self.repr {
            PortSetRepr::Sparse(v) => v.binary_search(&off).is_ok(),
            PortSetRepr::Dense { words, .. } => words[off as usize / 64] & (1 << (off % 64)) != 0,
        }
    }

    pub(super) fn insert(&mut self, off: u32, n: u32) {
        match &mut self.repr {
            PortSetRepr::Sparse(v) => match v.binary_search(&off) {
                Ok(_) => return,
                Err(i) if v.len() < SPARSE_MAX => v.insert(i, off),
                Err(_) => {
                    let taken = std::mem::take(v);
                    self.repr = dense(n, &taken);
                    return self.insert(off, n);
                }
            },
            PortSetRepr::Dense { words, full } => {
                let w = off as usize / 64;
                let bit = 1u64 << (off % 64);
                if words[w] & bit != 0 {
                    return;
                }
                words[w] |= bit;
                if words[w] == u64::MAX {
                    full[w / 64] |= 1 << (w % 64);
                }
            }
        }
        self.len += 1;
    }

    pub(super) fn remove(&mut self, off: u32) {
        match &mut self.repr {
            PortSetRepr::Sparse(v) => match v.binary_search(&off) {
                Ok(i) => {
                    v.remove(i);
                }
                Err(_) => return,
            },
            PortSetRepr::Dense { words, full } => {
                let w = off as usize / 64;
                let bit = 1u64 << (off % 64);
                if words[w] & bit == 0 {
                    return;
                }
                words[w] &= !bit;
                full[w / 64] &= !(1 << (w % 64));
            }
        }
        self.len -= 1;
    }

    /// The first offset at or after `from`, wrapping at `n`, not in the set.
    pub(super) fn first_free_from(&self, from: u32, n: u32) -> Option<u32> {
        if self.len >= n {
            return None;
        }
        match &self.repr {
            PortSetRepr::Sparse(v) => {
                // At most SPARSE_MAX taken offsets can stand in the way.
                let mut off = from;
                while v.binary_search(&off).is_ok() {
                    off = (off + 1) % n;
                }
                Some(off)
            }
            PortSetRepr::Dense { words, full } => {
                let nw = words.len();
                let w0 = from as usize / 64;
                let here = !words[w0] & (u64::MAX << (from % 64));
                if here != 0 {
                    return Some((w0 * 64) as u32 + here.trailing_zeros());
                }
                // Next word (cyclically after w0) that is not full.
                let w = next_clear_bit(full, (w0 + 1) % nw, nw)?;
                if w == w0 {
                    // Wrapped all the way: only bits below `from` remain.
                    let below = !words[w0] & !(u64::MAX << (from % 64));
                    return (below != 0).then(|| (w0 * 64) as u32 + below.trailing_zeros());
                }
                Some((w * 64) as u32 + (!words[w]).trailing_zeros())
            }
        }
    }
}

/// A bitmap of `n` bits with `taken` set; padding bits past `n` are set so
/// they are never found free.
fn dense(n: u32, taken: &[u32]) -> PortSetRepr {
    let nw = (n as usize).div_ceil(64);
    let mut words = vec![0u64; nw].into_boxed_slice();
    let mut full = vec![0u64; nw.div_ceil(64)].into_boxed_slice();
    if !n.is_multiple_of(64) {
        words[nw - 1] = u64::MAX << (n % 64);
    }
    for &off in taken {
        words[off as usize / 64] |= 1 << (off % 64);
    }
    for (w, &word) in words.iter().enumerate() {
        if word == u64::MAX {
            full[w / 64] |= 1 << (w % 64);
        }
    }
    PortSetRepr::Dense { words, full }
}

/// The first clear bit at or after `from` among the first `nbits` bits of
/// `bits`, wrapping around once.
fn next_clear_bit(bits: &[u64], from: usize, nbits: usize) -> Option<usize> {
    let scan = |lo: usize, hi: usize| -> Option<usize> {
        let mut i = lo;
        while i < hi {
            let word = !bits[i / 64] & (u64::MAX << (i % 64));
            if word != 0 {
                let found = (i / 64) * 64 + word.trailing_zeros() as usize;
                return (found < hi).then_some(found);
            }
            i = (i / 64 + 1) * 64;
        }
        None
    };
    scan(from, nbits).or_else(|| scan(0, from.min(nbits)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    #[test]
    fn port_set_matches_a_naive_model() {
        let mut rng = SeededRng::new(9);
        for n in [1u32, 63, 64, 65, 200, 4097] {
            let mut set = PortSet::new();
            let mut model = vec![false; n as usize];
            for _ in 0..5000 {
                let off = rng.below(n as u64) as u32;
                if rng.below(3) == 0 {
                    set.remove(off);
                    model[off as usize] = false;
                } else {
                    set.insert(off, n);
                    model[off as usize] = true;
                }
                let from = rng.below(n as u64) as u32;
                let want = (0..n).map(|i| (from + i) % n).find(|&o| !model[o as usize]);
                assert_eq!(set.first_free_from(from, n), want, "n={n} from={from}");
                assert_eq!(set.len as usize, model.iter().filter(|&&b| b).count());
            }
        }
    }
}
