//! Who is in the organisation now: each user's state (active, deactivated, deleted, or a
//! spare not created yet) and current groups, changed by churn. Plain data: the
//! [`World`](crate::workload::World) stays as built; this is what moved since.

use crate::workload::World;

/// A user's place in the organisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Membership {
    /// Listed with `state=active`, changes presence, truth shows it.
    Active,
    /// Deactivated: listed with `state=inactive` only, no presence changes, absent from truth.
    Inactive,
    /// Deleted: listed nowhere (`state=deleted` aside), its topics refused.
    Deleted,
    /// A spare user not created yet: listed nowhere, unknown to every endpoint.
    Spare,
}

impl Membership {
    /// The `state` field of a user object.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Membership::Active => "active",
            Membership::Inactive => "inactive",
            Membership::Deleted | Membership::Spare => "deleted",
        }
    }
}

/// The organisation's users now.
#[derive(Debug)]
pub(crate) struct Org {
    membership: Vec<Membership>,
    /// Each user's current group mask (bit `i`: group `i`).
    groups: Vec<u64>,
    /// Active users, ascending: the `state=active` listing pages over this.
    active: Vec<u32>,
    /// The next spare user to create.
    next_spare: u32,
}

impl Org {
    /// The organisation at start: the first `users` users active with their built groups, the
    /// rest spare.
    pub(crate) fn new(world: &World, users: u32) -> Org {
        let total = world.users.len() as u32;
        Org {
            membership: (0..total)
                .map(|u| {
                    if u < users {
                        Membership::Active
                    } else {
                        Membership::Spare
                    }
                })
                .collect(),
            groups: world.users.iter().map(|u| u.groups).collect(),
            active: (0..users.min(total)).collect(),
            next_spare: users.min(total),
        }
    }

    pub(crate) fn membership(&self, user: u32) -> Membership {
        self.membership
            .get(user as usize)
            .copied()
            .unwrap_or(Membership::Spare)
    }

    pub(crate) fn is_active(&self, user: u32) -> bool {
        self.membership(user) == Membership::Active
    }

    /// Whether the user exists (created, even if since deactivated or deleted).
    pub(crate) fn exists(&self, user: u32) -> bool {
        self.membership(user) != Membership::Spare
    }

    pub(crate) fn groups(&self, user: u32) -> u64 {
        self.groups.get(user as usize).copied().unwrap_or(0)
    }

    /// Active users, ascending.
    pub(crate) fn active(&self) -> &[u32] {
        &self.active
    }

    /// Users in `membership`, ascending.
    pub(crate) fn with_membership(&self, membership: Membership) -> Vec<u32> {
        (0..self.membership.len() as u32)
            .filter(|&u| self.membership[u as usize] == membership)
            .collect()
    }

    /// Active members of group `group`, ascending.
    pub(crate) fn members(&self, group: usize) -> Vec<u32> {
        self.active
            .iter()
            .copied()
            .filter(|&u| group < 64 && self.groups(u) & (1 << group) != 0)
            .collect()
    }

    /// Creates the next spare user; `None` when none is left.
    pub(crate) fn create(&mut self) -> Option<u32> {
        let user = self.next_spare;
        if self.membership(user) != Membership::Spare || user as usize >= self.membership.len() {
            return None;
        }
        self.next_spare += 1;
        self.membership[user as usize] = Membership::Active;
        // Spares are created in order, after every other user: the list stays sorted.
        self.active.push(user);
        Some(user)
    }

    /// Ends an active user's membership (`Inactive` or `Deleted`); false when it was not
    /// active.
    pub(crate) fn end(&mut self, user: u32, to: Membership) -> bool {
        if !self.is_active(user) || to == Membership::Active || to == Membership::Spare {
            return false;
        }
        self.membership[user as usize] = to;
        if let Ok(at) = self.active.binary_search(&user) {
            self.active.remove(at);
        }
        true
    }

    /// Makes a deactivated user active again (with the groups it had); false when it was not
    /// deactivated. A deleted user cannot come back.
    pub(crate) fn reactivate(&mut self, user: u32) -> bool {
        if self.membership(user) != Membership::Inactive {
            return false;
        }
        self.membership[user as usize] = Membership::Active;
        if let Err(at) = self.active.binary_search(&user) {
            self.active.insert(at, user);
        }
        true
    }

    /// Sets an active user's groups; false when it is not active or nothing changed.
    pub(crate) fn set_groups(&mut self, user: u32, groups: u64) -> bool {
        if !self.is_active(user) || self.groups(user) == groups {
            return false;
        }
        self.groups[user as usize] = groups;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EmulatorConfig;

    #[test]
    fn creation_deletion_and_moves_keep_the_listings_right() {
        let config = EmulatorConfig::default().users(5).spare_users(2).groups(2);
        let world = World::build(&config);
        let mut org = Org::new(&world, 5);
        assert_eq!(org.active(), [0, 1, 2, 3, 4]);
        assert!(!org.exists(5));
        assert_eq!(org.create(), Some(5));
        assert_eq!(org.create(), Some(6));
        assert_eq!(org.create(), None);
        assert!(org.end(2, Membership::Deleted));
        assert!(org.end(3, Membership::Inactive));
        assert!(!org.end(3, Membership::Deleted));
        assert_eq!(org.active(), [0, 1, 4, 5, 6]);
        assert_eq!(org.with_membership(Membership::Inactive), [3]);
        assert!(org.reactivate(3));
        assert!(!org.reactivate(3), "active already");
        assert!(!org.reactivate(2), "a deleted user stays deleted");
        assert_eq!(org.active(), [0, 1, 3, 4, 5, 6], "sorted");
        assert!(org.end(3, Membership::Inactive));
        assert!(org.set_groups(0, 0b10));
        assert!(!org.set_groups(0, 0b10));
        assert!(!org.set_groups(2, 0b01));
        assert!(org.members(1).contains(&0));
        assert!(!org.members(0).contains(&0));
        assert!(org.members(0).iter().all(|&u| org.is_active(u)));
    }
}
