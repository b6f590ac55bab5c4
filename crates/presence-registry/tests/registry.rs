//! Registry behaviour: last-write-wins, ties, refresh, time-to-live and expiry, order
//! independence, and concurrent use against a sequential model.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use presence_frame::{
    EventTime, Frame, GroupMask, Guid, Location, PresenceEvent, PresenceState, Source, Status,
    UserId,
};
use presence_registry::{Change, ManualClock, Outcome, Registry, RegistryConfig};
use proptest::prelude::*;

const TTL: Duration = Duration::from_secs(10);

fn registry() -> (Registry<ManualClock>, ManualClock) {
    let clock = ManualClock::new();
    let registry = Registry::with_clock(RegistryConfig::new(TTL), clock.clone()).expect("config");
    (registry, clock)
}

fn event(user: u32, ms: i64, status: Status) -> PresenceEvent {
    PresenceEvent {
        user: UserId::Relay(user),
        time: EventTime(ms),
        state: PresenceState::new(status, Location::DESK, GroupMask(1)),
        source: Source::Relay,
    }
}

#[test]
fn newer_event_wins_and_reports_the_change() {
    let (registry, _) = registry();
    let first = event(1, 100, Status::AVAILABLE);
    assert_eq!(
        registry.apply(first.clone()),
        Outcome::Changed(Change {
            previous: None,
            current: first.clone()
        })
    );
    let second = event(1, 200, Status::BUSY);
    assert_eq!(
        registry.apply(second.clone()),
        Outcome::Changed(Change {
            previous: Some(first),
            current: second.clone()
        })
    );
    assert_eq!(registry.get(UserId::Relay(1)), Some(second));
}

#[test]
fn older_event_is_stale_even_when_it_arrives_last() {
    let (registry, _) = registry();
    let _ = registry.apply(event(1, 200, Status::BUSY));
    assert_eq!(
        registry.apply(event(1, 100, Status::AVAILABLE)),
        Outcome::Stale
    );
    assert_eq!(
        registry.get(UserId::Relay(1)).map(|e| e.state.status),
        Some(Status::BUSY)
    );
}

#[test]
fn a_repeat_is_a_refresh_that_publishes_nothing() {
    let (registry, _) = registry();
    let mut streamed = event(1, 100, Status::AVAILABLE);
    streamed.source = Source::Stream;
    let _ = registry.apply(streamed);
    let mut resync = event(1, 100, Status::AVAILABLE);
    resync.source = Source::Resync;
    assert_eq!(registry.apply(resync), Outcome::Refreshed);
    let held = registry.get(UserId::Relay(1)).expect("held");
    assert_eq!(held.time, EventTime(100));
    assert_eq!(
        held.source,
        Source::Resync,
        "the larger source, so replicas agree"
    );
    assert_eq!(
        registry.apply(event(1, 100, Status::AVAILABLE)),
        Outcome::Refreshed
    );
    // And an older copy of it is stale.
    assert_eq!(
        registry.apply(event(1, 90, Status::AVAILABLE)),
        Outcome::Stale
    );
}

#[test]
fn the_same_state_at_a_later_time_is_a_change() {
    // A, then (unseen) B, then A again: only the last A arrives, with its own later time.
    let (registry, _) = registry();
    let first = event(1, 100, Status::AVAILABLE);
    let _ = registry.apply(first.clone());
    let mut later = event(1, 150, Status::AVAILABLE);
    later.source = Source::Resync;
    assert_eq!(
        registry.apply(later.clone()),
        Outcome::Changed(Change {
            previous: Some(first),
            current: later.clone()
        })
    );
    assert_eq!(registry.get(UserId::Relay(1)), Some(later));
    assert_eq!(registry.counts_by_status().get(Status::AVAILABLE), 1);
}

#[test]
fn each_field_of_the_state_is_a_change() {
    let (registry, _) = registry();
    let base = event(1, 100, Status::AVAILABLE);
    let _ = registry.apply(base.clone());
    let mut variants = Vec::new();
    let mut e = base.clone();
    e.state.location = Location::REMOTE;
    variants.push(e);
    let mut e = base.clone();
    e.state.groups = GroupMask(2);
    variants.push(e);
    let mut e = base.clone();
    e.state = e.state.with_message("lunch");
    variants.push(e);
    let mut e = base.clone();
    e.state = e
        .state
        .with_definition_id("6a3af858-942f-489d-9700-5f9bcdcdae9b");
    variants.push(e);
    for (i, mut e) in variants.into_iter().enumerate() {
        e.time = EventTime(200 + i as i64);
        assert!(
            matches!(registry.apply(e), Outcome::Changed(_)),
            "variant {i}"
        );
    }
}

