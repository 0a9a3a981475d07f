//! Fixtures shared by the benchmarks: TCP segments built with
//! `ephemera::wire::build`, and a server holding N established idle
//! connections, either ephemera's `Stack` or a stock smoltcp `Interface` +
//! one `SocketSet`.
//!
//! Both servers get the same peers, the same buffer sizes and no delayed
//! ACK, so that one data segment in produces exactly one ACK out.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use ephemera::wire::build::{tcp_options, Ipv4, Tcp, TcpOpt};
use ephemera::wire::{protocol, TcpFlags, TcpView};
use ephemera::{Instant, ListenerHandle, Stack, StackConfig, TcpHandle};
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

/// The server's address (both stacks).
pub const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80);
/// Payload of each benchmark data segment, octets.
pub const PAYLOAD: usize = 64;
/// The fixed clock of the benchmarks: nothing times out, nothing is delayed.
pub fn now() -> Instant {
    Instant::from_secs(1)
}

/// A tiny deterministic PRNG (xorshift64*), for picking connections.
pub struct XorShift(pub u64);

impl XorShift {
    /// The next value below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// The client side of one connection: what the next segment must carry.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddrV4,
    /// Next sequence number the client sends.
    pub seq: u32,
    /// What the client acknowledges (server's ISN + 1 once established).
    pub ack: u32,
}

/// Peer `i` of a benchmark: 10.1.0.1 + i / 50000, port 10000 + i % 50000.
pub fn peer(i: usize) -> Peer {
    let ip = u32::from(Ipv4Addr::new(10, 1, 0, 1)) + (i / 50_000) as u32;
    Peer {
        addr: SocketAddrV4::new(Ipv4Addr::from(ip), 10_000 + (i % 50_000) as u16),
        seq: 0x1000_0000u32.wrapping_add(i as u32 * 7919),
        ack: 0,
    }
}

/// An IPv4/TCP segment from `p` to the server as a client's stack sends
/// it (DF set, window 65535, MSS 1460 on a SYN), checksums filled in. It
/// acknowledges `p.ack` if `flags` has ACK.
pub fn segment(p: &Peer, flags: TcpFlags, payload: &[u8]) -> Vec<u8> {
    let mss = tcp_options(&[TcpOpt::Mss(1460)]);
    let (src, dst) = (SocketAddr::V4(p.addr), SocketAddr::V4(SERVER));
    let tcp = Tcp {
        seq: p.seq,
        ack: if flags.ack() { p.ack } else { 0 },
        flags,
        window: 65535,
        options: if flags.syn() { &mss } else { &[] },
        payload,
        ..Default::default()
    }
    .segment(src, dst);
    Ipv4 {
        id: 0,
        dont_fragment: true,
        ..Default::default()
    }
    .packet(src.ip(), dst.ip(), protocol::TCP, &tcp)
}

/// The data segment `p` sends next; advances `p.seq` past it.
pub fn data_segment(p: &mut Peer) -> Vec<u8> {
    let s = segment(p, TcpFlags::PSH | TcpFlags::ACK, &[0x5a; PAYLOAD]);
    p.seq = p.seq.wrapping_add(PAYLOAD as u32);
    s
}

/// (SYN, ACK flags, sequence number, ack number) of a server segment.
pub fn parse(packet: &[u8]) -> (bool, bool, u32, u32) {
    let t = TcpView::parse(packet).expect("a TCP segment");
    (t.flags().syn(), t.flags().ack(), t.seq(), t.ack())
}

fn check_syn_ack(p: &mut Peer, reply: &[u8]) {
    let (syn, ack, seq, acked) = parse(reply);
    assert!(syn && ack, "expected SYN-ACK");
    assert_eq!(acked, p.seq.wrapping_add(1));
    p.seq = p.seq.wrapping_add(1);
    p.ack = seq.wrapping_add(1);
}

