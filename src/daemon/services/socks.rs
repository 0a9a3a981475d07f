//! The SOCKS5 service: a [`SocksServer`] handshake per client, a name
//! lookup when the target is a name, the outbound connection from an
//! ephemeral port of the stack's table, and then a plain [`Relay`].

use std::io;

use log::debug;

use ephemera::{Instant, RecvError, Stack, TcpHandle, TcpState};

use super::lookup::{LookupId, LookupResult, Lookups, Waiter};
use super::relay::{Direction, Relay, CHUNK};
use super::session::{connect_any, progress, NoConnection, OutBuf, Pump, SessionId};
use crate::daemon::host::Host;
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
}

/// Where a SOCKS session's name lookups go: the lookups, the time, and
/// the session's own id (its waiter).
pub(super) struct Dns<'a> {
    pub(super) lookups: &'a mut Lookups,
    pub(super) now: Instant,
    pub(super) sid: SessionId,
}

impl SocksSession {
    pub(super) fn new(client: TcpHandle) -> SocksSession {
        SocksSession {
            client,
            socks: SocksServer::new(),
            out: OutBuf::default(),
            upstream: None,
            lookup: None,
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

    /// Start connecting to what the client asked for: at once for an
    /// address, after a lookup for a name.
    fn start(&mut self, stack: &mut Stack, target: &SocksTarget, dns: &mut Dns<'_>) {
        let host = match target {
            SocksTarget::Addr(a) => return self.connect(stack, Ok(vec![*a])),
            // A literal sent as a name (curl --socks5-hostname 10.7.0.1)
            // needs no lookup; what is neither cannot resolve.
            SocksTarget::Domain(n, port) => match Host::parse(n) {
                Ok(Host::Ip(ip)) => {
                    return self.connect(stack, Ok(vec![(ip, *port).into()]));
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
        match dns
            .lookups
            .start(dns.now, &name, port, Waiter::Session(dns.sid))
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
        dns: &mut Dns<'_>,
    ) -> Pump {
        let mut any = false;
        let end = |stack: &mut Stack, s: &SocksSession| {
            stack.abort(s.client);
            if let Some(up) = s.upstream {
                stack.abort(up);
            }
            Pump::Ended
        };
        loop {
            let socks = &mut self.socks;
            let mut moved = match self.out.flush(stack, self.client, |b| socks.poll_output(b)) {
                Ok(m) => m,
                Err(_) => return end(stack, self),
            };
            if self.socks.wants_input() && !self.eof {
                let n = CHUNK.min(scratch.len());
                match stack.recv(self.client, &mut scratch[..n]) {
                    Ok(0) => {
                        self.eof = true;
                        moved = true;
                        if matches!(
                            self.socks.state(),
                            SocksState::Greeting | SocksState::Request
                        ) {
                            // The client left mid-handshake.
                            stack.close(self.client);
                            return Pump::Ended;
                        }
                    }
                    Ok(k) => {
                        self.socks.handle_input(&scratch[..k]);
                        moved = true;
                    }
                    Err(RecvError::WouldBlock) => {}
                    Err(_) => return end(stack, self),
                }
            }
            if let Some(target) = self.socks.poll_target() {
                moved = true;
                self.start(stack, &target, dns);
                debug!("socks CONNECT {target}: {:?}", self.socks.state());
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
