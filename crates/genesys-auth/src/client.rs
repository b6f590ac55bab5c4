//! The authenticated Genesys Cloud API client: token cache, retries, pacing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::error::{Error, Result};
use crate::limiter::RateLimiter;
use crate::proxy::ProxySettings;
use crate::region::Endpoints;
use crate::tls::TlsRoots;

/// How a [`GenesysClient`] is set up. Every setting but the endpoints and credentials has a
/// default; call [`validate`](AuthConfig::validate) (done by [`GenesysClient::new`]).
#[derive(Clone, Debug)]
pub struct AuthConfig {
    endpoints: Endpoints,
    client_id: String,
    client_secret: SecretString,
    refresh_margin: Duration,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_cap: Duration,
    retry_after_cap: Duration,
    timeout: Duration,
    max_body_bytes: u64,
    requests_per_minute: u32,
    proxy: ProxySettings,
    tls_roots: TlsRoots,
}

impl AuthConfig {
    /// A configuration for an OAuth client-credentials client.
    pub fn new(
        endpoints: Endpoints,
        client_id: impl Into<String>,
        client_secret: SecretString,
    ) -> AuthConfig {
        AuthConfig {
            endpoints,
            client_id: client_id.into(),
            client_secret,
            refresh_margin: Duration::from_secs(60),
            max_attempts: 5,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            retry_after_cap: Duration::from_secs(180),
            timeout: Duration::from_secs(30),
            max_body_bytes: 32 << 20,
            requests_per_minute: 300,
            proxy: ProxySettings::from_env(),
            tls_roots: TlsRoots::bundled(),
        }
    }

    /// Get a new token this long before the current one expires (at most half its lifetime).
    /// By default, 60 seconds.
    pub fn refresh_margin(mut self, margin: Duration) -> AuthConfig {
        self.refresh_margin = margin;
        self
    }

    /// Attempts per request when rate limited (429), on 502/503/504 and on network errors.
    /// By default, 5.
    pub fn max_attempts(mut self, attempts: u32) -> AuthConfig {
        self.max_attempts = attempts;
        self
    }

    /// Exponential backoff with full jitter between retries of 5xx and network errors: a
    /// random wait up to `min(cap, base * 2^attempt)`. By default, 500 ms and 30 seconds.
    pub fn backoff(mut self, base: Duration, cap: Duration) -> AuthConfig {
        self.backoff_base = base;
        self.backoff_cap = cap;
        self
    }

    /// The longest `Retry-After` honoured; a longer one is waited for only this long, with a
    /// warning. Genesys's own SDKs stop at 180 s. By default, 180 seconds.
    pub fn retry_after_cap(mut self, cap: Duration) -> AuthConfig {
        self.retry_after_cap = cap;
        self
    }

    /// Timeout of one HTTP exchange, body included. By default, 30 seconds.
    pub fn timeout(mut self, timeout: Duration) -> AuthConfig {
        self.timeout = timeout;
        self
    }

    /// Largest response body accepted. By default, 32 MiB.
    pub fn max_body_bytes(mut self, bytes: u64) -> AuthConfig {
        self.max_body_bytes = bytes;
        self
    }

    /// Client-side pacing: no 60-second window holds more requests than this (0 disables
    /// pacing). Genesys allows 300 per token by default. By default, 300.
    pub fn requests_per_minute(mut self, per_minute: u32) -> AuthConfig {
        self.requests_per_minute = per_minute;
        self
    }

    /// Which proxy each request goes through. By default, the environment's
    /// ([`ProxySettings::from_env`]: `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY` and their
    /// lowercase forms, as curl reads them).
    pub fn proxy(mut self, proxy: ProxySettings) -> AuthConfig {
        self.proxy = proxy;
        self
    }

    /// Which certificate authorities TLS trusts. By default, only the bundled Mozilla roots
    /// ([`TlsRoots::bundled`]).
    pub fn tls_roots(mut self, roots: TlsRoots) -> AuthConfig {
        self.tls_roots = roots;
        self
    }

    /// The endpoints in use.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        let bad = |option, reason: &str| {
            Err(Error::Config {
                option,
                reason: reason.to_owned(),
            })
        };
        if self.client_id.trim().is_empty() {
            return bad("client-id", "is empty (set GENESYS_CLIENT_ID)");
        }
        if self.client_secret.expose_secret().is_empty() {
            return bad("client-secret", "is empty (set GENESYS_CLIENT_SECRET)");
        }
        if self.max_attempts == 0 {
            return bad("max-attempts", "must be at least 1");
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be more than zero");
        }
        self.proxy.validate()
    }
}