#[test]
fn equal_times_resolve_by_state_order_in_either_arrival_order() {
    let low = event(1, 100, Status::AVAILABLE);
    let high = event(1, 100, Status::BUSY);
    assert!(low.state < high.state);

    let (a, _) = registry();
    let _ = a.apply(low.clone());
    assert!(matches!(a.apply(high.clone()), Outcome::Changed(_)));

    let (b, _) = registry();
    let _ = b.apply(high.clone());
    assert_eq!(b.apply(low), Outcome::Stale);

    assert_eq!(a.get(UserId::Relay(1)), b.get(UserId::Relay(1)));
    assert_eq!(a.get(UserId::Relay(1)), Some(high));
}

#[test]
fn genesys_and_relay_ids_never_collide() {
    let (registry, _) = registry();
    let _ = registry.apply(event(7, 100, Status::AVAILABLE));
    let mut genesys = event(0, 100, Status::BUSY);
    genesys.user = UserId::Genesys(Guid(7));
    assert!(matches!(
        registry.apply(genesys),
        Outcome::Changed(Change { previous: None, .. })
    ));
    assert_eq!(registry.len(), 2);
}

#[test]
fn entries_expire_after_the_ttl_and_reads_never_see_them() {
    let (registry, clock) = registry();
    let _ = registry.apply(event(1, 100, Status::AVAILABLE));
    clock.advance(TTL - Duration::from_millis(1));
    assert!(registry.get(UserId::Relay(1)).is_some());
    assert_eq!(registry.snapshot().len(), 1);
    clock.advance(Duration::from_millis(1));
    assert!(
        registry.get(UserId::Relay(1)).is_none(),
        "expired at exactly the TTL"
    );
    assert!(registry.snapshot().is_empty());
    let mut seen = 0;
    registry.for_each(|_| seen += 1);
    assert_eq!(seen, 0);
}

#[test]
fn sweep_returns_expired_entries_within_one_tick() {
    let (registry, clock) = registry();
    let _ = registry.apply(event(1, 100, Status::AVAILABLE));
    let _ = registry.apply(event(2, 100, Status::BUSY));
    clock.advance(TTL / 2);
    let _ = registry.apply(event(2, 200, Status::BUSY)); // refresh: user 2 lives on
    clock.advance(TTL / 2 + TTL / 64); // one tick past user 1's expiry
    let expired = registry.sweep();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].last, event(1, 100, Status::AVAILABLE));
    assert_eq!(expired[0].confirmed_ms, 0);
    assert_eq!(registry.len(), 1);
    assert!(registry.sweep().is_empty(), "nothing expires twice");
    assert_eq!(registry.counts_by_status().get(Status::AVAILABLE), 0);
    assert_eq!(registry.counts_by_status().get(Status::BUSY), 1);

    clock.advance(TTL);
    let expired = registry.sweep();
    assert_eq!(
        expired.iter().map(|e| e.last.user).collect::<Vec<_>>(),
        [UserId::Relay(2)]
    );
    assert!(registry.is_empty());
}

#[test]
fn a_stale_event_does_not_renew_the_ttl() {
    let (registry, clock) = registry();
    let _ = registry.apply(event(1, 200, Status::AVAILABLE));
    clock.advance(TTL / 2);
    assert_eq!(registry.apply(event(1, 100, Status::BUSY)), Outcome::Stale);
    clock.advance(TTL / 2);
    assert!(registry.get(UserId::Relay(1)).is_none());
}

#[test]
fn an_expired_entry_is_not_taken_back_in_time_before_its_sweep() {
    // Issue 15, item 4: past its TTL but not yet swept, the user's tombstone is still to come
    // and downstream holds the state at 200. An older event must not be published on top of
    // it; after the sweep (the tombstone between them) it may start afresh.
    let (registry, clock) = registry();
    let _ = registry.apply(event(1, 200, Status::AVAILABLE));
    clock.advance(TTL);
    assert!(
        registry.get(UserId::Relay(1)).is_none(),
        "expired for readers"
    );
    let late = event(1, 100, Status::BUSY);
    assert_eq!(registry.apply(late.clone()), Outcome::Stale);
    clock.advance(TTL / 4); // the sweep works in ticks: due within a tick
    let expired = registry.sweep();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].last.time, EventTime(200));
    assert_eq!(
        registry.apply(late.clone()),
        Outcome::Changed(Change {
            previous: None,
            current: late
        })
    );
    assert_eq!(registry.counts_by_status().total(), 1);
}

