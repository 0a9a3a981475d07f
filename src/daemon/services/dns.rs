//! The DNS forwarder service (`--dns PORT=UPSTREAM[:PORT]`): clients'
//! queries on a UDP port of the stack, asked of the upstream name servers
//! in order from the stack's own ports.
//!
//! The rules are the sans-IO [`Forwarder`]'s (RFC 5452: every attempt from
//! a fresh connected UDP socket on a port the table picks for the
//! upstream, with a fresh random ID; an answer accepted only from the
//! upstream's address and port with the attempt's ID and question;
//! timeouts move on to the next upstream; TC retried over TCP). This
//! module is its driver: it reads the clients' datagrams, carries out the
//! forwarder's upstream work through [`Upstream`], and sends the replies
//! from the socket the query came to.
//!
//! Bounds: the forwarder's (`max_in_flight` queries, each with at most
//! one upstream socket or connection open). A reply the stack cannot take
//! (send queue full) is dropped and counted (`dns_forward_reply_dropped`).

use std::fmt;
use std::net::SocketAddr;

use log::debug;

use ephemera::{Duration, Instant, RecvError, SeededRng, Stack, TcpHandle, UdpHandle};

use super::upstream::Upstream;
use crate::daemon::dns::forwarder::{Forwarder, ForwarderOutput};
use crate::daemon::dns::table::{TableConfig, TableConfigError};

/// `--dns PORT=UPSTREAM[:PORT]`: the port clients query, and the name
/// servers asked, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsForwardConfig {
    /// The stack's UDP port clients send queries to.
    pub port: u16,
    /// Upstream name servers, asked in this order.
    pub upstreams: Vec<SocketAddr>,
    /// Most queries in flight; more get REFUSED.
    pub max_in_flight: usize,
    /// How long one upstream has to answer before the next is asked.
    pub attempt_timeout: Duration,
}

/// Default [`DnsForwardConfig::max_in_flight`]: each query in flight holds
/// a UDP socket of the stack (or a TCP connection) while it waits.
pub const DNS_MAX_IN_FLIGHT: usize = 128;

/// Default [`DnsForwardConfig::attempt_timeout`], in milliseconds: a
/// resolver one hop away answers in well under that, and the client
/// (`dig`: 5 s) still has time to hear the next upstream.
pub const DNS_ATTEMPT_TIMEOUT_MS: u64 = 2000;

impl DnsForwardConfig {
    /// Forward from `port` to `upstreams` with the default limits.
    pub fn new(port: u16, upstreams: Vec<SocketAddr>) -> DnsForwardConfig {
        DnsForwardConfig {
            port,
            upstreams,
            max_in_flight: DNS_MAX_IN_FLIGHT,
            attempt_timeout: Duration::from_millis(DNS_ATTEMPT_TIMEOUT_MS),
        }
    }
}

/// The running forwarder. See the [module docs](self).
pub(super) struct DnsForward {
    fwd: Forwarder,
    /// The sockets clients query (one per address family).
    sockets: Vec<UdpHandle>,
    upstream: Upstream,
    /// Replies dropped because the client socket's send queue was full.
    reply_dropped: u64,
    /// Stopped: nothing more is read or sent.
    closed: bool,
}

