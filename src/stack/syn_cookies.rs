//! SYN cookies (RFC 4987 §3.6): a SYN answered without keeping a
//! half-open connection, and the connection rebuilt from the ACK that
//! returns the cookie.
//!
//! The SYN-ACK is built here, octet for octet what smoltcp would send for
//! the connection the cookie describes (its MSS, window, window scale and
//! SACK-permitted), with the cookie (`isn::Secrets::cookie`) for its ISN.
//! When the ACK comes back, SEG.ACK − 1 must be a valid cookie for the
//! 4-tuple and SEG.SEQ − 1. The connection is then rebuilt the only way
//! smoltcp allows, by replaying its handshake: a fresh socket listening on
//! the 4-tuple's local address is handed the SYN the cookie describes,
//! the SYN-ACK smoltcp answers with is swallowed (its ISN mapped to the
//! cookie by the connection's sequence offset, as every ISN is mapped to
//! the stack's choice), and the real ACK, data and all, goes in after it.
//! From there it is an ordinary connection that completed its handshake.
//!
//! The accept queue's bound holds: a cookie connection needs a place in
//! the backlog like any other; when half-open connections fill it, the
//! oldest gives way to the client the cookie proved real.

use std::net::SocketAddr;

use log::debug;
use smoltcp::wire::IpListenEndpoint;

use super::budget::Refusal;
use super::conn::Phase;
use super::isn::CookieOptions;
use super::link::Packet;
use super::listener::Listener;
use super::socket_set::{Owner, SocketId};
use super::tcp::NoSocket;
use super::{Stack, SynCookies};
use crate::demux::TcpSeg;
use crate::port_table::FlowKey;
use crate::wire::build::{tcp_options, Tcp, TcpOpt};
use crate::wire::{TcpFlags, TcpView};

/// The window scale shift smoltcp advertises for a receive buffer of
/// `capacity` octets (`tcp::Socket::new`): enough that the buffer fits a
/// 16-bit window.
fn our_window_shift(capacity: usize) -> u8 {
    let log2 = usize::BITS - capacity.leading_zeros();
    log2.saturating_sub(16) as u8
}

impl Stack {
    /// Whether ACKs for no connection are checked for a cookie on
    /// listener `l`: always with `SynCookies::Always`, else while one it
    /// sent may still come back.
    pub(super) fn cookies_in_use(&self, l: SocketId) -> bool {
        match self.config.syn_cookies {
            SynCookies::Always => true,
            SynCookies::Never => false,
            SynCookies::Auto => self
                .sockets
                .listener(l)
                .is_some_and(|l| Listener::recent(l.cookie_sent_at, self.now)),
        }
    }

    /// What a cookie for this SYN (`packet`, classified as `seg`) carries.
    fn cookie_options(seg: &TcpSeg, packet: &[u8]) -> CookieOptions {
        match TcpView::at(packet, usize::from(seg.header_offset)) {
            Ok(v) => {
                CookieOptions::of_syn(v.is_ipv6(), v.mss(), v.window_scale(), v.sack_permitted())
            }
            Err(_) => CookieOptions::of_syn(seg_is_v6(packet), None, None, false),
        }
    }

    /// The cookie answering this SYN on listener `l` (and what it
    /// carries), counted as sent.
    pub(super) fn syn_cookie(
        &mut self,
        l: SocketId,
        key: &FlowKey,
        seg: &TcpSeg,
        packet: &[u8],
    ) -> (u32, CookieOptions) {
        let opts = Self::cookie_options(seg, packet);
        self.counters.tcp_syn_cookies_sent += 1;
        if let Some(listener) = self.sockets.listener_mut(l) {
            listener.cookie_sent_at = Some(self.now);
        }
        (self.secrets.cookie(self.now, key, seg.seq, &opts), opts)
    }

    /// Answer this SYN on listener `l` with a SYN cookie, keeping nothing.
    pub(super) fn send_syn_cookie(
        &mut self,
        l: SocketId,
        key: &FlowKey,
        seg: &TcpSeg,
        packet: &[u8],
    ) {
        let (cookie, opts) = self.syn_cookie(l, key, seg, packet);
        let syn_ack = self.cookie_syn_ack(key, cookie, seg.seq, &opts);
        self.link.tx.push_back(super::Transmit::whole(syn_ack));
    }

    /// The SYN-ACK smoltcp sends for a connection on `key` whose SYN had
    /// ISN `peer_isn` and options `opts`, with `cookie` for our ISN.
    fn cookie_syn_ack(
        &self,
        key: &FlowKey,
        cookie: u32,
        peer_isn: u32,
        opts: &CookieOptions,
    ) -> Vec<u8> {
        let c = &self.config;
        let ip_header = if key.local.is_ipv4() { 20 } else { 40 };
        let mss = (c.mtu - ip_header - 20).min(usize::from(u16::MAX)) as u16;
        let mut o = vec![TcpOpt::Mss(mss)];
        if opts.window_scale.is_some() {
            o.push(TcpOpt::WindowScale(our_window_shift(c.tcp_rx_buffer)));
        }
        if opts.sack_permitted {
            o.push(TcpOpt::SackPermitted);
        }
        let options = tcp_options(&o);
        Tcp {
            seq: cookie,
            ack: peer_isn.wrapping_add(1),
            flags: TcpFlags::SYN | TcpFlags::ACK,
            window: c.tcp_rx_buffer.min(usize::from(u16::MAX)) as u16,
            options: &options,
            ..Default::default()
        }
        .atomic_packet(key.local, key.remote)
    }

