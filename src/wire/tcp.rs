//! A zero-copy view of the TCP segment inside an IPv4 or IPv6 packet.
//!
//! [`TcpView::parse`] walks the IP header once: version, header length
//! (IPv4 options, IPv6 extension headers), the length field, fragmentation;
//! then checks the TCP data offset. After that every accessor is a read at
//! a known offset. Parsing checks *where* things are, never whether the
//! checksum is right (that is demultiplexing's job; see
//! [`TcpView::verify_checksum`]).
//!
//! IPv6 extension headers are followed as demultiplexing follows them: a
//! hop-by-hop header first, then any number of routing, destination
//! options and authentication headers, and a fragment header that does not
//! fragment (offset 0, no more fragments, RFC 8200 §4.5). A packet that
//! is a fragment, or whose next header is anything else, is not a TCP
//! segment this view can show.
//!
//! Over a mutable buffer, the setters for SEG.SEQ, SEG.ACK, the flags, the
//! window and the SACK blocks update the checksum incrementally (RFC 1624),
//! at any alignment; a checksum that was wrong before stays wrong.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::{BitAnd, BitOr, BitOrAssign, Not, Range};

use super::checksum;
use super::protocol;

/// The TCP flag bits of header octet 13 (RFC 9293 §3.1, RFC 3168 §6.1 for
/// ECE and CWR).
#[derive(Copy, Clone, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(u8);

impl TcpFlags {
    /// No flags.
    pub const NONE: TcpFlags = TcpFlags(0);
    /// No more data from sender.
    pub const FIN: TcpFlags = TcpFlags(0x01);
    /// Synchronize sequence numbers.
    pub const SYN: TcpFlags = TcpFlags(0x02);
    /// Reset the connection.
    pub const RST: TcpFlags = TcpFlags(0x04);
    /// Push function.
    pub const PSH: TcpFlags = TcpFlags(0x08);
    /// Acknowledgment field is significant.
    pub const ACK: TcpFlags = TcpFlags(0x10);
    /// Urgent pointer field is significant.
    pub const URG: TcpFlags = TcpFlags(0x20);
    /// ECN-Echo.
    pub const ECE: TcpFlags = TcpFlags(0x40);
    /// Congestion window reduced.
    pub const CWR: TcpFlags = TcpFlags(0x80);

    /// The flags of header octet `bits`, all eight of them.
    pub const fn from_bits(bits: u8) -> TcpFlags {
        TcpFlags(bits)
    }

    /// The header octet.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// FIN is set.
    pub const fn fin(self) -> bool {
        self.contains(Self::FIN)
    }

    /// SYN is set.
    pub const fn syn(self) -> bool {
        self.contains(Self::SYN)
    }

    /// RST is set.
    pub const fn rst(self) -> bool {
        self.contains(Self::RST)
    }

    /// PSH is set.
    pub const fn psh(self) -> bool {
        self.contains(Self::PSH)
    }

    /// ACK is set.
    pub const fn ack(self) -> bool {
        self.contains(Self::ACK)
    }

    /// URG is set.
    pub const fn urg(self) -> bool {
        self.contains(Self::URG)
    }
}

impl BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for TcpFlags {
    fn bitor_assign(&mut self, rhs: TcpFlags) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for TcpFlags {
    type Output = TcpFlags;
    fn bitand(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 & rhs.0)
    }
}

impl Not for TcpFlags {
    type Output = TcpFlags;
    fn not(self) -> TcpFlags {
        TcpFlags(!self.0)
    }
}

impl fmt::Debug for TcpFlags {
    /// `SYN|ACK`, `-` for none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
        if self.0 == 0 {
            return f.write_str("-");
        }
        let mut first = true;
        for (i, name) in NAMES.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// Why a packet is not a TCP segment a [`TcpView`] can show.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a header, or than a length field says.
    Truncated,
    /// The IP version is neither 4 nor 6.
    Version,
    /// An IPv4 header length below 20 octets, or a TCP data offset below
    /// 5 words or beyond the segment.
    HeaderLength,
    /// An IP fragment: the TCP header may not be in it.
    Fragment,
    /// Not TCP, or behind an IPv6 extension header ephemera does not follow.
    NotTcp,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseError::Truncated => "truncated packet",
            ParseError::Version => "not IPv4 or IPv6",
            ParseError::HeaderLength => "bad IP or TCP header length",
            ParseError::Fragment => "IP fragment",
            ParseError::NotTcp => "not a TCP segment",
        })
    }
}

