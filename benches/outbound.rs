//! Outbound scale: how many concurrent outbound connections one address
//! holds, and what `connect` costs as the ephemeral range fills.
//!
//! Not a criterion benchmark. A client stack at 10.0.0.1 opens connections
//! through the API to five server ports of one server stack over the
//! virtual link, until every port of the ephemeral range is taken towards
//! each; all of them are established and held open at once. Per
//! destination, the wall time of `Stack::connect` is reported for each
//! tenth of the range (the cost of RFC 6056 allocation plus socket setup),
//! in the same process, so the ratio last/first holds on a noisy machine.
//!
//! Output: markdown on stdout (appended to docs/performance.md by
//! `benches/run.sh`).

use std::net::SocketAddr;
use std::time::Instant as Wall;

use ephemera::device::virtual_link::{LinkConfig, Network};
use ephemera::{Instant, Stack, StackConfig, TcpState};

const PORTS: [u16; 5] = [80, 81, 82, 83, 84];

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let stack = |ip: &str| {
        let cfg = StackConfig {
            addrs: vec![(ip.parse().unwrap(), 24)],
            tcp_rx_buffer: 2048,
            tcp_tx_buffer: 2048,
            backlog: 1 << 20,
            syn_backlog: 1 << 20,
            seed: Some(3),
            ..Default::default()
        };
        Stack::new(cfg, Instant::from_millis(0)).unwrap()
    };
    let mut net = Network::new(LinkConfig::default());
    net.add(stack("10.0.0.1"), &["10.0.0.1".parse().unwrap()]);
    net.add(stack("10.0.0.2"), &["10.0.0.2".parse().unwrap()]);
    let listeners: Vec<_> = PORTS
        .iter()
        .map(|p| {
            net.stack(1)
                .listen(SocketAddr::new("10.0.0.2".parse().unwrap(), *p), None)
                .unwrap()
        })
        .collect();

    let range = 65535 - 49152 + 1;
    let mut conns = Vec::new();
    // Nanoseconds per connect, per tenth of the range, summed over ports.
    let mut tenths = [0f64; 10];
    let mut refused_at = Vec::new();
    let mut accepted = 0;
    for &port in &PORTS {
        let remote = SocketAddr::new("10.0.0.2".parse().unwrap(), port);
        for (tenth, cost) in tenths.iter_mut().enumerate() {
            let n = range * (tenth + 1) / 10 - range * tenth / 10;
            let t = Wall::now();
            for _ in 0..n {
                conns.push(net.stack(0).connect(remote).expect("a free port"));
            }
            *cost += t.elapsed().as_nanos() as f64 / n as f64;
        }
        // The range is full towards this destination: refused at once.
        let t = Wall::now();
        let e = net.stack(0).connect(remote).unwrap_err();
        refused_at.push((e, t.elapsed().as_nanos()));
        // Establish them (and accept on the server) before the next port.
        net.run_until(2_000_000, |n| {
            for &l in &listeners {
                while n.stack(1).accept(l).is_ok() {
                    accepted += 1;
                }
            }
            accepted == conns.len()
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}: accepted {accepted} of {}\nclient {:?}\nserver {:?}\nlink {:?}\npoll_at {:?} {:?}",
                conns.len(),
                net.stack_ref(0).counters(),
                net.stack_ref(1).counters(),
                net.stats(),
                net.stack_ref(0).poll_at(),
                net.stack_ref(1).poll_at()
            )
        });
    }
    let established = conns
        .iter()
        .filter(|&&c| net.stack_ref(0).tcp_state(c) == Some(TcpState::Established))
        .count();
    let local_ips: std::collections::HashSet<_> = conns
        .iter()
        .map(|&c| net.stack_ref(0).local_addr(c).unwrap().ip())
        .collect();

    println!("\n## Outbound scale\n");
    println!(
        "`cargo bench --bench outbound`: one client address opens connections through the API \
         to {} server ports until the ephemeral range (49152–65535) is full towards each, and \
         holds them all open.\n",
        PORTS.len()
    );
    println!(
        "- concurrent outbound connections from one address ({local_ips:?}): **{established}** \
         established at once ({} per destination)",
        range
    );
    let (e, ns) = &refused_at[0];
    println!("- the next connect to a full destination: `{e}` after {ns} ns\n");
    println!("| range occupancy | mean `connect` cost |\n|---|---:|");
    for (i, t) in tenths.iter().enumerate() {
        println!(
            "| {}–{} % | {:.0} ns |",
            i * 10,
            (i + 1) * 10,
            t / PORTS.len() as f64
        );
    }
    println!(
        "\nLast tenth / first tenth: **{:.2}×** (allocation stays bounded as the range fills).",
        tenths[9] / tenths[0]
    );
}
