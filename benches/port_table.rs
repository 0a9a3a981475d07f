//! Port-table micro-benchmarks: 4-tuple lookup (hit and miss) at 10k, 100k
//! and 1M flows; ephemeral allocation at 0/50/90/99 % occupancy of the
//! range towards one destination; listener lookup among many wildcard and
//! specific listeners.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ephemera::port_table::{FlowKey, Lookup, PortTable, PortTableConfig, Protocol};
use ephemera::SeededRng;

fn v4(a: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

/// Flow `i`: 10.0.0.2:80 from 10.64.0.0 + i / 60000, port 1024 + i % 60000.
fn flow(i: usize) -> FlowKey {
    let base = u32::from(Ipv4Addr::new(10, 64, 0, 0));
    FlowKey::new(
        Protocol::Tcp,
        SocketAddr::new(v4(u32::from(Ipv4Addr::new(10, 0, 0, 2))), 80),
        SocketAddr::new(v4(base + (i / 60_000) as u32), 1024 + (i % 60_000) as u16),
    )
}

/// Step of the walk over the flows: prime, so `i -> (i + STRIDE) % n`
/// visits all of `0..n` before it repeats. Table positions come from the
/// hash, so every lookup lands somewhere unrelated to the last.
const STRIDE: usize = 7919;

/// The flow after `i` on the walk (a compare, not a division: the
/// one-at-a-time loop waits on this too).
fn next(i: usize, n: usize) -> usize {
    let j = i + STRIDE;
    if j >= n {
        j - n
    } else {
        j
    }
}

/// Keys are built per lookup from the flow number, as the demux builds
/// them from a packet: an array of a million 68-byte keys would stream
/// through the cache and push the table out of it.
fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for n in [10_000usize, 100_000, 1_000_000] {
        let mut rng = SeededRng::new(1);
        let mut t: PortTable<u32> = PortTable::new(PortTableConfig::default(), &mut rng).unwrap();
        for i in 0..n {
            t.insert(flow(i), i as u32).unwrap();
        }
        // A miss is the same shape from ports/addresses never inserted.
        for (name, offset) in [("hit", 0), ("miss", n)] {
            let mut i = 0;
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    i = next(i, n);
                    black_box(t.lookup(&flow(black_box(i + offset))))
                })
            });
        }
        // Hits one at a time: the next flow follows from this lookup's
        // answer, so the CPU cannot overlap one lookup's cache misses with
        // the next one's — the latency a packet sees.
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("hit-serial", n), &n, |b, _| {
            b.iter(|| {
                let found = match t.lookup(&flow(i)) {
                    Lookup::Flow(h) => h as usize,
                    _ => 0,
                };
                i = next(found, n);
                found
            })
        });
    }
    group.finish();
}

fn allocate(c: &mut Criterion) {
    let mut group = c.benchmark_group("allocate");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    let local = v4(u32::from(Ipv4Addr::new(10, 0, 0, 2)));
    let remote = SocketAddr::new(v4(u32::from(Ipv4Addr::new(93, 184, 216, 34))), 443);
    let range = PortTableConfig::default().ephemeral;
    let size = (*range.end() - *range.start()) as usize + 1;
    for pct in [0usize, 50, 90, 99] {
        let mut rng = SeededRng::new(2);
        let mut t: PortTable<u32> = PortTable::new(PortTableConfig::default(), &mut rng).unwrap();
        for i in 0..size * pct / 100 {
            t.allocate(Protocol::Tcp, local, remote, i as u32, &mut rng)
                .unwrap();
        }
        // allocate + release keeps the occupancy where it is.
        group.bench_with_input(BenchmarkId::new("alloc+release", pct), &pct, |b, _| {
            b.iter(|| {
                let key = t
                    .allocate(Protocol::Tcp, local, remote, 0, &mut rng)
                    .unwrap();
                t.release(black_box(&key))
            })
        });
    }
    group.finish();
}

fn listeners(c: &mut Criterion) {
    let mut group = c.benchmark_group("listener");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    let mut rng = SeededRng::new(3);
    let mut t: PortTable<u32> = PortTable::new(PortTableConfig::default(), &mut rng).unwrap();
    // 1000 wildcard listeners on ports 1000..2000, and 1000 specific ones:
    // ports 3000..3100 on each of 10 local addresses.
    let wild = v4(0);
    let addr = |j: u32| v4(u32::from(Ipv4Addr::new(10, 0, 0, 2)) + j);
    for p in 1000..2000u16 {
        t.bind(Protocol::Tcp, SocketAddr::new(wild, p), p as u32, &mut rng)
            .unwrap();
    }
    for j in 0..10 {
        for p in 3000..3100u16 {
            t.bind(
                Protocol::Tcp,
                SocketAddr::new(addr(j), p),
                p as u32,
                &mut rng,
            )
            .unwrap();
        }
    }
    let remote = SocketAddr::new(v4(u32::from(Ipv4Addr::new(10, 9, 9, 9))), 40000);
    let cases = [
        ("specific", SocketAddr::new(addr(5), 3050)),
        ("wildcard", SocketAddr::new(addr(5), 1500)),
        ("none", SocketAddr::new(addr(5), 2500)),
    ];
    for (name, local) in cases {
        let key = FlowKey::new(Protocol::Tcp, local, remote);
        group.bench_function(name, |b| b.iter(|| black_box(t.lookup(black_box(&key)))));
    }
    group.finish();
}

criterion_group!(benches, lookup, allocate, listeners);
criterion_main!(benches);
