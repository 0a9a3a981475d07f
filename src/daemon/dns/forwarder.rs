//! The DNS forwarder's front end: queries from clients in, replies out,
//! the upstream side through a [`QueryTable`].
//!
//! A client's query goes upstream as the client sent it (flags, EDNS0
//! OPT record and options included), only its ID replaced by the table's
//! fresh random one; the accepted answer comes back to the client under
//! the client's ID. So the forwarder changes nothing a client asked for,
//! and a client cannot choose the ID or the port an upstream sees.
//!
//! What is not forwarded: datagrams shorter than a header and responses
//! (QR set) are dropped and counted, since answering a response could
//! start a loop between two servers; a message that does not parse gets
//! FORMERR, a query with other than one question FORMERR, an opcode other
//! than QUERY NOTIMP (RFC 1035 §4.1.1), a query that finds the table full
//! REFUSED, and a query no upstream answered SERVFAIL. An answer larger
//! than the client can take over UDP (512 octets, or its OPT record's
//! payload size) is replaced by its header and question with TC set, so
//! the client asks again over TCP (RFC 1035 §4.2.1, RFC 2181 §9).
//!
//! Bounds: the table's. Every query in the table, and every finished one
//! not yet taken, holds one of its `max_in_flight` places.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;

use super::table::AttemptId;
use super::table::{
    DnsCounters, Failure, Full, Output, QueryTable, TableConfig, TableConfigError, Transmit,
};
use ephemera::wire::dns::{
    self, Flags, Header, Message, MessageBuilder, Opcode, Opt, Question, Rcode,
};
use ephemera::Instant;
use ephemera::Rng;

/// Most replies written by the front end itself (errors) waiting to be
/// taken; more are dropped and counted. The driver takes them after every
/// call, so one is the most that waits in practice.
const MAX_REPLIES: usize = 64;

/// EDNS0 payload size the forwarder announces in replies it writes
/// itself (RFC 6891 §6.2.5; 1232 is the DNS flag day 2020 choice).
const EDNS_PAYLOAD: u16 = 1232;

/// Who asked, and how to answer them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Client {
    /// Our address the query came to; the reply leaves from it.
    server: SocketAddr,
    /// The client's address and port.
    addr: SocketAddr,
    /// The client's ID.
    id: u16,
    /// The query's flags, for the RD bit of replies written here.
    flags: Flags,
    question: Question,
    /// Largest UDP reply the client takes.
    max_udp: usize,
    /// Whether the query had an OPT record (then replies written here
    /// have one too, RFC 6891 §7).
    edns: bool,
}

/// What the forwarder has for its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ForwarderOutput {
    /// Upstream work, as [`QueryTable::poll_output`] gives it: report back
    /// with [`Forwarder::handle_sent`] and the other `handle_*` methods.
    Transmit(Transmit),
    /// Send `message` from `from` (the address the query came to) to the
    /// client at `to`.
    Reply {
        /// Our address.
        from: SocketAddr,
        /// The client.
        to: SocketAddr,
        /// The DNS message.
        message: Vec<u8>,
    },
}

/// What the forwarder's front end did, besides the table's counters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ForwarderCounters {
    /// Datagrams from clients dropped unanswered: shorter than a header,
    /// a response, or an error reply with no room to wait in.
    pub dropped: u64,
    /// Queries answered with FORMERR or NOTIMP.
    pub malformed: u64,
    /// Answers too large for the client, replaced by a TC reply.
    pub truncated_for_client: u64,
}

impl ForwarderCounters {
    /// The counters by name.
    pub fn iter(&self) -> [(&'static str, u64); 3] {
        [
            ("dns_forward_dropped", self.dropped),
            ("dns_forward_malformed", self.malformed),
            ("dns_forward_client_truncated", self.truncated_for_client),
        ]
    }
}

/// A DNS forwarder. See the [module docs](self).
pub(crate) struct Forwarder {
    table: QueryTable<Client>,
    /// Replies written by the front end itself, not yet taken; at most
    /// `MAX_REPLIES`.
    replies: VecDeque<ForwarderOutput>,
    counters: ForwarderCounters,
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("table", &self.table)
            .field("counters", &self.counters)
            .finish()
    }
}

