//! DNS messages (RFC 1035 §4): a parser into views of the received bytes,
//! a builder, and the owned names and questions a resolver keeps.
//!
//! [`Message::parse`] reads the header, the question section and the
//! resource records of the answer, authority and additional sections.
//! Names stay in the message as [`Name`] views (compression pointers are
//! followed when a name is read, never copied out); A and AAAA records of
//! class IN and CNAME records are decoded, every other type is kept as raw
//! RDATA, and the EDNS0 OPT pseudo-record (RFC 6891) is taken out of the
//! additional section into [`Message::opt`]. Octets after the last record
//! are ignored, as resolvers do.
//!
//! The input is hostile. Parsing never panics and never loops: every
//! malformed message is a [`ParseError`]. Names are bounded as RFC 1035
//! §2.3.4 says (labels of at most 63 octets, at most 255 octets in all,
//! label types other than "normal" and "pointer" refused); compression
//! pointers (§4.1.4) may point backwards or forwards but only inside the
//! message past its header. A loop cannot run long: a name may follow at
//! most [`MAX_POINTERS`] pointers ([`ParseError::PointerLoop`]), and a
//! loop through labels grows the name past 255 octets first
//! ([`ParseError::NameTooLong`]). Section counts are
//! checked against the message length before anything is read, so a
//! count larger than the message costs nothing.
//!
//! [`DnsName`] is an owned, uncompressed name; [`DnsName::from_dotted`]
//! is the validator for host names given by users (LDH labels, RFC 1123
//! §2.1). Names compare without regard to ASCII case (RFC 4343), so
//! [`Question`]s compare the way RFC 5452 §9.1 wants a response's question
//! matched against the query's. [`MessageBuilder`] writes messages with
//! uncompressed names; [`build_query`] is the common case.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Octets in the fixed header (RFC 1035 §4.1.1).
pub const HEADER_LEN: usize = 12;
/// Longest name, in octets of its uncompressed wire form (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 255;
/// Longest label, in octets (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;
/// Most compression pointers one name may follow. A name of at most 255
/// octets has at most 127 labels, so a name that is not a loop needs no
/// more than one pointer per label and one more.
pub const MAX_POINTERS: usize = 128;
/// Largest UDP message without EDNS0 (RFC 1035 §4.2.1).
pub const MAX_UDP_LEN: usize = 512;
/// Largest message at all: TCP frames it with a 16-bit length (§4.2.2).
pub const MAX_MESSAGE_LEN: usize = 65535;

/// Smallest question: the root name, QTYPE and QCLASS.
const MIN_QUESTION_LEN: usize = 5;
/// Smallest resource record: the root name, TYPE, CLASS, TTL, RDLENGTH.
const MIN_RECORD_LEN: usize = 11;

/// A resource record or query type (RFC 1035 §3.2.2, §3.2.3).
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Type(pub u16);

impl Type {
    /// An IPv4 host address.
    pub const A: Type = Type(1);
    /// An authoritative name server.
    pub const NS: Type = Type(2);
    /// The canonical name for an alias.
    pub const CNAME: Type = Type(5);
    /// Start of a zone of authority.
    pub const SOA: Type = Type(6);
    /// A domain name pointer.
    pub const PTR: Type = Type(12);
    /// Mail exchange.
    pub const MX: Type = Type(15);
    /// Text strings.
    pub const TXT: Type = Type(16);
    /// An IPv6 host address (RFC 3596).
    pub const AAAA: Type = Type(28);
    /// The EDNS0 pseudo-record (RFC 6891).
    pub const OPT: Type = Type(41);
    /// Any record (a QTYPE only).
    pub const ANY: Type = Type(255);

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Type::A => "A",
            Type::NS => "NS",
            Type::CNAME => "CNAME",
            Type::SOA => "SOA",
            Type::PTR => "PTR",
            Type::MX => "MX",
            Type::TXT => "TXT",
            Type::AAAA => "AAAA",
            Type::OPT => "OPT",
            Type::ANY => "ANY",
            _ => return None,
        })
    }
}

impl fmt::Debug for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            // RFC 3597 §5's presentation of an unknown type.
            None => write!(f, "TYPE{}", self.0),
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A resource record or query class (RFC 1035 §3.2.4).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Class(pub u16);

impl Class {
    /// The Internet.
    pub const IN: Class = Class(1);
}

/// The kind of query (RFC 1035 §4.1.1 OPCODE, 4 bits).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Opcode(pub u8);

impl Opcode {
    /// A standard query.
    pub const QUERY: Opcode = Opcode(0);
}

/// A response code (RFC 1035 §4.1.1 RCODE, the header's 4 bits).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rcode(pub u8);

impl Rcode {
    /// No error.
    pub const NOERROR: Rcode = Rcode(0);
    /// The server could not interpret the query.
    pub const FORMERR: Rcode = Rcode(1);
    /// The server could not process the query.
    pub const SERVFAIL: Rcode = Rcode(2);
    /// The name does not exist.
    pub const NXDOMAIN: Rcode = Rcode(3);
    /// The server does not do this kind of query.
    pub const NOTIMP: Rcode = Rcode(4);
    /// The server will not answer, by policy.
    pub const REFUSED: Rcode = Rcode(5);
}

/// The header's second 16-bit word: QR, OPCODE, AA, TC, RD, RA, Z, AD, CD
/// and RCODE (RFC 1035 §4.1.1, RFC 4035 §3.2 for AD and CD), kept whole so
/// that bits this module does not name survive a round trip.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u16);

impl Flags {
    /// QR: the message is a response.
    pub const QR: Flags = Flags(0x8000);
    /// AA: authoritative answer.
    pub const AA: Flags = Flags(0x0400);
    /// TC: the message was truncated to fit its transport.
    pub const TC: Flags = Flags(0x0200);
    /// RD: recursion desired.
    pub const RD: Flags = Flags(0x0100);
    /// RA: recursion available.
    pub const RA: Flags = Flags(0x0080);
    /// AD: authentic data.
    pub const AD: Flags = Flags(0x0020);
    /// CD: checking disabled.
    pub const CD: Flags = Flags(0x0010);

    const OPCODE_SHIFT: u16 = 11;
    const OPCODE_MASK: u16 = 0x7800;
    const RCODE_MASK: u16 = 0x000f;

    /// Whether every bit of `bits` is set.
    pub fn contains(self, bits: Flags) -> bool {
        self.0 & bits.0 == bits.0
    }

    /// These flags with `bits` set or cleared.
    #[must_use]
    pub fn with(self, bits: Flags, on: bool) -> Flags {
        Flags(if on {
            self.0 | bits.0
        } else {
            self.0 & !bits.0
        })
    }

    /// The OPCODE.
    pub fn opcode(self) -> Opcode {
        Opcode(((self.0 & Self::OPCODE_MASK) >> Self::OPCODE_SHIFT) as u8)
    }

