//! The latest presence of every user, thread-safe: last-write-wins by event time, change
//! detection, time-to-live and expiry.
//!
//! A short tour:
//! - [`Registry::apply`] takes a [`PresenceEvent`] and says what happened: an [`Outcome::Changed`]
//!   (publish it), an [`Outcome::Refreshed`] (a repeat: same state, same event time;
//!   time-to-live renewed, nothing to publish) or an [`Outcome::Stale`] (older than what is held:
//!   ignored). The same state at a *later* event time is a change: the source only moves the
//!   time on a change, so a change and its undo happened unseen, and downstream must learn the
//!   new time.
//! - [`Registry::apply_batch`] applies many events at once (one lock per shard, cache misses
//!   overlapped); [`Registry::apply_frames`] does the same for the [`Frame`]s of a relay
//!   message, read in place, without building a [`PresenceEvent`] per frame.
//! - Last-write-wins compares the event time the source gave (Genesys `modifiedDate`, the frame
//!   time), never the time of arrival. Equal times are settled by a fixed total order on the
//!   state ([`PresenceState`]'s `Ord`), so replicas fed the same events in any order end equal.
//! - Each entry lives for the TTL after its last confirmation (a change or a refresh, by a
//!   stream event or a resync). Reads never return an expired entry. [`Registry::sweep`]
//!   removes expired entries and returns them as [`Expired`] for the publisher to turn into
//!   tombstones; its work is what expires, never a scan.
//! - [`Registry::get`], [`Registry::for_each`], [`Registry::snapshot`] and
//!   [`Registry::counts_by_status`] serve queries, dashboards and metrics.
//! - The clock is a [`Clock`]: [`MonotonicClock`] in production, [`ManualClock`] in tests.
//!
//! The registry is split into shards, each behind its own lock, chosen by a hash of the user
//! id, so threads updating different users rarely contend.
//!
//! ```
//! use std::time::Duration;
//! use presence_frame::{EventTime, GroupMask, Location, PresenceEvent, PresenceState, Source,
//!                      Status, UserId};
//! use presence_registry::{ManualClock, Outcome, Registry, RegistryConfig};
//!
//! let clock = ManualClock::new();
//! let registry = Registry::with_clock(RegistryConfig::new(Duration::from_secs(60)), clock.clone())?;
//! let event = |ms, status| PresenceEvent {
//!     user: UserId::Relay(7),
//!     time: EventTime(ms),
//!     state: PresenceState::new(status, Location::DESK, GroupMask(1)),
//!     source: Source::Relay,
//! };
//!
//! assert!(matches!(registry.apply(event(1_000, Status::AVAILABLE)), Outcome::Changed(_)));
//! assert!(matches!(registry.apply(event(1_000, Status::AVAILABLE)), Outcome::Refreshed));
//! assert!(matches!(registry.apply(event(500, Status::BUSY)), Outcome::Stale));
//!
//! clock.advance(Duration::from_secs(61));
//! assert!(registry.get(UserId::Relay(7)).is_none()); // expired, even before a sweep
//! let expired = registry.sweep();
//! assert_eq!(expired.len(), 1);
//! assert_eq!(expired[0].last.state.status, Status::AVAILABLE);
//! # Ok::<(), presence_registry::ConfigError>(())
//! ```
#![deny(missing_docs)]

mod clock;
mod index;
mod shard;

use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
pub use presence_frame::{EventTime, Frame, PresenceEvent, PresenceState, Status, UserId};

pub use clock::{Clock, ManualClock, MonotonicClock};
use shard::{Incoming, Keyed, Now, Shard};

/// What [`Registry::apply`] did with an event.
#[derive(Clone, PartialEq, Eq, Debug)]
#[must_use = "a change must be published"]
pub enum Outcome {
    /// The user's state changed (or the user is new, or the same state arrived with a later
    /// event time): publish it.
    Changed(Change),
    /// A repeat of the state held, at the same event time: the entry's time-to-live was
    /// renewed; nothing to publish.
    Refreshed,
    /// Older than the state held (or equal in time and lower in the tie order): ignored.
    Stale,
}

/// A change of a user's state.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Change {
    /// The state held before, if the user was known and not expired.
    pub previous: Option<PresenceEvent>,
    /// The state held now.
    pub current: PresenceEvent,
}

/// An entry removed because it was not confirmed within the time-to-live.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Expired {
    /// The last state held for the user.
    pub last: PresenceEvent,
    /// When the entry was last confirmed, on the registry's clock (milliseconds).
    pub confirmed_ms: u64,
}

