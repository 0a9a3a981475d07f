//! The 4-tuple map behind [`PortTable`](super::PortTable): every flow's
//! state, found by protocol and 4-tuple in one hash probe.
//!
//! A [`FlowKey`] holds two `SocketAddr`s (68 bytes), and most of it is
//! padding for IPv4. The map stores keys packed instead: an IPv4 flow is
//! 16 bytes (two addresses, two ports, the protocol), an IPv6 flow 40, each
//! family in its own table. With the 16-byte value an IPv4 entry is 32
//! bytes, two to a cache line, so 100k flows take 4 MB and stay in the
//! last-level cache where 96-byte entries did not; the hash reads two
//! words instead of 37 bytes.
//!
//! Peers choose most of every key, so the hash is keyed with a secret
//! against flooding; see [`FoldHasher`] for why it is not SipHash.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{FlowKey, KeyedState, Protocol};

/// An IPv4 4-tuple, packed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Key4 {
    /// Local address in the high half, remote in the low.
    addrs: u64,
    /// Local port in the high half, remote in the low.
    ports: u32,
    proto: u8,
}

impl Hash for Key4 {
    fn hash<S: Hasher>(&self, state: &mut S) {
        state.write_u64(self.addrs);
        state.write_u64(u64::from(self.ports) << 8 | u64::from(self.proto));
    }
}

impl Hash for Key6 {
    fn hash<S: Hasher>(&self, state: &mut S) {
        for half in [&self.local, &self.remote] {
            let (hi, lo) = half.split_at(8);
            state.write_u64(u64::from_le_bytes(hi.try_into().expect("8 bytes")));
            state.write_u64(u64::from_le_bytes(lo.try_into().expect("8 bytes")));
        }
        state.write_u64(u64::from(self.ports) << 8 | u64::from(self.tag));
    }
}

/// Any other 4-tuple: IPv6, or (if a caller builds one) mixed families,
/// IPv4 addresses stored v4-mapped with a flag so the packing stays
/// one-to-one.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Key6 {
    local: [u8; 16],
    remote: [u8; 16],
    ports: u32,
    /// Protocol in bit 0; bit 1: local is IPv4; bit 2: remote is IPv4.
    tag: u8,
}

const LOCAL_V4: u8 = 2;
const REMOTE_V4: u8 = 4;

enum Packed {
    V4(Key4),
    V6(Key6),
}

fn pack(key: &FlowKey) -> Packed {
    let ports = u32::from(key.local.port()) << 16 | u32::from(key.remote.port());
    let proto = key.proto as u8;
    match (key.local.ip(), key.remote.ip()) {
        (IpAddr::V4(l), IpAddr::V4(r)) => Packed::V4(Key4 {
            addrs: u64::from(u32::from(l)) << 32 | u64::from(u32::from(r)),
            ports,
            proto,
        }),
        (l, r) => {
            let (local, lv4) = ip16(l);
            let (remote, rv4) = ip16(r);
            Packed::V6(Key6 {
                local,
                remote,
                ports,
                tag: proto | if lv4 { LOCAL_V4 } else { 0 } | if rv4 { REMOTE_V4 } else { 0 },
            })
        }
    }
}

fn ip16(ip: IpAddr) -> ([u8; 16], bool) {
    match ip {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), true),
        IpAddr::V6(v6) => (v6.octets(), false),
    }
}

fn proto_of(bits: u8) -> Protocol {
    if bits & 1 == 0 {
        Protocol::Tcp
    } else {
        Protocol::Udp
    }
}

impl Key4 {
    fn unpack(&self) -> FlowKey {
        let ip = |a: u64| IpAddr::V4(Ipv4Addr::from(a as u32));
        FlowKey {
            proto: proto_of(self.proto),
            local: SocketAddr::new(ip(self.addrs >> 32), (self.ports >> 16) as u16),
            remote: SocketAddr::new(ip(self.addrs), self.ports as u16),
        }
    }
}

impl Key6 {
    fn unpack(&self) -> FlowKey {
        let ip = |a: [u8; 16], v4: bool| {
            let v6 = Ipv6Addr::from(a);
            match v6.to_ipv4_mapped() {
                Some(v4addr) if v4 => IpAddr::V4(v4addr),
                _ => IpAddr::V6(v6),
            }
        };
        FlowKey {
            proto: proto_of(self.tag),
            local: SocketAddr::new(
                ip(self.local, self.tag & LOCAL_V4 != 0),
                (self.ports >> 16) as u16,
            ),
            remote: SocketAddr::new(
                ip(self.remote, self.tag & REMOTE_V4 != 0),
                self.ports as u16,
            ),
        }
    }
}

