//! A stack's configuration and its validation.

use std::net::IpAddr;

use smoltcp::time::Duration;
use smoltcp::wire::IpCidr;

use super::budget::MIN_MEMORY;
use super::conn::Limits;
use crate::buffer_pool::MAX_BUFFER;
use crate::port_table::{PortTableConfig, PortTableConfigError};

/// Configuration of a [`Stack`](super::Stack).
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// The stack's own addresses with their prefix lengths.
    pub addrs: Vec<(IpAddr, u8)>,
    /// IP MTU of the link (smoltcp derives the TCP MSS from it).
    pub mtu: usize,
    /// Ephemeral range, TIME-WAIT length, allocation step.
    pub ports: PortTableConfig,
    /// Default accept-queue length for `listen` (Linux `somaxconn`).
    pub backlog: usize,
    /// Half-open (SYN-RECEIVED) connections allowed per listener.
    pub syn_backlog: usize,
    /// Receive buffer per TCP connection, octets: 1 to 1 GiB (the largest
    /// window TCP can advertise, RFC 7323 §2.3).
    pub tcp_rx_buffer: usize,
    /// Send buffer per TCP connection, octets: 1 to 1 GiB.
    pub tcp_tx_buffer: usize,
    /// Datagrams buffered per UDP socket and direction.
    pub udp_packets: usize,
    /// Nagle's algorithm (RFC 896); off by default, as servers set
    /// `TCP_NODELAY`.
    pub nagle: bool,
    /// Delayed-ACK time (RFC 1122 §4.2.3.2); smoltcp's default is 10 ms.
    pub ack_delay: Option<Duration>,
    /// Give up on a connection whose outstanding data, SYN or FIN has seen
    /// no progress for this long (user timeout, RFC 9293 §3.8.4; RFC 5482).
    /// Idle connections with nothing outstanding never time out. This also
    /// ends a peer that keeps its window at zero forever.
    pub user_timeout: Option<Duration>,
    /// Free a connection the application has closed that has sat in
    /// FIN-WAIT-2 this long without a state change, waiting for a peer FIN
    /// that may never come (Linux `tcp_fin_timeout`, 60 s). The connection
    /// is reset and its port released; counted in `tcp_fin_wait2_timeouts`.
    /// Connections still held by the application (`shutdown` only) wait
    /// for the peer indefinitely, as on Linux. `None` never gives up.
    pub fin_timeout: Option<Duration>,
    /// Hand an idle connection's buffer pages back to the kernel
    /// (`madvise(MADV_DONTNEED)`; the buffers live in lazily backed
    /// mappings) after its buffers have been empty this long; `None` keeps
    /// them. Default 1 s.
    pub shrink_idle_after: Option<Duration>,
    /// Congestion control of every TCP connection the stack opens or
    /// accepts: how much it may have in flight beyond what the peer's
    /// window allows. Default [`CongestionControl::Cubic`].
    pub congestion_control: CongestionControl,
    /// When a listener answers a SYN with a SYN cookie (RFC 4987 §3.6)
    /// instead of keeping a half-open connection; see [`SynCookies`].
    pub syn_cookies: SynCookies,
    /// Most TCP connections open at once (half-open and closing ones
    /// included; TIME-WAIT records are not connections). Beyond it SYNs
    /// are dropped and `connect` fails with ENOBUFS, both counted. Default
    /// 262,144.
    pub max_connections: usize,
    /// TCP buffer memory the stack may have committed, in octets (at least
    /// 64 KiB): the hard mark of its memory budget, after Linux's
    /// `tcp_mem`. Above two thirds of it (memory pressure) connections stop
    /// growing and new ones get small buffers; at it, no connection opens.
    /// What is and is not counted: [`BudgetUse`](super::BudgetUse) and
    /// docs/architecture.md. Default 1 GiB (the daemon derives its default
    /// from the machine's memory, as Linux does).
    pub max_memory: usize,
    /// Seed for every random choice (ports, ISNs, hash keys); `None` draws
    /// one from the OS.
    pub seed: Option<u64>,
    /// The link completes the TCP checksums of what the stack sends, so
    /// smoltcp leaves their field zero and never sums a payload: only for
    /// a device that does it, like a TUN with a virtio-net header, whose
    /// writes ask the kernel to (`device::gso`). Off by default.
    pub tcp_checksum_offload: bool,
    /// The link cuts TCP segments larger than the MSS (TCP segmentation
    /// offload): smoltcp sends what the window and the congestion window
    /// allow, up to 64 KiB, in one packet (IPv4 only: smoltcp 0.14 cannot
    /// for IPv6), which
    /// [`Stack::poll_transmit_offload`](super::Stack::poll_transmit_offload)
    /// hands out with the segment size to cut it at. The segments the
    /// link makes are those the stack would have sent without it. Implies
    /// `tcp_checksum_offload` (every segment's checksum changes in the
    /// cut). Only for a device that cuts, like a TUN with a virtio-net
    /// header; a capture of what the stack sends would show the uncut
    /// packets. Off by default.
    pub tcp_segmentation_offload: bool,
}

