//! Packet classification: raw IP bytes in, a small [`Class`] out.
//!
//! This is the one place a packet from the wire is parsed (with
//! etherparse) and checked before anything trusts it: lengths, header
//! fields, checksums (IPv4 header, TCP, UDP, ICMP, ICMPv6), source
//! sanity. What fails has a [`DropReason`] that the stack counts; what
//! passes is reduced to
//! the flow key and the few TCP fields the stack needs to route it, so no
//! later stage walks the headers again to find its connection.

use std::net::{IpAddr, SocketAddr};

use etherparse::{IpNumber, NetSlice, SlicedPacket, TransportSlice};
use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket, UdpPacket};

use crate::port_table::{FlowKey, Protocol};
use crate::wire::{checksum, protocol};

/// The TCP fields demultiplexing and TIME-WAIT handling look at.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct TcpSeg {
    /// SEG.SEQ.
    pub seq: u32,
    /// SEG.ACK (meaningful only with `ack` set).
    pub ack_number: u32,
    /// SYN flag.
    pub syn: bool,
    /// ACK flag.
    pub ack: bool,
    /// RST flag.
    pub rst: bool,
    /// FIN flag.
    pub fin: bool,
    /// Payload length in octets.
    pub len: u32,
    /// Offset of the TCP header in the packet.
    pub header_offset: u16,
}

impl TcpSeg {
    /// A connection request: SYN without ACK, RST or FIN.
    pub(crate) fn is_initial_syn(&self) -> bool {
        self.syn && !self.ack && !self.rst && !self.fin
    }
}

/// An ICMP error's meaning for the connection it names.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum IcmpError {
    /// Port or protocol unreachable, or administratively prohibited: the
    /// peer refused (RFC 1122 §4.2.3.9 treats these as hard errors).
    Refused,
    /// Network/host unreachable, time exceeded, and the like: transient,
    /// reported but not fatal for an established connection.
    Soft,
}

/// What a packet is, once checked.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// A TCP segment for `key` (local = destination of the packet).
    Tcp {
        /// The 4-tuple, seen from our side.
        key: FlowKey,
        /// Its header fields.
        seg: TcpSeg,
    },
    /// A UDP datagram for `key`.
    Udp {
        /// The 4-tuple, seen from our side.
        key: FlowKey,
        /// Payload octets.
        len: usize,
    },
    /// An ICMP error about a packet we sent on flow `key`.
    IcmpError {
        /// The flow named inside the error, seen from our side.
        key: FlowKey,
        /// How serious it is.
        error: IcmpError,
        /// For TCP, SEG.SEQ of the quoted segment, if the quote reaches
        /// it (RFC 792 quotes 8 octets, RFC 1812 as many as fit).
        seq: Option<u32>,
    },
    /// Any other ICMP message (echo request, …): smoltcp answers it.
    Icmp,
    /// Another transport protocol: smoltcp answers "protocol unreachable".
    OtherProtocol,
}

/// Why a packet was dropped before reaching any socket; each has a counter.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum DropReason {
    /// Truncated, or header fields that lie about lengths.
    Malformed,
    /// IPv4 header, TCP, UDP, ICMP or ICMPv6 checksum wrong.
    BadChecksum,
    /// An IP fragment: ephemera does not reassemble.
    Fragment,
    /// IPv4 options present (source routing and friends; RFC 7126).
    IpOptions,
    /// Destination is not one of our addresses.
    NotForUs,
    /// Source is unspecified, multicast, broadcast, loopback or ours.
    MartianSource,
    /// Source equals destination (the "land" attack).
    Land,
    /// TCP or UDP port 0 on either side.
    PortZero,
}

/// Our addresses, as demultiplexing needs them.
pub(crate) trait LocalAddrs {
    /// Whether `ip` is one of ours.
    fn is_local(&self, ip: IpAddr) -> bool;
    /// Whether `ip` is a broadcast address of one of our IPv4 subnets.
    fn is_subnet_broadcast(&self, ip: IpAddr) -> bool;
}

/// Whether [`classify_with`] checks TCP and UDP checksums.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Checksums {
    /// Check them: the packet may have crossed a link.
    Verify,
    /// Take them as right: the device vouches for the packet (a TUN's
    /// receive offload for what the kernel built or checked; see
    /// docs/architecture.md). The IPv4 header checksum is still checked.
    Vouched,
}

/// Check and classify one IP packet, checksums included (the tests'
/// shorthand for [`classify_with`]).
#[cfg(test)]
pub(crate) fn classify(packet: &[u8], addrs: &impl LocalAddrs) -> Result<Class, DropReason> {
    classify_with(packet, addrs, Checksums::Verify)
}

