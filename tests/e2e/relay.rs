//! Proves the binary relay source end to end: reading the emulator's 16-byte frames (with every
//! fault that can reach a relay client at random, and each of them once: socket faults, expired
//! tokens, bursts on the token endpoint), the topic converges on the truth keyed by
//! the decimal relay ids, with status, event time, location and group mask as the frames carry
//! them, and no user's event time ever goes backwards. (A change of the presence message alone,
//! which frames do not carry, arrives as the same state at a later time, and is published as a
//! change so the topic's event time matches.)

use std::time::{Duration, Instant};

use genesys_emulator::{EmulatorConfig, FaultTarget};

use crate::common::{self, Bridge, Expect, TopicReader};

const USERS: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_source_converges_on_the_truth() {
    let Some(kafka) = common::kafka().await else {
        return;
    };
    let started = Instant::now();
    let emulator = EmulatorConfig::default()
        .users(USERS as u32)
        .change_rate(3_000.0)
        .seed(51);
    let mut bridge = Bridge::start(&kafka, emulator, "relay", |args, e| {
        args.relay_url = Some(e.relay_url());
    })
    .await;
    let mut reader = TopicReader::open(&kafka.endpoint, &bridge.topic).await;

    let stats = common::run_chaos(
        &mut bridge,
        FaultTarget::Relay,
        10_000,
        Duration::from_secs(6),
    )
    .await;

    let converged = common::converge(
        &mut bridge,
        &mut reader,
        Duration::from_secs(120),
        Expect::relay(),
    )
    .await;
    reader.assert_no_problems();
    assert_eq!(reader.last.len(), USERS, "one key per relay user");
    assert!(reader.tombstones.is_empty(), "{:?}", reader.tombstones);
    assert!(
        reader
            .last
            .values()
            .all(|r| r.field_str("message") == Some(None)
                && r.field_str("presenceDefinitionId") == Some(None)),
        "frames carry no message or presence definition"
    );
    let bridge_stats = bridge.stats().await;
    eprintln!(
        "relay: {} changes, faults {:?}, relay {:?}, {} records, converged {:?} after quiesce, {:?} in all; bridge {bridge_stats}",
        stats.events_generated,
        stats.faults_injected,
        stats.relay,
        reader.records,
        converged.after,
        started.elapsed()
    );
    assert!(
        bridge_stats["decodeErrors"].as_u64().unwrap_or(0) >= 2,
        "the bad messages were counted: {bridge_stats}"
    );
    bridge.stop().await;
}
