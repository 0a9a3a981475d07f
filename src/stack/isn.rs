//! The sequence numbers the stack chooses: RFC 6528 initial sequence
//! numbers.
//!
//! smoltcp picks its own ISN and cannot be told one, so the stack keeps a
//! per-connection offset between smoltcp's sequence space and the one on
//! the wire (`segment::SeqOffset`); this module only says what our ISN on
//! the wire is:
//! - **RFC 6528**: ISN = M + F(local address, local port, remote address,
//!   remote port, secret key), M a clock ticking every 4 µs
//!   (RFC 9293 §3.4.1) read from the `now` passed in, F SipHash-2-4 under
//!   a 128-bit key drawn from the stack's injected RNG. Successive ISNs of
//!   one 4-tuple grow with time, so a new incarnation starts beyond the old
//!   one's sequence space (RFC 6191 reuse of TIME-WAIT works); ISNs of
//!   different 4-tuples are unrelated, so seeing one's says nothing of
//!   another's (blind injection and reset need a guess in 2^32).
//!
//! The key can be replaced (`Stack::rotate_sequence_keys`).

use siphasher::sip::SipHasher24;
use smoltcp::time::Instant;
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};

use crate::port_table::FlowKey;
use crate::rng::Rng;

/// The secrets behind our sequence numbers.
#[derive(Clone, Debug)]
pub(crate) struct Secrets {
    isn_key: (u64, u64),
}

fn key(rng: &mut dyn Rng) -> (u64, u64) {
    (rng.next_u64(), rng.next_u64())
}

/// The 4-tuple, fed to a hasher: addresses as 16 octets (IPv4-mapped),
/// ports big-endian.
fn write_tuple(h: &mut SipHasher24, k: &FlowKey) {
    let ip16 = |a: IpAddr| match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let port = |s: SocketAddr| s.port().to_be_bytes();
    h.write(&ip16(k.local.ip()));
    h.write(&port(k.local));
    h.write(&ip16(k.remote.ip()));
    h.write(&port(k.remote));
}

impl Secrets {
    /// Fresh keys from `rng`.
    pub(crate) fn new(rng: &mut dyn Rng) -> Secrets {
        Secrets { isn_key: key(rng) }
    }

    /// Replace the key with a fresh one from `rng`. ISNs of 4-tuples seen
    /// before become unrelated to those after (as after a restart).
    pub(crate) fn rotate(&mut self, rng: &mut dyn Rng) {
        self.isn_key = key(rng);
    }

    /// Our ISN for a connection on `key` whose SYN (or SYN-ACK) leaves at
    /// `now` (RFC 6528 §3).
    pub(crate) fn isn(&self, now: Instant, key: &FlowKey) -> u32 {
        // M: the 4-µs clock of RFC 9293 §3.4.1, wrapping every 4.77 hours.
        let m = (now.total_micros().max(0) as u64 / 4) as u32;
        let mut h = SipHasher24::new_with_keys(self.isn_key.0, self.isn_key.1);
        write_tuple(&mut h, key);
        m.wrapping_add(h.finish() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port_table::Protocol;
    use crate::rng::SeededRng;

    fn key(local: &str, remote: &str) -> FlowKey {
        FlowKey::new(
            Protocol::Tcp,
            local.parse().unwrap(),
            remote.parse().unwrap(),
        )
    }

    fn at_us(us: i64) -> Instant {
        Instant::from_micros(us)
    }

    #[test]
    fn isns_of_one_4_tuple_tick_every_4_us() {
        let s = Secrets::new(&mut SeededRng::new(1));
        let k = key("10.0.0.2:80", "10.0.0.1:40000");
        let isn0 = s.isn(at_us(0), &k);
        assert_eq!(s.isn(at_us(3), &k), isn0);
        assert_eq!(s.isn(at_us(4), &k), isn0.wrapping_add(1));
        assert_eq!(s.isn(at_us(4_000_000), &k), isn0.wrapping_add(1_000_000));
        // Another 4-tuple, another offset; another key, another one too.
        let other = key("10.0.0.2:80", "10.0.0.1:40001");
        assert_ne!(s.isn(at_us(0), &other), isn0);
        assert_ne!(Secrets::new(&mut SeededRng::new(2)).isn(at_us(0), &k), isn0);
    }
}