/// Check and classify one IP packet, its TCP and UDP checksums checked
/// or not.
pub(crate) fn classify_with(
    packet: &[u8],
    addrs: &impl LocalAddrs,
    checksums: Checksums,
) -> Result<Class, DropReason> {
    let verify = checksums == Checksums::Verify;
    let sliced = SlicedPacket::from_ip(packet).map_err(|_| DropReason::Malformed)?;
    let (src, dst, fragmented) = match &sliced.net {
        Some(NetSlice::Ipv4(v4)) => {
            let h = v4.header();
            if h.ihl() > 5 {
                return Err(DropReason::IpOptions);
            }
            // etherparse checks lengths, not the header checksum.
            if !Ipv4Packet::new_unchecked(h.slice()).verify_checksum() {
                return Err(DropReason::BadChecksum);
            }
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                v4.is_payload_fragmented(),
            )
        }
        Some(NetSlice::Ipv6(v6)) => {
            let h = v6.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                v6.is_payload_fragmented(),
            )
        }
        None => return Err(DropReason::Malformed),
    };
    if fragmented {
        return Err(DropReason::Fragment);
    }
    if !addrs.is_local(dst) {
        return Err(DropReason::NotForUs);
    }
    if src == dst {
        return Err(DropReason::Land);
    }
    if is_martian(src) || addrs.is_local(src) || addrs.is_subnet_broadcast(src) {
        return Err(DropReason::MartianSource);
    }
    let ip_payload = sliced
        .net
        .as_ref()
        .and_then(|n| n.ip_payload_ref())
        .ok_or(DropReason::Malformed)?;
    let (s, d) = (IpAddress::from(src), IpAddress::from(dst));
    match sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            if verify && !TcpPacket::new_unchecked(ip_payload.payload).verify_checksum(&s, &d) {
                return Err(DropReason::BadChecksum);
            }
            if tcp.source_port() == 0 || tcp.destination_port() == 0 {
                return Err(DropReason::PortZero);
            }
            Ok(Class::Tcp {
                key: FlowKey::new(
                    Protocol::Tcp,
                    SocketAddr::new(dst, tcp.destination_port()),
                    SocketAddr::new(src, tcp.source_port()),
                ),
                seg: TcpSeg {
                    seq: tcp.sequence_number(),
                    ack_number: tcp.acknowledgment_number(),
                    syn: tcp.syn(),
                    ack: tcp.ack(),
                    rst: tcp.rst(),
                    fin: tcp.fin(),
                    len: tcp.payload().len() as u32,
                    header_offset: (tcp.slice().as_ptr() as usize - packet.as_ptr() as usize)
                        as u16,
                },
            })
        }
        Some(TransportSlice::Udp(udp)) => {
            // A zero UDP checksum over IPv4 means "not computed" (RFC 768).
            let skip = !verify || src.is_ipv4() && udp.checksum() == 0;
            if !skip && !UdpPacket::new_unchecked(ip_payload.payload).verify_checksum(&s, &d) {
                return Err(DropReason::BadChecksum);
            }
            if udp.source_port() == 0 || udp.destination_port() == 0 {
                return Err(DropReason::PortZero);
            }
            Ok(Class::Udp {
                key: FlowKey::new(
                    Protocol::Udp,
                    SocketAddr::new(dst, udp.destination_port()),
                    SocketAddr::new(src, udp.source_port()),
                ),
                len: udp.payload().len(),
            })
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            if checksum::fold(checksum::sum(0, icmp.slice())) != 0xffff {
                return Err(DropReason::BadChecksum);
            }
            // Type 3 destination unreachable, 11 time exceeded.
            let error = match (icmp.type_u8(), icmp.code_u8()) {
                (3, 2 | 3 | 9 | 10 | 13) => Some(IcmpError::Refused),
                (3, _) | (11, _) => Some(IcmpError::Soft),
                _ => None,
            };
            Ok(icmp_error(error, icmp.payload(), dst).unwrap_or(Class::Icmp))
        }
        Some(TransportSlice::Icmpv6(icmp)) => {
            if !checksum::verify_transport(src, dst, protocol::ICMPV6, icmp.slice()) {
                return Err(DropReason::BadChecksum);
            }
            // Type 1 destination unreachable (code 1 prohibited, 4 port
            // unreachable), 3 time exceeded.
            let error = match (icmp.type_u8(), icmp.code_u8()) {
                (1, 1 | 4) => Some(IcmpError::Refused),
                (1, _) | (3, _) => Some(IcmpError::Soft),
                _ => None,
            };
            Ok(icmp_error(error, icmp.payload(), dst).unwrap_or(Class::Icmp))
        }
        None => match ip_payload.ip_number {
            IpNumber::TCP | IpNumber::UDP | IpNumber::ICMP | IpNumber::IPV6_ICMP => {
                Err(DropReason::Malformed)
            }
            _ => Ok(Class::OtherProtocol),
        },
    }
}

