//! `ephemera up --queues N`: N stack shards on a multi-queue TUN, each
//! flow on its owner's queue. A thousand concurrent curl downloads from the
//! daemon's HTTP service and a thousand through its SOCKS proxy, every body
//! checked byte for byte; then the stats say where packets went, the port
//! table shows flows on several shards, and SIGTERM takes every queue away.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::*;

/// Transfers per curl process (`--parallel-max` is at most 300 in curl
/// 7.x), all started at once.
const PER_CURL: usize = 250;

/// The length of download `i`: all different, so a body delivered to the
/// wrong transfer cannot pass.
fn len_of(i: usize) -> usize {
    2_000 + i * 37
}

/// A python3 HTTP/1.0 server on 10.7.0.1:8000 whose `/bytes/N` is the
/// daemon's `/bytes/N` body, with a listen queue for a thousand clients.
fn start_bytes_server(ns: &mut Netns) {
    const SERVER: &str = r#"
import http.server
PERIOD = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\n"
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        n = int(self.path.rsplit("/", 1)[1])
        body = (PERIOD * (n // len(PERIOD) + 1))[:n]
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 4096
server = Server(("10.7.0.1", 8000), Handler)
print("ready", flush=True)
server.serve_forever()
"#;
    let cmd = ns.command(&["python3", "-c", SERVER]);
    ns.spawn_ready(cmd, "python3 bytes server");
}

/// Run `n` concurrent curl downloads of `url_of(i)` (extra curl options
/// `args`), `PER_CURL` per curl process, and check every body against
/// the `/bytes/N` pattern.
fn downloads(
    ns: &mut Netns,
    daemon: &Daemon,
    what: &str,
    n: usize,
    args: &[&str],
    url_of: impl Fn(usize) -> String,
) {
    let dir = ns.path(what);
    std::fs::create_dir(&dir).unwrap();
    let mut curls = Vec::new();
    for chunk in 0..n.div_ceil(PER_CURL) {
        let mut config = String::new();
        for i in chunk * PER_CURL..((chunk + 1) * PER_CURL).min(n) {
            let out = dir.join(i.to_string());
            config.push_str(&format!(
                "url = \"{}\"\noutput = \"{}\"\n",
                url_of(i),
                out.display()
            ));
        }
        let file = dir.join(format!("curl-{chunk}.conf"));
        std::fs::write(&file, config).unwrap();
        let parallel = PER_CURL.to_string();
        let mut all = vec![
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "60",
            "-Z",
            "--parallel-immediate",
            "--parallel-max",
            &parallel,
            "-H",
            "Connection: close",
        ];
        all.extend_from_slice(args);
        all.extend(["-K", file.to_str().unwrap()]);
        let mut cmd = ns.command(&all);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        curls.push(ns.spawn(cmd));
    }
    for c in curls {
        let status = ns
            .wait_child(c, Duration::from_secs(90))
            .unwrap_or_else(|| panic!("{what}: curl still running after 90 s"));
        let mut err = String::new();
        if let Some(mut e) = ns.children[c].stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        assert!(
            status.success(),
            "{what}: curl {status}: {err}\n{}",
            daemon.log()
        );
    }
    for i in 0..n {
        let got = std::fs::read(dir.join(i.to_string())).unwrap_or_default();
        assert!(
            got == bytes_route_body(len_of(i)),
            "{what}: download {i} is not byte-exact ({} of {} bytes)",
            got.len(),
            len_of(i)
        );
    }
}

/// `--queues queues` with `extra` flags: `n` downloads from the daemon's
/// HTTP service and `n` through its SOCKS proxy, byte-exact; then the
/// stats, the port table and SIGTERM are checked. `None` if skipped.
fn thousand_of_each(test: &str, queues: u16, n: usize, extra: &[&str]) -> Option<()> {
    let mut ns = Netns::new(test)?;
    let started = Instant::now();
    let q = queues.to_string();
    // A thousand connections at once to one server: room for them in
    // every shard's share of the range.
    let mut flags = vec![
        "--queues",
        &q,
        "--http",
        "80",
        "--socks",
        "1080",
        "--backlog",
        "1024",
        "--ephemeral-range",
        "40000-44999",
    ];
    flags.extend_from_slice(extra);
    let daemon = ns.start_daemon(&flags);
    start_bytes_server(&mut ns);

    downloads(&mut ns, &daemon, "http", n, &[], |i| {
        format!("http://{STACK}/bytes/{}", len_of(i))
    });
    let socks = format!("{STACK}:1080");
    downloads(
        &mut ns,
        &daemon,
        "socks",
        n,
        &["--socks5-hostname", &socks],
        |i| format!("http://{KERNEL}:8000/bytes/{}", len_of(i)),
    );

    let stats = daemon.stats();
    let log = daemon.log();
    assert_eq!(stats["queues"], u64::from(queues), "{log}");
    assert!(stats["tcp_accepted"] >= 2 * n as u64, "{stats:?}");
    assert!(stats["tcp_active_opens"] >= n as u64, "{stats:?}");
    if extra.contains(&"flow-learning") {
        assert_eq!(stats["steering_ebpf"], 0, "{log}");
        // The kernel's own choice puts some packets on the wrong queue;
        // every one of them reached its owner (the downloads are exact).
        assert!(stats["misdirected"] > 0, "{stats:?}");
        assert_eq!(
            stats["handoffs"] + stats["handoff_drops"],
            stats["misdirected"]
        );
        let out = daemon.client("ports", &["--stats"]);
        assert!(
            text(&out.stdout).contains(&format!("queues: {queues}, steering: flow-learning;")),
            "{}",
            text(&out.stdout)
        );
    } else {
        assert_eq!(stats["steering_ebpf"], 1, "{log}");
        assert_eq!(stats["misdirected"], 0, "{stats:?}");
        assert_eq!(stats["handoffs"], 0, "{stats:?}");
        let out = daemon.client("ports", &["--stats"]);
        assert!(
            text(&out.stdout).contains(&format!(
                "queues: {queues}, steering: ebpf; misdirected 0, handed off 0, dropped 0"
            )),
            "{}",
            text(&out.stdout)
        );
    }
    // Each shard's own counters beside the sum: a column each in the text,
    // a map each in the JSON, adding up to the sum; every shard served.
    let out = daemon.client("ports", &["--stats"]);
    let table = text(&out.stdout);
    let header = table
        .lines()
        .find(|l| l.trim_start().starts_with("total"))
        .unwrap_or_else(|| panic!("no per-shard header in\n{table}"));
    let mut want = vec!["total".to_string()];
    want.extend((0..queues).map(|i| format!("shard {i}")));
    assert_eq!(
        header
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>(),
        want
    );
    let (sum, per_shard) = daemon.stats_by_shard();
    assert_eq!(per_shard.len(), usize::from(queues), "{per_shard:?}");
    for key in ["tcp_accepted", "tcp_active_opens"] {
        let parts: Vec<u64> = per_shard.iter().map(|s| s[key]).collect();
        assert!(parts.iter().all(|&p| p > 0), "{key} by shard: {parts:?}");
        // One answer: the sum is of these very views.
        assert_eq!(parts.iter().sum::<u64>(), sum[key], "{key}: {parts:?}");
    }

    // The HTTP connections ephemera closed first wait in TIME-WAIT, each
    // on the shard that served it: more than one.
    let rows = daemon.ports();
    let shards: BTreeSet<u16> = connections(&rows).iter().filter_map(|r| r.shard).collect();
    assert!(shards.len() > 1, "connections on shards {shards:?} only");
    let listeners: BTreeSet<u16> = rows
        .iter()
        .filter(|r| r.state == "LISTEN" && r.local.port() == 80)
        .filter_map(|r| r.shard)
        .collect();
    assert_eq!(listeners, (0..queues).collect(), "a listener per shard");

    let status = ns.stop(daemon.index, libc::SIGTERM);
    let log = daemon.log();
    assert!(status.success(), "daemon exited with {status}:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    // Every queue closed: the interface is gone.
    assert_eq!(ns.links(), ["lo"], "{log}");
    say(&format!(
        "{test}: {n} HTTP and {n} SOCKS downloads on {queues} queues in {:.1} s; misdirected {}, handed off {}",
        started.elapsed().as_secs_f64(),
        stats["misdirected"],
        stats["handoffs"]
    ));
    Some(())
}

#[test]
fn two_queues_steered_by_ebpf_serve_a_thousand_downloads_and_socks_byte_exact() {
    thousand_of_each(
        "two_queues_steered_by_ebpf_serve_a_thousand_downloads_and_socks_byte_exact",
        2,
        1000,
        &[],
    );
}

#[test]
fn four_queues_steered_by_ebpf_serve_a_thousand_downloads_and_socks_byte_exact() {
    thousand_of_each(
        "four_queues_steered_by_ebpf_serve_a_thousand_downloads_and_socks_byte_exact",
        4,
        1000,
        &[],
    );
}

#[test]
fn flow_learning_hands_misdirected_packets_to_their_owner() {
    thousand_of_each(
        "flow_learning_hands_misdirected_packets_to_their_owner",
        2,
        500,
        &["--steering", "flow-learning"],
    );
}

#[test]
fn queues_without_offload_read_and_write_bare_packets() {
    thousand_of_each(
        "queues_without_offload_read_and_write_bare_packets",
        2,
        200,
        &["--no-offload"],
    );
}

#[test]
fn one_queue_is_a_single_stack_without_shards() {
    let Some(mut ns) = Netns::new("one_queue_is_a_single_stack_without_shards") else {
        return;
    };
    let daemon = ns.start_daemon(&["--http", "80", "--queues", "1"]);
    let out = daemon.client("ports", &["--json", "--stats"]);
    let json = text(&out.stdout);
    assert!(out.status.success(), "{json}");
    for absent in ["shard", "queues", "steering", "misdirected"] {
        assert!(!json.contains(absent), "{absent} in {json}");
    }
    let out = ns.run(&["ip", "-d", "link", "show", "eph0"]);
    assert!(
        !text(&out.stdout).contains("multi_queue"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn shards_write_one_pcap_file_whole_records_every_flow_in_it() {
    let test = "shards_write_one_pcap_file_whole_records_every_flow_in_it";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    let pcap = ns.path("trace.pcap");
    let pcap_arg = pcap.to_str().unwrap().to_string();
    let daemon = ns.start_daemon(&["--queues", "2", "--http", "80", "--pcap", &pcap_arg]);
    const N: usize = 100;
    downloads(&mut ns, &daemon, "http", N, &[], |i| {
        format!("http://{STACK}/bytes/{}", len_of(i))
    });
    let rows = daemon.ports();
    let shards: BTreeSet<u16> = connections(&rows).iter().filter_map(|r| r.shard).collect();
    assert!(shards.len() > 1, "connections on shards {shards:?} only");
    let status = ns.stop(daemon.index, libc::SIGTERM);
    assert!(status.success(), "{}", daemon.log());

    // One file, records whole: each header's length leads exactly to the
    // next, and the last ends the file. Each of the N connections' SYNs
    // (from the kernel, to port 80) is in it once.
    let bytes = std::fs::read(&pcap).unwrap();
    assert_eq!(&bytes[..4], &0xa1b2_c3d4u32.to_le_bytes(), "pcap magic");
    let mut at = 24;
    let mut syns = BTreeSet::new();
    while at < bytes.len() {
        let field = |o: usize| u32::from_le_bytes(bytes[at + o..at + o + 4].try_into().unwrap());
        let (incl, orig) = (field(8) as usize, field(12) as usize);
        assert_eq!(incl, orig, "record at {at}");
        let p = &bytes[at + 16..at + 16 + incl];
        // IPv4 TCP to port 80 with SYN and without ACK.
        if p[0] >> 4 == 4 && p[9] == 6 {
            let t = &p[usize::from(p[0] & 0xf) * 4..];
            let dport = u16::from_be_bytes([t[2], t[3]]);
            if dport == 80 && t[13] & 0x12 == 0x02 {
                syns.insert(u16::from_be_bytes([t[0], t[1]]));
            }
        }
        at += 16 + incl;
    }
    assert_eq!(at, bytes.len(), "a cut record at the end");
    assert_eq!(syns.len(), N, "SYNs of {} connections captured", syns.len());
}

#[test]
fn sigterm_closes_every_shard_and_resets_what_is_left_within_the_grace() {
    let test = "sigterm_closes_every_shard_and_resets_what_is_left_within_the_grace";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    let daemon = ns.start_daemon(&["--queues", "2", "--http", "80"]);
    // Slow readers that will not finish, spread over the shards.
    ns.spawn_slow_downloads(8);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = daemon.ports();
        let open: Vec<_> = connections(&rows)
            .into_iter()
            .filter(|r| r.state == "ESTABLISHED")
            .collect();
        let shards: BTreeSet<u16> = open.iter().filter_map(|r| r.shard).collect();
        if open.len() == 8 && shards.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{rows:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let status = ns.stop(daemon.index, libc::SIGTERM);
    let log = daemon.log();
    assert!(status.success(), "daemon exited with {status}:\n{log}");
    assert!(started.elapsed() < Duration::from_secs(8), "{log}");
    assert!(log.contains("closing connections"), "{log}");
    assert_eq!(ns.links(), ["lo"], "{log}");
    // Every shard reset its own: no kernel socket is left established.
    ns.assert_none_established(&log);
}
