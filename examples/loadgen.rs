//! Load tool (issue #7): drives the Genesys emulator at fixed and saturating rates into the
//! real bridge and a real Kafka broker, and reports throughput, socket-to-ack latency, memory,
//! resync and reconnect times and CPU per million changes against the project's targets.
//!
//! ```text
//! cargo run --release --example loadgen -- [--mode relay|json|all] [--seconds N]
//!     [--rates 1000,10000,100000] [--out target/loadgen.json] [--perf]
//! ```
//!
//! How it is wired:
//! - The emulator runs in this process: it is the load generator.
//! - The bridge runs as a separate process, `presence-bridge run` with flags, so that its
//!   resident memory and CPU time can be read from `/proc/<pid>`. By default that process is
//!   this executable re-run with a hidden first argument, which then does exactly what
//!   `bins/presence-bridge/src/main.rs` does (parse the `presence-bridge` flags, install the
//!   logger, call `presence_bridge::commands::run`), so it can never be a stale build;
//!   `--bridge-bin` runs a built `presence-bridge` binary instead.
//! - Kafka is the broker named by `KAFKA_BROKERS`, or, when that is unset, one started (and
//!   stopped at the end) with `scripts/kafka.sh` in a state directory of its own.
//!
//! Latency percentiles come from the bridge's own histogram (receipt off the socket to broker
//! ack): the difference of two `/metrics` scrapes around the steady window, interpolated
//! inside buckets as Prometheus's `histogram_quantile` does.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use genesys_emulator::{Emulator, EmulatorConfig, EmulatorHandle, FaultTarget, Stats};
use serde_json::{Value, json};

/// The hidden first argument that makes this executable run the bridge.
const BRIDGE_ARG: &str = "__bridge";

/// Every environment variable `presence-bridge run` reads, removed from the bridge's
/// environment so that only the flags given here configure it.
const BRIDGE_ENV: [&str; 26] = [
    "PRESENCE_BRIDGE_CONFIG",
    "GENESYS_REGION",
    "GENESYS_API_URL",
    "GENESYS_LOGIN_URL",
    "GENESYS_CLIENT_ID",
    "GENESYS_GROUPS",
    "GROUP_BITS",
    "ALLOWED_GROUPS",
    "RELAY_URL",
    "KAFKA_BROKERS",
    "KAFKA_TOPIC",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_CA_FILE",
    "KAFKA_CERT_FILE",
    "KAFKA_KEY_FILE",
    "PRESENCE_TTL",
    "MAX_EVENT_SKEW",
    "MAX_MESSAGE_SIZE",
    "MAX_SOCKET_MESSAGE_SIZE",
    "RESYNC_INTERVAL",
    "ADMIN_ADDR",
    "ADMIN_MAX_EVENT_STREAMS",
    "SHUTDOWN_GRACE",
];

/// Frames per relay message (the emulator's default, set explicitly).
const RELAY_FRAMES_PER_MESSAGE: usize = 256;

/// The pid of the bridge running now (0 when none), for the interrupt handler.
static RUNNING_BRIDGE: AtomicU32 = AtomicU32::new(0);

/// The targets of issue #7 on this machine class.
const TARGET_RELAY_PER_SEC: f64 = 250_000.0;
const TARGET_JSON_PER_SEC: f64 = 100_000.0;
const TARGET_P99_SECS: f64 = 0.025;
const TARGET_P999_SECS: f64 = 0.100;
const TARGET_RSS_KIB: u64 = 64 * 1024;
const TARGET_RESYNC_SECS: f64 = 10.0;
const TARGET_RECONNECT_SECS: f64 = 2.0;

/// Which measurements to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Binary relay: throughput, latency, memory with 100,000 users, CPU, profile.
    Relay,
    /// JSON notifications: throughput, latency, CPU, full resync, reconnect-and-resync.
    Json,
    /// Both.
    All,
}

/// Load tool of presence-bridge: the emulator, the bridge and a real Kafka broker.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Load tool of presence-bridge: drives the emulator into the bridge and a real Kafka \
             broker and reports throughput, latency, memory, resync, reconnect and CPU figures \
             against the targets.",
    after_help = "Kafka: KAFKA_BROKERS if set, else a broker started with scripts/kafka.sh \
                  (state in $TMPDIR/presence-bridge-loadgen-kafka) and stopped at the end.\n\
                  Bridge logs go to <out dir>/loadgen-logs/."
)]
struct Options {
    /// Which measurements to run.
    #[arg(long, value_enum, default_value = "all")]
    mode: Mode,

    /// Length of each steady measurement window, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,

    /// Settling time after each rate change, before the window starts, in seconds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=120))]
    warmup: u64,

    /// Fixed offered rates (changes per second), measured in turn; the flag with no value
    /// skips them.
    #[arg(
        long,
        value_delimiter = ',',
        num_args = 0..,
        default_value = "1000,10000,100000"
    )]
    rates: Vec<f64>,

    /// Offered rates of the "as fast as it goes" ramp, taken in ascending order until the
    /// delivered rate stops growing (less than 2% over the best so far); the saturation
    /// figure is the best delivered rate of the ramp. The flag with no value skips it.
    #[arg(
        long,
        value_delimiter = ',',
        num_args = 0..,
        default_value = "150000,200000,300000,400000"
    )]
    saturation_rates: Vec<f64>,

    /// Where to write the JSON report (bridge logs and the profile go beside it).
    #[arg(long, default_value = "target/loadgen.json")]
    out: PathBuf,

    /// Users in relay mode (relay ids), for the throughput and memory figures.
    #[arg(long, default_value_t = 100_000)]
    relay_users: u32,

    /// Users in JSON mode; at most 19,000 (19 channels of 1,000 topics, one channel kept free
    /// for rollovers).
    #[arg(long, default_value_t = 19_000)]
    json_users: u32,

    /// Users of the one channel in the reconnect measurement.
    #[arg(long, default_value_t = 1_000)]
    reconnect_users: u32,

    /// Reconnect measurements, each with a fresh bridge (so each is a first drop after a
    /// healthy session, whose backoff is at most 0.5 s, as in production).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    reconnect_trials: u32,

    /// Zipf exponent of which user changes (0 = uniform). With 1.0 the hottest of 100,000
    /// users changes 8% of the time, and at 300,000 changes/s its event time (bumped 1 ms per
    /// change) runs minutes ahead of the clock, so the default is uniform.
    #[arg(long, default_value_t = 0.0)]
    skew: f64,

    /// Seed of the emulator's workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Run this presence-bridge binary instead of re-running this executable as the bridge.
    #[arg(long, value_name = "PATH")]
    bridge_bin: Option<PathBuf>,

    /// After each saturation ramp, profile the bridge for one more window at the best rate
    /// with `perf record -g` and write `perf report --no-children` beside the JSON report.
    #[arg(long)]
    perf: bool,

    /// How `perf record` unwinds stacks: `fp` (what `-g` does; Rust release builds keep no
    /// frame pointers, so callers are mostly lost) or `dwarf` (real callers, tens of MB of
    /// data and a slower report).
    #[arg(long, default_value = "fp", value_parser = ["fp", "dwarf"])]
    perf_call_graph: String,
}

