//! The sans-IO stack: packets and time in, packets and deadlines out.
//!
//! ```text
//!  bytes ─▶ handle_packet ─▶ demux::classify ─▶ PortTable::lookup ─┬─▶ connection's 1-socket set ─▶ smoltcp
//!                                                                  ├─▶ listener: new half-open conn
//!                                                                  └─▶ nothing: smoltcp RST / ICMP unreachable
//!  poll_transmit ◀─ tx queue ◀─ smoltcp egress ◀─ dirty list + timer queue
//! ```
//!
//! The stack never reads a clock or touches a file descriptor: the driver
//! (TUN loop, virtual link, test) passes `now` in and moves the bytes.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::time::Duration as StdDuration;

use log::debug;
use smoltcp::iface::{Config, Interface, PollIngressSingleResult, PollResult, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint, IpProtocol, IpRepr,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use crate::buffer_pool::{BufferPool, Chunk};
use crate::counters::Counters;
use crate::demux::{self, Class, IcmpError, LocalAddrs, TcpSeg};
use crate::error::{
    AcceptError, BindError, ConnError, ConnectError, ListenError, RecvError, SendError,
};
use crate::port_table::{self, FlowKey, Lookup, PortTable, PortTableConfig, Protocol};
use crate::rng::{Rng, SeededRng};
use socket_set::{Listener, Owner, Phase, Slab, Socket, SocketId, TcpConn, TimerQueue, UdpSock};

pub use smoltcp::socket::tcp::State as TcpState;

// Private now, the lint finds Slab::is_empty and TimerQueue::len/is_empty
// unused; they go with the stack split.
#[expect(
    dead_code,
    reason = "unused Slab and TimerQueue methods, removed with the stack split"
)]
pub mod socket_set;

/// A half-open connection is evicted for a new SYN only once it is older
/// than this and than its listener's smoothed handshake time: a real
/// client completes within about one handshake time, a spoofed SYN never.
const MIN_EVICTION_AGE: Duration = Duration::from_millis(1);

/// Handle of a TCP connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct TcpHandle(SocketId);

/// Handle of a TCP listener.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct ListenerHandle(SocketId);

/// Handle of a UDP socket.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct UdpHandle(SocketId);

/// Something the application may want to act on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The listener has connections waiting in its accept queue.
    Incoming(ListenerHandle),
    /// The connection changed: data, buffer space, state or error.
    Tcp(TcpHandle),
    /// The UDP socket received datagrams.
    Udp(UdpHandle),
}

/// Configuration of a [`Stack`].
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// The stack's own addresses with their prefix lengths.
    pub addrs: Vec<(IpAddr, u8)>,
    /// IP MTU of the link (smoltcp derives the TCP MSS from it).
    pub mtu: usize,
    /// Ephemeral range, TIME-WAIT length, allocation step.
    pub ports: PortTableConfig,
    /// Default accept-queue length for `listen` (Linux `somaxconn`).
    pub backlog: usize,
    /// Half-open (SYN-RECEIVED) connections allowed per listener.
    pub syn_backlog: usize,
    /// Receive buffer per TCP connection, octets.
    pub tcp_rx_buffer: usize,
    /// Send buffer per TCP connection, octets.
    pub tcp_tx_buffer: usize,
    /// Datagrams buffered per UDP socket and direction.
    pub udp_packets: usize,
    /// Nagle's algorithm (RFC 896); off by default, as servers set
    /// `TCP_NODELAY`.
    pub nagle: bool,
    /// Delayed-ACK time (RFC 1122 §4.2.3.2); smoltcp's default is 10 ms.
    pub ack_delay: Option<Duration>,
    /// Give up on a connection whose outstanding data, SYN or FIN has seen
    /// no progress for this long (user timeout, RFC 9293 §3.8.4; RFC 5482).
    /// Idle connections with nothing outstanding never time out. This also
    /// ends a peer that keeps its window at zero forever.
    pub user_timeout: Option<Duration>,
    /// Free a connection the application has closed that has sat in
    /// FIN-WAIT-2 this long without a state change, waiting for a peer FIN
    /// that may never come (Linux `tcp_fin_timeout`, 60 s). The connection
    /// is reset and its port released; counted in `tcp_fin_wait2_timeouts`.
    /// Connections still held by the application (`shutdown` only) wait
    /// for the peer indefinitely, as on Linux. `None` never gives up.
    pub fin_timeout: Option<Duration>,
    /// Hand an idle connection's buffer pages back to the kernel after its
    /// buffers have been empty this long (see [`crate::buffer_pool`]);
    /// `None` keeps them. Default 1 s.
    pub shrink_idle_after: Option<Duration>,
    /// Seed for every random choice (ports, ISNs, hash keys); `None` draws
    /// one from the OS.
    pub seed: Option<u64>,
}

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            addrs: Vec::new(),
            mtu: 1500,
            ports: PortTableConfig::default(),
            backlog: 128,
            syn_backlog: 128,
            tcp_rx_buffer: 64 * 1024,
            tcp_tx_buffer: 64 * 1024,
            udp_packets: 64,
            nagle: false,
            ack_delay: Some(Duration::from_millis(10)),
            user_timeout: Some(Duration::from_secs(120)),
            fin_timeout: Some(Duration::from_secs(60)),
            shrink_idle_after: Some(Duration::from_secs(1)),
            seed: None,
        }
    }
}

/// A [`StackConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// No address given.
    NoAddress,
    /// An address is unspecified, multicast, or has a prefix longer than
    /// its family allows.
    BadAddress(IpAddr, u8),
    /// The MTU is below the minimum the families need (576 / 1280) or
    /// above 65535.
    BadMtu(usize),
    /// The port table's configuration is invalid.
    Ports(port_table::PortTableConfigError),
    /// A backlog or buffer size of zero.
    ZeroSize(&'static str),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::NoAddress => write!(f, "the stack needs at least one address"),
            ConfigError::BadAddress(a, p) => write!(f, "{a}/{p} is not a usable unicast address"),
            ConfigError::BadMtu(m) => {
                write!(f, "MTU {m} is out of range (576..=65535, 1280 with IPv6)")
            }
            ConfigError::Ports(e) => e.fmt(f),
            ConfigError::ZeroSize(what) => write!(f, "{what} must be at least 1"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A row of [`Stack::snapshot`], like a line of `ss -tuan`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    /// TCP or UDP.
    pub proto: Protocol,
    /// RFC 9293 state name (`LISTEN`, `ESTABLISHED`, `TIME-WAIT`, …), or
    /// `UNCONN` for UDP.
    pub state: String,
    /// Local address.
    pub local: SocketAddr,
    /// Remote address, for connections.
    pub remote: Option<SocketAddr>,
    /// Octets (or, for a listener, connections) waiting to be read.
    pub recv_queue: usize,
    /// Octets not yet acknowledged (or, for a listener, its backlog).
    pub send_queue: usize,
    /// Time since creation (for TIME-WAIT: since entering it).
    pub age: StdDuration,
}

// ---- the device smoltcp sees -----------------------------------------------

/// One packet in, any number out: the device handed to smoltcp for a single
/// ingress or egress call.
struct OneShot<'a> {
    rx: Option<&'a [u8]>,
    tx: &'a mut VecDeque<Vec<u8>>,
    mtu: usize,
}

struct RxOne<'a>(&'a [u8]);
struct TxOne<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxOne<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for TxOne<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl phy::Device for OneShot<'_> {
    type RxToken<'b>
        = RxOne<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxOne<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(RxOne<'_>, TxOne<'_>)> {
        let p = self.rx.take()?;
        Some((RxOne(p), TxOne(self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxOne<'_>> {
        Some(TxOne(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // demux verified IPv4, TCP and UDP checksums already; smoltcp only
        // computes them on the way out.
        let mut sums = ChecksumCapabilities::default();
        sums.ipv4 = Checksum::Tx;
        sums.tcp = Checksum::Tx;
        sums.udp = Checksum::Tx;
        caps.checksum = sums;
        caps
    }
}

struct Addrs<'a>(&'a [IpCidr]);

impl LocalAddrs for Addrs<'_> {
    fn is_local(&self, ip: IpAddr) -> bool {
        let ip = IpAddress::from(ip);
        self.0.iter().any(|c| c.address() == ip)
    }
    fn is_subnet_broadcast(&self, ip: IpAddr) -> bool {
        let IpAddr::V4(v4) = ip else { return false };
        self.0.iter().any(|c| match c {
            IpCidr::Ipv4(c) => c.prefix_len() < 31 && c.broadcast() == Some(v4),
            #[allow(unreachable_patterns)]
            _ => false,
        })
    }
}

#[derive(Copy, Clone, PartialEq, Eq)]
enum Cause {
    Ingress,
    Egress,
    App,
}

/// The stack. See the [module docs](self) for the packet's path.
pub struct Stack {
    iface: Interface,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
    addrs: Vec<IpCidr>,
    table: PortTable<Owner>,
    sockets: Slab<Socket>,
    dirty: Vec<SocketId>,
    timers: TimerQueue,
    events: VecDeque<Event>,
    counters: Counters,
    config: StackConfig,
    rng: SeededRng,
    empty: SocketSet<'static>,
    now: Instant,
    /// Declared after `sockets`, so it outlives every socket in it.
    buffers: BufferPool,
}

/// SEG.ACK of a TCP segment with ACK set that smoltcp emitted (IPv4
/// with any header length, or IPv6 without extension headers); `None`
/// for anything else.
/// The TCP connection at `id` in `sockets`, whatever its phase; `Break`
/// if it is gone (a step of [`Stack::after_io`] freed it).
fn tcp_in(sockets: &mut Slab<Socket>, id: SocketId) -> ControlFlow<(), &mut TcpConn> {
    match sockets.get_mut(id) {
        Some(Socket::Tcp(c)) => ControlFlow::Continue(c),
        _ => ControlFlow::Break(()),
    }
}

fn tcp_ack_number(packet: &[u8]) -> Option<u32> {
    let (proto, header) = match packet.first()? >> 4 {
        4 => (*packet.get(9)?, usize::from(packet[0] & 0x0f) * 4),
        6 => (*packet.get(6)?, 40),
        _ => return None,
    };
    let tcp = packet.get(header..header + 20)?;
    if proto != 6 || tcp[13] & 0x10 == 0 {
        return None;
    }
    Some(u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]))
}

