//! Hand-rolled packet building for the fuzzers and the seed-corpus
//! generator: IPv4 and IPv6 (with extension headers) around TCP, UDP and
//! ICMP, with correct checksums unless told otherwise. Written by hand, not
//! with a library builder, so that options, lengths and flags can be
//! anything at all — including wrong.

use std::net::{IpAddr, SocketAddr};

/// TCP flag bits (RFC 9293 §3.1).
pub mod flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer field is significant.
    pub const URG: u8 = 0x20;
}

/// IP protocol numbers used here.
pub mod proto {
    /// IPv6 hop-by-hop options.
    pub const HOP_BY_HOP: u8 = 0;
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 destination options.
    pub const DEST_OPTS: u8 = 60;
}

/// The ones'-complement sum of `data` added to `sum` (RFC 1071), not yet
/// folded.
pub fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
        // Fold early so the sum never overflows.
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [b] = chunks.remainder() {
        sum += (*b as u32) << 8;
    }
    sum
}

/// Fold and complement a [`sum16`].
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The pseudo-header sum for a transport checksum (RFC 9293 §3.1,
/// RFC 8200 §8.1).
pub fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut s = 0;
    match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            s = sum16(s, &a.octets());
            s = sum16(s, &b.octets());
        }
        (a, b) => {
            s = sum16(s, &v6(a));
            s = sum16(s, &v6(b));
        }
    }
    s + proto as u32 + (len as u32 & 0xffff) + (len as u32 >> 16)
}

fn v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// A TCP segment's fields; `options` is copied raw (padded with zeros to a
/// multiple of four, cut at 40 octets).
#[derive(Clone, Debug, Default)]
pub struct Tcp<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// SEG.SEQ.
    pub seq: u32,
    /// SEG.ACK.
    pub ack: u32,
    /// Flag bits ([`flags`]).
    pub flags: u8,
    /// SEG.WND.
    pub window: u16,
    /// Urgent pointer.
    pub urgent: u16,
    /// Raw option bytes.
    pub options: &'a [u8],
    /// Data offset to write instead of the true one (lying headers).
    pub data_offset: Option<u8>,
    /// Payload.
    pub payload: &'a [u8],
}

impl Tcp<'_> {
    /// The segment's bytes with its checksum for `src` → `dst`.
    pub fn build(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let opts = &self.options[..self.options.len().min(40)];
        let hl = 20 + opts.len().div_ceil(4) * 4;
        let mut b = vec![0u8; hl];
        b[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        b[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        b[4..8].copy_from_slice(&self.seq.to_be_bytes());
        b[8..12].copy_from_slice(&self.ack.to_be_bytes());
        let off = self.data_offset.unwrap_or((hl / 4) as u8);
        b[12] = off << 4;
        b[13] = self.flags;
        b[14..16].copy_from_slice(&self.window.to_be_bytes());
        b[18..20].copy_from_slice(&self.urgent.to_be_bytes());
        b[20..20 + opts.len()].copy_from_slice(opts);
        b.extend_from_slice(self.payload);
        set_transport_checksum(&mut b, 16, src, dst, proto::TCP);
        b
    }
}

/// A UDP datagram with its checksum (or 0, "none", if `zero_checksum`).
pub fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8], zero_checksum: bool) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&src.port().to_be_bytes());
    b.extend_from_slice(&dst.port().to_be_bytes());
    b.extend_from_slice(&(len as u16).to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(payload);
    if !zero_checksum {
        set_transport_checksum(&mut b, 6, src.ip(), dst.ip(), proto::UDP);
        if b[6..8] == [0, 0] {
            b[6..8].copy_from_slice(&[0xff, 0xff]);
        }
    }
    b
}

