//! No broker at all (a port that refuses connections): failures are retried with the newest
//! state and counted, health says so, and flush keeps its deadline. Needs no Kafka.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use presence_frame::Status;
use presence_kafka::{Error, KafkaConfig, KafkaPublisher, Publisher};

use crate::common;

fn refused_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    address.to_string()
}

fn config() -> KafkaConfig {
    KafkaConfig::new(refused_address())
        .topic(common::random_topic("outage"))
        .check_topic(false)
        .linger(Duration::ZERO)
        .delivery_timeout(Duration::from_millis(400))
        .retry_backoff(Duration::from_millis(50), Duration::from_millis(100))
        .statistics_interval(Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_retried_with_the_newest_state_and_counted() {
    let publisher = KafkaPublisher::start(config()).await.unwrap();
    assert!(publisher.topic_check().is_none());
    publisher.publish(
        common::relay_event(1, 1_000, Status::AVAILABLE),
        Instant::now(),
    );
    // The first record is in flight now; a newer state of the same user waits behind it.
    assert!(
        common::wait_for(Duration::from_secs(5), || publisher.snapshot().in_flight
            == 1)
        .await
    );
    publisher.publish(common::relay_event(1, 2_000, Status::BUSY), Instant::now());

    let settled = common::wait_for(Duration::from_secs(20), || {
        let s = publisher.snapshot();
        s.failed >= 3 && s.retried >= 1 && s.superseded >= 1
    })
    .await;
    let stats = publisher.snapshot();
    assert!(settled, "{stats:?}");
    assert_eq!(stats.delivered, 0);
    // The superseded first state is gone: one user, one state, waiting or in flight.
    assert_eq!(stats.queue_depth + stats.in_flight, 1, "{stats:?}");
    assert_eq!(stats.dropped, 0);

    let health = publisher.health();
    assert!(!health.reachable, "{health:?}");
    assert!(health.last_error.is_some(), "{health:?}");

    let started = Instant::now();
    let report = publisher.flush(Duration::from_millis(700)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(650) && took < Duration::from_millis(3_000),
        "flush took {took:?}"
    );
    assert_eq!(report.undelivered(), 1, "{report:?}");
    assert_eq!(
        report.undelivered_users,
        vec![presence_frame::UserId::Relay(1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_clearly_when_no_broker_answers() {
    let config = config()
        .check_topic(true)
        .startup_timeout(Duration::from_millis(800));
    let started = Instant::now();
    match KafkaPublisher::start(config).await {
        Err(Error::Unreachable {
            timeout_ms, reason, ..
        }) => {
            assert_eq!(timeout_ms, 800);
            assert!(!reason.is_empty());
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
