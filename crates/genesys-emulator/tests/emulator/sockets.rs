//! The channel WebSocket: connecting, kicking, heartbeats, ping/pong, lost events, shutdown.

use std::time::Duration;

use presence_frame::Notification;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::common::*;

#[tokio::test]
async fn unknown_channels_refuse_the_upgrade_with_404() {
    let emu = start(quiet()).await;
    let uri = format!("ws://{}/channels/streaming-0-unknown", emu.addr());
    assert_eq!(connect_status(&uri, None).await.err(), Some(404));
}

#[tokio::test]
async fn a_second_socket_kicks_the_first() {
    let emu = start(quiet()).await;
    let token = token(&emu).await;
    let (_, uri) = create_channel(&emu, &token).await;
    let mut first = connect(&uri).await;
    let mut second = connect(&uri).await;
    match recv(&mut first, Duration::from_secs(5)).await {
        Recv::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("first socket should be closed, got {other:?}"),
    }
    // The second one is the channel's socket now.
    send_text(&mut second, r#"{"message":"ping"}"#).await;
    let (_, pong) = next_notification(&mut second, Duration::from_secs(5))
        .await
        .expect("pong");
    assert_eq!(pong, Notification::Pong);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_come_every_30_seconds_by_default() {
    let emu = start(quiet()).await;
    let token = token(&emu).await;
    let (_, uri) = create_channel(&emu, &token).await;
    let mut socket = connect(&uri).await;
    let began = Instant::now();
    for n in 1..=3u64 {
        match recv(&mut socket, Duration::from_secs(40)).await {
            Recv::Text(text) => {
                assert_eq!(
                    text,
                    r#"{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}"#
                );
            }
            other => panic!("expected a heartbeat, got {other:?}"),
        }
        let elapsed = began.elapsed().as_secs_f64();
        assert!(
            (elapsed - 30.0 * n as f64).abs() < 1.0,
            "heartbeat {n} at {elapsed}s"
        );
    }
    assert_eq!(emu.stats().heartbeats_sent, 3);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_interval_is_configurable_and_can_be_off() {
    let emu = start(quiet().heartbeat_interval(Duration::from_secs(5))).await;
    let token = token(&emu).await;
    let (_, uri) = create_channel(&emu, &token).await;
    let mut socket = connect(&uri).await;
    let began = Instant::now();
    assert!(matches!(
        recv(&mut socket, Duration::from_secs(10)).await,
        Recv::Text(_)
    ));
    assert!((began.elapsed().as_secs_f64() - 5.0).abs() < 1.0);

    let silent = start(quiet().heartbeat_interval(Duration::ZERO)).await;
    let token = crate::common::token(&silent).await;
    let (_, uri) = create_channel(&silent, &token).await;
    let mut socket = connect(&uri).await;
    assert!(matches!(
        recv(&mut socket, Duration::from_secs(120)).await,
        Recv::Timeout
    ));
}

#[tokio::test]
async fn ping_gets_pong_and_other_text_is_ignored() {
    let emu = start(quiet()).await;
    let token = token(&emu).await;
    let (_, uri) = create_channel(&emu, &token).await;
    let mut socket = connect(&uri).await;
    send_text(&mut socket, "hello").await;
    send_text(&mut socket, r#"{"message":"ping"}"#).await;
    match recv(&mut socket, Duration::from_secs(5)).await {
        Recv::Text(text) => {
            assert_eq!(
                text,
                r#"{"topicName":"channel.metadata","eventBody":{"message":"pong"}}"#
            )
        }
        other => panic!("expected pong, got {other:?}"),
    }
}

#[tokio::test]
async fn events_while_disconnected_are_lost_and_counted() {
    let emu = start(quiet().users(20).change_rate(2_000.0).skew(0.0)).await;
    let token = token(&emu).await;
    let users = emu.user_ids();
    let (id, uri) = create_channel(&emu, &token).await;
    subscribe(&emu, &token, &id, &users).await;
    assert!(eventually(Duration::from_secs(5), || emu.stats().events_lost > 50).await);
    emu.quiesce().await;
    let stats = emu.stats();
    let channel = stats
        .channels
        .iter()
        .find(|c| c.id == id)
        .expect("channel stats");
    assert!(channel.lost > 50);
    assert_eq!(channel.delivered, 0);
    assert_eq!(stats.events_lost, channel.lost);
    // The only channel of these users: every change lost there reached no socket at all.
    assert_eq!(stats.events_unreached, stats.events_lost);
    // Nothing is replayed on connect.
    let mut socket = connect(&uri).await;
    assert!(matches!(
        recv(&mut socket, Duration::from_millis(300)).await,
        Recv::Timeout
    ));
    // Events flow once connected.
    emu.resume();
    assert!(
        next_notification(&mut socket, Duration::from_secs(5))
            .await
            .is_some()
    );
}

#[tokio::test]
async fn shutdown_closes_sockets_and_stops_serving() {
    let emu = start(quiet()).await;
    let addr = emu.addr();
    let token = token(&emu).await;
    let (_, uri) = create_channel(&emu, &token).await;
    let mut socket = connect(&uri).await;
    emu.shutdown().await;
    match recv(&mut socket, Duration::from_secs(5)).await {
        Recv::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn dropping_the_handle_stops_the_emulator() {
    let emu = start(quiet()).await;
    let addr = emu.addr();
    drop(emu);
    let refused = eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    assert!(refused);
}

/// A change that one channel's socket took is not unreached, though a second channel of the
/// same users, subscribed but not connected (as during a rollover to a new channel), lost it.
#[tokio::test]
async fn a_change_another_socket_took_is_lost_there_but_not_unreached() {
    let emu = start(quiet().users(20).change_rate(0.0).skew(0.0)).await;
    let token = token(&emu).await;
    let users = emu.user_ids();
    let (live, uri) = create_channel(&emu, &token).await;
    let (idle, _) = create_channel(&emu, &token).await;
    let mut socket = connect(&uri).await;
    assert!(
        eventually(Duration::from_secs(5), || emu
            .stats()
            .channels
            .iter()
            .any(|c| c.connected))
        .await
    );
    subscribe(&emu, &token, &live, &users).await;
    subscribe(&emu, &token, &idle, &users).await;
    emu.set_change_rate(2_000.0).expect("rate");
    assert!(eventually(Duration::from_secs(5), || emu.stats().events_lost > 50).await);
    emu.quiesce().await;
    let stats = emu.stats();
    let lost_on = |id: &str| stats.channels.iter().find(|c| c.id == id).map(|c| c.lost);
    assert_eq!(lost_on(&idle), Some(stats.events_lost));
    assert_eq!(lost_on(&live), Some(0));
    assert_eq!(stats.events_unreached, 0, "{stats:?}");
    let _ = socket.close(None).await;
}
