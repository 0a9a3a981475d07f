use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};

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
