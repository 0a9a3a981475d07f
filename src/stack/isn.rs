//! The sequence numbers the stack chooses: RFC 6528 initial sequence
//! numbers, and SYN cookies (RFC 4987 §3.6).
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
//! - **SYN cookies**: the ISN of a SYN-ACK the stack keeps no state for
//!   encodes what the connection needs, so the returning ACK can rebuild it:
//!
//!   ```text
//!    31                              8 7   5 4   2 1 0
//!   +---------------------------------+-----+-----+-+-+
//!   |   MAC (24 bits)                 | WS  | MSS |S|P|
//!   +---------------------------------+-----+-----+-+-+
//!   ```
//!
//!   P is the parity of a 64-second counter (a cookie is valid during
//!   its counter and the next, so for 64 to 128 s), MSS an index into
//!   [`MSS_TABLE`], S whether the peer offered SACK, WS an index into
//!   [`WS_TABLE`] (0: no window scale offered), and the MAC SipHash-2-4,
//!   under a key of its own, of the 4-tuple, the peer's ISN, the whole
//!   counter and the low eight bits. The layout is FreeBSD's
//!   (`tcp_syncache.c`), with the counter of RFC 4987: carrying window
//!   scale and SACK-permitted in the ISN rather than in TCP timestamps as
//!   Linux does, because ephemera's connections carry no timestamps at all
//!   (smoltcp's TSval generator is a bare `fn() -> u32`, which cannot read
//!   the stack's clock). A forger must hit 24 bits: one guess in 16.7
//!   million.
//!
//! Both keys can be replaced (`Stack::rotate_sequence_keys`); the cookie
//! key before the last rotation is still accepted, so cookies in flight
//! survive one rotation.

use siphasher::sip::SipHasher24;
use smoltcp::time::{Duration, Instant};
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};

use crate::port_table::FlowKey;
use crate::rng::Rng;

/// The MSS values a cookie can carry (index in 3 bits): the peer's MSS is
/// rounded down to one of them (536, the IPv4 default, if it is below all).
/// 1220 is IPv6's minimum MTU less headers, 1452 PPPoE's, 8960 a 9000-octet
/// jumbo frame's.
pub(crate) const MSS_TABLE: [u16; 8] = [536, 1220, 1300, 1400, 1440, 1452, 1460, 8960];

/// The window scale shifts a cookie can carry (index in 3 bits), FreeBSD's
/// table: index 0 means no window scale option; a shift is rounded down to
/// an entry, which only makes the peer's window look smaller than it is.
pub(crate) const WS_TABLE: [u8; 8] = [0, 0, 1, 2, 4, 6, 7, 8];

/// The cookie counter's period.
pub(crate) const COOKIE_PERIOD: Duration = Duration::from_secs(64);

/// How long after its counter began a cookie can still be accepted, at
/// most: its own period and the next.
pub(crate) const COOKIE_LIFETIME: Duration = Duration::from_secs(128);

/// What a SYN asked for that a cookie carries.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct CookieOptions {
    /// The peer's MSS, rounded down to [`MSS_TABLE`].
    pub mss: u16,
    /// The peer's window scale shift, rounded down to [`WS_TABLE`]; `None`
    /// if it offered none.
    pub window_scale: Option<u8>,
    /// The peer offered SACK.
    pub sack_permitted: bool,
}

impl CookieOptions {
    /// What a cookie can carry of a SYN's options: `mss` (`None`: the
    /// family's default, RFC 9293 §3.7.1), `window_scale` and SACK.
    pub(crate) fn of_syn(
        v6: bool,
        mss: Option<u16>,
        window_scale: Option<u8>,
        sack_permitted: bool,
    ) -> CookieOptions {
        let mss = mss.unwrap_or(if v6 { 1220 } else { 536 });
        CookieOptions {
            mss: MSS_TABLE[mss_index(mss)],
            window_scale: window_scale.map(|s| WS_TABLE[ws_index(Some(s))]),
            sack_permitted,
        }
    }

    /// The low eight bits of a cookie, counter parity aside.
    fn bits(&self) -> u32 {
        (ws_index(self.window_scale) as u32) << 5
            | (mss_index(self.mss) as u32) << 2
            | (self.sack_permitted as u32) << 1
    }

    fn from_bits(bits: u32) -> CookieOptions {
        let ws = (bits >> 5) as usize & 7;
        CookieOptions {
            mss: MSS_TABLE[(bits >> 2) as usize & 7],
            window_scale: (ws != 0).then(|| WS_TABLE[ws]),
            sack_permitted: bits & 2 != 0,
        }
    }
}

/// The largest table entry not above `mss` (entry 0 if none is).
fn mss_index(mss: u16) -> usize {
    MSS_TABLE.iter().rposition(|&m| m <= mss).unwrap_or(0)
}

/// The table index of the largest shift not above `shift` (RFC 7323
/// allows at most 14); 0 for none.
fn ws_index(shift: Option<u8>) -> usize {
    match shift {
        None => 0,
        Some(s) => 1 + WS_TABLE[1..].iter().rposition(|&w| w <= s).unwrap_or(0),
    }
}

/// The secrets behind our sequence numbers.
#[derive(Clone, Debug)]
pub(crate) struct Secrets {
    isn_key: (u64, u64),
    cookie_key: (u64, u64),
    /// The cookie key before the last rotation.
    old_cookie_key: (u64, u64),
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

/// The 64-second counter at `now`.
fn counter(now: Instant) -> u64 {
    (now.total_micros().max(0) as u64) / COOKIE_PERIOD.total_micros()
}

impl Secrets {
    /// Fresh keys from `rng`.
    pub(crate) fn new(rng: &mut dyn Rng) -> Secrets {
        let cookie_key = key(rng);
        Secrets {
            isn_key: key(rng),
            cookie_key,
            old_cookie_key: cookie_key,
        }
    }

