//! The one packet builder of ephemera: IPv4 and IPv6 (with extension
//! headers) around TCP, UDP and ICMP, with correct checksums unless told
//! otherwise. The stack builds the segments it sends itself with it
//! ([`Tcp::atomic_packet`]), and so do the tests, the fuzz targets and the
//! benchmarks.
//!
//! Written by hand rather than with a library builder, so that options,
//! lengths, flags and checksums can be anything at all, including wrong:
//! [`Tcp::data_offset`], [`Ipv4::total_len`], [`Ipv6::payload_len`] and
//! every `checksum` field ([`Checksum`]) are the hooks for deliberate
//! corruption, and [`fix_checksums`] makes a packet mutated byte by byte
//! consistent again.
//!
//! ```
//! use ephemera::wire::build::{Tcp, TcpOpt, tcp_options};
//! use ephemera::wire::{TcpFlags, TcpView};
//!
//! let options = tcp_options(&[TcpOpt::Mss(1460), TcpOpt::SackPermitted]);
//! let syn = Tcp {
//!     seq: 1000,
//!     flags: TcpFlags::SYN,
//!     window: 65535,
//!     options: &options,
//!     ..Default::default()
//! }
//! .packet("10.0.0.1:40000".parse()?, "10.0.0.2:80".parse()?);
//! let view = TcpView::parse(&syn[..])?;
//! assert_eq!((view.seq(), view.mss()), (1000, Some(1460)));
//! assert!(view.verify_checksum());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::{IpAddr, SocketAddr};

use super::checksum;
use super::protocol;
use super::tcp::{SackBlock, TcpFlags};

/// What to write in a checksum field.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Checksum {
    /// The right value.
    #[default]
    Valid,
    /// The right value with its lowest bit flipped: wrong for sure (an
    /// all-ones complement would be the equivalent -0 or +0).
    Wrong,
    /// This value. `Value(0)` in UDP over IPv4 means "no checksum".
    Value(u16),
}

impl Checksum {
    fn apply(self, valid: u16) -> u16 {
        match self {
            Checksum::Valid => valid,
            Checksum::Wrong => valid ^ 1,
            Checksum::Value(v) => v,
        }
    }
}

/// A TCP option for [`tcp_options`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TcpOpt<'a> {
    /// End of option list (one octet).
    End,
    /// No-operation (one octet).
    Nop,
    /// Maximum segment size.
    Mss(u16),
    /// Window scale shift count.
    WindowScale(u8),
    /// SACK permitted.
    SackPermitted,
    /// SACK blocks (the length octet says `2 + 8 * n`, whatever `n` is).
    Sack(&'a [SackBlock]),
    /// Timestamps.
    Timestamp {
        /// TSval.
        tsval: u32,
        /// TSecr.
        tsecr: u32,
    },
    /// These octets as they are (kind, a length that may lie, data).
    Raw(&'a [u8]),
}

/// The octets of `opts`, in order, unpadded.
pub fn tcp_options(opts: &[TcpOpt<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for o in opts {
        match *o {
            TcpOpt::End => out.push(0),
            TcpOpt::Nop => out.push(1),
            TcpOpt::Mss(m) => {
                out.extend_from_slice(&[2, 4]);
                out.extend_from_slice(&m.to_be_bytes());
            }
            TcpOpt::WindowScale(s) => out.extend_from_slice(&[3, 3, s]),
            TcpOpt::SackPermitted => out.extend_from_slice(&[4, 2]),
            TcpOpt::Sack(blocks) => {
                out.extend_from_slice(&[5, (2 + 8 * blocks.len()) as u8]);
                for b in blocks {
                    out.extend_from_slice(&b.left.to_be_bytes());
                    out.extend_from_slice(&b.right.to_be_bytes());
                }
            }
            TcpOpt::Timestamp { tsval, tsecr } => {
                out.extend_from_slice(&[8, 10]);
                out.extend_from_slice(&tsval.to_be_bytes());
                out.extend_from_slice(&tsecr.to_be_bytes());
            }
            TcpOpt::Raw(r) => out.extend_from_slice(r),
        }
    }
    out
}

/// A TCP segment's fields; the ports come from the addresses it is built
/// for.
#[derive(Clone, Debug, Default)]
pub struct Tcp<'a> {
    /// SEG.SEQ.
    pub seq: u32,
    /// SEG.ACK.
    pub ack: u32,
    /// The flag octet.
    pub flags: TcpFlags,
    /// SEG.WND.
    pub window: u16,
    /// Urgent pointer.
    pub urgent: u16,
    /// Option octets ([`tcp_options`]), padded with zeros to a multiple of
    /// four and cut at 40.
    pub options: &'a [u8],
    /// A data offset (in words, 4 bits) to claim instead of the true one.
    pub data_offset: Option<u8>,
    /// The checksum to write.
    pub checksum: Checksum,
    /// Payload.
    pub payload: &'a [u8],
}

impl Tcp<'_> {
    /// The segment (TCP header and payload) from `src` to `dst`.
    pub fn segment(&self, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        let opts = &self.options[..self.options.len().min(40)];
        let hl = 20 + opts.len().div_ceil(4) * 4;
        let mut b = vec![0u8; hl];
        b[0..2].copy_from_slice(&src.port().to_be_bytes());
        b[2..4].copy_from_slice(&dst.port().to_be_bytes());
        b[4..8].copy_from_slice(&self.seq.to_be_bytes());
        b[8..12].copy_from_slice(&self.ack.to_be_bytes());
        let off = self.data_offset.unwrap_or((hl / 4) as u8);
        b[12] = off << 4;
        b[13] = self.flags.bits();
        b[14..16].copy_from_slice(&self.window.to_be_bytes());
        b[18..20].copy_from_slice(&self.urgent.to_be_bytes());
        b[20..20 + opts.len()].copy_from_slice(opts);
        b.extend_from_slice(self.payload);
        let c = checksum::transport(src.ip(), dst.ip(), protocol::TCP, &b);
        b[16..18].copy_from_slice(&self.checksum.apply(c).to_be_bytes());
        b
    }

    /// The segment in an IP packet of the addresses' family, default IP
    /// fields ([`ip`]).
    pub fn packet(&self, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        ip(src.ip(), dst.ip(), protocol::TCP, &self.segment(src, dst))
    }

    /// The segment in an IP packet as a TCP stack sends it ([`atomic`]).
    pub fn atomic_packet(&self, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        atomic(src.ip(), dst.ip(), protocol::TCP, &self.segment(src, dst))
    }
}