/// An ICMP (v4) or ICMPv6 message with its checksum.
pub fn icmp(src: IpAddr, dst: IpAddr, ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut b = vec![ty, code, 0, 0];
    b.extend_from_slice(&rest);
    b.extend_from_slice(body);
    let sum = if src.is_ipv4() {
        sum16(0, &b)
    } else {
        sum16(pseudo(src, dst, proto::ICMPV6, b.len()), &b)
    };
    let c = fold(sum);
    b[2..4].copy_from_slice(&c.to_be_bytes());
    b
}

fn set_transport_checksum(b: &mut [u8], at: usize, src: IpAddr, dst: IpAddr, proto: u8) {
    b[at] = 0;
    b[at + 1] = 0;
    let c = fold(sum16(pseudo(src, dst, proto, b.len()), b));
    b[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// IPv4 header fields beyond addresses and protocol.
#[derive(Clone, Debug, Default)]
pub struct V4Opts {
    /// Time to live (0 means 64).
    pub ttl: u8,
    /// Type of service.
    pub tos: u8,
    /// More-fragments flag.
    pub more_fragments: bool,
    /// Don't-fragment flag.
    pub dont_fragment: bool,
    /// Fragment offset in 8-octet units (13 bits).
    pub frag_offset: u16,
    /// Raw IPv4 options (padded to four octets, at most 40).
    pub options: Vec<u8>,
    /// Total length to write instead of the true one.
    pub total_len: Option<u16>,
}

/// An IPv4 packet around `payload`, header checksum included.
pub fn ipv4(src: IpAddr, dst: IpAddr, protocol: u8, o: &V4Opts, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        panic!("ipv4 needs IPv4 addresses")
    };
    let opts = &o.options[..o.options.len().min(40)];
    let hl = 20 + opts.len().div_ceil(4) * 4;
    let mut b = vec![0u8; hl];
    b[0] = 0x40 | (hl / 4) as u8;
    b[1] = o.tos;
    let total = o.total_len.unwrap_or((hl + payload.len()) as u16);
    b[2..4].copy_from_slice(&total.to_be_bytes());
    b[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    let frag = (o.frag_offset & 0x1fff)
        | if o.more_fragments { 0x2000 } else { 0 }
        | if o.dont_fragment { 0x4000 } else { 0 };
    b[6..8].copy_from_slice(&frag.to_be_bytes());
    b[8] = if o.ttl == 0 { 64 } else { o.ttl };
    b[9] = protocol;
    b[12..16].copy_from_slice(&s.octets());
    b[16..20].copy_from_slice(&d.octets());
    b[20..20 + opts.len()].copy_from_slice(opts);
    let c = fold(sum16(0, &b));
    b[10..12].copy_from_slice(&c.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// An IPv6 extension header.
#[derive(Clone, Debug)]
pub enum Ext {
    /// Hop-by-hop options with these option bytes (padded to 8 octets).
    HopByHop(Vec<u8>),
    /// Destination options with these option bytes.
    DestOpts(Vec<u8>),
    /// Routing header of a type with segments left.
    Routing {
        /// Routing type.
        ty: u8,
        /// Segments left.
        segments_left: u8,
    },
    /// Fragment header.
    Fragment {
        /// Offset in 8-octet units (13 bits).
        offset: u16,
        /// More fragments.
        more: bool,
        /// Identification.
        id: u32,
    },
}

impl Ext {
    fn number(&self) -> u8 {
        match self {
            Ext::HopByHop(_) => proto::HOP_BY_HOP,
            Ext::DestOpts(_) => proto::DEST_OPTS,
            Ext::Routing { .. } => proto::ROUTING,
            Ext::Fragment { .. } => proto::FRAGMENT,
        }
    }

    fn emit(&self, next: u8, out: &mut Vec<u8>) {
        match self {
            Ext::HopByHop(opts) | Ext::DestOpts(opts) => {
                let opts = &opts[..opts.len().min(254)];
                let len = (2 + opts.len()).div_ceil(8) * 8;
                out.push(next);
                out.push((len / 8 - 1) as u8);
                out.extend_from_slice(opts);
                // Pad1 options fill the rest.
                out.resize(out.len() + len - 2 - opts.len(), 0);
            }
            Ext::Routing { ty, segments_left } => {
                out.extend_from_slice(&[next, 0, *ty, *segments_left, 0, 0, 0, 0]);
            }
            Ext::Fragment { offset, more, id } => {
                let f = (offset << 3) | u16::from(*more);
                out.extend_from_slice(&[next, 0]);
                out.extend_from_slice(&f.to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
    }
}

/// An IPv6 packet around `payload` (whose protocol is `protocol`), with
/// `exts` in between.
pub fn ipv6(
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    hop_limit: u8,
    exts: &[Ext],
    payload: &[u8],
) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
        panic!("ipv6 needs IPv6 addresses")
    };
    let mut ext_bytes = Vec::new();
    for (i, e) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(protocol, Ext::number);
        e.emit(next, &mut ext_bytes);
    }
    let mut b = vec![0u8; 40];
    b[0] = 0x60;
    let plen = (ext_bytes.len() + payload.len()) as u16;
    b[4..6].copy_from_slice(&plen.to_be_bytes());
    b[6] = exts.first().map_or(protocol, Ext::number);
    b[7] = if hop_limit == 0 { 64 } else { hop_limit };
    b[8..24].copy_from_slice(&s.octets());
    b[24..40].copy_from_slice(&d.octets());
    b.extend_from_slice(&ext_bytes);
    b.extend_from_slice(payload);
    b
}

/// A TCP segment, UDP datagram or ICMP message inside IPv4 or IPv6 with
/// no extension headers and default fields.
pub fn ip(src: IpAddr, dst: IpAddr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    if src.is_ipv4() {
        ipv4(src, dst, protocol, &V4Opts::default(), payload)
    } else {
        ipv6(src, dst, protocol, 64, &[], payload)
    }
}

/// Recompute the IPv4 header checksum and the TCP/UDP/ICMP checksum of a
/// (possibly mutated) packet, where the headers can be followed. Anything
/// else is left as it is.
pub fn fix_checksums(p: &mut [u8]) {
    let Some(&v) = p.first() else { return };
    let (src, dst, mut next, mut at, end): (IpAddr, IpAddr, u8, usize, usize) = match v >> 4 {
        4 => {
            let hl = (v & 0x0f) as usize * 4;
            if hl < 20 || p.len() < hl {
                return;
            }
            p[10] = 0;
            p[11] = 0;
            let c = fold(sum16(0, &p[..hl]));
            p[10..12].copy_from_slice(&c.to_be_bytes());
            let total = u16::from_be_bytes([p[2], p[3]]) as usize;
            let src = IpAddr::from(<[u8; 4]>::try_from(&p[12..16]).unwrap());
            let dst = IpAddr::from(<[u8; 4]>::try_from(&p[16..20]).unwrap());
            (src, dst, p[9], hl, total.clamp(hl, p.len()))
        }
        6 if p.len() >= 40 => {
            let plen = u16::from_be_bytes([p[4], p[5]]) as usize;
            let src = IpAddr::from(<[u8; 16]>::try_from(&p[8..24]).unwrap());
            let dst = IpAddr::from(<[u8; 16]>::try_from(&p[24..40]).unwrap());
            (src, dst, p[6], 40, (40 + plen).min(p.len()))
        }
        _ => return,
    };
    // Walk IPv6 extension headers (bounded: each step moves forward).
    while matches!(
        next,
        proto::HOP_BY_HOP | proto::ROUTING | proto::DEST_OPTS | proto::FRAGMENT
    ) && src.is_ipv6()
    {
        if at + 8 > end {
            return;
        }
        let len = if next == proto::FRAGMENT {
            8
        } else {
            (p[at + 1] as usize + 1) * 8
        };
        next = p[at];
        at += len;
    }
    if at > end {
        return;
    }
    let seg = &mut p[at..end];
    let (sum_at, pseudo_proto) = match next {
        proto::TCP if seg.len() >= 20 => (16, Some(proto::TCP)),
        proto::UDP if seg.len() >= 8 => (6, Some(proto::UDP)),
        proto::ICMP if seg.len() >= 4 && src.is_ipv4() => (2, None),
        proto::ICMPV6 if seg.len() >= 4 => (2, Some(proto::ICMPV6)),
        _ => return,
    };
    seg[sum_at] = 0;
    seg[sum_at + 1] = 0;
    let base = pseudo_proto.map_or(0, |pr| pseudo(src, dst, pr, seg.len()));
    let c = fold(sum16(base, seg));
    seg[sum_at..sum_at + 2].copy_from_slice(&c.to_be_bytes());
}

/// The TCP fields of a packet the stack sent: (source, destination, seq,
/// ack, flags, payload length). `None` for anything else.
pub fn parse_tcp(p: &[u8]) -> Option<(SocketAddr, SocketAddr, u32, u32, u8, usize)> {
    let sliced = etherparse::SlicedPacket::from_ip(p).ok()?;
    let (src, dst) = match sliced.net? {
        etherparse::NetSlice::Ipv4(v4) => (
            IpAddr::V4(v4.header().source_addr()),
            IpAddr::V4(v4.header().destination_addr()),
        ),
        etherparse::NetSlice::Ipv6(v6) => (
            IpAddr::V6(v6.header().source_addr()),
            IpAddr::V6(v6.header().destination_addr()),
        ),
    };
    let etherparse::TransportSlice::Tcp(t) = sliced.transport? else {
        return None;
    };
    let fl = (t.fin() as u8)
        | (t.syn() as u8) << 1
        | (t.rst() as u8) << 2
        | (t.psh() as u8) << 3
        | (t.ack() as u8) << 4;
    Some((
        SocketAddr::new(src, t.source_port()),
        SocketAddr::new(dst, t.destination_port()),
        t.sequence_number(),
        t.acknowledgment_number(),
        fl,
        t.payload().len(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demux::{classify, Class, LocalAddrs};

    struct Ours;
    impl LocalAddrs for Ours {
        fn is_local(&self, ip: IpAddr) -> bool {
            ip == "10.0.0.2".parse::<IpAddr>().unwrap()
                || ip == "fd00::2".parse::<IpAddr>().unwrap()
        }
        fn is_subnet_broadcast(&self, _: IpAddr) -> bool {
            false
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn built_packets_pass_demux_checks() {
        let seg = Tcp {
            src_port: 40000,
            dst_port: 80,
            seq: 7,
            flags: flags::SYN,
            window: 1000,
            options: &[2, 4, 5, 0xb4],
            payload: b"x",
            ..Default::default()
        };
        for (s, d) in [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")] {
            let t = seg.build(ip(s), ip(d));
            let mut p = if s.contains(':') {
                ipv6(
                    ip(s),
                    ip(d),
                    proto::TCP,
                    64,
                    &[Ext::DestOpts(vec![1, 2, 0, 0])],
                    &t,
                )
            } else {
                ipv4(ip(s), ip(d), proto::TCP, &V4Opts::default(), &t)
            };
            assert!(matches!(classify(&p, &Ours), Ok(Class::Tcp { .. })), "{s}");
            // Mutate, then fix: still valid.
            let n = p.len();
            p[n - 1] ^= 0xff;
            assert!(classify(&p, &Ours).is_err());
            fix_checksums(&mut p);
            assert!(matches!(classify(&p, &Ours), Ok(Class::Tcp { .. })), "{s}");
        }
        let u = udp(
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.2:53".parse().unwrap(),
            b"q",
            false,
        );
        let p = super::ip(ip("10.0.0.1"), ip("10.0.0.2"), proto::UDP, &u);
        assert!(matches!(classify(&p, &Ours), Ok(Class::Udp { .. })));
    }
}
