//! The built-in services, sans-IO, on top of [`Stack`]: HTTP, echo
//! (RFC 862), discard (RFC 863), SOCKS5 CONNECT (RFC 1928), TCP port
//! forwards, and `fetch` (an HTTP GET made through the stack).
//!
//! The OS event loop calls [`Services::handle_events`] after feeding the
//! stack packets, and sleeps no longer than [`Services::poll_at`]. Services
//! never read a clock: `now` comes in, and every byte moves through the
//! stack's `send`/`recv`.
//!
//! Names (SOCKS domain requests, forwards to a name, fetch URLs) are looked
//! up by a [`Resolver`] that answers later (see [`lookup`]): a session waits
//! for its answer while every other one is served, and address literals
//! skip the lookup. [`Services::new`] gives them the system's resolver on a
//! [`ResolverPool`], whose worker threads and wake-up descriptor start
//! with the first lookup, or with `--nameserver` the stub resolver on the
//! stack ([`nameserver`]); tests inject their own (`set_resolver`).
//!
//! The concerns, one module each: [`registry`] (configuration, listeners),
//! [`session`] (the session map), [`fetch`] (fetches and their events),
//! [`lookup`] (name lookups), [`nameserver`] (names resolved on the
//! stack), [`upstream`] (the DNS sockets of the resolver and the
//! forwarder), and one module per protocol: [`http`], [`echo`],
//! [`discard`], [`socks`], [`forward`], [`dns`] (the `--dns` forwarder),
//! with [`relay`] shared by SOCKS and forwards. [`daemon`] adapts them to
//! the daemon's loop.
//!
//! Invariants: see [`session`] for connections and sessions. Outbound
//! connections (SOCKS, forwards, fetch) are opened with [`Stack::connect`],
//! so their local port is an ephemeral port from the stack's own table.
//! Sessions never buffer more than one chunk per direction beyond what the
//! stack holds, so a slow reader on one end shows up as a closed TCP window
//! on the other.

mod counters;
mod daemon;
mod discard;
mod dns;
mod echo;
mod fetch;
mod forward;
mod http;
pub mod lookup;
mod nameserver;
mod registry;
mod relay;
mod session;
mod socks;
mod socks_udp;
mod upstream;

use std::collections::HashMap;
use std::fmt;
use std::os::unix::io::BorrowedFd;
use std::sync::Arc;

use log::debug;

use ephemera::{Event, Instant, ListenerHandle, Stack, UdpHandle};

use crate::daemon::credentials::Credentials;
use crate::daemon::policy::{Destinations, NetList};
use crate::daemon::resolver::{resolve_families, ResolverPool, DEFAULT_WORKERS};
pub use counters::ServiceCounters;
pub use daemon::{ControlSink, DaemonServices};
use dns::DnsForward;
pub use dns::DnsForwardConfig;
use fetch::{FetchEvent, FetchId, Fetches};
use lookup::Lookups;
pub use lookup::{LookupCounters, LookupId, Resolver};
use nameserver::StackResolver;
pub use registry::{BindFailure, Forward, ServiceError, ServicesConfig};
use registry::{Listeners, Service};
use relay::RelayStatus;
use session::{Expiry, Pump, Session, SessionId, Sessions};

/// The running services. See the [module docs](self).
pub struct Services {
    listeners: Listeners,
    sessions: Sessions,
    fetches: Fetches,
    /// Sessions to pump on the next `handle_events` without a stack event
    /// (a paused fetch whose consumer caught up).
    wake: Vec<SessionId>,
    dns: Lookups,
    /// Who may use SOCKS.
    socks_allow: NetList,
    /// SOCKS users, if a login is required.
    socks_auth: Option<Arc<Credentials>>,
    /// Where connections made for others may not go.
    destinations: Destinations,
    counters: ServiceCounters,
    /// The `/` page's shared part, built at most once per turn.
    page: http::PageCache,
    /// The DNS forwarder, with `--dns`.
    forwarder: Option<DnsForward>,
    /// The SOCKS UDP associations' relay sockets, by session: from the
    /// socket's bind (before the reply is out) to its close.
    associations: HashMap<UdpHandle, SessionId>,
    /// At most this many entries in `associations`.
    max_associations: usize,
    now: Instant,
    scratch: Vec<u8>,
}

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (tcp, udp) = self.listeners.len();
        f.debug_struct("Services")
            .field("listeners", &tcp)
            .field("udp", &udp)
            .field("sessions", &self.sessions.len())
            .field("fetches", &self.fetches.len())
            .field("dns", &self.dns)
            .field("forwarder", &self.forwarder)
            .finish()
    }
}

