//! `ephemera fetch`: one HTTP/1.1 GET made through the stack, from an
//! ephemeral port the stack's port table assigns, and the bookkeeping of
//! every fetch from its start until its consumer took its last event.
//!
//! A fetch waits for its host's name, if it has one, then its connection
//! is driven like any service connection; what it yields waits in a
//! per-fetch event queue until the driver takes it with
//! [`Services::poll_fetch`]. Reading stops while more than
//! [`MAX_QUEUED_BODY`] bytes of body wait there, so a slow consumer slows
//! the server down (TCP back-pressure) instead of filling memory.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;

use ephemera::{ConnectError, RecvError, SendError};
use ephemera::{Stack, TcpHandle, TcpState};

use super::lookup::{LookupId, LookupResult, Waiter};
use super::relay::CHUNK;
use super::session::{connect_any, NoConnection, Session, SessionId};
use super::Services;
use crate::daemon::host::Host;
use crate::daemon::http::{ResponseParser, Url};

/// Body bytes queued for the consumer before reading pauses.
pub const MAX_QUEUED_BODY: usize = 1024 * 1024;

/// Names a fetch started with [`Services::start_fetch`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[must_use]
pub struct FetchId(u64);

/// What happened to a fetch, in order: `Connected`, `Head`, any number of
/// `Body`, then `Done` — or `Failed` at any point. Nothing follows `Done`
/// or `Failed`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchEvent {
    /// The connection is up; this is its 4-tuple as the stack sees it.
    Connected {
        /// The stack's end, with the port its table assigned.
        local: SocketAddr,
        /// The server.
        remote: SocketAddr,
    },
    /// The response head arrived.
    Head {
        /// HTTP status code.
        status: u16,
    },
    /// The next piece of the (decoded) body.
    Body(Vec<u8>),
    /// The whole response arrived.
    Done,
    /// The fetch failed; one line saying why.
    Failed(String),
}

/// Why a fetch could not start or connect.
#[derive(Debug)]
pub enum FetchError {
    /// The name did not resolve.
    Resolve {
        /// The host name.
        host: String,
        /// What the resolver said.
        error: io::Error,
    },
    /// The name resolved to no address.
    NoAddress(String),
    /// The stack refused to open the connection (no address of that
    /// family, no free port, …).
    Connect(SocketAddr, ConnectError),
    /// The destination rules (`--socks-deny`) do not allow the address
    /// (given, or every one the name resolved to); the reason.
    Denied(String),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Resolve { host, error } => write!(f, "cannot resolve {host}: {error}"),
            FetchError::NoAddress(host) => write!(f, "{host} has no address"),
            FetchError::Connect(to, e) => write!(f, "cannot connect to {to}: {e}"),
            FetchError::Denied(why) => write!(f, "refused: {why}"),
        }
    }
}

impl std::error::Error for FetchError {}

impl FetchError {
    fn no_connection(host: &Host, e: NoConnection) -> FetchError {
        match e {
            NoConnection::Refused(to, e) => FetchError::Connect(to, e),
            NoConnection::NoAddress => FetchError::NoAddress(host.to_string()),
        }
    }
}

/// A fetch, from `start_fetch` until its consumer took `Done` or `Failed`.
#[derive(Debug)]
pub(super) struct FetchSlot {
    queue: FetchQueue,
    stage: FetchStage,
}

#[derive(Debug)]
enum FetchStage {
    /// Waiting for the host's name: the lookup, and what to do once it is
    /// answered.
    Resolving {
        lookup: LookupId,
        host: Host,
        request: Vec<u8>,
    },
    /// Its connection is this session.
    Session(SessionId),
    /// No connection any more; events may still wait in the queue.
    Over,
}

/// Every fetch not yet forgotten.
#[derive(Debug, Default)]
pub(super) struct Fetches {
    slots: HashMap<FetchId, FetchSlot>,
    next: u64,
}

impl Fetches {
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Fetch `id`'s connection session ended: only its events are left.
    pub(super) fn session_ended(&mut self, id: FetchId) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.stage = FetchStage::Over;
        }
    }

    /// Fail fetch `id` with `why`, unless it already finished.
    pub(super) fn fail(&mut self, id: FetchId, why: String) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.queue.push(FetchEvent::Failed(why));
        }
    }

    /// Fetch `id`'s event queue.
    pub(super) fn queue(&mut self, id: FetchId) -> Option<&mut FetchQueue> {
        self.slots.get_mut(&id).map(|s| &mut s.queue)
    }
}

