//! Presence notifications: their exact shape, and agreement with the ground truth.

use std::collections::HashMap;
use std::time::Duration;

use presence_frame::{EventTime, Notification, UserId, decode_notification};
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn notifications_look_like_the_documented_example() {
    let emu = start(quiet().users(5).change_rate(200.0)).await;
    let token = token(&emu).await;
    let users = emu.user_ids();
    let (id, uri) = create_channel(&emu, &token).await;
    subscribe(&emu, &token, &id, &users).await;
    let mut socket = connect(&uri).await;
    let (text, decoded) = next_notification(&mut socket, Duration::from_secs(5))
        .await
        .expect("an event");
    let json: Value = serde_json::from_str(&text).expect("JSON");
    let object = json.as_object().expect("object");
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    let topic = json["topicName"].as_str().expect("topicName");
    assert!(topic.starts_with("v2.users.") && topic.ends_with(".presence"));
    assert_eq!(json["version"], "2");
    let body = &json["eventBody"];
    assert_eq!(body["source"], "PURECLOUD");
    assert_eq!(body["primary"], true);
    assert!(body["message"].is_string());
    assert!(body["presenceDefinition"]["id"].is_string());
    let spelled = body["presenceDefinition"]["systemPresence"]
        .as_str()
        .expect("sp");
    assert_eq!(
        spelled,
        spelled.to_ascii_uppercase(),
        "notifications spell ON_QUEUE style"
    );
    assert!(EventTime::parse_rfc3339(body["modifiedDate"].as_str().expect("date")).is_ok());
    assert!(json["metadata"]["CorrelationId"].is_string());
    // Key order as in the example.
    assert!(text.starts_with(r#"{"topicName":"v2.users."#));
    assert!(text.contains(
        r#".presence","version":"2","eventBody":{"source":"PURECLOUD","presenceDefinition":{"id":""#
    ));
    assert!(matches!(decoded, Notification::Presence(_)));
}

#[tokio::test]
async fn modified_date_can_be_omitted() {
    let emu = start(
        quiet()
            .users(3)
            .change_rate(200.0)
            .notification_modified_date(false),
    )
    .await;
    let token = token(&emu).await;
    let (id, uri) = create_channel(&emu, &token).await;
    subscribe(&emu, &token, &id, &emu.user_ids()).await;
    let mut socket = connect(&uri).await;
    let (text, _) = next_notification(&mut socket, Duration::from_secs(5))
        .await
        .expect("event");
    let json: Value = serde_json::from_str(&text).expect("JSON");
    assert!(json["eventBody"].get("modifiedDate").is_none());
    assert!(json["eventBody"].get("presenceDefinition").is_some());
}

#[tokio::test]
async fn events_agree_with_the_truth() {
    let emu = start(
        quiet()
            .users(40)
            .change_rate(3_000.0)
            .skew(0.8)
            .shift_change_every(Duration::from_millis(100))
            .shift_change_fraction(0.5),
    )
    .await;
    let token = token(&emu).await;
    let users = emu.user_ids();
    let (id, uri) = create_channel(&emu, &token).await;
    // Connected before subscribing, so no event can be lost. Half the users on this
    // channel; the rest must produce nothing here.
    let mut socket = connect(&uri).await;
    assert!(
        eventually(Duration::from_secs(5), || emu
            .stats()
            .channels
            .iter()
            .any(|c| c.connected))
        .await
    );
    subscribe(&emu, &token, &id, &users[..20]).await;
    let mut last: HashMap<UserId, (i64, Value)> = HashMap::new();
    let mut received = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(400);
    let mut quiesced = false;
    loop {
        if !quiesced && tokio::time::Instant::now() >= deadline {
            let reply = admin(&emu, "POST", "/emulator/quiesce", "").await;
            assert_eq!(reply.status, 200);
            quiesced = true;
        }
        let wait = if quiesced {
            Duration::from_millis(300)
        } else {
            Duration::from_millis(50)
        };
        match recv(&mut socket, wait).await {
            Recv::Text(text) => {
                let decoded = decode_notification(text.as_bytes(), EventTime(0)).expect("decodes");
                let Notification::Presence(event) = decoded else {
                    continue;
                };
                received += 1;
                let json: Value = serde_json::from_str(&text).expect("JSON");
                if let Some((previous, _)) = last.get(&event.user) {
                    assert!(
                        event.time.as_millis() > *previous,
                        "modifiedDate strictly increases"
                    );
                }
                last.insert(
                    event.user,
                    (event.time.as_millis(), json["eventBody"].clone()),
                );
            }
            Recv::Timeout if quiesced => break,
            Recv::Timeout => {}
            other => panic!("socket ended: {other:?}"),
        }
    }
    assert!(received > 100, "only {received} events");
    let stats = emu.stats();
    assert_eq!(stats.events_delivered, received);
    assert_eq!(stats.events_lost, 0);
    let truth: Vec<genesys_emulator::TruthEntry> =
        serde_json::from_slice(&admin(&emu, "GET", "/emulator/truth", "").await.body)
            .expect("truth");
    assert_eq!(truth, emu.truth());
    for entry in &truth {
        let user = UserId::Genesys(entry.user().expect("guid"));
        let subscribed = users[..20].contains(&entry.user().expect("guid"));
        match last.get(&user) {
            Some((time, body)) => {
                assert!(subscribed, "event for an unsubscribed user");
                assert_eq!(*time, entry.modified().expect("time").as_millis());
                assert_eq!(
                    body["presenceDefinition"]["id"],
                    entry.presence_definition_id.as_str()
                );
                assert_eq!(
                    body["presenceDefinition"]["systemPresence"],
                    entry.system_presence.as_str()
                );
                assert_eq!(body["message"], entry.message.as_str());
                assert_eq!(body["modifiedDate"], entry.modified_date.as_str());
            }
            None => {
                // No event: the user did not change since the channel was connected.
                assert!(entry.modified().expect("time").as_millis() < emu.now().as_millis());
            }
        }
    }
    assert!(
        last.len() >= 15,
        "most subscribed users changed: {}",
        last.len()
    );
}

#[tokio::test(start_paused = true)]
async fn the_generator_follows_the_paused_clock() {
    let emu = start(quiet().users(100).change_rate(100.0)).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let generated = emu.stats().events_generated;
    assert!(
        (990..=1_001).contains(&generated),
        "{generated} changes in 10 s at 100/s"
    );
    // The emulator clock moved with tokio's.
    let newest = emu
        .truth()
        .iter()
        .filter_map(|t| t.modified())
        .max()
        .expect("times");
    assert!((emu.now().as_millis() - newest.as_millis()).abs() < 1_000);
    // Rate 0 means nothing at all.
    emu.set_change_rate(0.0).expect("rate");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = emu.stats().events_generated;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(emu.stats().events_generated, before);
}

#[tokio::test(start_paused = true)]
async fn shift_changes_move_many_users_at_once() {
    let emu = start(
        quiet()
            .users(1_000)
            .change_rate(1.0)
            .shift_change_every(Duration::from_secs(60))
            .shift_change_fraction(0.3),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(59)).await;
    let before = emu.stats().events_generated;
    assert!(before < 70);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = emu.stats().events_generated;
    assert!(
        after - before > 100,
        "a shift change moved {} users",
        after - before
    );
}

#[tokio::test]
async fn same_seed_same_organisation() {
    let a = start(quiet().seed(3)).await;
    let b = start(quiet().seed(3)).await;
    let c = start(quiet().seed(4)).await;
    assert_eq!(a.user_ids(), b.user_ids());
    assert_eq!(a.group_ids(), b.group_ids());
    let strip = |t: Vec<genesys_emulator::TruthEntry>| {
        t.into_iter()
            .map(|e| {
                (
                    e.user_id,
                    e.system_presence,
                    e.presence_definition_id,
                    e.groups,
                    e.location,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(a.truth()), strip(b.truth()));
    assert_ne!(a.user_ids(), c.user_ids());
}
