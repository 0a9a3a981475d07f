//! The TCP headers the stack reads and writes itself, beyond smoltcp.
//!
//! Three things, all here so there is one place to look: SEG.ACK of a
//! segment smoltcp emitted (to know whether the peer is still owed an
//! ACK), clearing the FIN of a segment that ends beyond the receive
//! window, and bare segments (no payload) the stack sends for a
//! connection when its socket cannot (see [`Segment`]). Packets are parsed
//! and checked once, in [`crate::demux`]; these read or patch fields of a
//! packet that is already known to be well formed, through
//! [`crate::wire`]'s view, and build with its one builder.

use smoltcp::wire::TcpControl;

use crate::port_table::FlowKey;
use crate::wire::build::Tcp;
use crate::wire::{SackBlock, TcpFlags, TcpView};

/// A bare segment (no payload, no options) the stack builds itself rather
/// than a socket. Four rules send one:
/// - the TIME-WAIT responder's ACK of a retransmitted FIN (the socket is
///   gone; RFC 9293 §3.10.7.4);
/// - the ACK a connection still owes when it is freed in TIME-WAIT;
/// - the FIN watchdog's FIN (smoltcp lost its retransmission timer);
/// - the RFC 5961 challenge ACK (smoltcp would reset or drop instead).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    /// SEG.SEQ.
    pub seq: u32,
    /// SEG.ACK (the ACK flag is always set).
    pub ack: u32,
    /// FIN or nothing.
    pub control: TcpControl,
    /// SEG.WND, unscaled.
    pub window: u16,
}

impl Segment {
    /// The IP packet carrying this segment from `key.local` to
    /// `key.remote`, with correct checksums, its IP header as smoltcp
    /// writes one (an atomic IPv4 datagram, or IPv6 without extension
    /// headers, hop limit 64).
    pub(crate) fn build(&self, key: &FlowKey) -> Vec<u8> {
        let fin = if self.control == TcpControl::Fin {
            TcpFlags::FIN
        } else {
            TcpFlags::NONE
        };
        Tcp {
            seq: self.seq,
            ack: self.ack,
            flags: TcpFlags::ACK | fin,
            window: self.window,
            ..Default::default()
        }
        .atomic_packet(key.local, key.remote)
    }
}

/// The offset between a connection's sequence space inside smoltcp and on
/// the wire, which makes our ISN on the wire the one the stack chose
/// (RFC 6528, or a SYN cookie) although smoltcp picks its own and cannot
/// be told one.
///
/// Only our own sequence space moves: SEG.SEQ of every segment smoltcp
/// sends for the connection gets the offset added, SEG.ACK of every
/// segment from the peer (and the SACK blocks, which name our sequence
/// numbers too) gets it taken off, each with the checksum updated
/// incrementally (RFC 1624). The peer's sequence numbers (its SEG.SEQ, our
/// SEG.ACK, RCV.NXT) are the same on both sides. Everything else the stack
/// reads or writes stays in the numbers the peer sees: SND.UNA as the
/// stack tracks it comes from SEG.ACK before the offset is taken off, and
/// the segments the stack builds itself ([`Segment`]) go out as they are.
///
/// The offset is zero until smoltcp sends the connection's SYN (active
/// open) or SYN-ACK (passive), which fixes it; a segment from the peer
/// before that cannot acknowledge anything smoltcp sent, and smoltcp
/// refuses it whatever its number.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SeqOffset {
    /// Wire minus smoltcp, wrapping.
    delta: u32,
    /// Our ISN on the wire, once the SYN has been sent.
    iss: Option<u32>,
}

impl SeqOffset {
    /// Our ISN as the peer sees it, once the SYN has been sent.
    #[inline]
    pub(crate) fn iss(&self) -> Option<u32> {
        self.iss
    }

    /// An offset already fixed with ISS `iss` (for tests of the rules
    /// that read it).
    #[cfg(test)]
    pub(crate) fn fixed(iss: u32) -> SeqOffset {
        SeqOffset {
            delta: 0,
            iss: Some(iss),
        }
    }

