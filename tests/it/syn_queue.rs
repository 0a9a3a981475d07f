//! A listener's half-open queue under spoofed SYNs: a small backlog must
//! not lock the listener, and slow handshakes must not switch eviction
//! off.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ephemera::device::virtual_link::{LinkConfig, Network};
use ephemera::wire::TcpFlags;
use ephemera::{Duration, ListenerHandle, StackConfig, TcpHandle, TcpState};

use crate::util::*;

/// A SYN from spoofed source number `i` (in 172.16/12, which no stack owns,
/// so the SYN-ACK goes nowhere) to `to`.
fn spoofed_syn(i: u32, to: SocketAddr) -> Vec<u8> {
    let src = Ipv4Addr::from(0xac10_0000 | (i & 0x000f_ffff));
    tcp(
        SocketAddr::new(IpAddr::V4(src), 1024 + (i % 60_000) as u16),
        to,
        i.wrapping_mul(0x9e37_79b9),
        0,
        TcpFlags::SYN,
        64_240,
        b"",
    )
}

/// Connect the client to `to` and run until it is established; how long
/// that took.
fn connect_time(net: &mut Network, l: ListenerHandle, to: SocketAddr) -> (Duration, TcpHandle) {
    let t0 = net.now();
    let c = net.client().connect(to).unwrap();
    let mut accepted = Vec::new();
    net.run_until(1_000_000, |n| {
        accepted.extend(accept_all(n, l));
        n.client().tcp_state(c) == Some(TcpState::Established) && !accepted.is_empty()
    })
    .unwrap();
    (net.now() - t0, c)
}

#[test]
fn eight_spoofed_syns_do_not_lock_a_listener_with_backlog_8() {
    // With a backlog below the half-open limit, the accept-queue check
    // dropped every new SYN before eviction could run: eight spoofed SYNs
    // locked the listener until they timed out (two minutes).
    let mut net = default_pair(0x7b);
    let to = sa("10.0.0.2:80");
    let l = net.server().listen(to, Some(8)).unwrap();
    for i in 0..8 {
        net.inject_to(Server, &spoofed_syn(i, to));
    }
    net.run_for(Duration::from_millis(10), 10_000).unwrap();
    let (took, _) = connect_time(&mut net, l, to);
    assert!(
        took <= Duration::from_millis(10),
        "a real client took {took} to connect past 8 spoofed SYNs"
    );
    let c = net.server().counters();
    assert!(c.drop_half_open_evicted >= 1, "{c:?}");
    net.server().check_invariants().unwrap();
}

#[test]
fn slow_handshakes_do_not_switch_eviction_off() {
    // Eviction spares half-open connections younger than the listener's
    // smoothed handshake time, which had no upper bound: after a few slow
    // handshakes (5 s round trips here), spoofed SYNs held the queue for
    // 5 s however old they were. The age is capped at 1 s.
    let mut net = pair(
        LinkConfig {
            delay: Duration::from_millis(2_500),
            seed: 0x5105,
            ..Default::default()
        },
        config(CLIENT, 0x5105),
        StackConfig {
            syn_backlog: 8,
            backlog: 64,
            ..config(SERVER, 0x5106)
        },
    );
    let to = sa("10.0.0.2:80");
    let l = net.server().listen(to, None).unwrap();
    for _ in 0..3 {
        let (took, c) = connect_time(&mut net, l, to);
        assert!(took >= Duration::from_secs(5), "{took}");
        net.client().abort(c);
    }
    net.set_config(LinkConfig {
        delay: Duration::from_millis(1),
        seed: 0x5105,
        ..Default::default()
    });
    net.run_for(Duration::from_secs(6), 1_000_000).unwrap();
    for i in 0..8 {
        net.inject_to(Server, &spoofed_syn(i, to));
    }
    net.run_for(Duration::from_millis(1_500), 1_000_000)
        .unwrap();
    let (took, _) = connect_time(&mut net, l, to);
    assert!(
        took <= Duration::from_millis(10),
        "a real client took {took} to get past 1.5 s old spoofed SYNs"
    );
    net.server().check_invariants().unwrap();
}
