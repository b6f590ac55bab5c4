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
    start_with(brokers, emulator, false).await
}

/// Like [`start`]; with `group_bits`, the emulator's groups map to mask bits as in the demo.
async fn start_with(brokers: &str, emulator: EmulatorConfig, group_bits: bool) -> Running {
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
        group_bits: group_bits.then(|| presence_bridge::commands::group_bits_of(&emulator)),
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
    /// DevTools events (messages with a `method`) received so far, in order.
    events: Vec<Value>,
    _profile: TempDir,
}

impl Browser {
    /// The Chromium to drive; without one the test is skipped, except under `CI`, where
    /// it fails (`.ci/run` installs Chromium).
    fn binary_or_skip() -> Option<String> {
        let binary = Browser::binary();
        if binary.is_none() {
            assert!(
                !in_ci(),
                "CI is set but Chromium is not installed (.ci/run installs it)"
            );
            eprintln!("skipping: no Chromium (apt-get install chromium)");
        }
        binary
    }

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
            events: Vec::new(),
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
            if value.get("method").is_some() {
                self.events.push(value);
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

    /// Opens `url` in a new tab of `width` x `height` CSS pixels, with the network log on
    /// from before the first request.
    async fn open_watching(&mut self, url: &str, width: u32, height: u32) {
        self.open("about:blank").await;
        self.call("Network.enable", json!({})).await;
        self.call("Page.enable", json!({})).await;
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        self.call("Page.navigate", json!({"url": url})).await;
    }

    /// Every URL the page requested so far (`Network.requestWillBeSent`).
    async fn requested_urls(&mut self) -> Vec<String> {
        // A round trip: every event sent before its answer is in `events` after it.
        self.eval("1").await;
        self.events
            .iter()
            .filter(|e| e["method"] == json!("Network.requestWillBeSent"))
            .filter_map(|e| e["params"]["request"]["url"].as_str().map(str::to_owned))
            .collect()
    }

    /// The viewport as a PNG.
    async fn screenshot(&mut self) -> Vec<u8> {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        base64_decode(shot["data"].as_str().expect("screenshot data"))
    }

    /// Evaluates `expression` (which returns a JSON string) and parses it.
    async fn eval_json(&mut self, expression: &str) -> Value {
        let text = self.eval(expression).await;
        text.as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
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
    let Some(chromium) = Browser::binary_or_skip() else {
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
                 kafka: document.getElementById('kafka-state').textContent, \
                 partitions: document.getElementById('group-partitions').textContent})",
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
        // A lone instance owns every partition of the topic.
        let partitions = stats["group"]["partitions"].as_u64().unwrap_or(0);
        let partitions_ok = partitions > 0
            && shown["partitions"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("{partitions} of {partitions}")));
        if total_ok
            && status_ok
            && channels_ok
            && partitions_ok
            && shown["kafka"] == json!("connected")
        {
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

/// Standard base64 (DevTools screenshots), padding optional.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut bits = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            bits |= value(*c) << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// What the page's charts hold, read from uPlot's own data (`window.dashboard.charts`), and
/// how many pixels each chart painted in its plot area.
const CHART_DATA: &str = "JSON.stringify((() => { const c = window.dashboard.charts; \
     const painted = (u) => { const b = u.bbox; const px = u.ctx.getImageData(b.left, b.top, b.width, b.height).data; \
       let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++; return n; }; \
     return c.events && c.users && c.kafka && c.latency ? { \
       events: c.events.data, kafka: c.kafka.data, latency: c.latency.data, \
       usersTotal: c.users.data[1], usersX: c.users.data[0], \
       painted: [c.events, c.users, c.kafka, c.latency].map(painted) } : null; })())";

/// The history charts and the channel timeline in a real browser: the charts hold exactly
/// what `/v1/history` says, a socket the emulator drops shows on the timeline as a reconnect
/// of that channel, and the page asks nothing of any other origin (the browser's network
/// log). Ends with a screenshot of the dashboard: `docs/dashboard.png` with
/// `UPDATE_SCREENSHOT=1` (how the README's picture is made), else a temporary file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_charts_history_and_a_reconnect_in_chromium() {
    let Some(brokers) = brokers() else { return };
    let Some(chromium) = Browser::binary_or_skip() else {
        return;
    };
    // Three channels (1,000 users each at most), group bits as in the demo.
    let running = start_with(
        &brokers,
        EmulatorConfig::default().users(2_500).change_rate(150.0),
        true,
    )
    .await;
    running.until_ready().await;
    let mut browser = Browser::launch(&chromium).await;
    browser
        .open_watching(&format!("{}/", running.admin), 1440, 1120)
        .await;

    // The charts appear, built from the history the page loaded, and grow every second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let seen = browser
            .eval_json("JSON.stringify({samples: window.dashboard?.history()?.t.length || 0, charts: Object.keys(window.dashboard?.charts || {}).length, rows: document.querySelectorAll('#timeline rect').length})")
            .await;
        if seen["samples"].as_u64().unwrap_or(0) >= 6
            && seen["charts"] == json!(4)
            && seen["rows"].as_u64().unwrap_or(0) >= 3
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the history charts never filled: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Drop one channel's socket, and send some garbage for a fault marker.
    let stats = running.json("/v1/stats").await;
    let channel = stats["channels"][1]["channelId"]
        .as_str()
        .expect("channel 1 has an id")
        .to_owned();
    let dropped_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let dropped = running
        .emulator
        .drop_sockets(genesys_emulator::FaultTarget::Channel(channel.clone()))
        .expect("drop");
    assert_eq!(dropped, 1, "channel {channel} had one socket");
    running
        .emulator
        .send_garbage(genesys_emulator::FaultTarget::All)
        .expect("garbage");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let marks = loop {
        let marks = browser
            .eval_json("JSON.stringify([...document.querySelectorAll('#timeline line.reconnect')].map(l => ({channel: +l.dataset.channel, t: +l.dataset.t})))")
            .await;
        let shown = marks.as_array().is_some_and(|m| {
            m.iter().any(|mark| {
                mark["channel"] == json!(1) && mark["t"].as_u64().unwrap_or(0) >= dropped_at
            })
        });
        if shown {
            break marks;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reconnect of channel 1 never showed on the timeline: {marks}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        marks
            .as_array()
            .is_some_and(|m| m.iter().all(|mark| mark["channel"] == json!(1))),
        "only channel 1 reconnected: {marks}"
    );
    // And the channel is back to streaming on the timeline afterwards.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let last_state = browser
        .eval("[...document.querySelectorAll('#timeline rect[data-channel=\"1\"]')].pop()?.dataset.state")
        .await;
    assert_eq!(last_state, json!("streaming"));

    // Every point of every chart is the history's value at that time.
    let shown = browser.eval_json(CHART_DATA).await;
    let history = running.json("/v1/history").await;
    let times: Vec<u64> = history["t"]
        .as_array()
        .expect("t")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let column = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let at = |series: &Value, t: u64| -> Value {
        times
            .iter()
            .position(|x| *x == t)
            .map_or(Value::Null, |i| column(series)[i].clone())
    };
    let close = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) => (a - b).abs() < 1e-9,
        _ => a.is_null() && b.is_null(),
    };
    let chart_times: Vec<u64> = column(&shown["events"][0])
        .iter()
        .filter_map(Value::as_f64)
        .map(|s| (s * 1000.0).round() as u64)
        .collect();
    assert!(chart_times.len() >= 10, "few points: {shown}");
    assert!(
        chart_times.iter().all(|t| times.contains(t)),
        "chart times {chart_times:?} are not all in /v1/history {times:?}"
    );
    let users_total: Vec<Value> = (0..times.len())
        .map(|i| {
            json!(
                column(&history["usersByStatus"])
                    .iter()
                    .map(|s| column(&s["values"])[i].as_u64().unwrap_or(0))
                    .sum::<u64>() as f64
            )
        })
        .collect();
    let checks = [
        ("/events/1", "/eventsPerSecond/stream"),
        ("/events/2", "/eventsPerSecond/resync"),
        ("/events/3", "/eventsPerSecond/relay"),
        ("/kafka/1", "/kafka/deliveredPerSecond"),
        ("/kafka/2", "/kafka/queueDepth"),
        ("/latency/1", "/kafka/latencyP50Ms"),
        ("/latency/2", "/kafka/latencyP99Ms"),
    ]
    .map(|(chart, series)| {
        let pick = |v: &Value, at: &str| v.pointer(at).cloned().unwrap_or_default();
        (series, pick(&shown, chart), pick(&history, series))
    });
    let users = (
        "users total",
        shown["usersTotal"].clone(),
        Value::Array(users_total),
    );
    for (name, chart, series) in checks.into_iter().chain([users]) {
        let chart = column(&chart);
        assert_eq!(chart.len(), chart_times.len(), "{name}: one value per time");
        for (t, value) in chart_times.iter().zip(&chart) {
            let want = at(&series, *t);
            assert!(
                close(value, &want),
                "{name} at {t}: the chart shows {value}, /v1/history says {want}"
            );
        }
    }
    assert!(
        column(&history["eventsPerSecond"]["stream"])
            .iter()
            .any(|v| v.as_f64().unwrap_or(0.0) > 0.0),
        "events flowed: {history}"
    );
    assert!(
        column(&history["markers"]["reconnects"])
            .iter()
            .any(|v| v.as_u64().unwrap_or(0) > 0),
        "the reconnect is a marker too"
    );
    for (chart, painted) in ["events", "users", "kafka", "latency"]
        .iter()
        .zip(column(&shown["painted"]))
    {
        assert!(
            painted.as_u64().unwrap_or(0) > 200,
            "the {chart} chart painted {painted} pixels"
        );
    }

