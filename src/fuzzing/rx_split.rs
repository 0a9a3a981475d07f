//! Fuzz target `rx_split`: the receive offload's splitter
//! ([`deliver`]) on hostile virtio-net headers and packets.
//!
//! Input: one mode octet, a 10-octet `struct virtio_net_hdr` as the
//! kernel writes it, then the packet. Mode bit 0 makes the packet's IP
//! length and the header's checksum offsets agree with the packet first
//! (so that mutations reach the cutting rather than stop at the checks);
//! bit 1 picks [`Cut::Kernel`] over [`Cut::Coalesced`]; bit 2
//! [`Fill::Partial`] over [`Fill::Complete`].
//!
//! Properties: no panic; a refusal delivers nothing; a packet without GSO
//! comes out once, the same length, changed at most in its checksum
//! field, and with `NEEDS_CSUM` its sum from `csum_start` on verifies
//! against the sum the field held; a
//! super-packet comes out as TCP segments that each parse, carry the
//! length they have, pass both checksums, repeat the headers but for
//! lengths, identification, SEG.SEQ, flags and checksums, start where the
//! previous one ended, carry FIN and PSH only last and CWR only first,
//! and whose payloads put together are the payload that went in, cut at
//! `gso_size` (kernel) or after the first `gso_size` octets (coalesced).
//! With [`Fill::Partial`] a segment's checksum is its own pseudo-header
//! sum instead, and a partial checksum on a single packet is left as it
//! was. Every packet is vouched for exactly when the header says the
//! kernel built or checked it, or it comes from a super-packet.
//! The receiver scribbles over every packet it is handed, as the stack
//! may (`Stack::handle_packet_mut`): later segments must not notice.

use std::net::SocketAddr;

use crate::device::gso::{
    VnetHdr, F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6,
};
use crate::device::split::{deliver, Cut, Fill, RxChecksum};
use crate::wire::build::{tcp_options, Ext, Ipv4, Ipv6, Tcp, TcpOpt, Udp};
use crate::wire::{checksum, protocol, TcpFlags, TcpView};

/// Octets before the packet: the mode and the virtio-net header.
const PREFIX: usize = 1 + crate::device::gso::VNET_HDR_LEN;

/// Run one input.
pub fn run(data: &[u8]) {
    if data.len() < PREFIX {
        return;
    }
    let mode = data[0];
    let mut hdr = VnetHdr::from_bytes(data[1..PREFIX].try_into().expect("10 octets"));
    let mut packet = data[PREFIX..].to_vec();
    if mode & 1 != 0 {
        make_consistent(&mut hdr, &mut packet);
    }
    let cut = if mode & 2 != 0 {
        Cut::Kernel
    } else {
        Cut::Coalesced
    };
    let fill = if mode & 4 != 0 {
        Fill::Partial
    } else {
        Fill::Complete
    };
    let original = packet.clone();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut worth = Vec::new();
    let result = deliver(hdr, &mut packet, cut, fill, &mut |s, c| {
        got.push(s.to_vec());
        worth.push(c);
        // The receiver may change what it is handed (the stack moves
        // SEG.ACK in place): the segments after it must not notice.
        s.fill(0xa5);
    });
    let Ok(delivered) = result else {
        assert!(got.is_empty(), "{result:?} but delivered {}", got.len());
        return;
    };
    assert_eq!(delivered.packets, got.len());
    let vouched = hdr.gso_type != GSO_NONE || hdr.flags & (F_NEEDS_CSUM | F_DATA_VALID) != 0;
    let want = if vouched {
        RxChecksum::Vouched
    } else {
        RxChecksum::Unchecked
    };
    assert!(worth.iter().all(|&c| c == want), "{worth:?}, not {want:?}");
    if hdr.gso_type == GSO_NONE {
        check_single(hdr, fill, &original, &got);
    } else {
        check_segments(hdr, cut, fill, &original, &got);
    }
}

/// Set the IP length to the packet's and point the checksum offsets at
/// the TCP checksum, where the packet is TCP enough to find it.
fn make_consistent(hdr: &mut VnetHdr, p: &mut [u8]) {
    match p.first().map(|v| v >> 4) {
        Some(4) if p.len() >= 20 && p.len() <= 0xffff => {
            let len = p.len() as u16;
            p[2..4].copy_from_slice(&len.to_be_bytes());
            checksum::fill_ipv4_header(&mut p[..20]);
        }
        Some(6) if p.len() >= 40 && p.len() - 40 <= 0xffff => {
            let len = (p.len() - 40) as u16;
            p[4..6].copy_from_slice(&len.to_be_bytes());
        }
        _ => return,
    }
    if let Ok(v) = TcpView::parse(&*p) {
        hdr.csum_start = v.ip_header_len() as u16;
        hdr.csum_offset = 16;
    }
}