/// An OAuth access token. Its value never prints (`Debug` shows `[REDACTED]`).
#[derive(Clone, Debug)]
pub struct AccessToken {
    secret: SecretString,
    expires_at: Instant,
    refresh_at: Instant,
}

impl AccessToken {
    /// The value for an `Authorization` header: `Bearer ...`.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.secret.expose_secret())
    }

    /// When the token expires (on tokio's clock).
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }
}

// `SecretString` has no `PartialEq` (on purpose); `invalidate` must tell the held token from
// a newer one, so the value is compared here, where it stays inside the crate.
impl PartialEq for AccessToken {
    fn eq(&self, other: &AccessToken) -> bool {
        self.expires_at == other.expires_at
            && self.refresh_at == other.refresh_at
            && self.secret.expose_secret() == other.secret.expose_secret()
    }
}

impl Eq for AccessToken {}

/// The client's token as readiness sees it, from [`GenesysClient::token_state`]: read at
/// once, never waiting for a token request, however long that one retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenState {
    /// Whether a token is held and had not expired when this was read.
    pub valid: bool,
    /// When the held token expires (on tokio's clock); `None` when no token is held.
    pub expires_at: Option<Instant>,
    /// Whether a token request is under way, its retries and backoff included.
    pub requesting: bool,
}

/// Counters of what the client has seen, for metrics. Cheap to read at any time.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Requests sent (each attempt counts).
    pub requests: AtomicU64,
    /// Tokens obtained.
    pub token_refreshes: AtomicU64,
    /// 401 answers to API calls (each followed by one refresh and retry).
    pub unauthorized: AtomicU64,
    /// 429 answers.
    pub rate_limited: AtomicU64,
    /// 5xx answers.
    pub server_errors: AtomicU64,
    /// Network failures.
    pub transport_errors: AtomicU64,
    /// Retries made.
    pub retries: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Marks a token request as under way for as long as it lives, so that a request whose
/// future is dropped (a caller cancelled) is not reported as running forever.
struct RequestUnderWay<'a>(&'a AtomicBool);

impl<'a> RequestUnderWay<'a> {
    fn start(flag: &'a AtomicBool) -> RequestUnderWay<'a> {
        flag.store(true, Ordering::Relaxed);
        RequestUnderWay(flag)
    }
}

impl Drop for RequestUnderWay<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// The HTTP methods the Genesys API uses here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// A successful (2xx) response.
#[derive(Clone, Debug)]
pub struct ApiResponse {
    /// The HTTP status.
    pub status: u16,
    /// The body (empty for HEAD).
    pub body: Vec<u8>,
}

impl ApiResponse {
    /// Parses the body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.body)
    }
}

/// A raw answer from the blocking worker.
struct RawResponse {
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

struct Inner {
    config: AuthConfig,
    /// For the API's origin and for the login origin: each has its own proxy decision.
    api_agent: ureq::Agent,
    login_agent: ureq::Agent,
    /// The token held. Only ever locked to read or store it, never across a request, so that
    /// readiness ([`GenesysClient::token_state`]) can read it while a token request retries.
    token: parking_lot::Mutex<Option<AccessToken>>,
    /// Held by the one token request under way (always in a task of its own, never in a
    /// caller's future: see [`GenesysClient::token`]): the others wait here, then take the
    /// token it stored.
    token_request: tokio::sync::Mutex<()>,
    /// Whether a token request is under way (see [`RequestUnderWay`]).
    requesting: AtomicBool,
    limiter: RateLimiter,
    stats: ClientStats,
}

/// A Genesys Cloud API client: gets and caches the OAuth token, refreshes it ahead of expiry
/// and once on 401, paces requests, honours `Retry-After` on 429 and retries 502/503/504 and
/// network errors with backoff. Cheap to clone; clones share the token and the pacing.
///
/// HTTP runs on blocking threads (`spawn_blocking`), never on the runtime's workers; waits
/// use tokio's clock, so tests can pause time.
#[derive(Clone)]
pub struct GenesysClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GenesysClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenesysClient")
            .field("endpoints", &self.inner.config.endpoints)
            .field("client_id", &self.inner.config.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

impl GenesysClient {
    /// A client; no request is made until one is needed.
    pub fn new(config: AuthConfig) -> Result<GenesysClient> {
        config.validate()?;
        let api_agent = agent(&config, config.endpoints.api_base())?;
        let login_agent = agent(&config, config.endpoints.login_base())?;
        Ok(GenesysClient {
            inner: Arc::new(Inner {
                limiter: RateLimiter::new(config.requests_per_minute),
                api_agent,
                login_agent,
                token: parking_lot::Mutex::new(None),
                token_request: tokio::sync::Mutex::new(()),
                requesting: AtomicBool::new(false),
                stats: ClientStats::default(),
                config,
            }),
        })
    }

    /// The endpoints this client talks to.
    pub fn endpoints(&self) -> &Endpoints {
        &self.inner.config.endpoints
    }

    /// What the client has seen so far.
    pub fn stats(&self) -> &ClientStats {
        &self.inner.stats
    }

    /// A valid token: the cached one, or a new one when it is missing or within the refresh
    /// margin of expiry. Concurrent callers share one token request.
    ///
    /// The request runs in a task of its own, which holds the lock that lets only one run at a
    /// time: had the caller's future held it, a caller that stopped polling that future
    /// (parked beside a `select!`, say) would keep every other caller waiting for good (a
    /// futurelock). Dropping the call cancels its request, as it did when the request ran in
    /// the caller's future.
    pub async fn token(&self) -> Result<AccessToken> {
        if let Some(token) = self.fresh_token() {
            return Ok(token);
        }
        let client = self.clone();
        let request =
            AbortOnDropHandle::new(tokio::spawn(async move { client.request_token().await }));
        match request.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::Worker(format!(
                "the token request was cancelled: {e}"
            ))),
        }
    }

