//! Steering for a multi-queue TUN: a socket-filter eBPF program that puts
//! every packet the kernel sends into the TUN on the queue of the shard that
//! owns its flow ([`Shards`]).
//!
//! The kernel asks the program attached with `TUNSETSTEERINGEBPF` for each
//! packet's queue (`tun_ebpf_select_queue` in `drivers/net/tun.c`) and uses
//! its return value, truncated to 16 bits, modulo the number of attached
//! queues; here the program always returns a shard below N, so with N
//! queues attached in order, queue *i* is shard *i*. Without a program the
//! kernel learns flows instead (`tun_automq_select_queue`): a packet the
//! process writes on queue *q* records "this flow's symmetric hash → *q*"
//! (at most 4096 flows, forgotten after 3 s without a write), and a packet
//! towards the process goes to its flow's recorded queue, or else to a
//! queue picked by the hash. That keeps an active flow on the queue that
//! writes it, but an idle flow, a flow past the table's limit, or the first
//! packet of a flow opened from outside lands on a queue by hash.
//!
//! Packets arrive starting at the IP header. The rules, which
//! [`packet_flow`] states in Rust and the program states in eBPF:
//! - IPv4: header length at least 20 bytes; fragments (MF or an offset) and
//!   protocols other than TCP, UDP and ICMP go to queue 0. TCP/UDP: the flow
//!   is local = destination, peer = source. ICMP destination unreachable,
//!   time exceeded and parameter problem: the flow of the quoted datagram,
//!   which ephemera sent (local = its source), if it is a TCP/UDP first
//!   fragment; any other ICMP goes to queue 0.
//! - IPv6: up to [`EXT_HEADERS_MAX`] hop-by-hop, routing and destination
//!   options headers are skipped; a fragment header or anything else goes
//!   to queue 0. ICMPv6 errors (types 1–4) by the quoted packet, which must
//!   be TCP/UDP with no extension headers (ephemera sends none).
//! - Both ports must be in the packet; checksums and length fields are not
//!   looked at. A packet cut short of what a rule reads goes to queue 0.
//! - The flow's owner is [`Shards::owner`].
//!
//! Queue 0 therefore also receives what no shard owns (echo requests,
//! fragments, other protocols); the daemon hands those on if needed.
//!
//! The program is generated for one [`Shards`] (N, the range and the hash
//! key are immediates), assembled by hand (`ebpf`), and loaded with
//! `bpf(BPF_PROG_LOAD)` as a `BPF_PROG_TYPE_SOCKET_FILTER`. It is about 600
//! instructions of straight-line code, no maps and no helpers; loading it
//! needs `CAP_BPF` (or root) unless unprivileged eBPF is enabled, so the
//! daemon loads it before dropping privileges. Attaching needs only the
//! queue's descriptor.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::port_table::{FlowKey, Protocol, Shards};

mod ebpf;
#[cfg(test)]
mod interp;
mod program;
#[cfg(test)]
mod tests;

use ebpf::Insn;

/// Most IPv6 extension headers (hop-by-hop, routing, destination options)
/// skipped before the transport header.
pub const EXT_HEADERS_MAX: usize = 4;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;
/// IPv6 extension headers walked: hop-by-hop, routing, destination options
/// (RFC 8200 §4). A fragment header (44) stops the walk.
const IPV6_EXT_HEADERS: &[u8] = &[0, 43, 60];
/// ICMP errors that quote a datagram (RFC 792): destination unreachable,
/// time exceeded, parameter problem. Source quench is deprecated (RFC 6633).
const ICMPV4_ERRORS: &[u8] = &[3, 11, 12];
/// ICMPv6 errors (RFC 4443 §3): destination unreachable, packet too big,
/// time exceeded, parameter problem.
const ICMPV6_ERRORS: &[u8] = &[1, 2, 3, 4];

/// The flow a packet from the kernel belongs to, seen from ephemera's side
/// (local = ephemera's address and port), by the rules in the module docs;
/// `None` for a packet that is steered to queue 0 without a flow.
pub fn packet_flow(packet: &[u8]) -> Option<FlowKey> {
    match packet.first()? >> 4 {
        4 => flow_v4(packet),
        6 => flow_v6(packet),
        _ => None,
    }
}

/// The shard (queue) the steering program picks for `packet`: the owner of
/// [`packet_flow`], or 0. The daemon can compare it with the queue a packet
/// came from to count misdirected packets.
pub fn packet_owner(shards: &Shards, packet: &[u8]) -> u16 {
    packet_flow(packet).map_or(0, |flow| shards.owner(&flow))
}

fn byte(p: &[u8], at: usize) -> Option<u8> {
    p.get(at).copied()
}

fn be16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(at..at + 2)?.try_into().ok()?))
}

fn v4_at(p: &[u8], at: usize) -> Option<IpAddr> {
    let b: [u8; 4] = p.get(at..at + 4)?.try_into().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(b)))
}

fn v6_at(p: &[u8], at: usize) -> Option<IpAddr> {
    let b: [u8; 16] = p.get(at..at + 16)?.try_into().ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(b)))
}