    /// These flags with OPCODE `op` (its low 4 bits).
    #[must_use]
    pub fn with_opcode(self, op: Opcode) -> Flags {
        let op = ((op.0 as u16) << Self::OPCODE_SHIFT) & Self::OPCODE_MASK;
        Flags(self.0 & !Self::OPCODE_MASK | op)
    }

    /// The header's RCODE (the low 4 bits of an extended RCODE).
    pub fn rcode(self) -> Rcode {
        Rcode((self.0 & Self::RCODE_MASK) as u8)
    }

    /// These flags with RCODE `rcode` (its low 4 bits).
    #[must_use]
    pub fn with_rcode(self, rcode: Rcode) -> Flags {
        Flags(self.0 & !Self::RCODE_MASK | (rcode.0 as u16 & Self::RCODE_MASK))
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// The fixed header (RFC 1035 §4.1.1).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The query's identifier, copied into its response.
    pub id: u16,
    /// QR, OPCODE, AA, TC, RD, RA, Z, AD, CD, RCODE.
    pub flags: Flags,
    /// Entries in the question section.
    pub qdcount: u16,
    /// Records in the answer section.
    pub ancount: u16,
    /// Records in the authority section.
    pub nscount: u16,
    /// Records in the additional section, the OPT record included.
    pub arcount: u16,
}

impl Header {
    /// The header at the start of `bytes`, without looking further: what
    /// a forwarder needs to route a message it passes on unchanged.
    pub fn parse(bytes: &[u8]) -> Result<Header, ParseError> {
        let h = bytes
            .get(..HEADER_LEN)
            .ok_or(ParseError::UnexpectedEnd(Section::Header))?;
        let word = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        Ok(Header {
            id: word(0),
            flags: Flags(word(2)),
            qdcount: word(4),
            ancount: word(6),
            nscount: word(8),
            arcount: word(10),
        })
    }
}

/// Overwrite the ID of the message in `bytes`, as a forwarder does when it
/// passes a query upstream under an ID of its own and the answer back
/// under the client's. Fails, changing nothing, on less than a header.
pub fn set_id(bytes: &mut [u8], id: u16) -> Result<(), ParseError> {
    if bytes.len() < HEADER_LEN {
        return Err(ParseError::UnexpectedEnd(Section::Header));
    }
    bytes[..2].copy_from_slice(&id.to_be_bytes());
    Ok(())
}

/// The parts of a message, for errors and the builder.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Section {
    /// The fixed header.
    Header,
    /// The question section.
    Question,
    /// The answer section.
    Answer,
    /// The authority section.
    Authority,
    /// The additional section.
    Additional,
}

/// Why a message is not a DNS message this parser accepts.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The message ends inside this section: shorter than a header, a
    /// count larger than the entries present, an entry cut short, or a
    /// name running past the end.
    UnexpectedEnd(Section),
    /// A label length octet whose top bits are 01 or 10: neither a label
    /// (at most 63 octets) nor a pointer (RFC 1035 §4.1.4; RFC 6891 §5
    /// retired the extended label types).
    BadLabelType(u8),
    /// A name longer than 255 octets once its pointers are followed.
    NameTooLong,
    /// A compression pointer to this offset, which is past the end of the
    /// message or inside its header.
    BadPointer(u16),
    /// A name that follows more than [`MAX_POINTERS`] pointers: a loop.
    PointerLoop,
    /// RDATA whose length does not fit its type: A not 4 octets, AAAA not
    /// 16, CNAME not exactly one name.
    BadRdata(Type),
    /// An OPT record outside the additional section, with a name other
    /// than the root, or more than one (RFC 6891 §6.1.1).
    BadOpt,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::UnexpectedEnd(s) => write!(f, "DNS message ends inside its {s:?} section"),
            ParseError::BadLabelType(b) => write!(f, "DNS label type {b:#04x} is not supported"),
            ParseError::NameTooLong => write!(f, "DNS name longer than {MAX_NAME_LEN} octets"),
            ParseError::BadPointer(o) => write!(f, "DNS compression pointer to bad offset {o}"),
            ParseError::PointerLoop => write!(f, "DNS compression pointers loop"),
            ParseError::BadRdata(t) => write!(f, "DNS {t} record with malformed data"),
            ParseError::BadOpt => write!(f, "misplaced or repeated EDNS0 OPT record"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Follow the name at `pos` in `msg`, calling `label` for each label in
/// order. Returns the offset just past the name's octets at `pos` (past
/// its first pointer, if it has one) and its uncompressed length.
fn walk_name<'a>(
    msg: &'a [u8],
    mut pos: usize,
    section: Section,
    mut label: impl FnMut(&'a [u8]),
) -> Result<(usize, usize), ParseError> {
    let end_of_msg = ParseError::UnexpectedEnd(section);
    let mut end = None;
    // The root label's length octet.
    let mut len = 1;
    let mut pointers = 0;
    loop {
        let b = *msg.get(pos).ok_or(end_of_msg)?;
        match b >> 6 {
            0b00 if b == 0 => return Ok((end.unwrap_or(pos + 1), len)),
            0b00 => {
                let n = b as usize;
                let text = msg.get(pos + 1..pos + 1 + n).ok_or(end_of_msg)?;
                len += 1 + n;
                if len > MAX_NAME_LEN {
                    return Err(ParseError::NameTooLong);
                }
                label(text);
                pos += 1 + n;
            }
            0b11 => {
                let low = *msg.get(pos + 1).ok_or(end_of_msg)?;
                let target = u16::from_be_bytes([b & 0x3f, low]);
                end.get_or_insert(pos + 2);
                pointers += 1;
                if pointers > MAX_POINTERS {
                    return Err(ParseError::PointerLoop);
                }
                let t = target as usize;
                if t < HEADER_LEN || t >= msg.len() {
                    return Err(ParseError::BadPointer(target));
                }
                pos = t;
            }
            _ => return Err(ParseError::BadLabelType(b)),
        }
    }
}

/// A name inside a message, compression pointers and all: a view that
/// reads its labels where they lie. Only the parser (or
/// [`DnsName::as_name`]) makes one, after checking the name is well
/// formed, so reading it cannot fail.
#[derive(Copy, Clone)]
pub struct Name<'a> {
    msg: &'a [u8],
    start: usize,
    len: u8,
}

impl<'a> Name<'a> {
    /// The labels, first to last, without the root's empty label.
    pub fn labels(&self) -> Labels<'a> {
        Labels {
            msg: self.msg,
            pos: self.start,
            pointers: 0,
        }
    }

    /// Octets of the name's uncompressed wire form (1 for the root).
    pub fn wire_len(&self) -> usize {
        self.len as usize
    }

    /// Whether this is the root name.
    pub fn is_root(&self) -> bool {
        self.labels().next().is_none()
    }

    /// Whether `self` and `other` are the same name, ignoring ASCII case
    /// (RFC 4343 §3).
    pub fn eq_ignore_case(&self, other: &Name<'_>) -> bool {
        self.len == other.len
            && self
                .labels()
                .zip(other.labels())
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }

    /// The name copied out, uncompressed, case preserved.
    pub fn to_owned_name(&self) -> DnsName {
        let mut wire = Vec::with_capacity(self.wire_len());
        for l in self.labels() {
            wire.push(l.len() as u8);
            wire.extend_from_slice(l);
        }
        wire.push(0);
        DnsName { wire }
    }
}

