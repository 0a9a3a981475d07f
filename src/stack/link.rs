//! The link smoltcp sees: a device that hands smoltcp's interface one
//! packet (or none) and collects what it sends, the interface driven
//! through it one socket set at a time, and the queue of packets on their
//! way out.

use std::collections::VecDeque;
use std::net::IpAddr;

use smoltcp::iface::{Config, Interface, PollIngressSingleResult, PollResult, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use super::conn::TcpConn;
use super::segment::{tcp_ack_number, Segment};
use crate::demux::LocalAddrs;
use crate::port_table::FlowKey;

/// One packet in, any number out: the device handed to smoltcp for a single
/// ingress or egress call.
struct OneShot<'a> {
    rx: Option<&'a [u8]>,
    tx: &'a mut VecDeque<Vec<u8>>,
    mtu: usize,
    /// What smoltcp does about TCP checksums (it never checks them).
    tcp_sum: Checksum,
}

struct RxOne<'a>(&'a [u8]);
struct TxOne<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxOne<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for TxOne<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl phy::Device for OneShot<'_> {
    type RxToken<'b>
        = RxOne<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxOne<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(RxOne<'_>, TxOne<'_>)> {
        let p = self.rx.take()?;
        Some((RxOne(p), TxOne(self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxOne<'_>> {
        Some(TxOne(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // demux verified IPv4, TCP and UDP checksums already; smoltcp only
        // computes them on the way out, TCP's not even then if the link
        // does.
        let mut sums = ChecksumCapabilities::default();
        sums.ipv4 = Checksum::Tx;
        sums.tcp = self.tcp_sum;
        sums.udp = Checksum::Tx;
        caps.checksum = sums;
        caps
    }
}

/// The stack's addresses, as demux asks about them.
pub(super) struct Addrs<'a>(pub &'a [IpCidr]);

impl LocalAddrs for Addrs<'_> {
    fn is_local(&self, ip: IpAddr) -> bool {
        let ip = IpAddress::from(ip);
        self.0.iter().any(|c| c.address() == ip)
    }
    fn is_subnet_broadcast(&self, ip: IpAddr) -> bool {
        let IpAddr::V4(v4) = ip else { return false };
        self.0.iter().any(|c| match c {
            IpCidr::Ipv4(c) => c.prefix_len() < 31 && c.broadcast() == Some(v4),
            #[allow(unreachable_patterns)]
            _ => false,
        })
    }
}

/// smoltcp's interface, fed one packet at a time, and the queue of packets
/// it (and the stack) put on the wire.
pub(super) struct Link {
    pub iface: Interface,
    pub tx: VecDeque<Vec<u8>>,
    pub mtu: usize,
    /// [`Checksum::None`] if the link completes TCP checksums, else
    /// [`Checksum::Tx`].
    tcp_sum: Checksum,
    /// The empty set smoltcp answers unmatched packets with.
    pub empty: SocketSet<'static>,
}

impl Link {
    /// The link of a stack with addresses `cidrs` on an IP link of `mtu`
    /// octets, which completes TCP checksums if `tcp_checksum_offload`;
    /// `seed` seeds smoltcp's own random choices (ISNs).
    pub(super) fn new(
        mtu: usize,
        tcp_checksum_offload: bool,
        cidrs: &[IpCidr],
        seed: u64,
        now: Instant,
    ) -> Link {
        let tcp_sum = if tcp_checksum_offload {
            Checksum::None
        } else {
            Checksum::Tx
        };
        let mut tx = VecDeque::new();
        let mut dev = OneShot {
            rx: None,
            tx: &mut tx,
            mtu,
            tcp_sum,
        };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut dev, now);
        iface.update_ip_addrs(|a| {
            for c in cidrs {
                let _ = a.push(*c);
            }
        });
        // Medium::Ip needs no neighbours, but smoltcp asks for a route to
        // any remote before it sends; the link is point-to-point, so route
        // everything through ourselves.
        for c in cidrs {
            match c {
                IpCidr::Ipv4(v4) => {
                    let _ = iface.routes_mut().add_default_ipv4_route(v4.address());
                }
                IpCidr::Ipv6(v6) => {
                    let _ = iface.routes_mut().add_default_ipv6_route(v6.address());
                }
            }
        }
        Link {
            iface,
            tx,
            mtu,
            tcp_sum,
            empty: SocketSet::new(Vec::new()),
        }
    }

    /// Hand `packet` to the one-socket set it is for.
    #[inline]
    pub(super) fn ingress(
        &mut self,
        now: Instant,
        set: &mut SocketSet<'static>,
        packet: &[u8],
    ) -> PollIngressSingleResult {
        let mut dev = OneShot {
            rx: Some(packet),
            tx: &mut self.tx,
            mtu: self.mtu,
            tcp_sum: self.tcp_sum,
        };
        self.iface.poll_ingress_single(now, &mut dev, set)
    }

    /// Flush a one-socket set's output (and its due timers).
    pub(super) fn egress(&mut self, now: Instant, set: &mut SocketSet<'static>) {
        let mut dev = OneShot {
            rx: None,
            tx: &mut self.tx,
            mtu: self.mtu,
            tcp_sum: self.tcp_sum,
        };
        // Each call sends at most one segment; the window bounds the loop,
        // the cap guards against a socket that never says it is done.
        for _ in 0..4096 {
            if self.iface.poll_egress(now, &mut dev, set) == PollResult::None {
                break;
            }
        }
    }

    /// Hand `packet` to a TCP connection, and remember the ACK it sent.
    #[inline]
    pub(super) fn tcp_ingress(&mut self, now: Instant, c: &mut TcpConn, packet: &[u8]) {
        let before = self.tx.len();
        let _ = self.ingress(now, &mut c.set, packet);
        self.note_ack_sent(c, before);
    }

    /// Flush a TCP connection's output, and remember the ACK it sent.
    pub(super) fn tcp_egress(&mut self, now: Instant, c: &mut TcpConn) {
        let before = self.tx.len();
        self.egress(now, &mut c.set);
        self.note_ack_sent(c, before);
    }

    /// Remember the acknowledgment number of the last segment `c` put on
    /// the tx queue from position `from` on.
    #[inline]
    pub(super) fn note_ack_sent(&self, c: &mut TcpConn, from: usize) {
        if let Some(ack) = self.tx.range(from..).rev().find_map(|p| tcp_ack_number(p)) {
            c.seq.ack_sent = Some(ack);
        }
    }

    /// Let smoltcp answer a packet no socket owns: RST for TCP (RFC 9293
    /// §3.10.7.1), ICMP port unreachable for UDP, echo reply for ping.
    pub(super) fn answer_unmatched(&mut self, now: Instant, packet: &[u8]) {
        let mut dev = OneShot {
            rx: Some(packet),
            tx: &mut self.tx,
            mtu: self.mtu,
            tcp_sum: self.tcp_sum,
        };
        let _ = self
            .iface
            .poll_ingress_single(now, &mut dev, &mut self.empty);
    }

    /// Put a segment the stack built itself on the wire.
    pub(super) fn emit(&mut self, key: &FlowKey, seg: &Segment) {
        self.tx.push_back(seg.build(key));
    }
}
