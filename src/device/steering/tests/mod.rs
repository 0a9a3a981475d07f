//! The steering program against its Rust statement ([`packet_owner`]):
//! in the user-space interpreter over generated packets (here), in the
//! kernel with `BPF_PROG_TEST_RUN` over the same packets (`kernel`, root),
//! and on a real multi-queue TUN in a private network namespace (`netns`,
//! root), alone and with stack shards driven on its queues. Packets are built with [`crate::wire::build`]; the generator of
//! random and broken ones is `gen`.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;

use super::*;
use crate::rng::{Rng, SeededRng};
use crate::wire::build::{Ext, Icmp, Ipv4, Ipv6, Udp};

mod gen;
mod kernel;
mod netns;

use gen::{Gen, Kind};

/// Print past the test harness's capture, so a skip shows in `cargo test`.
fn skip(test: &str, reason: &str) {
    let _ = writeln!(io::stderr(), "SKIP {test}: {reason}");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

// ---- packets ---------------------------------------------------------------

/// An IPv4 packet with raw `options` (a multiple of 4 bytes) and `frag`,
/// the flags and fragment offset word as it is on the wire.
fn ipv4(
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    options: &[u8],
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    Ipv4 {
        options: options.to_vec(),
        dont_fragment: frag & 0x4000 != 0,
        more_fragments: frag & 0x2000 != 0,
        frag_offset: frag & 0x1fff,
        ..Default::default()
    }
    .packet(src.into(), dst.into(), proto, payload)
}

/// An IPv6 packet, the extension headers `ext` (type, length in 8-octet
/// units beyond the first 8; zero-filled), then `payload` of protocol
/// `next`.
fn ipv6(next: u8, src: Ipv6Addr, dst: Ipv6Addr, ext: &[(u8, u8)], payload: &[u8]) -> Vec<u8> {
    Ipv6 {
        exts: ext
            .iter()
            .map(|&(number, len)| Ext::Zeroed { number, len })
            .collect(),
        ..Default::default()
    }
    .packet(src.into(), dst.into(), next, payload)
}

/// A UDP datagram with a correct checksum.
fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    Udp {
        payload,
        ..Default::default()
    }
    .packet(src, dst)
}

/// An ICMP or ICMPv6 error of type `ty` and code `code` quoting `quoted`.
fn icmp_error(ty: u8, code: u8, rest: [u8; 4], src: IpAddr, dst: IpAddr, quoted: &[u8]) -> Vec<u8> {
    Icmp {
        ty,
        code,
        rest,
        body: quoted,
        ..Default::default()
    }
    .packet(src, dst)
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
    let router = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let error = icmp_error(3, 3, [0; 4], router, us.ip(), &sent[..28]);
    assert_eq!(packet_flow(&error), Some(flow));

    let us6: SocketAddr = "[fd00:7::2]:8080".parse().unwrap();
    let peer6: SocketAddr = "[2001:db8::9]:40000".parse().unwrap();
    let flow6 = packet_flow(&udp(peer6, us6, b"")).unwrap();
    assert_eq!((flow6.local, flow6.remote), (us6, peer6));
    let sent6 = udp(us6, peer6, b"");
    let router6: IpAddr = "2001:db8::1".parse().unwrap();
    let error6 = icmp_error(1, 4, [0; 4], router6, us6.ip(), &sent6);
    assert_eq!(packet_flow(&error6), Some(flow6));
    // Behind hop-by-hop and destination options headers, still found.
    let t = Udp::default().datagram(peer6, us6);
    let (s, d) = ("2001:db8::9".parse().unwrap(), "fd00:7::2".parse().unwrap());
    let behind = ipv6(PROTO_UDP, s, d, &[(0, 0), (60, 1)], &t);
    assert_eq!(packet_flow(&behind), Some(flow6));
    // A fragment header, an echo request, a fragment, a cut port: no flow.
    assert_eq!(packet_flow(&ipv6(PROTO_UDP, s, d, &[(44, 0)], &t)), None);
    let ping = Icmp {
        ty: 8,
        ..Default::default()
    }
    .packet(Ipv4Addr::new(1, 1, 1, 1).into(), us.ip());
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
                    // Time exceeded.
                    let router = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
                    icmp_error(11, 0, [0; 4], router, us, &sent)
                } else {
                    // Packet too big, MTU 1500.
                    let router: IpAddr = "2001:db8::1".parse().unwrap();
                    icmp_error(2, 0, 1500u32.to_be_bytes(), router, us, &sent)
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
