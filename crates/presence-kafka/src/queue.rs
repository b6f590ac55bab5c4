//! The coalescing queue between the callers and librdkafka: at most one pending state per
//! user (a newer one replaces the older in place), served in order of first enqueue, and at
//! most one record per user in flight, so a user's records reach the topic in the order they
//! were enqueued and a retry can never overtake a newer state.
//!
//! Pure data structure: no I/O, no clock of its own (callers pass `now`), no locking (the
//! publisher holds it behind a mutex).

use std::cmp::Reverse;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use presence_frame::{EventTime, PresenceEvent, UserId};

/// What to publish for a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Update {
    /// The user's current state.
    State(PresenceEvent),
    /// The user expired: a tombstone, stamped with the expiry time.
    Tombstone {
        /// Whose entry expired.
        user: UserId,
        /// When.
        time: EventTime,
    },
}

impl Update {
    pub(crate) fn user(&self) -> UserId {
        match self {
            Update::State(event) => event.user,
            Update::Tombstone { user, .. } => *user,
        }
    }

    pub(crate) fn time(&self) -> EventTime {
        match self {
            Update::State(event) => event.time,
            Update::Tombstone { time, .. } => *time,
        }
    }
}

/// A state waiting to be sent (or travelling through librdkafka, as its delivery opaque).
#[derive(Debug)]
pub(crate) struct Pending {
    /// Enqueue order, increasing across all users: a higher number is a newer state.
    pub(crate) seq: u64,
    pub(crate) update: Update,
    /// When the bridge received the state, for the delivery latency.
    pub(crate) received: Instant,
}

/// What [`Queue::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Push {
    /// Queued: the user had nothing pending.
    New,
    /// Replaced the user's older pending state.
    Coalesced,
    /// Dropped: the queue holds `capacity` users already.
    Full,
    /// Dropped: the queue is closed.
    Closed,
}

/// What [`Queue::failed`] did with a record whose delivery failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The record was still the user's newest state: queued again, after a backoff.
    Retried,
    /// A newer state of the user is pending: the failed record is dropped, the newer one will
    /// be sent (after the backoff).
    Superseded,
    /// Dropped for good: the error cannot be cured by retrying, or the queue is closed.
    Dropped,
}

/// Where a pending state waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// In the ready line.
    Ready,
    /// Backing off after a failure, until then.
    Delayed(Instant),
    /// Waiting for the user's in-flight record to be acknowledged.
    Parked,
}

#[derive(Debug)]
struct Entry {
    pending: Option<(Pending, Place)>,
    /// The sequence number of the user's record in librdkafka, if any.
    in_flight: Option<u64>,
    /// Consecutive failed deliveries, for the backoff.
    failures: u32,
}

/// Retry backoff: `base * 2^(failures - 1)`, capped.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    pub(crate) base: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    fn after(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << exp).min(self.max)
    }
}

/// The coalescing queue. See the module docs.
#[derive(Debug)]
pub(crate) struct Queue {
    capacity: usize,
    backoff: Backoff,
    next_seq: u64,
    entries: HashMap<UserId, Entry>,
    ready: VecDeque<UserId>,
    delayed: BinaryHeap<Reverse<(Instant, u64, UserId)>>,
    pending: usize,
    in_flight: usize,
    closed: bool,
}

impl Queue {
    pub(crate) fn new(capacity: usize, backoff: Backoff) -> Queue {
        Queue {
            capacity,
            backoff,
            next_seq: 0,
            entries: HashMap::new(),
            ready: VecDeque::new(),
            delayed: BinaryHeap::new(),
            pending: 0,
            in_flight: 0,
            closed: false,
        }
    }

    /// Users with a pending state.
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    /// Records in librdkafka (one per user at most).
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Refuses further pushes and retries.
    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    /// Enqueues the newest state of a user. Never blocks, never grows past `capacity` users.
    pub(crate) fn push(&mut self, update: Update, received: Instant) -> Push {
        if self.closed {
            return Push::Closed;
        }
        let user = update.user();
        let seq = self.next_seq;
        let item = Pending {
            seq,
            update,
            received,
        };
        let at_capacity = self.pending >= self.capacity;
        match self.entries.entry(user) {
            MapEntry::Occupied(mut slot) => {
                let entry = slot.get_mut();
                if let Some((pending, _place)) = &mut entry.pending {
                    // Same place in line (first enqueue), newer content.
                    *pending = item;
                    self.next_seq += 1;
                    return Push::Coalesced;
                }
                if at_capacity {
                    return Push::Full;
                }
                // The user's previous record is in flight: wait for its acknowledgement.
                entry.pending = Some((item, Place::Parked));
            }
            MapEntry::Vacant(slot) => {
                if at_capacity {
                    return Push::Full;
                }
                slot.insert(Entry {
                    pending: Some((item, Place::Ready)),
                    in_flight: None,
                    failures: 0,
                });
                self.ready.push_back(user);
            }
        }
        self.next_seq += 1;
        self.pending += 1;
        Push::New
    }