fn main() -> ExitCode {
    let mut args = std::env::args();
    let _program = args.next();
    let rest: Vec<String> = args.collect();
    if rest.first().map(String::as_str) == Some(BRIDGE_ARG) {
        return run_bridge(&rest[1..]);
    }
    let options = Options::parse();
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The bridge process: exactly what `bins/presence-bridge/src/main.rs` does.
fn run_bridge(args: &[String]) -> ExitCode {
    use presence_bridge::cli::Cli;

    let cli = Cli::parse_from(std::iter::once("presence-bridge".to_owned()).chain(args.to_vec()));
    presence_bridge::commands::main(cli)
}

// ---------------------------------------------------------------------------------------
// The run

/// What every phase needs.
struct Harness {
    options: Options,
    runtime: tokio::runtime::Runtime,
    brokers: String,
    broker_pid: Option<u32>,
    bridge_program: PathBuf,
    bridge_prefix: Vec<String>,
    log_dir: PathBuf,
    run_id: String,
}

fn run(options: &Options) -> Result<()> {
    validate(options)?;
    let started = Instant::now();
    let out_dir = options
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let log_dir = out_dir.join("loadgen-logs");
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let machine = machine();
    note(&format!(
        "machine: {}; load average {}",
        machine["summary"].as_str().unwrap_or("?"),
        load_text()
    ));
    if load_average()[0] > 1.5 {
        note("warning: the machine is busy (1-minute load average above 1.5); figures will be low");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("loadgen-emulator")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;

    let (brokers, kafka) = match std::env::var("KAFKA_BROKERS") {
        Ok(brokers) if !brokers.trim().is_empty() => {
            note(&format!("Kafka: KAFKA_BROKERS={brokers}"));
            (brokers, None)
        }
        _ => {
            let kafka = LocalKafka::start()?;
            (kafka.brokers.clone(), Some(kafka))
        }
    };
    on_interrupt(
        &runtime,
        kafka
            .as_ref()
            .map(|k| (k.script.clone(), k.state_dir.clone())),
    );
    let (bridge_program, bridge_prefix) = match &options.bridge_bin {
        Some(path) => (path.clone(), Vec::new()),
        None => (
            std::env::current_exe().context("cannot find this executable")?,
            vec![BRIDGE_ARG.to_owned()],
        ),
    };
    note(&format!(
        "bridge: {} {}run",
        bridge_program.display(),
        bridge_prefix
            .iter()
            .map(|a| format!("{a} "))
            .collect::<String>()
    ));
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
        .to_string();
    let context = Harness {
        options: options.clone(),
        runtime,
        brokers: brokers.clone(),
        broker_pid: kafka.as_ref().and_then(LocalKafka::pid),
        bridge_program,
        bridge_prefix,
        log_dir,
        run_id,
    };

    let mut report = json!({
        "tool": "examples/loadgen.rs",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "startedUnix": context.run_id,
        "machine": machine,
        "kafka": {"brokers": brokers, "startedByTool": kafka.is_some()},
        "bridge": context.bridge_program.display().to_string(),
        "options": {
            "mode": format!("{:?}", options.mode).to_lowercase(),
            "seconds": options.seconds,
            "warmup": options.warmup,
            "rates": options.rates,
            "saturationRates": options.saturation_rates,
            "relayUsers": options.relay_users,
            "jsonUsers": options.json_users,
            "reconnectUsers": options.reconnect_users,
            "skew": options.skew,
            "seed": options.seed,
        },
    });
    let result = run_phases(&context, &mut report, &out_dir);
    report["elapsedSeconds"] = json!(round(started.elapsed().as_secs_f64(), 1));
    report["loadAverageAtEnd"] = json!(load_average());
    if let Err(e) = &result {
        report["error"] = json!(format!("{e:#}"));
    }
    let targets = targets(&report);
    report["targets"] = targets;
    write_report(&options.out, &report)?;
    print_tables(&report);
    println!("\nJSON report: {}", options.out.display());
    drop(kafka);
    result
}

/// On Ctrl-C: stop the bridge and the broker this run started, then exit.
fn on_interrupt(runtime: &tokio::runtime::Runtime, kafka: Option<(PathBuf, PathBuf)>) {
    runtime.spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        note("interrupted: stopping the bridge and the broker");
        let pid = RUNNING_BRIDGE.load(Ordering::Relaxed);
        if pid != 0 {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if let Some((script, state_dir)) = kafka {
            let _ = Command::new("bash")
                .arg(script)
                .arg("stop")
                .env("KAFKA_STATE_DIR", state_dir)
                .status();
        }
        std::process::exit(130);
    });
}

fn validate(options: &Options) -> Result<()> {
    for rate in options.rates.iter().chain(&options.saturation_rates) {
        if !(1.0..=genesys_emulator::MAX_CHANGE_RATE).contains(rate) {
            bail!(
                "invalid rate {rate}: 1 to {} changes per second",
                genesys_emulator::MAX_CHANGE_RATE
            );
        }
    }
    if !(1..=19_000).contains(&options.json_users) {
        bail!("invalid --json-users: 1 to 19,000 (19 channels of 1,000 topics)");
    }
    if !(1..=1_000).contains(&options.reconnect_users) {
        bail!("invalid --reconnect-users: 1 to 1,000 (one channel)");
    }
    if options.relay_users == 0 || options.relay_users > genesys_emulator::MAX_USERS {
        bail!("invalid --relay-users");
    }
    if !options.skew.is_finite() || options.skew < 0.0 {
        bail!("invalid --skew: a number >= 0");
    }
    Ok(())
}

fn run_phases(context: &Harness, report: &mut Value, out_dir: &Path) -> Result<()> {
    let mode = context.options.mode;
    if matches!(mode, Mode::Relay | Mode::All) {
        report["relay"] = json!({});
        relay_phase(context, &mut report["relay"], out_dir)?;
    }
    if matches!(mode, Mode::Json | Mode::All) {
        report["json"] = json!({});
        json_phase(context, &mut report["json"], out_dir)?;
        report["resync"] = json!({});
        resync_phase(context, &mut report["resync"])?;
        report["reconnect"] = json!({});
        reconnect_phase(context, &mut report["reconnect"])?;
    }
    Ok(())
}

/// An emulator with the steady workload of this tool: no changes until a rate is set, no
/// shift-change bursts (they would land in some windows and not others).
fn start_emulator(context: &Harness, users: u32) -> Result<EmulatorHandle> {
    let config = EmulatorConfig::default()
        .users(users)
        .change_rate(0.0)
        .skew(context.options.skew)
        .shift_change_every(Duration::ZERO)
        .relay_frames_per_message(RELAY_FRAMES_PER_MESSAGE)
        .seed(context.options.seed);
    context
        .runtime
        .block_on(Emulator::start(config, ([127, 0, 0, 1], 0).into()))
        .map_err(|e| anyhow!("cannot start the emulator: {e}"))
}

fn stop_emulator(context: &Harness, emulator: EmulatorHandle) {
    context.runtime.block_on(emulator.shutdown());
}

/// Ends a phase: the emulator stops generating, the bridge shuts down (its shutdown report is
/// returned), then the emulator stops.
fn end_phase(context: &Harness, emulator: EmulatorHandle, bridge: &mut Bridge) -> Result<Value> {
    emulator
        .set_change_rate(0.0)
        .map_err(|e| anyhow!("emulator: {e}"))?;
    let shutdown = bridge.stop()?;
    stop_emulator(context, emulator);
    Ok(shutdown)
}

/// The relay phase: throughput and latency at fixed rates and at saturation, memory with
/// every relay user tracked, CPU, and optionally a profile.
fn relay_phase(context: &Harness, out: &mut Value, out_dir: &Path) -> Result<()> {
    let o = &context.options;
    phase_banner(&format!(
        "relay: {} users, binary frames ({RELAY_FRAMES_PER_MESSAGE} per message)",
        o.relay_users
    ));
    let emulator = start_emulator(context, o.relay_users)?;
    let mut bridge = Bridge::start(
        context,
        "relay",
        &emulator,
        Some(&emulator.relay_url()),
        None,
    )?;
    let started = Instant::now();
    // The relay sends every user's state on connect: wait until all are held and published.
    bridge.wait_drained(Some(u64::from(o.relay_users)), Duration::from_secs(120))?;
    out["snapshotIngestSeconds"] = json!(round(started.elapsed().as_secs_f64(), 2));
    let at_rest = bridge.proc_sample()?;
    out["memoryAfterSnapshotKiB"] = memory_json(&at_rest);
    note(&format!(
        "{} users held and published in {:.1} s; VmHWM {} KiB, VmRSS {} KiB",
        o.relay_users,
        started.elapsed().as_secs_f64(),
        at_rest.hwm_kib,
        at_rest.rss_kib
    ));

    let mut steps = Vec::new();
    for rate in &o.rates {
        steps.push(measure_step(
            context,
            &mut bridge,
            &emulator,
            "fixed",
            *rate,
        )?);
    }
    let before_saturation = bridge.proc_sample()?;
    let stats = bridge.stats()?;
    out["memory"] = json!({
        "loadAverage": load_average(),
        "users": stats["users"],
        "vmHWMKiB": before_saturation.hwm_kib,
        "vmRSSKiB": before_saturation.rss_kib,
        "rssAnonKiB": before_saturation.anon_kib,
        "rssFileKiB": before_saturation.file_kib,
        "threads": before_saturation.threads,
        "what": "peak resident memory of the bridge process from start through the snapshot \
                 and the fixed-rate steps (before the saturation steps)",
    });
    let best = saturate(context, &mut bridge, &emulator, &mut steps)?;
    if o.perf
        && let Some(rate) = best
    {
        out["profile"] = profile(context, &bridge, &emulator, "relay", rate, out_dir)?;
    }
    let after = bridge.proc_sample()?;
    out["memoryPeakWholeRunKiB"] = json!(after.hwm_kib);
    out["steps"] = Value::Array(steps);
    out["shutdown"] = end_phase(context, emulator, &mut bridge)?;
    Ok(())
}

/// The JSON phase: throughput and latency over notification channels.
fn json_phase(context: &Harness, out: &mut Value, out_dir: &Path) -> Result<()> {
    let o = &context.options;
    phase_banner(&format!(
        "json: {} users on {} notification channels",
        o.json_users,
        o.json_users.div_ceil(1_000)
    ));
    let emulator = start_emulator(context, o.json_users)?;
    let mut bridge = Bridge::start(context, "json", &emulator, None, None)?;
    let started = Instant::now();
    bridge.wait_ready(Duration::from_secs(120))?;
    bridge.wait_drained(Some(u64::from(o.json_users)), Duration::from_secs(60))?;
    out["readySeconds"] = json!(round(started.elapsed().as_secs_f64(), 2));
    let mut steps = Vec::new();
    for rate in &o.rates {
        steps.push(measure_step(
            context,
            &mut bridge,
            &emulator,
            "fixed",
            *rate,
        )?);
    }
    let best = saturate(context, &mut bridge, &emulator, &mut steps)?;
    if o.perf
        && let Some(rate) = best
    {
        out["profile"] = profile(context, &bridge, &emulator, "json", rate, out_dir)?;
    }
    out["steps"] = Value::Array(steps);
    out["memoryPeakKiB"] = json!(bridge.proc_sample()?.hwm_kib);
    out["shutdown"] = end_phase(context, emulator, &mut bridge)?;
    Ok(())
}

/// A full resync through the REST API with the emulator's default rate limit (300 requests
/// a minute per token): the bridge's first periodic resync of every user, which asks for all
/// of them at once (one paged pass of the user listing), a while after start. The resyncs at
/// start are reported too.
fn resync_phase(context: &Harness, out: &mut Value) -> Result<()> {
    let o = &context.options;
    // Long enough after start for the start-up traffic to be over, short enough to wait for.
    let interval = Duration::from_secs(15);
    phase_banner(&format!(
        "resync: {} users, rate limit 300/min, periodic resync every {}s",
        o.json_users,
        interval.as_secs()
    ));
    let emulator = start_emulator(context, o.json_users)?;
    emulator
        .set_change_rate(100.0)
        .map_err(|e| anyhow!("emulator: {e}"))?;
    let mut bridge = Bridge::start(
        context,
        "resync",
        &emulator,
        None,
        Some(&format!("{}s", interval.as_secs())),
    )?;
    bridge.wait_ready(Duration::from_secs(120))?;
    // On the clock of the log lines, so that a resync logged before readiness is never taken
    // for the periodic one.
    let ready = bridge.started.elapsed();
    let deadline = Instant::now() + interval + Duration::from_secs(60);
    let periodic = loop {
        let resyncs = bridge.resync_log();
        if let Some(full) = resyncs
            .iter()
            .find(|(users, _, at)| *users == u64::from(o.json_users) && *at > ready)
        {
            break Some(*full);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let metrics = bridge.metrics()?;
    let stats = emulator.stats();
    let resyncs = bridge.resync_log();
    out["users"] = json!(o.json_users);
    out["readySeconds"] = json!(round(ready.as_secs_f64(), 2));
    out["atStart"] = Value::Array(
        resyncs
            .iter()
            .filter(|(_, _, at)| *at <= ready)
            .map(|(users, secs, _)| json!({"users": users, "seconds": secs}))
            .collect(),
    );
    out["fullResyncSeconds"] = json!(periodic.map(|(_, secs, _)| secs));
    out["resyncsTotal"] = json!(metrics.get("presence_bridge_resyncs_total"));
    out["resyncLastDurationSeconds"] =
        json!(metrics.get("presence_bridge_resync_last_duration_seconds"));
    out["genesysRequests"] = json!(metrics.get("presence_bridge_genesys_requests_total"));
    out["bridgeSaw429"] = json!(metrics.get("presence_bridge_genesys_rate_limited_total"));
    out["emulatorApiRequests"] = json!(stats.api_requests);
    out["emulatorApiRateLimited"] = json!(stats.api_rate_limited);
    out["loadAverage"] = json!(load_average());
    match periodic {
        Some((_, secs, _)) => note(&format!(
            "full resync of {} users: {secs:.2} s; emulator 429s: {}",
            o.json_users, stats.api_rate_limited
        )),
        None => note("no full periodic resync was logged within its deadline"),
    }
    out["shutdown"] = end_phase(context, emulator, &mut bridge)?;
    Ok(())
}

/// Reconnect-and-resync of one channel: drop its socket, time until the channel streams again
/// with a new resync done. Each trial has a fresh emulator and bridge.
fn reconnect_phase(context: &Harness, out: &mut Value) -> Result<()> {
    let o = &context.options;
    phase_banner(&format!(
        "reconnect: one channel of {} users, {} trials",
        o.reconnect_users, o.reconnect_trials
    ));
    let mut trials = Vec::new();
    for trial in 1..=o.reconnect_trials {
        let emulator = start_emulator(context, o.reconnect_users)?;
        emulator
            .set_change_rate(100.0)
            .map_err(|e| anyhow!("emulator: {e}"))?;
        let mut bridge = Bridge::start(
            context,
            &format!("reconnect-{trial}"),
            &emulator,
            None,
            None,
        )?;
        bridge.wait_ready(Duration::from_secs(60))?;
        std::thread::sleep(Duration::from_secs(1));
        let result = time_reconnect(&bridge, &emulator);
        let shutdown = bridge.stop()?;
        stop_emulator(context, emulator);
        let mut result = result?;
        result["shutdown"] = shutdown;
        note(&format!(
            "trial {trial}: streaming and resynced {} s after the drop",
            result["seconds"]
        ));
        trials.push(result);
    }
    let times: Vec<f64> = trials
        .iter()
        .filter_map(|t| t["seconds"].as_f64())
        .collect();
    out["users"] = json!(o.reconnect_users);
    out["trials"] = Value::Array(trials);
    out["maxSeconds"] = json!(
        times
            .iter()
            .copied()
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))))
    );
    out["medianSeconds"] = json!(median(&times));
    Ok(())
}

