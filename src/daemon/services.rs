//! The built-in services, driven over ephemera's own [`Stack`]: HTTP, echo
//! and discard (TCP and UDP), SOCKS5, port forwards, and the `fetch` client.
//!
//! Sans-IO like the stack: no fds and no clock. The event loop hands every
//! [`Event`] to [`Services::handle_event`]; answers for control clients go
//! through a [`ControlSink`] (the real control socket, or a vector in tests).
//! The protocol logic lives in `http.rs` and `socks.rs`; this module only
//! moves bytes between them and the stack.
//!
//! Every connection is in the `conns` map under its handle. Bytes taken from
//! a protocol engine but not yet accepted by the stack wait in that
//! connection's `out` buffer, so nothing is lost to a full send buffer. A
//! relay (SOCKS, forward) is two map entries pointing at each other.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use crate::daemon::control::{format_ports_table, ClientId, PortEntry, Response};
use crate::daemon::http::{self, ResponseParser, ServerConn, ServerContext, Url};
use crate::daemon::socks::{ReplyCode, SocksServer, SocksTarget};
use crate::error::{ConnError, RecvError, SendError};
use crate::port_table::Protocol;
use crate::stack::{Event, ListenerHandle, Stack, TcpHandle, TcpState, UdpHandle};

/// Read and write chunk size.
const CHUNK: usize = 16 * 1024;
/// Relay bytes buffered per direction before reading pauses.
const RELAY_BUFFER: usize = 64 * 1024;
/// Fetch body bytes queued to a control client before reading pauses.
const FETCH_BACKLOG: usize = 1024 * 1024;

/// Where answers to control clients go.
pub trait ControlSink {
    /// Queue a response line; false if the client is gone.
    fn reply(&mut self, id: ClientId, response: &Response) -> bool;
    /// Queue raw body bytes; false if the client is gone.
    fn send_body(&mut self, id: ClientId, data: &[u8]) -> bool;
    /// Bytes queued and not yet taken by the client; `None` if it is gone.
    fn pending_output(&self, id: ClientId) -> Option<usize>;
    /// Close the client once its output is sent.
    fn finish(&mut self, id: ClientId);
}

impl ControlSink for crate::daemon::control::ControlServer {
    fn reply(&mut self, id: ClientId, response: &Response) -> bool {
        crate::daemon::control::ControlServer::reply(self, id, response)
    }
    fn send_body(&mut self, id: ClientId, data: &[u8]) -> bool {
        crate::daemon::control::ControlServer::send_body(self, id, data)
    }
    fn pending_output(&self, id: ClientId) -> Option<usize> {
        crate::daemon::control::ControlServer::pending_output(self, id)
    }
    fn finish(&mut self, id: ClientId) {
        crate::daemon::control::ControlServer::finish(self, id)
    }
}

/// A forward target, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSpec {
    /// The stack's listening port.
    pub listen_port: u16,
    /// Host name or address literal.
    pub host: String,
    /// Target port.
    pub port: u16,
}

/// Which services to run.
#[derive(Debug, Clone, Default)]
pub struct ServiceSpec {
    /// HTTP port.
    pub http: Option<u16>,
    /// Echo port (TCP and UDP).
    pub echo: Option<u16>,
    /// Discard port (TCP and UDP).
    pub discard: Option<u16>,
    /// SOCKS5 port.
    pub socks: Option<u16>,
    /// Port forwards.
    pub forwards: Vec<ForwardSpec>,
    /// Listen backlog (`None`: the stack's default).
    pub backlog: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Http,
    Echo,
    Discard,
    Socks,
    Forward(usize),
}

#[derive(Debug)]
struct Fetch {
    client: ClientId,
    request: Vec<u8>,
    sent: usize,
    parser: ResponseParser,
    started: bool,
    bytes: u64,
}

#[derive(Debug)]
enum Kind {
    Http(Box<ServerConn>),
    Echo,
    Discard,
    /// A SOCKS client during its handshake; `outbound` once dialing.
    Socks {
        server: Box<SocksServer>,
        outbound: Option<TcpHandle>,
    },
    /// An outbound leg being connected for `client`.
    Dialing {
        client: TcpHandle,
    },
    /// One side of a relay: `out` holds bytes for this side, read from the peer.
    Relay {
        peer: TcpHandle,
        eof_forwarded: bool,
    },
    Fetch(Box<Fetch>),
}

#[derive(Debug)]
struct Conn {
    kind: Kind,
    /// Bytes to send on this connection that the stack has not taken yet.
    out: Vec<u8>,
    /// We called `shutdown` (sent FIN) on this connection.
    fin_sent: bool,
    /// The peer sent FIN (echo: close once `out` is drained).
    peer_eof: bool,
}

