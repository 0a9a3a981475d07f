//! The README's library example: two stacks on an in-memory link, one
//! connection, the 4-tuple ephemera chose, and the bytes.

use ephemera::device::virtual_link::{LinkConfig, Network};
use ephemera::{Instant, Stack, StackConfig};

fn main() {
    let t0 = Instant::from_millis(0);
    let stack = |ip: &str| {
        let config = StackConfig {
            addrs: vec![(ip.parse().unwrap(), 24)],
            ..Default::default()
        };
        Stack::new(config, t0).unwrap()
    };
    let mut net = Network::new(LinkConfig::default());
    let client = net.add(stack("10.0.0.1"), &["10.0.0.1".parse().unwrap()]);
    let server = net.add(stack("10.0.0.2"), &["10.0.0.2".parse().unwrap()]);

    let listener = net
        .stack(server)
        .listen("0.0.0.0:80".parse().unwrap(), None)
        .unwrap();
    let conn = net
        .stack(client)
        .connect("10.0.0.2:80".parse().unwrap())
        .unwrap();
    println!(
        "ephemeral port chosen by ephemera: {}",
        net.stack(client).local_addr(conn).unwrap()
    );
    // Like a non-blocking socket: wait for the handshake, then send.
    net.run_until(10_000, |n| n.stack(client).can_send(conn))
        .unwrap();
    net.stack(client).send(conn, b"hello").unwrap();

    let mut accepted = None;
    let mut buf = [0u8; 64];
    net.run_until(10_000, |n| {
        accepted = accepted.or_else(|| n.stack(server).accept(listener).ok());
        accepted.is_some_and(|s| n.stack(server).recv(s, &mut buf) == Ok(5))
    })
    .unwrap();
    let s = accepted.unwrap();
    println!(
        "server got {:?} from {}",
        std::str::from_utf8(&buf[..5]).unwrap(),
        net.stack(server).peer_addr(s).unwrap()
    );
}
