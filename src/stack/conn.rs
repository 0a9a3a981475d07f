//! One TCP connection: its smoltcp socket, and the rules ephemera applies
//! on top of smoltcp's. As in quinn-proto's split of endpoint and
//! connection, a rule is a method of the connection that says what the
//! stack must do next (free it, enter TIME-WAIT, queue it on its listener,
//! send a segment, abort it, wake it at a time); the stack does it.
//!
//! The rules never read the smoltcp socket: the stack hands them a
//! [`SocketView`] of the few values they need, so each is a function of
//! small plain structs ([`SeqTrack`], [`Timers`]), tested below without
//! a link.
//!
//! After every ingress, egress or API call the stack makes one pass over
//! the connection (`Stack::after_io`), in this order, and stops at the
//! first step that ends it:
//! 1. [`TcpConn::observe`]: the state change, and how a connection that
//!    reached CLOSED ended;
//! 2. [`TcpConn::handshake`]: a half-open connection established or
//!    failed goes to its listener;
//! 3. [`TcpConn::reap`]: TIME-WAIT, the 4-tuple given back, the slot freed;
//! 4. [`TcpConn::wants_event`]: the application is told;
//! 5. [`Timers::check`]: user timeout, FIN watchdog, FIN-WAIT-2 timeout,
//!    idle buffers;
//! 6. [`TcpConn::schedule`]: its next deadline.

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::TcpControl;

use super::budget::{MemUse, Rings};
use super::segment::{Segment, SeqOffset};
use super::socket_set::{Owner, SocketId};
use super::TcpState;
use crate::buffer_pool::Chunk;
use crate::demux::TcpSeg;
use crate::error::ConnError;
use crate::port_table::FlowKey;

/// The FIN watchdog's first wait, in milliseconds.
const FIN_WATCH_FIRST_MS: u32 = 1500;
/// The FIN watchdog's longest wait after backoff, in milliseconds.
const FIN_WATCH_MAX_MS: u32 = 60_000;

/// Where a TCP connection is in its life, from the stack's side.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Opened by a SYN to this listener; not yet established.
    HalfOpen(SocketId),
    /// Established, waiting in this listener's accept queue.
    Queued(SocketId),
    /// The application holds the handle.
    Owned,
    /// The application closed or aborted it; freed once it reaches CLOSED
    /// or TIME-WAIT.
    Released,
}

/// What a pass over a connection follows.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// A packet from the peer.
    Ingress,
    /// smoltcp's output (and its timers).
    Egress,
    /// An application call: no time of its own (`now` is the time last
    /// passed in, perhaps long ago).
    App,
}

/// The values of a connection's smoltcp socket its rules read, taken
/// once per event.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct SocketView {
    /// RFC 9293 state.
    pub state: TcpState,
    /// Octets queued to send and not yet acknowledged.
    pub send_queue: usize,
    /// Octets received in order and not yet read.
    pub recv_queue: usize,
    /// Size of the receive buffer.
    pub recv_capacity: usize,
    /// Size of the send buffer.
    pub send_capacity: usize,
}

impl SocketView {
    /// The view of `socket` now.
    #[inline]
    pub(crate) fn of(socket: &tcp::Socket<'_>) -> SocketView {
        SocketView {
            state: socket.state(),
            send_queue: socket.send_queue(),
            recv_queue: socket.recv_queue(),
            recv_capacity: socket.recv_capacity(),
            send_capacity: socket.send_capacity(),
        }
    }

    /// The sizes of its two ring buffers.
    #[inline]
    pub(crate) fn rings(&self) -> Rings {
        Rings {
            rx: self.recv_capacity,
            tx: self.send_capacity,
        }
    }

    /// Free space in the receive buffer: the window the peer may fill.
    #[inline]
    pub(crate) fn rx_free(&self) -> usize {
        self.recv_capacity - self.recv_queue
    }

    /// The receive window as a bare segment carries it (unscaled, capped).
    pub(crate) fn window_field(&self) -> u16 {
        self.rx_free().min(0xffff) as u16
    }
}

/// The limits the rules apply (from [`StackConfig`](super::StackConfig)).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `StackConfig::user_timeout`.
    pub user_timeout: Option<Duration>,
    /// `StackConfig::fin_timeout`.
    pub fin_timeout: Option<Duration>,
    /// `StackConfig::shrink_idle_after`.
    pub shrink_idle_after: Option<Duration>,
}

// ---- sequence numbers and RFC 5961: `seq.rs` ------------------------------

mod seq;
pub(crate) use seq::{Rfc5961, SeqTrack};

// ---- ephemera's own timers -------------------------------------------------

/// The timers ephemera runs for a connection beside smoltcp's
/// (docs/architecture.md, "Where ephemera departs from smoltcp's
/// defaults").
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Timers {
    /// Last time the connection made progress: an ACK that freed send
    /// buffer, a state change, or nothing outstanding at all.
    progress_at: Instant,
    /// Send-queue length at the last check, to see ACKs free it.
    last_send_queue: u32,
    /// FIN watchdog: when to re-send our FIN ourselves, and the backoff
    /// in milliseconds.
    fin_watch: Option<(Instant, u32)>,
    /// Since when it has been released and in FIN-WAIT-2.
    orphan_since: MaybeInstant,
    /// Since when both buffers have been empty, if they are.
    idle_since: MaybeInstant,
    /// Whether the buffer pages were handed back since they last held data.
    shrunk: bool,
}

/// An optional time in 8 octets, where `Option<Instant>` takes 16
/// (smoltcp's `Instant` has no value to spare): `i64::MIN` microseconds,
/// long before any time a stack sees, stands for none. It keeps a
/// connection's slot small.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct MaybeInstant(i64);

impl MaybeInstant {
    const NONE: MaybeInstant = MaybeInstant(i64::MIN);

    fn from(t: Option<Instant>) -> MaybeInstant {
        t.map_or(MaybeInstant::NONE, |t| MaybeInstant(t.total_micros()))
    }