impl PartialEq for Name<'_> {
    /// Equal ignoring ASCII case, as [`Name::eq_ignore_case`].
    fn eq(&self, other: &Name<'_>) -> bool {
        self.eq_ignore_case(other)
    }
}

impl Eq for Name<'_> {}

impl fmt::Display for Name<'_> {
    /// Dotted presentation form (RFC 1035 §5.1), without the final dot;
    /// the root is `.`. `.` and `\` inside a label are escaped with `\`,
    /// octets outside printable ASCII as `\DDD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for label in self.labels() {
            if !first {
                f.write_str(".")?;
            }
            first = false;
            for &c in label {
                match c {
                    b'.' | b'\\' => write!(f, "\\{}", c as char)?,
                    0x21..=0x7e => write!(f, "{}", c as char)?,
                    _ => write!(f, "\\{c:03}")?,
                }
            }
        }
        if first {
            f.write_str(".")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({self})")
    }
}

/// The labels of a [`Name`], pointers followed.
#[derive(Clone, Debug)]
pub struct Labels<'a> {
    msg: &'a [u8],
    pos: usize,
    pointers: usize,
}

impl<'a> Iterator for Labels<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        // The name was checked when the view was made; the bounds here only
        // make sure a mistake ends the walk instead of panicking or looping.
        loop {
            let b = *self.msg.get(self.pos)?;
            if b & 0xc0 == 0xc0 {
                let low = *self.msg.get(self.pos + 1)?;
                self.pointers += 1;
                if self.pointers > MAX_POINTERS {
                    return None;
                }
                self.pos = u16::from_be_bytes([b & 0x3f, low]) as usize;
                continue;
            }
            if b == 0 || b as usize > MAX_LABEL_LEN {
                return None;
            }
            let label = self.msg.get(self.pos + 1..self.pos + 1 + b as usize)?;
            self.pos += 1 + b as usize;
            return Some(label);
        }
    }
}

/// Why a host name is not one to look up (see [`DnsName::from_dotted`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NameError {
    /// The empty name, or the root `.` alone.
    Empty,
    /// Two dots in a row, or a leading dot.
    EmptyLabel,
    /// A label of more than 63 octets.
    LabelTooLong,
    /// More than 255 octets in wire form (253 characters in dotted form).
    NameTooLong,
    /// A character other than a letter, digit, hyphen or dot.
    BadChar(char),
    /// A label that starts or ends with a hyphen (RFC 952, RFC 1123 §2.1).
    HyphenAtEdge,
    /// A last label of digits only: no top-level domain is numeric
    /// (RFC 3696 §2), and such a name is most likely a mistyped address.
    NumericTld,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "empty host name"),
            NameError::EmptyLabel => write!(f, "empty label in host name"),
            NameError::LabelTooLong => {
                write!(f, "label longer than {MAX_LABEL_LEN} octets in host name")
            }
            NameError::NameTooLong => write!(f, "host name longer than 253 characters"),
            NameError::BadChar(c) => write!(f, "character {c:?} not allowed in a host name"),
            NameError::HyphenAtEdge => write!(f, "host name label starts or ends with '-'"),
            NameError::NumericTld => write!(f, "host name ends in a numeric label"),
        }
    }
}

impl std::error::Error for NameError {}

/// An owned domain name in uncompressed wire form, case preserved.
///
/// Equality and hashing ignore ASCII case (RFC 4343), so two questions
/// that differ only in case are the same question.
#[derive(Clone)]
pub struct DnsName {
    /// Length-prefixed labels ending in the root's 0; at most 255 octets.
    wire: Vec<u8>,
}

impl DnsName {
    /// The root name.
    pub fn root() -> DnsName {
        DnsName { wire: vec![0] }
    }

    /// A host name from its dotted form, as a user gives it to a lookup:
    /// letters, digits and hyphens in labels of 1 to 63 octets, no label
    /// starting or ending with a hyphen (RFC 1123 §2.1), at most 253
    /// characters, one final dot allowed, the last label not all digits.
    pub fn from_dotted(s: &str) -> Result<DnsName, NameError> {
        let s = s.strip_suffix('.').unwrap_or(s);
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        // Each label costs its length plus one; the root adds one more.
        if s.len() + 2 > MAX_NAME_LEN {
            return Err(NameError::NameTooLong);
        }
        let mut wire = Vec::with_capacity(s.len() + 2);
        let mut last = "";
        for label in s.split('.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel);
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(NameError::LabelTooLong);
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return Err(NameError::BadChar(c));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(NameError::HyphenAtEdge);
            }
            wire.push(label.len() as u8);
            wire.extend_from_slice(label.as_bytes());
            last = label;
        }
        if last.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NameError::NumericTld);
        }
        wire.push(0);
        Ok(DnsName { wire })
    }

    /// The uncompressed wire form: length-prefixed labels, then 0.
    pub fn as_wire(&self) -> &[u8] {
        &self.wire
    }

    /// A [`Name`] view of this name, to compare it with names in a message
    /// or to hand it to the [`MessageBuilder`].
    pub fn as_name(&self) -> Name<'_> {
        Name {
            msg: &self.wire,
            start: 0,
            len: self.wire.len() as u8,
        }
    }
}

impl PartialEq for DnsName {
    /// Equal ignoring ASCII case (RFC 4343 §3).
    fn eq(&self, other: &DnsName) -> bool {
        self.wire.eq_ignore_ascii_case(&other.wire)
    }
}

impl Eq for DnsName {}

impl Hash for DnsName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for b in &self.wire {
            state.write_u8(b.to_ascii_lowercase());
        }
    }
}

impl PartialEq<Name<'_>> for DnsName {
    fn eq(&self, other: &Name<'_>) -> bool {
        self.as_name().eq_ignore_case(other)
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.as_name(), f)
    }
}

impl fmt::Debug for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DnsName({self})")
    }
}

/// One entry of the question section (RFC 1035 §4.1.2), owned: a query
/// table keeps it to match the response against (RFC 5452 §9.1).
/// Equality ignores the case of the name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Question {
    /// QNAME.
    pub name: DnsName,
    /// QTYPE.
    pub qtype: Type,
    /// QCLASS.
    pub qclass: Class,
}

impl Question {
    /// A question of class IN.
    pub fn new(name: DnsName, qtype: Type) -> Question {
        Question {
            name,
            qtype,
            qclass: Class::IN,
        }
    }
}

/// The decoded RDATA of a record.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RData<'a> {
    /// An IPv4 address (type A, class IN).
    A(Ipv4Addr),
    /// An IPv6 address (type AAAA, class IN).
    Aaaa(Ipv6Addr),
    /// The canonical name (type CNAME).
    Cname(Name<'a>),
    /// Any other type, undecoded. Names inside it may be compressed
    /// against the message the record came from (RFC 3597 §4).
    Other(&'a [u8]),
}

/// A resource record (RFC 1035 §4.1.3).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The owner name.
    pub name: Name<'a>,
    /// TYPE.
    pub rtype: Type,
    /// CLASS.
    pub class: Class,
    /// Seconds the record may be cached.
    pub ttl: u32,
    /// RDATA.
    pub data: RData<'a>,
}

