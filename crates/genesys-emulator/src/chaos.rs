//! Chaos mode: a task that injects faults at random, as a Poisson process at
//! [`ChaosConfig::faults_per_minute`](crate::ChaosConfig::faults_per_minute), each of a kind
//! drawn from [`ChaosConfig::kinds`](crate::ChaosConfig::kinds), aimed at a connected channel
//! chosen at random (or the relay); a maintenance wave hits every channel socket at once.

use std::sync::Arc;
use std::time::Duration;

use crate::channels;
use crate::fault::{BurstScope, Fault, FaultKind, FaultTarget};
use crate::inject;
use crate::rng::Rng;
use crate::state::Shared;
use crate::workload::stream;

/// Runs chaos mode until cancelled, re-reading its config whenever it changes.
pub(crate) async fn run_chaos(shared: Arc<Shared>) {
    let mut rng = Rng::new(shared.config.seed, stream::CHAOS);
    loop {
        let chaos = shared.chaos.lock().clone();
        let changed = shared.chaos_changed.notified();
        if chaos.faults_per_minute <= 0.0 || chaos.kinds.is_empty() {
            tokio::select! {
                _ = shared.cancel.cancelled() => return,
                _ = changed => continue,
            }
        }
        // Exponential gap between faults: a Poisson process.
        let mean = 60.0 / chaos.faults_per_minute;
        let gap = -mean * (1.0 - rng.next_f64()).ln();
        let gap = Duration::from_secs_f64(gap.min(86_400.0));
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = changed => continue,
            _ = tokio::time::sleep(gap) => {}
        }
        let kind = chaos.kinds[rng.below(chaos.kinds.len() as u64) as usize];
        let channel = channels::random_connected_channel(&shared, &mut rng);
        let target = || match &channel {
            Some(id) => FaultTarget::Channel(id.clone()),
            None => FaultTarget::Relay,
        };
        let fault = match kind {
            FaultKind::DropSocket => Fault::DropSocket { target: target() },
            FaultKind::StallSocket => Fault::StallSocket { target: target() },
            FaultKind::SocketClosing => Fault::SocketClosing {
                target: target(),
                grace_ms: None,
            },
            FaultKind::MaintenanceWave => Fault::MaintenanceWave { grace_ms: None },
            FaultKind::Garbage => Fault::Garbage { target: target() },
            FaultKind::TruncatedJson => Fault::TruncatedJson { target: target() },
            FaultKind::Oversized => Fault::Oversized {
                target: target(),
                bytes: None,
            },
            FaultKind::RateLimitBurst => Fault::RateLimitBurst {
                count: 1 + rng.below(5) as u32,
                scope: BurstScope::Api,
                retry_after_secs: Some(1 + rng.below(3)),
            },
            FaultKind::ServerErrorBurst => Fault::ServerErrorBurst {
                count: 1 + rng.below(3) as u32,
                scope: BurstScope::Api,
                status: Some([502, 503, 504][rng.below(3) as usize]),
            },
            FaultKind::ExpireTokens => Fault::ExpireTokens,
            FaultKind::NoLongerSubscribed => match &channel {
                Some(id) => Fault::NoLongerSubscribed {
                    target: FaultTarget::Channel(id.clone()),
                },
                None => continue,
            },
        };
        if let Err(error) = inject::inject(&shared, &fault) {
            log::debug!("chaos fault {} not injected: {error}", kind.as_str());
        }
    }
}
