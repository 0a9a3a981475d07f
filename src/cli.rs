//! The command line: clap definitions and the pure parsers behind them.
//!
//! Every argument is parsed and checked here, before anything touches the
//! OS, so a bad address, range or forward spec is a one-line error naming
//! the argument and exits non-zero with nothing configured. `main.rs` only
//! dispatches.

use std::ffi::OsStr;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use ephemera::device::kernel_peer_addr;
use ephemera::device::tun::{MAX_MTU, MAX_NAME_LEN};
use ephemera::port_table::MAX_SHARDS;
use ephemera::CongestionControl;

use crate::daemon::host::Host;
use crate::daemon::policy::{DenyArg, Net};
pub use crate::daemon::services::Forward;

/// `ephemera`: a user-space TCP/IP stack on a TUN device.
#[derive(Debug, Parser)]
#[command(name = "ephemera", version, about, propagate_version = true)]
#[command(
    long_about = "A user-space TCP/IP stack on a TUN device, with its own port table.\n\n\
    `ephemera up` attaches the stack to a TUN interface and serves; `ephemera ports` and \
    `ephemera fetch` talk to the running daemon over its control socket."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bring up a TUN interface and serve on ephemera's own stack until SIGINT/SIGTERM.
    // Boxed: the daemon's options outgrow the other subcommands' many times.
    Up(Box<UpArgs>),
    /// Show the running daemon's port table, like `ss -tuan`.
    Ports(PortsArgs),
    /// Make an HTTP/1.1 GET through the running daemon's stack and print the body.
    Fetch(FetchArgs),
}

/// Arguments of `ephemera up`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    sudo ephemera up --tun tun0 --addr 10.7.0.2/24 --http 80 --echo 7\n  \
    curl http://10.7.0.2/\n\n\
    The kernel's end of the interface gets the lowest other host address of the subnet \
    (10.7.0.1 for 10.7.0.2/24), so the kernel and ephemera are two hosts on one link.\n\n\
    Without root: sudo ip tuntap add dev tun0 mode tun user $USER, configure it with ip(8), \
    then ephemera up --no-configure ...")]
pub struct UpArgs {
    /// TUN interface to create (or attach to, with --no-configure).
    #[arg(long, value_name = "NAME", value_parser = parse_ifname)]
    pub tun: String,
    /// The stack's IPv4 address and prefix length; the kernel gets another host of the subnet.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr_v4)]
    pub addr: Cidr,
    /// The stack's IPv6 address and prefix length, e.g. fd00:7::2/64.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr_v6)]
    pub addr6: Option<Cidr>,
    /// Interface MTU, up to 65535 (at least 1280 with --addr6).
    #[arg(long, value_name = "BYTES", default_value_t = 1500, value_parser = parse_mtu)]
    pub mtu: u32,
    /// Serve HTTP/1.1 on this TCP port (`/` shows your 4-tuple and the port table; `/bytes/N`).
    #[arg(long, value_name = "PORT", value_parser = parse_port)]
    pub http: Option<u16>,
    /// Serve echo (RFC 862) on this TCP and UDP port.
    #[arg(long, value_name = "PORT", value_parser = parse_port)]
    pub echo: Option<u16>,
    /// Serve discard (RFC 863) on this TCP and UDP port.
    #[arg(long, value_name = "PORT", value_parser = parse_port)]
    pub discard: Option<u16>,
    /// Serve SOCKS5 (RFC 1928, CONNECT, no auth) on this TCP port.
    #[arg(long, value_name = "PORT", value_parser = parse_port)]
    pub socks: Option<u16>,
    /// Forward TCP connections on LPORT to HOST:PORT (repeatable); HOST may be an IPv6 address in brackets, or a name.
    #[arg(long, value_name = "LPORT=HOST:PORT", value_parser = parse_forward)]
    pub forward: Vec<Forward>,
    /// Client network that may use the SOCKS proxy (repeatable); others get reply 02
    /// [default: the subnets of --addr and --addr6].
    #[arg(long, value_name = "CIDR", value_parser = Net::parse, requires = "socks")]
    pub socks_allow: Vec<Net>,
    /// Destination network that SOCKS, a --forward to a name and fetch may not reach
    /// (repeatable), besides the defaults: loopback, link-local (169.254.169.254 too),
    /// unspecified, multicast, broadcast; `none` lifts the defaults.
    #[arg(long, value_name = "CIDR|none", value_parser = DenyArg::parse)]
    pub socks_deny: Vec<DenyArg>,
    /// Require a SOCKS username and password (RFC 1929) from FILE: USER:PASSWORD lines,
    /// the file mode 0600 and yours.
    #[arg(long, value_name = "FILE", requires = "socks")]
    pub socks_auth: Option<PathBuf>,
    /// Serve DNS on this UDP port, forwarding each query to the name server UPSTREAM
    /// (port 53 unless given; an IPv6 address in brackets) from a fresh port of the stack's
    /// own table with a fresh random ID. Repeat for more upstreams, asked in order when one
    /// does not answer; every --dns names the same PORT.
    #[arg(long, value_name = "PORT=UPSTREAM[:PORT]", value_parser = parse_dns)]
    pub dns: Vec<DnsSpec>,
    /// Resolve the names of SOCKS requests, --forward targets and fetch URLs by asking this
    /// name server (port 53 unless given) over the stack's own UDP and TCP, instead of the
    /// host's resolver. Repeat for more, asked in turn.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_name_server)]
    pub nameserver: Vec<SocketAddr>,
    /// Ports ephemera's own table hands out for outgoing connections.
    #[arg(long, value_name = "A-B", default_value = "49152-65535", value_parser = parse_range)]
    pub ephemeral_range: PortRange,
    /// Accept-queue length of each listener; also raises the half-open (SYN-RECEIVED)
    /// limit to at least N [default: 128].
    #[arg(long, value_name = "N", value_parser = parse_backlog)]
    pub backlog: Option<usize>,
    /// Most TCP connections open at once (half-open and closing ones too); beyond it
    /// new SYNs are dropped [default: the memory budget / 16 KiB, 1024 to 1048576].
    #[arg(long, value_name = "N", value_parser = parse_max_connections)]
    pub max_connections: Option<usize>,
    /// TCP buffer memory the stack may commit, e.g. 512M or 2G (K, M, G, T: binary
    /// units); above two thirds of it connections stop growing, at it new ones are
    /// refused [default: 3/32 of the machine's memory, like Linux's tcp_mem].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<usize>,
    /// How long a connection ephemera closed first stays in TIME-WAIT, holding its
    /// 4-tuple (2*MSL, RFC 9293 section 3.6.1); 0 skips TIME-WAIT.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = parse_time_wait)]
    pub time_wait: u64,
    /// Most connections in TIME-WAIT at once (Linux's tcp_max_tw_buckets); one that
    /// closes at the cap skips TIME-WAIT, its 4-tuple freed at once and counted
    /// (tcp_time_wait_overflow). With --queues N each queue keeps N-th of it.
    #[arg(long, value_name = "N", default_value_t = ephemera::port_table::DEFAULT_MAX_TIME_WAIT, value_parser = parse_max_time_wait)]
    pub max_time_wait: usize,
    /// When a listener answers a SYN with a SYN cookie instead of keeping a half-open
    /// connection (RFC 4987 section 3.6): auto (under a SYN flood, when the half-open
    /// queue is full), always, or never [default: auto].
    #[arg(long, value_name = "WHEN", value_parser = parse_syn_cookies)]
    pub syn_cookies: Option<ephemera::SynCookies>,
    /// Close a connection of any service (HTTP, echo, discard, SOCKS and forward relays,
    /// fetch) after SECS without a byte moving either way; 0: never.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = parse_idle_timeout)]
    pub idle_timeout: u64,
    /// Time a client has for an HTTP request head (then 408) or the SOCKS handshake up to
    /// its request (then closed).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = parse_head_timeout)]
    pub head_timeout: u64,
    /// TUN queues, each read by its own thread driving its own stack shard: 1 to 256, or
    /// auto (one per CPU). Ephemeral ports are split among the shards so that replies come
    /// back to the shard that opened the connection.
    #[arg(long, value_name = "N|auto", default_value = "1", value_parser = parse_queues)]
    pub queues: Queues,
    /// How the kernel puts each packet on its shard's queue with --queues above 1: ebpf (a
    /// steering program; without the privilege to load it, flow learning) or flow-learning
    /// (the kernel's own choice, and shards hand misdirected packets to their owner).
    #[arg(long, value_name = "HOW", default_value = "ebpf", value_parser = parse_steering)]
    pub steering: Steering,
    /// Drop privileges to this user once the interface is open and configured.
    #[arg(long, value_name = "NAME", value_parser = parse_user)]
    pub user: Option<String>,
    /// Use the interface as it is: do not set address, MTU or link state (needs no privilege
    /// on an interface created with `ip tuntap add ... user $USER`).
    #[arg(long)]
    pub no_configure: bool,
    /// No offload either way: write each packet to the kernel on its own and have it
    /// send whole, checksummed packets (by default runs of one flow's segments go as one
    /// packet with a virtio-net header, and the kernel sends its TCP super-packets, which
    /// ephemera cuts).
    #[arg(long)]
    pub no_offload: bool,
    /// Congestion control of every TCP connection: cubic (RFC 9438) or reno (RFC 5681) for
    /// paths with a bottleneck (--forward and SOCKS connections that leave the host); none
    /// sends whatever the peer's window allows, which only a TUN to the local kernel absorbs.
    #[arg(long, value_name = "ALGORITHM", default_value_t = CongestionControl::Cubic,
        value_parser = PossibleValuesParser::new(CongestionControl::NAMES)
            .try_map(|s| s.parse::<CongestionControl>()))]
    pub congestion: CongestionControl,
    /// Write every packet in and out to this pcap file (tcpdump -r FILE).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Control socket path [default: /run/ephemera/TUN/control.sock as root, else
    /// $XDG_RUNTIME_DIR/ephemera-TUN.sock or /tmp/ephemera-UID/TUN.sock]; its
    /// directory must be writable by no one but the daemon's user (and root).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
}

