//! The built-in services over the virtual link: a client stack
//! (10.0.0.1) talks to the ephemera stack (10.0.0.2) running `Services`,
//! which opens its outbound connections to an origin stack (10.0.0.3).
//! This module is the harness; its children test one concern each.

mod dns;
mod echo;
mod fetch;
mod forward;
mod http;
mod lifecycle;
mod lookup;
mod nameserver;
mod socks;
mod socks_udp;
mod timeouts;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::{mpsc, Arc};

use ephemera::device::virtual_link::{LinkConfig, Network};
use ephemera::{
    Duration, Instant, ListenerHandle, PortTableConfig, RecvError, Stack, StackConfig, TcpHandle,
    TcpState,
};

use super::fetch::{FetchError, FetchEvent, FetchId};
use super::http::MAX_PAGE_LISTENERS;
use super::lookup::{InlineResolver, LookupId, LookupResult, Resolver};
use super::{Forward, Services, ServicesConfig};
use crate::daemon::credentials::Credentials;
use crate::daemon::host::Host;
use crate::daemon::http::{pattern_byte, ResponseParser, Url};
use crate::daemon::policy::{deny_list, DenyArg, Destinations, Net, NetList};
use crate::daemon::poll::wait_readable;
use crate::daemon::resolver::ResolverPool;

const CLIENT: &str = "10.0.0.1";
const SERVER: &str = "10.0.0.2";
const ORIGIN: &str = "10.0.0.3";
const EPHEMERAL: std::ops::RangeInclusive<u16> = 40000..=40999;
const STEPS: u64 = 200_000;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// `--forward LPORT=HOST:PORT`.
fn forward(listen_port: u16, host: &str, port: u16) -> Forward {
    Forward {
        listen_port,
        host: Host::parse(host).unwrap(),
        port,
    }
}

/// `--socks-allow` as the daemon sets it by default: the subnet of the
/// stack's address, where the client (10.0.0.1) is.
fn client_subnet() -> NetList {
    NetList::new(vec![Net::parse("10.0.0.0/24").unwrap()])
}

fn config(addr: &str, seed: u64) -> StackConfig {
    StackConfig {
        addrs: vec![(ip(addr), 24)],
        seed: Some(seed),
        ..Default::default()
    }
}

// ---- harness ---------------------------------------------------------------

fn ephemera_config(seed: u64) -> StackConfig {
    StackConfig {
        ports: PortTableConfig {
            ephemeral: EPHEMERAL,
            ..Default::default()
        },
        ..config(SERVER, seed)
    }
}

/// Client (0), ephemera (1) and origin (2) on one link; `Services` on 1.
struct Trio {
    net: Network,
    svc: Services,
}

fn trio(seed: u64, cfg: ServicesConfig) -> Trio {
    let mut net = Network::new(LinkConfig {
        seed,
        ..Default::default()
    });
    let t0 = Instant::from_millis(0);
    for (addr, cfg) in [
        (CLIENT, config(CLIENT, seed)),
        (SERVER, ephemera_config(seed + 1)),
        (ORIGIN, config(ORIGIN, seed + 2)),
    ] {
        net.add(Stack::new(cfg, t0).unwrap(), &[ip(addr)]);
    }
    let svc = Services::new(net.stack(1), cfg).unwrap();
    Trio { net, svc }
}

impl Trio {
    /// Step until `done`, pumping client `c` on stack 0 and `origin` on
    /// stack 2 (a client of a SOCKS proxy or port forward, and the server
    /// behind it).
    fn relay(
        &mut self,
        c: &mut Client,
        origin: &mut Origin,
        mut done: impl FnMut(&Client, &Origin, &mut Network) -> bool,
    ) {
        self.run(|n, _| {
            c.pump(n.stack(0));
            origin.pump(n.stack(2));
            done(c, origin, n)
        });
    }

    /// Step the network, letting the services react after every step,
    /// until `done` holds.
    fn run(&mut self, mut done: impl FnMut(&mut Network, &mut Services) -> bool) {
        let svc = &mut self.svc;
        self.net
            .run_until(STEPS, |n| {
                let now = n.now();
                svc.handle_events(n.stack(1), now);
                done(n, svc)
            })
            .unwrap();
    }
}

