//! The structured input of `stack_hostile`: [`Step`]s that `arbitrary`
//! decodes from the fuzzer's bytes, and how the fixture turns each into
//! packets (built with [`crate::wire::build`]) or application calls.

use std::net::{IpAddr, SocketAddr};

use arbitrary::Arbitrary;

use super::{ip, sa, Fixture, Peer, MAX_CONNS, MAX_LISTENERS, S};
use crate::wire::build::{
    self, fix_checksums, tcp_options, Checksum, Ext, Icmp, Ipv4, Ipv6, Tcp, TcpOpt as Opt, Udp,
};
use crate::wire::{protocol, SackBlock, TcpFlags};
use crate::Duration;

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
                Ipv4 {
                    ttl: ttl(spec.ttl),
                    tos: spec.tos,
                    more_fragments: more,
                    dont_fragment: spec.fragment.is_none(),
                    frag_offset: off,
                    options: spec.v4_options.clone().unwrap_or_default(),
                    total_len: spec
                        .len_delta
                        .map(|d| (20 + l4.len() as i32 + d as i32).clamp(0, 65535) as u16),
                    ..Default::default()
                }
                .packet(src, dst, protocol, l4)
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
                let mut p = Ipv6 {
                    hop_limit: ttl(spec.ttl),
                    exts,
                    ..Default::default()
                }
                .packet(src, dst, protocol, l4);
                // A lie about the payload length, relative to the truth.
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
            let blocks: Vec<SackBlock>;
            let o = match o {
                TcpOpt::End => Opt::End,
                TcpOpt::Nop => Opt::Nop,
                TcpOpt::Mss(m) => Opt::Mss(*m),
                TcpOpt::WindowScale(s) => Opt::WindowScale(*s),
                TcpOpt::SackPermitted => Opt::SackPermitted,
                TcpOpt::Sack(b) => {
                    blocks = b[..b.len().min(4)]
                        .iter()
                        .map(|&(l, r)| {
                            let left = snd_nxt.wrapping_add(l as u32);
                            SackBlock {
                                left,
                                right: left.wrapping_add(r as u32),
                            }
                        })
                        .collect();
                    Opt::Sack(&blocks)
                }
                TcpOpt::Timestamp(a, b) => Opt::Timestamp {
                    tsval: *a,
                    tsecr: *b,
                },
                TcpOpt::Raw(r) => Opt::Raw(&r[..r.len().min(40)]),
            };
            opts.extend(tcp_options(&[o]));
        }
        let payload = vec![spec.payload.1; spec.payload.0 as usize % 2048];
        let seq = spec.seq.apply(rcv_nxt);
        let flags = TcpFlags::from_bits(spec.flags);
        let t = Tcp {
            seq,
            ack: spec.ack.apply(snd_nxt),
            flags,
            window: spec.window,
            urgent: spec.urgent,
            options: &opts,
            data_offset: spec.data_offset.map(|o| o & 0x0f),
            checksum: Checksum::Valid,
            payload: &payload,
        };
        let (s, d) = same_family(src.ip(), dst.ip());
        let l4 = t.segment(
            SocketAddr::new(s, src.port()),
            SocketAddr::new(d, dst.port()),
        );
        let p = self.wrap(s, d, protocol::TCP, &spec.ip, &l4);
        self.inject(&p);
        // The remote "sent" this: if it was in order, expect what follows.
        if let Some(i) = self
            .peers
            .iter()
            .position(|q| q.local == dst && q.remote == src)
        {
            let q = &mut self.peers[i];
            if seq == q.rcv_nxt && !flags.rst() {
                let ctl = u32::from(flags.syn()) + u32::from(flags.fin());
                q.rcv_nxt = seq.wrapping_add(payload.len() as u32 + ctl);
            }
        }
    }

    fn udp(&mut self, spec: &UdpSpec) {
        let (src, dst, _) = self.endpoints(&spec.target, true);
        let (s, d) = same_family(src.ip(), dst.ip());
        let payload = vec![spec.payload.1; spec.payload.0 as usize % 2048];
        let l4 = Udp {
            payload: &payload,
            // 0 is "no checksum" (RFC 768).
            checksum: if spec.zero_checksum {
                Checksum::Value(0)
            } else {
                Checksum::Valid
            },
            length: None,
        }
        .datagram(
            SocketAddr::new(s, src.port()),
            SocketAddr::new(d, dst.port()),
        );
        let p = self.wrap(s, d, protocol::UDP, &spec.ip, &l4);
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
            Udp::default().datagram(ours, theirs)
        } else {
            Tcp {
                seq: peer.snd_nxt,
                ack: peer.rcv_nxt,
                flags: TcpFlags::ACK,
                window: 1000,
                ..Default::default()
            }
            .segment(ours, theirs)
        };
        let keep = (spec.quote_len as usize).min(quoted_l4.len());
        let l4p = if spec.udp {
            protocol::UDP
        } else {
            protocol::TCP
        };
        let mut quoted = build::ip(ours.ip(), theirs.ip(), l4p, &quoted_l4);
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
        let ty = if ours.is_ipv4() {
            spec.ty % 16
        } else {
            spec.ty % 5
        };
        let mut p = Icmp {
            ty,
            code: spec.code % 16,
            body: &quoted,
            ..Default::default()
        }
        .packet(from, ours.ip());
        if let Some(m) = &spec.mangle {
            mangle(&mut p, m);
        }
        self.inject(&p);
    }

    /// Carry out one step of a structured input.
    pub(super) fn step(&mut self, step: &Step) {
        match step {
            Step::Tcp(t) | Step::Tcp2(t) => self.tcp(t),
            Step::Udp(u) => self.udp(u),
            Step::Icmp(i) => self.icmp(i),
            Step::Raw { bytes, fix } => {
                let mut p = bytes.clone();
                if *fix {
                    fix_checksums(&mut p);
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
        fix_checksums(p);
    }
}

/// The TTL or hop limit of a packet: 0 is sent as 64, as the corpus and
/// the regressions were found with.
fn ttl(v: u8) -> u8 {
    if v == 0 {
        64
    } else {
        v
    }
}
