//! An in-memory network of [`Stack`]s with a deterministic clock.
//!
//! The harness for integration tests, fuzzing and benchmarks: packets a
//! stack emits are delivered to whichever stack owns the destination
//! address, after a delay, and may be lost, duplicated, reordered or
//! corrupted — each decided by a seeded RNG, so a failing run replays
//! exactly from its seed. Time only moves when the network steps it, to the
//! next delivery or the next deadline a stack asked for.
//!
//! A link may also have a [`Bottleneck`]: each direction (from one stack to
//! another) sends its packets one after the other at a fixed rate, and
//! those that arrive while it is busy wait in a drop-tail queue of bounded
//! size, those that find it full are dropped ([`DirectionStats`]). The
//! bottleneck involves no randomness: the same packets at the same
//! simulated times are queued, dropped and delivered the same way.
//!
//! A host may also be N stacks, the shards of one sharded stack behind a
//! multi-queue TUN ([`Network::add_sharded`]): a packet for the host goes to
//! the shard [`steering::packet_owner`] names, which is what the kernel
//! does with the steering program attached. The link counts every packet
//! that reaches a shard which does not hold its flow while another shard
//! does ([`LinkStats::misdirected`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroU64;

use smoltcp::time::{Duration, Instant};

use super::{gso, steering};
use crate::port_table::{Lookup, Shards};
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
    /// A rate limit and a drop-tail queue, in each direction; `None` (the
    /// default) carries any number of packets at once.
    pub bottleneck: Option<Bottleneck>,
    /// Seed for all of the above.
    pub seed: u64,
}

/// A bottleneck on every direction of the link: packets from one stack to
/// another leave one after the other at `rate`, and wait for their turn in
/// a drop-tail queue of at most `queue`. A packet that finds the queue full
/// is dropped ([`DirectionStats::queue_drops`]). Each direction has its own
/// queue, so data one way does not delay ACKs the other way.
///
/// A packet reaches its destination `delay` (plus any reordering) after
/// its last byte has left the bottleneck. Random loss, corruption and
/// duplication apply before it: a lost packet takes no room in the queue,
/// a duplicate takes room twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bottleneck {
    /// Bytes (whole IP packets, headers included) the link sends per
    /// simulated second in each direction.
    pub rate: NonZeroU64,
    /// How much may wait behind the packet being sent. The packet being
    /// sent does not count: a packet that finds the link idle is always
    /// sent, even with a queue of zero.
    pub queue: QueueLimit,
}

/// The size of a [`Bottleneck`]'s drop-tail queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueLimit {
    /// At most this many bytes waiting (a packet that would take the queue
    /// beyond it is dropped).
    Bytes(usize),
    /// At most this many packets waiting, whatever their size (Linux
    /// `pfifo`, a `txqueuelen`).
    Packets(usize),
}

/// What one direction of the link (from one stack to another) carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Packets delivered to the destination stack.
    pub packets_delivered: u64,
    /// Bytes of the packets delivered (whole IP packets).
    pub bytes_delivered: u64,
    /// Packets the bottleneck accepted (sent at once or queued).
    pub packets_accepted: u64,
    /// Packets the bottleneck dropped because its queue was full.
    pub queue_drops: u64,
    /// The most bytes that ever waited in the queue at once.
    pub peak_queue_bytes: usize,
}

/// One direction's bottleneck state and counters.
#[derive(Default)]
struct Direction {
    /// When the bottleneck finishes sending everything it accepted, in
    /// nanoseconds of simulated time.
    busy_until_ns: u64,
    /// Packets accepted that have not started to leave: when each starts
    /// and its size, in order. Bounded by the queue limit.
    waiting: VecDeque<(u64, usize)>,
    /// Their total size.
    waiting_bytes: usize,
    stats: DirectionStats,
}

