//! Issue 13's proof: real `presence-bridge` processes sharing one organisation through the
//! consumer group on the presence topic, against the in-process emulator (several OAuth
//! clients) and a real Kafka broker; judged only by the topic (read back with an independent
//! consumer, every record's `bridge-instance` header kept), the emulator's truth and the
//! bridges' admin HTTP.
//!
//! Scaled down to run in CI (docs/performance.md, "Scale-out"): an instance may use 4
//! channels here (`--max-channels 4`: 3,000 users, one channel kept free) instead of
//! Genesys's 20 (19,000 users), so 4,500 users are more than one OAuth client can watch, as
//! 45,000 are at full scale; the topic has 12 partitions (the default). The broker is `scripts/kafka.sh`'s,
//! whose consumer-protocol session timeout is 6 s (heartbeat 1 s); the times reported hold for
//! those settings.
//!
//! The scenarios take turns (each starts several processes on a 2-core machine).
#![allow(missing_docs, unreachable_pub)]

#[path = "../../../tests/support/broker.rs"]
mod broker;
#[allow(dead_code)] // shared with the soak, which uses all of it
#[path = "../../../tests/support/process.rs"]
mod process;
#[path = "../../../tests/support/topic.rs"]
mod topic;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use genesys_emulator::{
    ChaosConfig, ClientCredentials, Emulator, EmulatorConfig, EmulatorHandle, FaultKind,
};

use broker::Endpoint;
use process::{BridgeProcess, Launch};
use topic::{Expect, Record, TopicReader, judge, lingering, random_topic};

/// Users and `--max-channels` of the three-instance scenario: 4,500 and 4 by default, or
/// `SCALE_OUT_USERS` and `SCALE_OUT_MAX_CHANNELS` (say 36,000 and 20, Genesys's own limit:
/// more than one client's 19,000, and after a kill 18,000 for each of two survivors; or the
/// issue's 45,000, which two survivors cannot all watch: see the kill below).
fn scale() -> (u32, u32) {
    let var = |name: &str, default: u32| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (
        var("SCALE_OUT_USERS", 4_500),
        var("SCALE_OUT_MAX_CHANNELS", 4),
    )
}

/// One scenario at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The partitions of a topic the first bridge creates (`--kafka-partitions`, default 12).
const PARTITIONS: usize = 12;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_presence-bridge"))
}

/// An organisation: the emulator, the topic and group its bridges share, and the broker.
struct Org {
    emulator: EmulatorHandle,
    endpoint: Endpoint,
    topic: String,
    group: String,
    started: Instant,
    /// Extra time every wait allows, for orgs larger than the default scale (resyncs after a
    /// fault take longer under the rate limit with more users per client).
    slack: Duration,
}

impl Org {
    /// The broker (`None`: skip, or fail under CI), this scenario's turn, and the org.
    async fn begin(
        config: EmulatorConfig,
        name: &str,
    ) -> Option<(Org, tokio::sync::MutexGuard<'static, ()>)> {
        let endpoint = broker::plain()?;
        let turn = TURN.lock().await;
        Some((Org::start(endpoint, config, name).await, turn))
    }

    async fn start(endpoint: Endpoint, config: EmulatorConfig, name: &str) -> Org {
        let _ = env_logger::builder().is_test(true).try_init();
        let emulator = Emulator::start(config, "127.0.0.1:0".parse().expect("an address"))
            .await
            .expect("the emulator starts");
        Org {
            emulator,
            endpoint,
            topic: random_topic(name),
            group: random_topic("group"),
            started: Instant::now(),
            slack: Duration::ZERO,
        }
    }

