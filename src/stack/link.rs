//! The link smoltcp sees: a device that hands smoltcp's interface one
//! packet (or none) and collects what it sends, the interface driven
//! through it one socket set at a time, and the queue of packets on their
//! way out.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::num::{NonZeroU16, NonZeroUsize};

use smoltcp::iface::{Config, Interface, PollIngressSingleResult, PollResult, SocketSet};
use smoltcp::phy::{
    self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium, PacketMeta,
    SegmentationCapabilities,
};
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use super::conn::TcpConn;
use super::isn::Secrets;
use super::segment::{clear_fin, set_seq, strip_payload, Segment, SeqOffset};
use super::Transmit;
use crate::demux::{LocalAddrs, TcpSeg};
use crate::port_table::FlowKey;

/// One packet in, any number out: the device handed to smoltcp for a single
/// ingress or egress call.
struct OneShot<'a> {
    rx: Option<&'a [u8]>,
    tx: &'a mut VecDeque<Transmit>,
    /// Buffers of packets already sent, filled again before new ones.
    spare: &'a mut Spares,
    mtu: usize,
    /// What smoltcp does about TCP checksums (it never checks them).
    tcp_sum: Checksum,
    /// The largest TCP packets smoltcp may hand over for the device to
    /// cut, IPv4 and IPv6; `None` without segmentation offload.
    tso: Option<Tso>,
}

struct RxOne<'a>(&'a [u8]);

/// Where a packet smoltcp sends goes, and the segment size it asked the
/// device to cut it at (`PacketMeta::segmentation_offload_size`), which
/// smoltcp sets before it fills the packet.
struct TxOne<'a> {
    queue: &'a mut VecDeque<Transmit>,
    spare: &'a mut Spares,
    gso_size: Option<NonZeroU16>,
}

impl phy::RxToken for RxOne<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for TxOne<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = self.spare.take(len);
        let r = f(&mut packet);
        self.queue.push_back(Transmit {
            packet,
            gso_size: self.gso_size,
        });
        r
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        self.gso_size = meta.segmentation_offload_size;
    }
}

impl<'a> TxOne<'a> {
    fn new(queue: &'a mut VecDeque<Transmit>, spare: &'a mut Spares) -> TxOne<'a> {
        TxOne {
            queue,
            spare,
            gso_size: None,
        }
    }
}

/// How many sent packets' buffers a stack keeps to fill again
/// ([`Stack::recycle`](super::Stack::recycle)): a turn's worth of TCP
/// super-packets for a fast download.
pub const SPARE_TX_BUFFERS: usize = 32;

/// The largest buffer kept: a 64 KiB IP packet and change. Larger ones
/// (a driver's own) are freed, so the list holds at most
/// [`SPARE_TX_BUFFERS`] of these (2 MiB).
const SPARE_MAX_CAPACITY: usize = 64 * 1024 + 64;

/// Buffers of packets the driver has written and given back
/// ([`Stack::recycle`](super::Stack::recycle)), filled again for the next
/// packets smoltcp sends. Without them every packet is a fresh
/// allocation; a TCP super-packet (up to 64 KiB) freed at the top of the
/// heap lets the allocator hand the pages back to the kernel (glibc trims
/// a free top over 128 KiB, in a thread's own arena with `madvise`), so
/// the next one faults them in again: one page fault per 4 KiB sent, and
/// with other threads in the process, TLB flushes on their CPUs too.
#[derive(Debug, Default)]
pub(super) struct Spares {
    buffers: Vec<Vec<u8>>,
}

impl Spares {
    /// A zeroed buffer of `len` octets, reusing a spare if there is one
    /// (zeroed all the same: what smoltcp leaves unwritten must not carry
    /// an earlier packet's bytes).
    fn take(&mut self, len: usize) -> Vec<u8> {
        match self.buffers.pop() {
            Some(mut b) => {
                b.clear();
                // Grown to `len` exactly, not doubled, so a buffer reused
                // for a 64 KiB packet stays within SPARE_MAX_CAPACITY and
                // is kept again.
                b.reserve_exact(len);
                b.resize(len, 0);
                b
            }
            None => vec![0; len],
        }
    }

