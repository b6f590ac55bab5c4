//! The admin HTTP server: health, readiness, Prometheus metrics, the JSON query API, the
//! live dashboard and its event stream.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures_util::stream::Stream;
use presence_frame::{PresenceEvent, Status, UserId};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::state::AppState;

const DASHBOARD: &str = include_str!("dashboard.html");

/// The admin router over shared state.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/stats", get(stats))
        .route("/v1/presence", get(list_presence))
        .route("/v1/presence/{user_id}", get(one_presence))
        .route("/v1/events", get(events))
        .with_state(state)
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
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

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let mut waiting = Vec::new();
    if !state.client.has_valid_token().await {
        waiting.push(json!({"part": "genesys-token", "reason": "no valid OAuth token held"}));
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
    let kafka = state.kafka.snapshot();
    if !kafka.healthy {
        waiting.push(json!({"part": "kafka", "reason": kafka.last_error.unwrap_or_else(|| "no answer from the brokers yet".into())}));
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

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match crate::metrics::render(&state) {
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

async fn one_presence(State(state): State<Arc<AppState>>, Path(user_id): Path<String>) -> Response {
    let user: UserId = match user_id.parse() {
        Ok(user) => user,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match state.registry.get(user) {
        Some(event) => {
            Json(serde_json::to_value(PresenceView::of(&event)).unwrap_or_default()).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("no presence held for user {user}"),
        ),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    status: Option<String>,
    page: Option<usize>,
    page_size: Option<usize>,
}

const MAX_PAGE_SIZE: usize = 5_000;

async fn list_presence(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ListQuery>,
) -> Response {
    let page = query.page.unwrap_or(1).max(1);
    let page_size = query.page_size.unwrap_or(100);
    if page_size == 0 || page_size > MAX_PAGE_SIZE {
        return error(
            StatusCode::BAD_REQUEST,
            format!("pageSize must be 1 to {MAX_PAGE_SIZE}"),
        );
    }
    let wanted = match query.status.as_deref() {
        None | Some("") => None,
        Some(text) => match Status::from_system_presence(text) {
            s if s == Status::UNKNOWN && !text.eq_ignore_ascii_case("unknown") => {
                return error(StatusCode::BAD_REQUEST, format!("unknown status {text:?}"));
            }
            s => Some(s),
        },
    };
    let mut all = Vec::new();
    state.registry.for_each(|event| {
        if wanted.is_none_or(|s| event.state.status == s) {
            all.push(event.clone());
        }
    });
    all.sort_unstable_by_key(|e| e.user);
    let total = all.len();
    let start = (page - 1).saturating_mul(page_size).min(total);
    let end = (start + page_size).min(total);
    let entities: Vec<PresenceView> = all[start..end].iter().map(PresenceView::of).collect();
    Json(json!({
        "entities": entities,
        "page": page,
        "pageSize": page_size,
        "total": total,
        "nextPage": (end < total).then_some(page + 1),
    }))
    .into_response()
}

async fn stats(State(state): State<Arc<AppState>>) -> Response {
    Json(stats_json(&state)).into_response()
}

/// What `/v1/stats` and the dashboard's `stats` events carry.
pub fn stats_json(state: &AppState) -> serde_json::Value {
    let counts = state.registry.counts_by_status();
    let by_status: BTreeMap<String, u64> = counts.iter().map(|(s, n)| (s.to_string(), n)).collect();
    let sync = state.sync.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let kafka = state.kafka.snapshot();
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
        "expired": load(&state.expired),
        "kafka": {
            "healthy": kafka.healthy,
            "lastError": kafka.last_error,
            "enqueued": kafka.enqueued,
            "delivered": kafka.delivered,
            "coalesced": kafka.coalesced,
            "failed": kafka.failed,
            "queueDepth": kafka.queue_depth,
            "latencyMs": {
                "p50": kafka.latency.percentile_ms(0.50),
                "p99": kafka.latency.percentile_ms(0.99),
            },
        },
        "channels": channels,
        "ready": state.sync.is_ready() && kafka.healthy,
        "uptimeSeconds": state.started.elapsed().as_secs(),
    })
}

/// Server-sent events for the dashboard: every second a `stats` event, the users changed
/// since the last one (`changes`, their current state), and the users expired (`expired`).
async fn events(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let stream = event_stream(state);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
}

fn event_stream(state: Arc<AppState>) -> impl Stream<Item = Result<String, Infallible>> {
    let cursor = state.recent.lock().cursor();
    futures_util::stream::unfold((state, cursor, true), |(state, cursor, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let (changed, expired, next) = state.recent.lock().since(cursor);
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
        Some((Ok(out), (state, next, false)))
    })
}
