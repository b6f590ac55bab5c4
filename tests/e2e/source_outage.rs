//! Issue 15, item 5: when Genesys cannot be reached for longer than the TTL, nobody is
//! deleted. The bridge talks to the emulator's REST API through a proxy that the test cuts
//! (every connection dropped, every new one refused) while the emulator drops every socket:
//! the bridge reconnects its sockets but cannot resync, so its source is not healthy. Before
//! the fix every user expired after the TTL and was tombstoned although nobody had left.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use genesys_emulator::{EmulatorConfig, FaultTarget};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::common::{self, Bridge, TopicReader};

const USERS: usize = 30;

/// A TCP forwarder on loopback that can be cut (all connections dropped, new ones closed at
/// once) and restored.
struct CutProxy {
    url: String,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl CutProxy {
    async fn start(target: std::net::SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let cut = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let accept = {
            let (cut, connections) = (Arc::clone(&cut), Arc::clone(&connections));
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropped: closed at once
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    lock(&connections).push(task.abort_handle());
                }
            })
            .abort_handle()
        };
        CutProxy {
            url,
            cut,
            connections,
            accept,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for connection in lock(&self.connections).drain(..) {
            connection.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_source_deletes_nobody() {
    let Some(kafka) = common::kafka().await else {
        return;
    };
    let emulator = EmulatorConfig::default()
        .users(USERS as u32)
        .change_rate(0.0)
        .seed(47);
    let proxy: Arc<Mutex<Option<CutProxy>>> = Arc::default();
    let mut bridge = Bridge::start(&kafka, emulator, "source-outage", |args, emulator| {
        let cut = futures_lite_block_on(CutProxy::start(emulator.addr()));
        args.api_url = Some(cut.url.clone());
        args.login_url = Some(cut.url.clone());
        args.ttl = Some("3s".into());
        args.resync_interval = Some("1s".into());
        *lock(&proxy) = Some(cut);
    })
    .await;
    let mut reader = TopicReader::open(&kafka.endpoint, &bridge.topic).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while reader.last_value.len() < USERS {
        assert!(
            Instant::now() < deadline,
            "{} users on the topic",
            reader.last_value.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        reader.read_to_end().await;
    }

    // Genesys goes away for three TTLs: REST unreachable, every socket dropped.
    lock(&proxy).as_ref().expect("the proxy").cut();
    let dropped = bridge
        .emulator
        .drop_sockets(FaultTarget::All)
        .expect("drop sockets");
    assert!(dropped > 0, "the bridge's sockets were dropped");
    let outage = Instant::now();
    let mut saw_not_ready = false;
    let mut saw_expiry_held = false;
    while outage.elapsed() < Duration::from_secs(8) {
        bridge.assert_running().await;
        if let Ok((503, body)) = bridge.admin_json("/readyz").await {
            saw_not_ready = true;
            let parts = body["notReady"].as_array().cloned().unwrap_or_default();
            saw_expiry_held |= parts.iter().any(|p| p["part"] == "expiry");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        saw_not_ready,
        "the source was not healthy during the outage"
    );
    assert!(saw_expiry_held, "/readyz says that expiry is held back");
    let (_, metrics) = bridge.admin_get("/metrics").await.expect("metrics");
    let held_back = metrics
        .lines()
        .find_map(|l| l.strip_prefix("presence_bridge_expiry_held_back_users "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(
        held_back,
        Some(USERS as f64),
        "every user is past the TTL but kept"
    );
    reader.read_to_end().await;
    assert!(
        reader.tombstones.is_empty(),
        "{} users tombstoned during a source outage; bridge {}",
        reader.tombstones.len(),
        bridge.stats().await
    );

    // Back: the bridge reconnects and resyncs; still nobody is deleted.
    lock(&proxy).as_ref().expect("the proxy").restore();
    bridge.ready().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    bridge.assert_running().await;
    reader.read_to_end().await;
    reader.assert_no_problems();
    assert!(
        reader.tombstones.is_empty(),
        "{} users tombstoned after the outage; bridge {}",
        reader.tombstones.len(),
        bridge.stats().await
    );
    assert_eq!(reader.last_value.len(), USERS);
    bridge.stop().await;
}

/// Runs a future to completion on the current runtime from a synchronous closure.
fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