impl Conn {
    fn new(kind: Kind) -> Conn {
        Conn {
            kind,
            out: Vec::new(),
            fin_sent: false,
            peer_eof: false,
        }
    }
}

/// All service sockets and connections of the daemon.
#[derive(Debug, Default)]
pub struct Services {
    listeners: HashMap<ListenerHandle, Service>,
    udp: HashMap<UdpHandle, Service>,
    conns: HashMap<TcpHandle, Conn>,
    forwards: Vec<ForwardSpec>,
    closing: bool,
}

/// The stack's sockets as control-protocol rows.
pub fn port_entries(stack: &Stack) -> Vec<PortEntry> {
    stack
        .snapshot()
        .into_iter()
        .map(|s| PortEntry {
            proto: match s.proto {
                Protocol::Tcp => "tcp".into(),
                Protocol::Udp => "udp".into(),
            },
            state: s.state,
            local: s.local,
            remote: s.remote,
            recv_q: s.recv_queue,
            send_q: s.send_queue,
            age_ms: s.age.as_millis().min(u128::from(u64::MAX)) as u64,
        })
        .collect()
}

/// The stack's counters by name.
pub fn counter_map(stack: &Stack) -> BTreeMap<String, u64> {
    stack
        .counters()
        .iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// Resolve `host:port` to an address of a family the stack has (`v4`,
/// `v6`). Literals need no lookup; names use the host's resolver.
pub fn resolve(host: &str, port: u16, v4: bool, v6: bool) -> Option<SocketAddr> {
    let fits = |a: &SocketAddr| (a.is_ipv4() && v4) || (a.is_ipv6() && v6);
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port)).filter(fits);
    }
    (host, port).to_socket_addrs().ok()?.find(fits)
}

fn reply_code(e: ConnError) -> ReplyCode {
    match e {
        ConnError::Refused => ReplyCode::ConnectionRefused,
        ConnError::TimedOut => ReplyCode::HostUnreachable,
        ConnError::Reset => ReplyCode::GeneralFailure,
    }
}

