//! The real `presence-bridge run` as a subprocess, for the tests that need processes (the soak,
//! the scale-out tests): started with the flags a test gives, its admin address read from its
//! log, its log kept (the last lines in memory, all of it in a file if asked), stopped with a
//! signal, and killed when dropped, so that no test outcome, panic included, leaves it running.
//!
//! Include it with `#[path]` beside `topic.rs` (it uses `crate::topic::admin_get` and
//! `crate::topic::publisher_idle`).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines of a bridge's log kept for failure messages.
const LOG_TAIL: usize = 200;

/// The environment variables the bridge reads: removed from the child's environment, so that
/// only the flags a test gives configure it (`scripts/kafka.sh env` exports SASL and TLS
/// settings, for one).
const BRIDGE_VARIABLES: &[&str] = &[
    "PRESENCE_BRIDGE_CONFIG",
    "PRESENCE_TTL",
    "MAX_EVENT_SKEW",
    "MAX_MESSAGE_SIZE",
    "MAX_SOCKET_MESSAGE_SIZE",
    "RESYNC_INTERVAL",
    "DISCOVERY_INTERVAL",
    "ADMIN_ADDR",
    "ADMIN_MAX_EVENT_STREAMS",
    "HISTORY_WINDOW",
    "SHUTDOWN_GRACE",
    "TLS_NATIVE_ROOTS",
    "GROUP_BITS",
    "ALLOWED_GROUPS",
    "RELAY_URL",
    "MAX_CHANNELS",
    "GROUP_ID",
    "GROUP_PROTOCOL",
    "INSTANCE_ID",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "https_proxy",
    "http_proxy",
];

/// How to start one bridge.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The emulator's base URL (API and login).
    pub genesys_url: String,
    /// The OAuth client.
    pub client_id: String,
    /// Its secret (written to a file the process reads, removed with it).
    pub client_secret: String,
    /// Kafka's bootstrap servers.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// More flags, as given.
    pub args: Vec<String>,
    /// Where the whole log goes, if anywhere.
    pub log_file: Option<PathBuf>,
}

/// A running `presence-bridge run`.
pub struct BridgeProcess {
    child: Child,
    /// Its admin server.
    pub admin: SocketAddr,
    log: Arc<Mutex<VecDeque<String>>>,
    secret_file: PathBuf,
}

impl BridgeProcess {
    /// Starts the binary at `binary` as `launch` says and waits (at most 30 s) for it to log
    /// its admin address.
    pub fn spawn(binary: &Path, launch: &Launch) -> BridgeProcess {
        let secret_file = std::env::temp_dir().join(format!(
            "presence-bridge-test-{:016x}.secret",
            fastrand::u64(..)
        ));
        std::fs::write(&secret_file, &launch.client_secret).expect("write the secret file");
        let mut command = Command::new(binary);
        command.arg("run");
        for (name, _) in std::env::vars() {
            if BRIDGE_VARIABLES.contains(&name.as_str())
                || name.starts_with("KAFKA_")
                || name.starts_with("GENESYS_")
            {
                command.env_remove(name);
            }
        }
        let mut child = command
            .args(["--api-url", &launch.genesys_url])
            .args(["--login-url", &launch.genesys_url])
            .args(["--client-id", &launch.client_id])
            .arg("--client-secret-file")
            .arg(&secret_file)
            .args(["--kafka-brokers", &launch.brokers])
            .args(["--topic", &launch.topic])
            .args(["--admin-addr", "127.0.0.1:0"])
            .args(&launch.args)
            .env(
                "RUST_LOG",
                std::env::var("BRIDGE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start presence-bridge");
        let stderr = child.stderr.take().expect("the bridge's stderr");
        let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
        let (found, admin) = std::sync::mpsc::channel();
        let tail = Arc::clone(&log);
        let mut file = launch.log_file.as_ref().and_then(|path| {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            std::fs::File::create(path).ok()
        });
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = file.as_mut() {
                    use std::io::Write as _;
                    let _ = writeln!(f, "{line}");
                }
                if let Some(rest) = line.split("admin HTTP on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    if let (Some(tx), Ok(addr)) = (found.take(), addr.parse::<SocketAddr>()) {
                        let _ = tx.send(addr);
                    }
                }
                let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                if tail.len() == LOG_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        let mut bridge = BridgeProcess {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            secret_file,
        };
        match admin.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => bridge.admin = addr,
            Err(_) => panic!(
                "the bridge never logged its admin address within 30 s; it said:\n{}",
                bridge.tail()
            ),
        }
        bridge
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines it logged.
    pub fn tail(&self) -> String {
        let tail = self.log.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Fails the test, with its last log lines, if it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "the bridge exited on its own ({status}); it said:\n{}",
                self.tail()
            );
        }
    }

    /// A GET on its admin server: status and body.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        tokio::task::block_in_place(|| crate::topic::admin_get(self.admin, path))
    }

    /// `/v1/stats` (or the error as a JSON string).
    pub fn stats(&self) -> serde_json::Value {
        match self.get("/v1/stats") {
            Ok((_, body)) => serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
            Err(e) => serde_json::Value::String(e),
        }
    }

    /// `/metrics`.
    pub fn metrics(&self) -> Metrics {
        match self.get("/metrics") {
            Ok((200, text)) => Metrics(text),
            other => panic!("/metrics failed: {other:?}\n{}", self.tail()),
        }
    }

    /// Whether `/readyz` says ready.
    pub fn is_ready(&self) -> bool {
        matches!(self.get("/readyz"), Ok((200, _)))
    }

    /// Waits until `/readyz` says ready; returns how long that took.
    pub async fn ready(&mut self, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            self.assert_running();
            if self.is_ready() {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "the bridge was not ready within {limit:?}: {:?}\n{}",
                self.get("/readyz"),
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its resident memory, in MiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read the bridge's /proc status");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc status");
        kib / 1024.0
    }

    /// Sends `signal` (`INT`, `TERM`, `KILL`).
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status();
    }

    /// Waits (at most `limit`) for it to exit.
    pub async fn exited(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops it as a supervisor would (`signal`: `INT` or `TERM`) and checks that it exits
    /// cleanly within 30 s.
    pub async fn stop_with(mut self, signal: &str) {
        self.signal(signal);
        match self.exited(Duration::from_secs(30)).await {
            Some(status) => assert!(
                status.success(),
                "the bridge exited with {status}:\n{}",
                self.tail()
            ),
            None => panic!(
                "the bridge did not stop within 30 s of SIG{signal}:\n{}",
                self.tail()
            ),
        }
    }

    /// Stops it as Ctrl-C would and checks that it exits cleanly.
    pub async fn stop(self) {
        self.stop_with("INT").await;
    }

    /// Kills it (SIGKILL) and waits for it to be gone.
    pub async fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.secret_file);
    }
}

/// `/metrics` as Prometheus text.
pub struct Metrics(pub String);

impl Metrics {
    /// `presence_bridge_{name}` (or `..._total`, as counters are exposed), summed over its
    /// labels; `None` when the bridge does not export it.
    pub fn get(&self, name: &str) -> Option<f64> {
        let full = format!("presence_bridge_{name}");
        let total = format!("{full}_total");
        let mut found = None;
        for line in self.0.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let metric = series.split('{').next().unwrap_or(series);
            if (metric == full || metric == total)
                && let Ok(v) = value.trim().parse::<f64>()
            {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    /// Whether the publisher has nothing queued and nothing unacknowledged.
    pub fn publisher_idle(&self) -> bool {
        crate::topic::publisher_idle(&self.0)
    }
}
