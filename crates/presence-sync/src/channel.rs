//! One notification channel's life: create and subscribe, connect, resync after every gap,
//! stream, watch the heartbeat, hand the socket over to a new one on the same channel on
//! `socket_closing`, keep the channel alive by subscribing again, roll to a new channel only
//! when the old one is gone or its token ends, reconnect with backoff.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use futures_util::{FutureExt, SinkExt, StreamExt};
use genesys_auth::GenesysClient;
use presence_frame::{Guid, PresenceEvent};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{
    Channel, DEFAULT_CHANNEL_LIFETIME, SubscribeMode, channel_exists, create_channel, subscribe,
    token_for,
};
use crate::backoff::full_jitter;
use crate::config::SyncConfig;
use crate::decode::{Control, Decoder};
use crate::error::SessionError;
use crate::resync::{ResyncOutcome, ResyncRequest};
use crate::sink::PresenceSink;
use crate::stats::{ChannelState, ReconnectCause, SyncStatus, bump};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Most messages a session decodes in one go before it looks at its timers and cancellation.
const DRAIN_MESSAGES: usize = 64;

const PING: &str = r#"{"message":"ping"}"#;

/// How long both sockets are read after a rollover's new socket is connected.
const ROLLOVER_OVERLAP: Duration = Duration::from_secs(1);

/// After `socket_closing`, an old socket that the server closes (with a close frame) while
/// the new socket to the same channel connects was closed because the new one took delivery
/// over, so nothing fell between them, provided the new one connected within this long.
/// Genesys gives about a minute between the warning and its own close.
const HANDOVER_TRUST: Duration = Duration::from_secs(10);

/// What every channel worker shares.
pub(crate) struct ChannelContext {
    pub(crate) client: GenesysClient,
    pub(crate) config: SyncConfig,
    pub(crate) decoder: Arc<Decoder>,
    pub(crate) sink: Arc<dyn PresenceSink>,
    pub(crate) status: SyncStatus,
    pub(crate) resync: mpsc::Sender<ResyncRequest>,
    /// One permit per channel the plan leaves free: held by a rollover from creating its new
    /// channel until the old socket is dropped, so that concurrent rollovers never push each
    /// other's new, not yet connected channel out under the channel limit.
    pub(crate) rollover_slots: Arc<tokio::sync::Semaphore>,
    /// The sync's tasks: the drains of old sockets after a rollover join them, so that the
    /// sync's `run` returns only once none of them can reach the sink any more.
    pub(crate) tasks: TaskTracker,
    /// The longest life left seen on a token, in milliseconds: what a fresh token gives.
    pub(crate) token_life_ms: AtomicU64,
}

/// The users of one channel: set at start and by each re-discovery, read by the channel's
/// worker whenever it subscribes or resyncs. Each change bumps the version and wakes the
/// worker, which brings the channel's subscription up to date (`POST` of the users added,
/// or `PUT` of the whole list when some were removed).
#[derive(Debug)]
pub(crate) struct ChannelUsers {
    users: parking_lot::Mutex<(Arc<[Guid]>, u64)>,
    /// Users to ask for again at the next update although subscribed before (their topic was
    /// rejected).
    retry: parking_lot::Mutex<Vec<Guid>>,
    changed: tokio::sync::Notify,
}

