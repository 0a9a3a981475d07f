//! `ephemera up` as root facing other local users and hostile clients:
//! the files it makes, its control socket, who may use its SOCKS proxy
//! and where to, and peers that never finish (see [`crate::harness`]).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::harness::*;

/// Removes `/run/ephemera/TUN` (left by a daemon that ran as another user:
/// it may remove its socket, not the directory root made for it).
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // And /run/ephemera, if no other daemon uses it.
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// `args` run in the namespace as uid `uid` (gid the same), or `None`
/// without setpriv.
fn as_user(ns: &Netns, uid: u32, args: &[&str]) -> Option<Output> {
    if !have("setpriv", "--version") {
        return None;
    }
    let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
    let mut all = vec!["setpriv", &reuid, &regid, "--clear-groups"];
    all.extend_from_slice(args);
    Some(ns.run(&all))
}

#[test]
fn pcap_is_created_new_and_private_and_never_through_a_planted_link() {
    let test = "pcap_is_created_new_and_private_and_never_through_a_planted_link";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    // A root-only file, and a directory `nobody` writes, where it planted
    // a link to that file under the name the operator will give.
    let secret = ns.path("secret");
    std::fs::write(&secret, b"root's own data\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let drop_dir = ns.path("captures");
    std::fs::create_dir(&drop_dir).unwrap();
    std::os::unix::fs::chown(&drop_dir, Some(65534), Some(65534)).unwrap();
    let planted = drop_dir.join("trace.pcap");
    std::os::unix::fs::symlink(&secret, &planted).unwrap();

    let control = ns.owned_dir("ctl", 65534).join("ctl.sock");
    // Bounded: a daemon that wrongly starts must not hang the test.
    let up = |pcap: &Path| {
        ns.run(&[
            "timeout",
            "10",
            BIN,
            "up",
            "--tun",
            "eph0",
            "--addr",
            "10.7.0.2/24",
            "--user",
            "nobody",
            "--control",
            control.to_str().unwrap(),
            "--pcap",
            pcap.to_str().unwrap(),
        ])
    };
    let out = up(&planted);
    assert!(!out.status.success(), "started on a planted link");
    let err = text(&out.stderr);
    assert!(
        err.contains("already exists") && err.contains("remove it or choose another name"),
        "{err}"
    );
    // The link's target is untouched: same bytes, still root's, still 0600.
    let meta = std::fs::metadata(&secret).unwrap();
    assert_eq!(std::fs::read(&secret).unwrap(), b"root's own data\n");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
    assert_eq!(ns.links(), ["lo"], "interface left behind");

    // An existing regular file is not reused either.
    let old = drop_dir.join("old.pcap");
    std::fs::write(&old, b"earlier").unwrap();
    assert!(!up(&old).status.success());
    assert_eq!(std::fs::read(&old).unwrap(), b"earlier");

    // A new name: created 0600 and given to the user the daemon runs as.
    let fresh = drop_dir.join("new.pcap");
    let daemon = ns.start_daemon_with(
        "eph0",
        Some(&control),
        &[
            "--http",
            "80",
            "--user",
            "nobody",
            "--pcap",
            fresh.to_str().unwrap(),
        ],
    );
    let meta = std::fs::symlink_metadata(&fresh).unwrap();
    assert!(meta.is_file());
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (65534, 65534, 0o600),
        "{}",
        daemon.log()
    );
    assert!(ns.stop(daemon.index, libc::SIGTERM).success());
    assert!(std::fs::read(&fresh).unwrap().len() >= 24, "pcap header");
}

