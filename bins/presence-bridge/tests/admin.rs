//! The admin HTTP server of a running bridge (emulator → bridge → real Kafka): `/readyz`
//! names what is not ready and turns 200 when everything is, `/metrics` exports every metric
//! the README lists, the query API answers, and the dashboard works in a real browser
//! (headless Chromium) showing the same numbers as `/v1/stats`.
//!
//! Needs a Kafka broker in `KAFKA_BROKERS` (`scripts/kafka.sh start && eval "$(scripts/kafka.sh
//! env)"`); without one these tests skip, except under `CI`, where they fail. The dashboard
//! test needs Chromium (`apt-get install chromium`; `.ci/run` installs it), by the same rule.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use genesys_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use presence_bridge::cli::RunArgs;
use presence_bridge::config::BridgeConfig;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// The broker to use, or `None` (skip) outside CI when there is none.
fn brokers() -> Option<String> {
    let brokers = std::env::var("KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.trim().is_empty());
    let reachable = brokers.as_deref().is_some_and(|b| {
        b.split(',').any(|addr| {
            addr.trim()
                .parse::<SocketAddr>()
                .ok()
                .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
        })
    });
    if reachable {
        return brokers;
    }
    assert!(
        !in_ci(),
        "CI is set but no Kafka broker is reachable at KAFKA_BROKERS={brokers:?}"
    );
    eprintln!(
        "skipping: no Kafka broker; run `scripts/kafka.sh start && eval \"$(scripts/kafka.sh env)\"`"
    );
    None
}

struct Running {
    emulator: EmulatorHandle,
    admin: String,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start(brokers: &str, emulator: EmulatorConfig) -> Running {
    let emulator = Emulator::start(emulator, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("emulator");
    let dir = std::env::temp_dir().join(format!(
        "pb-admin-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let secret = dir.join("secret");
    std::fs::write(&secret, emulator.client_secret()).expect("secret");
    let base = emulator.base_url();
    let config = BridgeConfig::from_args(&RunArgs {
        api_url: Some(base.clone()),
        login_url: Some(base),
        client_id: Some(emulator.client_id().into()),
        client_secret_file: Some(secret),
        kafka_brokers: Some(brokers.into()),
        topic: Some(format!("admin-test-{}", fastrand_suffix())),
        ..RunArgs::default()
    })
    .expect("config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(presence_bridge::bridge::serve(
        config,
        listener,
        shutdown.clone(),
    ));
    Running {
        emulator,
        admin,
        shutdown,
        task,
        _dir: TempDir(dir),
    }
}

fn fastrand_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{nanos:x}{:x}", std::process::id())
}

/// An admin server to query, by its base URL.
struct Probe {
    admin: String,
}

impl Running {
    fn probe(admin: &str) -> Probe {
        Probe {
            admin: admin.to_owned(),
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        Running::probe(&self.admin).get(path).await
    }

    async fn json(&self, path: &str) -> Value {
        Running::probe(&self.admin).json(path).await
    }
}

impl Probe {
    /// Like `get`, but `None` when the server does not answer (yet).
    async fn try_get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("{}{path}", self.admin);
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let mut response = agent.get(&url).call().ok()?;
            let status = response.status().as_u16();
            Some((status, response.body_mut().read_to_string().ok()?))
        })
        .await
        .expect("join")
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let answer = self.try_get(path).await;
        answer
            .unwrap_or_else(|| panic!("the admin server at {} does not answer {path}", self.admin))
    }

    async fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("json")
    }
}