impl Services {
    /// Bind every configured service on all of the stack's families
    /// (`v4`, `v6`). A port already taken is an error naming it.
    pub fn start(
        stack: &mut Stack,
        spec: &ServiceSpec,
        v4: bool,
        v6: bool,
    ) -> Result<Services, String> {
        let mut s = Services {
            forwards: spec.forwards.clone(),
            ..Default::default()
        };
        let mut wild = Vec::new();
        if v4 {
            wild.push(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        }
        if v6 {
            wild.push(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        }
        let mut tcp: Vec<(u16, Service)> = Vec::new();
        let mut udp: Vec<(u16, Service)> = Vec::new();
        if let Some(p) = spec.http {
            tcp.push((p, Service::Http));
        }
        if let Some(p) = spec.echo {
            tcp.push((p, Service::Echo));
            udp.push((p, Service::Echo));
        }
        if let Some(p) = spec.discard {
            tcp.push((p, Service::Discard));
            udp.push((p, Service::Discard));
        }
        if let Some(p) = spec.socks {
            tcp.push((p, Service::Socks));
        }
        for (i, f) in spec.forwards.iter().enumerate() {
            tcp.push((f.listen_port, Service::Forward(i)));
        }
        for &ip in &wild {
            for &(port, svc) in &tcp {
                let l = stack
                    .listen(SocketAddr::new(ip, port), spec.backlog)
                    .map_err(|e| format!("cannot listen on TCP port {port}: {e}"))?;
                s.listeners.insert(l, svc);
            }
            for &(port, svc) in &udp {
                let u = stack
                    .udp_bind(SocketAddr::new(ip, port))
                    .map_err(|e| format!("cannot bind UDP port {port}: {e}"))?;
                s.udp.insert(u, svc);
            }
        }
        Ok(s)
    }

    /// Number of live TCP connections the services hold.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Act on one stack event.
    pub fn handle_event(&mut self, stack: &mut Stack, event: Event, ctl: &mut dyn ControlSink) {
        match event {
            Event::Incoming(l) => self.accept_all(stack, l, ctl),
            Event::Tcp(h) => self.drive(stack, h, ctl),
            Event::Udp(u) => self.udp(stack, u),
        }
    }

    fn accept_all(&mut self, stack: &mut Stack, l: ListenerHandle, ctl: &mut dyn ControlSink) {
        let Some(&svc) = self.listeners.get(&l) else {
            return;
        };
        while let Ok(h) = stack.accept(l) {
            log::debug!(
                "{svc:?}: accepted {} -> {}",
                stack
                    .peer_addr(h)
                    .map_or_else(String::new, |a| a.to_string()),
                stack
                    .local_addr(h)
                    .map_or_else(String::new, |a| a.to_string())
            );
            let kind = match svc {
                Service::Http => Kind::Http(Box::default()),
                Service::Echo => Kind::Echo,
                Service::Discard => Kind::Discard,
                Service::Socks => Kind::Socks {
                    server: Box::default(),
                    outbound: None,
                },
                Service::Forward(i) => {
                    let f = &self.forwards[i];
                    let v4 = stack.local_addr(h).is_some_and(|a| a.is_ipv4());
                    let target = resolve(&f.host, f.port, true, true)
                        .filter(|a| a.is_ipv4() == v4)
                        .or_else(|| resolve(&f.host, f.port, true, true));
                    match target.map(|t| stack.connect(t)) {
                        Some(Ok(out)) => {
                            self.conns
                                .insert(out, Conn::new(Kind::Dialing { client: h }));
                            Kind::Relay {
                                peer: out,
                                eof_forwarded: false,
                            }
                        }
                        _ => {
                            log::debug!("forward to {}:{} failed at once", f.host, f.port);
                            stack.abort(h);
                            continue;
                        }
                    }
                }
            };
            self.conns.insert(h, Conn::new(kind));
            self.drive(stack, h, ctl);
        }
    }

    fn udp(&mut self, stack: &mut Stack, u: UdpHandle) {
        let Some(&svc) = self.udp.get(&u) else { return };
        let mut buf = vec![0u8; 65536];
        loop {
            match stack.udp_recv_from(u, &mut buf) {
                Ok((n, from)) => {
                    if svc == Service::Echo {
                        // A full send buffer drops the echo, as UDP may.
                        let _ = stack.udp_send_to(u, &buf[..n], from);
                    }
                }
                Err(RecvError::WouldBlock) => return,
                // An ICMP error for an earlier echo: nothing to do.
                Err(_) => continue,
            }
        }
    }

    /// Flush `conn.out` into the stack. False if the connection is broken.
    fn flush(stack: &mut Stack, h: TcpHandle, out: &mut Vec<u8>) -> bool {
        while !out.is_empty() {
            match stack.send(h, out) {
                Ok(n) => {
                    out.drain(..n);
                }
                Err(SendError::WouldBlock) => return true,
                Err(_) => return false,
            }
        }
        true
    }

    /// Read up to `limit` bytes. `Ok(None)`: nothing now; `Ok(Some(empty))`: EOF.
    fn read(stack: &mut Stack, h: TcpHandle, limit: usize) -> Result<Option<Vec<u8>>, RecvError> {
        let mut buf = vec![0u8; limit.clamp(1, CHUNK)];
        match stack.recv(h, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Ok(Some(buf))
            }
            Err(RecvError::WouldBlock) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn drop_conn(&mut self, stack: &mut Stack, h: TcpHandle, graceful: bool) {
        if self.conns.remove(&h).is_some() {
            if graceful {
                stack.close(h);
            } else {
                stack.abort(h);
            }
        }
    }

    /// Move bytes for connection `h` (and its relay peer) as far as they go.
    fn drive(&mut self, stack: &mut Stack, h: TcpHandle, ctl: &mut dyn ControlSink) {
        let Some(conn) = self.conns.get(&h) else {
            return;
        };
        match conn.kind {
            Kind::Http(_) => self.drive_http(stack, h),
            Kind::Echo | Kind::Discard => self.drive_echo(stack, h),
            Kind::Socks { .. } => self.drive_socks(stack, h),
            Kind::Dialing { client } => self.drive_dialing(stack, h, client),
            Kind::Relay { peer, .. } => self.drive_relay(stack, h, peer),
            Kind::Fetch(_) => self.drive_fetch(stack, h, ctl),
        }
    }

    fn drive_http(&mut self, stack: &mut Stack, h: TcpHandle) {
        let (Some(local), Some(remote)) = (stack.local_addr(h), stack.peer_addr(h)) else {
            self.conns.remove(&h);
            return;
        };
        let Some(mut conn) = self.conns.remove(&h) else {
            return;
        };
        let Kind::Http(server) = &mut conn.kind else {
            return;
        };
        let mut broken = false;
        loop {
            if !Self::flush(stack, h, &mut conn.out) {
                broken = true;
                break;
            }
            let mut progressed = false;
            if conn.out.is_empty() && server.has_output() {
                let mut buf = vec![0u8; CHUNK];
                let n = server.poll_output(&mut buf);
                buf.truncate(n);
                conn.out = buf;
                progressed = n > 0;
            }
            if server.wants_input() {
                match Self::read(stack, h, CHUNK) {
                    Ok(Some(data)) if data.is_empty() => server.handle_eof(),
                    Ok(Some(data)) => {
                        let table = format_ports_table(&port_entries(stack));
                        let ctx = ServerContext {
                            local,
                            remote,
                            port_table: &table,
                        };
                        server.handle_input(&data, &ctx);
                        progressed = true;
                    }
                    Ok(None) => {}
                    Err(_) => {
                        broken = true;
                        break;
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        if broken {
            stack.abort(h);
        } else if server.should_close() && conn.out.is_empty() {
            stack.close(h);
        } else {
            self.conns.insert(h, conn);
        }
    }

    fn drive_echo(&mut self, stack: &mut Stack, h: TcpHandle) {
        let Some(mut conn) = self.conns.remove(&h) else {
            return;
        };
        let echo = matches!(conn.kind, Kind::Echo);
        loop {
            if !Self::flush(stack, h, &mut conn.out) {
                stack.abort(h);
                return;
            }
            if conn.peer_eof || (echo && conn.out.len() >= RELAY_BUFFER) {
                break;
            }
            match Self::read(stack, h, CHUNK) {
                Ok(Some(d)) if d.is_empty() => conn.peer_eof = true,
                Ok(Some(d)) => {
                    if echo {
                        conn.out.extend_from_slice(&d);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    stack.abort(h);
                    return;
                }
            }
        }
        if conn.peer_eof && conn.out.is_empty() {
            stack.close(h);
        } else {
            self.conns.insert(h, conn);
        }
    }

    fn drive_socks(&mut self, stack: &mut Stack, h: TcpHandle) {
        let Some(mut conn) = self.conns.remove(&h) else {
            return;
        };
        let Kind::Socks { server, outbound } = &mut conn.kind else {
            return;
        };
        loop {
            if !Self::flush(stack, h, &mut conn.out) {
                if let Some(o) = outbound.take() {
                    self.drop_conn(stack, o, false);
                }
                stack.abort(h);
                return;
            }
            if conn.out.is_empty() && server.has_output() {
                let mut buf = vec![0u8; 512];
                let n = server.poll_output(&mut buf);
                buf.truncate(n);
                conn.out = buf;
                continue;
            }
            if !server.wants_input() {
                break;
            }
            match Self::read(stack, h, CHUNK) {
                Ok(Some(d)) if d.is_empty() => {
                    // The client gave up during the handshake.
                    if let Some(o) = outbound.take() {
                        self.drop_conn(stack, o, false);
                    }
                    stack.close(h);
                    return;
                }
                Ok(Some(d)) => server.handle_input(&d),
                Ok(None) => break,
                Err(_) => {
                    if let Some(o) = outbound.take() {
                        self.drop_conn(stack, o, false);
                    }
                    stack.abort(h);
                    return;
                }
            }
            if let Some(target) = server.poll_target() {
                let v4 = stack.local_addr(h).is_some_and(|a| a.is_ipv4());
                let addr = match &target {
                    SocksTarget::Addr(a) => Some(*a),
                    SocksTarget::Domain(name, port) => resolve(name, *port, true, true)
                        .filter(|a| a.is_ipv4() == v4)
                        .or_else(|| resolve(name, *port, true, true)),
                };
                match addr.map(|a| stack.connect(a)) {
                    Some(Ok(o)) => {
                        log::debug!(
                            "socks: {} -> {target}",
                            stack
                                .peer_addr(h)
                                .map_or_else(String::new, |a| a.to_string())
                        );
                        self.conns.insert(o, Conn::new(Kind::Dialing { client: h }));
                        *outbound = Some(o);
                    }
                    Some(Err(e)) => server
                        .handle_connect_failed(ReplyCode::from(std::io::Error::from(e).kind())),
                    None => server.handle_connect_failed(ReplyCode::HostUnreachable),
                }
            }
        }
        if server.should_close() && conn.out.is_empty() {
            stack.close(h);
            return;
        }
        self.conns.insert(h, conn);
    }

    fn drive_dialing(&mut self, stack: &mut Stack, out: TcpHandle, client: TcpHandle) {
        let state = stack.tcp_state(out);
        let error = stack.tcp_error(out);
        let up = matches!(
            state,
            Some(TcpState::Established) | Some(TcpState::CloseWait)
        );
        if !up && error.is_none() && !matches!(state, None | Some(TcpState::Closed)) {
            return; // Still connecting.
        }
        let Some(mut client_conn) = self.conns.remove(&client) else {
            // The client left while we dialed.
            self.drop_conn(stack, out, false);
            return;
        };
        if !up {
            log::debug!("dial failed: {error:?}");
            self.conns.remove(&out);
            stack.abort(out);
            match &mut client_conn.kind {
                Kind::Socks { server, .. } => {
                    server
                        .handle_connect_failed(error.map_or(ReplyCode::GeneralFailure, reply_code));
                    self.conns.insert(client, client_conn);
                    self.drive_socks(stack, client);
                }
                _ => stack.abort(client),
            }
            return;
        }
        // Connected: both sides become a relay. For SOCKS, the success reply
        // goes to the client ahead of anything the target sends.
        let mut to_client = Vec::new();
        let mut to_target = Vec::new();
        if let Kind::Socks { server, .. } = &mut client_conn.kind {
            if let Some(bound) = stack.local_addr(out) {
                server.handle_connected(bound);
            }
            let mut buf = vec![0u8; 512];
            loop {
                let n = server.poll_output(&mut buf);
                if n == 0 {
                    break;
                }
                to_client.extend_from_slice(&buf[..n]);
            }
            to_target = server.take_payload();
        }
        client_conn.out.extend(to_client);
        client_conn.kind = Kind::Relay {
            peer: out,
            eof_forwarded: false,
        };
        self.conns.insert(client, client_conn);
        self.conns.insert(
            out,
            Conn {
                kind: Kind::Relay {
                    peer: client,
                    eof_forwarded: false,
                },
                out: to_target,
                fin_sent: false,
                peer_eof: false,
            },
        );
        self.drive_relay(stack, client, out);
    }

    /// Pump both directions of a relay. `conn.out` of each side holds bytes
    /// read from the other side.
    fn drive_relay(&mut self, stack: &mut Stack, a: TcpHandle, b: TcpHandle) {
        if matches!(
            self.conns.get(&b).map(|c| &c.kind),
            Some(Kind::Dialing { .. })
        ) {
            // The outbound leg is not up yet; its own event will start us.
            return;
        }
        let (Some(mut ca), Some(mut cb)) = (self.conns.remove(&a), self.conns.remove(&b)) else {
            self.drop_conn(stack, a, false);
            self.drop_conn(stack, b, false);
            return;
        };
        let ok =
            Self::pump(stack, a, &mut ca, b, &mut cb) && Self::pump(stack, b, &mut cb, a, &mut ca);
        if !ok {
            stack.abort(a);
            stack.abort(b);
            return;
        }
        let done = |c: &Conn| {
            matches!(
                c.kind,
                Kind::Relay {
                    eof_forwarded: true,
                    ..
                }
            ) && c.out.is_empty()
                && c.fin_sent
        };
        if done(&ca) && done(&cb) {
            stack.close(a);
            stack.close(b);
            return;
        }
        self.conns.insert(a, ca);
        self.conns.insert(b, cb);
    }

    /// Read from `from` into `to.out`, write `to.out` into `to_h`; forward
    /// EOF as a FIN once everything before it is written. False on error.
    fn pump(
        stack: &mut Stack,
        from_h: TcpHandle,
        from: &mut Conn,
        to_h: TcpHandle,
        to: &mut Conn,
    ) -> bool {
        loop {
            if !Self::flush(stack, to_h, &mut to.out) {
                return false;
            }
            let Kind::Relay { eof_forwarded, .. } = &mut from.kind else {
                return false;
            };
            if *eof_forwarded || to.out.len() >= RELAY_BUFFER {
                break;
            }
            match Self::read(stack, from_h, RELAY_BUFFER - to.out.len()) {
                Ok(Some(d)) if d.is_empty() => {
                    *eof_forwarded = true;
                    break;
                }
                Ok(Some(d)) => to.out.extend_from_slice(&d),
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        let Kind::Relay { eof_forwarded, .. } = from.kind else {
            return false;
        };
        if eof_forwarded && to.out.is_empty() && !to.fin_sent {
            to.fin_sent = true;
            if stack.shutdown(to_h).is_err() {
                return false;
            }
        }
        true
    }

    /// Start `ephemera fetch`: connect to the URL's host from an ephemeral
    /// port of the stack's own table. Errors go to the client at once.
    pub fn start_fetch(
        &mut self,
        stack: &mut Stack,
        client: ClientId,
        url: &str,
        ctl: &mut dyn ControlSink,
        v4: bool,
        v6: bool,
    ) {
        let fail = |ctl: &mut dyn ControlSink, message: String| {
            ctl.reply(client, &Response::Error { message });
            ctl.finish(client);
        };
        if self.closing {
            return fail(ctl, "the daemon is shutting down".into());
        }
        let url = match Url::parse(url) {
            Ok(u) => u,
            Err(e) => return fail(ctl, e.to_string()),
        };
        let host = match &url.host {
            http::Host::Ip(ip) => ip.to_string(),
            http::Host::Name(n) => n.clone(),
        };
        let Some(remote) = resolve(&host, url.port, v4, v6) else {
            return fail(
                ctl,
                format!("cannot resolve {host} to an address the stack can reach"),
            );
        };
        match stack.connect(remote) {
            Ok(h) => {
                log::debug!(
                    "fetch {url} from {}",
                    stack
                        .local_addr(h)
                        .map_or_else(String::new, |a| a.to_string())
                );
                let fetch = Fetch {
                    client,
                    request: url.request(),
                    sent: 0,
                    parser: ResponseParser::new(),
                    started: false,
                    bytes: 0,
                };
                self.conns
                    .insert(h, Conn::new(Kind::Fetch(Box::new(fetch))));
            }
            Err(e) => fail(ctl, format!("connect to {remote}: {e}")),
        }
    }

    /// Resume fetches paused because their control client was slow.
    pub fn resume(&mut self, stack: &mut Stack, ctl: &mut dyn ControlSink) {
        let fetches: Vec<TcpHandle> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.kind, Kind::Fetch(_)))
            .map(|(h, _)| *h)
            .collect();
        for h in fetches {
            self.drive_fetch(stack, h, ctl);
        }
    }

    fn drive_fetch(&mut self, stack: &mut Stack, h: TcpHandle, ctl: &mut dyn ControlSink) {
        let Some(mut conn) = self.conns.remove(&h) else {
            return;
        };
        let Kind::Fetch(f) = &mut conn.kind else {
            return;
        };
        let fail = |ctl: &mut dyn ControlSink, stack: &mut Stack, message: String| {
            ctl.reply(f.client, &Response::Error { message });
            ctl.finish(f.client);
            stack.abort(h);
        };
        let remote = stack.peer_addr(h);
        if let Some(e) = stack.tcp_error(h) {
            let to = remote.map_or_else(String::new, |a| a.to_string());
            return fail(
                ctl,
                stack,
                format!("connection to {to}: {}", SendError::from(e)),
            );
        }
        let Some(pending) = ctl.pending_output(f.client) else {
            // The `fetch` command went away.
            stack.abort(h);
            return;
        };
        if matches!(
            stack.tcp_state(h),
            Some(TcpState::SynSent) | Some(TcpState::SynReceived)
        ) {
            self.conns.insert(h, conn);
            return;
        }
        while f.sent < f.request.len() {
            match stack.send(h, &f.request[f.sent..]) {
                Ok(n) => f.sent += n,
                Err(SendError::WouldBlock) => break,
                Err(e) => return fail(ctl, stack, format!("sending the request: {e}")),
            }
        }
        let mut queued = pending;
        let mut body = Vec::new();
        let mut eof = false;
        while queued < FETCH_BACKLOG && !f.parser.is_complete() {
            match Self::read(stack, h, CHUNK) {
                Ok(Some(d)) if d.is_empty() => {
                    eof = true;
                    break;
                }
                Ok(Some(d)) => {
                    if let Err(e) = f.parser.handle_input(&d, &mut body) {
                        return fail(ctl, stack, format!("bad response: {e}"));
                    }
                }
                Ok(None) => break,
                Err(e) => return fail(ctl, stack, format!("reading the response: {e}")),
            }
            if !f.started {
                if let (Some(status), Some(local), Some(remote)) =
                    (f.parser.status(), stack.local_addr(h), remote)
                {
                    f.started = true;
                    ctl.reply(
                        f.client,
                        &Response::FetchStarted {
                            local,
                            remote,
                            status,
                        },
                    );
                }
            }
            if !body.is_empty() {
                f.bytes += body.len() as u64;
                queued += body.len();
                ctl.send_body(f.client, &body);
                body.clear();
            }
        }
        if eof && !f.parser.is_complete() {
            if let Err(e) = f.parser.handle_eof() {
                return fail(ctl, stack, e.to_string());
            }
        }
        if f.parser.is_complete() {
            if !f.started {
                return fail(ctl, stack, "response without a head".into());
            }
            ctl.reply(f.client, &Response::FetchDone { bytes: f.bytes });
            ctl.finish(f.client);
            stack.close(h);
            return;
        }
        self.conns.insert(h, conn);
    }

    /// Stop accepting, close every connection gracefully, fail pending
    /// fetches. The loop then runs until the stack has no sockets left.
    pub fn shutdown(&mut self, stack: &mut Stack, ctl: &mut dyn ControlSink) {
        self.closing = true;
        for (l, _) in self.listeners.drain() {
            stack.close_listener(l);
        }
        for (u, _) in self.udp.drain() {
            stack.udp_close(u);
        }
        for (h, conn) in self.conns.drain() {
            if let Kind::Fetch(f) = &conn.kind {
                ctl.reply(
                    f.client,
                    &Response::Error {
                        message: "the daemon is shutting down".into(),
                    },
                );
                ctl.finish(f.client);
                stack.abort(h);
            } else {
                stack.close(h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::virtual_link::{LinkConfig, Network};
    use crate::stack::StackConfig;
    use crate::Instant;
    use std::collections::VecDeque;

    /// Control answers collected in memory.
    #[derive(Default)]
    struct Sink {
        lines: Vec<(ClientId, Response)>,
        body: Vec<u8>,
        finished: bool,
    }
    impl ControlSink for Sink {
        fn reply(&mut self, id: ClientId, r: &Response) -> bool {
            self.lines.push((id, r.clone()));
            true
        }
        fn send_body(&mut self, _: ClientId, d: &[u8]) -> bool {
            self.body.extend_from_slice(d);
            true
        }
        fn pending_output(&self, _: ClientId) -> Option<usize> {
            Some(0)
        }
        fn finish(&mut self, _: ClientId) {
            self.finished = true;
        }
    }

    fn config(addr: &str, seed: u64) -> StackConfig {
        StackConfig {
            addrs: vec![(addr.parse().unwrap(), 24)],
            seed: Some(seed),
            ..Default::default()
        }
    }

    /// Client stack 0 at 10.0.0.1, daemon stack 1 at 10.0.0.2.
    fn net() -> Network {
        let mut net = Network::new(LinkConfig {
            seed: 1,
            ..Default::default()
        });
        let t0 = Instant::from_millis(0);
        net.add(
            Stack::new(config("10.0.0.1", 1), t0).unwrap(),
            &["10.0.0.1".parse().unwrap()],
        );
        net.add(
            Stack::new(config("10.0.0.2", 2), t0).unwrap(),
            &["10.0.0.2".parse().unwrap()],
        );
        net
    }

    /// Step the link, feeding the daemon stack's events to `svc`.
    fn run(net: &mut Network, svc: &mut Services, sink: &mut Sink, steps: usize) {
        for _ in 0..steps {
            net.step();
            while let Some(ev) = net.stack(1).poll_event() {
                let stack = net.stack(1);
                svc.handle_event(stack, ev, sink);
            }
        }
    }

    fn exchange(
        net: &mut Network,
        svc: &mut Services,
        sink: &mut Sink,
        port: u16,
        send: &[u8],
    ) -> Vec<u8> {
        let c = net
            .stack(0)
            .connect(format!("10.0.0.2:{port}").parse().unwrap())
            .unwrap();
        let mut got = Vec::new();
        let mut to_send: VecDeque<u8> = send.iter().copied().collect();
        let mut shut = false;
        for _ in 0..2000 {
            run(net, svc, sink, 1);
            let cl = net.stack(0);
            if !to_send.is_empty() {
                let (a, _) = to_send.as_slices();
                if let Ok(n) = cl.send(c, a) {
                    to_send.drain(..n);
                }
            } else if !shut && cl.tcp_state(c) == Some(TcpState::Established) {
                let _ = cl.shutdown(c);
                shut = true;
            }
            let mut buf = [0u8; 4096];
            match cl.recv(c, &mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        net.stack(0).close(c);
        got
    }

    #[test]
    fn echo_discard_and_http_over_a_virtual_link() {
        let mut net = net();
        let spec = ServiceSpec {
            http: Some(80),
            echo: Some(7),
            discard: Some(9),
            ..Default::default()
        };
        let mut svc = Services::start(net.stack(1), &spec, true, false).unwrap();
        let mut sink = Sink::default();

        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        assert_eq!(exchange(&mut net, &mut svc, &mut sink, 7, &data), data);
        assert!(exchange(&mut net, &mut svc, &mut sink, 9, &data).is_empty());

        let page = exchange(
            &mut net,
            &mut svc,
            &mut sink,
            80,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        let page = String::from_utf8_lossy(&page);
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("10.0.0.1:"), "{page}");
        let bytes = exchange(
            &mut net,
            &mut svc,
            &mut sink,
            80,
            b"GET /bytes/100000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(bytes.len() > 100_000 && bytes.ends_with(&[http::pattern_byte(99_999)]));

        // UDP echo.
        let u = net
            .stack(0)
            .udp_bind("10.0.0.1:5000".parse().unwrap())
            .unwrap();
        net.stack(0)
            .udp_send_to(u, b"ping", "10.0.0.2:7".parse().unwrap())
            .unwrap();
        run(&mut net, &mut svc, &mut sink, 50);
        let mut buf = [0u8; 16];
        let (n, from) = net.stack(0).udp_recv_from(u, &mut buf).unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"ping"[..], "10.0.0.2:7".parse().unwrap())
        );
        // A busy port is an error naming it.
        let err = Services::start(net.stack(1), &spec, true, false).unwrap_err();
        assert!(err.contains("port 80"), "{err}");
    }

    #[test]
    fn fetch_and_forward_over_a_virtual_link() {
        let mut net = net();
        // The "client" stack 0 plays the HTTP server for the daemon's fetch.
        let mut origin = Services::start(
            net.stack(0),
            &ServiceSpec {
                http: Some(8000),
                ..Default::default()
            },
            true,
            false,
        )
        .unwrap();
        let spec = ServiceSpec {
            socks: Some(1080),
            forwards: vec![ForwardSpec {
                listen_port: 8080,
                host: "10.0.0.1".into(),
                port: 8000,
            }],
            ..Default::default()
        };
        let mut svc = Services::start(net.stack(1), &spec, true, false).unwrap();
        let mut sink = Sink::default();
        let mut origin_sink = Sink::default();
        let id = ClientId::for_test(7);
        svc.start_fetch(
            net.stack(1),
            id,
            "http://10.0.0.1:8000/bytes/5000",
            &mut sink,
            true,
            false,
        );
        for _ in 0..3000 {
            net.step();
            while let Some(ev) = net.stack(1).poll_event() {
                svc.handle_event(net.stack(1), ev, &mut sink);
            }
            while let Some(ev) = net.stack(0).poll_event() {
                origin.handle_event(net.stack(0), ev, &mut origin_sink);
            }
            if sink.finished {
                break;
            }
        }
        assert!(sink.finished);
        let expected: Vec<u8> = (0..5000).map(http::pattern_byte).collect();
        assert_eq!(sink.body, expected);
        let Response::FetchStarted {
            local,
            remote,
            status,
        } = sink.lines[0].1.clone()
        else {
            panic!("{:?}", sink.lines)
        };
        assert_eq!((remote, status), ("10.0.0.1:8000".parse().unwrap(), 200));
        assert!((49152..=65535).contains(&local.port()));
        assert_eq!(
            sink.lines.last().unwrap().1,
            Response::FetchDone { bytes: 5000 }
        );

        // Through the forward and through SOCKS, from stack 0 back to its own
        // HTTP service: the daemon's outbound legs use its ephemeral ports.
        let get = b"GET /bytes/70000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec();
        let mut socks_req = vec![5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 1, 0x1f, 0x40];
        socks_req.extend_from_slice(&get);
        for (port, request, skip) in [(8080u16, get.clone(), 0usize), (1080, socks_req, 2 + 10)] {
            let c = net
                .stack(0)
                .connect(format!("10.0.0.2:{port}").parse().unwrap())
                .unwrap();
            let mut sent = 0;
            let mut got = Vec::new();
            for _ in 0..5000 {
                net.step();
                while let Some(ev) = net.stack(1).poll_event() {
                    svc.handle_event(net.stack(1), ev, &mut sink);
                }
                while let Some(ev) = net.stack(0).poll_event() {
                    origin.handle_event(net.stack(0), ev, &mut origin_sink);
                }
                let cl = net.stack(0);
                if sent < request.len() {
                    if let Ok(n) = cl.send(c, &request[sent..]) {
                        sent += n;
                    }
                }
                let mut buf = [0u8; 8192];
                match cl.recv(c, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(_) => {}
                }
            }
            net.stack(0).close(c);
            if port == 1080 {
                // Method reply, then VER 5, REP 0 (succeeded), RSV, ATYP IPv4.
                assert_eq!(&got[..6], &[5, 0, 5, 0, 0, 1], "SOCKS replies");
            }
            let text = String::from_utf8_lossy(&got[skip..]);
            assert!(text.starts_with("HTTP/1.1 200"), "port {port}: {text:.200}");
            assert!(got.ends_with(&[http::pattern_byte(69_999)]), "port {port}");
        }

        // A bad URL is refused at once.
        let mut bad = Sink::default();
        svc.start_fetch(net.stack(1), id, "https://x/", &mut bad, true, false);
        assert!(bad.finished && matches!(bad.lines[0].1, Response::Error { .. }));
    }
}