impl ChannelUsers {
    pub(crate) fn new(users: Arc<[Guid]>) -> ChannelUsers {
        ChannelUsers {
            users: parking_lot::Mutex::new((users, 0)),
            retry: Default::default(),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// The users now.
    pub(crate) fn get(&self) -> Arc<[Guid]> {
        Arc::clone(&self.users.lock().0)
    }

    /// The users now and the version of the list.
    fn snapshot(&self) -> (Arc<[Guid]>, u64) {
        let held = self.users.lock();
        (Arc::clone(&held.0), held.1)
    }

    fn version(&self) -> u64 {
        self.users.lock().1
    }

    /// Sets the users, and those of them to ask for again; wakes the worker.
    pub(crate) fn set(&self, users: Arc<[Guid]>, retry: Vec<Guid>) {
        {
            let mut held = self.users.lock();
            held.0 = users;
            held.1 += 1;
        }
        self.retry.lock().extend(retry);
        self.changed.notify_one();
    }
}

/// A socket connected to take over from the session's current one: to the same channel
/// (after `socket_closing`), or to a new channel holding a rollover slot until the old
/// socket is dropped.
pub(crate) struct Replacement {
    channel: Channel,
    ws: Ws,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Whether `channel` is a new channel (else a new socket to the same one).
    new_channel: bool,
}

/// A replacement on its way.
struct Pending {
    task: JoinHandle<Result<Replacement, SessionError>>,
    cause: ReconnectCause,
    started: Instant,
}

/// What happened to a subscription that extends the channel.
enum Extension {
    /// Subscribed (again) at `at`: the channel lives a lifetime from then. It asked for
    /// `users` (version `version` of the channel's list); `added` were not subscribed
    /// before (or were rejected) and need a resync.
    Done {
        at: Instant,
        users: Arc<[Guid]>,
        version: u64,
        added: Vec<Guid>,
        renewal: bool,
    },
    /// The channel is gone (404).
    Gone,
    /// Failed for now; try again.
    Failed(SessionError),
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    Cancelled,
    /// Reconnect; keep the channel if it may still be valid.
    Reconnect(ReconnectCause, Option<Channel>),
}

/// Why [`ChannelContext::establish`] has no channel to stream.
#[derive(Debug)]
struct SetupFailed {
    /// What was being done, for the log line (`creating channel`, `connecting <id>`).
    context: String,
    error: SessionError,
    /// The channel to try again, if it may still be valid.
    keep: Option<Channel>,
}

/// Opens a WebSocket with the size limits and a connect timeout, through the configured proxy
/// when one applies (see [`crate::transport`]). Messages up to the
/// socket cap ([`SyncConfig::max_socket_message_bytes`]) are read; those over the message cap
/// are then counted and skipped with the socket kept. A message over the socket cap is refused
/// from its frame header, before any of it is buffered, and ends the socket (see
/// [`Decoder::socket_error`]): that cap is what bounds a socket's memory.
pub(crate) async fn connect(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    config: &SyncConfig,
) -> Result<Ws, SessionError> {
    let cap = config.max_socket_message_bytes;
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(cap))
        .max_frame_size(Some(cap))
        // Reads are buffered in chunks of this much; tungstenite's default is 128 KiB.
        .read_buffer_size(cap.min(64 * 1024));
    match timeout(
        config.connect_timeout,
        crate::transport::open(request, ws_config, config),
    )
    .await
    {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            match response.status().as_u16() {
                404 => Err(SessionError::Gone),
                status => Err(SessionError::Refused { status }),
            }
        }
        Ok(Err(source)) => Err(SessionError::Transport { source }),
        Err(_) => Err(SessionError::Timeout {
            after: config.connect_timeout,
        }),
    }
}

/// Decodes the messages that are ready on `ws` without waiting (at most
/// [`DRAIN_MESSAGES`]) into `batch`, stopping at the first that needs the session's
/// attention: a control message (returned), or the end of the stream (left for the
/// session's next read, which then sees the stream end). A close frame read here sets
/// `closed`: the next read sees only the end, and the session must still know that the
/// server closed the socket cleanly.
fn drain_ready(
    decoder: &Decoder,
    ws: &mut Ws,
    context: &str,
    batch: &mut Vec<PresenceEvent>,
    closed: &mut bool,
) -> Control {
    for _ in 0..DRAIN_MESSAGES {
        let control = match ws.next().now_or_never() {
            Some(Some(Ok(Message::Close(_)))) => {
                *closed = true;
                return Control::None;
            }
            // Nothing ready, or the stream's end.
            None | Some(None) => return Control::None,
            Some(Some(Err(e))) => {
                decoder.socket_error(&e, context);
                return Control::None;
            }
            Some(Some(Ok(message))) => decoder.message(&message, context, batch),
        };
        if control != Control::None {
            return control;
        }
    }
    Control::None
}

fn rollover_margin(config: &SyncConfig, channel: &Channel) -> Duration {
    config.rollover_before_expiry.min(channel.lifetime / 4)
}

