//! DNS through `ephemera up` with real programs: `dig` (dnsutils) asks
//! the daemon's forwarder (`--dns`), which asks dnsmasq or a small
//! python3 name server on the kernel side; curl, and a SOCKS UDP client
//! naming its destination, resolve through the daemon's own resolver
//! (`--nameserver`).
//!
//! Needs, besides the harness's programs, `dig` and `dnsmasq`; without
//! them each test prints `SKIP` and passes.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::*;

/// A namespace, if the DNS programs are there too.
fn dns_netns(test: &str, programs: &[(&str, &str, &str)]) -> Option<Netns> {
    for (program, arg, package) in programs {
        if !have(program, arg) {
            skip(
                test,
                &format!("{program} not found (apt install {package})"),
            );
            return None;
        }
    }
    Netns::new(test)
}

const DIG: (&str, &str, &str) = ("dig", "-v", "dnsutils");
const DNSMASQ: (&str, &str, &str) = ("dnsmasq", "--version", "dnsmasq-base");

/// Start dnsmasq on 10.7.0.1:5353 with no system configuration, one
/// fixed record (`web.test` is 10.7.0.1) and every query logged with its
/// client's address and port; returns the log's path once it serves.
fn start_dnsmasq(ns: &mut Netns) -> PathBuf {
    start_dnsmasq_on(ns, "10.7.0.1")
}

/// [`start_dnsmasq`], listening on `addr` (IPv4 or IPv6) instead.
fn start_dnsmasq_on(ns: &mut Netns, addr: &str) -> PathBuf {
    let log = ns.path("dnsmasq.log");
    let pid = ns.path("dnsmasq.pid");
    let mut cmd = ns.command(&[
        "dnsmasq",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--keep-in-foreground",
        "--user=root",
        "--bind-interfaces",
        "--port=5353",
        "--address=/web.test/10.7.0.1",
        "--log-queries=extra",
        "--cache-size=0",
    ]);
    cmd.arg(format!("--listen-address={addr}"))
        .arg(format!("--log-facility={}", log.display()))
        .arg(format!("--pid-file={}", pid.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let i = ns.spawn(cmd);
    // Serving once it answers a query of its own.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns.run(&[
            "dig",
            &format!("@{addr}"),
            "-p",
            "5353",
            "+short",
            "+tries=1",
            "+time=1",
            "web.test",
        ]);
        if text(&out.stdout).trim() == KERNEL {
            return log;
        }
        if let Some(status) = ns.children[i].try_wait().unwrap() {
            panic!(
                "dnsmasq exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "dnsmasq did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Source ports of the queries dnsmasq logged from the stack: with
/// `--log-queries=extra` a query's line reads `SERIAL ADDR/PORT query[A]
/// NAME from ADDR`.
fn dnsmasq_clients(log: &PathBuf) -> Vec<u16> {
    let prefix = format!("{STACK}/");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" query["))
        .filter_map(|l| {
            let client = l.split_whitespace().find(|w| w.starts_with(&prefix))?;
            client[prefix.len()..].parse().ok()
        })
        .collect()
}

/// `dig @10.7.0.2 ARGS…` in the namespace: its stdout, once it succeeded.
fn dig(ns: &Netns, daemon: &Daemon, args: &[&str]) -> String {
    let mut all = vec!["dig", "@10.7.0.2", "+tries=1", "+time=5"];
    all.extend_from_slice(args);
    let out = ns.run(&all);
    assert!(
        out.status.success(),
        "dig {args:?}: {}{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        daemon.log()
    );
    text(&out.stdout)
}

#[test]
fn dig_through_the_forwarder_to_dnsmasq_from_a_fresh_port_per_query() {
    let test = "dig_through_the_forwarder_to_dnsmasq_from_a_fresh_port_per_query";
    let Some(mut ns) = dns_netns(test, &[DIG, DNSMASQ]) else {
        return;
    };
    // The default ephemeral range (16,384 ports): RFC 5452 wants the
    // range a resolver draws from as large as practicable.
    let daemon = ns.start_daemon(&[
        "--ephemeral-range",
        "49152-65535",
        "--dns",
        "53=10.7.0.1:5353",
    ]);
    let log = start_dnsmasq(&mut ns);

    let out = dig(&ns, &daemon, &["web.test"]);
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("web.test.") && l.ends_with(KERNEL)),
        "{out}"
    );
    assert!(out.contains("SERVER: 10.7.0.2#53"), "{out}");
    // A name dnsmasq does not know: its answer, passed on.
    let out = dig(&ns, &daemon, &["nowhere.test"]);
    assert!(
        out.contains("status: REFUSED") || out.contains("status: NXDOMAIN"),
        "{out}"
    );

    // 1,000 queries, one after another: each leaves from its own port.
    let batch = ns.path("batch");
    std::fs::write(&batch, "web.test A +short\n".repeat(1000)).unwrap();
    let before = dnsmasq_clients(&log).len();
    let out = dig(&ns, &daemon, &["-f", batch.to_str().unwrap()]);
    assert_eq!(
        out.lines().filter(|l| *l == KERNEL).count(),
        1000,
        "every query answered"
    );
    let ports = dnsmasq_clients(&log);
    let ports = &ports[before..];
    assert_eq!(
        ports.len(),
        1000,
        "dnsmasq logged every query:\n{}",
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .take(12)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let distinct: HashSet<u16> = ports.iter().copied().collect();
    assert!(
        distinct.len() >= 990,
        "1,000 queries from only {} distinct ports",
        distinct.len()
    );
    assert!(ports.iter().all(|p| (49152..=65535).contains(p)));
    let stats = daemon.stats();
    assert!(stats["dns_forward_queries"] >= 1002, "{stats:?}");
    assert_eq!(stats["dns_forward_answers"], stats["dns_forward_queries"]);
    // No upstream socket is left open.
    let rows = daemon.ports();
    assert!(
        rows.iter()
            .all(|r| !(r.proto == "udp" && r.state == "ESTAB")),
        "{rows:?}"
    );
}