/// A UDP datagram's fields; the ports come from the addresses.
#[derive(Clone, Debug, Default)]
pub struct Udp<'a> {
    /// Payload.
    pub payload: &'a [u8],
    /// The checksum to write. A valid checksum that computes to 0 is sent
    /// as 0xffff (RFC 768).
    pub checksum: Checksum,
    /// A length to claim instead of the true one.
    pub length: Option<u16>,
}

impl Udp<'_> {
    /// The datagram (UDP header and payload) from `src` to `dst`.
    pub fn datagram(&self, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        let len = 8 + self.payload.len();
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(&src.port().to_be_bytes());
        b.extend_from_slice(&dst.port().to_be_bytes());
        b.extend_from_slice(&self.length.unwrap_or(len as u16).to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(self.payload);
        let c = match checksum::transport(src.ip(), dst.ip(), protocol::UDP, &b) {
            0 => 0xffff,
            c => c,
        };
        b[6..8].copy_from_slice(&self.checksum.apply(c).to_be_bytes());
        b
    }

    /// The datagram in an IP packet of the addresses' family, default IP
    /// fields ([`ip`]).
    pub fn packet(&self, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        ip(src.ip(), dst.ip(), protocol::UDP, &self.datagram(src, dst))
    }
}

/// An ICMP (IPv4) or ICMPv6 message, by the family of its addresses.
#[derive(Clone, Debug, Default)]
pub struct Icmp<'a> {
    /// Type (3 destination unreachable, 11 time exceeded; ICMPv6: 1, 3).
    pub ty: u8,
    /// Code.
    pub code: u8,
    /// The four octets after the checksum (unused, pointer, MTU, …).
    pub rest: [u8; 4],
    /// The body: for an error, the packet it quotes.
    pub body: &'a [u8],
    /// The checksum to write.
    pub checksum: Checksum,
}

impl Icmp<'_> {
    /// The message from `src` to `dst` (ICMPv6 sums a pseudo-header).
    pub fn message(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let mut b = vec![self.ty, self.code, 0, 0];
        b.extend_from_slice(&self.rest);
        b.extend_from_slice(self.body);
        let c = if src.is_ipv4() {
            checksum::checksum(&b)
        } else {
            checksum::transport(src, dst, protocol::ICMPV6, &b)
        };
        b[2..4].copy_from_slice(&self.checksum.apply(c).to_be_bytes());
        b
    }

    /// The message in an IP packet, default IP fields ([`ip`]).
    pub fn packet(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let p = if src.is_ipv4() {
            protocol::ICMP
        } else {
            protocol::ICMPV6
        };
        ip(src, dst, p, &self.message(src, dst))
    }
}

