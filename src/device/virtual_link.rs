//! An in-memory network of [`Stack`]s with a deterministic clock.
//!
//! The harness for integration tests, fuzzing and benchmarks: packets a
//! stack emits are delivered to whichever stack owns the destination
//! address, after a delay, and may be lost, duplicated, reordered or
//! corrupted — each decided by a seeded RNG, so a failing run replays
//! exactly from its seed. Time only moves when the network steps it, to the
//! next delivery or the next deadline a stack asked for.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;

use smoltcp::time::{Duration, Instant};

use crate::rng::{Rng, SeededRng};
use crate::stack::Stack;

/// Impairments of the link, applied to every packet independently.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// One-way delay.
    pub delay: Duration,
    /// Probability a packet is lost.
    pub loss: f64,
    /// Probability a packet is delivered twice.
    pub duplicate: f64,
    /// Probability a packet is held back by up to another `2 × delay`, so
    /// that later packets overtake it.
    pub reorder: f64,
    /// Probability one byte of a packet is flipped (checksums must catch it).
    pub corrupt: f64,
    /// Seed for all of the above.
    pub seed: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            delay: Duration::from_millis(1),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            corrupt: 0.0,
            seed: 0,
        }
    }
}

/// What the link did to the packets it carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets delivered (duplicates count twice).
    pub delivered: u64,
    /// Packets lost on purpose.
    pub lost: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Packets held back.
    pub reordered: u64,
    /// Packets with a flipped byte.
    pub corrupted: u64,
    /// Packets for an address no stack owns.
    pub unroutable: u64,
    /// Packets the filter (see [`Network::set_filter`]) dropped.
    pub filtered: u64,
}

/// The step limit ran out before the condition held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepLimit {
    /// Steps taken.
    pub steps: u64,
    /// Simulated time reached.
    pub now: Instant,
}

impl std::fmt::Display for StepLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step limit reached after {} steps at {}",
            self.steps, self.now
        )
    }
}

impl std::error::Error for StepLimit {}

/// A callback that sees every packet put on the link.
type Tap = Box<dyn FnMut(Instant, &[u8])>;

/// A callback that decides whether a packet from stack `from` to stack `to`
/// is carried.
type Filter = Box<dyn FnMut(usize, usize, &[u8]) -> bool>;

struct InFlight {
    to: usize,
    bytes: Vec<u8>,
}

/// Stacks joined by one impaired link.
pub struct Network {
    stacks: Vec<Stack>,
    addrs: Vec<(IpAddr, usize)>,
    now: Instant,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    packets: std::collections::HashMap<u64, InFlight>,
    next_seq: u64,
    config: LinkConfig,
    rng: SeededRng,
    stats: LinkStats,
    tap: Option<Tap>,
    filter: Option<Filter>,
}

impl Network {
    /// An empty network at time zero.
    pub fn new(config: LinkConfig) -> Network {
        Network {
            stacks: Vec::new(),
            addrs: Vec::new(),
            now: Instant::from_millis(0),
            queue: BinaryHeap::new(),
            packets: Default::default(),
            next_seq: 0,
            rng: SeededRng::new(config.seed),
            config,
            stats: LinkStats::default(),
            tap: None,
            filter: None,
        }
    }

    /// Attach a stack that owns `addrs`; returns its index.
    pub fn add(&mut self, stack: Stack, addrs: &[IpAddr]) -> usize {
        let i = self.stacks.len();
        self.stacks.push(stack);
        self.addrs.extend(addrs.iter().map(|&a| (a, i)));
        i
    }

    /// Stack number `i`.
    pub fn stack(&mut self, i: usize) -> &mut Stack {
        &mut self.stacks[i]
    }

    /// Stack number `i`, shared.
    pub fn stack_ref(&self, i: usize) -> &Stack {
        &self.stacks[i]
    }

    /// The simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// What the link did so far.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// Change the impairments from now on (the RNG stream continues).
    pub fn set_config(&mut self, config: LinkConfig) {
        self.config = config;
    }

    /// Inject a raw packet, as if it arrived on the wire now, for stack `to`.
    pub fn inject(&mut self, to: usize, bytes: &[u8]) {
        let now = self.now;
        self.stacks[to].handle_packet(now, bytes);
    }

    /// See every packet put on the link (before impairment), e.g. for pcap.
    pub fn set_tap(&mut self, tap: impl FnMut(Instant, &[u8]) + 'static) {
        self.tap = Some(Box::new(tap));
    }

