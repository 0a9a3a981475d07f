//! Fuzz target `syn_cookies`: SYN cookies and the sequence offset, against
//! an oracle.
//!
//! A server [`Stack`] with [`SynCookies::Always`] and one listener on
//! 10.0.0.2:80 and [fd00::2]:80 is sent SYNs from 16 peers (any ISN, MSS,
//! window scale, SACK-permitted), ACKs that return a cookie it sent (or
//! one off in SEG.SEQ or SEG.ACK), with data, data on the connections a
//! cookie rebuilt, key rotations, aborts and time passing (up to 70 s a
//! step).
//!
//! Properties, beyond no panic and [`Stack::check_invariants`] after every
//! step:
//! - every SYN-ACK acknowledges the SYN's ISN + 1, and only a SYN leaves
//!   no state behind (the socket count does not grow);
//! - an ACK returning a cookie exactly, less than 64 s old and with at
//!   most one key rotation since, rebuilds the connection
//!   (`tcp_syn_cookies_ok`), which is accepted ESTABLISHED and delivers the
//!   ACK's data; one off in either number, 128 s old or older, or after two
//!   rotations is counted in `tcp_syn_cookies_failed` and makes nothing;
//!   between 64 and 128 s it is one or the other;
//! - on a rebuilt connection every segment the server sends carries
//!   SEG.SEQ = cookie + 1 (it sends no data: the offset maps smoltcp's ISN
//!   to the cookie), and in-order data sent with SEG.ACK = cookie + 1
//!   arrives exactly (the offset maps the peer's acknowledgment back).

use std::collections::HashMap;
use std::net::SocketAddr;

use arbitrary::{Arbitrary, Unstructured};

use crate::wire::build::{tcp_options, Ipv4, Ipv6, Tcp, TcpOpt};
use crate::wire::{protocol, TcpFlags, TcpView};
use crate::{Duration, Instant, ListenerHandle, Stack, StackConfig, SynCookies, TcpHandle};

const PEERS: u8 = 16;
const MAX_OPS: usize = 200;

/// One step.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// A SYN from peer `peer % 16`.
    Syn {
        peer: u8,
        isn: u32,
        mss: Option<u16>,
        window_scale: Option<u8>,
        sack: bool,
    },
    /// The ACK returning the last cookie peer `peer % 16` got, SEG.SEQ and
    /// SEG.ACK moved by the deltas, carrying `data` (at most 64 octets).
    Ack {
        peer: u8,
        seq_delta: i8,
        ack_delta: i8,
        data: Vec<u8>,
    },
    /// In-order data from peer `peer % 16` on the connection its cookie
    /// rebuilt.
    Data { peer: u8, data: Vec<u8> },
    /// Abort the server's end of peer `peer % 16`'s connection.
    Abort { peer: u8 },
    /// Let `ms` milliseconds pass (at most 70 s).
    Advance { ms: u16 },
    /// `Stack::rotate_sequence_keys`.
    Rotate,
}

/// A cookie a peer got.
#[derive(Clone, Copy, Debug)]
struct Cookie {
    isn: u32,
    cookie: u32,
    at: Instant,
    rotations: u32,
}

/// A connection a cookie rebuilt.
#[derive(Debug)]
struct Conn {
    handle: TcpHandle,
    cookie: u32,
    /// The peer's next sequence number.
    next: u32,
}

struct Harness {
    stack: Stack,
    listener: [ListenerHandle; 2],
    now: Instant,
    rotations: u32,
    cookies: HashMap<u8, Cookie>,
    conns: HashMap<u8, Conn>,
}

fn peer_addr(p: u8) -> SocketAddr {
    if p.is_multiple_of(2) {
        SocketAddr::new([10, 0, 0, 1].into(), 30_000 + u16::from(p))
    } else {
        SocketAddr::new("fd00::1".parse().expect("literal"), 30_000 + u16::from(p))
    }
}

fn server_addr(p: u8) -> SocketAddr {
    if p.is_multiple_of(2) {
        SocketAddr::new([10, 0, 0, 2].into(), 80)
    } else {
        SocketAddr::new("fd00::2".parse().expect("literal"), 80)
    }
}

/// A segment from peer `p` to the server.
fn segment(p: u8, seq: u32, ack: u32, flags: TcpFlags, options: &[u8], data: &[u8]) -> Vec<u8> {
    let (from, to) = (peer_addr(p), server_addr(p));
    let seg = Tcp {
        seq,
        ack,
        flags,
        window: 65_535,
        options,
        payload: data,
        ..Default::default()
    }
    .segment(from, to);
    if from.is_ipv4() {
        Ipv4::default().packet(from.ip(), to.ip(), protocol::TCP, &seg)
    } else {
        Ipv6::default().packet(from.ip(), to.ip(), protocol::TCP, &seg)
    }
}

