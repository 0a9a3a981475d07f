//! The services as the daemon's event loop drives them: one event at a
//! time, with `fetch` answers going straight to control-socket clients.
//!
//! A thin adapter over [`Services`]: it turns [`FetchEvent`]s into
//! control [`Response`]s, reading no further ahead than the control
//! client takes (back-pressure), and refuses new fetches once the daemon
//! is shutting down.

use std::net::SocketAddr;
use std::os::unix::io::BorrowedFd;

use crate::daemon::control::{ClientId, Response};
use crate::daemon::http::Url;
use ephemera::{Event, Stack};

use super::{
    FetchEvent, FetchId, LookupCounters, ServiceCounters, ServiceError, Services, ServicesConfig,
    SHUTTING_DOWN,
};

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

/// A fetch on behalf of a control client.
#[derive(Debug)]
struct ClientFetch {
    id: FetchId,
    client: ClientId,
    tuple: Option<(SocketAddr, SocketAddr)>,
    bytes: u64,
}

/// [`Services`] with the event loop's calling convention.
#[derive(Debug)]
pub struct DaemonServices {
    inner: Services,
    fetches: Vec<ClientFetch>,
    closing: bool,
}

impl DaemonServices {
    /// Bind every configured service on the wildcard of each of the
    /// stack's families. A port already taken is an error naming it, and
    /// leaves nothing bound.
    pub fn start(stack: &mut Stack, cfg: ServicesConfig) -> Result<DaemonServices, ServiceError> {
        Ok(DaemonServices {
            inner: Services::new(stack, cfg)?,
            fetches: Vec::new(),
            closing: false,
        })
    }

    /// When [`Self::resume`] should next run even without I/O (idle
    /// timeouts, lookup time limits); the loop should sleep no longer.
    #[must_use]
    pub fn poll_at(&self) -> Option<ephemera::Instant> {
        self.inner.poll_at()
    }

