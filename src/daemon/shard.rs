//! One stack shard of `ephemera up`: a TUN queue, the `Stack` and the
//! services it feeds, and the poll loop that drives them. With
//! `--queues 1` there is one shard, on the main thread, and this is the
//! whole daemon; with N queues there are N shards, shard *i* on queue *i*,
//! each on its own thread, sharing nothing but their inboxes, the pcap
//! writer and the start of the clock.
//!
//! **Ownership.** Every flow belongs to one shard ([`Shards::owner`]): the
//! steering program puts its packets on that shard's queue. A packet read
//! on another queue (flow learning without the program, or a program that
//! disagrees) is counted as misdirected and handed to its owner through
//! the owner's [`Inbox`]: a bounded queue behind a mutex, with an eventfd
//! in the owner's poll set; a full inbox is a counted drop, as a full link
//! would be.
//!
//! **Shard 0 leads.** It reads what no shard owns (echo requests,
//! fragments: the program puts them on queue 0), serves the control socket
//! and runs `ephemera fetch`, and catches SIGINT/SIGTERM. For `ports` and
//! `--stats` it asks every other shard for its view through their inboxes
//! and answers once all have replied, without waiting in its loop. On a
//! signal it tells every shard to shut down; a shard that fails tells every
//! shard to stop.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, BufWriter};
use std::os::unix::io::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ephemera::device::steering::packet_owner;
use ephemera::device::tun::{self, RxChecksum};
use ephemera::device::{PcapWriter, Tun};
use ephemera::port_table::Shards;
use ephemera::{Instant, Stack};

use super::control::{self, ClientId, ControlServer, Request, Response};
use super::poll;
use super::resolver::EventFd;
use super::services::ControlSink;
use super::services::DaemonServices as Services;
use super::signals::SignalPipe;
use super::table::{counter_map, port_entries, PortEntry};

/// Packets an inbox holds; more are dropped and counted
/// (`handoff_drops`).
pub const INBOX_PACKETS: usize = 4096;
/// Snapshot requests shard 0 has out at once; more are answered "busy".
pub const MAX_GATHERS: usize = control::MAX_CLIENTS;
/// Messages an inbox holds: room for every reply to [`MAX_GATHERS`]
/// snapshots from the most shards, and the shutdown orders.
pub const INBOX_MESSAGES: usize = (MAX_GATHERS + 2) * ephemera::port_table::MAX_SHARDS as usize;
/// How long shard 0 waits for the other shards' views before it answers
/// the control client with an error.
const GATHER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a graceful shutdown waits for connections to close.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// Packets read from the TUN per loop turn, so timers and the control
/// socket are served under a flood too.
const READ_BATCH: usize = 256;

/// The pcap writer all shards write to, with `--pcap`.
pub type SharedPcap = Arc<Mutex<Option<PcapWriter<BufWriter<File>>>>>;

/// What a shard reports about itself for `ports` or `--stats`.
#[derive(Debug)]
pub enum View {
    /// Its sockets, each row naming the shard.
    Ports(Vec<PortEntry>),
    /// Its counters.
    Stats(BTreeMap<String, u64>),
}

/// A message between shards.
#[derive(Debug)]
pub enum Message {
    /// From shard 0: send your view (`ports` if `ports`, else the stats)
    /// back, tagged `tag`.
    Gather {
        /// Names the request at shard 0.
        tag: u64,
        /// The port table, or the counters.
        ports: bool,
    },
    /// To shard 0: a shard's view for gather `tag`.
    View {
        /// The gather it answers.
        tag: u64,
        /// The shard reporting.
        shard: u16,
        /// What the shard reported.
        view: View,
    },
    /// Close connections and exit within [`SHUTDOWN_GRACE`].
    Shutdown,
    /// Exit now: a second signal, or another shard failed.
    Stop,
}

/// What waits in an [`Inbox`].
#[derive(Debug, Default)]
pub(crate) struct Queued {
    /// Packets handed on, with what their checksum is worth.
    pub(crate) packets: VecDeque<(Vec<u8>, RxChecksum)>,
    /// Messages, in order.
    pub(crate) messages: VecDeque<Message>,
}