impl ChannelContext {
    /// Runs channel `index` for `members` until cancelled.
    pub(crate) async fn run(
        self: Arc<Self>,
        index: usize,
        members: Arc<ChannelUsers>,
        cancel: CancellationToken,
    ) {
        let mut attempt = 0u32;
        let mut kept: Option<Channel> = None;
        let mut connected_once = false;
        loop {
            if attempt > 0 {
                let wait = full_jitter(self.config.backoff_base, self.config.backoff_cap, attempt);
                self.status.set_state(index, ChannelState::Backoff);
                log::debug!("channel {index}: next attempt in {wait:?}");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = sleep(wait) => {}
                }
            }
            if cancel.is_cancelled() {
                break;
            }
            let (channel, ws) = match self.establish(index, &members, kept.take()).await {
                Ok(pair) => pair,
                Err(failed) => {
                    log::warn!("channel {index}: {}: {}", failed.context, failed.error);
                    self.status.stats.reconnect(failed.error.reconnect_cause());
                    kept = failed.keep;
                    attempt = attempt.saturating_add(1);
                    continue;
                }
            };
            if connected_once {
                log::info!(
                    "channel {index}: reconnected to {} ({} users); resyncing",
                    channel.id,
                    members.get().len()
                );
            } else {
                log::info!(
                    "channel {index}: connected to {} ({} users)",
                    channel.id,
                    members.get().len()
                );
            }
            connected_once = true;
            let started = Instant::now();
            let end = Arc::clone(&self)
                .session(index, &members, channel, ws, &cancel)
                .await;
            if started.elapsed() >= self.config.healthy_after {
                attempt = 0;
            }
            match end {
                End::Cancelled => break,
                End::Reconnect(cause, keep) => {
                    self.status.stats.reconnect(cause);
                    self.status.update(index, |s| s.reconnects += 1);
                    log::warn!(
                        "channel {index}: lost its socket ({}); reconnecting",
                        cause.as_str()
                    );
                    kept = keep;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
        self.status.set_state(index, ChannelState::Stopped);
        log::debug!("channel {index}: stopped");
    }

    /// Gets a usable channel (the kept one if it still exists and is not near expiry, else a
    /// new one) and connects its socket.
    async fn establish(
        &self,
        index: usize,
        members: &ChannelUsers,
        kept: Option<Channel>,
    ) -> Result<(Channel, Ws), SetupFailed> {
        let reusable = match kept {
            Some(c) if Instant::now() + rollover_margin(&self.config, &c) < c.ends_at() => {
                match channel_exists(&self.client, &c.id).await {
                    Ok(true) => Some(c),
                    Ok(false) => {
                        log::info!("channel {index}: {} is gone; creating a new one", c.id);
                        None
                    }
                    Err(e) => {
                        return Err(SetupFailed {
                            context: "checking channel".into(),
                            error: e.into(),
                            keep: Some(c),
                        });
                    }
                }
            }
            _ => None,
        };
        let channel = match reusable {
            Some(c) => c,
            None => {
                self.status.set_state(index, ChannelState::Setup);
                self.new_channel(members, None)
                    .await
                    .map_err(|error| SetupFailed {
                        context: "creating channel".into(),
                        error,
                        keep: None,
                    })?
            }
        };
        self.status.set_state(index, ChannelState::Connecting);
        self.status
            .update(index, |s| s.channel_id = Some(channel.id.clone()));
        let request = match channel.connect_uri.as_str().into_client_request() {
            Ok(r) => r,
            Err(e) => {
                return Err(SetupFailed {
                    context: "bad connectUri".into(),
                    error: e.into(),
                    keep: None,
                });
            }
        };
        match connect(request, &self.config).await {
            Ok(ws) => Ok((channel, ws)),
            Err(error) => Err(SetupFailed {
                context: format!("connecting {}", channel.id),
                // A channel that is gone cannot be connected again; any other failure may
                // pass.
                keep: match error {
                    SessionError::Gone => None,
                    _ => Some(channel),
                },
                error,
            }),
        }
    }

    /// Asks the resync task for `users`; the answer arrives on the returned receiver.
    fn request_resync(&self, users: &Arc<[Guid]>) -> oneshot::Receiver<ResyncOutcome> {
        let (done, answer) = oneshot::channel();
        let request = ResyncRequest {
            users: Arc::clone(users),
            done,
        };
        if self.resync.try_send(request).is_err() {
            // The queue is full or closed; the dropped sender makes `answer` fail, which is
            // treated as a failed resync and retried.
            log::debug!("resync queue full; will retry");
        }
        answer
    }

    /// Creates a channel for `users` and subscribes it, first getting a fresh token when the
    /// held one has less life left than the channel should live (`lifetime`, or Genesys's 24
    /// hours when no channel has said yet): a channel dies with the token that created it.
    async fn new_channel(
        &self,
        members: &ChannelUsers,
        lifetime: Option<Duration>,
    ) -> Result<Channel, SessionError> {
        let wanted = lifetime.unwrap_or(DEFAULT_CHANNEL_LIFETIME);
        let (token, early) = token_for(&self.client, wanted, &self.token_life_ms).await?;
        if early {
            bump(&self.status.stats.early_token_refreshes);
        }
        let mut channel = create_channel(&self.client, token.expires_at()).await?;
        bump(&self.status.stats.channels_created);
        let (users, version) = members.snapshot();
        self.subscribe(&channel.id, &users, SubscribeMode::Replace)
            .await?;
        channel.subscribed = Some((users, version));
        Ok(channel)
    }

    /// Subscribes `id` to the topics of `users` (the whole list with `Replace`, so that
    /// topics rejected before are asked for again; only these with `Add`) and records which
    /// were rejected. Users accepted again are resynced: their changes while rejected never
    /// streamed.
    async fn subscribe(
        &self,
        id: &str,
        users: &[Guid],
        mode: SubscribeMode,
    ) -> genesys_auth::Result<()> {
        let answer = subscribe(&self.client, id, users, mode).await?;
        let again =
            self.status
                .record_subscription(id, users, &answer.rejected, answer.reason.as_deref());
        if !again.is_empty() {
            // Best effort: a failed resync leaves them to the periodic one.
            drop(self.request_resync(&again.into()));
        }
        Ok(())
    }

    /// Subscribes `channel` to its users as they are now, in the background, first getting a
    /// fresh token when the held one has less life left than the channel's lifetime. Keeps
    /// the channel alive (`renewal`: the whole list again) or brings it up to date after a
    /// re-discovery: only the users added (and those to ask for again) with `POST` when
    /// nobody left, else the whole remaining list with `PUT`. Either restarts the channel's
    /// lifetime.
    fn start_extension(
        self: &Arc<Self>,
        channel: &Channel,
        members: &ChannelUsers,
        renewal: bool,
    ) -> JoinHandle<Extension> {
        let context = Arc::clone(self);
        let id = channel.id.clone();
        let lifetime = channel.lifetime;
        let (users, version) = members.snapshot();
        let retry: Vec<Guid> = std::mem::take(&mut *members.retry.lock());
        let (added, mode) = match &channel.subscribed {
            Some((before, _)) => {
                let before: std::collections::HashSet<Guid> = before.iter().copied().collect();
                let now: std::collections::HashSet<Guid> = users.iter().copied().collect();
                let mut added: Vec<Guid> = users
                    .iter()
                    .copied()
                    .filter(|u| !before.contains(u))
                    .collect();
                added.extend(
                    retry
                        .iter()
                        .filter(|u| before.contains(u) && now.contains(u)),
                );
                let removed = before.iter().any(|u| !now.contains(u));
                let mode = if renewal || removed || added.is_empty() {
                    SubscribeMode::Replace
                } else {
                    SubscribeMode::Add
                };
                (added, mode)
            }
            None => (users.to_vec(), SubscribeMode::Replace),
        };
        tokio::spawn(async move {
            match token_for(&context.client, lifetime, &context.token_life_ms).await {
                Ok((_, early)) => {
                    if early {
                        bump(&context.status.stats.early_token_refreshes);
                    }
                }
                Err(e) => return Extension::Failed(e.into()),
            }
            let requested = Instant::now();
            let asked: &[Guid] = match mode {
                SubscribeMode::Replace => &users,
                SubscribeMode::Add => &added,
            };
            match context.subscribe(&id, asked, mode).await {
                Ok(()) => Extension::Done {
                    at: requested,
                    users,
                    version,
                    added,
                    renewal,
                },
                Err(e) if e.status() == Some(404) => Extension::Gone,
                Err(e) => Extension::Failed(e.into()),
            }
        })
    }

    /// Creates a replacement channel for the same users and connects it, in the background,
    /// once a free channel slot is available. The slot is released when the task's result is
    /// dropped: after the old socket is closed, or when the replacement failed.
    fn start_replacement(
        self: &Arc<Self>,
        channel: &Channel,
        members: &Arc<ChannelUsers>,
    ) -> Pending {
        let context = Arc::clone(self);
        let members = Arc::clone(members);
        let lifetime = channel.lifetime;
        Pending {
            task: tokio::spawn(
                async move { context.replacement_channel(&members, lifetime).await },
            ),
            cause: ReconnectCause::Expiring,
            started: Instant::now(),
        }
    }

    async fn replacement_channel(
        &self,
        members: &ChannelUsers,
        lifetime: Duration,
    ) -> Result<Replacement, SessionError> {
        let slot = Arc::clone(&self.rollover_slots).acquire_owned().await?;
        let channel = self.new_channel(members, Some(lifetime)).await?;
        let request = channel.connect_uri.as_str().into_client_request()?;
        let ws = connect(request, &self.config).await?;
        Ok(Replacement {
            channel,
            ws,
            slot: Some(slot),
            new_channel: true,
        })
    }

    /// After `socket_closing`: connects a new socket to the same channel (the server moves
    /// delivery to it and closes the old one), in the background. Only when the channel is
    /// gone (404) does it create a new channel instead.
    fn start_handover(self: &Arc<Self>, channel: &Channel, members: &Arc<ChannelUsers>) -> Pending {
        let context = Arc::clone(self);
        let members = Arc::clone(members);
        let channel = channel.clone();
        Pending {
            task: tokio::spawn(async move {
                let request = channel.connect_uri.as_str().into_client_request()?;
                match connect(request, &context.config).await {
                    Ok(ws) => Ok(Replacement {
                        channel,
                        ws,
                        slot: None,
                        new_channel: false,
                    }),
                    Err(SessionError::Gone) => {
                        if Instant::now() < channel.ends_at() {
                            log::info!(
                                "channel {} is gone (404) after socket_closing; creating a new one",
                                channel.id
                            );
                            bump(&context.status.stats.socket_closing_new_channels);
                        } else {
                            // Past its end (the process was held up beyond it, say stopped):
                            // the channel died of age, not of the socket_closing read only now.
                            log::info!(
                                "channel {} is gone (404) after socket_closing, past its end; creating a new one",
                                channel.id
                            );
                        }
                        context
                            .replacement_channel(&members, channel.lifetime)
                            .await
                    }
                    Err(e) => Err(e),
                }
            }),
            cause: ReconnectCause::SocketClosing,
            started: Instant::now(),
        }
    }

    /// Streams one connected channel until it must be reconnected or the sync stops.
    /// Handovers (a new socket to the same channel), extensions (subscribing again) and
    /// rollovers (a new channel) happen inside without a gap.
    async fn session(
        self: Arc<Self>,
        index: usize,
        members: &Arc<ChannelUsers>,
        mut channel: Channel,
        mut ws: Ws,
        cancel: &CancellationToken,
    ) -> End {
        let config = &self.config;
        let mut context = format!("channel {index} ({})", channel.id);
        self.status.set_state(index, ChannelState::Resyncing);
        let mut resync = Some(self.request_resync(&members.get()));
        let mut resync_retry_at: Option<Instant> = None;
        let mut resync_attempt = 0u32;
        let mut last_message = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let mut replacement: Option<Pending> = None;
        let mut extension: Option<JoinHandle<Extension>> = None;
        let mut renew_retry_at: Option<Instant> = None;
        let mut renew_attempt = 0u32;
        let mut handover_retry_at: Option<Instant> = None;
        // Whether a close frame of the current socket was read while draining (see
        // `drain_ready`).
        let mut close_read = false;
        let mut batch: Vec<PresenceEvent> = Vec::with_capacity(config.batch_size);
        self.status
            .update(index, |s| s.last_message = Some(last_message));

        loop {
            // A re-discovery changed the channel's users: bring its subscription up to date
            // (after a failure, the retried renewal subscribes the whole list anyway).
            if extension.is_none()
                && replacement.is_none()
                && renew_retry_at.is_none()
                && channel.subscribed.as_ref().map(|s| s.1) != Some(members.version())
            {
                extension = Some(self.start_extension(&channel, members, false));
            }
            // Before the channel ends: subscribe again while its own expiry comes first, else
            // (its token ends first) roll to a new channel made with a fresh token.
            let renew_at = channel.ends_at() - rollover_margin(config, &channel);
            let renew_at = renew_retry_at.map_or(renew_at, |r| r.min(renew_at));
            let renewing = replacement.is_some() || extension.is_some();
            let watchdog_at = match ping_sent {
                Some(at) => at + config.pong_timeout,
                None => last_message + config.idle_before_ping,
            };
            tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = ws.close(None).await;
                    if let Some(pending) = replacement.take() {
                        pending.task.abort();
                    }
                    if let Some(task) = extension.take() {
                        task.abort();
                    }
                    return End::Cancelled;
                }
                message = ws.next() => {
                    let control = match message {
                        ended @ (Some(Ok(Message::Close(_))) | None | Some(Err(_))) => {
                            if let Some(Err(e)) = &ended {
                                self.decoder.socket_error(e, &context);
                            }
                            let closed_cleanly =
                                close_read || matches!(ended, Some(Ok(Message::Close(_))));
                            // A replacement on its way is waited for a little.
                            if let Some(pending) = replacement.take() {
                                let (cause, started) = (pending.cause, pending.started);
                                if let Ok(Ok(Ok(new))) = timeout(config.connect_timeout, pending.task).await {
                                    // A new socket to the same channel took delivery over when it
                                    // connected, and the server then closed this one after
                                    // writing what it had: no gap. A new channel, a broken
                                    // socket or a slow connect may have one: resync.
                                    let handover = !new.new_channel
                                        && closed_cleanly
                                        && started.elapsed() < HANDOVER_TRUST;
                                    self.adopt(index, &mut channel, &mut ws, new, cause, &mut context, cancel);
                                    close_read = false;
                                    last_message = Instant::now();
                                    ping_sent = None;
                                    if !handover {
                                        self.status.set_state(index, ChannelState::Resyncing);
                                        resync = Some(self.request_resync(&members.get()));
                                    }
                                    continue;
                                }
                            }
                            if let Some(task) = extension.take() {
                                task.abort();
                            }
                            return End::Reconnect(ReconnectCause::Closed, Some(channel));
                        }
                        // Ping and pong frames carry nothing (tungstenite answers pings).
                        Some(Ok(message)) => self.decoder.message(&message, &context, &mut batch),
                    };
                    // Messages already read off the socket join the batch, so the registry and
                    // the publisher see one call per burst rather than one per notification.
                    let control = match control {
                        Control::None => drain_ready(&self.decoder, &mut ws, &context, &mut batch, &mut close_read),
                        other => other,
                    };
                    last_message = Instant::now();
                    ping_sent = None;
                    self.status.update(index, |s| s.last_message = Some(last_message));
                    self.decoder.deliver(&*self.sink, &mut batch);
                    let gone = match control {
                        Control::None => false,
                        Control::SocketClosing => {
                            if replacement.is_none() {
                                log::info!("{context}: socket_closing received; connecting a new socket to the same channel");
                                replacement = Some(self.start_handover(&channel, members));
                            }
                            false
                        }
                        Control::NoLongerSubscribed { channel_id: Some(other) }
                            if !other.eq_ignore_ascii_case(&channel.id) =>
                        {
                            log::warn!("{context}: no_longer_subscribed about another channel ({other}); ignored");
                            false
                        }
                        Control::NoLongerSubscribed { .. } => {
                            log::warn!("{context}: no_longer_subscribed; the channel is gone");
                            true
                        }
                        Control::ChannelNotFound => true,
                    };
                    if gone {
                        if let Some(pending) = replacement.take() {
                            pending.task.abort();
                        }
                        if let Some(task) = extension.take() {
                            task.abort();
                        }
                        return End::Reconnect(ReconnectCause::ChannelGone, None);
                    }
                }
                // Only wakes the loop, whose first lines act on the change.
                _ = members.changed.notified() => {}
                _ = sleep_until(watchdog_at) => {
                    if ping_sent.is_none() {
                        log::debug!("{context}: quiet for {:?}; sending ping", config.idle_before_ping);
                        bump(&self.status.stats.pings);
                        ping_sent = Some(Instant::now());
                        if timeout(config.pong_timeout, ws.send(Message::text(PING))).await.is_err() {
                            log::debug!("{context}: ping could not be sent in time");
                        }
                    } else {
                        log::warn!("{context}: no heartbeat, traffic or pong; the socket is dead");
                        if let Some(pending) = replacement.take() {
                            pending.task.abort();
                        }
                        if let Some(task) = extension.take() {
                            task.abort();
                        }
                        return End::Reconnect(ReconnectCause::HeartbeatTimeout, Some(channel));
                    }
                }
                _ = sleep_until(renew_at), if !renewing => {
                    renew_retry_at = None;
                    if channel.extendable() {
                        log::debug!("{context}: expires soon; subscribing again to keep it");
                        extension = Some(self.start_extension(&channel, members, true));
                    } else {
                        log::info!("{context}: the token that created it expires soon; rolling to a new channel");
                        replacement = Some(self.start_replacement(&channel, members));
                    }
                }
                outcome = async { match extension.as_mut() { Some(task) => task.await, None => std::future::pending().await } } => {
                    extension = None;
                    match outcome {
                        Ok(Extension::Done { at, users, version, added, renewal }) => {
                            renew_attempt = 0;
                            channel.expires_at = at + channel.lifetime;
                            channel.subscribed = Some((users, version));
                            if renewal {
                                bump(&self.status.stats.channels_extended);
                                log::info!(
                                    "{context}: kept alive by subscribing again ({}s more)",
                                    channel.lifetime.as_secs()
                                );
                            } else {
                                log::debug!("{context}: subscription brought up to date ({} users added)", added.len());
                            }
                            if !added.is_empty() {
                                // Their presence so far; a failed resync leaves them to the
                                // periodic one or their next change.
                                drop(self.request_resync(&added.into()));
                            }
                        }
                        Ok(Extension::Gone) => {
                            log::warn!("{context}: subscribing again answered 404; the channel is gone");
                            if let Some(pending) = replacement.take() {
                                pending.task.abort();
                            }
                            return End::Reconnect(ReconnectCause::ChannelGone, None);
                        }
                        Ok(Extension::Failed(why)) => {
                            renew_attempt += 1;
                            log::warn!("{context}: subscribing again failed: {why}; retrying");
                            renew_retry_at = Some(Instant::now() + full_jitter(config.backoff_base, config.backoff_cap, renew_attempt));
                        }
                        Err(join) => {
                            log::warn!("{context}: subscription task failed: {join}");
                            renew_retry_at = Some(Instant::now() + config.backoff_base);
                        }
                    }
                }
                outcome = async { match replacement.as_mut() { Some(pending) => (&mut pending.task).await, None => std::future::pending().await } } => {
                    let cause = replacement.take().map_or(ReconnectCause::Expiring, |p| p.cause);
                    match outcome {
                        Ok(Ok(new)) => {
                            renew_attempt = 0;
                            self.adopt(index, &mut channel, &mut ws, new, cause, &mut context, cancel);
                            close_read = false;
                            last_message = Instant::now();
                            ping_sent = None;
                        }
                        Ok(Err(why)) => {
                            renew_attempt += 1;
                            log::warn!("{context}: replacement socket or channel failed: {why}; retrying");
                            let retry_at = Instant::now() + full_jitter(config.backoff_base, config.backoff_cap, renew_attempt.max(2));
                            if cause == ReconnectCause::SocketClosing {
                                // Try the handover again soon; the old socket still streams
                                // until the server closes it.
                                handover_retry_at = Some(retry_at);
                            } else {
                                renew_retry_at = Some(retry_at);
                            }
                        }
                        Err(join) => {
                            log::warn!("{context}: replacement task failed: {join}");
                            renew_retry_at = Some(Instant::now() + config.backoff_base);
                        }
                    }
                }
                answer = async { match resync.as_mut() { Some(rx) => rx.await, None => std::future::pending().await } } => {
                    resync = None;
                    match answer {
                        Ok(Ok(())) => {
                            resync_attempt = 0;
                            self.status.set_state(index, ChannelState::Streaming);
                        }
                        Ok(Err(_)) | Err(_) => {
                            resync_attempt += 1;
                            resync_retry_at = Some(Instant::now() + full_jitter(config.backoff_base, config.backoff_cap, resync_attempt));
                        }
                    }
                }
                _ = async { match resync_retry_at { Some(at) => sleep_until(at).await, None => std::future::pending().await } } => {
                    resync_retry_at = None;
                    resync = Some(self.request_resync(&members.get()));
                }
                _ = async { match handover_retry_at { Some(at) => sleep_until(at).await, None => std::future::pending().await } } => {
                    handover_retry_at = None;
                    if replacement.is_none() {
                        replacement = Some(self.start_handover(&channel, members));
                    }
                }
            }
        }
    }

