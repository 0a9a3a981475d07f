//! Lifecycle.

use super::*;

#[test]
fn a_port_already_bound_is_a_clear_error_and_nothing_stays_bound() {
    let mut stack = Stack::new(ephemera_config(60), Instant::from_millis(0)).unwrap();
    let _taken = stack.listen(sa("0.0.0.0:9"), None).unwrap();
    let before = stack.snapshot().len();
    let err = Services::new(
        &mut stack,
        ServicesConfig {
            http: Some(80),
            echo: Some(7),
            discard: Some(9),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.addr.port(), 9);
    assert_eq!(err.cause.errno(), 98);
    let msg = err.to_string();
    assert!(
        msg.contains("discard") && msg.contains("port 9") && msg.contains("EADDRINUSE"),
        "{msg}"
    );
    // http and echo were bound first and have been released again.
    assert_eq!(stack.snapshot().len(), before);
    assert!(stack.listen(sa("0.0.0.0:80"), None).is_ok());

    // Two services on one port collide the same way.
    let err = Services::new(
        &mut stack,
        ServicesConfig {
            echo: Some(8080),
            socks: Some(8080),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("socks"), "{err}");
}

#[test]
fn shutdown_closes_every_connection_gracefully() {
    let mut t = trio(
        70,
        ServicesConfig {
            http: Some(80),
            echo: Some(7),
            socks: Some(1080),
            socks_allow: client_subnet(),
            ..Default::default()
        },
    );
    let mut origin = Origin::listen(t.net.stack(2), 7000, Mode::Echo);
    let mut web = Client::connect(t.net.stack(0), "10.0.0.2:80");
    web.write(&http_get("/bytes/10", false));
    let mut echo = Client::connect(t.net.stack(0), "10.0.0.2:7");
    echo.write(b"hi");
    let mut proxied = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    proxied.write(&socks_connect_ipv4(sa("10.0.0.3:7000")));
    proxied.write(b"through");
    t.run(|n, _| {
        for c in [&mut web, &mut echo, &mut proxied] {
            c.pump(n.stack(0));
        }
        origin.pump(n.stack(2));
        web.got.ends_with(b"0123456789") && echo.got == b"hi" && proxied.got.ends_with(b"through")
    });
    assert_eq!(t.svc.connection_count(), 4);

    t.svc.shutdown(t.net.stack(1));
    assert_eq!(t.svc.connection_count(), 0);
    t.run(|n, _| {
        for c in [&mut web, &mut echo, &mut proxied] {
            c.pump(n.stack(0));
        }
        origin.pump(n.stack(2));
        web.eof && echo.eof && proxied.eof && origin.conns[0].eof
    });
    for c in [&web, &echo, &proxied] {
        assert_eq!(c.error, None, "closed with FIN, not reset");
    }
    // No listener left; new connections are refused.
    assert!(t
        .net
        .stack(1)
        .snapshot()
        .iter()
        .all(|r| r.state != "LISTEN" && r.state != "UNCONN"));
    let mut late = Client::connect(t.net.stack(0), "10.0.0.2:80");
    t.run(|n, _| {
        late.pump(n.stack(0));
        late.error.is_some()
    });
    assert_eq!(late.error, Some(RecvError::ConnectionRefused));
    // Once the clients close too, ephemera holds nothing but TIME-WAIT.
    for c in [&web, &echo, &proxied] {
        t.net.stack(0).close(c.h);
    }
    t.run(|n, _| n.stack(1).socket_count() == 0);
    assert_eq!(t.net.stack(1).tcp_state(web.h), None);
    t.net.stack(1).check_invariants().unwrap();
}

#[test]
fn idle_http_connections_are_closed_after_the_timeout() {
    let mut t = trio(
        80,
        ServicesConfig {
            http: Some(80),
            idle_timeout: Some(Duration::from_secs(5)),
            ..Default::default()
        },
    );
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:80");
    t.run(|n, _| {
        c.pump(n.stack(0));
        n.stack(0).tcp_state(c.h) == Some(TcpState::Established)
    });
    t.run(|_, svc| svc.connection_count() == 1);
    let deadline = t.svc.poll_at().expect("an idle deadline");
    assert!(deadline > t.net.now() && deadline <= t.net.now() + Duration::from_secs(5));
    // The virtual link only wakes for the stacks' deadlines; step the
    // clock to the services' one.
    let now = t.net.now();
    t.net.run_for(deadline - now, STEPS).unwrap();
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    assert!(c.got.is_empty());
    assert_eq!(t.svc.connection_count(), 0);
}