impl Trio {
    /// Let `d` of simulated time pass: the network runs in stretches of
    /// at most 100 ms, and up to each of the services' own deadlines (idle,
    /// head), which the link does not know of; the services react after
    /// every stretch, and `each` pumps the test's clients and origin.
    fn wait(&mut self, d: Duration, mut each: impl FnMut(&mut Network)) {
        let end = self.net.now() + d;
        for _ in 0..STEPS {
            let now = self.net.now();
            if now >= end {
                return;
            }
            // At least a millisecond, so a stretch always moves time.
            let next = self
                .svc
                .poll_at()
                .map_or(end, |t| t.min(end))
                .min(now + Duration::from_millis(100))
                .max(now + Duration::from_millis(1));
            self.net.run_for(next - now, STEPS).unwrap();
            let now = self.net.now();
            self.svc.handle_events(self.net.stack(1), now);
            each(&mut self.net);
        }
        panic!("wait: step limit");
    }

    /// [`Trio::run`], with time also moving to the services' own
    /// deadlines (upstream timeouts) when the link has nothing to do.
    fn run_timed(&mut self, mut done: impl FnMut(&mut Network, &mut Services) -> bool) {
        for _ in 0..STEPS {
            let now = self.net.now();
            self.svc.handle_events(self.net.stack(1), now);
            if done(&mut self.net, &mut self.svc) {
                return;
            }
            let at = self.svc.poll_at().filter(|&at| at > now);
            match at {
                // One step, the clock going no further than the deadline
                // (an unfinished run_for is no error here).
                Some(at) => {
                    let _ = self.net.run_for(at - now, 1);
                }
                None => {
                    self.net.step();
                }
            }
        }
        panic!("not done after {STEPS} steps, at {}", self.net.now());
    }
}

/// A scripted TCP client: sends what it is given, keeps what it receives.
struct Client {
    h: TcpHandle,
    out: Vec<u8>,
    sent: usize,
    got: Vec<u8>,
    eof: bool,
    error: Option<RecvError>,
    shut: bool,
}

impl Client {
    fn connect(stack: &mut Stack, to: &str) -> Client {
        Client {
            h: stack.connect(sa(to)).unwrap(),
            out: Vec::new(),
            sent: 0,
            got: Vec::new(),
            eof: false,
            error: None,
            shut: false,
        }
    }

    fn write(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
    }

    fn all_sent(&self) -> bool {
        self.sent == self.out.len()
    }

    fn pump(&mut self, stack: &mut Stack) {
        while self.sent < self.out.len() {
            match stack.send(self.h, &self.out[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(_) => break,
            }
        }
        if self.shut && self.all_sent() {
            let _ = stack.shutdown(self.h);
        }
        let mut buf = [0u8; 8192];
        while !self.eof && self.error.is_none() {
            match stack.recv(self.h, &mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(RecvError::WouldBlock) => break,
                Err(e) => self.error = Some(e),
            }
        }
    }

    /// Send FIN once everything written is sent.
    fn finish(&mut self) {
        self.shut = true;
    }
}

/// How the origin's connections behave.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Send `n` pattern bytes, then close.
    Send(usize),
    /// Echo everything; close after the peer's FIN.
    Echo,
    /// Read nothing until `reading` is set.
    Sink,
}

struct OriginConn {
    h: TcpHandle,
    peer: SocketAddr,
    got: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    eof: bool,
    closed: bool,
}

/// A small server on the origin stack, written here.
struct Origin {
    l: ListenerHandle,
    mode: Mode,
    reading: bool,
    conns: Vec<OriginConn>,
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n as u64).map(|i| (i * 7 % 251) as u8).collect()
}

impl Origin {
    fn listen(stack: &mut Stack, port: u16, mode: Mode) -> Origin {
        let l = stack
            .listen(SocketAddr::new(ip(ORIGIN), port), None)
            .unwrap();
        Origin {
            l,
            mode,
            reading: mode != Mode::Sink,
            conns: Vec::new(),
        }
    }

    fn pump(&mut self, stack: &mut Stack) {
        while let Ok(h) = stack.accept(self.l) {
            let out = match self.mode {
                Mode::Send(n) => pattern(n),
                _ => Vec::new(),
            };
            self.conns.push(OriginConn {
                h,
                peer: stack.peer_addr(h).unwrap(),
                got: Vec::new(),
                out,
                sent: 0,
                eof: false,
                closed: false,
            });
        }
        let mut buf = [0u8; 8192];
        for c in &mut self.conns {
            if c.closed {
                continue;
            }
            loop {
                while c.sent < c.out.len() {
                    match stack.send(c.h, &c.out[c.sent..]) {
                        Ok(n) => c.sent += n,
                        Err(_) => break,
                    }
                }
                if !self.reading || c.eof {
                    break;
                }
                match stack.recv(c.h, &mut buf) {
                    Ok(0) => c.eof = true,
                    Ok(n) => {
                        c.got.extend_from_slice(&buf[..n]);
                        if self.mode == Mode::Echo {
                            c.out.extend_from_slice(&buf[..n]);
                        }
                    }
                    Err(_) => break,
                }
            }
            let done_sending = c.sent == c.out.len();
            let close = match self.mode {
                Mode::Send(_) => done_sending,
                Mode::Echo => done_sending && c.eof,
                Mode::Sink => false,
            };
            if close {
                stack.close(c.h);
                c.closed = true;
            }
        }
    }
}