#[test]
fn an_expired_entry_confirmed_again_before_its_sweep_lives_on() {
    let (registry, clock) = registry();
    let first = event(1, 200, Status::AVAILABLE);
    let _ = registry.apply(first.clone());
    clock.advance(TTL);
    // The same state again: downstream holds it already (no tombstone went out).
    assert_eq!(registry.apply(first.clone()), Outcome::Refreshed);
    assert!(registry.get(UserId::Relay(1)).is_some());
    assert!(registry.sweep().is_empty());
    // A newer state is a change with no previous state (readers had lost the user).
    let newer = event(1, 300, Status::BUSY);
    clock.advance(TTL);
    assert_eq!(
        registry.apply(newer.clone()),
        Outcome::Changed(Change {
            previous: None,
            current: newer
        })
    );
}

#[test]
fn a_state_marked_unpublished_is_reported_again_on_its_next_repeat() {
    // Issue 15, item 2: a state the publisher could not take is handed on again by the next
    // confirmation (a resync repeats Genesys's state with the same modifiedDate).
    let (registry, _clock) = registry();
    let first = event(1, 200, Status::AVAILABLE);
    let _ = registry.apply(first.clone());
    assert_eq!(registry.apply(first.clone()), Outcome::Refreshed);
    assert!(registry.mark_unpublished(first.user, first.time));
    assert_eq!(
        registry.apply(first.clone()),
        Outcome::Changed(Change {
            previous: Some(first.clone()),
            current: first.clone()
        })
    );
    // Reported once: it counts as published again.
    assert_eq!(registry.apply(first.clone()), Outcome::Refreshed);
    // A mark for a state the user no longer holds changes nothing.
    let newer = event(1, 300, Status::BUSY);
    let _ = registry.apply(newer.clone());
    assert!(!registry.mark_unpublished(first.user, first.time));
    assert_eq!(registry.apply(newer), Outcome::Refreshed);
    assert!(
        !registry.mark_unpublished(UserId::Relay(2), EventTime(1)),
        "unknown user"
    );
}

#[test]
fn an_unpublished_or_expired_entry_takes_every_kind_of_event() {
    // These entries are decided out of the common path (`Shard::apply_unusual`): each kind of
    // event must still have the outcome a published, live entry's rules give it.
    let (registry, clock) = registry();
    let first = event(1, 200, Status::AVAILABLE);
    let _ = registry.apply(first.clone());
    assert!(registry.mark_unpublished(first.user, first.time));
    // Older: stale, and the mark stays.
    assert_eq!(registry.apply(event(1, 100, Status::BUSY)), Outcome::Stale);
    // A newer, different state: a change from the state held.
    let busy = event(1, 300, Status::BUSY);
    assert_eq!(
        registry.apply(busy.clone()),
        Outcome::Changed(Change {
            previous: Some(first),
            current: busy.clone()
        })
    );
    assert_eq!(
        registry.apply(busy.clone()),
        Outcome::Refreshed,
        "published"
    );
    // Past its TTL, not swept: the same state at a later time is a change with no previous.
    clock.advance(TTL);
    let busy_later = event(1, 400, Status::BUSY);
    assert_eq!(
        registry.apply(busy_later.clone()),
        Outcome::Changed(Change {
            previous: None,
            current: busy_later.clone()
        })
    );
    assert_eq!(registry.apply(busy_later), Outcome::Refreshed, "live again");
    assert_eq!(registry.counts_by_status().total(), 1);
}

