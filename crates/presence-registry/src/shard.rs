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

use std::cmp::Ordering;
use std::sync::Arc;

use hashbrown::HashTable;
use presence_frame::{
    EventTime, GroupMask, Guid, Location, PresenceEvent, PresenceState, Source, Status, UserId,
};

use crate::Expired;

/// What [`Shard::apply`] did; the registry turns it into an [`Outcome`](crate::Outcome).
pub(crate) enum Applied {
    /// A change; the previous state, if the user was known and not expired.
    Changed(Option<PresenceEvent>),
    /// Same state: time-to-live renewed.
    Refreshed,
    /// Older than what is held.
    Stale,
}

/// Asks the CPU to start loading the cache line of `value`, without waiting for it.
#[inline(always)]
fn prefetch<T>(value: &T) {
    // SAFETY: SSE is part of the x86_64 baseline, and a prefetch is only a hint: it never
    // faults and never changes memory, whatever the address.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (value as *const T).cast(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
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

fn has_extra(state: &PresenceState) -> bool {
    state.definition_id.is_some() || state.message.is_some()
}

impl Hot {
    fn new(event: &PresenceEvent, confirmed_ms: u64, tick: u64) -> Hot {
        let (key, relay) = key_of(event.user);
        Hot {
            key,
            time: event.time.0,
            groups: event.state.groups.0,
            confirmed_ms,
            tick,
            prev: NIL,
            next: NIL,
            relay,
            status: event.state.status.0,
            location: event.state.location.0,
            source: source_code(event.source),
            has_extra: has_extra(&event.state),
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
    fn set_event(&mut self, event: &PresenceEvent) {
        self.time = event.time.0;
        self.groups = event.state.groups.0;
        self.status = event.state.status.0;
        self.location = event.state.location.0;
        self.source = source_code(event.source);
        self.has_extra = has_extra(&event.state);
    }

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

    /// `state` against the stored state, in [`PresenceState`]'s order; `Extra` is read only
    /// when the cheap fields tie and either side has a definition or a message.
    fn cmp_state(&self, extra: &Extra, state: &PresenceState) -> Ordering {
        state
            .status
            .0
            .cmp(&self.status)
            .then(state.location.0.cmp(&self.location))
            .then(state.groups.0.cmp(&self.groups))
            .then_with(|| {
                if !self.has_extra && !has_extra(state) {
                    return Ordering::Equal;
                }
                (&state.definition_id, &state.message).cmp(&(&extra.definition_id, &extra.message))
            })
    }
}

/// A shard of the registry. Not thread-safe by itself; the registry wraps each in a lock.
pub(crate) struct Shard {
    /// Slot numbers, hashed by their user's id: 4 bytes an entry, so the index of a shard
    /// stays in cache and a lookup costs one miss, on the slot itself.
    index: HashTable<u32>,
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
            index: HashTable::new(),
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

    /// Applies `event` at time `now`; `tick` is `now`'s tick and `ttl_ms` the time-to-live.
    pub(crate) fn apply(
        &mut self,
        event: &PresenceEvent,
        now: u64,
        tick: u64,
        ttl_ms: u64,
    ) -> Applied {
        let Some(at) = self.find(event.user) else {
            self.insert(event, now, tick);
            return Applied::Changed(None);
        };
        let slot = at as usize;
        let hot = self.hot[slot];
        if now.saturating_sub(hot.confirmed_ms) >= ttl_ms {
            // Forgotten already as far as readers know: the new event starts afresh.
            self.replace(at, event);
            self.confirm(at, now, tick);
            return Applied::Changed(None);
        }

        let by_state = hot.cmp_state(&self.extra[slot], &event.state);
        let ordering = event.time.0.cmp(&hot.time).then(by_state);
        if ordering.is_lt() {
            return Applied::Stale;
        }
        if by_state.is_eq() {
            if event.time.0 > hot.time {
                // The same state at a later time: the source moved its time, which Genesys
                // does only on a change, so a change and its undo happened unseen (say, in a
                // gap before a resync). Report it so that downstream learns the new time.
                let previous = self.event_at(slot);
                let entry = &mut self.hot[slot];
                entry.time = event.time.0;
                entry.source = source_code(event.source);
                self.confirm(at, now, tick);
                return Applied::Changed(Some(previous));
            }
            // A repeat (same time, same state): keep the larger source so replicas agree.
            let entry = &mut self.hot[slot];
            entry.source = entry.source.max(source_code(event.source));
            self.confirm(at, now, tick);
            return Applied::Refreshed;
        }

        let previous = self.replace(at, event);
        self.confirm(at, now, tick);
        Applied::Changed(Some(previous))
    }

    /// Puts `event` in slot `at` and returns what was there; keeps the counts right. The
    /// `Extra` array is touched only when the old or the new state has a definition or a
    /// message.
    fn replace(&mut self, at: u32, event: &PresenceEvent) -> PresenceEvent {
        let slot = at as usize;
        let hot = &mut self.hot[slot];
        let mut previous = hot.event(&Extra::default());
        if hot.has_extra || has_extra(&event.state) {
            let old = std::mem::replace(
                &mut self.extra[slot],
                Extra {
                    definition_id: event.state.definition_id.clone(),
                    message: event.state.message.clone(),
                },
            );
            previous.state.definition_id = old.definition_id;
            previous.state.message = old.message;
        }
        self.counts[usize::from(hot.status)] -= 1;
        self.counts[usize::from(event.state.status.0)] += 1;
        hot.set_event(event);
        previous
    }

    /// The full event of slot `slot`, reading `Extra` only when the entry has one.
    fn event_at(&self, slot: usize) -> PresenceEvent {
        let hot = &self.hot[slot];
        if hot.has_extra {
            hot.event(&self.extra[slot])
        } else {
            hot.event(&Extra::default())
        }
    }

    /// The entry of `user`, unless it is past its TTL at `now`.
    pub(crate) fn get(&self, user: UserId, now: u64, ttl_ms: u64) -> Option<PresenceEvent> {
        let slot = self.find(user)? as usize;
        (now.saturating_sub(self.hot[slot].confirmed_ms) < ttl_ms).then(|| self.event_at(slot))
    }

    /// Calls `f` on every entry not past its TTL at `now`.
    pub(crate) fn for_each_live(&self, now: u64, ttl_ms: u64, f: &mut impl FnMut(&PresenceEvent)) {
        let mut at = self.head;
        while at != NIL {
            let hot = &self.hot[at as usize];
            if now.saturating_sub(hot.confirmed_ms) < ttl_ms {
                f(&self.event_at(at as usize));
            }
            at = hot.next;
        }
    }

    /// Removes every entry whose whole tick is at least `ttl_ms` old at `now`, oldest first.
    /// Stops at the first entry that is not due, so the work is what expires.
    pub(crate) fn sweep(
        &mut self,
        now: u64,
        tick_ms: u64,
        ttl_ms: u64,
        out: &mut Vec<Expired>,
    ) -> usize {
        let mut removed = 0;
        while self.head != NIL {
            let at = self.head;
            let hot = &self.hot[at as usize];
            // Every confirmation on this tick happened before the tick's end.
            let tick_end = hot.tick.saturating_add(1).saturating_mul(tick_ms);
            if tick_end.saturating_add(ttl_ms) > now {
                break;
            }
            let confirmed_ms = hot.confirmed_ms;
            let event = self.remove(at);
            out.push(Expired {
                last: event,
                confirmed_ms,
            });
            removed += 1;
        }
        removed
    }

    /// Starts loading the entries of `users` into cache. Each lookup's memory access is
    /// independent of the others, so the CPU overlaps their cache misses; applying the same
    /// events right after then finds their entries in cache. (A batch's cost is dominated by
    /// these misses: one per event on a registry larger than the cache.)
    pub(crate) fn warm<'a>(&self, users: impl Iterator<Item = &'a UserId>) {
        let hot = &self.hot;
        for user in users {
            // Prefetch every candidate the index offers; `false` keeps the probe from
            // waiting on the entry to compare ids.
            let _ = self.index.find(user.mix64(), |&at| {
                prefetch(&hot[at as usize]);
                false
            });
        }
    }

    /// The slot of `user`, if held.
    #[inline]
    fn find(&self, user: UserId) -> Option<u32> {
        let hot = &self.hot;
        self.index
            .find(user.mix64(), |&at| hot[at as usize].is(user))
            .copied()
    }

    fn insert(&mut self, event: &PresenceEvent, now: u64, tick: u64) {
        self.counts[usize::from(event.state.status.0)] += 1;
        let hot = Hot::new(event, now, tick);
        let extra = Extra {
            definition_id: event.state.definition_id.clone(),
            message: event.state.message.clone(),
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
        let entries = &self.hot;
        self.index.insert_unique(event.user.mix64(), at, |&at| {
            entries[at as usize].user().mix64()
        });
    }

    fn remove(&mut self, at: u32) -> PresenceEvent {
        self.unlink(at);
        let slot = at as usize;
        let user = self.hot[slot].user();
        if let Ok(entry) = self.index.find_entry(user.mix64(), |&i| i == at) {
            entry.remove();
        }
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
                assert_eq!(
                    hot.cmp_state(&extra, incoming),
                    incoming.cmp(stored),
                    "{incoming:?} vs {stored:?}"
                );
            }
        }
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