impl std::error::Error for ParseError {}

/// One SACK block (RFC 2018 §3): the left edge (first sequence number) and
/// the right edge (the one after the last) of a block received out of
/// order.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SackBlock {
    /// First sequence number of the block.
    pub left: u32,
    /// Sequence number just after the block.
    pub right: u32,
}

/// A TCP option, as [`TcpView::options`] walks them. NOP is skipped and End
/// of Option List ends the walk.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TcpOption<'a> {
    /// Maximum segment size (RFC 9293 §3.7.1).
    Mss(u16),
    /// Window scale shift count (RFC 7323 §2).
    WindowScale(u8),
    /// SACK permitted (RFC 2018 §2).
    SackPermitted,
    /// SACK blocks (RFC 2018 §3), one to four.
    Sack(SackBlocks<'a>),
    /// Timestamps (RFC 7323 §3).
    Timestamp {
        /// TSval.
        tsval: u32,
        /// TSecr.
        tsecr: u32,
    },
    /// Any other kind, or a known kind with a length its RFC does not
    /// allow (ignored, as Linux ignores it): the kind and the data after
    /// the length octet.
    Other {
        /// Option kind.
        kind: u8,
        /// Option data.
        data: &'a [u8],
    },
}

/// An option whose length octet is missing, below 2 or beyond the header:
/// the walk stops there (RFC 9293 §3.1 asks receivers to survive it).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BadOption {
    /// Its kind.
    pub kind: u8,
    /// Its offset from the start of the TCP header.
    pub offset: usize,
}

/// The blocks of a SACK option.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SackBlocks<'a>(&'a [u8]);

impl<'a> SackBlocks<'a> {
    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.0.len() / 8
    }

    /// Whether there are none (never true for a parsed option).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The blocks in order.
    pub fn iter(&self) -> impl Iterator<Item = SackBlock> + 'a {
        self.0.chunks_exact(8).map(|b| SackBlock {
            left: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            right: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        })
    }
}

/// The options of a TCP header, in order. Yields `Err` once, at an option
/// whose length is malformed, and then ends.
#[derive(Clone, Debug)]
pub struct TcpOptions<'a> {
    raw: RawOptions<'a>,
}

impl<'a> Iterator for TcpOptions<'a> {
    type Item = Result<TcpOption<'a>, BadOption>;

    fn next(&mut self) -> Option<Self::Item> {
        let (_, kind, data) = match self.raw.next()? {
            Ok(o) => o,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(match (kind, data.len()) {
            (2, 2) => TcpOption::Mss(u16::from_be_bytes([data[0], data[1]])),
            (3, 1) => TcpOption::WindowScale(data[0]),
            (4, 0) => TcpOption::SackPermitted,
            (5, n) if is_sack_len(n) => TcpOption::Sack(SackBlocks(data)),
            (8, 8) => TcpOption::Timestamp {
                tsval: u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
                tsecr: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
            },
            _ => TcpOption::Other { kind, data },
        }))
    }
}

/// The option walk itself: (offset of the option's data from the start of
/// the TCP header, kind, data), NOPs skipped.
#[derive(Clone, Debug)]
struct RawOptions<'a> {
    header: &'a [u8],
    at: usize,
}

impl<'a> Iterator for RawOptions<'a> {
    type Item = Result<(usize, u8, &'a [u8]), BadOption>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let kind = *self.header.get(self.at)?;
            match kind {
                0 => {
                    self.at = self.header.len();
                    return None;
                }
                1 => self.at += 1,
                _ => {
                    let offset = self.at;
                    let len = self.header.get(offset + 1).map(|&l| usize::from(l));
                    self.at = self.header.len();
                    return Some(match len {
                        Some(len) if len >= 2 && offset + len <= self.header.len() => {
                            self.at = offset + len;
                            Ok((offset + 2, kind, &self.header[offset + 2..offset + len]))
                        }
                        _ => Err(BadOption { kind, offset }),
                    });
                }
            }
        }
    }
}

