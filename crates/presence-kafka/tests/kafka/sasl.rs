//! SASL (SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN) through the broker's SASL_PLAINTEXT listener.

use std::time::{Duration, Instant};

use presence_frame::Status;
use presence_kafka::{Error, KafkaPublisher, Publisher, Sasl, SaslMechanism, SecretString};

use crate::common::{self, sasl_broker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_512_with_the_right_password_publishes() {
    publishes_with(SaslMechanism::ScramSha512).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_with_the_right_password_publishes() {
    publishes_with(SaslMechanism::ScramSha256).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_with_the_right_password_publishes() {
    publishes_with(SaslMechanism::Plain).await;
}

/// Starts a publisher with the broker's SASL user and `mechanism`, publishes one record and
/// reads it back.
async fn publishes_with(mechanism: SaslMechanism) {
    let Some(broker) = sasl_broker() else { return };
    let sasl = broker.sasl.clone().unwrap();
    let config = broker
        .config(&format!("sasl-{}", mechanism.as_str().to_lowercase()))
        .sasl(Sasl::new(
            mechanism,
            sasl.username().to_owned(),
            SecretString::from(common::sasl_password()),
        ));
    let topic = config.topic_name().to_owned();
    let publisher = KafkaPublisher::start(config).await.unwrap();
    assert!(publisher.topic_check().unwrap().created);
    publisher.publish(
        common::relay_event(9, 123_456, Status::TRAINING),
        Instant::now(),
    );
    let report = publisher.flush(Duration::from_secs(20)).await;
    assert!(report.is_complete(), "{report:?}");
    let messages = common::read_topic(&broker, &topic);
    assert_eq!(messages.len(), 1);
    assert_eq!(common::value(&messages[0]).unwrap()["status"], "Training");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_clear_authentication_error_that_hides_it() {
    let Some(broker) = sasl_broker() else { return };
    let username = broker.sasl.as_ref().unwrap().username().to_owned();
    let wrong = "not-the-password-0xC0FFEE";
    let config = broker.config("sasl-wrong").sasl(Sasl::new(
        SaslMechanism::ScramSha512,
        username,
        SecretString::from(wrong),
    ));
    assert!(!format!("{config:?}").contains(wrong));
    let started = Instant::now();
    let error = KafkaPublisher::start(config).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, Error::Authentication { .. }), "{error:?}");
    assert!(
        text.contains("SCRAM-SHA-512") && text.contains("uthentication"),
        "{text}"
    );
    assert!(
        !text.contains(wrong) && !format!("{error:?}").contains(wrong),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}
