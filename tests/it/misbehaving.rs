//! Peers that misbehave, over the virtual link: a window that stays shut, a
//! peer that never ACKs or never answers a SYN, FIN-WAIT-2 with a peer that
//! never closes, half-close, simultaneous open and simultaneous close, a
//! peer whose sequence numbers went back.
//! Each test checks what a user would: the errors the application sees,
//! what went on the wire, and that sockets and ports come back.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use ephemera::device::virtual_link::{LinkConfig, Network};
use ephemera::wire::TcpFlags;
use ephemera::{ConnError, Duration, Instant, RecvError, SendError, StackConfig, TcpState};

use crate::util::*;

/// Every TCP segment put on the link, with its time.
type Wire = Rc<RefCell<Vec<(Instant, Seg)>>>;

fn record(net: &mut Network) -> Wire {
    let wire: Wire = Rc::default();
    let w = wire.clone();
    tap_segments(net, move |t, s| w.borrow_mut().push((t, s)));
    wire
}

fn net_with(seed: u64, client: StackConfig, server: StackConfig) -> Network {
    pair(
        LinkConfig {
            seed,
            ..Default::default()
        },
        client,
        server,
    )
}

/// Milliseconds between `a` and `b`.
fn ms(a: Instant, b: Instant) -> i64 {
    (b - a).total_millis() as i64
}

/// Gaps between consecutive times, in milliseconds.
fn gaps(times: &[Instant]) -> Vec<i64> {
    times.windows(2).map(|w| ms(w[0], w[1])).collect()
}

/// Retransmission backoff: every gap at least the one before (a little
/// slack for the millisecond the stack waits before re-polling a timer),
/// and the gaps grow to many times the first.
fn assert_backoff(what: &str, g: &[i64]) {
    assert!(g.len() >= 4, "{what}: too few ({g:?})");
    for w in g.windows(2) {
        assert!(w[1] + 2 >= w[0], "{what}: gap shrank: {g:?}");
    }
    assert!(
        *g.last().unwrap() >= 8 * g[0],
        "{what}: no exponential backoff: {g:?}"
    );
}

/// Both stacks back to their baseline: only the listener on the server, no
/// live flow, no TIME-WAIT record left once `run_for` passes it.
fn assert_freed(net: &mut Network, server_sockets: usize) {
    for (i, want) in [(Client, 0), (Server, server_sockets)] {
        let st = net.node(i);
        st.check_invariants().unwrap();
        assert_eq!(st.socket_count(), want, "{i:?}: {:?}", st.snapshot());
        assert_eq!(st.port_table().live_flows(), 0, "{i:?}");
    }
}

