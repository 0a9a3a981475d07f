//! The built-in services, sans-IO, on top of [`Stack`]: HTTP, echo
//! (RFC 862), discard (RFC 863), SOCKS5 CONNECT (RFC 1928), TCP port
//! forwards, and `fetch` (an HTTP GET made through the stack).
//!
//! The OS event loop calls [`Services::handle_events`] after feeding the
//! stack packets, and sleeps no longer than [`Services::poll_at`]. Services
//! never read a clock or touch a file descriptor: `now` comes in, and every
//! byte moves through the stack's `send`/`recv`.
//!
//! Names (SOCKS domain requests, forwards to a name, fetch URLs) are looked
//! up by an injected [`Resolver`] that answers later (see [`lookup`]): a
//! session waits for its answer while every other one is served, and
//! address literals skip the lookup.
//!
//! Invariants: every connection handle the services own is in `handles`,
//! naming exactly one session, and each session owns its handles until it
//! ends, when it closes or aborts them and they leave the map together.
//! Outbound connections (SOCKS, forwards, fetch) are opened with
//! [`Stack::connect`], so their local port is an ephemeral port from the
//! stack's own table. Sessions never buffer more than one chunk per
//! direction beyond what the stack holds, so a slow reader on one end
//! shows up as a closed TCP window on the other.

mod daemon;
mod fetch;
pub mod lookup;
mod relay;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::unix::io::RawFd;
use std::str::FromStr;

use log::debug;

use crate::daemon::control::{format_ports_table, PortEntry};
use crate::daemon::http::{Host, ServerConn, ServerContext, Url};
use crate::daemon::socks::{ReplyCode, SocksServer, SocksState, SocksTarget};
use ephemera::error::errno;
use ephemera::Protocol;
use ephemera::{ConnectError, RecvError, SendError};
use ephemera::{Duration, Instant};
use ephemera::{Event, ListenerHandle, SocketInfo, Stack, TcpHandle, TcpState, UdpHandle};

use crate::daemon::resolver::ResolverPool;
pub use daemon::{
    counter_map, port_entries, ControlSink, DaemonServices, ForwardSpec, ServiceSpec,
};
use fetch::{FetchConn, FetchQueue};
pub use fetch::{FetchError, FetchEvent, FetchId, MAX_QUEUED_BODY};
use lookup::{literal, Lookups, Waiter};
pub use lookup::{InlineResolver, LookupCounters, LookupId, LookupResult, Resolver};
use relay::{Direction, Relay, RelayStatus, CHUNK};

/// The system resolver, through [`ToSocketAddrs`] (`getaddrinfo`). It
/// blocks the caller while it asks DNS, for as long as resolv.conf allows:
/// run it on a [`ResolverPool`], never on the event loop.
pub fn system_resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

/// Where a `--forward` sends its connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardTarget {
    /// A literal address.
    Addr(SocketAddr),
    /// A name, resolved for each connection, and the port.
    Name(String, u16),
}

impl fmt::Display for ForwardTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardTarget::Addr(a) => write!(f, "{a}"),
            ForwardTarget::Name(n, p) => write!(f, "{n}:{p}"),
        }
    }
}

impl FromStr for ForwardTarget {
    type Err = String;

    /// `HOST:PORT`, with an IPv6 literal in brackets.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(ForwardTarget::Addr(a));
        }
        let bad = || format!("{s:?} is not HOST:PORT");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(bad()),
        };
        let name_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !name_ok {
            return Err(bad());
        }
        Ok(ForwardTarget::Name(host.to_ascii_lowercase(), port))
    }
}

/// Which services to run, on which ports.
#[derive(Clone, Debug)]
pub struct ServicesConfig {
    /// HTTP/1.1 port.
    pub http: Option<u16>,
    /// Echo port (TCP and UDP).
    pub echo: Option<u16>,
    /// Discard port (TCP and UDP).
    pub discard: Option<u16>,
    /// SOCKS5 port.
    pub socks: Option<u16>,
    /// TCP forwards: listening port and target.
    pub forwards: Vec<(u16, ForwardTarget)>,
    /// Accept-queue length of every listener; `None` uses the stack's.
    pub backlog: Option<usize>,
    /// Also listen on the IPv6 wildcard `[::]` (when the stack has an IPv6
    /// address).
    pub ipv6: bool,
    /// Close an HTTP connection, or a SOCKS handshake, that moved no bytes
    /// for this long. Relays and echo/discard connections have none: like
    /// `socat`, they live as long as their peers do.
    pub idle_timeout: Option<Duration>,
    /// Name lookups outstanding at once; more are refused at once (SOCKS
    /// reply 01, the forwarded client reset, the fetch failed). A lookup
    /// counts until the resolver answers it, even after its client left.
    pub max_lookups: usize,
    /// How long a client waits for a name lookup before it is failed as
    /// timed out (SOCKS reply 04, forward reset, fetch error). The lookup
    /// itself runs on until the resolver gives up (for the system
    /// resolver: resolv.conf's `timeout` × `attempts` per server).
    pub lookup_timeout: Duration,
}

/// Default [`ServicesConfig::max_lookups`].
pub const MAX_LOOKUPS: usize = 64;
/// Default [`ServicesConfig::lookup_timeout`], in seconds: more than glibc
/// needs to move on from one dead name server (5 s × 2 attempts) to the
/// next.
pub const LOOKUP_TIMEOUT_SECS: u64 = 15;

