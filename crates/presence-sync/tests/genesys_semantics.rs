//! Issue 12, against the emulator over real loopback HTTP and WebSockets: a maintenance wave
//! costs no channel, no resync and no event; channels live past their lifetime by
//! subscribing again, with a fresh token first when the held one is nearly dead; a rejected
//! topic is one user's problem; `{"result":"404"}` on a socket means a new channel.

use std::sync::atomic::Ordering;
use std::time::Duration;

use genesys_emulator::EmulatorConfig;
use presence_frame::Guid;
use presence_sync::{ReconnectCause, SyncConfig};

mod harness;

use harness::*;

/// Genesys's own heartbeat and ping intervals, for tests on tokio's paused clock.
fn paced_sync() -> SyncConfig {
    SyncConfig::default().backoff(Duration::from_millis(20), Duration::from_millis(500))
}

fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Item 2: every channel gets socket_closing at once; each hands its socket over to a new
/// one on the same channel. On the old code each cost a new channel and the emulator's
/// channel count rose by three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_wave_costs_no_channel_no_resync_and_no_event() {
    let h = Harness::start(
        EmulatorConfig::default()
            .users(2_500)
            .change_rate(400.0)
            .seed(12),
        fast_sync(),
    )
    .await;
    h.ready().await;
    let stats = h.status.stats();
    let ids = h.channel_ids();
    assert_eq!(ids.len(), 3);
    let created = h.emulator.stats().channels_created;
    assert_eq!(created, 3);
    let resyncs = load(&stats.resyncs);
    let unreached = h.emulator.stats().events_unreached;
    assert_eq!(
        h.emulator
            .maintenance_wave(Duration::from_secs(3))
            .expect("wave"),
        3
    );
    h.wait_for("three handovers", Duration::from_secs(15), |h| {
        load(&h.status.stats().socket_handovers) >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await; // past the grace
    h.converge(Duration::from_secs(15)).await;
    let emulated = h.emulator.stats();
    assert_eq!(emulated.channels_created, created, "no new channel");
    assert_eq!(load(&stats.channels_created), 3);
    assert_eq!(h.channel_ids(), ids, "the same channels");
    assert_eq!(load(&stats.resyncs), resyncs, "no resync");
    assert_eq!(
        emulated.events_unreached - unreached,
        0,
        "no change reached no socket; channels {:?}",
        emulated.channels
    );
    assert_eq!(stats.reconnects_of(ReconnectCause::SocketClosing), 3);
    assert_eq!(stats.reconnects_of(ReconnectCause::Closed), 0);
    assert_eq!(stats.reconnects_of(ReconnectCause::ChannelGone), 0);
    assert!(emulated.channels.iter().all(|c| c.connected));
    h.stop().await;
}

/// Item 3, on tokio's paused clock with Genesys's heartbeat intervals: a channel living 40 s
/// streams for more than three lifetimes under the same id, kept by subscribing again. On
/// the old code it was replaced before each expiry.
#[tokio::test(start_paused = true)]
async fn a_channel_lives_past_its_lifetime_by_subscribing_again() {
    let h = Harness::start(
        EmulatorConfig::default()
            .users(200)
            .change_rate(2.0)
            .channel_lifetime(Duration::from_secs(40)),
        paced_sync(),
    )
    .await;
    h.ready().await;
    let ids = h.channel_ids();
    let began = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(130)).await;
    assert!(began.elapsed() > Duration::from_secs(120));
    let stats = h.status.stats();
    assert_eq!(
        h.channel_ids(),
        ids,
        "the same channel after three lifetimes"
    );
    assert!(load(&stats.channels_extended) >= 3, "{stats:?}");
    assert_eq!(load(&stats.channels_created), 1);
    assert_eq!(h.emulator.stats().channels_created, 1);
    assert_eq!(stats.reconnects_of(ReconnectCause::Closed), 0);
    assert_eq!(stats.reconnects_of(ReconnectCause::Expiring), 0);
    let emulated = h.emulator.stats().channels;
    assert_eq!(emulated.len(), 1);
    assert_eq!(Some(emulated[0].id.clone()), ids[0]);
    assert!(emulated[0].connected);
    h.converge(Duration::from_secs(20)).await;
    h.stop().await;
}

