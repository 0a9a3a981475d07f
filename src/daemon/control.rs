//! The control socket: how `ephemera ports` and `ephemera fetch` talk to a
//! running daemon.
//!
//! A Unix stream socket, created mode 0600 by the user the daemon runs as
//! (after any privilege drop), in a directory no one else can write, and
//! removed at exit; and a peer-credential check on every connection: only
//! that user and root are served.
//!
//! The protocol is line-delimited JSON: one [`Request`] per line in, one
//! [`Response`] per line out. The one exception carries a fetched body
//! byte-exact without escaping: a `{"reply":"body","len":N}` line is
//! followed by exactly N raw bytes.
//!
//! The server side never blocks: the daemon's event loop polls its fds
//! ([`ControlServer::poll_fds`]), calls [`ControlServer::handle_io`], then
//! takes requests with [`ControlServer::poll_request`]. The client side
//! ([`ControlClient`]) is plain blocking I/O.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{
    bind, getsockopt, listen, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::{fchmod, Mode};
use serde::{Deserialize, Serialize};

use crate::daemon::files::{self, DirRule};
use crate::daemon::poll::{interest, PollFd};
use crate::daemon::table::PortEntry;

/// Longest request line the server reads; longer ones end the connection.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;
/// Most clients served at once; more are told so and closed.
pub const MAX_CLIENTS: usize = 32;
/// Longest response line a client accepts: a port table of a million rows.
pub const MAX_RESPONSE_LINE: usize = 256 << 20;

/// A request, one JSON object per line: `{"cmd":"ports"}`,
/// `{"cmd":"stats"}`, `{"cmd":"fetch","url":"http://..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The port table.
    Ports,
    /// The stack's counters.
    Stats,
    /// An HTTP GET made by the daemon through its stack.
    Fetch {
        /// The `http://` URL.
        url: String,
    },
}

/// A response line. `reply` names the variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Ports`].
    Ports {
        /// The rows.
        ports: Vec<PortEntry>,
    },
    /// Answer to [`Request::Stats`]: counter name to value.
    Stats {
        /// The counters, summed over the shards.
        counters: BTreeMap<String, u64>,
        /// Each shard's own counters, in shard order, when `up --queues`
        /// runs more than one; absent (empty) for a single stack.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        shards: Vec<BTreeMap<String, u64>>,
    },
    /// A fetch's connection is up and the response head arrived.
    FetchStarted {
        /// The stack's end, with the ephemeral port its table assigned.
        local: SocketAddr,
        /// The server's end.
        remote: SocketAddr,
        /// HTTP status code.
        status: u16,
    },
    /// Followed on the wire by exactly `len` raw bytes of body.
    Body {
        /// Number of raw bytes that follow this line.
        len: usize,
    },
    /// The fetch completed; `bytes` of body were sent in total.
    FetchDone {
        /// Body length.
        bytes: u64,
    },
    /// The request failed (or could not be parsed).
    Error {
        /// One line saying why.
        message: String,
    },
}

/// The counters a [`Request::Stats`] returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    /// Summed over the shards.
    pub counters: BTreeMap<String, u64>,
    /// Each shard's own, in shard order; empty for a single stack.
    pub shards: Vec<BTreeMap<String, u64>>,
}

/// Identifies one control connection, for replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(u64);

#[cfg(test)]
impl ClientId {
    /// An id for tests that need one without a socket.
    pub(crate) fn for_test(n: u64) -> ClientId {
        ClientId(n)
    }
}

#[derive(Debug)]
struct Client {
    id: ClientId,
    stream: UnixStream,
    input: Vec<u8>,
    output: VecDeque<u8>,
    /// Close once `output` is flushed (peer sent EOF, or we said so).
    closing: bool,
    /// The peer is gone or broke the protocol: drop without flushing.
    dead: bool,
}

/// The daemon's end: a non-blocking listener and its connections.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    clients: Vec<Client>,
    requests: VecDeque<(ClientId, Request)>,
    next_id: u64,
    /// The socket file bind made (device, inode): removed at exit only
    /// if it is still this one.
    inode: (u64, u64),
    /// Served besides root: the user the daemon runs as.
    serve_uid: u32,
}

