//! Impaired links and misbehaving peers over the virtual link.

use std::collections::HashMap;

use ephemera::device::virtual_link::{LinkConfig, Network};
use ephemera::wire::TcpFlags;
use ephemera::{
    Duration, Event, Instant, ListenerHandle, RecvError, SendError, Stack, StackConfig, TcpHandle,
    TcpState,
};

use crate::util::*;

const CONNS: usize = 1000;
const BYTES: usize = 8 * 1024;

fn stream_byte(id: u32, i: usize) -> u8 {
    (id.wrapping_mul(2_654_435_761) as usize ^ i.wrapping_mul(31) ^ (i >> 8)) as u8
}

/// One end of a soak connection.
struct End {
    /// The peer's stream id, learned from its first four octets.
    peer: Option<u32>,
    head: Vec<u8>,
    hash: Fnv,
    got: usize,
    sent: usize,
    id: u32,
    closed: bool,
}

impl End {
    fn new(id: u32) -> End {
        End {
            peer: None,
            head: Vec::new(),
            hash: Fnv::default(),
            got: 0,
            sent: 0,
            id,
            closed: false,
        }
    }
}

fn expected_hash(id: u32) -> Fnv {
    let mut h = Fnv::default();
    let body: Vec<u8> = (0..BYTES).map(|i| stream_byte(id, i)).collect();
    h.write(&body);
    h
}

/// Drive one end: send its stream (4-octet id, then BYTES octets), read the
/// peer's, close once both are done.
fn pump(st: &mut Stack, h: TcpHandle, e: &mut End) {
    let mut buf = [0u8; 4096];
    while e.sent < 4 + BYTES {
        let chunk: Vec<u8> = (e.sent..(4 + BYTES).min(e.sent + 4096))
            .map(|i| {
                if i < 4 {
                    e.id.to_be_bytes()[i]
                } else {
                    stream_byte(e.id, i - 4)
                }
            })
            .collect();
        match st.send(h, &chunk) {
            Ok(n) => e.sent += n,
            Err(SendError::WouldBlock) => break,
            Err(err) => panic!("send: {err}"),
        }
    }
    loop {
        match st.recv(h, &mut buf) {
            Ok(0) => {
                break;
            }
            Ok(n) => {
                let mut data = &buf[..n];
                while e.peer.is_none() && !data.is_empty() {
                    e.head.push(data[0]);
                    data = &data[1..];
                    if e.head.len() == 4 {
                        e.peer = Some(u32::from_be_bytes(e.head[..4].try_into().unwrap()));
                    }
                }
                e.hash.write(data);
                e.got += data.len();
            }
            Err(RecvError::WouldBlock) => break,
            Err(err) => panic!("recv: {err}"),
        }
    }
    if !e.closed && e.sent == 4 + BYTES && e.got == BYTES {
        st.close(h);
        e.closed = true;
    }
}

