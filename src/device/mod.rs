//! The OS edge: the TUN device, a pcap writer, and `poll(2)`.
//!
//! Everything here is thin and policy-free: functions return `io::Result`
//! and the caller (the daemon) turns errors into messages. The one piece of
//! policy that lives here, [`kernel_peer_addr`], is pure and unit-tested: it
//! decides which address the kernel's end of the TUN gets, so that the stack
//! and the kernel are two hosts on one subnet.

pub mod gso;
pub mod pcap;
pub mod steering;
pub mod tun;
pub mod virtual_link;

pub use pcap::PcapWriter;
pub use tun::Tun;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::io::RawFd;
use std::time::Duration;

/// Why no kernel-side address can be derived from the stack's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAddrError {
    /// The prefix length is longer than the address (over 32 or 128).
    BadPrefix,
    /// The subnet holds only the stack's own address (/32 or /128).
    NoRoom,
    /// The stack's address is the subnet's network or broadcast address.
    NotHostAddress,
}

impl std::fmt::Display for PeerAddrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerAddrError::BadPrefix => "prefix length is longer than the address",
            PeerAddrError::NoRoom => {
                "the subnet has no room for the kernel's address (use a prefix of /30 or shorter, /126 for IPv6)"
            }
            PeerAddrError::NotHostAddress => {
                "the address is the subnet's network or broadcast address, not a host address"
            }
        })
    }
}

impl std::error::Error for PeerAddrError {}

/// The address the kernel's side of the TUN gets, given the stack's own
/// address and prefix length: the lowest host address of the subnet, or the
/// next one if the lowest is the stack's.
///
/// `10.7.0.2/24` gives `10.7.0.1`; `10.7.0.1/24` gives `10.7.0.2`;
/// `fd00:7::2/64` gives `fd00:7::1`. On a /31 or /127 (RFC 3021, RFC 6164)
/// both addresses are hosts, so the kernel gets the other one.
pub fn kernel_peer_addr(stack: IpAddr, prefix: u8) -> Result<IpAddr, PeerAddrError> {
    match stack {
        IpAddr::V4(a) => {
            peer_in(u128::from(u32::from(a)), prefix, 32, true).map(|v| {
                // `peer_in` stays inside a 32-bit subnet, so this never truncates.
                IpAddr::V4(Ipv4Addr::from(v as u32))
            })
        }
        IpAddr::V6(a) => {
            peer_in(u128::from(a), prefix, 128, false).map(|v| IpAddr::V6(Ipv6Addr::from(v)))
        }
    }
}

/// Shared arithmetic of [`kernel_peer_addr`] on an address of `bits` bits.
fn peer_in(addr: u128, prefix: u8, bits: u8, has_broadcast: bool) -> Result<u128, PeerAddrError> {
    if prefix > bits {
        return Err(PeerAddrError::BadPrefix);
    }
    let host_bits = u32::from(bits - prefix);
    match host_bits {
        0 => return Err(PeerAddrError::NoRoom),
        // Point-to-point subnet: both addresses are hosts.
        1 => return Ok(addr ^ 1),
        _ => {}
    }
    let host_mask: u128 = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    let network = addr & !host_mask;
    let last = network | host_mask;
    // IPv4 reserves the all-zeros and all-ones hosts; IPv6 reserves the
    // all-zeros one (subnet-router anycast, RFC 4291 section 2.6.1).
    if addr == network || (has_broadcast && addr == last) {
        return Err(PeerAddrError::NotHostAddress);
    }
    let lowest = network + 1;
    Ok(if lowest == addr { lowest + 1 } else { lowest })
}

/// One file descriptor to wait on, with what to wait for and what happened.
#[derive(Debug, Clone, Copy)]
#[repr(transparent)]
pub struct PollFd(libc::pollfd);

impl PollFd {
    /// Wait for `fd` to be readable (and, if `writable`, writable too).
    pub fn new(fd: RawFd, writable: bool) -> PollFd {
        let mut events = libc::POLLIN;
        if writable {
            events |= libc::POLLOUT;
        }
        PollFd(libc::pollfd {
            fd,
            events,
            revents: 0,
        })
    }

    /// The file descriptor.
    pub fn fd(&self) -> RawFd {
        self.0.fd
    }

