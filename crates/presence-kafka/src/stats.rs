//! What a publisher has done, for metrics: counters, the delivery latency histogram, and the
//! broker health. Libraries count; the binary exports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::latency::{HistogramSnapshot, LatencyHistogram};

/// Counters of a [`KafkaPublisher`](crate::KafkaPublisher), shared with its background
/// tasks. Every counter only grows.
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// States and tombstones accepted into the queue (coalesced ones included).
    pub enqueued: AtomicU64,
    /// Accepted states that replaced an older pending state of the same user (a subset of
    /// `enqueued`): the older state was never sent.
    pub coalesced: AtomicU64,
    /// States dropped because the queue was full (a user with nothing pending arrived when
    /// `queue_capacity` users were pending). Each one is a user whose newest state may be
    /// missing from the topic until their next change or a resync.
    pub rejected: AtomicU64,
    /// Records handed to librdkafka (retries included).
    pub sent: AtomicU64,
    /// Records the brokers acknowledged.
    pub delivered: AtomicU64,
    /// Records whose delivery failed after librdkafka's own retries (or that librdkafka
    /// refused outright).
    pub failed: AtomicU64,
    /// Failed records queued again because they were still their user's newest state.
    pub retried: AtomicU64,
    /// Failed records not retried because a newer state of the user was pending, which is
    /// sent instead.
    pub superseded: AtomicU64,
    /// Failed records given up for good (an error retrying cannot cure, such as a record over
    /// the broker's size limit, or a failure during shutdown).
    pub dropped: AtomicU64,
    /// Given-up updates that could not be kept for
    /// [`Publisher::drain_undelivered`](crate::Publisher::drain_undelivered) because too many
    /// were waiting (nobody drained them).
    pub undelivered_lost: AtomicU64,
    /// Delivery latency, from receipt by the bridge to the broker's acknowledgement, of every
    /// delivered record.
    pub latency: LatencyHistogram,
}

impl PublisherStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A point-in-time copy of a publisher's counters and gauges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`PublisherStats::enqueued`].
    pub enqueued: u64,
    /// See [`PublisherStats::coalesced`].
    pub coalesced: u64,
    /// See [`PublisherStats::rejected`].
    pub rejected: u64,
    /// See [`PublisherStats::sent`].
    pub sent: u64,
    /// See [`PublisherStats::delivered`].
    pub delivered: u64,
    /// See [`PublisherStats::failed`].
    pub failed: u64,
    /// See [`PublisherStats::retried`].
    pub retried: u64,
    /// See [`PublisherStats::superseded`].
    pub superseded: u64,
    /// See [`PublisherStats::dropped`].
    pub dropped: u64,
    /// See [`PublisherStats::undelivered_lost`].
    pub undelivered_lost: u64,
    /// Users with a pending state now (gauge).
    pub queue_depth: usize,
    /// The queue's capacity in users.
    pub queue_capacity: usize,
    /// Records in librdkafka awaiting acknowledgement now (gauge).
    pub in_flight: usize,
    /// See [`PublisherStats::latency`].
    pub latency: HistogramSnapshot,
}

impl StatsSnapshot {
    pub(crate) fn new(
        stats: &PublisherStats,
        queue_depth: usize,
        queue_capacity: usize,
        in_flight: usize,
    ) -> StatsSnapshot {
        let get = PublisherStats::get;
        StatsSnapshot {
            enqueued: get(&stats.enqueued),
            coalesced: get(&stats.coalesced),
            rejected: get(&stats.rejected),
            sent: get(&stats.sent),
            delivered: get(&stats.delivered),
            failed: get(&stats.failed),
            retried: get(&stats.retried),
            superseded: get(&stats.superseded),
            dropped: get(&stats.dropped),
            undelivered_lost: get(&stats.undelivered_lost),
            queue_depth,
            queue_capacity,
            in_flight,
            latency: stats.latency.snapshot(),
        }
    }
}

/// How the connection to Kafka looks, for readiness and dashboards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Whether at least one broker is connected and usable: the last statistics report saw a
    /// broker up, or a record was acknowledged since librdkafka last reported every broker
    /// down.
    pub reachable: bool,
    /// Brokers up in the last statistics report, if one came yet.
    pub brokers_up: Option<usize>,
    /// The last error (a broker connection, an authentication, a delivery), secrets scrubbed.
    pub last_error: Option<String>,
    /// How long ago that error happened.
    pub since_last_error: Option<Duration>,
    /// How long ago the last record was acknowledged.
    pub since_last_delivery: Option<Duration>,
    /// A fatal producer error (the idempotent producer cannot go on; restart the publisher).
    pub fatal: Option<String>,
}