/// The EDNS0 OPT pseudo-record (RFC 6891 §6.1.2, §6.1.3), its fields
/// decoded from the CLASS and TTL they are carried in.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Opt<'a> {
    /// The sender's UDP payload size.
    pub udp_payload_size: u16,
    /// The upper 8 bits of the 12-bit extended RCODE.
    pub extended_rcode: u8,
    /// The EDNS version.
    pub version: u8,
    /// The DO bit and the reserved flags.
    pub flags: u16,
    /// The options, undecoded: {code, length, data} triples.
    pub options: &'a [u8],
}

impl Opt<'_> {
    /// The DO bit: DNSSEC records wanted (RFC 3225).
    pub const DO: u16 = 0x8000;
}

/// A parsed message: the header and the sections, as views of the bytes
/// given to [`Message::parse`].
#[derive(Clone, Debug)]
pub struct Message<'a> {
    /// The header as received; its counts include the OPT record.
    pub header: Header,
    /// The question section.
    pub questions: Vec<Question>,
    /// The answer section.
    pub answers: Vec<Record<'a>>,
    /// The authority section.
    pub authority: Vec<Record<'a>>,
    /// The additional section, without the OPT record.
    pub additional: Vec<Record<'a>>,
    /// The OPT record, if the additional section had one.
    pub opt: Option<Opt<'a>>,
}

/// Reads one section after another.
struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
    section: Section,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let bytes = self
            .msg
            .get(self.pos..self.pos + n)
            .ok_or(ParseError::UnexpectedEnd(self.section))?;
        self.pos += n;
        Ok(bytes)
    }

    fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn name(&mut self) -> Result<Name<'a>, ParseError> {
        let start = self.pos;
        let (end, len) = walk_name(self.msg, start, self.section, |_| {})?;
        self.pos = end;
        Ok(Name {
            msg: self.msg,
            start,
            len: len as u8,
        })
    }

    fn question(&mut self) -> Result<Question, ParseError> {
        let name = self.name()?.to_owned_name();
        let qtype = Type(self.u16()?);
        let qclass = Class(self.u16()?);
        Ok(Question {
            name,
            qtype,
            qclass,
        })
    }

    /// One record, or the OPT record's fields.
    fn record(&mut self) -> Result<Result<Record<'a>, Opt<'a>>, ParseError> {
        let name = self.name()?;
        let rtype = Type(self.u16()?);
        let class = Class(self.u16()?);
        let ttl = self.u32()?;
        let rdlength = self.u16()? as usize;
        let rdata_start = self.pos;
        let rdata = self.take(rdlength)?;
        if rtype == Type::OPT {
            if self.section != Section::Additional || !name.is_root() {
                return Err(ParseError::BadOpt);
            }
            let [extended_rcode, version, f0, f1] = ttl.to_be_bytes();
            return Ok(Err(Opt {
                udp_payload_size: class.0,
                extended_rcode,
                version,
                flags: u16::from_be_bytes([f0, f1]),
                options: rdata,
            }));
        }
        let bad = ParseError::BadRdata(rtype);
        let data = match (rtype, class) {
            (Type::A, Class::IN) => RData::A(<[u8; 4]>::try_from(rdata).map_err(|_| bad)?.into()),
            (Type::AAAA, Class::IN) => {
                RData::Aaaa(<[u8; 16]>::try_from(rdata).map_err(|_| bad)?.into())
            }
            (Type::CNAME, _) => {
                // The name is read in the whole message (it may point
                // anywhere in it) but must end exactly where RDATA ends.
                let (end, len) = walk_name(self.msg, rdata_start, self.section, |_| {})?;
                if end != rdata_start + rdlength {
                    return Err(bad);
                }
                RData::Cname(Name {
                    msg: self.msg,
                    start: rdata_start,
                    len: len as u8,
                })
            }
            _ => RData::Other(rdata),
        };
        Ok(Ok(Record {
            name,
            rtype,
            class,
            ttl,
            data,
        }))
    }
}

impl<'a> Message<'a> {
    /// Parse `bytes` as a DNS message. See the [module docs](self) for what
    /// is checked.
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let header = Header::parse(bytes)?;
        let (qd, an, ns, ar) = (
            header.qdcount as usize,
            header.ancount as usize,
            header.nscount as usize,
            header.arcount as usize,
        );
        // Counts a message this long cannot hold are refused before any
        // work, so they also bound the allocations below.
        let room = bytes.len() - HEADER_LEN;
        if qd * MIN_QUESTION_LEN > room {
            return Err(ParseError::UnexpectedEnd(Section::Question));
        }
        for (section, count) in [
            (Section::Answer, an),
            (Section::Authority, an + ns),
            (Section::Additional, an + ns + ar),
        ] {
            if qd * MIN_QUESTION_LEN + count * MIN_RECORD_LEN > room {
                return Err(ParseError::UnexpectedEnd(section));
            }
        }
        let mut r = Reader {
            msg: bytes,
            pos: HEADER_LEN,
            section: Section::Question,
        };
        let mut questions = Vec::with_capacity(qd);
        for _ in 0..qd {
            questions.push(r.question()?);
        }
        let mut opt = None;
        let mut sections: [Vec<Record<'a>>; 3] = Default::default();
        for ((section, count), records) in [
            (Section::Answer, an),
            (Section::Authority, ns),
            (Section::Additional, ar),
        ]
        .into_iter()
        .zip(sections.iter_mut())
        {
            r.section = section;
            records.reserve(count);
            for _ in 0..count {
                match r.record()? {
                    Ok(record) => records.push(record),
                    Err(o) if opt.is_none() => opt = Some(o),
                    Err(_) => return Err(ParseError::BadOpt),
                }
            }
        }
        let [answers, authority, additional] = sections;
        Ok(Message {
            header,
            questions,
            answers,
            authority,
            additional,
            opt,
        })
    }

    /// The one question of a query or response, if there is exactly one.
    pub fn question(&self) -> Option<&Question> {
        match self.questions.as_slice() {
            [q] => Some(q),
            _ => None,
        }
    }

    /// The response code: the header's 4 bits, extended by the OPT
    /// record's upper 8 (RFC 6891 §6.1.3).
    pub fn rcode(&self) -> u16 {
        let upper = self.opt.map_or(0, |o| o.extended_rcode as u16);
        upper << 4 | self.header.flags.rcode().0 as u16
    }

    /// The largest UDP answer the sender of this query can take: the OPT
    /// record's payload size (never less than 512, RFC 6891 §6.2.5), or
    /// 512 without EDNS0.
    pub fn max_udp_payload(&self) -> usize {
        self.opt.map_or(MAX_UDP_LEN, |o| {
            (o.udp_payload_size as usize).max(MAX_UDP_LEN)
        })
    }
}