    /// Switches the session to a replacement socket (on the same channel or a new one); the
    /// old socket is drained and closed in the background, by a task of the sync's tracker that stops (closing the
    /// old socket without forwarding anything more) as soon as the sync is cancelled.
    #[allow(clippy::too_many_arguments)]
    fn adopt(
        &self,
        index: usize,
        channel: &mut Channel,
        ws: &mut Ws,
        new: Replacement,
        cause: ReconnectCause,
        context: &mut String,
        cancel: &CancellationToken,
    ) {
        let Replacement {
            channel: new_channel,
            ws: new_ws,
            slot,
            new_channel: is_new,
        } = new;
        let mut old = std::mem::replace(ws, new_ws);
        let decoder = Arc::clone(&self.decoder);
        let sink = Arc::clone(&self.sink);
        let old_context = context.clone();
        let cancel = cancel.clone();
        self.tasks.spawn(async move {
            // Events sent to the old socket just before the new one connected may still be on
            // their way: read both for a moment (duplicates are harmless, last write wins),
            // then close, still reading what the server sends before its close frame.
            let mut batch = Vec::new();
            let mut forward = |message: Message| {
                let _ = decoder.message(&message, &old_context, &mut batch);
                decoder.deliver(&*sink, &mut batch);
            };
            let drain = async {
                let _ = timeout(ROLLOVER_OVERLAP, async {
                    while let Some(Ok(message)) = old.next().await {
                        forward(message);
                    }
                })
                .await;
                let _ = old.close(None).await;
                // Only once the server has finished the close is the old channel unconnected
                // as far as it knows, and only then may the next rollover create a channel
                // that is allowed to replace it.
                let _ = timeout(Duration::from_secs(5), async {
                    while let Some(Ok(message)) = old.next().await {
                        forward(message);
                    }
                })
                .await;
            };
            let cancelled = tokio::select! {
                biased;
                _ = cancel.cancelled() => true,
                _ = drain => false,
            };
            if cancelled {
                // The sync is stopping: nothing more goes to the sink; say goodbye briefly.
                let _ = timeout(Duration::from_secs(1), old.close(None)).await;
            }
            drop(slot);
        });
        if is_new {
            log::info!(
                "channel {index}: rolled from {} to {} ({})",
                channel.id,
                new_channel.id,
                cause.as_str()
            );
        } else {
            bump(&self.status.stats.socket_handovers);
            log::info!(
                "channel {index}: a new socket to {} took over ({})",
                channel.id,
                cause.as_str()
            );
        }
        *channel = new_channel;
        *context = format!("channel {index} ({})", channel.id);
        self.status.stats.reconnect(cause);
        self.status.update(index, |s| {
            s.reconnects += 1;
            s.channel_id = Some(channel.id.clone());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A `ws://` URL whose server answers the handshake with `status_line`, or never answers
    /// (`None`).
    async fn server(status_line: Option<&'static str>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/channels/c1", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            match status_line {
                Some(line) => {
                    let answer = format!("HTTP/1.1 {line}\r\ncontent-length: 0\r\n\r\n");
                    let _ = socket.write_all(answer.as_bytes()).await;
                }
                None => std::future::pending().await,
            }
        });
        url
    }

