//! The DNS forwarder (`--dns`) over the virtual link: a client on stack 0
//! asks ephemera (stack 1), which asks a name server written here on the
//! origin stack (10.0.0.3).

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ephemera::wire::dns::{
    build_query, Class, DnsName, Flags, Header, Message, MessageBuilder, RData, Rcode, Record,
    Section, Type,
};
use ephemera::{Protocol, UdpHandle};

use super::super::upstream::MAX_RECENT;
use super::super::DnsForwardConfig;
use super::*;

/// The address the name server gives `web.test`.
pub(super) const WEB: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);

/// How the origin's name server behaves.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Ns {
    /// Answers every query.
    Answer,
    /// Answers over UDP with TC set and no records; in full over TCP.
    Truncate,
    /// Keeps the queries and answers none (until the test does).
    Silent,
}

/// A name server on the origin stack: `web.test` has A 192.0.2.80 (and,
/// over TCP, two more), every other name NXDOMAIN.
pub(super) struct NameServer {
    pub(super) udp: UdpHandle,
    pub(super) tcp: ListenerHandle,
    pub(super) mode: Ns,
    /// The address of `web.test`.
    pub(super) web: Ipv4Addr,
    /// The IPv6 address of `web6.test`, a name with no A record; with
    /// none, AAAA queries get no records.
    pub(super) web6: Option<Ipv6Addr>,
    /// Every query received over UDP: from where, its bytes.
    pub(super) queries: Vec<(SocketAddr, Vec<u8>)>,
    /// Every TCP client.
    pub(super) tcp_clients: Vec<SocketAddr>,
    conns: Vec<(TcpHandle, Vec<u8>)>,
}

/// The answer a name server gives `query` (full: all its records), with
/// `web.test` at [`WEB`].
pub(super) fn answer(query: &[u8], truncated: bool, full: bool) -> Vec<u8> {
    answer_with(query, truncated, full, WEB)
}

/// [`answer`], with `web.test` at `web` (and, in full, the next two).
pub(super) fn answer_with(query: &[u8], truncated: bool, full: bool, web: Ipv4Addr) -> Vec<u8> {
    answer_zone(query, truncated, full, web, None)
}

/// [`answer_with`], and `web6.test` (AAAA only) at `web6` if given.
pub(super) fn answer_zone(
    query: &[u8],
    truncated: bool,
    full: bool,
    web: Ipv4Addr,
    web6: Option<Ipv6Addr>,
) -> Vec<u8> {
    let m = Message::parse(query).unwrap();
    let q = m.question().unwrap().clone();
    let v6 = web6.filter(|_| q.name == DnsName::from_dotted("web6.test").unwrap());
    let known = q.name == DnsName::from_dotted("web.test").unwrap() || v6.is_some();
    let rcode = if known {
        Rcode::NOERROR
    } else {
        Rcode::NXDOMAIN
    };
    let flags = (Flags::QR | Flags::RD | Flags::RA)
        .with(Flags::TC, truncated)
        .with_rcode(rcode);
    let mut b = MessageBuilder::new(m.header.id, flags);
    b.question(&q).unwrap();
    if let (Some(a), false, Type::AAAA) = (v6, truncated, q.qtype) {
        b.record(
            Section::Answer,
            &Record {
                name: q.name.as_name(),
                rtype: Type::AAAA,
                class: Class::IN,
                ttl: 60,
                data: RData::Aaaa(a),
            },
        )
        .unwrap();
    }
    if known && v6.is_none() && !truncated && q.qtype == Type::A {
        let n = if full { 3 } else { 1 };
        for i in 0..n {
            let [o1, o2, o3, o4] = web.octets();
            let a = Ipv4Addr::new(o1, o2, o3, o4 + i);
            b.record(
                Section::Answer,
                &Record {
                    name: q.name.as_name(),
                    rtype: Type::A,
                    class: Class::IN,
                    ttl: 60,
                    data: RData::A(a),
                },
            )
            .unwrap();
        }
    }
    b.finish()
}

