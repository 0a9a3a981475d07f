//! The UDP socket API: bind, connect, send, receive, close; and a
//! datagram's way in.
//!
//! A UDP socket is *bound* (`udp_bind`: it holds a bind on its address in
//! the port table and receives what is sent there), *connected*
//! (`udp_connect`: it holds one 4-tuple, its local port chosen per
//! destination by RFC 6056 as a TCP connection's is, and receives only
//! what its peer sends to it), or both (`udp_connect_bound`, Linux's
//! connect(2) on a bound socket: it keeps its bind, and from then on takes
//! only its peer's datagrams). Demultiplexing walks from the most specific
//! match to the least, as netstack3 walks its socket map: a connected
//! socket's exact 4-tuple first, then a bind on the exact local address,
//! then one on the wildcard; a bind whose socket is connected to another
//! peer takes nothing, and the datagram is answered with an ICMP port
//! unreachable as if no socket were there (Linux does the same).
//!
//! Bounds: each direction holds at most `StackConfig::udp_packets`
//! datagrams; a datagram that finds the receive queue full is dropped and
//! counted (`udp_rx_overflow`), a send that finds the send queue full is
//! refused with `WouldBlock`.

use std::net::SocketAddr;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::udp;
use smoltcp::time::Instant;
use smoltcp::wire::{IpEndpoint, IpListenEndpoint};

use super::socket_set::{Owner, Socket, SocketId};
use super::tcp::remote_ok;
use super::{Event, Stack};
use crate::error::{BindError, ConnectError, RecvError, SendError};
use crate::port_table::{FlowKey, Lookup, Protocol};

/// Handle of a UDP socket.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct UdpHandle(pub(crate) SocketId);

/// A UDP socket.
pub(crate) struct UdpSock {
    /// A set holding exactly this socket's smoltcp socket.
    pub set: SocketSet<'static>,
    /// The socket's handle inside `set`.
    pub handle: SocketHandle,
    /// The bind it holds in the port table, if it was bound.
    pub bind: Option<SocketAddr>,
    /// The 4-tuple it holds in the port table, if it is connected.
    pub flow: Option<FlowKey>,
    /// When it was created.
    pub created: Instant,
    /// Whether it sits on the dirty list.
    pub dirty: bool,
    /// Whether an event for it is queued for the application.
    pub event_queued: bool,
    /// An ICMP "port unreachable" for a datagram it sent, not yet reported.
    pub refused: bool,
    /// Datagrams in the receive queue (smoltcp keeps the count to itself).
    pub rx_queued: usize,
}

impl UdpSock {
    /// The smoltcp socket.
    pub(crate) fn socket(&self) -> &udp::Socket<'static> {
        self.set.get(self.handle)
    }

    /// The smoltcp socket, mutably.
    pub(crate) fn socket_mut(&mut self) -> &mut udp::Socket<'static> {
        self.set.get_mut(self.handle)
    }

    /// Its local address: the connected 4-tuple's, else the bind's.
    pub(crate) fn local(&self) -> SocketAddr {
        match (self.flow, self.bind) {
            (Some(key), _) => key.local,
            (None, Some(bind)) => bind,
            (None, None) => unreachable!("a UDP socket is bound or connected"),
        }
    }

    /// The connected peer, if any.
    pub(crate) fn peer(&self) -> Option<SocketAddr> {
        self.flow.map(|k| k.remote)
    }
}

