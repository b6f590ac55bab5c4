//! Proves the group filter end to end: with the emulator's groups mapped to bits and
//! `--allowed-groups 0x3`, only users in group 0 or 1 ever appear on the topic, every one of them
//! does, each with its current state and group mask.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use genesys_emulator::EmulatorConfig;

use crate::common::{self, Bridge, Expect, TopicReader};

const ALLOWED: u64 = 0b11;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_users_in_allowed_groups_reach_the_topic() {
    let Some(kafka) = common::kafka().await else {
        return;
    };
    let started = Instant::now();
    let emulator = EmulatorConfig::default()
        .users(400)
        .change_rate(400.0)
        .seed(41);
    let mut bridge = Bridge::start(&kafka, emulator, "groups", |args, e| {
        args.group_bits = Some(common::group_bits(e));
        args.allowed_groups = Some(format!("{ALLOWED:#x}"));
    })
    .await;
    let mut reader = TopicReader::open(&kafka.endpoint, &bridge.topic).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while bridge.emulator.stats().events_generated < 1_500 {
        assert!(Instant::now() < deadline, "workload too slow");
        bridge.assert_running().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let took = common::converge(
        &mut bridge,
        &mut reader,
        Duration::from_secs(60),
        Expect {
            allowed: Some(ALLOWED),
            ..Expect::genesys(true)
        },
    )
    .await
    .after;
    reader.assert_no_problems();
    let truth = bridge.emulator.truth();
    let inside: HashSet<&str> = truth
        .iter()
        .filter(|t| t.group_mask & ALLOWED != 0)
        .map(|t| t.user_id.as_str())
        .collect();
    assert!(
        !inside.is_empty() && inside.len() < truth.len(),
        "the workload has users on both sides of the filter"
    );
    let outside: Vec<&String> = reader
        .last
        .keys()
        .filter(|k| !inside.contains(k.as_str()))
        .collect();
    assert!(
        outside.is_empty(),
        "{} users outside the allowed groups reached the topic, e.g. {:?}",
        outside.len(),
        &outside[..outside.len().min(5)]
    );
    assert_eq!(reader.last.len(), inside.len());
    let stats = bridge.stats().await;
    eprintln!(
        "groups: {} of {} users allowed, {} records, converged {took:?} after quiesce, {:?} in all; bridge {stats}",
        inside.len(),
        truth.len(),
        reader.records,
        started.elapsed()
    );
    assert!(stats["filteredOut"].as_u64().unwrap_or(0) > 0, "{stats}");
    bridge.stop().await;
}