    /// [`token`](Self::token)'s request, one at a time: a request that ran while this one
    /// waited may have stored a fresh token already.
    async fn request_token(&self) -> Result<AccessToken> {
        let _one_request = self.inner.token_request.lock().await;
        if let Some(token) = self.fresh_token() {
            return Ok(token);
        }
        let _under_way = RequestUnderWay::start(&self.inner.requesting);
        let token = self.fetch_token().await?;
        *self.inner.token.lock() = Some(token.clone());
        Ok(token)
    }

    /// The held token, unless it is missing or within the refresh margin of expiry.
    fn fresh_token(&self) -> Option<AccessToken> {
        self.inner
            .token
            .lock()
            .as_ref()
            .filter(|t| Instant::now() < t.refresh_at)
            .cloned()
    }

    /// Whether a token is held and not expired, and whether a token request is under way.
    /// Never waits, not even while a token request retries with backoff: for readiness.
    pub fn token_state(&self) -> TokenState {
        let expires_at = self.inner.token.lock().as_ref().map(|t| t.expires_at);
        TokenState {
            valid: expires_at.is_some_and(|at| at > Instant::now()),
            expires_at,
            requesting: self.inner.requesting.load(Ordering::Relaxed),
        }
    }

    /// Whether a token is held and not expired (for readiness): [`token_state`]'s `valid`.
    /// Answers at once, never waiting for a token request.
    ///
    /// [`token_state`]: GenesysClient::token_state
    pub async fn has_valid_token(&self) -> bool {
        self.token_state().valid
    }

    /// Forgets `stale` so that the next call gets a new token (after a 401). A newer token
    /// already fetched by someone else is kept.
    pub async fn invalidate(&self, stale: &AccessToken) {
        let mut held = self.inner.token.lock();
        if held.as_ref() == Some(stale) {
            *held = None;
        }
    }

