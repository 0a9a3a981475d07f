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

mod build;
mod message;
mod name;

pub use build::{build_query, MessageBuilder, TooLong};
pub use message::{Message, Opt, Question, RData, Record};
pub use name::{DnsName, Labels, Name, NameError};

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

#[cfg(test)]
mod tests;
