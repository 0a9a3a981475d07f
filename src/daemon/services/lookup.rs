//! Name lookups for the services, without blocking them.
//!
//! A service that needs a name resolved (a SOCKS domain request, a
//! `--forward` to a name, a `fetch` URL) starts a lookup here. The lookup
//! goes to a [`Resolver`], which answers later, on another turn of the
//! driver's loop; meanwhile the session waits and every other connection
//! is served. Address literals never get here: they need no lookup. The
//! resolver is the host's (a [`Resolver`], on worker threads) or, with
//! `--nameserver`, a [`StackResolver`] asking over the stack's own
//! sockets.
//!
//! Invariants: a lookup is *outstanding* from `start` until its resolver
//! answers it, and at most `max` are outstanding at once; more are refused
//! at once. An outstanding lookup has at most one waiter. A waiter that
//! goes away (client closed, fetch cancelled) or runs out of time is
//! detached, and the answer that comes later is dropped and counted; until
//! then the lookup still counts against the limit, because it still
//! occupies the resolver.

use std::collections::HashMap;
#[cfg(test)]
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::io::BorrowedFd;

use log::debug;

use ephemera::{Duration, Instant, Stack};

use super::fetch::FetchId;
use super::nameserver::StackResolver;
use super::session::{Session, SessionId};
use super::Services;

/// Names one lookup the services started.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(u64);

impl LookupId {
    #[cfg(test)]
    pub(crate) fn new(n: u64) -> LookupId {
        LookupId(n)
    }
}

/// What a resolver says about one name: its addresses (with the port the
/// lookup asked for), or why there are none.
pub type LookupResult = io::Result<Vec<SocketAddr>>;

/// Looks names up for the services without blocking them: lookups go in
/// with [`Resolver::submit`]; answers come out of
/// [`Resolver::poll_answer`] later, on a later turn of the driver's loop.
///
/// Contract: every lookup `submit` accepted is answered exactly once,
/// eventually (the services count it as outstanding until then), and
/// neither method blocks. The daemon's is
/// [`ResolverPool`](crate::daemon::resolver::ResolverPool); tests inject
/// their own.
pub trait Resolver {
    /// Start looking up `host`; the answer's addresses carry `port`. An
    /// error refuses the lookup now, and no answer follows.
    fn submit(&mut self, id: LookupId, host: &str, port: u16) -> io::Result<()>;

    /// A finished lookup, if one is ready.
    fn poll_answer(&mut self) -> Option<(LookupId, LookupResult)>;

    /// A descriptor that becomes readable when an answer is ready, for a
    /// driver that sleeps in `poll(2)`. `None` (the default) if the driver
    /// need not wait on one: answers are ready when `submit` returns, or
    /// the driver calls `Services::handle_events` often anyway.
    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

/// A [`Resolver`] that answers inside `submit`, on the caller's thread,
/// with a function, for tests. Given a function that blocks (such as
/// [`system_resolve`](crate::daemon::resolver::system_resolve)), it would
/// stall the caller, which is what
/// [`ResolverPool`](crate::daemon::resolver::ResolverPool) avoids.
#[cfg(test)]
pub struct InlineResolver<F> {
    resolve: F,
    answers: VecDeque<(LookupId, LookupResult)>,
}

#[cfg(test)]
impl<F> fmt::Debug for InlineResolver<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InlineResolver")
            .field("answers", &self.answers.len())
            .finish()
    }
}

#[cfg(test)]
impl<F: FnMut(&str, u16) -> LookupResult> InlineResolver<F> {
    /// Answer every lookup with `resolve(host, port)`.
    pub fn new(resolve: F) -> InlineResolver<F> {
        InlineResolver {
            resolve,
            answers: VecDeque::new(),
        }
    }
}

#[cfg(test)]
impl<F: FnMut(&str, u16) -> LookupResult> Resolver for InlineResolver<F> {
    fn submit(&mut self, id: LookupId, host: &str, port: u16) -> io::Result<()> {
        let answer = (self.resolve)(host, port);
        self.answers.push_back((id, answer));
        Ok(())
    }

    fn poll_answer(&mut self) -> Option<(LookupId, LookupResult)> {
        self.answers.pop_front()
    }
}