#[test]
fn zero_window_forever_probes_with_backoff_then_times_out() {
    let seed = 0x2e80;
    let _guard = SeedGuard("zero window", seed);
    let server = StackConfig {
        tcp_rx_buffer: 4096,
        ..config(SERVER, seed + 1)
    };
    let mut net = net_with(seed, config(CLIENT, seed), server);
    let wire = record(&mut net);
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let (c, s) = establish(&mut net, l);
    let client = net.client().local_addr(c).unwrap();

    // The server's application never reads: its 4 KiB window fills and
    // stays shut.
    let data = vec![7u8; 16 * 1024];
    assert_eq!(net.client().send(c, &data), Ok(data.len()));
    net.run_until(1_000_000, |n| n.client().tcp_error(c).is_some())
        .unwrap();
    let end = net.now();
    // Let the abort's RST go out.
    net.run_for(Duration::from_millis(1), 1000).unwrap();

    let wire = wire.borrow();
    let acks: Vec<_> = wire
        .iter()
        .filter(|(_, s)| s.src.port() == 80 && s.flags.ack())
        .collect();
    // The server's window closes once its buffer is full, and stays shut.
    let shut = acks.iter().position(|(_, s)| s.window == 0).unwrap();
    assert!(acks[shut..].iter().all(|(_, s)| s.window == 0));
    let t_shut = acks[shut].0;
    let accepted = acks[shut].1.ack;
    assert_eq!(accepted.wrapping_sub(acks[0].1.ack), 4096, "4 KiB accepted");
    // Zero-window probes: the client keeps poking the shut window, ever
    // more slowly, each answered with window 0 and no ACK of new data.
    let probes: Vec<Instant> = wire
        .iter()
        .filter(|(t, s)| *t > t_shut && s.src == client && s.len > 0 && !s.flags.rst())
        .map(|(t, _)| *t)
        .collect();
    let g = gaps(&probes);
    println!(
        "zero window: window shut at {t_shut}, {} probes, gaps {g:?} ms; timed out at {end}",
        probes.len()
    );
    assert_backoff("zero-window probes", &g);
    assert!(acks[shut..].iter().all(|(_, s)| s.ack == accepted));
    // Gave up one user timeout (120 s) after the last ACK that freed send
    // buffer.
    let last_progress = acks
        .iter()
        .filter(|(_, s)| s.ack == accepted)
        .map(|(t, _)| *t)
        .next()
        .unwrap();
    let waited = ms(last_progress, end);
    assert!((120_000..=120_010).contains(&waited), "{waited} ms");
    // The RST of the abort went out.
    assert!(wire.iter().any(|(_, s)| s.src == client && s.flags.rst()));
    drop(wire);

    // What the application sees.
    let st = net.client();
    assert_eq!(st.tcp_error(c), Some(ConnError::TimedOut));
    assert_eq!(st.send(c, b"x"), Err(SendError::TimedOut));
    assert_eq!(st.recv(c, &mut [0; 16]), Err(RecvError::TimedOut));
    assert_eq!(st.counters().tcp_timed_out, 1);
    // The port is free at once; the socket when the handle is closed.
    assert_eq!(st.port_table().live_flows(), 0);
    st.close(c);
    net.run_for(Duration::from_millis(10), 1000).unwrap();
    // The server was reset by that RST.
    assert_eq!(net.server().tcp_error(s), Some(ConnError::Reset));
    net.server().close(s);
    assert_freed(&mut net, 1);
}

#[test]
fn peer_that_never_acks_gets_retransmissions_then_times_out() {
    let seed = 0xac4;
    let _guard = SeedGuard("never acks", seed);
    let mut net = default_pair(seed);
    let wire = record(&mut net);
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let (c, s) = establish(&mut net, l);
    // Idle for longer than the user timeout first: idleness is not a lack
    // of progress, so the 120 s count from the send below.
    net.run_for(Duration::from_secs(200), 1000).unwrap();

    // From now on nothing the server sends arrives.
    net.set_filter(|from, _, _| from != Server.index());
    let t0 = net.now();
    assert_eq!(net.client().send(c, &[1u8; 1000]), Ok(1000));
    net.run_until(1_000_000, |n| n.client().tcp_error(c).is_some())
        .unwrap();
    let end = net.now();
    // Let the abort's RST go out.
    net.run_for(Duration::from_millis(1), 1000).unwrap();

    let sends: Vec<Instant> = wire
        .borrow()
        .iter()
        .filter(|(t, s)| *t >= t0 && s.src.port() != 80 && s.len > 0)
        .map(|(t, _)| *t)
        .collect();
    let g = gaps(&sends);
    println!(
        "never acks: {} transmissions of the data, gaps {g:?} ms; timed out after {} ms; {:?}",
        sends.len(),
        ms(t0, end),
        net.stats()
    );
    assert_backoff("retransmissions", &g);
    assert!((120_000..=120_010).contains(&ms(t0, end)));

    let st = net.client();
    assert_eq!(st.tcp_error(c), Some(ConnError::TimedOut));
    assert_eq!(st.send(c, b"x"), Err(SendError::TimedOut));
    assert_eq!(st.recv(c, &mut [0; 16]), Err(RecvError::TimedOut));
    assert_eq!(st.port_table().live_flows(), 0);
    st.close(c);
    // The server got the data and the client's RST.
    net.run_for(Duration::from_millis(10), 1000).unwrap();
    assert_eq!(net.server().recv(s, &mut [0; 2000]), Ok(1000));
    assert_eq!(net.server().tcp_error(s), Some(ConnError::Reset));
    net.server().close(s);
    assert_freed(&mut net, 1);
}

