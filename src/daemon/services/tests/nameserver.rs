//! Names resolved on the stack (`--nameserver`): SOCKS, forward and fetch
//! names asked of a name server on the origin stack, over ephemera's own
//! UDP and TCP.

use std::net::{Ipv4Addr, Ipv6Addr};

use ephemera::wire::dns::{Message, Type};

use super::dns::{NameServer, Ns};
use super::*;

fn on_stack(cfg: ServicesConfig) -> ServicesConfig {
    ServicesConfig {
        nameservers: vec![sa("10.0.0.3:53")],
        seed: Some(11),
        ..cfg
    }
}

/// The origin's name server, giving `web.test` the origin's address.
fn origin_ns(t: &mut Trio, mode: Ns) -> NameServer {
    let mut ns = NameServer::start(t.net.stack(2), 53, mode);
    ns.web = Ipv4Addr::new(10, 0, 0, 3);
    ns
}

fn counter(svc: &Services, name: &str) -> u64 {
    svc.dns_counters()
        .into_iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no counter {name}"))
        .1
}

#[test]
fn a_socks_name_is_asked_of_the_name_server_from_the_stacks_own_port() {
    let cfg = on_stack(ServicesConfig {
        socks: Some(1080),
        socks_allow: client_subnet(),
        ..Default::default()
    });
    let mut t = trio(110, cfg);
    let mut ns = origin_ns(&mut t, Ns::Answer);
    let mut origin = Origin::listen(t.net.stack(2), 8000, Mode::Send(20_000));
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    c.write(&socks_connect_domain("WEB.test", 8000));
    t.relay(&mut c, &mut origin, |c, _, n| {
        ns.pump(n.stack(2));
        c.eof
    });
    let (rep, bound, body) = socks_reply(&c.got);
    assert_eq!(rep, 0);
    assert!(body == pattern(20_000));
    assert!(in_ephemeral_range(bound));
    // One A query (the stack has no IPv6), from ephemera's own address and
    // a port of its table, recursion desired; nothing from the host.
    assert_eq!(ns.queries.len(), 1);
    let (from, q) = &ns.queries[0];
    assert!(in_ephemeral_range(*from), "{from}");
    let m = Message::parse(q).unwrap();
    assert_eq!(m.question().unwrap().qtype, Type::A);
    let name = m.question().unwrap().name.to_string();
    assert!(name.eq_ignore_ascii_case("web.test"), "{name}");
    assert_eq!(counter(&t.svc, "dns_resolver_lookups"), 1);
    assert_eq!(counter(&t.svc, "dns_resolver_answers"), 1);
    assert_eq!(t.svc.lookup_counters().started, 1);
    assert_eq!(t.svc.wake_fd().map(|_| ()), None, "no resolver threads");
}

