//! Churn: a million connect / transfer / close cycles through one listener
//! and one client. The heap is counted for this test's thread alone
//! (`crate::alloc`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use ephemera::device::virtual_link::LinkConfig;
use ephemera::{Duration, Event, PortTableConfig, RecvError, StackConfig, TcpHandle, TcpState};

use crate::alloc;
use crate::util::*;

const CYCLES: u64 = 1_000_000;
/// Connections in flight at once.
pub(crate) const CONCURRENT: usize = 512;
pub(crate) const MSG: usize = 32;
pub(crate) const TIME_WAIT: Duration = Duration::from_millis(50);

pub(crate) fn churn_config(addr: &str, seed: u64) -> StackConfig {
    StackConfig {
        tcp_rx_buffer: 512,
        tcp_tx_buffer: 512,
        backlog: 1024,
        syn_backlog: 1024,
        ports: PortTableConfig {
            time_wait: std::time::Duration::from_micros(TIME_WAIT.total_micros()),
            ..Default::default()
        },
        ..config(addr, seed)
    }
}

pub(crate) fn message(cycle: u64) -> [u8; MSG] {
    let mut m = [0u8; MSG];
    for (i, b) in m.iter_mut().enumerate() {
        *b = (cycle.rotate_left(i as u32 * 3) ^ i as u64) as u8;
    }
    m
}

/// Per client port: when the previous incarnation sent its last segment
/// (the ACK of the peer's FIN, which starts TIME-WAIT). A SYN from that port
/// earlier than `TIME_WAIT` later would reuse a 4-tuple in TIME-WAIT.
#[derive(Default)]
struct Reuse {
    last: HashMap<u16, i64>,
    reused_early: u64,
    syns: u64,
}

#[test]
fn a_million_cycles_leave_nothing_behind() {
    let seed = 0xc4u64;
    let _guard = SeedGuard("churn", seed);
    let mut net = pair(
        LinkConfig {
            seed,
            ..Default::default()
        },
        churn_config(CLIENT, seed),
        churn_config(SERVER, seed + 1),
    );
    let reuse = Rc::new(RefCell::new(Reuse::default()));
    {
        let reuse = reuse.clone();
        let client = ip(CLIENT);
        tap_segments(&mut net, move |now, s| {
            if s.src.ip() != client {
                return;
            }
            let port = s.src.port();
            let mut r = reuse.borrow_mut();
            let t = now.total_micros();
            if s.flags.syn() && !s.flags.ack() {
                r.syns += 1;
                if let Some(&last) = r.last.get(&port) {
                    if t - last < TIME_WAIT.total_micros() as i64 {
                        r.reused_early += 1;
                    }
                }
            } else {
                r.last.insert(port, t);
            }
        });
    }
    let l = net.server().listen(sa("10.0.0.2:80"), None).unwrap();
    let target = sa("10.0.0.2:80");

    // Client side: cycle number and bytes of the echo received so far
    // (`usize::MAX` until the message is sent).
    let mut clients: HashMap<TcpHandle, (u64, usize)> = HashMap::new();
    // Server side: bytes received so far.
    let mut servers: HashMap<TcpHandle, usize> = HashMap::new();
    let (mut started, mut done) = (0u64, 0u64);
    let mut buf = [0u8; MSG];
    let mut samples = Vec::new();
    let mut warm = 0;
    let t0 = std::time::Instant::now();

    // Run until every cycle is done and the server has closed its side.
    while done < CYCLES || !servers.is_empty() {
        while clients.len() < CONCURRENT && started < CYCLES {
            let c = net
                .client()
                .connect(target)
                .unwrap_or_else(|e| panic!("connect #{started}: {e}"));
            clients.insert(c, (started, usize::MAX));
            started += 1;
        }
        net.step();

        echo_server_turn(net.server(), l, &mut servers, &mut buf, MSG);

        let client = net.client();
        while let Some(ev) = client.poll_event() {
            let Event::Tcp(c) = ev else { continue };
            let Some(&(cycle, got)) = clients.get(&c) else {
                continue;
            };
            let want = message(cycle);
            let mut have = match got {
                usize::MAX => match client.tcp_state(c) {
                    Some(TcpState::SynSent) => continue,
                    Some(TcpState::Established) => {
                        assert_eq!(client.send(c, &want), Ok(MSG), "cycle {cycle}");
                        0
                    }
                    other => panic!(
                        "cycle {cycle}: client in {other:?}, {:?} at {}; client {:?} server {:?}",
                        client.tcp_error(c),
                        client.now(),
                        client.counters(),
                        client.snapshot().len()
                    ),
                },
                n => n,
            };
            loop {
                match client.recv(c, &mut buf[have..]) {
                    Ok(0) => panic!("cycle {cycle}: EOF before the echo"),
                    Ok(n) => {
                        assert_eq!(buf[have..have + n], want[have..have + n], "cycle {cycle}");
                        have += n;
                        if have < MSG {
                            continue;
                        }
                        client.close(c);
                        clients.remove(&c);
                        done += 1;
                        if done % 50_000 == 0 {
                            if done == 50_000 {
                                warm = alloc::live_bytes();
                            }
                            samples.push(alloc::live_bytes());
                        }
                    }
                    Err(RecvError::WouldBlock) => {
                        clients.insert(c, (cycle, have));
                    }
                    Err(e) => panic!("cycle {cycle}: client recv: {e}"),
                }
                break;
            }
        }
    }
    let busy = t0.elapsed();
    // Let the last closes finish and every TIME-WAIT expire.
    net.run_for(Duration::from_secs(5), 10_000_000).unwrap();
    let end = alloc::live_bytes();
    let (c, s) = (net.node_ref(Client), net.node_ref(Server));
    c.check_invariants().unwrap();
    s.check_invariants().unwrap();
    let r = reuse.borrow();
    let (lo, hi) = (
        *samples[1..].iter().min().unwrap(),
        *samples[1..].iter().max().unwrap(),
    );
    println!(
        "churn: {CYCLES} cycles, {CONCURRENT} concurrent, TIME-WAIT {TIME_WAIT}, {:.1?} wall, {} simulated; \
         {} SYNs, {} early reuses; heap after 50k cycles {} KiB, steady {}..{} KiB, drained {} KiB; \
         client closed {} time-wait acks {}",
        busy,
        net.now(),
        r.syns,
        r.reused_early,
        warm / 1024,
        lo / 1024,
        hi / 1024,
        end / 1024,
        c.counters().tcp_closed,
        c.counters().tcp_time_wait_acks,
    );
    assert_eq!(r.reused_early, 0, "a 4-tuple was reused while in TIME-WAIT");
    assert_eq!(r.syns, CYCLES, "one SYN per cycle on a lossless link");
    assert_eq!(c.socket_count(), 0);
    assert_eq!(s.socket_count(), 1, "only the listener");
    for st in [c, s] {
        assert_eq!(st.port_table().live_flows(), 0);
        assert_eq!(st.port_table().time_wait_flows(), 0);
    }
    assert_eq!(c.counters().tcp_active_opens, CYCLES);
    assert_eq!(s.counters().tcp_accepted, CYCLES);
    assert_eq!(c.counters().drops() + s.counters().drops(), 0);
    // Flat: no growth between 100k and 1M cycles beyond noise from how
    // many connections happen to be in flight or in TIME-WAIT.
    assert!(hi - lo < 2 << 20, "heap moved {lo}..{hi} across samples");
    assert!(end <= lo, "drained heap {end} above the steady level {lo}");
}
