//! One shard: a hash index over a slab of entries that are also threaded on a list ordered by
//! confirmation time.
//!
//! Because every entry lives for the same time-to-live after its last confirmation, ordering by
//! confirmation is ordering by deadline: the entries due to expire are always at the head of the
//! list, so expiry pops exactly what expires and never scans. To keep confirmations cheap, an
//! entry only moves to the tail when its confirmation lands in a later *tick* (a coarse slice of
//! time, a fraction of the TTL); the list is therefore ordered by tick, and the sweeper expires
//! a head entry once its whole tick is past the TTL. Reads compare the exact confirmation time,
//! so they never see an expired entry even before the sweeper gets to it.
//!
//! The slab is split in two parallel arrays: [`Hot`], one cache line with everything `apply`
//! reads for an event without a presence definition or message (a relay frame, most stream
//! events after the first), and [`Extra`], the definition and message, read only when either
//! side has them. On a registry larger than the cache, each array access is a miss, so an
//! update usually costs one miss instead of two.
//!
//! An event reaches the shard as anything that is [`Incoming`]: a [`PresenceEvent`], or a relay
//! [`Frame`] read in place, so that a relay message is applied without building an event per
//! frame. Both go through the same code, so they cannot disagree.

use std::cmp::Ordering;
use std::sync::Arc;

use presence_frame::{
    EventTime, Frame, GroupMask, Guid, Location, PresenceEvent, PresenceState, Source, Status,
    UserId,
};

use crate::index::{Index, prefetch};
use crate::{Change, Expired, Outcome};

/// A change of the user of `event`, from `previous`. Built in one place, where the previous
/// state is read, so that the outcome is assembled once rather than copied through layers.
#[inline(always)]
fn changed(previous: Option<PresenceEvent>, event: &impl Incoming) -> Outcome {
    Outcome::Changed(Change {
        previous,
        current: event.to_event(),
    })
}

/// No slot: the end of the list.
const NIL: u32 = u32::MAX;

/// The frequently read part of an entry: one aligned cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Hot {
    /// The GUID, or the relay number (see `relay`).
    key: u128,
    time: i64,
    groups: u64,
    /// Exact time of the last confirmation, on the registry clock.
    confirmed_ms: u64,
    /// The tick the entry was last placed on the list at.
    tick: u64,
    prev: u32,
    next: u32,
    relay: bool,
    status: u8,
    location: u8,
    source: u8,
    /// Whether the entry has a presence definition or a message (in `Extra`).
    has_extra: bool,
    /// Whether the state held was handed on: cleared by
    /// [`Registry::mark_unpublished`](crate::Registry::mark_unpublished) when it never reached
    /// its destination, so that the next confirmation reports it again as a change.
    published: bool,
}

/// The rarely needed part of an entry.
#[derive(Clone, Default)]
struct Extra {
    definition_id: Option<Arc<str>>,
    message: Option<Arc<str>>,
}

fn key_of(user: UserId) -> (u128, bool) {
    match user {
        UserId::Genesys(Guid(v)) => (v, false),
        UserId::Relay(n) => (u128::from(n), true),
    }
}

fn source_code(source: Source) -> u8 {
    match source {
        Source::Stream => 0,
        Source::Resync => 1,
        Source::Relay => 2,
    }
}

fn source_of(code: u8) -> Source {
    match code {
        0 => Source::Stream,
        1 => Source::Resync,
        _ => Source::Relay,
    }
}

/// An event as the shard reads it, field by field.
pub(crate) trait Incoming {
    fn user(&self) -> UserId;
    fn time(&self) -> i64;
    fn status(&self) -> u8;
    fn location(&self) -> u8;
    fn groups(&self) -> u64;
    fn source(&self) -> u8;
    fn definition_id(&self) -> Option<&Arc<str>>;
    fn message(&self) -> Option<&Arc<str>>;
    /// The event as a [`PresenceEvent`], for an [`Outcome`](crate::Outcome).
    fn to_event(&self) -> PresenceEvent;

    /// Whether the event has a presence definition or a message.
    #[inline]
    fn has_extra(&self) -> bool {
        self.definition_id().is_some() || self.message().is_some()
    }
}