impl Running {
    async fn until_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.get("/readyz").await;
            if status == 200 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never ready: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(20), self.task).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "clean stop: {ended:?}");
        self.emulator.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_what_is_not_ready_then_turns_ready() {
    let Some(brokers) = brokers() else { return };
    let emulator = EmulatorConfig::default().users(200).change_rate(50.0);
    let running = start(&brokers, emulator).await;
    // Keep the token endpoint failing for a while: nothing can be ready without a token.
    running.emulator.login_error_burst(4, 503).expect("fault");
    let (status, body) = running.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).expect("json");
    let parts: Vec<&str> = body["notReady"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["part"].as_str())
        .collect();
    assert!(
        parts.contains(&"genesys-token") || parts.contains(&"channels"),
        "{body}"
    );
    let (status, _) = running.get("/healthz").await;
    assert_eq!(status, 200, "alive while not ready");
    running.until_ready().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_the_query_api() {
    let Some(brokers) = brokers() else { return };
    let running = start(
        &brokers,
        EmulatorConfig::default().users(300).change_rate(100.0),
    )
    .await;
    running.until_ready().await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (status, metrics) = running.get("/metrics").await;
    assert_eq!(status, 200);
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("readme");
    for name in [
        "events_received_total{source=\"stream\"}",
        "decode_errors_total{kind=\"json\"}",
        "filtered_out_total",
        "registry_users",
        "users_by_status{status=",
        "changes_total",
        "kafka_delivered_total",
        "kafka_coalesced_total",
        "kafka_delivery_failures_total",
        "kafka_delivery_latency_seconds_bucket",
        "kafka_queue_depth",
        "reconnects_total{cause=\"heartbeat_timeout\"}",
        "resync_last_duration_seconds",
        "channels ",
        "genesys_token_refreshes_total",
        "genesys_rate_limited_total",
    ] {
        assert!(
            metrics.contains(&format!("presence_bridge_{name}")),
            "{name} missing from /metrics"
        );
    }
    // Every metric exported is documented.
    for line in metrics.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line
            .split_whitespace()
            .nth(2)
            .expect("name")
            .trim_start_matches("presence_bridge_");
        assert!(readme.contains(name), "metric {name} is not in the README");
    }
    assert!(metrics.trim_end().ends_with("# EOF"));
    // The latency histogram is a proper Prometheus histogram: cumulative buckets that end at
    // the count.
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics"))
    };
    let count = sample("presence_bridge_kafka_delivery_latency_seconds_count");
    let inf = sample("presence_bridge_kafka_delivery_latency_seconds_bucket{le=\"+Inf\"}");
    assert!(count > 0.0);
    assert_eq!(inf, count, "the +Inf bucket holds every observation once");
    let buckets: Vec<f64> = metrics
        .lines()
        .filter(|l| l.starts_with("presence_bridge_kafka_delivery_latency_seconds_bucket"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "cumulative: {buckets:?}"
    );

    let stats = running.json("/v1/stats").await;
    assert_eq!(stats["users"], json!(300));
    assert_eq!(stats["kafka"]["healthy"], json!(true));
    let truth = running.emulator.truth();
    let (status, body) = running
        .get(&format!("/v1/presence/{}", truth[0].user_id))
        .await;
    assert_eq!(status, 200, "{body}");
    let one: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(one["userId"], json!(truth[0].user_id));
    let (status, _) = running
        .get("/v1/presence/00000000-0000-0000-0000-000000000000")
        .await;
    assert_eq!(status, 404);
    let (status, body) = running.get("/v1/presence/not-an-id").await;
    assert_eq!(status, 400, "{body}");
    let page = running
        .json("/v1/presence?status=On%20Queue&pageSize=10")
        .await;
    let entities = page["entities"].as_array().expect("entities");
    assert!(entities.len() <= 10);
    assert!(
        entities.iter().all(|e| e["status"] == json!("On Queue")),
        "{page}"
    );
    let (status, _) = running.get("/v1/presence?status=Sleeping").await;
    assert_eq!(status, 400);
    running.stop().await;
}

/// Chromium driven over the DevTools protocol.
struct Browser {
    child: std::process::Child,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    session: Option<String>,
    _profile: TempDir,
}

impl Browser {
    fn binary() -> Option<String> {
        ["chromium", "chromium-browser", "google-chrome"]
            .into_iter()
            .find_map(|name| {
                std::process::Command::new("which")
                    .arg(name)
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            })
    }