    // Nothing but the bridge itself was asked for anything.
    let urls = browser.requested_urls().await;
    let origin = format!("{}/", running.admin);
    assert!(
        urls.iter()
            .any(|u| u.starts_with(&origin) && u.contains("uPlot.iife.min.js")),
        "uPlot comes from the bridge: {urls:?}"
    );
    let foreign: Vec<&String> = urls
        .iter()
        .filter(|u| !(u.starts_with(&origin) || u.starts_with("data:") || u.starts_with("about:")))
        .collect();
    assert!(
        foreign.is_empty(),
        "requests to another origin: {foreign:?}"
    );

    // The picture for the README: a minute more of the same, with a maintenance rollover
    // (socket_closing) of channel 0 half way, so the charts show a trend.
    let update = std::env::var("UPDATE_SCREENSHOT").is_ok_and(|v| v == "1");
    if update {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let first = stats["channels"][0]["channelId"]
            .as_str()
            .expect("channel 0 has an id")
            .to_owned();
        running
            .emulator
            .socket_closing(
                genesys_emulator::FaultTarget::Channel(first),
                Duration::from_secs(2),
            )
            .expect("socket_closing");
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    let png = browser.screenshot().await;
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    let path = if update {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/dashboard.png"
        ))
    } else {
        std::env::temp_dir().join(format!("pb-dashboard-{}.png", fastrand_suffix()))
    };
    std::fs::write(&path, &png).expect("screenshot written");
    eprintln!("dashboard screenshot: {}", path.display());
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
    // The emulator's groups are mapped to mask bits: users show real masks, not 0x0.
    let page = probe.json("/v1/presence?pageSize=100").await;
    let masks: Vec<u64> = page["entities"]
        .as_array()
        .expect("entities")
        .iter()
        .filter_map(|e| e["groupMask"].as_u64())
        .collect();
    assert!(masks.iter().any(|m| *m != 0), "every mask is 0: {masks:?}");
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
