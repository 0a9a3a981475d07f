//! Hostile segments at live connections (RFC 5961), ICMP errors, and the
//! unpredictability of ephemeral ports (RFC 6056).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use ephemera::device::virtual_link::Network;
use ephemera::port_table::ShardId;
use ephemera::wire::build::Icmp;
use ephemera::wire::TcpFlags;
use ephemera::{
    ConnError, Duration, Instant, ListenerHandle, PortTableConfig, Protocol, RecvError, Rng,
    SeededRng, SendError, StackConfig, TcpHandle, TcpState,
};

use crate::util::*;

/// Client, server, two established connections, and a tap remembering the
/// last segment each 4-tuple carried from the client.
struct World {
    net: Network,
    listener: ListenerHandle,
    last: Rc<RefCell<HashMap<(SocketAddr, SocketAddr), Seg>>>,
}

fn world(seed: u64) -> (World, Vec<(TcpHandle, TcpHandle)>) {
    let mut net = default_pair(seed);
    let last = Rc::new(RefCell::new(HashMap::new()));
    {
        let last = last.clone();
        tap_segments(&mut net, move |_, s| {
            last.borrow_mut().insert((s.src, s.dst), s);
        });
    }
    let listener = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let mut w = World {
        net,
        listener,
        last,
    };
    let conns = (0..2).map(|_| open(&mut w)).collect();
    (w, conns)
}

fn open(w: &mut World) -> (TcpHandle, TcpHandle) {
    let (c, s) = establish(&mut w.net, w.listener);
    exchange(w, c, s);
    (c, s)
}

/// Send a line each way and let the link go quiet.
fn exchange(w: &mut World, c: TcpHandle, s: TcpHandle) {
    let net = &mut w.net;
    assert_eq!(net.client().send(c, b"ping"), Ok(4));
    assert_eq!(net.server().send(s, b"pong"), Ok(4));
    let mut buf = [0u8; 16];
    let (mut a, mut b) = (0, 0);
    net.run_until(10_000, |n| {
        a += n.server().recv(s, &mut buf).unwrap_or(0);
        b += n.client().recv(c, &mut buf).unwrap_or(0);
        a == 4 && b == 4
    })
    .unwrap();
    net.run_for(Duration::from_millis(100), 10_000).unwrap();
}

/// The client's side of connection `c` as the server sees it: (client
/// address, RCV.NXT of the server, SND.NXT of the server).
fn seqs(w: &mut World, c: TcpHandle) -> (SocketAddr, u32, u32) {
    let local = w.net.client().local_addr(c).unwrap();
    let s = w.last.borrow()[&(local, sa("10.0.0.2:80"))];
    (local, s.seq.wrapping_add(s.len), s.ack)
}

/// Inject at the server and collect what it sends back at once.
fn poke(w: &mut World, p: &[u8]) -> Vec<Seg> {
    w.net.inject_to(Server, p);
    let now = w.net.now();
    let mut out = Vec::new();
    while let Some(p) = w.net.server().poll_transmit(now) {
        out.extend(Seg::parse(&p));
    }
    out
}

