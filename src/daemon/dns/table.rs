//! The queries in flight to upstream name servers, and the rules for
//! accepting their answers.
//!
//! A query, taken in by [`QueryTable::start`], is sent to the first
//! upstream; each send is an *attempt*, with a fresh random ID drawn from
//! the injected [`Rng`] and, over UDP, a fresh connected socket the driver
//! opens ([`Transmit::Udp`]). Then one of:
//!
//! - an answer arrives at the attempt's local address, from the upstream's
//!   address and port, with the attempt's ID and the query's question
//!   (names compared ignoring case, RFC 4343): it is accepted
//!   (RFC 5452 §9.1). Every other datagram is a counted mismatch and
//!   changes nothing, so a forged answer cannot end a query early;
//! - the accepted answer has TC set: the query is asked again of the same
//!   upstream over TCP ([`Transmit::Tcp`], RFC 7766), the truncated answer
//!   kept in case TCP fails;
//! - the accepted answer is SERVFAIL, REFUSED or NOTIMP and another
//!   upstream is left: that one is asked, as glibc's resolver does; from
//!   the last upstream the answer stands;
//! - the attempt times out, or the driver reports it failed (no socket, an
//!   ICMP port unreachable): the next upstream in order is asked, and
//!   after the last the query fails ([`Failure`]).
//!
//! Every attempt that ends is closed ([`Transmit::Close`]); each query ends
//! in exactly one [`Output::Done`].
//!
//! Invariants (checked by [`QueryTable::check_invariants`]):
//! - each query in flight has exactly one deadline record, and each record
//!   names a query in flight at its deadline;
//! - the 4-tuple index holds exactly the UDP attempts whose socket the
//!   driver reported, each under (local address, its upstream);
//! - queries in flight plus finished queries whose `Done` has not been
//!   taken never exceed `max_in_flight`, so the table and its output queue
//!   are bounded whatever clients and upstreams send; more are refused
//!   and counted.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;

use ephemera::wire::dns::{self, Flags, Header, Message, Opcode, Question, Rcode};
use ephemera::Rng;
use ephemera::{Duration, Instant};

/// How a [`QueryTable`] works.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableConfig {
    /// Name servers to ask, in order: each query starts with the first
    /// and moves to the next when an attempt times out or fails.
    pub upstreams: Vec<SocketAddr>,
    /// Most queries in flight (with finished ones not yet taken).
    pub max_in_flight: usize,
    /// How long one attempt (one upstream over UDP, or the TCP retry)
    /// waits for its answer.
    pub attempt_timeout: Duration,
}

/// Why a [`TableConfig`] cannot work.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum TableConfigError {
    /// No upstream to ask.
    Upstreams,
    /// `max_in_flight` is 0.
    Capacity,
    /// `attempt_timeout` is 0.
    Timeout,
}

impl fmt::Display for TableConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableConfigError::Upstreams => write!(f, "no upstream name server"),
            TableConfigError::Capacity => write!(f, "room for no DNS query in flight"),
            TableConfigError::Timeout => write!(f, "DNS attempt timeout of 0"),
        }
    }
}

impl std::error::Error for TableConfigError {}

/// Names one attempt of one query: what the driver gets with a
/// [`Transmit`] and hands back with what became of it. An attempt that
/// has ended names nothing, so late reports about it are ignored.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct AttemptId {
    query: u64,
    n: u32,
}

/// What the driver must do for an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Transmit {
    /// Open a UDP socket connected to `upstream` on a local port the port
    /// table picks, send `message` on it, and report the socket's local
    /// address with [`QueryTable::handle_sent`] (or
    /// [`QueryTable::handle_failed`] if that could not be done). Later
    /// datagrams on the socket go to [`QueryTable::handle_datagram`].
    Udp {
        /// The attempt.
        attempt: AttemptId,
        /// Where to send it.
        upstream: SocketAddr,
        /// The query, with this attempt's ID.
        message: Vec<u8>,
    },
    /// Send `message` to `upstream` over TCP (with the two-octet length
    /// of RFC 1035 §4.2.2), and report the answer with
    /// [`QueryTable::handle_tcp_answer`] or the failure with
    /// [`QueryTable::handle_failed`].
    Tcp {
        /// The attempt.
        attempt: AttemptId,
        /// Where to send it.
        upstream: SocketAddr,
        /// The query, with this attempt's ID.
        message: Vec<u8>,
    },
    /// The attempt is over: close its socket or connection.
    Close {
        /// The attempt.
        attempt: AttemptId,
    },
}

/// Why a query got no answer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The last upstream did not answer in time.
    TimedOut,
    /// The last upstream could not be asked: no socket, or an ICMP error.
    Unreachable,
}

/// What the table has for its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Output<C> {
    /// Something to send or close.
    Transmit(Transmit),
    /// The query of `client` is over: the accepted answer, as received
    /// (with the attempt's ID, not the client's), or why there is none.
    Done {
        /// Who asked.
        client: C,
        /// The answer's bytes, or the failure.
        result: Result<Vec<u8>, Failure>,
    },
}

/// [`QueryTable::start`]'s refusal: `max_in_flight` queries are in the
/// table.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Full;