#[test]
fn syn_never_answered_connect_times_out() {
    let seed = 0x5e7;
    let _guard = SeedGuard("syn never answered", seed);
    let mut net = default_pair(seed);
    let wire = record(&mut net);
    // The server is a black hole.
    net.set_filter(|_, to, _| to != Server.index());
    let t0 = net.now();
    let c = net.client().connect(sa("10.0.0.2:80")).unwrap();
    assert_eq!(net.client().send(c, b"x"), Err(SendError::WouldBlock));
    net.run_until(1_000_000, |n| n.client().tcp_error(c).is_some())
        .unwrap();
    let end = net.now();
    net.run_for(Duration::from_millis(1), 1000).unwrap();
    let syns: Vec<Instant> = wire
        .borrow()
        .iter()
        .filter(|(_, s)| s.flags.syn())
        .map(|(t, _)| *t)
        .collect();
    let g = gaps(&syns);
    println!(
        "SYN never answered: {} SYNs, gaps {g:?} ms; gave up after {} ms",
        syns.len(),
        ms(t0, end)
    );
    assert_backoff("SYN retransmissions", &g);
    assert!((120_000..=120_010).contains(&ms(t0, end)));
    let st = net.client();
    assert_eq!(st.tcp_error(c), Some(ConnError::TimedOut));
    assert_eq!(st.send(c, b"x"), Err(SendError::TimedOut));
    assert_eq!(st.recv(c, &mut [0; 4]), Err(RecvError::TimedOut));
    assert_eq!(st.port_table().live_flows(), 0);
    st.close(c);
    assert_eq!(net.server().counters().packets_in, 0);
    assert_freed(&mut net, 0);
}

#[test]
fn fin_wait_2_timeout_frees_a_closed_connection_whose_peer_never_closes() {
    let seed = 0xf1d2;
    let _guard = SeedGuard("fin-wait-2", seed);
    let mut net = default_pair(seed);
    let wire = record(&mut net);
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let (c1, s1) = establish(&mut net, l);
    let (c2, s2) = establish(&mut net, l);
    let a1 = net.client().local_addr(c1).unwrap();
    let a2 = net.client().local_addr(c2).unwrap();
    let fw2 = |n: &mut Network| {
        n.client()
            .snapshot()
            .iter()
            .filter(|r| r.state == "FIN-WAIT-2")
            .count()
    };

    // c1 closes; c2 only shuts down writing and keeps its handle. The
    // server's application never closes either.
    net.client().close(c1);
    net.client().shutdown(c2).unwrap();
    net.run_until(10_000, |n| fw2(n) == 2).unwrap();
    let t1 = net.now();
    assert_eq!(net.server().recv(s1, &mut [0; 4]), Ok(0));
    assert_eq!(net.server().tcp_state(s1), Some(TcpState::CloseWait));

    // Just before the timeout, both still wait.
    net.run_for(Duration::from_millis(59_990), 100_000).unwrap();
    assert_eq!(fw2(&mut net), 2);
    assert_eq!(net.client().counters().tcp_fin_wait2_timeouts, 0);
    // The released one goes at 60 s: RST, port released, counted.
    net.run_for(Duration::from_millis(20), 1000).unwrap();
    assert_eq!(fw2(&mut net), 1);
    let st = net.client();
    assert_eq!(st.counters().tcp_fin_wait2_timeouts, 1);
    assert_eq!(st.counters().tcp_timed_out, 0);
    assert_eq!(st.port_table().live_flows(), 1);
    assert_eq!(st.socket_count(), 1);
    let rst = wire
        .borrow()
        .iter()
        .find(|(_, s)| s.src == a1 && s.flags.rst())
        .map(|(t, _)| *t)
        .expect("RST");
    let waited1 = ms(t1, rst);
    assert!((60_000..=60_002).contains(&waited1), "{waited1} ms");
    // The peer learns at once.
    assert_eq!(net.server().tcp_error(s1), Some(ConnError::Reset));
    net.server().close(s1);

    // The one the application still holds is left alone (as on Linux, the
    // timeout applies to orphans only) …
    net.run_for(Duration::from_secs(100), 100_000).unwrap();
    assert_eq!(net.client().tcp_state(c2), Some(TcpState::FinWait2));
    // … until it is closed: then it has 60 s from the close.
    net.client().close(c2);
    let t2 = net.now();
    net.run_until(100_000, |n| fw2(n) == 0).unwrap();
    net.run_for(Duration::from_millis(10), 1000).unwrap();
    let rst = wire
        .borrow()
        .iter()
        .find(|(_, s)| s.src == a2 && s.flags.rst())
        .map(|(t, _)| *t)
        .expect("RST");
    let waited = ms(t2, rst);
    assert!((60_000..=60_002).contains(&waited), "{waited} ms");
    assert_eq!(net.client().counters().tcp_fin_wait2_timeouts, 2);
    println!(
        "FIN-WAIT-2: released connection reset {waited1} ms after entering FIN-WAIT-2; \
         shut-down one kept 160 s, reset {waited} ms after close"
    );
    net.server().close(s2);
    net.run_for(Duration::from_millis(10), 1000).unwrap();
    assert_freed(&mut net, 1);
}