impl Incoming for PresenceEvent {
    #[inline]
    fn user(&self) -> UserId {
        self.user
    }
    #[inline]
    fn time(&self) -> i64 {
        self.time.0
    }
    #[inline]
    fn status(&self) -> u8 {
        self.state.status.0
    }
    #[inline]
    fn location(&self) -> u8 {
        self.state.location.0
    }
    #[inline]
    fn groups(&self) -> u64 {
        self.state.groups.0
    }
    #[inline]
    fn source(&self) -> u8 {
        source_code(self.source)
    }
    #[inline]
    fn definition_id(&self) -> Option<&Arc<str>> {
        self.state.definition_id.as_ref()
    }
    #[inline]
    fn message(&self) -> Option<&Arc<str>> {
        self.state.message.as_ref()
    }
    #[inline]
    fn to_event(&self) -> PresenceEvent {
        self.clone()
    }
}

/// A relay frame is the event [`Frame::to_event`] makes of it, read without making it.
impl Incoming for Frame {
    #[inline]
    fn user(&self) -> UserId {
        UserId::Relay(self.user_id)
    }
    #[inline]
    fn time(&self) -> i64 {
        self.time_ms
    }
    #[inline]
    fn status(&self) -> u8 {
        self.status.0
    }
    #[inline]
    fn location(&self) -> u8 {
        self.location.0
    }
    #[inline]
    fn groups(&self) -> u64 {
        self.group_mask().0
    }
    #[inline]
    fn source(&self) -> u8 {
        source_code(Source::Relay)
    }
    #[inline]
    fn definition_id(&self) -> Option<&Arc<str>> {
        None
    }
    #[inline]
    fn message(&self) -> Option<&Arc<str>> {
        None
    }
    #[inline]
    fn to_event(&self) -> PresenceEvent {
        Frame::to_event(self)
    }
}

/// The registry's clock as one application of events sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    /// The time on the registry's clock: confirmations are stamped with it.
    pub(crate) ms: u64,
    /// `ms`'s expiry tick.
    pub(crate) tick: u64,
    /// The time against which entries are judged live or expired: `ms`, unless expiry is held
    /// back (then the moment it was held from).
    pub(crate) expiry_ms: u64,
    /// The time-to-live.
    pub(crate) ttl_ms: u64,
}

impl Now {
    /// Whether an entry confirmed at `confirmed_ms` is past its time-to-live.
    #[inline(always)]
    pub(crate) fn is_expired(&self, confirmed_ms: u64) -> bool {
        self.expiry_ms.saturating_sub(confirmed_ms) >= self.ttl_ms
    }
}

/// An event of a batch, sorted by shard: its user's hash and its position in the batch.
#[derive(Clone, Copy, Default)]
pub(crate) struct Keyed {
    pub(crate) hash: u64,
    pub(crate) at: u32,
}

/// How many events ahead of the one being applied a run loads index buckets; entries are
/// loaded half as far ahead, once their bucket has had time to arrive. Far enough to cover a
/// miss to memory at the cost of applying an event, near enough that the lines are still in
/// L1 when used. (8 to 32 measured within noise of each other; 4 was slower.)
const INDEX_AHEAD: usize = 16;
const ENTRY_AHEAD: usize = INDEX_AHEAD / 2;

impl Hot {
    fn new(event: &impl Incoming, confirmed_ms: u64, tick: u64) -> Hot {
        let (key, relay) = key_of(event.user());
        Hot {
            key,
            time: event.time(),
            groups: event.groups(),
            confirmed_ms,
            tick,
            prev: NIL,
            next: NIL,
            relay,
            status: event.status(),
            location: event.location(),
            source: event.source(),
            has_extra: event.has_extra(),
            published: true,
        }
    }

    #[inline]
    fn is(&self, user: UserId) -> bool {
        (self.key, self.relay) == key_of(user)
    }

    fn user(&self) -> UserId {
        if self.relay {
            UserId::Relay(self.key as u32)
        } else {
            UserId::Genesys(Guid(self.key))
        }
    }

