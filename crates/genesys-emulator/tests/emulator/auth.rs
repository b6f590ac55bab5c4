//! OAuth client credentials and the 401s.

use std::time::Duration;

use crate::common::*;

#[tokio::test]
async fn basic_auth_gives_a_bearer_token() {
    let emu = start(quiet().token_lifetime(Duration::from_secs(600))).await;
    let reply = get_token_reply(&emu).await;
    assert_eq!(reply.status, 200);
    let json = reply.json();
    assert_eq!(json["token_type"], "bearer");
    assert_eq!(json["expires_in"], 600);
    let token = json["access_token"].as_str().expect("token");
    let users = api(&emu, token, "GET", "/api/v2/users").await;
    assert_eq!(users.status, 200);
}

#[tokio::test]
async fn form_field_credentials_work_too() {
    let emu = start(quiet()).await;
    let body = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        emu.client_id(),
        emu.client_secret()
    );
    let reply = request(
        emu.addr(),
        "POST",
        "/oauth/token",
        &[(
            "content-type",
            "application/x-www-form-urlencoded".to_owned(),
        )],
        body,
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert!(reply.json()["access_token"].is_string());
}

#[tokio::test]
async fn wrong_credentials_get_401_with_error_fields() {
    let emu = start(quiet().client_id("me").client_secret("right")).await;
    for headers in [
        vec![basic("me", "wrong")],
        vec![basic("other", "right")],
        vec![],
    ] {
        let reply = request(
            emu.addr(),
            "POST",
            "/oauth/token",
            &headers,
            "grant_type=client_credentials",
        )
        .await;
        assert_eq!(reply.status, 401);
        let json = reply.json();
        assert_eq!(json["error"], "invalid_client");
        assert!(json["error_description"].is_string());
    }
    let wrong_grant = request(
        emu.addr(),
        "POST",
        "/oauth/token",
        &[basic("me", "right")],
        "grant_type=password",
    )
    .await;
    assert_eq!(wrong_grant.status, 400);
    assert_eq!(wrong_grant.json()["error"], "unsupported_grant_type");
}

#[tokio::test]
async fn api_calls_need_a_valid_bearer_token() {
    let emu = start(quiet()).await;
    let none = request(emu.addr(), "GET", "/api/v2/users", &[], "").await;
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["status"], 401);
    assert!(none.json()["code"].is_string());
    let bogus = api(&emu, "not-a-token", "GET", "/api/v2/users").await;
    assert_eq!(bogus.status, 401);
    let basic_only = request(
        emu.addr(),
        "GET",
        "/api/v2/users",
        &[basic(emu.client_id(), emu.client_secret())],
        "",
    )
    .await;
    assert_eq!(basic_only.status, 401);
    // Every API route is guarded, including unknown ones and channel creation.
    for (method, path) in [
        ("POST", "/api/v2/notifications/channels"),
        ("GET", "/api/v2/presence/definitions"),
        ("GET", "/api/v2/nothing/here"),
    ] {
        let reply = request(emu.addr(), method, path, &[], "").await;
        assert_eq!(reply.status, 401, "{method} {path}");
    }
}

#[tokio::test(start_paused = true)]
async fn tokens_expire_after_their_lifetime() {
    let emu = start(quiet().token_lifetime(Duration::from_secs(300))).await;
    let token = token(&emu).await;
    tokio::time::sleep(Duration::from_secs(290)).await;
    assert_eq!(api(&emu, &token, "GET", "/api/v2/users").await.status, 200);
    tokio::time::sleep(Duration::from_secs(15)).await;
    let expired = api(&emu, &token, "GET", "/api/v2/users").await;
    assert_eq!(expired.status, 401);
    // A new token works: refreshing means asking again.
    let fresh = crate::common::token(&emu).await;
    assert_eq!(api(&emu, &fresh, "GET", "/api/v2/users").await.status, 200);
}
