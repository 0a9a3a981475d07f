//! Hosts as users name them: a `--forward` target, a `fetch` URL's host,
//! a SOCKS request's domain. One type, [`Host`], and one validator,
//! [`Host::parse`], for all three: an address literal needs no lookup, a
//! name goes to the resolver, anything else is refused before it gets
//! there.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// An address literal, or a DNS name to look up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
    /// A DNS name, lower-cased.
    Name(String),
}

/// A string that is neither an address literal nor a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidHost(pub String);

impl fmt::Display for InvalidHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not an IP address or host name", self.0)
    }
}

impl std::error::Error for InvalidHost {}

impl Host {
    /// `s` as a host: an IPv4 literal, an IPv6 literal (bare or in
    /// brackets), or a DNS name: dot-separated labels of 1-63 letters,
    /// digits, `-` or `_`, none starting or ending with `-`, 253 octets at
    /// most, and not all digits and dots (an all-numeric name that is not
    /// an address, such as `1.2.3`, is an address typo: the resolver would
    /// read it as one, RFC 3696 section 2).
    pub fn parse(s: &str) -> Result<Host, InvalidHost> {
        let bare = s
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .map(|h| h.parse::<Ipv6Addr>().map(IpAddr::V6));
        match bare {
            Some(Ok(ip)) => return Ok(Host::Ip(ip)),
            Some(Err(_)) => return Err(InvalidHost(s.to_owned())),
            None => {}
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        if is_dns_name(s) && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Ok(Host::Name(s.to_ascii_lowercase()));
        }
        Err(InvalidHost(s.to_owned()))
    }
}

/// Whether `s` is dot-separated labels of 1-63 letters, digits, `-` or
/// `_`, not starting or ending with `-`, 253 octets at most.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl fmt::Display for Host {
    /// As it is written before a `:PORT`: an IPv6 literal in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Host {
        Host::Ip(s.parse().unwrap())
    }

    #[test]
    fn literals_need_no_lookup() {
        assert_eq!(Host::parse("10.0.0.3"), Ok(ip("10.0.0.3")));
        assert_eq!(Host::parse("[fd00::1]"), Ok(ip("fd00::1")));
        assert_eq!(Host::parse("fd00::1"), Ok(ip("fd00::1")));
        for name in ["origin.test", "localhost", "10.0.0", "[10.0.0.3", ""] {
            assert!(!matches!(Host::parse(name), Ok(Host::Ip(_))), "{name}");
        }
    }

    #[test]
    fn names_are_checked_and_lower_cased() {
        assert_eq!(
            Host::parse("Origin.Test"),
            Ok(Host::Name("origin.test".into()))
        );
        assert_eq!(
            Host::parse("a_b.example-1.com"),
            Ok(Host::Name("a_b.example-1.com".into()))
        );
        let long_label = "a".repeat(64);
        let long_name = ["a".repeat(63).as_str(); 5].join(".");
        for bad in [
            "",
            "-bad-.com",
            "a..b",
            "a b",
            "1.2.3",
            "h!",
            "[nope]",
            "[10.0.0.3]",
            ".",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            let e = Host::parse(bad).unwrap_err();
            assert!(e.to_string().contains("not an IP address or host name"));
        }
        assert_eq!(ip("fd00:7::1").to_string(), "[fd00:7::1]");
        assert_eq!(ip("10.7.0.1").to_string(), "10.7.0.1");
    }
}
