//! Genesys Cloud notifications (the JSON text on a notification channel's WebSocket), decoded
//! into typed messages.
//!
//! Every message is an envelope `{"topicName": ..., "version": ..., "eventBody": {...},
//! "metadata": {...}}`. The topic decides what the body is:
//!
//! | topic | decoded as |
//! |---|---|
//! | `v2.users.{id}.presence` | [`Notification::Presence`] |
//! | `v2.users.{id}.routingStatus` | [`Notification::RoutingStatus`] |
//! | `channel.metadata`, body message `WebSocket Heartbeat` | [`Notification::Heartbeat`] |
//! | `channel.metadata`, body message `pong` | [`Notification::Pong`] |
//! | `channel.metadata`, any other message | [`Notification::Metadata`] |
//! | `v2.system.socket_closing` | [`Notification::SocketClosing`] |
//! | any other `v2.system.*` | [`Notification::System`] |
//! | anything else | [`Notification::UnknownTopic`] |
//!
//! Topic names are matched case-insensitively. An unknown topic is a value, not an error, so
//! the stream goes on.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{Error, Result, echo};
use crate::event::{EventTime, Guid, PresenceEvent, PresenceState, Source, Status, UserId};

/// A decoded notification.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Notification {
    /// A user's presence changed. The group mask is [`GroupMask::NONE`](crate::GroupMask::NONE):
    /// Genesys does not send groups, so the caller fills it from its own group mapping.
    Presence(PresenceEvent),
    /// A user's routing status changed.
    RoutingStatus(RoutingStatusEvent),
    /// The server's periodic heartbeat.
    Heartbeat,
    /// The answer to our `{"message":"ping"}`.
    Pong,
    /// Another `channel.metadata` message.
    Metadata {
        /// The body's `message`.
        message: String,
    },
    /// `v2.system.socket_closing`: the server will close this socket in about a minute; connect
    /// a replacement first.
    SocketClosing,
    /// Another `v2.system.*` message (such as `no_longer_subscribed`).
    System(SystemMessage),
    /// A topic this crate does not know. Not an error: count it and go on.
    UnknownTopic {
        /// The topic name as sent.
        topic: String,
    },
}

/// A `v2.users.{id}.routingStatus` event.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RoutingStatusEvent {
    /// Whose routing status this is.
    pub user: UserId,
    /// The routing status as Genesys spells it (`OFF_QUEUE`, `IDLE`, `INTERACTING`,
    /// `NOT_RESPONDING`, `COMMUNICATING`).
    pub status: String,
    /// When the status started, if sent and valid.
    pub start_time: Option<EventTime>,
}

/// What a `v2.system.*` message is about (its body's `systemTopicType`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum SystemTopicType {
    /// The channel is gone: make a new one.
    NoLongerSubscribed,
    /// The channel's subscriptions changed.
    SubscriptionChanged,
    /// The token that created the channel was revoked.
    TokenRevoked,
    /// A value this crate does not know, kept as sent.
    Other(String),
}

/// A `v2.system.*` message other than `socket_closing`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SystemMessage {
    /// The topic name as sent.
    pub topic: String,
    /// The body's `systemTopicType`, when present.
    pub system_topic_type: Option<SystemTopicType>,
    /// The body's `channelId`, when present.
    pub channel_id: Option<String>,
    /// The body's `reason`, when present (`another_channel_subscribed`, `user_tokens_revoked`).
    pub reason: Option<String>,
    /// The body's `message`, when present.
    pub message: Option<String>,
}

impl SystemMessage {
    /// Whether the channel this arrived on is gone (`no_longer_subscribed`, in the body or in
    /// the topic name), so a new channel is needed.
    pub fn channel_gone(&self) -> bool {
        self.system_topic_type == Some(SystemTopicType::NoLongerSubscribed)
            || self
                .topic
                .to_ascii_lowercase()
                .ends_with("no_longer_subscribed")
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "topicName", borrow)]
    topic_name: Cow<'a, str>,
    #[serde(rename = "eventBody", borrow, default)]
    event_body: Option<&'a RawValue>,
}

