//! The sans-IO stack: packets and time in, packets and deadlines out (see
//! [`Stack`] for a packet's path).
//!
//! This file drives the stack (`handle_packet`, `poll_transmit`,
//! `poll_at`, `poll_event`), moves packets between smoltcp and the
//! sockets, and makes the pass after each event that applies a
//! connection's rules. The rest:
//! - `config`: [`StackConfig`] and its validation;
//! - `budget`: the memory budget and connection limit (Linux's `tcp_mem`):
//!   what each connection's buffers may hold, and what the stack admits;
//! - `tcp`, `udp`: the socket API;
//! - `conn`: one TCP connection and its own rules (user timeout, FIN
//!   watchdog, FIN-WAIT-2 timeout, idle buffers, RFC 5961), each saying
//!   what the stack must do next;
//! - `listener`: SYN handling, the half-open queue, eviction, accept;
//! - `time_wait`: the TIME-WAIT responder;
//! - `link`: the device smoltcp's interface is driven through, and the
//!   queue of packets out;
//! - [`socket_set`]: the slab, socket ids, the timer queue;
//! - `segment`: the TCP headers the stack reads and writes itself.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration as StdDuration;

use log::debug;
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpCidr, TcpControl};

use crate::buffer_pool::BufferPool;
use crate::counters::Counters;
use crate::demux::{self, Checksums, Class, IcmpError, LocalAddrs, TcpSeg};
use crate::error::{ConnError, ConnectError};
use crate::port_table::{FlowKey, Lookup, PortTable, Protocol};
use crate::rng::{Rng, SeededRng};
use budget::Budget;
use conn::{Cause, Ending, Limits, Phase, Reap, Rfc5961, Schedule, TimerVerdict};
use isn::Secrets;
use link::{Addrs, Fix, Link, Packet};
use socket_set::{Slab, Socket, SocketId, TimerQueue};

mod budget;
mod config;
mod conn;
mod isn;
mod link;
mod listener;
mod segment;
mod socket_set;
mod syn_cookies;
mod tcp;
mod time_wait;
#[cfg(test)]
mod tso_tests;
mod udp;

pub use budget::BudgetUse;
pub use config::{
    ConfigError, CongestionControl, StackConfig, SynCookies, UnknownCongestionControl,
};
pub use link::SPARE_TX_BUFFERS;
pub use listener::ListenerHandle;
pub use smoltcp::socket::tcp::State as TcpState;
pub use socket_set::Owner;
pub use tcp::TcpHandle;
pub use udp::UdpHandle;

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

/// A row of [`Stack::snapshot`], like a line of `ss -tuan`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    /// TCP or UDP.
    pub proto: Protocol,
    /// The RFC 9293 state (`LISTEN`, `ESTABLISHED`, `TIME-WAIT`, …), or
    /// for UDP `UNCONN` (bound) or `ESTAB` (connected), as `ss` says.
    pub state: SocketState,
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

/// The state of a row of [`Stack::snapshot`]. It displays as `ss` prints
/// it, with RFC 9293's names (`LISTEN`, `SYN-SENT`, `TIME-WAIT`, …, and
/// `UNCONN`), and compares equal to that name.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SocketState {
    /// A TCP listener (`Listen`), connection, or TIME-WAIT record.
    Tcp(TcpState),
    /// A bound UDP socket.
    Unconnected,
    /// A connected UDP socket (`ss` says `ESTAB`).
    Connected,
}

impl SocketState {
    /// The name `ss` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketState::Unconnected => "UNCONN",
            SocketState::Connected => "ESTAB",
            SocketState::Tcp(s) => match s {
                TcpState::Closed => "CLOSED",
                TcpState::Listen => "LISTEN",
                TcpState::SynSent => "SYN-SENT",
                TcpState::SynReceived => "SYN-RECEIVED",
                TcpState::Established => "ESTABLISHED",
                TcpState::FinWait1 => "FIN-WAIT-1",
                TcpState::FinWait2 => "FIN-WAIT-2",
                TcpState::CloseWait => "CLOSE-WAIT",
                TcpState::Closing => "CLOSING",
                TcpState::LastAck => "LAST-ACK",
                TcpState::TimeWait => "TIME-WAIT",
            },
        }
    }
}