/// The flow map's keyed hash: each 64-bit word folded into the state by a
/// 64×64→128-bit multiply with a secret odd multiplier, the two halves of
/// the product XORed (the "folded multiply" of wyhash and foldhash).
///
/// Linux makes the same trade for its established-connection table
/// (`inet_ehashfn`: Jenkins hash under a boot-time secret): a fast keyed
/// hash, not a cryptographic one, because every packet pays for it. Peers
/// cannot see its values, and the keys are secret, so they cannot aim
/// 4-tuples at one bucket. Port *selection*, whose results peers do see,
/// keeps SipHash (RFC 6056). Costs three multiplies for an IPv4 key where
/// SipHash-1-3 took six rounds — 20 ns of a 30 ns lookup.
#[derive(Copy, Clone, Debug)]
pub(super) struct FoldHasher {
    acc: u64,
    mul: u64,
    /// The final fold's multiplier: one more multiply spreads the last
    /// word into the low bits hashbrown picks buckets with.
    fin: u64,
}

#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for FoldHasher {
    #[inline(always)]
    fn write_u64(&mut self, w: u64) {
        self.acc = fold(self.acc ^ w, self.mul);
    }

    /// Whole words as `write_u64` (little-endian); a trailing partial word
    /// zero-padded. Only the key types above hash here, with whole words.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline(always)]
    fn finish(&self) -> u64 {
        fold(self.acc, self.fin)
    }
}

/// Builds [`FoldHasher`]s under the flow map's secret key.
#[derive(Copy, Clone, Debug)]
pub(super) struct FlowHash {
    seed: u64,
    mul: u64,
    fin: u64,
}

impl FlowHash {
    /// Keys derived from the table's SipHash key (through SipHash, so the
    /// two hashes share no key material an attacker could relate).
    fn new(state: &KeyedState) -> Self {
        let derive = |label: u64| {
            let mut h = state.build_hasher();
            h.write_u64(label);
            h.finish()
        };
        FlowHash {
            seed: derive(0x666c_6f77_7365_6564),    // "flowseed"
            mul: derive(0x666c_6f77_6d75_6c74) | 1, // "flowmult", odd
            fin: derive(0x666c_6f77_6669_6e61) | 1, // "flowfina", odd
        }
    }
}

impl BuildHasher for FlowHash {
    type Hasher = FoldHasher;
    #[inline(always)]
    fn build_hasher(&self) -> FoldHasher {
        FoldHasher {
            acc: self.seed,
            mul: self.mul,
            fin: self.fin,
        }
    }
}

/// Flow states by 4-tuple.
pub(super) struct FlowMap<V> {
    v4: HashMap<Key4, V, FlowHash>,
    v6: HashMap<Key6, V, FlowHash>,
}

impl<V> FlowMap<V> {
    /// An empty map hashing under `state`'s key.
    pub(super) fn new(state: KeyedState) -> Self {
        FlowMap {
            v4: HashMap::with_hasher(FlowHash::new(&state)),
            v6: HashMap::with_hasher(FlowHash::new(&state)),
        }
    }

    /// The state of `key`'s flow.
    #[inline]
    pub(super) fn get(&self, key: &FlowKey) -> Option<&V> {
        match pack(key) {
            Packed::V4(k) => self.v4.get(&k),
            Packed::V6(k) => self.v6.get(&k),
        }
    }

    /// The state of `key`'s flow, mutably.
    pub(super) fn get_mut(&mut self, key: &FlowKey) -> Option<&mut V> {
        match pack(key) {
            Packed::V4(k) => self.v4.get_mut(&k),
            Packed::V6(k) => self.v6.get_mut(&k),
        }
    }

    /// Set `key`'s state, returning the one it replaces.
    pub(super) fn insert(&mut self, key: &FlowKey, value: V) -> Option<V> {
        match pack(key) {
            Packed::V4(k) => self.v4.insert(k, value),
            Packed::V6(k) => self.v6.insert(k, value),
        }
    }

    /// Add `key` unless it is present (one probe); whether it was added.
    pub(super) fn insert_new(&mut self, key: &FlowKey, value: V) -> bool {
        use std::collections::hash_map::Entry;
        fn put<K: Eq + Hash, V>(e: Entry<'_, K, V>, value: V) -> bool {
            match e {
                Entry::Occupied(_) => false,
                Entry::Vacant(v) => {
                    v.insert(value);
                    true
                }
            }
        }
        match pack(key) {
            Packed::V4(k) => put(self.v4.entry(k), value),
            Packed::V6(k) => put(self.v6.entry(k), value),
        }
    }

