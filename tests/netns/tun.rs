//! The library's TUN device, inside a private network namespace.
//!
//! Each test runs on its own thread that first calls
//! `unshare(CLONE_NEWNET)`: the namespace belongs to that thread only and
//! disappears with it, so nothing is configured in the host's namespace and
//! no packet leaves it. Without the privilege to do so (not root, no
//! `CAP_SYS_ADMIN`/`CAP_NET_ADMIN`, no `/dev/net/tun`) the tests print SKIP
//! and pass.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::time::Duration;

use std::os::unix::io::AsFd;

use ephemera::device::tun::RxOffload;
use ephemera::device::{kernel_peer_addr, tun, Tun};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Run `f` on a fresh thread inside a fresh network namespace, or explain
/// why not and skip.
fn in_private_netns(name: &str, f: impl FnOnce() + Send + 'static) {
    let handle = std::thread::spawn(move || {
        // SAFETY: unshare(2) with a flag; affects this thread only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "/dev/net/tun is missing",
            ));
        }
        f();
        Ok(())
    });
    match handle.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("SKIP {name}: cannot make a private network namespace with a TUN: {e}")
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Read packets until one satisfies `want`, skipping the kernel's own
/// chatter (IPv6 router solicitations, MLD reports).
fn recv_matching(tun: &Tun, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut buf = vec![0u8; 65535];
    for _ in 0..50 {
        let mut fds = [PollFd::new(tun.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(2000u16)).unwrap() == 0 {
            break;
        }
        match tun.recv(&mut buf) {
            Ok(n) if want(&buf[..n]) => return buf[..n].to_vec(),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("recv: {e}"),
        }
    }
    panic!("no matching packet from the kernel");
}

#[test]
fn open_configure_and_exchange_packets() {
    in_private_netns("open_configure_and_exchange_packets", || {
        let stack: Ipv4Addr = "10.7.0.2".parse().unwrap();
        let IpAddr::V4(kernel) = kernel_peer_addr(IpAddr::V4(stack), 24).unwrap() else {
            unreachable!()
        };
        let stack6: Ipv6Addr = "fd00:7::2".parse().unwrap();
        let IpAddr::V6(kernel6) = kernel_peer_addr(IpAddr::V6(stack6), 64).unwrap() else {
            unreachable!()
        };

        let dev = Tun::open("ephtest0").unwrap();
        assert_eq!(dev.name(), "ephtest0");
        tun::set_mtu("ephtest0", 9000).unwrap();
        tun::set_ipv4("ephtest0", kernel, 24).unwrap();
        tun::add_ipv6("ephtest0", kernel6, 64).unwrap();
        tun::set_up("ephtest0").unwrap();

        assert_eq!(tun::mtu("ephtest0").unwrap(), 9000);
        assert_eq!(
            tun::ipv4("ephtest0").unwrap(),
            (Ipv4Addr::new(10, 7, 0, 1), 24)
        );
        assert_ne!(tun::flags("ephtest0").unwrap() & libc::IFF_UP, 0);
        // Adding the same IPv6 address twice is refused.
        assert_eq!(
            tun::add_ipv6("ephtest0", kernel6, 64)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EEXIST)
        );

        // Non-blocking: nothing queued for us yet (or only kernel chatter).
        let mut buf = [0u8; 2048];
        while dev.recv(&mut buf).is_ok() {}

        // A second open of the same interface is busy.
        let busy = Tun::open("ephtest0").unwrap_err();
        assert_eq!(busy.raw_os_error(), Some(libc::EBUSY), "{busy}");

        // Kernel -> stack: a UDP datagram to the stack's address comes out of the TUN.
        let sock = UdpSocket::bind((kernel, 0)).unwrap();
        sock.send_to(b"hello stack", (stack, 9999)).unwrap();
        let pkt = recv_matching(&dev, |p| p.len() > 20 && p[0] >> 4 == 4 && p[9] == 17);
        let ip = etherparse::SlicedPacket::from_ip(&pkt).unwrap();
        let Some(etherparse::NetSlice::Ipv4(v4)) = ip.net else {
            panic!("not IPv4")
        };
        assert_eq!(v4.header().destination_addr(), stack);
        assert_eq!(v4.header().source_addr(), kernel);
        let Some(etherparse::TransportSlice::Udp(udp)) = ip.transport else {
            panic!("not UDP")
        };
        assert_eq!(udp.destination_port(), 9999);
        assert_eq!(udp.payload(), b"hello stack");

        // Stack -> kernel: an ICMP echo request written to the TUN is answered.
        let payload = [0xabu8; 1200];
        let builder = etherparse::PacketBuilder::ipv4(stack.octets(), kernel.octets(), 64)
            .icmpv4_echo_request(7, 1);
        let mut req = Vec::new();
        builder.write(&mut req, &payload).unwrap();
        assert_eq!(dev.send(&req).unwrap(), req.len());
        let reply = recv_matching(&dev, |p| p.len() > 20 && p[0] >> 4 == 4 && p[9] == 1);
        let ip = etherparse::SlicedPacket::from_ip(&reply).unwrap();
        let Some(etherparse::NetSlice::Ipv4(v4)) = ip.net else {
            panic!("not IPv4")
        };
        assert_eq!(v4.header().destination_addr(), stack);
        let Some(etherparse::TransportSlice::Icmpv4(icmp)) = ip.transport else {
            panic!("not ICMP")
        };
        assert!(matches!(
            icmp.icmp_type(),
            etherparse::Icmpv4Type::EchoReply(_)
        ));
        assert_eq!(icmp.payload(), &payload[..]);

        // The same over IPv6.
        // The address stays tentative until the kernel's address
        // configuration work runs, a moment after link up.
        let sock6 = (0..200)
            .find_map(|_| {
                UdpSocket::bind((kernel6, 0))
                    .map_err(|_| std::thread::sleep(Duration::from_millis(10)))
                    .ok()
            })
            .expect("IPv6 address never became usable");
        sock6.send_to(b"hello v6", (stack6, 9998)).unwrap();
        let pkt = recv_matching(&dev, |p| p.len() > 40 && p[0] >> 4 == 6 && p[6] == 17);
        let ip = etherparse::SlicedPacket::from_ip(&pkt).unwrap();
        let Some(etherparse::TransportSlice::Udp(udp)) = ip.transport else {
            panic!("not UDP")
        };
        assert_eq!(udp.payload(), b"hello v6");

        drop(dev);
        // The interface was not persistent: closing removed it.
        assert!(tun::mtu("ephtest0").is_err());
    });
}