/// A shard's inbox: packets other shards read for it, and messages;
/// bounded, with an eventfd that is readable while something waits.
#[derive(Debug)]
pub struct Inbox {
    queued: Mutex<Queued>,
    wake: EventFd,
}

impl Inbox {
    /// An empty inbox.
    pub fn new() -> io::Result<Inbox> {
        Ok(Inbox {
            queued: Mutex::new(Queued::default()),
            wake: EventFd::new()?,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        // A shard that panicked holding the lock left whole entries only.
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue a packet; false if the inbox is full.
    pub fn push_packet(&self, packet: Vec<u8>, checksum: RxChecksum) -> bool {
        let mut q = self.lock();
        if q.packets.len() >= INBOX_PACKETS {
            return false;
        }
        q.packets.push_back((packet, checksum));
        drop(q);
        self.wake.signal();
        true
    }

    /// Queue a message; false if the inbox is full.
    pub fn push_message(&self, message: Message) -> bool {
        let mut q = self.lock();
        if q.messages.len() >= INBOX_MESSAGES {
            return false;
        }
        q.messages.push_back(message);
        drop(q);
        self.wake.signal();
        true
    }

    /// Take everything queued; the eventfd is clear until the next push.
    pub(crate) fn take(&self) -> Queued {
        // Cleared before taking: a push after the take signals again.
        self.wake.clear();
        std::mem::take(&mut *self.lock())
    }
}

/// A shard's own counters of packets that reached the wrong queue.
#[derive(Debug, Default, Clone, Copy)]
pub struct HandoffCounters {
    /// Packets read on this shard's queue that another shard owns.
    pub misdirected: u64,
    /// Of those, handed to their owner's inbox.
    pub handoffs: u64,
    /// Of those, dropped because the owner's inbox was full.
    pub handoff_drops: u64,
}

impl HandoffCounters {
    /// The counters by their names in `--stats`.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("misdirected", self.misdirected),
            ("handoffs", self.handoffs),
            ("handoff_drops", self.handoff_drops),
        ]
        .into_iter()
    }
}

/// What the shards share.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The clock's origin: stack time is time since this.
    pub start: std::time::Instant,
    /// The split, with more than one shard.
    pub split: Option<Shards>,
    /// Every shard's inbox, by index.
    pub inboxes: Arc<Vec<Inbox>>,
    /// The capture, with `--pcap`.
    pub pcap: Option<SharedPcap>,
    /// Whether a steering program steers the queues (for `--stats`).
    pub ebpf: bool,
    /// Shards whose loop has not ended: shard 0 stays, serving the
    /// signals and the control socket, until it is the last.
    pub running: Arc<AtomicUsize>,
}

impl Shared {
    /// Tell every shard but `from` to stop now.
    pub fn stop_all(&self, from: u16) {
        for (i, inbox) in self.inboxes.iter().enumerate() {
            if i != usize::from(from) {
                inbox.push_message(Message::Stop);
            }
        }
    }
}

/// Shard 0's extras: the control socket, the signals, and the `ports` or
/// `--stats` requests waiting for the other shards.
#[derive(Debug)]
pub struct Lead {
    /// The control socket.
    pub control: ControlServer,
    /// SIGINT/SIGTERM, as a pollable fd.
    pub signals: SignalPipe,
    gathers: Vec<Gather>,
    next_tag: u64,
}

impl Lead {
    /// Shard 0's extras around `control` and `signals`.
    pub fn new(control: ControlServer, signals: SignalPipe) -> Lead {
        Lead {
            control,
            signals,
            gathers: Vec::new(),
            next_tag: 0,
        }
    }
}

/// A `ports` or `--stats` request waiting for the other shards' views.
#[derive(Debug)]
struct Gather {
    tag: u64,
    client: ClientId,
    waiting: usize,
    since: std::time::Instant,
    ports: Vec<PortEntry>,
    stats: Option<BTreeMap<String, u64>>,
    /// Each shard's own counters as they arrive, for `--stats`.
    by_shard: Vec<(u16, BTreeMap<String, u64>)>,
}

