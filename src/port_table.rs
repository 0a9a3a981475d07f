//! The port table: who owns which port, and which connection a 4-tuple names.
//!
//! A pure module (no smoltcp, no I/O, time passed in) that does the kernel's
//! port bookkeeping:
//!
//! - **binds** — a listener or UDP socket on `addr:port`, where `addr` may be
//!   the wildcard (`0.0.0.0` / `::`). Two binds conflict when their ports
//!   and protocols match and their addresses overlap (equal, or one is the
//!   wildcard of the same family). ephemera behaves as if `SO_REUSEADDR`
//!   were set: connections, live or in TIME-WAIT, never block a bind.
//! - **flows** — one entry per TCP/UDP 4-tuple, either live (owned by a
//!   handle `H`) or in TIME-WAIT (a compact record until an expiry time,
//!   RFC 9293 §3.6.1). A 4-tuple is never handed out twice while it is in
//!   either state. Keys are stored packed (`flow_map`), so 100k IPv4 flows
//!   fit in 4 MB.
//! - **ephemeral allocation** — RFC 6056 §3.3.4 (Algorithm 4, double-hash)
//!   with the random increments of §3.3.5: a keyed hash of (local address,
//!   remote address, remote port) gives the starting offset, a second keyed
//!   hash picks a slot in a perturbation table, and the slot advances by a
//!   random step after each pick. Uniqueness is per destination, so one
//!   local address holds a full range of ports towards every destination.
//!
//! Allocation never walks the range: for each destination the ports in use
//! (live or TIME-WAIT) are kept in a `PortSet` — a short sorted vector, or
//! a two-level bitmap once it grows — so "first free port at or after the
//! candidate" costs a few word operations even at 99 % occupancy.
//!
//! Here: binds, flows, lookup and the invariants; in submodules, the
//! packed 4-tuple map (`flow_map`), ephemeral allocation and `PortSet`
//! (`ephemeral`), TIME-WAIT records and their expiry (`time_wait`), and
//! which stack shard owns a flow ([`Shards`]).
//!
//! Sharded (a stack per TUN queue, [`Shards`]), a table hands out only
//! its shard's share of the range ([`PortTableConfig::shard`]): the same
//! algorithm runs over the indices of the share, so one shard towards one
//! destination has about `range / N` ports.
//!
//! Invariants (checked by [`PortTable::check_invariants`]):
//! - every flow whose local port lies in the table's share of the
//!   ephemeral range is in the `PortSet` of its destination, and nothing
//!   else is; empty sets are removed;
//! - every TIME-WAIT flow has a record in the expiry queue; there are at
//!   most `max_time_wait` of them, and the queue holds at most twice as
//!   many entries as there are records (plus a small constant);
//! - binds on overlapping addresses (equal, or one the wildcard of the
//!   same family) never coexist;
//! - the per-port count of specific binds matches the bind map.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use siphasher::sip::SipHasher13;

use crate::rng::Rng;

mod ephemeral;
mod flow_map;
mod shard;
mod time_wait;
use ephemeral::PortSet;
use flow_map::FlowMap;
pub use shard::{ShardId, ShardPorts, Shards, ShardsError, MAX_SHARDS};
pub use time_wait::TimeWaitEntry;

/// Transport protocol: TCP and UDP have separate port spaces.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// RFC 9293.
    Tcp,
    /// RFC 768.
    Udp,
}

/// A connection's name: protocol plus 4-tuple, seen from our side.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowKey {
    /// TCP or UDP.
    pub proto: Protocol,
    /// Our address and port.
    pub local: SocketAddr,
    /// The peer's address and port.
    pub remote: SocketAddr,
}

impl FlowKey {
    /// A key with IPv6 flow labels and scope ids stripped, so that the same
    /// 4-tuple always compares and hashes equal.
    pub fn new(proto: Protocol, local: SocketAddr, remote: SocketAddr) -> FlowKey {
        FlowKey {
            proto,
            local: plain(local),
            remote: plain(remote),
        }
    }

    fn dest(&self) -> DestKey {
        DestKey {
            proto: self.proto,
            local: self.local.ip(),
            remote: self.remote,
        }
    }
}

// Hashes what `FlowKey::new` keeps (addresses, ports, protocol), one write
// of 37 packed bytes. The port table's own maps do not hash `FlowKey`s:
// they pack the key (`flow_map`, `DestKey`); this is for callers that keep
// keys in a `HashMap` or `HashSet`.
impl Hash for FlowKey {
    fn hash<S: Hasher>(&self, state: &mut S) {
        let mut buf = [0u8; 37];
        buf[0] = self.proto as u8;
        buf[1..17].copy_from_slice(&ip16(self.local.ip()));
        buf[17..33].copy_from_slice(&ip16(self.remote.ip()));
        buf[33..35].copy_from_slice(&self.local.port().to_be_bytes());
        buf[35..37].copy_from_slice(&self.remote.port().to_be_bytes());
        state.write(&buf);
    }
}

/// `d` in nanoseconds, saturating (at 584 years).
fn nanos(d: Duration) -> u64 {
    d.as_nanos().try_into().unwrap_or(u64::MAX)
}

fn ip16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn plain(sa: SocketAddr) -> SocketAddr {
    SocketAddr::new(sa.ip(), sa.port())
}

fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// The set of connections that compete for local ports: same protocol, same
/// local address, same remote endpoint.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
struct DestKey {
    proto: Protocol,
    local: IpAddr,
    remote: SocketAddr,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
struct BindKey {
    proto: Protocol,
    addr: IpAddr,
    port: u16,
}

/// Which address family a port is counted under for wildcard conflicts.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
struct FamilyPort {
    proto: Protocol,
    v6: bool,
    port: u16,
}

impl BindKey {
    fn family_port(&self) -> FamilyPort {
        FamilyPort {
            proto: self.proto,
            v6: self.addr.is_ipv6(),
            port: self.port,
        }
    }
}

/// A hasher builder with an explicit SipHash-1-3 key, drawn from the
/// injected RNG: peers choose the keys of our maps, so the hash must be
/// keyed (no hash flooding), and tests must be reproducible.
#[derive(Copy, Clone, Debug)]
pub(crate) struct KeyedState {
    k0: u64,
    k1: u64,
}

impl KeyedState {
    /// A builder keyed by two words from `rng`.
    pub(crate) fn new(rng: &mut dyn Rng) -> KeyedState {
        KeyedState {
            k0: rng.next_u64(),
            k1: rng.next_u64(),
        }
    }
}

impl BuildHasher for KeyedState {
    type Hasher = SipHasher13;
    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.k0, self.k1)
    }
}