    /// Overwrites the event fields, keeping the list links and confirmation.
    fn set_event(&mut self, event: &impl Incoming) {
        self.time = event.time();
        self.groups = event.groups();
        self.status = event.status();
        self.location = event.location();
        self.source = event.source();
        self.has_extra = event.has_extra();
        self.published = true;
    }

    #[inline(always)]
    fn event(&self, extra: &Extra) -> PresenceEvent {
        PresenceEvent {
            user: self.user(),
            time: EventTime(self.time),
            state: PresenceState {
                status: Status(self.status),
                location: Location(self.location),
                groups: GroupMask(self.groups),
                definition_id: extra.definition_id.clone(),
                message: extra.message.clone(),
            },
            source: source_of(self.source),
        }
    }

    /// The state of `event` against the stored state, in [`PresenceState`]'s order; `extra`
    /// is called (and the `Extra` read) only when the cheap fields tie and either side has a
    /// definition or a message.
    #[inline]
    fn cmp_state<'a>(&self, extra: impl FnOnce() -> &'a Extra, event: &impl Incoming) -> Ordering {
        event
            .status()
            .cmp(&self.status)
            .then(event.location().cmp(&self.location))
            .then(event.groups().cmp(&self.groups))
            .then_with(|| {
                if !self.has_extra && !event.has_extra() {
                    return Ordering::Equal;
                }
                let extra = extra();
                (event.definition_id(), event.message())
                    .cmp(&(extra.definition_id.as_ref(), extra.message.as_ref()))
            })
    }
}

/// A shard of the registry. Not thread-safe by itself; the registry wraps each in a lock.
pub(crate) struct Shard {
    /// Slot numbers by their user's hash ([`UserId::mix64`]): 8 bytes a bucket, so the index
    /// of a shard mostly stays in cache and a lookup costs one miss, on the slot itself.
    index: Index,
    hot: Vec<Hot>,
    extra: Vec<Extra>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    /// Live entries per status code (entries past their TTL count until swept).
    counts: [u32; 256],
}

