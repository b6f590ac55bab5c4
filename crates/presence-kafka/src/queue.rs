//! The coalescing queue between the callers and librdkafka: at most one pending state per
//! user (a newer one replaces the older in place), served in order of first enqueue, and at
//! most one record per user in flight, so a user's records reach the topic in the order they
//! were enqueued and a retry can never overtake a newer state.
//!
//! Pure data structure: no I/O, no clock of its own (callers pass `now`), no locking (the
//! publisher holds it behind a mutex).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use presence_frame::{EventTime, PresenceEvent, PresenceState, Source, UserId};

/// What to publish for a user: a state or a tombstone. Also what
/// [`Publisher::drain_undelivered`](crate::Publisher::drain_undelivered) hands back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// The user's current state.
    State(PresenceEvent),
    /// The user expired or left: a tombstone, dated with the event time of the state it
    /// deletes.
    Tombstone {
        /// Whose entry it deletes.
        user: UserId,
        /// The event time of the state it deletes.
        time: EventTime,
    },
}

impl Update {
    /// Whose update it is.
    pub fn user(&self) -> UserId {
        match self {
            Update::State(event) => event.user,
            Update::Tombstone { user, .. } => *user,
        }
    }

    /// The event time of the state, or the time of the tombstone.
    pub fn time(&self) -> EventTime {
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The record was still the user's newest state: queued again, after a backoff.
    Retried,
    /// A newer state of the user is pending: the failed record is dropped, the newer one will
    /// be sent (after the backoff).
    Superseded,
    /// Dropped: the report is for a record the queue no longer tracks (an older state).
    Dropped,
    /// Given up for good, although it was the user's newest state: the error cannot be cured
    /// by retrying, or the queue is closed. The update is handed back so that the caller can
    /// see to it that the state is sent again later.
    GaveUp(Update),
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

/// A user's state waiting to be sent, without the user (the slot has it): what a slot holds
/// for most of the users most of the time, so it is kept small.
#[derive(Debug)]
struct Staged {
    seq: u64,
    received: Instant,
    time: EventTime,
    /// `None`: a tombstone.
    state: Option<(PresenceState, Source)>,
}

impl Staged {
    fn new(seq: u64, update: Update, received: Instant) -> Staged {
        let time = update.time();
        let state = match update {
            Update::State(event) => Some((event.state, event.source)),
            Update::Tombstone { .. } => None,
        };
        Staged {
            seq,
            received,
            time,
            state,
        }
    }

    fn into_pending(self, user: UserId) -> Pending {
        let update = match self.state {
            Some((state, source)) => Update::State(PresenceEvent {
                user,
                time: self.time,
                state,
                source,
            }),
            None => Update::Tombstone {
                user,
                time: self.time,
            },
        };
        Pending {
            seq: self.seq,
            update,
            received: self.received,
        }
    }
}

/// No record in flight.
const NONE_IN_FLIGHT: u64 = u64::MAX;

/// Everything the queue knows of one user with something pending or in flight.
#[derive(Debug)]
struct Slot {
    user: UserId,
    /// The user's newest state not yet handed to librdkafka, and where it waits.
    pending: Option<(Staged, Place)>,
    /// The sequence number of the user's record in librdkafka, or [`NONE_IN_FLIGHT`].
    in_flight: u64,
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

/// Slots per chunk of the slab (about 640 KiB).
const CHUNK: usize = 4_096;

/// The slots, in fixed-size chunks: growing never copies (or doubles) what is there, so a
/// burst of new users costs its slots and no transient second copy of the slab.
#[derive(Debug, Default)]
struct Slab {
    chunks: Vec<Vec<Slot>>,
    len: usize,
}

impl Slab {
    fn len(&self) -> usize {
        self.len
    }

    /// Slots allocated, used or not.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    fn push(&mut self, slot: Slot) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(slot);
            self.len += 1;
        }
    }

    fn into_iter(self) -> impl Iterator<Item = Slot> {
        self.chunks.into_iter().flatten()
    }

    fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.chunks.iter().flatten()
    }
}

impl std::ops::Index<u32> for Slab {
    type Output = Slot;

