//! Turning WebSocket messages into events: size cap, JSON or frames, group masks and the
//! group filter, counters and rate-limited logging of bad input.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use presence_frame::{
    EventTime, Frame, GroupMask, Guid, Notification, Payload, PresenceEvent, UserId,
    decode_notification,
};

use tokio_tungstenite::tungstenite::Message;

use crate::stats::{DecodeErrorKind, SyncStats, bump};

/// Each user's group mask, from the configured group-to-bit mapping.
#[derive(Debug, Default)]
pub(crate) struct UserMasks {
    masks: HashMap<Guid, GroupMask>,
    default: GroupMask,
}

impl UserMasks {
    pub(crate) fn new(masks: HashMap<Guid, GroupMask>, default: GroupMask) -> UserMasks {
        UserMasks { masks, default }
    }

    pub(crate) fn of(&self, user: UserId) -> GroupMask {
        match user {
            UserId::Genesys(guid) => self.masks.get(&guid).copied().unwrap_or(self.default),
            // Relay frames carry their own mask.
            UserId::Relay(_) => self.default,
        }
    }
}

/// What a message means for the socket beyond the events it carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// Nothing special.
    None,
    /// `v2.system.socket_closing`.
    SocketClosing,
    /// `no_longer_subscribed`: the channel is gone.
    ChannelGone,
}

/// Logs at most one line per kind of bad input every ten seconds, with the number suppressed.
#[derive(Debug, Default)]
struct LogLimiter {
    last: parking_lot::Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogLimiter {
    fn warn(&self, what: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        let mut last = self.last.lock();
        if last.is_some_and(|t| now.duration_since(t).as_secs() < 10) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        if suppressed > 0 {
            log::warn!("{what} ({suppressed} similar messages suppressed)");
        } else {
            log::warn!("{what}");
        }
    }
}

/// Decodes messages of one source kind; shared by every socket of a sync.
#[derive(Debug)]
pub(crate) struct Decoder {
    pub(crate) stats: Arc<SyncStats>,
    masks: Arc<UserMasks>,
    allowed: Option<GroupMask>,
    max_bytes: usize,
    log: LogLimiter,
}

impl Decoder {
    pub(crate) fn new(
        stats: Arc<SyncStats>,
        masks: Arc<UserMasks>,
        allowed: Option<GroupMask>,
        max_bytes: usize,
    ) -> Decoder {
        Decoder {
            stats,
            masks,
            allowed,
            max_bytes,
            log: LogLimiter::default(),
        }
    }

    /// Stamps a Genesys event with its user's mask and applies the group filter.
    pub(crate) fn admit(&self, mut event: PresenceEvent, out: &mut Vec<PresenceEvent>) {
        event.state.groups = self.masks.of(event.user);
        if self
            .allowed
            .is_none_or(|allowed| event.state.groups.passes(allowed))
        {
            out.push(event);
        } else {
            bump(&self.stats.filtered_out);
        }
    }

    /// A text message (always JSON).
    pub(crate) fn text(&self, text: &str, context: &str, out: &mut Vec<PresenceEvent>) -> Control {
        if self.oversized(text.len(), context) {
            return Control::None;
        }
        self.json(text.as_bytes(), context, out)
    }

    /// A WebSocket message from a notification channel: text and binary messages are decoded
    /// into `out`; anything else (ping, pong, close) carries no event.
    pub(crate) fn message(
        &self,
        message: &Message,
        context: &str,
        out: &mut Vec<PresenceEvent>,
    ) -> Control {
        match message {
            Message::Text(text) => self.text(text.as_str(), context, out),
            Message::Binary(bytes) => self.binary(bytes, context, out),
            _ => Control::None,
        }
    }

    /// A binary message on a notification channel: JSON (Genesys sends text, but a binary
    /// message starting with `{` is read as JSON too); relay frames there are unexpected.
    pub(crate) fn binary(
        &self,
        bytes: &[u8],
        context: &str,
        out: &mut Vec<PresenceEvent>,
    ) -> Control {
        self.binary_into(bytes, None, context, out)
    }

