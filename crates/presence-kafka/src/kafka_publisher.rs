//! [`KafkaPublisher`], the handle: it validates the configuration, creates the producer,
//! checks the topic and starts the dispatcher; it implements [`Publisher`] over the shared
//! queue, flushes librdkafka, and stops the dispatcher when dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use presence_frame::{EventTime, PresenceEvent, UserId};
use rdkafka::producer::Producer;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::context::{Rdkafka, create_producer};
use crate::dispatcher::spawn_dispatcher;
use crate::error::{Error, Result};
use crate::publisher::{BoxFuture, Enqueue, FlushReport, Publisher, Which};
use crate::queue::Update;
use crate::shared::Shared;
use crate::stats::{Health, PublisherStats, StatsSnapshot};
use crate::topic::{TopicCheck, ensure_topic};

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
            .field("brokers", &self.shared.brokers())
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
        let producer = create_producer(&config, &shared)?;
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
        self.shared.fatal_reason().unwrap_or_default()
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
        let delivered_before = self.snapshot().delivered;
        self.drain(start + timeout, None).await;
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

    /// Sends what is queued at once and waits until nothing (of the users `which` selects,
    /// when given) is queued or in flight, or `deadline` passes.
    async fn drain(&self, deadline: Instant, which: Option<&Which>) {
        let waiting = FlushWaiting::new(&self.shared.flushes);
        loop {
            let progress = self.shared.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let (pending, in_flight, selected) = {
                let queue = self.shared.queue.lock();
                let selected = which.map(|which| queue.users_where(which));
                (queue.pending(), queue.in_flight(), selected)
            };
            let now = Instant::now();
            let done = match selected {
                Some(users) => users == 0,
                None => pending == 0 && in_flight == 0,
            };
            if done || now >= deadline {
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

    fn flush_users<'a>(&'a self, which: &'a Which, timeout: Duration) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            self.drain(Instant::now() + timeout, Some(which)).await;
            self.shared.queue.lock().users_where(which)
        })
    }

    fn health(&self) -> Health {
        self.shared.health()
    }

    fn stats(&self) -> StatsSnapshot {
        self.snapshot()
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
