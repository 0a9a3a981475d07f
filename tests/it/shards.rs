//! A sharded host on the virtual link: N stacks, each told it is shard i of
//! N, behind one address, with every packet for the host steered to the
//! shard `device::steering` names (what a multi-queue TUN with the steering
//! program does). The core scenarios run across the shards, and the link's
//! misdirected-packet counter (a packet reaching a shard that lacks its
//! flow while another shard has it) must stay 0.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use ephemera::device::virtual_link::{LinkConfig, Network};
use ephemera::port_table::{ShardId, Shards};
use ephemera::{
    Duration, Event, FlowKey, ListenerHandle, Protocol, RecvError, SeededRng, StackConfig,
    TcpHandle, TcpState,
};

use crate::churn::{churn_config, message, CONCURRENT, MSG, TIME_WAIT};
use crate::util::*;

/// The port every shard listens on.
const LISTEN: u16 = 8080;

/// The sharded host (at [`CLIENT`]) and one peer (at [`SERVER`]).
struct Host {
    net: Network,
    shards: Shards,
    /// Stack index of each shard, in shard order.
    ids: Vec<usize>,
    /// Stack index of the peer.
    peer: usize,
}

impl Host {
    /// `n` shards configured by `cfg`, each told its place unless `placed`
    /// is false (then every shard believes it is alone, and its ports
    /// ignore the steering).
    fn new(n: u16, seed: u64, cfg: fn(&str, u64) -> StackConfig, placed: bool) -> Host {
        let mut net = Network::new(LinkConfig {
            seed,
            ..Default::default()
        });
        let t0 = ephemera::Instant::from_millis(0);
        let peer = net.add(
            ephemera::Stack::new(cfg(SERVER, seed), t0).unwrap(),
            &[ip(SERVER)],
        );
        let ephemeral = cfg(CLIENT, 0).ports.ephemeral;
        let shards = Shards::new(n, ephemeral, &mut SeededRng::new(seed)).unwrap();
        let stacks = (0..n)
            .map(|i| {
                let mut c = cfg(CLIENT, seed + 1 + u64::from(i));
                if placed {
                    c.ports.shard = shards.id(i).unwrap();
                }
                ephemera::Stack::new(c, t0).unwrap()
            })
            .collect();
        let ids = net.add_sharded(stacks, shards, &[ip(CLIENT)]);
        Host {
            net,
            shards,
            ids,
            peer,
        }
    }

    /// The flow of connection `h` on stack `at`, seen from that stack.
    fn flow(&mut self, at: usize, h: TcpHandle) -> FlowKey {
        let st = self.net.stack(at);
        FlowKey::new(
            Protocol::Tcp,
            st.local_addr(h).unwrap(),
            st.peer_addr(h).unwrap(),
        )
    }
}

fn small_buffers(addr: &str, seed: u64) -> StackConfig {
    StackConfig {
        tcp_rx_buffer: 1024,
        tcp_tx_buffer: 1024,
        backlog: 100_000,
        syn_backlog: 100_000,
        ..config(addr, seed)
    }
}

/// One connection's end in [`echo_across_shards`]: the stack it is on,
/// whether it opened the connection, and what it has read.
struct End {
    at: usize,
    opened: bool,
    got: Vec<u8>,
    done: bool,
}

/// `outbound` connections opened by the shards in turn to the peer's
/// `server_ports`, and `inbound` opened by the peer to the listener every
/// shard has; each opener sends a message naming its own address, the
/// acceptor checks that it names its peer and echoes it, and the opener
/// checks the echo. Every connection is on the shard that owns its flow,
/// and no packet is misdirected.
fn echo_across_shards(n: u16, outbound: usize, server_ports: &[u16], inbound: usize) -> Host {
    echo_over(LinkConfig::default(), n, outbound, server_ports, inbound)
}

