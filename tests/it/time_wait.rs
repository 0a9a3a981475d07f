//! TIME-WAIT kept by one stack, played against by hand: its records are
//! capped, a retransmitted FIN restarts 2·MSL, reopening one 4-tuple
//! over and over leaves nothing behind, and data the application has not
//! read yet outlives TIME-WAIT.

use std::net::SocketAddr;

use ephemera::port_table::PortTableConfig;
use ephemera::wire::TcpFlags;
use ephemera::{Duration, Instant, ListenerHandle, SocketState, Stack, StackConfig, TcpState};

use crate::util::*;

const SERVER_AT: &str = "10.0.0.2:80";

fn server(max_time_wait: usize) -> (Stack, ListenerHandle, Instant) {
    let now = Instant::from_millis(0);
    let config = StackConfig {
        ports: PortTableConfig {
            max_time_wait,
            ..PortTableConfig::default()
        },
        ..config(SERVER, 0x7a)
    };
    let mut st = Stack::new(config, now).unwrap();
    let l = st.listen(sa("0.0.0.0:80"), None).unwrap();
    (st, l, now)
}

/// A connection from `peer` (ISN `isn`) that the server closes first: its
/// FIN, the peer's ACK and FIN, the server's last ACK. Returns RCV.NXT as
/// the server saw it last (the peer's FIN included).
fn closed_by_server(
    st: &mut Stack,
    now: &mut Instant,
    l: ListenerHandle,
    peer: SocketAddr,
    isn: u32,
) -> u32 {
    let ends = (peer, sa(SERVER_AT));
    let (h, snd) = handshake(st, now, l, ends, isn, 65535);
    st.close(h);
    let t = *now;
    let out = drain_until(st, now, t + Duration::from_millis(5));
    assert!(
        out.iter().any(|(_, s)| s.flags.fin() && s.seq == snd),
        "{out:?}"
    );
    let fin = TcpFlags::FIN | TcpFlags::ACK;
    let rcv_nxt = isn.wrapping_add(2);
    st.handle_packet(
        *now,
        &tcp(peer, ends.1, isn.wrapping_add(1), snd + 1, fin, 65535, b""),
    );
    let t = *now;
    let out = drain_until(st, now, t + Duration::from_millis(5));
    assert!(out.iter().any(|(_, s)| s.ack == rcv_nxt), "{out:?}");
    rcv_nxt
}

#[test]
fn time_wait_records_are_capped_and_the_rest_skip_time_wait() {
    let (mut st, l, mut now) = server(4);
    for port in 0..10u16 {
        let peer = SocketAddr::new(ip(CLIENT), 40_000 + port);
        closed_by_server(&mut st, &mut now, l, peer, 1000 * u32::from(port));
    }
    let table = st.port_table();
    assert_eq!(table.time_wait_flows(), 4);
    assert_eq!(table.live_flows(), 0, "the other six were released");
    let c = st.counters();
    assert_eq!((c.tcp_time_wait_overflow, c.tcp_closed), (6, 10));
    assert_eq!(st.socket_count(), 1, "only the listener");
    st.check_invariants().unwrap();
}

#[test]
fn a_retransmitted_fin_in_time_wait_restarts_two_msl() {
    let (mut st, l, mut now) = server(4);
    let peer = sa("10.0.0.1:40000");
    let rcv_nxt = closed_by_server(&mut st, &mut now, l, peer, 5000);
    let t0 = now;
    assert_eq!(st.port_table().time_wait_flows(), 1);

    // 40 s in, the peer (its ACK of our FIN lost, say) sends its FIN again.
    let t = t0 + Duration::from_secs(40);
    drain_until(&mut st, &mut now, t);
    let fin = TcpFlags::FIN | TcpFlags::ACK;
    let again = tcp(peer, sa(SERVER_AT), rcv_nxt - 1, 0, fin, 65535, b"");
    st.handle_packet(now, &again);
    let out = drain_until(&mut st, &mut now, t + Duration::from_millis(5));
    assert!(
        out.iter().any(|(_, s)| s.ack == rcv_nxt),
        "FIN not ACKed: {out:?}"
    );

    // 2·MSL (60 s) after the first FIN the record is still there: it runs
    // from the retransmission.
    drain_until(&mut st, &mut now, t0 + Duration::from_secs(61));
    assert_eq!(st.port_table().time_wait_flows(), 1, "2·MSL not restarted");
    drain_until(&mut st, &mut now, t + Duration::from_millis(59_990));
    assert_eq!(st.port_table().time_wait_flows(), 1);
    drain_until(&mut st, &mut now, t + Duration::from_secs(61));
    assert_eq!(st.port_table().time_wait_flows(), 0);
    assert_eq!(st.counters().tcp_time_wait_restarted, 1);
    assert_eq!(st.counters().tcp_time_wait_restarted, 1);

    // A FIN that did not close the connection (blind, wrong sequence
    // number) is answered but restarts nothing.
    let rcv_nxt = closed_by_server(&mut st, &mut now, l, peer, 9000);
    let blind = tcp(peer, sa(SERVER_AT), rcv_nxt + 500, 0, fin, 65535, b"");
    st.handle_packet(now, &blind);
    assert_eq!(st.counters().tcp_time_wait_restarted, 1);
    st.check_invariants().unwrap();
}

