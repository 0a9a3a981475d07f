//! Which of N stack shards owns a flow.
//!
//! With a multi-queue TUN, each queue feeds its own `Stack` shard, and the
//! kernel puts every packet on the queue a steering program names
//! (`device::steering`). That program and the shards' port tables must
//! agree on one rule, and this module is that rule, as a pure function of
//! a flow's 4-tuple seen from ephemera's side:
//!
//! 1. **Ephemeral local port** (inside the configured range): the owner is
//!    `(port − start) mod N`. A shard hands out only the ports it owns
//!    ([`ShardPorts`]), so the replies to a connection it opened come home
//!    without any state in the kernel.
//! 2. **Any other local port** (a listener, a UDP socket on a fixed port,
//!    `connect_from` an explicit port outside the range): the owner is a
//!    keyed SipHash-1-3 of the remote address and port, mod N. The peer
//!    chooses those, so the hash is keyed (a peer cannot aim all its flows
//!    at one shard) and the key comes from the injected RNG.
//! 3. **ICMP errors** follow the flow of the datagram they quote (that is
//!    the steering program's job; it builds the same [`FlowKey`]).
//!
//! Consequences the daemon must respect:
//! - A flow is created only on its owner: a `connect_from` with an explicit
//!   local port, wherever the request came from, runs on
//!   [`Shards::owner`] of its 4-tuple; a passive open arrives there anyway.
//!   So no 4-tuple lives on two shards, and each shard's table stays the
//!   only judge of uniqueness for its flows.
//! - Listeners, and UDP sockets on a fixed port outside the range, exist on
//!   every shard (peers hash across all of them). A listener or a `bind` to
//!   a fixed port *inside* the range is legal but gets no spreading: all its
//!   traffic goes to the one shard that owns the port. A `bind` to port 0
//!   must take a port of its own shard's subset.
//! - The protocol is not part of the rule: TCP and UDP on the same 4-tuple
//!   land on the same shard.
//! - IPv4 and IPv6 hash differently (an IPv4-mapped IPv6 address is an IPv6
//!   address here, as it is on the wire).
//! - RFC 6056 per shard: a shard runs the per-destination algorithm over
//!   the indices `0..len` of its subset and maps an index to a port with
//!   [`ShardPorts::port`]. Towards one destination a shard therefore has
//!   about `range / N` ports, and a port reveals its shard (its residue), so
//!   an attacker who knows which shard opened a connection guesses among
//!   `range / N` ports instead of `range`. The order within the subset stays
//!   as unpredictable as before.
//! - N = 1 is the single-shard case: everything maps to shard 0 and the one
//!   subset is the whole range, in the port table's own order.
//! - N need not be a power of two; subsets differ in size by at most one.

use std::fmt;
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use siphasher::sip::SipHasher13;

use super::FlowKey;
use crate::rng::Rng;

/// Most shards: the kernel's limit on TUN queues (`MAX_TAP_QUEUES`).
pub const MAX_SHARDS: u16 = 256;

/// How flows are split among N shards: the shard count, the ephemeral port
/// range, and the secret key of the remote-endpoint hash. Every shard and
/// the steering program must be given the same value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Shards {
    count: u16,
    start: u16,
    /// Ports in the ephemeral range (1..=65535).
    len: u32,
    key: (u64, u64),
}

/// A shard split that cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardsError {
    /// Zero shards.
    NoShards,
    /// More shards than a TUN device has queues ([`MAX_SHARDS`]).
    TooMany {
        /// Shards asked for.
        count: u16,
    },
    /// The ephemeral range is empty (`start > end`).
    EmptyRange {
        /// First port given.
        start: u16,
        /// Last port given.
        end: u16,
    },
    /// The ephemeral range includes port 0, which means "any port".
    PortZero,
    /// Fewer ephemeral ports than shards: some shard would own none.
    RangeTooSmall {
        /// Ports in the range.
        ports: u32,
        /// Shards asked for.
        shards: u16,
    },
    /// A shard index not below the shard count.
    NoSuchShard {
        /// The index given.
        index: u16,
        /// Shards in the split.
        count: u16,
    },
}

