//! The built-in services over the virtual link: a client stack
//! (10.0.0.1) talks to the ephemera stack (10.0.0.2) running `Services`,
//! which opens its outbound connections to an origin stack (10.0.0.3).

mod common;
use common::*;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Mutex;

use ephemera::daemon::http::{pattern_byte, ResponseParser, Url};
use ephemera::daemon::resolver::ResolverPool;
use ephemera::daemon::services::{
    FetchError, FetchEvent, FetchId, ForwardTarget, InlineResolver, LookupId, LookupResult,
    Resolver, Services, ServicesConfig,
};
use ephemera::device::virtual_link::{LinkConfig, Network};
use ephemera::device::wait_readable;
use ephemera::{
    Duration, Instant, ListenerHandle, PortTableConfig, RecvError, Stack, StackConfig, TcpHandle,
    TcpState,
};

const ORIGIN: &str = "10.0.0.3";
const EPHEMERAL: std::ops::RangeInclusive<u16> = 40000..=40999;
const STEPS: u64 = 200_000;

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

// ---- HTTP --------------------------------------------------------------

#[test]
fn http_root_shows_the_clients_exact_4_tuple_and_the_port_table() {
    let mut t = trio(
        10,
        ServicesConfig {
            http: Some(80),
            echo: Some(7),
            ..Default::default()
        },
    );
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:80");
    let me = t.net.stack(0).local_addr(c.h).unwrap();
    c.write(&http_get("/", true));
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    let (status, body) = parse_response(&c.got);
    assert_eq!(status, 200);
    let page = String::from_utf8(body).unwrap();
    assert!(
        page.contains(&format!("you are {me} -> 10.0.0.2:80")),
        "{page}"
    );
    // The port table lists the listeners and this very connection.
    let row = page
        .lines()
        .find(|l| l.starts_with("tcp") && l.contains(&me.to_string()))
        .unwrap_or_else(|| panic!("no row for {me}:\n{page}"));
    assert!(
        row.starts_with("tcp") && row.contains("ESTABLISHED") && row.contains("10.0.0.2:80"),
        "{page}"
    );
    assert!(page
        .lines()
        .any(|l| l.contains("LISTEN") && l.contains("0.0.0.0:80")));
    assert!(page
        .lines()
        .any(|l| l.starts_with("udp") && l.contains("0.0.0.0:7")));
}

#[test]
fn http_bytes_streams_a_megabyte_exactly() {
    let mut t = trio(
        11,
        ServicesConfig {
            http: Some(80),
            ..Default::default()
        },
    );
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:80");
    c.write(&http_get("/bytes/1000000", true));
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    let (status, body) = parse_response(&c.got);
    assert_eq!(status, 200);
    assert_eq!(body.len(), 1_000_000);
    for (i, &b) in body.iter().enumerate() {
        assert_eq!(b, pattern_byte(i as u64), "byte {i}");
    }
}

#[test]
fn http_keep_alive_serves_two_requests_on_one_connection_and_404s() {
    let mut t = trio(
        12,
        ServicesConfig {
            http: Some(80),
            ..Default::default()
        },
    );
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:80");
    let me = t.net.stack(0).local_addr(c.h).unwrap();
    c.write(&http_get("/bytes/5000", false));
    // Complete when the parser says so; the connection stays open.
    t.run(|n, _| {
        c.pump(n.stack(0));
        let mut p = ResponseParser::new();
        let mut b = Vec::new();
        p.handle_input(&c.got, &mut b).is_ok() && p.is_complete()
    });
    assert!(!c.eof, "keep-alive connection closed after one response");
    let (status, body) = parse_response(&c.got);
    assert_eq!((status, body.len()), (200, 5000));
    assert!((0..5000).all(|i| body[i] == pattern_byte(i as u64)));

    let first = c.got.len();
    c.write(&http_get("/nothing-here", false));
    t.run(|n, _| {
        c.pump(n.stack(0));
        let mut p = ResponseParser::new();
        let mut b = Vec::new();
        p.handle_input(&c.got[first..], &mut b).is_ok() && p.is_complete()
    });
    let (status, body) = parse_response(&c.got[first..]);
    assert_eq!(status, 404);
    assert_eq!(body, b"404 Not Found\n");

    let second = c.got.len();
    c.write(&http_get("/", true));
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    let (status, body) = parse_response(&c.got[second..]);
    assert_eq!(status, 200);
    assert!(String::from_utf8(body)
        .unwrap()
        .contains(&format!("you are {me} ->")));
    // Three requests, one connection.
    assert_eq!(t.net.stack(1).counters().tcp_accepted, 1);
}