fn http_get(path: &str, close: bool) -> Vec<u8> {
    let conn = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: 10.0.0.2\r\n{conn}\r\n").into_bytes()
}

/// Parse one complete response; returns status and body.
fn parse_response(bytes: &[u8]) -> (u16, Vec<u8>) {
    let mut p = ResponseParser::new();
    let mut body = Vec::new();
    p.handle_input(bytes, &mut body).unwrap();
    assert!(
        p.is_complete(),
        "incomplete response: {} bytes",
        bytes.len()
    );
    (p.status().unwrap(), body)
}

fn socks_connect_ipv4(to: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(v4) = to else {
        panic!("v4 only")
    };
    let mut m = vec![5, 1, 0, 5, 1, 0, 1];
    m.extend_from_slice(&v4.ip().octets());
    m.extend_from_slice(&v4.port().to_be_bytes());
    m
}

fn socks_connect_domain(name: &str, port: u16) -> Vec<u8> {
    let mut m = vec![5, 1, 0, 5, 1, 0, 3, name.len() as u8];
    m.extend_from_slice(name.as_bytes());
    m.extend_from_slice(&port.to_be_bytes());
    m
}

/// The 12-byte SOCKS exchange (method choice + IPv4 reply) split off the
/// front of what the client received: (REP, BND address, rest).
fn socks_reply(got: &[u8]) -> (u8, SocketAddr, &[u8]) {
    assert!(got.len() >= 12, "short SOCKS reply {got:?}");
    assert_eq!(&got[..2], &[5, 0], "method selection");
    assert_eq!(got[2], 5, "reply version");
    assert_eq!(got[5], 1, "IPv4 BND.ADDR");
    let ipb: [u8; 4] = got[6..10].try_into().unwrap();
    let port = u16::from_be_bytes([got[10], got[11]]);
    (got[3], SocketAddr::from((ipb, port)), &got[12..])
}

fn in_ephemeral_range(a: SocketAddr) -> bool {
    a.ip() == ip(SERVER) && EPHEMERAL.contains(&a.port())
}

/// A resolver that answers only when the test says so, on the test's
/// thread: lookups wait, deterministically, for as long as the test likes.
#[derive(Clone, Default)]
struct Held(Rc<RefCell<HeldState>>);

#[derive(Default)]
struct HeldState {
    /// Every lookup asked for, in order.
    asked: Vec<(LookupId, String, u16)>,
    answers: VecDeque<(LookupId, LookupResult)>,
}

impl Resolver for Held {
    fn submit(&mut self, id: LookupId, host: &str, port: u16) -> io::Result<()> {
        self.0.borrow_mut().asked.push((id, host.to_string(), port));
        Ok(())
    }

    fn poll_answer(&mut self) -> Option<(LookupId, LookupResult)> {
        self.0.borrow_mut().answers.pop_front()
    }
}

impl Held {
    /// The names asked for so far.
    fn asked(&self) -> Vec<String> {
        self.0.borrow().asked.iter().map(|a| a.1.clone()).collect()
    }

    /// Answer the lookup of `name`: with `addr` and its port, or with
    /// `NotFound` for `None`.
    fn answer(&self, name: &str, addr: Option<&str>) {
        let mut st = self.0.borrow_mut();
        let &(id, _, port) = st
            .asked
            .iter()
            .find(|a| a.1 == name)
            .unwrap_or_else(|| panic!("{name} was not asked for"));
        let answer = match addr {
            Some(a) => Ok(vec![SocketAddr::new(ip(a), port)]),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "no such name")),
        };
        st.answers.push_back((id, answer));
    }
}

/// The built-in HTTP service on the origin (stack 2), port 8080.
fn http_origin(t: &mut Trio) -> Services {
    let config = ServicesConfig {
        http: Some(8080),
        ..Default::default()
    };
    Services::new(t.net.stack(2), config).unwrap()
}

/// What fetch `id` has produced so far: body octets onto `body`, every
/// other event onto `events`.
fn drain_fetch(svc: &mut Services, id: FetchId, events: &mut Vec<FetchEvent>, body: &mut Vec<u8>) {
    while let Some(ev) = svc.poll_fetch(id) {
        match ev {
            FetchEvent::Body(b) => body.extend_from_slice(&b),
            ev => events.push(ev),
        }
    }
}
