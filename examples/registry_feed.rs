//! Feeds a registry a short scripted stream on a manual clock and prints what changed, what
//! was only refreshed, what was stale and what expired. Uses only `presence-registry` (and
//! the event type from `presence-frame`).
//!
//! ```text
//! cargo run --example registry_feed
//! ```

use std::time::Duration;

use presence_frame::{
    EventTime, GroupMask, Location, PresenceEvent, PresenceState, Source, Status, UserId,
};
use presence_registry::{ManualClock, Outcome, Registry, RegistryConfig};

/// 2026-11-28T09:00:00Z in Unix milliseconds.
const BASE_MS: i64 = 1_795_856_400_000;

fn event(user: u32, time_ms: i64, status: Status) -> PresenceEvent {
    PresenceEvent {
        user: UserId::Relay(user),
        time: EventTime(BASE_MS + time_ms),
        state: PresenceState::new(status, Location::DESK, GroupMask(1)),
        source: Source::Relay,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ttl = Duration::from_secs(30);
    let clock = ManualClock::new();
    let registry = Registry::with_clock(RegistryConfig::new(ttl), clock.clone())?;

    // (seconds to wait before the event, event); event times are seconds after 2026-11-28T09:00Z
    let script = [
        (0, event(1, 1_000, Status::AVAILABLE)),
        (0, event(2, 1_000, Status::ON_QUEUE)),
        (5, event(1, 6_000, Status::BUSY)),
        (5, event(1, 4_000, Status::AWAY)), // older than what is held: stale
        (10, event(2, 1_000, Status::ON_QUEUE)), // a repeat (say, a resync): refresh only
        (20, event(2, 1_000, Status::ON_QUEUE)),
    ];
    for (wait, event) in script {
        clock.advance(Duration::from_secs(wait));
        let user = event.user;
        match registry.apply(event) {
            Outcome::Changed(change) => println!(
                "t={:>3}s user {user}: changed {} -> {}",
                clock_secs(&clock),
                change
                    .previous
                    .map_or("(new)".to_string(), |p| p.state.status.to_string()),
                change.current.state.status,
            ),
            Outcome::Refreshed => println!("t={:>3}s user {user}: refreshed", clock_secs(&clock)),
            Outcome::Stale => println!("t={:>3}s user {user}: stale, ignored", clock_secs(&clock)),
        }
    }

    println!("counts: {:?}", registry.counts_by_status());
    // User 1 was last confirmed at t=5s, user 2 at t=40s: 25 s later only user 1 is gone.
    clock.advance(ttl - Duration::from_secs(5));
    for expired in registry.sweep() {
        println!(
            "t={:>3}s user {}: expired (last {} at {})",
            clock_secs(&clock),
            expired.last.user,
            expired.last.state.status,
            expired.last.time.to_rfc3339(),
        );
    }
    println!("still held: {}", registry.len());
    Ok(())
}

fn clock_secs(clock: &ManualClock) -> u64 {
    use presence_registry::Clock;
    clock.now_ms() / 1000
}
