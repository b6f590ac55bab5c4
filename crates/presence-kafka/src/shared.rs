//! [`Shared`]: what the publisher handle, the dispatcher and the librdkafka callbacks share
//! (the coalescing queue, the counters, the broker health as the callbacks see it, the
//! wake-ups between them, the updates given up on), and what each event does to it: an
//! enqueue, a delivery report, a client error, a fatal error, a statistics report.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use log::{debug, error, warn};
use parking_lot::Mutex;
use presence_frame::RateLimit;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use secrecy::SecretString;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::publisher::Enqueue;
use crate::queue::{Backoff, Failure, Pending, Push, Queue, Update};
use crate::security::redact;
use crate::stats::{Health, PublisherStats};

/// At most this many given-up updates wait for [`Publisher::drain_undelivered`](crate::Publisher::drain_undelivered); more are
/// counted in [`PublisherStats::undelivered_lost`]. A caller drains them every second or so,
/// and each is one user's newest state after all of librdkafka's retries.
const UNDELIVERED_MAX: usize = 65_536;

/// How often a repeated warning may be logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Broker health as the callbacks see it.
#[derive(Debug, Default)]
struct HealthState {
    reachable: bool,
    brokers_up: Option<usize>,
    last_error: Option<(String, Instant)>,
    last_delivery: Option<Instant>,
    /// The last authentication failure, for a clear error at start.
    auth_error: Option<String>,
    fatal: Option<String>,
}

/// What the publisher handle, the dispatcher and the librdkafka callbacks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) topic: String,
    /// This instance's name, for the [`HEADER_INSTANCE`](crate::HEADER_INSTANCE) header.
    pub(crate) instance: Option<String>,
    brokers: String,
    pub(crate) queue: Mutex<Queue>,
    pub(crate) stats: PublisherStats,
    health: Mutex<HealthState>,
    pub(crate) secrets: Vec<SecretString>,
    /// Wakes the dispatcher: something became ready, or an acknowledgement freed a slot.
    pub(crate) wake: Notify,
    /// Wakes flushes: a delivery report arrived, or records moved into librdkafka.
    pub(crate) progress: Notify,
    /// Flushes waiting on `progress`: nobody pays for waking it when nobody waits.
    pub(crate) flushes: AtomicUsize,
    /// Cancelled when the producer hits a fatal error.
    pub(crate) fatal: CancellationToken,
    /// A client error arrived since the dispatcher last asked the client for a fatal error.
    pub(crate) client_error_seen: AtomicBool,
    /// Updates given up on (see
    /// [`Publisher::drain_undelivered`](crate::Publisher::drain_undelivered)), oldest first; at
    /// most [`UNDELIVERED_MAX`].
    pub(crate) undelivered: Mutex<Vec<Update>>,
    warn_high: RateLimit,
    warn_full: RateLimit,
    warn_delivery: RateLimit,
    warn_client: RateLimit,
}

impl Shared {
    pub(crate) fn new(config: &KafkaConfig) -> Shared {
        let backoff = Backoff {
            base: config.retry_backoff,
            max: config.retry_backoff_max,
        };
        Shared {
            topic: config.topic.clone(),
            instance: config.instance.clone(),
            brokers: config.brokers.clone(),
            queue: Mutex::new(Queue::new(config.queue_capacity, backoff)),
            stats: PublisherStats::default(),
            health: Mutex::new(HealthState::default()),
            secrets: config.secrets(),
            wake: Notify::new(),
            progress: Notify::new(),
            flushes: AtomicUsize::new(0),
            fatal: CancellationToken::new(),
            client_error_seen: AtomicBool::new(false),
            undelivered: Mutex::new(Vec::new()),
            warn_high: RateLimit::new(LOG_EVERY),
            warn_full: RateLimit::new(LOG_EVERY),
            warn_delivery: RateLimit::new(LOG_EVERY),
            warn_client: RateLimit::new(LOG_EVERY),
        }
    }

