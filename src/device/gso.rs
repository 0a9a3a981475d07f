//! TCP segmentation offload towards the kernel, the way vhost-net,
//! wireguard-go and gVisor feed a TUN device: consecutive segments of one
//! flow, as smoltcp emits them, go to the kernel as one large packet with
//! a virtio-net header saying "TCP, cut into `gso_size` segments, checksum
//! still to be completed".
//!
//! Writing a packet into a TUN device makes the writer run the kernel's
//! whole receive path for it (IP, TCP, waking the reader): at MTU 1500
//! that is most of the cost of a bulk transfer, per packet. A 64 KiB
//! super-packet pays it once for ~44 segments; the kernel treats it like
//! a packet its own GRO merged, and cuts it into the original segments if
//! it forwards it.
//!
//! Pure and I/O-free: [`coalesce`] turns a batch of IP packets into
//! `(VnetHdr, packet)` pairs; [`Tun`](super::Tun) writes them. Only runs
//! that cut back into exactly the packets they came from are merged (the
//! unit tests cut them back and compare bytes).

/// Size of `struct virtio_net_hdr`, which precedes every packet on a TUN
/// opened with `IFF_VNET_HDR`.
pub(crate) const VNET_HDR_LEN: usize = 10;

use std::num::NonZeroU16;
use std::ops::Range;

use crate::wire::checksum::{self, fold};
use crate::wire::{protocol, TcpFlags, TcpView};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start +
/// csum_offset` holds only the pseudo-header sum (`CHECKSUM_PARTIAL`).
pub(crate) const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the kernel checked the checksum
/// (`CHECKSUM_UNNECESSARY`); the packet's checksum is whole.
pub(crate) const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub(crate) const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub(crate) const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP` (UFO, never asked for).
#[cfg(test)]
pub(crate) const GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub(crate) const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN`, or'ed into a TCP type: the first segment
/// carries CWR (`SKB_GSO_TCP_ECN`).
pub(crate) const GSO_ECN: u8 = 0x80;
/// Offset of the checksum field in a TCP header.
const TCP_CSUM_AT: usize = 16;
/// Offset of the flags octet in a TCP header.
const TCP_FLAGS_AT: usize = 13;

/// A `struct virtio_net_hdr` (in host byte order, which is what a TUN
/// device without `TUNSETVNETLE`/`BE` expects).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM` or 0.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the IP and TCP headers.
    pub hdr_len: u16,
    /// Payload octets per segment.
    pub gso_size: u16,
    /// Where checksumming starts (the TCP header).
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum goes.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// The header as the kernel reads it.
    pub(crate) fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }

    /// The header as the kernel wrote it in front of a packet it sent us.
    pub(crate) fn from_bytes(b: [u8; VNET_HDR_LEN]) -> VnetHdr {
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }
}

/// What a TCP segment looks like, for merging.
#[derive(Clone, Copy, Debug)]
struct Seg {
    v6: bool,
    /// IP header length.
    ip_len: usize,
    /// IP + TCP header length.
    hdr_len: usize,
    seq: u32,
    flags: TcpFlags,
    payload: usize,
}

/// Read a packet smoltcp emitted, if it is a TCP segment that may take
/// part in a merge: IPv4 without options, or IPv6 with TCP as its first
/// header; ACK, optionally PSH, and nothing else.
fn parse(p: &[u8]) -> Option<Seg> {
    let v = TcpView::parse(p).ok()?;
    // IPv4: DF, an atomic datagram, whose ID no one reads (RFC 6864): the
    // kernel numbers the segments it cuts anew. The view has refused
    // fragments already.
    let ip_len = if v.is_ipv6() { 40 } else { 20 };
    if v.ip_header_len() != ip_len
        || !v.dont_fragment()
        || v.packet_len() != p.len()
        || v.flags() & !TcpFlags::PSH != TcpFlags::ACK
    {
        return None;
    }
    Some(Seg {
        v6: v.is_ipv6(),
        ip_len,
        hdr_len: ip_len + v.header_len(),
        seq: v.seq(),
        flags: v.flags(),
        payload: v.payload().len(),
    })
}

