//! Listeners: SYN handling, the half-open queue and its eviction, the
//! accept queue (RFC 9293 §3.10.1 "LISTEN").
//!
//! A SYN for a listener becomes a connection of its own at once (a smoltcp
//! socket put in LISTEN on the SYN's exact address), registered under the
//! SYN's 4-tuple so a retransmitted SYN reaches it. Half-open connections
//! count against the backlog too, so one that completes its handshake
//! always finds room in the accept queue.

use std::collections::VecDeque;
use std::net::SocketAddr;

use log::debug;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::IpListenEndpoint;

use super::budget::Refusal;
use super::conn::{Handshake, Phase};
use super::isn::COOKIE_LIFETIME;
use super::socket_set::{Owner, Socket, SocketId};
use super::tcp::NoSocket;
use super::{Event, Stack, SynCookies, TcpHandle, TcpState};
use crate::demux::TcpSeg;
use crate::error::{AcceptError, ListenError};
use crate::port_table::{FlowKey, Lookup, Protocol};

/// A half-open connection is evicted for a new SYN only once it is older
/// than this and than its listener's smoothed handshake time: a real
/// client completes within about one handshake time, a spoofed SYN never.
const MIN_EVICTION_AGE: Duration = Duration::from_millis(1);

/// ...but never needs to be older than this to be evicted, whatever the
/// handshake times: slow handshakes (or peers that answer slowly on
/// purpose) would otherwise switch eviction off. smoltcp sends the
/// SYN-ACK again after this long (RFC 6298's initial RTO), so a client
/// still in its handshake by then has lost a round trip already.
const MAX_EVICTION_AGE: Duration = Duration::from_secs(1);

/// Handle of a TCP listener.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct ListenerHandle(pub(crate) SocketId);

/// A TCP listener: a bound port with its queues.
pub(crate) struct Listener {
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
    /// When it last had to evict a half-open connection: a sign of a SYN
    /// flood, which lets `SynCookies::Auto` answer with cookies.
    pub evicted_at: Option<Instant>,
    /// When it last sent a SYN cookie: while one may still come back,
    /// ACKs for no connection are checked for one.
    pub cookie_sent_at: Option<Instant>,
}

impl Listener {
    /// Whether `at` lies within a cookie's lifetime before `now`.
    pub(super) fn recent(at: Option<Instant>, now: Instant) -> bool {
        at.is_some_and(|t| now < t + COOKIE_LIFETIME)
    }
}

