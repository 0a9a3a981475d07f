//! The UDP socket API: bind, send to, receive from, close; and a datagram's
//! way in.

use std::net::SocketAddr;

use smoltcp::iface::{PollIngressSingleResult, SocketHandle, SocketSet};
use smoltcp::socket::udp;
use smoltcp::time::Instant;
use smoltcp::wire::{IpEndpoint, IpListenEndpoint};

use super::socket_set::{Owner, Socket, SocketId};
use super::{Event, Stack};
use crate::error::{BindError, RecvError, SendError};
use crate::port_table::Protocol;

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
    pub(crate) fn socket(&self) -> &udp::Socket<'static> {
        self.set.get(self.handle)
    }

    /// The smoltcp socket, mutably.
    pub(crate) fn socket_mut(&mut self) -> &mut udp::Socket<'static> {
        self.set.get_mut(self.handle)
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
        let n = self.config.udp_packets;
        let payload = n * self.link.mtu.min(2048);
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
        self.sockets.udp(h.0).map(|u| u.local)
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
        if data.len() + header > self.link.mtu {
            return Err(SendError::MessageTooLong);
        }
        let u = self.sockets.udp_mut(h.0).ok_or(SendError::InvalidHandle)?;
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
        Ok((n, SocketAddr::new(ep.addr.into(), ep.port)))
    }

    /// Close a UDP socket and free its port.
    pub fn udp_close(&mut self, h: UdpHandle) {
        if let Some(Socket::Udp(u)) = self.sockets.remove(h.0) {
            self.table.unbind(Protocol::Udp, u.local);
        }
    }

    /// Hand a datagram to the UDP socket `id`; count it if the socket's
    /// buffer had no room.
    pub(super) fn udp_ingress(&mut self, id: SocketId, packet: &[u8]) {
        let Some(u) = self.sockets.udp_mut(id) else {
            return;
        };
        let before = u.socket().recv_queue();
        let r = self.link.ingress(self.now, &mut u.set, packet);
        if r == PollIngressSingleResult::PacketProcessed && u.socket().recv_queue() == before {
            self.counters.udp_rx_overflow += 1;
        }
        if !u.event_queued {
            u.event_queued = true;
            self.events.push_back(Event::Udp(UdpHandle(id)));
        }
    }

    /// An ICMP "port unreachable" for a datagram the UDP socket bound to
    /// `local` sent: reported by its next receive.
    pub(super) fn udp_refused(&mut self, local: SocketAddr) {
        let Some(Owner { id, .. }) = self.table.lookup_bound(Protocol::Udp, local) else {
            return;
        };
        if let Some(u) = self.sockets.udp_mut(id) {
            u.refused = true;
            if !u.event_queued {
                u.event_queued = true;
                self.events.push_back(Event::Udp(UdpHandle(id)));
            }
        }
    }
}
