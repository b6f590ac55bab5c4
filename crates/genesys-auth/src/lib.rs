//! Genesys Cloud OAuth (client credentials) and an API client that survives rate limits,
//! expiring tokens and transient failures.
//!
//! A short tour:
//! - [`Endpoints`]: the API and login hosts of an [`Environment`] from [`ENVIRONMENTS`]
//!   (`mypurecloud.com`, `mypurecloud.ie`, ...) or explicit base URLs (proxies, the emulator).
//! - [`AuthConfig`]: credentials and the retry, pacing and refresh settings, with defaults.
//! - [`GenesysClient`]: gets and caches the token (refreshed ahead of expiry, and once on a
//!   401), paces requests under the per-token rate limit, honours `Retry-After` on 429 (capped,
//!   with a warning) and retries 502/503/504 and network errors with exponential backoff and
//!   full jitter. HTTP is blocking (`ureq`) and runs on tokio's blocking threads. The bearer
//!   token goes only to the API's own origin: an absolute URL (a page's `nextUri`) on any
//!   other scheme, host or port is refused ([`Error::ForeignUrl`]). A token response's
//!   `expires_in` is believed up to Genesys's maximum of 48 hours, never beyond.
//! - [`SecretString`] (re-exported from the `secrecy` crate, with [`ExposeSecret`]) and
//!   [`AccessToken`]: the client secret and tokens never print (`Debug` shows `[REDACTED]`,
//!   there is no `Display`), so they stay out of logs and errors, and are wiped from memory
//!   when dropped.
//! - [`ClientStats`]: counters for metrics (token refreshes, 429s, retries, ...).
//! - [`TokenState`]: whether a valid token is held and a token request is under way, read
//!   without waiting ([`GenesysClient::token_state`]), even while that request retries: for
//!   readiness.
//! - [`ProxySettings`] and [`TlsRoots`]: behind a corporate proxy. Requests go through the
//!   proxy that `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` name (as curl reads them; the default),
//!   tunnelled with `CONNECT`, so the proxy sees only the host and port; TLS trusts the
//!   bundled Mozilla roots and, when asked, the operating system's store (a TLS-inspecting
//!   proxy's CA). `presence-sync`'s WebSockets use the same two settings.
//!
//! ```no_run
//! use genesys_auth::{AuthConfig, Endpoints, GenesysClient, SecretString};
//!
//! # async fn demo() -> Result<(), genesys_auth::Error> {
//! let endpoints = Endpoints::for_environment("mypurecloud.ie")?;
//! let secret = SecretString::from(std::env::var("GENESYS_CLIENT_SECRET").unwrap_or_default());
//! let client = GenesysClient::new(AuthConfig::new(endpoints, "my-client-id", secret))?;
//! let definitions: serde_json::Value = client.get_json("/api/v2/presence/definitions").await?;
//! println!("{definitions}");
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod client;
mod error;
mod limiter;
mod proxy;
mod region;
mod tls;

pub use client::{
    AccessToken, ApiResponse, AuthConfig, ClientStats, GenesysClient, Method, TokenState,
};
pub use error::{Error, Result};
pub use proxy::{ProxyServer, ProxySettings};
pub use region::{ENVIRONMENTS, Endpoints, Environment};
pub use secrecy::{ExposeSecret, SecretString};
pub use tls::TlsRoots;