impl std::fmt::Display for SocketState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for SocketState {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

/// The stack: packets and time in, packets and deadlines out.
///
/// ```text
///  bytes ─▶ handle_packet ─▶ demux::classify_with ─▶ PortTable::lookup ─┬─▶ connection's 1-socket set ─▶ smoltcp
///                                                                       ├─▶ TIME-WAIT record: ACK a FIN
///                                                                       ├─▶ listener: new half-open conn
///                                                                       └─▶ nothing: smoltcp RST / ICMP unreachable
///  poll_transmit ◀─ tx queue ◀─ smoltcp egress ◀─ dirty list + timer queue
/// ```
///
/// The stack never reads a clock or touches a file descriptor: the driver
/// (TUN loop, virtual link, test) passes `now` in and moves the bytes.
pub struct Stack {
    link: Link,
    addrs: Vec<IpCidr>,
    table: PortTable<Owner>,
    sockets: Slab<Socket>,
    dirty: Vec<SocketId>,
    timers: TimerQueue,
    events: VecDeque<Event>,
    counters: Counters,
    config: StackConfig,
    limits: Limits,
    /// The memory budget and connection limit, and what they hold.
    budget: Budget,
    rng: SeededRng,
    /// The keys behind our initial sequence numbers and SYN cookies.
    secrets: Secrets,
    now: Instant,
    /// Declared after `sockets`, so it outlives every socket in it.
    buffers: BufferPool,
}

fn since_epoch(t: Instant) -> StdDuration {
    StdDuration::from_micros(t.total_micros().max(0) as u64)
}

fn from_std(d: StdDuration) -> Instant {
    Instant::from_micros(d.as_micros() as i64)
}

/// How late past its 2·MSL a TIME-WAIT record may end ([`Stack::poll_at`]):
/// records that end within this span of each other go in one wake-up.
/// 2·MSL is a lower bound (RFC 9293 §3.6.1); Linux reaps its TIME-WAIT
/// sockets in timer-wheel slots too.
pub const TIME_WAIT_BATCH: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(100);

/// A packet for the wire, from
/// [`Stack::poll_transmit_offload`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The IP packet.
    pub packet: Vec<u8>,
    /// With [`StackConfig::tcp_segmentation_offload`], set on a TCP
    /// segment that carries more than one MSS of payload: the device is
    /// to cut it into segments of this many payload octets (the last may
    /// be shorter) as Linux's `tcp_gso_segment` does: headers copied to
    /// each, SEG.SEQ advanced, FIN and PSH only on the last, each
    /// segment's IP length, IPv4 identification (counting up) and header
    /// checksum, and each TCP checksum computed (the packet's is left to
    /// the device). A TUN takes it as it is behind a virtio-net header
    /// with `VIRTIO_NET_HDR_GSO_TCPV4`/`TCPV6` and this `gso_size`.
    pub gso_size: Option<NonZeroU16>,
}

impl Transmit {
    /// A packet to send as it is.
    pub(crate) fn whole(packet: Vec<u8>) -> Transmit {
        Transmit {
            packet,
            gso_size: None,
        }
    }

    /// How many segments cutting at `size` makes: the TCP payload over
    /// `size`, rounded up (at least one).
    fn segments(&self, size: NonZeroU16) -> usize {
        let payload =
            crate::wire::TcpView::parse(&self.packet[..]).map_or(0, |v| v.payload().len());
        payload.div_ceil(usize::from(size.get())).max(1)
    }
}

impl Stack {
    /// A stack with the given addresses and limits, starting at time `now`.
    pub fn new(config: StackConfig, now: Instant) -> Result<Stack, ConfigError> {
        let cidrs = config.validate()?;
        let mut rng = match config.seed {
            Some(seed) => SeededRng::new(seed),
            None => SeededRng::from_entropy(),
        };
        let table = PortTable::new(config.ports.clone(), &mut rng).map_err(ConfigError::Ports)?;

        let seed = rng.next_u64();
        let link = Link::new(
            config.mtu,
            config.tcp_checksum_offload,
            config.tcp_segmentation_offload,
            &cidrs,
            seed,
            now,
        );
        // smoltcp's ISNs never reach the wire (the sequence offset hides
        // them), so the draw that seeds its generator can seed the
        // sequence-number keys too, through a generator of another kind;
        // the stack's own stream, whose draws pick ports, stays as it was.
        let secrets = Secrets::new(&mut SeededRng::new(seed ^ 0x6528_4987_6528_4987));
        // `validate` checked the sizes; the pool checks them again.
        let buffers =
            BufferPool::new(config.tcp_rx_buffer, config.tcp_tx_buffer).map_err(|_| {
                ConfigError::TooLarge {
                    what: "TCP buffers",
                    size: config.tcp_rx_buffer.max(config.tcp_tx_buffer),
                    max: crate::buffer_pool::MAX_BUFFER,
                }
            })?;
        Ok(Stack {
            link,
            addrs: cidrs,
            table,
            sockets: Slab::default(),
            dirty: Vec::new(),
            timers: TimerQueue::default(),
            events: VecDeque::new(),
            counters: Counters::default(),
            limits: config.limits(),
            budget: Budget::new(config.max_memory, config.max_connections),
            config,
            rng,
            secrets,
            now,
            buffers,
        })
    }

