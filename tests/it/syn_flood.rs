//! SYN flood: 100,000 SYNs from random spoofed sources at a listener with
//! backlog 128 while a real client keeps connecting. The heap is counted
//! for this test's thread alone (`crate::alloc`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ephemera::device::virtual_link::{LinkConfig, Network};
use ephemera::wire::TcpFlags;
use ephemera::{
    Duration, Instant, ListenerHandle, Rng, SeededRng, StackConfig, TcpHandle, TcpState,
};

use crate::alloc;
use crate::util::*;

const FLOOD: u64 = 100_000;
/// Spoofed SYNs per simulated millisecond: 50,000 SYN/s.
const PER_MS: u64 = 50;
/// The real client connects once per this many flood SYNs.
const CLIENT_EVERY: u64 = 1_000;

fn small(addr: &str, seed: u64) -> StackConfig {
    StackConfig {
        tcp_rx_buffer: 4096,
        tcp_tx_buffer: 4096,
        backlog: 128,
        syn_backlog: 128,
        ..config(addr, seed)
    }
}

/// The real client's connections in flight, and how they fared.
#[derive(Default)]
struct RealClient {
    pending: Vec<(TcpHandle, Instant)>,
    attempts: u64,
    connected: u64,
    worst: Duration,
}

impl RealClient {
    /// The server accepts and closes whatever is waiting; the client
    /// closes each connection once it is established, keeping the longest
    /// time one took.
    fn settle(&mut self, net: &mut Network, l: ListenerHandle) {
        for s in accept_all(net, l) {
            net.server().close(s);
        }
        let now = net.now();
        let client = net.client();
        self.pending.retain(|&(c, t0)| match client.tcp_state(c) {
            Some(TcpState::Established) => {
                self.worst = self.worst.max(now - t0);
                self.connected += 1;
                client.close(c);
                false
            }
            Some(TcpState::SynSent) => true,
            other => panic!("real client connection ended in {other:?}"),
        });
    }
}

#[test]
fn syn_flood_is_absorbed_and_the_real_client_gets_through() {
    let seed = 0x5_f100d;
    let _guard = SeedGuard("syn flood", seed);
    let mut net = pair(
        LinkConfig {
            seed,
            ..Default::default()
        },
        small(CLIENT, seed),
        small(SERVER, seed + 1),
    );
    let l = net.server().listen(sa("10.0.0.2:80"), Some(128)).unwrap();
    let target = sa("10.0.0.2:80");
    let mut rng = SeededRng::new(seed);

    let before = alloc::live_bytes();
    alloc::reset_peak();
    let mut real = RealClient::default();
    let mut sent = 0;
    while sent < FLOOD {
        for _ in 0..PER_MS {
            // Random sources in 172.16.0.0/12: no stack owns them, so the
            // SYN-ACKs go nowhere, as with a spoofing attacker.
            let r = rng.next_u64();
            let src = Ipv4Addr::from(0xac10_0000 | (r as u32 & 0x000f_ffff));
            let port = 1024 + (r >> 32) as u16 % 64_000;
            let syn = tcp(
                SocketAddr::new(IpAddr::V4(src), port),
                target,
                (r >> 16) as u32,
                0,
                TcpFlags::SYN,
                64_240,
                b"",
            );
            net.inject_to(Server, &syn);
            sent += 1;
            if sent % CLIENT_EVERY == 0 {
                let c = net.client().connect(target).unwrap();
                real.pending.push((c, net.now()));
                real.attempts += 1;
            }
        }
        net.run_for(Duration::from_millis(1), 100_000).unwrap();
        real.settle(&mut net, l);
        // Half-open count within its limit, queues and table in agreement.
        net.server().check_invariants().unwrap();
    }
    let peak = alloc::peak_bytes() - before;
    net.run_until(100_000, |n| {
        real.settle(n, l);
        real.pending.is_empty()
    })
    .unwrap();
    // Everything the flood left behind times out on its own.
    for _ in 0..300 {
        net.run_for(Duration::from_secs(1), 1_000_000).unwrap();
        real.settle(&mut net, l);
    }
    let RealClient {
        attempts,
        connected,
        worst,
        ..
    } = real;
    let after = alloc::live_bytes();
    let server = net.server();
    server.check_invariants().unwrap();
    let c = server.counters().clone();
    println!(
        "SYN flood: {FLOOD} spoofed SYNs at {} SYN/s; real client {connected}/{attempts} connected, worst {worst}; \
         half-open evicted {}, syn dropped {}; heap peak +{} KiB, after {} KiB -> {} KiB",
        PER_MS * 1000,
        c.drop_half_open_evicted,
        c.drop_syn_queue_full,
        peak / 1024,
        before / 1024,
        after / 1024,
    );
    assert_eq!(connected, attempts, "the real client must get through");
    assert!(worst < Duration::from_millis(100), "worst connect {worst}");
    assert!(
        c.drop_half_open_evicted + c.drop_syn_queue_full >= FLOOD - 128,
        "flood drops are counted: {c:?}"
    );
    assert!(peak < 8 << 20, "heap grew by {peak} bytes under the flood");
    assert_eq!(
        server.socket_count(),
        1,
        "only the listener is left: {:?}",
        server.snapshot()
    );
    assert_eq!(server.port_table().live_flows(), 0);
    // What stays is capacity (hash maps, slab, the timer heap, which held
    // a stale entry per evicted SYN until its deadline), not per-SYN state.
    assert!(after <= before + (2 << 20), "heap {before} -> {after}");
    assert_eq!(
        net.client().socket_count(),
        0,
        "client: {:?}",
        net.client().snapshot()
    );
}