    /// Readable, or hung up / in error (a read will then say what happened).
    pub fn readable(&self) -> bool {
        self.0.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// Writable, or in error (a write will then say what happened).
    pub fn writable(&self) -> bool {
        self.0.revents & (libc::POLLOUT | libc::POLLERR) != 0
    }
}

/// Wait with `poll(2)` until one of `fds` is ready or `timeout` passes
/// (`None` waits forever). Returns how many are ready; 0 on timeout or when a
/// signal interrupted the wait (the caller checks its signal flag).
///
/// The timeout is rounded *up* to whole milliseconds, so a deadline a
/// fraction of a millisecond away never turns into a busy loop.
pub fn poll(fds: &mut [PollFd], timeout: Option<Duration>) -> io::Result<usize> {
    for p in fds.iter_mut() {
        p.0.revents = 0;
    }
    let ms = timeout_ms(timeout);
    // SAFETY: `PollFd` is `repr(transparent)` over `libc::pollfd`, and the
    // slice is valid for its length.
    let n = unsafe {
        libc::poll(
            fds.as_mut_ptr().cast::<libc::pollfd>(),
            fds.len() as libc::nfds_t,
            ms,
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(n as usize)
}

/// Wait until `fd` is readable or `timeout` passes (`None`: forever).
/// Returns whether it is readable; `false` on timeout or signal.
pub fn wait_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    let mut fds = [PollFd::new(fd, false)];
    poll(&mut fds, timeout)?;
    Ok(fds[0].readable())
}

/// `poll(2)`'s timeout argument: -1 for none, whole milliseconds rounded up,
/// capped at `i32::MAX`.
fn timeout_ms(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000);
            ms.min(libc::c_int::MAX as u128) as libc::c_int
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }
    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().unwrap())
    }

    #[test]
    fn peer_is_lowest_host_or_next() {
        assert_eq!(kernel_peer_addr(v4("10.7.0.2"), 24), Ok(v4("10.7.0.1")));
        assert_eq!(kernel_peer_addr(v4("10.7.0.1"), 24), Ok(v4("10.7.0.2")));
        assert_eq!(kernel_peer_addr(v4("10.7.0.200"), 24), Ok(v4("10.7.0.1")));
        assert_eq!(kernel_peer_addr(v4("10.7.3.4"), 16), Ok(v4("10.7.0.1")));
        assert_eq!(kernel_peer_addr(v4("10.7.0.1"), 8), Ok(v4("10.0.0.1")));
        assert_eq!(kernel_peer_addr(v4("10.0.0.1"), 8), Ok(v4("10.0.0.2")));
        assert_eq!(
            kernel_peer_addr(v4("192.168.1.6"), 30),
            Ok(v4("192.168.1.5"))
        );
        assert_eq!(
            kernel_peer_addr(v4("192.168.1.5"), 30),
            Ok(v4("192.168.1.6"))
        );
        assert_eq!(kernel_peer_addr(v4("1.2.3.4"), 0), Ok(v4("0.0.0.1")));
    }

    #[test]
    fn peer_on_point_to_point_subnets() {
        assert_eq!(kernel_peer_addr(v4("10.0.0.0"), 31), Ok(v4("10.0.0.1")));
        assert_eq!(kernel_peer_addr(v4("10.0.0.1"), 31), Ok(v4("10.0.0.0")));
        assert_eq!(kernel_peer_addr(v6("fd00::"), 127), Ok(v6("fd00::1")));
        assert_eq!(kernel_peer_addr(v6("fd00::1"), 127), Ok(v6("fd00::")));
    }

    #[test]
    fn peer_rejects_what_has_no_peer() {
        assert_eq!(
            kernel_peer_addr(v4("10.7.0.2"), 32),
            Err(PeerAddrError::NoRoom)
        );
        assert_eq!(
            kernel_peer_addr(v4("10.7.0.2"), 33),
            Err(PeerAddrError::BadPrefix)
        );
        assert_eq!(
            kernel_peer_addr(v4("10.7.0.0"), 24),
            Err(PeerAddrError::NotHostAddress)
        );
        assert_eq!(
            kernel_peer_addr(v4("10.7.0.255"), 24),
            Err(PeerAddrError::NotHostAddress)
        );
        assert_eq!(
            kernel_peer_addr(v6("fd00:7::2"), 128),
            Err(PeerAddrError::NoRoom)
        );
        assert_eq!(
            kernel_peer_addr(v6("fd00:7::2"), 129),
            Err(PeerAddrError::BadPrefix)
        );
        assert_eq!(
            kernel_peer_addr(v6("fd00:7::"), 64),
            Err(PeerAddrError::NotHostAddress)
        );
    }

    #[test]
    fn peer_v6() {
        assert_eq!(kernel_peer_addr(v6("fd00:7::2"), 64), Ok(v6("fd00:7::1")));
        assert_eq!(kernel_peer_addr(v6("fd00:7::1"), 64), Ok(v6("fd00:7::2")));
        // IPv6 has no broadcast: the all-ones host is an ordinary host.
        assert_eq!(
            kernel_peer_addr(v6("fd00:7::ffff:ffff:ffff:ffff"), 64),
            Ok(v6("fd00:7::1"))
        );
        assert_eq!(
            kernel_peer_addr(v6("fd00:7::1:2"), 112),
            Ok(v6("fd00:7::1:1"))
        );
        assert_eq!(kernel_peer_addr(v6("::5"), 0), Ok(v6("::1")));
    }

    #[test]
    fn timeout_rounds_up() {
        assert_eq!(timeout_ms(None), -1);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), 0);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1))), 1);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1500))), 2);
        assert_eq!(timeout_ms(Some(Duration::from_millis(7))), 7);
        assert_eq!(
            timeout_ms(Some(Duration::from_secs(u64::MAX))),
            libc::c_int::MAX
        );
    }

    #[test]
    fn wait_readable_on_a_pipe() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        assert!(!wait_readable(fds[0], Some(Duration::from_millis(1))).unwrap());
        // SAFETY: writes one byte from a valid buffer to a fd we own.
        assert_eq!(unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) }, 1);
        assert!(wait_readable(fds[0], None).unwrap());
        let mut set = [PollFd::new(fds[0], false), PollFd::new(fds[1], true)];
        assert_eq!(poll(&mut set, Some(Duration::ZERO)).unwrap(), 2);
        assert!(set[0].readable() && set[1].writable() && !set[1].readable());
        // SAFETY: closing the descriptors we opened.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
