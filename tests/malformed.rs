//! Malformed input, table-driven: each packet is dropped and counted under
//! its named counter, nothing panics, and a live connection is untouched.

mod common;
use common::*;
#[path = "common/raw.rs"]
mod raw;

use ephemera::device::virtual_link::Network;
use ephemera::{Counters, TcpHandle, TcpState};
use etherparse::{IpNumber, Ipv6FragmentHeader, Ipv6RawExtHeader, PacketBuilder};
use smoltcp::wire::Ipv4Packet;

fn ip_checksum(p: &mut [u8]) {
    let ihl = ((p[0] & 0x0f) as usize * 4).min(p.len());
    Ipv4Packet::new_unchecked(&mut p[..ihl.max(20)]).fill_checksum();
}

fn syn_to_server() -> Vec<u8> {
    raw::tcp(
        sa("10.0.0.1:40000"),
        sa("10.0.0.2:80"),
        1,
        0,
        raw::SYN,
        1000,
        b"",
    )
}

fn udp(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let (s, d) = (sa(src), sa(dst));
    let oct = |a: std::net::SocketAddr| match a.ip() {
        std::net::IpAddr::V4(v) => v.octets(),
        _ => unreachable!(),
    };
    let mut out = Vec::new();
    PacketBuilder::ipv4(oct(s), oct(d), 64)
        .udp(s.port(), d.port())
        .write(&mut out, payload)
        .unwrap();
    out
}

fn v6_tcp_with_ext(ext: &[(IpNumber, Vec<u8>)], last: IpNumber) -> Vec<u8> {
    // IPv6 header + raw extension headers + a TCP SYN, built by hand.
    let tcp = raw::tcp(
        sa("10.0.0.1:40000"),
        sa("10.0.0.2:80"),
        1,
        0,
        raw::SYN,
        1000,
        b"",
    )[20..]
        .to_vec();
    let mut body = Vec::new();
    for (i, (_, h)) in ext.iter().enumerate() {
        let mut h = h.clone();
        h[0] = ext.get(i + 1).map_or(last, |e| e.0).0;
        body.extend_from_slice(&h);
    }
    body.extend_from_slice(&tcp);
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
    p[6] = ext.first().map_or(last, |e| e.0).0;
    p[7] = 64;
    p[8..24].copy_from_slice(&"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    p[24..40].copy_from_slice(&"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&body);
    p
}

