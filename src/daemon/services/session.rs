//! The session map: every connection the services hold belongs to one
//! session (an HTTP client, an echo client, a SOCKS handshake, a relay, a
//! fetch...), found by its handle.
//!
//! Invariants: every connection handle the services own is in `handles`,
//! naming exactly one session, and each session owns its handles until it
//! ends, when it closes or aborts them and they leave the map together.
//! Every session has an idle deadline (unless idle timeouts are off), and
//! one that waits for its client's HTTP request head or SOCKS handshake
//! also a head deadline; `deadlines` holds exactly one entry per session
//! with either, at the earlier of the two, so the next expiry is found in
//! O(log n) and nothing scans the sessions.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use log::debug;

use ephemera::{ConnectError, Duration, Instant, SendError, Stack, TcpHandle};

use super::echo::EchoSession;
use super::fetch::FetchConn;
use super::forward::ForwardWait;
use super::http::HttpSession;
use super::lookup::LookupId;
use super::relay::{Relay, CHUNK};
use super::socks::SocksSession;
use super::socks_udp::UdpAssociation;

/// Names a session.
pub(super) type SessionId = u64;

/// One client's state, by what it is doing.
#[derive(Debug)]
pub(super) enum Session {
    Http(HttpSession),
    Echo(EchoSession),
    Discard(TcpHandle),
    Socks(SocksSession),
    /// A forwarded client waiting for its target's name.
    Resolving(ForwardWait),
    Relay(Relay),
    Fetch(FetchConn),
    /// A SOCKS UDP association, its control connection and relay socket.
    Udp(UdpAssociation),
}

impl Session {
    /// The connections it owns.
    pub(super) fn handles(&self) -> [Option<TcpHandle>; 2] {
        match self {
            Session::Http(s) => [Some(s.conn), None],
            Session::Echo(s) => [Some(s.conn), None],
            Session::Discard(h) => [Some(*h), None],
            Session::Socks(s) => [Some(s.client), s.upstream],
            Session::Resolving(f) => [Some(f.client), None],
            Session::Relay(r) => [Some(r.client), Some(r.upstream)],
            Session::Udp(a) => [Some(a.control), None],
            Session::Fetch(f) => [Some(f.conn), None],
        }
    }

    /// The lookup it waits for, if any.
    pub(super) fn lookup(&self) -> Option<LookupId> {
        match self {
            Session::Socks(s) => s.lookup,
            Session::Resolving(f) => Some(f.lookup),
            Session::Udp(a) => a.lookup(),
            _ => None,
        }
    }

    /// Whether it waits for its client to finish an HTTP request head or
    /// the SOCKS handshake, which the head timeout bounds.
    fn in_head(&self) -> bool {
        match self {
            Session::Http(s) => s.awaiting_head(),
            Session::Socks(s) => s.socks.in_handshake(),
            _ => false,
        }
    }
}

/// Which time limit a session ran out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// No bytes moved for the idle timeout.
    Idle,
    /// The HTTP request head or SOCKS handshake took too long.
    Head,
}

/// Whether a session goes on after a pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pump {
    /// Waiting for the stack.
    Idle,
    /// Moved bytes: the idle clock restarts.
    Active,
    /// Ended; its handles are closed or aborted.
    Ended,
}

/// "Did anything move" as a [`Pump`].
pub(super) fn progress(moved: bool) -> Pump {
    if moved {
        Pump::Active
    } else {
        Pump::Idle
    }
}

/// A session and its deadlines.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) session: Session,
    /// When it ends unless bytes move.
    idle_at: Option<Instant>,
    /// When it ends unless its client's head or handshake is complete.
    head_by: Option<Instant>,
}