    fn index(&self, i: u32) -> &Slot {
        let i = i as usize;
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl std::ops::IndexMut<u32> for Slab {
    fn index_mut(&mut self, i: u32) -> &mut Slot {
        let i = i as usize;
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
}

/// Below this many slots the slab is never compacted.
const COMPACT_MIN_SLOTS: usize = 4_096;

/// The coalescing queue. See the module docs.
///
/// Users live in a slab of [`Slot`]s found through a hash index of 4-byte slot numbers (hashed
/// with [`UserId::mix64`]); the ready line and the backoff heap hold slot numbers. A slot is
/// freed when its user has nothing pending and nothing in flight, and reused by the next new
/// user; when a burst has passed and most slots are free, the slab is compacted and its memory
/// given back, so a snapshot of every user does not pin its peak for the life of the process.
#[derive(Debug)]
pub(crate) struct Queue {
    capacity: usize,
    backoff: Backoff,
    next_seq: u64,
    index: HashTable<u32>,
    slots: Slab,
    free: Vec<u32>,
    ready: VecDeque<u32>,
    delayed: BinaryHeap<Reverse<(Instant, u32)>>,
    pending: usize,
    in_flight: usize,
    closed: bool,
    /// Below this many slots the slab is never compacted ([`COMPACT_MIN_SLOTS`]; tests lower
    /// it to compact often).
    compact_min: usize,
}

impl Queue {
    pub(crate) fn new(capacity: usize, backoff: Backoff) -> Queue {
        Queue {
            capacity,
            backoff,
            next_seq: 0,
            index: HashTable::new(),
            slots: Slab::default(),
            free: Vec::new(),
            ready: VecDeque::new(),
            delayed: BinaryHeap::new(),
            pending: 0,
            in_flight: 0,
            closed: false,
            compact_min: COMPACT_MIN_SLOTS,
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

    /// Users with something pending or in flight.
    #[cfg(test)]
    pub(crate) fn users(&self) -> usize {
        self.index.len()
    }

    /// Refuses further pushes and retries.
    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    fn find(&self, user: UserId) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(user.mix64(), |&i| slots[i].user == user)
            .copied()
    }

    /// A slot for a user the queue does not hold yet.
    fn insert(&mut self, user: UserId, pending: (Staged, Place)) -> u32 {
        let slot = Slot {
            user,
            pending: Some(pending),
            in_flight: NONE_IN_FLIGHT,
            failures: 0,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                // At most `capacity` users pending plus `max_in_flight` in flight, both checked
                // to fit well inside u32 by the configuration.
                let i = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(slot);
                i
            }
        };
        let slots = &self.slots;
        self.index
            .insert_unique(user.mix64(), i, |&j| slots[j].user.mix64());
        i
    }

    /// Forgets a user with nothing pending and nothing in flight.
    fn remove(&mut self, i: u32) {
        let user = self.slots[i].user;
        let slots = &self.slots;
        if let Ok(entry) = self
            .index
            .find_entry(user.mix64(), |&j| slots[j].user == user)
        {
            entry.remove();
        }
        self.free.push(i);
        if self.slots.len() >= self.compact_min && self.index.len() * 4 < self.slots.len() {
            self.compact();
        }
    }

    /// Moves the live slots to the front of a right-sized slab and renumbers every reference
    /// to them. Runs when three quarters of the slab are free, so its cost (linear in the
    /// slab) is paid for by the removals since the last compaction.
    fn compact(&mut self) {
        let mut renumber = vec![u32::MAX; self.slots.len()];
        let mut live = Slab::default();
        let mut free = vec![false; self.slots.len()];
        for &i in &self.free {
            free[i as usize] = true;
        }
        for (i, slot) in std::mem::take(&mut self.slots).into_iter().enumerate() {
            if !free[i] {
                renumber[i] = u32::try_from(live.len()).unwrap_or(u32::MAX);
                live.push(slot);
            }
        }
        self.slots = live;
        self.free = Vec::new();
        let slots = &self.slots;
        let mut index = HashTable::with_capacity(slots.len());
        for (i, slot) in slots.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            index.insert_unique(slot.user.mix64(), i, |&j| slots[j].user.mix64());
        }
        self.index = index;
        self.ready = self
            .ready
            .iter()
            .map(|&i| renumber[i as usize])
            .filter(|&i| i != u32::MAX)
            .collect();
        self.delayed = self
            .delayed
            .iter()
            .map(|&Reverse((due, i))| Reverse((due, renumber[i as usize])))
            .filter(|Reverse((_, i))| *i != u32::MAX)
            .collect();
    }

    /// Enqueues the newest state of a user. Never blocks, never grows past `capacity` users.
    pub(crate) fn push(&mut self, update: Update, received: Instant) -> Push {
        if self.closed {
            return Push::Closed;
        }
        let user = update.user();
        let seq = self.next_seq;
        let at_capacity = self.pending >= self.capacity;
        match self.find(user) {
            Some(i) => {
                let slot = &mut self.slots[i];
                if let Some((staged, _place)) = &mut slot.pending {
                    // Same place in line (first enqueue), newer content.
                    *staged = Staged::new(seq, update, received);
                    self.next_seq += 1;
                    return Push::Coalesced;
                }
                if at_capacity {
                    return Push::Full;
                }
                // The user's previous record is in flight: wait for its acknowledgement.
                slot.pending = Some((Staged::new(seq, update, received), Place::Parked));
            }
            None => {
                if at_capacity {
                    return Push::Full;
                }
                let staged = Staged::new(seq, update, received);
                let i = self.insert(user, (staged, Place::Ready));
                self.ready.push_back(i);
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
        while let Some(i) = self.ready.pop_front() {
            let slot = &mut self.slots[i];
            match slot.pending.take() {
                Some((staged, Place::Ready)) => {
                    debug_assert_eq!(slot.in_flight, NONE_IN_FLIGHT);
                    slot.in_flight = staged.seq;
                    self.pending -= 1;
                    self.in_flight += 1;
                    return Some(staged.into_pending(slot.user));
                }
                other => slot.pending = other, // not ready after all: leave it where it is
            }
        }
        None
    }

    /// When the earliest backing-off state becomes ready.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.delayed.peek().map(|Reverse((due, _))| *due)
    }

    fn promote_due(&mut self, now: Instant) {
        while let Some(Reverse((due, i))) = self.delayed.peek().copied() {
            if due > now {
                break;
            }
            self.delayed.pop();
            // A slot freed and reused since holds another user; it is promoted only if it waits
            // for this very instant, which then is its own due time as well.
            if let Some((_, place)) = &mut self.slots[i].pending
                && *place == Place::Delayed(due)
            {
                *place = Place::Ready;
                self.ready.push_back(i);
            }
        }
    }

    /// Puts back a record that librdkafka would not take (its queue was full), at the front of
    /// the line, unless a newer state of the user arrived meanwhile.
    pub(crate) fn unsend(&mut self, record: Pending) {
        let user = record.update.user();
        let Some(i) = self.find(user) else {
            return;
        };
        let slot = &mut self.slots[i];
        if slot.in_flight != record.seq {
            return;
        }
        slot.in_flight = NONE_IN_FLIGHT;
        self.in_flight -= 1;
        match &mut slot.pending {
            Some((_newer, place)) => *place = Place::Ready,
            None => {
                let staged = Staged::new(record.seq, record.update, record.received);
                slot.pending = Some((staged, Place::Ready));
                self.pending += 1;
            }
        }
        self.ready.push_front(i);
    }

    /// The broker acknowledged `seq` of `user`. Returns whether it was the user's record in
    /// flight (a stray report changes nothing). A parked newer state joins the line.
    pub(crate) fn delivered(&mut self, user: UserId, seq: u64) -> bool {
        let Some(i) = self.find(user) else {
            return false;
        };
        let slot = &mut self.slots[i];
        if slot.in_flight != seq {
            return false;
        }
        slot.in_flight = NONE_IN_FLIGHT;
        slot.failures = 0;
        self.in_flight -= 1;
        match &mut slot.pending {
            Some((_, place)) => {
                if *place == Place::Parked {
                    *place = Place::Ready;
                    self.ready.push_back(i);
                }
            }
            None => self.remove(i),
        }
        true
    }

    /// The delivery of `record` failed for good in librdkafka. The user's newest state is sent
    /// again after a backoff: the record itself if nothing newer was enqueued since (it is then
    /// still the latest, by sequence number), otherwise the newer pending state. An older
    /// state is never sent after a newer one.
    pub(crate) fn failed(&mut self, record: Pending, retriable: bool, now: Instant) -> Failure {
        let user = record.update.user();
        let Some(i) = self.find(user) else {
            return Failure::Dropped;
        };
        let slot = &mut self.slots[i];
        if slot.in_flight != record.seq {
            return Failure::Dropped;
        }
        slot.in_flight = NONE_IN_FLIGHT;
        slot.failures = slot.failures.saturating_add(1);
        self.in_flight -= 1;
        let due = now + self.backoff.after(slot.failures);
        match &mut slot.pending {
            Some((newer, place)) => {
                debug_assert!(
                    newer.seq > record.seq,
                    "a pending state is newer than the one in flight"
                );
                if *place == Place::Parked {
                    *place = Place::Delayed(due);
                    self.delayed.push(Reverse((due, i)));
                }
                Failure::Superseded
            }
            None if retriable && !self.closed => {
                // Still the newest state of the user (nothing pending, nothing else in flight):
                // retry it. Retries may take the queue past capacity by at most the in-flight
                // limit, rather than lose a user's last state.
                let staged = Staged::new(record.seq, record.update, record.received);
                slot.pending = Some((staged, Place::Delayed(due)));
                self.delayed.push(Reverse((due, i)));
                self.pending += 1;
                Failure::Retried
            }
            None => {
                self.remove(i);
                Failure::GaveUp(record.update)
            }
        }
    }

    /// How many users `which` selects have something undelivered (pending or in flight).
    pub(crate) fn users_where(&self, which: &crate::publisher::Which) -> usize {
        self.index
            .iter()
            .filter(|&&i| which(self.slots[i].user))
            .count()
    }

    /// Up to `n` users with something undelivered (pending or in flight), for reports.
    pub(crate) fn sample_users(&self, n: usize) -> Vec<UserId> {
        self.index
            .iter()
            .take(n)
            .map(|&i| self.slots[i].user)
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use presence_frame::{GroupMask, Location, PresenceState, Source, Status};
    use std::collections::HashMap;

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
        assert_eq!(q.users(), 2);
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
        assert!(matches!(
            q.failed(sent, false, now),
            Failure::GaveUp(Update::State(_))
        ));
        assert_eq!((q.pending(), q.in_flight(), q.users()), (0, 0, 0));
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
        random_pushes_sends_and_acks(5, COMPACT_MIN_SLOTS);
    }

    /// The same with many users and a slab compacted whenever three quarters of it are free,
    /// so that slots are reused and renumbered while states wait in the line and the backoff.
    #[test]
    fn compaction_and_slot_reuse_lose_nothing_and_reorder_nothing() {
        random_pushes_sends_and_acks(300, 8);
    }

    #[test]
    fn a_burst_of_users_gives_its_memory_back_once_delivered() {
        let now = Instant::now();
        let mut q = Queue::new(100_000, BACKOFF);
        for user in 0..50_000 {
            q.push(state(user, 1), now);
        }
        let sent: Vec<_> = std::iter::from_fn(|| q.pop(now)).collect();
        assert_eq!(sent.len(), 50_000);
        // Users 0..100 change again while in flight: parked behind their records.
        for user in 0..100 {
            assert_eq!(q.push(state(user, 2), now), Push::New);
        }
        for p in &sent[100..] {
            assert!(q.delivered(p.update.user(), p.seq));
        }
        assert_eq!(q.users(), 100);
        assert!(
            q.slots.capacity() <= 2 * COMPACT_MIN_SLOTS,
            "slab compacted, capacity {}",
            q.slots.capacity()
        );
        assert!(
            q.pop(now).is_none(),
            "the parked states wait for their acks"
        );
        for p in &sent[..100] {
            assert!(q.delivered(p.update.user(), p.seq));
        }
        let next: Vec<_> = std::iter::from_fn(|| q.pop(now))
            .map(|p| user_time(&p))
            .collect();
        assert_eq!(next, (0..100).map(|u| (u, 2)).collect::<Vec<_>>());
    }

    fn random_pushes_sends_and_acks(users: u64, compact_min: usize) {
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
            q.compact_min = compact_min;
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
                        let user = 1 + next(users) as u32;
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
            assert_eq!((q.pending(), q.in_flight(), q.users()), (0, 0, 0));
        }
    }
}