#[test]
fn malformed_http_gets_400_while_a_concurrent_client_is_served() {
    let mut t = trio(
        13,
        ServicesConfig {
            http: Some(80),
            ..Default::default()
        },
    );
    let mut good = Client::connect(t.net.stack(0), "10.0.0.2:80");
    let mut bad = Client::connect(t.net.stack(0), "10.0.0.2:80");
    good.write(&http_get("/bytes/200000", true));
    bad.write(b"HELLO THERE\r\n\r\n");
    t.run(|n, _| {
        good.pump(n.stack(0));
        bad.pump(n.stack(0));
        good.eof && bad.eof
    });
    let (status, _) = parse_response(&bad.got);
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&bad.got).contains("Connection: close"));
    let (status, body) = parse_response(&good.got);
    assert_eq!((status, body.len()), (200, 200_000));
    assert!(body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(i as u64)));
}

// ---- echo and discard --------------------------------------------------

#[test]
fn echo_tcp_returns_every_byte_then_closes() {
    let mut t = trio(
        20,
        ServicesConfig {
            echo: Some(7),
            ..Default::default()
        },
    );
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:7");
    let data = pattern(300_000);
    c.write(&data);
    c.finish();
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    assert_eq!(c.got.len(), data.len());
    assert!(c.got == data);
    assert_eq!(c.error, None);
}

#[test]
fn echo_and_discard_udp() {
    let mut t = trio(
        21,
        ServicesConfig {
            echo: Some(7),
            discard: Some(9),
            ..Default::default()
        },
    );
    let u = t.net.stack(0).udp_bind(sa("10.0.0.1:0")).unwrap();
    let me = t.net.stack(0).udp_local_addr(u).unwrap();
    let msgs: Vec<Vec<u8>> = vec![b"one".to_vec(), vec![0xab; 1400], b"three".to_vec()];
    for m in &msgs {
        t.net.stack(0).udp_send_to(u, m, sa("10.0.0.2:7")).unwrap();
    }
    t.net
        .stack(0)
        .udp_send_to(u, b"into the void", sa("10.0.0.2:9"))
        .unwrap();
    let mut got = Vec::new();
    t.run(|n, _| {
        let mut buf = [0u8; 2048];
        while let Ok((k, from)) = n.stack(0).udp_recv_from(u, &mut buf) {
            got.push((buf[..k].to_vec(), from));
        }
        got.len() == msgs.len()
    });
    // Give a discard reply, if there were one, time to arrive.
    t.net.run_for(Duration::from_millis(500), STEPS).unwrap();
    t.run(|_, _| true);
    let mut buf = [0u8; 2048];
    assert!(t.net.stack(0).udp_recv_from(u, &mut buf).is_err());
    for (m, (g, from)) in msgs.iter().zip(&got) {
        assert_eq!(m, g);
        assert_eq!(*from, sa("10.0.0.2:7"));
    }
    assert!(me.port() != 0);
    // Discard answered nothing, not even port unreachable.
    assert_eq!(t.net.stack(1).counters().udp_no_port, 0);
}

#[test]
fn discard_tcp_swallows_everything_and_closes_on_fin() {
    let mut t = trio(
        22,
        ServicesConfig {
            discard: Some(9),
            ..Default::default()
        },
    );
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:9");
    c.write(&pattern(500_000));
    c.finish();
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    assert!(c.all_sent());
    assert!(c.got.is_empty());
    assert_eq!(c.error, None);
}

// ---- SOCKS -------------------------------------------------------------

#[test]
fn socks_connect_fetches_bytes_exactly_from_an_ephemeral_port_of_ephemeras_table() {
    let mut t = trio(
        30,
        ServicesConfig {
            socks: Some(1080),
            ..Default::default()
        },
    );
    let mut origin = Origin::listen(t.net.stack(2), 8000, Mode::Send(400_000));
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    c.write(&socks_connect_ipv4(sa("10.0.0.3:8000")));
    c.write(b"request bytes sent with the handshake");
    c.finish();
    t.relay(&mut c, &mut origin, |c, origin, _| {
        c.eof && origin.conns.first().is_some_and(|o| o.eof)
    });
    let (rep, bound, body) = socks_reply(&c.got);
    assert_eq!(rep, 0);
    assert_eq!(body.len(), 400_000);
    assert!(body == pattern(400_000));
    let o = &origin.conns[0];
    assert_eq!(o.got, b"request bytes sent with the handshake");
    // The origin saw ephemera's address and a port from its configured
    // range, and it is the one the SOCKS reply named.
    assert!(in_ephemeral_range(o.peer), "{}", o.peer);
    assert_eq!(bound, o.peer);
    t.run(|_, svc| svc.connection_count() == 0);
}

