//! presence-sync against bad luck and bad input, over real loopback HTTP and WebSockets: a
//! malformed page during discovery, shutdown in the middle of a rollover, and relay URLs
//! that would leak a token or a secret.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use genesys_auth::{AuthConfig, Endpoints, GenesysClient, SecretString};
use genesys_emulator::{Emulator, EmulatorConfig, EmulatorHandle, FaultTarget};
use presence_frame::PresenceEvent;
use presence_sync::{PresenceSync, ReconnectCause, SyncConfig, SyncStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn fast_sync() -> SyncConfig {
    SyncConfig::default()
        .idle_before_ping(Duration::from_secs(2))
        .pong_timeout(Duration::from_secs(1))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(5))
}

async fn start_emulator(config: EmulatorConfig) -> EmulatorHandle {
    Emulator::start(config, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("emulator starts")
}

fn client(api: &str, emulator: &EmulatorHandle) -> GenesysClient {
    let config = AuthConfig::new(
        Endpoints::new(api, &emulator.base_url()).expect("endpoints"),
        emulator.client_id(),
        SecretString::from(emulator.client_secret()),
    )
    .backoff(Duration::from_millis(20), Duration::from_millis(200))
    .max_attempts(8);
    GenesysClient::new(config).expect("client")
}

/// Counts what reaches the sink, and what reaches it after `closed` was set.
#[derive(Clone, Default)]
struct CountingSink {
    events: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
    late: Arc<AtomicU64>,
}

impl CountingSink {
    fn sink(&self) -> impl Fn(&mut Vec<PresenceEvent>) + Send + Sync + 'static {
        let this = self.clone();
        move |events: &mut Vec<PresenceEvent>| {
            this.events
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            if this.closed.load(Ordering::SeqCst) {
                this.late.fetch_add(events.len() as u64, Ordering::SeqCst);
            }
            events.clear();
        }
    }
}

async fn wait_ready(
    status: &SyncStatus,
    task: &JoinHandle<presence_sync::Result<()>>,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    while !status.is_ready() {
        assert!(
            !task.is_finished(),
            "the sync ended before it was ready (see the task's result)"
        );
        assert!(
            Instant::now() < deadline,
            "not ready in time; channels {:?}",
            status.channels()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback HTTP proxy in front of the emulator's API that answers the first `bad` user
/// listings (`GET /api/v2/users?...`) with a 200 whose body is cut short, and passes every
/// other request through untouched.
struct FlakyProxy {
    base: String,
    spoiled: Arc<AtomicUsize>,
}

impl FlakyProxy {
    async fn start(upstream: std::net::SocketAddr, bad: usize) -> FlakyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let spoiled = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&spoiled);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match client.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if head.starts_with(b"GET /api/v2/users?")
                        && count
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                (n < bad).then_some(n + 1)
                            })
                            .is_ok()
                    {
                        let body = r#"{"entities":[{"id":"9ed7d9f6-0c59-4360-ac54"#;
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = client.write_all(answer.as_bytes()).await;
                        let _ = client.shutdown().await;
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    if server.write_all(&head).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        FlakyProxy { base, spoiled }
    }
}

/// Item 6: a malformed page during discovery is retried with the sync's backoff, like any
/// other REST failure, instead of ending the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_page_during_discovery_is_retried() {
    let emulator = start_emulator(EmulatorConfig::default().users(300).change_rate(0.0)).await;
    let proxy = FlakyProxy::start(emulator.addr(), 2).await;
    let counting = CountingSink::default();
    let sync = PresenceSync::new(client(&proxy.base, &emulator), fast_sync(), counting.sink())
        .expect("sync");
    let status = sync.status();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sync.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !status.is_ready() && !task.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if task.is_finished() {
        let result = task.await;
        panic!("the sync ended on a malformed page instead of retrying: {result:?}");
    }
    assert!(status.is_ready(), "ready after the retries");
    assert_eq!(
        proxy.spoiled.load(Ordering::SeqCst),
        2,
        "both bad pages were served"
    );
    assert!(
        counting.events.load(Ordering::Relaxed) >= 300,
        "every user's presence arrived after the retries"
    );
    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), task).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "clean end: {result:?}");
    emulator.shutdown().await;
}