#[test]
fn rfc5961_blind_segments_do_not_break_connections() {
    let seed = 0x5961;
    let _guard = SeedGuard("rfc5961", seed);
    let (mut w, conns) = world(seed);
    let (c, s) = conns[0];
    let (c2, s2) = conns[1];
    let server = sa("10.0.0.2:80");
    let (client, rcv_nxt, snd_nxt) = seqs(&mut w, c);

    // Out-of-window RST: silently dropped (RFC 5961 §3.2).
    for off in [1u32 << 20, 1 << 30, 3 << 30] {
        let r = poke(
            &mut w,
            &tcp(
                client,
                server,
                rcv_nxt.wrapping_add(off),
                0,
                TcpFlags::RST,
                0,
                b"",
            ),
        );
        assert!(r.is_empty(), "out-of-window RST answered: {r:?}");
        assert_eq!(w.net.server().tcp_state(s), Some(TcpState::Established));
    }

    // An ACK for data never sent: challenge ACK <SEQ=SND.NXT><ACK=RCV.NXT>
    // (RFC 5961 §5.2), and the connection stays.
    let r = poke(
        &mut w,
        &tcp(
            client,
            server,
            rcv_nxt,
            snd_nxt.wrapping_add(1 << 20),
            TcpFlags::ACK,
            1000,
            b"",
        ),
    );
    assert_eq!(r.len(), 1, "no challenge ACK: {r:?}");
    assert!(r[0].flags.ack() && !r[0].flags.rst());
    assert_eq!((r[0].seq, r[0].ack), (snd_nxt, rcv_nxt));
    assert_eq!(w.net.server().tcp_state(s), Some(TcpState::Established));

    // Out-of-window data: answered with an ACK carrying the real numbers,
    // never accepted.
    let r = poke(
        &mut w,
        &tcp(
            client,
            server,
            rcv_nxt.wrapping_add(1 << 30),
            snd_nxt,
            TcpFlags::ACK,
            1000,
            b"forged",
        ),
    );
    assert!(
        r.iter().all(|x| x.ack == rcv_nxt && !x.flags.rst()),
        "{r:?}"
    );
    let mut buf = [0u8; 16];
    assert_eq!(w.net.server().recv(s, &mut buf), Err(RecvError::WouldBlock));

    // A SYN on the synchronized 4-tuple never resets it or opens another;
    // the first gets a challenge ACK <SEQ=SND.NXT><ACK=RCV.NXT> (RFC 5961
    // §4), the next within a second nothing (rate limit).
    let sockets = w.net.server().socket_count();
    for (i, seq) in [rcv_nxt, rcv_nxt.wrapping_add(1 << 30)]
        .into_iter()
        .enumerate()
    {
        let r = poke(
            &mut w,
            &tcp(client, server, seq, 0, TcpFlags::SYN, 1000, b""),
        );
        if i == 0 {
            assert_eq!(r.len(), 1, "no challenge ACK for a SYN: {r:?}");
            assert!(r[0].flags.ack() && !r[0].flags.syn() && !r[0].flags.rst());
            assert_eq!((r[0].seq, r[0].ack), (snd_nxt, rcv_nxt));
        } else {
            assert!(r.is_empty(), "challenge ACKs not rate-limited: {r:?}");
        }
        assert_eq!(w.net.server().tcp_state(s), Some(TcpState::Established));
        assert_eq!(w.net.server().socket_count(), sockets);
    }
    assert_eq!(w.net.server().counters().tcp_challenge_acks, 2);

    // A RST inside the window but not at RCV.NXT: challenge ACK, no reset
    // (RFC 5961 §3.2). On the other connection, which was not challenged yet.
    let (client2, rcv_nxt2, snd_nxt2) = seqs(&mut w, c2);
    let r = poke(
        &mut w,
        &tcp(
            client2,
            server,
            rcv_nxt2.wrapping_add(100),
            0,
            TcpFlags::RST,
            0,
            b"",
        ),
    );
    assert_eq!(r.len(), 1, "no challenge ACK for an inexact RST: {r:?}");
    assert!(r[0].flags.ack() && !r[0].flags.rst());
    assert_eq!((r[0].seq, r[0].ack), (snd_nxt2, rcv_nxt2));
    assert_eq!(w.net.server().tcp_state(s2), Some(TcpState::Established));
    assert_eq!(w.net.server().counters().tcp_challenge_acks, 3);
    assert_eq!(w.net.server().counters().drop_rst_out_of_window, 3);

    // Both connections still work.
    exchange(&mut w, c, s);
    exchange(&mut w, c2, s2);

    // An in-window RST closes exactly its connection.
    let (client, rcv_nxt, _) = seqs(&mut w, c);
    poke(
        &mut w,
        &tcp(client, server, rcv_nxt, 0, TcpFlags::RST, 0, b""),
    );
    assert_eq!(w.net.server().tcp_error(s), Some(ConnError::Reset));
    assert_eq!(w.net.server().counters().tcp_reset_by_peer, 1);
    exchange(&mut w, c2, s2);
    w.net.server().check_invariants().unwrap();
}

#[test]
fn rst_at_a_listener_never_removes_it() {
    let seed = 0x1157;
    let _guard = SeedGuard("rst at listener", seed);
    let (mut w, _) = world(seed);
    let server = sa("10.0.0.2:80");
    let mut rng = SeededRng::new(seed);
    for i in 0..1000u32 {
        let src = SocketAddr::new(ip("10.0.0.1"), 1024 + (rng.below(60_000) as u16));
        let flags = if i % 2 == 0 {
            TcpFlags::RST
        } else {
            TcpFlags::RST | TcpFlags::ACK
        };
        let r = poke(
            &mut w,
            &tcp(
                src,
                server,
                rng.next_u64() as u32,
                rng.next_u64() as u32,
                flags,
                0,
                b"",
            ),
        );
        assert!(r.is_empty(), "a RST was answered: {r:?}");
    }
    assert!(w.net.server().listener_addr(w.listener).is_some());
    let (c, s) = open(&mut w);
    exchange(&mut w, c, s);
    w.net.server().check_invariants().unwrap();
}

/// ICMP destination unreachable codes (RFC 792).
const HOST_UNREACHABLE: u8 = 1;
const PORT_UNREACHABLE: u8 = 3;

