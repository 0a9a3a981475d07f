//! One connection end to end over the virtual link.

use ephemera::{RecvError, TcpState};

use crate::util::*;

#[test]
fn connect_accept_send_recv_close() {
    let mut net = default_pair(1);
    let l = net.server().listen(sa("0.0.0.0:80"), None).unwrap();
    let (c, s) = establish(&mut net, l);
    let local = net.client().local_addr(c).unwrap();
    assert_eq!(local.ip(), ip(CLIENT));
    assert!((49152..=65535).contains(&local.port()));
    assert_eq!(net.client().tcp_state(c), Some(TcpState::Established));
    // The server sees the client's 4-tuple exactly.
    assert_eq!(net.server().peer_addr(s), Some(local));
    assert_eq!(net.server().local_addr(s), Some(sa("10.0.0.2:80")));

    assert_eq!(net.client().send(c, b"hello"), Ok(5));
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    net.run_until(1000, |n| {
        if let Ok(k) = n.server().recv(s, &mut buf) {
            got.extend_from_slice(&buf[..k]);
        }
        got.len() == 5
    })
    .unwrap();
    assert_eq!(got, b"hello");

    // Client closes first: it ends in TIME-WAIT, the server in CLOSED.
    net.client().close(c);
    net.run_until(1000, |n| n.server().recv(s, &mut buf) == Ok(0))
        .unwrap();
    net.server().close(s);
    net.run_until(1000, |n| {
        n.client().port_table().time_wait_flows() == 1 && n.server().socket_count() == 1
    })
    .unwrap();
    assert_eq!(net.client().socket_count(), 0);
    assert_eq!(net.client().tcp_state(c), None);
    assert_eq!(
        net.server().recv(s, &mut buf),
        Err(RecvError::InvalidHandle)
    );
    net.client().check_invariants().unwrap();
    net.server().check_invariants().unwrap();
}
