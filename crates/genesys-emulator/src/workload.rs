//! The emulated organisation (users, groups, presence definitions) and the presence workload
//! that changes it: which user changes, to what, and when.
//!
//! Everything here is pure and seeded: the same config gives the same organisation and the
//! same sequence of changes.

use std::collections::HashMap;

use presence_frame::{Guid, Location, Status};

use crate::config::EmulatorConfig;
use crate::rng::{Kind, Rng, derived_guid};

/// Presence messages users pick from. Some need JSON escaping on purpose.
pub(crate) const MESSAGES: [&str; 8] = [
    "",
    "Back in 10 minutes",
    "Working from \"home\" today",
    "On a customer call",
    "Außer Haus — zurück um 14:00",
    "🍕 lunch",
    "Line one\nline two",
    "Tab\tand \\ backslash",
];

/// User-defined presences (type `User`) and the system presence each maps onto.
const CUSTOM_DEFINITIONS: [(&str, Status); 4] = [
    ("Lunch", Status::MEAL),
    ("Focus time", Status::BUSY),
    ("Coffee break", Status::BREAK),
    ("Huddle", Status::MEETING),
];

/// Probability that a user entering a status with a custom definition takes it.
const CUSTOM_DEFINITION_CHANCE: f64 = 0.3;

/// Number of system statuses (codes 0 to 9).
const SYSTEM_STATUSES: usize = 10;

/// Transition weights from each status (row, by code) to each status (column, by code):
/// Offline, Available, Busy, Away, Break, Meal, Meeting, Training, On Queue, Idle.
const TRANSITIONS: [[u16; SYSTEM_STATUSES]; SYSTEM_STATUSES] = [
    [0, 60, 10, 0, 0, 0, 0, 5, 25, 0],
    [5, 0, 15, 10, 10, 5, 10, 3, 35, 7],
    [5, 50, 0, 10, 5, 5, 10, 0, 15, 0],
    [10, 60, 10, 0, 0, 0, 0, 0, 20, 0],
    [5, 50, 0, 0, 0, 0, 0, 0, 45, 0],
    [5, 55, 0, 0, 0, 0, 0, 0, 40, 0],
    [5, 60, 15, 0, 0, 0, 0, 0, 20, 0],
    [10, 60, 0, 0, 0, 0, 0, 0, 30, 0],
    [5, 30, 10, 8, 15, 10, 5, 2, 0, 15],
    [10, 40, 0, 10, 0, 0, 0, 0, 40, 0],
];

/// How users are spread over statuses at start.
const INITIAL: [u16; SYSTEM_STATUSES] = [35, 20, 5, 4, 3, 2, 3, 1, 25, 2];

/// How far before start the initial `modifiedDate`s go back, in milliseconds (8 hours).
const INITIAL_SPREAD_MS: u64 = 8 * 3600 * 1000;

/// Seed streams, so that each use of randomness is independent of the others.
pub(crate) mod stream {
    pub(crate) const WORLD: u64 = 1;
    pub(crate) const INITIAL: u64 = 2;
    pub(crate) const CHANGES: u64 = 3;
    pub(crate) const MISC: u64 = 4;
    pub(crate) const CHAOS: u64 = 5;
    pub(crate) const CHURN: u64 = 6;
}

/// A user of the organisation: what does not change.
#[derive(Clone, Debug)]
pub(crate) struct UserInfo {
    pub(crate) guid: Guid,
    /// Bit `i` set when the user is in group `i`.
    pub(crate) groups: u64,
    pub(crate) location: Location,
}

/// A group of the organisation.
#[derive(Clone, Debug)]
pub(crate) struct GroupInfo {
    pub(crate) guid: Guid,
    pub(crate) name: String,
    /// Member indices, ascending.
    pub(crate) members: Vec<u32>,
}

/// A presence definition of the organisation.
#[derive(Clone, Debug)]
pub(crate) struct Definition {
    pub(crate) guid: Guid,
    pub(crate) status: Status,
    /// The label of a user-defined presence; `None` for a system one.
    pub(crate) custom_label: Option<&'static str>,
}

/// A user's presence: what the workload changes. Small and `Copy` so millions fit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct UserPresence {
    pub(crate) status: Status,
    /// Index into [`World::definitions`].
    pub(crate) definition: u8,
    /// Index into [`MESSAGES`].
    pub(crate) message: u8,
    /// Unix milliseconds of the last change (strictly increasing per user).
    pub(crate) modified_ms: i64,
}

