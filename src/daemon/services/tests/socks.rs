//! SOCKS.

use super::*;

#[test]
fn socks_connect_fetches_bytes_exactly_from_an_ephemeral_port_of_ephemeras_table() {
    let mut t = trio(
        30,
        ServicesConfig {
            socks: Some(1080),
            socks_allow: client_subnet(),
            ..Default::default()
        },
    );
    let mut origin = Origin::listen(t.net.stack(2), 8000, Mode::Send(400_000));
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    c.write(&socks_connect_ipv4(sa("10.0.0.3:8000")));
    c.write(b"request bytes sent with the handshake");
    c.finish();
    t.relay(&mut c, &mut origin, |c, origin, _| {
        c.eof && origin.conns.first().is_some_and(|o| o.eof)
    });
    let (rep, bound, body) = socks_reply(&c.got);
    assert_eq!(rep, 0);
    assert_eq!(body.len(), 400_000);
    assert!(body == pattern(400_000));
    let o = &origin.conns[0];
    assert_eq!(o.got, b"request bytes sent with the handshake");
    // The origin saw ephemera's address and a port from its configured
    // range, and it is the one the SOCKS reply named.
    assert!(in_ephemeral_range(o.peer), "{}", o.peer);
    assert_eq!(bound, o.peer);
    t.run(|_, svc| svc.connection_count() == 0);
}

#[test]
fn socks_domain_names_go_through_the_injected_resolver() {
    let mut t = trio(
        31,
        ServicesConfig {
            socks: Some(1080),
            socks_allow: client_subnet(),
            ..Default::default()
        },
    );
    let calls = Rc::new(Cell::new(0));
    let seen = calls.clone();
    t.svc.set_resolver(Box::new(InlineResolver::new(
        move |name: &str, port: u16| {
            seen.set(seen.get() + 1);
            match name {
                "origin.test" => Ok(vec![SocketAddr::new(ip(ORIGIN), port)]),
                // As std reports getaddrinfo's errors: without a kind.
                "broken.test" => Err(io::Error::other("failed to lookup address information")),
                _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such name")),
            }
        },
    )));
    let mut origin = Origin::listen(t.net.stack(2), 8000, Mode::Send(1000));
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    c.write(&socks_connect_domain("origin.test", 8000));
    let mut nx = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    nx.write(&socks_connect_domain("nowhere.test", 8000));
    let mut broken = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    broken.write(&socks_connect_domain("broken.test", 8000));
    // An address sent as a name (curl --socks5-hostname) needs no lookup.
    let mut lit = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    lit.write(&socks_connect_domain("10.0.0.3", 8000));
    t.run(|n, _| {
        c.pump(n.stack(0));
        nx.pump(n.stack(0));
        broken.pump(n.stack(0));
        lit.pump(n.stack(0));
        origin.pump(n.stack(2));
        c.eof && nx.eof && broken.eof && lit.eof
    });
    let (rep, bound, body) = socks_reply(&c.got);
    assert_eq!(rep, 0);
    assert!(body == pattern(1000));
    assert!(origin.conns.iter().any(|o| o.peer == bound));
    assert!(in_ephemeral_range(bound));
    // An unknown name, or any failed lookup: host unreachable (0x04), then
    // close.
    for got in [&nx.got, &broken.got] {
        let (rep, _, rest) = socks_reply(got);
        assert_eq!((rep, rest.len()), (4, 0));
    }
    let (rep, _, body) = socks_reply(&lit.got);
    assert_eq!(rep, 0);
    assert!(body == pattern(1000));
    assert_eq!(calls.get(), 3);
    assert_eq!(t.svc.lookup_counters().started, 3);
}

#[test]
fn socks_to_a_closed_port_is_refused_with_reply_5() {
    let mut t = trio(
        32,
        ServicesConfig {
            socks: Some(1080),
            socks_allow: client_subnet(),
            ..Default::default()
        },
    );
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    c.write(&socks_connect_ipv4(sa("10.0.0.3:9999")));
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    let (rep, bound, rest) = socks_reply(&c.got);
    assert_eq!(rep, 0x05);
    assert_eq!(bound, sa("0.0.0.0:0"));
    assert!(rest.is_empty());
    assert_eq!(t.net.stack(1).counters().tcp_connect_refused, 1);
    t.run(|_, svc| svc.connection_count() == 0);
}

