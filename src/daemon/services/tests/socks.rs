//! SOCKS.

use super::*;

#[test]
fn socks_connect_fetches_bytes_exactly_from_an_ephemeral_port_of_ephemeras_table() {
    let mut t = trio(
        30,
        ServicesConfig {
            socks: Some(1080),
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