impl Stack {
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
            evicted_at: None,
            cookie_sent_at: None,
        }));
        debug_assert_eq!(got, id);
        debug!("listen {bound}");
        Ok(ListenerHandle(id))
    }

    /// The address a listener is bound to.
    pub fn listener_addr(&self, l: ListenerHandle) -> Option<SocketAddr> {
        self.sockets.listener(l.0).map(|l| l.local)
    }

    /// Take the oldest established connection from the accept queue.
    pub fn accept(&mut self, l: ListenerHandle) -> Result<TcpHandle, AcceptError> {
        loop {
            let listener = self
                .sockets
                .listener_mut(l.0)
                .ok_or(AcceptError::InvalidHandle)?;
            let id = listener.queue.pop_front().ok_or(AcceptError::WouldBlock)?;
            if let Some(c) = self.sockets.tcp_mut(id) {
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
            if self.sockets.tcp(id).is_some_and(|c| c.socket().is_open()) {
                self.counters.tcp_aborted += 1;
            }
            self.reset_and_free(id);
        }
    }

    /// A segment no connection owns: a SYN for a listener opens a half-open
    /// connection; anything else is refused with RST (never for a RST).
    pub(super) fn tcp_without_flow(
        &mut self,
        found: Lookup<Owner>,
        key: &FlowKey,
        seg: &TcpSeg,
        packet: &[u8],
    ) {
        if let Lookup::Bound(l) = found {
            if seg.is_initial_syn() {
                self.syn_to_listener(l.id, *key, seg, packet);
                return;
            }
            // An ACK for no connection may return a SYN cookie.
            if seg.ack && !seg.syn && !seg.rst && self.cookies_in_use(l.id) {
                if self.syn_cookie_ack(l.id, key, seg, packet) {
                    return;
                }
                self.counters.tcp_syn_cookies_failed += 1;
            }
        }
        if seg.is_initial_syn() {
            self.counters.tcp_refused += 1;
        }
        if !seg.rst {
            self.counters.tcp_rst_sent += 1;
        }
        self.link.answer_unmatched(self.now, packet);
    }

    /// A SYN for a listener: make a half-open connection of its own.
    /// Half-open connections count against the backlog too, so a connection
    /// that completes always finds room in the accept queue. When there is
    /// no room for another (the half-open limit `syn_backlog` is reached,
    /// or half-open and queued connections fill the backlog), the oldest
    /// half-open connection makes room (see
    /// [`evict_oldest_half_open`](Self::evict_oldest_half_open)); if none
    /// is old enough, or the accept queue alone fills the backlog, the SYN
    /// is dropped and counted (the peer retransmits it, RFC 9293
    /// §3.10.7.2).
    fn syn_to_listener(&mut self, l: SocketId, key: FlowKey, seg: &TcpSeg, packet: &[u8]) {
        let now = self.now;
        let cookies = self.config.syn_cookies;
        let Some(listener) = self.sockets.listener(l) else {
            return;
        };
        let queued = listener.queue.len();
        if queued >= listener.backlog {
            // The accept queue itself is full: nothing to evict, and no
            // room for a connection a cookie would bring back either.
            self.counters.drop_accept_queue_full += 1;
            return;
        }
        if cookies == SynCookies::Always {
            self.send_syn_cookie(l, &key, seg, packet);
            return;
        }
        // Room for half-open connections: the half-open limit, and what
        // the accept queue leaves of the backlog. Either way, when it is
        // full the oldest half-open connection may make room.
        let room = self.config.syn_backlog.min(listener.backlog - queued);
        let mut chosen_iss = None;
        if listener.half_open >= room {
            let syn_queue_full = listener.half_open >= self.config.syn_backlog;
            // Whether the backlog has a place for a connection a cookie
            // brings back (the half-open limit, not the backlog, is full),
            // and whether the listener is under a flood.
            let place = listener.half_open + queued < listener.backlog;
            let flood = Listener::recent(listener.evicted_at, now);
            if self.evict_oldest_half_open(l, false) {
                // Under pressure: should this one be evicted in turn, a
                // cookie for its ISN still lets its client in.
                if cookies == SynCookies::Auto {
                    chosen_iss = Some(self.syn_cookie(l, &key, seg, packet).0);
                }
            } else if cookies == SynCookies::Auto && (place || flood) {
                self.send_syn_cookie(l, &key, seg, packet);
                return;
            } else {
                if syn_queue_full {
                    self.counters.drop_syn_queue_full += 1;
                } else {
                    self.counters.drop_accept_queue_full += 1;
                }
                return;
            }
        }
        let (mut socket, chunk) = match self.new_tcp_socket() {
            Ok(s) => s,
            // Dropped, not reset: the peer retries, and may find room then.
            Err(NoSocket::Refused(Refusal::Connections)) => {
                self.counters.drop_syn_connection_limit += 1;
                return;
            }
            Err(NoSocket::Refused(Refusal::Memory)) => {
                self.counters.drop_syn_memory_limit += 1;
                return;
            }
            Err(NoSocket::NoLease) => return,
        };
        let Some(listener) = self.sockets.listener_mut(l) else {
            drop(socket);
            self.release_chunk(chunk, Some(crate::buffer_pool::Residual::EMPTY));
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
        let got = self.insert_conn((socket, chunk), key, Phase::HalfOpen(l), Some(seg.seq));
        debug_assert_eq!(got, id);
        if let Some(c) = self.sockets.tcp_mut(id) {
            c.seq.chosen_iss = chosen_iss;
        }
        self.note_half_open(l, id);
        self.ingress(id, seg, packet);
    }

    /// Put a new half-open connection `id` in listener `l`'s eviction
    /// order.
    pub(super) fn note_half_open(&mut self, l: SocketId, id: SocketId) {
        let syn_backlog = self.config.syn_backlog;
        if let Some(listener) = self.sockets.listener_mut(l) {
            listener.half_open_order.push_back(id);
            // Drop stale ids now and then, so the order stays within twice
            // the half-open limit (amortised O(1) per SYN).
            if listener.half_open_order.len() > 2 * syn_backlog {
                let mut order = std::mem::take(&mut listener.half_open_order);
                order.retain(|&h| {
                    self.sockets
                        .tcp(h)
                        .is_some_and(|c| c.phase == Phase::HalfOpen(l))
                });
                if let Some(listener) = self.sockets.listener_mut(l) {
                    listener.half_open_order = order;
                }
            }
        }
    }

    /// SYN-flood defence: free the listener's oldest half-open connection
    /// silently (no RST: under a flood its peer is usually spoofed, and a
    /// RST would be backscatter). A real client answers a SYN-ACK within
    /// one round trip, so it survives as long as fewer than `syn_backlog`
    /// SYNs arrive per round trip; this is the "SYN cache with oldest-first
    /// eviction" of RFC 4987 §3.3/§3.4. Beyond that rate SYN cookies (§3.6)
    /// take over (`syn_cookies`). Only a connection older than the
    /// listener's handshake time goes, unless `any_age` (to make room for
    /// a client a valid cookie proved real). Returns whether one was
    /// evicted.
    pub(super) fn evict_oldest_half_open(&mut self, l: SocketId, any_age: bool) -> bool {
        let now = self.now;
        loop {
            let Some(listener) = self.sockets.listener(l) else {
                return false;
            };
            let Some(&id) = listener.half_open_order.front() else {
                return false;
            };
            let threshold = listener
                .handshake_rtt
                .map_or(MIN_EVICTION_AGE, |r| r.max(MIN_EVICTION_AGE))
                .min(MAX_EVICTION_AGE);
            let key = match self.sockets.tcp(id) {
                Some(c) if c.phase == Phase::HalfOpen(l) => {
                    // Younger than a typical handshake: likely a burst of
                    // real clients, not a flood. Drop the new SYN instead
                    // (its sender retransmits) rather than reset one of them.
                    if now - c.created < threshold && !any_age {
                        return false;
                    }
                    c.registered.then_some(c.key)
                }
                _ => {
                    if let Some(listener) = self.sockets.listener_mut(l) {
                        listener.half_open_order.pop_front();
                    }
                    continue;
                }
            };
            if let Some(listener) = self.sockets.listener_mut(l) {
                listener.half_open_order.pop_front();
            }
            if let Some(key) = key {
                self.table.release(&key);
            }
            self.free_tcp(id);
            if let Some(listener) = self.sockets.listener_mut(l) {
                listener.half_open -= 1;
                listener.evicted_at = Some(now);
            }
            self.counters.drop_half_open_evicted += 1;
            return true;
        }
    }

    /// A half-open connection's handshake is over (`took`: since its SYN,
    /// unless a cookie brought it back): established, it moves to its
    /// listener's accept queue (or is reset when the queue is full);
    /// failed, it is freed. Returns whether the connection lives on.
    pub(super) fn settle_half_open(
        &mut self,
        id: SocketId,
        l: SocketId,
        outcome: Handshake,
        took: Option<Duration>,
    ) -> bool {
        let established = outcome == Handshake::Established;
        let queued = match self.sockets.listener_mut(l) {
            Some(listener) => {
                listener.half_open -= 1;
                if established && listener.queue.len() < listener.backlog {
                    // Smoothed handshake time (RFC 6298 gain 1/8), for the
                    // eviction age threshold.
                    if let Some(took) = took {
                        listener.handshake_rtt = Some(match listener.handshake_rtt {
                            Some(r) => (r * 7 + took) / 8,
                            None => took,
                        });
                    }
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
            None => false,
        };
        if !queued {
            self.reset_and_free(id);
            return false;
        }
        self.counters.tcp_passive_opens += 1;
        match self.sockets.tcp_mut(id) {
            Some(c) => {
                c.phase = Phase::Queued(l);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build::{tcp_options, Tcp, TcpOpt};
    use crate::wire::TcpFlags;
    use crate::{Instant, StackConfig};

    /// A SYN from `from` to `to`.
    fn syn(from: SocketAddr, to: SocketAddr, isn: u32) -> Vec<u8> {
        Tcp {
            seq: isn,
            flags: TcpFlags::SYN,
            window: 65535,
            options: &tcp_options(&[TcpOpt::Mss(1460)]),
            ..Default::default()
        }
        .atomic_packet(from, to)
    }

    #[test]
    fn half_open_connections_count_against_the_backlog_and_invariants_check_it() {
        let config = StackConfig {
            addrs: vec![("10.0.0.2".parse().unwrap(), 24)],
            seed: Some(1),
            ..StackConfig::default()
        };
        let now = Instant::from_millis(0);
        let mut st = Stack::new(config, now).unwrap();
        let server: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let l = st.listen(server, Some(2)).unwrap();
        for port in [40000, 40001, 40002] {
            let client = SocketAddr::new("10.0.0.1".parse().unwrap(), port);
            st.handle_packet(now, &syn(client, server, 7));
        }
        // Two half-open connections fill a backlog of 2: the third SYN is
        // dropped, so each of the two finds room once established.
        assert_eq!(st.counters().drop_accept_queue_full, 1);
        assert_eq!(st.socket_count(), 3);
        st.check_invariants().unwrap();

        // A listener whose counts outgrow its backlog...
        st.sockets.listener_mut(l.0).unwrap().half_open += 1;
        let e = st.check_invariants().unwrap_err();
        assert!(e.contains("3 half-open + 0 queued over backlog 2"), "{e}");
        // ...or disagree with its connections, is caught.
        st.sockets.listener_mut(l.0).unwrap().backlog = 10;
        let e = st.check_invariants().unwrap_err();
        assert!(e.contains("counts 3 half-open"), "{e}");
        st.sockets.listener_mut(l.0).unwrap().half_open -= 1;
        st.check_invariants().unwrap();
    }
}
