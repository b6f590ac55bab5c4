//! The emulator's own endpoints (no token needed): ground truth, statistics, quiesce and
//! resume, fault injection, chaos and rate control.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use presence_frame::{EventTime, Guid, Location, Status};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

use crate::error::Error;
use crate::fault::{ChaosConfig, Fault, FaultHits};
use crate::inject;
use crate::state::Shared;
use crate::wire;

/// One user's current state, as `GET /emulator/truth` returns it (an array of these).
///
/// JSON: `{"userId":"<guid>","relayId":7,"systemPresence":"ON_QUEUE",
/// "presenceDefinitionId":"<guid>","message":"","modifiedDate":"2026-11-28T09:03:17.067Z",
/// "groups":["<group guid>"],"groupMask":5,"location":"Desk"}`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TruthEntry {
    /// The user's GUID.
    pub user_id: String,
    /// The user's relay id (its index).
    pub relay_id: u32,
    /// The system presence, spelled as in notifications (`ON_QUEUE`).
    pub system_presence: String,
    /// The presence definition's GUID (a System or User definition).
    pub presence_definition_id: String,
    /// The presence message (empty for none).
    pub message: String,
    /// When the presence last changed (RFC 3339, milliseconds).
    pub modified_date: String,
    /// The GUIDs of the user's groups, in group order.
    pub groups: Vec<String>,
    /// The groups as a mask: bit `i` for group `i` (frames carry bits 0 to 7).
    pub group_mask: u64,
    /// `Desk` or `Remote`.
    pub location: String,
}

impl TruthEntry {
    /// The user's GUID, parsed.
    pub fn user(&self) -> Option<Guid> {
        Guid::parse(&self.user_id)
    }

    /// The status, parsed from `system_presence`.
    pub fn status(&self) -> Status {
        Status::from_system_presence(&self.system_presence)
    }

    /// The time of the last change, parsed.
    pub fn modified(&self) -> Option<EventTime> {
        EventTime::parse_rfc3339(&self.modified_date).ok()
    }

    /// The location, parsed.
    pub fn location(&self) -> Location {
        match self.location.as_str() {
            "Desk" => Location::DESK,
            "Remote" => Location::REMOTE,
            _ => Location::UNKNOWN,
        }
    }
}

/// One channel in [`Stats`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStats {
    /// The channel id.
    pub id: String,
    /// The OAuth client that created it.
    #[serde(default)]
    pub client_id: String,
    /// Whether a socket is connected.
    pub connected: bool,
    /// Number of topics.
    pub topics: usize,
    /// Events written to its sockets.
    pub delivered: u64,
    /// Events lost: no socket connected, socket stalled or too slow, or queued when the
    /// socket ended.
    pub lost: u64,
    /// When it expires (RFC 3339).
    pub expires: String,
}

/// One OAuth client in [`Stats::clients`].
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientStats {
    /// Tokens issued to it.
    pub tokens_issued: u64,
    /// `/api/v2` calls with a valid token of this client, the rate-limited ones included
    /// (calls answered by an injected burst, or without a valid token, belong to no client:
    /// they count only in the total).
    pub api_requests: u64,
    /// Its calls refused by the rate limit (of the token they carried).
    pub api_rate_limited: u64,
    /// Channels it created.
    pub channels_created: u64,
    /// Its live channels now (at most
    /// [`max_channels_per_client`](crate::EmulatorConfig::max_channels_per_client)).
    pub channels: usize,
    /// Its live channels with a socket connected now.
    pub connected_channels: usize,
}

/// The relay part of [`Stats`].
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayStats {
    /// Relay sockets connected now.
    pub connections: usize,
    /// Binary messages written (snapshot included), summed over sockets.
    pub messages_sent: u64,
    /// Frames written, summed over sockets.
    pub frames_sent: u64,
    /// Messages a relay socket missed (it fell behind, or was stalled).
    pub messages_lost: u64,
}