/// `path` as a Unix socket address: not empty, no NUL, and short enough
/// for `sun_path`.
fn socket_addr(path: &Path) -> io::Result<UnixAddr> {
    // sun_path holds 108 octets, the last a NUL (unix(7)).
    const SUN_PATH: usize = 108;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= SUN_PATH || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "control socket path {} is empty or longer than {} bytes",
                path.display(),
                SUN_PATH - 1
            ),
        ));
    }
    Ok(UnixAddr::new(path)?)
}

/// The uid of the process at the other end of a Unix stream (SO_PEERCRED).
pub fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    Ok(getsockopt(stream, sockopt::PeerCredentials)?.uid())
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Whether a peer with `uid` may use a daemon (or be trusted as one)
/// running as `euid`: the same user, or root.
pub fn peer_allowed(uid: u32, euid: u32) -> bool {
    uid == euid || uid == 0
}

/// Whether a client running as `me` may trust the daemon serving `path`
/// as `daemon`: the same user, or root; or, for a root client, the user
/// whose own directory, closed to everyone else, holds the socket: a
/// daemon root started with `--user`, which made its socket after the
/// drop. A socket in a directory others can write could be anyone's.
pub fn daemon_trusted(path: &Path, daemon: u32, me: u32) -> bool {
    if peer_allowed(daemon, me) {
        return true;
    }
    let dir = match path.parent() {
        Some(d) if d.as_os_str().is_empty() => Path::new("."),
        Some(d) => d,
        None => return false,
    };
    me == 0
        && std::fs::symlink_metadata(dir)
            .is_ok_and(|m| m.is_dir() && m.uid() == daemon && m.mode() & 0o022 == 0)
}

