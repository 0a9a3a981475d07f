//! Hand-built IPv4/TCP segments for hostile-traffic tests, and a small
//! parser for segments seen on the link tap.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

/// TCP flags of a hand-built segment.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub syn: bool,
    pub ack: bool,
    pub rst: bool,
    pub fin: bool,
}

pub const SYN: Flags = Flags {
    syn: true,
    ack: false,
    rst: false,
    fin: false,
};
pub const ACK: Flags = Flags {
    syn: false,
    ack: true,
    rst: false,
    fin: false,
};
pub const RST: Flags = Flags {
    syn: false,
    ack: false,
    rst: true,
    fin: false,
};
pub const RST_ACK: Flags = Flags {
    syn: false,
    ack: true,
    rst: true,
    fin: false,
};

fn v4(a: SocketAddr) -> [u8; 4] {
    match a.ip() {
        IpAddr::V4(v) => v.octets(),
        IpAddr::V6(_) => panic!("IPv4 only"),
    }
}

/// An IPv4 TCP segment from `src` to `dst` with valid checksums.
pub fn tcp(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: Flags,
    window: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ipv4(v4(src), v4(dst), 64).tcp(src.port(), dst.port(), seq, window);
    if flags.syn {
        b = b.syn();
    }
    if flags.ack {
        b = b.ack(ack);
    }
    if flags.rst {
        b = b.rst();
    }
    if flags.fin {
        b = b.fin();
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// What a test needs to know about a TCP segment on the wire.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Seg {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: Flags,
    pub window: u16,
    pub len: u32,
}

/// Parse a TCP segment; `None` for anything else or anything malformed.
pub fn parse(p: &[u8]) -> Option<Seg> {
    let s = SlicedPacket::from_ip(p).ok()?;
    let (src, dst) = match s.net? {
        NetSlice::Ipv4(h) => (
            IpAddr::V4(h.header().source_addr()),
            IpAddr::V4(h.header().destination_addr()),
        ),
        NetSlice::Ipv6(h) => (
            IpAddr::V6(h.header().source_addr()),
            IpAddr::V6(h.header().destination_addr()),
        ),
    };
    let TransportSlice::Tcp(t) = s.transport? else {
        return None;
    };
    Some(Seg {
        src: SocketAddr::new(src, t.source_port()),
        dst: SocketAddr::new(dst, t.destination_port()),
        seq: t.sequence_number(),
        ack: t.acknowledgment_number(),
        flags: Flags {
            syn: t.syn(),
            ack: t.ack(),
            rst: t.rst(),
            fin: t.fin(),
        },
        window: t.window_size(),
        len: t.payload().len() as u32,
    })
}

/// Prints the seed if the test panics while this guard is alive, so a
/// failure can be replayed.
pub struct SeedGuard(pub &'static str, pub u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{} failed with seed {:#x}", self.0, self.1);
        }
    }
}