/// How the services' lookups went, for `ephemera ports --stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LookupCounters {
    /// Lookups handed to the resolver.
    pub started: u64,
    /// Lookups refused at once: the limit of outstanding lookups was
    /// reached, or the resolver refused (busy).
    pub refused: u64,
    /// Waiters told "timed out": the resolver took longer than the limit.
    pub timed_out: u64,
    /// Answers dropped because nobody waited for them any more (the client
    /// went away, the fetch was cancelled, the waiter timed out).
    pub discarded: u64,
}

impl LookupCounters {
    /// The counters by name.
    pub fn iter(&self) -> [(&'static str, u64); 4] {
        [
            ("dns_lookups", self.started),
            ("dns_refused", self.refused),
            ("dns_timed_out", self.timed_out),
            ("dns_discarded", self.discarded),
        ]
    }
}

/// Who waits for a lookup.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Waiter {
    /// A SOCKS or forward session.
    Session(SessionId),
    /// A fetch that has no connection yet.
    Fetch(FetchId),
}

#[derive(Debug)]
struct Pending {
    /// `None` once the waiter went away or timed out.
    waiter: Option<Waiter>,
    deadline: Instant,
}

/// Who answers the lookups.
enum Backend {
    /// A [`Resolver`] off the stack: the host's (a [`ResolverPool`]), or
    /// a test's.
    ///
    /// [`ResolverPool`]: crate::daemon::resolver::ResolverPool
    Host(Box<dyn Resolver>),
    /// The stub resolver on the stack's own sockets (`--nameserver`).
    Stack(Box<StackResolver>),
}

/// The services' outstanding lookups. See the [module docs](self).
pub(super) struct Lookups {
    resolver: Backend,
    pending: HashMap<LookupId, Pending>,
    next: u64,
    max: usize,
    timeout: Duration,
    /// Waiters whose lookups the previous resolver took with it.
    orphans: Vec<Waiter>,
    counters: LookupCounters,
}

impl fmt::Debug for Lookups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lookups")
            .field("outstanding", &self.pending.len())
            .field("max", &self.max)
            .field("counters", &self.counters)
            .finish()
    }
}

impl Lookups {
    /// At most `max` lookups outstanding with `resolver`; a waiter gives
    /// up after `timeout`.
    pub(super) fn new(resolver: Box<dyn Resolver>, max: usize, timeout: Duration) -> Lookups {
        Lookups::with(Backend::Host(resolver), max, timeout)
    }

    /// [`Lookups::new`] with the resolver on the stack.
    pub(super) fn on_stack(resolver: StackResolver, max: usize, timeout: Duration) -> Lookups {
        Lookups::with(Backend::Stack(Box::new(resolver)), max, timeout)
    }

    fn with(resolver: Backend, max: usize, timeout: Duration) -> Lookups {
        Lookups {
            resolver,
            pending: HashMap::new(),
            next: 0,
            max,
            timeout,
            orphans: Vec::new(),
            counters: LookupCounters::default(),
        }
    }

    /// Use `resolver` from now on. Lookups outstanding with the old one
    /// will never be answered: their waiters fail on the next `expired`.
    #[cfg(test)]
    pub(super) fn set_resolver(&mut self, resolver: Box<dyn Resolver>) {
        self.resolver = Backend::Host(resolver);
        let orphans = self.pending.drain().filter_map(|(_, p)| p.waiter);
        self.orphans.extend(orphans);
    }

    /// Ask for `host` on behalf of `waiter`; it has until `now` plus the
    /// timeout. Refused at once, with an error saying why, when `max`
    /// lookups are outstanding or the resolver is busy.
    pub(super) fn start(
        &mut self,
        now: Instant,
        host: &str,
        port: u16,
        waiter: Waiter,
    ) -> io::Result<LookupId> {
        if self.pending.len() >= self.max {
            self.counters.refused += 1;
            return Err(io::Error::other(format!(
                "too many name lookups in progress ({}); try again later",
                self.max
            )));
        }
        let id = LookupId(self.next);
        self.next += 1;
        let submitted = match &mut self.resolver {
            Backend::Host(r) => r.submit(id, host, port),
            Backend::Stack(r) => r.submit(now, id, host, port),
        };
        if let Err(e) = submitted {
            self.counters.refused += 1;
            return Err(e);
        }
        self.counters.started += 1;
        let deadline = now + self.timeout;
        let waiter = Some(waiter);
        self.pending.insert(id, Pending { waiter, deadline });
        Ok(id)
    }

