use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::rng::{Rng, SeededRng};
use crate::wire::build::{self, tcp_options, Ext, Ipv4, Ipv6, Tcp, TcpOpt};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const V4: (&str, &str) = ("10.0.0.1:40000", "10.0.0.2:80");
const V6: (&str, &str) = ("[fd00::1]:40000", "[fd00::2]:80");

fn syn_options() -> Vec<u8> {
    tcp_options(&[
        TcpOpt::Mss(1460),
        TcpOpt::Nop,
        TcpOpt::WindowScale(7),
        TcpOpt::SackPermitted,
        TcpOpt::Timestamp {
            tsval: 0xdead_beef,
            tsecr: 7,
        },
    ])
}

#[test]
fn a_built_segment_reads_back_field_by_field() {
    let opts = syn_options();
    for (src, dst) in [V4, V6] {
        let (src, dst) = (sa(src), sa(dst));
        let p = Tcp {
            seq: 0x0102_0304,
            ack: 0xa0b0_c0d0,
            flags: TcpFlags::SYN | TcpFlags::ACK,
            window: 29200,
            urgent: 9,
            options: &opts,
            payload: b"hello",
            ..Default::default()
        }
        .packet(src, dst);
        let v = TcpView::parse(&p[..]).unwrap();
        assert_eq!(v.is_ipv6(), src.is_ipv6());
        assert_eq!(v.ip_header_len(), if src.is_ipv6() { 40 } else { 20 });
        assert_eq!((v.src(), v.dst()), (src, dst));
        assert_eq!((v.seq(), v.ack()), (0x0102_0304, 0xa0b0_c0d0));
        assert_eq!(v.flags(), TcpFlags::SYN | TcpFlags::ACK);
        assert!(v.flags().syn() && v.flags().ack() && !v.flags().fin());
        assert_eq!((v.window(), v.urgent()), (29200, 9));
        assert_eq!(v.header_len(), 20 + 20);
        assert_eq!(v.data_offset(), 10);
        assert_eq!(v.payload(), b"hello");
        assert_eq!(v.seg_len(), 6, "five octets and the SYN");
        assert_eq!(v.packet_len(), p.len());
        assert_eq!(v.mss(), Some(1460));
        assert_eq!(v.window_scale(), Some(7));
        assert!(v.sack_permitted());
        assert_eq!(v.timestamp(), Some((0xdead_beef, 7)));
        assert!(v.sack_blocks().is_none());
        assert!(v.verify_checksum());
    }
}

#[test]
fn ipv6_extension_headers_are_walked_as_demux_walks_them() {
    let (src, dst) = (sa(V6.0), sa(V6.1));
    let seg = Tcp {
        seq: 5,
        flags: TcpFlags::ACK,
        payload: b"data",
        ..Default::default()
    }
    .segment(src, dst);
    let chains = [
        vec![Ext::HopByHop(vec![1, 4, 0, 0, 0, 0])],
        vec![
            Ext::HopByHop(vec![1, 2, 0, 0]),
            Ext::DestOpts(vec![0x1e, 1, 0]),
            Ext::Routing {
                ty: 4,
                segments_left: 0,
            },
        ],
        vec![Ext::Fragment {
            offset: 0,
            more: false,
            id: 9,
        }],
        vec![Ext::DestOpts(vec![1; 20]), Ext::DestOpts(vec![])],
    ];
    for exts in chains {
        let ext_len: usize = {
            let bare = Ipv6::default().packet(src.ip(), dst.ip(), 6, &seg);
            let with = Ipv6 {
                exts: exts.clone(),
                ..Default::default()
            }
            .packet(src.ip(), dst.ip(), 6, &seg);
            with.len() - bare.len()
        };
        let p = Ipv6 {
            exts: exts.clone(),
            ..Default::default()
        }
        .packet(src.ip(), dst.ip(), 6, &seg);
        let v = TcpView::parse(&p[..]).unwrap_or_else(|e| panic!("{exts:?}: {e}"));
        assert_eq!(v.ip_header_len(), 40 + ext_len, "{exts:?}");
        assert_eq!((v.seq(), v.payload()), (5, &b"data"[..]), "{exts:?}");
        assert!(v.verify_checksum());
        // etherparse (demux) finds the same TCP header.
        let e = etherparse::SlicedPacket::from_ip(&p).unwrap();
        let Some(etherparse::TransportSlice::Tcp(t)) = e.transport else {
            panic!("etherparse: not TCP")
        };
        assert_eq!(t.payload(), v.payload());
        assert_eq!(t.slice().as_ptr(), v.segment().as_ptr());
    }
}

