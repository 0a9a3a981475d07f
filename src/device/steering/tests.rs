//! The steering program against its Rust statement ([`packet_owner`]):
//! in the user-space interpreter over generated packets, in the kernel with
//! `BPF_PROG_TEST_RUN` over the same packets (root), and on a real
//! multi-queue TUN in a private network namespace (root), alone and with
//! stack shards driven on its queues.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::*;
use crate::device::tun;
use crate::rng::{Rng, SeededRng};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Print past the test harness's capture, so a skip shows in `cargo test`.
fn skip(test: &str, reason: &str) {
    let _ = writeln!(io::stderr(), "SKIP {test}: {reason}");
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

// ---- packets ---------------------------------------------------------------

/// The Internet checksum (RFC 1071) of `data`, starting from `sum`.
fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut bytes = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            bytes.extend(s.octets());
            bytes.extend(d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            bytes.extend(s.octets());
            bytes.extend(d.octets());
        }
        _ => unreachable!("mixed families"),
    }
    let mut sum = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    sum += u32::from(proto) + len as u32;
    sum
}

/// An IPv4 header with `options` (a multiple of 4 bytes) and a correct
/// checksum, followed by `payload`.
fn ipv4(
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    options: &[u8],
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    let ihl = 20 + options.len();
    let mut p = vec![0u8; ihl];
    p[0] = 0x40 | (ihl / 4) as u8;
    p[2..4].copy_from_slice(&((ihl + payload.len()) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..].copy_from_slice(options);
    let sum = checksum(0, &p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An IPv6 header, the extension headers `ext` (type, length in 8-octet
/// units beyond the first 8), then `payload` of protocol `next`.
fn ipv6(next: u8, src: Ipv6Addr, dst: Ipv6Addr, ext: &[(u8, u8)], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[6] = ext.first().map_or(next, |e| e.0);
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    for (i, &(_, len)) in ext.iter().enumerate() {
        let following = ext.get(i + 1).map_or(next, |e| e.0);
        let mut h = vec![0u8; (usize::from(len) + 1) * 8];
        h[0] = following;
        h[1] = len;
        p.extend(h);
    }
    p.extend_from_slice(payload);
    let plen = (p.len() - 40) as u16;
    p[4..6].copy_from_slice(&plen.to_be_bytes());
    p
}

/// A UDP datagram with a correct checksum.
fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&src.port().to_be_bytes());
    u[2..4].copy_from_slice(&dst.port().to_be_bytes());
    u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(payload);
    let mut sum = checksum(pseudo_sum(src.ip(), dst.ip(), PROTO_UDP, len), &u);
    if sum == 0 {
        sum = 0xffff;
    }
    u[6..8].copy_from_slice(&sum.to_be_bytes());
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(PROTO_UDP, s, d, &[], 0, &u),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(PROTO_UDP, s, d, &[], &u),
        _ => unreachable!("mixed families"),
    }
}

/// Random packets of every shape the rules distinguish, and broken ones.
struct Gen {
    rng: SeededRng,
    range: RangeInclusive<u16>,
}

/// What a generated packet was meant to be, for coverage counts.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Inbound4,
    Inbound6,
    Icmp4,
    Icmp6,
    Other,
    Noise,
}

