//! Where decoded presence goes: the one interface between the sources of events (a Genesys
//! sync, a relay, a test) and what consumes them (a registry joined to a publisher, a channel).

use crate::{Frame, GroupMask, PresenceEvent, UserId};

/// Receives decoded, group-filtered events from a source.
///
/// Called from socket and resync tasks: it must not block for long (apply to a registry,
/// push to a bounded queue). `events` is drained by the callee or cleared afterwards.
///
/// Any `Fn(&mut Vec<PresenceEvent>)` closure is a sink:
///
/// ```
/// use presence_frame::{Frame, Location, PresenceEvent, PresenceSink, Status};
///
/// let sink = |events: &mut Vec<PresenceEvent>| {
///     assert_eq!(events.len(), 1);
///     events.clear();
/// };
/// let frame = Frame { time_ms: 1, user_id: 7, status: Status::BUSY, location: Location::DESK,
///                     groups: 1 };
/// sink.publish_frames(&[frame]);
/// ```
pub trait PresenceSink: Send + Sync + 'static {
    /// Takes a batch of events, in arrival order per socket.
    fn publish(&self, events: &mut Vec<PresenceEvent>);

    /// Takes the frames of one relay message that passed the group filter, in order: events
    /// of [`Source::Relay`](crate::Source::Relay) not yet built, so that a sink that can use
    /// them as they are (such as a registry's `apply_frames`) skips building them. By default
    /// each becomes its [`Frame::to_event`] and goes to [`publish`](Self::publish).
    fn publish_frames(&self, frames: &[Frame]) {
        let mut events = frames.iter().map(Frame::to_event).collect();
        self.publish(&mut events);
    }

    /// Told that `users` are gone from the source: deleted or deactivated, no longer in a
    /// watched group, or filtered out by a new group mask. A sink that keeps state forgets
    /// them (a registry joined to Kafka tombstones them). By default, nothing.
    fn remove(&self, users: &[UserId]) {
        let _ = users;
    }

    /// Takes events whose news is a new group mask (a re-discovery found the user's groups
    /// changed): the user's current presence, often with the very time already held. A sink
    /// that settles equal times by comparing states (as a registry does, where a smaller
    /// mask loses) must let these replace what it holds unless it holds something newer. By
    /// default, [`publish`](Self::publish).
    fn regroup(&self, events: &mut Vec<PresenceEvent>) {
        self.publish(events);
    }

    /// Every user this sink holds a state for (only the owned ones, when it knows an
    /// [`Owner`]), with the group mask that state carries. A source compares a listing of the
    /// organisation against it: states that came from elsewhere (a warm start read back from
    /// Kafka) may carry a group mask the organisation no longer gives the user, or belong to
    /// a user it no longer has. By default, none (a sink that keeps no state).
    fn held(&self) -> Vec<(UserId, GroupMask)> {
        Vec::new()
    }
}

/// Which users this instance owns, when several instances share the organisation (each owns
/// the users of the Kafka partitions its consumer group assigned it). A source watches only
/// owned users; a sink drops the events of the others. Consulted once per event: keep
/// [`owns`](Owner::owns) cheap and lock-free.
pub trait Owner: Send + Sync + 'static {
    /// Whether `user` is owned now.
    fn owns(&self, user: UserId) -> bool;
}

impl<F> PresenceSink for F
where
    F: Fn(&mut Vec<PresenceEvent>) + Send + Sync + 'static,
{
    fn publish(&self, events: &mut Vec<PresenceEvent>) {
        self(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Location, Status};

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
