//! Issue 12's proof, "a month in minutes": the real `presence-bridge` binary, run as a
//! subprocess against the in-process Genesys emulator and a real Kafka broker, through 30
//! simulated days with time scaled down (a day is 10 s by default), an organisation that
//! changes under it (3 % of the users a day created, deleted, deactivated, reactivated or moved), one
//! maintenance wave a day and chaos on. Everything is judged from outside the bridge: the topic
//! read back with an independent consumer, the emulator's truth and counters, and the bridge's
//! admin HTTP (`/metrics`, `/v1/stats`, `/readyz`). `docs/soak.md` says what it proves, how time
//! is scaled and how to run it; a run prints a per-day Markdown table and writes it to
//! `target/soak/report.md`.
//!
//! ```text
//! KAFKA_PORT=0 KAFKA_SASL_PORT=0 KAFKA_TLS_PORT=0 scripts/kafka.sh start && eval "$(scripts/kafka.sh env)"
//! cargo test -p presence-bridge --test soak -- --nocapture                 # CI's 6 days
//! SOAK_DAYS=30 cargo test -p presence-bridge --test soak -- --nocapture    # the month
//! ```
//!
//! Settings: `SOAK_DAYS` (6, what CI runs; 30 for the month), `SOAK_DAY_SECS` (10, a decimal), `SOAK_USERS` (5,000),
//! `SOAK_GROUPS` (8; with 0 the churn's group moves change nothing and every mask is 0),
//! `SOAK_PAUSE_DAY` (1: the day on which the bridge is stopped with SIGSTOP for 9 s, longer
//! than its consumer-group session, so that it loses its partitions and gets them back; 0 for
//! none), `BRIDGE_LOG` (the bridge's `RUST_LOG`; its whole log is `target/soak/bridge.log`). Without
//! `KAFKA_BROKERS` the test skips with one line saying so; with `CI` set it fails instead.
//!
//! Each day is an active part (the first 40 %: presence changes, churn, chaos, a maintenance
//! wave), then a quiesced part in which the bridge settles and the test checks; the next day
//! starts at its boundary, or at once when the check overran. Every check passes on the
//! current bridge, but the days overrun (settling after the quiesce takes 9 to 37 s under
//! the unscaled rate limit: a deleted user is removed once two listings miss it), so 30 days
//! take about 20 minutes, not the 6 the issue asks: CI runs 6 days (about 4 minutes), the
//! month is `SOAK_DAYS=30`. `docs/soak.md` has the numbers.
#![allow(missing_docs, unreachable_pub)]

#[path = "../../../tests/support/broker.rs"]
mod broker;
#[allow(dead_code)] // shared with the scale-out tests, which use all of it
#[path = "../../../tests/support/process.rs"]
mod process;
#[path = "../../../tests/support/topic.rs"]
mod topic;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use genesys_emulator::{
    ChaosConfig, Emulator, EmulatorConfig, EmulatorHandle, FaultKind, Stats, TruthEntry,
};

use crate::broker::Endpoint;
use crate::process::{BridgeProcess, Launch};
use crate::topic::{Expect, TopicReader, judge, lingering, random_topic};