#[test]
fn socks_domain_names_go_through_the_injected_resolver() {
    let mut t = trio(
        31,
        ServicesConfig {
            socks: Some(1080),
            ..Default::default()
        },
    );
    let calls = Rc::new(Cell::new(0));
    let seen = calls.clone();
    t.svc.set_resolver(Box::new(InlineResolver::new(
        move |name: &str, port: u16| {
            seen.set(seen.get() + 1);
            match name {
                "origin.test" => Ok(vec![SocketAddr::new(ip(ORIGIN), port)]),
                // As std reports getaddrinfo's errors: without a kind.
                "broken.test" => Err(io::Error::other("failed to lookup address information")),
                _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such name")),
            }
        },
    )));
    let mut origin = Origin::listen(t.net.stack(2), 8000, Mode::Send(1000));
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    c.write(&socks_connect_domain("origin.test", 8000));
    let mut nx = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    nx.write(&socks_connect_domain("nowhere.test", 8000));
    let mut broken = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    broken.write(&socks_connect_domain("broken.test", 8000));
    // An address sent as a name (curl --socks5-hostname) needs no lookup.
    let mut lit = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    lit.write(&socks_connect_domain("10.0.0.3", 8000));
    t.run(|n, _| {
        c.pump(n.stack(0));
        nx.pump(n.stack(0));
        broken.pump(n.stack(0));
        lit.pump(n.stack(0));
        origin.pump(n.stack(2));
        c.eof && nx.eof && broken.eof && lit.eof
    });
    let (rep, bound, body) = socks_reply(&c.got);
    assert_eq!(rep, 0);
    assert!(body == pattern(1000));
    assert!(origin.conns.iter().any(|o| o.peer == bound));
    assert!(in_ephemeral_range(bound));
    // An unknown name, or any failed lookup: host unreachable (0x04), then
    // close.
    for got in [&nx.got, &broken.got] {
        let (rep, _, rest) = socks_reply(got);
        assert_eq!((rep, rest.len()), (4, 0));
    }
    let (rep, _, body) = socks_reply(&lit.got);
    assert_eq!(rep, 0);
    assert!(body == pattern(1000));
    assert_eq!(calls.get(), 3);
    assert_eq!(t.svc.lookup_counters().started, 3);
}

#[test]
fn socks_to_a_closed_port_is_refused_with_reply_5() {
    let mut t = trio(
        32,
        ServicesConfig {
            socks: Some(1080),
            ..Default::default()
        },
    );
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    c.write(&socks_connect_ipv4(sa("10.0.0.3:9999")));
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    let (rep, bound, rest) = socks_reply(&c.got);
    assert_eq!(rep, 0x05);
    assert_eq!(bound, sa("0.0.0.0:0"));
    assert!(rest.is_empty());
    assert_eq!(t.net.stack(1).counters().tcp_connect_refused, 1);
    t.run(|_, svc| svc.connection_count() == 0);
}

#[test]
fn malformed_socks_gets_its_error_reply_while_a_concurrent_client_is_served() {
    let mut t = trio(
        33,
        ServicesConfig {
            socks: Some(1080),
            ..Default::default()
        },
    );
    let mut origin = Origin::listen(t.net.stack(2), 8000, Mode::Send(50_000));
    let mut good = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    good.write(&socks_connect_ipv4(sa("10.0.0.3:8000")));
    // BIND (0x02) is not supported: reply 0x07.
    let mut bad = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    bad.write(&[5, 1, 0, 5, 2, 0, 1, 10, 0, 0, 3, 0x1f, 0x40]);
    // Not SOCKS at all: closed without a reply.
    let mut junk = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    junk.write(b"GET / HTTP/1.1\r\n\r\n");
    t.run(|n, _| {
        for c in [&mut good, &mut bad, &mut junk] {
            c.pump(n.stack(0));
        }
        origin.pump(n.stack(2));
        good.eof && bad.eof && junk.eof
    });
    let (rep, _, rest) = socks_reply(&bad.got);
    assert_eq!((rep, rest.len()), (0x07, 0));
    assert!(junk.got.is_empty());
    let (rep, _, body) = socks_reply(&good.got);
    assert_eq!(rep, 0);
    assert!(body == pattern(50_000));
}

