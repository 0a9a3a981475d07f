//! The core's promises, end to end over the virtual link: scale, 4-tuple
//! demultiplexing, refusals, loss recovery and listener backlogs.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use ephemera::device::virtual_link::{LinkConfig, Network};
use ephemera::wire::TcpFlags;
use ephemera::{
    ConnError, ConnectError, Duration, Event, ListenerHandle, Protocol, RecvError, StackConfig,
    TcpHandle, TcpState,
};

use crate::util::*;

fn small_buffers(addr: &str, seed: u64) -> StackConfig {
    StackConfig {
        tcp_rx_buffer: 1024,
        tcp_tx_buffer: 1024,
        backlog: 100_000,
        syn_backlog: 100_000,
        ..config(addr, seed)
    }
}

/// Listen on port 80 of the server, connect from the client, and return
/// the listener and the client's and the server's end once accepted.
fn one_connection(net: &mut Network) -> (ListenerHandle, TcpHandle, TcpHandle) {
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let (c, s) = establish(net, l);
    (l, c, s)
}

/// Open `n` connections from stack 0 to `servers` (round robin), send each
/// a message naming its own local port, and check every server-side
/// connection receives exactly the message of the peer it names, then
/// echoes it back to the right client.
fn many_connections(n: usize, server_ports: &[u16]) {
    let mut net = pair(
        LinkConfig {
            seed: 7,
            ..Default::default()
        },
        small_buffers(CLIENT, 7),
        small_buffers(SERVER, 8),
    );
    let listeners: Vec<ListenerHandle> = server_ports
        .iter()
        .map(|p| {
            net.server()
                .listen(SocketAddr::new(ip(SERVER), *p), None)
                .unwrap()
        })
        .collect();

    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let port = server_ports[i % server_ports.len()];
        let h = net
            .client()
            .connect(SocketAddr::new(ip(SERVER), port))
            .unwrap_or_else(|e| panic!("connect #{i}: {e}"));
        clients.push(h);
    }
    // Every 4-tuple is distinct, and all share one local address.
    let mut tuples = std::collections::HashSet::new();
    for &h in &clients {
        let (l, r) = (
            net.client().local_addr(h).unwrap(),
            net.client().peer_addr(h).unwrap(),
        );
        assert_eq!(l.ip(), ip(CLIENT));
        assert!(tuples.insert((l, r)), "4-tuple {l} -> {r} handed out twice");
    }

    let mut servers = Vec::with_capacity(n);
    net.run_until(200_000, |net| {
        for &l in &listeners {
            servers.extend(accept_all(net, l));
        }
        servers.len() == n
    })
    .expect("all connections accepted");
    net.run_until(100_000, |net| {
        clients
            .iter()
            .all(|&c| net.node_ref(Client).tcp_state(c) == Some(TcpState::Established))
    })
    .expect("all clients established");

    for &c in &clients {
        let msg = format!("from {}", net.client().local_addr(c).unwrap());
        assert_eq!(net.client().send(c, msg.as_bytes()), Ok(msg.len()));
    }
    // Server side: read, check the message names the peer, echo it.
    let mut pending: HashMap<TcpHandle, Vec<u8>> =
        servers.iter().map(|&s| (s, Vec::new())).collect();
    let mut echoed = 0;
    let mut buf = [0u8; 256];
    net.run_until(200_000, |net| {
        while let Some(ev) = net.server().poll_event() {
            let Event::Tcp(s) = ev else { continue };
            let Some(acc) = pending.get_mut(&s) else {
                continue;
            };
            while let Ok(k) = net.server().recv(s, &mut buf) {
                if k == 0 {
                    break;
                }
                acc.extend_from_slice(&buf[..k]);
            }
            let want = format!("from {}", net.server().peer_addr(s).unwrap());
            if acc.len() == want.len() {
                assert_eq!(
                    String::from_utf8_lossy(acc),
                    want,
                    "message reached the wrong connection"
                );
                net.server().send(s, acc).unwrap();
                pending.remove(&s);
                echoed += 1;
            }
        }
        echoed == n
    })
    .expect("every server connection got its message");

    let mut done = 0;
    let mut got: HashMap<TcpHandle, Vec<u8>> = HashMap::new();
    net.run_until(200_000, |net| {
        while let Some(ev) = net.client().poll_event() {
            let Event::Tcp(c) = ev else { continue };
            let acc = got.entry(c).or_default();
            while let Ok(k) = net.client().recv(c, &mut buf) {
                if k == 0 {
                    break;
                }
                acc.extend_from_slice(&buf[..k]);
            }
            let want = format!("from {}", net.client().local_addr(c).unwrap());
            if acc.len() == want.len() {
                assert_eq!(
                    String::from_utf8_lossy(acc),
                    want,
                    "echo reached the wrong client"
                );
                done += 1;
            }
        }
        done == n
    })
    .expect("every client got its echo");
    assert_eq!(net.client().port_table().live_flows(), n);
    assert_eq!(net.server().port_table().live_flows(), n);
    net.client().check_invariants().unwrap();
    net.server().check_invariants().unwrap();
}

