//! Buffer memory: idle buffers handed back to the kernel never lose data.

use ephemera::wire::TcpFlags;
use ephemera::{Duration, Instant, RecvError, Stack, StackConfig};

use crate::util::*;

/// The peer's stream: octet `i`, never zero (a page handed back reads as
/// zeros).
fn octet(i: usize) -> u8 {
    (i % 251) as u8 + 1
}

/// Everything `h` has to read now.
fn read_all(st: &mut Stack, h: ephemera::TcpHandle) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match st.recv(h, &mut buf) {
            Ok(0) | Err(RecvError::WouldBlock) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// Out-of-order data in the receive ring must keep its pages. A segment
/// that starts in the window and runs past it is stored by smoltcp up to
/// the window's end; the stack used to ignore it when tracking the highest
/// sequence number seen, so the buffer looked drained, the idle timer
/// handed its pages back, and the application later read zeros where the
/// data had been.
#[test]
fn out_of_order_data_past_the_window_survives_the_idle_shrink() {
    let seed = 0x5a9;
    let _guard = SeedGuard("out-of-order past the window", seed);
    let mut now = Instant::from_millis(0);
    let config = StackConfig {
        tcp_rx_buffer: 4096,
        ..config(SERVER, seed)
    };
    let after = config.shrink_idle_after.expect("shrinking on by default");
    let mut st = Stack::new(config, now).unwrap();
    let l = st.listen(sa("0.0.0.0:80"), None).unwrap();
    let ends = (sa("10.0.0.1:40000"), sa("10.0.0.2:80"));
    let isn = 7_000u32;
    let (h, snd) = handshake(&mut st, &mut now, l, ends, isn, 65535);
    let stream: Vec<u8> = (0..5000).map(octet).collect();
    let send = |st: &mut Stack, now: Instant, from: usize, to: usize| {
        let seq = isn.wrapping_add(1 + from as u32);
        let p = tcp(
            ends.0,
            ends.1,
            seq,
            snd,
            TcpFlags::ACK,
            65535,
            &stream[from..to],
        );
        st.handle_packet(now, &p);
    };

    // RCV.NXT + 1000 .. RCV.NXT + 5000: the window is 4096, so octets
    // 1000..4096 are kept, out of order, and the rest dropped.
    send(&mut st, now, 1000, 5000);
    let t = now;
    let out = drain_until(&mut st, &mut now, t + Duration::from_millis(50));
    assert!(out.iter().all(|(_, s)| s.ack == isn + 1), "{out:?}");
    let held = st.buffer_resident_bytes();
    assert!(held > 0, "out-of-order octets are in the ring");

    // Quiet for longer than `shrink_idle_after`: the pages must stay.
    let t = now + after + Duration::from_secs(1);
    drain_until(&mut st, &mut now, t);
    assert_eq!(st.buffer_resident_bytes(), held, "pages handed back");

    // The hole is filled: the application reads the window in order,
    // byte for byte as sent, then the rest once the peer sends it.
    send(&mut st, now, 0, 1000);
    let t = now;
    drain_until(&mut st, &mut now, t + Duration::from_millis(50));
    let mut got = read_all(&mut st, h);
    assert_eq!(got.len(), 4096);
    // The window update goes out, then the peer sends the rest.
    let t = now;
    drain_until(&mut st, &mut now, t + Duration::from_millis(50));
    send(&mut st, now, 4096, 5000);
    let t = now;
    drain_until(&mut st, &mut now, t + Duration::from_millis(50));
    got.extend(read_all(&mut st, h));
    let first_bad = got.iter().zip(&stream).position(|(a, b)| a != b);
    assert_eq!(first_bad, None, "stream differs");
    assert_eq!(got.len(), stream.len());

    // Everything read, nothing out of order: now the pages go back.
    let t = now + after + Duration::from_secs(1);
    drain_until(&mut st, &mut now, t);
    assert_eq!(st.buffer_resident_bytes(), 0);
    st.check_invariants().unwrap();
}
