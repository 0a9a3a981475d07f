//! TCP segmentation offload (`StackConfig::tcp_segmentation_offload`):
//! what the stack sends, cut as the kernel cuts it, is byte for byte what
//! it sends without the offload.

use std::net::{IpAddr, SocketAddr};

use crate::device::gso;
use crate::wire::checksum;
use crate::wire::TcpView;
use crate::{CongestionControl, Duration, Instant, Stack, StackConfig, Transmit};

/// One download from a server stack to a client stack over a link with
/// no delay, driven by hand: what the server's device put on the wire
/// (cut as a NIC cuts), the payload and segment size of each packet the
/// server handed out, and the payload octets of the server's first
/// flight.
struct Run {
    wire: Vec<Vec<u8>>,
    handed: Vec<(usize, Option<u16>)>,
    first_flight: usize,
    tso_packets: u64,
}

const LEN: usize = 3_000_000;

fn payload_len(p: &[u8]) -> usize {
    TcpView::parse(p).map_or(0, |v| v.payload().len())
}

fn download(v6: bool, tso: bool, cc: CongestionControl) -> Run {
    download_recycling(v6, tso, cc, false)
}

/// [`download`], and with `recycle` every packet's buffer given back to
/// the server (`Stack::recycle`) filled with junk once its copy is sent.
fn download_recycling(v6: bool, tso: bool, cc: CongestionControl, recycle: bool) -> Run {
    let (client_ip, server_ip, prefix): (IpAddr, IpAddr, u8) = if v6 {
        ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), 64)
    } else {
        ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), 24)
    };
    let config = |ip: IpAddr, seed: u64, tso: bool| StackConfig {
        addrs: vec![(ip, prefix)],
        seed: Some(seed),
        tcp_rx_buffer: 1 << 20,
        tcp_tx_buffer: 1 << 20,
        congestion_control: cc,
        tcp_segmentation_offload: tso,
        ..StackConfig::default()
    };
    let mut now = Instant::ZERO;
    let mut client = Stack::new(config(client_ip, 1, false), now).unwrap();
    let mut server = Stack::new(config(server_ip, 2, tso), now).unwrap();
    let at = SocketAddr::new(server_ip, 80);
    let l = server.listen(at, None).unwrap();
    let c = client.connect(at).unwrap();
    let data: Vec<u8> = (0..LEN).map(|i| (i * 7 + i / 991) as u8).collect();
    let (mut s, mut sent, mut closed) = (None, 0, false);
    let mut got = Vec::with_capacity(LEN);
    let mut run = Run {
        wire: Vec::new(),
        handed: Vec::new(),
        first_flight: 0,
        tso_packets: 0,
    };
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..200_000 {
        if s.is_none() {
            s = server.accept(l).ok();
        }
        if let Some(s) = s {
            while sent < LEN {
                match server.send(s, &data[sent..]) {
                    Ok(n) if n > 0 => sent += n,
                    _ => break,
                }
            }
            if sent == LEN && !closed {
                server.close(s);
                closed = true;
            }
        }
        let mut flight = 0;
        while let Some(mut t) = server.poll_transmit_offload(now) {
            if recycle {
                let copy = t.packet.clone();
                let mut spent = std::mem::replace(&mut t.packet, copy);
                spent.fill(0xa5);
                server.recycle(spent);
            }
            let Transmit {
                ref packet,
                gso_size,
            } = t;
            run.handed
                .push((payload_len(packet), gso_size.map(|g| g.get())));
            gso::cut_like_a_nic(t, tso, &mut |p| {
                flight += payload_len(&p);
                client.handle_packet(now, &p);
                run.wire.push(p);
            });
        }
        if run.first_flight == 0 {
            run.first_flight = flight;
        }
        while let Some(p) = client.poll_transmit(now) {
            server.handle_packet(now, &p);
        }
        while let Ok(n) = client.recv(c, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        if got.len() == LEN && closed && server.poll_at().is_none_or(|t| t > now) {
            break;
        }
        now += Duration::from_millis(1);
    }
    assert!(
        got == data,
        "v6={v6} tso={tso}: {} of {LEN} octets",
        got.len()
    );
    assert!(server.counters().check_accounting().is_ok());
    run.tso_packets = server.counters().tso_packets_out;
    run
}