/// [`echo_across_shards`] over a link with impairments `link` (its seed is
/// replaced).
fn echo_over(
    link: LinkConfig,
    n: u16,
    outbound: usize,
    server_ports: &[u16],
    inbound: usize,
) -> Host {
    let seed = 0x5eed + u64::from(n);
    let _guard = SeedGuard("echo across shards", seed);
    let mut h = Host::new(n, seed, small_buffers, true);
    h.net.set_config(LinkConfig { seed, ..link });
    let peer = h.peer;
    let peer_listeners: Vec<ListenerHandle> = server_ports
        .iter()
        .map(|&p| {
            h.net
                .stack(peer)
                .listen(SocketAddr::new(ip(SERVER), p), None)
                .unwrap()
        })
        .collect();
    let shard_listeners: Vec<ListenerHandle> = h
        .ids
        .clone()
        .into_iter()
        .map(|i| {
            h.net
                .stack(i)
                .listen(SocketAddr::new(ip(CLIENT), LISTEN), None)
                .unwrap()
        })
        .collect();

    let mut ends: HashMap<(usize, TcpHandle), End> = HashMap::new();
    let mut open = |net: &mut Network, at: usize, to: SocketAddr, what: usize| {
        let c = net
            .stack(at)
            .connect(to)
            .unwrap_or_else(|e| panic!("connect #{what} from stack {at}: {e}"));
        ends.insert(
            (at, c),
            End {
                at,
                opened: true,
                got: Vec::new(),
                done: false,
            },
        );
        c
    };
    let mut opened = Vec::with_capacity(outbound + inbound);
    for j in 0..outbound {
        let shard = j % usize::from(n);
        let to = SocketAddr::new(ip(SERVER), server_ports[j % server_ports.len()]);
        let at = h.ids[shard];
        opened.push((at, open(&mut h.net, at, to, j)));
    }
    for j in 0..inbound {
        let to = SocketAddr::new(ip(CLIENT), LISTEN);
        opened.push((peer, open(&mut h.net, peer, to, j)));
    }
    // Every connection a shard opened is its own by the ownership rule.
    for &(at, c) in &opened[..outbound] {
        let flow = h.flow(at, c);
        let shard = h.ids.iter().position(|&i| i == at).unwrap() as u16;
        assert_eq!(h.shards.owner(&flow), shard, "{flow:?}");
    }

    let mut accepted: Vec<(usize, TcpHandle)> = Vec::new();
    let want = outbound + inbound;
    h.net
        .run_until(400_000, |net| {
            for &l in &peer_listeners {
                while let Ok(s) = net.stack(peer).accept(l) {
                    accepted.push((peer, s));
                }
            }
            for (k, &l) in shard_listeners.iter().enumerate() {
                let at = k + 1;
                while let Ok(s) = net.stack(at).accept(l) {
                    accepted.push((at, s));
                }
            }
            accepted.len() == want
                && opened
                    .iter()
                    .all(|&(at, c)| net.stack_ref(at).tcp_state(c) == Some(TcpState::Established))
        })
        .unwrap_or_else(|e| panic!("{} of {want} accepted: {e}", accepted.len()));
    // Inbound connections: each accepted on exactly one shard, its owner,
    // and every shard got some.
    let mut per_shard = vec![0usize; usize::from(n)];
    for &(at, s) in &accepted {
        if at == peer {
            continue;
        }
        let flow = h.flow(at, s);
        let shard = at - 1;
        assert_eq!(usize::from(h.shards.owner(&flow)), shard, "{flow:?}");
        per_shard[shard] += 1;
    }
    assert_eq!(per_shard.iter().sum::<usize>(), inbound);
    if inbound >= 100 * usize::from(n) {
        assert!(per_shard.iter().all(|&k| k > 0), "{per_shard:?}");
    }
    for (at, s) in accepted {
        ends.insert(
            (at, s),
            End {
                at,
                opened: false,
                got: Vec::new(),
                done: false,
            },
        );
    }

    for &(at, c) in &opened {
        let msg = format!("from {}", h.net.stack(at).local_addr(c).unwrap());
        assert_eq!(h.net.stack(at).send(c, msg.as_bytes()), Ok(msg.len()));
    }
    let stacks: Vec<usize> = std::iter::once(peer).chain(h.ids.clone()).collect();
    let mut done = 0;
    let mut buf = [0u8; 256];
    h.net
        .run_until(400_000, |net| {
            for &at in &stacks {
                let st = net.stack(at);
                while let Some(ev) = st.poll_event() {
                    let Event::Tcp(c) = ev else { continue };
                    let Some(end) = ends.get_mut(&(at, c)) else {
                        continue;
                    };
                    while let Ok(k) = st.recv(c, &mut buf) {
                        if k == 0 {
                            break;
                        }
                        end.got.extend_from_slice(&buf[..k]);
                    }
                    // The opener's message names the opener's address: the
                    // acceptor's peer, or the opener's own local end.
                    let names = if end.opened {
                        st.local_addr(c).unwrap()
                    } else {
                        st.peer_addr(c).unwrap()
                    };
                    let want = format!("from {names}");
                    if !end.done && end.got.len() == want.len() {
                        assert_eq!(
                            String::from_utf8_lossy(&end.got),
                            want,
                            "bytes reached the wrong connection on stack {}",
                            end.at
                        );
                        if !end.opened {
                            st.send(c, &end.got).unwrap();
                        }
                        end.done = true;
                        done += 1;
                    }
                }
            }
            done == 2 * want
        })
        .unwrap_or_else(|e| panic!("{done} of {} ends done: {e}", 2 * want));

    let stats = h.net.stats().clone();
    assert_eq!(stats.misdirected, 0, "{stats:?}");
    let clean = stats.corrupted == 0;
    let mut shard_flows = 0;
    for &i in &h.ids {
        let st = h.net.stack_ref(i);
        st.check_invariants().unwrap();
        if clean {
            assert_eq!(st.counters().drops(), 0, "shard {i}: {:?}", st.counters());
        }
        shard_flows += st.port_table().live_flows();
    }
    assert_eq!(shard_flows, want);
    assert_eq!(h.net.stack_ref(peer).port_table().live_flows(), want);
    h
}