#[test]
fn what_is_not_a_whole_tcp_segment_is_refused_with_its_reason() {
    let (src, dst) = (sa(V4.0), sa(V4.1));
    let t = Tcp {
        flags: TcpFlags::SYN,
        ..Default::default()
    };
    let seg = t.segment(src, dst);
    let ok = t.packet(src, dst);
    let v4 = |o: Ipv4| o.packet(src.ip(), dst.ip(), 6, &seg);
    let mut ihl4 = ok.clone();
    ihl4[0] = 0x44;
    let mut offset4 = ok.clone();
    offset4[32] = 0x40;
    let mut offset15 = ok.clone();
    offset15[32] = 0xf0;
    let (s6, d6) = (sa(V6.0), sa(V6.1));
    let seg6 = t.segment(s6, d6);
    let v6 = |exts: Vec<Ext>| {
        Ipv6 {
            exts,
            ..Default::default()
        }
        .packet(s6.ip(), d6.ip(), 6, &seg6)
    };
    let cases: Vec<(&str, Vec<u8>, ParseError)> = vec![
        ("empty", vec![], ParseError::Truncated),
        ("version 5", vec![0x50; 60], ParseError::Version),
        (
            "short IPv4 header",
            ok[..19].to_vec(),
            ParseError::Truncated,
        ),
        ("cut TCP header", ok[..30].to_vec(), ParseError::Truncated),
        ("IHL 4", ihl4, ParseError::HeaderLength),
        ("data offset 4", offset4, ParseError::HeaderLength),
        ("data offset 15", offset15, ParseError::HeaderLength),
        (
            "total length beyond the buffer",
            v4(Ipv4 {
                total_len: Some(100),
                ..Default::default()
            }),
            ParseError::Truncated,
        ),
        (
            "total length inside the header",
            v4(Ipv4 {
                total_len: Some(10),
                ..Default::default()
            }),
            ParseError::HeaderLength,
        ),
        (
            "first fragment",
            v4(Ipv4 {
                more_fragments: true,
                ..Default::default()
            }),
            ParseError::Fragment,
        ),
        (
            "later fragment",
            v4(Ipv4 {
                frag_offset: 16,
                ..Default::default()
            }),
            ParseError::Fragment,
        ),
        (
            "UDP",
            build::Udp::default().packet(src, dst),
            ParseError::NotTcp,
        ),
        (
            "IPv6 fragment",
            v6(vec![Ext::Fragment {
                offset: 0,
                more: true,
                id: 1,
            }]),
            ParseError::Fragment,
        ),
        (
            "hop-by-hop not first",
            v6(vec![Ext::DestOpts(vec![]), Ext::HopByHop(vec![])]),
            ParseError::NotTcp,
        ),
        (
            "IPv6 chain cut short",
            v6(vec![Ext::DestOpts(vec![0; 30])])[..60].to_vec(),
            ParseError::Truncated,
        ),
    ];
    for (what, p, want) in cases {
        assert_eq!(TcpView::parse(&p[..]).err(), Some(want), "{what}");
    }
    // Octets after the IP packet (link padding) are not part of it.
    let mut padded = ok.clone();
    padded.extend_from_slice(&[0; 6]);
    let v = TcpView::parse(&padded[..]).unwrap();
    assert_eq!((v.packet_len(), v.payload().len()), (ok.len(), 0));
    assert!(v.verify_checksum());
}

