//! The parser: a message's sections as views of its bytes.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::name::{walk_name, DnsName, Name};
use super::{
    Class, Header, ParseError, Section, Type, HEADER_LEN, MAX_UDP_LEN, MIN_QUESTION_LEN,
    MIN_RECORD_LEN,
};

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
    /// Parse `bytes` as a DNS message. See the [module docs](super) for what
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
