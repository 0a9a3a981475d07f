use std::net::{IpAddr, SocketAddr};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use super::*;
use crate::demux::{classify, Class, LocalAddrs};
use crate::wire::TcpView;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Ours;

impl LocalAddrs for Ours {
    fn is_local(&self, a: IpAddr) -> bool {
        a == ip("10.0.0.2") || a == ip("fd00::2")
    }
    fn is_subnet_broadcast(&self, _: IpAddr) -> bool {
        false
    }
}

const FAMILIES: [(&str, &str); 2] = [
    ("10.0.0.1:40000", "10.0.0.2:80"),
    ("[fd00::1]:40000", "[fd00::2]:80"),
];

/// Every checksum of `p` as etherparse computes it, against the one in
/// the packet: IPv4 header, then TCP, UDP, ICMP or ICMPv6.
fn etherparse_agrees(p: &[u8]) -> bool {
    let s = SlicedPacket::from_ip(p).expect("etherparse parses it");
    let (src4, dst4, src6, dst6) = match s.net.as_ref().unwrap() {
        NetSlice::Ipv4(v4) => {
            let h = v4.header();
            if h.to_header().calc_header_checksum() != h.header_checksum() {
                return false;
            }
            (h.source(), h.destination(), [0; 16], [0; 16])
        }
        NetSlice::Ipv6(v6) => {
            let h = v6.header();
            ([0; 4], [0; 4], h.source(), h.destination())
        }
    };
    let v4 = p[0] >> 4 == 4;
    match s.transport.expect("a transport header") {
        TransportSlice::Tcp(t) => {
            let c = if v4 {
                t.calc_checksum_ipv4(src4, dst4)
            } else {
                t.calc_checksum_ipv6(src6, dst6)
            };
            c.unwrap() == t.checksum()
        }
        TransportSlice::Udp(u) => {
            let h = u.to_header();
            let c = if v4 {
                h.calc_checksum_ipv4_raw(src4, dst4, u.payload())
            } else {
                h.calc_checksum_ipv6_raw(src6, dst6, u.payload())
            };
            c.unwrap() == u.checksum()
        }
        TransportSlice::Icmpv4(i) => i.icmp_type().calc_checksum(i.payload()) == i.checksum(),
        TransportSlice::Icmpv6(i) => i.is_checksum_valid(src6, dst6),
    }
}

#[test]
fn every_checksum_agrees_with_etherparse() {
    let opts = tcp_options(&[TcpOpt::Mss(1400), TcpOpt::WindowScale(2)]);
    for (s, d) in FAMILIES {
        let (s, d) = (sa(s), sa(d));
        for payload in [&b""[..], b"x", b"odd length", &[0xff; 1001]] {
            let packets = [
                Tcp {
                    seq: 77,
                    ack: 3,
                    flags: TcpFlags::ACK | TcpFlags::PSH,
                    window: 512,
                    options: &opts,
                    payload,
                    ..Default::default()
                }
                .packet(s, d),
                Udp {
                    payload,
                    ..Default::default()
                }
                .packet(s, d),
                Icmp {
                    ty: if s.is_ipv4() { 8 } else { 128 },
                    rest: [0, 1, 0, 2],
                    body: payload,
                    ..Default::default()
                }
                .packet(s.ip(), d.ip()),
            ];
            for p in packets {
                assert!(etherparse_agrees(&p), "{s} {} {p:02x?}", payload.len());
            }
        }
    }
    // IPv4 options and IPv6 extension headers, fields set.
    let (s, d) = (sa(FAMILIES[0].0), sa(FAMILIES[0].1));
    let seg = Tcp::default().segment(s, d);
    let p = Ipv4 {
        ttl: 3,
        tos: 0x10,
        id: 9,
        dont_fragment: true,
        options: vec![1, 1, 1, 0],
        ..Default::default()
    }
    .packet(s.ip(), d.ip(), protocol::TCP, &seg);
    assert!(etherparse_agrees(&p));
    let (s, d) = (sa(FAMILIES[1].0), sa(FAMILIES[1].1));
    let dgram = Udp {
        payload: b"q",
        ..Default::default()
    }
    .datagram(s, d);
    let p = Ipv6 {
        hop_limit: 1,
        exts: vec![
            Ext::HopByHop(vec![1, 0]),
            Ext::DestOpts(vec![1, 4, 0, 0, 0, 0]),
        ],
        ..Default::default()
    }
    .packet(s.ip(), d.ip(), protocol::UDP, &dgram);
    assert!(etherparse_agrees(&p));
}