/// Whether `b` continues the run whose first segment is `f` and last `l`.
fn continues(f: (&[u8], Seg), l: Seg, b: (&[u8], Seg), merged: usize) -> bool {
    let ((fp, fs), ls, (bp, bs)) = (f, l, b);
    // Same family and header length first: the comparisons below index
    // both packets with the first one's offsets.
    if bs.v6 != fs.v6 || bs.hdr_len != fs.hdr_len {
        return false;
    }
    // Same IP addressing and fields that are copied to every segment;
    // same ports, ACK, window, options (the whole TCP header but the
    // sequence number, flags and checksum).
    let ip_same = if fs.v6 {
        fp[..4] == bp[..4] && fp[6..40] == bp[6..40]
    } else {
        fp[1] == bp[1] && fp[6..10] == bp[6..10] && fp[12..20] == bp[12..20]
    };
    let t = fs.ip_len;
    let tcp_same = fp[t..t + 4] == bp[t..t + 4]
        && fp[t + 8..t + 13] == bp[t + 8..t + 13]
        && fp[t + 14..t + 16] == bp[t + 14..t + 16]
        && fp[t + 18..fs.hdr_len] == bp[t + 18..bs.hdr_len];
    ip_same
        && tcp_same
        // Contiguous; every segment but the last full-sized; PSH (the end
        // of what the application wrote) only on the last.
        && bs.seq == ls.seq.wrapping_add(ls.payload as u32)
        && ls.payload == fs.payload
        && !ls.flags.psh()
        && (1..=fs.payload).contains(&bs.payload)
        && merged + bs.payload <= 0xffff - fs.hdr_len
}

/// The longest IP and TCP headers of a merged run: IPv6 and a TCP
/// header with 40 octets of options.
const HEAD_MAX: usize = 40 + 60;

/// One write to a TUN with `IFF_VNET_HDR`: a virtio-net header, then a
/// packet of the batch given to [`coalesce`] as it is, or the
/// super-packet of a run of its segments: new headers, then each
/// segment's payload where it lies in the batch, so that the payload is
/// never copied on its way to the kernel (the write gathers it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    /// The header to write first.
    pub hdr: VnetHdr,
    /// The batch's packets this frame carries, in order.
    pub packets: Range<usize>,
    /// A super-packet's IP and TCP headers (`head_len` of them); none
    /// for a packet written as it is.
    head: [u8; HEAD_MAX],
    head_len: usize,
}

impl Frame {
    /// What follows the header, in order, borrowed from `batch` (the
    /// batch [`coalesce`] was given) and from the frame.
    pub(crate) fn parts<'a>(&'a self, batch: &'a [Vec<u8>]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let (head, payloads): (&[u8], &[Vec<u8>]) = if self.head_len == 0 {
            (&batch[self.packets.start], &[])
        } else {
            (&self.head[..self.head_len], &batch[self.packets.clone()])
        };
        let skip = self.head_len;
        std::iter::once(head).chain(payloads.iter().map(move |p| &p[skip..]))
    }

    /// The packet's length in octets (after the virtio-net header).
    pub(crate) fn len(&self, batch: &[Vec<u8>]) -> usize {
        self.parts(batch).map(<[u8]>::len).sum()
    }

    /// The packet in one piece (the tests compare it; the TUN writes
    /// [`Frame::parts`]).
    #[cfg(test)]
    pub(crate) fn to_packet(&self, batch: &[Vec<u8>]) -> Vec<u8> {
        self.parts(batch).flatten().copied().collect()
    }
}

/// The frame of a run of at least two segments, `run` in `batch`.
fn merge(batch: &[Vec<u8>], run: Range<usize>, fs: Seg, ls: Seg, payload: usize) -> Frame {
    let first = &batch[run.start];
    let mut head = [0u8; HEAD_MAX];
    let h = &mut head[..fs.hdr_len];
    h.copy_from_slice(&first[..fs.hdr_len]);
    let (ip, tcp_len) = (fs.ip_len, fs.hdr_len - fs.ip_len + payload);
    // PSH as the last segment had it: the kernel keeps it for the last.
    h[ip + TCP_FLAGS_AT] = ((fs.flags & !TcpFlags::PSH) | (ls.flags & TcpFlags::PSH)).bits();
    if fs.v6 {
        h[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
    } else {
        let total = (ip + tcp_len) as u16;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        checksum::fill_ipv4_header(&mut h[..20]);
    }
    let view = TcpView::parse(&first[..]).expect("a run's first packet is a TCP segment");
    // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, and the
    // kernel sums the TCP header and payload over it.
    let pseudo = fold(checksum::pseudo_header(
        view.src_addr(),
        view.dst_addr(),
        protocol::TCP,
        tcp_len,
    ));
    h[ip + TCP_CSUM_AT..ip + TCP_CSUM_AT + 2].copy_from_slice(&pseudo.to_be_bytes());
    Frame {
        hdr: VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if fs.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: fs.hdr_len as u16,
            gso_size: fs.payload as u16,
            csum_start: ip as u16,
            csum_offset: TCP_CSUM_AT as u16,
        },
        packets: run,
        head,
        head_len: fs.hdr_len,
    }
}