#[test]
fn configuring_a_missing_interface_fails_cleanly() {
    in_private_netns("configuring_a_missing_interface_fails_cleanly", || {
        let err = tun::set_mtu("ephnothere0", 1500).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{err}");
        assert!(tun::set_up("ephnothere0").is_err());
    });
}

#[test]
fn receive_offload_is_granted_and_partial_checksums_come_out_complete() {
    in_private_netns(
        "receive_offload_is_granted_and_partial_checksums_come_out_complete",
        || {
            // Without receive offload the kernel is asked for none.
            let plain = Tun::open_with_offload("ephtest1", false).unwrap();
            assert_eq!(plain.receive_offload(), RxOffload::NONE);
            drop(plain);

            let mut dev = Tun::open_with_offload("ephtest1", true).unwrap();
            // Every Linux since 2.6.27 takes the whole set.
            assert_eq!(dev.receive_offload(), RxOffload::ALL);
            assert_eq!(
                dev.receive_offload().to_string(),
                "checksum, TSO4, TSO6, TSO-ECN"
            );
            let kernel: Ipv4Addr = "10.7.0.1".parse().unwrap();
            let stack: Ipv4Addr = "10.7.0.2".parse().unwrap();
            tun::set_ipv4("ephtest1", kernel, 24).unwrap();
            tun::set_up("ephtest1").unwrap();
            let mut buf = vec![0u8; tun::MAX_PACKET];
            while dev.recv_segments(&mut buf, |_, _| {}).is_ok() {}

            // With TUN_F_CSUM the kernel leaves UDP checksums for the
            // device to fill in; recv_segments fills them in.
            let sock = UdpSocket::bind((kernel, 0)).unwrap();
            sock.send_to(&[0x5a; 999], (stack, 9999)).unwrap();
            let mut got = None;
            for _ in 0..50 {
                let mut fds = [PollFd::new(dev.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::from(2000u16)).unwrap() == 0 {
                    break;
                }
                let r = dev.recv_segments(&mut buf, |p, _| {
                    if p.len() > 28 && p[0] >> 4 == 4 && p[9] == 17 {
                        got = Some(p.to_vec());
                    }
                });
                if got.is_some() || matches!(r, Err(ref e) if e.kind() != io::ErrorKind::WouldBlock)
                {
                    break;
                }
            }
            let pkt = got.expect("no UDP datagram from the kernel");
            let ip = etherparse::SlicedPacket::from_ip(&pkt).unwrap();
            let Some(etherparse::TransportSlice::Udp(udp)) = ip.transport else {
                panic!("not UDP")
            };
            assert_eq!(udp.payload(), &[0x5a; 999][..]);
            assert!(ephemera::wire::checksum::verify_transport(
                IpAddr::V4(kernel),
                IpAddr::V4(stack),
                17,
                &pkt[20..]
            ));
            let counters = dev.rx_counters();
            assert!(counters.checksums_completed >= 1, "{counters:?}");
            assert_eq!(counters.drop_checksum_offsets, 0, "{counters:?}");
        },
    );
}