impl fmt::Display for ShardsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardsError::NoShards => f.write_str("at least one shard (queue) is needed"),
            ShardsError::TooMany { count } => {
                write!(f, "{count} shards: a TUN device has at most {MAX_SHARDS} queues")
            }
            ShardsError::EmptyRange { start, end } => write!(
                f,
                "ephemeral port range {start}-{end} is empty: the first port must not exceed the last"
            ),
            ShardsError::PortZero => f.write_str("ephemeral port range must not include port 0"),
            ShardsError::RangeTooSmall { ports, shards } => write!(
                f,
                "{ports} ephemeral ports cannot be split among {shards} shards: each needs at least one"
            ),
            ShardsError::NoSuchShard { index, count } => {
                write!(f, "shard {index} of {count}: shards are numbered from 0 to N-1")
            }
        }
    }
}

impl std::error::Error for ShardsError {}

impl fmt::Debug for Shards {
    // The key is a secret: keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shards")
            .field("count", &self.count)
            .field("ephemeral", &self.ephemeral())
            .finish_non_exhaustive()
    }
}

impl Shards {
    /// `count` shards over the ephemeral range `ephemeral`, with the hash
    /// key drawn from `rng`.
    pub fn new(
        count: u16,
        ephemeral: RangeInclusive<u16>,
        rng: &mut dyn Rng,
    ) -> Result<Shards, ShardsError> {
        let key = (rng.next_u64(), rng.next_u64());
        Shards::with_key(count, ephemeral, key)
    }

    /// [`new`](Self::new) with an explicit key, for a caller that keeps the
    /// split stable across restarts or compares two builds.
    pub fn with_key(
        count: u16,
        ephemeral: RangeInclusive<u16>,
        key: (u64, u64),
    ) -> Result<Shards, ShardsError> {
        let (start, end) = (*ephemeral.start(), *ephemeral.end());
        if count == 0 {
            return Err(ShardsError::NoShards);
        }
        if count > MAX_SHARDS {
            return Err(ShardsError::TooMany { count });
        }
        if start > end {
            return Err(ShardsError::EmptyRange { start, end });
        }
        if start == 0 {
            return Err(ShardsError::PortZero);
        }
        let len = u32::from(end - start) + 1;
        if len < u32::from(count) {
            return Err(ShardsError::RangeTooSmall {
                ports: len,
                shards: count,
            });
        }
        Ok(Shards {
            count,
            start,
            len,
            key,
        })
    }

    /// Number of shards, N.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// The ephemeral port range being split.
    pub fn ephemeral(&self) -> RangeInclusive<u16> {
        // `len` ≥ 1 and the range ends at or below 65535 by construction.
        self.start..=(u32::from(self.start) + self.len - 1) as u16
    }

    /// The shard that owns `flow` (the rule in the module docs).
    pub fn owner(&self, flow: &FlowKey) -> u16 {
        self.owner_of(flow.local.port(), flow.remote)
    }

    /// The shard that owns any flow with local port `local_port` and peer
    /// `remote`, whatever the protocol and local address.
    pub fn owner_of(&self, local_port: u16, remote: SocketAddr) -> u16 {
        self.port_owner(local_port)
            .unwrap_or_else(|| self.remote_owner(remote))
    }

    /// The shard that owns ephemeral port `port`, or `None` if `port` is
    /// outside the ephemeral range.
    pub fn port_owner(&self, port: u16) -> Option<u16> {
        let off = u32::from(port.checked_sub(self.start)?);
        // `off % count` < count ≤ 256.
        (off < self.len).then(|| (off % u32::from(self.count)) as u16)
    }

    /// The shard that owns flows from `remote` to a local port outside the
    /// ephemeral range.
    pub fn remote_owner(&self, remote: SocketAddr) -> u16 {
        if self.count == 1 {
            return 0;
        }
        // `% count` < count ≤ 256.
        (remote_hash(self.key, remote) % u64::from(self.count)) as u16
    }

