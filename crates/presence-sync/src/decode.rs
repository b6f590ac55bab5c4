//! Turning WebSocket messages into events: size cap, JSON or frames, group masks and the
//! group filter, counters and rate-limited logging of bad input.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use presence_frame::{
    EventTime, Frame, GroupMask, Guid, Notification, Payload, PresenceEvent, PresenceSink,
    RateLimit, UserId, decode_notification,
};

use tokio_tungstenite::tungstenite::Message;

use crate::stats::{DecodeErrorKind, SyncStats, add, bump};

/// Each user's group mask, from the configured group-to-bit mapping, and the users that
/// discovery found gone (whose events, still on their way, are dropped). Discovery updates
/// both. A gone user is remembered for [`GONE_ROUNDS`] discoveries, long enough for the
/// events already on their way when its topic was unsubscribed, so that months of churn do
/// not grow the set without bound.
#[derive(Debug, Default)]
pub(crate) struct UserMasks {
    /// Both maps under one lock: an event reads them together, once.
    known: parking_lot::RwLock<Known>,
    /// The current discovery round.
    round: std::sync::atomic::AtomicU64,
    default: GroupMask,
}

#[derive(Debug, Default)]
struct Known {
    masks: HashMap<Guid, GroupMask>,
    /// Gone users, each with the discovery round that found it gone.
    gone: HashMap<Guid, u64>,
}

/// How many discovery rounds a gone user is remembered: the round that found it gone and the
/// next one (its unsubscription was sent in the first).
pub(crate) const GONE_ROUNDS: u64 = 2;

impl UserMasks {
    pub(crate) fn new(masks: HashMap<Guid, GroupMask>, default: GroupMask) -> UserMasks {
        UserMasks {
            known: parking_lot::RwLock::new(Known {
                masks,
                gone: HashMap::new(),
            }),
            round: Default::default(),
            default,
        }
    }

    /// Starts a discovery round: users found gone [`GONE_ROUNDS`] rounds ago or earlier are
    /// forgotten (no event of theirs can still be on its way).
    pub(crate) fn next_round(&self) {
        let round = self
            .round
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.known
            .write()
            .gone
            .retain(|_, found| round.saturating_sub(*found) < GONE_ROUNDS);
    }

    /// How many gone users are remembered now.
    #[cfg(test)]
    pub(crate) fn gone_len(&self) -> usize {
        self.known.read().gone.len()
    }

    pub(crate) fn of(&self, user: UserId) -> GroupMask {
        match user {
            UserId::Genesys(guid) => self
                .known
                .read()
                .masks
                .get(&guid)
                .copied()
                .unwrap_or(self.default),
            // Relay frames carry their own mask.
            UserId::Relay(_) => self.default,
        }
    }

    /// The user's mask, or `None` when discovery found the user gone, in `known` (a read of
    /// the lock the caller holds).
    fn unless_gone_in(&self, known: &Known, user: UserId) -> Option<GroupMask> {
        match user {
            UserId::Genesys(guid) => {
                if !known.gone.is_empty() && known.gone.contains_key(&guid) {
                    return None;
                }
                Some(known.masks.get(&guid).copied().unwrap_or(self.default))
            }
            // Relay frames carry their own mask.
            UserId::Relay(_) => Some(self.default),
        }
    }

    /// Whether discovery found the user gone.
    #[cfg(test)]
    fn is_gone(&self, user: UserId) -> bool {
        self.unless_gone_in(&self.known.read(), user).is_none()
    }

    /// Takes the masks of a new discovery; returns the users of `watched` whose mask changed.
    pub(crate) fn update(
        &self,
        masks: HashMap<Guid, GroupMask>,
        watched: impl Iterator<Item = Guid>,
    ) -> Vec<Guid> {
        let mut known = self.known.write();
        let changed = watched
            .filter(|user| {
                known.masks.get(user).copied().unwrap_or(self.default)
                    != masks.get(user).copied().unwrap_or(self.default)
            })
            .collect();
        known.masks = masks;
        changed
    }

    /// Marks users gone (`true`: their events are dropped from now on) or back (`false`).
    pub(crate) fn set_gone(&self, users: &[Guid], gone: bool) {
        if users.is_empty() {
            return;
        }
        let round = self.round.load(std::sync::atomic::Ordering::Relaxed);
        let set = &mut self.known.write().gone;
        for user in users {
            if gone {
                set.insert(*user, round);
            } else {
                set.remove(user);
            }
        }
    }