    fn get(self) -> Option<Instant> {
        (self != MaybeInstant::NONE).then(|| Instant::from_micros(self.0))
    }
}

/// What one of the connection's own timers says after an event.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Not running.
    Off,
    /// Runs out at this time.
    At(Instant),
    /// Ran out: act now.
    Fired,
}

impl Timer {
    fn at(self) -> Option<Instant> {
        match self {
            Timer::At(t) => Some(t),
            Timer::Off | Timer::Fired => None,
        }
    }
}

/// What the connection's timers tell the stack after an event.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum TimerVerdict {
    /// Outstanding data, SYN or FIN made no progress for the user
    /// timeout: abort the connection (ETIMEDOUT).
    UserTimeout,
    /// Released and in FIN-WAIT-2 for `fin_timeout`: abort it.
    FinWait2Timeout,
    /// Keep going.
    Keep {
        /// Re-send our FIN now (the FIN watchdog fired).
        resend_fin: bool,
        /// Hand the idle buffers' pages back now.
        shrink: bool,
        /// The earliest of the timers' deadlines.
        next: Option<Instant>,
    },
}

impl Timers {
    /// Timers of a connection created at `now`.
    pub(crate) fn new(now: Instant) -> Timers {
        Timers {
            progress_at: now,
            last_send_queue: 0,
            fin_watch: None,
            orphan_since: MaybeInstant::NONE,
            idle_since: MaybeInstant::NONE,
            shrunk: false,
        }
    }

    /// Every timer in turn after an event that left the socket as `v`,
    /// coming from state `prev`; `released`: the application let go of
    /// the connection; `rx_drained`: no data waits in the receive buffer,
    /// in order or not. An abort ends the turn.
    pub(crate) fn check(
        &mut self,
        now: Instant,
        limits: &Limits,
        v: &SocketView,
        prev: TcpState,
        released: bool,
        rx_drained: bool,
    ) -> TimerVerdict {
        let give_up = match self.user_timeout(now, limits.user_timeout, v, prev) {
            Timer::Fired => return TimerVerdict::UserTimeout,
            t => t.at(),
        };
        let resend_fin = self.fin_watchdog(now, v, prev) == Timer::Fired;
        let fin_at = self.fin_watch.map(|(at, _)| at);
        let orphan = released && v.state == TcpState::FinWait2;
        let fin2_at = match self.fin_wait2(now, limits.fin_timeout, orphan) {
            Timer::Fired => return TimerVerdict::FinWait2Timeout,
            t => t.at(),
        };
        let quiet = v.send_queue == 0 && rx_drained;
        let idle = self.idle_buffers(now, limits.shrink_idle_after, quiet);
        TimerVerdict::Keep {
            resend_fin,
            shrink: idle == Timer::Fired,
            next: [give_up, fin_at, fin2_at, idle.at()]
                .into_iter()
                .flatten()
                .min(),
        }
    }

    /// The user timeout (RFC 9293 §3.8.4): outstanding data, SYN or FIN
    /// with no progress for `limit` ends the connection. Idle connections,
    /// with nothing outstanding, never time out.
    pub(crate) fn user_timeout(
        &mut self,
        now: Instant,
        limit: Option<Duration>,
        v: &SocketView,
        prev: TcpState,
    ) -> Timer {
        let (state, sq) = (v.state, v.send_queue);
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
        // Send queues are at most 1 GiB (`MAX_BUFFER`).
        let sq32 = u32::try_from(sq).unwrap_or(u32::MAX);
        let fresh = sq > 0 && self.last_send_queue == 0;
        if !outstanding || fresh || sq32 < self.last_send_queue || state != prev {
            self.progress_at = now;
        }
        self.last_send_queue = sq32;
        match limit.filter(|_| outstanding).map(|t| self.progress_at + t) {
            Some(t) if t <= now => Timer::Fired,
            Some(t) => Timer::At(t),
            None => Timer::Off,
        }
    }

    /// FIN watchdog. smoltcp 0.14 can lose the retransmission timer of a
    /// FIN: a fast retransmit that finds the send buffer empty resets the
    /// timer to idle, and the FIN is never sent again. Once all data is
    /// acknowledged and only our FIN is outstanding, the FIN is re-sent
    /// (`Fired`) after 1.5 s, then with exponential backoff up to a minute,
    /// until the state moves on. After firing it is already re-armed.
    pub(crate) fn fin_watchdog(&mut self, now: Instant, v: &SocketView, prev: TcpState) -> Timer {
        let fin_only = v.send_queue == 0
            && matches!(
                v.state,
                TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck
            );
        if !fin_only || v.state != prev || self.fin_watch.is_none() {
            self.fin_watch = fin_only.then(|| {
                let first = FIN_WATCH_FIRST_MS;
                (now + Duration::from_millis(first.into()), first)
            });
        } else if let Some((at, backoff)) = self.fin_watch {
            if at <= now {
                let backoff = (backoff * 2).min(FIN_WATCH_MAX_MS);
                self.fin_watch = Some((now + Duration::from_millis(backoff.into()), backoff));
                return Timer::Fired;
            }
        }
        self.fin_watch.map_or(Timer::Off, |(at, _)| Timer::At(at))
    }

    /// FIN-WAIT-2 timeout (Linux `tcp_fin_timeout`): an `orphan` (released,
    /// its FIN acknowledged) waits for the peer's FIN only `timeout` long.
    /// Linux moves such an orphan into a TIME-WAIT-like minisocket that
    /// expires after the timeout; ephemera resets it and releases the port,
    /// so a peer still there learns the end at once.
    pub(crate) fn fin_wait2(
        &mut self,
        now: Instant,
        timeout: Option<Duration>,
        orphan: bool,
    ) -> Timer {
        let since = orphan.then(|| self.orphan_since.get().unwrap_or(now));
        self.orphan_since = MaybeInstant::from(since);
        match since.zip(timeout).map(|(t, d)| t + d) {
            Some(t) if t <= now => {
                self.orphan_since = MaybeInstant::NONE;
                Timer::Fired
            }
            Some(t) => Timer::At(t),
            None => Timer::Off,
        }
    }