/// A name server on 10.7.0.1:5354 (UDP and TCP) written for the test:
/// `web.test` is 10.7.0.1 (three addresses over TCP). In mode `forge` it
/// first sends three forged answers (203.0.113.66) for each query: under
/// the wrong ID from its own port, under the right ID from port 5355, and
/// under the right ID to the next port of the querier's; then the real
/// one. In mode `truncate` a UDP answer has TC set and no records, and the
/// full answer comes over TCP. In mode `silent` it answers nothing. Each
/// line of its log: `udp|tcp PEER`.
const NAME_SERVER: &str = r#"
import socket, struct, sys, threading
mode, log = sys.argv[1], open(sys.argv[2], "a", buffering=1)

def answer(q, ident, tc, addrs):
    qend = 12
    while q[qend] != 0:
        qend += q[qend] + 1
    question = q[12:qend + 5]
    flags = 0x8180 | (0x0200 if tc else 0)
    name = question[:-4]
    known = name.lower() == b"\x03web\x04test\x00" and question[-4:] == b"\x00\x01\x00\x01"
    if not known:
        addrs = []
        flags |= 3
    out = struct.pack(">HHHHHH", ident, flags, 1, len(addrs), 0, 0) + question
    for a in addrs:
        out += b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(a)
    return out

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("10.7.0.1", 5354))
other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
other.bind(("10.7.0.1", 5355))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("10.7.0.1", 5354))
tcp.listen(16)

def serve_tcp():
    while True:
        c, peer = tcp.accept()
        log.write("tcp %s:%d\n" % peer)
        n = struct.unpack(">H", c.recv(2, socket.MSG_WAITALL))[0]
        q = c.recv(n, socket.MSG_WAITALL)
        a = answer(q, struct.unpack(">H", q[:2])[0], False, ["10.7.0.1", "10.7.0.3", "10.7.0.4"])
        c.sendall(struct.pack(">H", len(a)) + a)
        c.close()