impl Direction {
    /// Offer a packet of `size` bytes at `now_ns`: when its last byte has
    /// left, or `None` if the queue is full.
    fn offer(&mut self, b: &Bottleneck, now_ns: u64, size: usize) -> Option<u64> {
        while let Some(&(start, len)) = self.waiting.front() {
            if start > now_ns {
                break;
            }
            self.waiting.pop_front();
            self.waiting_bytes -= len;
        }
        let start = self.busy_until_ns.max(now_ns);
        if start > now_ns {
            let full = match b.queue {
                QueueLimit::Bytes(max) => self.waiting_bytes + size > max,
                QueueLimit::Packets(max) => self.waiting.len() >= max,
            };
            if full {
                self.stats.queue_drops += 1;
                return None;
            }
            self.waiting.push_back((start, size));
            self.waiting_bytes += size;
            self.stats.peak_queue_bytes = self.stats.peak_queue_bytes.max(self.waiting_bytes);
        }
        let send_ns = (size as u128 * 1_000_000_000).div_ceil(u128::from(b.rate.get()));
        self.busy_until_ns = start.saturating_add(u64::try_from(send_ns).unwrap_or(u64::MAX));
        self.stats.packets_accepted += 1;
        Some(self.busy_until_ns)
    }
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            delay: Duration::from_millis(1),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            corrupt: 0.0,
            bottleneck: None,
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
    /// Packets a [`Bottleneck`]'s full queue dropped, all directions.
    pub queue_drops: u64,
    /// Packets delivered to a shard of a sharded host
    /// ([`Network::add_sharded`]) that holds no connection or TIME-WAIT
    /// record for their flow while another shard of the host holds one,
    /// or that has nothing for them while another shard has a bind (a UDP
    /// socket, a listener): the steering and the shards' port choice
    /// disagree.
    pub misdirected: u64,
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
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

/// Where packets for an address go.
#[derive(Copy, Clone)]
enum Route {
    /// One stack.
    Stack(usize),
    /// A sharded host: index into `groups`.
    Group(usize),
}

/// The shards of one host and the split that steers packets among them.
struct Group {
    shards: Shards,
    /// Stack index of each shard, in shard order.
    members: Vec<usize>,
}

/// Stacks joined by one impaired link.
pub struct Network {
    stacks: Vec<Stack>,
    addrs: Vec<(IpAddr, Route)>,
    groups: Vec<Group>,
    /// The group each stack is a shard of, if any.
    group_of: Vec<Option<usize>>,
    now: Instant,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    packets: std::collections::HashMap<u64, InFlight>,
    next_seq: u64,
    config: LinkConfig,
    rng: SeededRng,
    stats: LinkStats,
    directions: BTreeMap<(usize, usize), Direction>,
    tap: Option<Tap>,
    filter: Option<Filter>,
}

impl Network {
    /// An empty network at time zero.
    pub fn new(config: LinkConfig) -> Network {
        Network {
            stacks: Vec::new(),
            addrs: Vec::new(),
            groups: Vec::new(),
            group_of: Vec::new(),
            now: Instant::from_millis(0),
            queue: BinaryHeap::new(),
            packets: Default::default(),
            next_seq: 0,
            rng: SeededRng::new(config.seed),
            config,
            stats: LinkStats::default(),
            directions: BTreeMap::new(),
            tap: None,
            filter: None,
        }
    }

    /// Attach a stack that owns `addrs`; returns its index.
    pub fn add(&mut self, stack: Stack, addrs: &[IpAddr]) -> usize {
        let i = self.stacks.len();
        self.stacks.push(stack);
        self.group_of.push(None);
        self.addrs
            .extend(addrs.iter().map(|&a| (a, Route::Stack(i))));
        i
    }

