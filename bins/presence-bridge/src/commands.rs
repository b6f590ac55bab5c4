//! The commands: `run`, `emulate`, `demo`, and the signal handling they share.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use genesys_emulator::{ChaosConfig, Emulator, EmulatorConfig, EmulatorHandle, FaultKind};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bridge;
use std::process::ExitCode;

use crate::cli::{Cli, Command, DemoArgs, EmulateArgs, RunArgs};
use crate::config::BridgeConfig;

/// Prints a line to stdout, ignoring a closed stdout (a pipe whose reader went away must not
/// bring the service down).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// tungstenite traces a client handshake's whole request, `Authorization: Bearer` and URL
/// query included (`RUST_LOG=trace`): that one target never logs below debug.
const HANDSHAKE_TARGET: &str = "tungstenite::handshake";

/// `env_logger` as `RUST_LOG` says (by default `info`), without the handshake trace.
struct NoHandshakeTrace(env_logger::Logger);

impl log::Log for NoHandshakeTrace {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        !(metadata.level() == log::Level::Trace && metadata.target().starts_with(HANDSHAKE_TARGET))
            && self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

fn install_logger() {
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(NoHandshakeTrace(logger))).is_ok() {
        log::set_max_level(max);
    }
}

/// The whole program for parsed flags: installs the logger, runs the command on a
/// multi-threaded runtime, and turns the result into an exit code (0 on a clean shutdown, 1
/// with a one-line reason otherwise). `main` and the load tool's bridge process both call it.
pub fn main(cli: Cli) -> ExitCode {
    crate::alloc::tune();
    install_logger();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("presence-bridge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(&args).await,
            Command::Emulate(args) => emulate(&args).await,
            Command::Demo(args) => demo(&args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined, never a secret (no error type carries one).
            eprintln!("presence-bridge: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, joined by `: ` as `{:#}` joins them, but each cause
/// once: some library errors end their own message with their source's, which `{:#}` would
/// then print twice.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; a second one exits at once.
///
/// The signals are taken over before this returns, so a signal that arrives right after
/// (say, once a banner told the user how to stop) is never the default, fatal one.
pub fn spawn_signal_handler(shutdown: CancellationToken) {
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(e) => {
            log::warn!("cannot listen for signals ({e}); stop with SIGKILL");
            return;
        }
    };
    tokio::spawn(async move {
        signals.recv().await;
        log::info!("shutting down (a second signal exits at once)");
        shutdown.cancel();
        signals.recv().await;
        eprintln!("presence-bridge: second signal, exiting now");
        std::process::exit(130);
    });
}

/// SIGTERM and SIGINT, taken over from their default action.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Ctrl-C.
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals)
    }

    async fn recv(&mut self) {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn bind(option: &str, addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --{option} {addr}"))
}

/// `presence-bridge run`.
pub async fn run(args: &RunArgs) -> Result<()> {
    let config = BridgeConfig::from_args(args)?;
    let admin = bind("admin-addr", config.admin_addr).await?;
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    log::info!("admin HTTP on http://{}", admin.local_addr()?);
    bridge::serve(config, admin, shutdown).await
}

/// The fault kinds named on the command line (all when none are).
fn fault_kinds(names: &[String]) -> Result<Vec<FaultKind>> {
    if names.is_empty() || names.iter().any(|name| name.trim() == "all") {
        return Ok(FaultKind::ALL.to_vec());
    }
    names
        .iter()
        .map(|name| {
            FaultKind::ALL
                .into_iter()
                .find(|k| k.as_str() == name.trim())
                .ok_or_else(|| {
                    let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.as_str()).collect();
                    anyhow!(
                        "invalid --faults {name:?}: known kinds are {}",
                        known.join(", ")
                    )
                })
        })
        .collect()
}

/// The emulator's configuration for these flags, not yet validated (callers may set more;
/// then [`validate_emulator`]).
fn emulator_config(
    users: u32,
    rate: f64,
    seed: u64,
    chaos: f64,
    faults: &[String],
) -> Result<EmulatorConfig> {
    let mut config = EmulatorConfig::default()
        .users(users)
        .change_rate(rate)
        .seed(seed);
    let kinds = fault_kinds(faults)?;
    if !(chaos.is_finite() && chaos >= 0.0) {
        return Err(anyhow!(
            "invalid --chaos {chaos}: expected faults per minute, 0 or more"
        ));
    }
    if chaos > 0.0 {
        config = config.chaos(ChaosConfig::new(chaos).kinds(kinds));
    }
    Ok(config)
}

/// Validates the emulator's configuration, naming the flag that set a bad value.
fn validate_emulator(config: &EmulatorConfig) -> Result<()> {
    config.validate().map_err(|e| {
        let genesys_emulator::Error::InvalidConfig { field, reason, .. } = &e else {
            return e.into();
        };
        let option = match *field {
            "users" => "users",
            "change_rate" => "rate",
            "heartbeat_interval" => "heartbeat",
            "channel_lifetime" => "channel-lifetime",
            "token_lifetime" => "token-lifetime",
            "rate_limit_per_minute" => "rate-limit",
            "clients" => "clients",
            "spare_users" => "spare-users",
            "churn_per_day" => "churn-per-day",
            "day" => "day",
            field if field.starts_with("chaos") => "chaos",
            _ => return e.into(),
        };
        anyhow!("invalid --{option}: {reason}")
    })
}

fn print_emulator(emulator: &EmulatorHandle) {
    say!("Genesys Cloud emulator");
    say!("  base URL (login and API): {}", emulator.base_url());
    say!("  client id:                {}", emulator.client_id());
    say!("  client secret:            {}", emulator.client_secret());
    // The further clients, each printed as the first is (their own channels and tokens).
    for (n, client) in emulator.clients().iter().enumerate().skip(1) {
        let n = n + 1;
        say!(
            "  client {n} id:{:pad$}{}",
            "",
            client.id(),
            pad = 15 - digits(n)
        );
        say!(
            "  client {n} secret:{:pad$}{}",
            "",
            client.secret(),
            pad = 11 - digits(n)
        );
    }
    say!("  relay (bearer token):     {}", emulator.relay_url());
    say!(
        "  ground truth:             {}/emulator/truth",
        emulator.base_url()
    );
}

/// The number of decimal digits of `n` (at most 4: there are at most 1,000 clients).
fn digits(n: usize) -> usize {
    n.to_string().len().min(4)
}

/// The emulator's configuration for `emulate`'s flags, validated.
fn emulate_config(args: &EmulateArgs) -> Result<EmulatorConfig> {
    let config = emulator_config(args.users, args.rate, args.seed, args.chaos, &args.faults)?
        .heartbeat_interval(args.heartbeat.into())
        .channel_lifetime(args.channel_lifetime.into())
        .token_lifetime(args.token_lifetime.into())
        .rate_limit_per_minute(args.rate_limit)
        .clients(args.clients)
        .spare_users(args.spare_users)
        .churn_per_day(args.churn_per_day)
        .day(args.day.into());
    validate_emulator(&config)?;
    Ok(config)
}

/// `presence-bridge emulate`.
pub async fn emulate(args: &EmulateArgs) -> Result<()> {
    let config = emulate_config(args)?;
    let emulator = Emulator::start(config, args.addr)
        .await
        .with_context(|| format!("cannot start the emulator on --addr {}", args.addr))?;
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    print_emulator(&emulator);
    say!("Ctrl-C to stop.");
    shutdown.cancelled().await;
    emulator.shutdown().await;
    Ok(())
}

/// `--group-bits` for the emulator's groups: group `i` is bit `i` of the mask, as in its
/// relay frames. The demo maps them, so the dashboard and the records show real masks.
pub fn group_bits_of(emulator: &EmulatorHandle) -> Vec<String> {
    emulator
        .group_ids()
        .iter()
        .enumerate()
        .map(|(bit, group)| format!("{group}={bit}"))
        .collect()
}

/// `presence-bridge demo`: the emulator on a free port and the bridge against it.
pub async fn demo(args: &DemoArgs) -> Result<()> {
    let e = &args.emulator;
    let config = emulator_config(e.users, e.rate, e.seed, e.chaos, &e.faults)?;
    validate_emulator(&config)?;
    let emulator = Emulator::start(config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot start the emulator")?;
    let base = emulator.base_url();
    let groups = emulator.group_ids();
    let run_args = RunArgs {
        api_url: Some(base.clone()),
        login_url: Some(base),
        client_id: Some(emulator.client_id().to_owned()),
        group_bits: Some(group_bits_of(&emulator)),
        kafka_brokers: Some(args.kafka_brokers.clone()),
        topic: Some(args.topic.clone()),
        admin_addr: Some(args.admin_addr.clone()),
        resync_interval: Some("5m".into()),
        ttl: Some("1h".into()),
        ..RunArgs::default()
    };
    // The secret goes the way it would in production (a file, never a flag); it is the
    // emulator's well-known demo secret, and the file is removed once read.
    let secret_file = std::env::temp_dir().join(format!(
        "presence-bridge-demo-{}.secret",
        std::process::id()
    ));
    std::fs::write(&secret_file, emulator.client_secret())
        .context("cannot write the demo's secret file")?;
    let run_args = RunArgs {
        client_secret_file: Some(secret_file.clone()),
        ..run_args
    };
    let config = BridgeConfig::from_args(&run_args);
    let _ = std::fs::remove_file(&secret_file);
    let config = config?;
    let admin = bind("admin-addr", config.admin_addr).await?;
    let dashboard = admin.local_addr()?;
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    say!("presence-bridge demo");
    say!("  dashboard:  http://{dashboard}/");
    say!("  metrics:    http://{dashboard}/metrics");
    say!(
        "  emulator:   {} ({} users, {} changes/s)",
        emulator.base_url(),
        e.users,
        e.rate
    );
    say!(
        "  groups:     {} emulator groups mapped to bits 0-{} of the group mask",
        groups.len(),
        groups.len().saturating_sub(1)
    );
    if e.chaos > 0.0 {
        say!(
            "  chaos:      {} faults a minute ({}); watch the channel timeline",
            e.chaos,
            if e.faults.is_empty() {
                "every kind".to_owned()
            } else {
                e.faults.join(", ")
            }
        );
    }
    say!("  kafka:      {} topic {}", args.kafka_brokers, args.topic);
    say!(
        "To stop: Ctrl-C (the emulator and the bridge). A broker started with scripts/kafka.sh (scripts/demo.sh starts one) keeps running: scripts/kafka.sh stop"
    );
    let result = bridge::serve(config, admin, shutdown).await;
    tokio::time::timeout(Duration::from_secs(5), emulator.shutdown())
        .await
        .ok();
    result
}

#[cfg(test)]
mod tests {
    use log::Log as _;

    use super::*;

    fn emulate_args(flags: &[&str]) -> EmulateArgs {
        use clap::Parser as _;
        let argv = ["presence-bridge", "emulate"].iter().chain(flags);
        match Cli::try_parse_from(argv).map(|cli| cli.command) {
            Ok(Command::Emulate(args)) => args,
            other => panic!("{flags:?}: {other:?}"),
        }
    }

    #[test]
    fn emulate_takes_clients_spare_users_and_churn() {
        let args = emulate_args(&[
            "--clients",
            "3",
            "--spare-users",
            "600",
            "--churn-per-day",
            "0.5",
            "--day",
            "10s",
        ]);
        assert_eq!(args.day, humantime::Duration::from(Duration::from_secs(10)));
        let config = emulate_config(&args).expect("valid");
        let ids: Vec<String> = config
            .client_credentials()
            .iter()
            .map(|c| c.id().to_owned())
            .collect();
        assert_eq!(
            ids,
            [
                "emulator-client-id",
                "emulator-client-id-2",
                "emulator-client-id-3"
            ]
        );
        let defaults = emulate_config(&emulate_args(&[])).expect("valid");
        assert_eq!(defaults.client_credentials().len(), 1);
        for (flags, named) in [
            (&["--clients", "0"][..], "invalid --clients"),
            (&["--churn-per-day", "101"], "invalid --churn-per-day"),
            (&["--day", "0s"], "invalid --day"),
            (
                &["--users", "10", "--spare-users", "4294967290"],
                "invalid --spare-users",
            ),
        ] {
            let error = emulate_config(&emulate_args(flags)).expect_err("refused");
            assert!(one_line(&error).contains(named), "{flags:?}: {error:#}");
        }
    }

    #[test]
    fn the_handshake_trace_with_the_bearer_token_is_never_logged() {
        let logger = NoHandshakeTrace(
            env_logger::Builder::new()
                .filter_level(log::LevelFilter::Trace)
                .build(),
        );
        let at = |level, target| {
            logger.enabled(&log::Metadata::builder().level(level).target(target).build())
        };
        assert!(!at(log::Level::Trace, "tungstenite::handshake::client"));
        assert!(at(log::Level::Debug, "tungstenite::handshake::client"));
        assert!(at(log::Level::Trace, "presence_sync::relay"));
    }

    /// An error that prints its source in its own message, as some library errors do.
    #[derive(Debug)]
    struct Echoes(std::io::Error);

    impl std::fmt::Display for Echoes {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "could not check the topic: {}", self.0)
        }
    }

    impl std::error::Error for Echoes {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn one_line_joins_the_causes_and_says_each_once() {
        let refused = || std::io::Error::other("connection refused");
        let plain = anyhow::Error::new(refused()).context("Kafka at k1:9092");
        assert_eq!(one_line(&plain), "Kafka at k1:9092: connection refused");
        assert_eq!(one_line(&plain), format!("{plain:#}"));
        let echoing = anyhow::Error::new(Echoes(refused())).context("Kafka at k1:9092");
        assert_eq!(
            one_line(&echoing),
            "Kafka at k1:9092: could not check the topic: connection refused"
        );
        assert_eq!(one_line(&anyhow!("alone")), "alone");
    }
}
