//! Fuzz target `port_table`: the real [`PortTable`] against a reference
//! model that is too simple to be wrong.
//!
//! The model keeps binds and flows in `BTreeMap`s and answers every
//! question by walking them. Each operation is applied to both; the answers
//! must agree (same success or same error). Ephemeral allocation may pick
//! any port, so there the model checks the choice instead of repeating it:
//! the port lies in the range, its 4-tuple is neither live nor in
//! TIME-WAIT, no bind holds it — and an error is allowed only when the
//! model finds no such port at all. After every operation the table's own
//! invariants hold and its counts match the model's.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};

use crate::port_table::{
    AllocError, BindConflict, FlowKey, Lookup, PortTable, PortTableConfig, Protocol, ShardId,
    TimeWaitEntry,
};
use crate::rng::SeededRng;

const LOCALS: [&str; 5] = ["10.0.0.1", "10.0.0.2", "0.0.0.0", "fd00::1", "::"];
const REMOTES: [&str; 5] = [
    "10.0.0.9:80",
    "10.0.0.9:443",
    "10.0.0.8:80",
    "[fd00::9]:80",
    "10.0.0.9:0",
];
/// Fixed ports outside any small ephemeral range (listeners).
const WELL_KNOWN: [u16; 3] = [80, 443, 8080];
const MAX_OPS: usize = 512;

/// Table configuration chosen by the input.
#[derive(Arbitrary, Debug)]
pub struct Config {
    /// First ephemeral port (0 is bumped to 1).
    pub start: u16,
    /// Number of ephemeral ports, 1–200 (past 64 the table's port sets
    /// turn into bitmaps).
    pub len: u8,
    /// TIME-WAIT length in 100 ms units, 0–7 (0 disables TIME-WAIT), in
    /// the low three bits; the high five bits, below 16, are the cap on
    /// TIME-WAIT records (0–15), else the default cap.
    pub time_wait: u8,
    /// Largest random step of the allocator.
    pub max_step: u16,
    /// RNG seed.
    pub seed: u64,
}

/// A port as the input names it.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum PortSel {
    /// Port 0 ("pick one").
    Zero,
    /// The n-th port of the ephemeral range (modulo its length).
    InRange(u8),
    /// A well-known port.
    WellKnown(u8),
    /// Any port.
    Any(u16),
}

/// A 4-tuple as the input names it.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum FlowSel {
    /// The n-th flow the model knows (live or TIME-WAIT).
    Existing(u8),
    /// Made up from parts.
    Made {
        /// UDP instead of TCP.
        udp: bool,
        /// Local address index.
        local: u8,
        /// Local port.
        port: PortSel,
        /// Remote index.
        remote: u8,
    },
}

/// One operation.
#[derive(Arbitrary, Debug)]
pub enum Op {
    /// `bind`.
    Bind {
        /// UDP instead of TCP.
        udp: bool,
        /// Address index.
        addr: u8,
        /// Port.
        port: PortSel,
        /// Owner handle.
        owner: u8,
    },
    /// `unbind`.
    Unbind {
        /// UDP instead of TCP.
        udp: bool,
        /// Address index.
        addr: u8,
        /// Port.
        port: PortSel,
    },
    /// `allocate`, `count` times (1–64) towards the same destination.
    Allocate {
        /// UDP instead of TCP.
        udp: bool,
        /// Local address index.
        local: u8,
        /// Remote index.
        remote: u8,
        /// Owner handle.
        owner: u8,
        /// Repetitions.
        count: u8,
    },
    /// `insert` of an explicit 4-tuple.
    Insert {
        /// The 4-tuple.
        flow: FlowSel,
        /// Owner handle.
        owner: u8,
    },
    /// `release`.
    Release(FlowSel),
    /// `enter_time_wait` at the current time.
    EnterTimeWait(FlowSel),
    /// Time passes (milliseconds), then `expire`.
    Advance(u16),
    /// `lookup`.
    Lookup(FlowSel),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum MState {
    Live(u32),
    TimeWait(Duration),
}

/// The reference model.
struct Model {
    lo: u16,
    hi: u16,
    /// The table's shard: it hands out the ports `p` of `lo..=hi` with
    /// `(p - lo) % count == index` (all of them for one shard).
    shard: ShardId,
    time_wait: Duration,
    max_time_wait: usize,
    now: Duration,
    binds: BTreeMap<(Protocol, IpAddr, u16), u32>,
    flows: BTreeMap<FlowKey, MState>,
}

fn wildcard_of(ip: IpAddr) -> IpAddr {
    if ip.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u8; 16])
    }
}

