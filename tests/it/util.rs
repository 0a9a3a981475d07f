//! What every integration test shares, one function or type per job: a
//! client and a server stack on one virtual link ([`pair`], named by
//! [`Node`]), opening and accepting connections ([`establish`],
//! [`accept_until`]), segments built and read with `ephemera::wire`
//! ([`tcp`], [`Seg`], [`tap_segments`]), one stack driven by hand-built
//! segments ([`drain_until`], [`handshake`]), the stream hash ([`Fnv`]),
//! the seed printed on failure ([`SeedGuard`]), the checks that
//! ephemeral ports are unpredictable ([`assert_ports_unpredictable`]), and
//! an echo server's turn ([`echo_server_turn`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use ephemera::device::virtual_link::{LinkConfig, Network};
use ephemera::wire::build::{Ipv4, Ipv6, Tcp};
use ephemera::wire::{protocol, TcpFlags, TcpView};
use ephemera::{
    Duration, Event, Instant, ListenerHandle, RecvError, Stack, StackConfig, TcpHandle, TcpState,
};

/// The client's address.
pub const CLIENT: &str = "10.0.0.1";
/// The server's address.
pub const SERVER: &str = "10.0.0.2";

/// An address from a literal.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A socket address from a literal.
pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A stack owning `addr/24`, seeded.
pub fn config(addr: &str, seed: u64) -> StackConfig {
    StackConfig {
        addrs: vec![(ip(addr), 24)],
        seed: Some(seed),
        ..Default::default()
    }
}

/// One of the two stacks of a [`pair`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// The first stack (10.0.0.1 unless configured otherwise).
    Client,
    /// The second stack (10.0.0.2 unless configured otherwise).
    Server,
}

pub use Node::{Client, Server};

impl Node {
    /// Its index in the [`Network`] (what the link's filter sees).
    pub fn index(self) -> usize {
        match self {
            Client => 0,
            Server => 1,
        }
    }
}

/// A [`Network`] made by [`pair`], its stacks addressed by [`Node`].
pub trait Pair {
    /// The client stack.
    fn client(&mut self) -> &mut Stack;
    /// The server stack.
    fn server(&mut self) -> &mut Stack;
    /// Stack `n`.
    fn node(&mut self, n: Node) -> &mut Stack;
    /// Stack `n`, shared.
    fn node_ref(&self, n: Node) -> &Stack;
    /// Hand stack `n` a packet as if it came off the link now.
    fn inject_to(&mut self, n: Node, packet: &[u8]);
}

impl Pair for Network {
    fn client(&mut self) -> &mut Stack {
        self.stack(Client.index())
    }
    fn server(&mut self) -> &mut Stack {
        self.stack(Server.index())
    }
    fn node(&mut self, n: Node) -> &mut Stack {
        self.stack(n.index())
    }
    fn node_ref(&self, n: Node) -> &Stack {
        self.stack_ref(n.index())
    }
    fn inject_to(&mut self, n: Node, packet: &[u8]) {
        self.inject(n.index(), packet);
    }
}

/// A client stack and a server stack on one link.
pub fn pair(link: LinkConfig, client: StackConfig, server: StackConfig) -> Network {
    let mut net = Network::new(link);
    let t0 = Instant::from_millis(0);
    for (node, cfg) in [(Client, client), (Server, server)] {
        let addrs: Vec<IpAddr> = cfg.addrs.iter().map(|a| a.0).collect();
        let i = net.add(Stack::new(cfg, t0).unwrap(), &addrs);
        assert_eq!(i, node.index());
    }
    net
}

/// [`pair`] on a clean link, both stacks with default settings.
pub fn default_pair(seed: u64) -> Network {
    pair(
        LinkConfig {
            seed,
            ..Default::default()
        },
        config(CLIENT, seed),
        config(SERVER, seed + 1),
    )
}

