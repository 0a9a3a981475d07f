//! Fuzz target `stack_pair`: two stacks talking over the impaired virtual
//! link, with the fuzzer choosing the impairments (loss, duplication,
//! reordering, corruption, delay) and the applications' calls (connect,
//! accept, send, recv, shutdown, close, abort, time passing).
//!
//! Every byte sent on connection `c` from side `s` at stream offset `o` is
//! a fixed function of `(c, s, o)`, so the harness checks what arrives
//! without keeping it: every byte a side reads must be exactly the next
//! byte the other side sent, and end of stream (`recv` = `Ok(0)`) may only
//! come once every byte the peer sent has been read. Both stacks'
//! invariants are checked after every operation.

use std::net::SocketAddr;

use arbitrary::{Arbitrary, Unstructured};

use crate::device::virtual_link::{LinkConfig, Network};
use crate::{
    Duration, Instant, ListenerHandle, RecvError, Stack, StackConfig, TcpHandle, TcpState,
};

const ADDRS: [[&str; 2]; 2] = [["10.0.0.1", "fd00::1"], ["10.0.0.2", "fd00::2"]];
const PORT: u16 = 7;
const MAX_CONNS: usize = 16;
const MAX_OPS: usize = 200;
const MAX_SOCKETS: usize = 4 + 2 * MAX_CONNS;

/// Link impairments chosen by the input.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct LinkSpec {
    /// One-way delay in ms (1–32).
    pub delay_ms: u8,
    /// Loss probability, in units of 1/200 (modulo 64).
    pub loss: u8,
    /// Duplication probability, same units.
    pub duplicate: u8,
    /// Reordering probability, same units.
    pub reorder: u8,
    /// Corruption probability, same units.
    pub corrupt: u8,
    /// Seed of the link's RNG.
    pub seed: u64,
}

impl LinkSpec {
    fn config(&self) -> LinkConfig {
        let p = |x: u8| (x % 64) as f64 / 200.0;
        LinkConfig {
            delay: Duration::from_millis((self.delay_ms % 32) as u64 + 1),
            loss: p(self.loss),
            duplicate: p(self.duplicate),
            reorder: p(self.reorder),
            corrupt: p(self.corrupt),
            bottleneck: None,
            seed: self.seed,
        }
    }
}

/// One operation. `side` picks stack 0 or 1; `conn` indexes the
/// connections opened so far.
#[derive(Arbitrary, Debug)]
pub enum Op {
    /// Stack `side` connects to the other one.
    Connect {
        /// Which stack.
        side: bool,
        /// Over IPv6.
        v6: bool,
    },
    /// Stack `side` accepts whatever is waiting.
    Accept(bool),
    /// Send `len` octets (modulo 8192).
    Send {
        /// Connection index.
        conn: u8,
        /// Which end.
        side: bool,
        /// Length.
        len: u16,
    },
    /// Read up to `max` octets (modulo 8192).
    Recv {
        /// Connection index.
        conn: u8,
        /// Which end.
        side: bool,
        /// Buffer size.
        max: u16,
    },
    /// `shutdown` (FIN, keep reading).
    Shutdown {
        /// Connection index.
        conn: u8,
        /// Which end.
        side: bool,
    },
    /// `close`.
    Close {
        /// Connection index.
        conn: u8,
        /// Which end.
        side: bool,
    },
    /// `abort` (RST).
    Abort {
        /// Connection index.
        conn: u8,
        /// Which end.
        side: bool,
    },
    /// Step the network this many times (×4).
    Run(u8),
    /// Let this many milliseconds pass on the network.
    RunFor(u16),
    /// Change the impairments.
    Link(LinkSpec),
}

/// One connection's two ends and what went through them.
#[derive(Debug)]
struct Conn {
    id: u32,
    ends: [Option<TcpHandle>; 2],
    initiator: usize,
    initiator_addr: SocketAddr,
    sent: [u64; 2],
    read: [u64; 2],
    /// The end gave up its handle (close or abort).
    released: [bool; 2],
}

/// The byte at offset `o` of the stream side `s` sends on connection `c`.
fn pattern(c: u32, s: usize, o: u64) -> u8 {
    let x = o
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add((c as u64) << 8 | s as u64);
    (x >> 56) as u8 ^ (o as u8)
}

