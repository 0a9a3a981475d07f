//! Fuzz target `stack_hostile`: hostile packets into a [`Stack`] that
//! already has every kind of state.
//!
//! The [`Fixture`] is built the same way for every input, over the virtual
//! link: a server stack (10.0.0.2, fd00::2) with listeners (one with a
//! full accept queue), established connections over IPv4 and IPv6 (one
//! with unread data, one in CLOSE-WAIT), two half-open connections, a
//! connection in SYN-SENT, a 4-tuple in TIME-WAIT and two UDP sockets (one
//! with a datagram waiting). Every packet the server sends is watched, so
//! the harness knows each 4-tuple's next expected sequence and
//! acknowledgment numbers.
//!
//! An input is then either
//! - **structured** (the default): [`Step`]s decoded with `arbitrary` that
//!   mostly build TCP segments for the known 4-tuples — flags, sequence
//!   numbers near the expected ones, options, lengths, IP extension headers
//!   and fragments all chosen by the fuzzer — with correct checksums, plus
//!   UDP, ICMP errors quoting our own flows, raw bytes, time passing and
//!   application calls; or
//! - **raw** (input starts with [`RAW_MAGIC`]): records of whole IP
//!   packets (optionally with checksums recomputed after mutation) and time
//!   steps, which is what the seed corpus holds.
//!
//! After every step the stack must not have panicked, its
//! [`check_invariants`](Stack::check_invariants) must hold (port table,
//! socket slab and queues agree; counters add up), and its socket count,
//! output and timer work must stay within fixed bounds.
//!
//! This module holds the fixture and the entry points; [`input`] the
//! structured input and how it becomes packets and calls; `seeds` the seed
//! corpus.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use arbitrary::{Arbitrary, Unstructured};

use crate::device::virtual_link::{LinkConfig, Network};
use crate::wire::build::{fix_checksums, Tcp};
use crate::wire::{TcpFlags, TcpView};
use crate::{
    Duration, Instant, ListenerHandle, Stack, StackConfig, TcpHandle, TcpState, UdpHandle,
};

pub mod input;
mod seeds;

use input::Step;
pub use seeds::seeds;

/// Inputs starting with these bytes are raw packet records.
pub const RAW_MAGIC: &[u8] = b"RAW!";

/// Raw record kinds: `[kind][len: u16 BE][len bytes]`.
pub mod record {
    /// Inject the bytes as they are.
    pub const PACKET: u8 = 0;
    /// Recompute IPv4/TCP/UDP/ICMP checksums, then inject.
    pub const PACKET_FIXED: u8 = 1;
    /// Let `len` milliseconds pass (no bytes follow).
    pub const ADVANCE_MS: u8 = 2;
    /// Read everything readable from every socket (no bytes follow).
    pub const DRAIN_APP: u8 = 3;
}

/// The server stack's index in the fixture's network.
const S: usize = 1;
/// Most connection handles the harness keeps (accepted or opened); more
/// are closed at once.
const MAX_CONNS: usize = 32;
/// Most listeners the harness keeps; more are closed at once.
const MAX_LISTENERS: usize = 8;
/// Most sockets the server may hold: the fixture's, the harness's
/// handles, and per listener its SYN backlog (8) and accept queue (≤ 4).
const MAX_SOCKETS: usize = 16 + MAX_CONNS + MAX_LISTENERS * (8 + 4);
/// Most packets one step may make the server send.
const MAX_OUTPUT: usize = 8192;
/// Most known 4-tuples tracked.
const MAX_PEERS: usize = 48;
/// Most steps per input (bounds the work of one execution).
const MAX_STEPS: usize = 256;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A 4-tuple the server knows, with the sequence numbers it expects.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The server's side.
    pub local: SocketAddr,
    /// The remote side (whose packets the fuzzer forges).
    pub remote: SocketAddr,
    /// The next sequence number the server expects from the remote
    /// (its last ACK).
    pub rcv_nxt: u32,
    /// The server's next sequence number (what the remote should ACK).
    pub snd_nxt: u32,
}

/// The server stack with its prepared state. Built afresh per input.
pub struct Fixture {
    net: Network,
    now: Instant,
    peers: Vec<Peer>,
    conns: Vec<TcpHandle>,
    listeners: Vec<ListenerHandle>,
    udps: Vec<UdpHandle>,
}

