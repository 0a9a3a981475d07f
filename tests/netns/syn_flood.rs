//! A SYN flood from spoofed sources against `ephemera up`, written with a
//! raw socket (python3, `IP_HDRINCL`), while curl downloads through the
//! daemon on new connections: every download completes byte for byte,
//! and the daemon answers the flood with SYN cookies.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::Stdio;

use crate::harness::*;

/// Send SYNs from random sources in 198.18.0.0/15 (RFC 2544's benchmark
/// range: nothing in the namespace owns it, so the answers go nowhere)
/// to DST:PORT for SECS seconds; print "flooding" at the start and the
/// count at the end.
const FLOOD: &str = r#"
import random, socket, struct, sys, time
dst, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
d = socket.inet_aton(dst)
def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF
print("flooding", flush=True)
end, n = time.time() + secs, 0
while time.time() < end:
    for _ in range(256):
        src = struct.pack("!I", 0xC6120000 | random.getrandbits(17))
        sport, seq = random.randint(1024, 65535), random.getrandbits(32)
        tcp = struct.pack("!HHIIBBHHH", sport, port, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
        c = csum(src + d + struct.pack("!BBH", 0, 6, 20) + tcp)
        tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0, src, d)
        s.sendto(ip + tcp, (dst, 0))
        n += 1
print(n, flush=True)
"#;

fn counter(stats: &BTreeMap<String, u64>, name: &str) -> u64 {
    *stats
        .get(name)
        .unwrap_or_else(|| panic!("no counter {name} in {stats:?}"))
}

#[test]
fn a_syn_flood_against_ephemera_up_does_not_stop_curl_downloads() {
    let test = "a_syn_flood_against_ephemera_up_does_not_stop_curl_downloads";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    let daemon = ns.start_daemon(&["--http", "80"]);
    let secs = 10;
    let mut cmd = ns.command(&["python3", "-c", FLOOD, STACK, "80", &secs.to_string()]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let i = ns.spawn(cmd);
    let mut out = std::io::BufReader::new(ns.children[i].stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "flooding", "the flood did not start");
    // Let the half-open queue fill before the first download.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let n = 2_000_000;
    let want = bytes_route_body(n);
    let url = format!("http://{STACK}/bytes/{n}");
    let downloads = 5;
    for k in 0..downloads {
        let got = ns.curl_body(&format!("download-{k}"), 60, &[&url], &daemon);
        assert!(got == want, "download {k} differs ({} octets)", got.len());
    }
    let during = daemon.stats();
    line.clear();
    out.read_line(&mut line).unwrap();
    let sent: u64 = line.trim().parse().unwrap_or(0);
    let stats = daemon.stats();
    let cookies = counter(&stats, "tcp_syn_cookies_sent");
    say(&format!(
        "{test}: {sent} spoofed SYNs in {secs} s, {downloads} downloads of {n} octets; \
         cookies sent {cookies}, ok {}, failed {}; half-open evicted {}, SYNs dropped {}",
        counter(&stats, "tcp_syn_cookies_ok"),
        counter(&stats, "tcp_syn_cookies_failed"),
        counter(&stats, "drop_half_open_evicted"),
        counter(&stats, "drop_syn_queue_full"),
    ));
    assert!(
        counter(&during, "tcp_syn_cookies_sent") > 0,
        "the flood filled no queue: {during:?}"
    );
    assert!(sent > 10_000, "the flood sent only {sent} SYNs");
    assert_eq!(counter(&stats, "tcp_syn_cookies_failed"), 0);
}
