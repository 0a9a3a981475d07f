//! (c) A real multi-queue TUN in a private network namespace (root): with
//! the program attached, every packet the kernel sends arrives on the
//! queue [`packet_owner`] names, and stack shards driven on its queues get
//! their own replies.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{
    bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
};

use super::kernel::load_or_skip;
use super::{is_root, skip, udp};
use super::{packet_flow, packet_owner, FlowKey, Protocol, Shards};
use crate::device::tun;
use crate::rng::{Rng, SeededRng};

/// A non-blocking socket of type `ty` bound to `local`, which need not be
/// an address of this host (`IP_TRANSPARENT`): the kernel sends from it as
/// if it were a host behind the TUN's peer. On an IPv6 socket Linux takes
/// the `SOL_IP` option too (`ipv6_setsockopt` hands `SOL_IP` to
/// `ip_setsockopt`) and sets the same flag `IPV6_TRANSPARENT` would.
fn transparent_socket(ty: SockType, local: SocketAddr) -> io::Result<OwnedFd> {
    let family = if local.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        ty,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::IpTransparent, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(local))?;
    Ok(fd)
}

/// Start a TCP connection from `from` to `to`: its SYN goes into the TUN.
fn send_syn(from: SocketAddr, to: SocketAddr) -> io::Result<OwnedFd> {
    let fd = transparent_socket(SockType::Stream, from)?;
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(to)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => Ok(fd),
        Err(e) => Err(e.into()),
    }
}

/// Run `f` on a thread of its own inside a fresh network namespace (which
/// goes away with the thread and its descriptors), or say why not.
fn in_private_netns(test: &'static str, f: impl FnOnce() + Send + 'static) {
    if !is_root() {
        skip(test, "needs root (a network namespace and a TUN)");
        return;
    }
    let handle = std::thread::spawn(move || {
        // unshare(2) moves this thread only into the new namespace.
        if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
            return Err(format!("cannot make a network namespace: {e}"));
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err("/dev/net/tun is missing".into());
        }
        f();
        Ok(())
    });
    match handle.join() {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => skip(test, &reason),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Wait (up to 2 s) until the kernel can use `addr`: an IPv6 address stays
/// tentative for a moment after the link comes up, and packets to it are
/// dropped meanwhile. Binding fails until then.
fn wait_until_usable(addr: IpAddr) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while UdpSocket::bind(SocketAddr::new(addr, 0)).is_err() {
        assert!(Instant::now() < deadline, "{addr} never became usable");
        std::thread::sleep(Duration::from_millis(5));
    }
}

const STACK4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const KERNEL4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const STACK6: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 2);
const KERNEL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 1);

/// With the program attached to a TUN of N queues inside a namespace,
/// every packet the kernel sends arrives on the queue [`packet_owner`]
/// names: UDP datagrams and TCP SYNs from many peers to ports in and out of
/// the ephemeral range, and the kernel's own ICMP errors about datagrams
/// written into the TUN. Kernel chatter (router solicitations, MLD) must
/// land on queue 0, as the rules say.
#[test]
fn a_multi_queue_tun_delivers_each_packet_on_its_owners_queue() {
    const TEST: &str =
        "device::steering::tests::netns::a_multi_queue_tun_delivers_each_packet_on_its_owners_queue";
    in_private_netns(TEST, || {
        for n in [3u16, 4] {
            if !steer_real_packets(TEST, n) {
                return;
            }
        }
    });
}

