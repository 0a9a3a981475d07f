//! The sequence numbers the stack chooses (RFC 6528) and what depends on
//! them: ISNs that grow with the clock and say nothing of other 4-tuples,
//! TIME-WAIT reuse (RFC 6191), blind SYN-ACKs in SYN-SENT, and ICMP
//! errors checked against the sequence numbers they quote (RFC 5927).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use ephemera::device::virtual_link::Network;
use ephemera::wire::build::{Checksum, Icmp};
use ephemera::wire::TcpFlags;
use ephemera::{ConnError, Instant, Stack, TcpState};

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

/// The ISN of an active open from `local` to `remote` on `stack` whose SYN
/// leaves at `now`; the attempt is then reset and freed, so the 4-tuple
/// can be opened again.
fn active_isn(stack: &mut Stack, now: Instant, local: SocketAddr, remote: SocketAddr) -> u32 {
    let c = stack.connect_from(local, remote).unwrap();
    let syn = stack
        .poll_transmit(now)
        .and_then(|p| Seg::parse(&p))
        .unwrap();
    assert!(syn.flags.syn() && !syn.flags.ack());
    stack.abort(c);
    while stack.poll_transmit(now).is_some() {}
    assert_eq!(stack.socket_count(), 0);
    syn.seq
}

/// The ISN of the SYN-ACK a listening `stack` sends at `now` for a SYN
/// from `remote` to `local`; the half-open connection is then reset by
/// the peer, so the 4-tuple can be opened again.
fn passive_isn(stack: &mut Stack, now: Instant, remote: SocketAddr, local: SocketAddr) -> u32 {
    let peer_isn = 1_000;
    let sockets = stack.socket_count();
    stack.handle_packet(
        now,
        &tcp(remote, local, peer_isn, 0, TcpFlags::SYN, 65535, b""),
    );
    let syn_ack = stack
        .poll_transmit(now)
        .and_then(|p| Seg::parse(&p))
        .unwrap();
    assert!(syn_ack.flags.syn() && syn_ack.flags.ack());
    let rst = tcp(remote, local, peer_isn + 1, 0, TcpFlags::RST, 0, b"");
    stack.handle_packet(now, &rst);
    while stack.poll_transmit(now).is_some() {}
    assert_eq!(
        stack.socket_count(),
        sockets,
        "the half-open connection is gone"
    );
    syn_ack.seq
}

fn stack(addr: &str, seed: u64) -> Stack {
    Stack::new(config(addr, seed), Instant::from_millis(0)).unwrap()
}

#[test]
fn isns_of_one_four_tuple_advance_with_the_clock() {
    // RFC 6528: ISN = M + F(4-tuple, key), M a 4 µs clock. For one
    // 4-tuple F is fixed, so the ISN moves exactly with the clock, active
    // or passive, and wraps like it (2^32 ticks: 4.77 hours).
    let (local, remote) = (sa("10.0.0.1:40000"), sa("10.0.0.2:80"));
    let mut client = stack(CLIENT, 6528);
    let mut server = stack(SERVER, 6529);
    let _l = server.listen(remote, None).unwrap();
    let t0 = Instant::from_millis(1_000);
    let (a0, p0) = (
        active_isn(&mut client, t0, local, remote),
        passive_isn(&mut server, t0, local, remote),
    );
    let mut steps_us = vec![4, 1_000, 123_456, 2_000_000, 60_000_000];
    steps_us.push(4 * (1i64 << 32) + 40); // one wrap of M and ten ticks
    for us in steps_us {
        let t = t0 + ephemera::Duration::from_micros(us as u64);
        let ticks = (us / 4) as u32;
        let a = active_isn(&mut client, t, local, remote);
        assert_eq!(a.wrapping_sub(a0), ticks, "active, {us} µs later");
        let p = passive_isn(&mut server, t, local, remote);
        assert_eq!(p.wrapping_sub(p0), ticks, "passive, {us} µs later");
    }
}

/// Pearson's correlation of two equally long series.
fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (ma, mb) = (mean(a), mean(b));
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// Chi-square of `isns` over 32 buckets of their top five bits.
fn chi_square(isns: &[u32]) -> f64 {
    let mut count = [0f64; 32];
    for &x in isns {
        count[(x >> 27) as usize] += 1.0;
    }
    let e = isns.len() as f64 / 32.0;
    count.iter().map(|c| (c - e) * (c - e) / e).sum()
}

