//! The Internet checksum: the ones'-complement sum of 16-bit words
//! (RFC 1071), the pseudo-header sums of TCP, UDP and ICMPv6 (RFC 9293
//! §3.1, RFC 768, RFC 8200 §8.1), and the incremental update of RFC 1624.
//!
//! A *sum* here is a partial ones'-complement sum, kept folded to 16 bits
//! in a `u32` so that sums can be added together and folded again; a
//! *checksum* is the complement of a folded sum, what goes in a header.

use std::net::IpAddr;

/// The ones'-complement sum of `data` as big-endian 16-bit words, added to
/// `acc`, folded to 16 bits. An odd last octet counts as the high octet of
/// a word whose low octet is zero, so every piece summed separately but
/// the last must have an even length.
pub fn sum(acc: u32, data: &[u8]) -> u32 {
    // RFC 1071 §2(B): the sum is byte-order independent, so words are
    // added in the machine's order, eight octets at a time as two 32-bit
    // halves into a 64-bit accumulator (2^31 steps before it could
    // overflow), and the folded result is put in network order at the
    // end. Summing 32-bit words and folding equals summing 16-bit words,
    // since 2^16 ≡ 1 modulo 2^16 − 1. The loop vectorizes; the octet by
    // octet version was four times slower, and every payload the TUN
    // delivers is summed.
    let mut s = 0u64;
    let mut octs = data.chunks_exact(8);
    for c in &mut octs {
        let w = u64::from_ne_bytes(c.try_into().expect("8 octets"));
        s += (w & 0xffff_ffff) + (w >> 32);
    }
    let mut words = octs.remainder().chunks_exact(2);
    for w in &mut words {
        s += u64::from(u16::from_ne_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        s += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    // Zero stays zero and 0xffff stays 0xffff, so the swap is exact.
    let data = u16::from_be(fold64(s));
    u32::from(fold64(u64::from(acc) + u64::from(data)))
}

/// Fold a sum to 16 bits with end-around carry.
#[inline]
pub fn fold(sum: u32) -> u16 {
    fold64(u64::from(sum))
}

#[inline]
fn fold64(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The checksum of `data` alone (an IPv4 header, an ICMPv4 message): the
/// complement of its folded sum. The checksum field must be zero.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// The sum of the pseudo-header a transport checksum covers: source and
/// destination address, protocol and the transport length (the IPv4 one
/// of RFC 9293 §3.1 or the IPv6 one of RFC 8200 §8.1; same sum). Mixed
/// families, which no real packet has, are summed as IPv4-mapped IPv6
/// addresses.
pub fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> u32 {
    let s = match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => sum(sum(0, &a.octets()), &b.octets()),
        (a, b) => sum(sum(0, &v6_octets(a)), &v6_octets(b)),
    };
    let len = len as u32;
    sum(s + u32::from(protocol) + (len & 0xffff) + (len >> 16), &[])
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The TCP, UDP or ICMPv6 checksum of `segment` (the whole transport
/// header and payload, its checksum field zero) from `src` to `dst`.
pub fn transport(src: IpAddr, dst: IpAddr, protocol: u8, segment: &[u8]) -> u16 {
    !fold(sum(
        pseudo_header(src, dst, protocol, segment.len()),
        segment,
    ))
}

/// Whether `segment`, checksum field included, sums to the right value.
pub fn verify_transport(src: IpAddr, dst: IpAddr, protocol: u8, segment: &[u8]) -> bool {
    // The sum over everything, checksum included, is all ones (-0); a
    // folded sum of anything but zeros is never +0.
    fold(sum(
        pseudo_header(src, dst, protocol, segment.len()),
        segment,
    )) == 0xffff
}

/// Recompute the header checksum of the IPv4 header at the start of `p`
/// (its length from the IHL field, at least 20 octets, at most the buffer).
/// Does nothing to a buffer shorter than 20 octets.
pub fn fill_ipv4_header(p: &mut [u8]) {
    if p.len() < 20 {
        return;
    }
    let hl = (usize::from(p[0] & 0x0f) * 4).clamp(20, p.len());
    p[10..12].fill(0);
    let c = checksum(&p[..hl]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// RFC 1624 eqn. 3: the checksum after words summing to `old` were replaced
/// by words summing to `new` (sums as [`sum`] gives them, over the same
/// 16-bit-aligned span): `HC' = ~(~HC + ~m + m')`.
///
/// Unlike eqn. 2 of RFC 1141 this never yields +0 where a full
/// recomputation would give -0. A checksum that was wrong before stays
/// wrong by the same amount: an update never makes a corrupt segment pass.
#[inline]
pub fn update(checksum: u16, old: u32, new: u32) -> u16 {
    let s = u32::from(!checksum) + u32::from(!fold(old)) + u32::from(fold(new));
    !fold(s)
}

/// [`update`] for one 16-bit word.
#[inline]
pub fn update_u16(checksum: u16, old: u16, new: u16) -> u16 {
    update(checksum, u32::from(old), u32::from(new))
}

/// [`update`] for a 32-bit field that starts on a 16-bit boundary (a
/// sequence or acknowledgment number: the per-segment rewrite of the
/// stack's sequence offset, so no loop).
#[inline]
pub fn update_u32(checksum: u16, old: u32, new: u32) -> u16 {
    // [`update`] with its folds unrolled: the two words of a field sum to
    // at most 0x1fffe, which one end-around carry folds; the three terms
    // of eqn. 3 to at most 0x2fffd, which two fold.
    let words = |x: u32| {
        let s = (x >> 16) + (x & 0xffff);
        (s & 0xffff) + (s >> 16)
    };
    let s = u32::from(!checksum) + (!words(old) & 0xffff) + words(new);
    let s = (s & 0xffff) + (s >> 16);
    !(((s & 0xffff) + (s >> 16)) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Rng, SeededRng};

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
        // Sums of pieces add up, if every piece but the last is even.
        assert_eq!(fold(sum(sum(0, &data[..4]), &data[4..])), 0xddf2);
        assert_eq!(fold(sum(0, &[0xab])), 0xab00);
    }

    /// The sum word by word in network order, as RFC 1071 writes it.
    fn reference_sum(acc: u32, data: &[u8]) -> u32 {
        let mut s = u64::from(acc);
        for w in data.chunks(2) {
            s += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        u32::from(fold64(s))
    }

    #[test]
    fn the_fast_sum_equals_the_sum_word_by_word() {
        let mut rng = SeededRng::new(1071);
        for round in 0..3000 {
            let len = rng.below(if round % 10 == 0 { 70_000 } else { 80 }) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            match round % 5 {
                0 => data.fill(0),
                1 => data.fill(0xff),
                _ => {}
            }
            let acc = match round % 3 {
                0 => 0,
                1 => 0xffff,
                _ => rng.below(0x1_0000) as u32,
            };
            // Any alignment of the slice in memory.
            let skew = round % 8;
            let mut buf = vec![0u8; skew];
            buf.extend_from_slice(&data);
            assert_eq!(
                sum(acc, &buf[skew..]),
                reference_sum(acc, &data),
                "round {round}, {len} octets"
            );
        }
    }

    #[test]
    fn rfc1624_the_negative_zero_case() {
        // RFC 1624 §4: the header sums to 0xcd7a apart from a word 0x5555
        // that becomes 0x3285; the checksum goes 0xdd2f -> 0x0000.
        assert_eq!(update_u16(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn incremental_update_equals_a_full_recomputation() {
        let mut rng = SeededRng::new(1624);
        for round in 0..5000 {
            let len = 4 + 2 * rng.below(40) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if round % 7 == 0 {
                data.iter_mut()
                    .for_each(|b| *b = if rng.below(2) == 0 { 0 } else { 0xff });
            }
            // A word that never changes and is never zero, as the
            // pseudo-header's protocol is in every transport checksum: only
            // an all-zero sum tells -0 from +0.
            data[0] = 6;
            let before = checksum(&data);
            let at = 2 + 2 * rng.below((len as u64 - 2) / 2) as usize;
            let old = u16::from_be_bytes([data[at], data[at + 1]]);
            let new = match round % 3 {
                0 => rng.next_u64() as u16,
                1 => !old,
                _ => 0,
            };
            data[at..at + 2].copy_from_slice(&new.to_be_bytes());
            assert_eq!(
                update_u16(before, old, new),
                checksum(&data),
                "round {round}"
            );
        }
    }

    #[test]
    fn a_32_bit_update_equals_a_full_recomputation() {
        let mut rng = SeededRng::new(1625);
        for round in 0..5000 {
            let mut data: Vec<u8> = (0..24).map(|_| rng.next_u64() as u8).collect();
            data[0] = 6;
            let at = 2 * (1 + rng.below(10) as usize);
            if round % 5 == 0 {
                // Words of all ones and all zeros: where -0 and +0 part.
                for b in data.iter_mut().skip(1) {
                    *b = if rng.below(2) == 0 { 0 } else { 0xff };
                }
            }
            let before = checksum(&data);
            let old = u32::from_be_bytes(data[at..at + 4].try_into().unwrap());
            let new = match round % 4 {
                0 => rng.next_u64() as u32,
                1 => !old,
                2 => [0, 0xffff, 0xffff_0000, u32::MAX][rng.below(4) as usize],
                _ => old.wrapping_add(1 << 16),
            };
            data[at..at + 4].copy_from_slice(&new.to_be_bytes());
            assert_eq!(
                update_u32(before, old, new),
                checksum(&data),
                "round {round}"
            );
        }
    }

    #[test]
    fn a_checksum_verifies_and_one_flipped_bit_does_not() {
        let src: IpAddr = "10.0.0.1".parse().unwrap();
        let dst: IpAddr = "10.0.0.2".parse().unwrap();
        let mut seg = vec![0u8; 20];
        seg[12] = 0x50;
        seg.extend_from_slice(b"payload");
        let c = transport(src, dst, 6, &seg);
        seg[16..18].copy_from_slice(&c.to_be_bytes());
        assert!(verify_transport(src, dst, 6, &seg));
        seg[20] ^= 1;
        assert!(!verify_transport(src, dst, 6, &seg));
    }
}
