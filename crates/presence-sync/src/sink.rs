//! Where decoded events go.

use presence_frame::{Frame, PresenceEvent};

/// Receives decoded, group-filtered events from a sync or a relay source.
///
/// Called from the socket and resync tasks: it must not block for long (apply to a registry,
/// push to a bounded queue). `events` is drained by the callee or cleared afterwards.
pub trait PresenceSink: Send + Sync + 'static {
    /// Takes a batch of events, in arrival order per socket.
    fn publish(&self, events: &mut Vec<PresenceEvent>);

    /// Takes the frames of one relay message that passed the group filter, in order: events
    /// of [`Source::Relay`](presence_frame::Source::Relay) not yet built, so that a sink that
    /// can use them as they are (such as `Registry::apply_frames`) skips building them. By
    /// default each becomes its [`Frame::to_event`] and goes to [`publish`](Self::publish).
    fn publish_frames(&self, frames: &[Frame]) {
        let mut events = frames.iter().map(Frame::to_event).collect();
        self.publish(&mut events);
    }
}

impl<F> PresenceSink for F
where
    F: Fn(&mut Vec<PresenceEvent>) + Send + Sync + 'static,
{
    fn publish(&self, events: &mut Vec<PresenceEvent>) {
        self(events)
    }
}

/// A sink that forwards every event into a tokio channel, for callers that want a stream.
/// When the channel is full, events are dropped and counted rather than blocking the socket.
#[derive(Debug)]
pub struct ChannelSink {
    tx: tokio::sync::mpsc::Sender<PresenceEvent>,
    dropped: std::sync::atomic::AtomicU64,
}

impl ChannelSink {
    /// A sink and the receiving end of its channel, holding up to `capacity` events.
    pub fn new(capacity: usize) -> (ChannelSink, tokio::sync::mpsc::Receiver<PresenceEvent>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        (
            ChannelSink {
                tx,
                dropped: Default::default(),
            },
            rx,
        )
    }

    /// Events dropped because the channel was full or closed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl PresenceSink for ChannelSink {
    fn publish(&self, events: &mut Vec<PresenceEvent>) {
        for event in events.drain(..) {
            if self.tx.try_send(event).is_err() {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_frame::{Location, Status, UserId};

    #[test]
    fn frames_reach_a_sink_without_publish_frames_as_their_events() {
        let frames = [7u32, 8].map(|user_id| Frame {
            time_ms: 1_000,
            user_id,
            status: Status::BUSY,
            location: Location::DESK,
            groups: 3,
        });
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = std::sync::Arc::clone(&seen);
        let sink = move |events: &mut Vec<PresenceEvent>| {
            into.lock()
                .unwrap_or_else(|e| e.into_inner())
                .append(events);
        };
        PresenceSink::publish_frames(&sink, &frames);
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(seen, frames.map(|f| f.to_event()));
        assert_eq!(seen[1].user, UserId::Relay(8));
    }
}
