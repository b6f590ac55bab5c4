//! The janitor task: sweeps expired tokens and channels (and, when channels close with
//! their token, the channels of expired tokens), closing their sockets.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::channels;
use crate::state::Shared;

/// How often expired channels and tokens are swept.
const JANITOR_PERIOD: Duration = Duration::from_millis(250);

/// Sweeps expired channels and tokens until cancelled.
pub(crate) async fn run_janitor(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(JANITOR_PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = Instant::now();
        let mut dead = shared.tokens.lock().sweep(now);
        if !shared.config.channels_close_with_token {
            dead.clear();
        }
        let gone = shared.channels.lock().sweep(now, &dead);
        channels::close_expired(&shared, gone);
    }
}