    /// Keep `buffer` for a later packet; false (and it is freed) if
    /// [`SPARE_TX_BUFFERS`] are kept already or it is larger than any
    /// packet.
    pub(super) fn give(&mut self, buffer: Vec<u8>) -> bool {
        if self.buffers.len() >= SPARE_TX_BUFFERS || buffer.capacity() > SPARE_MAX_CAPACITY {
            return false;
        }
        self.buffers.push(buffer);
        true
    }

    /// How many are kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.buffers.len()
    }
}

/// The size smoltcp may fill with an IPv4 TCP segment for the device
/// to cut (IP header included): the largest whole number of full
/// segments of the link's MSS that fits an IP packet of 64 KiB, plus the
/// headers. A whole number, so that every segment the device cuts is
/// full but the last of what the window and congestion window allow, as
/// Linux sizes its TSO packets (`tcp_tso_autosize`); otherwise each
/// packet would end in a runt. smoltcp sends no TCP options with data
/// (no timestamps), so its MSS is the MTU less the IP and TCP headers; a
/// peer's smaller MSS only makes the last segment of a packet shorter.
///
/// IPv4 only: smoltcp 0.14 drops an IPv6 packet larger than the MTU
/// even when it set a segment size for it (its IPv6 dispatch has no
/// segmentation branch, only "fragmentation unimplemented"), so IPv6
/// segments stay MTU-sized and the TUN merges them (`device::gso`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tso {
    v4: NonZeroUsize,
}

impl Tso {
    /// The size for an IP link of `mtu` octets (576..=65535).
    pub(super) fn for_mtu(mtu: usize) -> Tso {
        let headers = 20 + 20;
        let mss = mtu.saturating_sub(headers).max(1);
        let max = 0xffff - headers;
        let v4 = NonZeroUsize::new(headers + max / mss * mss).unwrap_or(NonZeroUsize::MIN);
        Tso { v4 }
    }
}

impl phy::Device for OneShot<'_> {
    type RxToken<'b>
        = RxOne<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxOne<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(RxOne<'_>, TxOne<'_>)> {
        let p = self.rx.take()?;
        Some((RxOne(p), TxOne::new(self.tx, self.spare)))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxOne<'_>> {
        Some(TxOne::new(self.tx, self.spare))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // demux verified IPv4, TCP and UDP checksums already; smoltcp only
        // computes them on the way out, TCP's not even then if the link
        // does.
        let mut sums = ChecksumCapabilities::default();
        sums.ipv4 = Checksum::Tx;
        sums.tcp = self.tcp_sum;
        sums.udp = Checksum::Tx;
        caps.checksum = sums;
        if let Some(tso) = self.tso {
            let mut seg = SegmentationCapabilities::default();
            seg.tcpv4 = Some(tso.v4);
            caps.segmentation = seg;
        }
        caps
    }
}

/// A packet handed to the stack: the caller's to keep (changed only in a
/// copy), or the driver's buffer, which the stack may change in place
/// (`Stack::handle_packet_mut`).
pub(super) enum Packet<'a> {
    /// Read only.
    Shared(&'a [u8]),
    /// Ours to change.
    Mut(&'a mut [u8]),
}

impl Packet<'_> {
    /// The octets.
    #[inline]
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Packet::Shared(p) => p,
            Packet::Mut(p) => p,
        }
    }
}

/// What the stack changes in a peer's segment before smoltcp sees it,
/// besides the sequence offset.
#[derive(Copy, Clone, Debug, Default)]
pub(super) struct Fix {
    /// Clear its FIN (it ends beyond the receive window).
    pub strip_fin: bool,
    /// Set its SEG.SEQ (a bare ACK from a peer whose SND.NXT went back).
    pub rewind: Option<u32>,
    /// Drop its payload and FIN, keep its ACK and window (the memory
    /// budget has no room for the data).
    pub strip_payload: bool,
}

