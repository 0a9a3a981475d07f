//! Buffer memory: idle buffers handed back to the kernel never lose
//! data, and the memory budget holds under slow peers.

use std::collections::HashMap;

use ephemera::device::virtual_link::{LinkConfig, Network};
use ephemera::port_table::PortTableConfig;
use ephemera::wire::TcpFlags;
use ephemera::{
    ConnectError, Duration, Event, Instant, RecvError, SendError, Stack, StackConfig, TcpHandle,
    TcpState,
};

use crate::util::*;

/// The peer's stream: octet `i`, never zero (a page handed back reads as
/// zeros).
fn octet(i: usize) -> u8 {
    (i % 251) as u8 + 1
}

/// Everything `h` has to read now.
fn read_all(st: &mut Stack, h: ephemera::TcpHandle) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match st.recv(h, &mut buf) {
            Ok(0) | Err(RecvError::WouldBlock) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// Out-of-order data in the receive ring must keep its pages. A segment
/// that starts in the window and runs past it is stored by smoltcp up to
/// the window's end; the stack used to ignore it when tracking the highest
/// sequence number seen, so the buffer looked drained, the idle timer
/// handed its pages back, and the application later read zeros where the
/// data had been.
#[test]
fn out_of_order_data_past_the_window_survives_the_idle_shrink() {
    let seed = 0x5a9;
    let _guard = SeedGuard("out-of-order past the window", seed);
    let mut now = Instant::from_millis(0);
    let config = StackConfig {
        tcp_rx_buffer: 4096,
        ..config(SERVER, seed)
    };
    let after = config.shrink_idle_after.expect("shrinking on by default");
    let mut st = Stack::new(config, now).unwrap();
    let l = st.listen(sa("0.0.0.0:80"), None).unwrap();
    let ends = (sa("10.0.0.1:40000"), sa("10.0.0.2:80"));
    let isn = 7_000u32;
    let (h, snd) = handshake(&mut st, &mut now, l, ends, isn, 65535);
    let stream: Vec<u8> = (0..5000).map(octet).collect();
    let send = |st: &mut Stack, now: Instant, from: usize, to: usize| {
        let seq = isn.wrapping_add(1 + from as u32);
        let p = tcp(
            ends.0,
            ends.1,
            seq,
            snd,
            TcpFlags::ACK,
            65535,
            &stream[from..to],
        );
        st.handle_packet(now, &p);
    };

    // RCV.NXT + 1000 .. RCV.NXT + 5000: the window is 4096, so octets
    // 1000..4096 are kept, out of order, and the rest dropped.
    send(&mut st, now, 1000, 5000);
    let t = now;
    let out = drain_until(&mut st, &mut now, t + Duration::from_millis(50));
    assert!(out.iter().all(|(_, s)| s.ack == isn + 1), "{out:?}");
    let held = st.buffer_resident_bytes();
    assert!(held > 0, "out-of-order octets are in the ring");

    // Quiet for longer than `shrink_idle_after`: the pages must stay.
    let t = now + after + Duration::from_secs(1);
    drain_until(&mut st, &mut now, t);
    assert_eq!(st.buffer_resident_bytes(), held, "pages handed back");

    // The hole is filled: the application reads the window in order,
    // byte for byte as sent, then the rest once the peer sends it.
    send(&mut st, now, 0, 1000);
    let t = now;
    drain_until(&mut st, &mut now, t + Duration::from_millis(50));
    let mut got = read_all(&mut st, h);
    assert_eq!(got.len(), 4096);
    // The window update goes out, then the peer sends the rest.
    let t = now;
    drain_until(&mut st, &mut now, t + Duration::from_millis(50));
    send(&mut st, now, 4096, 5000);
    let t = now;
    drain_until(&mut st, &mut now, t + Duration::from_millis(50));
    got.extend(read_all(&mut st, h));
    let first_bad = got.iter().zip(&stream).position(|(a, b)| a != b);
    assert_eq!(first_bad, None, "stream differs");
    assert_eq!(got.len(), stream.len());

    // Everything read, nothing out of order: now the pages go back.
    let t = now + after + Duration::from_secs(1);
    drain_until(&mut st, &mut now, t);
    assert_eq!(st.buffer_resident_bytes(), 0);
    st.check_invariants().unwrap();
}

/// What the server's application does: accept everything, and write to
/// every connection until it is blocked; `written` counts per connection.
struct Writer {
    conns: HashMap<TcpHandle, usize>,
}

impl Writer {
    fn new(net: &mut Network) -> Writer {
        let _ = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
        Writer {
            conns: HashMap::new(),
        }
    }

    /// Handle the server's events: accept, then write until blocked.
    fn serve(&mut self, st: &mut Stack) {
        while let Some(ev) = st.poll_event() {
            let mut ready = Vec::new();
            match ev {
                Event::Incoming(l) => {
                    while let Ok(h) = st.accept(l) {
                        self.conns.insert(h, 0);
                        ready.push(h);
                    }
                }
                Event::Tcp(h) => ready.push(h),
                Event::Udp(_) => {}
            }
            for h in ready {
                let Some(written) = self.conns.get_mut(&h) else {
                    continue;
                };
                loop {
                    let chunk: Vec<u8> = (*written..*written + 4096).map(octet).collect();
                    match st.send(h, &chunk) {
                        Ok(n) => *written += n,
                        Err(SendError::WouldBlock) => break,
                        Err(e) => panic!("send: {e}"),
                    }
                }
            }
        }
    }
}

/// The daemon's TCP buffers each way (`TCP_BUFFER` in src/daemon/mod.rs):
/// leased lazily, backed only where written.
const DAEMON_BUFFER: usize = 1 << 20;

/// Item: 20,000 connections whose clients never read, while the server
/// writes to each until it is blocked, stay under the memory budget, and a
/// fresh client is still served. The server has the daemon's 1 MiB
/// buffers: the first connections get them and fill them; past the soft
/// mark (two thirds of the budget) connections stop growing and new ones
/// get a page each way, so the room between the marks holds the rest,
/// with room to spare. Every connection leases its 2 MiB chunk of address
/// space (40 GiB in all, `MAP_NORESERVE`); only the pages written count.
#[test]
fn twenty_thousand_stalled_connections_stay_under_the_budget_and_a_new_client_is_served() {
    const CONNS: usize = 20_000;
    const BATCH: usize = 1_000;
    const BUDGET: usize = 512 << 20;
    let seed = 0xb0d6;
    let _guard = SeedGuard("stalled connections", seed);
    let started = std::time::Instant::now();
    let client = StackConfig {
        // Small buffers on the clients' side: they never read.
        tcp_rx_buffer: 4096,
        tcp_tx_buffer: 4096,
        ports: PortTableConfig {
            ephemeral: 10_000..=65_535,
            ..PortTableConfig::default()
        },
        ..config(CLIENT, seed)
    };
    let server = StackConfig {
        tcp_rx_buffer: DAEMON_BUFFER,
        tcp_tx_buffer: DAEMON_BUFFER,
        max_memory: BUDGET,
        backlog: BATCH,
        syn_backlog: BATCH,
        ..config(SERVER, seed + 1)
    };
    let mut net = pair(LinkConfig::default(), client, server);
    let mut app = Writer::new(&mut net);
    let to = sa("10.0.0.2:80");
    let mut clients = Vec::with_capacity(CONNS);
    for batch in 0..CONNS / BATCH {
        for _ in 0..BATCH {
            clients.push(net.client().connect(to).unwrap());
        }
        net.run_until(100_000, |n| {
            while n.client().poll_event().is_some() {}
            app.serve(n.server());
            app.conns.len() == clients.len()
        })
        .unwrap_or_else(|e| panic!("batch {batch}: {e}"));
        // Let them fill and stall.
        let until = net.now() + Duration::from_millis(100);
        net.run_until(100_000, |n| {
            while n.client().poll_event().is_some() {}
            app.serve(n.server());
            n.now() >= until
        })
        .unwrap();
        let b = net.server().budget();
        assert!(b.committed <= b.limit, "batch {batch}: {b:?}");
    }
    let st = net.server();
    let b = st.budget();
    let resident = st.buffer_resident_bytes();
    let c = st.counters().clone();
    let written: usize = app.conns.values().sum();
    println!(
        "{CONNS} stalled connections: {} MiB written into their buffers, {} MiB resident \
         ({} MiB charged, {} MiB committed) of a {} MiB budget (pressure at {} MiB); \
         {} opened under pressure, {} sends cut short",
        written >> 20,
        resident >> 20,
        b.charged >> 20,
        b.committed >> 20,
        b.limit >> 20,
        b.pressure >> 20,
        c.tcp_opened_under_pressure,
        c.tcp_send_memory_pressure,
    );
    assert_eq!(b.connections, CONNS);
    assert!(resident <= b.charged && b.charged <= b.committed && b.committed <= BUDGET);
    assert!(b.under_pressure(), "{b:?}");
    assert!(c.tcp_opened_under_pressure > 0 && c.tcp_send_memory_pressure > 0);
    assert_eq!(c.drop_syn_memory_limit + c.drop_syn_connection_limit, 0);
    // Without the budget every connection would hold its full send buffer
    // (20 GiB); the first ones did fill theirs.
    assert!(written > CONNS * 16 * 1024, "they did write: {written}");
    assert!(
        app.conns.values().filter(|&&w| w >= DAEMON_BUFFER).count() > 100,
        "full 1 MiB send buffers before the soft mark"
    );
    st.check_invariants().unwrap();

    // A fresh client that reads: it connects, and gets the server's
    // stream, byte for byte.
    let fresh = net.client().connect(to).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    net.run_until(100_000, |n| {
        while n.client().poll_event().is_some() {}
        app.serve(n.server());
        while let Ok(k) = n.client().recv(fresh, &mut buf) {
            got.extend_from_slice(&buf[..k]);
        }
        got.len() >= 256 * 1024
    })
    .expect("the fresh client is served");
    let want: Vec<u8> = (0..got.len()).map(octet).collect();
    assert!(got == want, "the fresh client's stream differs");
    let b = net.server().budget();
    assert!(b.committed <= BUDGET);
    assert!(net.server().buffer_resident_bytes() <= BUDGET);
    net.server().check_invariants().unwrap();
    println!(
        "fresh client served 256 KiB at {}; {:.1} s wall",
        net.now(),
        started.elapsed().as_secs_f64()
    );
}

/// Echo what `s` has received back to the client, and read what the client
/// got; returns the octets the client read.
fn echo_round(net: &mut Network, c: TcpHandle, s: TcpHandle, msg: &[u8]) -> Vec<u8> {
    let mut sent = 0;
    let mut pending = Vec::new();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    net.run_until(1_000_000, |n| {
        if sent < msg.len() {
            if let Ok(k) = n.client().send(c, &msg[sent..]) {
                sent += k;
            }
        }
        while let Ok(k) = n.server().recv(s, &mut buf) {
            pending.extend_from_slice(&buf[..k]);
        }
        if !pending.is_empty() {
            if let Ok(k) = n.server().send(s, &pending) {
                pending.drain(..k);
            }
        }
        while let Ok(k) = n.client().recv(c, &mut buf) {
            got.extend_from_slice(&buf[..k]);
        }
        got.len() >= msg.len()
    })
    .unwrap_or_else(|e| panic!("echo of {} octets: {e}", msg.len()));
    got
}

/// At the hard mark new connections are refused, SYNs dropped and counted
/// and `connect` failing with ENOBUFS, while the connections already open
/// keep carrying data within what they hold; room made, the refused
/// client's retransmitted SYN gets in.
#[test]
fn at_the_hard_mark_new_connections_are_refused_and_open_ones_keep_working() {
    let seed = 0x4a4d;
    let _guard = SeedGuard("hard mark", seed);
    // 16 pages: pressure from 10. Every connection reserves 2.
    let server = StackConfig {
        max_memory: 64 * 1024,
        ..config(SERVER, seed + 1)
    };
    let mut net = pair(LinkConfig::default(), config(CLIENT, seed), server);
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(establish(&mut net, l));
    }
    let b = net.server().budget();
    assert_eq!(
        (b.connections, b.committed, b.limit),
        (8, 16 * 4096, 16 * 4096)
    );
    let c = net.server().counters().clone();
    assert_eq!(
        c.tcp_opened_under_pressure, 3,
        "five with full buffers, then pressure"
    );

    // A ninth client: its SYN is dropped, counted, and retransmitted.
    let late = net.client().connect(sa("10.0.0.2:80")).unwrap();
    net.run_for(Duration::from_millis(500), 10_000).unwrap();
    assert_eq!(net.server().counters().drop_syn_memory_limit, 1);
    assert_eq!(net.client().tcp_state(late), Some(TcpState::SynSent));
    // The server's own connect fails at once with ENOBUFS.
    let e = net.server().connect(sa("10.0.0.1:9")).unwrap_err();
    assert_eq!((e, e.errno()), (ConnectError::NoBuffers, 105));
    assert_eq!(net.server().counters().tcp_connect_memory_limit, 1);

    // An open connection keeps working: 20 kB echoed byte for byte, in
    // runs of the two pages it may hold under pressure (the rest dropped,
    // counted, and retransmitted by the client).
    let msg: Vec<u8> = (0..20_000).map(octet).collect();
    let (c, s) = open[0];
    let got = echo_round(&mut net, c, s, &msg);
    assert!(got == msg, "echo differs");
    let st = net.server();
    assert!(st.counters().drop_data_memory_pressure > 0);
    assert!(st.budget().committed <= st.budget().limit);
    st.check_invariants().unwrap();
    // Under pressure idle buffers go back at once, not after 1 s.
    net.run_for(Duration::from_millis(50), 10_000).unwrap();
    assert_eq!(net.server().buffer_resident_bytes(), 0);
    assert_eq!(net.server().budget().charged, 0);

    // One connection closes: the ninth client's next SYN gets in.
    let (c, s) = open.pop().unwrap();
    net.client().close(c);
    net.server().close(s);
    let mut accepted = None;
    net.run_until(100_000, |n| {
        accepted = accepted.or_else(|| n.server().accept(l).ok());
        accepted.is_some() && n.client().tcp_state(late) == Some(TcpState::Established)
    })
    .expect("the refused client gets in once there is room");
    net.server().check_invariants().unwrap();
}

