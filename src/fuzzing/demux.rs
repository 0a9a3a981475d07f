//! Fuzz target `demux`: hostile packets into a [`Stack`] that already has
//! every kind of state.
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

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use arbitrary::{Arbitrary, Unstructured};

use super::wire::{self, flags, proto, Ext, Tcp, V4Opts};
use crate::device::virtual_link::{LinkConfig, Network};
use crate::port_table::FlowKey;
use crate::{
    Duration, Instant, ListenerHandle, Stack, StackConfig, TcpHandle, TcpState, UdpHandle,
};

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
            let t = Tcp {
                src_port: src.port(),
                dst_port: dst.port(),
                seq: 1000,
                flags: flags::SYN,
                window: 8192,
                options: &[2, 4, 5, 0xb4],
                ..Default::default()
            }
            .build(src.ip(), dst.ip());
            let p = wire::ip(src.ip(), dst.ip(), proto::TCP, &t);
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
        let Some((src, dst, seq, ack, fl, len)) = wire::parse_tcp(p) else {
            return;
        };
        if !Self::is_ours(src.ip()) {
            return;
        }
        let i = match self
            .peers
            .iter()
            .position(|q| q.local == src && q.remote == dst)
        {
            Some(i) => i,
            None if self.peers.len() < MAX_PEERS && fl & flags::RST == 0 => {
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
        if fl & flags::RST != 0 {
            return;
        }
        let ctl = u32::from(fl & flags::SYN != 0) + u32::from(fl & flags::FIN != 0);
        q.snd_nxt = seq.wrapping_add(len as u32 + ctl);
        if fl & flags::ACK != 0 {
            q.rcv_nxt = ack;
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

    fn app(&mut self, op: &AppOp) {
        let conn = |fx: &Fixture, i: u8| fx.conns[i as usize % fx.conns.len()];
        let mut buf = vec![0u8; 4096];
        match *op {
            AppOp::Accept(i) => {
                let l = self.listeners[i as usize % self.listeners.len()];
                if let Ok(h) = self.net.stack(S).accept(l) {
                    if self.conns.len() < MAX_CONNS {
                        self.conns.push(h);
                    } else {
                        self.net.stack(S).close(h);
                    }
                }
            }
            AppOp::Recv(i, n) => {
                let h = conn(self, i);
                let n = (n as usize % buf.len()).max(1);
                let _ = self.net.stack(S).recv(h, &mut buf[..n]);
            }
            AppOp::Send(i, n, fill) => {
                let h = conn(self, i);
                buf.fill(fill);
                let n = n as usize % buf.len();
                let _ = self.net.stack(S).send(h, &buf[..n]);
            }
            AppOp::Shutdown(i) => {
                let h = conn(self, i);
                let _ = self.net.stack(S).shutdown(h);
            }
            AppOp::Close(i) => {
                let h = conn(self, i);
                self.net.stack(S).close(h);
            }
            AppOp::Abort(i) => {
                let h = conn(self, i);
                self.net.stack(S).abort(h);
            }
            AppOp::CloseListener(i) => {
                let l = self.listeners[i as usize % self.listeners.len()];
                self.net.stack(S).close_listener(l);
            }
            AppOp::Relisten(i) => {
                let addr = [
                    "0.0.0.0:80",
                    "[::]:80",
                    "10.0.0.2:8080",
                    "10.0.0.2:80",
                    "0.0.0.0:0",
                ][i as usize % 5];
                if let Ok(l) = self.net.stack(S).listen(sa(addr), Some(2)) {
                    if self.listeners.len() < MAX_LISTENERS {
                        self.listeners.push(l);
                    } else {
                        self.net.stack(S).close_listener(l);
                    }
                }
            }
            AppOp::UdpRecv(i) => {
                let h = self.udps[i as usize % self.udps.len()];
                let _ = self.net.stack(S).udp_recv_from(h, &mut buf);
            }
            AppOp::UdpSend(i, n, to) => {
                let h = self.udps[i as usize % self.udps.len()];
                let to = self
                    .peers
                    .get(to as usize)
                    .map_or(sa("10.0.0.1:5000"), |p| p.remote);
                let n = n as usize % 1600;
                let _ = self.net.stack(S).udp_send_to(h, &buf[..n], to);
            }
            AppOp::Connect(i) => {
                let to =
                    ["10.0.0.1:7", "[fd00::1]:7", "10.0.0.7:40000", "10.0.0.2:80"][i as usize % 4];
                if let Ok(h) = self.net.stack(S).connect(sa(to)) {
                    if self.conns.len() < MAX_CONNS {
                        self.conns.push(h);
                    } else {
                        self.net.stack(S).abort(h);
                    }
                }
            }
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

// ---- structured input --------------------------------------------------------

/// One step of a structured input.
#[derive(Arbitrary, Debug)]
pub enum Step {
    /// A TCP segment.
    Tcp(TcpSpec),
    /// Another TCP segment (weights TCP over the rest).
    Tcp2(TcpSpec),
    /// A UDP datagram.
    Udp(UdpSpec),
    /// An ICMP error quoting one of our flows.
    Icmp(IcmpSpec),
    /// Raw bytes, optionally with checksums fixed.
    Raw {
        /// The packet.
        bytes: Vec<u8>,
        /// Recompute checksums first.
        fix: bool,
    },
    /// Time passes (milliseconds; above 32767 in units of 10 ms).
    Advance(u16),
    /// The server application does something.
    App(AppOp),
}

/// Which 4-tuple a packet is for.
#[derive(Arbitrary, Debug)]
pub enum Target {
    /// A known one (index modulo the known list).
    Known(u8),
    /// A new remote host/port towards one of our ports.
    New {
        /// IPv6 instead of IPv4.
        v6: bool,
        /// Last octet of the remote address.
        host: u8,
        /// Remote port.
        sport: u16,
        /// Our port: 80, 8080, 53, 5353 or this value.
        dport: DPort,
    },
    /// Spoofed, odd or hostile addresses.
    Spoof {
        /// Source address.
        src: [u8; 4],
        /// Destination address.
        dst: [u8; 4],
        /// Ports.
        ports: (u16, u16),
    },
}

/// A local port to aim at.
#[derive(Arbitrary, Debug)]
pub enum DPort {
    /// The wildcard listeners.
    Http,
    /// The specific listener with a full accept queue.
    Alt,
    /// The UDP sockets.
    Dns,
    /// The IPv6 UDP socket.
    Mdns,
    /// Anything.
    Other(u16),
}

/// A sequence or acknowledgment number relative to what the server
/// expects.
#[derive(Arbitrary, Debug)]
pub enum Rel {
    /// Exactly the expected value.
    Exact,
    /// Ahead by this much.
    Plus(u16),
    /// Behind by this much.
    Minus(u16),
    /// Any value.
    Raw(u32),
}

impl Rel {
    fn apply(&self, expected: u32) -> u32 {
        match *self {
            Rel::Exact => expected,
            Rel::Plus(d) => expected.wrapping_add(d as u32),
            Rel::Minus(d) => expected.wrapping_sub(d as u32),
            Rel::Raw(v) => v,
        }
    }
}

/// A TCP option.
#[derive(Arbitrary, Debug)]
pub enum TcpOpt {
    /// End of option list.
    End,
    /// No-operation.
    Nop,
    /// Maximum segment size.
    Mss(u16),
    /// Window scale shift.
    WindowScale(u8),
    /// SACK permitted.
    SackPermitted,
    /// SACK blocks relative to the server's SND.NXT.
    Sack(Vec<(u16, u16)>),
    /// Timestamps.
    Timestamp(u32, u32),
    /// Anything (kind, then bytes with a length octet that may lie).
    Raw(Vec<u8>),
}

/// Post-build damage to a packet.
#[derive(Arbitrary, Debug)]
pub struct Mangle {
    /// Cut this many octets off the end.
    pub truncate: u8,
    /// XOR a byte at an offset.
    pub flip: Option<(u16, u8)>,
    /// Recompute checksums after the damage.
    pub fix: bool,
}

/// IP-level choices for a packet.
#[derive(Arbitrary, Debug)]
pub struct IpSpec {
    /// TTL / hop limit.
    pub ttl: u8,
    /// Type of service / traffic class.
    pub tos: u8,
    /// IPv4 fragment (more-fragments, offset) or IPv6 fragment header.
    pub fragment: Option<(bool, u16)>,
    /// IPv4 options.
    pub v4_options: Option<Vec<u8>>,
    /// IPv6 extension headers.
    pub v6_exts: Vec<ExtSpec>,
    /// Lie about the IP length (signed delta).
    pub len_delta: Option<i8>,
    /// Damage after building.
    pub mangle: Option<Mangle>,
}

/// An IPv6 extension header.
#[derive(Arbitrary, Debug)]
pub enum ExtSpec {
    /// Hop-by-hop options.
    HopByHop(Vec<u8>),
    /// Destination options.
    DestOpts(Vec<u8>),
    /// Routing header.
    Routing(u8, u8),
}

/// A TCP segment.
#[derive(Arbitrary, Debug)]
pub struct TcpSpec {
    /// To whom.
    pub target: Target,
    /// Flag byte (all eight bits).
    pub flags: u8,
    /// SEG.SEQ relative to RCV.NXT.
    pub seq: Rel,
    /// SEG.ACK relative to SND.NXT.
    pub ack: Rel,
    /// SEG.WND.
    pub window: u16,
    /// Urgent pointer.
    pub urgent: u16,
    /// Options.
    pub options: Vec<TcpOpt>,
    /// Data offset to claim instead of the true one.
    pub data_offset: Option<u8>,
    /// Payload length (modulo 2048) and fill byte.
    pub payload: (u16, u8),
    /// IP layer.
    pub ip: IpSpec,
}

/// A UDP datagram.
#[derive(Arbitrary, Debug)]
pub struct UdpSpec {
    /// To whom.
    pub target: Target,
    /// Payload length (modulo 2048) and fill byte.
    pub payload: (u16, u8),
    /// Send checksum 0 ("none", valid over IPv4 only).
    pub zero_checksum: bool,
    /// IP layer.
    pub ip: IpSpec,
}

/// An ICMP error about one of our flows.
#[derive(Arbitrary, Debug)]
pub struct IcmpSpec {
    /// Which known 4-tuple it quotes.
    pub peer: u8,
    /// Quote a UDP flow instead of TCP.
    pub udp: bool,
    /// ICMP type and code.
    pub ty: u8,
    /// ICMP code.
    pub code: u8,
    /// Octets of the quoted transport header kept.
    pub quote_len: u8,
    /// From a router rather than the peer.
    pub from_router: bool,
    /// Damage after building.
    pub mangle: Option<Mangle>,
}

/// What the server application does.
#[derive(Arbitrary, Debug)]
pub enum AppOp {
    /// Accept from a listener.
    Accept(u8),
    /// Read up to n octets.
    Recv(u8, u16),
    /// Send n octets of a byte.
    Send(u8, u16, u8),
    /// Shut down writing.
    Shutdown(u8),
    /// Close.
    Close(u8),
    /// Abort.
    Abort(u8),
    /// Close a listener.
    CloseListener(u8),
    /// Listen again (on one of a few addresses).
    Relisten(u8),
    /// Read a datagram.
    UdpRecv(u8),
    /// Send a datagram to a known peer.
    UdpSend(u8, u16, u8),
    /// Open a connection.
    Connect(u8),
}

const SERVER4: &str = "10.0.0.2";
const SERVER6: &str = "fd00::2";

impl Fixture {
    fn endpoints(&self, t: &Target, udp: bool) -> (SocketAddr, SocketAddr, Option<Peer>) {
        match *t {
            Target::Known(i) => match self.peers.get(i as usize % self.peers.len().max(1)) {
                Some(p) => (p.remote, p.local, Some(*p)),
                None => (sa("10.0.0.1:4000"), sa("10.0.0.2:80"), None),
            },
            Target::New {
                v6,
                host,
                sport,
                ref dport,
            } => {
                let dport = match dport {
                    DPort::Http => 80,
                    DPort::Alt => 8080,
                    DPort::Dns => 53,
                    DPort::Mdns => 5353,
                    DPort::Other(p) => *p,
                };
                let (src, dst) = if v6 {
                    (format!("fd00::{host:x}"), SERVER6)
                } else {
                    (format!("10.0.0.{host}"), SERVER4)
                };
                let sport = if sport == 0 && !udp { 1 } else { sport };
                let src = SocketAddr::new(ip(&src), sport);
                let dst = SocketAddr::new(ip(dst), dport);
                // A new 4-tuple the server may answer: look it up.
                let known = self
                    .peers
                    .iter()
                    .find(|p| p.local == dst && p.remote == src)
                    .copied();
                (src, dst, known)
            }
            Target::Spoof { src, dst, ports } => (
                SocketAddr::new(IpAddr::from(src), ports.0),
                SocketAddr::new(IpAddr::from(dst), ports.1),
                None,
            ),
        }
    }

    fn wrap(&self, src: IpAddr, dst: IpAddr, protocol: u8, spec: &IpSpec, l4: &[u8]) -> Vec<u8> {
        let mut p = match (src, dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => {
                let (more, off) = spec.fragment.unwrap_or((false, 0));
                let o = V4Opts {
                    ttl: spec.ttl,
                    tos: spec.tos,
                    more_fragments: more,
                    dont_fragment: spec.fragment.is_none(),
                    frag_offset: off,
                    options: spec.v4_options.clone().unwrap_or_default(),
                    total_len: spec
                        .len_delta
                        .map(|d| (20 + l4.len() as i32 + d as i32).clamp(0, 65535) as u16),
                };
                wire::ipv4(src, dst, protocol, &o, l4)
            }
            _ => {
                let src = to_v6(src);
                let dst = to_v6(dst);
                let mut exts: Vec<Ext> = spec
                    .v6_exts
                    .iter()
                    .take(4)
                    .map(|e| match e {
                        ExtSpec::HopByHop(o) => Ext::HopByHop(o.clone()),
                        ExtSpec::DestOpts(o) => Ext::DestOpts(o.clone()),
                        ExtSpec::Routing(ty, sl) => Ext::Routing {
                            ty: *ty,
                            segments_left: *sl,
                        },
                    })
                    .collect();
                if let Some((more, offset)) = spec.fragment {
                    exts.push(Ext::Fragment {
                        offset,
                        more,
                        id: 7,
                    });
                }
                let mut p = wire::ipv6(src, dst, protocol, spec.ttl, &exts, l4);
                if let Some(d) = spec.len_delta {
                    let plen = (p.len() as i32 - 40 + d as i32).clamp(0, 65535) as u16;
                    p[4..6].copy_from_slice(&plen.to_be_bytes());
                }
                p
            }
        };
        if let Some(m) = &spec.mangle {
            mangle(&mut p, m);
        }
        p
    }

    fn tcp(&mut self, spec: &TcpSpec) {
        let (src, dst, peer) = self.endpoints(&spec.target, false);
        let (rcv_nxt, snd_nxt) = peer.map_or((0, 0), |p| (p.rcv_nxt, p.snd_nxt));
        let mut opts = Vec::new();
        for o in spec.options.iter().take(12) {
            match o {
                TcpOpt::End => opts.push(0),
                TcpOpt::Nop => opts.push(1),
                TcpOpt::Mss(m) => opts.extend_from_slice(&[2, 4, (m >> 8) as u8, *m as u8]),
                TcpOpt::WindowScale(s) => opts.extend_from_slice(&[3, 3, *s]),
                TcpOpt::SackPermitted => opts.extend_from_slice(&[4, 2]),
                TcpOpt::Sack(blocks) => {
                    let blocks = &blocks[..blocks.len().min(4)];
                    opts.extend_from_slice(&[5, 2 + 8 * blocks.len() as u8]);
                    for (l, r) in blocks {
                        let left = snd_nxt.wrapping_add(*l as u32);
                        let right = left.wrapping_add(*r as u32);
                        opts.extend_from_slice(&left.to_be_bytes());
                        opts.extend_from_slice(&right.to_be_bytes());
                    }
                }
                TcpOpt::Timestamp(a, b) => {
                    opts.extend_from_slice(&[8, 10]);
                    opts.extend_from_slice(&a.to_be_bytes());
                    opts.extend_from_slice(&b.to_be_bytes());
                }
                TcpOpt::Raw(r) => opts.extend_from_slice(&r[..r.len().min(40)]),
            }
        }
        let payload = vec![spec.payload.1; spec.payload.0 as usize % 2048];
        let seq = spec.seq.apply(rcv_nxt);
        let t = Tcp {
            src_port: src.port(),
            dst_port: dst.port(),
            seq,
            ack: spec.ack.apply(snd_nxt),
            flags: spec.flags,
            window: spec.window,
            urgent: spec.urgent,
            options: &opts,
            data_offset: spec.data_offset.map(|o| o & 0x0f),
            payload: &payload,
        };
        let (s, d) = same_family(src.ip(), dst.ip());
        let l4 = t.build(s, d);
        let p = self.wrap(s, d, proto::TCP, &spec.ip, &l4);
        self.inject(&p);
        // The remote "sent" this: if it was in order, expect what follows.
        if let Some(i) = self
            .peers
            .iter()
            .position(|q| q.local == dst && q.remote == src)
        {
            let q = &mut self.peers[i];
            if seq == q.rcv_nxt && spec.flags & flags::RST == 0 {
                let ctl = u32::from(spec.flags & flags::SYN != 0)
                    + u32::from(spec.flags & flags::FIN != 0);
                q.rcv_nxt = seq.wrapping_add(payload.len() as u32 + ctl);
            }
        }
    }

    fn udp(&mut self, spec: &UdpSpec) {
        let (src, dst, _) = self.endpoints(&spec.target, true);
        let (s, d) = same_family(src.ip(), dst.ip());
        let payload = vec![spec.payload.1; spec.payload.0 as usize % 2048];
        let l4 = wire::udp(
            SocketAddr::new(s, src.port()),
            SocketAddr::new(d, dst.port()),
            &payload,
            spec.zero_checksum,
        );
        let p = self.wrap(s, d, proto::UDP, &spec.ip, &l4);
        self.inject(&p);
    }

    fn icmp(&mut self, spec: &IcmpSpec) {
        let Some(peer) = self
            .peers
            .get(spec.peer as usize % self.peers.len().max(1))
            .copied()
        else {
            return;
        };
        let (ours, theirs) = (peer.local, peer.remote);
        // The packet we "sent", as quoted back to us.
        let quoted_l4 = if spec.udp {
            wire::udp(ours, theirs, b"", false)
        } else {
            Tcp {
                src_port: ours.port(),
                dst_port: theirs.port(),
                seq: peer.snd_nxt,
                ack: peer.rcv_nxt,
                flags: flags::ACK,
                window: 1000,
                ..Default::default()
            }
            .build(ours.ip(), theirs.ip())
        };
        let keep = (spec.quote_len as usize).min(quoted_l4.len());
        let l4p = if spec.udp { proto::UDP } else { proto::TCP };
        let mut quoted = wire::ip(ours.ip(), theirs.ip(), l4p, &quoted_l4);
        quoted.truncate(quoted.len() - quoted_l4.len() + keep);
        let from = if spec.from_router {
            if ours.is_ipv4() {
                ip("10.0.0.254")
            } else {
                ip("fd00::fe")
            }
        } else {
            theirs.ip()
        };
        let (icmp_proto, ty) = if ours.is_ipv4() {
            (proto::ICMP, spec.ty % 16)
        } else {
            (proto::ICMPV6, spec.ty % 5)
        };
        let msg = wire::icmp(from, ours.ip(), ty, spec.code % 16, [0; 4], &quoted);
        let mut p = wire::ip(from, ours.ip(), icmp_proto, &msg);
        if let Some(m) = &spec.mangle {
            mangle(&mut p, m);
        }
        self.inject(&p);
    }

    fn step(&mut self, step: &Step) {
        match step {
            Step::Tcp(t) | Step::Tcp2(t) => self.tcp(t),
            Step::Udp(u) => self.udp(u),
            Step::Icmp(i) => self.icmp(i),
            Step::Raw { bytes, fix } => {
                let mut p = bytes.clone();
                if *fix {
                    wire::fix_checksums(&mut p);
                }
                self.inject(&p);
            }
            Step::Advance(ms) => self.advance(advance_ms(*ms)),
            Step::App(op) => self.app(op),
        }
    }
}

fn advance_ms(v: u16) -> Duration {
    if v < 0x8000 {
        Duration::from_millis(v as u64)
    } else {
        Duration::from_millis((v as u64 - 0x8000) * 10)
    }
}

fn to_v6(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (to_v6(a), to_v6(b))
    }
}

fn mangle(p: &mut Vec<u8>, m: &Mangle) {
    let cut = (m.truncate as usize).min(p.len());
    p.truncate(p.len() - cut);
    if let Some((at, x)) = m.flip {
        if !p.is_empty() {
            let i = at as usize % p.len();
            p[i] ^= x;
        }
    }
    if m.fix {
        wire::fix_checksums(p);
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
                    wire::fix_checksums(&mut p);
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

// ---- seed corpus ------------------------------------------------------------------

/// The seed corpus: named raw-mode inputs with real packets for the
/// fixture's own 4-tuples (SYNs, data, RST, FIN, TIME-WAIT, fragments,
/// IPv6 extension headers, UDP, ICMP). Written by `examples/gen_corpus.rs`.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    use record::{ADVANCE_MS, DRAIN_APP, PACKET, PACKET_FIXED};
    let mut fx = Fixture::new();
    let peer_of = |fx: &mut Fixture, i: usize| {
        let h = fx.conns[i];
        let remote = fx.stack().peer_addr(h).expect("fixture connection");
        *fx.peers
            .iter()
            .find(|p| p.remote == remote)
            .expect("tracked")
    };
    let est4 = peer_of(&mut fx, 0);
    let close_wait = peer_of(&mut fx, 1);
    let est6 = peer_of(&mut fx, 2);
    let find = |remote: &str| *fx.peers.iter().find(|p| p.remote == sa(remote)).unwrap();
    let half4 = find("10.0.0.7:40000");
    let syn_sent = find("10.0.0.9:9999");
    let tw: Vec<(FlowKey, _)> = fx.stack().port_table().time_wait_entries().collect();
    let tw = *fx
        .peers
        .iter()
        .find(|p| p.local == tw[0].0.local && p.remote == tw[0].0.remote)
        .unwrap();

    let seg = |p: &Peer, fl: u8, payload: &[u8], opts: &[u8]| {
        let t = Tcp {
            src_port: p.remote.port(),
            dst_port: p.local.port(),
            seq: p.rcv_nxt,
            ack: p.snd_nxt,
            flags: fl,
            window: 8192,
            options: opts,
            payload,
            ..Default::default()
        }
        .build(p.remote.ip(), p.local.ip());
        wire::ip(p.remote.ip(), p.local.ip(), proto::TCP, &t)
    };
    let syn_opts = [
        2, 4, 5, 0xb4, 1, 3, 3, 7, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0,
    ];
    let new4 = Peer {
        local: sa("10.0.0.2:80"),
        remote: sa("10.0.0.50:33000"),
        rcv_nxt: 5000,
        snd_nxt: 0,
    };
    let new6 = Peer {
        local: sa("[fd00::2]:80"),
        remote: sa("[fd00::50]:33001"),
        rcv_nxt: 9000,
        snd_nxt: 0,
    };
    let syn4 = seg(&new4, flags::SYN, b"", &syn_opts);
    let syn6_l4 = Tcp {
        src_port: 33001,
        dst_port: 80,
        seq: 9000,
        flags: flags::SYN,
        window: 8192,
        options: &syn_opts,
        ..Default::default()
    }
    .build(new6.remote.ip(), new6.local.ip());
    let syn6_ext = wire::ipv6(
        new6.remote.ip(),
        new6.local.ip(),
        proto::TCP,
        64,
        &[
            Ext::HopByHop(vec![1, 2, 0, 0]),
            Ext::DestOpts(vec![0x1e, 1, 0]),
        ],
        &syn6_l4,
    );
    let frag4 = {
        let t = seg(&est4, flags::ACK | flags::PSH, b"fragmented", &[]);
        let o = V4Opts {
            more_fragments: true,
            ..Default::default()
        };
        wire::ipv4(est4.remote.ip(), est4.local.ip(), proto::TCP, &o, &t[20..])
    };
    let frag6 = {
        let t = seg(&est6, flags::ACK, b"frag", &[]);
        wire::ipv6(
            est6.remote.ip(),
            est6.local.ip(),
            proto::TCP,
            64,
            &[Ext::Fragment {
                offset: 0,
                more: true,
                id: 1,
            }],
            &t[40..],
        )
    };
    let routing6 = {
        let t = seg(&est6, flags::ACK | flags::PSH, b"routed", &[]);
        wire::ipv6(
            est6.remote.ip(),
            est6.local.ip(),
            proto::TCP,
            64,
            &[Ext::Routing {
                ty: 4,
                segments_left: 0,
            }],
            &t[40..],
        )
    };
    let udp = |from: &str, to: &str, payload: &[u8]| {
        let (f, t) = (sa(from), sa(to));
        wire::ip(f.ip(), t.ip(), proto::UDP, &wire::udp(f, t, payload, false))
    };
    let icmp_unreach = {
        let q = Tcp {
            src_port: syn_sent.local.port(),
            dst_port: syn_sent.remote.port(),
            seq: syn_sent.snd_nxt.wrapping_sub(1),
            flags: flags::SYN,
            ..Default::default()
        }
        .build(syn_sent.local.ip(), syn_sent.remote.ip());
        let quoted = wire::ip(syn_sent.local.ip(), syn_sent.remote.ip(), proto::TCP, &q);
        let m = wire::icmp(
            syn_sent.remote.ip(),
            syn_sent.local.ip(),
            3,
            3,
            [0; 4],
            &quoted[..28],
        );
        wire::ip(syn_sent.remote.ip(), syn_sent.local.ip(), proto::ICMP, &m)
    };
    let ms = |n: u16| (ADVANCE_MS, n.to_be_bytes().to_vec());
    let mut mutated = seg(&est4, flags::ACK | flags::PSH, b"mutate me", &[]);
    mutated[33] ^= 0x41; // flags byte, checksums fixed on replay

    let raw = |recs: Vec<(u8, Vec<u8>)>| encode_raw(&recs);
    let mut out = vec![
        ("syn-v4-options", raw(vec![(PACKET, syn4.clone())])),
        ("syn-v6-ext-headers", raw(vec![(PACKET, syn6_ext)])),
        (
            "data-established-v4",
            raw(vec![
                (
                    PACKET,
                    seg(
                        &est4,
                        flags::ACK | flags::PSH,
                        b"GET / HTTP/1.1\r\n\r\n",
                        &[],
                    ),
                ),
                ms(50),
                (DRAIN_APP, vec![]),
            ]),
        ),
        (
            "data-established-v6",
            raw(vec![(PACKET, seg(&est6, flags::ACK, &[7; 200], &[]))]),
        ),
        (
            "rst-established",
            raw(vec![(PACKET, seg(&est4, flags::RST, b"", &[]))]),
        ),
        (
            "fin-close-wait",
            raw(vec![
                (PACKET, seg(&close_wait, flags::FIN | flags::ACK, b"", &[])),
                ms(100),
            ]),
        ),
        (
            "fin-time-wait",
            raw(vec![(PACKET, seg(&tw, flags::FIN | flags::ACK, b"", &[]))]),
        ),
        (
            "ack-completes-half-open",
            raw(vec![
                (PACKET, seg(&half4, flags::ACK, b"", &[])),
                (DRAIN_APP, vec![]),
            ]),
        ),
        ("fragment-v4", raw(vec![(PACKET, frag4)])),
        ("fragment-v6", raw(vec![(PACKET, frag6)])),
        ("routing-header-v6", raw(vec![(PACKET, routing6)])),
        (
            "udp",
            raw(vec![
                (PACKET, udp("10.0.0.1:5000", "10.0.0.2:53", b"query")),
                (PACKET, udp("[fd00::1]:5000", "[fd00::2]:5353", b"mdns")),
                (PACKET, udp("10.0.0.1:5000", "10.0.0.2:9", b"closed port")),
                (DRAIN_APP, vec![]),
            ]),
        ),
        ("icmp-port-unreachable", raw(vec![(PACKET, icmp_unreach)])),
        (
            "mutated-checksums-fixed",
            raw(vec![(PACKET_FIXED, mutated)]),
        ),
        (
            "syn-then-timeouts",
            raw(vec![(PACKET, syn4), ms(1000), ms(30000), ms(65535)]),
        ),
    ];
    // Structured inputs: arbitrary bytes decode to step sequences.
    let mut rng = crate::SeededRng::new(5);
    for i in 0..3 {
        let bytes = (0..64 + 64 * i)
            .map(|_| crate::Rng::next_u64(&mut rng) as u8)
            .collect();
        out.push((["structured-a", "structured-b", "structured-c"][i], bytes));
    }
    out.into_iter().map(|(n, b)| (n.to_string(), b)).collect()
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
            src_port: p.remote.port(),
            dst_port: p.local.port(),
            seq: p.rcv_nxt,
            ack: p.snd_nxt,
            flags: flags::ACK | flags::PSH,
            window: 4096,
            payload: b"zz",
            ..Default::default()
        }
        .build(p.remote.ip(), p.local.ip());
        let before = fx.stack().counters().tcp_segments_in;
        fx.inject(&wire::ip(p.remote.ip(), p.local.ip(), proto::TCP, &t));
        assert_eq!(fx.stack().counters().tcp_segments_in, before + 1);
        // Past the delayed-ACK time.
        fx.advance(Duration::from_millis(20));
        let q = fx.peers().iter().find(|q| q.remote == p.remote).unwrap();
        assert_eq!(q.rcv_nxt, p.rcv_nxt.wrapping_add(2), "the server ACKed");
    }
}
