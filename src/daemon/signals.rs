//! SIGINT and SIGTERM without threads: the self-pipe trick, through
//! `signal-hook`.
//!
//! For each signal, signal-hook's handler sets a flag and then writes a
//! byte to a non-blocking socket pair; the event loop polls the other end
//! with its other descriptors, so a signal wakes `poll(2)` at once even if
//! it arrived just before the loop went to sleep. [`SignalPipe::take`]
//! drains the socket before it reads the flags, so a signal that arrives
//! meanwhile wakes the next `poll(2)` instead of being lost. Only one
//! [`SignalPipe`] exists at a time; dropping it unregisters its actions.

use std::io::{self, Read};
use std::os::unix::io::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::SigId;

/// Whether a `SignalPipe` is alive.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The signals that ask the daemon to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

/// Catches SIGINT and SIGTERM while alive; poll [`SignalPipe::fd`] for
/// readability, then call [`SignalPipe::take`].
#[derive(Debug)]
pub struct SignalPipe {
    read: UnixStream,
    interrupt: Arc<AtomicBool>,
    terminate: Arc<AtomicBool>,
    ids: Vec<SigId>,
}

impl SignalPipe {
    /// Create the pipe and register the handlers. `AlreadyExists` if
    /// another `SignalPipe` is alive.
    pub fn install() -> io::Result<SignalPipe> {
        if INSTALLED.swap(true, Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "signal handlers already installed",
            ));
        }
        let pair = UnixStream::pair().and_then(|(read, write)| {
            read.set_nonblocking(true)?;
            write.set_nonblocking(true)?;
            Ok((read, write))
        });
        let (read, write) = pair.inspect_err(|_| INSTALLED.store(false, Ordering::SeqCst))?;
        // From here on, dropping `pipe` on an error unregisters what was
        // registered and frees the slot.
        let mut pipe = SignalPipe {
            read,
            interrupt: Arc::default(),
            terminate: Arc::default(),
            ids: Vec::new(),
        };
        for (sig, flag) in [(SIGINT, &pipe.interrupt), (SIGTERM, &pipe.terminate)] {
            // The flag first, then the byte: whoever wakes for the byte
            // finds the flag set.
            pipe.ids
                .push(signal_hook::flag::register(sig, Arc::clone(flag))?);
            let id = signal_hook::low_level::pipe::register(sig, write.try_clone()?)?;
            pipe.ids.push(id);
        }
        Ok(pipe)
    }

    /// The pipe's read end: readable once a signal has arrived.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// The signal that arrived since the last call, if any (SIGTERM when
    /// both did). Drains the pipe first.
    pub fn take(&self) -> Option<Signal> {
        let mut buf = [0u8; 64];
        while matches!((&self.read).read(&mut buf), Ok(n) if n > 0) {}
        let interrupt = self.interrupt.swap(false, Ordering::SeqCst);
        if self.terminate.swap(false, Ordering::SeqCst) {
            Some(Signal::Terminate)
        } else if interrupt {
            Some(Signal::Interrupt)
        } else {
            None
        }
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
        INSTALLED.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::poll::wait_readable;
    use signal_hook::low_level::raise;
    use std::time::Duration;

    #[test]
    fn signals_wake_the_pipe_and_are_taken_once() {
        let pipe = SignalPipe::install().unwrap();
        assert_eq!(
            SignalPipe::install().unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert!(!wait_readable(pipe.fd(), Some(Duration::ZERO)).unwrap());
        assert_eq!(pipe.take(), None);

        raise(SIGTERM).unwrap();
        assert!(wait_readable(pipe.fd(), Some(Duration::from_secs(1))).unwrap());
        assert_eq!(pipe.take(), Some(Signal::Terminate));
        assert!(!wait_readable(pipe.fd(), Some(Duration::ZERO)).unwrap());
        assert_eq!(pipe.take(), None);

        raise(SIGINT).unwrap();
        assert_eq!(pipe.take(), Some(Signal::Interrupt));
        drop(pipe);

        // Dropping unregistered the actions and freed the slot.
        let again = SignalPipe::install().unwrap();
        drop(again);
    }
}