/// Days of the default run, the one CI runs (about 4 minutes). The month (`SOAK_DAYS=30`)
/// takes about 20 minutes, more than CI's budget: settling after each day's quiesce waits for
/// two discoveries under the unscaled rate limit (docs/soak.md).
const CI_DAYS: u32 = 6;
/// A real day: what every scaled setting is a fraction of.
const REAL_DAY: Duration = Duration::from_secs(86_400);
/// The share of each simulated day during which presence changes, the org churns and chaos
/// runs (4 s of a 10 s day); the rest of the day is quiesced: the bridge settles, the test
/// checks, and the next day starts at its boundary.
const ACTIVE_SHARE: f64 = 0.4;
/// A channel is rolled over `min(10 min, lifetime / 4)` before it (or the token that created
/// it) ends (presence-sync `rollover_margin`), and it may be created with a token that has
/// only 7/8 of a fresh token's life left (presence-sync `token_for` keeps the held token
/// while it has that much; a channel dies with its token): so at this scale a channel lives
/// between 7/8 − 1/4 = 5/8 and 3/4 of min(token lifetime, channel lifetime). The allowance
/// counts the shortest (measured: about 0.69 on average).
const CHANNEL_LIFE_SHARE: f64 = 0.625;
/// The wall time CI gives the whole test (start-up included); reported against, not asserted.
const CI_BUDGET: Duration = Duration::from_secs(6 * 60);
/// Presence changes per second while active.
const CHANGE_RATE: f64 = 30.0;
/// Org churn per simulated day, as a fraction of the users.
const CHURN_PER_DAY: f64 = 0.03;
/// Random faults per simulated day (every kind), plus the one maintenance wave of each day.
const FAULTS_PER_DAY: f64 = 2.5;
/// Genesys's rate limit, per token per minute (the emulator's default, kept).
const RATE_LIMIT_PER_MINUTE: f64 = 300.0;
/// Channels a day may create beyond what it needs and what its faults removed.
const SPARE_CHANNELS: u64 = 2;
/// How long one day's check may take to see the topic hold the truth.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// The run's settings, from the environment.
#[derive(Clone, Copy, Debug)]
struct Settings {
    days: u32,
    day: Duration,
    users: u32,
    groups: u32,
    /// The day on which the bridge is paused (SIGSTOP) for [`PAUSE`], longer than the
    /// broker's group session, so that it loses its partitions and gets them back
    /// (`SOAK_PAUSE_DAY`: day 1 by default, so that the days after it compare their RSS
    /// with a day that had the warm start's allocations too; 0 for none).
    pause_day: Option<u32>,
}

/// How long the bridge is paused on `SOAK_PAUSE_DAY`: more than the broker's 6 s consumer
/// group session (`scripts/kafka.sh`).
const PAUSE: Duration = Duration::from_secs(9);

impl Settings {
    fn from_env() -> Settings {
        fn number<T: std::str::FromStr>(name: &str, default: T) -> T {
            match broker::env(name) {
                None => default,
                Some(text) => text
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
            }
        }
        let day_secs: f64 = number("SOAK_DAY_SECS", 10.0);
        assert!(
            day_secs.is_finite() && day_secs >= 2.0,
            "SOAK_DAY_SECS must be at least 2"
        );
        Settings {
            days: number("SOAK_DAYS", CI_DAYS).max(1),
            day: Duration::from_secs_f64(day_secs),
            users: number("SOAK_USERS", 5_000u32).max(1),
            groups: number("SOAK_GROUPS", 8u32).min(64),
            pause_day: Some(number("SOAK_PAUSE_DAY", 1u32)).filter(|d| *d > 0),
        }
    }

    /// A real duration scaled down by the same factor as the day (86,400 s / day).
    fn scaled(&self, real: Duration) -> Duration {
        real.mul_f64(self.day.as_secs_f64() / REAL_DAY.as_secs_f64())
    }

    fn factor(&self) -> f64 {
        REAL_DAY.as_secs_f64() / self.day.as_secs_f64()
    }

    /// `--resync-interval`: 15 minutes scaled.
    fn resync_flag(&self) -> String {
        millis_flag(self.scaled(Duration::from_secs(15 * 60)))
    }

    /// `--discovery-interval`: 10 minutes scaled.
    fn discovery_flag(&self) -> String {
        millis_flag(self.scaled(Duration::from_secs(10 * 60)))
    }

    fn active(&self) -> Duration {
        self.day.mul_f64(ACTIVE_SHARE)
    }
}

/// A duration as the bridge's flags take it, in whole milliseconds (at least 10).
fn millis_flag(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(10))
}

/// Starts `presence-bridge run` against the emulator and the topic with the day's scaled
/// intervals; its whole log goes to `target/soak/bridge.log`.
fn spawn_bridge(
    emulator: &EmulatorHandle,
    endpoint: &Endpoint,
    topic: &str,
    s: &Settings,
) -> BridgeProcess {
    let mut args: Vec<String> = vec![
        "--resync-interval".into(),
        s.resync_flag(),
        "--discovery-interval".into(),
        s.discovery_flag(),
        "--shutdown-grace".into(),
        "5s".into(),
    ];
    let group_bits = presence_bridge::commands::group_bits_of(emulator);
    if !group_bits.is_empty() {
        args.extend(["--group-bits".into(), group_bits.join(",")]);
    }
    let launch = Launch {
        genesys_url: emulator.base_url(),
        client_id: emulator.client_id().to_owned(),
        client_secret: emulator.client_secret().to_owned(),
        brokers: endpoint.brokers.clone(),
        topic: topic.to_owned(),
        args,
        log_file: Some(report_path().with_file_name("bridge.log")),
    };
    BridgeProcess::spawn(Path::new(env!("CARGO_BIN_EXE_presence-bridge")), &launch)
}

