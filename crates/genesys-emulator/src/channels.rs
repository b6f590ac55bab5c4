//! Notification channels and their topic subscriptions: the table, the 20-channel and
//! 1,000-topic rules, expiry, and the `/api/v2/notifications/channels` endpoints.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use presence_frame::{EventTime, Guid};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::Caller;
use crate::config::ChannelLimitPolicy;
use crate::error::{Error, Result};
use crate::faults::FaultTarget;
use crate::rest::Query;
use crate::server::Shared;
use crate::socket::Control;
use crate::wire;
use crate::workload::World;

/// Longest combined topic (`v2.users.{id}?presence&routingStatus`) accepted.
const MAX_COMBINED_TOPIC_LEN: usize = 200;

/// Events delivered and lost on one channel.
#[derive(Debug, Default)]
pub(crate) struct ChannelCounters {
    pub(crate) delivered: AtomicU64,
    pub(crate) lost: AtomicU64,
}

/// The connected socket of a channel.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) conn_id: u64,
    pub(crate) events: mpsc::Sender<Utf8Bytes>,
    pub(crate) control: mpsc::UnboundedSender<Control>,
    pub(crate) stalled: Arc<AtomicBool>,
}

/// A granted topic.
#[derive(Clone, Debug)]
pub(crate) struct Topic {
    /// As the client spelled it.
    pub(crate) name: String,
    /// The user whose presence events it delivers (`None` for topics that deliver nothing
    /// here, such as `routingStatus`).
    pub(crate) presence_of: Option<u32>,
}

/// A notification channel.
#[derive(Debug)]
pub(crate) struct Channel {
    pub(crate) id: Arc<str>,
    pub(crate) client_id: Arc<str>,
    /// The token that created it.
    pub(crate) token: Arc<str>,
    /// Creation order, for "oldest".
    serial: u64,
    pub(crate) expires_at: Instant,
    pub(crate) expires_wall: EventTime,
    pub(crate) topics: Vec<Topic>,
    pub(crate) connection: Option<Connection>,
    pub(crate) counters: Arc<ChannelCounters>,
}

impl Channel {
    pub(crate) fn summary(&self, connect_base: &str) -> Value {
        json!({
            "connectUri": format!("{connect_base}/channels/{}", self.id),
            "id": &*self.id,
            "expires": self.expires_wall.to_rfc3339(),
        })
    }

    fn topics_json(&self) -> Vec<Value> {
        self.topics
            .iter()
            .map(|t| json!({"id": t.name, "state": "Permitted"}))
            .collect()
    }
}

/// Every channel, and which channels want each user's presence.
#[derive(Debug)]
pub(crate) struct ChannelTable {
    pub(crate) channels: HashMap<Arc<str>, Channel>,
    /// Channel ids subscribed to each user's presence, by user index.
    by_user: Vec<Vec<Arc<str>>>,
    /// Number of (channel, user) presence subscriptions, so dispatch can skip all work
    /// when nobody listens.
    subscriptions: usize,
    next_serial: u64,
}

impl ChannelTable {
    pub(crate) fn new(users: usize) -> ChannelTable {
        ChannelTable {
            channels: HashMap::new(),
            by_user: vec![Vec::new(); users],
            subscriptions: 0,
            next_serial: 0,
        }
    }

    pub(crate) fn has_subscriptions(&self) -> bool {
        self.subscriptions > 0
    }

    /// The channels subscribed to `user`'s presence.
    pub(crate) fn subscribers(&self, user: u32) -> &[Arc<str>] {
        self.by_user.get(user as usize).map_or(&[], Vec::as_slice)
    }

    fn insert(&mut self, channel: Channel) {
        self.channels.insert(channel.id.clone(), channel);
    }

    /// Removes a channel and its subscriptions.
    pub(crate) fn remove(&mut self, id: &str) -> Option<Channel> {
        let channel = self.channels.remove(id)?;
        self.unindex(&channel.id, &channel.topics);
        Some(channel)
    }

    fn unindex(&mut self, id: &Arc<str>, topics: &[Topic]) {
        for user in topics.iter().filter_map(|t| t.presence_of) {
            if let Some(list) = self.by_user.get_mut(user as usize)
                && let Some(at) = list.iter().position(|c| c == id)
            {
                list.swap_remove(at);
                self.subscriptions -= 1;
            }
        }
    }

