//! Fuzz body for the DNS message parser (`wire::dns`): any bytes as a
//! message, and as a host name.
//!
//! Properties: parsing never panics (and never loops: libFuzzer's timeout
//! catches that); every name of a parsed message reads within the RFC 1035
//! bounds; a parsed message written again by `MessageBuilder` (names
//! uncompressed) parses to the same header, questions, records and OPT,
//! byte for byte in names and case, unless it no longer fits in 65535
//! octets; and writing that again gives the same bytes. A string the
//! host-name validator accepts has LDH labels within the length limits and
//! survives printing and validating again.

use crate::wire::dns::{
    self, DnsName, Header, Message, MessageBuilder, Name, RData, Record, Section, TooLong,
    MAX_LABEL_LEN, MAX_NAME_LEN,
};

/// Run one input.
pub fn run(data: &[u8]) {
    check_host_name(data);
    let Ok(m) = Message::parse(data) else {
        return;
    };
    assert_eq!(Header::parse(data).ok(), Some(m.header));
    let mut with_id = data.to_vec();
    dns::set_id(&mut with_id, !m.header.id).unwrap();
    assert_eq!(with_id[2..], data[2..]);

    for q in &m.questions {
        check_name(q.name.as_name());
    }
    for r in records(&m) {
        check_name(r.name);
        if let RData::Cname(target) = r.data {
            check_name(target);
        }
    }

    let Ok(bytes) = rebuild(&m) else {
        // Decompressed, the names no longer fit in one message.
        return;
    };
    let again = Message::parse(&bytes).expect("a rebuilt message parses");
    assert_eq!(again.header.id, m.header.id);
    assert_eq!(again.header.flags, m.header.flags);
    assert_eq!(again.questions.len(), m.questions.len());
    for (a, b) in again.questions.iter().zip(&m.questions) {
        assert_eq!(a.name.as_wire(), b.name.as_wire());
        assert_eq!((a.qtype, a.qclass), (b.qtype, b.qclass));
    }
    for (a, b) in [
        (&again.answers, &m.answers),
        (&again.authority, &m.authority),
        (&again.additional, &m.additional),
    ] {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            same_record(x, y);
        }
    }
    assert_eq!(again.opt, m.opt);
    assert_eq!(
        rebuild(&again).expect("fits again"),
        bytes,
        "rebuilding is a fixpoint"
    );
}

fn records<'m, 'a>(m: &'m Message<'a>) -> impl Iterator<Item = &'m Record<'a>> {
    m.answers.iter().chain(&m.authority).chain(&m.additional)
}

fn rebuild(m: &Message<'_>) -> Result<Vec<u8>, TooLong> {
    let mut b = MessageBuilder::new(m.header.id, m.header.flags);
    for q in &m.questions {
        b.question(q)?;
    }
    for (section, records) in [
        (Section::Answer, &m.answers),
        (Section::Authority, &m.authority),
        (Section::Additional, &m.additional),
    ] {
        for r in records {
            b.record(section, r)?;
        }
    }
    if let Some(o) = &m.opt {
        b.opt(o)?;
    }
    Ok(b.finish())
}

fn check_name(n: Name<'_>) {
    let labels: Vec<&[u8]> = n.labels().collect();
    assert!(labels
        .iter()
        .all(|l| !l.is_empty() && l.len() <= MAX_LABEL_LEN));
    let len = 1 + labels.iter().map(|l| 1 + l.len()).sum::<usize>();
    assert_eq!(len, n.wire_len());
    assert!(len <= MAX_NAME_LEN);
    let owned = n.to_owned_name();
    assert_eq!(owned.as_wire().len(), len);
    assert!(owned == n && n.eq_ignore_case(&owned.as_name()));
    let _ = n.to_string();
}

fn same_record(x: &Record<'_>, y: &Record<'_>) {
    assert_eq!(
        x.name.to_owned_name().as_wire(),
        y.name.to_owned_name().as_wire()
    );
    assert_eq!((x.rtype, x.class, x.ttl), (y.rtype, y.class, y.ttl));
    match (x.data, y.data) {
        (RData::Cname(a), RData::Cname(b)) => {
            assert_eq!(a.to_owned_name().as_wire(), b.to_owned_name().as_wire())
        }
        (a, b) => assert_eq!(a, b),
    }
}