/// The bridge counters each day reports, by their `/metrics` name.
const COUNTERS: [&str; 6] = [
    "channels_created",
    "socket_handovers",
    "socket_closing_new_channels",
    "discoveries",
    "resyncs",
    "genesys_requests",
];

/// What is counted at a day's boundaries.
struct Snapshot {
    at: Instant,
    emulator: Stats,
    bridge: BTreeMap<&'static str, Option<f64>>,
}

impl Snapshot {
    fn take(emulator: &EmulatorHandle, bridge: &BridgeProcess) -> Snapshot {
        let metrics = bridge.metrics();
        Snapshot {
            at: Instant::now(),
            emulator: emulator.stats(),
            bridge: COUNTERS.iter().map(|&n| (n, metrics.get(n))).collect(),
        }
    }

    /// How much a bridge counter grew since `before`; `None` when it is not exported.
    fn bridge_delta(&self, before: &Snapshot, name: &str) -> Option<u64> {
        let now = self.bridge.get(name).copied().flatten()?;
        let then = before.bridge.get(name).copied().flatten()?;
        Some((now - then).max(0.0) as u64)
    }
}

fn hits(stats: &Stats, kind: FaultKind) -> genesys_emulator::FaultHits {
    stats
        .fault_hits
        .get(kind.as_str())
        .copied()
        .unwrap_or_default()
}

fn requested(stats: &Stats, kind: FaultKind) -> u64 {
    stats
        .faults_requested
        .get(kind.as_str())
        .copied()
        .unwrap_or(0)
}

/// One simulated day, as the report shows it.
#[derive(Clone, Debug, Default)]
struct Day {
    day: u32,
    active_users: u64,
    created: u64,
    deleted: u64,
    deactivated: u64,
    reactivated: u64,
    moved: u64,
    events: u64,
    divergent_at_quiesce: usize,
    settle: Duration,
    /// Discoveries the bridge completed between the quiesce and the topic holding the truth.
    settle_discoveries: Option<u64>,
    /// Users created, deleted, deactivated, reactivated or moved, as a share of the day's
    /// first users.
    churn_pct: f64,
    divergent: usize,
    channels_in_use: u64,
    channels_created: u64,
    channels_allowed: u64,
    bridge_channels_created: Option<u64>,
    handovers: Option<u64>,
    socket_closing_new_channels: Option<u64>,
    discoveries: Option<u64>,
    resyncs: Option<u64>,
    bridge_requests: Option<u64>,
    api_requests: u64,
    api_limit: u64,
    rate_limited: u64,
    faults: u64,
    channel_faults: String,
    rss_mib: f64,
    length: Duration,
    overrun: Duration,
}

