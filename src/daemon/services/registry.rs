//! What the services listen on: their configuration, the one the command
//! line fills in, and the listeners and UDP sockets bound for it.
//!
//! Invariant: every listener and UDP socket the services hold is in
//! [`Listeners`], naming the service it serves; a failed start leaves
//! nothing bound.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ephemera::{BindError, Duration, ListenError, ListenerHandle, Protocol, Stack, UdpHandle};

use super::dns::DnsForwardConfig;
use crate::daemon::credentials::Credentials;
use crate::daemon::host::Host;
use crate::daemon::policy::{Destinations, NetList};

/// `--forward LPORT=HOST:PORT`: connections to the stack's `listen_port`
/// are relayed to `host`:`port`, a name being looked up for each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The stack's listening port.
    pub listen_port: u16,
    /// Where connections go.
    pub host: Host,
    /// The target port.
    pub port: u16,
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}:{}", self.listen_port, self.host, self.port)
    }
}

/// Which services to run, on which ports, and their limits: what
/// `ephemera up`'s flags say, handed to the services as it is.
#[derive(Clone, Debug)]
pub struct ServicesConfig {
    /// HTTP/1.1 port.
    pub http: Option<u16>,
    /// Echo port (TCP and UDP).
    pub echo: Option<u16>,
    /// Discard port (TCP and UDP).
    pub discard: Option<u16>,
    /// SOCKS5 port.
    pub socks: Option<u16>,
    /// TCP forwards.
    pub forwards: Vec<Forward>,
    /// The DNS forwarder (`--dns`), on UDP.
    pub dns: Option<DnsForwardConfig>,
    /// Name servers to resolve names with on the stack (`--nameserver`),
    /// each asked in turn; empty: the host's resolver.
    pub nameservers: Vec<SocketAddr>,
    /// Accept-queue length of every listener; `None` uses the stack's.
    pub backlog: Option<usize>,
    /// Also listen on the IPv6 wildcard `[::]` (when the stack has an IPv6
    /// address), and look names up for IPv6 addresses too.
    pub ipv6: bool,
    /// Close a connection of any service (HTTP, echo, discard, a SOCKS or
    /// forward relay, a fetch) that moved no bytes for this long (for a
    /// relay: in either direction); `None`: never.
    pub idle_timeout: Option<Duration>,
    /// How long a client may take over an HTTP request head (from the
    /// connection's start, or the head's first byte, to its end; then 408)
    /// or the SOCKS handshake up to its request (then closed); `None`: no
    /// limit.
    pub head_timeout: Option<Duration>,
    /// Client networks that may use the SOCKS proxy (`--socks-allow`);
    /// others get reply 02 to their request. Empty: nobody.
    pub socks_allow: NetList,
    /// Where SOCKS, a `--forward` to a name (each answer of its lookup)
    /// and `fetch` may not connect (`--socks-deny`).
    pub destinations: Destinations,
    /// The SOCKS users (`--socks-auth`, RFC 1929); `None`: no
    /// authentication.
    pub socks_auth: Option<Arc<Credentials>>,
    /// Name lookups outstanding at once; more are refused at once (SOCKS
    /// reply 01, the forwarded client reset, the fetch failed). A lookup
    /// counts until the resolver answers it, even after its client left.
    pub max_lookups: usize,
    /// How long a client waits for a name lookup before it is failed as
    /// timed out (SOCKS reply 04, forward reset, fetch error). The lookup
    /// itself runs on until the resolver gives up (for the system
    /// resolver: resolv.conf's `timeout` × `attempts` per server).
    pub lookup_timeout: Duration,
    /// SOCKS UDP associations (RFC 1928 §7) at once, each with its relay
    /// socket; a UDP ASSOCIATE beyond them gets reply 01 and no socket.
    pub max_associations: usize,
    /// Seed for the DNS query IDs (forwarder and resolver); `None` draws
    /// one from the OS. (The ports come from the stack's table and its own
    /// seed.)
    pub seed: Option<u64>,
}

