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
use crate::wire::{TcpFlags, TcpView};

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

/// SEG.ACK of a TCP segment with ACK set that smoltcp emitted; `None` for
/// anything else.
pub(crate) fn tcp_ack_number(packet: &[u8]) -> Option<u32> {
    let v = TcpView::parse(packet).ok()?;
    v.flags().ack().then(|| v.ack())
}

/// A copy of `packet`, a TCP segment demultiplexing accepted, with the FIN
/// flag cleared (and the checksum updated with it).
pub(crate) fn without_fin(packet: &[u8]) -> Vec<u8> {
    let mut p = packet.to_vec();
    if let Ok(mut v) = TcpView::parse(&mut p[..]) {
        let flags = v.flags();
        v.set_flags(flags & !TcpFlags::FIN);
    }
    p
}

/// A copy of `packet`, a TCP segment demultiplexing accepted, with SEG.SEQ
/// set to `seq` (and the checksum updated with it).
pub(crate) fn with_seq(packet: &[u8], seq: u32) -> Vec<u8> {
    let mut p = packet.to_vec();
    if let Ok(mut v) = TcpView::parse(&mut p[..]) {
        v.set_seq(seq);
    }
    p
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpProtocol, IpRepr, TcpPacket, TcpRepr, TcpSeqNumber};

    use super::*;
    use crate::demux::{classify, Class, LocalAddrs};
    use crate::port_table::Protocol;
    use crate::wire::build::{Ipv4, Ipv6};
    use crate::wire::protocol;

    #[test]
    fn ack_number_of_emitted_segments() {
        let (a, b) = ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
        let seg = |flags| {
            Tcp {
                ack: 0xdead_beef,
                flags,
                ..Default::default()
            }
            .atomic_packet(a, b)
        };
        assert_eq!(tcp_ack_number(&seg(TcpFlags::NONE)), None, "ACK flag clear");
        assert_eq!(tcp_ack_number(&seg(TcpFlags::ACK)), Some(0xdead_beef));
        let udp = Ipv4::default().packet(a.ip(), b.ip(), protocol::UDP, &[0; 8]);
        assert_eq!(tcp_ack_number(&udp), None, "UDP");

        let (a, b): (SocketAddr, SocketAddr) = (
            "[fd00::1]:1".parse().unwrap(),
            "[fd00::2]:2".parse().unwrap(),
        );
        let v6 = Tcp {
            ack: 7,
            flags: TcpFlags::ACK | TcpFlags::PSH,
            ..Default::default()
        }
        .segment(a, b);
        let v6 = Ipv6::default().packet(a.ip(), b.ip(), protocol::TCP, &v6);
        assert_eq!(tcp_ack_number(&v6), Some(7));
        assert_eq!(tcp_ack_number(&v6[..50]), None, "truncated");
        assert_eq!(tcp_ack_number(&[]), None);
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
                assert_eq!(tcp_ack_number(&packet), Some(77));
                let plain = without_fin(&packet);
                let v = TcpView::parse(&plain[..]).unwrap();
                assert_eq!(v.flags(), TcpFlags::ACK, "ACK only");
                assert!(v.verify_checksum());
            }
        }
    }
}