fn check_single(hdr: VnetHdr, fill: Fill, original: &[u8], got: &[Vec<u8>]) {
    assert_eq!(got.len(), 1);
    let out = &got[0];
    assert_eq!(out.len(), original.len());
    if hdr.flags & F_NEEDS_CSUM == 0 || fill == Fill::Partial {
        assert!(*out == original, "a whole packet was changed");
        return;
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    for (i, (a, b)) in out.iter().zip(original).enumerate() {
        assert!(a == b || (at..at + 2).contains(&i), "octet {i} changed");
    }
    // The field held a sum to start from (the pseudo-header's): with it,
    // the completed bytes verify.
    let seed = u32::from(u16::from_be_bytes([original[at], original[at + 1]]));
    assert_eq!(checksum::fold(checksum::sum(seed, &out[start..])), 0xffff);
}

fn check_segments(hdr: VnetHdr, cut: Cut, fill: Fill, original: &[u8], got: &[Vec<u8>]) {
    let v = TcpView::parse(original).expect("a cut super-packet parses");
    let (l4, hlen) = (v.ip_header_len(), v.ip_header_len() + v.header_len());
    let payload = &original[hlen..];
    let mss = usize::from(hdr.gso_size);
    let flags0 = v.flags();
    let mut off = 0;
    for (i, seg) in got.iter().enumerate() {
        let last = i + 1 == got.len();
        let s = TcpView::parse(&seg[..]).expect("a segment parses");
        assert_eq!(s.packet_len(), seg.len(), "segment {i}: IP length");
        assert_eq!(s.ip_header_len(), l4);
        assert_eq!(s.header_len(), v.header_len());
        match fill {
            Fill::Complete => assert!(s.verify_checksum(), "segment {i}: TCP checksum"),
            Fill::Partial => assert_eq!(
                s.checksum(),
                checksum::fold(s.pseudo_header_sum()),
                "segment {i}: partial TCP checksum"
            ),
        }
        if !s.is_ipv6() {
            assert_eq!(checksum::fold(checksum::sum(0, &seg[..l4])), 0xffff);
        }
        // The headers but lengths, ID and header checksum (IP), and
        // SEG.SEQ, flags and checksum (TCP).
        let same = |r: std::ops::Range<usize>| seg[r.clone()] == original[r];
        if s.is_ipv6() {
            assert!(same(0..4) && same(6..l4), "segment {i}: IPv6 header");
        } else {
            assert!(
                same(0..2) && same(6..10) && same(12..l4),
                "segment {i}: IPv4 header"
            );
        }
        let t = l4;
        assert!(
            same(t..t + 4) && same(t + 8..t + 13) && same(t + 14..t + 16) && same(t + 18..hlen),
            "segment {i}: TCP header"
        );
        assert_eq!(s.seq(), v.seq().wrapping_add(off as u32), "segment {i}");
        let mut want = flags0;
        if !last {
            want = want & !(TcpFlags::FIN | TcpFlags::PSH);
        }
        if i > 0 {
            want = want & !TcpFlags::CWR;
        }
        assert_eq!(s.flags(), want, "segment {i}");
        let p = s.payload();
        assert_eq!(p, &payload[off..off + p.len()], "segment {i}: payload");
        let size_ok = match (cut, i) {
            (_, 0) | (Cut::Kernel, _) => p.len() == mss.min(payload.len() - off),
            (Cut::Coalesced, _) => last,
        };
        assert!(size_ok, "segment {i} of {}: {} octets", got.len(), p.len());
        off += p.len();
    }
    assert_eq!(off, payload.len(), "payload lost or added");
}

/// Seeds: super-packets as the kernel writes them (both families, an
/// extension header, timestamps, FIN, CWR), partial checksums on single
/// packets, and a few refusals, each with both cuts and complete
/// checksums, and coalesced with partial ones.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let v4: (SocketAddr, SocketAddr) = (
        "10.7.0.1:40000".parse().unwrap(),
        "10.7.0.2:9".parse().unwrap(),
    );
    let v6: (SocketAddr, SocketAddr) = (
        "[fd00:7::1]:40000".parse().unwrap(),
        "[fd00:7::2]:9".parse().unwrap(),
    );
    let ts = tcp_options(&[
        TcpOpt::Nop,
        TcpOpt::Nop,
        TcpOpt::Timestamp { tsval: 1, tsecr: 2 },
    ]);
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
    let tcp = |(src, dst): (SocketAddr, SocketAddr), flags, len: usize, exts: Vec<Ext>| {
        let seg = Tcp {
            seq: 0xffff_fff0,
            ack: 1,
            flags,
            window: 512,
            options: &ts,
            payload: &payload[..len],
            ..Default::default()
        }
        .segment(src, dst);
        if src.is_ipv4() {
            Ipv4 {
                id: 0xffff,
                dont_fragment: true,
                ..Default::default()
            }
            .packet(src.ip(), dst.ip(), protocol::TCP, &seg)
        } else {
            Ipv6 {
                exts,
                ..Default::default()
            }
            .packet(src.ip(), dst.ip(), protocol::TCP, &seg)
        }
    };
    // The kernel's form: the pseudo-header sum in the checksum field.
    let partial = |mut p: Vec<u8>, proto_at: usize| {
        let v = TcpView::parse(&p[..]).ok();
        let l4 = v
            .as_ref()
            .map_or(if p[0] >> 4 == 4 { 20 } else { 40 }, |v| v.ip_header_len());
        let seed = match v {
            Some(v) => checksum::fold(v.pseudo_header_sum()),
            None => 0x1234,
        };
        p[l4 + proto_at..l4 + proto_at + 2].copy_from_slice(&seed.to_be_bytes());
        (l4 as u16, p)
    };
    let gso = |p: Vec<u8>, v6: bool, ecn: bool, mss: u16| {
        let (l4, p) = partial(p, 16);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 } | if ecn { GSO_ECN } else { 0 },
            hdr_len: 66,
            gso_size: mss,
            csum_start: l4,
            csum_offset: 16,
        };
        (hdr, p)
    };
    let ack = TcpFlags::ACK;
    let fin = TcpFlags::ACK | TcpFlags::PSH | TcpFlags::FIN;
    let cwr = TcpFlags::ACK | TcpFlags::CWR | TcpFlags::ECE;
    let dest_opts = vec![Ext::DestOpts(vec![1, 4, 0, 0, 0, 0])];
    let udp = Udp {
        payload: b"datagram",
        ..Default::default()
    }
    .packet(v4.0, v4.1);
    let (udp_l4, udp_partial) = partial(udp, 6);
    let single = |l4, off| VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: l4,
        csum_offset: off,
        ..VnetHdr::default()
    };
    let mut inputs: Vec<(&str, VnetHdr, Vec<u8>)> = vec![
        (
            "v4-gso",
            gso(tcp(v4, ack, 3000, vec![]), false, false, 1448),
        ),
        (
            "v4-gso-fin-odd",
            gso(tcp(v4, fin, 2999, vec![]), false, false, 1000),
        ),
        (
            "v4-gso-ecn-cwr",
            gso(tcp(v4, cwr, 2000, vec![]), false, true, 500),
        ),
        ("v6-gso", gso(tcp(v6, fin, 3000, vec![]), true, false, 1440)),
        (
            "v6-gso-ext",
            gso(tcp(v6, ack, 1777, dest_opts), true, false, 600),
        ),
        (
            "v4-gso-tiny-mss",
            gso(tcp(v4, fin, 64, vec![]), false, false, 1),
        ),
    ]
    .into_iter()
    .map(|(name, (hdr, p))| (name, hdr, p))
    .collect();
    let (l4, ack_partial) = partial(tcp(v6, ack, 0, vec![]), 16);
    inputs.push(("v6-ack-partial", single(l4, 16), ack_partial));
    inputs.push(("v4-udp-partial", single(udp_l4, 6), udp_partial));
    inputs.push(("v4-whole", VnetHdr::default(), tcp(v4, ack, 100, vec![])));
    let (hdr, p) = gso(tcp(v4, ack, 3000, vec![]), false, false, 1448);
    inputs.push((
        "v4-gso-as-v6",
        VnetHdr {
            gso_type: GSO_TCPV6,
            ..hdr
        },
        p,
    ));
    let mut out = Vec::new();
    for (name, hdr, p) in inputs {
        for (mode, suffix) in [(0u8, "coalesced"), (2, "kernel"), (4, "coalesced-partial")] {
            let mut bytes = vec![mode];
            bytes.extend_from_slice(&hdr.to_bytes());
            bytes.extend_from_slice(&p);
            out.push((format!("{name}-{suffix}"), bytes));
        }
    }
    out
}
