//! Who may use the SOCKS proxy, and where the connections the daemon
//! opens on others' behalf may go.
//!
//! The daemon's outbound connections leave from the stack's address, from
//! the host that runs it. Left open, its SOCKS proxy would let anyone who
//! reaches it connect to the host's loopback services, to link-local and
//! cloud-metadata addresses (169.254.169.254), and wherever the host
//! routes. So clients are checked against an allow list ([`NetList`],
//! `--socks-allow`, by default the interface's own subnets), and
//! destinations against a deny list ([`Destinations`], `--socks-deny`,
//! [`DEFAULT_DENY`] unless lifted with `none`), for SOCKS, for a
//! `--forward` to a name (each lookup's answer: DNS can point a name
//! anywhere), and for `fetch`.
//!
//! An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) is checked as the
//! IPv4 address it is.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A network: an address whose host bits are zero, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

/// The bits of `addr` as one number, and its width.
fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

/// The mask of a `prefix`-bit network in a `width`-bit address.
fn mask(prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        (u128::MAX << (128 - u32::from(prefix))) >> (128 - u32::from(width))
    }
}

impl Net {
    /// The network `addr`/`prefix` belongs to: the subnet of an interface
    /// address (`10.7.0.2/24` → `10.7.0.0/24`). `prefix` is capped at the
    /// address's width.
    pub fn containing(addr: IpAddr, prefix: u8) -> Net {
        let addr = addr.to_canonical();
        let (b, width) = bits(addr);
        let prefix = prefix.min(width);
        let net = b & mask(prefix, width);
        let addr = match addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(net as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(net)),
        };
        Net { addr, prefix }
    }

    /// `A.B.C.D/N`, `X::Y/N`, or a bare address (a single host, /32 or
    /// /128). Host bits must be zero: `10.7.0.5/24` is refused with the
    /// network it probably meant, since a rule that silently covered more
    /// than it says is worse than an error.
    pub fn parse(s: &str) -> Result<Net, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| {
            format!("{a:?} is not an IP address; write a network such as 10.7.0.0/24 or fd00:7::/64, or one address")
        })?;
        if addr.to_canonical() != addr {
            return Err(format!(
                "{s:?} is an IPv4-mapped IPv6 address; write the IPv4 network ({}) instead",
                addr.to_canonical()
            ));
        }
        let width = bits(addr).1;
        let prefix = match p {
            None => width,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= width => n,
                _ => {
                    return Err(format!(
                        "{p:?} is not a prefix length for {addr} (0-{width})"
                    ))
                }
            },
        };
        let net = Net::containing(addr, prefix);
        if net.addr != addr {
            return Err(format!("{s:?} has host bits set; the network is {net}"));
        }
        Ok(net)
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address as the
    /// IPv4 address it is).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let (a, width) = bits(self.addr);
        let (b, w) = bits(ip);
        w == width && (a ^ b) & mask(self.prefix, width) == 0
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A list of networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetList(Vec<Net>);

impl NetList {
    /// The networks `nets`.
    pub fn new(nets: Vec<Net>) -> NetList {
        NetList(nets)
    }

    /// The first network holding `ip`.
    pub fn find(&self, ip: IpAddr) -> Option<&Net> {
        self.0.iter().find(|n| n.contains(ip))
    }

    /// Whether any network holds `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.find(ip).is_some()
    }

    /// The networks.
    pub fn nets(&self) -> &[Net] {
        &self.0
    }
}

/// The destinations denied unless `--socks-deny none` lifts them: the
/// addresses no client should reach through the daemon's host, each with
/// what it is.
pub const DEFAULT_DENY: [(&str, &str); 11] = [
    ("0.0.0.0/8", "unspecified (this host)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local, cloud metadata"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
    // AWS's instance metadata service over IPv6; its IPv4 address is in
    // 169.254.0.0/16.
    ("fd00:ec2::254/128", "cloud metadata"),
    // Never a destination (RFC 6666): traffic for it is thrown away.
    ("100::/64", "discard-only"),
];

/// The [`DEFAULT_DENY`] networks.
pub fn default_deny() -> Vec<Net> {
    DEFAULT_DENY
        .iter()
        .map(|(n, _)| Net::parse(n).expect("the default deny list parses"))
        .collect()
}

/// One `--socks-deny` value: a network, or `none`, which lifts the
/// defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyArg {
    /// `none`: the defaults do not apply.
    NoDefaults,
    /// A network to deny.
    Net(Net),
}

