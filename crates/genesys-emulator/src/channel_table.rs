//! [`ChannelTable`]: every notification channel (its owner, token, expiry, topics and
//! connected socket) and, by user, which channels want that user's presence.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use presence_frame::EventTime;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::control::Control;

/// Events delivered and lost on one channel.
#[derive(Debug, Default)]
pub(crate) struct ChannelCounters {
    pub(crate) delivered: AtomicU64,
    pub(crate) lost: AtomicU64,
}

/// The connected socket of a channel.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) conn_id: u64,
    pub(crate) events: mpsc::Sender<Utf8Bytes>,
    pub(crate) control: mpsc::UnboundedSender<Control>,
    pub(crate) stalled: Arc<AtomicBool>,
}

/// A granted topic.
#[derive(Clone, Debug)]
pub(crate) struct Topic {
    /// As the client spelled it.
    pub(crate) name: String,
    /// The user whose presence events it delivers (`None` for topics that deliver nothing
    /// here, such as `routingStatus`).
    pub(crate) presence_of: Option<u32>,
}

/// A notification channel.
#[derive(Debug)]
pub(crate) struct Channel {
    pub(crate) id: Arc<str>,
    pub(crate) client_id: Arc<str>,
    /// The token that created it.
    pub(crate) token: Arc<str>,
    /// Creation order, for "oldest".
    pub(crate) serial: u64,
    pub(crate) expires_at: Instant,
    pub(crate) expires_wall: EventTime,
    pub(crate) topics: Vec<Topic>,
    pub(crate) connection: Option<Connection>,
    pub(crate) counters: Arc<ChannelCounters>,
}

impl Channel {
    pub(crate) fn summary(&self, connect_base: &str) -> Value {
        json!({
            "connectUri": format!("{connect_base}/channels/{}", self.id),
            "id": &*self.id,
            "expires": self.expires_wall.to_rfc3339(),
        })
    }

    pub(crate) fn topics_json(&self) -> Vec<Value> {
        self.topics
            .iter()
            .map(|t| json!({"id": t.name, "state": "Permitted"}))
            .collect()
    }
}

/// Every channel, and which channels want each user's presence.
#[derive(Debug)]
pub(crate) struct ChannelTable {
    pub(crate) channels: HashMap<Arc<str>, Channel>,
    /// Channel ids subscribed to each user's presence, by user index.
    by_user: Vec<Vec<Arc<str>>>,
    /// Number of (channel, user) presence subscriptions, so dispatch can skip all work
    /// when nobody listens.
    subscriptions: usize,
    pub(crate) next_serial: u64,
}

impl ChannelTable {
    pub(crate) fn new(users: usize) -> ChannelTable {
        ChannelTable {
            channels: HashMap::new(),
            by_user: vec![Vec::new(); users],
            subscriptions: 0,
            next_serial: 0,
        }
    }

    pub(crate) fn has_subscriptions(&self) -> bool {
        self.subscriptions > 0
    }

    /// The channels subscribed to `user`'s presence.
    pub(crate) fn subscribers(&self, user: u32) -> &[Arc<str>] {
        self.by_user.get(user as usize).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn insert(&mut self, channel: Channel) {
        self.channels.insert(channel.id.clone(), channel);
    }

    /// Removes a channel and its subscriptions.
    pub(crate) fn remove(&mut self, id: &str) -> Option<Channel> {
        let channel = self.channels.remove(id)?;
        self.unindex(&channel.id, &channel.topics);
        Some(channel)
    }

    fn unindex(&mut self, id: &Arc<str>, topics: &[Topic]) {
        for user in topics.iter().filter_map(|t| t.presence_of) {
            if let Some(list) = self.by_user.get_mut(user as usize)
                && let Some(at) = list.iter().position(|c| c == id)
            {
                list.swap_remove(at);
                self.subscriptions -= 1;
            }
        }
    }

    /// Replaces a channel's topics.
    pub(crate) fn set_topics(&mut self, id: &str, topics: Vec<Topic>) {
        let Some(channel) = self.channels.get_mut(id) else {
            return;
        };
        let old = std::mem::replace(&mut channel.topics, topics.clone());
        let id = channel.id.clone();
        self.unindex(&id, &old);
        for user in topics.iter().filter_map(|t| t.presence_of) {
            if let Some(list) = self.by_user.get_mut(user as usize) {
                list.push(id.clone());
                self.subscriptions += 1;
            }
        }
    }

    /// Removes every channel that has expired by `now`, or whose token is in `dead_tokens`.
    pub(crate) fn sweep(&mut self, now: Instant, dead_tokens: &HashSet<Arc<str>>) -> Vec<Channel> {
        let gone: Vec<Arc<str>> = self
            .channels
            .values()
            .filter(|c| c.expires_at <= now || dead_tokens.contains(&c.token))
            .map(|c| c.id.clone())
            .collect();
        gone.iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Forgets the connection `conn_id` of channel `id` (if it is still the current one).
    pub(crate) fn disconnect(&mut self, id: &str, conn_id: u64) {
        if let Some(channel) = self.channels.get_mut(id)
            && channel.connection.as_ref().map(|c| c.conn_id) == Some(conn_id)
        {
            channel.connection = None;
        }
    }

    pub(crate) fn owned<'a>(&'a self, id: &str, client: &str, now: Instant) -> Option<&'a Channel> {
        self.channels
            .get(id)
            .filter(|c| &*c.client_id == client && c.expires_at > now)
    }

    /// A live channel by id, whoever owns it.
    pub(crate) fn live(&self, id: &str, now: Instant) -> Option<&Channel> {
        self.channels.get(id).filter(|c| c.expires_at > now)
    }

    pub(crate) fn live_mut(&mut self, id: &str, now: Instant) -> Option<&mut Channel> {
        self.channels.get_mut(id).filter(|c| c.expires_at > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_indexes_subscriptions() {
        let mut table = ChannelTable::new(4);
        let now = Instant::now();
        for name in ["a", "b"] {
            table.insert(Channel {
                id: Arc::from(name),
                client_id: Arc::from("c"),
                token: Arc::from(format!("t-{name}")),
                serial: 0,
                expires_at: now + std::time::Duration::from_secs(10),
                expires_wall: EventTime(0),
                topics: Vec::new(),
                connection: None,
                counters: Arc::default(),
            });
        }
        let topic = |u| Topic {
            name: format!("u{u}"),
            presence_of: Some(u),
        };
        table.set_topics("a", vec![topic(1), topic(2)]);
        table.set_topics("b", vec![topic(2)]);
        assert_eq!(table.subscribers(2).len(), 2);
        table.set_topics("a", vec![topic(3)]);
        assert!(table.subscribers(1).is_empty());
        assert_eq!(table.subscribers(2).len(), 1);
        let dead: HashSet<Arc<str>> = [Arc::from("t-b")].into_iter().collect();
        let gone = table.sweep(now, &dead);
        assert_eq!(gone.len(), 1);
        assert!(table.subscribers(2).is_empty());
        assert!(table.has_subscriptions());
        let gone = table.sweep(now + std::time::Duration::from_secs(10), &HashSet::new());
        assert_eq!(gone.len(), 1);
        assert!(!table.has_subscriptions());
    }
}