/// The stack's addresses, as demux asks about them.
pub(super) struct Addrs<'a>(pub &'a [IpCidr]);

impl LocalAddrs for Addrs<'_> {
    fn is_local(&self, ip: IpAddr) -> bool {
        let ip = IpAddress::from(ip);
        self.0.iter().any(|c| c.address() == ip)
    }
    fn is_subnet_broadcast(&self, ip: IpAddr) -> bool {
        let IpAddr::V4(v4) = ip else { return false };
        self.0.iter().any(|c| match c {
            IpCidr::Ipv4(c) => c.prefix_len() < 31 && c.broadcast() == Some(v4),
            #[allow(unreachable_patterns)]
            _ => false,
        })
    }
}

/// smoltcp's interface, fed one packet at a time, and the queue of packets
/// it (and the stack) put on the wire.
pub(super) struct Link {
    pub iface: Interface,
    pub tx: VecDeque<Transmit>,
    /// Sent packets' buffers, to fill again.
    pub spare: Spares,
    pub mtu: usize,
    /// [`Checksum::None`] if the link completes TCP checksums, else
    /// [`Checksum::Tx`].
    tcp_sum: Checksum,
    /// What smoltcp may leave the link to cut, with TCP segmentation
    /// offload.
    tso: Option<Tso>,
    /// The empty set smoltcp answers unmatched packets with.
    pub empty: SocketSet<'static>,
    /// A copy of the segment being handed in, when it must be changed.
    scratch: Vec<u8>,
}