#[test]
fn ten_thousand_concurrent_connections_each_get_their_own_bytes() {
    many_connections(10_000, &[80]);
}

#[test]
fn more_than_65536_outbound_connections_from_one_address() {
    // 16,384 ephemeral ports per destination, five server ports: 70,000
    // concurrent connections from 10.0.0.1 alone.
    many_connections(70_000, &[80, 81, 82, 83, 84]);
}

#[test]
fn connect_to_a_closed_port_is_refused_by_rst() {
    let mut net = default_pair(3);
    let c = net.client().connect(sa("10.0.0.2:4444")).unwrap();
    net.run_until(100, |n| n.client().tcp_error(c).is_some())
        .unwrap();
    assert_eq!(net.client().tcp_error(c), Some(ConnError::Refused));
    let mut buf = [0u8; 8];
    assert_eq!(
        net.client().recv(c, &mut buf),
        Err(RecvError::ConnectionRefused)
    );
    assert_eq!(net.server().counters().tcp_refused, 1);
    assert_eq!(net.server().counters().tcp_rst_sent, 1);
    assert_eq!(net.client().counters().tcp_connect_refused, 1);
    // Refused well before any retransmission (RTO is 1 s).
    assert!(net.now().total_millis() < 100);
    // The port is free again at once.
    assert_eq!(net.client().port_table().live_flows(), 0);
    net.client().close(c);
    assert_eq!(net.client().socket_count(), 0);
}

#[test]
fn udp_to_a_closed_port_gets_port_unreachable() {
    let mut net = default_pair(4);
    let u = net.client().udp_bind(sa("0.0.0.0:0")).unwrap();
    let local = net.client().udp_local_addr(u).unwrap();
    assert!((49152..=65535).contains(&local.port()));
    net.client()
        .udp_send_to(u, b"anyone?", sa("10.0.0.2:9999"))
        .unwrap();
    net.run_until(100, |n| n.client().counters().icmp_errors == 1)
        .unwrap();
    assert_eq!(net.server().counters().udp_no_port, 1);
    let mut buf = [0u8; 64];
    assert_eq!(
        net.client().udp_recv_from(u, &mut buf),
        Err(RecvError::ConnectionRefused)
    );
    // Reported once; then the socket works as before.
    assert_eq!(
        net.client().udp_recv_from(u, &mut buf),
        Err(RecvError::WouldBlock)
    );

    // And an open port answers.
    let s = net.server().udp_bind(sa("10.0.0.2:9999")).unwrap();
    net.client()
        .udp_send_to(u, b"hello", sa("10.0.0.2:9999"))
        .unwrap();
    net.run_until(100, |n| n.server().udp_recv_from(s, &mut buf).is_ok())
        .unwrap();
}

#[test]
fn udp_round_trip_names_both_ends() {
    let mut net = default_pair(5);
    let s = net.server().udp_bind(sa("0.0.0.0:53")).unwrap();
    let c = net.client().udp_bind(sa("10.0.0.1:0")).unwrap();
    let cl = net.client().udp_local_addr(c).unwrap();
    net.client()
        .udp_send_to(c, b"query", sa("10.0.0.2:53"))
        .unwrap();
    let mut buf = [0u8; 64];
    let mut got = None;
    net.run_until(100, |n| {
        got = n.server().udp_recv_from(s, &mut buf).ok();
        got.is_some()
    })
    .unwrap();
    let (k, from) = got.unwrap();
    assert_eq!(&buf[..k], b"query");
    assert_eq!(from, cl);
    net.server().udp_send_to(s, b"answer", from).unwrap();
    net.run_until(100, |n| {
        got = n.client().udp_recv_from(c, &mut buf).ok();
        got.is_some()
    })
    .unwrap();
    assert_eq!(got.unwrap(), (6, sa("10.0.0.2:53")));
    assert_eq!(&buf[..6], b"answer");
    // Binding the same port twice is EADDRINUSE.
    assert_eq!(
        net.server()
            .udp_bind(sa("10.0.0.2:53"))
            .err()
            .map(|e| e.errno()),
        Some(98)
    );
}

