//! The SOCKS5 service: a [`SocksServer`] handshake per client, a name
//! lookup when the target is a name, the outbound connection from an
//! ephemeral port of the stack's table, and then a plain [`Relay`].

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use log::debug;

use ephemera::{Instant, RecvError, Stack, TcpHandle, TcpState, UdpHandle};

use super::counters::ServiceCounters;
use super::lookup::{LookupId, LookupResult, Lookups, Waiter};
use super::relay::{Direction, Relay, CHUNK};
use super::session::{connect_any, progress, NoConnection, OutBuf, Pump, SessionId};
use super::socks_udp::UdpAssociation;
use crate::daemon::credentials::Credentials;
use crate::daemon::host::Host;
use crate::daemon::policy::Destinations;
use crate::daemon::socks::{ReplyCode, SocksServer, SocksState, SocksTarget};

/// One SOCKS client, until its reply is out.
#[derive(Debug)]
pub(super) struct SocksSession {
    pub(super) client: TcpHandle,
    pub(super) socks: SocksServer,
    out: OutBuf,
    pub(super) upstream: Option<TcpHandle>,
    /// The lookup of the target's name, while it is outstanding.
    pub(super) lookup: Option<LookupId>,
    /// The client sent FIN during the handshake.
    eof: bool,
    /// The client's address is in `--socks-allow`.
    allowed: bool,
    /// UDP ASSOCIATE: the relay socket, and the client's port if its
    /// request named one.
    udp: Option<(UdpHandle, Option<u16>)>,
}

/// What a SOCKS session's handshake needs from the services: the name
/// lookups, the time, the session's own id (its waiter), the destination
/// rules, and the counters.
pub(super) struct Ctx<'a> {
    pub(super) lookups: &'a mut Lookups,
    pub(super) now: Instant,
    pub(super) sid: SessionId,
    pub(super) destinations: &'a Destinations,
    pub(super) counters: &'a mut ServiceCounters,
    /// The open UDP associations' relay sockets, which a new one joins.
    pub(super) associations: &'a mut HashMap<UdpHandle, SessionId>,
    /// At most this many.
    pub(super) max_associations: usize,
}

impl SocksSession {
    /// A session for client `client`, which `allowed` says may use the
    /// proxy; with `auth`, it must log in first. A client that may not use
    /// it gets reply 02 to its request; with `auth` its login fails
    /// whatever it offers, so outsiders cannot guess passwords here.
    pub(super) fn new(
        client: TcpHandle,
        allowed: bool,
        auth: Option<Arc<Credentials>>,
    ) -> SocksSession {
        let mut socks = SocksServer::new(auth);
        if !allowed {
            socks.refuse_logins();
        }
        SocksSession {
            client,
            allowed,
            socks,
            out: OutBuf::default(),
            upstream: None,
            lookup: None,
            udp: None,
            eof: false,
        }
    }

    /// The relay this session becomes once its success reply is out,
    /// starting with what the client sent early.
    pub(super) fn take_relay(&mut self) -> Option<Relay> {
        if !(self.socks.is_established() && self.out.is_empty()) {
            return None;
        }
        let up = self.upstream?;
        let early = Direction::with_pending(self.socks.take_payload(), self.eof);
        Some(Relay::new(self.client, up, early))
    }

    /// The answer to this session's lookup: connect, or reply why not.
    pub(super) fn resolved(&mut self, stack: &mut Stack, answer: LookupResult) {
        self.lookup = None;
        self.connect(stack, answer);
    }

    /// Connect to the first of `addrs` the stack accepts, or queue the
    /// reply saying why not.
    fn connect(&mut self, stack: &mut Stack, addrs: LookupResult) {
        match addrs {
            // The lookup failed. RFC 1928 has no code for a name that does
            // not resolve; host unreachable is the usual one. getaddrinfo's
            // errors carry no kind of their own, which would make them 01.
            Err(e) => self
                .socks
                .handle_connect_failed(match ReplyCode::from(e.kind()) {
                    ReplyCode::GeneralFailure => ReplyCode::HostUnreachable,
                    code => code,
                }),
            Ok(addrs) => match connect_any(stack, &addrs) {
                Ok((up, _)) => self.upstream = Some(up),
                Err(NoConnection::NoAddress) => {
                    self.socks.handle_connect_failed(ReplyCode::HostUnreachable)
                }
                Err(NoConnection::Refused(_, e)) => {
                    let kind = io::Error::from(e).kind();
                    self.socks.handle_connect_failed(ReplyCode::from(kind));
                }
            },
        }
    }