/// A TCP segment inside an IPv4 or IPv6 packet held in `T` (`&[u8]`,
/// `&mut [u8]`, `Vec<u8>`, …). See the [module docs](self).
#[derive(Clone, Debug)]
pub struct TcpView<T> {
    buf: T,
    v6: bool,
    /// Offset of the TCP header: the IP header and its extensions.
    tcp_at: usize,
    /// TCP header length.
    header_len: usize,
    /// End of the IP packet, as its length field says.
    end: usize,
}

/// Offset of the TCP checksum field in the TCP header.
const CHECKSUM_AT: usize = 16;

impl<T: AsRef<[u8]>> TcpView<T> {
    /// Find the TCP segment in the IP packet `buf`. Octets beyond the IP
    /// length (link padding) are allowed and ignored.
    #[inline]
    pub fn parse(buf: T) -> Result<TcpView<T>, ParseError> {
        let p = buf.as_ref();
        let (v6, tcp_at, end) = match p.first().ok_or(ParseError::Truncated)? >> 4 {
            4 => ipv4(p)?,
            6 => ipv6(p)?,
            _ => return Err(ParseError::Version),
        };
        let tcp = &p[tcp_at..end];
        if tcp.len() < 20 {
            return Err(ParseError::Truncated);
        }
        let header_len = usize::from(tcp[12] >> 4) * 4;
        if header_len < 20 || header_len > tcp.len() {
            return Err(ParseError::HeaderLength);
        }
        Ok(TcpView {
            buf,
            v6,
            tcp_at,
            header_len,
            end,
        })
    }

    /// The TCP segment whose header starts at `tcp_at` of the IP packet
    /// `buf`, for a packet whose IP header was checked already (by
    /// demultiplexing, or one smoltcp wrote): the IP header is not walked
    /// again, only its length field read, and the TCP header checked to
    /// lie within it. The stack's per-segment rewrite uses it where
    /// [`parse`](Self::parse) would repeat work.
    #[inline]
    pub fn at(buf: T, tcp_at: usize) -> Result<TcpView<T>, ParseError> {
        let p = buf.as_ref();
        let be16 = |at: usize| {
            p.get(at..at + 2)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        };
        let v6 = p.first().ok_or(ParseError::Truncated)? >> 4 == 6;
        let end = if v6 { be16(4).map(|l| 40 + l) } else { be16(2) };
        let end = end.ok_or(ParseError::Truncated)?;
        if end > p.len() || tcp_at + 20 > end {
            return Err(ParseError::Truncated);
        }
        let header_len = usize::from(p[tcp_at + 12] >> 4) * 4;
        if header_len < 20 || tcp_at + header_len > end {
            return Err(ParseError::HeaderLength);
        }
        Ok(TcpView {
            buf,
            v6,
            tcp_at,
            header_len,
            end,
        })
    }

    /// The whole buffer.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// The buffer back.
    pub fn into_inner(self) -> T {
        self.buf
    }

    #[inline]
    fn tcp(&self) -> &[u8] {
        &self.buf.as_ref()[self.tcp_at..self.end]
    }

    #[inline]
    fn u16_at(&self, at: usize) -> u16 {
        let t = self.tcp();
        u16::from_be_bytes([t[at], t[at + 1]])
    }

    #[inline]
    fn u32_at(&self, at: usize) -> u32 {
        let t = self.tcp();
        u32::from_be_bytes([t[at], t[at + 1], t[at + 2], t[at + 3]])
    }

    /// IPv6 rather than IPv4.
    pub fn is_ipv6(&self) -> bool {
        self.v6
    }

    /// Length of the IP header with its options or extension headers: the
    /// offset of the TCP header in the buffer.
    pub fn ip_header_len(&self) -> usize {
        self.tcp_at
    }

    /// Length of the IP packet as its header says (the buffer may hold
    /// more).
    pub fn packet_len(&self) -> usize {
        self.end
    }