/// Octets the largest UDP datagram can carry.
const MAX_DATAGRAM: usize = 65535;

/// Why a fetch or connection the daemon ends itself fails.
const SHUTTING_DOWN: &str = "the daemon is shutting down";

impl Services {
    /// Start the configured services, listening on the wildcard address.
    /// On error nothing stays bound; the error names the service and port.
    /// Names are looked up with the system's resolver, for IPv4 addresses
    /// and, with `cfg.ipv6`, IPv6 ones (tests swap it with `set_resolver`).
    pub fn new(stack: &mut Stack, cfg: ServicesConfig) -> Result<Services, ServiceError> {
        let mut forwarder = match &cfg.dns {
            Some(d) => Some(DnsForward::new(d, cfg.seed).map_err(|e| {
                debug!("dns: {e}");
                ServiceError {
                    service: "dns".into(),
                    proto: ephemera::Protocol::Udp,
                    addr: (std::net::Ipv4Addr::UNSPECIFIED, d.port).into(),
                    cause: BindFailure::Invalid,
                }
            })?),
            None => None,
        };
        let on_stack = match cfg.nameservers.as_slice() {
            [] => None,
            servers => Some(
                StackResolver::new(servers, cfg.ipv6, cfg.max_lookups, cfg.seed.map(|s| !s))
                    .map_err(|e| {
                        debug!("nameserver: {e}");
                        ServiceError {
                            service: "nameserver".into(),
                            proto: ephemera::Protocol::Udp,
                            addr: servers[0],
                            cause: BindFailure::Invalid,
                        }
                    })?,
            ),
        };
        let listeners = Listeners::bind(stack, &cfg)?;
        if let Some(f) = &mut forwarder {
            f.set_sockets(listeners.udp_serving(|s| matches!(s, Service::Dns)));
        }
        let dns = match on_stack {
            // Names resolved on the stack (`--nameserver`).
            Some(r) => Lookups::on_stack(r, cfg.max_lookups, cfg.lookup_timeout),
            // The host's resolver, on worker threads.
            None => {
                let ipv6 = cfg.ipv6;
                let resolve = move |host: &str, port: u16| resolve_families(host, port, ipv6);
                let pool = ResolverPool::new(resolve, DEFAULT_WORKERS, cfg.max_lookups);
                Lookups::new(Box::new(pool), cfg.max_lookups, cfg.lookup_timeout)
            }
        };
        Ok(Services {
            listeners,
            sessions: Sessions::new(cfg.idle_timeout, cfg.head_timeout),
            fetches: Fetches::default(),
            wake: Vec::new(),
            dns,
            socks_allow: cfg.socks_allow,
            socks_auth: cfg.socks_auth,
            destinations: cfg.destinations,
            counters: ServiceCounters::default(),
            page: http::PageCache::default(),
            forwarder,
            associations: HashMap::new(),
            max_associations: cfg.max_associations,
            now: stack.now(),
            scratch: vec![0; MAX_DATAGRAM],
        })
    }

    /// Resolve names (SOCKS domain requests, forward targets, fetch URLs)
    /// with `r` from now on. Set it before serving: clients still waiting
    /// for the old resolver fail on the next [`Services::handle_events`].
    #[cfg(test)]
    pub fn set_resolver(&mut self, r: Box<dyn Resolver>) {
        self.dns.set_resolver(r);
    }