fn stack_config(addrs: [&str; 2], seed: u64) -> StackConfig {
    StackConfig {
        addrs: vec![(ip(addrs[0]), 24), (ip(addrs[1]), 64)],
        backlog: 4,
        syn_backlog: 8,
        tcp_rx_buffer: 4096,
        tcp_tx_buffer: 4096,
        udp_packets: 4,
        seed: Some(seed),
        // Segments of up to the 4 KiB buffer, as the daemon sends them;
        // the link cuts them for the client, the checks read them whole.
        tcp_segmentation_offload: true,
        ..Default::default()
    }
}

impl Fixture {
    /// Build the fixture (deterministic: same state every time).
    pub fn new() -> Fixture {
        let mut net = Network::new(LinkConfig {
            seed: 1,
            ..Default::default()
        });
        let t0 = Instant::from_millis(0);
        let client = Stack::new(stack_config(["10.0.0.1", "fd00::1"], 11), t0).unwrap();
        let server = Stack::new(stack_config(["10.0.0.2", "fd00::2"], 12), t0).unwrap();
        net.add(client, &[ip("10.0.0.1"), ip("fd00::1")]);
        net.add(server, &[ip("10.0.0.2"), ip("fd00::2")]);
        let log: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
        let tap = log.clone();
        net.set_tap(move |_, p| tap.borrow_mut().push(p.to_vec()));

        let s = net.stack(S);
        let l80 = s.listen(sa("0.0.0.0:80"), None).unwrap();
        let l80v6 = s.listen(sa("[::]:80"), None).unwrap();
        let l8080 = s.listen(sa("10.0.0.2:8080"), Some(1)).unwrap();
        let u53 = s.udp_bind(sa("0.0.0.0:53")).unwrap();
        let u5353 = s.udp_bind(sa("[fd00::2]:5353")).unwrap();

        let c = net.stack(0);
        let a = c.connect(sa("10.0.0.2:80")).unwrap();
        let b = c.connect(sa("10.0.0.2:80")).unwrap();
        let d = c.connect(sa("10.0.0.2:80")).unwrap();
        let v = c.connect(sa("[fd00::2]:80")).unwrap();
        let _queued = c.connect(sa("10.0.0.2:8080")).unwrap();
        let cu = c.udp_bind(sa("0.0.0.0:0")).unwrap();
        c.udp_send_to(cu, b"query", sa("10.0.0.2:53")).unwrap();

        let mut accepted = Vec::new();
        net.run_until(10_000, |n| {
            for l in [l80, l80v6] {
                while let Ok(h) = n.stack(S).accept(l) {
                    accepted.push(h);
                }
            }
            accepted.len() == 4 && n.stack(S).snapshot().iter().any(|r| r.local.port() == 8080)
        })
        .expect("fixture: connections open");
        let by_peer = |n: &mut Network, h: TcpHandle| {
            let local = n.stack(0).local_addr(h);
            *accepted
                .iter()
                .find(|&&s| n.stack(S).peer_addr(s) == local)
                .expect("fixture: accepted")
        };
        let (sa_, sb, sd, sv) = (
            by_peer(&mut net, a),
            by_peer(&mut net, b),
            by_peer(&mut net, d),
            by_peer(&mut net, v),
        );

        // Data both ways on A; some left unread on the server.
        net.stack(S).send(sa_, b"hello from the server").unwrap();
        net.stack(0).send(a, &[b'x'; 300]).unwrap();
        // B: the server closes first and ends in TIME-WAIT.
        net.stack(S).close(sb);
        // D: the client closes; the server sits in CLOSE-WAIT.
        net.stack(0).close(d);
        let mut buf = [0u8; 64];
        net.run_until(10_000, |n| n.stack(0).recv(b, &mut buf) == Ok(0))
            .expect("fixture: B half closed");
        net.stack(0).close(b);
        net.run_until(10_000, |n| {
            n.stack(S).port_table().time_wait_flows() == 1
                && n.stack(S).tcp_state(sd) == Some(TcpState::CloseWait)
        })
        .expect("fixture: TIME-WAIT and CLOSE-WAIT");

        // Half-open: SYNs from hosts that will never answer.
        for (src, dst) in [
            ("10.0.0.7:40000", "10.0.0.2:80"),
            ("[fd00::7]:40001", "[fd00::2]:80"),
        ] {
            let (src, dst) = (sa(src), sa(dst));
            let p = Tcp {
                seq: 1000,
                flags: TcpFlags::SYN,
                window: 8192,
                options: &[2, 4, 5, 0xb4],
                ..Default::default()
            }
            .packet(src, dst);
            net.inject(S, &p);
        }
        // SYN-SENT towards a host that will never answer.
        let syn_sent = net.stack(S).connect(sa("10.0.0.9:9999")).unwrap();
        net.run_for(Duration::from_millis(200), 10_000)
            .expect("fixture: settle");

        let mut fx = Fixture {
            now: net.now(),
            net,
            peers: Vec::new(),
            conns: vec![sa_, sd, sv, syn_sent],
            listeners: vec![l80, l80v6, l8080],
            udps: vec![u53, u5353],
        };
        let sent = std::mem::take(&mut *log.borrow_mut());
        for p in &sent {
            fx.track_output(p);
        }
        fx.net.set_tap(|_, _| {});
        fx
    }

