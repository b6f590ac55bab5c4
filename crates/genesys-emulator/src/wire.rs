//! The JSON the emulator sends: notifications, presence objects, users, errors, paging.
//!
//! Hot paths (notifications) are formatted by hand; the rest goes through `serde_json`.

use std::fmt::Write as _;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use presence_frame::{EventTime, Guid, Status};
use serde_json::{Value, json};

use crate::config::Spelling;
use crate::rng::Rng;
use crate::workload::{MESSAGES, UserPresence, World};

/// Each message of [`MESSAGES`] as a JSON string literal (quoted and escaped).
static MESSAGES_JSON: LazyLock<Vec<String>> = LazyLock::new(|| {
    MESSAGES
        .iter()
        .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "\"\"".to_owned()))
        .collect()
});

const CAMEL: [&str; 10] = [
    "Offline",
    "Available",
    "Busy",
    "Away",
    "Break",
    "Meal",
    "Meeting",
    "Training",
    "OnQueue",
    "Idle",
];

/// The `systemPresence` of `status` in `spelling`; `vary` picks the spelling for
/// [`Spelling::Varied`].
pub(crate) fn spell(status: Status, spelling: Spelling, vary: u64) -> &'static str {
    let spelling = match spelling {
        Spelling::Varied => match vary % 3 {
            0 => Spelling::Upper,
            1 => Spelling::Title,
            _ => Spelling::Camel,
        },
        other => other,
    };
    let fallback = "OFFLINE";
    match spelling {
        Spelling::Title => status.name().unwrap_or(fallback),
        Spelling::Camel => CAMEL
            .get(usize::from(status.code()))
            .copied()
            .unwrap_or(fallback),
        _ => status.system_presence().unwrap_or(fallback),
    }
}

/// The text of a presence message.
pub(crate) fn message_text(index: u8) -> &'static str {
    MESSAGES.get(usize::from(index)).copied().unwrap_or("")
}

fn message_json(index: u8) -> &'static str {
    MESSAGES_JSON
        .get(usize::from(index))
        .map_or("\"\"", String::as_str)
}

/// What varies a [`Spelling::Varied`] spelling for one user's state.
pub(crate) fn vary_key(user: u32, presence: &UserPresence) -> u64 {
    u64::from(user) ^ presence.modified_ms as u64
}

/// A presence notification exactly as in genesys-api.md.
pub(crate) fn presence_notification(
    world: &World,
    user: u32,
    presence: &UserPresence,
    spelling: Spelling,
    with_modified_date: bool,
    correlation: Guid,
) -> String {
    let guid = world
        .users
        .get(user as usize)
        .map(|u| u.guid)
        .unwrap_or(Guid(0));
    let definition = world
        .definitions
        .get(usize::from(presence.definition))
        .map_or(Guid(0), |d| d.guid);
    let mut out = String::with_capacity(400);
    let _ = write!(
        out,
        r#"{{"topicName":"v2.users.{guid}.presence","version":"2","eventBody":{{"source":"PURECLOUD","presenceDefinition":{{"id":"{definition}","systemPresence":"{}"}},"primary":true,"message":{}"#,
        spell(presence.status, spelling, vary_key(user, presence)),
        message_json(presence.message),
    );
    if with_modified_date {
        let _ = write!(
            out,
            r#","modifiedDate":"{}""#,
            EventTime(presence.modified_ms).to_rfc3339()
        );
    }
    let _ = write!(
        out,
        r#"}},"metadata":{{"CorrelationId":"{correlation}"}}}}"#
    );
    out
}

/// The server's heartbeat.
pub(crate) const HEARTBEAT: &str =
    r#"{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}"#;

/// The answer to `{"message":"ping"}`.
pub(crate) const PONG: &str = r#"{"topicName":"channel.metadata","eventBody":{"message":"pong"}}"#;

/// The maintenance warning.
pub(crate) fn socket_closing(correlation: Guid) -> String {
    format!(
        r#"{{"topicName":"v2.system.socket_closing","version":"2","eventBody":{{"message":"The socket will close soon: connect a new one"}},"metadata":{{"CorrelationId":"{correlation}"}}}}"#
    )
}