#[test]
fn the_option_walk_names_each_option_and_stops_at_a_bad_length() {
    let (src, dst) = (sa(V4.0), sa(V4.1));
    let blocks = [
        SackBlock {
            left: 100,
            right: 200,
        },
        SackBlock {
            left: 300,
            right: 400,
        },
    ];
    let opts = tcp_options(&[
        TcpOpt::Nop,
        TcpOpt::Nop,
        TcpOpt::Sack(&blocks),
        TcpOpt::Raw(&[2, 3, 9]), // MSS with a wrong length
        TcpOpt::Raw(&[99, 2]),   // an unknown kind
        TcpOpt::Raw(&[7, 1]),    // a length below 2: the walk stops
        TcpOpt::Mss(536),
    ]);
    let p = Tcp {
        flags: TcpFlags::ACK,
        options: &opts,
        ..Default::default()
    }
    .packet(src, dst);
    let v = TcpView::parse(&p[..]).unwrap();
    let all: Vec<_> = v.options().collect();
    assert_eq!(all.len(), 4, "{all:?}");
    let Ok(TcpOption::Sack(s)) = all[0] else {
        panic!("{all:?}")
    };
    assert_eq!(s.iter().collect::<Vec<_>>(), blocks);
    assert_eq!(
        all[1],
        Ok(TcpOption::Other {
            kind: 2,
            data: &[9]
        })
    );
    assert_eq!(
        all[2],
        Ok(TcpOption::Other {
            kind: 99,
            data: &[]
        })
    );
    assert_eq!(
        all[3],
        Err(BadOption {
            kind: 7,
            offset: 45
        })
    );
    // The MSS behind the bad option is never reached.
    assert_eq!(v.mss(), None);
    assert_eq!(v.sack_blocks().map(|b| b.len()), Some(2));

    // End of option list ends the walk.
    let opts = tcp_options(&[TcpOpt::SackPermitted, TcpOpt::End, TcpOpt::Mss(1)]);
    let p = Tcp {
        options: &opts,
        ..Default::default()
    }
    .packet(src, dst);
    let v = TcpView::parse(&p[..]).unwrap();
    assert_eq!(
        v.options().collect::<Vec<_>>(),
        [Ok(TcpOption::SackPermitted)]
    );
}

/// A random segment: either family, random fields, random options with a
/// SACK option at a random alignment, a payload of random (odd or even)
/// length, sometimes IPv6 extension headers.
fn random_segment(rng: &mut SeededRng) -> Vec<u8> {
    let v6 = rng.below(2) == 0;
    let (src, dst) = if v6 { V6 } else { V4 };
    let (src, dst) = (sa(src), sa(dst));
    let blocks: Vec<SackBlock> = (0..1 + rng.below(4))
        .map(|_| SackBlock {
            left: rng.next_u64() as u32,
            right: rng.next_u64() as u32,
        })
        .collect();
    let mut opts = vec![TcpOpt::Nop; rng.below(4) as usize];
    opts.push(TcpOpt::Sack(
        &blocks[..blocks.len().min(if opts.len() > 1 { 3 } else { 4 })],
    ));
    if rng.below(2) == 0 {
        opts.insert(0, TcpOpt::WindowScale(3));
    }
    let options = tcp_options(&opts);
    let payload: Vec<u8> = (0..rng.below(40)).map(|_| rng.next_u64() as u8).collect();
    let t = Tcp {
        seq: rng.next_u64() as u32,
        ack: rng.next_u64() as u32,
        flags: TcpFlags::from_bits(rng.next_u64() as u8),
        window: rng.next_u64() as u16,
        options: &options,
        payload: &payload,
        ..Default::default()
    };
    if v6 && rng.below(2) == 0 {
        Ipv6 {
            exts: vec![Ext::DestOpts(vec![1, 0])],
            ..Default::default()
        }
        .packet(src.ip(), dst.ip(), 6, &t.segment(src, dst))
    } else {
        t.packet(src, dst)
    }
}

/// The checksum as etherparse computes it from scratch.
fn etherparse_checksum(p: &[u8]) -> u16 {
    let e = etherparse::SlicedPacket::from_ip(p).unwrap();
    let Some(etherparse::TransportSlice::Tcp(t)) = e.transport else {
        panic!("not TCP")
    };
    match e.net.unwrap() {
        etherparse::NetSlice::Ipv4(ip) => t
            .calc_checksum_ipv4(ip.header().source(), ip.header().destination())
            .unwrap(),
        etherparse::NetSlice::Ipv6(ip) => t
            .calc_checksum_ipv6(ip.header().source(), ip.header().destination())
            .unwrap(),
    }
}