/// Item 6: the tasks that drain an old socket after a rollover belong to the sync: once
/// `run` has returned, nothing more reaches the sink (the bridge's final flush comes after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_published_after_run_returns_even_mid_rollover() {
    let emulator = start_emulator(
        EmulatorConfig::default()
            .users(400)
            .change_rate(4_000.0)
            .heartbeat_interval(Duration::from_millis(500)),
    )
    .await;
    let counting = CountingSink::default();
    let sync = PresenceSync::new(
        client(&emulator.base_url(), &emulator),
        fast_sync(),
        counting.sink(),
    )
    .expect("sync");
    let status = sync.status();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sync.run(shutdown.clone()));
    wait_ready(&status, &task, Duration::from_secs(30)).await;

    // socket_closing with a long grace: the old socket keeps delivering events after the
    // replacement is adopted, which is what the drain task reads.
    assert!(
        emulator
            .socket_closing(FaultTarget::All, Duration::from_secs(5))
            .expect("fault")
            >= 1
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while status.stats().reconnects_of(ReconnectCause::SocketClosing) == 0 {
        assert!(
            Instant::now() < deadline,
            "no rollover; {:?}",
            status.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Stop at once, while the old socket is being drained.
    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), task).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "clean end: {result:?}");
    counting.closed.store(true, Ordering::SeqCst);
    // The old drain window is 1 s, then a close of up to 5 s: wait past the window.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        counting.late.load(Ordering::SeqCst),
        0,
        "events were published after PresenceSync::run returned"
    );
    emulator.shutdown().await;
}

/// Every log line of this test binary, to check what is never written.
static LOGGED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

struct CapturingLogger;

impl log::Log for CapturingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        // tungstenite traces a handshake's whole request (query and Authorization header):
        // the binary's logger drops that one target's trace (commands.rs, NoHandshakeTrace).
        if record.level() == log::Level::Trace
            && record.target().starts_with("tungstenite::handshake")
        {
            return;
        }
        LOGGED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{} {}", record.target(), record.args()));
    }
    fn flush(&self) {}
}

fn capture_logs() {
    if log::set_logger(&CapturingLogger).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

fn logged() -> Vec<String> {
    LOGGED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Item 8: the relay gets a Genesys token, so plain `ws://` is refused unless the relay is on
/// this machine, and so is a URL with userinfo; errors never repeat a password.
#[tokio::test]
async fn relay_urls_that_would_expose_the_token_are_refused() {
    let emulator = start_emulator(EmulatorConfig::default().users(5).change_rate(0.0)).await;
    let make = |url: &str| {
        presence_sync::RelaySource::new(
            url,
            client(&emulator.base_url(), &emulator),
            fast_sync(),
            |_: &mut Vec<PresenceEvent>| {},
        )
        .map(|_| ())
    };
    for url in [
        "ws://relay.example.com/frames",
        "ws://10.1.2.3:9000/frames",
        "ws://[2001:db8::1]:9000/frames",
        "wss://reader:hunter2-pw@relay.example.com/frames",
        "ws://reader:hunter2-pw@127.0.0.1:9000/frames",
        "http://relay.example.com/frames",
    ] {
        let err = make(url).expect_err(url);
        let text = format!("{err} {err:?}");
        assert!(text.contains("relay-url"), "{url}: {text}");
        assert!(
            !text.contains("hunter2"),
            "{url}: password repeated: {text}"
        );
    }
    for url in [
        emulator.relay_url(),
        "wss://relay.example.com/frames".into(),
        "ws://localhost:9000/frames".into(),
        "ws://127.8.9.10:9000/frames".into(),
        "ws://[::1]:9000/frames".into(),
    ] {
        assert!(make(&url).is_ok(), "{url} is allowed");
    }
    emulator.shutdown().await;
}

/// Item 8: a relay URL's query is used to connect but never shown: not in the status that
/// `/v1/stats` and the dashboard read, not in any log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_urls_query_is_never_logged_or_shown() {
    capture_logs();
    let emulator = start_emulator(EmulatorConfig::default().users(50).change_rate(200.0)).await;
    let url = format!("{}?tenant=q-secret-4711", emulator.relay_url());
    let counting = CountingSink::default();
    let relay = presence_sync::RelaySource::new(
        &url,
        client(&emulator.base_url(), &emulator),
        fast_sync(),
        counting.sink(),
    )
    .expect("relay");
    let status = relay.status();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while counting.events.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no relay events");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    emulator.drop_sockets(FaultTarget::Relay).expect("drop");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status.stats().reconnects_of(ReconnectCause::Closed) == 0 {
        assert!(Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    assert!(matches!(task.await, Ok(Ok(()))));

    let shown: Vec<String> = status
        .channels()
        .iter()
        .filter_map(|c| c.channel_id.clone())
        .collect();
    assert_eq!(
        shown,
        vec![emulator.relay_url()],
        "the status shows the URL without its query"
    );
    let lines = logged();
    assert!(
        lines.iter().any(|l| l.contains("relay: connected")),
        "the relay's log lines were captured: {lines:?}"
    );
    let leaked: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("q-secret-4711"))
        .collect();
    assert!(leaked.is_empty(), "the query was logged: {leaked:?}");
    emulator.shutdown().await;
}
