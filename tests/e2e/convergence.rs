//! Proves that, through every fault the emulator can inject (at random, and each kind once), the
//! topic ends holding the truth: once things calm down, the last record of every one of 2,000
//! users equals `/emulator/truth` (status, event time, message, presence definition, group
//! mask), and no user's event time ever went backwards on the topic.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use genesys_emulator::{EmulatorConfig, FaultTarget};

use crate::common::{self, Bridge, Expect, TopicReader};

const USERS: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topic_converges_on_the_truth_under_every_fault() {
    let Some(kafka) = common::kafka().await else {
        return;
    };
    let started = Instant::now();
    let emulator = EmulatorConfig::default()
        .users(USERS as u32)
        .change_rate(3_000.0)
        .seed(11);
    let mut bridge = Bridge::start(&kafka, emulator, "convergence", |args, e| {
        args.group_bits = Some(common::group_bits(e));
    })
    .await;
    let mut reader = TopicReader::open(&kafka.endpoint, &bridge.topic).await;

    let stats = common::run_chaos(
        &mut bridge,
        FaultTarget::All,
        10_000,
        Duration::from_secs(6),
    )
    .await;
    assert!(stats.events_generated >= 10_000, "{stats:?}");

    let converged = common::converge(
        &mut bridge,
        &mut reader,
        Duration::from_secs(120),
        Expect::genesys(true),
    )
    .await;
    reader.assert_no_problems();
    assert_eq!(reader.last.len(), USERS, "one key per user, no other key");
    assert!(reader.tombstones.is_empty(), "{:?}", reader.tombstones);
    let truth: HashSet<String> = bridge
        .emulator
        .truth()
        .into_iter()
        .map(|t| t.user_id)
        .collect();
    assert!(reader.last.keys().all(|k| truth.contains(k)));
    let bridge_stats = bridge.stats().await;
    eprintln!(
        "convergence: {} changes, faults {:?}, {} records, converged {:?} after quiesce, {:?} in all; bridge {bridge_stats}",
        stats.events_generated,
        stats.faults_injected,
        reader.records,
        converged.after,
        started.elapsed()
    );
    assert!(
        bridge_stats["decodeErrors"].as_u64().unwrap_or(0) >= 3,
        "the bad messages were counted: {bridge_stats}"
    );
    bridge.stop().await;
}