impl Gen {
    fn new(seed: u64, range: RangeInclusive<u16>) -> Gen {
        Gen {
            rng: SeededRng::new(seed),
            range,
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.rng.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.below(items.len() as u64) as usize]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.rng.next_u64() as u8).collect()
    }

    /// A port: often ephemeral, often at an edge of the range, else any.
    fn port(&mut self) -> u16 {
        let (start, end) = (*self.range.start(), *self.range.end());
        match self.rng.below(10) {
            0..=3 => start + self.rng.below(u64::from(end - start) + 1) as u16,
            4 => self.pick(&[
                start.wrapping_sub(1),
                start,
                end,
                end.wrapping_add(1),
                0,
                65535,
            ]),
            _ => self.rng.next_u64() as u16,
        }
    }

    fn v4(&mut self) -> Ipv4Addr {
        Ipv4Addr::from(self.rng.next_u64() as u32)
    }

    fn v6(&mut self) -> Ipv6Addr {
        if self.chance(5) {
            return self.v4().to_ipv6_mapped();
        }
        Ipv6Addr::from((u128::from(self.rng.next_u64()) << 64) | u128::from(self.rng.next_u64()))
    }

    /// A TCP (20 bytes) or UDP (8 bytes) header with random contents.
    fn transport(&mut self, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut t = self.bytes(if proto == PROTO_TCP { 20 } else { 8 });
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t
    }

    fn proto(&mut self) -> u8 {
        if self.chance(50) {
            PROTO_TCP
        } else {
            PROTO_UDP
        }
    }

    fn options(&mut self) -> Vec<u8> {
        let words = if self.chance(70) {
            0
        } else {
            1 + self.rng.below(10) as usize
        };
        self.bytes(words * 4)
    }

    fn frag(&mut self) -> u16 {
        match self.rng.below(20) {
            0 => 0x2000,                                       // MF
            1 => 1 + self.rng.below(0x1fff) as u16,            // an offset
            2 => 0x2000 | (1 + self.rng.below(0x1fff) as u16), // both
            3..=6 => 0x4000,                                   // DF
            _ => 0,
        }
    }

    fn ext_chain(&mut self) -> Vec<(u8, u8)> {
        let n = match self.rng.below(10) {
            0..=4 => 0,
            5..=8 => 1 + self.rng.below(EXT_HEADERS_MAX as u64) as usize,
            _ => EXT_HEADERS_MAX + 1 + self.rng.below(2) as usize,
        };
        (0..n)
            .map(|_| {
                let t = if self.chance(90) {
                    self.pick(IPV6_EXT_HEADERS)
                } else {
                    self.pick(&[44, 59, 51])
                };
                let len = if self.chance(80) {
                    self.rng.below(3) as u8
                } else {
                    self.rng.next_u64() as u8
                };
                (t, len)
            })
            .collect()
    }

    /// A datagram as ephemera would have sent it, to be quoted.
    fn quoted4(&mut self) -> Vec<u8> {
        let proto = if self.chance(90) {
            self.proto()
        } else {
            self.pick(&[1, 47, 132])
        };
        let (lp, rp) = (self.port(), self.port());
        let t = self.transport(proto, lp, rp);
        let opts = self.options();
        let frag = if self.chance(80) { 0 } else { self.frag() };
        let (s, d) = (self.v4(), self.v4());
        let mut q = ipv4(proto, s, d, &opts, frag, &t);
        if self.chance(5) {
            q[0] = (q[0] & 0x0f) | ((self.rng.below(16) as u8) << 4);
        }
        if self.chance(5) {
            q[0] = (q[0] & 0xf0) | self.rng.below(5) as u8;
        }
        // Routers quote at least the IP header and 8 bytes (RFC 792);
        // sometimes less arrives.
        let keep = if self.chance(50) {
            q.len() - t.len() + 8
        } else {
            self.rng.below(q.len() as u64 + 1) as usize
        };
        q.truncate(keep.min(q.len()));
        q
    }

    fn quoted6(&mut self) -> Vec<u8> {
        let proto = if self.chance(90) {
            self.proto()
        } else {
            self.pick(&[58, 0, 44])
        };
        let (lp, rp) = (self.port(), self.port());
        let t = self.transport(proto, lp, rp);
        let (s, d) = (self.v6(), self.v6());
        let mut q = ipv6(proto, s, d, &[], &t);
        if self.chance(5) {
            q[0] = (self.rng.below(16) as u8) << 4;
        }
        if self.chance(20) {
            let keep = self.rng.below(q.len() as u64 + 1) as usize;
            q.truncate(keep);
        }
        q
    }

    fn packet(&mut self) -> (Kind, Vec<u8>) {
        let (kind, mut p) = match self.rng.below(12) {
            0..=2 => {
                let proto = self.proto();
                let (rp, lp) = (self.port(), self.port());
                let t = self.transport(proto, rp, lp);
                let (opts, frag) = (self.options(), self.frag());
                let (s, d) = (self.v4(), self.v4());
                (Kind::Inbound4, ipv4(proto, s, d, &opts, frag, &t))
            }
            3..=5 => {
                let proto = self.proto();
                let (rp, lp) = (self.port(), self.port());
                let t = self.transport(proto, rp, lp);
                let chain = self.ext_chain();
                let (s, d) = (self.v6(), self.v6());
                (Kind::Inbound6, ipv6(proto, s, d, &chain, &t))
            }
            6 | 7 => {
                let ty = if self.chance(85) {
                    self.pick(ICMPV4_ERRORS)
                } else {
                    self.pick(&[0, 4, 5, 8, 13])
                };
                let mut icmp = vec![ty, self.rng.below(16) as u8, 0, 0, 0, 0, 0, 0];
                icmp.extend(self.quoted4());
                let (opts, frag) = (
                    self.options(),
                    if self.chance(90) { 0 } else { self.frag() },
                );
                let (s, d) = (self.v4(), self.v4());
                (Kind::Icmp4, ipv4(PROTO_ICMP, s, d, &opts, frag, &icmp))
            }
            8 | 9 => {
                let ty = if self.chance(85) {
                    self.pick(ICMPV6_ERRORS)
                } else {
                    self.pick(&[128, 129, 133, 135, 143])
                };
                let mut icmp = vec![ty, 0, 0, 0, 0, 0, 0, 0];
                icmp.extend(self.quoted6());
                let chain = if self.chance(80) {
                    Vec::new()
                } else {
                    self.ext_chain()
                };
                let (s, d) = (self.v6(), self.v6());
                (Kind::Icmp6, ipv6(PROTO_ICMPV6, s, d, &chain, &icmp))
            }
            10 => {
                let proto = self.pick(&[0, 2, 4, 41, 47, 50, 59, 132, 255]);
                let payload = {
                    let n = self.rng.below(48) as usize;
                    self.bytes(n)
                };
                let p = if self.chance(50) {
                    let (s, d) = (self.v4(), self.v4());
                    ipv4(proto, s, d, &[], 0, &payload)
                } else {
                    let (s, d) = (self.v6(), self.v6());
                    ipv6(proto, s, d, &[], &payload)
                };
                (Kind::Other, p)
            }
            _ => {
                let mut p = {
                    let n = self.rng.below(90) as usize;
                    self.bytes(n)
                };
                if let Some(first) = p.first_mut() {
                    if self.chance(60) {
                        *first = (*first & 0x0f) | if self.chance(50) { 0x40 } else { 0x60 };
                    }
                }
                (Kind::Noise, p)
            }
        };
        if self.chance(15) {
            let keep = self.rng.below(p.len() as u64 + 1) as usize;
            p.truncate(keep);
        }
        if self.chance(5) && !p.is_empty() {
            for _ in 0..=self.rng.below(3) {
                let at = self.rng.below(p.len() as u64) as usize;
                p[at] ^= 1 << self.rng.below(8);
            }
        }
        if self.chance(10) {
            let extra = {
                let n = self.rng.below(32) as usize;
                self.bytes(n)
            };
            p.extend(extra);
        }
        (kind, p)
    }
}