/// Invalid registry configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The time-to-live must be at least one millisecond.
    #[error("registry ttl must be at least 1 ms, got {ttl:?}")]
    TtlTooShort {
        /// The rejected value.
        ttl: Duration,
    },
    /// The shard count must be a power of two between 1 and 4096.
    #[error("registry shard count must be a power of two from 1 to 4096, got {shards}")]
    BadShardCount {
        /// The rejected value.
        shards: usize,
    },
}

/// How a [`Registry`] is set up.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    ttl: Duration,
    shards: usize,
    expiry_ticks_per_ttl: u64,
}

impl RegistryConfig {
    /// A configuration with the given time-to-live and the other settings at their defaults.
    pub fn new(ttl: Duration) -> RegistryConfig {
        RegistryConfig {
            ttl,
            shards: 64,
            expiry_ticks_per_ttl: 64,
        }
    }

    /// How long an entry lives after its last confirmation.
    pub fn ttl(mut self, ttl: Duration) -> RegistryConfig {
        self.ttl = ttl;
        self
    }

    /// Number of independently locked shards; a power of two. By default, 64.
    pub fn shards(mut self, shards: usize) -> RegistryConfig {
        self.shards = shards;
        self
    }

    /// Expiry precision: the sweeper removes an entry at most `ttl / ticks` after it expired
    /// (reads are always exact). More ticks cost more list moves on confirmation. By default,
    /// 64.
    pub fn expiry_ticks_per_ttl(mut self, ticks: u64) -> RegistryConfig {
        self.expiry_ticks_per_ttl = ticks.max(1);
        self
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl < Duration::from_millis(1) {
            return Err(ConfigError::TtlTooShort { ttl: self.ttl });
        }
        if !self.shards.is_power_of_two() || self.shards > 4096 {
            return Err(ConfigError::BadShardCount {
                shards: self.shards,
            });
        }
        Ok(())
    }
}

/// A shard on its own cache lines, so that two threads locking neighbouring shards do not
/// fight over one line.
#[repr(align(128))]
struct PaddedShard(Mutex<Shard>);

/// Counts of live users by status code.
#[derive(Clone, PartialEq, Eq)]
pub struct StatusCounts([u64; 256]);

impl StatusCounts {
    /// Users with `status`.
    pub fn get(&self, status: Status) -> u64 {
        self.0[usize::from(status.code())]
    }

    /// Every status with at least one user, in code order.
    pub fn iter(&self) -> impl Iterator<Item = (Status, u64)> + '_ {
        (0..=255u8)
            .map(|code| (Status(code), self.0[usize::from(code)]))
            .filter(|(_, n)| *n > 0)
    }

    /// All users counted.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl std::fmt::Debug for StatusCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The thread-safe store of every user's latest presence. See the [crate docs](crate).
pub struct Registry<C: Clock = MonotonicClock> {
    shards: Box<[PaddedShard]>,
    shard_mask: u64,
    ttl_ms: u64,
    tick_ms: u64,
    /// While expiry is held back, the registry-clock time it is held from; else `u64::MAX`.
    expiry_held_from: AtomicU64,
    clock: C,
}

impl Registry<MonotonicClock> {
    /// A registry on the real monotonic clock.
    pub fn new(config: RegistryConfig) -> Result<Registry<MonotonicClock>, ConfigError> {
        Registry::with_clock(config, MonotonicClock::new())
    }
}

impl<C: Clock> Registry<C> {
    /// A registry on the given clock.
    pub fn with_clock(config: RegistryConfig, clock: C) -> Result<Registry<C>, ConfigError> {
        config.validate()?;
        let ttl_ms = config.ttl.as_millis().min(u128::from(u64::MAX)) as u64;
        let shards = (0..config.shards)
            .map(|_| PaddedShard(Mutex::new(Shard::new())))
            .collect();
        Ok(Registry {
            shards,
            shard_mask: config.shards as u64 - 1,
            ttl_ms,
            tick_ms: (ttl_ms / config.expiry_ticks_per_ttl).max(1),
            expiry_held_from: AtomicU64::new(NOT_HELD),
            clock,
        })
    }