    /// The 4-tuples the server knows, with their sequence numbers.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// The server stack.
    pub fn stack(&mut self) -> &mut Stack {
        self.net.stack(S)
    }

    fn is_ours(ip: IpAddr) -> bool {
        ip == self::ip("10.0.0.2") || ip == self::ip("fd00::2")
    }

    /// Learn sequence numbers from a packet the server sent.
    fn track_output(&mut self, p: &[u8]) {
        let Ok(seg) = TcpView::parse(p) else {
            return;
        };
        let (src, dst, fl) = (seg.src(), seg.dst(), seg.flags());
        if !Self::is_ours(src.ip()) {
            return;
        }
        let i = match self
            .peers
            .iter()
            .position(|q| q.local == src && q.remote == dst)
        {
            Some(i) => i,
            None if self.peers.len() < MAX_PEERS && !fl.rst() => {
                self.peers.push(Peer {
                    local: src,
                    remote: dst,
                    rcv_nxt: 0,
                    snd_nxt: 0,
                });
                self.peers.len() - 1
            }
            None => return,
        };
        let q = &mut self.peers[i];
        if fl.rst() {
            return;
        }
        q.snd_nxt = seg.seq().wrapping_add(seg.seg_len());
        if fl.ack() {
            q.rcv_nxt = seg.ack();
        }
    }

    /// Hand the server one packet, then run it to quiescence at `now`.
    pub fn inject(&mut self, p: &[u8]) {
        let now = self.now;
        self.net.stack(S).handle_packet(now, p);
        self.drain();
        self.check();
    }

    fn drain(&mut self) {
        let now = self.now;
        for _ in 0..MAX_OUTPUT {
            let Some(p) = self.net.stack(S).poll_transmit(now) else {
                while self.net.stack(S).poll_event().is_some() {}
                return;
            };
            self.track_output(&p);
        }
        panic!("more than {MAX_OUTPUT} packets out of one step");
    }

    /// Let `d` pass, firing every timer due on the way.
    pub fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        for _ in 0..10_000 {
            match self.net.stack(S).poll_at() {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    self.drain();
                }
                _ => {
                    self.now = until;
                    self.drain();
                    self.check();
                    return;
                }
            }
            self.check();
        }
        panic!("timers still firing after 10000 rounds within {d}");
    }

    /// The properties that must hold after every step.
    pub fn check(&mut self) {
        let s = self.net.stack(S);
        if let Err(e) = s.check_invariants() {
            panic!("invariant broken: {e}");
        }
        assert!(
            s.socket_count() <= MAX_SOCKETS,
            "{} sockets: unbounded growth",
            s.socket_count()
        );
        let tw = s.port_table().time_wait_flows();
        assert!(tw <= MAX_SOCKETS, "{tw} TIME-WAIT records");
        let live = s.port_table().live_flows();
        assert!(live <= MAX_SOCKETS, "{live} live flows");
    }

    /// Read whatever is readable from every connection and UDP socket.
    pub fn drain_app(&mut self) {
        let mut buf = [0u8; 2048];
        for i in 0..self.conns.len() {
            let h = self.conns[i];
            let _ = self.net.stack(S).recv(h, &mut buf);
        }
        for i in 0..self.udps.len() {
            let h = self.udps[i];
            while self.net.stack(S).udp_recv_from(h, &mut buf).is_ok() {}
        }
        self.drain();
        self.check();
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

// ---- entry points ---------------------------------------------------------------

/// Run one fuzz input (structured, or raw records after [`RAW_MAGIC`]).
/// Panics when a property fails.
pub fn run(data: &[u8]) {
    let mut fx = Fixture::new();
    fx.check();
    if let Some(rest) = data.strip_prefix(RAW_MAGIC) {
        run_raw(&mut fx, rest);
        return;
    }
    let mut u = Unstructured::new(data);
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        let Ok(step) = Step::arbitrary(&mut u) else {
            break;
        };
        fx.step(&step);
    }
    // Whatever happened, the stack winds down within bounds.
    fx.drain_app();
    fx.advance(Duration::from_secs(300));
}