fn transport(proto: u8) -> Option<Protocol> {
    match proto {
        PROTO_TCP => Some(Protocol::Tcp),
        PROTO_UDP => Some(Protocol::Udp),
        _ => None,
    }
}

/// The flow of a packet towards ephemera whose TCP/UDP header is at `tp`.
fn inbound(p: &[u8], proto: Protocol, src: IpAddr, dst: IpAddr, tp: usize) -> Option<FlowKey> {
    let (sport, dport) = (be16(p, tp)?, be16(p, tp + 2)?);
    Some(FlowKey::new(
        proto,
        SocketAddr::new(dst, dport),
        SocketAddr::new(src, sport),
    ))
}

/// The flow of a datagram ephemera sent, quoted in an ICMP error.
fn quoted(p: &[u8], proto: Protocol, src: IpAddr, dst: IpAddr, tp: usize) -> Option<FlowKey> {
    let (sport, dport) = (be16(p, tp)?, be16(p, tp + 2)?);
    Some(FlowKey::new(
        proto,
        SocketAddr::new(src, sport),
        SocketAddr::new(dst, dport),
    ))
}

fn ipv4_header_len(first: u8) -> Option<usize> {
    let len = usize::from(first & 0x0f) * 4;
    (len >= 20).then_some(len)
}

fn flow_v4(p: &[u8]) -> Option<FlowKey> {
    let ihl = ipv4_header_len(byte(p, 0)?)?;
    if be16(p, 6)? & 0x3fff != 0 {
        return None;
    }
    let proto = byte(p, 9)?;
    if let Some(proto) = transport(proto) {
        return inbound(p, proto, v4_at(p, 12)?, v4_at(p, 16)?, ihl);
    }
    if proto != PROTO_ICMP || !ICMPV4_ERRORS.contains(&byte(p, ihl)?) {
        return None;
    }
    let q = ihl + 8;
    let first = byte(p, q)?;
    if first >> 4 != 4 {
        return None;
    }
    let qihl = ipv4_header_len(first)?;
    if be16(p, q + 6)? & 0x1fff != 0 {
        return None;
    }
    let proto = transport(byte(p, q + 9)?)?;
    quoted(p, proto, v4_at(p, q + 12)?, v4_at(p, q + 16)?, q + qihl)
}

fn flow_v6(p: &[u8]) -> Option<FlowKey> {
    let mut next = byte(p, 6)?;
    let mut at = 40;
    for _ in 0..EXT_HEADERS_MAX {
        if !IPV6_EXT_HEADERS.contains(&next) {
            break;
        }
        let len = (usize::from(byte(p, at + 1)?) + 1) * 8;
        next = byte(p, at)?;
        at += len;
    }
    if let Some(proto) = transport(next) {
        return inbound(p, proto, v6_at(p, 8)?, v6_at(p, 24)?, at);
    }
    if next != PROTO_ICMPV6 || !ICMPV6_ERRORS.contains(&byte(p, at)?) {
        return None;
    }
    let q = at + 8;
    if byte(p, q)? >> 4 != 6 {
        return None;
    }
    let proto = transport(byte(p, q + 6)?)?;
    quoted(p, proto, v6_at(p, q + 8)?, v6_at(p, q + 24)?, q + 40)
}

// ---- the kernel ------------------------------------------------------------

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_TEST_RUN: libc::c_int = 10;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// The head of `union bpf_attr` for `BPF_PROG_LOAD`; the kernel zero-fills
/// the fields after it.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// The head of `union bpf_attr` for `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

/// `bpf(cmd, attr, sizeof attr)`.
///
/// # Safety
/// `attr` must be the head of `union bpf_attr` that `cmd` reads, and every
/// pointer in it must be valid, for its stated length, for the call.
unsafe fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    let size = mem::size_of::<T>() as libc::c_uint;
    // SAFETY: the caller vouches for `attr` as this function's contract
    // says; the kernel reads and writes at most `size` octets of it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// Load `insns` as a socket filter; with `log`, the verifier writes its
/// reasoning there.
fn prog_load(insns: &[Insn], log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    // Socket filters need no GPL-only helper; this is the crate's licence.
    let license = c"MIT OR Apache-2.0";
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"eph_steer");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    if let Some(log) = log {
        attr.log_level = 1;
        attr.log_size = log.len() as u32;
        attr.log_buf = log.as_mut_ptr() as u64;
    }
    // SAFETY: a BPF_PROG_LOAD attribute whose instruction array, licence
    // string and log buffer outlive the call with the lengths given;
    // `Insn` has the layout of `struct bpf_insn`.
    let fd = unsafe { bpf(BPF_PROG_LOAD, &mut attr)? };
    // SAFETY: on success the call returns a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// The last lines of a NUL-terminated verifier log.
fn log_tail(log: &[u8], lines: usize) -> String {
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" / ")
}

