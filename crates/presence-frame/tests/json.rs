//! Genesys notification decoding on the official example payloads and spelling variants.

use presence_frame::{
    Error, EventTime, GenesysPresence, Guid, Notification, Source, Status, SystemTopicType, UserId,
    decode_notification,
};

const RECEIVED: EventTime = EventTime(1_000);

fn decode(text: &str) -> Notification {
    decode_notification(text.as_bytes(), RECEIVED).expect(text)
}

fn user() -> UserId {
    UserId::Genesys(Guid::parse("9ed7d9f6-0c59-4360-ac54-40dd35eb9c2f").expect("guid"))
}

#[test]
fn official_presence_example() {
    let Notification::Presence(event) = decode(include_str!("data/presence-event.json")) else {
        panic!("not a presence event");
    };
    assert_eq!(event.user, user());
    assert_eq!(
        event.user.to_string(),
        "9ed7d9f6-0c59-4360-ac54-40dd35eb9c2f"
    );
    assert_eq!(event.state.status, Status::AVAILABLE);
    assert_eq!(
        event.time,
        EventTime::parse_rfc3339("2026-11-28T09:03:17.067Z").expect("time")
    );
    assert_eq!(event.time.as_millis(), 1_795_856_597_067);
    assert_eq!(
        event.state.definition_id.as_deref(),
        Some("6a3af858-942f-489d-9700-5f9bcdcdae9b")
    );
    assert_eq!(event.state.message, None, "an empty message is no message");
    assert_eq!(event.source, Source::Stream);
}

#[test]
fn missing_modified_date_uses_receipt_time() {
    let text = r#"{"topicName":"v2.users.9ed7d9f6-0c59-4360-ac54-40dd35eb9c2f.presence","version":"2",
        "eventBody":{"source":"PURECLOUD","presenceDefinition":{"id":"6a3af858-942f-489d-9700-5f9bcdcdae9b",
        "systemPresence":"BUSY"},"primary":true,"message":"in a 1:1"},"metadata":{"CorrelationId":"x"}}"#;
    let Notification::Presence(event) = decode(text) else {
        panic!("not presence")
    };
    assert_eq!(event.time, RECEIVED);
    assert_eq!(event.state.status, Status::BUSY);
    assert_eq!(event.state.message.as_deref(), Some("in a 1:1"));
}

#[test]
fn invalid_modified_date_is_an_error_not_a_guess() {
    let text = r#"{"topicName":"v2.users.9ed7d9f6-0c59-4360-ac54-40dd35eb9c2f.presence",
        "eventBody":{"presenceDefinition":{"systemPresence":"BUSY"},"modifiedDate":"yesterday"}}"#;
    let err = decode_notification(text.as_bytes(), RECEIVED).expect_err("bad date");
    assert!(matches!(err, Error::InvalidTimestamp { .. }), "{err}");
    assert!(err.to_string().contains("yesterday"));
}

#[test]
fn system_presence_spellings_are_one_value() {
    for spelling in [
        "ON_QUEUE", "OnQueue", "On Queue", "on-queue", "onqueue", "ON QUEUE",
    ] {
        assert_eq!(
            Status::from_system_presence(spelling),
            Status::ON_QUEUE,
            "{spelling}"
        );
        let text = format!(
            r#"{{"topicName":"v2.users.9ed7d9f6-0c59-4360-ac54-40dd35eb9c2f.presence",
            "eventBody":{{"presenceDefinition":{{"systemPresence":"{spelling}"}},"modifiedDate":"2026-11-28T09:03:17Z"}}}}"#
        );
        let Notification::Presence(event) = decode(&text) else {
            panic!("not presence")
        };
        assert_eq!(event.state.status, Status::ON_QUEUE, "{spelling}");
    }
    let names = [
        ("Available", Status::AVAILABLE),
        ("AWAY", Status::AWAY),
        ("Busy", Status::BUSY),
        ("OFFLINE", Status::OFFLINE),
        ("Idle", Status::IDLE),
        ("MEAL", Status::MEAL),
        ("Training", Status::TRAINING),
        ("meeting", Status::MEETING),
        ("Break", Status::BREAK),
        ("Out Of Office", Status::UNKNOWN),
        ("", Status::UNKNOWN),
    ];
    for (text, status) in names {
        assert_eq!(Status::from_system_presence(text), status, "{text}");
    }
    for status in Status::ALL {
        if let Some(genesys) = status.system_presence() {
            assert_eq!(Status::from_system_presence(genesys), status);
        }
        if let Some(name) = status.name() {
            assert_eq!(Status::from_system_presence(name), status);
        }
    }
}

#[test]
fn topic_names_are_case_insensitive_and_ids_normalised() {
    let text = r#"{"topicName":"V2.USERS.9ED7D9F6-0C59-4360-AC54-40DD35EB9C2F.PRESENCE",
        "eventBody":{"presenceDefinition":{"systemPresence":"Away"}}}"#;
    let Notification::Presence(event) = decode(text) else {
        panic!("not presence")
    };
    assert_eq!(event.user, user());
}

