//! The TCP headers the stack reads and writes itself, beyond smoltcp.
//!
//! Three things, all here so there is one place to look: SEG.ACK of a
//! segment smoltcp emitted (to know whether the peer is still owed an
//! ACK), clearing the FIN of a segment that ends beyond the receive
//! window, and bare segments (no payload) the stack sends for a
//! connection when its socket cannot (see [`Segment`]). Packets are parsed
//! and checked once, in [`crate::demux`]; these read or patch fields of a
//! packet that is already known to be well formed.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpProtocol, IpRepr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};

use crate::port_table::FlowKey;

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
    /// `key.remote`, with correct checksums.
    pub(crate) fn build(&self, key: &FlowKey) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: key.local.port(),
            dst_port: key.remote.port(),
            control: self.control,
            seq_number: TcpSeqNumber(self.seq as i32),
            ack_number: Some(TcpSeqNumber(self.ack as i32)),
            window_len: self.window,
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
}

/// SEG.ACK of a TCP segment with ACK set that smoltcp emitted (IPv4 with
/// any header length, or IPv6 without extension headers); `None` for
/// anything else.
pub(crate) fn tcp_ack_number(packet: &[u8]) -> Option<u32> {
    let (proto, header) = match packet.first()? >> 4 {
        4 => (*packet.get(9)?, usize::from(packet[0] & 0x0f) * 4),
        6 => (*packet.get(6)?, 40),
        _ => return None,
    };
    let tcp = packet.get(header..header + 20)?;
    if proto != 6 || tcp[13] & 0x10 == 0 {
        return None;
    }
    Some(u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]))
}

/// A copy of `packet` with the TCP FIN flag cleared. The checksum is left
/// as it is: demux verified it, and smoltcp is told not to check again.
pub(crate) fn without_fin(packet: &[u8], tcp_offset: u16) -> Vec<u8> {
    let mut p = packet.to_vec();
    if let Some(flags) = p.get_mut(tcp_offset as usize + 13) {
        *flags &= !0x01;
    }
    p
}

/// A copy of `packet` with the TCP sequence number set to `seq`. The
/// checksum is left as it is, as in [`without_fin`].
pub(crate) fn with_seq(packet: &[u8], tcp_offset: u16, seq: u32) -> Vec<u8> {
    let mut p = packet.to_vec();
    let at = tcp_offset as usize + 4;
    if let Some(field) = p.get_mut(at..at + 4) {
        field.copy_from_slice(&seq.to_be_bytes());
    }
    p
}

/// A copy of `packet` without its TCP payload and FIN: only the header
/// (ACK, window, options) stays. The IP length field is set to the new
/// length; checksums are left as they are (see [`without_fin`]).
pub(crate) fn without_payload(packet: &[u8], tcp_offset: u16) -> Vec<u8> {
    let at = tcp_offset as usize;
    let header = packet
        .get(at + 12)
        .map_or(20, |&off| usize::from(off >> 4) * 4);
    let len = (at + header).min(packet.len());
    let mut p = packet[..len].to_vec();
    if let Some(flags) = p.get_mut(at + 13) {
        *flags &= !0x01;
    }
    match p.first().map(|b| b >> 4) {
        Some(4) if len >= 4 => p[2..4].copy_from_slice(&(len as u16).to_be_bytes()),
        Some(6) if len >= 40 => p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes()),
        _ => {}
    }
    p
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use super::*;
    use crate::demux::{classify, Class, LocalAddrs};
    use crate::port_table::Protocol;

    #[test]
    fn ack_number_of_emitted_segments() {
        let mut v4 = vec![0u8; 40];
        v4[0] = 0x45;
        v4[9] = 6;
        v4[20 + 8..20 + 12].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        assert_eq!(tcp_ack_number(&v4), None, "ACK flag clear");
        v4[20 + 13] = 0x10;
        assert_eq!(tcp_ack_number(&v4), Some(0xdead_beef));
        v4[9] = 17;
        assert_eq!(tcp_ack_number(&v4), None, "UDP");

        let mut v6 = vec![0u8; 60];
        v6[0] = 0x60;
        v6[6] = 6;
        v6[40 + 8..40 + 12].copy_from_slice(&7u32.to_be_bytes());
        v6[40 + 13] = 0x18;
        assert_eq!(tcp_ack_number(&v6), Some(7));
        assert_eq!(tcp_ack_number(&v6[..50]), None, "truncated");
        assert_eq!(tcp_ack_number(&[]), None);
    }

    #[test]
    fn a_segment_without_its_payload_is_a_well_formed_bare_segment() {
        use crate::wire::build::Tcp;
        use crate::wire::TcpFlags;
        for (from, to) in [
            ("10.0.0.1:40000", "10.0.0.2:80"),
            ("[fd00::1]:40000", "[fd00::2]:80"),
        ] {
            let (from, to): (SocketAddr, SocketAddr) = (from.parse().unwrap(), to.parse().unwrap());
            let packet = Tcp {
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
            let bare = without_payload(&packet, seg.header_offset);
            assert_eq!(bare.len(), packet.len() - 300);
            let v = crate::wire::TcpView::parse(&bare).unwrap();
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

    #[test]
    fn built_segments_reach_the_peer_intact() {
        for (local, remote) in [
            ("10.0.0.2:80", "10.0.0.1:40000"),
            ("[fd00::2]:80", "[fd00::1]:40000"),
        ] {
            let (local, remote): (SocketAddr, SocketAddr) =
                (local.parse().unwrap(), remote.parse().unwrap());
            let key = FlowKey::new(Protocol::Tcp, local, remote);
            let fin = Segment {
                seq: 0xffff_fff0,
                ack: 77,
                control: TcpControl::Fin,
                window: 1234,
            };
            let packet = fin.build(&key);
            // The peer's demux checks lengths and checksums.
            let Ok(Class::Tcp { key: seen, seg }) = classify(&packet, &Peer(remote.ip())) else {
                panic!("{local}: not a valid TCP segment");
            };
            assert_eq!((seen.local, seen.remote), (remote, local));
            assert_eq!((seg.seq, seg.ack_number), (0xffff_fff0, 77));
            assert!(seg.ack && seg.fin && !seg.syn && !seg.rst && seg.len == 0);
            assert_eq!(tcp_ack_number(&packet), Some(77));
            let plain = without_fin(&packet, seg.header_offset);
            assert_eq!(plain[seg.header_offset as usize + 13], 0x10, "ACK only");
        }
    }
}
