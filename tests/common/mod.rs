//! Shared helpers for the virtual-link integration tests.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};

use ephemera::device::virtual_link::{LinkConfig, Network};
use ephemera::{Instant, Stack, StackConfig};

pub const CLIENT: &str = "10.0.0.1";
pub const SERVER: &str = "10.0.0.2";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn config(addr: &str, seed: u64) -> StackConfig {
    StackConfig {
        addrs: vec![(ip(addr), 24)],
        seed: Some(seed),
        ..Default::default()
    }
}

/// A client stack (index 0, 10.0.0.1) and a server stack (index 1,
/// 10.0.0.2) on one link.
pub fn pair(link: LinkConfig, client: StackConfig, server: StackConfig) -> Network {
    let mut net = Network::new(link);
    let t0 = Instant::from_millis(0);
    let c_addrs: Vec<IpAddr> = client.addrs.iter().map(|a| a.0).collect();
    let s_addrs: Vec<IpAddr> = server.addrs.iter().map(|a| a.0).collect();
    net.add(Stack::new(client, t0).unwrap(), &c_addrs);
    net.add(Stack::new(server, t0).unwrap(), &s_addrs);
    net
}

pub fn default_pair(seed: u64) -> Network {
    pair(
        LinkConfig {
            seed,
            ..Default::default()
        },
        config(CLIENT, seed),
        config(SERVER, seed + 1),
    )
}

/// A 64-bit FNV-1a checksum, to compare streams without keeping them.
pub fn fnv(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= b as u64;
        *hash = hash.wrapping_mul(0x100_0000_01b3);
    }
}

pub const FNV_INIT: u64 = 0xcbf2_9ce4_8422_2325;
