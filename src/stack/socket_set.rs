//! The socket set: every socket in a slab, addressed by small `Copy` ids.
//!
//! Each TCP connection and UDP socket owns a smoltcp `SocketSet` holding
//! exactly one smoltcp socket. smoltcp's interface scans the set it is
//! given for a socket that accepts a packet, so by handing it a one-socket
//! set the stack makes that scan O(1): the port table already decided which
//! connection a packet is for.
//!
//! Listeners are ours alone (smoltcp's listen socket turns into the
//! connection it accepts): a listener is a bound port, a count of half-open
//! connections and a bounded accept queue.
//!
//! Egress is driven by a dirty list (sockets with something new to send)
//! and a timer queue fed by each socket's own `poll_at`, so nothing walks
//! all sockets on a timer tick.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};

use crate::buffer_pool::Chunk;
use crate::error::ConnError;
use crate::port_table::FlowKey;

/// A socket's id: slab index plus a generation, so a stale id never reaches
/// a socket that reused its slot.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    index: u32,
    generation: u32,
}

/// What the port table holds for a socket: its id and, for a TCP
/// connection, where the memory a segment will touch lies: its smoltcp
/// socket and receive ring. The demux reads the owner with the flow, so it
/// can start loading all of it at once, while the slab slot is still on
/// its way from memory, instead of one after the other. The addresses are
/// prefetch hints only, never dereferenced.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The socket.
    pub id: SocketId,
    socket: usize,
    rx: usize,
    /// The sequence number stored at the ring's offset 0: the peer's
    /// ISN + 1 (`rx` is 0 until the ISN is known).
    rx_seq: u32,
}

impl Owner {
    /// The owner `id`, with no hints (listeners, UDP sockets, and a
    /// connection until its socket exists).
    pub fn of(id: SocketId) -> Owner {
        Owner {
            id,
            socket: 0,
            rx: 0,
            rx_seq: 0,
        }
    }

    /// Start loading what a segment at `seq` for this owner will touch:
    /// every line of its smoltcp socket, and the receive-ring lines the
    /// payload lands in (`rx_len`: the ring's size). smoltcp's ring starts
    /// at offset 0 and its read position advances by what the application
    /// reads, so in-order data lands at (seq − ISN − 1) mod ring size.
    #[inline]
    pub fn prefetch(&self, seq: u32, rx_len: usize) {
        if self.socket != 0 {
            for off in (0..std::mem::size_of::<tcp::Socket<'static>>()).step_by(64) {
                prefetch(self.socket + off);
            }
        }
        if self.rx != 0 && rx_len > 0 {
            let at = seq.wrapping_sub(self.rx_seq) as usize % rx_len;
            prefetch(self.rx + at);
            prefetch(self.rx + (at + 64) % rx_len);
        }
    }
}

/// A slab of values addressed by [`SocketId`].
pub struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// The id the next [`insert`](Self::insert) will return.
    pub fn next_id(&self) -> SocketId {
        match self.free.last() {
            Some(&index) => SocketId {
                index,
                generation: self.slots[index as usize].0,
            },
            None => SocketId {
                index: self.slots.len() as u32,
                generation: 0,
            },
        }
    }

    /// Store `value`, returning its id.
    pub fn insert(&mut self, value: T) -> SocketId {
        let id = self.next_id();
        match self.free.pop() {
            Some(index) => self.slots[index as usize].1 = Some(value),
            None => self.slots.push((0, Some(value))),
        }
        self.len += 1;
        id
    }

    /// The value at `id`, if it is still there.
    pub fn get(&self, id: SocketId) -> Option<&T> {
        match self.slots.get(id.index as usize) {
            Some((generation, Some(v))) if *generation == id.generation => Some(v),
            _ => None,
        }
    }

    /// The value at `id`, mutably.
    pub fn get_mut(&mut self, id: SocketId) -> Option<&mut T> {
        match self.slots.get_mut(id.index as usize) {
            Some((generation, Some(v))) if *generation == id.generation => Some(v),
            _ => None,
        }
    }

    /// Take the value out; the slot's generation moves on so `id` goes stale.
    pub fn remove(&mut self, id: SocketId) -> Option<T> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.0 != id.generation || slot.1.is_none() {
            return None;
        }
        let v = slot.1.take();
        slot.0 = slot.0.wrapping_add(1);
        self.free.push(id.index);
        self.len -= 1;
        v
    }

    /// Number of values stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the slab is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every stored value with its id (O(capacity): for display only).
    pub fn iter(&self) -> impl Iterator<Item = (SocketId, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, (generation, v))| {
                v.as_ref().map(|v| {
                    (
                        SocketId {
                            index: i as u32,
                            generation: *generation,
                        },
                        v,
                    )
                })
            })
    }
}

