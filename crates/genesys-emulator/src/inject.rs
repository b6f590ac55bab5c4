//! Fault injection: applying a [`Fault`] to the running emulator (to its sockets, channels,
//! tokens or next calls), and counting it as requested; where it lands counts it as
//! injected ([`Shared::count_hit`]).
//!
//! Socket faults act on sockets connected when they are injected; API faults act on the next
//! API calls; see [`Fault`] for each one.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::auth;
use crate::bursts::{ApiFaults, Burst};
use crate::channel_table::Channel;
use crate::channels;
use crate::control::Control;
use crate::error::{Error, Result};
use crate::fault::{BurstScope, Fault, FaultKind, FaultTarget, Landed};
use crate::state::Shared;
use crate::wire;

/// A connected socket, as a fault sees it.
pub(crate) struct SocketRef {
    pub(crate) control: mpsc::UnboundedSender<Control>,
    pub(crate) is_relay: bool,
    /// A user the channel is subscribed to, for a truncated notification.
    pub(crate) user: Option<u32>,
}

/// Injects `fault`; returns how many sockets it was sent to, channels it removed or
/// tokens it expired, or for a burst how many calls will get it.
///
/// The statistics count it as requested now, and as injected only where it lands: a
/// socket fault when a socket acts on it, a burst when a call is answered with it.
pub(crate) fn inject(shared: &Shared, fault: &Fault) -> Result<usize> {
    fault.validate()?;
    count_requested(shared, fault.kind());
    let applied = match fault {
        Fault::RateLimitBurst {
            count,
            scope,
            retry_after_secs,
        } => {
            let retry_after_secs = retry_after_secs.unwrap_or(1);
            bursts(shared, *scope)
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
            bursts(shared, *scope)
                .lock()
                .push(Burst::ServerError { status }, *count);
            *count as usize
        }
        Fault::ExpireTokens => {
            let expired = auth::expire_all_tokens(shared);
            shared.count_hit(FaultKind::ExpireTokens, Landed::Token, expired as u64);
            expired
        }
        Fault::NoLongerSubscribed { target } => {
            let removed = channels::remove_channels(shared, target)?;
            shared.count_hit(
                FaultKind::NoLongerSubscribed,
                Landed::Channel,
                removed as u64,
            );
            removed
        }
        Fault::MaintenanceWave { .. } => {
            // Every channel socket at once; relay sockets have no maintenance warning.
            let mut sent = 0;
            for socket in connected_sockets(shared, &FaultTarget::All)? {
                if !socket.is_relay
                    && let Some(message) = socket_control(shared, fault, false, socket.user)
                    && socket.control.send(message).is_ok()
                {
                    sent += 1;
                }
            }
            sent
        }
        socket_fault => {
            let target = socket_fault.target().cloned().unwrap_or_default();
            let mut sent = 0;
            for socket in connected_sockets(shared, &target)? {
                if let Some(message) =
                    socket_control(shared, socket_fault, socket.is_relay, socket.user)
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

fn bursts(shared: &Shared, scope: BurstScope) -> &parking_lot::Mutex<ApiFaults> {
    match scope {
        BurstScope::Login => &shared.login_faults,
        _ => &shared.api_faults,
    }
}

/// The control message that carries a socket fault to one socket.
pub(crate) fn socket_control(
    shared: &Shared,
    fault: &Fault,
    is_relay: bool,
    user: Option<u32>,
) -> Option<Control> {
    Some(match fault {
        Fault::DropSocket { .. } => Control::Drop,
        Fault::StallSocket { .. } => Control::Stall,
        Fault::SocketClosing { grace_ms, .. } | Fault::MaintenanceWave { grace_ms }
            if !is_relay =>
        {
            let grace = grace_ms
                .map(Duration::from_millis)
                .unwrap_or(shared.config.socket_closing_grace);
            Control::SocketClosing {
                kind: fault.kind(),
                grace,
                message: wire::socket_closing(shared.random_guid()),
            }
        }
        Fault::Garbage { .. } if is_relay => Control::Send {
            kind: FaultKind::Garbage,
            message: Message::Binary(vec![0xA5; 17].into()),
        },
        Fault::Garbage { .. } => Control::Send {
            kind: FaultKind::Garbage,
            message: Message::text("<html><body>502 Bad Gateway</body></html> \u{fffd} not json"),
        },
        Fault::TruncatedJson { .. } => {
            let full = sample_notification(shared, user.unwrap_or(0));
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
            let bytes = bytes.unwrap_or(shared.config.oversized_message_bytes);
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
fn sample_notification(shared: &Shared, user: u32) -> String {
    let presence = shared.presence.read().get(user as usize).copied();
    match presence {
        Some(p) => wire::presence_notification(
            &shared.world,
            user,
            &p,
            shared.config.notification_spelling,
            shared.config.notification_modified_date,
            shared.random_guid(),
        ),
        None => wire::HEARTBEAT.to_owned(),
    }
}

fn count_requested(shared: &Shared, kind: FaultKind) {
    *shared
        .counters
        .faults_requested
        .lock()
        .entry(kind.as_str())
        .or_insert(0) += 1;
}

/// Sockets hit by a socket fault aimed at `target`, with the first subscribed user of
/// each channel (for a truncated notification).
pub(crate) fn connected_sockets(shared: &Shared, target: &FaultTarget) -> Result<Vec<SocketRef>> {
    let mut out = Vec::new();
    let channel_socket = |c: &Channel| {
        c.connection.as_ref().map(|conn| SocketRef {
            control: conn.control.clone(),
            is_relay: false,
            user: c.topics.iter().find_map(|t| t.presence_of),
        })
    };
    match target {
        FaultTarget::Channel(id) => {
            let table = shared.channels.lock();
            let channel = table
                .live(id, Instant::now())
                .ok_or_else(|| Error::UnknownChannel { id: id.clone() })?;
            out.extend(channel_socket(channel));
        }
        FaultTarget::All | FaultTarget::Relay => {
            if *target == FaultTarget::All {
                let table = shared.channels.lock();
                out.extend(table.channels.values().filter_map(channel_socket));
            }
            let relay = shared.relay_conns.lock();
            out.extend(relay.values().map(|c| SocketRef {
                control: c.clone(),
                is_relay: true,
                user: None,
            }));
        }
    }
    Ok(out)
}
