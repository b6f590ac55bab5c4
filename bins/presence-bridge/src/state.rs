//! What the running bridge shares with its admin server.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use genesys_auth::GenesysClient;
use parking_lot::Mutex;
use presence_frame::UserId;
use presence_kafka::{GroupStats, Health, Ownership, Publisher, SinkStats};
use presence_registry::{MonotonicClock, Registry};
use presence_sync::SyncStatus;

use crate::history::History;

/// One entry of [`RecentChanges`]: a user changed (`expired` false) or expired.
#[derive(Clone, Copy, Debug)]
struct Recent {
    user: UserId,
    expired: bool,
}

/// Entries per sealed chunk of [`RecentChanges`]: what a reader copies at most under the lock.
const CHUNK: usize = 256;

/// Users changed or expired recently, for the dashboard's live table. Bounded: a client that
/// falls more than `capacity` changes behind misses some (its table refreshes on reload).
///
/// Shared as `Arc<Mutex<RecentChanges>>` between the event path (writers) and the dashboard's
/// event streams (readers). Writers call [`push`](RecentChanges::push) under the lock: an
/// append, and every [`CHUNK`] entries one small allocation. Readers call
/// [`read_shared`](RecentChanges::read_shared), which holds the lock only to take reference
/// counts on the sealed chunks and to copy the open one (at most `CHUNK` entries), and does
/// the rest (de-duplication) after releasing it; so no reader holds up the event path for
/// longer than a short copy, however many entries it reads.
#[derive(Debug)]
pub struct RecentChanges {
    /// Full chunks, oldest first, each with the sequence number of its first entry. Readers
    /// share them by reference count; they are never modified once sealed.
    sealed: VecDeque<(u64, Arc<[Recent]>)>,
    /// The chunk being filled.
    open: Vec<Recent>,
    /// The sequence number of `open[0]`.
    open_first: u64,
    /// How many sealed chunks are kept.
    max_sealed: usize,
}

/// What a reader took from [`RecentChanges`]: references to sealed chunks and a copy of the
/// open one, read after the lock is released.
#[derive(Debug)]
pub struct RecentRead {
    /// Sealed chunks (oldest first) with how many of their first entries precede the cursor.
    sealed: Vec<(Arc<[Recent]>, usize)>,
    /// Entries of the open chunk at or after the cursor.
    open: Vec<Recent>,
    /// Where the reader continues next time.
    next: u64,
}

impl RecentChanges {
    /// An empty buffer that keeps at least `capacity` entries (whole chunks of 256).
    pub fn new(capacity: usize) -> RecentChanges {
        RecentChanges {
            sealed: VecDeque::new(),
            open: Vec::with_capacity(CHUNK),
            open_first: 0,
            max_sealed: capacity.div_ceil(CHUNK).max(1),
        }
    }

    /// Records a change (`expired` false) or an expiry of `user`. This is the writer side:
    /// call it under the shared lock (`recent.lock().push(user, expired)`).
    pub fn push(&mut self, user: UserId, expired: bool) {
        self.open.push(Recent { user, expired });
        if self.open.len() >= CHUNK {
            if self.sealed.len() >= self.max_sealed {
                self.sealed.pop_front();
            }
            self.sealed
                .push_back((self.open_first, Arc::from(self.open.as_slice())));
            self.open_first += self.open.len() as u64;
            self.open.clear();
        }
    }

    /// Where a new reader starts.
    pub fn cursor(&self) -> u64 {
        self.open_first + self.open.len() as u64
    }

    /// What a reader at `cursor` has not seen yet, taken cheaply: sealed chunks by reference
    /// count, the open chunk (at most 256 entries) by copy. Meant to be called under the
    /// lock, which is then released before [`RecentRead::users`].
    pub fn read_since(&self, cursor: u64) -> RecentRead {
        let sealed = self
            .sealed
            .iter()
            .filter(|(first, chunk)| first + chunk.len() as u64 > cursor)
            .map(|(first, chunk)| (Arc::clone(chunk), cursor.saturating_sub(*first) as usize))
            .collect();
        let skip = cursor.saturating_sub(self.open_first) as usize;
        RecentRead {
            sealed,
            open: self.open.get(skip..).unwrap_or_default().to_vec(),
            next: self.cursor(),
        }
    }

    /// The reader side: users changed and expired since `cursor` (each once, by its latest
    /// entry, newest first) and the next cursor. Holds `shared`'s lock only for
    /// [`read_since`](RecentChanges::read_since).
    pub fn read_shared(
        shared: &Mutex<RecentChanges>,
        cursor: u64,
    ) -> (Vec<UserId>, Vec<UserId>, u64) {
        let read = shared.lock().read_since(cursor);
        read.users()
    }
}

impl RecentRead {
    /// Users changed and expired (each once, by its latest entry, newest first) and the next
    /// cursor.
    pub fn users(&self) -> (Vec<UserId>, Vec<UserId>, u64) {
        let mut changed = Vec::new();
        let mut expired = Vec::new();
        let mut seen = HashSet::new();
        let sealed = self
            .sealed
            .iter()
            .rev()
            .flat_map(|(chunk, skip)| chunk.get(*skip..).unwrap_or_default().iter().rev());
        for entry in self.open.iter().rev().chain(sealed) {
            if seen.insert(entry.user) {
                if entry.expired {
                    expired.push(entry.user);
                } else {
                    changed.push(entry.user);
                }
            }
        }
        (changed, expired, self.next)
    }
}