    /// Idle buffers: once both have been empty (`quiet`: and nothing
    /// waits out of order) for `after`, their pages go back to the kernel
    /// (`Fired`), once until they hold data again.
    pub(crate) fn idle_buffers(
        &mut self,
        now: Instant,
        after: Option<Duration>,
        quiet: bool,
    ) -> Timer {
        if !quiet {
            self.idle_since = MaybeInstant::NONE;
            self.shrunk = false;
            return Timer::Off;
        }
        let Some(after) = after.filter(|_| !self.shrunk) else {
            return Timer::Off;
        };
        let since = self.idle_since.get().unwrap_or(now);
        self.idle_since = MaybeInstant::from(Some(since));
        if since + after > now {
            return Timer::At(since + after);
        }
        self.shrunk = true;
        Timer::Fired
    }
}

// ---- the connection --------------------------------------------------------

/// How a connection that just reached CLOSED ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Refused: a RST answered our SYN (ECONNREFUSED).
    Refused,
    /// Reset by the peer (ECONNRESET).
    Reset,
    /// smoltcp gave up retransmitting (ETIMEDOUT).
    TimedOut,
    /// Closed in order: the ACK of our FIN came in LAST-ACK.
    Closed,
}

impl Ending {
    /// How a connection that moved from `prev` to CLOSED on `cause` ended
    /// (RFC 9293 §3.10.7 for RST, §3.8.4 for timeouts); `released`: the
    /// application had let go of it, so a timeout is no error of its.
    pub(crate) fn of(prev: TcpState, cause: Cause, released: bool) -> Option<Ending> {
        match (prev, cause) {
            (TcpState::SynSent, Cause::Ingress) => Some(Ending::Refused),
            (TcpState::LastAck, _) => Some(Ending::Closed),
            (TcpState::TimeWait | TcpState::Listen, _) => None,
            (_, Cause::Ingress) => Some(Ending::Reset),
            (_, Cause::Egress) if !released => Some(Ending::TimedOut),
            _ => None,
        }
    }

    /// The error the application sees.
    pub(crate) fn error(self) -> Option<ConnError> {
        match self {
            Ending::Refused => Some(ConnError::Refused),
            Ending::Reset => Some(ConnError::Reset),
            Ending::TimedOut => Some(ConnError::TimedOut),
            Ending::Closed => None,
        }
    }
}

/// How a half-open connection's handshake came out.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// It reached ESTABLISHED (or beyond): it goes to the accept queue.
    Established,
    /// It was reset, timed out or never synchronized: it is freed.
    Failed,
}

impl Handshake {
    /// The outcome a half-open connection in `state` has reached, if any.
    pub(crate) fn outcome(state: TcpState) -> Option<Handshake> {
        match state {
            TcpState::Established | TcpState::CloseWait | TcpState::FinWait1 => {
                Some(Handshake::Established)
            }
            TcpState::Closed | TcpState::Listen | TcpState::TimeWait => Some(Handshake::Failed),
            _ => None,
        }
    }
}

/// What becomes of a connection once it is over.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reap {
    /// Not over, or still the application's: keep it.
    Keep,
    /// Our side closed first and it reached TIME-WAIT (RFC 9293 §3.6.1):
    /// send the ACK still owed to the peer, if any; keep a TIME-WAIT
    /// record remembering RCV.NXT (if its 4-tuple is registered); free it
    /// if the application let go of it (`free`), else detach it
    /// ([`TcpConn::detach`]).
    TimeWait {
        /// The ACK of the peer's FIN, if smoltcp has not sent it.
        owed_ack: Option<Segment>,
        /// RCV.NXT for the record, if the 4-tuple is registered.
        record: Option<u32>,
        /// Free the slot.
        free: bool,
    },
    /// It reached CLOSED: give its 4-tuple back (`release`), and free it
    /// if the application let go of it (`free`).
    Closed {
        /// The 4-tuple was registered until now.
        release: bool,
        /// Free the slot.
        free: bool,
    },
}

/// When to look at a connection next.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Schedule {
    /// At once: put it on the dirty list.
    Now,
    /// Queue it under this new deadline.
    Queue(Instant),
    /// Nothing to change (already queued under it, or no deadline).
    Unchanged,
}

/// One TCP connection: its smoltcp socket and the stack's bookkeeping.
pub(crate) struct TcpConn {
    /// A set holding exactly this connection's smoltcp socket.
    pub set: SocketSet<'static>,
    /// The socket's handle inside `set`.
    pub handle: SocketHandle,
    /// Where the smoltcp socket lies (in the set's heap storage, which
    /// never moves), for [`Owner`] only.
    pub socket_addr: usize,
    /// Where the receive ring starts, likewise.
    pub rx_addr: usize,
    /// Its 4-tuple.
    pub key: FlowKey,
    /// Whether `key` is still live in the port table.
    pub registered: bool,
    /// In TIME-WAIT while the application still holds it: its 4-tuple
    /// went to a TIME-WAIT record, and the socket stays only so that the
    /// application can read what arrived; it is never polled again.
    pub detached: bool,
    /// Ownership phase.
    pub phase: Phase,
    /// Why it failed, if it did.
    pub error: Option<ConnError>,
    /// The state seen after the last event, to detect transitions.
    pub last_state: TcpState,
    /// When it was created.
    pub created: Instant,
    /// The deadline it is queued under in the timer heap, if any.
    pub scheduled: Option<Instant>,
    /// Whether it sits on the dirty list.
    pub dirty: bool,
    /// Whether an event for it is queued for the application.
    pub event_queued: bool,
    /// Whether a SYN cookie brought it back (its handshake time is not
    /// known).
    pub from_cookie: bool,
    /// The memory budget cut a `send` short: the application is told (an
    /// event) once the buffer pages go back.
    pub send_blocked: bool,
    /// RCV.NXT, SND.UNA and the RFC 5961 checks.
    pub seq: SeqTrack,
    /// Ephemera's own timers.
    pub timers: Timers,
    /// Its use of the memory budget.
    pub mem: MemUse,
    /// The buffer memory the socket's two ring buffers live in. Declared
    /// last: fields drop in order, so the socket in `set` goes first.
    pub chunk: Option<Chunk>,
}