    // ---- sans-IO driving ---------------------------------------------------

    /// Take in one IP packet received at `now`.
    pub fn handle_packet(&mut self, now: Instant, packet: &[u8]) {
        self.handle(now, Packet::Shared(packet), Checksums::Verify);
    }

    /// [`handle_packet`](Self::handle_packet) for a packet whose device
    /// vouches for its TCP or UDP checksum, which is then not checked
    /// (and may be partial): what a TUN's receive offload hands on from
    /// a kernel that built the packet or checked it (see
    /// docs/architecture.md). Give anything else to `handle_packet`.
    pub fn handle_vouched_packet(&mut self, now: Instant, packet: &[u8]) {
        self.handle(now, Packet::Shared(packet), Checksums::Vouched);
    }

    /// [`handle_packet`](Self::handle_packet) for a driver that owns its
    /// receive buffer: the stack may change the packet in place (a TCP
    /// segment's acknowledgment number moves into the sequence space its
    /// connection has inside smoltcp, see `docs/architecture.md`), which
    /// saves copying it. What the buffer holds afterwards is unspecified.
    pub fn handle_packet_mut(&mut self, now: Instant, packet: &mut [u8]) {
        self.handle(now, Packet::Mut(packet), Checksums::Verify);
    }

    /// [`handle_vouched_packet`](Self::handle_vouched_packet) for a driver
    /// that owns its receive buffer, as
    /// [`handle_packet_mut`](Self::handle_packet_mut) is for
    /// `handle_packet`.
    pub fn handle_vouched_packet_mut(&mut self, now: Instant, packet: &mut [u8]) {
        self.handle(now, Packet::Mut(packet), Checksums::Vouched);
    }

