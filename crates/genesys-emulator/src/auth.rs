//! OAuth client credentials (`POST /oauth/token`), bearer-token checks, the per-token rate
//! limit, applied to every `/api/v2` call by [`api_guard`], and expiring every token at once
//! (the `expire_tokens` fault). The token table itself is `tokens.rs`.
//!
//! The rate limit is a fixed one-minute window per token: the window opens at the token's
//! first call after the previous window closed, and allows
//! [`rate_limit_per_minute`](crate::EmulatorConfig::rate_limit_per_minute) calls.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::time::Instant;

use crate::channels;
use crate::fault::Landed;
use crate::state::Shared;
use crate::tokens::{TokenEntry, unauthorized};
use crate::wire;

const WINDOW: Duration = Duration::from_secs(60);

/// The 401 for a request without `Authorization: Bearer`.
pub(crate) fn missing_token() -> Response {
    unauthorized(
        "authentication.required",
        "No authentication bearer token specified in authorization header.",
    )
    .into_response()
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Decodes standard base64 (padding optional); `None` on any invalid character.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let bytes = text.trim().trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let produced = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + produced]);
    }
    Some(out)
}

/// The `(id, secret)` of an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(decode_base64(encoded)?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "error": error,
            "description": description,
            "error_description": description,
        })),
    )
        .into_response()
}

/// `POST /oauth/token`: the client-credentials grant. Credentials come from Basic auth, or
/// from `client_id`/`client_secret` form fields.
pub(crate) async fn oauth_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let burst = shared.login_faults.lock().take();
    if let Some((kind, response)) = burst {
        shared.count_hit(kind, Landed::TokenRequest, 1);
        return response;
    }
    let mut grant_type = None;
    let mut form_id = None;
    let mut form_secret = None;
    for (key, value) in form_urlencoded::parse(&body) {
        match key.as_ref() {
            "grant_type" => grant_type = Some(value.into_owned()),
            "client_id" => form_id = Some(value.into_owned()),
            "client_secret" => form_secret = Some(value.into_owned()),
            _ => {}
        }
    }
    if grant_type.as_deref() != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    let credentials = basic_credentials(&headers).or(match (form_id, form_secret) {
        (Some(id), Some(secret)) => Some((id, secret)),
        _ => None,
    });
    let config = &shared.config;
    let Some(client) = credentials.and_then(|(id, secret)| shared.client_of(&id, &secret)) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "authentication failed",
        );
    };
    let token: Arc<str> = Arc::from(format!("emu-{}", shared.misc_rng.lock().hex(60)));
    let now = Instant::now();
    shared.tokens.lock().map.insert(
        token.clone(),
        TokenEntry {
            client_id: shared.clients[client].id.clone(),
            client,
            expires_at: now + config.token_lifetime,
            window_start: now,
            window_count: 0,
        },
    );
    shared
        .counters
        .tokens_issued
        .fetch_add(1, Ordering::Relaxed);
    if let Some(counters) = shared.client_counters(client) {
        counters.tokens_issued.fetch_add(1, Ordering::Relaxed);
    }
    axum::Json(json!({
        "access_token": &*token,
        "token_type": "bearer",
        "expires_in": config.token_lifetime.as_secs(),
    }))
    .into_response()
}

/// Expires every token now; returns how many were still live (a token that had already
/// expired, not yet swept, is not counted).
pub(crate) fn expire_all_tokens(shared: &Shared) -> usize {
    let now = Instant::now();
    let mut live = 0;
    let dead = {
        let mut tokens = shared.tokens.lock();
        for entry in tokens.map.values_mut() {
            if entry.expires_at > now {
                live += 1;
            }
            entry.expires_at = entry.expires_at.min(now);
        }
        tokens.sweep(now)
    };
    if shared.config.channels_close_with_token {
        let gone = shared.channels.lock().sweep(now, &dead);
        channels::close_expired(shared, gone);
    }
    live
}

/// Middleware of every `/api/v2` route: injected API faults, then the bearer token (401),
/// then the rate limit (429, or the `inin-ratelimit-*` headers on the response).
pub(crate) async fn api_guard(
    State(shared): State<Arc<Shared>>,
    mut request: Request,
    next: Next,
) -> Response {
    shared.counters.api_requests.fetch_add(1, Ordering::Relaxed);
    let burst = shared.api_faults.lock().take();
    if let Some((kind, response)) = burst {
        shared.count_hit(kind, Landed::ApiCall, 1);
        return response;
    }
    let Some(token) = bearer(request.headers()) else {
        return missing_token();
    };
    let now = Instant::now();
    let limit = shared.config.rate_limit_per_minute;
    let (caller, window) = {
        let mut tokens = shared.tokens.lock();
        let caller = match tokens.check(token, now) {
            Ok(caller) => caller,
            Err(error) => return error.into_response(),
        };
        let Some(entry) = tokens.map.get_mut(token) else {
            return missing_token();
        };
        let client = shared.client_counters(caller.client);
        if let Some(counters) = client {
            counters.api_requests.fetch_add(1, Ordering::Relaxed);
        }
        if now >= entry.window_start + WINDOW {
            entry.window_start = now;
            entry.window_count = 0;
        }
        let left = (entry.window_start + WINDOW).saturating_duration_since(now);
        let reset_secs = left.as_secs_f64().ceil().max(1.0) as u64;
        if limit > 0 && entry.window_count >= limit {
            drop(tokens);
            shared
                .counters
                .api_rate_limited
                .fetch_add(1, Ordering::Relaxed);
            if let Some(counters) = client {
                counters.api_rate_limited.fetch_add(1, Ordering::Relaxed);
            }
            return wire::too_many_requests(reset_secs);
        }
        entry.window_count += 1;
        (caller, (entry.window_count, reset_secs))
    };
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    if limit > 0 {
        let headers = response.headers_mut();
        headers.insert("inin-ratelimit-count", HeaderValue::from(window.0));
        headers.insert("inin-ratelimit-allowed", HeaderValue::from(limit));
        headers.insert("inin-ratelimit-reset", HeaderValue::from(window.1));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes() {
        assert_eq!(
            decode_base64("aWQ6c2VjcmV0").as_deref(),
            Some(&b"id:secret"[..])
        );
        assert_eq!(decode_base64("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(decode_base64("YWI").as_deref(), Some(&b"ab"[..]));
        assert_eq!(decode_base64("").as_deref(), Some(&b""[..]));
        assert!(decode_base64("a").is_none());
        assert!(decode_base64("!!!!").is_none());
    }

    #[test]
    fn headers_parse() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        assert!(basic_credentials(&headers).is_none());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic aWQ6c2VjcmV0"),
        );
        assert_eq!(bearer(&headers), None);
        assert_eq!(
            basic_credentials(&headers),
            Some(("id".to_owned(), "secret".to_owned()))
        );
    }
}