#[allow(clippy::vec_init_then_push)] // one case per line reads best
fn cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let syn = syn_to_server();
    let mut v: Vec<(&'static str, Vec<u8>, &'static str)> = Vec::new();
    v.push(("empty", vec![], "drop_malformed"));
    v.push(("one octet", vec![0x45], "drop_malformed"));
    v.push((
        "truncated IPv4 header",
        syn[..12].to_vec(),
        "drop_malformed",
    ));
    v.push(("truncated TCP header", syn[..30].to_vec(), "drop_malformed"));
    let u = udp("10.0.0.1:5000", "10.0.0.2:53", b"hello");
    v.push(("truncated UDP header", u[..24].to_vec(), "drop_malformed"));
    let mut p = syn.clone();
    p[10] ^= 0x55;
    v.push(("bad IPv4 header checksum", p, "drop_bad_checksum"));
    let mut p = syn.clone();
    p[36] ^= 0x55;
    v.push(("bad TCP checksum", p, "drop_bad_checksum"));
    let mut p = u.clone();
    *p.last_mut().unwrap() ^= 0x55;
    v.push(("bad UDP checksum", p, "drop_bad_checksum"));
    let mut p = syn.clone();
    p[0] = 0x44; // IHL 4 < 5
    ip_checksum(&mut p);
    v.push(("IHL below 5", p, "drop_malformed"));
    let mut p = syn.clone();
    p[0] = 0x4f; // IHL 15: 60 octets, longer than the total length
    p.truncate(40);
    v.push(("IHL beyond the packet", p, "drop_malformed"));
    let mut p = syn.clone();
    p[32] = 0xf0 | (p[32] & 0x0f); // data offset 15: 60-octet TCP header
    v.push(("TCP data offset beyond the segment", p, "drop_malformed"));
    let mut p = syn.clone();
    p[32] = 0x40 | (p[32] & 0x0f); // data offset 4 < 5
    v.push(("TCP data offset below 5", p, "drop_malformed"));
    let mut p = syn.clone();
    p[2..4].copy_from_slice(&1500u16.to_be_bytes());
    ip_checksum(&mut p);
    v.push(("total length beyond the buffer", p, "drop_malformed"));
    let mut p = syn.clone();
    p[2..4].copy_from_slice(&10u16.to_be_bytes());
    ip_checksum(&mut p);
    v.push(("total length below the header", p, "drop_malformed"));
    // IPv4 with a 4-octet option (NOPs + EOL): IHL 6.
    let mut p = syn[..20].to_vec();
    p.extend_from_slice(&[1, 1, 1, 0]);
    p.extend_from_slice(&syn[20..]);
    p[0] = 0x46;
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    ip_checksum(&mut p);
    v.push(("IPv4 options", p, "drop_ip_options"));
    let mut p = syn.clone();
    p[6] = 0x20; // more fragments
    ip_checksum(&mut p);
    v.push(("first fragment", p, "drop_fragment"));
    let mut p = syn.clone();
    p[6] = 0x00;
    p[7] = 0x10; // offset 128 octets, last fragment
    ip_checksum(&mut p);
    v.push(("later fragment", p, "drop_fragment"));
    // IPv6: hop-by-hop, destination options, then a fragment header.
    let hbh = Ipv6RawExtHeader::new_raw(IpNumber::TCP, &[1, 4, 0, 0, 0, 0])
        .unwrap()
        .to_bytes()
        .to_vec();
    let frag = Ipv6FragmentHeader::new(IpNumber::TCP, 0.try_into().unwrap(), true, 7)
        .to_bytes()
        .to_vec();
    v.push((
        "IPv6 extension chain ending in a fragment header",
        v6_tcp_with_ext(
            &[
                (IpNumber::IPV6_HEADER_HOP_BY_HOP, hbh.clone()),
                (IpNumber::IPV6_DESTINATION_OPTIONS, hbh.clone()),
                (IpNumber::IPV6_FRAGMENTATION_HEADER, frag),
            ],
            IpNumber::TCP,
        ),
        "drop_fragment",
    ));
    let mut p = v6_tcp_with_ext(
        &[
            (IpNumber::IPV6_HEADER_HOP_BY_HOP, hbh.clone()),
            (IpNumber::IPV6_DESTINATION_OPTIONS, hbh.clone()),
        ],
        IpNumber::TCP,
    );
    p.truncate(40 + 8 + 4); // cut inside the second extension header
    v.push(("IPv6 extension chain cut short", p, "drop_malformed"));
    v.push((
        "source port 0",
        raw::tcp(
            sa("10.0.0.1:0"),
            sa("10.0.0.2:80"),
            1,
            0,
            raw::SYN,
            1000,
            b"",
        ),
        "drop_port_zero",
    ));
    v.push((
        "destination port 0",
        raw::tcp(
            sa("10.0.0.1:4000"),
            sa("10.0.0.2:0"),
            1,
            0,
            raw::SYN,
            1000,
            b"",
        ),
        "drop_port_zero",
    ));
    v.push((
        "UDP port 0",
        udp("10.0.0.1:0", "10.0.0.2:53", b"x"),
        "drop_port_zero",
    ));
    for (name, src) in [
        ("limited broadcast source", "255.255.255.255:4000"),
        ("subnet broadcast source", "10.0.0.255:4000"),
        ("multicast source", "224.0.0.1:4000"),
        ("unspecified source", "0.0.0.0:4000"),
        ("loopback source", "127.0.0.1:4000"),
    ] {
        v.push((
            name,
            raw::tcp(sa(src), sa("10.0.0.2:80"), 1, 0, raw::SYN, 1000, b""),
            "drop_martian_source",
        ));
    }
    v.push((
        "land attack (source = destination)",
        raw::tcp(
            sa("10.0.0.2:80"),
            sa("10.0.0.2:80"),
            1,
            0,
            raw::SYN,
            1000,
            b"",
        ),
        "drop_land",
    ));
    v.push((
        "not for us",
        raw::tcp(
            sa("10.0.0.1:4000"),
            sa("10.0.0.9:80"),
            1,
            0,
            raw::SYN,
            1000,
            b"",
        ),
        "drop_not_for_us",
    ));
    v
}

