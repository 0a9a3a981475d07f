//! Malformed input, table-driven: each packet is dropped and counted under
//! its named counter, nothing panics, and a live connection is untouched.

use ephemera::device::virtual_link::Network;
use ephemera::wire::build::{Ext, Ipv6, Tcp, Udp};
use ephemera::wire::checksum::fill_ipv4_header;
use ephemera::wire::{protocol, TcpFlags};
use ephemera::{Counters, Rng, SeededRng, TcpHandle, TcpState};

use crate::util::*;

fn syn_to_server() -> Vec<u8> {
    tcp(
        sa("10.0.0.1:40000"),
        sa("10.0.0.2:80"),
        1,
        0,
        TcpFlags::SYN,
        1000,
        b"",
    )
}

fn udp(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let (s, d) = (sa(src), sa(dst));
    let dgram = Udp {
        payload,
        ..Default::default()
    }
    .datagram(s, d);
    ip_packet(s.ip(), d.ip(), protocol::UDP, &dgram)
}

/// A SYN from fd00::1 to fd00::2 behind IPv6 extension headers.
fn v6_syn_behind(exts: Vec<Ext>) -> Vec<u8> {
    let (src, dst) = (sa("[fd00::1]:40000"), sa("[fd00::2]:80"));
    let syn = Tcp {
        seq: 1,
        flags: TcpFlags::SYN,
        window: 1000,
        ..Default::default()
    }
    .segment(src, dst);
    Ipv6 {
        exts,
        ..Default::default()
    }
    .packet(src.ip(), dst.ip(), protocol::TCP, &syn)
}

