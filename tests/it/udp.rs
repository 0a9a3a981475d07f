//! Connected UDP over the virtual link: RFC 6056 ports per destination,
//! 4-tuples unique, demultiplexing from the most specific socket to the
//! least, ICMP refusal reported to the socket that sent, and bounded
//! receive queues.

use std::collections::HashSet;
use std::net::SocketAddr;

use ephemera::device::virtual_link::Network;
use ephemera::wire::build::{Icmp, Udp};
use ephemera::{
    ConnectError, Event, Instant, PortTableConfig, Protocol, RecvError, SendError, StackConfig,
    UdpHandle,
};

use crate::util::*;

/// Run until `u` on stack `n` has a datagram (or an error other than
/// `WouldBlock`): what it received and from whom.
fn recv(net: &mut Network, n: Node, u: UdpHandle) -> Result<(Vec<u8>, SocketAddr), RecvError> {
    let mut buf = [0u8; 2048];
    let mut got = Err(RecvError::WouldBlock);
    net.run_until(1000, |net| {
        got = net.node(n).udp_recv_from(u, &mut buf);
        got != Err(RecvError::WouldBlock)
    })
    .unwrap_or_else(|e| panic!("nothing for {u:?} on {n:?}: {e:?}"));
    got.map(|(k, from)| (buf[..k].to_vec(), from))
}

/// A stack at 10.0.0.1 whose ephemeral range is `range`.
fn with_range(range: std::ops::RangeInclusive<u16>, seed: u64) -> StackConfig {
    StackConfig {
        ports: PortTableConfig {
            ephemeral: range,
            ..Default::default()
        },
        ..config(CLIENT, seed)
    }
}

#[test]
fn connected_ports_are_chosen_per_destination_and_never_shared() {
    let mut net = pair(
        Default::default(),
        with_range(40000..=40063, 1),
        config(SERVER, 2),
    );
    let st = net.client();
    // A bind inside the range: connections never take its port.
    let held = st.udp_bind(sa("0.0.0.0:40007")).unwrap();
    let dns = sa("10.0.0.2:53");
    let mut ports = HashSet::new();
    let mut socks = Vec::new();
    for _ in 0..63 {
        let u = st.udp_connect(dns).unwrap();
        let local = st.udp_local_addr(u).unwrap();
        assert_eq!(local.ip(), ip(CLIENT));
        assert!((40000..=40063).contains(&local.port()));
        assert_ne!(local.port(), 40007, "the bound port");
        assert!(ports.insert(local.port()), "port {local} twice");
        assert_eq!(st.udp_peer_addr(u), Some(dns));
        socks.push(u);
    }
    // Every port towards this destination is taken ...
    assert_eq!(st.udp_connect(dns), Err(ConnectError::AddrNotAvailable));
    // ... an explicit 4-tuple that is in use is refused too ...
    let taken = st.udp_local_addr(socks[0]).unwrap();
    assert_eq!(
        st.udp_connect_from(taken, dns),
        Err(ConnectError::AddrNotAvailable)
    );
    // ... but another destination, even another port of the same host,
    // has the whole range again: uniqueness is per 4-tuple.
    for other in ["10.0.0.2:5353", "10.0.0.3:53"] {
        let u = st.udp_connect(sa(other)).unwrap();
        assert!((40000..=40063).contains(&st.udp_local_addr(u).unwrap().port()));
    }
    // TCP has its own space.
    assert!(st.connect(dns).is_ok());
    // Closing one frees its port: the only one left towards `dns`.
    let freed = st.udp_local_addr(socks[5]).unwrap();
    st.udp_close(socks[5]);
    socks[5] = st.udp_connect(dns).unwrap();
    assert_eq!(st.udp_local_addr(socks[5]), Some(freed));
    // The snapshot shows each connected socket with its peer, as `ss`.
    let rows = st.snapshot();
    let estab = rows
        .iter()
        .filter(|r| r.proto == Protocol::Udp && r.state == "ESTAB")
        .count();
    assert_eq!(estab, 63 + 2);
    assert!(rows
        .iter()
        .any(|r| r.proto == Protocol::Udp && r.state == "UNCONN" && r.remote.is_none()));
    assert!(rows
        .iter()
        .filter(|r| r.state == "ESTAB" && r.proto == Protocol::Udp)
        .all(|r| r.remote.is_some()));
    st.check_invariants().unwrap();
    st.udp_close(held);
    for u in socks {
        st.udp_close(u);
    }
    st.check_invariants().unwrap();
    // Bad destinations.
    for bad in ["0.0.0.0:53", "10.0.0.2:0", "224.0.0.1:53"] {
        assert_eq!(st.udp_connect(sa(bad)), Err(ConnectError::InvalidAddress));
    }
    assert_eq!(
        st.udp_connect(sa("[fd00::2]:53")),
        Err(ConnectError::NetworkUnreachable)
    );
}

