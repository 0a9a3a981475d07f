//! The HTTP service: one [`ServerConn`] per client, fed from and drained
//! into its connection.

use std::cell::RefCell;
use std::net::SocketAddr;

use ephemera::{RecvError, Stack, TcpHandle};

use super::relay::CHUNK;
use super::session::{progress, OutBuf, Pump};
use crate::daemon::http::{ServerConn, ServerContext};
use crate::daemon::table::render_port_table;

/// One HTTP client.
#[derive(Debug)]
pub(super) struct HttpSession {
    pub(super) conn: TcpHandle,
    server: ServerConn,
    out: OutBuf,
    local: SocketAddr,
    remote: SocketAddr,
    eof: bool,
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
        })
    }

    /// Whether the server waits for its client's request head.
    pub(super) fn awaiting_head(&self) -> bool {
        self.server.awaiting_head()
    }

    /// The request head took too long: hand the stack a 408 for the
    /// client (the caller then closes the connection).
    pub(super) fn head_timeout(&mut self, stack: &mut Stack) {
        self.server.handle_head_timeout();
        let server = &mut self.server;
        // What the stack does not take now is lost with the connection.
        let _ = self.out.flush(stack, self.conn, |b| server.poll_output(b));
    }

    /// Answer what arrived, send what the stack takes. `table` caches the
    /// port table for `/` pages within one turn.
    pub(super) fn pump(
        &mut self,
        stack: &mut Stack,
        scratch: &mut [u8],
        table: &mut Option<String>,
    ) -> Pump {
        let mut any = false;
        loop {
            let server = &mut self.server;
            let mut moved = match self.out.flush(stack, self.conn, |b| server.poll_output(b)) {
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
                        // Rendered only if a `/` request needs it, once per turn.
                        let cache = RefCell::new(table.take());
                        let render = || {
                            cache
                                .borrow_mut()
                                .get_or_insert_with(|| render_port_table(&stack.snapshot()))
                                .clone()
                        };
                        let ctx = ServerContext {
                            local: self.local,
                            remote: self.remote,
                            port_table: &render,
                        };
                        self.server.handle_input(&scratch[..k], &ctx);
                        *table = cache.into_inner();
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
