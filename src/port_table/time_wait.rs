//! TIME-WAIT records (RFC 9293 §3.6.1): a closed 4-tuple stays reserved
//! for 2·MSL as a compact record (its expiry and RCV.NXT) in the flow map,
//! with an entry in an expiry queue kept in time order (every record gets
//! the same 2·MSL, so appending keeps the order). A record reopened early
//! by a new SYN (RFC 6191) leaves its queue entry behind, stale; expiry
//! skips it.

use std::fmt;
use std::time::Duration;

use super::{nanos, FlowKey, FlowState, PortTable};

impl<H: Copy + Eq + fmt::Debug> PortTable<H> {
    /// Move a live connection into TIME-WAIT until `now + 2·MSL`; the
    /// 4-tuple stays reserved until [`expire`](Self::expire) passes that.
    /// `rcv_nxt` is the peer's next sequence number, kept for
    /// [`reopen_time_wait`](Self::reopen_time_wait). Returns the owner.
    pub fn enter_time_wait(&mut self, key: &FlowKey, now: Duration, rcv_nxt: u32) -> Option<H> {
        let owner = match self.flows.get(key) {
            Some(FlowState::Live(h)) => *h,
            _ => return None,
        };
        if self.config.time_wait.is_zero() {
            self.forget(key);
            return Some(owner);
        }
        let until = now + self.config.time_wait;
        let state = FlowState::TimeWait {
            until: nanos(until),
            rcv_nxt,
        };
        self.flows.insert(key, state);
        self.time_wait.push_back((until, *key));
        self.tw_count += 1;
        Some(owner)
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
                true
            }
            _ => false,
        }
    }

    /// End every TIME-WAIT whose 2·MSL has passed by `now`. Returns how
    /// many were freed.
    pub fn expire(&mut self, now: Duration) -> usize {
        let mut freed = 0;
        while let Some(&(until, key)) = self.time_wait.front() {
            if until > now {
                break;
            }
            self.time_wait.pop_front();
            // A record whose flow was reopened early is stale: skip it.
            if self.time_wait_until(&key) == Some(until) {
                self.forget(&key);
                self.tw_count -= 1;
                freed += 1;
            }
        }
        freed
    }

    /// When the next TIME-WAIT ends, if any.
    pub fn next_expiry(&self) -> Option<Duration> {
        self.time_wait.front().map(|&(until, _)| until)
    }

    /// The TIME-WAIT records with their expiry times, oldest first.
    pub fn time_wait_entries(&self) -> impl Iterator<Item = (FlowKey, Duration)> + '_ {
        self.time_wait.iter().filter_map(|&(until, key)| {
            (self.time_wait_until(&key) == Some(until)).then_some((key, until))
        })
    }

    /// When `key`'s TIME-WAIT ends, if it is in TIME-WAIT.
    fn time_wait_until(&self, key: &FlowKey) -> Option<Duration> {
        match self.flows.get(key) {
            Some(FlowState::TimeWait { until, .. }) => Some(Duration::from_nanos(*until)),
            _ => None,
        }
    }
}
