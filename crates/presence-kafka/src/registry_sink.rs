//! The join between the registry and a [`Publisher`]: the registry decides what changed, the
//! publisher gets exactly that, in the registry's order per user. Expiry (the sweep and its
//! tombstones) lives here too, because a tombstone must be ordered against the user's events
//! just as a change is.
//! The lock order is documented on [`RegistrySink`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::{info, warn};
use parking_lot::Mutex;
use presence_frame::{
    EventTime, Frame, GroupMask, Owner, PresenceEvent, PresenceSink, RateLimit, UserId,
};
use presence_registry::{Clock, Expired, MonotonicClock, Outcome, Registry};

use crate::publisher::{Enqueue, Publisher, Which};
use crate::queue::Update;

/// Told of the users a batch changed (`false`) or a sweep expired (`true`), outside every
/// lock: for a dashboard's list of recent changes, say.
pub type Observer = Arc<dyn Fn(&[UserId], bool) + Send + Sync>;

/// How a [`RegistrySink`] treats event times and expiry.
#[derive(Clone)]
pub struct SinkConfig {
    max_future_skew: Duration,
    observer: Option<Observer>,
    owner: Option<Arc<dyn Owner>>,
}

impl Default for SinkConfig {
    fn default() -> SinkConfig {
        SinkConfig {
            max_future_skew: Duration::from_secs(5 * 60),
            observer: None,
            owner: None,
        }
    }
}

impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkConfig")
            .field("max_future_skew", &self.max_future_skew)
            .field("observer", &self.observer.is_some())
            .field("owner", &self.owner.is_some())
            .finish()
    }
}

impl SinkConfig {
    /// How far ahead of this machine's clock an event time may be. An event beyond it is
    /// dropped, counted ([`SinkStats::future_dropped`]) and logged (rate-limited): it would
    /// otherwise win last-write-wins against every real event until its time came, and the
    /// broker refuses records that far ahead anyway (Kafka 4's
    /// `log.message.timestamp.after.max.ms` is one hour). By default, 5 minutes.
    pub fn max_future_skew(mut self, skew: Duration) -> SinkConfig {
        self.max_future_skew = skew;
        self
    }

    /// Who is told of each batch's changed users and each sweep's expired users (see
    /// [`Observer`]); called outside every lock, so it may take its own. By default, nobody.
    pub fn observer(mut self, observer: impl Fn(&[UserId], bool) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Which users this instance owns (when several share the organisation): the events of
    /// the others are dropped ([`SinkStats::not_owned`]), and no state or tombstone of theirs
    /// is ever handed to the publisher, also when an event was applied just as its user's
    /// ownership moved (the check runs again under the user's shard lock, as the
    /// [`forget`](RegistrySink::forget) of a handover does). By default, every user is owned.
    pub fn owner(mut self, owner: Arc<dyn Owner>) -> SinkConfig {
        self.owner = Some(owner);
        self
    }
}

/// What a [`RegistrySink`] has done. Every counter only grows, except the gauges.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Changes handed to the publisher (states; tombstones are `expired`).
    pub changes: AtomicU64,
    /// Events, frames, states and tombstones of users this instance does not own, dropped.
    pub not_owned: AtomicU64,
    /// Events dropped because their event time was further ahead of this machine's clock than
    /// [`SinkConfig::max_future_skew`].
    pub future_dropped: AtomicU64,
    /// States the publisher could not take (queue full) or gave up on: each is sent again at
    /// the user's next confirmation (a repeat event or a resync).
    pub unpublished: AtomicU64,
    /// Users expired (each a tombstone).
    pub expired: AtomicU64,
    /// Users the source said are gone (deleted, deactivated, no longer watched), each
    /// removed and tombstoned ([`PresenceSink::remove`]).
    pub removed: AtomicU64,
    /// Tombstones the publisher could not take at once, sent again later while the user is
    /// still absent.
    pub tombstones_retried: AtomicU64,
    /// Times expiry was held back because the source was not healthy.
    pub expiry_holds: AtomicU64,
    /// Gauge: users past their time-to-live but kept because expiry is held back.
    pub expiry_held_back: AtomicU64,
}