    /// Forget `key`, returning its state.
    pub(super) fn remove(&mut self, key: &FlowKey) -> Option<V> {
        match pack(key) {
            Packed::V4(k) => self.v4.remove(&k),
            Packed::V6(k) => self.v6.remove(&k),
        }
    }

    /// Number of flows.
    pub(super) fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Every flow with its state, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (FlowKey, &V)> + '_ {
        let v4 = self.v4.iter().map(|(k, v)| (k.unpack(), v));
        v4.chain(self.v6.iter().map(|(k, v)| (k.unpack(), v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn fold_hash_is_keyed_and_spreads_sequential_tuples() {
        let hash = |seed: u64, key: &FlowKey| {
            let state = KeyedState::new(&mut SeededRng::new(seed));
            let Packed::V4(k) = pack(key) else {
                panic!("IPv4 key")
            };
            FlowHash::new(&state).hash_one(k)
        };
        // 65536 flows differing only in the remote port, the worst case a
        // client behind one address can produce.
        let keys: Vec<FlowKey> = (0..=u16::MAX)
            .map(|p| {
                let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)), p);
                FlowKey::new(Protocol::Tcp, sa("10.0.0.1:80"), remote)
            })
            .collect();
        let hashes: Vec<u64> = keys.iter().map(|k| hash(1, k)).collect();
        // hashbrown uses the low bits for the bucket: as many distinct
        // buckets as random hashes would reach (1 - 1/e of them).
        let mut buckets = std::collections::HashSet::new();
        buckets.extend(hashes.iter().map(|h| h & 0xffff));
        assert!(buckets.len() > 40_000, "{} buckets", buckets.len());
        // ... and the top 7 bits as the tag it compares first: all even.
        let mut tags = [0u32; 128];
        for h in &hashes {
            tags[(h >> 57) as usize] += 1;
        }
        assert!(tags.iter().all(|&n| (400..=624).contains(&n)), "{tags:?}");
        // Another key, other hashes: the bucket of a tuple is not fixed.
        let moved = keys.iter().filter(|k| hash(1, k) != hash(2, k)).count();
        assert!(moved > 65_000);
    }

    #[test]
    fn packing_is_one_to_one_and_round_trips() {
        let keys = [
            FlowKey::new(Protocol::Tcp, sa("10.0.0.1:80"), sa("10.0.0.9:5555")),
            FlowKey::new(Protocol::Udp, sa("10.0.0.1:80"), sa("10.0.0.9:5555")),
            FlowKey::new(Protocol::Tcp, sa("10.0.0.9:5555"), sa("10.0.0.1:80")),
            FlowKey::new(Protocol::Tcp, sa("[fd00::1]:80"), sa("[fd00::9]:5555")),
            // Mixed families and their v4-mapped twins are distinct flows.
            FlowKey::new(Protocol::Tcp, sa("10.0.0.1:80"), sa("[fd00::9]:5555")),
            FlowKey::new(
                Protocol::Tcp,
                sa("[::ffff:10.0.0.1]:80"),
                sa("[fd00::9]:5555"),
            ),
            FlowKey::new(
                Protocol::Tcp,
                sa("[::ffff:10.0.0.1]:80"),
                sa("[::ffff:10.0.0.9]:5555"),
            ),
        ];
        let mut m = FlowMap::new(KeyedState::new(&mut SeededRng::new(1)));
        for (i, k) in keys.iter().enumerate() {
            assert!(m.insert_new(k, i), "{k:?} collided");
            assert!(!m.insert_new(k, 99), "{k:?} added twice");
        }
        assert_eq!(m.len(), keys.len());
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(m.get(k), Some(&i));
        }
        let mut back: Vec<(FlowKey, usize)> = m.iter().map(|(k, v)| (k, *v)).collect();
        back.sort_by_key(|&(_, v)| v);
        assert_eq!(back.iter().map(|(k, _)| *k).collect::<Vec<_>>(), keys);
        assert_eq!(m.remove(&keys[4]), Some(4));
        assert_eq!(m.get(&keys[4]), None);
        assert_eq!(m.get(&keys[5]), Some(&5));
        assert_eq!(m.insert(&keys[0], 7), Some(0));
        assert_eq!(m.len(), keys.len() - 1);
    }
}
