//! The cuts compared byte for byte with a reference segmentation built
//! from scratch with [`crate::wire::build`], segment by segment, as
//! Linux's software GSO would emit them.

use std::net::SocketAddr;

use super::*;
use crate::device::gso::{F_DATA_VALID, GSO_UDP};
use crate::wire::build::{tcp_options, Ext, Ipv4, Ipv6, Tcp, TcpOpt, Udp};
use crate::wire::protocol;

/// One direction of a flow as the kernel sends it to the stack.
#[derive(Clone)]
struct Flow {
    v6: bool,
    exts: Vec<Ext>,
    options: Vec<u8>,
    flags: TcpFlags,
    seq: u32,
    id0: u16,
}

impl Flow {
    fn new(v6: bool) -> Flow {
        Flow {
            v6,
            exts: Vec::new(),
            options: Vec::new(),
            flags: TcpFlags::ACK,
            seq: 0xffff_f000, // wraps within a few segments
            id0: 0xfffe,      // so does the IPv4 identification
        }
    }

    fn addrs(&self) -> (SocketAddr, SocketAddr) {
        if self.v6 {
            (
                "[fd00:7::1]:40000".parse().unwrap(),
                "[fd00:7::2]:9".parse().unwrap(),
            )
        } else {
            (
                "10.7.0.1:40000".parse().unwrap(),
                "10.7.0.2:9".parse().unwrap(),
            )
        }
    }

    /// One IP packet of this flow with `flags`, SEG.SEQ `seq`, IPv4
    /// identification `id`, checksums complete.
    fn packet(&self, flags: TcpFlags, seq: u32, id: u16, payload: &[u8]) -> Vec<u8> {
        let (src, dst) = self.addrs();
        let tcp = Tcp {
            seq,
            ack: 0x1234_5678,
            flags,
            window: 501,
            options: &self.options,
            payload,
            ..Default::default()
        }
        .segment(src, dst);
        if self.v6 {
            Ipv6 {
                exts: self.exts.clone(),
                ..Default::default()
            }
            .packet(src.ip(), dst.ip(), protocol::TCP, &tcp)
        } else {
            Ipv4 {
                id,
                dont_fragment: true,
                ..Default::default()
            }
            .packet(src.ip(), dst.ip(), protocol::TCP, &tcp)
        }
    }

    /// The super-packet the kernel writes into the TUN for `payload`
    /// sent in `mss`-octet segments: one packet with the headers of the
    /// first segment, the flags of the whole, the IP length of the whole,
    /// and in the TCP checksum field the pseudo-header sum only
    /// (`CHECKSUM_PARTIAL`); `hdr_len` is the kernel's linear length, not
    /// the headers'.
    fn super_packet(&self, payload: &[u8], mss: u16) -> (VnetHdr, Vec<u8>) {
        let mut p = self.packet(self.flags, self.seq, self.id0, payload);
        let view = TcpView::parse(&p[..]).unwrap();
        let l4 = view.ip_header_len();
        let seed = checksum::fold(view.pseudo_header_sum());
        p[l4 + 16..l4 + 18].copy_from_slice(&seed.to_be_bytes());
        let ecn = if self.flags.bits() & TcpFlags::CWR.bits() != 0 {
            GSO_ECN
        } else {
            0
        };
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if self.v6 { GSO_TCPV6 } else { GSO_TCPV4 } | ecn,
            hdr_len: 1234,
            gso_size: mss,
            csum_start: l4 as u16,
            csum_offset: 16,
        };
        (hdr, p)
    }

    /// The reference: what software GSO makes of that super-packet, each
    /// segment built on its own (FIN and PSH on the last only, CWR on
    /// the first only, IPv4 identification counting up).
    fn reference(&self, payload: &[u8], mss: usize) -> Vec<Vec<u8>> {
        let chunks: Vec<&[u8]> = payload.chunks(mss).collect();
        let n = chunks.len();
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut f = self.flags;
                if i + 1 < n {
                    f = f & !(TcpFlags::FIN | TcpFlags::PSH);
                }
                if i > 0 {
                    f = f & !TcpFlags::CWR;
                }
                let seq = self.seq.wrapping_add((i * mss) as u32);
                self.packet(f, seq, self.id0.wrapping_add(i as u16), c)
            })
            .collect()
    }
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Deliver with complete checksums and collect what was handed on.
fn cut_up(hdr: VnetHdr, p: Vec<u8>, cut: Cut) -> (Result<Delivered, RxDrop>, Vec<Vec<u8>>) {
    let (r, got) = deliver_all(hdr, p, cut, Fill::Complete);
    (r, got.into_iter().map(|(p, _)| p).collect())
}

