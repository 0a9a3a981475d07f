//! `ephemera up` with real clients: curl, ping, python3's `http.server`
//! and plain sockets, each test in a network namespace of its own (see
//! [`crate::harness`]).

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn curl_gets_a_page_naming_its_own_source_port() {
    let Some(mut ns) = Netns::new("curl_gets_a_page_naming_its_own_source_port") else {
        return;
    };
    let daemon = ns.start_daemon(&["--http", "80"]);
    // curl picks its source port from a range we choose, and reports it.
    let out = ns.run(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--local-port",
        "45100-45199",
        "-w",
        "\n%{http_code} %{local_port}",
        "http://10.7.0.2/",
    ]);
    let page = text(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        daemon.log()
    );
    let (body, trailer) = page.rsplit_once('\n').unwrap();
    let (code, port) = trailer.split_once(' ').unwrap();
    assert_eq!(code, "200", "{page}");
    let port: u16 = port.parse().unwrap();
    assert!((45100..=45199).contains(&port), "curl used port {port}");
    assert!(
        body.contains(&format!("you are {KERNEL}:{port} -> {STACK}:80")),
        "the page does not name curl's 4-tuple {KERNEL}:{port}:\n{body}"
    );
    // The page's live port table shows the connection serving it.
    assert!(
        body.lines()
            .any(|l| l.contains("ESTABLISHED") && l.contains(&format!("{KERNEL}:{port}"))),
        "{body}"
    );

    // /bytes/N is N bytes; other paths are 404; keep-alive serves both
    // on one connection.
    let out = ns.run(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download} %{num_connects}\n",
        "http://10.7.0.2/bytes/1000000",
        "-o",
        "/dev/null",
        "http://10.7.0.2/nope",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines, ["200 1000000 1", "404 14 0"], "{}", daemon.log());
}