/// Shared state of a running bridge.
pub struct AppState {
    /// The registry.
    pub registry: Arc<Registry<MonotonicClock>>,
    /// The Genesys (or relay) side.
    pub sync: SyncStatus,
    /// The Genesys client (token state, its counters).
    pub client: GenesysClient,
    /// The publisher: its [`health`](Publisher::health) and [`stats`](Publisher::stats) for
    /// readiness, metrics and the dashboard.
    pub publisher: Arc<dyn Publisher>,
    /// When the bridge started.
    pub started: Instant,
    /// Recent changes for the dashboard (shared with the sink and the sweeper).
    pub recent: Arc<Mutex<RecentChanges>>,
    /// What the join between the registry and Kafka has done: changes, expiries, states
    /// sent again, events from the future, expiry held back.
    pub sink: Arc<SinkStats>,
    /// The dashboard's rolling history (`/v1/history`), filled by the sampler task.
    pub history: Mutex<History>,
    /// This instance in the consumer group: what it owns, what the group did.
    pub group: GroupView,
}

/// This instance in its consumer group, for readiness, stats and metrics.
pub struct GroupView {
    /// The group.
    pub group_id: String,
    /// This instance's name in it.
    pub instance_id: String,
    /// The partitions (so the users) it owns now.
    pub ownership: Arc<Ownership>,
    /// What the group has done.
    pub stats: Arc<GroupStats>,
}

impl GroupView {
    /// A lone instance that owns all of a topic's `partitions` and belongs to no group (for
    /// tests of the admin server).
    pub fn alone(partitions: u32) -> GroupView {
        GroupView {
            group_id: String::new(),
            instance_id: "alone".into(),
            ownership: Arc::new(Ownership::all(partitions)),
            stats: Arc::default(),
        }
    }
}

/// Whether Kafka takes records: a broker answered recently and the producer has not failed
/// for good (`kafka_up` in `/metrics`, `kafka.healthy` in `/v1/stats`, part of `/readyz`).
pub fn kafka_healthy(health: &Health) -> bool {
    health.reachable && health.fatal.is_none()
}

/// What is wrong with Kafka, the fatal error first.
pub fn kafka_problem(health: Health) -> Option<String> {
    health.fatal.or(health.last_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_changes_dedup_and_bound() {
        let shared = Mutex::new(RecentChanges::new(3));
        let start = shared.lock().cursor();
        shared.lock().push(UserId::Relay(1), false);
        shared.lock().push(UserId::Relay(1), false);
        shared.lock().push(UserId::Relay(2), true);
        let (changed, expired, next) = RecentChanges::read_shared(&shared, start);
        assert_eq!(
            (changed, expired),
            (vec![UserId::Relay(1)], vec![UserId::Relay(2)])
        );
        for user in 3..6 {
            shared.lock().push(UserId::Relay(user), false);
        }
        let (changed, _, next) = RecentChanges::read_shared(&shared, next);
        assert_eq!(changed.len(), 3);
        // Bounded: a reader far behind sees at most the kept chunks (and the open one).
        for user in 0..10_000 {
            shared
                .lock()
                .push(UserId::Relay(user), user.is_multiple_of(7));
        }
        let (changed, expired, last) = RecentChanges::read_shared(&shared, next);
        assert!(changed.len() + expired.len() <= 2 * CHUNK, "bounded");
        assert_eq!(changed[0], UserId::Relay(9_999), "newest first");
        assert_eq!(last, next + 10_000);
        let (changed, expired, _) = RecentChanges::read_shared(&shared, last);
        assert!(changed.is_empty() && expired.is_empty());
    }

    #[test]
    fn a_reader_sees_each_entry_after_its_cursor_once_across_chunks() {
        let shared = Mutex::new(RecentChanges::new(4 * CHUNK));
        let mut cursor = shared.lock().cursor();
        let mut next_user = 0u32;
        for round in 1..40usize {
            let n = round * 37 % (CHUNK + 50);
            for _ in 0..n {
                shared
                    .lock()
                    .push(UserId::Relay(next_user), next_user.is_multiple_of(5));
                next_user += 1;
            }
            let (changed, expired, next) = RecentChanges::read_shared(&shared, cursor);
            let mut seen: Vec<u32> = changed
                .iter()
                .chain(&expired)
                .map(|u| match u {
                    UserId::Relay(n) => *n,
                    UserId::Genesys(_) => u32::MAX,
                })
                .collect();
            seen.sort_unstable();
            let want: Vec<u32> = (next_user - n as u32..next_user).collect();
            assert_eq!(seen, want, "round {round}");
            assert!(
                expired
                    .iter()
                    .all(|u| matches!(u, UserId::Relay(n) if n.is_multiple_of(5)))
            );
            cursor = next;
        }
    }
}
