//! The Genesys REST calls a sync makes, and their bodies.

use std::time::Duration;

use genesys_auth::{GenesysClient, Method};
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
}

/// A user seen in a listing, with the presence event built from its `presence` (if the
/// expand came back for it).
pub(crate) struct Listed {
    pub(crate) user: Guid,
    pub(crate) presence: Option<PresenceEvent>,
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
            each(Listed { user, presence });
        }
        next = page.next_uri.filter(|n| !n.is_empty());
    }
    Ok(bad)
}

/// The first page of all active users.
pub(crate) fn users_uri(page_size: usize, with_presence: bool) -> String {
    let expand = if with_presence {
        "&expand=presence"
    } else {
        ""
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
    /// When to stop using it: the earlier of its own expiry and its token's, on tokio's clock.
    pub(crate) expires_at: Instant,
    /// Its lifetime at creation, to size the rollover margin.
    pub(crate) lifetime: Duration,
}

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

/// Creates a channel and subscribes it to the presence topics of `users`.
pub(crate) async fn create_channel(
    client: &GenesysClient,
    users: &[Guid],
) -> genesys_auth::Result<Channel> {
    // Channels die with the token that created them: note its expiry before creating.
    let token = client.token().await?;
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
    let channel_lifetime = body
        .expires
        .as_deref()
        .and_then(|e| EventTime::parse_rfc3339(e).ok())
        .map(|e| {
            Duration::from_millis(e.as_millis().saturating_sub(now_wall.as_millis()).max(0) as u64)
        })
        .unwrap_or(Duration::from_secs(24 * 3600));
    let token_left = token.expires_at().saturating_duration_since(now);
    let lifetime = channel_lifetime.min(token_left);

    let topics: Vec<serde_json::Value> = users
        .iter()
        .map(|u| serde_json::json!({ "id": presence_topic(*u) }))
        .collect();
    let path = format!("/api/v2/notifications/channels/{}/subscriptions", body.id);
    let subscribed = client
        .request(
            Method::Put,
            &path,
            Some(serde_json::to_vec(&topics).unwrap_or_default()),
        )
        .await?;
    if let Ok(listing) = subscribed.json::<TopicListing>() {
        let rejected: Vec<&TopicItem> = listing
            .entities
            .iter()
            .filter(|t| {
                t.state
                    .as_deref()
                    .is_some_and(|s| !s.eq_ignore_ascii_case("permitted"))
            })
            .collect();
        if let Some(first) = rejected.first() {
            log::warn!(
                "channel {}: {} of {} topics rejected (first: {} {})",
                body.id,
                rejected.len(),
                users.len(),
                first.id,
                first
                    .rejection_reason
                    .as_deref()
                    .unwrap_or("no reason given")
            );
        }
    }
    Ok(Channel {
        id: body.id,
        connect_uri: body.connect_uri,
        expires_at: now + lifetime,
        lifetime,
    })
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
