//! The daemon: event loop, control socket and built-in services.

pub mod http;
pub mod socks;
