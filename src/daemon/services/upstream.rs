//! The sockets of a DNS front end's upstream side: what the [`dns`]
//! modules ask for, done on the stack.
//!
//! The front ends ([`Forwarder`], [`StubResolver`]) are sans-IO: they say
//! what to send ([`Transmit`]) and are told what came back. [`Upstream`]
//! carries that out through the stack's socket API:
//!
//! - [`Transmit::Udp`]: a fresh *connected* UDP socket to the upstream
//!   ([`Stack::udp_connect`]), so the port table picks its local port for
//!   that destination (RFC 6056) and only the upstream's address and port
//!   can reach it; the query is sent on it and its local address reported
//!   with `handle_sent`. Its datagrams go to `handle_datagram`, an ICMP
//!   port unreachable to `handle_failed`.
//! - [`Transmit::Tcp`]: a connection through the stack ([`Stack::connect`],
//!   from an ephemeral port of the same table) carrying the query with its
//!   two-octet length (RFC 1035 §4.2.2, RFC 7766); each complete message
//!   read goes to `handle_tcp_answer`, a refused, reset or closed
//!   connection to `handle_failed`.
//! - [`Transmit::Close`]: the attempt is over; its socket or connection
//!   is closed.
//!
//! A fresh port per query means fresh: a port the table picks that one of
//! the last queries to the same upstream left from (an eighth of the
//! ephemeral range, at most [`MAX_RECENT`]) is handed back and the table
//! asked again, up to [`TRIES`] times. Otherwise, the ports of successive
//! queries being independent draws, 1,000 queries over a range of 16,384
//! ports would share about 30 of them (the birthday bound), and a late or
//! forged answer to one query would meet a later one's socket. What this
//! costs in unpredictability is the excluded eighth: log2(8/7), under a
//! fifth of a bit.
//!
//! Invariants: every socket and connection opened here is in exactly one
//! of the maps, under its attempt, until its `Close` (or [`Upstream::close_all`]);
//! a TCP attempt buffers at most one message (two octets of length and
//! 65535 of message) beyond what the stack holds, and its query.
//!
//! [`dns`]: crate::daemon::dns

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

use log::debug;

use ephemera::{Instant, RecvError, SendError, Stack, TcpHandle, UdpHandle};

use crate::daemon::dns::forwarder::Forwarder;
use crate::daemon::dns::stub::StubResolver;
use crate::daemon::dns::table::{AttemptId, Transmit};

/// Largest DNS message (RFC 1035 §4.2.2's length field).
const MAX_MESSAGE: usize = 65535;

/// Most recent local ports remembered per upstream.
pub(super) const MAX_RECENT: usize = 4096;

/// How many ports the table is asked for before a recent one is taken.
const TRIES: usize = 8;

/// The local ports of the last queries to one upstream, oldest first.
#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<u16>,
    set: HashSet<u16>,
}

impl Recent {
    fn contains(&self, port: u16) -> bool {
        self.set.contains(&port)
    }