threading.Thread(target=serve_tcp, daemon=True).start()
print("ready", flush=True)
while True:
    q, peer = udp.recvfrom(4096)
    log.write("udp %s:%d\n" % peer)
    ident = struct.unpack(">H", q[:2])[0]
    if mode == "forge":
        forged = ["203.0.113.66"]
        udp.sendto(answer(q, (ident + 1) & 0xffff, False, forged), peer)
        other.sendto(answer(q, ident, False, forged), peer)
        udp.sendto(answer(q, ident, False, forged), (peer[0], peer[1] ^ 1))
        udp.sendto(answer(q, ident, False, ["10.7.0.1"]), peer)
    elif mode == "truncate":
        udp.sendto(answer(q, ident, True, []), peer)
"#;

/// Start [`NAME_SERVER`] in `mode`; its log's path once it serves.
fn start_name_server(ns: &mut Netns, mode: &str) -> PathBuf {
    let log = ns.path("ns.log");
    let mut cmd = ns.command(&["python3", "-c", NAME_SERVER, mode]);
    cmd.arg(&log);
    ns.spawn_ready(cmd, "the python3 name server");
    log
}

#[test]
fn forged_answers_are_ignored_and_counted_and_the_real_one_arrives() {
    let test = "forged_answers_are_ignored_and_counted_and_the_real_one_arrives";
    let Some(mut ns) = dns_netns(test, &[DIG]) else {
        return;
    };
    let daemon = ns.start_daemon(&["--dns", "53=10.7.0.1:5354"]);
    start_name_server(&mut ns, "forge");
    let before = daemon.stats();
    let out = dig(&ns, &daemon, &["+short", "web.test"]);
    assert_eq!(out.trim(), KERNEL, "the real answer, not a forged one");
    let after = daemon.stats();
    let moved = |k: &str| after[k] - before.get(k).copied().unwrap_or(0);
    // The wrong ID reached the query's socket and was refused there; the
    // other two found no socket at all (wrong source port, wrong port).
    assert_eq!(moved("dns_forward_mismatches"), 1, "{after:?}");
    assert!(moved("udp_no_port") >= 2, "{after:?}");
    assert_eq!(moved("dns_forward_answers"), 1);
}

#[test]
fn a_truncated_answer_is_fetched_over_tcp_from_the_stack() {
    let test = "a_truncated_answer_is_fetched_over_tcp_from_the_stack";
    let Some(mut ns) = dns_netns(test, &[DIG]) else {
        return;
    };
    let daemon = ns.start_daemon(&["--dns", "53=10.7.0.1:5354"]);
    let log = start_name_server(&mut ns, "truncate");
    let out = dig(&ns, &daemon, &["+short", "web.test"]);
    let mut got: Vec<&str> = out.lines().collect();
    got.sort();
    assert_eq!(got, ["10.7.0.1", "10.7.0.3", "10.7.0.4"], "{out}");
    // Asked over UDP, then over TCP, both from the stack's own ports.
    let lines = std::fs::read_to_string(&log).unwrap();
    let peers: Vec<(&str, std::net::SocketAddr)> = lines
        .lines()
        .map(|l| {
            let (proto, peer) = l.split_once(' ').unwrap();
            (proto, peer.parse().unwrap())
        })
        .collect();
    assert_eq!(peers.len(), 2, "{lines}");
    assert_eq!(peers[0].0, "udp");
    assert_eq!(peers[1].0, "tcp");
    for (_, p) in &peers {
        assert_eq!(p.ip().to_string(), STACK);
        assert!(RANGE.contains(&p.port()), "{p}");
    }
    assert_eq!(daemon.stats()["dns_forward_truncated"], 1);
}

