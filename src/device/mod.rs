//! The OS edge: the TUN device, a pcap writer and the eBPF steering of a
//! multi-queue TUN; and the in-memory virtual link that stands in for a
//! device in tests.
//!
//! Everything here is thin and policy-free: functions return `io::Result`
//! and the caller (the daemon) turns errors into messages. The one piece of
//! policy that lives here, [`kernel_peer_addr`], is pure and unit-tested: it
//! decides which address the kernel's end of the TUN gets, so that the stack
//! and the kernel are two hosts on one subnet.

pub(crate) mod gso;
pub mod pcap;
pub(crate) mod split;
pub mod steering;
pub mod tun;
pub mod virtual_link;

pub use pcap::PcapWriter;
pub use tun::Tun;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Let glibc's malloc keep up to `bytes` free at the top of a heap before
/// it hands them back to the kernel (`mallopt(M_TRIM_THRESHOLD)`; its
/// default is 128 KiB). For a driver that allocates the packets of a
/// loop turn and frees them after writing them: with segmentation
/// offload they are up to 64 KiB each, and at the default the heap
/// shrank after every turn and grew again in the next, so each packet's
/// pages were faulted in and zeroed anew, 10–15 % of the daemon's CPU
/// when relaying in bulk (docs/performance-notes.md). Memory freed
/// below the top is unaffected. Returns whether the allocator took it;
/// false with other C libraries, where it does nothing.
pub fn keep_heap_top(bytes: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt sets one malloc parameter, under malloc's own
        // lock; no memory is touched.
        unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, bytes) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = bytes;
        false
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc takes the setting (other C libraries are told no); what it
    /// saves is measured in the benchmarks, not here.
    #[test]
    fn glibc_keeps_the_heap_top() {
        let gnu = cfg!(all(target_os = "linux", target_env = "gnu"));
        assert_eq!(keep_heap_top(16 << 20), gnu);
        // Back to glibc's default for the rest of the test binary.
        assert_eq!(keep_heap_top(128 << 10), gnu);
    }

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
}
