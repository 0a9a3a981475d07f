//! Shards without the kernel: does a stack on a second thread slow the
//! first one down?
//!
//! Not a criterion benchmark. Each worker thread owns a whole virtual link
//! with two stacks, a client and a server (what one shard of
//! `ephemera up --queues N` owns, plus its peer), and does a fixed amount
//! of work: short connections (connect, a 32-byte message echoed, close,
//! 64 at a time) or one bulk transfer (512 MiB to a server that reads and
//! discards). One thread against two threads started together, in the
//! same process, alternating, several rounds; the throughput is all
//! threads' work over the wall time from their common start to the last
//! one's end. With nothing shared on the packet path, two threads on two
//! idle CPUs do twice the work in the same time; what the ratio loses
//! below 2 is what the threads share (the allocator, the address space,
//! the memory bus and last-level cache) or the machine's other load. Two
//! controls in the same run say what this machine gives a second thread at
//! all: a loop in registers, and dependent loads at random places in a
//! buffer larger than the L2 cache.
//!
//! Output: markdown on stdout (appended to docs/performance.md by
//! `benches/run.sh`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::Instant as Wall;

use ephemera::device::virtual_link::{LinkConfig, Network};
use ephemera::{
    Duration, Event, Instant, PortTableConfig, RecvError, SendError, Stack, StackConfig, TcpHandle,
    TcpState,
};

const ROUNDS: usize = 9;
/// Echo cycles per thread and round.
const CYCLES: u64 = 50_000;
const CONCURRENT: usize = 64;
const MSG: usize = 32;
/// Steps per thread and round of the control loop.
const SPIN: u64 = 200_000_000;
/// Bytes per thread and round of the bulk transfer.
const BULK: usize = 512 << 20;

#[derive(Copy, Clone)]
enum Work {
    /// The control: arithmetic in registers, no memory, no allocation; its
    /// ratio is what this machine gives a second busy thread at all.
    Spin,
    /// The other control: dependent loads at random places in 32 MiB
    /// (past this machine's L2, into the last-level cache and memory).
    Chase,
    Short,
    Bulk,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Spin => "control: a register-only loop (no memory)",
            Work::Chase => "control: dependent random loads in 32 MiB per thread",
            Work::Short => "short connections (connect, 32-byte echo, close; 64 at a time)",
            Work::Bulk => "one bulk transfer (512 MiB, 256 KiB windows)",
        }
    }
    fn unit(self) -> &'static str {
        match self {
            Work::Spin => "M steps/s",
            Work::Chase => "M loads/s",
            Work::Short => "connections/s",
            Work::Bulk => "MB/s",
        }
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("\n## Shards without the kernel\n");
    println!(
        "`cargo bench --bench shards`: each thread owns a virtual link with a client stack and \
         a server stack and does a fixed amount of work; one thread against two started \
         together, alternating in one process, {ROUNDS} rounds; throughput is all threads' \
         work over the wall time from their common start to the last one's end; medians \
         (min–max). {cpus} CPUs, nothing else of the benchmark running; two controls (a loop in \
         registers, dependent loads in a buffer past the L2 cache) say what the machine gives \
         a second busy thread at all. Each thread runs both ends and the link, so a thread is \
         about twice a shard's work; the TUN, the kernel and the steering program are not in \
         it (see the sections above). It measures what two shards share in the process: the \
         allocator, the address space (page faults, TLB shootdowns), the memory bus and \
         cache.\n"
    );
    println!(
        "| workload | 1 thread | 2 threads | 2 over 1 (rounds' range) |\n|---|---:|---:|---:|"
    );
    for work in [Work::Spin, Work::Chase, Work::Short, Work::Bulk] {
        let mut one = Vec::new();
        let mut two = Vec::new();
        let mut ratios = Vec::new();
        for _ in 0..ROUNDS {
            let a = run(work, 1);
            let b = run(work, 2);
            one.push(a);
            two.push(b);
            ratios.push(b / a);
        }
        let (m1, m2) = (median(&mut one), median(&mut two));
        ratios.sort_by(f64::total_cmp);
        println!(
            "| {} | {} | {} | **{:.2}×** ({:.2}–{:.2}) |",
            work.name(),
            spread(m1, &one, work.unit()),
            spread(m2, &two, work.unit()),
            m2 / m1,
            ratios[0],
            ratios[ROUNDS - 1]
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(median: f64, sorted: &[f64], unit: &str) -> String {
    format!(
        "{median:.0} {unit} ({:.0}–{:.0})",
        sorted[0],
        sorted[sorted.len() - 1]
    )
}

/// Throughput of `threads` threads each doing one unit of `work`.
fn run(work: Work, threads: usize) -> f64 {
    let start = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let start = start.clone();
            std::thread::spawn(move || {
                // Set up before the common start, outside the timing.
                let seed = i as u64;
                let job: Box<dyn FnOnce() -> u64> = match work {
                    Work::Spin => Box::new(move || spin(seed)),
                    Work::Chase => {
                        let ring = chain(seed);
                        Box::new(move || chase(&ring))
                    }
                    Work::Short => {
                        let mut net = link(seed, 512);
                        Box::new(move || echo_cycles(&mut net))
                    }
                    Work::Bulk => {
                        let mut net = link(seed, 256 << 10);
                        Box::new(move || bulk(&mut net))
                    }
                };
                start.wait();
                job()
            })
        })
        .collect();
    start.wait();
    let t = Wall::now();
    let done: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let secs = t.elapsed().as_secs_f64();
    match work {
        Work::Short => done as f64 / secs,
        Work::Spin | Work::Chase | Work::Bulk => done as f64 / secs / 1e6,
    }
}