    /// The ephemeral ports `shard` may hand out, or `None` if there is no
    /// such shard.
    pub fn ports(&self, shard: u16) -> Option<ShardPorts> {
        if shard >= self.count {
            return None;
        }
        let (s, n) = (u32::from(shard), u32::from(self.count));
        Some(ShardPorts {
            // s < count ≤ len, so `start + s` is inside the range.
            first: self.start + shard,
            stride: self.count,
            // Offsets s, s+n, s+2n, ... below len: ⌈(len − s) / n⌉ ≥ 1.
            len: (self.len - s).div_ceil(n),
        })
    }

    /// The name of shard `index` of this split, for its port table's
    /// configuration, or `None` if there is no such shard.
    pub fn id(&self, index: u16) -> Option<ShardId> {
        (index < self.count).then_some(ShardId {
            index,
            count: self.count,
        })
    }

    /// The SipHash-1-3 key of the remote-endpoint hash, for the steering
    /// program, which embeds it.
    pub(crate) fn key(&self) -> (u64, u64) {
        self.key
    }
}

/// The keyed hash of a remote endpoint. The message is the big-endian
/// address and port packed into 64-bit words, fed little-endian (SipHash's
/// word order), so that the steering program can build the same words from
/// its big-endian packet loads:
/// IPv4: one word `addr << 16 | port` (8 bytes);
/// IPv6: `addr[0..8]`, `addr[8..16]`, `port` (24 bytes).
pub(crate) fn remote_hash(key: (u64, u64), remote: SocketAddr) -> u64 {
    let mut h = SipHasher13::new_with_keys(key.0, key.1);
    let port = u64::from(remote.port());
    match remote.ip() {
        IpAddr::V4(a) => h.write(&((u64::from(u32::from(a)) << 16) | port).to_le_bytes()),
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            h.write(&((bits >> 64) as u64).to_le_bytes());
            h.write(&(bits as u64).to_le_bytes());
            h.write(&port.to_le_bytes());
        }
    }
    h.finish()
}

/// Which shard of how many a port table belongs to: what
/// [`PortTableConfig::shard`](super::PortTableConfig::shard) names. A table
/// then hands out only the ephemeral ports of its share
/// ([`ShardPorts`]), whatever the hash key of the split, which a table does
/// not need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardId {
    /// This shard, below `count`.
    pub index: u16,
    /// N, the number of shards.
    pub count: u16,
}

impl ShardId {
    /// The one shard of an unsharded stack: the whole range, in the table's
    /// own order.
    pub const SOLE: ShardId = ShardId { index: 0, count: 1 };

    /// This shard's share of `ephemeral`, or why there is none (the
    /// split cannot work, or `index` is not below `count`).
    pub fn ports(&self, ephemeral: RangeInclusive<u16>) -> Result<ShardPorts, ShardsError> {
        // The key plays no part in the shares.
        let split = Shards::with_key(self.count, ephemeral, (0, 0))?;
        split.ports(self.index).ok_or(ShardsError::NoSuchShard {
            index: self.index,
            count: self.count,
        })
    }
}

impl Default for ShardId {
    fn default() -> Self {
        ShardId::SOLE
    }
}

/// One shard's share of the ephemeral range: the ports `first`,
/// `first + N`, `first + 2N`, ... that lie in the range. Index `k` of the
/// share is the port table's allocation offset, so RFC 6056 runs over
/// `0..len()` unchanged and maps its pick through [`port`](Self::port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardPorts {
    first: u16,
    stride: u16,
    len: u32,
}

impl ShardPorts {
    /// Number of ports in the share (at least 1).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Never true: every shard owns at least one port.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `index`-th port of the share, or `None` past its end.
    pub fn port(&self, index: u32) -> Option<u16> {
        // Below `len`, the port stays inside the ephemeral range.
        if self.stride == 1 {
            // One shard: no multiply on the allocation path.
            return (index < self.len).then(|| (u32::from(self.first) + index) as u16);
        }
        (index < self.len).then(|| (u32::from(self.first) + index * u32::from(self.stride)) as u16)
    }