impl Entry {
    fn deadline(&self) -> Option<Instant> {
        match (self.idle_at, self.head_by) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The sessions, by id and by handle. See the [module docs](self).
#[derive(Debug)]
pub(super) struct Sessions {
    map: HashMap<SessionId, Entry>,
    handles: HashMap<TcpHandle, SessionId>,
    /// Each session's earlier deadline.
    deadlines: BTreeSet<(Instant, SessionId)>,
    next: SessionId,
    idle: Option<Duration>,
    head: Option<Duration>,
}

impl Sessions {
    /// No sessions; each will end after `idle` without traffic, and after
    /// `head` if its client has not finished its request head or
    /// handshake by then (`None`: no such limit).
    pub(super) fn new(idle: Option<Duration>, head: Option<Duration>) -> Sessions {
        Sessions {
            map: HashMap::new(),
            handles: HashMap::new(),
            deadlines: BTreeSet::new(),
            next: 0,
            idle,
            head,
        }
    }

    /// A new id, for a session that needs it before it exists.
    pub(super) fn reserve(&mut self) -> SessionId {
        let sid = self.next;
        self.next += 1;
        sid
    }

    /// Add `session` under a new id.
    pub(super) fn add(&mut self, session: Session, now: Instant) -> SessionId {
        let sid = self.reserve();
        self.insert(sid, session, now);
        sid
    }

    /// Add `session` under `sid`, from [`Sessions::reserve`].
    pub(super) fn insert(&mut self, sid: SessionId, session: Session, now: Instant) {
        for h in session.handles().into_iter().flatten() {
            self.handles.insert(h, sid);
        }
        let entry = Entry {
            session,
            idle_at: None,
            head_by: None,
        };
        self.map.insert(sid, entry);
        self.update(sid, now, true);
    }

    /// `h` joined session `sid` (an upstream connection it opened).
    pub(super) fn adopt(&mut self, h: TcpHandle, sid: SessionId) {
        self.handles.insert(h, sid);
    }

    /// Take session `sid` out, with its handles.
    pub(super) fn remove(&mut self, sid: SessionId) -> Option<Session> {
        let e = self.map.remove(&sid)?;
        if let Some(d) = e.deadline() {
            self.deadlines.remove(&(d, sid));
        }
        for h in e.session.handles().into_iter().flatten() {
            self.handles.remove(&h);
        }
        Some(e.session)
    }

    /// The session that owns `h`.
    pub(super) fn owner(&self, h: TcpHandle) -> Option<SessionId> {
        self.handles.get(&h).copied()
    }

    pub(super) fn get_mut(&mut self, sid: SessionId) -> Option<&mut Entry> {
        self.map.get_mut(&sid)
    }

    /// Session `sid` was pumped at `now`, and moved bytes if `active`:
    /// its idle clock restarts if so, and its head deadline starts when it
    /// begins to wait for a head and ends when it no longer does.
    pub(super) fn update(&mut self, sid: SessionId, now: Instant, active: bool) {
        let Some(e) = self.map.get_mut(&sid) else {
            return;
        };
        let before = e.deadline();
        if active || e.idle_at.is_none() {
            e.idle_at = self.idle.map(|d| now + d);
        }
        if !e.session.in_head() {
            e.head_by = None;
        } else if e.head_by.is_none() {
            e.head_by = self.head.map(|d| now + d);
        }
        let after = e.deadline();
        if before != after {
            if let Some(d) = before {
                self.deadlines.remove(&(d, sid));
            }
            if let Some(d) = after {
                self.deadlines.insert((d, sid));
            }
        }
    }

    /// The next session whose time ran out by `now`, and which limit it
    /// ran out of. It leaves the deadline set; the caller ends it.
    pub(super) fn pop_expired(&mut self, now: Instant) -> Option<(SessionId, Expiry)> {
        let &(at, sid) = self.deadlines.first().filter(|(at, _)| *at <= now)?;
        self.deadlines.remove(&(at, sid));
        let e = self.map.get_mut(&sid)?;
        let expiry = if e.head_by.is_some_and(|h| h <= now) {
            Expiry::Head
        } else {
            Expiry::Idle
        };
        e.idle_at = None;
        e.head_by = None;
        Some((sid, expiry))
    }

    /// The earliest deadline.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    pub(super) fn ids(&self) -> Vec<SessionId> {
        self.map.keys().copied().collect()
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Connections the sessions hold.
    #[cfg(test)]
    pub(super) fn connections(&self) -> usize {
        self.handles.len()
    }
}

/// Bytes taken from a protocol state machine and not yet accepted by
/// `send`: only what the stack refused of a fill, so a short answer that
/// the stack takes whole never allocates here.
#[derive(Debug, Default)]
pub(super) struct OutBuf {
    pub(super) buf: Vec<u8>,
    pub(super) pos: usize,
}

impl OutBuf {
    pub(super) fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Send pending bytes, then fill `scratch` (up to [`CHUNK`]) from
    /// `fill` and send that while the stack takes it all; keep what it
    /// refuses of the last fill. Returns whether anything moved.
    pub(super) fn flush(
        &mut self,
        stack: &mut Stack,
        h: TcpHandle,
        scratch: &mut [u8],
        mut fill: impl FnMut(&mut [u8]) -> usize,
    ) -> Result<bool, SendError> {
        let mut progress = false;
        while !self.is_empty() {
            match stack.send(h, &self.buf[self.pos..]) {
                Ok(0) | Err(SendError::WouldBlock) => return Ok(progress),
                Ok(n) => {
                    self.pos += n;
                    progress = true;
                }
                Err(e) => return Err(e),
            }
        }
        let len = CHUNK.min(scratch.len());
        let chunk = &mut scratch[..len];
        loop {
            let n = fill(chunk);
            if n == 0 {
                return Ok(progress);
            }
            let sent = match stack.send(h, &chunk[..n]) {
                Ok(k) => k,
                Err(SendError::WouldBlock) => 0,
                Err(e) => return Err(e),
            };
            progress |= sent > 0;
            if sent < n {
                self.buf.clear();
                self.buf.extend_from_slice(&chunk[sent..n]);
                self.pos = 0;
                return Ok(progress);
            }
        }
    }
}

/// Why no connection was opened to any of a list of addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoConnection {
    /// The list was empty.
    NoAddress,
    /// The stack refused the last address tried.
    Refused(SocketAddr, ConnectError),
}

/// Open a connection to the first of `addrs` the stack accepts.
pub(super) fn connect_any(
    stack: &mut Stack,
    addrs: &[SocketAddr],
) -> Result<(TcpHandle, SocketAddr), NoConnection> {
    let mut last = NoConnection::NoAddress;
    for &a in addrs {
        match stack.connect(a) {
            Ok(h) => {
                debug!("connect {:?} -> {a}", stack.local_addr(h));
                return Ok((h, a));
            }
            Err(e) => last = NoConnection::Refused(a, e),
        }
    }
    Err(last)
}