struct Pair {
    net: Network,
    listeners: [[ListenerHandle; 2]; 2],
    conns: Vec<Conn>,
    used: Vec<SocketAddr>,
    buf: Vec<u8>,
}

fn config(i: usize, seed: u64) -> StackConfig {
    StackConfig {
        addrs: vec![
            (ADDRS[i][0].parse().unwrap(), 24),
            (ADDRS[i][1].parse().unwrap(), 64),
        ],
        backlog: 4,
        syn_backlog: 4,
        tcp_rx_buffer: 4096,
        tcp_tx_buffer: 4096,
        user_timeout: Some(Duration::from_secs(20)),
        seed: Some(seed),
        // One side leaves segmenting to its device (the link cuts as a
        // NIC would), the other does not.
        tcp_segmentation_offload: i == 0,
        ..Default::default()
    }
}

impl Pair {
    fn new(link: &LinkSpec) -> Pair {
        let mut net = Network::new(link.config());
        let t0 = Instant::from_millis(0);
        let mut listeners = Vec::new();
        for (i, names) in ADDRS.iter().enumerate() {
            let mut s = Stack::new(config(i, link.seed ^ i as u64), t0).unwrap();
            let l4 = s
                .listen(SocketAddr::new([0u8; 4].into(), PORT), None)
                .unwrap();
            let l6 = s
                .listen(SocketAddr::new([0u8; 16].into(), PORT), None)
                .unwrap();
            listeners.push([l4, l6]);
            let addrs = [names[0].parse().unwrap(), names[1].parse().unwrap()];
            net.add(s, &addrs);
        }
        Pair {
            net,
            listeners: [listeners[0], listeners[1]],
            conns: Vec::new(),
            used: Vec::new(),
            buf: vec![0; 8192],
        }
    }

    fn conn(&mut self, i: u8) -> Option<&mut Conn> {
        let n = self.conns.len();
        (n > 0).then(|| &mut self.conns[i as usize % n])
    }

    fn accept(&mut self, s: usize) {
        for l in self.listeners[s] {
            while let Ok(h) = self.net.stack(s).accept(l) {
                let peer = self.net.stack(s).peer_addr(h);
                let ours = |c: &Conn| c.initiator != s && Some(c.initiator_addr) == peer;
                if let Some(c) = self
                    .conns
                    .iter_mut()
                    .find(|c| ours(c) && c.ends[s].is_none())
                {
                    c.ends[s] = Some(h);
                    continue;
                }
                // A SYN cookie has no state to say its handshake is over: a
                // late ACK (a FIN, say) of a connection whose ISS was a
                // cookie, after this end let go of it or gave up on it (a
                // user timeout's RST the peer never got), opens it again,
                // as on Linux within the cookie's lifetime. Only then may a
                // finished connection come back, and nothing is read from
                // it.
                let st = self.net.stack_ref(s);
                let over = |c: &Conn| {
                    c.released[s]
                        || c.ends[s].is_some_and(|h| {
                            matches!(st.tcp_state(h), None | Some(TcpState::Closed))
                        })
                };
                let finished = self.conns.iter().any(|c| ours(c) && over(c));
                let cookies = self.net.stack_ref(s).counters().tcp_syn_cookies_ok;
                assert!(
                    finished && cookies > 0,
                    "accepted {peer:?}, which nobody opened"
                );
                self.net.stack(s).abort(h);
            }
        }
    }

