//! Discard (RFC 863): whatever arrives is thrown away; TCP closes when
//! the client does.

use ephemera::{RecvError, Stack, TcpHandle, UdpHandle};

use super::session::{progress, Pump};

/// Read and drop what connection `h` received.
pub(super) fn pump(stack: &mut Stack, h: TcpHandle, scratch: &mut [u8]) -> Pump {
    let mut any = false;
    loop {
        match stack.recv(h, scratch) {
            Ok(0) => {
                stack.close(h);
                return Pump::Ended;
            }
            Ok(_) => any = true,
            Err(RecvError::WouldBlock) => return progress(any),
            Err(_) => {
                stack.abort(h);
                return Pump::Ended;
            }
        }
    }
}

/// Drop every datagram waiting on `u`.
pub(super) fn serve_udp(stack: &mut Stack, u: UdpHandle, scratch: &mut [u8]) {
    while stack.udp_recv_from(u, scratch).is_ok() {}
}
