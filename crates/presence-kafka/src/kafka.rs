//! The librdkafka publisher: the shared state behind the queue, the librdkafka callbacks
//! (delivery reports, errors, statistics), the dispatcher thread and flush.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use parking_lot::Mutex;
use presence_frame::{EventTime, PresenceEvent, UserId};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::client_config::{client_config, producer_config};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::publisher::{BoxFuture, Enqueue, FlushReport, Publisher};
use crate::queue::{Backoff, Failure, Pending, Push, Queue, Update};
use crate::ratelimit::RateLimit;
use crate::record::{
    HEADER_EVENT_TIME, HEADER_SCHEMA_VERSION, SCHEMA_VERSION_TEXT, record_timestamp, write_json,
    write_key,
};
use crate::security::redact;
use crate::stats::{Health, PublisherStats, StatsSnapshot};
use crate::topic::{TopicCheck, ensure_topic};

/// At most this many given-up updates wait for [`Publisher::drain_undelivered`]; more are
/// counted in [`PublisherStats::undelivered_lost`]. A caller drains them every second or so,
/// and each is one user's newest state after all of librdkafka's retries.
const UNDELIVERED_MAX: usize = 65_536;

/// How often a repeated warning may be logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The producer type, with our callbacks.
pub(crate) type Rdkafka = ThreadedProducer<PublisherContext>;

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
    topic: String,
    brokers: String,
    queue: Mutex<Queue>,
    stats: PublisherStats,
    health: Mutex<HealthState>,
    secrets: Vec<String>,
    /// Wakes the dispatcher: something became ready, or an acknowledgement freed a slot.
    wake: Notify,
    /// Wakes flushes: a delivery report arrived, or records moved into librdkafka.
    progress: Notify,
    /// Flushes waiting on `progress`: nobody pays for waking it when nobody waits.
    flushes: AtomicUsize,
    /// Cancelled when the producer hits a fatal error.
    fatal: CancellationToken,
    /// A client error arrived since the dispatcher last asked the client for a fatal error.
    client_error_seen: AtomicBool,
    /// Updates given up on (see [`Publisher::drain_undelivered`]), oldest first; at most
    /// [`UNDELIVERED_MAX`].
    undelivered: Mutex<Vec<Update>>,
    warn_high: RateLimit,
    warn_full: RateLimit,
    warn_delivery: RateLimit,
    warn_client: RateLimit,
}