/// A destination unreachable from the server to the client, quoting the IP
/// header and first eight TCP octets of `quoted`.
fn icmp_unreachable(code: u8, quoted: &[u8]) -> Vec<u8> {
    Icmp {
        ty: 3,
        code,
        body: &quoted[..28],
        ..Default::default()
    }
    .packet(ip(SERVER), ip(CLIENT))
}

#[test]
fn icmp_errors_reach_the_connection_they_name() {
    let seed = 0x1c3f;
    let _guard = SeedGuard("icmp", seed);
    let (mut w, conns) = world(seed);
    // A connection to a port that will never answer (nobody delivers).
    let c = w.net.client().connect(sa("10.0.0.2:81")).unwrap();
    let local = w.net.client().local_addr(c).unwrap();
    let now = w.net.now();
    let syn = w.net.client().poll_transmit(now).unwrap();
    assert!(Seg::parse(&syn).unwrap().flags.syn());
    // A soft error (host unreachable) is counted but not fatal.
    w.net
        .inject_to(Client, &icmp_unreachable(HOST_UNREACHABLE, &syn));
    assert_eq!(w.net.client().tcp_state(c), Some(TcpState::SynSent));
    // Port unreachable (hard) refuses it, and only it.
    w.net
        .inject_to(Client, &icmp_unreachable(PORT_UNREACHABLE, &syn));
    assert_eq!(w.net.client().tcp_error(c), Some(ConnError::Refused));
    assert_eq!(
        w.net.client().send(c, b"x"),
        Err(SendError::ConnectionRefused)
    );
    assert_eq!(w.net.client().counters().icmp_errors, 2);
    assert_eq!(w.net.client().counters().tcp_connect_refused, 1);
    // Its port is free again; the established connections never noticed.
    assert_eq!(
        w.net
            .client()
            .port_table()
            .ports_in_use(Protocol::Tcp, local.ip(), sa("10.0.0.2:81")),
        0
    );
    for (c, s) in conns {
        // An error quoting an established flow is soft: it survives.
        let key_pkt = tcp(
            w.net.client().local_addr(c).unwrap(),
            sa("10.0.0.2:80"),
            1,
            1,
            TcpFlags::ACK,
            0,
            b"",
        );
        w.net
            .inject_to(Client, &icmp_unreachable(HOST_UNREACHABLE, &key_pkt));
        exchange(&mut w, c, s);
    }
    w.net.client().check_invariants().unwrap();
}

// ---- RFC 6056: ephemeral ports ----------------------------------------

/// The local ports of `n` rounds of connections from a client that is
/// `shard`, one per destination per round, each aborted at once; as indices
/// into the shard's share of the range (the port minus 49152 for one
/// shard).
fn ports(stack_seed: u64, shard: ShardId, dests: &[SocketAddr], n: usize) -> Vec<Vec<u32>> {
    let mut net = pair(
        Default::default(),
        StackConfig {
            tcp_rx_buffer: 64,
            tcp_tx_buffer: 64,
            ports: PortTableConfig {
                shard,
                ..Default::default()
            },
            ..config(CLIENT, stack_seed)
        },
        config(SERVER, 99),
    );
    let st = net.client();
    let share = st.port_table().share();
    let mut out = vec![Vec::new(); dests.len()];
    for _ in 0..n {
        for (i, d) in dests.iter().enumerate() {
            let c = st.connect(*d).unwrap();
            let port = st.local_addr(c).unwrap().port();
            out[i].push(share.index(port).expect("a port of the client's share"));
            st.abort(c);
        }
        while st.poll_transmit(Instant::ZERO).is_some() {}
    }
    out
}

const DESTS: [&str; 3] = ["10.0.0.2:80", "10.0.0.2:443", "10.0.0.3:80"];

#[test]
fn ephemeral_ports_are_unpredictable() {
    let seed = 0x6056;
    let _guard = SeedGuard("ephemeral ports", seed);
    let dests = DESTS.map(sa);
    let seqs = ports(seed, ShardId::SOLE, &dests, 8192);
    assert_ports_unpredictable("one shard", &dests, &seqs, 16384);
    // And a different secret gives a different sequence to the same place.
    let other = ports(seed + 1, ShardId::SOLE, &dests[..1], 64);
    assert_ne!(other[0], seqs[0][..64]);
}

/// A stack that is shard i of 4 draws only ports of its share, and within
/// the share passes the same checks as one shard over the whole range.
#[test]
fn ephemeral_ports_are_unpredictable_within_each_shard() {
    let dests = DESTS.map(sa);
    for index in 0..4 {
        let seed = 0x6056_0000 + u64::from(index);
        let _guard = SeedGuard("sharded ephemeral ports", seed);
        let shard = ShardId { index, count: 4 };
        let seqs = ports(seed, shard, &dests, 4096);
        assert_ports_unpredictable(&format!("shard {index} of 4"), &dests, &seqs, 4096);
    }
}
