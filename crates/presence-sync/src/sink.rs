//! Where decoded events go.

use presence_frame::PresenceEvent;
/// The trait lives in `presence-frame`, beside the event type, so that consumers (such as
/// `presence-kafka`'s `RegistrySink`) implement it without depending on this crate.
pub use presence_frame::PresenceSink;

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