impl Services {
    /// Start an HTTP GET of `url` through the stack, from an ephemeral
    /// port of its table. A name goes to the resolver, and the fetch
    /// connects once it answers, to the first address the stack can reach;
    /// a literal connects at once. Progress, including a failed lookup,
    /// comes out of [`Services::poll_fetch`] as the stack and
    /// `handle_events` run. Errors here are immediate: a literal the stack
    /// cannot connect to, or a lookup refused (too many outstanding).
    pub fn start_fetch(&mut self, stack: &mut Stack, url: &Url) -> Result<FetchId, FetchError> {
        let id = FetchId(self.fetches.next);
        let request = url.request();
        let stage = match &url.host {
            Host::Name(n) => {
                let lookup = self
                    .dns
                    .start(stack.now(), n, url.port, Waiter::Fetch(id))
                    .map_err(|error| FetchError::Resolve {
                        host: n.clone(),
                        error,
                    })?;
                FetchStage::Resolving {
                    lookup,
                    host: url.host.clone(),
                    request,
                }
            }
            Host::Ip(ip) => {
                if let Err(d) = self.destinations.check(*ip) {
                    self.counters.fetch_denied_destination += 1;
                    return Err(FetchError::Denied(d.to_string()));
                }
                let (conn, _) = connect_any(stack, &[(*ip, url.port).into()])
                    .map_err(|e| FetchError::no_connection(&url.host, e))?;
                let fetch = FetchConn::new(conn, id, request);
                FetchStage::Session(self.sessions.add(Session::Fetch(fetch), self.now))
            }
        };
        self.fetches.next += 1;
        let queue = FetchQueue::default();
        self.fetches.slots.insert(id, FetchSlot { queue, stage });
        self.send_lookups(stack);
        Ok(id)
    }

    /// The next event of fetch `id`, if one is ready. After `Done` or
    /// `Failed` has been returned the id is forgotten.
    pub fn poll_fetch(&mut self, id: FetchId) -> Option<FetchEvent> {
        let slot = self.fetches.slots.get_mut(&id)?;
        let q = &mut slot.queue;
        let ev = q.pop();
        if q.finished && q.events.is_empty() {
            self.fetches.slots.remove(&id);
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
        match self.fetches.slots.get(&id).map(|f| &f.stage) {
            Some(&FetchStage::Session(sid)) => self.end(stack, sid, true),
            Some(&FetchStage::Resolving { lookup, .. }) => self.dns.detach(lookup),
            _ => {}
        }
        self.fetches.slots.remove(&id);
    }

    /// Fail every fetch still waiting for its name (the daemon is
    /// shutting down); those with a connection end with their session.
    pub(super) fn fail_resolving_fetches(&mut self, why: &str) {
        for slot in self.fetches.slots.values_mut() {
            if let FetchStage::Resolving { lookup, .. } = slot.stage {
                self.dns.detach(lookup);
                slot.stage = FetchStage::Over;
                slot.queue.push(FetchEvent::Failed(why.to_string()));
            }
        }
    }

    /// The answer to fetch `id`'s lookup: connect (and return the
    /// session to pump), or fail the fetch.
    pub(super) fn fetch_resolved(
        &mut self,
        stack: &mut Stack,
        id: FetchId,
        answer: LookupResult,
    ) -> Option<SessionId> {
        let slot = self.fetches.slots.get_mut(&id)?;
        let FetchStage::Resolving { host, request, .. } =
            std::mem::replace(&mut slot.stage, FetchStage::Over)
        else {
            return None;
        };
        let error = match answer {
            // The destination rules refused every address (`resolved`).
            Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                FetchError::Denied(error.to_string())
            }
            Err(error) => FetchError::Resolve {
                host: host.to_string(),
                error,
            },
            Ok(addrs) => match connect_any(stack, &addrs) {
                Ok((conn, _)) => {
                    let fetch = FetchConn::new(conn, id, request);
                    let sid = self.sessions.add(Session::Fetch(fetch), self.now);
                    slot.stage = FetchStage::Session(sid);
                    return Some(sid);
                }
                Err(e) => FetchError::no_connection(&host, e),
            },
        };
        slot.queue.push(FetchEvent::Failed(error.to_string()));
        None
    }
}