    async fn fetch_token(&self) -> Result<AccessToken> {
        let config = &self.inner.config;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            config.client_id,
            config.client_secret.expose_secret()
        ));
        let url = config.endpoints.token_url();
        let started = Instant::now();
        let raw = self
            .send_with_retries(Origin::Login, Method::Post, "/oauth/token", move |agent| {
                agent
                    .post(&url)
                    .header("Authorization", &format!("Basic {basic}"))
                    .send_form([("grant_type", "client_credentials")])
            })
            .await?;
        if !(200..300).contains(&raw.status) {
            let body: ErrorBody = serde_json::from_slice(&raw.body).unwrap_or_default();
            return Err(Error::Token {
                status: raw.status,
                error: body.error.unwrap_or_else(|| summarize(&raw.body)),
                description: body.error_description.or(body.description),
            });
        }
        let token = token_from_body(&raw.body, started, config.refresh_margin)?;
        bump(&self.inner.stats.token_refreshes);
        log::info!(
            "obtained a Genesys access token valid for {}s from {}",
            token
                .expires_at
                .saturating_duration_since(started)
                .as_secs(),
            config.endpoints.login_base()
        );
        Ok(token)
    }

    /// Sends an API request with the bearer token. On 401, gets a new token once and retries.
    /// Non-2xx answers other than those retried become [`Error::Api`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<ApiResponse> {
        let url = self.inner.config.endpoints.api_url(path)?;
        let path_only = path.split('?').next().unwrap_or(path).to_owned();
        let mut refreshed = false;
        loop {
            let token = self.token().await?;
            let bearer = token.bearer();
            let url = url.clone();
            let body = body.clone();
            let raw = self
                .send_with_retries(Origin::Api, method, &path_only, move |agent| {
                    send(agent, method, &url, &bearer, body.as_deref())
                })
                .await?;
            match raw.status {
                200..=299 => {
                    return Ok(ApiResponse {
                        status: raw.status,
                        body: raw.body,
                    });
                }
                401 if !refreshed => {
                    bump(&self.inner.stats.unauthorized);
                    log::info!(
                        "{} {path_only}: 401, getting a new token and retrying once",
                        method.as_str()
                    );
                    self.invalidate(&token).await;
                    refreshed = true;
                }
                status => return Err(api_error(method, &path_only, status, &raw.body)),
            }
        }
    }

    /// GET a JSON document.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let response = self.request(Method::Get, path, None).await?;
        response.json().map_err(|source| Error::Decode {
            method: "GET",
            path: path.split('?').next().unwrap_or(path).to_owned(),
            source,
        })
    }

    /// Sends one request through the pacer, retrying 429 (after `Retry-After`), 502/503/504
    /// and network errors. Returns the last answer of any other status.
    async fn send_with_retries<F>(
        &self,
        origin: Origin,
        method: Method,
        path: &str,
        call: F,
    ) -> Result<RawResponse>
    where
        F: Fn(&ureq::Agent) -> std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>
            + Send
            + Sync
            + 'static,
    {
        let config = &self.inner.config;
        let call = Arc::new(call);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // The rate limit is per token, on API calls: a token request spends none of it
            // (it has its own backoff on 429 and 5xx below).
            if origin == Origin::Api {
                self.inner.limiter.acquire().await;
            }
            bump(&self.inner.stats.requests);
            let agent = match origin {
                Origin::Api => self.inner.api_agent.clone(),
                Origin::Login => self.inner.login_agent.clone(),
            };
            let call = Arc::clone(&call);
            let max_body = config.max_body_bytes;
            let outcome = tokio::task::spawn_blocking(move || {
                let response = call(&agent)?;
                read(response, max_body)
            })
            .await
            .map_err(|e| Error::Worker(e.to_string()))?;

            let wait = match outcome {
                Ok(raw) if raw.status == 429 => {
                    bump(&self.inner.stats.rate_limited);
                    let asked = raw.retry_after.unwrap_or_else(|| backoff(config, attempt));
                    let wait = if asked > config.retry_after_cap {
                        log::warn!(
                            "{} {path}: rate limited with Retry-After {}s, more than the cap of {}s; waiting the cap",
                            method.as_str(),
                            asked.as_secs(),
                            config.retry_after_cap.as_secs()
                        );
                        config.retry_after_cap
                    } else {
                        asked
                    };
                    if attempt >= config.max_attempts {
                        return Err(exhausted(
                            method,
                            path,
                            attempt,
                            api_error(method, path, 429, &raw.body),
                        ));
                    }
                    log::debug!("{} {path}: 429, retrying in {wait:?}", method.as_str());
                    wait
                }
                Ok(raw) if matches!(raw.status, 502..=504) => {
                    bump(&self.inner.stats.server_errors);
                    if attempt >= config.max_attempts {
                        return Err(exhausted(
                            method,
                            path,
                            attempt,
                            api_error(method, path, raw.status, &raw.body),
                        ));
                    }
                    let wait = backoff(config, attempt);
                    log::debug!(
                        "{} {path}: HTTP {}, retrying in {wait:?}",
                        method.as_str(),
                        raw.status
                    );
                    wait
                }
                Ok(raw) => {
                    if raw.status >= 500 {
                        bump(&self.inner.stats.server_errors);
                    }
                    return Ok(raw);
                }
                Err(source) => {
                    bump(&self.inner.stats.transport_errors);
                    let err = Error::Transport {
                        method: method.as_str(),
                        path: path.to_owned(),
                        source: Box::new(source),
                    };
                    if attempt >= config.max_attempts {
                        return Err(exhausted(method, path, attempt, err));
                    }
                    let wait = backoff(config, attempt);
                    log::debug!("{err}; retrying in {wait:?}");
                    wait
                }
            };
            bump(&self.inner.stats.retries);
            tokio::time::sleep(wait).await;
        }
    }
}

