//! Receive offload: what the kernel writes into a TUN opened with
//! `IFF_VNET_HDR` and `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
//! | TUN_F_TSO_ECN)`, turned into IP packets the stack takes.
//!
//! With those offloads the kernel treats the TUN like a NIC that does TCP
//! segmentation and checksums: a TCP flow's data comes as one packet of
//! up to 64 KiB with a virtio-net header saying "cut into `gso_size`
//! segments" (`gso_type` TCPV4 or TCPV6, maybe with the ECN bit), and
//! many packets, segmented or not, come with `NEEDS_CSUM`: their TCP or
//! UDP checksum field holds only the pseudo-header sum, to be completed
//! over the bytes from `csum_start` on. [`deliver`] does what the NIC
//! would: it completes such checksums, and cuts a super-packet the way
//! Linux's `tcp_gso_segment`/`inet_gso_segment`/`ipv6_gso_segment` do:
//! the headers copied onto every segment (options too), SEG.SEQ advanced
//! by the payload before it, FIN and PSH only on the last segment, CWR
//! only on the first, IPv4 total length, identification (counting up
//! from the first) and header checksum, IPv6 payload length, and every
//! TCP checksum complete (or, with [`Fill::Partial`], its own
//! pseudo-header sum, for a receiver that takes the kernel's word,
//! [`RxChecksum::Vouched`]).
//!
//! It cuts in place: segment *i*'s headers are written just in front of
//! its payload, over the tail of segment *i − 1*, which has been handed
//! on by then; so nothing is copied but the headers, and the callback
//! must not keep what it is given.
//!
//! The header is not trusted beyond what is checked here: the kernel's
//! `hdr_len` is the length of the skb's linear part, not of the headers
//! (wireguard-go makes the same remark), so the headers' length comes from
//! parsing the packet with [`TcpView`]; `csum_start` and `csum_offset`
//! must point at the TCP checksum of a super-packet and at a whole word
//! inside any other packet; the IP length must be the length read; `gso_type` must match
//! the IP version; `gso_size` must not be zero. What fails is a
//! [`RxDrop`], counted by the caller, and nothing is delivered.
//! docs/architecture.md says why a checksum computed here can be trusted.

use super::gso::{VnetHdr, F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6};
use crate::wire::checksum;
use crate::wire::{TcpFlags, TcpView};

/// How a super-packet's payload is cut into segments for the stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Cut {
    /// Exactly as the kernel's software segmentation would cut it:
    /// `gso_size` payload octets per segment, the last one shorter.
    Kernel,
    /// Two segments: the first `gso_size` octets, then all the rest in
    /// one. smoltcp takes a segment of any size that meets its window,
    /// and two segments are what makes it acknowledge at once (its
    /// delayed ACK holds back an ACK for one segment, however large);
    /// the stack's per-segment work is paid twice per super-packet
    /// instead of once per `gso_size`. See docs/performance-notes.md.
    #[default]
    Coalesced,
}

/// Whether the receive path ([`Tun::recv_segments`](super::Tun::recv_segments))
/// computes the checksums the kernel left to the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fill {
    /// Every packet handed on has a complete checksum, as a NIC would
    /// complete it: what anything that checks checksums needs.
    #[default]
    Complete,
    /// Packets the kernel vouches for ([`RxChecksum::Vouched`]) keep
    /// a partial checksum, the pseudo-header sum (for a segment cut from
    /// a super-packet, its own): no payload is summed, for a receiver
    /// that does not check what the kernel vouches for.
    Partial,
}

/// What the checksum of a packet the receive path
/// ([`Tun::recv_segments`](super::Tun::recv_segments)) hands on may be
/// relied on for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxChecksum {
    /// Nobody checked it: the kernel's header carried no checksum flag,
    /// so the packet may come from a link as it was. Check it.
    Unchecked,
    /// The kernel vouches for the bytes: it built them and left the
    /// checksum to the device (`NEEDS_CSUM`), or it (or the NIC) checked
    /// it (`DATA_VALID`), or the packet is a segment of a super-packet,
    /// which only the kernel's TCP and its GRO (which checks every
    /// segment it merges) make. The checksum is complete with
    /// [`Fill::Complete`], maybe partial with [`Fill::Partial`].
    Vouched,
}

