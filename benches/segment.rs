//! Per-segment cost against the number of open connections: one data
//! segment in on a random connection, the application reads it, its ACK
//! out — for ephemera's `Stack` and for a stock smoltcp `Interface` with
//! one `SocketSet` holding the same connections.
//!
//! Segments are built outside the timed routine (`iter_batched`), each with
//! the sequence number its connection expects next.

mod common;

use std::time::Duration;

use common::*;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};

/// Connection counts to measure.
const SIZES: [usize; 4] = [100, 1_000, 10_000, 100_000];
/// Buffers of every connection on both stacks (small, so 100k fit twice in
/// memory; the per-segment path does not depend on their size).
const BUF: usize = 2048;

fn bench_one(c: &mut Criterion, n: usize, name: &str, server: &mut dyn Server, peers: &mut [Peer]) {
    sanity(server, peers, 200);
    let mut group = c.benchmark_group("segment");
    if n >= 10_000 {
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(3));
    } else {
        group.sample_size(30);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));
    }
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d ^ n as u64);
    group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
        b.iter_batched(
            || {
                let i = rng.below(peers.len());
                (i, data_segment(&mut peers[i]))
            },
            |(i, mut packet)| {
                server.segment(i, &mut packet);
                packet
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn segment(c: &mut Criterion) {
    for n in SIZES {
        // One stack at a time, so only one set of n connections is in memory.
        {
            let mut peers = Vec::with_capacity(n);
            let mut s = EphemeraServer::new(ephemera_config(BUF, BUF), n, &mut peers);
            bench_one(c, n, "ephemera", &mut s, &mut peers);
        }
        {
            let mut peers = Vec::with_capacity(n);
            let mut s = StockServer::new(BUF, BUF, n, &mut peers);
            bench_one(c, n, "smoltcp", &mut s, &mut peers);
        }
    }
}

criterion_group!(benches, segment);
criterion_main!(benches);