#[test]
fn setters_keep_the_checksum_equal_to_a_full_recomputation() {
    let mut rng = SeededRng::new(0x1624);
    for round in 0..3000 {
        let mut p = random_segment(&mut rng);
        let mut v = TcpView::parse(&mut p[..]).unwrap();
        assert!(v.verify_checksum(), "round {round}: built wrong");
        let (seq, ack) = (rng.next_u64() as u32, rng.next_u64() as u32);
        let flags = TcpFlags::from_bits(rng.next_u64() as u8);
        let window = rng.next_u64() as u16;
        let delta = rng.next_u64() as u32;
        let before: Vec<SackBlock> = v.sack_blocks().unwrap().iter().collect();
        match round % 5 {
            0 => v.set_seq(seq),
            1 => v.set_ack(ack),
            2 => v.set_flags(flags),
            3 => v.set_window(window),
            _ => {
                v.set_seq(seq);
                v.set_ack(ack);
                v.set_flags(flags);
                v.set_window(window);
            }
        }
        // Translate every SACK block, as a sequence-number offset would.
        let n = v.map_sack_blocks(|b| SackBlock {
            left: b.left.wrapping_sub(delta),
            right: b.right.wrapping_sub(delta),
        });
        assert_eq!(n, before.len());
        let after: Vec<SackBlock> = v.sack_blocks().unwrap().iter().collect();
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(a.left, b.left.wrapping_sub(delta));
            assert_eq!(a.right, b.right.wrapping_sub(delta));
        }
        match round % 5 {
            0 => assert_eq!(v.seq(), seq),
            1 => assert_eq!(v.ack(), ack),
            2 => assert_eq!(v.flags(), flags),
            3 => assert_eq!(v.window(), window),
            _ => assert_eq!(
                (v.seq(), v.ack(), v.flags(), v.window()),
                (seq, ack, flags, window)
            ),
        }
        let incremental = v.checksum();
        assert!(v.verify_checksum(), "round {round}");
        assert_eq!(incremental, etherparse_checksum(&p), "round {round}");
        let mut full = p.clone();
        TcpView::parse(&mut full[..]).unwrap().fill_checksum();
        assert_eq!(full, p, "round {round}: incremental != full recomputation");
    }
}

#[test]
fn a_wrong_checksum_stays_wrong_through_the_setters() {
    let (src, dst) = (sa(V4.0), sa(V4.1));
    let mut p = Tcp {
        seq: 1,
        checksum: build::Checksum::Wrong,
        ..Default::default()
    }
    .packet(src, dst);
    let mut v = TcpView::parse(&mut p[..]).unwrap();
    assert!(!v.verify_checksum());
    v.set_seq(2);
    v.set_flags(TcpFlags::RST);
    assert!(!v.verify_checksum());
}

#[test]
fn set_seq_unsummed_leaves_a_checksum_the_link_completes_alone() {
    let (src, dst) = ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
    let mut p = Tcp {
        seq: 1,
        checksum: build::Checksum::Value(0),
        ..Default::default()
    }
    .packet(src, dst);
    let mut v = TcpView::parse(&mut p[..]).unwrap();
    v.set_seq_unsummed(0x8000_0002);
    assert_eq!((v.seq(), v.checksum()), (0x8000_0002, 0));
    v.fill_checksum();
    assert!(v.verify_checksum());
}

#[test]
fn flags_print_by_name() {
    assert_eq!(format!("{:?}", TcpFlags::SYN | TcpFlags::ACK), "SYN|ACK");
    assert_eq!(format!("{:?}", TcpFlags::NONE), "-");
    assert_eq!(TcpFlags::from_bits(0x18) & !TcpFlags::PSH, TcpFlags::ACK);
}