/// Where the other shards' services send fetch answers: nowhere (fetches
/// run on shard 0).
struct NoControl;

impl ControlSink for NoControl {
    fn reply(&mut self, _: ClientId, _: &Response) -> bool {
        false
    }
    fn send_body(&mut self, _: ClientId, _: &[u8]) -> bool {
        false
    }
    fn pending_output(&self, _: ClientId) -> Option<usize> {
        None
    }
    fn finish(&mut self, _: ClientId) {}
}

/// Stack time: time since `start`.
fn since(start: std::time::Instant) -> Instant {
    Instant::from_micros(start.elapsed().as_micros().min(i64::MAX as u128) as i64)
}

/// Write `packet` to the pcap file, if capturing; stop capturing on error.
fn capture(pcap: &Option<SharedPcap>, packet: &[u8]) {
    if let Some(shared) = pcap {
        let mut w = shared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(writer) = w.as_mut() {
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            if let Err(e) = writer.write_packet(wall, packet) {
                log::warn!("pcap: {e}; no longer capturing");
                *w = None;
            }
        }
    }
}

/// One shard: its queue, stack, services, and its share of the rest.
pub struct Shard {
    index: u16,
    tun: Tun,
    stack: Stack,
    services: Services,
    shared: Shared,
    buf: Vec<u8>,
    counters: HandoffCounters,
    lead: Option<Lead>,
    /// Whether the inbox's eventfd may be readable: true until a poll
    /// found it not, so the loop reads and locks the inbox only when
    /// another shard has pushed (the eventfd stays readable until taken).
    inbox_ready: bool,
    /// Whether a descriptor of shard 0's lead (the signal pipe, the
    /// control socket and its clients) may be ready: true until a poll
    /// found none, so a turn tries `accept` and drains the signal pipe
    /// only when there is something to take.
    lead_ready: bool,
}

impl Shard {
    /// Shard `index` on queue `tun`, with `lead` for shard 0.
    pub fn new(
        index: u16,
        tun: Tun,
        stack: Stack,
        services: Services,
        shared: Shared,
        lead: Option<Lead>,
    ) -> Shard {
        Shard {
            index,
            tun,
            stack,
            services,
            shared,
            buf: vec![0u8; tun::MAX_PACKET],
            counters: HandoffCounters::default(),
            lead,
            inbox_ready: true,
            lead_ready: true,
        }
    }

    fn now(&self) -> Instant {
        since(self.shared.start)
    }

    /// Read every queued packet (up to a batch) into the stack, or to the
    /// inbox of the shard that owns it; a super-packet from the kernel
    /// arrives as the segments it carries.
    fn read_tun(&mut self) -> Result<(), String> {
        let Shard {
            index,
            tun,
            stack,
            shared,
            buf,
            counters,
            ..
        } = self;
        for _ in 0..READ_BATCH {
            let now = since(shared.start);
            let r = tun.recv_segments(buf, |packet, checksum| {
                capture(&shared.pcap, packet);
                if let Some(split) = &shared.split {
                    let owner = packet_owner(split, packet);
                    if owner != *index {
                        counters.misdirected += 1;
                        let inbox = &shared.inboxes[usize::from(owner)];
                        if inbox.push_packet(packet.to_vec(), checksum) {
                            counters.handoffs += 1;
                        } else {
                            counters.handoff_drops += 1;
                        }
                        return;
                    }
                }
                match checksum {
                    RxChecksum::Vouched => stack.handle_vouched_packet_mut(now, packet),
                    RxChecksum::Unchecked => stack.handle_packet_mut(now, packet),
                }
            });
            match r {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading {}: {e}", tun.name())),
            }
        }
        Ok(())
    }

    /// Hand application events to the services; true if there were any.
    fn dispatch_events(&mut self) -> bool {
        let mut any = false;
        let mut none = NoControl;
        while let Some(ev) = self.stack.poll_event() {
            any = true;
            let ctl: &mut dyn ControlSink = match &mut self.lead {
                Some(lead) => &mut lead.control,
                None => &mut none,
            };
            self.services.handle_event(&mut self.stack, ev, ctl);
        }
        any
    }