impl Day {
    /// Fills in the counters of the day that ran from `start` to `end`.
    fn count(&mut self, s: &Settings, start: &Snapshot, end: &Snapshot) {
        let (a, b) = (&start.emulator, &end.emulator);
        self.active_users = b.churn.active_users;
        self.created = b.churn.created - a.churn.created;
        self.deleted = b.churn.deleted - a.churn.deleted;
        self.deactivated = b.churn.deactivated - a.churn.deactivated;
        self.reactivated = b.churn.reactivated - a.churn.reactivated;
        self.moved = b.churn.moved - a.churn.moved;
        let changed =
            self.created + self.deleted + self.deactivated + self.reactivated + self.moved;
        self.churn_pct = 100.0 * changed as f64 / a.churn.active_users.max(1) as f64;
        self.events = b.events_generated - a.events_generated;
        self.channels_created = b.channels_created - a.channels_created;
        self.api_requests = b.api_requests - a.api_requests;
        self.rate_limited = b.api_rate_limited - a.api_rate_limited;
        let total = |s: &Stats| s.faults_injected.values().sum::<u64>();
        self.faults = total(b) - total(a);
        self.length = end.at - start.at;
        // The rate limit over the day as it really lasted (longer when its check overran).
        let minutes = self.length.max(s.day).as_secs_f64() / 60.0;
        self.api_limit = (RATE_LIMIT_PER_MINUTE * minutes).floor() as u64;
        // Channels needed: a channel dies with the token that created it, and the bridge rolls
        // it over min(10 min, lifetime / 4) before its end, so each channel in use lives at
        // least 5/8 of min(token lifetime, channel lifetime) here (both a day; see
        // CHANNEL_LIFE_SHARE), and is replaced at most
        // ceil(length / (5/8 × lifetime)) times in a day that lasted `length` (longer than
        // `day` only when its check overran: tokens and channels age in wall time). At real
        // scale the margin is 10 min of 24 h: about one creation per channel a day. Beyond
        // that a day may create one channel per channel a no_longer_subscribed removed, every
        // channel again per expire_tokens (channels die with their token), and
        // SPARE_CHANNELS.
        let lifetime = s.day.mul_f64(CHANNEL_LIFE_SHARE); // token and channel lifetime: a day
        let length = self.length.max(s.day);
        let per_channel = (length.as_secs_f64() / lifetime.as_secs_f64()).ceil() as u64;
        let removed = hits(b, FaultKind::NoLongerSubscribed).channels
            - hits(a, FaultKind::NoLongerSubscribed).channels;
        let expiries =
            requested(b, FaultKind::ExpireTokens) - requested(a, FaultKind::ExpireTokens);
        self.channels_allowed =
            self.channels_in_use * (per_channel + expiries) + removed + SPARE_CHANNELS;
        self.channel_faults = format!("{removed} nls, {expiries} exp");
        self.bridge_channels_created = end.bridge_delta(start, "channels_created");
        self.handovers = end.bridge_delta(start, "socket_handovers");
        self.socket_closing_new_channels = end.bridge_delta(start, "socket_closing_new_channels");
        self.discoveries = end.bridge_delta(start, "discoveries");
        self.resyncs = end.bridge_delta(start, "resyncs");
        self.bridge_requests = end.bridge_delta(start, "genesys_requests");
    }

    /// What this day broke, if anything.
    fn failures(&self) -> Vec<String> {
        let d = self.day;
        let mut out = Vec::new();
        if self.divergent != 0 {
            out.push(format!("day {d}: {} users divergent", self.divergent));
        }
        if self.channels_created > self.channels_allowed {
            out.push(format!(
                "day {d}: {} channels created, at most {} allowed ({} in use, faults {})",
                self.channels_created,
                self.channels_allowed,
                self.channels_in_use,
                self.channel_faults
            ));
        }
        match self.socket_closing_new_channels {
            Some(0) => {}
            Some(n) => out.push(format!("day {d}: {n} socket_closing cost a new channel")),
            None => out.push(format!(
                "day {d}: the bridge exports no presence_bridge_socket_closing_new_channels"
            )),
        }
        if self.api_requests > self.api_limit {
            out.push(format!(
                "day {d}: {} API requests, over the rate limit's {} for {:.1} s",
                self.api_requests,
                self.api_limit,
                self.length.as_secs_f64()
            ));
        }
        if self.rate_limited != 0 {
            out.push(format!(
                "day {d}: {} requests refused by the rate limit (not injected 429s)",
                self.rate_limited
            ));
        }
        out
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| v.to_string())
}

/// The per-day table, in Markdown.
fn table(days: &[Day]) -> String {
    let mut out = String::from(
        "| day | users | +new | −del | −deact | +react | moved | churn % | events | div@quiesce | settle s | disc to settle | div | ch in use | ch created (emu) | ch allowed | ch faults | ch created (bridge) | handovers | closing→new ch | discoveries | resyncs | bridge req | API req | API limit | own 429 | faults | RSS MiB | overrun s |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for d in days {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
            d.day,
            d.active_users,
            d.created,
            d.deleted,
            d.deactivated,
            d.reactivated,
            d.moved,
            d.churn_pct,
            d.events,
            d.divergent_at_quiesce,
            d.settle.as_secs_f64(),
            opt(d.settle_discoveries),
            d.divergent,
            d.channels_in_use,
            d.channels_created,
            d.channels_allowed,
            d.channel_faults,
            opt(d.bridge_channels_created),
            opt(d.handovers),
            opt(d.socket_closing_new_channels),
            opt(d.discoveries),
            opt(d.resyncs),
            opt(d.bridge_requests),
            d.api_requests,
            d.api_limit,
            d.rate_limited,
            d.faults,
            d.rss_mib,
            d.overrun.as_secs_f64(),
        );
    }
    out
}

