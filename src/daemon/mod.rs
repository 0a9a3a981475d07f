//! The daemon: event loop, control socket and built-in services.

pub mod control;
pub mod http;
pub mod privileges;
pub mod signals;
pub mod socks;
