//! One error enum per operation, each variant naming the Linux errno a
//! socket user would get for the same failure.

use std::fmt;
use std::io;

/// Linux errno values used below (asm-generic/errno.h).
pub(crate) mod errno {
    /// Bad file descriptor (stale handle).
    pub(crate) const EBADF: i32 = 9;
    /// Resource temporarily unavailable.
    pub(crate) const EAGAIN: i32 = 11;
    /// Invalid argument.
    pub(crate) const EINVAL: i32 = 22;
    /// Destination address required.
    pub(crate) const EDESTADDRREQ: i32 = 89;
    /// Broken pipe.
    pub(crate) const EPIPE: i32 = 32;
    /// Message too long.
    pub(crate) const EMSGSIZE: i32 = 90;
    /// Address already in use.
    pub(crate) const EADDRINUSE: i32 = 98;
    /// Cannot assign requested address.
    pub(crate) const EADDRNOTAVAIL: i32 = 99;
    /// Network is unreachable.
    pub(crate) const ENETUNREACH: i32 = 101;
    /// No buffer space available.
    pub(crate) const ENOBUFS: i32 = 105;
    /// Connection reset by peer.
    pub(crate) const ECONNRESET: i32 = 104;
    /// Transport endpoint is already connected.
    pub(crate) const EISCONN: i32 = 106;
    /// Transport endpoint is not connected.
    pub(crate) const ENOTCONN: i32 = 107;
    /// Connection timed out.
    pub(crate) const ETIMEDOUT: i32 = 110;
    /// Connection refused.
    pub(crate) const ECONNREFUSED: i32 = 111;
}

macro_rules! error_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$doc:meta])* $var:ident => ($errno:ident, $msg:literal),)* }) => {
        $(#[$m])*
        #[derive(Copy, Clone, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$doc])* $var,)*
        }

        impl $name {
            /// The Linux errno for this error.
            pub fn errno(self) -> i32 {
                match self { $($name::$var => errno::$errno,)* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self { $($name::$var => write!(f, "{} ({})", $msg, stringify!($errno)),)* }
            }
        }

        impl std::error::Error for $name {}

        impl From<$name> for io::Error {
            fn from(e: $name) -> io::Error {
                io::Error::from_raw_os_error(e.errno())
            }
        }
    };
}

error_enum! {
    /// Why `listen` failed.
    ListenError {
        /// EADDRINUSE: another listener holds an overlapping address.
        AddrInUse => (EADDRINUSE, "address already in use"),
        /// EADDRNOTAVAIL: the address is not one of the stack's.
        AddrNotAvailable => (EADDRNOTAVAIL, "cannot assign requested address"),
    }
}

error_enum! {
    /// Why `udp_bind` failed.
    BindError {
        /// EADDRINUSE: another socket holds an overlapping address.
        AddrInUse => (EADDRINUSE, "address already in use"),
        /// EADDRNOTAVAIL: the address is not one of the stack's.
        AddrNotAvailable => (EADDRNOTAVAIL, "cannot assign requested address"),
    }
}

error_enum! {
    /// Why `connect` failed at once. (Failures that come later — refused,
    /// reset, timed out — surface from `send`/`recv` as their errors.)
    ConnectError {
        /// EADDRNOTAVAIL: no free ephemeral port towards this destination,
        /// the explicit 4-tuple is taken, or the local address is not ours.
        AddrNotAvailable => (EADDRNOTAVAIL, "cannot assign requested address"),
        /// ENETUNREACH: the stack has no address of the remote's family.
        NetworkUnreachable => (ENETUNREACH, "network is unreachable"),
        /// EINVAL: the remote address is unspecified or its port is 0.
        InvalidAddress => (EINVAL, "invalid remote address"),
        /// ENOBUFS: the memory budget has no room for another connection
        /// (`StackConfig::max_memory`), or no memory could be reserved for
        /// the socket's buffers.
        NoBuffers => (ENOBUFS, "no buffer space available"),
        /// ENOBUFS: `StackConfig::max_connections` connections are open.
        ConnectionLimit => (ENOBUFS, "connection limit reached"),
        /// EBADF: the handle is stale (`udp_connect_bound`).
        InvalidHandle => (EBADF, "stale socket handle"),
    }
}