impl Default for ServicesConfig {
    fn default() -> Self {
        ServicesConfig {
            http: None,
            echo: None,
            discard: None,
            socks: None,
            forwards: Vec::new(),
            backlog: None,
            ipv6: false,
            idle_timeout: Some(Duration::from_secs(60)),
            max_lookups: MAX_LOOKUPS,
            lookup_timeout: Duration::from_secs(LOOKUP_TIMEOUT_SECS),
        }
    }
}

/// A service could not start: its port is taken (EADDRINUSE) or not ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceError {
    /// The service, as the user named it (`http`, `forward 8080=…`).
    pub service: String,
    /// TCP or UDP.
    pub proto: Protocol,
    /// The address it tried.
    pub addr: SocketAddr,
    /// The Linux errno (EADDRINUSE, EADDRNOTAVAIL).
    pub errno: i32,
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        };
        let port = self.addr.port();
        if self.errno == errno::EADDRINUSE {
            write!(
                f,
                "cannot start {}: {proto} port {port} is already bound (EADDRINUSE); \
                 give each service its own port",
                self.service
            )
        } else {
            write!(
                f,
                "cannot start {} on {proto} {}: {}",
                self.service,
                self.addr,
                io::Error::from_raw_os_error(self.errno)
            )
        }
    }
}

impl std::error::Error for ServiceError {}

/// What a listener serves.
#[derive(Clone, Debug)]
enum Service {
    Http,
    Echo,
    Discard,
    Socks,
    Forward(ForwardTarget),
}

/// Bytes taken from a protocol state machine and not yet accepted by
/// `send`.
#[derive(Debug, Default)]
struct OutBuf {
    buf: Vec<u8>,
    pos: usize,
}

impl OutBuf {
    fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Send pending bytes, refilling from `fill` while the stack takes
    /// them. Returns whether anything moved.
    fn flush(
        &mut self,
        stack: &mut Stack,
        h: TcpHandle,
        mut fill: impl FnMut(&mut [u8]) -> usize,
    ) -> Result<bool, SendError> {
        let mut progress = false;
        loop {
            if self.is_empty() {
                self.buf.resize(CHUNK, 0);
                let n = fill(&mut self.buf);
                self.buf.truncate(n);
                self.pos = 0;
                if n == 0 {
                    return Ok(progress);
                }
            }
            match stack.send(h, &self.buf[self.pos..]) {
                Ok(n) => {
                    self.pos += n;
                    progress = true;
                }
                Err(SendError::WouldBlock) => return Ok(progress),
                Err(e) => return Err(e),
            }
        }
    }
}

#[derive(Debug)]
struct HttpSession {
    conn: TcpHandle,
    server: ServerConn,
    out: OutBuf,
    local: SocketAddr,
    remote: SocketAddr,
    eof: bool,
}

#[derive(Debug)]
struct EchoSession {
    conn: TcpHandle,
    out: OutBuf,
    eof: bool,
}

#[derive(Debug)]
struct SocksSession {
    client: TcpHandle,
    socks: SocksServer,
    out: OutBuf,
    upstream: Option<TcpHandle>,
    /// The lookup of the target's name, while it is outstanding.
    lookup: Option<LookupId>,
    /// The client sent FIN during the handshake.
    eof: bool,
}

/// A `--forward` connection waiting for its target's name. Its client's
/// bytes stay in the stack (its window closes) until the relay starts.
#[derive(Debug)]
struct ForwardWait {
    client: TcpHandle,
    target: ForwardTarget,
    lookup: LookupId,
}

#[derive(Debug)]
enum Session {
    Http(HttpSession),
    Echo(EchoSession),
    Discard(TcpHandle),
    Socks(SocksSession),
    Resolving(ForwardWait),
    Relay(Relay),
    Fetch(FetchConn),
}

impl Session {
    fn handles(&self) -> [Option<TcpHandle>; 2] {
        match self {
            Session::Http(s) => [Some(s.conn), None],
            Session::Echo(s) => [Some(s.conn), None],
            Session::Discard(h) => [Some(*h), None],
            Session::Socks(s) => [Some(s.client), s.upstream],
            Session::Resolving(f) => [Some(f.client), None],
            Session::Relay(r) => [Some(r.client), Some(r.upstream)],
            Session::Fetch(f) => [Some(f.conn), None],
        }
    }

    /// The lookup it waits for, if any.
    fn lookup(&self) -> Option<LookupId> {
        match self {
            Session::Socks(s) => s.lookup,
            Session::Resolving(f) => Some(f.lookup),
            _ => None,
        }
    }

    /// Whether the idle timeout applies.
    fn idles(&self) -> bool {
        match self {
            Session::Http(_) => true,
            Session::Socks(s) => s.socks.state() != SocksState::Established,
            _ => false,
        }
    }
}

/// Whether a session goes on after a pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pump {
    /// Waiting for the stack.
    Idle,
    /// Moved bytes: the idle clock restarts.
    Active,
    /// Ended; its handles are closed or aborted.
    Ended,
}

struct Entry {
    session: Session,
    deadline: Option<Instant>,
}

/// A fetch, from `start_fetch` until its consumer took `Done` or `Failed`.
#[derive(Debug)]
struct FetchSlot {
    queue: FetchQueue,
    stage: FetchStage,
}