    /// This shard's view for `ports` or `--stats`.
    fn view(&self, ports: bool) -> View {
        view_of(
            self.index,
            &self.stack,
            &self.services,
            &self.tun,
            &self.shared,
            self.counters,
            ports,
        )
    }

    /// Take the packets and messages other shards left; true to stop now.
    fn serve_inbox(&mut self, deadline: &mut Option<std::time::Instant>) -> bool {
        let queued = self.shared.inboxes[usize::from(self.index)].take();
        for (mut packet, checksum) in queued.packets {
            let now = self.now();
            match checksum {
                RxChecksum::Vouched => self.stack.handle_vouched_packet_mut(now, &mut packet),
                RxChecksum::Unchecked => self.stack.handle_packet_mut(now, &mut packet),
            }
        }
        let mut stop = false;
        for message in queued.messages {
            match message {
                Message::Gather { tag, ports } => {
                    let view = self.view(ports);
                    let shard = self.index;
                    if !self.shared.inboxes[0].push_message(Message::View { tag, shard, view }) {
                        log::warn!("shard {}: shard 0's inbox is full", self.index);
                    }
                }
                Message::View { tag, shard, view } => self.gathered(tag, shard, view),
                Message::Shutdown => self.begin_shutdown(deadline),
                Message::Stop => stop = true,
            }
        }
        stop
    }

    /// Close the services' connections; exit once none is left, or at the
    /// deadline.
    fn begin_shutdown(&mut self, deadline: &mut Option<std::time::Instant>) {
        if deadline.is_some() {
            return;
        }
        let mut none = NoControl;
        let ctl: &mut dyn ControlSink = match &mut self.lead {
            Some(lead) => &mut lead.control,
            None => &mut none,
        };
        self.services.shutdown(&mut self.stack, ctl);
        *deadline = Some(std::time::Instant::now() + SHUTDOWN_GRACE);
        self.transmit();
    }

    /// Shard 0: the control socket's requests (its descriptors' I/O if
    /// `ready`), and the resumption of name lookups.
    fn serve_control(&mut self, ready: bool) {
        let Some(lead) = self.lead.as_mut() else {
            let mut none = NoControl;
            self.services.resume(&mut self.stack, &mut none);
            return;
        };
        if ready {
            lead.control.handle_io();
        }
        while let Some((id, req)) = lead.control.poll_request() {
            match req {
                Request::Ports | Request::Stats => {
                    let ports = req == Request::Ports;
                    let others = self.shared.inboxes.len() - 1;
                    if lead.gathers.len() >= MAX_GATHERS {
                        let message = "busy: too many requests in flight".to_string();
                        lead.control.reply(id, &Response::Error { message });
                        continue;
                    }
                    lead.next_tag += 1;
                    let tag = lead.next_tag;
                    for inbox in &self.shared.inboxes[1..] {
                        inbox.push_message(Message::Gather { tag, ports });
                    }
                    let mut gather = Gather {
                        tag,
                        client: id,
                        waiting: others + 1,
                        since: std::time::Instant::now(),
                        ports: Vec::new(),
                        stats: None,
                        by_shard: Vec::new(),
                    };
                    // Our own view, taken here and now.
                    let view = view_of(
                        0,
                        &self.stack,
                        &self.services,
                        &self.tun,
                        &self.shared,
                        self.counters,
                        ports,
                    );
                    merge(&mut gather, 0, view);
                    lead.gathers.push(gather);
                }
                Request::Fetch { url } => {
                    self.services
                        .start_fetch(&mut self.stack, id, &url, &mut lead.control);
                }
            }
        }
        self.answer_gathers();
        // Also takes the answers of name lookups, which the resolver's
        // wake-up descriptor in the poll set woke us for.
        if let Some(lead) = self.lead.as_mut() {
            self.services.resume(&mut self.stack, &mut lead.control);
        }
    }