#[test]
fn the_corruption_hooks_break_what_they_say() {
    let (s, d) = (sa(FAMILIES[0].0), sa(FAMILIES[0].1));
    let wrong = Tcp {
        checksum: Checksum::Wrong,
        ..Default::default()
    }
    .packet(s, d);
    assert!(!etherparse_agrees(&wrong));
    assert!(!TcpView::parse(&wrong[..]).unwrap().verify_checksum());
    let bad_ip = Ipv4 {
        checksum: Checksum::Wrong,
        ..Default::default()
    }
    .packet(s.ip(), d.ip(), protocol::TCP, &Tcp::default().segment(s, d));
    assert!(!etherparse_agrees(&bad_ip));
    let none = Udp {
        payload: b"no checksum",
        checksum: Checksum::Value(0),
        ..Default::default()
    }
    .packet(s, d);
    assert_eq!(&none[26..28], &[0, 0]);
    // A lying data offset is written as asked.
    let lie = Tcp {
        data_offset: Some(15),
        ..Default::default()
    }
    .packet(s, d);
    assert_eq!(lie[32] >> 4, 15);
    // Lying lengths.
    let long = Ipv4 {
        total_len: Some(1500),
        ..Default::default()
    }
    .packet(s.ip(), d.ip(), protocol::TCP, &[0; 20]);
    assert_eq!(u16::from_be_bytes([long[2], long[3]]), 1500);
}

#[test]
fn built_packets_pass_demux_and_fixing_a_mutation_makes_them_pass_again() {
    let opts = tcp_options(&[TcpOpt::Mss(1460)]);
    for (s, d) in FAMILIES {
        let (s, d) = (sa(s), sa(d));
        let seg = Tcp {
            seq: 7,
            flags: TcpFlags::SYN,
            window: 1000,
            options: &opts,
            payload: b"x",
            ..Default::default()
        }
        .segment(s, d);
        let mut p = if s.is_ipv6() {
            Ipv6 {
                exts: vec![Ext::DestOpts(vec![1, 2, 0, 0])],
                ..Default::default()
            }
            .packet(s.ip(), d.ip(), protocol::TCP, &seg)
        } else {
            Ipv4::default().packet(s.ip(), d.ip(), protocol::TCP, &seg)
        };
        assert!(matches!(classify(&p, &Ours), Ok(Class::Tcp { .. })), "{s}");
        let n = p.len();
        p[n - 1] ^= 0xff;
        assert!(classify(&p, &Ours).is_err());
        fix_checksums(&mut p);
        assert!(matches!(classify(&p, &Ours), Ok(Class::Tcp { .. })), "{s}");
        assert!(etherparse_agrees(&p));
    }
    let mut p = Udp {
        payload: b"q",
        ..Default::default()
    }
    .packet(sa("10.0.0.1:5000"), sa("10.0.0.2:53"));
    assert!(matches!(classify(&p, &Ours), Ok(Class::Udp { .. })));
    p[9] = protocol::ICMP;
    fix_checksums(&mut p);
    assert!(etherparse_agrees(&p));
}

#[test]
fn options_encode_as_their_rfcs_say() {
    let blocks = [SackBlock {
        left: 0x0102_0304,
        right: 0x0506_0708,
    }];
    let o = tcp_options(&[
        TcpOpt::Mss(0x05b4),
        TcpOpt::Nop,
        TcpOpt::WindowScale(7),
        TcpOpt::SackPermitted,
        TcpOpt::Sack(&blocks),
        TcpOpt::Timestamp { tsval: 1, tsecr: 2 },
        TcpOpt::End,
    ]);
    assert_eq!(
        o,
        [
            2, 4, 5, 0xb4, 1, 3, 3, 7, 4, 2, 5, 10, 1, 2, 3, 4, 5, 6, 7, 8, 8, 10, 0, 0, 0, 1, 0,
            0, 0, 2, 0
        ]
    );
    // Padded to a word, cut at 40 octets.
    let s = Tcp {
        options: &[1; 45],
        ..Default::default()
    }
    .segment(sa(FAMILIES[0].0), sa(FAMILIES[0].1));
    assert_eq!(s.len(), 60);
    let s = Tcp {
        options: &[1],
        ..Default::default()
    }
    .segment(sa(FAMILIES[0].0), sa(FAMILIES[0].1));
    assert_eq!((s.len(), &s[20..24]), (24, &[1, 0, 0, 0][..]));
}

#[test]
fn extension_headers_chain_and_zeroed_ones_take_the_length_they_say() {
    let udp = Udp {
        payload: b"x",
        ..Default::default()
    }
    .datagram(sa("[fd00::1]:1"), sa("[fd00::2]:2"));
    let p = Ipv6 {
        exts: vec![
            Ext::HopByHop(Vec::new()),
            Ext::Zeroed {
                number: protocol::AUTH,
                len: 2,
            },
            Ext::Zeroed {
                number: protocol::FRAGMENT,
                len: 0,
            },
        ],
        ..Default::default()
    }
    .packet(ip("fd00::1"), ip("fd00::2"), protocol::UDP, &udp);
    // Next headers: IPv6 -> hop-by-hop -> AH -> fragment -> UDP.
    assert_eq!(p[6], protocol::HOP_BY_HOP);
    assert_eq!(&p[40..48], &[protocol::AUTH, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&p[48..50], &[protocol::FRAGMENT, 2]);
    assert!(p[50..72].iter().all(|&b| b == 0));
    assert_eq!(&p[72..80], &[protocol::UDP, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&p[80..], &udp[..]);
    assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), p.len() - 40);
}