    /// The source address.
    pub fn src_addr(&self) -> IpAddr {
        let p = self.buf.as_ref();
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).expect("16")))
        } else {
            IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15]))
        }
    }

    /// The destination address.
    pub fn dst_addr(&self) -> IpAddr {
        let p = self.buf.as_ref();
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(&p[24..40]).expect("16"),
            ))
        } else {
            IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19]))
        }
    }

    /// IPv4: the don't-fragment flag. IPv6: always set, as routers never
    /// fragment IPv6 (RFC 8200 §4.5).
    pub fn dont_fragment(&self) -> bool {
        self.v6 || self.buf.as_ref()[6] & 0x40 != 0
    }

    /// The source port.
    pub fn src_port(&self) -> u16 {
        self.u16_at(0)
    }

    /// The destination port.
    pub fn dst_port(&self) -> u16 {
        self.u16_at(2)
    }

    /// Source address and port.
    pub fn src(&self) -> SocketAddr {
        SocketAddr::new(self.src_addr(), self.src_port())
    }

    /// Destination address and port.
    pub fn dst(&self) -> SocketAddr {
        SocketAddr::new(self.dst_addr(), self.dst_port())
    }

    /// SEG.SEQ.
    #[inline]
    pub fn seq(&self) -> u32 {
        self.u32_at(4)
    }

    /// SEG.ACK (meaningful when ACK is set).
    #[inline]
    pub fn ack(&self) -> u32 {
        self.u32_at(8)
    }

    /// The data offset: TCP header length in 32-bit words.
    pub fn data_offset(&self) -> u8 {
        self.tcp()[12] >> 4
    }

    /// TCP header length in octets, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// The flags.
    #[inline]
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.tcp()[13])
    }

    /// SEG.WND, unscaled.
    pub fn window(&self) -> u16 {
        self.u16_at(14)
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        self.u16_at(CHECKSUM_AT)
    }

    /// The urgent pointer.
    pub fn urgent(&self) -> u16 {
        self.u16_at(18)
    }

    /// Where the payload lies in the buffer.
    pub fn payload_range(&self) -> Range<usize> {
        self.tcp_at + self.header_len..self.end
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[self.payload_range()]
    }

    /// SEG.LEN: payload octets plus one each for SYN and FIN.
    pub fn seg_len(&self) -> u32 {
        let f = self.flags();
        self.payload().len() as u32 + u32::from(f.syn()) + u32::from(f.fin())
    }

    /// The TCP segment: header, options and payload.
    #[inline]
    pub fn segment(&self) -> &[u8] {
        self.tcp()
    }

    /// The options, in order.
    pub fn options(&self) -> TcpOptions<'_> {
        TcpOptions {
            raw: self.raw_options(),
        }
    }

    fn raw_options(&self) -> RawOptions<'_> {
        RawOptions {
            header: &self.tcp()[..self.header_len],
            at: 20,
        }
    }

    /// The offset of the first block and the number of blocks of the
    /// first SACK option at or after offset `from`, an option boundary.
    fn next_sack(&self, from: usize) -> Option<(usize, usize)> {
        let mut walk = self.raw_options();
        walk.at = from;
        walk.map_while(Result::ok)
            .find(|&(_, kind, data)| kind == 5 && is_sack_len(data.len()))
            .map(|(at, _, data)| (at, data.len() / 8))
    }

    fn find<R>(&self, f: impl Fn(TcpOption<'_>) -> Option<R>) -> Option<R> {
        self.options().map_while(Result::ok).find_map(f)
    }

    /// The MSS option's value, if present.
    pub fn mss(&self) -> Option<u16> {
        self.find(|o| match o {
            TcpOption::Mss(m) => Some(m),
            _ => None,
        })
    }

    /// The window scale option's shift count, if present.
    pub fn window_scale(&self) -> Option<u8> {
        self.find(|o| match o {
            TcpOption::WindowScale(s) => Some(s),
            _ => None,
        })
    }

    /// Whether the SACK-permitted option is present.
    pub fn sack_permitted(&self) -> bool {
        self.find(|o| matches!(o, TcpOption::SackPermitted).then_some(()))
            .is_some()
    }

    /// The first SACK option's blocks.
    pub fn sack_blocks(&self) -> Option<SackBlocks<'_>> {
        self.options().map_while(Result::ok).find_map(|o| match o {
            TcpOption::Sack(b) => Some(b),
            _ => None,
        })
    }

    /// The timestamps option, `(TSval, TSecr)`.
    pub fn timestamp(&self) -> Option<(u32, u32)> {
        self.find(|o| match o {
            TcpOption::Timestamp { tsval, tsecr } => Some((tsval, tsecr)),
            _ => None,
        })
    }

    /// The sum of the pseudo-header the TCP checksum covers.
    pub fn pseudo_header_sum(&self) -> u32 {
        checksum::pseudo_header(
            self.src_addr(),
            self.dst_addr(),
            protocol::TCP,
            self.end - self.tcp_at,
        )
    }

    /// Whether the TCP checksum is right.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.pseudo_header_sum(), self.tcp())) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpView<T> {
    /// Write `new` at `at` (from the start of the TCP header) and update
    /// the checksum for it, whatever the alignment: the old and new sums
    /// are taken over the 16-bit words the change touches.
    fn rewrite(&mut self, at: usize, new: &[u8]) {
        let (t, end) = (self.tcp_at, self.end);
        let seg = &mut self.buf.as_mut()[t..end];
        let lo = at & !1;
        let hi = ((at + new.len() + 1) & !1).min(seg.len());
        let old = checksum::sum(0, &seg[lo..hi]);
        seg[at..at + new.len()].copy_from_slice(new);
        let new = checksum::sum(0, &seg[lo..hi]);
        let c = u16::from_be_bytes([seg[CHECKSUM_AT], seg[CHECKSUM_AT + 1]]);
        let c = checksum::update(c, old, new);
        seg[CHECKSUM_AT..CHECKSUM_AT + 2].copy_from_slice(&c.to_be_bytes());
    }

    /// Write the 32-bit field at `at` (even, from the start of the TCP
    /// header), updating the checksum without a loop.
    #[inline]
    fn rewrite_u32(&mut self, at: usize, new: u32, summed: bool) {
        // Both fields lie in the fixed header, which parsing checked.
        let t = self.tcp_at;
        let header: &mut [u8; 20] = (&mut self.buf.as_mut()[t..t + 20])
            .try_into()
            .expect("20 octets");
        let field = [header[at], header[at + 1], header[at + 2], header[at + 3]];
        let old = u32::from_be_bytes(field);
        header[at..at + 4].copy_from_slice(&new.to_be_bytes());
        if !summed {
            return;
        }
        let c = u16::from_be_bytes([header[CHECKSUM_AT], header[CHECKSUM_AT + 1]]);
        let c = checksum::update_u32(c, old, new);
        header[CHECKSUM_AT..CHECKSUM_AT + 2].copy_from_slice(&c.to_be_bytes());
    }

    /// Set SEG.SEQ, keeping the checksum right.
    #[inline]
    pub fn set_seq(&mut self, seq: u32) {
        self.rewrite_u32(4, seq, true);
    }

    /// Set SEG.SEQ of a segment whose checksum the link completes (the
    /// field holds no sum yet, and is left as it is).
    #[inline]
    pub fn set_seq_unsummed(&mut self, seq: u32) {
        self.rewrite_u32(4, seq, false);
    }

    /// Set SEG.ACK, keeping the checksum right.
    #[inline]
    pub fn set_ack(&mut self, ack: u32) {
        self.rewrite_u32(8, ack, true);
    }

    /// Set the flags, keeping the checksum right.
    pub fn set_flags(&mut self, flags: TcpFlags) {
        self.rewrite(13, &[flags.0]);
    }

    /// Set SEG.WND, keeping the checksum right.
    pub fn set_window(&mut self, window: u16) {
        self.rewrite(14, &window.to_be_bytes());
    }

    /// Rewrite every block of every SACK option with `f` (to translate
    /// sequence numbers, say), keeping the checksum right. Returns how many
    /// blocks there were.
    pub fn map_sack_blocks(&mut self, mut f: impl FnMut(SackBlock) -> SackBlock) -> usize {
        let (mut from, mut n) = (20, 0);
        // Rewriting blocks leaves kinds and lengths alone, so the walk can
        // resume where the last SACK option ended.
        while let Some((at, blocks)) = self.next_sack(from) {
            for b in (at..at + 8 * blocks).step_by(8) {
                let old = SackBlock {
                    left: self.u32_at(b),
                    right: self.u32_at(b + 4),
                };
                let new = f(old);
                let mut bytes = [0u8; 8];
                bytes[..4].copy_from_slice(&new.left.to_be_bytes());
                bytes[4..].copy_from_slice(&new.right.to_be_bytes());
                self.rewrite(b, &bytes);
                n += 1;
            }
            from = at + 8 * blocks;
        }
        n
    }

    /// Recompute the TCP checksum from scratch.
    pub fn fill_checksum(&mut self) {
        let pseudo = self.pseudo_header_sum();
        let (t, end) = (self.tcp_at, self.end);
        let seg = &mut self.buf.as_mut()[t..end];
        seg[CHECKSUM_AT..CHECKSUM_AT + 2].fill(0);
        let c = !checksum::fold(checksum::sum(pseudo, seg));
        seg[CHECKSUM_AT..CHECKSUM_AT + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// Whether a SACK option's data is one to four blocks (RFC 2018 §3).
fn is_sack_len(n: usize) -> bool {
    n.is_multiple_of(8) && (8..=32).contains(&n)
}

/// IPv4: (false, TCP offset, end of packet).
#[inline]
fn ipv4(p: &[u8]) -> Result<(bool, usize, usize), ParseError> {
    if p.len() < 20 {
        return Err(ParseError::Truncated);
    }
    let hl = usize::from(p[0] & 0x0f) * 4;
    if hl < 20 {
        return Err(ParseError::HeaderLength);
    }
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if total > p.len() || hl > p.len() {
        return Err(ParseError::Truncated);
    }
    if total < hl {
        return Err(ParseError::HeaderLength);
    }
    // More fragments, or a fragment offset.
    if u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
        return Err(ParseError::Fragment);
    }
    if p[9] != protocol::TCP {
        return Err(ParseError::NotTcp);
    }
    Ok((false, hl, total))
}

/// IPv6: (true, TCP offset, end of packet), through the extension headers.
fn ipv6(p: &[u8]) -> Result<(bool, usize, usize), ParseError> {
    if p.len() < 40 {
        return Err(ParseError::Truncated);
    }
    let end = 40 + usize::from(u16::from_be_bytes([p[4], p[5]]));
    if end > p.len() {
        return Err(ParseError::Truncated);
    }
    let (mut next, mut at) = (p[6], 40);
    let mut first = true;
    // Each step moves at least 8 octets forward, so this ends.
    loop {
        let len = match next {
            protocol::TCP => return Ok((true, at, end)),
            protocol::HOP_BY_HOP if first => ext_len(p, at, end, |l| (l + 1) * 8)?,
            protocol::ROUTING | protocol::DEST_OPTS => ext_len(p, at, end, |l| (l + 1) * 8)?,
            protocol::AUTH => ext_len(p, at, end, |l| (l + 2) * 4)?,
            protocol::FRAGMENT => {
                let len = ext_len(p, at, end, |_| 8)?;
                // Offset or more-fragments set: a real fragment.
                if u16::from_be_bytes([p[at + 2], p[at + 3]]) & 0xfff9 != 0 {
                    return Err(ParseError::Fragment);
                }
                len
            }
            _ => return Err(ParseError::NotTcp),
        };
        next = p[at];
        at += len;
        first = false;
    }
}

/// The length of the extension header at `at`, from its length octet.
fn ext_len(
    p: &[u8],
    at: usize,
    end: usize,
    len: impl Fn(usize) -> usize,
) -> Result<usize, ParseError> {
    if at + 8 > end {
        return Err(ParseError::Truncated);
    }
    let n = len(usize::from(p[at + 1]));
    if at + n > end {
        return Err(ParseError::Truncated);
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