impl Harness {
    fn new() -> Harness {
        let config = StackConfig {
            addrs: vec![
                ([10, 0, 0, 2].into(), 24),
                ("fd00::2".parse().expect("literal"), 64),
            ],
            syn_cookies: SynCookies::Always,
            backlog: 32,
            seed: Some(0x4987),
            ..Default::default()
        };
        let now = Instant::from_millis(1);
        let mut stack = Stack::new(config, now).expect("a valid config");
        let listener = [
            stack.listen(server_addr(0), None).expect("a free port"),
            stack.listen(server_addr(1), None).expect("a free port"),
        ];
        Harness {
            stack,
            listener,
            now,
            rotations: 0,
            cookies: HashMap::new(),
            conns: HashMap::new(),
        }
    }

    /// Hand the server a packet, then check and return what it sent.
    fn inject(&mut self, packet: &[u8]) -> Vec<Vec<u8>> {
        self.stack.handle_packet(self.now, packet);
        let mut out = Vec::new();
        while let Some(p) = self.stack.poll_transmit(self.now) {
            self.check_sent(&p);
            out.push(p);
            assert!(out.len() < 64, "the server does not stop sending");
        }
        self.stack.check_invariants().expect("invariants");
        out
    }

    /// Every segment on a rebuilt connection carries SEG.SEQ = cookie + 1.
    fn check_sent(&self, p: &[u8]) {
        let Ok(v) = TcpView::parse(p) else { return };
        let Some((_, c)) = self
            .conns
            .iter()
            .find(|(&q, _)| peer_addr(q) == v.dst() && server_addr(q) == v.src())
        else {
            return;
        };
        assert_eq!(v.seq(), c.cookie.wrapping_add(1), "SEG.SEQ on {c:?}");
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Syn {
                peer,
                isn,
                mss,
                window_scale,
                sack,
            } => {
                let p = peer % PEERS;
                let mut o = Vec::new();
                o.extend(mss.map(TcpOpt::Mss));
                o.extend(window_scale.map(TcpOpt::WindowScale));
                if *sack {
                    o.push(TcpOpt::SackPermitted);
                }
                let options = tcp_options(&o);
                let sockets = self.stack.socket_count();
                let sent = self.stack.counters().tcp_syn_cookies_sent;
                let out = self.inject(&segment(p, *isn, 0, TcpFlags::SYN, &options, b""));
                if self.conns.contains_key(&p) {
                    return;
                }
                assert_eq!(self.stack.socket_count(), sockets, "a SYN left state");
                if self.stack.counters().tcp_syn_cookies_sent == sent {
                    // Refused before a listener saw it (options demux drops).
                    assert!(out.is_empty());
                    return;
                }
                let v = TcpView::parse(&out[0][..]).expect("a SYN-ACK");
                assert_eq!(v.flags(), TcpFlags::SYN | TcpFlags::ACK);
                assert_eq!(v.ack(), isn.wrapping_add(1));
                self.cookies.insert(
                    p,
                    Cookie {
                        isn: *isn,
                        cookie: v.seq(),
                        at: self.now,
                        rotations: self.rotations,
                    },
                );
            }
            Op::Ack {
                peer,
                seq_delta,
                ack_delta,
                data,
            } => {
                let p = peer % PEERS;
                let Some(c) = self.cookies.get(&p).copied() else {
                    return;
                };
                if self.conns.contains_key(&p) {
                    return;
                }
                let data = &data[..data.len().min(64)];
                let seq = c.isn.wrapping_add(1).wrapping_add(*seq_delta as u32);
                let ack = c.cookie.wrapping_add(1).wrapping_add(*ack_delta as u32);
                let before = self.stack.counters().clone();
                self.check_accept_queue_empty();
                self.inject(&segment(p, seq, ack, TcpFlags::ACK, &[], data));
                let after = self.stack.counters();
                let ok = after.tcp_syn_cookies_ok - before.tcp_syn_cookies_ok;
                let failed = after.tcp_syn_cookies_failed - before.tcp_syn_cookies_failed;
                let age = self.now - c.at;
                let exact = *seq_delta == 0 && *ack_delta == 0;
                let rotated = self.rotations - c.rotations;
                if !exact || age >= Duration::from_secs(128) || rotated >= 2 {
                    assert_eq!((ok, failed), (0, 1), "{op:?} {c:?} age {age}");
                } else if age < Duration::from_secs(64) {
                    assert_eq!((ok, failed), (1, 0), "{op:?} {c:?} age {age}");
                } else {
                    assert_eq!(ok + failed, 1, "{op:?} {c:?} age {age}");
                }
                if ok == 1 {
                    let l = self.listener[usize::from(p % 2)];
                    let handle = self.stack.accept(l).expect("the rebuilt connection");
                    assert_eq!(
                        self.stack.tcp_state(handle),
                        Some(crate::TcpState::Established)
                    );
                    self.expect_data(handle, data);
                    self.conns.insert(
                        p,
                        Conn {
                            handle,
                            cookie: c.cookie,
                            next: seq.wrapping_add(data.len() as u32),
                        },
                    );
                } else {
                    self.check_accept_queue_empty();
                }
            }
            Op::Data { peer, data } => {
                let p = peer % PEERS;
                let Some(c) = self.conns.get(&p) else {
                    return;
                };
                let (next, ack, handle) = (c.next, c.cookie.wrapping_add(1), c.handle);
                let data = &data[..data.len().min(64)];
                self.inject(&segment(p, next, ack, TcpFlags::ACK, &[], data));
                self.expect_data(handle, data);
                if let Some(c) = self.conns.get_mut(&p) {
                    c.next = next.wrapping_add(data.len() as u32);
                }
            }
            Op::Abort { peer } => {
                if let Some(c) = self.conns.remove(&(peer % PEERS)) {
                    self.stack.abort(c.handle);
                    while let Some(p) = self.stack.poll_transmit(self.now) {
                        let v = TcpView::parse(&p[..]).expect("TCP");
                        assert_eq!(v.seq(), c.cookie.wrapping_add(1), "the RST's SEG.SEQ");
                    }
                    self.stack.check_invariants().expect("invariants");
                }
            }
            Op::Advance { ms } => {
                self.now += Duration::from_millis(u64::from(*ms) % 70_001);
                while let Some(p) = self.stack.poll_transmit(self.now) {
                    self.check_sent(&p);
                }
                self.stack.check_invariants().expect("invariants");
                // A connection that ended (none should): free it.
                let ended: Vec<u8> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| {
                        self.stack.tcp_state(c.handle) != Some(crate::TcpState::Established)
                    })
                    .map(|(&p, _)| p)
                    .collect();
                for p in ended {
                    if let Some(c) = self.conns.remove(&p) {
                        self.stack.abort(c.handle);
                    }
                }
                while self.stack.poll_transmit(self.now).is_some() {}
                self.stack.check_invariants().expect("invariants");
            }
            Op::Rotate => {
                self.stack.rotate_sequence_keys();
                self.rotations += 1;
            }
        }
    }

    fn check_accept_queue_empty(&mut self) {
        for l in self.listener {
            assert!(self.stack.accept(l).is_err(), "a connection nobody made");
        }
    }

    /// `handle` has exactly `data` to read.
    fn expect_data(&mut self, handle: TcpHandle, data: &[u8]) {
        let mut buf = [0u8; 128];
        let n = if data.is_empty() {
            0
        } else {
            self.stack.recv(handle, &mut buf).expect("the data")
        };
        assert_eq!(&buf[..n], data);
    }
}

