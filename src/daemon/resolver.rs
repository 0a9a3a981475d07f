//! Name lookups off the event loop: a few worker threads run a blocking
//! resolver function (the system's `getaddrinfo`, by default) behind a
//! bounded queue, and wake the loop through an eventfd when an answer is
//! ready.
//!
//! The loop never waits on DNS: [`ResolverPool::submit`] queues the lookup
//! or refuses it at once, [`ResolverPool::poll_answer`] takes what is
//! ready, and the eventfd, in the loop's `poll(2)` set, ends its sleep as
//! soon as a worker has an answer. A lookup takes as long as the function
//! takes; for `getaddrinfo` resolv.conf bounds that (`timeout` ×
//! `attempts` per name server: 5 s × 2 by default). The services put their
//! own limit on how long a client waits (`ServicesConfig::lookup_timeout`).
//!
//! Invariants: at most `workers` lookups run and at most `queue` wait, so
//! the pool's memory and threads are bounded whatever clients ask. A
//! worker sends its answer before it signals the eventfd, and
//! `poll_answer` clears the eventfd before it looks for answers, so an
//! answer is never left behind a cleared wake-up. Threads start with the
//! first lookup: a daemon that never resolves a name runs none. Dropping
//! the pool lets idle workers exit; a worker inside a slow lookup finishes
//! it, and its answer is dropped.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::io::{AsFd, BorrowedFd};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use super::services::{LookupId, Resolver};

/// A blocking resolver function, run on the pool's threads: host and port
/// in, addresses out.
pub type ResolveFn = dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync;

/// Worker threads of the daemon's pool: lookups of a slow name server
/// proceed side by side, and a few stuck ones do not hold up the rest.
pub const DEFAULT_WORKERS: usize = 4;

/// The system resolver, through [`ToSocketAddrs`] (`getaddrinfo`). It
/// blocks the caller while it asks DNS, for as long as resolv.conf allows:
/// run it on a [`ResolverPool`], never on the event loop.
pub fn system_resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

/// [`system_resolve`]'s IPv4 answers for `host`, and its IPv6 ones with
/// `ipv6`: the families the stack has addresses of. Blocks likewise.
pub fn resolve_families(host: &str, port: u16, ipv6: bool) -> io::Result<Vec<SocketAddr>> {
    Ok(system_resolve(host, port)?
        .into_iter()
        .filter(|a| a.is_ipv4() || ipv6)
        .collect())
}

/// One lookup for a worker.
type Job = (LookupId, String, u16);
/// One answer for the loop.
type Answer = (LookupId, io::Result<Vec<SocketAddr>>);

/// A [`Resolver`] that runs a blocking function on worker threads. See
/// the [module docs](self).
pub struct ResolverPool {
    resolve: Arc<ResolveFn>,
    workers: usize,
    queue: usize,
    running: Option<Running>,
    /// Lookups accepted and not yet taken by `poll_answer`.
    outstanding: usize,
}

/// The threads' side, once started.
struct Running {
    jobs: SyncSender<Job>,
    answers: Receiver<Answer>,
    wake: Arc<EventFd>,
}

impl fmt::Debug for ResolverPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolverPool")
            .field("workers", &self.workers)
            .field("queue", &self.queue)
            .field("started", &self.running.is_some())
            .field("outstanding", &self.outstanding)
            .finish()
    }
}

impl ResolverPool {
    /// A pool of `workers` threads (at least one) running `resolve`, with
    /// room for `queue` lookups waiting for a free worker; more are
    /// refused (`WouldBlock`). Nothing starts until the first lookup.
    pub fn new(
        resolve: impl Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
        workers: usize,
        queue: usize,
    ) -> ResolverPool {
        ResolverPool {
            resolve: Arc::new(resolve),
            workers: workers.max(1),
            queue,
            running: None,
            outstanding: 0,
        }
    }