#[test]
fn curl_through_socks_reaches_a_name_only_the_kernel_sides_dns_server_knows() {
    let test = "curl_through_socks_reaches_a_name_only_the_kernel_sides_dns_server_knows";
    let Some(mut ns) = dns_netns(test, &[DIG, DNSMASQ]) else {
        return;
    };
    // The host's resolver, as the namespace sees it, knows no web.test
    // and asks a name server that is not there: a lookup through it
    // would fail.
    for (file, contents) in [
        (
            "resolv.conf",
            "nameserver 10.7.0.99\noptions timeout:1 attempts:1\n",
        ),
        ("hosts", "127.0.0.1 localhost\n"),
    ] {
        if !ns.etc(file, contents) {
            skip(
                test,
                &format!("cannot give the namespace its own /etc/{file}"),
            );
            return;
        }
    }
    let daemon = ns.start_daemon(&["--socks", "1080", "--nameserver", "10.7.0.1:5353"]);
    let log = start_dnsmasq(&mut ns);
    std::fs::write(ns.path("hello.txt"), "hello from web.test\n").unwrap();
    let server_log = ns.start_file_server();
    let body = ns.curl_body(
        "web",
        20,
        &[
            "--socks5-hostname",
            "10.7.0.2:1080",
            "http://web.test:8000/hello.txt",
        ],
        &daemon,
    );
    assert_eq!(body, b"hello from web.test\n");
    // dnsmasq was asked by the stack, from a port of its own table.
    let ports = dnsmasq_clients(&log);
    assert_eq!(ports.len(), 1, "one A query");
    assert!(RANGE.contains(&ports[0]), "{ports:?}");
    // And the HTTP request came through the stack too.
    let clients = server_clients(&server_log, "/hello.txt");
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0].ip().to_string(), STACK);
    let stats = daemon.stats();
    assert_eq!(stats["dns_resolver_lookups"], 1, "{stats:?}");
    assert_eq!(stats["dns_resolver_answers"], 1, "{stats:?}");
}

