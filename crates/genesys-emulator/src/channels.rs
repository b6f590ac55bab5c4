//! Notification channels and their topic subscriptions: the
//! `/api/v2/notifications/channels` endpoints (the 20-channel and 1,000-topic rules, topic
//! parsing, a subscription extending the channel's life), and removing or closing channels
//! (`no_longer_subscribed`, expiry). The table they work on is `channel_table.rs`.

use std::collections::HashSet;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use presence_frame::Guid;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::channel_table::{Channel, Topic};
use crate::config::ChannelLimitPolicy;
use crate::control::Control;
use crate::error::{Error, Result};
use crate::fault::FaultTarget;
use crate::rest::Query;
use crate::rng::Rng;
use crate::state::Shared;
use crate::tokens::Caller;
use crate::wire;
use crate::workload::World;

/// Longest combined topic (`v2.users.{id}?presence&routingStatus`) accepted.
const MAX_COMBINED_TOPIC_LEN: usize = 200;

/// Why a topic was not granted.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Malformed or unsupported: a bad request (400 without `ignoreErrors`).
    Malformed(String),
    /// An unknown user, or one whose topics are refused: a permission failure (403 without
    /// `ignoreErrors`).
    Refused(String),
}

impl Refusal {
    fn reason(&self) -> &str {
        match self {
            Refusal::Malformed(r) | Refusal::Refused(r) => r,
        }
    }
}

/// The user whose presence a topic delivers (`None` for other topics of a user), or why
/// it is not granted.
fn parse_topic(
    world: &World,
    refused: &dyn Fn(u32) -> bool,
    name: &str,
) -> std::result::Result<Option<u32>, Refusal> {
    let malformed = |why: &str| Err(Refusal::Malformed(why.to_owned()));
    let lower = name.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("v2.users.") else {
        return malformed("Only v2.users topics are supported by the emulator");
    };
    let (id, presence) = if let Some((id, parts)) = rest.split_once('?') {
        if name.len() > MAX_COMBINED_TOPIC_LEN {
            return malformed(&format!(
                "Combined topic is longer than {MAX_COMBINED_TOPIC_LEN} characters"
            ));
        }
        let parts: Vec<&str> = parts.split('&').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return malformed("Malformed combined topic");
        }
        (id, parts.contains(&"presence"))
    } else {
        match rest.split_once('.') {
            Some((id, suffix)) if !suffix.is_empty() && !suffix.contains('.') => {
                (id, suffix == "presence")
            }
            _ => return malformed("Malformed topic"),
        }
    };
    let user = Guid::parse(id)
        .and_then(|guid| world.by_guid.get(&guid).copied())
        .filter(|&user| !refused(user))
        .ok_or_else(|| Refusal::Refused("Unknown user, or not permitted".to_owned()))?;
    Ok(presence.then_some(user))
}

#[derive(Deserialize)]
struct TopicRequest {
    id: String,
}

/// The `ws://host:port` the `connectUri`s point at.
pub(crate) fn connect_base(shared: &Shared) -> String {
    format!("ws://{}", shared.addr)
}

/// A new channel id, `streaming-0-` and 26 random characters.
fn new_channel_id(shared: &Shared) -> Arc<str> {
    Arc::from(format!("streaming-0-{}", shared.misc_rng.lock().hex(26)))
}

/// `no_longer_subscribed`: removes the target channels, telling connected ones why.
pub(crate) fn remove_channels(shared: &Shared, target: &FaultTarget) -> Result<usize> {
    let removed: Vec<Channel> = {
        let mut table = shared.channels.lock();
        match target {
            FaultTarget::Channel(id) => {
                let channel = table
                    .remove(id)
                    .ok_or_else(|| Error::UnknownChannel { id: id.clone() })?;
                vec![channel]
            }
            FaultTarget::All => {
                let ids: Vec<Arc<str>> = table.channels.keys().cloned().collect();
                ids.iter().filter_map(|id| table.remove(id)).collect()
            }
            FaultTarget::Relay => {
                return Err(Error::InvalidFault {
                    reason: "no_longer_subscribed targets channels, not the relay".to_owned(),
                });
            }
        }
    };
    let count = removed.len();
    for channel in removed {
        tell_gone(shared, channel);
    }
    Ok(count)
}

/// Tells a removed channel's socket (if any) that the channel is gone, and closes it.
fn tell_gone(shared: &Shared, channel: Channel) {
    if let Some(conn) = channel.connection {
        let message = wire::no_longer_subscribed(&channel.id, shared.random_guid());
        let _ = conn.control.send(Control::Gone { message });
    }
}

/// Closes the sockets of channels removed by expiry (of the channel or its token), first
/// telling them `{"result":"404",...}` when
/// [`socket_404_message`](crate::EmulatorConfig::socket_404_message) is on.
pub(crate) fn close_expired(shared: &Shared, channels: Vec<Channel>) {
    for channel in channels {
        log::debug!("channel {} expired", channel.id);
        if let Some(conn) = channel.connection {
            let order = if shared.config.socket_404_message {
                Control::Gone {
                    message: wire::channel_not_found(&channel.id),
                }
            } else {
                Control::Close {
                    reason: "channel expired",
                }
            };
            let _ = conn.control.send(order);
        }
    }
}

