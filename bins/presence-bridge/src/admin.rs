//! The admin HTTP server: health, readiness, Prometheus metrics, the JSON query API, the
//! live dashboard and its event stream.
//!
//! None of it may slow the event path: `/v1/presence` pages through a sorted snapshot of the
//! registry rebuilt at most once a second (not a copy and sort per request), the event
//! stream takes a bounded number of clients, each reading the recent changes with a short
//! copy under their lock, and `/readyz` never waits behind a token request.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures_util::stream::Stream;
use parking_lot::Mutex;
use presence_frame::{PresenceEvent, Status, UserId};
use presence_kafka::HistogramSnapshot;
use presence_registry::{MonotonicClock, Registry};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::state::{AppState, RecentChanges, kafka_healthy, kafka_problem};

const DASHBOARD: &str = include_str!("dashboard.html");

/// The charting library, uPlot (MIT, `assets/uplot/LICENSE`), served from these bytes: the
/// dashboard makes no request to another origin and works offline. The version is in the
/// path, so browsers may keep the files for good.
const UPLOT_JS: &str = include_str!("../assets/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/uplot/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("../assets/uplot/LICENSE");
/// Where the dashboard loads uPlot from (`<path>/uPlot.iife.min.js`, `uPlot.min.css`,
/// `LICENSE`).
pub const UPLOT_PATH: &str = "/assets/uplot-1.6.32";

/// Default of [`AdminOptions::max_event_streams`].
pub const DEFAULT_MAX_EVENT_STREAMS: usize = 16;

/// How long `/v1/presence` serves one snapshot of the registry before taking a new one.
pub const PRESENCE_SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(1);

/// Settings of the admin server.
#[derive(Clone, Debug)]
pub struct AdminOptions {
    /// Most `/v1/events` (dashboard) clients at once; more get 503. By default, 16.
    pub max_event_streams: usize,
}

impl Default for AdminOptions {
    fn default() -> AdminOptions {
        AdminOptions {
            max_event_streams: DEFAULT_MAX_EVENT_STREAMS,
        }
    }
}

/// What the handlers share: the bridge's state and the admin server's own.
struct Admin {
    app: Arc<AppState>,
    /// One permit per event-stream client.
    streams: Arc<Semaphore>,
    max_streams: usize,
    presence: PresenceCache,
}

/// The admin router over shared state, with the default [`AdminOptions`].
pub fn router(state: Arc<AppState>) -> Router {
    router_with(state, AdminOptions::default())
}

/// The admin router over shared state.
pub fn router_with(state: Arc<AppState>, options: AdminOptions) -> Router {
    let admin = Arc::new(Admin {
        app: state,
        streams: Arc::new(Semaphore::new(options.max_event_streams)),
        max_streams: options.max_event_streams,
        presence: PresenceCache::default(),
    });
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/stats", get(stats))
        .route("/v1/presence", get(list_presence))
        .route("/v1/presence/{user_id}", get(one_presence))
        .route("/v1/events", get(events))
        .route("/v1/history", get(history))
        .route(
            &format!("{UPLOT_PATH}/uPlot.iife.min.js"),
            get(|| asset("text/javascript; charset=utf-8", UPLOT_JS)),
        )
        .route(
            &format!("{UPLOT_PATH}/uPlot.min.css"),
            get(|| asset("text/css; charset=utf-8", UPLOT_CSS)),
        )
        .route(
            &format!("{UPLOT_PATH}/LICENSE"),
            get(|| asset("text/plain; charset=utf-8", UPLOT_LICENSE)),
        )
        .with_state(admin)
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

/// `/v1/history`: the rolling history, column by column (`docs/history.md`); `?since=T`
/// (Unix milliseconds) gives only the samples taken after `T`, for a client that polls.
async fn history(
    State(admin): State<Arc<Admin>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if let Some(name) = params.keys().find(|name| name.as_str() != "since") {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown query parameter {name:?}: expected since"),
        );
    }
    let since = match params
        .get("since")
        .map(|text| (text, text.trim().parse::<i64>()))
    {
        None => None,
        Some((_, Ok(since))) => Some(since),
        Some((text, Err(_))) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid since {text:?}: expected Unix milliseconds"),
            );
        }
    };
    // Copy the columns under the lock (microseconds for 900 samples), encode outside it.
    let body = admin.app.history.lock().to_json(since);
    match serde_json::to_string(&body) {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "alive"}))
}