impl Link {
    /// The link of a stack with addresses `cidrs` on an IP link of `mtu`
    /// octets, which completes TCP checksums if `tcp_checksum_offload`,
    /// and cuts TCP segments larger than the MSS if
    /// `tcp_segmentation_offload` (which needs the checksums left to it
    /// too: smoltcp insists, and a cut changes every segment's sum);
    /// `seed` seeds smoltcp's own random choices (ISNs).
    pub(super) fn new(
        mtu: usize,
        tcp_checksum_offload: bool,
        tcp_segmentation_offload: bool,
        cidrs: &[IpCidr],
        seed: u64,
        now: Instant,
    ) -> Link {
        let tso = tcp_segmentation_offload.then(|| Tso::for_mtu(mtu));
        let tcp_sum = if tcp_checksum_offload || tso.is_some() {
            Checksum::None
        } else {
            Checksum::Tx
        };
        let mut tx = VecDeque::new();
        let mut spare = Spares::default();
        let mut dev = OneShot {
            rx: None,
            tx: &mut tx,
            spare: &mut spare,
            mtu,
            tcp_sum,
            tso,
        };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut dev, now);
        iface.update_ip_addrs(|a| {
            for c in cidrs {
                let _ = a.push(*c);
            }
        });
        // Medium::Ip needs no neighbours, but smoltcp asks for a route to
        // any remote before it sends; the link is point-to-point, so route
        // everything through ourselves.
        for c in cidrs {
            match c {
                IpCidr::Ipv4(v4) => {
                    let _ = iface.routes_mut().add_default_ipv4_route(v4.address());
                }
                IpCidr::Ipv6(v6) => {
                    let _ = iface.routes_mut().add_default_ipv6_route(v6.address());
                }
            }
        }
        Link {
            iface,
            tx,
            spare,
            mtu,
            tcp_sum,
            tso,
            empty: SocketSet::new(Vec::new()),
            scratch: Vec::new(),
        }
    }

    /// Hand `packet` to the one-socket set it is for.
    #[inline]
    pub(super) fn ingress(
        &mut self,
        now: Instant,
        set: &mut SocketSet<'static>,
        packet: &[u8],
    ) -> PollIngressSingleResult {
        let mut dev = OneShot {
            rx: Some(packet),
            tx: &mut self.tx,
            spare: &mut self.spare,
            mtu: self.mtu,
            tcp_sum: self.tcp_sum,
            tso: self.tso,
        };
        self.iface.poll_ingress_single(now, &mut dev, set)
    }

    /// Flush a one-socket set's output (and its due timers).
    pub(super) fn egress(&mut self, now: Instant, set: &mut SocketSet<'static>) {
        let mut dev = OneShot {
            rx: None,
            tx: &mut self.tx,
            spare: &mut self.spare,
            mtu: self.mtu,
            tcp_sum: self.tcp_sum,
            tso: self.tso,
        };
        // Each call sends at most one packet; the window bounds the loop,
        // the cap guards against a socket that never says it is done.
        for _ in 0..4096 {
            if self.iface.poll_egress(now, &mut dev, set) == PollResult::None {
                break;
            }
        }
    }

    /// Hand a segment from the peer (`packet`, classified as `seg`) to a
    /// TCP connection, in smoltcp's sequence space, with its FIN cleared
    /// if `strip_fin`, its SEG.SEQ set to `rewind` if any, and its payload
    /// dropped if `strip_payload`; then take what the connection sent back to the
    /// wire's (see [`SeqOffset`]). A segment that needs neither change
    /// goes as it is; one that does is changed in place if it is the
    /// driver's to change, else in a copy (in a buffer kept for it).
    #[inline]
    pub(super) fn tcp_ingress(
        &mut self,
        now: Instant,
        c: &mut TcpConn,
        packet: Packet<'_>,
        seg: &TcpSeg,
        fix: Fix,
        secrets: &Secrets,
    ) {
        let Fix {
            strip_fin,
            rewind,
            strip_payload: strip,
        } = fix;
        let before = self.tx.len();
        let translate = seg.ack && c.seq.offset != SeqOffset::default();
        let tcp_at = usize::from(seg.header_offset);
        let patch = |p: &mut [u8]| -> usize {
            if translate {
                c.seq.offset.inbound(p, tcp_at);
            }
            if strip_fin {
                clear_fin(p);
            }
            if let Some(seq) = rewind {
                set_seq(p, seq);
            }
            if strip {
                strip_payload(p, tcp_at)
            } else {
                p.len()
            }
        };
        let change = translate || strip_fin || rewind.is_some() || strip;
        match packet {
            Packet::Mut(p) if change => {
                let len = patch(p);
                let _ = self.ingress(now, &mut c.set, &p[..len]);
            }
            Packet::Shared(p) if change => {
                let mut copy = std::mem::take(&mut self.scratch);
                copy.clear();
                copy.extend_from_slice(p);
                let len = patch(&mut copy);
                let _ = self.ingress(now, &mut c.set, &copy[..len]);
                self.scratch = copy;
            }
            p => {
                let _ = self.ingress(now, &mut c.set, p.bytes());
            }
        }
        self.tcp_outbound(now, c, before, secrets, !seg.ack);
    }

    /// Flush a TCP connection's output, in the wire's sequence space.
    pub(super) fn tcp_egress(&mut self, now: Instant, c: &mut TcpConn, secrets: &Secrets) {
        let before = self.tx.len();
        self.egress(now, &mut c.set);
        self.tcp_outbound(now, c, before, secrets, false);
    }

    /// Take the segments `c` put on the tx queue from position `from` on
    /// to the wire's sequence space (fixing the offset at its first SYN),
    /// and remember the acknowledgment number of the last.
    #[inline]
    fn tcp_outbound(
        &mut self,
        now: Instant,
        c: &mut TcpConn,
        from: usize,
        secrets: &Secrets,
        answering_unacked: bool,
    ) {
        if from == self.tx.len() {
            return;
        }
        let (key, seq) = (&c.key, &mut c.seq);
        let chosen = seq.chosen_iss;
        let summed = !matches!(self.tcp_sum, Checksum::None);
        for t in self.tx.range_mut(from..) {
            let isn = || chosen.unwrap_or_else(|| secrets.isn(now, key));
            let p = &mut t.packet;
            if let Some(ack) = seq.offset.outbound(p, isn, answering_unacked, summed) {
                seq.ack_sent = Some(ack);
            }
        }
    }

    /// Let smoltcp answer a packet no socket owns: RST for TCP (RFC 9293
    /// §3.10.7.1), ICMP port unreachable for UDP, echo reply for ping.
    pub(super) fn answer_unmatched(&mut self, now: Instant, packet: &[u8]) {
        let mut dev = OneShot {
            rx: Some(packet),
            tx: &mut self.tx,
            spare: &mut self.spare,
            mtu: self.mtu,
            tcp_sum: self.tcp_sum,
            tso: self.tso,
        };
        let _ = self
            .iface
            .poll_ingress_single(now, &mut dev, &mut self.empty);
    }

    /// Put a segment the stack built itself on the wire.
    pub(super) fn emit(&mut self, key: &FlowKey, seg: &Segment) {
        self.tx.push_back(Transmit::whole(seg.build(key)));
    }
}