/// A copy of `packet` with the TCP FIN flag cleared. The checksum is left
/// as it is: demux verified it, and smoltcp is told not to check again.
fn without_fin(packet: &[u8], tcp_offset: u16) -> Vec<u8> {
    let mut p = packet.to_vec();
    if let Some(flags) = p.get_mut(tcp_offset as usize + 13) {
        *flags &= !0x01;
    }
    p
}

fn since_epoch(t: Instant) -> StdDuration {
    StdDuration::from_micros(t.total_micros().max(0) as u64)
}

fn from_std(d: StdDuration) -> Instant {
    Instant::from_micros(d.as_micros() as i64)
}

impl Stack {
    /// A stack with the given addresses and limits, starting at time `now`.
    pub fn new(config: StackConfig, now: Instant) -> Result<Stack, ConfigError> {
        if config.addrs.is_empty() {
            return Err(ConfigError::NoAddress);
        }
        let mut cidrs = Vec::new();
        for &(ip, prefix) in &config.addrs {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            if prefix > max || ip.is_unspecified() || ip.is_multicast() {
                return Err(ConfigError::BadAddress(ip, prefix));
            }
            cidrs.push(IpCidr::new(ip.into(), prefix));
        }
        let min_mtu = if config.addrs.iter().any(|(a, _)| a.is_ipv6()) {
            1280
        } else {
            576
        };
        if config.mtu < min_mtu || config.mtu > 65535 {
            return Err(ConfigError::BadMtu(config.mtu));
        }
        for (what, n) in [
            ("backlog", config.backlog),
            ("syn backlog", config.syn_backlog),
            ("TCP receive buffer", config.tcp_rx_buffer),
            ("TCP send buffer", config.tcp_tx_buffer),
            ("UDP buffer", config.udp_packets),
        ] {
            if n == 0 {
                return Err(ConfigError::ZeroSize(what));
            }
        }
        let mut rng = match config.seed {
            Some(seed) => SeededRng::new(seed),
            None => SeededRng::from_entropy(),
        };
        let table = PortTable::new(config.ports.clone(), &mut rng).map_err(ConfigError::Ports)?;

        let mut tx = VecDeque::new();
        let mut dev = OneShot {
            rx: None,
            tx: &mut tx,
            mtu: config.mtu,
        };
        let mut iface_config = Config::new(HardwareAddress::Ip);
        iface_config.random_seed = rng.next_u64();
        let mut iface = Interface::new(iface_config, &mut dev, now);
        iface.update_ip_addrs(|a| {
            for c in &cidrs {
                let _ = a.push(*c);
            }
        });
        // Medium::Ip needs no neighbours, but smoltcp asks for a route to
        // any remote before it sends; the link is point-to-point, so route
        // everything through ourselves.
        for c in &cidrs {
            match c {
                IpCidr::Ipv4(v4) => {
                    let _ = iface.routes_mut().add_default_ipv4_route(v4.address());
                }
                IpCidr::Ipv6(v6) => {
                    let _ = iface.routes_mut().add_default_ipv6_route(v6.address());
                }
            }
        }
        let buffers = BufferPool::new(config.tcp_rx_buffer, config.tcp_tx_buffer);
        Ok(Stack {
            iface,
            tx,
            mtu: config.mtu,
            addrs: cidrs,
            table,
            sockets: Slab::default(),
            dirty: Vec::new(),
            timers: TimerQueue::default(),
            events: VecDeque::new(),
            counters: Counters::default(),
            config,
            rng,
            empty: SocketSet::new(Vec::new()),
            now,
            buffers,
        })
    }

    // ---- sans-IO driving ---------------------------------------------------

    /// Take in one IP packet received at `now`.
    pub fn handle_packet(&mut self, now: Instant, packet: &[u8]) {
        self.now = now;
        self.counters.packets_in += 1;
        let class = match demux::classify(packet, &Addrs(&self.addrs)) {
            Ok(c) => c,
            Err(reason) => {
                debug!("drop {reason:?}: {} octets", packet.len());
                self.counters.count_drop(reason);
                return;
            }
        };
        // Every packet is counted once: as a drop above, or by its class
        // (`Counters::check_accounting`).
        match class {
            Class::Tcp { .. } => self.counters.tcp_segments_in += 1,
            Class::Udp { .. } => self.counters.udp_datagrams_in += 1,
            _ => {}
        }
        match class {
            Class::Tcp { key, seg } => match self.table.lookup(&key) {
                Lookup::Flow(owner) => {
                    // The socket and ring lines load while the slot does.
                    owner.prefetch(seg.seq, self.config.tcp_rx_buffer);
                    let id = owner.id;
                    if (seg.syn || seg.rst) && self.challenge(id, &key, &seg) {
                        return;
                    }
                    let mut strip_fin = false;
                    if let Some(Socket::Tcp(c)) = self.sockets.get_mut(id) {
                        strip_fin = seg.fin && c.fin_beyond_window(seg.seq, seg.len);
                        let knew_isn = c.peer_isn.is_some();
                        c.note_segment(
                            seg.seq,
                            seg.len,
                            seg.syn,
                            seg.fin && !strip_fin,
                            seg.ack.then_some(seg.ack_number),
                        );
                        // The peer's ISN places its data in the ring.
                        if !knew_isn && c.peer_isn.is_some() {
                            self.table.set_owner(&key, c.owner(id));
                        }
                    }
                    // smoltcp 0.14 accepts the FIN of a segment it trims to
                    // the receive window, ending the stream before the data
                    // that did not fit (found by the stack_pair fuzzer): such
                    // a FIN is cleared here, and the peer sends it again
                    // with the rest (RFC 9293 §3.10.7.4: a FIN beyond the
                    // window is not processed).
                    let stripped;
                    let packet = if strip_fin {
                        self.counters.tcp_fin_beyond_window += 1;
                        stripped = without_fin(packet, seg.header_offset);
                        &stripped[..]
                    } else {
                        packet
                    };
                    self.ingress(id, packet);
                    // This segment moved a closed connection into TIME-WAIT
                    // and its socket is gone, with smoltcp's (delayed) ACK
                    // of it unsent: send that ACK from the record. (While
                    // the socket lives there is no record to look for.)
                    if !seg.rst
                        && self.sockets.get(id).is_none()
                        && self.table.lookup(&key) == Lookup::TimeWait
                    {
                        self.time_wait_ack(&key, &seg);
                    }
                }
                Lookup::TimeWait => self.time_wait_segment(&key, &seg, packet),
                no_flow => self.tcp_without_flow(no_flow, &key, &seg, packet),
            },
            Class::Udp { key } => match self
                .table
                .lookup_bound(Protocol::Udp, key.local)
                .map(|o| o.id)
            {
                Some(id) => self.ingress(id, packet),
                None => {
                    self.counters.udp_no_port += 1;
                    self.answer_unmatched(packet);
                }
            },
            Class::IcmpError { key, error } => self.icmp_error(&key, error),
            Class::Icmp => {
                self.counters.icmp_other += 1;
                self.answer_unmatched(packet);
            }
            Class::OtherProtocol => {
                self.counters.other_protocol += 1;
                self.answer_unmatched(packet);
            }
        }
    }