// ---- forwards ----------------------------------------------------------

#[test]
fn forward_relays_both_ways_and_propagates_half_close() {
    let mut t = trio(
        40,
        ServicesConfig {
            forwards: vec![(8080, "10.0.0.3:7000".parse().unwrap())],
            ..Default::default()
        },
    );
    let mut origin = Origin::listen(t.net.stack(2), 7000, Mode::Echo);
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:8080");
    let data = pattern(250_000);
    c.write(&data);
    t.relay(&mut c, &mut origin, |c, _, _| c.got.len() == data.len());
    // Everything echoed, and no FIN yet: the client has not closed.
    assert!(c.got == data);
    assert!(!c.eof && !origin.conns[0].eof);
    assert!(in_ephemeral_range(origin.conns[0].peer));
    // Client FIN -> origin sees EOF -> origin closes -> client sees EOF.
    c.finish();
    t.relay(&mut c, &mut origin, |c, _, _| c.eof);
    assert!(origin.conns[0].eof && origin.conns[0].got == data);
    assert_eq!(c.error, None);
    t.run(|_, svc| svc.connection_count() == 0);
}

#[test]
fn forward_reset_on_one_side_aborts_the_other() {
    let mut t = trio(
        41,
        ServicesConfig {
            forwards: vec![(8080, ForwardTarget::Name("origin.test".into(), 7000))],
            ..Default::default()
        },
    );
    t.svc
        .set_resolver(Box::new(InlineResolver::new(|_: &str, p: u16| {
            Ok(vec![SocketAddr::new(ip(ORIGIN), p)])
        })));
    let mut origin = Origin::listen(t.net.stack(2), 7000, Mode::Echo);
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:8080");
    c.write(b"ping");
    t.relay(&mut c, &mut origin, |c, _, _| c.got == b"ping");
    let h = origin.conns[0].h;
    t.net.stack(2).abort(h);
    origin.conns[0].closed = true;
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.error.is_some()
    });
    assert_eq!(c.error, Some(RecvError::ConnectionReset));
    t.run(|_, svc| svc.connection_count() == 0);
}

#[test]
fn forward_to_a_closed_port_resets_the_client() {
    let mut t = trio(
        42,
        ServicesConfig {
            forwards: vec![(8080, "10.0.0.3:7001".parse().unwrap())],
            ..Default::default()
        },
    );
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:8080");
    c.write(b"anyone there?");
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.error.is_some() || c.eof
    });
    assert_eq!(c.error, Some(RecvError::ConnectionReset));
}

#[test]
fn forward_respects_back_pressure() {
    let mut t = trio(
        43,
        ServicesConfig {
            forwards: vec![(8080, "10.0.0.3:7000".parse().unwrap())],
            ..Default::default()
        },
    );
    let mut origin = Origin::listen(t.net.stack(2), 7000, Mode::Sink);
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:8080");
    let data = pattern(2_000_000);
    c.write(&data);
    t.relay(&mut c, &mut origin, |_, _, n| {
        n.now() > Instant::from_millis(5000)
    });
    // Nothing reads at the origin: the relay holds at most one chunk, so
    // the client can only have filled the buffers along the way (each
    // 64 KiB: client send, ephemera receive and send, origin receive).
    assert!(c.sent < 4 * 64 * 1024 + 16 * 1024 + 1, "{} sent", c.sent);
    assert!(c.sent > 64 * 1024);
    origin.reading = true;
    c.finish();
    t.relay(&mut c, &mut origin, |_, origin, _| origin.conns[0].eof);
    assert!(origin.conns[0].got == data);
}

// ---- fetch -------------------------------------------------------------

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