#[allow(clippy::vec_init_then_push)] // one case per line reads best
fn cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let syn = syn_to_server();
    let mut v: Vec<(&'static str, Vec<u8>, &'static str)> = Vec::new();
    v.push(("empty", vec![], "drop_malformed"));
    v.push(("one octet", vec![0x45], "drop_malformed"));
    v.push((
        "truncated IPv4 header",
        syn[..12].to_vec(),
        "drop_malformed",
    ));
    v.push(("truncated TCP header", syn[..30].to_vec(), "drop_malformed"));
    let u = udp("10.0.0.1:5000", "10.0.0.2:53", b"hello");
    v.push(("truncated UDP header", u[..24].to_vec(), "drop_malformed"));
    let mut p = syn.clone();
    p[10] ^= 0x55;
    v.push(("bad IPv4 header checksum", p, "drop_bad_checksum"));
    let mut p = syn.clone();
    p[36] ^= 0x55;
    v.push(("bad TCP checksum", p, "drop_bad_checksum"));
    let mut p = u.clone();
    *p.last_mut().unwrap() ^= 0x55;
    v.push(("bad UDP checksum", p, "drop_bad_checksum"));
    let mut p = syn.clone();
    p[0] = 0x44; // IHL 4 < 5
    fill_ipv4_header(&mut p);
    v.push(("IHL below 5", p, "drop_malformed"));
    let mut p = syn.clone();
    p[0] = 0x4f; // IHL 15: 60 octets, longer than the total length
    p.truncate(40);
    v.push(("IHL beyond the packet", p, "drop_malformed"));
    let mut p = syn.clone();
    p[32] = 0xf0 | (p[32] & 0x0f); // data offset 15: 60-octet TCP header
    v.push(("TCP data offset beyond the segment", p, "drop_malformed"));
    let mut p = syn.clone();
    p[32] = 0x40 | (p[32] & 0x0f); // data offset 4 < 5
    v.push(("TCP data offset below 5", p, "drop_malformed"));
    let mut p = syn.clone();
    p[2..4].copy_from_slice(&1500u16.to_be_bytes());
    fill_ipv4_header(&mut p);
    v.push(("total length beyond the buffer", p, "drop_malformed"));
    let mut p = syn.clone();
    p[2..4].copy_from_slice(&10u16.to_be_bytes());
    fill_ipv4_header(&mut p);
    v.push(("total length below the header", p, "drop_malformed"));
    // IPv4 with a 4-octet option (NOPs + EOL): IHL 6.
    let mut p = syn[..20].to_vec();
    p.extend_from_slice(&[1, 1, 1, 0]);
    p.extend_from_slice(&syn[20..]);
    p[0] = 0x46;
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    fill_ipv4_header(&mut p);
    v.push(("IPv4 options", p, "drop_ip_options"));
    let mut p = syn.clone();
    p[6] = 0x20; // more fragments
    fill_ipv4_header(&mut p);
    v.push(("first fragment", p, "drop_fragment"));
    let mut p = syn.clone();
    p[6] = 0x00;
    p[7] = 0x10; // offset 128 octets, last fragment
    fill_ipv4_header(&mut p);
    v.push(("later fragment", p, "drop_fragment"));
    // IPv6: hop-by-hop, destination options, then a fragment header.
    let padn = vec![1, 4, 0, 0, 0, 0];
    v.push((
        "IPv6 extension chain ending in a fragment header",
        v6_syn_behind(vec![
            Ext::HopByHop(padn.clone()),
            Ext::DestOpts(padn.clone()),
            Ext::Fragment {
                offset: 0,
                more: true,
                id: 7,
            },
        ]),
        "drop_fragment",
    ));
    let mut p = v6_syn_behind(vec![Ext::HopByHop(padn.clone()), Ext::DestOpts(padn)]);
    p.truncate(40 + 8 + 4); // cut inside the second extension header
    v.push(("IPv6 extension chain cut short", p, "drop_malformed"));
    v.push((
        "source port 0",
        tcp(
            sa("10.0.0.1:0"),
            sa("10.0.0.2:80"),
            1,
            0,
            TcpFlags::SYN,
            1000,
            b"",
        ),
        "drop_port_zero",
    ));
    v.push((
        "destination port 0",
        tcp(
            sa("10.0.0.1:4000"),
            sa("10.0.0.2:0"),
            1,
            0,
            TcpFlags::SYN,
            1000,
            b"",
        ),
        "drop_port_zero",
    ));
    v.push((
        "UDP port 0",
        udp("10.0.0.1:0", "10.0.0.2:53", b"x"),
        "drop_port_zero",
    ));
    for (name, src) in [
        ("limited broadcast source", "255.255.255.255:4000"),
        ("subnet broadcast source", "10.0.0.255:4000"),
        ("multicast source", "224.0.0.1:4000"),
        ("unspecified source", "0.0.0.0:4000"),
        ("loopback source", "127.0.0.1:4000"),
    ] {
        v.push((
            name,
            tcp(sa(src), sa("10.0.0.2:80"), 1, 0, TcpFlags::SYN, 1000, b""),
            "drop_martian_source",
        ));
    }
    v.push((
        "land attack (source = destination)",
        tcp(
            sa("10.0.0.2:80"),
            sa("10.0.0.2:80"),
            1,
            0,
            TcpFlags::SYN,
            1000,
            b"",
        ),
        "drop_land",
    ));
    v.push((
        "not for us",
        tcp(
            sa("10.0.0.1:4000"),
            sa("10.0.0.9:80"),
            1,
            0,
            TcpFlags::SYN,
            1000,
            b"",
        ),
        "drop_not_for_us",
    ));
    v
}

fn counter(c: &Counters, name: &str) -> u64 {
    c.iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no counter {name}"))
        .1
}

/// A server with an IPv4 and an IPv6 address, and one established
/// connection carrying data.
fn setup() -> (Network, TcpHandle, TcpHandle) {
    let mut server = config(SERVER, 2);
    server.addrs.push((ip("fd00::2"), 64));
    let mut client = config(CLIENT, 1);
    client.addrs.push((ip("fd00::1"), 64));
    let mut net = pair(Default::default(), client, server);
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let (c, s) = establish(&mut net, l);
    (net, c, s)
}

fn echo_once(net: &mut Network, c: TcpHandle, s: TcpHandle, msg: &[u8]) {
    assert_eq!(net.client().send(c, msg), Ok(msg.len()));
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    net.run_until(10_000, |n| {
        if let Ok(k) = n.server().recv(s, &mut buf) {
            got.extend_from_slice(&buf[..k]);
        }
        got.len() == msg.len()
    })
    .unwrap();
    assert_eq!(got, msg);
}