/// The splits the program is checked under: N of both kinds, ranges wide,
/// narrow, whole and minimal.
fn configs() -> Vec<Shards> {
    let cases: [(u16, RangeInclusive<u16>); 8] = [
        (1, 49152..=65535),
        (2, 49152..=65535),
        (3, 40000..=40999),
        (4, 1024..=65535),
        (5, 1..=65535),
        (7, 60000..=60006),
        (16, 49152..=65535),
        (256, 32768..=60999),
    ];
    cases
        .into_iter()
        .enumerate()
        .map(|(i, (n, range))| Shards::new(n, range, &mut SeededRng::new(1000 + i as u64)).unwrap())
        .collect()
}

/// Which path the Rust statement takes for a packet.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Path {
    Zero,
    Port,
    Peer,
}

fn path(shards: &Shards, packet: &[u8]) -> Path {
    match packet_flow(packet) {
        None => Path::Zero,
        Some(flow) if shards.port_owner(flow.local.port()).is_some() => Path::Port,
        Some(_) => Path::Peer,
    }
}

fn program(shards: &Shards) -> Vec<Insn> {
    program::steering_program(shards).unwrap()
}

// ---- the Rust statement on hand-made packets -------------------------------

#[test]
fn packet_flow_reads_the_flow_from_ephemeras_side() {
    let us: SocketAddr = "10.7.0.2:443".parse().unwrap();
    let peer: SocketAddr = "198.51.100.9:51000".parse().unwrap();
    let inbound = udp(peer, us, b"x");
    let flow = packet_flow(&inbound).unwrap();
    assert_eq!(
        (flow.proto, flow.local, flow.remote),
        (Protocol::Udp, us, peer)
    );
    // An ICMP error quoting what we sent names the same flow.
    let sent = udp(us, peer, b"x");
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&sent[..28]);
    let error = ipv4(
        PROTO_ICMP,
        Ipv4Addr::new(192, 0, 2, 1),
        Ipv4Addr::new(10, 7, 0, 2),
        &[],
        0,
        &icmp,
    );
    assert_eq!(packet_flow(&error), Some(flow));

    let us6: SocketAddr = "[fd00:7::2]:8080".parse().unwrap();
    let peer6: SocketAddr = "[2001:db8::9]:40000".parse().unwrap();
    let flow6 = packet_flow(&udp(peer6, us6, b"")).unwrap();
    assert_eq!((flow6.local, flow6.remote), (us6, peer6));
    let sent6 = udp(us6, peer6, b"");
    let mut icmp6 = vec![1, 4, 0, 0, 0, 0, 0, 0];
    icmp6.extend_from_slice(&sent6);
    let (s, d) = ("2001:db8::1".parse().unwrap(), "fd00:7::2".parse().unwrap());
    assert_eq!(
        packet_flow(&ipv6(PROTO_ICMPV6, s, d, &[], &icmp6)),
        Some(flow6)
    );
    // Behind hop-by-hop and destination options headers, still found.
    let mut t = vec![0u8; 8];
    t[0..2].copy_from_slice(&peer6.port().to_be_bytes());
    t[2..4].copy_from_slice(&us6.port().to_be_bytes());
    let (s, d) = ("2001:db8::9".parse().unwrap(), "fd00:7::2".parse().unwrap());
    let behind = ipv6(PROTO_UDP, s, d, &[(0, 0), (60, 1)], &t);
    assert_eq!(packet_flow(&behind), Some(flow6));
    // A fragment header, an echo request, a fragment, a cut port: no flow.
    assert_eq!(packet_flow(&ipv6(PROTO_UDP, s, d, &[(44, 0)], &t)), None);
    let ping = ipv4(
        PROTO_ICMP,
        Ipv4Addr::new(1, 1, 1, 1),
        Ipv4Addr::new(10, 7, 0, 2),
        &[],
        0,
        &[8, 0, 0, 0, 0, 0, 0, 0],
    );
    assert_eq!(packet_flow(&ping), None);
    let mut frag = inbound.clone();
    frag[6] = 0x20;
    assert_eq!(packet_flow(&frag), None);
    assert_eq!(packet_flow(&inbound[..23]), None);
    assert_eq!(packet_flow(&[]), None);
}