    /// Refuse the request with reply 02 (RFC 1928: "connection not
    /// allowed by ruleset") if `ip` is a denied destination.
    fn denied(&mut self, ip: IpAddr, ctx: &mut Ctx<'_>) -> bool {
        match ctx.destinations.check(ip) {
            Ok(()) => false,
            Err(d) => {
                debug!("socks CONNECT: {d}");
                ctx.counters.socks_denied_destination += 1;
                self.socks.handle_connect_failed(ReplyCode::NotAllowed);
                true
            }
        }
    }

    /// Start connecting to what the client asked for: at once for an
    /// address, after a lookup for a name (whose answer the destination
    /// rules filter, `Services::resolved`); refuse a client or an address
    /// the rules do not allow, with reply 02, before anything else.
    /// UDP ASSOCIATE (RFC 1928 §7): a relay socket on the address the
    /// client reached, on a port the table picks; the reply names it.
    /// `target` is where the client's datagrams will come from; only its
    /// port is taken (the address is the control connection's).
    fn associate(&mut self, stack: &mut Stack, target: &SocksTarget, ctx: &mut Ctx<'_>) {
        if !self.allowed {
            debug!("socks UDP ASSOCIATE: client not in --socks-allow");
            ctx.counters.socks_denied_client += 1;
            return self.socks.handle_connect_failed(ReplyCode::NotAllowed);
        }
        let port = match target {
            SocksTarget::Addr(a) => a.port(),
            SocksTarget::Domain(_, p) => *p,
        };
        if ctx.associations.len() >= ctx.max_associations {
            debug!(
                "socks UDP ASSOCIATE: {} associations open",
                ctx.max_associations
            );
            ctx.counters.socks_udp_refused += 1;
            return self.socks.handle_connect_failed(ReplyCode::GeneralFailure);
        }
        let Some(local) = stack.local_addr(self.client) else {
            return self.socks.handle_connect_failed(ReplyCode::GeneralFailure);
        };
        match stack.udp_bind(SocketAddr::new(local.ip(), 0)) {
            Ok(u) => {
                ctx.counters.socks_udp_associations += 1;
                ctx.associations.insert(u, ctx.sid);
                self.udp = Some((u, (port != 0).then_some(port)));
                let bound = stack.udp_local_addr(u).unwrap_or(local);
                self.socks.handle_connected(bound);
            }
            Err(e) => {
                debug!("socks UDP ASSOCIATE: no relay socket: {e}");
                self.socks.handle_connect_failed(ReplyCode::GeneralFailure);
            }
        }
    }

    /// Once the UDP ASSOCIATE reply is out: the association.
    pub(super) fn take_association(&mut self, stack: &Stack) -> Option<UdpAssociation> {
        if !(self.socks.is_established() && self.out.is_empty()) {
            return None;
        }
        let (udp, port) = self.udp.take()?;
        let client = stack.peer_addr(self.client)?;
        Some(UdpAssociation::new(self.client, udp, client.ip(), port))
    }

    /// The relay socket of a UDP ASSOCIATE not yet handed over.
    pub(super) fn udp_socket(&self) -> Option<UdpHandle> {
        self.udp.map(|(u, _)| u)
    }

