//! SOCKS5 UDP ASSOCIATE (RFC 1928 §7): a client on stack 0 relays
//! datagrams through ephemera (stack 1) to an echo socket on the origin.

use ephemera::wire::socks::{parse_udp, write_udp_header, UdpAddr};
use ephemera::UdpHandle;

use super::super::socks_udp::{MAX_NAMES, MAX_PEERS, MAX_WAITING};
use super::*;

/// UDP ASSOCIATE with DST.ADDR 0.0.0.0 and DST.PORT `port`.
fn associate_request(port: u16) -> Vec<u8> {
    let mut m = vec![5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0];
    m.extend_from_slice(&port.to_be_bytes());
    m
}

fn datagram(to: SocketAddr, frag: u8, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    write_udp_header(&mut d, to);
    d[2] = frag;
    d.extend_from_slice(payload);
    d
}

struct Setup {
    t: Trio,
    control: Client,
    relay: SocketAddr,
    client: UdpHandle,
    echo: UdpHandle,
}

fn setup(seed: u64, idle: Option<Duration>) -> Setup {
    let mut t = trio(
        seed,
        ServicesConfig {
            socks: Some(1080),
            socks_allow: client_subnet(),
            idle_timeout: idle,
            ..Default::default()
        },
    );
    let client = t.net.stack(0).udp_bind(sa("10.0.0.1:0")).unwrap();
    let port = t.net.stack(0).udp_local_addr(client).unwrap().port();
    let echo = t.net.stack(2).udp_bind(sa("10.0.0.3:7")).unwrap();
    let mut control = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    control.write(&associate_request(port));
    t.run(|n, _| {
        control.pump(n.stack(0));
        control.got.len() >= 12
    });
    let (rep, relay, rest) = socks_reply(&control.got);
    assert_eq!(rep, 0);
    assert!(rest.is_empty());
    assert!(
        in_ephemeral_range(relay),
        "the relay's port comes from the table: {relay}"
    );
    Setup {
        t,
        control,
        relay,
        client,
        echo,
    }
}

impl Setup {
    /// Run until the client socket has a datagram; its bytes and sender.
    fn client_recv(&mut self) -> (Vec<u8>, SocketAddr) {
        let mut got = None;
        let (c, e) = (self.client, self.echo);
        self.t.run(|n, _| {
            echo(n.stack(2), e);
            let mut buf = [0u8; 2048];
            if let Ok((k, from)) = n.stack(0).udp_recv_from(c, &mut buf) {
                got = Some((buf[..k].to_vec(), from));
            }
            got.is_some()
        });
        got.unwrap()
    }
}

/// Echo what the origin's socket got.
fn echo(stack: &mut Stack, u: UdpHandle) {
    let mut buf = [0u8; 2048];
    while let Ok((k, from)) = stack.udp_recv_from(u, &mut buf) {
        stack.udp_send_to(u, &buf[..k], from).unwrap();
    }
}

#[test]
fn datagrams_go_both_ways_through_the_relay() {
    let mut s = setup(120, None);
    let to = sa("10.0.0.3:7");
    s.t.net
        .stack(0)
        .udp_send_to(s.client, &datagram(to, 0, b"ping"), s.relay)
        .unwrap();
    let (d, from) = s.client_recv();
    assert_eq!(from, s.relay);
    let (h, payload) = parse_udp(&d).unwrap();
    assert_eq!((h.frag, h.addr), (0, UdpAddr::Ip(to)));
    assert_eq!(payload, b"ping");
    let c = s.t.svc.counters();
    assert_eq!(
        (
            c.socks_udp_associations,
            c.socks_udp_to_remote,
            c.socks_udp_to_client
        ),
        (1, 1, 1)
    );
    // The origin saw the relay's own address and port.
    assert_eq!(
        s.t.net
            .stack(1)
            .snapshot()
            .iter()
            .filter(|r| r.proto == ephemera::Protocol::Udp && r.local == s.relay)
            .count(),
        1
    );
}

#[test]
fn fragments_strangers_and_denied_destinations_are_dropped_and_counted() {
    let mut s = setup(121, None);
    let st = s.t.net.stack(0);
    // A fragment, a malformed header, a denied destination (loopback).
    st.udp_send_to(s.client, &datagram(sa("10.0.0.3:7"), 1, b"frag"), s.relay)
        .unwrap();
    st.udp_send_to(s.client, &[0, 0, 0, 9, 1], s.relay).unwrap();
    st.udp_send_to(s.client, &datagram(sa("127.0.0.1:7"), 0, b"lo"), s.relay)
        .unwrap();
    // A stranger: the origin writes to the relay without being asked.
    let stranger = s.t.net.stack(2).udp_bind(sa("10.0.0.3:9")).unwrap();
    s.t.net
        .stack(2)
        .udp_send_to(stranger, b"let me in", s.relay)
        .unwrap();
    s.t.run(|_, svc| {
        let c = svc.counters();
        c.socks_udp_fragments == 1 && c.socks_udp_dropped == 2 && c.socks_denied_destination == 1
    });
    assert_eq!(s.t.svc.counters().socks_udp_to_remote, 0);
    // The client's own datagrams still go through.
    s.t.net
        .stack(0)
        .udp_send_to(s.client, &datagram(sa("10.0.0.3:7"), 0, b"ok"), s.relay)
        .unwrap();
    let (d, _) = s.client_recv();
    assert_eq!(parse_udp(&d).unwrap().1, b"ok");
}

