//! The harness of the `ephemera up` tests ([`crate::daemon`]): real clients: curl, ping, python3's `http.server`
//! and plain sockets, each test in a network namespace of its own.
//!
//! Every test makes a namespace `eph-t-<pid>-<n>` with `ip netns add`,
//! runs the daemon there with `ip netns exec`, talks to it from the
//! namespace's kernel side (10.7.0.1) and deletes the namespace when it
//! ends, pass or fail ([`Netns`]'s `Drop`). Nothing is configured in the
//! host's namespace and no packet leaves the test's own namespace. The
//! control socket lives in the test's temporary directory; it is a Unix
//! socket, so `ephemera ports` and `ephemera fetch` reach it from anywhere.
//!
//! Needs root, `ip` (iproute2), `/dev/net/tun`, curl and python3; without
//! them each test prints `SKIP <test>: <reason>` on stderr and passes.
//! `ping` (iputils-ping) and `setpriv` (util-linux) are optional: without
//! them the assertions that need them are skipped, also with a message.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_ephemera");
/// The stack's address; the kernel side of the TUN gets 10.7.0.1.
pub(crate) const STACK: &str = "10.7.0.2";
pub(crate) const KERNEL: &str = "10.7.0.1";
/// A distinctive ephemeral range, so ports from ephemera's own table are
/// easy to tell from the kernel's (32768-60999 on Linux).
pub(crate) const RANGE: std::ops::RangeInclusive<u16> = 40000..=40999;
pub(crate) const RANGE_ARG: &str = "40000-40999";

/// Print a line the test harness does not capture (it only captures the
/// `print!` family), so a skip is visible in a plain `cargo test`.
pub(crate) fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

pub(crate) fn skip(test: &str, reason: &str) {
    say(&format!("SKIP {test}: {reason}"));
}

/// Whether `program` runs (`program arg` exits 0).
pub(crate) fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A network namespace and a scratch directory, both removed on drop,
/// with every process started in it (daemon, servers, clients) killed
/// first.
pub(crate) struct Netns {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) children: Vec<Child>,
}