/// A connected channel chosen with `rng`.
pub(crate) fn random_connected_channel(shared: &Shared, rng: &mut Rng) -> Option<String> {
    let table = shared.channels.lock();
    let mut ids: Vec<&Arc<str>> = table
        .channels
        .values()
        .filter(|c| c.connection.is_some())
        .map(|c| &c.id)
        .collect();
    ids.sort();
    let pick = rng.below(ids.len() as u64) as usize;
    ids.get(pick).map(|id| id.to_string())
}

/// `POST /api/v2/notifications/channels`.
pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let now = Instant::now();
    let config = &shared.config;
    let id = new_channel_id(&shared);
    let (summary, replaced, expired) = {
        let mut table = shared.channels.lock();
        // Expired channels count toward nothing, even before the janitor's next sweep.
        let expired = table.sweep(now, &HashSet::new());
        let mut mine: Vec<&Channel> = table
            .channels
            .values()
            .filter(|c| c.client_id == caller.client_id)
            .collect();
        let mut replaced = None;
        if mine.len() >= config.max_channels_per_client {
            mine.sort_by_key(|c| c.serial);
            let victim = match mine.iter().find(|c| c.connection.is_none()) {
                Some(unconnected) => Some(unconnected.id.clone()),
                None => match config.channel_limit_policy {
                    ChannelLimitPolicy::Reject => None,
                    _ => mine.first().map(|c| c.id.clone()),
                },
            };
            let Some(victim) = victim else {
                drop(table);
                close_expired(&shared, expired);
                return wire::bad_request(format!(
                    "The maximum of {} channels is reached and every channel has a connection",
                    config.max_channels_per_client
                ));
            };
            replaced = table.remove(&victim);
        }
        let serial = table.next_serial;
        table.next_serial += 1;
        let channel = Channel {
            id: id.clone(),
            client_id: caller.client_id.clone(),
            token: caller.token.clone(),
            serial,
            expires_at: now + config.channel_lifetime,
            expires_wall: shared.clock.wall_at(now + config.channel_lifetime),
            topics: Vec::new(),
            connection: None,
            counters: Arc::default(),
        };
        let summary = channel.summary(&connect_base(&shared));
        table.insert(channel);
        shared
            .counters
            .channels_created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(counters) = shared.client_counters(caller.client) {
            counters
                .channels_created
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        (summary, replaced, expired)
    };
    close_expired(&shared, expired);
    if let Some(old) = replaced {
        log::debug!("channel {} replaced by {id} (channel limit)", old.id);
        if old.connection.is_some() {
            shared
                .counters
                .channels_replaced_connected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        tell_gone(&shared, old);
    }
    axum::Json(summary).into_response()
}

/// `GET /api/v2/notifications/channels`.
pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let now = Instant::now();
    let table = shared.channels.lock();
    let mut mine: Vec<&Channel> = table
        .channels
        .values()
        .filter(|c| c.client_id == caller.client_id && c.expires_at > now)
        .collect();
    mine.sort_by_key(|c| c.serial);
    let base = connect_base(&shared);
    let entities: Vec<Value> = mine.iter().map(|c| c.summary(&base)).collect();
    axum::Json(json!({ "entities": entities })).into_response()
}