#[test]
fn held_expiry_keeps_entries_until_released() {
    // Issue 15, item 5: while the source cannot be reached, nobody expires.
    let (registry, clock) = registry();
    let _ = registry.apply(event(1, 100, Status::AVAILABLE));
    clock.advance(TTL / 2);
    let _ = registry.apply(event(2, 100, Status::BUSY));
    registry.hold_expiry(registry.now_ms());
    clock.advance(TTL * 3);
    assert!(registry.get(UserId::Relay(1)).is_some(), "held: still live");
    assert!(registry.sweep().is_empty());
    assert_eq!(registry.expiry_held_back(), 2);
    // Confirmed during the hold: user 2 is renewed from now.
    let _ = registry.apply(event(2, 100, Status::BUSY));
    assert_eq!(registry.expiry_held_back(), 1);
    registry.release_expiry();
    assert_eq!(registry.expiry_held_back(), 0);
    let expired: Vec<_> = registry.sweep().into_iter().map(|e| e.last.user).collect();
    assert_eq!(expired, [UserId::Relay(1)]);
    assert!(registry.get(UserId::Relay(2)).is_some());
}

#[test]
fn a_hold_does_not_save_what_was_due_before_it() {
    let (registry, clock) = registry();
    let _ = registry.apply(event(1, 100, Status::AVAILABLE));
    clock.advance(TTL * 2);
    registry.hold_expiry(registry.now_ms());
    assert_eq!(registry.sweep().len(), 1);
}

#[test]
fn sweep_with_hands_each_expiry_over_under_the_lock() {
    let (registry, clock) = registry();
    for user in 0..100 {
        let _ = registry.apply(event(user, 100, Status::AVAILABLE));
    }
    clock.advance(TTL * 2);
    let mut seen = Vec::new();
    assert_eq!(registry.sweep_with(|e| seen.push(e.last.user)), 100);
    assert_eq!(seen.len(), 100);
    assert!(registry.with_absent(UserId::Relay(3), || ()).is_some());
    let _ = registry.apply(event(3, 200, Status::AVAILABLE));
    assert!(registry.with_absent(UserId::Relay(3), || ()).is_none());
}

#[test]
fn remove_with_hands_the_removed_entry_over_and_forgets_the_user() {
    let (registry, clock) = registry();
    for user in 0..10 {
        let _ = registry.apply(event(user, 100, Status::AVAILABLE));
    }
    let _ = registry.apply(event(4, 300, Status::BUSY));
    clock.advance(Duration::from_secs(1));
    let mut seen = Vec::new();
    assert!(registry.remove_with(UserId::Relay(4), |e| seen.push((e.last, e.confirmed_ms))));
    assert_eq!(seen, [(event(4, 300, Status::BUSY), 0)]);
    assert_eq!(registry.get(UserId::Relay(4)), None);
    assert_eq!(registry.len(), 9);
    assert_eq!(registry.counts_by_status().get(Status::BUSY), 0);
    // Not held (any more): nothing to hand over.
    assert!(!registry.remove_with(UserId::Relay(4), |_| panic!("not held")));
    assert!(!registry.remove_with(UserId::Relay(99), |_| panic!("not held")));
    // It is not swept later, and comes back afresh with its next event.
    clock.advance(TTL * 2);
    assert_eq!(registry.sweep().len(), 9);
    assert!(matches!(
        registry.apply(event(4, 50, Status::AWAY)),
        Outcome::Changed(Change { previous: None, .. })
    ));
}

#[test]
fn counts_follow_changes() {
    let (registry, _) = registry();
    for user in 0..10 {
        let _ = registry.apply(event(user, 1, Status::AVAILABLE));
    }
    for user in 0..4 {
        let _ = registry.apply(event(user, 2, Status::ON_QUEUE));
    }
    let counts = registry.counts_by_status();
    assert_eq!(counts.get(Status::AVAILABLE), 6);
    assert_eq!(counts.get(Status::ON_QUEUE), 4);
    assert_eq!(counts.total(), 10);
    assert_eq!(counts.iter().count(), 2);
}

#[test]
fn bad_config_is_rejected_with_the_reason() {
    let err = RegistryConfig::new(Duration::ZERO)
        .validate()
        .expect_err("zero ttl");
    assert!(err.to_string().contains("ttl"));
    let err = RegistryConfig::new(TTL)
        .shards(3)
        .validate()
        .expect_err("3 shards");
    assert!(err.to_string().contains('3'));
}