/// Connect the client to the server's listener `l` (at its address, or
/// at [`SERVER`] for a wildcard listener) and run until the server has
/// accepted the connection and the client is ESTABLISHED. The client's
/// and the server's handle.
pub fn establish(net: &mut Network, l: ListenerHandle) -> (TcpHandle, TcpHandle) {
    let at = net.server().listener_addr(l).expect("a listener");
    let to = if at.ip().is_unspecified() {
        SocketAddr::new(ip(SERVER), at.port())
    } else {
        at
    };
    let c = net.client().connect(to).unwrap();
    let mut s = None;
    net.run_until(10_000, |n| {
        s = s.or_else(|| n.server().accept(l).ok());
        s.is_some() && n.client().tcp_state(c) == Some(TcpState::Established)
    })
    .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
    (c, s.unwrap())
}

/// Accept everything waiting on the server's listener `l`.
pub fn accept_all(net: &mut Network, l: ListenerHandle) -> Vec<TcpHandle> {
    let mut out = Vec::new();
    while let Ok(h) = net.server().accept(l) {
        out.push(h);
    }
    out
}

/// Run the network until `count` connections have been accepted from the
/// server's listener `l` (at most `steps` steps); those connections.
pub fn accept_until(
    net: &mut Network,
    l: ListenerHandle,
    count: usize,
    steps: u64,
) -> Vec<TcpHandle> {
    let mut accepted = Vec::new();
    net.run_until(steps, |n| {
        accepted.extend(accept_all(n, l));
        accepted.len() == count
    })
    .unwrap_or_else(|e| panic!("{} of {count} accepted: {e:?}", accepted.len()));
    accepted
}

/// `l4` (of protocol `protocol`) in an IP packet as a peer's stack sends
/// it: IPv4 an atomic datagram (DF set, identification 0, RFC 6864), IPv6
/// without extension headers.
pub fn ip_packet(src: IpAddr, dst: IpAddr, protocol: u8, l4: &[u8]) -> Vec<u8> {
    if src.is_ipv4() {
        Ipv4 {
            id: 0,
            dont_fragment: true,
            ..Default::default()
        }
        .packet(src, dst, protocol, l4)
    } else {
        Ipv6::default().packet(src, dst, protocol, l4)
    }
}

/// An IP packet ([`ip_packet`]) carrying a TCP segment from `src` to
/// `dst`, checksums right, no options; the acknowledgment field is zero
/// unless ACK is set.
pub fn tcp(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: TcpFlags,
    window: u16,
    payload: &[u8],
) -> Vec<u8> {
    let seg = Tcp {
        seq,
        ack: if flags.ack() { ack } else { 0 },
        flags,
        window,
        payload,
        ..Default::default()
    }
    .segment(src, dst);
    ip_packet(src.ip(), dst.ip(), protocol::TCP, &seg)
}

/// What a test needs to know about a TCP segment on the wire, copied out
/// of a [`TcpView`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Seg {
    /// Source.
    pub src: SocketAddr,
    /// Destination.
    pub dst: SocketAddr,
    /// SEG.SEQ.
    pub seq: u32,
    /// SEG.ACK.
    pub ack: u32,
    /// Flags.
    pub flags: TcpFlags,
    /// SEG.WND.
    pub window: u16,
    /// Payload octets.
    pub len: u32,
}

impl Seg {
    /// The segment in IP packet `p`; `None` for anything else.
    pub fn parse(p: &[u8]) -> Option<Seg> {
        let v = TcpView::parse(p).ok()?;
        Some(Seg {
            src: v.src(),
            dst: v.dst(),
            seq: v.seq(),
            ack: v.ack(),
            flags: v.flags(),
            window: v.window(),
            len: v.payload().len() as u32,
        })
    }

    /// The sequence number after this segment (SYN and FIN count one).
    pub fn end(&self) -> u32 {
        self.seq
            .wrapping_add(self.len + u32::from(self.flags.syn()) + u32::from(self.flags.fin()))
    }
}

