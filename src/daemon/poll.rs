//! Waiting on descriptors: `poll(2)` through nix, with the timeout
//! rounded up to whole milliseconds so that a deadline a fraction of a
//! millisecond away never turns into a busy loop.

use std::io;
use std::os::unix::io::BorrowedFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFlags, PollTimeout};

pub use nix::poll::PollFd;

/// Wait for `fd` to be readable (and, if `writable`, writable too).
pub fn interest(fd: BorrowedFd<'_>, writable: bool) -> PollFd<'_> {
    let mut events = PollFlags::POLLIN;
    if writable {
        events |= PollFlags::POLLOUT;
    }
    PollFd::new(fd, events)
}

/// Wait until one of `fds` is ready or `timeout` passes (`None` waits
/// forever). Returns how many are ready; 0 on timeout or when a signal
/// interrupted the wait (the caller checks its signals).
pub fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    match nix::poll::poll(fds, timeout_ms(timeout)) {
        Ok(n) => Ok(usize::try_from(n).unwrap_or(0)),
        Err(Errno::EINTR) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Wait until `fd` is readable or `timeout` passes (`None`: forever).
/// Returns whether it is readable (or hung up, or in error: a read will
/// then say what happened); `false` on timeout or signal.
#[cfg(test)]
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let mut fds = [interest(fd, false)];
    poll(&mut fds, timeout)?;
    Ok(readable(&fds[0]))
}

/// Whether the last [`poll`] found `fd` readable (or hung up, or in
/// error: a read will then say what happened).
pub fn readable(fd: &PollFd<'_>) -> bool {
    let ready = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
    fd.revents().is_some_and(|r| r.intersects(ready))
}

/// Whether the last [`poll`] found `fd` ready for anything it was asked
/// about (or hung up, or in error).
pub fn ready(fd: &PollFd<'_>) -> bool {
    fd.revents().is_some_and(|r| !r.is_empty())
}

/// `poll(2)`'s timeout: none for `None`, whole milliseconds rounded up,
/// capped at `i32::MAX`.
fn timeout_ms(timeout: Option<Duration>) -> PollTimeout {
    match timeout {
        None => PollTimeout::NONE,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000);
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsFd;

    #[test]
    fn timeout_rounds_up() {
        assert_eq!(timeout_ms(None), PollTimeout::NONE);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), PollTimeout::ZERO);
        let ms = |d| timeout_ms(Some(d)).as_millis();
        assert_eq!(ms(Duration::from_micros(1)), Some(1));
        assert_eq!(ms(Duration::from_micros(1500)), Some(2));
        assert_eq!(ms(Duration::from_millis(7)), Some(7));
        assert_eq!(
            timeout_ms(Some(Duration::from_secs(u64::MAX))),
            PollTimeout::MAX
        );
    }

    #[test]
    fn wait_readable_on_a_pipe() {
        let (r, w) = nix::unistd::pipe().unwrap();
        assert!(!wait_readable(r.as_fd(), Some(Duration::from_millis(1))).unwrap());
        let mut quiet = [interest(r.as_fd(), false)];
        assert_eq!(poll(&mut quiet, Some(Duration::ZERO)).unwrap(), 0);
        assert!(!ready(&quiet[0]));
        assert_eq!(nix::unistd::write(&w, b"x").unwrap(), 1);
        assert!(wait_readable(r.as_fd(), None).unwrap());
        let mut set = [interest(r.as_fd(), false), interest(w.as_fd(), true)];
        assert_eq!(poll(&mut set, Some(Duration::ZERO)).unwrap(), 2);
        let has = |p: &PollFd<'_>, f: PollFlags| p.revents().is_some_and(|r| r.contains(f));
        assert!(has(&set[0], PollFlags::POLLIN));
        assert!(ready(&set[0]) && ready(&set[1]));
        assert!(has(&set[1], PollFlags::POLLOUT) && !has(&set[1], PollFlags::POLLIN));
    }
}
