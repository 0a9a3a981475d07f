//! The TCP socket API: connect, send, receive, shut down, close, abort,
//! and the queries, much as a BSD socket offers them; plus the life of a
//! connection's slot (its socket, buffers and port-table entry).

use std::net::SocketAddr;

use log::debug;
use smoltcp::socket::tcp;
use smoltcp::wire::IpEndpoint;

use super::budget::{Refusal, Rings};
use super::conn::{Cause, Phase, TcpConn};
use super::socket_set::{Owner, Slab, Socket, SocketId};
use super::{Stack, TcpState};
use crate::buffer_pool::{Chunk, Residual};
use crate::error::{ConnError, ConnectError, RecvError, SendError};
use crate::port_table::{FlowKey, Protocol};

/// Handle of a TCP connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct TcpHandle(pub(crate) SocketId);

/// Whether `remote` can be a peer: a unicast address and a port.
pub(super) fn remote_ok(remote: SocketAddr) -> bool {
    !(remote.ip().is_unspecified() || remote.port() == 0 || remote.ip().is_multicast())
}

impl Stack {
    /// The checks every connected socket passes, TCP or UDP, and the
    /// 4-tuple it takes in the port table for the next slot: `local`'s
    /// port, or with port 0 one the table picks for `remote` (RFC 6056).
    pub(super) fn claim_flow(
        &mut self,
        proto: Protocol,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<FlowKey, ConnectError> {
        if !remote_ok(remote) {
            return Err(ConnectError::InvalidAddress);
        }
        if !self.is_local(local.ip()) {
            return Err(ConnectError::AddrNotAvailable);
        }
        if local.is_ipv4() != remote.is_ipv4() {
            return Err(ConnectError::NetworkUnreachable);
        }
        let owner = Owner::of(self.sockets.next_id());
        if local.port() == 0 {
            self.table
                .allocate(proto, local.ip(), remote, owner, &mut self.rng)
        } else {
            let key = FlowKey::new(proto, local, remote);
            self.table.insert(key, owner).map(|_| key)
        }
        .map_err(|_| ConnectError::AddrNotAvailable)
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
        let key = self.claim_flow(Protocol::Tcp, local, remote)?;
        let id = self.sockets.next_id();
        let (mut socket, chunk) = match self.new_tcp_socket() {
            Ok(s) => s,
            Err(e) => {
                self.table.release(&key);
                return Err(match e {
                    NoSocket::Refused(Refusal::Connections) => {
                        self.counters.tcp_connect_connection_limit += 1;
                        ConnectError::ConnectionLimit
                    }
                    NoSocket::Refused(Refusal::Memory) => {
                        self.counters.tcp_connect_memory_limit += 1;
                        ConnectError::NoBuffers
                    }
                    NoSocket::NoLease => ConnectError::NoBuffers,
                });
            }
        };
        let r = socket.connect(
            self.link.iface.context(),
            IpEndpoint::from(key.remote),
            IpEndpoint::from(key.local),
        );
        if r.is_err() {
            drop(socket);
            self.release_chunk(chunk, Some(Residual::EMPTY));
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

    /// Queue `data` for sending; returns how much fit in the send buffer
    /// (under memory pressure, in what the connection may hold).
    pub fn send(&mut self, h: TcpHandle, data: &[u8]) -> Result<usize, SendError> {
        let c = self.sockets.owned_mut(h).ok_or(SendError::InvalidHandle)?;
        if let Some(e) = c.error {
            return Err(e.into());
        }
        let state = c.socket().state();
        // The memory budget: the octets may touch new pages of the send
        // ring only while it allows (see `budget`).
        let rings = c.view().rings();
        let (isn, rx_end) = (c.seq.peer_isn, c.seq.peer_next);
        let m = &mut c.mem;
        let all = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let want = m.charge_for(rings, isn, rx_end, m.tx_written.saturating_add(all));
        let data = if self.budget.allows(rings, m.charge, want) {
            data
        } else {
            let allowed = m.charge.max(rings.reserve());
            let room = m.tx_room(rings, isn, rx_end, allowed);
            if room < data.len() {
                self.counters.tcp_send_memory_pressure += 1;
                c.send_blocked = true;
            }
            &data[..room.min(data.len())]
        };
        if data.is_empty() && all > 0 {
            return Err(SendError::WouldBlock);
        }
        let n = match c.socket_mut().send_slice(data) {
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
        let m = &mut c.mem;
        m.tx_written = m
            .tx_written
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        let charge = m.charge_for(rings, isn, rx_end, m.tx_written);
        if charge > m.charge {
            self.budget.recharge(rings, m.charge, charge);
            m.charge = charge;
        }
        c.mark_dirty(h.0, &mut self.dirty);
        Ok(n)
    }

    /// Read received data into `buf`. `Ok(0)` is end of stream (the peer
    /// sent FIN and everything before it has been read).
    pub fn recv(&mut self, h: TcpHandle, buf: &mut [u8]) -> Result<usize, RecvError> {
        let wanted = !buf.is_empty();
        self.recv_with(h, wanted, |s| s.recv_slice(buf))
    }

    /// Consume up to `max` received octets without copying them anywhere,
    /// as `recv(2)` with `MSG_TRUNC` does on a TCP socket: for a reader
    /// that drops what it reads (discard). Everything else is `recv`'s:
    /// the octets count as read, the window reopens, `Ok(0)` is end of
    /// stream and the errors are the same.
    pub fn recv_discard(&mut self, h: TcpHandle, max: usize) -> Result<usize, RecvError> {
        self.recv_with(h, max > 0, |s| {
            // The ring's octets lie in at most two runs (it wraps).
            let mut left = max;
            let mut take = |run: &mut [u8]| {
                let n = run.len().min(left);
                left -= n;
                (n, n)
            };
            let first = s.recv(&mut take)?;
            let second = s.recv(&mut take).unwrap_or(0);
            Ok(first + second)
        })
    }

    /// What `recv` and `recv_discard` share: `dequeue` takes octets out of
    /// the socket's ring and says how many; `wanted` is whether the caller
    /// asked for any (a zero-length read is not "no data yet").
    fn recv_with(
        &mut self,
        h: TcpHandle,
        wanted: bool,
        dequeue: impl FnOnce(&mut tcp::Socket<'static>) -> Result<usize, tcp::RecvError>,
    ) -> Result<usize, RecvError> {
        let c = self.sockets.owned_mut(h).ok_or(RecvError::InvalidHandle)?;
        let state = c.socket().state();
        let error = c.error;
        match dequeue(c.socket_mut()) {
            Ok(0) if wanted => match error {
                Some(e) => Err(e.into()),
                None if matches!(state, TcpState::Closed) => Err(RecvError::NotConnected),
                None => Err(RecvError::WouldBlock),
            },
            Ok(n) => {
                c.seq.rx_read = c.seq.rx_read.wrapping_add(n as u32);
                // The window opened: let the peer know.
                c.mark_dirty(h.0, &mut self.dirty);
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
        let c = self.sockets.owned_mut(h).ok_or(SendError::InvalidHandle)?;
        c.socket_mut().close();
        self.after_io(h.0, Cause::App);
        self.mark_dirty(h.0);
        Ok(())
    }

    /// Close gracefully: FIN after the queued data, and give up the handle.
    /// The connection lingers through FIN-WAIT and TIME-WAIT on its own.
    pub fn close(&mut self, h: TcpHandle) {
        let Some(c) = self.sockets.owned_mut(h) else {
            return;
        };
        c.socket_mut().close();
        c.phase = Phase::Released;
        c.mark_dirty(h.0, &mut self.dirty);
        self.after_io(h.0, Cause::App);
    }

    /// Reset the connection (RST) and give up the handle at once.
    pub fn abort(&mut self, h: TcpHandle) {
        let Some(c) = self.sockets.owned_mut(h) else {
            return;
        };
        if c.detached {
            // Over on the wire: nothing to reset, only the handle to free.
            c.phase = Phase::Released;
            self.after_io(h.0, Cause::App);
            return;
        }
        let was_open = c.socket().is_open();
        c.socket_mut().abort();
        c.phase = Phase::Released;
        if was_open {
            self.counters.tcp_aborted += 1;
        }
        // Send the RST now, then reap.
        self.egress(h.0);
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

    /// The connection's RFC 9293 state; `None` once the handle is stale.
    pub fn tcp_state(&self, h: TcpHandle) -> Option<TcpState> {
        self.sockets.owned(h).map(|c| c.socket().state())
    }

    /// Why the connection failed, if it did.
    pub fn tcp_error(&self, h: TcpHandle) -> Option<ConnError> {
        self.sockets.owned(h).and_then(|c| c.error)
    }

    /// Whether `send` would accept data now.
    pub fn can_send(&self, h: TcpHandle) -> bool {
        self.sockets.owned(h).is_some_and(|c| c.socket().can_send())
    }

    /// Whether `recv` would return data or end of stream now.
    pub fn can_recv(&self, h: TcpHandle) -> bool {
        self.sockets.owned(h).is_some_and(|c| {
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
        self.sockets.owned(h).map_or(0, |c| c.socket().send_queue())
    }

    /// The connection's local address.
    pub fn local_addr(&self, h: TcpHandle) -> Option<SocketAddr> {
        self.sockets.owned(h).map(|c| c.key.local)
    }

    /// The connection's remote address.
    pub fn peer_addr(&self, h: TcpHandle) -> Option<SocketAddr> {
        self.sockets.owned(h).map(|c| c.key.remote)
    }

    // ---- a connection's slot -------------------------------------------

    /// A fresh socket with buffers from the pool, if the budget admits
    /// another connection: with the configured rings, or smaller ones
    /// under memory pressure (see `budget`).
    pub(super) fn new_tcp_socket(&mut self) -> Result<(tcp::Socket<'static>, Chunk), NoSocket> {
        let rings = self.budget.rings(Rings {
            rx: self.config.tcp_rx_buffer,
            tx: self.config.tcp_tx_buffer,
        });
        self.budget.admit(rings).map_err(NoSocket::Refused)?;
        if self.budget.under_pressure() {
            self.drain_warm_buffers();
        }
        let chunk = match self.buffers.lease() {
            Ok(c) => {
                if c.residual_pages() > 0 {
                    self.counters.tcp_buffers_warm_reused += 1;
                    // Its pages move from the warm list to the leased
                    // chunks: the pool holds as many as before.
                    self.budget
                        .set_pool(self.buffers.residual_pages(), self.buffers.warm_pages());
                }
                c
            }
            Err(e) => {
                debug!("no buffer memory: {e}");
                self.counters.drop_no_buffers += 1;
                return Err(NoSocket::NoLease);
            }
        };
        if rings.rx != self.config.tcp_rx_buffer || rings.tx != self.config.tcp_tx_buffer {
            self.counters.tcp_opened_under_pressure += 1;
        }
        // SAFETY: one set of slices per lease; the socket is dropped before
        // the chunk is released (`free_tcp`), and the pool outlives both.
        let (rx, tx) = unsafe { self.buffers.slices(&chunk, rings.rx, rings.tx) };
        let c = &self.config;
        let mut s = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        s.set_nagle_enabled(c.nagle);
        s.set_ack_delay(c.ack_delay);
        // Before the handshake: smoltcp hands the peer's MSS to the
        // controller when the SYN or SYN-ACK arrives, and a controller set
        // later would start from its default MSS.
        s.set_congestion_control(c.congestion_control.to_smoltcp());
        // smoltcp's own timeout also fires on idle connections; ephemera
        // applies the user timeout itself, only to outstanding data.
        s.set_timeout(None);
        Ok((s, chunk))
    }

    /// Put a new connection in the slab and tell the port table where its
    /// memory lies; `peer_isn` is the peer's ISN when its SYN opened it.
    pub(super) fn insert_conn(
        &mut self,
        (socket, chunk): (tcp::Socket<'static>, Chunk),
        key: FlowKey,
        phase: Phase,
        peer_isn: Option<u32>,
    ) -> SocketId {
        let mut conn = TcpConn::new(socket, Some(chunk), key, phase, self.now, peer_isn);
        let rings = conn.view().rings();
        self.budget.open(rings);
        if rings.rx != self.config.tcp_rx_buffer {
            // No ring prefetch hints: they assume the configured size.
            conn.rx_addr = 0;
        }
        let owner = self.sockets.next_id();
        self.table.set_owner(&key, conn.owner(owner));
        let id = self.sockets.insert(Socket::Tcp(conn));
        debug_assert_eq!(id, owner);
        id
    }

    /// Free a TCP connection's slot and give its buffer memory back.
    pub(super) fn free_tcp(&mut self, id: SocketId) {
        if let Some(Socket::Tcp(mut c)) = self.sockets.remove(id) {
            let rings = c.view().rings();
            self.budget.close(rings, c.mem.charge);
            let touched = c.mem.touched(rings, c.seq.peer_isn, c.seq.peer_next);
            let chunk = c.chunk.take();
            drop(c);
            if let Some(chunk) = chunk {
                self.release_chunk(chunk, Some(touched));
            }
        }
    }

    /// Give a chunk whose socket is gone back to the pool: kept warm if
    /// the budget has room below the soft mark (see `buffer_pool`);
    /// `touched` as [`BufferPool::release`](crate::buffer_pool::BufferPool::release) takes it.
    pub(super) fn release_chunk(&mut self, chunk: Chunk, touched: Option<Residual>) {
        let room = self.budget.pool_room();
        if room.is_none() {
            self.drain_warm_buffers();
        }
        self.buffers.release(chunk, touched, room);
        self.budget
            .set_pool(self.buffers.residual_pages(), self.buffers.warm_pages());
    }

    /// Under memory pressure: hand the warm chunks' pages back.
    pub(super) fn drain_warm_buffers(&mut self) {
        if self.buffers.warm_chunks() > 0 {
            let n = self.buffers.drain_warm();
            self.counters.tcp_buffers_warm_drained += n as u64;
            self.budget
                .set_pool(self.buffers.residual_pages(), self.buffers.warm_pages());
        }
    }

    /// Send RST for a connection the application never saw, and free it.
    pub(super) fn reset_and_free(&mut self, id: SocketId) {
        if let Some(c) = self.sockets.tcp_mut(id) {
            c.socket_mut().abort();
            c.phase = Phase::Released;
        }
        self.egress(id);
        if let Some(c) = self.sockets.tcp(id) {
            if c.registered {
                let key = c.key;
                self.table.release(&key);
            }
            self.free_tcp(id);
        }
    }
}

/// Why no socket was made for a new connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum NoSocket {
    /// The budget refused it.
    Refused(Refusal),
    /// The buffer pool could not reserve memory (counted in
    /// `drop_no_buffers`).
    NoLease,
}

/// The application's connections: a stale handle, or one the application
/// gave up, finds nothing.
impl Slab<Socket> {
    fn owned(&self, h: TcpHandle) -> Option<&TcpConn> {
        self.tcp(h.0).filter(|c| c.phase == Phase::Owned)
    }

    fn owned_mut(&mut self, h: TcpHandle) -> Option<&mut TcpConn> {
        self.tcp_mut(h.0).filter(|c| c.phase == Phase::Owned)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::device::virtual_link::{LinkConfig, Network};
    use crate::{CongestionControl, Duration, Instant, StackConfig};

    /// The configured controller is on both ends of a connection: the one
    /// `connect` opened and the one a listener accepted.
    #[test]
    fn every_connection_gets_the_configured_congestion_control() {
        for cc in [
            CongestionControl::Cubic,
            CongestionControl::Reno,
            CongestionControl::None,
        ] {
            let (net, client, server) = connected(|c| StackConfig {
                congestion_control: cc,
                ..c
            });
            let of = |st: &Stack, h: TcpHandle| {
                st.sockets.tcp(h.0).unwrap().socket().congestion_control()
            };
            assert_eq!(of(net.stack_ref(0), client), cc.to_smoltcp(), "{cc}");
            assert_eq!(of(net.stack_ref(1), server), cc.to_smoltcp(), "{cc}");
        }
    }

    /// How the reading side takes its data in the tests below.
    #[derive(Copy, Clone, Debug)]
    enum Read {
        /// `recv` into a buffer of this size.
        Copy(usize),
        /// `recv_discard` of at most this many.
        Discard(usize),
    }

    impl Read {
        fn call(self, st: &mut Stack, h: TcpHandle) -> Result<usize, RecvError> {
            match self {
                Read::Copy(n) => st.recv(h, &mut vec![0; n]),
                Read::Discard(n) => st.recv_discard(h, n),
            }
        }
    }

    /// A small receive ring, so that a transfer wraps it and closes its
    /// window.
    fn small_ring(c: StackConfig) -> StackConfig {
        StackConfig {
            tcp_rx_buffer: 4096,
            ..c
        }
    }

    /// Two stacks on a 1 ms link, both configured through `tweak`; an
    /// established connection from 0 to 1 and its accepted end.
    fn connected(tweak: impl Fn(StackConfig) -> StackConfig) -> (Network, TcpHandle, TcpHandle) {
        let mut net = Network::new(LinkConfig::default());
        let t0 = Instant::from_millis(0);
        for (i, addr) in ["10.0.0.1", "10.0.0.2"].into_iter().enumerate() {
            let ip: IpAddr = addr.parse().unwrap();
            let config = tweak(StackConfig {
                addrs: vec![(ip, 24)],
                seed: Some(i as u64),
                ..StackConfig::default()
            });
            net.add(Stack::new(config, t0).unwrap(), &[ip]);
        }
        let at: SocketAddr = "10.0.0.2:9".parse().unwrap();
        let l = net.stack(1).listen(at, None).unwrap();
        let client = net.stack(0).connect(at).unwrap();
        let mut server = None;
        net.run_until(1000, |n| {
            server = server.or_else(|| n.stack(1).accept(l).ok());
            server.is_some() && n.stack(0).tcp_state(client) == Some(TcpState::Established)
        })
        .unwrap();
        (net, client, server.unwrap())
    }

    /// Send `total` octets from 0 to 1 and close, the server reading with
    /// `read` after every step; every result the server saw, in order.
    fn transfer(read: Read, total: usize) -> Vec<Result<usize, RecvError>> {
        let (mut net, client, server) = connected(small_ring);
        let data: Vec<u8> = (0..total).map(|i| i as u8).collect();
        let (mut sent, mut closed) = (0, false);
        let mut seen = Vec::new();
        net.run_until(100_000, |n| {
            if sent < total {
                sent += n.stack(0).send(client, &data[sent..]).unwrap_or(0);
            } else if !closed {
                n.stack(0).close(client);
                closed = true;
            }
            loop {
                let r = read.call(n.stack(1), server);
                seen.push(r);
                if !matches!(r, Ok(k) if k > 0) {
                    break;
                }
            }
            seen.last() == Some(&Ok(0))
        })
        .unwrap();
        // End of stream stays end of stream.
        seen.push(read.call(net.stack(1), server));
        seen
    }

    /// Consumed without a copy, the data arrives as `recv` reads it: the
    /// same amounts, call for call, across wraps of the ring and windows
    /// closed and reopened, then end of stream, twice.
    #[test]
    fn recv_discard_reads_what_recv_reads() {
        let total = 50_000;
        for max in [1000, 3000, 4096, 1 << 20] {
            let copied = transfer(Read::Copy(max), total);
            let dropped = transfer(Read::Discard(max), total);
            assert_eq!(copied, dropped, "reads of at most {max}");
            let got: usize = dropped.iter().map(|r| r.unwrap_or(0)).sum();
            assert_eq!(got, total, "reads of at most {max}");
            assert!(dropped.iter().all(|r| match r {
                Ok(k) => *k <= max,
                Err(e) => *e == RecvError::WouldBlock,
            }));
            assert_eq!(dropped[dropped.len() - 2..], [Ok(0), Ok(0)]);
        }
        // No limit empties the ring in one call, wrapped or not.
        let dropped = transfer(Read::Discard(usize::MAX), total);
        assert!(dropped.contains(&Ok(4096)));
    }

    /// A window closed by a full ring reopens when the ring is consumed:
    /// the window update leaves at once, not after a persist probe, and
    /// the data behind it arrives one round trip later.
    #[test]
    fn recv_discard_reopens_a_closed_window() {
        for read in [Read::Copy(1 << 20), Read::Discard(usize::MAX)] {
            let (mut net, client, server) = connected(small_ring);
            let data = vec![7u8; 20_000];
            let mut sent = net.stack(0).send(client, &data).unwrap();
            // Fill the ring; the client holds the rest.
            net.run_for(Duration::from_millis(50), 100_000).unwrap();
            assert!(net.stack(0).send_queue(client) > 0, "{read:?}");
            assert_eq!(read.call(net.stack(1), server), Ok(4096), "{read:?}");
            assert_eq!(
                read.call(net.stack(1), server),
                Err(RecvError::WouldBlock),
                "{read:?}"
            );
            let t = net.now();
            let mut more = 0;
            net.run_until(100_000, |n| {
                sent += n.stack(0).send(client, &data[sent..]).unwrap_or(0);
                more += read.call(n.stack(1), server).unwrap_or(0);
                more > 0
            })
            .unwrap();
            // One round trip on a 1 ms link, plus the stacks' turns.
            let waited = net.now() - t;
            assert!(waited <= Duration::from_millis(3), "{read:?}: {waited}");
        }
    }

    /// The errors are `recv`'s: no data yet, not yet connected, a reset,
    /// a stale handle; and a read of nothing is `Ok(0)` for both.
    #[test]
    fn recv_discard_fails_as_recv_fails() {
        for read in [Read::Copy(100), Read::Discard(100)] {
            let (mut net, client, server) = connected(small_ring);
            assert_eq!(read.call(net.stack(1), server), Err(RecvError::WouldBlock));
            // Opening: smoltcp is in SYN-SENT.
            let at: SocketAddr = "10.0.0.2:10".parse().unwrap();
            let opening = net.stack(0).connect(at).unwrap();
            assert_eq!(read.call(net.stack(0), opening), Err(RecvError::WouldBlock));
            // Refused: nobody listens on port 10.
            net.run_for(Duration::from_millis(20), 10_000).unwrap();
            assert_eq!(
                read.call(net.stack(0), opening),
                Err(RecvError::ConnectionRefused),
                "{read:?}"
            );
            // Reset by the peer with data still unread: the data, then
            // the error.
            net.stack(0).send(client, b"unread").unwrap();
            net.run_for(Duration::from_millis(5), 10_000).unwrap();
            net.stack(0).abort(client);
            net.run_for(Duration::from_millis(5), 10_000).unwrap();
            assert_eq!(read.call(net.stack(1), server), Ok(6), "{read:?}");
            assert_eq!(
                read.call(net.stack(1), server),
                Err(RecvError::ConnectionReset),
                "{read:?}"
            );
            net.stack(1).close(server);
            assert_eq!(
                read.call(net.stack(1), server),
                Err(RecvError::InvalidHandle),
                "{read:?}"
            );
        }
        let (mut net, client, server) = connected(small_ring);
        net.stack(0).send(client, b"abc").unwrap();
        net.run_for(Duration::from_millis(5), 10_000).unwrap();
        assert_eq!(net.stack(1).recv(server, &mut []), Ok(0));
        assert_eq!(net.stack(1).recv_discard(server, 0), Ok(0));
        assert_eq!(net.stack(1).recv_discard(server, 2), Ok(2));
        let mut rest = [0; 8];
        assert_eq!(net.stack(1).recv(server, &mut rest), Ok(1));
        assert_eq!(rest[0], b'c');
    }
}