#[test]
fn reopening_one_four_tuple_many_times_leaves_no_expiry_entries_behind() {
    let (mut st, l, mut now) = server(64);
    let peer = sa("10.0.0.1:40000");
    let mut isn = 1_000u32;
    let mut most = 0;
    for round in 0..500 {
        // Each round's SYN lies beyond the last connection's RCV.NXT, so it
        // ends the record early (RFC 6191) and opens the next connection.
        let rcv_nxt = closed_by_server(&mut st, &mut now, l, peer, isn);
        assert_eq!(st.port_table().time_wait_flows(), 1, "round {round}");
        most = most.max(st.port_table().time_wait_queue_len());
        isn = rcv_nxt.wrapping_add(100_000);
    }
    assert_eq!(st.counters().tcp_time_wait_reopened, 499);
    assert!(
        most <= 20,
        "one record, but up to {most} expiry entries queued"
    );
    st.check_invariants().unwrap();
    // And the last record still expires.
    let t = now + Duration::from_secs(61);
    drain_until(&mut st, &mut now, t);
    assert_eq!(st.port_table().time_wait_flows(), 0);
    assert_eq!(st.port_table().time_wait_queue_len(), 0);
}

#[test]
fn closed_connections_leave_no_deadline_before_their_time_wait_ends() {
    // Deadlines of sockets that are gone must not wake the driver: with
    // no connection left, the next one is the first record's 2·MSL.
    let (mut st, l, mut now) = server(16);
    let first_close = now;
    for port in 0..10u16 {
        let peer = SocketAddr::new(ip(CLIENT), 40_000 + port);
        closed_by_server(&mut st, &mut now, l, peer, 1000 * u32::from(port));
    }
    assert_eq!(st.socket_count(), 1, "only the listener");
    while st.poll_transmit(now).is_some() {}
    let two_msl = Duration::from_secs(60);
    let at = st.poll_at().expect("the TIME-WAIT records' expiry");
    assert!(at >= first_close + two_msl, "woken at {at}, now {now}");
    st.check_invariants().unwrap();
}

