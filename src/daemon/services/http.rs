//! The HTTP service: one [`ServerConn`] per client, fed from and drained
//! into its connection; and what its `/` page shows.
//!
//! The `/` page is bounded and cheap whoever asks and however often: the
//! client's own 4-tuple and connection, the counts of the stack's
//! listeners, connections and TIME-WAIT records (O(1) from its port
//! table), and the services' listeners, at most [`MAX_PAGE_LISTENERS`]
//! rows. It never shows another client's 4-tuple; `ephemera ports`, for
//! those allowed on the control socket, shows every row. The part every
//! client sees alike is built at most once per turn of the driver's loop
//! ([`PageCache`]), however many requests arrive in it.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use ephemera::{Instant, Protocol, RecvError, Stack, TcpHandle};

use super::counters::ServiceCounters;
use super::registry::Listeners;
use super::relay::CHUNK;
use super::session::{progress, OutBuf, Pump};
use crate::daemon::http::{ServerConn, ServerContext};
use crate::daemon::table::{format_page_rows, PageRow};

/// Listener rows the `/` page shows at most; the rest are counted.
pub const MAX_PAGE_LISTENERS: usize = 32;

/// The part of the `/` page every client sees alike.
#[derive(Debug)]
pub(super) struct PageShared {
    /// The counts line.
    summary: String,
    /// The listeners' rows, at most [`MAX_PAGE_LISTENERS`].
    rows: Vec<PageRow>,
    /// Listener rows left out.
    hidden: usize,
}

/// The shared part of the `/` page, built at most once per turn.
#[derive(Debug, Default)]
pub(super) struct PageCache {
    /// The driver's current turn.
    pub(super) turn: u64,
    built: Option<(u64, Arc<PageShared>)>,
}

impl PageCache {
    /// This turn's shared part, built now if this is its first `/` page.
    fn get(
        &mut self,
        stack: &Stack,
        listeners: &Listeners,
        now: Instant,
        counters: &mut ServiceCounters,
    ) -> Arc<PageShared> {
        if let Some((turn, page)) = &self.built {
            if *turn == self.turn {
                return page.clone();
            }
        }
        counters.http_pages_built += 1;
        let page = Arc::new(build_shared(stack, listeners, now));
        self.built = Some((self.turn, page.clone()));
        page
    }
}

/// Milliseconds from `since` to `now`.
fn age_ms(since: Instant, now: Instant) -> u64 {
    if now > since {
        (now - since).total_millis()
    } else {
        0
    }
}

fn build_shared(stack: &Stack, listeners: &Listeners, now: Instant) -> PageShared {
    let table = stack.port_table();
    let (tcp, udp) = listeners.len();
    let mut summary = String::new();
    let _ = write!(
        summary,
        "port table: listening {tcp} TCP, {udp} UDP; connections {}; TIME-WAIT {}\n\
         (only the listeners and your own connection are shown here; \
         `ephemera ports` on the daemon's host shows every row)\n",
        table.live_flows(),
        table.time_wait_flows(),
    );
    let mut all: Vec<PageRow> = listeners
        .sockets(stack)
        .map(|(proto, local, since)| PageRow {
            proto,
            state: match proto {
                Protocol::Tcp => "LISTEN",
                Protocol::Udp => "UNCONN",
            }
            .to_string(),
            local,
            remote: None,
            age_ms: age_ms(since, now),
        })
        .collect();
    all.sort_by_key(|r| (r.proto, r.local.port(), r.local.ip()));
    let hidden = all.len().saturating_sub(MAX_PAGE_LISTENERS);
    all.truncate(MAX_PAGE_LISTENERS);
    PageShared {
        summary,
        rows: all,
        hidden,
    }
}

/// The client's own connection, as its `/` page shows it.
struct Own {
    conn: TcpHandle,
    local: SocketAddr,
    remote: SocketAddr,
    since: Instant,
}

impl Own {
    /// The page's text after "you are": the counts, the listeners, then
    /// this connection.
    fn page(&self, stack: &Stack, shared: &PageShared, now: Instant) -> String {
        let mut rows = shared.rows.clone();
        rows.push(PageRow {
            proto: Protocol::Tcp,
            state: stack
                .tcp_state(self.conn)
                .map_or_else(|| "CLOSED".to_string(), |s| s.to_string()),
            local: self.local,
            remote: Some(self.remote),
            age_ms: age_ms(self.since, now),
        });
        let mut page = shared.summary.clone();
        page.push_str(&format_page_rows(&rows));
        if shared.hidden > 0 {
            let _ = writeln!(page, "... and {} more listeners", shared.hidden);
        }
        page
    }
}

