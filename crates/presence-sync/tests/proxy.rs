//! presence-sync's WebSockets behind a corporate proxy, over real loopback sockets: a `wss://`
//! socket is tunnelled with `CONNECT` and the proxy never sees the token, `ws://` channel
//! sockets go through `HTTP_PROXY`, `NO_PROXY` hosts go direct, proxy credentials go to the
//! proxy alone, and TLS trusts only the roots configured.

#[path = "../../genesys-auth/tests/support/proxy.rs"]
mod support;

use std::time::Duration;

use genesys_auth::{AuthConfig, Endpoints, GenesysClient, ProxySettings, SecretString, TlsRoots};
use genesys_emulator::EmulatorHandle;
use presence_frame::PresenceEvent;
use presence_sync::{PresenceSync, RelaySource, SyncConfig, SyncStatus};
use support::{ConnectProxy, TestPki, TlsTerminator, emulator, env};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The REST client, direct: these tests are about the sockets.
fn client(emulator: &EmulatorHandle) -> GenesysClient {
    let base = emulator.base_url();
    GenesysClient::new(
        AuthConfig::new(
            Endpoints::new(&base, &base).expect("endpoints"),
            emulator.client_id(),
            SecretString::from(emulator.client_secret()),
        )
        .proxy(ProxySettings::none()),
    )
    .expect("client")
}

fn sync_config(proxy: ProxySettings, roots: TlsRoots) -> SyncConfig {
    SyncConfig::default()
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(5))
        .proxy(proxy)
        .tls_roots(roots)
}

fn discard(events: &mut Vec<PresenceEvent>) {
    events.clear();
}

/// Whether the source became ready within `limit`.
async fn ready_within(status: &SyncStatus, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if status.is_ready() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The emulator's relay behind TLS: `wss://127.0.0.1:port/relay...`.
fn wss_relay_url(emulator: &EmulatorHandle, tls: &TlsTerminator) -> String {
    let relay = emulator.relay_url();
    let path = relay
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|at| rest[at..].to_owned()))
        .expect("relay path");
    format!("wss://{}{path}", tls.addr)
}

/// Runs a relay source on `url` until ready or `limit`; returns whether it got ready.
async fn run_relay(url: &str, client: GenesysClient, config: SyncConfig, limit: Duration) -> bool {
    let relay = RelaySource::new(url, client, config, discard).expect("relay");
    let status = relay.status();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    let ready = ready_within(&status, limit).await;
    shutdown.cancel();
    let _ = task.await;
    ready
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_is_tunnelled_and_the_proxy_never_sees_the_token() {
    let emulator = emulator(20, 20.0).await;
    let pki = TestPki::new();
    let tls = TlsTerminator::start(&pki, emulator.addr()).await;
    let proxy = ConnectProxy::start().await;
    let client = client(&emulator);
    let config = sync_config(
        env(&[("HTTPS_PROXY", proxy.url())]),
        TlsRoots::bundled().add_der(pki.ca_der.clone()),
    );
    let url = wss_relay_url(&emulator, &tls);
    assert!(
        run_relay(&url, client.clone(), config, Duration::from_secs(10)).await,
        "the relay connected through the proxy"
    );
    let token = client.token().await.expect("token").bearer();

    proxy.seen.lock().assert_only_tls_to(
        tls.addr,
        &[
            token.trim_start_matches("Bearer "),
            "Authorization",
            "Bearer",
            "Upgrade",
            "/relay",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_sockets_on_ws_go_through_http_proxy() {
    // Also the control for the test above: over plain ws:// the recorder sees the handshake.
    let emulator = emulator(20, 20.0).await;
    let proxy = ConnectProxy::start().await;
    let config = sync_config(env(&[("http_proxy", proxy.url())]), TlsRoots::bundled());
    let sync = PresenceSync::new(client(&emulator), config, discard).expect("sync");
    let status = sync.status();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sync.run(shutdown.clone()));
    let ready = ready_within(&status, Duration::from_secs(20)).await;
    shutdown.cancel();
    let _ = task.await;
    assert!(ready, "channels connected through the proxy");
    let seen = proxy.seen.lock();
    assert!(seen.connected_to(emulator.addr()), "{:?}", seen.connects);
    assert!(
        seen.tunnelled_contains("GET /channels/"),
        "the recorder works"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_hosts_connect_direct() {
    let emulator = emulator(20, 20.0).await;
    let pki = TestPki::new();
    let tls = TlsTerminator::start(&pki, emulator.addr()).await;
    let proxy = ConnectProxy::start().await;
    let config = sync_config(
        env(&[
            ("HTTPS_PROXY", proxy.url()),
            ("NO_PROXY", "localhost,127.0.0.1".to_owned()),
        ]),
        TlsRoots::bundled().add_der(pki.ca_der.clone()),
    );
    let url = wss_relay_url(&emulator, &tls);
    assert!(run_relay(&url, client(&emulator), config, Duration::from_secs(10)).await);
    let seen = proxy.seen.lock();
    assert!(seen.connects.is_empty(), "{:?}", seen.connects);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_credentials_are_sent_to_the_proxy_and_a_refusal_is_retried() {
    let emulator = emulator(20, 20.0).await;
    let pki = TestPki::new();
    let tls = TlsTerminator::start(&pki, emulator.addr()).await;
    let proxy = ConnectProxy::requiring("Basic dXNlcjpwQHNz").await; // user:p@ss
    let roots = TlsRoots::bundled().add_der(pki.ca_der.clone());
    let url = wss_relay_url(&emulator, &tls);

    let without = sync_config(env(&[("HTTPS_PROXY", proxy.url())]), roots.clone());
    assert!(
        !run_relay(&url, client(&emulator), without, Duration::from_millis(500)).await,
        "407 without credentials"
    );
    let refused = proxy.seen.lock().connects.len();
    assert!(refused >= 2, "a refused CONNECT is retried: {refused}");

    let with_credentials = format!("http://user:p%40ss@{}", proxy.addr);
    let with = sync_config(env(&[("HTTPS_PROXY", with_credentials)]), roots);
    assert!(run_relay(&url, client(&emulator), with, Duration::from_secs(10)).await);
    let seen = proxy.seen.lock();
    assert_eq!(
        seen.authorizations.last().cloned().flatten().as_deref(),
        Some("Basic dXNlcjpwQHNz")
    );
    assert!(!seen.tunnelled_contains("dXNlcjpwQHNz"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused() {
    let emulator = emulator(20, 20.0).await;
    let pki = TestPki::new();
    let tls = TlsTerminator::start(&pki, emulator.addr()).await;
    let proxy = ConnectProxy::start().await;
    let config = sync_config(env(&[("HTTPS_PROXY", proxy.url())]), TlsRoots::bundled());
    let url = wss_relay_url(&emulator, &tls);
    assert!(!run_relay(&url, client(&emulator), config, Duration::from_millis(500)).await);
    assert!(
        !proxy.seen.lock().connects.is_empty(),
        "it reached the server, whose certificate was refused"
    );
}

#[test]
fn an_unusable_proxy_variable_fails_at_start() {
    let config = SyncConfig::default().proxy(env(&[("https_proxy", "https://p:1".to_owned())]));
    let err = config.validate().expect_err("refused");
    assert!(err.to_string().contains("https_proxy"), "{err}");
}