/// `max_connections` bounds the connections (half-open ones too): beyond
/// it SYNs are dropped and `connect` fails with ENOBUFS, both counted.
#[test]
fn the_connection_limit_refuses_and_counts() {
    let seed = 0xc0c0;
    let server = StackConfig {
        max_connections: 3,
        ..config(SERVER, seed + 1)
    };
    let mut net = pair(LinkConfig::default(), config(CLIENT, seed), server);
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let open: Vec<_> = (0..3).map(|_| establish(&mut net, l)).collect();
    let late = net.client().connect(sa("10.0.0.2:80")).unwrap();
    net.run_for(Duration::from_millis(500), 10_000).unwrap();
    assert_eq!(net.client().tcp_state(late), Some(TcpState::SynSent));
    let e = net.server().connect(sa("10.0.0.1:9")).unwrap_err();
    assert_eq!((e, e.errno()), (ConnectError::ConnectionLimit, 105));
    let c = net.server().counters();
    assert_eq!(
        (c.drop_syn_connection_limit, c.tcp_connect_connection_limit),
        (1, 1)
    );
    assert_eq!(net.server().budget().connections, 3);
    let (c, s) = open[0];
    assert_eq!(echo_round(&mut net, c, s, b"still here"), b"still here");
    net.server().check_invariants().unwrap();
}