    /// Start the workers, if not yet done.
    fn running(&mut self) -> io::Result<&Running> {
        if self.running.is_none() {
            let wake = Arc::new(EventFd::new()?);
            let (jobs, job_rx) = mpsc::sync_channel::<Job>(self.queue);
            let (answer_tx, answers) = mpsc::channel::<Answer>();
            let job_rx = Arc::new(Mutex::new(job_rx));
            let mut started = 0;
            let mut error = None;
            for i in 0..self.workers {
                let (job_rx, answer_tx, wake, resolve) = (
                    job_rx.clone(),
                    answer_tx.clone(),
                    wake.clone(),
                    self.resolve.clone(),
                );
                match std::thread::Builder::new()
                    .name(format!("ephemera-dns{i}"))
                    .spawn(move || work(&job_rx, &answer_tx, &wake, &*resolve))
                {
                    Ok(_) => started += 1,
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            if started == 0 {
                return Err(error.unwrap_or_else(|| io::Error::other("no resolver thread")));
            }
            if let Some(e) = error {
                log::warn!(
                    "resolver: started {started} of {} threads: {e}",
                    self.workers
                );
            }
            self.running = Some(Running {
                jobs,
                answers,
                wake,
            });
        }
        Ok(self.running.as_ref().expect("just started"))
    }
}

impl Resolver for ResolverPool {
    fn submit(&mut self, id: LookupId, host: &str, port: u16) -> io::Result<()> {
        let queue = self.queue;
        let running = self.running()?;
        match running.jobs.try_send((id, host.to_owned(), port)) {
            Ok(()) => {
                self.outstanding += 1;
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("the resolver is busy ({queue} lookups already waiting)"),
            )),
            Err(TrySendError::Disconnected(_)) => {
                Err(io::Error::other("the resolver's threads have stopped"))
            }
        }
    }

    fn poll_answer(&mut self) -> Option<(LookupId, io::Result<Vec<SocketAddr>>)> {
        if self.outstanding == 0 {
            // Nothing to wait for: no system call on every loop turn.
            return None;
        }
        let running = self.running.as_ref()?;
        // Clear first, then look: an answer sent after the look signals
        // again and wakes the next poll(2).
        running.wake.clear();
        let answer = running.answers.try_recv().ok()?;
        self.outstanding -= 1;
        Some(answer)
    }

    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.running.as_ref().map(|r| r.wake.fd())
    }
}

/// A worker: take a lookup, run it, send the answer, signal; until the
/// pool is gone.
fn work(
    jobs: &Mutex<Receiver<Job>>,
    answers: &Sender<Answer>,
    wake: &EventFd,
    resolve: &ResolveFn,
) {
    loop {
        // One idle worker waits in recv, the others on the lock.
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok((id, host, port)) = job else {
            return;
        };
        let answer = resolve(&host, port);
        if answers.send((id, answer)).is_err() {
            return;
        }
        wake.signal();
    }
}

/// A non-blocking eventfd(2): readable from `signal` until `clear`.
#[derive(Debug)]
pub(crate) struct EventFd(nix::sys::eventfd::EventFd);

impl EventFd {
    /// A new eventfd, clear.
    pub(crate) fn new() -> io::Result<EventFd> {
        use nix::sys::eventfd::EfdFlags;
        let flags = EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC;
        Ok(EventFd(nix::sys::eventfd::EventFd::from_flags(flags)?))
    }

    /// The descriptor, to poll for readability.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// Make it readable.
    pub(crate) fn signal(&self) {
        // Only EAGAIN (the counter at its maximum) can fail, and then the
        // fd is readable anyway.
        let _ = self.0.write(1);
    }