/// IPv4 header fields beyond addresses and protocol.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    /// Time to live.
    pub ttl: u8,
    /// Type of service (DSCP and ECN).
    pub tos: u8,
    /// Identification.
    pub id: u16,
    /// Don't-fragment flag.
    pub dont_fragment: bool,
    /// More-fragments flag.
    pub more_fragments: bool,
    /// Fragment offset in 8-octet units (13 bits).
    pub frag_offset: u16,
    /// Raw IPv4 options (padded with zeros to four octets, at most 40).
    pub options: Vec<u8>,
    /// A total length to claim instead of the true one.
    pub total_len: Option<u16>,
    /// The header checksum to write.
    pub checksum: Checksum,
}

impl Default for Ipv4 {
    /// TTL 64, identification 0x1234, no flags, no options.
    fn default() -> Ipv4 {
        Ipv4 {
            ttl: 64,
            tos: 0,
            id: 0x1234,
            dont_fragment: false,
            more_fragments: false,
            frag_offset: 0,
            options: Vec::new(),
            total_len: None,
            checksum: Checksum::Valid,
        }
    }
}

impl Ipv4 {
    /// An IPv4 packet around `payload`.
    ///
    /// # Panics
    /// If `src` or `dst` is not an IPv4 address.
    pub fn packet(&self, src: IpAddr, dst: IpAddr, protocol: u8, payload: &[u8]) -> Vec<u8> {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
            panic!("an IPv4 packet needs IPv4 addresses, not {src} and {dst}")
        };
        let opts = &self.options[..self.options.len().min(40)];
        let hl = 20 + opts.len().div_ceil(4) * 4;
        let mut b = vec![0u8; hl];
        b[0] = 0x40 | (hl / 4) as u8;
        b[1] = self.tos;
        let total = self.total_len.unwrap_or((hl + payload.len()) as u16);
        b[2..4].copy_from_slice(&total.to_be_bytes());
        b[4..6].copy_from_slice(&self.id.to_be_bytes());
        let frag = (self.frag_offset & 0x1fff)
            | if self.more_fragments { 0x2000 } else { 0 }
            | if self.dont_fragment { 0x4000 } else { 0 };
        b[6..8].copy_from_slice(&frag.to_be_bytes());
        b[8] = self.ttl;
        b[9] = protocol;
        b[12..16].copy_from_slice(&s.octets());
        b[16..20].copy_from_slice(&d.octets());
        b[20..20 + opts.len()].copy_from_slice(opts);
        let c = self.checksum.apply(checksum::checksum(&b));
        b[10..12].copy_from_slice(&c.to_be_bytes());
        b.extend_from_slice(payload);
        b
    }
}

/// An IPv6 extension header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options with these option octets (Pad1 fills up to a
    /// multiple of 8 octets).
    HopByHop(Vec<u8>),
    /// Destination options with these option octets.
    DestOpts(Vec<u8>),
    /// A routing header of a type, with segments left and no addresses.
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
    /// A header numbered `number` whose length octet says `len` (8-octet
    /// units after the first eight), all else zero: a header or a length
    /// the variants above cannot state, such as AH, No Next Header or a
    /// fragment header of the wrong size.
    Zeroed {
        /// The header's protocol number.
        number: u8,
        /// Its length octet.
        len: u8,
    },
}

impl Ext {
    fn number(&self) -> u8 {
        match self {
            Ext::HopByHop(_) => protocol::HOP_BY_HOP,
            Ext::DestOpts(_) => protocol::DEST_OPTS,
            Ext::Routing { .. } => protocol::ROUTING,
            Ext::Fragment { .. } => protocol::FRAGMENT,
            Ext::Zeroed { number, .. } => *number,
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
            Ext::Zeroed { len, .. } => {
                out.extend_from_slice(&[next, *len]);
                out.resize(out.len() + (usize::from(*len) + 1) * 8 - 2, 0);
            }
        }
    }
}

/// IPv6 header fields beyond addresses and protocol.
#[derive(Clone, Debug)]
pub struct Ipv6 {
    /// Hop limit.
    pub hop_limit: u8,
    /// Extension headers between the IPv6 header and the payload.
    pub exts: Vec<Ext>,
    /// A payload length to claim instead of the true one.
    pub payload_len: Option<u16>,
}

impl Default for Ipv6 {
    /// Hop limit 64, no extension headers.
    fn default() -> Ipv6 {
        Ipv6 {
            hop_limit: 64,
            exts: Vec::new(),
            payload_len: None,
        }
    }
}