#[test]
fn with_ipv6_a_name_is_asked_for_a_and_aaaa_and_an_aaaa_only_name_is_reached() {
    let cfg = on_stack(ServicesConfig {
        socks: Some(1080),
        socks_allow: client_subnet(),
        ipv6: true,
        ..Default::default()
    });
    // The trio, with IPv6 on ephemera and the origin.
    let mut net = Network::new(LinkConfig {
        seed: 115,
        ..Default::default()
    });
    let t0 = Instant::from_millis(0);
    let (v6_server, v6_origin): (IpAddr, IpAddr) = (ip("fd00::2"), ip("fd00::3"));
    net.add(Stack::new(config(CLIENT, 115), t0).unwrap(), &[ip(CLIENT)]);
    let mut c1 = ephemera_config(116);
    c1.addrs.push((v6_server, 64));
    net.add(Stack::new(c1, t0).unwrap(), &[ip(SERVER), v6_server]);
    let mut c2 = config(ORIGIN, 117);
    c2.addrs.push((v6_origin, 64));
    net.add(Stack::new(c2, t0).unwrap(), &[ip(ORIGIN), v6_origin]);
    let svc = Services::new(net.stack(1), cfg).unwrap();
    let mut t = Trio { net, svc };
    let mut ns = origin_ns(&mut t, Ns::Answer);
    let web6: Ipv6Addr = "fd00::3".parse().unwrap();
    ns.web6 = Some(web6);
    let origin6 = t
        .net
        .stack(2)
        .listen(SocketAddr::new(v6_origin, 8000), None)
        .unwrap();

    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    c.write(&socks_connect_domain("web6.test", 8000));
    let mut accepted = None;
    t.run(|n, _| {
        ns.pump(n.stack(2));
        c.pump(n.stack(0));
        if let Ok(h) = n.stack(2).accept(origin6) {
            accepted = n.stack(2).peer_addr(h);
        }
        accepted.is_some() && c.got.len() >= 4
    });
    // The origin was reached over IPv6, from ephemera's IPv6 address and
    // a port of its table; the client got success.
    let peer = accepted.unwrap();
    assert_eq!(peer.ip(), v6_server);
    assert!(EPHEMERAL.contains(&peer.port()), "{peer}");
    assert_eq!(&c.got[..4], &[5, 0, 5, 0], "success");
    // Two queries, A then AAAA, each from its own connected socket on a
    // port of the table, under different IDs.
    let types: Vec<Type> = ns
        .queries
        .iter()
        .map(|(_, q)| Message::parse(q).unwrap().question().unwrap().qtype)
        .collect();
    assert_eq!(types.len(), 2, "{types:?}");
    assert!(types.contains(&Type::A) && types.contains(&Type::AAAA));
    let (a, b) = (&ns.queries[0], &ns.queries[1]);
    assert!(in_ephemeral_range(a.0) && in_ephemeral_range(b.0));
    assert_ne!(a.0.port(), b.0.port());
    assert_ne!(a.1[..2], b.1[..2], "fresh IDs");
    assert_eq!(counter(&t.svc, "dns_resolver_lookups"), 1);
    assert_eq!(counter(&t.svc, "dns_resolver_answers"), 2);
}

#[test]
fn forward_and_fetch_names_resolve_on_the_stack_too_even_when_truncated() {
    let cfg = on_stack(ServicesConfig {
        forwards: vec![forward(8080, "web.test", 8000)],
        ..Default::default()
    });
    let mut t = trio(111, cfg);
    // Every UDP answer is truncated: the names come over TCP.
    let mut ns = origin_ns(&mut t, Ns::Truncate);
    let mut origin = Origin::listen(t.net.stack(2), 8000, Mode::Send(5_000));
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:8080");
    t.relay(&mut c, &mut origin, |c, _, n| {
        ns.pump(n.stack(2));
        c.eof
    });
    assert!(c.got == pattern(5_000));
    assert_eq!(ns.tcp_clients.len(), 1);
    assert!(in_ephemeral_range(ns.tcp_clients[0]));

    let mut http = http_origin(&mut t);
    let id = t
        .svc
        .start_fetch(
            t.net.stack(1),
            &Url::parse("http://web.test:8080/bytes/3000").unwrap(),
        )
        .unwrap();
    let (mut events, mut body) = (Vec::new(), Vec::new());
    t.run(|n, svc| {
        ns.pump(n.stack(2));
        let now = n.now();
        http.handle_events(n.stack(2), now);
        drain_fetch(svc, id, &mut events, &mut body);
        events
            .iter()
            .any(|e| matches!(e, FetchEvent::Done | FetchEvent::Failed(_)))
    });
    assert!(events.contains(&FetchEvent::Done), "{events:?}");
    assert_eq!(body.len(), 3000);
    assert_eq!(counter(&t.svc, "dns_resolver_truncated"), 2);
}

