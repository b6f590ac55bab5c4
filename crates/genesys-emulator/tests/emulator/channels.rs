//! Notification channels, subscriptions and their limits.

use std::time::Duration;

use genesys_emulator::ChannelLimitPolicy;
use presence_frame::{EventTime, Guid, Notification, SystemTopicType};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn create_head_and_list_channels() {
    let emu = start(quiet()).await;
    let token = token(&emu).await;
    let reply = api(&emu, &token, "POST", "/api/v2/notifications/channels").await;
    assert_eq!(reply.status, 200);
    let channel = reply.json();
    let id = channel["id"].as_str().expect("id");
    assert!(id.starts_with("streaming-0-"), "{id}");
    assert_eq!(
        channel["connectUri"],
        format!("ws://{}/channels/{id}", emu.addr())
    );
    let expires =
        EventTime::parse_rfc3339(channel["expires"].as_str().expect("expires")).expect("RFC 3339");
    let in_a_day = emu.now().as_millis() + 24 * 3600 * 1000;
    assert!((expires.as_millis() - in_a_day).abs() < 5_000);

    let path = format!("/api/v2/notifications/channels/{id}");
    assert_eq!(api(&emu, &token, "HEAD", &path).await.status, 200);
    assert_eq!(
        api(
            &emu,
            &token,
            "HEAD",
            "/api/v2/notifications/channels/streaming-0-nope"
        )
        .await
        .status,
        404
    );
    let (second, _) = create_channel(&emu, &token).await;
    let list = api(&emu, &token, "GET", "/api/v2/notifications/channels")
        .await
        .json();
    let ids: Vec<&str> = list["entities"]
        .as_array()
        .expect("entities")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(ids, [id, second.as_str()]);
}