#[derive(Debug)]
enum FetchStage {
    /// Waiting for the host's name: the lookup, and what to do once it is
    /// answered.
    Resolving {
        lookup: LookupId,
        host: String,
        request: Vec<u8>,
    },
    /// Its connection is this session.
    Session(u64),
    /// No connection any more; events may still wait in the queue.
    Over,
}

/// The running services. See the [module docs](self).
pub struct Services {
    listeners: HashMap<ListenerHandle, Service>,
    udp: HashMap<UdpHandle, Service>,
    sessions: HashMap<u64, Entry>,
    handles: HashMap<TcpHandle, u64>,
    next_session: u64,
    fetches: HashMap<FetchId, FetchSlot>,
    next_fetch: u64,
    /// Sessions to pump on the next `handle_events` without a stack event
    /// (a paused fetch whose consumer caught up).
    wake: Vec<u64>,
    dns: Lookups,
    idle: Option<Duration>,
    now: Instant,
    scratch: Vec<u8>,
}

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Services")
            .field("listeners", &self.listeners.len())
            .field("udp", &self.udp.len())
            .field("sessions", &self.sessions.len())
            .field("fetches", &self.fetches.len())
            .field("dns", &self.dns)
            .finish()
    }
}

/// Octets the largest UDP datagram can carry.
const MAX_DATAGRAM: usize = 65535;

/// Source ports an echo reply is never sent to: services that answer
/// every datagram (echo, discard, daytime, chargen, time), so that two
/// of them cannot be made to bounce packets between each other forever.
const NO_ECHO_TO: [u16; 7] = [0, 7, 9, 13, 17, 19, 37];