    async fn connect_to(url: &str) -> Result<Ws, SessionError> {
        let config = SyncConfig::default().connect_timeout(Duration::from_millis(300));
        connect(url.into_client_request().expect("request"), &config).await
    }

    /// A close frame that arrives in the same burst as the messages before it is read by
    /// `drain_ready`, not by the session's next read, which then sees only the end of the
    /// stream: `drain_ready` says so, or a clean handover would be taken for a lost socket
    /// (and cost a resync).
    #[tokio::test]
    async fn a_close_frame_read_while_draining_is_reported() {
        use presence_frame::GroupMask;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/channels/c1", listener.local_addr().expect("addr"));
        let (sent, burst) = oneshot::channel();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            let mut ws = tokio_tungstenite::accept_async(socket)
                .await
                .expect("handshake");
            for _ in 0..3 {
                ws.feed(Message::text(r#"{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}"#))
                    .await
                    .expect("feed");
            }
            ws.close(None).await.expect("close");
            let _ = sent.send(());
            while ws.next().await.is_some() {}
        });
        let mut ws = connect_to(&url).await.expect("connect");
        burst.await.expect("the burst is written");
        let first = ws.next().await;
        assert!(matches!(first, Some(Ok(Message::Text(_)))), "{first:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let decoder = Decoder::new(
            Arc::default(),
            Arc::new(crate::decode::UserMasks::new(
                Default::default(),
                GroupMask::NONE,
            )),
            None,
            64 * 1024,
        );
        let mut batch = Vec::new();
        let mut closed = false;
        let control = drain_ready(&decoder, &mut ws, "test", &mut batch, &mut closed);
        assert_eq!(control, Control::None);
        assert!(closed, "the close frame was read while draining");
        assert!(!matches!(ws.next().await, Some(Ok(Message::Close(_)))));
    }

