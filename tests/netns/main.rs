//! The `ephemera` binary on real TUN devices, in network namespaces the
//! tests make themselves: [`daemon`] runs `ephemera up` with real clients,
//! [`hardening`] with hostile ones and other local users, [`budget`] holds
//! its memory budget against 20,000 clients that never read,
//! [`tun`] drives the library's TUN device directly, [`offload`] moves
//! bulk data both ways with receive offload on and off, [`syn_flood`]
//! downloads with curl through a SYN flood, [`queues`] runs one stack
//! shard per queue of a multi-queue TUN (`--queues`). Nothing is configured
//! in the host's namespace.
//!
//! Needs root, `ip` (iproute2) and `/dev/net/tun`; without them each test
//! prints `SKIP <test>: <reason>` on stderr and passes.

mod budget;
mod daemon;
mod dns;
mod hardening;
mod harness;
mod offload;
mod queues;
mod socks_udp;
mod syn_flood;
mod tun;