#[test]
fn control_socket_is_the_dropped_users_and_goes_away_at_exit() {
    let test = "control_socket_is_the_dropped_users_and_goes_away_at_exit";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    let tun = ns.unique_tun();
    let run_dir = RunDir(Path::new("/run/ephemera").join(&tun));
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        // The default path as root: /run/ephemera/TUN/control.sock.
        let daemon = ns.start_daemon_with(&tun, None, &["--http", "80", "--user", "nobody"]);
        let sock = daemon.control.clone();
        assert_eq!(sock, run_dir.0.join("control.sock"));
        let dir = std::fs::symlink_metadata(&run_dir.0).unwrap();
        assert_eq!(
            (dir.uid(), dir.mode() & 0o7777),
            (65534, 0o700),
            "{}",
            daemon.log()
        );
        let meta = std::fs::symlink_metadata(&sock).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o777),
            (65534, 0o600),
            "{}",
            daemon.log()
        );
        // Root finds it by --tun alone.
        let out = std::process::Command::new(BIN)
            .args(["ports", "--tun", &tun])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));

        let bin = ns.world_binary();
        let bin = bin.to_str().unwrap();
        let ports = [bin, "ports", "--control", sock.to_str().unwrap()];
        match as_user(&ns, 65534, &ports) {
            Some(out) => {
                // The user the daemon runs as is served (before the fix,
                // the check compared with the uid before the drop: root).
                assert!(
                    out.status.success(),
                    "{}\n{}",
                    text(&out.stderr),
                    daemon.log()
                );
                assert!(text(&out.stdout).contains("LISTEN"));
                // Anyone else is not.
                let other = as_user(&ns, 4242, &ports).unwrap();
                assert!(!other.status.success());
                assert!(
                    text(&other.stderr).contains("permission denied"),
                    "{}",
                    text(&other.stderr)
                );
            }
            None => skip(
                &format!("{test} (other users)"),
                "setpriv not found (apt install util-linux)",
            ),
        }

        assert!(ns.stop(daemon.index, signal).success(), "{}", daemon.log());
        assert!(
            !sock.exists(),
            "{name}: the socket is still there after exit:\n{}",
            daemon.log()
        );
    }
}