/// The builder's refusal: the message would be longer than 65535 octets.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TooLong;

impl fmt::Display for TooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DNS message longer than {MAX_MESSAGE_LEN} octets")
    }
}

impl std::error::Error for TooLong {}

/// Writes a message, names uncompressed. Entries go into their sections
/// in any order; [`MessageBuilder::finish`] lays the sections out and
/// fills in the counts. The OPT record, if any, ends the additional
/// section.
#[derive(Clone, Debug)]
pub struct MessageBuilder {
    id: u16,
    flags: Flags,
    sections: [Vec<u8>; 4],
    counts: [u16; 4],
    opt: Option<Vec<u8>>,
    len: usize,
}

impl MessageBuilder {
    /// An empty message with this ID and these flags.
    pub fn new(id: u16, flags: Flags) -> MessageBuilder {
        MessageBuilder {
            id,
            flags,
            sections: Default::default(),
            counts: [0; 4],
            opt: None,
            len: HEADER_LEN,
        }
    }

    fn push(&mut self, section: usize, entry: Vec<u8>) -> Result<(), TooLong> {
        if self.len + entry.len() > MAX_MESSAGE_LEN {
            return Err(TooLong);
        }
        self.len += entry.len();
        self.sections[section].extend_from_slice(&entry);
        // Each entry is at least 5 octets, so 65535 octets hold fewer
        // than 65536 of them.
        self.counts[section] += 1;
        Ok(())
    }

    /// Add a question.
    pub fn question(&mut self, q: &Question) -> Result<&mut Self, TooLong> {
        let mut e = q.name.as_wire().to_vec();
        e.extend_from_slice(&q.qtype.0.to_be_bytes());
        e.extend_from_slice(&q.qclass.0.to_be_bytes());
        self.push(0, e)?;
        Ok(self)
    }

    /// Add a record to the answer, authority or additional section
    /// (`Section::Header` and `Section::Question` are the answer section).
    pub fn record(&mut self, section: Section, r: &Record<'_>) -> Result<&mut Self, TooLong> {
        let mut e = r.name.to_owned_name().wire;
        e.extend_from_slice(&r.rtype.0.to_be_bytes());
        e.extend_from_slice(&r.class.0.to_be_bytes());
        e.extend_from_slice(&r.ttl.to_be_bytes());
        let rdata = match r.data {
            RData::A(a) => a.octets().to_vec(),
            RData::Aaaa(a) => a.octets().to_vec(),
            RData::Cname(n) => n.to_owned_name().wire,
            RData::Other(b) => b.to_vec(),
        };
        let rdlength = u16::try_from(rdata.len()).map_err(|_| TooLong)?;
        e.extend_from_slice(&rdlength.to_be_bytes());
        e.extend_from_slice(&rdata);
        let i = match section {
            Section::Authority => 2,
            Section::Additional => 3,
            _ => 1,
        };
        self.push(i, e)?;
        Ok(self)
    }

    /// Add the OPT record (replacing one added before).
    pub fn opt(&mut self, o: &Opt<'_>) -> Result<&mut Self, TooLong> {
        let mut e = vec![0];
        e.extend_from_slice(&Type::OPT.0.to_be_bytes());
        e.extend_from_slice(&o.udp_payload_size.to_be_bytes());
        e.extend_from_slice(&[o.extended_rcode, o.version]);
        e.extend_from_slice(&o.flags.to_be_bytes());
        let rdlength = u16::try_from(o.options.len()).map_err(|_| TooLong)?;
        e.extend_from_slice(&rdlength.to_be_bytes());
        e.extend_from_slice(o.options);
        let old = self.opt.as_ref().map_or(0, Vec::len);
        if self.len - old + e.len() > MAX_MESSAGE_LEN {
            return Err(TooLong);
        }
        self.len = self.len - old + e.len();
        self.opt = Some(e);
        Ok(self)
    }

    /// The message.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        let arcount = self.counts[3] + self.opt.is_some() as u16;
        for word in [
            self.id,
            self.flags.0,
            self.counts[0],
            self.counts[1],
            self.counts[2],
            arcount,
        ] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        for s in &self.sections {
            out.extend_from_slice(s);
        }
        if let Some(o) = &self.opt {
            out.extend_from_slice(o);
        }
        out
    }
}