/// Which of the two origins a request goes to. Requests never leave them: an absolute URL on
/// another origin is refused before it is sent ([`Error::ForeignUrl`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Api,
    Login,
}

/// The HTTP agent for one origin: its proxy decided once from the configuration (ureq's own
/// reading of the environment is never used, so REST and the WebSockets agree), trusting the
/// configured roots.
fn agent(config: &AuthConfig, base: &str) -> Result<ureq::Agent> {
    let proxy = match config.proxy.for_url(base) {
        Some(server) => {
            log::info!("requests to {base} go through the proxy {server}");
            let mut builder = ureq::Proxy::builder(ureq::ProxyProtocol::Http)
                .host(server.host())
                .port(server.port());
            if let Some(user) = server.username() {
                builder = builder.username(user);
            }
            if let Some(password) = server.password() {
                builder = builder.password(password.expose_secret());
            }
            Some(builder.build().map_err(|source| Error::Config {
                option: "proxy",
                reason: format!("{server}: {source}"),
            })?)
        }
        None => None,
    };
    let roots = if config.tls_roots.is_bundled_only() {
        ureq::tls::RootCerts::WebPki
    } else {
        let certificates = config.tls_roots.certificates()?;
        ureq::tls::RootCerts::from(
            certificates
                .iter()
                .map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned()),
        )
    };
    Ok(ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(config.timeout))
        .user_agent(concat!("presence-bridge/", env!("CARGO_PKG_VERSION")))
        .proxy(proxy)
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
        .build()
        .into())
}

fn send(
    agent: &ureq::Agent,
    method: Method,
    url: &str,
    bearer: &str,
    body: Option<&[u8]>,
) -> std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    match method {
        Method::Get => agent.get(url).header("Authorization", bearer).call(),
        Method::Head => agent.head(url).header("Authorization", bearer).call(),
        Method::Delete => agent.delete(url).header("Authorization", bearer).call(),
        Method::Post | Method::Put => {
            let request = if method == Method::Post {
                agent.post(url)
            } else {
                agent.put(url)
            };
            let request = request.header("Authorization", bearer);
            match body {
                Some(body) => request
                    .header("Content-Type", "application/json")
                    .send(body),
                None => request.send_empty(),
            }
        }
    }
}

fn read(
    mut response: ureq::http::Response<ureq::Body>,
    max_body: u64,
) -> std::result::Result<RawResponse, ureq::Error> {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response
        .body_mut()
        .with_config()
        .limit(max_body)
        .read_to_vec()?;
    Ok(RawResponse {
        status,
        retry_after,
        body,
    })
}

/// The longest token lifetime believed: Genesys's documented maximum, 48 hours. A longer
/// `expires_in` (a misconfigured proxy, a hostile answer) is taken as this, so that no
/// arithmetic on it can overflow and the token is refreshed at least every two days.
pub(crate) const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(172_800);

/// The lifetime assumed when a token response says none: Genesys's default, a day.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(86_400);

/// A token from a 2xx token response that arrived for a request sent at `started`: its
/// lifetime is `expires_in` (a day when absent), at most [`MAX_TOKEN_LIFETIME`]; it is
/// refreshed `margin` before it expires, but never sooner than half its lifetime.
fn token_from_body(body: &[u8], started: Instant, margin: Duration) -> Result<AccessToken> {
    let body: TokenBody = serde_json::from_slice(body).map_err(|source| Error::Decode {
        method: "POST",
        path: "/oauth/token".into(),
        source,
    })?;
    let lifetime = match body.expires_in {
        None => DEFAULT_TOKEN_LIFETIME,
        Some(secs) if secs > MAX_TOKEN_LIFETIME.as_secs() => {
            log::warn!(
                "the token endpoint gave a lifetime of {secs}s, more than Genesys's maximum of {}s; treating it as {}s",
                MAX_TOKEN_LIFETIME.as_secs(),
                MAX_TOKEN_LIFETIME.as_secs()
            );
            MAX_TOKEN_LIFETIME
        }
        Some(secs) => Duration::from_secs(secs),
    };
    let margin = margin.min(lifetime / 2);
    // `checked_add` on top of the cap: an `Instant` near the clock's end cannot panic either.
    let expires_at = started.checked_add(lifetime).unwrap_or(started);
    let refresh_at = expires_at.checked_sub(margin).unwrap_or(started);
    Ok(AccessToken {
        secret: SecretString::from(body.access_token),
        expires_at,
        refresh_at,
    })
}