#[test]
fn the_association_ends_with_its_control_connection_and_when_idle() {
    let mut s = setup(122, None);
    let before = s.t.net.stack(1).socket_count();
    s.control.finish();
    let c = &mut s.control;
    s.t.run(|n, _| {
        c.pump(n.stack(0));
        n.stack(1)
            .snapshot()
            .iter()
            .all(|r| r.proto != ephemera::Protocol::Udp || r.local.port() == 1080)
    });
    assert!(s.t.net.stack(1).socket_count() < before);

    // Idle: no datagram for the idle timeout ends it.
    let mut s = setup(123, Some(Duration::from_secs(30)));
    let relay = s.relay;
    let has_relay = |n: &Network| {
        n.stack_ref(1)
            .snapshot()
            .iter()
            .any(|r| r.proto == ephemera::Protocol::Udp && r.local == relay)
    };
    assert!(has_relay(&s.t.net));
    s.t.wait(Duration::from_secs(31), |_| {});
    assert!(!has_relay(&s.t.net));
    assert_eq!(s.t.svc.counters().idle_timeouts, 1);
}

#[test]
fn a_client_outside_the_rules_gets_no_relay() {
    let mut t = trio(
        124,
        ServicesConfig {
            socks: Some(1080),
            ..Default::default()
        },
    );
    let mut control = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    control.write(&associate_request(0));
    t.run(|n, _| {
        control.pump(n.stack(0));
        control.got.len() >= 12
    });
    assert_eq!(control.got[3], 2, "reply 02");
    assert!(t
        .net
        .stack(1)
        .snapshot()
        .iter()
        .all(|r| r.proto != ephemera::Protocol::Udp));
}

#[test]
fn associations_beyond_the_bound_are_refused_and_counted() {
    let mut t = trio(
        125,
        ServicesConfig {
            socks: Some(1080),
            socks_allow: client_subnet(),
            max_associations: 2,
            ..Default::default()
        },
    );
    let relays = |n: &Network| {
        n.stack_ref(1)
            .snapshot()
            .iter()
            .filter(|r| r.proto == ephemera::Protocol::Udp)
            .count()
    };
    let ask = |t: &mut Trio| {
        let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
        c.write(&associate_request(0));
        t.run(|n, _| {
            c.pump(n.stack(0));
            c.got.len() >= 12
        });
        c
    };
    let mut open: Vec<Client> = (0..2).map(|_| ask(&mut t)).collect();
    assert!(open.iter().all(|c| c.got[3] == 0));
    assert_eq!(relays(&t.net), 2);
    // The third: reply 01, no socket.
    let third = ask(&mut t);
    assert_eq!(third.got[3], 1, "reply 01");
    assert_eq!(relays(&t.net), 2);
    let c = t.svc.counters();
    assert_eq!((c.socks_udp_associations, c.socks_udp_refused), (2, 1));
    // One ends with its control connection: room for another.
    let mut first = open.remove(0);
    first.finish();
    t.run(|n, _| {
        first.pump(n.stack(0));
        relays(n) == 1
    });
    let fourth = ask(&mut t);
    assert_eq!(fourth.got[3], 0);
    assert_eq!(relays(&t.net), 2);
    let c = t.svc.counters();
    assert_eq!((c.socks_udp_associations, c.socks_udp_refused), (3, 1));
}

#[test]
fn replies_come_only_from_the_last_destinations_the_client_sent_to() {
    let mut s = setup(126, None);
    // One socket on the origin per destination port, each echoing: the
    // first destination, then MAX_PEERS others push it out.
    let ports: Vec<u16> = (1000..1000 + MAX_PEERS as u16 + 1).collect();
    let socks: Vec<UdpHandle> = ports
        .iter()
        .map(|p| {
            s.t.net
                .stack(2)
                .udp_bind(SocketAddr::new("10.0.0.3".parse().unwrap(), *p))
                .unwrap()
        })
        .collect();
    for (i, p) in ports.iter().enumerate() {
        let to = SocketAddr::new("10.0.0.3".parse().unwrap(), *p);
        s.t.net
            .stack(0)
            .udp_send_to(s.client, &datagram(to, 0, b"hi"), s.relay)
            .unwrap();
        let u = socks[i];
        s.t.run(|n, _| {
            let mut buf = [0u8; 64];
            n.stack(2).udp_recv_from(u, &mut buf).is_ok()
        });
    }
    let sent = s.t.svc.counters().socks_udp_to_remote;
    assert_eq!(sent, MAX_PEERS as u64 + 1);
    // The newest destination is still let through; the oldest, forgotten,
    // is dropped and counted.
    let relay = s.relay;
    let newest = *socks.last().unwrap();
    s.t.net.stack(2).udp_send_to(newest, b"new", relay).unwrap();
    let (d, _) = s.client_recv();
    assert_eq!(parse_udp(&d).unwrap().1, b"new");
    let dropped = s.t.svc.counters().socks_udp_dropped;
    s.t.net
        .stack(2)
        .udp_send_to(socks[0], b"old", relay)
        .unwrap();
    s.t.run(|_, svc| svc.counters().socks_udp_dropped == dropped + 1);
    assert_eq!(s.t.svc.counters().socks_udp_to_client, 1);
}