fn time_reconnect(bridge: &Bridge, emulator: &EmulatorHandle) -> Result<Value> {
    let before = bridge.stats()?;
    let resync_before = before["events"]["resync"].as_u64().unwrap_or(0);
    let resync_log_before = bridge.resync_log().len();
    let dropped = emulator
        .drop_sockets(FaultTarget::All)
        .map_err(|e| anyhow!("emulator: {e}"))?;
    let t0 = Instant::now();
    if dropped == 0 {
        bail!("drop_sockets hit no socket");
    }
    let deadline = t0 + Duration::from_secs(30);
    // When each state was first seen after the drop: the breakdown of the total.
    let mut first_seen: BTreeMap<String, f64> = BTreeMap::new();
    loop {
        let stats = bridge.stats()?;
        let now = t0.elapsed().as_secs_f64();
        let state = stats["channels"][0]["state"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        let resynced = stats["events"]["resync"].as_u64().unwrap_or(0) > resync_before;
        if state != "streaming" || resynced {
            first_seen.entry(state.clone()).or_insert(round(now, 3));
        }
        if state == "streaming" && resynced {
            let resync = bridge
                .resync_log()
                .get(resync_log_before)
                .map(|(users, secs, _)| json!({"users": users, "seconds": secs}));
            return Ok(json!({
                "seconds": round(now, 3),
                "socketsDropped": dropped,
                "statesFirstSeenAtSeconds": first_seen,
                "resync": resync,
                "loadAverage": load_average(),
            }));
        }
        if Instant::now() >= deadline {
            bail!("the channel was not streaming and resynced 30 s after the drop: {stats}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// One measured step

/// Everything read at one instant of a step.
struct Sample {
    at: Instant,
    metrics: Metrics,
    bridge: ProcSample,
    loadgen_cpu: f64,
    broker_cpu: Option<f64>,
    emulator: Stats,
}

fn sample(context: &Harness, bridge: &Bridge, emulator: &EmulatorHandle) -> Result<Sample> {
    // The emulator's counters and the process times first, the scrape last: the scrape is
    // the slowest read and its time is what the window is measured by.
    let emulator = emulator.stats();
    let bridge_proc = bridge.proc_sample()?;
    let loadgen_cpu = cpu_seconds(std::process::id()).unwrap_or(0.0);
    let broker_cpu = context.broker_pid.and_then(cpu_seconds);
    let metrics = bridge.metrics()?;
    Ok(Sample {
        at: Instant::now(),
        metrics,
        bridge: bridge_proc,
        loadgen_cpu,
        broker_cpu,
        emulator,
    })
}

fn measure_step(
    context: &Harness,
    bridge: &mut Bridge,
    emulator: &EmulatorHandle,
    kind: &str,
    rate: f64,
) -> Result<Value> {
    let o = &context.options;
    emulator
        .set_change_rate(rate)
        .map_err(|e| anyhow!("emulator: {e}"))?;
    std::thread::sleep(Duration::from_secs(o.warmup));
    bridge.check_alive()?;
    let a = sample(context, bridge, emulator)?;
    std::thread::sleep(Duration::from_secs(o.seconds));
    let b = sample(context, bridge, emulator)?;
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let delta = |name: &str| b.metrics.sum(name) - a.metrics.sum(name);
    let per_sec = |v: f64| v / secs;
    let delivered = delta("presence_bridge_kafka_delivered_total");
    let received = delta("presence_bridge_events_received_total");
    let coalesced = delta("presence_bridge_kafka_coalesced_total");
    let changes = delta("presence_bridge_changes_total");
    let generated = (b.emulator.events_generated - a.emulator.events_generated) as f64;
    let lost_relay_frames =
        (b.emulator.relay.messages_lost - a.emulator.relay.messages_lost) as f64 * 256.0;
    let lost_notifications = (b.emulator.events_lost - a.emulator.events_lost) as f64;
    let histogram = b
        .metrics
        .histogram("presence_bridge_kafka_delivery_latency_seconds")
        .minus(
            &a.metrics
                .histogram("presence_bridge_kafka_delivery_latency_seconds"),
        );
    let bridge_cpu = b.bridge.cpu_secs - a.bridge.cpu_secs;
    let per_million = |cpu: f64, n: f64| (n > 0.0).then(|| round(cpu / n * 1e6, 3));
    let step = json!({
        "kind": kind,
        "offeredPerSec": rate,
        "windowSeconds": round(secs, 2),
        "generatedPerSec": round(per_sec(generated), 0),
        "receivedPerSec": round(per_sec(received), 0),
        "changesPerSec": round(per_sec(changes), 0),
        "deliveredPerSec": round(per_sec(delivered), 0),
        "coalescedPerSec": round(per_sec(coalesced), 0),
        "emulatorLostPerSec": round(per_sec(lost_relay_frames + lost_notifications), 0),
        "queueDepth": [a.metrics.get("presence_bridge_kafka_queue_depth"),
                       b.metrics.get("presence_bridge_kafka_queue_depth")],
        "inFlight": b.metrics.get("presence_bridge_kafka_in_flight"),
        "deliveryFailures": delta("presence_bridge_kafka_delivery_failures_total"),
        "latency": {
            "count": histogram.count,
            "p50Ms": histogram.quantile(0.50).map(|s| round(s * 1e3, 2)),
            "p99Ms": histogram.quantile(0.99).map(|s| round(s * 1e3, 2)),
            "p999Ms": histogram.quantile(0.999).map(|s| round(s * 1e3, 2)),
            "meanMs": (histogram.count > 0.0).then(|| round(histogram.sum / histogram.count * 1e3, 2)),
            "shareWithin25Ms": histogram.share_within(0.025).map(|s| round(s, 5)),
            "shareWithin100Ms": histogram.share_within(0.100).map(|s| round(s, 5)),
            "exposedBucketsSummedTwice": histogram.repaired,
        },
        "cpu": {
            "bridgeCores": round(bridge_cpu / secs, 3),
            "bridgeSecondsPerMillionDelivered": per_million(bridge_cpu, delivered),
            "bridgeSecondsPerMillionReceived": per_million(bridge_cpu, received),
            "loadgenCores": round((b.loadgen_cpu - a.loadgen_cpu) / secs, 3),
            "brokerCores": a.broker_cpu.zip(b.broker_cpu).map(|(x, y)| round((y - x) / secs, 3)),
        },
        "memoryKiB": memory_json(&b.bridge),
        "users": b.metrics.get("presence_bridge_registry_users"),
        "loadAverage": load_average(),
    });
    note(&format!(
        "{kind} {rate:>9.0}/s: delivered {:>9.0}/s (received {:.0}/s, generated {:.0}/s), p50 {} p99 {} p99.9 {}, bridge {:.2} cores, load {}",
        per_sec(delivered),
        per_sec(received),
        per_sec(generated),
        ms_text(step["latency"]["p50Ms"].as_f64()),
        ms_text(step["latency"]["p99Ms"].as_f64()),
        ms_text(step["latency"]["p999Ms"].as_f64()),
        bridge_cpu / secs,
        load_text()
    ));
    Ok(step)
}

/// The "as fast as it goes" ramp: raises the offered rate until the delivered rate stops
/// growing. Returns the offered rate of the best step.
fn saturate(
    context: &Harness,
    bridge: &mut Bridge,
    emulator: &EmulatorHandle,
    steps: &mut Vec<Value>,
) -> Result<Option<f64>> {
    let mut rates = context.options.saturation_rates.clone();
    rates.sort_by(f64::total_cmp);
    let mut best: Option<(f64, f64)> = None;
    for rate in rates {
        let step = measure_step(context, bridge, emulator, "saturation", rate)?;
        let delivered = step["deliveredPerSec"].as_f64().unwrap_or(0.0);
        steps.push(step);
        let grew = best.is_none_or(|(most, _)| delivered >= most * 1.02);
        if best.is_none_or(|(most, _)| delivered > most) {
            best = Some((delivered, rate));
        }
        if !grew {
            note("the delivered rate stopped growing: end of the ramp");
            break;
        }
    }
    Ok(best.map(|(_, rate)| rate))
}

/// Profiles the bridge at `rate` for one window with `perf record -g`.
fn profile(
    context: &Harness,
    bridge: &Bridge,
    emulator: &EmulatorHandle,
    label: &str,
    rate: f64,
    out_dir: &Path,
) -> Result<Value> {
    let o = &context.options;
    emulator
        .set_change_rate(rate)
        .map_err(|e| anyhow!("emulator: {e}"))?;
    let data = out_dir.join(format!("loadgen-perf-{label}.data"));
    note(&format!(
        "profiling the bridge (pid {}) for {} s at {rate:.0}/s offered",
        bridge.pid, o.seconds
    ));
    let status = Command::new("perf")
        .args([
            "record",
            "--call-graph",
            &o.perf_call_graph,
            "-F",
            "499",
            "-p",
        ])
        .arg(bridge.pid.to_string())
        .arg("-o")
        .arg(&data)
        .args(["--", "sleep"])
        .arg(o.seconds.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run perf (is it installed? /usr/bin/perf)")?;
    if !status.success() {
        bail!("perf record failed: {status}");
    }
    let report = |extra: &[&str]| -> Result<String> {
        let output = Command::new("perf")
            .arg("report")
            .arg("-i")
            .arg(&data)
            .args(["--no-children", "--stdio"])
            .args(extra)
            .stderr(Stdio::null())
            .output()
            .context("cannot run perf report")?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let symbols = report(&["-g", "none", "--percent-limit", "0.3", "--sort", "symbol"])?;
    let threads = report(&["-g", "none", "--sort", "comm"])?;
    let dsos = report(&["-g", "none", "--sort", "dso"])?;
    let graph = report(&["--percent-limit", "2"])?;
    let files = [
        ("symbols", &symbols),
        ("threads", &threads),
        ("dsos", &dsos),
        ("callgraph", &graph),
    ];
    for (kind, text) in files {
        let name = format!("loadgen-perf-{label}-{kind}.txt");
        std::fs::write(out_dir.join(&name), text)
            .with_context(|| format!("cannot write {name}"))?;
    }
    let top = |text: &str, n: usize| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .take(n)
            .map(|l| l.trim().to_owned())
            .collect()
    };
    note(&format!(
        "profile written to {}/loadgen-perf-{label}-*.txt",
        out_dir.display()
    ));
    Ok(json!({
        "offeredPerSec": rate,
        "data": data.display().to_string(),
        "topSymbols": top(&symbols, 25),
        "threads": top(&threads, 15),
        "dsos": top(&dsos, 10),
        "loadAverage": load_average(),
    }))
}

// ---------------------------------------------------------------------------------------
// The bridge process

/// One running bridge process and its admin server.
struct Bridge {
    child: Child,
    pid: u32,
    admin: String,
    http: ureq::Agent,
    log_path: PathBuf,
    /// Lines of the bridge's log that matter here (resync reports), with when they came.
    events: mpsc::Receiver<(String, f64)>,
    resyncs: std::cell::RefCell<Vec<(u64, f64, Duration)>>,
    /// When the process was started: the clock of the log lines' times.
    started: Instant,
}

impl Bridge {
    /// Starts `presence-bridge run` against `emulator` and the broker, and waits for its admin
    /// server's address in its log.
    fn start(
        context: &Harness,
        label: &str,
        emulator: &EmulatorHandle,
        relay_url: Option<&str>,
        resync_interval: Option<&str>,
    ) -> Result<Bridge> {
        let base = emulator.base_url();
        let topic = format!("presence-loadgen-{}-{label}", context.run_id);
        let mut args: Vec<String> = context.bridge_prefix.clone();
        args.extend(
            [
                "run",
                "--api-url",
                &base,
                "--login-url",
                &base,
                "--client-id",
                emulator.client_id(),
                "--kafka-brokers",
                &context.brokers,
                "--topic",
                &topic,
                "--ttl",
                "1h",
                "--resync-interval",
                resync_interval.unwrap_or("off"),
                "--admin-addr",
                "127.0.0.1:0",
                "--shutdown-grace",
                "5s",
            ]
            .map(str::to_owned),
        );
        if let Some(url) = relay_url {
            args.extend(["--relay-url".to_owned(), url.to_owned()]);
        }
        let log_path = context.log_dir.join(format!("bridge-{label}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let stdout_log = log.try_clone().context("cannot share the log file")?;
        let mut command = Command::new(&context.bridge_program);
        command.args(&args);
        for name in BRIDGE_ENV {
            command.env_remove(name);
        }
        // The secret goes the way production passes it: the environment, never a flag.
        command
            .env("GENESYS_CLIENT_SECRET", emulator.client_secret())
            .env(
                "RUST_LOG",
                std::env::var("LOADGEN_BRIDGE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout_log))
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", context.bridge_program.display()))?;
        let pid = child.id();
        RUNNING_BRIDGE.store(pid, Ordering::Relaxed);
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("no stderr pipe"))?;
        let (addr_tx, addr_rx) = mpsc::channel::<String>();
        let (events_tx, events) = mpsc::channel::<(String, f64)>();
        let started = Instant::now();
        std::thread::spawn(move || tee_log(stderr, log, addr_tx, events_tx, started));
        let deadline = Instant::now() + Duration::from_secs(60);
        let admin = loop {
            match addr_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(addr) => break addr,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "the bridge ({label}) stopped before its admin server started; see {}",
                    log_path.display()
                ),
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "the bridge ({label}) exited with {status} at start; see {}",
                    log_path.display()
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                bail!(
                    "the bridge ({label}) logged no admin address within 60 s; see {}",
                    log_path.display()
                );
            }
        };
        let http: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        note(&format!(
            "bridge ({label}) pid {pid}, admin http://{admin}, topic {topic}, log {}",
            log_path.display()
        ));
        Ok(Bridge {
            child,
            pid,
            admin,
            http,
            log_path,
            events,
            resyncs: std::cell::RefCell::new(Vec::new()),
            started,
        })
    }

    fn get(&self, path: &str) -> Result<(u16, String)> {
        let url = format!("http://{}{path}", self.admin);
        let mut response = self
            .http
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("GET {url}: reading the body"))?;
        Ok((status, body))
    }

    fn stats(&self) -> Result<Value> {
        let (status, body) = self.get("/v1/stats")?;
        if status != 200 {
            bail!("/v1/stats answered {status}: {body}");
        }
        serde_json::from_str(&body).context("/v1/stats is not JSON")
    }

    fn metrics(&self) -> Result<Metrics> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        Ok(Metrics::parse(&body))
    }

    fn proc_sample(&self) -> Result<ProcSample> {
        let cpu_secs =
            cpu_seconds(self.pid).ok_or_else(|| anyhow!("cannot read /proc/{}/stat", self.pid))?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .with_context(|| format!("cannot read /proc/{}/status", self.pid))?;
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(ProcSample {
            cpu_secs,
            hwm_kib: kib("VmHWM:"),
            rss_kib: kib("VmRSS:"),
            anon_kib: kib("RssAnon:"),
            file_kib: kib("RssFile:"),
            threads: kib("Threads:"),
        })
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "the bridge exited with {status}; see {}",
                self.log_path.display()
            );
        }
        Ok(())
    }

    /// Waits for `/readyz` to answer 200.
    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            self.check_alive()?;
            if let Ok((200, _)) = self.get("/readyz") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let answer = self
                    .get("/readyz")
                    .map(|(_, body)| body)
                    .unwrap_or_default();
                bail!(
                    "the bridge was not ready within {limit:?}: {answer}; see {}",
                    self.log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the registry holds `users` (when given) and the publisher has nothing
    /// queued or in flight.
    fn wait_drained(&mut self, users: Option<u64>, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            self.check_alive()?;
            if let Ok(m) = self.metrics() {
                let held = m.get("presence_bridge_registry_users").unwrap_or(0.0) as u64;
                let idle = m.get("presence_bridge_kafka_queue_depth") == Some(0.0)
                    && m.get("presence_bridge_kafka_in_flight") == Some(0.0);
                if idle && users.is_none_or(|u| held >= u) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    bail!(
                        "the bridge held {held} users and was {} after {limit:?}; see {}",
                        if idle { "idle" } else { "still publishing" },
                        self.log_path.display()
                    );
                }
            } else if Instant::now() >= deadline {
                bail!("the bridge's /metrics did not answer within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The resyncs the bridge has logged so far: (users, seconds, when logged since start).
    fn resync_log(&self) -> Vec<(u64, f64, Duration)> {
        let mut resyncs = self.resyncs.borrow_mut();
        while let Ok((line, at)) = self.events.try_recv() {
            if let Some((users, secs)) = parse_resync_line(&line) {
                resyncs.push((users, secs, Duration::from_secs_f64(at)));
            }
        }
        resyncs.clone()
    }

    /// SIGTERM, then waits for the graceful shutdown (Kafka flush included).
    fn stop(&mut self) -> Result<Value> {
        // The last scrape, kept beside the log for whoever checks a figure.
        if let Ok((_, text)) = self.get("/metrics") {
            let _ = std::fs::write(self.log_path.with_extension("metrics.txt"), text);
        }
        let asked = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = asked + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                RUNNING_BRIDGE.store(0, Ordering::Relaxed);
                return Ok(json!({
                    "exitCode": status.code(),
                    "seconds": round(asked.elapsed().as_secs_f64(), 2),
                }));
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "the bridge did not stop within 20 s of SIGTERM; killed. See {}",
                    self.log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        RUNNING_BRIDGE.store(0, Ordering::Relaxed);
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Copies the bridge's log to its file, hands over the admin address, and passes on the lines
/// this tool reads (resync reports) with the time they came.
fn tee_log(
    stderr: std::process::ChildStderr,
    mut log: std::fs::File,
    addr_tx: mpsc::Sender<String>,
    events_tx: mpsc::Sender<(String, f64)>,
    started: Instant,
) {
    const ADMIN: &str = "admin HTTP on http://";
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(log, "{line}");
        if let Some(rest) = line.split(ADMIN).nth(1) {
            let _ = addr_tx.send(rest.trim().to_owned());
        }
        if line.contains("resynced ") {
            let _ = events_tx.send((line, started.elapsed().as_secs_f64()));
        }
    }
}

/// `resynced 19000 users in 1.2s` (the Debug format of a `Duration`, one decimal) to
/// (users, seconds).
fn parse_resync_line(line: &str) -> Option<(u64, f64)> {
    let rest = line.split("resynced ").nth(1)?;
    let (users, rest) = rest.split_once(" users in ")?;
    let text = rest.trim();
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic() || c == 'µ')?);
    let value: f64 = number.parse().ok()?;
    let secs = match unit {
        "s" => value,
        "ms" => value / 1e3,
        "µs" | "us" => value / 1e6,
        "ns" => value / 1e9,
        _ => return None,
    };
    Some((users.trim().parse().ok()?, secs))
}

/// CPU time and memory of a process.
#[derive(Clone, Copy, Debug)]
struct ProcSample {
    cpu_secs: f64,
    /// Peak resident set (`VmHWM`).
    hwm_kib: u64,
    /// Resident set now (`VmRSS`), and its anonymous (heap, stacks) and file-backed (the
    /// executable's pages) parts.
    rss_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    threads: u64,
}

fn memory_json(p: &ProcSample) -> Value {
    json!({
        "vmHWM": p.hwm_kib,
        "vmRSS": p.rss_kib,
        "rssAnon": p.anon_kib,
        "rssFile": p.file_kib,
        "threads": p.threads,
    })
}

/// utime + stime of a process, all threads, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

// ---------------------------------------------------------------------------------------
// Prometheus text

/// One `/metrics` scrape: every sample by its name and labels as written.
struct Metrics {
    samples: Vec<(String, f64)>,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                let value = match value.trim() {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().ok()?,
                };
                Some((key.trim().to_owned(), value))
            })
            .collect();
        Metrics { samples }
    }

    /// The sample with exactly this name and no labels.
    fn get(&self, key: &str) -> Option<f64> {
        self.samples.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The sum over every label set of `name`.
    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| k == name || k.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
            .map(|(_, v)| *v)
            .sum()
    }

    fn histogram(&self, name: &str) -> Histogram {
        let bucket = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(&bucket)?.strip_suffix("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let count = self.get(&format!("{name}_count")).unwrap_or(0.0);
        // The bridge hands cumulative counts to prometheus-client's `encode_histogram`, which
        // expects per-bucket counts and sums them again (bins/presence-bridge/src/metrics.rs),
        // so the exposed `le` series are running sums of the true cumulative counts and the
        // `+Inf` bucket exceeds `_count`. Undo that when it shows; a correct exposition (the
        // `+Inf` bucket equal to `_count`) is taken as it is.
        let doubled = buckets
            .last()
            .is_some_and(|(le, v)| le.is_infinite() && (v - count).abs() > 0.5);
        if doubled {
            let mut previous = 0.0;
            for bucket in &mut buckets {
                let exposed = bucket.1;
                bucket.1 = exposed - previous;
                previous = exposed;
            }
        }
        Histogram {
            buckets,
            count,
            sum: self.get(&format!("{name}_sum")).unwrap_or(0.0),
            repaired: doubled,
        }
    }
}

/// A Prometheus histogram: cumulative counts by upper bound (the last is `+Inf`).
#[derive(Clone, Debug)]
struct Histogram {
    buckets: Vec<(f64, f64)>,
    count: f64,
    sum: f64,
    /// Whether the exposed buckets were summed twice and had to be undone.
    repaired: bool,
}

impl Histogram {
    /// The observations between two scrapes.
    fn minus(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, c)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0.0, |(_, c)| *c);
                (*le, c - before)
            })
            .collect();
        Histogram {
            buckets,
            count: self.count - earlier.count,
            sum: self.sum - earlier.sum,
            repaired: self.repaired || earlier.repaired,
        }
    }

    /// Quantile `q` in seconds, as Prometheus's `histogram_quantile` computes it: linear
    /// interpolation inside the bucket holding the rank (from 0 in the first bucket); a rank
    /// in the `+Inf` bucket gives the highest finite bound.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = 0.0;
        let mut below = 0.0;
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let inside = cumulative - below;
                let fraction = if inside > 0.0 {
                    (rank - below) / inside
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * fraction);
            }
            lower = le;
            below = cumulative;
        }
        Some(lower)
    }

    /// The share of observations at or below `bound`, exact when `bound` is a bucket bound.
    fn share_within(&self, bound: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let within = self
            .buckets
            .iter()
            .rfind(|(le, _)| *le <= bound + 1e-12)
            .map_or(0.0, |(_, c)| *c);
        Some(within / total)
    }
}

