//! The running emulator: [`Emulator::start`], the HTTP router that maps each endpoint to the
//! module that serves it, and the [`EmulatorHandle`] that owns the background tasks
//! (generator, janitor, chaos) and stops them. Nothing else in the crate imports this file.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::{get, head, post};
use presence_frame::{EventTime, Guid};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::admin::{self, Stats, TruthEntry};
use crate::auth;
use crate::channels;
use crate::chaos;
use crate::churn;
use crate::config::{ClientCredentials, EmulatorConfig};
use crate::error::{Error, Result};
use crate::fault::{BurstScope, ChaosConfig, Fault, FaultTarget};
use crate::generator;
use crate::inject;
use crate::janitor;
use crate::org::Membership;
use crate::rest;
use crate::socket;
use crate::state::Shared;
use crate::wire;

/// How long [`EmulatorHandle::shutdown`] waits for tasks to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/users", get(rest::list_users))
        .route("/users/presences/purecloud/bulk", get(rest::bulk_presences))
        .route("/groups", get(rest::list_groups))
        .route("/groups/{id}/members", get(rest::group_members))
        .route("/presence/definitions", get(rest::definitions))
        .route(
            "/notifications/channels",
            get(channels::list).post(channels::create),
        )
        .route("/notifications/channels/{id}", head(channels::head))
        .route(
            "/notifications/channels/{id}/subscriptions",
            get(channels::get_subscriptions)
                .post(channels::post_subscriptions)
                .put(channels::put_subscriptions)
                .delete(channels::delete_subscriptions),
        )
        .fallback(api_not_found)
        .layer(from_fn_with_state(shared.clone(), auth::api_guard));
    Router::new()
        .nest("/api/v2", api)
        .route("/oauth/token", post(auth::oauth_token))
        .route("/channels/{id}", get(socket::channel_socket))
        .route("/relay", get(socket::relay_socket))
        .route("/emulator/truth", get(admin::truth))
        .route("/emulator/stats", get(admin::stats))
        .route("/emulator/quiesce", post(admin::quiesce))
        .route("/emulator/resume", post(admin::resume))
        .route("/emulator/faults", post(admin::faults))
        .route("/emulator/chaos", post(admin::chaos))
        .route("/emulator/rate", post(admin::rate))
        .fallback(not_found)
        .with_state(shared)
}

async fn api_not_found() -> Response {
    wire::not_found("No such API resource in the emulator")
}

async fn not_found() -> Response {
    wire::not_found("No such resource")
}

/// Starts emulators. See the [crate documentation](crate) for an example.
#[derive(Debug)]
pub struct Emulator;

impl Emulator {
    /// Validates `config`, binds `addr` (port 0 picks a free port) and starts serving.
    /// Must be called inside a tokio runtime; the emulator's tasks run on it until the
    /// returned handle is shut down or dropped.
    pub async fn start(config: EmulatorConfig, addr: SocketAddr) -> Result<EmulatorHandle> {
        config.validate()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        Emulator::start_on(config, listener).await
    }

    /// Like [`start`](Emulator::start), on a listener the caller bound.
    pub async fn start_on(config: EmulatorConfig, listener: TcpListener) -> Result<EmulatorHandle> {
        config.validate()?;
        let mut addr = listener
            .local_addr()
            .map_err(|source| Error::LocalAddr { source })?;
        if addr.ip().is_unspecified() {
            let loopback = match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            };
            addr.set_ip(loopback);
        }
        let (api_startup, socket_startup): (Vec<Fault>, Vec<Fault>) = config
            .startup_faults
            .iter()
            .cloned()
            .partition(|f| f.target().is_none());
        let shared = Arc::new(Shared::new(config, addr, socket_startup));
        for fault in &api_startup {
            inject::inject(&shared, fault)?;
        }
        let app = router(shared.clone());
        let cancel = shared.cancel.clone();
        shared.tracker.spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
            if let Err(error) = serve.await {
                log::error!("emulator server failed: {error}");
            }
        });
        shared
            .tracker
            .spawn(generator::run_generator(shared.clone()));
        shared.tracker.spawn(janitor::run_janitor(shared.clone()));
        shared.tracker.spawn(chaos::run_chaos(shared.clone()));
        shared.tracker.spawn(churn::run_churn(shared.clone()));
        log::info!(
            "emulator listening on http://{addr} ({} users, {} changes/s)",
            shared.world.users.len(),
            shared.change_rate()
        );
        Ok(EmulatorHandle { shared })
    }
}

/// A running emulator. Dropping it stops the emulator (without waiting);
/// [`shutdown`](EmulatorHandle::shutdown) stops it and waits for its tasks.
pub struct EmulatorHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorHandle")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

impl EmulatorHandle {
    /// The address it listens on (an unspecified bind address shows as loopback).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://host:port`: the base of both login (`/oauth/token`) and API (`/api/v2/...`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// `ws://host:port/relay`: the binary relay (needs a bearer token).
    pub fn relay_url(&self) -> String {
        format!("ws://{}/relay", self.shared.addr)
    }