/// Call `f` with every TCP segment the link carries, with its time.
pub fn tap_segments(net: &mut Network, mut f: impl FnMut(Instant, Seg) + 'static) {
    net.set_tap(move |t, p| {
        if let Some(s) = Seg::parse(p) {
            f(t, s);
        }
    });
}

/// Everything `st` puts on the wire from `*now` until `until`, with its
/// time, stepping the clock from deadline to deadline as the virtual link
/// does.
pub fn drain_until(st: &mut Stack, now: &mut Instant, until: Instant) -> Vec<(Instant, Seg)> {
    let mut out = Vec::new();
    loop {
        while let Some(p) = st.poll_transmit(*now) {
            out.extend(Seg::parse(&p).map(|s| (*now, s)));
        }
        match st.poll_at() {
            Some(t) if t <= until => *now = t.max(*now + Duration::from_micros(1)),
            _ => break,
        }
    }
    *now = until.max(*now);
    out
}

/// A peer, played by hand against one stack: open a connection from
/// `peer` with initial sequence number `isn` and window `window` to the
/// listener `l` at `server` (no options), and accept it. The server's
/// handle and its SND.NXT.
pub fn handshake(
    st: &mut Stack,
    now: &mut Instant,
    l: ListenerHandle,
    (peer, server): (SocketAddr, SocketAddr),
    isn: u32,
    window: u16,
) -> (TcpHandle, u32) {
    st.handle_packet(*now, &tcp(peer, server, isn, 0, TcpFlags::SYN, window, b""));
    let out = drain_until(st, now, *now + Duration::from_millis(1));
    let syn_ack = out.iter().find(|(_, s)| s.flags.syn()).expect("SYN-ACK").1;
    assert_eq!(syn_ack.ack, isn.wrapping_add(1));
    let snd_nxt = syn_ack.seq.wrapping_add(1);
    let ack = tcp(
        peer,
        server,
        isn.wrapping_add(1),
        snd_nxt,
        TcpFlags::ACK,
        window,
        b"",
    );
    st.handle_packet(*now, &ack);
    (st.accept(l).expect("accepted"), snd_nxt)
}

/// A 64-bit FNV-1a hash, to compare streams without keeping them.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Hash `bytes` in after what came before.
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// Prints the seed if the test panics while this guard is alive, so a
/// failure can be replayed.
pub struct SeedGuard(pub &'static str, pub u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{} failed with seed {:#x}", self.0, self.1);
        }
    }
}

/// Chi-square of `ps` (indices into `span` ports) over `buckets` equal
/// slices.
fn chi_square(ps: &[u32], span: u32, buckets: usize) -> f64 {
    let mut count = vec![0f64; buckets];
    for &p in ps {
        count[(u64::from(p) * buckets as u64 / u64::from(span)) as usize] += 1.0;
    }
    let e = ps.len() as f64 / buckets as f64;
    count.iter().map(|c| (c - e) * (c - e) / e).sum()
}