    async fn launch(binary: &str) -> Browser {
        use std::io::BufRead;
        let profile = std::env::temp_dir().join(format!("pb-chromium-{}", fastrand_suffix()));
        let mut child = std::process::Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("chromium starts");
        let stderr = child.stderr.take().expect("stderr");
        let url = tokio::task::spawn_blocking(move || {
            let mut lines = std::io::BufReader::new(stderr).lines();
            let url = lines.by_ref().map_while(Result::ok).find_map(|l| {
                l.split_once("DevTools listening on ")
                    .map(|(_, u)| u.trim().to_string())
            });
            // Keep draining so Chromium never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            url
        })
        .await
        .expect("join")
        .expect("DevTools URL");
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("DevTools socket");
        Browser {
            child,
            ws,
            next_id: 0,
            session: None,
            _profile: TempDir(profile),
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            request["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(request.to_string()))
            .await
            .expect("send");
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("DevTools answers")
                .expect("open")
                .expect("message");
            let Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(text.as_str()).expect("json");
            if value["id"] == json!(id) {
                assert!(value.get("error").is_none(), "{method}: {value}");
                return value["result"].clone();
            }
        }
    }

    async fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({"url": url})).await;
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        self.session = attached["sessionId"].as_str().map(str::to_owned);
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        result["result"]["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_data_in_chromium() {
    let Some(brokers) = brokers() else { return };
    let Some(chromium) = Browser::binary() else {
        assert!(
            !in_ci(),
            "CI is set but Chromium is not installed (.ci/run installs it)"
        );
        eprintln!("skipping: no Chromium (apt-get install chromium)");
        return;
    };
    let running = start(
        &brokers,
        EmulatorConfig::default().users(400).change_rate(200.0),
    )
    .await;
    running.until_ready().await;
    let mut browser = Browser::launch(&chromium).await;
    browser.open(&format!("{}/", running.admin)).await;

    // Live data arrives: the connection badge goes live and the table fills.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = browser
            .eval("JSON.stringify({conn: document.getElementById('conn')?.textContent, rows: document.querySelectorAll('#users tr').length, rate: document.getElementById('event-rate')?.textContent})")
            .await;
        let seen: Value = seen
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        if seen["conn"] == json!("live")
            && seen["rows"].as_u64().unwrap_or(0) > 0
            && seen["rate"] != json!("–")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dashboard never showed live data: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Freeze the numbers, then compare what the page shows with /v1/stats.
    running.emulator.quiesce().await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let stats = running.json("/v1/stats").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let shown = browser
            .eval(
                "JSON.stringify({total: document.getElementById('users-total').textContent, \
                 byStatus: Object.fromEntries([...document.querySelectorAll('#by-status .row')].map(r => [r.children[0].textContent, r.children[1].textContent])), \
                 channels: document.querySelectorAll('#channels tr').length, \
                 kafka: document.getElementById('kafka-state').textContent})",
            )
            .await;
        let shown: Value = shown
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let number = |v: &Value| {
            v.as_str()
                .map(|s| s.replace(',', ""))
                .and_then(|s| s.parse::<u64>().ok())
        };
        let total_ok = number(&shown["total"]) == stats["users"].as_u64();
        let statuses = stats["byStatus"].as_object().expect("byStatus");
        let status_ok = statuses
            .iter()
            .all(|(name, n)| number(&shown["byStatus"][name]) == n.as_u64())
            && shown["byStatus"]
                .as_object()
                .is_some_and(|o| o.len() == statuses.len());
        let channels_ok =
            shown["channels"].as_u64() == stats["channels"].as_array().map(|c| c.len() as u64);
        if total_ok && status_ok && channels_ok && shown["kafka"] == json!("connected") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "page shows {shown}, /v1/stats says {stats}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The search box filters the live table.
    let user = running.emulator.truth()[0].user_id.clone();
    let rows = browser
        .eval(&format!(
            "(() => {{ const s = document.getElementById('search'); s.value = '{user}'; s.dispatchEvent(new Event('input')); \
             return [...document.querySelectorAll('#users tr')].map(r => r.children[0].textContent); }})()"
        ))
        .await;
    assert_eq!(rows, json!([user]), "search finds exactly that user");
    drop(browser);
    running.stop().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_its_dashboard_and_sigterm_exits_0() {
    use std::io::BufRead;
    let Some(brokers) = brokers() else { return };
    let log = std::env::temp_dir().join(format!("pb-demo-{}.log", fastrand_suffix()));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_presence-bridge"))
        .args([
            "demo",
            "--admin-addr",
            "127.0.0.1:0",
            "--users",
            "100",
            "--rate",
            "20",
        ])
        .args(["--topic", &format!("demo-test-{}", fastrand_suffix())])
        .env("KAFKA_BROKERS", &brokers)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let dashboard = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let found = lines.by_ref().map_while(Result::ok).find_map(|l| {
            l.trim()
                .strip_prefix("dashboard:")
                .map(|u| u.trim().trim_end_matches('/').to_string())
        });
        // Keep reading, as a terminal would, so the demo never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        found
    })
    .await
    .expect("join")
    .expect("the dashboard URL is printed");
    let probe = Running::probe(&dashboard);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!(
                "demo exited early ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if probe
            .try_get("/readyz")
            .await
            .is_some_and(|(status, _)| status == 200)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "demo never ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = probe.json("/v1/stats").await;
    assert_eq!(stats["users"], json!(100));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "demo did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert_eq!(status.code(), Some(0), "clean shutdown exits 0: {output}");
    assert!(output.contains("stopped cleanly"), "{output}");
}