/// Configuration of a [`PortTable`].
#[derive(Clone, Debug)]
pub struct PortTableConfig {
    /// Ports handed out for `connect` and `bind(port 0)`. Default
    /// 49152–65535 (IANA dynamic range, RFC 6335 §6).
    pub ephemeral: RangeInclusive<u16>,
    /// How long a closed 4-tuple stays in TIME-WAIT: 2·MSL
    /// (RFC 9293 §3.6.1). Default 60 s, as Linux.
    pub time_wait: Duration,
    /// Largest random step added to a perturbation slot after each
    /// allocation (RFC 6056 §3.3.5 `N`). 1 gives plain Algorithm 4
    /// (sequential per destination); the default 500 is the RFC's example
    /// and keeps successive ports to one destination unpredictable.
    pub max_step: u16,
    /// Which shard of a sharded stack this table serves
    /// ([`Shards`]): connections and binds to port 0 get ports of its
    /// share only, chosen by the same algorithm over the share's indices.
    /// Default [`ShardId::SOLE`], the whole range.
    pub shard: ShardId,
    /// Most 4-tuples in TIME-WAIT at once (Linux `tcp_max_tw_buckets`).
    /// A connection that closes while the records are at this cap skips
    /// TIME-WAIT, its 4-tuple released at once, as Linux does
    /// ([`TimeWaitEntry::Overflow`]). Default 65,536: about 8 MiB of
    /// records; Linux takes half its established-hash size (131,072 on a
    /// 24 GiB machine).
    pub max_time_wait: usize,
}

/// [`PortTableConfig::max_time_wait`]'s default.
pub const DEFAULT_MAX_TIME_WAIT: usize = 65_536;

impl Default for PortTableConfig {
    fn default() -> Self {
        PortTableConfig {
            ephemeral: 49152..=65535,
            time_wait: Duration::from_secs(60),
            max_step: 500,
            shard: ShardId::SOLE,
            max_time_wait: DEFAULT_MAX_TIME_WAIT,
        }
    }
}

/// A [`PortTableConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortTableConfigError {
    /// The ephemeral range is empty (`start > end`).
    EmptyRange {
        /// First port given.
        start: u16,
        /// Last port given.
        end: u16,
    },
    /// The ephemeral range includes port 0, which means "any port".
    PortZero,
    /// `max_step` is 0.
    ZeroStep,
    /// `shard` names no shard of the range (index not below the count,
    /// no shards, more than [`MAX_SHARDS`], or fewer ports than shards).
    Shard(ShardsError),
}

impl fmt::Display for PortTableConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortTableConfigError::EmptyRange { start, end } => write!(
                f,
                "ephemeral port range {start}-{end} is empty: the first port must not exceed the last"
            ),
            PortTableConfigError::PortZero => write!(f, "ephemeral port range must not include port 0"),
            PortTableConfigError::ZeroStep => write!(f, "the random step of port allocation must be at least 1"),
            PortTableConfigError::Shard(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for PortTableConfigError {}

/// Why [`PortTable::bind`] failed. (The stack's socket calls report it as
/// their own errors, e.g. [`crate::BindError::AddrInUse`].)
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BindConflict {
    /// EADDRINUSE: an overlapping bind holds the port, or (port 0) every
    /// port of the ephemeral range is bound.
    AddrInUse,
}

/// Why a connection could not be given a 4-tuple.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// EADDRNOTAVAIL: every ephemeral port towards this destination is in
    /// use or in TIME-WAIT, or the explicit 4-tuple is taken.
    AddrNotAvailable,
}

impl fmt::Display for BindConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("address already in use (EADDRINUSE)")
    }
}
impl std::error::Error for BindConflict {}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cannot assign requested address (EADDRNOTAVAIL)")
    }
}
impl std::error::Error for AllocError {}

/// What a 4-tuple leads to, most specific first (connection, then a
/// listener on the exact address, then one on the wildcard).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Lookup<H> {
    /// A live connection owns this 4-tuple.
    Flow(H),
    /// The 4-tuple is in TIME-WAIT.
    TimeWait,
    /// No connection; a bind (listener or UDP socket) owns the local
    /// address and port.
    Bound(H),
    /// Nothing: answer with RST or ICMP port unreachable.
    Nothing,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum FlowState<H> {
    Live(H),
    /// `rcv_nxt` is the caller's tag: the peer's next sequence number, so
    /// that a new SYN may reopen the 4-tuple (RFC 6191).
    TimeWait {
        /// Expiry, in nanoseconds of the caller's clock (a `Duration`
        /// would make every entry 8 bytes larger).
        until: u64,
        rcv_nxt: u32,
    },
}

/// Number of perturbation slots (RFC 6056 §3.3.4 `table[]`).
const TABLE_LEN: usize = 1024;

/// The port table. `H` is the caller's handle for a socket.
pub struct PortTable<H> {
    config: PortTableConfig,
    /// The ports this table hands out: the whole range, or its shard's
    /// share. Offsets in `dests` are indices into it.
    share: ShardPorts,
    flows: FlowMap<FlowState<H>>,
    dests: HashMap<DestKey, PortSet, KeyedState>,
    binds: HashMap<BindKey, H, KeyedState>,
    /// Number of specific-address binds per (protocol, family, port), so a
    /// wildcard bind can see its conflicts without a scan.
    specific: HashMap<FamilyPort, u32, KeyedState>,
    /// Expiry queue of TIME-WAIT records, oldest first. It may also hold
    /// stale entries (records reopened early, or restarted), skipped when
    /// they come due and compacted away before they outnumber the records
    /// (at most `2 × records + TW_SLACK` entries).
    time_wait: VecDeque<(Duration, FlowKey)>,
    /// TIME-WAIT flows.
    tw_count: usize,
    hash_key: (u64, u64),
    perturb: Box<[u32; TABLE_LEN]>,
}