impl Netns {
    /// A fresh namespace with its loopback up, or `None` after printing
    /// why this test is skipped.
    pub(crate) fn new(test: &str) -> Option<Netns> {
        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            skip(test, "needs root (ip netns, TUN)");
            return None;
        }
        if !Path::new("/dev/net/tun").exists() {
            skip(test, "/dev/net/tun is missing (modprobe tun)");
            return None;
        }
        for (program, arg, package) in [
            ("ip", "-V", "iproute2"),
            ("curl", "--version", "curl"),
            ("python3", "--version", "python3"),
        ] {
            if !have(program, arg) {
                skip(
                    test,
                    &format!("{program} not found (apt install {package})"),
                );
                return None;
            }
        }
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("eph-t-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip");
        if !out.status.success() {
            skip(
                test,
                &format!("ip netns add failed: {}", text(&out.stderr).trim()),
            );
            return None;
        }
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        // World-readable, so a binary copied here runs as `nobody`.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let ns = Netns {
            name,
            dir,
            children: Vec::new(),
        };
        let up = ns.run(&["ip", "link", "set", "lo", "up"]);
        assert!(up.status.success(), "{}", text(&up.stderr));
        Some(ns)
    }

    /// `ip netns exec NS args…`, not yet run.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Run `args` in the namespace to completion.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run ip netns exec")
    }

    /// Start `args` in the namespace; it is killed when the test ends.
    /// Returns its index in `children`.
    pub(crate) fn spawn(&mut self, mut cmd: Command) -> usize {
        self.children.push(cmd.spawn().expect("spawn"));
        self.children.len() - 1
    }

    /// Start `cmd` in the namespace (see [`spawn`](Self::spawn)) and wait
    /// until it prints `ready` on its standard output; `what` names it if
    /// it does not.
    pub(crate) fn spawn_ready(&mut self, mut cmd: Command, what: &str) {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let i = self.spawn(cmd);
        let stdout = self.children[i].stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "{what} did not start");
    }

    /// Start `n` downloads of 100 MB from the daemon's `--http` at
    /// 20 kB/s: clients that hold their connections open past any test.
    pub(crate) fn spawn_slow_downloads(&mut self, n: usize) {
        for _ in 0..n {
            let mut cmd = self.command(&[
                "curl",
                "-sS",
                "--max-time",
                "60",
                "-o",
                "/dev/null",
                "--limit-rate",
                "20k",
                "http://10.7.0.2/bytes/100000000",
            ]);
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            self.spawn(cmd);
        }
    }

    /// Wait up to 5 s until no kernel socket in the namespace is
    /// ESTABLISHED: after the daemon has gone, none may be left waiting on
    /// it. `log` is the daemon's, for the failure message.
    pub(crate) fn assert_none_established(&self, log: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = self.run(&["ss", "-Htn", "state", "established"]);
            assert!(out.status.success(), "ss: {}", text(&out.stderr));
            let established = text(&out.stdout);
            if established.trim().is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still established after the daemon exited:\n{established}\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `curl -sS --max-time SECS args… URL` in the namespace, saving the
    /// body to the scratch file `what`; the body, once curl has succeeded
    /// (a failure names `what` and shows `daemon`'s log).
    pub(crate) fn curl_body(
        &self,
        what: &str,
        secs: u32,
        args: &[&str],
        daemon: &Daemon,
    ) -> Vec<u8> {
        let got = self.path(what);
        let secs = secs.to_string();
        let mut all = vec![
            "curl",
            "-sS",
            "--max-time",
            &secs,
            "-o",
            got.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "{what}: {}\n{}",
            text(&out.stderr),
            daemon.log()
        );
        std::fs::read(&got).unwrap()
    }

    /// `curl`'s HTTP status for a GET of `url` in the namespace, the body
    /// thrown away ("000" when no response came within ten seconds).
    pub(crate) fn http_status(&self, url: &str) -> String {
        let out = self.run(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ]);
        text(&out.stdout)
    }

    /// Give what `ip netns exec` runs here its own `/etc/FILE`:
    /// `ip netns exec` bind-mounts `/etc/netns/NS/FILE` over it (the host's
    /// file is untouched, and ours is removed on drop). Returns whether the
    /// namespace sees it.
    pub(crate) fn etc(&self, file: &str, contents: &str) -> bool {
        let dir = Path::new("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), contents).unwrap();
        let seen = self.run(&["cat", &format!("/etc/{file}")]);
        text(&seen.stdout) == contents
    }

    /// Interface names in the namespace.
    pub(crate) fn links(&self) -> Vec<String> {
        let out = self.run(&["ip", "-o", "link", "show"]);
        text(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect()
    }

    /// Start `ephemera up --tun eph0 --addr 10.7.0.2/24 --ephemeral-range
    /// 40000-40999 extra…` (or the range `extra` names) and wait until it answers `ephemera ports`.
    pub(crate) fn start_daemon(&mut self, extra: &[&str]) -> Daemon {
        let control = self.path("ctl.sock");
        self.start_daemon_with("eph0", Some(&control), extra)
    }

    /// A TUN name no other test uses, for a daemon on its default control
    /// path (`/run/ephemera/TUN/`, shared by every namespace).
    pub(crate) fn unique_tun(&self) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        format!("e{}x{n}", std::process::id())
    }

    /// Start `ephemera up --tun TUN --addr 10.7.0.2/24 --ephemeral-range
    /// 40000-40999 [--control PATH] extra…` (without `control`, on the
    /// default path, which the clients then name) and wait until it
    /// answers `ephemera ports`.
    pub(crate) fn start_daemon_with(
        &mut self,
        tun: &str,
        control: Option<&Path>,
        extra: &[&str],
    ) -> Daemon {
        let log = self.path(&format!("daemon-{}.log", self.children.len()));
        let mut cmd = self.command(&[BIN, "up", "--tun", tun, "--addr", "10.7.0.2/24"]);
        // A test that names its own range gets it.
        if !extra.contains(&"--ephemeral-range") {
            cmd.args(["--ephemeral-range", RANGE_ARG]);
        }
        if let Some(c) = control {
            cmd.arg("--control").arg(c);
        }
        cmd.args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let index = self.spawn(cmd);
        let control = control.map_or_else(
            || Path::new("/run/ephemera").join(tun).join("control.sock"),
            Path::to_path_buf,
        );
        let daemon = Daemon {
            index,
            control,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if daemon.try_ports().is_ok() {
                return daemon;
            }
            if let Some(status) = self.children[index].try_wait().unwrap() {
                panic!("daemon exited ({status}) at start:\n{}", daemon.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not answer `ephemera ports` within 10 s:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send `signal` to child `index` and wait (at most 15 s) for it to
    /// exit; its status.
    pub(crate) fn stop(&mut self, index: usize, signal: i32) -> ExitStatus {
        let pid = self.children[index].id() as i32;
        // SAFETY: kill(2) on a process this test started.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        self.wait_child(index, Duration::from_secs(15))
            .expect("still running 15 s after the signal")
    }

    /// A scratch subdirectory owned by `uid`, mode 0700.
    pub(crate) fn owned_dir(&self, name: &str, uid: u32) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    /// A copy of the `ephemera` binary that any user can run (the target
    /// directory may be private), for commands run as another user.
    pub(crate) fn world_binary(&self) -> PathBuf {
        let bin = self.path("ephemera");
        if !bin.exists() {
            std::fs::copy(BIN, &bin).unwrap();
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        bin
    }

    /// Wait for child `index` to exit, at most `limit`.
    pub(crate) fn wait_child(&mut self, index: usize, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.children[index].try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start a python3 HTTP server on 10.7.0.1:8000 serving the scratch
    /// directory, logging `client-ip:client-port "request line" status`
    /// per request to `server.log`. Returns once it is listening.
    pub(crate) fn start_file_server(&mut self) -> PathBuf {
        const SERVER: &str = r#"
import functools, http.server, sys
log = open(sys.argv[2], "a", buffering=1)
class Handler(http.server.SimpleHTTPRequestHandler):
    def log_request(self, code="-", size="-"):
        log.write('%s:%d "%s" %s\n' % (self.client_address[0], self.client_address[1], self.requestline, code))
handler = functools.partial(Handler, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer(("10.7.0.1", 8000), handler)
print("ready", flush=True)
server.serve_forever()
"#;
        let log = self.path("server.log");
        let mut cmd = self.command(&["python3", "-c", SERVER]);
        cmd.arg(&self.dir).arg(&log);
        self.spawn_ready(cmd, "python3 http.server");
        log
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Clients started through a shell inside the namespace.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in text(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill(2) on a process of this test's namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
        let etc = Path::new("/etc/netns");
        if std::fs::remove_dir_all(etc.join(&self.name)).is_ok() {
            // Only if no other namespace has files there.
            let _ = std::fs::remove_dir(etc);
        }
    }
}

/// A running `ephemera up` (child `index` of its [`Netns`]).
pub(crate) struct Daemon {
    pub(crate) index: usize,
    pub(crate) control: PathBuf,
    pub(crate) log: PathBuf,
}

/// One row of `ephemera ports --json`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Row {
    pub(crate) proto: String,
    pub(crate) state: String,
    pub(crate) local: SocketAddr,
    pub(crate) remote: Option<SocketAddr>,
    /// The stack shard holding it, with `up --queues` above 1.
    #[serde(default)]
    pub(crate) shard: Option<u16>,
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct Ports {
    pub(crate) ports: Vec<Row>,
}

impl Daemon {
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ephemera <cmd> --control PATH args…`.
    pub(crate) fn client(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg(cmd)
            .arg("--control")
            .arg(&self.control)
            .args(args)
            .output()
            .expect("run ephemera")
    }

    pub(crate) fn try_ports(&self) -> Result<Vec<Row>, String> {
        let out = self.client("ports", &["--json"]);
        if !out.status.success() {
            return Err(text(&out.stderr));
        }
        let p: Ports = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        Ok(p.ports)
    }

    pub(crate) fn ports(&self) -> Vec<Row> {
        self.try_ports()
            .unwrap_or_else(|e| panic!("ephemera ports: {e}\n{}", self.log()))
    }

    /// The counters of `ephemera ports --stats --json`.
    pub(crate) fn stats(&self) -> BTreeMap<String, u64> {
        self.stats_by_shard().0
    }

    /// The counters of `ephemera ports --stats --json`, summed, and each
    /// shard's own in shard order (none for a single stack), from one
    /// request.
    pub(crate) fn stats_by_shard(&self) -> (BTreeMap<String, u64>, Vec<BTreeMap<String, u64>>) {
        #[derive(serde::Deserialize)]
        struct Stats {
            stats: BTreeMap<String, u64>,
            #[serde(default)]
            shard_stats: Vec<BTreeMap<String, u64>>,
        }
        let out = self.client("ports", &["--stats", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let s = serde_json::from_slice::<Stats>(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
        (s.stats, s.shard_stats)
    }
}

/// TCP connections (not listeners) in a port table.
pub(crate) fn connections(rows: &[Row]) -> Vec<&Row> {
    rows.iter()
        .filter(|r| r.proto == "tcp" && r.state != "LISTEN")
        .collect()
}

/// Deterministic pseudo-random bytes (xorshift64), so a corrupted or
/// shifted byte cannot go unnoticed.
pub(crate) fn test_file(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `client-ip:client-port` of each logged request for `path`.
pub(crate) fn server_clients(log: &Path, path: &str) -> Vec<SocketAddr> {
    let needle = format!("\"GET {path} HTTP/1.1\" 200");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

/// The body of the daemon's `/bytes/N` route, written out here rather
/// than taken from the daemon: N octets of `0-9A-Za-z` and a newline,
/// repeating.
pub(crate) fn bytes_route_body(n: usize) -> Vec<u8> {
    const PERIOD: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\n";
    PERIOD.iter().copied().cycle().take(n).collect()
}
