//! Bytes per idle established connection: heap counted by a global
//! allocator, plus the buffer pages the kernel backs (ephemera's TCP
//! buffers live in the buffer pool's lazily backed mappings,
//! measured with `mincore`).
//!
//! Not a criterion benchmark: it opens `N` connections on a server stack,
//! lets them sit idle, and reports bytes held per connection (buffers,
//! smoltcp socket, slab entry, port-table entry), for several settings of
//! `StackConfig::tcp_rx_buffer` / `tcp_tx_buffer`, and for a stock smoltcp
//! socket with the same buffers. A last row, `ephemera-used`, measures
//! connections that carried 20 kB each way and then sat idle for 2 s (both
//! ends of each connection are ephemera stacks; bytes per end).
//!
//! Output: one tab-separated line per configuration on stdout.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Connections per measurement.
const N: usize = 5_000;

/// Heap bytes per connection while `build` holds `N` of them.
fn measure<T>(build: impl FnOnce() -> T) -> usize {
    let h0 = LIVE.load(Ordering::Relaxed);
    let held = build();
    let h1 = LIVE.load(Ordering::Relaxed);
    drop(held);
    h1.saturating_sub(h0) / N
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not run
    // this at full size.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("stack\trx_buffer\ttx_buffer\tbytes_per_conn");
    let default = ephemera::StackConfig::default();
    let sizes = [
        (default.tcp_rx_buffer, default.tcp_tx_buffer),
        (16 * 1024, 16 * 1024),
        (4096, 4096),
        (2048, 2048),
        (1024, 1024),
    ];
    for (rx, tx) in sizes {
        let mut resident = 0;
        let heap = measure(|| {
            let mut peers = Vec::with_capacity(N);
            let s = EphemeraServer::new(ephemera_config(rx, tx), N, &mut peers);
            resident = s.stack.buffer_resident_bytes() / N;
            (s, peers)
        });
        println!("ephemera\t{rx}\t{tx}\t{}", heap + resident);
        let heap = measure(|| {
            let mut peers = Vec::with_capacity(N);
            let s = StockServer::new(rx, tx, N, &mut peers);
            (s, peers)
        });
        println!("smoltcp\t{rx}\t{tx}\t{heap}");
    }
    let (rx, tx) = (default.tcp_rx_buffer, default.tcp_tx_buffer);
    println!("ephemera-used\t{rx}\t{tx}\t{}", used_then_idle(1_000));
}

/// Bytes per connection end after `n` connections each carried 20 kB both
/// ways and then sat idle past `StackConfig::shrink_idle_after`.
fn used_then_idle(n: usize) -> usize {
    use ephemera::device::virtual_link::{LinkConfig, Network};
    use ephemera::{Duration, Instant, Stack, StackConfig};
    let h0 = LIVE.load(Ordering::Relaxed);
    let mut net = Network::new(LinkConfig::default());
    for ip in ["10.0.0.1", "10.0.0.2"] {
        let cfg = StackConfig {
            addrs: vec![(ip.parse().unwrap(), 24)],
            backlog: n,
            syn_backlog: n,
            seed: Some(9),
            ..Default::default()
        };
        net.add(
            Stack::new(cfg, Instant::from_millis(0)).unwrap(),
            &[ip.parse().unwrap()],
        );
    }
    let l = net
        .stack(1)
        .listen("0.0.0.0:80".parse().unwrap(), None)
        .unwrap();
    let clients: Vec<_> = (0..n)
        .map(|_| {
            net.stack(0)
                .connect("10.0.0.2:80".parse().unwrap())
                .unwrap()
        })
        .collect();
    let mut servers = Vec::new();
    net.run_until(1_000_000, |net| {
        while let Ok(s) = net.stack(1).accept(l) {
            servers.push(s);
        }
        servers.len() == n
    })
    .expect("accepted");
    let data = vec![7u8; 20_000];
    let mut buf = vec![0u8; 32 * 1024];
    // [client sent, server sent, server got, client got] per connection.
    let mut progress = vec![[0usize; 4]; n];
    net.run_until(10_000_000, |net| {
        for (i, p) in progress.iter_mut().enumerate() {
            for (side, h) in [(0, clients[i]), (1, servers[i])] {
                if p[side] < data.len() {
                    if let Ok(k) = net.stack(side).send(h, &data[p[side]..]) {
                        p[side] += k;
                    }
                }
                while let Ok(k) = net.stack(side).recv(h, &mut buf) {
                    if k == 0 {
                        break;
                    }
                    p[3 - side] += k;
                }
            }
        }
        progress
            .iter()
            .all(|p| p[2] == data.len() && p[3] == data.len())
    })
    .expect("transferred");
    net.run_for(Duration::from_secs(2), 10_000_000)
        .expect("idle");
    let resident = net.stack(0).buffer_resident_bytes() + net.stack(1).buffer_resident_bytes();
    let heap = LIVE.load(Ordering::Relaxed).saturating_sub(h0);
    drop(net);
    (heap + resident) / (2 * n)
}