/// Full jitter: a random wait in `0..=min(cap, base * 2^(attempt-1))`.
fn backoff(config: &AuthConfig, attempt: u32) -> Duration {
    let exp = config.backoff_base.saturating_mul(
        1u32.checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX),
    );
    let ceiling = exp.min(config.backoff_cap);
    ceiling.mul_f64(fastrand::f64())
}

fn exhausted(method: Method, path: &str, attempts: u32, last: Error) -> Error {
    Error::RetriesExhausted {
        method: method.as_str(),
        path: path.to_owned(),
        attempts,
        last: Box::new(last),
    }
}

fn api_error(method: Method, path: &str, status: u16, body: &[u8]) -> Error {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    Error::Api {
        method: method.as_str(),
        path: path.to_owned(),
        status,
        code: parsed.code.or(parsed.error),
        message: parsed
            .message
            .or(parsed.error_description)
            .unwrap_or_else(|| summarize(body)),
    }
}

/// A short, printable summary of a body that is not the JSON we expected.
fn summarize(body: &[u8]) -> String {
    if body.is_empty() {
        return "(empty body)".into();
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(160)]);
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if body.len() > 160 {
        format!("{clean}… ({} bytes)", body.len())
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever `expires_in` says, and whatever the body is, parsing never panics and the
        /// token's times are in order and within the cap.
        #[test]
        fn any_expires_in_gives_ordered_times(secs in any::<u64>(), margin_secs in any::<u64>()) {
            let started = Instant::now();
            let body = format!(r#"{{"access_token":"t","token_type":"bearer","expires_in":{secs}}}"#);
            let token = token_from_body(body.as_bytes(), started, Duration::from_secs(margin_secs))
                .expect("a valid body");
            let lifetime = token.expires_at - started;
            prop_assert!(lifetime <= MAX_TOKEN_LIFETIME);
            prop_assert_eq!(lifetime, Duration::from_secs(secs).min(MAX_TOKEN_LIFETIME));
            prop_assert!(started <= token.refresh_at && token.refresh_at <= token.expires_at);
            prop_assert!(token.refresh_at - started >= lifetime / 2);
        }

        #[test]
        fn any_body_is_a_token_or_an_error(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = token_from_body(&body, Instant::now(), Duration::from_secs(60));
        }

        #[test]
        fn numbers_of_any_shape_never_panic(
            number in prop_oneof![
                Just("-1".to_owned()),
                Just("1e400".to_owned()),
                Just("18446744073709551616".to_owned()),
                Just("3.5".to_owned()),
                Just("null".to_owned()),
                Just("\"3600\"".to_owned()),
                any::<i128>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|n| n.to_string()),
            ]
        ) {
            let body = format!(r#"{{"access_token":"t","expires_in":{number}}}"#);
            if let Ok(token) = token_from_body(body.as_bytes(), Instant::now(), Duration::from_secs(60)) {
                prop_assert!(token.refresh_at <= token.expires_at);
            }
        }
    }

    #[test]
    fn a_missing_expires_in_is_a_day_and_the_margin_applies() {
        let started = Instant::now();
        let token = token_from_body(br#"{"access_token":"t"}"#, started, Duration::from_secs(60))
            .expect("token");
        assert_eq!(token.expires_at - started, DEFAULT_TOKEN_LIFETIME);
        assert_eq!(token.expires_at - token.refresh_at, Duration::from_secs(60));
    }

    #[test]
    fn the_client_secret_and_the_token_never_print() {
        let endpoints =
            Endpoints::new("https://api.example", "https://login.example").expect("endpoints");
        let config = AuthConfig::new(endpoints, "id", SecretString::from("hunter2-client"));
        let token = token_from_body(
            br#"{"access_token":"hunter2-token"}"#,
            Instant::now(),
            Duration::from_secs(60),
        )
        .expect("token");
        let shown = format!("{config:?} {token:?} {:?}", Some(&token));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(config.client_secret.expose_secret(), "hunter2-client");
        assert_eq!(token.bearer(), "Bearer hunter2-token");
    }
}