    fn recv(&mut self, ci: usize, s: usize, max: usize) {
        let c = &mut self.conns[ci];
        let Some(h) = c.ends[s] else { return };
        if c.released[s] {
            return;
        }
        let max = max.clamp(1, self.buf.len());
        match self.net.stack(s).recv(h, &mut self.buf[..max]) {
            Ok(0) => {
                assert_eq!(
                    c.read[s],
                    c.sent[1 - s],
                    "conn {}: end of stream at {} on side {s}, but the peer sent {}",
                    c.id,
                    c.read[s],
                    c.sent[1 - s]
                );
            }
            Ok(n) => {
                for (k, &b) in self.buf[..n].iter().enumerate() {
                    let o = c.read[s] + k as u64;
                    let want = pattern(c.id, 1 - s, o);
                    assert_eq!(
                        b, want,
                        "conn {}: side {s} read a wrong byte at offset {o}",
                        c.id
                    );
                }
                c.read[s] += n as u64;
                assert!(
                    c.read[s] <= c.sent[1 - s],
                    "conn {}: side {s} read {} octets but only {} were sent",
                    c.id,
                    c.read[s],
                    c.sent[1 - s]
                );
            }
            Err(RecvError::InvalidHandle) => panic!("conn {}: live handle went stale", c.id),
            Err(_) => {}
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Connect { side, v6 } => {
                let s = side as usize;
                if self.conns.len() >= MAX_CONNS {
                    return;
                }
                let to = SocketAddr::new(ADDRS[1 - s][v6 as usize].parse().unwrap(), PORT);
                let Ok(h) = self.net.stack(s).connect(to) else {
                    return;
                };
                let local = self.net.stack(s).local_addr(h).unwrap();
                // A reused 4-tuple would make accepted ends ambiguous.
                if self.used.contains(&local) {
                    self.net.stack(s).abort(h);
                    return;
                }
                self.used.push(local);
                let mut ends = [None, None];
                ends[s] = Some(h);
                self.conns.push(Conn {
                    id: self.conns.len() as u32,
                    ends,
                    initiator: s,
                    initiator_addr: local,
                    sent: [0; 2],
                    read: [0; 2],
                    released: [false; 2],
                });
            }
            Op::Accept(side) => self.accept(side as usize),
            Op::Send { conn, side, len } => {
                let s = side as usize;
                let Some(c) = self.conn(conn) else { return };
                let (Some(h), false) = (c.ends[s], c.released[s]) else {
                    return;
                };
                let (id, from) = (c.id, c.sent[s]);
                let len = len as usize % 8192;
                for (k, b) in self.buf[..len].iter_mut().enumerate() {
                    *b = pattern(id, s, from + k as u64);
                }
                if let Ok(n) = self.net.stack(s).send(h, &self.buf[..len]) {
                    assert!(n <= len);
                    self.conn(conn).unwrap().sent[s] += n as u64;
                }
            }
            Op::Recv { conn, side, max } => {
                if self.conns.is_empty() {
                    return;
                }
                let ci = conn as usize % self.conns.len();
                self.recv(ci, side as usize, max as usize);
            }
            Op::Shutdown { conn, side } => {
                let s = side as usize;
                let Some(c) = self.conn(conn) else { return };
                if let (Some(h), false) = (c.ends[s], c.released[s]) {
                    let _ = self.net.stack(s).shutdown(h);
                }
            }
            Op::Close { conn, side } | Op::Abort { conn, side } => {
                let s = side as usize;
                let abort = matches!(op, Op::Abort { .. });
                let Some(c) = self.conn(conn) else { return };
                if let (Some(h), false) = (c.ends[s], c.released[s]) {
                    c.released[s] = true;
                    if abort {
                        self.net.stack(s).abort(h);
                    } else {
                        self.net.stack(s).close(h);
                    }
                }
            }
            Op::Run(n) => {
                for _ in 0..(n as u32 + 1) * 4 {
                    self.net.step();
                }
            }
            Op::RunFor(ms) => {
                let _ = self.net.run_for(Duration::from_millis(ms as u64), 20_000);
            }
            Op::Link(l) => self.net.set_config(l.config()),
        }
        for s in 0..2 {
            while self.net.stack(s).poll_event().is_some() {}
        }
        self.check();
    }

    fn check(&mut self) {
        for s in 0..2 {
            let st = self.net.stack_ref(s);
            if let Err(e) = st.check_invariants() {
                panic!("stack {s}: {e}");
            }
            assert!(
                st.socket_count() <= MAX_SOCKETS,
                "stack {s}: too many sockets"
            );
        }
    }

    /// Read everything that arrives on every open end for a while.
    fn settle(&mut self) {
        for _ in 0..20 {
            let _ = self.net.run_for(Duration::from_millis(500), 20_000);
            self.accept(0);
            self.accept(1);
            for ci in 0..self.conns.len() {
                for s in 0..2 {
                    self.recv(ci, s, 8192);
                }
            }
            self.check();
        }
    }
}

/// Run one fuzz input. Panics when a byte arrives that was not sent, out
/// of order, or when a stack's invariants break.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(link) = LinkSpec::arbitrary(&mut u) else {
        return;
    };
    let mut pair = Pair::new(&link);
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        pair.apply(&op);
    }
    pair.settle();
}
