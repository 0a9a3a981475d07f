//! Bytes per idle established connection, counted by a global allocator.
//!
//! Not a criterion benchmark: it opens `N` connections on a server stack,
//! lets them sit idle, and reports heap bytes held per connection (buffers,
//! smoltcp socket, slab entry, port-table entry), for several settings of
//! `StackConfig::tcp_rx_buffer` / `tcp_tx_buffer`, and for a stock smoltcp
//! socket with the same buffers. (Resident memory is not reported: the
//! allocator reuses what earlier measurements freed, so RSS deltas within
//! one process say nothing.)
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
    println!("stack\trx_buffer\ttx_buffer\theap_bytes_per_conn");
    let default = ephemera::StackConfig::default();
    let sizes = [
        (default.tcp_rx_buffer, default.tcp_tx_buffer),
        (16 * 1024, 16 * 1024),
        (4096, 4096),
        (2048, 2048),
        (1024, 1024),
    ];
    for (rx, tx) in sizes {
        let heap = measure(|| {
            let mut peers = Vec::with_capacity(N);
            let s = EphemeraServer::new(ephemera_config(rx, tx), N, &mut peers);
            (s, peers)
        });
        println!("ephemera\t{rx}\t{tx}\t{heap}");
        let heap = measure(|| {
            let mut peers = Vec::with_capacity(N);
            let s = StockServer::new(rx, tx, N, &mut peers);
            (s, peers)
        });
        println!("smoltcp\t{rx}\t{tx}\t{heap}");
    }
}