    /// The index of `port` in the share, or `None` if the shard does not own
    /// it (outside the range, or another shard's residue).
    pub fn index(&self, port: u16) -> Option<u32> {
        let off = u32::from(port.checked_sub(self.first)?);
        if self.stride == 1 {
            // One shard: no division on the lookup path.
            return (off < self.len).then_some(off);
        }
        let stride = u32::from(self.stride);
        let index = off / stride;
        (off % stride == 0 && index < self.len).then_some(index)
    }

    /// Whether the shard owns `port`.
    pub fn contains(&self, port: u16) -> bool {
        self.index(port).is_some()
    }

    /// The ports of the share in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..self.len).filter_map(|k| self.port(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port_table::Protocol;
    use crate::rng::SeededRng;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const RANGES: [RangeInclusive<u16>; 6] = [
        49152..=65535,
        40000..=40999,
        1..=65535,
        1024..=1040,
        65520..=65535,
        5000..=5015,
    ];

    fn random_addr(rng: &mut SeededRng, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::from(
                (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64()),
            ))
        } else {
            IpAddr::V4(Ipv4Addr::from(rng.next_u64() as u32))
        }
    }

    fn random_flow(rng: &mut SeededRng, range: &RangeInclusive<u16>) -> FlowKey {
        let v6 = rng.below(2) == 0;
        let local_port = if rng.below(2) == 0 {
            *range.start() + rng.below(u64::from(range.end() - range.start()) + 1) as u16
        } else {
            rng.next_u64() as u16
        };
        let proto = if rng.below(2) == 0 {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        FlowKey::new(
            proto,
            SocketAddr::new(random_addr(rng, v6), local_port),
            SocketAddr::new(random_addr(rng, v6), rng.next_u64() as u16),
        )
    }

    fn shards(n: u16, range: RangeInclusive<u16>, seed: u64) -> Shards {
        Shards::new(n, range, &mut SeededRng::new(seed)).unwrap()
    }

    #[test]
    fn bad_splits_are_rejected() {
        let key = (1, 2);
        assert_eq!(
            Shards::with_key(0, 49152..=65535, key),
            Err(ShardsError::NoShards)
        );
        assert_eq!(
            Shards::with_key(257, 49152..=65535, key),
            Err(ShardsError::TooMany { count: 257 })
        );
        assert!(Shards::with_key(256, 49152..=65535, key).is_ok());
        #[allow(clippy::reversed_empty_ranges)]
        let inverted = 6000..=5000;
        assert_eq!(
            Shards::with_key(2, inverted, key),
            Err(ShardsError::EmptyRange {
                start: 6000,
                end: 5000
            })
        );
        assert_eq!(Shards::with_key(2, 0..=10, key), Err(ShardsError::PortZero));
        assert_eq!(
            Shards::with_key(4, 5000..=5002, key),
            Err(ShardsError::RangeTooSmall {
                ports: 3,
                shards: 4
            })
        );
        assert!(Shards::with_key(3, 5000..=5002, key).is_ok());
        assert!(Shards::with_key(1, 65535..=65535, key).is_ok());
        // Every error explains itself.
        assert!(ShardsError::RangeTooSmall {
            ports: 3,
            shards: 4
        }
        .to_string()
        .contains("3 ephemeral ports"));
    }

    #[test]
    fn debug_output_hides_the_key() {
        let s = Shards::with_key(2, 49152..=65535, (0xdead_beef, 0xfeed_face)).unwrap();
        let text = format!("{s:?}");
        assert!(text.contains("count: 2"), "{text}");
        assert!(
            !text.contains("3735928559") && !text.contains("deadbeef"),
            "{text}"
        );
    }

    /// For N = 1..=16 and ranges of several sizes: the shares are disjoint,
    /// cover the range, differ in size by at most one, and every port a
    /// shard would hand out maps back to that shard, by port and by flow.
    #[test]
    fn shares_partition_the_range_and_map_back_to_their_shard() {
        let mut rng = SeededRng::new(7);
        for range in RANGES {
            let total = u32::from(range.end() - range.start()) + 1;
            for n in 1..=16u16 {
                let Ok(s) = Shards::new(n, range.clone(), &mut rng) else {
                    assert!(total < u32::from(n), "{range:?} n={n}");
                    continue;
                };
                assert_eq!(s.ephemeral(), range);
                assert!(s.ports(n).is_none());
                let mut owner = vec![None::<u16>; total as usize];
                let (mut min, mut max) = (u32::MAX, 0);
                for shard in 0..n {
                    let share = s.ports(shard).unwrap();
                    assert!(!share.is_empty());
                    min = min.min(share.len());
                    max = max.max(share.len());
                    assert_eq!(share.port(share.len()), None);
                    for (k, port) in share.iter().enumerate() {
                        assert!(range.contains(&port));
                        assert_eq!(share.port(k as u32), Some(port));
                        assert_eq!(share.index(port), Some(k as u32));
                        assert_eq!(s.port_owner(port), Some(shard), "n={n} port={port}");
                        let slot = &mut owner[usize::from(port - range.start())];
                        assert_eq!(*slot, None, "port {port} in two shares");
                        *slot = Some(shard);
                        // Whatever the peer, protocol or local address.
                        let mut flow = random_flow(&mut rng, &range);
                        flow.local.set_port(port);
                        assert_eq!(s.owner(&flow), shard);
                    }
                }
                assert!(owner.iter().all(Option::is_some), "{range:?} n={n}");
                assert!(max - min <= 1, "{range:?} n={n}: {min}..{max}");
                // Outside the range no share claims a port.
                for port in [range.start().wrapping_sub(1), range.end().wrapping_add(1)] {
                    if !range.contains(&port) {
                        assert_eq!(s.port_owner(port), None);
                        assert!((0..n).all(|sh| !s.ports(sh).unwrap().contains(port)));
                    }
                }
            }
        }
    }

    /// Every flow maps to exactly one shard below N, and which one depends
    /// only on the ephemeral local port, or else only on the peer.
    #[test]
    fn every_flow_has_one_owner_decided_by_port_or_peer() {
        let mut rng = SeededRng::new(11);
        for n in 1..=16u16 {
            let s = shards(n, 49152..=65535, u64::from(n));
            for _ in 0..2000 {
                let flow = random_flow(&mut rng, &s.ephemeral());
                let owner = s.owner(&flow);
                assert!(owner < n);
                let (lp, remote) = (flow.local.port(), flow.remote);
                assert_eq!(owner, s.owner_of(lp, remote));
                let mut other = flow;
                other.proto = match flow.proto {
                    Protocol::Tcp => Protocol::Udp,
                    Protocol::Udp => Protocol::Tcp,
                };
                other
                    .local
                    .set_ip(random_addr(&mut rng, flow.local.is_ipv6()));
                match s.port_owner(lp) {
                    Some(by_port) => {
                        assert_eq!(owner, by_port);
                        other.remote = random_flow(&mut rng, &s.ephemeral()).remote;
                    }
                    None => {
                        assert_eq!(owner, s.remote_owner(remote));
                        // Any other non-ephemeral local port: same owner.
                        let p = rng.below(49152) as u16;
                        other.local.set_port(p);
                    }
                }
                assert_eq!(s.owner(&other), owner, "{flow:?} vs {other:?}");
            }
        }
    }

    #[test]
    fn one_shard_owns_everything() {
        let s = shards(1, 49152..=65535, 3);
        let mut rng = SeededRng::new(3);
        for _ in 0..1000 {
            assert_eq!(s.owner(&random_flow(&mut rng, &s.ephemeral())), 0);
        }
        // The one share is the whole range in order, offsets as today.
        let share = s.ports(0).unwrap();
        assert_eq!(share.len(), 16384);
        assert_eq!(share.port(0), Some(49152));
        assert_eq!(share.index(65535), Some(16383));
    }

    /// Peers spread evenly over the shards, whether they are random or
    /// chosen in a pattern (one address, consecutive ports; consecutive
    /// addresses, one port), for N that are and are not powers of two.
    #[test]
    fn peers_spread_evenly_even_in_patterns() {
        let mut rng = SeededRng::new(5);
        for n in [2u16, 3, 4, 5, 7, 8, 16] {
            let s = shards(n, 49152..=65535, 100 + u64::from(n));
            let patterns: [Box<dyn Fn(u32) -> SocketAddr>; 4] = [
                Box::new(|i| SocketAddr::new(Ipv4Addr::new(203, 0, 113, 7).into(), i as u16)),
                Box::new(|i| SocketAddr::new(Ipv4Addr::from(0x0a00_0000 + i).into(), 443)),
                Box::new(|i| {
                    SocketAddr::new(
                        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
                        i as u16,
                    )
                }),
                Box::new(|i| {
                    SocketAddr::new(
                        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, (i >> 16) as u16, i as u16).into(),
                        443,
                    )
                }),
            ];
            let samples = 16_000u32;
            let random: Vec<SocketAddr> = (0..samples)
                .map(|_| {
                    let v6 = rng.below(2) == 0;
                    SocketAddr::new(random_addr(&mut rng, v6), rng.next_u64() as u16)
                })
                .collect();
            let check = |name: &str, f: &dyn Fn(u32) -> SocketAddr| {
                let mut counts = vec![0u32; usize::from(n)];
                for i in 0..samples {
                    counts[usize::from(s.remote_owner(f(i)))] += 1;
                }
                // Binomial: expect samples/n each; allow 5 standard deviations.
                let mean = f64::from(samples) / f64::from(n);
                let slack = 5.0 * (mean * (1.0 - 1.0 / f64::from(n))).sqrt();
                assert!(
                    counts.iter().all(|&c| (f64::from(c) - mean).abs() <= slack),
                    "{name}, n={n}: {counts:?}"
                );
            };
            for (i, p) in patterns.iter().enumerate() {
                check(&format!("pattern {i}"), p.as_ref());
            }
            check("random", &|i| random[i as usize]);
        }
    }

    #[test]
    fn the_key_decides_the_spread_of_peers() {
        let a = Shards::with_key(4, 49152..=65535, (1, 2)).unwrap();
        let b = Shards::with_key(4, 49152..=65535, (1, 3)).unwrap();
        let peers = (0..1000u16).map(|p| SocketAddr::new(Ipv4Addr::new(192, 0, 2, 1).into(), p));
        let differ = peers
            .clone()
            .filter(|&r| a.remote_owner(r) != b.remote_owner(r))
            .count();
        // Independent keys agree on a quarter of the peers, differ on the rest.
        assert!((650..=850).contains(&differ), "{differ}");
        // Same key, same answers: every shard and the program agree.
        let a2 = Shards::with_key(4, 49152..=65535, (1, 2)).unwrap();
        assert!(peers
            .clone()
            .all(|r| a.remote_owner(r) == a2.remote_owner(r)));
        // Ephemeral ports do not depend on the key.
        assert!((49152..=65535).all(|p| a.port_owner(p) == b.port_owner(p)));
    }

    /// The remote hash is SipHash-1-3 over the documented words, which the
    /// steering program rebuilds from packet bytes: pin the layout.
    #[test]
    fn remote_hash_message_layout_is_pinned() {
        let key = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        let v4: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let mut h = SipHasher13::new_with_keys(key.0, key.1);
        h.write(&[0xbb, 0x01, 0x01, 0x02, 0x00, 0xc0, 0x00, 0x00]);
        assert_eq!(remote_hash(key, v4), h.finish());
        let v6: SocketAddr = "[2001:db8::1]:53".parse().unwrap();
        let mut h = SipHasher13::new_with_keys(key.0, key.1);
        h.write(&[0, 0, 0, 0, 0xb8, 0x0d, 0x01, 0x20]);
        h.write(&[1, 0, 0, 0, 0, 0, 0, 0]);
        h.write(&[53, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(remote_hash(key, v6), h.finish());
    }
}
