//! The builder: messages with uncompressed names.

use std::fmt;

use super::{
    DnsName, Flags, Opt, Question, RData, Record, Section, Type, HEADER_LEN, MAX_MESSAGE_LEN,
};

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
