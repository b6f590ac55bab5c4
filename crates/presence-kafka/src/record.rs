//! The Kafka record of a presence change: its JSON value ([`PresenceRecord`], schema version
//! 1, described by `docs/schema/presence-record.v1.json`), and [`build_record`], which makes
//! the whole record of a queued update (key, value, headers, timestamp) without allocating.

use std::time::Instant;

use presence_frame::{
    EventTime, GroupMask, Guid, Location, PresenceEvent, PresenceState, Source, Status, UserId,
};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use serde::{Deserialize, Serialize};

use crate::queue::{Pending, Update};

/// The version of the value's JSON schema, also sent in the [`HEADER_SCHEMA_VERSION`] header.
pub const SCHEMA_VERSION: u32 = 1;

/// [`SCHEMA_VERSION`] as the text of its header.
const SCHEMA_VERSION_TEXT: &str = "1";

/// Header holding the event time in Unix milliseconds as decimal text (on tombstones too).
pub const HEADER_EVENT_TIME: &str = "event-time-ms";

/// Header holding the schema version as decimal text (`1`).
pub const HEADER_SCHEMA_VERSION: &str = "schema-version";

/// The header naming the instance that wrote the record (see
/// [`KafkaConfig::instance`](crate::KafkaConfig::instance)), when it is named.
pub const HEADER_INSTANCE: &str = "bridge-instance";

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

    /// The event this record was made from, as far as the record tells (its status, location,
    /// groups, definition, message, event time and source): what a warm start loads back.
    /// `None` when the user id or the source cannot be read.
    pub fn to_event(&self) -> Option<PresenceEvent> {
        let user = self.user_id.parse::<UserId>().ok()?;
        let source = match self.source.as_str() {
            "stream" => Source::Stream,
            "resync" => Source::Resync,
            "relay" => Source::Relay,
            _ => return None,
        };
        let mut state = PresenceState::new(
            Status(self.status_code),
            Location(self.location_code),
            GroupMask(self.group_mask),
        );
        if let Some(id) = &self.presence_definition_id {
            state = state.with_definition_id(id);
        }
        if let Some(message) = &self.message {
            state = state.with_message(message);
        }
        Some(PresenceEvent {
            user,
            time: EventTime(self.event_time_millis),
            state,
            source,
        })
    }
}

/// The whole Kafka record of a queued update, for `topic`: the key (the user id as text), the
/// JSON value with its `receivedAt` read from `clock` (none for a tombstone), the
/// [`HEADER_EVENT_TIME`] and [`HEADER_SCHEMA_VERSION`] headers, and the event time as the
/// timestamp (broker time before 1970). Key and value are written into `buffers`; the update
/// rides along as the delivery opaque, for the delivery report.
pub(crate) fn build_record<'a>(
    topic: &'a str,
    instance: Option<&'a str>,
    record: Pending,
    clock: WallClock,
    buffers: &'a mut Buffers,
) -> BaseRecord<'a, [u8], [u8], Box<Pending>> {
    let time = record.update.time();
    record_key(&mut buffers.key, record.update.user());
    let has_value = match &record.update {
        Update::State(event) => {
            write_json(
                &mut buffers.value,
                event,
                clock.wall_time_of(record.received),
            );
            true
        }
        Update::Tombstone { .. } => false,
    };
    let mut time_text = itoa::Buffer::new();
    let mut headers = OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: HEADER_EVENT_TIME,
            value: Some(time_text.format(time.as_millis())),
        })
        .insert(Header {
            key: HEADER_SCHEMA_VERSION,
            value: Some(SCHEMA_VERSION_TEXT),
        });
    if let Some(instance) = instance {
        headers = headers.insert(Header {
            key: HEADER_INSTANCE,
            value: Some(instance),
        });
    }
    let mut base: BaseRecord<'_, [u8], [u8], Box<Pending>> =
        BaseRecord::with_opaque_to(topic, Box::new(record))
            .key(buffers.key.as_slice())
            .headers(headers);
    if has_value {
        base = base.payload(buffers.value.as_slice());
    }
    if let Some(timestamp) = record_timestamp(time) {
        base = base.timestamp(timestamp);
    }
    base
}