#[tokio::test]
async fn subscriptions_get_post_put_delete() {
    let emu = start(quiet().users(10)).await;
    let token = token(&emu).await;
    let users = emu.user_ids();
    let (id, _) = create_channel(&emu, &token).await;
    let path = format!("/api/v2/notifications/channels/{id}/subscriptions");

    let posted = subscribe(&emu, &token, &id, &users[..3]).await;
    assert_eq!(posted.status, 200);
    assert_eq!(posted.json()["entities"].as_array().map(Vec::len), Some(3));
    // POST adds (a repeated topic counts once).
    subscribe(&emu, &token, &id, &users[2..5]).await;
    let listed = api(&emu, &token, "GET", &path).await.json();
    let entities = listed["entities"].as_array().expect("entities");
    assert_eq!(entities.len(), 5);
    for (entity, user) in entities.iter().zip(&users) {
        assert_eq!(entity["id"], format!("v2.users.{user}.presence"));
        assert_eq!(entity["state"], "Permitted");
    }
    // PUT replaces.
    let put = api_json(&emu, &token, "PUT", &path, &topics(&users[7..9])).await;
    assert_eq!(put.status, 200);
    let listed = api(&emu, &token, "GET", &path).await.json();
    assert_eq!(listed["entities"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        listed["entities"][0]["id"],
        format!("v2.users.{}.presence", users[7])
    );
    // DELETE removes all.
    let deleted = api(&emu, &token, "DELETE", &path).await;
    assert!(deleted.status == 204 || deleted.status == 200);
    let listed = api(&emu, &token, "GET", &path).await.json();
    assert_eq!(listed["entities"].as_array().map(Vec::len), Some(0));
    // Unknown channel, bad body.
    let missing = "/api/v2/notifications/channels/streaming-0-x/subscriptions";
    assert_eq!(api(&emu, &token, "GET", missing).await.status, 404);
    assert_eq!(
        api_json(&emu, &token, "POST", missing, &topics(&users[..1]))
            .await
            .status,
        404
    );
    assert_eq!(
        api_json(&emu, &token, "POST", &path, &json!({"id": 1}))
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn unknown_topics_are_403_or_rejected_with_ignore_errors() {
    let emu = start(quiet().users(5)).await;
    let token = token(&emu).await;
    let users = emu.user_ids();
    let (id, _) = create_channel(&emu, &token).await;
    let path = format!("/api/v2/notifications/channels/{id}/subscriptions");
    let mut body = topics(&[users[0], Guid(42)]);
    if let Some(list) = body.as_array_mut() {
        list.push(json!({"id": "v2.routing.queues.q.conversations"}));
        list.push(json!({"id": format!("v2.users.{}?presence&routingStatus", users[1])}));
    }
    // An unknown user's topic is a permission failure: the whole request fails with 403
    // (issue 12: Genesys since 2021), not 400.
    let strict = api_json(&emu, &token, "POST", &path, &body).await;
    assert_eq!(strict.status, 403);
    assert_eq!(strict.json()["code"], "forbidden");
    let listed = api(&emu, &token, "GET", &path).await.json();
    assert_eq!(
        listed["entities"].as_array().map(Vec::len),
        Some(0),
        "nothing applied"
    );

    let lenient = api_json(
        &emu,
        &token,
        "POST",
        &format!("{path}?ignoreErrors=true"),
        &body,
    )
    .await;
    assert_eq!(lenient.status, 200);
    let entities = lenient.json()["entities"]
        .as_array()
        .expect("entities")
        .clone();
    let rejected: Vec<_> = entities
        .iter()
        .filter(|e| e["state"] == "Rejected")
        .collect();
    assert_eq!(rejected.len(), 2);
    assert!(rejected.iter().all(|e| e["rejectionReason"].is_string()));
    let listed = api(&emu, &token, "GET", &path).await.json();
    assert_eq!(
        listed["entities"].as_array().map(Vec::len),
        Some(2),
        "permitted ones kept"
    );

    // Only malformed or unsupported topics: a plain 400.
    let malformed = api_json(
        &emu,
        &token,
        "POST",
        &path,
        &json!([{"id": "v2.routing.queues.q.conversations"}]),
    )
    .await;
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.json()["code"], "bad.request");

    // With strict_topics off, no error even without ignoreErrors.
    let relaxed = start(quiet().users(5).strict_topics(false)).await;
    let token = crate::common::token(&relaxed).await;
    let (id, _) = create_channel(&relaxed, &token).await;
    let reply = api_json(
        &relaxed,
        &token,
        "POST",
        &format!("/api/v2/notifications/channels/{id}/subscriptions"),
        &topics(&[Guid(42)]),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["entities"][0]["state"], "Rejected");
}

#[tokio::test]
async fn a_channel_holds_at_most_1000_topics() {
    let emu = start(quiet().users(1_001)).await;
    let token = token(&emu).await;
    let users = emu.user_ids();
    let (id, _) = create_channel(&emu, &token).await;
    let path = format!("/api/v2/notifications/channels/{id}/subscriptions");
    let over = api_json(&emu, &token, "PUT", &path, &topics(&users)).await;
    assert_eq!(over.status, 400);
    assert_eq!(
        api(&emu, &token, "GET", &path).await.json()["entities"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    let full = subscribe(&emu, &token, &id, &users[..1_000]).await;
    assert_eq!(full.status, 200);
    let one_more = subscribe(&emu, &token, &id, &users[1_000..]).await;
    assert_eq!(one_more.status, 400);
    // Resubscribing an existing topic does not count twice.
    assert_eq!(subscribe(&emu, &token, &id, &users[..10]).await.status, 200);
    assert_eq!(
        api(&emu, &token, "GET", &path).await.json()["entities"]
            .as_array()
            .map(Vec::len),
        Some(1_000)
    );
}

#[tokio::test]
async fn the_21st_channel_replaces_the_oldest_unconnected_one() {
    let emu = start(quiet()).await;
    let token = token(&emu).await;
    let mut channels = Vec::new();
    for _ in 0..20 {
        channels.push(create_channel(&emu, &token).await);
    }
    // Connect the two oldest: the oldest *unconnected* one is the third.
    let _a = connect(&channels[0].1).await;
    let _b = connect(&channels[1].1).await;
    assert!(
        eventually(Duration::from_secs(2), || emu
            .stats()
            .channels
            .iter()
            .filter(|c| c.connected)
            .count()
            == 2)
        .await
    );
    let (new_id, _) = create_channel(&emu, &token).await;
    let head = |id: String| {
        let emu = &emu;
        let token = token.clone();
        async move {
            api(
                emu,
                &token,
                "HEAD",
                &format!("/api/v2/notifications/channels/{id}"),
            )
            .await
            .status
        }
    };
    assert_eq!(
        head(channels[2].0.clone()).await,
        404,
        "oldest unconnected replaced"
    );
    assert_eq!(head(channels[0].0.clone()).await, 200);
    assert_eq!(head(channels[1].0.clone()).await, 200);
    assert_eq!(head(channels[3].0.clone()).await, 200);
    assert_eq!(head(new_id).await, 200);
    let listed = api(&emu, &token, "GET", "/api/v2/notifications/channels")
        .await
        .json();
    assert_eq!(listed["entities"].as_array().map(Vec::len), Some(20));
}

#[tokio::test]
async fn when_all_20_are_connected_the_oldest_is_replaced_by_default() {
    let emu = start(quiet()).await;
    let token = token(&emu).await;
    let mut sockets = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let (id, uri) = create_channel(&emu, &token).await;
        sockets.push(connect(&uri).await);
        ids.push(id);
    }
    assert!(
        eventually(Duration::from_secs(2), || emu
            .stats()
            .channels
            .iter()
            .all(|c| c.connected))
        .await
    );
    create_channel(&emu, &token).await;
    let path = format!("/api/v2/notifications/channels/{}", ids[0]);
    assert_eq!(api(&emu, &token, "HEAD", &path).await.status, 404);
    // The replaced channel's socket hears why, then closes.
    let (_, notification) = next_notification(&mut sockets[0], Duration::from_secs(5))
        .await
        .expect("a system message");
    match notification {
        Notification::System(system) => {
            assert!(system.channel_gone());
            assert_eq!(
                system.system_topic_type,
                Some(SystemTopicType::NoLongerSubscribed)
            );
            assert_eq!(system.channel_id.as_deref(), Some(ids[0].as_str()));
            assert_eq!(system.reason.as_deref(), Some("another_channel_subscribed"));
        }
        other => panic!("expected no_longer_subscribed, got {other:?}"),
    }
    assert!(matches!(
        recv(&mut sockets[0], Duration::from_secs(5)).await,
        Recv::Close(_)
    ));
}

#[tokio::test]
async fn when_all_are_connected_the_reject_policy_gives_400() {
    let emu = start(
        quiet()
            .max_channels_per_client(3)
            .channel_limit_policy(ChannelLimitPolicy::Reject),
    )
    .await;
    let token = token(&emu).await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let (_, uri) = create_channel(&emu, &token).await;
        sockets.push(connect(&uri).await);
    }
    assert!(
        eventually(Duration::from_secs(2), || emu
            .stats()
            .channels
            .iter()
            .all(|c| c.connected))
        .await
    );
    let refused = api(&emu, &token, "POST", "/api/v2/notifications/channels").await;
    assert_eq!(refused.status, 400);
    drop(sockets.pop());
    assert!(
        eventually(Duration::from_secs(2), || emu
            .stats()
            .channels
            .iter()
            .filter(|c| c.connected)
            .count()
            == 2)
        .await
    );
    let accepted = api(&emu, &token, "POST", "/api/v2/notifications/channels").await;
    assert_eq!(accepted.status, 200);
}

#[tokio::test(start_paused = true)]
async fn channels_expire_and_resubscribing_extends_them() {
    let emu = start(quiet().users(5).channel_lifetime(Duration::from_secs(100))).await;
    let token = token(&emu).await;
    let users = emu.user_ids();
    let (kept, kept_uri) = create_channel(&emu, &token).await;
    let (lapsed, lapsed_uri) = create_channel(&emu, &token).await;
    let mut socket = connect(&lapsed_uri).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let reply = subscribe(&emu, &token, &kept, &users[..1]).await;
    assert_eq!(reply.status, 200);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let head = |id: &str| format!("/api/v2/notifications/channels/{id}");
    assert_eq!(api(&emu, &token, "HEAD", &head(&lapsed)).await.status, 404);
    assert_eq!(
        api(&emu, &token, "HEAD", &head(&kept)).await.status,
        200,
        "extended"
    );
    // The expired channel's socket was closed, and it cannot be reconnected.
    loop {
        match recv(&mut socket, Duration::from_secs(5)).await {
            Recv::Text(_) => continue, // heartbeats
            Recv::Close(_) => break,
            other => panic!("expected a close, got {other:?}"),
        }
    }
    assert_eq!(connect_status(&lapsed_uri, None).await.err(), Some(404));
    assert!(connect_status(&kept_uri, None).await.is_ok());
    tokio::time::sleep(Duration::from_secs(50)).await;
    assert_eq!(api(&emu, &token, "HEAD", &head(&kept)).await.status, 404);
}

#[tokio::test(start_paused = true)]
async fn a_channel_closes_when_the_token_that_made_it_expires() {
    let emu = start(quiet().token_lifetime(Duration::from_secs(300))).await;
    let old = token(&emu).await;
    let (id, uri) = create_channel(&emu, &old).await;
    let mut socket = connect(&uri).await;
    tokio::time::sleep(Duration::from_secs(200)).await;
    let fresh = token(&emu).await;
    let path = format!("/api/v2/notifications/channels/{id}");
    assert_eq!(api(&emu, &fresh, "HEAD", &path).await.status, 200);
    tokio::time::sleep(Duration::from_secs(101)).await;
    loop {
        match recv(&mut socket, Duration::from_secs(5)).await {
            Recv::Text(_) => continue, // heartbeats
            Recv::Close(_) => break,
            other => panic!("expected a close, got {other:?}"),
        }
    }
    assert_eq!(api(&emu, &fresh, "HEAD", &path).await.status, 404);
}