/// Counters of an emulator, as `GET /emulator/stats` returns them.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Presence changes generated.
    pub events_generated: u64,
    /// Presence notifications written to channel sockets.
    pub events_delivered: u64,
    /// Presence notifications lost (summed over channels, including removed ones).
    pub events_lost: u64,
    /// Presence changes of subscribed users that reached no socket: every channel subscribed
    /// to the user had no socket connected, a stalled one or a full queue. Unlike
    /// `events_lost`, a change that another channel's socket took is not counted (a client
    /// that rolls over to a new channel has both subscribed for a while), so this is what the
    /// clients watching those users missed. A change queued on a socket that then ended
    /// unwritten is counted in `events_lost` only.
    pub events_unreached: u64,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// `/api/v2` calls received.
    pub api_requests: u64,
    /// Calls refused by the rate limit (not counting injected 429s).
    pub api_rate_limited: u64,
    /// Tokens issued.
    pub tokens_issued: u64,
    /// Notification channels created (`POST /api/v2/notifications/channels` answered 200).
    #[serde(default)]
    pub channels_created: u64,
    /// Channels with a socket connected that creating another replaced under the channel
    /// limit ([`ChannelLimitPolicy::ReplaceOldest`](crate::ChannelLimitPolicy::ReplaceOldest)
    /// with every channel of the client connected): each cost a client a live channel.
    /// Unconnected channels replaced, as Genesys documents, are not counted.
    #[serde(default)]
    pub channels_replaced_connected: u64,
    /// Faults asked for (through the handle, `POST /emulator/faults` or chaos), by kind
    /// (`drop_socket`, ...), whether or not they hit anything.
    pub faults_requested: BTreeMap<String, u64>,
    /// Faults that hit something, by kind: the sum of [`FaultHits`] over where they landed.
    /// A kind is absent until one of its faults reached a socket, a channel, a token or a
    /// call; a fault sent to nothing, or to a socket that ignored it (stalled), counts nothing.
    pub faults_injected: BTreeMap<String, u64>,
    /// Where faults landed, by kind (same keys as `faults_injected`).
    pub fault_hits: BTreeMap<String, FaultHits>,
    /// Every live channel.
    pub channels: Vec<ChannelStats>,
    /// The relay.
    pub relay: RelayStats,
    /// Whether the generator is quiesced.
    pub quiesced: bool,
    /// The current change rate (changes per second).
    pub change_rate: f64,
    /// Org churn so far.
    #[serde(default)]
    pub churn: ChurnStats,
    /// The same counters by OAuth client id (every client configured, even one never used);
    /// the fields above are the totals.
    #[serde(default)]
    pub clients: BTreeMap<String, ClientStats>,
}

/// What org churn has done (`churn` in `/emulator/stats`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChurnStats {
    /// Active users now.
    pub active_users: u64,
    /// Users created.
    pub created: u64,
    /// Users deleted.
    pub deleted: u64,
    /// Users deactivated.
    pub deactivated: u64,
    /// Deactivated users made active again.
    #[serde(default)]
    pub reactivated: u64,
    /// Users moved between groups (their groups set to something else).
    pub moved: u64,
}

/// Every user's current state.
pub(crate) fn read_truth(shared: &Shared) -> Vec<TruthEntry> {
    // Deactivated, deleted and spare users are absent.
    let (active, groups): (Vec<u32>, Vec<u64>) = {
        let org = shared.org.read();
        org.active().iter().map(|&u| (u, org.groups(u))).unzip()
    };
    let presence = shared.presence.read().clone();
    active
        .iter()
        .zip(groups)
        .filter_map(|(&u, groups)| Some((u as usize, presence.get(u as usize)?, groups)))
        .map(|(i, p, groups)| {
            let info = &shared.world.users[i];
            TruthEntry {
                user_id: info.guid.to_string(),
                relay_id: i as u32,
                system_presence: p.status.system_presence().unwrap_or("OFFLINE").to_owned(),
                presence_definition_id: shared
                    .world
                    .definitions
                    .get(usize::from(p.definition))
                    .map_or_else(String::new, |d| d.guid.to_string()),
                message: wire::message_text(p.message).to_owned(),
                modified_date: EventTime(p.modified_ms).to_rfc3339(),
                groups: shared
                    .world
                    .groups
                    .iter()
                    .enumerate()
                    .filter(|(g, _)| groups & (1 << g) != 0)
                    .map(|(_, g)| g.guid.to_string())
                    .collect(),
                group_mask: groups,
                location: info.location.to_string(),
            }
        })
        .collect()
}