/// Where a TCP connection is in its life, from the stack's side.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Phase {
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

/// One TCP connection: its smoltcp socket and our bookkeeping.
pub struct TcpConn {
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
    /// Ownership phase.
    pub phase: Phase,
    /// Why it failed, if it did.
    pub error: Option<ConnError>,
    /// The state seen after the last event, to detect transitions.
    pub last_state: tcp::State,
    /// When it was created.
    pub created: Instant,
    /// The deadline it is queued under in the timer heap, if any.
    pub scheduled: Option<Instant>,
    /// Whether it sits on the dirty list.
    pub dirty: bool,
    /// Whether an event for it is queued for the application.
    pub event_queued: bool,
    /// Last time the connection made progress: an ACK that freed send
    /// buffer, a state change, or nothing outstanding at all.
    pub progress_at: Instant,
    /// Send-queue length at the last check, to see ACKs free it.
    pub last_send_queue: usize,
    /// The peer's latest SEG.ACK.
    pub peer_ack: u32,
    /// The sequence number just past the peer's latest segment (our
    /// RCV.NXT when segments arrive in order).
    pub peer_next: u32,
    /// SEG.ACK of the last segment this connection sent, if any: when it
    /// is behind RCV.NXT, an ACK is still owed to the peer.
    pub ack_sent: Option<u32>,
    /// FIN watchdog: when to re-send our FIN ourselves, and the backoff.
    pub fin_watch: Option<(Instant, u32)>,
    /// Since when it has been released and in FIN-WAIT-2 (for the
    /// FIN-WAIT-2 timeout).
    pub orphan_since: Option<Instant>,
    /// When a challenge ACK was last sent for a SYN (RFC 5961 §4), to
    /// send at most one a second.
    pub challenged_at: Option<Instant>,
    /// The peer's initial sequence number, once its SYN is seen.
    pub peer_isn: Option<u32>,
    /// Octets the application has read (wrapping), to tell whether the
    /// receive buffer may hold out-of-order data.
    pub rx_read: u32,
    /// Since when both buffers have been empty, if they are.
    pub idle_since: Option<Instant>,
    /// Whether the buffer pages were handed back since they last held data.
    pub shrunk: bool,
    /// The buffer memory the socket's two ring buffers live in. Declared
    /// last: fields drop in order, so the socket in `set` goes first.
    pub chunk: Option<Chunk>,
}

impl TcpConn {
    /// Whether everything the peer sent up to the highest sequence number
    /// seen has been read by the application: then the receive buffer holds
    /// no out-of-order data either.
    pub fn rx_drained(&self) -> bool {
        self.peer_isn.is_none()
            || (self.socket().recv_queue() == 0 && self.peer_next == self.rcv_nxt())
    }