#[test]
fn a_connected_socket_takes_its_peers_datagrams_before_a_bind() {
    let mut net = default_pair(3);
    // The client has a wildcard bind on 5353 and a socket connected from
    // 10.0.0.1:5353 to the server's port 53.
    let bound = net.client().udp_bind(sa("0.0.0.0:5353")).unwrap();
    let conn = net
        .client()
        .udp_connect_from(sa("10.0.0.1:5353"), sa("10.0.0.2:53"))
        .unwrap();
    let s53 = net.server().udp_bind(sa("10.0.0.2:53")).unwrap();
    let s54 = net.server().udp_bind(sa("10.0.0.2:54")).unwrap();
    let to = sa("10.0.0.1:5353");
    // From the peer's 4-tuple: the connected socket.
    net.server().udp_send_to(s53, b"peer", to).unwrap();
    assert_eq!(
        recv(&mut net, Client, conn).unwrap(),
        (b"peer".to_vec(), sa("10.0.0.2:53"))
    );
    // From anywhere else: the bind.
    net.server().udp_send_to(s54, b"other", to).unwrap();
    assert_eq!(
        recv(&mut net, Client, bound).unwrap(),
        (b"other".to_vec(), sa("10.0.0.2:54"))
    );
    let mut buf = [0u8; 16];
    assert_eq!(
        net.client().udp_recv_from(conn, &mut buf),
        Err(RecvError::WouldBlock),
        "the connected socket saw only its peer"
    );
    // Closing the connected socket hands its peer's datagrams to the bind.
    net.client().udp_close(conn);
    net.server().udp_send_to(s53, b"peer again", to).unwrap();
    assert_eq!(
        recv(&mut net, Client, bound).unwrap(),
        (b"peer again".to_vec(), sa("10.0.0.2:53"))
    );
    net.client().check_invariants().unwrap();
}

#[test]
fn connect_on_a_bound_socket_keeps_its_port_and_takes_only_its_peer() {
    let mut net = default_pair(4);
    let u = net.client().udp_bind(sa("0.0.0.0:7000")).unwrap();
    let mut buf = [0u8; 16];
    // Not connected: no peer to send to.
    assert_eq!(
        net.client().udp_send(u, b"x"),
        Err(SendError::DestinationRequired)
    );
    assert_eq!(net.client().udp_peer_addr(u), None);
    net.client()
        .udp_connect_bound(u, sa("10.0.0.2:53"))
        .unwrap();
    // The wildcard bind sends from the stack's address towards the peer.
    assert_eq!(net.client().udp_local_addr(u), Some(sa("10.0.0.1:7000")));
    assert_eq!(net.client().udp_peer_addr(u), Some(sa("10.0.0.2:53")));
    // The port is still its own: another bind on it is refused.
    assert!(net.client().udp_bind(sa("10.0.0.1:7000")).is_err());
    // A connected socket sends to its peer only.
    assert_eq!(
        net.client().udp_send_to(u, b"x", sa("10.0.0.2:54")),
        Err(SendError::AlreadyConnected)
    );
    let s53 = net.server().udp_bind(sa("0.0.0.0:53")).unwrap();
    let s54 = net.server().udp_bind(sa("0.0.0.0:54")).unwrap();
    net.client().udp_send(u, b"hello").unwrap();
    assert_eq!(
        recv(&mut net, Server, s53).unwrap(),
        (b"hello".to_vec(), sa("10.0.0.1:7000"))
    );
    // Someone else's datagram to its port finds no socket: counted, and
    // answered with port unreachable, as Linux does.
    net.server()
        .udp_send_to(s54, b"stranger", sa("10.0.0.1:7000"))
        .unwrap();
    net.run_until(100, |n| n.server().counters().icmp_errors == 1)
        .unwrap();
    assert_eq!(net.client().counters().udp_no_port, 1);
    assert_eq!(
        net.client().udp_recv(u, &mut buf),
        Err(RecvError::WouldBlock)
    );
    // The peer's datagrams arrive.
    net.server()
        .udp_send_to(s53, b"answer", sa("10.0.0.1:7000"))
        .unwrap();
    assert_eq!(
        recv(&mut net, Client, u).unwrap(),
        (b"answer".to_vec(), sa("10.0.0.2:53"))
    );
    // Connecting again moves it to the new peer.
    net.client()
        .udp_connect_bound(u, sa("10.0.0.2:54"))
        .unwrap();
    net.server()
        .udp_send_to(s54, b"second", sa("10.0.0.1:7000"))
        .unwrap();
    assert_eq!(
        recv(&mut net, Client, u).unwrap(),
        (b"second".to_vec(), sa("10.0.0.2:54"))
    );
    assert_eq!(net.client().port_table().live_flows(), 1);
    net.client().check_invariants().unwrap();
    // Closing frees both the bind and the 4-tuple.
    net.client().udp_close(u);
    assert_eq!(net.client().port_table().live_flows(), 0);
    assert_eq!(net.client().port_table().binds(), 0);
    assert!(matches!(
        net.client().udp_connect_bound(u, sa("10.0.0.2:53")),
        Err(ConnectError::InvalidHandle)
    ));
}