#[test]
fn half_close_client_keeps_receiving_after_its_fin() {
    let seed = 0x4a1f;
    let _guard = SeedGuard("half close", seed);
    // A FIN-WAIT-2 timeout far shorter than the half-close: it must not
    // touch a connection the application still holds.
    let client = StackConfig {
        fin_timeout: Some(Duration::from_secs(1)),
        ..config(CLIENT, seed)
    };
    let mut net = net_with(seed, client, config(SERVER, seed + 1));
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let (c, s) = establish(&mut net, l);
    // Idle past the user timeout first: the shutdown must still work.
    net.run_for(Duration::from_secs(200), 1000).unwrap();

    const REQUEST: usize = 3000;
    const CHUNK: usize = 4096;
    const CHUNKS: usize = 64;
    let byte = |i: usize| (i * 7 + i / 251) as u8;

    // The client sends its request and shuts down writing.
    let req: Vec<u8> = (0..REQUEST).map(byte).collect();
    assert_eq!(net.client().send(c, &req), Ok(REQUEST));
    net.client().shutdown(c).unwrap();
    assert_eq!(net.client().send(c, b"more"), Err(SendError::BrokenPipe));

    // The server reads the request to end of stream.
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    net.run_until(10_000, |n| match n.server().recv(s, &mut buf) {
        Ok(0) => true,
        Ok(k) => {
            got.extend_from_slice(&buf[..k]);
            false
        }
        Err(RecvError::WouldBlock) => false,
        Err(e) => panic!("server recv: {e}"),
    })
    .unwrap();
    assert_eq!(got, req);
    net.run_until(10_000, |n| {
        n.client().tcp_state(c) == Some(TcpState::FinWait2)
    })
    .unwrap();
    assert_eq!(net.server().tcp_state(s), Some(TcpState::CloseWait));

    // Then it answers for 6.4 s, a chunk every 100 ms, and closes; the
    // client reads it all from FIN-WAIT-2.
    let t0 = net.now();
    let (mut sent, mut hash, mut want, mut received) = (0, Fnv::default(), Fnv::default(), 0);
    let mut eof = false;
    let mut fw2_at_end = false;
    while !eof {
        let due = ((ms(t0, net.now()) / 100) as usize + 1).min(CHUNKS) * CHUNK;
        while sent < due {
            let chunk: Vec<u8> = (sent..due).map(|i| byte(i + 1)).collect();
            match net.server().send(s, &chunk) {
                Ok(k) => {
                    want.write(&chunk[..k]);
                    sent += k;
                }
                Err(SendError::WouldBlock) => break,
                Err(e) => panic!("server send: {e}"),
            }
        }
        if sent == CHUNKS * CHUNK && net.server().tcp_state(s) == Some(TcpState::CloseWait) {
            fw2_at_end = net.client().tcp_state(c) == Some(TcpState::FinWait2);
            net.server().close(s);
        }
        loop {
            match net.client().recv(c, &mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(k) => {
                    hash.write(&buf[..k]);
                    received += k;
                }
                Err(RecvError::WouldBlock) => break,
                Err(e) => panic!("client recv: {e}"),
            }
        }
        net.step();
        assert!(ms(t0, net.now()) < 20_000, "stalled");
    }
    let took = ms(t0, net.now());
    assert!(fw2_at_end, "the client left FIN-WAIT-2 early");
    assert_eq!(received, CHUNKS * CHUNK);
    assert_eq!(hash, want);
    assert_eq!(net.client().tcp_state(c), Some(TcpState::TimeWait));
    net.client().close(c);
    net.run_for(Duration::from_secs(1), 10_000).unwrap();
    for i in [Client, Server] {
        let k = net.node(i).counters();
        assert_eq!(
            k.tcp_reset_by_peer + k.tcp_timed_out + k.tcp_aborted + k.tcp_fin_wait2_timeouts,
            0,
            "{i:?}: {k:?}"
        );
        assert_eq!(k.tcp_closed, 1, "{i:?}");
    }
    assert_eq!(net.client().port_table().time_wait_flows(), 1);
    net.run_for(Duration::from_secs(60), 10_000).unwrap();
    assert_eq!(net.client().port_table().time_wait_flows(), 0);
    assert_freed(&mut net, 1);
    println!(
        "half close: {REQUEST} octets up then FIN; {} octets down over {took} ms of FIN-WAIT-2",
        CHUNKS * CHUNK
    );
}

