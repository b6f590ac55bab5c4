//! Fault injection: applying a [`Fault`] to the running emulator, counting where it landed,
//! and chaos mode, which injects faults at random.

use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;

use crate::bursts::{ApiFaults, Burst};
use crate::control::Control;
use crate::error::Result;
use crate::fault::{BurstScope, Fault, FaultKind, FaultTarget, Landed};
use crate::rng::Rng;
use crate::server::Shared;
use crate::wire;
use crate::workload::stream;

impl Shared {
    /// Injects `fault`; returns how many sockets it was sent to, channels it removed or
    /// tokens it expired, or for a burst how many calls will get it.
    ///
    /// The statistics count it as requested now, and as injected only where it lands: a
    /// socket fault when a socket acts on it, a burst when a call is answered with it.
    pub(crate) fn inject(&self, fault: &Fault) -> Result<usize> {
        fault.validate()?;
        self.count_requested(fault.kind());
        let applied = match fault {
            Fault::RateLimitBurst {
                count,
                scope,
                retry_after_secs,
            } => {
                let retry_after_secs = retry_after_secs.unwrap_or(1);
                self.bursts(*scope)
                    .lock()
                    .push(Burst::RateLimited { retry_after_secs }, *count);
                *count as usize
            }
            Fault::ServerErrorBurst {
                count,
                scope,
                status,
            } => {
                let status = status.unwrap_or(503);
                self.bursts(*scope)
                    .lock()
                    .push(Burst::ServerError { status }, *count);
                *count as usize
            }
            Fault::ExpireTokens => {
                let expired = self.expire_all_tokens();
                self.count_hit(FaultKind::ExpireTokens, Landed::Token, expired as u64);
                expired
            }
            Fault::NoLongerSubscribed { target } => {
                let removed = self.remove_channels(target)?;
                self.count_hit(
                    FaultKind::NoLongerSubscribed,
                    Landed::Channel,
                    removed as u64,
                );
                removed
            }
            socket_fault => {
                let target = socket_fault.target().cloned().unwrap_or_default();
                let mut sent = 0;
                for socket in self.connected_sockets(&target)? {
                    if let Some(message) =
                        self.socket_control(socket_fault, socket.is_relay, socket.user)
                        && socket.control.send(message).is_ok()
                    {
                        sent += 1;
                    }
                }
                sent
            }
        };
        log::info!("fault {} injected ({applied} hit)", fault.kind().as_str());
        Ok(applied)
    }

    fn bursts(&self, scope: BurstScope) -> &parking_lot::Mutex<ApiFaults> {
        match scope {
            BurstScope::Login => &self.login_faults,
            _ => &self.api_faults,
        }
    }

    /// The control message that carries a socket fault to one socket.
    pub(crate) fn socket_control(
        &self,
        fault: &Fault,
        is_relay: bool,
        user: Option<u32>,
    ) -> Option<Control> {
        Some(match fault {
            Fault::DropSocket { .. } => Control::Drop,
            Fault::StallSocket { .. } => Control::Stall,
            Fault::SocketClosing { grace_ms, .. } if !is_relay => {
                let grace = grace_ms
                    .map(Duration::from_millis)
                    .unwrap_or(self.config.socket_closing_grace);
                Control::SocketClosing {
                    grace,
                    message: wire::socket_closing(self.random_guid()),
                }
            }
            Fault::Garbage { .. } if is_relay => Control::Send {
                kind: FaultKind::Garbage,
                message: Message::Binary(vec![0xA5; 17].into()),
            },
            Fault::Garbage { .. } => Control::Send {
                kind: FaultKind::Garbage,
                message: Message::text(
                    "<html><body>502 Bad Gateway</body></html> \u{fffd} not json",
                ),
            },
            Fault::TruncatedJson { .. } => {
                let full = self.sample_notification(user.unwrap_or(0));
                let mut cut = full.len() / 2;
                while !full.is_char_boundary(cut) {
                    cut -= 1;
                }
                Control::Send {
                    kind: FaultKind::TruncatedJson,
                    message: Message::text(&full[..cut]),
                }
            }
            Fault::Oversized { bytes, .. } => {
                let bytes = bytes.unwrap_or(self.config.oversized_message_bytes);
                if is_relay {
                    // Never a whole number of frames, so it cannot be mistaken for data.
                    let len = if bytes % 16 == 0 { bytes + 1 } else { bytes };
                    Control::Send {
                        kind: FaultKind::Oversized,
                        message: Message::Binary(vec![0xA5; len].into()),
                    }
                } else {
                    Control::Send {
                        kind: FaultKind::Oversized,
                        message: Message::text(wire::oversized(bytes)),
                    }
                }
            }
            _ => return None,
        })
    }

    /// A presence notification of the user's current state.
    fn sample_notification(&self, user: u32) -> String {
        let presence = self.presence.read().get(user as usize).copied();
        match presence {
            Some(p) => wire::presence_notification(
                &self.world,
                user,
                &p,
                self.config.notification_spelling,
                self.config.notification_modified_date,
                self.random_guid(),
            ),
            None => wire::HEARTBEAT.to_owned(),
        }
    }

    fn count_requested(&self, kind: FaultKind) {
        *self
            .counters
            .faults_requested
            .lock()
            .entry(kind.as_str())
            .or_insert(0) += 1;
    }

    /// Counts `n` applications of a fault of `kind` where it `landed`; none when `n` is 0, so
    /// a kind shows in the statistics only once it hit something.
    pub(crate) fn count_hit(&self, kind: FaultKind, landed: Landed, n: u64) {
        if n == 0 {
            return;
        }
        let mut hits = self.counters.fault_hits.lock();
        let hits = hits.entry(kind.as_str()).or_default();
        let field = match landed {
            Landed::ChannelSocket => &mut hits.channel_sockets,
            Landed::RelaySocket => &mut hits.relay_sockets,
            Landed::Channel => &mut hits.channels,
            Landed::Token => &mut hits.tokens,
            Landed::ApiCall => &mut hits.api_calls,
            Landed::TokenRequest => &mut hits.token_requests,
        };
        *field += n;
    }
}

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
        let channel = shared.random_connected_channel(&mut rng);
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
        if let Err(error) = shared.inject(&fault) {
            log::debug!("chaos fault {} not injected: {error}", kind.as_str());
        }
    }
}