/// An ICMP port unreachable from the server quoting `quoted` (the first
/// 28 octets: IPv4 header and UDP header).
fn port_unreachable(quoted: &[u8]) -> Vec<u8> {
    Icmp {
        ty: 3,
        code: 3,
        body: &quoted[..28],
        ..Default::default()
    }
    .packet(ip(SERVER), ip(CLIENT))
}

#[test]
fn port_unreachable_refuses_the_connected_socket_that_sent() {
    let mut net = default_pair(5);
    // Nobody listens on the server's port 9999: the server's stack
    // answers with port unreachable.
    let u = net.client().udp_connect(sa("10.0.0.2:9999")).unwrap();
    let other = net.client().udp_connect(sa("10.0.0.2:9998")).unwrap();
    net.client().udp_send(u, b"anyone?").unwrap();
    let mut ev = Vec::new();
    net.run_until(100, |n| {
        while let Some(e) = n.client().poll_event() {
            ev.push(e);
        }
        n.client().counters().icmp_errors == 1
    })
    .unwrap();
    assert_eq!(ev, vec![Event::Udp(u)], "the refused socket is told");
    let mut buf = [0u8; 64];
    assert_eq!(
        net.client().udp_recv(u, &mut buf),
        Err(RecvError::ConnectionRefused)
    );
    // Once; and only the socket that sent.
    assert_eq!(
        net.client().udp_recv(u, &mut buf),
        Err(RecvError::WouldBlock)
    );
    assert_eq!(
        net.client().udp_recv(other, &mut buf),
        Err(RecvError::WouldBlock)
    );

    // A forged error quoting a 4-tuple nobody holds changes nothing; one
    // quoting `other`'s refuses it.
    let local = net.client().udp_local_addr(other).unwrap();
    let forged = |to_port: u16| {
        Udp {
            payload: b"q",
            ..Default::default()
        }
        .packet(local, SocketAddr::new(ip(SERVER), to_port))
    };
    net.inject_to(Client, &port_unreachable(&forged(1)));
    assert_eq!(
        net.client().udp_recv(other, &mut buf),
        Err(RecvError::WouldBlock)
    );
    net.inject_to(Client, &port_unreachable(&forged(9998)));
    assert_eq!(
        net.client().udp_recv(other, &mut buf),
        Err(RecvError::ConnectionRefused)
    );

    // A bound socket connected to one peer is not told about another.
    let b = net.client().udp_bind(sa("0.0.0.0:6000")).unwrap();
    net.client()
        .udp_connect_bound(b, sa("10.0.0.2:53"))
        .unwrap();
    let stray = Udp {
        payload: b"q",
        ..Default::default()
    }
    .packet(sa("10.0.0.1:6000"), sa("10.0.0.2:77"));
    net.inject_to(Client, &port_unreachable(&stray));
    assert_eq!(
        net.client().udp_recv(b, &mut buf),
        Err(RecvError::WouldBlock)
    );
    let real = Udp {
        payload: b"q",
        ..Default::default()
    }
    .packet(sa("10.0.0.1:6000"), sa("10.0.0.2:53"));
    net.inject_to(Client, &port_unreachable(&real));
    assert_eq!(
        net.client().udp_recv(b, &mut buf),
        Err(RecvError::ConnectionRefused)
    );
    net.client().check_invariants().unwrap();
}