/// Turn a batch of outgoing IP packets, in order, into what to write to a
/// TUN with `IFF_VNET_HDR`: runs of consecutive segments of one TCP flow
/// merged into super-packets, every other TCP segment with its checksum
/// left to the kernel (the field set to the pseudo-header sum, in
/// place, and `NEEDS_CSUM`), everything else as it was with an empty
/// header. Packets keep their order; every packet is in exactly one
/// frame.
///
/// So the TCP checksums the stack computed, if it did, are never used:
/// a kernel that delivers the packet locally takes `CHECKSUM_PARTIAL`
/// as good without summing anything, and one that forwards it completes
/// the checksum (or has the NIC do it).
pub(crate) fn coalesce(batch: &mut [Vec<u8>]) -> Vec<Frame> {
    let mut frames = runs(batch);
    for f in &mut frames {
        if f.head_len == 0 {
            if let Some(hdr) = leave_checksum(&mut batch[f.packets.start]) {
                f.hdr = hdr;
            }
        }
    }
    frames
}

/// The header for a TCP segment the stack handed out with a segment
/// size ([`Transmit::gso_size`](crate::Transmit::gso_size)), larger than
/// the MTU: its checksum field set to the pseudo-header sum over its
/// whole length, in place, as the kernel's `tcp_gso_segment` expects
/// (it adjusts that sum to each segment's length), and a header asking
/// the kernel to cut it at `gso_size`. `None` (and `p` unchanged) if
/// `p` is not such a segment: the stack only sets a size on one, so
/// that would be a bug, which the caller answers by sending the packet
/// as it is.
pub(crate) fn segmentation_header(p: &mut [u8], gso_size: NonZeroU16) -> Option<VnetHdr> {
    let view = TcpView::parse(&*p).ok()?;
    if view.flags() & (TcpFlags::SYN | TcpFlags::RST) != TcpFlags::NONE
        || view.payload().len() <= usize::from(gso_size.get())
    {
        return None;
    }
    let v6 = view.is_ipv6();
    let hdr = leave_checksum(p)?;
    Some(VnetHdr {
        gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
        gso_size: gso_size.get(),
        ..hdr
    })
}

/// What a NIC does with a packet the stack sent (`t`), when the stack
/// leaves TCP checksums to it (`checksum_offload`) and maybe TCP
/// segmentation: every segment handed to `each` as the wire carries it,
/// with its checksum complete; a segment left to the device to cut
/// ([`Transmit::gso_size`](crate::Transmit::gso_size)) cut as Linux's
/// `tcp_gso_segment` cuts (`split::deliver` does exactly that, for the
/// receive path). The in-memory link uses it, so stacks with the
/// offloads on can be tested there.
pub(crate) fn cut_like_a_nic(
    t: crate::Transmit,
    checksum_offload: bool,
    each: &mut dyn FnMut(Vec<u8>),
) {
    use super::split::{deliver, Cut, Fill};
    let mut p = t.packet;
    let hdr = match t.gso_size {
        Some(size) => segmentation_header(&mut p, size),
        None if checksum_offload => leave_checksum(&mut p),
        None => None,
    };
    let Some(hdr) = hdr else {
        each(p);
        return;
    };
    let cut = deliver(hdr, &mut p, Cut::Kernel, Fill::Complete, &mut |seg, _| {
        each(seg.to_vec())
    });
    // The headers are ours: only a bug makes the cut refuse them.
    debug_assert!(cut.is_ok(), "{cut:?}");
}

