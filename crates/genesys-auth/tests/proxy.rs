//! genesys-auth behind a corporate proxy, over real loopback sockets: requests go through the
//! CONNECT proxy that `HTTPS_PROXY`/`HTTP_PROXY` name, `NO_PROXY` hosts go direct, over TLS the
//! proxy never sees the credentials or the token, and TLS trusts the operating system's store
//! when asked (a TLS-inspecting proxy's CA is installed there).

mod support;

use std::time::Duration;

use genesys_auth::{
    AuthConfig, Endpoints, Error, GenesysClient, ProxySettings, SecretString, TlsRoots,
};
use genesys_emulator::EmulatorHandle;
use support::proxy::{ConnectProxy, TestPki, TlsTerminator, emulator, env};

fn config(base: &str, emulator: &EmulatorHandle, proxy: ProxySettings) -> AuthConfig {
    AuthConfig::new(
        Endpoints::new(base, base).expect("endpoints"),
        emulator.client_id(),
        SecretString::from(emulator.client_secret()),
    )
    .backoff(Duration::from_millis(10), Duration::from_millis(50))
    .proxy(proxy)
}

async fn list_users(client: &GenesysClient) -> Result<serde_json::Value, Error> {
    client.get_json("/api/v2/users?pageSize=2").await
}

#[tokio::test]
async fn over_tls_the_proxy_tunnels_and_never_sees_a_secret() {
    let emulator = emulator(5, 0.0).await;
    let pki = TestPki::new();
    let tls = TlsTerminator::start(&pki, emulator.addr()).await;
    let proxy = ConnectProxy::start().await;
    let client = GenesysClient::new(
        config(
            &tls.https_url(),
            &emulator,
            env(&[("HTTPS_PROXY", proxy.url())]),
        )
        .tls_roots(TlsRoots::bundled().add_der(pki.ca_der.clone())),
    )
    .expect("client");

    let users = list_users(&client).await.expect("users through the proxy");
    assert_eq!(users["entities"].as_array().map(Vec::len), Some(2));
    let token = client.token().await.expect("token").bearer();

    let token_value = token.trim_start_matches("Bearer ");
    proxy.seen.lock().assert_only_tls_to(
        tls.addr,
        &[
            token_value,
            emulator.client_secret(),
            "Authorization",
            "Bearer",
            "/api/v2/users",
            "/oauth/token",
            "client_credentials",
        ],
    );
}

#[tokio::test]
async fn plain_http_goes_through_http_proxy_where_the_proxy_can_read_it() {
    // The control for the test above: the recorder does see a token when one passes in clear.
    let emulator = emulator(5, 0.0).await;
    let proxy = ConnectProxy::start().await;
    let client = GenesysClient::new(config(
        &emulator.base_url(),
        &emulator,
        env(&[("http_proxy", proxy.url())]),
    ))
    .expect("client");
    list_users(&client).await.expect("users through the proxy");
    let token = client.token().await.expect("token").bearer();
    let seen = proxy.seen.lock();
    assert!(seen.connected_to(emulator.addr()), "{:?}", seen.connects);
    assert!(seen.tunnelled_contains(&token), "the recorder works");
}

#[tokio::test]
async fn no_proxy_hosts_go_direct() {
    let emulator = emulator(5, 0.0).await;
    let proxy = ConnectProxy::start().await;
    for no_proxy in [
        ("NO_PROXY", "example.com, 127.0.0.1"),
        ("no_proxy", "127.0.0.0/8"),
    ] {
        let client = GenesysClient::new(config(
            &emulator.base_url(),
            &emulator,
            env(&[
                ("HTTP_PROXY", proxy.url()),
                ("HTTPS_PROXY", proxy.url()),
                (no_proxy.0, no_proxy.1.to_owned()),
            ]),
        ))
        .expect("client");
        list_users(&client).await.expect("users, direct");
    }
    let seen = proxy.seen.lock();
    assert!(seen.connects.is_empty(), "{:?}", seen.connects);
    assert!(seen.tunnelled.is_empty());
}