    /// RCV.NXT, computed from what cannot be forged: the peer's ISN, the
    /// octets the application read, those waiting in order, and whether
    /// the peer's FIN was accepted. (smoltcp does not expose its own.)
    /// Before the peer's SYN is seen, the highest sequence number seen.
    pub fn rcv_nxt(&self) -> u32 {
        let Some(isn) = self.peer_isn else {
            return self.peer_next;
        };
        let fin = matches!(
            self.socket().state(),
            tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait
        ) as u32;
        isn.wrapping_add(1)
            .wrapping_add(self.rx_read)
            .wrapping_add(self.socket().recv_queue() as u32)
            .wrapping_add(fin)
    }

    /// Free space in the receive buffer: the window the peer may fill.
    pub fn rx_free(&self) -> usize {
        self.socket().recv_capacity() - self.socket().recv_queue()
    }

    /// The receive window as a bare segment carries it (unscaled, capped).
    pub fn window_field(&self) -> u16 {
        self.rx_free().min(0xffff) as u16
    }

    /// Whether a segment `seq..seq+len` with FIN ends beyond the receive
    /// window, so its FIN cannot be accepted yet.
    pub fn fin_beyond_window(&self, seq: u32, len: u32) -> bool {
        if self.peer_isn.is_none() {
            return false;
        }
        let free = self.rx_free();
        let end = seq.wrapping_add(len).wrapping_sub(self.rcv_nxt()) as i32;
        end > free as i32
    }

    /// Take note of a segment from the peer before smoltcp sees it: its
    /// ISN, and (if plausible — inside the windows, so forged segments
    /// cannot move them) the highest sequence number and SND.UNA.
    pub fn note_segment(&mut self, seq: u32, len: u32, syn: bool, fin: bool, ack: Option<u32>) {
        if syn && self.peer_isn.is_none() {
            self.peer_isn = Some(seq);
            self.peer_next = seq.wrapping_add(1);
        }
        let handshake = matches!(
            self.socket().state(),
            tcp::State::SynSent | tcp::State::SynReceived
        );
        let next = seq.wrapping_add(len + syn as u32 + fin as u32);
        let ahead = next.wrapping_sub(self.rcv_nxt()) as i32;
        if ahead > 0
            && ahead as usize <= self.socket().recv_capacity() + 1
            && (next.wrapping_sub(self.peer_next) as i32) > 0
        {
            self.peer_next = next;
        }
        if let Some(ack) = ack {
            let advance = ack.wrapping_sub(self.peer_ack) as i32;
            if handshake || (advance >= 0 && advance as usize <= self.socket().send_queue() + 1) {
                self.peer_ack = ack;
            }
        }
    }

    /// What the port table should hold for this connection, slot `id`.
    pub fn owner(&self, id: SocketId) -> Owner {
        let (rx, rx_seq) = match self.peer_isn {
            Some(isn) => (self.rx_addr, isn.wrapping_add(1)),
            None => (0, 0),
        };
        Owner {
            id,
            socket: self.socket_addr,
            rx,
            rx_seq,
        }
    }

    /// The smoltcp socket.
    pub fn socket(&self) -> &tcp::Socket<'static> {
        self.set.get(self.handle)
    }

    /// The smoltcp socket, mutably.
    pub fn socket_mut(&mut self) -> &mut tcp::Socket<'static> {
        self.set.get_mut(self.handle)
    }
}