    /// A segment smoltcp sent for the connection, taken to the wire's
    /// sequence space in place. The first SYN fixes the offset so that
    /// its SEG.SEQ becomes `isn()` (called only then). `answering_unacked`:
    /// it answers a segment without ACK, so a RST among the answers
    /// carries SEG.SEQ 0 rather than a sequence number of ours
    /// (RFC 9293 §3.10.7.1) and is left as it is. `summed`: the segment
    /// has its checksum, to be kept right; else the link completes it and
    /// the field is left alone. Returns SEG.ACK if the ACK flag is set.
    #[inline]
    pub(crate) fn outbound(
        &mut self,
        packet: &mut [u8],
        isn: impl FnOnce() -> u32,
        answering_unacked: bool,
        summed: bool,
    ) -> Option<u32> {
        // smoltcp writes IPv6 without extension headers.
        let tcp_at = match packet.first() {
            Some(&b) if b >> 4 == 4 => usize::from(b & 0x0f) * 4,
            _ => 40,
        };
        let Ok(mut v) = TcpView::at(packet, tcp_at) else {
            return None;
        };
        let flags = v.flags();
        if self.iss.is_none() && flags.syn() {
            let iss = isn();
            self.delta = iss.wrapping_sub(v.seq());
            self.iss = Some(iss);
        }
        if !(answering_unacked && flags.rst()) {
            let seq = v.seq().wrapping_add(self.delta);
            if summed {
                v.set_seq(seq);
            } else {
                v.set_seq_unsummed(seq);
            }
        }
        flags.ack().then(|| v.ack())
    }

    /// A segment from the peer (`packet`, its TCP header at `tcp_at`, its
    /// ACK flag set), taken to smoltcp's sequence space in place: SEG.ACK
    /// and every SACK block.
    #[inline]
    pub(crate) fn inbound(&self, packet: &mut [u8], tcp_at: usize) {
        let Ok(mut v) = TcpView::at(packet, tcp_at) else {
            return;
        };
        let ack = v.ack().wrapping_sub(self.delta);
        v.set_ack(ack);
        // The usual options need no walk: none, or timestamps alone
        // (NOP, NOP, kind 8 length 10), which is what a peer sends that
        // has no SACK block to report.
        let options = &v.segment()[20..v.header_len()];
        let plain =
            options.is_empty() || (options.len() == 12 && options.starts_with(&[1, 1, 8, 10]));
        if !plain {
            let d = self.delta;
            v.map_sack_blocks(|b| SackBlock {
                left: b.left.wrapping_sub(d),
                right: b.right.wrapping_sub(d),
            });
        }
    }
}

/// Clear the FIN flag of `packet`, a TCP segment demultiplexing accepted
/// (the checksum is updated with it).
pub(crate) fn clear_fin(packet: &mut [u8]) {
    if let Ok(mut v) = TcpView::parse(packet) {
        let flags = v.flags();
        v.set_flags(flags & !TcpFlags::FIN);
    }
}

/// Set SEG.SEQ of `packet`, a TCP segment demultiplexing accepted, to
/// `seq` (the checksum is updated with it).
pub(crate) fn set_seq(packet: &mut [u8], seq: u32) {
    if let Ok(mut v) = TcpView::parse(packet) {
        v.set_seq(seq);
    }
}