/// Send `total` bytes one way and check they arrive byte-exact.
fn bulk(link: LinkConfig, total: usize) -> Network {
    let seed = link.seed;
    let mut net = pair(link, config(CLIENT, seed), config(SERVER, seed + 1));
    let _guard = SeedGuard("bulk", seed);
    let l = net.server().listen(sa("0.0.0.0:9"), None).unwrap();
    let (c, s) = establish(&mut net, l);

    let data: Vec<u8> = (0..total).map(|i| (i * 7 + i / 256) as u8).collect();
    let (mut sent, mut got) = (0usize, Vec::with_capacity(total));
    let mut buf = vec![0u8; 16 * 1024];
    let mut closed = false;
    net.run_until(2_000_000, |n| {
        if sent < total {
            if let Ok(k) = n.client().send(c, &data[sent..]) {
                sent += k;
            }
        } else if !closed {
            n.client().close(c);
            closed = true;
        }
        loop {
            match n.server().recv(s, &mut buf) {
                Ok(0) => return true,
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(_) => return false,
            }
        }
    })
    .unwrap_or_else(|e| panic!("seed {seed}: {e}; got {} of {total}", got.len()));
    assert_eq!(got.len(), total, "seed {seed}");
    assert!(got == data, "seed {seed}: bytes differ");
    net
}

#[test]
fn bulk_transfer_is_byte_exact_on_a_clean_link() {
    bulk(LinkConfig::default(), 4 << 20);
}

#[test]
fn bulk_transfer_survives_five_percent_loss_and_reordering() {
    for seed in 11..17 {
        let net = bulk(
            LinkConfig {
                delay: Duration::from_millis(5),
                loss: 0.05,
                reorder: 0.05,
                seed,
                ..Default::default()
            },
            1 << 20,
        );
        assert!(
            net.stats().lost > 10,
            "seed {seed}: the link lost too little to test anything"
        );
        assert!(net.stats().reordered > 10, "seed {seed}");
    }
}

#[test]
fn backlog_overflow_is_counted_and_the_listener_keeps_serving() {
    let mut net = default_pair(21);
    let l = net.server().listen(sa("0.0.0.0:80"), Some(4)).unwrap();
    // Ten clients, nobody accepting: four fit the accept queue.
    let clients: Vec<TcpHandle> = (0..10)
        .map(|_| net.client().connect(sa("10.0.0.2:80")).unwrap())
        .collect();
    net.run_for(Duration::from_millis(200), 100_000).unwrap();
    let c = net.server().counters().clone();
    assert!(c.drop_accept_queue_full >= 6, "{c:?}");
    assert_eq!(c.tcp_passive_opens, 4);
    let snap = net.server().snapshot();
    let row = snap.iter().find(|r| r.state == "LISTEN").unwrap();
    assert_eq!((row.recv_queue, row.send_queue), (4, 4));
    net.server().check_invariants().unwrap();

    // Accept as they come: the SYN retransmissions of the others get in.
    let accepted = accept_until(&mut net, l, 10, 1_000_000);
    let mut peers: Vec<_> = accepted
        .iter()
        .map(|&s| net.server().peer_addr(s).unwrap())
        .collect();
    let mut locals: Vec<_> = clients
        .iter()
        .map(|&c| net.client().local_addr(c).unwrap())
        .collect();
    peers.sort();
    locals.sort();
    assert_eq!(peers, locals);
}

#[test]
fn listen_conflicts_follow_linux() {
    let mut net = default_pair(31);
    let s = net.server();
    let _l = s.listen(sa("10.0.0.2:80"), None).unwrap();
    assert_eq!(
        s.listen(sa("0.0.0.0:80"), None).err().map(|e| e.errno()),
        Some(98)
    );
    assert_eq!(
        s.listen(sa("10.0.0.2:80"), None).err().map(|e| e.errno()),
        Some(98)
    );
    // Not our address: EADDRNOTAVAIL.
    assert_eq!(
        s.listen(sa("10.0.0.77:80"), None).err().map(|e| e.errno()),
        Some(99)
    );
    // Port 0 picks an ephemeral port.
    let l = s.listen(sa("0.0.0.0:0"), None).unwrap();
    assert!(s.listener_addr(l).unwrap().port() >= 49152);
    // UDP on the same port is a different space.
    assert!(s.udp_bind(sa("0.0.0.0:80")).is_ok());
    assert_eq!(s.port_table().binds(), 3);
    assert!(matches!(
        s.connect(sa("[fd00::1]:80")),
        Err(ConnectError::NetworkUnreachable)
    ));
    assert!(matches!(
        s.connect(sa("0.0.0.0:80")),
        Err(ConnectError::InvalidAddress)
    ));
}