/// Remove a leftover socket at `path` if no one listens on it; refuse if a
/// daemon does, or if something other than a socket is there.
fn clear_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("a daemon is already listening on {}", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

impl ControlServer {
    /// Create the socket at `path`, served to `serve_uid` (the user the
    /// daemon runs as, after any privilege drop) and root. Call it as that
    /// user: the socket is then that user's, and the daemon can remove it
    /// at exit.
    ///
    /// Its directory is made (mode 0700) if missing and must pass `rule`
    /// (checked with `lstat`). The socket is created with its final mode,
    /// 0600 from the first instant, and nothing changes it by path
    /// afterwards. A stale socket left by a
    /// dead daemon is replaced; a live one is `AddrInUse`.
    pub fn bind(path: &Path, rule: DirRule, serve_uid: u32) -> io::Result<ControlServer> {
        let addr = socket_addr(path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            files::ensure_dir(dir, 0o700, rule)?;
        }
        clear_stale(path)?;
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        // Linux creates the file with the socket's own mode less the
        // umask (`unix_bind_bsd`), so a mode set on the descriptor before
        // bind is the file's from its first instant, with no process-wide
        // umask change.
        fchmod(&fd, Mode::from_bits_truncate(0o600))?;
        bind(fd.as_raw_fd(), &addr)?;
        let socket_file = std::fs::symlink_metadata(path).map(|m| (m.dev(), m.ino()));
        let listening = socket_file.and_then(|id| {
            listen(&fd, Backlog::new(16)?)?;
            Ok(id)
        });
        let inode = match listening {
            Ok(id) => id,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        Ok(ControlServer {
            listener: UnixListener::from(fd),
            path: path.to_path_buf(),
            inode,
            clients: Vec::new(),
            requests: VecDeque::new(),
            next_id: 1,
            serve_uid,
        })
    }

    /// Append what to wait on: the listener, each client for reading, and
    /// for writing those with output pending.
    pub fn poll_fds<'a>(&'a self, out: &mut Vec<PollFd<'a>>) {
        out.push(interest(self.listener.as_fd(), false));
        for c in &self.clients {
            out.push(interest(c.stream.as_fd(), !c.output.is_empty()));
        }
    }

    /// Accept, read and write whatever is ready without blocking; parse
    /// complete request lines (answering bad ones with an error), and drop
    /// finished or broken connections. Call after `poll` says one of
    /// [`poll_fds`](Self::poll_fds) is ready: a client with output waiting
    /// is polled for writing too, so queued replies go out on the next
    /// turn.
    pub fn handle_io(&mut self) {
        self.accept_all();
        for i in 0..self.clients.len() {
            let (requests, errors) = Self::read_client(&mut self.clients[i]);
            let id = self.clients[i].id;
            self.requests.extend(requests.into_iter().map(|r| (id, r)));
            for message in errors {
                Self::queue(&mut self.clients[i], &Response::Error { message });
            }
            Self::flush_client(&mut self.clients[i]);
        }
        self.clients
            .retain(|c| !(c.dead || (c.closing && c.output.is_empty())));
    }

    fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: keep serving those we have.
                    log::warn!("control: accept failed: {e}");
                    return;
                }
            };
            let refuse = |s: &UnixStream, why: &str| {
                let mut line = serde_json::to_vec(&Response::Error {
                    message: why.to_string(),
                })
                .unwrap_or_default();
                line.push(b'\n');
                let _ = (&*s).write(&line);
            };
            match peer_uid(&stream) {
                Ok(uid) if peer_allowed(uid, self.serve_uid) => {}
                Ok(uid) => {
                    log::warn!("control: refused a connection from uid {uid}");
                    refuse(
                        &stream,
                        "permission denied: only the daemon's user or root may use this socket",
                    );
                    continue;
                }
                Err(e) => {
                    log::warn!("control: no peer credentials: {e}");
                    continue;
                }
            }
            if self.clients.len() >= MAX_CLIENTS {
                refuse(&stream, "too many control connections");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let id = ClientId(self.next_id);
            self.next_id += 1;
            self.clients.push(Client {
                id,
                stream,
                input: Vec::new(),
                output: VecDeque::new(),
                closing: false,
                dead: false,
            });
        }
    }

    /// Read what is available and split it into requests and error
    /// messages for lines that were not requests.
    fn read_client(c: &mut Client) -> (Vec<Request>, Vec<String>) {
        let mut requests = Vec::new();
        let mut errors = Vec::new();
        let mut buf = [0u8; 4096];
        while !c.closing && !c.dead {
            match (&c.stream).read(&mut buf) {
                Ok(0) => c.closing = true,
                Ok(n) => c.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => c.dead = true,
            }
            while let Some(end) = c.input.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = c.input.drain(..=end).collect();
                let line = &line[..line.len() - 1];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<Request>(line) {
                    Ok(r) => requests.push(r),
                    Err(e) => errors.push(format!("bad request: {e}")),
                }
            }
            if c.input.len() > MAX_REQUEST_LINE {
                errors.push(format!("request line longer than {MAX_REQUEST_LINE} bytes"));
                c.input.clear();
                c.closing = true;
            }
        }
        (requests, errors)
    }

    fn queue(c: &mut Client, r: &Response) {
        // Serializing our own plain types cannot fail; an empty line would
        // still keep the framing intact.
        let line = serde_json::to_vec(r).unwrap_or_default();
        c.output.extend(line);
        c.output.push_back(b'\n');
    }

    fn flush_client(c: &mut Client) {
        while !c.output.is_empty() && !c.dead {
            let (front, _) = c.output.as_slices();
            match (&c.stream).write(front) {
                Ok(0) => c.dead = true,
                Ok(n) => {
                    c.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => c.dead = true,
            }
        }
    }

    /// The next request received, with who asked.
    pub fn poll_request(&mut self) -> Option<(ClientId, Request)> {
        self.requests.pop_front()
    }

    fn client(&mut self, id: ClientId) -> Option<&mut Client> {
        self.clients.iter_mut().find(|c| c.id == id && !c.dead)
    }

    /// Queue a response line for `id` (sent by the next `handle_io`, or
    /// right away if the socket takes it). Returns false if `id` is gone.
    pub fn reply(&mut self, id: ClientId, response: &Response) -> bool {
        let Some(c) = self.client(id) else {
            return false;
        };
        Self::queue(c, response);
        Self::flush_client(c);
        true
    }

    /// Queue a chunk of raw body bytes for `id`, framed by a
    /// [`Response::Body`] line. Returns false if `id` is gone.
    pub fn send_body(&mut self, id: ClientId, data: &[u8]) -> bool {
        let Some(c) = self.client(id) else {
            return false;
        };
        if !data.is_empty() {
            Self::queue(c, &Response::Body { len: data.len() });
            c.output.extend(data);
            Self::flush_client(c);
        }
        true
    }

    /// Bytes queued for `id` and not yet taken by the socket (for back
    /// pressure: stop reading a fetch while this is large). `None` if gone.
    pub fn pending_output(&self, id: ClientId) -> Option<usize> {
        self.clients
            .iter()
            .find(|c| c.id == id && !c.dead)
            .map(|c| c.output.len())
    }

    /// Close `id` once its queued output is sent.
    pub fn finish(&mut self, id: ClientId) {
        if let Some(c) = self.client(id) {
            c.closing = true;
        }
    }
}