#[tokio::test]
async fn proxy_credentials_go_to_the_proxy_only() {
    let emulator = emulator(5, 0.0).await;
    let proxy = ConnectProxy::requiring("Basic dXNlcjpwQHNz").await; // user:p@ss
    let url = format!("http://user:p%40ss@{}", proxy.addr);
    let client = GenesysClient::new(config(
        &emulator.base_url(),
        &emulator,
        env(&[("HTTP_PROXY", url)]),
    ))
    .expect("client");
    list_users(&client).await.expect("users through the proxy");
    let seen = proxy.seen.lock();
    assert!(!seen.connects.is_empty());
    assert!(!seen.tunnelled_contains("dXNlcjpwQHNz"));
    assert!(!seen.tunnelled_contains("p@ss"));
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_refused() {
    let emulator = emulator(5, 0.0).await;
    let pki = TestPki::new();
    let tls = TlsTerminator::start(&pki, emulator.addr()).await;
    let client = GenesysClient::new(
        config(&tls.https_url(), &emulator, ProxySettings::none()).max_attempts(1),
    )
    .expect("client");
    let err = list_users(&client)
        .await
        .expect_err("untrusted certificate");
    let Error::RetriesExhausted { last, .. } = &err else {
        panic!("not a transport failure: {err}");
    };
    assert!(matches!(**last, Error::Transport { .. }), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[test]
fn unusable_proxy_variables_fail_at_start_naming_the_variable() {
    let base = "http://127.0.0.1:1";
    let config = AuthConfig::new(
        Endpoints::new(base, base).expect("endpoints"),
        "id",
        SecretString::from("secret"),
    )
    .proxy(env(&[(
        "HTTPS_PROXY",
        "socks5://127.0.0.1:1080".to_owned(),
    )]));
    let err = GenesysClient::new(config).expect_err("refused");
    assert!(err.to_string().contains("HTTPS_PROXY"), "{err}");
}

/// Runs in a child process (see [`native_roots_trust_the_operating_system_store`]), whose
/// `SSL_CERT_FILE` names the test CA: that file is the operating system's store for
/// rustls-native-certs.
#[tokio::test]
#[ignore = "run by native_roots_trust_the_operating_system_store in a child process"]
async fn native_roots_child() {
    let Ok(target) = std::env::var("PROXY_TEST_TLS_URL") else {
        return;
    };
    let id = std::env::var("PROXY_TEST_CLIENT_ID").expect("client id");
    let secret = std::env::var("PROXY_TEST_CLIENT_SECRET").expect("client secret");
    let config = |roots: TlsRoots| {
        AuthConfig::new(
            Endpoints::new(&target, &target).expect("endpoints"),
            id.clone(),
            SecretString::from(secret.clone()),
        )
        .max_attempts(1)
        .proxy(ProxySettings::from_env())
        .tls_roots(roots)
    };
    let bundled = GenesysClient::new(config(TlsRoots::bundled())).expect("client");
    assert!(
        bundled.token().await.is_err(),
        "the bundled roots alone do not trust the test CA"
    );
    let native = GenesysClient::new(config(TlsRoots::bundled().native(true))).expect("client");
    native
        .token()
        .await
        .expect("the operating system's store trusts the test CA");
}

#[tokio::test]
async fn native_roots_trust_the_operating_system_store() {
    let emulator = emulator(5, 0.0).await;
    let pki = TestPki::new();
    let tls = TlsTerminator::start(&pki, emulator.addr()).await;
    let proxy = ConnectProxy::start().await;
    let dir = std::env::temp_dir().join(format!("genesys-auth-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).expect("write CA");

    let child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "native_roots_child", "--nocapture"])
        .env("SSL_CERT_FILE", &ca_file)
        .env_remove("SSL_CERT_DIR")
        .env("HTTPS_PROXY", proxy.url())
        .env_remove("https_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env("PROXY_TEST_TLS_URL", tls.https_url())
        .env("PROXY_TEST_CLIENT_ID", emulator.client_id())
        .env("PROXY_TEST_CLIENT_SECRET", emulator.client_secret())
        .output()
        .await
        .expect("child runs");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&child.stderr)
    );
    // The child went through the proxy (from its environment), and the proxy saw no secret.
    let seen = proxy.seen.lock();
    assert!(!seen.connects.is_empty(), "the child used HTTPS_PROXY");
    assert!(!seen.tunnelled_contains(emulator.client_secret()));
    assert!(!seen.tunnelled_contains("client_credentials"));
}