#[test]
fn isns_of_different_four_tuples_and_keys_are_unrelated() {
    let seed = 0x6528;
    let _guard = SeedGuard("ISNs across 4-tuples", seed);
    let n = 8192u16;
    let local = ip(CLIENT);
    let remote = |i: u16| sa(&format!("10.0.0.2:{}", 1024 + i));
    let t = Instant::from_millis(5_000);
    let isns = |seed: u64, port: u16| -> Vec<u32> {
        let mut s = stack(CLIENT, seed);
        (0..n)
            .map(|i| active_isn(&mut s, t, SocketAddr::new(local, port), remote(i)))
            .collect()
    };
    // At one instant M is the same for all: what differs is F alone.
    let a = isns(seed, 40000);
    // Uniform over the sequence space: chi-square over 32 buckets, 31
    // degrees of freedom, 0.1% critical value 61.1.
    let chi = chi_square(&a);
    assert!(chi < 61.1, "chi-square {chi:.1}");
    // Neighbouring 4-tuples say nothing of each other: no common step.
    let steps: std::collections::HashSet<u32> =
        a.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    assert!(
        steps.len() > usize::from(n) - 4,
        "{} distinct steps",
        steps.len()
    );
    // The same 4-tuples on a stack with another key, and on this one from
    // another local port: unrelated to the first.
    for (what, b) in [
        ("another key", isns(seed + 1, 40000)),
        ("another port", isns(seed, 40001)),
    ] {
        let (fa, fb): (Vec<f64>, Vec<f64>) = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| (f64::from(x), f64::from(y)))
            .unzip();
        let r = correlation(&fa, &fb);
        assert!(r.abs() < 0.05, "{what}: correlation {r}");
        // Their difference is as spread as the ISNs themselves: one
        // 4-tuple's ISN under one key gives no other's.
        let diff: Vec<u32> = a.iter().zip(&b).map(|(x, y)| x.wrapping_sub(*y)).collect();
        let chi = chi_square(&diff);
        assert!(chi < 61.1, "{what}: difference chi-square {chi:.1}");
        println!("{what}: correlation {r:.4}, difference chi-square(31) {chi:.1}");
    }
}

#[test]
fn an_observer_of_a_thousand_isns_guesses_the_next_no_better_than_chance() {
    // The attacker of RFC 6528 §1: it opens connections of its own (other
    // 4-tuples) and watches their ISNs and times, then must guess the ISN
    // of a victim's 4-tuple closely enough for a blind segment to land in
    // the window (64 KiB either side: 1 in 32,768 by chance).
    let seed = 0x1948;
    let _guard = SeedGuard("ISN guessing", seed);
    let mut s = stack(CLIENT, seed);
    let server = sa("10.0.0.2:80");
    let mut t = Instant::from_millis(1_000);
    let step = ephemera::Duration::from_micros(1_237);
    let mut seen: Vec<(Instant, u32)> = Vec::new();
    for i in 0..1_000u16 {
        let from = SocketAddr::new(ip(CLIENT), 20_000 + i);
        seen.push((t, active_isn(&mut s, t, from, server)));
        t += step;
    }
    // The guesses: the last ISN seen moved on by the clock (right for any
    // scheme with one global counter), and the last one moved on by the
    // commonest step between two observations.
    let mut freq = std::collections::HashMap::<u32, usize>::new();
    for w in seen.windows(2) {
        *freq.entry(w[1].1.wrapping_sub(w[0].1)).or_default() += 1;
    }
    let common = freq
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(s, _)| *s)
        .unwrap();
    assert!(freq[&common] <= 2, "a step repeats {} times", freq[&common]);
    let mut hits = 0;
    let victims = 1_000u16;
    for i in 0..victims {
        let (last_t, last) = *seen.last().unwrap();
        let victim = SocketAddr::new(ip(CLIENT), 50_000 + i);
        let isn = active_isn(&mut s, t, victim, server);
        let ticks = ((t - last_t).total_micros() / 4) as u32;
        for guess in [last.wrapping_add(ticks), last.wrapping_add(common)] {
            let off = isn.wrapping_sub(guess);
            if off.min(off.wrapping_neg()) < 65_536 {
                hits += 1;
            }
        }
        seen.push((t, isn));
        t += step;
    }
    // 2,000 guesses at 1 in 32,768: 0.06 hits expected.
    assert!(
        hits <= 1,
        "{hits} of {} guesses landed in the window",
        2 * victims
    );
}

#[test]
fn a_thousand_reopenings_of_a_four_tuple_in_time_wait_all_succeed() {
    // RFC 6191: the server closes first and holds the 4-tuple in
    // TIME-WAIT; the client opens it again at once, its new ISN above the
    // old connection's last sequence number because ISNs follow the clock
    // (RFC 6528). Before clock-driven ISNs about half were refused.
    let mut net = default_pair(6191);
    let from = sa("10.0.0.1:45000");
    let server = sa("10.0.0.2:80");
    let l = net.server().listen(server, None).unwrap();
    let payload = [0x5au8; 100];
    let rounds = 1_000;
    for round in 0..rounds {
        let c = net.client().connect_from(from, server).unwrap();
        let s = accept_until(&mut net, l, 1, 10_000)
            .pop()
            .unwrap_or_else(|| panic!("round {round}: not accepted"));
        assert_eq!(net.client().send(c, &payload), Ok(payload.len()));
        let mut buf = [0u8; 256];
        let mut got = 0;
        net.run_until(10_000, |n| {
            got += n.server().recv(s, &mut buf[got..]).unwrap_or(0);
            got == payload.len()
        })
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        net.server().close(s);
        net.run_until(10_000, |n| n.client().recv(c, &mut buf) == Ok(0))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        net.client().close(c);
        net.run_until(10_000, |n| {
            n.node_ref(Server).port_table().time_wait_flows() == 1
                && n.node_ref(Client).socket_count() == 0
        })
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    let counters = net.server().counters().clone();
    assert_eq!(counters.tcp_time_wait_reopened, rounds - 1);
    assert_eq!(counters.drop_time_wait, 0);
    assert_eq!(net.client().counters().tcp_connect_refused, 0);
    net.server().check_invariants().unwrap();
}