impl Drop for ControlServer {
    /// Remove the socket file, if it is still the one `bind` made: the
    /// daemon runs as the directory's owner, so this works after a
    /// privilege drop too.
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.inode);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

/// A blocking connection to a daemon, for the `ports` and `fetch` commands.
#[derive(Debug)]
pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// What a completed fetch reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchSummary {
    /// The stack's end of the connection.
    pub local: SocketAddr,
    /// The server's end.
    pub remote: SocketAddr,
    /// HTTP status.
    pub status: u16,
    /// Body bytes written.
    pub bytes: u64,
}

fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl ControlClient {
    /// Connect to the daemon at `path`, and check that it may be trusted
    /// ([`daemon_trusted`]: a socket in a shared directory could be
    /// anyone's). `timeout` bounds each wait for a reply.
    pub fn connect(path: &Path, timeout: Duration) -> io::Result<ControlClient> {
        let stream = UnixStream::connect(path)?;
        let uid = peer_uid(&stream)?;
        if !daemon_trusted(path, uid, euid()) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is served by uid {uid}, neither you nor root",
                    path.display()
                ),
            ));
        }
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        Ok(ControlClient {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Send one request line.
    pub fn send(&mut self, request: &Request) -> io::Result<()> {
        let mut line = serde_json::to_vec(request).map_err(|e| protocol_error(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)
    }

    /// Read one response line. `UnexpectedEof` if the daemon hung up.
    pub fn recv(&mut self) -> io::Result<Response> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_RESPONSE_LINE as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the daemon closed the control connection",
            ));
        }
        serde_json::from_slice(&line)
            .map_err(|e| protocol_error(format!("bad response from daemon: {e}")))
    }

    /// Send a request and read its response; a [`Response::Error`] becomes
    /// an `io::Error` with its message.
    pub fn request(&mut self, request: &Request) -> io::Result<Response> {
        self.send(request)?;
        match self.recv()? {
            Response::Error { message } => Err(io::Error::other(message)),
            r => Ok(r),
        }
    }

    /// The daemon's port table.
    pub fn ports(&mut self) -> io::Result<Vec<PortEntry>> {
        match self.request(&Request::Ports)? {
            Response::Ports { ports } => Ok(ports),
            other => Err(protocol_error(format!("expected ports, got {other:?}"))),
        }
    }

    /// The daemon's counters: summed, and each shard's when it runs
    /// several.
    pub fn stats(&mut self) -> io::Result<Stats> {
        match self.request(&Request::Stats)? {
            Response::Stats { counters, shards } => Ok(Stats { counters, shards }),
            other => Err(protocol_error(format!("expected stats, got {other:?}"))),
        }
    }

    /// Have the daemon GET `url`, writing the body to `out` as it comes.
    /// `started` is called with (local, remote, status) once known, before
    /// any body is written.
    pub fn fetch(
        &mut self,
        url: &str,
        out: &mut dyn Write,
        mut started: impl FnMut(SocketAddr, SocketAddr, u16),
    ) -> io::Result<FetchSummary> {
        self.send(&Request::Fetch {
            url: url.to_string(),
        })?;
        let mut head = None;
        let mut written = 0u64;
        loop {
            match self.recv()? {
                Response::FetchStarted {
                    local,
                    remote,
                    status,
                } => {
                    started(local, remote, status);
                    head = Some((local, remote, status));
                }
                Response::Body { len } => {
                    if head.is_none() {
                        return Err(protocol_error("body before fetch_started"));
                    }
                    let copied = io::copy(&mut (&mut self.reader).take(len as u64), out)?;
                    if copied != len as u64 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the daemon hung up mid-body",
                        ));
                    }
                    written += copied;
                }
                Response::FetchDone { bytes } => {
                    let Some((local, remote, status)) = head else {
                        return Err(protocol_error("fetch_done before fetch_started"));
                    };
                    if bytes != written {
                        return Err(protocol_error(format!(
                            "daemon sent {written} bytes but says {bytes}"
                        )));
                    }
                    return Ok(FetchSummary {
                        local,
                        remote,
                        status,
                        bytes,
                    });
                }
                Response::Error { message } => return Err(io::Error::other(message)),
                other => {
                    return Err(protocol_error(format!(
                        "unexpected reply during fetch: {other:?}"
                    )))
                }
            }
        }
    }
}