#[test]
fn ten_thousand_connections_each_way_across_four_shards() {
    echo_across_shards(4, 10_000, &[80], 10_000);
}

#[test]
fn connections_each_way_for_every_shard_count_up_to_sixteen() {
    for n in [1, 2, 3, 5, 8, 16] {
        echo_across_shards(n, 400, &[80], 1600);
    }
}

/// The same through 5% loss, 2% duplication, 5% reordering and 1%
/// corruption: retransmissions, duplicates and late packets are steered
/// like the rest.
#[test]
fn connections_each_way_across_shards_through_an_impaired_link() {
    let link = LinkConfig {
        delay: Duration::from_millis(2),
        loss: 0.05,
        duplicate: 0.02,
        reorder: 0.05,
        corrupt: 0.01,
        ..Default::default()
    };
    let h = echo_over(link, 3, 600, &[80, 81], 600);
    let s = h.net.stats();
    assert!(
        s.lost > 0 && s.duplicated > 0 && s.reordered > 0 && s.corrupted > 0,
        "{s:?}"
    );
}

/// UDP across shards: a socket bound to port 0 on each shard gets a port of
/// its share, and the peer's answers come back to it; datagrams from many
/// peers' ports to the UDP port every shard has land on exactly one shard
/// each, spread over all; the ICMP port unreachable for a datagram a shard
/// sent is steered by the datagram it quotes to that shard, which reports
/// it on the right socket.
#[test]
fn udp_and_icmp_errors_reach_the_shard_that_owns_the_flow() {
    let n = 4u16;
    let mut h = Host::new(n, 31, small_buffers, true);
    let peer = h.peer;
    let echo = h.net.stack(peer).udp_bind(sa("10.0.0.2:7")).unwrap();
    let fixed: Vec<_> = h
        .ids
        .clone()
        .into_iter()
        .map(|i| h.net.stack(i).udp_bind(sa("0.0.0.0:5353")).unwrap())
        .collect();
    let mut own = Vec::new();
    for (shard, &i) in h.ids.clone().iter().enumerate() {
        let u = h.net.stack(i).udp_bind(sa("10.0.0.1:0")).unwrap();
        let port = h.net.stack(i).udp_local_addr(u).unwrap().port();
        assert_eq!(h.shards.port_owner(port), Some(shard as u16));
        h.net
            .stack(i)
            .udp_send_to(u, format!("shard {shard}").as_bytes(), sa("10.0.0.2:7"))
            .unwrap();
        own.push(u);
    }
    // The peer echoes what it gets.
    let mut buf = [0u8; 64];
    let mut echoed = 0;
    h.net
        .run_until(1000, |net| {
            while let Ok((k, from)) = net.stack(peer).udp_recv_from(echo, &mut buf) {
                let msg = buf[..k].to_vec();
                net.stack(peer).udp_send_to(echo, &msg, from).unwrap();
                echoed += 1;
            }
            echoed == n
        })
        .unwrap();
    let mut back = vec![false; usize::from(n)];
    h.net
        .run_until(1000, |net| {
            for (shard, (&i, &u)) in h.ids.iter().zip(&own).enumerate() {
                if let Ok((k, from)) = net.stack(i).udp_recv_from(u, &mut buf) {
                    assert_eq!(from, sa("10.0.0.2:7"));
                    assert_eq!(&buf[..k], format!("shard {shard}").as_bytes());
                    back[shard] = true;
                }
            }
            back.iter().all(|&b| b)
        })
        .unwrap();

    // Peers' datagrams to the port every shard has, 40 at a time (a UDP
    // socket queues 64).
    let mut per_shard = vec![0u32; usize::from(n)];
    for round in 0..10u16 {
        for k in 0..40u16 {
            let port = 20_000 + round * 40 + k;
            let u = h
                .net
                .stack(peer)
                .udp_bind(SocketAddr::new(ip(SERVER), port))
                .unwrap();
            h.net
                .stack(peer)
                .udp_send_to(u, b"hello", sa("10.0.0.1:5353"))
                .unwrap();
        }
        let want = u32::from(round + 1) * 40;
        h.net
            .run_until(1000, |net| {
                for (shard, (&i, &u)) in h.ids.iter().zip(&fixed).enumerate() {
                    while let Ok((_, from)) = net.stack(i).udp_recv_from(u, &mut buf) {
                        let owner = h.shards.owner_of(5353, from);
                        assert_eq!(usize::from(owner), shard, "{from}");
                        per_shard[shard] += 1;
                    }
                }
                per_shard.iter().sum::<u32>() == want
            })
            .unwrap_or_else(|e| panic!("{e}: {per_shard:?}"));
    }
    assert!(per_shard.iter().all(|&c| c > 0), "{per_shard:?}");

    // A closed port on the peer: ICMP port unreachable, steered home.
    for (&i, &u) in h.ids.iter().zip(&own) {
        h.net
            .stack(i)
            .udp_send_to(u, b"anyone?", sa("10.0.0.2:9999"))
            .unwrap();
    }
    h.net
        .run_until(1000, |net| {
            h.ids
                .iter()
                .all(|&i| net.stack_ref(i).counters().icmp_errors == 1)
        })
        .unwrap();
    for (&i, &u) in h.ids.iter().zip(&own) {
        assert_eq!(
            h.net.stack(i).udp_recv_from(u, &mut buf),
            Err(RecvError::ConnectionRefused)
        );
    }
    assert_eq!(h.net.stats().misdirected, 0);
}

