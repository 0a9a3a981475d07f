//! `ephemera fetch`: one HTTP/1.1 GET made through the stack, from an
//! ephemeral port the stack's port table assigns.
//!
//! The connection is driven like any service connection; what it yields
//! waits in a per-fetch event queue until the driver takes it with
//! `Services::poll_fetch`. Reading stops while more than
//! [`MAX_QUEUED_BODY`] bytes of body wait there, so a slow consumer slows
//! the server down (TCP back-pressure) instead of filling memory.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::daemon::http::ResponseParser;
use ephemera::{ConnectError, RecvError, SendError};
use ephemera::{Stack, TcpHandle, TcpState};

use super::relay::CHUNK;

/// Body bytes queued for the consumer before reading pauses.
pub const MAX_QUEUED_BODY: usize = 1024 * 1024;

/// Names a fetch started with `Services::start_fetch`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[must_use]
pub struct FetchId(pub(super) u64);

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

/// Why `Services::start_fetch` could not start.
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
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Resolve { host, error } => write!(f, "cannot resolve {host}: {error}"),
            FetchError::NoAddress(host) => write!(f, "{host} has no address"),
            FetchError::Connect(to, e) => write!(f, "cannot connect to {to}: {e}"),
        }
    }
}

impl std::error::Error for FetchError {}

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
