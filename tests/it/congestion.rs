//! Congestion control over a bottleneck: bulk flows from the server to the
//! client through a link of 10 Mbit/s each way (1.25 MB/s), 10 ms one-way
//! delay, and a drop-tail queue of 25 kB, one bandwidth-delay product
//! (1.25 MB/s × 20 ms), on the simulated clock.
//!
//! Both ends have 1 MiB buffers, so the receive window (1 MiB) never limits
//! a flow: only its congestion control stands between it and the queue.
//! The sender has Nagle's algorithm on, as a bulk sender should (Linux's
//! default): smoltcp counts the congestion window in bytes, and with Nagle
//! off it sends the few bytes each ACK adds to the window as a segment of
//! their own, whose duplicate ACKs during fast recovery each open the
//! window by a full segment again, which overruns the queue
//! (docs/performance-notes.md has the numbers).
//!
//! Throughput is goodput: octets the client's application read, per
//! simulated second, after a warm-up (slow start and its losses, as
//! iperf's `--omit`); at most 1460/1500 of the rate. Loss is the share of
//! the server's packets the queue dropped, over the whole run.

use std::num::NonZeroU64;

use ephemera::device::virtual_link::{Bottleneck, DirectionStats, LinkConfig, QueueLimit};
use ephemera::{CongestionControl, Duration, StackConfig, TcpHandle};

use crate::util::*;

/// The bottleneck's rate, bytes per second each way (10 Mbit/s).
const RATE: u64 = 1_250_000;
/// One-way delay.
const DELAY_MS: u64 = 10;
/// The drop-tail queue: one bandwidth-delay product.
const QUEUE: usize = (RATE * 2 * DELAY_MS / 1000) as usize;
/// Send and receive buffer of every connection.
const BUFFER: usize = 1 << 20;

/// What a run measured.
#[derive(Debug)]
struct Measured {
    /// Each flow's goodput over the measured interval, as a share of
    /// [`RATE`].
    share: Vec<f64>,
    /// Packets the queue dropped per packet the server offered it.
    loss: f64,
    /// The server's direction of the link.
    link: DirectionStats,
}

impl Measured {
    /// All flows' goodput together, as a share of [`RATE`].
    fn total(&self) -> f64 {
        self.share.iter().sum()
    }
}

/// One bulk flow: the server writes, the client reads.
struct Flow {
    server: TcpHandle,
    client: TcpHandle,
    read: u64,
    read_before: u64,
}

/// `flows` bulk flows under `cc`, the `i`-th started `i × stagger` after
/// the first; goodput measured from `warm` to `total` seconds.
fn run(cc: CongestionControl, flows: usize, stagger: Duration, warm: u64, total: u64) -> Measured {
    let stack = |addr, seed, nagle| StackConfig {
        congestion_control: cc,
        nagle,
        tcp_rx_buffer: BUFFER,
        tcp_tx_buffer: BUFFER,
        ..config(addr, seed)
    };
    let mut net = pair(
        LinkConfig {
            delay: Duration::from_millis(DELAY_MS),
            bottleneck: Some(Bottleneck {
                rate: NonZeroU64::new(RATE).unwrap(),
                queue: QueueLimit::Bytes(QUEUE),
            }),
            seed: 1,
            ..Default::default()
        },
        stack(CLIENT, 1, false),
        stack(SERVER, 2, true),
    );
    let l = net.server().listen(sa("10.0.0.2:5001"), None).unwrap();
    let chunk = vec![0x5a; 64 * 1024];
    let mut buf = vec![0; 64 * 1024];
    let t0 = net.now();
    let warm_at = t0 + Duration::from_secs(warm);
    let end = t0 + Duration::from_secs(total);
    let mut flow: Vec<Flow> = Vec::new();
    let mut link_before = None;
    // Each simulated second takes a few thousand steps per flow.
    net.run_until(20_000 * total * flows as u64, |n| {
        let now = n.now();
        if flow.len() < flows && now >= t0 + stagger * flow.len() as u32 {
            let (client, server) = establish(n, l);
            flow.push(Flow {
                server,
                client,
                read: 0,
                read_before: 0,
            });
        }
        for f in &mut flow {
            // Top up in large writes, as a bulk sender does.
            if n.server().send_queue(f.server) <= BUFFER - chunk.len() {
                while n.server().send(f.server, &chunk).is_ok() {}
            }
            while let Ok(k @ 1..) = n.client().recv(f.client, &mut buf) {
                f.read += k as u64;
            }
        }
        if link_before.is_none() && now >= warm_at {
            link_before = Some(n.direction_stats(Server.index(), Client.index()));
            for f in &mut flow {
                f.read_before = f.read;
            }
        }
        now >= end
    })
    .unwrap();
    assert_eq!(flow.len(), flows, "every flow started");
    let secs = (total - warm) as f64;
    let link = net.direction_stats(Server.index(), Client.index());
    let stats = net.stats();
    assert_eq!(stats.queue_drops, link.queue_drops, "data drops only");
    assert_eq!(stats.lost + stats.unroutable + stats.filtered, 0);
    Measured {
        share: flow
            .iter()
            .map(|f| (f.read - f.read_before) as f64 / secs / RATE as f64)
            .collect(),
        loss: link.queue_drops as f64 / (link.queue_drops + link.packets_accepted) as f64,
        link,
    }
}