fn soak(seed: u64, link: LinkConfig) -> Network {
    let cfg = |a: &str, s: u64| StackConfig {
        tcp_rx_buffer: 8192,
        tcp_tx_buffer: 8192,
        backlog: 1024,
        syn_backlog: 1024,
        ..config(a, s)
    };
    let mut net = pair(link, cfg(CLIENT, seed), cfg(SERVER, seed + 1));
    // Both stacks listen and both connect: traffic in both directions.
    let ls: [ListenerHandle; 2] = [
        net.client().listen(sa("0.0.0.0:7000"), None).unwrap(),
        net.server().listen(sa("0.0.0.0:7000"), None).unwrap(),
    ];
    let mut ends: [HashMap<TcpHandle, End>; 2] = [HashMap::new(), HashMap::new()];
    for i in 0..CONNS {
        let (from, to) = if i % 2 == 0 {
            (Client, "10.0.0.2:7000")
        } else {
            (Server, "10.0.0.1:7000")
        };
        let h = net.node(from).connect(sa(to)).unwrap();
        ends[from.index()].insert(h, End::new(i as u32 * 2));
    }
    let mut next_id = 1u32;
    let mut finished = Vec::new();
    net.run_until(400_000_000, |n| {
        for node in [Client, Server] {
            let (st, side) = (n.node(node), node.index());
            while let Some(ev) = st.poll_event() {
                match ev {
                    Event::Incoming(_) => {
                        while let Ok(h) = st.accept(ls[side]) {
                            ends[side].insert(h, End::new(next_id));
                            next_id += 2;
                        }
                    }
                    Event::Tcp(h) => {
                        if let Some(e) = ends[side].get_mut(&h) {
                            if let Some(err) = st.tcp_error(h) {
                                panic!("connection failed: {err:?}");
                            }
                            pump(st, h, e);
                            if e.closed {
                                finished.push(ends[side].remove(&h).unwrap());
                            }
                        }
                    }
                    Event::Udp(_) => {}
                }
            }
        }
        finished.len() == 2 * CONNS
    })
    .unwrap_or_else(|e| {
        panic!(
            "seed {seed:#x}: {e}; {} of {} ends done",
            finished.len(),
            2 * CONNS
        )
    });
    for e in &finished {
        let peer = e.peer.expect("peer id");
        assert_eq!(e.got, BYTES, "stream {peer}: length");
        assert_eq!(e.hash, expected_hash(peer), "stream {peer}: bytes differ");
    }
    // Every peer stream was received exactly once.
    let mut peers: Vec<u32> = finished.iter().map(|e| e.peer.unwrap()).collect();
    peers.sort();
    peers.dedup();
    assert_eq!(peers.len(), 2 * CONNS);
    net.run_for(Duration::from_secs(200), 10_000_000).unwrap();
    for i in [Client, Server] {
        let st = net.node(i);
        st.check_invariants().unwrap();
        // Nothing but the listener is left, and nothing needed the
        // FIN-WAIT-2 timeout: every FIN was accepted, ACKed and answered.
        let rest: Vec<_> = st
            .snapshot()
            .into_iter()
            .filter(|r| r.state != "LISTEN")
            .collect();
        assert!(rest.is_empty(), "left over: {rest:?}");
        assert_eq!(st.socket_count(), 1);
        assert_eq!(st.port_table().live_flows(), 0);
        assert_eq!(st.port_table().time_wait_flows(), 0);
        let c = st.counters();
        assert_eq!(
            c.tcp_reset_by_peer + c.tcp_timed_out + c.tcp_aborted + c.tcp_fin_wait2_timeouts,
            0,
            "{c:?}"
        );
        println!(
            "soak: {i:?}: {} FIN-WAIT-2 timeout(s), {} FIN(s) re-sent by the watchdog",
            c.tcp_fin_wait2_timeouts, c.tcp_fin_resent
        );
    }
    net
}

#[test]
fn impaired_soak_thousand_connections_both_directions() {
    let seed = 0x50a4;
    let _guard = SeedGuard("impaired soak", seed);
    let t = std::time::Instant::now();
    let net = soak(
        seed,
        LinkConfig {
            delay: Duration::from_millis(2),
            loss: 0.05,
            duplicate: 0.02,
            reorder: 0.05,
            corrupt: 0.01,
            bottleneck: None,
            seed,
        },
    );
    let s = net.stats();
    let bad: u64 = [Client, Server]
        .iter()
        .map(|&i| net.node_ref(i).counters().drop_bad_checksum)
        .sum();
    println!(
        "soak: {CONNS} connections x 2 directions x {BYTES} octets; link {s:?}; checksum drops {bad}; \
         {} simulated, {:.1?} wall",
        net.now(),
        t.elapsed()
    );
    assert!(s.lost > 1000 && s.duplicated > 400 && s.corrupted > 200 && s.reordered > 1000);
    assert!(bad > 0, "corruption must be caught by checksums");
}