/// Arguments of `ephemera ports`.
#[derive(Debug, Args)]
pub struct PortsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also print the stack's counters.
    #[arg(long)]
    pub stats: bool,
    /// The daemon's TUN name, to find its default control socket.
    #[arg(long, value_name = "NAME", default_value = "tun0", value_parser = parse_ifname)]
    pub tun: String,
    /// Control socket path (overrides --tun).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
}

/// Arguments of `ephemera fetch`.
#[derive(Debug, Args)]
#[command(
    after_help = "The request leaves from an ephemeral port assigned by ephemera's own \
    port table; the 4-tuple used is printed on stderr."
)]
pub struct FetchArgs {
    /// The http:// URL to GET.
    #[arg(value_name = "URL", value_parser = parse_http_url)]
    pub url: String,
    /// Write the body to FILE instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The daemon's TUN name, to find its default control socket.
    #[arg(long, value_name = "NAME", default_value = "tun0", value_parser = parse_ifname)]
    pub tun: String,
    /// Control socket path (overrides --tun).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
}

/// One `--dns PORT=UPSTREAM[:PORT]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsSpec {
    /// The stack's UDP port clients query.
    pub port: u16,
    /// The name server asked.
    pub upstream: SocketAddr,
}

/// An address with a prefix length, e.g. `10.7.0.2/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// The kernel side's address on the same subnet (see
    /// [`kernel_peer_addr`]). Always succeeds for a `Cidr` from the parsers.
    pub fn kernel_peer(&self) -> Option<IpAddr> {
        kernel_peer_addr(self.addr, self.prefix).ok()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An inclusive port range `first-last`, `1 <= first <= last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port, inclusive.
    pub last: u16,
}

impl From<PortRange> for RangeInclusive<u16> {
    fn from(r: PortRange) -> Self {
        r.first..=r.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// A port 1-65535.
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) => Err("port 0 is not a port to listen on; use 1-65535".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("{s:?} is not a port number (1-65535)")),
    }
}

/// A range `A-B` of ports with `1 <= A <= B <= 65535`.
pub fn parse_range(s: &str) -> Result<PortRange, String> {
    let Some((a, b)) = s.split_once('-') else {
        return Err(format!(
            "{s:?} is not a range; write FIRST-LAST, e.g. 49152-65535"
        ));
    };
    let first = parse_port(a)?;
    let last = parse_port(b)?;
    if first > last {
        return Err(format!(
            "range {s:?} is backwards: {first} > {last}; write {last}-{first}"
        ));
    }
    Ok(PortRange { first, last })
}

fn split_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let Some((a, p)) = s.split_once('/') else {
        return Err(format!(
            "{s:?} has no prefix length; write ADDRESS/PREFIX, e.g. 10.7.0.2/24"
        ));
    };
    let addr: IpAddr = a.parse().map_err(|_| {
        format!(
            "{a:?} is not an IP address; write ADDRESS/PREFIX, e.g. 10.7.0.2/24 or fd00:7::2/64"
        )
    })?;
    let prefix: u8 = p.parse().map_err(|_| {
        format!(
            "{p:?} is not a prefix length; write ADDRESS/PREFIX, e.g. 10.7.0.2/24 or fd00:7::2/64"
        )
    })?;
    Ok((addr, prefix))
}

fn check_peer(cidr: Cidr) -> Result<Cidr, String> {
    kernel_peer_addr(cidr.addr, cidr.prefix).map_err(|e| format!("{cidr}: {e}"))?;
    Ok(cidr)
}

/// The stack's IPv4 address `A.B.C.D/N`: a unicast host address on a subnet
/// with room for the kernel's address too (N <= 31).
pub fn parse_cidr_v4(s: &str) -> Result<Cidr, String> {
    let (addr, prefix) = split_cidr(s)?;
    let IpAddr::V4(a) = addr else {
        return Err(format!("{s:?} is IPv6; use --addr6 for it"));
    };
    if prefix > 32 {
        return Err(format!("{s:?}: an IPv4 prefix is 0-32"));
    }
    if a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback() {
        return Err(format!("{s:?}: {a} is not a unicast host address"));
    }
    check_peer(Cidr { addr, prefix })
}

/// The stack's IPv6 address `X::Y/N`: global or unique-local unicast, with
/// room for the kernel's address too (N <= 127).
pub fn parse_cidr_v6(s: &str) -> Result<Cidr, String> {
    let (addr, prefix) = split_cidr(s)?;
    let IpAddr::V6(a) = addr else {
        return Err(format!("{s:?} is IPv4; use --addr for it"));
    };
    if prefix > 128 {
        return Err(format!("{s:?}: an IPv6 prefix is 0-128"));
    }
    let link_local = a.segments()[0] & 0xffc0 == 0xfe80;
    if a.is_unspecified()
        || a.is_multicast()
        || a.is_loopback()
        || a.to_ipv4_mapped().is_some()
        || link_local
    {
        return Err(format!(
            "{s:?}: {a} is not a global or unique-local unicast address (try fd00:7::2/64)"
        ));
    }
    check_peer(Cidr { addr, prefix })
}

/// An interface name: 1-15 bytes, no `/`, `:`, `%` or whitespace.
pub fn parse_ifname(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s != "."
        && s != ".."
        && !s
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == b'%' || b.is_ascii_whitespace() || b == 0);
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not an interface name (1-{MAX_NAME_LEN} bytes, no '/', ':', '%' or spaces)"
        ))
    }
}

/// An MTU from 576 (the IPv4 datagram every host must accept, RFC 791)
/// to 65535.
pub fn parse_mtu(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(m) if (576..=MAX_MTU).contains(&m) => Ok(m),
        _ => Err(format!("{s:?} is not an MTU (576-{MAX_MTU})")),
    }
}

/// A listen backlog of 1-65535.
pub fn parse_backlog(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a backlog (1-65535)")),
    }
}

/// `--queues`: a count, or one per CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queues {
    /// This many queues, 1 to [`MAX_SHARDS`].
    Count(u16),
    /// As many as `available_parallelism` says, at most [`MAX_SHARDS`].
    Auto,
}

impl Queues {
    /// The number of queues, `cpus` being what `auto` means on this
    /// machine (`None` if unknown: then 1).
    pub fn resolve(self, cpus: Option<usize>) -> u16 {
        match self {
            Queues::Count(n) => n,
            Queues::Auto => {
                let n = cpus.unwrap_or(1).clamp(1, usize::from(MAX_SHARDS));
                // Clamped to 1..=256 just above.
                n as u16
            }
        }
    }
}

/// `--queues`: `auto`, or 1 to [`MAX_SHARDS`] (the kernel's limit on a
/// TUN's queues).
pub fn parse_queues(s: &str) -> Result<Queues, String> {
    if s == "auto" {
        return Ok(Queues::Auto);
    }
    match s.parse::<u16>() {
        Ok(n) if (1..=MAX_SHARDS).contains(&n) => Ok(Queues::Count(n)),
        _ => Err(format!(
            "{s:?} is not a number of queues (1-{MAX_SHARDS}, or auto for one per CPU)"
        )),
    }
}

/// `--steering`: how packets reach their shard's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// An eBPF steering program, falling back to flow learning.
    Ebpf,
    /// The kernel's flow learning, and hand-offs between shards.
    FlowLearning,
}

/// `--steering`: `ebpf` or `flow-learning`.
pub fn parse_steering(s: &str) -> Result<Steering, String> {
    match s {
        "ebpf" => Ok(Steering::Ebpf),
        "flow-learning" => Ok(Steering::FlowLearning),
        _ => Err(format!("{s:?} is not ebpf or flow-learning")),
    }
}

/// The most connections `--max-connections` takes.
pub const MAX_CONNECTIONS: usize = 1 << 24;

/// A connection limit, 1 to [`MAX_CONNECTIONS`].
pub fn parse_max_connections(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_CONNECTIONS).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a connection limit (1-{MAX_CONNECTIONS})"
        )),
    }
}

/// A cap on TIME-WAIT records, 1 to [`MAX_CONNECTIONS`].
pub fn parse_max_time_wait(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_CONNECTIONS).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a TIME-WAIT cap (1-{MAX_CONNECTIONS}; --time-wait 0 skips TIME-WAIT)"
        )),
    }
}

/// The smallest `--max-memory` (the stack's own minimum).
pub const MIN_MEMORY: usize = 64 << 10;

/// A size in octets: a whole number with an optional binary unit, `K`,
/// `M`, `G` or `T` (also written `KiB`, `MB`, ...; any case): `512M`,
/// `2G`, `1048576`. At least [`MIN_MEMORY`].
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "{s:?} is not a size; write a number with an optional unit K, M, G or T, e.g. 512M"
            ))
        }
    };
    let n: usize = num.parse().map_err(|_| {
        format!("{s:?} is not a size; write a number with an optional unit K, M, G or T, e.g. 512M")
    })?;
    let bytes = n
        .checked_mul(1usize << shift)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes < MIN_MEMORY {
        return Err(format!("{s:?} is too small: at least 64K"));
    }
    Ok(bytes)
}

/// A TIME-WAIT duration in whole seconds, 0-3600.
pub fn parse_time_wait(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n <= 3600 => Ok(n),
        _ => Err(format!("{s:?} is not a TIME-WAIT in seconds (0-3600)")),
    }
}

/// `--syn-cookies`: `auto`, `always` or `never`.
pub fn parse_syn_cookies(s: &str) -> Result<ephemera::SynCookies, String> {
    match s {
        "auto" => Ok(ephemera::SynCookies::Auto),
        "always" => Ok(ephemera::SynCookies::Always),
        "never" => Ok(ephemera::SynCookies::Never),
        _ => Err(format!("{s:?} is not auto, always or never")),
    }
}

/// `--idle-timeout`: whole seconds, 0 (never) to 604800 (a week).
pub fn parse_idle_timeout(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n <= 604_800 => Ok(n),
        _ => Err(format!(
            "{s:?} is not an idle timeout in seconds (0-604800; 0: never)"
        )),
    }
}

/// `--head-timeout`: whole seconds, 1 to 3600.
pub fn parse_head_timeout(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if (1..=3600).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a request-head timeout in seconds (1-3600)"
        )),
    }
}

/// A user name for `--user`: non-empty, no NUL, no `:` or whitespace.
pub fn parse_user(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 256
        || s.bytes()
            .any(|b| b == 0 || b == b':' || b.is_ascii_whitespace())
    {
        return Err(format!("{s:?} is not a user name"));
    }
    Ok(s.to_string())
}

/// `HOST:PORT` with HOST an IPv4 address, a bracketed IPv6 address or a
/// DNS name.
pub fn parse_host_port(s: &str) -> Result<(Host, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((h, p)) = rest.split_once("]:") else {
            return Err(format!("{s:?}: write an IPv6 target as [ADDRESS]:PORT"));
        };
        let a: Ipv6Addr = h
            .parse()
            .map_err(|_| format!("{h:?} is not an IPv6 address"))?;
        (Host::Ip(IpAddr::V6(a)), p)
    } else {
        let Some((h, p)) = s.rsplit_once(':') else {
            return Err(format!("{s:?} has no port; write HOST:PORT"));
        };
        if h.contains(':') {
            return Err(format!("{s:?}: write an IPv6 target as [ADDRESS]:PORT"));
        }
        (Host::parse(h).map_err(|e| e.to_string())?, p)
    };
    Ok((host, parse_port(port)?))
}

/// A name server's address: `IP`, `IP:PORT`, `[IPV6]` or `[IPV6]:PORT`
/// (a bare IPv6 address too), port 53 unless given. Only unicast
/// addresses: a name server is one host.
pub fn parse_name_server(s: &str) -> Result<SocketAddr, String> {
    let example = "write IP[:PORT], e.g. 10.7.0.1:5353 or [fd00:7::1]:53";
    let (ip, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = match rest.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return Err(format!("{s:?}: {example}")),
            },
            None => return Err(format!("{s:?}: {example}")),
        };
        let a: Ipv6Addr = h
            .parse()
            .map_err(|_| format!("{h:?} is not an IPv6 address; {example}"))?;
        (IpAddr::V6(a), p)
    } else if let Ok(a) = s.parse::<IpAddr>() {
        (a, None)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                let a: IpAddr = h
                    .parse()
                    .map_err(|_| format!("{h:?} is not an IP address; {example}"))?;
                (a, Some(p))
            }
            _ => return Err(format!("{s:?} is not a name server address; {example}")),
        }
    };
    let port = match port {
        Some(p) => parse_port(p)?,
        None => 53,
    };
    let bad = match ip {
        IpAddr::V4(a) => a.is_broadcast() || a.is_multicast() || a.is_unspecified(),
        IpAddr::V6(a) => a.is_multicast() || a.is_unspecified(),
    };
    if bad {
        return Err(format!("{s:?}: {ip} is not a unicast address"));
    }
    Ok(SocketAddr::new(ip, port))
}

/// `PORT=UPSTREAM[:PORT]`.
pub fn parse_dns(s: &str) -> Result<DnsSpec, String> {
    let Some((l, upstream)) = s.split_once('=') else {
        return Err(format!(
            "{s:?} is not a DNS forward; write PORT=UPSTREAM[:PORT], e.g. 53=10.7.0.1:5353"
        ));
    };
    Ok(DnsSpec {
        port: parse_port(l)?,
        upstream: parse_name_server(upstream)?,
    })
}

/// `LPORT=HOST:PORT`.
pub fn parse_forward(s: &str) -> Result<Forward, String> {
    let Some((l, target)) = s.split_once('=') else {
        return Err(format!(
            "{s:?} is not a forward; write LPORT=HOST:PORT, e.g. 8080=10.7.0.1:8000"
        ));
    };
    let listen_port = parse_port(l)?;
    let (host, port) = parse_host_port(target)?;
    Ok(Forward {
        listen_port,
        host,
        port,
    })
}

/// A plain `http://` URL with a host (the daemon speaks no TLS).
pub fn parse_http_url(s: &str) -> Result<String, String> {
    let Some(rest) = s.strip_prefix("http://") else {
        if s.starts_with("https://") {
            return Err(format!("{s:?}: https is not supported; use http://"));
        }
        return Err(format!("{s:?} is not an http:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{s:?} has no host"));
    }
    if s.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!("{s:?} contains spaces or control characters"));
    }
    Ok(s.to_string())
}