    fn start(&mut self, stack: &mut Stack, target: &SocksTarget, ctx: &mut Ctx<'_>) {
        if !self.allowed {
            debug!("socks CONNECT {target}: client not in --socks-allow");
            ctx.counters.socks_denied_client += 1;
            return self.socks.handle_connect_failed(ReplyCode::NotAllowed);
        }
        let host = match target {
            SocksTarget::Addr(a) => {
                if !self.denied(a.ip(), ctx) {
                    self.connect(stack, Ok(vec![*a]));
                }
                return;
            }
            // A literal sent as a name (curl --socks5-hostname 10.7.0.1)
            // needs no lookup; what is neither cannot resolve.
            SocksTarget::Domain(n, port) => match Host::parse(n) {
                Ok(Host::Ip(ip)) => {
                    if !self.denied(ip, ctx) {
                        self.connect(stack, Ok(vec![(ip, *port).into()]));
                    }
                    return;
                }
                Ok(Host::Name(name)) => (name, *port),
                Err(e) => {
                    debug!("socks CONNECT: {e}");
                    return self.socks.handle_connect_failed(ReplyCode::HostUnreachable);
                }
            },
        };
        // The reply waits for the answer; the session is pumped again
        // when it comes (`Services::resolved`).
        let (name, port) = host;
        match ctx
            .lookups
            .start(ctx.now, &name, port, Waiter::Session(ctx.sid))
        {
            Ok(lookup) => self.lookup = Some(lookup),
            Err(e) => {
                debug!("socks CONNECT {target}: {e}");
                self.socks.handle_connect_failed(ReplyCode::from(e.kind()));
            }
        }
    }

    /// Drive the handshake.
    pub(super) fn pump(
        &mut self,
        stack: &mut Stack,
        scratch: &mut [u8],
        ctx: &mut Ctx<'_>,
    ) -> Pump {
        let mut any = false;
        let end = |stack: &mut Stack, s: &SocksSession| {
            stack.abort(s.client);
            if let Some(up) = s.upstream {
                stack.abort(up);
            }
            if let Some((u, _)) = s.udp {
                stack.udp_close(u);
            }
            Pump::Ended
        };
        loop {
            let socks = &mut self.socks;
            let mut moved = match self
                .out
                .flush(stack, self.client, scratch, |b| socks.poll_output(b))
            {
                Ok(m) => m,
                Err(_) => return end(stack, self),
            };
            if self.socks.wants_input() && !self.eof {
                let n = CHUNK.min(scratch.len());
                match stack.recv(self.client, &mut scratch[..n]) {
                    Ok(0) => {
                        self.eof = true;
                        moved = true;
                        if self.socks.in_handshake() {
                            // The client left mid-handshake.
                            stack.close(self.client);
                            return Pump::Ended;
                        }
                    }
                    Ok(k) => {
                        self.socks.handle_input(&scratch[..k]);
                        if self.socks.take_auth_failure() {
                            if self.allowed {
                                ctx.counters.socks_auth_failed += 1;
                            } else {
                                ctx.counters.socks_denied_client += 1;
                            }
                        }
                        moved = true;
                    }
                    Err(RecvError::WouldBlock) => {}
                    Err(_) => return end(stack, self),
                }
            }
            if let Some(target) = self.socks.poll_target() {
                moved = true;
                if self.socks.is_udp_associate() {
                    self.associate(stack, &target, ctx);
                    debug!("socks UDP ASSOCIATE {target}: {:?}", self.socks.state());
                } else {
                    self.start(stack, &target, ctx);
                    debug!("socks CONNECT {target}: {:?}", self.socks.state());
                }
            }
            if let (Some(up), SocksState::Connecting) = (self.upstream, self.socks.state()) {
                match stack.tcp_state(up) {
                    Some(TcpState::SynSent | TcpState::SynReceived) => {}
                    Some(TcpState::Closed) | None => {
                        let code = match stack.tcp_error(up) {
                            Some(e) => ReplyCode::from(io::Error::from(RecvError::from(e)).kind()),
                            None => ReplyCode::GeneralFailure,
                        };
                        self.socks.handle_connect_failed(code);
                        // The handle stays in the session until it ends, so
                        // its removal from the handle map stays in one place.
                        moved = true;
                    }
                    Some(_) => {
                        if let Some(bound) = stack.local_addr(up) {
                            self.socks.handle_connected(bound);
                            moved = true;
                        }
                    }
                }
            }
            if self.socks.should_close() && self.out.is_empty() {
                stack.close(self.client);
                if let Some(up) = self.upstream {
                    stack.abort(up);
                }
                if let Some((u, _)) = self.udp.take() {
                    stack.udp_close(u);
                }
                return Pump::Ended;
            }
            if self.socks.is_established() && self.out.is_empty() {
                return Pump::Active;
            }
            if !moved {
                return progress(any);
            }
            any = true;
        }
    }
}