/// The counters now.
pub(crate) fn read_stats(shared: &Shared) -> Stats {
    let c = &shared.counters;
    let now = Instant::now();
    let mut channels: Vec<ChannelStats> = {
        let table = shared.channels.lock();
        table
            .channels
            .values()
            .filter(|ch| ch.expires_at > now)
            .map(|ch| ChannelStats {
                id: ch.id.to_string(),
                client_id: ch.client_id.to_string(),
                connected: ch.connection.is_some(),
                topics: ch.topics.len(),
                delivered: ch.counters.delivered.load(Ordering::Relaxed),
                lost: ch.counters.lost.load(Ordering::Relaxed),
                expires: ch.expires_wall.to_rfc3339(),
            })
            .collect()
    };
    channels.sort_by(|a, b| a.id.cmp(&b.id));
    let mut clients: BTreeMap<String, ClientStats> = shared
        .clients
        .iter()
        .map(|client| {
            let counters = &client.counters;
            let stats = ClientStats {
                tokens_issued: counters.tokens_issued.load(Ordering::Relaxed),
                api_requests: counters.api_requests.load(Ordering::Relaxed),
                api_rate_limited: counters.api_rate_limited.load(Ordering::Relaxed),
                channels_created: counters.channels_created.load(Ordering::Relaxed),
                channels: 0,
                connected_channels: 0,
            };
            (client.id.to_string(), stats)
        })
        .collect();
    for channel in &channels {
        if let Some(client) = clients.get_mut(&channel.client_id) {
            client.channels += 1;
            client.connected_channels += usize::from(channel.connected);
        }
    }
    let hits = c.fault_hits.lock().clone();
    Stats {
        events_generated: c.events_generated.load(Ordering::Relaxed),
        events_delivered: c.events_delivered.load(Ordering::Relaxed),
        events_lost: c.events_lost.load(Ordering::Relaxed),
        events_unreached: c.events_unreached.load(Ordering::Relaxed),
        heartbeats_sent: c.heartbeats_sent.load(Ordering::Relaxed),
        api_requests: c.api_requests.load(Ordering::Relaxed),
        api_rate_limited: c.api_rate_limited.load(Ordering::Relaxed),
        tokens_issued: c.tokens_issued.load(Ordering::Relaxed),
        channels_created: c.channels_created.load(Ordering::Relaxed),
        channels_replaced_connected: c.channels_replaced_connected.load(Ordering::Relaxed),
        faults_requested: c
            .faults_requested
            .lock()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
        faults_injected: hits
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.total()))
            .collect(),
        fault_hits: hits.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        channels,
        relay: RelayStats {
            connections: shared.relay_conns.lock().len(),
            messages_sent: c.relay_messages_sent.load(Ordering::Relaxed),
            frames_sent: c.relay_frames_sent.load(Ordering::Relaxed),
            messages_lost: c.relay_messages_lost.load(Ordering::Relaxed),
        },
        quiesced: shared.is_quiesced(),
        change_rate: shared.change_rate(),
        churn: ChurnStats {
            active_users: shared.org.read().active().len() as u64,
            created: c.users_created.load(Ordering::Relaxed),
            deleted: c.users_deleted.load(Ordering::Relaxed),
            deactivated: c.users_deactivated.load(Ordering::Relaxed),
            reactivated: c.users_reactivated.load(Ordering::Relaxed),
            moved: c.users_moved.load(Ordering::Relaxed),
        },
        clients,
    }
}

/// `GET /emulator/truth`.
pub(crate) async fn truth(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(read_truth(&shared)).into_response()
}

/// `GET /emulator/stats`.
pub(crate) async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(read_stats(&shared)).into_response()
}

/// `POST /emulator/quiesce`: answers once no change is being made.
pub(crate) async fn quiesce(State(shared): State<Arc<Shared>>) -> Response {
    shared.quiesce().await;
    axum::Json(json!({"quiesced": true})).into_response()
}

/// `POST /emulator/resume`.
pub(crate) async fn resume(State(shared): State<Arc<Shared>>) -> Response {
    shared.resume();
    axum::Json(json!({"quiesced": false})).into_response()
}

/// `POST /emulator/faults` with a [`Fault`] as JSON: `{"applied": n}`; 400 for a bad fault,
/// 404 for an unknown channel.
pub(crate) async fn faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let fault: Fault = match serde_json::from_slice(&body) {
        Ok(fault) => fault,
        Err(error) => return wire::bad_request(format!("Not a fault: {error}")),
    };
    match inject::inject(&shared, &fault) {
        Ok(applied) => axum::Json(json!({"applied": applied})).into_response(),
        Err(error @ Error::UnknownChannel { .. }) => wire::not_found(error.to_string()),
        Err(error) => wire::bad_request(error.to_string()),
    }
}

/// `POST /emulator/chaos` with a [`ChaosConfig`] as JSON.
pub(crate) async fn chaos(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let chaos: ChaosConfig = match serde_json::from_slice(&body) {
        Ok(chaos) => chaos,
        Err(error) => return wire::bad_request(format!("Not a chaos config: {error}")),
    };
    match shared.set_chaos(chaos) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => wire::bad_request(error.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RateRequest {
    changes_per_second: f64,
}

/// `POST /emulator/rate` with `{"changesPerSecond": 100.0}`.
pub(crate) async fn rate(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: RateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(error) => {
            return wire::bad_request(format!("Expected {{\"changesPerSecond\": n}}: {error}"));
        }
    };
    match shared.set_change_rate(request.changes_per_second) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => wire::bad_request(error.to_string()),
    }
}
