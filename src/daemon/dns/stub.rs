//! The stub resolver: host names to addresses, asked of the configured
//! name servers (`--nameserver`) through a [`QueryTable`], so the daemon's
//! own lookups leave from the stack's ports with the forwarder's rules.
//!
//! A lookup of a host name sends an A query, an AAAA query or both
//! (recursion desired, EDNS0 with a 1232-octet payload), each its own
//! query in the table with its own port, ID, timeouts and retries. When
//! all are over the lookup is answered once: the addresses found, IPv4
//! first, or the reason there are none. An address counts only if its
//! record is owned by the name asked or by a name the answer's CNAME
//! chain leads to from it (RFC 1034 §3.6.2, at most [`MAX_CNAMES`]
//! links), so an answer cannot slip in addresses for other names.
//!
//! Bounds: at most `max_in_flight / queries per lookup` lookups, counting
//! answered ones not yet taken; more are refused at once (`WouldBlock`).
//! A lookup ends within (upstreams + 1) × `attempt_timeout` (every
//! upstream over UDP, then at most one TCP retry), so every lookup taken
//! in is answered, which is what the services' `Resolver` contract asks.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::io;
use std::net::{IpAddr, SocketAddr};

use super::table::{
    AttemptId, DnsCounters, Failure, Output, QueryTable, TableConfig, TableConfigError, Transmit,
};
use ephemera::wire::dns::{
    Class, DnsName, Flags, Message, MessageBuilder, Opt, Question, RData, Rcode, Type,
};
use ephemera::Instant;
use ephemera::Rng;

/// Most CNAME links followed from the name asked.
pub(crate) const MAX_CNAMES: usize = 8;

/// EDNS0 payload size of the stub's queries (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

/// Which addresses a lookup asks for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Families {
    /// A records only.
    Ipv4,
    /// AAAA records only. (The daemon's stack always has an IPv4
    /// address, so it asks for `Ipv4` or `Both`.)
    #[cfg_attr(not(test), allow(dead_code))]
    Ipv6,
    /// Both, IPv4 addresses first in the answer.
    Both,
}

impl Families {
    fn types(self) -> &'static [Type] {
        match self {
            Families::Ipv4 => &[Type::A],
            Families::Ipv6 => &[Type::AAAA],
            Families::Both => &[Type::A, Type::AAAA],
        }
    }
}

/// How a [`StubResolver`] works.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StubConfig {
    /// Name servers, bound on queries in flight, attempt timeout.
    pub table: TableConfig,
    /// Which addresses to ask for.
    pub families: Families,
}

/// What the stub's front end did, besides the table's counters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct StubCounters {
    /// Lookups taken in.
    pub lookups: u64,
    /// Lookups refused because the most were in flight.
    pub refused: u64,
    /// Lookups refused because the host name is not one (see
    /// [`DnsName::from_dotted`]).
    pub invalid: u64,
}

/// What one query of a lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// NOERROR, with these addresses (perhaps none: NODATA).
    Addrs(Vec<IpAddr>),
    /// A truncated answer with no address, and TCP did not help.
    Truncated,
    /// The name does not exist.
    NxDomain,
    /// Another RCODE.
    ServerError(Rcode),
    /// No answer.
    Failed(Failure),
}

#[derive(Debug)]
struct Lookup {
    host: DnsName,
    /// One slot per query type, filled as queries end.
    outcomes: Vec<Option<Outcome>>,
}

/// A stub resolver. `T` names a lookup for its caller (the services'
/// `LookupId`). See the [module docs](self).
pub(crate) struct StubResolver<T> {
    table: QueryTable<(T, usize)>,
    types: &'static [Type],
    lookups: HashMap<T, Lookup>,
    max_lookups: usize,
    transmits: VecDeque<Transmit>,
    answers: VecDeque<(T, io::Result<Vec<IpAddr>>)>,
    counters: StubCounters,
}

impl<T> fmt::Debug for StubResolver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StubResolver")
            .field("lookups", &self.lookups.len())
            .field("answers", &self.answers.len())
            .field("table", &self.table)
            .field("counters", &self.counters)
            .finish()
    }
}