/// The flow an ICMP error is about: the quoted packet was sent by us, so
/// its source is our side. Quoted packets are often cut short, so only the
/// first eight transport octets (the ports) are required.
fn icmp_error(error: Option<IcmpError>, quoted: &[u8], our_dst: IpAddr) -> Option<Class> {
    let error = error?;
    let (src, dst, proto, rest) = match quoted.first()? >> 4 {
        4 => {
            let h = etherparse::Ipv4HeaderSlice::from_slice(quoted).ok()?;
            let hl = h.slice().len();
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                h.protocol(),
                &quoted[hl..],
            )
        }
        6 => {
            let h = etherparse::Ipv6HeaderSlice::from_slice(quoted).ok()?;
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                h.next_header(),
                &quoted[40..],
            )
        }
        _ => return None,
    };
    if src != our_dst || rest.len() < 4 {
        return None;
    }
    let proto = match proto {
        IpNumber::TCP => Protocol::Tcp,
        IpNumber::UDP => Protocol::Udp,
        _ => return None,
    };
    let sport = u16::from_be_bytes([rest[0], rest[1]]);
    let dport = u16::from_be_bytes([rest[2], rest[3]]);
    let seq = match (proto, rest.get(4..8)) {
        (Protocol::Tcp, Some(s)) => Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]])),
        _ => None,
    };
    Some(Class::IcmpError {
        key: FlowKey::new(
            proto,
            SocketAddr::new(src, sport),
            SocketAddr::new(dst, dport),
        ),
        error,
        seq,
    })
}