/// One change made by the generator: the user's presence after it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Change {
    pub(crate) user: u32,
    pub(crate) presence: UserPresence,
}

/// The organisation as built: users (the spare ones too), groups and presence definitions.
/// Immutable once built; who is active and in which groups now is [`Org`](crate::org::Org).
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) users: Vec<UserInfo>,
    pub(crate) by_guid: HashMap<Guid, u32>,
    pub(crate) groups: Vec<GroupInfo>,
    pub(crate) group_by_guid: HashMap<Guid, usize>,
    pub(crate) definitions: Vec<Definition>,
    /// Index of the custom definition of each system status, if it has one.
    custom_by_status: [Option<u8>; SYSTEM_STATUSES],
    pub(crate) division: Guid,
}

impl World {
    pub(crate) fn build(config: &EmulatorConfig) -> World {
        let seed = config.seed;
        let mut rng = Rng::new(seed, stream::WORLD);
        let group_count = config.groups as usize;
        let mut groups: Vec<GroupInfo> = (0..group_count)
            .map(|i| GroupInfo {
                guid: derived_guid(seed, Kind::Group, i as u64),
                name: format!("Emulated Group {i}"),
                members: Vec::new(),
            })
            .collect();
        // Spare users (not created yet) come after the others, so that they change none of
        // the others' draws.
        let total = config.users + config.spare_users;
        let mut users = Vec::with_capacity(total as usize);
        let mut by_guid = HashMap::with_capacity(total as usize);
        for index in 0..total {
            let guid = derived_guid(seed, Kind::User, u64::from(index));
            let mut mask = 0u64;
            if group_count > 0 {
                let count = rng.below(u64::from(config.max_groups_per_user) + 1);
                for _ in 0..count {
                    // Pick distinct groups; a few retries are plenty for count <= groups.
                    for _ in 0..8 {
                        let g = rng.below(group_count as u64);
                        if mask & (1 << g) == 0 {
                            mask |= 1 << g;
                            break;
                        }
                    }
                }
            }
            for (g, group) in groups.iter_mut().enumerate() {
                if mask & (1 << g) != 0 {
                    group.members.push(index);
                }
            }
            let location = if rng.chance(0.6) {
                Location::DESK
            } else {
                Location::REMOTE
            };
            by_guid.insert(guid, index);
            users.push(UserInfo {
                guid,
                groups: mask,
                location,
            });
        }
        let group_by_guid = groups
            .iter()
            .enumerate()
            .map(|(i, g)| (g.guid, i))
            .collect();

        let mut definitions: Vec<Definition> = (0..SYSTEM_STATUSES)
            .map(|code| Definition {
                guid: derived_guid(seed, Kind::Definition, code as u64),
                status: Status(code as u8),
                custom_label: None,
            })
            .collect();
        let mut custom_by_status = [None; SYSTEM_STATUSES];
        if config.custom_definitions {
            for (label, status) in CUSTOM_DEFINITIONS {
                let index = definitions.len();
                definitions.push(Definition {
                    guid: derived_guid(seed, Kind::Definition, index as u64),
                    status,
                    custom_label: Some(label),
                });
                custom_by_status[usize::from(status.code())] = Some(index as u8);
            }
        }
        World {
            users,
            by_guid,
            groups,
            group_by_guid,
            definitions,
            custom_by_status,
            division: derived_guid(seed, Kind::Division, 0),
        }
    }

    /// The definition a user takes on entering `status`.
    fn definition_for(&self, status: Status, rng: &mut Rng) -> u8 {
        let code = usize::from(status.code()).min(SYSTEM_STATUSES - 1);
        match self.custom_by_status[code] {
            Some(custom) if rng.chance(CUSTOM_DEFINITION_CHANCE) => custom,
            _ => code as u8,
        }
    }

    /// Every user's presence at start, with `modifiedDate`s spread over the 8 hours before
    /// `start_ms`.
    pub(crate) fn initial_presence(&self, seed: u64, start_ms: i64) -> Vec<UserPresence> {
        let mut rng = Rng::new(seed, stream::INITIAL);
        (0..self.users.len())
            .map(|_| {
                let status = Status(weighted(&mut rng, &INITIAL) as u8);
                let definition = self.definition_for(status, &mut rng);
                let message = pick_message(&mut rng, 0);
                let back = rng.below(INITIAL_SPREAD_MS) as i64 + 1;
                UserPresence {
                    status,
                    definition,
                    message,
                    modified_ms: start_ms - back,
                }
            })
            .collect()
    }
}