    #[tokio::test]
    async fn a_handshake_answered_404_is_a_gone_channel() {
        let error = connect_to(&server(Some("404 Not Found")).await)
            .await
            .expect_err("404");
        assert!(matches!(error, SessionError::Gone), "{error:?}");
        assert_eq!(error.to_string(), "HTTP 404");
        assert_eq!(error.reconnect_cause(), ReconnectCause::ChannelGone);
    }

    #[tokio::test]
    async fn another_status_is_refused_with_that_status() {
        let error = connect_to(&server(Some("401 Unauthorized")).await)
            .await
            .expect_err("401");
        assert!(
            matches!(error, SessionError::Refused { status: 401 }),
            "{error:?}"
        );
        assert_eq!(error.to_string(), "HTTP 401");
        assert_eq!(error.reconnect_cause(), ReconnectCause::ConnectFailed);
    }

    #[tokio::test]
    async fn no_listener_is_a_transport_error_with_its_source() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("ws://{}/channels/c1", listener.local_addr().expect("addr"));
        drop(listener);
        let error = connect_to(&url).await.expect_err("refused");
        assert!(matches!(error, SessionError::Transport { .. }), "{error:?}");
        assert!(std::error::Error::source(&error).is_some());
        assert_eq!(error.reconnect_cause(), ReconnectCause::ConnectFailed);
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout() {
        let error = connect_to(&server(None).await)
            .await
            .expect_err("no answer");
        assert!(
            matches!(error, SessionError::Timeout { after } if after == Duration::from_millis(300)),
            "{error:?}"
        );
        assert_eq!(error.to_string(), "no answer within 300ms");
    }
}
