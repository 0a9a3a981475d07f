//! Names resolved on the stack (`--nameserver IP[:PORT]`): the services'
//! lookups asked of the given name servers by the sans-IO
//! [`StubResolver`], over the stack's own UDP (and TCP after a truncated
//! answer), through the same [`Upstream`] driver and query table as the
//! DNS forwarder. Without the flag the host's resolver stays.
//!
//! A lookup asks A, and AAAA too when the stack has IPv6 (each its own
//! query with its own port and ID); its answer is the addresses found,
//! IPv4 first, with the port the lookup asked for. The name servers are
//! each asked twice in turn, as resolv.conf's `attempts:2` does: an
//! attempt that times out (or is refused by ICMP) moves on to the next
//! server, and after the last one back to the first.
//!
//! Bounds: the services' lookup bound (`max_lookups`) is the stub's, and
//! every lookup is answered within (2 × servers + 1) × the attempt
//! timeout, which for one server (9 s) is inside the services' 15 s wait.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;

use ephemera::{Duration, Instant, SeededRng, Stack, TcpHandle, UdpHandle};

use super::lookup::{LookupId, LookupResult};
use super::upstream::Upstream;
use crate::daemon::dns::stub::{Families, StubConfig, StubResolver};
use crate::daemon::dns::table::{TableConfig, TableConfigError};

/// How long one attempt waits for its answer.
pub const ATTEMPT_TIMEOUT_MS: u64 = 3000;

/// Times each name server is asked before a query fails.
const ROUNDS: usize = 2;

/// The services' resolver on the stack. See the [module docs](self).
pub(crate) struct StackResolver {
    stub: StubResolver<LookupId>,
    upstream: Upstream,
    /// The port each lookup's addresses carry.
    ports: HashMap<LookupId, u16>,
    closed: bool,
}

impl fmt::Debug for StackResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackResolver")
            .field("stub", &self.stub)
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl StackResolver {
    /// Ask `servers`, for IPv6 addresses too with `ipv6`, at most
    /// `max_lookups` lookups at once; query IDs from a generator seeded
    /// with `seed` (from the OS without one).
    pub(crate) fn new(
        servers: &[SocketAddr],
        ipv6: bool,
        max_lookups: usize,
        seed: Option<u64>,
    ) -> Result<StackResolver, TableConfigError> {
        let families = if ipv6 { Families::Both } else { Families::Ipv4 };
        let per_lookup = if ipv6 { 2 } else { 1 };
        let rng = match seed {
            Some(s) => SeededRng::new(s),
            None => SeededRng::from_entropy(),
        };
        let config = StubConfig {
            table: TableConfig {
                upstreams: servers.repeat(ROUNDS),
                max_in_flight: max_lookups * per_lookup,
                attempt_timeout: Duration::from_millis(ATTEMPT_TIMEOUT_MS),
            },
            families,
        };
        Ok(StackResolver {
            stub: StubResolver::new(config, Box::new(rng))?,
            upstream: Upstream::default(),
            ports: HashMap::new(),
            closed: false,
        })
    }

    /// Start looking up `host`; its answer's addresses carry `port`.
    pub(crate) fn submit(
        &mut self,
        now: Instant,
        id: LookupId,
        host: &str,
        port: u16,
    ) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::other("the daemon is shutting down"));
        }
        self.stub.lookup(now, id, host)?;
        self.ports.insert(id, port);
        Ok(())
    }

    /// A finished lookup.
    pub(crate) fn poll_answer(&mut self) -> Option<(LookupId, LookupResult)> {
        let (id, answer) = self.stub.poll_answer()?;
        let port = self.ports.remove(&id).unwrap_or(0);
        let answer = answer.map(|ips| ips.into_iter().map(|ip| (ip, port).into()).collect());
        Some((id, answer))
    }

    /// Send what the stub has to send: after `submit` and every `handle_*`.
    pub(crate) fn drive(&mut self, stack: &mut Stack, now: Instant) {
        while let Some(t) = self.stub.poll_transmit() {
            if self.closed {
                continue;
            }
            self.upstream.transmit(stack, now, t, &mut self.stub);
        }
        debug_assert_eq!(self.stub.check_invariants(), Ok(()));
    }

    /// Whether `u` is one of its sockets.
    pub(crate) fn owns_udp(&self, u: UdpHandle) -> bool {
        self.upstream.owns_udp(u)
    }

    /// Whether `h` is one of its connections.
    pub(crate) fn owns_tcp(&self, h: TcpHandle) -> bool {
        self.upstream.owns_tcp(h)
    }

    /// Datagrams on its socket `u`.
    pub(crate) fn handle_udp(
        &mut self,
        stack: &mut Stack,
        now: Instant,
        u: UdpHandle,
        scratch: &mut [u8],
    ) {
        self.upstream
            .handle_udp(stack, now, u, scratch, &mut self.stub);
        self.drive(stack, now);
    }

    /// Progress on its connection `h`.
    pub(crate) fn handle_tcp(
        &mut self,
        stack: &mut Stack,
        now: Instant,
        h: TcpHandle,
        scratch: &mut [u8],
    ) {
        self.upstream
            .handle_tcp(stack, now, h, scratch, &mut self.stub);
        self.drive(stack, now);
    }

    /// Attempts whose time ran out move on.
    pub(crate) fn handle_timeout(&mut self, stack: &mut Stack, now: Instant) {
        if self.stub.poll_at().is_some_and(|at| at <= now) {
            self.stub.handle_timeout(now);
            self.drive(stack, now);
        }
    }

    /// When [`StackResolver::handle_timeout`] next has work.
    pub(crate) fn poll_at(&self) -> Option<Instant> {
        self.stub.poll_at()
    }

    /// Stop: close every socket. Lookups in flight still end, by their
    /// timeouts, but send nothing more.
    pub(crate) fn shutdown(&mut self, stack: &mut Stack) {
        self.closed = true;
        self.upstream.close_all(stack);
    }

    /// The counters by name.
    pub(crate) fn counters(&self) -> Vec<(String, u64)> {
        let s = self.stub.counters();
        let mut out = vec![
            ("dns_resolver_lookups".to_string(), s.lookups),
            ("dns_resolver_lookups_refused".to_string(), s.refused),
            ("dns_resolver_invalid_names".to_string(), s.invalid),
        ];
        out.extend(
            self.stub
                .table_counters()
                .iter()
                .into_iter()
                .map(|(k, v)| (format!("dns_resolver_{k}"), v)),
        );
        out
    }
}