impl UpArgs {
    /// Checks across arguments: no two services on one port, and an MTU
    /// IPv6 can use when `--addr6` is given (RFC 8200 section 5).
    pub fn validate(&self) -> Result<(), String> {
        let mut seen: Vec<(u16, String)> = Vec::new();
        let named = [
            ("--http", self.http),
            ("--echo", self.echo),
            ("--discard", self.discard),
            ("--socks", self.socks),
        ];
        let services = named
            .iter()
            .filter_map(|(n, p)| p.map(|p| (p, n.to_string())))
            .chain(
                self.forward
                    .iter()
                    .map(|f| (f.listen_port, format!("--forward {f}"))),
            );
        for (port, name) in services {
            if let Some((_, other)) = seen.iter().find(|(p, _)| *p == port) {
                return Err(format!("{name} and {other} both want TCP port {port}"));
            }
            seen.push((port, name));
        }
        if let Some(first) = self.dns.first() {
            if let Some(other) = self.dns.iter().find(|d| d.port != first.port) {
                return Err(format!(
                    "--dns {}={} and --dns {}={} name different ports; the forwarder serves one \
                     port, and its upstreams are asked in the order given",
                    first.port, first.upstream, other.port, other.upstream
                ));
            }
            let udp = [("--echo", self.echo), ("--discard", self.discard)];
            if let Some((name, _)) = udp.iter().find(|(_, p)| *p == Some(first.port)) {
                return Err(format!(
                    "--dns and {name} both want UDP port {}",
                    first.port
                ));
            }
            if let Some(d) = self.dns.iter().find(|d| d.upstream.is_ipv6()) {
                if self.addr6.is_none() {
                    return Err(format!(
                        "--dns upstream {} is IPv6, but the stack has no IPv6 address; add --addr6",
                        d.upstream
                    ));
                }
            }
        }
        if let Some(n) = self.nameserver.iter().find(|n| n.is_ipv6()) {
            if self.addr6.is_none() {
                return Err(format!(
                    "--nameserver {n} is IPv6, but the stack has no IPv6 address; add --addr6"
                ));
            }
        }
        if self.addr6.is_some() && self.mtu < 1280 {
            return Err(format!(
                "--mtu {} is below 1280, the IPv6 minimum; raise it or drop --addr6",
                self.mtu
            ));
        }
        Ok(())
    }
}