    /// Starts a bridge as `instance` on OAuth client `client`.
    fn bridge(&self, client: &ClientCredentials, instance: &str, max_channels: u32) -> Bridge {
        let mut args: Vec<String> = [
            "--group-id",
            &self.group,
            "--instance-id",
            instance,
            "--max-channels",
            &max_channels.to_string(),
            "--shutdown-grace",
            "5s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let bits = presence_bridge::commands::group_bits_of(&self.emulator);
        if !bits.is_empty() {
            args.extend(["--group-bits".to_owned(), bits.join(",")]);
        }
        let launch = Launch {
            genesys_url: self.emulator.base_url(),
            client_id: client.id().to_owned(),
            client_secret: client.secret().to_owned(),
            brokers: self.endpoint.brokers.clone(),
            topic: self.topic.clone(),
            args,
            log_file: Some(
                Path::new(env!("CARGO_TARGET_TMPDIR"))
                    .join("scale-out")
                    .join(format!("{}-{instance}.log", self.topic)),
            ),
        };
        Bridge {
            name: instance.to_owned(),
            process: BridgeProcess::spawn(binary(), &launch),
        }
    }

    fn elapsed(&self) -> String {
        format!("{:.1} s", self.started.elapsed().as_secs_f64())
    }
}

/// One bridge process and its instance name.
struct Bridge {
    name: String,
    process: BridgeProcess,
}

impl Bridge {
    /// The partitions it owns (from `/v1/stats`), or `None` when it does not answer.
    fn owned(&self) -> Option<BTreeSet<u64>> {
        let stats = self.process.stats();
        let owned = stats.get("group")?.get("ownedPartitions")?.as_array()?;
        Some(owned.iter().filter_map(|p| p.as_u64()).collect())
    }
}

/// Waits until `bridges` own every partition between them, each a disjoint share, and every
/// one is ready; returns how long that took. Fails after `limit` with each one's view.
async fn covered(bridges: &mut [&mut Bridge], limit: Duration) -> Duration {
    owned_between(bridges, limit, |b| b.process.is_ready()).await
}

/// Like [`covered`], but an instance that owns more users than its channels hold may say so:
/// ready, or not ready for `capacity` alone.
async fn over_capacity(bridges: &mut [&mut Bridge], limit: Duration) -> Duration {
    owned_between(bridges, limit, |b| match b.process.get("/readyz") {
        Ok((200, _)) => true,
        Ok((503, body)) => {
            serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()["notReady"]
                .as_array()
                .is_some_and(|parts| parts.iter().all(|p| p["part"] == "capacity"))
        }
        _ => false,
    })
    .await
}

/// Waits until `bridges` own every partition between them, each a disjoint share, and each
/// is `settled`; returns how long that took. Fails after `limit` with each one's view.
async fn owned_between(
    bridges: &mut [&mut Bridge],
    limit: Duration,
    settled: impl Fn(&Bridge) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let mut seen = BTreeSet::new();
        let mut disjoint = true;
        let mut all_settled = true;
        for bridge in bridges.iter_mut() {
            bridge.process.assert_running();
            let owned = bridge.owned().unwrap_or_default();
            disjoint &= owned.iter().all(|p| !seen.contains(p));
            seen.extend(owned);
            all_settled &= settled(bridge);
        }
        if disjoint && all_settled && seen.len() == PARTITIONS {
            return started.elapsed();
        }
        if started.elapsed() > limit {
            let views: Vec<String> = bridges
                .iter()
                .map(|b| {
                    format!(
                        "{}: owns {:?}, readyz {:?}",
                        b.name,
                        b.owned(),
                        b.process.get("/readyz")
                    )
                })
                .collect();
            panic!("the bridges did not cover the org within {limit:?}: {views:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Quiesces the emulator and waits until the topic holds the truth (every active user's last
/// record its state, nobody else's a state) and every publisher is idle; resumes. Returns how
/// long that took.
async fn converge(org: &Org, reader: &mut TopicReader, bridges: &mut [&mut Bridge]) -> Duration {
    org.emulator.quiesce().await;
    let truth = org.emulator.truth();
    let expect = Expect::genesys(true);
    let wanted = expect.wanted(&truth);
    let started = Instant::now();
    let limit = Duration::from_secs(60) + org.slack;
    loop {
        let mut idle = true;
        for bridge in bridges.iter_mut() {
            bridge.process.assert_running();
            idle &= bridge.process.metrics().publisher_idle();
        }
        reader.read_to_end().await;
        let wrong = judge(&expect, reader, &wanted, &HashMap::new());
        let stale = lingering(&expect, reader, &wanted);
        if wrong.is_empty() && stale.is_empty() && idle {
            org.emulator.resume();
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{} of {} users differ from the truth and {} keys linger after {limit:?}, e.g. {:#?} {:#?}; owners {:?}",
            wrong.len(),
            wanted.len(),
            stale.len(),
            &wrong[..wrong.len().min(5)],
            &stale[..stale.len().min(5)],
            bridges
                .iter()
                .map(|b| (b.name.clone(), b.owned()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every record read, per partition in offset order, with its key ([`TopicReader::log`]).
type Log = HashMap<i32, Vec<(String, Record)>>;

/// A record's state as far as a repeat is concerned (status code, message, definition, mask
/// and event time); `None` for a tombstone.
fn state(record: &Record) -> Option<String> {
    record.value.as_ref().map(|v| {
        format!(
            "{} {} {} {} {}",
            v["statusCode"],
            v["message"],
            v["presenceDefinitionId"],
            v["groupMask"],
            v["eventTimeMillis"]
        )
    })
}

/// How many records of partition logs, from `from` (per partition) on, repeat the state their
/// key's previous record held (a record of nothing new), and how many there were.
fn repeats(log: &Log, from: &HashMap<i32, usize>) -> (usize, usize) {
    let (mut repeated, mut total) = (0, 0);
    for (partition, records) in log {
        let start = from.get(partition).copied().unwrap_or(0);
        let mut last: HashMap<&str, Option<String>> = HashMap::new();
        for (i, (key, record)) in records.iter().enumerate() {
            let now = state(record);
            if i >= start {
                total += 1;
                if now.is_some() && last.get(key.as_str()) == Some(&now) {
                    repeated += 1;
                }
            }
            last.insert(key, now);
        }
    }
    (repeated, total)
}

/// Records from `from` on (per partition) whose writer is not `owners[partition]`.
fn foreign_writers(
    log: &Log,
    from: &HashMap<i32, usize>,
    owners: &HashMap<i32, String>,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for (partition, records) in log {
        let start = from.get(partition).copied().unwrap_or(0);
        for (key, record) in records.iter().skip(start) {
            if record.writer.as_ref() != owners.get(partition) {
                wrong.push(format!(
                    "partition {partition}: {key} written by {:?}, owner {:?}",
                    record.writer,
                    owners.get(partition)
                ));
            }
        }
    }
    wrong
}

fn lengths(log: &Log) -> HashMap<i32, usize> {
    log.iter().map(|(p, r)| (*p, r.len())).collect()
}

fn owners(bridges: &[&Bridge]) -> HashMap<i32, String> {
    let mut owners = HashMap::new();
    for bridge in bridges {
        for p in bridge.owned().unwrap_or_default() {
            owners.insert(p as i32, bridge.name.clone());
        }
    }
    owners
}

/// 4,500 users, three instances with an OAuth client each: more users than one client can
/// watch (3,000 here), covered by three. Then chaos, a `kill -9` of one, its restart, and a
/// rolling restart of all three. (Sizes: [`scale`].)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_org_fail_over_and_restart_in_turn() {
    let (users, channels) = scale();
    let capacity = (channels - 1) * 1_000;
    assert!(
        users > capacity && users.div_ceil(3) < capacity,
        "{users} users must be more than one instance watches ({capacity}) and fit three"
    );
    // Whether two instances can watch them all (else, after a kill, the survivors watch what
    // their channels hold and say the rest).
    let fit_two = users.div_ceil(2) + users / 50 <= capacity;
    let Some((mut org, _turn)) = Org::begin(
        EmulatorConfig::default()
            .users(users)
            .clients(3)
            .change_rate(30.0)
            .seed(13),
        "scale-out",
    )
    .await
    else {
        return;
    };
    // A resync of a whole client's users lists the whole org (500 a page, 3.5 pages a second
    // within the rate limit): at 45,000 users about 26 s, after every fault that drops all
    // sockets.
    org.slack = Duration::from_secs(u64::from(users) / 500);
    let clients = org.emulator.clients();
    let mut b1 = org.bridge(&clients[0], "bridge-1", channels);
    // Alone, it owns every partition: more users than its channels hold, and says so.
    let deadline = Instant::now() + Duration::from_secs(60) + org.slack;
    loop {
        b1.process.assert_running();
        if let Ok((503, body)) = b1.process.get("/readyz")
            && body.contains("\"capacity\"")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a lone bridge owning {users} users never said it cannot watch them all: {:?}",
            b1.process.get("/readyz")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let unwatched = b1
        .process
        .metrics()
        .get("users_unwatched")
        .expect("users_unwatched");
    assert_eq!(
        unwatched,
        f64::from(users - capacity),
        "{capacity} of {users} watched"
    );
    let mut b2 = org.bridge(&clients[1], "bridge-2", channels);
    let mut b3 = org.bridge(&clients[2], "bridge-3", channels);
    let took = covered(
        &mut [&mut b1, &mut b2, &mut b3],
        Duration::from_secs(90) + org.slack,
    )
    .await;
    eprintln!(
        "three instances cover the org {took:.1?} after the last started ({})",
        org.elapsed()
    );
    let mut reader = TopicReader::open(&org.endpoint, &org.topic)
        .await
        .keeping_every_record();
    reader.read_to_end().await;
    let settled = lengths(reader.log());
    let owners_now = owners(&[&b1, &b2, &b3]);

    // Chaos on every client, then calm: the topic holds the truth.
    org.emulator
        .set_chaos(ChaosConfig::new(30.0).kinds(FaultKind::ALL))
        .expect("chaos");
    tokio::time::sleep(Duration::from_secs(15)).await;
    org.emulator.set_chaos(ChaosConfig::new(0.0)).expect("calm");
    covered(
        &mut [&mut b1, &mut b2, &mut b3],
        Duration::from_secs(60) + org.slack,
    )
    .await;
    let took = converge(&org, &mut reader, &mut [&mut b1, &mut b2, &mut b3]).await;
    eprintln!("converged after chaos in {took:.1?}");
    // While nothing moved, every record came from its partition's owner.
    let foreign = foreign_writers(reader.log(), &settled, &owners_now);
    assert!(foreign.is_empty(), "records from a non-owner: {foreign:#?}");

    // kill -9: its partitions move, and every user is covered again (or, when two cannot
    // hold them all, as many as the survivors' channels hold, the rest said).
    let lost = b3.owned().unwrap_or_default();
    let killed = Instant::now();
    b3.process.kill().await;
    if fit_two {
        let coverage = covered(&mut [&mut b1, &mut b2], Duration::from_secs(60) + org.slack).await;
        eprintln!(
            "kill -9 of bridge-3 (partitions {lost:?}): every user covered again {coverage:.1?} later"
        );
        assert!(
            killed.elapsed() <= Duration::from_secs(30),
            "coverage after the kill took {coverage:?}"
        );
        let took = converge(&org, &mut reader, &mut [&mut b1, &mut b2]).await;
        eprintln!("converged after the kill in {took:.1?}");
    } else {
        let moved =
            over_capacity(&mut [&mut b1, &mut b2], Duration::from_secs(60) + org.slack).await;
        let unwatched: f64 = [&b1, &b2]
            .iter()
            .map(|b| b.process.metrics().get("users_unwatched").unwrap_or(0.0))
            .sum();
        eprintln!(
            "kill -9 of bridge-3 (partitions {lost:?}): its partitions moved {moved:.1?} later; the two survivors watch {} of {users} users and say {unwatched} are not watched (two clients hold {})",
            f64::from(users) - unwatched,
            2 * capacity
        );
        assert!(unwatched >= f64::from(users - 2 * capacity));
    }

    // Back to three, then a rolling restart: each stopped (SIGTERM) and started again once
    // the previous one is back and the group covers the org.
    let mut b3 = org.bridge(&clients[2], "bridge-3", channels);
    covered(
        &mut [&mut b1, &mut b2, &mut b3],
        Duration::from_secs(90) + org.slack,
    )
    .await;
    converge(&org, &mut reader, &mut [&mut b1, &mut b2, &mut b3]).await;
    let before = lengths(reader.log());
    let restart_started = Instant::now();
    let mut bridges = vec![b1, b2, b3];
    for (i, client) in clients.iter().enumerate() {
        let old = bridges.remove(i);
        let name = old.name.clone();
        old.process.stop_with("TERM").await;
        bridges.insert(i, org.bridge(client, &name, channels));
        let mut all: Vec<&mut Bridge> = bridges.iter_mut().collect();
        covered(&mut all, Duration::from_secs(90) + org.slack).await;
    }
    let restart_took = restart_started.elapsed();
    let mut all: Vec<&mut Bridge> = bridges.iter_mut().collect();
    converge(&org, &mut reader, &mut all).await;
    reader.assert_no_problems();
    let (repeated, written) = repeats(reader.log(), &before);
    eprintln!(
        "rolling restart of three in {restart_took:.1?}: {written} records written, {repeated} repeat their key's previous state ({:.2} %)",
        100.0 * repeated as f64 / written.max(1) as f64
    );
    assert!(
        repeated * 100 <= written,
        "{repeated} of {written} records written during the rolling restart repeat the previous state"
    );
    for bridge in bridges {
        bridge.process.stop().await;
    }
}

/// A lone instance restarted on a quiet org republishes (almost) nothing: its warm start
/// loads what the topic holds, and the resync finds nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_instance_restarted_on_a_quiet_org_writes_almost_nothing() {
    let Some((org, _turn)) = Org::begin(
        EmulatorConfig::default()
            .users(1_000)
            .change_rate(0.0)
            .shift_change_every(Duration::ZERO)
            .seed(14),
        "lone",
    )
    .await
    else {
        return;
    };
    let client = &org.emulator.clients()[0];
    let mut bridge = org.bridge(client, "lone", 20);
    covered(&mut [&mut bridge], Duration::from_secs(60)).await;
    let mut reader = TopicReader::open(&org.endpoint, &org.topic)
        .await
        .keeping_every_record();
    converge(&org, &mut reader, &mut [&mut bridge]).await;
    let before = lengths(reader.log());
    bridge.process.stop_with("TERM").await;
    let mut bridge = org.bridge(client, "lone", 20);
    covered(&mut [&mut bridge], Duration::from_secs(60)).await;
    converge(&org, &mut reader, &mut [&mut bridge]).await;
    // Give a late resync its time to (not) publish.
    tokio::time::sleep(Duration::from_secs(3)).await;
    reader.read_to_end().await;
    let written: usize = reader
        .log()
        .iter()
        .map(|(p, r)| r.len() - before.get(p).copied().unwrap_or(0))
        .sum();
    eprintln!("a lone instance restarted on a quiet org of 1,000 users wrote {written} records");
    assert!(written <= 5, "{written} records after a quiet restart");
    bridge.process.stop().await;
}

/// Two instances on one OAuth client (high availability below one client's capacity): one
/// is killed, the other takes its partitions and gets the channels it needs within the
/// client's channel limit (Genesys replaces the dead instance's unconnected channels). Then
/// the killed one comes back (failback): the survivor hands half the partitions back and
/// closes the channels the users it keeps no longer need before the revocation completes, so
/// the returning one finds its channels free. Every phase stays within the client's
/// channels without replacing a connected one (on the old code, which never closed a
/// channel, the survivor kept its three and the returning instance's second channel pushed
/// a connected one out, which then pushed out another).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_oauth_client_fail_over() {
    // 2,500 users on a client of 4 channels by default (3,000 watched at most: the issue's
    // 15,000 of 19,000, scaled down), or `SHARED_CLIENT_USERS` and `SHARED_CLIENT_MAX_CHANNELS`
    // (15,000 and 20 for the issue's own figures).
    let var = |name: &str, default: u32| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let users = var("SHARED_CLIENT_USERS", 2_500);
    let channels = var("SHARED_CLIENT_MAX_CHANNELS", 4);
    let Some((mut org, _turn)) = Org::begin(
        EmulatorConfig::default()
            .users(users)
            .max_channels_per_client(channels as usize)
            .change_rate(20.0)
            .seed(15),
        "shared-client",
    )
    .await
    else {
        return;
    };
    org.slack = Duration::from_secs(u64::from(users) / 500);
    let client = &org.emulator.clients()[0];
    let mut a = org.bridge(client, "ha-a", channels);
    let mut b = org.bridge(client, "ha-b", channels);
    covered(&mut [&mut a, &mut b], Duration::from_secs(90) + org.slack).await;
    let killed = Instant::now();
    a.process.kill().await;
    let coverage = covered(&mut [&mut b], Duration::from_secs(60) + org.slack).await;
    eprintln!(
        "two instances on one OAuth client: the survivor covers all {users} users {coverage:.1?} after the kill"
    );
    assert!(killed.elapsed() <= Duration::from_secs(30));
    let mut reader = TopicReader::open(&org.endpoint, &org.topic).await;
    converge(&org, &mut reader, &mut [&mut b]).await;
    reader.assert_no_problems();
    let stats = org.emulator.stats();
    assert!(
        stats.channels.len() <= channels as usize,
        "the client holds {} channels, over its limit of {channels}",
        stats.channels.len()
    );

    // Failback: the killed instance comes back and takes half the partitions again.
    let mut a = org.bridge(client, "ha-a", channels);
    let back = covered(&mut [&mut a, &mut b], Duration::from_secs(60) + org.slack).await;
    converge(&org, &mut reader, &mut [&mut a, &mut b]).await;
    reader.assert_no_problems();
    let stats = org.emulator.stats();
    let closed = b.process.metrics().get("channels_closed").unwrap_or(0.0);
    eprintln!(
        "two instances on one OAuth client: after the failback both cover all {users} users in {back:.1?}; the survivor closed {closed} channels; the client holds {} channels ({} connected); connected channels replaced: {}",
        stats.channels.len(),
        stats.channels.iter().filter(|c| c.connected).count(),
        stats.channels_replaced_connected
    );
    assert!(
        stats.channels.len() <= channels as usize,
        "the client holds {} channels, over its limit of {channels}",
        stats.channels.len()
    );
    assert_eq!(
        stats.channels_replaced_connected, 0,
        "a connected channel was pushed out under the channel limit"
    );
    assert!(closed >= 1.0, "the survivor closed no channel");
    a.process.stop().await;
    b.process.stop().await;
}