/// What an HTTP session needs to answer `/`: the stack's counts and the
/// services' listeners, this turn's cache, the time, the counters.
pub(super) struct PageCtx<'a> {
    pub(super) listeners: &'a Listeners,
    pub(super) cache: &'a mut PageCache,
    pub(super) now: Instant,
    pub(super) counters: &'a mut ServiceCounters,
}

/// One HTTP client.
#[derive(Debug)]
pub(super) struct HttpSession {
    pub(super) conn: TcpHandle,
    server: ServerConn,
    out: OutBuf,
    local: SocketAddr,
    remote: SocketAddr,
    eof: bool,
    /// When it was accepted.
    since: Instant,
}

impl HttpSession {
    /// A session for accepted connection `h`; `None` (and `h` reset) if
    /// it is already gone.
    pub(super) fn accept(stack: &mut Stack, h: TcpHandle) -> Option<HttpSession> {
        let (Some(local), Some(remote)) = (stack.local_addr(h), stack.peer_addr(h)) else {
            stack.abort(h);
            return None;
        };
        Some(HttpSession {
            conn: h,
            server: ServerConn::new(),
            out: OutBuf::default(),
            local,
            remote,
            eof: false,
            since: stack.now(),
        })
    }

    /// Whether the server waits for its client's request head.
    pub(super) fn awaiting_head(&self) -> bool {
        self.server.awaiting_head()
    }

    /// The request head took too long: hand the stack a 408 for the
    /// client (the caller then closes the connection); `scratch` to build
    /// it in.
    pub(super) fn head_timeout(&mut self, stack: &mut Stack, scratch: &mut [u8]) {
        self.server.handle_head_timeout();
        let server = &mut self.server;
        // What the stack does not take now is lost with the connection.
        let _ = self
            .out
            .flush(stack, self.conn, scratch, |b| server.poll_output(b));
    }

    /// Answer what arrived, send what the stack takes; `/` pages from
    /// `page`.
    pub(super) fn pump(
        &mut self,
        stack: &mut Stack,
        scratch: &mut [u8],
        page: &mut PageCtx<'_>,
    ) -> Pump {
        let mut any = false;
        loop {
            let server = &mut self.server;
            let mut moved = match self
                .out
                .flush(stack, self.conn, scratch, |b| server.poll_output(b))
            {
                Ok(m) => m,
                Err(_) => {
                    stack.abort(self.conn);
                    return Pump::Ended;
                }
            };
            if self.server.wants_input() && !self.eof {
                let n = CHUNK.min(scratch.len());
                match stack.recv(self.conn, &mut scratch[..n]) {
                    Ok(0) => {
                        self.eof = true;
                        self.server.handle_eof();
                        moved = true;
                    }
                    Ok(k) => {
                        // Built only if a `/` request needs it.
                        let cell = RefCell::new(&mut *page);
                        let hidden = Cell::new(0);
                        let me = Own {
                            conn: self.conn,
                            local: self.local,
                            remote: self.remote,
                            since: self.since,
                        };
                        let st = &*stack;
                        let render = || {
                            let mut p = cell.borrow_mut();
                            let now = p.now;
                            let PageCtx {
                                listeners,
                                cache,
                                counters,
                                ..
                            } = &mut **p;
                            let shared = cache.get(st, listeners, now, counters);
                            hidden.set(hidden.get() + shared.hidden);
                            me.page(st, &shared, now)
                        };
                        let ctx = ServerContext {
                            local: self.local,
                            remote: self.remote,
                            port_table: &render,
                        };
                        self.server.handle_input(&scratch[..k], &ctx);
                        page.counters.http_page_rows_hidden += hidden.get() as u64;
                        moved = true;
                    }
                    Err(RecvError::WouldBlock) => {}
                    Err(_) => {
                        stack.abort(self.conn);
                        return Pump::Ended;
                    }
                }
            }
            if self.server.should_close() && self.out.is_empty() {
                stack.close(self.conn);
                return Pump::Ended;
            }
            if !moved {
                return progress(any);
            }
            any = true;
        }
    }
}