/// Default [`ServicesConfig::idle_timeout`], in seconds.
pub const IDLE_TIMEOUT_SECS: u64 = 300;
/// Default [`ServicesConfig::head_timeout`], in seconds: far more than a
/// real client needs, far less than a connection held open one byte at a
/// time would like.
pub const HEAD_TIMEOUT_SECS: u64 = 10;
/// Default [`ServicesConfig::max_lookups`].
pub const MAX_LOOKUPS: usize = 64;
/// Default [`ServicesConfig::max_associations`].
pub const MAX_ASSOCIATIONS: usize = 256;
/// Default [`ServicesConfig::lookup_timeout`], in seconds: more than glibc
/// needs to move on from one dead name server (5 s × 2 attempts) to the
/// next.
pub const LOOKUP_TIMEOUT_SECS: u64 = 15;

impl Default for ServicesConfig {
    fn default() -> Self {
        ServicesConfig {
            http: None,
            echo: None,
            discard: None,
            socks: None,
            forwards: Vec::new(),
            dns: None,
            nameservers: Vec::new(),
            backlog: None,
            ipv6: false,
            idle_timeout: Some(Duration::from_secs(IDLE_TIMEOUT_SECS)),
            head_timeout: Some(Duration::from_secs(HEAD_TIMEOUT_SECS)),
            socks_allow: NetList::default(),
            destinations: Destinations::default(),
            socks_auth: None,
            max_lookups: MAX_LOOKUPS,
            lookup_timeout: Duration::from_secs(LOOKUP_TIMEOUT_SECS),
            max_associations: MAX_ASSOCIATIONS,
            seed: None,
        }
    }
}

impl ServicesConfig {
    /// Every service with the name a user knows it by, its protocol and
    /// port, in the order they are bound: TCP first.
    fn bindings(&self) -> Vec<(Protocol, String, u16, Service)> {
        // (name, port, service, on TCP, on UDP)
        let named = [
            ("http", self.http, Service::Http, true, false),
            ("echo", self.echo, Service::Echo, true, true),
            ("discard", self.discard, Service::Discard, true, true),
            ("socks", self.socks, Service::Socks, true, false),
            (
                "dns",
                self.dns.as_ref().map(|d| d.port),
                Service::Dns,
                false,
                true,
            ),
        ];
        let on = |proto: Protocol| {
            named
                .iter()
                .filter(move |n| if proto == Protocol::Tcp { n.3 } else { n.4 })
                .filter_map(move |(name, port, service, ..)| {
                    port.map(|p| (proto, name.to_string(), p, service.clone()))
                })
        };
        let forwards = self.forwards.iter().map(|f| {
            let service = Service::Forward(f.clone());
            (
                Protocol::Tcp,
                format!("forward {f}"),
                f.listen_port,
                service,
            )
        });
        on(Protocol::Tcp)
            .chain(forwards)
            .chain(on(Protocol::Udp))
            .collect()
    }
}

/// Why the stack refused a service's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindFailure {
    /// EADDRINUSE: another socket holds the port.
    AddrInUse,
    /// EADDRNOTAVAIL: the address is not the stack's.
    AddrNotAvailable,
    /// EINVAL: the service's settings cannot work (a DNS forwarder with
    /// no upstream, say); the command line never lets one through.
    Invalid,
}

impl BindFailure {
    /// The Linux errno.
    pub fn errno(self) -> i32 {
        match self {
            BindFailure::AddrInUse => libc::EADDRINUSE,
            BindFailure::AddrNotAvailable => libc::EADDRNOTAVAIL,
            BindFailure::Invalid => libc::EINVAL,
        }
    }
}

impl From<ListenError> for BindFailure {
    fn from(e: ListenError) -> Self {
        match e {
            ListenError::AddrInUse => BindFailure::AddrInUse,
            ListenError::AddrNotAvailable => BindFailure::AddrNotAvailable,
        }
    }
}

impl From<BindError> for BindFailure {
    fn from(e: BindError) -> Self {
        match e {
            BindError::AddrInUse => BindFailure::AddrInUse,
            BindError::AddrNotAvailable => BindFailure::AddrNotAvailable,
        }
    }
}

/// A service could not start: its port is taken or not ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceError {
    /// The service, as the user named it (`http`, `forward 8080=…`).
    pub service: String,
    /// TCP or UDP.
    pub proto: Protocol,
    /// The address it tried.
    pub addr: SocketAddr,
    /// What the stack said.
    pub cause: BindFailure,
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        };
        let port = self.addr.port();
        match self.cause {
            BindFailure::AddrInUse => write!(
                f,
                "cannot start {}: {proto} port {port} is already bound (EADDRINUSE); \
                 give each service its own port",
                self.service
            ),
            BindFailure::AddrNotAvailable | BindFailure::Invalid => write!(
                f,
                "cannot start {} on {proto} {}: {}",
                self.service,
                self.addr,
                std::io::Error::from_raw_os_error(self.cause.errno())
            ),
        }
    }
}