#[test]
fn fetch_of_a_megabyte_is_byte_exact_from_an_ephemeral_port() {
    let mut t = trio(50, ServicesConfig::default());
    // The origin runs the built-in HTTP service too.
    let mut origin_svc = http_origin(&mut t);
    let url = Url::parse("http://origin.test:8080/bytes/1000000").unwrap();
    let resolve = |name: &str, port: u16| -> io::Result<Vec<SocketAddr>> {
        assert_eq!(name, "origin.test");
        Ok(vec![SocketAddr::new(ip(ORIGIN), port)])
    };
    t.svc.set_resolver(Box::new(InlineResolver::new(resolve)));
    let id = t.svc.start_fetch(t.net.stack(1), &url).unwrap();
    let mut events = Vec::new();
    let mut body = Vec::new();
    let svc = &mut t.svc;
    t.net
        .run_until(STEPS, |n| {
            let now = n.now();
            origin_svc.handle_events(n.stack(2), now);
            svc.handle_events(n.stack(1), now);
            drain_fetch(svc, id, &mut events, &mut body);
            matches!(
                events.last(),
                Some(FetchEvent::Done | FetchEvent::Failed(_))
            )
        })
        .unwrap();
    let [FetchEvent::Connected { local, remote }, FetchEvent::Head { status: 200 }, FetchEvent::Done] =
        events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert!(in_ephemeral_range(*local), "{local}");
    assert_eq!(*remote, sa("10.0.0.3:8080"));
    assert_eq!(body.len(), 1_000_000);
    assert!(body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(i as u64)));
    assert_eq!(t.svc.poll_fetch(id), None, "the id is forgotten after Done");
}

#[test]
fn fetch_from_a_closed_port_fails_with_refused() {
    let mut t = trio(51, ServicesConfig::default());
    let url = Url::parse("http://10.0.0.3:8081/").unwrap();
    // A literal is never looked up.
    t.svc.set_resolver(Box::new(InlineResolver::new(
        |_: &str, _: u16| unreachable!(),
    )));
    let id = t.svc.start_fetch(t.net.stack(1), &url).unwrap();
    let mut events = Vec::new();
    t.run(|_, svc| {
        while let Some(ev) = svc.poll_fetch(id) {
            events.push(ev);
        }
        !events.is_empty()
    });
    match events.as_slice() {
        [FetchEvent::Failed(why)] => assert!(why.contains("refused"), "{why}"),
        other => panic!("{other:?}"),
    }
}

// ---- name lookups ------------------------------------------------------

#[test]
fn a_stuck_lookup_stalls_no_other_client_and_socks_completes_once_it_answers() {
    let mut t = trio(
        90,
        ServicesConfig {
            socks: Some(1080),
            echo: Some(7),
            http: Some(80),
            ..Default::default()
        },
    );
    // The daemon's kind of resolver: a blocking function on worker
    // threads. This one blocks on "slow.test" until the test opens the
    // gate; it gives up after 20 s so that a loop that waited for it
    // fails this test instead of hanging it.
    let (entered_tx, entered) = mpsc::channel::<()>();
    let (open, gate) = mpsc::channel::<()>();
    let (entered_tx, gate) = (Mutex::new(entered_tx), Mutex::new(gate));
    let limit = std::time::Duration::from_secs(20);
    let blocking = move |name: &str, port: u16| -> LookupResult {
        assert_eq!(name, "slow.test");
        entered_tx.lock().unwrap().send(()).unwrap();
        gate.lock()
            .unwrap()
            .recv_timeout(limit)
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "gate never opened"))?;
        Ok(vec![SocketAddr::new(ip(ORIGIN), port)])
    };
    t.svc
        .set_resolver(Box::new(ResolverPool::new(blocking, 2, 8)));
    let mut origin = Origin::listen(t.net.stack(2), 8000, Mode::Send(30_000));

    let mut proxied = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    proxied.write(&socks_connect_domain("slow.test", 8000));
    proxied.write(b"sent before the reply");
    t.run(|n, svc| {
        proxied.pump(n.stack(0));
        svc.lookups_outstanding() == 1
    });
    // A worker is inside the lookup, and stays there.
    entered.recv_timeout(limit).unwrap();

    // Meanwhile an echo and an HTTP client are served in full.
    let mut echo = Client::connect(t.net.stack(0), "10.0.0.2:7");
    let data = pattern(100_000);
    echo.write(&data);
    echo.finish();
    let mut web = Client::connect(t.net.stack(0), "10.0.0.2:80");
    web.write(&http_get("/bytes/50000", true));
    t.run(|n, _| {
        for c in [&mut proxied, &mut echo, &mut web] {
            c.pump(n.stack(0));
        }
        echo.eof && web.eof
    });
    assert!(echo.got == data);
    let (status, body) = parse_response(&web.got);
    assert_eq!((status, body.len()), (200, 50_000));
    // The SOCKS client has its method choice and nothing else yet.
    assert_eq!(proxied.got, [5, 0]);
    assert!(!proxied.eof && origin.conns.is_empty());
    assert_eq!(t.svc.lookups_outstanding(), 1);

    // The resolver answers: its wake-up descriptor says so, and the
    // request goes on.
    open.send(()).unwrap();
    let fd = t.svc.wake_fd().expect("the pool has started");
    assert!(wait_readable(fd, Some(limit)).unwrap());
    t.relay(&mut proxied, &mut origin, |proxied, _, _| proxied.eof);
    let (rep, bound, body) = socks_reply(&proxied.got);
    assert_eq!(rep, 0);
    assert!(body == pattern(30_000));
    assert_eq!(bound, origin.conns[0].peer);
    assert!(in_ephemeral_range(bound));
    assert_eq!(origin.conns[0].got, b"sent before the reply");
    assert_eq!(t.svc.lookups_outstanding(), 0);
}

