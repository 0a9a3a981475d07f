//! Every virtual-link integration test, in one binary: whole stacks over
//! the in-memory link with a simulated clock, seeded impairments and a
//! step limit. No root, no devices.
//!
//! The code they share is in [`util`]; [`alloc`] counts heap bytes per
//! thread for the tests that bound memory (churn, SYN flood).

mod alloc;
mod util;

mod churn;
mod congestion;
mod core;
mod hostile;
mod malformed;
mod memory;
mod misbehaving;
mod reliability;
mod sequence;
mod shards;
mod syn_cookies;
mod syn_flood;
mod syn_queue;
mod tcp_basic;
mod time_wait;
mod udp;
