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

use hashbrown::HashTable;
use presence_frame::{PresenceEvent, UserId};

use crate::{Change, Expired, Outcome};

/// Asks the CPU to start loading `value`'s cache line, without waiting for it.
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

/// One user's latest state and its place on the confirmation list.
struct Slot {
    event: PresenceEvent,
    /// Exact time of the last confirmation, on the registry clock.
    confirmed_ms: u64,
    /// The tick the entry was last placed on the list at.
    tick: u64,
    prev: u32,
    next: u32,
}

/// A shard of the registry. Not thread-safe by itself; the registry wraps each in a lock.
pub(crate) struct Shard {
    /// Slot numbers, hashed by their user's id: 4 bytes an entry, so the index of a shard
    /// stays in cache and a lookup costs one miss, on the slot itself.
    index: HashTable<u32>,
    slots: Vec<Slot>,
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
            slots: Vec::new(),
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
        event: PresenceEvent,
        now: u64,
        tick: u64,
        ttl_ms: u64,
    ) -> Outcome {
        let Some(at) = self.find(event.user) else {
            self.insert(event.clone(), now, tick);
            return Outcome::Changed(Change {
                previous: None,
                current: event,
            });
        };
        let slot = &mut self.slots[at as usize];
        let expired = now.saturating_sub(slot.confirmed_ms) >= ttl_ms;
        if expired {
            // Forgotten already as far as readers know: the new event starts afresh.
            let old_status = slot.event.state.status.code();
            slot.event = event.clone();
            self.counts[usize::from(old_status)] -= 1;
            self.counts[usize::from(event.state.status.code())] += 1;
            self.confirm(at, now, tick);
            return Outcome::Changed(Change {
                previous: None,
                current: event,
            });
        }

        let stored = &slot.event;
        let ordering = event
            .time
            .cmp(&stored.time)
            .then_with(|| event.state.cmp(&stored.state));
        if ordering.is_lt() {
            return Outcome::Stale;
        }
        if event.state == stored.state {
            let slot = &mut self.slots[at as usize];
            if event.time > slot.event.time {
                slot.event.time = event.time;
                slot.event.source = event.source;
            } else {
                // Same time, same state: keep the larger source so replicas agree.
                slot.event.source = slot.event.source.max(event.source);
            }
            self.confirm(at, now, tick);
            return Outcome::Refreshed;
        }

        let old_status = stored.state.status.code();
        let new_status = event.state.status.code();
        let previous = std::mem::replace(&mut self.slots[at as usize].event, event.clone());
        self.counts[usize::from(old_status)] -= 1;
        self.counts[usize::from(new_status)] += 1;
        self.confirm(at, now, tick);
        Outcome::Changed(Change {
            previous: Some(previous),
            current: event,
        })
    }

    /// The entry of `user`, unless it is past its TTL at `now`.
    pub(crate) fn get(&self, user: UserId, now: u64, ttl_ms: u64) -> Option<&PresenceEvent> {
        let slot = &self.slots[self.find(user)? as usize];
        (now.saturating_sub(slot.confirmed_ms) < ttl_ms).then_some(&slot.event)
    }

    /// Calls `f` on every entry not past its TTL at `now`.
    pub(crate) fn for_each_live(&self, now: u64, ttl_ms: u64, f: &mut impl FnMut(&PresenceEvent)) {
        let mut at = self.head;
        while at != NIL {
            let slot = &self.slots[at as usize];
            if now.saturating_sub(slot.confirmed_ms) < ttl_ms {
                f(&slot.event);
            }
            at = slot.next;
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
            let slot = &self.slots[at as usize];
            // Every confirmation on this tick happened before the tick's end.
            let tick_end = slot.tick.saturating_add(1).saturating_mul(tick_ms);
            if tick_end.saturating_add(ttl_ms) > now {
                break;
            }
            let confirmed_ms = slot.confirmed_ms;
            let event = self.remove(at);
            out.push(Expired {
                last: event,
                confirmed_ms,
            });
            removed += 1;
        }
        removed
    }

    /// Starts loading the slots of `users` into cache. Each lookup's memory access is
    /// independent of the others, so the CPU overlaps their cache misses; applying the same
    /// events right after then finds their slots in cache. (A batch's cost is dominated by
    /// these misses: one per event on a registry larger than the cache.)
    pub(crate) fn warm<'a>(&self, users: impl Iterator<Item = &'a UserId>) {
        let slots = &self.slots;
        for user in users {
            // Prefetch every candidate the index offers; `false` keeps the probe from
            // waiting on the slot to compare ids.
            let _ = self.index.find(user.mix64(), |&at| {
                prefetch(&slots[at as usize]);
                false
            });
        }
    }

    /// The slot of `user`, if held.
    #[inline]
    fn find(&self, user: UserId) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(user.mix64(), |&at| slots[at as usize].event.user == user)
            .copied()
    }

    fn insert(&mut self, event: PresenceEvent, now: u64, tick: u64) {
        self.counts[usize::from(event.state.status.code())] += 1;
        let user = event.user;
        let slot = Slot {
            event,
            confirmed_ms: now,
            tick,
            prev: self.tail,
            next: NIL,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at as usize] = slot;
                at
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.link_tail(at);
        let slots = &self.slots;
        self.index.insert_unique(user.mix64(), at, |&at| {
            slots[at as usize].event.user.mix64()
        });
    }

    fn remove(&mut self, at: u32) -> PresenceEvent {
        self.unlink(at);
        let user = self.slots[at as usize].event.user;
        if let Ok(entry) = self.index.find_entry(user.mix64(), |&i| i == at) {
            entry.remove();
        }
        let slot = &mut self.slots[at as usize];
        // The vacant slot keeps a husk (no heap) until it is reused.
        let husk = PresenceEvent {
            user: slot.event.user,
            time: slot.event.time,
            state: Default::default(),
            source: slot.event.source,
        };
        let event = std::mem::replace(&mut slot.event, husk);
        self.counts[usize::from(event.state.status.code())] -= 1;
        self.free.push(at);
        event
    }

    /// Records a confirmation; moves the entry to the tail only when its tick changed.
    fn confirm(&mut self, at: u32, now: u64, tick: u64) {
        let slot = &mut self.slots[at as usize];
        slot.confirmed_ms = slot.confirmed_ms.max(now);
        if tick > slot.tick {
            slot.tick = tick;
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
            let slot = &mut self.slots[at as usize];
            slot.prev = old_tail;
            slot.next = NIL;
        }
        if old_tail == NIL {
            self.head = at;
        } else {
            self.slots[old_tail as usize].next = at;
        }
        self.tail = at;
    }

    fn unlink(&mut self, at: u32) {
        let (prev, next) = {
            let slot = &self.slots[at as usize];
            (slot.prev, slot.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
    }
}
