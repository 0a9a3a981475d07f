//! Echo and discard.

use super::*;

#[test]
fn echo_tcp_returns_every_byte_then_closes() {
    let mut t = trio(
        20,
        ServicesConfig {
            echo: Some(7),
            ..Default::default()
        },
    );
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:7");
    let data = pattern(300_000);
    c.write(&data);
    c.finish();
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    assert_eq!(c.got.len(), data.len());
    assert!(c.got == data);
    assert_eq!(c.error, None);
}

#[test]
fn echo_and_discard_udp() {
    let mut t = trio(
        21,
        ServicesConfig {
            echo: Some(7),
            discard: Some(9),
            ..Default::default()
        },
    );
    let u = t.net.stack(0).udp_bind(sa("10.0.0.1:0")).unwrap();
    let me = t.net.stack(0).udp_local_addr(u).unwrap();
    let msgs: Vec<Vec<u8>> = vec![b"one".to_vec(), vec![0xab; 1400], b"three".to_vec()];
    for m in &msgs {
        t.net.stack(0).udp_send_to(u, m, sa("10.0.0.2:7")).unwrap();
    }
    t.net
        .stack(0)
        .udp_send_to(u, b"into the void", sa("10.0.0.2:9"))
        .unwrap();
    let mut got = Vec::new();
    t.run(|n, _| {
        let mut buf = [0u8; 2048];
        while let Ok((k, from)) = n.stack(0).udp_recv_from(u, &mut buf) {
            got.push((buf[..k].to_vec(), from));
        }
        got.len() == msgs.len()
    });
    // Give a discard reply, if there were one, time to arrive.
    t.net.run_for(Duration::from_millis(500), STEPS).unwrap();
    t.run(|_, _| true);
    let mut buf = [0u8; 2048];
    assert!(t.net.stack(0).udp_recv_from(u, &mut buf).is_err());
    for (m, (g, from)) in msgs.iter().zip(&got) {
        assert_eq!(m, g);
        assert_eq!(*from, sa("10.0.0.2:7"));
    }
    assert!(me.port() != 0);
    // Discard answered nothing, not even port unreachable.
    assert_eq!(t.net.stack(1).counters().udp_no_port, 0);
}

#[test]
fn discard_tcp_swallows_everything_and_closes_on_fin() {
    let mut t = trio(
        22,
        ServicesConfig {
            discard: Some(9),
            ..Default::default()
        },
    );
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:9");
    c.write(&pattern(500_000));
    c.finish();
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    assert!(c.all_sent());
    assert!(c.got.is_empty());
    assert_eq!(c.error, None);
}