#[test]
fn cubic_fills_the_bottleneck_with_little_loss() {
    let m = run(CongestionControl::Cubic, 1, Duration::ZERO, 5, 30);
    eprintln!("cubic, one flow: {m:?}");
    assert!(m.total() >= 0.90, "goodput {:.3} of the rate", m.total());
    assert!(m.loss < 0.01, "loss {:.4}", m.loss);
    // It did fill the queue: the losses are the queue's.
    assert!(m.link.queue_drops > 0);
    assert!(m.link.peak_queue_bytes + 1500 > QUEUE);
}

#[test]
fn reno_fills_most_of_the_bottleneck() {
    let m = run(CongestionControl::Reno, 1, Duration::ZERO, 5, 30);
    eprintln!("reno, one flow: {m:?}");
    assert!(m.total() >= 0.80, "goodput {:.3} of the rate", m.total());
    assert!(m.loss < 0.01, "loss {:.4}", m.loss);
}

/// Two flows, the second starting a second after the first, share the
/// bottleneck within 30 % of each other. Measured over three minutes: a
/// loss hits one flow and not the other, so over 20 s windows the shares
/// swing as far as 1:2 and back.
#[test]
fn two_flows_share_the_bottleneck() {
    for cc in [CongestionControl::Cubic, CongestionControl::Reno] {
        let m = run(cc, 2, Duration::from_secs(1), 20, 200);
        eprintln!("{cc}, two flows: {m:?}");
        let (a, b) = (m.share[0], m.share[1]);
        assert!(a.min(b) >= 0.7 * a.max(b), "{cc}: shares {a:.3} and {b:.3}");
        assert!(m.total() >= 0.90, "{cc}: goodput {:.3}", m.total());
        assert!(m.loss < 0.01, "{cc}: loss {:.4}", m.loss);
    }
}

/// Without congestion control a sender puts its whole window (1 MiB) on a
/// path that holds 50 kB: most of it is dropped, and what gets through
/// comes after retransmission timeouts that back off to seconds.
#[test]
fn without_congestion_control_the_queue_floods() {
    let none = run(CongestionControl::None, 1, Duration::ZERO, 5, 30);
    let cubic = run(CongestionControl::Cubic, 1, Duration::ZERO, 5, 30);
    eprintln!("none, one flow: {none:?}");
    assert!(none.loss >= 0.10, "loss {:.4}", none.loss);
    assert!(none.loss >= 10.0 * cubic.loss, "{none:?} against {cubic:?}");
    assert!(none.total() < 0.5, "goodput {:.3}", none.total());
}

/// The bottleneck has no randomness: the same run twice gives the same
/// drops and deliveries.
#[test]
fn the_bottleneck_is_deterministic() {
    let a = run(
        CongestionControl::Cubic,
        2,
        Duration::from_millis(300),
        1,
        3,
    );
    let b = run(
        CongestionControl::Cubic,
        2,
        Duration::from_millis(300),
        1,
        3,
    );
    assert!(a.link.queue_drops > 0, "{a:?}");
    assert_eq!(a.link, b.link);
    assert_eq!(a.share, b.share);
}