/// What a benchmark does to a server: one segment in, the application
/// reads it, every packet out is collected. Returns the packets sent.
pub trait Server {
    /// Deliver `packet` (for connection `i`; the server may change it in
    /// place, as a driver that owns its receive buffer lets it), read the
    /// data, flush output.
    fn segment(&mut self, i: usize, packet: &mut [u8]) -> usize;
}

// ---- ephemera ---------------------------------------------------------------

/// ephemera's `Stack` with `n` accepted, idle connections.
pub struct EphemeraServer {
    /// The stack.
    pub stack: Stack,
    /// The listener on port 80.
    pub listener: ListenerHandle,
    /// Connection `i` belongs to `peer(i)`.
    pub conns: Vec<TcpHandle>,
    buf: Vec<u8>,
}

/// The stack configuration of the benchmarks.
pub fn ephemera_config(rx: usize, tx: usize) -> StackConfig {
    StackConfig {
        addrs: vec![((*SERVER.ip()).into(), 24)],
        tcp_rx_buffer: rx,
        tcp_tx_buffer: tx,
        ack_delay: None,
        seed: Some(6),
        ..Default::default()
    }
}

impl EphemeraServer {
    /// A stack with `n` established connections, their peers in `peers`.
    pub fn new(config: StackConfig, n: usize, peers: &mut Vec<Peer>) -> EphemeraServer {
        let mut stack = Stack::new(config, now()).expect("valid config");
        let listener = stack
            .listen(SocketAddr::V4(SERVER), Some(n.max(1)))
            .expect("listen");
        let mut s = EphemeraServer {
            stack,
            listener,
            conns: Vec::with_capacity(n),
            buf: vec![0; 4096],
        };
        for i in 0..n {
            s.open(peer(i), peers);
        }
        s
    }

    /// Run one handshake from `p` and accept the connection.
    pub fn open(&mut self, mut p: Peer, peers: &mut Vec<Peer>) {
        let t = now();
        self.stack
            .handle_packet(t, &segment(&p, TcpFlags::SYN, &[]));
        let reply = self.stack.poll_transmit(t).expect("SYN-ACK");
        check_syn_ack(&mut p, &reply);
        self.stack
            .handle_packet(t, &segment(&p, TcpFlags::ACK, &[]));
        while self.stack.poll_transmit(t).is_some() {}
        while self.stack.poll_event().is_some() {}
        let h = self.stack.accept(self.listener).expect("established");
        self.conns.push(h);
        peers.push(p);
    }
}

impl Server for EphemeraServer {
    fn segment(&mut self, i: usize, packet: &mut [u8]) -> usize {
        let t = now();
        self.stack.handle_packet_mut(t, packet);
        while self.stack.poll_event().is_some() {}
        let _ = self.stack.recv(self.conns[i], &mut self.buf);
        let mut out = 0;
        while let Some(p) = self.stack.poll_transmit(t) {
            std::hint::black_box(p);
            out += 1;
        }
        out
    }
}

// ---- stock smoltcp ----------------------------------------------------------

/// A loopback-like device: hands smoltcp the one packet it was given and
/// keeps the last packet smoltcp sent, in a reused buffer.
pub struct Dev<'a> {
    rx: Option<&'a [u8]>,
    tx: &'a mut Sink,
}

/// Where the device puts packets smoltcp sends.
#[derive(Default)]
pub struct Sink {
    /// The last packet sent.
    pub last: Vec<u8>,
    /// Packets sent so far.
    pub count: usize,
}

/// Receive token of [`Dev`].
pub struct Rx<'a>(&'a [u8]);
/// Transmit token of [`Dev`].
pub struct Tx<'a>(&'a mut Sink);

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.0.last.clear();
        self.0.last.resize(len, 0);
        self.0.count += 1;
        f(&mut self.0.last)
    }
}