/// Events over few users, times and states, so that collisions and ties are common.
fn events() -> impl Strategy<Value = Vec<PresenceEvent>> {
    let one = (0u32..6, 0i64..8, 0u8..4, 0u8..3, prop::bool::ANY, 0u8..3).prop_map(
        |(user, ms, status, groups, message, source)| {
            let mut state =
                PresenceState::new(Status(status), Location::DESK, GroupMask(u64::from(groups)));
            if message {
                state = state.with_message("m");
            }
            PresenceEvent {
                user: UserId::Relay(user),
                time: EventTime(ms),
                state,
                source: [Source::Stream, Source::Resync, Source::Relay][usize::from(source)],
            }
        },
    );
    prop::collection::vec(one, 1..40)
}

fn sorted_snapshot<C: presence_registry::Clock>(registry: &Registry<C>) -> Vec<PresenceEvent> {
    let mut all = registry.snapshot();
    all.sort_by_key(|e| e.user);
    all
}

proptest! {
    #[test]
    fn any_permutation_gives_the_same_registry(
        (events, shuffled) in events().prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
    ) {
        let (a, _) = registry();
        let (b, _) = registry();
        for e in events {
            let _ = a.apply(e);
        }
        for e in shuffled {
            let _ = b.apply(e);
        }
        prop_assert_eq!(sorted_snapshot(&a), sorted_snapshot(&b));
    }
}

proptest! {
    #[test]
    fn a_batch_does_what_one_by_one_does(events in events(), chunk in 1usize..16) {
        let (one, _) = registry();
        let (batched, _) = registry();
        let mut want: HashMap<UserId, Vec<Outcome>> = HashMap::new();
        for e in events.clone() {
            let user = e.user;
            want.entry(user).or_default().push(one.apply(e));
        }
        let mut got: HashMap<UserId, Vec<Outcome>> = HashMap::new();
        for part in events.chunks(chunk) {
            let mut batch = part.to_vec();
            batched.apply_batch(&mut batch, |outcome| {
                let user = match &outcome {
                    Outcome::Changed(c) => Some(c.current.user),
                    _ => None,
                };
                got.entry(user.unwrap_or(UserId::Relay(u32::MAX))).or_default().push(outcome);
            });
            prop_assert!(batch.is_empty());
        }
        prop_assert_eq!(sorted_snapshot(&one), sorted_snapshot(&batched));
        // Every change, per user and in order, is the same.
        for (user, outcomes) in want {
            let changes: Vec<&Outcome> = outcomes.iter().filter(|o| matches!(o, Outcome::Changed(_))).collect();
            let got_changes: Vec<&Outcome> = got.get(&user).map(|v| v.iter().collect()).unwrap_or_default();
            prop_assert_eq!(changes, got_changes, "user {:?}", user);
        }
    }
}

/// Frames over few users, times and states, so that collisions and ties are common; group
/// bytes above the low bits too, since a frame's mask is its whole byte.
fn frames() -> impl Strategy<Value = Vec<Frame>> {
    let one = (
        0u32..6,
        0i64..8,
        0u8..4,
        prop::sample::select(vec![0u8, 1, 2, 0x81, 0xff]),
    )
        .prop_map(|(user_id, time_ms, status, groups)| Frame {
            time_ms,
            user_id,
            status: Status(status),
            location: Location::DESK,
            groups,
        });
    prop::collection::vec(one, 1..40)
}

proptest! {
    #[test]
    fn frames_do_what_their_events_do_one_by_one(
        before in events(),
        frames in frames(),
        chunk in 1usize..16,
        expire_first in prop::bool::ANY,
    ) {
        // Start both registries from the same events (messages, other sources), so that frames
        // meet entries with extras and every tie order; sometimes from expired ones.
        let (one, one_clock) = registry();
        let (framed, framed_clock) = registry();
        for e in before {
            let _ = one.apply(e.clone());
            let _ = framed.apply(e);
        }
        if expire_first {
            one_clock.advance(TTL);
            framed_clock.advance(TTL);
        }
        let mut want: HashMap<UserId, Vec<Outcome>> = HashMap::new();
        let mut want_all: Vec<Outcome> = Vec::new();
        for f in &frames {
            let outcome = one.apply(f.to_event());
            want.entry(f.to_event().user).or_default().push(outcome.clone());
            want_all.push(outcome);
        }
        let mut got: HashMap<UserId, Vec<Outcome>> = HashMap::new();
        let mut got_all: Vec<Outcome> = Vec::new();
        for part in frames.chunks(chunk) {
            framed.apply_frames(part, |outcome| {
                if let Outcome::Changed(c) = &outcome {
                    got.entry(c.current.user).or_default().push(outcome.clone());
                }
                got_all.push(outcome);
            });
        }
        prop_assert_eq!(sorted_snapshot(&one), sorted_snapshot(&framed));
        prop_assert_eq!(one.counts_by_status(), framed.counts_by_status());
        // The same outcomes overall (the order differs: grouped by shard)...
        let key = |o: &Outcome| format!("{o:?}");
        want_all.sort_by_key(key);
        got_all.sort_by_key(key);
        prop_assert_eq!(want_all, got_all);
        // ...and every change, per user and in order.
        for (user, outcomes) in want {
            let changes: Vec<&Outcome> = outcomes.iter().filter(|o| matches!(o, Outcome::Changed(_))).collect();
            let got_changes: Vec<&Outcome> = got.get(&user).map(|v| v.iter().collect()).unwrap_or_default();
            prop_assert_eq!(changes, got_changes, "user {:?}", user);
        }
    }
}