/// If `p` is a TCP segment, put its pseudo-header sum in its checksum
/// field and return the header that asks the kernel to complete it.
fn leave_checksum(p: &mut [u8]) -> Option<VnetHdr> {
    let len = p.len();
    let view = TcpView::parse(&*p).ok()?;
    if view.packet_len() != len {
        return None;
    }
    let tcp = view.ip_header_len();
    let seed = fold(view.pseudo_header_sum());
    let hdr_len = (tcp + view.header_len()) as u16;
    p[tcp + TCP_CSUM_AT..tcp + TCP_CSUM_AT + 2].copy_from_slice(&seed.to_be_bytes());
    Some(VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_NONE,
        hdr_len,
        gso_size: 0,
        csum_start: tcp as u16,
        csum_offset: TCP_CSUM_AT as u16,
    })
}

/// [`coalesce`]'s merging: the frames, single packets with an empty
/// header.
fn runs(batch: &[Vec<u8>]) -> Vec<Frame> {
    let plain = |i: usize| Frame {
        hdr: VnetHdr {
            gso_type: GSO_NONE,
            ..VnetHdr::default()
        },
        packets: i..i + 1,
        head: [0; HEAD_MAX],
        head_len: 0,
    };
    let mut out = Vec::with_capacity(batch.len());
    // The run so far: its first index and segment, its last segment, its
    // payload octets.
    let mut run: Option<(usize, Seg, Seg, usize)> = None;
    let flush = |run: Option<(usize, Seg, Seg, usize)>, end: usize, out: &mut Vec<Frame>| match run
    {
        Some((start, _, _, _)) if end - start == 1 => out.push(plain(start)),
        Some((start, fs, ls, payload)) => out.push(merge(batch, start..end, fs, ls, payload)),
        None => {}
    };
    for (i, p) in batch.iter().enumerate() {
        let Some(seg) = parse(p) else {
            flush(run.take(), i, &mut out);
            out.push(plain(i));
            continue;
        };
        run = match run {
            Some((start, fs, ls, merged))
                if continues((&batch[start], fs), ls, (p, seg), merged) =>
            {
                Some((start, fs, seg, merged + seg.payload))
            }
            other => {
                flush(other, i, &mut out);
                Some((i, seg, seg, seg.payload))
            }
        };
    }
    flush(run, batch.len(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build::{Ipv4, Ipv6, Tcp, Udp};
    use crate::wire::checksum::sum;
    use crate::wire::protocol;

    const MSS: usize = 1460;

    fn addrs(v6: bool) -> (std::net::SocketAddr, std::net::SocketAddr) {
        if v6 {
            (
                "[fd00::2]:80".parse().unwrap(),
                "[fd00::1]:40000".parse().unwrap(),
            )
        } else {
            (
                "10.7.0.2:80".parse().unwrap(),
                "10.7.0.1:40000".parse().unwrap(),
            )
        }
    }

    /// A segment as smoltcp would emit it (IPv4 with DF), checksums
    /// filled in.
    fn seg(v6: bool, id: u16, seq: u32, psh: bool, window: u16, payload: &[u8]) -> Vec<u8> {
        let (src, dst) = addrs(v6);
        let flags = if psh {
            TcpFlags::ACK | TcpFlags::PSH
        } else {
            TcpFlags::ACK
        };
        let tcp = Tcp {
            seq,
            ack: 777,
            flags,
            window,
            payload,
            ..Default::default()
        }
        .segment(src, dst);
        if v6 {
            Ipv6::default().packet(src.ip(), dst.ip(), protocol::TCP, &tcp)
        } else {
            Ipv4 {
                id,
                dont_fragment: true,
                ..Default::default()
            }
            .packet(src.ip(), dst.ip(), protocol::TCP, &tcp)
        }
    }

    fn set_ip_id(p: &mut [u8], id: u16) {
        p[4..6].copy_from_slice(&id.to_be_bytes());
        checksum::fill_ipv4_header(&mut p[..20]);
    }

    /// Packets with their IPv4 IDs cleared: smoltcp sends 0 in every
    /// (DF) packet, the kernel numbers the segments it cuts.
    fn without_ids(mut ps: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        for p in &mut ps {
            if p.len() >= 20 && p[0] >> 4 == 4 {
                set_ip_id(p, 0);
            }
        }
        ps
    }

    fn data(n: usize, salt: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect()
    }

    /// What the kernel does with a super-packet it forwards: cut it back
    /// into segments (IPv4 ids counting up, PSH only on the last, each
    /// checksum complete).
    fn segment(hdr: VnetHdr, p: &[u8]) -> Vec<Vec<u8>> {
        if hdr.gso_type == GSO_NONE {
            let mut p = p.to_vec();
            if hdr.flags & F_NEEDS_CSUM != 0 {
                // Complete it as skb_checksum_help does, from csum_start.
                let (start, at) = (hdr.csum_start as usize, hdr.csum_offset as usize);
                let c = !fold(sum(0, &p[start..]));
                p[start + at..start + at + 2].copy_from_slice(&c.to_be_bytes());
            }
            return vec![p];
        }
        let h = hdr.hdr_len as usize;
        let v6 = hdr.gso_type == GSO_TCPV6;
        let id0 = u16::from_be_bytes([p[4], p[5]]);
        let seq0 = TcpView::parse(p).unwrap().seq();
        let chunks: Vec<&[u8]> = p[h..].chunks(hdr.gso_size as usize).collect();
        let n = chunks.len();
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut s = p[..h].to_vec();
                s.extend_from_slice(c);
                if v6 {
                    let plen = (s.len() - 40) as u16;
                    s[4..6].copy_from_slice(&plen.to_be_bytes());
                } else {
                    let total = s.len() as u16;
                    s[2..4].copy_from_slice(&total.to_be_bytes());
                    set_ip_id(&mut s, id0.wrapping_add(i as u16));
                }
                let mut v = TcpView::parse(&mut s[..]).unwrap();
                let off = (i * hdr.gso_size as usize) as u32;
                v.set_seq(seq0.wrapping_add(off));
                if i + 1 < n {
                    v.set_flags(v.flags() & !TcpFlags::PSH);
                }
                v.fill_checksum();
                s
            })
            .collect()
    }

    /// The frames of `batch`, each as its header and packet in one piece.
    fn frames(batch: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut batch = batch.to_vec();
        coalesce(&mut batch)
            .iter()
            .map(|f| (f.hdr, f.to_packet(&batch)))
            .collect()
    }

    fn cut_back(out: &[(VnetHdr, Vec<u8>)]) -> Vec<Vec<u8>> {
        without_ids(out.iter().flat_map(|(h, p)| segment(*h, p)).collect())
    }

    #[test]
    fn a_bulk_run_becomes_one_packet_that_cuts_back_into_the_same_bytes() {
        for v6 in [false, true] {
            let mut seq = 1000u32;
            let batch: Vec<Vec<u8>> = (0..30)
                .map(|i| {
                    let len = if i == 29 { 700 } else { MSS };
                    let p = seg(v6, 50 + i as u16, seq, i == 29, 65535, &data(len, i as u8));
                    seq += len as u32;
                    p
                })
                .collect();
            let out = frames(&batch);
            assert_eq!(out.len(), 1, "v6={v6}");
            let (h, p) = &out[0];
            assert_eq!(h.gso_size as usize, MSS);
            assert_eq!(h.gso_type, if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
            assert_eq!(h.flags, F_NEEDS_CSUM);
            assert_eq!(p.len(), h.hdr_len as usize + 29 * MSS + 700);
            assert_eq!(cut_back(&out), without_ids(batch), "v6={v6}");
        }
    }

    #[test]
    fn a_segment_left_to_the_device_goes_as_it_is_with_its_gso_size() {
        let size = NonZeroU16::new(MSS as u16).unwrap();
        for v6 in [false, true] {
            let payload = data(10 * MSS + 333, 9);
            let whole = seg(v6, 0, 5000, true, 1000, &payload);
            let mut p = whole.clone();
            let h = segmentation_header(&mut p, size).unwrap();
            let ip = if v6 { 40 } else { 20 };
            let gso = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
            assert_eq!(
                (h.gso_type, h.gso_size as usize, h.flags),
                (gso, MSS, F_NEEDS_CSUM)
            );
            assert_eq!(
                (h.hdr_len as usize, h.csum_start as usize, h.csum_offset),
                (ip + 20, ip, 16)
            );
            // Only the checksum field changed, to the pseudo-header sum
            // over the whole length: completed, it is the packet's own.
            let at = ip + TCP_CSUM_AT;
            assert_eq!((&p[..at], &p[at + 2..]), (&whole[..at], &whole[at + 2..]));
            let c = !fold(sum(0, &p[ip..]));
            assert_eq!(c.to_be_bytes(), [whole[at], whole[at + 1]], "v6={v6}");
            // Cut as the kernel cuts it: the segments a stack without the
            // offload sends, PSH only on the last.
            let expect: Vec<Vec<u8>> = payload
                .chunks(MSS)
                .enumerate()
                .map(|(i, c)| seg(v6, 0, 5000 + (i * MSS) as u32, i == 10, 1000, c))
                .collect();
            assert_eq!(without_ids(segment(h, &p)), without_ids(expect.clone()));
            // The in-memory link's NIC cuts the same.
            let mut cut = Vec::new();
            let t = crate::Transmit {
                packet: whole,
                gso_size: Some(size),
            };
            cut_like_a_nic(t, true, &mut |s| cut.push(s));
            assert_eq!(without_ids(cut), without_ids(expect), "v6={v6}");
        }
        // Not more than one segment, or a SYN: nothing to cut.
        let mut one = seg(false, 0, 1, false, 1000, &data(MSS, 1));
        assert_eq!(segmentation_header(&mut one, size), None);
        let mut syn = seg(false, 0, 1, false, 1000, &data(3 * MSS, 1));
        let mut v = TcpView::parse(&mut syn[..]).unwrap();
        v.set_flags(TcpFlags::SYN);
        assert_eq!(segmentation_header(&mut syn, size), None);
    }

    #[test]
    fn the_partial_checksum_completes_to_the_full_one() {
        let batch: Vec<Vec<u8>> = (0..3)
            .map(|i| seg(false, i, 1 + i as u32 * 100, false, 1000, &data(100, 7)))
            .collect();
        let (h, p) = &frames(&batch)[0];
        let ip = h.csum_start as usize;
        // The device (or skb_checksum_help) sums from csum_start to the end,
        // the pre-filled field included, and stores the complement.
        let completed = !fold(sum(0, &p[ip..]));
        let mut full = p.clone();
        let mut v = TcpView::parse(&mut full[..]).unwrap();
        v.fill_checksum();
        assert_eq!(completed, v.checksum());
    }

    #[test]
    fn runs_break_where_segments_differ() {
        let full = data(MSS, 1);
        let a = |seq: u32, psh: bool, window: u16, len: usize| {
            seg(false, 0, seq, psh, window, &full[..len])
        };
        let m = MSS as u32;
        let cases: Vec<(&str, Vec<Vec<u8>>, usize)> = vec![
            (
                "gap in sequence",
                vec![a(0, false, 9, MSS), a(m + 1, false, 9, MSS)],
                2,
            ),
            (
                "window changed",
                vec![a(0, false, 9, MSS), a(m, false, 8, MSS)],
                2,
            ),
            (
                "PSH in the middle",
                vec![a(0, true, 9, MSS), a(m, false, 9, MSS)],
                2,
            ),
            (
                "short segment then more",
                vec![a(0, false, 9, 100), a(100, false, 9, 100)],
                1,
            ),
            (
                "short in the middle",
                vec![
                    a(0, false, 9, MSS),
                    a(m, false, 9, 10),
                    a(m + 10, false, 9, 10),
                ],
                2,
            ),
            (
                "longer than the first",
                vec![a(0, false, 9, 100), a(100, false, 9, 200)],
                2,
            ),
        ];
        for (what, batch, packets) in cases {
            let out = frames(&batch);
            assert_eq!(out.len(), packets, "{what}");
            assert_eq!(cut_back(&out), without_ids(batch), "{what}");
        }
    }

    #[test]
    fn other_packets_pass_through_in_order() {
        let (src, dst) = addrs(false);
        let syn = Tcp {
            seq: 5,
            flags: TcpFlags::SYN,
            window: 1000,
            ..Default::default()
        }
        .packet(src, dst);
        let udp = Udp {
            payload: b"x",
            ..Default::default()
        }
        .packet(src, dst);
        let m = MSS as u32;
        let d = data(MSS, 2);
        let batch = vec![
            seg(false, 1, 0, false, 9, &d),
            syn.clone(),
            seg(false, 2, m, false, 9, &d),
            seg(false, 3, 2 * m, false, 9, &d),
            udp.clone(),
            vec![0x45, 0, 0], // garbage is passed on untouched
        ];
        let out = frames(&batch);
        assert_eq!(out.len(), 5);
        // The SYN's checksum is left to the kernel; the UDP datagram and
        // the garbage go as they are.
        let syn_hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            hdr_len: 40,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        assert_eq!(out[1].0, syn_hdr);
        assert_ne!(out[1].1, syn, "the field holds the pseudo-header sum");
        assert_eq!(segment(out[1].0, &out[1].1), vec![syn]);
        assert_eq!(out[3], (VnetHdr::default(), udp));
        assert_eq!(out[4], (VnetHdr::default(), vec![0x45, 0, 0]));
        assert_eq!(out[2].0.gso_type, GSO_TCPV4);
        assert_eq!(cut_back(&out), without_ids(batch));
    }

    #[test]
    fn a_run_stops_below_the_ip_length_limit() {
        let d = data(MSS, 3);
        let batch: Vec<Vec<u8>> = (0..100)
            .map(|i| seg(false, i, i as u32 * MSS as u32, false, 9, &d))
            .collect();
        let out = frames(&batch);
        assert!(out.iter().all(|(_, p)| p.len() <= 0xffff));
        assert_eq!(out.len(), 3, "44 + 44 + 12 segments");
        assert_eq!(cut_back(&out), without_ids(batch));
    }

    #[test]
    fn random_batches_cut_back_into_themselves() {
        // Segments of two flows in both families, with gaps, short and
        // long payloads, PSH, window and option changes, and garbage in
        // between: whatever is merged must cut back into the input.
        let mut x = 0x243f_6a88_85a3_08d3u64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for round in 0..2000 {
            let mut seq = [0u32; 4];
            let batch: Vec<Vec<u8>> = (0..next(40))
                .map(|_| {
                    if next(20) == 0 {
                        return (0..next(80)).map(|_| next(256) as u8).collect();
                    }
                    let flow = next(4) as usize;
                    let v6 = flow >= 2;
                    let len = match next(6) {
                        0 => next(MSS as u64) as usize,
                        1 => 0,
                        _ => MSS,
                    };
                    if next(10) == 0 {
                        seq[flow] += 1;
                    }
                    let window = if next(15) == 0 { 1000 } else { 2000 };
                    let mut p = seg(
                        v6,
                        0,
                        seq[flow],
                        next(8) == 0,
                        window,
                        &data(len, round as u8),
                    );
                    if flow % 2 == 1 {
                        // The other flow of the family: another port.
                        let t = if v6 { 40 } else { 20 };
                        p[t + 1] = 81;
                        TcpView::parse(&mut p[..]).unwrap().fill_checksum();
                    }
                    seq[flow] = seq[flow].wrapping_add(len as u32);
                    p
                })
                .collect();
            let out = frames(&batch);
            assert!(out.len() <= batch.len());
            assert_eq!(cut_back(&out), without_ids(batch), "round {round}");
        }
    }

    #[test]
    fn frames_cover_the_batch_once_and_borrow_its_payloads() {
        let d = data(MSS, 4);
        let m = MSS as u32;
        let batch = vec![
            seg(false, 0, 0, false, 9, &d),
            seg(false, 0, m, false, 9, &d),
            seg(false, 0, 2 * m, true, 9, &d[..10]),
            seg(true, 0, 0, false, 9, &d),
        ];
        let mut batch = batch;
        let out = coalesce(&mut batch);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].packets.clone(), out[1].packets.clone()),
            (0..3, 3..4)
        );
        let parts: Vec<&[u8]> = out[0].parts(&batch).collect();
        assert_eq!(parts.len(), 4, "headers, then three payloads");
        for (i, part) in parts[1..].iter().enumerate() {
            let payload = &batch[i][40..];
            assert_eq!(part.as_ptr(), payload.as_ptr(), "payload {i} was copied");
        }
        assert_eq!(out[0].len(&batch), 40 + 2 * MSS + 10);
        let whole: Vec<&[u8]> = out[1].parts(&batch).collect();
        assert_eq!(whole, vec![&batch[3][..]]);
    }

    #[test]
    fn the_header_is_in_host_order() {
        let h = VnetHdr {
            flags: 1,
            gso_type: 1,
            hdr_len: 52,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
        };
        let b = h.to_bytes();
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 1448);
        assert_eq!(&b[..2], &[1, 1]);
    }
}