/// The report: the settings, the table and the verdict.
fn report(s: &Settings, header: &str, days: &[Day], footer: &str) -> String {
    format!(
        "# Soak report\n\n{header}\n\nSettings: {} simulated days of {:.1} s (time scaled down {:.0}×), {} users at start, churn {:.0} % a day, {CHANGE_RATE} presence changes/s while active ({:.0} % of each day), {FAULTS_PER_DAY} random faults a day (every kind) plus one maintenance wave, rate limit {RATE_LIMIT_PER_MINUTE}/min.\n\n{}\n{footer}\n",
        s.days,
        s.day.as_secs_f64(),
        s.factor(),
        s.users,
        CHURN_PER_DAY * 100.0,
        ACTIVE_SHARE * 100.0,
        table(days),
    )
}

/// Where the report goes: `target/soak/report.md`, beside the binary's own target directory.
fn report_path() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_presence-bridge"));
    let target = exe
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in target/<profile>/");
    target.join("soak").join("report.md")
}

fn write_report(text: &str) {
    let path = report_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}

/// Sleeps until `at` (at once when it has passed), checking that the bridge stays up.
async fn sleep_until(at: Instant, bridge: &mut BridgeProcess) {
    while Instant::now() < at {
        bridge.assert_running();
        let left = at.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(500))).await;
    }
}