/// A TCP sender's congestion control: how it limits the data in flight
/// when the path, not the peer, is the bottleneck. smoltcp's
/// implementations; the choice is made per stack and applies to every
/// connection, active and passive.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum CongestionControl {
    /// CUBIC (RFC 9438), Linux's default: after a loss the window drops to
    /// 0.7 of where it was and grows back along a cubic curve of the time
    /// since, so it recovers on long fat paths faster than Reno while
    /// staying fair to it on short ones.
    #[default]
    Cubic,
    /// Reno / NewReno (RFC 5681): slow start, then one segment more per
    /// round trip, halved on a loss. Integer arithmetic only.
    Reno,
    /// None: send whatever the peer's window allows. Right only where
    /// nothing between the two ends can be overrun (a TUN to the local
    /// kernel); on a path with a bottleneck it fills the bottleneck's queue
    /// and loses whatever overflows it, every round trip.
    None,
}

impl CongestionControl {
    /// The names [`FromStr`](std::str::FromStr) takes and
    /// [`Display`](std::fmt::Display) prints, in the variants' order.
    pub const NAMES: [&'static str; 3] = ["cubic", "reno", "none"];

    /// smoltcp's value for it.
    pub(crate) fn to_smoltcp(self) -> smoltcp::socket::tcp::CongestionControl {
        use smoltcp::socket::tcp::CongestionControl as S;
        match self {
            CongestionControl::Cubic => S::Cubic,
            CongestionControl::Reno => S::Reno,
            CongestionControl::None => S::None,
        }
    }
}

impl std::fmt::Display for CongestionControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = match self {
            CongestionControl::Cubic => 0,
            CongestionControl::Reno => 1,
            CongestionControl::None => 2,
        };
        f.write_str(Self::NAMES[i])
    }
}

/// A congestion control name that is not one of
/// [`CongestionControl::NAMES`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownCongestionControl(pub String);

impl std::fmt::Display for UnknownCongestionControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown congestion control {:?}; expected one of {}",
            self.0,
            CongestionControl::NAMES.join(", ")
        )
    }
}

impl std::error::Error for UnknownCongestionControl {}

impl std::str::FromStr for CongestionControl {
    type Err = UnknownCongestionControl;

    /// `cubic`, `reno` or `none`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            CongestionControl::Cubic,
            CongestionControl::Reno,
            CongestionControl::None,
        ]
        .into_iter()
        .find(|c| s.eq_ignore_ascii_case(&c.to_string()))
        .ok_or_else(|| UnknownCongestionControl(s.to_string()))
    }
}