const CLIENT: &str = "10.0.0.1";
const SERVER: &str = "10.0.0.2";

/// A client and a server stack on a link of their own, with `buffer`
/// octets each way per connection.
fn link(seed: u64, buffer: usize) -> Network {
    let stack = |addr: &str, seed: u64| {
        let cfg = StackConfig {
            addrs: vec![(addr.parse().unwrap(), 24)],
            tcp_rx_buffer: buffer,
            tcp_tx_buffer: buffer,
            backlog: 1024,
            syn_backlog: 1024,
            ports: PortTableConfig {
                // Short, so that the table stays at its steady size within
                // a round's simulated time.
                time_wait: std::time::Duration::from_millis(50),
                ..Default::default()
            },
            seed: Some(seed),
            ..Default::default()
        };
        Stack::new(cfg, Instant::from_millis(0)).unwrap()
    };
    let mut net = Network::new(LinkConfig {
        seed,
        ..Default::default()
    });
    net.add(stack(CLIENT, 2 * seed), &[CLIENT.parse().unwrap()]);
    net.add(stack(SERVER, 2 * seed + 1), &[SERVER.parse().unwrap()]);
    net
}

fn server() -> SocketAddr {
    SocketAddr::new(SERVER.parse().unwrap(), 80)
}

/// [`SPIN`] steps of xorshift64, kept in a register; returns the count.
fn spin(seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..SPIN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x);
    SPIN
}

/// Slots of the chased ring: 32 MiB of `u64`.
const SLOTS: usize = 4 << 20;
/// Loads per thread and round of the chase.
const LOADS: u64 = 4_000_000;

/// One random cycle through all [`SLOTS`]: `ring[i]` is the next index.
fn chain(seed: u64) -> Vec<u64> {
    let mut order: Vec<u64> = (0..SLOTS as u64).collect();
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in (1..SLOTS).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let mut ring = vec![0u64; SLOTS];
    for w in 0..SLOTS {
        ring[order[w] as usize] = order[(w + 1) % SLOTS];
    }
    ring
}

/// [`LOADS`] dependent loads around `ring`; returns the count.
fn chase(ring: &[u64]) -> u64 {
    let mut i = 0u64;
    for _ in 0..LOADS {
        i = ring[i as usize];
    }
    std::hint::black_box(i);
    LOADS
}