#[test]
fn names_that_do_not_resolve_and_silent_servers_fail_the_client() {
    let cfg = on_stack(ServicesConfig {
        socks: Some(1080),
        socks_allow: client_subnet(),
        ..Default::default()
    });
    let mut t = trio(112, cfg);
    let mut ns = origin_ns(&mut t, Ns::Answer);
    // NXDOMAIN: reply 04 (host unreachable) at once.
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    c.write(&socks_connect_domain("nowhere.test", 8000));
    t.run(|n, _| {
        ns.pump(n.stack(2));
        c.pump(n.stack(0));
        c.got.len() >= 4
    });
    assert_eq!(c.got[3], 4, "{:?}", c.got);
    // A name server that says nothing: the name server is asked twice
    // (3 s each), then reply 04 well inside the 15 s a client may wait.
    ns.mode = Ns::Silent;
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    c.write(&socks_connect_domain("web.test", 8000));
    let start = t.net.now();
    t.run_timed(|n, _| {
        ns.pump(n.stack(2));
        c.pump(n.stack(0));
        c.got.len() >= 4
    });
    assert_eq!(c.got[3], 4, "{:?}", c.got);
    let took = t.net.now() - start;
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(7),
        "{took}"
    );
    assert_eq!(counter(&t.svc, "dns_resolver_timeouts"), 2);
    assert_eq!(ns.queries.len(), 1 + 2);
    // Every socket of the resolver is closed again.
    t.run(|n, _| {
        n.stack(1)
            .snapshot()
            .iter()
            .all(|r| !(r.proto == ephemera::Protocol::Udp && r.state == "ESTAB"))
    });
}

#[test]
fn shutdown_closes_the_resolvers_sockets() {
    let cfg = on_stack(ServicesConfig {
        socks: Some(1080),
        socks_allow: client_subnet(),
        ..Default::default()
    });
    let mut t = trio(113, cfg);
    let mut ns = origin_ns(&mut t, Ns::Silent);
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    c.write(&socks_connect_domain("web.test", 8000));
    t.run(|n, _| {
        ns.pump(n.stack(2));
        c.pump(n.stack(0));
        ns.queries.len() == 1
    });
    t.svc.shutdown(t.net.stack(1));
    t.run(|n, _| n.stack(1).socket_count() == 0);
}

#[test]
fn the_lookup_bound_holds_on_the_stack_too() {
    let cfg = on_stack(ServicesConfig {
        socks: Some(1080),
        socks_allow: client_subnet(),
        max_lookups: 2,
        ..Default::default()
    });
    let mut t = trio(114, cfg);
    // A name server that keeps its answers: the lookups stay in flight.
    let mut ns = origin_ns(&mut t, Ns::Silent);
    let mut waiting: Vec<Client> = ["a.test", "b.test"]
        .iter()
        .map(|name| {
            let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
            c.write(&socks_connect_domain(name, 8000));
            c
        })
        .collect();
    t.run(|n, _| {
        ns.pump(n.stack(2));
        for c in &mut waiting {
            c.pump(n.stack(0));
        }
        ns.queries.len() == 2
    });
    // A third is one too many: reply 01 at once, no query asked.
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    c.write(&socks_connect_domain("c.test", 8000));
    t.run(|n, _| {
        ns.pump(n.stack(2));
        c.pump(n.stack(0));
        c.eof
    });
    let (rep, _, rest) = socks_reply(&c.got);
    assert_eq!((rep, rest.len()), (1, 0));
    assert_eq!(ns.queries.len(), 2);
    assert_eq!(t.svc.lookup_counters().refused, 1);
    assert_eq!(counter(&t.svc, "dns_resolver_lookups"), 2);
    // Once one is answered, a new name is asked again.
    ns.answer_query(t.net.stack(2), 0);
    t.run(|n, _| {
        for c in &mut waiting {
            c.pump(n.stack(0));
        }
        waiting[0].got.len() >= 4
    });
    let mut d = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    d.write(&socks_connect_domain("d.test", 8000));
    t.run(|n, _| {
        ns.pump(n.stack(2));
        d.pump(n.stack(0));
        ns.queries.len() == 3
    });
    assert_eq!(t.svc.lookup_counters().refused, 1);
}