/// One run of the namespace test with `n` queues; false if it was skipped.
fn steer_real_packets(test: &str, n: u16) -> bool {
    let name = format!("ephsteer{n}");
    let mut queues = Vec::new();
    for _ in 0..n {
        match tun::open_queue(&name) {
            Ok(q) => queues.push(q),
            Err(e) => {
                skip(test, &format!("cannot open a multi-queue TUN: {e}"));
                return false;
            }
        }
    }
    let range = 40000..=40999;
    let shards = Shards::new(n, range.clone(), &mut SeededRng::new(u64::from(n))).unwrap();
    let Some(prog) = load_or_skip(test, &shards) else {
        return false;
    };
    // Attach before the link comes up, or its first packets (router
    // solicitations, MLD reports) are placed by flow hashing instead.
    let attached = prog.attach(queues[0].as_fd()).unwrap();
    drop(prog);
    tun::set_ipv4(&name, KERNEL4, 24).unwrap();
    tun::add_ipv6(&name, KERNEL6, 64).unwrap();
    tun::set_up(&name).unwrap();
    wait_until_usable(IpAddr::V6(KERNEL6));

    let mut rng = SeededRng::new(500 + u64::from(n));
    let port = |rng: &mut SeededRng, i: u32| {
        if i.is_multiple_of(2) {
            40000 + rng.below(1000) as u16
        } else {
            let p = 1024 + rng.below(64000) as u16;
            if range.contains(&p) {
                p + 1000
            } else {
                p
            }
        }
    };
    let mut expected: Vec<FlowKey> = Vec::new();
    let mut sockets = Vec::new();
    for i in 0..40u32 {
        let v6 = i % 4 >= 2;
        let peer = if v6 {
            let host = rng.next_u64();
            SocketAddr::new(
                Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0,
                    0,
                    (host >> 48) as u16,
                    (host >> 32) as u16,
                    (host >> 16) as u16,
                    host as u16,
                )
                .into(),
                1024 + rng.below(60000) as u16,
            )
        } else {
            SocketAddr::new(
                Ipv4Addr::new(198, 51, 100, 1 + rng.below(250) as u8).into(),
                1024 + rng.below(60000) as u16,
            )
        };
        let us = if v6 {
            IpAddr::V6(STACK6)
        } else {
            IpAddr::V4(STACK4)
        };
        let local = SocketAddr::new(us, port(&mut rng, i));
        if i % 3 == 0 {
            sockets.push(send_syn(peer, local).unwrap());
            expected.push(FlowKey::new(Protocol::Tcp, local, peer));
        } else {
            let s = UdpSocket::from(transparent_socket(SockType::Datagram, peer).unwrap());
            s.send_to(format!("steer {i}").as_bytes(), local).unwrap();
            expected.push(FlowKey::new(Protocol::Udp, local, peer));
        }
    }
    // Datagrams to closed ports of the kernel, each from its own address
    // (ICMP errors are rate-limited per destination), written on every
    // queue in turn: the kernel's port-unreachable errors quote them.
    for i in 0..16u32 {
        let v6 = i % 2 == 1;
        let (us, kernel) = if v6 {
            (
                IpAddr::V6(Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 1, i as u16)),
                IpAddr::V6(KERNEL6),
            )
        } else {
            (
                IpAddr::V4(Ipv4Addr::new(10, 9, 0, 100 + i as u8)),
                IpAddr::V4(KERNEL4),
            )
        };
        let local = SocketAddr::new(us, port(&mut rng, i / 2));
        let closed = SocketAddr::new(kernel, 7000 + i as u16);
        let packet = udp(local, closed, b"unreachable");
        (&queues[i as usize % queues.len()])
            .write_all(&packet)
            .unwrap();
        expected.push(FlowKey::new(Protocol::Udp, local, closed));
    }

    let mut arrived: HashMap<FlowKey, u16> = HashMap::new();
    let mut chatter = 0;
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    while arrived.len() < expected.len() && Instant::now() < deadline {
        let mut fds: Vec<PollFd> = queues
            .iter()
            .map(|q| PollFd::new(q.as_fd(), PollFlags::POLLIN))
            .collect();
        // Interrupted or not, every queue is read below.
        let _ = poll(&mut fds, PollTimeout::from(200u8));
        for (q, file) in queues.iter().enumerate() {
            loop {
                let len = match (&*file).read(&mut buf) {
                    Ok(len) => len,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read queue {q}: {e}"),
                };
                let packet = &buf[..len];
                let owner = packet_owner(&shards, packet);
                assert_eq!(
                    usize::from(owner),
                    q,
                    "n={n}: {:?} arrived on queue {q}, owner {owner}: {packet:02x?}",
                    packet_flow(packet)
                );
                match packet_flow(packet) {
                    Some(flow) if expected.contains(&flow) => {
                        arrived.insert(flow, q as u16);
                    }
                    _ => chatter += 1,
                }
            }
        }
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|f| !arrived.contains_key(f))
        .collect();
    assert!(missing.is_empty(), "n={n}: never arrived: {missing:?}");
    // The flows were spread: every queue had its share.
    let used: BTreeSet<u16> = arrived.values().copied().collect();
    assert_eq!(used.len(), usize::from(n), "n={n}: queues used {used:?}");
    let _ = writeln!(
        io::stderr(),
        "steering n={n}: {} flows on their owners' queues, {chatter} other packets on queue 0",
        arrived.len()
    );
    attached.detach().unwrap();
    drop(sockets);
    true
}