/// Hint the CPU to load the cache line at `addr`. A prefetch never faults
/// and has no visible effect, whatever the address.
#[inline(always)]
fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` only hints the cache; it does not access memory
    // architecturally and cannot fault, even on an unmapped address.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(addr as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// A TCP listener: a bound port with its queues (RFC 9293 §3.10.1 "LISTEN").
pub struct Listener {
    /// The bound address (may be a wildcard).
    pub local: SocketAddr,
    /// Accept-queue limit.
    pub backlog: usize,
    /// Half-open (SYN-RECEIVED) connections it has spawned.
    pub half_open: usize,
    /// Ids of the half-open connections in arrival order, oldest first;
    /// may hold stale ids (connections that completed or failed), which
    /// eviction skips and pruning drops.
    pub half_open_order: VecDeque<SocketId>,
    /// Established connections waiting for `accept`.
    pub queue: VecDeque<SocketId>,
    /// When it was created.
    pub created: Instant,
    /// Whether an `Incoming` event is queued for it.
    pub event_queued: bool,
    /// Smoothed time from SYN to ESTABLISHED of its connections.
    pub handshake_rtt: Option<Duration>,
}

/// A UDP socket.
pub struct UdpSock {
    /// A set holding exactly this socket's smoltcp socket.
    pub set: SocketSet<'static>,
    /// The socket's handle inside `set`.
    pub handle: SocketHandle,
    /// The bound address.
    pub local: SocketAddr,
    /// When it was created.
    pub created: Instant,
    /// Whether it sits on the dirty list.
    pub dirty: bool,
    /// Whether an event for it is queued for the application.
    pub event_queued: bool,
    /// An ICMP "port unreachable" for a datagram it sent, not yet reported.
    pub refused: bool,
}

impl UdpSock {
    /// The smoltcp socket.
    pub fn socket(&self) -> &udp::Socket<'static> {
        self.set.get(self.handle)
    }

    /// The smoltcp socket, mutably.
    pub fn socket_mut(&mut self) -> &mut udp::Socket<'static> {
        self.set.get_mut(self.handle)
    }
}

/// Anything the slab holds.
pub enum Socket {
    /// A TCP connection.
    Tcp(TcpConn),
    /// A TCP listener.
    Listener(Listener),
    /// A UDP socket.
    Udp(Box<UdpSock>),
}

/// Deadlines of sockets, earliest first. Entries go stale when a socket is
/// rescheduled or freed; the owner checks `scheduled` when popping.
#[derive(Default)]
pub struct TimerQueue {
    heap: BinaryHeap<Reverse<(Instant, SocketId)>>,
}

impl TimerQueue {
    /// Queue `id` for `at`.
    pub fn push(&mut self, at: Instant, id: SocketId) {
        self.heap.push(Reverse((at, id)));
    }

    /// The earliest deadline (possibly stale, so possibly early).
    pub fn peek(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pop the earliest entry if it is due by `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, SocketId)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Number of entries, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no entry is queued.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_ids_go_stale_after_remove() {
        let mut s: Slab<&str> = Slab::default();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!(s.get(a), Some(&"a"));
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.get(a), None);
        assert_eq!(s.remove(a), None);
        let c = s.insert("c");
        // Slot reused, generation moved on.
        assert_ne!(a, c);
        assert_eq!(s.get(a), None);
        assert_eq!(s.get(c), Some(&"c"));
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.len(), 2);
        assert_eq!(s.iter().count(), 2);
    }

    #[test]
    fn next_id_predicts_insert() {
        let mut s: Slab<u8> = Slab::default();
        for i in 0..10 {
            let want = s.next_id();
            assert_eq!(s.insert(i), want);
        }
        let third = s.iter().nth(3).unwrap().0;
        s.remove(third);
        let want = s.next_id();
        assert_eq!(s.insert(99), want);
    }

    #[test]
    fn timers_pop_in_order_and_only_when_due() {
        let mut s: Slab<u8> = Slab::default();
        let (a, b) = (s.insert(1), s.insert(2));
        let mut q = TimerQueue::default();
        q.push(Instant::from_millis(20), a);
        q.push(Instant::from_millis(10), b);
        assert_eq!(q.peek(), Some(Instant::from_millis(10)));
        assert_eq!(q.pop_due(Instant::from_millis(5)), None);
        assert_eq!(
            q.pop_due(Instant::from_millis(25)),
            Some((Instant::from_millis(10), b))
        );
        assert_eq!(
            q.pop_due(Instant::from_millis(25)),
            Some((Instant::from_millis(20), a))
        );
        assert!(q.is_empty());
    }
}