impl phy::Device for Dev<'_> {
    type RxToken<'b>
        = Rx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let p = self.rx.take()?;
        Some((Rx(p), Tx(self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = 1500;
        caps
    }
}

/// A stock smoltcp `Interface` and one `SocketSet` with `n` established,
/// idle connections (each accepted by its own listening socket, as smoltcp
/// requires).
pub struct StockServer {
    /// The interface.
    pub iface: Interface,
    /// All connections.
    pub sockets: SocketSet<'static>,
    /// Connection `i` belongs to `peer(i)`.
    pub conns: Vec<SocketHandle>,
    sink: Sink,
    buf: Vec<u8>,
}

/// A stock smoltcp TCP socket with the given buffer sizes and no delayed ACK.
pub fn stock_socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; rx]),
        tcp::SocketBuffer::new(vec![0; tx]),
    );
    s.set_ack_delay(None);
    s.set_nagle_enabled(false);
    s
}

impl StockServer {
    /// An interface with `n` established connections, their peers in
    /// `peers`.
    ///
    /// Each handshake runs against a one-socket set and the socket then
    /// moves into the big set, so that building it costs one
    /// `SocketSet::add` per connection (itself a scan from slot 0).
    pub fn new(rx: usize, tx: usize, n: usize, peers: &mut Vec<Peer>) -> StockServer {
        let mut sink = Sink::default();
        let mut dev = Dev {
            rx: None,
            tx: &mut sink,
        };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = 6;
        let mut iface = Interface::new(config, &mut dev, now());
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(*SERVER.ip()), 24))
                .unwrap();
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(*SERVER.ip())
            .unwrap();
        let mut s = StockServer {
            iface,
            sockets: SocketSet::new(Vec::with_capacity(n)),
            conns: Vec::with_capacity(n),
            sink,
            buf: vec![0; 4096],
        };
        let mut one = SocketSet::new(Vec::with_capacity(1));
        for i in 0..n {
            let mut p = peer(i);
            let mut sock = stock_socket(rx, tx);
            sock.listen(SERVER.port()).unwrap();
            let h = one.add(sock);
            s.exchange(&mut one, &segment(&p, TcpFlags::SYN, &[]));
            let reply = s.sink.last.clone();
            check_syn_ack(&mut p, &reply);
            s.exchange(&mut one, &segment(&p, TcpFlags::ACK, &[]));
            assert_eq!(one.get::<tcp::Socket>(h).state(), tcp::State::Established);
            let sock = one.remove(h);
            s.conns.push(s.sockets.add(sock));
            peers.push(p);
        }
        s
    }

    fn exchange(&mut self, set: &mut SocketSet<'static>, packet: &[u8]) {
        let t = now();
        let mut dev = Dev {
            rx: Some(packet),
            tx: &mut self.sink,
        };
        self.iface.poll(t, &mut dev, set);
    }
}

impl Server for StockServer {
    fn segment(&mut self, i: usize, packet: &mut [u8]) -> usize {
        let t = now();
        let before = self.sink.count;
        let mut dev = Dev {
            rx: Some(&*packet),
            tx: &mut self.sink,
        };
        // `Interface::poll` with the application's read between ingress and
        // egress, so the ACK carries the reopened window as ephemera's does.
        let _ = self
            .iface
            .poll_ingress_single(t, &mut dev, &mut self.sockets);
        let _ = self
            .sockets
            .get_mut::<tcp::Socket>(self.conns[i])
            .recv_slice(&mut self.buf);
        while self.iface.poll_egress(t, &mut dev, &mut self.sockets) != PollResult::None {}
        self.sink.count - before
    }
}

/// Feed `rounds` data segments to random connections and check each gives
/// exactly one packet out (a correctness check, nothing about time).
pub fn sanity(server: &mut dyn Server, peers: &mut [Peer], rounds: usize) {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..rounds {
        let i = rng.below(peers.len());
        let mut p = data_segment(&mut peers[i]);
        assert_eq!(server.segment(i, &mut p), 1, "one ACK per data segment");
    }
}