impl Services {
    /// Start the configured services, listening on the wildcard address.
    /// On error nothing stays bound; the error names the service and port.
    /// Names are resolved with [`system_resolve`] on a [`ResolverPool`]
    /// (whose threads start with the first lookup) until
    /// [`Services::set_resolver`] says otherwise.
    pub fn new(stack: &mut Stack, cfg: ServicesConfig) -> Result<Services, ServiceError> {
        let mut svc = Services {
            listeners: HashMap::new(),
            udp: HashMap::new(),
            sessions: HashMap::new(),
            handles: HashMap::new(),
            next_session: 0,
            fetches: HashMap::new(),
            next_fetch: 0,
            wake: Vec::new(),
            dns: Lookups::new(
                Box::new(ResolverPool::system(cfg.max_lookups)),
                cfg.max_lookups,
                cfg.lookup_timeout,
            ),
            idle: cfg.idle_timeout,
            now: stack.now(),
            scratch: vec![0; MAX_DATAGRAM],
        };
        let mut tcp: Vec<(String, u16, Service)> = Vec::new();
        let mut udp: Vec<(String, u16, Service)> = Vec::new();
        if let Some(p) = cfg.http {
            tcp.push(("http".into(), p, Service::Http));
        }
        if let Some(p) = cfg.echo {
            tcp.push(("echo".into(), p, Service::Echo));
            udp.push(("echo".into(), p, Service::Echo));
        }
        if let Some(p) = cfg.discard {
            tcp.push(("discard".into(), p, Service::Discard));
            udp.push(("discard".into(), p, Service::Discard));
        }
        if let Some(p) = cfg.socks {
            tcp.push(("socks".into(), p, Service::Socks));
        }
        for (p, target) in &cfg.forwards {
            tcp.push((
                format!("forward {p}={target}"),
                *p,
                Service::Forward(target.clone()),
            ));
        }
        let mut wildcards = vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)];
        if cfg.ipv6 {
            wildcards.push(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        }
        let result = (|| {
            for ip in &wildcards {
                for (name, port, service) in &tcp {
                    let addr = SocketAddr::new(*ip, *port);
                    let l = stack.listen(addr, cfg.backlog).map_err(|e| ServiceError {
                        service: name.clone(),
                        proto: Protocol::Tcp,
                        addr,
                        errno: e.errno(),
                    })?;
                    svc.listeners.insert(l, service.clone());
                }
                for (name, port, service) in &udp {
                    let addr = SocketAddr::new(*ip, *port);
                    let u = stack.udp_bind(addr).map_err(|e| ServiceError {
                        service: name.clone(),
                        proto: Protocol::Udp,
                        addr,
                        errno: e.errno(),
                    })?;
                    svc.udp.insert(u, service.clone());
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(svc),
            Err(e) => {
                svc.shutdown(stack);
                Err(e)
            }
        }
    }

    /// Resolve names (SOCKS domain requests, forward targets, fetch URLs)
    /// with `r` from now on. Set it before serving: clients still waiting
    /// for the old resolver fail on the next [`Services::handle_events`].
    pub fn set_resolver(&mut self, r: Box<dyn Resolver>) {
        self.dns.set_resolver(r);
    }

    /// The resolver's wake-up descriptor, if it has one: a driver that
    /// sleeps in `poll(2)` waits on it too, and calls
    /// [`Services::handle_events`] when it is readable.
    pub fn wake_fd(&self) -> Option<RawFd> {
        self.dns.wake_fd()
    }

    /// Name lookups started and not yet answered by the resolver,
    /// including those whose client went away.
    pub fn lookups_outstanding(&self) -> usize {
        self.dns.outstanding()
    }

    /// How name lookups went so far.
    pub fn lookup_counters(&self) -> LookupCounters {
        self.dns.counters()
    }

    /// Addresses the services listen on, TCP and UDP, for logging.
    pub fn local_addrs(&self, stack: &Stack) -> Vec<(Protocol, SocketAddr)> {
        let mut v: Vec<_> = self
            .listeners
            .keys()
            .filter_map(|&l| stack.listener_addr(l).map(|a| (Protocol::Tcp, a)))
            .chain(
                self.udp
                    .keys()
                    .filter_map(|&u| stack.udp_local_addr(u).map(|a| (Protocol::Udp, a))),
            )
            .collect();
        v.sort();
        v
    }

    /// Connections the services hold open (client and upstream sides).
    pub fn connection_count(&self) -> usize {
        self.handles.len()
    }

    /// React to everything the stack and the resolver reported: accept new
    /// connections, move bytes between connections and protocol state
    /// machines, answer datagrams, go on with sessions whose name lookup is
    /// answered, and end idle sessions and overdue lookups. Call after
    /// feeding the stack, and when [`Services::wake_fd`] is readable.
    pub fn handle_events(&mut self, stack: &mut Stack, now: Instant) {
        self.now = now;
        let mut table = None;
        for sid in std::mem::take(&mut self.wake) {
            self.pump(stack, sid, &mut table);
        }
        while let Some(ev) = stack.poll_event() {
            self.dispatch(stack, ev, &mut table);
        }
        while let Some((waiter, answer)) = self.dns.poll_answer() {
            self.resolved(stack, waiter, answer, &mut table);
        }
        self.expire(stack, now, &mut table);
    }

    /// Act on one event the driver took from [`Stack::poll_event`] itself.
    /// Idle deadlines and paused fetches are only looked at by
    /// [`Services::handle_events`], which a driver calls once per turn.
    pub fn handle_event(&mut self, stack: &mut Stack, ev: Event, now: Instant) {
        self.now = now;
        self.dispatch(stack, ev, &mut None);
    }

    fn dispatch(&mut self, stack: &mut Stack, ev: Event, table: &mut Option<String>) {
        match ev {
            Event::Incoming(l) => self.accept_all(stack, l, table),
            Event::Tcp(h) => {
                if let Some(&sid) = self.handles.get(&h) {
                    self.pump(stack, sid, table);
                }
            }
            Event::Udp(u) => self.serve_udp(stack, u),
        }
    }

    fn expire(&mut self, stack: &mut Stack, now: Instant, table: &mut Option<String>) {
        for (waiter, error) in self.dns.expired(now) {
            debug!("name lookup: {error}");
            self.resolved(stack, waiter, Err(error), table);
        }
        let expired: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, e)| e.deadline.is_some_and(|d| d <= now))
            .map(|(&sid, _)| sid)
            .collect();
        for sid in expired {
            debug!("idle timeout");
            self.end(stack, sid, false);
        }
    }

    /// When [`Services::handle_events`] next needs calling even if the
    /// stack reports nothing: the earliest idle deadline or lookup time
    /// limit, or "now" if work is pending.
    #[must_use]
    pub fn poll_at(&self) -> Option<Instant> {
        if !self.wake.is_empty() {
            return Some(self.now);
        }
        let idle = self.sessions.values().filter_map(|e| e.deadline).min();
        match (idle, self.dns.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Start an HTTP GET of `url` through the stack, from an ephemeral
    /// port of its table. A name goes to the resolver, and the fetch
    /// connects once it answers, to the first address the stack can reach;
    /// a literal connects at once. Progress, including a failed lookup,
    /// comes out of [`Services::poll_fetch`] as the stack and
    /// `handle_events` run. Errors here are immediate: a literal the stack
    /// cannot connect to, or a lookup refused (too many outstanding).
    pub fn start_fetch(&mut self, stack: &mut Stack, url: &Url) -> Result<FetchId, FetchError> {
        let id = FetchId(self.next_fetch);
        let request = url.request();
        let stage = match &url.host {
            Host::Name(n) if literal(n, url.port).is_none() => {
                let lookup = self
                    .dns
                    .start(stack.now(), n, url.port, Waiter::Fetch(id))
                    .map_err(|error| FetchError::Resolve {
                        host: n.clone(),
                        error,
                    })?;
                let host = n.clone();
                FetchStage::Resolving {
                    lookup,
                    host,
                    request,
                }
            }
            host => {
                let addr = match host {
                    Host::Ip(ip) => SocketAddr::new(*ip, url.port),
                    Host::Name(n) => literal(n, url.port).expect("a literal"),
                };
                let (conn, _) = connect_any(stack, &[addr]).map_err(|e| match e {
                    Some((to, e)) => FetchError::Connect(to, e),
                    None => FetchError::NoAddress(url.host.to_string()),
                })?;
                FetchStage::Session(
                    self.add_session(Session::Fetch(FetchConn::new(conn, id, request))),
                )
            }
        };
        self.next_fetch += 1;
        let queue = FetchQueue::default();
        self.fetches.insert(id, FetchSlot { queue, stage });
        Ok(id)
    }

    /// The next event of fetch `id`, if one is ready. After `Done` or
    /// `Failed` has been returned the id is forgotten.
    pub fn poll_fetch(&mut self, id: FetchId) -> Option<FetchEvent> {
        let slot = self.fetches.get_mut(&id)?;
        let q = &mut slot.queue;
        let ev = q.pop();
        if q.finished && q.events.is_empty() {
            self.fetches.remove(&id);
        } else if matches!(ev, Some(FetchEvent::Body(_))) && q.queued < MAX_QUEUED_BODY {
            // Reading may have paused for this consumer.
            if let FetchStage::Session(sid) = slot.stage {
                if !self.wake.contains(&sid) {
                    self.wake.push(sid);
                }
            }
        }
        ev
    }

    /// Abandon fetch `id`: its connection is reset, or the answer to its
    /// name lookup will be dropped, and its events are dropped.
    pub fn cancel_fetch(&mut self, stack: &mut Stack, id: FetchId) {
        match self.fetches.get(&id).map(|f| &f.stage) {
            Some(&FetchStage::Session(sid)) => self.end(stack, sid, true),
            Some(&FetchStage::Resolving { lookup, .. }) => self.dns.detach(lookup),
            _ => {}
        }
        self.fetches.remove(&id);
    }

    /// Stop serving: close every listener and UDP socket, and close every
    /// connection gracefully (FIN after what is queued). Unfinished
    /// fetches fail. The stack then finishes the closing handshakes on its
    /// own as the driver keeps polling it.
    pub fn shutdown(&mut self, stack: &mut Stack) {
        for (l, _) in self.listeners.drain() {
            stack.close_listener(l);
        }
        for (u, _) in self.udp.drain() {
            stack.udp_close(u);
        }
        let sids: Vec<u64> = self.sessions.keys().copied().collect();
        for sid in sids {
            self.end(stack, sid, false);
        }
        for slot in self.fetches.values_mut() {
            if let FetchStage::Resolving { lookup, .. } = slot.stage {
                self.dns.detach(lookup);
                slot.stage = FetchStage::Over;
                let why = "the daemon is shutting down".to_string();
                slot.queue.push(FetchEvent::Failed(why));
            }
        }
        self.wake.clear();
    }

    // ---- internals ------------------------------------------------------

    /// A new session id, for a session that needs it before it exists.
    fn new_sid(&mut self) -> u64 {
        let sid = self.next_session;
        self.next_session += 1;
        sid
    }

    fn add_session(&mut self, session: Session) -> u64 {
        let sid = self.new_sid();
        self.insert_session(sid, session);
        sid
    }

    fn insert_session(&mut self, sid: u64, session: Session) {
        for h in session.handles().into_iter().flatten() {
            self.handles.insert(h, sid);
        }
        let deadline = self.deadline_for(&session);
        self.sessions.insert(sid, Entry { session, deadline });
    }

    fn deadline_for(&self, session: &Session) -> Option<Instant> {
        if session.idles() {
            self.idle.map(|d| self.now + d)
        } else {
            None
        }
    }

    fn remove_session(&mut self, sid: u64) -> Option<Session> {
        let e = self.sessions.remove(&sid)?;
        for h in e.session.handles().into_iter().flatten() {
            self.handles.remove(&h);
        }
        if let Some(lookup) = e.session.lookup() {
            // Its client went away: the answer has nowhere to go.
            self.dns.detach(lookup);
        }
        if let Session::Fetch(f) = &e.session {
            if let Some(slot) = self.fetches.get_mut(&f.id) {
                slot.stage = FetchStage::Over;
            }
        }
        Some(e.session)
    }

    /// End a session from outside (idle, shutdown, cancel): close its
    /// connections, or reset them with `abort`.
    fn end(&mut self, stack: &mut Stack, sid: u64, abort: bool) {
        let Some(session) = self.remove_session(sid) else {
            return;
        };
        match session {
            Session::Relay(mut r) => {
                if abort {
                    r.abort(stack)
                } else {
                    r.close(stack)
                }
            }
            Session::Fetch(f) => {
                if let Some(slot) = self.fetches.get_mut(&f.id) {
                    let why = "the daemon is shutting down".into();
                    slot.queue.push(FetchEvent::Failed(why));
                }
                stack.abort(f.conn);
            }
            s => {
                for h in s.handles().into_iter().flatten() {
                    if abort {
                        stack.abort(h);
                    } else {
                        stack.close(h);
                    }
                }
            }
        }
    }

    fn accept_all(&mut self, stack: &mut Stack, l: ListenerHandle, table: &mut Option<String>) {
        let Some(service) = self.listeners.get(&l).cloned() else {
            return;
        };
        while let Ok(h) = stack.accept(l) {
            debug!(
                "{service:?}: {:?} -> {:?}",
                stack.peer_addr(h),
                stack.local_addr(h)
            );
            let session = match &service {
                Service::Http => {
                    let (Some(local), Some(remote)) = (stack.local_addr(h), stack.peer_addr(h))
                    else {
                        stack.abort(h);
                        continue;
                    };
                    Session::Http(HttpSession {
                        conn: h,
                        server: ServerConn::new(),
                        out: OutBuf::default(),
                        local,
                        remote,
                        eof: false,
                    })
                }
                Service::Echo => Session::Echo(EchoSession {
                    conn: h,
                    out: OutBuf::default(),
                    eof: false,
                }),
                Service::Discard => Session::Discard(h),
                Service::Socks => Session::Socks(SocksSession {
                    client: h,
                    socks: SocksServer::new(),
                    out: OutBuf::default(),
                    upstream: None,
                    lookup: None,
                    eof: false,
                }),
                Service::Forward(target) => {
                    let addr = match target {
                        ForwardTarget::Addr(a) => Ok(*a),
                        ForwardTarget::Name(n, p) => literal(n, *p).ok_or((n, *p)),
                    };
                    match addr {
                        Ok(a) => match connect_any(stack, &[a]) {
                            Ok((up, _)) => Session::Relay(Relay::new(h, up, Direction::default())),
                            Err(e) => {
                                debug!("forward to {target} failed: {e:?}");
                                stack.abort(h);
                                continue;
                            }
                        },
                        Err((name, port)) => {
                            // The relay starts once the name is answered.
                            let sid = self.new_sid();
                            match self.dns.start(self.now, name, port, Waiter::Session(sid)) {
                                Ok(lookup) => {
                                    let wait = ForwardWait {
                                        client: h,
                                        target: target.clone(),
                                        lookup,
                                    };
                                    self.insert_session(sid, Session::Resolving(wait));
                                    self.pump(stack, sid, table);
                                }
                                Err(e) => {
                                    debug!("forward to {target}: {e}");
                                    stack.abort(h);
                                }
                            }
                            continue;
                        }
                    }
                }
            };
            let sid = self.add_session(session);
            self.pump(stack, sid, table);
        }
    }

    /// The answer to `waiter`'s lookup (or the error that ends its wait):
    /// connect, or report the failure, and go on.
    fn resolved(
        &mut self,
        stack: &mut Stack,
        waiter: Waiter,
        answer: LookupResult,
        table: &mut Option<String>,
    ) {
        match waiter {
            Waiter::Session(sid) => {
                let Some(entry) = self.sessions.get_mut(&sid) else {
                    return;
                };
                match &mut entry.session {
                    Session::Socks(s) if s.lookup.is_some() => {
                        s.lookup = None;
                        socks_connect(stack, s, answer);
                        self.pump(stack, sid, table);
                    }
                    Session::Resolving(f) => {
                        let (client, target) = (f.client, f.target.clone());
                        let connected = answer.map_err(|e| e.to_string()).and_then(|addrs| {
                            connect_any(stack, &addrs).map_err(|e| format!("{e:?}"))
                        });
                        match connected {
                            Ok((up, _)) => {
                                let relay = Relay::new(client, up, Direction::default());
                                entry.session = Session::Relay(relay);
                                self.handles.insert(up, sid);
                                self.pump(stack, sid, table);
                            }
                            Err(why) => {
                                // As for a literal target: the client is reset.
                                debug!("forward to {target} failed: {why}");
                                self.remove_session(sid);
                                stack.abort(client);
                            }
                        }
                    }
                    // Not waiting: a detached waiter is never answered.
                    _ => {}
                }
            }
            Waiter::Fetch(id) => {
                let Some(slot) = self.fetches.get_mut(&id) else {
                    return;
                };
                let FetchStage::Resolving { host, request, .. } =
                    std::mem::replace(&mut slot.stage, FetchStage::Over)
                else {
                    return;
                };
                let error = match answer {
                    Err(error) => FetchError::Resolve { host, error },
                    Ok(addrs) => match connect_any(stack, &addrs) {
                        Ok((conn, _)) => {
                            let fetch = FetchConn::new(conn, id, request);
                            let sid = self.add_session(Session::Fetch(fetch));
                            if let Some(slot) = self.fetches.get_mut(&id) {
                                slot.stage = FetchStage::Session(sid);
                            }
                            self.pump(stack, sid, table);
                            return;
                        }
                        Err(Some((to, e))) => FetchError::Connect(to, e),
                        Err(None) => FetchError::NoAddress(host),
                    },
                };
                slot.queue.push(FetchEvent::Failed(error.to_string()));
            }
        }
    }

    fn serve_udp(&mut self, stack: &mut Stack, u: UdpHandle) {
        let Some(service) = self.udp.get(&u) else {
            return;
        };
        let echo = matches!(service, Service::Echo);
        while let Ok((n, from)) = stack.udp_recv_from(u, &mut self.scratch) {
            if echo && !NO_ECHO_TO.contains(&from.port()) {
                // A full send buffer drops the reply: UDP promises nothing.
                let _ = stack.udp_send_to(u, &self.scratch[..n], from);
            }
        }
    }

    fn pump(&mut self, stack: &mut Stack, sid: u64, table: &mut Option<String>) {
        let Some(entry) = self.sessions.get_mut(&sid) else {
            return;
        };
        let scratch = &mut self.scratch[..];
        let mut new_handles = Vec::new();
        let r = match &mut entry.session {
            Session::Http(s) => pump_http(stack, s, scratch, table),
            Session::Echo(s) => pump_echo(stack, s, scratch),
            Session::Discard(h) => pump_discard(stack, *h, scratch),
            Session::Resolving(f) => match stack.tcp_state(f.client) {
                // The client reset or timed out while it waited.
                Some(TcpState::Closed) | None => {
                    stack.abort(f.client);
                    Pump::Ended
                }
                _ => Pump::Idle,
            },
            Session::Socks(s) => {
                let dns = (&mut self.dns, self.now, sid);
                let r = pump_socks(stack, s, scratch, dns);
                if let Some(up) = s.upstream {
                    new_handles.push(up);
                }
                if r == Pump::Active && s.socks.is_established() && s.out.is_empty() {
                    // The reply is out: from here on it is a plain relay.
                    let up = s.upstream.expect("established means connected");
                    let early = Direction::with_pending(s.socks.take_payload(), s.eof);
                    entry.session = Session::Relay(Relay::new(s.client, up, early));
                    entry.deadline = None;
                    match &mut entry.session {
                        Session::Relay(relay) => relay_pump(stack, relay, scratch),
                        _ => unreachable!(),
                    }
                } else {
                    r
                }
            }
            Session::Relay(relay) => relay_pump(stack, relay, scratch),
            Session::Fetch(f) => match self.fetches.get_mut(&f.id) {
                Some(slot) => {
                    if f.pump(stack, &mut slot.queue, scratch) {
                        Pump::Idle
                    } else {
                        Pump::Ended
                    }
                }
                None => {
                    stack.abort(f.conn);
                    Pump::Ended
                }
            },
        };
        for h in new_handles {
            self.handles.insert(h, sid);
        }
        match r {
            Pump::Ended => {
                self.remove_session(sid);
            }
            Pump::Active => {
                if let Some(e) = self.sessions.get(&sid) {
                    let d = self.deadline_for(&e.session);
                    if let Some(e) = self.sessions.get_mut(&sid) {
                        e.deadline = d;
                    }
                }
            }
            Pump::Idle => {}
        }
    }
}

fn relay_pump(stack: &mut Stack, relay: &mut Relay, scratch: &mut [u8]) -> Pump {
    match relay.pump(stack, scratch) {
        RelayStatus::Open => Pump::Idle,
        RelayStatus::Closed | RelayStatus::Aborted => Pump::Ended,
    }
}

/// Open a connection to the first address the stack accepts. `Err(None)`
/// means the list was empty.
fn connect_any(
    stack: &mut Stack,
    addrs: &[SocketAddr],
) -> Result<(TcpHandle, SocketAddr), Option<(SocketAddr, ConnectError)>> {
    let mut last = None;
    for &a in addrs {
        match stack.connect(a) {
            Ok(h) => {
                debug!("connect {:?} -> {a}", stack.local_addr(h));
                return Ok((h, a));
            }
            Err(e) => last = Some((a, e)),
        }
    }
    Err(last)
}

/// Combine "did anything move" into a [`Pump`].
fn progress(moved: bool) -> Pump {
    if moved {
        Pump::Active
    } else {
        Pump::Idle
    }
}

fn pump_http(
    stack: &mut Stack,
    s: &mut HttpSession,
    scratch: &mut [u8],
    table: &mut Option<String>,
) -> Pump {
    let mut any = false;
    loop {
        let server = &mut s.server;
        let mut moved = match s.out.flush(stack, s.conn, |b| server.poll_output(b)) {
            Ok(m) => m,
            Err(_) => {
                stack.abort(s.conn);
                return Pump::Ended;
            }
        };
        if s.server.wants_input() && !s.eof {
            let n = CHUNK.min(scratch.len());
            match stack.recv(s.conn, &mut scratch[..n]) {
                Ok(0) => {
                    s.eof = true;
                    s.server.handle_eof();
                    moved = true;
                }
                Ok(k) => {
                    // Rendered only if a `/` request needs it, once per turn.
                    let cache = std::cell::RefCell::new(table.take());
                    let render = || {
                        cache
                            .borrow_mut()
                            .get_or_insert_with(|| render_port_table(&stack.snapshot()))
                            .clone()
                    };
                    let ctx = ServerContext {
                        local: s.local,
                        remote: s.remote,
                        port_table: &render,
                    };
                    s.server.handle_input(&scratch[..k], &ctx);
                    *table = cache.into_inner();
                    moved = true;
                }
                Err(RecvError::WouldBlock) => {}
                Err(_) => {
                    stack.abort(s.conn);
                    return Pump::Ended;
                }
            }
        }
        if s.server.should_close() && s.out.is_empty() {
            stack.close(s.conn);
            return Pump::Ended;
        }
        if !moved {
            return progress(any);
        }
        any = true;
    }
}

fn pump_echo(stack: &mut Stack, s: &mut EchoSession, scratch: &mut [u8]) -> Pump {
    let mut any = false;
    loop {
        // RFC 862: send back whatever arrives. Read only once the last
        // read has been handed to the stack, so a client that does not
        // read its echo is slowed down by its own window.
        let mut moved = match s.out.flush(stack, s.conn, |_| 0) {
            Ok(m) => m,
            Err(_) => {
                stack.abort(s.conn);
                return Pump::Ended;
            }
        };
        if s.out.is_empty() {
            if s.eof {
                stack.close(s.conn);
                return Pump::Ended;
            }
            let n = CHUNK.min(scratch.len());
            match stack.recv(s.conn, &mut scratch[..n]) {
                Ok(0) => s.eof = true,
                Ok(k) => {
                    s.out.buf.clear();
                    s.out.buf.extend_from_slice(&scratch[..k]);
                    s.out.pos = 0;
                }
                Err(RecvError::WouldBlock) => return progress(any),
                Err(_) => {
                    stack.abort(s.conn);
                    return Pump::Ended;
                }
            }
            moved = true;
        }
        if !moved {
            return progress(any);
        }
        any = true;
    }
}

fn pump_discard(stack: &mut Stack, h: TcpHandle, scratch: &mut [u8]) -> Pump {
    // RFC 863: throw away whatever arrives; close when the client does.
    let mut any = false;
    loop {
        match stack.recv(h, scratch) {
            Ok(0) => {
                stack.close(h);
                return Pump::Ended;
            }
            Ok(_) => any = true,
            Err(RecvError::WouldBlock) => return progress(any),
            Err(_) => {
                stack.abort(h);
                return Pump::Ended;
            }
        }
    }
}

/// Connect a SOCKS session to the first of `addrs` the stack accepts, or
/// queue the reply saying why not.
fn socks_connect(stack: &mut Stack, s: &mut SocksSession, addrs: LookupResult) {
    match addrs {
        // The lookup failed. RFC 1928 has no code for a name that does not
        // resolve; host unreachable is the usual one. getaddrinfo's errors
        // carry no kind of their own, which would make them 01.
        Err(e) => s
            .socks
            .handle_connect_failed(match ReplyCode::from(e.kind()) {
                ReplyCode::GeneralFailure => ReplyCode::HostUnreachable,
                code => code,
            }),
        Ok(addrs) => match connect_any(stack, &addrs) {
            Ok((up, _)) => s.upstream = Some(up),
            Err(None) => s.socks.handle_connect_failed(ReplyCode::HostUnreachable),
            Err(Some((_, e))) => {
                let kind = io::Error::from(e).kind();
                s.socks.handle_connect_failed(ReplyCode::from(kind));
            }
        },
    }
}

/// Drive a SOCKS handshake. `dns` is where a domain target is looked up:
/// the lookups, the time, and this session's id (its waiter).
fn pump_socks(
    stack: &mut Stack,
    s: &mut SocksSession,
    scratch: &mut [u8],
    dns: (&mut Lookups, Instant, u64),
) -> Pump {
    let (dns, now, sid) = dns;
    let mut any = false;
    let end = |stack: &mut Stack, s: &SocksSession| {
        stack.abort(s.client);
        if let Some(up) = s.upstream {
            stack.abort(up);
        }
        Pump::Ended
    };
    loop {
        let socks = &mut s.socks;
        let mut moved = match s.out.flush(stack, s.client, |b| socks.poll_output(b)) {
            Ok(m) => m,
            Err(_) => return end(stack, s),
        };
        if s.socks.wants_input() && !s.eof {
            let n = CHUNK.min(scratch.len());
            match stack.recv(s.client, &mut scratch[..n]) {
                Ok(0) => {
                    s.eof = true;
                    moved = true;
                    if matches!(s.socks.state(), SocksState::Greeting | SocksState::Request) {
                        // The client left mid-handshake.
                        stack.close(s.client);
                        return Pump::Ended;
                    }
                }
                Ok(k) => {
                    s.socks.handle_input(&scratch[..k]);
                    moved = true;
                }
                Err(RecvError::WouldBlock) => {}
                Err(_) => return end(stack, s),
            }
        }
        if let Some(target) = s.socks.poll_target() {
            moved = true;
            let addr = match &target {
                SocksTarget::Addr(a) => Ok(*a),
                // A literal sent as a name (curl --socks5-hostname 10.7.0.1).
                SocksTarget::Domain(n, p) => literal(n, *p).ok_or((n, *p)),
            };
            match addr {
                Ok(a) => socks_connect(stack, s, Ok(vec![a])),
                // The reply waits for the answer; the session is pumped
                // again when it comes (`Services::resolved`).
                Err((name, port)) => match dns.start(now, name, port, Waiter::Session(sid)) {
                    Ok(lookup) => s.lookup = Some(lookup),
                    Err(e) => {
                        debug!("socks CONNECT {target}: {e}");
                        s.socks.handle_connect_failed(ReplyCode::from(e.kind()));
                    }
                },
            }
            debug!("socks CONNECT {target}: {:?}", s.socks.state());
        }
        if let (Some(up), SocksState::Connecting) = (s.upstream, s.socks.state()) {
            match stack.tcp_state(up) {
                Some(TcpState::SynSent | TcpState::SynReceived) => {}
                Some(TcpState::Closed) | None => {
                    let code = match stack.tcp_error(up) {
                        Some(e) => ReplyCode::from(io::Error::from(RecvError::from(e)).kind()),
                        None => ReplyCode::GeneralFailure,
                    };
                    s.socks.handle_connect_failed(code);
                    // The handle stays in the session until it ends, so
                    // its removal from the handle map stays in one place.
                    moved = true;
                }
                Some(_) => {
                    if let Some(bound) = stack.local_addr(up) {
                        s.socks.handle_connected(bound);
                        moved = true;
                    }
                }
            }
        }
        if s.socks.should_close() && s.out.is_empty() {
            stack.close(s.client);
            if let Some(up) = s.upstream {
                stack.abort(up);
            }
            return Pump::Ended;
        }
        if s.socks.is_established() && s.out.is_empty() {
            return Pump::Active;
        }
        if !moved {
            return progress(any);
        }
        any = true;
    }
}

/// One row of the control protocol's port table.
pub fn port_entry(info: &SocketInfo) -> PortEntry {
    PortEntry {
        proto: match info.proto {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
        .to_string(),
        state: info.state.clone(),
        local: info.local,
        remote: info.remote,
        recv_q: info.recv_queue,
        send_q: info.send_queue,
        age_ms: u64::try_from(info.age.as_millis()).unwrap_or(u64::MAX),
    }
}

/// The port table like `ss -tuan` (Netid, State, Recv-Q, Send-Q, Local,
/// Peer, Age), one line per socket, in the same format `ephemera ports`
/// prints.
pub fn render_port_table(rows: &[SocketInfo]) -> String {
    let entries: Vec<PortEntry> = rows.iter().map(port_entry).collect();
    format_ports_table(&entries)
}

#[cfg(test)]
mod tests;