#[test]
fn exhausting_one_destination_leaves_others_working_and_time_wait_releases() {
    let mut cfg = config(CLIENT, 41);
    cfg.ports.ephemeral = 50000..=50003;
    cfg.ports.time_wait = std::time::Duration::from_secs(30);
    let mut net = pair(LinkConfig::default(), cfg, config(SERVER, 42));
    let l80 = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let _l81 = net.server().listen(sa("0.0.0.0:81"), None).unwrap();
    let cs: Vec<_> = (0..4)
        .map(|_| net.client().connect(sa("10.0.0.2:80")).unwrap())
        .collect();
    assert_eq!(
        net.client().connect(sa("10.0.0.2:80")).err(),
        Some(ConnectError::AddrNotAvailable)
    );
    assert!(net.client().connect(sa("10.0.0.2:81")).is_ok());

    // Close all four from the client side: TIME-WAIT holds the ports.
    let mut servers = Vec::new();
    net.run_until(10_000, |n| {
        servers.extend(accept_all(n, l80));
        servers.len() == 4
    })
    .unwrap();
    for c in cs {
        net.client().close(c);
    }
    net.run_until(10_000, |n| {
        let mut buf = [0u8; 4];
        for &s in &servers {
            if n.server().recv(s, &mut buf) == Ok(0) {
                n.server().close(s);
            }
        }
        n.node_ref(Client).port_table().time_wait_flows() == 4
    })
    .unwrap();
    assert_eq!(
        net.client().connect(sa("10.0.0.2:80")).err(),
        Some(ConnectError::AddrNotAvailable)
    );
    let tw_rows = net
        .client()
        .snapshot()
        .into_iter()
        .filter(|r| r.state == "TIME-WAIT" && r.proto == Protocol::Tcp)
        .count();
    assert_eq!(tw_rows, 4);
    // After 2·MSL the range is usable again.
    net.run_for(Duration::from_secs(31), 100_000).unwrap();
    assert_eq!(net.client().port_table().time_wait_flows(), 0);
    assert!(net.client().connect(sa("10.0.0.2:80")).is_ok());
}

#[test]
fn a_retransmitted_syn_reaches_the_half_open_connection_it_created() {
    // Every packet is delivered twice: each SYN arrives again while its
    // half-open connection exists.
    let mut net = pair(
        LinkConfig {
            duplicate: 1.0,
            seed: 51,
            ..Default::default()
        },
        config(CLIENT, 51),
        config(SERVER, 52),
    );
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let c = net.client().connect(sa("10.0.0.2:80")).unwrap();
    let mut accepted = Vec::new();
    net.run_for(Duration::from_millis(100), 10_000).unwrap();
    accepted.extend(accept_all(&mut net, l));
    assert_eq!(accepted.len(), 1, "one SYN, twice, makes one connection");
    assert_eq!(net.server().counters().tcp_passive_opens, 1);
    // Listener + the one connection.
    assert_eq!(net.server().socket_count(), 2);
    assert_eq!(net.client().tcp_state(c), Some(TcpState::Established));
    assert!(net.stats().duplicated > 0);
    net.server().check_invariants().unwrap();
}

#[test]
fn active_close_acks_the_peers_fin_at_once() {
    // The side that closes first must ACK the peer's FIN as it enters
    // TIME-WAIT (RFC 9293 §3.6), so the peer leaves LAST-ACK in one round
    // trip instead of after a FIN retransmission (RTO is 1 s).
    let mut net = default_pair(51);
    let (_, c, s) = one_connection(&mut net);
    let start = net.now();
    net.client().close(c);
    net.run_until(1000, |n| {
        let mut buf = [0u8; 4];
        if n.server().recv(s, &mut buf) == Ok(0) {
            n.server().close(s);
        }
        n.node_ref(Server).counters().tcp_closed == 1
    })
    .unwrap();
    assert!(
        (net.now() - start).total_millis() < 100,
        "peer left LAST-ACK only after {} ms",
        (net.now() - start).total_millis()
    );
    assert_eq!(net.client().port_table().time_wait_flows(), 1);
}