    /// The waiter of `id` went away: its answer will be dropped.
    pub(super) fn detach(&mut self, id: LookupId) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.waiter = None;
        }
    }

    /// The next answer someone still waits for, with its waiter. Answers
    /// nobody waits for are dropped on the way.
    pub(super) fn poll_answer(&mut self) -> Option<(Waiter, LookupResult)> {
        loop {
            let (id, answer) = match &mut self.resolver {
                Backend::Host(r) => r.poll_answer()?,
                Backend::Stack(r) => r.poll_answer()?,
            };
            // An id we do not know is a resolver's mistake: ignore it.
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            match p.waiter {
                Some(w) => return Some((w, answer)),
                None => self.counters.discarded += 1,
            }
        }
    }

    /// Waiters whose time ran out by `now`, detached, each with the error
    /// to report; and those the previous resolver left behind.
    pub(super) fn expired(&mut self, now: Instant) -> Vec<(Waiter, io::Error)> {
        let mut out: Vec<(Waiter, io::Error)> = std::mem::take(&mut self.orphans)
            .into_iter()
            .map(|w| (w, io::Error::other("the resolver was replaced")))
            .collect();
        for p in self.pending.values_mut() {
            if p.deadline <= now {
                if let Some(w) = p.waiter.take() {
                    self.counters.timed_out += 1;
                    let why = format!("no answer from the resolver within {}", self.timeout);
                    out.push((w, io::Error::new(io::ErrorKind::TimedOut, why)));
                }
            }
        }
        out
    }

    /// The earliest time limit of a lookup someone waits for.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        if !self.orphans.is_empty() {
            return Some(Instant::from_micros(0));
        }
        self.pending
            .values()
            .filter(|p| p.waiter.is_some())
            .map(|p| p.deadline)
            .min()
    }

    /// Lookups started and not yet answered, waited for or not.
    #[cfg(test)]
    pub(super) fn outstanding(&self) -> usize {
        self.pending.len()
    }

    pub(super) fn counters(&self) -> LookupCounters {
        self.counters
    }

    pub(super) fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.resolver {
            Backend::Host(r) => r.wake_fd(),
            Backend::Stack(_) => None,
        }
    }

    /// The resolver on the stack, with `--nameserver`.
    pub(super) fn on_stack_mut(&mut self) -> Option<&mut StackResolver> {
        match &mut self.resolver {
            Backend::Stack(r) => Some(r),
            Backend::Host(_) => None,
        }
    }

    /// The resolver on the stack, with `--nameserver`.
    pub(super) fn on_stack_ref(&self) -> Option<&StackResolver> {
        match &self.resolver {
            Backend::Stack(r) => Some(r),
            Backend::Host(_) => None,
        }
    }
}

impl Services {
    /// The answer to `waiter`'s lookup (or the error that ends its wait):
    /// connect, or report the failure, and go on. The answer's addresses
    /// pass the destination rules first: DNS can point a name anywhere,
    /// loopback and metadata addresses included, and a name that resolves
    /// only to denied addresses fails as denied (SOCKS reply 02, forward
    /// reset, fetch error), counted per service.
    pub(super) fn resolved(&mut self, stack: &mut Stack, waiter: Waiter, answer: LookupResult) {
        let (answer, denied) = match answer.map(|addrs| self.destinations.filter(addrs)) {
            Ok(Ok(addrs)) => (Ok(addrs), false),
            Ok(Err(d)) => {
                debug!("name lookup: {d}");
                (Err(d.into()), true)
            }
            Err(e) => (Err(e), false),
        };
        let c = &mut self.counters;
        let sid = match waiter {
            Waiter::Session(sid) => {
                let waiting = self.sessions.get_mut(sid).map(|e| &mut e.session);
                match waiting {
                    Some(Session::Socks(s)) if s.lookup.is_some() => {
                        c.socks_denied_destination += u64::from(denied);
                        s.resolved(stack, answer);
                        Some(sid)
                    }
                    Some(Session::Udp(a)) if a.lookup().is_some() => {
                        c.socks_denied_destination += u64::from(denied);
                        a.resolved(stack, answer, c);
                        Some(sid)
                    }
                    Some(Session::Resolving(_)) => {
                        c.forward_denied_destination += u64::from(denied);
                        self.forward_resolved(stack, sid, answer).then_some(sid)
                    }
                    // Gone, or not waiting: a detached waiter is never
                    // answered.
                    _ => None,
                }
            }
            Waiter::Fetch(id) => {
                c.fetch_denied_destination += u64::from(denied);
                self.fetch_resolved(stack, id, answer)
            }
        };
        if let Some(sid) = sid {
            self.pump(stack, sid);
        }
    }