    /// Attach `stacks` as the shards of one host that owns `addrs`, shard
    /// *i* being `stacks[i]` (each should have been configured as shard *i*
    /// of `shards.count()`, [`ShardId`](crate::port_table::ShardId)). A
    /// packet for the host is delivered to the shard
    /// [`steering::packet_owner`] picks for it. Returns the stacks'
    /// indices in shard order.
    ///
    /// # Panics
    /// If the number of stacks is not `shards.count()`.
    pub fn add_sharded(
        &mut self,
        stacks: Vec<Stack>,
        shards: Shards,
        addrs: &[IpAddr],
    ) -> Vec<usize> {
        assert_eq!(
            stacks.len(),
            usize::from(shards.count()),
            "one stack per shard"
        );
        let g = self.groups.len();
        let first = self.stacks.len();
        let members: Vec<usize> = (first..first + stacks.len()).collect();
        self.stacks.extend(stacks);
        self.group_of.extend(members.iter().map(|_| Some(g)));
        self.groups.push(Group {
            shards,
            members: members.clone(),
        });
        self.addrs
            .extend(addrs.iter().map(|&a| (a, Route::Group(g))));
        members
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

    /// What the link carried from stack `from` to stack `to`.
    pub fn direction_stats(&self, from: usize, to: usize) -> DirectionStats {
        self.directions
            .get(&(from, to))
            .map_or_else(DirectionStats::default, |d| d.stats.clone())
    }

    /// Change the impairments from now on (the RNG stream continues; a
    /// bottleneck's queues keep what they hold).
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
            // Each stack's device completes the checksums and cuts the
            // segments it was left, as a NIC would.
            let offload = self.stacks[i].tcp_checksum_offload();
            while let Some(t) = self.stacks[i].poll_transmit_offload(now) {
                if offload {
                    let mut cut = Vec::new();
                    gso::cut_like_a_nic(t, true, &mut |p| cut.push(p));
                    for p in cut {
                        self.send(i, p);
                    }
                } else {
                    self.send(i, t.packet);
                }
            }
        }
        let mut delivered = false;
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > now {
                break;
            }
            self.queue.pop();
            let mut p = self.packets.remove(&seq).expect("queued packet");
            self.stats.delivered += 1;
            let d = &mut self.directions.entry((p.from, p.to)).or_default().stats;
            d.packets_delivered += 1;
            d.bytes_delivered += p.bytes.len() as u64;
            if self.misdirected(p.to, &p.bytes) {
                self.stats.misdirected += 1;
            }
            self.stacks[p.to].handle_packet_mut(now, &mut p.bytes);
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