    /// The time-to-live.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    /// The time on the registry's clock, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The clock as seen by one application, read under a shard's lock (so that confirmation
    /// times only grow within a shard).
    #[inline]
    fn now(&self) -> Now {
        let ms = self.clock.now_ms();
        Now {
            ms,
            tick: ms / self.tick_ms,
            expiry_ms: ms.min(self.expiry_held_from.load(Ordering::Acquire)),
            ttl_ms: self.ttl_ms,
        }
    }

    /// Holds expiry back from `from_ms` (on the registry's clock; see
    /// [`now_ms`](Registry::now_ms)): from now on, until
    /// [`release_expiry`](Registry::release_expiry), entries are judged live or expired as of
    /// `from_ms`, so nothing that was live then expires, reads go on returning it, and the
    /// sweep removes nothing that was live then. Confirmations go on as usual.
    ///
    /// For a source that cannot be reached: its silence is not evidence that anyone left. A
    /// hold already in place keeps its earlier start.
    pub fn hold_expiry(&self, from_ms: u64) {
        let _ = self.expiry_held_from.fetch_min(from_ms, Ordering::AcqRel);
    }

    /// Ends a hold: entries not confirmed within the TTL expire (at the next sweep) as usual.
    pub fn release_expiry(&self) {
        self.expiry_held_from.store(NOT_HELD, Ordering::Release);
    }

    /// Since when expiry is held back (registry clock, milliseconds), if it is.
    pub fn expiry_held_from(&self) -> Option<u64> {
        let from = self.expiry_held_from.load(Ordering::Acquire);
        (from != NOT_HELD).then_some(from)
    }

    /// How many entries are past their time-to-live on the clock but kept because expiry is
    /// held back (0 when it is not). The work is proportional to that number.
    pub fn expiry_held_back(&self) -> usize {
        if self.expiry_held_from().is_none() {
            return 0;
        }
        self.shards
            .iter()
            .map(|shard| {
                let shard = shard.0.lock();
                let now = self.now();
                shard.overdue(now, self.tick_ms).saturating_sub(
                    // Entries due as of the hold's start are swept as usual.
                    shard.overdue(
                        Now {
                            ms: now.expiry_ms,
                            ..now
                        },
                        self.tick_ms,
                    ),
                )
            })
            .sum()
    }

    /// Records that the state of `user` at event time `time`, as a change reported it, never
    /// reached its destination: if the user's entry still holds a state of that event time,
    /// the next repeat of it (a stream event or a resync) is reported as
    /// [`Outcome::Changed`] rather than [`Outcome::Refreshed`], so that it is handed on again.
    /// Returns whether the entry was marked. A user that has moved on to a later time (or
    /// expired) is left as it is: the newer state, or its tombstone, is handed on by its own
    /// outcome. (Another state at the very same time, which won the tie, is marked too: it
    /// costs at most one needless repeat downstream.)
    pub fn mark_unpublished(&self, user: UserId, time: EventTime) -> bool {
        let hash = user.mix64();
        self.shards[self.shard_index(hash)]
            .0
            .lock()
            .mark_unpublished(user, time.0, hash)
    }

    /// Calls `f` if `user` has no entry (not even an expired one not yet swept), with the
    /// user's shard locked, so that no event of the user is applied meanwhile; returns what
    /// `f` returned, or `None` when the user has an entry. For decisions that must hold
    /// together with the user's absence, such as sending a tombstone again.
    pub fn with_absent<R>(&self, user: UserId, f: impl FnOnce() -> R) -> Option<R> {
        let hash = user.mix64();
        let shard = self.shards[self.shard_index(hash)].0.lock();
        (!shard.contains(user, hash)).then(f)
    }

    /// The shard of a user whose [`UserId::mix64`] is `hash`.
    #[inline]
    fn shard_index(&self, hash: u64) -> usize {
        // The high half picks the shard; the index inside uses the low half (bucket and tag),
        // which must stay varied within a shard.
        ((hash >> 32) & self.shard_mask) as usize
    }

    #[inline]
    fn shard(&self, user: UserId) -> &Mutex<Shard> {
        &self.shards[self.shard_index(user.mix64())].0
    }

    /// Applies one event: last-write-wins by event time, ties broken by the state's order.
    pub fn apply(&self, event: PresenceEvent) -> Outcome {
        let hash = event.user.mix64();
        let mut shard = self.shards[self.shard_index(hash)].0.lock();
        // The outcome's `current` is a clone of `event`: a copy, plus reference counts when it
        // has a definition or a message.
        shard.apply(&event, hash, self.now())
    }

