//! Name lookups.

use super::*;

#[test]
fn a_stuck_lookup_stalls_no_other_client_and_socks_completes_once_it_answers() {
    let mut t = trio(
        90,
        ServicesConfig {
            socks: Some(1080),
            socks_allow: client_subnet(),
            echo: Some(7),
            http: Some(80),
            ..Default::default()
        },
    );
    // The daemon's kind of resolver: a blocking function on worker
    // threads. This one blocks on "slow.test" until the test opens the
    // gate; it gives up after 20 s so that a loop that waited for it
    // fails this test instead of hanging it.
    let (entered_tx, entered) = mpsc::channel::<()>();
    let (open, gate) = mpsc::channel::<()>();
    let (entered_tx, gate) = (Mutex::new(entered_tx), Mutex::new(gate));
    let limit = std::time::Duration::from_secs(20);
    let blocking = move |name: &str, port: u16| -> LookupResult {
        assert_eq!(name, "slow.test");
        entered_tx.lock().unwrap().send(()).unwrap();
        gate.lock()
            .unwrap()
            .recv_timeout(limit)
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "gate never opened"))?;
        Ok(vec![SocketAddr::new(ip(ORIGIN), port)])
    };
    t.svc
        .set_resolver(Box::new(ResolverPool::new(blocking, 2, 8)));
    let mut origin = Origin::listen(t.net.stack(2), 8000, Mode::Send(30_000));

    let mut proxied = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    proxied.write(&socks_connect_domain("slow.test", 8000));
    proxied.write(b"sent before the reply");
    t.run(|n, svc| {
        proxied.pump(n.stack(0));
        svc.lookups_outstanding() == 1
    });
    // A worker is inside the lookup, and stays there.
    entered.recv_timeout(limit).unwrap();

    // Meanwhile an echo and an HTTP client are served in full.
    let mut echo = Client::connect(t.net.stack(0), "10.0.0.2:7");
    let data = pattern(100_000);
    echo.write(&data);
    echo.finish();
    let mut web = Client::connect(t.net.stack(0), "10.0.0.2:80");
    web.write(&http_get("/bytes/50000", true));
    t.run(|n, _| {
        for c in [&mut proxied, &mut echo, &mut web] {
            c.pump(n.stack(0));
        }
        echo.eof && web.eof
    });
    assert!(echo.got == data);
    let (status, body) = parse_response(&web.got);
    assert_eq!((status, body.len()), (200, 50_000));
    // The SOCKS client has its method choice and nothing else yet.
    assert_eq!(proxied.got, [5, 0]);
    assert!(!proxied.eof && origin.conns.is_empty());
    assert_eq!(t.svc.lookups_outstanding(), 1);

    // The resolver answers: its wake-up descriptor says so, and the
    // request goes on.
    open.send(()).unwrap();
    let fd = t.svc.wake_fd().expect("the pool has started");
    assert!(wait_readable(fd, Some(limit)).unwrap());
    t.relay(&mut proxied, &mut origin, |proxied, _, _| proxied.eof);
    let (rep, bound, body) = socks_reply(&proxied.got);
    assert_eq!(rep, 0);
    assert!(body == pattern(30_000));
    assert_eq!(bound, origin.conns[0].peer);
    assert!(in_ephemeral_range(bound));
    assert_eq!(origin.conns[0].got, b"sent before the reply");
    assert_eq!(t.svc.lookups_outstanding(), 0);
}