impl std::error::Error for ServiceError {}

/// What a listener or UDP socket serves.
#[derive(Clone, Debug)]
pub(super) enum Service {
    Http,
    Echo,
    Discard,
    Socks,
    Forward(Forward),
    /// The DNS forwarder (UDP only).
    Dns,
}

/// The services' listeners and UDP sockets.
#[derive(Debug, Default)]
pub(super) struct Listeners {
    tcp: HashMap<ListenerHandle, Service>,
    udp: HashMap<UdpHandle, Service>,
    /// When they were bound.
    since: Option<ephemera::Instant>,
}

impl Listeners {
    /// Bind every configured service on the IPv4 wildcard, and on the IPv6
    /// one with `cfg.ipv6`. On error nothing stays bound.
    pub(super) fn bind(stack: &mut Stack, cfg: &ServicesConfig) -> Result<Listeners, ServiceError> {
        let mut wildcards = vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)];
        if cfg.ipv6 {
            wildcards.push(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        }
        let mut bound = Listeners {
            since: Some(stack.now()),
            ..Listeners::default()
        };
        let bindings = cfg.bindings();
        for ip in wildcards {
            for (proto, name, port, service) in &bindings {
                let addr = SocketAddr::new(ip, *port);
                let failed = |cause: BindFailure| ServiceError {
                    service: name.clone(),
                    proto: *proto,
                    addr,
                    cause,
                };
                let result = match proto {
                    Protocol::Tcp => stack
                        .listen(addr, cfg.backlog)
                        .map(|l| bound.tcp.insert(l, service.clone()))
                        .map_err(|e| failed(e.into())),
                    Protocol::Udp => stack
                        .udp_bind(addr)
                        .map(|u| bound.udp.insert(u, service.clone()))
                        .map_err(|e| failed(e.into())),
                };
                if let Err(e) = result {
                    bound.close(stack);
                    return Err(e);
                }
            }
        }
        Ok(bound)
    }

    /// What listener `l` serves.
    pub(super) fn tcp(&self, l: ListenerHandle) -> Option<&Service> {
        self.tcp.get(&l)
    }

    /// What UDP socket `u` serves.
    pub(super) fn udp(&self, u: UdpHandle) -> Option<&Service> {
        self.udp.get(&u)
    }

    /// The UDP sockets serving `service`.
    pub(super) fn udp_serving(&self, service: fn(&Service) -> bool) -> Vec<UdpHandle> {
        self.udp
            .iter()
            .filter(|(_, s)| service(s))
            .map(|(u, _)| *u)
            .collect()
    }

    pub(super) fn len(&self) -> (usize, usize) {
        (self.tcp.len(), self.udp.len())
    }

    /// Each listener and UDP socket: protocol, address, when bound.
    pub(super) fn sockets<'a>(
        &'a self,
        stack: &'a Stack,
    ) -> impl Iterator<Item = (Protocol, SocketAddr, ephemera::Instant)> + 'a {
        let since = self.since.unwrap_or(stack.now());
        let tcp = self
            .tcp
            .keys()
            .filter_map(|&l| stack.listener_addr(l))
            .map(move |a| (Protocol::Tcp, a, since));
        let udp = self
            .udp
            .keys()
            .filter_map(|&u| stack.udp_local_addr(u))
            .map(move |a| (Protocol::Udp, a, since));
        tcp.chain(udp)
    }

    /// Close every listener and UDP socket.
    pub(super) fn close(&mut self, stack: &mut Stack) {
        for (l, _) in self.tcp.drain() {
            stack.close_listener(l);
        }
        for (u, _) in self.udp.drain() {
            stack.udp_close(u);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_errors_name_the_port() {
        let e = ServiceError {
            service: "http".into(),
            proto: Protocol::Tcp,
            addr: "0.0.0.0:80".parse().unwrap(),
            cause: BindFailure::AddrInUse,
        };
        let m = e.to_string();
        assert!(m.contains("http") && m.contains("TCP port 80") && m.contains("EADDRINUSE"));
        assert_eq!(e.cause.errno(), libc::EADDRINUSE);
    }
}