    /// Replaces a channel's topics.
    fn set_topics(&mut self, id: &str, topics: Vec<Topic>) {
        let Some(channel) = self.channels.get_mut(id) else {
            return;
        };
        let old = std::mem::replace(&mut channel.topics, topics.clone());
        let id = channel.id.clone();
        self.unindex(&id, &old);
        for user in topics.iter().filter_map(|t| t.presence_of) {
            if let Some(list) = self.by_user.get_mut(user as usize) {
                list.push(id.clone());
                self.subscriptions += 1;
            }
        }
    }

    /// Removes every channel that has expired by `now`, or whose token is in `dead_tokens`.
    pub(crate) fn sweep(&mut self, now: Instant, dead_tokens: &HashSet<Arc<str>>) -> Vec<Channel> {
        let gone: Vec<Arc<str>> = self
            .channels
            .values()
            .filter(|c| c.expires_at <= now || dead_tokens.contains(&c.token))
            .map(|c| c.id.clone())
            .collect();
        gone.iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Forgets the connection `conn_id` of channel `id` (if it is still the current one).
    pub(crate) fn disconnect(&mut self, id: &str, conn_id: u64) {
        if let Some(channel) = self.channels.get_mut(id)
            && channel.connection.as_ref().map(|c| c.conn_id) == Some(conn_id)
        {
            channel.connection = None;
        }
    }

    fn owned<'a>(&'a self, id: &str, client: &str, now: Instant) -> Option<&'a Channel> {
        self.channels
            .get(id)
            .filter(|c| &*c.client_id == client && c.expires_at > now)
    }

    /// A live channel by id, whoever owns it.
    pub(crate) fn live(&self, id: &str, now: Instant) -> Option<&Channel> {
        self.channels.get(id).filter(|c| c.expires_at > now)
    }

    pub(crate) fn live_mut(&mut self, id: &str, now: Instant) -> Option<&mut Channel> {
        self.channels.get_mut(id).filter(|c| c.expires_at > now)
    }
}

/// Why a topic was not granted.
fn parse_topic(world: &World, name: &str) -> std::result::Result<Option<u32>, String> {
    let lower = name.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("v2.users.") else {
        return Err("Only v2.users topics are supported by the emulator".to_owned());
    };
    let (id, presence) = if let Some((id, parts)) = rest.split_once('?') {
        if name.len() > MAX_COMBINED_TOPIC_LEN {
            return Err(format!(
                "Combined topic is longer than {MAX_COMBINED_TOPIC_LEN} characters"
            ));
        }
        let parts: Vec<&str> = parts.split('&').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err("Malformed combined topic".to_owned());
        }
        (id, parts.contains(&"presence"))
    } else {
        match rest.split_once('.') {
            Some((id, suffix)) if !suffix.is_empty() && !suffix.contains('.') => {
                (id, suffix == "presence")
            }
            _ => return Err("Malformed topic".to_owned()),
        }
    };
    let user = Guid::parse(id)
        .and_then(|guid| world.by_guid.get(&guid).copied())
        .ok_or_else(|| "Unknown user, or not permitted".to_owned())?;
    Ok(presence.then_some(user))
}

/// A connected socket, as a fault sees it.
pub(crate) struct SocketRef {
    pub(crate) control: mpsc::UnboundedSender<Control>,
    pub(crate) is_relay: bool,
    /// A user the channel is subscribed to, for a truncated notification.
    pub(crate) user: Option<u32>,
}

#[derive(Deserialize)]
struct TopicRequest {
    id: String,
}