/// A Genesys presence object, as found in a presence notification's `eventBody`, in a user's
/// `presence` (REST `expand=presence`) and in bulk presence results. Unknown fields are ignored.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct GenesysPresence<'a> {
    /// The presence definition: its id and system presence.
    #[serde(rename = "presenceDefinition", borrow, default)]
    pub presence_definition: Option<PresenceDefinitionRef<'a>>,
    /// The presence message.
    #[serde(borrow, default)]
    pub message: Option<Cow<'a, str>>,
    /// When the presence was last modified (RFC 3339).
    #[serde(rename = "modifiedDate", borrow, default)]
    pub modified_date: Option<Cow<'a, str>>,
}

/// A reference to a presence definition (`{"id": ..., "systemPresence": ...}`).
#[derive(Deserialize, Debug, Clone, Default)]
pub struct PresenceDefinitionRef<'a> {
    /// The definition id.
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    /// The system presence it maps to (any spelling).
    #[serde(rename = "systemPresence", borrow, default)]
    pub system_presence: Option<Cow<'a, str>>,
}

impl GenesysPresence<'_> {
    /// Builds the event for `user`. The event time is `modifiedDate` when present and valid;
    /// when absent it is `received_at` (the official sample omits it). A present but invalid
    /// `modifiedDate` is an error: guessing a time could let a stale state win.
    pub fn to_event(
        &self,
        user: UserId,
        received_at: EventTime,
        source: Source,
    ) -> Result<PresenceEvent> {
        let time = match self.modified_date.as_deref() {
            Some(text) => EventTime::parse_rfc3339(text)?,
            None => received_at,
        };
        let definition = self.presence_definition.as_ref();
        let status = definition
            .and_then(|d| d.system_presence.as_deref())
            .map_or(Status::UNKNOWN, Status::from_system_presence);
        let mut state = PresenceState {
            status,
            ..PresenceState::default()
        }
        .with_message(self.message.as_deref().unwrap_or(""));
        if let Some(id) = definition.and_then(|d| d.id.as_deref()) {
            state = state.with_definition_id(id);
        }
        Ok(PresenceEvent {
            user,
            time,
            state,
            source,
        })
    }
}

#[derive(Deserialize)]
struct RoutingBody<'a> {
    #[serde(rename = "routingStatus", borrow, default)]
    routing_status: Option<RoutingStatusRef<'a>>,
}

#[derive(Deserialize)]
struct RoutingStatusRef<'a> {
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(rename = "startTime", borrow, default)]
    start_time: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct MetadataBody<'a> {
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct SystemBody<'a> {
    #[serde(rename = "systemTopicType", borrow, default)]
    system_topic_type: Option<Cow<'a, str>>,
    #[serde(rename = "channelId", borrow, default)]
    channel_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// Decodes one notification.