/// RFC 6056's promise, checked on the successive ports `seqs[i]` a stack
/// chose towards `dests[i]`, as indices into the `span` ports it draws
/// from (the port minus 49152 for the default range; a shard's share for
/// a sharded table). At least three destinations, each sequence as long
/// as the others: each sequence is roughly uniform, its next port is not
/// guessable from its steps, and the first and third sequences are
/// independent of each other. `what` names the case in messages.
pub fn assert_ports_unpredictable(what: &str, dests: &[SocketAddr], seqs: &[Vec<u32>], span: u32) {
    assert!(dests.len() >= 3 && dests.len() == seqs.len());
    for (d, ps) in dests.iter().zip(seqs) {
        // Roughly uniform over the range: chi-square over 32 buckets,
        // 31 degrees of freedom, 0.1% critical value 61.1.
        let chi = chi_square(ps, span, 32);
        assert!(chi < 61.1, "{what} {d}: chi-square {chi:.1}");
        // No sequential pattern: the observer's best single guess (the most
        // common step so far, or +1) rarely names the next port.
        let deltas: Vec<u32> = ps.windows(2).map(|w| (w[1] + span - w[0]) % span).collect();
        let mut freq: HashMap<u32, usize> = HashMap::new();
        for &x in &deltas {
            *freq.entry(x).or_default() += 1;
        }
        let top = freq.values().max().copied().unwrap_or(0);
        let plus_one = freq.get(&1).copied().unwrap_or(0);
        let rate = top.max(plus_one) as f64 / deltas.len() as f64;
        assert!(
            rate < 0.01,
            "{what} {d}: best step guess right {:.2}% of the time",
            rate * 100.0
        );
        println!(
            "{what} {d}: chi-square(31) {chi:.1}, best step-guess hit rate {:.3}%, distinct steps {}",
            rate * 100.0,
            freq.len()
        );
    }
    // Independent per destination: knowing one sequence says nothing of
    // another (same-index ports rarely close, correlation near zero).
    let (a, b) = (&seqs[0], &seqs[2]);
    let n = a.len();
    let close = span / 256;
    let near = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.abs_diff(**y) < close)
        .count();
    assert!(
        (near as f64 / n as f64) < 0.02,
        "{what}: {near} of {n} within {close}"
    );
    // And the steps of the two are uncorrelated. (Not the ports
    // themselves: each sequence is a random walk that drifts by about
    // max_step / 2 a port and wraps, so two of them look like sawtooths of
    // the same period whose phases wander apart slowly, and the Pearson
    // correlation of the ports spreads to ±0.2 between independent runs.
    // The steps are independent draws, so theirs stays within a few
    // 1/√n of zero.)
    let steps = |v: &[u32]| -> Vec<f64> {
        v.windows(2)
            .map(|w| f64::from((w[1] + span - w[0]) % span))
            .collect()
    };
    let (sa, sb) = (steps(a), steps(b));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (ma, mb) = (mean(&sa), mean(&sb));
    let cov: f64 = sa.iter().zip(&sb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = sa.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = sb.iter().map(|y| (y - mb).powi(2)).sum();
    let r = cov / (va * vb).sqrt();
    // Five standard deviations of r for independent steps.
    let limit = 5.0 / (sa.len() as f64).sqrt();
    assert!(
        r.abs() < limit,
        "{what}: correlation of steps {r:.4} (limit {limit:.4})"
    );
}

/// One turn of an echo server on `server`: accept what `l` has queued,
/// echo back whatever each connection in `servers` received (its count of
/// bytes so far), and close a connection at its client's EOF, which must
/// come after exactly `msg` bytes. `buf` is scratch space.
pub fn echo_server_turn(
    server: &mut Stack,
    l: ListenerHandle,
    servers: &mut HashMap<TcpHandle, usize>,
    buf: &mut [u8],
    msg: usize,
) {
    while let Some(ev) = server.poll_event() {
        match ev {
            Event::Incoming(_) => {
                while let Ok(s) = server.accept(l) {
                    servers.insert(s, 0);
                }
            }
            Event::Tcp(s) => {
                let Some(got) = servers.get_mut(&s) else {
                    continue;
                };
                loop {
                    match server.recv(s, buf) {
                        Ok(0) => {
                            assert_eq!(*got, msg, "server saw EOF early");
                            server.close(s);
                            servers.remove(&s);
                            break;
                        }
                        Ok(n) => {
                            assert_eq!(
                                server.send(s, &buf[..n]),
                                Ok(n),
                                "now {} state {:?} {:?}",
                                server.now(),
                                server.tcp_state(s),
                                server.counters()
                            );
                            *got += n;
                        }
                        Err(RecvError::WouldBlock) => break,
                        Err(e) => panic!("server recv: {e}"),
                    }
                }
            }
            Event::Udp(_) => {}
        }
    }
}