#[test]
fn data_unread_in_time_wait_stays_readable_until_the_application_reads_it() {
    // Our side shut down its half first, the peer sent data and its FIN,
    // and the application has not read yet: the connection is in
    // TIME-WAIT, but what arrived is the application's until it reads it
    // (as on Linux), however long it takes. Then it closes the handle, or
    // aborts it (no RST: the connection is over on the wire).
    for abort in [false, true] {
        let (mut st, l, mut now) = server(16);
        let peer = sa("10.0.0.1:40000");
        let ends = (peer, sa(SERVER_AT));
        let isn = 7000u32;
        let (h, snd) = handshake(&mut st, &mut now, l, ends, isn, 65535);
        st.shutdown(h).unwrap();
        let t = now;
        let out = drain_until(&mut st, &mut now, t + Duration::from_millis(5));
        assert!(
            out.iter().any(|(_, s)| s.flags.fin() && s.seq == snd),
            "{out:?}"
        );
        let data = b"the last words before the peer's FIN";
        let fin = TcpFlags::FIN | TcpFlags::ACK;
        st.handle_packet(
            now,
            &tcp(peer, ends.1, isn.wrapping_add(1), snd + 1, fin, 65535, data),
        );
        let t = now;
        let out = drain_until(&mut st, &mut now, t + Duration::from_millis(300));
        let rcv_nxt = isn.wrapping_add(2 + data.len() as u32);
        assert!(out.iter().any(|(_, s)| s.ack == rcv_nxt), "{out:?}");
        assert_eq!(st.tcp_state(h), Some(TcpState::TimeWait));
        // On the wire the connection is over: its 4-tuple is a TIME-WAIT
        // record like any other, listed once, with the bytes left to read
        // as its receive queue (as `ss` shows them).
        assert_eq!(st.port_table().time_wait_flows(), 1);
        assert_eq!(st.port_table().live_flows(), 0);
        let row = |st: &Stack| {
            let rows = st.snapshot();
            let mine: Vec<_> = rows.iter().filter(|r| r.remote == Some(peer)).collect();
            assert_eq!(mine.len(), 1, "{rows:?}");
            (mine[0].state, mine[0].recv_queue)
        };
        let (tw, closed) = (TcpState::TimeWait, TcpState::Closed);
        assert_eq!(row(&st), (SocketState::Tcp(tw), data.len()));

        // Long past smoltcp's own TIME-WAIT (10 s) and 2·MSL (60 s): the
        // record is gone, the data is still listed until it is read.
        let t = now;
        drain_until(&mut st, &mut now, t + Duration::from_secs(90));
        assert_eq!(st.port_table().time_wait_flows(), 0);
        assert_eq!(row(&st), (SocketState::Tcp(closed), data.len()));
        let mut buf = [0u8; 128];
        assert_eq!(st.recv(h, &mut buf), Ok(data.len()));
        assert_eq!(&buf[..data.len()], data);
        assert_eq!(st.recv(h, &mut buf), Ok(0), "then end of stream");
        assert_eq!(row(&st), (SocketState::Tcp(closed), 0));
        match abort {
            true => st.abort(h),
            false => st.close(h),
        }
        let t = now;
        let out = drain_until(&mut st, &mut now, t + Duration::from_secs(1));
        assert!(out.is_empty(), "nothing more on the wire: {out:?}");
        assert_eq!(st.socket_count(), 1, "only the listener");
        assert!(st.snapshot().iter().all(|r| r.remote != Some(peer)));
        assert_eq!(st.counters().tcp_closed, 1);
        st.check_invariants().unwrap();
    }
}

#[test]
fn time_wait_records_end_in_batches_not_one_wake_up_each() {
    // A hundred connections closed 10 ms apart: their records end over
    // one second, 60 s later, in about ten wake-ups, each record at least
    // 2·MSL after its close and at most TIME_WAIT_BATCH later than that.
    let (mut st, l, mut now) = server(1000);
    let mut closed = Vec::new();
    for port in 0..100u16 {
        let peer = SocketAddr::new(ip(CLIENT), 40_000 + port);
        closed_by_server(&mut st, &mut now, l, peer, 1000 * u32::from(port));
        // TIME-WAIT began with the peer's FIN, 5 ms before the end of
        // closed_by_server's last drain.
        closed.push(now - Duration::from_millis(5));
    }
    let span = now - closed[0];
    assert!(span >= Duration::from_millis(900), "{span}");
    let two_msl = Duration::from_secs(60);
    let batch = ephemera::TIME_WAIT_BATCH;
    let mut wake_ups = 0;
    let mut ended = 0;
    while let Some(at) = st.poll_at() {
        now = at.max(now);
        while st.poll_transmit(now).is_some() {}
        wake_ups += 1;
        let left = st.port_table().time_wait_flows();
        for t in &closed[ended..100 - left] {
            assert!(now >= *t + two_msl, "ended early: closed {t}, now {now}");
            assert!(
                now <= *t + two_msl + batch,
                "ended late: closed {t}, now {now}"
            );
        }
        ended = 100 - left;
        assert!(wake_ups < 1000, "no end to the wake-ups");
    }
    assert_eq!(ended, 100);
    let most = (span.total_millis() / batch.total_millis() + 2) as usize;
    assert!(
        wake_ups <= most,
        "{wake_ups} wake-ups for 100 records over {span}"
    );
    st.check_invariants().unwrap();
}