impl Stack {
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
        let got = self.insert_udp(bound, Some(bound), None);
        debug_assert_eq!(got, id);
        Ok(UdpHandle(id))
    }

    /// Open a UDP socket connected to `remote`, from an ephemeral port the
    /// port table picks for this destination (RFC 6056, as for TCP's
    /// `connect`) on the stack's address towards it. Only `remote`'s
    /// datagrams reach it, and an ICMP port unreachable in answer to one
    /// it sent is reported by its next receive (`ConnectionRefused`).
    pub fn udp_connect(&mut self, remote: SocketAddr) -> Result<UdpHandle, ConnectError> {
        let local_ip = self.source_for(remote)?;
        self.udp_connect_from(SocketAddr::new(local_ip, 0), remote)
    }

    /// [`udp_connect`](Self::udp_connect) from an explicit `local`
    /// address; port 0 means an ephemeral port. The 4-tuple must be free;
    /// a bind on the same port does not stand in the way (the connected
    /// socket takes its peer's datagrams, the bind the rest).
    pub fn udp_connect_from(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<UdpHandle, ConnectError> {
        let key = self.claim_flow(Protocol::Udp, local, remote)?;
        let id = self.sockets.next_id();
        let got = self.insert_udp(key.local, None, Some(key));
        debug_assert_eq!(got, id);
        Ok(UdpHandle(id))
    }

    /// Connect the UDP socket `h` to `remote`, as connect(2) does on a
    /// bound UDP socket: it keeps its port (and its bind, so the port
    /// stays its own), takes the stack's address towards `remote` if it
    /// was bound to the wildcard, and from now on receives only `remote`'s
    /// datagrams. Connecting again moves it to the new peer.
    pub fn udp_connect_bound(
        &mut self,
        h: UdpHandle,
        remote: SocketAddr,
    ) -> Result<(), ConnectError> {
        if !remote_ok(remote) {
            return Err(ConnectError::InvalidAddress);
        }
        let u = self.sockets.udp(h.0).ok_or(ConnectError::InvalidHandle)?;
        let local = u.local();
        let old = u.flow;
        if local.is_ipv4() != remote.is_ipv4() {
            return Err(ConnectError::NetworkUnreachable);
        }
        let ip = if local.ip().is_unspecified() {
            self.source_for(remote)?
        } else {
            local.ip()
        };
        let key = FlowKey::new(Protocol::Udp, SocketAddr::new(ip, local.port()), remote);
        if old == Some(key) {
            return Ok(());
        }
        self.table
            .insert(key, Owner::of(h.0))
            .map_err(|_| ConnectError::AddrNotAvailable)?;
        if let Some(old) = old {
            self.table.release(&old);
        }
        if let Some(u) = self.sockets.udp_mut(h.0) {
            u.flow = Some(key);
        }
        Ok(())
    }

    /// The address a UDP socket sends from: once connected, the 4-tuple's
    /// (the stack's address towards the peer, even if it was bound to the
    /// wildcard), else the bound address.
    pub fn udp_local_addr(&self, h: UdpHandle) -> Option<SocketAddr> {
        self.sockets.udp(h.0).map(|u| u.local())
    }

    /// The peer of a connected UDP socket.
    pub fn udp_peer_addr(&self, h: UdpHandle) -> Option<SocketAddr> {
        self.sockets.udp(h.0).and_then(|u| u.peer())
    }

    /// Send one datagram to `remote`. A connected socket sends only to its
    /// peer (`AlreadyConnected` for another address: its port is its own
    /// only towards the peer).
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
        if data.len() + header > self.link.mtu {
            return Err(SendError::MessageTooLong);
        }
        let u = self.sockets.udp_mut(h.0).ok_or(SendError::InvalidHandle)?;
        if u.local().is_ipv4() != remote.is_ipv4() {
            return Err(SendError::InvalidAddress);
        }
        let mut meta = udp::UdpMetadata::from(IpEndpoint::from(remote));
        if let Some(key) = u.flow {
            if (key.remote.ip(), key.remote.port()) != (remote.ip(), remote.port()) {
                return Err(SendError::AlreadyConnected);
            }
            // The 4-tuple's address, also for a socket bound to the
            // wildcard.
            meta.local_address = Some(key.local.ip().into());
        }
        u.socket_mut().send_slice(data, meta).map_err(|e| match e {
            udp::SendError::BufferFull => SendError::WouldBlock,
            udp::SendError::Unaddressable => SendError::InvalidAddress,
        })?;
        self.mark_dirty(h.0);
        Ok(())
    }

    /// Send one datagram to a connected socket's peer
    /// (`DestinationRequired` if it has none).
    pub fn udp_send(&mut self, h: UdpHandle, data: &[u8]) -> Result<(), SendError> {
        let u = self.sockets.udp(h.0).ok_or(SendError::InvalidHandle)?;
        let peer = u.peer().ok_or(SendError::DestinationRequired)?;
        self.udp_send_to(h, data, peer)
    }

    /// Receive one datagram; a datagram longer than `buf` is truncated, as
    /// with a socket. Returns its length as copied and its sender. An ICMP
    /// port unreachable that came back for a datagram the socket sent is
    /// reported once, by the next call, as `ConnectionRefused`.
    pub fn udp_recv_from(
        &mut self,
        h: UdpHandle,
        buf: &mut [u8],
    ) -> Result<(usize, SocketAddr), RecvError> {
        let u = self.sockets.udp_mut(h.0).ok_or(RecvError::InvalidHandle)?;
        // A pending ICMP error is reported once, as Linux does on a UDP
        // socket (`IP_RECVERR` aside).
        if std::mem::take(&mut u.refused) {
            return Err(RecvError::ConnectionRefused);
        }
        let (data, meta) = u.socket_mut().recv().map_err(|_| RecvError::WouldBlock)?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        let ep = meta.endpoint;
        u.rx_queued -= 1;
        Ok((n, SocketAddr::new(ep.addr.into(), ep.port)))
    }

    /// [`udp_recv_from`](Self::udp_recv_from) without the sender, for a
    /// connected socket (whose datagrams all come from its peer).
    pub fn udp_recv(&mut self, h: UdpHandle, buf: &mut [u8]) -> Result<usize, RecvError> {
        self.udp_recv_from(h, buf).map(|(n, _)| n)
    }

    /// Close a UDP socket and free its bind and its 4-tuple.
    pub fn udp_close(&mut self, h: UdpHandle) {
        if let Some(Socket::Udp(u)) = self.sockets.remove(h.0) {
            if let Some(bind) = u.bind {
                self.table.unbind(Protocol::Udp, bind);
            }
            if let Some(key) = u.flow {
                self.table.release(&key);
            }
        }
    }

    /// A new UDP socket in the slab at `local` (its bind or its 4-tuple
    /// already in the port table), its smoltcp socket bound to the same
    /// address.
    fn insert_udp(
        &mut self,
        local: SocketAddr,
        bind: Option<SocketAddr>,
        flow: Option<FlowKey>,
    ) -> SocketId {
        let n = self.config.udp_packets;
        let payload = n * self.link.mtu.min(2048);
        let mut socket = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; n], vec![0; payload]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; n], vec![0; payload]),
        );
        let endpoint = IpListenEndpoint {
            addr: (!local.ip().is_unspecified()).then(|| local.ip().into()),
            port: local.port(),
        };
        socket
            .bind(endpoint)
            .expect("port table handed out a non-zero port");
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(socket);
        self.sockets.insert(Socket::Udp(Box::new(UdpSock {
            set,
            handle,
            bind,
            flow,
            created: self.now,
            dirty: false,
            event_queued: false,
            refused: false,
            rx_queued: 0,
        })))
    }

    /// Demultiplex a UDP datagram for `key`, most specific match first: a
    /// connected socket's 4-tuple, then a bind on the exact address, then
    /// on the wildcard. A bind whose socket is connected to another peer
    /// does not take it. What finds no socket is counted and answered with
    /// an ICMP port unreachable.
    pub(super) fn udp_datagram(&mut self, key: &FlowKey, len: usize, packet: &[u8]) {
        let id = match self.table.lookup(key) {
            Lookup::Flow(o) => Some(o.id),
            Lookup::Bound(o) => self
                .sockets
                .udp(o.id)
                .is_some_and(|u| u.flow.is_none())
                .then_some(o.id),
            Lookup::TimeWait | Lookup::Nothing => None,
        };
        match id {
            Some(id) => self.udp_ingress(id, len, packet),
            None => {
                self.counters.udp_no_port += 1;
                self.link.answer_unmatched(self.now, packet);
            }
        }
    }

    /// Hand a datagram of `len` payload octets to the UDP socket `id`;
    /// count it if the socket's receive queue had no room (all its
    /// `udp_packets` places taken, or too few octets left).
    fn udp_ingress(&mut self, id: SocketId, len: usize, packet: &[u8]) {
        let Some(u) = self.sockets.udp_mut(id) else {
            return;
        };
        if u.rx_queued >= u.socket().packet_recv_capacity() {
            self.counters.udp_rx_overflow += 1;
            return;
        }
        let before = u.socket().recv_queue();
        self.link.ingress(self.now, &mut u.set, packet);
        // An empty datagram needs only a place, which there was.
        if len > 0 && u.socket().recv_queue() == before {
            self.counters.udp_rx_overflow += 1;
            return;
        }
        u.rx_queued += 1;
        if !u.event_queued {
            u.event_queued = true;
            self.events.push_back(Event::Udp(UdpHandle(id)));
        }
    }

    /// An ICMP "port unreachable" quoting a datagram sent on `key`: for
    /// the connected socket of that 4-tuple, or else an unconnected socket
    /// bound to its local address, reported by its next receive. (A bind
    /// whose socket is connected to another peer did not send it.)
    pub(super) fn udp_refused(&mut self, key: &FlowKey) {
        let id = match self.table.lookup(key) {
            Lookup::Flow(o) => o.id,
            Lookup::Bound(o) => o.id,
            Lookup::TimeWait | Lookup::Nothing => return,
        };
        if let Some(u) = self.sockets.udp_mut(id) {
            if u.flow.is_some_and(|k| k != *key) {
                return;
            }
            u.refused = true;
            if !u.event_queued {
                u.event_queued = true;
                self.events.push_back(Event::Udp(UdpHandle(id)));
            }
        }
    }
}
