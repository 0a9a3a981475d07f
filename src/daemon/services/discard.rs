//! Discard (RFC 863): whatever arrives is thrown away; TCP closes when
//! the client does.

use ephemera::{RecvError, Stack, TcpHandle, UdpHandle};

use super::session::{progress, Pump};

/// The most consumed per call: no limit, so one call empties the
/// receive ring.
const ALL: usize = usize::MAX;

/// Drop what connection `h` received, without copying it out of the
/// stack's receive ring.
pub(super) fn pump(stack: &mut Stack, h: TcpHandle) -> Pump {
    let mut any = false;
    loop {
        match stack.recv_discard(h, ALL) {
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