impl Shared {
    /// The `ws://host:port` the `connectUri`s point at.
    pub(crate) fn connect_base(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// A new channel id, `streaming-0-` and 26 random characters.
    fn new_channel_id(&self) -> Arc<str> {
        Arc::from(format!("streaming-0-{}", self.misc_rng.lock().hex(26)))
    }

    /// Sockets hit by a socket fault aimed at `target`, with the first subscribed user of
    /// each channel (for a truncated notification).
    pub(crate) fn connected_sockets(&self, target: &FaultTarget) -> Result<Vec<SocketRef>> {
        let mut out = Vec::new();
        let channel_socket = |c: &Channel| {
            c.connection.as_ref().map(|conn| SocketRef {
                control: conn.control.clone(),
                is_relay: false,
                user: c.topics.iter().find_map(|t| t.presence_of),
            })
        };
        match target {
            FaultTarget::Channel(id) => {
                let table = self.channels.lock();
                let channel = table
                    .live(id, Instant::now())
                    .ok_or_else(|| Error::UnknownChannel { id: id.clone() })?;
                out.extend(channel_socket(channel));
            }
            FaultTarget::All | FaultTarget::Relay => {
                if *target == FaultTarget::All {
                    let table = self.channels.lock();
                    out.extend(table.channels.values().filter_map(channel_socket));
                }
                let relay = self.relay_conns.lock();
                out.extend(relay.values().map(|c| SocketRef {
                    control: c.clone(),
                    is_relay: true,
                    user: None,
                }));
            }
        }
        Ok(out)
    }

    /// `no_longer_subscribed`: removes the target channels, telling connected ones why.
    pub(crate) fn remove_channels(&self, target: &FaultTarget) -> Result<usize> {
        let removed: Vec<Channel> = {
            let mut table = self.channels.lock();
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
            self.tell_gone(channel);
        }
        Ok(count)
    }

    /// Tells a removed channel's socket (if any) that the channel is gone, and closes it.
    fn tell_gone(&self, channel: Channel) {
        if let Some(conn) = channel.connection {
            let message = wire::no_longer_subscribed(&channel.id, self.random_guid());
            let _ = conn.control.send(Control::Gone { message });
        }
    }

    /// Closes the sockets of channels removed by expiry (of the channel or its token).
    pub(crate) fn close_expired(&self, channels: Vec<Channel>) {
        for channel in channels {
            log::debug!("channel {} expired", channel.id);
            if let Some(conn) = channel.connection {
                let _ = conn.control.send(Control::Close {
                    reason: "channel expired",
                });
            }
        }
    }

    /// A connected channel chosen with `rng`.
    pub(crate) fn random_connected_channel(&self, rng: &mut crate::rng::Rng) -> Option<String> {
        let table = self.channels.lock();
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
}

/// `POST /api/v2/notifications/channels`.
pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let now = Instant::now();
    let config = &shared.config;
    let id = shared.new_channel_id();
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
                shared.close_expired(expired);
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
        let summary = channel.summary(&shared.connect_base());
        table.insert(channel);
        (summary, replaced, expired)
    };
    shared.close_expired(expired);
    if let Some(old) = replaced {
        log::debug!("channel {} replaced by {id} (channel limit)", old.id);
        shared.tell_gone(old);
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
    let base = shared.connect_base();
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
    let mut rejected = Vec::new();
    for topic in requested {
        match parse_topic(&shared.world, &topic.id) {
            Ok(presence_of) => granted.push(Topic {
                name: topic.id,
                presence_of,
            }),
            Err(reason) => rejected.push((topic.id, reason)),
        }
    }
    if config.strict_topics
        && !ignore_errors
        && let Some((topic, reason)) = rejected.first()
    {
        return wire::bad_request(format!(
            "Topic {topic} cannot be subscribed: {reason} ({} topic(s) refused; use ignoreErrors=true to subscribe the rest)",
            rejected.len()
        ));
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
    entities.extend(rejected.into_iter().map(
        |(topic, reason)| json!({"id": topic, "state": "Rejected", "rejectionReason": reason}),
    ));
    axum::Json(json!({ "entities": entities })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EmulatorConfig;

    #[test]
    fn topics_parse() {
        let world = World::build(&EmulatorConfig::default().users(3));
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
        assert!(parse_topic(&world, &long).is_err());
    }

    #[test]
    fn table_indexes_subscriptions() {
        let mut table = ChannelTable::new(4);
        let now = Instant::now();
        for name in ["a", "b"] {
            table.insert(Channel {
                id: Arc::from(name),
                client_id: Arc::from("c"),
                token: Arc::from(format!("t-{name}")),
                serial: 0,
                expires_at: now + std::time::Duration::from_secs(10),
                expires_wall: EventTime(0),
                topics: Vec::new(),
                connection: None,
                counters: Arc::default(),
            });
        }
        let topic = |u| Topic {
            name: format!("u{u}"),
            presence_of: Some(u),
        };
        table.set_topics("a", vec![topic(1), topic(2)]);
        table.set_topics("b", vec![topic(2)]);
        assert_eq!(table.subscribers(2).len(), 2);
        table.set_topics("a", vec![topic(3)]);
        assert!(table.subscribers(1).is_empty());
        assert_eq!(table.subscribers(2).len(), 1);
        let dead: HashSet<Arc<str>> = [Arc::from("t-b")].into_iter().collect();
        let gone = table.sweep(now, &dead);
        assert_eq!(gone.len(), 1);
        assert!(table.subscribers(2).is_empty());
        assert!(table.has_subscriptions());
        let gone = table.sweep(now + std::time::Duration::from_secs(10), &HashSet::new());
        assert_eq!(gone.len(), 1);
        assert!(!table.has_subscriptions());
    }
}