    /// Decide per packet whether the link carries it: `filter(from, to,
    /// bytes)` returning `false` drops the packet (counted in
    /// [`LinkStats::filtered`]). It runs after the tap, so the tap still
    /// sees what was dropped, and before the random impairments. For
    /// misbehaving peers: one that never ACKs, never answers a SYN.
    pub fn set_filter(&mut self, filter: impl FnMut(usize, usize, &[u8]) -> bool + 'static) {
        self.filter = Some(Box::new(filter));
    }

    /// Remove the filter: the link carries everything again.
    pub fn clear_filter(&mut self) {
        self.filter = None;
    }

    /// Collect every stack's output, then deliver what is due. If nothing
    /// was due, jump the clock to the next delivery or deadline. Returns
    /// `false` when nothing is pending anywhere (the network is idle).
    pub fn step(&mut self) -> bool {
        self.step_bounded(None)
    }

    /// [`step`](Self::step), but the clock never jumps past `limit`.
    fn step_bounded(&mut self, limit: Option<Instant>) -> bool {
        let now = self.now;
        for i in 0..self.stacks.len() {
            while let Some(p) = self.stacks[i].poll_transmit(now) {
                self.send(i, p);
            }
        }
        let mut delivered = false;
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > now {
                break;
            }
            self.queue.pop();
            let p = self.packets.remove(&seq).expect("queued packet");
            self.stats.delivered += 1;
            self.stacks[p.to].handle_packet(now, &p.bytes);
            delivered = true;
        }
        if delivered {
            return true;
        }
        let next_delivery = self.queue.peek().map(|Reverse((at, _))| *at);
        let next_deadline = self.stacks.iter().filter_map(|s| s.poll_at()).min();
        let next = match (next_delivery, next_deadline) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => {
                    // Idle: nothing will happen before the limit.
                    if let Some(l) = limit {
                        self.now = l.max(now);
                    }
                    return false;
                }
            },
        };
        // A deadline in the past means "poll again now"; step time forward
        // by at least a microsecond only when nothing else can progress.
        let next = if next > now {
            next
        } else {
            now + Duration::from_micros(1)
        };
        self.now = limit.map_or(next, |l| next.min(l.max(now)));
        true
    }

    /// Step until `done` holds, at most `max_steps` times.
    pub fn run_until(
        &mut self,
        max_steps: u64,
        mut done: impl FnMut(&mut Network) -> bool,
    ) -> Result<u64, StepLimit> {
        for steps in 0..max_steps {
            if done(self) {
                return Ok(steps);
            }
            self.step();
        }
        if done(self) {
            return Ok(max_steps);
        }
        Err(StepLimit {
            steps: max_steps,
            now: self.now,
        })
    }

    /// Step until simulated time reaches `now + d`; the clock never jumps
    /// past that point.
    pub fn run_for(&mut self, d: Duration, max_steps: u64) -> Result<u64, StepLimit> {
        let until = self.now + d;
        for steps in 0..max_steps {
            if self.now >= until {
                return Ok(steps);
            }
            self.step_bounded(Some(until));
        }
        if self.now >= until {
            return Ok(max_steps);
        }
        Err(StepLimit {
            steps: max_steps,
            now: self.now,
        })
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    fn send(&mut self, from: usize, mut bytes: Vec<u8>) {
        if let Some(tap) = self.tap.as_mut() {
            tap(self.now, &bytes);
        }
        let Some(to) = destination(&bytes)
            .and_then(|d| self.addrs.iter().find(|(a, _)| *a == d).map(|&(_, i)| i))
        else {
            self.stats.unroutable += 1;
            return;
        };
        if let Some(filter) = self.filter.as_mut() {
            if !filter(from, to, &bytes) {
                self.stats.filtered += 1;
                return;
            }
        }
        if self.chance(self.config.loss) {
            self.stats.lost += 1;
            return;
        }
        if self.chance(self.config.corrupt) && !bytes.is_empty() {
            let i = self.rng.below(bytes.len() as u64) as usize;
            bytes[i] ^= 1 << self.rng.below(8);
            self.stats.corrupted += 1;
        }
        let copies = if self.chance(self.config.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.config.delay;
            if self.chance(self.config.reorder) {
                self.stats.reordered += 1;
                let extra = self.rng.below(2 * self.config.delay.total_micros().max(1)) + 1;
                delay += Duration::from_micros(extra);
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.queue.push(Reverse((self.now + delay, seq)));
            self.packets.insert(
                seq,
                InFlight {
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
    }
}

/// The destination address of an IP packet, read without trusting it.
fn destination(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&p[16..20]).ok()?)),
        6 if p.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?)),
        _ => None,
    }
}