///
/// `received_at` is the event time given to a presence event that carries no `modifiedDate`.
///
/// ```
/// use presence_frame::{EventTime, Notification, Status, decode_notification};
///
/// let text = br#"{"topicName":"v2.users.9ed7d9f6-0c59-4360-ac54-40dd35eb9c2f.presence",
///   "eventBody":{"presenceDefinition":{"id":"6a3af858-942f-489d-9700-5f9bcdcdae9b",
///   "systemPresence":"ON_QUEUE"},"message":"","modifiedDate":"2026-11-28T09:03:17.067Z"}}"#;
/// match decode_notification(text, EventTime(0))? {
///     Notification::Presence(event) => {
///         assert_eq!(event.state.status, Status::ON_QUEUE);
///         assert_eq!(event.time.to_rfc3339(), "2026-11-28T09:03:17.067Z");
///     }
///     other => panic!("unexpected {other:?}"),
/// }
/// # Ok::<(), presence_frame::Error>(())
/// ```
pub fn decode_notification(json: &[u8], received_at: EventTime) -> Result<Notification> {
    let envelope: Envelope<'_> = serde_json::from_slice(json)?;
    let topic = envelope.topic_name.as_ref();
    let body = envelope.event_body.map(RawValue::get);

    if let Some(rest) = strip_prefix_ignore_case(topic, "v2.users.") {
        if let Some(id) = strip_suffix_ignore_case(rest, ".presence") {
            let user = user_from_topic(id)?;
            let body = body.ok_or_else(|| missing(topic, "eventBody"))?;
            let presence: GenesysPresence<'_> = serde_json::from_str(body)?;
            return presence
                .to_event(user, received_at, Source::Stream)
                .map(Notification::Presence);
        }
        if let Some(id) = strip_suffix_ignore_case(rest, ".routingstatus") {
            let user = user_from_topic(id)?;
            let body = body.ok_or_else(|| missing(topic, "eventBody"))?;
            let routing: RoutingBody<'_> = serde_json::from_str(body)?;
            let routing = routing
                .routing_status
                .ok_or_else(|| missing(topic, "eventBody.routingStatus"))?;
            return Ok(Notification::RoutingStatus(RoutingStatusEvent {
                user,
                status: routing.status.map(Cow::into_owned).unwrap_or_default(),
                start_time: routing
                    .start_time
                    .and_then(|t| EventTime::parse_rfc3339(&t).ok()),
            }));
        }
    }

    if topic.eq_ignore_ascii_case("channel.metadata") {
        let meta: MetadataBody<'_> = match body {
            Some(body) => serde_json::from_str(body)?,
            None => MetadataBody::default(),
        };
        let message = meta.message.unwrap_or_default();
        return Ok(if message.eq_ignore_ascii_case("WebSocket Heartbeat") {
            Notification::Heartbeat
        } else if message.eq_ignore_ascii_case("pong") {
            Notification::Pong
        } else {
            Notification::Metadata {
                message: message.into_owned(),
            }
        });
    }

    if topic.eq_ignore_ascii_case("v2.system.socket_closing") {
        return Ok(Notification::SocketClosing);
    }

    if strip_prefix_ignore_case(topic, "v2.system.").is_some() {
        let system: SystemBody<'_> = match body {
            Some(body) => serde_json::from_str(body)?,
            None => SystemBody::default(),
        };
        return Ok(Notification::System(SystemMessage {
            topic: topic.to_owned(),
            system_topic_type: system.system_topic_type.map(|t| {
                match t.to_ascii_lowercase().as_str() {
                    "no_longer_subscribed" => SystemTopicType::NoLongerSubscribed,
                    "subscription_changed" => SystemTopicType::SubscriptionChanged,
                    "token_revoked" => SystemTopicType::TokenRevoked,
                    _ => SystemTopicType::Other(t.into_owned()),
                }
            }),
            channel_id: system.channel_id.map(Cow::into_owned),
            reason: system.reason.map(Cow::into_owned),
            message: system.message.map(Cow::into_owned),
        }));
    }

    Ok(Notification::UnknownTopic { topic: echo(topic) })
}

/// The presence topic for a Genesys user: `v2.users.{id}.presence`.
pub fn presence_topic(user: Guid) -> String {
    format!("v2.users.{user}.presence")
}

fn user_from_topic(id: &str) -> Result<UserId> {
    Guid::parse(id)
        .map(UserId::Genesys)
        .ok_or_else(|| Error::InvalidUserId { id: echo(id) })
}

fn missing(topic: &str, field: &'static str) -> Error {
    Error::MissingField {
        topic: echo(topic),
        field,
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

fn strip_suffix_ignore_case<'a>(text: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = text.len().checked_sub(suffix.len())?;
    let tail = text.get(cut..)?;
    tail.eq_ignore_ascii_case(suffix).then(|| &text[..cut])
}
