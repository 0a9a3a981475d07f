//! SOCKS5 UDP ASSOCIATE through `ephemera up` (RFC 1928 §7): a python3
//! client relays datagrams through the daemon to a UDP echo server on the
//! kernel side, over IPv4 and IPv6.

use crate::harness::*;

/// A UDP echo server on 10.7.0.1:7007 and [fd00:7::1]:7007 that logs
/// each sender.
pub(crate) const ECHO: &str = r#"
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
def serve(family, addr):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind(addr)
    while True:
        d, peer = s.recvfrom(4096)
        log.write("%s %d\n" % (peer[0], peer[1]))
        s.sendto(d, peer)
for f, a in ((socket.AF_INET, ("10.7.0.1", 7007)), (socket.AF_INET6, ("fd00:7::1", 7007))):
    threading.Thread(target=serve, args=(f, a), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// For each family: UDP ASSOCIATE over TCP to the daemon, one datagram to
/// the echo server through the relay, its echo back with the echo
/// server's address in the header. Prints `ok FAMILY RELAY` per family.
const CLIENT: &str = r#"
import socket, struct, sys
def addr_bytes(family, ip, port):
    if family == socket.AF_INET:
        return b"\x01" + socket.inet_pton(family, ip) + struct.pack(">H", port)
    return b"\x04" + socket.inet_pton(family, ip) + struct.pack(">H", port)
for family, proxy, echo, client_ip in (
        (socket.AF_INET, "10.7.0.2", "10.7.0.1", "10.7.0.1"),
        (socket.AF_INET6, "fd00:7::2", "fd00:7::1", "fd00:7::1")):
    u = socket.socket(family, socket.SOCK_DGRAM)
    u.bind((client_ip, 0))
    u.settimeout(5)
    c = socket.create_connection((proxy, 1080), timeout=5)
    c.sendall(b"\x05\x01\x00")
    assert c.recv(2) == b"\x05\x00"
    zero = "0.0.0.0" if family == socket.AF_INET else "::"
    c.sendall(b"\x05\x03\x00" + addr_bytes(family, zero, u.getsockname()[1]))
    head = c.recv(4, socket.MSG_WAITALL)
    assert head[:2] == b"\x05\x00", head
    n = 4 if head[3] == 1 else 16
    rest = c.recv(n + 2, socket.MSG_WAITALL)
    relay = (socket.inet_ntop(family, rest[:n]), struct.unpack(">H", rest[n:])[0])
    u.sendto(b"\x00\x00\x00" + addr_bytes(family, echo, 7007) + b"hello " + proxy.encode(), relay)
    d, sender = u.recvfrom(4096)
    assert sender[:2] == relay, (sender, relay)
    want = b"\x00\x00\x00" + addr_bytes(family, echo, 7007) + b"hello " + proxy.encode()
    assert d == want, d
    print("ok %d %s %d" % (4 if family == socket.AF_INET else 6, relay[0], relay[1]), flush=True)
    c.close()
"#;

#[test]
fn udp_associate_round_trips_to_a_kernel_side_echo_server_over_both_families() {
    let test = "udp_associate_round_trips_to_a_kernel_side_echo_server_over_both_families";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    let daemon = ns.start_daemon(&["--socks", "1080", "--addr6", "fd00:7::2/64"]);
    // Wait for the kernel's IPv6 address to leave duplicate address
    // detection, so the client and the echo server can bind it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = ns.run(&["ip", "-6", "addr", "show", "dev", "eph0", "tentative"]);
        if text(&out.stdout).trim().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "IPv6 DAD did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = ns.path("echo.log");
    let mut cmd = ns.command(&["python3", "-c", ECHO]);
    cmd.arg(&log);
    ns.spawn_ready(cmd, "the UDP echo server");

    let out = ns.run(&["python3", "-c", CLIENT]);
    let said = text(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}\n{}",
        text(&out.stderr),
        daemon.log()
    );
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 2, "{said}");
    assert!(lines[0].starts_with("ok 4 10.7.0.2 "), "{said}");
    assert!(lines[1].starts_with("ok 6 fd00:7::2 "), "{said}");
    // Each relay's port came from ephemera's table, and the echo server
    // saw the datagrams come from it.
    let senders = std::fs::read_to_string(&log).unwrap();
    for l in &lines {
        let port: u16 = l.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(RANGE.contains(&port), "{l}");
        assert!(senders.contains(&format!(" {port}\n")), "{senders}");
    }
    let stats = daemon.stats();
    assert_eq!(stats["socks_udp_associations"], 2, "{stats:?}");
    assert_eq!(stats["socks_udp_to_remote"], 2);
    assert_eq!(stats["socks_udp_to_client"], 2);
}