    pub(crate) fn scrub(&self, text: &str) -> String {
        redact(text, &self.secrets)
    }

    pub(crate) fn enqueue(&self, update: Update, received: Instant) -> Enqueue {
        let user = update.user();
        let (push, depth, capacity) = {
            let mut queue = self.queue.lock();
            let push = queue.push(update, received);
            (push, queue.pending(), queue.capacity())
        };
        match push {
            Push::New => {
                PublisherStats::add(&self.stats.enqueued, 1);
                self.wake.notify_one();
                if depth.saturating_mul(5) >= capacity.saturating_mul(4)
                    && let Some(held) = self.warn_high.check()
                {
                    warn!(
                        "Kafka publish queue is over 80% full: {depth} of {capacity} users waiting (Kafka is slower than the stream; {held} similar warnings held back)"
                    );
                }
                Enqueue::Queued
            }
            Push::Coalesced => {
                PublisherStats::add(&self.stats.enqueued, 1);
                PublisherStats::add(&self.stats.coalesced, 1);
                Enqueue::Coalesced
            }
            Push::Full => {
                PublisherStats::add(&self.stats.rejected, 1);
                if let Some(held) = self.warn_full.check() {
                    error!(
                        "Kafka publish queue is FULL ({capacity} users waiting): dropped the state of user {user}, which may stay missing from topic {} until its next change or a resync; {held} more dropped since the last report (raise queue_capacity or fix the broker)",
                        self.topic
                    );
                }
                Enqueue::QueueFull
            }
            Push::Closed => Enqueue::Closed,
        }
    }

    /// A delivery report from librdkafka (or a record it refused outright).
    pub(crate) fn on_delivery(&self, error: Option<&KafkaError>, record: Pending) {
        let now = Instant::now();
        let user = record.update.user();
        match error {
            None => {
                let latency = now.saturating_duration_since(record.received);
                self.queue.lock().delivered(user, record.seq);
                PublisherStats::add(&self.stats.delivered, 1);
                self.stats.latency.record(latency);
                let mut health = self.health.lock();
                health.reachable = true;
                health.last_delivery = Some(now);
            }
            Some(error) => {
                PublisherStats::add(&self.stats.failed, 1);
                let retriable = is_retriable(error);
                let failure = self.queue.lock().failed(record, retriable, now);
                let (counter, what) = match failure {
                    Failure::Retried => (
                        &self.stats.retried,
                        "retrying it, the user's newest state, after a backoff",
                    ),
                    Failure::Superseded => (
                        &self.stats.superseded,
                        "a newer state of the user is queued instead",
                    ),
                    Failure::Dropped => (&self.stats.dropped, "giving up on it"),
                    Failure::GaveUp(update) => {
                        self.give_up(update);
                        (
                            &self.stats.dropped,
                            "giving up on it until the user's next confirmation",
                        )
                    }
                };
                PublisherStats::add(counter, 1);
                let message = self.scrub(&error.to_string());
                if let Some(held) = self.warn_delivery.check() {
                    warn!(
                        "Kafka delivery to {} failed for user {user}: {message}; {what} ({held} similar warnings held back)",
                        self.topic
                    );
                }
                self.health.lock().last_error = Some((format!("delivery failed: {message}"), now));
            }
        }
        self.wake.notify_one();
        self.notify_progress();
    }

    /// Keeps `update` for [`Publisher::drain_undelivered`](crate::Publisher::drain_undelivered), within [`UNDELIVERED_MAX`].
    fn give_up(&self, update: Update) {
        let mut undelivered = self.undelivered.lock();
        if undelivered.len() < UNDELIVERED_MAX {
            undelivered.push(update);
        } else {
            PublisherStats::add(&self.stats.undelivered_lost, 1);
        }
    }

    /// Wakes the flushes waiting for progress, if any.
    pub(crate) fn notify_progress(&self) {
        if self.flushes.load(Ordering::Acquire) > 0 {
            self.progress.notify_waiters();
        }
    }