#[test]
fn socks5_forward_and_fetch_download_byte_exact_from_ephemeras_port_range() {
    let test = "socks5_forward_and_fetch_download_byte_exact_from_ephemeras_port_range";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    let daemon = ns.start_daemon(&["--socks", "1080", "--forward", "8080=10.7.0.1:8000"]);
    let data = test_file(3 << 20);
    std::fs::write(ns.path("file"), &data).unwrap();
    let log = ns.start_file_server();

    let check_source = |who: &str, clients: &[SocketAddr]| {
        assert_eq!(clients.len(), 1, "{who}: server log {clients:?}");
        let c = clients[0];
        assert_eq!(c.ip().to_string(), STACK, "{who}: request came from {c}");
        assert!(
            RANGE.contains(&c.port()),
            "{who}: source port {} is outside --ephemeral-range {RANGE_ARG}",
            c.port()
        );
        c
    };

    // SOCKS5 with the name resolved by the daemon (ATYP domain), then with
    // an address (ATYP IPv4).
    for (flag, name) in [
        ("--socks5-hostname", "socks-hostname"),
        ("--socks5", "socks-ipv4"),
    ] {
        let url = format!("http://10.7.0.1:8000/file?{name}");
        let body = ns.curl_body(name, 20, &[flag, "10.7.0.2:1080", &url], &daemon);
        assert!(body == data, "{name}: body differs");
        check_source(name, &server_clients(&log, &format!("/file?{name}")));
    }

    // The port forward.
    let body = ns.curl_body(
        "forward",
        20,
        &["http://10.7.0.2:8080/file?forward"],
        &daemon,
    );
    assert!(body == data, "forward: body differs");
    check_source("forward", &server_clients(&log, "/file?forward"));

    // `ephemera fetch`: byte-exact, and the 4-tuple it reports is the one
    // the server saw.
    let got = ns.path("fetched");
    let out = daemon.client(
        "fetch",
        &[
            "http://10.7.0.1:8000/file?fetch",
            "-o",
            got.to_str().unwrap(),
        ],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", daemon.log());
    assert!(std::fs::read(&got).unwrap() == data, "fetch: body differs");
    let tuple = stderr
        .lines()
        .find_map(|l| l.strip_prefix("ephemera: ")?.strip_suffix(": HTTP 200"))
        .unwrap_or_else(|| panic!("no 4-tuple on stderr: {stderr}"));
    let (local, remote) = tuple.split_once(" -> ").unwrap();
    let local: SocketAddr = local.parse().unwrap();
    assert_eq!(remote, "10.7.0.1:8000");
    let seen = check_source("fetch", &server_clients(&log, "/file?fetch"));
    assert_eq!(local, seen, "fetch reported {local}, the server saw {seen}");
    assert!(
        stderr.contains(&format!("ephemera: {} bytes", data.len())),
        "{stderr}"
    );

    // `ephemera fetch` to stdout is byte-exact too.
    let out = daemon.client("fetch", &["http://10.7.0.1:8000/file?stdout"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout == data, "fetch to stdout: body differs");
}

#[test]
fn a_routed_client_downloads_byte_exact_with_and_without_segmentation_offload() {
    // A client in a second namespace reaches ephemera through the kernel,
    // which routes between a veth and the TUN. With offload, ephemera hands
    // the kernel 64 KiB TCP packets that the kernel must cut back into
    // MTU-sized segments to forward them over the veth.
    let test = "a_routed_client_downloads_byte_exact_with_and_without_segmentation_offload";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    let Some(client) = Netns::new(test) else {
        return;
    };
    if !have("ethtool", "--version") {
        skip(test, "ethtool not found (apt install ethtool)");
        return;
    }
    let ok = |out: Output| assert!(out.status.success(), "{}", text(&out.stderr));
    ok(Command::new("ip")
        .args(["link", "add", "r0", "netns", &ns.name, "type", "veth"])
        .args(["peer", "name", "c0", "netns", &client.name])
        .output()
        .unwrap());
    ok(ns.run(&["ip", "addr", "add", "10.9.0.1/24", "dev", "r0"]));
    ok(ns.run(&["ip", "link", "set", "r0", "up"]));
    // No offloads on the way out: the kernel itself must cut the packets
    // and complete their checksums from the seed ephemera left in them,
    // as it would for a NIC without TSO.
    ok(ns.run(&[
        "ethtool", "-K", "r0", "tx", "off", "tso", "off", "gso", "off",
    ]));
    ok(ns.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]));
    ok(client.run(&["ip", "addr", "add", "10.9.0.2/24", "dev", "c0"]));
    ok(client.run(&["ip", "link", "set", "c0", "up"]));
    ok(client.run(&["ip", "route", "add", "10.7.0.0/24", "via", "10.9.0.1"]));

    let n = 5_000_000;
    let expected: Vec<u8> = bytes_route_body(n);
    for offload in [true, false] {
        let extra: &[&str] = if offload {
            &["--http", "80"]
        } else {
            &["--http", "80", "--no-offload"]
        };
        let daemon = ns.start_daemon(extra);
        assert_eq!(
            daemon.log().contains("TCP segmentation offload"),
            offload,
            "{}",
            daemon.log()
        );
        for (who, from) in [("routed", &client), ("local", &ns)] {
            let what = format!("offload-{offload}-{who}");
            let url = format!("http://10.7.0.2/bytes/{n}");
            let body = from.curl_body(&what, 30, &[&url], &daemon);
            assert!(body == expected, "{what}: body differs");
        }
        let child = &mut ns.children[daemon.index];
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn a_dead_name_server_stalls_nothing_else_and_names_in_hosts_resolve() {
    let test = "a_dead_name_server_stalls_nothing_else_and_names_in_hosts_resolve";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    // The namespace's name server is 10.7.0.99: on the TUN's subnet, so
    // queries go to ephemera's stack, which drops what is not addressed
    // to it; no query is ever answered, and none leaves the namespace.
    // Each lookup of a name that needs DNS hangs for resolv.conf's 8 s.
    // origin.test is in hosts, so it resolves without DNS.
    let files = [
        (
            "resolv.conf",
            "nameserver 10.7.0.99\noptions timeout:8 attempts:1\n",
        ),
        ("hosts", "127.0.0.1 localhost\n10.7.0.1 origin.test\n"),
        ("nsswitch.conf", "hosts: files dns\n"),
    ];
    for (file, contents) in files {
        if !ns.etc(file, contents) {
            skip(
                test,
                &format!("ip netns exec does not mount /etc/netns/*/{file}"),
            );
            return;
        }
    }
    let daemon = ns.start_daemon(&[
        "--http",
        "80",
        "--socks",
        "1080",
        "--forward",
        "8080=origin.test:8000",
    ]);
    let data = test_file(1 << 20);
    std::fs::write(ns.path("file"), &data).unwrap();
    let log = ns.start_file_server();

    // A SOCKS request for a name only DNS could answer.
    let mut cmd = ns.command(&[
        "curl",
        "-sS",
        "--max-time",
        "60",
        "--socks5-hostname",
        "10.7.0.2:1080",
        "http://dead.test:8000/file",
    ]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let stuck = ns.spawn(cmd);
    let asked = Instant::now();
    // Wait until the daemon has started its lookup.
    while daemon.stats().get("dns_lookups") != Some(&1) {
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "no lookup started:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // While it hangs, everything else is served, each within 3 s: a page,
    // a SOCKS download and a forward to a name in hosts, and a fetch of
    // one.
    let quick = |what: &str, out: Output| {
        assert!(
            out.status.success(),
            "{what}: {}\n{}",
            text(&out.stderr),
            daemon.log()
        );
        out
    };
    let curl = |args: &[&str]| {
        let mut all = vec!["curl", "-sS", "--max-time", "3"];
        all.extend_from_slice(args);
        ns.run(&all)
    };
    let page = quick("page", curl(&["http://10.7.0.2/"]));
    assert!(text(&page.stdout).contains("you are 10.7.0.1:"));
    for (what, args) in [
        (
            "socks",
            [
                "--socks5-hostname",
                "10.7.0.2:1080",
                "http://origin.test:8000/file?socks",
            ],
        ),
        (
            "forward",
            [
                "-H",
                "Host: origin.test",
                "http://10.7.0.2:8080/file?forward",
            ],
        ),
    ] {
        let got = ns.path(what);
        let mut all = args.to_vec();
        all.extend(["-o", got.to_str().unwrap()]);
        quick(what, curl(&all));
        assert!(std::fs::read(&got).unwrap() == data, "{what}: body differs");
        let clients = server_clients(&log, &format!("/file?{what}"));
        assert!(
            clients.len() == 1 && RANGE.contains(&clients[0].port()),
            "{what}: {clients:?}"
        );
    }
    let fetched = quick(
        "fetch",
        daemon.client("fetch", &["http://origin.test:8000/file?fetch"]),
    );
    assert!(fetched.stdout == data, "fetch: body differs");
    let served = asked.elapsed();
    assert!(
        ns.children[stuck].try_wait().unwrap().is_none(),
        "the lookup of dead.test ended within {served:?}: was it stuck at all?"
    );

    // The stuck request ends only when the resolver gives up, with a SOCKS
    // error; it never reached the server.
    let status = ns
        .wait_child(stuck, Duration::from_secs(40))
        .expect("the SOCKS request for dead.test never ended");
    let waited = asked.elapsed();
    assert!(!status.success(), "dead.test resolved?");
    assert!(waited > served, "{waited:?} <= {served:?}");
    assert!(server_clients(&log, "/file").is_empty());
    let stats = daemon.stats();
    assert_eq!(stats.get("dns_lookups"), Some(&4), "{stats:?}");
    assert_eq!(stats.get("dns_refused"), Some(&0), "{stats:?}");
}

#[test]
fn two_hundred_concurrent_curls_then_time_wait_then_nothing() {
    let test = "two_hundred_concurrent_curls_then_time_wait_then_nothing";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    const N: usize = 200;
    const TIME_WAIT: u64 = 5;
    // The default backlog (128): the SYNs beyond it are dropped and
    // retransmitted, never reset, so all 200 succeed.
    let daemon = ns.start_daemon(&["--http", "80", "--time-wait", &TIME_WAIT.to_string()]);
    // Each transfer takes about two seconds (100 kB at 50 kB/s), so all
    // are visible while they run (ESTABLISHED, or FIN-WAIT once ephemera
    // has queued the whole body and closed). `Connection: close` makes
    // ephemera close first, so the TIME-WAIT is on its side, in its table.
    let script = format!(
        "for i in $(seq {N}); do curl -sS --max-time 60 -o /dev/null -H 'Connection: close' \
         --limit-rate 50k -w '%{{http_code}} %{{local_port}}\\n' http://10.7.0.2/bytes/100000 & \
         done; wait"
    );
    let mut cmd = ns.command(&["sh", "-c", &script]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let curls = ns.spawn(cmd);

    // Watch the table while they run.
    let mut seen_open: HashSet<u16> = HashSet::new();
    let mut most_open = 0;
    let mut states: BTreeSet<String> = BTreeSet::new();
    while ns.children[curls].try_wait().unwrap().is_none() {
        let rows = daemon.ports();
        let open: Vec<u16> = connections(&rows)
            .iter()
            .filter(|r| r.local.port() == 80)
            .filter_map(|r| r.remote)
            .filter(|a| a.ip().to_string() == KERNEL)
            .map(|a| a.port())
            .collect();
        most_open = most_open.max(open.len());
        states.extend(connections(&rows).iter().map(|r| r.state.clone()));
        seen_open.extend(open);
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = ns.children[curls].wait_with_output_ref();
    let stdout = text(&out.0);
    let results: Vec<(String, u16)> = stdout
        .lines()
        .map(|l| {
            let (code, port) = l.split_once(' ').unwrap();
            (code.to_string(), port.parse().unwrap())
        })
        .collect();
    assert_eq!(results.len(), N, "{stdout}\n{}", text(&out.1));
    assert!(
        results.iter().all(|(code, _)| code == "200"),
        "not all curls got 200:\n{stdout}\n{}\n{}",
        text(&out.1),
        daemon.log()
    );
    let ports: BTreeSet<u16> = results.iter().map(|r| r.1).collect();
    assert_eq!(ports.len(), N, "curls shared a source port: {stdout}");
    let unseen: Vec<u16> = ports
        .iter()
        .filter(|p| !seen_open.contains(p))
        .copied()
        .collect();
    assert!(
        unseen.is_empty(),
        "ephemera ports never listed these curls' connections: {unseen:?}"
    );
    say(&format!(
        "{test}: up to {most_open} connections at once, seen in {states:?}"
    ));

    // Right after: what is left is TIME-WAIT, on 4-tuples of these curls.
    let rows = daemon.ports();
    let left = connections(&rows);
    assert!(
        left.iter().all(|r| r.state == "TIME-WAIT"),
        "after the curls, not only TIME-WAIT: {left:?}"
    );
    assert!(!left.is_empty(), "no TIME-WAIT after the curls");
    for r in &left {
        let remote = r.remote.unwrap();
        assert!(
            r.local.port() == 80 && ports.contains(&remote.port()),
            "TIME-WAIT for an unknown 4-tuple: {r:?}"
        );
    }
    // Then nothing, once TIME-WAIT (--time-wait) has passed.
    let deadline = Instant::now() + Duration::from_secs(TIME_WAIT + 5);
    loop {
        let rows = daemon.ports();
        if connections(&rows).is_empty() {
            // The listener is still there.
            assert!(rows
                .iter()
                .any(|r| r.state == "LISTEN" && r.local.port() == 80));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections left {TIME_WAIT} s after TIME-WAIT began: {:?}",
            connections(&rows)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `wait_with_output` without giving up the `Child` (it stays in the
/// namespace's list, to be reaped on drop).
trait WaitRef {
    fn wait_with_output_ref(&mut self) -> (Vec<u8>, Vec<u8>);
}

impl WaitRef for Child {
    fn wait_with_output_ref(&mut self) -> (Vec<u8>, Vec<u8>) {
        use std::io::Read;
        let mut out = Vec::new();
        let mut err = Vec::new();
        if let Some(mut s) = self.stdout.take() {
            s.read_to_end(&mut out).unwrap();
        }
        if let Some(mut s) = self.stderr.take() {
            s.read_to_end(&mut err).unwrap();
        }
        let _ = self.wait();
        (out, err)
    }
}

#[test]
fn ping_answers_closed_tcp_port_is_refused_closed_udp_port_is_unreachable() {
    let test = "ping_answers_closed_tcp_port_is_refused_closed_udp_port_is_unreachable";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    let daemon = ns.start_daemon(&["--http", "80", "--echo", "7"]);

    if have("ping", "-V") {
        let out = ns.run(&["ping", "-c", "1", "-W", "3", STACK]);
        assert!(
            out.status.success(),
            "ping {STACK}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("1 received"),
            "{}",
            text(&out.stdout)
        );
    } else {
        skip(
            &format!("{test} (ping part)"),
            "ping not found (apt install iputils-ping)",
        );
    }

    // A closed TCP port: RST at once, so curl fails with "couldn't
    // connect" (exit 7) well before any retransmission (1 s).
    let start = Instant::now();
    let out = ns.run(&["curl", "-sS", "--max-time", "10", "http://10.7.0.2:81/"]);
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(took < Duration::from_millis(900), "refusal took {took:?}");

    // UDP: a closed port answers ICMP port unreachable, which Linux
    // reports on a connected socket as ECONNREFUSED; the echo port echoes.
    const PROBE: &str = r#"
import socket
def probe(port, data):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect(("10.7.0.2", port))
    s.send(data)
    try:
        return repr(s.recv(100))
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "timeout"
print(probe(9999, b"anyone?"), probe(7, b"hello"))
"#;
    let out = ns.run(&["python3", "-c", PROBE]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "refused b'hello'",
        "{}",
        daemon.log()
    );
    // And the daemon counted it.
    let stats = text(&daemon.client("ports", &["--stats"]).stdout);
    let no_port = stats
        .lines()
        .find_map(|l| l.strip_prefix("udp_no_port"))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert_eq!(no_port, Some(1), "{stats}");
}

#[test]
fn malformed_requests_get_protocol_errors_and_others_are_still_served() {
    let test = "malformed_requests_get_protocol_errors_and_others_are_still_served";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    let daemon = ns.start_daemon(&["--http", "80", "--socks", "1080"]);
    const CLIENT: &str = r#"
import socket
def exchange(port, data):
    s = socket.create_connection(("10.7.0.2", port), timeout=5)
    s.sendall(data)
    got = b""
    while True:
        b = s.recv(4096)
        if not b:
            return got
        got += b
http = exchange(80, b"NONSENSE\r\n\r\n")
print(http.split(b"\r\n")[0].decode())
# SOCKS5: no-auth greeting, then BIND (0x02), which is not supported.
socks = exchange(1080, b"\x05\x01\x00" + b"\x05\x02\x00\x01\x0a\x07\x00\x01\x1f\x40")
print(socks[:4].hex())
"#;
    let out = ns.run(&["python3", "-c", CLIENT]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        daemon.log()
    );
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines[0], "HTTP/1.1 400 Bad Request");
    // Method reply 05 00, then reply 05 07: command not supported.
    assert_eq!(lines[1], "05000507");
    assert_eq!(
        ns.http_status("http://10.7.0.2/"),
        "200",
        "{}",
        daemon.log()
    );
}

#[test]
fn sigterm_with_open_connections_exits_zero_and_resets_what_is_left() {
    let test = "sigterm_with_open_connections_exits_zero_and_resets_what_is_left";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    let daemon = ns.start_daemon(&["--http", "80"]);
    // Slow readers that will not finish: the daemon must not wait for them
    // forever, and must not leave them hanging when it goes.
    ns.spawn_slow_downloads(5);
    let deadline = Instant::now() + Duration::from_secs(10);
    while connections(&daemon.ports())
        .iter()
        .filter(|r| r.state == "ESTABLISHED")
        .count()
        < 5
    {
        assert!(Instant::now() < deadline, "{:?}", daemon.ports());
        std::thread::sleep(Duration::from_millis(50));
    }

    let pid = ns.children[daemon.index].id() as i32;
    // SAFETY: kill(2) on the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = ns
        .wait_child(daemon.index, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("daemon still running 15 s after SIGTERM:\n{}", daemon.log()));
    let log = daemon.log();
    assert!(status.success(), "daemon exited with {status}:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("closing connections"), "{log}");
    // Its interface went with it.
    assert_eq!(ns.links(), ["lo"], "{log}");
    // No client is left waiting on a stack that is gone: every kernel
    // socket was reset or got a FIN, none is still ESTABLISHED. (A curl
    // that got a FIN may still be reading what its kernel buffered, at
    // 20 kB/s, so its exit is not awaited.)
    ns.assert_none_established(&log);
}

/// The lines of an error exit: non-zero status, and exactly one line of
/// substance on stderr (clap adds a blank line and a `--help` hint).
fn error_line(out: &Output) -> String {
    assert!(!out.status.success(), "succeeded: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information"))
        // The daemon's info log of what it set up before failing.
        .filter(|l| !l.contains(" INFO "))
        .collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    lines[0].to_string()
}

#[test]
fn bad_input_fails_in_one_line_and_leaves_no_interface_behind() {
    let test = "bad_input_fails_in_one_line_and_leaves_no_interface_behind";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    let control = ns.path("bad.sock");
    let control = control.to_str().unwrap();
    let up = |args: &[&str]| {
        let mut all = vec![BIN, "up", "--tun", "eph1", "--control", control];
        all.extend_from_slice(args);
        ns.run(&all)
    };

    let e = error_line(&up(&["--addr", "10.7.0.300/24"]));
    assert!(e.contains("--addr") && e.contains("10.7.0.300"), "{e}");
    assert!(e.contains("write ADDRESS/PREFIX"), "{e}");
    let e = error_line(&up(&[
        "--addr",
        "10.7.0.2/24",
        "--ephemeral-range",
        "40999-40000",
    ]));
    assert!(
        e.contains("--ephemeral-range") && e.contains("backwards"),
        "{e}"
    );
    assert!(e.contains("write 40000-40999"), "{e}");
    assert_eq!(ns.links(), ["lo"]);

    // Without privilege, as nobody.
    if have("setpriv", "--version") {
        // A copy `nobody` can surely execute (the target dir may be private).
        let bin = ns.path("ephemera");
        std::fs::copy(BIN, &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = ns.run(&[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            bin.to_str().unwrap(),
            "up",
            "--tun",
            "eph1",
            "--addr",
            "10.7.0.2/24",
            "--control",
            control,
        ]);
        let e = error_line(&out);
        assert!(e.starts_with("ephemera: error: "), "{e}");
        assert!(
            e.contains("permission denied") && e.contains("run as root"),
            "{e}"
        );
        assert!(e.contains("--no-configure"), "{e}");
        assert_eq!(ns.links(), ["lo"]);
    } else {
        skip(
            &format!("{test} (nobody part)"),
            "setpriv not found (apt install util-linux)",
        );
    }

    // With a daemon on eph0: the same interface is busy; the same control
    // socket is in use, and the interface opened for it is gone again.
    let daemon = ns.start_daemon(&["--http", "80"]);
    let e = error_line(&ns.run(&[
        BIN,
        "up",
        "--tun",
        "eph0",
        "--addr",
        "10.7.0.2/24",
        "--control",
        control,
    ]));
    assert!(e.contains("eph0 is busy") && e.contains("--tun"), "{e}");
    let e = error_line(&ns.run(&[
        BIN,
        "up",
        "--tun",
        "eph1",
        "--addr",
        "10.8.0.2/24",
        "--control",
        daemon.control.to_str().unwrap(),
    ]));
    assert!(e.contains("in use") && e.contains("--control"), "{e}");
    assert_eq!(ns.links(), ["lo", "eph0"]);
    // And the first daemon serves on.
    assert_eq!(
        ns.http_status("http://10.7.0.2/"),
        "200",
        "{}",
        daemon.log()
    );
}

#[test]
fn user_drops_privileges_and_pcap_is_readable() {
    let test = "user_drops_privileges_and_pcap_is_readable";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    let pcap = ns.path("trace.pcap");
    let pcap_arg = pcap.to_str().unwrap().to_string();
    // The daemon makes its control socket as nobody, in a directory that
    // user owns.
    let control = ns.owned_dir("ctl", 65534).join("ctl.sock");
    let daemon = ns.start_daemon_with(
        "eph0",
        Some(&control),
        &["--http", "80", "--user", "nobody", "--pcap", &pcap_arg],
    );
    // The daemon runs as nobody now: every uid field of the process.
    let pid = ns.children[daemon.index].id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uids.split_whitespace().skip(1).all(|u| u == "65534"),
        "{uids}\n{}",
        daemon.log()
    );
    // It still serves, and its control socket still answers us.
    let out = ns.run(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--local-port",
        "45300-45399",
        "-w",
        "\n%{local_port}",
        "http://10.7.0.2/",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        daemon.log()
    );
    let port = text(&out.stdout).rsplit_once('\n').unwrap().1.to_string();
    assert!(!daemon.ports().is_empty());

    // SAFETY: kill(2) on the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let st = ns
        .wait_child(daemon.index, Duration::from_secs(15))
        .expect("daemon exits");
    assert!(st.success(), "{}", daemon.log());

    // The capture is a pcap file (LINKTYPE_RAW) holding curl's SYN.
    let bytes = std::fs::read(&pcap).unwrap();
    assert!(bytes.len() > 24, "empty capture");
    assert_eq!(&bytes[..4], &0xa1b2_c3d4u32.to_le_bytes(), "pcap magic");
    assert_eq!(u32::from_le_bytes(bytes[20..24].try_into().unwrap()), 101);
    if have("tcpdump", "--version") {
        let out = Command::new("tcpdump")
            .arg("-nr")
            .arg(&pcap)
            .output()
            .unwrap();
        let dump = text(&out.stdout);
        let syn = format!("{KERNEL}.{port} > {STACK}.80: Flags [S]");
        assert!(dump.contains(&syn), "no {syn} in:\n{dump}");
    } else {
        say(&format!(
            "{test}: tcpdump not found, pcap checked by header only"
        ));
    }
}
