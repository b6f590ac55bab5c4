//! Input that must not hurt the client, over real loopback HTTP: a token response with an
//! absurd `expires_in`, and URLs (a page's `nextUri`) that point away from the API's origin.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use genesys_auth::{AuthConfig, Endpoints, GenesysClient, Method, SecretString};
use genesys_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// A one-trick HTTP server on loopback: answers every request with `status` and `body`
/// (`Connection: close`) and keeps the head of every request it got.
struct FixedServer {
    base: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl FixedServer {
    async fn start(status: u16, body: &'static str) -> FixedServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    log.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        FixedServer { base, seen }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

async fn emulator() -> EmulatorHandle {
    Emulator::start(
        EmulatorConfig::default().users(3).change_rate(0.0),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("emulator starts")
}

fn client(api: &str, login: &str, id: &str, secret: &str) -> GenesysClient {
    let config = AuthConfig::new(
        Endpoints::new(api, login).expect("endpoints"),
        id,
        SecretString::from(secret),
    )
    .max_attempts(2)
    .backoff(Duration::from_millis(1), Duration::from_millis(5));
    GenesysClient::new(config).expect("client")
}

/// `expires_in` is `u64::MAX` seconds: the token is taken, with a lifetime saturated at
/// Genesys's documented maximum (48 hours), and nothing panics.
#[tokio::test]
async fn a_huge_expires_in_saturates_instead_of_panicking() {
    let login = FixedServer::start(
        200,
        r#"{"access_token":"tok-huge-lifetime","token_type":"bearer","expires_in":18446744073709551615}"#,
    )
    .await;
    let client = client(&login.base, &login.base, "id", "secret");
    let before = Instant::now();
    let token = tokio::spawn(async move { client.token().await })
        .await
        .expect("token() must not panic on a huge expires_in")
        .expect("a token");
    let lifetime = token.expires_at().saturating_duration_since(before);
    assert!(
        lifetime <= Duration::from_secs(172_800) + Duration::from_secs(5),
        "lifetime saturated at 48 h, got {lifetime:?}"
    );
    assert!(lifetime >= Duration::from_secs(172_800) - Duration::from_secs(5));
    assert_eq!(login.requests().len(), 1);
}

/// An absolute URL on another origin (what a hostile or confused `nextUri` could carry) is
/// refused before anything is sent: the error names the origin and never holds the token.
#[tokio::test]
async fn an_absolute_url_on_another_origin_is_refused_without_the_token() {
    let emulator = emulator().await;
    let elsewhere = FixedServer::start(200, r#"{"entities":[]}"#).await;
    let base = emulator.base_url();
    let client = client(&base, &base, emulator.client_id(), emulator.client_secret());
    let token = client.token().await.expect("token");
    let raw = token.bearer().trim_start_matches("Bearer ").to_owned();

    for url in [
        format!("{}/api/v2/users?pageNumber=2", elsewhere.base),
        // The same host on another port, another scheme, and a userinfo trick.
        format!(
            "https://{}/api/v2/users",
            base.trim_start_matches("http://")
        ),
        format!(
            "http://{}@{}/api/v2/users",
            base.trim_start_matches("http://"),
            elsewhere.base.trim_start_matches("http://")
        ),
    ] {
        let err = client
            .request(Method::Get, &url, None)
            .await
            .expect_err("another origin is refused");
        let text = format!("{err} {err:?}");
        assert!(
            text.contains("origin"),
            "an error about the origin for {url}: {text}"
        );
        assert!(!text.contains(&raw), "token leaked: {text}");
        assert!(!err.is_transient(), "retrying cannot help: {text}");
    }
    let err = client
        .request(Method::Get, &format!("{}/x", elsewhere.base), None)
        .await
        .expect_err("refused");
    assert!(
        err.to_string().contains(&elsewhere.base),
        "the error names the origin: {err}"
    );
    assert!(
        elsewhere.requests().is_empty(),
        "nothing was sent to the other origin: {:?}",
        elsewhere.requests()
    );

    // The API's own origin, absolute, is still followed (Genesys may send absolute nextUris).
    let users: serde_json::Value = client
        .get_json(&format!("{base}/api/v2/users?pageSize=2"))
        .await
        .expect("same origin is followed");
    assert_eq!(users["entities"].as_array().map(Vec::len), Some(2));
    emulator.shutdown().await;
}