    /// Whether `mask` passes the filter `allowed`.
    pub(crate) fn passes(mask: GroupMask, allowed: Option<GroupMask>) -> bool {
        allowed.is_none_or(|allowed| mask.passes(allowed))
    }
}

/// What a message means for the socket beyond the events it carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Control {
    /// Nothing special.
    None,
    /// `v2.system.socket_closing`: connect a new socket to the same channel.
    SocketClosing,
    /// A `no_longer_subscribed` system message (by its topic or its `systemTopicType`): the
    /// channel named by `channel_id` is gone, or the one it arrived on when it names none.
    NoLongerSubscribed {
        /// The body's `channelId`, when present.
        channel_id: Option<String>,
    },
    /// A message without `topicName` saying `"result":"404"`: this socket's channel no longer
    /// exists.
    ChannelNotFound,
}

/// A socket message without `topicName`, such as `{"result":"404","message":"..."}`.
#[derive(serde::Deserialize)]
struct Untopiced {
    #[serde(rename = "topicName", default)]
    topic_name: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
}

impl Untopiced {
    /// Whether the message says "404": `"result":"404"` or `"result":404`.
    fn is_not_found(&self) -> bool {
        match &self.result {
            Some(serde_json::Value::String(s)) => s.trim() == "404",
            Some(serde_json::Value::Number(n)) => n.as_u64() == Some(404),
            _ => false,
        }
    }
}

/// Whether a `v2.system.*` topic is `no_longer_subscribed`, recognised by its prefix (the
/// exact topic name is unconfirmed: it may carry a suffix).
fn is_no_longer_subscribed_topic(topic: &str) -> bool {
    const PREFIX: &str = "v2.system.no_longer_subscribed";
    topic
        .get(..PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(PREFIX))
}

/// Logs at most one line every ten seconds through a shared [`RateLimit`], with the number
/// of lines held back since the last one.
#[derive(Debug)]
struct LogLimiter(RateLimit);

impl Default for LogLimiter {
    fn default() -> LogLimiter {
        LogLimiter(RateLimit::new(Duration::from_secs(10)))
    }
}

impl LogLimiter {
    fn warn(&self, what: std::fmt::Arguments<'_>) {
        self.log(log::Level::Warn, what);
    }

    fn info(&self, what: std::fmt::Arguments<'_>) {
        self.log(log::Level::Info, what);
    }

    fn log(&self, level: log::Level, what: std::fmt::Arguments<'_>) {
        match self.0.check() {
            None => {}
            Some(0) => log::log!(level, "{what}"),
            Some(held) => log::log!(level, "{what} ({held} similar messages suppressed)"),
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
    /// For messages without `topicName` other than a 404.
    untopiced_log: LogLimiter,
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
            untopiced_log: LogLimiter::default(),
        }
    }

    /// Hands `batch` (left empty) to `sink`: each event stamped with its user's mask, those
    /// of users found gone dropped, the group filter applied. The stamping and the hand-over
    /// happen under one read of the masks, and a re-discovery changes masks (or marks users
    /// gone) under its write: so every event reaches the sink with the mask that held when
    /// it got there, never an older one. (An event stamped early, held across a page fetch
    /// and applied after a regroup at the same event time would otherwise win the
    /// registry's tie with the old, larger mask, for good.)
    pub(crate) fn deliver(&self, sink: &dyn PresenceSink, batch: &mut Vec<PresenceEvent>) {
        self.deliver_with(batch, |batch| sink.publish(batch));
    }

    /// Like [`deliver`](Decoder::deliver), through [`PresenceSink::regroup`].
    pub(crate) fn deliver_regroup(&self, sink: &dyn PresenceSink, batch: &mut Vec<PresenceEvent>) {
        self.deliver_with(batch, |batch| sink.regroup(batch));
    }

