//! The Genesys REST calls a sync makes, and their bodies.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use genesys_auth::{AccessToken, GenesysClient, Method};
use presence_frame::{
    EventTime, GenesysPresence, Guid, PresenceDefinitionRef, PresenceEvent, Source, UserId,
    presence_topic,
};
use serde::Deserialize;
use tokio::time::Instant;

/// One page of users or group members.
#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow, default)]
    entities: Vec<UserEntity<'a>>,
    #[serde(rename = "nextUri", default)]
    next_uri: Option<String>,
}

#[derive(Deserialize)]
struct UserEntity<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    presence: Option<GenesysPresence<'a>>,
    #[serde(borrow, default)]
    groups: Option<Vec<GroupRef<'a>>>,
}

/// A group as `expand=groups` lists it under a user (`id`, `selfUri`).
#[derive(Deserialize)]
struct GroupRef<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
}

/// A user seen in a listing, with the presence event built from its `presence` and the
/// groups of its `groups` (each when the expand was asked for and came back).
pub(crate) struct Listed {
    pub(crate) user: Guid,
    pub(crate) presence: Option<PresenceEvent>,
    /// The user's groups (empty without `expand=groups`; ids that are no GUID skipped).
    pub(crate) groups: Vec<Guid>,
}

/// Walks every page of a listing (`/api/v2/users?...` or `/api/v2/groups/{id}/members?...`),
/// following `nextUri`, and calls `each` per user. Returns how many users had a presence
/// that could not be decoded (counted, skipped).
pub(crate) async fn walk_pages(
    client: &GenesysClient,
    first: String,
    mut each: impl FnMut(Listed),
) -> genesys_auth::Result<usize> {
    let mut next = Some(first);
    let mut bad = 0;
    let mut pages = 0usize;
    while let Some(uri) = next.take() {
        pages += 1;
        if pages > 100_000 {
            log::warn!("stopping a listing after {pages} pages: nextUri never ends");
            break;
        }
        let response = client.request(Method::Get, &uri, None).await?;
        let received = EventTime::now();
        let page: Page<'_> = serde_json::from_slice(&response.body).map_err(|source| {
            genesys_auth::Error::Decode {
                method: "GET",
                path: uri.split('?').next().unwrap_or(&uri).to_owned(),
                source,
            }
        })?;
        for entity in &page.entities {
            let Some(user) = Guid::parse(&entity.id) else {
                bad += 1;
                continue;
            };
            let presence = match &entity.presence {
                Some(p) if p.presence_definition.is_some() => {
                    match p.to_event(UserId::Genesys(user), received, Source::Resync) {
                        Ok(event) => Some(event),
                        Err(e) => {
                            log::debug!("user {user}: presence skipped: {e}");
                            bad += 1;
                            None
                        }
                    }
                }
                _ => None,
            };
            let groups = entity
                .groups
                .iter()
                .flatten()
                .filter_map(|g| Guid::parse(&g.id))
                .collect();
            each(Listed {
                user,
                presence,
                groups,
            });
        }
        next = page.next_uri.filter(|n| !n.is_empty());
    }
    Ok(bad)
}

/// The first page of all active users, with their presence and/or their groups.
pub(crate) fn users_uri(page_size: usize, with_presence: bool, with_groups: bool) -> String {
    let expand = match (with_presence, with_groups) {
        // Repeated, as the SDKs send an array parameter (`collectionFormat: multi`).
        (true, true) => "&expand=presence&expand=groups",
        (true, false) => "&expand=presence",
        (false, true) => "&expand=groups",
        (false, false) => "",
    };
    format!("/api/v2/users?pageSize={page_size}&pageNumber=1&state=active{expand}")
}

/// The first page of a group's members.
pub(crate) fn members_uri(group: Guid, page_size: usize, with_presence: bool) -> String {
    let expand = if with_presence {
        "&expand=presence"
    } else {
        ""
    };
    format!("/api/v2/groups/{group}/members?pageSize={page_size}&pageNumber=1{expand}")
}

/// A bulk presence item: a user id beside the usual presence fields. (Spelled out rather
/// than `#[serde(flatten)]`, which cannot borrow.)
#[derive(Deserialize)]
struct BulkItem<'a> {
    #[serde(rename = "userId", borrow)]
    user_id: std::borrow::Cow<'a, str>,
    #[serde(rename = "presenceDefinition", borrow, default)]
    presence_definition: Option<PresenceDefinitionRef<'a>>,
    #[serde(borrow, default)]
    message: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "modifiedDate", borrow, default)]
    modified_date: Option<std::borrow::Cow<'a, str>>,
}

