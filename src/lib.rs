//! ephemera: a user-space TCP/IP stack on smoltcp that owns its own port table.
//!
//! A [`Stack`] is sans-IO: it takes IP packets and the time in
//! ([`Stack::handle_packet`]) and hands packets and deadlines out
//! ([`Stack::poll_transmit`], [`Stack::poll_at`]); the application talks
//! to it through handles ([`TcpHandle`], [`ListenerHandle`], [`UdpHandle`])
//! and [`Event`]s. Around it:
//!
//! - [`port_table`]: binds, RFC 6056 ephemeral ports, the 4-tuple index
//!   and TIME-WAIT, a pure module usable on its own;
//! - [`device`]: the in-memory [`virtual_link`](device::virtual_link) for
//!   tests and simulations, and the TUN device, the pcap writer and the
//!   steering program of a multi-queue TUN for driving stacks on a real
//!   host;
//! - [`wire`]: the TCP header view, the packet builder and DNS messages.
#![deny(missing_docs)]
// Every unsafe block and impl says why it is sound, and an unsafe fn's
// body marks its own unsafe operations.
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

mod buffer_pool;
mod counters;
mod demux;
pub mod device;
mod error;
pub mod port_table;
mod rng;
mod stack;
pub mod wire;

pub use counters::Counters;
pub use error::{
    AcceptError, BindError, ConnError, ConnectError, ListenError, RecvError, SendError,
};
pub use port_table::{FlowKey, PortTableConfig, Protocol};
pub use rng::{Rng, SeededRng};
pub use smoltcp::time::{Duration, Instant};
pub use stack::{
    BudgetUse, ConfigError, CongestionControl, Event, ListenerHandle, Owner, SocketInfo,
    SocketState, Stack, StackConfig, SynCookies, TcpHandle, TcpState, Transmit, UdpHandle,
    UnknownCongestionControl, SPARE_TX_BUFFERS, TIME_WAIT_BATCH,
};

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