    /// The next state to send, in order of first enqueue, marking it in flight. Retries whose
    /// backoff has passed join the end of the line first.
    pub(crate) fn pop(&mut self, now: Instant) -> Option<Pending> {
        self.promote_due(now);
        while let Some(user) = self.ready.pop_front() {
            let Some(entry) = self.entries.get_mut(&user) else {
                continue;
            };
            match entry.pending.take() {
                Some((pending, Place::Ready)) => {
                    debug_assert!(entry.in_flight.is_none());
                    entry.in_flight = Some(pending.seq);
                    self.pending -= 1;
                    self.in_flight += 1;
                    return Some(pending);
                }
                other => entry.pending = other, // not ready after all: leave it where it is
            }
        }
        None
    }

    /// When the earliest backing-off state becomes ready.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.delayed.peek().map(|Reverse((due, _, _))| *due)
    }

    fn promote_due(&mut self, now: Instant) {
        while let Some(Reverse((due, seq, user))) = self.delayed.peek().copied() {
            if due > now {
                break;
            }
            self.delayed.pop();
            if let Some(entry) = self.entries.get_mut(&user)
                && let Some((pending, place)) = &mut entry.pending
                && *place == Place::Delayed(due)
            {
                debug_assert!(pending.seq >= seq);
                *place = Place::Ready;
                self.ready.push_back(user);
            }
        }
    }

    /// Puts back a record that librdkafka would not take (its queue was full), at the front of
    /// the line, unless a newer state of the user arrived meanwhile.
    pub(crate) fn unsend(&mut self, record: Pending) {
        let user = record.update.user();
        let Some(entry) = self.entries.get_mut(&user) else {
            return;
        };
        if entry.in_flight != Some(record.seq) {
            return;
        }
        entry.in_flight = None;
        self.in_flight -= 1;
        match &mut entry.pending {
            Some((_newer, place)) => *place = Place::Ready,
            None => {
                entry.pending = Some((record, Place::Ready));
                self.pending += 1;
            }
        }
        self.ready.push_front(user);
    }

    /// The broker acknowledged `seq` of `user`. Returns whether it was the user's record in
    /// flight (a stray report changes nothing). A parked newer state joins the line.
    pub(crate) fn delivered(&mut self, user: UserId, seq: u64) -> bool {
        let Some(entry) = self.entries.get_mut(&user) else {
            return false;
        };
        if entry.in_flight != Some(seq) {
            return false;
        }
        entry.in_flight = None;
        entry.failures = 0;
        self.in_flight -= 1;
        match &mut entry.pending {
            Some((_, place)) => {
                if *place == Place::Parked {
                    *place = Place::Ready;
                    self.ready.push_back(user);
                }
            }
            None => {
                self.entries.remove(&user);
            }
        }
        true
    }

    /// The delivery of `record` failed for good in librdkafka. The user's newest state is sent
    /// again after a backoff: the record itself if nothing newer was enqueued since (it is then
    /// still the latest, by sequence number), otherwise the newer pending state. An older
    /// state is never sent after a newer one.
    pub(crate) fn failed(&mut self, record: Pending, retriable: bool, now: Instant) -> Failure {
        let user = record.update.user();
        let Some(entry) = self.entries.get_mut(&user) else {
            return Failure::Dropped;
        };
        if entry.in_flight != Some(record.seq) {
            return Failure::Dropped;
        }
        entry.in_flight = None;
        entry.failures = entry.failures.saturating_add(1);
        self.in_flight -= 1;
        let due = now + self.backoff.after(entry.failures);
        match &mut entry.pending {
            Some((newer, place)) => {
                debug_assert!(
                    newer.seq > record.seq,
                    "a pending state is newer than the one in flight"
                );
                if *place == Place::Parked {
                    *place = Place::Delayed(due);
                    self.delayed.push(Reverse((due, newer.seq, user)));
                }
                Failure::Superseded
            }
            None if retriable && !self.closed => {
                // Still the newest state of the user (nothing pending, nothing else in flight):
                // retry it. Retries may take the queue past capacity by at most the in-flight
                // limit, rather than lose a user's last state.
                self.delayed.push(Reverse((due, record.seq, user)));
                entry.pending = Some((record, Place::Delayed(due)));
                self.pending += 1;
                Failure::Retried
            }
            None => {
                self.entries.remove(&user);
                Failure::Dropped
            }
        }
    }

    /// Up to `n` users with something undelivered (pending or in flight), for reports.
    pub(crate) fn sample_users(&self, n: usize) -> Vec<UserId> {
        self.entries.keys().take(n).copied().collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use presence_frame::{GroupMask, Location, PresenceState, Source, Status};

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };

    fn state(user: u32, time: i64) -> Update {
        Update::State(PresenceEvent {
            user: UserId::Relay(user),
            time: EventTime(time),
            state: PresenceState::new(Status::AVAILABLE, Location::DESK, GroupMask(1)),
            source: Source::Relay,
        })
    }

    fn user_time(p: &Pending) -> (u32, i64) {
        match p.update.user() {
            UserId::Relay(n) => (n, p.update.time().as_millis()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_newer_state_replaces_the_pending_one_in_place() {
        let now = Instant::now();
        let mut q = Queue::new(10, BACKOFF);
        assert_eq!(q.push(state(1, 10), now), Push::New);
        assert_eq!(q.push(state(2, 10), now), Push::New);
        assert_eq!(q.push(state(3, 10), now), Push::New);
        assert_eq!(q.push(state(1, 20), now), Push::Coalesced);
        assert_eq!(q.push(state(1, 30), now), Push::Coalesced);
        assert_eq!(q.pending(), 3);
        // First-enqueue order, newest content.
        let order: Vec<_> = std::iter::from_fn(|| q.pop(now))
            .map(|p| user_time(&p))
            .collect();
        assert_eq!(order, vec![(1, 30), (2, 10), (3, 10)]);
        assert_eq!((q.pending(), q.in_flight()), (0, 3));
    }

    #[test]
    fn a_full_queue_drops_new_users_but_still_coalesces_known_ones() {
        let now = Instant::now();
        let mut q = Queue::new(2, BACKOFF);
        assert_eq!(q.push(state(1, 1), now), Push::New);
        assert_eq!(q.push(state(2, 1), now), Push::New);
        assert_eq!(q.push(state(3, 1), now), Push::Full);
        assert_eq!(q.push(state(1, 2), now), Push::Coalesced);
        assert_eq!(q.pending(), 2);
        assert_eq!(q.entries.len(), 2);
        q.close();
        assert_eq!(q.push(state(1, 3), now), Push::Closed);
    }

    #[test]
    fn one_record_per_user_in_flight() {
        let now = Instant::now();
        let mut q = Queue::new(10, BACKOFF);
        q.push(state(1, 1), now);
        let first = q.pop(now).unwrap();
        assert_eq!(q.push(state(1, 2), now), Push::New);
        q.push(state(2, 1), now);
        // User 1's newer state waits for the in-flight one; user 2 is not held up.
        assert_eq!(user_time(&q.pop(now).unwrap()), (2, 1));
        assert!(q.pop(now).is_none());
        assert!(q.delivered(UserId::Relay(1), first.seq));
        assert_eq!(user_time(&q.pop(now).unwrap()), (1, 2));
        // A stray or repeated report changes nothing.
        assert!(!q.delivered(UserId::Relay(1), first.seq));
        assert_eq!(q.in_flight(), 2);
    }

    #[test]
    fn a_failed_record_that_is_still_newest_is_retried_after_a_backoff() {
        let now = Instant::now();
        let mut q = Queue::new(10, BACKOFF);
        q.push(state(1, 1), now);
        let sent = q.pop(now).unwrap();
        let seq = sent.seq;
        assert_eq!(q.failed(sent, true, now), Failure::Retried);
        assert_eq!((q.pending(), q.in_flight()), (1, 0));
        assert!(q.pop(now).is_none(), "not before the backoff");
        assert_eq!(q.next_due(), Some(now + Duration::from_millis(100)));
        let again = q.pop(now + Duration::from_millis(100)).unwrap();
        assert_eq!((again.seq, user_time(&again)), (seq, (1, 1)));
        // The second failure in a row backs off twice as long.
        let later = now + Duration::from_millis(100);
        assert_eq!(q.failed(again, true, later), Failure::Retried);
        assert_eq!(q.next_due(), Some(later + Duration::from_millis(200)));
    }

    #[test]
    fn a_failed_record_is_not_retried_when_a_newer_state_is_pending() {
        let now = Instant::now();
        let mut q = Queue::new(10, BACKOFF);
        q.push(state(1, 1), now);
        let old = q.pop(now).unwrap();
        q.push(state(1, 2), now); // parked behind the in-flight record
        assert_eq!(q.failed(old, true, now), Failure::Superseded);
        assert_eq!((q.pending(), q.in_flight()), (1, 0));
        assert!(
            q.pop(now).is_none(),
            "the newer state also waits out the backoff"
        );
        let next = q.pop(now + Duration::from_secs(1)).unwrap();
        assert_eq!(user_time(&next), (1, 2));
        assert!(
            q.pop(now + Duration::from_secs(1)).is_none(),
            "the old state is gone"
        );
    }

    #[test]
    fn a_state_enqueued_during_the_backoff_replaces_the_retry() {
        let now = Instant::now();
        let mut q = Queue::new(10, BACKOFF);
        q.push(state(1, 1), now);
        let old = q.pop(now).unwrap();
        assert_eq!(q.failed(old, true, now), Failure::Retried);
        assert_eq!(q.push(state(1, 2), now), Push::Coalesced);
        let next = q.pop(now + Duration::from_secs(1)).unwrap();
        assert_eq!(user_time(&next), (1, 2));
        assert!(q.pop(now + Duration::from_secs(5)).is_none());
    }

    #[test]
    fn a_hopeless_failure_is_dropped() {
        let now = Instant::now();
        let mut q = Queue::new(10, BACKOFF);
        q.push(state(1, 1), now);
        let sent = q.pop(now).unwrap();
        assert_eq!(q.failed(sent, false, now), Failure::Dropped);
        assert_eq!((q.pending(), q.in_flight(), q.entries.len()), (0, 0, 0));
    }

    #[test]
    fn unsend_puts_the_record_back_at_the_front() {
        let now = Instant::now();
        let mut q = Queue::new(10, BACKOFF);
        q.push(state(1, 1), now);
        q.push(state(2, 1), now);
        let first = q.pop(now).unwrap();
        q.unsend(first);
        assert_eq!(user_time(&q.pop(now).unwrap()), (1, 1));
        // With a newer state pending, the newer one goes instead.
        let mut q = Queue::new(10, BACKOFF);
        q.push(state(1, 1), now);
        q.push(state(2, 1), now);
        let first = q.pop(now).unwrap();
        q.push(state(1, 2), now);
        q.unsend(first);
        assert_eq!(user_time(&q.pop(now).unwrap()), (1, 2));
        assert_eq!(user_time(&q.pop(now).unwrap()), (2, 1));
        assert!(q.pop(now).is_none());
    }

    /// Random pushes, sends, acknowledgements and failures: per user, the records sent never go
    /// back in sequence (so never back in event time), and once everything is delivered the
    /// last acknowledged record of each user is the last state pushed for it.
    #[test]
    fn retries_never_send_an_older_state_and_the_newest_always_lands() {
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for round in 0..50 {
            let start = Instant::now();
            let mut now = start;
            let mut q = Queue::new(1_000, BACKOFF);
            let mut time = 0i64;
            let mut last_pushed: HashMap<UserId, i64> = HashMap::new();
            let mut last_sent: HashMap<UserId, u64> = HashMap::new();
            let mut last_acked: HashMap<UserId, i64> = HashMap::new();
            let mut in_flight: Vec<Pending> = Vec::new();
            for step in 0..2_000 {
                let finishing = step >= 1_500;
                match next(4) {
                    0 if !finishing => {
                        time += 1;
                        let user = 1 + next(5) as u32;
                        q.push(state(user, time), now);
                        last_pushed.insert(UserId::Relay(user), time);
                    }
                    1 => {
                        if let Some(p) = q.pop(now) {
                            let user = p.update.user();
                            if let Some(prev) = last_sent.insert(user, p.seq) {
                                assert!(p.seq >= prev, "round {round}: user {user} went back");
                            }
                            in_flight.push(p);
                        }
                    }
                    2 if !in_flight.is_empty() => {
                        let p = in_flight.swap_remove(next(in_flight.len() as u64) as usize);
                        let fail = !finishing && next(3) == 0;
                        if fail {
                            q.failed(p, true, now);
                        } else {
                            let user = p.update.user();
                            assert!(q.delivered(user, p.seq));
                            let t = p.update.time().as_millis();
                            if let Some(prev) = last_acked.insert(user, t) {
                                assert!(t >= prev, "round {round}: acked {user} back in time");
                            }
                        }
                    }
                    _ => now += Duration::from_millis(50),
                }
            }
            // Drain: deliver everything that is left.
            loop {
                for p in in_flight.drain(..) {
                    assert!(q.delivered(p.update.user(), p.seq));
                    last_acked.insert(p.update.user(), p.update.time().as_millis());
                }
                now += Duration::from_secs(2);
                match q.pop(now) {
                    Some(p) => in_flight.push(p),
                    None if q.pending() == 0 => break,
                    None => {}
                }
            }
            assert_eq!(last_acked, last_pushed, "round {round}");
            assert_eq!((q.pending(), q.in_flight(), q.entries.len()), (0, 0, 0));
        }
    }
}