// ---- (a) the interpreter ---------------------------------------------------

/// For each split, the program run in the interpreter over generated
/// packets answers exactly what [`packet_owner`] answers, and every path of
/// the rules is exercised often enough for that to mean something.
#[test]
fn program_equals_the_rust_function_in_the_interpreter() {
    for (i, shards) in configs().into_iter().enumerate() {
        let prog = program(&shards);
        assert!(prog.len() <= ebpf::MAX_INSNS, "{} slots", prog.len());
        let mut gen = Gen::new(i as u64, shards.ephemeral());
        let mut seen: HashMap<(Kind, Path), u32> = HashMap::new();
        let mut queues = BTreeSet::new();
        for _ in 0..6000 {
            let (kind, p) = gen.packet();
            let want = packet_owner(&shards, &p);
            let got = interp::run(&prog, &p);
            assert_eq!(got, Ok(u64::from(want)), "{shards:?}: {kind:?} {p:02x?}");
            *seen.entry((kind, path(&shards, &p))).or_default() += 1;
            queues.insert(want);
        }
        // Every kind reaches its flow, and is refused (queue 0) some of the
        // time; the peer hash is only reachable where the range is not
        // everything.
        let whole = shards.ephemeral() == (1..=65535);
        for kind in [Kind::Inbound4, Kind::Inbound6, Kind::Icmp4, Kind::Icmp6] {
            let count = |path| seen.get(&(kind, path)).copied().unwrap_or(0);
            assert!(count(Path::Port) >= 20, "{shards:?} {kind:?}: {seen:?}");
            assert!(count(Path::Zero) >= 20, "{shards:?} {kind:?}: {seen:?}");
            assert!(
                whole || count(Path::Peer) >= 20,
                "{shards:?} {kind:?}: {seen:?}"
            );
        }
        let n = usize::from(shards.count());
        assert!(queues.len() == n || n > 16, "{shards:?}: only {queues:?}");
    }
}

/// Every port a shard would hand out brings the reply to that shard, and
/// so does an ICMP error about a datagram sent from it; a listener's
/// traffic goes by the peer, on both families.
#[test]
fn replies_and_errors_come_home_in_the_program() {
    let shards = Shards::new(5, 49152..=65535, &mut SeededRng::new(77)).unwrap();
    let prog = program(&shards);
    let mut rng = SeededRng::new(78);
    let us4 = IpAddr::V4(Ipv4Addr::new(10, 7, 0, 2));
    let us6: IpAddr = "fd00:7::2".parse().unwrap();
    for shard in 0..shards.count() {
        let share = shards.ports(shard).unwrap();
        for _ in 0..40 {
            let port = share
                .port(rng.below(u64::from(share.len())) as u32)
                .unwrap();
            for us in [us4, us6] {
                let peer = if us.is_ipv4() {
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(rng.next_u64() as u32)), 443)
                } else {
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(u128::from(rng.next_u64()))), 443)
                };
                let local = SocketAddr::new(us, port);
                let reply = udp(peer, local, b"r");
                assert_eq!(interp::run(&prog, &reply), Ok(u64::from(shard)));
                let sent = udp(local, peer, b"s");
                let error = if us.is_ipv4() {
                    let mut icmp = vec![11, 0, 0, 0, 0, 0, 0, 0];
                    icmp.extend_from_slice(&sent);
                    ipv4(
                        PROTO_ICMP,
                        Ipv4Addr::new(192, 0, 2, 1),
                        Ipv4Addr::new(10, 7, 0, 2),
                        &[],
                        0,
                        &icmp,
                    )
                } else {
                    let mut icmp = vec![2, 0, 0, 0, 0, 0, 5, 0xdc];
                    icmp.extend_from_slice(&sent);
                    let (s, d) = ("2001:db8::1".parse().unwrap(), "fd00:7::2".parse().unwrap());
                    ipv6(PROTO_ICMPV6, s, d, &[], &icmp)
                };
                assert_eq!(interp::run(&prog, &error), Ok(u64::from(shard)));
                // To a listener on 443: decided by the peer alone.
                let to_listener = udp(peer, SocketAddr::new(us, 443), b"l");
                let want = shards.remote_owner(peer);
                assert_eq!(interp::run(&prog, &to_listener), Ok(u64::from(want)));
            }
        }
    }
}

#[test]
fn one_shard_needs_no_parsing() {
    let shards = Shards::new(1, 49152..=65535, &mut SeededRng::new(1)).unwrap();
    let prog = program(&shards);
    assert_eq!(prog.len(), 2);
    assert_eq!(interp::run(&prog, &[0x45; 60]), Ok(0));
}

// ---- (b) the kernel's own run ----------------------------------------------