/// The soft mark with the daemon's 1 MiB buffers: connections that fill
/// them reach it, the next one opens with a page each way, and a buffer
/// drained under pressure goes back to the kernel at once (not after
/// `shrink_idle_after`), all of its 1 MiB, which takes the stack back
/// below the mark.
#[test]
fn under_the_soft_mark_drained_megabyte_buffers_go_back_at_once() {
    let seed = 0x50f7;
    let _guard = SeedGuard("soft mark, 1 MiB buffers", seed);
    // 1280 pages: pressure from 853, three full send buffers and part of
    // a fourth.
    let server = StackConfig {
        tcp_rx_buffer: DAEMON_BUFFER,
        tcp_tx_buffer: DAEMON_BUFFER,
        max_memory: 5 << 20,
        shrink_idle_after: Some(Duration::from_secs(30)),
        ..config(SERVER, seed + 1)
    };
    let mut net = pair(LinkConfig::default(), config(CLIENT, seed), server);
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let mut open = Vec::new();
    let mut written = Vec::new();
    for _ in 0..5 {
        let (c, s) = establish(&mut net, l);
        // The server writes until blocked; the client does not read.
        let mut w = 0;
        loop {
            let chunk: Vec<u8> = (w..w + 4096).map(octet).collect();
            match net.server().send(s, &chunk) {
                Ok(k) => w += k,
                Err(SendError::WouldBlock) => break,
                Err(e) => panic!("send: {e}"),
            }
        }
        net.run_for(Duration::from_millis(50), 10_000).unwrap();
        open.push((c, s));
        written.push(w);
    }
    let b = net.server().budget();
    assert!(b.under_pressure(), "{b:?}");
    assert!(b.committed <= b.limit, "{b:?}");
    assert!(
        written[0] >= DAEMON_BUFFER,
        "the first fills 1 MiB: {written:?}"
    );
    assert!(
        written[3] < DAEMON_BUFFER && written[4] <= 4096,
        "the fourth cut short at the mark, the fifth held to its page: {written:?}"
    );
    let c = net.server().counters().clone();
    assert!(c.tcp_send_memory_pressure > 0);
    assert_eq!(c.tcp_opened_under_pressure, 1, "the fifth: {written:?}");
    let resident = net.server().buffer_resident_bytes();
    assert!(
        resident <= b.charged && resident >= 3 * DAEMON_BUFFER,
        "{resident} {b:?}"
    );
    net.server().check_invariants().unwrap();

    // The client reads the first connection to the end of what was
    // written: its send buffer drains, and goes back at once.
    let (c0, _) = open[0];
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    net.run_until(1_000_000, |n| {
        while let Ok(k) = n.client().recv(c0, &mut buf) {
            got.extend_from_slice(&buf[..k]);
        }
        got.len() >= written[0]
    })
    .unwrap();
    let want: Vec<u8> = (0..written[0]).map(octet).collect();
    assert!(got == want, "the first connection's stream differs");
    net.run_for(Duration::from_millis(50), 10_000).unwrap();
    let after = net.server().budget();
    let resident_after = net.server().buffer_resident_bytes();
    assert!(
        resident - resident_after >= DAEMON_BUFFER,
        "1 MiB back to the kernel: {resident} -> {resident_after}"
    );
    assert!(
        after.charged + DAEMON_BUFFER <= b.charged,
        "{b:?} -> {after:?}"
    );
    assert!(!after.under_pressure(), "below the mark again: {after:?}");
    assert!(resident_after <= after.charged);
    net.server().check_invariants().unwrap();
}