impl fmt::Debug for DnsForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsForward")
            .field("fwd", &self.fwd)
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl DnsForward {
    /// A forwarder for `cfg`, its query IDs drawn from a generator seeded
    /// with `seed` (from the OS without one). It answers on the sockets
    /// [`DnsForward::set_sockets`] gives it.
    pub(super) fn new(cfg: &DnsForwardConfig, seed: Option<u64>) -> Result<Self, TableConfigError> {
        let rng = match seed {
            Some(s) => SeededRng::new(s),
            None => SeededRng::from_entropy(),
        };
        let table = TableConfig {
            upstreams: cfg.upstreams.clone(),
            max_in_flight: cfg.max_in_flight,
            attempt_timeout: cfg.attempt_timeout,
        };
        Ok(DnsForward {
            fwd: Forwarder::new(table, Box::new(rng))?,
            sockets: Vec::new(),
            upstream: Upstream::default(),
            reply_dropped: 0,
            closed: false,
        })
    }

    /// The sockets clients query, bound for the forwarder.
    pub(super) fn set_sockets(&mut self, sockets: Vec<UdpHandle>) {
        self.sockets = sockets;
    }

    /// Queries from clients on our socket `u`.
    pub(super) fn handle_queries(
        &mut self,
        stack: &mut Stack,
        now: Instant,
        u: UdpHandle,
        scratch: &mut [u8],
    ) {
        let Some(server) = stack.udp_local_addr(u) else {
            return;
        };
        loop {
            match stack.udp_recv_from(u, scratch) {
                Ok((n, client)) if !self.closed => {
                    self.fwd.handle_query(now, server, client, &scratch[..n]);
                    // Take the work of each query at once, so a burst never
                    // queues more than the forwarder's bound.
                    self.drain(stack, now, Some(u));
                }
                Ok(_) => {}
                // A reply we sent drew a port unreachable: the client
                // has gone, which is its business.
                Err(RecvError::ConnectionRefused) => {}
                Err(_) => break,
            }
        }
    }

    /// Whether `u` is one of the upstream sockets.
    pub(super) fn owns_udp(&self, u: UdpHandle) -> bool {
        self.upstream.owns_udp(u)
    }

    /// Whether `h` is one of the upstream connections.
    pub(super) fn owns_tcp(&self, h: TcpHandle) -> bool {
        self.upstream.owns_tcp(h)
    }

    /// Datagrams on upstream socket `u`.
    pub(super) fn handle_udp(
        &mut self,
        stack: &mut Stack,
        now: Instant,
        u: UdpHandle,
        scratch: &mut [u8],
    ) {
        self.upstream
            .handle_udp(stack, now, u, scratch, &mut self.fwd);
        self.drain(stack, now, None);
    }

    /// Progress on upstream connection `h`.
    pub(super) fn handle_tcp(
        &mut self,
        stack: &mut Stack,
        now: Instant,
        h: TcpHandle,
        scratch: &mut [u8],
    ) {
        self.upstream
            .handle_tcp(stack, now, h, scratch, &mut self.fwd);
        self.drain(stack, now, None);
    }

    /// Attempts whose time ran out move on.
    pub(super) fn handle_timeout(&mut self, stack: &mut Stack, now: Instant) {
        if self.closed {
            return;
        }
        if self.fwd.poll_at().is_some_and(|at| at <= now) {
            self.fwd.handle_timeout(now);
            self.drain(stack, now, None);
        }
    }

    /// When [`DnsForward::handle_timeout`] next has work.
    pub(super) fn poll_at(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        self.fwd.poll_at()
    }

    /// Stop: close every upstream socket; queries in flight get no reply.
    pub(super) fn shutdown(&mut self, stack: &mut Stack) {
        self.closed = true;
        self.upstream.close_all(stack);
    }

    /// The counters by name: the forwarder's own, then its table's.
    pub(super) fn counters(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .fwd
            .counters()
            .iter()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        out.extend(
            self.fwd
                .table_counters()
                .iter()
                .into_iter()
                .map(|(k, v)| (format!("dns_forward_{k}"), v)),
        );
        out.push(("dns_forward_reply_dropped".into(), self.reply_dropped));
        out
    }

    /// Carry out what the forwarder has to do: upstream work through the
    /// sockets, replies to clients from `client_socket` (the socket their
    /// query came to; the replies of queries that finished later find
    /// theirs by its address).
    fn drain(&mut self, stack: &mut Stack, now: Instant, client_socket: Option<UdpHandle>) {
        while let Some(out) = self.fwd.poll_output() {
            match out {
                ForwarderOutput::Transmit(t) => {
                    if self.closed {
                        continue;
                    }
                    self.upstream.transmit(stack, now, t, &mut self.fwd);
                }
                ForwarderOutput::Reply { from, to, message } => {
                    let Some(u) = client_socket
                        .filter(|&u| stack.udp_local_addr(u) == Some(from))
                        .or_else(|| self.socket_at(stack, from))
                    else {
                        continue;
                    };
                    if let Err(e) = stack.udp_send_to(u, &message, to) {
                        debug!("dns: reply to {to} dropped: {e}");
                        self.reply_dropped += 1;
                    }
                }
            }
        }
        debug_assert_eq!(self.fwd.check_invariants(), Ok(()));
    }

    /// The client socket bound at `addr`.
    fn socket_at(&self, stack: &Stack, addr: SocketAddr) -> Option<UdpHandle> {
        self.sockets
            .iter()
            .copied()
            .find(|&u| stack.udp_local_addr(u) == Some(addr))
    }
}