    fn deliver_with(
        &self,
        batch: &mut Vec<PresenceEvent>,
        hand_over: impl FnOnce(&mut Vec<PresenceEvent>),
    ) {
        if batch.is_empty() {
            return;
        }
        let known = self.masks.known.read();
        let mut filtered = 0;
        batch.retain_mut(|event| {
            let Some(groups) = self.masks.unless_gone_in(&known, event.user) else {
                // Unsubscribed and removed: a late event must not bring it back.
                return false;
            };
            event.state.groups = groups;
            let pass = UserMasks::passes(groups, self.allowed);
            filtered += u64::from(!pass);
            pass
        });
        add(&self.stats.filtered_out, filtered);
        if !batch.is_empty() {
            hand_over(batch);
        }
        drop(known);
        batch.clear();
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
                if let Some(control) = self.without_topic(json, context) {
                    return control;
                }
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
                out.push(event);
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
                if system.channel_gone() || is_no_longer_subscribed_topic(&system.topic) {
                    return Control::NoLongerSubscribed {
                        channel_id: system.channel_id,
                    };
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

    /// A JSON object without `topicName` is a message from the service, not garbage: a 404
    /// means the channel is gone, anything else is logged (rate-limited) and skipped. `None`
    /// when the message is not such an object (then it is bad input).
    fn without_topic(&self, json: &[u8], context: &str) -> Option<Control> {
        let message: Untopiced = serde_json::from_slice(json).ok()?;
        if message.topic_name.is_some() {
            return None;
        }
        bump(&self.stats.messages_without_topic);
        let text = message.message.as_deref().unwrap_or("");
        let mut cut = text.len().min(200);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let text = &text[..cut];
        if message.is_not_found() {
            log::warn!("{context}: the service says 404 ({text:?}); the channel is gone");
            return Some(Control::ChannelNotFound);
        }
        self.untopiced_log.info(format_args!(
            "{context}: a message without topicName (result {:?}, message {text:?}); skipped",
            message.result
        ));
        Some(Control::None)
    }

    fn bad(&self, kind: DecodeErrorKind, context: &str, what: std::fmt::Arguments<'_>) {
        self.stats.decode_error(kind);
        self.log.warn(format_args!(
            "{context}: skipped a bad message ({}): {what}",
            kind.as_str()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn gone_users_are_forgotten_after_two_discovery_rounds() {
        let masks = UserMasks::new(HashMap::new(), GroupMask::NONE);
        let (a, b) = (Guid(1), Guid(2));
        masks.next_round();
        masks.set_gone(&[a], true);
        assert!(masks.is_gone(UserId::Genesys(a)));
        masks.next_round();
        masks.set_gone(&[b], true);
        assert!(masks.is_gone(UserId::Genesys(a)), "still within its rounds");
        masks.next_round();
        assert!(!masks.is_gone(UserId::Genesys(a)), "forgotten");
        assert!(masks.is_gone(UserId::Genesys(b)));
        masks.next_round();
        assert_eq!(masks.gone_len(), 0, "bounded");
    }

    fn decoder() -> Decoder {
        Decoder::new(
            Arc::new(SyncStats::default()),
            Arc::new(UserMasks::default()),
            None,
            64 * 1024,
        )
    }

    #[test]
    fn a_404_without_topic_name_is_a_gone_channel_not_garbage() {
        let d = decoder();
        let mut out = Vec::new();
        for text in [
            r#"{"result":"404","message":"Channel streaming-0-x not found"}"#,
            r#"{"result":404}"#,
        ] {
            assert_eq!(d.text(text, "test", &mut out), Control::ChannelNotFound);
        }
        assert_eq!(
            d.text(r#"{"result":"500","message":"busy"}"#, "test", &mut out),
            Control::None
        );
        assert_eq!(d.stats.messages_without_topic.load(Ordering::Relaxed), 3);
        assert_eq!(d.stats.decode_errors_total(), 0);
        // Garbage is still garbage.
        assert_eq!(d.text("<html>", "test", &mut out), Control::None);
        assert_eq!(d.text("[1,2]", "test", &mut out), Control::None);
        assert_eq!(d.stats.decode_errors_total(), 2);
        assert!(out.is_empty());
    }

    #[test]
    fn no_longer_subscribed_is_known_by_its_topic_prefix_and_names_its_channel() {
        let d = decoder();
        let mut out = Vec::new();
        let by_prefix = r#"{"topicName":"v2.system.no_longer_subscribed.streaming-0-a","eventBody":{"message":"gone"}}"#;
        assert_eq!(
            d.text(by_prefix, "test", &mut out),
            Control::NoLongerSubscribed { channel_id: None }
        );
        let by_type = r#"{"topicName":"v2.system.something","eventBody":{"systemTopicType":"no_longer_subscribed","channelId":"streaming-0-b"}}"#;
        assert_eq!(
            d.text(by_type, "test", &mut out),
            Control::NoLongerSubscribed {
                channel_id: Some("streaming-0-b".into())
            }
        );
        let other = r#"{"topicName":"v2.system.subscription_changed","eventBody":{}}"#;
        assert_eq!(d.text(other, "test", &mut out), Control::None);
        assert_eq!(d.stats.decode_errors_total(), 0);
    }
}