/// When listeners use SYN cookies (RFC 4987 §3.6): a SYN-ACK whose initial
/// sequence number encodes, under a secret key, the 4-tuple, the time and
/// the peer's MSS, window scale and SACK-permitted, so that the peer's ACK
/// can rebuild the connection although nothing was kept for it. Such a
/// connection differs from one whose handshake was kept in three ways: its
/// MSS and the peer's window scale are rounded down to a table (8 values
/// each), a lost SYN-ACK is not sent again (the peer sends its SYN again
/// instead), and the ACK must come back within 64 to 128 s (always true of
/// a real handshake). See docs/reliability.md.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum SynCookies {
    /// While a listener is under a SYN flood: when its half-open queue is
    /// full and none of its half-open connections is old enough to evict,
    /// once one had to be evicted in the last two minutes (a burst of real
    /// clients evicts nothing, and its surplus SYNs are dropped and sent
    /// again), or at once if the backlog has room the half-open limit
    /// withholds. A half-open connection opened while the queue is full
    /// gets a cookie for its ISN too, so that its client still gets in if
    /// it is evicted in turn. Linux's `tcp_syncookies = 1`.
    #[default]
    Auto,
    /// For every SYN: listeners never keep half-open connections (Linux's
    /// `tcp_syncookies = 2`).
    Always,
    /// Never: a full half-open queue evicts its oldest connection or drops
    /// the SYN (Linux's `tcp_syncookies = 0`).
    Never,
}

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            addrs: Vec::new(),
            mtu: 1500,
            ports: PortTableConfig::default(),
            backlog: 128,
            syn_backlog: 128,
            tcp_rx_buffer: 64 * 1024,
            tcp_tx_buffer: 64 * 1024,
            udp_packets: 64,
            nagle: false,
            ack_delay: Some(Duration::from_millis(10)),
            user_timeout: Some(Duration::from_secs(120)),
            fin_timeout: Some(Duration::from_secs(60)),
            shrink_idle_after: Some(Duration::from_secs(1)),
            congestion_control: CongestionControl::Cubic,
            syn_cookies: SynCookies::Auto,
            max_connections: 262_144,
            max_memory: 1 << 30,
            seed: None,
            tcp_checksum_offload: false,
            tcp_segmentation_offload: false,
        }
    }
}

impl StackConfig {
    /// The stack's addresses as smoltcp takes them, if the configuration
    /// can work. (The port table checks `ports` itself.)
    pub(crate) fn validate(&self) -> Result<Vec<IpCidr>, ConfigError> {
        if self.addrs.is_empty() {
            return Err(ConfigError::NoAddress);
        }
        let mut cidrs = Vec::new();
        for &(ip, prefix) in &self.addrs {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            if prefix > max || ip.is_unspecified() || ip.is_multicast() {
                return Err(ConfigError::BadAddress(ip, prefix));
            }
            cidrs.push(IpCidr::new(ip.into(), prefix));
        }
        let min_mtu = if self.addrs.iter().any(|(a, _)| a.is_ipv6()) {
            1280
        } else {
            576
        };
        if self.mtu < min_mtu || self.mtu > 65535 {
            return Err(ConfigError::BadMtu(self.mtu));
        }
        for (what, n) in [
            ("backlog", self.backlog),
            ("syn backlog", self.syn_backlog),
            ("TCP receive buffer", self.tcp_rx_buffer),
            ("TCP send buffer", self.tcp_tx_buffer),
            ("UDP buffer", self.udp_packets),
            ("connection limit", self.max_connections),
        ] {
            if n == 0 {
                return Err(ConfigError::ZeroSize(what));
            }
        }
        for (what, n) in [
            ("TCP receive buffer", self.tcp_rx_buffer),
            ("TCP send buffer", self.tcp_tx_buffer),
        ] {
            if n > MAX_BUFFER {
                return Err(ConfigError::TooLarge {
                    what,
                    size: n,
                    max: MAX_BUFFER,
                });
            }
        }
        if self.max_memory < MIN_MEMORY {
            return Err(ConfigError::TooSmall {
                what: "memory budget",
                size: self.max_memory,
                min: MIN_MEMORY,
            });
        }
        Ok(cidrs)
    }

    /// The limits a connection's own rules apply.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            user_timeout: self.user_timeout,
            fin_timeout: self.fin_timeout,
            shrink_idle_after: self.shrink_idle_after,
        }
    }
}