    /// Shard 0: shard `shard`'s view for gather `tag`.
    fn gathered(&mut self, tag: u64, shard: u16, view: View) {
        let Some(lead) = self.lead.as_mut() else {
            return;
        };
        if let Some(g) = lead.gathers.iter_mut().find(|g| g.tag == tag) {
            merge(g, shard, view);
        }
        self.answer_gathers();
    }

    /// Shard 0: answer the gathers every shard has replied to, and fail
    /// those that waited too long.
    fn answer_gathers(&mut self) {
        let Some(lead) = self.lead.as_mut() else {
            return;
        };
        let shards = self.shared.inboxes.len();
        let ebpf = self.shared.ebpf;
        lead.gathers.retain_mut(|g| {
            let response = if g.waiting == 0 {
                match g.stats.take() {
                    Some(counters) => {
                        stats_response(counters, std::mem::take(&mut g.by_shard), shards, ebpf)
                    }
                    None => Response::Ports {
                        ports: std::mem::take(&mut g.ports),
                    },
                }
            } else if g.since.elapsed() > GATHER_TIMEOUT {
                Response::Error {
                    message: format!("{} shards did not answer", g.waiting),
                }
            } else {
                return true;
            };
            lead.control.reply(g.client, &response);
            false
        });
    }

    fn transmit(&mut self) {
        let now = self.now();
        let mut batch = Vec::new();
        while let Some(t) = self.stack.poll_transmit_offload(now) {
            capture(&self.shared.pcap, &t.packet);
            batch.push(t);
        }
        // The kernel queue is full or a packet was refused: dropped, as a
        // link would; TCP retransmits.
        let stack = &mut self.stack;
        self.tun.send_all(
            batch,
            |len, e| log::debug!("tun write of {len} bytes failed: {e}"),
            |packet| stack.recycle(packet),
        );
    }

