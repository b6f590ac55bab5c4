//! Several OAuth clients on one emulator: each gets its own tokens, its own channels and
//! channel budget, and each token its own rate limit; `/emulator/stats` counts by client.

use std::time::Duration;

use genesys_emulator::{ChannelLimitPolicy, EmulatorHandle};
use presence_frame::Notification;

use crate::common::*;

async fn head_status(emu: &EmulatorHandle, token: &str, channel: &str) -> u16 {
    api(
        emu,
        token,
        "HEAD",
        &format!("/api/v2/notifications/channels/{channel}"),
    )
    .await
    .status
}

#[tokio::test]
async fn every_configured_client_gets_tokens_and_no_other() {
    let emu = start(quiet().clients(3).extra_client("third-party", "s3cret")).await;
    let clients = emu.clients();
    let ids: Vec<&str> = clients.iter().map(|c| c.id()).collect();
    assert_eq!(
        ids,
        [
            "emulator-client-id",
            "emulator-client-id-2",
            "emulator-client-id-3",
            "third-party"
        ]
    );
    assert_eq!(clients[0].id(), emu.client_id());
    assert_eq!(clients[0].secret(), emu.client_secret());
    assert_eq!(clients[1].secret(), "emulator-client-secret-2");
    assert!(!format!("{clients:?}").contains("s3cret"));
    for client in &clients {
        let token = token_of(&emu, client).await;
        assert_eq!(api(&emu, &token, "GET", "/api/v2/users").await.status, 200);
    }
    // The form-field variant, for a client other than the first.
    let reply = request(
        emu.addr(),
        "POST",
        "/oauth/token",
        &[(
            "content-type",
            "application/x-www-form-urlencoded".to_owned(),
        )],
        "grant_type=client_credentials&client_id=emulator-client-id-2&client_secret=emulator-client-secret-2",
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    // A client's id with another's secret is no client.
    for (id, secret) in [
        ("emulator-client-id-2", "emulator-client-secret"),
        ("emulator-client-id", "emulator-client-secret-2"),
        ("emulator-client-id-4", "emulator-client-secret-4"),
    ] {
        let reply = request(
            emu.addr(),
            "POST",
            "/oauth/token",
            &[basic(id, secret)],
            "grant_type=client_credentials",
        )
        .await;
        assert_eq!(reply.status, 401, "{id}");
    }
    let stats = emu.stats();
    assert_eq!(stats.tokens_issued, 5);
    assert_eq!(stats.clients.len(), 4);
    assert_eq!(stats.clients["emulator-client-id"].tokens_issued, 1);
    assert_eq!(stats.clients["emulator-client-id-2"].tokens_issued, 2);
    assert_eq!(stats.clients["third-party"].tokens_issued, 1);
    assert_eq!(stats.clients["third-party"].api_requests, 1);
    let total: u64 = stats.clients.values().map(|c| c.api_requests).sum();
    assert_eq!(total, stats.api_requests);
}

#[tokio::test]
async fn each_client_has_its_own_20_channels_and_a_21st_touches_only_its_own() {
    let emu = start(quiet().clients(2)).await;
    let clients = emu.clients();
    let a = token_of(&emu, &clients[0]).await;
    let b = token_of(&emu, &clients[1]).await;
    let mut of_a = Vec::new();
    let mut of_b = Vec::new();
    for _ in 0..20 {
        of_a.push(create_channel(&emu, &a).await.0);
        of_b.push(create_channel(&emu, &b).await.0);
    }
    let stats = emu.stats();
    assert_eq!(stats.channels.len(), 40);
    assert_eq!(stats.clients["emulator-client-id"].channels, 20);
    assert_eq!(stats.clients["emulator-client-id-2"].channels, 20);
    // Channels belong to their client: the other one neither sees nor lists them.
    assert_eq!(head_status(&emu, &b, &of_a[0]).await, 404);
    assert_eq!(head_status(&emu, &a, &of_a[0]).await, 200);
    let listed = api(&emu, &b, "GET", "/api/v2/notifications/channels").await;
    assert_eq!(listed.json()["entities"].as_array().map(Vec::len), Some(20));

    // A's 21st replaces A's oldest (unconnected) channel, none of B's.
    let (newest, _) = create_channel(&emu, &a).await;
    assert_eq!(head_status(&emu, &a, &of_a[0]).await, 404);
    assert_eq!(head_status(&emu, &a, &newest).await, 200);
    for id in &of_a[1..] {
        assert_eq!(head_status(&emu, &a, id).await, 200);
    }
    for id in &of_b {
        assert_eq!(head_status(&emu, &b, id).await, 200, "B's {id}");
    }
    let stats = emu.stats();
    let a_stats = &stats.clients["emulator-client-id"];
    let b_stats = &stats.clients["emulator-client-id-2"];
    assert_eq!((a_stats.channels_created, a_stats.channels), (21, 20));
    assert_eq!((b_stats.channels_created, b_stats.channels), (20, 20));
    assert_eq!(stats.channels_created, 41);
    for channel in &stats.channels {
        let owner = if of_b.contains(&channel.id) {
            "emulator-client-id-2"
        } else {
            "emulator-client-id"
        };
        assert_eq!(channel.client_id, owner, "{}", channel.id);
    }
}

#[tokio::test]
async fn a_full_client_of_connected_channels_replaces_only_its_own() {
    let emu = start(quiet().clients(2).max_channels_per_client(2)).await;
    let clients = emu.clients();
    let a = token_of(&emu, &clients[0]).await;
    let b = token_of(&emu, &clients[1]).await;
    let mut sockets = Vec::new();
    let mut ids = Vec::new();
    for token in [&a, &b, &a, &b] {
        let (id, uri) = create_channel(&emu, token).await;
        sockets.push(connect(&uri).await);
        ids.push(id);
    }
    wait_connected(&emu, 4).await;
    // A has two connected channels: its third replaces A's oldest, ids[0].
    create_channel(&emu, &a).await;
    let (_, notification) = next_notification(&mut sockets[0], Duration::from_secs(5))
        .await
        .expect("a system message");
    match notification {
        Notification::System(system) => {
            assert!(system.channel_gone());
            assert_eq!(system.channel_id.as_deref(), Some(ids[0].as_str()));
        }
        other => panic!("expected no_longer_subscribed, got {other:?}"),
    }
    assert_eq!(head_status(&emu, &a, &ids[0]).await, 404);
    for (i, id) in ids.iter().enumerate().skip(1) {
        let token = if i % 2 == 0 { &a } else { &b };
        assert_eq!(head_status(&emu, token, id).await, 200, "channel {i}");
    }
    let stats = emu.stats();
    assert_eq!(stats.clients["emulator-client-id-2"].connected_channels, 2);

    // With the reject policy, a full client is refused while the other still creates.
    let emu = start(
        quiet()
            .clients(2)
            .max_channels_per_client(1)
            .channel_limit_policy(ChannelLimitPolicy::Reject),
    )
    .await;
    let clients = emu.clients();
    let a = token_of(&emu, &clients[0]).await;
    let b = token_of(&emu, &clients[1]).await;
    let (_, uri) = create_channel(&emu, &a).await;
    let _socket = connect(&uri).await;
    wait_connected(&emu, 1).await;
    let refused = api(&emu, &a, "POST", "/api/v2/notifications/channels").await;
    assert_eq!(refused.status, 400);
    create_channel(&emu, &b).await;
}

#[tokio::test]
async fn each_token_has_its_own_rate_limit_whatever_its_client() {
    let emu = start(quiet().clients(2).rate_limit_per_minute(3)).await;
    let clients = emu.clients();
    let a = token_of(&emu, &clients[0]).await;
    let a2 = token_of(&emu, &clients[0]).await;
    let b = token_of(&emu, &clients[1]).await;
    for _ in 0..3 {
        assert_eq!(api(&emu, &a, "GET", "/api/v2/users").await.status, 200);
    }
    assert_eq!(api(&emu, &a, "GET", "/api/v2/users").await.status, 429);
    // Another token of the same client, and a token of the other client, are untouched.
    assert_eq!(api(&emu, &a2, "GET", "/api/v2/users").await.status, 200);
    for _ in 0..3 {
        let reply = api(&emu, &b, "GET", "/api/v2/users").await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(api(&emu, &b, "GET", "/api/v2/users").await.status, 429);
    let stats = emu.stats();
    assert_eq!(stats.api_rate_limited, 2);
    let a_stats = &stats.clients["emulator-client-id"];
    let b_stats = &stats.clients["emulator-client-id-2"];
    assert_eq!((a_stats.api_requests, a_stats.api_rate_limited), (5, 1));
    assert_eq!((b_stats.api_requests, b_stats.api_rate_limited), (4, 1));
}
