//! The headers ephemera reads and writes itself, beyond what smoltcp does.
//!
//! Like `smoltcp::wire`, a view borrows the packet's bytes and reads fields
//! where they lie; nothing is copied and nothing is parsed twice:
//!
//! - [`tcp`]: [`TcpView`], a zero-copy view of the TCP segment inside an
//!   IPv4 or IPv6 packet. Parsing finds the TCP header once (IPv6
//!   extension headers included); the accessors read addresses, ports,
//!   sequence and acknowledgment numbers, flags, window and the options
//!   (MSS, window scale, SACK-permitted, SACK blocks, timestamps). The
//!   setters for SEG.SEQ, SEG.ACK, the flags, the window and the SACK
//!   blocks keep the checksum right by incremental update (RFC 1624), so a
//!   segment can be rewritten in place at the stack's boundary.
//! - [`checksum`]: the Internet checksum (RFC 1071), the pseudo-header
//!   sums of TCP, UDP and ICMPv6, and the incremental update.
//! - [`build`]: the one packet builder of the stack's own segments, the
//!   tests, fuzz targets and benchmarks: IPv4/IPv6 (with extension
//!   headers) around TCP, UDP or ICMP, with correct checksums unless told
//!   to get something wrong.
//! - [`dns`]: DNS messages (RFC 1035): a parser into views of the received
//!   bytes that turns every malformed message into a typed error, a
//!   builder, and the owned names and questions a resolver keeps.
//! - [`socks`]: the SOCKS5 UDP request header (RFC 1928 §7) a client and
//!   its UDP relay put before every datagram.
//!
//! What this module does not do: check that a packet is *for us*, or that
//! its checksum is right before trusting it. That is demultiplexing's job;
//! a view only tells where the fields are.

pub mod build;
pub mod checksum;
pub mod dns;
pub mod socks;
pub mod tcp;

pub use tcp::{ParseError, SackBlock, TcpFlags, TcpOption, TcpView};

/// IP protocol numbers (IANA "Assigned Internet Protocol Numbers"): the
/// IPv4 protocol field, or an IPv6 next-header value.
pub mod protocol {
    /// IPv6 hop-by-hop options header (RFC 8200 §4.3).
    pub const HOP_BY_HOP: u8 = 0;
    /// ICMP for IPv4 (RFC 792).
    pub const ICMP: u8 = 1;
    /// TCP (RFC 9293).
    pub const TCP: u8 = 6;
    /// UDP (RFC 768).
    pub const UDP: u8 = 17;
    /// IPv6 routing header (RFC 8200 §4.4).
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header (RFC 8200 §4.5).
    pub const FRAGMENT: u8 = 44;
    /// IP authentication header (RFC 4302).
    pub const AUTH: u8 = 51;
    /// ICMPv6 (RFC 4443).
    pub const ICMPV6: u8 = 58;
    /// IPv6 destination options header (RFC 8200 §4.6).
    pub const DEST_OPTS: u8 = 60;
}
