//! Proves the time-to-live end to end: users nobody confirms (no changes, no resync) are expired
//! after the TTL and become tombstones (null value, same key) on the topic, never before the TTL;
//! and with a periodic resync shorter than the TTL, live users are confirmed and never get one,
//! while the repeated identical snapshots publish nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use genesys_emulator::EmulatorConfig;
use presence_frame::EventTime;

use crate::common::{self, Bridge, TopicReader};

const USERS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_users_expire_into_tombstones() {
    let Some(kafka) = common::kafka().await else {
        return;
    };
    let started = Instant::now();
    let emulator = EmulatorConfig::default()
        .users(USERS as u32)
        .change_rate(0.0)
        .seed(31);
    let mut bridge = Bridge::start(&kafka, emulator, "expiry", |args, _| {
        args.ttl = Some("2s".into());
        args.resync_interval = Some("off".into());
    })
    .await;
    let mut reader = TopicReader::open(&kafka.endpoint, &bridge.topic).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    // When each user's tombstone was first read (wall clock, ms): it was written no later.
    let mut seen_at: HashMap<String, i64> = HashMap::new();
    while reader.tombstones.len() < USERS {
        bridge.assert_running().await;
        assert!(
            Instant::now() < deadline,
            "{} of {USERS} users tombstoned; bridge {}",
            reader.tombstones.len(),
            bridge.stats().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        reader.read_to_end().await;
        let now = EventTime::now().as_millis();
        for key in reader.tombstones.keys() {
            seen_at.entry(key.clone()).or_insert(now);
        }
    }
    reader.assert_no_problems();
    let truth = bridge.emulator.truth();
    assert_eq!(reader.last.len(), USERS);
    assert_eq!(
        reader.records,
        2 * USERS,
        "one state and one tombstone per user"
    );
    for t in &truth {
        let last = &reader.last[&t.user_id];
        assert!(last.value.is_none(), "{}: last record {last:?}", t.user_id);
        assert_eq!(reader.tombstones[&t.user_id], 1);
    }
    // Each tombstone is dated with the event time of the state it deletes (so that the same
    // state coming back replaces it), and comes no sooner than the TTL after the user was last
    // confirmed (the `receivedAtMillis` of its state record): it was read at least 2 s later.
    for t in &truth {
        let state = &reader.last_value[&t.user_id];
        assert_eq!(
            reader.last[&t.user_id].timestamp,
            state.field_i64("eventTimeMillis"),
            "{}: the tombstone's time",
            t.user_id
        );
        let confirmed = state
            .field_i64("receivedAtMillis")
            .expect("receivedAtMillis");
        let seen = seen_at[&t.user_id];
        assert!(
            seen - confirmed >= 2_000 - 50,
            "{}: tombstone read {} ms after it was last confirmed",
            t.user_id,
            seen - confirmed
        );
    }
    let expired = bridge.stats().await["expired"].as_u64();
    eprintln!(
        "expiry: {USERS} users tombstoned in {:?}; bridge expired {expired:?}",
        started.elapsed()
    );
    assert_eq!(expired, Some(USERS as u64));
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_keeps_live_users_from_expiring() {
    let Some(kafka) = common::kafka().await else {
        return;
    };
    let started = Instant::now();
    let emulator = EmulatorConfig::default()
        .users(USERS as u32)
        .change_rate(0.0)
        .seed(32);
    let mut bridge = Bridge::start(&kafka, emulator, "resync", |args, _| {
        args.ttl = Some("3s".into());
        args.resync_interval = Some("1s".into());
    })
    .await;
    let mut reader = TopicReader::open(&kafka.endpoint, &bridge.topic).await;
    // Three TTLs: without the resync, everyone would have expired twice over.
    let watch = Duration::from_secs(9);
    let resyncs_before = bridge.stats().await["events"]["resync"]
        .as_u64()
        .unwrap_or(0);
    let watching = Instant::now();
    while watching.elapsed() < watch {
        bridge.assert_running().await;
        reader.read_to_end().await;
        assert!(
            reader.tombstones.is_empty(),
            "live users were expired: {:?}",
            reader.tombstones
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    reader.read_to_end().await;
    reader.assert_no_problems();
    assert!(reader.tombstones.is_empty(), "{:?}", reader.tombstones);
    assert_eq!(reader.last.len(), USERS);
    assert_eq!(
        reader.records, USERS,
        "repeated identical snapshots publish nothing"
    );
    let stats = bridge.stats().await;
    let resynced = stats["events"]["resync"].as_u64().unwrap_or(0) - resyncs_before;
    eprintln!(
        "resync: {resynced} resync events in {watch:?}, no tombstone, {:?} in all; bridge {stats}",
        started.elapsed()
    );
    assert!(
        resynced >= 5 * USERS as u64,
        "the resync confirmed everyone repeatedly: {resynced}"
    );
    assert_eq!(stats["expired"].as_u64(), Some(0));
    bridge.stop().await;
}