/// One short request/response connection: the client sends `req`, the
/// server answers `resp` and both close; returns what each side read.
fn short_exchange(
    net: &mut Network,
    l: ephemera::ListenerHandle,
    req: &[u8],
    resp: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let (c, s) = establish(net, l);
    assert_eq!(net.client().send(c, req), Ok(req.len()));
    let mut got_req = Vec::new();
    let mut buf = vec![0u8; 65536];
    net.run_until(100_000, |n| {
        while let Ok(k) = n.server().recv(s, &mut buf) {
            got_req.extend_from_slice(&buf[..k]);
        }
        got_req.len() >= req.len()
    })
    .unwrap();
    assert_eq!(net.server().send(s, resp), Ok(resp.len()));
    net.server().close(s);
    let mut got_resp = Vec::new();
    net.run_until(100_000, |n| loop {
        match n.client().recv(c, &mut buf) {
            Ok(0) => return true,
            Ok(k) => got_resp.extend_from_slice(&buf[..k]),
            Err(RecvError::WouldBlock) => return false,
            Err(e) => panic!("recv: {e}"),
        }
    })
    .unwrap();
    net.client().close(c);
    net.run_for(Duration::from_millis(20), 10_000).unwrap();
    (got_req, got_resp)
}

/// Short connections with the daemon's 1 MiB buffers reuse the buffers of
/// closed ones while they are still backed (no `madvise` on close), the
/// budget keeps counting those pages as an upper bound of what is
/// resident, and every connection reads exactly its own octets, never a
/// stale one from a connection that used the chunk before (each
/// connection's request and response are shorter than the one before, in
/// a new octet).
#[test]
fn short_connections_reuse_warm_buffers_and_read_only_their_own_data() {
    let seed = 0x3a4e;
    let _guard = SeedGuard("warm buffers", seed);
    let big = |addr, seed| StackConfig {
        tcp_rx_buffer: DAEMON_BUFFER,
        tcp_tx_buffer: DAEMON_BUFFER,
        ..config(addr, seed)
    };
    let mut net = pair(
        LinkConfig::default(),
        big(CLIENT, seed),
        big(SERVER, seed + 1),
    );
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    for i in 0..200usize {
        let fill = (i % 250) as u8 + 1;
        let req = vec![fill; 6000 - i * 20];
        let resp = vec![fill.wrapping_add(1).max(1); 7000 - i * 20];
        let (got_req, got_resp) = short_exchange(&mut net, l, &req, &resp);
        assert!(got_req == req, "connection {i}: the request differs");
        assert!(got_resp == resp, "connection {i}: the response differs");
        for st in [net.node_ref(Server), net.node_ref(Client)] {
            st.check_invariants().unwrap();
            let b = st.budget();
            assert!(st.buffer_resident_bytes() <= b.charged, "{b:?}");
        }
    }
    for st in [net.node_ref(Server), net.node_ref(Client)] {
        let c = st.counters();
        assert!(c.tcp_buffers_warm_reused >= 190, "{c:?}");
        assert_eq!(c.tcp_buffers_warm_drained, 0);
        let b = st.budget();
        // One warm chunk per connection open at once at most, each with
        // the few pages a short exchange touches.
        assert!(b.warm > 0 && b.warm <= 4 * 4096 * 4, "{b:?}");
        assert!(
            st.buffer_resident_bytes() >= b.warm,
            "warm pages stay backed"
        );
    }
}

