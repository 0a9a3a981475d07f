//! SIGINT and SIGTERM without threads: the self-pipe trick.
//!
//! The handler records the signal in an atomic and writes one byte to a
//! non-blocking pipe; the event loop polls the pipe's read end with its other
//! descriptors, so a signal wakes `poll(2)` at once even if it arrived just
//! before the loop went to sleep. Only one [`SignalPipe`] exists at a time;
//! dropping it restores the previous handlers.

use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Write end of the pipe, for the handler; -1 when none is installed.
static WRITE_FD: AtomicI32 = AtomicI32::new(-1);
/// The last signal caught and not yet taken; 0 for none.
static PENDING: AtomicI32 = AtomicI32::new(0);
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

const HANDLED: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe work here: atomics and write(2), with errno
    // preserved for the code we interrupted.
    // SAFETY: __errno_location returns this thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    PENDING.store(sig, Ordering::SeqCst);
    let fd = WRITE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // A full pipe already means "wake up": ignore EAGAIN.
        // SAFETY: writing one byte from a static buffer.
        unsafe { libc::write(fd, b"s".as_ptr().cast(), 1) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Catches SIGINT and SIGTERM while alive; poll [`SignalPipe::fd`] for
/// readability, then call [`SignalPipe::take`].
#[derive(Debug)]
pub struct SignalPipe {
    read: OwnedFd,
    _write: OwnedFd,
    previous: [libc::sigaction; 2],
}

impl SignalPipe {
    /// Create the pipe and install the handlers. `AlreadyExists` if another
    /// `SignalPipe` is alive.
    pub fn install() -> io::Result<SignalPipe> {
        if INSTALLED.swap(true, Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "signal handlers already installed",
            ));
        }
        match Self::install_inner() {
            Ok(p) => Ok(p),
            Err(e) => {
                WRITE_FD.store(-1, Ordering::SeqCst);
                INSTALLED.store(false, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    fn install_inner() -> io::Result<SignalPipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptors owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        PENDING.store(0, Ordering::SeqCst);
        WRITE_FD.store(write.as_raw_fd(), Ordering::SeqCst);

        // SAFETY: sigaction is plain data; zeroed then filled in.
        let mut previous: [libc::sigaction; 2] = unsafe { std::mem::zeroed() };
        for (i, &sig) in HANDLED.iter().enumerate() {
            // SAFETY: installing an async-signal-safe handler with an
            // empty mask; `previous[i]` receives the old action.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(sig, &action, &mut previous[i]) != 0 {
                    let err = io::Error::last_os_error();
                    for (j, &done) in HANDLED.iter().enumerate().take(i) {
                        libc::sigaction(done, &previous[j], std::ptr::null_mut());
                    }
                    return Err(err);
                }
            }
        }
        Ok(SignalPipe {
            read,
            _write: write,
            previous,
        })
    }

    /// The pipe's read end: readable once a signal has arrived.
    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// The signal that arrived since the last call, if any (the last one
    /// when several did). Drains the pipe.
    pub fn take(&self) -> Option<Signal> {
        let mut buf = [0u8; 64];
        // SAFETY: reading into a local buffer from our non-blocking pipe.
        while unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {
        }
        match PENDING.swap(0, Ordering::SeqCst) {
            libc::SIGINT => Some(Signal::Interrupt),
            libc::SIGTERM => Some(Signal::Terminate),
            _ => None,
        }
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        for (i, &sig) in HANDLED.iter().enumerate() {
            // SAFETY: restoring the action saved at install.
            unsafe { libc::sigaction(sig, &self.previous[i], std::ptr::null_mut()) };
        }
        WRITE_FD.store(-1, Ordering::SeqCst);
        INSTALLED.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ephemera::device::wait_readable;
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

        // SAFETY: raise(3) delivers to this thread, where our handler runs.
        unsafe { libc::raise(libc::SIGTERM) };
        assert!(wait_readable(pipe.fd(), Some(Duration::from_secs(1))).unwrap());
        assert_eq!(pipe.take(), Some(Signal::Terminate));
        assert!(!wait_readable(pipe.fd(), Some(Duration::ZERO)).unwrap());
        assert_eq!(pipe.take(), None);

        // SAFETY: as above.
        unsafe { libc::raise(libc::SIGINT) };
        assert_eq!(pipe.take(), Some(Signal::Interrupt));
        drop(pipe);

        // Dropping restored the handlers and freed the slot.
        let again = SignalPipe::install().unwrap();
        drop(again);
    }
}
