//! Memory under oversized input: every socket of a full plan (19 channels, as many as one
//! OAuth client allows) receives a 16 MiB message at once, several times over, while this
//! process's peak resident memory is watched.
//!
//! The emulator runs in a child process (this same test binary, re-run on its ignored
//! `emulator_child` entry), so that what it allocates to send the big messages is not counted
//! against the sync. The sync talks to it over real loopback HTTP and WebSockets; faults go
//! through the emulator's own HTTP endpoint.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use genesys_auth::{AuthConfig, Endpoints, GenesysClient, Method, SecretString};
use genesys_emulator::{Emulator, EmulatorConfig};
use presence_frame::PresenceEvent;
use presence_sync::{DecodeErrorKind, PresenceSync, SyncConfig};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const CHILD_ENV: &str = "PRESENCE_SYNC_EMULATOR_CHILD";
const USERS: u32 = 1_900;
const TOPICS_PER_CHANNEL: usize = 100;
const OVERSIZED: usize = 16 << 20;
const ROUNDS: usize = 3;

/// Not a test of its own: the emulator process of `oversized_messages_on_every_socket_keep_memory_bounded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by oversized_messages_on_every_socket_keep_memory_bounded as its emulator"]
async fn emulator_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let emulator = Emulator::start(
        EmulatorConfig::default().users(USERS).change_rate(500.0),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("emulator starts");
    println!(
        "EMULATOR {} {} {}",
        emulator.base_url(),
        emulator.client_id(),
        emulator.client_secret()
    );
    // Until the parent closes our stdin (or dies).
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    })
    .await;
    emulator.shutdown().await;
}

/// The child emulator; killed when dropped.
struct ChildEmulator {
    child: Child,
    base: String,
    id: String,
    secret: String,
}

impl ChildEmulator {
    fn start() -> ChildEmulator {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "emulator_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("child emulator starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        // libtest prints `test emulator_child ... ` on the same line first.
        let line = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some((_, found)) = line.split_once("EMULATOR ") {
                        break found.to_owned();
                    }
                }
                other => panic!("the child emulator did not start: {other:?}"),
            }
        };
        let mut parts = line.split_whitespace().map(str::to_owned);
        let (Some(base), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            panic!("unexpected line from the child emulator: {line}");
        };
        ChildEmulator {
            child,
            base,
            id,
            secret,
        }
    }
}

impl Drop for ChildEmulator {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect(name)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_on_every_socket_keep_memory_bounded() {
    let emulator = ChildEmulator::start();
    let config = AuthConfig::new(
        Endpoints::new(&emulator.base, &emulator.base).expect("endpoints"),
        emulator.id.clone(),
        SecretString::from(emulator.secret.clone()),
    )
    .backoff(Duration::from_millis(20), Duration::from_millis(200))
    .requests_per_minute(0)
    .max_attempts(8);
    let client = GenesysClient::new(config).expect("client");
    let events = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&events);
    let sync = PresenceSync::new(
        client.clone(),
        SyncConfig::default()
            .topics_per_channel(TOPICS_PER_CHANNEL)
            .backoff(Duration::from_millis(20), Duration::from_millis(200)),
        move |batch: &mut Vec<PresenceEvent>| {
            counted.fetch_add(batch.len() as u64, Ordering::Relaxed);
            batch.clear();
        },
    )
    .expect("sync");
    let status = sync.status();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sync.run(shutdown.clone()));
    let ready = |what: &'static str| {
        let status = status.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !status.is_ready() {
                assert!(
                    Instant::now() < deadline,
                    "{what}: not ready; {:?}",
                    status.channels()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    ready("at start").await;
    let sockets = status.channels().len();
    assert_eq!(sockets, (USERS as usize).div_ceil(TOPICS_PER_CHANNEL));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_before, hwm_before) = memory_kib();

    let oversized = |status: &presence_sync::SyncStatus| {
        status
            .stats()
            .decode_errors()
            .iter()
            .find(|(k, _)| *k == DecodeErrorKind::Oversized)
            .map_or(0, |(_, n)| *n)
    };
    for round in 1..=ROUNDS {
        let fault = format!(r#"{{"fault":"oversized","target":"all","bytes":{OVERSIZED}}}"#);
        client
            .request(Method::Post, "/emulator/faults", Some(fault.into_bytes()))
            .await
            .expect("fault injected");
        let deadline = Instant::now() + Duration::from_secs(60);
        while oversized(&status) < (round * sockets) as u64 {
            assert!(
                Instant::now() < deadline,
                "round {round}: {} oversized messages seen of {}; {:?}",
                oversized(&status),
                round * sockets,
                status.stats()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Give sockets that are still reading a moment, then let every channel come back.
        tokio::time::sleep(Duration::from_millis(500)).await;
        ready("after a round of oversized messages").await;
    }
    let (rss_after, hwm_after) = memory_kib();
    eprintln!(
        "{sockets} sockets, {ROUNDS} rounds of {} MiB messages on every socket: VmRSS {} -> {} MiB, VmHWM {} -> {} MiB (peak grew by {} KiB); events {}",
        OVERSIZED >> 20,
        rss_before / 1024,
        rss_after / 1024,
        hwm_before / 1024,
        hwm_after / 1024,
        hwm_after - hwm_before,
        events.load(Ordering::Relaxed)
    );
    // One 16 MiB message buffered by each socket alone would be 19 * 16 = 304 MiB.
    assert!(
        hwm_after - hwm_before < 32 * 1024,
        "peak resident memory grew by {} MiB while every socket received {} MiB messages",
        (hwm_after - hwm_before) / 1024,
        OVERSIZED >> 20
    );
    assert!(events.load(Ordering::Relaxed) >= u64::from(USERS));
    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), task).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "clean end: {result:?}");
}