/// `HEAD /api/v2/notifications/channels/{id}`.
pub(crate) async fn head(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> StatusCode {
    let table = shared.channels.lock();
    if table
        .owned(&id, &caller.client_id, Instant::now())
        .is_some()
    {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

fn no_channel(id: &str) -> Response {
    wire::not_found(format!("Channel {id} not found"))
}

/// `GET .../channels/{id}/subscriptions`.
pub(crate) async fn get_subscriptions(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let table = shared.channels.lock();
    match table.owned(&id, &caller.client_id, Instant::now()) {
        Some(channel) => axum::Json(json!({ "entities": channel.topics_json() })).into_response(),
        None => no_channel(&id),
    }
}

/// `DELETE .../channels/{id}/subscriptions`: removes every topic; answers 204.
pub(crate) async fn delete_subscriptions(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let mut table = shared.channels.lock();
    if table
        .owned(&id, &caller.client_id, Instant::now())
        .is_none()
    {
        return no_channel(&id);
    }
    table.set_topics(&id, Vec::new());
    StatusCode::NO_CONTENT.into_response()
}

/// `POST .../channels/{id}/subscriptions`: adds topics.
pub(crate) async fn post_subscriptions(
    state: State<Arc<Shared>>,
    caller: Extension<Caller>,
    id: Path<String>,
    query: RawQuery,
    body: Bytes,
) -> Response {
    subscribe(state, caller, id, query, body, false)
}

/// `PUT .../channels/{id}/subscriptions`: replaces the topics.
pub(crate) async fn put_subscriptions(
    state: State<Arc<Shared>>,
    caller: Extension<Caller>,
    id: Path<String>,
    query: RawQuery,
    body: Bytes,
) -> Response {
    subscribe(state, caller, id, query, body, true)
}

fn subscribe(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
    replace: bool,
) -> Response {
    let ignore_errors = Query::parse(query.as_deref())
        .get("ignoreErrors")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let requested: Vec<TopicRequest> = match serde_json::from_slice(&body) {
        Ok(topics) => topics,
        Err(error) => {
            return wire::bad_request(format!(
                "The body must be a JSON array of {{\"id\": topic}}: {error}"
            ));
        }
    };
    let config = &shared.config;
    let mut granted = Vec::new();
    let mut rejected: Vec<(String, Refusal)> = Vec::new();
    {
        let refused_users = shared.refused_users.read();
        let org = shared.org.read();
        // Deleted users are in the refused set; spare users do not exist yet.
        let refused = |user: u32| refused_users.contains(&user) || !org.exists(user);
        for topic in requested {
            match parse_topic(&shared.world, &refused, &topic.id) {
                Ok(presence_of) => granted.push(Topic {
                    name: topic.id,
                    presence_of,
                }),
                Err(refusal) => rejected.push((topic.id, refusal)),
            }
        }
    }
    if config.strict_topics && !ignore_errors && !rejected.is_empty() {
        // A permission failure on any topic fails the whole request with 403 (Genesys since
        // 2021); a request with only malformed topics is a plain 400.
        let (topic, refusal) = rejected
            .iter()
            .find(|(_, r)| matches!(r, Refusal::Refused(_)))
            .unwrap_or(&rejected[0]);
        let message = format!(
            "Topic {topic} cannot be subscribed: {} ({} topic(s) refused; use ignoreErrors=true to subscribe the rest)",
            refusal.reason(),
            rejected.len()
        );
        return match refusal {
            Refusal::Refused(_) => wire::api_error(StatusCode::FORBIDDEN, "forbidden", message),
            Refusal::Malformed(_) => wire::bad_request(message),
        };
    }
    let now = Instant::now();
    let mut table = shared.channels.lock();
    let Some(channel) = table.owned(&id, &caller.client_id, now) else {
        return no_channel(&id);
    };
    let mut topics = if replace {
        Vec::new()
    } else {
        channel.topics.clone()
    };
    let mut seen: HashSet<String> = topics.iter().map(|t| t.name.to_ascii_lowercase()).collect();
    for topic in granted {
        if seen.insert(topic.name.to_ascii_lowercase()) {
            topics.push(topic);
        }
    }
    if topics.len() > config.max_topics_per_channel {
        return wire::bad_request(format!(
            "A channel can have at most {} topics; this request would give it {}",
            config.max_topics_per_channel,
            topics.len()
        ));
    }
    table.set_topics(&id, topics);
    let lifetime = config.channel_lifetime;
    let wall = shared.clock.wall_at(now + lifetime);
    let Some(channel) = table.live_mut(&id, now) else {
        return no_channel(&id);
    };
    // Subscribing extends the channel's life.
    channel.expires_at = now + lifetime;
    channel.expires_wall = wall;
    let mut entities = channel.topics_json();
    entities.extend(rejected.into_iter().map(|(topic, refusal)| {
        json!({"id": topic, "state": "Rejected", "rejectionReason": refusal.reason()})
    }));
    axum::Json(json!({ "entities": entities })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EmulatorConfig;

    #[test]
    fn topics_parse() {
        let world = World::build(&EmulatorConfig::default().users(3));
        let parse_topic = |world: &World, name: &str| parse_topic(world, &|_| false, name);
        let guid = world.users[2].guid;
        assert_eq!(
            parse_topic(&world, &format!("v2.users.{guid}.presence")),
            Ok(Some(2))
        );
        let upper = format!("V2.USERS.{}.PRESENCE", guid.to_string().to_uppercase());
        assert_eq!(parse_topic(&world, &upper), Ok(Some(2)));
        assert_eq!(
            parse_topic(&world, &format!("v2.users.{guid}.routingStatus")),
            Ok(None)
        );
        assert_eq!(
            parse_topic(&world, &format!("v2.users.{guid}?presence&routingStatus")),
            Ok(Some(2))
        );
        assert!(parse_topic(&world, &format!("v2.users.{}.presence", Guid(1))).is_err());
        assert!(parse_topic(&world, "v2.routing.queues.x.members").is_err());
        assert!(parse_topic(&world, &format!("v2.users.{guid}")).is_err());
        let long = format!("v2.users.{guid}?presence&{}", "x".repeat(200));
        assert!(matches!(
            parse_topic(&world, &long),
            Err(Refusal::Malformed(_))
        ));
        let refused: HashSet<u32> = [2].into_iter().collect();
        assert!(matches!(
            super::parse_topic(
                &world,
                &|u| refused.contains(&u),
                &format!("v2.users.{guid}.presence")
            ),
            Err(Refusal::Refused(_))
        ));
    }
}