error_enum! {
    /// Why `accept` returned no connection.
    AcceptError {
        /// EAGAIN: the accept queue is empty.
        WouldBlock => (EAGAIN, "no connection waiting"),
        /// EBADF: the handle names no listener.
        InvalidHandle => (EBADF, "not a listener"),
    }
}

error_enum! {
    /// Why `send` or `send_to` moved no data.
    SendError {
        /// EAGAIN: the send buffer is full, or the connection is not yet
        /// established.
        WouldBlock => (EAGAIN, "send buffer full"),
        /// EPIPE: this side has shut down writing.
        BrokenPipe => (EPIPE, "broken pipe"),
        /// ENOTCONN: the connection never opened.
        NotConnected => (ENOTCONN, "not connected"),
        /// ECONNREFUSED: the peer refused the connection.
        ConnectionRefused => (ECONNREFUSED, "connection refused"),
        /// ECONNRESET: the peer reset the connection.
        ConnectionReset => (ECONNRESET, "connection reset by peer"),
        /// ETIMEDOUT: the peer stopped answering.
        TimedOut => (ETIMEDOUT, "connection timed out"),
        /// EMSGSIZE: the datagram does not fit the MTU.
        MessageTooLong => (EMSGSIZE, "message too long"),
        /// EINVAL: unspecified destination or port 0.
        InvalidAddress => (EINVAL, "invalid destination"),
        /// EDESTADDRREQ: `udp_send` on a socket that is not connected.
        DestinationRequired => (EDESTADDRREQ, "destination address required"),
        /// EISCONN: `udp_send_to` another address than a connected
        /// socket's peer.
        AlreadyConnected => (EISCONN, "socket is connected to another peer"),
        /// EBADF: the handle is stale.
        InvalidHandle => (EBADF, "stale socket handle"),
    }
}

error_enum! {
    /// Why `recv` or `recv_from` returned no data. End of stream is
    /// `Ok(0)`, as with a socket.
    RecvError {
        /// EAGAIN: nothing received yet.
        WouldBlock => (EAGAIN, "no data yet"),
        /// ENOTCONN: the connection never opened.
        NotConnected => (ENOTCONN, "not connected"),
        /// ECONNREFUSED: the peer refused the connection.
        ConnectionRefused => (ECONNREFUSED, "connection refused"),
        /// ECONNRESET: the peer reset the connection.
        ConnectionReset => (ECONNRESET, "connection reset by peer"),
        /// ETIMEDOUT: the peer stopped answering.
        TimedOut => (ETIMEDOUT, "connection timed out"),
        /// EBADF: the handle is stale.
        InvalidHandle => (EBADF, "stale socket handle"),
    }
}

/// How a TCP connection failed, kept until the application looks.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ConnError {
    /// RST (or ICMP port unreachable) in answer to our SYN.
    Refused,
    /// RST on a synchronized connection.
    Reset,
    /// Retransmissions or the user timeout ran out.
    TimedOut,
}

impl From<ConnError> for SendError {
    fn from(e: ConnError) -> SendError {
        match e {
            ConnError::Refused => SendError::ConnectionRefused,
            ConnError::Reset => SendError::ConnectionReset,
            ConnError::TimedOut => SendError::TimedOut,
        }
    }
}

impl From<ConnError> for RecvError {
    fn from(e: ConnError) -> RecvError {
        match e {
            ConnError::Refused => RecvError::ConnectionRefused,
            ConnError::Reset => RecvError::ConnectionReset,
            ConnError::TimedOut => RecvError::TimedOut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_linux_errnos_and_io_messages() {
        assert_eq!(ListenError::AddrInUse.errno(), 98);
        assert_eq!(ConnectError::AddrNotAvailable.errno(), 99);
        assert_eq!(RecvError::ConnectionRefused.errno(), 111);
        assert_eq!(SendError::DestinationRequired.errno(), 89);
        assert_eq!(SendError::AlreadyConnected.errno(), 106);
        let io: io::Error = ConnectError::AddrNotAvailable.into();
        assert_eq!(io.raw_os_error(), Some(99));
        assert_eq!(
            ListenError::AddrInUse.to_string(),
            "address already in use (EADDRINUSE)"
        );
    }
}
