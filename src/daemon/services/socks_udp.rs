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
//!   a CONNECT to it is (`socks_denied_destination`). A name (ATYP 3)
//!   is looked up with the services' resolver, one name at a
//!   time per association: the datagrams for it wait (at most
//!   [`MAX_WAITING`]; more, or datagrams for another name meanwhile, are
//!   dropped and counted in `socks_udp_dropped`), then go to the first
//!   address the destination rules allow; the last [`MAX_NAMES`] answers
//!   are kept, so a name is not looked up per datagram. A name that does
//!   not resolve drops its datagrams (`socks_udp_dropped`), as does one
//!   that resolves only to denied addresses (`socks_denied_destination`
//!   too);
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
use ephemera::{Instant, RecvError, Stack, TcpHandle, UdpHandle};

use super::counters::ServiceCounters;
use super::lookup::{LookupId, LookupResult, Lookups, Waiter};
use super::session::{Pump, SessionId};
use crate::daemon::host::Host;
use crate::daemon::policy::Destinations;

/// Destinations a client's replies may come from, most recent last.
pub(super) const MAX_PEERS: usize = 64;
/// Datagrams waiting for their destination's name to be looked up.
pub(super) const MAX_WAITING: usize = 8;
/// Names looked up, with their address, most recent last.
pub(super) const MAX_NAMES: usize = 16;

/// A lookup under way for datagrams to a name.
#[derive(Debug)]
struct Waiting {
    lookup: LookupId,
    /// The name (as sent, compared ignoring ASCII case) and port.
    name: Vec<u8>,
    port: u16,
    /// The payloads waiting for it.
    datagrams: Vec<Vec<u8>>,
}

/// What a datagram to a name needs: the lookups and the session's id.
pub(super) struct NameCtx<'a> {
    pub(super) lookups: &'a mut Lookups,
    pub(super) now: Instant,
    pub(super) sid: SessionId,
}

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
    /// The lookup under way, if any.
    waiting: Option<Waiting>,
    /// Names looked up: (name in lower case, its address).
    names: VecDeque<(Vec<u8>, IpAddr)>,
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
            waiting: None,
            names: VecDeque::new(),
        }
    }

    /// The lookup this association waits for.
    pub(super) fn lookup(&self) -> Option<LookupId> {
        self.waiting.as_ref().map(|w| w.lookup)
    }

    /// The answer to its lookup, already through the destination rules:
    /// the waiting datagrams go to its first address, which is kept for
    /// the name; on an error they are dropped and counted.
    pub(super) fn resolved(
        &mut self,
        stack: &mut Stack,
        answer: LookupResult,
        counters: &mut ServiceCounters,
    ) {
        let Some(w) = self.waiting.take() else {
            return;
        };
        let addr = match answer {
            Ok(addrs) => addrs.first().map(|a| a.ip()),
            Err(e) => {
                debug!("socks UDP: {}: {e}", String::from_utf8_lossy(&w.name));
                None
            }
        };
        let Some(ip) = addr else {
            counters.socks_udp_dropped += w.datagrams.len() as u64;
            return;
        };
        if self.names.len() == MAX_NAMES {
            self.names.pop_front();
        }
        self.names.push_back((w.name.to_ascii_lowercase(), ip));
        let to = SocketAddr::new(ip, w.port);
        for d in &w.datagrams {
            self.send_out(stack, d, to, counters);
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
        names: &mut NameCtx<'_>,
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
                if self.forward_out(stack, datagram, destinations, counters, names) {
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
        names: &mut NameCtx<'_>,
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
                Some(Ok(Host::Name(host))) => {
                    let known = self
                        .names
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(name))
                        .map(|(_, ip)| *ip);
                    match known {
                        // Its answer passed the rules when it came.
                        Some(ip) => {
                            return self.send_out(
                                stack,
                                payload,
                                SocketAddr::new(ip, port),
                                counters,
                            )
                        }
                        None => return self.wait_for(name, &host, port, payload, counters, names),
                    }
                }
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
        self.send_out(stack, payload, to, counters)
    }

    /// Queue `payload` for `name`'s lookup, starting it if none is under
    /// way. Whether it was kept.
    fn wait_for(
        &mut self,
        name: &[u8],
        host: &str,
        port: u16,
        payload: &[u8],
        counters: &mut ServiceCounters,
        names: &mut NameCtx<'_>,
    ) -> bool {
        match &mut self.waiting {
            Some(w) if w.name.eq_ignore_ascii_case(name) && w.port == port => {
                if w.datagrams.len() == MAX_WAITING {
                    counters.socks_udp_dropped += 1;
                    return false;
                }
                w.datagrams.push(payload.to_vec());
                true
            }
            // One name at a time.
            Some(_) => {
                counters.socks_udp_dropped += 1;
                false
            }
            None => match names
                .lookups
                .start(names.now, host, port, Waiter::Session(names.sid))
            {
                Ok(lookup) => {
                    self.waiting = Some(Waiting {
                        lookup,
                        name: name.to_vec(),
                        port,
                        datagrams: vec![payload.to_vec()],
                    });
                    true
                }
                Err(e) => {
                    debug!("socks UDP: no lookup of {host}: {e}");
                    counters.socks_udp_dropped += 1;
                    false
                }
            },
        }
    }

    /// `payload` to `to` from the relay socket; `to` is remembered as a
    /// destination replies may come from. Whether it went.
    fn send_out(
        &mut self,
        stack: &mut Stack,
        payload: &[u8],
        to: SocketAddr,
        counters: &mut ServiceCounters,
    ) -> bool {
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
