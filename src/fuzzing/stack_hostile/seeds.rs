//! The seed corpus of `stack_hostile`: raw-mode inputs with real packets
//! for the fixture's own 4-tuples.

use super::{encode_raw, record, sa, Fixture, Peer};
use crate::port_table::FlowKey;
use crate::wire::build::{tcp_options, Ext, Icmp, Ipv4, Ipv6, Tcp, TcpOpt, Udp};
use crate::wire::{protocol, TcpFlags};

/// The seed corpus: named raw-mode inputs with real packets for the
/// fixture's own 4-tuples (SYNs, data, RST, FIN, TIME-WAIT, fragments,
/// IPv6 extension headers, UDP, ICMP). Written by `examples/gen_corpus.rs`.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    use record::{ADVANCE_MS, DRAIN_APP, PACKET, PACKET_FIXED};
    let mut fx = Fixture::new();
    let peer_of = |fx: &mut Fixture, i: usize| {
        let h = fx.conns[i];
        let remote = fx.stack().peer_addr(h).expect("fixture connection");
        *fx.peers
            .iter()
            .find(|p| p.remote == remote)
            .expect("tracked")
    };
    let est4 = peer_of(&mut fx, 0);
    let close_wait = peer_of(&mut fx, 1);
    let est6 = peer_of(&mut fx, 2);
    let find = |remote: &str| *fx.peers.iter().find(|p| p.remote == sa(remote)).unwrap();
    let half4 = find("10.0.0.7:40000");
    let syn_sent = find("10.0.0.9:9999");
    let tw: Vec<(FlowKey, _)> = fx.stack().port_table().time_wait_entries().collect();
    let tw = *fx
        .peers
        .iter()
        .find(|p| p.local == tw[0].0.local && p.remote == tw[0].0.remote)
        .unwrap();

    let seg = |p: &Peer, flags: TcpFlags, payload: &[u8], options: &[u8]| {
        Tcp {
            seq: p.rcv_nxt,
            ack: p.snd_nxt,
            flags,
            window: 8192,
            options,
            payload,
            ..Default::default()
        }
        .packet(p.remote, p.local)
    };
    let syn_opts = tcp_options(&[
        TcpOpt::Mss(1460),
        TcpOpt::Nop,
        TcpOpt::WindowScale(7),
        TcpOpt::SackPermitted,
        TcpOpt::Timestamp { tsval: 1, tsecr: 0 },
    ]);
    let new4 = Peer {
        local: sa("10.0.0.2:80"),
        remote: sa("10.0.0.50:33000"),
        rcv_nxt: 5000,
        snd_nxt: 0,
    };
    let new6 = Peer {
        local: sa("[fd00::2]:80"),
        remote: sa("[fd00::50]:33001"),
        rcv_nxt: 9000,
        snd_nxt: 0,
    };
    let syn4 = seg(&new4, TcpFlags::SYN, b"", &syn_opts);
    let syn6_l4 = Tcp {
        seq: 9000,
        flags: TcpFlags::SYN,
        window: 8192,
        options: &syn_opts,
        ..Default::default()
    }
    .segment(new6.remote, new6.local);
    let v6 = |p: &Peer, exts: Vec<Ext>, l4: &[u8]| {
        Ipv6 {
            exts,
            ..Default::default()
        }
        .packet(p.remote.ip(), p.local.ip(), protocol::TCP, l4)
    };
    let syn6_ext = v6(
        &new6,
        vec![
            Ext::HopByHop(vec![1, 2, 0, 0]),
            Ext::DestOpts(vec![0x1e, 1, 0]),
        ],
        &syn6_l4,
    );
    let frag4 = {
        let t = seg(&est4, TcpFlags::ACK | TcpFlags::PSH, b"fragmented", &[]);
        Ipv4 {
            more_fragments: true,
            ..Default::default()
        }
        .packet(est4.remote.ip(), est4.local.ip(), protocol::TCP, &t[20..])
    };
    let frag6 = {
        let t = seg(&est6, TcpFlags::ACK, b"frag", &[]);
        let frag = Ext::Fragment {
            offset: 0,
            more: true,
            id: 1,
        };
        v6(&est6, vec![frag], &t[40..])
    };
    let routing6 = {
        let t = seg(&est6, TcpFlags::ACK | TcpFlags::PSH, b"routed", &[]);
        let routing = Ext::Routing {
            ty: 4,
            segments_left: 0,
        };
        v6(&est6, vec![routing], &t[40..])
    };
    let udp = |from: &str, to: &str, payload: &[u8]| {
        Udp {
            payload,
            ..Default::default()
        }
        .packet(sa(from), sa(to))
    };
    let icmp_unreach = {
        let quoted = Tcp {
            seq: syn_sent.snd_nxt.wrapping_sub(1),
            flags: TcpFlags::SYN,
            ..Default::default()
        }
        .packet(syn_sent.local, syn_sent.remote);
        // Destination unreachable, port unreachable, quoting the SYN's
        // IP header and first eight TCP octets.
        Icmp {
            ty: 3,
            code: 3,
            body: &quoted[..28],
            ..Default::default()
        }
        .packet(syn_sent.remote.ip(), syn_sent.local.ip())
    };
    let ms = |n: u16| (ADVANCE_MS, n.to_be_bytes().to_vec());
    let mut mutated = seg(&est4, TcpFlags::ACK | TcpFlags::PSH, b"mutate me", &[]);
    mutated[33] ^= 0x41; // flags byte, checksums fixed on replay

    let raw = |recs: Vec<(u8, Vec<u8>)>| encode_raw(&recs);
    let mut out = vec![
        ("syn-v4-options", raw(vec![(PACKET, syn4.clone())])),
        ("syn-v6-ext-headers", raw(vec![(PACKET, syn6_ext)])),
        (
            "data-established-v4",
            raw(vec![
                (
                    PACKET,
                    seg(
                        &est4,
                        TcpFlags::ACK | TcpFlags::PSH,
                        b"GET / HTTP/1.1\r\n\r\n",
                        &[],
                    ),
                ),
                ms(50),
                (DRAIN_APP, vec![]),
            ]),
        ),
        (
            "data-established-v6",
            raw(vec![(PACKET, seg(&est6, TcpFlags::ACK, &[7; 200], &[]))]),
        ),
        (
            "rst-established",
            raw(vec![(PACKET, seg(&est4, TcpFlags::RST, b"", &[]))]),
        ),
        (
            "fin-close-wait",
            raw(vec![
                (
                    PACKET,
                    seg(&close_wait, TcpFlags::FIN | TcpFlags::ACK, b"", &[]),
                ),
                ms(100),
            ]),
        ),
        (
            "fin-time-wait",
            raw(vec![(
                PACKET,
                seg(&tw, TcpFlags::FIN | TcpFlags::ACK, b"", &[]),
            )]),
        ),
        (
            "ack-completes-half-open",
            raw(vec![
                (PACKET, seg(&half4, TcpFlags::ACK, b"", &[])),
                (DRAIN_APP, vec![]),
            ]),
        ),
        ("fragment-v4", raw(vec![(PACKET, frag4)])),
        ("fragment-v6", raw(vec![(PACKET, frag6)])),
        ("routing-header-v6", raw(vec![(PACKET, routing6)])),
        (
            "udp",
            raw(vec![
                (PACKET, udp("10.0.0.1:5000", "10.0.0.2:53", b"query")),
                (PACKET, udp("[fd00::1]:5000", "[fd00::2]:5353", b"mdns")),
                (PACKET, udp("10.0.0.1:5000", "10.0.0.2:9", b"closed port")),
                (DRAIN_APP, vec![]),
            ]),
        ),
        ("icmp-port-unreachable", raw(vec![(PACKET, icmp_unreach)])),
        (
            "mutated-checksums-fixed",
            raw(vec![(PACKET_FIXED, mutated)]),
        ),
        (
            "syn-then-timeouts",
            raw(vec![(PACKET, syn4), ms(1000), ms(30000), ms(65535)]),
        ),
    ];
    // Structured inputs: arbitrary bytes decode to step sequences.
    let mut rng = crate::SeededRng::new(5);
    for i in 0..3 {
        let bytes = (0..64 + 64 * i)
            .map(|_| crate::Rng::next_u64(&mut rng) as u8)
            .collect();
        out.push((["structured-a", "structured-b", "structured-c"][i], bytes));
    }
    out.into_iter().map(|(n, b)| (n.to_string(), b)).collect()
}