impl Model {
    /// Two binds overlap when protocol and port match and the addresses
    /// are equal or either is the wildcard of the same family.
    fn bind_conflicts(&self, proto: Protocol, addr: IpAddr, port: u16) -> bool {
        self.binds.keys().any(|&(p, a, n)| {
            p == proto
                && n == port
                && a.is_ipv4() == addr.is_ipv4()
                && (a == addr || a.is_unspecified() || addr.is_unspecified())
        })
    }

    /// A connection from `addr:port` would collide with a bind there.
    fn bound_at(&self, proto: Protocol, addr: IpAddr, port: u16) -> bool {
        self.binds.contains_key(&(proto, addr, port))
            || self.binds.contains_key(&(proto, wildcard_of(addr), port))
    }

    /// The ports the table hands out.
    fn range(&self) -> impl Iterator<Item = u16> + '_ {
        (self.lo..=self.hi).filter(|&q| self.in_share(q))
    }

    fn in_share(&self, q: u16) -> bool {
        (self.lo..=self.hi).contains(&q) && (q - self.lo) % self.shard.count == self.shard.index
    }

    fn lookup(&self, key: &FlowKey) -> Lookup<u32> {
        match self.flows.get(key) {
            Some(MState::Live(h)) => return Lookup::Flow(*h),
            Some(MState::TimeWait(_)) => return Lookup::TimeWait,
            None => {}
        }
        let ip = key.local.ip();
        let port = key.local.port();
        self.binds
            .get(&(key.proto, ip, port))
            .or_else(|| self.binds.get(&(key.proto, wildcard_of(ip), port)))
            .map_or(Lookup::Nothing, |h| Lookup::Bound(*h))
    }

    fn live(&self) -> usize {
        self.flows
            .values()
            .filter(|s| matches!(s, MState::Live(_)))
            .count()
    }
}

struct Harness {
    table: PortTable<u32>,
    rng: SeededRng,
    model: Model,
}

fn proto(udp: bool) -> Protocol {
    if udp {
        Protocol::Udp
    } else {
        Protocol::Tcp
    }
}

impl Harness {
    fn port(&self, p: PortSel) -> u16 {
        match p {
            PortSel::Zero => 0,
            PortSel::InRange(i) => {
                let n = self.model.hi - self.model.lo + 1;
                self.model.lo + (i as u16 % n)
            }
            PortSel::WellKnown(i) => WELL_KNOWN[i as usize % WELL_KNOWN.len()],
            PortSel::Any(p) => p,
        }
    }

