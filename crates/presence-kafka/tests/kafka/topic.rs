//! The topic check at start: create compacted, warn about an uncompacted topic, refuse a
//! missing topic when creation is off.

use presence_kafka::{Error, KafkaPublisher};

use crate::common::{self, broker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_created_compacted() {
    let Some(broker) = broker() else { return };
    let config = broker.config("create").partitions(4);
    let topic = config.topic_name().to_owned();
    let publisher = KafkaPublisher::start(config).await.unwrap();
    let check = publisher.topic_check().unwrap();
    assert!(check.created);
    assert!(check.compacted);
    assert!(check.warnings.is_empty(), "{:?}", check.warnings);
    assert_eq!(check.partitions, 4);

    // Seen independently of the publisher.
    let (policy, partitions) = common::describe_topic(&broker, &topic).await;
    assert_eq!(policy, "compact");
    assert_eq!(partitions, 4);

    // A second start finds it as it is.
    let again = KafkaPublisher::start(broker.config("unused").topic(topic.clone()))
        .await
        .unwrap();
    let check = again.topic_check().unwrap();
    assert!(!check.created);
    assert!(check.compacted);
    assert_eq!(check.cleanup_policy.as_deref(), Some("compact"));
    assert_eq!(check.partitions, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_uncompacted_topic_gives_a_warning() {
    let Some(broker) = broker() else { return };
    let config = broker.config("uncompacted");
    let topic = config.topic_name().to_owned();
    common::create_topic(&broker, &topic, 2, "delete").await;

    let publisher = KafkaPublisher::start(config).await.unwrap();
    let check = publisher.topic_check().unwrap();
    assert!(!check.created);
    assert!(!check.compacted);
    assert_eq!(check.cleanup_policy.as_deref(), Some("delete"));
    assert_eq!(check.partitions, 2);
    assert_eq!(check.warnings.len(), 1, "{:?}", check.warnings);
    assert!(
        check.warnings[0].contains("not compact"),
        "{}",
        check.warnings[0]
    );
    assert!(check.warnings[0].contains(&topic));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_an_error_when_creation_is_off() {
    let Some(broker) = broker() else { return };
    let config = broker.config("nocreate").create_topic(false);
    let topic = config.topic_name().to_owned();
    match KafkaPublisher::start(config).await {
        Err(Error::TopicMissing { topic: missing }) => assert_eq!(missing, topic),
        other => panic!("expected TopicMissing, got {other:?}"),
    }
    // And it was not created behind our back (no auto-creation by metadata requests).
    let admin = common::admin(&broker);
    let metadata = admin
        .inner()
        .fetch_metadata(None, std::time::Duration::from_secs(10))
        .unwrap();
    assert!(metadata.topics().iter().all(|t| t.name() != topic));
}