#[test]
fn a_fetch_by_name_connects_once_its_lookup_answers() {
    let mut t = trio(
        91,
        ServicesConfig {
            http: Some(80),
            ..Default::default()
        },
    );
    let mut origin_svc = http_origin(&mut t);
    let held = Held::default();
    t.svc.set_resolver(Box::new(held.clone()));
    let url = Url::parse("http://origin.test:8080/bytes/30000").unwrap();
    let id = t.svc.start_fetch(t.net.stack(1), &url).unwrap();
    let nx = Url::parse("http://nowhere.test/").unwrap();
    let nx = t.svc.start_fetch(t.net.stack(1), &nx).unwrap();
    assert_eq!(held.asked(), ["origin.test", "nowhere.test"]);

    // While both wait, an HTTP client is served.
    let mut web = Client::connect(t.net.stack(0), "10.0.0.2:80");
    web.write(&http_get("/bytes/50000", true));
    t.run(|n, svc| {
        web.pump(n.stack(0));
        assert_eq!(svc.poll_fetch(id), None, "no event before the answer");
        web.eof
    });
    let (status, body) = parse_response(&web.got);
    assert_eq!((status, body.len()), (200, 50_000));

    held.answer("nowhere.test", None);
    held.answer("origin.test", Some(ORIGIN));
    let (mut events, mut failed, mut body) = (Vec::new(), Vec::new(), Vec::new());
    let svc = &mut t.svc;
    t.net
        .run_until(STEPS, |n| {
            let now = n.now();
            origin_svc.handle_events(n.stack(2), now);
            svc.handle_events(n.stack(1), now);
            while let Some(ev) = svc.poll_fetch(nx) {
                failed.push(ev);
            }
            drain_fetch(svc, id, &mut events, &mut body);
            matches!(events.last(), Some(FetchEvent::Done)) && !failed.is_empty()
        })
        .unwrap();
    match failed.as_slice() {
        [FetchEvent::Failed(why)] => {
            assert!(why.contains("cannot resolve nowhere.test"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    let [FetchEvent::Connected { local, remote }, FetchEvent::Head { status: 200 }, FetchEvent::Done] =
        events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert!(in_ephemeral_range(*local));
    assert_eq!(*remote, sa("10.0.0.3:8080"));
    assert!(body == (0..30_000).map(pattern_byte).collect::<Vec<u8>>());
}

#[test]
fn answers_for_clients_that_went_away_are_dropped_without_effect() {
    let mut t = trio(
        92,
        ServicesConfig {
            socks: Some(1080),
            forwards: vec![(8080, ForwardTarget::Name("forward.test".into(), 7000))],
            ..Default::default()
        },
    );
    let held = Held::default();
    t.svc.set_resolver(Box::new(held.clone()));
    let mut origin = Origin::listen(t.net.stack(2), 7000, Mode::Echo);

    // A SOCKS client and a forwarded one leave while their names are
    // looked up; a fetch is cancelled.
    let mut proxied = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    proxied.write(&socks_connect_domain("socks.test", 7000));
    let mut forwarded = Client::connect(t.net.stack(0), "10.0.0.2:8080");
    forwarded.write(b"never relayed");
    t.run(|n, _| {
        proxied.pump(n.stack(0));
        forwarded.pump(n.stack(0));
        held.asked().len() == 2
    });
    let url = Url::parse("http://fetch.test:7000/").unwrap();
    let id = t.svc.start_fetch(t.net.stack(1), &url).unwrap();
    assert_eq!(t.svc.connection_count(), 2);
    t.net.stack(0).abort(proxied.h);
    t.net.stack(0).abort(forwarded.h);
    t.run(|_, svc| svc.connection_count() == 0);
    t.svc.cancel_fetch(t.net.stack(1), id);
    // The lookups still run in the resolver, and count until they answer.
    assert_eq!(t.svc.lookups_outstanding(), 3);

    for name in ["socks.test", "forward.test", "fetch.test"] {
        held.answer(name, Some(ORIGIN));
    }
    t.run(|_, svc| svc.lookups_outstanding() == 0);
    t.net.run_for(Duration::from_secs(1), STEPS).unwrap();
    t.run(|n, _| {
        origin.pump(n.stack(2));
        true
    });
    // Nobody connected anywhere, and nothing is left over.
    assert!(origin.conns.is_empty());
    assert_eq!(t.svc.lookup_counters().discarded, 3);
    assert_eq!(t.svc.connection_count(), 0);
    assert_eq!(t.svc.poll_fetch(id), None);
    assert!(t
        .net
        .stack(1)
        .snapshot()
        .iter()
        .all(|r| r.remote.is_none_or(|a| a.ip() != ip(ORIGIN))));
    t.net.stack(1).check_invariants().unwrap();
}

#[test]
fn lookups_are_bounded_and_time_limited() {
    let mut t = trio(
        93,
        ServicesConfig {
            socks: Some(1080),
            max_lookups: 2,
            lookup_timeout: Duration::from_secs(5),
            ..Default::default()
        },
    );
    let held = Held::default();
    t.svc.set_resolver(Box::new(held.clone()));
    let mut origin = Origin::listen(t.net.stack(2), 8000, Mode::Send(1000));

    let mut a = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    a.write(&socks_connect_domain("a.test", 8000));
    let mut b = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    b.write(&socks_connect_domain("b.test", 8000));
    t.run(|n, _| {
        a.pump(n.stack(0));
        b.pump(n.stack(0));
        held.asked().len() == 2
    });
    // A third lookup is one too many: general failure (01) at once, and
    // a fetch by name is refused too.
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    c.write(&socks_connect_domain("c.test", 8000));
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    let (rep, _, rest) = socks_reply(&c.got);
    assert_eq!((rep, rest.len()), (1, 0));
    let url = Url::parse("http://d.test/").unwrap();
    match t.svc.start_fetch(t.net.stack(1), &url) {
        Err(e @ FetchError::Resolve { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains("d.test") && m.contains("too many name lookups"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(held.asked().len(), 2);
    assert_eq!(t.svc.lookup_counters().refused, 2);

    // The resolver never answers: after the time limit both clients are
    // told host unreachable (04).
    assert!(t.svc.poll_at().is_some());
    t.net.run_for(Duration::from_secs(5), STEPS).unwrap();
    t.run(|n, _| {
        a.pump(n.stack(0));
        b.pump(n.stack(0));
        a.eof && b.eof
    });
    for got in [&a.got, &b.got] {
        let (rep, _, rest) = socks_reply(got);
        assert_eq!((rep, rest.len()), (4, 0));
    }
    assert_eq!(t.svc.lookup_counters().timed_out, 2);
    // They still occupy the resolver: still no room.
    assert_eq!(t.svc.lookups_outstanding(), 2);
    let mut d = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    d.write(&socks_connect_domain("d.test", 8000));
    t.run(|n, _| {
        d.pump(n.stack(0));
        d.eof
    });
    assert_eq!(socks_reply(&d.got).0, 1);

    // Late answers are dropped; then there is room again.
    held.answer("a.test", Some(ORIGIN));
    held.answer("b.test", Some(ORIGIN));
    t.run(|_, svc| svc.lookups_outstanding() == 0);
    assert_eq!(t.svc.lookup_counters().discarded, 2);
    assert!(origin.conns.is_empty());
    let mut e = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    e.write(&socks_connect_domain("e.test", 8000));
    t.run(|n, _| {
        e.pump(n.stack(0));
        held.asked().len() == 3
    });
    held.answer("e.test", Some(ORIGIN));
    t.relay(&mut e, &mut origin, |e, _, _| e.eof);
    let (rep, _, body) = socks_reply(&e.got);
    assert_eq!(rep, 0);
    assert!(body == pattern(1000));
}

// ---- lifecycle ---------------------------------------------------------

#[test]
fn a_port_already_bound_is_a_clear_error_and_nothing_stays_bound() {
    let mut stack = Stack::new(ephemera_config(60), Instant::from_millis(0)).unwrap();
    let _taken = stack.listen(sa("0.0.0.0:9"), None).unwrap();
    let before = stack.snapshot().len();
    let err = Services::new(
        &mut stack,
        ServicesConfig {
            http: Some(80),
            echo: Some(7),
            discard: Some(9),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.addr.port(), 9);
    assert_eq!(err.errno, 98);
    let msg = err.to_string();
    assert!(
        msg.contains("discard") && msg.contains("port 9") && msg.contains("EADDRINUSE"),
        "{msg}"
    );
    // http and echo were bound first and have been released again.
    assert_eq!(stack.snapshot().len(), before);
    assert!(stack.listen(sa("0.0.0.0:80"), None).is_ok());

    // Two services on one port collide the same way.
    let err = Services::new(
        &mut stack,
        ServicesConfig {
            echo: Some(8080),
            socks: Some(8080),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("socks"), "{err}");
}

#[test]
fn shutdown_closes_every_connection_gracefully() {
    let mut t = trio(
        70,
        ServicesConfig {
            http: Some(80),
            echo: Some(7),
            socks: Some(1080),
            ..Default::default()
        },
    );
    let mut origin = Origin::listen(t.net.stack(2), 7000, Mode::Echo);
    let mut web = Client::connect(t.net.stack(0), "10.0.0.2:80");
    web.write(&http_get("/bytes/10", false));
    let mut echo = Client::connect(t.net.stack(0), "10.0.0.2:7");
    echo.write(b"hi");
    let mut proxied = Client::connect(t.net.stack(0), "10.0.0.2:1080");
    proxied.write(&socks_connect_ipv4(sa("10.0.0.3:7000")));
    proxied.write(b"through");
    t.run(|n, _| {
        for c in [&mut web, &mut echo, &mut proxied] {
            c.pump(n.stack(0));
        }
        origin.pump(n.stack(2));
        web.got.ends_with(b"0123456789") && echo.got == b"hi" && proxied.got.ends_with(b"through")
    });
    assert_eq!(t.svc.connection_count(), 4);

    t.svc.shutdown(t.net.stack(1));
    assert_eq!(t.svc.connection_count(), 0);
    t.run(|n, _| {
        for c in [&mut web, &mut echo, &mut proxied] {
            c.pump(n.stack(0));
        }
        origin.pump(n.stack(2));
        web.eof && echo.eof && proxied.eof && origin.conns[0].eof
    });
    for c in [&web, &echo, &proxied] {
        assert_eq!(c.error, None, "closed with FIN, not reset");
    }
    // No listener left; new connections are refused.
    assert!(t
        .net
        .stack(1)
        .snapshot()
        .iter()
        .all(|r| r.state != "LISTEN" && r.state != "UNCONN"));
    let mut late = Client::connect(t.net.stack(0), "10.0.0.2:80");
    t.run(|n, _| {
        late.pump(n.stack(0));
        late.error.is_some()
    });
    assert_eq!(late.error, Some(RecvError::ConnectionRefused));
    // Once the clients close too, ephemera holds nothing but TIME-WAIT.
    for c in [&web, &echo, &proxied] {
        t.net.stack(0).close(c.h);
    }
    t.run(|n, _| n.stack(1).socket_count() == 0);
    assert_eq!(t.net.stack(1).tcp_state(web.h), None);
    t.net.stack(1).check_invariants().unwrap();
}

#[test]
fn idle_http_connections_are_closed_after_the_timeout() {
    let mut t = trio(
        80,
        ServicesConfig {
            http: Some(80),
            idle_timeout: Some(Duration::from_secs(5)),
            ..Default::default()
        },
    );
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:80");
    t.run(|n, _| {
        c.pump(n.stack(0));
        n.stack(0).tcp_state(c.h) == Some(TcpState::Established)
    });
    t.run(|_, svc| svc.connection_count() == 1);
    let deadline = t.svc.poll_at().expect("an idle deadline");
    assert!(deadline > t.net.now() && deadline <= t.net.now() + Duration::from_secs(5));
    // The virtual link only wakes for the stacks' deadlines; step the
    // clock to the services' one.
    let now = t.net.now();
    t.net.run_for(deadline - now, STEPS).unwrap();
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    assert!(c.got.is_empty());
    assert_eq!(t.svc.connection_count(), 0);
}