    /// The first OAuth client's id (see [`clients`](Self::clients) for all of them).
    pub fn client_id(&self) -> &str {
        &self.shared.config.client_id
    }

    /// The first OAuth client's secret (see [`clients`](Self::clients) for all of them).
    pub fn client_secret(&self) -> &str {
        self.shared.config.client_secret.expose_secret()
    }

    /// Every OAuth client it accepts, the first one first (see
    /// [`EmulatorConfig::clients`] and [`EmulatorConfig::extra_client`]). Each has its own
    /// channels and channel limit; each token its own rate limit.
    pub fn clients(&self) -> Vec<ClientCredentials> {
        self.shared
            .clients
            .iter()
            .map(|c| c.credentials.clone())
            .collect()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EmulatorConfig {
        &self.shared.config
    }

    /// The emulator's clock now (wall time at start plus tokio's elapsed time).
    pub fn now(&self) -> EventTime {
        EventTime(self.shared.clock.now_ms())
    }

    /// Every user's GUID, by relay id: the spare users too (see
    /// [`EmulatorConfig::spare_users`]), whether or not created, deactivated or deleted since.
    /// [`active_user_ids`](Self::active_user_ids) has those active now.
    pub fn user_ids(&self) -> Vec<Guid> {
        self.shared.world.users.iter().map(|u| u.guid).collect()
    }

    /// The GUIDs of the users active now, by relay id.
    pub fn active_user_ids(&self) -> Vec<Guid> {
        let org = self.shared.org.read();
        org.active()
            .iter()
            .map(|&u| self.shared.world.users[u as usize].guid)
            .collect()
    }

    /// Creates the next spare user (see [`EmulatorConfig::spare_users`]): from now on it is
    /// listed, has a presence dated now, changes presence and may be subscribed. `None` when
    /// no spare user is left.
    pub fn create_user(&self) -> Option<Guid> {
        let user = churn::create(&self.shared)?;
        Some(self.shared.world.users[user as usize].guid)
    }

    /// Deletes an active user: it is listed nowhere (but `state=deleted`), absent from the
    /// truth and bulk presence, makes no more changes (its subscriptions deliver nothing), and
    /// its topic is refused at subscribe time. Returns whether it was active.
    pub fn delete_user(&self, user: Guid) -> bool {
        self.user_index(user)
            .is_some_and(|u| churn::end(&self.shared, u, Membership::Deleted))
    }

    /// Deactivates an active user: listed only with `state=inactive`, absent from the truth
    /// and bulk presence, no more changes. Its topic may still be subscribed. Returns whether
    /// it was active.
    pub fn deactivate_user(&self, user: Guid) -> bool {
        self.user_index(user)
            .is_some_and(|u| churn::end(&self.shared, u, Membership::Inactive))
    }

    /// Makes a deactivated user active again, as a Genesys administrator can: listed with
    /// `state=active` and in the truth again, with the groups and the presence it had (its
    /// `modifiedDate` unchanged: nothing changed it while it was inactive), and changing
    /// presence again. Returns whether it was deactivated (a deleted user cannot come back).
    pub fn reactivate_user(&self, user: Guid) -> bool {
        self.user_index(user)
            .is_some_and(|u| churn::reactivate(&self.shared, u))
    }

    /// Sets an active user's groups to those of `groups` (indices into
    /// [`group_ids`](Self::group_ids); others ignored): group member listings,
    /// `expand=groups`, relay frames and the truth follow. Returns whether anything changed.
    pub fn set_user_groups(&self, user: Guid, groups: &[usize]) -> bool {
        let mask = groups
            .iter()
            .filter(|&&g| g < 64)
            .fold(0u64, |mask, &g| mask | (1 << g));
        self.user_index(user)
            .is_some_and(|u| churn::set_groups(&self.shared, u, mask))
    }

    fn user_index(&self, user: Guid) -> Option<u32> {
        self.shared.world.by_guid.get(&user).copied()
    }

    /// Every group's GUID; group `i` is bit `i` of the group mask.
    pub fn group_ids(&self) -> Vec<Guid> {
        self.shared.world.groups.iter().map(|g| g.guid).collect()
    }

    /// Every user's current state (what `GET /emulator/truth` returns).
    pub fn truth(&self) -> Vec<TruthEntry> {
        admin::read_truth(&self.shared)
    }

    /// The counters (what `GET /emulator/stats` returns).
    pub fn stats(&self) -> Stats {
        admin::read_stats(&self.shared)
    }

    /// Stops making changes; returns once a batch in progress has been dispatched, so the
    /// truth no longer moves.
    pub async fn quiesce(&self) {
        self.shared.quiesce().await;
    }

    /// Starts making changes again.
    pub fn resume(&self) {
        self.shared.resume();
    }

    /// Sets the change rate (changes per second; 0 stops changes).
    pub fn set_change_rate(&self, per_second: f64) -> Result<()> {
        self.shared.set_change_rate(per_second)
    }

    /// Switches chaos mode (random faults) on, off or to new settings.
    pub fn set_chaos(&self, chaos: ChaosConfig) -> Result<()> {
        self.shared.set_chaos(chaos)
    }

    /// Injects a fault; returns how many sockets, channels, tokens or calls it hit.
    pub fn inject(&self, fault: Fault) -> Result<usize> {
        inject::inject(&self.shared, &fault)
    }

    /// Closes the target sockets without a close frame.
    pub fn drop_sockets(&self, target: FaultTarget) -> Result<usize> {
        self.inject(Fault::DropSocket { target })
    }

    /// Stalls the target sockets (no output, no reading, TCP kept open).
    pub fn stall_sockets(&self, target: FaultTarget) -> Result<usize> {
        self.inject(Fault::StallSocket { target })
    }

    /// Sends `v2.system.socket_closing` and closes after `grace`.
    pub fn socket_closing(&self, target: FaultTarget, grace: Duration) -> Result<usize> {
        self.inject(Fault::SocketClosing {
            target,
            grace_ms: Some(grace.as_millis() as u64),
        })
    }

    /// Sends a message that is not JSON (relay: a binary message of invalid length).
    pub fn send_garbage(&self, target: FaultTarget) -> Result<usize> {
        self.inject(Fault::Garbage { target })
    }

    /// Sends half of a presence notification.
    pub fn send_truncated_json(&self, target: FaultTarget) -> Result<usize> {
        self.inject(Fault::TruncatedJson { target })
    }

    /// Sends one message of `bytes` bytes.
    pub fn send_oversized(&self, target: FaultTarget, bytes: usize) -> Result<usize> {
        self.inject(Fault::Oversized {
            target,
            bytes: Some(bytes),
        })
    }

    /// The next `count` API calls get 429 with `Retry-After: retry_after_secs`.
    pub fn rate_limit_burst(&self, count: u32, retry_after_secs: u64) -> Result<usize> {
        self.inject(Fault::RateLimitBurst {
            count,
            scope: BurstScope::Api,
            retry_after_secs: Some(retry_after_secs),
        })
    }

    /// The next `count` API calls get `status` (500 to 599).
    pub fn server_error_burst(&self, count: u32, status: u16) -> Result<usize> {
        self.inject(Fault::ServerErrorBurst {
            count,
            scope: BurstScope::Api,
            status: Some(status),
        })
    }

    /// The next `count` token requests (`POST /oauth/token`) get `status` (500 to 599).
    pub fn login_error_burst(&self, count: u32, status: u16) -> Result<usize> {
        self.inject(Fault::ServerErrorBurst {
            count,
            scope: BurstScope::Login,
            status: Some(status),
        })
    }

    /// Expires every token issued so far.
    pub fn expire_tokens(&self) -> Result<usize> {
        self.inject(Fault::ExpireTokens)
    }

    /// Sends `v2.system.socket_closing` to every connected channel socket at once (a
    /// maintenance wave), each closed after `grace`.
    pub fn maintenance_wave(&self, grace: Duration) -> Result<usize> {
        self.inject(Fault::MaintenanceWave {
            grace_ms: Some(grace.as_millis() as u64),
        })
    }

    /// From now on, subscriptions refuse the topics of these users (unknown ids are
    /// ignored), as Genesys refuses those of deleted users: a request holding one fails
    /// whole (403) without `ignoreErrors=true`, and with it the topic comes back `Rejected`.
    /// Existing subscriptions are left alone. Returns how many users are refused now.
    pub fn refuse_topics(&self, users: &[Guid]) -> usize {
        let mut refused = self.shared.refused_users.write();
        refused.extend(
            users
                .iter()
                .filter_map(|g| self.shared.world.by_guid.get(g).copied()),
        );
        refused.len()
    }

    /// Undoes [`refuse_topics`](Self::refuse_topics) for these users. Returns how many
    /// users are still refused.
    pub fn permit_topics(&self, users: &[Guid]) -> usize {
        let mut refused = self.shared.refused_users.write();
        for user in users
            .iter()
            .filter_map(|g| self.shared.world.by_guid.get(g))
        {
            refused.remove(user);
        }
        refused.len()
    }

    /// Sends `no_longer_subscribed` to the target channels and removes them.
    pub fn no_longer_subscribed(&self, target: FaultTarget) -> Result<usize> {
        self.inject(Fault::NoLongerSubscribed { target })
    }

    /// Stops the emulator: closes sockets (with a close frame), stops serving, and waits
    /// (up to a few seconds) for every task to end.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.shared.tracker.wait())
            .await
            .is_err()
        {
            log::warn!("emulator tasks still running after {SHUTDOWN_GRACE:?}");
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
    }
}