/// What the table did, for `ephemera ports --stats`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DnsCounters {
    /// Queries taken in.
    pub queries: u64,
    /// Queries answered.
    pub answers: u64,
    /// Queries that failed: every upstream timed out or failed.
    pub failures: u64,
    /// Attempts that timed out.
    pub timeouts: u64,
    /// Datagrams and TCP answers not accepted (RFC 5452 §9.1): wrong
    /// address, port, ID or question, not a response, or malformed.
    pub mismatches: u64,
    /// Accepted answers with TC set, asked again over TCP.
    pub truncated: u64,
    /// SERVFAIL, REFUSED or NOTIMP answers that moved a query on to the
    /// next upstream.
    pub server_errors: u64,
    /// Queries refused because the table was full.
    pub refused: u64,
}

impl DnsCounters {
    /// The counters by name; the front end that owns the table puts its
    /// own prefix before each (`dns_forward_`, `dns_resolver_`).
    pub fn iter(&self) -> [(&'static str, u64); 8] {
        [
            ("queries", self.queries),
            ("answers", self.answers),
            ("failures", self.failures),
            ("timeouts", self.timeouts),
            ("mismatches", self.mismatches),
            ("truncated", self.truncated),
            ("server_errors", self.server_errors),
            ("refused", self.refused),
        ]
    }
}

/// Where an attempt stands.
#[derive(Debug)]
enum State {
    /// Sent over UDP; the local address once the driver reported it.
    Udp { local: Option<SocketAddr> },
    /// Asked again over TCP after this truncated answer.
    Tcp { truncated: Vec<u8> },
}

#[derive(Debug)]
struct Query<C> {
    client: C,
    question: Question,
    /// The query as given; each attempt sends a copy under its own ID.
    message: Vec<u8>,
    /// Index of the upstream being asked.
    upstream: usize,
    /// The current attempt's number and DNS ID.
    attempt: u32,
    id: u16,
    state: State,
    deadline: Instant,
}

/// The queries in flight. See the [module docs](self).
pub(crate) struct QueryTable<C> {
    config: TableConfig,
    rng: Box<dyn Rng>,
    queries: HashMap<u64, Query<C>>,
    /// UDP attempts by (local address, upstream).
    by_tuple: HashMap<(SocketAddr, SocketAddr), u64>,
    deadlines: BTreeSet<(Instant, u64)>,
    outputs: VecDeque<Output<C>>,
    /// `Done` outputs in `outputs`.
    undelivered: usize,
    next_query: u64,
    counters: DnsCounters,
}

impl<C> fmt::Debug for QueryTable<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryTable")
            .field("in_flight", &self.queries.len())
            .field("undelivered", &self.undelivered)
            .field("counters", &self.counters)
            .finish()
    }
}

impl<C> QueryTable<C> {
    /// An empty table; query IDs come from `rng`.
    pub fn new(config: TableConfig, rng: Box<dyn Rng>) -> Result<Self, TableConfigError> {
        if config.upstreams.is_empty() {
            return Err(TableConfigError::Upstreams);
        }
        if config.max_in_flight == 0 {
            return Err(TableConfigError::Capacity);
        }
        if config.attempt_timeout == Duration::ZERO {
            return Err(TableConfigError::Timeout);
        }
        Ok(QueryTable {
            config,
            rng,
            queries: HashMap::new(),
            by_tuple: HashMap::new(),
            deadlines: BTreeSet::new(),
            outputs: VecDeque::new(),
            undelivered: 0,
            next_query: 0,
            counters: DnsCounters::default(),
        })
    }

    /// What the table did so far.
    pub fn counters(&self) -> DnsCounters {
        self.counters
    }

    /// Room for this many more queries.
    pub fn room(&self) -> usize {
        self.config.max_in_flight - self.queries.len() - self.undelivered
    }

    /// Ask the upstreams `question` for `client`, sending `message` (a
    /// query of at least a header; its ID is replaced on every attempt).
    /// Refused, and counted, when the table is full (or `message` is
    /// shorter than a header, which neither front end passes).
    pub fn start(
        &mut self,
        now: Instant,
        client: C,
        question: Question,
        message: Vec<u8>,
    ) -> Result<(), Full> {
        if self.room() == 0 || message.len() < dns::HEADER_LEN {
            self.counters.refused += 1;
            return Err(Full);
        }
        self.counters.queries += 1;
        let key = self.next_query;
        self.next_query += 1;
        let query = Query {
            client,
            question,
            message,
            upstream: 0,
            attempt: 0,
            id: 0,
            state: State::Udp { local: None },
            deadline: now,
        };
        self.queries.insert(key, query);
        self.deadlines.insert((now, key));
        self.send(now, key, false);
        Ok(())
    }