fn datagram_to_name(name: &str, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0, 0, 0, 3, name.len() as u8];
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&port.to_be_bytes());
    d.extend_from_slice(payload);
    d
}

#[test]
fn datagrams_to_a_name_wait_for_one_lookup_and_its_answer_is_kept() {
    let mut s = setup(127, None);
    let held = Held::default();
    s.t.svc.set_resolver(Box::new(held.clone()));
    let (client, relay) = (s.client, s.relay);
    // MAX_WAITING datagrams wait for the name; one more, and one for
    // another name meanwhile, are dropped.
    for i in 0..=MAX_WAITING {
        let d = datagram_to_name("Echo.Test", 7, format!("n{i}").as_bytes());
        s.t.net.stack(0).udp_send_to(client, &d, relay).unwrap();
    }
    let d = datagram_to_name("other.test", 7, b"other");
    s.t.net.stack(0).udp_send_to(client, &d, relay).unwrap();
    s.t.run(|_, svc| svc.counters().socks_udp_dropped == 2);
    assert_eq!(held.asked(), ["echo.test"]);
    assert_eq!(s.t.svc.counters().socks_udp_to_remote, 0);
    // The answer sends the waiting ones, in order, to the origin.
    held.answer("echo.test", Some(ORIGIN));
    for i in 0..MAX_WAITING {
        let (d, _) = s.client_recv();
        let (h, payload) = parse_udp(&d).unwrap();
        assert_eq!(h.addr, UdpAddr::Ip(sa("10.0.0.3:7")));
        assert_eq!(payload, format!("n{i}").as_bytes());
    }
    // The name is known now: no second lookup.
    let d = datagram_to_name("ECHO.test", 7, b"again");
    s.t.net.stack(0).udp_send_to(client, &d, relay).unwrap();
    let (d, _) = s.client_recv();
    assert_eq!(parse_udp(&d).unwrap().1, b"again");
    assert_eq!(held.asked(), ["echo.test"]);
    let c = s.t.svc.counters();
    assert_eq!(c.socks_udp_to_remote, MAX_WAITING as u64 + 1);

    // A name that resolves to a denied address, and one that does not
    // resolve: their datagrams are dropped and counted.
    let d = datagram_to_name("lo.test", 7, b"lo");
    s.t.net.stack(0).udp_send_to(client, &d, relay).unwrap();
    s.t.run(|_, _| held.asked().len() == 2);
    held.answer("lo.test", Some("127.0.0.1"));
    s.t.run(|_, svc| svc.counters().socks_denied_destination == 1);
    let d = datagram_to_name("nowhere.test", 7, b"x");
    s.t.net.stack(0).udp_send_to(client, &d, relay).unwrap();
    s.t.run(|_, _| held.asked().len() == 3);
    held.answer("nowhere.test", None);
    s.t.run(|_, svc| svc.counters().socks_udp_dropped == 4);
    assert_eq!(
        s.t.svc.counters().socks_udp_to_remote,
        MAX_WAITING as u64 + 1
    );
}

#[test]
fn the_names_kept_are_the_last_ones() {
    let mut s = setup(128, None);
    let held = Held::default();
    s.t.svc.set_resolver(Box::new(held.clone()));
    let (client, relay) = (s.client, s.relay);
    let send = |s: &mut Setup, name: &str| {
        let d = datagram_to_name(name, 7, name.as_bytes());
        s.t.net.stack(0).udp_send_to(client, &d, relay).unwrap();
    };
    // MAX_NAMES + 1 names, each looked up once and answered.
    for i in 0..=MAX_NAMES {
        let name = format!("n{i}.test");
        send(&mut s, &name);
        s.t.run(|_, _| held.asked().len() == i + 1);
        held.answer(&name, Some(ORIGIN));
        let (d, _) = s.client_recv();
        assert_eq!(parse_udp(&d).unwrap().1, name.as_bytes());
    }
    // The newest is still known; the first, pushed out, is asked again.
    send(&mut s, &format!("n{MAX_NAMES}.test"));
    s.client_recv();
    assert_eq!(held.asked().len(), MAX_NAMES + 1);
    send(&mut s, "n0.test");
    s.t.run(|_, _| held.asked().len() == MAX_NAMES + 2);
    assert_eq!(s.t.svc.lookup_counters().started, MAX_NAMES as u64 + 2);
}
