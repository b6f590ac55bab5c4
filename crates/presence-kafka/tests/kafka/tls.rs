//! TLS (security.protocol SSL, server authentication only) through the broker's SSL
//! listener, whose self-signed certificate `scripts/kafka.sh` makes and exports as
//! `KAFKA_TLS_CA`.

use std::time::{Duration, Instant};

use presence_frame::Status;
use presence_kafka::{Error, KafkaPublisher, Publisher, Tls};

use crate::common::{self, tls_broker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripts_ca_publishes_over_tls() {
    let Some(broker) = tls_broker() else { return };
    let config = broker.config("tls");
    let topic = config.topic_name().to_owned();
    let publisher = KafkaPublisher::start(config).await.unwrap();
    assert!(publisher.topic_check().unwrap().created);
    publisher.publish(
        common::relay_event(11, 654_321, Status::TRAINING),
        Instant::now(),
    );
    let report = publisher.flush(Duration::from_secs(20)).await;
    assert!(report.is_complete(), "{report:?}");
    // Read back over TLS as well, with the same CA.
    let messages = common::read_topic(&broker, &topic);
    assert_eq!(messages.len(), 1);
    assert_eq!(common::key(&messages[0]), "11");
    assert_eq!(common::value(&messages[0]).unwrap()["status"], "Training");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_a_clear_tls_error() {
    let Some(broker) = tls_broker() else { return };
    // The system's roots do not include the script's self-signed certificate.
    let config = broker.config("tls-untrusted").tls(Tls::system_roots());
    let started = Instant::now();
    let error = KafkaPublisher::start(config).await.unwrap_err();
    let elapsed = started.elapsed();
    let text = error.to_string();
    assert!(matches!(error, Error::Authentication { .. }), "{error:?}");
    assert!(text.contains(&broker.brokers), "{text}");
    assert!(
        text.contains("SSL handshake failed") && text.contains("certificate verify failed"),
        "{text}"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "took {elapsed:?}: {text}"
    );
}
