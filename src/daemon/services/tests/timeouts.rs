//! Peers that never finish: idle timeouts for every service, and the
//! deadline on an HTTP request head or a SOCKS handshake.

use super::*;

/// Every service, idle after 30 s, heads within 10 s.
fn all_services() -> ServicesConfig {
    ServicesConfig {
        http: Some(80),
        echo: Some(7),
        discard: Some(9),
        socks: Some(1080),
        socks_allow: client_subnet(),
        forwards: vec![forward(8080, "10.0.0.3", 7000)],
        idle_timeout: Some(Duration::from_secs(30)),
        head_timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    }
}

#[test]
fn every_service_closes_a_connection_idle_past_the_timeout() {
    let mut t = trio(110, all_services());
    let mut origin = Origin::listen(t.net.stack(2), 7000, Mode::Echo);
    let mut web = Client::connect(t.net.stack(0), "10.0.0.2:80");
    web.write(&http_get("/bytes/10", false));
    let mut echo = Client::connect(t.net.stack(0), "10.0.0.2:7");
    echo.write(b"hi");
    let mut discard = Client::connect(t.net.stack(0), "10.0.0.2:9");
    discard.write(b"into the void");
    let mut socks = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    socks.write(&socks_connect_ipv4(sa("10.0.0.3:7000")));
    socks.write(b"via socks");
    let mut fwd = Client::connect(t.net.stack(0), "10.0.0.2:8080");
    fwd.write(b"via forward");
    t.run(|n, _| {
        for c in [&mut web, &mut echo, &mut discard, &mut socks, &mut fwd] {
            c.pump(n.stack(0));
        }
        origin.pump(n.stack(2));
        web.got.ends_with(b"0123456789")
            && echo.got == b"hi"
            && socks.got.ends_with(b"via socks")
            && fwd.got == b"via forward"
            && discard.all_sent()
    });
    let started = t.net.now();
    assert_eq!(t.svc.connection_count(), 7);
    // Quiet for less than the timeout: all still open.
    t.wait(Duration::from_secs(25), |_| {});
    assert_eq!(t.svc.connection_count(), 7);
    assert_eq!(t.svc.counters().idle_timeouts, 0);
    // Then past it: every one is closed, with a FIN, and counted.
    t.wait(Duration::from_secs(10), |n| {
        for c in [&mut web, &mut echo, &mut discard, &mut socks, &mut fwd] {
            c.pump(n.stack(0));
        }
        origin.pump(n.stack(2));
    });
    for c in [&web, &echo, &discard, &socks, &fwd] {
        assert!(c.eof && c.error.is_none(), "{:?}", c.error);
    }
    assert!(t.net.now() - started >= Duration::from_secs(30));
    assert_eq!(t.svc.connection_count(), 0);
    assert_eq!(t.svc.counters().idle_timeouts, 5);
    assert!(
        origin.conns.iter().all(|o| o.eof),
        "the relays' far ends too"
    );
}

#[test]
fn an_echo_client_that_never_reads_is_let_go_after_the_idle_timeout() {
    let mut t = trio(111, all_services());
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:7");
    // More than every buffer on the way holds: the echo stalls on the
    // client's closed window.
    c.write(&pattern(1_000_000));
    t.run(|n, _| {
        // Send, never read.
        while c.sent < c.out.len() {
            match n.stack(0).send(c.h, &c.out[c.sent..]) {
                Ok(k) => c.sent += k,
                Err(_) => break,
            }
        }
        n.now() > Instant::from_millis(3000)
    });
    assert!(c.sent < 1_000_000, "stalled after {}", c.sent);
    assert_eq!(t.svc.connection_count(), 1);
    t.wait(Duration::from_secs(31), |_| {});
    assert_eq!(t.svc.connection_count(), 0);
    assert_eq!(t.svc.counters().idle_timeouts, 1);
}

#[test]
fn an_http_head_sent_a_byte_at_a_time_gets_408_after_the_head_timeout() {
    let mut t = trio(112, all_services());
    let request = http_get("/", true);
    // One byte every 2 s: never idle for 30 s, never done either.
    let mut slow = Client::connect(t.net.stack(0), "10.0.0.2:80");
    // And one that sends nothing at all.
    let mut silent = Client::connect(t.net.stack(0), "10.0.0.2:80");
    for byte in request.chunks(1).take(8) {
        slow.write(byte);
        t.wait(Duration::from_secs(2), |n| {
            slow.pump(n.stack(0));
            silent.pump(n.stack(0));
        });
    }
    assert!(slow.eof && silent.eof, "closed within 16 s");
    for c in [&slow, &silent] {
        let text = String::from_utf8_lossy(&c.got);
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{text}"
        );
    }
    assert_eq!(t.svc.counters().http_head_timeouts, 2);
    assert_eq!(t.svc.counters().idle_timeouts, 0);
    assert_eq!(t.svc.connection_count(), 0);
}

#[test]
fn a_keep_alive_connection_waits_between_requests_as_idle_time() {
    let mut t = trio(113, all_services());
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:80");
    c.write(&http_get("/bytes/5", false));
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.got.ends_with(b"01234")
    });
    // Longer than the head timeout, shorter than the idle one.
    t.wait(Duration::from_secs(20), |n| c.pump(n.stack(0)));
    c.write(&http_get("/bytes/3", true));
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    let text = String::from_utf8_lossy(&c.got);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_eq!(t.svc.counters().http_head_timeouts, 0);
}

#[test]
fn a_socks_handshake_that_stops_halfway_is_closed_after_the_head_timeout() {
    let mut t = trio(114, all_services());
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    // The greeting, and half a request.
    c.write(&socks_connect_ipv4(sa("10.0.0.3:7000"))[..8]);
    t.wait(Duration::from_secs(9), |n| c.pump(n.stack(0)));
    assert!(!c.eof);
    t.wait(Duration::from_secs(2), |n| c.pump(n.stack(0)));
    assert!(c.eof);
    assert_eq!(c.got, [5, 0], "the method reply, then nothing");
    assert_eq!(t.svc.counters().socks_handshake_timeouts, 1);
    assert_eq!(t.svc.connection_count(), 0);
}