/// The system message telling a channel it is gone. The topic name is the emulator's
/// choice (the real one is unconfirmed); the body follows the SDKs' `SystemMessageSystemMessage`.
pub(crate) fn no_longer_subscribed(channel_id: &str, correlation: Guid) -> String {
    json!({
        "topicName": "v2.system.no_longer_subscribed",
        "version": "2",
        "eventBody": {
            "channelId": channel_id,
            "systemTopicType": "no_longer_subscribed",
            "reason": "another_channel_subscribed",
            "message": "This channel is no longer subscribed: create a new channel",
        },
        "metadata": {"CorrelationId": correlation.to_string()},
    })
    .to_string()
}

/// What a socket of a channel that no longer exists is told, without a `topicName` (as
/// koodaamo/genesys-notifications reports it): `{"result":"404","message":...}`.
pub(crate) fn channel_not_found(channel_id: &str) -> String {
    json!({
        "result": "404",
        "message": format!("Channel {channel_id} not found"),
    })
    .to_string()
}

/// A `channel.metadata` message padded to exactly `bytes` bytes (when `bytes` is at least
/// the size of the empty message).
pub(crate) fn oversized(bytes: usize) -> String {
    const HEAD: &str = r#"{"topicName":"channel.metadata","eventBody":{"message":""#;
    const TAIL: &str = r#""}}"#;
    let pad = bytes.saturating_sub(HEAD.len() + TAIL.len());
    let mut out = String::with_capacity(HEAD.len() + pad + TAIL.len());
    out.push_str(HEAD);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str(TAIL);
    out
}

/// A user's presence object, as in `expand=presence` and (with `userId`) bulk results.
pub(crate) fn presence_object(
    world: &World,
    user: u32,
    presence: &UserPresence,
    spelling: Spelling,
    with_user_id: bool,
) -> Value {
    let definition = world
        .definitions
        .get(usize::from(presence.definition))
        .map_or(Guid(0), |d| d.guid);
    let mut object = json!({
        "presenceDefinition": {
            "id": definition.to_string(),
            "systemPresence": spell(presence.status, spelling, vary_key(user, presence)),
            "selfUri": format!("/api/v2/presence/definitions/{definition}"),
        },
        "message": message_text(presence.message),
        "modifiedDate": EventTime(presence.modified_ms).to_rfc3339(),
        "source": "PURECLOUD",
        "primary": true,
    });
    if with_user_id
        && let (Some(map), Some(info)) = (object.as_object_mut(), world.users.get(user as usize))
    {
        map.insert("userId".to_owned(), Value::String(info.guid.to_string()));
    }
    object
}

/// A user object as `/api/v2/users` returns it, optionally with `presence` and `groups`.
/// The reference shape of [`write_user_object`], which the listings use.
#[cfg(test)]
pub(crate) fn user_object(
    world: &World,
    user: u32,
    presence: Option<Value>,
    groups: Option<u64>,
    state: &str,
) -> Value {
    let Some(info) = world.users.get(user as usize) else {
        return Value::Null;
    };
    let guid = info.guid;
    let mut object = json!({
        "id": guid.to_string(),
        "name": format!("Emulated User {user}"),
        "division": {
            "id": world.division.to_string(),
            "name": "Home",
            "selfUri": format!("/api/v2/authorization/divisions/{}", world.division),
        },
        "email": format!("user{user}@emulator.invalid"),
        "username": format!("user{user}@emulator.invalid"),
        "state": state,
        "version": 1,
        "selfUri": format!("/api/v2/users/{guid}"),
    });
    if let Some(map) = object.as_object_mut() {
        if let Some(presence) = presence {
            map.insert("presence".to_owned(), presence);
        }
        if let Some(mask) = groups {
            let groups: Vec<Value> = world
                .groups
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, g)| json!({"id": g.guid.to_string(), "selfUri": format!("/api/v2/groups/{}", g.guid)}))
                .collect();
            map.insert("groups".to_owned(), Value::Array(groups));
        }
    }
    object
}