/// Presence of up to 50 users (`/api/v2/users/presences/purecloud/bulk`).
pub(crate) async fn bulk_presence(
    client: &GenesysClient,
    users: &[Guid],
) -> genesys_auth::Result<(Vec<PresenceEvent>, usize)> {
    debug_assert!(users.len() <= 50);
    let ids: Vec<String> = users.iter().map(Guid::to_string).collect();
    let path = format!(
        "/api/v2/users/presences/purecloud/bulk?id={}",
        ids.join(",")
    );
    let response = client.request(Method::Get, &path, None).await?;
    let received = EventTime::now();
    let items: Vec<BulkItem<'_>> =
        serde_json::from_slice(&response.body).map_err(|source| genesys_auth::Error::Decode {
            method: "GET",
            path: "/api/v2/users/presences/purecloud/bulk".into(),
            source,
        })?;
    let mut bad = 0;
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        let presence = GenesysPresence {
            presence_definition: item.presence_definition,
            message: item.message,
            modified_date: item.modified_date,
        };
        let event = Guid::parse(&item.user_id).ok_or(()).and_then(|g| {
            presence
                .to_event(UserId::Genesys(g), received, Source::Resync)
                .map_err(|_| ())
        });
        match event {
            Ok(event) => events.push(event),
            Err(()) => bad += 1,
        }
    }
    Ok((events, bad))
}

/// A notification channel as the API describes it.
#[derive(Clone, Debug)]
pub(crate) struct Channel {
    pub(crate) id: String,
    pub(crate) connect_uri: String,
    /// When the channel itself expires, on tokio's clock: its creation or its last
    /// subscription plus its lifetime.
    pub(crate) expires_at: Instant,
    /// When the token that created it expires: the channel dies then, whatever its own
    /// expiry (genesys-api.md). Whether a later subscription with a newer token moves this is
    /// not confirmed, so the client assumes it does not.
    pub(crate) token_expires_at: Instant,
    /// Its lifetime, as its `expires` said at creation: how long a subscription extends it,
    /// and what sizes the margin before its end.
    pub(crate) lifetime: Duration,
    /// The users its last full subscription and later additions asked for, and the version
    /// of the channel's user list they came from (`None` until subscribed).
    pub(crate) subscribed: Option<(Arc<[Guid]>, u64)>,
}

impl Channel {
    /// When to stop counting on it: the earlier of its own expiry and its token's.
    pub(crate) fn ends_at(&self) -> Instant {
        self.expires_at.min(self.token_expires_at)
    }

    /// Whether its own expiry comes before its token's: then subscribing again keeps it;
    /// otherwise only a new channel (made with a fresh token) outlives the token.
    pub(crate) fn extendable(&self) -> bool {
        self.expires_at < self.token_expires_at
    }
}

/// The lifetime assumed for a channel whose `expires` cannot be read: Genesys's 24 hours.
pub(crate) const DEFAULT_CHANNEL_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Deserialize)]
struct ChannelBody {
    id: String,
    #[serde(rename = "connectUri")]
    connect_uri: String,
    #[serde(default)]
    expires: Option<String>,
}

#[derive(Deserialize)]
struct TopicListing {
    #[serde(default)]
    entities: Vec<TopicItem>,
}

#[derive(Deserialize)]
struct TopicItem {
    id: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(rename = "rejectionReason", default)]
    rejection_reason: Option<String>,
}

/// A token with at least `wanted` life left, or as much as a fresh token has been seen to
/// have (`longest_ms`, updated here): channels die with the token that created them, so one
/// created (or extended) with a token near its end would die early and make every rollover
/// after it come sooner. The held token is kept unless it has lost more than an eighth of
/// what a fresh one would give. Returns the token and whether it was fetched early.
pub(crate) async fn token_for(
    client: &GenesysClient,
    wanted: Duration,
    longest_ms: &AtomicU64,
) -> genesys_auth::Result<(AccessToken, bool)> {
    let token = client.token().await?;
    let left = token.expires_at().saturating_duration_since(Instant::now());
    let longest = longest_ms
        .fetch_max(left.as_millis() as u64, Ordering::Relaxed)
        .max(left.as_millis() as u64);
    let attainable = wanted.min(Duration::from_millis(longest));
    if left + attainable / 8 >= attainable {
        return Ok((token, false));
    }
    log::info!(
        "the access token has {}s left, less than a channel should live ({}s); getting a fresh one first",
        left.as_secs(),
        attainable.as_secs()
    );
    client.invalidate(&token).await;
    let fresh = client.token().await?;
    let left = fresh.expires_at().saturating_duration_since(Instant::now());
    longest_ms.fetch_max(left.as_millis() as u64, Ordering::Relaxed);
    Ok((fresh, true))
}

