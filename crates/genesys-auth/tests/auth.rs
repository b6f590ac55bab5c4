//! genesys-auth against the emulator over real loopback HTTP: the token flow and its cache,
//! refresh ahead of expiry, 401 then refresh once, 429 with Retry-After, 5xx with backoff,
//! pacing, and secrets kept out of every printed form.

use std::sync::atomic::Ordering;
use std::time::Duration;

use genesys_auth::{AuthConfig, Endpoints, Error, GenesysClient, Method, SecretString};
use genesys_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use tokio::time::Instant;

async fn emulator(config: EmulatorConfig) -> EmulatorHandle {
    Emulator::start(
        config.change_rate(0.0),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("emulator starts")
}

fn config_for(emulator: &EmulatorHandle) -> AuthConfig {
    let base = emulator.base_url();
    let endpoints = Endpoints::new(&base, &base).expect("endpoints");
    AuthConfig::new(
        endpoints,
        emulator.client_id(),
        SecretString::from(emulator.client_secret()),
    )
    .backoff(Duration::from_millis(10), Duration::from_millis(100))
}

fn client(emulator: &EmulatorHandle) -> GenesysClient {
    GenesysClient::new(config_for(emulator)).expect("client")
}

#[tokio::test]
async fn token_is_fetched_once_and_cached() {
    let emulator = emulator(EmulatorConfig::default().users(10)).await;
    let client = client(&emulator);
    let first = client.token().await.expect("token");
    let second = client.token().await.expect("token");
    assert_eq!(first, second);
    assert_eq!(client.stats().token_refreshes.load(Ordering::Relaxed), 1);
    let users: serde_json::Value = client
        .get_json("/api/v2/users?pageSize=5")
        .await
        .expect("users");
    assert_eq!(users["entities"].as_array().map(Vec::len), Some(5));
    assert!(client.has_valid_token().await);
}

#[tokio::test]
async fn wrong_credentials_are_a_clear_error_without_the_secret() {
    let emulator = emulator(EmulatorConfig::default().users(1)).await;
    let base = emulator.base_url();
    let endpoints = Endpoints::new(&base, &base).expect("endpoints");
    let config = AuthConfig::new(
        endpoints,
        emulator.client_id(),
        SecretString::from("not-the-secret-xyz"),
    );
    let client = GenesysClient::new(config.clone()).expect("client");
    let err = client.token().await.expect_err("refused");
    assert_eq!(err.status(), Some(401));
    assert!(!err.is_transient());
    let text = format!("{err} {err:?} {client:?} {config:?}");
    assert!(text.contains("401"), "{text}");
    assert!(
        matches!(&err, Error::Token { error, .. } if !error.is_empty()),
        "{err:?}"
    );
    assert!(
        !text.contains("not-the-secret-xyz"),
        "secret leaked: {text}"
    );
}

#[tokio::test]
async fn tokens_never_print() {
    let emulator = emulator(EmulatorConfig::default().users(1)).await;
    let client = client(&emulator);
    let token = client.token().await.expect("token");
    let bearer = token.bearer();
    let raw = bearer.trim_start_matches("Bearer ");
    assert!(!raw.is_empty());
    assert!(!format!("{token:?}").contains(raw));
}

#[tokio::test]
async fn an_api_call_without_a_valid_token_is_401_then_refreshed_once() {
    let emulator = emulator(EmulatorConfig::default().users(3)).await;
    let client = client(&emulator);
    client.token().await.expect("token");
    assert!(emulator.expire_tokens().expect("fault") >= 1);
    let users: serde_json::Value = client
        .get_json("/api/v2/users")
        .await
        .expect("retried with a new token");
    assert_eq!(users["entities"].as_array().map(Vec::len), Some(3));
    assert_eq!(client.stats().unauthorized.load(Ordering::Relaxed), 1);
    assert_eq!(client.stats().token_refreshes.load(Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn token_is_refreshed_ahead_of_expiry() {
    let emulator = emulator(
        EmulatorConfig::default()
            .users(1)
            .token_lifetime(Duration::from_secs(300)),
    )
    .await;
    let client = GenesysClient::new(config_for(&emulator).refresh_margin(Duration::from_secs(60)))
        .expect("client");
    let first = client.token().await.expect("token");
    tokio::time::advance(Duration::from_secs(230)).await;
    assert_eq!(
        client.token().await.expect("token"),
        first,
        "still well within its life"
    );
    tokio::time::advance(Duration::from_secs(15)).await; // 245 s: inside the 60 s margin
    let second = client.token().await.expect("token");
    assert_ne!(second, first);
    assert!(second.expires_at() > first.expires_at());
    // The old one was still valid when replaced: no call ever saw a 401.
    let _: serde_json::Value = client.get_json("/api/v2/users").await.expect("users");
    assert_eq!(client.stats().unauthorized.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn rate_limited_calls_wait_for_retry_after() {
    let emulator = emulator(EmulatorConfig::default().users(2)).await;
    let client = client(&emulator);
    client.token().await.expect("token");
    emulator.rate_limit_burst(2, 7).expect("fault");
    let started = Instant::now();
    let _: serde_json::Value = client
        .get_json("/api/v2/users")
        .await
        .expect("succeeds after the burst");
    assert!(
        started.elapsed() >= Duration::from_secs(14),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(client.stats().rate_limited.load(Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_over_the_cap_is_capped() {
    let emulator = emulator(EmulatorConfig::default().users(2)).await;
    let client = GenesysClient::new(config_for(&emulator).retry_after_cap(Duration::from_secs(5)))
        .expect("client");
    client.token().await.expect("token");
    emulator.rate_limit_burst(1, 600).expect("fault");
    let started = Instant::now();
    let _: serde_json::Value = client.get_json("/api/v2/users").await.expect("succeeds");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(60),
        "waited {waited:?}"
    );
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let emulator = emulator(EmulatorConfig::default().users(2)).await;
    let client = client(&emulator);
    client.token().await.expect("token");
    emulator.server_error_burst(3, 503).expect("fault");
    let _: serde_json::Value = client
        .get_json("/api/v2/users")
        .await
        .expect("succeeds after the burst");
    assert_eq!(client.stats().server_errors.load(Ordering::Relaxed), 3);
    assert_eq!(client.stats().retries.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn endless_failures_give_up_with_the_status() {
    let emulator = emulator(EmulatorConfig::default().users(2)).await;
    let client = GenesysClient::new(config_for(&emulator).max_attempts(3)).expect("client");
    client.token().await.expect("token");
    emulator.server_error_burst(10, 502).expect("fault");
    let err = client
        .request(Method::Get, "/api/v2/users", None)
        .await
        .expect_err("gives up");
    assert!(
        matches!(err, Error::RetriesExhausted { attempts: 3, .. }),
        "{err}"
    );
    assert_eq!(err.status(), Some(502));
    assert!(err.is_transient());
}

#[tokio::test]
async fn api_errors_carry_status_and_genesys_text() {
    let emulator = emulator(EmulatorConfig::default().users(2)).await;
    let client = client(&emulator);
    let ids: Vec<String> = (0..51)
        .map(|i| format!("00000000-0000-0000-0000-{i:012}"))
        .collect();
    let path = format!(
        "/api/v2/users/presences/purecloud/bulk?id={}",
        ids.join(",")
    );
    let err = client
        .request(Method::Get, &path, None)
        .await
        .expect_err("51 ids");
    assert_eq!(err.status(), Some(400));
    let text = err.to_string();
    assert!(
        text.contains("400") && text.contains("/api/v2/users/presences/purecloud/bulk"),
        "{text}"
    );
    assert!(
        !text.contains("00000000-0000-0000-0000-000000000050"),
        "query kept out of errors: {text}"
    );
}

#[tokio::test]
async fn nothing_listens_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let base = format!("http://{addr}");
    let config = AuthConfig::new(
        Endpoints::new(&base, &base).expect("endpoints"),
        "id",
        SecretString::from("s"),
    )
    .max_attempts(2)
    .backoff(Duration::from_millis(1), Duration::from_millis(5));
    let err = GenesysClient::new(config)
        .expect("client")
        .token()
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, Error::RetriesExhausted { last, .. } if matches!(**last, Error::Transport { .. })),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn pacing_keeps_us_under_the_rate_limit() {
    let emulator = emulator(EmulatorConfig::default().users(5).rate_limit_per_minute(60)).await;
    let client = GenesysClient::new(config_for(&emulator).requests_per_minute(60)).expect("client");
    for _ in 0..80 {
        let _: serde_json::Value = client
            .get_json("/api/v2/users?pageSize=1")
            .await
            .expect("paced, never 429");
    }
    assert_eq!(client.stats().rate_limited.load(Ordering::Relaxed), 0);
}

#[test]
fn config_is_validated() {
    let endpoints = Endpoints::new("http://a", "http://b").expect("endpoints");
    let err = GenesysClient::new(AuthConfig::new(
        endpoints.clone(),
        "",
        SecretString::from("s"),
    ))
    .expect_err("no id");
    assert!(err.to_string().contains("client-id"));
    let err = GenesysClient::new(AuthConfig::new(endpoints, "id", SecretString::from("")))
        .expect_err("no secret");
    assert!(err.to_string().contains("client-secret"));
}

/// Waits (on the paused clock) until the token endpoint has answered at least one 5xx, so
/// that the token request spawned before is retrying.
async fn until_a_token_request_is_retrying(client: &GenesysClient) {
    while client.stats().server_errors.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Readiness asks `has_valid_token` while a token request is failing and retrying with
/// backoff: the answer must come on the first poll (a zero timeout), with no time passing,
/// whether a still valid token is held (refresh ahead of expiry) or none is.
#[tokio::test(start_paused = true)]
async fn the_token_state_answers_at_once_while_a_token_request_retries() {
    let emulator = emulator(
        EmulatorConfig::default()
            .users(1)
            .token_lifetime(Duration::from_secs(300)),
    )
    .await;
    let client = GenesysClient::new(
        config_for(&emulator)
            .refresh_margin(Duration::from_secs(60))
            .max_attempts(u32::MAX),
    )
    .expect("client");
    let held = client.token().await.expect("token");
    // Inside the refresh margin: the next call asks for a new token, which keeps failing.
    tokio::time::advance(Duration::from_secs(250)).await;
    emulator.login_error_burst(100_000, 503).expect("fault");
    let refresh = tokio::spawn({
        let client = client.clone();
        async move { client.token().await }
    });
    until_a_token_request_is_retrying(&client).await;

    let asked = Instant::now();
    let valid = tokio::time::timeout(Duration::ZERO, client.has_valid_token())
        .await
        .expect("answers on the first poll, without waiting for the token request");
    assert!(valid, "the held token is valid for another 50 s");
    assert_eq!(asked.elapsed(), Duration::ZERO);
    assert!(!refresh.is_finished(), "the refresh is still retrying");
    let state = client.token_state();
    assert!(state.valid && state.requesting, "{state:?}");
    assert_eq!(state.expires_at, Some(held.expires_at()));

    // With no token at all (the held one refused by the API), the answer is "no", at once.
    client.invalidate(&held).await;
    let valid = tokio::time::timeout(Duration::ZERO, client.has_valid_token())
        .await
        .expect("answers on the first poll");
    assert!(!valid);
    assert!(!refresh.is_finished(), "the refresh is still retrying");
    let state = client.token_state();
    assert!(!state.valid && state.requesting, "{state:?}");
    assert_eq!(state.expires_at, None);

    // A token request whose caller gave up is no longer reported as under way.
    refresh.abort();
    assert!(refresh.await.is_err_and(|e| e.is_cancelled()));
    let state = client.token_state();
    assert!(!state.valid && !state.requesting, "{state:?}");
}

/// Once a retrying token request succeeds, the state shows the new token and no request.
#[tokio::test(start_paused = true)]
async fn the_token_state_follows_a_token_request_that_retried() {
    let emulator = emulator(EmulatorConfig::default().users(1)).await;
    let client = client(&emulator);
    let state = client.token_state();
    assert!(
        !state.valid && !state.requesting,
        "no token, no request: {state:?}"
    );
    emulator.login_error_burst(2, 503).expect("fault");
    let token = client.token().await.expect("a token after two 503s");
    assert_eq!(client.stats().server_errors.load(Ordering::Relaxed), 2);
    let state = client.token_state();
    assert!(state.valid && !state.requesting, "{state:?}");
    assert_eq!(state.expires_at, Some(token.expires_at()));
}

/// The rate limit is per token, on API calls: a token request spends none of the pacing.
/// With a budget of 5 a minute (a burst of 1, then one request per 17 s), the first API call
/// takes the burst; a new token then comes at once, and only the next API call waits.
#[tokio::test(start_paused = true)]
async fn token_requests_spend_none_of_the_pacing() {
    let emulator = emulator(EmulatorConfig::default().users(5)).await;
    let client = GenesysClient::new(config_for(&emulator).requests_per_minute(5)).expect("client");
    let _: serde_json::Value = client
        .get_json("/api/v2/users?pageSize=1")
        .await
        .expect("the burst");
    let held = client.token().await.expect("a token");
    client.invalidate(&held).await;
    let started = Instant::now();
    let fresh = client.token().await.expect("a new token");
    assert_ne!(fresh, held);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the token request waited {:?} for the pacing",
        started.elapsed()
    );
    let started = Instant::now();
    let _: serde_json::Value = client
        .get_json("/api/v2/users?pageSize=1")
        .await
        .expect("paced");
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "the API call after the burst is paced (waited {:?})",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_caller_no_longer_polled_does_not_hold_the_others_up() {
    // A futurelock: a caller whose future started the token request and then stopped being
    // polled (parked beside a `select!`, say) must not keep every other caller waiting. It
    // did while the request held an async lock in the caller's own future.
    let emulator = emulator(EmulatorConfig::default().users(1)).await;
    let client = client(&emulator);
    let mut parked = Box::pin(client.token());
    // Polled until it waits on the token request it started, then never again.
    assert!(
        futures_poll_once(&mut parked).await.is_none(),
        "the first poll cannot have a token yet"
    );
    let other = tokio::time::timeout(Duration::from_secs(10), client.token()).await;
    let token = other
        .expect("another caller got a token while the first was parked")
        .expect("token");
    assert_eq!(client.stats().token_refreshes.load(Ordering::Relaxed), 1);
    // The parked caller, polled again, has the same token.
    assert_eq!(parked.await.expect("token"), token);
}

/// Polls `future` once; its output if it was ready.
async fn futures_poll_once<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *future).poll(cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        })
    })
    .await
}