    /// A binary message from a relay: frames that pass the group filter go to `frames`,
    /// undecoded (the registry applies them as they are); JSON goes to `out`.
    pub(crate) fn relay_binary(
        &self,
        bytes: &[u8],
        context: &str,
        frames: &mut Vec<Frame>,
        out: &mut Vec<PresenceEvent>,
    ) -> Control {
        self.binary_into(bytes, Some(frames), context, out)
    }

    fn binary_into(
        &self,
        bytes: &[u8],
        frames: Option<&mut Vec<Frame>>,
        context: &str,
        out: &mut Vec<PresenceEvent>,
    ) -> Control {
        if self.oversized(bytes.len(), context) {
            return Control::None;
        }
        match (Payload::classify_binary(bytes), frames) {
            (Ok(Payload::Json(json)), _) => self.json(json, context, out),
            (Ok(Payload::Frames(batch)), Some(frames)) => {
                let before = frames.len();
                match self.allowed {
                    Some(allowed) => frames.extend(batch.filter(allowed)),
                    None => frames.extend(batch.iter()),
                }
                let passed = frames.len() - before;
                crate::stats::add(&self.stats.relay_events, passed as u64);
                crate::stats::add(&self.stats.filtered_out, (batch.len() - passed) as u64);
                Control::None
            }
            (Ok(Payload::Frames(batch)), None) => {
                self.bad(
                    DecodeErrorKind::Unexpected,
                    context,
                    format_args!("{} relay frames", batch.len()),
                );
                Control::None
            }
            (Err(e), _) => {
                self.bad(DecodeErrorKind::of(&e), context, format_args!("{e}"));
                Control::None
            }
        }
    }

    /// A socket read failed. A message over the socket cap (refused from its header, never
    /// buffered) is counted as oversized; the caller replaces the socket either way.
    pub(crate) fn socket_error(
        &self,
        error: &tokio_tungstenite::tungstenite::Error,
        context: &str,
    ) {
        use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
        match error {
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => self.bad(
                DecodeErrorKind::Oversized,
                context,
                format_args!(
                    "message of {size} bytes is over the socket cap of {max_size} bytes; replacing the socket"
                ),
            ),
            other => log::info!("{context}: socket error: {other}"),
        }
    }

    fn oversized(&self, len: usize, context: &str) -> bool {
        if len <= self.max_bytes {
            return false;
        }
        self.bad(
            DecodeErrorKind::Oversized,
            context,
            format_args!(
                "message of {len} bytes is over the cap of {} bytes",
                self.max_bytes
            ),
        );
        true
    }

    fn json(&self, json: &[u8], context: &str, out: &mut Vec<PresenceEvent>) -> Control {
        let notification = match decode_notification(json, EventTime::now()) {
            Ok(n) => n,
            Err(e) => {
                let head = String::from_utf8_lossy(&json[..json.len().min(60)]).into_owned();
                self.bad(
                    DecodeErrorKind::of(&e),
                    context,
                    format_args!("{e}; message starts {head:?}"),
                );
                return Control::None;
            }
        };
        match notification {
            Notification::Presence(event) => {
                bump(&self.stats.stream_events);
                self.admit(event, out);
            }
            Notification::Heartbeat => bump(&self.stats.heartbeats),
            Notification::Pong => bump(&self.stats.pongs),
            Notification::RoutingStatus(_) => bump(&self.stats.routing_status),
            Notification::SocketClosing => {
                bump(&self.stats.system_messages);
                return Control::SocketClosing;
            }
            Notification::System(system) => {
                bump(&self.stats.system_messages);
                if system.channel_gone() {
                    return Control::ChannelGone;
                }
                log::info!(
                    "{context}: system message {} ({:?})",
                    system.topic,
                    system.system_topic_type
                );
            }
            Notification::Metadata { .. } => {}
            Notification::UnknownTopic { topic } => {
                bump(&self.stats.unknown_topics);
                log::debug!("{context}: notification on unknown topic {topic}");
            }
            _ => bump(&self.stats.unknown_topics),
        }
        Control::None
    }

    fn bad(&self, kind: DecodeErrorKind, context: &str, what: std::fmt::Arguments<'_>) {
        self.stats.decode_error(kind);
        self.log.warn(format_args!(
            "{context}: skipped a bad message ({}): {what}",
            kind.as_str()
        ));
    }
}