#[test]
fn closing_a_listener_resets_connections_still_in_its_accept_queue() {
    let mut net = default_pair(61);
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let c = net.client().connect(sa("10.0.0.2:80")).unwrap();
    net.run_until(1000, |n| {
        n.client().tcp_state(c) == Some(TcpState::Established)
    })
    .unwrap();
    net.run_for(Duration::from_millis(10), 1000).unwrap();
    // Never accepted: closing the listener must not leave it orphaned.
    net.server().close_listener(l);
    net.run_until(1000, |n| n.client().tcp_error(c).is_some())
        .unwrap();
    assert_eq!(net.client().tcp_error(c), Some(ConnError::Reset));
    assert_eq!(net.server().socket_count(), 0);
    assert_eq!(net.server().port_table().live_flows(), 0);
    net.server().check_invariants().unwrap();
}

#[test]
fn abort_released_resets_connections_still_draining() {
    // A server closes while the client is not reading: its FIN waits
    // behind unsent data. At a shutdown deadline, abort_released resets it.
    let mut net = pair(
        LinkConfig::default(),
        small_buffers(CLIENT, 71),
        small_buffers(SERVER, 72),
    );
    let (l, c, s) = one_connection(&mut net);
    assert_eq!(net.server().send(s, &[7u8; 1024]), Ok(1024));
    net.run_for(Duration::from_millis(50), 10_000).unwrap();
    assert_eq!(net.server().send(s, &[7u8; 1024]), Ok(1024));
    net.server().close(s);
    net.server().close_listener(l);
    net.run_for(Duration::from_millis(50), 10_000).unwrap();
    assert_eq!(net.server().socket_count(), 1, "still draining");
    assert_eq!(net.server().abort_released(), 1);
    assert_eq!(net.server().socket_count(), 0);
    assert_eq!(net.server().port_table().live_flows(), 0);
    net.run_until(1000, |n| n.client().tcp_error(c).is_some())
        .unwrap();
    assert_eq!(net.client().tcp_error(c), Some(ConnError::Reset));
    assert_eq!(net.server().abort_released(), 0);
}

#[test]
fn closing_a_handle_already_in_time_wait_still_acks_the_peers_fin() {
    // The application half-closes, the peer's FIN arrives, and the
    // application closes the handle at once (as a relay does on EOF),
    // before the delayed ACK of that FIN went out.
    let mut net = default_pair(81);
    let (_, c, s) = one_connection(&mut net);
    let start = net.now();
    net.client().shutdown(c).unwrap();
    net.run_until(1000, |n| {
        let mut buf = [0u8; 4];
        if n.server().recv(s, &mut buf) == Ok(0) {
            n.server().close(s);
        }
        n.client().tcp_state(c) == Some(TcpState::TimeWait)
    })
    .unwrap();
    net.client().close(c);
    net.run_until(1000, |n| n.node_ref(Server).counters().tcp_closed == 1)
        .unwrap();
    assert!(
        (net.now() - start).total_millis() < 100,
        "peer left LAST-ACK only after {} ms",
        (net.now() - start).total_millis()
    );
    assert_eq!(net.client().port_table().time_wait_flows(), 1);
}

#[test]
fn a_burst_of_real_clients_beyond_the_backlog_all_get_in() {
    // 200 SYNs in one instant at a listener with the default backlog and
    // half-open limit of 128: the surplus is dropped and retransmitted, not
    // reset, so every client connects.
    let mut net = default_pair(61);
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let clients: Vec<TcpHandle> = (0..200)
        .map(|_| net.client().connect(sa("10.0.0.2:80")).unwrap())
        .collect();
    accept_until(&mut net, l, 200, 1_000_000);
    net.run_for(Duration::from_millis(50), 100_000).unwrap();
    for &c in &clients {
        assert_eq!(net.client().tcp_state(c), Some(TcpState::Established));
        assert_eq!(net.client().tcp_error(c), None);
    }
    let ctr = net.server().counters();
    assert_eq!(ctr.drop_half_open_evicted, 0, "{ctr:?}");
    assert!(
        ctr.drop_accept_queue_full + ctr.drop_syn_queue_full > 0,
        "{ctr:?}"
    );
    assert_eq!(net.client().counters().tcp_reset_by_peer, 0);
}

