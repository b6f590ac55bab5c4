//! Proves the bridge's SASL settings end to end: through the broker's SASL_PLAINTEXT listener
//! with SCRAM-SHA-512 and the right password (from `--kafka-sasl-password-file`) every user's
//! state arrives on the topic; with a wrong password `serve` fails promptly with an error that
//! says authentication failed, without the password in it.

use std::time::{Duration, Instant};

use genesys_emulator::EmulatorConfig;
use presence_kafka::{SaslMechanism, SecurityProtocol};

use crate::common::{self, Bridge, Expect, SecretFile, TopicReader};

const USERS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_512_with_the_right_password_publishes() {
    let Some(kafka) = common::kafka().await else {
        return;
    };
    let Some(sasl) = common::sasl_endpoint(&kafka).await else {
        return;
    };
    let (username, password) = sasl.sasl.clone().expect("SASL credentials");
    let password_file = SecretFile::new(&password);
    let started = Instant::now();
    let emulator = EmulatorConfig::default()
        .users(USERS as u32)
        .change_rate(0.0)
        .seed(61);
    let mut bridge = Bridge::launch(&sasl, emulator, "sasl", |args, _| {
        args.kafka_security_protocol = Some(SecurityProtocol::SaslPlaintext);
        args.kafka_sasl_mechanism = Some(SaslMechanism::ScramSha512);
        args.kafka_sasl_username = Some(username);
        args.kafka_sasl_password_file = Some(password_file.path.clone());
    })
    .await;
    bridge.ready().await;
    let mut reader = TopicReader::open(&sasl, &bridge.topic).await;
    let took = common::converge(
        &mut bridge,
        &mut reader,
        Duration::from_secs(30),
        Expect::genesys(false),
    )
    .await
    .after;
    reader.assert_no_problems();
    assert_eq!(reader.last.len(), USERS);
    eprintln!(
        "sasl: {USERS} users published over SCRAM-SHA-512, converged {took:?} after quiesce, {:?} in all",
        started.elapsed()
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sasl_password_fails_clearly_and_promptly() {
    let Some(kafka) = common::kafka().await else {
        return;
    };
    let Some(sasl) = common::sasl_endpoint(&kafka).await else {
        return;
    };
    let (username, _) = sasl.sasl.clone().expect("SASL credentials");
    let wrong = "not-the-password-0xC0FFEE";
    let password_file = SecretFile::new(wrong);
    let emulator = EmulatorConfig::default().users(5).change_rate(0.0).seed(62);
    let started = Instant::now();
    let mut bridge = Bridge::launch(&sasl, emulator, "sasl-wrong", |args, _| {
        args.kafka_security_protocol = Some(SecurityProtocol::SaslPlaintext);
        args.kafka_sasl_mechanism = Some(SaslMechanism::ScramSha512);
        args.kafka_sasl_username = Some(username);
        args.kafka_sasl_password_file = Some(password_file.path.clone());
    })
    .await;
    let limit = Duration::from_secs(20);
    let ended = bridge.ended_within(limit).await;
    let took = started.elapsed();
    let Some(Err(error)) = ended else {
        panic!(
            "with a wrong SASL password the bridge should fail to start within {limit:?}; got {ended:?}, stats {}",
            bridge.stats().await
        );
    };
    eprintln!("sasl (wrong password): failed after {took:?}: {error}");
    let lower = error.to_lowercase();
    assert!(
        lower.contains("authentication") || lower.contains("sasl"),
        "the error says authentication failed: {error}"
    );
    assert!(
        !error.contains(wrong),
        "the error must not show the password: {error}"
    );
}