    /// The resolver's wake-up descriptor, if it has one: a driver that
    /// sleeps in `poll(2)` waits on it too, and calls
    /// [`Services::handle_events`] when it is readable.
    pub fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.dns.wake_fd()
    }

    /// Name lookups started and not yet answered by the resolver,
    /// including those whose client went away.
    #[cfg(test)]
    pub fn lookups_outstanding(&self) -> usize {
        self.dns.outstanding()
    }

    /// How name lookups went so far.
    pub fn lookup_counters(&self) -> LookupCounters {
        self.dns.counters()
    }

    /// What the services refused or cut short so far.
    pub fn counters(&self) -> ServiceCounters {
        self.counters
    }

    /// The DNS forwarder's counters by name (without `--dns`, none), and
    /// those of the resolver on the stack (without `--nameserver`, none).
    pub fn dns_counters(&self) -> Vec<(String, u64)> {
        let mut out = self
            .forwarder
            .as_ref()
            .map_or_else(Vec::new, DnsForward::counters);
        if let Some(r) = self.dns.on_stack_ref() {
            out.extend(r.counters());
        }
        out
    }

    /// Connections the services hold open (client and upstream sides).
    #[cfg(test)]
    pub fn connection_count(&self) -> usize {
        self.sessions.connections()
    }

    /// React to everything the stack and the resolver reported: accept new
    /// connections, move bytes between connections and protocol state
    /// machines, answer datagrams, go on with sessions whose name lookup is
    /// answered, and end idle sessions and overdue lookups. Call after
    /// feeding the stack, and when [`Services::wake_fd`] is readable. Each
    /// call is a turn of its own ([`Services::begin_turn`]).
    #[cfg(test)]
    pub fn handle_events(&mut self, stack: &mut Stack, now: Instant) {
        self.begin_turn();
        self.resume(stack, now);
    }

    /// A new turn of the driver's loop begins: the `/` page's shared part
    /// is built again, once, when next asked for.
    pub fn begin_turn(&mut self) {
        self.page.turn += 1;
    }

    /// [`Services::handle_events`] within the current turn.
    pub fn resume(&mut self, stack: &mut Stack, now: Instant) {
        self.now = now;
        for sid in std::mem::take(&mut self.wake) {
            self.pump(stack, sid);
        }
        while let Some(ev) = stack.poll_event() {
            self.dispatch(stack, ev);
        }
        if let Some(r) = self.dns.on_stack_mut() {
            r.handle_timeout(stack, now);
        }
        while let Some((waiter, answer)) = self.dns.poll_answer() {
            self.resolved(stack, waiter, answer);
        }
        self.expire_lookups(stack, now);
        self.send_lookups(stack);
        if let Some(f) = &mut self.forwarder {
            f.handle_timeout(stack, now);
        }
        while let Some((sid, expiry)) = self.sessions.pop_expired(now) {
            self.expire(stack, sid, expiry);
        }
    }

    /// Act on one event the driver took from [`Stack::poll_event`] itself.
    /// Idle deadlines and paused fetches are only looked at by
    /// [`Services::handle_events`], which a driver calls once per turn.
    pub fn handle_event(&mut self, stack: &mut Stack, ev: Event, now: Instant) {
        self.now = now;
        self.dispatch(stack, ev);
        self.send_lookups(stack);
    }

    /// Send the queries of lookups started since the last call, when names
    /// are resolved on the stack (a no-op otherwise).
    fn send_lookups(&mut self, stack: &mut Stack) {
        let now = self.now;
        if let Some(r) = self.dns.on_stack_mut() {
            r.drive(stack, now);
        }
    }

    fn dispatch(&mut self, stack: &mut Stack, ev: Event) {
        match ev {
            Event::Incoming(l) => self.accept_all(stack, l),
            Event::Tcp(h) => {
                if let Some(sid) = self.sessions.owner(h) {
                    self.pump(stack, sid);
                } else if let Some(f) = self.forwarder.as_mut().filter(|f| f.owns_tcp(h)) {
                    f.handle_tcp(stack, self.now, h, &mut self.scratch);
                } else if let Some(r) = self.dns.on_stack_mut().filter(|r| r.owns_tcp(h)) {
                    r.handle_tcp(stack, self.now, h, &mut self.scratch);
                }
            }
            Event::Udp(u) => self.serve_udp(stack, u),
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
        [
            self.sessions.next_deadline(),
            self.dns.next_deadline(),
            self.dns.on_stack_ref().and_then(StackResolver::poll_at),
            self.forwarder.as_ref().and_then(DnsForward::poll_at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Stop serving: close every listener and UDP socket, and close every
    /// connection gracefully (FIN after what is queued). Unfinished
    /// fetches fail. The stack then finishes the closing handshakes on its
    /// own as the driver keeps polling it.
    pub fn shutdown(&mut self, stack: &mut Stack) {
        self.listeners.close(stack);
        if let Some(f) = &mut self.forwarder {
            f.shutdown(stack);
        }
        if let Some(r) = self.dns.on_stack_mut() {
            r.shutdown(stack);
        }
        for sid in self.sessions.ids() {
            self.end(stack, sid, false);
        }
        self.fail_resolving_fetches(SHUTTING_DOWN);
        self.wake.clear();
    }

    // ---- internals ------------------------------------------------------

    /// Take session `sid` out: its handles leave the map, a lookup it
    /// waits for is detached, a fetch it serves has no connection any more.
    fn remove_session(&mut self, sid: SessionId) -> Option<Session> {
        let session = self.sessions.remove(sid)?;
        if let Some(lookup) = session.lookup() {
            // Its client went away: the answer has nowhere to go.
            self.dns.detach(lookup);
        }
        if let Session::Fetch(f) = &session {
            self.fetches.session_ended(f.id);
        }
        if let Session::Udp(a) = &session {
            self.associations.remove(&a.udp);
        }
        if let Some(u) = match &session {
            Session::Socks(s) => s.udp_socket(),
            _ => None,
        } {
            self.associations.remove(&u);
        }
        Some(session)
    }

    /// End a session from outside (idle, shutdown, cancel): close its
    /// connections, or reset them with `abort`.
    fn end(&mut self, stack: &mut Stack, sid: SessionId, abort: bool) {
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
                self.fetches.fail(f.id, SHUTTING_DOWN.into());
                stack.abort(f.conn);
            }
            Session::Udp(mut a) => a.close(stack),
            s => {
                if let Session::Socks(socks) = &s {
                    if let Some(u) = socks.udp_socket() {
                        stack.udp_close(u);
                    }
                }
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

    /// End session `sid`, out of time: a late HTTP request head gets 408
    /// (RFC 9110 section 15.5.9), a late SOCKS handshake is closed, and
    /// an idle session is closed gracefully. Counted.
    fn expire(&mut self, stack: &mut Stack, sid: SessionId, expiry: Expiry) {
        let Some(entry) = self.sessions.get_mut(sid) else {
            return;
        };
        match (expiry, &mut entry.session) {
            (Expiry::Head, Session::Http(s)) => {
                debug!("HTTP request head timed out");
                self.counters.http_head_timeouts += 1;
                s.head_timeout(stack, &mut self.scratch);
            }
            (Expiry::Head, _) => {
                debug!("SOCKS handshake timed out");
                self.counters.socks_handshake_timeouts += 1;
            }
            (Expiry::Idle, _) => {
                debug!("idle timeout");
                self.counters.idle_timeouts += 1;
            }
        }
        self.end(stack, sid, false);
    }

    /// Take every connection waiting on listener `l` and start its session.
    fn accept_all(&mut self, stack: &mut Stack, l: ListenerHandle) {
        let Some(service) = self.listeners.tcp(l).cloned() else {
            return;
        };
        while let Ok(h) = stack.accept(l) {
            debug!(
                "{service:?}: {:?} -> {:?}",
                stack.peer_addr(h),
                stack.local_addr(h)
            );
            let sid = match &service {
                Service::Forward(forward) => match self.accept_forward(stack, h, forward) {
                    Some(sid) => sid,
                    None => continue,
                },
                service => {
                    let session = match service {
                        Service::Http => match http::HttpSession::accept(stack, h) {
                            Some(s) => Session::Http(s),
                            None => continue,
                        },
                        Service::Echo => Session::Echo(echo::EchoSession::new(h)),
                        Service::Discard => Session::Discard(h),
                        Service::Socks => {
                            let allowed = stack
                                .peer_addr(h)
                                .is_some_and(|a| self.socks_allow.contains(a.ip()));
                            let auth = self.socks_auth.clone();
                            Session::Socks(socks::SocksSession::new(h, allowed, auth))
                        }
                        Service::Forward(_) => unreachable!("matched above"),
                        // The forwarder has no TCP listener.
                        Service::Dns => {
                            stack.abort(h);
                            continue;
                        }
                    };
                    self.sessions.add(session, self.now)
                }
            };
            self.pump(stack, sid);
        }
    }

    fn serve_udp(&mut self, stack: &mut Stack, u: UdpHandle) {
        let now = self.now;
        match self.listeners.udp(u) {
            Some(Service::Echo) => echo::serve_udp(stack, u, &mut self.scratch),
            Some(Service::Discard) => discard::serve_udp(stack, u, &mut self.scratch),
            Some(Service::Dns) => {
                if let Some(f) = &mut self.forwarder {
                    f.handle_queries(stack, now, u, &mut self.scratch);
                }
            }
            _ => {
                if let Some(&sid) = self.associations.get(&u) {
                    self.pump(stack, sid);
                } else if let Some(f) = self.forwarder.as_mut().filter(|f| f.owns_udp(u)) {
                    f.handle_udp(stack, now, u, &mut self.scratch);
                } else if let Some(r) = self.dns.on_stack_mut().filter(|r| r.owns_udp(u)) {
                    r.handle_udp(stack, now, u, &mut self.scratch);
                }
            }
        }
    }

    /// Move what can move for session `sid`, and end or keep it.
    fn pump(&mut self, stack: &mut Stack, sid: SessionId) {
        let Some(entry) = self.sessions.get_mut(sid) else {
            return;
        };
        let scratch = &mut self.scratch[..];
        let mut adopted = None;
        let relay = |stack: &mut Stack, relay: &mut relay::Relay, scratch: &mut [u8]| match relay
            .pump(stack, scratch)
        {
            RelayStatus::Open => Pump::Idle,
            RelayStatus::Closed | RelayStatus::Aborted => Pump::Ended,
        };
        let r = match &mut entry.session {
            Session::Http(s) => {
                let mut page = http::PageCtx {
                    listeners: &self.listeners,
                    cache: &mut self.page,
                    now: self.now,
                    counters: &mut self.counters,
                };
                s.pump(stack, scratch, &mut page)
            }
            Session::Echo(s) => s.pump(stack, scratch),
            Session::Discard(h) => discard::pump(stack, *h),
            Session::Resolving(f) => f.pump(stack),
            Session::Socks(s) => {
                let mut ctx = socks::Ctx {
                    lookups: &mut self.dns,
                    now: self.now,
                    sid,
                    destinations: &self.destinations,
                    counters: &mut self.counters,
                    associations: &mut self.associations,
                    max_associations: self.max_associations,
                };
                let r = s.pump(stack, scratch, &mut ctx);
                adopted = s.upstream;
                let established = if r == Pump::Active {
                    s.take_relay()
                } else {
                    None
                };
                let association = if r == Pump::Active {
                    s.take_association(stack)
                } else {
                    None
                };
                match (established, association) {
                    // The reply is out: from here on it is a plain relay.
                    (Some(mut r), _) => {
                        let pumped = relay(stack, &mut r, scratch);
                        entry.session = Session::Relay(r);
                        pumped
                    }
                    // Or a UDP association, its datagrams found by socket.
                    (None, Some(mut a)) => {
                        let mut names = socks_udp::NameCtx {
                            lookups: &mut self.dns,
                            now: self.now,
                            sid,
                        };
                        let pumped = a.pump(
                            stack,
                            scratch,
                            &self.destinations,
                            &mut self.counters,
                            &mut names,
                        );
                        self.associations.insert(a.udp, sid);
                        entry.session = Session::Udp(a);
                        pumped
                    }
                    (None, None) => r,
                }
            }
            Session::Relay(r) => relay(stack, r, scratch),
            Session::Udp(a) => {
                let mut names = socks_udp::NameCtx {
                    lookups: &mut self.dns,
                    now: self.now,
                    sid,
                };
                a.pump(
                    stack,
                    scratch,
                    &self.destinations,
                    &mut self.counters,
                    &mut names,
                )
            }
            Session::Fetch(f) => match self.fetches.queue(f.id) {
                Some(queue) => {
                    if f.pump(stack, queue, scratch) {
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
        if let Some(up) = adopted {
            self.sessions.adopt(up, sid);
        }
        match r {
            Pump::Ended => {
                self.remove_session(sid);
            }
            Pump::Active => self.sessions.update(sid, self.now, true),
            Pump::Idle => self.sessions.update(sid, self.now, false),
        }
    }
}

#[cfg(test)]
mod tests;