impl TcpConn {
    /// A connection for `socket` (its buffers in `chunk`), registered in
    /// the port table under `key`, created at `now`; `peer_isn` is the
    /// peer's ISN when its SYN opened it.
    pub(crate) fn new(
        socket: tcp::Socket<'static>,
        chunk: Option<Chunk>,
        key: FlowKey,
        phase: Phase,
        now: Instant,
        peer_isn: Option<u32>,
    ) -> TcpConn {
        let last_state = socket.state();
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(socket);
        // The socket lives in the set's heap storage, which never moves.
        let socket_addr = set.get::<tcp::Socket>(handle) as *const _ as usize;
        TcpConn {
            set,
            handle,
            socket_addr,
            rx_addr: chunk.as_ref().map_or(0, Chunk::addr),
            key,
            registered: true,
            detached: false,
            phase,
            error: None,
            last_state,
            created: now,
            scheduled: None,
            dirty: false,
            event_queued: false,
            from_cookie: false,
            send_blocked: false,
            seq: SeqTrack::new(peer_isn),
            timers: Timers::new(now),
            mem: MemUse {
                rx_base: peer_isn.map_or(0, |isn| isn.wrapping_add(1)),
                ..MemUse::default()
            },
            chunk,
        }
    }

    /// The smoltcp socket.
    #[inline]
    pub(crate) fn socket(&self) -> &tcp::Socket<'static> {
        self.set.get(self.handle)
    }

    /// The smoltcp socket, mutably.
    #[inline]
    pub(crate) fn socket_mut(&mut self) -> &mut tcp::Socket<'static> {
        self.set.get_mut(self.handle)
    }

    /// What the rules read of the socket, now.
    #[inline]
    pub(crate) fn view(&self) -> SocketView {
        SocketView::of(self.socket())
    }

    /// What the port table should hold for this connection, slot `id`.
    pub(crate) fn owner(&self, id: SocketId) -> Owner {
        match self.seq.peer_isn {
            Some(isn) => Owner::hinted(id, self.socket_addr, self.rx_addr, isn.wrapping_add(1)),
            None => Owner::hinted(id, self.socket_addr, 0, 0),
        }
    }

    /// Put it (slot `id`) on the dirty list, once.
    #[inline]
    pub(crate) fn mark_dirty(&mut self, id: SocketId, dirty: &mut Vec<SocketId>) {
        if !self.dirty {
            self.dirty = true;
            dirty.push(id);
        }
    }

    /// Take note of the state after an event. Returns the state at the
    /// last pass and, if the connection has just reached CLOSED, how it
    /// ended (its error is kept for the application).
    ///
    /// A pass for an application call leaves the transition unrecorded:
    /// it brings no time of its own, so the transition, and every deadline
    /// measured from it, is left to the egress pass it scheduled.
    pub(crate) fn observe(&mut self, state: TcpState, cause: Cause) -> (TcpState, Option<Ending>) {
        let prev = self.last_state;
        if cause != Cause::App {
            self.last_state = state;
        }
        if state != TcpState::Closed || prev == TcpState::Closed || self.error.is_some() {
            return (prev, None);
        }
        let ending = Ending::of(prev, cause, self.phase == Phase::Released);
        self.error = ending.and_then(Ending::error);
        (prev, ending)
    }

    /// For a half-open connection whose handshake is over in `state`: its
    /// listener and the outcome.
    pub(crate) fn handshake(&self, state: TcpState) -> Option<(SocketId, Handshake)> {
        match self.phase {
            Phase::HalfOpen(l) => Handshake::outcome(state).map(|h| (l, h)),
            _ => None,
        }
    }

    /// Whether the connection is over, and what becomes of it (`cause`:
    /// what brought it here).
    pub(crate) fn reap(&mut self, v: &SocketView, cause: Cause) -> Reap {
        let released = self.phase == Phase::Released;
        if self.detached {
            // Over on the wire already: only the handle is left.
            return match released {
                true => Reap::Closed {
                    release: false,
                    free: true,
                },
                false => Reap::Keep,
            };
        }
        match v.state {
            TcpState::TimeWait => {
                let rcv_nxt = self.seq.rcv_nxt(v);
                // Freed later than the segment that brought it here (the
                // application closed a handle already in TIME-WAIT): the
                // peer's FIN may still be owed smoltcp's delayed ACK, so
                // send it now or the peer waits in LAST-ACK for a FIN
                // retransmission. (Freed by that very segment, the ACK is
                // sent from the record once the segment is through.)
                let owed = cause != Cause::Ingress && self.seq.ack_sent != Some(rcv_nxt);
                Reap::TimeWait {
                    owed_ack: owed.then(|| self.seq.segment(v, TcpControl::None)),
                    record: self.registered.then_some(rcv_nxt),
                    free: released,
                }
            }
            TcpState::Closed | TcpState::Listen => Reap::Closed {
                release: std::mem::replace(&mut self.registered, false),
                free: released,
            },
            _ => Reap::Keep,
        }
    }

    /// Reached TIME-WAIT while the application holds it, with its 4-tuple
    /// handed to a TIME-WAIT record: keep the socket only as what is left
    /// to read. smoltcp would end its own TIME-WAIT after 10 s and clear
    /// the receive ring with it, unread data and all; Linux keeps that
    /// data readable until the application reads it or closes, and so
    /// does this, by never polling the socket again.
    pub(crate) fn detach(&mut self) {
        self.registered = false;
        self.detached = true;
        self.scheduled = None;
    }

    /// Whether to queue an event for the application: it holds the
    /// connection, something happened, and none is queued yet.
    pub(crate) fn wants_event(&mut self, state: TcpState, prev: TcpState, cause: Cause) -> bool {
        let wanted = self.phase == Phase::Owned
            && (cause == Cause::Ingress || state != prev)
            && !self.event_queued;
        self.event_queued |= wanted;
        wanted
    }

    /// Queue the connection under its next deadline: the earliest of
    /// `ours` (from [`Timers::check`]) and smoltcp's own (`poll_at`).
    /// After an egress round smoltcp has sent all it could, so "now" from
    /// it can only mean a timer that fired in the same instant: look again
    /// a millisecond later rather than spin.
    pub(crate) fn schedule(
        &mut self,
        now: Instant,
        cause: Cause,
        ours: Option<Instant>,
        smoltcp: Option<Instant>,
    ) -> Schedule {
        let smoltcp = match smoltcp {
            Some(t) if t <= now && cause == Cause::Egress => Some(now + Duration::from_millis(1)),
            other => other,
        };
        match ours.into_iter().chain(smoltcp).min() {
            Some(t) if t <= now => Schedule::Now,
            Some(t) if self.scheduled != Some(t) => {
                self.scheduled = Some(t);
                Schedule::Queue(t)
            }
            Some(_) => Schedule::Unchanged,
            None => {
                self.scheduled = None;
                Schedule::Unchanged
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port_table::Protocol;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn at(n: u64) -> Instant {
        Instant::from_millis(n as i64)
    }

    fn view(state: TcpState, send_queue: usize) -> SocketView {
        SocketView {
            state,
            send_queue,
            recv_queue: 0,
            recv_capacity: 1000,
            send_capacity: 1000,
        }
    }

    fn limits() -> Limits {
        Limits {
            user_timeout: Some(Duration::from_secs(10)),
            fin_timeout: Some(Duration::from_secs(60)),
            shrink_idle_after: Some(Duration::from_secs(1)),
        }
    }

    /// A connection with a real (unconnected) socket; the rules read only
    /// the views handed to them.
    fn conn(phase: Phase) -> TcpConn {
        let buf = || tcp::SocketBuffer::new(vec![0; 64]);
        let key = FlowKey::new(
            Protocol::Tcp,
            "10.0.0.2:80".parse().unwrap(),
            "10.0.0.1:40000".parse().unwrap(),
        );
        TcpConn::new(
            tcp::Socket::new(buf(), buf()),
            None,
            key,
            phase,
            at(0),
            Some(99),
        )
    }

    #[test]
    fn fin_is_resent_after_1_5_s_then_3_s_and_stops_when_the_state_moves() {
        use TcpState::*;
        let mut t = Timers::new(at(0));
        let fin = view(FinWait1, 0);
        // Our FIN just went out: the watchdog starts.
        assert_eq!(
            t.fin_watchdog(at(0), &fin, Established),
            Timer::At(at(1500))
        );
        assert_eq!(
            t.fin_watchdog(at(1499), &fin, FinWait1),
            Timer::At(at(1500))
        );
        assert_eq!(t.fin_watchdog(at(1500), &fin, FinWait1), Timer::Fired);
        assert_eq!(t.fin_watch, Some((at(4500), 3000)), "re-armed for 3 s");
        assert_eq!(
            t.fin_watchdog(at(4000), &fin, FinWait1),
            Timer::At(at(4500))
        );
        assert_eq!(t.fin_watchdog(at(4500), &fin, FinWait1), Timer::Fired);
        assert_eq!(t.fin_watch, Some((at(10_500), 6000)));
        // The peer ACKs the FIN: FIN-WAIT-2, nothing to re-send.
        assert_eq!(
            t.fin_watchdog(at(5000), &view(FinWait2, 0), FinWait1),
            Timer::Off
        );
        assert_eq!(
            t.fin_watchdog(at(99_000), &view(FinWait2, 0), FinWait2),
            Timer::Off
        );
    }

    #[test]
    fn fin_watchdog_waits_for_the_data_and_backs_off_to_a_minute() {
        use TcpState::*;
        let mut t = Timers::new(at(0));
        // Data still unacknowledged: smoltcp's retransmission covers it.
        assert_eq!(
            t.fin_watchdog(at(0), &view(LastAck, 10), CloseWait),
            Timer::Off
        );
        let fin = view(LastAck, 0);
        assert_eq!(t.fin_watchdog(at(100), &fin, LastAck), Timer::At(at(1600)));
        let mut now = 1600;
        let mut waits = Vec::new();
        while waits.len() < 8 {
            assert_eq!(t.fin_watchdog(at(now), &fin, LastAck), Timer::Fired);
            let next = t.fin_watchdog(at(now), &fin, LastAck);
            let Timer::At(next) = next else {
                panic!("{next:?}")
            };
            waits.push((next - at(now)).total_millis());
            now = next.total_millis() as u64;
        }
        assert_eq!(
            waits,
            [3000, 6000, 12_000, 24_000, 48_000, 60_000, 60_000, 60_000]
        );
    }

    #[test]
    fn user_timeout_fires_only_while_data_is_outstanding() {
        use TcpState::*;
        let limit = Some(Duration::from_secs(10));
        let mut t = Timers::new(at(0));
        // Idle for an hour with nothing outstanding: never.
        for s in [0, 60_000, 3_600_000] {
            assert_eq!(
                t.user_timeout(at(s), limit, &view(Established, 0), Established),
                Timer::Off
            );
        }
        // Data queued: the wait starts now, not at the last progress.
        let t0 = 3_600_000;
        assert_eq!(
            t.user_timeout(at(t0), limit, &view(Established, 500), Established),
            Timer::At(at(t0 + 10_000))
        );
        // An ACK frees part of it: progress, the wait starts again.
        assert_eq!(
            t.user_timeout(at(t0 + 9000), limit, &view(Established, 200), Established),
            Timer::At(at(t0 + 19_000))
        );
        // More data queued behind it is no progress.
        assert_eq!(
            t.user_timeout(at(t0 + 12_000), limit, &view(Established, 900), Established),
            Timer::At(at(t0 + 19_000))
        );
        assert_eq!(
            t.user_timeout(at(t0 + 19_000), limit, &view(Established, 900), Established),
            Timer::Fired
        );
        // A SYN or FIN counts as outstanding too; no limit, no timer.
        let mut t = Timers::new(at(0));
        assert_eq!(
            t.user_timeout(at(5), limit, &view(SynSent, 0), Closed),
            Timer::At(at(10_005))
        );
        assert_eq!(
            t.user_timeout(at(5), None, &view(SynSent, 0), SynSent),
            Timer::Off
        );
        // A closed socket's leftover data is not in flight.
        assert_eq!(
            t.user_timeout(at(9), limit, &view(Closed, 70), SynSent),
            Timer::Off
        );
    }

    #[test]
    fn fin_wait2_timeout_counts_from_when_the_orphan_got_there() {
        let timeout = Some(Duration::from_secs(60));
        let mut t = Timers::new(at(0));
        assert_eq!(t.fin_wait2(at(10), timeout, false), Timer::Off);
        assert_eq!(t.fin_wait2(at(20), timeout, true), Timer::At(at(60_020)));
        assert_eq!(
            t.fin_wait2(at(50_000), timeout, true),
            Timer::At(at(60_020))
        );
        assert_eq!(t.fin_wait2(at(60_020), timeout, true), Timer::Fired);
        // Reaped by the stack; a connection that stops being an orphan
        // (the peer's FIN came) never fires.
        let mut t = Timers::new(at(0));
        t.fin_wait2(at(0), timeout, true);
        assert_eq!(t.fin_wait2(at(100), timeout, false), Timer::Off);
        assert_eq!(t.fin_wait2(at(90_000), None, true), Timer::Off);
    }

    #[test]
    fn idle_buffers_shrink_once_after_the_quiet_spell() {
        let after = Some(ms(1000));
        let mut t = Timers::new(at(0));
        assert_eq!(t.idle_buffers(at(0), after, false), Timer::Off);
        assert_eq!(t.idle_buffers(at(100), after, true), Timer::At(at(1100)));
        assert_eq!(t.idle_buffers(at(1099), after, true), Timer::At(at(1100)));
        assert_eq!(t.idle_buffers(at(1100), after, true), Timer::Fired);
        assert_eq!(t.idle_buffers(at(5000), after, true), Timer::Off, "once");
        // Data again, then quiet again: a new spell.
        assert_eq!(t.idle_buffers(at(6000), after, false), Timer::Off);
        assert_eq!(t.idle_buffers(at(7000), after, true), Timer::At(at(8000)));
        assert_eq!(
            Timers::new(at(0)).idle_buffers(at(9), None, true),
            Timer::Off
        );
    }

    #[test]
    fn timers_abort_first_and_otherwise_wake_at_the_earliest() {
        use TcpState::*;
        let l = limits();
        // A released connection in FIN-WAIT-2 with idle buffers.
        let mut t = Timers::new(at(0));
        let v = view(FinWait2, 0);
        assert_eq!(
            t.check(at(0), &l, &v, FinWait1, true, true),
            TimerVerdict::Keep {
                resend_fin: false,
                shrink: false,
                next: Some(at(1000))
            }
        );
        assert_eq!(
            t.check(at(1000), &l, &v, FinWait2, true, true),
            TimerVerdict::Keep {
                resend_fin: false,
                shrink: true,
                next: Some(at(60_000))
            }
        );
        assert_eq!(
            t.check(at(60_000), &l, &v, FinWait2, true, true),
            TimerVerdict::FinWait2Timeout
        );
        // Still the application's: it waits for the peer as long as it takes.
        let mut t = Timers::new(at(0));
        assert_eq!(
            t.check(at(90_000), &l, &v, FinWait1, false, false),
            TimerVerdict::Keep {
                resend_fin: false,
                shrink: false,
                next: None
            }
        );
        // Unacknowledged data past the user timeout aborts before the FIN
        // watchdog or anything else runs.
        let mut t = Timers::new(at(0));
        t.check(at(0), &l, &view(Established, 5), Established, false, true);
        assert_eq!(
            t.check(
                at(10_000),
                &l,
                &view(Established, 5),
                Established,
                false,
                true
            ),
            TimerVerdict::UserTimeout
        );
    }

    fn seg(seq: u32, syn: bool, rst: bool) -> TcpSeg {
        TcpSeg {
            seq,
            ack_number: 0,
            syn,
            ack: !syn,
            rst,
            fin: false,
            len: 0,
            header_offset: 20,
        }
    }

    #[test]
    fn rcv_nxt_counts_what_was_read_queued_and_the_fin() {
        use TcpState::*;
        let mut s = SeqTrack::new(Some(u32::MAX - 1));
        let mut v = view(Established, 0);
        assert_eq!(s.rcv_nxt(&v), u32::MAX, "ISN + 1");
        v.recv_queue = 10;
        s.rx_read = 5;
        assert_eq!(s.rcv_nxt(&v), 14, "wraps");
        v.state = CloseWait;
        assert_eq!(s.rcv_nxt(&v), 15, "and the FIN");
        // Before the SYN: the highest sequence number seen.
        let mut s = SeqTrack::new(None);
        s.peer_next = 7;
        assert_eq!(s.rcv_nxt(&view(SynSent, 0)), 7);
    }

    #[test]
    fn forged_segments_do_not_move_rcv_nxt_or_snd_una() {
        use TcpState::*;
        let v = view(Established, 100);
        let mut s = SeqTrack::new(Some(1000));
        s.peer_ack = 5000;
        // In the window: the highest sequence number seen moves.
        s.note_segment(&v, 1001, 500, false, false, Some(5050));
        assert_eq!((s.peer_next, s.peer_ack), (1501, 5050));
        assert!(!s.rx_drained(&v), "out-of-order data may wait");
        // Beyond the receive window, or an ACK of more than was sent: no.
        s.note_segment(&v, 1001 + 5000, 10, false, false, Some(5050 + 102));
        assert_eq!((s.peer_next, s.peer_ack), (1501, 5050));
        // An old segment does not move it back.
        s.note_segment(&v, 900, 10, false, false, Some(4000));
        assert_eq!((s.peer_next, s.peer_ack), (1501, 5050));
        // A segment that starts in the window and ends beyond it: smoltcp
        // stores the part in the window (up to RCV.NXT + 1000, the free
        // space), so the highest sequence number seen moves there, and the
        // buffer is not drained. One that starts beyond it moves nothing.
        let mut t = SeqTrack::new(Some(1000));
        let empty = view(Established, 0);
        t.note_segment(&empty, 1001 + 1000, 10, false, false, None);
        assert_eq!(t.peer_next, 1001, "beyond the window");
        t.note_segment(&empty, 1001 + 500, 4000, false, false, None);
        assert_eq!(t.peer_next, 1001 + 1000, "cut to the window");
        assert!(!t.rx_drained(&empty));
        // Without data, only a FIN at RCV.NXT is kept: a bare ACK or a FIN
        // ahead of it (after a loss) stores nothing, so the data that fills
        // the gap later still moves the mark and is charged (found by the
        // stack_pair fuzzer: a bare ACK ahead left the data uncharged).
        let mut u = SeqTrack::new(Some(1000));
        u.note_segment(&empty, 1001 + 800, 0, false, false, Some(0));
        u.note_segment(&empty, 1001 + 800, 0, false, true, Some(0));
        assert_eq!(u.peer_next, 1001, "nothing stored ahead");
        assert!(u.rx_drained(&empty));
        assert_eq!(u.store_end(&empty, 1001, 500, false, false), Some(1501));
        assert_eq!(u.store_end(&empty, 1001, 0, false, true), Some(1002));
        u.peer_next = 1001 + 800;
        assert_eq!(
            u.store_end(&empty, 1001, 500, false, false),
            Some(1501),
            "what a segment stores, whatever came before it"
        );
        assert_eq!(u.stored_end(&empty, 1001, 500, false, false), None);
        // A FIN ending past the window is beyond it; within, it is not.
        assert!(s.fin_beyond_window(&v, 1001, 1001));
        assert!(!s.fin_beyond_window(&v, 1001, 1000));
        // In the handshake, only the exact ACK of our SYN: a blind SYN-ACK
        // sets neither the peer's ISN nor SND.UNA.
        let mut s = SeqTrack::new(None);
        s.offset = SeqOffset::fixed(76);
        s.note_segment(&view(SynSent, 0), 300, 0, true, false, Some(78));
        assert_eq!((s.peer_isn, s.peer_ack), (None, 0));
        s.note_segment(&view(SynSent, 0), 300, 0, true, false, Some(77));
        assert_eq!((s.peer_isn, s.peer_next, s.peer_ack), (Some(300), 301, 77));
        // Before our SYN has left, nothing can acknowledge it.
        let mut s = SeqTrack::new(None);
        s.note_segment(&view(SynSent, 0), 300, 0, true, false, Some(1));
        assert_eq!(s.peer_isn, None);
        // A SYN without ACK is a simultaneous open; with FIN, malformed.
        s.note_segment(&view(SynSent, 0), 300, 0, true, true, None);
        assert_eq!(s.peer_isn, None);
        s.note_segment(&view(SynSent, 0), 300, 0, true, false, None);
        assert_eq!(s.peer_isn, Some(300));
    }

    #[test]
    fn a_bare_ack_from_a_rewound_peer_is_taken_at_rcv_nxt() {
        use TcpState::*;
        let v = view(Established, 100);
        let mut s = SeqTrack::new(Some(999));
        s.peer_ack = 5000;
        // RCV.NXT is 1000. Behind it, acknowledging up to all we sent: at
        // RCV.NXT.
        assert_eq!(s.rewound_ack_at(&v, 900, 5050), Some(1000));
        assert_eq!(s.rewound_ack_at(&v, 900, 5000), Some(1000));
        assert_eq!(s.rewound_ack_at(&v, 900, 5100), Some(1000));
        assert_eq!(s.rewound_ack_at(&v, 0, 5100), Some(1000));
        // Not behind, a keep-alive (one behind), further behind than the
        // receive buffer, an old ACK, an ACK of more than was sent: as is.
        for (seq, ack) in [
            (1000, 5050),
            (999, 5050),
            (1000u32.wrapping_sub(1001), 5050),
        ] {
            assert_eq!(s.rewound_ack_at(&v, seq, ack), None, "{seq} {ack}");
        }
        assert_eq!(s.rewound_ack_at(&v, 900, 4999), None);
        assert_eq!(s.rewound_ack_at(&v, 900, 5101), None);
        // Nothing of ours unacknowledged, or not synchronized: as is.
        assert_eq!(s.rewound_ack_at(&view(Established, 0), 900, 5000), None);
        assert_eq!(s.rewound_ack_at(&view(SynReceived, 100), 900, 5050), None);
        assert_eq!(SeqTrack::new(None).rewound_ack_at(&v, 900, 5050), None);
    }

    #[test]
    fn rfc5961_challenges_at_most_once_a_second_and_drops_blind_rsts() {
        use TcpState::*;
        let v = view(Established, 0);
        let mut s = SeqTrack::new(Some(999));
        s.peer_ack = 42;
        // RCV.NXT is 1000, the window 1000 octets.
        assert_eq!(
            s.challenge(at(0), &v, &seg(1000, false, true)),
            Rfc5961::Accept
        );
        assert_eq!(
            s.challenge(at(0), &v, &seg(2000, false, true)),
            Rfc5961::DropOutOfWindow
        );
        let ack = Segment {
            seq: 42,
            ack: 1000,
            control: TcpControl::None,
            window: 1000,
        };
        assert_eq!(
            s.challenge(at(0), &v, &seg(1500, false, true)),
            Rfc5961::Challenge(Some(ack))
        );
        assert_eq!(
            s.challenge(at(999), &v, &seg(7, true, false)),
            Rfc5961::Challenge(None)
        );
        assert_eq!(
            s.challenge(at(1000), &v, &seg(7, true, false)),
            Rfc5961::Challenge(Some(ack))
        );
        // Not synchronized: smoltcp handles it.
        for state in [SynSent, SynReceived, Listen, Closed] {
            assert_eq!(
                s.challenge(at(5000), &view(state, 0), &seg(7, true, false)),
                Rfc5961::Accept
            );
        }
    }

    #[test]
    fn how_a_connection_ended_names_the_error_the_application_sees() {
        use Cause::*;
        use TcpState::*;
        let cases = [
            (SynSent, Ingress, false, Some(Ending::Refused)),
            (Established, Ingress, false, Some(Ending::Reset)),
            (Established, Egress, false, Some(Ending::TimedOut)),
            (Established, Egress, true, None),
            (LastAck, Ingress, true, Some(Ending::Closed)),
            (TimeWait, Egress, true, None),
            (Established, App, false, None),
        ];
        for (prev, cause, released, want) in cases {
            assert_eq!(Ending::of(prev, cause, released), want, "{prev} {cause:?}");
        }
        assert_eq!(Ending::Refused.error(), Some(ConnError::Refused));
        assert_eq!(Ending::Closed.error(), None);

        let mut c = conn(Phase::Owned);
        c.last_state = SynSent;
        // An application call's pass records nothing...
        assert_eq!(c.observe(Closed, App), (SynSent, None));
        assert_eq!(c.last_state, SynSent);
        // ...the next one does, once.
        assert_eq!(c.observe(Closed, Ingress), (SynSent, Some(Ending::Refused)));
        assert_eq!(c.error, Some(ConnError::Refused));
        assert_eq!(c.observe(Closed, Egress), (Closed, None));
    }

    #[test]
    fn a_half_open_connection_goes_to_its_listener_once_its_handshake_is_over() {
        use TcpState::*;
        let mut slab = super::super::socket_set::Slab::default();
        let listener = slab.insert(());
        let c = conn(Phase::HalfOpen(listener));
        assert_eq!(c.handshake(SynReceived), None);
        assert_eq!(
            c.handshake(Established),
            Some((listener, Handshake::Established))
        );
        assert_eq!(
            c.handshake(CloseWait),
            Some((listener, Handshake::Established))
        );
        assert_eq!(c.handshake(Closed), Some((listener, Handshake::Failed)));
        assert_eq!(conn(Phase::Owned).handshake(Established), None);
    }

    #[test]
    fn reaping_frees_released_connections_and_owes_the_last_ack() {
        use TcpState::*;
        let mut c = conn(Phase::Released);
        c.seq.peer_ack = 5;
        let v = view(TimeWait, 0);
        // RCV.NXT: ISN 99 + 1 + the FIN.
        let ack = Segment {
            seq: 5,
            ack: 101,
            control: TcpControl::None,
            window: 1000,
        };
        assert_eq!(
            c.reap(&v, Cause::App),
            Reap::TimeWait {
                owed_ack: Some(ack),
                record: Some(101),
                free: true,
            }
        );
        c.seq.ack_sent = Some(101);
        assert_eq!(
            c.reap(&v, Cause::Egress),
            Reap::TimeWait {
                owed_ack: None,
                record: Some(101),
                free: true,
            }
        );
        // Brought here by the peer's segment: its ACK goes from the record.
        c.seq.ack_sent = None;
        assert!(matches!(
            c.reap(&v, Cause::Ingress),
            Reap::TimeWait { owed_ack: None, .. }
        ));
        // The application's connection in TIME-WAIT gets a record too, but
        // stays its own, detached, until it lets go.
        let mut c = conn(Phase::Owned);
        assert!(matches!(
            c.reap(&v, Cause::Ingress),
            Reap::TimeWait {
                free: false,
                record: Some(101),
                ..
            }
        ));
        c.detach();
        assert!(!c.registered);
        assert_eq!(c.reap(&v, Cause::Egress), Reap::Keep);
        c.phase = Phase::Released;
        assert_eq!(
            c.reap(&v, Cause::App),
            Reap::Closed {
                release: false,
                free: true
            }
        );
        // CLOSED gives the 4-tuple back once, and frees a released one.
        let mut c = conn(Phase::Owned);
        let closed = view(Closed, 0);
        assert_eq!(
            c.reap(&closed, Cause::Ingress),
            Reap::Closed {
                release: true,
                free: false
            }
        );
        assert_eq!(
            c.reap(&closed, Cause::Egress),
            Reap::Closed {
                release: false,
                free: false
            }
        );
        c.phase = Phase::Released;
        assert_eq!(
            c.reap(&closed, Cause::App),
            Reap::Closed {
                release: false,
                free: true
            }
        );
    }

    #[test]
    fn events_are_raised_once_for_the_applications_connections() {
        use TcpState::*;
        let mut c = conn(Phase::Owned);
        assert!(
            !c.wants_event(Established, Established, Cause::Egress),
            "nothing new"
        );
        assert!(c.wants_event(Established, Established, Cause::Ingress));
        assert!(
            !c.wants_event(CloseWait, Established, Cause::Ingress),
            "already queued"
        );
        c.event_queued = false;
        assert!(
            c.wants_event(Closed, Established, Cause::Egress),
            "state change"
        );
        let mut q = conn(Phase::Released);
        assert!(!q.wants_event(Closed, Established, Cause::Ingress));
    }

    #[test]
    fn scheduling_takes_the_earliest_deadline_and_never_spins() {
        let mut c = conn(Phase::Owned);
        let now = at(100);
        assert_eq!(
            c.schedule(now, Cause::Ingress, Some(at(300)), Some(at(200))),
            Schedule::Queue(at(200))
        );
        assert_eq!(
            c.schedule(now, Cause::Ingress, None, Some(at(200))),
            Schedule::Unchanged,
            "queued already"
        );
        assert_eq!(
            c.schedule(now, Cause::Ingress, Some(now), None),
            Schedule::Now
        );
        // smoltcp says "now" right after it sent what it could: 1 ms later.
        assert_eq!(
            c.schedule(now, Cause::Egress, None, Some(now)),
            Schedule::Queue(at(101))
        );
        assert_eq!(
            c.schedule(now, Cause::Egress, None, None),
            Schedule::Unchanged
        );
        assert_eq!(c.scheduled, None);
    }
}
