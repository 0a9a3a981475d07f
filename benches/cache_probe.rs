//! The state of the machine's memory hierarchy, for the report's header:
//! the latency of a random pointer chase through 4 MB (which a quiet
//! last-level cache holds) and 64 MB (which it does not). On a virtual
//! machine the last-level cache is shared with other tenants, and the
//! figures at 100k connections move with it; `benches/run.sh` runs this
//! before and after the other benchmarks.
//!
//! Prints `size_mb<TAB>ns_per_load` rows.

use std::time::Instant;

/// One cache line per node, so each load is one line.
#[repr(align(64))]
#[derive(Clone, Copy)]
struct Node {
    next: usize,
}

fn chase_ns(mb: usize) -> f64 {
    let n = mb * 1024 * 1024 / std::mem::size_of::<Node>();
    // A random cycle through all nodes (Sattolo's algorithm), seeded.
    let mut order: Vec<usize> = (0..n).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % i as u64) as usize);
    }
    let mut nodes = vec![Node { next: 0 }; n];
    for w in 0..n {
        nodes[order[w]].next = order[(w + 1) % n];
    }
    let loads = 4_000_000;
    let mut p = 0;
    for _ in 0..n {
        p = nodes[p].next; // warm the TLB and whatever cache will hold
    }
    let start = Instant::now();
    for _ in 0..loads {
        p = nodes[p].next;
    }
    let ns = start.elapsed().as_nanos() as f64 / loads as f64;
    std::hint::black_box(p);
    ns
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    for mb in [4, 64] {
        println!("{mb}\t{:.1}", chase_ns(mb));
    }
}
