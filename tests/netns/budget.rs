//! `ephemera up` at its limits: the memory budget holds for the real
//! daemon under slow clients, measured from its `/proc` status, and the
//! TIME-WAIT cap frees what closes beyond it.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::*;

/// The daemon's resident set (`VmRSS`), octets.
fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// Opens `n` connections to the daemon's HTTP service, asks each for a
/// gigabyte, and never reads: the daemon writes to each until it is
/// blocked. Small kernel buffers keep the clients' side cheap. Prints
/// `open n` once every request is sent, then holds the sockets until
/// killed. (Two of them share the work: a process may not have more than
/// the hard limit of open files, 20,000 on some hosts, and raising it
/// needs a privilege a container may lack.)
const CLIENTS: &str = r#"
import resource, socket, sys, time
n = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
for i in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("10.7.0.2", 80))
    s.sendall(b"GET /bytes/1000000000 HTTP/1.1\r\nHost: x\r\n\r\n")
    socks.append(s)
print("open", len(socks), flush=True)
time.sleep(3600)
"#;

#[test]
fn twenty_thousand_clients_that_never_read_stay_under_the_budget() {
    let test = "twenty_thousand_clients_that_never_read_stay_under_the_budget";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    const N: usize = 20_000;
    const BUDGET: usize = 512 << 20;
    let started = Instant::now();
    let daemon = ns.start_daemon(&[
        "--http",
        "80",
        "--max-memory",
        "512M",
        "--max-connections",
        "30000",
        "--backlog",
        "4096",
    ]);
    let pid = ns.children[daemon.index].id();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "ephemera", "the daemon's own process");
    let idle = rss(pid);

    for _ in 0..2 {
        let half = (N / 2).to_string();
        let mut cmd = ns.command(&["python3", "-c", CLIENTS, &half]);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let clients = ns.spawn(cmd);
        let stdout = ns.children[clients].stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("open {half}"), "{}", daemon.log());
    }

    // Wait until the writes stall: the charged buffer memory stops growing.
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let s = daemon.stats();
        let charged = s["budget_memory_charged"];
        if s["budget_connections"] as usize >= N && charged == last {
            break;
        }
        last = charged;
        assert!(Instant::now() < deadline, "no stall in 120 s: {s:?}");
    }
    let s = daemon.stats();
    let resident = rss(pid);
    say(&format!(
        "{test}: {N} clients, daemon RSS {} MiB ({} MiB idle); budget {} MiB, {} MiB committed, \
         {} MiB buffers charged; {} connections opened under pressure, {} sends cut short; {:.0} s",
        resident >> 20,
        idle >> 20,
        s["budget_memory_limit"] >> 20,
        s["budget_memory_committed"] >> 20,
        s["budget_memory_charged"] >> 20,
        s["tcp_opened_under_pressure"],
        s["tcp_send_memory_pressure"],
        started.elapsed().as_secs_f64(),
    ));
    assert!(s["budget_memory_committed"] as usize <= BUDGET);
    assert!(s["budget_memory_charged"] <= s["budget_memory_committed"]);
    assert!(s["tcp_opened_under_pressure"] > 0, "{s:?}");
    assert_eq!(
        s["drop_syn_memory_limit"] + s["drop_syn_connection_limit"],
        0
    );
    // Beyond the TCP buffers, each connection costs its socket structures
    // and the HTTP service's 16 KiB write buffer: the whole daemon stays
    // within the budget plus that, where without the budget each
    // connection would hold its full 1 MiB send buffer (20 GiB more).
    let per_conn = 16 * 1024 + 4 * 1024;
    assert!(
        resident <= idle + BUDGET + N * per_conn,
        "RSS {resident} beyond the budget and {per_conn} octets per connection"
    );

    // A fresh client is served, byte for byte.
    let body = ns.curl_body("fresh", 30, &["http://10.7.0.2/bytes/1000000"], &daemon);
    assert!(
        body == bytes_route_body(1_000_000),
        "the fresh client's body differs"
    );
    let s = daemon.stats();
    assert!(s["budget_memory_committed"] as usize <= BUDGET);
    assert!(ns.children[daemon.index].try_wait().unwrap().is_none());
}

#[test]
fn time_wait_cap_frees_what_closes_beyond_it_and_counts_it() {
    let test = "time_wait_cap_frees_what_closes_beyond_it_and_counts_it";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    const CAP: u64 = 3;
    const N: u64 = 8;
    let daemon = ns.start_daemon(&["--http", "80", "--max-time-wait", &CAP.to_string()]);
    for i in 0..N {
        // Asked to close, the server closes first, so its side of each
        // connection ends in TIME-WAIT.
        let out = ns.run(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-H",
            "Connection: close",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://10.7.0.2/",
        ]);
        assert_eq!(text(&out.stdout), "200", "request {i}: {}", daemon.log());
    }
    // The clients' last ACKs may still be on their way.
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = daemon.stats();
        if s["budget_time_wait"] + s["tcp_time_wait_overflow"] >= N || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    say(&format!(
        "{test}: {N} closes, {} in TIME-WAIT of at most {}, {} over the cap",
        s["budget_time_wait"], s["budget_max_time_wait"], s["tcp_time_wait_overflow"]
    ));
    assert_eq!(s["budget_max_time_wait"], CAP, "{s:?}");
    assert_eq!(s["budget_time_wait"], CAP, "{s:?}");
    assert_eq!(s["tcp_time_wait_overflow"], N - CAP, "{s:?}");
    // Those beyond the cap were freed at once, not left open.
    assert_eq!(s["budget_connections"], 0, "{s:?}");
}