#[test]
fn heartbeat_pong_and_metadata() {
    let heartbeat =
        r#"{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}"#;
    assert_eq!(decode(heartbeat), Notification::Heartbeat);
    let pong = r#"{"topicName":"channel.metadata","eventBody":{"message":"pong"}}"#;
    assert_eq!(decode(pong), Notification::Pong);
    let other = r#"{"topicName":"channel.metadata","eventBody":{"message":"hello"}}"#;
    assert_eq!(
        decode(other),
        Notification::Metadata {
            message: "hello".into()
        }
    );
}

#[test]
fn routing_status_event() {
    let text = r#"{"topicName":"v2.users.9ed7d9f6-0c59-4360-ac54-40dd35eb9c2f.routingStatus","version":"2",
        "eventBody":{"id":"9ed7d9f6-0c59-4360-ac54-40dd35eb9c2f","routingStatus":{"status":"INTERACTING","startTime":"2026-11-28T09:03:17.067Z"}}}"#;
    let Notification::RoutingStatus(event) = decode(text) else {
        panic!("not routing status")
    };
    assert_eq!(event.user, user());
    assert_eq!(event.status, "INTERACTING");
    assert_eq!(
        event.start_time.map(EventTime::as_millis),
        Some(1_795_856_597_067)
    );
}

#[test]
fn system_messages() {
    let closing =
        r#"{"topicName":"v2.system.socket_closing","eventBody":{"message":"closing in 1 minute"}}"#;
    assert_eq!(decode(closing), Notification::SocketClosing);

    let gone = r#"{"topicName":"v2.system.no_longer_subscribed","eventBody":{"channelId":"streaming-0-abc",
        "systemTopicType":"no_longer_subscribed","reason":"another_channel_subscribed","message":"bye"}}"#;
    let Notification::System(system) = decode(gone) else {
        panic!("not system")
    };
    assert_eq!(
        system.system_topic_type,
        Some(SystemTopicType::NoLongerSubscribed)
    );
    assert_eq!(system.channel_id.as_deref(), Some("streaming-0-abc"));
    assert_eq!(system.reason.as_deref(), Some("another_channel_subscribed"));
    assert!(system.channel_gone());

    // The topic alone is enough to know the channel is gone.
    let bare = r#"{"topicName":"v2.system.no_longer_subscribed"}"#;
    let Notification::System(system) = decode(bare) else {
        panic!("not system")
    };
    assert!(system.channel_gone());

    let revoked = r#"{"topicName":"v2.system.token_revoked","eventBody":{"systemTopicType":"TOKEN_REVOKED"}}"#;
    let Notification::System(system) = decode(revoked) else {
        panic!("not system")
    };
    assert_eq!(
        system.system_topic_type,
        Some(SystemTopicType::TokenRevoked)
    );
    assert!(!system.channel_gone());
}

#[test]
fn unknown_topics_are_values_not_errors() {
    let text = r#"{"topicName":"v2.users.9ed7d9f6-0c59-4360-ac54-40dd35eb9c2f.conversations","eventBody":{}}"#;
    assert_eq!(
        decode(text),
        Notification::UnknownTopic {
            topic: "v2.users.9ed7d9f6-0c59-4360-ac54-40dd35eb9c2f.conversations".into()
        }
    );
}

#[test]
fn bad_input_gets_errors_that_say_what_was_wrong() {
    let cases: [(&str, &str); 5] = [
        ("not json", "json"),
        (r#"{"eventBody":{}}"#, "json"),
        (
            r#"{"topicName":"v2.users.not-a-guid.presence","eventBody":{}}"#,
            "invalid_user_id",
        ),
        (
            r#"{"topicName":"v2.users.9ed7d9f6-0c59-4360-ac54-40dd35eb9c2f.presence"}"#,
            "missing_field",
        ),
        (
            r#"{"topicName":"v2.users.9ed7d9f6-0c59-4360-ac54-40dd35eb9c2f.presence","eventBody":[1]}"#,
            "json",
        ),
    ];
    for (text, kind) in cases {
        let err = decode_notification(text.as_bytes(), RECEIVED).expect_err(text);
        assert_eq!(err.kind(), kind, "{text}: {err}");
    }
}

#[test]
fn long_offending_input_is_shortened_in_errors() {
    let id = "x".repeat(10_000);
    let text = format!(r#"{{"topicName":"v2.users.{id}.presence","eventBody":{{}}}}"#);
    let err = decode_notification(text.as_bytes(), RECEIVED).expect_err("bad id");
    assert!(err.to_string().len() < 200, "{}", err.to_string().len());
}

#[test]
fn rest_presence_objects_decode_with_their_own_modified_date() {
    let text = r#"{"presenceDefinition":{"id":"e08eaf1b-ee47-4fa9-a231-1200e284798f","systemPresence":"On Queue"},
        "message":"","modifiedDate":"2026-11-28T08:00:00.000Z","source":"PURECLOUD","primary":true}"#;
    let presence: GenesysPresence<'_> = serde_json::from_str(text).expect("presence");
    let event = presence
        .to_event(user(), RECEIVED, Source::Resync)
        .expect("event");
    assert_eq!(event.state.status, Status::ON_QUEUE);
    assert_eq!(event.source, Source::Resync);
    assert_eq!(event.time.to_rfc3339(), "2026-11-28T08:00:00.000Z");
}
