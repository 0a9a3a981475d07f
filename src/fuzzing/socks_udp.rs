//! Fuzz target `socks_udp`: the SOCKS5 UDP request header parser
//! ([`crate::wire::socks::parse_udp`]) on any bytes.
//!
//! Properties: it never panics; what it accepts splits the datagram
//! exactly into a header and the payload that follows it; a header of an
//! IP address with FRAG 0 and RSV 0 written again by
//! [`write_udp_header`](crate::wire::socks::write_udp_header) is the same
//! octets; and it accepts no datagram shorter than the shortest header
//! (IPv4: ten octets).

use crate::wire::socks::{parse_udp, write_udp_header, UdpAddr, ATYP_DOMAIN};

/// Run the target on one input.
pub fn run(data: &[u8]) {
    let Ok((h, payload)) = parse_udp(data) else {
        return;
    };
    assert!(data.len() >= 10 || (data.len() >= 7 && data[3] == ATYP_DOMAIN));
    let header_len = data.len() - payload.len();
    assert!(data.ends_with(payload));
    assert_eq!(h.frag, data[2]);
    match h.addr {
        UdpAddr::Ip(addr) => {
            let mut again = Vec::new();
            write_udp_header(&mut again, addr);
            assert_eq!(again.len(), header_len);
            if data[..3] == [0, 0, 0] {
                assert_eq!(again, data[..header_len]);
            }
        }
        UdpAddr::Domain(name, _) => {
            assert_eq!(header_len, 4 + 1 + name.len() + 2);
            assert_eq!(name.len(), usize::from(data[4]));
        }
    }
}

/// Seeds: a datagram of each address type, a fragment, cut-short and
/// unknown-type ones.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut v4 = Vec::new();
    write_udp_header(&mut v4, "10.7.0.1:7".parse().unwrap());
    v4.extend_from_slice(b"ping");
    let mut v6 = Vec::new();
    write_udp_header(&mut v6, "[fd00:7::1]:53".parse().unwrap());
    v6.extend_from_slice(&[0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    let mut name = vec![0, 0, 0, ATYP_DOMAIN, 8];
    name.extend_from_slice(b"web.test");
    name.extend_from_slice(&53u16.to_be_bytes());
    name.extend_from_slice(b"query");
    let mut frag = v4.clone();
    frag[2] = 0x81;
    vec![
        ("ipv4".into(), v4.clone()),
        ("ipv6".into(), v6),
        ("domain".into(), name),
        ("fragment".into(), frag),
        ("truncated".into(), v4[..8].to_vec()),
        ("unknown-type".into(), vec![0, 0, 0, 9, 1, 2, 3, 4, 0, 7]),
    ]
}