/// A standard query (OPCODE QUERY, class IN) for `name` and `qtype`, with
/// RD set if `recursion_desired`: what a stub resolver sends.
pub fn build_query(id: u16, name: &DnsName, qtype: Type, recursion_desired: bool) -> Vec<u8> {
    let flags = Flags::default().with(Flags::RD, recursion_desired);
    let mut b = MessageBuilder::new(id, flags);
    // One name of at most 255 octets always fits.
    let _ = b.question(&Question::new(name.clone(), qtype));
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> DnsName {
        DnsName::from_dotted(s).unwrap()
    }

    /// A header with these fields, as bytes.
    fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
        let mut h = Vec::new();
        for w in [id, flags, counts[0], counts[1], counts[2], counts[3]] {
            h.extend_from_slice(&w.to_be_bytes());
        }
        h
    }

    /// A captured answer (dig @1.1.1.1 www.example.com A, trimmed to one
    /// CNAME and two A records), compressed the way servers compress:
    /// every owner name and the CNAME target point backwards.
    fn captured_cname_answer() -> Vec<u8> {
        let mut m = header(0xbeef, 0x8180, [1, 3, 0, 1]);
        // 12: www.example.com A IN
        m.extend_from_slice(b"\x03www\x07example\x03com\x00\x00\x01\x00\x01");
        // 33: www.example.com (ptr 12) CNAME IN ttl 300 -> www.example.com-v4.edgesuite.net
        m.extend_from_slice(b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x01\x2c");
        let target = b"\x03www\x07example\x06com-v4\x07edgekey\x03net\x00";
        m.extend_from_slice(&(target.len() as u16).to_be_bytes());
        let target_at = m.len();
        m.extend_from_slice(target);
        // A records owned by the CNAME target (pointer to it).
        for addr in [[93, 184, 215, 14], [93, 184, 215, 15]] {
            m.extend_from_slice(&[0xc0, target_at as u8]);
            m.extend_from_slice(b"\x00\x01\x00\x01\x00\x00\x00\x14\x00\x04");
            m.extend_from_slice(&addr);
        }
        // OPT: payload 1232, DO clear, one empty option (code 10 = cookie, 0 length).
        m.extend_from_slice(b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x00");
        m
    }

    /// A captured AAAA answer from a name server with an SOA in the
    /// authority section (names compressed, other RDATA left raw).
    fn captured_aaaa_answer() -> Vec<u8> {
        let mut m = header(0x1234, 0x8580, [1, 1, 1, 0]);
        m.extend_from_slice(b"\x04host\x04test\x00\x00\x1c\x00\x01");
        m.extend_from_slice(b"\xc0\x0c\x00\x1c\x00\x01\x00\x00\x0e\x10\x00\x10");
        m.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        // test SOA: owner is a pointer into the question's name ("test").
        m.extend_from_slice(b"\xc0\x11\x00\x06\x00\x01\x00\x00\x0e\x10");
        let soa = b"\x02ns\xc0\x11\x0ahostmaster\xc0\x11\x00\x00\x00\x01\x00\x00\x0e\x10\x00\x00\x03\x84\x00\x09\x3a\x80\x00\x00\x01\x2c";
        m.extend_from_slice(&(soa.len() as u16).to_be_bytes());
        m.extend_from_slice(soa);
        m
    }

    #[test]
    fn parses_a_captured_cname_chain_with_edns() {
        let bytes = captured_cname_answer();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.header.id, 0xbeef);
        assert!(m.header.flags.contains(Flags::QR | Flags::RD | Flags::RA));
        assert!(!m.header.flags.contains(Flags::TC));
        assert_eq!(m.header.flags.opcode(), Opcode::QUERY);
        assert_eq!(m.header.flags.rcode(), Rcode::NOERROR);
        assert_eq!(
            m.question(),
            Some(&Question::new(name("www.example.com"), Type::A))
        );
        assert_eq!(m.answers.len(), 3);
        let cname = &m.answers[0];
        assert_eq!(cname.name.to_string(), "www.example.com");
        assert_eq!(cname.rtype, Type::CNAME);
        assert_eq!(cname.ttl, 300);
        let RData::Cname(target) = cname.data else {
            panic!("not a CNAME: {cname:?}")
        };
        assert_eq!(target.to_string(), "www.example.com-v4.edgekey.net");
        for (r, last) in m.answers[1..].iter().zip([14, 15]) {
            assert_eq!(r.name, target);
            assert_eq!(r.data, RData::A(Ipv4Addr::new(93, 184, 215, last)));
        }
        assert!(m.additional.is_empty());
        let opt = m.opt.unwrap();
        assert_eq!(opt.udp_payload_size, 1232);
        assert_eq!(opt.options, b"\x00\x0a\x00\x00");
        assert_eq!(m.max_udp_payload(), 1232);
        assert_eq!(m.rcode(), 0);
    }

    #[test]
    fn parses_a_captured_aaaa_answer_and_keeps_other_rdata_raw() {
        let bytes = captured_aaaa_answer();
        let m = Message::parse(&bytes).unwrap();
        assert!(m.header.flags.contains(Flags::AA));
        assert_eq!(
            m.answers[0].data,
            RData::Aaaa("2001:db8::7".parse().unwrap())
        );
        assert_eq!(m.authority.len(), 1);
        let soa = &m.authority[0];
        assert_eq!(soa.name.to_string(), "test");
        assert_eq!(soa.rtype, Type::SOA);
        let RData::Other(raw) = soa.data else {
            panic!("SOA decoded")
        };
        assert_eq!(raw.len(), 38);
        assert!(m.opt.is_none());
        assert_eq!(m.max_udp_payload(), MAX_UDP_LEN);
    }

    #[test]
    fn follows_forward_pointers() {
        // The question's name is a pointer forward, to the CNAME target in
        // the answer's RDATA; the answer's owner points back at the
        // question: two hops. Legal, if unusual.
        let mut m = header(1, 0x8000, [1, 1, 0, 0]);
        m.extend_from_slice(b"\xc0\x1e\x00\x05\x00\x01"); // 12: ptr to 30
        m.extend_from_slice(b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x01\x00\x06"); // 18
        assert_eq!(m.len(), 30);
        m.extend_from_slice(b"\x01a\x02bc\x00");
        let msg = Message::parse(&m).unwrap();
        assert_eq!(msg.questions[0].name.to_string(), "a.bc");
        assert_eq!(msg.answers[0].name.to_string(), "a.bc");
        assert_eq!(msg.answers[0].data, RData::Cname(msg.answers[0].name));
    }

    #[test]
    fn a_pointer_loop_is_an_error() {
        // The question's name points at itself.
        let mut m = header(1, 0, [1, 0, 0, 0]);
        m.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01");
        assert_eq!(Message::parse(&m).unwrap_err(), ParseError::PointerLoop);
        // Two names pointing at each other, each with a label: the name
        // grows on every turn, and the length bound ends it.
        let mut m = header(1, 0, [1, 0, 0, 0]);
        m.extend_from_slice(b"\x01a\xc0\x14\x00\x01\x00\x01\x01b\xc0\x0c");
        assert_eq!(Message::parse(&m).unwrap_err(), ParseError::NameTooLong);
    }

    #[test]
    fn a_long_pointer_chain_is_bounded() {
        // 200 pointers each to the next, ending at the root: not a loop,
        // but more hops than any real name needs.
        let mut m = header(1, 0, [1, 0, 0, 0]);
        for i in 0..200u16 {
            let next = HEADER_LEN as u16 + 2 * (i + 1);
            m.extend_from_slice(&(0xc000 | next).to_be_bytes());
        }
        m.extend_from_slice(b"\x00\x00\x01\x00\x01");
        assert_eq!(Message::parse(&m).unwrap_err(), ParseError::PointerLoop);
        // A chain within the bound is fine.
        let mut m = header(1, 0, [1, 0, 0, 0]);
        for i in 0..MAX_POINTERS as u16 {
            let next = HEADER_LEN as u16 + 2 * (i + 1);
            m.extend_from_slice(&(0xc000 | next).to_be_bytes());
        }
        m.extend_from_slice(b"\x00\x00\x01\x00\x01");
        assert!(Message::parse(&m).unwrap().questions[0].name == DnsName::root());
    }

    #[test]
    fn pointers_past_the_end_or_into_the_header_are_errors() {
        let mut m = header(1, 0, [1, 0, 0, 0]);
        m.extend_from_slice(b"\xc0\xff\x00\x01\x00\x01");
        assert_eq!(Message::parse(&m).unwrap_err(), ParseError::BadPointer(255));
        let mut m = header(1, 0, [1, 0, 0, 0]);
        m.extend_from_slice(b"\xff\xff\x00\x01\x00\x01");
        assert_eq!(
            Message::parse(&m).unwrap_err(),
            ParseError::BadPointer(0x3fff)
        );
        let mut m = header(1, 0, [1, 0, 0, 0]);
        m.extend_from_slice(b"\xc0\x02\x00\x01\x00\x01");
        assert_eq!(Message::parse(&m).unwrap_err(), ParseError::BadPointer(2));
        // A pointer cut in half by the end of the message.
        let mut m = header(1, 0, [1, 0, 0, 0]);
        m.push(0xc0);
        assert_eq!(
            Message::parse(&m).unwrap_err(),
            ParseError::UnexpectedEnd(Section::Question)
        );
    }

    #[test]
    fn label_overflow_and_reserved_label_types_are_errors() {
        // A label that claims 63 octets with 3 left.
        let mut m = header(1, 0, [1, 0, 0, 0]);
        m.extend_from_slice(b"\x3fabc");
        assert_eq!(
            Message::parse(&m).unwrap_err(),
            ParseError::UnexpectedEnd(Section::Question)
        );
        // Length octets 64 and 128: the reserved 01 and 10 label types.
        for b in [0x40u8, 0x80] {
            let mut m = header(1, 0, [1, 0, 0, 0]);
            m.push(b);
            m.extend_from_slice(&[b'x'; 70]);
            m.extend_from_slice(b"\x00\x00\x01\x00\x01");
            assert_eq!(Message::parse(&m).unwrap_err(), ParseError::BadLabelType(b));
        }
    }

    #[test]
    fn names_longer_than_255_octets_are_errors() {
        // Four 63-octet labels: 4 * 64 + 1 = 257 octets.
        let mut m = header(1, 0, [1, 0, 0, 0]);
        for _ in 0..4 {
            m.push(63);
            m.extend_from_slice(&[b'a'; 63]);
        }
        m.extend_from_slice(b"\x00\x00\x01\x00\x01");
        assert_eq!(Message::parse(&m).unwrap_err(), ParseError::NameTooLong);
        // Exactly 255 is fine: three 63-octet labels and one of 61.
        let mut m = header(1, 0, [1, 0, 0, 0]);
        for n in [63u8, 63, 63, 61] {
            m.push(n);
            m.extend_from_slice(&vec![b'a'; n as usize]);
        }
        m.extend_from_slice(b"\x00\x00\x01\x00\x01");
        let q = &Message::parse(&m).unwrap().questions[0];
        assert_eq!(q.name.as_wire().len(), MAX_NAME_LEN);
        // Reaching 257 only through a pointer is still too long.
        let mut m = header(1, 0, [2, 0, 0, 0]);
        for n in [63u8, 63, 63] {
            m.push(n);
            m.extend_from_slice(&vec![b'a'; n as usize]);
        }
        m.extend_from_slice(b"\x00\x00\x01\x00\x01");
        m.extend_from_slice(b"\x3f");
        m.extend_from_slice(&[b'b'; 63]);
        m.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01");
        assert_eq!(Message::parse(&m).unwrap_err(), ParseError::NameTooLong);
    }

    #[test]
    fn counts_larger_than_the_message_are_errors() {
        let m = header(1, 0x8000, [1, 0, 0, 0]);
        assert_eq!(
            Message::parse(&m).unwrap_err(),
            ParseError::UnexpectedEnd(Section::Question)
        );
        let mut m = header(1, 0x8000, [0, 0xffff, 0xffff, 0xffff]);
        m.extend_from_slice(&[0; 64]);
        assert_eq!(
            Message::parse(&m).unwrap_err(),
            ParseError::UnexpectedEnd(Section::Answer)
        );
        let mut m = header(1, 0x8000, [0xffff, 0, 0, 0]);
        m.extend_from_slice(&[0; 64]);
        assert_eq!(
            Message::parse(&m).unwrap_err(),
            ParseError::UnexpectedEnd(Section::Question)
        );
        // Counts the length allows but the records are not there: the
        // captured answer claiming one more authority record than it has.
        let mut bytes = captured_aaaa_answer();
        bytes[9] = 2;
        assert_eq!(
            Message::parse(&bytes).unwrap_err(),
            ParseError::UnexpectedEnd(Section::Authority)
        );
        // And RDATA longer than what is left.
        let mut bytes = captured_aaaa_answer();
        bytes.truncate(bytes.len() - 1);
        assert_eq!(
            Message::parse(&bytes).unwrap_err(),
            ParseError::UnexpectedEnd(Section::Authority)
        );
    }

    #[test]
    fn short_messages_are_errors() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Message::parse(&vec![0; len]).unwrap_err(),
                ParseError::UnexpectedEnd(Section::Header)
            );
            assert!(Header::parse(&vec![0; len]).is_err());
            assert!(set_id(&mut vec![0; len], 1).is_err());
        }
        assert_eq!(Message::parse(&[0; HEADER_LEN]).unwrap().questions, vec![]);
    }

    #[test]
    fn bad_rdata_lengths_are_errors() {
        for (rtype, len) in [(Type::A, 3usize), (Type::A, 5), (Type::AAAA, 4)] {
            let mut m = header(1, 0x8000, [0, 1, 0, 0]);
            m.extend_from_slice(&[0]);
            m.extend_from_slice(&rtype.0.to_be_bytes());
            m.extend_from_slice(b"\x00\x01\x00\x00\x00\x01");
            m.extend_from_slice(&(len as u16).to_be_bytes());
            m.extend_from_slice(&vec![1; len]);
            assert_eq!(Message::parse(&m).unwrap_err(), ParseError::BadRdata(rtype));
        }
        // A CNAME whose name ends before its RDATA does.
        let mut m = header(1, 0x8000, [0, 1, 0, 0]);
        m.extend_from_slice(b"\x00\x00\x05\x00\x01\x00\x00\x00\x01\x00\x04\x01a\x00\x00");
        assert_eq!(
            Message::parse(&m).unwrap_err(),
            ParseError::BadRdata(Type::CNAME)
        );
        // A of another class is not an address: kept raw.
        let mut m = header(1, 0x8000, [0, 1, 0, 0]);
        m.extend_from_slice(b"\x00\x00\x01\x00\x03\x00\x00\x00\x01\x00\x02\x01\x02");
        let parsed = Message::parse(&m).unwrap();
        assert_eq!(parsed.answers[0].data, RData::Other(b"\x01\x02"));
    }

    #[test]
    fn opt_must_be_one_root_record_in_the_additional_section() {
        let opt = b"\x00\x00\x29\x10\x00\x00\x00\x80\x00\x00\x00";
        let mut m = header(1, 0, [0, 1, 0, 0]);
        m.extend_from_slice(opt);
        assert_eq!(Message::parse(&m).unwrap_err(), ParseError::BadOpt);
        let mut m = header(1, 0, [0, 0, 0, 2]);
        m.extend_from_slice(opt);
        m.extend_from_slice(opt);
        assert_eq!(Message::parse(&m).unwrap_err(), ParseError::BadOpt);
        let mut m = header(1, 0, [0, 0, 0, 1]);
        m.extend_from_slice(b"\x01a");
        m.extend_from_slice(opt);
        assert_eq!(Message::parse(&m).unwrap_err(), ParseError::BadOpt);
        let mut m = header(1, 0, [0, 0, 0, 1]);
        m.extend_from_slice(opt);
        let o = Message::parse(&m).unwrap().opt.unwrap();
        assert_eq!(o.udp_payload_size, 4096);
        assert_eq!(o.flags, Opt::DO);
    }

    #[test]
    fn extended_rcode_and_flags_read_right() {
        let mut m = header(7, 0x8000 | 0x0200 | 0x0006, [0, 0, 0, 1]);
        // OPT with extended RCODE 1: BADVERS (16) = 1 << 4 | 0.
        m.extend_from_slice(b"\x00\x00\x29\x02\x00\x01\x00\x00\x00\x00\x00");
        let msg = Message::parse(&m).unwrap();
        assert!(msg.header.flags.contains(Flags::TC));
        assert_eq!(msg.rcode(), 16 | 6);
        let f = Flags::default()
            .with_opcode(Opcode(5))
            .with_rcode(Rcode::REFUSED);
        assert_eq!(f.opcode(), Opcode(5));
        assert_eq!(f.rcode(), Rcode::REFUSED);
        assert_eq!(f.with(Flags::QR, true).with(Flags::QR, false), f);
    }

    #[test]
    fn query_builder_writes_what_the_parser_reads() {
        let q = build_query(0xabcd, &name("Web.Test"), Type::AAAA, true);
        assert_eq!(
            q,
            b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03Web\x04Test\x00\x00\x1c\x00\x01"
        );
        let m = Message::parse(&q).unwrap();
        assert_eq!(m.header.id, 0xabcd);
        assert!(m.header.flags.contains(Flags::RD));
        assert!(!m.header.flags.contains(Flags::QR));
        let question = m.question().unwrap();
        assert_eq!(question, &Question::new(name("web.test"), Type::AAAA));
        // Case is preserved on the wire even though it does not count.
        assert_eq!(question.name.to_string(), "Web.Test");
        let q = build_query(1, &name("a.b"), Type::A, false);
        assert!(!Message::parse(&q).unwrap().header.flags.contains(Flags::RD));
    }

    #[test]
    fn builder_round_trips_a_compressed_answer() {
        let bytes = captured_cname_answer();
        let m = Message::parse(&bytes).unwrap();
        let mut b = MessageBuilder::new(m.header.id, m.header.flags);
        for q in &m.questions {
            b.question(q).unwrap();
        }
        for r in &m.answers {
            b.record(Section::Answer, r).unwrap();
        }
        b.opt(&m.opt.unwrap()).unwrap();
        let rebuilt = b.finish();
        // Uncompressed, so longer; the same message when read back.
        assert!(rebuilt.len() > bytes.len());
        let again = Message::parse(&rebuilt).unwrap();
        assert_eq!(again.header, m.header);
        assert_eq!(again.questions, m.questions);
        assert_eq!(again.answers, m.answers);
        assert_eq!(again.opt, m.opt);
    }

    #[test]
    fn builder_refuses_more_than_65535_octets() {
        let mut b = MessageBuilder::new(0, Flags::QR);
        let big = [0u8; 60000];
        let r = Record {
            name: Name {
                msg: &[0],
                start: 0,
                len: 1,
            },
            rtype: Type::TXT,
            class: Class::IN,
            ttl: 0,
            data: RData::Other(&big),
        };
        b.record(Section::Answer, &r).unwrap();
        assert_eq!(b.record(Section::Answer, &r).unwrap_err(), TooLong);
        let o = Opt {
            udp_payload_size: 512,
            extended_rcode: 0,
            version: 0,
            flags: 0,
            options: &big[..10000],
        };
        assert_eq!(b.opt(&o).unwrap_err(), TooLong);
        assert_eq!(Message::parse(&b.finish()).unwrap().answers.len(), 1);
    }

    #[test]
    fn set_id_changes_only_the_id() {
        let mut q = build_query(1, &name("a.test"), Type::A, true);
        let before = q.clone();
        set_id(&mut q, 0x4242).unwrap();
        assert_eq!(Header::parse(&q).unwrap().id, 0x4242);
        assert_eq!(q[2..], before[2..]);
    }

    #[test]
    fn host_name_validation() {
        assert_eq!(name("example.com").as_wire(), b"\x07example\x03com\x00");
        assert_eq!(name("example.com."), name("EXAMPLE.com"));
        assert_eq!(name("a-b.c0").to_string(), "a-b.c0");
        let label63 = "a".repeat(63);
        assert!(DnsName::from_dotted(&label63).is_ok());
        let long = [label63.as_str(); 3].join(".") + "." + &"b".repeat(61);
        assert_eq!(long.len(), 253);
        assert_eq!(name(&long).as_wire().len(), MAX_NAME_LEN);
        for (bad, err) in [
            ("", NameError::Empty),
            (".", NameError::Empty),
            ("a..b", NameError::EmptyLabel),
            (".a", NameError::EmptyLabel),
            ("a.b..", NameError::EmptyLabel),
            ("a_b.test", NameError::BadChar('_')),
            ("a b", NameError::BadChar(' ')),
            ("a\\.b", NameError::BadChar('\\')),
            ("héllo.test", NameError::BadChar('é')),
            ("-a.test", NameError::HyphenAtEdge),
            ("a-.test", NameError::HyphenAtEdge),
            ("10.0.0.1", NameError::NumericTld),
            ("host.123", NameError::NumericTld),
        ] {
            assert_eq!(DnsName::from_dotted(bad).unwrap_err(), err, "{bad:?}");
        }
        let too_long_label = "a".repeat(64) + ".test";
        assert_eq!(
            DnsName::from_dotted(&too_long_label).unwrap_err(),
            NameError::LabelTooLong
        );
        let too_long = long + "b";
        assert_eq!(
            DnsName::from_dotted(&too_long).unwrap_err(),
            NameError::NameTooLong
        );
    }

    #[test]
    fn questions_match_ignoring_case_only() {
        use std::collections::hash_map::DefaultHasher;
        let hash = |q: &Question| {
            let mut h = DefaultHasher::new();
            q.hash(&mut h);
            h.finish()
        };
        let a = Question::new(name("WwW.ExAmPlE.cOm"), Type::A);
        let b = Question::new(name("www.example.com"), Type::A);
        assert_eq!(a, b);
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(a, Question::new(name("www.example.com"), Type::AAAA));
        assert_ne!(a, Question::new(name("www.example.org"), Type::A));
        assert_ne!(a, Question::new(name("www.example.com.a"), Type::A));
        let mut other_class = b.clone();
        other_class.qclass = Class(3);
        assert_ne!(a, other_class);
        // A name in a message compares with an owned one the same way.
        let bytes = captured_cname_answer();
        let m = Message::parse(&bytes).unwrap();
        assert!(name("WWW.EXAMPLE.COM") == m.answers[0].name);
        assert!(name("www.example.co") != m.answers[0].name);
    }

    #[test]
    fn display_escapes_what_is_not_a_plain_label() {
        let mut m = header(1, 0, [1, 0, 0, 0]);
        m.extend_from_slice(b"\x04a.b\\\x02\x00\xff\x00\x00\x01\x00\x01");
        let msg = Message::parse(&m).unwrap();
        assert_eq!(msg.questions[0].name.to_string(), "a\\.b\\\\.\\000\\255");
        assert_eq!(DnsName::root().to_string(), ".");
        assert_eq!(format!("{:?}", Type(99)), "TYPE99");
        assert_eq!(format!("{:?}", Type::AAAA), "AAAA");
    }

    #[test]
    fn trailing_octets_are_ignored() {
        let mut q = build_query(5, &name("a.test"), Type::A, true);
        q.extend_from_slice(b"junk");
        assert_eq!(Message::parse(&q).unwrap().questions.len(), 1);
    }
}
