//! Org churn: users created, deleted, deactivated, reactivated and moved between groups, one at
//! a time on demand ([`create`], [`end`], [`reactivate`], [`set_groups`], behind
//! `EmulatorHandle`'s methods) or at [`churn_per_day`](crate::EmulatorConfig::churn_per_day)
//! by the churn task.
//!
//! What a change means everywhere else: the listings (`state=active`, group members,
//! `expand=groups`), bulk presence and `/emulator/truth` read [`Org`](crate::org::Org), so
//! they follow at once; a deleted user's topics are refused at subscribe time (the refused
//! set of `refuse_topics`); a user no longer active makes no presence change, so an existing
//! subscription to it delivers nothing more. A created user starts with a presence dated at
//! its creation; a reactivated one comes back with the presence it had, its `modifiedDate`
//! unchanged (nothing changed it while it was inactive).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use crate::org::Membership;
use crate::rng::Rng;
use crate::state::Shared;
use crate::workload::stream;

/// Creates the next spare user; its presence is dated now. `None` when none is left.
pub(crate) fn create(shared: &Shared) -> Option<u32> {
    let user = shared.org.write().create()?;
    let now_ms = shared.clock.now_ms();
    if let Some(p) = shared.presence.write().get_mut(user as usize) {
        p.modified_ms = p.modified_ms.max(now_ms);
    }
    shared
        .counters
        .users_created
        .fetch_add(1, Ordering::Relaxed);
    Some(user)
}

/// Deactivates or deletes an active user; false when it was not active.
pub(crate) fn end(shared: &Shared, user: u32, to: Membership) -> bool {
    if !shared.org.write().end(user, to) {
        return false;
    }
    let counter = match to {
        Membership::Deleted => {
            // Genesys refuses the topics of deleted users.
            shared.refused_users.write().insert(user);
            &shared.counters.users_deleted
        }
        _ => &shared.counters.users_deactivated,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    true
}

/// Makes a deactivated user active again, with the presence and groups it had; false when it
/// was not deactivated.
pub(crate) fn reactivate(shared: &Shared, user: u32) -> bool {
    if !shared.org.write().reactivate(user) {
        return false;
    }
    shared
        .counters
        .users_reactivated
        .fetch_add(1, Ordering::Relaxed);
    true
}

/// Sets an active user's groups; false when it is not active or nothing changed.
pub(crate) fn set_groups(shared: &Shared, user: u32, groups: u64) -> bool {
    let valid = if shared.world.groups.len() >= 64 {
        u64::MAX
    } else {
        (1u64 << shared.world.groups.len()) - 1
    };
    if !shared.org.write().set_groups(user, groups & valid) {
        return false;
    }
    shared.counters.users_moved.fetch_add(1, Ordering::Relaxed);
    true
}

/// One random change: a creation, a deletion, a deactivation, a reactivation or a move,
/// equally likely. Returns whether anything changed (a creation with no spare left, a
/// reactivation with no deactivated user, or a move in an org without groups, changes
/// nothing).
fn random_change(shared: &Shared, rng: &mut Rng) -> bool {
    let pick = |rng: &mut Rng, users: &[u32]| {
        (!users.is_empty()).then(|| users[rng.below(users.len() as u64) as usize])
    };
    let pick_active = |rng: &mut Rng| pick(rng, shared.org.read().active());
    match rng.below(5) {
        0 => create(shared).is_some(),
        1 => pick_active(rng).is_some_and(|u| end(shared, u, Membership::Deleted)),
        2 => pick_active(rng).is_some_and(|u| end(shared, u, Membership::Inactive)),
        3 => {
            let inactive = shared.org.read().with_membership(Membership::Inactive);
            pick(rng, &inactive).is_some_and(|u| reactivate(shared, u))
        }
        _ => {
            let groups = shared.world.groups.len().min(64) as u64;
            let Some(user) = pick_active(rng) else {
                return false;
            };
            if groups == 0 {
                return false;
            }
            let mut mask = shared.org.read().groups(user);
            // Leave one group (if in any) and join another.
            let current: Vec<u64> = (0..groups).filter(|g| mask & (1 << g) != 0).collect();
            if !current.is_empty() {
                mask &= !(1 << current[rng.below(current.len() as u64) as usize]);
            }
            let others: Vec<u64> = (0..groups).filter(|g| !current.contains(g)).collect();
            if !others.is_empty() {
                mask |= 1 << others[rng.below(others.len() as u64) as usize];
            }
            set_groups(shared, user, mask)
        }
    }
}

/// Changes the org at the configured rate until cancelled; nothing while quiesced.
pub(crate) async fn run_churn(shared: Arc<Shared>) {
    let config = &shared.config;
    let per_second = config.churn_per_day * f64::from(config.users) / config.day.as_secs_f64();
    if per_second <= 0.0 || !per_second.is_finite() {
        return;
    }
    let mut rng = Rng::new(config.seed, stream::CHURN);
    // Often enough for the rate, never more than the generator's tick.
    let every = config.tick.max(std::time::Duration::from_millis(10));
    let mut last = Instant::now();
    let mut carry = 0.0f64;
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let _tick = shared.tick_lock.lock().await;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        last = now;
        if shared.is_quiesced() {
            // Time quiesced makes no backlog.
            carry = 0.0;
            continue;
        }
        let due = (per_second * elapsed + carry).min(per_second + 1.0);
        let count = due.floor();
        carry = due - count;
        for _ in 0..count as u64 {
            random_change(&shared, &mut rng);
        }
    }
}
