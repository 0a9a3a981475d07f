//! ephemera: a user-space TCP/IP stack on smoltcp that owns its own port table.
#![deny(missing_docs)]

pub mod daemon;
pub mod demux;
pub mod device;
pub mod port_table;
pub mod rng;