    fn flow(&self, f: FlowSel) -> FlowKey {
        match f {
            FlowSel::Existing(i) if !self.model.flows.is_empty() => *self
                .model
                .flows
                .keys()
                .nth(i as usize % self.model.flows.len())
                .unwrap(),
            FlowSel::Existing(i) => FlowKey::new(
                Protocol::Tcp,
                SocketAddr::new(local(i), self.model.lo),
                remote(i),
            ),
            FlowSel::Made {
                udp,
                local: l,
                port,
                remote: r,
            } => FlowKey::new(
                proto(udp),
                SocketAddr::new(local(l), self.port(port)),
                remote(r),
            ),
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Bind {
                udp,
                addr,
                port,
                owner,
            } => {
                let p = proto(udp);
                let ip = local(addr);
                let port = self.port_of(port);
                let m = &mut self.model;
                let got =
                    self.table
                        .bind(p, SocketAddr::new(ip, port), owner as u32, &mut self.rng);
                if port == 0 {
                    match got {
                        Ok(sa) => {
                            assert_eq!(sa.ip(), ip);
                            let q = sa.port();
                            assert!(m.in_share(q), "bind(0) gave {q}");
                            assert!(!m.bind_conflicts(p, ip, q), "bind(0) gave taken {sa}");
                            m.binds.insert((p, ip, q), owner as u32);
                        }
                        Err(BindConflict::AddrInUse) => assert!(
                            m.range().all(|q| m.bind_conflicts(p, ip, q)),
                            "bind(0) on {ip} failed with free ports"
                        ),
                    }
                } else {
                    let free = !m.bind_conflicts(p, ip, port);
                    assert_eq!(
                        got.is_ok(),
                        free,
                        "bind {p:?} {ip}:{port}: table {got:?}, model free={free}"
                    );
                    if free {
                        assert_eq!(got, Ok(SocketAddr::new(ip, port)));
                        m.binds.insert((p, ip, port), owner as u32);
                    }
                }
            }
            Op::Unbind { udp, addr, port } => {
                let p = proto(udp);
                let ip = local(addr);
                let port = self.port_of(port);
                let got = self.table.unbind(p, SocketAddr::new(ip, port));
                let want = self.model.binds.remove(&(p, ip, port));
                assert_eq!(got, want, "unbind {p:?} {ip}:{port}");
            }
            Op::Allocate {
                udp,
                local: l,
                remote: r,
                owner,
                count,
            } => {
                let p = proto(udp);
                let ip = local(l);
                let to = remote(r);
                for _ in 0..(count % 64).max(1) {
                    let got = self.table.allocate(p, ip, to, owner as u32, &mut self.rng);
                    let m = &mut self.model;
                    let key_at = |q: u16| FlowKey::new(p, SocketAddr::new(ip, q), to);
                    match got {
                        Ok(key) => {
                            let q = key.local.port();
                            assert_eq!(key, key_at(q), "allocate returned another 4-tuple");
                            assert!(m.in_share(q), "allocate gave {q}");
                            assert!(
                                !m.flows.contains_key(&key),
                                "4-tuple {key:?} handed out twice: {:?}",
                                m.flows.get(&key)
                            );
                            assert!(!m.bound_at(p, ip, q), "allocate gave bound port {q}");
                            m.flows.insert(key, MState::Live(owner as u32));
                        }
                        Err(AllocError::AddrNotAvailable) => {
                            let free = m.range().find(|&q| {
                                !m.flows.contains_key(&key_at(q)) && !m.bound_at(p, ip, q)
                            });
                            assert_eq!(free, None, "allocate {ip} -> {to} failed with port free");
                            break;
                        }
                    }
                }
            }
            Op::Insert { flow, owner } => {
                let key = self.flow(flow);
                let got = self.table.insert(key, owner as u32);
                let m = &mut self.model;
                let taken = m.flows.contains_key(&key);
                assert_eq!(got.is_err(), taken, "insert {key:?}: {got:?}");
                if !taken {
                    m.flows.insert(key, MState::Live(owner as u32));
                }
            }
            Op::Release(f) => {
                let key = self.flow(f);
                let got = self.table.release(&key);
                let m = &mut self.model;
                let want = match m.flows.get(&key) {
                    Some(&MState::Live(h)) => {
                        m.flows.remove(&key);
                        Some(h)
                    }
                    _ => None,
                };
                assert_eq!(got, want, "release {key:?}");
            }
            Op::EnterTimeWait(f) => {
                let key = self.flow(f);
                let now = self.model.now;
                let got = self.table.enter_time_wait(&key, now, 0);
                let m = &mut self.model;
                let records = m
                    .flows
                    .values()
                    .filter(|s| matches!(s, MState::TimeWait(_)))
                    .count();
                let want = match m.flows.get(&key) {
                    Some(&MState::Live(h)) => {
                        if m.time_wait.is_zero() {
                            m.flows.remove(&key);
                            TimeWaitEntry::Skipped(h)
                        } else if records >= m.max_time_wait {
                            m.flows.remove(&key);
                            TimeWaitEntry::Overflow(h)
                        } else {
                            m.flows.insert(key, MState::TimeWait(now + m.time_wait));
                            TimeWaitEntry::Entered(h)
                        }
                    }
                    _ => TimeWaitEntry::NotLive,
                };
                assert_eq!(got, want, "enter_time_wait {key:?}");
            }
            Op::Advance(ms) => {
                let m = &mut self.model;
                m.now += Duration::from_millis(ms as u64);
                let now = m.now;
                let before = m.flows.len();
                m.flows
                    .retain(|_, s| !matches!(s, MState::TimeWait(until) if *until <= now));
                let want = before - m.flows.len();
                let got = self.table.expire(now);
                assert_eq!(got, want, "expire at {now:?}");
            }
            Op::Lookup(f) => {
                let key = self.flow(f);
                assert_eq!(self.table.lookup(&key), self.model.lookup(&key), "{key:?}");
            }
        }
    }