/// One line saying why connecting to the daemon at `path` failed, and
/// what to do.
pub fn explain_connect(path: &Path, err: &io::Error) -> String {
    let p = path.display();
    match err.raw_os_error() {
        Some(libc::ENOENT) => format!(
            "no daemon: {p} does not exist; is `ephemera up` running? Pass the same --tun or --control it was given"
        ),
        Some(libc::ECONNREFUSED) => format!("no daemon is listening on {p} (a stale socket); is `ephemera up` running?"),
        Some(libc::EACCES) | Some(libc::EPERM) => {
            format!("permission denied on {p}: run as the daemon's user or as root")
        }
        _ => format!("cannot talk to the daemon at {p}: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::files::tests::TempDir;
    use crate::daemon::table::tests::entry;
    use ephemera::Protocol;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::io::OwnedFd;
    use std::time::Instant;

    /// A socket file with no listener behind it, as a killed daemon leaves.
    /// Bound but never listening, so connects are refused even while a
    /// concurrently forked test child holds a copy of the fd.
    fn stale_socket(path: &Path) -> OwnedFd {
        let addr = socket_addr(path).unwrap();
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        );
        let fd = fd.unwrap();
        bind(fd.as_raw_fd(), &addr).unwrap();
        fd
    }

    /// The directory rule of an explicit `--control`, for this user.
    fn rule() -> DirRule {
        DirRule::NotShared { uid: euid() }
    }

    /// Run the server's side until `done` says so (bounded).
    fn serve_until(server: &mut ControlServer, mut step: impl FnMut(&mut ControlServer) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let mut fds = Vec::new();
            server.poll_fds(&mut fds);
            crate::daemon::poll::poll(&mut fds, Some(Duration::from_millis(20))).unwrap();
            server.handle_io();
            if step(server) {
                return;
            }
        }
        panic!("server loop timed out");
    }

    #[test]
    fn wire_format() {
        assert_eq!(
            serde_json::to_string(&Request::Ports).unwrap(),
            r#"{"cmd":"ports"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"stats"}"#).unwrap(),
            Request::Stats
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"fetch","url":"http://a/"}"#).unwrap(),
            Request::Fetch {
                url: "http://a/".into()
            }
        );
        for bad in [r#"{"cmd":"nope"}"#, r#"{"cmd":"fetch"}"#, "[]", "ports"] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
        let r = Response::Body { len: 3 };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"reply":"body","len":3}"#
        );
        let p = Response::Ports {
            ports: vec![entry(Protocol::Tcp, "LISTEN", "10.7.0.2:80", None, 5)],
        };
        let s = serde_json::to_string(&p).unwrap();
        assert!(
            s.contains(r#""local":"10.7.0.2:80""#) && s.contains(r#""remote":null"#),
            "{s}"
        );
        assert_eq!(serde_json::from_str::<Response>(&s).unwrap(), p);
    }

    #[test]
    fn socket_is_private_and_serves_requests() {
        let dir = TempDir::new("ctl-serve");
        let path = dir.0.join("sub").join("c.sock");
        let mut server = ControlServer::bind(&path, rule(), euid()).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.uid(), euid());
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );

        // A second daemon on the same path is refused.
        assert_eq!(
            ControlServer::bind(&path, rule(), euid())
                .unwrap_err()
                .kind(),
            io::ErrorKind::AddrInUse
        );

        let client_path = path.clone();
        let client = std::thread::spawn(move || {
            let mut c = ControlClient::connect(&client_path, Duration::from_secs(5)).unwrap();
            let ports = c.ports().unwrap();
            let stats = c.stats().unwrap();
            // A malformed line gets an error reply, and the connection lives on.
            c.writer.write_all(b"{not json\n").unwrap();
            let bad = c.recv().unwrap();
            let mut body = Vec::new();
            let mut seen = None;
            let summary = c
                .fetch("http://10.7.0.1/f", &mut body, |l, r, s| {
                    seen = Some((l, r, s))
                })
                .unwrap();
            let err = c
                .request(&Request::Fetch {
                    url: "http://nowhere/".into(),
                })
                .unwrap_err();
            (ports, stats, bad, body, seen, summary, err.to_string())
        });

        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut answered = 0;
        let local: SocketAddr = "10.7.0.2:49152".parse().unwrap();
        let remote: SocketAddr = "10.7.0.1:80".parse().unwrap();
        serve_until(&mut server, |s| {
            while let Some((id, req)) = s.poll_request() {
                answered += 1;
                match req {
                    Request::Ports => {
                        s.reply(
                            id,
                            &Response::Ports {
                                ports: vec![entry(Protocol::Tcp, "LISTEN", "10.7.0.2:80", None, 1)],
                            },
                        );
                    }
                    Request::Stats => {
                        s.reply(
                            id,
                            &Response::Stats {
                                counters: BTreeMap::from([("rx".to_string(), 3)]),
                                shards: Vec::new(),
                            },
                        );
                    }
                    Request::Fetch { url } if url == "http://10.7.0.1/f" => {
                        s.reply(
                            id,
                            &Response::FetchStarted {
                                local,
                                remote,
                                status: 200,
                            },
                        );
                        for chunk in payload.chunks(7000) {
                            assert!(s.send_body(id, chunk));
                        }
                        s.reply(
                            id,
                            &Response::FetchDone {
                                bytes: payload.len() as u64,
                            },
                        );
                    }
                    Request::Fetch { .. } => {
                        s.reply(
                            id,
                            &Response::Error {
                                message: "no route".into(),
                            },
                        );
                    }
                }
            }
            answered == 4 && s.clients.iter().all(|c| c.output.is_empty())
        });
        let (ports, stats, bad, body, seen, summary, err) = client.join().unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(stats.counters["rx"], 3);
        assert!(stats.shards.is_empty());
        assert!(
            matches!(bad, Response::Error { ref message } if message.starts_with("bad request")),
            "{bad:?}"
        );
        assert_eq!(body, payload);
        assert_eq!(seen, Some((local, remote, 200)));
        assert_eq!(
            summary,
            FetchSummary {
                local,
                remote,
                status: 200,
                bytes: payload.len() as u64
            }
        );
        assert_eq!(err, "no route");

        // The client hung up; the server notices and forgets it.
        serve_until(&mut server, |s| s.clients.is_empty());
        drop(server);
        assert!(!path.exists(), "socket removed on drop");
    }

    #[test]
    fn stale_sockets_are_replaced_and_other_files_kept() {
        let dir = TempDir::new("ctl-stale");
        let path = dir.0.join("c.sock");
        let _stale = stale_socket(&path);
        assert!(path.exists());
        let server = ControlServer::bind(&path, rule(), euid()).unwrap();
        assert!(UnixStream::connect(&path).is_ok());
        drop(server);

        let file = dir.0.join("plain");
        std::fs::write(&file, b"keep me").unwrap();
        assert_eq!(
            ControlServer::bind(&file, rule(), euid())
                .unwrap_err()
                .kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

        let long = dir.0.join("x".repeat(200));
        assert_eq!(
            ControlServer::bind(&long, rule(), euid())
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn oversized_request_closes_the_connection() {
        let dir = TempDir::new("ctl-big");
        let path = dir.0.join("c.sock");
        let mut server = ControlServer::bind(&path, rule(), euid()).unwrap();
        let p = path.clone();
        let client = std::thread::spawn(move || {
            let mut c = ControlClient::connect(&p, Duration::from_secs(5)).unwrap();
            let junk = vec![b'a'; MAX_REQUEST_LINE + 10];
            // The server may close before reading everything; that is fine.
            let _ = c.writer.write_all(&junk);
            c.recv()
        });
        serve_until(&mut server, |s| s.next_id > 1 && s.clients.is_empty());
        let reply = client.join().unwrap();
        assert!(
            matches!(reply, Ok(Response::Error { ref message }) if message.contains("longer")),
            "{reply:?}"
        );
        assert!(server.poll_request().is_none());
    }

    #[test]
    fn connect_errors_are_explained() {
        let dir = TempDir::new("ctl-conn");
        let path = dir.0.join("none.sock");
        let err = ControlClient::connect(&path, Duration::from_secs(1)).unwrap_err();
        let m = explain_connect(&path, &err);
        assert!(
            m.contains("no daemon") && m.contains("none.sock") && m.contains("--control"),
            "{m}"
        );
        let _stale = stale_socket(&path);
        let err = ControlClient::connect(&path, Duration::from_secs(1)).unwrap_err();
        assert!(explain_connect(&path, &err).contains("stale"));
    }

    #[test]
    fn a_root_client_trusts_a_daemon_only_in_its_own_closed_directory() {
        let dir = TempDir::new("ctl-trust");
        let sock = dir.0.join("c.sock");
        let me = euid();
        assert!(daemon_trusted(&sock, me, me));
        assert!(daemon_trusted(&sock, 0, me));
        // The directory is ours (the test's): only a root client trusts
        // another daemon user, and only in that user's own directory.
        assert!(!daemon_trusted(&sock, me + 1, 0));
        if me == 0 {
            std::os::unix::fs::chown(&dir.0, Some(4242), None).unwrap();
            assert!(daemon_trusted(&sock, 4242, 0));
            assert!(!daemon_trusted(&sock, 4242, 1000));
            std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o775)).unwrap();
            assert!(!daemon_trusted(&sock, 4242, 0), "group-writable");
        }
    }

    #[test]
    fn peer_policy() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1000, 0));
    }

    /// Marker telling a re-run of this test binary to act as the client.
    const CRED_CHILD: &str = "EPHEMERA_TEST_CRED_CHILD";

    /// In the child (run as `nobody`): connect, ask for the ports, print
    /// the reply line. Returns whether this process is that child.
    fn cred_child() -> bool {
        let Some(path) = std::env::var_os(CRED_CHILD) else {
            return false;
        };
        let mut s = UnixStream::connect(PathBuf::from(path)).unwrap();
        // The server may refuse and hang up before this write lands.
        let _ = s.write_all(b"{\"cmd\":\"ports\"}\n");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        println!("REPLY {line}");
        true
    }

    /// Serve a socket that `nobody` can reach (only the credential check
    /// stands in its way) as a daemon running as `serve_uid`, and run test
    /// `name` again as `nobody` against it. Returns what the child printed
    /// and the server, or `None` (after saying why) if that cannot be done.
    fn ask_as_nobody(name: &str, serve_uid: u32) -> Option<(String, ControlServer)> {
        if euid() != 0 {
            eprintln!("SKIP {name}: needs root to act as another user");
            return None;
        }
        let dir = TempDir::new(&format!("ctl-{name}"));
        let path = dir.0.join("c.sock");
        let mut server = ControlServer::bind(&path, rule(), serve_uid).unwrap();
        // Test only: a daemon's socket is 0600 and its own user's.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        use std::os::unix::process::CommandExt;
        let spawned = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("daemon::control::tests::{name}"),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRED_CHILD, &path)
            .uid(65534)
            .gid(65534)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                eprintln!("SKIP {name}: cannot run the test binary as uid 65534: {e}");
                return None;
            }
        };
        serve_until(&mut server, |s| {
            while let Some((id, _)) = s.poll_request() {
                s.reply(id, &Response::Ports { ports: Vec::new() });
            }
            matches!(child.try_wait(), Ok(Some(_)))
        });
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        Some((out, server))
    }

    #[test]
    fn other_users_are_refused() {
        if cred_child() {
            return;
        }
        let Some((out, server)) = ask_as_nobody("other_users_are_refused", 0) else {
            return;
        };
        assert!(
            out.contains("REPLY") && out.contains("permission denied"),
            "{out:?}"
        );
        assert_eq!(server.clients.len(), 0);
    }

    #[test]
    fn the_user_the_daemon_runs_as_is_served() {
        if cred_child() {
            return;
        }
        let Some((out, _)) = ask_as_nobody("the_user_the_daemon_runs_as_is_served", 65534) else {
            return;
        };
        assert!(out.contains(r#"REPLY {"reply":"ports""#), "{out:?}");
    }
}