/// Load the program, or say why this test cannot.
fn load_or_skip(test: &str, shards: &Shards) -> Option<SteeringProgram> {
    if !is_root() {
        skip(test, "needs root (bpf(2) BPF_PROG_LOAD)");
        return None;
    }
    match SteeringProgram::load(shards) {
        Ok(p) => Some(p),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOSYS)) => {
            skip(test, &format!("the kernel does not let us load eBPF: {e}"));
            None
        }
        Err(e) => panic!("the kernel refused the steering program: {e}"),
    }
}

/// The same packets as the interpreter test, run by the kernel itself with
/// `BPF_PROG_TEST_RUN`: the verifier accepts the program for every split,
/// and the kernel's answers equal [`packet_owner`].
#[test]
fn program_equals_the_rust_function_in_the_kernel() {
    const TEST: &str = "device::steering::program_equals_the_rust_function_in_the_kernel";
    for (i, shards) in configs().into_iter().enumerate() {
        let Some(prog) = load_or_skip(TEST, &shards) else {
            return;
        };
        assert_eq!(prog.shards(), &shards);
        assert_eq!(prog.instructions(), program(&shards).len());
        let mut gen = Gen::new(i as u64, shards.ephemeral());
        let mut runs = 0;
        for _ in 0..3000 {
            let (kind, p) = gen.packet();
            // The test skb must fit one page; long IPv6 chains may not.
            if p.len() > TEST_RUN_MAX {
                continue;
            }
            let got = match prog.test_run(&p) {
                Ok(v) => v,
                Err(e) if runs == 0 && e.raw_os_error() == Some(ENOTSUPP) => {
                    skip(TEST, &format!("BPF_PROG_TEST_RUN refused: {e}"));
                    return;
                }
                Err(e) => panic!("BPF_PROG_TEST_RUN of {} bytes: {e}", p.len()),
            };
            runs += 1;
            let want = packet_owner(&shards, &p);
            assert_eq!(got, u32::from(want), "{shards:?}: {kind:?} {p:02x?}");
        }
        assert!(runs > 2900, "{shards:?}: only {runs} packets small enough");
    }
}

/// Largest packet `BPF_PROG_TEST_RUN` takes for a socket filter with 4 KiB
/// pages (a page less headroom and `skb_shared_info`), with room to spare.
const TEST_RUN_MAX: usize = 3000;

/// `ENOTSUPP` (524), the kernel-internal errno a program type without a
/// test runner gives; libc does not export it.
const ENOTSUPP: i32 = 524;

// ---- (c) a real multi-queue TUN --------------------------------------------

/// Open one queue of the multi-queue TUN `name` (creating it with the
/// first), non-blocking.
fn open_queue(name: &str) -> io::Result<File> {
    // SAFETY: open(2) of a constant path; the result is checked.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE) as _;
    // SAFETY: TUNSETIFF takes a pointer to an ifreq, valid for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(File::from(fd))
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut ss).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut ss).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// A non-blocking socket of type `ty` bound to `local`, which need not be
/// an address of this host (`IP_TRANSPARENT`): the kernel sends from it as
/// if it were a host behind the TUN's peer.
fn transparent_socket(ty: libc::c_int, local: SocketAddr) -> io::Result<OwnedFd> {
    let (family, level, opt) = match local {
        SocketAddr::V4(_) => (libc::AF_INET, libc::SOL_IP, libc::IP_TRANSPARENT),
        SocketAddr::V6(_) => (libc::AF_INET6, libc::SOL_IPV6, libc::IPV6_TRANSPARENT),
    };
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let (ss, len) = sockaddr(local);
    // SAFETY: setsockopt reads an int of the size given; bind reads a
    // sockaddr of the length given; both point at live locals.
    unsafe {
        if libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            std::ptr::from_ref(&one).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) < 0
            || libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&ss).cast(), len) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(fd)
}

/// Start a TCP connection from `from` to `to`: its SYN goes into the TUN.
fn send_syn(from: SocketAddr, to: SocketAddr) -> io::Result<OwnedFd> {
    let fd = transparent_socket(libc::SOCK_STREAM, from)?;
    let (ss, len) = sockaddr(to);
    // SAFETY: connect reads a sockaddr of the length given.
    if unsafe { libc::connect(fd.as_raw_fd(), std::ptr::from_ref(&ss).cast(), len) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(fd)
}

/// Run `f` on a thread of its own inside a fresh network namespace (which
/// goes away with the thread and its descriptors), or say why not.
fn in_private_netns(test: &'static str, f: impl FnOnce() + Send + 'static) {
    if !is_root() {
        skip(test, "needs root (a network namespace and a TUN)");
        return;
    }
    let handle = std::thread::spawn(move || {
        // SAFETY: unshare(2) with a flag; it affects this thread only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "cannot make a network namespace: {}",
                io::Error::last_os_error()
            ));
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err("/dev/net/tun is missing".into());
        }
        f();
        Ok(())
    });
    match handle.join() {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => skip(test, &reason),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Wait (up to 2 s) until the kernel can use `addr`: an IPv6 address stays
/// tentative for a moment after the link comes up, and packets to it are
/// dropped meanwhile. Binding fails until then.
fn wait_until_usable(addr: IpAddr) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while UdpSocket::bind(SocketAddr::new(addr, 0)).is_err() {
        assert!(Instant::now() < deadline, "{addr} never became usable");
        std::thread::sleep(Duration::from_millis(5));
    }
}