#[test]
fn idle_connections_give_their_buffer_pages_back_and_keep_working() {
    let mut net = default_pair(71);
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let clients: Vec<TcpHandle> = (0..100)
        .map(|_| net.client().connect(sa("10.0.0.2:80")).unwrap())
        .collect();
    let servers = accept_until(&mut net, l, 100, 100_000);
    net.run_until(10_000, |n| {
        clients.iter().all(|&c| n.node_ref(Client).can_send(c))
    })
    .unwrap();
    // 20 kB each way on every connection: buffer pages get touched.
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let mut buf = vec![0u8; 32 * 1024];
    let mut exchange = |net: &mut Network, round: u8| {
        let mut sent = vec![0usize; 100];
        let mut got = vec![Vec::new(); 100];
        net.run_until(1_000_000, |n| {
            for i in 0..100 {
                if sent[i] < data.len() {
                    if let Ok(k) = n.client().send(clients[i], &data[sent[i]..]) {
                        sent[i] += k;
                    }
                }
                while let Ok(k) = n.server().recv(servers[i], &mut buf) {
                    if k == 0 {
                        break;
                    }
                    got[i].extend_from_slice(&buf[..k]);
                }
            }
            got.iter().all(|g| g.len() == data.len())
        })
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(
            got.iter().all(|g| *g == data),
            "round {round}: bytes differ"
        );
    };
    exchange(&mut net, 1);
    let busy = net.client().buffer_resident_bytes() + net.server().buffer_resident_bytes();
    assert!(busy >= 100 * 20_000, "buffers were used: {busy}");
    // Idle for longer than `shrink_idle_after` (1 s): every page goes back.
    net.run_for(Duration::from_secs(2), 100_000).unwrap();
    assert_eq!(net.client().buffer_resident_bytes(), 0);
    assert_eq!(net.server().buffer_resident_bytes(), 0);
    // And the connections carry data as before.
    exchange(&mut net, 2);
    net.client().check_invariants().unwrap();
    net.server().check_invariants().unwrap();
}

#[test]
fn a_new_syn_reopens_the_servers_time_wait_only_with_a_higher_isn() {
    // The server closes first, so the TIME-WAIT record is on its side; a
    // kernel client under load reuses its port with a new, higher ISN
    // (RFC 6528 clock-driven ISNs) and must not wait out 2·MSL (RFC 6191).
    let mut net = default_pair(81);
    let from = sa("10.0.0.1:45000");
    let server = sa("10.0.0.2:80");
    // The client's next sequence number, as seen on the wire.
    let client_next = Rc::new(Cell::new(0u32));
    let seen = client_next.clone();
    tap_segments(&mut net, move |_, seg| {
        if seg.src == from {
            seen.set(seg.end());
        }
    });
    let l = net.server().listen(server, None).unwrap();
    let c = net.client().connect_from(from, server).unwrap();
    let s = accept_until(&mut net, l, 1, 10_000)[0];
    net.server().close(s);
    let mut buf = [0u8; 8];
    net.run_until(10_000, |n| n.client().recv(c, &mut buf) == Ok(0))
        .unwrap();
    net.client().close(c);
    net.run_until(10_000, |n| {
        n.node_ref(Server).port_table().time_wait_flows() == 1
            && n.node_ref(Client).socket_count() == 0
    })
    .unwrap();
    let rcv_nxt = client_next.get();

    let syn = |seq: u32| tcp(from, server, seq, 0, TcpFlags::SYN, 65535, b"");
    let before = net.server().counters().clone();
    // An ISN not beyond the old connection is an old duplicate: dropped.
    net.inject_to(Server, &syn(rcv_nxt.wrapping_sub(1_000)));
    assert_eq!(
        net.server().counters().drop_time_wait,
        before.drop_time_wait + 1
    );
    assert_eq!(net.server().port_table().time_wait_flows(), 1);
    // Beyond it: the record ends and a new connection begins.
    net.inject_to(Server, &syn(rcv_nxt.wrapping_add(1_000)));
    let after = net.server().counters().clone();
    assert_eq!(
        after.tcp_time_wait_reopened,
        before.tcp_time_wait_reopened + 1
    );
    assert_eq!(net.server().port_table().time_wait_flows(), 0);
    assert_eq!(net.server().port_table().live_flows(), 1);
    // And it answers with a SYN-ACK for the new ISN.
    let now = net.now();
    let reply = net
        .server()
        .poll_transmit(now)
        .and_then(|p| Seg::parse(&p))
        .unwrap();
    assert!(reply.flags.syn() && reply.flags.ack());
    assert_eq!(reply.ack, rcv_nxt.wrapping_add(1_001));
    net.server().check_invariants().unwrap();
}