/// Why a packet read from the kernel was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxDrop {
    /// The read was shorter than a virtio-net header, or longer than the
    /// buffer (the packet was cut short).
    Truncated,
    /// A `gso_type` that was not asked for (UDP), or that does not match
    /// the packet's IP version.
    GsoType,
    /// A super-packet that is not a TCP segment whose IP length is what was
    /// read, or has SYN or RST set, or a `gso_size` of zero, or headers
    /// longer than 256 octets.
    Malformed,
    /// `csum_start`/`csum_offset` outside the packet, at an odd offset,
    /// or not at the TCP checksum of a super-packet.
    ChecksumOffsets,
}

/// The longest IP and TCP headers of a super-packet this module cuts:
/// an IPv4 header with options and a TCP header with options take 120,
/// an IPv6 header with a few extension headers fits.
pub const MAX_HEADERS: usize = 256;

/// What [`deliver`] did with one packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// IP packets handed on.
    pub packets: usize,
    /// The packet was a super-packet (`gso_type` TCP) and was cut.
    pub super_packet: bool,
    /// A partial checksum (`NEEDS_CSUM`) was completed.
    pub completed_checksum: bool,
}

/// Hand the IP packets that `packet` (read behind `hdr`) carries to
/// `each`, in order, with what their checksum is worth: the packet
/// itself, its partial checksum completed unless `fill` says not to, or
/// the segments of a super-packet, cut as `cut` says. Nothing is handed
/// on when it fails.
pub fn deliver(
    hdr: VnetHdr,
    packet: &mut [u8],
    cut: Cut,
    fill: Fill,
    each: &mut dyn FnMut(&mut [u8], RxChecksum),
) -> Result<Delivered, RxDrop> {
    if hdr.gso_type == GSO_NONE {
        let partial = hdr.flags & F_NEEDS_CSUM != 0;
        let vouched = partial || hdr.flags & F_DATA_VALID != 0;
        if partial {
            complete_checksum(hdr, packet, fill)?;
        }
        each(
            packet,
            if vouched {
                RxChecksum::Vouched
            } else {
                RxChecksum::Unchecked
            },
        );
        return Ok(Delivered {
            packets: 1,
            super_packet: false,
            completed_checksum: partial && fill == Fill::Complete,
        });
    }
    let packets = split_tcp(hdr, packet, cut, fill, each)?;
    Ok(Delivered {
        packets,
        super_packet: true,
        completed_checksum: false,
    })
}

