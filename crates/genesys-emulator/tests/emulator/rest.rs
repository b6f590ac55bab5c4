//! Users, bulk presences, groups and presence definitions over REST.

use std::collections::HashSet;

use genesys_emulator::Spelling;
use presence_frame::{EventTime, Guid, Status};
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn users_page_through_next_uri_to_the_last_page() {
    let emu = start(quiet().users(60)).await;
    let token = token(&emu).await;
    let mut path = "/api/v2/users?pageSize=25&expand=presence&state=active".to_owned();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let reply = api(&emu, &token, "GET", &path).await;
        assert_eq!(reply.status, 200, "{path}");
        let page = reply.json();
        pages += 1;
        assert_eq!(page["pageSize"], 25);
        assert_eq!(page["pageNumber"], pages);
        assert_eq!(page["total"], 60);
        assert_eq!(page["pageCount"], 3);
        assert_eq!(
            page["firstUri"],
            "/api/v2/users?pageSize=25&pageNumber=1&expand=presence&state=active"
        );
        assert_eq!(
            page["lastUri"],
            "/api/v2/users?pageSize=25&pageNumber=3&expand=presence&state=active"
        );
        assert!(page["selfUri"].is_string());
        for user in page["entities"].as_array().expect("entities") {
            seen.push(user["id"].as_str().expect("id").to_owned());
            assert_eq!(user["state"], "active");
            let presence = &user["presence"];
            assert_eq!(presence["source"], "PURECLOUD");
            assert_eq!(presence["primary"], true);
            assert!(presence["message"].is_string());
            assert!(
                EventTime::parse_rfc3339(presence["modifiedDate"].as_str().expect("date")).is_ok()
            );
            let definition = &presence["presenceDefinition"];
            assert!(Guid::parse(definition["id"].as_str().expect("definition id")).is_some());
            let spelled = definition["systemPresence"]
                .as_str()
                .expect("systemPresence");
            assert_ne!(Status::from_system_presence(spelled), Status::UNKNOWN);
        }
        match page.get("nextUri").and_then(Value::as_str) {
            Some(next) => {
                assert_eq!(
                    next,
                    format!(
                        "/api/v2/users?pageSize=25&pageNumber={}&expand=presence&state=active",
                        pages + 1
                    )
                );
                path = next.to_owned();
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = emu.user_ids().iter().map(Guid::to_string).collect();
    assert_eq!(seen, want, "every user once, in relay-id order");
}

#[tokio::test]
async fn users_paging_rules() {
    let emu = start(quiet().users(30).max_page_size(40)).await;
    let token = token(&emu).await;
    let default = api(&emu, &token, "GET", "/api/v2/users").await.json();
    assert_eq!(default["pageSize"], 25, "default page size");
    assert!(
        default["entities"][0].get("presence").is_none(),
        "no presence without expand"
    );
    assert_eq!(
        api(&emu, &token, "GET", "/api/v2/users?pageSize=41")
            .await
            .status,
        400,
        "over the maximum page size"
    );
    assert_eq!(
        api(&emu, &token, "GET", "/api/v2/users?pageSize=0")
            .await
            .status,
        400
    );
    assert_eq!(
        api(&emu, &token, "GET", "/api/v2/users?pageNumber=x")
            .await
            .status,
        400
    );
    let past = api(
        &emu,
        &token,
        "GET",
        "/api/v2/users?pageSize=20&pageNumber=9",
    )
    .await
    .json();
    assert_eq!(past["entities"].as_array().map(Vec::len), Some(0));
    assert!(past.get("nextUri").is_none());
    let inactive = api(&emu, &token, "GET", "/api/v2/users?state=inactive")
        .await
        .json();
    assert_eq!(inactive["total"], 0);
    assert_eq!(
        api(&emu, &token, "GET", "/api/v2/users?state=weird")
            .await
            .status,
        400
    );
    let groups = api(
        &emu,
        &token,
        "GET",
        "/api/v2/users?expand=groups&pageSize=20",
    )
    .await
    .json();
    for user in groups["entities"].as_array().expect("entities") {
        assert!(user["groups"].is_array());
    }
}

#[tokio::test]
async fn presence_can_be_missing_from_expands() {
    let emu = start(quiet().users(10).presence_missing_fraction(1.0)).await;
    let token = token(&emu).await;
    let page = api(&emu, &token, "GET", "/api/v2/users?expand=presence")
        .await
        .json();
    let entities = page["entities"].as_array().expect("entities");
    assert_eq!(entities.len(), 10);
    assert!(entities.iter().all(|u| u.get("presence").is_none()));
}

#[tokio::test]
async fn rest_spelling_is_configurable() {
    for (spelling, want) in [
        (Spelling::Title, "On Queue"),
        (Spelling::Upper, "ON_QUEUE"),
        (Spelling::Camel, "OnQueue"),
    ] {
        let emu = start(quiet().users(200).rest_spelling(spelling)).await;
        let token = token(&emu).await;
        let page = api(
            &emu,
            &token,
            "GET",
            "/api/v2/users?expand=presence&pageSize=200",
        )
        .await
        .json();
        let spellings: HashSet<String> = page["entities"]
            .as_array()
            .expect("entities")
            .iter()
            .filter_map(|u| u["presence"]["presenceDefinition"]["systemPresence"].as_str())
            .map(str::to_owned)
            .collect();
        assert!(spellings.contains(want), "{spelling:?}: {spellings:?}");
    }
}

#[tokio::test]
async fn bulk_presence_takes_at_most_50_ids() {
    let emu = start(quiet().users(60)).await;
    let token = token(&emu).await;
    let ids: Vec<String> = emu.user_ids().iter().map(Guid::to_string).collect();
    let fifty = api(
        &emu,
        &token,
        "GET",
        &format!(
            "/api/v2/users/presences/purecloud/bulk?id={}",
            ids[..50].join(",")
        ),
    )
    .await;
    assert_eq!(fifty.status, 200);
    let entries = fifty.json();
    let entries = entries.as_array().expect("array");
    assert_eq!(entries.len(), 50);
    let truth = emu.truth();
    for (entry, want) in entries.iter().zip(&truth) {
        assert_eq!(entry["userId"], want.user_id.as_str());
        assert_eq!(
            entry["presenceDefinition"]["id"],
            want.presence_definition_id.as_str()
        );
        assert_eq!(entry["modifiedDate"], want.modified_date.as_str());
        assert_eq!(entry["message"], want.message.as_str());
        assert_eq!(entry["source"], "PURECLOUD");
        assert_eq!(entry["primary"], true);
        let spelled = entry["presenceDefinition"]["systemPresence"]
            .as_str()
            .expect("spelling");
        assert_eq!(Status::from_system_presence(spelled), want.status());
    }
    let fifty_one = api(
        &emu,
        &token,
        "GET",
        &format!(
            "/api/v2/users/presences/purecloud/bulk?id={}",
            ids[..51].join(",")
        ),
    )
    .await;
    assert_eq!(fifty_one.status, 400);
    // Repeated id parameters count too; unknown ids are left out; bad ids are 400.
    let repeated = ids[..3]
        .iter()
        .map(|id| format!("id={id}"))
        .collect::<Vec<_>>()
        .join("&");
    let unknown = Guid(12345);
    let reply = api(
        &emu,
        &token,
        "GET",
        &format!("/api/v2/users/presences/purecloud/bulk?{repeated}&id={unknown}"),
    )
    .await;
    assert_eq!(reply.json().as_array().map(Vec::len), Some(3));
    let bad = api(
        &emu,
        &token,
        "GET",
        "/api/v2/users/presences/purecloud/bulk?id=nope",
    )
    .await;
    assert_eq!(bad.status, 400);
    let none = api(
        &emu,
        &token,
        "GET",
        "/api/v2/users/presences/purecloud/bulk",
    )
    .await;
    assert_eq!(none.status, 400);
}

#[tokio::test]
async fn groups_and_members() {
    let emu = start(quiet().users(200).groups(8).max_groups_per_user(3)).await;
    let token = token(&emu).await;
    let groups = api(&emu, &token, "GET", "/api/v2/groups?pageSize=100")
        .await
        .json();
    let listed: Vec<String> = groups["entities"]
        .as_array()
        .expect("entities")
        .iter()
        .map(|g| g["id"].as_str().expect("id").to_owned())
        .collect();
    let want: Vec<String> = emu.group_ids().iter().map(Guid::to_string).collect();
    assert_eq!(listed, want);

    let truth = emu.truth();
    for (bit, group) in emu.group_ids().iter().enumerate() {
        let mut members = Vec::new();
        let mut path = format!("/api/v2/groups/{group}/members?pageSize=10&expand=presence");
        loop {
            let page = api(&emu, &token, "GET", &path).await.json();
            for user in page["entities"].as_array().expect("entities") {
                assert!(user["presence"].is_object());
                members.push(user["id"].as_str().expect("id").to_owned());
            }
            match page.get("nextUri").and_then(Value::as_str) {
                Some(next) => path = next.to_owned(),
                None => break,
            }
        }
        let expected: Vec<String> = truth
            .iter()
            .filter(|t| t.group_mask & (1 << bit) != 0)
            .map(|t| t.user_id.clone())
            .collect();
        assert_eq!(members, expected, "group {bit}");
        assert!(
            truth
                .iter()
                .filter(|t| t.group_mask & (1 << bit) != 0)
                .all(|t| t.groups.contains(&group.to_string()))
        );
    }
    let missing = api(
        &emu,
        &token,
        "GET",
        &format!("/api/v2/groups/{}/members", Guid(1)),
    )
    .await;
    assert_eq!(missing.status, 404);
    let malformed = api(&emu, &token, "GET", "/api/v2/groups/xyz/members").await;
    assert_eq!(malformed.status, 404);
}

#[tokio::test]
async fn presence_definitions_have_one_stable_system_definition_per_status() {
    let emu = start(quiet().seed(77)).await;
    let token = token(&emu).await;
    let first = api(&emu, &token, "GET", "/api/v2/presence/definitions")
        .await
        .json();
    let entities = first["entities"].as_array().expect("entities").clone();
    let system: Vec<&Value> = entities.iter().filter(|d| d["type"] == "System").collect();
    assert_eq!(system.len(), 10);
    let statuses: HashSet<Status> = system
        .iter()
        .map(|d| Status::from_system_presence(d["systemPresence"].as_str().expect("sp")))
        .collect();
    assert_eq!(statuses.len(), 10);
    assert!(!statuses.contains(&Status::UNKNOWN));
    assert!(
        system.iter().any(|d| d["systemPresence"] == "OnQueue"),
        "definitions spell OnQueue"
    );
    for d in &entities {
        assert!(Guid::parse(d["id"].as_str().expect("id")).is_some());
        assert!(d["languageLabels"].is_object());
        assert_eq!(d["deactivated"], false);
    }
    assert!(
        entities.iter().any(|d| d["type"] == "User"),
        "custom definitions by default"
    );
    // Same seed, same ids; another seed, other ids.
    let again = start(quiet().seed(77)).await;
    let token2 = crate::common::token(&again).await;
    let second = api(&again, &token2, "GET", "/api/v2/presence/definitions")
        .await
        .json();
    assert_eq!(first["entities"], second["entities"]);
    let other = start(quiet().seed(78)).await;
    let token3 = crate::common::token(&other).await;
    let third = api(&other, &token3, "GET", "/api/v2/presence/definitions")
        .await
        .json();
    assert_ne!(first["entities"][0]["id"], third["entities"][0]["id"]);
    // Every definition a user has is listed.
    let ids: HashSet<&str> = entities.iter().filter_map(|d| d["id"].as_str()).collect();
    assert!(
        emu.truth()
            .iter()
            .all(|t| ids.contains(t.presence_definition_id.as_str()))
    );
}