impl Forwarder {
    /// A forwarder to `config.upstreams`; upstream query IDs come from
    /// `rng`.
    pub fn new(config: TableConfig, rng: Box<dyn Rng>) -> Result<Forwarder, TableConfigError> {
        Ok(Forwarder {
            table: QueryTable::new(config, rng)?,
            replies: VecDeque::new(),
            counters: ForwarderCounters::default(),
        })
    }

    /// The front end's counters.
    pub fn counters(&self) -> ForwarderCounters {
        self.counters
    }

    /// The upstream table's counters.
    pub fn table_counters(&self) -> DnsCounters {
        self.table.counters()
    }

    /// A datagram from client `addr` arrived at our `server` address.
    pub fn handle_query(
        &mut self,
        now: Instant,
        server: SocketAddr,
        addr: SocketAddr,
        bytes: &[u8],
    ) {
        let Ok(header) = Header::parse(bytes) else {
            self.counters.dropped += 1;
            return;
        };
        if header.flags.contains(Flags::QR) {
            self.counters.dropped += 1;
            return;
        }
        let reply_flags = |rcode| {
            Flags::QR
                .with_opcode(header.flags.opcode())
                .with(Flags::RD, header.flags.contains(Flags::RD))
                .with_rcode(rcode)
        };
        let m = match Message::parse(bytes) {
            Ok(m) => m,
            Err(_) => {
                // Header alone: the question may be what did not parse.
                self.counters.malformed += 1;
                let message = MessageBuilder::new(header.id, reply_flags(Rcode::FORMERR)).finish();
                self.reply(server, addr, message);
                return;
            }
        };
        let edns = m.opt.is_some();
        let error = match (m.header.flags.opcode(), m.question()) {
            (Opcode::QUERY, Some(_)) => None,
            (Opcode::QUERY, None) => Some(Rcode::FORMERR),
            _ => Some(Rcode::NOTIMP),
        };
        if let Some(rcode) = error {
            self.counters.malformed += 1;
            let mut b = MessageBuilder::new(header.id, reply_flags(rcode));
            if let Some(q) = m.question() {
                let _ = b.question(q);
            }
            if edns {
                let _ = b.opt(&our_opt());
            }
            self.reply(server, addr, b.finish());
            return;
        }
        let Some(question) = m.question().cloned() else {
            return;
        };
        let client = Client {
            server,
            addr,
            id: header.id,
            flags: header.flags,
            question: question.clone(),
            max_udp: m.max_udp_payload(),
            edns,
        };
        if let Err(Full) = self
            .table
            .start(now, client.clone(), question, bytes.to_vec())
        {
            let message = error_reply(&client, Rcode::REFUSED);
            self.reply(server, addr, message);
        }
    }

    /// See [`QueryTable::handle_sent`].
    pub fn handle_sent(&mut self, now: Instant, attempt: AttemptId, local: SocketAddr) {
        self.table.handle_sent(now, attempt, local);
    }

    /// See [`QueryTable::handle_datagram`].
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
    ) {
        self.table.handle_datagram(now, local, from, bytes);
    }

    /// See [`QueryTable::handle_tcp_answer`].
    pub fn handle_tcp_answer(&mut self, attempt: AttemptId, bytes: &[u8]) {
        self.table.handle_tcp_answer(attempt, bytes);
    }

    /// See [`QueryTable::handle_failed`].
    pub fn handle_failed(&mut self, now: Instant, attempt: AttemptId) {
        self.table.handle_failed(now, attempt);
    }

    /// See [`QueryTable::handle_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.table.handle_timeout(now);
    }

    /// See [`QueryTable::poll_at`].
    #[must_use]
    pub fn poll_at(&self) -> Option<Instant> {
        self.table.poll_at()
    }

    /// The next thing to send. Take them all after each `handle_*`.
    pub fn poll_output(&mut self) -> Option<ForwarderOutput> {
        if let Some(r) = self.replies.pop_front() {
            return Some(r);
        }
        Some(match self.table.poll_output()? {
            Output::Transmit(t) => ForwarderOutput::Transmit(t),
            Output::Done { client, result } => {
                let message = match result {
                    Ok(answer) => self.for_client(&client, answer),
                    Err(Failure::TimedOut | Failure::Unreachable) => {
                        error_reply(&client, Rcode::SERVFAIL)
                    }
                };
                ForwarderOutput::Reply {
                    from: client.server,
                    to: client.addr,
                    message,
                }
            }
        })
    }

    /// Check the table's invariants and the bound on waiting replies.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.replies.len() > MAX_REPLIES {
            return Err(format!("{} replies waiting", self.replies.len()));
        }
        self.table.check_invariants()
    }

    fn reply(&mut self, from: SocketAddr, to: SocketAddr, message: Vec<u8>) {
        if self.replies.len() >= MAX_REPLIES {
            self.counters.dropped += 1;
            return;
        }
        self.replies
            .push_back(ForwarderOutput::Reply { from, to, message });
    }

    /// The upstream's answer, under the client's ID, cut to its header
    /// and question if the client cannot take it over UDP.
    fn for_client(&mut self, client: &Client, mut answer: Vec<u8>) -> Vec<u8> {
        if answer.len() > client.max_udp {
            self.counters.truncated_for_client += 1;
            // The table accepted it, so it parses.
            let flags = Message::parse(&answer).map_or(Flags::QR, |m| m.header.flags);
            let mut b = MessageBuilder::new(client.id, flags.with(Flags::TC, true));
            let _ = b.question(&client.question);
            if client.edns {
                let _ = b.opt(&our_opt());
            }
            return b.finish();
        }
        let _ = dns::set_id(&mut answer, client.id);
        answer
    }
}