/// A JSON response (axum's `Json` without its content negotiation concerns).
struct Json(serde_json::Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        (
            [(header::CONTENT_TYPE, "application/json")],
            self.0.to_string(),
        )
            .into_response()
    }
}

async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    let state = &admin.app;
    let mut waiting = Vec::new();
    // Read without waiting, even while a token request retries with backoff.
    let token = state.client.token_state();
    match (token.valid, token.requesting) {
        (true, _) => {}
        (false, false) => {
            waiting.push(json!({"part": "genesys-token", "reason": "no valid OAuth token held"}))
        }
        (false, true) => waiting.push(json!({
            "part": "genesys-token",
            "reason": "no valid OAuth token held; a token request is in progress (retrying)"
        })),
    }
    if !state.sync.is_ready() {
        let not_streaming: Vec<_> = state
            .sync
            .channels()
            .into_iter()
            .filter(|c| c.state != presence_sync::ChannelState::Streaming)
            .map(|c| json!({"index": c.index, "state": c.state.as_str()}))
            .collect();
        waiting.push(json!({"part": "channels", "reason": "not every channel is connected and resynced", "channels": not_streaming}));
    }
    let group = &state.group;
    if group.ownership.owned().is_empty() {
        waiting.push(json!({
            "part": "group",
            "reason": format!(
                "no partition of the topic is assigned to this instance ({}) in consumer group {} yet: it owns no user (more instances than partitions keeps some idle)",
                group.instance_id, group.group_id
            )
        }));
    }
    let unwatched = state.sync.unwatched_users();
    if unwatched > 0 {
        waiting.push(json!({
            "part": "capacity",
            "reason": format!(
                "{unwatched} owned users are not watched: every notification channel this OAuth client may have is full (run more instances, each with its own OAuth client)"
            )
        }));
    }
    if let Some(from_ms) = state.registry.expiry_held_from() {
        let held_for = state.registry.now_ms().saturating_sub(from_ms);
        waiting.push(json!({
            "part": "expiry",
            "reason": format!(
                "expiry held back for {:.0} s: the presence source is not healthy, so nobody is deleted for its silence; {} users past their time-to-live are kept until it has resynced",
                held_for as f64 / 1000.0,
                state.sink.expiry_held_back.load(std::sync::atomic::Ordering::Relaxed)
            )
        }));
    }
    let kafka = state.publisher.health();
    if !kafka_healthy(&kafka) {
        waiting.push(json!({"part": "kafka", "reason": kafka_problem(kafka).unwrap_or_else(|| "no answer from the brokers yet".into())}));
    }
    if waiting.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "notReady": waiting})),
        )
            .into_response()
    }
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    match crate::metrics::render(&admin.app) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics encoding failed: {e}"),
        )
            .into_response(),
    }
}

/// One user's presence as the query API and the dashboard show it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceView {
    user_id: String,
    status: String,
    status_code: u8,
    location: String,
    group_mask: u64,
    presence_definition_id: Option<String>,
    message: Option<String>,
    event_time: String,
    event_time_millis: i64,
    source: &'static str,
}