#[test]
fn malformed_socks_gets_its_error_reply_while_a_concurrent_client_is_served() {
    let mut t = trio(
        33,
        ServicesConfig {
            socks: Some(1080),
            socks_allow: client_subnet(),
            ..Default::default()
        },
    );
    let mut origin = Origin::listen(t.net.stack(2), 8000, Mode::Send(50_000));
    let mut good = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    good.write(&socks_connect_ipv4(sa("10.0.0.3:8000")));
    // BIND (0x02) is not supported: reply 0x07.
    let mut bad = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    bad.write(&[5, 1, 0, 5, 2, 0, 1, 10, 0, 0, 3, 0x1f, 0x40]);
    // Not SOCKS at all: closed without a reply.
    let mut junk = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    junk.write(b"GET / HTTP/1.1\r\n\r\n");
    t.run(|n, _| {
        for c in [&mut good, &mut bad, &mut junk] {
            c.pump(n.stack(0));
        }
        origin.pump(n.stack(2));
        good.eof && bad.eof && junk.eof
    });
    let (rep, _, rest) = socks_reply(&bad.got);
    assert_eq!((rep, rest.len()), (0x07, 0));
    assert!(junk.got.is_empty());
    let (rep, _, body) = socks_reply(&good.got);
    assert_eq!(rep, 0);
    assert!(body == pattern(50_000));
}

/// Run SOCKS clients `cs` until each has its reply and is closed.
fn until_closed(t: &mut Trio, cs: &mut [&mut Client]) {
    t.run(|n, _| {
        for c in cs.iter_mut() {
            c.pump(n.stack(0));
        }
        cs.iter().all(|c| c.eof || c.error.is_some())
    });
}

#[test]
fn a_client_outside_socks_allow_gets_reply_2_and_nothing_is_connected() {
    let mut t = trio(
        34,
        ServicesConfig {
            socks: Some(1080),
            // The client, 10.0.0.1, is not in it.
            socks_allow: NetList::new(vec![Net::parse("192.0.2.0/24").unwrap()]),
            ..Default::default()
        },
    );
    let mut origin = Origin::listen(t.net.stack(2), 8000, Mode::Send(10));
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    c.write(&socks_connect_ipv4(sa("10.0.0.3:8000")));
    let mut named = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    named.write(&socks_connect_domain("origin.test", 8000));
    let asked = Rc::new(Cell::new(0));
    let seen = asked.clone();
    t.svc
        .set_resolver(Box::new(InlineResolver::new(move |_: &str, p: u16| {
            seen.set(seen.get() + 1);
            Ok(vec![SocketAddr::new(ip(ORIGIN), p)])
        })));
    until_closed(&mut t, &mut [&mut c, &mut named]);
    origin.pump(t.net.stack(2));
    for got in [&c.got, &named.got] {
        let (rep, bound, rest) = socks_reply(got);
        assert_eq!((rep, bound, rest.len()), (0x02, sa("0.0.0.0:0"), 0));
    }
    assert!(origin.conns.is_empty(), "nothing reached the origin");
    assert_eq!(asked.get(), 0, "no lookup for a refused client");
    assert_eq!(t.svc.counters().socks_denied_client, 2);
    assert_eq!(t.net.stack(1).counters().tcp_active_opens, 0);
    t.run(|_, svc| svc.connection_count() == 0);
}

#[test]
fn denied_destinations_get_reply_2_given_as_addresses_or_through_a_name() {
    let mut t = trio(
        35,
        ServicesConfig {
            socks: Some(1080),
            socks_allow: client_subnet(),
            ..Default::default()
        },
    );
    // DNS may point a name anywhere: "metadata.test" at 169.254.169.254,
    // "mixed.test" at loopback and at the origin.
    t.svc
        .set_resolver(Box::new(InlineResolver::new(|name: &str, p: u16| {
            Ok(match name {
                "metadata.test" => vec![SocketAddr::new(ip("169.254.169.254"), p)],
                _ => vec![
                    SocketAddr::new(ip("127.0.0.1"), p),
                    SocketAddr::new(ip(ORIGIN), p),
                ],
            })
        })));
    let mut origin = Origin::listen(t.net.stack(2), 8000, Mode::Send(100));
    let mut refused = Vec::new();
    for request in [
        socks_connect_ipv4(sa("169.254.169.254:80")),
        socks_connect_ipv4(sa("127.0.0.1:22")),
        socks_connect_ipv4(sa("0.0.0.0:80")),
        socks_connect_ipv4(sa("224.0.0.1:80")),
        socks_connect_domain("127.0.0.1", 22),
        socks_connect_domain("metadata.test", 80),
    ] {
        let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
        c.write(&request);
        refused.push(c);
    }
    // IPv6 loopback and link-local, and an IPv4-mapped loopback address.
    for v6 in ["::1", "fe80::1", "::ffff:127.0.0.1"] {
        let mut m = vec![5, 1, 0, 5, 1, 0, 4];
        m.extend_from_slice(&v6.parse::<std::net::Ipv6Addr>().unwrap().octets());
        m.extend_from_slice(&80u16.to_be_bytes());
        let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
        c.write(&m);
        refused.push(c);
    }
    let mut mixed = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    mixed.write(&socks_connect_domain("mixed.test", 8000));
    t.run(|n, _| {
        for c in refused.iter_mut() {
            c.pump(n.stack(0));
        }
        mixed.pump(n.stack(0));
        origin.pump(n.stack(2));
        mixed.eof && refused.iter().all(|c| c.eof)
    });
    for c in &refused {
        assert_eq!(c.got.len(), 2 + 10, "{:?}", c.got);
        assert_eq!(&c.got[..4], &[5, 0, 5, 0x02], "{:?}", c.got);
    }
    // Only the allowed address of the mixed answer is tried.
    let (rep, _, body) = socks_reply(&mixed.got);
    assert_eq!(rep, 0);
    assert!(body == pattern(100));
    let c = t.svc.counters();
    assert_eq!(c.socks_denied_destination, refused.len() as u64);
    assert_eq!(c.socks_denied_client, 0);
    assert_eq!(t.net.stack(1).counters().tcp_active_opens, 1);
}

