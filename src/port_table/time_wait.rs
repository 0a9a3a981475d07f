//! TIME-WAIT records (RFC 9293 §3.6.1): a closed 4-tuple stays reserved
//! for 2·MSL as a compact record (its expiry and RCV.NXT) in the flow map,
//! with an entry in an expiry queue kept in time order (every record gets
//! the same 2·MSL from the time it is made or restarted, so appending
//! keeps the order).
//!
//! Bounds: at most `max_time_wait` records (Linux `tcp_max_tw_buckets`);
//! a connection closing beyond that skips TIME-WAIT. A record reopened
//! early by a new SYN (RFC 6191), or restarted by a retransmitted FIN,
//! leaves its old queue entry behind, stale (expiry skips it); the queue
//! is compacted whenever stale entries would outnumber the records, so it
//! grows with the records, never with how often one 4-tuple is reused.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use super::{nanos, FlowKey, FlowState, PortTable};

/// Stale expiry entries allowed beyond one per record before the queue is
/// compacted (so a handful of records never compact on every call).
pub(super) const TW_SLACK: usize = 16;

/// What [`PortTable::enter_time_wait`] did with a live connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TimeWaitEntry<H> {
    /// It holds its 4-tuple in TIME-WAIT until 2·MSL from now.
    Entered(H),
    /// TIME-WAIT is configured to 0: the 4-tuple was released at once.
    Skipped(H),
    /// The records are at `max_time_wait`: the 4-tuple was released at
    /// once, without TIME-WAIT (Linux's `TCPTimeWaitOverflow`).
    Overflow(H),
    /// The 4-tuple is not a live connection: nothing changed.
    NotLive,
}

impl<H> TimeWaitEntry<H> {
    /// The owner of the connection, unless it was not live.
    pub fn owner(self) -> Option<H> {
        match self {
            TimeWaitEntry::Entered(h) | TimeWaitEntry::Skipped(h) | TimeWaitEntry::Overflow(h) => {
                Some(h)
            }
            TimeWaitEntry::NotLive => None,
        }
    }
}

impl<H: Copy + Eq + fmt::Debug> PortTable<H> {
    /// Move a live connection into TIME-WAIT until `now + 2·MSL`; the
    /// 4-tuple stays reserved until [`expire`](Self::expire) passes that.
    /// `rcv_nxt` is the peer's next sequence number, kept for
    /// [`reopen_time_wait`](Self::reopen_time_wait) and
    /// [`restart_time_wait`](Self::restart_time_wait). With TIME-WAIT set
    /// to 0, or `max_time_wait` records already kept, the 4-tuple is
    /// released at once instead.
    pub fn enter_time_wait(
        &mut self,
        key: &FlowKey,
        now: Duration,
        rcv_nxt: u32,
    ) -> TimeWaitEntry<H> {
        let owner = match self.flows.get(key) {
            Some(FlowState::Live(h)) => *h,
            _ => return TimeWaitEntry::NotLive,
        };
        if self.config.time_wait.is_zero() {
            self.forget(key);
            return TimeWaitEntry::Skipped(owner);
        }
        if self.tw_count >= self.config.max_time_wait {
            self.forget(key);
            return TimeWaitEntry::Overflow(owner);
        }
        let until = now + self.config.time_wait;
        let state = FlowState::TimeWait {
            until: nanos(until),
            rcv_nxt,
        };
        self.flows.insert(key, state);
        self.time_wait.push_back((until, *key));
        self.tw_count += 1;
        TimeWaitEntry::Entered(owner)
    }

    /// A new connection request for a 4-tuple in TIME-WAIT: if its initial
    /// sequence number `isn` lies beyond the old connection's last
    /// (RFC 6191 §2, RFC 1122 §4.2.2.13), the record ends now and `true`
    /// says the 4-tuple is free for the new connection. Otherwise the
    /// record stays and the SYN must be dropped.
    pub fn reopen_time_wait(&mut self, key: &FlowKey, isn: u32) -> bool {
        match self.flows.get(key) {
            Some(FlowState::TimeWait { rcv_nxt, .. })
                if (isn.wrapping_sub(*rcv_nxt) as i32) > 0 =>
            {
                self.forget(key);
                self.tw_count -= 1;
                self.compact_time_wait();
                true
            }
            _ => false,
        }
    }

