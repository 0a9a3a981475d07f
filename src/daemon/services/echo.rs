//! Echo (RFC 862): TCP sends back whatever arrives; UDP answers each
//! datagram with itself.

use ephemera::{RecvError, Stack, TcpHandle, UdpHandle};

use super::relay::CHUNK;
use super::session::{progress, OutBuf, Pump};

/// Source ports an echo reply is never sent to: services that answer
/// every datagram (echo, discard, daytime, chargen, time), so that two
/// of them cannot be made to bounce packets between each other forever.
const NO_ECHO_TO: [u16; 7] = [0, 7, 9, 13, 17, 19, 37];

/// One TCP echo client.
#[derive(Debug)]
pub(super) struct EchoSession {
    pub(super) conn: TcpHandle,
    out: OutBuf,
    eof: bool,
}

impl EchoSession {
    pub(super) fn new(conn: TcpHandle) -> EchoSession {
        EchoSession {
            conn,
            out: OutBuf::default(),
            eof: false,
        }
    }

    /// Send back what arrived; close after the client's FIN.
    pub(super) fn pump(&mut self, stack: &mut Stack, scratch: &mut [u8]) -> Pump {
        let mut any = false;
        loop {
            // Read only once the last read has been handed to the stack,
            // so a client that does not read its echo is slowed down by
            // its own window.
            let mut moved = match self.out.flush(stack, self.conn, scratch, |_| 0) {
                Ok(m) => m,
                Err(_) => {
                    stack.abort(self.conn);
                    return Pump::Ended;
                }
            };
            if self.out.is_empty() {
                if self.eof {
                    stack.close(self.conn);
                    return Pump::Ended;
                }
                let n = CHUNK.min(scratch.len());
                match stack.recv(self.conn, &mut scratch[..n]) {
                    Ok(0) => self.eof = true,
                    Ok(k) => {
                        self.out.buf.clear();
                        self.out.buf.extend_from_slice(&scratch[..k]);
                        self.out.pos = 0;
                    }
                    Err(RecvError::WouldBlock) => return progress(any),
                    Err(_) => {
                        stack.abort(self.conn);
                        return Pump::Ended;
                    }
                }
                moved = true;
            }
            if !moved {
                return progress(any);
            }
            any = true;
        }
    }
}

/// Answer every datagram waiting on `u` with itself. `scratch` holds the
/// largest datagram.
pub(super) fn serve_udp(stack: &mut Stack, u: UdpHandle, scratch: &mut [u8]) {
    while let Ok((n, from)) = stack.udp_recv_from(u, scratch) {
        if !NO_ECHO_TO.contains(&from.port()) {
            // A full send buffer drops the reply: UDP promises nothing.
            let _ = stack.udp_send_to(u, &scratch[..n], from);
        }
    }
}
