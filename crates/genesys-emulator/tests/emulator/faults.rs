//! Every fault switch, through the handle, the admin endpoint, the config and chaos mode.

use std::time::Duration;

use genesys_emulator::{BurstScope, ChaosConfig, Fault, FaultKind, FaultTarget};
use presence_frame::{EventTime, Notification, decode_notification};
use tokio::time::Instant;

use crate::common::*;

/// An emulator with one connected, subscribed channel.
async fn connected(
    config: genesys_emulator::EmulatorConfig,
) -> (genesys_emulator::EmulatorHandle, String, String, String, Ws) {
    let emu = start(config).await;
    let token = token(&emu).await;
    let (id, uri) = create_channel(&emu, &token).await;
    subscribe(&emu, &token, &id, &emu.user_ids()[..5]).await;
    let socket = connect(&uri).await;
    assert!(
        eventually(Duration::from_secs(5), || emu
            .stats()
            .channels
            .iter()
            .any(|c| c.connected))
        .await
    );
    (emu, token, id, uri, socket)
}

#[tokio::test]
async fn drop_socket_closes_without_a_close_frame() {
    let (emu, _, id, _, mut socket) = connected(quiet()).await;
    assert_eq!(
        emu.drop_sockets(FaultTarget::Channel(id)).expect("inject"),
        1
    );
    match recv(&mut socket, Duration::from_secs(5)).await {
        Recv::Error(_) | Recv::Ended => {}
        other => panic!("expected an abrupt end, got {other:?}"),
    }
    assert_eq!(emu.stats().faults_injected.get("drop_socket"), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn stall_socket_goes_silent_until_replaced() {
    let (emu, _, _, uri, mut socket) = connected(quiet()).await;
    emu.stall_sockets(FaultTarget::All).expect("inject");
    tokio::time::sleep(Duration::from_millis(10)).await;
    send_text(&mut socket, r#"{"message":"ping"}"#).await;
    // No pong, no heartbeat, and the TCP connection stays open.
    assert!(matches!(
        recv(&mut socket, Duration::from_secs(95)).await,
        Recv::Timeout
    ));
    // A new connection replaces the stalled one and works.
    let mut fresh = connect(&uri).await;
    send_text(&mut fresh, r#"{"message":"ping"}"#).await;
    let (_, pong) = next_notification(&mut fresh, Duration::from_secs(5))
        .await
        .expect("pong");
    assert_eq!(pong, Notification::Pong);
}

#[tokio::test(start_paused = true)]
async fn socket_closing_warns_then_closes_after_the_grace() {
    let (emu, _, id, _, mut socket) = connected(quiet()).await;
    let began = Instant::now();
    emu.socket_closing(FaultTarget::Channel(id), Duration::from_secs(20))
        .expect("inject");
    let (_, warning) = next_notification(&mut socket, Duration::from_secs(5))
        .await
        .expect("warning");
    assert_eq!(warning, Notification::SocketClosing);
    // Still usable during the grace period.
    send_text(&mut socket, r#"{"message":"ping"}"#).await;
    let (_, pong) = next_notification(&mut socket, Duration::from_secs(5))
        .await
        .expect("pong");
    assert_eq!(pong, Notification::Pong);
    loop {
        match recv(&mut socket, Duration::from_secs(60)).await {
            Recv::Text(_) => continue,
            Recv::Close(_) => break,
            other => panic!("expected a close, got {other:?}"),
        }
    }
    let waited = began.elapsed().as_secs_f64();
    assert!((19.0..22.0).contains(&waited), "closed after {waited}s");
}

#[tokio::test]
async fn garbage_truncated_and_oversized_messages() {
    let (emu, _, _, _, mut socket) = connected(quiet()).await;
    emu.send_garbage(FaultTarget::All).expect("inject");
    let Recv::Text(garbage) = recv(&mut socket, Duration::from_secs(5)).await else {
        panic!("garbage")
    };
    assert!(serde_json::from_str::<serde_json::Value>(&garbage).is_err());

    emu.send_truncated_json(FaultTarget::All).expect("inject");
    let Recv::Text(truncated) = recv(&mut socket, Duration::from_secs(5)).await else {
        panic!("truncated")
    };
    assert!(truncated.starts_with(r#"{"topicName":"v2.users."#));
    assert!(decode_notification(truncated.as_bytes(), EventTime(0)).is_err());

    emu.send_oversized(FaultTarget::All, 300_000)
        .expect("inject");
    let Recv::Text(big) = recv(&mut socket, Duration::from_secs(5)).await else {
        panic!("oversized")
    };
    assert_eq!(big.len(), 300_000);
    // The default size is 2 MiB.
    emu.inject(Fault::Oversized {
        target: FaultTarget::All,
        bytes: None,
    })
    .expect("inject");
    let Recv::Text(default) = recv(&mut socket, Duration::from_secs(5)).await else {
        panic!("oversized")
    };
    assert_eq!(default.len(), 2 * 1024 * 1024);
    // The socket still works afterwards.
    send_text(&mut socket, r#"{"message":"ping"}"#).await;
    assert!(
        next_notification(&mut socket, Duration::from_secs(5))
            .await
            .is_some()
    );
}

#[tokio::test]
async fn rate_limit_and_server_error_bursts() {
    let emu = start(quiet()).await;
    let token = token(&emu).await;
    emu.rate_limit_burst(2, 7).expect("inject");
    for _ in 0..2 {
        let reply = api(&emu, &token, "GET", "/api/v2/users").await;
        assert_eq!(reply.status, 429);
        assert_eq!(reply.header("retry-after"), Some("7"));
        assert_eq!(reply.json()["code"], "too.many.requests.retry.after");
    }
    assert_eq!(api(&emu, &token, "GET", "/api/v2/users").await.status, 200);

    emu.server_error_burst(1, 502).expect("inject");
    emu.server_error_burst(1, 503).expect("inject");
    let html = api(&emu, &token, "GET", "/api/v2/users").await;
    assert_eq!(html.status, 502);
    assert!(
        html.header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
    );
    assert!(
        serde_json::from_slice::<serde_json::Value>(&html.body).is_err(),
        "non-JSON body"
    );
    let unavailable = api(&emu, &token, "GET", "/api/v2/users").await;
    assert_eq!(unavailable.status, 503, "bursts apply in order");
    assert_eq!(unavailable.json()["status"], 503);
    assert_eq!(api(&emu, &token, "GET", "/api/v2/users").await.status, 200);
    emu.login_error_burst(1, 503).expect("inject");
    assert_eq!(get_token_reply(&emu).await.status, 503, "login burst");
    assert_eq!(get_token_reply(&emu).await.status, 200);
    assert_eq!(
        api(&emu, &token, "GET", "/api/v2/users").await.status,
        200,
        "API unaffected"
    );
    emu.server_error_burst(1, 504).expect("inject");
    assert_eq!(api(&emu, &token, "GET", "/api/v2/users").await.status, 504);
    assert!(emu.server_error_burst(1, 404).is_err());
}

#[tokio::test]
async fn expire_tokens_gives_401_and_closes_their_channels() {
    let (emu, token, id, _, mut socket) = connected(quiet()).await;
    assert_eq!(emu.expire_tokens().expect("inject"), 1);
    assert_eq!(api(&emu, &token, "GET", "/api/v2/users").await.status, 401);
    assert!(matches!(
        recv(&mut socket, Duration::from_secs(5)).await,
        Recv::Close(_)
    ));
    let fresh = crate::common::token(&emu).await;
    let head = api(
        &emu,
        &fresh,
        "HEAD",
        &format!("/api/v2/notifications/channels/{id}"),
    )
    .await;
    assert_eq!(head.status, 404);
}

#[tokio::test]
async fn expire_tokens_can_leave_channels_open() {
    let (emu, token, _, _, mut socket) = connected(quiet().channels_close_with_token(false)).await;
    emu.expire_tokens().expect("inject");
    assert_eq!(api(&emu, &token, "GET", "/api/v2/users").await.status, 401);
    send_text(&mut socket, r#"{"message":"ping"}"#).await;
    let (_, pong) = next_notification(&mut socket, Duration::from_secs(5))
        .await
        .expect("pong");
    assert_eq!(pong, Notification::Pong);
}

#[tokio::test]
async fn no_longer_subscribed_removes_the_channel() {
    let (emu, token, id, uri, mut socket) = connected(quiet()).await;
    let reply = admin(
        &emu,
        "POST",
        "/emulator/faults",
        &format!(r#"{{"fault":"no_longer_subscribed","target":"{id}"}}"#),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["applied"], 1);
    let (_, message) = next_notification(&mut socket, Duration::from_secs(5))
        .await
        .expect("message");
    let Notification::System(system) = message else {
        panic!("expected a system message")
    };
    assert!(system.channel_gone());
    assert_eq!(system.channel_id.as_deref(), Some(id.as_str()));
    assert_eq!(system.reason.as_deref(), Some("another_channel_subscribed"));
    assert!(matches!(
        recv(&mut socket, Duration::from_secs(5)).await,
        Recv::Close(_)
    ));
    let head = api(
        &emu,
        &token,
        "HEAD",
        &format!("/api/v2/notifications/channels/{id}"),
    )
    .await;
    assert_eq!(head.status, 404);
    assert_eq!(connect_status(&uri, None).await.err(), Some(404));
}

#[tokio::test]
async fn the_admin_endpoint_takes_json_faults() {
    let (emu, token, id, _, mut socket) = connected(quiet()).await;
    let garbage = admin(&emu, "POST", "/emulator/faults", r#"{"fault":"garbage"}"#).await;
    assert_eq!(garbage.status, 200);
    assert_eq!(garbage.json()["applied"], 1);
    assert!(matches!(
        recv(&mut socket, Duration::from_secs(5)).await,
        Recv::Text(_)
    ));
    let burst = admin(
        &emu,
        "POST",
        "/emulator/faults",
        r#"{"fault":"rate_limit_burst","count":1,"retryAfterSecs":3}"#,
    )
    .await;
    assert_eq!(burst.status, 200);
    assert_eq!(
        api(&emu, &token, "GET", "/api/v2/users")
            .await
            .header("retry-after"),
        Some("3")
    );
    let closing = admin(
        &emu,
        "POST",
        "/emulator/faults",
        &format!(r#"{{"fault":"socket_closing","target":"{id}","graceMs":10}}"#),
    )
    .await;
    assert_eq!(closing.status, 200);
    let (_, warning) = next_notification(&mut socket, Duration::from_secs(5))
        .await
        .expect("warning");
    assert_eq!(warning, Notification::SocketClosing);
    assert!(matches!(
        recv(&mut socket, Duration::from_secs(5)).await,
        Recv::Close(_)
    ));
    // Errors: unknown fault, unknown channel, bad status.
    assert_eq!(
        admin(&emu, "POST", "/emulator/faults", r#"{"fault":"meteor"}"#)
            .await
            .status,
        400
    );
    assert_eq!(
        admin(
            &emu,
            "POST",
            "/emulator/faults",
            r#"{"fault":"drop_socket","target":"streaming-0-zz"}"#
        )
        .await
        .status,
        404
    );
    assert_eq!(
        admin(
            &emu,
            "POST",
            "/emulator/faults",
            r#"{"fault":"server_error_burst","count":1,"status":200}"#
        )
        .await
        .status,
        400
    );
    let stats = emu.stats();
    assert_eq!(stats.faults_injected.get("garbage"), Some(&1));
    assert_eq!(stats.faults_injected.get("socket_closing"), Some(&1));
}

#[tokio::test]
async fn faults_can_be_switched_on_at_start() {
    let config = quiet()
        .fault_at_start(Fault::RateLimitBurst {
            count: 1,
            scope: BurstScope::Api,
            retry_after_secs: None,
        })
        .fault_at_start(Fault::Garbage {
            target: FaultTarget::All,
        });
    let emu = start(config).await;
    // The token endpoint is not an API call, so the burst hits the first API call.
    let token = token(&emu).await;
    let first = api(&emu, &token, "POST", "/api/v2/notifications/channels").await;
    assert_eq!(first.status, 429);
    assert_eq!(first.header("retry-after"), Some("1"));
    let (_, uri) = create_channel(&emu, &token).await;
    // The startup socket fault hits the first socket to connect, once.
    let mut socket = connect(&uri).await;
    let Recv::Text(text) = recv(&mut socket, Duration::from_secs(5)).await else {
        panic!("garbage")
    };
    assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
    let mut second = connect(&uri).await;
    assert!(matches!(
        recv(&mut second, Duration::from_millis(200)).await,
        Recv::Timeout
    ));
}

#[tokio::test(start_paused = true)]
async fn chaos_injects_random_faults_at_the_configured_rate() {
    let kinds = [FaultKind::Garbage, FaultKind::RateLimitBurst];
    let (emu, _, _, _, mut socket) = connected(quiet().heartbeat_interval(Duration::ZERO)).await;
    emu.set_chaos(ChaosConfig::new(60.0).kinds(kinds))
        .expect("chaos");
    let mut garbage = 0;
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(60) {
        if let Recv::Text(_) = recv(&mut socket, Duration::from_secs(5)).await {
            garbage += 1;
        }
    }
    let stats = emu.stats();
    let total: u64 = stats.faults_requested.values().sum();
    assert!(
        (30..=100).contains(&total),
        "{total} faults in a minute at 60/min"
    );
    assert_eq!(
        stats.faults_injected.get("garbage").copied().unwrap_or(0),
        garbage
    );
    assert_eq!(
        stats.fault_hits.get("garbage").map(|h| h.channel_sockets),
        Some(garbage)
    );
    assert!(
        stats
            .faults_requested
            .keys()
            .all(|k| k == "garbage" || k == "rate_limit_burst")
    );
    // No API call was made, so no burst was injected, however many were asked for.
    assert!(stats.faults_requested.contains_key("rate_limit_burst"));
    assert_eq!(stats.faults_injected.get("rate_limit_burst"), None);
    // Off again through the admin endpoint.
    let off = admin(&emu, "POST", "/emulator/chaos", r#"{"faultsPerMinute":0}"#).await;
    assert_eq!(off.status, 204);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let before: u64 = emu.stats().faults_requested.values().sum();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(emu.stats().faults_requested.values().sum::<u64>(), before);
    assert_eq!(
        admin(&emu, "POST", "/emulator/chaos", r#"{"faultsPerMinute":-1}"#)
            .await
            .status,
        400
    );
}

/// A fault counts as injected only when it hit something: a socket that acted on it, a
/// channel it removed, a live token it expired, a call it answered.
#[tokio::test]
async fn a_fault_that_hits_nothing_is_not_counted() {
    let emu = start(quiet()).await;
    // Nothing connected, no channel, no token, no call.
    assert_eq!(emu.drop_sockets(FaultTarget::All).expect("inject"), 0);
    assert_eq!(emu.stall_sockets(FaultTarget::All).expect("inject"), 0);
    assert_eq!(emu.send_garbage(FaultTarget::Relay).expect("inject"), 0);
    assert_eq!(
        emu.socket_closing(FaultTarget::All, Duration::from_secs(1))
            .expect("inject"),
        0
    );
    assert_eq!(
        emu.no_longer_subscribed(FaultTarget::All).expect("inject"),
        0
    );
    assert_eq!(emu.expire_tokens().expect("inject"), 0);
    emu.rate_limit_burst(1, 1).expect("inject");
    emu.login_error_burst(1, 503).expect("inject");
    let stats = emu.stats();
    assert!(
        stats.faults_injected.is_empty(),
        "nothing was hit: {:?}",
        stats.faults_injected
    );
    assert_eq!(
        stats.faults_requested.len(),
        8,
        "{:?}",
        stats.faults_requested
    );

    // A stalled socket ignores what is sent to it: the stall counts, the garbage does not.
    let (emu, token, _, _, _socket) = connected(quiet()).await;
    emu.stall_sockets(FaultTarget::All).expect("inject");
    tokio::time::sleep(Duration::from_millis(50)).await;
    emu.send_garbage(FaultTarget::All).expect("inject");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stats = emu.stats();
    assert_eq!(stats.faults_injected.get("stall_socket"), Some(&1));
    assert_eq!(stats.faults_injected.get("garbage"), None, "{stats:?}");
    // A burst counts once a call gets it.
    emu.rate_limit_burst(1, 1).expect("inject");
    assert_eq!(emu.stats().faults_injected.get("rate_limit_burst"), None);
    assert_eq!(api(&emu, &token, "GET", "/api/v2/users").await.status, 429);
    let stats = emu.stats();
    assert_eq!(stats.faults_injected.get("rate_limit_burst"), Some(&1));
    let burst = stats.fault_hits["rate_limit_burst"];
    assert_eq!((burst.api_calls, burst.total()), (1, 1));
    assert_eq!(stats.fault_hits["stall_socket"].channel_sockets, 1);
    // Through the admin endpoint too.
    let json = admin(&emu, "GET", "/emulator/stats", "").await.json();
    assert_eq!(json["faultsInjected"]["stall_socket"], 1);
    assert_eq!(json["faultHits"]["rate_limit_burst"]["apiCalls"], 1);
    assert!(json["faultsInjected"].get("garbage").is_none());
    assert_eq!(json["faultsRequested"]["garbage"], 1);
}