/// Packets with their IPv4 identification zeroed: smoltcp sends 0 in
/// every (DF) packet, a cut numbers the segments from there (RFC 6864:
/// no one reads it).
fn without_ids(mut ps: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    for p in &mut ps {
        if p[0] >> 4 == 4 {
            p[4..6].copy_from_slice(&[0, 0]);
            checksum::fill_ipv4_header(&mut p[..20]);
        }
    }
    ps
}

#[test]
fn segments_cut_from_offloaded_packets_are_those_sent_without_offload() {
    for cc in [CongestionControl::Cubic, CongestionControl::None] {
        for v6 in [false, true] {
            let off = download(v6, false, cc);
            let on = download(v6, true, cc);
            let what = format!("{cc:?} v6={v6}");
            assert_eq!(off.tso_packets, 0, "{what}");
            assert!(off.handed.iter().all(|&(_, g)| g.is_none()), "{what}");
            if v6 {
                // smoltcp 0.14 cannot segment IPv6 (see `link::Tso`).
                assert_eq!(on.tso_packets, 0, "{what}");
            } else {
                // Most of the payload left as super-packets, each cut at
                // the MSS (1500 - 40), only ever larger than one segment.
                let mss = 1460;
                let supers: Vec<_> = on.handed.iter().filter(|h| h.1.is_some()).collect();
                assert!(supers.len() as u64 == on.tso_packets, "{what}");
                let in_supers: usize = supers.iter().map(|h| h.0).sum();
                assert!(
                    in_supers > LEN * 9 / 10,
                    "{what}: {in_supers} in super-packets"
                );
                assert!(
                    supers
                        .iter()
                        .all(|&&(len, g)| g == Some(mss as u16) && len > mss),
                    "{what}"
                );
                // Sized to whole segments: at most one short one a packet.
                assert!(supers.iter().any(|h| h.0 == 44 * mss), "{what}");
                assert!(on.handed.iter().all(|h| h.0 <= 44 * mss), "{what}");
                assert!(on.handed.len() * 10 < off.handed.len(), "{what}");
            }
            // The same segments on the wire, octet for octet (FIN and PSH
            // only where the stack without offload put them).
            assert_eq!(on.wire.len(), off.wire.len(), "{what}: segments");
            let (a, b) = (without_ids(off.wire), without_ids(on.wire));
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!(x == y, "{what}: segment {i} differs");
            }
            // The congestion window bounds a packet as it bounds a
            // segment: the first flight is no larger.
            assert_eq!(on.first_flight, off.first_flight, "{what}");
            if cc == CongestionControl::Cubic {
                assert!(off.first_flight < 1 << 20, "{what}: {}", off.first_flight);
            }
        }
    }
}

#[test]
fn packets_built_in_recycled_buffers_are_those_built_in_fresh_ones() {
    for (v6, tso) in [(false, true), (true, false)] {
        let fresh = download(v6, tso, CongestionControl::Cubic);
        let reused = download_recycling(v6, tso, CongestionControl::Cubic, true);
        assert_eq!(reused.handed, fresh.handed, "v6={v6} tso={tso}");
        assert!(reused.wire == fresh.wire, "v6={v6} tso={tso}");
    }
}

#[test]
fn a_stack_keeps_a_bounded_number_of_buffers_and_counts_the_rest() {
    let config = StackConfig {
        addrs: vec![("10.0.0.1".parse().unwrap(), 24)],
        seed: Some(1),
        ..StackConfig::default()
    };
    let mut stack = Stack::new(config, Instant::ZERO).unwrap();
    for _ in 0..crate::SPARE_TX_BUFFERS + 5 {
        stack.recycle(vec![0xa5; 100]);
    }
    stack.recycle(vec![0; 1 << 20]);
    assert_eq!(stack.counters().tx_buffers_freed, 6);
    assert!(stack.counters().check_accounting().is_ok());
}
