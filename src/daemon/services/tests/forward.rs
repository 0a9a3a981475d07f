//! Forwards.

use super::*;

#[test]
fn forward_relays_both_ways_and_propagates_half_close() {
    let mut t = trio(
        40,
        ServicesConfig {
            forwards: vec![forward(8080, "10.0.0.3", 7000)],
            ..Default::default()
        },
    );
    let mut origin = Origin::listen(t.net.stack(2), 7000, Mode::Echo);
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:8080");
    let data = pattern(250_000);
    c.write(&data);
    t.relay(&mut c, &mut origin, |c, _, _| c.got.len() == data.len());
    // Everything echoed, and no FIN yet: the client has not closed.
    assert!(c.got == data);
    assert!(!c.eof && !origin.conns[0].eof);
    assert!(in_ephemeral_range(origin.conns[0].peer));
    // Client FIN -> origin sees EOF -> origin closes -> client sees EOF.
    c.finish();
    t.relay(&mut c, &mut origin, |c, _, _| c.eof);
    assert!(origin.conns[0].eof && origin.conns[0].got == data);
    assert_eq!(c.error, None);
    t.run(|_, svc| svc.connection_count() == 0);
}

#[test]
fn forward_reset_on_one_side_aborts_the_other() {
    let mut t = trio(
        41,
        ServicesConfig {
            forwards: vec![forward(8080, "origin.test", 7000)],
            ..Default::default()
        },
    );
    t.svc
        .set_resolver(Box::new(InlineResolver::new(|_: &str, p: u16| {
            Ok(vec![SocketAddr::new(ip(ORIGIN), p)])
        })));
    let mut origin = Origin::listen(t.net.stack(2), 7000, Mode::Echo);
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:8080");
    c.write(b"ping");
    t.relay(&mut c, &mut origin, |c, _, _| c.got == b"ping");
    let h = origin.conns[0].h;
    t.net.stack(2).abort(h);
    origin.conns[0].closed = true;
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.error.is_some()
    });
    assert_eq!(c.error, Some(RecvError::ConnectionReset));
    t.run(|_, svc| svc.connection_count() == 0);
}

#[test]
fn forward_to_a_closed_port_resets_the_client() {
    let mut t = trio(
        42,
        ServicesConfig {
            forwards: vec![forward(8080, "10.0.0.3", 7001)],
            ..Default::default()
        },
    );
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:8080");
    c.write(b"anyone there?");
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.error.is_some() || c.eof
    });
    assert_eq!(c.error, Some(RecvError::ConnectionReset));
}

#[test]
fn forward_respects_back_pressure() {
    let mut t = trio(
        43,
        ServicesConfig {
            forwards: vec![forward(8080, "10.0.0.3", 7000)],
            ..Default::default()
        },
    );
    let mut origin = Origin::listen(t.net.stack(2), 7000, Mode::Sink);
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:8080");
    let data = pattern(2_000_000);
    c.write(&data);
    t.relay(&mut c, &mut origin, |_, _, n| {
        n.now() > Instant::from_millis(5000)
    });
    // Nothing reads at the origin: the relay holds at most one chunk, so
    // the client can only have filled the buffers along the way (each
    // 64 KiB: client send, ephemera receive and send, origin receive).
    assert!(c.sent < 4 * 64 * 1024 + 16 * 1024 + 1, "{} sent", c.sent);
    assert!(c.sent > 64 * 1024);
    origin.reading = true;
    c.finish();
    t.relay(&mut c, &mut origin, |_, origin, _| origin.conns[0].eof);
    assert!(origin.conns[0].got == data);
}

#[test]
fn a_forward_to_a_name_that_resolves_to_a_denied_address_resets_the_client() {
    let mut t = trio(
        44,
        ServicesConfig {
            forwards: vec![forward(8080, "rebound.test", 7000)],
            ..Default::default()
        },
    );
    // The name pointed at the origin once; now it points at loopback.
    t.svc
        .set_resolver(Box::new(InlineResolver::new(|_: &str, p: u16| {
            Ok(vec![SocketAddr::new(ip("127.0.0.1"), p)])
        })));
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:8080");
    c.write(b"hello");
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.error.is_some() || c.eof
    });
    assert_eq!(c.error, Some(RecvError::ConnectionReset));
    assert_eq!(t.svc.counters().forward_denied_destination, 1);
    assert_eq!(t.net.stack(1).counters().tcp_active_opens, 0);
}