    /// Make it unreadable until the next `signal`.
    pub(crate) fn clear(&self) {
        // EAGAIN means it was clear already.
        let _ = self.0.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::poll::wait_readable;
    use std::time::Duration;

    const LIMIT: Duration = Duration::from_secs(10);

    /// A resolver that answers "hostN" with 10.0.0.N; for "gated" it
    /// first says so on `entered`, then waits for the test to `open` the
    /// gate (at most `LIMIT`, then it fails with `TimedOut`).
    fn gated(
        entered: Sender<()>,
        gate: Receiver<()>,
    ) -> impl Fn(&str, u16) -> io::Result<Vec<SocketAddr>> {
        let (entered, gate) = (Mutex::new(entered), Mutex::new(gate));
        move |host: &str, port: u16| {
            if host == "gated" {
                let _ = entered.lock().unwrap().send(());
                if gate.lock().unwrap().recv_timeout(LIMIT).is_err() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
            let n: u8 = host.trim_start_matches("host").parse().unwrap_or(0);
            Ok(vec![SocketAddr::from(([10, 0, 0, n], port))])
        }
    }

    /// A pool of `workers` threads and room for `queue` lookups over
    /// [`gated`]: the pool, the `entered` receiver and the `open` sender.
    fn pool(workers: usize, queue: usize) -> (ResolverPool, Receiver<()>, Sender<()>) {
        let (entered_tx, entered) = mpsc::channel();
        let (open, gate) = mpsc::channel();
        (
            ResolverPool::new(gated(entered_tx, gate), workers, queue),
            entered,
            open,
        )
    }

    fn id(n: u64) -> LookupId {
        LookupId::new(n)
    }

    #[test]
    fn answers_arrive_off_the_callers_thread_and_wake_the_fd() {
        let (mut pool, entered, open) = pool(2, 8);
        assert!(pool.wake_fd().is_none(), "no thread, no fd before a lookup");
        assert!(pool.poll_answer().is_none());

        pool.submit(id(1), "gated", 80).unwrap();
        entered.recv_timeout(LIMIT).unwrap();
        pool.submit(id(2), "host7", 81).unwrap();
        // host7 is answered while the other worker is stuck on "gated".
        assert!(wait_readable(pool.wake_fd().unwrap(), Some(LIMIT)).unwrap());
        let (got, answer) = pool.poll_answer().unwrap();
        assert_eq!(got, id(2));
        assert_eq!(answer.unwrap(), vec!["10.0.0.7:81".parse().unwrap()]);
        assert!(pool.poll_answer().is_none());
        assert!(
            !wait_readable(pool.wake_fd().unwrap(), Some(Duration::ZERO)).unwrap(),
            "cleared"
        );

        open.send(()).unwrap();
        assert!(wait_readable(pool.wake_fd().unwrap(), Some(LIMIT)).unwrap());
        let (got, answer) = pool.poll_answer().unwrap();
        assert_eq!(got, id(1));
        assert_eq!(answer.unwrap(), vec!["10.0.0.0:80".parse().unwrap()]);
        assert!(pool.poll_answer().is_none());
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        // One worker, room for one waiting lookup.
        let (mut pool, entered, open) = pool(1, 1);
        pool.submit(id(1), "gated", 1).unwrap();
        entered.recv_timeout(LIMIT).unwrap();
        // The worker is busy: one lookup fits in the queue, the next not.
        pool.submit(id(2), "host1", 1).unwrap();
        let e = pool.submit(id(3), "host1", 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(e.to_string().contains("busy"), "{e}");

        open.send(()).unwrap();
        let mut answered = Vec::new();
        while answered.len() < 2 {
            assert!(wait_readable(pool.wake_fd().unwrap(), Some(LIMIT)).unwrap());
            while let Some((got, _)) = pool.poll_answer() {
                answered.push(got);
            }
        }
        assert_eq!(answered, [id(1), id(2)]);
        // Room again.
        pool.submit(id(4), "host2", 1).unwrap();
    }

    #[test]
    fn dropping_the_pool_does_not_wait_for_a_stuck_lookup() {
        let (mut pool, entered, open) = pool(1, 4);
        pool.submit(id(1), "gated", 1).unwrap();
        entered.recv_timeout(LIMIT).unwrap();
        drop(pool);
        // The worker is still inside the lookup; letting it out ends it.
        open.send(()).unwrap();
    }
}