impl PresenceView {
    /// The view of one registry entry.
    pub fn of(event: &PresenceEvent) -> PresenceView {
        PresenceView {
            user_id: event.user.to_string(),
            status: event.state.status.to_string(),
            status_code: event.state.status.code(),
            location: event.state.location.to_string(),
            group_mask: event.state.groups.0,
            presence_definition_id: event.state.definition_id.as_deref().map(str::to_owned),
            message: event.state.message.as_deref().map(str::to_owned),
            event_time: event.time.to_rfc3339(),
            event_time_millis: event.time.as_millis(),
            source: event.source.as_str(),
        }
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

async fn one_presence(State(admin): State<Arc<Admin>>, Path(user_id): Path<String>) -> Response {
    let user: UserId = match user_id.parse() {
        Ok(user) => user,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match admin.app.registry.get(user) {
        Some(event) => {
            Json(serde_json::to_value(PresenceView::of(&event)).unwrap_or_default()).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("no presence held for user {user}"),
        ),
    }
}

/// Largest `pageSize` of `/v1/presence`.
pub const MAX_PAGE_SIZE: usize = 5_000;

/// The checked query of `/v1/presence`.
#[derive(Debug)]
struct ListQuery {
    status: Option<Status>,
    page: usize,
    page_size: usize,
}

impl ListQuery {
    /// Checks every parameter; the error says which one and what is allowed.
    fn parse(params: &HashMap<String, String>) -> Result<ListQuery, String> {
        for name in params.keys() {
            if !["status", "page", "pageSize"].contains(&name.as_str()) {
                return Err(format!(
                    "unknown query parameter {name:?}: expected status, page or pageSize"
                ));
            }
        }
        let page = match params.get("page") {
            None => 1,
            Some(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(|| format!("invalid page {text:?}: expected a whole number from 1"))?,
        };
        let page_size = match params.get("pageSize") {
            None => 100,
            Some(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                .ok_or_else(|| {
                    format!("invalid pageSize {text:?}: expected a whole number from 1 to {MAX_PAGE_SIZE}")
                })?,
        };
        let status = match params.get("status").map(String::as_str) {
            None | Some("") => None,
            Some(text) => match Status::from_system_presence(text) {
                s if s == Status::UNKNOWN && !text.eq_ignore_ascii_case("unknown") => {
                    return Err(format!("unknown status {text:?}"));
                }
                s => Some(s),
            },
        };
        Ok(ListQuery {
            status,
            page,
            page_size,
        })
    }
}

/// Every live registry entry at one moment, sorted by user, with an index by status: what
/// `/v1/presence` pages through.
struct PresenceSnapshot {
    taken: Instant,
    events: Vec<PresenceEvent>,
    /// Positions in `events` by status code, ascending.
    by_status: HashMap<u8, Vec<u32>>,
}

impl PresenceSnapshot {
    fn take(registry: &Registry<MonotonicClock>) -> PresenceSnapshot {
        let mut events = registry.snapshot();
        events.sort_unstable_by_key(|e| e.user);
        let mut by_status: HashMap<u8, Vec<u32>> = HashMap::new();
        for (at, event) in events.iter().enumerate() {
            let at = u32::try_from(at).unwrap_or(u32::MAX);
            by_status
                .entry(event.state.status.code())
                .or_default()
                .push(at);
        }
        PresenceSnapshot {
            taken: Instant::now(),
            events,
            by_status,
        }
    }

    /// Entries with `status` (all when `None`) on `page`, and how many there are in all.
    fn page(
        &self,
        status: Option<Status>,
        page: usize,
        page_size: usize,
    ) -> (Vec<&PresenceEvent>, usize) {
        let window = |total: usize| {
            let start = (page - 1).saturating_mul(page_size).min(total);
            start..start.saturating_add(page_size).min(total)
        };
        match status {
            None => {
                let total = self.events.len();
                (self.events[window(total)].iter().collect(), total)
            }
            Some(status) => {
                let positions = self
                    .by_status
                    .get(&status.code())
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let total = positions.len();
                let page = positions[window(total)]
                    .iter()
                    .filter_map(|at| self.events.get(*at as usize))
                    .collect();
                (page, total)
            }
        }
    }
}

/// The snapshot `/v1/presence` serves, taken again at most once per
/// [`PRESENCE_SNAPSHOT_MAX_AGE`] and only when asked for.
#[derive(Default)]
struct PresenceCache {
    current: Mutex<Option<Arc<PresenceSnapshot>>>,
    /// Held while a new snapshot is taken, so that concurrent requests take one between them.
    taking: tokio::sync::Mutex<()>,
}

impl PresenceCache {
    fn fresh(&self) -> Option<Arc<PresenceSnapshot>> {
        self.current
            .lock()
            .as_ref()
            .filter(|s| s.taken.elapsed() < PRESENCE_SNAPSHOT_MAX_AGE)
            .cloned()
    }

    async fn get(&self, registry: &Arc<Registry<MonotonicClock>>) -> Arc<PresenceSnapshot> {
        if let Some(snapshot) = self.fresh() {
            return snapshot;
        }
        let _taking = self.taking.lock().await;
        if let Some(snapshot) = self.fresh() {
            return snapshot;
        }
        // Copying and sorting every entry takes milliseconds at scale: off the async workers.
        let source = Arc::clone(registry);
        let snapshot =
            match tokio::task::spawn_blocking(move || PresenceSnapshot::take(&source)).await {
                Ok(snapshot) => snapshot,
                Err(_) => PresenceSnapshot::take(registry),
            };
        let snapshot = Arc::new(snapshot);
        *self.current.lock() = Some(Arc::clone(&snapshot));
        snapshot
    }
}

async fn list_presence(
    State(admin): State<Arc<Admin>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let query = match ListQuery::parse(&params) {
        Ok(query) => query,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let snapshot = admin.presence.get(&admin.app.registry).await;
    let (entries, total) = snapshot.page(query.status, query.page, query.page_size);
    let end = (query.page - 1)
        .saturating_mul(query.page_size)
        .saturating_add(entries.len());
    let entities: Vec<PresenceView> = entries.into_iter().map(PresenceView::of).collect();
    Json(json!({
        "entities": entities,
        "page": query.page,
        "pageSize": query.page_size,
        "total": total,
        "nextPage": (end < total).then(|| query.page.checked_add(1)).flatten(),
    }))
    .into_response()
}

async fn stats(State(admin): State<Arc<Admin>>) -> Response {
    Json(stats_json(&admin.app)).into_response()
}

/// What `/v1/stats` and the dashboard's `stats` events carry.
pub fn stats_json(state: &AppState) -> serde_json::Value {
    let counts = state.registry.counts_by_status();
    let by_status: BTreeMap<String, u64> = counts.iter().map(|(s, n)| (s.to_string(), n)).collect();
    let sync = state.sync.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let kafka = state.publisher.stats();
    let health = state.publisher.health();
    let kafka_up = kafka_healthy(&health);
    let channels: Vec<serde_json::Value> = state
        .sync
        .channels()
        .iter()
        .map(|c| {
            json!({
                "index": c.index,
                "channelId": c.channel_id,
                "state": c.state.as_str(),
                "users": c.users,
                "reconnects": c.reconnects,
                "lastMessageMs": c.last_message_age.map(|a| a.as_millis() as u64),
            })
        })
        .collect();
    json!({
        "users": counts.total(),
        "byStatus": by_status,
        "events": {
            "stream": load(&sync.stream_events),
            "resync": load(&sync.resync_events),
            "relay": load(&sync.relay_events),
        },
        "filteredOut": load(&sync.filtered_out),
        "decodeErrors": sync.decode_errors_total(),
        "expired": load(&state.sink.expired),
        "kafka": {
            "healthy": kafka_up,
            "lastError": kafka_problem(health),
            "enqueued": kafka.enqueued,
            "delivered": kafka.delivered,
            "coalesced": kafka.coalesced,
            "failed": kafka.failed,
            "queueDepth": kafka.queue_depth,
            "latencyMs": {
                "p50": bucket_bound_ms(&kafka.latency, 0.50),
                "p99": bucket_bound_ms(&kafka.latency, 0.99),
            },
        },
        "channels": channels,
        "group": group_json(state),
        "ready": state.sync.is_ready() && kafka_up,
        "uptimeSeconds": state.started.elapsed().as_secs(),
    })
}

/// This instance in its consumer group (`group` in `/v1/stats`).
fn group_json(state: &AppState) -> serde_json::Value {
    let group = &state.group;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    json!({
        "groupId": group.group_id,
        "instanceId": group.instance_id,
        "partitions": group.ownership.partitions(),
        "ownedPartitions": group.ownership.owned(),
        "ownedUsers": state.registry.len(),
        "watchedUsers": state.sync.watched_users(),
        "unwatchedUsers": state.sync.unwatched_users(),
        "assignments": load(&group.stats.assignments),
        "revocations": load(&group.stats.revocations),
        "lastWarmStartMs": load(&group.stats.last_warm_start_ms),
        "lastRevocationMs": load(&group.stats.last_revocation_ms),
    })
}

/// The upper bound, in milliseconds, of the latency bucket holding quantile `q` (the highest
/// bound when it falls in the unbounded bucket), or `None` with no observations. A bucket
/// bound rather than [`HistogramSnapshot::percentile`]'s interpolation, so `/v1/stats` says
/// "at most" and keeps the values it always had.
fn bucket_bound_ms(latency: &HistogramSnapshot, q: f64) -> Option<f64> {
    if latency.count == 0 {
        return None;
    }
    let rank = (q * latency.count as f64).ceil().max(1.0) as u64;
    let bound_ms = |bound: Duration| bound.as_secs_f64() * 1000.0;
    latency
        .cumulative()
        .find_map(|(bound, total)| bound.filter(|_| total >= rank))
        .or(latency.bounds.last().copied())
        .map(bound_ms)
}

/// Server-sent events for the dashboard: every second a `stats` event, the users changed
/// since the last one (`changes`, their current state), and the users expired (`expired`).
/// At most [`AdminOptions::max_event_streams`] clients at once; more get 503.
async fn events(State(admin): State<Arc<Admin>>) -> Response {
    let Ok(permit) = Arc::clone(&admin.streams).try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "10")],
            Json(json!({"error": format!(
                "too many event-stream clients: at most {} at once (--admin-max-event-streams)",
                admin.max_streams
            )})),
        )
            .into_response();
    };
    let stream = event_stream(Arc::clone(&admin.app), permit);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// One client's stream; `permit` is its place under the cap, given back when the client
/// goes (the stream is dropped).
fn event_stream(
    state: Arc<AppState>,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<String, Infallible>> {
    let cursor = state.recent.lock().cursor();
    futures_util::stream::unfold(
        (state, cursor, true, permit),
        |(state, cursor, first, permit)| async move {
            if !first {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let (changed, expired, next) = RecentChanges::read_shared(&state.recent, cursor);
            let mut out = format!("event: stats\ndata: {}\n\n", stats_json(&state));
            let views: Vec<PresenceView> = changed
                .iter()
                .filter_map(|u| state.registry.get(*u))
                .map(|e| PresenceView::of(&e))
                .collect();
            if !views.is_empty() {
                out.push_str(&format!(
                    "event: changes\ndata: {}\n\n",
                    serde_json::to_string(&views).unwrap_or_default()
                ));
            }
            if !expired.is_empty() {
                let ids: Vec<String> = expired.iter().map(UserId::to_string).collect();
                out.push_str(&format!(
                    "event: expired\ndata: {}\n\n",
                    serde_json::to_string(&ids).unwrap_or_default()
                ));
            }
            Some((Ok(out), (state, next, false, permit)))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_bucket_bound() {
        static BOUNDS: [Duration; 3] = [
            Duration::from_millis(1),
            Duration::from_millis(5),
            Duration::from_millis(10),
        ];
        let histogram = |counts: Vec<u64>| HistogramSnapshot {
            bounds: &BOUNDS,
            count: counts.iter().sum(),
            counts,
            sum: Duration::from_millis(200),
        };
        let l = histogram(vec![50, 49, 1, 0]);
        assert_eq!(bucket_bound_ms(&l, 0.5), Some(1.0));
        assert_eq!(bucket_bound_ms(&l, 0.99), Some(5.0));
        assert_eq!(bucket_bound_ms(&l, 1.0), Some(10.0));
        assert_eq!(bucket_bound_ms(&histogram(vec![0; 4]), 0.5), None);
    }
}
