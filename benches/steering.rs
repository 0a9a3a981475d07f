//! What steering costs a packet: the eBPF program the daemon attaches to a
//! multi-queue TUN (`device::steering`), run by the kernel over the same
//! packets it will steer, against the Rust function it must agree with
//! (`packet_owner`), for 2 and 16 shards.
//!
//! Not a criterion benchmark. The kernel times its own runs of the program
//! (`BPF_PROG_TEST_RUN` with a repeat count; its average per run, which
//! includes the test harness's per-run overhead, so an upper bound on what
//! steering adds to a packet's path); the Rust function is timed over a
//! loop of the same packets. Each cell is the median of 5 rounds. Loading
//! the program needs root (or CAP_BPF); without it the kernel column says
//! why.
//!
//! Output: markdown on stdout (appended to docs/performance.md by
//! `benches/run.sh`).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ephemera::device::steering::{packet_owner, SteeringProgram};
use ephemera::port_table::Shards;

const ROUNDS: usize = 5;
const REPEAT: u32 = 1_000_000;

fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            etherparse::PacketBuilder::ipv4(s.octets(), d.octets(), 64)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            etherparse::PacketBuilder::ipv6(s.octets(), d.octets(), 64)
        }
        _ => unreachable!("one family per packet"),
    };
    let b = b.tcp(sport, dport, 1, 65535).ack(1);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("a packet builds");
    out
}

/// An ICMP destination-unreachable quoting a TCP segment ephemera sent.
fn icmp_error(kernel: Ipv4Addr, stack: Ipv4Addr) -> Vec<u8> {
    let quoted = tcp(IpAddr::V4(stack), IpAddr::V4(kernel), 50123, 80, &[]);
    let b = etherparse::PacketBuilder::ipv4(kernel.octets(), stack.octets(), 64).icmpv4(
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ),
    );
    let mut out = Vec::new();
    b.write(&mut out, &quoted[..28]).expect("a packet builds");
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Nanoseconds per call, the median of the rounds.
fn rust_cost(shards: &Shards, packet: &[u8]) -> f64 {
    const N: u32 = 2_000_000;
    let per_round = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..N {
                black_box(packet_owner(black_box(shards), black_box(packet)));
            }
            t.elapsed()
        })
        .collect();
    median(per_round).as_nanos() as f64 / f64::from(N)
}

fn kernel_cost(prog: &SteeringProgram, packet: &[u8]) -> Result<Duration, String> {
    let mut v = Vec::new();
    for _ in 0..ROUNDS {
        v.push(prog.time_run(packet, REPEAT).map_err(|e| e.to_string())?);
    }
    Ok(median(v))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let kernel4 = Ipv4Addr::new(10, 7, 0, 1);
    let stack4 = Ipv4Addr::new(10, 7, 0, 2);
    let kernel6: Ipv6Addr = "fd00:7::1".parse().unwrap();
    let stack6: Ipv6Addr = "fd00:7::2".parse().unwrap();
    let packets = [
        (
            "IPv4 TCP reply to a connection ephemera opened (by local port)",
            tcp(kernel4.into(), stack4.into(), 80, 50123, &[0; 1448]),
        ),
        (
            "IPv4 TCP to a listener (by remote address and port: SipHash)",
            tcp(kernel4.into(), stack4.into(), 40000, 80, &[0; 100]),
        ),
        (
            "IPv6 TCP to a listener",
            tcp(kernel6.into(), stack6.into(), 40000, 80, &[0; 100]),
        ),
        (
            "ICMPv4 error quoting ephemera's segment",
            icmp_error(kernel4, stack4),
        ),
    ];
    println!("\n## Steering cost per packet\n");
    println!(
        "`benches/steering.rs`: the steering program of `ephemera up --queues N` run by the \
         kernel over one packet {REPEAT} times (`BPF_PROG_TEST_RUN`; the kernel's average, which \
         includes its test harness, so an upper bound), against the Rust function it agrees \
         with, `device::steering::packet_owner`, in a loop. Medians of {ROUNDS} rounds. \
         Nothing here is the TUN's own queue selection or locking.\n"
    );
    println!(
        "| packet | shards | eBPF in the kernel | Rust `packet_owner` |\n|---|---:|---:|---:|"
    );
    let mut rng = ephemera::SeededRng::new(7);
    for n in [2u16, 16] {
        let shards = Shards::new(n, 49152..=65535, &mut rng).expect("a valid split");
        let prog = SteeringProgram::load(&shards).map_err(|e| e.to_string());
        for (what, p) in &packets {
            let k = match &prog {
                Ok(prog) => match kernel_cost(prog, p) {
                    Ok(d) => format!("{} ns", d.as_nanos()),
                    Err(e) => format!("not measured ({e})"),
                },
                Err(e) => format!("not measured (cannot load: {e})"),
            };
            println!("| {what} | {n} | {k} | {:.1} ns |", rust_cost(&shards, p));
        }
    }
}