#[test]
fn a_batch_over_many_users_matches_one_by_one() {
    // Enough users for runs longer than the prefetch distance, and for the index to grow and
    // (with expiry) shrink its clusters under a batch.
    let events_of = |round: i64| -> Vec<PresenceEvent> {
        let mut s = 0x9e37_79b9_7f4a_7c15u64 ^ round as u64;
        (0..20_000)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                event(
                    (s % 30_000) as u32,
                    round * 4 + ((s >> 20) % 4) as i64,
                    Status((s >> 40) as u8 % 3),
                )
            })
            .collect()
    };
    let (one, one_clock) = registry();
    let (batched, batched_clock) = registry();
    let (framed, framed_clock) = registry();
    for round in 0..4 {
        let events = events_of(round);
        let mut want = 0usize;
        for e in events.clone() {
            want += usize::from(matches!(one.apply(e), Outcome::Changed(_)));
        }
        let mut got = 0usize;
        for part in events.chunks(4096) {
            batched.apply_batch(&mut part.to_vec(), |o| {
                got += usize::from(matches!(o, Outcome::Changed(_)))
            });
        }
        assert_eq!(got, want, "batch, round {round}");
        let frames: Vec<Frame> = events.iter().map(frame_of).collect();
        let mut got = 0usize;
        for part in frames.chunks(4096) {
            framed.apply_frames(part, |o| {
                got += usize::from(matches!(o, Outcome::Changed(_)))
            });
        }
        assert_eq!(got, want, "frames, round {round}");
        assert_eq!(sorted_snapshot(&one), sorted_snapshot(&batched));
        assert_eq!(sorted_snapshot(&one), sorted_snapshot(&framed));
        for clock in [&one_clock, &batched_clock, &framed_clock] {
            clock.advance(TTL / 2);
        }
        let expired = [
            one.sweep().len(),
            batched.sweep().len(),
            framed.sweep().len(),
        ];
        assert_eq!(expired[0], expired[1]);
        assert_eq!(expired[0], expired[2]);
    }
}

/// The sequential model: per user, the event that is greatest by (time, state, source).
fn model(events: &[PresenceEvent]) -> Vec<PresenceEvent> {
    let mut best: HashMap<UserId, &PresenceEvent> = HashMap::new();
    for e in events {
        let slot = best.entry(e.user).or_insert(e);
        if (e.time, &e.state, e.source) > (slot.time, &slot.state, slot.source) {
            *slot = e;
        }
    }
    let mut out: Vec<PresenceEvent> = best.into_values().cloned().collect();
    out.sort_by_key(|e| e.user);
    out
}

