//! SYN cookies (RFC 4987 §3.6): 100,000 spoofed SYNs at 128 per 0.1 ms,
//! far beyond what a SYN cache of 128 holds for a 2 ms round trip, while
//! a real client connects once per 1,000 of them and sends data; forged
//! and stale cookie ACKs.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ephemera::device::virtual_link::{LinkConfig, Network};
use ephemera::wire::TcpFlags;
use ephemera::{Duration, Instant, ListenerHandle, Rng, SeededRng, StackConfig, SynCookies};
use ephemera::{TcpHandle, TcpState};

use crate::alloc;
use crate::util::*;

const FLOOD: u64 = 100_000;
/// Spoofed SYNs per 0.1 ms of simulated time: 1.28 million SYN/s, 2,560
/// per 2 ms round trip.
const PER_TICK: u64 = 128;
/// The real client connects once per this many flood SYNs.
const CLIENT_EVERY: u64 = 1_000;
/// What each real connection carries.
const PAYLOAD: usize = 20_000;

fn cfg(addr: &str, seed: u64, cookies: SynCookies) -> StackConfig {
    StackConfig {
        backlog: 128,
        syn_backlog: 128,
        syn_cookies: cookies,
        ..config(addr, seed)
    }
}

/// The octets real connection `n` carries.
fn payload(n: u64) -> Vec<u8> {
    (0..PAYLOAD)
        .map(|i| (i as u64 * 31 + n * 7 % 251) as u8)
        .collect()
}

/// A SYN from a random source in 172.16.0.0/12 (no stack owns it, so the
/// answer goes nowhere, as with a spoofing attacker).
fn spoofed(rng: &mut SeededRng, to: SocketAddr, flags: TcpFlags) -> Vec<u8> {
    let r = rng.next_u64();
    let src = Ipv4Addr::from(0xac10_0000 | (r as u32 & 0x000f_ffff));
    let port = 1024 + (r >> 32) as u16 % 64_000;
    let from = SocketAddr::new(IpAddr::V4(src), port);
    tcp(from, to, (r >> 16) as u32, r as u32, flags, 64_240, b"")
}

/// The real client's connections, and what the server got on each.
#[derive(Default)]
struct Real {
    /// Client handle, its number, when it began.
    pending: Vec<(TcpHandle, u64, Instant)>,
    /// Server handle, what it has read.
    serving: HashMap<TcpHandle, Vec<u8>>,
    attempts: u64,
    connected: u64,
    exact: u64,
    worst: Duration,
}

impl Real {
    fn settle(&mut self, net: &mut Network, l: ListenerHandle) {
        for s in accept_all(net, l) {
            self.serving.insert(s, Vec::new());
        }
        let now = net.now();
        let mut buf = vec![0u8; 65536];
        let mut done = Vec::new();
        for (&s, got) in self.serving.iter_mut() {
            loop {
                match net.server().recv(s, &mut buf) {
                    Ok(0) => {
                        done.push(s);
                        break;
                    }
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
            }
        }
        for s in done {
            let got = self.serving.remove(&s).unwrap();
            // The connection's number is in its first octets' pattern.
            if (0..self.attempts).any(|n| got == payload(n)) {
                self.exact += 1;
            }
            net.server().close(s);
        }
        let client = net.client();
        self.pending
            .retain(|&(c, n, t0)| match client.tcp_state(c) {
                Some(TcpState::Established) => {
                    self.worst = self.worst.max(now - t0);
                    self.connected += 1;
                    assert_eq!(client.send(c, &payload(n)), Ok(PAYLOAD));
                    client.close(c);
                    false
                }
                Some(TcpState::SynSent) => true,
                other => panic!("real client connection {n} ended in {other:?}"),
            });
    }
}

#[test]
fn a_syn_flood_beyond_the_cache_meets_cookies_and_every_real_client_gets_through() {
    let seed = 0x4987;
    let _guard = SeedGuard("syn cookies", seed);
    let mut net = pair(
        LinkConfig {
            seed,
            delay: Duration::from_millis(1),
            ..Default::default()
        },
        cfg(CLIENT, seed, SynCookies::Never),
        cfg(SERVER, seed + 1, SynCookies::Auto),
    );
    let target = sa("10.0.0.2:80");
    let l = net.server().listen(target, Some(128)).unwrap();
    let mut rng = SeededRng::new(seed);

    let before = alloc::live_bytes();
    alloc::reset_peak();
    let mut real = Real::default();
    let mut sent = 0;
    let mut most_half_open = 0;
    while sent < FLOOD {
        for _ in 0..PER_TICK {
            net.inject_to(Server, &spoofed(&mut rng, target, TcpFlags::SYN));
            sent += 1;
            if sent % CLIENT_EVERY == 0 {
                let c = net.client().connect(target).unwrap();
                real.pending.push((c, real.attempts, net.now()));
                real.attempts += 1;
            }
        }
        net.run_for(Duration::from_micros(100), 100_000).unwrap();
        real.settle(&mut net, l);
        let half_open = net
            .node_ref(Server)
            .snapshot()
            .iter()
            .filter(|s| s.state == ephemera::SocketState::Tcp(TcpState::SynReceived))
            .count();
        most_half_open = most_half_open.max(half_open);
        net.server().check_invariants().unwrap();
    }
    let peak = alloc::peak_bytes() - before;
    net.run_until(1_000_000, |n| {
        real.settle(n, l);
        real.pending.is_empty() && real.serving.is_empty() && real.exact == real.attempts
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {} of {} connected, {} exact; {:?}",
            real.connected,
            real.attempts,
            real.exact,
            net.server().counters()
        )
    });
    let c = net.server().counters().clone();
    println!(
        "SYN cookies: {FLOOD} spoofed SYNs at {} SYN/s, 2 ms RTT; real client {}/{} connected \
         (worst {}), {} byte-exact; cookies sent {}, ok {}, failed {}; half-open at most {most_half_open}; \
         heap peak +{} KiB",
        PER_TICK * 10_000,
        real.connected,
        real.attempts,
        real.worst,
        real.exact,
        c.tcp_syn_cookies_sent,
        c.tcp_syn_cookies_ok,
        c.tcp_syn_cookies_failed,
        peak / 1024,
    );
    assert_eq!(real.attempts, FLOOD / CLIENT_EVERY);
    assert_eq!(real.connected, real.attempts, "every real client connects");
    assert_eq!(real.exact, real.attempts, "and carries its data byte-exact");
    // In one round trip: none waited for a SYN to be sent again (1 s).
    assert!(
        real.worst < Duration::from_millis(10),
        "worst connect {}",
        real.worst
    );
    assert!(most_half_open <= 128, "half-open {most_half_open}");
    // Until a half-open connection is old enough to evict (1 ms) the
    // flood is not yet told from a burst, and its SYNs are dropped.
    assert!(c.tcp_syn_cookies_sent >= FLOOD * 9 / 10, "{c:?}");
    assert_eq!(c.tcp_syn_cookies_failed, 0, "{c:?}");
    assert!(
        c.tcp_syn_cookies_ok >= 1,
        "some real client needed a cookie: {c:?}"
    );
    assert!(peak < 8 << 20, "heap grew by {peak} bytes under the flood");