fn counter(c: &Counters, name: &str) -> u64 {
    c.iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no counter {name}"))
        .1
}

/// A server with an IPv4 and an IPv6 address, and one established
/// connection carrying data.
fn setup() -> (Network, TcpHandle, TcpHandle) {
    let mut server = config(SERVER, 2);
    server.addrs.push((ip("fd00::2"), 64));
    let mut client = config(CLIENT, 1);
    client.addrs.push((ip("fd00::1"), 64));
    let mut net = pair(Default::default(), client, server);
    let l = net.stack(1).listen(sa("0.0.0.0:80"), None).unwrap();
    let c = net.stack(0).connect(sa("10.0.0.2:80")).unwrap();
    let mut s = None;
    net.run_until(10_000, |n| {
        s = s.or_else(|| n.stack(1).accept(l).ok());
        s.is_some() && n.stack(0).tcp_state(c) == Some(TcpState::Established)
    })
    .unwrap();
    (net, c, s.unwrap())
}

fn echo_once(net: &mut Network, c: TcpHandle, s: TcpHandle, msg: &[u8]) {
    assert_eq!(net.stack(0).send(c, msg), Ok(msg.len()));
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    net.run_until(10_000, |n| {
        if let Ok(k) = n.stack(1).recv(s, &mut buf) {
            got.extend_from_slice(&buf[..k]);
        }
        got.len() == msg.len()
    })
    .unwrap();
    assert_eq!(got, msg);
}

#[test]
fn each_malformed_packet_is_dropped_under_its_counter() {
    let _guard = raw::SeedGuard("malformed table", 1);
    let (mut net, c, s) = setup();
    echo_once(&mut net, c, s, b"before");
    for (name, packet, want) in cases() {
        let before = net.stack(1).counters().clone();
        let sockets = net.stack(1).socket_count();
        let flows = net.stack(1).port_table().live_flows();
        net.inject(1, &packet);
        let after = net.stack(1).counters().clone();
        assert_eq!(
            counter(&after, want),
            counter(&before, want) + 1,
            "{name}: {want} not counted; {after:?}"
        );
        for (n, v) in after.iter() {
            if n != want && n != "packets_in" {
                assert_eq!(v, counter(&before, n), "{name}: {n} moved too");
            }
        }
        // Nothing sent in reply, nothing created.
        let now = net.now();
        assert_eq!(net.stack(1).poll_transmit(now), None, "{name}");
        assert_eq!(net.stack(1).socket_count(), sockets, "{name}");
        assert_eq!(net.stack(1).port_table().live_flows(), flows, "{name}");
        assert_eq!(
            net.stack(1).tcp_state(s),
            Some(TcpState::Established),
            "{name}"
        );
        net.stack(1).check_invariants().unwrap();
    }
    // The connection still carries data both ways.
    echo_once(&mut net, c, s, b"after every malformed packet");
}

#[test]
fn random_corruption_of_live_traffic_never_panics() {
    let seed = 0xbadu64;
    let _guard = raw::SeedGuard("random corruption", seed);
    let (mut net, c, s) = setup();
    let base = syn_to_server();
    let data = raw::tcp(
        sa("10.0.0.1:40000"),
        sa("10.0.0.2:80"),
        7,
        9,
        raw::ACK,
        1000,
        b"some payload",
    );
    use ephemera::{Rng, SeededRng};
    let mut rng = SeededRng::new(seed);
    for i in 0..50_000u32 {
        let mut p = if i % 2 == 0 {
            base.clone()
        } else {
            data.clone()
        };
        for _ in 0..1 + rng.below(4) {
            let k = rng.below(p.len() as u64) as usize;
            p[k] = rng.next_u64() as u8;
        }
        p.truncate(rng.below(p.len() as u64 + 1) as usize);
        net.inject(1, &p);
        let now = net.now();
        while net.stack(1).poll_transmit(now).is_some() {}
    }
    net.stack(1).check_invariants().unwrap();
    assert_eq!(net.stack(1).tcp_state(s), Some(TcpState::Established));
    echo_once(&mut net, c, s, b"still fine");
}
