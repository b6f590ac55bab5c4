//! Proves that the bridge rides out a broker outage: with the broker stopped for several seconds
//! while presence keeps changing, the bridge stays up, its memory stays bounded (the publisher's
//! coalescing queue never holds more than one record per user; the process RSS stays under a
//! generous bound), and once the broker is back the topic converges on the truth as usual.
//!
//! This test stops and restarts the broker of `scripts/kafka.sh` (the one `KAFKA_BROKERS` names,
//! found through `KAFKA_STATE_DIR`, or the script's default state dir as `.ci/run` uses). It holds
//! the broker exclusively, so no other test of this binary runs meanwhile, and a drop guard
//! restarts the broker even when an assertion fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use genesys_emulator::EmulatorConfig;

use crate::common::{self, Bridge, Expect, Kafka, TopicReader};

const USERS: u64 = 1_000;
const OUTAGE: Duration = Duration::from_secs(6);
/// Generous: the whole test process (emulator, bridge, librdkafka, consumer, test harness).
const RSS_LIMIT_KIB: u64 = 1024 * 1024;

/// The `scripts/kafka.sh` broker behind `KAFKA_BROKERS`, which this test may stop and start.
struct ScriptBroker {
    script: PathBuf,
    state_dir: PathBuf,
    /// `KEY=value` lines of `ports.env` and `credentials.env`, passed back on restart so the
    /// broker comes back on the same ports with the same listeners.
    restart_env: Vec<(String, String)>,
}

impl ScriptBroker {
    /// The script's broker, if it is the one `kafka` names; otherwise skip (fail in CI).
    fn find(kafka: &Kafka) -> Option<ScriptBroker> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let state_dir = common::env("KAFKA_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/kafka"));
        let script = root.join("scripts/kafka.sh");
        let output = Command::new(&script)
            .args(["env", "--plain"])
            .env("KAFKA_STATE_DIR", &state_dir)
            .output()
            .expect("run scripts/kafka.sh env");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let running = stdout
            .lines()
            .find_map(|l| l.strip_prefix("KAFKA_BROKERS="))
            .map(str::to_owned);
        if running.as_deref() != Some(kafka.endpoint.brokers.as_str()) {
            return common::skip_or_fail(&format!(
                "the outage test stops the scripts/kafka.sh broker, but the one in {} ({running:?}) is not KAFKA_BROKERS={} (set KAFKA_STATE_DIR to its state dir)",
                state_dir.display(),
                kafka.endpoint.brokers
            ));
        }
        let mut restart_env = Vec::new();
        let read = |file: &str| std::fs::read_to_string(state_dir.join(file)).unwrap_or_default();
        for line in read("ports.env").lines() {
            match line.split_once('=') {
                Some(("PORT", port)) => restart_env.push(("KAFKA_PORT".into(), port.into())),
                Some(("SASL_PORT", port)) => {
                    restart_env.push(("KAFKA_SASL_PORT".into(), port.into()))
                }
                Some(("CONTROLLER_PORT", port)) => {
                    restart_env.push(("KAFKA_CONTROLLER_PORT".into(), port.into()))
                }
                _ => {}
            }
        }
        for line in read("credentials.env").lines() {
            match line.split_once('=') {
                Some(("USERNAME", v)) => restart_env.push(("KAFKA_SASL_USERNAME".into(), v.into())),
                Some(("PASSWORD", v)) => restart_env.push(("KAFKA_SASL_PASSWORD".into(), v.into())),
                _ => {}
            }
        }
        Some(ScriptBroker {
            script,
            state_dir,
            restart_env,
        })
    }

    fn run(&self, command: &str) -> Result<(), String> {
        let mut cmd = Command::new(&self.script);
        cmd.arg(command)
            .env("KAFKA_STATE_DIR", &self.state_dir)
            .env_remove("KAFKA_FRESH")
            .env_remove("KAFKA_SASL_PORT");
        if command == "start" {
            cmd.envs(self.restart_env.iter().map(|(k, v)| (k, v)));
        }
        let output = cmd
            .output()
            .map_err(|e| format!("scripts/kafka.sh {command}: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/kafka.sh {command} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// Stops the broker; the returned guard starts it again when dropped.
    fn stop(&self) -> Outage<'_> {
        self.run("stop").expect("stop the broker");
        Outage {
            broker: self,
            restarted: false,
        }
    }
}

/// A stopped broker, started again on drop (also when the test fails).
struct Outage<'a> {
    broker: &'a ScriptBroker,
    restarted: bool,
}