    /// The peer sent its FIN again, a segment ending at `fin_end` (its
    /// sequence number plus length plus one): our ACK of it was lost. If
    /// that is exactly the recorded RCV.NXT (a retransmission of the FIN
    /// that closed the connection, not a blind guess), 2·MSL starts again
    /// from `now` (RFC 9293 §3.10.7.4, TIME-WAIT: "Acknowledge it, and
    /// restart the 2 MSL timeout"). Returns whether it did.
    pub fn restart_time_wait(&mut self, key: &FlowKey, now: Duration, fin_end: u32) -> bool {
        let until = now + self.config.time_wait;
        match self.flows.get_mut(key) {
            Some(FlowState::TimeWait { until: u, rcv_nxt }) if *rcv_nxt == fin_end => {
                if nanos(until) <= *u {
                    return true;
                }
                *u = nanos(until);
            }
            _ => return false,
        }
        self.time_wait.push_back((until, *key));
        self.compact_time_wait();
        true
    }

    /// End every TIME-WAIT whose 2·MSL has passed by `now`, and drop the
    /// stale expiry entries in front of the next live one, so that
    /// [`next_expiry`](Self::next_expiry) names a record's time, not an
    /// entry nobody waits for. Returns how many were freed.
    pub fn expire(&mut self, now: Duration) -> usize {
        let mut freed = 0;
        while let Some(&(until, key)) = self.time_wait.front() {
            // A record whose flow was reopened or restarted is stale.
            let live = self.time_wait_until(&key) == Some(until);
            if live && until > now {
                break;
            }
            self.time_wait.pop_front();
            if live {
                self.forget(&key);
                self.tw_count -= 1;
                freed += 1;
            }
        }
        self.compact_time_wait();
        freed
    }

    /// Drop stale expiry entries once they would outnumber the records:
    /// keep, in order, one entry per record, the one matching its expiry.
    /// O(queue), at most once per `records + TW_SLACK` calls that add a
    /// stale entry, so O(1) amortised.
    fn compact_time_wait(&mut self) {
        if self.time_wait.len() <= 2 * self.tw_count + TW_SLACK {
            return;
        }
        let mut queue = std::mem::take(&mut self.time_wait);
        let mut kept = HashSet::with_capacity(self.tw_count);
        queue.retain(|&(until, key)| self.time_wait_until(&key) == Some(until) && kept.insert(key));
        self.time_wait = queue;
    }

    /// When the next TIME-WAIT ends, if any (possibly a stale entry's
    /// time, so possibly early).
    pub fn next_expiry(&self) -> Option<Duration> {
        self.time_wait.front().map(|&(until, _)| until)
    }