/// A SOCKS5 CONNECT to `to` (an IPv4 address and port) through the
/// daemon, from the namespace's kernel side (10.7.0.1), with a plain
/// socket: the reply code (REP), or `None` if the daemon closed first.
fn socks_rep(ns: &Netns, to: &str) -> Option<u8> {
    const CLIENT: &str = r#"
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection(("10.7.0.2", 1080), timeout=10)
s.sendall(bytes([5, 1, 0]))
def read(n):
    got = b""
    while len(got) < n:
        more = s.recv(n - len(got))
        if not more:
            break
        got += more
    return got
assert read(2) == b"\x05\x00", "method"
s.sendall(bytes([5, 1, 0, 1]) + socket.inet_aton(host) + int(port).to_bytes(2, "big"))
reply = read(10)
print(reply[1] if len(reply) == 10 else "closed")
"#;
    let out = ns.run(&["python3", "-c", CLIENT, to]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().parse().ok()
}

#[test]
fn socks_refuses_outsiders_and_denied_destinations_with_reply_2() {
    let test = "socks_refuses_outsiders_and_denied_destinations_with_reply_2";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    std::fs::write(ns.path("hello.txt"), b"hello\n").unwrap();

    // 10.7.0.1 is not in the allowed network: reply 02 to any request.
    let daemon = ns.start_daemon(&["--socks", "1080", "--socks-allow", "192.0.2.0/24"]);
    ns.start_file_server();
    assert_eq!(socks_rep(&ns, "10.7.0.1:8000"), Some(2), "{}", daemon.log());
    let stats = daemon.stats();
    assert_eq!(stats.get("socks_denied_client"), Some(&1), "{stats:?}");
    assert_eq!(stats.get("tcp_active_opens"), Some(&0), "{stats:?}");
    assert!(ns.stop(daemon.index, libc::SIGTERM).success());

    // By default the interface's subnet may use it (the README's first
    // session), but not to reach cloud metadata or the host's loopback.
    let daemon = ns.start_daemon(&["--socks", "1080"]);
    assert_eq!(socks_rep(&ns, "169.254.169.254:80"), Some(2));
    assert_eq!(socks_rep(&ns, "127.0.0.1:22"), Some(2));
    let body = ns.curl_body(
        "readme",
        10,
        &[
            "--socks5-hostname",
            "10.7.0.2:1080",
            "http://10.7.0.1:8000/hello.txt",
        ],
        &daemon,
    );
    assert_eq!(body, b"hello\n");
    // curl names the refusal.
    let out = ns.run(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--socks5-hostname",
        "10.7.0.2:1080",
        "http://169.254.169.254/latest/meta-data/",
    ]);
    assert!(!out.status.success());
    let stats = daemon.stats();
    assert_eq!(stats.get("socks_denied_destination"), Some(&3), "{stats:?}");
    assert_eq!(stats.get("socks_denied_client"), Some(&0), "{stats:?}");
    // `fetch` obeys the same rules.
    let out = daemon.client("fetch", &["http://127.0.0.1:8000/hello.txt"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not allowed as a destination"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(daemon.stats().get("fetch_denied_destination"), Some(&1));
}

#[test]
fn socks_users_log_in_with_rfc_1929_from_a_private_file() {
    let test = "socks_users_log_in_with_rfc_1929_from_a_private_file";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    std::fs::write(ns.path("hello.txt"), b"hello\n").unwrap();
    let users = ns.path("socks.users");
    std::fs::write(&users, b"# who may use the proxy\nalice:s3cret\n").unwrap();
    let users_arg = users.to_str().unwrap().to_string();

    // A file others may read is refused before anything is set up.
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = ns.run(&[
        "timeout",
        "10",
        BIN,
        "up",
        "--tun",
        "eph0",
        "--addr",
        "10.7.0.2/24",
        "--socks",
        "1080",
        "--socks-auth",
        &users_arg,
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("mode 0644") && err.contains("chmod 600"),
        "{err}"
    );
    assert_eq!(ns.links(), ["lo"]);

    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
    let daemon = ns.start_daemon(&["--socks", "1080", "--socks-auth", &users_arg]);
    ns.start_file_server();
    let url = "http://10.7.0.1:8000/hello.txt";
    let body = ns.curl_body(
        "login",
        10,
        &["--proxy", "socks5h://alice:s3cret@10.7.0.2:1080", url],
        &daemon,
    );
    assert_eq!(body, b"hello\n");
    for proxy in [
        "socks5h://alice:guess@10.7.0.2:1080",
        // No credentials: no acceptable method.
        "socks5h://10.7.0.2:1080",
    ] {
        let out = ns.run(&["curl", "-sS", "--max-time", "10", "--proxy", proxy, url]);
        assert!(!out.status.success(), "{proxy} got through");
    }
    let stats = daemon.stats();
    assert_eq!(stats.get("socks_auth_failed"), Some(&1), "{stats:?}");
}

#[test]
fn the_daemon_wakes_for_head_and_idle_deadlines() {
    let test = "the_daemon_wakes_for_head_and_idle_deadlines";
    let Some(mut ns) = Netns::new(test) else {
        return;
    };
    let daemon = ns.start_daemon(&[
        "--http",
        "80",
        "--echo",
        "7",
        "--head-timeout",
        "1",
        "--idle-timeout",
        "2",
    ]);
    // A silent HTTP client gets 408 after about a second; an echo client
    // that goes quiet is closed after about two. Each prints what it got
    // and how long the daemon took to close.
    const CLIENT: &str = r#"
import socket, sys, time
port, send = int(sys.argv[1]), sys.argv[2].encode()
s = socket.create_connection(("10.7.0.2", port), timeout=20)
s.sendall(send)
start, got = time.monotonic(), b""
while True:
    more = s.recv(4096)
    if not more:
        break
    got += more
print("%.1f %s" % (time.monotonic() - start, got.split(b"\r\n")[0].decode()))
"#;
    for (port, send, expect, least) in [
        ("80", "", "HTTP/1.1 408 Request Timeout", 0.9),
        ("7", "hi", "hi", 1.9),
    ] {
        let out = ns.run(&["python3", "-c", CLIENT, port, send]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let line = text(&out.stdout);
        let (secs, got) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        let secs: f64 = secs.parse().unwrap();
        assert_eq!(got, expect, "{line}\n{}", daemon.log());
        assert!((least..least + 3.0).contains(&secs), "{line}");
    }
    let stats = daemon.stats();
    assert_eq!(stats.get("http_head_timeouts"), Some(&1), "{stats:?}");
    assert_eq!(stats.get("idle_timeouts"), Some(&1), "{stats:?}");
}
