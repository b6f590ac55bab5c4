//! The binary relay: bearer auth on the upgrade, frames that decode, agreement with truth.

use std::collections::HashMap;
use std::time::Duration;

use genesys_emulator::{FaultTarget, TruthEntry};
use presence_frame::{Frame, FrameBatch, Status};

use crate::common::*;

fn frame_matches(frame: &Frame, truth: &TruthEntry) {
    assert_eq!(frame.user_id, truth.relay_id);
    assert_eq!(frame.time_ms, truth.modified().expect("time").as_millis());
    assert_eq!(frame.status, truth.status());
    assert_eq!(frame.location, truth.location());
    assert_eq!(u64::from(frame.groups), truth.group_mask & 0xff);
}

#[tokio::test]
async fn the_upgrade_needs_a_bearer_token() {
    let emu = start(quiet()).await;
    assert_eq!(
        connect_status(&emu.relay_url(), None).await.err(),
        Some(401)
    );
    assert_eq!(
        connect_status(&emu.relay_url(), Some("bogus")).await.err(),
        Some(401)
    );
    let token = token(&emu).await;
    assert!(connect_status(&emu.relay_url(), Some(&token)).await.is_ok());
    emu.expire_tokens().expect("expire");
    assert_eq!(
        connect_status(&emu.relay_url(), Some(&token)).await.err(),
        Some(401)
    );
}

#[tokio::test]
async fn a_new_relay_socket_gets_a_snapshot_of_every_user() {
    let emu = start(quiet().users(600).relay_frames_per_message(256)).await;
    let token = token(&emu).await;
    let mut socket = connect_status(&emu.relay_url(), Some(&token))
        .await
        .expect("relay");
    let truth = emu.truth();
    let mut frames = Vec::new();
    let mut messages = 0;
    while frames.len() < 600 {
        match recv(&mut socket, Duration::from_secs(5)).await {
            Recv::Binary(bytes) => {
                let batch = FrameBatch::new(&bytes).expect("whole frames");
                assert!(batch.len() <= 256);
                frames.extend(batch.iter());
                messages += 1;
            }
            other => panic!("expected frames, got {other:?}"),
        }
    }
    assert_eq!(messages, 3, "600 frames at 256 per message");
    for (frame, entry) in frames.iter().zip(&truth) {
        frame_matches(frame, entry);
        assert_ne!(frame.status, Status::UNKNOWN);
    }
    let off = start(quiet().relay_snapshot(false)).await;
    let token = crate::common::token(&off).await;
    let mut socket = connect_status(&off.relay_url(), Some(&token))
        .await
        .expect("relay");
    assert!(matches!(
        recv(&mut socket, Duration::from_millis(200)).await,
        Recv::Timeout
    ));
}

#[tokio::test]
async fn live_frames_agree_with_the_truth() {
    let emu = start(
        quiet()
            .users(300)
            .change_rate(5_000.0)
            .relay_snapshot(false),
    )
    .await;
    let token = token(&emu).await;
    let mut socket = connect_status(&emu.relay_url(), Some(&token))
        .await
        .expect("relay");
    let mut last: HashMap<u32, Frame> = HashMap::new();
    let mut count = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    let mut quiesced = false;
    loop {
        if !quiesced && tokio::time::Instant::now() >= deadline {
            emu.quiesce().await;
            quiesced = true;
        }
        match recv(
            &mut socket,
            Duration::from_millis(if quiesced { 300 } else { 50 }),
        )
        .await
        {
            Recv::Binary(bytes) => {
                for frame in FrameBatch::new(&bytes).expect("whole frames") {
                    if let Some(previous) = last.get(&frame.user_id) {
                        assert!(frame.time_ms > previous.time_ms);
                    }
                    last.insert(frame.user_id, frame);
                    count += 1;
                }
            }
            Recv::Timeout if quiesced => break,
            Recv::Timeout => {}
            other => panic!("relay ended: {other:?}"),
        }
    }
    assert!(count > 500, "only {count} frames");
    let stats = emu.stats();
    assert_eq!(stats.relay.frames_sent, count as u64);
    assert_eq!(stats.relay.messages_lost, 0);
    let truth = emu.truth();
    for (user, frame) in &last {
        frame_matches(frame, &truth[*user as usize]);
    }
}

#[tokio::test]
async fn relay_faults() {
    let emu = start(quiet().users(10).relay_snapshot(false)).await;
    let token = token(&emu).await;
    let mut socket = connect_status(&emu.relay_url(), Some(&token))
        .await
        .expect("relay");
    assert!(
        eventually(Duration::from_secs(2), || emu.stats().relay.connections
            == 1)
        .await
    );
    assert_eq!(emu.send_garbage(FaultTarget::Relay).expect("garbage"), 1);
    let Recv::Binary(bytes) = recv(&mut socket, Duration::from_secs(5)).await else {
        panic!("garbage")
    };
    assert!(
        FrameBatch::new(&bytes).is_err(),
        "length {} is not whole frames",
        bytes.len()
    );
    emu.send_oversized(FaultTarget::Relay, 4_096)
        .expect("oversized");
    let Recv::Binary(bytes) = recv(&mut socket, Duration::from_secs(5)).await else {
        panic!("oversized")
    };
    assert_eq!(bytes.len(), 4_097);
    assert!(FrameBatch::new(&bytes).is_err());
    emu.drop_sockets(FaultTarget::Relay).expect("drop");
    assert!(matches!(
        recv(&mut socket, Duration::from_secs(5)).await,
        Recv::Error(_) | Recv::Ended
    ));
    assert!(
        eventually(Duration::from_secs(2), || emu.stats().relay.connections
            == 0)
        .await
    );
}

/// Throughput of the relay mode. Ignored by default (it is a measurement, and wants a release
/// build): `cargo test -p genesys-emulator --release --test emulator -- --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run in release"]
async fn relay_throughput() {
    let rate = 250_000.0;
    let emu = start(
        quiet()
            .users(100_000)
            .change_rate(rate)
            .relay_snapshot(false),
    )
    .await;
    let token = token(&emu).await;
    let mut socket = connect_status(&emu.relay_url(), Some(&token))
        .await
        .expect("relay");
    let began = std::time::Instant::now();
    let mut frames = 0usize;
    while began.elapsed() < Duration::from_secs(3) {
        if let Recv::Binary(bytes) = recv(&mut socket, Duration::from_secs(1)).await {
            frames += FrameBatch::new(&bytes).expect("frames").len();
        }
    }
    let per_second = frames as f64 / began.elapsed().as_secs_f64();
    let stats = emu.stats();
    println!(
        "relay: {per_second:.0} frames/s received (asked {rate}/s); generated {}, lost {} messages",
        stats.events_generated, stats.relay.messages_lost
    );
    assert!(per_second > rate * 0.9, "{per_second:.0} frames/s");
}