impl<T: Copy + Eq + Hash + fmt::Debug> StubResolver<T> {
    /// A resolver asking `config.table.upstreams`; query IDs come from
    /// `rng`.
    pub fn new(config: StubConfig, rng: Box<dyn Rng>) -> Result<Self, TableConfigError> {
        let types = config.families.types();
        let max_lookups = config.table.max_in_flight / types.len();
        if max_lookups == 0 {
            return Err(TableConfigError::Capacity);
        }
        Ok(StubResolver {
            table: QueryTable::new(config.table, rng)?,
            types,
            lookups: HashMap::new(),
            max_lookups,
            transmits: VecDeque::new(),
            answers: VecDeque::new(),
            counters: StubCounters::default(),
        })
    }

    /// The front end's counters.
    pub fn counters(&self) -> StubCounters {
        self.counters
    }

    /// The query table's counters.
    pub fn table_counters(&self) -> DnsCounters {
        self.table.counters()
    }

    /// Start looking up `host`; the answer comes from
    /// [`StubResolver::poll_answer`] under `token`. Refused at once with
    /// `InvalidInput` for a name that is not a host name or a `token`
    /// already in use, `WouldBlock` when the most lookups are in flight.
    pub fn lookup(&mut self, now: Instant, token: T, host: &str) -> io::Result<()> {
        let name = DnsName::from_dotted(host).map_err(|e| {
            self.counters.invalid += 1;
            io::Error::new(io::ErrorKind::InvalidInput, format!("{host:?}: {e}"))
        })?;
        if self.lookups.contains_key(&token) || self.answers.iter().any(|(t, _)| *t == token) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("lookup {token:?} is already in flight"),
            ));
        }
        if self.lookups.len() + self.answers.len() >= self.max_lookups {
            self.counters.refused += 1;
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} name lookups in flight", self.max_lookups),
            ));
        }
        self.counters.lookups += 1;
        self.lookups.insert(
            token,
            Lookup {
                host: name.clone(),
                outcomes: vec![None; self.types.len()],
            },
        );
        for (i, &qtype) in self.types.iter().enumerate() {
            let question = Question::new(name.clone(), qtype);
            let mut b = MessageBuilder::new(0, Flags::RD);
            let _ = b.question(&question);
            let _ = b.opt(&Opt {
                udp_payload_size: EDNS_PAYLOAD,
                extended_rcode: 0,
                version: 0,
                flags: 0,
                options: &[],
            });
            // The lookup bound leaves room for every query of every lookup.
            if self
                .table
                .start(now, (token, i), question, b.finish())
                .is_err()
            {
                self.record(token, i, Outcome::Failed(Failure::Unreachable));
            }
        }
        self.pump();
        Ok(())
    }

    /// See [`QueryTable::handle_sent`].
    pub fn handle_sent(&mut self, now: Instant, attempt: AttemptId, local: SocketAddr) {
        self.table.handle_sent(now, attempt, local);
        self.pump();
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
        self.pump();
    }

    /// See [`QueryTable::handle_tcp_answer`].
    pub fn handle_tcp_answer(&mut self, attempt: AttemptId, bytes: &[u8]) {
        self.table.handle_tcp_answer(attempt, bytes);
        self.pump();
    }

    /// See [`QueryTable::handle_failed`].
    pub fn handle_failed(&mut self, now: Instant, attempt: AttemptId) {
        self.table.handle_failed(now, attempt);
        self.pump();
    }

    /// See [`QueryTable::handle_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.table.handle_timeout(now);
        self.pump();
    }

    /// See [`QueryTable::poll_at`].
    #[must_use]
    pub fn poll_at(&self) -> Option<Instant> {
        self.table.poll_at()
    }

    /// The next upstream work for the driver.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// A finished lookup: its addresses, or why there are none
    /// (`NotFound` for a name without addresses, `TimedOut`,
    /// `ConnectionRefused` when no name server could be asked, `Other`
    /// for a name server's error).
    pub fn poll_answer(&mut self) -> Option<(T, io::Result<Vec<IpAddr>>)> {
        self.answers.pop_front()
    }

    /// The table's invariants, and that every lookup waits for exactly
    /// its unfinished queries, within the bound.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.table.check_invariants()?;
        if self.lookups.len() + self.answers.len() > self.max_lookups {
            return Err(format!(
                "{} lookups and {} answers, room for {}",
                self.lookups.len(),
                self.answers.len(),
                self.max_lookups
            ));
        }
        for (token, l) in &self.lookups {
            if l.outcomes.iter().all(Option::is_some) {
                return Err(format!("lookup {token:?} is over but not answered"));
            }
        }
        Ok(())
    }

    /// Take the table's outputs: upstream work for the driver, finished
    /// queries into their lookups.
    fn pump(&mut self) {
        while let Some(o) = self.table.poll_output() {
            match o {
                Output::Transmit(t) => self.transmits.push_back(t),
                Output::Done {
                    client: (token, i),
                    result,
                } => {
                    let outcome = match result {
                        Ok(answer) => match self.lookups.get(&token) {
                            Some(l) => addresses(&answer, &l.host, self.types[i]),
                            None => continue,
                        },
                        Err(f) => Outcome::Failed(f),
                    };
                    self.record(token, i, outcome);
                }
            }
        }
    }

    /// Query `i` of lookup `token` ended with `outcome`; answer the lookup
    /// if it was the last.
    fn record(&mut self, token: T, i: usize, outcome: Outcome) {
        let Some(l) = self.lookups.get_mut(&token) else {
            return;
        };
        if let Some(slot) = l.outcomes.get_mut(i) {
            *slot = Some(outcome);
        }
        if l.outcomes.iter().any(Option::is_none) {
            return;
        }
        let Some(l) = self.lookups.remove(&token) else {
            return;
        };
        let outcomes: Vec<Outcome> = l.outcomes.into_iter().flatten().collect();
        self.answers
            .push_back((token, conclude(&l.host, &outcomes)));
    }
}