/// [`CYCLES`] echo cycles, [`CONCURRENT`] at a time; returns the number
/// completed (every one, or it panics).
fn echo_cycles(net: &mut Network) -> u64 {
    let l = net.stack(1).listen(server(), None).unwrap();
    // Client side: bytes of the echo received, or `None` before sending.
    let mut clients: HashMap<TcpHandle, Option<usize>> = HashMap::new();
    let mut servers: HashSet<TcpHandle> = HashSet::new();
    let (mut started, mut done) = (0u64, 0u64);
    let msg = [0x5au8; MSG];
    let mut buf = [0u8; MSG];
    while done < CYCLES {
        while clients.len() < CONCURRENT && started < CYCLES {
            let c = net.stack(0).connect(server()).expect("a free port");
            clients.insert(c, None);
            started += 1;
        }
        net.step();
        let s = net.stack(1);
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::Incoming(_) => {
                    while let Ok(h) = s.accept(l) {
                        servers.insert(h);
                    }
                }
                Event::Tcp(h) if servers.contains(&h) => loop {
                    match s.recv(h, &mut buf) {
                        Ok(0) => {
                            s.close(h);
                            servers.remove(&h);
                            break;
                        }
                        Ok(n) => assert_eq!(s.send(h, &buf[..n]), Ok(n)),
                        Err(RecvError::WouldBlock) => break,
                        Err(e) => panic!("server recv: {e}"),
                    }
                },
                _ => {}
            }
        }
        let c = net.stack(0);
        while let Some(ev) = c.poll_event() {
            let Event::Tcp(h) = ev else { continue };
            let Some(&got) = clients.get(&h) else {
                continue;
            };
            let mut have = match got {
                None if c.tcp_state(h) == Some(TcpState::Established) => {
                    assert_eq!(c.send(h, &msg), Ok(MSG));
                    0
                }
                None => continue,
                Some(n) => n,
            };
            loop {
                match c.recv(h, &mut buf) {
                    Ok(0) => panic!("EOF before the echo"),
                    Ok(n) => have += n,
                    Err(RecvError::WouldBlock) => break,
                    Err(e) => panic!("client recv: {e}"),
                }
            }
            if have == MSG {
                c.close(h);
                clients.remove(&h);
                done += 1;
            } else {
                clients.insert(h, Some(have));
            }
        }
    }
    done
}

/// [`BULK`] bytes from the client to a server that discards them; returns
/// the bytes the server read.
fn bulk(net: &mut Network) -> u64 {
    let l = net.stack(1).listen(server(), None).unwrap();
    let c = net.stack(0).connect(server()).expect("a free port");
    let chunk = vec![0xa5u8; 64 << 10];
    let mut buf = vec![0u8; 64 << 10];
    let (mut sent, mut read) = (0usize, 0u64);
    let mut s = None;
    while read < BULK as u64 {
        let client = net.stack(0);
        while client.poll_event().is_some() {}
        while sent < BULK && client.tcp_state(c) == Some(TcpState::Established) {
            let n = chunk.len().min(BULK - sent);
            match client.send(c, &chunk[..n]) {
                Ok(0) | Err(SendError::WouldBlock) => break,
                Ok(k) => sent += k,
                Err(e) => panic!("client send: {e}"),
            }
        }
        net.step();
        let server = net.stack(1);
        while server.poll_event().is_some() {}
        if s.is_none() {
            s = server.accept(l).ok();
        }
        if let Some(h) = s {
            loop {
                match server.recv(h, &mut buf) {
                    Ok(0) => panic!("EOF before the last byte"),
                    Ok(n) => read += n as u64,
                    Err(RecvError::WouldBlock) => break,
                    Err(e) => panic!("server recv: {e}"),
                }
            }
        }
    }
    net.run_for(Duration::from_millis(1), 1_000_000).unwrap();
    read
}
