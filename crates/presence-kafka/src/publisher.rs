//! The narrow interface the bridge publishes through, so that another publisher (a test
//! double, another broker) can stand behind it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use presence_frame::{EventTime, PresenceEvent, UserId};

use crate::queue::Update;
use crate::stats::{Health, StatsSnapshot};

/// A boxed future, so that [`Publisher`] stays object-safe (`Arc<dyn Publisher>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Selects users (for [`Publisher::flush_users`]).
pub type Which = dyn Fn(UserId) -> bool + Send + Sync;

/// What became of a state handed to [`Publisher::publish`] or [`Publisher::tombstone`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueue {
    /// Queued for sending.
    Queued,
    /// Replaced an older state of the same user that was still waiting; only the newer one
    /// will be sent.
    Coalesced,
    /// Dropped: the queue is full of other users. Counted and logged by the publisher.
    QueueFull,
    /// Dropped: the publisher is shutting down.
    Closed,
}

impl Enqueue {
    /// Whether the state will be sent (unless a newer one replaces it).
    pub fn is_accepted(self) -> bool {
        matches!(self, Enqueue::Queued | Enqueue::Coalesced)
    }
}

/// What [`Publisher::flush`] achieved before its deadline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Records acknowledged while flushing.
    pub delivered: u64,
    /// Users whose state was still waiting in the queue at the end.
    pub pending: usize,
    /// Records still awaiting acknowledgement at the end.
    pub in_flight: usize,
    /// How long the flush took.
    pub elapsed: Duration,
    /// Some of the users left undelivered (at most 10), for the log.
    pub undelivered_users: Vec<UserId>,
}

impl FlushReport {
    /// Records or states not delivered by the deadline.
    pub fn undelivered(&self) -> usize {
        self.pending + self.in_flight
    }

    /// Whether everything was delivered.
    pub fn is_complete(&self) -> bool {
        self.undelivered() == 0
    }
}

/// Publishes presence changes and expiries, keyed by user.
///
/// The contract every implementation keeps:
/// - [`publish`](Publisher::publish) and [`tombstone`](Publisher::tombstone) never block: they
///   are called from socket tasks. What cannot be queued is dropped, counted and reported in
///   the returned [`Enqueue`].
/// - Per user, the last call wins: a state may be coalesced away by a newer one, but the
///   newest state of every user is delivered eventually (while the broker can take it), and
///   an older state is never delivered after a newer one. The caller decides what is newer
///   (the registry's last-write-wins); the publisher keeps call order.
/// - `received` is when the bridge received the state (for the delivery latency and the
///   record's `receivedAt`).
///
/// Object-safe: hold one as `Arc<dyn Publisher>`.
pub trait Publisher: Send + Sync {
    /// Publishes the current state of `event.user`.
    fn publish(&self, event: PresenceEvent, received: Instant) -> Enqueue;

    /// Publishes that `user` expired at `time`: a tombstone (the key with a null value), so a
    /// compacted topic forgets the user.
    fn tombstone(&self, user: UserId, time: EventTime, received: Instant) -> Enqueue;

    /// Sends everything queued and waits for the acknowledgements, at most `timeout`, then
    /// reports what is left. For shutdown; publishing may go on meanwhile.
    fn flush(&self, timeout: Duration) -> BoxFuture<'_, FlushReport>;

    /// Sends at once every record of the users `which` selects and waits until none of them
    /// is queued or in flight, at most `timeout`; returns how many of those users still had
    /// one. For a handover: their last states are on the broker before another instance
    /// takes them over. Publishing for other users goes on meanwhile. By default, a whole
    /// [`flush`](Publisher::flush).
    fn flush_users<'a>(&'a self, which: &'a Which, timeout: Duration) -> BoxFuture<'a, usize> {
        let _ = which;
        Box::pin(async move { self.flush(timeout).await.undelivered() })
    }

    /// Whether the brokers are reachable, and the last error.
    fn health(&self) -> Health;

    /// The counters, queue gauges and delivery latency now, for metrics. (On a
    /// [`KafkaPublisher`](crate::KafkaPublisher) itself, `stats()` names the inherent method
    /// that returns the live counters; this one is its
    /// [`snapshot`](crate::KafkaPublisher::snapshot).)
    fn stats(&self) -> StatsSnapshot;

    /// Moves into `out` the updates this publisher accepted and then gave up on for good
    /// while each was still its user's newest (a delivery failure that retrying cannot cure,
    /// such as a record over the broker's size limit), oldest first. The caller decides what
    /// to do with them (the bridge marks the state as not published, so that the next
    /// confirmation sends it again). Call it regularly: a publisher keeps a bounded number.
    fn drain_undelivered(&self, out: &mut Vec<Update>);
}

impl<P: Publisher + ?Sized> Publisher for Arc<P> {
    fn publish(&self, event: PresenceEvent, received: Instant) -> Enqueue {
        (**self).publish(event, received)
    }

    fn tombstone(&self, user: UserId, time: EventTime, received: Instant) -> Enqueue {
        (**self).tombstone(user, time, received)
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, FlushReport> {
        (**self).flush(timeout)
    }

    fn flush_users<'a>(&'a self, which: &'a Which, timeout: Duration) -> BoxFuture<'a, usize> {
        (**self).flush_users(which, timeout)
    }

    fn health(&self) -> Health {
        (**self).health()
    }

    fn stats(&self) -> StatsSnapshot {
        Publisher::stats(&**self)
    }

    fn drain_undelivered(&self, out: &mut Vec<Update>) {
        (**self).drain_undelivered(out)
    }
}