/// The soak's orphan, replayed with hand-built segments (seed 0x50a4 up to
/// commit a0f2e13, connection 10.0.0.1:53585 -> 10.0.0.2:7000). The peer's
/// data and FIN arrive around a hole, so its FIN is out of order and
/// smoltcp drops it; the retransmission fills the hole but carries no FIN.
/// The server's application reads everything and closes; its FIN is lost,
/// and the FIN watchdog re-sends it. That watchdog FIN took its ACK from
/// the highest sequence number seen, FIN included: it acknowledged a FIN
/// the server never accepted. The peer, FIN acknowledged and FIN received,
/// went to TIME-WAIT and never sent its FIN again; the server sat in
/// FIN-WAIT-2 until the FIN-WAIT-2 timeout reset it. Every segment the
/// server sends must acknowledge only what it accepted (RCV.NXT).
#[test]
fn fin_watchdog_never_acknowledges_an_out_of_order_fin() {
    let seed = 0x0f1f;
    let _guard = SeedGuard("out-of-order FIN", seed);
    let mut now = Instant::from_millis(0);
    let mut st = Stack::new(config(SERVER, seed), now).unwrap();
    let l = st.listen(sa("0.0.0.0:80"), None).unwrap();
    let (peer, server) = (sa("10.0.0.1:40000"), sa("10.0.0.2:80"));
    let fin_ack = TcpFlags::FIN | TcpFlags::ACK;
    let isn = 1000u32;
    let send = |st: &mut Stack, now: Instant, seq, ack, flags, data: &[u8]| {
        st.handle_packet(now, &tcp(peer, server, seq, ack, flags, 65535, data));
    };

    // Handshake.
    send(&mut st, now, isn, 0, TcpFlags::SYN, b"");
    let out = drain_until(&mut st, &mut now, Instant::from_millis(1));
    let syn_ack = out.iter().find(|(_, s)| s.flags.syn()).expect("SYN-ACK").1;
    assert_eq!(syn_ack.ack, isn + 1);
    let snd = syn_ack.seq.wrapping_add(1);
    send(&mut st, now, isn + 1, snd, TcpFlags::ACK, b"");
    let h = st.accept(l).unwrap();

    // The peer's last 100 octets and its FIN arrive before the 100 octets
    // in front of them: the FIN is out of order.
    send(&mut st, now, isn + 101, snd, fin_ack, &[2; 100]);
    // The retransmission fills the hole, without the FIN.
    send(&mut st, now, isn + 1, snd, TcpFlags::ACK, &[1; 100]);
    let rcv_nxt = isn + 201;
    let t = now + Duration::from_millis(50);
    let out = drain_until(&mut st, &mut now, t);
    assert_eq!(out.last().map(|(_, s)| s.ack), Some(rcv_nxt), "{out:?}");
    assert_eq!(st.tcp_state(h), Some(TcpState::Established), "FIN accepted");
    let mut buf = [0u8; 512];
    assert_eq!(st.recv(h, &mut buf), Ok(200));
    assert_eq!(st.recv(h, &mut buf), Err(RecvError::WouldBlock));

    // The server closes. The peer hears nothing of it for 3 s (its FIN and
    // the retransmission are lost): the FIN watchdog re-sends the FIN.
    st.close(h);
    let t0 = now;
    let out = drain_until(&mut st, &mut now, t0 + Duration::from_secs(3));
    let fins: Vec<_> = out.iter().filter(|(_, s)| s.flags.fin()).collect();
    assert!(fins.len() >= 2, "FIN not re-sent: {out:?}");
    assert!(
        st.counters().tcp_fin_resent >= 1,
        "the watchdog did not fire"
    );
    for (t, s) in &out {
        assert_eq!(
            s.ack,
            rcv_nxt,
            "segment at +{} ms acknowledges {} octets beyond RCV.NXT: {s:?}",
            (*t - t0).total_millis(),
            s.ack.wrapping_sub(rcv_nxt)
        );
    }

    // The peer, its FIN unacknowledged, sends it again with the ACK of the
    // server's: the server goes to TIME-WAIT and acknowledges it.
    send(&mut st, now, rcv_nxt, snd + 1, fin_ack, b"");
    let t1 = now;
    let out = drain_until(&mut st, &mut now, t1 + Duration::from_millis(100));
    assert!(
        out.iter()
            .any(|(_, s)| s.ack == rcv_nxt + 1 && !s.flags.fin()),
        "peer's FIN not acknowledged: {out:?}"
    );
    assert_eq!(st.port_table().time_wait_flows(), 1);
    assert_eq!(st.port_table().live_flows(), 0);
    let c = st.counters();
    assert_eq!(c.tcp_closed, 1);
    assert_eq!(
        c.tcp_fin_wait2_timeouts + c.tcp_timed_out + c.tcp_aborted,
        0
    );
    st.check_invariants().unwrap();
    println!(
        "out-of-order FIN: {} FIN(s) from the server in 3 s, {} by the watchdog, all ACK RCV.NXT",
        fins.len(),
        c.tcp_fin_resent
    );
}