#[test]
fn each_malformed_packet_is_dropped_under_its_counter() {
    let _guard = SeedGuard("malformed table", 1);
    let (mut net, c, s) = setup();
    echo_once(&mut net, c, s, b"before");
    for (name, packet, want) in cases() {
        let before = net.server().counters().clone();
        let sockets = net.server().socket_count();
        let flows = net.server().port_table().live_flows();
        net.inject_to(Server, &packet);
        let after = net.server().counters().clone();
        assert_eq!(
            counter(&after, want),
            counter(&before, want) + 1,
            "{name}: {want} not counted; {after:?}"
        );
        for (n, v) in after.iter() {
            if n != want && n != "packets_in" {
                assert_eq!(v, counter(&before, n), "{name}: {n} moved too");
            }
        }
        // Nothing sent in reply, nothing created.
        let now = net.now();
        assert_eq!(net.server().poll_transmit(now), None, "{name}");
        assert_eq!(net.server().socket_count(), sockets, "{name}");
        assert_eq!(net.server().port_table().live_flows(), flows, "{name}");
        assert_eq!(
            net.server().tcp_state(s),
            Some(TcpState::Established),
            "{name}"
        );
        net.server().check_invariants().unwrap();
    }
    // The connection still carries data both ways.
    echo_once(&mut net, c, s, b"after every malformed packet");
}

#[test]
fn random_corruption_of_live_traffic_never_panics() {
    let seed = 0xbadu64;
    let _guard = SeedGuard("random corruption", seed);
    let (mut net, c, s) = setup();
    let base = syn_to_server();
    let data = tcp(
        sa("10.0.0.1:40000"),
        sa("10.0.0.2:80"),
        7,
        9,
        TcpFlags::ACK,
        1000,
        b"some payload",
    );
    let mut rng = SeededRng::new(seed);
    for i in 0..50_000u32 {
        let mut p = if i % 2 == 0 {
            base.clone()
        } else {
            data.clone()
        };
        for _ in 0..1 + rng.below(4) {
            let k = rng.below(p.len() as u64) as usize;
            p[k] = rng.next_u64() as u8;
        }
        p.truncate(rng.below(p.len() as u64 + 1) as usize);
        net.inject_to(Server, &p);
        let now = net.now();
        while net.server().poll_transmit(now).is_some() {}
    }
    net.server().check_invariants().unwrap();
    assert_eq!(net.server().tcp_state(s), Some(TcpState::Established));
    echo_once(&mut net, c, s, b"still fine");
}

#[test]
fn a_vouched_packet_skips_only_the_transport_checksum() {
    // A SYN whose TCP checksum field holds something else (as a TUN's
    // receive offload may leave it): dropped as it is, taken when the
    // device vouches for it.
    let mut syn = syn_to_server();
    syn[36..38].copy_from_slice(&[0xbe, 0xef]);
    let mut server = ephemera::Stack::new(config(SERVER, 3), ephemera::Instant::ZERO).unwrap();
    let _listener = server.listen(sa("10.0.0.2:80"), None).unwrap();
    let t = ephemera::Instant::from_millis(1);
    server.handle_packet(t, &syn);
    assert_eq!(counter(server.counters(), "drop_bad_checksum"), 1);
    assert_eq!(server.poll_transmit(t), None);
    server.handle_vouched_packet(t, &syn);
    let answer = server.poll_transmit(t).expect("a SYN-ACK");
    assert!(Seg::parse(&answer).is_some_and(|s| s.flags == TcpFlags::SYN | TcpFlags::ACK));
    // A bad IPv4 header checksum is not the device's to vouch for.
    let mut bad_ip = syn_to_server();
    bad_ip[10] ^= 0xff;
    server.handle_vouched_packet(t, &bad_ip);
    assert_eq!(counter(server.counters(), "drop_bad_checksum"), 2);
}

#[test]
fn with_tcp_checksum_offload_the_stack_leaves_the_field_zero() {
    for offload in [false, true] {
        let mut cfg = config(SERVER, 4);
        cfg.tcp_checksum_offload = offload;
        let mut server = ephemera::Stack::new(cfg, ephemera::Instant::ZERO).unwrap();
        let _listener = server.listen(sa("10.0.0.2:80"), None).unwrap();
        let t = ephemera::Instant::from_millis(1);
        server.handle_packet(t, &syn_to_server());
        let mut answer = server.poll_transmit(t).expect("a SYN-ACK");
        let mut view = ephemera::wire::TcpView::parse(&mut answer[..]).unwrap();
        assert_eq!(view.flags(), TcpFlags::SYN | TcpFlags::ACK);
        if offload {
            assert_eq!(view.checksum(), 0);
            view.fill_checksum();
        }
        assert!(view.verify_checksum(), "offload={offload}");
    }
}