/// `TUNSETSTEERINGEBPF` on a queue: attach program `prog`, or detach with -1.
fn set_steering(queue: &OwnedFd, prog: libc::c_int) -> io::Result<()> {
    // SAFETY: the request reads one `int` through the pointer, which points
    // at a live local.
    let r = unsafe { libc::ioctl(queue.as_raw_fd(), libc::TUNSETSTEERINGEBPF, &prog) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A steering program loaded into the kernel for one [`Shards`].
#[derive(Debug)]
pub struct SteeringProgram {
    fd: OwnedFd,
    shards: Shards,
    insns: usize,
}

impl SteeringProgram {
    /// Generate and load the program for `shards`.
    ///
    /// Errors are the kernel's: `PermissionDenied` (`EPERM`) without
    /// `CAP_BPF` where unprivileged eBPF is off, `Unsupported` (`ENOSYS`)
    /// on a kernel without `bpf(2)`; a verifier refusal (`EINVAL`/`EACCES`)
    /// comes back with the end of the verifier's log in the message.
    pub fn load(shards: &Shards) -> io::Result<SteeringProgram> {
        let insns = program::steering_program(shards).map_err(|e| {
            io::Error::other(format!("cannot assemble the steering program: {e:?}"))
        })?;
        let fd = match prog_load(&insns, None) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EACCES)) => {
                let mut log = vec![0u8; 1 << 20];
                match prog_load(&insns, Some(&mut log)) {
                    Ok(fd) => fd,
                    Err(_) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!(
                                "the kernel refused the steering program ({e}): {}",
                                log_tail(&log, 8)
                            ),
                        ))
                    }
                }
            }
            Err(e) => return Err(e),
        };
        Ok(SteeringProgram {
            fd,
            shards: *shards,
            insns: insns.len(),
        })
    }

    /// The split the program implements.
    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    /// Number of instruction slots, for the log.
    pub fn instructions(&self) -> usize {
        self.insns
    }

    /// Attach the program to the TUN device that `queue` (any of its queue
    /// descriptors) belongs to; it then steers every queue of the device,
    /// replacing any program attached before. The returned guard detaches
    /// it when dropped. The kernel keeps its own reference to the program,
    /// so `self` may be dropped first.
    ///
    /// The guard holds a duplicate of `queue`'s descriptor, which keeps that
    /// queue attached until the guard is gone too. `EBADFD` if the
    /// descriptor has no interface yet, `ENOTTY` if it is not a TUN.
    pub fn attach(&self, queue: BorrowedFd<'_>) -> io::Result<Attached> {
        let queue = queue.try_clone_to_owned()?;
        set_steering(&queue, self.fd.as_raw_fd())?;
        Ok(Attached { queue: Some(queue) })
    }

    /// Run the program in the kernel over one packet (`BPF_PROG_TEST_RUN`)
    /// and return what it returns: the queue it would pick. For tests and a
    /// start-up self-check against [`packet_owner`].
    pub fn test_run(&self, packet: &[u8]) -> io::Result<u32> {
        self.run(packet, 1).map(|(queue, _)| queue)
    }

    /// Run the program `repeat` times over `packet` in the kernel and
    /// return the kernel's average time per run (its `duration`, whole
    /// nanoseconds): what steering costs a packet, for the benchmarks.
    pub fn time_run(&self, packet: &[u8], repeat: u32) -> io::Result<Duration> {
        self.run(packet, repeat.max(1))
            .map(|(_, ns)| Duration::from_nanos(u64::from(ns)))
    }

    /// `BPF_PROG_TEST_RUN`: the return value and the average nanoseconds.
    fn run(&self, packet: &[u8], repeat: u32) -> io::Result<(u32, u32)> {
        // The kernel builds the test skb from an Ethernet frame and strips
        // the 14-byte header, so the program sees `packet` at offset 0.
        let mut frame = Vec::with_capacity(14 + packet.len());
        frame.extend_from_slice(&[0; 12]);
        frame.extend_from_slice(&0x88b5u16.to_be_bytes()); // local experimental
        frame.extend_from_slice(packet);
        let mut out = vec![0u8; frame.len()];
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_size_out: out.len() as u32,
            data_in: frame.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat,
            ..Default::default()
        };
        // SAFETY: a BPF_PROG_TEST_RUN attribute whose input and output
        // buffers live through the call with the sizes given.
        unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr)? };
        Ok((attr.retval, attr.duration))
    }
}

/// A steering program attached to a TUN device; dropping it detaches the
/// program (the kernel then learns flows again, see the module docs).
#[derive(Debug)]
pub struct Attached {
    queue: Option<OwnedFd>,
}

impl Attached {
    /// Detach now and report the kernel's answer (drop does the same and
    /// only logs a failure).
    pub fn detach(mut self) -> io::Result<()> {
        match self.queue.take() {
            Some(queue) => set_steering(&queue, -1),
            None => Ok(()),
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            if let Err(e) = set_steering(&queue, -1) {
                // The device may be gone already, taking the program along.
                log::debug!("detaching the steering program: {e}");
            }
        }
    }
}