    /// Waiters whose time ran out, failed as timed out.
    pub(super) fn expire_lookups(&mut self, stack: &mut Stack, now: Instant) {
        for (waiter, error) in self.dns.expired(now) {
            debug!("name lookup: {error}");
            self.resolved(stack, waiter, Err(error));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A resolver that answers only when the test says so.
    #[derive(Default)]
    struct Held {
        asked: Vec<(LookupId, String)>,
        answers: VecDeque<(LookupId, LookupResult)>,
    }
    struct Shared(Rc<RefCell<Held>>);
    impl Resolver for Shared {
        fn submit(&mut self, id: LookupId, host: &str, _: u16) -> io::Result<()> {
            self.0.borrow_mut().asked.push((id, host.to_string()));
            Ok(())
        }
        fn poll_answer(&mut self) -> Option<(LookupId, LookupResult)> {
            self.0.borrow_mut().answers.pop_front()
        }
    }

    fn t(ms: i64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn limit_timeout_detach_and_late_answers() {
        let held = Rc::new(RefCell::new(Held::default()));
        let mut l = Lookups::new(
            Box::new(Shared(held.clone())),
            2,
            Duration::from_millis(100),
        );
        let a = l.start(t(0), "a.test", 1, Waiter::Session(1)).unwrap();
        let b = l.start(t(50), "b.test", 1, Waiter::Session(2)).unwrap();
        let e = l.start(t(50), "c.test", 1, Waiter::Session(3)).unwrap_err();
        assert!(e.to_string().contains("too many name lookups"), "{e}");
        assert_eq!(held.borrow().asked.len(), 2, "the refused one never asked");
        assert_eq!(l.next_deadline(), Some(t(100)));

        // a's waiter times out; b's goes away.
        let expired = l.expired(t(100));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, Waiter::Session(1));
        assert_eq!(expired[0].1.kind(), io::ErrorKind::TimedOut);
        assert_eq!(l.next_deadline(), Some(t(150)));
        l.detach(b);
        assert_eq!(l.next_deadline(), None);
        assert!(l.expired(t(200)).is_empty(), "nobody left to tell");
        // Both still occupy the resolver, so the limit still holds.
        assert_eq!(l.outstanding(), 2);
        assert!(l.start(t(200), "c.test", 1, Waiter::Session(3)).is_err());

        // The late answers are dropped and counted; then there is room.
        let ok = || Ok(vec![SocketAddr::from(([10, 0, 0, 3], 1))]);
        held.borrow_mut().answers.extend([(b, ok()), (a, ok())]);
        assert!(l.poll_answer().is_none());
        assert_eq!(l.outstanding(), 0);
        let c = l.start(t(300), "c.test", 1, Waiter::Session(3)).unwrap();
        held.borrow_mut().answers.push_back((c, ok()));
        let (w, answer) = l.poll_answer().unwrap();
        assert_eq!((w, answer.unwrap()), (Waiter::Session(3), ok().unwrap()));
        assert_eq!(
            l.counters(),
            LookupCounters {
                started: 3,
                refused: 2,
                timed_out: 1,
                discarded: 2,
            }
        );
    }

    #[test]
    fn a_replaced_resolver_fails_its_waiters() {
        let held = Rc::new(RefCell::new(Held::default()));
        let mut l = Lookups::new(Box::new(Shared(held)), 4, Duration::from_secs(1));
        l.start(t(0), "a.test", 1, Waiter::Session(1)).unwrap();
        l.set_resolver(Box::new(InlineResolver::new(|_: &str, _: u16| {
            Ok(Vec::new())
        })));
        assert_eq!(l.outstanding(), 0);
        assert_eq!(l.next_deadline(), Some(t(0)));
        let failed = l.expired(t(0));
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, Waiter::Session(1));
        assert!(l.expired(t(0)).is_empty());
    }
}