impl Shard {
    pub(crate) fn new() -> Shard {
        Shard {
            index: Index::new(),
            hot: Vec::new(),
            extra: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            counts: [0; 256],
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn counts(&self) -> &[u32; 256] {
        &self.counts
    }

    /// Applies `event`, whose user hashes to `hash`, at `now`.
    ///
    /// The common case, a published entry within its time-to-live, is decided here; an entry
    /// past its TTL (not yet swept) or holding a state that never reached downstream goes to
    /// [`apply_unusual`](Self::apply_unusual), out of line, so that the path every event takes
    /// stays short. Each outcome is built where it is returned: an outcome is two ~100-byte
    /// states, and wrapping one in an `Option` first costs a copy per change.
    #[inline(always)]
    pub(crate) fn apply(&mut self, event: &impl Incoming, hash: u64, now: Now) -> Outcome {
        let Some(at) = self.find(event.user(), hash) else {
            self.insert(event, hash, now.ms, now.tick);
            return changed(None, event);
        };
        let slot = at as usize;
        let hot = self.hot[slot];
        if !hot.published || now.is_expired(hot.confirmed_ms) {
            return self.apply_unusual(at, event, now);
        }
        let by_state = hot.cmp_state(|| &self.extra[slot], event);
        match event.time().cmp(&hot.time).then(by_state) {
            // Older than what is held.
            Ordering::Less => Outcome::Stale,
            // A repeat (same time, same state).
            Ordering::Equal => {
                self.confirm_same_state(at, event, now);
                Outcome::Refreshed
            }
            Ordering::Greater if by_state.is_eq() => {
                // The same state at a later time: the source moved its time, which Genesys
                // does only on a change, so a change and its undo happened unseen (say, in a
                // gap before a resync). Report it so that downstream learns the new time.
                let outcome = changed(Some(self.event_at(slot)), event);
                self.confirm_same_state(at, event, now);
                outcome
            }
            Ordering::Greater => {
                let outcome = changed(Some(self.replace(at, event)), event);
                self.confirm(at, now.ms, now.tick);
                outcome
            }
        }
    }

    /// [`apply`](Self::apply) for an entry that is past its time-to-live but not yet swept, or
    /// whose state never reached downstream (see
    /// [`Registry::mark_unpublished`](crate::Registry::mark_unpublished)).
    #[cold]
    #[inline(never)]
    fn apply_unusual(&mut self, at: u32, event: &impl Incoming, now: Now) -> Outcome {
        let slot = at as usize;
        let hot = self.hot[slot];
        let by_state = hot.cmp_state(|| &self.extra[slot], event);
        if event.time().cmp(&hot.time).then(by_state).is_lt() {
            // Older than what is held. Also when the entry is past its time-to-live but not yet
            // swept: its tombstone is still to come, and downstream saw the newer state, so an
            // older one now would take the user back in time. After the sweep it may start
            // afresh (the tombstone lies between the two).
            return Outcome::Stale;
        }
        // Past its TTL, the entry is gone as far as readers know: a change has no previous.
        let expired = now.is_expired(hot.confirmed_ms);
        if by_state.is_eq() {
            // The same state at a later time (see `apply`), or a repeat of a state that never
            // reached downstream, is reported (again). A repeat of a published entry past its
            // TTL but not yet swept is not: it lives on, and downstream, which never saw its
            // tombstone, already holds this state.
            let report = event.time() > hot.time || !hot.published;
            let previous = (report && !expired).then(|| self.event_at(slot));
            self.confirm_same_state(at, event, now);
            return if report {
                changed(previous, event)
            } else {
                Outcome::Refreshed
            };
        }
        let previous = self.replace(at, event);
        self.confirm(at, now.ms, now.tick);
        changed((!expired).then_some(previous), event)
    }

    /// Confirms the entry at `at`, which holds `event`'s state, as published: a later event
    /// time moves the entry to it, with its source; at the same time the larger source is
    /// kept, so that replicas agree.
    #[inline(always)]
    fn confirm_same_state(&mut self, at: u32, event: &impl Incoming, now: Now) {
        let entry = &mut self.hot[at as usize];
        if event.time() > entry.time {
            entry.time = event.time();
            entry.source = event.source();
        } else {
            entry.source = entry.source.max(event.source());
        }
        entry.published = true;
        self.confirm(at, now.ms, now.tick);
    }

    /// Marks `user` as not published when its entry still holds event time `time`; returns
    /// whether it did.
    pub(crate) fn mark_unpublished(&mut self, user: UserId, time: i64, hash: u64) -> bool {
        let Some(at) = self.find(user, hash) else {
            return false;
        };
        let hot = &mut self.hot[at as usize];
        if hot.time != time {
            return false;
        }
        hot.published = false;
        true
    }

    /// Removes `user` (hash `hash`), returning its last state and when it was last confirmed.
    pub(crate) fn remove_user(&mut self, user: UserId, hash: u64) -> Option<(PresenceEvent, u64)> {
        let at = self.find(user, hash)?;
        let confirmed_ms = self.hot[at as usize].confirmed_ms;
        Some((self.remove(at), confirmed_ms))
    }

    /// Gives the live entry of `event`'s user `event`'s group mask when the entry is not
    /// older than `event` (see [`Registry::regroup_with`](crate::Registry::regroup_with)).
    /// `None`: the user has no live entry, or a newer event time than the entry's (a plain
    /// apply decides then); `Some(outcome)`: `Changed` when the mask changed, else `Refreshed`.
    pub(crate) fn regroup(
        &mut self,
        event: &PresenceEvent,
        hash: u64,
        now: Now,
    ) -> Option<Outcome> {
        let at = self.find(event.user, hash)?;
        let slot = at as usize;
        let hot = self.hot[slot];
        if now.is_expired(hot.confirmed_ms) || event.time.0 > hot.time {
            return None;
        }
        if hot.groups == event.state.groups.0 {
            return Some(Outcome::Refreshed);
        }
        let previous = self.event_at(slot);
        let entry = &mut self.hot[slot];
        entry.groups = event.state.groups.0;
        entry.published = true;
        let current = self.event_at(slot);
        Some(Outcome::Changed(Change {
            previous: Some(previous),
            current,
        }))
    }

    /// Whether `user` (hash `hash`) has an entry, live or not yet swept.
    pub(crate) fn contains(&self, user: UserId, hash: u64) -> bool {
        self.find(user, hash).is_some()
    }

    /// Applies a run of a batch's events that all belong to this shard, in order, and hands
    /// each outcome to `out`. `run` holds the events' positions in `events`.
    ///
    /// A registry larger than the cache misses on each event's index bucket and again on its
    /// entry, the second waiting for the first. So while applying one event, the run loads
    /// the bucket of the event [`INDEX_AHEAD`] places later and the entry of the one
    /// [`ENTRY_AHEAD`] places later (its bucket loaded by then): the misses of many events
    /// overlap, and each event finds its lines in cache when its turn comes.
    #[inline]
    pub(crate) fn apply_run<E: Incoming>(
        &mut self,
        run: &[Keyed],
        events: &[E],
        now: Now,
        mut out: impl FnMut(Outcome),
    ) {
        for k in run.iter().take(INDEX_AHEAD) {
            self.index.prefetch(k.hash);
        }
        for k in run.iter().take(ENTRY_AHEAD) {
            self.prefetch_entry(k.hash);
            if let Some(event) = events.get(k.at as usize) {
                prefetch(event);
            }
        }
        for (i, k) in run.iter().enumerate() {
            if let Some(ahead) = run.get(i + INDEX_AHEAD) {
                self.index.prefetch(ahead.hash);
            }
            if let Some(ahead) = run.get(i + ENTRY_AHEAD) {
                self.prefetch_entry(ahead.hash);
                // The batch is in batch order, not shard order: its events are read at random.
                if let Some(event) = events.get(ahead.at as usize) {
                    prefetch(event);
                }
            }
            out(self.apply(&events[k.at as usize], k.hash, now));
        }
    }

    /// Starts loading the entry that a lookup of `hash` will most likely land on.
    #[inline]
    fn prefetch_entry(&self, hash: u64) {
        if let Some(slot) = self.index.candidate(hash)
            && let Some(hot) = self.hot.get(slot as usize)
        {
            prefetch(hot);
        }
    }

    /// Puts `event` in slot `at` and returns what was there; keeps the counts right. The
    /// `Extra` array is touched only when the old or the new state has a definition or a
    /// message.
    #[inline(always)]
    fn replace(&mut self, at: u32, event: &impl Incoming) -> PresenceEvent {
        let slot = at as usize;
        let hot = &mut self.hot[slot];
        let mut previous = hot.event(&Extra::default());
        if hot.has_extra || event.has_extra() {
            let old = std::mem::replace(
                &mut self.extra[slot],
                Extra {
                    definition_id: event.definition_id().cloned(),
                    message: event.message().cloned(),
                },
            );
            previous.state.definition_id = old.definition_id;
            previous.state.message = old.message;
        }
        self.counts[usize::from(hot.status)] -= 1;
        self.counts[usize::from(event.status())] += 1;
        hot.set_event(event);
        previous
    }

    /// The full event of slot `slot`, reading `Extra` only when the entry has one.
    #[inline(always)]
    fn event_at(&self, slot: usize) -> PresenceEvent {
        let hot = &self.hot[slot];
        if hot.has_extra {
            hot.event(&self.extra[slot])
        } else {
            hot.event(&Extra::default())
        }
    }

    /// The entry of `user`, unless it is past its TTL at `now`.
    pub(crate) fn get(&self, user: UserId, now: Now) -> Option<PresenceEvent> {
        let slot = self.find(user, user.mix64())? as usize;
        (!now.is_expired(self.hot[slot].confirmed_ms)).then(|| self.event_at(slot))
    }

    /// Calls `f` on every entry not past its TTL at `now`.
    pub(crate) fn for_each_live(&self, now: Now, f: &mut impl FnMut(&PresenceEvent)) {
        let mut at = self.head;
        while at != NIL {
            let hot = &self.hot[at as usize];
            if !now.is_expired(hot.confirmed_ms) {
                f(&self.event_at(at as usize));
            }
            at = hot.next;
        }
    }

    /// Whether the entry at the head of the list is due for removal at `at_ms`: its whole
    /// tick is at least the time-to-live old. Every confirmation on a tick happened before the
    /// tick's end.
    fn head_is_due(&self, at_ms: u64, tick_ms: u64, ttl_ms: u64) -> bool {
        self.hot.get(self.head as usize).is_some_and(|hot| {
            let tick_end = hot.tick.saturating_add(1).saturating_mul(tick_ms);
            tick_end.saturating_add(ttl_ms) <= at_ms
        })
    }

    /// Removes every entry due at `now.expiry_ms` (see [`head_is_due`](Self::head_is_due)),
    /// oldest first, handing each to `expired`. Stops at the first entry that is not due, so
    /// the work is what expires.
    pub(crate) fn sweep(
        &mut self,
        now: Now,
        tick_ms: u64,
        mut expired: impl FnMut(Expired),
    ) -> usize {
        let mut removed = 0;
        while self.head != NIL && self.head_is_due(now.expiry_ms, tick_ms, now.ttl_ms) {
            let at = self.head;
            let confirmed_ms = self.hot[at as usize].confirmed_ms;
            let event = self.remove(at);
            expired(Expired {
                last: event,
                confirmed_ms,
            });
            removed += 1;
        }
        removed
    }

    /// How many entries would be due at `now.ms` if expiry were not held back. Walks only
    /// those.
    pub(crate) fn overdue(&self, now: Now, tick_ms: u64) -> usize {
        let mut n = 0;
        let mut at = self.head;
        while let Some(hot) = self.hot.get(at as usize) {
            let tick_end = hot.tick.saturating_add(1).saturating_mul(tick_ms);
            if tick_end.saturating_add(now.ttl_ms) > now.ms {
                break;
            }
            n += 1;
            at = hot.next;
        }
        n
    }

    /// The slot of `user`, whose hash is `hash`, if held.
    #[inline]
    fn find(&self, user: UserId, hash: u64) -> Option<u32> {
        let hot = &self.hot;
        self.index.find(hash, |at| hot[at as usize].is(user))
    }

    fn insert(&mut self, event: &impl Incoming, hash: u64, now: u64, tick: u64) {
        self.counts[usize::from(event.status())] += 1;
        let hot = Hot::new(event, now, tick);
        let extra = Extra {
            definition_id: event.definition_id().cloned(),
            message: event.message().cloned(),
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.hot[at as usize] = hot;
                // A free slot's extra is always empty (taken on removal when it was not).
                if hot.has_extra {
                    self.extra[at as usize] = extra;
                }
                at
            }
            None => {
                self.hot.push(hot);
                self.extra.push(extra);
                (self.hot.len() - 1) as u32
            }
        };
        self.link_tail(at);
        self.index.insert(hash, at);
    }

    fn remove(&mut self, at: u32) -> PresenceEvent {
        self.unlink(at);
        let slot = at as usize;
        self.index.remove(self.hot[slot].user().mix64(), at);
        let mut event = self.hot[slot].event(&Extra::default());
        if self.hot[slot].has_extra {
            let extra = std::mem::take(&mut self.extra[slot]);
            event.state.definition_id = extra.definition_id;
            event.state.message = extra.message;
        }
        self.counts[usize::from(self.hot[slot].status)] -= 1;
        self.free.push(at);
        event
    }

    /// Records a confirmation; moves the entry to the tail only when its tick changed.
    #[inline(always)]
    fn confirm(&mut self, at: u32, now: u64, tick: u64) {
        let hot = &mut self.hot[at as usize];
        hot.confirmed_ms = hot.confirmed_ms.max(now);
        if tick > hot.tick {
            hot.tick = tick;
            if self.tail != at {
                self.unlink(at);
                self.link_tail(at);
            }
        }
    }

    /// Appends a slot whose `prev`/`next` are about to be set.
    fn link_tail(&mut self, at: u32) {
        let old_tail = self.tail;
        // Ticks only grow along the list: the registry reads the clock under the shard's lock.
        {
            let hot = &mut self.hot[at as usize];
            hot.prev = old_tail;
            hot.next = NIL;
        }
        if old_tail == NIL {
            self.head = at;
        } else {
            self.hot[old_tail as usize].next = at;
        }
        self.tail = at;
    }

    fn unlink(&mut self, at: u32) {
        let (prev, next) = {
            let hot = &self.hot[at as usize];
            (hot.prev, hot.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.hot[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.hot[next as usize].prev = prev;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hot_part_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Hot>(), 64);
        assert_eq!(std::mem::align_of::<Hot>(), 64);
    }

    #[test]
    fn the_cheap_comparison_agrees_with_the_state_order() {
        let states = [
            PresenceState::new(Status::AVAILABLE, Location::DESK, GroupMask(1)),
            PresenceState::new(Status::AVAILABLE, Location::DESK, GroupMask(2)),
            PresenceState::new(Status::BUSY, Location::UNKNOWN, GroupMask(0)),
            PresenceState::new(Status::AVAILABLE, Location::DESK, GroupMask(1)).with_message("m"),
            PresenceState::new(Status::AVAILABLE, Location::DESK, GroupMask(1))
                .with_definition_id("d"),
            PresenceState::new(Status::AVAILABLE, Location::DESK, GroupMask(1))
                .with_definition_id("d")
                .with_message("m"),
        ];
        for stored in &states {
            let event = PresenceEvent {
                user: UserId::Relay(1),
                time: EventTime(0),
                state: stored.clone(),
                source: Source::Relay,
            };
            let hot = Hot::new(&event, 0, 0);
            let extra = Extra {
                definition_id: stored.definition_id.clone(),
                message: stored.message.clone(),
            };
            assert!(hot.event(&extra) == event);
            for incoming in &states {
                let incoming_event = PresenceEvent {
                    state: incoming.clone(),
                    ..event.clone()
                };
                assert_eq!(
                    hot.cmp_state(|| &extra, &incoming_event),
                    incoming.cmp(stored),
                    "{incoming:?} vs {stored:?}"
                );
            }
        }
    }

    #[test]
    fn a_frame_reads_as_its_event() {
        let frame = Frame {
            time_ms: -5,
            user_id: u32::MAX,
            status: Status(200),
            location: Location(7),
            groups: 0x81,
        };
        let event = frame.to_event();
        assert_eq!(Incoming::user(&frame), Incoming::user(&event));
        assert_eq!(Incoming::time(&frame), Incoming::time(&event));
        assert_eq!(Incoming::status(&frame), Incoming::status(&event));
        assert_eq!(Incoming::location(&frame), Incoming::location(&event));
        assert_eq!(Incoming::groups(&frame), Incoming::groups(&event));
        assert_eq!(Incoming::source(&frame), Incoming::source(&event));
        assert_eq!(
            Incoming::definition_id(&frame),
            Incoming::definition_id(&event)
        );
        assert_eq!(Incoming::message(&frame), Incoming::message(&event));
        assert!(!Incoming::has_extra(&frame));
        assert!(Incoming::to_event(&frame) == event);
    }

    #[test]
    fn ids_round_trip_through_the_hot_part() {
        for user in [
            UserId::Relay(0),
            UserId::Relay(u32::MAX),
            UserId::Genesys(Guid(7)),
            UserId::Genesys(Guid(u128::MAX)),
        ] {
            let event = PresenceEvent {
                user,
                time: EventTime(1),
                state: PresenceState::default(),
                source: Source::Stream,
            };
            let hot = Hot::new(&event, 0, 0);
            assert_eq!(hot.user(), user);
            assert!(hot.is(user));
        }
        let relay = Hot::new(
            &PresenceEvent {
                user: UserId::Relay(7),
                time: EventTime(1),
                state: PresenceState::default(),
                source: Source::Relay,
            },
            0,
            0,
        );
        assert!(
            !relay.is(UserId::Genesys(Guid(7))),
            "the namespaces never collide"
        );
    }
}