    /// Remember `port`, forgetting the oldest beyond `max`.
    fn push(&mut self, port: u16, max: usize) {
        if self.set.insert(port) {
            self.order.push_back(port);
        }
        while self.order.len() > max {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// What a front end is told about its upstream attempts: the `handle_*`
/// methods [`Forwarder`] and [`StubResolver`] share.
pub(super) trait Reports {
    /// UDP attempt `attempt` was sent from `local`.
    fn handle_sent(&mut self, now: Instant, attempt: AttemptId, local: SocketAddr);
    /// A datagram from `from` arrived at `local`.
    fn handle_datagram(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, bytes: &[u8]);
    /// TCP attempt `attempt` read one message.
    fn handle_tcp_answer(&mut self, attempt: AttemptId, bytes: &[u8]);
    /// Attempt `attempt` failed.
    fn handle_failed(&mut self, now: Instant, attempt: AttemptId);
}

impl Reports for Forwarder {
    fn handle_sent(&mut self, now: Instant, attempt: AttemptId, local: SocketAddr) {
        Forwarder::handle_sent(self, now, attempt, local)
    }
    fn handle_datagram(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, bytes: &[u8]) {
        Forwarder::handle_datagram(self, now, local, from, bytes)
    }
    fn handle_tcp_answer(&mut self, attempt: AttemptId, bytes: &[u8]) {
        Forwarder::handle_tcp_answer(self, attempt, bytes)
    }
    fn handle_failed(&mut self, now: Instant, attempt: AttemptId) {
        Forwarder::handle_failed(self, now, attempt)
    }
}

impl<T: Copy + Eq + std::hash::Hash + std::fmt::Debug> Reports for StubResolver<T> {
    fn handle_sent(&mut self, now: Instant, attempt: AttemptId, local: SocketAddr) {
        StubResolver::handle_sent(self, now, attempt, local)
    }
    fn handle_datagram(&mut self, now: Instant, local: SocketAddr, from: SocketAddr, bytes: &[u8]) {
        StubResolver::handle_datagram(self, now, local, from, bytes)
    }
    fn handle_tcp_answer(&mut self, attempt: AttemptId, bytes: &[u8]) {
        StubResolver::handle_tcp_answer(self, attempt, bytes)
    }
    fn handle_failed(&mut self, now: Instant, attempt: AttemptId) {
        StubResolver::handle_failed(self, now, attempt)
    }
}

/// One TCP attempt: its query going out, its answer coming in.
#[derive(Debug)]
struct TcpAttempt {
    attempt: AttemptId,
    /// The query with its length in front; `out[sent..]` is still to send.
    out: Vec<u8>,
    sent: usize,
    /// Octets read and not yet a whole message.
    inbuf: Vec<u8>,
    /// Reported failed (the front end ignores a second report, but there
    /// is no point in making one).
    failed: bool,
}

/// Where an attempt's socket is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Socket {
    Udp(UdpHandle),
    Tcp(TcpHandle),
}

/// The upstream sockets of one front end. See the [module docs](self).
#[derive(Debug, Default)]
pub(super) struct Upstream {
    by_attempt: HashMap<AttemptId, Socket>,
    udp: HashMap<UdpHandle, AttemptId>,
    tcp: HashMap<TcpHandle, TcpAttempt>,
    /// Per upstream (only the configured ones are ever asked).
    recent: HashMap<SocketAddr, Recent>,
}

impl Upstream {
    /// Whether `u` is one of this front end's UDP sockets.
    pub(super) fn owns_udp(&self, u: UdpHandle) -> bool {
        self.udp.contains_key(&u)
    }

    /// Whether `h` is one of this front end's TCP connections.
    pub(super) fn owns_tcp(&self, h: TcpHandle) -> bool {
        self.tcp.contains_key(&h)
    }

    /// Carry out `t` for front end `fe`.
    pub(super) fn transmit(
        &mut self,
        stack: &mut Stack,
        now: Instant,
        t: Transmit,
        fe: &mut dyn Reports,
    ) {
        match t {
            Transmit::Udp {
                attempt,
                upstream,
                message,
            } => {
                let u = match self.fresh_socket(stack, upstream) {
                    Ok(u) => u,
                    Err(e) => {
                        debug!("dns: no UDP socket to {upstream}: {e}");
                        return fe.handle_failed(now, attempt);
                    }
                };
                if let Err(e) = stack.udp_send(u, &message) {
                    debug!("dns: query to {upstream} not sent: {e}");
                    stack.udp_close(u);
                    return fe.handle_failed(now, attempt);
                }
                let Some(local) = stack.udp_local_addr(u) else {
                    return fe.handle_failed(now, attempt);
                };
                self.by_attempt.insert(attempt, Socket::Udp(u));
                self.udp.insert(u, attempt);
                fe.handle_sent(now, attempt, local);
            }
            Transmit::Tcp {
                attempt,
                upstream,
                message,
            } => {
                let h = match stack.connect(upstream) {
                    Ok(h) => h,
                    Err(e) => {
                        debug!("dns: no TCP connection to {upstream}: {e}");
                        return fe.handle_failed(now, attempt);
                    }
                };
                // `message` came from a client's datagram or the stub's
                // builder, so it fits the length field.
                let len = u16::try_from(message.len()).unwrap_or(u16::MAX);
                let mut out = Vec::with_capacity(2 + message.len());
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&message);
                self.by_attempt.insert(attempt, Socket::Tcp(h));
                self.tcp.insert(
                    h,
                    TcpAttempt {
                        attempt,
                        out,
                        sent: 0,
                        inbuf: Vec::new(),
                        failed: false,
                    },
                );
            }
            Transmit::Close { attempt } => match self.by_attempt.remove(&attempt) {
                Some(Socket::Udp(u)) => {
                    self.udp.remove(&u);
                    stack.udp_close(u);
                }
                Some(Socket::Tcp(h)) => {
                    self.tcp.remove(&h);
                    stack.close(h);
                }
                None => {}
            },
        }
    }

    /// A UDP socket connected to `upstream` on a port none of the last
    /// queries there used, if the table gives one within [`TRIES`].
    fn fresh_socket(
        &mut self,
        stack: &mut Stack,
        upstream: SocketAddr,
    ) -> Result<UdpHandle, ephemera::ConnectError> {
        let range = stack.port_table().config().ephemeral.clone();
        let max = (range.len() / 8).min(MAX_RECENT);
        let recent = self.recent.entry(upstream).or_default();
        let mut u = stack.udp_connect(upstream)?;
        for _ in 1..TRIES {
            let port = stack.udp_local_addr(u).map_or(0, |a| a.port());
            if !recent.contains(port) {
                break;
            }
            stack.udp_close(u);
            u = stack.udp_connect(upstream)?;
        }
        if let Some(a) = stack.udp_local_addr(u) {
            recent.push(a.port(), max);
        }
        Ok(u)
    }

    /// Datagrams (or an ICMP refusal) on UDP socket `u`, to `fe`.
    /// `scratch` holds the largest datagram.
    pub(super) fn handle_udp(
        &mut self,
        stack: &mut Stack,
        now: Instant,
        u: UdpHandle,
        scratch: &mut [u8],
        fe: &mut dyn Reports,
    ) {
        let Some(&attempt) = self.udp.get(&u) else {
            return;
        };
        let Some(local) = stack.udp_local_addr(u) else {
            return;
        };
        loop {
            match stack.udp_recv_from(u, scratch) {
                // Once the front end has ended the attempt, it ignores the
                // rest; its `Close` comes with its outputs.
                Ok((n, from)) => fe.handle_datagram(now, local, from, &scratch[..n]),
                Err(RecvError::ConnectionRefused) => fe.handle_failed(now, attempt),
                Err(_) => break,
            }
        }
    }

    /// Progress on TCP connection `h`: send what is left of the query,
    /// read, hand each complete message to `fe`, and report a connection
    /// that failed or closed before an answer was accepted.
    pub(super) fn handle_tcp(
        &mut self,
        stack: &mut Stack,
        now: Instant,
        h: TcpHandle,
        scratch: &mut [u8],
        fe: &mut dyn Reports,
    ) {
        let Some(t) = self.tcp.get_mut(&h) else {
            return;
        };
        if t.failed {
            return;
        }
        let mut failed = stack.tcp_error(h).is_some();
        while !failed && t.sent < t.out.len() {
            match stack.send(h, &t.out[t.sent..]) {
                Ok(0) | Err(SendError::WouldBlock) => break,
                Ok(n) => t.sent += n,
                Err(_) => failed = true,
            }
        }
        let mut messages = Vec::new();
        while !failed {
            // Read no further than the message being assembled needs.
            let want = match t.inbuf.len() {
                n if n < 2 => 2 - n,
                n => 2 + u16::from_be_bytes([t.inbuf[0], t.inbuf[1]]) as usize - n,
            };
            let room = want.min(scratch.len());
            match stack.recv(h, &mut scratch[..room]) {
                Ok(0) => failed = true,
                Ok(n) => {
                    t.inbuf.extend_from_slice(&scratch[..n]);
                    if t.inbuf.len() >= 2 {
                        let len = u16::from_be_bytes([t.inbuf[0], t.inbuf[1]]) as usize;
                        if t.inbuf.len() == 2 + len {
                            messages.push(std::mem::take(&mut t.inbuf));
                        }
                    }
                }
                Err(RecvError::WouldBlock) => break,
                Err(_) => failed = true,
            }
        }
        debug_assert!(t.inbuf.len() <= 2 + MAX_MESSAGE);
        let attempt = t.attempt;
        if failed {
            t.failed = true;
        }
        // RFC 7766 §6.2.1.1: a server may send more than one message; the
        // front end takes the first that answers, and ignores reports
        // about an attempt that has ended.
        for m in messages {
            fe.handle_tcp_answer(attempt, &m[2..]);
        }
        if failed {
            debug!("dns: TCP attempt ended before an answer");
            fe.handle_failed(now, attempt);
        }
    }

    /// Close every socket and connection (the daemon is stopping).
    pub(super) fn close_all(&mut self, stack: &mut Stack) {
        for (_, s) in self.by_attempt.drain() {
            match s {
                Socket::Udp(u) => stack.udp_close(u),
                Socket::Tcp(h) => stack.close(h),
            }
        }
        self.udp.clear();
        self.tcp.clear();
    }
}
