//! The per-token rate limit: a fixed one-minute window.

use std::time::Duration;

use crate::common::*;

#[tokio::test(start_paused = true)]
async fn limit_gives_429_with_retry_after_then_recovers() {
    let emu = start(quiet().rate_limit_per_minute(5)).await;
    let token = token(&emu).await;
    for n in 1..=5 {
        let reply = api(&emu, &token, "GET", "/api/v2/presence/definitions").await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("inin-ratelimit-count"),
            Some(n.to_string().as_str())
        );
        assert_eq!(reply.header("inin-ratelimit-allowed"), Some("5"));
        let reset: u64 = reply
            .header("inin-ratelimit-reset")
            .and_then(|v| v.parse().ok())
            .expect("reset header");
        assert!((1..=60).contains(&reset), "reset {reset}");
    }
    let limited = api(&emu, &token, "GET", "/api/v2/presence/definitions").await;
    assert_eq!(limited.status, 429);
    let retry: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry));
    let json = limited.json();
    assert_eq!(json["code"], "too.many.requests.retry.after");
    assert_eq!(json["status"], 429);
    assert_eq!(
        json["message"],
        format!("Rate limit exceeded the maximum. Retry the request in [{retry}] seconds")
    );
    assert!(json["details"].is_array() && json["errors"].is_array());

    // Another token has its own window.
    let other = crate::common::token(&emu).await;
    assert_eq!(api(&emu, &other, "GET", "/api/v2/users").await.status, 200);

    // After Retry-After, the window has reset.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let again = api(&emu, &token, "GET", "/api/v2/presence/definitions").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("inin-ratelimit-count"), Some("1"));
    assert_eq!(emu.stats().api_rate_limited, 1);
}

#[tokio::test]
async fn default_limit_is_300_and_zero_means_unlimited() {
    let emu = start(quiet()).await;
    let token = token(&emu).await;
    let reply = api(&emu, &token, "GET", "/api/v2/users").await;
    assert_eq!(reply.header("inin-ratelimit-allowed"), Some("300"));

    let unlimited = start(quiet().rate_limit_per_minute(0)).await;
    let token = crate::common::token(&unlimited).await;
    for _ in 0..20 {
        let reply = api(&unlimited, &token, "GET", "/api/v2/presence/definitions").await;
        assert_eq!(reply.status, 200);
        assert!(reply.header("inin-ratelimit-allowed").is_none());
    }
}