/// A datagram steered to a shard without the socket it is for, while
/// another shard has it, is counted as misdirected.
#[test]
fn a_datagram_for_another_shards_socket_is_counted() {
    let mut h = Host::new(2, 32, small_buffers, true);
    let u = h.net.stack(h.ids[0]).udp_bind(sa("10.0.0.1:0")).unwrap();
    let port = h.net.stack(h.ids[0]).udp_local_addr(u).unwrap().port();
    // Shard 1 takes, by an explicit bind, a port that steers to shard 0.
    let other = port + 2;
    assert_eq!(h.shards.port_owner(other), Some(0));
    let _s = h
        .net
        .stack(h.ids[1])
        .udp_bind(SocketAddr::new(ip(CLIENT), other))
        .unwrap();
    let peer = h.peer;
    let p = h.net.stack(peer).udp_bind(sa("10.0.0.2:7")).unwrap();
    h.net
        .stack(peer)
        .udp_send_to(p, b"x", SocketAddr::new(ip(CLIENT), other))
        .unwrap();
    h.net.run_for(Duration::from_millis(10), 1000).unwrap();
    assert_eq!(h.net.stats().misdirected, 1);
}

/// 70,000 connections from one address across four shards: each shard has
/// a quarter of the range (4,096 ports) per destination, five destinations.
#[test]
fn more_than_65536_outbound_connections_across_four_shards() {
    let h = echo_across_shards(4, 70_000, &[80, 81, 82, 83, 84], 0);
    for &i in &h.ids {
        assert_eq!(h.net.stack_ref(i).port_table().live_flows(), 70_000 / 4);
    }
}