    /// The TIME-WAIT records with their expiry times, oldest first.
    pub fn time_wait_entries(&self) -> impl Iterator<Item = (FlowKey, Duration)> + '_ {
        let mut seen = HashSet::new();
        self.time_wait.iter().filter_map(move |&(until, key)| {
            (self.time_wait_until(&key) == Some(until) && seen.insert(key)).then_some((key, until))
        })
    }

    /// Entries in the expiry queue, stale ones included: at most twice the
    /// records, plus a small constant.
    pub fn time_wait_queue_len(&self) -> usize {
        self.time_wait.len()
    }

    /// When `key`'s TIME-WAIT ends, if it is in TIME-WAIT.
    fn time_wait_until(&self, key: &FlowKey) -> Option<Duration> {
        match self.flows.get(key) {
            Some(FlowState::TimeWait { until, .. }) => Some(Duration::from_nanos(*until)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::port_table::{Lookup, PortTableConfig, Protocol};
    use crate::rng::SeededRng;

    fn table(max_time_wait: usize) -> PortTable<u32> {
        let config = PortTableConfig {
            max_time_wait,
            ..PortTableConfig::default()
        };
        PortTable::new(config, &mut SeededRng::new(5)).unwrap()
    }

    fn key(port: u16) -> FlowKey {
        let remote: SocketAddr = format!("10.0.0.1:{port}").parse().unwrap();
        FlowKey::new(Protocol::Tcp, "10.0.0.2:80".parse().unwrap(), remote)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn records_beyond_the_cap_skip_time_wait() {
        let mut t = table(3);
        for port in 1000..1005 {
            t.insert(key(port), port as u32).unwrap();
        }
        let got: Vec<_> = (1000..1005)
            .map(|p| t.enter_time_wait(&key(p), secs(1), 0))
            .collect();
        use TimeWaitEntry::*;
        assert_eq!(
            got,
            [
                Entered(1000),
                Entered(1001),
                Entered(1002),
                Overflow(1003),
                Overflow(1004)
            ]
        );
        assert_eq!(t.time_wait_flows(), 3);
        // The overflowed 4-tuples are free at once; the others are held.
        assert_eq!(t.lookup(&key(1003)), Lookup::Nothing);
        assert_eq!(t.lookup(&key(1002)), Lookup::TimeWait);
        assert_eq!(t.insert(key(1004), 7), Ok(()));
        assert_eq!(t.enter_time_wait(&key(9), secs(1), 0), NotLive);
        t.check_invariants().unwrap();
        // Once records expire there is room again.
        assert_eq!(t.expire(secs(61)), 3);
        assert_eq!(t.enter_time_wait(&key(1004), secs(62), 0), Entered(7));
        t.check_invariants().unwrap();
    }

    #[test]
    fn reopening_one_four_tuple_again_and_again_keeps_the_queue_bounded() {
        let mut t = table(1000);
        // A few long-lived records beside it.
        for port in 2000..2010 {
            t.insert(key(port), 0).unwrap();
            t.enter_time_wait(&key(port), secs(0), 0);
        }
        let k = key(1000);
        let mut most = 0;
        for i in 0..100_000u32 {
            let now = Duration::from_millis(u64::from(i / 10));
            t.insert(k, i).unwrap();
            assert_eq!(
                t.enter_time_wait(&k, now, i * 10),
                TimeWaitEntry::Entered(i)
            );
            assert!(t.reopen_time_wait(&k, i * 10 + 1));
            most = most.max(t.time_wait_queue_len());
        }
        assert!(
            most <= 2 * 10 + TW_SLACK + 1,
            "the queue grew to {most} entries for 10 records"
        );
        assert_eq!(t.time_wait_flows(), 10);
        t.check_invariants().unwrap();
        // The long-lived records still expire on time.
        assert_eq!(t.expire(secs(59)), 0);
        assert_eq!(t.expire(secs(60)), 10);
        assert_eq!(t.time_wait_queue_len(), 0);
    }

    #[test]
    fn a_retransmitted_fin_restarts_two_msl_only_at_rcv_nxt() {
        let mut t = table(10);
        let k = key(1000);
        t.insert(k, 1).unwrap();
        t.enter_time_wait(&k, secs(0), 5000);
        // Not the FIN that ended the connection: nothing restarts.
        assert!(!t.restart_time_wait(&k, secs(40), 4999));
        assert!(!t.restart_time_wait(&key(1), secs(40), 5000));
        // The FIN again, 40 s in: 2·MSL from then.
        assert!(t.restart_time_wait(&k, secs(40), 5000));
        assert_eq!(t.time_wait_entries().collect::<Vec<_>>(), [(k, secs(100))]);
        assert_eq!(t.expire(secs(60)), 0, "the old expiry is stale");
        assert_eq!(t.lookup(&k), Lookup::TimeWait);
        t.check_invariants().unwrap();
        // FIN after FIN: the queue stays bounded.
        for s in 41..1000 {
            assert!(t.restart_time_wait(&k, secs(s), 5000));
            assert!(t.time_wait_queue_len() <= 2 + TW_SLACK + 1);
        }
        assert_eq!(t.expire(secs(1058)), 0);
        assert_eq!(t.expire(secs(1059)), 1);
        t.check_invariants().unwrap();
    }
}