    /// Whether `bytes`, about to reach stack `to`, would be taken better
    /// by another shard of its host: that shard holds its flow and `to`
    /// does not, or that shard has a bind for it and `to` has nothing.
    fn misdirected(&self, to: usize, bytes: &[u8]) -> bool {
        let Some(g) = self.group_of[to] else {
            return false;
        };
        let Some(flow) = steering::packet_flow(bytes) else {
            return false;
        };
        // How well a shard can take the packet: it holds the flow (live or
        // TIME-WAIT), or only a bind (listener, UDP socket), or nothing.
        let holds = |i: usize| match self.stacks[i].port_table().lookup(&flow) {
            Lookup::Flow(_) | Lookup::TimeWait => 2,
            Lookup::Bound(_) => 1,
            Lookup::Nothing => 0,
        };
        let here = holds(to);
        self.groups[g]
            .members
            .iter()
            .any(|&i| i != to && holds(i) > here)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    fn send(&mut self, from: usize, mut bytes: Vec<u8>) {
        if let Some(tap) = self.tap.as_mut() {
            tap(self.now, &bytes);
        }
        let route = destination(&bytes)
            .and_then(|d| self.addrs.iter().find(|(a, _)| *a == d).map(|&(_, r)| r));
        let to = match route {
            Some(Route::Stack(i)) => i,
            Some(Route::Group(g)) => {
                let group = &self.groups[g];
                let shard = steering::packet_owner(&group.shards, &bytes);
                group.members[usize::from(shard)]
            }
            None => {
                self.stats.unroutable += 1;
                return;
            }
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
            let mut at = self.now;
            if let Some(b) = self.config.bottleneck {
                let now_ns = (self.now.total_micros().max(0) as u64).saturating_mul(1000);
                let dir = self.directions.entry((from, to)).or_default();
                let Some(done_ns) = dir.offer(&b, now_ns, bytes.len()) else {
                    self.stats.queue_drops += 1;
                    continue;
                };
                let micros = i64::try_from(done_ns.div_ceil(1000)).unwrap_or(i64::MAX);
                at = Instant::from_micros(micros);
            }
            let mut delay = self.config.delay;
            if self.chance(self.config.reorder) {
                self.stats.reordered += 1;
                let extra = self.rng.below(2 * self.config.delay.total_micros().max(1)) + 1;
                delay += Duration::from_micros(extra);
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.queue.push(Reverse((at + delay, seq)));
            self.packets.insert(
                seq,
                InFlight {
                    from,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bottleneck(rate: u64, queue: QueueLimit) -> Bottleneck {
        Bottleneck {
            rate: NonZeroU64::new(rate).unwrap(),
            queue,
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn packets_leave_one_after_the_other_at_the_rate() {
        // 1000 bytes per millisecond: a 1000-byte packet takes 1 ms.
        let b = bottleneck(1_000_000, QueueLimit::Packets(10));
        let mut d = Direction::default();
        // Three at once: the first goes at once, the others wait their turn.
        assert_eq!(d.offer(&b, 0, 1000), Some(MS));
        assert_eq!(d.offer(&b, 0, 1000), Some(2 * MS));
        assert_eq!(d.offer(&b, 0, 500), Some(2 * MS + MS / 2));
        assert_eq!(d.stats.peak_queue_bytes, 1500);
        // Once the link has gone idle, a packet leaves a packet-time after
        // it arrives.
        assert_eq!(d.offer(&b, 10 * MS, 1000), Some(11 * MS));
        // Rounding up to whole nanoseconds, never down.
        let slow = bottleneck(3, QueueLimit::Packets(10));
        assert_eq!(Direction::default().offer(&slow, 0, 1), Some(333_333_334));
        assert_eq!(d.stats.packets_accepted, 4);
        assert_eq!(d.stats.queue_drops, 0);
    }

    #[test]
    fn a_full_packet_queue_drops_the_tail() {
        let b = bottleneck(1_000_000, QueueLimit::Packets(2));
        let mut d = Direction::default();
        // One sent, two waiting, the rest dropped.
        let out: Vec<_> = (0..5).map(|_| d.offer(&b, 0, 1000)).collect();
        assert_eq!(out, [Some(MS), Some(2 * MS), Some(3 * MS), None, None]);
        assert_eq!(d.stats.queue_drops, 2);
        assert_eq!(d.waiting.len(), 2);
        // When the first has left, the second is being sent and one place
        // is free again.
        assert_eq!(d.offer(&b, MS, 1000), Some(4 * MS));
        assert_eq!(d.offer(&b, MS, 1000), None);
        assert_eq!(d.stats.packets_accepted, 4);
        assert_eq!(d.stats.queue_drops, 3);
    }

    #[test]
    fn a_full_byte_queue_drops_what_does_not_fit() {
        let b = bottleneck(1_000_000, QueueLimit::Bytes(1500));
        let mut d = Direction::default();
        assert!(d.offer(&b, 0, 1000).is_some()); // being sent
        assert!(d.offer(&b, 0, 1000).is_some()); // 1000 waiting
        assert!(d.offer(&b, 0, 1000).is_none()); // 2000 would not fit
        assert!(d.offer(&b, 0, 500).is_some()); // 1500 does
        assert!(d.offer(&b, 0, 1).is_none());
        assert_eq!(d.waiting_bytes, 1500);
        assert_eq!(d.stats.peak_queue_bytes, 1500);
        assert_eq!(d.stats.queue_drops, 2);
        // A queue of zero still sends what finds the link idle.
        let none = bottleneck(1_000_000, QueueLimit::Bytes(0));
        let mut d = Direction::default();
        assert_eq!(d.offer(&none, 0, 1000), Some(MS));
        assert_eq!(d.offer(&none, 0, 1000), None);
        assert_eq!(d.offer(&none, MS, 1000), Some(2 * MS));
    }
}