#[test]
fn with_socks_deny_none_the_defaults_are_lifted_and_given_networks_still_apply() {
    let mut t = trio(
        36,
        ServicesConfig {
            socks: Some(1080),
            socks_allow: client_subnet(),
            destinations: Destinations::new(deny_list(&[
                DenyArg::NoDefaults,
                DenyArg::Net(Net::parse("10.0.0.3/32").unwrap()),
            ])),
            ..Default::default()
        },
    );
    let mut origin = Origin::listen(t.net.stack(2), 8000, Mode::Send(10));
    let mut denied = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    denied.write(&socks_connect_ipv4(sa("10.0.0.3:8000")));
    // Loopback is no longer refused by the rules: the stack tries it
    // (nothing answers there on this link).
    let mut loopback = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    loopback.write(&socks_connect_ipv4(sa("127.0.0.1:8000")));
    until_closed(&mut t, &mut [&mut denied]);
    t.run(|n, _| {
        loopback.pump(n.stack(0));
        n.stack(1).counters().tcp_active_opens == 1
    });
    origin.pump(t.net.stack(2));
    assert_eq!(socks_reply(&denied.got).0, 0x02);
    assert_eq!(t.svc.counters().socks_denied_destination, 1);
}

/// RFC 1929 login for `user` with `pass`, then CONNECT to `to`.
fn socks_login_connect(user: &str, pass: &str, to: SocketAddr) -> Vec<u8> {
    let mut m = vec![5, 1, 2, 1, user.len() as u8];
    m.extend_from_slice(user.as_bytes());
    m.push(pass.len() as u8);
    m.extend_from_slice(pass.as_bytes());
    m.extend_from_slice(&socks_connect_ipv4(to)[3..]);
    m
}

#[test]
fn with_users_only_a_right_login_is_relayed() {
    let users = Credentials::parse(b"alice:s3cret\n").unwrap();
    let mut t = trio(
        37,
        ServicesConfig {
            socks: Some(1080),
            socks_allow: client_subnet(),
            socks_auth: Some(Arc::new(users)),
            ..Default::default()
        },
    );
    let mut origin = Origin::listen(t.net.stack(2), 8000, Mode::Send(1000));
    let to = sa("10.0.0.3:8000");
    let mut good = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    good.write(&socks_login_connect("alice", "s3cret", to));
    let mut wrong = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    wrong.write(&socks_login_connect("alice", "guess", to));
    // Asking for no authentication is not enough.
    let mut anon = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    anon.write(&socks_connect_ipv4(to));
    t.run(|n, _| {
        for c in [&mut good, &mut wrong, &mut anon] {
            c.pump(n.stack(0));
        }
        origin.pump(n.stack(2));
        good.eof && wrong.eof && anon.eof
    });
    assert_eq!(&good.got[..4], &[5, 2, 1, 0], "method 02, login accepted");
    assert_eq!(good.got[5], 0, "REP succeeded");
    assert!(good.got[4 + 10..] == pattern(1000));
    assert_eq!(wrong.got, [5, 2, 1, 1], "login refused, then closed");
    assert_eq!(anon.got, [5, 0xff], "no acceptable method");
    assert_eq!(origin.conns.len(), 1);
    assert_eq!(t.svc.counters().socks_auth_failed, 1);
}

#[test]
fn a_client_outside_socks_allow_cannot_even_log_in() {
    let users = Credentials::parse(b"alice:s3cret\n").unwrap();
    let mut t = trio(
        38,
        ServicesConfig {
            socks: Some(1080),
            socks_allow: NetList::new(vec![Net::parse("192.0.2.0/24").unwrap()]),
            socks_auth: Some(Arc::new(users)),
            ..Default::default()
        },
    );
    // The right password, from the wrong place: refused like a wrong one,
    // so an outsider learns nothing by guessing.
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    c.write(&socks_login_connect("alice", "s3cret", sa("10.0.0.3:8000")));
    until_closed(&mut t, &mut [&mut c]);
    assert_eq!(c.got, [5, 2, 1, 1]);
    let counters = t.svc.counters();
    assert_eq!(
        (counters.socks_denied_client, counters.socks_auth_failed),
        (1, 0)
    );
}