/// The addresses of type `qtype` for `host` in `answer`.
fn addresses(answer: &[u8], host: &DnsName, qtype: Type) -> Outcome {
    // The table accepted the answer, so it parses.
    let Ok(m) = Message::parse(answer) else {
        return Outcome::Failed(Failure::Unreachable);
    };
    match m.header.flags.rcode() {
        Rcode::NOERROR => {}
        Rcode::NXDOMAIN => return Outcome::NxDomain,
        other => return Outcome::ServerError(other),
    }
    let mut chain = vec![host.as_name()];
    while chain.len() <= MAX_CNAMES {
        let last = chain[chain.len() - 1];
        let next = m.answers.iter().find_map(|r| match r.data {
            RData::Cname(target) if r.name == last => Some(target),
            _ => None,
        });
        match next {
            Some(target) if !chain.contains(&target) => chain.push(target),
            _ => break,
        }
    }
    let mut addrs: Vec<IpAddr> = Vec::new();
    for r in &m.answers {
        if r.rtype != qtype || r.class != Class::IN || !chain.contains(&r.name) {
            continue;
        }
        let addr = match r.data {
            RData::A(a) => IpAddr::V4(a),
            RData::Aaaa(a) => IpAddr::V6(a),
            _ => continue,
        };
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() && m.header.flags.contains(Flags::TC) {
        return Outcome::Truncated;
    }
    Outcome::Addrs(addrs)
}

/// A lookup's answer from its queries' outcomes.
fn conclude(host: &DnsName, outcomes: &[Outcome]) -> io::Result<Vec<IpAddr>> {
    let addrs: Vec<IpAddr> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Addrs(a) => Some(a.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    if !addrs.is_empty() {
        return Ok(addrs);
    }
    let has = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().any(f);
    let (kind, why) = if has(&|o| *o == Outcome::NxDomain) {
        (io::ErrorKind::NotFound, "name does not exist".to_string())
    } else if has(&|o| matches!(o, Outcome::Addrs(_))) {
        (io::ErrorKind::NotFound, "no address for this name".into())
    } else if let Some(Outcome::ServerError(r)) = outcomes
        .iter()
        .find(|o| matches!(o, Outcome::ServerError(_)))
    {
        (
            io::ErrorKind::Other,
            format!("name server answered RCODE {}", r.0),
        )
    } else if has(&|o| *o == Outcome::Truncated) {
        (
            io::ErrorKind::Other,
            "answer truncated, and TCP failed".into(),
        )
    } else if has(&|o| *o == Outcome::Failed(Failure::TimedOut)) {
        (io::ErrorKind::TimedOut, "no name server answered".into())
    } else {
        (
            io::ErrorKind::ConnectionRefused,
            "no name server reachable".into(),
        )
    };
    Err(io::Error::new(kind, format!("{host}: {why}")))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::daemon::dns::table::tests::{sa, Net, UP1, UP2};
    use ephemera::wire::dns::{Record, Section};
    use ephemera::Duration;
    use ephemera::SeededRng;

    struct Fixture {
        stub: StubResolver<u32>,
        net: Net,
        answers: Vec<(u32, io::Result<Vec<IpAddr>>)>,
        now: Instant,
    }

    impl Fixture {
        fn new(families: Families, max: usize) -> Fixture {
            let config = StubConfig {
                table: TableConfig {
                    upstreams: vec![sa(UP1), sa(UP2)],
                    max_in_flight: max,
                    attempt_timeout: Duration::from_secs(2),
                },
                families,
            };
            Fixture {
                stub: StubResolver::new(config, Box::new(SeededRng::new(11))).unwrap(),
                net: Net::new(),
                answers: Vec::new(),
                now: Instant::from_secs(1),
            }
        }

        fn pump(&mut self) {
            while let Some(t) = self.stub.poll_transmit() {
                let mut sent = Vec::new();
                self.net.transmit(t, |a, l| sent.push((a, l)));
                for (a, l) in sent {
                    self.stub.handle_sent(self.now, a, l);
                }
            }
            while let Some(a) = self.stub.poll_answer() {
                self.answers.push(a);
            }
            self.stub.check_invariants().unwrap();
        }

        fn lookup(&mut self, token: u32, host: &str) -> io::Result<()> {
            let r = self.stub.lookup(self.now, token, host);
            self.pump();
            r
        }

        /// Answer the live UDP query of type `qtype` with `records`
        /// (owner, data) and `rcode`.
        fn answer(&mut self, qtype: Type, rcode: Rcode, records: &[(&str, RData<'_>)]) {
            let (_, local, upstream, sent) = self
                .net
                .udp
                .iter()
                .find(|u| Message::parse(&u.3).unwrap().question().unwrap().qtype == qtype)
                .cloned()
                .expect("no such query");
            let m = Message::parse(&sent).unwrap();
            let mut b = MessageBuilder::new(m.header.id, (Flags::QR | Flags::RA).with_rcode(rcode));
            b.question(m.question().unwrap()).unwrap();
            let owners: Vec<DnsName> = records
                .iter()
                .map(|(o, _)| DnsName::from_dotted(o).unwrap())
                .collect();
            for ((_, data), owner) in records.iter().zip(&owners) {
                let rtype = match data {
                    RData::A(_) => Type::A,
                    RData::Aaaa(_) => Type::AAAA,
                    RData::Cname(_) => Type::CNAME,
                    RData::Other(_) => Type::TXT,
                };
                let r = Record {
                    name: owner.as_name(),
                    rtype,
                    class: Class::IN,
                    ttl: 30,
                    data: *data,
                };
                b.record(Section::Answer, &r).unwrap();
            }
            self.stub
                .handle_datagram(self.now, local, upstream, &b.finish());
            self.pump();
        }
    }

    const V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

    fn v6() -> Ipv6Addr {
        "2001:db8::7".parse().unwrap()
    }

    #[test]
    fn a_lookup_asks_a_and_aaaa_and_answers_ipv4_first() {
        let mut f = Fixture::new(Families::Both, 8);
        f.lookup(1, "Web.Test").unwrap();
        let types: Vec<Type> = f
            .net
            .udp
            .iter()
            .map(|u| {
                let m = Message::parse(&u.3).unwrap();
                assert!(m.header.flags.contains(Flags::RD));
                assert_eq!(m.opt.unwrap().udp_payload_size, EDNS_PAYLOAD);
                assert_eq!(m.question().unwrap().name.to_string(), "Web.Test");
                m.question().unwrap().qtype
            })
            .collect();
        assert_eq!(types, vec![Type::A, Type::AAAA]);
        // Each from its own port.
        assert_ne!(f.net.udp[0].1, f.net.udp[1].1);
        // AAAA answers first; the lookup waits for both.
        f.answer(
            Type::AAAA,
            Rcode::NOERROR,
            &[("web.test", RData::Aaaa(v6()))],
        );
        assert!(f.answers.is_empty());
        f.answer(Type::A, Rcode::NOERROR, &[("web.test", RData::A(V4))]);
        let (token, r) = f.answers.pop().unwrap();
        assert_eq!(token, 1);
        assert_eq!(r.unwrap(), vec![IpAddr::V4(V4), IpAddr::V6(v6())]);
        assert_eq!(f.stub.counters().lookups, 1);
        assert_eq!(f.stub.table_counters().answers, 2);
    }

    #[test]
    fn cname_chains_are_followed_and_other_names_ignored() {
        let mut f = Fixture::new(Families::Ipv4, 8);
        f.lookup(1, "www.test").unwrap();
        let edge = DnsName::from_dotted("edge.cdn.test").unwrap();
        let cdn = DnsName::from_dotted("www.cdn.test").unwrap();
        f.answer(
            Type::A,
            Rcode::NOERROR,
            &[
                ("www.test", RData::Cname(cdn.as_name())),
                ("www.cdn.test", RData::Cname(edge.as_name())),
                ("edge.cdn.test", RData::A(V4)),
                // Not on the chain: an injected record for another name.
                ("bank.test", RData::A(Ipv4Addr::new(203, 0, 113, 6))),
            ],
        );
        assert_eq!(f.answers.pop().unwrap().1.unwrap(), vec![IpAddr::V4(V4)]);
    }

    #[test]
    fn cname_loops_and_long_chains_end() {
        let mut f = Fixture::new(Families::Ipv4, 8);
        f.lookup(1, "a.test").unwrap();
        let a = DnsName::from_dotted("a.test").unwrap();
        let b = DnsName::from_dotted("b.test").unwrap();
        f.answer(
            Type::A,
            Rcode::NOERROR,
            &[
                ("a.test", RData::Cname(b.as_name())),
                ("b.test", RData::Cname(a.as_name())),
            ],
        );
        let e = f.answers.pop().unwrap().1.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        // A chain of 10 links: the address at its end is past the bound.
        f.lookup(2, "n0.test").unwrap();
        let names: Vec<DnsName> = (0..=10)
            .map(|i| DnsName::from_dotted(&format!("n{i}.test")).unwrap())
            .collect();
        let owners: Vec<String> = (0..=10).map(|i| format!("n{i}.test")).collect();
        let mut records: Vec<(&str, RData<'_>)> = (0..10)
            .map(|i| (owners[i].as_str(), RData::Cname(names[i + 1].as_name())))
            .collect();
        records.push((owners[10].as_str(), RData::A(V4)));
        f.answer(Type::A, Rcode::NOERROR, &records);
        assert!(f.answers.pop().unwrap().1.is_err());
    }

    #[test]
    fn errors_say_why_there_is_no_address() {
        let mut f = Fixture::new(Families::Both, 8);
        // NXDOMAIN for both.
        f.lookup(1, "nowhere.test").unwrap();
        f.answer(Type::A, Rcode::NXDOMAIN, &[]);
        f.answer(Type::AAAA, Rcode::NXDOMAIN, &[]);
        let e = f.answers.pop().unwrap().1.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("nowhere.test"), "{e}");
        // NODATA for both.
        f.lookup(2, "mail.test").unwrap();
        f.answer(Type::A, Rcode::NOERROR, &[]);
        f.answer(Type::AAAA, Rcode::NOERROR, &[]);
        assert_eq!(
            f.answers.pop().unwrap().1.unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        // One family times out everywhere, the other answers: addresses.
        f.lookup(3, "web.test").unwrap();
        f.answer(Type::A, Rcode::NOERROR, &[("web.test", RData::A(V4))]);
        for _ in 0..2 {
            f.now += Duration::from_secs(2);
            f.stub.handle_timeout(f.now);
            f.pump();
        }
        assert_eq!(f.answers.pop().unwrap().1.unwrap(), vec![IpAddr::V4(V4)]);
        // Nothing answers at all.
        f.lookup(4, "web.test").unwrap();
        for _ in 0..2 {
            f.now += Duration::from_secs(2);
            f.stub.handle_timeout(f.now);
            f.pump();
        }
        assert_eq!(
            f.answers.pop().unwrap().1.unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        assert_eq!(f.stub.poll_at(), None);
    }

    #[test]
    fn invalid_names_are_refused_without_a_query() {
        let mut f = Fixture::new(Families::Both, 8);
        for host in ["", "a..b", "under_score.test", "10.0.0.1", &"x".repeat(300)] {
            let e = f.lookup(1, host).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{host:?}");
        }
        assert!(f.net.udp.is_empty());
        assert_eq!(f.stub.counters().invalid, 5);
        assert_eq!(f.stub.counters().lookups, 0);
    }

    #[test]
    fn lookups_are_bounded_and_tokens_unique() {
        // 8 queries in flight: 4 lookups of two queries each.
        let mut f = Fixture::new(Families::Both, 8);
        for t in 0..4 {
            f.lookup(t, "web.test").unwrap();
        }
        let e = f.lookup(4, "web.test").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(f.stub.counters().refused, 1);
        assert_eq!(f.net.udp.len(), 8);
        // A token in flight cannot be used again.
        f.stub.lookup(f.now, 2, "other.test").unwrap_err();
        // A finished lookup not yet taken holds its place.
        f.stub.handle_failed(f.now, f.net.udp[0].0);
        for _ in 0..3 {
            f.now += Duration::from_secs(2);
            f.stub.handle_timeout(f.now);
        }
        assert!(f.stub.lookup(f.now, 9, "web.test").is_err());
        f.pump();
        assert_eq!(f.answers.len(), 4);
        f.lookup(9, "web.test").unwrap();
        // An IPv4-only resolver fits a lookup per query.
        let mut g = Fixture::new(Families::Ipv4, 3);
        for t in 0..3 {
            g.lookup(t, "web.test").unwrap();
        }
        assert!(g.lookup(3, "web.test").is_err());
        // Room for less than one lookup is a configuration error.
        let config = StubConfig {
            table: TableConfig {
                upstreams: vec![sa(UP1)],
                max_in_flight: 1,
                attempt_timeout: Duration::from_secs(1),
            },
            families: Families::Both,
        };
        assert_eq!(
            StubResolver::<u32>::new(config, Box::new(SeededRng::new(1))).unwrap_err(),
            TableConfigError::Capacity
        );
    }

    #[test]
    fn ipv6_only_asks_aaaa_only() {
        let mut f = Fixture::new(Families::Ipv6, 8);
        f.lookup(1, "web.test").unwrap();
        assert_eq!(f.net.udp.len(), 1);
        // An A record in an AAAA answer is not an answer.
        f.answer(
            Type::AAAA,
            Rcode::NOERROR,
            &[("web.test", RData::A(V4)), ("web.test", RData::Aaaa(v6()))],
        );
        assert_eq!(f.answers.pop().unwrap().1.unwrap(), vec![IpAddr::V6(v6())]);
    }

    #[test]
    fn a_truncated_answer_is_completed_over_tcp() {
        let mut f = Fixture::new(Families::Ipv4, 8);
        f.lookup(1, "big.test").unwrap();
        let (_, local, upstream, sent) = f.net.udp[0].clone();
        let m = Message::parse(&sent).unwrap();
        let mut b = MessageBuilder::new(m.header.id, Flags::QR | Flags::TC);
        b.question(m.question().unwrap()).unwrap();
        f.stub.handle_datagram(f.now, local, upstream, &b.finish());
        f.pump();
        let (tcp, _, tcp_sent) = f.net.tcp[0].clone();
        let m = Message::parse(&tcp_sent).unwrap();
        let owner = m.question().unwrap().name.clone();
        let mut b = MessageBuilder::new(m.header.id, Flags::QR);
        b.question(m.question().unwrap()).unwrap();
        for last in 1..=100 {
            let r = Record {
                name: owner.as_name(),
                rtype: Type::A,
                class: Class::IN,
                ttl: 5,
                data: RData::A(Ipv4Addr::new(192, 0, 2, last)),
            };
            b.record(Section::Answer, &r).unwrap();
        }
        f.stub.handle_tcp_answer(tcp, &b.finish());
        f.pump();
        assert_eq!(f.answers.pop().unwrap().1.unwrap().len(), 100);
    }

    #[test]
    fn a_truncated_answer_with_no_address_when_tcp_fails_is_an_error() {
        let mut f = Fixture::new(Families::Ipv4, 8);
        f.lookup(1, "big.test").unwrap();
        let (_, local, upstream, sent) = f.net.udp[0].clone();
        let m = Message::parse(&sent).unwrap();
        let mut b = MessageBuilder::new(m.header.id, Flags::QR | Flags::TC);
        b.question(m.question().unwrap()).unwrap();
        f.stub.handle_datagram(f.now, local, upstream, &b.finish());
        f.pump();
        let (tcp, ..) = f.net.tcp[0].clone();
        f.stub.handle_failed(f.now, tcp);
        f.pump();
        let e = f.answers.pop().unwrap().1.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Other);
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