impl DenyArg {
    /// `none`, or a network as [`Net::parse`] reads it.
    pub fn parse(s: &str) -> Result<DenyArg, String> {
        if s.eq_ignore_ascii_case("none") {
            return Ok(DenyArg::NoDefaults);
        }
        Net::parse(s).map(DenyArg::Net)
    }
}

/// The deny list `--socks-deny` values make: [`DEFAULT_DENY`] plus the
/// networks given, or only those given if one of the values is `none`.
pub fn deny_list(args: &[DenyArg]) -> Vec<Net> {
    let mut nets = if args.contains(&DenyArg::NoDefaults) {
        Vec::new()
    } else {
        default_deny()
    };
    nets.extend(args.iter().filter_map(|a| match a {
        DenyArg::Net(n) => Some(*n),
        DenyArg::NoDefaults => None,
    }));
    nets
}

/// A destination the rules refuse: the address and the network that
/// holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    /// The address asked for.
    pub addr: IpAddr,
    /// The deny rule it falls in.
    pub net: Net,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = DEFAULT_DENY
            .iter()
            .find(|(n, _)| Net::parse(n).is_ok_and(|d| d == self.net))
            .map_or(String::new(), |(_, what)| format!(", {what}"));
        write!(
            f,
            "{} is not allowed as a destination ({}{what}; see --socks-deny)",
            self.addr, self.net
        )
    }
}

impl std::error::Error for Denied {}

impl From<Denied> for std::io::Error {
    /// `PermissionDenied`, which SOCKS answers with reply 02.
    fn from(d: Denied) -> Self {
        std::io::Error::new(std::io::ErrorKind::PermissionDenied, d.to_string())
    }
}

/// Where the daemon's outbound connections for others may not go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destinations {
    deny: NetList,
}

impl Default for Destinations {
    /// [`DEFAULT_DENY`].
    fn default() -> Self {
        Destinations::new(default_deny())
    }
}

impl Destinations {
    /// Deny `nets`.
    pub fn new(nets: Vec<Net>) -> Destinations {
        Destinations {
            deny: NetList::new(nets),
        }
    }

    /// Whether `ip` may be connected to.
    pub fn check(&self, ip: IpAddr) -> Result<(), Denied> {
        match self.deny.find(ip) {
            Some(&net) => Err(Denied { addr: ip, net }),
            None => Ok(()),
        }
    }

    /// The addresses of a lookup's answer that may be connected to, in
    /// order; if there were some and none may, the first refusal.
    pub fn filter(&self, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Denied> {
        let mut first = None;
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| match self.check(a.ip()) {
                Ok(()) => true,
                Err(d) => {
                    first.get_or_insert(d);
                    false
                }
            })
            .collect();
        match first {
            Some(d) if allowed.is_empty() => Err(d),
            _ => Ok(allowed),
        }
    }