/// The consumer's side of a fetch: events not yet taken.
#[derive(Debug, Default)]
pub(super) struct FetchQueue {
    pub(super) events: VecDeque<FetchEvent>,
    /// Body bytes in `events`.
    pub(super) queued: usize,
    /// `Done` or `Failed` is queued.
    pub(super) finished: bool,
}

impl FetchQueue {
    pub(super) fn push(&mut self, ev: FetchEvent) {
        if self.finished {
            return;
        }
        match &ev {
            FetchEvent::Body(b) => self.queued += b.len(),
            FetchEvent::Done | FetchEvent::Failed(_) => self.finished = true,
            _ => {}
        }
        self.events.push_back(ev);
    }

    pub(super) fn pop(&mut self) -> Option<FetchEvent> {
        let ev = self.events.pop_front()?;
        if let FetchEvent::Body(b) = &ev {
            self.queued -= b.len();
        }
        Some(ev)
    }
}

/// The connection's side of a fetch.
#[derive(Debug)]
pub(super) struct FetchConn {
    pub(super) conn: TcpHandle,
    pub(super) id: FetchId,
    request: Vec<u8>,
    sent: usize,
    parser: ResponseParser,
    connected: bool,
    head_reported: bool,
}

impl FetchConn {
    pub(super) fn new(conn: TcpHandle, id: FetchId, request: Vec<u8>) -> FetchConn {
        FetchConn {
            conn,
            id,
            request,
            sent: 0,
            parser: ResponseParser::new(),
            connected: false,
            head_reported: false,
        }
    }

    /// Move what can move. Returns `false` once the connection is given up
    /// (and `Done` or `Failed` queued).
    pub(super) fn pump(
        &mut self,
        stack: &mut Stack,
        q: &mut FetchQueue,
        scratch: &mut [u8],
    ) -> bool {
        let mut body = Vec::new();
        loop {
            let mut progress = false;
            if !self.connected {
                match stack.tcp_state(self.conn) {
                    Some(TcpState::SynSent | TcpState::SynReceived) => {}
                    Some(TcpState::Closed) | None => {
                        // Refused or timed out; the error says which.
                        let why = match stack.tcp_error(self.conn) {
                            Some(e) => RecvError::from(e).to_string(),
                            None => "connection closed".to_string(),
                        };
                        return self.fail(stack, q, why);
                    }
                    Some(_) => {
                        self.connected = true;
                        if let (Some(local), Some(remote)) =
                            (stack.local_addr(self.conn), stack.peer_addr(self.conn))
                        {
                            q.push(FetchEvent::Connected { local, remote });
                        }
                        progress = true;
                    }
                }
            }
            if self.connected && self.sent < self.request.len() {
                match stack.send(self.conn, &self.request[self.sent..]) {
                    Ok(n) => {
                        self.sent += n;
                        progress = true;
                    }
                    Err(SendError::WouldBlock) => {}
                    Err(e) => return self.fail(stack, q, e.to_string()),
                }
            }
            if self.connected && q.queued + body.len() < MAX_QUEUED_BODY {
                let n = CHUNK.min(scratch.len());
                let r = match stack.recv(self.conn, &mut scratch[..n]) {
                    Ok(0) => Some(self.parser.handle_eof()),
                    Ok(k) => Some(self.parser.handle_input(&scratch[..k], &mut body)),
                    Err(RecvError::WouldBlock) => None,
                    Err(e) => return self.fail(stack, q, e.to_string()),
                };
                if let Some(r) = r {
                    progress = true;
                    if let Err(e) = r {
                        return self.fail(stack, q, e.to_string());
                    }
                }
            }
            if !self.head_reported {
                if let Some(status) = self.parser.status() {
                    self.head_reported = true;
                    q.push(FetchEvent::Head { status });
                }
            }
            if !body.is_empty() {
                q.push(FetchEvent::Body(std::mem::take(&mut body)));
            }
            if self.parser.is_complete() {
                q.push(FetchEvent::Done);
                stack.close(self.conn);
                return false;
            }
            if !progress {
                return true;
            }
        }
    }

    fn fail(&mut self, stack: &mut Stack, q: &mut FetchQueue, why: String) -> bool {
        q.push(FetchEvent::Failed(why));
        stack.abort(self.conn);
        false
    }
}
