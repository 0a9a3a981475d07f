//! SOCKS5 UDP ASSOCIATE (RFC 1928 §7): a client's UDP relay on the stack.
//!
//! Each association has its own UDP socket, bound on the stack's address
//! the client reached, on a port the port table picks (a bind to port 0);
//! the success reply names it (BND.ADDR, BND.PORT). Then:
//!
//! - a datagram from the client (the control connection's address, and the
//!   port the request named or, if it named none, the port of its first
//!   datagram) carries the §7 header: it goes to DST.ADDR:DST.PORT from
//!   the relay socket, stripped of the header. FRAG ≠ 0 is dropped and
//!   counted (`socks_udp_fragments`): ephemera does not reassemble. A
//!   destination the `--socks-deny` rules refuse is dropped and counted as
//!   a CONNECT to it is (`socks_denied_destination`); so is a name
//!   (ATYP 3) other than an address literal, which would need a lookup
//!   per datagram (`socks_udp_dropped`);
//! - a datagram from a destination the client has sent to (the last
//!   [`MAX_PEERS`]) goes to the client with a header naming its sender;
//!   from anyone else it is dropped and counted (`socks_udp_dropped`), so
//!   the relay is no open door into the client;
//! - the association lives as long as its TCP control connection: when
//!   that closes or fails, the relay socket closes. With no datagram
//!   either way for the idle timeout, both close (the services' idle rule).
//!
//! The client rules are the handshake's: a client outside `--socks-allow`
//! gets reply 02 to UDP ASSOCIATE as to CONNECT, and no socket.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use log::debug;

use ephemera::wire::socks::{parse_udp, write_udp_header, UdpAddr};
use ephemera::{RecvError, Stack, TcpHandle, UdpHandle};

use super::counters::ServiceCounters;
use super::session::Pump;
use crate::daemon::host::Host;
use crate::daemon::policy::Destinations;

/// Destinations a client's replies may come from, most recent last.
pub(super) const MAX_PEERS: usize = 64;

/// One association.
#[derive(Debug)]
pub(super) struct UdpAssociation {
    /// The TCP control connection.
    pub(super) control: TcpHandle,
    /// The relay socket.
    pub(super) udp: UdpHandle,
    /// The client's address: its IP from the control connection, its
    /// port once known.
    client_ip: IpAddr,
    client_port: Option<u16>,
    /// Destinations the client sent to, for the replies.
    peers: VecDeque<SocketAddr>,
}

impl UdpAssociation {
    /// An association for the client at `client_ip` on control connection
    /// `control`, relaying through `udp`; `port` is the client's UDP port
    /// if its request named one.
    pub(super) fn new(
        control: TcpHandle,
        udp: UdpHandle,
        client_ip: IpAddr,
        port: Option<u16>,
    ) -> UdpAssociation {
        UdpAssociation {
            control,
            udp,
            client_ip,
            client_port: port,
            peers: VecDeque::new(),
        }
    }

    /// Move what can move: the control connection (read and dropped; its
    /// end ends the association) and the datagrams both ways.
    pub(super) fn pump(
        &mut self,
        stack: &mut Stack,
        scratch: &mut [u8],
        destinations: &Destinations,
        counters: &mut ServiceCounters,
    ) -> Pump {
        loop {
            match stack.recv(self.control, scratch) {
                // RFC 1928 §7: the association ends with its connection.
                Ok(0) | Err(RecvError::ConnectionReset | RecvError::TimedOut) => {
                    self.close(stack);
                    return Pump::Ended;
                }
                Ok(_) => {}
                Err(RecvError::WouldBlock) => break,
                Err(_) => {
                    self.close(stack);
                    return Pump::Ended;
                }
            }
        }
        let mut moved = false;
        let mut out = Vec::new();
        loop {
            let (n, from) = match stack.udp_recv_from(self.udp, scratch) {
                Ok(got) => got,
                // A destination's port unreachable: UDP promises nothing.
                Err(RecvError::ConnectionRefused) => continue,
                Err(_) => break,
            };
            let datagram = &scratch[..n];
            if self.is_client(from) {
                self.client_port = Some(from.port());
                if self.forward_out(stack, datagram, destinations, counters) {
                    moved = true;
                }
            } else if self.peers.contains(&from) {
                let Some(port) = self.client_port else {
                    continue;
                };
                out.clear();
                write_udp_header(&mut out, from);
                out.extend_from_slice(datagram);
                let client = SocketAddr::new(self.client_ip, port);
                match stack.udp_send_to(self.udp, &out, client) {
                    Ok(()) => {
                        counters.socks_udp_to_client += 1;
                        moved = true;
                    }
                    Err(e) => {
                        debug!("socks UDP: reply to {client} dropped: {e}");
                        counters.socks_udp_dropped += 1;
                    }
                }
            } else {
                debug!("socks UDP: datagram from stranger {from} dropped");
                counters.socks_udp_dropped += 1;
            }
        }
        if moved {
            Pump::Active
        } else {
            Pump::Idle
        }
    }

    /// Close the relay socket and the control connection.
    pub(super) fn close(&mut self, stack: &mut Stack) {
        stack.udp_close(self.udp);
        stack.close(self.control);
    }

    fn is_client(&self, from: SocketAddr) -> bool {
        from.ip() == self.client_ip && self.client_port.is_none_or(|p| p == from.port())
    }

    /// A client datagram: its payload to its destination. Whether it went.
    fn forward_out(
        &mut self,
        stack: &mut Stack,
        datagram: &[u8],
        destinations: &Destinations,
        counters: &mut ServiceCounters,
    ) -> bool {
        let (header, payload) = match parse_udp(datagram) {
            Ok(h) => h,
            Err(e) => {
                debug!("socks UDP: {e}");
                counters.socks_udp_dropped += 1;
                return false;
            }
        };
        if header.frag != 0 {
            counters.socks_udp_fragments += 1;
            return false;
        }
        let to = match header.addr {
            UdpAddr::Ip(a) => a,
            // A literal sent as a name needs no lookup.
            UdpAddr::Domain(name, port) => match std::str::from_utf8(name).ok().map(Host::parse) {
                Some(Ok(Host::Ip(ip))) => SocketAddr::new(ip, port),
                _ => {
                    counters.socks_udp_dropped += 1;
                    return false;
                }
            },
        };
        if let Err(d) = destinations.check(to.ip()) {
            debug!("socks UDP: {d}");
            counters.socks_denied_destination += 1;
            return false;
        }
        match stack.udp_send_to(self.udp, payload, to) {
            Ok(()) => {
                counters.socks_udp_to_remote += 1;
                if !self.peers.contains(&to) {
                    if self.peers.len() == MAX_PEERS {
                        self.peers.pop_front();
                    }
                    self.peers.push_back(to);
                }
                true
            }
            Err(e) => {
                debug!("socks UDP: datagram to {to} dropped: {e}");
                counters.socks_udp_dropped += 1;
                false
            }
        }
    }
}