/// A shard's range per destination is its share: shard i of 4 fills its
/// 4,096 ports towards one destination, then `AddrNotAvailable`, while
/// another shard can still connect there.
#[test]
fn a_shard_runs_out_at_its_share_of_the_range() {
    let mut h = Host::new(4, 21, small_buffers, true);
    let to = sa("10.0.0.2:80");
    let first = h.ids[0];
    for k in 0..4096 {
        let _ = h
            .net
            .stack(first)
            .connect(to)
            .unwrap_or_else(|e| panic!("connect #{k}: {e}"));
    }
    assert_eq!(
        h.net.stack(first).connect(to),
        Err(ephemera::ConnectError::AddrNotAvailable)
    );
    let second = h.ids[1];
    assert!(h.net.stack(second).connect(to).is_ok());
}

/// Shards that do not know their place pick ports from the whole range, so
/// most replies are steered to a shard that lacks the connection: the
/// counter sees it (the check above can fail).
#[test]
fn shards_that_ignore_the_steering_are_caught_as_misdirected() {
    let mut h = Host::new(4, 22, small_buffers, false);
    let peer = h.peer;
    let _l = h.net.stack(peer).listen(sa("10.0.0.2:80"), None).unwrap();
    for k in 0..200 {
        let at = h.ids[k % 4];
        let _ = h.net.stack(at).connect(sa("10.0.0.2:80")).unwrap();
    }
    h.net.run_for(Duration::from_secs(1), 100_000).unwrap();
    let misdirected = h.net.stats().misdirected;
    // About three in four SYN-ACKs land on another shard.
    assert!(misdirected >= 100, "{misdirected}");
}

const CYCLES: u64 = 200_000;