    /// Serve until told to stop: by a signal (shard 0), by shard 0, or by
    /// a failing shard.
    pub fn run(mut self) -> Result<(), String> {
        let mut deadline: Option<std::time::Instant> = None;
        let mut reset = false;
        if self.index == 0 {
            log::info!("serving on {}", self.tun.name());
        }
        loop {
            self.services.begin_turn();
            // Run due timers first: this also brings the stack's clock to
            // now, which the services read for their idle timeouts.
            self.transmit();
            self.read_tun()?;
            if std::mem::take(&mut self.inbox_ready) && self.serve_inbox(&mut deadline) {
                break;
            }
            self.dispatch_events();
            let lead_ready = std::mem::take(&mut self.lead_ready);
            self.serve_control(lead_ready);
            self.transmit();
            // Sending may have produced events (timers, state changes).
            if self.dispatch_events() {
                self.transmit();
            }

            let signal = match &self.lead {
                Some(lead) if lead_ready => lead.signals.take(),
                _ => None,
            };
            if let Some(sig) = signal {
                if deadline.is_some() {
                    log::info!("{sig:?} again: exiting now");
                    self.shared.stop_all(self.index);
                    break;
                }
                log::info!("{sig:?}: closing connections");
                for inbox in &self.shared.inboxes[1..] {
                    inbox.push_message(Message::Shutdown);
                }
                self.begin_shutdown(&mut deadline);
            }
            if let Some(d) = deadline {
                // Shard 0 leaves last, so that a second signal still finds
                // it and the control socket answers until the end.
                let last = self.lead.is_none() || self.shared.running.load(Ordering::Acquire) <= 1;
                if self.stack.socket_count() == 0 || reset {
                    if last {
                        break;
                    }
                } else if std::time::Instant::now() >= d {
                    // Reset what is left, so no peer waits on a stack
                    // that is gone.
                    let n = self.stack.abort_released();
                    self.transmit();
                    log::warn!(
                        "{n} connections still open after {SHUTDOWN_GRACE:?}; reset them and exiting"
                    );
                    reset = true;
                    if last {
                        break;
                    }
                }
            }

            let now = self.now();
            let wake = match (self.stack.poll_at(), self.services.poll_at()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let mut timeout = wake.map(|at| {
                let micros = (at - now).total_micros();
                std::time::Duration::from_micros(if at > now { micros } else { 0 })
            });
            let mut limit = deadline;
            if let Some(g) = self.lead.as_ref().and_then(|l| l.gathers.first()) {
                let at = g.since + GATHER_TIMEOUT;
                limit = Some(limit.map_or(at, |d| d.min(at)));
            }
            if let Some(d) = limit {
                let left = d
                    .saturating_duration_since(std::time::Instant::now())
                    .max(std::time::Duration::from_millis(10));
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            let inbox = &self.shared.inboxes[usize::from(self.index)];
            let mut fds = vec![
                poll::interest(self.tun.as_fd(), false),
                poll::interest(inbox.wake.fd(), false),
            ];
            if let Some(fd) = self.services.wake_fd() {
                fds.push(poll::interest(fd, false));
            }
            let lead_fds = fds.len();
            if let Some(lead) = &self.lead {
                fds.push(poll::interest(lead.signals.fd(), false));
                lead.control.poll_fds(&mut fds);
            }
            poll::poll(&mut fds, timeout).map_err(|e| format!("poll: {e}"))?;
            // fds[1] is the inbox.
            self.inbox_ready = poll::readable(&fds[1]);
            self.lead_ready = fds[lead_fds..].iter().any(poll::ready);
        }
        if self.index == 0 {
            if let Some(pcap) = &self.shared.pcap {
                let mut w = pcap.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(Err(e)) = w.as_mut().map(|w| w.flush()) {
                    log::warn!("pcap: {e}");
                }
            }
            log::info!("stopped");
        }
        Ok(())
    }
}

/// Shard `index`'s view for `ports` (its rows, naming it when there are
/// several shards) or `--stats` (its counters), from its parts (shard 0
/// takes its own while it holds its lead mutably).
fn view_of(
    index: u16,
    stack: &Stack,
    services: &Services,
    tun: &Tun,
    shared: &Shared,
    counters: HandoffCounters,
    ports: bool,
) -> View {
    if ports {
        let mut rows = port_entries(stack);
        if shared.split.is_some() {
            for row in &mut rows {
                row.shard = Some(index);
            }
        }
        return View::Ports(rows);
    }
    let mut map = counter_map(stack);
    let lookups = services.lookup_counters();
    map.extend(lookups.iter().map(|(k, v)| (k.to_string(), v)));
    let refused = services.counters();
    map.extend(refused.iter().map(|(k, v)| (k.to_string(), v)));
    let rx = tun.rx_counters();
    map.extend(rx.iter().map(|(k, v)| (k.to_string(), v)));
    map.extend(services.dns_counters());
    if shared.split.is_some() {
        map.extend(counters.iter().map(|(k, v)| (k.to_string(), v)));
    }
    View::Stats(map)
}

/// The answer to `--stats` from the sum and each shard's own counters
/// (in any order) of `shards` shards: with more than one, the sum names
/// the queue count and the steering, and the shards' own come in shard
/// order; with one, the sum alone.
fn stats_response(
    mut counters: BTreeMap<String, u64>,
    mut by_shard: Vec<(u16, BTreeMap<String, u64>)>,
    shards: usize,
    ebpf: bool,
) -> Response {
    if shards > 1 {
        counters.insert("queues".into(), shards as u64);
        counters.insert("steering_ebpf".into(), u64::from(ebpf));
        by_shard.sort_by_key(|&(shard, _)| shard);
    } else {
        by_shard.clear();
    }
    Response::Stats {
        counters,
        shards: by_shard.into_iter().map(|(_, c)| c).collect(),
    }
}

/// Add shard `shard`'s view to a gather: rows appended, counters summed
/// and kept as that shard's own.
fn merge(g: &mut Gather, shard: u16, view: View) {
    g.waiting = g.waiting.saturating_sub(1);
    match view {
        View::Ports(rows) => g.ports.extend(rows),
        View::Stats(counters) => {
            let sum = g.stats.get_or_insert_with(BTreeMap::new);
            for (k, &v) in &counters {
                let e = sum.entry(k.clone()).or_insert(0);
                *e = e.saturating_add(v);
            }
            g.by_shard.push((shard, counters));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::poll::wait_readable;
    use std::time::Duration;

    #[test]
    fn an_inbox_holds_its_bound_then_refuses_and_wakes_its_owner() {
        let inbox = Inbox::new().unwrap();
        assert!(!wait_readable(inbox.wake.fd(), Some(Duration::ZERO)).unwrap());
        for i in 0..INBOX_PACKETS {
            assert!(
                inbox.push_packet(vec![i as u8], RxChecksum::Unchecked),
                "{i}"
            );
        }
        assert!(wait_readable(inbox.wake.fd(), Some(Duration::ZERO)).unwrap());
        // Full: the sender counts a hand-off drop.
        assert!(!inbox.push_packet(vec![0], RxChecksum::Vouched));
        for _ in 0..INBOX_MESSAGES {
            assert!(inbox.push_message(Message::Shutdown));
        }
        assert!(!inbox.push_message(Message::Stop));
        let q = inbox.take();
        assert_eq!(q.packets.len(), INBOX_PACKETS);
        assert_eq!(q.packets[7].0, [7]);
        assert_eq!(q.messages.len(), INBOX_MESSAGES);
        // Taken: empty, quiet, and taking again.
        assert!(!wait_readable(inbox.wake.fd(), Some(Duration::ZERO)).unwrap());
        assert!(inbox.push_packet(vec![1], RxChecksum::Unchecked));
        assert!(wait_readable(inbox.wake.fd(), Some(Duration::ZERO)).unwrap());
        assert_eq!(inbox.take().packets.len(), 1);
    }

    #[test]
    fn the_message_bound_holds_every_reply_to_the_most_gathers() {
        let replies = MAX_GATHERS * (usize::from(ephemera::port_table::MAX_SHARDS) - 1);
        assert!(INBOX_MESSAGES >= replies + 2);
    }

    #[test]
    fn gathers_append_rows_and_sum_counters() {
        let mut g = Gather {
            tag: 1,
            client: ClientId::for_test(1),
            waiting: 2,
            since: std::time::Instant::now(),
            ports: Vec::new(),
            stats: None,
            by_shard: Vec::new(),
        };
        let stats = |pairs: &[(&str, u64)]| {
            View::Stats(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
        };
        merge(&mut g, 0, stats(&[("tcp_accepted", 3), ("misdirected", 0)]));
        assert_eq!(g.waiting, 1);
        merge(
            &mut g,
            1,
            stats(&[("tcp_accepted", 4), ("handoffs", u64::MAX)]),
        );
        assert_eq!(g.waiting, 0);
        let sum = g.stats.as_ref().unwrap();
        assert_eq!(sum["tcp_accepted"], 7);
        assert_eq!(sum["misdirected"], 0);
        assert_eq!(sum["handoffs"], u64::MAX);
        // Each shard's own counters stay beside the sum.
        assert_eq!(g.by_shard.len(), 2);
        assert_eq!(g.by_shard[1].0, 1);
        assert_eq!(g.by_shard[1].1["tcp_accepted"], 4);
        assert!(!g.by_shard[1].1.contains_key("misdirected"));
    }

    #[test]
    fn stats_answers_list_the_shards_in_order_and_a_single_stack_alone() {
        let one = |n: u64| BTreeMap::from([("tcp_accepted".to_string(), n)]);
        // Shard 2 answered first, then shard 0 (its own), then shard 1.
        let arrived = vec![(2, one(5)), (0, one(3)), (1, one(4))];
        let Response::Stats { counters, shards } = stats_response(one(12), arrived, 3, true) else {
            panic!("not stats");
        };
        assert_eq!(counters["queues"], 3);
        assert_eq!(counters["steering_ebpf"], 1);
        assert_eq!(shards, vec![one(3), one(4), one(5)]);
        let Response::Stats { counters, shards } =
            stats_response(one(3), vec![(0, one(3))], 1, false)
        else {
            panic!("not stats");
        };
        assert_eq!(counters, one(3), "no queue count for a single stack");
        assert!(shards.is_empty());
    }
}