/// A smoltcp peer rewinds SND.NXT after a retransmission timeout and sends
/// its bare ACKs from there, behind our RCV.NXT. Such an ACK still
/// acknowledges our data; dropped as out of window (RFC 9293 §3.10.7.4),
/// two such ends stopped reading each other's ACKs and waited for the user
/// timeout (found by the impaired soak once congestion control kept
/// SND.NXT behind after a timeout).
#[test]
fn a_bare_ack_from_a_peer_whose_seq_went_back_still_acknowledges() {
    let seed = 0x5e9;
    let _guard = SeedGuard("rewound ack", seed);
    let mut net = net_with(seed, config(CLIENT, seed), config(SERVER, seed + 1));
    let wire = record(&mut net);
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let (c, s) = establish(&mut net, l);
    let (client, server) = (
        net.client().local_addr(c).unwrap(),
        net.client().peer_addr(c).unwrap(),
    );
    // The client's first 100 octets reach the server: its RCV.NXT moves
    // 100 past them.
    assert_eq!(net.client().send(c, &[1; 100]), Ok(100));
    let mut buf = [0u8; 200];
    let mut got = 0;
    net.run_until(10_000, |n| {
        got += n.server().recv(s, &mut buf).unwrap_or(0);
        got == 100
    })
    .unwrap();
    // Then nothing from the client arrives, and 1000 octets of the
    // server's wait for their ACK.
    net.set_filter(|from, _, _| from != Client.index());
    assert_eq!(net.server().send(s, &[2; 1000]), Ok(1000));
    net.run_for(Duration::from_millis(50), 10_000).unwrap();
    assert_eq!(net.server().send_queue(s), 1000);
    let first = |src| {
        let w = wire.borrow();
        w.iter()
            .find(|(_, g)| g.src == src && g.len > 0)
            .map(|(_, g)| (g.seq, g.end()))
            .unwrap()
    };
    let (client_seq, _) = first(client);
    let (server_seq, _) = first(server);
    // The client's bare ACK of all 1000, sent from where its first data
    // octet was, 100 behind the server's RCV.NXT.
    let ack = tcp(
        client,
        server,
        client_seq,
        server_seq.wrapping_add(1000),
        TcpFlags::ACK,
        4096,
        &[],
    );
    net.inject_to(Server, &ack);
    net.run_for(Duration::from_millis(1), 1000).unwrap();
    assert_eq!(
        net.server().send_queue(s),
        0,
        "the 1000 octets acknowledged"
    );
    assert_eq!(net.server().counters().tcp_rewound_acks, 1);
    // An old ACK from behind the window is still only answered.
    net.inject_to(Server, &ack);
    net.run_for(Duration::from_millis(1), 1000).unwrap();
    assert_eq!(net.server().counters().tcp_rewound_acks, 1);
    net.server().check_invariants().unwrap();
}