/// The lines of the bridge's whole log (`target/soak/bridge.log`) that name `key`, the last
/// 20 of them, indented.
fn log_lines_about(key: &str) -> String {
    if key.is_empty() {
        return String::new();
    }
    let log =
        std::fs::read_to_string(report_path().with_file_name("bridge.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(key)).collect();
    let shown = &lines[lines.len().saturating_sub(20)..];
    if shown.is_empty() {
        return "      (none)".to_owned();
    }
    shown
        .iter()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Users on the topic that differ from the truth, and keys of gone users not tombstoned.
fn divergent(expect: &Expect, reader: &TopicReader, truth: &[TruthEntry]) -> Vec<String> {
    let wanted = expect.wanted(truth);
    let mut wrong = judge(expect, reader, &wanted, &HashMap::new());
    wrong.extend(lingering(expect, reader, &wanted));
    wrong
}

/// How a day's check went: users divergent at the first look after the quiesce, how long
/// until none was and the publisher was idle, and how many discoveries the bridge completed
/// meanwhile (`None` when it exports no `discoveries` counter).
struct Settled {
    at_quiesce: usize,
    took: Duration,
    discoveries: Option<u64>,
}

/// Quiesced: reads the topic, the truth and `/metrics` until no user diverges and the
/// publisher is idle. The topic can hold the truth only once a discovery that started after
/// the quiesce has finished (new users subscribed, gone ones tombstoned, moved ones
/// re-masked), so this polls for convergence rather than for a count of discoveries.
async fn settle(
    day: u32,
    emulator: &EmulatorHandle,
    bridge: &mut BridgeProcess,
    reader: &mut TopicReader,
    expect: &Expect,
) -> Settled {
    let truth = emulator.truth();
    let started = Instant::now();
    let mut first = None;
    let mut discoveries_then = None;
    loop {
        bridge.assert_running();
        let metrics = bridge.metrics();
        let idle = metrics.publisher_idle();
        let discoveries = metrics.get("discoveries");
        let then = *discoveries_then.get_or_insert(discoveries);
        reader.read_to_end().await;
        let wrong = divergent(expect, reader, &truth);
        let first = *first.get_or_insert(wrong.len());
        if wrong.is_empty() && idle {
            return Settled {
                at_quiesce: first,
                took: started.elapsed(),
                discoveries: discoveries
                    .zip(then)
                    .map(|(now, then)| (now - then).max(0.0) as u64),
            };
        }
        if started.elapsed() > SETTLE_LIMIT {
            // The bridge's registry entry of each user shown, to tell a publishing problem
            // from a sync problem.
            let shown: Vec<String> = wrong
                .iter()
                .take(10)
                .map(|w| {
                    let key = w.split(':').next().unwrap_or_default();
                    let held = bridge.get(&format!("/v1/presence/{key}"));
                    format!(
                        "{w}\n    registry: {held:?}\n    the bridge's lines about it:\n{}",
                        log_lines_about(key)
                    )
                })
                .collect();
            panic!(
                "day {day}: {} users on the topic differ from the truth {SETTLE_LIMIT:?} after the quiesce (publisher idle: {idle}), e.g.\n{}\nbridge /v1/stats: {:#}\nemulator stats: {:?}\nthe bridge's last lines:\n{}",
                wrong.len(),
                shown.join("\n"),
                bridge.stats(),
                emulator.stats(),
                bridge.tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_with_a_changing_org_in_minutes() {
    let wall = Instant::now();
    let Some(endpoint) = tokio::task::block_in_place(broker::plain) else {
        return;
    };
    let s = Settings::from_env();
    let day = s.day;
    let active = s.active();
    let emulator = Emulator::start(
        EmulatorConfig::default()
            .users(s.users)
            .spare_users(s.users * 2 / 5)
            .groups(s.groups)
            .max_groups_per_user(s.groups.min(2))
            .seed(12)
            .change_rate(CHANGE_RATE)
            // Churn runs only while not quiesced: its day is the active part of one.
            .churn_per_day(CHURN_PER_DAY)
            .day(active)
            .token_lifetime(day)
            .channel_lifetime(day)
            // Shifts change three times a day.
            .shift_change_every(s.scaled(Duration::from_secs(8 * 3600)))
            // Wire-level timings stay real: a handover needs real time to connect.
            .socket_closing_grace(Duration::from_secs(2)),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .expect("the emulator starts");
    let topic = random_topic("soak");
    let mut bridge = spawn_bridge(&emulator, &endpoint, &topic, &s);
    let ready_after = bridge.ready(Duration::from_secs(120)).await;
    let mut reader = TopicReader::open(&endpoint, &topic).await;
    let expect = Expect::genesys(true);
    let started_in = wall.elapsed();
    let header = format!(
        "Run of {} (`SOAK_DAYS={} SOAK_DAY_SECS={} SOAK_USERS={} SOAK_GROUPS={} cargo test -p presence-bridge --test soak -- --nocapture`): bridge pid {}, --resync-interval {} and --discovery-interval {} (15 min and 10 min scaled), token and channel lifetime {:.1} s (a day), ready {:.1} s after start.",
        humantime::format_rfc3339_seconds(SystemTime::now()),
        s.days,
        s.day.as_secs_f64(),
        s.users,
        s.groups,
        bridge.pid(),
        s.resync_flag(),
        s.discovery_flag(),
        day.as_secs_f64(),
        ready_after.as_secs_f64(),
    );
    println!("{header}");

    let chaos_per_minute = FAULTS_PER_DAY / active.as_secs_f64() * 60.0;
    let wave_grace = Duration::from_secs(2).min(day / 5);
    let mut days: Vec<Day> = Vec::new();
    let days_began = Instant::now();
    let mut start = days_began;
    let mut snapshot = Snapshot::take(&emulator, &bridge);
    for d in 1..=s.days {
        let begin = Instant::now();
        let mut row = Day {
            day: d,
            ..Day::default()
        };
        // The day's active part: changes, churn and chaos, with a maintenance wave half-way.
        emulator.resume();
        emulator
            .set_chaos(ChaosConfig::new(chaos_per_minute).kinds(FaultKind::ALL))
            .expect("chaos on");
        if s.pause_day == Some(d) {
            sleep_until(begin + active / 4, &mut bridge).await;
            // A paused process (a long GC or VM pause, a stopped container): its group session
            // ends, and when it runs again it finds its partitions lost and gets them back.
            let pid = bridge.pid().to_string();
            let signal = |name: &str| {
                let status = std::process::Command::new("kill")
                    .args([name, &pid])
                    .status()
                    .expect("kill runs");
                assert!(status.success(), "kill {name} {pid}");
            };
            signal("-STOP");
            tokio::time::sleep(PAUSE).await;
            signal("-CONT");
            eprintln!("day {d}: the bridge was paused for {PAUSE:?}");
        }
        sleep_until(begin + active / 2, &mut bridge).await;
        emulator
            .maintenance_wave(wave_grace)
            .expect("a maintenance wave");
        sleep_until(begin + active, &mut bridge).await;
        emulator.set_chaos(ChaosConfig::new(0.0)).expect("calm");
        emulator.quiesce().await;
        // The check.
        let settled = settle(d, &emulator, &mut bridge, &mut reader, &expect).await;
        reader.assert_no_problems();
        row.divergent_at_quiesce = settled.at_quiesce;
        row.settle = settled.took;
        row.settle_discoveries = settled.discoveries;
        row.divergent = 0;
        row.channels_in_use = bridge.stats()["channels"]
            .as_array()
            .map_or(0, |c| c.len() as u64);
        row.rss_mib = bridge.rss_mib();
        // Tokens and channels age in wall time: the next day starts at start + d × day, or at
        // once when the check overran.
        let boundary = start + day * d;
        row.overrun = Instant::now().saturating_duration_since(boundary);
        if row.overrun.is_zero() {
            sleep_until(boundary, &mut bridge).await;
        } else {
            start += row.overrun;
        }
        let next = Snapshot::take(&emulator, &bridge);
        row.count(&s, &snapshot, &next);
        snapshot = next;
        println!(
            "{}",
            table(std::slice::from_ref(&row))
                .lines()
                .last()
                .unwrap_or_default()
        );
        days.push(row);
        write_report(&report(&s, &header, &days, "(run in progress)"));
    }
    let ran = days_began.elapsed();

    let mut failures: Vec<String> = days.iter().flat_map(Day::failures).collect();
    let first_rss = days.first().map_or(0.0, |d| d.rss_mib);
    let last_rss = days.last().map_or(0.0, |d| d.rss_mib);
    if days.len() > 1 && (last_rss - first_rss).abs() > first_rss * 0.10 {
        failures.push(format!(
            "RSS on the last day {last_rss:.1} MiB is not within 10 % of day 1's {first_rss:.1} MiB"
        ));
    }
    let overruns: Vec<String> = days
        .iter()
        .filter(|d| !d.overrun.is_zero())
        .map(|d| format!("day {} by {:.1} s", d.day, d.overrun.as_secs_f64()))
        .collect();
    let sum = |f: fn(&Day) -> Option<u64>| days.iter().filter_map(f).sum::<u64>();
    let mut settles: Vec<f64> = days.iter().map(|d| d.settle.as_secs_f64()).collect();
    settles.sort_by(f64::total_cmp);
    let quantile = |q: f64| settles[((settles.len() - 1) as f64 * q).round() as usize];
    let churn = days.iter().map(|d| d.churn_pct).sum::<f64>() / days.len() as f64;
    bridge.stop().await;
    emulator.shutdown().await;
    let wall_time = wall.elapsed();
    let footer = format!(
        "Wall time {:.1} s ({} CI's budget of {:.0} s): start-up {:.1} s, {} days in {:.1} s. Settle after the quiesce: min {:.1} s, median {:.1} s, 90th percentile {:.1} s, max {:.1} s (a day leaves {:.1} s after its active part). Churn {churn:.2} % of the users a day on average. Overruns ({} of {} days): {}. Discoveries {} and resyncs {} in all ({:.1} and {:.1} a day). RSS day 1 {first_rss:.1} MiB, last day {last_rss:.1} MiB.\n\n{}",
        wall_time.as_secs_f64(),
        if wall_time <= CI_BUDGET {
            "within"
        } else {
            "OVER"
        },
        CI_BUDGET.as_secs_f64(),
        started_in.as_secs_f64(),
        days.len(),
        ran.as_secs_f64(),
        quantile(0.0),
        quantile(0.5),
        quantile(0.9),
        quantile(1.0),
        (day - active).as_secs_f64(),
        overruns.len(),
        days.len(),
        if overruns.is_empty() {
            "none".to_owned()
        } else {
            overruns.join(", ")
        },
        sum(|d| d.discoveries),
        sum(|d| d.resyncs),
        sum(|d| d.discoveries) as f64 / days.len() as f64,
        sum(|d| d.resyncs) as f64 / days.len() as f64,
        if failures.is_empty() {
            "Verdict: every check passed.".to_owned()
        } else {
            format!("Verdict: FAILED\n\n- {}", failures.join("\n- "))
        },
    );
    let text = report(&s, &header, &days, &footer);
    println!("\n{text}");
    write_report(&text);
    assert!(
        failures.is_empty(),
        "the soak failed:\n- {}",
        failures.join("\n- ")
    );
}