#[cfg(test)]
mod tests {
    use super::{Spares, Tso, SPARE_MAX_CAPACITY, SPARE_TX_BUFFERS};

    #[test]
    fn spares_hold_their_bound_and_come_back_zeroed() {
        let mut spare = Spares::default();
        // Too large for any packet: not kept.
        assert!(!spare.give(Vec::with_capacity(SPARE_MAX_CAPACITY + 1)));
        for _ in 0..SPARE_TX_BUFFERS {
            assert!(spare.give(vec![0xa5; 1500]));
        }
        assert!(!spare.give(vec![0xa5; 1500]), "full");
        assert_eq!(spare.len(), SPARE_TX_BUFFERS);
        // Taken last in, first out, in the same allocation, zeroed, at
        // any length.
        let mut last = vec![0xa5; 64 * 1024];
        let at = last.as_ptr();
        last.truncate(10);
        spare.take(1);
        assert!(spare.give(last));
        let again = spare.take(64 * 1024);
        assert_eq!(again.as_ptr(), at);
        assert!(again.len() == 64 * 1024 && again.iter().all(|&b| b == 0));
        let short = spare.take(40);
        assert_eq!(short, [0; 40]);
        // A buffer over half the largest packet, grown for it, is still
        // kept (grown exactly, not doubled).
        let mut small = spare.take(40_000);
        small.truncate(0);
        assert!(spare.give(small));
        let large = spare.take(SPARE_MAX_CAPACITY - 64);
        assert!(large.capacity() <= SPARE_MAX_CAPACITY);
        assert!(spare.give(large));
        assert_eq!(spare.len(), SPARE_TX_BUFFERS - 2);
        // Empty: fresh buffers.
        while spare.len() > 0 {
            spare.take(1);
        }
        assert_eq!(spare.take(3), [0; 3]);
    }

    #[test]
    fn the_offload_size_is_whole_segments_of_the_mss() {
        let v4 = |mtu| Tso::for_mtu(mtu).v4.get();
        // MTU 1500: 44 segments of 1460 and the headers.
        assert_eq!(v4(1500), 40 + 44 * 1460);
        assert_eq!(v4(9000), 40 + 7 * 8960);
        assert_eq!(v4(576), 40 + 122 * 536);
        // At the largest MTU one segment fills the packet: nothing to cut.
        assert_eq!(v4(65535), 65535);
        for mtu in 576..=65535 {
            let (size, mss) = (v4(mtu), mtu - 40);
            assert!(
                size <= 65535 && size >= mtu && (size - 40) % mss == 0,
                "{mtu}"
            );
        }
    }
}