#[test]
fn ports_shows_a_query_in_flight_as_connected_udp_with_its_peer() {
    let test = "ports_shows_a_query_in_flight_as_connected_udp_with_its_peer";
    let Some(mut ns) = dns_netns(test, &[DIG]) else {
        return;
    };
    let daemon = ns.start_daemon(&["--dns", "53=10.7.0.1:5354"]);
    let log = start_name_server(&mut ns, "silent");
    // A query the name server keeps: the forwarder's socket stays open.
    let mut cmd = ns.command(&["dig", "@10.7.0.2", "+tries=1", "+time=10", "web.test"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    ns.spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(10);
    let upstream: std::net::SocketAddr = "10.7.0.1:5354".parse().unwrap();
    let row = loop {
        let rows = daemon.ports();
        if let Some(r) = rows
            .into_iter()
            .find(|r| r.proto == "udp" && r.remote == Some(upstream))
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no connected UDP socket:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(row.state, "ESTAB");
    assert_eq!(row.local.ip().to_string(), STACK);
    assert!(RANGE.contains(&row.local.port()), "{row:?}");
    // The name server saw the query from that very port.
    let seen = std::fs::read_to_string(&log).unwrap();
    assert_eq!(seen.trim(), format!("udp {}", row.local), "{seen}");
    // And the table as text, as `ss -uan` shows it.
    let out = daemon.client("ports", &[]);
    let table = text(&out.stdout);
    let line = table
        .lines()
        .find(|l| l.starts_with("udp") && l.contains("10.7.0.1:5354"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains("ESTAB") && line.contains(&row.local.to_string()),
        "{line}"
    );
}

#[test]
fn dig_over_ipv6_through_the_forwarder_to_an_ipv6_upstream() {
    let test = "dig_over_ipv6_through_the_forwarder_to_an_ipv6_upstream";
    let Some(mut ns) = dns_netns(test, &[DIG, DNSMASQ]) else {
        return;
    };
    let daemon = ns.start_daemon(&["--addr6", "fd00:7::2/64", "--dns", "53=[fd00:7::1]:5353"]);
    // The kernel's IPv6 address must leave duplicate address detection
    // before dnsmasq can bind it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns.run(&["ip", "-6", "addr", "show", "dev", "eph0", "tentative"]);
        if text(&out.stdout).trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "IPv6 DAD did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = start_dnsmasq_on(&mut ns, "fd00:7::1");
    let out = ns.run(&["dig", "@fd00:7::2", "+tries=1", "+time=5", "web.test"]);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}\n{}", daemon.log());
    assert!(said.contains("status: NOERROR"), "{said}");
    assert!(said.contains("SERVER: fd00:7::2#53"), "{said}");
    assert!(
        said.lines()
            .any(|l| l.starts_with("web.test.") && l.ends_with(KERNEL)),
        "{said}"
    );
    // dnsmasq was asked from the stack's IPv6 address, from a port of its
    // table.
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let clients: Vec<u16> = logged
        .lines()
        .filter(|l| l.contains(" query[A] web.test"))
        .filter_map(|l| {
            let w = l.split_whitespace().find(|w| w.starts_with("fd00:7::2/"))?;
            w["fd00:7::2/".len()..].parse().ok()
        })
        .collect();
    assert_eq!(clients.len(), 1, "{logged}");
    assert!(RANGE.contains(&clients[0]), "{logged}");
    let stats = daemon.stats();
    assert_eq!(stats["dns_forward_answers"], 1, "{stats:?}");
}

/// UDP ASSOCIATE, then one datagram addressed to the name `web.test`
/// (ATYP 3) through the relay; prints the echo's header address and data.
const SOCKS_UDP_TO_A_NAME: &str = r#"
import socket, struct
c = socket.create_connection(("10.7.0.2", 1080), timeout=5)
c.sendall(b"\x05\x01\x00")
assert c.recv(2) == b"\x05\x00"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("10.7.0.1", 0))
u.settimeout(5)
c.sendall(b"\x05\x03\x00\x01" + bytes(4) + struct.pack(">H", u.getsockname()[1]))
r = c.recv(10, socket.MSG_WAITALL)
assert r[1] == 0, r
relay = (socket.inet_ntoa(r[4:8]), struct.unpack(">H", r[8:])[0])
name = b"web.test"
u.sendto(b"\x00\x00\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", 7007) + b"by name", relay)
d, _ = u.recvfrom(4096)
assert d[3] == 1, d
print(socket.inet_ntoa(d[4:8]), struct.unpack(">H", d[8:10])[0], d[10:].decode())
"#;

#[test]
fn a_socks_udp_datagram_to_a_name_only_the_kernel_sides_dns_server_knows() {
    let test = "a_socks_udp_datagram_to_a_name_only_the_kernel_sides_dns_server_knows";
    let Some(mut ns) = dns_netns(test, &[DIG, DNSMASQ]) else {
        return;
    };
    let daemon = ns.start_daemon(&["--socks", "1080", "--nameserver", "10.7.0.1:5353"]);
    let log = start_dnsmasq(&mut ns);
    let echo_log = ns.path("echo.log");
    let mut cmd = ns.command(&["python3", "-c", crate::socks_udp::ECHO]);
    cmd.arg(&echo_log);
    ns.spawn_ready(cmd, "the UDP echo server");

    let out = ns.run(&["python3", "-c", SOCKS_UDP_TO_A_NAME]);
    let said = text(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}\n{}\n{:?}\n{}",
        text(&out.stderr),
        daemon.log(),
        daemon.stats(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(said.trim(), "10.7.0.1 7007 by name");
    // The name was asked of dnsmasq from the stack, and the echo server
    // heard from the relay.
    let ports = dnsmasq_clients(&log);
    assert_eq!(ports.len(), 1, "one A query");
    assert!(RANGE.contains(&ports[0]), "{ports:?}");
    let senders = std::fs::read_to_string(&echo_log).unwrap();
    assert!(senders.starts_with(&format!("{STACK} ")), "{senders}");
    let stats = daemon.stats();
    assert_eq!(stats["socks_udp_to_remote"], 1, "{stats:?}");
    assert_eq!(stats["socks_udp_to_client"], 1, "{stats:?}");
}