/// Churn across four shards: 200,000 connect / 32-octet echo / close
/// cycles, 512 in flight, opened by the shards in turn through one peer
/// listener, with TIME-WAIT at 50 ms so every shard recycles its share many
/// times. No 4-tuple reused inside TIME-WAIT, every TIME-WAIT record in the
/// table of the shard that owns its flow, no packet misdirected, nothing
/// left behind.
#[test]
fn churn_across_four_shards_leaves_nothing_behind() {
    let seed = 0x5c4u64;
    let _guard = SeedGuard("sharded churn", seed);
    let n = 4u16;
    let mut h = Host::new(n, seed, churn_config, true);
    // Per client port: when its previous incarnation last sent.
    let last: Rc<RefCell<(HashMap<u16, i64>, u64)>> = Rc::default();
    {
        let last = last.clone();
        let client = ip(CLIENT);
        tap_segments(&mut h.net, move |now, s| {
            if s.src.ip() != client {
                return;
            }
            let mut r = last.borrow_mut();
            let t = now.total_micros();
            if s.flags.syn() && !s.flags.ack() {
                if let Some(&was) = r.0.get(&s.src.port()) {
                    if t - was < TIME_WAIT.total_micros() as i64 {
                        r.1 += 1;
                    }
                }
            } else {
                r.0.insert(s.src.port(), t);
            }
        });
    }
    let peer = h.peer;
    let l = h.net.stack(peer).listen(sa("10.0.0.2:80"), None).unwrap();
    let target = sa("10.0.0.2:80");

    let mut clients: HashMap<(usize, TcpHandle), (u64, usize)> = HashMap::new();
    let mut servers: HashMap<TcpHandle, usize> = HashMap::new();
    let (mut started, mut done) = (0u64, 0u64);
    let mut buf = [0u8; MSG];
    let (mut time_wait_seen, mut next_check) = (0, 10_000);
    while done < CYCLES || !servers.is_empty() {
        while clients.len() < CONCURRENT && started < CYCLES {
            let at = h.ids[(started % u64::from(n)) as usize];
            let c = h
                .net
                .stack(at)
                .connect(target)
                .unwrap_or_else(|e| panic!("connect #{started}: {e}"));
            clients.insert((at, c), (started, usize::MAX));
            started += 1;
        }
        h.net.step();

        echo_server_turn(h.net.stack(peer), l, &mut servers, &mut buf, MSG);

        for &at in &h.ids {
            let client = h.net.stack(at);
            while let Some(ev) = client.poll_event() {
                let Event::Tcp(c) = ev else { continue };
                let Some(&(cycle, got)) = clients.get(&(at, c)) else {
                    continue;
                };
                let want = message(cycle);
                let mut have = match got {
                    usize::MAX => match client.tcp_state(c) {
                        Some(TcpState::SynSent) => continue,
                        Some(TcpState::Established) => {
                            assert_eq!(client.send(c, &want), Ok(MSG), "cycle {cycle}");
                            0
                        }
                        other => panic!(
                            "cycle {cycle}: shard stack {at} in {other:?}, {:?}",
                            client.tcp_error(c)
                        ),
                    },
                    k => k,
                };
                loop {
                    match client.recv(c, &mut buf[have..]) {
                        Ok(0) => panic!("cycle {cycle}: EOF before the echo"),
                        Ok(k) => {
                            assert_eq!(buf[have..have + k], want[have..have + k], "cycle {cycle}");
                            have += k;
                            if have < MSG {
                                continue;
                            }
                            client.close(c);
                            clients.remove(&(at, c));
                            done += 1;
                        }
                        Err(RecvError::WouldBlock) => {
                            clients.insert((at, c), (cycle, have));
                        }
                        Err(e) => panic!("cycle {cycle}: client recv: {e}"),
                    }
                    break;
                }
            }
        }
        // Now and then: every TIME-WAIT record is in its owner's table.
        if done >= next_check {
            next_check += 10_000;
            for (shard, &at) in h.ids.iter().enumerate() {
                for (key, _) in h.net.stack_ref(at).port_table().time_wait_entries() {
                    assert_eq!(usize::from(h.shards.owner(&key)), shard, "{key:?}");
                    time_wait_seen += 1;
                }
            }
        }
    }
    h.net.run_for(Duration::from_secs(5), 10_000_000).unwrap();
    let stats = h.net.stats().clone();
    let r = last.borrow();
    println!(
        "sharded churn: {CYCLES} cycles over {n} shards, {} simulated, {} TIME-WAIT records checked, link {stats:?}",
        h.net.now(),
        time_wait_seen
    );
    assert!(time_wait_seen > 0, "no TIME-WAIT record was ever checked");
    assert_eq!(r.1, 0, "a 4-tuple was reused while in TIME-WAIT");
    assert_eq!(stats.misdirected, 0);
    let mut opens = 0;
    for &at in &h.ids {
        let st = h.net.stack_ref(at);
        st.check_invariants().unwrap();
        assert_eq!(st.socket_count(), 0);
        assert_eq!(st.port_table().live_flows(), 0);
        assert_eq!(st.port_table().time_wait_flows(), 0);
        assert_eq!(st.counters().drops(), 0, "{:?}", st.counters());
        opens += st.counters().tcp_active_opens;
    }
    assert_eq!(opens, CYCLES);
    let p = h.net.stack_ref(peer);
    assert_eq!(p.counters().tcp_accepted, CYCLES);
    assert_eq!(p.socket_count(), 1, "only the listener");
    assert_eq!(p.counters().drops(), 0);
}

/// The split a test builds and the one a stack is given agree on the
/// shares: a placed shard's table hands out exactly `Shards::ports(i)`.
#[test]
fn a_placed_shard_hands_out_its_split_share() {
    let h = Host::new(3, 5, small_buffers, true);
    for (i, &at) in h.ids.iter().enumerate() {
        let share = h.net.stack_ref(at).port_table().share();
        assert_eq!(Some(share), h.shards.ports(i as u16));
        assert_eq!(
            h.net.stack_ref(at).port_table().config().shard,
            ShardId {
                index: i as u16,
                count: 3
            }
        );
    }
}

/// A stack told it is a shard that does not exist is refused with the
/// reason.
#[test]
fn a_stack_with_no_such_shard_is_refused() {
    let mut c = config(CLIENT, 1);
    c.ports.shard = ShardId { index: 2, count: 2 };
    let err = ephemera::Stack::new(c, ephemera::Instant::from_millis(0))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("shard 2 of 2"), "{err}");
}
