//! [`Control`]: the orders a socket's task takes, from fault injection, the channel table
//! and the janitor.

use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;

use crate::fault::FaultKind;

/// Orders to a socket's task, from faults and from the channel table.
#[derive(Debug)]
pub(crate) enum Control {
    /// Another socket connected to the same channel: close this one.
    Kick,
    /// The channel expired (or its token did): close with a close frame.
    Close {
        /// The close frame's reason.
        reason: &'static str,
    },
    /// The channel was removed: send this message, then close.
    Gone {
        /// The `no_longer_subscribed` system message, or (for an expired channel, when
        /// [`socket_404_message`](crate::EmulatorConfig::socket_404_message) is on) the
        /// `{"result":"404",...}` message without a topic.
        message: String,
    },
    /// Close TCP without a close frame.
    Drop,
    /// Stop sending and reading.
    Stall,
    /// Send the maintenance warning, close after `grace`.
    SocketClosing {
        /// The fault it carries (`socket_closing` or `maintenance_wave`), counted once the
        /// warning is written.
        kind: FaultKind,
        /// Time until the close.
        grace: Duration,
        /// The `v2.system.socket_closing` message.
        message: String,
    },
    /// Send this message as is (garbage, truncated, oversized).
    Send {
        /// The fault it carries, counted once the message is written.
        kind: FaultKind,
        /// The message.
        message: Message,
    },
}