/// Under memory pressure the warm buffers go back to the kernel, and none
/// is kept until the stack is below the soft mark again.
#[test]
fn memory_pressure_drains_the_warm_buffers() {
    let seed = 0xd4a1;
    let _guard = SeedGuard("warm buffers drained", seed);
    // 320 pages: pressure from 213.
    let server = StackConfig {
        tcp_rx_buffer: DAEMON_BUFFER,
        tcp_tx_buffer: DAEMON_BUFFER,
        max_memory: 320 * 4096,
        ..config(SERVER, seed + 1)
    };
    let mut net = pair(LinkConfig::default(), config(CLIENT, seed), server);
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    // Eight short connections open at once, then closed: eight warm chunks.
    let open: Vec<_> = (0..8).map(|_| establish(&mut net, l)).collect();
    for &(c, s) in &open {
        net.client().send(c, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        net.run_for(Duration::from_millis(5), 10_000).unwrap();
        let _ = read_all(net.server(), s);
        net.server().send(s, &[7u8; 3000]).unwrap();
        net.server().close(s);
    }
    net.run_for(Duration::from_millis(20), 10_000).unwrap();
    for &(c, _) in &open {
        let _ = read_all(net.client(), c);
        net.client().close(c);
    }
    net.run_for(Duration::from_millis(50), 10_000).unwrap();
    let warm = net.server().budget().warm;
    assert!(warm >= 8 * 2 * 4096, "{:?}", net.server().budget());
    net.server().check_invariants().unwrap();

    // One connection fills its send buffer up to the soft mark: the warm
    // chunks go back, and it fills the room they leave.
    let (c, s) = establish(&mut net, l);
    let reused = net.server().counters().tcp_buffers_warm_reused;
    assert_eq!(reused, 1, "the new connection took a warm chunk");
    for _ in 0..2 {
        loop {
            match net.server().send(s, &[9u8; 4096]) {
                Ok(_) => {}
                Err(SendError::WouldBlock) => break,
                Err(e) => panic!("send: {e}"),
            }
        }
        net.run_for(Duration::from_millis(20), 10_000).unwrap();
    }
    let st = net.server();
    let b = st.budget();
    assert!(b.under_pressure(), "{b:?}");
    assert_eq!(b.warm, 0, "drained: {b:?}");
    assert_eq!(st.counters().tcp_buffers_warm_drained, 7);
    assert!(st.buffer_resident_bytes() <= b.charged);
    st.check_invariants().unwrap();
    // Under pressure a closing connection's chunk is not kept warm.
    let (c2, s2) = establish(&mut net, l);
    net.client().send(c2, b"x").unwrap();
    net.run_for(Duration::from_millis(5), 10_000).unwrap();
    assert_eq!(read_all(net.server(), s2), b"x");
    assert!(net.server().budget().under_pressure());
    net.server().close(s2);
    net.client().close(c2);
    net.run_for(Duration::from_millis(50), 10_000).unwrap();
    assert_eq!(net.server().budget().warm, 0);
    assert_eq!(net.server().budget().connections, 1, "its chunk went back");
    net.server().check_invariants().unwrap();
    let _ = c;
}