/// The control socket used when `--control` is not given: for root,
/// `/run/ephemera/TUN/control.sock`, in a directory of its own that the
/// daemon gives to the user it runs as; otherwise in the user's private
/// `$XDG_RUNTIME_DIR`, or else in a private directory `/tmp/ephemera-UID`.
/// Nobody else can write either directory, so nobody can put a socket of
/// their own at the path first (the daemon checks it; see
/// `daemon::files`).
pub fn default_control_path(euid: u32, xdg_runtime_dir: Option<&OsStr>, tun: &str) -> PathBuf {
    if euid == 0 {
        return Path::new("/run/ephemera").join(tun).join("control.sock");
    }
    match xdg_runtime_dir {
        Some(dir) if !dir.is_empty() && Path::new(dir).is_absolute() => {
            Path::new(dir).join(format!("ephemera-{tun}.sock"))
        }
        _ => Path::new("/tmp")
            .join(format!("ephemera-{euid}"))
            .join(format!("{tun}.sock")),
    }
}

/// [`default_control_path`] for this process.
pub fn control_path(explicit: Option<&Path>, tun: &str) -> PathBuf {
    match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let euid = nix::unistd::geteuid().as_raw();
            default_control_path(euid, std::env::var_os("XDG_RUNTIME_DIR").as_deref(), tun)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn up(args: &[&str]) -> Result<UpArgs, String> {
        let mut full = vec!["ephemera", "up"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full) {
            Ok(Cli {
                command: Command::Up(a),
            }) => Ok(*a),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn queues_default_to_one_and_take_a_count_or_auto() {
        let base = ["--tun", "tun0", "--addr", "10.7.0.2/24"];
        let a = up(&base).unwrap();
        assert_eq!(a.queues, Queues::Count(1));
        assert_eq!(a.steering, Steering::Ebpf);
        let a =
            up(&[&base[..], &["--queues", "4", "--steering", "flow-learning"]].concat()).unwrap();
        assert_eq!(a.queues, Queues::Count(4));
        assert_eq!(a.steering, Steering::FlowLearning);
        assert_eq!(a.queues.resolve(Some(2)), 4);
        let a = up(&[&base[..], &["--queues", "auto"]].concat()).unwrap();
        assert_eq!(a.queues, Queues::Auto);
        // auto: the CPUs, at most the kernel's 256 queues, 1 if unknown.
        assert_eq!(Queues::Auto.resolve(Some(2)), 2);
        assert_eq!(Queues::Auto.resolve(Some(1000)), MAX_SHARDS);
        assert_eq!(Queues::Auto.resolve(None), 1);
        assert_eq!(parse_queues("256"), Ok(Queues::Count(256)));
        for bad in ["0", "257", "-1", "", "Auto", "two"] {
            let arg = format!("--queues={bad}");
            let e = up(&[&base[..], &[arg.as_str()]].concat()).unwrap_err();
            assert!(e.contains("1-256") || bad.is_empty(), "{bad:?}: {e}");
            assert!(parse_queues(bad).is_err(), "{bad:?}");
        }
        assert!(parse_steering("none").is_err());
    }

    #[test]
    fn syn_cookies_auto_always_never() {
        use ephemera::SynCookies;
        let base = ["--tun", "tun0", "--addr", "10.7.0.2/24"];
        assert_eq!(up(&base).unwrap().syn_cookies, None);
        for (arg, want) in [
            ("auto", SynCookies::Auto),
            ("always", SynCookies::Always),
            ("never", SynCookies::Never),
        ] {
            let a = up(&[&base[..], &["--syn-cookies", arg]].concat()).unwrap();
            assert_eq!(a.syn_cookies, Some(want));
        }
        for bad in ["", "on", "Auto", "1"] {
            assert!(parse_syn_cookies(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn time_wait_seconds() {
        assert_eq!(parse_time_wait("0"), Ok(0));
        assert_eq!(parse_time_wait("60"), Ok(60));
        assert_eq!(parse_time_wait("3600"), Ok(3600));
        for bad in ["3601", "-1", "1.5", "", "1s"] {
            assert!(parse_time_wait(bad).is_err(), "{bad:?}");
        }
        let base = ["--tun", "tun0", "--addr", "10.7.0.2/24"];
        let a = up(&[&base[..], &["--time-wait", "2"]].concat()).unwrap();
        assert_eq!(a.time_wait, 2);
        assert_eq!(up(&base).unwrap().time_wait, 60);
        assert!(up(&[&base[..], &["--time-wait", "-1"]].concat()).is_err());
    }

    #[test]
    fn ports_and_ranges() {
        assert_eq!(parse_port("80"), Ok(80));
        assert_eq!(parse_port("65535"), Ok(65535));
        for bad in ["0", "65536", "-1", "", "8o", " 80"] {
            assert!(parse_port(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_range("49152-65535"),
            Ok(PortRange {
                first: 49152,
                last: 65535
            })
        );
        assert_eq!(parse_range("5-5"), Ok(PortRange { first: 5, last: 5 }));
        for bad in [
            "10-9", "0-10", "1-65536", "100", "-", "1-", "-5", "1-2-3", "a-b",
        ] {
            assert!(parse_range(bad).is_err(), "{bad:?}");
        }
        assert!(parse_range("10-9").unwrap_err().contains("backwards"));
        assert!(parse_range("10-9").unwrap_err().contains("write 9-10"));
        let r = RangeInclusive::from(parse_range("100-200").unwrap());
        assert!(r.contains(&100) && r.contains(&200) && !r.contains(&99) && !r.contains(&201));
    }

    #[test]
    fn cidrs() {
        let c = parse_cidr_v4("10.7.0.2/24").unwrap();
        assert_eq!(
            c,
            Cidr {
                addr: "10.7.0.2".parse().unwrap(),
                prefix: 24
            }
        );
        assert_eq!(c.kernel_peer(), Some("10.7.0.1".parse().unwrap()));
        assert_eq!(c.to_string(), "10.7.0.2/24");
        for bad in [
            "10.7.0.2",
            "10.7.0.2/33",
            "10.7.0.2/32",
            "10.7.0.0/24",
            "10.7.0.255/24",
            "0.0.0.0/8",
            "127.0.0.2/8",
            "224.0.0.1/24",
            "10.7.0/24",
            "fd00::2/64",
            "10.7.0.2/x",
            "",
        ] {
            assert!(parse_cidr_v4(bad).is_err(), "{bad:?}");
        }
        assert!(parse_cidr_v4("10.7.0.2").unwrap_err().contains("prefix"));
        assert!(parse_cidr_v4("fd00::2/64").unwrap_err().contains("--addr6"));

        let c = parse_cidr_v6("fd00:7::2/64").unwrap();
        assert_eq!(c.kernel_peer(), Some("fd00:7::1".parse().unwrap()));
        for bad in [
            "fd00:7::2",
            "fd00:7::2/129",
            "fd00:7::2/128",
            "fd00:7::/64",
            "::/0",
            "::1/64",
            "fe80::2/64",
            "ff02::2/64",
            "::ffff:10.0.0.2/96",
            "10.7.0.2/24",
        ] {
            assert!(parse_cidr_v6(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn forwards() {
        assert_eq!(
            parse_forward("8080=10.7.0.1:8000"),
            Ok(Forward {
                listen_port: 8080,
                host: Host::Ip("10.7.0.1".parse().unwrap()),
                port: 8000
            })
        );
        assert_eq!(
            parse_forward("8080=[fd00:7::1]:80"),
            Ok(Forward {
                listen_port: 8080,
                host: Host::Ip("fd00:7::1".parse().unwrap()),
                port: 80
            })
        );
        assert_eq!(
            parse_forward("22=Example.COM:22"),
            Ok(Forward {
                listen_port: 22,
                host: Host::Name("example.com".into()),
                port: 22
            })
        );
        assert_eq!(
            parse_forward("8080=[fd00:7::1]:80").unwrap().to_string(),
            "8080=[fd00:7::1]:80"
        );
        for bad in [
            "8080",
            "8080=host",
            "0=h:1",
            "8080=h:0",
            "8080=fd00::1:80",
            "8080=[fd00::1]80",
            "8080=[nope]:80",
            "8080=-bad-.com:80",
            "8080=a..b:80",
            "8080=:80",
            "8080=1.2.3:80",
            "8080=h h:80",
            "x=h:80",
        ] {
            assert!(parse_forward(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn targets_parse() {
        let ip = |s: &str| Host::Ip(s.parse().unwrap());
        assert_eq!(parse_host_port("10.0.0.3:80"), Ok((ip("10.0.0.3"), 80)));
        assert_eq!(parse_host_port("[fd00::1]:8080"), Ok((ip("fd00::1"), 8080)));
        assert_eq!(
            parse_host_port("Origin.Test:22"),
            Ok((Host::Name("origin.test".into()), 22))
        );
        for bad in [
            "",
            "host",
            "host:0",
            "host:x",
            ":80",
            "a b:80",
            "fd00::1:80x",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn small_parsers() {
        assert_eq!(parse_mtu("65535"), Ok(65535));
        assert_eq!(parse_mtu("1500"), Ok(1500));
        assert!(
            parse_mtu("65536").is_err() && parse_mtu("575").is_err() && parse_mtu("big").is_err()
        );
        assert_eq!(parse_backlog("128"), Ok(128));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(
            parse_size("1K").unwrap_err(),
            "\"1K\" is too small: at least 64K"
        );
        assert_eq!(
            parse_size("99999999999999999999G").unwrap_err(),
            "\"99999999999999999999G\" is not a size; write a number with an optional unit K, M, G or T, e.g. 512M"
        );
        assert_eq!(
            parse_size("17179869184G").unwrap_err(),
            "\"17179869184G\" is too large"
        );
        for bad in ["", "M", "1.5G", "-1G", "2X", "2 G"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_max_connections("20000"), Ok(20_000));
        assert!(parse_max_connections("0").is_err() && parse_max_connections("99999999").is_err());
        assert_eq!(parse_max_time_wait("3"), Ok(3));
        assert_eq!(parse_max_time_wait("16777216"), Ok(MAX_CONNECTIONS));
        for bad in ["0", "-1", "16777217", "lots", ""] {
            assert!(parse_max_time_wait(bad).is_err(), "{bad:?}");
        }
        assert!(parse_backlog("0").is_err() && parse_backlog("-1").is_err());
        assert_eq!(parse_ifname("tun0"), Ok("tun0".into()));
        assert!(
            parse_ifname("averyverylongname").is_err()
                && parse_ifname("a/b").is_err()
                && parse_ifname("").is_err()
        );
        assert!(
            parse_user("nobody").is_ok() && parse_user("").is_err() && parse_user("a b").is_err()
        );
        assert!(parse_http_url("http://10.7.0.1:8000/file").is_ok());
        assert!(parse_http_url("http://host").is_ok());
        for bad in [
            "https://x/",
            "ftp://x/",
            "http://",
            "http:///x",
            "http://u@h/",
            "x",
            "http://h/a b",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn up_parses_and_validates() {
        let a = up(&["--tun", "tun0", "--addr", "10.7.0.2/24"]).unwrap();
        assert_eq!(a.mtu, 1500);
        assert_eq!(
            a.ephemeral_range,
            PortRange {
                first: 49152,
                last: 65535
            }
        );
        assert!(a.validate().is_ok());

        let a = up(&[
            "--tun",
            "tun0",
            "--addr",
            "10.7.0.2/24",
            "--addr6",
            "fd00:7::2/64",
            "--mtu",
            "65535",
            "--http",
            "80",
            "--echo",
            "7",
            "--discard",
            "9",
            "--socks",
            "1080",
            "--forward",
            "8080=10.7.0.1:8000",
            "--forward",
            "2222=[fd00:7::1]:22",
            "--ephemeral-range",
            "40000-40099",
            "--backlog",
            "16",
            "--user",
            "nobody",
            "--no-configure",
            "--no-offload",
            "--syn-cookies",
            "always",
            "--pcap",
            "/tmp/x.pcap",
            "--control",
            "/tmp/c.sock",
            "--max-memory",
            "256M",
            "--max-connections",
            "5000",
            "--max-time-wait",
            "100",
        ])
        .unwrap();
        assert!(a.validate().is_ok());
        assert_eq!(
            (a.max_memory, a.max_connections),
            (Some(256 << 20), Some(5000))
        );
        assert_eq!(a.forward.len(), 2);
        assert_eq!(a.http, Some(80));
        assert!(a.no_configure);
        assert!(a.no_offload);
        assert_eq!(a.syn_cookies, Some(ephemera::SynCookies::Always));
        assert_eq!(a.max_time_wait, 100);

        let a = up(&[
            "--tun",
            "tun0",
            "--addr",
            "10.7.0.2/24",
            "--http",
            "80",
            "--forward",
            "80=h:1",
        ])
        .unwrap();
        assert!(a.validate().unwrap_err().contains("port 80"));
        let a = up(&[
            "--tun",
            "tun0",
            "--addr",
            "10.7.0.2/24",
            "--addr6",
            "fd00::2/64",
            "--mtu",
            "1000",
        ])
        .unwrap();
        assert!(a.validate().unwrap_err().contains("1280"));

        let e = up(&["--tun", "tun0", "--addr", "10.7.0.0/24"]).unwrap_err();
        assert!(
            e.contains("--addr") && e.contains("network or broadcast"),
            "{e}"
        );
        let e = up(&[
            "--tun",
            "tun0",
            "--addr",
            "10.7.0.2/24",
            "--ephemeral-range",
            "9-8",
        ])
        .unwrap_err();
        assert!(e.contains("backwards"), "{e}");
        assert!(up(&["--addr", "10.7.0.2/24"]).is_err());
        assert!(up(&["--tun", "tun0"]).is_err());
    }

    #[test]
    fn timeouts() {
        let base = ["--tun", "tun0", "--addr", "10.7.0.2/24"];
        let a = up(&base).unwrap();
        assert_eq!((a.idle_timeout, a.head_timeout), (300, 10));
        let a = up(&[
            &base[..],
            &["--idle-timeout", "0", "--head-timeout", "3600"],
        ]
        .concat())
        .unwrap();
        assert_eq!((a.idle_timeout, a.head_timeout), (0, 3600));
        for bad in ["-1", "1.5", "604801", "x", ""] {
            assert!(parse_idle_timeout(bad).is_err(), "{bad:?}");
        }
        for bad in ["0", "3601", "x"] {
            assert!(parse_head_timeout(bad).is_err(), "{bad:?}");
        }
        let e = up(&[&base[..], &["--head-timeout", "0"]].concat()).unwrap_err();
        assert!(e.contains("--head-timeout") && e.contains("1-3600"), "{e}");
    }

    #[test]
    fn socks_rules_and_users() {
        let base = ["--tun", "tun0", "--addr", "10.7.0.2/24", "--socks", "1080"];
        let a = up(&base).unwrap();
        assert!(a.socks_allow.is_empty() && a.socks_deny.is_empty() && a.socks_auth.is_none());
        let a = up(&[
            &base[..],
            &[
                "--socks-allow",
                "192.0.2.0/24",
                "--socks-allow",
                "fd00:7::/64",
                "--socks-deny",
                "none",
                "--socks-deny",
                "10.0.0.0/8",
                "--socks-auth",
                "/etc/ephemera/socks.users",
            ],
        ]
        .concat())
        .unwrap();
        assert_eq!(a.socks_allow.len(), 2);
        assert_eq!(
            a.socks_deny,
            [
                DenyArg::NoDefaults,
                DenyArg::Net(Net::parse("10.0.0.0/8").unwrap())
            ]
        );
        assert_eq!(
            a.socks_auth,
            Some(PathBuf::from("/etc/ephemera/socks.users"))
        );
        let e = up(&[&base[..], &["--socks-allow", "10.7.0.5/24"]].concat()).unwrap_err();
        assert!(
            e.contains("--socks-allow") && e.contains("host bits") && e.contains("10.7.0.0/24"),
            "{e}"
        );
        let e = up(&[&base[..], &["--socks-deny", "nobody"]].concat()).unwrap_err();
        assert!(
            e.contains("--socks-deny") && e.contains("not an IP address"),
            "{e}"
        );
        // Client rules and users need a SOCKS service; destination rules
        // also guard forwards and fetch.
        let no_socks = ["--tun", "tun0", "--addr", "10.7.0.2/24"];
        assert!(up(&[&no_socks[..], &["--socks-allow", "10.0.0.0/8"]].concat()).is_err());
        assert!(up(&[&no_socks[..], &["--socks-auth", "f"]].concat()).is_err());
        assert!(up(&[&no_socks[..], &["--socks-deny", "10.0.0.0/8"]].concat()).is_ok());
    }

    #[test]
    fn congestion_control_is_chosen_by_name() {
        let base = ["--tun", "tun0", "--addr", "10.7.0.2/24"];
        assert_eq!(up(&base).unwrap().congestion, CongestionControl::Cubic);
        for (name, cc) in [
            ("cubic", CongestionControl::Cubic),
            ("reno", CongestionControl::Reno),
            ("none", CongestionControl::None),
        ] {
            let a = up(&[&base[..], &["--congestion", name]].concat()).unwrap();
            assert_eq!(a.congestion, cc);
        }
        let e = up(&[&base[..], &["--congestion", "bbr"]].concat()).unwrap_err();
        assert!(
            e.contains("--congestion") && e.contains("cubic, reno, none"),
            "{e}"
        );
    }

    #[test]
    fn dns_forwards_and_name_servers() {
        assert_eq!(parse_name_server("10.7.0.1"), Ok(sa("10.7.0.1:53")));
        assert_eq!(parse_name_server("10.7.0.1:5353"), Ok(sa("10.7.0.1:5353")));
        assert_eq!(parse_name_server("fd00:7::1"), Ok(sa("[fd00:7::1]:53")));
        assert_eq!(parse_name_server("[fd00:7::1]"), Ok(sa("[fd00:7::1]:53")));
        assert_eq!(
            parse_name_server("[fd00:7::1]:54"),
            Ok(sa("[fd00:7::1]:54"))
        );
        for bad in [
            "",
            "dns.test",
            "dns.test:53",
            "10.7.0.1:0",
            "10.7.0.1:99999",
            "[fd00::1",
            "[fd00::1]x",
            "[10.7.0.1]:53",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.251:5353",
            "[ff02::fb]:5353",
            "::",
        ] {
            assert!(parse_name_server(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_dns("53=10.7.0.1:5353"),
            Ok(DnsSpec {
                port: 53,
                upstream: sa("10.7.0.1:5353")
            })
        );
        for bad in ["53", "=10.7.0.1", "0=10.7.0.1", "53=", "53=x"] {
            assert!(parse_dns(bad).is_err(), "{bad:?}");
        }
        let base = ["--tun", "tun0", "--addr", "10.7.0.2/24"];
        let a = up(&[
            &base[..],
            &["--dns", "53=10.7.0.1:5353", "--dns", "53=10.7.0.9"],
        ]
        .concat())
        .unwrap();
        assert!(a.validate().is_ok());
        let ups: Vec<SocketAddr> = a.dns.iter().map(|d| d.upstream).collect();
        assert_eq!(ups, [sa("10.7.0.1:5353"), sa("10.7.0.9:53")]);
        let e = up(&[&base[..], &["--dns", "53=10.7.0.1", "--dns", "54=10.7.0.9"]].concat())
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.contains("different ports"), "{e}");
        let e = up(&[&base[..], &["--dns", "7=10.7.0.1", "--echo", "7"]].concat())
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.contains("UDP port 7"), "{e}");
        let e = up(&[&base[..], &["--dns", "53=[fd00::1]"]].concat())
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.contains("--addr6"), "{e}");
        let a = up(&[
            &base[..],
            &["--nameserver", "10.7.0.1:5353", "--nameserver", "10.7.0.9"],
        ]
        .concat())
        .unwrap();
        assert!(a.validate().is_ok());
        assert_eq!(a.nameserver, [sa("10.7.0.1:5353"), sa("10.7.0.9:53")]);
        assert!(up(&[&base[..], &["--nameserver", "ns.test"]].concat()).is_err());
        let e = up(&[&base[..], &["--nameserver", "[fd00::1]:53"]].concat())
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.contains("--addr6"), "{e}");
        // DNS is UDP: a TCP service may share the port number.
        let a = up(&[&base[..], &["--dns", "80=10.7.0.1", "--http", "80"]].concat()).unwrap();
        assert!(a.validate().is_ok());
    }

    #[test]
    fn other_subcommands_parse() {
        let c = Cli::try_parse_from(["ephemera", "ports", "--json", "--stats"]).unwrap();
        let Command::Ports(p) = c.command else {
            panic!()
        };
        assert!(p.json && p.stats && p.tun == "tun0" && p.control.is_none());
        let c = Cli::try_parse_from(["ephemera", "fetch", "http://10.7.0.1:8000/f", "-o", "out"])
            .unwrap();
        let Command::Fetch(f) = c.command else {
            panic!()
        };
        assert_eq!(f.output, Some(PathBuf::from("out")));
        assert!(Cli::try_parse_from(["ephemera", "fetch", "https://x/"]).is_err());
        assert!(Cli::try_parse_from(["ephemera"]).is_err());
    }

    #[test]
    fn control_paths() {
        assert_eq!(
            default_control_path(0, Some(OsStr::new("/run/user/0")), "tun0"),
            PathBuf::from("/run/ephemera/tun0/control.sock")
        );
        assert_eq!(
            default_control_path(1000, Some(OsStr::new("/run/user/1000")), "tun0"),
            PathBuf::from("/run/user/1000/ephemera-tun0.sock")
        );
        // Without $XDG_RUNTIME_DIR: in a directory of the user's own, not
        // a name in /tmp that anyone could take first.
        assert_eq!(
            default_control_path(1000, None, "tun1"),
            PathBuf::from("/tmp/ephemera-1000/tun1.sock")
        );
        assert_eq!(
            default_control_path(1000, Some(OsStr::new("")), "t"),
            PathBuf::from("/tmp/ephemera-1000/t.sock")
        );
        assert_eq!(
            default_control_path(1000, Some(OsStr::new("rel")), "t"),
            PathBuf::from("/tmp/ephemera-1000/t.sock")
        );
        assert_eq!(
            control_path(Some(Path::new("/x/y.sock")), "tun0"),
            PathBuf::from("/x/y.sock")
        );
    }
}