impl Ipv6 {
    /// An IPv6 packet around `payload` (whose protocol is `protocol`),
    /// the extension headers in between.
    ///
    /// # Panics
    /// If `src` or `dst` is not an IPv6 address.
    pub fn packet(&self, src: IpAddr, dst: IpAddr, protocol: u8, payload: &[u8]) -> Vec<u8> {
        let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
            panic!("an IPv6 packet needs IPv6 addresses, not {src} and {dst}")
        };
        let mut ext_bytes = Vec::new();
        for (i, e) in self.exts.iter().enumerate() {
            let next = self.exts.get(i + 1).map_or(protocol, Ext::number);
            e.emit(next, &mut ext_bytes);
        }
        let mut b = vec![0u8; 40];
        b[0] = 0x60;
        let plen = self
            .payload_len
            .unwrap_or((ext_bytes.len() + payload.len()) as u16);
        b[4..6].copy_from_slice(&plen.to_be_bytes());
        b[6] = self.exts.first().map_or(protocol, Ext::number);
        b[7] = self.hop_limit;
        b[8..24].copy_from_slice(&s.octets());
        b[24..40].copy_from_slice(&d.octets());
        b.extend_from_slice(&ext_bytes);
        b.extend_from_slice(payload);
        b
    }
}

/// `payload` (of protocol `protocol`) in IPv4 or IPv6, by the addresses'
/// family, with default fields: no options, no extension headers.
///
/// # Panics
/// If the addresses are of different families.
pub fn ip(src: IpAddr, dst: IpAddr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    if src.is_ipv4() {
        Ipv4::default().packet(src, dst, protocol, payload)
    } else {
        Ipv6::default().packet(src, dst, protocol, payload)
    }
}

/// `payload` (of protocol `protocol`) as smoltcp and ephemera's own
/// segments carry it: IPv4 an atomic datagram (don't-fragment set,
/// identification 0, RFC 6864, TTL 64), IPv6 without extension headers
/// (hop limit 64).
///
/// # Panics
/// If the addresses are of different families.
pub fn atomic(src: IpAddr, dst: IpAddr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    if src.is_ipv4() {
        Ipv4 {
            id: 0,
            dont_fragment: true,
            ..Default::default()
        }
        .packet(src, dst, protocol, payload)
    } else {
        Ipv6::default().packet(src, dst, protocol, payload)
    }
}

/// Recompute the IPv4 header checksum and the TCP, UDP, ICMP or ICMPv6
/// checksum of a packet mutated after it was built, as far as its headers
/// can be followed (through IPv6 extension headers, fragments included);
/// anything else is left as it is.
pub fn fix_checksums(p: &mut [u8]) {
    let Some(&v) = p.first() else { return };
    let (src, dst, mut next, mut at, end): (IpAddr, IpAddr, u8, usize, usize) = match v >> 4 {
        4 => {
            let hl = usize::from(v & 0x0f) * 4;
            if hl < 20 || p.len() < hl {
                return;
            }
            checksum::fill_ipv4_header(&mut p[..hl]);
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            let src = IpAddr::from(<[u8; 4]>::try_from(&p[12..16]).expect("4"));
            let dst = IpAddr::from(<[u8; 4]>::try_from(&p[16..20]).expect("4"));
            (src, dst, p[9], hl, total.clamp(hl, p.len()))
        }
        6 if p.len() >= 40 => {
            let plen = usize::from(u16::from_be_bytes([p[4], p[5]]));
            let src = IpAddr::from(<[u8; 16]>::try_from(&p[8..24]).expect("16"));
            let dst = IpAddr::from(<[u8; 16]>::try_from(&p[24..40]).expect("16"));
            (src, dst, p[6], 40, (40 + plen).min(p.len()))
        }
        _ => return,
    };
    // Each step moves at least 8 octets forward, so this ends.
    while src.is_ipv6()
        && matches!(
            next,
            protocol::HOP_BY_HOP | protocol::ROUTING | protocol::DEST_OPTS | protocol::FRAGMENT
        )
    {
        if at + 8 > end {
            return;
        }
        let len = if next == protocol::FRAGMENT {
            8
        } else {
            (usize::from(p[at + 1]) + 1) * 8
        };
        next = p[at];
        at += len;
    }
    if at > end {
        return;
    }
    let seg = &mut p[at..end];
    let (sum_at, pseudo) = match next {
        protocol::TCP if seg.len() >= 20 => (16, Some(protocol::TCP)),
        protocol::UDP if seg.len() >= 8 => (6, Some(protocol::UDP)),
        protocol::ICMP if seg.len() >= 4 && src.is_ipv4() => (2, None),
        protocol::ICMPV6 if seg.len() >= 4 => (2, Some(protocol::ICMPV6)),
        _ => return,
    };
    seg[sum_at..sum_at + 2].fill(0);
    let c = match pseudo {
        Some(pr) => checksum::transport(src, dst, pr, seg),
        None => checksum::checksum(seg),
    };
    seg[sum_at..sum_at + 2].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests;