impl NameServer {
    pub(super) fn start(stack: &mut Stack, port: u16, mode: Ns) -> NameServer {
        let at = SocketAddr::new(ip(ORIGIN), port);
        NameServer {
            udp: stack.udp_bind(at).unwrap(),
            tcp: stack.listen(at, None).unwrap(),
            mode,
            web: WEB,
            web6: None,
            queries: Vec::new(),
            tcp_clients: Vec::new(),
            conns: Vec::new(),
        }
    }

    pub(super) fn pump(&mut self, stack: &mut Stack) {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = stack.udp_recv_from(self.udp, &mut buf) {
            let q = buf[..n].to_vec();
            self.queries.push((from, q.clone()));
            let reply = match self.mode {
                Ns::Answer => answer_zone(&q, false, false, self.web, self.web6),
                Ns::Truncate => answer_zone(&q, true, false, self.web, self.web6),
                Ns::Silent => continue,
            };
            stack.udp_send_to(self.udp, &reply, from).unwrap();
        }
        while let Ok(h) = stack.accept(self.tcp) {
            self.tcp_clients.push(stack.peer_addr(h).unwrap());
            self.conns.push((h, Vec::new()));
        }
        for (h, inbuf) in &mut self.conns {
            while let Ok(n) = stack.recv(*h, &mut buf) {
                if n == 0 {
                    stack.close(*h);
                    break;
                }
                inbuf.extend_from_slice(&buf[..n]);
            }
            if inbuf.len() >= 2 {
                let len = u16::from_be_bytes([inbuf[0], inbuf[1]]) as usize;
                if inbuf.len() >= 2 + len {
                    let a = answer_zone(&inbuf[2..2 + len], false, true, self.web, self.web6);
                    inbuf.drain(..2 + len);
                    let mut out = (a.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&a);
                    stack.send(*h, &out).unwrap();
                }
            }
        }
    }

    /// Answer the `i`th query received (in Silent mode).
    pub(super) fn answer_query(&self, stack: &mut Stack, i: usize) {
        let (from, q) = &self.queries[i];
        stack
            .udp_send_to(self.udp, &answer(q, false, false), *from)
            .unwrap();
    }
}

/// A DNS client on stack 0: one connected socket per query.
pub(super) struct Asker {
    pub(super) socks: Vec<(UdpHandle, u16)>,
    pub(super) answers: Vec<Option<Vec<u8>>>,
}

impl Asker {
    pub(super) fn new() -> Asker {
        Asker {
            socks: Vec::new(),
            answers: Vec::new(),
        }
    }

    /// Ask `to` for `name`'s A records under `id`.
    pub(super) fn ask(&mut self, stack: &mut Stack, to: &str, name: &str, id: u16) {
        let u = stack.udp_connect(sa(to)).unwrap();
        let q = build_query(id, &DnsName::from_dotted(name).unwrap(), Type::A, true);
        stack.udp_send(u, &q).unwrap();
        self.socks.push((u, id));
        self.answers.push(None);
    }

    pub(super) fn pump(&mut self, stack: &mut Stack) {
        let mut buf = [0u8; 2048];
        for (i, (u, _)) in self.socks.iter().enumerate() {
            if let Ok(n) = stack.udp_recv(*u, &mut buf) {
                self.answers[i] = Some(buf[..n].to_vec());
            }
        }
    }

    pub(super) fn answered(&self) -> usize {
        self.answers.iter().filter(|a| a.is_some()).count()
    }

    /// The `i`th answer, checked to be under its query's ID.
    pub(super) fn answer(&self, i: usize) -> Message<'_> {
        let a = self.answers[i].as_ref().expect("answered");
        let m = Message::parse(a).unwrap();
        assert_eq!(m.header.id, self.socks[i].1, "the client's ID");
        m
    }
}

fn addrs(m: &Message<'_>) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn forwarder(upstreams: &[&str]) -> ServicesConfig {
    ServicesConfig {
        dns: Some(DnsForwardConfig::new(
            53,
            upstreams.iter().map(|u| sa(u)).collect(),
        )),
        seed: Some(7),
        ..Default::default()
    }
}