#[test]
fn addresses_of_both_families() {
    for (s, d) in [V4, V6] {
        let (s, d) = (sa(s), sa(d));
        let p = Tcp::default().packet(s, d);
        let v = TcpView::parse(p).unwrap();
        assert_eq!(v.src_addr(), s.ip());
        assert_eq!(v.dst_addr(), d.ip());
        assert_eq!(matches!(v.dst_addr(), IpAddr::V6(_)), d.is_ipv6());
        // The builder's IPv4 default leaves DF clear.
        assert_eq!(v.dont_fragment(), d.is_ipv6());
        let _ = v.into_inner();
    }
}

#[test]
fn every_sack_option_is_rewritten_and_nothing_else() {
    let (src, dst) = (sa(V6.0), sa(V6.1));
    let one = [SackBlock { left: 1, right: 2 }];
    let two = [
        SackBlock { left: 3, right: 4 },
        SackBlock { left: 5, right: 6 },
    ];
    let opts = tcp_options(&[
        TcpOpt::Nop,
        TcpOpt::Sack(&one),
        TcpOpt::Timestamp { tsval: 7, tsecr: 8 },
        TcpOpt::Sack(&two),
    ]);
    let mut p = Tcp {
        flags: TcpFlags::ACK,
        options: &opts,
        payload: b"odd",
        ..Default::default()
    }
    .packet(src, dst);
    let mut v = TcpView::parse(&mut p[..]).unwrap();
    let n = v.map_sack_blocks(|b| SackBlock {
        left: b.left + 100,
        right: b.right + 100,
    });
    assert_eq!(n, 3);
    let edges: Vec<(u32, u32)> = v
        .options()
        .filter_map(|o| match o {
            Ok(TcpOption::Sack(b)) => Some(b.iter().map(|b| (b.left, b.right)).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(edges, [(101, 102), (103, 104), (105, 106)]);
    assert_eq!(v.timestamp(), Some((7, 8)));
    assert!(v.verify_checksum());
}

#[test]
fn a_view_at_a_known_offset_agrees_with_parsing() {
    let opts = syn_options();
    let mut rng = SeededRng::new(0x7c9);
    for (src, dst) in [V4, V6] {
        let (src, dst) = (sa(src), sa(dst));
        let mut p = Tcp {
            seq: 1,
            ack: 2,
            flags: TcpFlags::ACK,
            options: &opts,
            payload: b"data",
            ..Default::default()
        }
        .packet(src, dst);
        // Link padding beyond the IP length is not the segment's.
        p.extend_from_slice(&[0; 6]);
        let parsed = TcpView::parse(&p[..]).unwrap();
        let at = TcpView::at(&p[..], parsed.ip_header_len()).unwrap();
        assert_eq!(
            (at.header_len(), at.payload(), at.mss(), at.is_ipv6()),
            (parsed.header_len(), &b"data"[..], Some(1460), src.is_ipv6())
        );
        // Setters through either view write the same octets.
        let mut a = p.clone();
        let mut b = p.clone();
        for _ in 0..50 {
            let (seq, ack) = (rng.next_u64() as u32, rng.next_u64() as u32);
            let mut v = TcpView::parse(&mut a[..]).unwrap();
            v.set_seq(seq);
            v.set_ack(ack);
            let hl = v.ip_header_len();
            let mut w = TcpView::at(&mut b[..], hl).unwrap();
            w.set_seq(seq);
            w.set_ack(ack);
            assert_eq!(a, b);
            assert!(TcpView::parse(&a[..]).unwrap().verify_checksum());
        }
        // A header that does not fit in the IP length is refused.
        let hl = parsed.ip_header_len();
        assert_eq!(
            TcpView::at(&p[..hl + 19], hl).err(),
            Some(ParseError::Truncated)
        );
        let mut bad = p.clone();
        bad[hl + 12] = 0x40;
        assert_eq!(
            TcpView::at(&bad[..], hl).err(),
            Some(ParseError::HeaderLength)
        );
        bad[hl + 12] = 0xf0;
        assert_eq!(
            TcpView::at(&bad[..], hl).err(),
            Some(ParseError::HeaderLength)
        );
        assert_eq!(TcpView::at(&[][..], 0).err(), Some(ParseError::Truncated));
    }
}
