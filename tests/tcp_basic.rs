//! One connection end to end over the virtual link.

mod common;
use common::*;

use ephemera::{RecvError, TcpState};

#[test]
fn connect_accept_send_recv_close() {
    let mut net = default_pair(1);
    let l = net.stack(1).listen(sa("0.0.0.0:80"), None).unwrap();
    let c = net.stack(0).connect(sa("10.0.0.2:80")).unwrap();
    let local = net.stack(0).local_addr(c).unwrap();
    assert_eq!(local.ip(), ip(CLIENT));
    assert!((49152..=65535).contains(&local.port()));

    let mut accepted = None;
    net.run_until(1000, |n| {
        accepted = accepted.or_else(|| n.stack(1).accept(l).ok());
        accepted.is_some() && n.stack(0).tcp_state(c) == Some(TcpState::Established)
    })
    .unwrap();
    let s = accepted.unwrap();
    // The server sees the client's 4-tuple exactly.
    assert_eq!(net.stack(1).peer_addr(s), Some(local));
    assert_eq!(net.stack(1).local_addr(s), Some(sa("10.0.0.2:80")));

    assert_eq!(net.stack(0).send(c, b"hello"), Ok(5));
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    net.run_until(1000, |n| {
        if let Ok(k) = n.stack(1).recv(s, &mut buf) {
            got.extend_from_slice(&buf[..k]);
        }
        got.len() == 5
    })
    .unwrap();
    assert_eq!(got, b"hello");

    // Client closes first: it ends in TIME-WAIT, the server in CLOSED.
    net.stack(0).close(c);
    net.run_until(1000, |n| n.stack(1).recv(s, &mut buf) == Ok(0))
        .unwrap();
    net.stack(1).close(s);
    net.run_until(1000, |n| {
        n.stack(0).port_table().time_wait_flows() == 1 && n.stack(1).socket_count() == 1
    })
    .unwrap();
    assert_eq!(net.stack(0).socket_count(), 0);
    assert_eq!(net.stack(0).tcp_state(c), None);
    assert_eq!(
        net.stack(1).recv(s, &mut buf),
        Err(RecvError::InvalidHandle)
    );
    net.stack(0).check_invariants().unwrap();
    net.stack(1).check_invariants().unwrap();
}