    /// Readable when a name lookup has been answered: the loop polls it
    /// with its other descriptors, and then calls [`Self::resume`]. `None`
    /// until the first lookup starts the resolver.
    pub fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.wake_fd()
    }

    /// How name lookups went, for the stats.
    pub fn lookup_counters(&self) -> LookupCounters {
        self.inner.lookup_counters()
    }

    /// What the services refused or cut short, for the stats.
    pub fn counters(&self) -> ServiceCounters {
        self.inner.counters()
    }

    /// The DNS forwarder's counters by name, for the stats.
    pub fn dns_counters(&self) -> Vec<(String, u64)> {
        self.inner.dns_counters()
    }

    /// Act on one stack event.
    pub fn handle_event(&mut self, stack: &mut Stack, event: Event, ctl: &mut dyn ControlSink) {
        let now = stack.now();
        self.inner.handle_event(stack, event, now);
        self.answer_fetches(stack, ctl);
    }

    /// Start `ephemera fetch`: connect to the URL's host from an ephemeral
    /// port of the stack's own table, once its name is resolved. Errors go
    /// to the client: at once if the URL is bad or the lookup refused, when
    /// the lookup or the connection fails otherwise.
    pub fn start_fetch(
        &mut self,
        stack: &mut Stack,
        client: ClientId,
        url: &str,
        ctl: &mut dyn ControlSink,
    ) {
        let fail = |ctl: &mut dyn ControlSink, message: String| {
            ctl.reply(client, &Response::Error { message });
            ctl.finish(client);
        };
        if self.closing {
            return fail(ctl, SHUTTING_DOWN.into());
        }
        let url = match Url::parse(url) {
            Ok(u) => u,
            Err(e) => return fail(ctl, e.to_string()),
        };
        match self.inner.start_fetch(stack, &url) {
            Ok(id) => self.fetches.push(ClientFetch {
                id,
                client,
                tuple: None,
                bytes: 0,
            }),
            Err(e) => fail(ctl, e.to_string()),
        }
    }

    /// At the top of every loop turn: the `/` page's shared part is built
    /// at most once in it.
    pub fn begin_turn(&mut self) {
        self.inner.begin_turn();
    }

    /// Once per loop turn: answered name lookups, idle timeouts and lookup
    /// time limits, and fetches paused because their control client was
    /// slow.
    pub fn resume(&mut self, stack: &mut Stack, ctl: &mut dyn ControlSink) {
        let now = stack.now();
        self.inner.resume(stack, now);
        self.answer_fetches(stack, ctl);
    }

    /// Stop accepting, close every connection gracefully, fail pending
    /// fetches. The loop then runs until the stack has no sockets left.
    pub fn shutdown(&mut self, stack: &mut Stack, ctl: &mut dyn ControlSink) {
        self.closing = true;
        self.inner.shutdown(stack);
        self.answer_fetches(stack, ctl);
    }

    /// Move fetch events to their control clients, as far as each takes.
    fn answer_fetches(&mut self, stack: &mut Stack, ctl: &mut dyn ControlSink) {
        let inner = &mut self.inner;
        self.fetches.retain_mut(|f| loop {
            let Some(pending) = ctl.pending_output(f.client) else {
                // The `fetch` command went away.
                inner.cancel_fetch(stack, f.id);
                return false;
            };
            if pending >= FETCH_BACKLOG {
                return true;
            }
            let Some(ev) = inner.poll_fetch(f.id) else {
                return true;
            };
            match ev {
                FetchEvent::Connected { local, remote } => f.tuple = Some((local, remote)),
                FetchEvent::Head { status } => {
                    if let Some((local, remote)) = f.tuple {
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
                FetchEvent::Body(b) => {
                    f.bytes += b.len() as u64;
                    ctl.send_body(f.client, &b);
                }
                FetchEvent::Done => {
                    ctl.reply(f.client, &Response::FetchDone { bytes: f.bytes });
                    ctl.finish(f.client);
                    return false;
                }
                FetchEvent::Failed(message) => {
                    ctl.reply(f.client, &Response::Error { message });
                    ctl.finish(f.client);
                    return false;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::DaemonServices as Services;
    use super::*;
    use crate::daemon::host::Host;
    use crate::daemon::http;
    use crate::daemon::services::Forward;
    use ephemera::device::virtual_link::{LinkConfig, Network};
    use ephemera::Instant;
    use ephemera::StackConfig;
    use ephemera::TcpState;
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
            // Everything that arrived, each step. (What a slower reader
            // leaves behind would wait for it, in TIME-WAIT too: the stack
            // keeps a held connection's unread data past smoltcp's 10 s.)
            let mut buf = [0u8; 4096];
            let mut eof = false;
            while let Ok(n) = cl.recv(c, &mut buf) {
                if n == 0 {
                    eof = true;
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            if eof {
                break;
            }
        }
        net.stack(0).close(c);
        got
    }

    #[test]
    fn echo_discard_and_http_over_a_virtual_link() {
        let mut net = net();
        let spec = ServicesConfig {
            http: Some(80),
            echo: Some(7),
            discard: Some(9),
            ..Default::default()
        };
        let mut svc = Services::start(net.stack(1), spec.clone()).unwrap();
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
        let err = Services::start(net.stack(1), spec).unwrap_err().to_string();
        assert!(err.contains("port 80"), "{err}");
    }

    #[test]
    fn fetch_and_forward_over_a_virtual_link() {
        let mut net = net();
        // The "client" stack 0 plays the HTTP server for the daemon's fetch.
        let mut origin = Services::start(
            net.stack(0),
            ServicesConfig {
                http: Some(8000),
                ..Default::default()
            },
        )
        .unwrap();
        let spec = ServicesConfig {
            socks: Some(1080),
            socks_allow: crate::daemon::policy::NetList::new(vec![
                crate::daemon::policy::Net::parse("10.0.0.0/24").unwrap(),
            ]),
            forwards: vec![Forward {
                listen_port: 8080,
                host: Host::Ip("10.0.0.1".parse().unwrap()),
                port: 8000,
            }],
            ..Default::default()
        };
        let mut svc = Services::start(net.stack(1), spec.clone()).unwrap();
        let mut sink = Sink::default();
        let mut origin_sink = Sink::default();
        let id = ClientId::for_test(7);
        svc.start_fetch(
            net.stack(1),
            id,
            "http://10.0.0.1:8000/bytes/5000",
            &mut sink,
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
        svc.start_fetch(net.stack(1), id, "https://x/", &mut bad);
        assert!(bad.finished && matches!(bad.lines[0].1, Response::Error { .. }));
    }
}
