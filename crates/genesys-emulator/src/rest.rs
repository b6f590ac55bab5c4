//! REST state for many users: `/api/v2/users`, bulk presences, groups and their members,
//! presence definitions.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use presence_frame::Guid;
use serde_json::{Value, json};

use crate::org::Membership;
use crate::state::Shared;
use crate::wire::{self, ApiError, Page};
use crate::workload::UserPresence;

/// A parsed query string that keeps repeated keys.
#[derive(Debug, Default)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Query {
        Query {
            pairs: raw
                .map(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The first value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`.
    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The `expand` values, lowercased (comma-separated and/or repeated).
    fn expands(&self) -> HashSet<String> {
        self.all("expand")
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// `key=value` with the value encoded, for page URIs, if `key` was given.
    fn keep(&self, key: &str) -> Option<String> {
        let values: Vec<&str> = self.all(key).collect();
        if values.is_empty() {
            return None;
        }
        let joined = values.join(",");
        let encoded: String = form_urlencoded::byte_serialize(joined.as_bytes()).collect();
        Some(format!("{key}={encoded}"))
    }
}

/// `pageSize` and `pageNumber`, checked.
fn paging(shared: &Shared, query: &Query) -> Result<(u32, u32), ApiError> {
    let config = &shared.config;
    let number = |key: &str, default: u32| -> Result<u32, ApiError> {
        match query.get(key) {
            None => Ok(default),
            Some(text) => match text.trim().parse::<u32>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(ApiError::bad_request(format!(
                    "{key} must be a positive integer, got {text:?}"
                ))),
            },
        }
    };
    let size = number("pageSize", config.default_page_size)?;
    if size > config.max_page_size {
        return Err(ApiError::bad_request(format!(
            "pageSize must be between 1 and {}, got {size}",
            config.max_page_size
        )));
    }
    let page = number("pageNumber", 1)?;
    Ok((size, page))
}

/// User objects for `users`, with presence and groups as asked: their JSON text, separated
/// by commas.
fn user_entities(shared: &Shared, users: &[u32], with_presence: bool, with_groups: bool) -> String {
    let states: Vec<Option<UserPresence>> = if with_presence {
        let presence = shared.presence.read();
        users
            .iter()
            .map(|&u| presence.get(u as usize).copied())
            .collect()
    } else {
        vec![None; users.len()]
    };
    let org: Vec<(Membership, u64)> = {
        let org = shared.org.read();
        users
            .iter()
            .map(|&u| (org.membership(u), org.groups(u)))
            .collect()
    };
    let missing = shared.config.presence_missing_fraction;
    let spelling = shared.config.rest_spelling;
    let mut out = String::with_capacity(users.len() * 800);
    let mut rng = shared.misc_rng.lock();
    for (i, ((&user, state), (membership, groups))) in users.iter().zip(states).zip(org).enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        // Expands are best effort: sometimes a user comes back without presence.
        let presence = state.filter(|_| !rng.chance(missing));
        wire::write_user_object(
            &mut out,
            &shared.world,
            user,
            presence.as_ref().map(|p| (p, spelling)),
            with_groups.then_some(groups),
            membership.as_str(),
        );
    }
    out
}

/// A page of users: `select` gives the users on a page (by its index range) and the total,
/// read together so that they agree.
fn page_of_users(
    shared: &Shared,
    query: &Query,
    path: &str,
    select: &dyn Fn(Wanted) -> (Vec<u32>, usize),
    extra_keep: Option<String>,
) -> Response {
    let (page_size, page_number) = match paging(shared, query) {
        Ok(p) => p,
        Err(error) => return error.into_response(),
    };
    let expands = query.expands();
    let keep: Vec<String> = [query.keep("expand"), extra_keep]
        .into_iter()
        .flatten()
        .collect();
    let (users, total) = select(Wanted {
        size: page_size,
        number: page_number,
    });
    let page = Page {
        path,
        page_size,
        page_number,
        total,
        keep: &keep,
    };
    let entities = user_entities(
        shared,
        &users,
        expands.contains("presence"),
        expands.contains("groups"),
    );
    wire::json_text(page.to_json_text(&entities))
}

/// The page a listing call asks for.
#[derive(Clone, Copy, Debug)]
struct Wanted {
    size: u32,
    number: u32,
}

impl Wanted {
    /// The users of `list` on this page (a copy of the page only), and the length of `list`.
    fn slice(self, list: &[u32]) -> (Vec<u32>, usize) {
        let page = list
            .get(wire::page_range(self.size, self.number, list.len()))
            .unwrap_or_default();
        (page.to_vec(), list.len())
    }
}

/// `GET /api/v2/users`: `state` `active` (the default) lists the active users, `inactive`
/// the deactivated ones, `deleted` the deleted ones, `any` every user that was ever created.
/// The active listing copies one page, not the whole list, per call.
pub(crate) async fn list_users(
    State(shared): State<Arc<Shared>>,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = Query::parse(raw.as_deref());
    let state = query.get("state").map(str::to_ascii_lowercase);
    let membership = match state.as_deref() {
        None | Some("active") => Some(Membership::Active),
        Some("inactive") => Some(Membership::Inactive),
        Some("deleted") => Some(Membership::Deleted),
        Some("any") => None,
        Some(other) => {
            return wire::bad_request(format!(
                "state must be active, inactive, deleted or any, got {other:?}"
            ));
        }
    };
    let select = |wanted: Wanted| {
        let org = shared.org.read();
        match membership {
            Some(Membership::Active) => wanted.slice(org.active()),
            Some(membership) => wanted.slice(&org.with_membership(membership)),
            None => {
                let every: Vec<u32> = (0..shared.world.users.len() as u32)
                    .filter(|&u| org.exists(u))
                    .collect();
                wanted.slice(&every)
            }
        }
    };
    page_of_users(
        &shared,
        &query,
        "/api/v2/users",
        &select,
        query.keep("state"),
    )
}

/// `GET /api/v2/users/presences/purecloud/bulk?id=a,b,c`: at most
/// [`max_bulk_ids`](crate::EmulatorConfig::max_bulk_ids) ids (400 beyond); unknown ids are
/// left out of the answer.
pub(crate) async fn bulk_presences(
    State(shared): State<Arc<Shared>>,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = Query::parse(raw.as_deref());
    let ids: Vec<&str> = query
        .all("id")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    if ids.is_empty() {
        return wire::bad_request("id is required: a comma-separated list of user ids");
    }
    let max = shared.config.max_bulk_ids;
    if ids.len() > max {
        return wire::bad_request(format!(
            "At most {max} user ids per request, got {}",
            ids.len()
        ));
    }
    let mut users = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(guid) = Guid::parse(id) else {
            return wire::bad_request(format!("{id:?} is not a valid user id"));
        };
        if let Some(&user) = shared.world.by_guid.get(&guid) {
            users.push(user);
        }
    }
    // Only active users have a presence to show.
    {
        let org = shared.org.read();
        users.retain(|&u| org.is_active(u));
    }
    let presence = shared.presence.read();
    let entities: Vec<Value> = users
        .iter()
        .filter_map(|&u| {
            presence.get(u as usize).map(|p| {
                wire::presence_object(&shared.world, u, p, shared.config.rest_spelling, true)
            })
        })
        .collect();
    axum::Json(Value::Array(entities)).into_response()
}

/// `GET /api/v2/groups`: every group, paged.
pub(crate) async fn list_groups(
    State(shared): State<Arc<Shared>>,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = Query::parse(raw.as_deref());
    let (page_size, page_number) = match paging(&shared, &query) {
        Ok(p) => p,
        Err(error) => return error.into_response(),
    };
    let page = Page {
        path: "/api/v2/groups",
        page_size,
        page_number,
        total: shared.world.groups.len(),
        keep: &[],
    };
    let range = page.range();
    let members: Vec<Vec<u32>> = {
        let org = shared.org.read();
        range.clone().map(|g| org.members(g)).collect()
    };
    let entities: Vec<Value> = shared.world.groups[range]
        .iter()
        .enumerate()
        .map(|(i, g)| {
            json!({
                "id": g.guid.to_string(),
                "name": g.name,
                "type": "official",
                "state": "active",
                "memberCount": members[i].len(),
                "visibility": "public",
                "selfUri": format!("/api/v2/groups/{}", g.guid),
            })
        })
        .collect();
    axum::Json(page.to_json(entities)).into_response()
}

/// `GET /api/v2/groups/{id}/members`: the members, paged, optionally with presence.
pub(crate) async fn group_members(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let Some(index) = Guid::parse(&id).and_then(|g| shared.world.group_by_guid.get(&g).copied())
    else {
        return wire::not_found(format!("Group {id} not found"));
    };
    let query = Query::parse(raw.as_deref());
    let group = &shared.world.groups[index];
    let path = format!("/api/v2/groups/{}/members", group.guid);
    let select = |wanted: Wanted| wanted.slice(&shared.org.read().members(index));
    page_of_users(&shared, &query, &path, &select, None)
}

/// `GET /api/v2/presence/definitions`: one System definition per system presence, plus the
/// User definitions when configured.
pub(crate) async fn definitions(State(shared): State<Arc<Shared>>) -> Response {
    let spelling = shared.config.definition_spelling;
    let entities: Vec<Value> = shared
        .world
        .definitions
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let label = d.custom_label.or(d.status.name()).unwrap_or("Unknown");
            json!({
                "id": d.guid.to_string(),
                "name": label,
                "languageLabels": {"en_US": label},
                "systemPresence": wire::spell(d.status, spelling, i as u64),
                "type": if d.custom_label.is_some() { "User" } else { "System" },
                "primary": d.custom_label.is_none(),
                "deactivated": false,
                "selfUri": format!("/api/v2/presence/definitions/{}", d.guid),
            })
        })
        .collect();
    let total = entities.len();
    axum::Json(json!({
        "entities": entities,
        "pageSize": total,
        "pageNumber": 1,
        "total": total,
        "pageCount": 1,
    }))
    .into_response()
}