    fn port_of(&self, p: PortSel) -> u16 {
        self.port(p)
    }

    fn check(&self) {
        if let Err(e) = self.table.check_invariants() {
            panic!("port table invariant: {e}");
        }
        let m = &self.model;
        assert_eq!(self.table.live_flows(), m.live(), "live flows");
        assert_eq!(
            self.table.time_wait_flows(),
            m.flows.len() - m.live(),
            "TIME-WAIT flows"
        );
        assert_eq!(self.table.binds(), m.binds.len(), "binds");
        let next = m
            .flows
            .values()
            .filter_map(|s| match s {
                MState::TimeWait(u) => Some(*u),
                _ => None,
            })
            .min();
        assert_eq!(self.table.next_expiry(), next, "next expiry");
        for l in ["10.0.0.1", "fd00::1"] {
            let ip: IpAddr = l.parse().unwrap();
            for r in REMOTES {
                let to: SocketAddr = r.parse().unwrap();
                for p in [Protocol::Tcp, Protocol::Udp] {
                    let want = m
                        .flows
                        .keys()
                        .filter(|k| {
                            k.proto == p
                                && k.local.ip() == ip
                                && k.remote == to
                                && m.in_share(k.local.port())
                        })
                        .count();
                    assert_eq!(self.table.ports_in_use(p, ip, to), want, "ports in use");
                }
            }
        }
    }
}

fn local(i: u8) -> IpAddr {
    LOCALS[i as usize % LOCALS.len()].parse().unwrap()
}

fn remote(i: u8) -> SocketAddr {
    REMOTES[i as usize % REMOTES.len()].parse().unwrap()
}

/// Run one fuzz input. Panics when the table and the model disagree.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(c) = Config::arbitrary(&mut u) else {
        return;
    };
    let lo = c.start.max(1);
    let len = (c.len % 200) as u16 + 1;
    let hi = lo.saturating_add(len - 1);
    let time_wait = Duration::from_millis(100 * (c.time_wait % 8) as u64);
    // Half the inputs (the seed's top bit set) run one shard of 2-5.
    let ports = hi - lo + 1;
    let shard = if c.seed >> 63 == 1 {
        let count = (2 + (c.seed >> 56) as u16 % 4).min(ports);
        ShardId {
            index: (c.seed >> 48) as u16 % count,
            count,
        }
    } else {
        ShardId::SOLE
    };
    let max_time_wait = match c.time_wait >> 3 {
        n @ 0..16 => n as usize,
        _ => PortTableConfig::default().max_time_wait,
    };
    let config = PortTableConfig {
        ephemeral: lo..=hi,
        time_wait,
        max_step: (c.max_step % 600).max(1),
        shard,
        max_time_wait,
    };
    let mut rng = SeededRng::new(c.seed);
    let table = PortTable::new(config, &mut rng).expect("valid config");
    let mut h = Harness {
        table,
        rng,
        model: Model {
            lo,
            hi,
            shard,
            time_wait,
            max_time_wait,
            now: Duration::ZERO,
            binds: BTreeMap::new(),
            flows: BTreeMap::new(),
        },
    };
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        h.apply(&op);
        h.check();
    }
}
