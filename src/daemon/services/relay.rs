//! A TCP relay between two connections of the stack, for SOCKS CONNECT and
//! `--forward`.
//!
//! Invariants: each direction holds at most one read's worth of bytes
//! (`CHUNK`) that the other side has not taken yet, and reads again only
//! once they are all taken, so a slow reader on one side closes the TCP
//! window on the other (back-pressure). End of stream on one side becomes
//! `shutdown` (FIN) on the other once the pending bytes are out; an error
//! (reset, refused, timeout) on either side aborts both.

use ephemera::{RecvError, SendError};
use ephemera::{Stack, TcpHandle, TcpState};

/// Bytes read from one side per step; the most a direction ever buffers.
pub(super) const CHUNK: usize = 16 * 1024;

/// One direction of the relay: bytes read from `src`, not yet sent to `dst`.
#[derive(Debug, Default)]
pub(super) struct Direction {
    buf: Vec<u8>,
    pos: usize,
    /// `src` sent FIN and everything before it was read.
    eof: bool,
    /// FIN was passed on to `dst`.
    shut: bool,
}

impl Direction {
    /// A direction that starts with bytes already read (SOCKS early data)
    /// and, maybe, end of stream already seen.
    pub(super) fn with_pending(buf: Vec<u8>, eof: bool) -> Direction {
        Direction {
            buf,
            pos: 0,
            eof,
            shut: false,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }
}

/// The relay failed: one side was reset, refused or timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Broken;

impl From<SendError> for Broken {
    fn from(_: SendError) -> Broken {
        Broken
    }
}

impl From<RecvError> for Broken {
    fn from(_: RecvError) -> Broken {
        Broken
    }
}

/// What [`Relay::pump`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RelayStatus {
    /// Still relaying; wait for the next event on either handle.
    Open,
    /// Both directions ended cleanly and both handles are closed.
    Closed,
    /// One side failed; both handles are aborted.
    Aborted,
}

/// Two connections joined byte for byte.
#[derive(Debug)]
pub(super) struct Relay {
    /// The side that connected to us (SOCKS client, forward client).
    pub(super) client: TcpHandle,
    /// The side we opened through the stack.
    pub(super) upstream: TcpHandle,
    to_upstream: Direction,
    to_client: Direction,
}

impl Relay {
    /// A relay; `to_upstream` may carry bytes the client sent early.
    pub(super) fn new(client: TcpHandle, upstream: TcpHandle, to_upstream: Direction) -> Relay {
        Relay {
            client,
            upstream,
            to_upstream,
            to_client: Direction::default(),
        }
    }

    /// Move whatever can move now, both ways. `scratch` is at least
    /// [`CHUNK`] long.
    pub(super) fn pump(&mut self, stack: &mut Stack, scratch: &mut [u8]) -> RelayStatus {
        loop {
            let r = pump_direction(
                stack,
                self.client,
                self.upstream,
                &mut self.to_upstream,
                scratch,
            )
            .and_then(|a| {
                pump_direction(
                    stack,
                    self.upstream,
                    self.client,
                    &mut self.to_client,
                    scratch,
                )
                .map(|b| a || b)
            });
            match r {
                Err(Broken) => {
                    self.abort(stack);
                    return RelayStatus::Aborted;
                }
                Ok(_) if self.to_upstream.shut && self.to_client.shut => {
                    stack.close(self.client);
                    stack.close(self.upstream);
                    return RelayStatus::Closed;
                }
                Ok(true) => continue,
                Ok(false) => return RelayStatus::Open,
            }
        }
    }

    /// Reset both sides (RST) and give up both handles.
    pub(super) fn abort(&mut self, stack: &mut Stack) {
        stack.abort(self.client);
        stack.abort(self.upstream);
    }

    /// Close both sides gracefully, first handing the stack whatever
    /// buffered bytes it takes.
    pub(super) fn close(&mut self, stack: &mut Stack) {
        for (dst, dir) in [
            (self.upstream, &mut self.to_upstream),
            (self.client, &mut self.to_client),
        ] {
            if !dir.pending().is_empty() {
                if let Ok(n) = stack.send(dst, dir.pending()) {
                    dir.pos += n;
                }
            }
        }
        stack.close(self.client);
        stack.close(self.upstream);
    }
}

/// Move bytes `src` → `dst` until one of them blocks. Returns whether
/// anything happened.
fn pump_direction(
    stack: &mut Stack,
    src: TcpHandle,
    dst: TcpHandle,
    dir: &mut Direction,
    scratch: &mut [u8],
) -> Result<bool, Broken> {
    let mut progress = false;
    loop {
        if !dir.pending().is_empty() {
            match stack.send(dst, dir.pending()) {
                Ok(n) => {
                    dir.pos += n;
                    progress = true;
                }
                Err(SendError::WouldBlock) => return Ok(progress),
                Err(e) => return Err(e.into()),
            }
            if !dir.pending().is_empty() {
                return Ok(progress);
            }
            dir.buf.clear();
            dir.pos = 0;
        }
        if dir.eof {
            // A FIN in SYN-SENT would abandon the connection attempt: pass
            // it on once `dst` is synchronized.
            let opening = matches!(
                stack.tcp_state(dst),
                Some(TcpState::SynSent | TcpState::SynReceived)
            );
            if !dir.shut && !opening {
                stack.shutdown(dst)?;
                dir.shut = true;
                progress = true;
            }
            return Ok(progress);
        }
        let n = CHUNK.min(scratch.len());
        match stack.recv(src, &mut scratch[..n]) {
            Ok(0) => dir.eof = true,
            Ok(k) => {
                // Straight on to `dst`; only what it has no room for yet
                // is kept, which saves a copy of every byte in the common
                // case, where `dst` takes it all.
                let sent = match stack.send(dst, &scratch[..k]) {
                    Ok(m) => m,
                    Err(SendError::WouldBlock) => 0,
                    Err(e) => return Err(e.into()),
                };
                dir.buf.extend_from_slice(&scratch[sent..k]);
            }
            Err(RecvError::WouldBlock) => return Ok(progress),
            Err(e) => return Err(e.into()),
        }
        progress = true;
    }
}
