//! The generator task: at the configured rate (and at each shift change) asks the
//! workload's [`Generator`] (`workload.rs`, which decides who changes to what) for a batch
//! of changes, applies it to every user's presence, and dispatches it to the relay sockets
//! and to the channels subscribed to the users that changed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use presence_frame::FRAME_LEN;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::socket::relay_frame;
use crate::state::Shared;
use crate::wire;
use crate::workload::{Change, Generator};

/// Makes the workload's changes until cancelled.
pub(crate) async fn run_generator(shared: Arc<Shared>) {
    let config = &shared.config;
    let mut generator = Generator::new(config);
    let mut batch: Vec<Change> = Vec::new();
    let shift_every = (!config.shift_change_every.is_zero()).then_some(config.shift_change_every);
    let mut last = Instant::now();
    let mut carry = 0.0f64;
    let mut next_shift = shift_every.map(|every| last + every);
    loop {
        let rate = shared.change_rate();
        if rate <= 0.0 || shared.is_quiesced() {
            tokio::select! {
                _ = shared.cancel.cancelled() => return,
                _ = shared.generator_wake.notified() => {}
            }
            // Time spent idle makes no backlog of changes or shift changes.
            last = Instant::now();
            carry = 0.0;
            next_shift = shift_every.map(|every| last + every);
            continue;
        }
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = shared.generator_wake.notified() => continue,
            _ = tokio::time::sleep(config.tick) => {}
        }
        let _tick = shared.tick_lock.lock().await;
        if shared.is_quiesced() {
            continue;
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        last = now;
        // At most a quarter second's worth per batch, so a stalled runtime neither floods the
        // clients nor allocates a huge batch (the rate is then best effort).
        let due = (rate * elapsed + carry).min(rate * 0.25 + 1.0);
        let count = due.floor();
        carry = due - count;
        let now_ms = shared.clock.now_ms();
        {
            let mut presence = shared.presence.write();
            generator.generate(
                &shared.world,
                &mut presence,
                count as usize,
                now_ms,
                &mut batch,
            );
            if let Some(at) = next_shift
                && now >= at
            {
                generator.shift_change(
                    &shared.world,
                    &mut presence,
                    config.shift_change_fraction,
                    now_ms,
                    &mut batch,
                );
                next_shift = shift_every.map(|every| at + every);
            }
        }
        {
            // Only active users change presence: a deactivated or deleted user's
            // subscriptions deliver nothing more, a spare one is not there yet.
            let org = shared.org.read();
            batch.retain(|change| org.is_active(change.user));
        }
        dispatch(&shared, &batch);
        batch.clear();
    }
}

/// Sends a batch of changes to relay sockets and to channels subscribed to them.
fn dispatch(shared: &Shared, changes: &[Change]) {
    if changes.is_empty() {
        return;
    }
    shared
        .counters
        .events_generated
        .fetch_add(changes.len() as u64, Ordering::Relaxed);
    if shared.relay_tx.receiver_count() > 0 {
        for chunk in changes.chunks(shared.config.relay_frames_per_message) {
            let mut buf = Vec::with_capacity(chunk.len() * FRAME_LEN);
            for change in chunk {
                relay_frame(shared, change.user, &change.presence).encode_into(&mut buf);
            }
            let _ = shared.relay_tx.send(Bytes::from(buf));
        }
    }
    let table = shared.channels.lock();
    if !table.has_subscriptions() {
        return;
    }
    let mut lost = 0u64;
    let mut unreached = 0u64;
    for change in changes {
        let subscribers = table.subscribers(change.user);
        if subscribers.is_empty() {
            continue;
        }
        let mut reached = false;
        // Formatted once per change, and only when some socket will take it.
        let mut text: Option<Utf8Bytes> = None;
        for id in subscribers {
            let Some(channel) = table.channels.get(id) else {
                continue;
            };
            let delivered = match &channel.connection {
                Some(conn) if !conn.stalled.load(Ordering::Relaxed) => {
                    let message = text
                        .get_or_insert_with(|| {
                            Utf8Bytes::from(wire::presence_notification(
                                &shared.world,
                                change.user,
                                &change.presence,
                                shared.config.notification_spelling,
                                shared.config.notification_modified_date,
                                shared.random_guid(),
                            ))
                        })
                        .clone();
                    conn.events.try_send(message).is_ok()
                }
                _ => false,
            };
            if delivered {
                reached = true;
            } else {
                channel.counters.lost.fetch_add(1, Ordering::Relaxed);
                lost += 1;
            }
        }
        if !reached {
            unreached += 1;
        }
    }
    shared
        .counters
        .events_lost
        .fetch_add(lost, Ordering::Relaxed);
    shared
        .counters
        .events_unreached
        .fetch_add(unreached, Ordering::Relaxed);
}