    /// Replace both keys with fresh ones from `rng`. ISNs of 4-tuples seen
    /// before become unrelated to those after (as after a restart);
    /// cookies issued under the old key stay valid for their lifetime.
    pub(crate) fn rotate(&mut self, rng: &mut dyn Rng) {
        self.old_cookie_key = self.cookie_key;
        self.cookie_key = key(rng);
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

    fn mac(&self, k: (u64, u64), key: &FlowKey, peer_isn: u32, t: u64, bits: u32) -> u32 {
        let mut h = SipHasher24::new_with_keys(k.0, k.1);
        write_tuple(&mut h, key);
        h.write_u32(peer_isn);
        h.write_u64(t);
        h.write_u32(bits);
        (h.finish() as u32) << 8
    }

    /// The cookie for a SYN on `key` with ISN `peer_isn` and options
    /// `opts`, answered at `now`.
    pub(crate) fn cookie(
        &self,
        now: Instant,
        key: &FlowKey,
        peer_isn: u32,
        opts: &CookieOptions,
    ) -> u32 {
        let t = counter(now);
        let bits = opts.bits() | (t & 1) as u32;
        self.mac(self.cookie_key, key, peer_isn, t, bits) | bits
    }

    /// Check `cookie` (SEG.ACK − 1 of the ACK that returns it, whose
    /// SEG.SEQ − 1 is `peer_isn`) at `now`: the options it carries, or
    /// `None` when its MAC matches under neither the current counter nor
    /// the one before (forged, or older than [`COOKIE_LIFETIME`]).
    pub(crate) fn check_cookie(
        &self,
        now: Instant,
        key: &FlowKey,
        peer_isn: u32,
        cookie: u32,
    ) -> Option<CookieOptions> {
        let bits = cookie & 0xff;
        let now_t = counter(now);
        // The counter whose parity the cookie names: now's, or the one
        // before (never below zero).
        let t = if u64::from(bits & 1) == now_t & 1 {
            now_t
        } else {
            now_t.checked_sub(1)?
        };
        let valid = [self.cookie_key, self.old_cookie_key]
            .iter()
            .any(|&k| self.mac(k, key, peer_isn, t, bits) | bits == cookie);
        valid.then(|| CookieOptions::from_bits(bits))
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

    #[test]
    fn cookies_carry_the_options_and_expire_after_two_periods() {
        let s = Secrets::new(&mut SeededRng::new(3));
        let k = key("[fd00::2]:443", "[fd00::1]:50000");
        let opts = CookieOptions::of_syn(true, Some(1440), Some(7), true);
        assert_eq!(
            opts,
            CookieOptions {
                mss: 1440,
                window_scale: Some(7),
                sack_permitted: true
            }
        );
        let period = COOKIE_PERIOD.total_micros() as i64;
        let t0 = at_us(5 * period + 17);
        let c = s.cookie(t0, &k, 999, &opts);
        for later in [0, period - 18, period, 2 * period - 18] {
            assert_eq!(
                s.check_cookie(at_us(t0.total_micros() + later), &k, 999, c),
                Some(opts),
                "{later} µs later"
            );
        }
        // Two periods on, the counter's parity names the wrong period.
        let stale = at_us(7 * period);
        assert_eq!(s.check_cookie(stale, &k, 999, c), None);
        // Another peer ISN, 4-tuple, or a flipped bit anywhere: refused.
        assert_eq!(s.check_cookie(t0, &k, 998, c), None);
        let other = key("[fd00::2]:443", "[fd00::1]:50001");
        assert_eq!(s.check_cookie(t0, &other, 999, c), None);
        for bit in 0..32 {
            assert_eq!(
                s.check_cookie(t0, &k, 999, c ^ (1 << bit)),
                None,
                "bit {bit}"
            );
        }
    }

    #[test]
    fn a_rotation_keeps_cookies_in_flight_valid_and_changes_the_isns() {
        let mut rng = SeededRng::new(4);
        let mut s = Secrets::new(&mut rng);
        let k = key("10.0.0.2:80", "10.0.0.1:40000");
        let opts = CookieOptions::of_syn(false, None, None, false);
        let c = s.cookie(at_us(0), &k, 1, &opts);
        let isn = s.isn(at_us(0), &k);
        s.rotate(&mut rng);
        assert_ne!(s.isn(at_us(0), &k), isn);
        assert_eq!(s.check_cookie(at_us(0), &k, 1, c), Some(opts));
        assert_ne!(s.cookie(at_us(0), &k, 1, &opts), c);
        // A second rotation forgets the first key.
        s.rotate(&mut rng);
        assert_eq!(s.check_cookie(at_us(0), &k, 1, c), None);
    }

    #[test]
    fn options_round_down_to_the_tables() {
        let o = |mss, ws| CookieOptions::of_syn(false, mss, ws, false);
        assert_eq!(o(None, None).mss, 536);
        assert_eq!(o(Some(100), None).mss, 536, "below every entry");
        assert_eq!(o(Some(1459), None).mss, 1452);
        assert_eq!(o(Some(65535), None).mss, 8960);
        assert_eq!(CookieOptions::of_syn(true, None, None, false).mss, 1220);
        for (shift, want) in [(0, 0), (1, 1), (3, 2), (5, 4), (6, 6), (7, 7), (14, 8)] {
            assert_eq!(o(None, Some(shift)).window_scale, Some(want), "{shift}");
        }
        // Every combination survives its own round trip.
        for bits in (0..256).step_by(2) {
            let c = CookieOptions::from_bits(bits);
            assert_eq!(CookieOptions::from_bits(c.bits()), c);
        }
    }
}