    fn handle(&mut self, now: Instant, input: Packet<'_>, checksums: Checksums) {
        let packet = input.bytes();
        self.now = now;
        self.counters.packets_in += 1;
        let class = match demux::classify_with(packet, &Addrs(&self.addrs), checksums) {
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
                    self.tcp_segment(owner.id, &key, &seg, input);
                }
                Lookup::TimeWait => self.time_wait_segment(&key, &seg, packet),
                no_flow => self.tcp_without_flow(no_flow, &key, &seg, packet),
            },
            Class::Udp { key, len } => self.udp_datagram(&key, len, packet),
            Class::IcmpError { key, error, seq } => self.icmp_error(&key, error, seq),
            Class::Icmp => {
                self.counters.icmp_other += 1;
                self.link.answer_unmatched(now, packet);
            }
            Class::OtherProtocol => {
                self.counters.other_protocol += 1;
                self.link.answer_unmatched(now, packet);
            }
        }
    }

    /// The next packet to put on the wire at `now`, if any. Runs due timers
    /// and flushes sockets with pending output first.
    ///
    /// With [`StackConfig::tcp_segmentation_offload`] a TCP segment may be
    /// larger than the MTU, for the device to cut: a driver that does
    /// takes packets with
    /// [`poll_transmit_offload`](Self::poll_transmit_offload), which says
    /// at what size.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.poll_transmit_offload(now).map(|t| t.packet)
    }

    /// [`poll_transmit`](Self::poll_transmit), with the segment size at
    /// which the device is to cut a TCP segment larger than the MTU
    /// ([`Transmit::gso_size`]).
    pub fn poll_transmit_offload(&mut self, now: Instant) -> Option<Transmit> {
        self.now = now;
        if self.link.tx.is_empty() {
            self.table.expire(since_epoch(now));
            while let Some((at, id)) = self.timers.pop_due(now) {
                if let Some(c) = self.sockets.tcp_mut(id) {
                    if c.scheduled == Some(at) {
                        c.scheduled = None;
                        c.mark_dirty(id, &mut self.dirty);
                    }
                }
            }
            let dirty = std::mem::take(&mut self.dirty);
            for id in dirty {
                self.egress(id);
            }
        }
        let Some(t) = self.link.tx.pop_front() else {
            // Nothing left to send: drop the stale deadlines of sockets
            // freed or rescheduled, so that `poll_at` does not wake the
            // driver for them (after a burst of short connections, one
            // wake-up a millisecond for seconds).
            let sockets = &self.sockets;
            self.timers
                .prune(|at, id| sockets.tcp(id).is_some_and(|c| c.scheduled == Some(at)));
            return None;
        };
        self.counters.packets_out += 1;
        if let Some(size) = t.gso_size {
            self.counters.tso_packets_out += 1;
            self.counters.tso_segments_out += t.segments(size) as u64;
        }
        Some(t)
    }

    /// Give back the buffer of a packet from
    /// [`poll_transmit_offload`](Self::poll_transmit_offload) (or
    /// [`poll_transmit`](Self::poll_transmit)) once it is written, so that a
    /// later packet is built in it: a driver that does saves an allocation
    /// per packet and, for large TCP packets, the page faults of memory the
    /// allocator returned to the kernel in between. Optional. The stack
    /// keeps at most [`SPARE_TX_BUFFERS`] (of at most 64 KiB each) and frees
    /// the rest (counted as `tx_buffers_freed`); a reused buffer is zeroed
    /// before it is filled.
    pub fn recycle(&mut self, packet: Vec<u8>) {
        if !self.link.spare.give(packet) {
            self.counters.tx_buffers_freed += 1;
        }
    }

    /// Whether the device is left the TCP checksums of what the stack
    /// sends ([`StackConfig::tcp_checksum_offload`], or segmentation
    /// offload, which implies it).
    pub(crate) fn tcp_checksum_offload(&self) -> bool {
        self.config.tcp_checksum_offload || self.config.tcp_segmentation_offload
    }

    /// When [`poll_transmit`](Self::poll_transmit) next has work, if ever.
    /// May be early (harmless), never late. TIME-WAIT records end in
    /// batches, up to [`TIME_WAIT_BATCH`] after their 2·MSL: after a burst
    /// of closes the driver wakes ten times a second for them, not once
    /// per record.
    #[must_use]
    pub fn poll_at(&self) -> Option<Instant> {
        if !self.link.tx.is_empty() || !self.dirty.is_empty() {
            return Some(self.now);
        }
        let tw = self
            .table
            .next_expiry()
            .map(|t| from_std(t) + TIME_WAIT_BATCH);
        match (self.timers.peek(), tw) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next application event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front()?;
        let queued = match ev {
            Event::Incoming(ListenerHandle(id)) => {
                self.sockets.listener_mut(id).map(|l| &mut l.event_queued)
            }
            Event::Tcp(TcpHandle(id)) => self.sockets.tcp_mut(id).map(|c| &mut c.event_queued),
            Event::Udp(UdpHandle(id)) => self.sockets.udp_mut(id).map(|u| &mut u.event_queued),
        };
        if let Some(queued) = queued {
            *queued = false;
        }
        Some(ev)
    }

    /// The stack's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The port table, read-only, for inspection: binds, flows, TIME-WAIT
    /// records, ports in use; each entry's [`Owner`] is one of our sockets.
    pub fn port_table(&self) -> &PortTable<Owner> {
        &self.table
    }

    /// The time last passed in.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Draw new keys for our initial sequence numbers (RFC 6528) and SYN
    /// cookies from the stack's RNG. Connections already open keep their
    /// numbers; a 4-tuple opened again after the rotation starts from an
    /// unrelated ISN, as after a restart. Cookies sent under the previous
    /// key stay valid for their lifetime, those from before it do not. For
    /// a long-running stack, now and then (Linux never rotates, OpenBSD
    /// every few minutes).
    pub fn rotate_sequence_keys(&mut self) {
        self.secrets.rotate(&mut self.rng);
    }

    // ---- inspection ----------------------------------------------------

    /// Every socket and TIME-WAIT record, like `ss -tuan`. O(sockets): for
    /// display, never on the packet path.
    pub fn snapshot(&self) -> Vec<SocketInfo> {
        let age = |t: Instant| since_epoch(self.now).saturating_sub(since_epoch(t));
        let mut rows = Vec::new();
        // Connections in TIME-WAIT that the application still holds: their
        // 4-tuple is listed once, as the TIME-WAIT record, with the bytes
        // left to read (as `ss` shows a TIME-WAIT socket's Recv-Q).
        let mut unread = std::collections::BTreeMap::new();
        for (_, s) in self.sockets.iter() {
            if let Socket::Tcp(c) = s {
                if c.detached {
                    unread.insert(c.key, (c.socket().recv_queue(), c.created));
                    continue;
                }
            }
            rows.push(match s {
                Socket::Listener(l) => SocketInfo {
                    proto: Protocol::Tcp,
                    state: SocketState::Tcp(TcpState::Listen),
                    local: l.local,
                    remote: None,
                    recv_queue: l.queue.len(),
                    send_queue: l.backlog,
                    age: age(l.created),
                },
                Socket::Tcp(c) => SocketInfo {
                    proto: Protocol::Tcp,
                    state: SocketState::Tcp(c.socket().state()),
                    local: c.key.local,
                    remote: Some(c.key.remote),
                    recv_queue: c.socket().recv_queue(),
                    send_queue: c.socket().send_queue(),
                    age: age(c.created),
                },
                Socket::Udp(u) => SocketInfo {
                    proto: Protocol::Udp,
                    state: match u.flow {
                        Some(_) => SocketState::Connected,
                        None => SocketState::Unconnected,
                    },
                    local: u.local(),
                    remote: u.peer(),
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
                state: SocketState::Tcp(TcpState::TimeWait),
                local: key.local,
                remote: Some(key.remote),
                recv_queue: unread.remove(&key).map_or(0, |(n, _)| n),
                send_queue: 0,
                age: tw.saturating_sub(left),
            });
        }
        // Held past their record (2·MSL over, or never recorded): closed
        // on the wire, with data still to read.
        for (key, (n, created)) in unread {
            rows.push(SocketInfo {
                proto: key.proto,
                state: SocketState::Tcp(TcpState::Closed),
                local: key.local,
                remote: Some(key.remote),
                recv_queue: n,
                send_queue: 0,
                age: age(created),
            });
        }
        rows
    }

    /// Number of sockets (connections, listeners, UDP) alive in the slab.
    pub fn socket_count(&self) -> usize {
        self.sockets.len()
    }

    /// Resident bytes of all TCP buffers, as the kernel reports them
    /// (`mincore(2)` over the buffer mappings: O(mapped pages), for
    /// measurements and tests).
    pub fn buffer_resident_bytes(&self) -> usize {
        self.buffers.resident_bytes()
    }

    /// The memory budget and connection limit, and their use now (see
    /// `StackConfig::max_memory`).
    pub fn budget(&self) -> BudgetUse {
        self.budget.usage()
    }

    /// Verify that the port table, the slab and the queues agree. For
    /// tests and fuzzers; O(sockets).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.table.check_invariants()?;
        self.counters.check_accounting()?;
        let mut live = 0;
        let mut tcp = 0;
        // Per listener: connections half-open on it, and queued on it.
        let mut spawned: std::collections::HashMap<SocketId, (usize, usize)> = Default::default();
        for (id, s) in self.sockets.iter() {
            match s {
                Socket::Tcp(c) => {
                    tcp += 1;
                    if c.registered {
                        live += 1;
                        if self.table.flow(&c.key).map(|o| o.id) != Some(id) {
                            return Err(format!("{:?} registered but not in the table", c.key));
                        }
                    }
                    match c.phase {
                        Phase::HalfOpen(l) => spawned.entry(l).or_default().0 += 1,
                        Phase::Queued(l) => spawned.entry(l).or_default().1 += 1,
                        Phase::Owned | Phase::Released => {}
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
                    // So a connection that completes its handshake always
                    // finds room in the accept queue.
                    if l.half_open + l.queue.len() > l.backlog {
                        return Err(format!(
                            "listener {}: {} half-open + {} queued over backlog {}",
                            l.local,
                            l.half_open,
                            l.queue.len(),
                            l.backlog
                        ));
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
                    if u.bind.is_none() && u.flow.is_none() {
                        return Err("UDP socket neither bound nor connected".into());
                    }
                    if let Some(bind) = u.bind {
                        if self.table.lookup_bound(Protocol::Udp, bind).map(|o| o.id) != Some(id) {
                            return Err(format!("UDP socket {bind} not bound"));
                        }
                    }
                    if let Some(key) = u.flow {
                        live += 1;
                        if self.table.flow(&key).map(|o| o.id) != Some(id) {
                            return Err(format!("connected UDP socket {key:?} not in the table"));
                        }
                    }
                }
            }
        }
        for (id, l) in self.sockets.iter().filter_map(|(id, s)| match s {
            Socket::Listener(l) => Some((id, l)),
            _ => None,
        }) {
            let (half_open, queued) = spawned.get(&id).copied().unwrap_or_default();
            if (half_open, queued) != (l.half_open, l.queue.len()) {
                return Err(format!(
                    "listener {} counts {} half-open and {} queued, has {half_open} and {queued}",
                    l.local,
                    l.half_open,
                    l.queue.len()
                ));
            }
        }
        if tcp != self.buffers.leased() {
            return Err(format!(
                "{tcp} TCP sockets but {} buffer chunks leased",
                self.buffers.leased()
            ));
        }
        let chunks = || {
            self.sockets.iter().filter_map(|(_, s)| match s {
                Socket::Tcp(c) => Some(c.chunk.as_ref().map_or(0, |ch| ch.residual_pages())),
                _ => None,
            })
        };
        self.buffers.check(chunks())?;
        self.budget.check(
            self.sockets.iter().filter_map(|(_, s)| match s {
                Socket::Tcp(c) => Some((c.view().rings(), c.mem.charge)),
                _ => None,
            }),
            self.buffers.residual_pages(),
            self.buffers.warm_pages(),
        )?;
        // The charge is an upper bound of what the kernel backs.
        let resident = self.buffers.resident_bytes();
        if resident > self.budget.usage().charged {
            return Err(format!(
                "{resident} octets of buffers resident, {} charged",
                self.budget.usage().charged
            ));
        }
        if live != self.table.live_flows() {
            return Err(format!(
                "{live} registered connections and connected UDP sockets but {} live flows",
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

    /// A segment for a live connection: the RFC 5961 checks, the sequence
    /// numbers the stack tracks, then smoltcp, then the pass.
    #[inline]
    fn tcp_segment(&mut self, id: SocketId, key: &FlowKey, seg: &TcpSeg, packet: Packet<'_>) {
        let now = self.now;
        let Some(c) = self.sockets.tcp_mut(id) else {
            return;
        };
        let v = c.view();
        if seg.syn || seg.rst {
            match c.seq.challenge(now, &v, seg) {
                Rfc5961::Accept => {}
                Rfc5961::DropOutOfWindow => {
                    self.counters.drop_rst_out_of_window += 1;
                    return;
                }
                Rfc5961::Challenge(ack) => {
                    self.counters.tcp_challenge_acks += 1;
                    if let Some(ack) = ack {
                        self.link.emit(key, &ack);
                    }
                    return;
                }
            }
        }
        let strip_fin = seg.fin && c.seq.fin_beyond_window(&v, seg.seq, seg.len);
        let bare_ack = seg.ack && seg.len == 0 && !(seg.syn || seg.fin || seg.rst);
        let rewound_at = bare_ack
            .then(|| c.seq.rewound_ack_at(&v, seg.seq, seg.ack_number))
            .flatten();
        // The memory budget charges what this segment may store; octets on
        // pages the connection may not hold now (memory pressure) are
        // dropped, and the peer sends them again, as after a loss.
        let mut strip_payload = false;
        if seg.len > 0 {
            let fin = seg.fin && !strip_fin;
            if let Some(end) = c.seq.store_end(&v, seg.seq, seg.len, seg.syn, fin) {
                let rings = v.rings();
                let m = &mut c.mem;
                let want = m.charge_for(rings, c.seq.peer_isn, end, m.tx_written);
                if want > m.charge {
                    if self.budget.allows(rings, m.charge, want) {
                        self.budget.recharge(rings, m.charge, want);
                        m.charge = want;
                    } else {
                        self.counters.drop_data_memory_pressure += 1;
                        strip_payload = true;
                    }
                }
            }
        }
        let knew_isn = c.seq.peer_isn.is_some();
        c.seq.note_segment(
            &v,
            seg.seq,
            if strip_payload { 0 } else { seg.len },
            // smoltcp refuses a SYN with RST.
            seg.syn && !seg.rst,
            seg.fin && !strip_fin && !strip_payload,
            seg.ack.then_some(seg.ack_number),
        );
        // The peer's ISN places its data in the ring.
        if !knew_isn {
            if let Some(isn) = c.seq.peer_isn {
                c.mem.rx_base = isn.wrapping_add(1);
                self.table.set_owner(key, c.owner(id));
            }
        }
        // smoltcp 0.14 accepts the FIN of a segment it trims to the receive
        // window, ending the stream before the data that did not fit (found
        // by the stack_pair fuzzer): such a FIN is cleared here, and the
        // peer sends it again with the rest (RFC 9293 §3.10.7.4: a FIN
        // beyond the window is not processed).
        // A bare ACK from a peer whose SND.NXT went back is taken at
        // RCV.NXT, so that its ACK counts (`SeqTrack::rewound_ack_at`).
        let rewind = if strip_fin {
            self.counters.tcp_fin_beyond_window += 1;
            None
        } else {
            rewound_at
        };
        if rewind.is_some() {
            self.counters.tcp_rewound_acks += 1;
        }
        self.link.tcp_ingress(
            now,
            c,
            packet,
            seg,
            Fix {
                strip_fin,
                rewind,
                strip_payload,
            },
            &self.secrets,
        );
        c.mark_dirty(id, &mut self.dirty);
        self.after_io(id, Cause::Ingress);
        // This segment moved a connection into TIME-WAIT and its socket is
        // gone (or detached, the application still reading), with
        // smoltcp's (delayed) ACK of it unsent: send that ACK from the
        // record. (While the socket lives there is no record to look for.)
        let gone = self.sockets.tcp(id).is_none_or(|c| c.detached);
        if !seg.rst && gone && self.table.lookup(key) == Lookup::TimeWait {
            self.time_wait_ack(key, seg);
        }
    }

    /// Hand a segment (`packet`, classified as `seg`) to the TCP
    /// connection `id` without the stack's checks, then run the pass.
    fn ingress(&mut self, id: SocketId, seg: &TcpSeg, packet: &[u8]) {
        let Some(c) = self.sockets.tcp_mut(id) else {
            return;
        };
        let packet = Packet::Shared(packet);
        self.link
            .tcp_ingress(self.now, c, packet, seg, Fix::default(), &self.secrets);
        c.mark_dirty(id, &mut self.dirty);
        self.after_io(id, Cause::Ingress);
    }

    /// Flush one socket's output (and its due timers).
    fn egress(&mut self, id: SocketId) {
        let now = self.now;
        match self.sockets.get_mut(id) {
            Some(Socket::Tcp(c)) => {
                c.dirty = false;
                if !c.detached {
                    self.link.tcp_egress(now, c, &self.secrets);
                }
                self.after_io(id, Cause::Egress);
            }
            Some(Socket::Udp(u)) => {
                u.dirty = false;
                self.link.egress(now, &mut u.set);
            }
            _ => {}
        }
    }

    /// The pass after whatever the last ingress, egress or call did to a
    /// TCP connection: its rules (see `conn`) say, step by step, what
    /// must happen, and the stack does it; a step that frees or aborts the
    /// connection ends the pass.
    fn after_io(&mut self, id: SocketId, cause: Cause) {
        let now = self.now;
        let Some(c) = self.sockets.tcp_mut(id) else {
            return;
        };
        let v = c.view();
        let (prev, ending) = c.observe(v.state, cause);
        match ending {
            Some(Ending::Refused) => self.counters.tcp_connect_refused += 1,
            Some(Ending::Reset) => self.counters.tcp_reset_by_peer += 1,
            Some(Ending::TimedOut) => self.counters.tcp_timed_out += 1,
            Some(Ending::Closed) => self.counters.tcp_closed += 1,
            None => {}
        }
        let c = match c.handshake(v.state) {
            None => c,
            Some((l, outcome)) => {
                let took = (!c.from_cookie).then(|| now - c.created);
                if !self.settle_half_open(id, l, outcome, took) {
                    return;
                }
                let Some(c) = self.sockets.tcp_mut(id) else {
                    return;
                };
                c
            }
        };
        match c.reap(&v, cause) {
            Reap::Keep => {}
            Reap::TimeWait {
                owed_ack,
                record,
                free,
            } => {
                let key = c.key;
                // Brought here by the peer's segment, its ACK goes from
                // the record once the segment is through; if no record is
                // kept (TIME-WAIT skipped), it goes from here.
                let unrecorded = (cause == Cause::Ingress && owed_ack.is_none())
                    .then(|| c.seq.segment(&v, TcpControl::None));
                if !free {
                    c.detach();
                    if c.wants_event(v.state, prev, cause) {
                        self.events.push_back(Event::Tcp(TcpHandle(id)));
                    }
                }
                self.enter_time_wait(id, &key, owed_ack, record, unrecorded, free);
                return;
            }
            Reap::Closed { release, free } => {
                if release {
                    self.table.release(&c.key);
                }
                if free {
                    self.free_tcp(id);
                    return;
                }
            }
        }
        // An application call only reaps: its deadlines are left to the
        // egress pass it scheduled. A detached connection has none.
        if cause == Cause::App || c.detached {
            return;
        }
        if c.wants_event(v.state, prev, cause) {
            self.events.push_back(Event::Tcp(TcpHandle(id)));
        }
        let released = c.phase == Phase::Released;
        let rx_drained = c.seq.rx_drained(&v);
        // Under memory pressure idle buffers go back as soon as they are
        // empty.
        let mut limits = self.limits;
        if self.budget.under_pressure() {
            if self.buffers.warm_chunks() > 0 {
                let n = self.buffers.drain_warm();
                self.counters.tcp_buffers_warm_drained += n as u64;
                self.budget
                    .set_pool(self.buffers.residual_pages(), self.buffers.warm_pages());
            }
            if limits.shrink_idle_after.is_some() {
                limits.shrink_idle_after = Some(smoltcp::time::Duration::ZERO);
            }
        }
        let ours = match c.timers.check(now, &limits, &v, prev, released, rx_drained) {
            TimerVerdict::UserTimeout => {
                debug!("user timeout {} -> {}", c.key.local, c.key.remote);
                c.error = Some(ConnError::TimedOut);
                c.socket_mut().abort();
                self.counters.tcp_timed_out += 1;
                c.mark_dirty(id, &mut self.dirty);
                return;
            }
            TimerVerdict::FinWait2Timeout => {
                debug!("FIN-WAIT-2 timeout {} -> {}", c.key.local, c.key.remote);
                c.socket_mut().abort();
                self.counters.tcp_fin_wait2_timeouts += 1;
                c.mark_dirty(id, &mut self.dirty);
                return;
            }
            TimerVerdict::Keep {
                resend_fin,
                shrink,
                next,
            } => {
                if resend_fin {
                    debug!("re-sending FIN {} -> {}", c.key.local, c.key.remote);
                    self.counters.tcp_fin_resent += 1;
                    self.link.emit(&c.key, &c.seq.segment(&v, TcpControl::Fin));
                }
                if let (true, Some(chunk)) = (shrink, &mut c.chunk) {
                    self.buffers.shrink(chunk);
                    self.budget
                        .set_pool(self.buffers.residual_pages(), self.buffers.warm_pages());
                    self.budget.recharge(v.rings(), c.mem.charge, 0);
                    c.mem.shrunk(c.seq.rcv_nxt(&v));
                    // A send the budget cut short may go on now.
                    if std::mem::take(&mut c.send_blocked)
                        && c.phase == Phase::Owned
                        && !c.event_queued
                    {
                        c.event_queued = true;
                        self.events.push_back(Event::Tcp(TcpHandle(id)));
                    }
                }
                next
            }
        };
        let smoltcp = self.link.iface.poll_at(now, &c.set);
        match c.schedule(now, cause, ours, smoltcp) {
            Schedule::Now => c.mark_dirty(id, &mut self.dirty),
            Schedule::Queue(at) => self.timers.push(at, id),
            Schedule::Unchanged => {}
        }
    }

    /// An ICMP error about one of our flows (RFC 1122 §4.2.3.9): a hard
    /// error aborts a connection still in SYN-SENT, or is reported by the
    /// next receive on a UDP socket; soft errors are only counted, as Linux
    /// does for established connections. A hard error about a connection
    /// counts only if it quotes our SYN (`seq` = ISS: the only sequence
    /// number in flight, RFC 5927 §4.1), which a blind attacker who knows
    /// the 4-tuple must guess.
    fn icmp_error(&mut self, key: &FlowKey, error: IcmpError, seq: Option<u32>) {
        self.counters.icmp_errors += 1;
        if error != IcmpError::Refused {
            return;
        }
        if key.proto == Protocol::Udp {
            self.udp_refused(key);
            return;
        }
        let Some(Owner { id, .. }) = self.table.flow(key) else {
            return;
        };
        let Some(c) = self.sockets.tcp_mut(id) else {
            return;
        };
        if c.socket().state() == TcpState::SynSent {
            if seq.is_none() || seq != c.seq.offset.iss() {
                self.counters.drop_icmp_out_of_window += 1;
                return;
            }
            c.socket_mut().abort();
            c.error = Some(ConnError::Refused);
            self.counters.tcp_connect_refused += 1;
            self.after_io(id, Cause::Ingress);
        }
    }
}
