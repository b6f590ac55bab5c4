//! What the running bridge shares with its admin server.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use genesys_auth::GenesysClient;
use parking_lot::Mutex;
use presence_frame::UserId;
use presence_registry::{MonotonicClock, Registry};
use presence_sync::SyncStatus;

/// The publisher as the admin server sees it.
pub trait KafkaStatus: Send + Sync {
    /// A snapshot of health and counters.
    fn snapshot(&self) -> KafkaSnapshot;
}

/// Publisher health and counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct KafkaSnapshot {
    /// Whether the brokers answered recently.
    pub healthy: bool,
    /// The last error, if unhealthy.
    pub last_error: Option<String>,
    /// Records accepted into the queue.
    pub enqueued: u64,
    /// Pending records replaced by a newer state of the same user.
    pub coalesced: u64,
    /// Records acknowledged by Kafka.
    pub delivered: u64,
    /// Deliveries that failed after librdkafka's retries.
    pub failed: u64,
    /// Failed deliveries sent again (with the newest state).
    pub retried: u64,
    /// Records rejected because the queue was full.
    pub rejected: u64,
    /// Records waiting in the coalescing queue.
    pub queue_depth: u64,
    /// Records handed to librdkafka and not yet acknowledged.
    pub in_flight: u64,
    /// Delivery latency, receipt to broker ack.
    pub latency: LatencySnapshot,
}

/// A latency histogram: cumulative counts per upper bound.
#[derive(Clone, Debug, Default)]
pub struct LatencySnapshot {
    /// Upper bounds in milliseconds, ascending.
    pub bounds_ms: Vec<f64>,
    /// Observations at or below each bound (cumulative).
    pub cumulative: Vec<u64>,
    /// All observations.
    pub count: u64,
    /// Sum of all observations, in milliseconds.
    pub sum_ms: f64,
}

impl LatencySnapshot {
    /// The upper bound of the bucket holding quantile `q`, or `None` with no observations.
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        self.bounds_ms
            .iter()
            .zip(&self.cumulative)
            .find(|(_, c)| **c >= rank)
            .map(|(b, _)| *b)
            .or(self.bounds_ms.last().copied())
    }
}

/// Users changed or expired recently, for the dashboard's live table. Bounded: a client that
/// falls more than `capacity` changes behind misses some (its table refreshes on reload).
#[derive(Debug)]
pub struct RecentChanges {
    entries: VecDeque<(u64, UserId, bool)>,
    next: u64,
    capacity: usize,
}

impl RecentChanges {
    /// An empty buffer of `capacity` entries.
    pub fn new(capacity: usize) -> RecentChanges {
        RecentChanges {
            entries: VecDeque::with_capacity(capacity),
            next: 0,
            capacity: capacity.max(1),
        }
    }

    /// Records a change (`expired` false) or an expiry of `user`.
    pub fn push(&mut self, user: UserId, expired: bool) {
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back((self.next, user, expired));
        self.next += 1;
    }

    /// Where a new reader starts.
    pub fn cursor(&self) -> u64 {
        self.next
    }

    /// Users changed and expired since `cursor` (each once), and the next cursor.
    pub fn since(&self, cursor: u64) -> (Vec<UserId>, Vec<UserId>, u64) {
        let mut changed = Vec::new();
        let mut expired = Vec::new();
        let mut seen = HashSet::new();
        for (_, user, gone) in self
            .entries
            .iter()
            .rev()
            .take_while(|(seq, _, _)| *seq >= cursor)
        {
            if seen.insert(*user) {
                if *gone {
                    expired.push(*user)
                } else {
                    changed.push(*user)
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
    /// The publisher.
    pub kafka: Arc<dyn KafkaStatus>,
    /// When the bridge started.
    pub started: Instant,
    /// Recent changes for the dashboard (shared with the sink and the sweeper).
    pub recent: Arc<Mutex<RecentChanges>>,
    /// Entries expired so far.
    pub expired: Arc<AtomicU64>,
    /// Registry changes so far (what was handed to the publisher).
    pub changes: Arc<AtomicU64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_changes_dedup_and_bound() {
        let mut recent = RecentChanges::new(3);
        let start = recent.cursor();
        recent.push(UserId::Relay(1), false);
        recent.push(UserId::Relay(1), false);
        recent.push(UserId::Relay(2), true);
        let (changed, expired, next) = recent.since(start);
        assert_eq!(
            (changed, expired),
            (vec![UserId::Relay(1)], vec![UserId::Relay(2)])
        );
        recent.push(UserId::Relay(3), false);
        recent.push(UserId::Relay(4), false);
        recent.push(UserId::Relay(5), false);
        let (changed, _, _) = recent.since(next);
        assert_eq!(changed.len(), 3, "bounded to the last three");
    }

    #[test]
    fn percentiles_pick_the_bucket_bound() {
        let l = LatencySnapshot {
            bounds_ms: vec![1.0, 5.0, 10.0],
            cumulative: vec![50, 99, 100],
            count: 100,
            sum_ms: 200.0,
        };
        assert_eq!(l.percentile_ms(0.5), Some(1.0));
        assert_eq!(l.percentile_ms(0.99), Some(5.0));
        assert_eq!(l.percentile_ms(1.0), Some(10.0));
        assert_eq!(LatencySnapshot::default().percentile_ms(0.5), None);
    }
}