/// Run one input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut h = Harness::new();
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        h.apply(&op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn(peer: u8, isn: u32) -> Op {
        Op::Syn {
            peer,
            isn,
            mss: Some(1460),
            window_scale: Some(7),
            sack: true,
        }
    }

    fn ack(peer: u8, seq_delta: i8, ack_delta: i8, data: &[u8]) -> Op {
        Op::Ack {
            peer,
            seq_delta,
            ack_delta,
            data: data.to_vec(),
        }
    }

    #[test]
    fn the_oracle_holds_for_a_script_through_every_case() {
        let mut h = Harness::new();
        let script = [
            // v4 and v6, exact: rebuilt, data delivered both ways.
            syn(0, 7),
            syn(1, u32::MAX),
            ack(0, 0, 0, b"first"),
            ack(1, 0, 0, b""),
            Op::Data {
                peer: 1,
                data: b"more".to_vec(),
            },
            // A SYN on a live 4-tuple: a challenge ACK, seen by the check.
            syn(0, 99),
            // One off either way: failed.
            syn(2, 1000),
            ack(2, 1, 0, b""),
            ack(2, 0, -1, b""),
            // Stale.
            syn(3, 5),
            Op::Advance { ms: 65_000 },
            Op::Advance { ms: 65_000 },
            ack(3, 0, 0, b"late"),
            // Two rotations.
            syn(4, 6),
            Op::Rotate,
            Op::Rotate,
            ack(4, 0, 0, b""),
            // One rotation is survived.
            syn(5, 8),
            Op::Rotate,
            ack(5, 0, 0, b"x"),
            Op::Abort { peer: 5 },
            Op::Abort { peer: 0 },
        ];
        for op in &script {
            h.apply(op);
        }
        let c = h.stack.counters();
        assert_eq!((c.tcp_syn_cookies_ok, c.tcp_syn_cookies_failed), (3, 4));
        assert_eq!(h.conns.len(), 1);
    }
}