    // Forged cookie ACKs: random sources, random acknowledgment numbers.
    // None makes a connection; each is counted and answered with RST.
    let failed = c.tcp_syn_cookies_failed;
    let sockets = net.server().socket_count();
    for _ in 0..10_000 {
        net.inject_to(Server, &spoofed(&mut rng, target, TcpFlags::ACK));
    }
    let c = net.server().counters().clone();
    assert_eq!(c.tcp_syn_cookies_failed, failed + 10_000);
    assert_eq!(net.server().socket_count(), sockets);
    assert!(net.server().accept(l).is_err());
}

/// The cookie the server answers a SYN from `from` with, and the peer ISN
/// of that SYN.
fn cookie_for(net: &mut Network, from: SocketAddr, to: SocketAddr) -> (u32, u32) {
    let isn = 0x1234_5678;
    net.inject_to(Server, &tcp(from, to, isn, 0, TcpFlags::SYN, 65535, b""));
    let now = net.now();
    let syn_ack = net
        .server()
        .poll_transmit(now)
        .and_then(|p| Seg::parse(&p))
        .unwrap();
    assert!(syn_ack.flags.syn() && syn_ack.flags.ack());
    assert_eq!(syn_ack.ack, isn + 1);
    (syn_ack.seq, isn)
}

#[test]
fn cookie_acks_are_taken_while_fresh_and_dropped_when_stale_or_forged() {
    // With `SynCookies::Always` no SYN leaves state behind.
    let seed = 0x3_6000;
    let mut net = pair(
        LinkConfig::default(),
        cfg(CLIENT, seed, SynCookies::Never),
        cfg(SERVER, seed + 1, SynCookies::Always),
    );
    let to = sa("10.0.0.2:80");
    let l = net.server().listen(to, None).unwrap();
    let peer = |p: u16| sa(&format!("10.0.9.9:{p}"));
    let ack = |from, seq: u32, ack: u32, data: &[u8]| {
        tcp(
            from,
            to,
            seq,
            ack,
            TcpFlags::ACK | TcpFlags::PSH,
            65535,
            data,
        )
    };
    let (fresh, fresh_isn) = cookie_for(&mut net, peer(1000), to);
    let (stale, stale_isn) = cookie_for(&mut net, peer(1001), to);
    let (wrong, wrong_isn) = cookie_for(&mut net, peer(1002), to);
    assert_eq!(net.server().socket_count(), 1, "only the listener");
    assert_eq!(net.server().counters().tcp_syn_cookies_sent, 3);

    // Two minutes on (a cookie lives 64 to 128 s): the fresh cookie
    // still works, and the data on its ACK arrives.
    net.run_for(Duration::from_secs(120), 1_000).unwrap();
    net.inject_to(Server, &ack(peer(1000), fresh_isn + 1, fresh + 1, b"hello"));
    assert_eq!(net.server().counters().tcp_syn_cookies_ok, 1);
    let s = net.server().accept(l).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(net.server().recv(s, &mut buf), Ok(5));
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(net.server().tcp_state(s), Some(TcpState::Established));

    // A cookie one off, or for another ISN, is forged.
    let before = net.server().counters().tcp_syn_cookies_failed;
    net.inject_to(Server, &ack(peer(1002), wrong_isn + 1, wrong + 2, b""));
    net.inject_to(Server, &ack(peer(1002), wrong_isn + 2, wrong + 1, b""));
    assert_eq!(net.server().counters().tcp_syn_cookies_failed, before + 2);
    // Past 128 s every cookie is stale.
    net.run_for(Duration::from_secs(10), 1_000).unwrap();
    net.inject_to(Server, &ack(peer(1001), stale_isn + 1, stale + 1, b""));
    let c = net.server().counters().clone();
    assert_eq!(c.tcp_syn_cookies_failed, before + 3);
    assert_eq!(c.tcp_syn_cookies_ok, 1);
    assert!(net.server().accept(l).is_err());
    net.server().check_invariants().unwrap();
}