/// A [`StackConfig`] that cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// No address given.
    NoAddress,
    /// An address is unspecified, multicast, or has a prefix longer than
    /// its family allows.
    BadAddress(IpAddr, u8),
    /// The MTU is below the minimum the families need (576 / 1280) or
    /// above 65535.
    BadMtu(usize),
    /// The port table's configuration is invalid.
    Ports(PortTableConfigError),
    /// A backlog or buffer size of zero.
    ZeroSize(&'static str),
    /// A size below what the stack can work with.
    TooSmall {
        /// What is too small.
        what: &'static str,
        /// The size given.
        size: usize,
        /// The smallest allowed.
        min: usize,
    },
    /// A size above what the stack can serve.
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// The size given.
        size: usize,
        /// The largest allowed.
        max: usize,
    },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::NoAddress => write!(f, "the stack needs at least one address"),
            ConfigError::BadAddress(a, p) => write!(f, "{a}/{p} is not a usable unicast address"),
            ConfigError::BadMtu(m) => {
                write!(f, "MTU {m} is out of range (576..=65535, 1280 with IPv6)")
            }
            ConfigError::Ports(e) => e.fmt(f),
            ConfigError::ZeroSize(what) => write!(f, "{what} must be at least 1"),
            ConfigError::TooSmall { what, size, min } => {
                write!(f, "{what} of {size} is too small (at least {min})")
            }
            ConfigError::TooLarge { what, size, max } => {
                write!(f, "{what} of {size} is too large (at most {max})")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut StackConfig)) -> Result<Vec<IpCidr>, ConfigError> {
        let mut c = StackConfig {
            addrs: vec![("10.0.0.1".parse().unwrap(), 24)],
            ..StackConfig::default()
        };
        f(&mut c);
        c.validate()
    }

    #[test]
    fn configurations_that_cannot_work_are_named() {
        assert_eq!(with(|_| ()).map(|c| c.len()), Ok(1));
        assert_eq!(with(|c| c.addrs.clear()), Err(ConfigError::NoAddress));
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(
            with(|c| c.addrs = vec![(v6, 129)]),
            Err(ConfigError::BadAddress(v6, 129))
        );
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        assert_eq!(
            with(|c| c.addrs = vec![(any, 8)]),
            Err(ConfigError::BadAddress(any, 8))
        );
        assert_eq!(with(|c| c.mtu = 575), Err(ConfigError::BadMtu(575)));
        // IPv6 needs 1280.
        assert_eq!(
            with(|c| {
                c.addrs.push((v6, 64));
                c.mtu = 1279
            }),
            Err(ConfigError::BadMtu(1279))
        );
        assert_eq!(
            with(|c| c.syn_backlog = 0),
            Err(ConfigError::ZeroSize("syn backlog"))
        );
        assert_eq!(
            with(|c| c.syn_backlog = 0).unwrap_err().to_string(),
            "syn backlog must be at least 1"
        );
    }

    #[test]
    fn congestion_control_names_round_trip() {
        assert_eq!(
            StackConfig::default().congestion_control,
            CongestionControl::Cubic
        );
        for (name, c) in CongestionControl::NAMES.into_iter().zip([
            CongestionControl::Cubic,
            CongestionControl::Reno,
            CongestionControl::None,
        ]) {
            assert_eq!(c.to_string(), name);
            assert_eq!(name.parse(), Ok(c));
            assert_eq!(name.to_uppercase().parse(), Ok(c));
        }
        assert_eq!(
            "bbr".parse::<CongestionControl>().unwrap_err().to_string(),
            "unknown congestion control \"bbr\"; expected one of cubic, reno, none"
        );
        assert!("".parse::<CongestionControl>().is_err());
    }

    #[test]
    fn absurd_buffer_sizes_are_refused_before_any_memory_is_cut() {
        // Through the safe constructor: before this check the pool summed
        // the sizes unchecked and cut slices past its mapping.
        let now = crate::Instant::from_millis(0);
        for (rx, tx) in [
            (usize::MAX, 4096),
            (4096, usize::MAX),
            (usize::MAX / 2 + 1, usize::MAX / 2 + 1),
            (MAX_BUFFER + 1, 4096),
        ] {
            let c = StackConfig {
                addrs: vec![("10.0.0.1".parse().unwrap(), 24)],
                tcp_rx_buffer: rx,
                tcp_tx_buffer: tx,
                ..StackConfig::default()
            };
            let Err(e) = super::super::Stack::new(c, now) else {
                panic!("{rx} / {tx} octets accepted");
            };
            assert!(
                matches!(
                    e,
                    ConfigError::TooLarge {
                        max: MAX_BUFFER,
                        ..
                    }
                ),
                "{e:?}"
            );
        }
        assert_eq!(
            with(|c| c.tcp_tx_buffer = MAX_BUFFER + 1)
                .unwrap_err()
                .to_string(),
            "TCP send buffer of 1073741825 is too large (at most 1073741824)"
        );
        assert_eq!(
            with(|c| c.max_memory = 4096).unwrap_err().to_string(),
            "memory budget of 4096 is too small (at least 65536)"
        );
        assert_eq!(
            with(|c| c.max_connections = 0),
            Err(ConfigError::ZeroSize("connection limit"))
        );
        assert!(with(|c| {
            c.tcp_rx_buffer = MAX_BUFFER;
            c.tcp_tx_buffer = MAX_BUFFER;
        })
        .is_ok());
    }
}