#[test]
fn a_full_receive_queue_drops_and_counts() {
    let packets = 8;
    let mut net = pair(
        Default::default(),
        StackConfig {
            udp_packets: packets,
            ..config(CLIENT, 6)
        },
        config(SERVER, 7),
    );
    let u = net.client().udp_connect(sa("10.0.0.2:53")).unwrap();
    let local = net.client().udp_local_addr(u).unwrap();
    let s = net.server().udp_bind(sa("10.0.0.2:53")).unwrap();
    for i in 0..packets + 5 {
        net.server().udp_send_to(s, &[i as u8; 100], local).unwrap();
        net.run_until(100, |n| n.server().poll_at().is_none())
            .unwrap();
    }
    net.run_until(100, |n| {
        n.client().counters().udp_datagrams_in == (packets + 5) as u64
    })
    .unwrap();
    assert_eq!(net.client().counters().udp_rx_overflow, 5);
    // The first `packets` are there, in order; the rest were dropped.
    let mut buf = [0u8; 200];
    for i in 0..packets {
        assert_eq!(net.client().udp_recv(u, &mut buf), Ok(100));
        assert_eq!(buf[0], i as u8);
    }
    assert_eq!(
        net.client().udp_recv(u, &mut buf),
        Err(RecvError::WouldBlock)
    );
    // The send side is bounded too.
    let mut sent = 0;
    while net.client().udp_send(u, &[0; 100]).is_ok() {
        sent += 1;
    }
    assert_eq!(sent, packets);
    assert_eq!(net.client().udp_send(u, b"x"), Err(SendError::WouldBlock));
}

#[test]
fn connected_udp_over_ipv6() {
    let v6 = |addr: &str, v6: &str, seed| StackConfig {
        addrs: vec![(ip(addr), 24), (ip(v6), 64)],
        ..config(addr, seed)
    };
    let mut net = pair(
        Default::default(),
        v6(CLIENT, "fd00::1", 8),
        v6(SERVER, "fd00::2", 9),
    );
    let s = net.server().udp_bind(sa("[::]:53")).unwrap();
    let u = net.client().udp_connect(sa("[fd00::2]:53")).unwrap();
    let local = net.client().udp_local_addr(u).unwrap();
    assert_eq!(local.ip(), ip("fd00::1"));
    assert!((49152..=65535).contains(&local.port()));
    net.client().udp_send(u, b"v6 query").unwrap();
    let (got, from) = recv(&mut net, Server, s).unwrap();
    assert_eq!((got.as_slice(), from), (&b"v6 query"[..], local));
    net.server().udp_send_to(s, b"v6 answer", from).unwrap();
    assert_eq!(
        recv(&mut net, Client, u).unwrap(),
        (b"v6 answer".to_vec(), sa("[fd00::2]:53"))
    );
}

/// The source port of every UDP datagram a client stack sends to each of
/// `dests`, in order, for `n` rounds of one query per destination, each
/// from a fresh connected socket; as indices into the default ephemeral
/// range (the port minus 49152).
fn query_ports(stack_seed: u64, dests: &[SocketAddr], n: usize) -> Vec<Vec<u32>> {
    let mut net = pair(
        Default::default(),
        StackConfig {
            udp_packets: 1,
            ..config(CLIENT, stack_seed)
        },
        config(SERVER, 99),
    );
    let st = net.client();
    let mut out = vec![Vec::new(); dests.len()];
    for _ in 0..n {
        for d in dests {
            let u = st.udp_connect(*d).unwrap();
            st.udp_send(u, b"query").unwrap();
            // What goes on the wire, before the socket goes.
            while let Some(p) = st.poll_transmit(Instant::ZERO) {
                let ip = etherparse::SlicedPacket::from_ip(&p).unwrap();
                let (
                    Some(etherparse::NetSlice::Ipv4(v4)),
                    Some(etherparse::TransportSlice::Udp(udp)),
                ) = (ip.net, ip.transport)
                else {
                    panic!("not a UDP datagram");
                };
                let dst = SocketAddr::new(
                    v4.header().destination_addr().into(),
                    udp.destination_port(),
                );
                let i = dests.iter().position(|d| *d == dst).unwrap();
                out[i].push(u32::from(udp.source_port()) - 49152);
            }
            st.udp_close(u);
        }
    }
    out
}

#[test]
fn ten_thousand_queries_source_ports_are_unpredictable() {
    let seed = 0x5452;
    let _guard = SeedGuard("connected UDP ports", seed);
    let n = 10_000;
    let dests = [sa("10.0.0.2:53"), sa("10.0.0.2:5353"), sa("10.0.0.3:53")];
    let seqs = query_ports(seed, &dests, n);
    for s in &seqs {
        assert_eq!(s.len(), n, "every query seen on the link");
    }
    assert_ports_unpredictable("connected UDP", &dests, &seqs, 16384);
    // A different secret, a different sequence to the same place.
    let other = query_ports(seed + 1, &dests[..1], 64);
    assert_ne!(other[0], seqs[0][..64]);
}