    /// Applies a batch of events (such as one relay message, or a page of a resync), taking
    /// each shard's lock once for all of the batch's events in it rather than once per event,
    /// and loading entries into cache ahead of their turn so that their misses overlap. Each
    /// event has the effect and the outcome that [`apply`](Registry::apply) would give it, in
    /// batch order per user; `on_outcome` gets the outcomes grouped by shard. `events` is left
    /// empty, keeping its capacity for the next batch.
    pub fn apply_batch(&self, events: &mut Vec<PresenceEvent>, on_outcome: impl FnMut(Outcome)) {
        self.apply_all(events, on_outcome);
        events.clear();
    }

    /// Applies the frames of a relay message (say, the frames of a
    /// [`FrameBatch`](presence_frame::FrameBatch) that pass the group filter). Effects and
    /// outcomes are exactly those of [`apply_batch`](Registry::apply_batch) on their
    /// [`Frame::to_event`]s, but each frame is read where it is, and an event is built only
    /// for the outcome of a change: 24 bytes a frame to gather and sort instead of 96.
    ///
    /// ```
    /// use std::time::Duration;
    /// use presence_frame::{Frame, FrameBatch, Location, Status};
    /// use presence_registry::{Outcome, Registry, RegistryConfig};
    ///
    /// let registry = Registry::new(RegistryConfig::new(Duration::from_secs(60)))?;
    /// let frame = |ms, user_id, status| Frame {
    ///     time_ms: ms, user_id, status, location: Location::DESK, groups: 1,
    /// };
    /// let message = presence_frame::encode_message(&[
    ///     frame(1_000, 7, Status::AVAILABLE),
    ///     frame(1_000, 8, Status::BUSY),
    ///     frame(900, 7, Status::AWAY), // older than the first: stale
    /// ]);
    /// let frames: Vec<Frame> = FrameBatch::new(&message).expect("whole frames").iter().collect();
    /// let mut changed = Vec::new();
    /// registry.apply_frames(&frames, |outcome| {
    ///     if let Outcome::Changed(change) = outcome {
    ///         changed.push(change.current.user.to_string());
    ///     }
    /// });
    /// changed.sort();
    /// assert_eq!(changed, ["7", "8"]);
    /// # Ok::<(), presence_registry::ConfigError>(())
    /// ```
    pub fn apply_frames(&self, frames: &[Frame], on_outcome: impl FnMut(Outcome)) {
        self.apply_all(frames, on_outcome);
    }

    /// The batch engine: a counting sort of the events by shard (stable, so one user's events
    /// keep their order), then each shard's run under one lock.
    fn apply_all<E: Incoming>(&self, events: &[E], mut on_outcome: impl FnMut(Outcome)) {
        if events.is_empty() {
            return;
        }
        debug_assert!(u32::try_from(events.len()).is_ok());
        // starts[s + 1] counts shard s's events, then becomes where its run ends.
        let mut starts = vec![0u32; self.shards.len() + 1];
        let hashes: Vec<u64> = events
            .iter()
            .map(|event| {
                let hash = event.user().mix64();
                starts[self.shard_index(hash) + 1] += 1;
                hash
            })
            .collect();
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut next = starts.clone();
        let mut sorted = vec![Keyed::default(); events.len()];
        for (at, &hash) in hashes.iter().enumerate() {
            let cursor = &mut next[self.shard_index(hash)];
            sorted[*cursor as usize] = Keyed {
                hash,
                at: at as u32,
            };
            *cursor += 1;
        }
        for (shard_at, bounds) in starts.windows(2).enumerate() {
            let run = &sorted[bounds[0] as usize..bounds[1] as usize];
            if run.is_empty() {
                continue;
            }
            let mut shard = self.shards[shard_at].0.lock();
            self.apply_run(&mut shard, run, events, &mut on_outcome);
        }
    }

    /// Applies one shard's run of a batch, its lock held.
    #[inline]
    fn apply_run<E: Incoming>(
        &self,
        shard: &mut Shard,
        run: &[Keyed],
        events: &[E],
        on_outcome: impl FnMut(Outcome),
    ) {
        shard.apply_run(run, events, self.now(), on_outcome);
    }

    /// The current state of `user`, unless unknown or expired.
    pub fn get(&self, user: UserId) -> Option<PresenceEvent> {
        let shard = self.shard(user).lock();
        shard.get(user, self.now())
    }

