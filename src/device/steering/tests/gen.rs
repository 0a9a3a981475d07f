//! Random packets of every shape the steering rules distinguish, and
//! broken ones: the input of the interpreter and kernel comparisons.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use super::{ipv4, ipv6, ICMPV4_ERRORS, ICMPV6_ERRORS, IPV6_EXT_HEADERS};
use super::{EXT_HEADERS_MAX, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use crate::rng::{Rng, SeededRng};
use crate::wire::build::Icmp;

/// Random packets of every shape the rules distinguish, and broken ones.
pub(super) struct Gen {
    rng: SeededRng,
    range: RangeInclusive<u16>,
}

/// What a generated packet was meant to be, for coverage counts.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Kind {
    Inbound4,
    Inbound6,
    Icmp4,
    Icmp6,
    Other,
    Noise,
}

impl Gen {
    pub(super) fn new(seed: u64, range: RangeInclusive<u16>) -> Gen {
        Gen {
            rng: SeededRng::new(seed),
            range,
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.rng.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.below(items.len() as u64) as usize]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.rng.next_u64() as u8).collect()
    }

    /// A port: often ephemeral, often at an edge of the range, else any.
    fn port(&mut self) -> u16 {
        let (start, end) = (*self.range.start(), *self.range.end());
        match self.rng.below(10) {
            0..=3 => start + self.rng.below(u64::from(end - start) + 1) as u16,
            4 => self.pick(&[
                start.wrapping_sub(1),
                start,
                end,
                end.wrapping_add(1),
                0,
                65535,
            ]),
            _ => self.rng.next_u64() as u16,
        }
    }

    fn v4(&mut self) -> Ipv4Addr {
        Ipv4Addr::from(self.rng.next_u64() as u32)
    }

    fn v6(&mut self) -> Ipv6Addr {
        if self.chance(5) {
            return self.v4().to_ipv6_mapped();
        }
        Ipv6Addr::from((u128::from(self.rng.next_u64()) << 64) | u128::from(self.rng.next_u64()))
    }

    /// A TCP (20 bytes) or UDP (8 bytes) header with random contents.
    fn transport(&mut self, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut t = self.bytes(if proto == PROTO_TCP { 20 } else { 8 });
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t
    }

    fn proto(&mut self) -> u8 {
        if self.chance(50) {
            PROTO_TCP
        } else {
            PROTO_UDP
        }
    }

    fn options(&mut self) -> Vec<u8> {
        let words = if self.chance(70) {
            0
        } else {
            1 + self.rng.below(10) as usize
        };
        self.bytes(words * 4)
    }

    fn frag(&mut self) -> u16 {
        match self.rng.below(20) {
            0 => 0x2000,                                       // MF
            1 => 1 + self.rng.below(0x1fff) as u16,            // an offset
            2 => 0x2000 | (1 + self.rng.below(0x1fff) as u16), // both
            3..=6 => 0x4000,                                   // DF
            _ => 0,
        }
    }

    fn ext_chain(&mut self) -> Vec<(u8, u8)> {
        let n = match self.rng.below(10) {
            0..=4 => 0,
            5..=8 => 1 + self.rng.below(EXT_HEADERS_MAX as u64) as usize,
            _ => EXT_HEADERS_MAX + 1 + self.rng.below(2) as usize,
        };
        (0..n)
            .map(|_| {
                let t = if self.chance(90) {
                    self.pick(IPV6_EXT_HEADERS)
                } else {
                    self.pick(&[44, 59, 51])
                };
                let len = if self.chance(80) {
                    self.rng.below(3) as u8
                } else {
                    self.rng.next_u64() as u8
                };
                (t, len)
            })
            .collect()
    }

    /// A datagram as ephemera would have sent it, to be quoted.
    fn quoted4(&mut self) -> Vec<u8> {
        let proto = if self.chance(90) {
            self.proto()
        } else {
            self.pick(&[1, 47, 132])
        };
        let (lp, rp) = (self.port(), self.port());
        let t = self.transport(proto, lp, rp);
        let opts = self.options();
        let frag = if self.chance(80) { 0 } else { self.frag() };
        let (s, d) = (self.v4(), self.v4());
        let mut q = ipv4(proto, s, d, &opts, frag, &t);
        if self.chance(5) {
            q[0] = (q[0] & 0x0f) | ((self.rng.below(16) as u8) << 4);
        }
        if self.chance(5) {
            q[0] = (q[0] & 0xf0) | self.rng.below(5) as u8;
        }
        // Routers quote at least the IP header and 8 bytes (RFC 792);
        // sometimes less arrives.
        let keep = if self.chance(50) {
            q.len() - t.len() + 8
        } else {
            self.rng.below(q.len() as u64 + 1) as usize
        };
        q.truncate(keep.min(q.len()));
        q
    }

    fn quoted6(&mut self) -> Vec<u8> {
        let proto = if self.chance(90) {
            self.proto()
        } else {
            self.pick(&[58, 0, 44])
        };
        let (lp, rp) = (self.port(), self.port());
        let t = self.transport(proto, lp, rp);
        let (s, d) = (self.v6(), self.v6());
        let mut q = ipv6(proto, s, d, &[], &t);
        if self.chance(5) {
            q[0] = (self.rng.below(16) as u8) << 4;
        }
        if self.chance(20) {
            let keep = self.rng.below(q.len() as u64 + 1) as usize;
            q.truncate(keep);
        }
        q
    }

    pub(super) fn packet(&mut self) -> (Kind, Vec<u8>) {
        let (kind, mut p) = match self.rng.below(12) {
            0..=2 => {
                let proto = self.proto();
                let (rp, lp) = (self.port(), self.port());
                let t = self.transport(proto, rp, lp);
                let (opts, frag) = (self.options(), self.frag());
                let (s, d) = (self.v4(), self.v4());
                (Kind::Inbound4, ipv4(proto, s, d, &opts, frag, &t))
            }
            3..=5 => {
                let proto = self.proto();
                let (rp, lp) = (self.port(), self.port());
                let t = self.transport(proto, rp, lp);
                let chain = self.ext_chain();
                let (s, d) = (self.v6(), self.v6());
                (Kind::Inbound6, ipv6(proto, s, d, &chain, &t))
            }
            6 | 7 => {
                let ty = if self.chance(85) {
                    self.pick(ICMPV4_ERRORS)
                } else {
                    self.pick(&[0, 4, 5, 8, 13])
                };
                let code = self.rng.below(16) as u8;
                let quoted = self.quoted4();
                let (opts, frag) = (
                    self.options(),
                    if self.chance(90) { 0 } else { self.frag() },
                );
                let (s, d) = (self.v4(), self.v4());
                let icmp = Icmp {
                    ty,
                    code,
                    body: &quoted,
                    ..Default::default()
                }
                .message(s.into(), d.into());
                (Kind::Icmp4, ipv4(PROTO_ICMP, s, d, &opts, frag, &icmp))
            }
            8 | 9 => {
                let ty = if self.chance(85) {
                    self.pick(ICMPV6_ERRORS)
                } else {
                    self.pick(&[128, 129, 133, 135, 143])
                };
                let quoted = self.quoted6();
                let chain = if self.chance(80) {
                    Vec::new()
                } else {
                    self.ext_chain()
                };
                let (s, d) = (self.v6(), self.v6());
                let icmp = Icmp {
                    ty,
                    body: &quoted,
                    ..Default::default()
                }
                .message(s.into(), d.into());
                (Kind::Icmp6, ipv6(PROTO_ICMPV6, s, d, &chain, &icmp))
            }
            10 => {
                let proto = self.pick(&[0, 2, 4, 41, 47, 50, 59, 132, 255]);
                let payload = {
                    let n = self.rng.below(48) as usize;
                    self.bytes(n)
                };
                let p = if self.chance(50) {
                    let (s, d) = (self.v4(), self.v4());
                    ipv4(proto, s, d, &[], 0, &payload)
                } else {
                    let (s, d) = (self.v6(), self.v6());
                    ipv6(proto, s, d, &[], &payload)
                };
                (Kind::Other, p)
            }
            _ => {
                let mut p = {
                    let n = self.rng.below(90) as usize;
                    self.bytes(n)
                };
                if let Some(first) = p.first_mut() {
                    if self.chance(60) {
                        *first = (*first & 0x0f) | if self.chance(50) { 0x40 } else { 0x60 };
                    }
                }
                (Kind::Noise, p)
            }
        };
        if self.chance(15) {
            let keep = self.rng.below(p.len() as u64 + 1) as usize;
            p.truncate(keep);
        }
        if self.chance(5) && !p.is_empty() {
            for _ in 0..=self.rng.below(3) {
                let at = self.rng.below(p.len() as u64) as usize;
                p[at] ^= 1 << self.rng.below(8);
            }
        }
        if self.chance(10) {
            let extra = {
                let n = self.rng.below(32) as usize;
                self.bytes(n)
            };
            p.extend(extra);
        }
        (kind, p)
    }
}