/// The forwarder's counter `name` (without its `dns_forward_` prefix).
fn counter(svc: &Services, name: &str) -> u64 {
    let full = format!("dns_forward_{name}");
    svc.dns_counters()
        .into_iter()
        .find(|(k, _)| *k == full)
        .unwrap_or_else(|| panic!("no counter {full}"))
        .1
}

/// Connected UDP sockets of stack 1 (the forwarder's upstream sockets).
fn upstream_sockets(stack: &Stack) -> usize {
    stack
        .snapshot()
        .iter()
        .filter(|r| r.proto == Protocol::Udp && r.state == "ESTAB")
        .count()
}

#[test]
fn queries_leave_from_fresh_ports_with_fresh_ids_and_come_back_under_the_clients() {
    let mut t = trio(70, forwarder(&["10.0.0.3:53"]));
    let mut ns = NameServer::start(t.net.stack(2), 53, Ns::Answer);
    let mut c = Asker::new();
    let n = 100;
    // In bursts the name server's socket has room for (64 datagrams).
    for burst in 0..5 {
        for i in 0..20 {
            c.ask(
                t.net.stack(0),
                "10.0.0.2:53",
                "web.test",
                0x1000 + burst * 20 + i,
            );
        }
        t.run(|net, _| {
            ns.pump(net.stack(2));
            c.pump(net.stack(0));
            c.answered() == (burst as usize + 1) * 20
        });
    }
    for i in 0..n as usize {
        let m = c.answer(i);
        assert_eq!(addrs(&m), [WEB]);
        assert!(m.header.flags.contains(Flags::QR));
    }
    // Upstream, each query came from the stack's own address, from its
    // own port of the table's range, under an ID the forwarder chose.
    assert_eq!(ns.queries.len(), n as usize);
    let mut ports = HashSet::new();
    let mut same_id = 0;
    for (from, q) in &ns.queries {
        assert!(in_ephemeral_range(*from), "{from}");
        assert!(ports.insert(from.port()), "port {} twice", from.port());
        let id = Header::parse(q).unwrap().id;
        same_id += usize::from(c.socks.iter().any(|s| s.1 == id));
    }
    assert!(same_id <= 2, "{same_id} upstream IDs equal to a client's");
    // The answered queries' sockets are closed.
    t.run(|net, _| upstream_sockets(net.stack(1)) == 0);
    let svc = &t.svc;
    assert_eq!(counter(svc, "queries"), n as u64);
    assert_eq!(counter(svc, "answers"), n as u64);
    assert_eq!(counter(svc, "mismatches"), 0);
    t.net.stack(1).check_invariants().unwrap();
}

#[test]
fn a_port_is_not_used_again_for_a_while_towards_the_same_upstream() {
    let mut t = trio(71, forwarder(&["10.0.0.3:53"]));
    let mut ns = NameServer::start(t.net.stack(2), 53, Ns::Answer);
    // One query at a time, so every port is free again when the next is
    // picked: only the forwarder's memory keeps them apart.
    let window = (EPHEMERAL.len() / 8).min(MAX_RECENT);
    let n = 2 * window;
    for i in 0..n {
        let mut c = Asker::new();
        c.ask(t.net.stack(0), "10.0.0.2:53", "web.test", i as u16);
        t.run(|net, _| {
            ns.pump(net.stack(2));
            c.pump(net.stack(0));
            c.answered() == 1
        });
        t.net.stack(0).udp_close(c.socks[0].0);
    }
    let ports: Vec<u16> = ns.queries.iter().map(|q| q.0.port()).collect();
    for (i, w) in ports.windows(window + 1).enumerate() {
        let set: HashSet<u16> = w.iter().copied().collect();
        assert_eq!(
            set.len(),
            w.len(),
            "a port repeats within {window} queries at {i}"
        );
    }
}