impl SinkStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What one [`RegistrySink::sweep`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Users expired, each tombstoned (or kept for a later tombstone when the publisher's
    /// queue was full).
    pub expired: Vec<UserId>,
    /// Whether expiry is held back (the source was not healthy).
    pub held: bool,
}

/// A hold on expiry while the source is not healthy.
#[derive(Debug)]
struct Hold {
    /// The registry-clock time the source was last seen healthy.
    last_healthy_ms: u64,
    /// Since when expiry is held back, if it is.
    since: Option<Instant>,
    /// Whether the source was ever healthy: until then (start-up) the hold is silent.
    ever_healthy: bool,
}

/// Most tombstones kept for a later attempt; beyond it they are counted as lost (the users
/// then stay on the topic until they come back). Only a broker that refuses everything for
/// long, while users expire, comes near it.
const RETRY_TOMBSTONES_MAX: usize = 1 << 20;

/// Applies events to a [`Registry`] and hands each real change to a [`Publisher`]; sweeps
/// expired users into tombstones. A cheap handle: clones share one join (give one to the
/// source as its [`PresenceSink`], keep one for the sweep).
///
/// Lock order, the one rule that keeps it correct and free of deadlocks: a registry shard's
/// lock is taken first, the publisher's queue lock inside it (every `publish` and `tombstone`
/// call happens under the shard lock of its user, from the registry's outcome and expiry
/// callbacks). Nothing takes a shard lock while holding the queue lock: the publisher's own
/// delivery reports only take the queue lock, and what they give up on is handed back through
/// [`Publisher::drain_undelivered`], which [`sweep`](RegistrySink::sweep) reads with no lock
/// held. The publisher's rate-limited warnings may be logged under a shard lock.
///
/// The guarantees, per user:
/// - The publisher gets the registry's changes in the registry's order, and an expiry's
///   tombstone in its place among them (it is enqueued under the same lock as the removal).
/// - A state the publisher refused (queue full) or later gave up on is marked in the registry
///   as not published, and sent again at the user's next confirmation.
/// - A tombstone carries the event time of the state it deletes, so that a user who comes back
///   with that same state (reactivated with its presence unchanged) replaces it in a reader that
///   keeps each key's newest event time, ties to the later record.
/// - Event times further ahead than [`SinkConfig::max_future_skew`] are dropped.
/// - While the source is not healthy (as the caller of [`sweep`](RegistrySink::sweep) says),
///   nobody expires: silence from a source that cannot be reached says nothing about the
///   users. Expiry resumes once it is healthy again (reconnected and resynced).
pub struct RegistrySink<P, C: Clock = MonotonicClock> {
    join: Arc<Join<P, C>>,
}

impl<P, C: Clock> Clone for RegistrySink<P, C> {
    fn clone(&self) -> Self {
        RegistrySink {
            join: Arc::clone(&self.join),
        }
    }
}

impl<P: Publisher, C: Clock> RegistrySink<P, C> {
    /// A sink from `registry` to `publisher`.
    pub fn new(registry: Arc<Registry<C>>, publisher: P, config: SinkConfig) -> Self {
        RegistrySink {
            join: Arc::new(Join::new(registry, publisher, config)),
        }
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<Registry<C>> {
        &self.join.registry
    }

    /// The publisher.
    pub fn publisher(&self) -> &P {
        &self.join.publisher
    }

    /// The counters (shared: an admin server may keep them).
    pub fn stats(&self) -> &Arc<SinkStats> {
        &self.join.stats
    }

    /// Applies `events` (left empty) and publishes the changes; `on_change` then sees each
    /// changed user (outside any lock). Returns how many changed.
    pub fn apply_events(
        &self,
        events: &mut Vec<PresenceEvent>,
        on_change: impl FnMut(UserId),
    ) -> usize {
        let mut changed = Vec::new();
        self.join.apply_events(events, &mut changed);
        let n = changed.len();
        changed.into_iter().for_each(on_change);
        n
    }

    /// Applies the frames of a relay message and publishes the changes, like
    /// [`apply_events`](RegistrySink::apply_events).
    pub fn apply_frames(&self, frames: &[Frame], on_change: impl FnMut(UserId)) -> usize {
        let mut changed = Vec::new();
        self.join.apply_frames(frames, &mut changed);
        let n = changed.len();
        changed.into_iter().for_each(on_change);
        n
    }

    /// One round of expiry, to be called regularly (every second or so):
    /// - what the publisher gave up on is marked for sending again;
    /// - while `source_healthy` is false expiry is held back (from the last time the source was
    ///   seen healthy), and it resumes when it is true again;
    /// - tombstones that found the publisher's queue full are tried again, if their users are
    ///   still absent;
    /// - expired users are removed and tombstoned, each under its shard's lock.
    ///
    /// The observer, if any, is then told of the expired users.
    pub fn sweep(&self, source_healthy: bool) -> Sweep {
        let swept = self.join.sweep(source_healthy);
        if let Some(observer) = &self.join.observer
            && !swept.expired.is_empty()
        {
            observer(&swept.expired, true);
        }
        swept
    }

    /// Loads `events`, the last states a warm start read back from the topic, into the
    /// registry as already published: nothing is sent now, a later repeat of a state (a
    /// resync) only confirms it, and a newer state is a change. A state older than what the
    /// registry holds is not taken. Returns how many were taken.
    pub fn load_published(&self, events: Vec<PresenceEvent>) -> usize {
        events
            .into_iter()
            .filter(|event| matches!(self.join.registry.apply(event.clone()), Outcome::Changed(_)))
            .count()
    }

    /// Forgets every user `which` selects without a tombstone (they are not gone: another
    /// instance owns them now): out of the registry and out of the tombstones kept for a
    /// later attempt. Returns how many users the registry held.
    pub fn forget(&self, which: &Which) -> usize {
        let mut users = Vec::new();
        self.join.registry.for_each(|e| {
            if which(e.user) {
                users.push(e.user);
            }
        });
        self.join
            .retry_tombstones
            .lock()
            .retain(|(user, _)| !which(*user));
        users
            .into_iter()
            .filter(|user| self.join.registry.remove_with(*user, |_| {}))
            .count()
    }

    /// Applies (and publishes, as any change) the newest frame kept for each relay user that
    /// is owned now but was not when its frame came; returns how many were applied. Call it
    /// after an assignment, once the warm start's states are
    /// [loaded](RegistrySink::load_published): last-write-wins keeps whichever is newer.
    pub fn adopt_frames(&self) -> usize {
        let adopted: Vec<Frame> = {
            let mut kept = self.join.unowned_frames.lock();
            let owned: Vec<u32> = kept
                .keys()
                .copied()
                .filter(|user| self.join.owns(UserId::Relay(*user)))
                .collect();
            owned.iter().filter_map(|user| kept.remove(user)).collect()
        };
        if !adopted.is_empty() {
            self.apply_observed(|join, changed| join.apply_frames(&adopted, changed));
        }
        adopted.len()
    }

    /// Since when expiry has been held back, if it is.
    pub fn expiry_held_since(&self) -> Option<Instant> {
        self.join.hold.lock().since
    }

    /// Applies a batch with the observer (if any) told of the changed users.
    fn apply_observed<R>(&self, apply: impl FnOnce(&Join<P, C>, &mut Vec<UserId>) -> R) {
        let mut changed = Vec::new();
        apply(&self.join, &mut changed);
        if let Some(observer) = &self.join.observer
            && !changed.is_empty()
        {
            observer(&changed, false);
        }
    }
}

/// The source's side: a [`RegistrySink`] takes events and frames as they are decoded.
impl<P, C> PresenceSink for RegistrySink<P, C>
where
    P: Publisher + 'static,
    C: Clock + 'static,
{
    fn publish(&self, events: &mut Vec<PresenceEvent>) {
        self.apply_observed(|join, changed| join.apply_events(events, changed));
    }

    fn publish_frames(&self, frames: &[Frame]) {
        self.apply_observed(|join, changed| join.apply_frames(frames, changed));
    }

    /// Gives each user the group mask of its event, in place under the user's shard lock
    /// ([`Registry::regroup_with`]), and publishes the change there, as for any change; users
    /// without a live entry, or with a newer event, take the usual road.
    fn regroup(&self, events: &mut Vec<PresenceEvent>) {
        let mut rest = Vec::new();
        self.apply_observed(|join, changed| {
            join.apply_with(changed, |on_outcome| {
                for event in events.drain(..) {
                    if !join.registry.regroup_with(&event, &mut *on_outcome) {
                        rest.push(event);
                    }
                }
            });
        });
        self.publish(&mut rest);
    }

    /// The registry's live entries of the owned users.
    fn held(&self) -> Vec<(UserId, GroupMask)> {
        let mut held = Vec::with_capacity(self.join.registry.len());
        self.join.registry.for_each(|e| {
            if self.join.owns(e.user) {
                held.push((e.user, e.state.groups));
            }
        });
        held
    }

    /// Removes each user from the registry and tombstones it under its shard's lock (dated
    /// with the event time of the state it deletes, as expiry does); the observer, if
    /// any, is told of them as expired.
    fn remove(&self, users: &[UserId]) {
        let removed = self.join.remove(users);
        if let Some(observer) = &self.join.observer
            && !removed.is_empty()
        {
            observer(&removed, true);
        }
    }
}

/// What the handles share.
struct Join<P, C: Clock> {
    registry: Arc<Registry<C>>,
    observer: Option<Observer>,
    owner: Option<Arc<dyn Owner>>,
    publisher: P,
    skew_ms: i64,
    stats: Arc<SinkStats>,
    retry_tombstones: Mutex<Vec<(UserId, EventTime)>>,
    /// The newest frame of each relay user this instance does not own (with an owner only):
    /// what [`RegistrySink::adopt_frames`] applies when their partitions come to it, so that
    /// a frame sent between the old owner's revocation and this assignment is not lost (the
    /// relay has no resync). At most one 24-byte frame per relay user.
    unowned_frames: Mutex<HashMap<u32, Frame>>,
    hold: Mutex<Hold>,
    warn_future: RateLimit,
    warn_tombstones: RateLimit,
}

impl<P: Publisher, C: Clock> Join<P, C> {
    fn new(registry: Arc<Registry<C>>, publisher: P, config: SinkConfig) -> Self {
        let last_healthy_ms = registry.now_ms();
        Join {
            registry,
            observer: config.observer,
            owner: config.owner,
            publisher,
            skew_ms: i64::try_from(config.max_future_skew.as_millis()).unwrap_or(i64::MAX),
            stats: Arc::default(),
            retry_tombstones: Mutex::new(Vec::new()),
            unowned_frames: Mutex::new(HashMap::new()),
            hold: Mutex::new(Hold {
                last_healthy_ms,
                since: None,
                ever_healthy: false,
            }),
            warn_future: RateLimit::new(Duration::from_secs(10)),
            warn_tombstones: RateLimit::new(Duration::from_secs(10)),
        }
    }

    /// The latest event time accepted now.
    fn latest_accepted(&self) -> i64 {
        EventTime::now().0.saturating_add(self.skew_ms)
    }

    /// Counts and logs (rate-limited) an event from too far in the future.
    fn drop_future(&self, user: UserId, time: i64, bound: i64) {
        SinkStats::add(&self.stats.future_dropped, 1);
        if let Some(held) = self.warn_future.check() {
            warn!(
                "dropped an event of user {user} dated {} ms ahead of the latest time accepted ({:?} past this machine's clock, max_future_skew): a clock is wrong, here or at the source ({held} more dropped since the last report)",
                time.saturating_sub(bound),
                Duration::from_millis(u64::try_from(self.skew_ms).unwrap_or(0)),
            );
        }
    }

    /// Keeps `frame` as its user's newest frame not owned (see `unowned_frames`).
    fn keep_unowned(&self, frame: &Frame) {
        self.unowned_frames
            .lock()
            .entry(frame.user_id)
            .and_modify(|held| {
                if frame.time_ms >= held.time_ms {
                    *held = *frame;
                }
            })
            .or_insert(*frame);
    }

    /// Whether `user` is owned (always, without an owner).
    fn owns(&self, user: UserId) -> bool {
        self.owner.as_ref().is_none_or(|owner| owner.owns(user))
    }

    fn apply_events(&self, events: &mut Vec<PresenceEvent>, changed: &mut Vec<UserId>) {
        if self.owner.is_some() {
            let before = events.len();
            events.retain(|e| self.owns(e.user));
            SinkStats::add(&self.stats.not_owned, (before - events.len()) as u64);
        }
        let bound = self.latest_accepted();
        if events.iter().any(|e| e.time.0 > bound) {
            events.retain(|e| {
                let keep = e.time.0 <= bound;
                if !keep {
                    self.drop_future(e.user, e.time.0, bound);
                }
                keep
            });
        }
        self.apply_with(changed, |on_outcome| {
            self.registry.apply_batch(events, on_outcome)
        });
    }

    fn apply_frames(&self, frames: &[Frame], changed: &mut Vec<UserId>) {
        let bound = self.latest_accepted();
        let owned = |f: &Frame| self.owns(UserId::Relay(f.user_id));
        if frames.iter().any(|f| f.time_ms > bound || !owned(f)) {
            let kept: Vec<Frame> = frames
                .iter()
                .filter(|f| {
                    if !owned(f) {
                        SinkStats::add(&self.stats.not_owned, 1);
                        self.keep_unowned(f);
                        return false;
                    }
                    let keep = f.time_ms <= bound;
                    if !keep {
                        self.drop_future(UserId::Relay(f.user_id), f.time_ms, bound);
                    }
                    keep
                })
                .copied()
                .collect();
            return self.apply_with(changed, |on_outcome| {
                self.registry.apply_frames(&kept, on_outcome)
            });
        }
        self.apply_with(changed, |on_outcome| {
            self.registry.apply_frames(frames, on_outcome)
        });
    }

    /// Runs `apply` with an outcome callback that publishes each change (under the shard
    /// lock: see [`RegistrySink`]), appending each changed user to `changed`; then marks what
    /// the publisher refused (outside the lock).
    fn apply_with(&self, changed: &mut Vec<UserId>, apply: impl FnOnce(&mut dyn FnMut(Outcome))) {
        let received = Instant::now();
        let before = changed.len();
        let mut refused = Vec::new();
        apply(&mut |outcome| {
            if let Outcome::Changed(change) = outcome {
                let (user, time) = (change.current.user, change.current.time);
                if !self.owns(user) {
                    // Its ownership moved since the batch was filtered: the next owner
                    // publishes it; the handover forgets it here.
                    SinkStats::add(&self.stats.not_owned, 1);
                    return;
                }
                changed.push(user);
                if self.publisher.publish(change.current, received) == Enqueue::QueueFull {
                    refused.push((user, time));
                }
            }
        });
        for (user, time) in refused {
            // The publisher logged it; the promise of its log line ("until its next change or
            // a resync") is kept by this mark.
            self.registry.mark_unpublished(user, time);
            SinkStats::add(&self.stats.unpublished, 1);
        }
        SinkStats::add(&self.stats.changes, (changed.len() - before) as u64);
    }

    fn sweep(&self, source_healthy: bool) -> Sweep {
        self.take_undelivered();
        let held = self.update_hold(source_healthy);
        let now = Instant::now();
        self.retry_tombstones(now);

        let mut expired = Vec::new();
        let mut refused = Vec::new();
        self.registry.sweep_with(|gone| {
            self.tombstone(&gone, now, &mut refused);
            expired.push(gone.last.user);
        });
        if !refused.is_empty() {
            self.keep_tombstones(refused);
        }
        SinkStats::add(&self.stats.expired, expired.len() as u64);
        Sweep { expired, held }
    }

    /// Removes `users` that the registry holds, each tombstoned under its shard's lock;
    /// returns them.
    fn remove(&self, users: &[UserId]) -> Vec<UserId> {
        let now = Instant::now();
        let mut removed = Vec::new();
        let mut refused = Vec::new();
        for &user in users {
            self.registry.remove_with(user, |gone| {
                self.tombstone(&gone, now, &mut refused);
                removed.push(user);
            });
        }
        if !refused.is_empty() {
            self.keep_tombstones(refused);
        }
        SinkStats::add(&self.stats.removed, removed.len() as u64);
        removed
    }

    /// Tombstones a user just taken out of the registry, still under its shard's lock, dated
    /// with the event time of the state it deletes. Not the wall clock: a user who comes back
    /// with that same state (reactivated in Genesys with its presence unchanged, or confirmed
    /// again after expiring) is then published at the tombstone's own time, and a reader that
    /// keeps each key's newest event time, ties to the later record (the schema's rule),
    /// takes it back; dated now, the tombstone would hide the user from such a reader until
    /// its presence next changed. One the publisher's full queue refused goes to `refused`, to
    /// keep for later.
    fn tombstone(&self, gone: &Expired, now: Instant, refused: &mut Vec<(UserId, EventTime)>) {
        let user = gone.last.user;
        if !self.owns(user) {
            // Not ours to delete: its next owner decides.
            SinkStats::add(&self.stats.not_owned, 1);
            return;
        }
        let time = gone.last.time;
        if self.publisher.tombstone(user, time, now) == Enqueue::QueueFull {
            refused.push((user, time));
        }
    }

    /// Marks the states the publisher gave up on; keeps its given-up tombstones for later.
    fn take_undelivered(&self) {
        let mut undelivered = Vec::new();
        self.publisher.drain_undelivered(&mut undelivered);
        let mut tombstones = Vec::new();
        for update in undelivered {
            match update {
                Update::State(event) => {
                    if self.registry.mark_unpublished(event.user, event.time) {
                        SinkStats::add(&self.stats.unpublished, 1);
                    }
                }
                Update::Tombstone { user, time } => tombstones.push((user, time)),
            }
        }
        if !tombstones.is_empty() {
            self.keep_tombstones(tombstones);
        }
    }

    fn keep_tombstones(&self, tombstones: Vec<(UserId, EventTime)>) {
        let mut kept = self.retry_tombstones.lock();
        let room = RETRY_TOMBSTONES_MAX.saturating_sub(kept.len());
        let lost = tombstones.len().saturating_sub(room);
        kept.extend(tombstones.into_iter().take(room));
        drop(kept);
        if lost > 0
            && let Some(held) = self.warn_tombstones.check()
        {
            warn!(
                "{lost} tombstones could not be kept for another attempt ({RETRY_TOMBSTONES_MAX} waiting): those users stay on the topic until they come back ({held} similar warnings held back)"
            );
        }
    }

    /// Sends kept tombstones again, each only while its user is still absent (checked under
    /// the user's shard lock, so a state that comes back in between is never deleted).
    fn retry_tombstones(&self, now: Instant) {
        let kept = std::mem::take(&mut *self.retry_tombstones.lock());
        if kept.is_empty() {
            return;
        }
        let mut again = Vec::new();
        for (user, time) in kept {
            let sent = self
                .registry
                .with_absent(user, || self.publisher.tombstone(user, time, now));
            match sent {
                Some(Enqueue::QueueFull) => again.push((user, time)),
                Some(_) => SinkStats::add(&self.stats.tombstones_retried, 1),
                None => {} // the user is back: its state supersedes the tombstone
            }
        }
        if !again.is_empty() {
            self.keep_tombstones(again);
        }
    }

    /// Holds or releases expiry as the source's health says; returns whether it is held.
    /// Until the source is healthy for the first time (start-up: discovery, the first
    /// resync) expiry is held silently.
    fn update_hold(&self, source_healthy: bool) -> bool {
        let now_ms = self.registry.now_ms();
        let mut hold = self.hold.lock();
        if source_healthy {
            hold.last_healthy_ms = now_ms;
            let was_healthy = std::mem::replace(&mut hold.ever_healthy, true);
            if let Some(since) = hold.since.take() {
                let overdue = self.registry.expiry_held_back();
                self.registry.release_expiry();
                self.stats.expiry_held_back.store(0, Ordering::Relaxed);
                if was_healthy {
                    info!(
                        "the presence source is healthy again: expiry resumes after {:.1?} held back; {overdue} users not confirmed meanwhile expire now",
                        since.elapsed()
                    );
                }
            }
            return false;
        }
        if hold.since.is_none() {
            hold.since = Some(Instant::now());
            self.registry.hold_expiry(hold.last_healthy_ms);
            if hold.ever_healthy {
                SinkStats::add(&self.stats.expiry_holds, 1);
                warn!(
                    "the presence source is not healthy: expiry is held back until it has reconnected and resynced (nobody is deleted for a silence that is the source's)"
                );
            }
        }
        let overdue = self.registry.expiry_held_back();
        self.stats
            .expiry_held_back
            .store(overdue as u64, Ordering::Relaxed);
        true
    }
}

impl<P, C: Clock> std::fmt::Debug for RegistrySink<P, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySink")
            .field("registry", &self.join.registry)
            .field("stats", &self.join.stats)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::AtomicBool;

    use presence_frame::{GroupMask, Location, PresenceState, Source, Status};
    use presence_registry::{ManualClock, RegistryConfig};

    use super::*;
    use crate::publisher::{BoxFuture, FlushReport};
    use crate::stats::{Health, PublisherStats, StatsSnapshot};

    /// A publisher that records every update per user, in call order; it can be told to
    /// refuse everything (a full queue) and to report updates as given up.
    #[derive(Default)]
    struct FakePublisher {
        log: Mutex<HashMap<UserId, Vec<Update>>>,
        full: AtomicBool,
        undelivered: Mutex<Vec<Update>>,
    }

    impl FakePublisher {
        fn push(&self, update: Update) -> Enqueue {
            if self.full.load(Ordering::Relaxed) {
                return Enqueue::QueueFull;
            }
            self.log
                .lock()
                .entry(update.user())
                .or_default()
                .push(update);
            Enqueue::Queued
        }

        fn updates(&self, user: UserId) -> Vec<Update> {
            self.log.lock().get(&user).cloned().unwrap_or_default()
        }

        fn last(&self, user: UserId) -> Option<Update> {
            self.updates(user).pop()
        }
    }

    impl Publisher for FakePublisher {
        fn publish(&self, event: PresenceEvent, _received: Instant) -> Enqueue {
            self.push(Update::State(event))
        }

        fn tombstone(&self, user: UserId, time: EventTime, _received: Instant) -> Enqueue {
            self.push(Update::Tombstone { user, time })
        }

        fn flush(&self, _timeout: Duration) -> BoxFuture<'_, FlushReport> {
            Box::pin(async { FlushReport::default() })
        }

        fn health(&self) -> Health {
            Health::default()
        }

        fn stats(&self) -> StatsSnapshot {
            StatsSnapshot::new(&PublisherStats::default(), 0, 0, 0)
        }

        fn drain_undelivered(&self, out: &mut Vec<Update>) {
            out.append(&mut self.undelivered.lock());
        }
    }

    const TTL: Duration = Duration::from_secs(60);

    fn sink() -> (
        RegistrySink<Arc<FakePublisher>, ManualClock>,
        Arc<FakePublisher>,
        ManualClock,
    ) {
        let clock = ManualClock::new();
        let registry =
            Arc::new(Registry::with_clock(RegistryConfig::new(TTL), clock.clone()).unwrap());
        let publisher = Arc::new(FakePublisher::default());
        let sink = RegistrySink::new(registry, Arc::clone(&publisher), SinkConfig::default());
        (sink, publisher, clock)
    }

    fn event(user: u32, time: EventTime, status: Status) -> PresenceEvent {
        PresenceEvent {
            user: UserId::Relay(user),
            time,
            state: PresenceState::new(status, Location::DESK, GroupMask(1)),
            source: Source::Resync,
        }
    }

    fn apply(sink: &RegistrySink<Arc<FakePublisher>, ManualClock>, event: &PresenceEvent) -> usize {
        sink.apply_events(&mut vec![event.clone()], |_| {})
    }

    fn states(publisher: &FakePublisher, user: u32) -> usize {
        publisher
            .updates(UserId::Relay(user))
            .iter()
            .filter(|u| matches!(u, Update::State(_)))
            .count()
    }

    #[test]
    fn a_removed_user_is_tombstoned_after_its_state_and_forgotten() {
        let (sink, publisher, _) = sink();
        let now = EventTime::now();
        // A state dated ahead of this machine's clock: its tombstone is never dated before it.
        let ahead = event(1, EventTime(now.0 + 60_000), Status::BUSY);
        let _ = apply(&sink, &ahead);
        let _ = apply(&sink, &event(2, now, Status::AVAILABLE));
        PresenceSink::remove(&sink, &[UserId::Relay(1), UserId::Relay(3)]);
        assert_eq!(
            publisher.updates(UserId::Relay(1)),
            [
                Update::State(ahead.clone()),
                Update::Tombstone {
                    user: UserId::Relay(1),
                    time: ahead.time
                }
            ]
        );
        assert!(publisher.updates(UserId::Relay(3)).is_empty());
        assert_eq!(sink.registry().get(UserId::Relay(1)), None);
        assert!(sink.registry().get(UserId::Relay(2)).is_some());
        assert_eq!(SinkStats::get(&sink.stats().removed), 1);
        // Removed again: nothing more. Its next event starts afresh.
        PresenceSink::remove(&sink, &[UserId::Relay(1)]);
        assert_eq!(publisher.updates(UserId::Relay(1)).len(), 2);
        assert_eq!(apply(&sink, &event(1, now, Status::AWAY)), 1);
        // A tombstone that finds the queue full is kept and sent while the user is absent.
        publisher.full.store(true, Ordering::Relaxed);
        PresenceSink::remove(&sink, &[UserId::Relay(2)]);
        publisher.full.store(false, Ordering::Relaxed);
        let _ = sink.sweep(true);
        assert!(matches!(
            publisher.last(UserId::Relay(2)),
            Some(Update::Tombstone { .. })
        ));
    }

    #[test]
    fn a_regrouped_state_replaces_the_same_time_with_a_smaller_mask() {
        let (sink, publisher, _) = sink();
        let now = EventTime::now();
        let mut wide = event(1, now, Status::BUSY);
        wide.state.groups = GroupMask(0b11);
        let _ = apply(&sink, &wide);
        let mut narrow = wide.clone();
        narrow.state.groups = GroupMask(0b01);
        // As an ordinary event, the same time with a smaller mask loses.
        assert_eq!(apply(&sink, &narrow), 0);
        PresenceSink::regroup(&sink, &mut vec![narrow.clone()]);
        assert_eq!(sink.registry().get(UserId::Relay(1)), Some(narrow.clone()));
        assert_eq!(
            publisher.last(UserId::Relay(1)),
            Some(Update::State(narrow.clone()))
        );
        // A newer state held stays, unpublished again.
        let newer = event(1, EventTime(now.0 + 5), Status::AWAY);
        let _ = apply(&sink, &newer);
        let states_before = states(&publisher, 1);
        PresenceSink::regroup(&sink, &mut vec![narrow]);
        assert_eq!(sink.registry().get(UserId::Relay(1)), Some(newer));
        assert_eq!(states(&publisher, 1), states_before);
        assert!(
            !publisher
                .updates(UserId::Relay(1))
                .iter()
                .any(|u| matches!(u, Update::Tombstone { .. }))
        );
    }

    #[test]
    fn loaded_states_are_not_sent_again_and_forgotten_users_get_no_tombstone() {
        let (sink, publisher, _) = sink();
        let now = EventTime::now();
        let loaded = event(1, now, Status::BUSY);
        assert_eq!(
            sink.load_published(vec![loaded.clone(), event(2, now, Status::AWAY)]),
            2
        );
        assert!(
            publisher.updates(UserId::Relay(1)).is_empty(),
            "loaded, not sent"
        );
        // A resync repeating it is a confirmation; a newer state is a change.
        assert_eq!(apply(&sink, &loaded), 0);
        let newer = event(1, EventTime(now.0 + 1), Status::AVAILABLE);
        assert_eq!(apply(&sink, &newer), 1);
        assert_eq!(publisher.updates(UserId::Relay(1)), [Update::State(newer)]);
        // An older state than held is not loaded.
        assert_eq!(sink.load_published(vec![loaded]), 0);
        // Forgetting removes without tombstones, and only the users selected.
        assert_eq!(sink.forget(&|u| u == UserId::Relay(2)), 1);
        assert_eq!(sink.registry().get(UserId::Relay(2)), None);
        assert!(sink.registry().get(UserId::Relay(1)).is_some());
        assert!(publisher.updates(UserId::Relay(2)).is_empty());
        let _ = sink.sweep(true);
        assert!(publisher.updates(UserId::Relay(2)).is_empty());
    }

    #[test]
    fn only_owned_users_reach_the_publisher() {
        let clock = ManualClock::new();
        let registry =
            Arc::new(Registry::with_clock(RegistryConfig::new(TTL), clock.clone()).unwrap());
        let publisher = Arc::new(FakePublisher::default());
        let ownership = Arc::new(crate::Ownership::none(4));
        let owned = (0..100u32)
            .find(|n| crate::partition_of(UserId::Relay(*n), 4) == 1)
            .unwrap();
        let other = (0..100u32)
            .find(|n| crate::partition_of(UserId::Relay(*n), 4) == 2)
            .unwrap();
        ownership.assign(&[1]);
        let sink = RegistrySink::new(
            registry,
            Arc::clone(&publisher),
            SinkConfig::default().owner(Arc::clone(&ownership) as Arc<dyn Owner>),
        );
        let now = EventTime::now();
        assert_eq!(apply(&sink, &event(owned, now, Status::BUSY)), 1);
        assert_eq!(apply(&sink, &event(other, now, Status::BUSY)), 0);
        let frame = |user_id| Frame {
            time_ms: now.0 + 1,
            user_id,
            status: Status::AWAY,
            location: Location::DESK,
            groups: 1,
        };
        assert_eq!(sink.apply_frames(&[frame(owned), frame(other)], |_| {}), 1);
        assert!(publisher.updates(UserId::Relay(other)).is_empty());
        assert_eq!(states(&publisher, owned), 2);
        assert_eq!(SinkStats::get(&sink.stats().not_owned), 2);
        // A frame of a user not owned is kept, and applied once its partition comes here.
        let later = Frame {
            time_ms: now.0 + 2,
            status: Status::BREAK,
            ..frame(other)
        };
        assert_eq!(sink.apply_frames(&[frame(other), later], |_| {}), 0);
        assert_eq!(sink.adopt_frames(), 0, "still not owned");
        ownership.assign(&[2]);
        assert_eq!(sink.adopt_frames(), 1, "the newest frame only");
        assert_eq!(
            publisher.last(UserId::Relay(other)),
            sink.registry().get(UserId::Relay(other)).map(Update::State)
        );
        assert_eq!(
            sink.registry()
                .get(UserId::Relay(other))
                .map(|e| e.state.status),
            Some(Status::BREAK)
        );
        assert_eq!(sink.adopt_frames(), 0, "adopted once");
        // Ownership moves away: the user's state stays until forgotten, and is never
        // tombstoned here, not even by expiry.
        ownership.revoke(&[1]);
        clock.advance(TTL * 2);
        let _ = sink.sweep(true);
        PresenceSink::remove(&sink, &[UserId::Relay(owned)]);
        assert!(
            !publisher
                .updates(UserId::Relay(owned))
                .iter()
                .any(|u| matches!(u, Update::Tombstone { .. }))
        );
    }

    #[test]
    fn held_lists_the_owned_users_states_and_masks() {
        let clock = ManualClock::new();
        let registry =
            Arc::new(Registry::with_clock(RegistryConfig::new(TTL), clock.clone()).unwrap());
        let ownership = Arc::new(crate::Ownership::none(4));
        let in_partition = |p: u32| move |n: &u32| crate::partition_of(UserId::Relay(*n), 4) == p;
        let owned = (0..100u32).find(in_partition(1)).unwrap();
        let other = (0..100u32).find(in_partition(2)).unwrap();
        ownership.assign(&[1, 2]);
        let sink = RegistrySink::new(
            registry,
            Arc::new(FakePublisher::default()),
            SinkConfig::default().owner(Arc::clone(&ownership) as Arc<dyn Owner>),
        );
        let now = EventTime::now();
        let mut warm = event(owned, now, Status::BUSY);
        warm.state.groups = GroupMask(6);
        assert_eq!(
            sink.load_published(vec![warm, event(other, now, Status::AWAY)]),
            2
        );
        ownership.revoke(&[2]);
        assert_eq!(
            PresenceSink::held(&sink),
            vec![(UserId::Relay(owned), GroupMask(6))]
        );
    }

    #[test]
    fn changes_are_published_and_repeats_are_not() {
        let (sink, publisher, _) = sink();
        let now = EventTime::now();
        let first = event(1, now, Status::AVAILABLE);
        assert_eq!(apply(&sink, &first), 1);
        assert_eq!(apply(&sink, &first), 0);
        assert_eq!(
            publisher.updates(UserId::Relay(1)),
            [Update::State(first.clone())]
        );
        let mut seen = Vec::new();
        sink.apply_events(
            &mut vec![event(1, EventTime(now.0 + 1), Status::BUSY)],
            |u| seen.push(u),
        );
        assert_eq!(seen, [UserId::Relay(1)]);
        assert_eq!(SinkStats::get(&sink.stats().changes), 2);
    }

    #[test]
    fn as_a_presence_sink_it_tells_the_observer_outside_the_locks() {
        let clock = ManualClock::new();
        let registry =
            Arc::new(Registry::with_clock(RegistryConfig::new(TTL), clock.clone()).unwrap());
        let publisher = Arc::new(FakePublisher::default());
        type Seen = Mutex<Vec<(Vec<UserId>, bool)>>;
        let seen: Arc<Seen> = Arc::default();
        let sink = {
            let (seen, registry) = (Arc::clone(&seen), Arc::clone(&registry));
            RegistrySink::new(
                Arc::clone(&registry),
                Arc::clone(&publisher),
                SinkConfig::default().observer(move |users, expired| {
                    // Outside the registry's locks: reading the registry here cannot deadlock.
                    assert!(users.iter().all(|u| expired != registry.get(*u).is_some()));
                    seen.lock().push((users.to_vec(), expired));
                }),
            )
        };
        let source: Box<dyn PresenceSink> = Box::new(sink.clone());
        let now = EventTime::now();
        source.publish(&mut vec![event(1, now, Status::AVAILABLE)]);
        source.publish_frames(&[Frame {
            time_ms: now.0,
            user_id: 2,
            status: Status::BUSY,
            location: Location::DESK,
            groups: 1,
        }]);
        source.publish(&mut vec![event(1, now, Status::AVAILABLE)]); // a repeat: nothing
        clock.advance(TTL * 2);
        let _ = sink.sweep(true);
        let mut expired = seen.lock().pop().unwrap();
        expired.0.sort();
        assert_eq!(expired, (vec![UserId::Relay(1), UserId::Relay(2)], true));
        assert_eq!(
            *seen.lock(),
            [
                (vec![UserId::Relay(1)], false),
                (vec![UserId::Relay(2)], false)
            ]
        );
        assert_eq!(states(&publisher, 1) + states(&publisher, 2), 2);
    }

    #[test]
    fn a_state_refused_by_a_full_queue_is_sent_at_the_next_confirmation() {
        // Issue 15, item 2: before, the refused state was never sent again, since every later
        // repeat of it was a mere refresh.
        let (sink, publisher, _) = sink();
        let state = event(1, EventTime::now(), Status::AVAILABLE);
        publisher.full.store(true, Ordering::Relaxed);
        assert_eq!(apply(&sink, &state), 1);
        assert_eq!(states(&publisher, 1), 0);
        assert_eq!(SinkStats::get(&sink.stats().unpublished), 1);
        publisher.full.store(false, Ordering::Relaxed);
        // The resync repeats Genesys's state, same modifiedDate.
        assert_eq!(apply(&sink, &state), 1);
        assert_eq!(
            publisher.last(UserId::Relay(1)),
            Some(Update::State(state.clone()))
        );
        assert_eq!(apply(&sink, &state), 0, "once is enough");
    }

    #[test]
    fn a_state_given_up_after_delivery_is_sent_at_the_next_confirmation() {
        let (sink, publisher, _) = sink();
        let state = event(1, EventTime::now(), Status::AVAILABLE);
        assert_eq!(apply(&sink, &state), 1);
        publisher
            .undelivered
            .lock()
            .push(Update::State(state.clone()));
        let _ = sink.sweep(true);
        assert_eq!(SinkStats::get(&sink.stats().unpublished), 1);
        assert_eq!(apply(&sink, &state), 1);
        assert_eq!(states(&publisher, 1), 2);
        // Given up on an older state than the one held: nothing to do.
        let newer = event(1, EventTime(state.time.0 + 5), Status::BUSY);
        assert_eq!(apply(&sink, &newer), 1);
        publisher.undelivered.lock().push(Update::State(state));
        let _ = sink.sweep(true);
        assert_eq!(apply(&sink, &newer), 0);
    }

    #[test]
    fn event_times_from_the_future_are_dropped() {
        // Issue 15, item 3: before, a time far ahead won last-write-wins and froze the user.
        let (sink, publisher, _) = sink();
        let now = EventTime::now();
        let future = event(1, EventTime(now.0 + 3_600_000), Status::BUSY);
        let fine = event(2, EventTime(now.0 + 60_000), Status::BUSY);
        assert_eq!(
            sink.apply_events(&mut vec![future, fine.clone()], |_| {}),
            1
        );
        assert_eq!(publisher.updates(UserId::Relay(1)), []);
        assert_eq!(SinkStats::get(&sink.stats().future_dropped), 1);
        // A real event for user 1 still gets through.
        assert_eq!(apply(&sink, &event(1, now, Status::AVAILABLE)), 1);
        // Frames likewise.
        let frame = |user_id, time_ms| Frame {
            time_ms,
            user_id,
            status: Status::AWAY,
            location: Location::DESK,
            groups: 1,
        };
        let n = sink.apply_frames(&[frame(3, now.0 + 86_400_000), frame(4, now.0)], |_| {});
        assert_eq!(n, 1);
        assert_eq!(publisher.updates(UserId::Relay(3)), []);
        assert_eq!(SinkStats::get(&sink.stats().future_dropped), 2);
    }

    #[test]
    fn a_tombstone_is_never_earlier_than_the_state_it_deletes() {
        // Issue 15, item 4: before, the tombstone carried the wall clock even when the state
        // it deleted was dated later (a source clock a little ahead).
        let (sink, publisher, clock) = sink();
        let ahead = EventTime(EventTime::now().0 + 120_000);
        assert_eq!(apply(&sink, &event(1, ahead, Status::AVAILABLE)), 1);
        clock.advance(TTL * 2);
        assert_eq!(sink.sweep(true).expired, [UserId::Relay(1)]);
        match publisher.last(UserId::Relay(1)) {
            Some(Update::Tombstone { time, .. }) => assert!(time >= ahead, "{time:?} < {ahead:?}"),
            other => panic!("expected a tombstone, got {other:?}"),
        }
    }

    #[test]
    fn a_tombstone_carries_its_state_s_time_so_the_same_state_back_replaces_it() {
        // A user deactivated and reactivated in Genesys comes back with its presence unchanged
        // (same modifiedDate). Dated with the wall clock, its tombstone was newer than that
        // state, and a reader keeping each key's newest event time never saw the user again.
        let (sink, publisher, clock) = sink();
        let old = EventTime(EventTime::now().0 - 3_600_000);
        let state = event(1, old, Status::OFFLINE);
        assert_eq!(apply(&sink, &state), 1);
        PresenceSink::remove(&sink, &[UserId::Relay(1)]);
        assert_eq!(apply(&sink, &state), 1, "back: published again");
        let tombstone = Update::Tombstone {
            user: UserId::Relay(1),
            time: old,
        };
        assert_eq!(
            publisher.updates(UserId::Relay(1)),
            [
                Update::State(state.clone()),
                tombstone.clone(),
                Update::State(state)
            ]
        );
        // Expiry dates its tombstone the same way.
        clock.advance(TTL * 2);
        assert_eq!(sink.sweep(true).expired, [UserId::Relay(1)]);
        assert_eq!(publisher.last(UserId::Relay(1)), Some(tombstone));
    }

    #[test]
    fn an_unhealthy_source_holds_expiry_back_until_it_is_healthy_again() {
        // Issue 15, item 5: before, a source outage longer than the TTL expired everyone.
        let (sink, publisher, clock) = sink();
        let now = EventTime::now();
        for user in 0..10 {
            let _ = apply(&sink, &event(user, now, Status::AVAILABLE));
        }
        assert!(!sink.sweep(true).held);
        clock.advance(TTL / 2);
        let swept = sink.sweep(false);
        assert!(swept.held && swept.expired.is_empty());
        clock.advance(TTL * 10);
        let swept = sink.sweep(false);
        assert!(swept.held && swept.expired.is_empty());
        assert_eq!(SinkStats::get(&sink.stats().expiry_held_back), 10);
        assert_eq!(SinkStats::get(&sink.stats().expiry_holds), 1);
        assert!(
            sink.registry().get(UserId::Relay(3)).is_some(),
            "still readable"
        );
        // Back, and resynced: users 0..5 are confirmed; the others are gone for real.
        for user in 0..5 {
            let _ = apply(&sink, &event(user, now, Status::AVAILABLE));
        }
        let mut expired = sink.sweep(true).expired;
        expired.sort();
        assert_eq!(expired, (5..10).map(UserId::Relay).collect::<Vec<_>>());
        assert!(matches!(
            publisher.last(UserId::Relay(7)),
            Some(Update::Tombstone { .. })
        ));
        assert_eq!(SinkStats::get(&sink.stats().expiry_held_back), 0);
    }

    #[test]
    fn a_refused_tombstone_is_sent_again_while_the_user_is_absent() {
        let (sink, publisher, clock) = sink();
        let now = EventTime::now();
        let _ = apply(&sink, &event(1, now, Status::AVAILABLE));
        let _ = apply(&sink, &event(2, now, Status::AVAILABLE));
        clock.advance(TTL * 2);
        publisher.full.store(true, Ordering::Relaxed);
        assert_eq!(sink.sweep(true).expired.len(), 2);
        publisher.full.store(false, Ordering::Relaxed);
        // User 2 comes back before the retry: its state must not be deleted after it.
        let back = event(2, EventTime(now.0 + 1), Status::BUSY);
        let _ = apply(&sink, &back);
        let _ = sink.sweep(true);
        assert!(matches!(
            publisher.last(UserId::Relay(1)),
            Some(Update::Tombstone { .. })
        ));
        assert_eq!(publisher.last(UserId::Relay(2)), Some(Update::State(back)));
        assert_eq!(SinkStats::get(&sink.stats().tombstones_retried), 1);
    }

    #[test]
    fn events_racing_the_sweep_never_leave_a_live_user_deleted_on_the_topic() {
        // Issue 15, item 1: the sweep used to remove expired users under the shard lock and
        // enqueue their tombstones after releasing it; an event in between was published and
        // then deleted by the late tombstone, while the registry held the user (and later
        // repeats, mere refreshes, never healed it).
        const USERS: u32 = 5_000;
        let (sink, publisher, clock) = sink();
        let sink = Arc::new(sink);
        let base = EventTime::now().0 - 1_000_000;
        for round in 0..5 {
            let time = base + round * 10;
            for user in 0..USERS {
                let _ = apply(&sink, &event(user, EventTime(time), Status::AVAILABLE));
            }
            clock.advance(TTL * 2);
            // Everyone is due; a writer brings them back while the sweep runs.
            let writer = {
                let sink = Arc::clone(&sink);
                std::thread::spawn(move || {
                    for user in (0..USERS).rev() {
                        let _ = apply(&sink, &event(user, EventTime(time + 1), Status::BUSY));
                    }
                })
            };
            let _ = sink.sweep(true);
            writer.join().unwrap();
            // No clock moves from here: what the registry holds is live.
            for user in (0..USERS).map(UserId::Relay) {
                match (sink.registry().get(user), publisher.last(user)) {
                    (Some(state), Some(Update::State(published))) => {
                        assert_eq!(state.time, published.time, "user {user}");
                    }
                    (None, Some(Update::Tombstone { .. }) | None) => {}
                    (held, last) => {
                        panic!("round {round}, user {user}: registry {held:?}, topic {last:?}")
                    }
                }
            }
        }
        assert!(SinkStats::get(&sink.stats().expired) > 0, "the sweep ran");
    }
}