impl<H: Copy + Eq + fmt::Debug> PortTable<H> {
    /// A table with keys drawn from `rng`.
    pub fn new(config: PortTableConfig, rng: &mut dyn Rng) -> Result<Self, PortTableConfigError> {
        let (start, end) = (*config.ephemeral.start(), *config.ephemeral.end());
        if start > end {
            return Err(PortTableConfigError::EmptyRange { start, end });
        }
        if start == 0 {
            return Err(PortTableConfigError::PortZero);
        }
        if config.max_step == 0 {
            return Err(PortTableConfigError::ZeroStep);
        }
        let share = config
            .shard
            .ports(config.ephemeral.clone())
            .map_err(PortTableConfigError::Shard)?;
        let state = KeyedState::new(rng);
        Ok(PortTable {
            share,
            config,
            flows: FlowMap::new(state),
            dests: HashMap::with_hasher(state),
            binds: HashMap::with_hasher(state),
            specific: HashMap::with_hasher(state),
            time_wait: VecDeque::new(),
            tw_count: 0,
            hash_key: (rng.next_u64(), rng.next_u64()),
            perturb: Box::new([0; TABLE_LEN]),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &PortTableConfig {
        &self.config
    }

    // ---- binds -----------------------------------------------------------

    /// Bind `local` for `proto` to `owner`. Port 0 picks a free port from
    /// the ephemeral range. Returns the bound address.
    pub fn bind(
        &mut self,
        proto: Protocol,
        local: SocketAddr,
        owner: H,
        rng: &mut dyn Rng,
    ) -> Result<SocketAddr, BindConflict> {
        let addr = local.ip();
        let port = if local.port() != 0 {
            if self.bind_conflicts(proto, addr, local.port()) {
                return Err(BindConflict::AddrInUse);
            }
            local.port()
        } else {
            self.free_bind_port(proto, addr, rng)
                .ok_or(BindConflict::AddrInUse)?
        };
        let key = BindKey { proto, addr, port };
        self.binds.insert(key, owner);
        if !addr.is_unspecified() {
            *self.specific.entry(key.family_port()).or_insert(0) += 1;
        }
        Ok(SocketAddr::new(addr, port))
    }

    /// Release a bind made by [`bind`](Self::bind). Returns its owner.
    pub fn unbind(&mut self, proto: Protocol, local: SocketAddr) -> Option<H> {
        let key = BindKey {
            proto,
            addr: local.ip(),
            port: local.port(),
        };
        let owner = self.binds.remove(&key)?;
        if !key.addr.is_unspecified() {
            if let Entry::Occupied(mut e) = self.specific.entry(key.family_port()) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        Some(owner)
    }

    fn bind_conflicts(&self, proto: Protocol, addr: IpAddr, port: u16) -> bool {
        let wildcard = BindKey {
            proto,
            addr: unspecified_like(addr),
            port,
        };
        if self.binds.contains_key(&wildcard) {
            return true;
        }
        if addr.is_unspecified() {
            self.specific.contains_key(&wildcard.family_port())
        } else {
            self.binds.contains_key(&BindKey { proto, addr, port })
        }
    }

    /// Whether a port may be bound (or used by a connection) on `addr`
    /// without stepping on a listener there.
    fn port_bound_at(&self, proto: Protocol, addr: IpAddr, port: u16) -> bool {
        self.binds.contains_key(&BindKey { proto, addr, port })
            || self.binds.contains_key(&BindKey {
                proto,
                addr: unspecified_like(addr),
                port,
            })
    }

    // ---- flows -----------------------------------------------------------

    /// Register a connection whose 4-tuple is already decided: a passive
    /// open, or a connect from an explicit local port.
    pub fn insert(&mut self, key: FlowKey, owner: H) -> Result<(), AllocError> {
        let key = FlowKey::new(key.proto, key.local, key.remote);
        if !self.flows.insert_new(&key, FlowState::Live(owner)) {
            return Err(AllocError::AddrNotAvailable);
        }
        if let Some(off) = self.range_offset(key.local.port()) {
            let n = self.share.len();
            self.dests
                .entry(key.dest())
                .or_insert_with(PortSet::new)
                .insert(off, n);
        }
        Ok(())
    }

    /// The index of `port` in this table's share of the range, if the
    /// table hands it out. (A flow on another shard's port, made with an
    /// explicit 4-tuple, competes with nothing this table allocates.)
    fn range_offset(&self, port: u16) -> Option<u32> {
        self.share.index(port)
    }

    /// Forget a live connection at once (aborted, refused, or closed
    /// without TIME-WAIT). Returns its owner.
    pub fn release(&mut self, key: &FlowKey) -> Option<H> {
        match self.flows.get(key) {
            Some(FlowState::Live(h)) => {
                let h = *h;
                self.forget(key);
                Some(h)
            }
            _ => None,
        }
    }

    fn forget(&mut self, key: &FlowKey) {
        self.flows.remove(key);
        if let Some(off) = self.range_offset(key.local.port()) {
            let dest = key.dest();
            if let Some(set) = self.dests.get_mut(&dest) {
                set.remove(off);
                if set.is_empty() {
                    self.dests.remove(&dest);
                }
            }
        }
    }

    // ---- lookup ----------------------------------------------------------

    /// Demultiplex: the owner of a 4-tuple, most specific match first.
    pub fn lookup(&self, key: &FlowKey) -> Lookup<H> {
        match self.flows.get(key) {
            Some(FlowState::Live(h)) => return Lookup::Flow(*h),
            Some(FlowState::TimeWait { .. }) => return Lookup::TimeWait,
            None => {}
        }
        match self.lookup_bound(key.proto, key.local) {
            Some(h) => Lookup::Bound(h),
            None => Lookup::Nothing,
        }
    }

    /// The bind that receives traffic for `local`: exact address first,
    /// then the wildcard of its family.
    pub fn lookup_bound(&self, proto: Protocol, local: SocketAddr) -> Option<H> {
        let exact = BindKey {
            proto,
            addr: local.ip(),
            port: local.port(),
        };
        self.binds.get(&exact).copied().or_else(|| {
            self.binds
                .get(&BindKey {
                    addr: unspecified_like(exact.addr),
                    ..exact
                })
                .copied()
        })
    }

    /// Hand a live flow to a new owner (the same socket, say, with more
    /// for the caller to keep with it). False if `key` is not live.
    pub fn set_owner(&mut self, key: &FlowKey, owner: H) -> bool {
        match self.flows.get_mut(key) {
            Some(FlowState::Live(h)) => {
                *h = owner;
                true
            }
            _ => false,
        }
    }

    /// The owner of a live flow, if any.
    pub fn flow(&self, key: &FlowKey) -> Option<H> {
        match self.flows.get(key) {
            Some(FlowState::Live(h)) => Some(*h),
            _ => None,
        }
    }

    // ---- inspection ------------------------------------------------------

    /// Number of live flows.
    pub fn live_flows(&self) -> usize {
        self.flows.len() - self.time_wait_flows()
    }

    /// Number of 4-tuples in TIME-WAIT.
    pub fn time_wait_flows(&self) -> usize {
        self.tw_count
    }

    /// Number of binds.
    pub fn binds(&self) -> usize {
        self.binds.len()
    }

    /// The ephemeral ports this table hands out: the whole range, or its
    /// shard's share ([`PortTableConfig::shard`]).
    pub fn share(&self) -> ShardPorts {
        self.share
    }

    /// How many local ports towards `remote` from `local_ip` are taken
    /// (live or TIME-WAIT) among those this table hands out.
    pub fn ports_in_use(&self, proto: Protocol, local_ip: IpAddr, remote: SocketAddr) -> usize {
        self.dests
            .get(&DestKey {
                proto,
                local: local_ip,
                remote: plain(remote),
            })
            .map_or(0, |s| s.len as usize)
    }

    /// Verify the table's internal indexes agree; `Err` names the first
    /// disagreement. Used by tests and fuzzers.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut expect: HashMap<DestKey, Vec<u32>> = HashMap::new();
        let mut tw = 0;
        let queued: std::collections::HashSet<(Duration, FlowKey)> =
            self.time_wait.iter().copied().collect();
        for (key, state) in self.flows.iter() {
            if let Some(off) = self.range_offset(key.local.port()) {
                expect.entry(key.dest()).or_default().push(off);
            }
            if let FlowState::TimeWait { until, .. } = state {
                tw += 1;
                if !queued.contains(&(Duration::from_nanos(*until), key)) {
                    return Err(format!("TIME-WAIT flow {key:?} missing from expiry queue"));
                }
            }
        }
        if tw != self.tw_count
            || tw > self.time_wait.len()
            || tw > self.config.max_time_wait
            || self.time_wait.len() > 2 * tw + time_wait::TW_SLACK
        {
            return Err(format!(
                "{} TIME-WAIT flows, count {}, cap {}, {} expiry records",
                tw,
                self.tw_count,
                self.config.max_time_wait,
                self.time_wait.len()
            ));
        }
        if expect.len() != self.dests.len() {
            return Err(format!(
                "{} destinations in use but {} port sets",
                expect.len(),
                self.dests.len()
            ));
        }
        for (dest, offs) in &expect {
            let set = self
                .dests
                .get(dest)
                .ok_or_else(|| format!("no port set for {dest:?}"))?;
            if set.len as usize != offs.len() || !offs.iter().all(|&o| set.contains(o)) {
                return Err(format!("port set of {dest:?} disagrees with its flows"));
            }
        }
        for key in self.binds.keys().filter(|k| !k.addr.is_unspecified()) {
            let wildcard = BindKey {
                addr: unspecified_like(key.addr),
                ..*key
            };
            if self.binds.contains_key(&wildcard) {
                return Err(format!(
                    "{:?} port {} bound on {} and on the wildcard",
                    key.proto, key.port, key.addr
                ));
            }
        }
        let mut specific: HashMap<FamilyPort, u32> = HashMap::new();
        for key in self.binds.keys().filter(|k| !k.addr.is_unspecified()) {
            *specific.entry(key.family_port()).or_default() += 1;
        }
        if specific.len() != self.specific.len()
            || specific
                .iter()
                .any(|(k, v)| self.specific.get(k) != Some(v))
        {
            return Err("specific-bind counts disagree with the bind map".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;
    use std::collections::HashSet;

    type Table = PortTable<u32>;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn table(range: RangeInclusive<u16>, tw_secs: u64) -> (Table, SeededRng) {
        let mut rng = SeededRng::new(42);
        let cfg = PortTableConfig {
            ephemeral: range,
            time_wait: Duration::from_secs(tw_secs),
            ..Default::default()
        };
        (Table::new(cfg, &mut rng).unwrap(), rng)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges)]
    fn bad_ranges_are_rejected_at_construction() {
        let mut rng = SeededRng::new(1);
        let inverted = PortTableConfig {
            ephemeral: 60000..=50000,
            ..Default::default()
        };
        assert_eq!(
            Table::new(inverted, &mut rng).err(),
            Some(PortTableConfigError::EmptyRange {
                start: 60000,
                end: 50000
            })
        );
        let zero = PortTableConfig {
            ephemeral: 0..=10,
            ..Default::default()
        };
        assert_eq!(
            Table::new(zero, &mut rng).err(),
            Some(PortTableConfigError::PortZero)
        );
        let one = PortTableConfig {
            ephemeral: 5000..=5000,
            ..Default::default()
        };
        assert!(Table::new(one, &mut rng).is_ok());
    }

    #[test]
    fn specific_and_wildcard_binds_conflict_by_family() {
        let (mut t, mut rng) = table(49152..=65535, 60);
        let tcp = Protocol::Tcp;
        assert_eq!(
            t.bind(tcp, sa("10.0.0.1:80"), 1, &mut rng),
            Ok(sa("10.0.0.1:80"))
        );
        // Same address and port: taken.
        assert_eq!(
            t.bind(tcp, sa("10.0.0.1:80"), 2, &mut rng),
            Err(BindConflict::AddrInUse)
        );
        // Wildcard overlaps the specific bind.
        assert_eq!(
            t.bind(tcp, sa("0.0.0.0:80"), 2, &mut rng),
            Err(BindConflict::AddrInUse)
        );
        // Another specific address on the same port is fine.
        assert!(t.bind(tcp, sa("10.0.0.2:80"), 3, &mut rng).is_ok());
        // Other family, other protocol: separate spaces.
        assert!(t.bind(tcp, sa("[::]:80"), 4, &mut rng).is_ok());
        assert!(t.bind(Protocol::Udp, sa("0.0.0.0:80"), 5, &mut rng).is_ok());
        // A wildcard blocks later specific binds.
        assert!(t.bind(tcp, sa("0.0.0.0:81"), 6, &mut rng).is_ok());
        assert_eq!(
            t.bind(tcp, sa("10.0.0.9:81"), 7, &mut rng),
            Err(BindConflict::AddrInUse)
        );
        // Releasing the specific binds frees the wildcard.
        assert_eq!(t.unbind(tcp, sa("10.0.0.1:80")), Some(1));
        assert_eq!(t.unbind(tcp, sa("10.0.0.2:80")), Some(3));
        assert!(t.bind(tcp, sa("0.0.0.0:80"), 8, &mut rng).is_ok());
        t.check_invariants().unwrap();
    }

    #[test]
    fn invariants_catch_overlapping_binds() {
        let (mut t, mut rng) = table(49152..=65535, 60);
        t.bind(Protocol::Tcp, sa("10.0.0.1:80"), 1, &mut rng)
            .unwrap();
        t.bind(Protocol::Tcp, sa("[::]:80"), 2, &mut rng).unwrap();
        t.bind(Protocol::Udp, sa("0.0.0.0:80"), 3, &mut rng)
            .unwrap();
        t.check_invariants().unwrap();
        // What `bind` refuses, forced in behind its back (keeping the
        // specific-bind counts right, so only the overlap is wrong).
        t.binds.insert(
            BindKey {
                proto: Protocol::Tcp,
                addr: ip("0.0.0.0"),
                port: 80,
            },
            4,
        );
        let e = t.check_invariants().unwrap_err();
        assert!(e.contains("port 80") && e.contains("wildcard"), "{e}");
    }

    #[test]
    fn set_owner_changes_live_flows_only() {
        let (mut t, _) = table(49152..=65535, 60);
        let key = FlowKey::new(Protocol::Tcp, sa("10.0.0.1:80"), sa("10.0.0.9:5555"));
        assert!(!t.set_owner(&key, 7), "no such flow");
        t.insert(key, 2).unwrap();
        assert!(t.set_owner(&key, 7));
        assert_eq!(t.lookup(&key), Lookup::Flow(7));
        assert_eq!(t.release(&key), Some(7));
        t.insert(key, 2).unwrap();
        t.enter_time_wait(&key, Duration::from_secs(1), 0);
        assert!(!t.set_owner(&key, 8), "TIME-WAIT has no owner");
        assert_eq!(t.lookup(&key), Lookup::TimeWait);
        t.check_invariants().unwrap();
    }

    #[test]
    fn lookup_prefers_flow_then_exact_then_wildcard() {
        let (mut t, mut rng) = table(49152..=65535, 60);
        let tcp = Protocol::Tcp;
        t.bind(tcp, sa("0.0.0.0:80"), 1, &mut rng).unwrap();
        t.bind(tcp, sa("[::]:80"), 6, &mut rng).unwrap();
        let key = FlowKey::new(tcp, sa("10.0.0.1:80"), sa("10.0.0.9:5555"));
        assert_eq!(t.lookup(&key), Lookup::Bound(1));
        t.insert(key, 2).unwrap();
        assert_eq!(t.lookup(&key), Lookup::Flow(2));
        let other = FlowKey::new(tcp, sa("10.0.0.1:80"), sa("10.0.0.9:5556"));
        assert_eq!(t.lookup(&other), Lookup::Bound(1));
        // An IPv6 packet finds the IPv6 wildcard, not the IPv4 one.
        let v6 = FlowKey::new(tcp, sa("[fd00::1]:80"), sa("[fd00::9]:5555"));
        assert_eq!(t.lookup(&v6), Lookup::Bound(6));
        // UDP is a separate space.
        let udp = FlowKey::new(Protocol::Udp, sa("10.0.0.1:80"), sa("10.0.0.9:5555"));
        assert_eq!(t.lookup(&udp), Lookup::Nothing);
        // Nothing on port 81.
        let miss = FlowKey::new(tcp, sa("10.0.0.1:81"), sa("10.0.0.9:5555"));
        assert_eq!(t.lookup(&miss), Lookup::Nothing);
    }

    #[test]
    fn the_same_four_tuple_is_never_inserted_twice() {
        let (mut t, _) = table(49152..=65535, 60);
        let key = FlowKey::new(Protocol::Tcp, sa("10.0.0.1:80"), sa("10.0.0.9:5555"));
        assert!(t.insert(key, 1).is_ok());
        assert_eq!(t.insert(key, 2), Err(AllocError::AddrNotAvailable));
        // IPv6 scope ids and flow labels do not make a different tuple.
        let v6a = FlowKey::new(Protocol::Tcp, sa("[fd00::1]:80"), sa("[fd00::9]:1"));
        let mut scoped: SocketAddr = sa("[fd00::9]:1");
        if let SocketAddr::V6(ref mut s) = scoped {
            s.set_flowinfo(7);
            s.set_scope_id(3);
        }
        let v6b = FlowKey::new(Protocol::Tcp, sa("[fd00::1]:80"), scoped);
        t.insert(v6a, 3).unwrap();
        assert_eq!(t.insert(v6b, 4), Err(AllocError::AddrNotAvailable));
    }

    #[test]
    fn ephemeral_ports_stay_in_range_and_are_unique_per_destination() {
        let (mut t, mut rng) = table(40000..=40999, 60);
        let local = ip("10.0.0.1");
        let dst = sa("10.0.0.9:80");
        let mut seen = HashSet::new();
        for i in 0..1000 {
            let key = t.allocate(Protocol::Tcp, local, dst, i, &mut rng).unwrap();
            assert!((40000..=40999).contains(&key.local.port()));
            assert_eq!(key.local.ip(), local);
            assert_eq!(key.remote, dst);
            assert!(
                seen.insert(key.local.port()),
                "port {} twice",
                key.local.port()
            );
        }
        // Exhausted for this destination ...
        assert_eq!(
            t.allocate(Protocol::Tcp, local, dst, 9999, &mut rng),
            Err(AllocError::AddrNotAvailable)
        );
        // ... but other destinations, including another port on the same
        // host, still get ports: uniqueness is per 4-tuple.
        for other in ["10.0.0.9:81", "10.0.0.10:80"] {
            let key = t
                .allocate(Protocol::Tcp, local, sa(other), 1, &mut rng)
                .unwrap();
            assert!((40000..=40999).contains(&key.local.port()));
        }
        // UDP has its own space.
        assert!(t.allocate(Protocol::Udp, local, dst, 1, &mut rng).is_ok());
        t.check_invariants().unwrap();
    }

    #[test]
    fn more_than_a_range_of_connections_from_one_address() {
        let (mut t, mut rng) = table(49152..=65535, 60);
        let local = ip("10.0.0.1");
        let mut tuples = HashSet::new();
        for server_port in [80u16, 443, 8080, 8443, 9000] {
            for i in 0..16384u32 {
                let key = t
                    .allocate(
                        Protocol::Tcp,
                        local,
                        SocketAddr::new(ip("10.0.0.9"), server_port),
                        i,
                        &mut rng,
                    )
                    .unwrap();
                assert!(tuples.insert(key));
            }
        }
        assert_eq!(tuples.len(), 5 * 16384);
        assert_eq!(t.live_flows(), 5 * 16384);
        t.check_invariants().unwrap();
    }

    #[test]
    fn allocation_skips_ports_held_by_listeners() {
        let (mut t, mut rng) = table(50000..=50009, 60);
        let local = ip("10.0.0.1");
        t.bind(Protocol::Tcp, sa("0.0.0.0:50003"), 100, &mut rng)
            .unwrap();
        t.bind(Protocol::Tcp, sa("10.0.0.1:50007"), 101, &mut rng)
            .unwrap();
        let mut ports: Vec<u16> = (0..8)
            .map(|i| {
                t.allocate(Protocol::Tcp, local, sa("10.0.0.9:80"), i, &mut rng)
                    .unwrap()
                    .local
                    .port()
            })
            .collect();
        ports.sort();
        assert_eq!(
            ports,
            [50000, 50001, 50002, 50004, 50005, 50006, 50008, 50009]
        );
        assert!(t
            .allocate(Protocol::Tcp, local, sa("10.0.0.9:80"), 9, &mut rng)
            .is_err());
    }

    #[test]
    fn time_wait_blocks_reuse_until_two_msl_then_releases() {
        let (mut t, mut rng) = table(50000..=50001, 60);
        let local = ip("10.0.0.1");
        let dst = sa("10.0.0.9:80");
        let a = t.allocate(Protocol::Tcp, local, dst, 1, &mut rng).unwrap();
        let b = t.allocate(Protocol::Tcp, local, dst, 2, &mut rng).unwrap();
        assert_ne!(a.local.port(), b.local.port());
        let t0 = Duration::from_secs(100);
        assert_eq!(t.enter_time_wait(&a, t0, 0).owner(), Some(1));
        assert_eq!(t.release(&b), Some(2));
        assert_eq!(t.lookup(&a), Lookup::TimeWait);
        assert_eq!(t.time_wait_flows(), 1);
        // b's port is free at once, a's is not.
        let c = t.allocate(Protocol::Tcp, local, dst, 3, &mut rng).unwrap();
        assert_eq!(c.local.port(), b.local.port());
        assert!(t.allocate(Protocol::Tcp, local, dst, 4, &mut rng).is_err());
        // An explicit connect onto the TIME-WAIT tuple is refused too.
        assert_eq!(t.insert(a, 5), Err(AllocError::AddrNotAvailable));
        assert_eq!(t.next_expiry(), Some(t0 + Duration::from_secs(60)));
        // Just before 2·MSL: still held.
        assert_eq!(t.expire(t0 + Duration::from_millis(59_999)), 0);
        assert!(t.allocate(Protocol::Tcp, local, dst, 4, &mut rng).is_err());
        // At 2·MSL: released.
        assert_eq!(t.expire(t0 + Duration::from_secs(60)), 1);
        assert_eq!(t.lookup(&a), Lookup::Nothing);
        let d = t.allocate(Protocol::Tcp, local, dst, 6, &mut rng).unwrap();
        assert_eq!(d.local.port(), a.local.port());
        assert_eq!(t.next_expiry(), None);
        t.check_invariants().unwrap();
    }

    #[test]
    fn a_syn_beyond_the_old_sequence_reopens_time_wait() {
        let (mut t, _) = table(49152..=65535, 60);
        let key = FlowKey::new(Protocol::Tcp, sa("10.0.0.2:80"), sa("10.0.0.1:40000"));
        t.insert(key, 1).unwrap();
        let t0 = Duration::from_secs(10);
        t.enter_time_wait(&key, t0, 1_000);
        // An old duplicate (ISN not beyond RCV.NXT) is refused.
        assert!(!t.reopen_time_wait(&key, 999));
        assert!(!t.reopen_time_wait(&key, 1_000));
        assert_eq!(t.lookup(&key), Lookup::TimeWait);
        // Beyond it, also across the sequence wrap: reopened.
        assert!(t.reopen_time_wait(&key, 1_001));
        assert_eq!(t.lookup(&key), Lookup::Nothing);
        assert_eq!(t.time_wait_flows(), 0);
        assert_eq!(t.time_wait_entries().count(), 0);
        t.check_invariants().unwrap();
        // The new connection takes the 4-tuple and later enters TIME-WAIT
        // again; the stale expiry record of the first does not end it.
        t.insert(key, 2).unwrap();
        t.enter_time_wait(&key, t0 + Duration::from_secs(30), u32::MAX - 5);
        assert_eq!(t.expire(t0 + Duration::from_secs(60)), 0);
        assert_eq!(t.lookup(&key), Lookup::TimeWait);
        assert!(
            t.reopen_time_wait(&key, 3),
            "3 is after u32::MAX - 5 modulo 2^32"
        );
        t.check_invariants().unwrap();
        assert_eq!(t.expire(t0 + Duration::from_secs(200)), 0);
        assert_eq!(t.next_expiry(), None);
    }

    #[test]
    fn expiry_drops_stale_entries_before_the_next_live_record() {
        let (mut t, _) = table(49152..=65535, 60);
        let key = |port| FlowKey::new(Protocol::Tcp, sa("10.0.0.2:80"), sa(port));
        let (a, b) = (key("10.0.0.1:40000"), key("10.0.0.1:40001"));
        let t0 = Duration::from_secs(10);
        for (k, at) in [(a, t0), (b, t0 + Duration::from_secs(5))] {
            t.insert(k, 1).unwrap();
            t.enter_time_wait(&k, at, 1_000);
        }
        // `a` reopened: its entry is stale, and the next expiry is `b`'s
        // once the table has looked (not a wake-up for nothing at t0+60).
        assert!(t.reopen_time_wait(&a, 2_000));
        assert_eq!(t.next_expiry(), Some(t0 + Duration::from_secs(60)));
        assert_eq!(t.expire(t0), 0);
        assert_eq!(t.next_expiry(), Some(t0 + Duration::from_secs(65)));
        assert_eq!(t.lookup(&b), Lookup::TimeWait);
        t.check_invariants().unwrap();
        assert_eq!(t.expire(t0 + Duration::from_secs(65)), 1);
        assert_eq!(t.next_expiry(), None);
        t.check_invariants().unwrap();
    }

    #[test]
    fn zero_time_wait_releases_at_once() {
        let (mut t, mut rng) = table(50000..=50000, 0);
        let a = t
            .allocate(
                Protocol::Tcp,
                ip("10.0.0.1"),
                sa("10.0.0.9:80"),
                1,
                &mut rng,
            )
            .unwrap();
        t.enter_time_wait(&a, Duration::from_secs(1), 0);
        assert!(t
            .allocate(
                Protocol::Tcp,
                ip("10.0.0.1"),
                sa("10.0.0.9:80"),
                2,
                &mut rng
            )
            .is_ok());
    }

    #[test]
    fn bind_port_zero_picks_a_free_ephemeral_port_and_exhausts_cleanly() {
        let (mut t, mut rng) = table(50000..=50003, 60);
        let mut got = HashSet::new();
        for i in 0..4 {
            let a = t.bind(Protocol::Udp, sa("0.0.0.0:0"), i, &mut rng).unwrap();
            assert!((50000..=50003).contains(&a.port()));
            assert!(got.insert(a.port()));
        }
        assert_eq!(
            t.bind(Protocol::Udp, sa("10.0.0.1:0"), 9, &mut rng),
            Err(BindConflict::AddrInUse)
        );
    }

    #[test]
    fn successive_ports_to_one_destination_are_spread_not_sequential() {
        let (mut t, mut rng) = table(49152..=65535, 60);
        let local = ip("10.0.0.1");
        let dst = sa("10.0.0.9:80");
        let ports: Vec<u16> = (0..2048)
            .map(|i| {
                let k = t.allocate(Protocol::Tcp, local, dst, i, &mut rng).unwrap();
                t.release(&k);
                k.local.port()
            })
            .collect();
        let sequential = ports
            .windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(1))
            .count();
        assert!(sequential < 20, "{sequential} sequential successors");
        // Roughly uniform over 16 buckets of the range (expect 128 each).
        let mut buckets = [0u32; 16];
        for p in &ports {
            buckets[(*p as usize - 49152) / 1024] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (64..=192).contains(&b)),
            "{buckets:?}"
        );
    }

    #[test]
    fn different_destinations_start_at_independent_points() {
        let (mut t, mut rng) = table(49152..=65535, 60);
        let local = ip("10.0.0.1");
        let firsts: HashSet<u16> = (0..64u16)
            .map(|p| {
                t.allocate(
                    Protocol::Tcp,
                    local,
                    SocketAddr::new(ip("10.0.0.9"), 1000 + p),
                    0,
                    &mut rng,
                )
                .unwrap()
                .local
                .port()
            })
            .collect();
        // 64 independent uniform picks from 16384 ports: collisions are rare.
        assert!(firsts.len() >= 60, "only {} distinct", firsts.len());
    }

    #[test]
    fn tables_with_the_same_seed_agree_and_other_seeds_differ() {
        let run = |seed| {
            let mut rng = SeededRng::new(seed);
            let mut t = Table::new(PortTableConfig::default(), &mut rng).unwrap();
            (0..10)
                .map(|i| {
                    t.allocate(
                        Protocol::Tcp,
                        ip("10.0.0.1"),
                        sa("10.0.0.9:80"),
                        i,
                        &mut rng,
                    )
                    .unwrap()
                    .local
                    .port()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    fn shard_table(range: RangeInclusive<u16>, index: u16, count: u16, seed: u64) -> Table {
        let cfg = PortTableConfig {
            ephemeral: range,
            shard: ShardId { index, count },
            ..Default::default()
        };
        Table::new(cfg, &mut SeededRng::new(seed)).unwrap()
    }

    #[test]
    fn a_shard_that_does_not_exist_is_rejected_at_construction() {
        let mut rng = SeededRng::new(1);
        let cfg = |index, count, ephemeral| PortTableConfig {
            ephemeral,
            shard: ShardId { index, count },
            ..Default::default()
        };
        let no_such = Table::new(cfg(4, 4, 49152..=65535), &mut rng).err();
        assert_eq!(
            no_such,
            Some(PortTableConfigError::Shard(ShardsError::NoSuchShard {
                index: 4,
                count: 4
            }))
        );
        assert!(no_such.unwrap().to_string().contains("shard 4 of 4"));
        assert_eq!(
            Table::new(cfg(0, 0, 49152..=65535), &mut rng).err(),
            Some(PortTableConfigError::Shard(ShardsError::NoShards))
        );
        assert_eq!(
            Table::new(cfg(0, 257, 49152..=65535), &mut rng).err(),
            Some(PortTableConfigError::Shard(ShardsError::TooMany {
                count: 257
            }))
        );
        assert_eq!(
            Table::new(cfg(0, 5, 5000..=5003), &mut rng).err(),
            Some(PortTableConfigError::Shard(ShardsError::RangeTooSmall {
                ports: 4,
                shards: 5
            }))
        );
        assert!(Table::new(cfg(3, 4, 5000..=5003), &mut rng).is_ok());
    }

    /// For N = 1..16: N tables, each told "shard i of N", open connections
    /// to many destinations and bind to port 0. Every flow a shard opens is
    /// owned by that shard and by no other ([`Shards::owner`], whatever the
    /// split's key), every port stays in the shard's share, and a flow to a
    /// listener (a fixed port outside the range) has exactly one owner.
    #[test]
    fn every_flow_a_shard_opens_maps_back_to_that_shard_alone() {
        let mut rng = SeededRng::new(16);
        let local = ip("10.0.0.1");
        for n in 1..=16u16 {
            let split = Shards::new(n, 49152..=65535, &mut rng).unwrap();
            for i in 0..n {
                let mut t = shard_table(49152..=65535, i, n, u64::from(n) << 8 | u64::from(i));
                assert_eq!(t.share(), split.ports(i).unwrap());
                for d in 0..300u32 {
                    let remote = SocketAddr::new(
                        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0100 + d % 7)),
                        (80 + d % 5) as u16,
                    );
                    let key = t
                        .allocate(Protocol::Tcp, local, remote, d, &mut rng)
                        .unwrap();
                    let owners: Vec<u16> = (0..n).filter(|&j| split.owner(&key) == j).collect();
                    assert_eq!(owners, [i], "n={n} shard {i}: {key:?}");
                    assert!(t.share().contains(key.local.port()));
                    assert!((0..n)
                        .filter(|&j| j != i)
                        .all(|j| !split.ports(j).unwrap().contains(key.local.port())));
                }
                let b = t.bind(Protocol::Udp, sa("0.0.0.0:0"), 1, &mut rng).unwrap();
                assert_eq!(split.port_owner(b.port()), Some(i), "bind(0) n={n}");
                t.check_invariants().unwrap();
            }
            // Flows to a listener on every shard: peers pick the port, and
            // each flow has exactly one owner.
            for k in 0..500u32 {
                let peer = SocketAddr::new(
                    IpAddr::from(std::net::Ipv4Addr::from(rng.next_u64() as u32)),
                    rng.next_u64() as u16,
                );
                let flow = FlowKey::new(
                    Protocol::Tcp,
                    SocketAddr::new(local, 80 + (k % 3) as u16),
                    peer,
                );
                let owners = (0..n).filter(|&j| split.owner(&flow) == j).count();
                assert_eq!(owners, 1, "n={n} {flow:?}");
            }
        }
    }

    /// A shard hands out every port of its share towards one destination,
    /// then EADDRNOTAVAIL: the range per destination is divided by N. TIME-
    /// WAIT records stay in the table of the shard that made them and hold
    /// their port there until they expire.
    #[test]
    fn a_shard_exhausts_its_share_and_keeps_its_time_wait() {
        let local = ip("10.0.0.1");
        let dst = sa("10.0.0.9:80");
        let mut rng = SeededRng::new(3);
        for (range, n) in [
            (50000..=50099u16, 3u16),
            (49152..=65535, 4),
            (5000..=5000, 1),
        ] {
            for i in 0..n {
                let mut t = shard_table(range.clone(), i, n, 9);
                let share = t.share();
                let mut got = HashSet::new();
                for k in 0..share.len() {
                    let key = t.allocate(Protocol::Tcp, local, dst, k, &mut rng).unwrap();
                    assert!(got.insert(key.local.port()));
                }
                assert_eq!(got, share.iter().collect::<HashSet<_>>());
                assert_eq!(
                    t.allocate(Protocol::Tcp, local, dst, 0, &mut rng),
                    Err(AllocError::AddrNotAvailable)
                );
                assert_eq!(
                    t.ports_in_use(Protocol::Tcp, local, dst),
                    share.len() as usize
                );
                // One connection closes actively: its port waits 2MSL.
                let port = share.port(0).unwrap();
                let key = FlowKey::new(Protocol::Tcp, SocketAddr::new(local, port), dst);
                t.enter_time_wait(&key, Duration::ZERO, 0);
                assert_eq!(t.time_wait_flows(), 1);
                assert_eq!(
                    t.allocate(Protocol::Tcp, local, dst, 0, &mut rng),
                    Err(AllocError::AddrNotAvailable)
                );
                t.expire(Duration::from_secs(61));
                let again = t.allocate(Protocol::Tcp, local, dst, 7, &mut rng).unwrap();
                assert_eq!(again.local.port(), port);
                t.check_invariants().unwrap();
            }
        }
    }

    /// Per shard the port sequence to one destination stays unpredictable
    /// within its share: no sequential steps (in share indices) and roughly
    /// uniform over the share.
    #[test]
    fn per_shard_ports_are_spread_within_the_share() {
        let local = ip("10.0.0.1");
        let dst = sa("10.0.0.9:80");
        for n in [2u16, 3, 4, 7] {
            for i in 0..n {
                let mut t = shard_table(49152..=65535, i, n, 77 + u64::from(i));
                let mut rng = SeededRng::new(u64::from(n * 16 + i));
                let share = t.share();
                let idx: Vec<u32> = (0..2048)
                    .map(|k| {
                        let key = t.allocate(Protocol::Tcp, local, dst, k, &mut rng).unwrap();
                        t.release(&key);
                        share.index(key.local.port()).expect("port of the share")
                    })
                    .collect();
                let sequential = idx.windows(2).filter(|w| w[1] == w[0] + 1).count();
                assert!(sequential < 20, "n={n} shard {i}: {sequential} sequential");
                let mut buckets = [0u32; 16];
                for &k in &idx {
                    buckets[(k * 16 / share.len()) as usize] += 1;
                }
                assert!(
                    buckets.iter().all(|&b| (64..=192).contains(&b)),
                    "n={n} shard {i}: {buckets:?}"
                );
            }
        }
    }

    #[test]
    fn high_occupancy_still_finds_the_last_free_ports() {
        let (mut t, mut rng) = table(49152..=65535, 60);
        let local = ip("10.0.0.1");
        let dst = sa("10.0.0.9:80");
        let keys: Vec<FlowKey> = (0..16384)
            .map(|i| t.allocate(Protocol::Tcp, local, dst, i, &mut rng).unwrap())
            .collect();
        // Free 1% at random, then take them all back.
        let mut freed = HashSet::new();
        while freed.len() < 164 {
            let k = keys[rng.below(keys.len() as u64) as usize];
            if freed.insert(k.local.port()) {
                t.release(&k);
            }
        }
        let mut again = HashSet::new();
        for i in 0..164 {
            let k = t.allocate(Protocol::Tcp, local, dst, i, &mut rng).unwrap();
            again.insert(k.local.port());
        }
        assert_eq!(again, freed);
        assert!(t.allocate(Protocol::Tcp, local, dst, 0, &mut rng).is_err());
        t.check_invariants().unwrap();
    }
}
