//! [`Tokens`]: every bearer token issued and not yet swept, with its expiry and its
//! rate-limit window, and the [`Caller`] a valid token stands for.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::http::StatusCode;
use tokio::time::Instant;

use crate::wire::ApiError;

/// Who is calling: put into each API request's extensions by the API guard (`auth.rs`).
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(crate) client_id: Arc<str>,
    /// The client's index in `Shared::clients`.
    pub(crate) client: usize,
    pub(crate) token: Arc<str>,
}

#[derive(Debug)]
pub(crate) struct TokenEntry {
    pub(crate) client_id: Arc<str>,
    /// The client's index in `Shared::clients`.
    pub(crate) client: usize,
    pub(crate) expires_at: Instant,
    pub(crate) window_start: Instant,
    pub(crate) window_count: u32,
}

/// Every token issued and not yet swept.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    pub(crate) map: HashMap<Arc<str>, TokenEntry>,
}

impl Tokens {
    /// Removes tokens expired by `now` and returns them.
    pub(crate) fn sweep(&mut self, now: Instant) -> HashSet<Arc<str>> {
        let dead: HashSet<Arc<str>> = self
            .map
            .iter()
            .filter(|(_, t)| t.expires_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for token in &dead {
            self.map.remove(token);
        }
        dead
    }

    /// The caller of a valid token, or the 401 to answer.
    pub(crate) fn check(&self, token: &str, now: Instant) -> Result<Caller, ApiError> {
        match self.map.get_key_value(token) {
            Some((key, entry)) if entry.expires_at > now => Ok(Caller {
                client_id: entry.client_id.clone(),
                client: entry.client,
                token: key.clone(),
            }),
            Some(_) => Err(unauthorized(
                "bad.credentials",
                "The access token has expired",
            )),
            None => Err(unauthorized("bad.credentials", "Invalid login credentials")),
        }
    }
}

pub(crate) fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}
