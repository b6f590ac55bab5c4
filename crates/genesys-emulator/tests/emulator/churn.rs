//! Org churn (issue 12): users created, deleted, deactivated, reactivated and moved between groups, by
//! hand and at a configured rate; listings, group members, bulk presence, the truth and
//! subscriptions follow.

use std::collections::BTreeSet;
use std::time::Duration;

use presence_frame::{Guid, Notification};
use serde_json::Value;

use crate::common::*;

/// The user ids of a listing page.
fn ids(reply: &Reply) -> BTreeSet<Guid> {
    reply.json()["entities"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|e| e["id"].as_str().and_then(Guid::parse))
                .collect()
        })
        .unwrap_or_default()
}

async fn listed(
    emu: &genesys_emulator::EmulatorHandle,
    token: &str,
    query: &str,
) -> BTreeSet<Guid> {
    let reply = api(
        emu,
        token,
        "GET",
        &format!("/api/v2/users?pageSize=500{query}"),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    ids(&reply)
}

fn truth_ids(emu: &genesys_emulator::EmulatorHandle) -> BTreeSet<Guid> {
    emu.truth().iter().filter_map(|t| t.user()).collect()
}

#[tokio::test]
async fn created_deleted_deactivated_and_moved_users_show_everywhere() {
    let emu = start(quiet().users(10).groups(2).spare_users(1)).await;
    let token = token(&emu).await;
    let users = emu.user_ids();
    assert_eq!(users.len(), 11);
    let spare = users[10];
    let first: BTreeSet<Guid> = users[..10].iter().copied().collect();
    assert_eq!(listed(&emu, &token, "").await, first);
    assert_eq!(truth_ids(&emu), first);

    // Created: listed, in the truth, with a presence dated now.
    let before = emu.now();
    assert_eq!(emu.create_user(), Some(spare));
    assert_eq!(emu.create_user(), None, "no spare left");
    assert!(listed(&emu, &token, "").await.contains(&spare));
    let entry = emu
        .truth()
        .into_iter()
        .find(|t| t.user() == Some(spare))
        .expect("in the truth");
    assert!(
        presence_frame::EventTime::parse_rfc3339(&entry.modified_date)
            .expect("date")
            .as_millis()
            >= before.as_millis()
    );

    // Deleted and deactivated: absent from the active listing, the truth and bulk presence.
    let inactive_presence = emu
        .truth()
        .into_iter()
        .find(|t| t.user() == Some(users[2]))
        .expect("in the truth");
    assert!(emu.delete_user(users[1]));
    assert!(emu.deactivate_user(users[2]));
    assert!(!emu.delete_user(users[1]), "already gone");
    let active = listed(&emu, &token, "&state=active").await;
    assert!(!active.contains(&users[1]) && !active.contains(&users[2]));
    assert_eq!(active.len(), 9);
    assert_eq!(
        listed(&emu, &token, "&state=inactive").await,
        [users[2]].into()
    );
    assert_eq!(
        listed(&emu, &token, "&state=deleted").await,
        [users[1]].into()
    );
    assert_eq!(truth_ids(&emu), active);
    assert_eq!(
        emu.active_user_ids().into_iter().collect::<BTreeSet<_>>(),
        active
    );
    let bulk = api(
        &emu,
        &token,
        "GET",
        &format!(
            "/api/v2/users/presences/purecloud/bulk?id={},{},{}",
            users[0], users[1], users[2]
        ),
    )
    .await;
    let bulk: Vec<Value> = bulk.json().as_array().cloned().unwrap_or_default();
    assert_eq!(bulk.len(), 1);
    assert_eq!(bulk[0]["userId"], users[0].to_string());

    // Moved: group members, expand=groups and the truth follow.
    let groups = emu.group_ids();
    assert!(emu.set_user_groups(users[0], &[1]));
    assert!(!emu.set_user_groups(users[0], &[1]), "no change");
    assert!(!emu.set_user_groups(users[1], &[0]), "deleted");
    let members = |g: usize| {
        let path = format!("/api/v2/groups/{}/members?pageSize=500", groups[g]);
        let emu = &emu;
        let token = &token;
        async move { ids(&api(emu, token, "GET", &path).await) }
    };
    assert!(members(1).await.contains(&users[0]));
    assert!(!members(0).await.contains(&users[0]));
    assert!(
        !members(0).await.contains(&users[1]),
        "deleted users are no members"
    );
    let page = api(
        &emu,
        &token,
        "GET",
        "/api/v2/users?pageSize=500&expand=groups",
    )
    .await
    .json();
    let user0 = page["entities"]
        .as_array()
        .and_then(|list| list.iter().find(|e| e["id"] == users[0].to_string()))
        .cloned()
        .expect("listed");
    assert_eq!(user0["groups"][0]["id"], groups[1].to_string());
    assert_eq!(user0["groups"].as_array().map(Vec::len), Some(1));
    let truth0 = emu
        .truth()
        .into_iter()
        .find(|t| t.user() == Some(users[0]))
        .expect("truth");
    assert_eq!(truth0.group_mask, 0b10);
    // Reactivated: listed and in the truth again, with the presence it had (same
    // modifiedDate) and its groups; a deleted user cannot come back.
    let before = |user: Guid| emu.truth().into_iter().find(|t| t.user() == Some(user));
    assert!(before(users[2]).is_none());
    assert!(!emu.reactivate_user(users[1]), "deleted");
    assert!(!emu.reactivate_user(users[0]), "active");
    assert!(emu.reactivate_user(users[2]));
    assert!(
        listed(&emu, &token, "&state=active")
            .await
            .contains(&users[2])
    );
    assert!(listed(&emu, &token, "&state=inactive").await.is_empty());
    let back = before(users[2]).expect("in the truth again");
    assert_eq!(
        back.modified_date, inactive_presence.modified_date,
        "its presence unchanged"
    );
    assert_eq!(back.system_presence, inactive_presence.system_presence);
    assert_eq!(back.group_mask, inactive_presence.group_mask);
    let stats = emu.stats().churn;
    assert_eq!(
        (
            stats.active_users,
            stats.created,
            stats.deleted,
            stats.deactivated,
            stats.reactivated,
            stats.moved
        ),
        (10, 1, 1, 1, 1, 1)
    );
}

#[tokio::test]
async fn a_deleted_users_topic_is_refused_and_its_subscription_goes_quiet() {
    let emu = start(quiet().users(3).spare_users(1)).await;
    let token = token(&emu).await;
    let users = emu.user_ids();
    let (id, uri) = create_channel(&emu, &token).await;
    // A spare user not created yet is unknown: refused.
    let path = format!("/api/v2/notifications/channels/{id}/subscriptions");
    let strict = api_json(&emu, &token, "PUT", &path, &topics(&users[3..4])).await;
    assert_eq!(strict.status, 403, "{:?}", strict.body);
    subscribe(&emu, &token, &id, &users[..3]).await;
    let mut ws = connect(&uri).await;
    wait_connected(&emu, 1).await;
    assert!(emu.delete_user(users[0]));
    // Every change now goes to the two users left.
    emu.set_change_rate(200.0).expect("rate");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut seen = 0;
    while tokio::time::Instant::now() < deadline {
        let Some((topic, notification)) =
            next_notification(&mut ws, Duration::from_millis(500)).await
        else {
            continue;
        };
        if let Notification::Presence(_) = notification {
            seen += 1;
            assert!(
                !topic.contains(&users[0].to_string()),
                "a deleted user's subscription delivered {topic}"
            );
        }
    }
    assert!(seen > 10, "the others still stream ({seen})");
    emu.set_change_rate(0.0).expect("rate");
    let again = api_json(
        &emu,
        &token,
        "PUT",
        &format!("{path}?ignoreErrors=true"),
        &topics(&users[..3]),
    )
    .await;
    assert_eq!(again.status, 200);
    let rejected: Vec<String> = again.json()["entities"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|e| e["state"] == "Rejected")
                .filter_map(|e| e["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(rejected, [format!("v2.users.{}.presence", users[0])]);
}

#[tokio::test]
async fn churn_at_a_rate_changes_the_org_and_stops_while_quiesced() {
    // 200 users, 10 churned per (100 ms) day: about 100 changes a second.
    let emu = start(
        quiet()
            .users(200)
            .spare_users(200)
            .churn_per_day(0.05)
            .day(Duration::from_millis(100)),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || {
            let c = emu.stats().churn;
            c.created >= 5
                && c.deleted >= 5
                && c.deactivated >= 5
                && c.reactivated >= 5
                && c.moved >= 5
        })
        .await,
        "{:?}",
        emu.stats().churn
    );
    emu.quiesce().await;
    let quiet = emu.stats().churn;
    let truth = truth_ids(&emu);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(emu.stats().churn, quiet, "no churn while quiesced");
    assert_eq!(truth_ids(&emu), truth);
    assert_eq!(truth.len() as u64, quiet.active_users);
    assert_eq!(
        quiet.active_users,
        200 + quiet.created + quiet.reactivated - quiet.deleted - quiet.deactivated
    );
    let token = token(&emu).await;
    let mut all = BTreeSet::new();
    for page in 1..=2 {
        all.extend(listed(&emu, &token, &format!("&pageNumber={page}")).await);
    }
    assert_eq!(all, truth, "the listing is the truth");
}
