//! ephemera: a user-space TCP/IP stack on smoltcp that owns its own port table.
#![deny(missing_docs)]

pub mod buffer_pool;
pub mod counters;
pub mod demux;
pub mod device;
pub mod error;
pub mod port_table;
pub mod rng;
pub mod socket_set;
pub mod stack;
pub mod wire;

pub use counters::Counters;
pub use error::{
    AcceptError, BindError, ConnError, ConnectError, ListenError, RecvError, SendError,
};
pub use port_table::{FlowKey, PortTableConfig, Protocol};
pub use rng::{Rng, SeededRng};
pub use smoltcp::time::{Duration, Instant};
pub use stack::{
    ConfigError, Event, ListenerHandle, SocketInfo, Stack, StackConfig, TcpHandle, TcpState,
    UdpHandle,
};
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
