//! What lands on the topic: keys, JSON values, headers, timestamps, tombstones, and key
//! placement that agrees with the Java client.

use std::time::{Duration, Instant};

use presence_frame::{EventTime, Status, UserId};
use presence_kafka::{Compression, KafkaPublisher, PresenceRecord, Publisher};
use rdkafka::message::{Message, Timestamp};

use crate::common::{self, broker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_with_key_value_headers_and_timestamp() {
    let Some(broker) = broker() else { return };
    let config = broker.config("roundtrip");
    let topic = config.topic_name().to_owned();
    let publisher = KafkaPublisher::start(config).await.unwrap();

    let guid = "9ed7d9f6-0c59-4360-ac54-40dd35eb9c2f";
    let received = Instant::now();
    publisher.publish(common::genesys_event(guid, 1_764_320_597_067), received);
    publisher.publish(
        common::relay_event(42, 1_764_320_598_000, Status::BREAK),
        received,
    );
    let report = publisher.flush(Duration::from_secs(20)).await;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.delivered, 2);

    let messages = common::read_topic(&broker, &topic);
    assert_eq!(messages.len(), 2);
    let by_key = common::last_per_key(&messages);

    let genesys = by_key[guid];
    let value = common::value(genesys).unwrap();
    assert_eq!(value["schemaVersion"], 1);
    assert_eq!(value["userId"], guid);
    assert_eq!(value["status"], "On Queue");
    assert_eq!(value["statusCode"], 8);
    assert_eq!(value["location"], "Unknown");
    assert_eq!(value["locationCode"], 0);
    assert_eq!(value["groupMask"], 5);
    assert_eq!(
        value["presenceDefinitionId"],
        "e08eaf1b-ee47-4fa9-a231-1200e284798f"
    );
    assert_eq!(value["message"], "Back in 5");
    assert_eq!(value["eventTime"], "2025-11-28T09:03:17.067Z");
    assert_eq!(value["eventTimeMillis"], 1_764_320_597_067i64);
    assert_eq!(value["source"], "stream");
    let received_at = value["receivedAtMillis"].as_i64().unwrap();
    let now = EventTime::now().as_millis();
    assert!(
        received_at <= now && received_at > now - 60_000,
        "receivedAt {received_at}, now {now}"
    );
    assert!(EventTime::parse_rfc3339(value["receivedAt"].as_str().unwrap()).is_ok());
    assert_eq!(
        genesys.timestamp(),
        Timestamp::CreateTime(1_764_320_597_067)
    );
    let headers = common::headers(genesys);
    assert_eq!(headers["event-time-ms"], "1764320597067");
    assert_eq!(headers["schema-version"], "1");

    let relay = by_key["42"];
    let record: PresenceRecord = serde_json::from_slice(relay.payload().unwrap()).unwrap();
    assert_eq!(record.user_id, "42");
    assert_eq!((record.status.as_str(), record.status_code), ("Break", 4));
    assert_eq!(
        (record.location.as_str(), record.location_code),
        ("Desk", 1)
    );
    assert_eq!(record.group_mask, 1 << 2);
    assert_eq!(
        (record.message, record.presence_definition_id),
        (None, None)
    );
    assert_eq!(record.source, "relay");
    assert_eq!(relay.timestamp(), Timestamp::CreateTime(1_764_320_598_000));

    // Keys sit where the Java client would put them (murmur2), on this 3-partition topic.
    for message in &messages {
        let key = message.key().unwrap();
        assert_eq!(
            message.partition(),
            common::java_partition(key, 3),
            "key {}",
            common::key(message)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_is_the_key_with_a_null_value() {
    let Some(broker) = broker() else { return };
    // zstd here (lz4, the default, everywhere else): the broker takes both.
    let config = broker.config("tombstone").compression(Compression::Zstd);
    let topic = config.topic_name().to_owned();
    let publisher = KafkaPublisher::start(config).await.unwrap();

    publisher.publish(
        common::relay_event(7, 1_000_000, Status::AVAILABLE),
        Instant::now(),
    );
    assert!(publisher.flush(Duration::from_secs(20)).await.is_complete());
    publisher.tombstone(UserId::Relay(7), EventTime(2_000_000), Instant::now());
    assert!(publisher.flush(Duration::from_secs(20)).await.is_complete());

    let messages = common::read_topic(&broker, &topic);
    assert_eq!(messages.len(), 2);
    assert!(messages.iter().all(|m| common::key(m) == "7"));
    assert!(messages[0].payload().is_some());
    let tombstone = &messages[1];
    assert_eq!(tombstone.payload(), None, "a tombstone has a null value");
    assert_eq!(tombstone.timestamp(), Timestamp::CreateTime(2_000_000));
    let headers = common::headers(tombstone);
    assert_eq!(headers["event-time-ms"], "2000000");
    assert_eq!(headers["schema-version"], "1");
}