#[test]
fn simultaneous_open() {
    let seed = 0x5150;
    let _guard = SeedGuard("simultaneous open", seed);
    let mut net = default_pair(seed);
    let wire = record(&mut net);
    let (a, b) = (sa("10.0.0.1:5000"), sa("10.0.0.2:6000"));
    let c = net.client().connect_from(a, b).unwrap();
    let s = net.server().connect_from(b, a).unwrap();
    let seen: [Rc<RefCell<Vec<TcpState>>>; 2] = Default::default();
    let done = Cell::new(false);
    net.run_until(10_000, |n| {
        for (i, h) in [(Client, c), (Server, s)] {
            if let Some(st) = n.node(i).tcp_state(h) {
                let mut v = seen[i.index()].borrow_mut();
                if v.last() != Some(&st) {
                    v.push(st);
                }
            }
        }
        done.set(
            n.client().tcp_state(c) == Some(TcpState::Established)
                && n.server().tcp_state(s) == Some(TcpState::Established),
        );
        done.get() || n.client().tcp_error(c).is_some() || n.server().tcp_error(s).is_some()
    })
    .unwrap();
    let flags: Vec<String> = wire
        .borrow()
        .iter()
        .map(|(_, s)| {
            format!(
                "{}>{} {}{}{}",
                s.src.port(),
                s.dst.port(),
                if s.flags.syn() { "S" } else { "" },
                if s.flags.ack() { "A" } else { "" },
                if s.flags.rst() { "R" } else { "" }
            )
        })
        .collect();
    println!(
        "simultaneous open: {:?} / {:?}; wire {flags:?}; errors {:?} {:?}",
        seen[Client.index()].borrow(),
        seen[Server.index()].borrow(),
        net.client().tcp_error(c),
        net.server().tcp_error(s)
    );
    // RFC 9293 §3.5 figure 8: SYN-SENT -> SYN-RECEIVED -> ESTABLISHED on
    // both sides; each sent a SYN, then a SYN,ACK.
    assert!(done.get());
    for i in [Client, Server] {
        assert_eq!(
            *seen[i.index()].borrow(),
            [
                TcpState::SynSent,
                TcpState::SynReceived,
                TcpState::Established
            ]
        );
    }
    let w = wire.borrow();
    for from in [a, b] {
        let mine: Vec<_> = w.iter().filter(|(_, s)| s.src == from).collect();
        assert!(mine[0].1.flags.syn() && !mine[0].1.flags.ack());
        assert!(mine.iter().any(|(_, s)| s.flags.syn() && s.flags.ack()));
        assert!(mine.iter().all(|(_, s)| !s.flags.rst()));
    }
    drop(w);
    // And it carries data both ways.
    assert_eq!(net.client().send(c, b"hello"), Ok(5));
    assert_eq!(net.server().send(s, b"world"), Ok(5));
    let (mut x, mut y) = ([0u8; 8], [0u8; 8]);
    let (mut nx, mut ny) = (0, 0);
    net.run_until(10_000, |n| {
        nx += n.server().recv(s, &mut x[nx..]).unwrap_or(0);
        ny += n.client().recv(c, &mut y[ny..]).unwrap_or(0);
        nx == 5 && ny == 5
    })
    .unwrap();
    assert_eq!((&x[..5], &y[..5]), (&b"hello"[..], &b"world"[..]));
    net.client().close(c);
    net.server().close(s);
    net.run_for(Duration::from_secs(61), 100_000).unwrap();
    assert_freed(&mut net, 0);
    assert_eq!(net.client().port_table().time_wait_flows(), 0);
}

