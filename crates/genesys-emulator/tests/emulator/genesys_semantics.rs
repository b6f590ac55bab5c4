//! The Genesys behaviours of issue 12: refused topics (403 whole, or `Rejected` with
//! `ignoreErrors=true`), maintenance waves, a new socket taking a channel's delivery over
//! without losing what the old one had queued, and `{"result":"404"}` for a gone channel.

use std::time::Duration;

use genesys_emulator::{ChaosConfig, FaultKind};
use presence_frame::{EventTime, Notification, decode_notification};
use serde_json::{Value, json};

use crate::common::*;

fn states(reply: &Reply) -> Vec<(String, String)> {
    reply.json()["entities"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| {
                    (
                        e["id"].as_str().unwrap_or_default().to_owned(),
                        e["state"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_refused_topic_fails_the_request_whole_or_comes_back_rejected() {
    let emu = start(quiet().users(5)).await;
    let token = token(&emu).await;
    let users = emu.user_ids();
    let (id, _) = create_channel(&emu, &token).await;
    assert_eq!(emu.refuse_topics(&users[1..2]), 1);
    let path = format!("/api/v2/notifications/channels/{id}/subscriptions");
    let body = topics(&users[..3]);

    let strict = api_json(&emu, &token, "PUT", &path, &body).await;
    assert_eq!(strict.status, 403, "{:?}", strict.body);
    assert!(
        strict.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains(&users[1].to_string())),
        "{:?}",
        strict.body
    );
    let listed = api(&emu, &token, "GET", &path).await;
    assert!(
        states(&listed).is_empty(),
        "nothing of that request applied"
    );

    let lenient = api_json(
        &emu,
        &token,
        "PUT",
        &format!("{path}?ignoreErrors=true"),
        &body,
    )
    .await;
    assert_eq!(lenient.status, 200);
    let answer = states(&lenient);
    let state_of = |user: usize| {
        answer
            .iter()
            .find(|(topic, _)| topic.contains(&users[user].to_string()))
            .map(|(_, state)| state.as_str())
    };
    assert_eq!(state_of(0), Some("Permitted"));
    assert_eq!(state_of(1), Some("Rejected"));
    assert_eq!(state_of(2), Some("Permitted"));
    assert_eq!(states(&api(&emu, &token, "GET", &path).await).len(), 2);

    // Permitted again: the next subscription takes it.
    assert_eq!(emu.permit_topics(&users[1..2]), 0);
    let again = api_json(&emu, &token, "PUT", &path, &body).await;
    assert_eq!(again.status, 200);
    assert!(states(&again).iter().all(|(_, s)| s == "Permitted"));
    assert_eq!(states(&again).len(), 3);
}

#[tokio::test]
async fn a_maintenance_wave_warns_every_channel_socket_at_once() {
    let emu = start(quiet().users(30)).await;
    let token = token(&emu).await;
    let users = emu.user_ids();
    let mut sockets = Vec::new();
    for chunk in users.chunks(10) {
        let (id, uri) = create_channel(&emu, &token).await;
        subscribe(&emu, &token, &id, chunk).await;
        sockets.push(connect(&uri).await);
    }
    let relay = connect_status(&emu.relay_url(), Some(&token))
        .await
        .expect("relay");
    wait_connected(&emu, 3).await;
    assert_eq!(
        emu.maintenance_wave(Duration::from_secs(30)).expect("wave"),
        3
    );
    for socket in &mut sockets {
        let (_, warning) = next_notification(socket, Duration::from_secs(5))
            .await
            .expect("warning");
        assert_eq!(warning, Notification::SocketClosing);
    }
    let hits = emu.stats().fault_hits["maintenance_wave"];
    assert_eq!(hits.channel_sockets, 3);
    assert_eq!(hits.relay_sockets, 0, "a relay has no maintenance warning");
    // The admin endpoint takes it too.
    let reply = admin(
        &emu,
        "POST",
        "/emulator/faults",
        r#"{"fault":"maintenance_wave","graceMs":20000}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["applied"], 3);
    // And chaos draws it as a kind of its own.
    emu.set_chaos(ChaosConfig::new(6_000.0).kinds([FaultKind::MaintenanceWave]))
        .expect("chaos");
    assert!(
        eventually(
            Duration::from_secs(5),
            || emu.stats().fault_hits["maintenance_wave"].channel_sockets >= 9
        )
        .await
    );
    emu.set_chaos(ChaosConfig::new(0.0)).expect("calm");
    drop(relay);
}

/// Counts presence notifications on a socket until it closes or stays silent for `quiet`.
async fn count_presence(ws: &mut Ws, quiet: Duration) -> (u64, bool) {
    let mut n = 0;
    loop {
        match recv(ws, quiet).await {
            Recv::Text(text) => {
                if let Ok(Notification::Presence(_)) =
                    decode_notification(text.as_bytes(), EventTime(0))
                {
                    n += 1;
                }
            }
            Recv::Close(_) | Recv::Ended | Recv::Error(_) => return (n, true),
            Recv::Timeout => return (n, false),
            Recv::Binary(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_socket_takes_delivery_over_and_the_old_one_writes_what_it_had() {
    let emu = start(
        quiet()
            .users(200)
            .skew(0.0)
            .heartbeat_interval(Duration::ZERO),
    )
    .await;
    let token = token(&emu).await;
    let (id, uri) = create_channel(&emu, &token).await;
    subscribe(&emu, &token, &id, &emu.user_ids()).await;
    let mut old = connect(&uri).await;
    wait_connected(&emu, 1).await;
    emu.set_change_rate(5_000.0).expect("rate");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Connect a second socket to the same channel while the first is busy.
    let mut new = connect(&uri).await;
    let (on_old, closed) = count_presence(&mut old, Duration::from_secs(5)).await;
    assert!(
        closed,
        "the old socket is closed once the new one has taken over"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    emu.quiesce().await;
    let (on_new, _) = count_presence(&mut new, Duration::from_millis(500)).await;
    let stats = emu.stats();
    assert!(
        on_old > 0 && on_new > 0,
        "both delivered: {on_old} + {on_new}"
    );
    assert_eq!(stats.events_lost, 0, "{stats:?}");
    assert_eq!(stats.events_unreached, 0, "{stats:?}");
    assert_eq!(
        on_old + on_new,
        stats.events_generated,
        "every change reached one socket or the other"
    );
}

#[tokio::test(start_paused = true)]
async fn a_gone_channel_can_say_result_404_without_a_topic() {
    let emu = start(quiet().socket_404_message(true)).await;
    let token = token(&emu).await;
    // Connecting to a channel that does not exist.
    let uri = format!("ws://{}/channels/streaming-0-unknown", emu.addr());
    let mut ws = connect_status(&uri, None).await.expect("upgraded");
    let said = match recv(&mut ws, Duration::from_secs(5)).await {
        Recv::Text(text) => serde_json::from_str::<Value>(&text).unwrap_or_default(),
        other => panic!("expected the 404 message, got {other:?}"),
    };
    assert_eq!(said["result"], json!("404"));
    assert!(said.get("topicName").is_none());
    assert!(matches!(
        recv(&mut ws, Duration::from_secs(5)).await,
        Recv::Close(_)
    ));

    // A connected socket whose channel goes with its token.
    let (_, uri) = create_channel(&emu, &token).await;
    let mut socket = connect(&uri).await;
    wait_connected(&emu, 1).await;
    emu.expire_tokens().expect("expire");
    loop {
        match recv(&mut socket, Duration::from_secs(5)).await {
            Recv::Text(text) if text.contains("channel.metadata") => continue,
            Recv::Text(text) => {
                let said: Value = serde_json::from_str(&text).unwrap_or_default();
                assert_eq!(said["result"], json!("404"), "{text}");
                break;
            }
            other => panic!("expected the 404 message, got {other:?}"),
        }
    }
    assert!(matches!(
        recv(&mut socket, Duration::from_secs(5)).await,
        Recv::Close(_)
    ));
}