/// Stack shards on a real multi-queue TUN with the program attached: N
/// stacks, each told it is shard i of N and fed only queue i, open
/// connections to a kernel TCP server, and kernel clients connect to the
/// listener every shard has. Every packet arrives on the queue of the shard
/// that owns its flow, every connection completes and carries its own bytes
/// both ways, and no shard resets anything: the replies to the ports each
/// shard chose came home.
#[test]
fn stack_shards_on_a_multi_queue_tun_get_their_own_replies() {
    const TEST: &str =
        "device::steering::tests::netns::stack_shards_on_a_multi_queue_tun_get_their_own_replies";
    in_private_netns(TEST, || {
        for n in [2u16, 4] {
            if !shards_on_real_queues(TEST, n) {
                return;
            }
        }
    });
}

/// One run with `n` queues and stack shards; false if it was skipped.
fn shards_on_real_queues(test: &str, n: u16) -> bool {
    use crate::port_table::PortTableConfig;
    use crate::stack::{Event, Stack, StackConfig, TcpHandle, TcpState};
    use std::net::{TcpListener, TcpStream};

    /// Connections each way.
    const EACH_WAY: usize = 200;
    const SERVER_PORT: u16 = 7000;
    const LISTEN_PORT: u16 = 8080;

    let name = format!("ephshard{n}");
    // A subnet per run: the kernel's sockets of an earlier run may still
    // be closing, and must not reach this run's shards.
    let (stack4, kernel4) = (
        Ipv4Addr::new(10, 10, n as u8, 2),
        Ipv4Addr::new(10, 10, n as u8, 1),
    );
    let mut queues = Vec::new();
    for _ in 0..n {
        match tun::open_queue(&name) {
            Ok(q) => queues.push(q),
            Err(e) => {
                skip(test, &format!("cannot open a multi-queue TUN: {e}"));
                return false;
            }
        }
    }
    let range = 40000..=40999;
    let shards = Shards::new(n, range.clone(), &mut SeededRng::new(70 + u64::from(n))).unwrap();
    let Some(prog) = load_or_skip(test, &shards) else {
        return false;
    };
    let attached = prog.attach(queues[0].as_fd()).unwrap();
    drop(prog);
    tun::set_ipv4(&name, kernel4, 24).unwrap();
    tun::set_up(&name).unwrap();

    let t0 = crate::Instant::from_millis(0);
    let started = Instant::now();
    let now = || crate::Instant::from_micros(started.elapsed().as_micros() as i64);
    let mut stacks: Vec<Stack> = (0..n)
        .map(|i| {
            let config = StackConfig {
                addrs: vec![(IpAddr::V4(stack4), 24)],
                seed: Some(900 + u64::from(i)),
                ports: PortTableConfig {
                    ephemeral: range.clone(),
                    shard: shards.id(i).unwrap(),
                    ..Default::default()
                },
                ..Default::default()
            };
            Stack::new(config, t0).unwrap()
        })
        .collect();
    let listeners: Vec<_> = stacks
        .iter_mut()
        .map(|s| {
            s.listen(SocketAddr::new(IpAddr::V4(stack4), LISTEN_PORT), None)
                .unwrap()
        })
        .collect();

    // The kernel's side, on threads of this namespace: an echo server for
    // the shards' connections, and clients of the shards' listener.
    let server = TcpListener::bind(SocketAddr::new(IpAddr::V4(kernel4), SERVER_PORT)).unwrap();
    let echo = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for _ in 0..EACH_WAY {
            let (mut c, _) = server.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut msg = [0u8; 64];
            let k = c.read(&mut msg).unwrap();
            c.write_all(&msg[..k]).unwrap();
            conns.push(c);
        }
        conns
    });
    let clients = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for _ in 0..EACH_WAY {
            let to = SocketAddr::new(IpAddr::V4(stack4), LISTEN_PORT);
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(10)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let msg = format!("from {}", c.local_addr().unwrap());
            c.write_all(msg.as_bytes()).unwrap();
            let mut back = vec![0u8; msg.len()];
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, msg.as_bytes(), "echo reached the wrong client");
            conns.push(c);
        }
        conns
    });

    // Shard j opens connections j, j + N, ...
    let opened: Vec<(usize, TcpHandle)> = (0..EACH_WAY)
        .map(|k| {
            let q = k % usize::from(n);
            let to = SocketAddr::new(IpAddr::V4(kernel4), SERVER_PORT);
            (q, stacks[q].connect(to).unwrap())
        })
        .collect();
    for &(q, c) in &opened {
        let local = stacks[q].local_addr(c).unwrap();
        assert_eq!(shards.port_owner(local.port()), Some(q as u16));
    }
    // Per shard and connection: sent our message (opened), or bytes read.
    let mut sent: std::collections::HashSet<(usize, TcpHandle)> = Default::default();
    let mut got: HashMap<(usize, TcpHandle), Vec<u8>> = HashMap::new();
    let mut accepted = vec![0usize; usize::from(n)];
    let (mut echoed_in, mut echoed_out) = (0, 0);
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(30);
    while (echoed_in < EACH_WAY || echoed_out < EACH_WAY) && Instant::now() < deadline {
        let mut fds: Vec<PollFd> = queues
            .iter()
            .map(|q| PollFd::new(q.as_fd(), PollFlags::POLLIN))
            .collect();
        // Interrupted or not, every queue is read below.
        let _ = poll(&mut fds, PollTimeout::from(5u8));
        for (q, file) in queues.iter().enumerate() {
            loop {
                let len = match (&*file).read(&mut buf) {
                    Ok(len) => len,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read queue {q}: {e}"),
                };
                let packet = &buf[..len];
                if let Some(flow) = packet_flow(packet) {
                    assert_eq!(usize::from(shards.owner(&flow)), q, "n={n}: {flow:?}");
                }
                stacks[q].handle_packet(now(), packet);
            }
        }
        for (q, st) in stacks.iter_mut().enumerate() {
            while let Ok(c) = st.accept(listeners[q]) {
                accepted[q] += 1;
                got.insert((q, c), Vec::new());
            }
            for &(oq, c) in opened.iter().filter(|(oq, _)| *oq == q) {
                if !sent.contains(&(oq, c)) && st.tcp_state(c) == Some(TcpState::Established) {
                    let msg = format!("from {}", st.local_addr(c).unwrap());
                    assert_eq!(st.send(c, msg.as_bytes()), Ok(msg.len()));
                    sent.insert((oq, c));
                    got.insert((oq, c), Vec::new());
                }
            }
            while let Some(ev) = st.poll_event() {
                let Event::Tcp(c) = ev else { continue };
                let Some(acc) = got.get_mut(&(q, c)) else {
                    continue;
                };
                while let Ok(k) = st.recv(c, &mut buf) {
                    if k == 0 {
                        break;
                    }
                    acc.extend_from_slice(&buf[..k]);
                }
                let opener = sent.contains(&(q, c));
                let names = if opener {
                    st.local_addr(c).unwrap()
                } else {
                    st.peer_addr(c).unwrap()
                };
                let want = format!("from {names}");
                if acc.len() == want.len() {
                    assert_eq!(String::from_utf8_lossy(acc), want, "shard {q}");
                    if opener {
                        echoed_out += 1;
                    } else {
                        let back = acc.clone();
                        assert_eq!(st.send(c, &back), Ok(back.len()));
                        echoed_in += 1;
                    }
                    acc.push(b'.'); // counted once
                }
            }
            while let Some(p) = st.poll_transmit(now()) {
                // A full kernel queue drops, as a link would; TCP resends.
                let _ = (&queues[q]).write(&p);
            }
        }
    }
    let echo_conns = echo.join().unwrap();
    let client_conns = clients.join().unwrap();
    assert_eq!(echoed_out, EACH_WAY, "n={n}: opened by the shards, echoed");
    assert_eq!(echoed_in, EACH_WAY, "n={n}: opened by the kernel, echoed");
    assert!(accepted.iter().all(|&k| k > 0), "n={n}: {accepted:?}");
    for (q, st) in stacks.iter().enumerate() {
        let c = st.counters();
        assert_eq!(c.tcp_rst_sent, 0, "n={n} shard {q}: {c:?}");
        assert_eq!(c.tcp_reset_by_peer, 0, "n={n} shard {q}: {c:?}");
        st.check_invariants().unwrap();
    }
    let _ = writeln!(
        io::stderr(),
        "shards n={n}: {EACH_WAY} connections each way, accepted per shard {accepted:?}"
    );
    drop((echo_conns, client_conns));
    attached.detach().unwrap();
    true
}