/// The packets handed on, with their checksum's worth.
type Handed = Vec<(Vec<u8>, RxChecksum)>;

/// Deliver and collect what was handed on, with its checksum's worth.
fn deliver_all(
    hdr: VnetHdr,
    mut p: Vec<u8>,
    cut: Cut,
    fill: Fill,
) -> (Result<Delivered, RxDrop>, Handed) {
    let mut got = Vec::new();
    let r = deliver(hdr, &mut p, cut, fill, &mut |s, c| {
        got.push((s.to_vec(), c))
    });
    (r, got)
}

fn timestamps() -> Vec<u8> {
    tcp_options(&[
        TcpOpt::Nop,
        TcpOpt::Nop,
        TcpOpt::Timestamp {
            tsval: 0xdead_beef,
            tsecr: 7,
        },
    ])
}

#[test]
fn super_packets_are_cut_exactly_as_the_kernel_cuts_them() {
    let fin_psh = TcpFlags::ACK | TcpFlags::PSH | TcpFlags::FIN;
    let cwr = TcpFlags::ACK | TcpFlags::CWR | TcpFlags::ECE | TcpFlags::PSH;
    let mut cases = 0;
    for v6 in [false, true] {
        for (options, mss) in [
            (Vec::new(), 1460u16),
            (timestamps(), 1448),
            (timestamps(), 536),
        ] {
            for flags in [TcpFlags::ACK, fin_psh, cwr] {
                // Exact multiples, odd final sizes, one octet over, and a
                // packet the IP length limit ends.
                let max = 65535 - 60 - options.len() - if v6 { 0 } else { 20 };
                for len in [1, 2 * mss as usize, 3 * mss as usize + 1, 7777, max] {
                    let flow = Flow {
                        options: options.clone(),
                        flags,
                        ..Flow::new(v6)
                    };
                    let payload = data(len);
                    let (hdr, p) = flow.super_packet(&payload, mss);
                    let (r, got) = cut_up(hdr, p, Cut::Kernel);
                    let want = flow.reference(&payload, mss as usize);
                    let what = format!("v6={v6} mss={mss} flags={flags:?} len={len}");
                    assert_eq!(
                        r,
                        Ok(Delivered {
                            packets: want.len(),
                            super_packet: true,
                            completed_checksum: false
                        }),
                        "{what}"
                    );
                    assert_eq!(got.len(), want.len(), "{what}");
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(g == w, "{what}: segment {i} differs");
                        assert!(TcpView::parse(&g[..]).unwrap().verify_checksum());
                    }
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 2 * 3 * 3 * 5);
}

#[test]
fn ipv6_extension_headers_are_repeated_on_every_segment() {
    let flow = Flow {
        exts: vec![Ext::DestOpts(vec![1, 4, 0, 0, 0, 0])],
        options: timestamps(),
        flags: TcpFlags::ACK | TcpFlags::FIN,
        ..Flow::new(true)
    };
    let payload = data(5000);
    let (hdr, p) = flow.super_packet(&payload, 1000);
    assert_eq!(hdr.csum_start, 48);
    let (r, got) = cut_up(hdr, p, Cut::Kernel);
    assert_eq!(r.map(|d| d.packets), Ok(5));
    assert_eq!(got, flow.reference(&payload, 1000));
}

#[test]
fn the_coalesced_cut_is_the_first_segment_then_the_rest_in_one() {
    for v6 in [false, true] {
        let flow = Flow {
            options: timestamps(),
            flags: TcpFlags::ACK | TcpFlags::CWR | TcpFlags::PSH | TcpFlags::FIN,
            ..Flow::new(v6)
        };
        let payload = data(44 * 1448 + 99);
        let (hdr, p) = flow.super_packet(&payload, 1448);
        let (r, got) = cut_up(hdr, p, Cut::Coalesced);
        assert_eq!(r.map(|d| d.packets), Ok(2));
        let kernel = flow.reference(&payload, 1448);
        assert_eq!(got[0], kernel[0], "v6={v6}");
        let rest = flow.packet(
            TcpFlags::ACK | TcpFlags::PSH | TcpFlags::FIN,
            flow.seq.wrapping_add(1448),
            flow.id0.wrapping_add(1),
            &payload[1448..],
        );
        assert!(got[1] == rest, "v6={v6}");
        // What fits in one segment is one segment.
        let (hdr, p) = flow.super_packet(&payload[..1000], 1448);
        let (r, got) = cut_up(hdr, p, Cut::Coalesced);
        assert_eq!(r.map(|d| d.packets), Ok(1));
        assert_eq!(got, flow.reference(&payload[..1000], 1448));
    }
}

/// `p` with its transport checksum field (at `at`) replaced by the
/// pseudo-header sum, as the kernel hands a `CHECKSUM_PARTIAL` packet.
fn partial(mut p: Vec<u8>, l4: usize, at: usize, proto: u8) -> Vec<u8> {
    let (src, dst) = if p[0] >> 4 == 4 {
        (
            std::net::IpAddr::from(<[u8; 4]>::try_from(&p[12..16]).unwrap()),
            std::net::IpAddr::from(<[u8; 4]>::try_from(&p[16..20]).unwrap()),
        )
    } else {
        (
            std::net::IpAddr::from(<[u8; 16]>::try_from(&p[8..24]).unwrap()),
            std::net::IpAddr::from(<[u8; 16]>::try_from(&p[24..40]).unwrap()),
        )
    };
    let seed = checksum::fold(checksum::pseudo_header(src, dst, proto, p.len() - l4));
    p[l4 + at..l4 + at + 2].copy_from_slice(&seed.to_be_bytes());
    p
}

#[test]
fn partial_checksums_on_single_packets_are_completed() {
    for v6 in [false, true] {
        let flow = Flow::new(v6);
        let l4 = if v6 { 40 } else { 20 };
        // A pure ACK, a SYN and a data segment: TCP.
        for (flags, len) in [
            (TcpFlags::ACK, 0),
            (TcpFlags::SYN, 0),
            (TcpFlags::ACK | TcpFlags::PSH, 333),
        ] {
            let whole = flow.packet(flags, 5, 9, &data(len));
            let hdr = VnetHdr {
                flags: F_NEEDS_CSUM,
                csum_start: l4 as u16,
                csum_offset: 16,
                ..VnetHdr::default()
            };
            let (r, got) = cut_up(
                hdr,
                partial(whole.clone(), l4, 16, protocol::TCP),
                Cut::Kernel,
            );
            assert_eq!(
                r,
                Ok(Delivered {
                    packets: 1,
                    super_packet: false,
                    completed_checksum: true
                })
            );
            assert_eq!(got, vec![whole], "v6={v6} {flags:?}");
        }
        // UDP, including a datagram whose checksum computes to zero,
        // which goes out as 0xffff.
        let (src, dst) = flow.addrs();
        let zero = (0..=u16::MAX)
            .map(|w| w.to_be_bytes())
            .find(|b| {
                let d = Udp {
                    payload: b,
                    ..Default::default()
                }
                .datagram(src, dst);
                u16::from_be_bytes([d[6], d[7]]) == 0xffff
            })
            .unwrap();
        for payload in [&b"hello"[..], &zero[..]] {
            let whole = Udp {
                payload,
                ..Default::default()
            }
            .packet(src, dst);
            let hdr = VnetHdr {
                flags: F_NEEDS_CSUM,
                csum_start: l4 as u16,
                csum_offset: 6,
                ..VnetHdr::default()
            };
            let (r, got) = cut_up(
                hdr,
                partial(whole.clone(), l4, 6, protocol::UDP),
                Cut::Kernel,
            );
            assert!(r.is_ok());
            assert_eq!(got, vec![whole], "v6={v6} {payload:?}");
        }
    }
}

#[test]
fn whole_packets_pass_untouched() {
    let p = Flow::new(false).packet(TcpFlags::ACK, 1, 2, b"abc");
    for flags in [0, F_DATA_VALID] {
        let hdr = VnetHdr {
            flags,
            // Offsets that mean nothing without NEEDS_CSUM.
            csum_start: 9999,
            hdr_len: 3,
            ..VnetHdr::default()
        };
        let (r, got) = cut_up(hdr, p.clone(), Cut::Coalesced);
        assert_eq!(r.map(|d| (d.packets, d.completed_checksum)), Ok((1, false)));
        assert_eq!(got, vec![p.clone()]);
    }
    // Garbage without offload is the stack's to judge.
    let (r, got) = cut_up(VnetHdr::default(), vec![1, 2, 3], Cut::Kernel);
    assert!(r.is_ok());
    assert_eq!(got, vec![vec![1, 2, 3]]);
}

#[test]
fn hostile_headers_are_refused_and_nothing_is_delivered() {
    let flow = Flow::new(false);
    let payload = data(4000);
    let (good, p) = flow.super_packet(&payload, 1000);
    let (hdr6, p6) = Flow::new(true).super_packet(&payload, 1000);
    let syn = Flow {
        flags: TcpFlags::SYN | TcpFlags::ACK,
        ..Flow::new(false)
    }
    .super_packet(&payload, 1000)
    .1;
    let mut short_len = p.clone();
    short_len[2..4].copy_from_slice(&3000u16.to_be_bytes());
    checksum::fill_ipv4_header(&mut short_len[..20]);
    let mut big_tcp = p.clone();
    big_tcp[2..4].fill(0);
    let single = flow.packet(TcpFlags::ACK, 1, 1, b"x");
    let cases: Vec<(&str, VnetHdr, Vec<u8>, RxDrop)> = vec![
        (
            "UDP GSO",
            VnetHdr {
                gso_type: GSO_UDP,
                ..good
            },
            p.clone(),
            RxDrop::GsoType,
        ),
        (
            "unknown GSO type",
            VnetHdr {
                gso_type: 9,
                ..good
            },
            p.clone(),
            RxDrop::GsoType,
        ),
        (
            "TCPV6 on IPv4",
            VnetHdr {
                gso_type: GSO_TCPV6,
                ..good
            },
            p.clone(),
            RxDrop::GsoType,
        ),
        (
            "TCPV4 on IPv6",
            VnetHdr {
                gso_type: GSO_TCPV4,
                ..hdr6
            },
            p6.clone(),
            RxDrop::GsoType,
        ),
        (
            "gso_size 0",
            VnetHdr {
                gso_size: 0,
                ..good
            },
            p.clone(),
            RxDrop::Malformed,
        ),
        (
            "IP length short of the read",
            good,
            short_len,
            RxDrop::Malformed,
        ),
        ("IPv4 BIG TCP", good, big_tcp, RxDrop::Malformed),
        ("truncated", good, p[..30].to_vec(), RxDrop::Malformed),
        (
            "not TCP",
            good,
            Udp::default().packet(flow.addrs().0, flow.addrs().1),
            RxDrop::Malformed,
        ),
        ("SYN", good, syn, RxDrop::Malformed),
        (
            "csum_start off",
            VnetHdr {
                csum_start: 21,
                ..good
            },
            p.clone(),
            RxDrop::ChecksumOffsets,
        ),
        (
            "csum_offset off",
            VnetHdr {
                csum_offset: 6,
                ..good
            },
            p.clone(),
            RxDrop::ChecksumOffsets,
        ),
        (
            "partial checksum past the end",
            VnetHdr {
                flags: F_NEEDS_CSUM,
                csum_start: 20,
                csum_offset: 20,
                ..VnetHdr::default()
            },
            single.clone(),
            RxDrop::ChecksumOffsets,
        ),
        (
            "partial checksum at an odd offset",
            VnetHdr {
                flags: F_NEEDS_CSUM,
                csum_start: 20,
                csum_offset: 1,
                ..VnetHdr::default()
            },
            single.clone(),
            RxDrop::ChecksumOffsets,
        ),
        (
            "partial checksum in the IP header",
            VnetHdr {
                flags: F_NEEDS_CSUM,
                csum_start: 4,
                csum_offset: 0,
                ..VnetHdr::default()
            },
            single.clone(),
            RxDrop::ChecksumOffsets,
        ),
        (
            "partial checksum at u16::MAX",
            VnetHdr {
                flags: F_NEEDS_CSUM,
                csum_start: u16::MAX,
                csum_offset: u16::MAX,
                ..VnetHdr::default()
            },
            single,
            RxDrop::ChecksumOffsets,
        ),
    ];
    for (what, hdr, p, why) in cases {
        for cut in [Cut::Kernel, Cut::Coalesced] {
            let (r, got) = cut_up(hdr, p.clone(), cut);
            assert_eq!(r, Err(why), "{what}");
            assert!(got.is_empty(), "{what}: delivered something");
        }
    }
}

#[test]
fn without_needs_csum_a_super_packet_is_still_checksummed_per_segment() {
    // The kernel marks every super-packet NEEDS_CSUM; one that is not is
    // cut all the same, its checksum field ignored.
    let flow = Flow::new(false);
    let payload = data(3000);
    let (hdr, p) = flow.super_packet(&payload, 1000);
    let hdr = VnetHdr {
        flags: F_DATA_VALID,
        csum_start: 0,
        csum_offset: 0,
        ..hdr
    };
    let (r, got) = cut_up(hdr, p, Cut::Kernel);
    assert_eq!(r.map(|d| d.packets), Ok(3));
    assert_eq!(got, flow.reference(&payload, 1000));
}

#[test]
fn a_tiny_gso_size_cuts_into_many_segments() {
    let flow = Flow {
        flags: TcpFlags::ACK | TcpFlags::FIN,
        ..Flow::new(false)
    };
    let payload = data(301);
    let (hdr, p) = flow.super_packet(&payload, 1);
    let (r, got) = cut_up(hdr, p, Cut::Kernel);
    assert_eq!(r.map(|d| d.packets), Ok(301));
    assert_eq!(got, flow.reference(&payload, 1));
}

#[test]
fn what_the_kernel_vouches_for_is_marked_so() {
    let flow = Flow::new(false);
    let single = flow.packet(TcpFlags::ACK, 1, 2, b"abc");
    let partial_single = partial(single.clone(), 20, 16, protocol::TCP);
    let (gso, super_packet) = flow.super_packet(&data(3000), 1000);
    let needs = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    let valid = VnetHdr {
        flags: F_DATA_VALID,
        ..VnetHdr::default()
    };
    for (what, hdr, p, want) in [
        (
            "no flags",
            VnetHdr::default(),
            single.clone(),
            RxChecksum::Unchecked,
        ),
        ("DATA_VALID", valid, single.clone(), RxChecksum::Vouched),
        ("NEEDS_CSUM", needs, partial_single, RxChecksum::Vouched),
        ("super-packet", gso, super_packet, RxChecksum::Vouched),
    ] {
        for fill in [Fill::Complete, Fill::Partial] {
            let (r, got) = deliver_all(hdr, p.clone(), Cut::Kernel, fill);
            assert!(r.is_ok(), "{what}");
            assert!(got.iter().all(|(_, c)| *c == want), "{what} {fill:?}");
        }
    }
}

#[test]
fn partial_fill_leaves_each_segment_its_own_pseudo_header_sum() {
    for v6 in [false, true] {
        let flow = Flow {
            options: timestamps(),
            flags: TcpFlags::ACK | TcpFlags::FIN,
            ..Flow::new(v6)
        };
        let payload = data(4321);
        let (hdr, p) = flow.super_packet(&payload, 1000);
        for cut in [Cut::Kernel, Cut::Coalesced] {
            let (r, got) = deliver_all(hdr, p.clone(), cut, Fill::Partial);
            let (_, complete) = cut_up(hdr, p.clone(), cut);
            assert_eq!(r.map(|d| d.packets), Ok(complete.len()));
            for ((seg, _), whole) in got.iter().zip(&complete) {
                let view = TcpView::parse(&seg[..]).unwrap();
                let seed = checksum::fold(view.pseudo_header_sum());
                assert_eq!(view.checksum(), seed, "v6={v6} {cut:?}");
                // Apart from the checksum, the same segment.
                let mut filled = seg.clone();
                TcpView::parse(&mut filled[..]).unwrap().fill_checksum();
                assert_eq!(&filled, whole, "v6={v6} {cut:?}");
            }
        }
        // A single packet's partial checksum is left as the kernel wrote it.
        let l4 = if v6 { 40 } else { 20 };
        let p = partial(
            flow.packet(TcpFlags::ACK, 7, 7, b"xyz"),
            l4,
            16,
            protocol::TCP,
        );
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: l4 as u16,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let (r, got) = deliver_all(hdr, p.clone(), Cut::Kernel, Fill::Partial);
        assert_eq!(r.map(|d| d.completed_checksum), Ok(false));
        assert_eq!(got, vec![(p, RxChecksum::Vouched)]);
        // Bad offsets are refused whatever the fill.
        let bad = VnetHdr {
            csum_offset: 1,
            ..hdr
        };
        let (r, got) = deliver_all(bad, got[0].0.clone(), Cut::Kernel, Fill::Partial);
        assert_eq!(r, Err(RxDrop::ChecksumOffsets));
        assert!(got.is_empty());
    }
}