    /// Calls `f` on every live entry, one shard at a time (each shard is locked while its
    /// entries are visited, so keep `f` short).
    pub fn for_each(&self, mut f: impl FnMut(&PresenceEvent)) {
        for shard in self.shards.iter() {
            let shard = shard.0.lock();
            shard.for_each_live(self.now(), &mut f);
        }
    }

    /// A copy of every live entry (unordered).
    pub fn snapshot(&self) -> Vec<PresenceEvent> {
        let mut out = Vec::with_capacity(self.len());
        self.for_each(|event| out.push(event.clone()));
        out
    }

    /// Number of entries held, including expired ones not yet swept.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().len()).sum()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Users by status, in constant time per shard. Expired entries count until swept; sweep
    /// often (every second is cheap) to keep this exact enough for dashboards.
    pub fn counts_by_status(&self) -> StatusCounts {
        let mut counts = [0u64; 256];
        for shard in self.shards.iter() {
            let shard = shard.0.lock();
            for (total, n) in counts.iter_mut().zip(shard.counts()) {
                *total += u64::from(*n);
            }
        }
        StatusCounts(counts)
    }

    /// Removes `user` (live or past its time-to-live) and hands its entry to `removed` while
    /// its shard is still locked, as [`sweep_with`](Registry::sweep_with) does for expired
    /// entries: whatever `removed` does (say, enqueue a tombstone) is ordered before any later
    /// event of the user. Returns whether the user was held. For users that left the source
    /// (deleted, deactivated, no longer watched). Keep `removed` short and never call back
    /// into the registry from it.
    pub fn remove_with(&self, user: UserId, removed: impl FnOnce(Expired)) -> bool {
        let hash = user.mix64();
        let mut shard = self.shards[self.shard_index(hash)].0.lock();
        match shard.remove_user(user, hash) {
            Some((last, confirmed_ms)) => {
                removed(Expired { last, confirmed_ms });
                true
            }
            None => false,
        }
    }

    /// Gives `event`'s user the group mask of `event`, the source's new word on the user's
    /// groups, whatever last-write-wins would say: a mask change comes with the user's
    /// unchanged presence (same event time), and on a tie the state order could keep the
    /// old mask. Under the user's shard lock: when the user holds a live entry not older than
    /// `event`, its mask becomes `event`'s and `on_outcome` gets [`Outcome::Changed`] (or
    /// [`Outcome::Refreshed`] when the mask was the same); returns `true`. Returns `false`
    /// (and calls nothing) when the user has no live entry or `event` is newer: then apply
    /// it as usual.
    pub fn regroup_with(&self, event: &PresenceEvent, on_outcome: impl FnOnce(Outcome)) -> bool {
        let hash = event.user.mix64();
        let mut shard = self.shards[self.shard_index(hash)].0.lock();
        match shard.regroup(event, hash, self.now()) {
            Some(outcome) => {
                on_outcome(outcome);
                true
            }
            None => false,
        }
    }

    /// Removes entries past their time-to-live and returns them, oldest first per shard.
    pub fn sweep(&self) -> Vec<Expired> {
        let mut out = Vec::new();
        self.sweep_into(&mut out);
        out
    }

    /// Like [`sweep`](Registry::sweep), appending to `out`; returns how many expired. An
    /// entry is removed within one expiry tick (`ttl / expiry_ticks_per_ttl`) of expiring.
    pub fn sweep_into(&self, out: &mut Vec<Expired>) -> usize {
        self.sweep_with(|expired| out.push(expired))
    }

    /// Removes entries past their time-to-live, handing each to `expired` while its shard is
    /// still locked, and returns how many expired. No event of an expired user is applied
    /// between its removal and `expired`'s call, so whatever `expired` does (say, enqueue a
    /// tombstone) is ordered before the user's next change. Keep `expired` short and never
    /// call back into the registry from it (the shard's lock is held).
    ///
    /// While expiry is [held back](Registry::hold_expiry), only entries already due when the
    /// hold began are removed.
    pub fn sweep_with(&self, mut expired: impl FnMut(Expired)) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let mut shard = shard.0.lock();
                shard.sweep(self.now(), self.tick_ms, &mut expired)
            })
            .sum()
    }
}

/// `expiry_held_from` when expiry is not held back.
const NOT_HELD: u64 = u64::MAX;

impl<C: Clock> std::fmt::Debug for Registry<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("shards", &self.shards.len())
            .field("ttl_ms", &self.ttl_ms)
            .field("len", &self.len())
            .finish()
    }
}