#[test]
fn simultaneous_close_both_pass_through_closing_into_time_wait() {
    let seed = 0xc105;
    let _guard = SeedGuard("simultaneous close", seed);
    let mut net = default_pair(seed);
    let wire = record(&mut net);
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let (c, s) = establish(&mut net, l);
    // Idle past the user timeout first: the close must still be clean.
    net.run_for(Duration::from_secs(200), 1000).unwrap();
    let t0 = net.now();

    // Both close in the same instant: the FINs cross on the link.
    net.client().close(c);
    net.server().close(s);
    let states: [RefCell<Vec<String>>; 2] = Default::default();
    net.run_until(10_000, |n| {
        for i in [Client, Server] {
            let st = n.node(i);
            let row = st
                .snapshot()
                .into_iter()
                .find(|r| r.state != "LISTEN")
                .map(|r| r.state.to_string());
            let mut v = states[i.index()].borrow_mut();
            if let Some(row) = row {
                if v.last() != Some(&row) {
                    v.push(row);
                }
            }
        }
        [Client, Server]
            .iter()
            .all(|&i| n.node(i).port_table().time_wait_flows() == 1)
    })
    .unwrap();
    let entered = net.now();
    println!(
        "simultaneous close: client {:?}, server {:?}, TIME-WAIT after {} ms",
        states[Client.index()].borrow(),
        states[Server.index()].borrow(),
        ms(t0, entered)
    );
    for i in [Client, Server] {
        assert_eq!(
            *states[i.index()].borrow(),
            ["FIN-WAIT-1", "CLOSING", "TIME-WAIT"],
            "{i:?}"
        );
    }
    // Both FINs went out before either side saw the other's.
    let fins: Vec<_> = wire
        .borrow()
        .iter()
        .filter(|(_, s)| s.flags.fin())
        .map(|(t, s)| (*t, s.src.port() == 80))
        .collect();
    assert_eq!(fins.len(), 2, "{fins:?}");
    assert!(fins.iter().all(|(t, _)| *t == t0));
    // Sockets are gone; the port table holds the two TIME-WAIT records …
    assert_eq!(net.client().socket_count(), 0);
    assert_eq!(net.server().socket_count(), 1);
    for i in [Client, Server] {
        assert_eq!(net.node(i).port_table().live_flows(), 0);
        let k = net.node(i).counters();
        assert_eq!(k.tcp_closed, 1);
        assert_eq!(k.tcp_reset_by_peer + k.tcp_timed_out + k.tcp_aborted, 0);
    }
    // … until TIME-WAIT (2·MSL, 60 s here as on Linux, then the next
    // batch of expiries) ends.
    net.run_for(Duration::from_millis(59_900), 100_000).unwrap();
    assert!([Client, Server]
        .iter()
        .all(|&i| net.node(i).port_table().time_wait_flows() == 1));
    let batch = ephemera::TIME_WAIT_BATCH.total_millis();
    net.run_for(Duration::from_millis(200 + batch), 100_000)
        .unwrap();
    assert!([Client, Server]
        .iter()
        .all(|&i| net.node(i).port_table().time_wait_flows() == 0));
    assert_freed(&mut net, 1);
}