    /// The driver opened the socket of UDP attempt `attempt` at `local`
    /// and sent its message. A 4-tuple already in use by another attempt
    /// (the port table never hands one out twice, so only a driver
    /// mistake) fails the attempt rather than make answers ambiguous.
    pub fn handle_sent(&mut self, now: Instant, attempt: AttemptId, local: SocketAddr) {
        let Some(q) = self.current(attempt) else {
            return;
        };
        let upstream = self.config.upstreams[q.upstream];
        if !matches!(q.state, State::Udp { local: None }) {
            return;
        }
        if self.by_tuple.contains_key(&(local, upstream)) {
            self.handle_failed(now, attempt);
            return;
        }
        self.by_tuple.insert((local, upstream), attempt.query);
        if let Some(q) = self.queries.get_mut(&attempt.query) {
            q.state = State::Udp { local: Some(local) };
        }
    }

    /// A datagram arrived at `local` from `from`. Accepted only as the
    /// answer of the attempt that left from `local` to `from`, with its ID
    /// and question; anything else is counted as a mismatch.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
    ) {
        let Some(&key) = self.by_tuple.get(&(local, from)) else {
            self.counters.mismatches += 1;
            return;
        };
        let Some(m) = self.accept(key, bytes) else {
            self.counters.mismatches += 1;
            return;
        };
        let truncated = m.header.flags.contains(Flags::TC);
        let rcode = m.header.flags.rcode();
        self.close(key);
        if truncated {
            // RFC 7766 §5: ask the same server again over TCP.
            self.counters.truncated += 1;
            if let Some(q) = self.queries.get_mut(&key) {
                q.state = State::Tcp {
                    truncated: bytes.to_vec(),
                };
            }
            self.send(now, key, true);
            return;
        }
        let server_error = [Rcode::SERVFAIL, Rcode::REFUSED, Rcode::NOTIMP].contains(&rcode);
        let last = self.queries[&key].upstream + 1 == self.config.upstreams.len();
        if server_error && !last {
            self.counters.server_errors += 1;
            self.next_upstream(now, key, Failure::Unreachable);
            return;
        }
        self.finish(key, Ok(bytes.to_vec()));
    }

    /// The TCP attempt `attempt` read `bytes` (one message, its length
    /// prefix removed). Accepted with the attempt's ID and the query's
    /// question; otherwise counted as a mismatch, and the attempt waits on
    /// until its deadline.
    pub fn handle_tcp_answer(&mut self, attempt: AttemptId, bytes: &[u8]) {
        let Some(q) = self.current(attempt) else {
            return;
        };
        if !matches!(q.state, State::Tcp { .. }) {
            return;
        }
        if self.accept(attempt.query, bytes).is_none() {
            self.counters.mismatches += 1;
            return;
        }
        self.close(attempt.query);
        self.finish(attempt.query, Ok(bytes.to_vec()));
    }

    /// Attempt `attempt` failed: its socket could not be opened or sent
    /// on, an ICMP error came back, or its TCP connection failed. A UDP
    /// attempt moves the query to the next upstream; a TCP attempt ends it
    /// with the truncated answer it started from.
    pub fn handle_failed(&mut self, now: Instant, attempt: AttemptId) {
        if self.current(attempt).is_none() {
            return;
        }
        self.end_attempt(now, attempt.query, Failure::Unreachable);
    }

    /// End the attempts whose deadline has passed, as
    /// [`QueryTable::handle_failed`] does, counting each as a timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, key)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.counters.timeouts += 1;
            self.end_attempt(now, key, Failure::TimedOut);
        }
    }

    /// When [`QueryTable::handle_timeout`] next has work.
    #[must_use]
    pub fn poll_at(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(d, _)| d)
    }

    /// The next thing for the driver to do, or a finished query. Take
    /// them all after each `start` and `handle_*`: finished queries count
    /// against the table's room until taken.
    pub fn poll_output(&mut self) -> Option<Output<C>> {
        let out = self.outputs.pop_front()?;
        if matches!(out, Output::Done { .. }) {
            self.undelivered -= 1;
        }
        Some(out)
    }

    /// Check the invariants of the [module docs](self).
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.deadlines.len() != self.queries.len() {
            return Err(format!(
                "{} deadlines for {} queries",
                self.deadlines.len(),
                self.queries.len()
            ));
        }
        for (deadline, key) in &self.deadlines {
            match self.queries.get(key) {
                Some(q) if q.deadline == *deadline => {}
                _ => return Err(format!("deadline {deadline} of query {key} is stale")),
            }
        }
        let mut udp_sent = 0;
        for (key, q) in &self.queries {
            let Some(&upstream) = self.config.upstreams.get(q.upstream) else {
                return Err(format!("query {key} asks upstream #{}", q.upstream));
            };
            if let State::Udp { local: Some(local) } = q.state {
                udp_sent += 1;
                if self.by_tuple.get(&(local, upstream)) != Some(key) {
                    return Err(format!("query {key} at {local} missing from the index"));
                }
            }
        }
        if udp_sent != self.by_tuple.len() {
            return Err(format!(
                "{} 4-tuples indexed for {udp_sent} UDP attempts",
                self.by_tuple.len()
            ));
        }
        let done = self
            .outputs
            .iter()
            .filter(|o| matches!(o, Output::Done { .. }))
            .count();
        if done != self.undelivered {
            return Err(format!("{done} Done outputs, {} counted", self.undelivered));
        }
        if self.queries.len() + self.undelivered > self.config.max_in_flight {
            return Err(format!(
                "{} in flight and {} undelivered, room for {}",
                self.queries.len(),
                self.undelivered,
                self.config.max_in_flight
            ));
        }
        Ok(())
    }

    /// The query of `attempt`, if that attempt is still its current one.
    fn current(&self, attempt: AttemptId) -> Option<&Query<C>> {
        self.queries
            .get(&attempt.query)
            .filter(|q| q.attempt == attempt.n)
    }

    /// `bytes` parsed, if it answers query `key`'s current attempt: a
    /// response to a standard query with its ID and question.
    fn accept<'a>(&self, key: u64, bytes: &'a [u8]) -> Option<Message<'a>> {
        let q = self.queries.get(&key)?;
        let m = Message::parse(bytes).ok()?;
        let h: Header = m.header;
        let ok = h.flags.contains(Flags::QR)
            && h.flags.opcode() == Opcode::QUERY
            && h.id == q.id
            && m.question() == Some(&q.question);
        ok.then_some(m)
    }

    /// Start a new attempt of query `key` at its current upstream, over
    /// TCP or UDP, with a fresh ID and deadline.
    fn send(&mut self, now: Instant, key: u64, tcp: bool) {
        let id = self.rng.next_u64() as u16;
        let deadline = now + self.config.attempt_timeout;
        let Some(q) = self.queries.get_mut(&key) else {
            return;
        };
        self.deadlines.remove(&(q.deadline, key));
        self.deadlines.insert((deadline, key));
        q.deadline = deadline;
        q.attempt += 1;
        q.id = id;
        let mut message = q.message.clone();
        // `start` took only messages of at least a header.
        let _ = dns::set_id(&mut message, id);
        let attempt = AttemptId {
            query: key,
            n: q.attempt,
        };
        let upstream = self.config.upstreams[q.upstream];
        let t = if tcp {
            Transmit::Tcp {
                attempt,
                upstream,
                message,
            }
        } else {
            q.state = State::Udp { local: None };
            Transmit::Udp {
                attempt,
                upstream,
                message,
            }
        };
        self.outputs.push_back(Output::Transmit(t));
    }

    /// Close query `key`'s current attempt: out of the 4-tuple index, and
    /// a `Close` for the driver.
    fn close(&mut self, key: u64) {
        let Some(q) = self.queries.get_mut(&key) else {
            return;
        };
        if let State::Udp { local } = &mut q.state {
            if let Some(local) = local.take() {
                self.by_tuple
                    .remove(&(local, self.config.upstreams[q.upstream]));
            }
        }
        let attempt = AttemptId {
            query: key,
            n: q.attempt,
        };
        self.outputs
            .push_back(Output::Transmit(Transmit::Close { attempt }));
    }

    /// The current attempt of `key` ended without an answer.
    fn end_attempt(&mut self, now: Instant, key: u64, why: Failure) {
        self.close(key);
        let Some(q) = self.queries.get_mut(&key) else {
            return;
        };
        if let State::Tcp { truncated } = &mut q.state {
            // The truncated answer is still an answer (RFC 7766 §5 lets a
            // resolver use it); the client may ask again over TCP itself.
            let answer = std::mem::take(truncated);
            self.finish(key, Ok(answer));
        } else {
            self.next_upstream(now, key, why);
        }
    }

    /// Ask the next upstream, or fail with `why` after the last.
    fn next_upstream(&mut self, now: Instant, key: u64, why: Failure) {
        let Some(q) = self.queries.get_mut(&key) else {
            return;
        };
        if q.upstream + 1 < self.config.upstreams.len() {
            q.upstream += 1;
            self.send(now, key, false);
        } else {
            self.finish(key, Err(why));
        }
    }

    /// Query `key` is over.
    fn finish(&mut self, key: u64, result: Result<Vec<u8>, Failure>) {
        let Some(q) = self.queries.remove(&key) else {
            return;
        };
        self.deadlines.remove(&(q.deadline, key));
        match result {
            Ok(_) => self.counters.answers += 1,
            Err(_) => self.counters.failures += 1,
        }
        self.undelivered += 1;
        self.outputs.push_back(Output::Done {
            client: q.client,
            result,
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use ephemera::wire::dns::{build_query, DnsName, MessageBuilder, RData, Record, Section, Type};
    use ephemera::SeededRng;

    pub(crate) const UP1: &str = "10.7.0.1:53";
    pub(crate) const UP2: &str = "10.7.0.9:5353";
    const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 7, 0, 2);

    pub(crate) fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    pub(crate) fn question(name: &str, t: Type) -> Question {
        Question::new(DnsName::from_dotted(name).unwrap(), t)
    }

    /// An answer to `query` (as sent, its ID and question) with `flags`
    /// and these A records for the question's name.
    pub(crate) fn answer_to(query: &[u8], flags: Flags, addrs: &[Ipv4Addr]) -> Vec<u8> {
        let m = Message::parse(query).unwrap();
        let q = m.question().unwrap();
        let mut b = MessageBuilder::new(m.header.id, Flags::QR | Flags::RD | Flags::RA | flags);
        b.question(q).unwrap();
        for a in addrs {
            let r = Record {
                name: q.name.as_name(),
                rtype: Type::A,
                class: dns::Class::IN,
                ttl: 60,
                data: RData::A(*a),
            };
            b.record(Section::Answer, &r).unwrap();
        }
        b.finish()
    }

    fn id_of(message: &[u8]) -> u16 {
        Header::parse(message).unwrap().id
    }

    /// A driver that opens "sockets" on ports 40000, 40001, ... and keeps
    /// what the table asked of it.
    pub(crate) struct Net {
        pub next_port: u16,
        /// Live UDP attempts: attempt, local, upstream, message sent.
        pub udp: Vec<(AttemptId, SocketAddr, SocketAddr, Vec<u8>)>,
        /// Live TCP attempts.
        pub tcp: Vec<(AttemptId, SocketAddr, Vec<u8>)>,
        pub closed: Vec<AttemptId>,
    }

    impl Net {
        pub fn new() -> Net {
            Net {
                next_port: 40000,
                udp: Vec::new(),
                tcp: Vec::new(),
                closed: Vec::new(),
            }
        }

        /// Carry out one transmit; report sends back through `sent`.
        pub fn transmit(&mut self, t: Transmit, mut sent: impl FnMut(AttemptId, SocketAddr)) {
            match t {
                Transmit::Udp {
                    attempt,
                    upstream,
                    message,
                } => {
                    let local = SocketAddr::new(IpAddr::V4(LOCAL), self.next_port);
                    self.next_port += 1;
                    self.udp.push((attempt, local, upstream, message));
                    sent(attempt, local);
                }
                Transmit::Tcp {
                    attempt,
                    upstream,
                    message,
                } => self.tcp.push((attempt, upstream, message)),
                Transmit::Close { attempt } => {
                    assert!(!self.closed.contains(&attempt), "closed twice");
                    self.closed.push(attempt);
                    self.udp.retain(|u| u.0 != attempt);
                    self.tcp.retain(|u| u.0 != attempt);
                }
            }
        }
    }

    struct Fixture {
        table: QueryTable<u32>,
        net: Net,
        done: Vec<(u32, Result<Vec<u8>, Failure>)>,
        now: Instant,
    }

    impl Fixture {
        fn new(upstreams: &[&str], max: usize) -> Fixture {
            let config = TableConfig {
                upstreams: upstreams.iter().map(|u| sa(u)).collect(),
                max_in_flight: max,
                attempt_timeout: Duration::from_secs(2),
            };
            Fixture {
                table: QueryTable::new(config, Box::new(SeededRng::new(7))).unwrap(),
                net: Net::new(),
                done: Vec::new(),
                now: Instant::from_secs(100),
            }
        }

        /// Drain the table's outputs through the fake driver.
        fn pump(&mut self) {
            while let Some(o) = self.table.poll_output() {
                match o {
                    Output::Transmit(t) => {
                        let mut sent = Vec::new();
                        self.net.transmit(t, |a, l| sent.push((a, l)));
                        for (a, l) in sent {
                            self.table.handle_sent(self.now, a, l);
                        }
                    }
                    Output::Done { client, result } => self.done.push((client, result)),
                }
            }
            self.table.check_invariants().unwrap();
        }

        fn start(&mut self, client: u32, name: &str) -> Result<(), Full> {
            let q = question(name, Type::A);
            let msg = build_query(0, &q.name, Type::A, true);
            let r = self.table.start(self.now, client, q, msg);
            self.pump();
            r
        }

        /// The live UDP attempt for `client`'s query (by name), as sent.
        fn udp(&self, i: usize) -> (AttemptId, SocketAddr, SocketAddr, Vec<u8>) {
            self.net.udp[i].clone()
        }

        fn deliver(&mut self, local: SocketAddr, from: SocketAddr, bytes: &[u8]) {
            self.table.handle_datagram(self.now, local, from, bytes);
            self.pump();
        }

        fn advance(&mut self, secs: u64) {
            self.now += Duration::from_secs(secs);
            self.table.handle_timeout(self.now);
            self.pump();
        }
    }

    const ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);

    #[test]
    fn config_is_checked() {
        let good = TableConfig {
            upstreams: vec![sa(UP1)],
            max_in_flight: 1,
            attempt_timeout: Duration::from_secs(1),
        };
        let rng = || Box::new(SeededRng::new(1));
        assert!(QueryTable::<()>::new(good.clone(), rng()).is_ok());
        let mut c = good.clone();
        c.upstreams.clear();
        assert_eq!(
            QueryTable::<()>::new(c, rng()).unwrap_err(),
            TableConfigError::Upstreams
        );
        let mut c = good.clone();
        c.max_in_flight = 0;
        assert_eq!(
            QueryTable::<()>::new(c, rng()).unwrap_err(),
            TableConfigError::Capacity
        );
        let mut c = good;
        c.attempt_timeout = Duration::ZERO;
        assert_eq!(
            QueryTable::<()>::new(c, rng()).unwrap_err(),
            TableConfigError::Timeout
        );
    }

    #[test]
    fn a_query_goes_to_the_first_upstream_and_its_answer_is_accepted() {
        let mut f = Fixture::new(&[UP1, UP2], 8);
        f.start(1, "web.test").unwrap();
        assert_eq!(f.net.udp.len(), 1);
        let (attempt, local, upstream, sent) = f.udp(0);
        assert_eq!(upstream, sa(UP1));
        // The message is the one given, under a new ID.
        let given = build_query(0, &question("web.test", Type::A).name, Type::A, true);
        assert_eq!(sent[2..], given[2..]);
        f.deliver(
            local,
            upstream,
            &answer_to(&sent, Flags::default(), &[ADDR]),
        );
        assert_eq!(f.net.closed, vec![attempt]);
        assert_eq!(f.done.len(), 1);
        let (client, result) = &f.done[0];
        assert_eq!(*client, 1);
        let answer = result.as_ref().unwrap();
        assert_eq!(id_of(answer), id_of(&sent));
        let c = f.table.counters();
        assert_eq!((c.queries, c.answers, c.mismatches), (1, 1, 0));
        assert_eq!(f.table.poll_at(), None);
        assert_eq!(f.table.room(), 8);
    }

    #[test]
    fn answers_from_the_wrong_address_port_or_local_port_are_mismatches() {
        let mut f = Fixture::new(&[UP1], 8);
        f.start(1, "web.test").unwrap();
        let (_, local, upstream, sent) = f.udp(0);
        let good = answer_to(&sent, Flags::default(), &[ADDR]);
        let other_local = SocketAddr::new(local.ip(), local.port() + 1);
        let other_port = SocketAddr::new(upstream.ip(), 5353);
        let other_addr = sa("10.7.0.3:53");
        for (to, from) in [
            (local, other_port),
            (local, other_addr),
            (other_local, upstream),
        ] {
            f.deliver(to, from, &good);
        }
        assert_eq!(f.table.counters().mismatches, 3);
        assert!(f.done.is_empty());
        // The real answer still gets through.
        f.deliver(local, upstream, &good);
        assert_eq!(f.done.len(), 1);
        assert!(f.done[0].1.is_ok());
    }

    #[test]
    fn answers_with_the_wrong_id_or_question_are_mismatches() {
        let mut f = Fixture::new(&[UP1], 8);
        f.start(1, "web.test").unwrap();
        let (_, local, upstream, sent) = f.udp(0);
        let good = answer_to(&sent, Flags::default(), &[ADDR]);
        let mut bad = Vec::new();
        // Every other ID.
        let mut wrong_id = good.clone();
        dns::set_id(&mut wrong_id, id_of(&sent).wrapping_add(1)).unwrap();
        bad.push(wrong_id);
        // Another name, another type, another class.
        for q in [
            question("web.tesu", Type::A),
            question("web.test", Type::AAAA),
            Question {
                qclass: dns::Class(3),
                ..question("web.test", Type::A)
            },
        ] {
            let mut m = MessageBuilder::new(id_of(&sent), Flags::QR);
            m.question(&q).unwrap();
            bad.push(m.finish());
        }
        // No question at all (some servers' FORMERR), and two.
        bad.push(MessageBuilder::new(id_of(&sent), Flags::QR).finish());
        let mut two = MessageBuilder::new(id_of(&sent), Flags::QR);
        two.question(&question("web.test", Type::A)).unwrap();
        two.question(&question("web.test", Type::A)).unwrap();
        bad.push(two.finish());
        // Not a response: our own query reflected back.
        bad.push(sent.clone());
        // A response of another opcode.
        let mut m = good.clone();
        m[2] |= 0x10;
        bad.push(m);
        // Malformed, and empty.
        bad.push(good[..good.len() - 1].to_vec());
        bad.push(Vec::new());
        for b in &bad {
            f.deliver(local, upstream, b);
        }
        assert_eq!(f.table.counters().mismatches, bad.len() as u64);
        assert!(f.done.is_empty());
        // The question in another case is the same question (RFC 4343).
        let mut shouting = good.clone();
        shouting[13..16].copy_from_slice(b"WEB");
        f.deliver(local, upstream, &shouting);
        assert_eq!(f.done.len(), 1);
    }

    #[test]
    fn every_attempt_gets_a_fresh_random_id() {
        let mut f = Fixture::new(&[UP1, UP2], 2000);
        for i in 0..1000 {
            f.start(i, "web.test").unwrap();
        }
        let ids: BTreeSet<u16> = f.net.udp.iter().map(|u| id_of(&u.3)).collect();
        // 1000 draws from 65536 values: about 8 collide.
        assert!(ids.len() > 970, "{} distinct IDs", ids.len());
        // A retry does not reuse its first attempt's ID.
        let first = id_of(&f.udp(0).3);
        f.advance(2);
        let retry = f
            .net
            .udp
            .iter()
            .find(|u| u.0.query == 0)
            .map(|u| id_of(&u.3))
            .unwrap();
        assert_ne!(first, retry);
        // Same seed, same IDs: the randomness is all injected.
        let mut g = Fixture::new(&[UP1, UP2], 2000);
        g.start(0, "web.test").unwrap();
        assert_eq!(id_of(&g.udp(0).3), first);
    }

    #[test]
    fn a_timeout_moves_to_the_next_upstream_and_the_last_gives_up() {
        let mut f = Fixture::new(&[UP1, UP2], 8);
        f.start(1, "web.test").unwrap();
        let (first, local1, _, sent1) = f.udp(0);
        assert_eq!(f.table.poll_at(), Some(f.now + Duration::from_secs(2)));
        // Not yet.
        f.advance(1);
        assert_eq!(f.net.udp.len(), 1);
        f.advance(1);
        assert_eq!(f.net.closed, vec![first]);
        let (second, local2, upstream2, _) = f.udp(0);
        assert_ne!(second, first);
        assert_eq!(upstream2, sa(UP2));
        assert_ne!(local2, local1);
        // A late answer from the first upstream is not accepted.
        f.deliver(
            local1,
            sa(UP1),
            &answer_to(&sent1, Flags::default(), &[ADDR]),
        );
        assert_eq!(f.table.counters().mismatches, 1);
        // Reports about the first attempt are ignored.
        f.table.handle_failed(f.now, first);
        f.table.handle_sent(f.now, first, local1);
        f.pump();
        assert_eq!(f.net.udp.len(), 1);
        f.advance(2);
        assert_eq!(f.net.closed, vec![first, second]);
        assert_eq!(f.done, vec![(1, Err(Failure::TimedOut))]);
        let c = f.table.counters();
        assert_eq!((c.timeouts, c.failures, c.answers), (2, 1, 0));
        let named: HashMap<_, _> = c.iter().into_iter().collect();
        assert_eq!(named["timeouts"], 2);
        assert_eq!(named["failures"], 1);
        // One query, two timeouts, one failure, one mismatch.
        assert_eq!(named.values().sum::<u64>(), 1 + 2 + 1 + 1);
        assert_eq!(f.table.poll_at(), None);
    }

    #[test]
    fn a_failed_attempt_moves_on_at_once() {
        let mut f = Fixture::new(&[UP1, UP2], 8);
        f.start(1, "web.test").unwrap();
        let (first, ..) = f.udp(0);
        // The driver could not open the socket, or an ICMP error came.
        f.table.handle_failed(f.now, first);
        f.pump();
        let (second, _, upstream, sent) = f.udp(0);
        assert_eq!(upstream, sa(UP2));
        assert_eq!(f.table.counters().timeouts, 0);
        // The second upstream answers.
        let local = f.udp(0).1;
        f.deliver(
            local,
            upstream,
            &answer_to(&sent, Flags::default(), &[ADDR]),
        );
        assert!(f.done[0].1.is_ok());
        // Failing the last upstream fails the query as unreachable.
        f.start(2, "web.test").unwrap();
        let (a, ..) = f.udp(0);
        f.table.handle_failed(f.now, a);
        f.pump();
        let (b, ..) = f.udp(0);
        f.table.handle_failed(f.now, b);
        f.pump();
        assert_eq!(f.done[1], (2, Err(Failure::Unreachable)));
        assert!(f.net.closed.contains(&second));
    }

    #[test]
    fn a_reused_four_tuple_fails_the_attempt() {
        let mut f = Fixture::new(&[UP1, UP2], 8);
        f.start(1, "web.test").unwrap();
        let (_, local, ..) = f.udp(0);
        // A driver that hands out the same local port twice towards one
        // upstream: the second attempt cannot be told apart, so it fails.
        let q = question("web.test", Type::A);
        let msg = build_query(0, &q.name, Type::A, true);
        f.table.start(f.now, 2, q, msg).unwrap();
        let Some(Output::Transmit(Transmit::Udp { attempt, .. })) = f.table.poll_output() else {
            panic!("no UDP transmit")
        };
        f.table.handle_sent(f.now, attempt, local);
        f.pump();
        assert!(f.net.closed.contains(&attempt));
        // It moved on to the second upstream.
        assert!(f.net.udp.iter().any(|u| u.2 == sa(UP2)));
    }

    #[test]
    fn a_truncated_answer_is_asked_again_over_tcp() {
        let mut f = Fixture::new(&[UP1, UP2], 8);
        f.start(1, "web.test").unwrap();
        let (udp, local, upstream, sent) = f.udp(0);
        let tc = answer_to(&sent, Flags::TC, &[]);
        f.deliver(local, upstream, &tc);
        assert_eq!(f.net.closed, vec![udp]);
        assert_eq!(f.table.counters().truncated, 1);
        let (tcp, tcp_upstream, tcp_sent) = f.net.tcp[0].clone();
        // The same upstream, a fresh ID, the same question.
        assert_eq!(tcp_upstream, upstream);
        assert_ne!(id_of(&tcp_sent), id_of(&sent));
        assert_eq!(tcp_sent[2..], sent[2..]);
        // An answer under the UDP attempt's ID is not the TCP answer.
        let stale = answer_to(&sent, Flags::default(), &[ADDR]);
        f.table.handle_tcp_answer(tcp, &stale);
        f.pump();
        assert_eq!(f.table.counters().mismatches, 1);
        assert!(f.done.is_empty());
        let full = answer_to(&tcp_sent, Flags::default(), &[ADDR; 40]);
        f.table.handle_tcp_answer(tcp, &full);
        f.pump();
        assert_eq!(f.net.closed, vec![udp, tcp]);
        assert_eq!(f.done, vec![(1, Ok(full))]);
    }

    #[test]
    fn when_tcp_fails_or_times_out_the_truncated_answer_stands() {
        let mut f = Fixture::new(&[UP1, UP2], 8);
        for client in [1, 2] {
            f.start(client, "web.test").unwrap();
            let (_, local, upstream, sent) = f.udp(0);
            f.deliver(local, upstream, &answer_to(&sent, Flags::TC, &[]));
        }
        let (tcp1, ..) = f.net.tcp[0].clone();
        f.table.handle_failed(f.now, tcp1);
        f.pump();
        f.advance(2);
        assert_eq!(f.done.len(), 2);
        for (_, r) in &f.done {
            let m = Message::parse(r.as_ref().unwrap()).unwrap().header;
            assert!(m.flags.contains(Flags::TC));
        }
        // Neither went on to the second upstream.
        assert!(f.net.udp.is_empty());
        assert_eq!(f.table.counters().timeouts, 1);
    }

    #[test]
    fn server_errors_move_on_but_the_last_upstreams_answer_stands() {
        let mut f = Fixture::new(&[UP1, UP2], 8);
        f.start(1, "web.test").unwrap();
        let (_, local, upstream, sent) = f.udp(0);
        let servfail = answer_to(&sent, Flags::default().with_rcode(Rcode::SERVFAIL), &[]);
        f.deliver(local, upstream, &servfail);
        assert!(f.done.is_empty());
        let (_, local, upstream, sent) = f.udp(0);
        assert_eq!(upstream, sa(UP2));
        let refused = answer_to(&sent, Flags::default().with_rcode(Rcode::REFUSED), &[]);
        f.deliver(local, upstream, &refused);
        assert_eq!(f.done, vec![(1, Ok(refused))]);
        assert_eq!(f.table.counters().server_errors, 1);
        // NXDOMAIN is an answer, not a server error.
        f.start(2, "nowhere.test").unwrap();
        let (_, local, upstream, sent) = f.udp(0);
        let nx = answer_to(&sent, Flags::default().with_rcode(Rcode::NXDOMAIN), &[]);
        f.deliver(local, upstream, &nx);
        assert_eq!(f.done[1], (2, Ok(nx)));
    }

    #[test]
    fn a_full_table_refuses_and_counts_until_room_is_made() {
        let mut f = Fixture::new(&[UP1], 4);
        for i in 0..4 {
            f.start(i, "web.test").unwrap();
        }
        assert_eq!(f.table.room(), 0);
        assert_eq!(f.start(9, "web.test"), Err(Full));
        assert_eq!(f.start(10, "web.test"), Err(Full));
        assert_eq!(f.table.counters().refused, 2);
        assert_eq!(f.net.udp.len(), 4);
        // An answered query whose Done is not taken still holds its room.
        let (_, local, upstream, sent) = f.udp(0);
        f.table.handle_datagram(
            f.now,
            local,
            upstream,
            &answer_to(&sent, Flags::default(), &[]),
        );
        assert_eq!(f.table.room(), 0);
        f.table.check_invariants().unwrap();
        f.pump();
        assert_eq!(f.table.room(), 1);
        f.start(11, "web.test").unwrap();
        // Messages shorter than a header are refused too.
        f.advance(2);
        assert_eq!(
            f.table
                .start(f.now, 12, question("a.test", Type::A), vec![0; 11]),
            Err(Full)
        );
    }

    #[test]
    fn many_queries_in_flight_each_get_their_own_answer() {
        let mut f = Fixture::new(&[UP1, UP2], 64);
        for i in 0..64 {
            f.start(i, &format!("host{i}.test")).unwrap();
        }
        // Answer in reverse order, each with an address naming its query.
        let live: Vec<_> = f.net.udp.iter().rev().cloned().collect();
        for (_, local, upstream, sent) in live {
            let name = Message::parse(&sent)
                .unwrap()
                .question()
                .unwrap()
                .name
                .to_string();
            let n: u8 = name[4..name.len() - 5].parse().unwrap();
            let ans = answer_to(&sent, Flags::default(), &[Ipv4Addr::new(192, 0, 2, n)]);
            // Each answer offered to every other socket first: all refused.
            for other in f.net.udp.clone() {
                if other.1 != local {
                    f.table.handle_datagram(f.now, other.1, other.2, &ans);
                }
            }
            f.deliver(local, upstream, &ans);
        }
        assert_eq!(f.done.len(), 64);
        for (client, r) in &f.done {
            let bytes = r.as_ref().unwrap();
            let m = Message::parse(bytes).unwrap();
            assert_eq!(
                m.answers[0].data,
                RData::A(Ipv4Addr::new(192, 0, 2, *client as u8))
            );
        }
        assert_eq!(f.table.counters().mismatches, (0..64).sum::<u64>());
    }
}