impl Outage<'_> {
    fn end(mut self) {
        self.restarted = true;
        self.broker.run("start").expect("start the broker again");
    }
}

impl Drop for Outage<'_> {
    fn drop(&mut self) {
        if !self.restarted
            && let Err(e) = self.broker.run("start")
        {
            eprintln!("could not restart the broker after a failed test: {e}");
        }
    }
}

/// The resident set size of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_rides_out_a_broker_outage() {
    let Some(kafka) = common::kafka_exclusive().await else {
        return;
    };
    let Some(broker) = ScriptBroker::find(&kafka) else {
        return;
    };
    let started = Instant::now();
    let emulator = EmulatorConfig::default()
        .users(USERS as u32)
        .change_rate(1_000.0)
        .seed(21);
    let mut bridge = Bridge::start(&kafka, emulator, "outage", |args, e| {
        args.group_bits = Some(common::group_bits(e));
    })
    .await;
    let mut reader = TopicReader::open(&kafka.endpoint, &bridge.topic).await;
    // Everyone published once before the outage.
    let deadline = Instant::now() + Duration::from_secs(30);
    while reader.last.len() < USERS as usize {
        assert!(
            Instant::now() < deadline,
            "{} users on the topic",
            reader.last.len()
        );
        reader.read_to_end().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = bridge.emulator.stats().events_generated;
    let rss_before = rss_kib();

    let outage = broker.stop();
    let stopped = Instant::now();
    let (mut max_depth, mut max_rss, mut saw_unhealthy) = (0, rss_before, false);
    while stopped.elapsed() < OUTAGE {
        bridge.assert_running().await;
        let stats = bridge.stats().await;
        max_depth = max_depth.max(stats["kafka"]["queueDepth"].as_u64().unwrap_or(0));
        saw_unhealthy |= stats["kafka"]["healthy"] == false;
        max_rss = max_rss.max(rss_kib());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = bridge.emulator.stats().events_generated - before;
    outage.end();
    let down_for = stopped.elapsed();

    // Back: the bridge delivers what it kept, then keeps up with the stream.
    let recovered = Instant::now();
    while !(bridge.stats().await["kafka"]["healthy"] == true) {
        bridge.assert_running().await;
        assert!(
            recovered.elapsed() < Duration::from_secs(60),
            "the bridge never saw Kafka again: {}",
            bridge.stats().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let healthy_after = recovered.elapsed();
    let took = common::converge(
        &mut bridge,
        &mut reader,
        Duration::from_secs(90),
        Expect::genesys(true),
    )
    .await
    .after;
    reader.assert_no_problems();
    max_rss = max_rss.max(rss_kib());
    let stats = bridge.stats().await;
    eprintln!(
        "outage: broker down {down_for:?} while {during} changes happened; max queue depth {max_depth}, \
         unhealthy seen {saw_unhealthy}, RSS {rss_before} KiB before, max {max_rss} KiB; healthy again \
         {healthy_after:?} after restart, converged {took:?} after quiesce, {:?} in all; bridge {stats}",
        started.elapsed()
    );
    assert!(
        during >= 1_000,
        "events kept flowing during the outage: {during}"
    );
    assert!(
        max_depth <= USERS,
        "the queue holds at most one record per user: {max_depth}"
    );
    assert!(
        max_rss < RSS_LIMIT_KIB,
        "RSS {max_rss} KiB over {RSS_LIMIT_KIB} KiB"
    );
    assert!(saw_unhealthy, "the outage showed in /v1/stats: {stats}");
    assert_eq!(reader.last.len(), USERS as usize);
    bridge.stop().await;
}
