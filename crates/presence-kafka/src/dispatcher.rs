//! The dispatcher: a thread of its own that takes queued states (at most `max_in_flight` in
//! librdkafka at a time, one per user), builds their records and hands them to librdkafka,
//! putting back in order what librdkafka's own queue cannot take, until the publisher is
//! dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use tokio_util::sync::CancellationToken;

use crate::context::Rdkafka;
use crate::error::{Error, Result};
use crate::queue::Pending;
use crate::record::{Buffers, WallClock, build_record};
use crate::shared::Shared;
use crate::stats::PublisherStats;

/// Records taken from the queue under one lock.
const DISPATCH_BATCH: usize = 256;

/// Starts the dispatcher on a thread of its own, with a single-threaded runtime for its timers.
///
/// Not a task on the caller's runtime: the socket tasks there always have a message ready
/// under overload, and the dispatcher (which builds every record) would get a share of the
/// workers as small as one task among many, starving the publisher while the queue fills.
pub(crate) fn spawn_dispatcher(
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Hands one record to librdkafka. Gives the record back when librdkafka's queue is full.
fn send(
    shared: &Shared,
    producer: &Rdkafka,
    record: Pending,
    buffers: &mut Buffers,
    clock: WallClock,
) -> std::result::Result<(), Box<Pending>> {
    let base = build_record(
        &shared.topic,
        shared.instance.as_deref(),
        record,
        clock,
        buffers,
    );
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