// ---------------------------------------------------------------------------------------
// Kafka

/// A broker started with `scripts/kafka.sh` for this run, stopped on drop.
struct LocalKafka {
    brokers: String,
    state_dir: PathBuf,
    script: PathBuf,
}

impl LocalKafka {
    fn start() -> Result<LocalKafka> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
        let state_dir = std::env::temp_dir().join("presence-bridge-loadgen-kafka");
        note(&format!(
            "KAFKA_BROKERS is not set: starting a broker with {} (state in {})",
            script.display(),
            state_dir.display()
        ));
        let output = Command::new("bash")
            .arg(&script)
            .args(["start", "--fresh"])
            .env("KAFKA_STATE_DIR", &state_dir)
            .env("KAFKA_PORT", "0")
            .env_remove("KAFKA_SASL_PORT")
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run {}", script.display()))?;
        if !output.status.success() {
            // It may have started the JVM before failing: stop what it left.
            drop(LocalKafka {
                brokers: String::new(),
                state_dir,
                script,
            });
            bail!("scripts/kafka.sh start failed ({})", output.status);
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let brokers = stdout
            .lines()
            .filter_map(|l| l.trim().strip_prefix("KAFKA_BROKERS="))
            .next_back()
            .unwrap_or_default()
            .to_owned();
        let kafka = LocalKafka {
            brokers,
            state_dir,
            script,
        };
        if kafka.brokers.is_empty() {
            bail!("scripts/kafka.sh start printed no KAFKA_BROKERS line");
        }
        note(&format!("Kafka broker at {}", kafka.brokers));
        Ok(kafka)
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.state_dir.join("kafka.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for LocalKafka {
    fn drop(&mut self) {
        note("stopping the Kafka broker this run started");
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .env("KAFKA_STATE_DIR", &self.state_dir)
            .stdout(Stdio::null())
            .status();
    }
}

// ---------------------------------------------------------------------------------------
// The report

fn targets(report: &Value) -> Value {
    let mut rows = Vec::new();
    let best = |mode: &str| -> Option<(f64, Value)> {
        report[mode]["steps"]
            .as_array()?
            .iter()
            .filter(|s| s["kind"] == "saturation")
            .filter_map(|s| Some((s["deliveredPerSec"].as_f64()?, s.clone())))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    };
    for (mode, target, what) in [
        ("relay", TARGET_RELAY_PER_SEC, "relay to Kafka, changes/s"),
        (
            "json",
            TARGET_JSON_PER_SEC,
            "JSON notifications to Kafka, changes/s",
        ),
    ] {
        if let Some((rate, step)) = best(mode) {
            rows.push(json!({
                "figure": what,
                "measured": rate,
                "target": format!(">= {target}"),
                "met": rate >= target,
                "loadAverage": step["loadAverage"],
            }));
        }
    }
    for mode in ["relay", "json"] {
        let Some(step) = report[mode]["steps"].as_array().and_then(|steps| {
            steps
                .iter()
                .find(|s| s["kind"] == "fixed" && s["offeredPerSec"].as_f64() == Some(10_000.0))
        }) else {
            continue;
        };
        let latency = &step["latency"];
        // The bounds of the targets are bucket bounds, so the share is exact.
        let share25 = latency["shareWithin25Ms"].as_f64();
        let share100 = latency["shareWithin100Ms"].as_f64();
        rows.push(json!({
            "figure": format!("{mode}: p99 socket-to-ack at 10,000/s, ms"),
            "measured": latency["p99Ms"],
            "target": format!("<= {}", TARGET_P99_SECS * 1e3),
            "met": share25.map(|s| s >= 0.99),
            "loadAverage": step["loadAverage"],
        }));
        rows.push(json!({
            "figure": format!("{mode}: p99.9 socket-to-ack at 10,000/s, ms"),
            "measured": latency["p999Ms"],
            "target": format!("<= {}", TARGET_P999_SECS * 1e3),
            "met": share100.map(|s| s >= 0.999),
            "loadAverage": step["loadAverage"],
        }));
    }
    if let Some(hwm) = report["relay"]["memory"]["vmHWMKiB"].as_u64() {
        rows.push(json!({
            "figure": format!("peak RSS with {} users tracked, MiB", report["relay"]["memory"]["users"]),
            "measured": round(hwm as f64 / 1024.0, 1),
            "target": format!("<= {}", TARGET_RSS_KIB / 1024),
            "met": hwm <= TARGET_RSS_KIB,
            "loadAverage": report["relay"]["memory"]["loadAverage"],
        }));
    }
    if !report["resync"].is_null() {
        let secs = report["resync"]["fullResyncSeconds"].as_f64();
        let limited = report["resync"]["emulatorApiRateLimited"].as_u64();
        rows.push(json!({
            "figure": format!("full resync of {} users (429s from the emulator: {})",
                report["resync"]["users"], limited.map_or("?".to_owned(), |n| n.to_string())),
            "measured": secs,
            "target": format!("<= {TARGET_RESYNC_SECS} s, no 429"),
            "met": secs.map(|s| s <= TARGET_RESYNC_SECS && limited == Some(0)),
            "loadAverage": report["resync"]["loadAverage"],
        }));
    }
    if let Some(max) = report["reconnect"]["maxSeconds"].as_f64() {
        rows.push(json!({
            "figure": format!("reconnect and resync of a {}-user channel, worst of {} trials, s",
                report["reconnect"]["users"],
                report["reconnect"]["trials"].as_array().map_or(0, Vec::len)),
            "measured": max,
            "target": format!("<= {TARGET_RECONNECT_SECS}"),
            "met": max <= TARGET_RECONNECT_SECS,
            "loadAverage": report["reconnect"]["trials"][0]["loadAverage"],
        }));
    }
    Value::Array(rows)
}

fn write_report(path: &Path, report: &Value) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(report).context("cannot encode the report")?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

fn print_tables(report: &Value) {
    println!();
    println!(
        "| mode | step | offered/s | generated/s | received/s | delivered/s | coalesced/s | p50 ms | p99 ms | p99.9 ms | bridge cores | CPU s / 1M delivered | VmHWM MiB | load avg |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for mode in ["relay", "json"] {
        let Some(steps) = report[mode]["steps"].as_array() else {
            continue;
        };
        for s in steps {
            let num = |v: &Value| v.as_f64().map_or("-".to_owned(), thousands);
            let ms = |v: &Value| ms_text(v.as_f64());
            println!(
                "| {mode} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s["kind"].as_str().unwrap_or("?"),
                num(&s["offeredPerSec"]),
                num(&s["generatedPerSec"]),
                num(&s["receivedPerSec"]),
                num(&s["deliveredPerSec"]),
                num(&s["coalescedPerSec"]),
                ms(&s["latency"]["p50Ms"]),
                ms(&s["latency"]["p99Ms"]),
                ms(&s["latency"]["p999Ms"]),
                s["cpu"]["bridgeCores"]
                    .as_f64()
                    .map_or("-".to_owned(), |c| format!("{c:.2}")),
                s["cpu"]["bridgeSecondsPerMillionDelivered"]
                    .as_f64()
                    .map_or("-".to_owned(), |c| format!("{c:.2}")),
                s["memoryKiB"]["vmHWM"]
                    .as_f64()
                    .map_or("-".to_owned(), |k| format!("{:.1}", k / 1024.0)),
                load_of(&s["loadAverage"]),
            );
        }
    }
    if let Some(rows) = report["targets"].as_array() {
        println!();
        println!("| figure | measured | target | met | load avg |");
        println!("|---|---:|---|---|---|");
        for r in rows {
            let measured = match &r["measured"] {
                Value::Number(n) => n.as_f64().map_or("-".to_owned(), |v| {
                    if v >= 1000.0 {
                        thousands(v)
                    } else {
                        format!("{v:.2}")
                    }
                }),
                Value::Null => "-".to_owned(),
                other => other.to_string(),
            };
            let met = match r["met"].as_bool() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "?",
            };
            println!(
                "| {} | {} | {} | {} | {} |",
                r["figure"].as_str().unwrap_or("?"),
                measured,
                r["target"].as_str().unwrap_or("?"),
                met,
                load_of(&r["loadAverage"]),
            );
        }
    }
    if let Some(e) = report["error"].as_str() {
        println!("\nThe run stopped early: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers

fn note(text: &str) {
    eprintln!("loadgen: {text}");
}

fn phase_banner(text: &str) {
    eprintln!("\n=== {text} ===");
}

fn round(v: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (v * scale).round() / scale
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn ms_text(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(ms) if ms >= 100.0 => format!("{ms:.0}"),
        Some(ms) => format!("{ms:.1}"),
    }
}

fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut parts = text.split_whitespace().map(|p| p.parse().unwrap_or(0.0));
    [
        parts.next().unwrap_or(0.0),
        parts.next().unwrap_or(0.0),
        parts.next().unwrap_or(0.0),
    ]
}

fn load_text() -> String {
    let [a, b, c] = load_average();
    format!("{a:.2} {b:.2} {c:.2}")
}

fn load_of(v: &Value) -> String {
    match v.as_array() {
        Some(l) if l.len() == 3 => format!(
            "{:.2} {:.2} {:.2}",
            l[0].as_f64().unwrap_or(0.0),
            l[1].as_f64().unwrap_or(0.0),
            l[2].as_f64().unwrap_or(0.0)
        ),
        _ => "-".to_owned(),
    }
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU")
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    json!({
        "cpu": model,
        "cores": cores,
        "memoryGiB": round(mem_kib as f64 / 1024.0 / 1024.0, 1),
        "kernel": kernel,
        "summary": format!("{cores} cores ({model}), {:.0} GiB, Linux {kernel}", mem_kib as f64 / 1024.0 / 1024.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let h = Histogram {
            buckets: vec![
                (0.01, 50.0),
                (0.025, 99.0),
                (0.05, 100.0),
                (f64::INFINITY, 100.0),
            ],
            count: 100.0,
            sum: 1.0,
            repaired: false,
        };
        assert_eq!(h.quantile(0.5), Some(0.01));
        let p99 = h.quantile(0.99).unwrap_or_default();
        assert!((p99 - 0.025).abs() < 1e-9);
        assert_eq!(h.share_within(0.025), Some(0.99));
    }

    #[test]
    fn buckets_summed_twice_are_undone() {
        // True cumulative counts 50, 99, 100 (and 100 in +Inf), summed once more on export.
        let text = "x_sum 1.0\nx_count 100\nx_bucket{le=\"0.01\"} 50\n\
                    x_bucket{le=\"0.025\"} 149\nx_bucket{le=\"0.05\"} 249\n\
                    x_bucket{le=\"+Inf\"} 349\n# EOF\n";
        let h = Metrics::parse(text).histogram("x");
        assert!(h.repaired);
        assert_eq!(h.share_within(0.025), Some(0.99));
        assert_eq!(h.buckets.last().map(|b| b.1), Some(100.0));
    }

    #[test]
    fn resync_lines_parse() {
        let line =
            "[2025-01-01T00:00:00Z INFO  presence_sync::resync] resynced 19000 users in 1.2s";
        assert_eq!(parse_resync_line(line), Some((19_000, 1.2)));
        assert_eq!(
            parse_resync_line("resynced 1000 users in 85.3ms"),
            Some((1_000, 0.0853))
        );
    }
}