impl Shared {
    fn new(config: &KafkaConfig) -> Shared {
        let backoff = Backoff {
            base: config.retry_backoff,
            max: config.retry_backoff_max,
        };
        Shared {
            topic: config.topic.clone(),
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

    fn scrub(&self, text: &str) -> String {
        redact(text, &self.secrets)
    }

    fn enqueue(&self, update: Update, received: Instant) -> Enqueue {
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
    fn on_delivery(&self, error: Option<&KafkaError>, record: Pending) {
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

    /// Keeps `update` for [`Publisher::drain_undelivered`], within [`UNDELIVERED_MAX`].
    fn give_up(&self, update: Update) {
        let mut undelivered = self.undelivered.lock();
        if undelivered.len() < UNDELIVERED_MAX {
            undelivered.push(update);
        } else {
            PublisherStats::add(&self.stats.undelivered_lost, 1);
        }
    }

    /// Wakes the flushes waiting for progress, if any.
    fn notify_progress(&self) {
        if self.flushes.load(Ordering::Acquire) > 0 {
            self.progress.notify_waiters();
        }
    }

    fn on_client_error(&self, error: &KafkaError, reason: &str) {
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
    fn on_fatal(&self, reason: &str) {
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

    fn on_statistics(&self, json: &[u8]) {
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

    fn health(&self) -> Health {
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

/// The librdkafka callbacks.
pub(crate) struct PublisherContext {
    shared: Arc<Shared>,
}

impl ClientContext for PublisherContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let message = self.shared.scrub(message);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", "{fac} {message}")
            }
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", "{fac} {message}"),
        }
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.shared.on_statistics(statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.shared.on_client_error(&error, reason);
    }
}

impl ProducerContext for PublisherContext {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, record: Box<Pending>) {
        let error = result.as_ref().err().map(|(error, _message)| error);
        self.shared.on_delivery(error, *record);
    }
}

/// Publishes to Kafka through librdkafka, behind a bounded coalescing queue.
///
/// [`start`](KafkaPublisher::start) checks (and if need be creates) the topic, then starts a
/// dispatcher thread that builds the records and moves queued states into librdkafka, at most
/// [`max_in_flight`](KafkaConfig::max_in_flight) at a time and one per user, in order of first
/// enqueue. Delivery reports update the counters and the latency histogram, and failed
/// records are retried with the user's newest state.
///
/// Dropping the publisher stops the dispatcher and discards whatever is still queued or in
/// flight (librdkafka gets half a second to purge): call [`flush`](Publisher::flush) first.
pub struct KafkaPublisher {
    shared: Arc<Shared>,
    producer: Rdkafka,
    topic_check: Option<TopicCheck>,
    cancel: CancellationToken,
    dispatcher: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("topic", &self.shared.topic)
            .field("brokers", &self.shared.brokers)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// Validates the configuration, creates the producer, checks the topic (unless
    /// [`check_topic`](KafkaConfig::check_topic) is off: then nothing is contacted here), and
    /// starts the dispatcher thread.
    ///
    /// Fails when the configuration is invalid, no broker answers within the startup
    /// timeout, the credentials are refused, or the topic is missing and cannot be created.
    pub async fn start(config: KafkaConfig) -> Result<KafkaPublisher> {
        config.validate()?;
        // The topic check runs blocking admin calls on the caller's runtime.
        tokio::runtime::Handle::try_current().map_err(Error::NoRuntime)?;
        let shared = Arc::new(Shared::new(&config));
        let context = PublisherContext {
            shared: Arc::clone(&shared),
        };
        let producer: Rdkafka = producer_config(&config)
            .create_with_context(context)
            .map_err(|e| client_error("producer", &e, &shared.secrets))?;
        let topic_check = if config.check_topic {
            let check = ensure_topic(&config, &shared, &producer).await?;
            shared.mark_reachable();
            Some(check)
        } else {
            None
        };
        let cancel = CancellationToken::new();
        let dispatcher = spawn_dispatcher(
            Arc::clone(&shared),
            producer.clone(),
            config.max_in_flight,
            cancel.clone(),
        )?;
        info!(
            "publishing presence to Kafka topic {} at {} ({}, {} compression)",
            config.topic,
            config.brokers,
            config.security_protocol(),
            config.compression.as_str()
        );
        Ok(KafkaPublisher {
            shared,
            producer,
            topic_check,
            cancel,
            dispatcher: Some(dispatcher),
        })
    }

    /// Waits until the producer hits a fatal error, then returns its reason; never returns
    /// otherwise. After a fatal error (for example an idempotence sequence that cannot be
    /// recovered) librdkafka delivers nothing more: the owner should stop and start afresh
    /// (the bridge exits with an error, to be restarted, and resyncs on start).
    pub async fn fatal_error(&self) -> String {
        self.shared.fatal.cancelled().await;
        self.shared.health.lock().fatal.clone().unwrap_or_default()
    }

    /// What the topic check at start found, unless it was turned off.
    pub fn topic_check(&self) -> Option<&TopicCheck> {
        self.topic_check.as_ref()
    }

    /// The topic records go to.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// The live counters and latency histogram.
    pub fn stats(&self) -> &PublisherStats {
        &self.shared.stats
    }

    /// The counters, queue gauges and latency histogram now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let (depth, capacity, in_flight) = {
            let queue = self.shared.queue.lock();
            (queue.pending(), queue.capacity(), queue.in_flight())
        };
        StatsSnapshot::new(&self.shared.stats, depth, capacity, in_flight)
    }

    async fn flush_until(&self, timeout: Duration) -> FlushReport {
        let start = Instant::now();
        let deadline = start + timeout;
        let delivered_before = self.snapshot().delivered;
        let waiting = FlushWaiting::new(&self.shared.flushes);
        loop {
            let progress = self.shared.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let (pending, in_flight) = {
                let queue = self.shared.queue.lock();
                (queue.pending(), queue.in_flight())
            };
            let now = Instant::now();
            if (pending == 0 && in_flight == 0) || now >= deadline {
                break;
            }
            self.shared.wake.notify_one();
            if in_flight > 0 {
                // Have librdkafka send what it holds now, without waiting for linger (states
                // still queued may be waiting for those acknowledgements to free in-flight
                // slots); records handed over meanwhile are sent at once too.
                let producer = self.producer.clone();
                let wait = (deadline - now).min(Duration::from_millis(200));
                let _ =
                    tokio::task::spawn_blocking(move || flush_librdkafka(&producer, wait)).await;
            } else {
                let _ = tokio::time::timeout_at(deadline.into(), progress).await;
            }
        }
        drop(waiting);
        let (pending, in_flight, undelivered_users) = {
            let queue = self.shared.queue.lock();
            (queue.pending(), queue.in_flight(), queue.sample_users(10))
        };
        let report = FlushReport {
            delivered: self.snapshot().delivered - delivered_before,
            pending,
            in_flight,
            elapsed: start.elapsed(),
            undelivered_users,
        };
        if report.is_complete() {
            info!(
                "Kafka flush: everything delivered ({} records in {:?})",
                report.delivered, report.elapsed
            );
        } else {
            warn!(
                "Kafka flush gave up after {:?}: {} users' states left undelivered ({} queued, {} in flight), for example {:?}",
                report.elapsed,
                report.undelivered(),
                report.pending,
                report.in_flight,
                report.undelivered_users
            );
        }
        report
    }
}

impl Publisher for KafkaPublisher {
    fn publish(&self, event: PresenceEvent, received: Instant) -> Enqueue {
        self.shared.enqueue(Update::State(event), received)
    }

    fn tombstone(&self, user: UserId, time: EventTime, received: Instant) -> Enqueue {
        self.shared
            .enqueue(Update::Tombstone { user, time }, received)
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, FlushReport> {
        Box::pin(self.flush_until(timeout))
    }

    fn health(&self) -> Health {
        self.shared.health()
    }

    fn drain_undelivered(&self, out: &mut Vec<Update>) {
        out.append(&mut self.shared.undelivered.lock());
    }
}

impl Drop for KafkaPublisher {
    fn drop(&mut self) {
        self.shared.queue.lock().close();
        self.cancel.cancel();
        // The dispatcher sees the cancellation at once (it never blocks on anything else).
        if let Some(dispatcher) = self.dispatcher.take()
            && dispatcher.join().is_err()
        {
            error!("the Kafka dispatcher thread panicked");
        }
    }
}

/// Counts a flush waiting for progress while it lives (also when the flush is cancelled).
struct FlushWaiting<'a>(&'a AtomicUsize);

impl<'a> FlushWaiting<'a> {
    fn new(flushes: &'a AtomicUsize) -> FlushWaiting<'a> {
        flushes.fetch_add(1, Ordering::AcqRel);
        FlushWaiting(flushes)
    }
}

impl Drop for FlushWaiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Records taken from the queue under one lock.
const DISPATCH_BATCH: usize = 256;

/// Starts the dispatcher on a thread of its own, with a single-threaded runtime for its timers.
///
/// Not a task on the caller's runtime: the socket tasks there always have a message ready
/// under overload, and the dispatcher (which builds every record) would get a share of the
/// workers as small as one task among many, starving the publisher while the queue fills.
fn spawn_dispatcher(
    shared: Arc<Shared>,
    producer: Rdkafka,
    max_in_flight: usize,
    cancel: CancellationToken,
) -> Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(Error::Thread)?;
    std::thread::Builder::new()
        .name("kafka-dispatch".into())
        .spawn(move || runtime.block_on(dispatch(shared, producer, max_in_flight, cancel)))
        .map_err(Error::Thread)
}

/// Moves queued states into librdkafka until cancelled.
async fn dispatch(
    shared: Arc<Shared>,
    producer: Rdkafka,
    max_in_flight: usize,
    cancel: CancellationToken,
) {
    let mut buffers = Buffers::default();
    let mut batch = Vec::with_capacity(DISPATCH_BATCH);
    loop {
        if shared.client_error_seen.swap(false, Ordering::AcqRel)
            && let Some((_code, reason)) = producer.client().fatal_error()
        {
            shared.on_fatal(&reason);
        }
        let mut librdkafka_full = false;
        let mut moved = false;
        loop {
            {
                let mut queue = shared.queue.lock();
                let room = max_in_flight
                    .saturating_sub(queue.in_flight())
                    .min(DISPATCH_BATCH);
                let now = Instant::now();
                while batch.len() < room {
                    match queue.pop(now) {
                        Some(record) => batch.push(record),
                        None => break,
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            moved = true;
            let clock = WallClock::now();
            let mut records = batch.drain(..);
            for record in records.by_ref() {
                if let Err(refused) = send(&shared, &producer, record, &mut buffers, clock) {
                    // librdkafka's own queue is full: everything not sent goes back to the
                    // front of the line, in order.
                    let rest: Vec<Pending> = records.by_ref().collect();
                    let mut queue = shared.queue.lock();
                    for record in rest.into_iter().rev() {
                        queue.unsend(record);
                    }
                    queue.unsend(*refused);
                    librdkafka_full = true;
                    break;
                }
            }
            drop(records);
            if librdkafka_full {
                break;
            }
        }
        if moved {
            // A flush waiting for the queue to drain into librdkafka goes on to flush it.
            shared.notify_progress();
        }
        let due = shared.queue.lock().next_due();
        let pause = if librdkafka_full {
            // librdkafka's own queue is full (its limit is set above ours, so rarely): let
            // acknowledgements drain it.
            Some(Instant::now() + Duration::from_millis(20))
        } else {
            due
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = shared.wake.notified() => {}
            () = sleep_until(pause) => {}
        }
    }
}

/// Waits up to `wait` for librdkafka to send and acknowledge what it holds, sending at once
/// rather than after `linger.ms`.
///
/// rdkafka's `Producer::flush` calls `rd_kafka_flush` with a zero timeout in a loop, so
/// librdkafka's "flushing" mode (which ignores the linger) is on only for an instant and a
/// long linger is waited out in full. Hence the direct call.
fn flush_librdkafka(producer: &Rdkafka, wait: Duration) {
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the pointer is the live client of `producer`, which we hold for the duration of
    // the call; rd_kafka_flush may be called from any thread, concurrently with the polling
    // thread (it serves callbacks through the same thread-safe context).
    let _ = unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), ms) };
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The wall clock and the monotonic clock read together, once per batch of records: a
/// record's `receivedAt` is the wall time minus how long it waited.
#[derive(Clone, Copy)]
struct WallClock {
    wall: EventTime,
    at: Instant,
}

impl WallClock {
    fn now() -> WallClock {
        WallClock {
            wall: EventTime::now(),
            at: Instant::now(),
        }
    }

    fn wall_time_of(self, instant: Instant) -> EventTime {
        let waited = self.at.saturating_duration_since(instant);
        EventTime(self.wall.as_millis() - i64::try_from(waited.as_millis()).unwrap_or(i64::MAX))
    }
}

/// The dispatcher's reused buffers (librdkafka copies key, value and headers).
#[derive(Default)]
struct Buffers {
    key: Vec<u8>,
    value: Vec<u8>,
}

/// Hands one record to librdkafka. Gives the record back when librdkafka's queue is full.
fn send(
    shared: &Shared,
    producer: &Rdkafka,
    record: Pending,
    buffers: &mut Buffers,
    clock: WallClock,
) -> std::result::Result<(), Box<Pending>> {
    let time = record.update.time();
    write_key(&mut buffers.key, record.update.user());
    let has_value = match &record.update {
        Update::State(event) => {
            write_json(
                &mut buffers.value,
                event,
                clock.wall_time_of(record.received),
            );
            true
        }
        Update::Tombstone { .. } => false,
    };
    let mut time_text = itoa::Buffer::new();
    let headers = OwnedHeaders::new_with_capacity(2)
        .insert(Header {
            key: HEADER_EVENT_TIME,
            value: Some(time_text.format(time.as_millis())),
        })
        .insert(Header {
            key: HEADER_SCHEMA_VERSION,
            value: Some(SCHEMA_VERSION_TEXT),
        });
    let mut base: BaseRecord<'_, [u8], [u8], Box<Pending>> =
        BaseRecord::with_opaque_to(&shared.topic, Box::new(record))
            .key(buffers.key.as_slice())
            .headers(headers);
    if has_value {
        base = base.payload(buffers.value.as_slice());
    }
    if let Some(timestamp) = record_timestamp(time) {
        base = base.timestamp(timestamp);
    }
    match producer.send(base) {
        Ok(()) => {
            PublisherStats::add(&shared.stats.sent, 1);
            Ok(())
        }
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), base)) => {
            Err(base.delivery_opaque)
        }
        Err((error, base)) => {
            // Refused outright (for example a record over message.max.bytes): the same path as
            // a failed delivery.
            shared.on_delivery(Some(&error), *base.delivery_opaque);
            Ok(())
        }
    }
}

/// A client-creation error with secrets scrubbed. A configuration error names the property
/// but never echoes its value.
fn client_error(what: &'static str, error: &KafkaError, secrets: &[String]) -> Error {
    let message = match error {
        KafkaError::ClientConfig(_, description, key, _value) => {
            format!("property {key}: {}", redact(description, secrets))
        }
        other => redact(&other.to_string(), secrets),
    };
    Error::Client { what, message }
}

pub(crate) fn admin_client(
    config: &KafkaConfig,
    shared: &Arc<Shared>,
) -> Result<rdkafka::admin::AdminClient<PublisherContext>> {
    let mut admin_config = client_config(config);
    // Nobody polls the admin client's own event queue: no statistics for it.
    admin_config.set("statistics.interval.ms", "0");
    admin_config
        .create_with_context(PublisherContext {
            shared: Arc::clone(shared),
        })
        .map_err(|e| client_error("admin", &e, &shared.secrets))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    /// librdkafka's own test hook raises a fatal error on an idempotent producer; nothing is
    /// contacted (the topic check is off, and the broker address is a listener that never
    /// answers).
    #[tokio::test]
    async fn a_fatal_producer_error_is_reported_and_awaitable() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = KafkaConfig::new(silent.local_addr().unwrap().to_string())
            .topic("fatal")
            .check_topic(false);
        let publisher = KafkaPublisher::start(config).await.unwrap();
        assert!(publisher.health().fatal.is_none());
        // SAFETY: the client is alive (we hold the publisher); the reason is a C string.
        let code = unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                publisher.producer.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                c"injected by a test".as_ptr(),
            )
        };
        assert_eq!(
            code,
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        );
        let reason = tokio::time::timeout(Duration::from_secs(10), publisher.fatal_error())
            .await
            .expect("the fatal error is reported");
        assert!(reason.contains("injected by a test"), "{reason}");
        let health = publisher.health();
        assert!(!health.reachable);
        assert_eq!(health.fatal.as_deref(), Some(reason.as_str()));
    }
}