/// The wall clock and the monotonic clock read together, once per batch of records: a
/// record's `receivedAt` is the wall time minus how long it waited.
#[derive(Clone, Copy)]
pub(crate) struct WallClock {
    wall: EventTime,
    at: Instant,
}

impl WallClock {
    pub(crate) fn now() -> WallClock {
        WallClock {
            wall: EventTime::now(),
            at: Instant::now(),
        }
    }

    fn wall_time_of(self, instant: Instant) -> EventTime {
        let waited = self.at.saturating_duration_since(instant);
        EventTime(self.wall.as_millis() - i64::try_from(waited.as_millis()).unwrap_or(i64::MAX))
    }
}

/// The dispatcher's reused buffers (librdkafka copies key, value and headers).
#[derive(Default)]
pub(crate) struct Buffers {
    key: Vec<u8>,
    value: Vec<u8>,
}

/// Writes the record key of `user` (its GUID or decimal number: the `userId` of the value)
/// into `out`, cleared first.
pub(crate) fn record_key(out: &mut Vec<u8>, user: UserId) {
    out.clear();
    write_user_id(out, user);
}

fn write_user_id(out: &mut Vec<u8>, user: UserId) {
    out.extend_from_slice(UserKey::new(user).as_bytes());
}

/// A user's id as record keys and `userId` spell it, on the stack: a GUID as lowercase
/// hyphenated text, a relay id in decimal.
pub(crate) struct UserKey {
    bytes: [u8; 36],
    len: usize,
}

