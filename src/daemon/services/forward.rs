//! `--forward LPORT=HOST:PORT`: each accepted client is relayed to the
//! target, from an ephemeral port of the stack's table; a target named
//! by a name is looked up for each client, who waits meanwhile.

use log::debug;

use ephemera::{Stack, TcpHandle, TcpState};

use super::lookup::{LookupId, LookupResult, Waiter};
use super::registry::Forward;
use super::relay::{Direction, Relay};
use super::session::{connect_any, Pump, Session, SessionId};
use super::Services;
use crate::daemon::host::Host;

/// A forwarded client waiting for its target's name. Its bytes stay in
/// the stack (its window closes) until the relay starts.
#[derive(Debug)]
pub(super) struct ForwardWait {
    pub(super) client: TcpHandle,
    forward: Forward,
    pub(super) lookup: LookupId,
}

impl ForwardWait {
    /// Watch the waiting client: it may reset or time out meanwhile.
    pub(super) fn pump(&self, stack: &mut Stack) -> Pump {
        match stack.tcp_state(self.client) {
            Some(TcpState::Closed) | None => {
                stack.abort(self.client);
                Pump::Ended
            }
            _ => Pump::Idle,
        }
    }
}

impl Services {
    /// Relay accepted client `h` to `forward`'s target: at once for an
    /// address, once it is looked up for a name. Returns the session now
    /// serving the client; a target the stack cannot connect to, or a
    /// lookup refused, resets the client instead.
    pub(super) fn accept_forward(
        &mut self,
        stack: &mut Stack,
        h: TcpHandle,
        forward: &Forward,
    ) -> Option<SessionId> {
        match &forward.host {
            Host::Ip(ip) => match connect_any(stack, &[(*ip, forward.port).into()]) {
                Ok((up, _)) => {
                    let relay = Relay::new(h, up, Direction::default());
                    Some(self.sessions.add(Session::Relay(relay), self.now))
                }
                Err(e) => {
                    debug!("forward {forward} failed: {e:?}");
                    stack.abort(h);
                    None
                }
            },
            Host::Name(name) => {
                // The relay starts once the name is answered.
                let sid = self.sessions.reserve();
                let waiter = Waiter::Session(sid);
                match self.dns.start(self.now, name, forward.port, waiter) {
                    Ok(lookup) => {
                        let wait = ForwardWait {
                            client: h,
                            forward: forward.clone(),
                            lookup,
                        };
                        self.sessions
                            .insert(sid, Session::Resolving(wait), self.now);
                        Some(sid)
                    }
                    Err(e) => {
                        debug!("forward {forward}: {e}");
                        stack.abort(h);
                        None
                    }
                }
            }
        }
    }

    /// The answer for forwarded client `sid`: start the relay (and say
    /// so: it wants a pump), or reset the client as for a target the
    /// stack cannot reach.
    pub(super) fn forward_resolved(
        &mut self,
        stack: &mut Stack,
        sid: SessionId,
        answer: LookupResult,
    ) -> bool {
        let Some(entry) = self.sessions.get_mut(sid) else {
            return false;
        };
        let Session::Resolving(f) = &entry.session else {
            return false;
        };
        let (client, forward) = (f.client, f.forward.clone());
        let connected = answer
            .map_err(|e| e.to_string())
            .and_then(|addrs| connect_any(stack, &addrs).map_err(|e| format!("{e:?}")));
        match connected {
            Ok((up, _)) => {
                entry.session = Session::Relay(Relay::new(client, up, Direction::default()));
                self.sessions.adopt(up, sid);
                true
            }
            Err(why) => {
                debug!("forward {forward} failed: {why}");
                self.remove_session(sid);
                stack.abort(client);
                false
            }
        }
    }
}