/// Creates a channel (`POST`, no body) with the client's current token, whose expiry is
/// `token_expires_at`. It has no topics yet.
pub(crate) async fn create_channel(
    client: &GenesysClient,
    token_expires_at: Instant,
) -> genesys_auth::Result<Channel> {
    let response = client
        .request(Method::Post, "/api/v2/notifications/channels", None)
        .await?;
    let now_wall = EventTime::now();
    let now = Instant::now();
    let body: ChannelBody = response
        .json()
        .map_err(|source| genesys_auth::Error::Decode {
            method: "POST",
            path: "/api/v2/notifications/channels".into(),
            source,
        })?;
    let lifetime = body
        .expires
        .as_deref()
        .and_then(|e| EventTime::parse_rfc3339(e).ok())
        .map(|e| {
            Duration::from_millis(e.as_millis().saturating_sub(now_wall.as_millis()).max(0) as u64)
        })
        .unwrap_or(DEFAULT_CHANNEL_LIFETIME);
    Ok(Channel {
        id: body.id,
        connect_uri: body.connect_uri,
        expires_at: now + lifetime,
        token_expires_at,
        lifetime,
        subscribed: None,
    })
}

/// What a subscription answered about its topics.
#[derive(Debug, Default)]
pub(crate) struct Subscribed {
    /// Users whose topic came back in a state other than `Permitted`.
    pub(crate) rejected: Vec<Guid>,
    /// The first rejection's reason, if one was given.
    pub(crate) reason: Option<String>,
}

/// How a subscription request changes a channel's topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SubscribeMode {
    /// `PUT`: exactly these topics (those not listed are unsubscribed).
    Replace,
    /// `POST`: these topics besides those subscribed.
    Add,
}

/// Subscribes channel `id` to the presence topics of `users` (`PUT` for exactly these, or
/// `POST` to add them; both restart the channel's lifetime), with `ignoreErrors=true` so
/// that a refused topic (a deleted user, a missing permission) comes back `Rejected` instead
/// of failing the whole request. An answer that lists no states (or is not a listing) is
/// taken as every topic subscribed.
pub(crate) async fn subscribe(
    client: &GenesysClient,
    id: &str,
    users: &[Guid],
    mode: SubscribeMode,
) -> genesys_auth::Result<Subscribed> {
    let topics: Vec<serde_json::Value> = users
        .iter()
        .map(|u| serde_json::json!({ "id": presence_topic(*u) }))
        .collect();
    let path = format!("/api/v2/notifications/channels/{id}/subscriptions?ignoreErrors=true");
    let method = match mode {
        SubscribeMode::Replace => Method::Put,
        SubscribeMode::Add => Method::Post,
    };
    let answer = client
        .request(
            method,
            &path,
            Some(serde_json::to_vec(&topics).unwrap_or_default()),
        )
        .await?;
    let mut out = Subscribed::default();
    if let Ok(listing) = answer.json::<TopicListing>() {
        for item in listing.entities.iter().filter(|t| {
            t.state
                .as_deref()
                .is_some_and(|s| !s.eq_ignore_ascii_case("permitted"))
        }) {
            if out.reason.is_none() {
                out.reason = Some(
                    item.rejection_reason
                        .clone()
                        .unwrap_or_else(|| item.state.clone().unwrap_or_default()),
                );
            }
            if let Some(user) = user_of_topic(&item.id) {
                out.rejected.push(user);
            }
        }
    }
    Ok(out)
}

/// The user of a presence topic (`v2.users.{id}.presence`, any case).
fn user_of_topic(topic: &str) -> Option<Guid> {
    let lower = topic.to_ascii_lowercase();
    let id = lower.strip_prefix("v2.users.")?.strip_suffix(".presence")?;
    Guid::parse(id)
}

/// Whether the channel still exists (`HEAD`): `Ok(false)` on 404.
pub(crate) async fn channel_exists(client: &GenesysClient, id: &str) -> genesys_auth::Result<bool> {
    let path = format!("/api/v2/notifications/channels/{id}");
    match client.request(Method::Head, &path, None).await {
        Ok(_) => Ok(true),
        Err(e) if e.status() == Some(404) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_topics_give_their_user() {
        let user = Guid(0x9ed7_d9f6_0c59_4360_ac54_40dd_35eb_9c2f);
        assert_eq!(user_of_topic(&presence_topic(user)), Some(user));
        assert_eq!(
            user_of_topic(&presence_topic(user).to_ascii_uppercase()),
            Some(user)
        );
        assert_eq!(
            user_of_topic(&format!("v2.users.{user}.routingStatus")),
            None
        );
        assert_eq!(user_of_topic("v2.users.nope.presence"), None);
    }
}