/// Index drawn with the given weights (at least one is non-zero).
fn weighted(rng: &mut Rng, weights: &[u16]) -> usize {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let mut roll = rng.below(total.max(1));
    for (i, &w) in weights.iter().enumerate() {
        let w = u64::from(w);
        if roll < w {
            return i;
        }
        roll -= w;
    }
    0
}

/// A message for a new status: mostly none.
fn pick_message(rng: &mut Rng, _current: u8) -> u8 {
    if rng.chance(0.75) {
        0
    } else {
        (1 + rng.below(MESSAGES.len() as u64 - 1)) as u8
    }
}

/// Draws the changes: which users, and their next presence.
#[derive(Debug)]
pub(crate) struct Generator {
    rng: Rng,
    /// Cumulative Zipf weights by rank; empty for a uniform choice.
    cdf: Vec<f64>,
    /// The user at each popularity rank (a seeded shuffle, so the busy users are spread out).
    rank_to_user: Vec<u32>,
    message_change_fraction: f64,
    /// Whether the next shift change starts a shift (else it ends one).
    shift_starts: bool,
}

impl Generator {
    pub(crate) fn new(config: &EmulatorConfig) -> Generator {
        let mut rng = Rng::new(config.seed, stream::CHANGES);
        let n = (config.users + config.spare_users) as usize;
        let mut rank_to_user: Vec<u32> = (0..config.users + config.spare_users).collect();
        for i in (1..n).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            rank_to_user.swap(i, j);
        }
        let cdf = if config.skew > 0.0 {
            let mut total = 0.0;
            (0..n)
                .map(|rank| {
                    total += 1.0 / ((rank + 1) as f64).powf(config.skew);
                    total
                })
                .collect()
        } else {
            Vec::new()
        };
        Generator {
            rng,
            cdf,
            rank_to_user,
            message_change_fraction: config.message_change_fraction,
            shift_starts: true,
        }
    }

    fn pick_user(&mut self) -> u32 {
        let n = self.rank_to_user.len();
        let rank = match self.cdf.last() {
            Some(&total) => {
                let target = self.rng.next_f64() * total;
                self.cdf.partition_point(|&c| c <= target).min(n - 1)
            }
            None => self.rng.below(n as u64) as usize,
        };
        self.rank_to_user[rank]
    }

    /// The presence after a routine change of `current`.
    fn next_presence(&mut self, world: &World, current: UserPresence, now_ms: i64) -> UserPresence {
        let modified_ms = now_ms.max(current.modified_ms + 1);
        if self.rng.chance(self.message_change_fraction) {
            let step = 1 + self.rng.below(MESSAGES.len() as u64 - 1) as u8;
            return UserPresence {
                message: (current.message + step) % MESSAGES.len() as u8,
                modified_ms,
                ..current
            };
        }
        let row = usize::from(current.status.code()).min(SYSTEM_STATUSES - 1);
        let status = Status(weighted(&mut self.rng, &TRANSITIONS[row]) as u8);
        self.enter(world, status, current, modified_ms)
    }

    fn enter(
        &mut self,
        world: &World,
        status: Status,
        current: UserPresence,
        modified_ms: i64,
    ) -> UserPresence {
        UserPresence {
            status,
            definition: world.definition_for(status, &mut self.rng),
            message: pick_message(&mut self.rng, current.message),
            modified_ms,
        }
    }

    /// Makes `count` routine changes, applying them to `presence` and appending them to `out`.
    pub(crate) fn generate(
        &mut self,
        world: &World,
        presence: &mut [UserPresence],
        count: usize,
        now_ms: i64,
        out: &mut Vec<Change>,
    ) {
        for _ in 0..count {
            let user = self.pick_user();
            let Some(slot) = presence.get_mut(user as usize) else {
                continue;
            };
            let next = self.next_presence(world, *slot, now_ms);
            *slot = next;
            out.push(Change {
                user,
                presence: next,
            });
        }
    }

    /// A shift change: about `fraction` of all users start (go Available or On Queue from
    /// Offline) or end (go Offline) a shift at once, alternately. Users are drawn with
    /// replacement, so a user may change twice in the same millisecond (the second change's
    /// `modifiedDate` is bumped by 1 ms).
    pub(crate) fn shift_change(
        &mut self,
        world: &World,
        presence: &mut [UserPresence],
        fraction: f64,
        now_ms: i64,
        out: &mut Vec<Change>,
    ) {
        let n = presence.len();
        let picks = (n as f64 * fraction).round() as usize;
        let starting = self.shift_starts;
        self.shift_starts = !self.shift_starts;
        for _ in 0..picks {
            let user = self.rng.below(n as u64) as usize;
            let current = presence[user];
            let modified_ms = now_ms.max(current.modified_ms + 1);
            let next = if starting {
                if current.status == Status::OFFLINE {
                    let status = if self.rng.chance(0.6) {
                        Status::ON_QUEUE
                    } else {
                        Status::AVAILABLE
                    };
                    self.enter(world, status, current, modified_ms)
                } else {
                    self.next_presence(world, current, now_ms)
                }
            } else if current.status != Status::OFFLINE {
                UserPresence {
                    status: Status::OFFLINE,
                    definition: world.definition_for(Status::OFFLINE, &mut self.rng),
                    message: 0,
                    modified_ms,
                }
            } else {
                continue;
            };
            presence[user] = next;
            out.push(Change {
                user: user as u32,
                presence: next,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(users: u32) -> (EmulatorConfig, World) {
        let config = EmulatorConfig::default().users(users).seed(9);
        let world = World::build(&config);
        (config, world)
    }

    #[test]
    fn world_is_deterministic_and_consistent() {
        let (config, a) = world(500);
        let b = World::build(&config);
        assert_eq!(
            a.users.iter().map(|u| u.guid).collect::<Vec<_>>(),
            b.users.iter().map(|u| u.guid).collect::<Vec<_>>()
        );
        assert_eq!(a.by_guid.len(), 500, "user GUIDs are distinct");
        for (g, group) in a.groups.iter().enumerate() {
            for &m in &group.members {
                assert_ne!(a.users[m as usize].groups & (1 << g), 0);
            }
        }
        let in_groups: usize = a.groups.iter().map(|g| g.members.len()).sum();
        let by_mask: u32 = a.users.iter().map(|u| u.groups.count_ones()).sum();
        assert_eq!(in_groups, by_mask as usize);
        assert!(a.users.iter().all(|u| u.groups.count_ones() <= 2));
        assert_eq!(a.definitions.len(), 14);
        for (code, def) in a.definitions.iter().take(10).enumerate() {
            assert_eq!(def.status, Status(code as u8));
            assert!(def.custom_label.is_none());
        }
    }

    #[test]
    fn changes_are_real_and_times_strictly_increase() {
        let (config, world) = world(50);
        let mut presence = world.initial_presence(config.seed, 1_000_000_000);
        let before = presence.clone();
        let mut generator = Generator::new(&config);
        let mut out = Vec::new();
        // Many changes in one millisecond force the +1 ms rule.
        generator.generate(&world, &mut presence, 2_000, 1_000_000_000, &mut out);
        let mut last = before.iter().map(|p| p.modified_ms).collect::<Vec<_>>();
        for change in &out {
            let u = change.user as usize;
            assert!(change.presence.modified_ms > last[u]);
            last[u] = change.presence.modified_ms;
        }
        for (u, p) in presence.iter().enumerate() {
            assert_eq!(p.modified_ms, last[u]);
        }
    }

    #[test]
    fn skew_makes_some_users_busier() {
        let (config, world) = world(1_000);
        let mut presence = world.initial_presence(config.seed, 0);
        let mut generator = Generator::new(&config);
        let mut out = Vec::new();
        generator.generate(&world, &mut presence, 20_000, 0, &mut out);
        let mut counts = vec![0u32; 1_000];
        for c in &out {
            counts[c.user as usize] += 1;
        }
        counts.sort_unstable();
        let top10: u32 = counts.iter().rev().take(10).sum();
        // Zipf(1) over 1,000 users: the top 1% take roughly 39% of the changes.
        assert!(top10 > 5_000, "top 10 users made {top10} of 20,000 changes");
        let uniform = Generator::new(&config.clone().skew(0.0));
        assert!(uniform.cdf.is_empty());
    }

    #[test]
    fn shift_changes_alternate() {
        let (config, world) = world(1_000);
        let mut presence = world.initial_presence(config.seed, 0);
        let mut generator = Generator::new(&config);
        let mut out = Vec::new();
        generator.shift_change(&world, &mut presence, 0.5, 10, &mut out);
        assert!(out.len() > 100);
        out.clear();
        generator.shift_change(&world, &mut presence, 0.5, 20, &mut out);
        assert!(!out.is_empty());
        assert!(out.iter().all(|c| c.presence.status == Status::OFFLINE));
    }
}