    /// The next packet to put on the wire at `now`, if any. Runs due timers
    /// and flushes sockets with pending output first.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.now = now;
        if self.tx.is_empty() {
            self.table.expire(since_epoch(now));
            while let Some((at, id)) = self.timers.pop_due(now) {
                if let Some(Socket::Tcp(c)) = self.sockets.get_mut(id) {
                    if c.scheduled == Some(at) {
                        c.scheduled = None;
                        self.mark_dirty(id);
                    }
                }
            }
            let dirty = std::mem::take(&mut self.dirty);
            for id in dirty {
                self.egress(id);
            }
        }
        let p = self.tx.pop_front()?;
        self.counters.packets_out += 1;
        Some(p)
    }

    /// When [`poll_transmit`](Self::poll_transmit) next has work, if ever.
    /// May be early (harmless), never late.
    #[must_use]
    pub fn poll_at(&self) -> Option<Instant> {
        if !self.tx.is_empty() || !self.dirty.is_empty() {
            return Some(self.now);
        }
        let tw = self.table.next_expiry().map(from_std);
        match (self.timers.peek(), tw) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next application event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front()?;
        match ev {
            Event::Incoming(ListenerHandle(id)) => {
                if let Some(Socket::Listener(l)) = self.sockets.get_mut(id) {
                    l.event_queued = false;
                }
            }
            Event::Tcp(TcpHandle(id)) => {
                if let Some(Socket::Tcp(c)) = self.sockets.get_mut(id) {
                    c.event_queued = false;
                }
            }
            Event::Udp(UdpHandle(id)) => {
                if let Some(Socket::Udp(u)) = self.sockets.get_mut(id) {
                    u.event_queued = false;
                }
            }
        }
        Some(ev)
    }

    /// The stack's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The port table (read-only), for inspection.
    pub fn port_table(&self) -> &PortTable<Owner> {
        &self.table
    }

    /// The time last passed in.
    pub fn now(&self) -> Instant {
        self.now
    }

    // ---- TCP API -----------------------------------------------------------

    /// Listen on `local` (port 0 picks an ephemeral port; the address may be
    /// the wildcard). `backlog` bounds the accept queue; `None` uses the
    /// configured default.
    pub fn listen(
        &mut self,
        local: SocketAddr,
        backlog: Option<usize>,
    ) -> Result<ListenerHandle, ListenError> {
        if !local.ip().is_unspecified() && !self.is_local(local.ip()) {
            return Err(ListenError::AddrNotAvailable);
        }
        let id = self.sockets.next_id();
        let bound = self
            .table
            .bind(Protocol::Tcp, local, Owner::of(id), &mut self.rng)
            .map_err(|_| ListenError::AddrInUse)?;
        let got = self.sockets.insert(Socket::Listener(Listener {
            local: bound,
            backlog: backlog.unwrap_or(self.config.backlog).max(1),
            half_open: 0,
            half_open_order: VecDeque::new(),
            queue: VecDeque::new(),
            created: self.now,
            event_queued: false,
            handshake_rtt: None,
        }));
        debug_assert_eq!(got, id);
        debug!("listen {bound}");
        Ok(ListenerHandle(id))
    }

    /// The address a listener is bound to.
    pub fn listener_addr(&self, l: ListenerHandle) -> Option<SocketAddr> {
        match self.sockets.get(l.0) {
            Some(Socket::Listener(l)) => Some(l.local),
            _ => None,
        }
    }

    /// Take the oldest established connection from the accept queue.
    pub fn accept(&mut self, l: ListenerHandle) -> Result<TcpHandle, AcceptError> {
        loop {
            let id = match self.sockets.get_mut(l.0) {
                Some(Socket::Listener(listener)) => listener.queue.pop_front(),
                _ => return Err(AcceptError::InvalidHandle),
            };
            let id = id.ok_or(AcceptError::WouldBlock)?;
            if let Some(Socket::Tcp(c)) = self.sockets.get_mut(id) {
                c.phase = Phase::Owned;
                self.counters.tcp_accepted += 1;
                debug!("accept {} <- {}", c.key.local, c.key.remote);
                // Data (or FIN, or RST) that arrived while it was queued
                // raised no event, as nobody owned it: raise one now, as a
                // socket registered with epoll reports it readable.
                let s = c.socket();
                if (s.can_recv() || s.state() != TcpState::Established || c.error.is_some())
                    && !c.event_queued
                {
                    c.event_queued = true;
                    self.events.push_back(Event::Tcp(TcpHandle(id)));
                }
                return Ok(TcpHandle(id));
            }
        }
    }

    /// Stop listening. Connections still in the accept queue are reset;
    /// half-open ones are reset when they next make progress.
    pub fn close_listener(&mut self, l: ListenerHandle) {
        let Some(Socket::Listener(listener)) = self.sockets.remove(l.0) else {
            return;
        };
        self.table.unbind(Protocol::Tcp, listener.local);
        // Nobody will accept these: reset them (they are not the
        // application's yet, so `abort` would not touch them).
        for id in listener.queue {
            if let Some(Socket::Tcp(c)) = self.sockets.get(id) {
                if c.socket().is_open() {
                    self.counters.tcp_aborted += 1;
                }
            }
            self.reset_and_free(id);
        }
    }

    /// Reset (RST) and free every connection the application has already
    /// closed but that is still open: draining its send queue, or waiting
    /// for the peer's FIN or ACK. For a shutdown deadline, so no peer is
    /// left waiting on a stack that is gone. Returns how many were reset.
    pub fn abort_released(&mut self) -> usize {
        let ids: Vec<SocketId> = self
            .sockets
            .iter()
            .filter_map(|(id, s)| match s {
                Socket::Tcp(c) if c.phase == Phase::Released && c.socket().is_open() => Some(id),
                _ => None,
            })
            .collect();
        self.counters.tcp_aborted += ids.len() as u64;
        for &id in &ids {
            self.reset_and_free(id);
        }
        ids.len()
    }

    /// Open a connection to `remote` from an ephemeral port that the port
    /// table assigns (RFC 6056).
    pub fn connect(&mut self, remote: SocketAddr) -> Result<TcpHandle, ConnectError> {
        let local_ip = self.source_for(remote)?;
        self.connect_from(SocketAddr::new(local_ip, 0), remote)
    }

    /// Open a connection from an explicit `local` address; port 0 means an
    /// ephemeral port.
    pub fn connect_from(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<TcpHandle, ConnectError> {
        if remote.ip().is_unspecified() || remote.port() == 0 || remote.ip().is_multicast() {
            return Err(ConnectError::InvalidAddress);
        }
        if !self.is_local(local.ip()) {
            return Err(ConnectError::AddrNotAvailable);
        }
        if local.is_ipv4() != remote.is_ipv4() {
            return Err(ConnectError::NetworkUnreachable);
        }
        let id = self.sockets.next_id();
        let key = if local.port() == 0 {
            self.table.allocate(
                Protocol::Tcp,
                local.ip(),
                remote,
                Owner::of(id),
                &mut self.rng,
            )
        } else {
            let key = FlowKey::new(Protocol::Tcp, local, remote);
            self.table.insert(key, Owner::of(id)).map(|_| key)
        }
        .map_err(|_| ConnectError::AddrNotAvailable)?;

        let Some((mut socket, chunk)) = self.new_tcp_socket() else {
            self.table.release(&key);
            return Err(ConnectError::NoBuffers);
        };
        let r = socket.connect(
            self.iface.context(),
            IpEndpoint::from(key.remote),
            IpEndpoint::from(key.local),
        );
        if r.is_err() {
            drop(socket);
            self.buffers.release(chunk);
            self.table.release(&key);
            return Err(ConnectError::AddrNotAvailable);
        }
        let got = self.insert_conn((socket, chunk), key, Phase::Owned, None);
        debug_assert_eq!(got, id);
        self.counters.tcp_active_opens += 1;
        debug!("connect {} -> {}", key.local, key.remote);
        self.mark_dirty(id);
        Ok(TcpHandle(id))
    }

    /// Queue `data` for sending; returns how much fit in the send buffer.
    pub fn send(&mut self, h: TcpHandle, data: &[u8]) -> Result<usize, SendError> {
        let c = self.conn_mut(h).ok_or(SendError::InvalidHandle)?;
        if let Some(e) = c.error {
            return Err(e.into());
        }
        let state = c.socket().state();
        let r = c.socket_mut().send_slice(data);
        let n = match r {
            Ok(n) => n,
            Err(_) => {
                return Err(match state {
                    TcpState::SynSent | TcpState::SynReceived => SendError::WouldBlock,
                    TcpState::Closed | TcpState::Listen => SendError::NotConnected,
                    _ => SendError::BrokenPipe,
                })
            }
        };
        if n == 0 && !data.is_empty() {
            return Err(SendError::WouldBlock);
        }
        self.mark_dirty(h.0);
        Ok(n)
    }

    /// Read received data into `buf`. `Ok(0)` is end of stream (the peer
    /// sent FIN and everything before it has been read).
    pub fn recv(&mut self, h: TcpHandle, buf: &mut [u8]) -> Result<usize, RecvError> {
        let c = self.conn_mut(h).ok_or(RecvError::InvalidHandle)?;
        let state = c.socket().state();
        let error = c.error;
        let r = c.socket_mut().recv_slice(buf);
        match r {
            Ok(0) if !buf.is_empty() => match error {
                Some(e) => Err(e.into()),
                None if matches!(state, TcpState::Closed) => Err(RecvError::NotConnected),
                None => Err(RecvError::WouldBlock),
            },
            Ok(n) => {
                c.rx_read = c.rx_read.wrapping_add(n as u32);
                // The window opened: let the peer know.
                self.mark_dirty(h.0);
                Ok(n)
            }
            Err(tcp::RecvError::Finished) => Ok(0),
            Err(tcp::RecvError::InvalidState) => match (error, state) {
                (Some(e), _) => Err(e.into()),
                (None, TcpState::SynSent | TcpState::SynReceived) => Err(RecvError::WouldBlock),
                (None, TcpState::TimeWait | TcpState::LastAck | TcpState::Closing) => Ok(0),
                (None, _) => Err(RecvError::NotConnected),
            },
        }
    }

    /// Send FIN but keep reading (`shutdown(SHUT_WR)`).
    pub fn shutdown(&mut self, h: TcpHandle) -> Result<(), SendError> {
        let c = self.conn_mut(h).ok_or(SendError::InvalidHandle)?;
        c.socket_mut().close();
        self.after_io(h.0, Cause::App);
        self.mark_dirty(h.0);
        Ok(())
    }

    /// Close gracefully: FIN after the queued data, and give up the handle.
    /// The connection lingers through FIN-WAIT and TIME-WAIT on its own.
    pub fn close(&mut self, h: TcpHandle) {
        let Some(c) = self.conn_mut(h) else { return };
        c.socket_mut().close();
        c.phase = Phase::Released;
        self.mark_dirty(h.0);
        self.after_io(h.0, Cause::App);
    }

    /// Reset the connection (RST) and give up the handle at once.
    pub fn abort(&mut self, h: TcpHandle) {
        let Some(c) = self.conn_mut(h) else { return };
        let was_open = c.socket().is_open();
        c.socket_mut().abort();
        c.phase = Phase::Released;
        if was_open {
            self.counters.tcp_aborted += 1;
        }
        // Send the RST now, then reap.
        self.egress(h.0);
    }

    /// The connection's RFC 9293 state; `None` once the handle is stale.
    pub fn tcp_state(&self, h: TcpHandle) -> Option<TcpState> {
        self.conn(h).map(|c| c.socket().state())
    }

    /// Why the connection failed, if it did.
    pub fn tcp_error(&self, h: TcpHandle) -> Option<ConnError> {
        self.conn(h).and_then(|c| c.error)
    }

    /// Whether `send` would accept data now.
    pub fn can_send(&self, h: TcpHandle) -> bool {
        self.conn(h).is_some_and(|c| c.socket().can_send())
    }

    /// Whether `recv` would return data or end of stream now.
    pub fn can_recv(&self, h: TcpHandle) -> bool {
        self.conn(h).is_some_and(|c| {
            let s = c.socket();
            s.can_recv()
                || (!s.may_recv()
                    && s.state() != TcpState::SynSent
                    && s.state() != TcpState::SynReceived)
                || c.error.is_some()
        })
    }

    /// Octets queued but not yet acknowledged by the peer.
    pub fn send_queue(&self, h: TcpHandle) -> usize {
        self.conn(h).map_or(0, |c| c.socket().send_queue())
    }

    /// The connection's local address.
    pub fn local_addr(&self, h: TcpHandle) -> Option<SocketAddr> {
        self.conn(h).map(|c| c.key.local)
    }

    /// The connection's remote address.
    pub fn peer_addr(&self, h: TcpHandle) -> Option<SocketAddr> {
        self.conn(h).map(|c| c.key.remote)
    }

    // ---- UDP API -----------------------------------------------------------

    /// Bind a UDP socket to `local` (port 0 picks an ephemeral port; the
    /// address may be the wildcard).
    pub fn udp_bind(&mut self, local: SocketAddr) -> Result<UdpHandle, BindError> {
        if !local.ip().is_unspecified() && !self.is_local(local.ip()) {
            return Err(BindError::AddrNotAvailable);
        }
        let id = self.sockets.next_id();
        let bound = self
            .table
            .bind(Protocol::Udp, local, Owner::of(id), &mut self.rng)
            .map_err(|_| BindError::AddrInUse)?;
        let n = self.config.udp_packets;
        let payload = n * self.mtu.min(2048);
        let mut socket = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; n], vec![0; payload]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; n], vec![0; payload]),
        );
        let endpoint = IpListenEndpoint {
            addr: (!bound.ip().is_unspecified()).then(|| bound.ip().into()),
            port: bound.port(),
        };
        socket
            .bind(endpoint)
            .expect("port table handed out a non-zero port");
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(socket);
        let got = self.sockets.insert(Socket::Udp(Box::new(UdpSock {
            set,
            handle,
            local: bound,
            created: self.now,
            dirty: false,
            event_queued: false,
            refused: false,
        })));
        debug_assert_eq!(got, id);
        Ok(UdpHandle(id))
    }

    /// The address a UDP socket is bound to.
    pub fn udp_local_addr(&self, h: UdpHandle) -> Option<SocketAddr> {
        match self.sockets.get(h.0) {
            Some(Socket::Udp(u)) => Some(u.local),
            _ => None,
        }
    }

    /// Send one datagram to `remote`.
    pub fn udp_send_to(
        &mut self,
        h: UdpHandle,
        data: &[u8],
        remote: SocketAddr,
    ) -> Result<(), SendError> {
        if remote.ip().is_unspecified() || remote.port() == 0 {
            return Err(SendError::InvalidAddress);
        }
        let header = if remote.is_ipv4() { 28 } else { 48 };
        if data.len() + header > self.mtu {
            return Err(SendError::MessageTooLong);
        }
        let Some(Socket::Udp(u)) = self.sockets.get_mut(h.0) else {
            return Err(SendError::InvalidHandle);
        };
        if u.local.is_ipv4() != remote.is_ipv4() {
            return Err(SendError::InvalidAddress);
        }
        u.socket_mut()
            .send_slice(data, IpEndpoint::from(remote))
            .map_err(|e| match e {
                udp::SendError::BufferFull => SendError::WouldBlock,
                udp::SendError::Unaddressable => SendError::InvalidAddress,
            })?;
        self.mark_dirty(h.0);
        Ok(())
    }

    /// Receive one datagram; a datagram longer than `buf` is truncated, as
    /// with a socket. Returns its length as copied and its sender.
    pub fn udp_recv_from(
        &mut self,
        h: UdpHandle,
        buf: &mut [u8],
    ) -> Result<(usize, SocketAddr), RecvError> {
        let Some(Socket::Udp(u)) = self.sockets.get_mut(h.0) else {
            return Err(RecvError::InvalidHandle);
        };
        // A pending ICMP error is reported once, as Linux does on a UDP
        // socket (`IP_RECVERR` aside).
        if std::mem::take(&mut u.refused) {
            return Err(RecvError::ConnectionRefused);
        }
        let (data, meta) = u.socket_mut().recv().map_err(|_| RecvError::WouldBlock)?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        let ep = meta.endpoint;
        Ok((n, SocketAddr::new(ep.addr.into(), ep.port)))
    }

    /// Close a UDP socket and free its port.
    pub fn udp_close(&mut self, h: UdpHandle) {
        if let Some(Socket::Udp(u)) = self.sockets.remove(h.0) {
            self.table.unbind(Protocol::Udp, u.local);
        }
    }

    // ---- inspection ----------------------------------------------------

    /// Every socket and TIME-WAIT record, like `ss -tuan`. O(sockets): for
    /// display, never on the packet path.
    pub fn snapshot(&self) -> Vec<SocketInfo> {
        let age = |t: Instant| since_epoch(self.now).saturating_sub(since_epoch(t));
        let mut rows = Vec::new();
        for (_, s) in self.sockets.iter() {
            rows.push(match s {
                Socket::Listener(l) => SocketInfo {
                    proto: Protocol::Tcp,
                    state: "LISTEN".into(),
                    local: l.local,
                    remote: None,
                    recv_queue: l.queue.len(),
                    send_queue: l.backlog,
                    age: age(l.created),
                },
                Socket::Tcp(c) => SocketInfo {
                    proto: Protocol::Tcp,
                    state: c.socket().state().to_string(),
                    local: c.key.local,
                    remote: Some(c.key.remote),
                    recv_queue: c.socket().recv_queue(),
                    send_queue: c.socket().send_queue(),
                    age: age(c.created),
                },
                Socket::Udp(u) => SocketInfo {
                    proto: Protocol::Udp,
                    state: "UNCONN".into(),
                    local: u.local,
                    remote: None,
                    recv_queue: u.socket().recv_queue(),
                    send_queue: u.socket().send_queue(),
                    age: age(u.created),
                },
            });
        }
        let tw = self.table.config().time_wait;
        for (key, until) in self.table.time_wait_entries() {
            let left = until.saturating_sub(since_epoch(self.now));
            rows.push(SocketInfo {
                proto: key.proto,
                state: "TIME-WAIT".into(),
                local: key.local,
                remote: Some(key.remote),
                recv_queue: 0,
                send_queue: 0,
                age: tw.saturating_sub(left),
            });
        }
        rows
    }

    /// Number of sockets (connections, listeners, UDP) alive in the slab.
    pub fn socket_count(&self) -> usize {
        self.sockets.len()
    }

    /// Verify that the port table, the slab and the queues agree. For
    /// tests and fuzzers; O(sockets).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.table.check_invariants()?;
        self.counters.check_accounting()?;
        let mut live = 0;
        for (id, s) in self.sockets.iter() {
            match s {
                Socket::Tcp(c) => {
                    if c.registered {
                        live += 1;
                        if self.table.flow(&c.key).map(|o| o.id) != Some(id) {
                            return Err(format!("{:?} registered but not in the table", c.key));
                        }
                    }
                    if let Phase::HalfOpen(l) | Phase::Queued(l) = c.phase {
                        if !matches!(self.sockets.get(l), Some(Socket::Listener(_)) | None) {
                            return Err("half-open connection names a non-listener".into());
                        }
                    }
                }
                Socket::Listener(l) => {
                    if l.half_open > self.config.syn_backlog {
                        return Err(format!("{} half-open over the limit", l.half_open));
                    }
                    if l.queue.len() > l.backlog {
                        return Err(format!("accept queue {} over backlog", l.queue.len()));
                    }
                    if self
                        .table
                        .lookup_bound(Protocol::Tcp, l.local)
                        .map(|o| o.id)
                        != Some(id)
                    {
                        return Err(format!("listener {} not bound", l.local));
                    }
                }
                Socket::Udp(u) => {
                    if self
                        .table
                        .lookup_bound(Protocol::Udp, u.local)
                        .map(|o| o.id)
                        != Some(id)
                    {
                        return Err(format!("UDP socket {} not bound", u.local));
                    }
                }
            }
        }
        let tcp = self
            .sockets
            .iter()
            .filter(|(_, s)| matches!(s, Socket::Tcp(_)))
            .count();
        if tcp != self.buffers.leased() {
            return Err(format!(
                "{tcp} TCP sockets but {} buffer chunks leased",
                self.buffers.leased()
            ));
        }
        if live != self.table.live_flows() {
            return Err(format!(
                "{live} registered connections but {} live flows",
                self.table.live_flows()
            ));
        }
        Ok(())
    }

    // ---- internals -------------------------------------------------------

    fn is_local(&self, ip: IpAddr) -> bool {
        Addrs(&self.addrs).is_local(ip)
    }

    /// Source address for a connection to `remote`: one of ours in the
    /// same subnet if there is one, else the first of the same family.
    fn source_for(&self, remote: SocketAddr) -> Result<IpAddr, ConnectError> {
        let r = IpAddress::from(remote.ip());
        let same_family = |c: &&IpCidr| c.address().version() == r.version();
        self.addrs
            .iter()
            .filter(same_family)
            .find(|c| c.contains_addr(&r))
            .or_else(|| self.addrs.iter().find(same_family))
            .map(|c| c.address().into())
            .ok_or(ConnectError::NetworkUnreachable)
    }

    /// A fresh socket with buffers from the pool; `None` when the pool
    /// cannot reserve more memory.
    fn new_tcp_socket(&mut self) -> Option<(tcp::Socket<'static>, Chunk)> {
        let chunk = match self.buffers.lease() {
            Ok(c) => c,
            Err(e) => {
                debug!("no buffer memory: {e}");
                self.counters.drop_no_buffers += 1;
                return None;
            }
        };
        // SAFETY: one set of slices per lease; the socket is dropped before
        // the chunk is released (`free_tcp`), and the pool outlives both.
        let (rx, tx) = unsafe { self.buffers.slices(&chunk) };
        let c = &self.config;
        let mut s = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        s.set_nagle_enabled(c.nagle);
        s.set_ack_delay(c.ack_delay);
        // smoltcp's own timeout also fires on idle connections; ephemera
        // applies the user timeout itself, only to outstanding data.
        s.set_timeout(None);
        Some((s, chunk))
    }

    /// Free a TCP connection's slot and give its buffer memory back.
    fn free_tcp(&mut self, id: SocketId) {
        if let Some(Socket::Tcp(mut c)) = self.sockets.remove(id) {
            let chunk = c.chunk.take();
            drop(c);
            if let Some(chunk) = chunk {
                self.buffers.release(chunk);
            }
        }
    }

    /// Resident bytes of all TCP buffers (for measurements).
    pub fn buffer_resident_bytes(&self) -> usize {
        self.buffers.resident_bytes()
    }

    /// Put a new connection in the slab and tell the port table where its
    /// memory lies; `peer_isn` is the peer's ISN when its SYN opened it.
    fn insert_conn(
        &mut self,
        (socket, chunk): (tcp::Socket<'static>, Chunk),
        key: FlowKey,
        phase: Phase,
        peer_isn: Option<u32>,
    ) -> SocketId {
        let state = socket.state();
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(socket);
        // The socket lives in the set's heap storage, which never moves.
        let socket_addr = set.get::<tcp::Socket>(handle) as *const _ as usize;
        let rx_addr = chunk.addr();
        let id = self.sockets.insert(Socket::Tcp(TcpConn {
            set,
            handle,
            socket_addr,
            rx_addr,
            key,
            registered: true,
            phase,
            error: None,
            last_state: state,
            created: self.now,
            scheduled: None,
            dirty: false,
            event_queued: false,
            progress_at: self.now,
            last_send_queue: 0,
            peer_ack: 0,
            peer_next: peer_isn.map_or(0, |isn| isn.wrapping_add(1)),
            ack_sent: None,
            fin_watch: None,
            orphan_since: None,
            challenged_at: None,
            peer_isn,
            rx_read: 0,
            idle_since: None,
            shrunk: false,
            chunk: Some(chunk),
        }));
        // The port table keeps where its memory lies with the flow.
        if let Some(Socket::Tcp(c)) = self.sockets.get(id) {
            self.table.set_owner(&key, c.owner(id));
        }
        id
    }

    fn conn(&self, h: TcpHandle) -> Option<&TcpConn> {
        match self.sockets.get(h.0) {
            Some(Socket::Tcp(c)) if c.phase == Phase::Owned => Some(c),
            _ => None,
        }
    }

    fn conn_mut(&mut self, h: TcpHandle) -> Option<&mut TcpConn> {
        match self.sockets.get_mut(h.0) {
            Some(Socket::Tcp(c)) if c.phase == Phase::Owned => Some(c),
            _ => None,
        }
    }

    fn mark_dirty(&mut self, id: SocketId) {
        let flag = match self.sockets.get_mut(id) {
            Some(Socket::Tcp(c)) => &mut c.dirty,
            Some(Socket::Udp(u)) => &mut u.dirty,
            _ => return,
        };
        if !*flag {
            *flag = true;
            self.dirty.push(id);
        }
    }

    /// Let smoltcp answer a packet no socket owns: RST for TCP (RFC 9293
    /// §3.10.7.1), ICMP port unreachable for UDP, echo reply for ping.
    fn answer_unmatched(&mut self, packet: &[u8]) {
        let mut dev = OneShot {
            rx: Some(packet),
            tx: &mut self.tx,
            mtu: self.mtu,
        };
        let _ = self
            .iface
            .poll_ingress_single(self.now, &mut dev, &mut self.empty);
    }

    /// Hand a packet to the one socket that owns it.
    fn ingress(&mut self, id: SocketId, packet: &[u8]) {
        let mut dev = OneShot {
            rx: Some(packet),
            tx: &mut self.tx,
            mtu: self.mtu,
        };
        let set = match self.sockets.get_mut(id) {
            Some(Socket::Tcp(c)) => &mut c.set,
            Some(Socket::Udp(u)) => {
                let before = u.socket().recv_queue();
                let r = self
                    .iface
                    .poll_ingress_single(self.now, &mut dev, &mut u.set);
                if r == PollIngressSingleResult::PacketProcessed
                    && u.socket().recv_queue() == before
                {
                    self.counters.udp_rx_overflow += 1;
                }
                if !u.event_queued {
                    u.event_queued = true;
                    self.events.push_back(Event::Udp(UdpHandle(id)));
                }
                return;
            }
            _ => return,
        };
        let before = dev.tx.len();
        let _ = self.iface.poll_ingress_single(self.now, &mut dev, set);
        self.note_ack_sent(id, before);
        self.mark_dirty(id);
        self.after_io(id, Cause::Ingress);
    }

    /// Remember the acknowledgment number of the last segment `id` put on
    /// the tx queue from position `from` on.
    fn note_ack_sent(&mut self, id: SocketId, from: usize) {
        let ack = self.tx.range(from..).rev().find_map(|p| tcp_ack_number(p));
        if let (Some(ack), Some(Socket::Tcp(c))) = (ack, self.sockets.get_mut(id)) {
            c.ack_sent = Some(ack);
        }
    }

    /// Flush one socket's output (and its due timers).
    fn egress(&mut self, id: SocketId) {
        let mut dev = OneShot {
            rx: None,
            tx: &mut self.tx,
            mtu: self.mtu,
        };
        let set = match self.sockets.get_mut(id) {
            Some(Socket::Tcp(c)) => {
                c.dirty = false;
                &mut c.set
            }
            Some(Socket::Udp(u)) => {
                u.dirty = false;
                &mut u.set
            }
            _ => return,
        };
        let before = dev.tx.len();
        // Each call sends at most one segment; the window bounds the loop,
        // the cap guards against a socket that never says it is done.
        for _ in 0..4096 {
            if self.iface.poll_egress(self.now, &mut dev, set) == PollResult::None {
                break;
            }
        }
        if matches!(self.sockets.get(id), Some(Socket::Tcp(_))) {
            self.note_ack_sent(id, before);
            self.after_io(id, Cause::Egress);
        }
    }

    /// React to whatever the last ingress, egress or call did to a TCP
    /// connection: state transitions, queues, reaping, its next timer.
    ///
    /// One step per concern, in this order; a step that frees or aborts
    /// the connection ends the pass (`Break`).
    fn after_io(&mut self, id: SocketId, cause: Cause) {
        let _ = self.react(id, cause);
    }

    fn react(&mut self, id: SocketId, cause: Cause) -> ControlFlow<()> {
        let (state, prev) = self.observe_state(id, cause)?;
        self.settle_half_open(id, state)?;
        self.reap(id, state, cause)?;
        // An application call only reaps: its deadlines are left to the
        // egress pass it scheduled.
        if cause == Cause::App {
            return ControlFlow::Break(());
        }
        self.notify(id, state, prev, cause);
        let give_up = self.user_timeout(id, state, prev)?;
        let fin_at = self.fin_watchdog(id, state, prev);
        let fin2_at = self.fin_wait2_timeout(id, state)?;
        let shrink_at = self.shrink_when_idle(id);
        self.schedule(id, cause, [give_up, fin_at, fin2_at, shrink_at]);
        ControlFlow::Continue(())
    }

    /// The connection's state now and at the last pass; on a transition to
    /// CLOSED, why it ended (RFC 9293 §3.10.7 for RST, §3.8.4 for
    /// timeouts), counted.
    fn observe_state(
        &mut self,
        id: SocketId,
        cause: Cause,
    ) -> ControlFlow<(), (TcpState, TcpState)> {
        let c = tcp_in(&mut self.sockets, id)?;
        let state = c.socket().state();
        let prev = c.last_state;
        // A call from the application brings no time of its own: `now` is
        // the time last passed in, perhaps long ago. Such a pass reaps at
        // once but leaves the transition, and every deadline measured from
        // it, to the egress pass it scheduled (the caller marks it dirty).
        if cause != Cause::App {
            c.last_state = state;
        }
        if state == TcpState::Closed && prev != TcpState::Closed && c.error.is_none() {
            c.error = match (prev, cause) {
                (TcpState::SynSent, Cause::Ingress) => Some(ConnError::Refused),
                (TcpState::LastAck | TcpState::TimeWait | TcpState::Listen, _) => None,
                (_, Cause::Ingress) => Some(ConnError::Reset),
                (_, Cause::Egress) if c.phase != Phase::Released => Some(ConnError::TimedOut),
                _ => None,
            };
            let counters = &mut self.counters;
            match c.error {
                Some(ConnError::Refused) => counters.tcp_connect_refused += 1,
                Some(ConnError::Reset) => counters.tcp_reset_by_peer += 1,
                Some(ConnError::TimedOut) => counters.tcp_timed_out += 1,
                None if prev == TcpState::LastAck => counters.tcp_closed += 1,
                None => {}
            }
        }
        ControlFlow::Continue((state, prev))
    }

    /// A half-open connection that got established moves to its
    /// listener's accept queue (or is reset when the queue is full); one
    /// that failed is freed.
    fn settle_half_open(&mut self, id: SocketId, state: TcpState) -> ControlFlow<()> {
        let now = self.now;
        let c = tcp_in(&mut self.sockets, id)?;
        let Phase::HalfOpen(l) = c.phase else {
            return ControlFlow::Continue(());
        };
        let established = matches!(
            state,
            TcpState::Established | TcpState::CloseWait | TcpState::FinWait1
        );
        let failed = matches!(
            state,
            TcpState::Closed | TcpState::Listen | TcpState::TimeWait
        );
        if !established && !failed {
            return ControlFlow::Continue(());
        }
        let handshake = now - c.created;
        let queued = match self.sockets.get_mut(l) {
            Some(Socket::Listener(listener)) => {
                listener.half_open -= 1;
                if established && listener.queue.len() < listener.backlog {
                    // Smoothed handshake time (RFC 6298 gain 1/8), for the
                    // eviction age threshold.
                    listener.handshake_rtt = Some(match listener.handshake_rtt {
                        Some(r) => (r * 7 + handshake) / 8,
                        None => handshake,
                    });
                    listener.queue.push_back(id);
                    if !listener.event_queued {
                        listener.event_queued = true;
                        self.events.push_back(Event::Incoming(ListenerHandle(l)));
                    }
                    true
                } else {
                    if established {
                        self.counters.drop_accept_queue_full += 1;
                    }
                    false
                }
            }
            // The listener closed while this was half-open.
            _ => false,
        };
        if !queued {
            self.reset_and_free(id);
            return ControlFlow::Break(());
        }
        self.counters.tcp_passive_opens += 1;
        tcp_in(&mut self.sockets, id)?.phase = Phase::Queued(l);
        ControlFlow::Continue(())
    }

    /// Give the 4-tuple back once the connection is over, and free a
    /// connection the application has let go of.
    fn reap(&mut self, id: SocketId, state: TcpState, cause: Cause) -> ControlFlow<()> {
        let now = self.now;
        let c = tcp_in(&mut self.sockets, id)?;
        let released = c.phase == Phase::Released;
        match state {
            // Our side closed first: the 4-tuple goes to TIME-WAIT as a
            // compact record and the socket is freed (RFC 9293 §3.6.1).
            TcpState::TimeWait if released => {
                let key = c.key;
                // Freed later than the segment that brought it here (the
                // application closed a handle already in TIME-WAIT): the
                // peer's FIN may still be owed smoltcp's delayed ACK, so
                // send it now or the peer waits in LAST-ACK for a FIN
                // retransmission. (Freed by that very segment, the ACK is
                // sent from the record in `handle_packet`.)
                if cause != Cause::Ingress && c.ack_sent != Some(c.rcv_nxt()) {
                    let (seq, ack, window) = (c.peer_ack, c.rcv_nxt(), c.window_field());
                    self.emit_segment(&key, seq, ack, TcpControl::None, window);
                }
                let c = tcp_in(&mut self.sockets, id)?;
                if c.registered {
                    let rcv_nxt = c.rcv_nxt();
                    self.table.enter_time_wait(&key, since_epoch(now), rcv_nxt);
                }
                self.counters.tcp_closed += 1;
                self.free_tcp(id);
                ControlFlow::Break(())
            }
            TcpState::Closed | TcpState::Listen => {
                if c.registered {
                    c.registered = false;
                    let key = c.key;
                    self.table.release(&key);
                }
                if released {
                    self.free_tcp(id);
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            }
            _ => ControlFlow::Continue(()),
        }
    }

    /// Queue an event for the application if it holds the connection and
    /// something happened.
    fn notify(&mut self, id: SocketId, state: TcpState, prev: TcpState, cause: Cause) {
        let Some(Socket::Tcp(c)) = self.sockets.get_mut(id) else {
            return;
        };
        if c.phase == Phase::Owned && (cause == Cause::Ingress || state != prev) && !c.event_queued
        {
            c.event_queued = true;
            self.events.push_back(Event::Tcp(TcpHandle(id)));
        }
    }

    /// The user timeout (RFC 9293 §3.8.4): outstanding data, SYN or FIN
    /// with no progress for `user_timeout` aborts the connection. Returns
    /// when it would fire.
    fn user_timeout(
        &mut self,
        id: SocketId,
        state: TcpState,
        prev: TcpState,
    ) -> ControlFlow<(), Option<Instant>> {
        let (now, limit) = (self.now, self.config.user_timeout);
        let c = tcp_in(&mut self.sockets, id)?;
        let sq = c.socket().send_queue();
        // A closed socket keeps its unsent data but has nothing in flight:
        // timing it out again would mark it dirty forever (found by the
        // demux fuzzer: poll_at stuck at `now`).
        let open = !matches!(state, TcpState::Closed | TcpState::Listen);
        let outstanding = open && sq > 0
            || matches!(
                state,
                TcpState::SynSent
                    | TcpState::SynReceived
                    | TcpState::FinWait1
                    | TcpState::Closing
                    | TcpState::LastAck
            );
        // Data queued on an empty send queue starts a new wait: an idle
        // spell before it was no lack of progress.
        let fresh = sq > 0 && c.last_send_queue == 0;
        if !outstanding || fresh || sq < c.last_send_queue || state != prev {
            c.progress_at = now;
        }
        c.last_send_queue = sq;
        let give_up = limit.filter(|_| outstanding).map(|t| c.progress_at + t);
        if give_up.is_some_and(|t| t <= now) {
            debug!("user timeout {} -> {}", c.key.local, c.key.remote);
            c.error = Some(ConnError::TimedOut);
            c.socket_mut().abort();
            self.counters.tcp_timed_out += 1;
            self.mark_dirty(id);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(give_up)
    }

    /// FIN watchdog. smoltcp 0.14 can lose the retransmission timer of a
    /// FIN: a fast retransmit that finds the send buffer empty resets the
    /// timer to idle, and the FIN is never sent again. Once all data is
    /// acknowledged and only our FIN is outstanding, re-send it ourselves
    /// with exponential backoff until the state moves on. Returns the
    /// watchdog's next deadline.
    fn fin_watchdog(&mut self, id: SocketId, state: TcpState, prev: TcpState) -> Option<Instant> {
        let now = self.now;
        let ControlFlow::Continue(c) = tcp_in(&mut self.sockets, id) else {
            return None;
        };
        let fin_only = c.socket().send_queue() == 0
            && matches!(
                state,
                TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck
            );
        let mut resend = None;
        if !fin_only || state != prev || c.fin_watch.is_none() {
            c.fin_watch = fin_only.then(|| (now + Duration::from_millis(1500), 1500));
        } else if let Some((at, backoff)) = c.fin_watch {
            if at <= now {
                let backoff = (backoff * 2).min(60_000);
                c.fin_watch = Some((now + Duration::from_millis(backoff as u64), backoff));
                resend = Some((c.key, c.peer_ack, c.rcv_nxt(), c.window_field()));
            }
        }
        let next = c.fin_watch.map(|(at, _)| at);
        if let Some((key, seq, ack, window)) = resend {
            debug!("re-sending FIN {} -> {}", key.local, key.remote);
            self.counters.tcp_fin_resent += 1;
            self.emit_segment(&key, seq, ack, TcpControl::Fin, window);
        }
        next
    }

    /// FIN-WAIT-2 timeout (Linux `tcp_fin_timeout`): a released connection
    /// whose FIN is acknowledged waits for the peer's FIN only so long.
    /// Linux moves such an orphan into a TIME-WAIT-like minisocket that
    /// expires after the timeout; ephemera resets it and releases the port,
    /// so a peer still there learns the end at once. Returns when it fires.
    fn fin_wait2_timeout(
        &mut self,
        id: SocketId,
        state: TcpState,
    ) -> ControlFlow<(), Option<Instant>> {
        let (now, timeout) = (self.now, self.config.fin_timeout);
        let c = tcp_in(&mut self.sockets, id)?;
        let orphan = c.phase == Phase::Released && state == TcpState::FinWait2;
        c.orphan_since = orphan.then(|| c.orphan_since.unwrap_or(now));
        let at = c.orphan_since.zip(timeout).map(|(t, d)| t + d);
        if at.is_some_and(|t| t <= now) {
            debug!("FIN-WAIT-2 timeout {} -> {}", c.key.local, c.key.remote);
            c.orphan_since = None;
            c.socket_mut().abort();
            self.counters.tcp_fin_wait2_timeouts += 1;
            self.mark_dirty(id);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(at)
    }

    /// Idle buffers: once both have been empty (and nothing waits out of
    /// order) for `shrink_idle_after`, their pages go back to the kernel.
    /// Returns when that will be, if it is still to come.
    fn shrink_when_idle(&mut self, id: SocketId) -> Option<Instant> {
        let (now, after) = (self.now, self.config.shrink_idle_after);
        let Some(Socket::Tcp(c)) = self.sockets.get_mut(id) else {
            return None;
        };
        let quiet = c.socket().send_queue() == 0 && c.rx_drained();
        if !quiet {
            c.idle_since = None;
            c.shrunk = false;
            return None;
        }
        let after = after.filter(|_| !c.shrunk)?;
        let since = *c.idle_since.get_or_insert(now);
        if since + after > now {
            return Some(since + after);
        }
        if let Some(chunk) = &c.chunk {
            self.buffers.shrink(chunk);
        }
        c.shrunk = true;
        None
    }

    /// Queue the connection under its next deadline: smoltcp's own
    /// (`poll_at`) or the earliest of ours. After an egress round smoltcp
    /// has sent all it could, so "now" can only mean a timer that fired in
    /// the same instant: look again a millisecond later rather than spin.
    fn schedule(&mut self, id: SocketId, cause: Cause, ours: [Option<Instant>; 4]) {
        let now = self.now;
        let Some(Socket::Tcp(c)) = self.sockets.get_mut(id) else {
            return;
        };
        let at = match self.iface.poll_at(now, &c.set) {
            Some(t) if t <= now && cause == Cause::Egress => Some(now + Duration::from_millis(1)),
            other => other,
        };
        match ours.into_iter().chain([at]).flatten().min() {
            Some(t) if t <= now => self.mark_dirty(id),
            Some(t) => {
                if c.scheduled != Some(t) {
                    c.scheduled = Some(t);
                    self.timers.push(t, id);
                }
            }
            None => c.scheduled = None,
        }
    }

    /// Send RST for a connection the application never saw, and free it.
    fn reset_and_free(&mut self, id: SocketId) {
        if let Some(Socket::Tcp(c)) = self.sockets.get_mut(id) {
            c.socket_mut().abort();
            c.phase = Phase::Released;
        }
        self.egress(id);
        if let Some(Socket::Tcp(c)) = self.sockets.get(id) {
            if c.registered {
                let key = c.key;
                self.table.release(&key);
            }
            self.free_tcp(id);
        }
    }

    /// A SYN for a listener: make a half-open connection of its own.
    /// Half-open connections count against the backlog too, so a connection
    /// that completes always finds room in the accept queue; a SYN beyond
    /// the backlog is dropped and counted (the peer retransmits it, RFC 9293
    /// §3.10.7.2). When the half-open limit (`syn_backlog`) is reached, the
    /// oldest half-open connection makes room instead (see
    /// [`evict_oldest_half_open`](Self::evict_oldest_half_open)).
    fn syn_to_listener(&mut self, l: SocketId, key: FlowKey, isn: u32, packet: &[u8]) {
        let Some(Socket::Listener(listener)) = self.sockets.get(l) else {
            return;
        };
        if listener.half_open >= self.config.syn_backlog {
            if !self.evict_oldest_half_open(l) {
                self.counters.drop_syn_queue_full += 1;
                return;
            }
        } else if listener.queue.len() + listener.half_open >= listener.backlog {
            self.counters.drop_accept_queue_full += 1;
            return;
        }
        let Some((mut socket, chunk)) = self.new_tcp_socket() else {
            return;
        };
        let Some(Socket::Listener(listener)) = self.sockets.get_mut(l) else {
            drop(socket);
            self.buffers.release(chunk);
            return;
        };
        listener.half_open += 1;
        socket
            .listen(IpListenEndpoint {
                addr: Some(key.local.ip().into()),
                port: key.local.port(),
            })
            .expect("listening on a non-zero port of ours");
        let id = self.sockets.next_id();
        self.table
            .insert(key, Owner::of(id))
            .expect("lookup found no flow for this 4-tuple");
        let got = self.insert_conn((socket, chunk), key, Phase::HalfOpen(l), Some(isn));
        debug_assert_eq!(got, id);
        if let Some(Socket::Listener(listener)) = self.sockets.get_mut(l) {
            listener.half_open_order.push_back(id);
            // Drop stale ids now and then, so the order stays within twice
            // the half-open limit (amortised O(1) per SYN).
            if listener.half_open_order.len() > 2 * self.config.syn_backlog {
                let mut order = std::mem::take(&mut listener.half_open_order);
                order.retain(|&h| {
                    matches!(self.sockets.get(h), Some(Socket::Tcp(c)) if c.phase == Phase::HalfOpen(l))
                });
                if let Some(Socket::Listener(listener)) = self.sockets.get_mut(l) {
                    listener.half_open_order = order;
                }
            }
        }
        self.ingress(id, packet);
    }

    /// SYN-flood defence: free the listener's oldest half-open connection
    /// silently (no RST: under a flood its peer is usually spoofed, and a
    /// RST would be backscatter). A real client answers a SYN-ACK within
    /// one round trip, so it survives as long as fewer than `syn_backlog`
    /// SYNs arrive per round trip; this is the "SYN cache with oldest-first
    /// eviction" of RFC 4987 §3.3/§3.4, chosen over SYN cookies (§3.6)
    /// because smoltcp cannot build an established socket from a cookie.
    /// Returns whether one was evicted.
    fn evict_oldest_half_open(&mut self, l: SocketId) -> bool {
        let now = self.now;
        loop {
            let Some(Socket::Listener(listener)) = self.sockets.get_mut(l) else {
                return false;
            };
            let Some(&id) = listener.half_open_order.front() else {
                return false;
            };
            let threshold = listener
                .handshake_rtt
                .map_or(MIN_EVICTION_AGE, |r| r.max(MIN_EVICTION_AGE));
            let key = match self.sockets.get(id) {
                Some(Socket::Tcp(c)) if c.phase == Phase::HalfOpen(l) => {
                    // Younger than a typical handshake: likely a burst of
                    // real clients, not a flood. Drop the new SYN instead
                    // (its sender retransmits) rather than reset one of them.
                    if now - c.created < threshold {
                        return false;
                    }
                    c.registered.then_some(c.key)
                }
                _ => {
                    if let Some(Socket::Listener(listener)) = self.sockets.get_mut(l) {
                        listener.half_open_order.pop_front();
                    }
                    continue;
                }
            };
            if let Some(Socket::Listener(listener)) = self.sockets.get_mut(l) {
                listener.half_open_order.pop_front();
            }
            if let Some(key) = key {
                self.table.release(&key);
            }
            self.free_tcp(id);
            if let Some(Socket::Listener(listener)) = self.sockets.get_mut(l) {
                listener.half_open -= 1;
            }
            self.counters.drop_half_open_evicted += 1;
            return true;
        }
    }

    /// A segment no connection owns: a SYN for a listener opens a half-open
    /// connection; anything else is refused with RST (never for a RST).
    fn tcp_without_flow(
        &mut self,
        found: Lookup<Owner>,
        key: &FlowKey,
        seg: &TcpSeg,
        packet: &[u8],
    ) {
        match found {
            Lookup::Bound(l) if seg.is_initial_syn() => {
                self.syn_to_listener(l.id, *key, seg.seq, packet)
            }
            _ => {
                if seg.is_initial_syn() {
                    self.counters.tcp_refused += 1;
                }
                if !seg.rst {
                    self.counters.tcp_rst_sent += 1;
                }
                self.answer_unmatched(packet);
            }
        }
    }

    /// A segment for a 4-tuple in TIME-WAIT. A retransmitted FIN means our
    /// last ACK was lost: ACK it again (RFC 9293 §3.10.7.4). RSTs are
    /// ignored (RFC 1337); anything else is dropped.
    fn time_wait_segment(&mut self, key: &FlowKey, seg: &TcpSeg, packet: &[u8]) {
        // A new connection from a client that reuses its port while our
        // side still holds TIME-WAIT (we closed first): allowed when its
        // ISN lies beyond the old connection, as Linux does (RFC 6191).
        if seg.is_initial_syn() && self.table.reopen_time_wait(key, seg.seq) {
            self.counters.tcp_time_wait_reopened += 1;
            let no_flow = self.table.lookup(key);
            self.tcp_without_flow(no_flow, key, seg, packet);
            return;
        }
        let retransmitted_fin = seg.fin && seg.ack && !seg.rst && !seg.syn;
        if !retransmitted_fin {
            self.counters.drop_time_wait += 1;
            return;
        }
        self.time_wait_ack(key, seg);
    }

    /// ACK `seg` on behalf of a TIME-WAIT record: SEQ is what the peer
    /// acknowledged (our FIN is acked), ACK the end of `seg`, FIN included.
    fn time_wait_ack(&mut self, key: &FlowKey, seg: &TcpSeg) {
        self.emit_segment(
            key,
            seg.ack_number,
            seg.seq.wrapping_add(seg.len + seg.fin as u32),
            TcpControl::None,
            0,
        );
        self.counters.tcp_time_wait_acks += 1;
    }

    /// Blind-attack checks of RFC 5961 that smoltcp 0.14 lacks, on a
    /// synchronized connection:
    /// - a SYN, whatever its sequence number, never resets (§4): answer
    ///   with a challenge ACK;
    /// - a RST resets only if its sequence number is exactly RCV.NXT
    ///   (§3.2); in the window but not exact, a challenge ACK; outside it,
    ///   dropped.
    ///
    /// A challenge ACK is <SEQ=SND.UNA><ACK=RCV.NXT>, at most one a second
    /// per connection, so that a peer that really restarted answers with an
    /// acceptable RST. Returns whether the segment was consumed here.
    fn challenge(&mut self, id: SocketId, key: &FlowKey, seg: &TcpSeg) -> bool {
        let now = self.now;
        let Some(Socket::Tcp(c)) = self.sockets.get_mut(id) else {
            return false;
        };
        if matches!(
            c.socket().state(),
            TcpState::Closed | TcpState::Listen | TcpState::SynSent | TcpState::SynReceived
        ) || c.peer_isn.is_none()
        {
            return false;
        }
        let rcv_nxt = c.rcv_nxt();
        let window = c.rx_free() as u32;
        if seg.rst && !seg.syn {
            let offset = seg.seq.wrapping_sub(rcv_nxt);
            if offset == 0 {
                return false;
            }
            if offset >= window.max(1) {
                self.counters.drop_rst_out_of_window += 1;
                return true;
            }
        }
        self.counters.tcp_challenge_acks += 1;
        if c.challenged_at
            .is_some_and(|t| now < t + Duration::from_secs(1))
        {
            return true;
        }
        c.challenged_at = Some(now);
        let seq = c.peer_ack;
        self.emit_segment(
            key,
            seq,
            rcv_nxt,
            TcpControl::None,
            window.min(0xffff) as u16,
        );
        true
    }

    /// Put a bare segment (no payload) for `key` on the wire, built here
    /// rather than by a socket: the TIME-WAIT ACK and the FIN watchdog.
    fn emit_segment(
        &mut self,
        key: &FlowKey,
        seq: u32,
        ack: u32,
        control: TcpControl,
        window: u16,
    ) {
        let tcp = TcpRepr {
            src_port: key.local.port(),
            dst_port: key.remote.port(),
            control,
            seq_number: TcpSeqNumber(seq as i32),
            ack_number: Some(TcpSeqNumber(ack as i32)),
            window_len: window,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload: &[],
        };
        let ip = IpRepr::new(
            key.local.ip().into(),
            key.remote.ip().into(),
            IpProtocol::Tcp,
            tcp.header_len(),
            64,
        );
        let mut buf = vec![0u8; ip.header_len() + tcp.header_len()];
        ip.emit(&mut buf[..], &ChecksumCapabilities::default());
        let hl = ip.header_len();
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut buf[hl..]),
            &ip.src_addr(),
            &ip.dst_addr(),
            &ChecksumCapabilities::default(),
        );
        self.tx.push_back(buf);
    }

    /// An ICMP error about one of our flows (RFC 1122 §4.2.3.9): a hard
    /// error aborts a connection still in SYN-SENT, or is reported by the
    /// next receive on a UDP socket; soft errors are only counted, as Linux
    /// does for established connections.
    fn icmp_error(&mut self, key: &FlowKey, error: IcmpError) {
        self.counters.icmp_errors += 1;
        if error != IcmpError::Refused {
            return;
        }
        if key.proto == Protocol::Udp {
            if let Some(Owner { id, .. }) = self.table.lookup_bound(Protocol::Udp, key.local) {
                if let Some(Socket::Udp(u)) = self.sockets.get_mut(id) {
                    u.refused = true;
                    if !u.event_queued {
                        u.event_queued = true;
                        self.events.push_back(Event::Udp(UdpHandle(id)));
                    }
                }
            }
            return;
        }
        let Some(Owner { id, .. }) = self.table.flow(key) else {
            return;
        };
        let Some(Socket::Tcp(c)) = self.sockets.get_mut(id) else {
            return;
        };
        if c.socket().state() == TcpState::SynSent {
            c.socket_mut().abort();
            c.error = Some(ConnError::Refused);
            self.counters.tcp_connect_refused += 1;
            self.after_io(id, Cause::Ingress);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tcp_ack_number;

    #[test]
    fn ack_number_of_emitted_segments() {
        let mut v4 = vec![0u8; 40];
        v4[0] = 0x45;
        v4[9] = 6;
        v4[20 + 8..20 + 12].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        assert_eq!(tcp_ack_number(&v4), None, "ACK flag clear");
        v4[20 + 13] = 0x10;
        assert_eq!(tcp_ack_number(&v4), Some(0xdead_beef));
        v4[9] = 17;
        assert_eq!(tcp_ack_number(&v4), None, "UDP");

        let mut v6 = vec![0u8; 60];
        v6[0] = 0x60;
        v6[6] = 6;
        v6[40 + 8..40 + 12].copy_from_slice(&7u32.to_be_bytes());
        v6[40 + 13] = 0x18;
        assert_eq!(tcp_ack_number(&v6), Some(7));
        assert_eq!(tcp_ack_number(&v6[..50]), None, "truncated");
        assert_eq!(tcp_ack_number(&[]), None);
    }
}