fn is_martian(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.is_loopback()
        }
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast() || v6.is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    struct Ours;
    impl LocalAddrs for Ours {
        fn is_local(&self, ip: IpAddr) -> bool {
            ip == "10.0.0.1".parse::<IpAddr>().unwrap()
                || ip == "fd00::1".parse::<IpAddr>().unwrap()
        }
        fn is_subnet_broadcast(&self, ip: IpAddr) -> bool {
            ip == "10.0.0.255".parse::<IpAddr>().unwrap()
        }
    }

    fn tcp_v4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv4(src, dst, 64)
            .tcp(sport, dport, 1000, 4096)
            .syn();
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn a_syn_is_keyed_from_our_side() {
        let p = tcp_v4([10, 0, 0, 2], [10, 0, 0, 1], 40000, 80, b"");
        let Ok(Class::Tcp { key, seg }) = classify(&p, &Ours) else {
            panic!("not tcp")
        };
        assert_eq!(key.local, "10.0.0.1:80".parse().unwrap());
        assert_eq!(key.remote, "10.0.0.2:40000".parse().unwrap());
        assert!(seg.is_initial_syn());
        assert_eq!(seg.seq, 1000);
    }

    #[test]
    fn udp_over_ipv6_is_classified() {
        let b = PacketBuilder::ipv6(
            "fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            64,
        )
        .udp(5000, 53);
        let mut p = Vec::new();
        b.write(&mut p, b"hi").unwrap();
        let Ok(Class::Udp { key, len: 2 }) = classify(&p, &Ours) else {
            panic!()
        };
        assert_eq!(key.local, "[fd00::1]:53".parse().unwrap());
    }

    #[test]
    fn bad_packets_are_named() {
        let good = tcp_v4([10, 0, 0, 2], [10, 0, 0, 1], 40000, 80, b"data");
        let mut bad_sum = good.clone();
        *bad_sum.last_mut().unwrap() ^= 0xff;
        let mut bad_ip_sum = good.clone();
        bad_ip_sum[10] ^= 0xff;
        let mut frag = good.clone();
        frag[6] = 0x20; // more fragments
        Ipv4Packet::new_unchecked(&mut frag[..]).fill_checksum();
        let cases: Vec<(&str, Vec<u8>, DropReason)> = vec![
            ("empty", vec![], DropReason::Malformed),
            ("truncated", good[..30].to_vec(), DropReason::Malformed),
            ("bad tcp checksum", bad_sum, DropReason::BadChecksum),
            ("bad ip checksum", bad_ip_sum, DropReason::BadChecksum),
            ("fragment", frag, DropReason::Fragment),
            (
                "not ours",
                tcp_v4([10, 0, 0, 2], [10, 0, 0, 7], 1, 80, b""),
                DropReason::NotForUs,
            ),
            (
                "land",
                tcp_v4([10, 0, 0, 1], [10, 0, 0, 1], 80, 80, b""),
                DropReason::Land,
            ),
            (
                "broadcast src",
                tcp_v4([10, 0, 0, 255], [10, 0, 0, 1], 1, 80, b""),
                DropReason::MartianSource,
            ),
            (
                "multicast src",
                tcp_v4([224, 0, 0, 1], [10, 0, 0, 1], 1, 80, b""),
                DropReason::MartianSource,
            ),
            (
                "port zero",
                tcp_v4([10, 0, 0, 2], [10, 0, 0, 1], 0, 80, b""),
                DropReason::PortZero,
            ),
        ];
        for (name, p, want) in cases {
            assert_eq!(classify(&p, &Ours), Err(want), "{name}");
        }
    }

    #[test]
    fn vouched_packets_skip_only_the_transport_checksum() {
        let good = tcp_v4([10, 0, 0, 2], [10, 0, 0, 1], 40000, 80, b"data");
        let mut partial = good.clone();
        partial[36..38].copy_from_slice(&[0x12, 0x34]);
        assert_eq!(classify(&partial, &Ours), Err(DropReason::BadChecksum));
        let vouched = classify_with(&partial, &Ours, Checksums::Vouched);
        assert_eq!(vouched, classify(&good, &Ours));
        let b = PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64).udp(5000, 53);
        let mut udp = Vec::new();
        b.write(&mut udp, b"hi").unwrap();
        udp[26] ^= 0xff;
        assert_eq!(classify(&udp, &Ours), Err(DropReason::BadChecksum));
        assert!(matches!(
            classify_with(&udp, &Ours, Checksums::Vouched),
            Ok(Class::Udp { .. })
        ));
        // The IPv4 header checksum is still the packet's own to get right.
        let mut bad_ip = good.clone();
        bad_ip[10] ^= 0xff;
        assert_eq!(
            classify_with(&bad_ip, &Ours, Checksums::Vouched),
            Err(DropReason::BadChecksum)
        );
    }

    #[test]
    fn icmp_port_unreachable_names_our_flow() {
        // We (10.0.0.1:50000) sent UDP to 10.0.0.2:9; it answers unreachable.
        let mut quoted = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(50000, 9)
            .write(&mut quoted, b"x")
            .unwrap();
        let mut p = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut p, &quoted)
            .unwrap();
        assert_eq!(
            classify(&p, &Ours),
            Ok(Class::IcmpError {
                key: FlowKey::new(
                    Protocol::Udp,
                    "10.0.0.1:50000".parse().unwrap(),
                    "10.0.0.2:9".parse().unwrap()
                ),
                error: IcmpError::Refused,
                seq: None,
            })
        );
        // A wrong ICMP checksum: dropped before anything believes it.
        let at = p.len() - quoted.len() - 6;
        p[at] ^= 1;
        assert_eq!(classify(&p, &Ours), Err(DropReason::BadChecksum));
    }

    #[test]
    fn icmpv6_errors_are_checksummed_and_tcp_quotes_give_their_sequence_number() {
        use crate::wire::build::{Icmp, Tcp};
        let (us, them): (SocketAddr, SocketAddr) = (
            "[fd00::1]:40000".parse().unwrap(),
            "[fd00::2]:80".parse().unwrap(),
        );
        let syn = Tcp {
            seq: 0xfeed_f00d,
            flags: crate::wire::TcpFlags::SYN,
            ..Default::default()
        }
        .packet(us, them);
        let error = |quote: &[u8], checksum| {
            Icmp {
                ty: 1,
                code: 4,
                body: quote,
                checksum,
                ..Default::default()
            }
            .packet(them.ip(), us.ip())
        };
        let key = FlowKey::new(Protocol::Tcp, us, them);
        use crate::wire::build::Checksum;
        assert_eq!(
            classify(&error(&syn[..48], Checksum::Valid), &Ours),
            Ok(Class::IcmpError {
                key,
                error: IcmpError::Refused,
                seq: Some(0xfeed_f00d),
            })
        );
        // Only the ports quoted: no sequence number to check.
        assert_eq!(
            classify(&error(&syn[..44], Checksum::Valid), &Ours),
            Ok(Class::IcmpError {
                key,
                error: IcmpError::Refused,
                seq: None,
            })
        );
        assert_eq!(
            classify(&error(&syn[..48], Checksum::Wrong), &Ours),
            Err(DropReason::BadChecksum)
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = crate::rng::SeededRng::new(3);
        use crate::rng::Rng;
        let seed = tcp_v4([10, 0, 0, 2], [10, 0, 0, 1], 40000, 80, b"payload");
        for _ in 0..20_000 {
            let mut p = seed.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(p.len() as u64) as usize;
                p[i] = rng.next_u64() as u8;
            }
            p.truncate(rng.below(p.len() as u64 + 1) as usize);
            let _ = classify(&p, &Ours);
        }
    }
}
