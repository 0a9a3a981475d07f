//! Bulk transfers through `ephemera up` with receive offload on (the
//! kernel sends TCP super-packets and partial checksums, which the daemon
//! cuts, and hands the stack unsummed, or completes with `--pcap`; and
//! the stack sends TCP segments of up to 64 KiB for the kernel to cut,
//! but not with `--pcap`) and off (`--no-offload`), over IPv4 and IPv6,
//! compared byte for byte: downloads from `--http`, uploads echoed back
//! by `--echo`, and both through a `--forward` relay to an echo server on
//! the kernel's side, where every byte crosses the TUN four times.

use std::collections::BTreeMap;

use crate::harness::*;

/// A threaded echo server on the kernel's side, on `::` (both families),
/// port 7777; it prints "ready" once it listens.
const ECHO_SERVER: &str = r#"
import socket, socketserver
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            b = self.request.recv(1 << 20)
            if not b:
                break
            self.request.sendall(b)
        self.request.shutdown(socket.SHUT_WR)
class Server(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
server = Server(("::", 7777), Echo)
print("ready", flush=True)
server.serve_forever()
"#;

/// Connect to HOST PORT, send the file SRC while reading, half-close
/// after the last byte, write everything that came back to DST. Retries
/// the connect for a moment: a new IPv6 address may still be tentative.
const ECHO_CLIENT: &str = r#"
import socket, sys, threading, time
host, port, src, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
data = open(src, "rb").read()
for attempt in range(50):
    try:
        s = socket.create_connection((host, port), timeout=30)
        break
    except OSError:
        if attempt == 49:
            raise
        time.sleep(0.1)
def send():
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send)
t.start()
out = bytearray()
while True:
    b = s.recv(1 << 20)
    if not b:
        break
    out += b
t.join()
open(dst, "wb").write(out)
"#;

fn counter(stats: &BTreeMap<String, u64>, name: &str) -> u64 {
    *stats
        .get(name)
        .unwrap_or_else(|| panic!("no counter {name} in {stats:?}"))
}

#[test]
fn uploads_and_downloads_are_byte_exact_with_receive_offload_on_and_off() {
    let test = "uploads_and_downloads_are_byte_exact_with_receive_offload_on_and_off";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    let cmd = ns.command(&["python3", "-c", ECHO_SERVER]);
    ns.spawn_ready(cmd, "the echo server");

    // Offload with payloads never summed (the daemon's default), offload
    // with every checksum completed (what --pcap asks for, so captures
    // show them right), and no offload.
    let pcap = ns.path("capture.pcap");
    let modes: [(&str, &[&str], usize); 3] = [
        ("offload", &[], 6_000_000),
        (
            "offload+pcap",
            &["--pcap", pcap.to_str().unwrap()],
            1_500_000,
        ),
        ("no-offload", &["--no-offload"], 6_000_000),
    ];
    for (mode, flags, n) in modes {
        let upload = test_file(n);
        let src = ns.path(&format!("upload-{mode}"));
        std::fs::write(&src, &upload).unwrap();
        let download = bytes_route_body(n);
        let mut extra = vec![
            "--addr6",
            "fd00:7::2/64",
            "--http",
            "80",
            "--echo",
            "7",
            "--forward",
            "7004=10.7.0.1:7777",
            "--forward",
            "7006=[fd00:7::1]:7777",
        ];
        extra.extend_from_slice(flags);
        let offload = mode != "no-offload";
        let daemon = ns.start_daemon(&extra);
        let tso = daemon
            .log()
            .contains("receive offload: checksum, TSO4, TSO6");
        if offload && !tso {
            skip(test, "the kernel refused TCP receive offload on a TUN");
        }
        for (family, host, relay) in [("v4", "10.7.0.2", "7004"), ("v6", "fd00:7::2", "7006")] {
            let url_host = if family == "v6" {
                format!("[{host}]")
            } else {
                host.to_string()
            };
            let what = format!("{mode} {family}");
            let url = format!("http://{url_host}/bytes/{n}");
            let got = ns.curl_body(&format!("download-{mode}-{family}"), 60, &[&url], &daemon);
            assert!(got == download, "{what}: download differs");
            for (port, via) in [("7", "echo"), (relay, "relay")] {
                let dst = ns.path(&format!("echoed-{mode}-{family}-{via}"));
                let out = ns.run(&[
                    "timeout",
                    "120",
                    "python3",
                    "-c",
                    ECHO_CLIENT,
                    host,
                    port,
                    src.to_str().unwrap(),
                    dst.to_str().unwrap(),
                ]);
                assert!(
                    out.status.success(),
                    "{what} {via}: {}\n{}",
                    text(&out.stderr),
                    daemon.log()
                );
                let echoed = std::fs::read(&dst).unwrap();
                assert_eq!(echoed.len(), n, "{what} {via}: length");
                assert!(echoed == upload, "{what} {via}: echoed bytes differ");
            }
        }
        let stats = daemon.stats();
        for drop in [
            "tun_rx_drop_truncated",
            "tun_rx_drop_gso_type",
            "tun_rx_drop_malformed",
            "tun_rx_drop_checksum_offsets",
            "drop_bad_checksum",
            "drop_malformed",
        ] {
            assert_eq!(counter(&stats, drop), 0, "{mode}: {drop}");
        }
        // Transmit: with the TUN's offload and no capture, smoltcp itself
        // sends segments of up to 64 KiB and the daemon writes them as
        // they are, for the kernel to cut.
        let tso_packets = counter(&stats, "tso_packets_out");
        let tso_segments = counter(&stats, "tso_segments_out");
        if mode == "offload" {
            // The downloads alone are 12 MB.
            assert!(tso_packets >= 100, "{mode}: {tso_packets} TSO packets");
            assert!(
                tso_segments >= 20 * tso_packets,
                "{mode}: {tso_segments} segments in {tso_packets} TSO packets"
            );
        } else {
            assert_eq!((tso_packets, tso_segments), (0, 0), "{mode}: TSO");
        }
        let supers = counter(&stats, "tun_rx_super_packets");
        let completed = counter(&stats, "tun_rx_checksums_completed");
        let vouched = counter(&stats, "tun_rx_vouched");
        match mode {
            _ if offload && !tso => {}
            // The payload went up six times (echo and relay, twice
            // through the relay): most of it must have come as
            // super-packets, and everything the kernel sent in a TCP
            // flow is vouched for.
            "offload" => {
                assert!(supers >= 100, "{mode}: {supers} super-packets");
                assert_eq!(completed, 0, "{mode}: checksums completed");
                assert!(vouched > supers, "{mode}: {vouched} vouched");
            }
            "offload+pcap" => {
                assert!(supers >= 25, "{mode}: {supers} super-packets");
                assert!(completed > 0, "{mode}: no partial checksums completed");
            }
            _ => assert_eq!((supers, completed, vouched), (0, 0, 0), "{mode}"),
        }
        let child = &mut ns.children[daemon.index];
        let _ = child.kill();
        let _ = child.wait();
    }
}