#[test]
fn a_fetch_by_name_connects_once_its_lookup_answers() {
    let mut t = trio(
        91,
        ServicesConfig {
            http: Some(80),
            ..Default::default()
        },
    );
    let mut origin_svc = http_origin(&mut t);
    let held = Held::default();
    t.svc.set_resolver(Box::new(held.clone()));
    let url = Url::parse("http://origin.test:8080/bytes/30000").unwrap();
    let id = t.svc.start_fetch(t.net.stack(1), &url).unwrap();
    let nx = Url::parse("http://nowhere.test/").unwrap();
    let nx = t.svc.start_fetch(t.net.stack(1), &nx).unwrap();
    assert_eq!(held.asked(), ["origin.test", "nowhere.test"]);

    // While both wait, an HTTP client is served.
    let mut web = Client::connect(t.net.stack(0), "10.0.0.2:80");
    web.write(&http_get("/bytes/50000", true));
    t.run(|n, svc| {
        web.pump(n.stack(0));
        assert_eq!(svc.poll_fetch(id), None, "no event before the answer");
        web.eof
    });
    let (status, body) = parse_response(&web.got);
    assert_eq!((status, body.len()), (200, 50_000));

    held.answer("nowhere.test", None);
    held.answer("origin.test", Some(ORIGIN));
    let (mut events, mut failed, mut body) = (Vec::new(), Vec::new(), Vec::new());
    let svc = &mut t.svc;
    t.net
        .run_until(STEPS, |n| {
            let now = n.now();
            origin_svc.handle_events(n.stack(2), now);
            svc.handle_events(n.stack(1), now);
            while let Some(ev) = svc.poll_fetch(nx) {
                failed.push(ev);
            }
            drain_fetch(svc, id, &mut events, &mut body);
            matches!(events.last(), Some(FetchEvent::Done)) && !failed.is_empty()
        })
        .unwrap();
    match failed.as_slice() {
        [FetchEvent::Failed(why)] => {
            assert!(why.contains("cannot resolve nowhere.test"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    let [FetchEvent::Connected { local, remote }, FetchEvent::Head { status: 200 }, FetchEvent::Done] =
        events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert!(in_ephemeral_range(*local));
    assert_eq!(*remote, sa("10.0.0.3:8080"));
    assert!(body == (0..30_000).map(pattern_byte).collect::<Vec<u8>>());
}

#[test]
fn answers_for_clients_that_went_away_are_dropped_without_effect() {
    let mut t = trio(
        92,
        ServicesConfig {
            socks: Some(1080),
            socks_allow: client_subnet(),
            forwards: vec![forward(8080, "forward.test", 7000)],
            ..Default::default()
        },
    );
    let held = Held::default();
    t.svc.set_resolver(Box::new(held.clone()));
    let mut origin = Origin::listen(t.net.stack(2), 7000, Mode::Echo);

    // A SOCKS client and a forwarded one leave while their names are
    // looked up; a fetch is cancelled.
    let mut proxied = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    proxied.write(&socks_connect_domain("socks.test", 7000));
    let mut forwarded = Client::connect(t.net.stack(0), "10.0.0.2:8080");
    forwarded.write(b"never relayed");
    t.run(|n, _| {
        proxied.pump(n.stack(0));
        forwarded.pump(n.stack(0));
        held.asked().len() == 2
    });
    let url = Url::parse("http://fetch.test:7000/").unwrap();
    let id = t.svc.start_fetch(t.net.stack(1), &url).unwrap();
    assert_eq!(t.svc.connection_count(), 2);
    t.net.stack(0).abort(proxied.h);
    t.net.stack(0).abort(forwarded.h);
    t.run(|_, svc| svc.connection_count() == 0);
    t.svc.cancel_fetch(t.net.stack(1), id);
    // The lookups still run in the resolver, and count until they answer.
    assert_eq!(t.svc.lookups_outstanding(), 3);

    for name in ["socks.test", "forward.test", "fetch.test"] {
        held.answer(name, Some(ORIGIN));
    }
    t.run(|_, svc| svc.lookups_outstanding() == 0);
    t.net.run_for(Duration::from_secs(1), STEPS).unwrap();
    t.run(|n, _| {
        origin.pump(n.stack(2));
        true
    });
    // Nobody connected anywhere, and nothing is left over.
    assert!(origin.conns.is_empty());
    assert_eq!(t.svc.lookup_counters().discarded, 3);
    assert_eq!(t.svc.connection_count(), 0);
    assert_eq!(t.svc.poll_fetch(id), None);
    assert!(t
        .net
        .stack(1)
        .snapshot()
        .iter()
        .all(|r| r.remote.is_none_or(|a| a.ip() != ip(ORIGIN))));
    t.net.stack(1).check_invariants().unwrap();
}

#[test]
fn lookups_are_bounded_and_time_limited() {
    let mut t = trio(
        93,
        ServicesConfig {
            socks: Some(1080),
            socks_allow: client_subnet(),
            max_lookups: 2,
            lookup_timeout: Duration::from_secs(5),
            ..Default::default()
        },
    );
    let held = Held::default();
    t.svc.set_resolver(Box::new(held.clone()));
    let mut origin = Origin::listen(t.net.stack(2), 8000, Mode::Send(1000));

    let mut a = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    a.write(&socks_connect_domain("a.test", 8000));
    let mut b = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    b.write(&socks_connect_domain("b.test", 8000));
    t.run(|n, _| {
        a.pump(n.stack(0));
        b.pump(n.stack(0));
        held.asked().len() == 2
    });
    // A third lookup is one too many: general failure (01) at once, and
    // a fetch by name is refused too.
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    c.write(&socks_connect_domain("c.test", 8000));
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    let (rep, _, rest) = socks_reply(&c.got);
    assert_eq!((rep, rest.len()), (1, 0));
    let url = Url::parse("http://d.test/").unwrap();
    match t.svc.start_fetch(t.net.stack(1), &url) {
        Err(e @ FetchError::Resolve { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains("d.test") && m.contains("too many name lookups"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(held.asked().len(), 2);
    assert_eq!(t.svc.lookup_counters().refused, 2);

    // The resolver never answers: after the time limit both clients are
    // told host unreachable (04).
    assert!(t.svc.poll_at().is_some());
    t.net.run_for(Duration::from_secs(5), STEPS).unwrap();
    t.run(|n, _| {
        a.pump(n.stack(0));
        b.pump(n.stack(0));
        a.eof && b.eof
    });
    for got in [&a.got, &b.got] {
        let (rep, _, rest) = socks_reply(got);
        assert_eq!((rep, rest.len()), (4, 0));
    }
    assert_eq!(t.svc.lookup_counters().timed_out, 2);
    // They still occupy the resolver: still no room.
    assert_eq!(t.svc.lookups_outstanding(), 2);
    let mut d = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    d.write(&socks_connect_domain("d.test", 8000));
    t.run(|n, _| {
        d.pump(n.stack(0));
        d.eof
    });
    assert_eq!(socks_reply(&d.got).0, 1);

    // Late answers are dropped; then there is room again.
    held.answer("a.test", Some(ORIGIN));
    held.answer("b.test", Some(ORIGIN));
    t.run(|_, svc| svc.lookups_outstanding() == 0);
    assert_eq!(t.svc.lookup_counters().discarded, 2);
    assert!(origin.conns.is_empty());
    let mut e = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    e.write(&socks_connect_domain("e.test", 8000));
    t.run(|n, _| {
        e.pump(n.stack(0));
        held.asked().len() == 3
    });
    held.answer("e.test", Some(ORIGIN));
    t.relay(&mut e, &mut origin, |e, _, _| e.eof);
    let (rep, _, body) = socks_reply(&e.got);
    assert_eq!(rep, 0);
    assert!(body == pattern(1000));
}