#[test]
fn forged_answers_are_counted_and_the_real_one_still_arrives() {
    let mut t = trio(72, forwarder(&["10.0.0.3:53"]));
    let mut ns = NameServer::start(t.net.stack(2), 53, Ns::Silent);
    let other_port = t.net.stack(2).udp_bind(sa("10.0.0.3:5353")).unwrap();
    let mut c = Asker::new();
    c.ask(t.net.stack(0), "10.0.0.2:53", "web.test", 0xbeef);
    t.run(|net, _| {
        ns.pump(net.stack(2));
        ns.queries.len() == 1
    });
    let (local, q) = ns.queries[0].clone();
    let id = Header::parse(&q).unwrap().id;
    let real = answer(&q, false, false);
    let forged_addr = Ipv4Addr::new(203, 0, 113, 66);
    let forged = |id: u16| {
        let m = Message::parse(&q).unwrap();
        let mut b = MessageBuilder::new(id, Flags::QR | Flags::RD | Flags::RA);
        b.question(m.question().unwrap()).unwrap();
        b.record(
            Section::Answer,
            &Record {
                name: m.question().unwrap().name.as_name(),
                rtype: Type::A,
                class: Class::IN,
                ttl: 60,
                data: RData::A(forged_addr),
            },
        )
        .unwrap();
        b.finish()
    };
    let no_port = t.net.stack(1).counters().udp_no_port;
    let st = t.net.stack(2);
    // The upstream's address and port, the query's port, the wrong ID.
    st.udp_send_to(ns.udp, &forged(id.wrapping_add(1)), local)
        .unwrap();
    // The right ID from another port of the upstream's host.
    st.udp_send_to(other_port, &forged(id), local).unwrap();
    // The right ID to another port of ephemera's.
    let wrong_port = SocketAddr::new(local.ip(), local.port() ^ 1);
    st.udp_send_to(ns.udp, &forged(id), wrong_port).unwrap();
    t.run(|net, svc| {
        c.pump(net.stack(0));
        counter(svc, "mismatches") == 1 && net.stack(1).counters().udp_no_port == no_port + 2
    });
    assert_eq!(c.answered(), 0, "no forgery reached the client");
    // The real answer still gets through.
    t.net.stack(2).udp_send_to(ns.udp, &real, local).unwrap();
    t.run(|net, _| {
        c.pump(net.stack(0));
        c.answered() == 1
    });
    assert_eq!(addrs(&c.answer(0)), [WEB]);
}

#[test]
fn a_truncated_answer_is_fetched_over_tcp_from_the_stack() {
    let mut t = trio(73, forwarder(&["10.0.0.3:53"]));
    let mut ns = NameServer::start(t.net.stack(2), 53, Ns::Truncate);
    let mut c = Asker::new();
    c.ask(t.net.stack(0), "10.0.0.2:53", "web.test", 7);
    t.run(|net, _| {
        ns.pump(net.stack(2));
        c.pump(net.stack(0));
        c.answered() == 1
    });
    let m = c.answer(0);
    assert!(!m.header.flags.contains(Flags::TC));
    assert_eq!(addrs(&m).len(), 3, "the full answer, from TCP");
    // The TCP connection left from a port of the stack's own table.
    assert_eq!(ns.tcp_clients.len(), 1);
    assert!(in_ephemeral_range(ns.tcp_clients[0]));
    assert_eq!(counter(&t.svc, "truncated"), 1);
    // And is closed once the answer is in.
    t.run(|net, _| {
        ns.pump(net.stack(2));
        net.stack(1)
            .snapshot()
            .iter()
            .all(|r| r.proto != Protocol::Tcp || r.state == "TIME-WAIT")
    });
}

#[test]
fn a_silent_upstream_times_out_onto_the_next_and_the_last_gives_servfail() {
    let mut t = trio(74, forwarder(&["10.0.0.3:53", "10.0.0.3:5353"]));
    let mut silent = NameServer::start(t.net.stack(2), 53, Ns::Silent);
    let mut good = NameServer::start(t.net.stack(2), 5353, Ns::Answer);
    let mut c = Asker::new();
    c.ask(t.net.stack(0), "10.0.0.2:53", "web.test", 1);
    let start = t.net.now();
    t.run_timed(|net, _| {
        silent.pump(net.stack(2));
        good.pump(net.stack(2));
        c.pump(net.stack(0));
        c.answered() == 1
    });
    let took = t.net.now() - start;
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(3),
        "{took}"
    );
    assert_eq!(addrs(&c.answer(0)), [WEB]);
    assert_eq!(counter(&t.svc, "timeouts"), 1);
    // Both silent: SERVFAIL once both have had their time.
    good.mode = Ns::Silent;
    c.ask(t.net.stack(0), "10.0.0.2:53", "web.test", 2);
    t.run_timed(|net, _| {
        silent.pump(net.stack(2));
        good.pump(net.stack(2));
        c.pump(net.stack(0));
        c.answered() == 2
    });
    assert_eq!(c.answer(1).header.flags.rcode(), Rcode::SERVFAIL);
    assert_eq!(counter(&t.svc, "failures"), 1);
    // A late answer to the first finds its socket gone.
    let queries = silent.queries.len();
    silent.answer_query(t.net.stack(2), queries - 1);
    t.net.run_for(Duration::from_millis(100), STEPS).unwrap();
    assert_eq!(upstream_sockets(t.net.stack(1)), 0);
}

