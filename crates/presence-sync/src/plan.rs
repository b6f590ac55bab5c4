//! Splitting the watched users over notification channels.

use presence_frame::Guid;

use crate::error::{Error, Result};

/// Which users go on which channel: chunks of at most `per_channel` topics, at most
/// `max_channels` channels (the caller keeps one of Genesys's 20 free for rollovers).
///
/// ```
/// use presence_frame::Guid;
/// use presence_sync::ChannelPlan;
///
/// let users: Vec<Guid> = (0..2_500u128).map(Guid).collect();
/// let plan = ChannelPlan::new(users, 1_000, 19)?;
/// assert_eq!(plan.channels().iter().map(|c| c.len()).collect::<Vec<_>>(), [834, 833, 833]);
/// # Ok::<(), presence_sync::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelPlan {
    channels: Vec<Vec<Guid>>,
}

impl ChannelPlan {
    /// Plans channels for `users` (deduplicated, sorted). Users are spread evenly over the
    /// fewest channels that hold them, so each channel has headroom and a per-channel resync
    /// costs the same everywhere.
    pub fn new(
        mut users: Vec<Guid>,
        per_channel: usize,
        max_channels: usize,
    ) -> Result<ChannelPlan> {
        users.sort_unstable();
        users.dedup();
        let per_channel = per_channel.max(1);
        let needed = users.len().div_ceil(per_channel);
        if needed > max_channels {
            return Err(Error::TooManyChannels {
                users: users.len(),
                needed,
                per_channel,
                max: max_channels,
            });
        }
        let count = needed.max(usize::from(!users.is_empty()));
        let mut channels = Vec::with_capacity(count);
        let mut rest = users.as_slice();
        for i in 0..count {
            let take = rest.len().div_ceil(count - i);
            let (head, tail) = rest.split_at(take);
            channels.push(head.to_vec());
            rest = tail;
        }
        Ok(ChannelPlan { channels })
    }

    /// The users of each channel.
    pub fn channels(&self) -> &[Vec<Guid>] {
        &self.channels
    }

    /// Users in all.
    pub fn users(&self) -> usize {
        self.channels.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_than_the_topic_limit_and_every_user_once() {
        for n in [0usize, 1, 999, 1000, 1001, 2500, 19_000] {
            let users: Vec<Guid> = (0..n as u128).map(Guid).collect();
            let plan = ChannelPlan::new(users, 1000, 19).expect("fits");
            assert!(
                plan.channels()
                    .iter()
                    .all(|c| c.len() <= 1000 && !c.is_empty())
            );
            assert_eq!(plan.users(), n);
            assert_eq!(plan.channels().len(), n.div_ceil(1000));
        }
    }

    #[test]
    fn too_many_users_is_a_clear_error() {
        let users: Vec<Guid> = (0..19_001u128).map(Guid).collect();
        let err = ChannelPlan::new(users, 1000, 19).expect_err("too many");
        let text = err.to_string();
        assert!(
            text.contains("19001 users need 20 notification channels"),
            "{text}"
        );
    }
}