const STACK4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const KERNEL4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const STACK6: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 2);
const KERNEL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 1);

/// With the program attached to a TUN of N queues inside a namespace,
/// every packet the kernel sends arrives on the queue [`packet_owner`]
/// names: UDP datagrams and TCP SYNs from many peers to ports in and out of
/// the ephemeral range, and the kernel's own ICMP errors about datagrams
/// written into the TUN. Kernel chatter (router solicitations, MLD) must
/// land on queue 0, as the rules say.
#[test]
fn a_multi_queue_tun_delivers_each_packet_on_its_owners_queue() {
    const TEST: &str =
        "device::steering::a_multi_queue_tun_delivers_each_packet_on_its_owners_queue";
    in_private_netns(TEST, || {
        for n in [3u16, 4] {
            if !steer_real_packets(TEST, n) {
                return;
            }
        }
    });
}

/// One run of the namespace test with `n` queues; false if it was skipped.
fn steer_real_packets(test: &str, n: u16) -> bool {
    let name = format!("ephsteer{n}");
    let mut queues = Vec::new();
    for _ in 0..n {
        match open_queue(&name) {
            Ok(q) => queues.push(q),
            Err(e) => {
                skip(test, &format!("cannot open a multi-queue TUN: {e}"));
                return false;
            }
        }
    }
    let range = 40000..=40999;
    let shards = Shards::new(n, range.clone(), &mut SeededRng::new(u64::from(n))).unwrap();
    let Some(prog) = load_or_skip(test, &shards) else {
        return false;
    };
    // Attach before the link comes up, or its first packets (router
    // solicitations, MLD reports) are placed by flow hashing instead.
    let attached = prog.attach(queues[0].as_fd()).unwrap();
    drop(prog);
    tun::set_ipv4(&name, KERNEL4, 24).unwrap();
    tun::add_ipv6(&name, KERNEL6, 64).unwrap();
    tun::set_up(&name).unwrap();
    wait_until_usable(IpAddr::V6(KERNEL6));

    let mut rng = SeededRng::new(500 + u64::from(n));
    let port = |rng: &mut SeededRng, i: u32| {
        if i.is_multiple_of(2) {
            40000 + rng.below(1000) as u16
        } else {
            let p = 1024 + rng.below(64000) as u16;
            if range.contains(&p) {
                p + 1000
            } else {
                p
            }
        }
    };
    let mut expected: Vec<FlowKey> = Vec::new();
    let mut sockets = Vec::new();
    for i in 0..40u32 {
        let v6 = i % 4 >= 2;
        let peer = if v6 {
            let host = rng.next_u64();
            SocketAddr::new(
                Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0,
                    0,
                    (host >> 48) as u16,
                    (host >> 32) as u16,
                    (host >> 16) as u16,
                    host as u16,
                )
                .into(),
                1024 + rng.below(60000) as u16,
            )
        } else {
            SocketAddr::new(
                Ipv4Addr::new(198, 51, 100, 1 + rng.below(250) as u8).into(),
                1024 + rng.below(60000) as u16,
            )
        };
        let us = if v6 {
            IpAddr::V6(STACK6)
        } else {
            IpAddr::V4(STACK4)
        };
        let local = SocketAddr::new(us, port(&mut rng, i));
        if i % 3 == 0 {
            sockets.push(send_syn(peer, local).unwrap());
            expected.push(FlowKey::new(Protocol::Tcp, local, peer));
        } else {
            let s = UdpSocket::from(transparent_socket(libc::SOCK_DGRAM, peer).unwrap());
            s.send_to(format!("steer {i}").as_bytes(), local).unwrap();
            expected.push(FlowKey::new(Protocol::Udp, local, peer));
        }
    }
    // Datagrams to closed ports of the kernel, each from its own address
    // (ICMP errors are rate-limited per destination), written on every
    // queue in turn: the kernel's port-unreachable errors quote them.
    for i in 0..16u32 {
        let v6 = i % 2 == 1;
        let (us, kernel) = if v6 {
            (
                IpAddr::V6(Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 1, i as u16)),
                IpAddr::V6(KERNEL6),
            )
        } else {
            (
                IpAddr::V4(Ipv4Addr::new(10, 9, 0, 100 + i as u8)),
                IpAddr::V4(KERNEL4),
            )
        };
        let local = SocketAddr::new(us, port(&mut rng, i / 2));
        let closed = SocketAddr::new(kernel, 7000 + i as u16);
        let packet = udp(local, closed, b"unreachable");
        (&queues[i as usize % queues.len()])
            .write_all(&packet)
            .unwrap();
        expected.push(FlowKey::new(Protocol::Udp, local, closed));
    }

    let mut arrived: HashMap<FlowKey, u16> = HashMap::new();
    let mut chatter = 0;
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    while arrived.len() < expected.len() && Instant::now() < deadline {
        let mut fds: Vec<PollFd> = queues
            .iter()
            .map(|q| PollFd::new(q.as_fd(), PollFlags::POLLIN))
            .collect();
        // Interrupted or not, every queue is read below.
        let _ = poll(&mut fds, PollTimeout::from(200u8));
        for (q, file) in queues.iter().enumerate() {
            loop {
                let len = match (&*file).read(&mut buf) {
                    Ok(len) => len,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read queue {q}: {e}"),
                };
                let packet = &buf[..len];
                let owner = packet_owner(&shards, packet);
                assert_eq!(
                    usize::from(owner),
                    q,
                    "n={n}: {:?} arrived on queue {q}, owner {owner}: {packet:02x?}",
                    packet_flow(packet)
                );
                match packet_flow(packet) {
                    Some(flow) if expected.contains(&flow) => {
                        arrived.insert(flow, q as u16);
                    }
                    _ => chatter += 1,
                }
            }
        }
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|f| !arrived.contains_key(f))
        .collect();
    assert!(missing.is_empty(), "n={n}: never arrived: {missing:?}");
    // The flows were spread: every queue had its share.
    let used: BTreeSet<u16> = arrived.values().copied().collect();
    assert_eq!(used.len(), usize::from(n), "n={n}: queues used {used:?}");
    let _ = writeln!(
        io::stderr(),
        "steering n={n}: {} flows on their owners' queues, {chatter} other packets on queue 0",
        arrived.len()
    );
    attached.detach().unwrap();
    drop(sockets);
    true
}