#[test]
fn an_unreachable_upstream_is_skipped_at_once() {
    // Nothing on 10.0.0.3:53: the origin's stack answers port unreachable.
    let mut t = trio(75, forwarder(&["10.0.0.3:53", "10.0.0.3:5353"]));
    let mut good = NameServer::start(t.net.stack(2), 5353, Ns::Answer);
    let mut c = Asker::new();
    c.ask(t.net.stack(0), "10.0.0.2:53", "web.test", 1);
    let start = t.net.now();
    t.run(|net, _| {
        good.pump(net.stack(2));
        c.pump(net.stack(0));
        c.answered() == 1
    });
    assert!(t.net.now() - start < Duration::from_millis(500));
    assert_eq!(addrs(&c.answer(0)), [WEB]);
    assert_eq!(counter(&t.svc, "timeouts"), 0);
}

#[test]
fn the_in_flight_bound_refuses_and_counts() {
    let mut cfg = forwarder(&["10.0.0.3:53"]);
    if let Some(d) = &mut cfg.dns {
        d.max_in_flight = 4;
    }
    let mut t = trio(76, cfg);
    let mut ns = NameServer::start(t.net.stack(2), 53, Ns::Silent);
    let mut c = Asker::new();
    for i in 0..6 {
        c.ask(t.net.stack(0), "10.0.0.2:53", "web.test", i);
    }
    t.run(|net, _| {
        ns.pump(net.stack(2));
        c.pump(net.stack(0));
        c.answered() == 2
    });
    for i in 4..6 {
        assert_eq!(c.answer(i).header.flags.rcode(), Rcode::REFUSED);
    }
    assert_eq!(ns.queries.len(), 4);
    assert_eq!(counter(&t.svc, "refused"), 2);
    assert_eq!(upstream_sockets(t.net.stack(1)), 4);
    // Answering frees their places.
    for i in 0..4 {
        ns.answer_query(t.net.stack(2), i);
    }
    t.run(|net, _| {
        c.pump(net.stack(0));
        c.answered() == 6
    });
    c.ask(t.net.stack(0), "10.0.0.2:53", "web.test", 9);
    t.run(|net, _| {
        ns.pump(net.stack(2));
        ns.queries.len() == 5
    });
}

#[test]
fn shutdown_closes_the_forwarders_sockets() {
    let mut t = trio(77, forwarder(&["10.0.0.3:53"]));
    let mut ns = NameServer::start(t.net.stack(2), 53, Ns::Silent);
    let mut c = Asker::new();
    for i in 0..3 {
        c.ask(t.net.stack(0), "10.0.0.2:53", "web.test", i);
    }
    t.run(|net, _| {
        ns.pump(net.stack(2));
        ns.queries.len() == 3
    });
    assert_eq!(upstream_sockets(t.net.stack(1)), 3);
    t.svc.shutdown(t.net.stack(1));
    assert_eq!(t.net.stack(1).socket_count(), 0);
    assert_eq!(t.svc.poll_at(), None);
    // Timeouts after shutdown open nothing.
    t.net.run_for(Duration::from_secs(5), STEPS).unwrap();
    let now = t.net.now();
    t.svc.handle_events(t.net.stack(1), now);
    assert_eq!(t.net.stack(1).socket_count(), 0);
}