    /// The denied networks.
    pub fn nets(&self) -> &[Net] {
        self.deny.nets()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_with_clear_errors() {
        let n = Net::parse("10.7.0.0/24").unwrap();
        assert_eq!(n.to_string(), "10.7.0.0/24");
        assert!(n.contains(ip("10.7.0.1")) && n.contains(ip("10.7.0.255")));
        assert!(!n.contains(ip("10.7.1.1")) && !n.contains(ip("fd00::1")));
        assert_eq!(Net::parse("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(
            Net::parse("fd00:7::/64").unwrap().to_string(),
            "fd00:7::/64"
        );
        assert_eq!(Net::parse("::/0").unwrap().to_string(), "::/0");
        assert!(Net::parse("0.0.0.0/0").unwrap().contains(ip("203.0.113.9")));
        assert!(!Net::parse("0.0.0.0/0").unwrap().contains(ip("2001:db8::1")));

        let e = Net::parse("10.7.0.5/24").unwrap_err();
        assert!(e.contains("host bits") && e.contains("10.7.0.0/24"), "{e}");
        let e = Net::parse("10.7.0.0/33").unwrap_err();
        assert!(e.contains("prefix length") && e.contains("0-32"), "{e}");
        let e = Net::parse("fd00::/129").unwrap_err();
        assert!(e.contains("0-128"), "{e}");
        let e = Net::parse("ten/8").unwrap_err();
        assert!(e.contains("not an IP address"), "{e}");
        let e = Net::parse("::ffff:127.0.0.0/104").unwrap_err();
        assert!(e.contains("IPv4-mapped") && e.contains("127.0.0.0"), "{e}");
        for bad in [
            "",
            "/24",
            "10.7.0.0/",
            "10.7.0.0/x",
            "10.7.0.0/24/1",
            "10.7.0.0 /24",
        ] {
            assert!(Net::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_interface_address_gives_its_subnet() {
        assert_eq!(
            Net::containing(ip("10.7.0.2"), 24).to_string(),
            "10.7.0.0/24"
        );
        assert_eq!(
            Net::containing(ip("fd00:7::2"), 64).to_string(),
            "fd00:7::/64"
        );
        assert_eq!(
            Net::containing(ip("10.7.0.2"), 40).to_string(),
            "10.7.0.2/32"
        );
        assert_eq!(Net::containing(ip("10.7.0.2"), 0).to_string(), "0.0.0.0/0");
    }

    #[test]
    fn the_defaults_deny_loopback_link_local_metadata_and_the_rest() {
        let d = Destinations::default();
        for bad in [
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "169.254.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "fd00:ec2::254",
            "100::1",
            // IPv4-mapped: the IPv4 address it is.
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            let e = d.check(ip(bad)).unwrap_err();
            assert!(e.to_string().contains("--socks-deny"), "{e}");
        }
        for good in [
            "10.7.0.1",
            "192.0.2.1",
            "8.8.8.8",
            "fd00:7::1",
            "2001:db8::1",
            "::ffff:10.7.0.1",
            "fec0::1",
        ] {
            assert!(d.check(ip(good)).is_ok(), "{good}");
        }
        let e = d.check(ip("169.254.169.254")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "169.254.169.254 is not allowed as a destination (169.254.0.0/16, link-local, cloud metadata; see --socks-deny)"
        );
        assert_eq!(
            std::io::Error::from(e).kind(),
            std::io::ErrorKind::PermissionDenied
        );
    }

    #[test]
    fn none_lifts_the_defaults_and_networks_add_to_them() {
        let parse =
            |v: &[&str]| -> Vec<DenyArg> { v.iter().map(|s| DenyArg::parse(s).unwrap()).collect() };
        assert_eq!(deny_list(&[]), default_deny());
        let more = deny_list(&parse(&["10.0.0.0/8"]));
        assert_eq!(more.len(), DEFAULT_DENY.len() + 1);
        let d = Destinations::new(more);
        assert!(d.check(ip("10.1.2.3")).is_err() && d.check(ip("127.0.0.1")).is_err());

        let d = Destinations::new(deny_list(&parse(&["none"])));
        assert!(d.nets().is_empty());
        assert!(d.check(ip("127.0.0.1")).is_ok());
        let d = Destinations::new(deny_list(&parse(&["10.0.0.0/8", "NONE"])));
        assert_eq!(d.nets().len(), 1);
        assert!(d.check(ip("127.0.0.1")).is_ok() && d.check(ip("10.0.0.1")).is_err());
        assert!(DenyArg::parse("nothing").is_err());
    }

    #[test]
    fn answers_are_filtered_and_refused_only_when_nothing_is_left() {
        let d = Destinations::default();
        let sa = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let mixed = vec![sa("127.0.0.1:80"), sa("10.7.0.1:80"), sa("[::1]:80")];
        assert_eq!(d.filter(mixed), Ok(vec![sa("10.7.0.1:80")]));
        let e = d
            .filter(vec![sa("169.254.169.254:80"), sa("127.0.0.1:80")])
            .unwrap_err();
        assert_eq!(e.addr, ip("169.254.169.254"));
        assert_eq!(d.filter(Vec::new()), Ok(Vec::new()));
    }

    #[test]
    fn client_lists_match_mapped_addresses_too() {
        let l = NetList::new(vec![Net::parse("10.7.0.0/24").unwrap()]);
        assert!(l.contains(ip("10.7.0.1")) && l.contains(ip("::ffff:10.7.0.1")));
        assert!(!l.contains(ip("10.8.0.1")));
        assert!(!NetList::default().contains(ip("10.7.0.1")));
    }
}