    pub(crate) fn on_client_error(&self, error: &KafkaError, reason: &str) {
        let reason = self.scrub(reason);
        let code = error.rdkafka_error_code();
        let now = Instant::now();
        let mut health = self.health.lock();
        health.last_error = Some((reason.clone(), now));
        match code {
            Some(RDKafkaErrorCode::AllBrokersDown) => health.reachable = false,
            Some(
                RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::SSL,
            ) => {
                health.reachable = false;
                health.auth_error = Some(reason.clone());
            }
            _ => {}
        }
        drop(health);
        // Whether an error is fatal is the client's to say (the error event of a fatal error
        // carries the underlying code, say an out-of-order sequence number, not __FATAL): the
        // dispatcher, which holds the client, asks it after every client error.
        self.client_error_seen.store(true, Ordering::Release);
        self.wake.notify_one();
        if let Some(held) = self.warn_client.check() {
            warn!("Kafka client error: {reason} ({held} similar warnings held back)");
        }
    }

    /// The producer cannot go on (`reason` as librdkafka gives it): reported in the health,
    /// logged once, and `fatal` woken.
    pub(crate) fn on_fatal(&self, reason: &str) {
        let reason = self.scrub(reason);
        {
            let mut health = self.health.lock();
            if health.fatal.is_some() {
                return;
            }
            health.reachable = false;
            health.fatal = Some(reason.clone());
        }
        self.fatal.cancel();
        error!(
            "Kafka producer hit a fatal error and cannot deliver anything more (restart the bridge): {reason}"
        );
    }

    pub(crate) fn on_statistics(&self, json: &[u8]) {
        #[derive(Deserialize)]
        struct Stats {
            #[serde(default)]
            brokers: std::collections::HashMap<String, BrokerStats>,
        }
        #[derive(Deserialize)]
        struct BrokerStats {
            state: String,
        }
        match serde_json::from_slice::<Stats>(json) {
            Ok(stats) => {
                let up = stats.brokers.values().filter(|b| b.state == "UP").count();
                let mut health = self.health.lock();
                health.brokers_up = Some(up);
                health.reachable = up > 0;
            }
            Err(e) => debug!("unreadable librdkafka statistics: {e}"),
        }
    }

    pub(crate) fn auth_error(&self) -> Option<String> {
        self.health.lock().auth_error.clone()
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.health
            .lock()
            .last_error
            .as_ref()
            .map(|(e, _)| e.clone())
    }

    pub(crate) fn brokers(&self) -> &str {
        &self.brokers
    }

    pub(crate) fn health(&self) -> Health {
        let health = self.health.lock();
        Health {
            reachable: health.reachable && health.fatal.is_none(),
            brokers_up: health.brokers_up,
            last_error: health.last_error.as_ref().map(|(e, _)| e.clone()),
            since_last_error: health.last_error.as_ref().map(|(_, at)| at.elapsed()),
            since_last_delivery: health.last_delivery.map(|at| at.elapsed()),
            fatal: health.fatal.clone(),
        }
    }

    /// The fatal error, once there is one.
    pub(crate) fn fatal_reason(&self) -> Option<String> {
        self.health.lock().fatal.clone()
    }

    pub(crate) fn mark_reachable(&self) {
        self.health.lock().reachable = true;
    }
}

/// Whether a failed record could succeed if sent again.
fn is_retriable(error: &KafkaError) -> bool {
    !matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                // An event time outside the broker's accepted window
                // (log.message.timestamp.after.max.ms: one hour ahead by default since Kafka
                // 4.0): the record will never be accepted.
                | RDKafkaErrorCode::InvalidTimestamp
                | RDKafkaErrorCode::PurgeQueue
                | RDKafkaErrorCode::PurgeInflight
                // The producer has failed for good: nothing it is given will be delivered.
                | RDKafkaErrorCode::Fatal
        )
    )
}