impl UserKey {
    pub(crate) fn new(user: UserId) -> UserKey {
        let mut bytes = [0u8; 36];
        let len = match user {
            UserId::Relay(n) => {
                let mut digits = itoa::Buffer::new();
                let text = digits.format(n).as_bytes();
                bytes[..text.len()].copy_from_slice(text);
                text.len()
            }
            UserId::Genesys(Guid(v)) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let mut at = 0;
                for nibble in (0..32).rev() {
                    if matches!(nibble, 23 | 19 | 15 | 11) {
                        bytes[at] = b'-';
                        at += 1;
                    }
                    bytes[at] = HEX[((v >> (nibble * 4)) & 0xf) as usize];
                    at += 1;
                }
                at
            }
        };
        UserKey { bytes, len }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Writes the JSON value of `event`, received at `received_at`, into `out` (cleared first):
/// byte for byte what `serde_json` makes of [`PresenceRecord::new`] (a test holds the two
/// together), without building the record's strings first. The dispatcher's hot path.
fn write_json(out: &mut Vec<u8>, event: &PresenceEvent, received_at: EventTime) {
    let state = &event.state;
    let mut numbers = itoa::Buffer::new();
    out.clear();
    out.extend_from_slice(b"{\"schemaVersion\":");
    out.extend_from_slice(numbers.format(SCHEMA_VERSION).as_bytes());
    out.extend_from_slice(b",\"userId\":\"");
    write_user_id(out, event.user);
    out.extend_from_slice(b"\",\"status\":");
    match state.status.name() {
        Some(name) => write_string(out, name),
        None => write_unknown(out, state.status.code()),
    }
    out.extend_from_slice(b",\"statusCode\":");
    out.extend_from_slice(numbers.format(state.status.code()).as_bytes());
    out.extend_from_slice(b",\"location\":");
    match state.location.name() {
        Some(name) => write_string(out, name),
        None => write_unknown(out, state.location.code()),
    }
    out.extend_from_slice(b",\"locationCode\":");
    out.extend_from_slice(numbers.format(state.location.code()).as_bytes());
    out.extend_from_slice(b",\"groupMask\":");
    out.extend_from_slice(numbers.format(state.groups.0).as_bytes());
    out.extend_from_slice(b",\"presenceDefinitionId\":");
    write_optional_string(out, state.definition_id.as_deref());
    out.extend_from_slice(b",\"message\":");
    write_optional_string(out, state.message.as_deref());
    out.extend_from_slice(b",\"eventTime\":\"");
    write_rfc3339(out, event.time);
    out.extend_from_slice(b"\",\"eventTimeMillis\":");
    out.extend_from_slice(numbers.format(event.time.as_millis()).as_bytes());
    out.extend_from_slice(b",\"source\":");
    write_string(out, event.source.as_str());
    out.extend_from_slice(b",\"receivedAt\":\"");
    write_rfc3339(out, received_at);
    out.extend_from_slice(b"\",\"receivedAtMillis\":");
    out.extend_from_slice(numbers.format(received_at.as_millis()).as_bytes());
    out.push(b'}');
}

fn write_unknown(out: &mut Vec<u8>, code: u8) {
    out.extend_from_slice(b"\"unknown(");
    out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    out.extend_from_slice(b")\"");
}

fn write_optional_string(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => write_string(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string, escaped as `serde_json` escapes it: `"`, `\` and the control characters
/// (short forms where JSON has them, `\u00XX` otherwise); everything else as it is.
fn write_string(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            out.extend_from_slice(b"00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Milliseconds of 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z: the range of
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
const RFC3339_RANGE: std::ops::Range<i64> = -62_167_219_200_000..253_402_300_800_000;

/// [`EventTime::to_rfc3339`] (UTC, milliseconds, `Z`) without the allocation and the
/// calendar library, for four-digit years; other times go the slow way.
fn write_rfc3339(out: &mut Vec<u8>, time: EventTime) {
    let millis = time.as_millis();
    if !RFC3339_RANGE.contains(&millis) {
        out.extend_from_slice(time.to_rfc3339().as_bytes());
        return;
    }
    let (days, ms_of_day) = (millis.div_euclid(86_400_000), millis.rem_euclid(86_400_000));
    let (year, month, day) = civil_from_days(days);
    let secs = ms_of_day / 1000;
    let digits = |out: &mut Vec<u8>, value: i64, width: u32| {
        for k in (0..width).rev() {
            out.push(b'0' + ((value / 10_i64.pow(k)) % 10) as u8);
        }
    };
    digits(out, year, 4);
    out.push(b'-');
    digits(out, month, 2);
    out.push(b'-');
    digits(out, day, 2);
    out.push(b'T');
    digits(out, secs / 3600, 2);
    out.push(b':');
    digits(out, secs / 60 % 60, 2);
    out.push(b':');
    digits(out, secs % 60, 2);
    out.push(b'.');
    digits(out, ms_of_day % 1000, 3);
    out.push(b'Z');
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01), after Howard
/// Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The Kafka record timestamp for an event time: the time itself, or `None` (broker time) for
/// a time before 1970, which Kafka cannot carry.
fn record_timestamp(time: EventTime) -> Option<i64> {
    (time.as_millis() >= 0).then_some(time.as_millis())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use presence_frame::{GroupMask, Location, PresenceState, Source, Status};
    use proptest::prelude::*;

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
    fn a_record_has_key_value_headers_and_timestamp() {
        use rdkafka::message::Headers;
        let event = PresenceEvent {
            user: UserId::Relay(42),
            time: EventTime(1_764_320_597_067),
            state: PresenceState::new(Status::ON_QUEUE, Location::DESK, GroupMask(5)),
            source: Source::Relay,
        };
        let received = Instant::now();
        let clock = WallClock {
            wall: EventTime(1_764_320_597_100),
            at: received,
        };
        let mut buffers = Buffers::default();
        let pending = |update| Pending {
            seq: 1,
            update,
            received,
        };
        let record = build_record(
            "t",
            Some("bridge-1"),
            pending(Update::State(event.clone())),
            clock,
            &mut buffers,
        );
        assert_eq!(record.topic, "t");
        assert_eq!(record.key, Some(&b"42"[..]));
        let value: PresenceRecord = serde_json::from_slice(record.payload.unwrap()).unwrap();
        assert_eq!(
            value,
            PresenceRecord::new(&event, EventTime(1_764_320_597_100))
        );
        assert_eq!(record.timestamp, Some(1_764_320_597_067));
        let headers = record.headers.as_ref().unwrap();
        let header = |i: usize| {
            let header = headers.get(i);
            (header.key, header.value.unwrap().to_vec())
        };
        assert_eq!(header(0), (HEADER_EVENT_TIME, b"1764320597067".to_vec()));
        assert_eq!(header(1), (HEADER_SCHEMA_VERSION, b"1".to_vec()));
        assert_eq!(header(2), (HEADER_INSTANCE, b"bridge-1".to_vec()));
        drop(record);

        let tombstone = build_record(
            "t",
            None,
            pending(Update::Tombstone {
                user: UserId::Relay(7),
                time: EventTime(-5),
            }),
            clock,
            &mut buffers,
        );
        assert_eq!(tombstone.key, Some(&b"7"[..]));
        assert_eq!(tombstone.payload, None, "a tombstone has no value");
        assert_eq!(tombstone.timestamp, None, "broker time before 1970");
        assert_eq!(tombstone.headers.as_ref().unwrap().count(), 2);
    }

    #[test]
    fn timestamps_before_1970_are_left_to_the_broker() {
        assert_eq!(record_timestamp(EventTime(-1)), None);
        assert_eq!(record_timestamp(EventTime(7)), Some(7));
    }

    fn serde_json_of(event: &PresenceEvent, received_at: EventTime) -> String {
        String::from_utf8(PresenceRecord::new(event, received_at).to_json()).unwrap()
    }

    fn fast_json_of(event: &PresenceEvent, received_at: EventTime) -> String {
        let mut out = b"left over".to_vec();
        write_json(&mut out, event, received_at);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_fast_encoder_writes_what_serde_writes_at_the_edges() {
        let times = [
            i64::MIN,
            RFC3339_RANGE.start - 1,
            RFC3339_RANGE.start,
            -86_400_001,
            -1,
            0,
            951_782_400_000, // 2000-02-29
            1_764_320_597_067,
            4_107_542_399_999, // 2100-02-28T23:59:59.999
            RFC3339_RANGE.end - 1,
            RFC3339_RANGE.end,
            i64::MAX,
        ];
        for time in times {
            let event = PresenceEvent {
                user: UserId::Genesys(Guid(u128::MAX - 0xfedc_ba98)),
                time: EventTime(time),
                state: PresenceState::new(Status(200), Location::REMOTE, GroupMask(u64::MAX))
                    .with_message("tab\there \"quoted\" back\\slash \u{1} \u{7f} é 😀"),
                source: Source::Stream,
            };
            assert_eq!(
                fast_json_of(&event, EventTime(time)),
                serde_json_of(&event, EventTime(time)),
                "time {time}"
            );
        }
    }

    #[test]
    fn the_schema_version_header_is_the_schema_version() {
        assert_eq!(SCHEMA_VERSION_TEXT, SCHEMA_VERSION.to_string());
    }

    #[test]
    fn keys_are_the_user_ids_text() {
        let mut key = b"old".to_vec();
        for user in [
            UserId::Relay(0),
            UserId::Relay(u32::MAX),
            UserId::Genesys(Guid(0x1234)),
            UserId::Genesys(Guid(u128::MAX)),
        ] {
            record_key(&mut key, user);
            assert_eq!(key, user.to_string().as_bytes());
        }
    }

    fn any_event() -> impl Strategy<Value = PresenceEvent> {
        (
            prop_oneof![
                any::<u32>().prop_map(UserId::Relay),
                any::<u128>().prop_map(|v| UserId::Genesys(Guid(v))),
            ],
            prop_oneof![
                any::<i64>(),
                RFC3339_RANGE,
                0..4_102_444_800_000_i64 // 1970 to 2100
            ],
            any::<(u8, u8, u64)>(),
            proptest::option::of(any::<String>()),
            proptest::option::of("[0-9a-f-]{0,36}"),
            prop_oneof![
                Just(Source::Stream),
                Just(Source::Resync),
                Just(Source::Relay)
            ],
        )
            .prop_map(
                |(user, time, (status, location, groups), message, definition, source)| {
                    let mut state =
                        PresenceState::new(Status(status), Location(location), GroupMask(groups));
                    if let Some(message) = message {
                        state = state.with_message(message.as_str());
                    }
                    if let Some(definition) = definition {
                        state = state.with_definition_id(definition.as_str());
                    }
                    PresenceEvent {
                        user,
                        time: EventTime(time),
                        state,
                        source,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn the_fast_encoder_writes_what_serde_writes(
            event in any_event(),
            received in 0..4_102_444_800_000_i64,
        ) {
            let fast = fast_json_of(&event, EventTime(received));
            prop_assert_eq!(&fast, &serde_json_of(&event, EventTime(received)));
            let parsed: PresenceRecord = serde_json::from_str(&fast).unwrap();
            prop_assert_eq!(parsed, PresenceRecord::new(&event, EventTime(received)));
        }
    }
}