/// Item 3: channels live 40 s, tokens 90 s, and the API client itself would renew its token
/// only a second before it expires. At the second extension (t = 60 s) the token has 30 s
/// left, less than the channel should live: a fresh token is fetched first. The channel's
/// creating token still ends at 90 s, so before then the channel is rolled to a new one,
/// made with the fresh token: one rollover, never a cascade. On the old code no token was
/// fetched early and the channel was replaced at each expiry.
#[tokio::test(start_paused = true)]
async fn a_token_nearly_dead_is_refreshed_before_extending() {
    let h = Harness::start_with(
        EmulatorConfig::default()
            .users(200)
            .change_rate(2.0)
            .channel_lifetime(Duration::from_secs(40))
            .token_lifetime(Duration::from_secs(90)),
        paced_sync(),
        Duration::from_secs(1),
        |_| {},
    )
    .await;
    h.ready().await;
    let ids = h.channel_ids();
    let stats = h.status.stats();
    h.wait_for("two extensions", Duration::from_secs(75), |h| {
        load(&h.status.stats().channels_extended) >= 2
    })
    .await;
    assert_eq!(h.channel_ids(), ids, "extended, not replaced");
    assert_eq!(load(&stats.early_token_refreshes), 1, "{stats:?}");
    assert_eq!(load(&h.client.stats().token_refreshes), 2);
    assert_eq!(h.emulator.stats().tokens_issued, 2);
    assert_eq!(load(&stats.channels_created), 1);

    // Past the first token's end: one new channel, made with the fresh token.
    h.wait_for(
        "a rollover to a new channel",
        Duration::from_secs(60),
        |h| h.status.stats().reconnects_of(ReconnectCause::Expiring) >= 1,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_ne!(h.channel_ids(), ids);
    assert_eq!(load(&stats.channels_created), 2, "no cascade: {stats:?}");
    assert_eq!(
        h.emulator.stats().tokens_issued,
        2,
        "the fresh token served"
    );
    assert_eq!(stats.reconnects_of(ReconnectCause::Closed), 0);
    assert_eq!(stats.reconnects_of(ReconnectCause::ChannelGone), 0);
    h.converge(Duration::from_secs(20)).await;
    h.stop().await;
}

/// Item 1: the emulator refuses five users' topics. The subscription (with
/// `ignoreErrors=true`) takes the rest; the five are counted and kept for a retry, which the
/// channel's next subscription makes. On the old code the whole subscription failed with
/// 403 and the channel never streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_topic_leaves_the_rest_of_its_channel_streaming() {
    let mut refused: Vec<Guid> = Vec::new();
    let h = Harness::start_with(
        EmulatorConfig::default()
            .users(300)
            .change_rate(300.0)
            .channel_lifetime(Duration::from_secs(8)),
        fast_sync(),
        Duration::from_secs(60),
        |emulator| {
            refused = emulator.user_ids()[..5].to_vec();
            assert_eq!(emulator.refuse_topics(&refused), 5);
        },
    )
    .await;
    h.ready().await;
    h.assert_rejected(&refused);
    assert_eq!(load(&h.status.stats().topics_rejected), 5);
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.converge_except(Duration::from_secs(15), &refused).await;
    let topics = h.emulator.stats().channels[0].topics;
    assert_eq!(topics, 295);

    // Permitted again: the channel's next subscription (it is extended before it expires)
    // asks for them again, and they stream.
    h.emulator.permit_topics(&refused);
    h.emulator.resume();
    h.wait_for(
        "the rejected users accepted",
        Duration::from_secs(20),
        |h| h.status.rejected_users().is_empty(),
    )
    .await;
    assert_eq!(h.emulator.stats().channels[0].topics, 300);
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.converge(Duration::from_secs(15)).await;
    assert_eq!(load(&h.status.stats().channels_created), 1);
    h.stop().await;
}

/// Item 4: the emulator tells a socket whose channel went with its token
/// `{"result":"404","message":...}` (no `topicName`). The sync takes it as "channel gone"
/// and makes a new channel; nothing is counted as a decode error. On the old code it was
/// counted as a bad message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_without_topic_name_means_a_new_channel_not_garbage() {
    let h = Harness::start(
        EmulatorConfig::default()
            .users(300)
            .change_rate(300.0)
            .socket_404_message(true),
        fast_sync(),
    )
    .await;
    h.ready().await;
    let ids = h.channel_ids();
    h.emulator.expire_tokens().expect("expire");
    h.wait_for("a gone channel", Duration::from_secs(15), |h| {
        h.status.stats().reconnects_of(ReconnectCause::ChannelGone) >= 1
    })
    .await;
    h.ready().await;
    let stats = h.status.stats();
    assert!(load(&stats.messages_without_topic) >= 1);
    assert_eq!(
        stats.decode_errors_total(),
        0,
        "{:?}",
        stats.decode_errors()
    );
    assert_ne!(h.channel_ids(), ids, "a new channel");
    assert_eq!(load(&stats.channels_created), 2);
    h.converge(Duration::from_secs(20)).await;
    h.stop().await;
}
