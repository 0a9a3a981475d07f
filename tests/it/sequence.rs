//! The sequence numbers the stack chooses (RFC 6528) and what depends on
//! them: ISNs that grow with the clock and say nothing of other 4-tuples,
//! TIME-WAIT reuse (RFC 6191), blind SYN-ACKs in SYN-SENT, and ICMP
//! errors checked against the sequence numbers they quote (RFC 5927).

use std::cell::RefCell;
use std::rc::Rc;

use ephemera::device::virtual_link::Network;
use ephemera::wire::build::{Checksum, Icmp};
use ephemera::wire::TcpFlags;
use ephemera::{ConnError, TcpState};

use crate::util::*;

/// Every SYN or SYN-ACK the link carries, with its time, by sender.
fn tap_syns(net: &mut Network) -> Rc<RefCell<Vec<Seg>>> {
    let syns = Rc::new(RefCell::new(Vec::new()));
    let log = syns.clone();
    tap_segments(net, move |_, s| {
        if s.flags.syn() {
            log.borrow_mut().push(s);
        }
    });
    syns
}

#[test]
fn a_blind_syn_ack_in_syn_sent_does_not_set_the_peers_isn() {
    // A SYN-ACK whose ACK is not ISS + 1 is refused by smoltcp; the stack
    // used to take its sequence number as the peer's ISN all the same, so
    // RCV.NXT was wrong for the connection's life and the peer's own RST at
    // exactly RCV.NXT was dropped as out of window.
    let mut net = default_pair(0x5a);
    let syns = tap_syns(&mut net);
    let server = sa("10.0.0.2:80");
    let l = net.server().listen(server, None).unwrap();
    let c = net.client().connect(server).unwrap();
    let local = net.client().local_addr(c).unwrap();
    // The client's SYN is out; before the server answers, a blind
    // attacker's SYN-ACK with a guessed ACK arrives.
    let now = net.now();
    let syn = net.client().poll_transmit(now).unwrap();
    let our_isn = Seg::parse(&syn).unwrap().seq;
    net.inject_to(
        Client,
        &tcp(
            server,
            local,
            0x0bad_5eed,
            our_isn.wrapping_add(0x4000_0000),
            TcpFlags::SYN | TcpFlags::ACK,
            65535,
            b"",
        ),
    );
    assert_eq!(net.client().tcp_state(c), Some(TcpState::SynSent));
    // Now the real SYN arrives at the server and the handshake completes.
    net.inject_to(Server, &syn);
    let s = accept_until(&mut net, l, 1, 10_000)[0];
    net.run_until(10_000, |n| {
        n.client().tcp_state(c) == Some(TcpState::Established)
    })
    .unwrap();
    assert!(syns.borrow().iter().any(|s| s.src == server));
    // The server resets the connection: its RST is at exactly RCV.NXT.
    net.server().abort(s);
    net.run_until(10_000, |n| {
        n.client().tcp_state(c) == Some(TcpState::Closed)
    })
    .unwrap_or_else(|e| {
        panic!(
            "the client never took the server's RST: {e}; {:?}",
            net.client().counters()
        )
    });
    assert_eq!(net.client().tcp_error(c), Some(ConnError::Reset));
    assert_eq!(net.client().counters().drop_rst_out_of_window, 0);
    net.client().check_invariants().unwrap();
}

/// Reads one counter.
type Counter = fn(&ephemera::Counters) -> u64;

/// A destination unreachable (code 3, port) from the server to the client
/// quoting `quoted`, with checksum `checksum`.
fn port_unreachable(quoted: &[u8], checksum: Checksum) -> Vec<u8> {
    Icmp {
        ty: 3,
        code: 3,
        body: quoted,
        checksum,
        ..Default::default()
    }
    .packet(ip(SERVER), ip(CLIENT))
}

#[test]
fn icmp_errors_count_only_with_a_right_checksum_and_our_syns_sequence_number() {
    // A hard ICMP error aborts a connection in SYN-SENT. It used to do so
    // with any checksum and any quoted sequence number, so anyone who knew
    // (or guessed) the 4-tuple killed connects in progress (RFC 5927).
    let mut net = default_pair(0x5927);
    let c = net.client().connect(sa("10.0.0.2:81")).unwrap();
    let now = net.now();
    let syn = net.client().poll_transmit(now).unwrap();
    let isn = Seg::parse(&syn).unwrap().seq;
    let mut wrong_seq = syn.clone();
    wrong_seq[24..28].copy_from_slice(&isn.wrapping_add(1).to_be_bytes());
    let cases: [(&str, Vec<u8>, Counter); 3] = [
        (
            "bad ICMP checksum",
            port_unreachable(&syn[..28], Checksum::Wrong),
            |c| c.drop_bad_checksum,
        ),
        (
            "quotes another sequence number",
            port_unreachable(&wrong_seq[..28], Checksum::Valid),
            |c| c.drop_icmp_out_of_window,
        ),
        (
            "quotes no sequence number",
            port_unreachable(&syn[..24], Checksum::Valid),
            |c| c.drop_icmp_out_of_window,
        ),
    ];
    for (what, icmp, counter) in cases {
        let before = counter(net.client().counters());
        net.inject_to(Client, &icmp);
        assert_eq!(
            net.client().tcp_state(c),
            Some(TcpState::SynSent),
            "{what}: the connect was aborted"
        );
        assert_eq!(counter(net.client().counters()), before + 1, "{what}");
    }
    // The genuine error, quoting our SYN, still refuses the connection.
    net.inject_to(Client, &port_unreachable(&syn[..28], Checksum::Valid));
    assert_eq!(net.client().tcp_error(c), Some(ConnError::Refused));
    assert_eq!(net.client().counters().tcp_connect_refused, 1);
    net.client().check_invariants().unwrap();
}