fn run_raw(fx: &mut Fixture, mut rest: &[u8]) {
    for _ in 0..MAX_STEPS {
        let [kind, hi, lo, tail @ ..] = rest else {
            break;
        };
        let len = u16::from_be_bytes([*hi, *lo]) as usize;
        match *kind % 4 {
            record::PACKET | record::PACKET_FIXED => {
                let take = len.min(tail.len());
                let mut p = tail[..take].to_vec();
                if *kind % 4 == record::PACKET_FIXED {
                    fix_checksums(&mut p);
                }
                fx.inject(&p);
                rest = &tail[take..];
            }
            record::ADVANCE_MS => {
                fx.advance(Duration::from_millis(len as u64));
                rest = tail;
            }
            _ => {
                fx.drain_app();
                rest = tail;
            }
        }
    }
    fx.drain_app();
    fx.advance(Duration::from_secs(300));
}

/// Encode raw records: packets (with `fix` set, checksums are recomputed on
/// replay) and time steps. The inverse of the raw-mode parser.
pub fn encode_raw(records: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = RAW_MAGIC.to_vec();
    for (kind, bytes) in records {
        out.push(*kind);
        let len = if *kind == record::ADVANCE_MS {
            u16::from_be_bytes([bytes[0], bytes[1]])
        } else {
            bytes.len() as u16
        };
        out.extend_from_slice(&len.to_be_bytes());
        if *kind == record::PACKET || *kind == record::PACKET_FIXED {
            out.extend_from_slice(bytes);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_has_every_kind_of_state() {
        let mut fx = Fixture::new();
        fx.check();
        let rows = fx.stack().snapshot();
        let states: Vec<&str> = rows.iter().map(|r| r.state.as_str()).collect();
        for want in [
            "LISTEN",
            "ESTABLISHED",
            "CLOSE-WAIT",
            "SYN-RECEIVED",
            "SYN-SENT",
            "TIME-WAIT",
            "UNCONN",
        ] {
            assert!(states.contains(&want), "no {want} in {states:?}");
        }
        assert!(fx.peers().len() >= 6, "{:?}", fx.peers());
    }

    #[test]
    fn in_order_data_reaches_the_application() {
        let mut fx = Fixture::new();
        let a = fx.conns[0];
        let remote = fx.stack().peer_addr(a).unwrap();
        let p = fx
            .peers()
            .iter()
            .find(|p| p.remote == remote)
            .copied()
            .unwrap();
        let t = Tcp {
            seq: p.rcv_nxt,
            ack: p.snd_nxt,
            flags: TcpFlags::ACK | TcpFlags::PSH,
            window: 4096,
            payload: b"zz",
            ..Default::default()
        }
        .packet(p.remote, p.local);
        let before = fx.stack().counters().tcp_segments_in;
        fx.inject(&t);
        assert_eq!(fx.stack().counters().tcp_segments_in, before + 1);
        // Past the delayed-ACK time.
        fx.advance(Duration::from_millis(20));
        let q = fx.peers().iter().find(|q| q.remote == p.remote).unwrap();
        assert_eq!(q.rcv_nxt, p.rcv_nxt.wrapping_add(2), "the server ACKed");
    }
}
