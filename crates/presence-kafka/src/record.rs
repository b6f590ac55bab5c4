//! The Kafka record of a presence change: its JSON value (schema version 1, described by
//! `docs/schema/presence-record.v1.json`), key and headers.

use presence_frame::{EventTime, PresenceEvent};
use serde::{Deserialize, Serialize};

/// The version of the value's JSON schema, also sent in the [`HEADER_SCHEMA_VERSION`] header.
pub const SCHEMA_VERSION: u32 = 1;

/// Header holding the event time in Unix milliseconds as decimal text (on tombstones too).
pub const HEADER_EVENT_TIME: &str = "event-time-ms";

/// Header holding the schema version as decimal text (`1`).
pub const HEADER_SCHEMA_VERSION: &str = "schema-version";

/// The JSON value of a presence record (schema version 1).
///
/// The record's key is [`user_id`](PresenceRecord::user_id) (the GUID, or the relay's decimal
/// number), its timestamp the event time. An expired user gets a tombstone instead: the same
/// key with a null value. Consumers should ignore fields they do not know: later versions may
/// add some (and bump [`SCHEMA_VERSION`] only for incompatible changes).
///
/// ```
/// use presence_frame::{EventTime, GroupMask, Location, PresenceEvent, PresenceState, Source,
///                      Status, UserId};
/// use presence_kafka::PresenceRecord;
///
/// let event = PresenceEvent {
///     user: UserId::Relay(42),
///     time: EventTime(1_764_320_597_067),
///     state: PresenceState::new(Status::ON_QUEUE, Location::DESK, GroupMask(5)),
///     source: Source::Relay,
/// };
/// let record = PresenceRecord::new(&event, EventTime(1_764_320_597_070));
/// let json = serde_json::to_string(&record)?;
/// assert!(json.contains(r#""userId":"42","status":"On Queue","statusCode":8"#));
/// assert_eq!(serde_json::from_str::<PresenceRecord>(&json)?, record);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceRecord {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The user id: a Genesys GUID (lowercase, hyphenated) or a relay user's decimal number.
    pub user_id: String,
    /// The status name (`Available`, `On Queue`, ...; `unknown(n)` for a code outside the
    /// table).
    pub status: String,
    /// The status code (0 Offline ... 9 Idle, 255 unknown).
    pub status_code: u8,
    /// The location name (`Unknown`, `Desk`, `Remote`; `unknown(n)` outside the table).
    pub location: String,
    /// The location code (0 unknown, 1 Desk, 2 Remote).
    pub location_code: u8,
    /// The group bitmask, an unsigned 64-bit integer (bit n = group n). Values above 2^53
    /// need a 64-bit integer parser (JavaScript's `Number` would round them).
    pub group_mask: u64,
    /// The Genesys presence definition id, or null.
    pub presence_definition_id: Option<String>,
    /// The user's presence message, or null.
    pub message: Option<String>,
    /// When the presence took effect at the source, RFC 3339 UTC with milliseconds.
    pub event_time: String,
    /// The same instant in Unix milliseconds (also the record's timestamp).
    pub event_time_millis: i64,
    /// How the bridge learned it: `stream`, `resync` or `relay`.
    pub source: String,
    /// When the bridge received it, RFC 3339 UTC with milliseconds.
    pub received_at: String,
    /// The same instant in Unix milliseconds.
    pub received_at_millis: i64,
}

impl PresenceRecord {
    /// The record of an event the bridge received at `received_at` (wall clock).
    pub fn new(event: &PresenceEvent, received_at: EventTime) -> PresenceRecord {
        let state = &event.state;
        PresenceRecord {
            schema_version: SCHEMA_VERSION,
            user_id: event.user.to_string(),
            status: state.status.to_string(),
            status_code: state.status.code(),
            location: state.location.to_string(),
            location_code: state.location.code(),
            group_mask: state.groups.0,
            presence_definition_id: state.definition_id.as_deref().map(str::to_owned),
            message: state.message.as_deref().map(str::to_owned),
            event_time: event.time.to_rfc3339(),
            event_time_millis: event.time.as_millis(),
            source: event.source.as_str().to_owned(),
            received_at: received_at.to_rfc3339(),
            received_at_millis: received_at.as_millis(),
        }
    }

    /// The JSON value, as sent.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a struct of strings and integers into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The Kafka record timestamp for an event time: the time itself, or `None` (broker time) for
/// a time before 1970, which Kafka cannot carry.
pub(crate) fn record_timestamp(time: EventTime) -> Option<i64> {
    (time.as_millis() >= 0).then_some(time.as_millis())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use presence_frame::{GroupMask, Guid, Location, PresenceState, Source, Status, UserId};

    #[test]
    fn unknown_codes_are_kept_by_name() {
        let event = PresenceEvent {
            user: UserId::Genesys(Guid(0x1234)),
            time: EventTime(0),
            state: PresenceState::new(Status(77), Location(9), GroupMask(u64::MAX))
                .with_message("at lunch")
                .with_definition_id("6a3af858-942f-489d-9700-5f9bcdcdae9b"),
            source: Source::Resync,
        };
        let record = PresenceRecord::new(&event, EventTime(5));
        assert_eq!(record.user_id, "00000000-0000-0000-0000-000000001234");
        assert_eq!(record.status, "unknown(77)");
        assert_eq!(record.location, "unknown(9)");
        assert_eq!(record.group_mask, u64::MAX);
        assert_eq!(record.message.as_deref(), Some("at lunch"));
        assert_eq!(record.event_time, "1970-01-01T00:00:00.000Z");
        assert_eq!(record.source, "resync");
        let parsed: PresenceRecord = serde_json::from_slice(&record.to_json()).unwrap();
        assert_eq!(parsed, record);
    }

    #[test]
    fn timestamps_before_1970_are_left_to_the_broker() {
        assert_eq!(record_timestamp(EventTime(-1)), None);
        assert_eq!(record_timestamp(EventTime(7)), Some(7));
    }
}
