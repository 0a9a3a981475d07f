//! The SOCKS5 UDP request header (RFC 1928 §7), which every datagram
//! between a client and its UDP relay carries:
//!
//! ```text
//! +----+------+------+----------+----------+----------+
//! |RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
//! +----+------+------+----------+----------+----------+
//! | 2  |  1   |  1   | Variable |    2     | Variable |
//! +----+------+------+----------+----------+----------+
//! ```
//!
//! [`parse_udp`] is a view: it borrows the datagram, checks every length
//! and returns the header and the payload, or a typed error; it never
//! panics, whatever the bytes (the `socks_udp` fuzz target holds it to
//! that). [`write_udp_header`] writes the header a relay puts before a
//! datagram it hands back to the client (FRAG 0, the sender's address).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// ATYP: an IPv4 address.
pub const ATYP_IPV4: u8 = 0x01;
/// ATYP: a domain name, its length in the first octet.
pub const ATYP_DOMAIN: u8 = 0x03;
/// ATYP: an IPv6 address.
pub const ATYP_IPV6: u8 = 0x04;

/// Where a datagram goes (or, from the relay, came from).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum UdpAddr<'a> {
    /// An IPv4 or IPv6 address and port.
    Ip(SocketAddr),
    /// A domain name (its octets as sent, perhaps empty) and port.
    Domain(&'a [u8], u16),
}

/// A parsed UDP request header.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct UdpHeader<'a> {
    /// FRAG: 0 for a whole datagram, else its fragment number (bit 7 set
    /// on the last).
    pub frag: u8,
    /// DST.ADDR and DST.PORT.
    pub addr: UdpAddr<'a>,
}

/// Why a datagram is not a SOCKS5 UDP request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum UdpParseError {
    /// Shorter than its header says.
    Truncated,
    /// An ATYP RFC 1928 does not define.
    AddressType(u8),
}

impl fmt::Display for UdpParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UdpParseError::Truncated => f.write_str("SOCKS UDP header cut short"),
            UdpParseError::AddressType(t) => write!(f, "SOCKS address type {t:#04x} unknown"),
        }
    }
}

impl std::error::Error for UdpParseError {}

/// The header of `datagram` and the payload after it. RSV is not checked
/// (RFC 1928 reserves it; being liberal costs nothing here).
pub fn parse_udp(datagram: &[u8]) -> Result<(UdpHeader<'_>, &[u8]), UdpParseError> {
    let head = datagram.get(..4).ok_or(UdpParseError::Truncated)?;
    let (frag, atyp) = (head[2], head[3]);
    let rest = &datagram[4..];
    let (addr, used) = match atyp {
        ATYP_IPV4 => {
            let b = rest.get(..6).ok_or(UdpParseError::Truncated)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = u16::from_be_bytes([b[4], b[5]]);
            (UdpAddr::Ip(SocketAddr::new(IpAddr::V4(ip), port)), 6)
        }
        ATYP_IPV6 => {
            let b = rest.get(..18).ok_or(UdpParseError::Truncated)?;
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[..16]);
            let port = u16::from_be_bytes([b[16], b[17]]);
            (
                UdpAddr::Ip(SocketAddr::new(Ipv6Addr::from(a).into(), port)),
                18,
            )
        }
        ATYP_DOMAIN => {
            let &len = rest.first().ok_or(UdpParseError::Truncated)?;
            let len = usize::from(len);
            let b = rest.get(1..1 + len + 2).ok_or(UdpParseError::Truncated)?;
            let port = u16::from_be_bytes([b[len], b[len + 1]]);
            (UdpAddr::Domain(&b[..len], port), 1 + len + 2)
        }
        other => return Err(UdpParseError::AddressType(other)),
    };
    Ok((UdpHeader { frag, addr }, &rest[used..]))
}

/// Append the header of a whole datagram (FRAG 0) from or to `addr`.
pub fn write_udp_header(out: &mut Vec<u8>, addr: SocketAddr) {
    out.extend_from_slice(&[0, 0, 0]);
    match addr.ip() {
        IpAddr::V4(a) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&a.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_bad_ones_are_typed_errors() {
        for addr in ["10.7.0.1:7", "[fd00:7::1]:5353"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut d = Vec::new();
            write_udp_header(&mut d, addr);
            d.extend_from_slice(b"payload");
            let (h, payload) = parse_udp(&d).unwrap();
            assert_eq!(
                h,
                UdpHeader {
                    frag: 0,
                    addr: UdpAddr::Ip(addr)
                }
            );
            assert_eq!(payload, b"payload");
            // Every cut inside the header is Truncated.
            let hl = d.len() - 7;
            for n in 0..hl {
                assert_eq!(parse_udp(&d[..n]), Err(UdpParseError::Truncated), "{n}");
            }
        }
        let named = [0, 0, 3, ATYP_DOMAIN, 3, b'a', b'.', b't', 0, 53, b'x'];
        let (h, payload) = parse_udp(&named).unwrap();
        assert_eq!(h.frag, 3);
        assert_eq!(h.addr, UdpAddr::Domain(b"a.t", 53));
        assert_eq!(payload, b"x");
        assert_eq!(
            parse_udp(&[0, 0, 0, 2, 1, 2, 3, 4, 0, 1]),
            Err(UdpParseError::AddressType(2))
        );
        assert_eq!(
            parse_udp(&[0, 0, 0, ATYP_DOMAIN, 200, 1]),
            Err(UdpParseError::Truncated)
        );
        // An empty payload is a datagram too.
        assert_eq!(parse_udp(&[0, 0, 0, 1, 1, 2, 3, 4, 0, 1]).unwrap().1, b"");
    }
}