/// Cut `packet`, a TCP segment demultiplexing accepted with its header at
/// `tcp_at`, down to its headers: no payload, no FIN (ACK, window and
/// options stay), the IP length field set to match. Returns the new
/// length. Checksums are left as they are: demux verified them, and
/// smoltcp is told not to check again.
pub(crate) fn strip_payload(packet: &mut [u8], tcp_at: usize) -> usize {
    let header = packet
        .get(tcp_at + 12)
        .map_or(20, |&off| usize::from(off >> 4) * 4);
    let len = (tcp_at + header).min(packet.len());
    if let Some(flags) = packet.get_mut(tcp_at + 13) {
        *flags &= !0x01;
    }
    match packet.first().map(|b| b >> 4) {
        Some(4) if len >= 4 => packet[2..4].copy_from_slice(&(len as u16).to_be_bytes()),
        Some(6) if len >= 40 => packet[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes()),
        _ => {}
    }
    len
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpProtocol, IpRepr, TcpPacket, TcpRepr, TcpSeqNumber};

    use super::*;
    use crate::demux::{classify, Class, LocalAddrs};
    use crate::port_table::Protocol;
    use crate::wire::build::{tcp_options, TcpOpt};

    fn v4() -> (SocketAddr, SocketAddr) {
        (
            "10.0.0.2:80".parse().unwrap(),
            "10.0.0.1:40000".parse().unwrap(),
        )
    }

    /// What a segment says, read back.
    fn fields(p: &[u8]) -> (u32, u32, TcpFlags, bool) {
        let v = TcpView::parse(p).unwrap();
        (v.seq(), v.ack(), v.flags(), v.verify_checksum())
    }

    #[test]
    fn the_first_syn_fixes_the_offset_and_every_segment_after_moves_by_it() {
        let (us, peer) = v4();
        let mut o = SeqOffset::default();
        let seg = |seq, ack, flags| {
            Tcp {
                seq,
                ack,
                flags,
                window: 100,
                payload: b"data",
                ..Default::default()
            }
            .atomic_packet(us, peer)
        };
        // Nothing is known before the SYN; an early RST passes as it is.
        let mut rst = seg(5, 0, TcpFlags::RST);
        assert_eq!(o.outbound(&mut rst, || unreachable!(), false, true), None);
        assert_eq!(fields(&rst), (5, 0, TcpFlags::RST, true));
        // smoltcp's SYN at 1000 becomes ours at 0xffff_fff0.
        let mut syn = seg(1000, 0, TcpFlags::SYN);
        assert_eq!(o.outbound(&mut syn, || 0xffff_fff0, false, true), None);
        assert_eq!(o.iss, Some(0xffff_fff0));
        assert_eq!(fields(&syn), (0xffff_fff0, 0, TcpFlags::SYN, true));
        // A retransmitted SYN keeps it; data moves by the same offset and
        // the acknowledgment number (the peer's space) does not move.
        let mut again = seg(1000, 0, TcpFlags::SYN);
        o.outbound(&mut again, || unreachable!(), false, true);
        assert_eq!(fields(&again).0, 0xffff_fff0);
        let mut data = seg(1001, 77, TcpFlags::ACK | TcpFlags::PSH);
        assert_eq!(
            o.outbound(&mut data, || unreachable!(), false, true),
            Some(77)
        );
        assert_eq!(
            fields(&data),
            (0xffff_fff1, 77, TcpFlags::ACK | TcpFlags::PSH, true)
        );
        // A RST answering a segment without ACK has SEG.SEQ 0 and keeps it.
        let mut reply = seg(0, 78, TcpFlags::RST | TcpFlags::ACK);
        o.outbound(&mut reply, || unreachable!(), true, true);
        assert_eq!(fields(&reply).0, 0);
        // The peer's ACK of our data comes back to smoltcp's numbers.
        let mut ack = Tcp {
            seq: 77,
            ack: 0xffff_fff5,
            flags: TcpFlags::ACK,
            ..Default::default()
        }
        .atomic_packet(peer, us);
        o.inbound(&mut ack, 20);
        assert_eq!(fields(&ack), (77, 1005, TcpFlags::ACK, true));
    }

    #[test]
    fn sack_blocks_name_our_sequence_numbers_and_move_too() {
        let (us, peer) = v4();
        let mut o = SeqOffset::default();
        let mut syn = Tcp {
            seq: 10,
            flags: TcpFlags::SYN,
            ..Default::default()
        }
        .atomic_packet(us, peer);
        o.outbound(&mut syn, || 1_000_010, false, true);
        let blocks = [
            SackBlock {
                left: 1_000_100,
                right: 1_000_200,
            },
            SackBlock {
                left: 1_000_300,
                right: 1_000_400,
            },
        ];
        for opts in [
            vec![TcpOpt::Nop, TcpOpt::Nop, TcpOpt::Sack(&blocks)],
            vec![
                TcpOpt::Nop,
                TcpOpt::Nop,
                TcpOpt::Timestamp { tsval: 1, tsecr: 2 },
                TcpOpt::Nop,
                TcpOpt::Nop,
                TcpOpt::Sack(&blocks),
            ],
        ] {
            let options = tcp_options(&opts);
            let mut p = Tcp {
                seq: 5,
                ack: 1_000_050,
                flags: TcpFlags::ACK,
                options: &options,
                ..Default::default()
            }
            .atomic_packet(peer, us);
            o.inbound(&mut p, 20);
            let v = TcpView::parse(&p[..]).unwrap();
            assert!(v.verify_checksum());
            assert_eq!(v.ack(), 50);
            let got: Vec<SackBlock> = v.sack_blocks().unwrap().iter().collect();
            assert_eq!(
                got,
                [
                    SackBlock {
                        left: 100,
                        right: 200
                    },
                    SackBlock {
                        left: 300,
                        right: 400
                    }
                ]
            );
            assert_eq!(
                v.timestamp().is_some(),
                opts.len() > 3,
                "timestamps untouched"
            );
        }
    }

    #[test]
    fn a_segment_without_its_payload_is_a_well_formed_bare_segment() {
        use crate::wire::build::Tcp;
        for (from, to) in [
            ("10.0.0.1:40000", "10.0.0.2:80"),
            ("[fd00::1]:40000", "[fd00::2]:80"),
        ] {
            let (from, to): (SocketAddr, SocketAddr) = (from.parse().unwrap(), to.parse().unwrap());
            let mut packet = Tcp {
                seq: 7,
                ack: 9,
                flags: TcpFlags::ACK | TcpFlags::FIN | TcpFlags::PSH,
                window: 1000,
                payload: &[5; 300],
                ..Default::default()
            }
            .packet(from, to);
            let Ok(Class::Tcp { seg, .. }) = classify(&packet, &Peer(to.ip())) else {
                panic!("not TCP");
            };
            let full = packet.len();
            let len = strip_payload(&mut packet, usize::from(seg.header_offset));
            assert_eq!(len, full - 300);
            let v = TcpView::parse(&packet[..len]).unwrap();
            assert!(v.payload().is_empty() && !v.flags().fin() && v.flags().ack());
            assert_eq!((v.seq(), v.ack(), v.window()), (7, 9, 1000));
        }
    }

    /// The peer's addresses, as its own demux would see them.
    struct Peer(IpAddr);

    impl LocalAddrs for Peer {
        fn is_local(&self, ip: IpAddr) -> bool {
            ip == self.0
        }
        fn is_subnet_broadcast(&self, _: IpAddr) -> bool {
            false
        }
    }

    /// The same segment as smoltcp's emitter writes it.
    fn smoltcp_built(s: &Segment, key: &FlowKey) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: key.local.port(),
            dst_port: key.remote.port(),
            control: s.control,
            seq_number: TcpSeqNumber(s.seq as i32),
            ack_number: Some(TcpSeqNumber(s.ack as i32)),
            window_len: s.window,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload: &[],
        };
        let ip = IpRepr::new(
            key.local.ip().into(),
            key.remote.ip().into(),
            IpProtocol::Tcp,
            tcp.header_len(),
            64,
        );
        let mut buf = vec![0u8; ip.header_len() + tcp.header_len()];
        ip.emit(&mut buf[..], &ChecksumCapabilities::default());
        let hl = ip.header_len();
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut buf[hl..]),
            &ip.src_addr(),
            &ip.dst_addr(),
            &ChecksumCapabilities::default(),
        );
        buf
    }

    #[test]
    fn built_segments_reach_the_peer_intact() {
        for (local, remote) in [
            ("10.0.0.2:80", "10.0.0.1:40000"),
            ("[fd00::2]:80", "[fd00::1]:40000"),
        ] {
            let (local, remote): (SocketAddr, SocketAddr) =
                (local.parse().unwrap(), remote.parse().unwrap());
            let key = FlowKey::new(Protocol::Tcp, local, remote);
            for control in [TcpControl::Fin, TcpControl::None] {
                let seg = Segment {
                    seq: 0xffff_fff0,
                    ack: 77,
                    control,
                    window: 1234,
                };
                let packet = seg.build(&key);
                // Octet for octet what smoltcp would have sent.
                assert_eq!(packet, smoltcp_built(&seg, &key), "{local} {control:?}");
                // The peer's demux checks lengths and checksums.
                let Ok(Class::Tcp { key: seen, seg: s }) = classify(&packet, &Peer(remote.ip()))
                else {
                    panic!("{local}: not a valid TCP segment");
                };
                assert_eq!((seen.local, seen.remote), (remote, local));
                assert_eq!((s.seq, s.ack_number), (0xffff_fff0, 77));
                let fin = control == TcpControl::Fin;
                assert!(s.ack && s.fin == fin && !s.syn && !s.rst && s.len == 0);
                let mut plain = packet.clone();
                clear_fin(&mut plain);
                let v = TcpView::parse(&plain[..]).unwrap();
                assert_eq!(v.flags(), TcpFlags::ACK, "ACK only");
                assert!(v.verify_checksum());
            }
        }
    }
}