/// Stack shards on a real multi-queue TUN with the program attached: N
/// stacks, each told it is shard i of N and fed only queue i, open
/// connections to a kernel TCP server, and kernel clients connect to the
/// listener every shard has. Every packet arrives on the queue of the shard
/// that owns its flow, every connection completes and carries its own bytes
/// both ways, and no shard resets anything: the replies to the ports each
/// shard chose came home.
#[test]
fn stack_shards_on_a_multi_queue_tun_get_their_own_replies() {
    const TEST: &str = "device::steering::stack_shards_on_a_multi_queue_tun_get_their_own_replies";
    in_private_netns(TEST, || {
        for n in [2u16, 4] {
            if !shards_on_real_queues(TEST, n) {
                return;
            }
        }
    });
}

/// One run with `n` queues and stack shards; false if it was skipped.
fn shards_on_real_queues(test: &str, n: u16) -> bool {
    use crate::port_table::PortTableConfig;
    use crate::stack::{Event, Stack, StackConfig, TcpHandle, TcpState};
    use std::net::{TcpListener, TcpStream};

    /// Connections each way.
    const EACH_WAY: usize = 200;
    const SERVER_PORT: u16 = 7000;
    const LISTEN_PORT: u16 = 8080;

    let name = format!("ephshard{n}");
    // A subnet per run: the kernel's sockets of an earlier run may still
    // be closing, and must not reach this run's shards.
    let (stack4, kernel4) = (
        Ipv4Addr::new(10, 10, n as u8, 2),
        Ipv4Addr::new(10, 10, n as u8, 1),
    );
    let mut queues = Vec::new();
    for _ in 0..n {
        match open_queue(&name) {
            Ok(q) => queues.push(q),
            Err(e) => {
                skip(test, &format!("cannot open a multi-queue TUN: {e}"));
                return false;
            }
        }
    }
    let range = 40000..=40999;
    let shards = Shards::new(n, range.clone(), &mut SeededRng::new(70 + u64::from(n))).unwrap();
    let Some(prog) = load_or_skip(test, &shards) else {
        return false;
    };
    let attached = prog.attach(queues[0].as_fd()).unwrap();
    drop(prog);
    tun::set_ipv4(&name, kernel4, 24).unwrap();
    tun::set_up(&name).unwrap();

    let t0 = crate::Instant::from_millis(0);
    let started = Instant::now();
    let now = || crate::Instant::from_micros(started.elapsed().as_micros() as i64);
    let mut stacks: Vec<Stack> = (0..n)
        .map(|i| {
            let config = StackConfig {
                addrs: vec![(IpAddr::V4(stack4), 24)],
                seed: Some(900 + u64::from(i)),
                ports: PortTableConfig {
                    ephemeral: range.clone(),
                    shard: shards.id(i).unwrap(),
                    ..Default::default()
                },
                ..Default::default()
            };
            Stack::new(config, t0).unwrap()
        })
        .collect();
    let listeners: Vec<_> = stacks
        .iter_mut()
        .map(|s| {
            s.listen(SocketAddr::new(IpAddr::V4(stack4), LISTEN_PORT), None)
                .unwrap()
        })
        .collect();

    // The kernel's side, on threads of this namespace: an echo server for
    // the shards' connections, and clients of the shards' listener.
    let server = TcpListener::bind(SocketAddr::new(IpAddr::V4(kernel4), SERVER_PORT)).unwrap();
    let echo = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for _ in 0..EACH_WAY {
            let (mut c, _) = server.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut msg = [0u8; 64];
            let k = c.read(&mut msg).unwrap();
            c.write_all(&msg[..k]).unwrap();
            conns.push(c);
        }
        conns
    });
    let clients = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for _ in 0..EACH_WAY {
            let to = SocketAddr::new(IpAddr::V4(stack4), LISTEN_PORT);
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(10)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let msg = format!("from {}", c.local_addr().unwrap());
            c.write_all(msg.as_bytes()).unwrap();
            let mut back = vec![0u8; msg.len()];
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, msg.as_bytes(), "echo reached the wrong client");
            conns.push(c);
        }
        conns
    });

    // Shard j opens connections j, j + N, ...
    let opened: Vec<(usize, TcpHandle)> = (0..EACH_WAY)
        .map(|k| {
            let q = k % usize::from(n);
            let to = SocketAddr::new(IpAddr::V4(kernel4), SERVER_PORT);
            (q, stacks[q].connect(to).unwrap())
        })
        .collect();
    for &(q, c) in &opened {
        let local = stacks[q].local_addr(c).unwrap();
        assert_eq!(shards.port_owner(local.port()), Some(q as u16));
    }
    // Per shard and connection: sent our message (opened), or bytes read.
    let mut sent: std::collections::HashSet<(usize, TcpHandle)> = Default::default();
    let mut got: HashMap<(usize, TcpHandle), Vec<u8>> = HashMap::new();
    let mut accepted = vec![0usize; usize::from(n)];
    let (mut echoed_in, mut echoed_out) = (0, 0);
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(30);
    while (echoed_in < EACH_WAY || echoed_out < EACH_WAY) && Instant::now() < deadline {
        let mut fds: Vec<PollFd> = queues
            .iter()
            .map(|q| PollFd::new(q.as_fd(), PollFlags::POLLIN))
            .collect();
        // Interrupted or not, every queue is read below.
        let _ = poll(&mut fds, PollTimeout::from(5u8));
        for (q, file) in queues.iter().enumerate() {
            loop {
                let len = match (&*file).read(&mut buf) {
                    Ok(len) => len,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read queue {q}: {e}"),
                };
                let packet = &buf[..len];
                if let Some(flow) = packet_flow(packet) {
                    assert_eq!(usize::from(shards.owner(&flow)), q, "n={n}: {flow:?}");
                }
                stacks[q].handle_packet(now(), packet);
            }
        }
        for (q, st) in stacks.iter_mut().enumerate() {
            while let Ok(c) = st.accept(listeners[q]) {
                accepted[q] += 1;
                got.insert((q, c), Vec::new());
            }
            for &(oq, c) in opened.iter().filter(|(oq, _)| *oq == q) {
                if !sent.contains(&(oq, c)) && st.tcp_state(c) == Some(TcpState::Established) {
                    let msg = format!("from {}", st.local_addr(c).unwrap());
                    assert_eq!(st.send(c, msg.as_bytes()), Ok(msg.len()));
                    sent.insert((oq, c));
                    got.insert((oq, c), Vec::new());
                }
            }
            while let Some(ev) = st.poll_event() {
                let Event::Tcp(c) = ev else { continue };
                let Some(acc) = got.get_mut(&(q, c)) else {
                    continue;
                };
                while let Ok(k) = st.recv(c, &mut buf) {
                    if k == 0 {
                        break;
                    }
                    acc.extend_from_slice(&buf[..k]);
                }
                let opener = sent.contains(&(q, c));
                let names = if opener {
                    st.local_addr(c).unwrap()
                } else {
                    st.peer_addr(c).unwrap()
                };
                let want = format!("from {names}");
                if acc.len() == want.len() {
                    assert_eq!(String::from_utf8_lossy(acc), want, "shard {q}");
                    if opener {
                        echoed_out += 1;
                    } else {
                        let back = acc.clone();
                        assert_eq!(st.send(c, &back), Ok(back.len()));
                        echoed_in += 1;
                    }
                    acc.push(b'.'); // counted once
                }
            }
            while let Some(p) = st.poll_transmit(now()) {
                // A full kernel queue drops, as a link would; TCP resends.
                let _ = (&queues[q]).write(&p);
            }
        }
    }
    let echo_conns = echo.join().unwrap();
    let client_conns = clients.join().unwrap();
    assert_eq!(echoed_out, EACH_WAY, "n={n}: opened by the shards, echoed");
    assert_eq!(echoed_in, EACH_WAY, "n={n}: opened by the kernel, echoed");
    assert!(accepted.iter().all(|&k| k > 0), "n={n}: {accepted:?}");
    for (q, st) in stacks.iter().enumerate() {
        let c = st.counters();
        assert_eq!(c.tcp_rst_sent, 0, "n={n} shard {q}: {c:?}");
        assert_eq!(c.tcp_reset_by_peer, 0, "n={n} shard {q}: {c:?}");
        st.check_invariants().unwrap();
    }
    let _ = writeln!(
        io::stderr(),
        "shards n={n}: {EACH_WAY} connections each way, accepted per shard {accepted:?}"
    );
    drop((echo_conns, client_conns));
    attached.detach().unwrap();
    true
}