#[test]
fn concurrent_updates_match_the_sequential_model() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 50_000;
    const USERS: u32 = 2_000;
    let clock = ManualClock::new();
    let registry =
        Arc::new(Registry::with_clock(RegistryConfig::new(TTL).shards(16), clock).expect("config"));
    // Deterministic per-thread streams over shared users with many ties.
    let streams: Vec<Vec<PresenceEvent>> = (0..THREADS)
        .map(|t| {
            let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1);
            (0..PER_THREAD)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let mut e = event(
                        (seed % u64::from(USERS)) as u32,
                        ((seed >> 16) % 64) as i64,
                        Status(((seed >> 24) % 10) as u8),
                    );
                    e.source = [Source::Stream, Source::Resync][((seed >> 40) % 2) as usize];
                    e
                })
                .collect()
        })
        .collect();
    let changes = std::thread::scope(|scope| {
        let handles: Vec<_> = streams
            .iter()
            .map(|stream| {
                let registry = &registry;
                scope.spawn(move || {
                    stream
                        .iter()
                        .filter(|e| matches!(registry.apply((*e).clone()), Outcome::Changed(_)))
                        .count()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .sum::<usize>()
    });
    let all: Vec<PresenceEvent> = streams.into_iter().flatten().collect();
    let want = model(&all);
    assert_eq!(sorted_snapshot(&registry), want);
    assert!(changes >= want.len(), "every user changed at least once");
    let counts = registry.counts_by_status();
    assert_eq!(counts.total() as usize, want.len());
    for status in (0..10).map(Status) {
        let n = want.iter().filter(|e| e.state.status == status).count() as u64;
        assert_eq!(counts.get(status), n, "{status}");
    }
}

#[test]
fn concurrent_batches_match_the_sequential_model() {
    // As above, through `apply_batch` and `apply_frames` from two threads each, so that
    // batches contend for shards with each other.
    const PER_THREAD: usize = 50_000;
    const USERS: u32 = 2_000;
    let registry = Registry::with_clock(RegistryConfig::new(TTL).shards(16), ManualClock::new())
        .expect("config");
    let streams: Vec<Vec<PresenceEvent>> = (0..4u64)
        .map(|t| {
            let mut seed = 0x2545_f491_4f6c_dd1du64 ^ (t + 1);
            (0..PER_THREAD)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    event(
                        (seed % u64::from(USERS)) as u32,
                        ((seed >> 16) % 64) as i64,
                        Status(((seed >> 24) % 10) as u8),
                    )
                })
                .collect()
        })
        .collect();
    std::thread::scope(|scope| {
        for (t, stream) in streams.iter().enumerate() {
            let registry = &registry;
            scope.spawn(move || {
                for part in stream.chunks(512) {
                    if t % 2 == 0 {
                        registry.apply_batch(&mut part.to_vec(), |_| {});
                    } else {
                        let frames: Vec<Frame> = part.iter().map(frame_of).collect();
                        registry.apply_frames(&frames, |_| {});
                    }
                }
            });
        }
    });
    let all: Vec<PresenceEvent> = streams.into_iter().flatten().collect();
    assert_eq!(sorted_snapshot(&registry), model(&all));
    assert_eq!(registry.counts_by_status().total() as usize, USERS as usize);
}

/// The relay frame of a relay event with group mask 1.
fn frame_of(e: &PresenceEvent) -> Frame {
    Frame {
        time_ms: e.time.0,
        user_id: match e.user {
            UserId::Relay(n) => n,
            UserId::Genesys(_) => unreachable!("relay events only"),
        },
        status: e.state.status,
        location: e.state.location,
        groups: 1,
    }
}

#[test]
fn regroup_gives_the_held_state_the_new_mask_whatever_its_time() {
    let (registry, _clock) = registry();
    let mut held = event(1, 200, Status::BUSY);
    held.state.groups = GroupMask(0b11);
    let _ = registry.apply(held.clone());
    // The same presence at an older time, with a smaller mask: the mask is the news.
    let mut regrouped = event(1, 100, Status::BUSY);
    regrouped.state.groups = GroupMask(0b01);
    let mut outcomes = Vec::new();
    assert!(registry.regroup_with(&regrouped, |o| outcomes.push(o)));
    let mut expected = held.clone();
    expected.state.groups = GroupMask(0b01);
    assert_eq!(
        outcomes,
        [Outcome::Changed(Change {
            previous: Some(held),
            current: expected.clone()
        })]
    );
    assert_eq!(registry.get(UserId::Relay(1)), Some(expected));
    // Same mask again: a refresh. A newer event or an unknown user: left to `apply`.
    outcomes.clear();
    assert!(registry.regroup_with(&regrouped, |o| outcomes.push(o)));
    assert_eq!(outcomes, [Outcome::Refreshed]);
    assert!(!registry.regroup_with(&event(1, 300, Status::AWAY), |_| panic!("newer")));
    assert!(!registry.regroup_with(&event(2, 1, Status::AWAY), |_| panic!("unknown")));
}