/// Appends `user`'s presence object, as [`presence_object`] builds it, to `out`: the
/// listings write thousands of them, so by hand.
pub(crate) fn write_presence_object(
    out: &mut String,
    world: &World,
    user: u32,
    presence: &UserPresence,
    spelling: Spelling,
) {
    let definition = world
        .definitions
        .get(usize::from(presence.definition))
        .map_or(Guid(0), |d| d.guid);
    let _ = write!(
        out,
        r#"{{"presenceDefinition":{{"id":"{definition}","systemPresence":"{}","selfUri":"/api/v2/presence/definitions/{definition}"}},"message":{},"modifiedDate":"{}","source":"PURECLOUD","primary":true}}"#,
        spell(presence.status, spelling, vary_key(user, presence)),
        message_json(presence.message),
        EventTime(presence.modified_ms).to_rfc3339(),
    );
}

/// Appends a user object as `/api/v2/users` returns it to `out` (`null` for an unknown
/// user), with its presence and groups when given; `state` is one of the fixed state
/// names. By hand, for the listings: a page holds up to 500 users.
pub(crate) fn write_user_object(
    out: &mut String,
    world: &World,
    user: u32,
    presence: Option<(&UserPresence, Spelling)>,
    groups: Option<u64>,
    state: &str,
) {
    let Some(info) = world.users.get(user as usize) else {
        out.push_str("null");
        return;
    };
    let guid = info.guid;
    let division = world.division;
    let _ = write!(
        out,
        r#"{{"id":"{guid}","name":"Emulated User {user}","division":{{"id":"{division}","name":"Home","selfUri":"/api/v2/authorization/divisions/{division}"}},"email":"user{user}@emulator.invalid","username":"user{user}@emulator.invalid","state":"{state}","version":1,"selfUri":"/api/v2/users/{guid}""#,
    );
    if let Some((presence, spelling)) = presence {
        out.push_str(r#","presence":"#);
        write_presence_object(out, world, user, presence, spelling);
    }
    if let Some(mask) = groups {
        out.push_str(r#","groups":["#);
        let mut first = true;
        for (_, group) in world
            .groups
            .iter()
            .enumerate()
            .filter(|(i, _)| *i < 64 && mask & (1 << i) != 0)
        {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(
                out,
                r#"{{"id":"{0}","selfUri":"/api/v2/groups/{0}"}}"#,
                group.guid
            );
        }
        out.push(']');
    }
    out.push('}');
}

/// A fresh random id for `contextId`s.
fn context_id() -> String {
    // Not seeded: context ids are never compared.
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Rng::new(n, 0xc0_47e7).guid().to_string()
}

/// A Genesys-style error body and status.
pub(crate) fn api_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({
        "message": message.into(),
        "code": code,
        "status": status.as_u16(),
        "contextId": context_id(),
        "details": [],
        "errors": [],
    });
    (status, axum::Json(body)).into_response()
}

/// An error answer that is cheap to pass around until it becomes a [`Response`].
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad.request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = api_error(self.status, self.code, self.message);
        if self.status == StatusCode::UPGRADE_REQUIRED {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

/// 400 with `code` `bad.request`.
pub(crate) fn bad_request(message: impl Into<String>) -> Response {
    api_error(StatusCode::BAD_REQUEST, "bad.request", message)
}

/// 404 with `code` `not.found`.
pub(crate) fn not_found(message: impl Into<String>) -> Response {
    api_error(StatusCode::NOT_FOUND, "not.found", message)
}

/// The documented 429 body and `Retry-After` header.
pub(crate) fn too_many_requests(retry_after_secs: u64) -> Response {
    let mut response = api_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too.many.requests.retry.after",
        format!(
            "Rate limit exceeded the maximum. Retry the request in [{retry_after_secs}] seconds"
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// The range of entity indices on page `page_number` (from 1) of `page_size` of a listing
/// of `total` (empty past the end).
pub(crate) fn page_range(page_size: u32, page_number: u32, total: usize) -> std::ops::Range<usize> {
    let size = page_size as usize;
    let start = (page_number as usize)
        .saturating_sub(1)
        .saturating_mul(size)
        .min(total);
    start..start.saturating_add(size).min(total)
}

/// A JSON answer from text already written.
pub(crate) fn json_text(text: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        text,
    )
        .into_response()
}

/// A page of a paged listing: the Genesys page fields around `entities`.
pub(crate) struct Page<'a> {
    pub(crate) path: &'a str,
    pub(crate) page_size: u32,
    pub(crate) page_number: u32,
    pub(crate) total: usize,
    /// Extra query parameters kept in every page URI (already encoded `k=v` pairs).
    pub(crate) keep: &'a [String],
}

impl Page<'_> {
    pub(crate) fn page_count(&self) -> u32 {
        let size = self.page_size.max(1) as usize;
        self.total.div_ceil(size) as u32
    }

    /// The range of entity indices on this page (empty past the end).
    pub(crate) fn range(&self) -> std::ops::Range<usize> {
        page_range(self.page_size, self.page_number, self.total)
    }

    fn uri(&self, page_number: u32) -> String {
        let mut uri = format!(
            "{}?pageSize={}&pageNumber={page_number}",
            self.path, self.page_size
        );
        for kv in self.keep {
            uri.push('&');
            uri.push_str(kv);
        }
        uri
    }

    /// The page object around `entities`, the JSON text of the entities separated by commas
    /// (no brackets): what [`to_json`](Self::to_json) gives, written without building it.
    pub(crate) fn to_json_text(&self, entities: &str) -> String {
        let count = self.page_count();
        let uri = |n: u32| serde_json::to_string(&self.uri(n)).unwrap_or_else(|_| "\"\"".into());
        let mut out = String::with_capacity(entities.len() + 512);
        out.push_str(r#"{"entities":["#);
        out.push_str(entities);
        let _ = write!(
            out,
            r#"],"pageSize":{},"pageNumber":{},"total":{},"pageCount":{count},"selfUri":{},"firstUri":{},"lastUri":{}"#,
            self.page_size,
            self.page_number,
            self.total,
            uri(self.page_number),
            uri(1),
            uri(count.max(1)),
        );
        if self.page_number < count {
            let _ = write!(out, r#","nextUri":{}"#, uri(self.page_number + 1));
        }
        if self.page_number > 1 {
            let _ = write!(
                out,
                r#","previousUri":{}"#,
                uri((self.page_number - 1).min(count.max(1)))
            );
        }
        out.push('}');
        out
    }

    /// The page object with `entities`.
    pub(crate) fn to_json(&self, entities: Vec<Value>) -> Value {
        let count = self.page_count();
        let mut object = json!({
            "entities": entities,
            "pageSize": self.page_size,
            "pageNumber": self.page_number,
            "total": self.total,
            "pageCount": count,
            "selfUri": self.uri(self.page_number),
            "firstUri": self.uri(1),
            "lastUri": self.uri(count.max(1)),
        });
        if let Some(map) = object.as_object_mut() {
            if self.page_number < count {
                map.insert(
                    "nextUri".to_owned(),
                    Value::String(self.uri(self.page_number + 1)),
                );
            }
            if self.page_number > 1 {
                map.insert(
                    "previousUri".to_owned(),
                    Value::String(self.uri((self.page_number - 1).min(count.max(1)))),
                );
            }
        }
        object
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EmulatorConfig;
    use presence_frame::{EventTime, Notification, decode_notification};

    #[test]
    fn spellings() {
        assert_eq!(spell(Status::ON_QUEUE, Spelling::Upper, 0), "ON_QUEUE");
        assert_eq!(spell(Status::ON_QUEUE, Spelling::Title, 0), "On Queue");
        assert_eq!(spell(Status::ON_QUEUE, Spelling::Camel, 0), "OnQueue");
        let varied: std::collections::HashSet<_> = (0..3)
            .map(|k| spell(Status::ON_QUEUE, Spelling::Varied, k))
            .collect();
        assert_eq!(varied.len(), 3);
    }

    #[test]
    fn notifications_decode_with_every_message() {
        let config = EmulatorConfig::default().users(3);
        let world = World::build(&config);
        for message in 0..MESSAGES.len() as u8 {
            let presence = UserPresence {
                status: Status::AWAY,
                definition: 3,
                message,
                modified_ms: 1_764_322_997_067,
            };
            for with_date in [true, false] {
                let text = presence_notification(
                    &world,
                    1,
                    &presence,
                    Spelling::Upper,
                    with_date,
                    Guid(5),
                );
                match decode_notification(text.as_bytes(), EventTime(42)) {
                    Ok(Notification::Presence(event)) => {
                        assert_eq!(event.state.status, Status::AWAY);
                        assert_eq!(
                            event.state.message.as_deref().unwrap_or(""),
                            MESSAGES[message as usize]
                        );
                        let want = if with_date { 1_764_322_997_067 } else { 42 };
                        assert_eq!(event.time, EventTime(want));
                    }
                    other => panic!("{text}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn oversized_is_exact_and_valid() {
        let text = oversized(10_000);
        assert_eq!(text.len(), 10_000);
        assert!(serde_json::from_str::<Value>(&text).is_ok());
    }

    #[test]
    fn written_users_are_the_reference_objects() {
        let config = EmulatorConfig::default().users(40).groups(8);
        let world = World::build(&config);
        let presence = world.initial_presence(config.seed, 1_764_322_997_067);
        let mut checked_groups = false;
        for user in 0..41u32 {
            for message in [0, 2, 4, 5, 6, 7] {
                let state = presence
                    .get(user as usize)
                    .map(|p| UserPresence { message, ..*p });
                let groups = world.users.get(user as usize).map(|u| u.groups);
                checked_groups |= groups.is_some_and(|g| g.count_ones() > 1);
                for spelling in [Spelling::Title, Spelling::Varied] {
                    let mut text = String::new();
                    write_user_object(
                        &mut text,
                        &world,
                        user,
                        state.as_ref().map(|p| (p, spelling)),
                        groups,
                        "active",
                    );
                    let reference = user_object(
                        &world,
                        user,
                        state
                            .as_ref()
                            .map(|p| presence_object(&world, user, p, spelling, false)),
                        groups,
                        "active",
                    );
                    let written: Value = serde_json::from_str(&text).expect(&text);
                    assert_eq!(written, reference, "{text}");
                }
            }
        }
        assert!(checked_groups);
        let mut text = String::new();
        write_user_object(&mut text, &world, 3, None, None, "inactive");
        let reference = user_object(&world, 3, None, None, "inactive");
        assert_eq!(serde_json::from_str::<Value>(&text).ok(), Some(reference));
    }

    #[test]
    fn written_pages_are_the_reference_pages() {
        let keep = [
            "expand=presence%2Cgroups".to_owned(),
            "state=active".to_owned(),
        ];
        for (page_number, total) in [(1, 0), (1, 25), (2, 25), (3, 25), (9, 25)] {
            let page = Page {
                path: "/api/v2/users",
                page_size: 10,
                page_number,
                total,
                keep: &keep,
            };
            let entities = vec![json!({"id": "a"}), json!({"id": "b\"c"})];
            let text: Vec<String> = entities.iter().map(Value::to_string).collect();
            let written: Value =
                serde_json::from_str(&page.to_json_text(&text.join(","))).expect("valid JSON");
            assert_eq!(written, page.to_json(entities));
        }
    }

    #[test]
    fn page_fields() {
        let keep = ["expand=presence".to_owned()];
        let page = Page {
            path: "/api/v2/users",
            page_size: 10,
            page_number: 3,
            total: 25,
            keep: &keep,
        };
        assert_eq!(page.range(), 20..25);
        let json = page.to_json(vec![]);
        assert_eq!(json["pageCount"], 3);
        assert!(json.get("nextUri").is_none());
        assert_eq!(
            json["previousUri"],
            "/api/v2/users?pageSize=10&pageNumber=2&expand=presence"
        );
        let first = Page {
            page_number: 1,
            ..page
        };
        assert_eq!(
            first.to_json(vec![])["nextUri"],
            "/api/v2/users?pageSize=10&pageNumber=2&expand=presence"
        );
    }
}