/// The OPT record of replies the forwarder writes itself.
fn our_opt() -> Opt<'static> {
    Opt {
        udp_payload_size: EDNS_PAYLOAD,
        extended_rcode: 0,
        version: 0,
        flags: 0,
        options: &[],
    }
}

/// A reply to `client` with `rcode`, its question and nothing else.
fn error_reply(client: &Client, rcode: Rcode) -> Vec<u8> {
    let flags = Flags::QR
        .with(Flags::RD, client.flags.contains(Flags::RD))
        .with(Flags::RA, true)
        .with_rcode(rcode);
    let mut b = MessageBuilder::new(client.id, flags);
    let _ = b.question(&client.question);
    if client.edns {
        let _ = b.opt(&our_opt());
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::daemon::dns::table::tests::{answer_to, question, sa, Net, UP1, UP2};
    use ephemera::wire::dns::{build_query, Type};
    use ephemera::Duration;
    use ephemera::SeededRng;

    const SERVER: &str = "10.7.0.2:53";
    const CLIENT: &str = "10.7.0.1:33333";

    struct Fixture {
        fwd: Forwarder,
        net: Net,
        replies: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
        now: Instant,
    }

    impl Fixture {
        fn new(max: usize) -> Fixture {
            let config = TableConfig {
                upstreams: vec![sa(UP1), sa(UP2)],
                max_in_flight: max,
                attempt_timeout: Duration::from_secs(2),
            };
            Fixture {
                fwd: Forwarder::new(config, Box::new(SeededRng::new(3))).unwrap(),
                net: Net::new(),
                replies: Vec::new(),
                now: Instant::from_secs(5),
            }
        }

        fn pump(&mut self) {
            while let Some(o) = self.fwd.poll_output() {
                match o {
                    ForwarderOutput::Transmit(t) => {
                        let mut sent = Vec::new();
                        self.net.transmit(t, |a, l| sent.push((a, l)));
                        for (a, l) in sent {
                            self.fwd.handle_sent(self.now, a, l);
                        }
                    }
                    ForwarderOutput::Reply { from, to, message } => {
                        self.replies.push((from, to, message))
                    }
                }
            }
            self.fwd.check_invariants().unwrap();
        }

        fn query(&mut self, bytes: &[u8]) {
            self.fwd
                .handle_query(self.now, sa(SERVER), sa(CLIENT), bytes);
            self.pump();
        }

        fn answer_upstream(&mut self, flags: Flags, addrs: &[Ipv4Addr]) -> Vec<u8> {
            let (_, local, upstream, sent) = self.net.udp[0].clone();
            let a = answer_to(&sent, flags, addrs);
            self.fwd.handle_datagram(self.now, local, upstream, &a);
            self.pump();
            a
        }

        fn reply(&self, i: usize) -> Message<'_> {
            let (from, to, m) = &self.replies[i];
            assert_eq!((*from, *to), (sa(SERVER), sa(CLIENT)));
            Message::parse(m).unwrap()
        }
    }

    fn client_query(id: u16) -> Vec<u8> {
        build_query(id, &question("web.test", Type::A).name, Type::A, true)
    }

    fn with_opt(query: &[u8], payload: u16) -> Vec<u8> {
        let m = Message::parse(query).unwrap();
        let mut b = MessageBuilder::new(m.header.id, m.header.flags);
        b.question(m.question().unwrap()).unwrap();
        b.opt(&Opt {
            udp_payload_size: payload,
            extended_rcode: 0,
            version: 0,
            flags: Opt::DO,
            options: b"\x00\x0a\x00\x08cookie!!",
        })
        .unwrap();
        b.finish()
    }

    #[test]
    fn a_query_is_forwarded_as_sent_under_a_fresh_id_and_answered_under_the_clients() {
        let mut f = Fixture::new(8);
        let q = with_opt(&client_query(0x1111), 4096);
        f.query(&q);
        let (_, _, upstream, sent) = f.net.udp[0].clone();
        assert_eq!(upstream, sa(UP1));
        // Everything but the ID passes through, the OPT record included.
        assert_eq!(sent[2..], q[2..]);
        assert_ne!(Header::parse(&sent).unwrap().id, 0x1111);
        let answer = f.answer_upstream(Flags::default(), &[Ipv4Addr::new(192, 0, 2, 1)]);
        assert_eq!(f.replies.len(), 1);
        let (_, _, reply) = &f.replies[0];
        assert_eq!(Header::parse(reply).unwrap().id, 0x1111);
        assert_eq!(reply[2..], answer[2..]);
        assert_eq!(f.fwd.table_counters().answers, 1);
    }

    #[test]
    fn an_unreachable_upstream_is_skipped() {
        let mut f = Fixture::new(8);
        f.query(&client_query(0x6666));
        // The first upstream's port is closed: ICMP port unreachable.
        let (first, ..) = f.net.udp[0].clone();
        f.fwd.handle_failed(f.now, first);
        f.pump();
        assert_eq!(f.net.udp[0].2, sa(UP2));
        f.answer_upstream(Flags::default(), &[Ipv4Addr::new(192, 0, 2, 1)]);
        assert_eq!(f.reply(0).header.flags.rcode(), Rcode::NOERROR);
        assert_eq!(f.fwd.table_counters().timeouts, 0);
    }

    #[test]
    fn responses_and_runts_are_dropped() {
        let mut f = Fixture::new(8);
        f.query(&[0; 11]);
        let mut response = client_query(1);
        response[2] |= 0x80;
        f.query(&response);
        assert!(f.replies.is_empty() && f.net.udp.is_empty());
        assert_eq!(f.fwd.counters().dropped, 2);
        let named: Vec<_> = f.fwd.counters().iter().into_iter().collect();
        assert!(named.contains(&("dns_forward_dropped", 2)));
    }

    #[test]
    fn malformed_queries_get_formerr_and_other_opcodes_notimp() {
        let mut f = Fixture::new(8);
        // A question cut short: header-only FORMERR.
        let q = client_query(7);
        f.query(&q[..q.len() - 2]);
        let r = f.reply(0);
        assert_eq!(r.header.id, 7);
        assert_eq!(r.header.flags.rcode(), Rcode::FORMERR);
        assert!(r.header.flags.contains(Flags::QR | Flags::RD));
        // No question: FORMERR.
        f.query(&MessageBuilder::new(8, Flags::RD).finish());
        assert_eq!(f.reply(1).header.flags.rcode(), Rcode::FORMERR);
        // NOTIFY (opcode 4), with its question echoed.
        let mut notify = client_query(9);
        notify[2] |= 4 << 3;
        f.query(&notify);
        let r = f.reply(2);
        assert_eq!(r.header.flags.rcode(), Rcode::NOTIMP);
        assert_eq!(r.header.flags.opcode(), Opcode(4));
        assert_eq!(r.question(), Some(&question("web.test", Type::A)));
        assert!(f.net.udp.is_empty());
        assert_eq!(f.fwd.counters().malformed, 3);
    }

    #[test]
    fn a_full_table_gets_refused() {
        let mut f = Fixture::new(2);
        for id in 1..=3 {
            f.query(&client_query(id));
        }
        assert_eq!(f.net.udp.len(), 2);
        let r = f.reply(0);
        assert_eq!(r.header.id, 3);
        assert_eq!(r.header.flags.rcode(), Rcode::REFUSED);
        assert_eq!(r.question(), Some(&question("web.test", Type::A)));
        assert_eq!(f.fwd.table_counters().refused, 1);
    }

    #[test]
    fn error_replies_not_taken_are_bounded() {
        let mut f = Fixture::new(8);
        // A driver that never takes the replies: the queue stops growing.
        for id in 0..100 {
            f.fwd.handle_query(
                f.now,
                sa(SERVER),
                sa(CLIENT),
                &MessageBuilder::new(id, Flags::RD).finish(),
            );
            f.fwd.check_invariants().unwrap();
        }
        assert_eq!(f.fwd.counters().malformed, 100);
        assert_eq!(f.fwd.counters().dropped, 100 - MAX_REPLIES as u64);
        f.pump();
        assert_eq!(f.replies.len(), MAX_REPLIES);
    }

    #[test]
    fn no_answer_from_any_upstream_is_servfail() {
        let mut f = Fixture::new(8);
        f.query(&with_opt(&client_query(0x2222), 1232));
        for _ in 0..2 {
            f.now += Duration::from_secs(2);
            f.fwd.handle_timeout(f.now);
            f.pump();
        }
        let r = f.reply(0);
        assert_eq!(r.header.id, 0x2222);
        assert_eq!(r.header.flags.rcode(), Rcode::SERVFAIL);
        assert!(r.opt.is_some());
        assert_eq!(f.fwd.table_counters().timeouts, 2);
        assert_eq!(f.fwd.poll_at(), None);
    }

    #[test]
    fn an_answer_too_large_for_the_client_becomes_a_tc_reply() {
        let mut f = Fixture::new(8);
        // No EDNS0: at most 512 octets. The upstream truncates, TCP brings
        // the whole answer (40 A records: 12 + 26 + 40 * 36 octets).
        f.query(&client_query(0x3333));
        f.answer_upstream(Flags::TC, &[]);
        let (tcp, _, sent) = f.net.tcp[0].clone();
        let big = answer_to(&sent, Flags::default(), &[Ipv4Addr::new(192, 0, 2, 1); 40]);
        assert!(big.len() > 512);
        f.fwd.handle_tcp_answer(tcp, &big);
        f.pump();
        let r = f.reply(0);
        assert_eq!(r.header.id, 0x3333);
        assert!(r.header.flags.contains(Flags::TC));
        assert!(r.answers.is_empty());
        assert_eq!(r.question(), Some(&question("web.test", Type::A)));
        assert_eq!(f.fwd.counters().truncated_for_client, 1);
        // With EDNS0 and room for it, the same answer goes through whole.
        f.query(&with_opt(&client_query(0x4444), 4096));
        f.answer_upstream(Flags::TC, &[]);
        let (tcp, _, sent) = f.net.tcp[0].clone();
        let big = answer_to(&sent, Flags::default(), &[Ipv4Addr::new(192, 0, 2, 1); 40]);
        f.fwd.handle_tcp_answer(tcp, &big);
        f.pump();
        let r = f.reply(1);
        assert_eq!(r.answers.len(), 40);
        assert!(!r.header.flags.contains(Flags::TC));
    }

    #[test]
    fn forged_answers_are_ignored_and_the_real_one_delivered() {
        let mut f = Fixture::new(8);
        f.query(&client_query(0x5555));
        let (_, local, upstream, sent) = f.net.udp[0].clone();
        let real = answer_to(&sent, Flags::default(), &[Ipv4Addr::new(192, 0, 2, 1)]);
        let mut forged = answer_to(&sent, Flags::default(), &[Ipv4Addr::new(203, 0, 113, 66)]);
        // Right tuple, every ID but the right one would be a guess: try one.
        let id = Header::parse(&sent).unwrap().id;
        dns::set_id(&mut forged, id ^ 1).unwrap();
        f.fwd.handle_datagram(f.now, local, upstream, &forged);
        // Right ID, wrong port.
        let forged_port = answer_to(&sent, Flags::default(), &[Ipv4Addr::new(203, 0, 113, 66)]);
        let wrong_port = SocketAddr::new(local.ip(), local.port() ^ 1);
        f.fwd
            .handle_datagram(f.now, wrong_port, upstream, &forged_port);
        f.pump();
        assert!(f.replies.is_empty());
        assert_eq!(f.fwd.table_counters().mismatches, 2);
        f.fwd.handle_datagram(f.now, local, upstream, &real);
        f.pump();
        let r = f.reply(0);
        assert_eq!(
            r.answers[0].data,
            dns::RData::A(Ipv4Addr::new(192, 0, 2, 1))
        );
    }
}