    /// An ACK for no connection at listener `l`: if it returns a valid
    /// cookie, rebuild its connection (see the module docs) and hand it
    /// the ACK. Returns `false` for an invalid cookie (the caller counts
    /// it and answers as for any stray ACK).
    pub(super) fn syn_cookie_ack(
        &mut self,
        l: SocketId,
        key: &FlowKey,
        seg: &TcpSeg,
        packet: &[u8],
    ) -> bool {
        let now = self.now;
        let peer_isn = seg.seq.wrapping_sub(1);
        let cookie = seg.ack_number.wrapping_sub(1);
        let Some(opts) = self.secrets.check_cookie(now, key, peer_isn, cookie) else {
            return false;
        };
        // A place in the backlog, as for any connection; when half-open
        // connections fill it, the oldest gives way to a proven client.
        let Some(listener) = self.sockets.listener(l) else {
            return true;
        };
        let (queued, backlog) = (listener.queue.len(), listener.backlog);
        if queued >= backlog
            || (listener.half_open + queued >= backlog && !self.evict_oldest_half_open(l, true))
        {
            // The peer sends its data (and this ACK) again.
            self.counters.drop_accept_queue_full += 1;
            return true;
        }
        let (mut socket, chunk) = match self.new_tcp_socket() {
            Ok(s) => s,
            // Dropped: the peer sends its ACK again, and may find room then.
            Err(NoSocket::Refused(Refusal::Connections)) => {
                self.counters.drop_syn_connection_limit += 1;
                return true;
            }
            Err(NoSocket::Refused(Refusal::Memory)) => {
                self.counters.drop_syn_memory_limit += 1;
                return true;
            }
            Err(NoSocket::NoLease) => return true,
        };
        socket
            .listen(IpListenEndpoint {
                addr: Some(key.local.ip().into()),
                port: key.local.port(),
            })
            .expect("listening on a non-zero port of ours");
        let id = self.sockets.next_id();
        self.table
            .insert(*key, Owner::of(id))
            .expect("lookup found no flow for this 4-tuple");
        let got = self.insert_conn((socket, chunk), *key, Phase::HalfOpen(l), Some(peer_isn));
        debug_assert_eq!(got, id);
        if let Some(listener) = self.sockets.listener_mut(l) {
            listener.half_open += 1;
        }
        self.note_half_open(l, id);
        let window = TcpView::at(packet, usize::from(seg.header_offset)).map_or(0, |v| v.window());
        let syn = cookie_syn(key, peer_isn, window, &opts);
        let Some(c) = self.sockets.tcp_mut(id) else {
            return true;
        };
        c.from_cookie = true;
        c.seq.chosen_iss = Some(cookie);
        // The handshake as it would have gone: the SYN in, smoltcp's
        // SYN-ACK out (its ISN now the cookie) and swallowed.
        let _ = self.link.ingress(now, &mut c.set, &syn);
        let before = self.link.tx.len();
        self.link.tcp_egress(now, c, &self.secrets);
        self.link.tx.truncate(before);
        // Then the ACK itself, through the usual path.
        self.tcp_segment(id, key, seg, Packet::Shared(packet));
        match self.sockets.tcp(id).map(|c| c.phase) {
            Some(Phase::Queued(_)) => {
                self.counters.tcp_syn_cookies_ok += 1;
                debug!("SYN cookie {} <- {}", key.local, key.remote);
            }
            Some(Phase::HalfOpen(_)) => {
                // smoltcp refused the ACK the cookie vouched for (never
                // seen): leave nothing half-open behind.
                self.reset_and_free(id);
                if let Some(listener) = self.sockets.listener_mut(l) {
                    listener.half_open -= 1;
                }
            }
            _ => {}
        }
        true
    }
}

/// Whether an IP packet is IPv6.
fn seg_is_v6(packet: &[u8]) -> bool {
    packet.first().is_some_and(|b| b >> 4 == 6)
}

/// The SYN a cookie describes, from the peer on `key` with ISN `peer_isn`
/// and window `window`, as a peer's stack would have sent it.
fn cookie_syn(key: &FlowKey, peer_isn: u32, window: u16, opts: &CookieOptions) -> Vec<u8> {
    let mut o = vec![TcpOpt::Mss(opts.mss)];
    if let Some(shift) = opts.window_scale {
        o.push(TcpOpt::WindowScale(shift));
    }
    if opts.sack_permitted {
        o.push(TcpOpt::SackPermitted);
    }
    let options = tcp_options(&o);
    let (from, to): (SocketAddr, SocketAddr) = (key.remote, key.local);
    Tcp {
        seq: peer_isn,
        flags: TcpFlags::SYN,
        window,
        options: &options,
        ..Default::default()
    }
    .atomic_packet(from, to)
}