/// Complete a partial checksum, as a NIC does for `CHECKSUM_PARTIAL`:
/// the ones'-complement sum of everything from `csum_start` to the end
/// of the packet (the field holds the pseudo-header sum), complemented,
/// at `csum_start + csum_offset`. A result of zero is written as
/// 0xffff, its equivalent, since zero means "no checksum" in UDP
/// (RFC 768; Linux's `skb_checksum_help` does the same).
/// With [`Fill::Partial`], only the offsets are checked.
fn complete_checksum(hdr: VnetHdr, p: &mut [u8], fill: Fill) -> Result<(), RxDrop> {
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    // Not inside the smallest IP header, and a whole word of the summed
    // bytes (the TCP, UDP and ICMPv6 checksums are): the kernel never
    // points elsewhere, and a field at an odd offset would be summed
    // byte-swapped, so no value written there could verify.
    if start < 20 || !hdr.csum_offset.is_multiple_of(2) || at + 2 > p.len() {
        return Err(RxDrop::ChecksumOffsets);
    }
    if fill == Fill::Partial {
        return Ok(());
    }
    let c = !checksum::fold(checksum::sum(0, &p[start..]));
    let c = if c == 0 { 0xffff } else { c };
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Offset of the checksum field in a TCP header.
const TCP_CHECKSUM_AT: u16 = 16;

/// Cut a TCP super-packet in place and hand on each segment; how many.
fn split_tcp(
    hdr: VnetHdr,
    p: &mut [u8],
    cut: Cut,
    fill: Fill,
    each: &mut dyn FnMut(&mut [u8], RxChecksum),
) -> Result<usize, RxDrop> {
    let n = p.len();
    let view = TcpView::parse(&p[..]).map_err(|_| RxDrop::Malformed)?;
    let v6 = view.is_ipv6();
    match (hdr.gso_type & !GSO_ECN, v6) {
        (GSO_TCPV4, false) | (GSO_TCPV6, true) => {}
        _ => return Err(RxDrop::GsoType),
    }
    let l4 = view.ip_header_len();
    let hlen = l4 + view.header_len();
    // The length read is the packet: no padding, and no BIG TCP (an IPv4
    // total length of 0, or an IPv6 jumbogram), which the kernel uses
    // only above 64 KiB, beyond a TUN's default `gso_max_size`.
    if view.packet_len() != n
        || hlen > MAX_HEADERS
        || hdr.gso_size == 0
        || view.flags() & (TcpFlags::SYN | TcpFlags::RST) != TcpFlags::NONE
    {
        return Err(RxDrop::Malformed);
    }
    if hdr.flags & F_NEEDS_CSUM != 0
        && (usize::from(hdr.csum_start) != l4 || hdr.csum_offset != TCP_CHECKSUM_AT)
    {
        return Err(RxDrop::ChecksumOffsets);
    }
    let (seq0, flags0) = (view.seq(), view.flags());
    let id0 = u16::from_be_bytes([p[4], p[5]]);
    let mut headers = [0u8; MAX_HEADERS];
    headers[..hlen].copy_from_slice(&p[..hlen]);
    let headers = &headers[..hlen];
    let mss = usize::from(hdr.gso_size);

    let (mut at, mut i) = (hlen, 0usize);
    loop {
        let len = match cut {
            Cut::Kernel => mss,
            Cut::Coalesced if i == 0 => mss,
            Cut::Coalesced => n - at,
        }
        .min(n - at);
        let (start, end) = (at - hlen, at + len);
        let last = end == n;
        let seg = &mut p[start..end];
        let seg_len = seg.len() as u16;
        seg[..hlen].copy_from_slice(headers);
        if v6 {
            seg[4..6].copy_from_slice(&(seg_len - 40).to_be_bytes());
        } else {
            // Identification counts up, as `inet_gso_segment` numbers
            // segments (a virtio type carries no FIXEDID).
            seg[2..4].copy_from_slice(&seg_len.to_be_bytes());
            seg[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            checksum::fill_ipv4_header(&mut seg[..l4]);
        }
        let mut flags = flags0;
        if !last {
            flags = flags & !(TcpFlags::FIN | TcpFlags::PSH);
        }
        if i > 0 {
            flags = flags & !TcpFlags::CWR;
        }
        let mut view = TcpView::parse(&mut *seg).map_err(|_| RxDrop::Malformed)?;
        view.set_seq(seq0.wrapping_add((at - hlen) as u32));
        view.set_flags(flags);
        match fill {
            Fill::Complete => view.fill_checksum(),
            Fill::Partial => {
                // CHECKSUM_PARTIAL as the segment's own: its pseudo-header.
                let seed = checksum::fold(view.pseudo_header_sum()).to_be_bytes();
                let at = l4 + usize::from(TCP_CHECKSUM_AT);
                p[start + at..start + at + 2].copy_from_slice(&seed);
            }
        }
        // The receiver may change the segment (its header; the next
        // segment's header is written from the copy above).
        each(&mut p[start..end], RxChecksum::Vouched);
        at = end;
        i += 1;
        if last {
            return Ok(i);
        }
    }
}

#[cfg(test)]
mod tests;
