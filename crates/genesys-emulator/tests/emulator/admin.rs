//! The emulator's own endpoints: truth, stats, quiesce/resume, rate.

use std::time::Duration;

use genesys_emulator::{Stats, TruthEntry};
use presence_frame::Guid;

use crate::common::*;

#[tokio::test]
async fn truth_lists_every_user_in_the_documented_shape() {
    let emu = start(quiet().users(50).groups(8).max_groups_per_user(3)).await;
    let reply = admin(&emu, "GET", "/emulator/truth", "").await;
    assert_eq!(reply.status, 200);
    let json = reply.json();
    let first = &json[0];
    for key in [
        "userId",
        "relayId",
        "systemPresence",
        "presenceDefinitionId",
        "message",
        "modifiedDate",
        "groups",
        "location",
    ] {
        assert!(first.get(key).is_some(), "missing {key}");
    }
    let truth: Vec<TruthEntry> = serde_json::from_slice(&reply.body).expect("truth parses");
    assert_eq!(truth.len(), 50);
    let groups = emu.group_ids();
    for (i, entry) in truth.iter().enumerate() {
        assert_eq!(entry.relay_id as usize, i);
        assert_eq!(entry.user(), Some(emu.user_ids()[i]));
        assert!(entry.modified().is_some());
        assert!(matches!(entry.location.as_str(), "Desk" | "Remote"));
        let from_mask: Vec<String> = groups
            .iter()
            .enumerate()
            .filter(|(bit, _)| entry.group_mask & (1 << bit) != 0)
            .map(|(_, g)| g.to_string())
            .collect();
        assert_eq!(entry.groups, from_mask);
        assert!(Guid::parse(&entry.presence_definition_id).is_some());
    }
    assert!(truth.iter().any(|t| !t.groups.is_empty()));
}

#[tokio::test]
async fn quiesce_resume_and_rate_over_http() {
    let emu = start(quiet().users(20).change_rate(1_000.0)).await;
    assert!(eventually(Duration::from_secs(5), || emu.stats().events_generated > 0).await);
    let reply = admin(&emu, "POST", "/emulator/quiesce", "").await;
    assert_eq!(reply.status, 200);
    let frozen = emu.truth();
    let generated = emu.stats().events_generated;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(emu.truth(), frozen, "truth does not move while quiesced");
    let stats: Stats =
        serde_json::from_slice(&admin(&emu, "GET", "/emulator/stats", "").await.body)
            .expect("stats parse");
    assert!(stats.quiesced);
    assert_eq!(stats.events_generated, generated);

    assert_eq!(
        admin(&emu, "POST", "/emulator/resume", "").await.status,
        200
    );
    assert!(
        eventually(Duration::from_secs(5), || emu.stats().events_generated
            > generated)
        .await
    );

    assert_eq!(
        admin(&emu, "POST", "/emulator/rate", r#"{"changesPerSecond":0}"#)
            .await
            .status,
        204
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopped = emu.stats().events_generated;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(emu.stats().events_generated, stopped);
    assert_eq!(emu.stats().change_rate, 0.0);
    assert_eq!(
        admin(&emu, "POST", "/emulator/rate", r#"{"changesPerSecond":-5}"#)
            .await
            .status,
        400
    );
    assert_eq!(
        admin(&emu, "GET", "/emulator/nothing", "").await.status,
        404
    );
}

#[tokio::test]
async fn binding_port_zero_reports_the_real_address() {
    let emu = start(quiet()).await;
    assert_ne!(emu.addr().port(), 0);
    assert_eq!(emu.base_url(), format!("http://{}", emu.addr()));
    assert_eq!(emu.relay_url(), format!("ws://{}/relay", emu.addr()));
    let any = genesys_emulator::Emulator::start(quiet(), "0.0.0.0:0".parse().expect("addr"))
        .await
        .expect("start");
    assert!(
        any.addr().ip().is_loopback(),
        "an unspecified bind address shows as loopback"
    );
    let taken = genesys_emulator::Emulator::start(quiet(), emu.addr()).await;
    assert!(matches!(taken, Err(genesys_emulator::Error::Bind { .. })));
    let invalid =
        genesys_emulator::Emulator::start(quiet().users(0), "127.0.0.1:0".parse().expect("addr"))
            .await;
    assert!(matches!(
        invalid,
        Err(genesys_emulator::Error::InvalidConfig { field: "users", .. })
    ));
}