fn check_host_name(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(name) = DnsName::from_dotted(s) else {
        return;
    };
    let wire = name.as_wire();
    assert!(wire.len() <= MAX_NAME_LEN);
    let labels: Vec<&[u8]> = name.as_name().labels().collect();
    assert!(!labels.is_empty());
    for l in &labels {
        assert!(!l.is_empty() && l.len() <= MAX_LABEL_LEN);
        assert!(l.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-'));
        assert!(l[0] != b'-' && l[l.len() - 1] != b'-');
    }
    let again = DnsName::from_dotted(&name.to_string()).expect("printed name validates");
    assert_eq!(again.as_wire(), wire);
}

/// Seeds: queries and real-world-shaped answers (compressed names, CNAME
/// chains, an SOA, EDNS0, TC), and a few hostile messages. No name starts
/// with a hex digit: git ignores those in `fuzz/corpus/` (libFuzzer's own
/// names).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let header = |id: u16, flags: u16, counts: [u16; 4]| {
        let mut h = Vec::new();
        for w in [id, flags, counts[0], counts[1], counts[2], counts[3]] {
            h.extend_from_slice(&w.to_be_bytes());
        }
        h
    };
    let name = |s: &str| DnsName::from_dotted(s).unwrap();
    let mut seeds = vec![
        (
            "query-a".to_string(),
            dns::build_query(0x1234, &name("web.test"), dns::Type::A, true),
        ),
        (
            "query-aaaa".to_string(),
            dns::build_query(0x4321, &name("www.Example.com"), dns::Type::AAAA, true),
        ),
    ];

    // A CNAME chain to two A records, names compressed, with an OPT record.
    let mut m = header(0xbeef, 0x8180, [1, 3, 0, 1]);
    m.extend_from_slice(b"\x03www\x07example\x03com\x00\x00\x01\x00\x01");
    m.extend_from_slice(b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x01\x2c");
    let target = b"\x03www\x07example\x06com-v4\x07edgekey\x03net\x00";
    m.extend_from_slice(&(target.len() as u16).to_be_bytes());
    let target_at = m.len() as u8;
    m.extend_from_slice(target);
    for last in [14, 15] {
        m.extend_from_slice(&[0xc0, target_at]);
        m.extend_from_slice(b"\x00\x01\x00\x01\x00\x00\x00\x14\x00\x04\x5d\xb8\xd7");
        m.push(last);
    }
    m.extend_from_slice(b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x00");
    seeds.push(("reply-cname-a-edns".to_string(), m));

    // An authoritative AAAA answer with an SOA in the authority section.
    let mut m = header(0x1234, 0x8580, [1, 1, 1, 0]);
    m.extend_from_slice(b"\x04host\x04test\x00\x00\x1c\x00\x01");
    m.extend_from_slice(b"\xc0\x0c\x00\x1c\x00\x01\x00\x00\x0e\x10\x00\x10");
    m.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
    m.extend_from_slice(b"\xc0\x11\x00\x06\x00\x01\x00\x00\x0e\x10\x00\x26");
    m.extend_from_slice(b"\x02ns\xc0\x11\x0ahostmaster\xc0\x11\x00\x00\x00\x01\x00\x00\x0e\x10\x00\x00\x03\x84\x00\x09\x3a\x80\x00\x00\x01\x2c");
    seeds.push(("reply-aaaa-soa".to_string(), m));

    // NXDOMAIN, truncated, a forward pointer, a pointer loop, a pointer
    // past the end, a count larger than the message.
    let mut m = header(9, 0x8183, [1, 0, 0, 0]);
    m.extend_from_slice(b"\x07nowhere\x04test\x00\x00\x01\x00\x01");
    seeds.push(("reply-nxdomain".to_string(), m));
    let mut m = header(10, 0x8380, [1, 0, 0, 0]);
    m.extend_from_slice(b"\x03big\x04test\x00\x00\x10\x00\x01");
    seeds.push(("reply-truncated".to_string(), m));
    let mut m = header(1, 0x8000, [1, 1, 0, 0]);
    m.extend_from_slice(b"\xc0\x1e\x00\x05\x00\x01");
    m.extend_from_slice(b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x01\x00\x06\x01a\x02bc\x00");
    seeds.push(("pointer-forward".to_string(), m));
    let mut m = header(1, 0, [1, 0, 0, 0]);
    m.extend_from_slice(b"\x01a\xc0\x14\x00\x01\x00\x01\x01b\xc0\x0c");
    seeds.push(("pointer-loop".to_string(), m));
    let mut m = header(1, 0, [1, 0, 0, 0]);
    m.extend_from_slice(b"\xc0\xff\x00\x01\x00\x01");
    seeds.push(("pointer-past-end".to_string(), m));
    let mut m = header(1, 0x8000, [0, 0xffff, 0, 0]);
    m.extend_from_slice(&[0; 32]);
    seeds.push(("too-large-count".to_string(), m));
    seeds.push(("host-name".to_string(), b"Web-1.example.test.".to_vec()));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_as_intended() {
        let seeds = seeds();
        let parsed = |n: &str| {
            let (_, bytes) = seeds.iter().find(|(name, _)| name == n).unwrap();
            Message::parse(bytes)
        };
        for ok in [
            "query-a",
            "query-aaaa",
            "reply-cname-a-edns",
            "reply-aaaa-soa",
            "reply-nxdomain",
            "reply-truncated",
            "pointer-forward",
        ] {
            assert!(parsed(ok).is_ok(), "{ok}");
        }
        for bad in ["pointer-loop", "pointer-past-end", "too-large-count"] {
            assert!(parsed(bad).is_err(), "{bad}");
        }
        for (_, bytes) in &seeds {
            run(bytes);
        }
    }
}
