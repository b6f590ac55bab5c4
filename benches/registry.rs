//! presence-registry micro-benchmarks: `apply`, `apply_batch` and `apply_frames` from two
//! threads over 100,000 users, and a sweep that expires 10% of 1,000,000 entries.
//!
//! Run: `cargo bench --bench registry`.

use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use presence_frame::{
    EventTime, Frame, GroupMask, Location, PresenceEvent, PresenceState, Source, Status, UserId,
};
use presence_registry::{ManualClock, Outcome, Registry, RegistryConfig};

const USERS: u32 = 100_000;
const TTL: Duration = Duration::from_secs(3600);

fn relay_event(user: u32, time: i64, status: u8) -> PresenceEvent {
    PresenceEvent {
        user: UserId::Relay(user),
        time: EventTime(time),
        state: PresenceState::new(Status(status), Location::DESK, GroupMask(1)),
        source: Source::Relay,
    }
}

/// A pseudo-random walk over the users with a status per step, shared by both threads.
fn workload(len: usize, seed: u64) -> Vec<(u32, u8)> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s % u64::from(USERS)) as u32, ((s >> 32) % 10) as u8)
        })
        .collect()
}

/// Runs `work` on two threads at once, one per workload, and returns how long both took.
fn on_two_threads(steps: &[Vec<(u32, u8)>; 2], work: impl Fn(&[(u32, u8)]) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for steps in steps {
            let work = &work;
            scope.spawn(move || work(steps));
        }
    });
    start.elapsed()
}

fn apply_two_threads(c: &mut Criterion) {
    let registry =
        Registry::with_clock(RegistryConfig::new(TTL), ManualClock::new()).expect("config");
    for user in 0..USERS {
        let _ = registry.apply(relay_event(user, 0, 0));
    }
    let steps = [
        workload(1 << 20, 0x1234_5678),
        workload(1 << 20, 0x8765_4321),
    ];
    // Event times only grow across iterations, so every event is news (a change or a refresh),
    // as in a live stream; stale events would take a cheaper path.
    let clock = AtomicI64::new(1);

    let mut group = c.benchmark_group("registry");
    group.throughput(Throughput::Elements(2));
    group.bench_function("apply_2_threads_100k_users", |b| {
        b.iter_custom(|iters| {
            let base = clock.fetch_add(iters as i64, Ordering::Relaxed);
            on_two_threads(&steps, |steps| {
                for k in 0..iters as usize {
                    let (user, status) = steps[k & (steps.len() - 1)];
                    let _ = black_box(registry.apply(relay_event(user, base + k as i64, status)));
                }
            })
        })
    });

    // The same stream fed in batches of 4096 events (one 64 KiB relay message each).
    group.bench_function("apply_batch_2_threads_100k_users", |b| {
        b.iter_custom(|iters| {
            let base = clock.fetch_add(iters as i64, Ordering::Relaxed);
            on_two_threads(&steps, |steps| {
                let mut batch = Vec::with_capacity(4096);
                let mut changed = 0u64;
                for k in 0..iters as usize {
                    let (user, status) = steps[k & (steps.len() - 1)];
                    batch.push(relay_event(user, base + k as i64, status));
                    if batch.len() == 4096 || k + 1 == iters as usize {
                        registry.apply_batch(&mut batch, |outcome| {
                            changed += u64::from(matches!(outcome, Outcome::Changed(_)));
                        });
                    }
                }
                black_box(changed);
            })
        })
    });

    // The same stream as relay frames, 4096 a call: what the relay path gets from a decoded
    // message (`FrameBatch::filter` into a reused `Vec<Frame>`). Every change's outcome is
    // built and handed over as `apply_batch`'s is; the time and user of each change are read
    // so that building them is not optimised away.
    group.bench_function("apply_frames_2_threads_100k_users", |b| {
        b.iter_custom(|iters| {
            let base = clock.fetch_add(iters as i64, Ordering::Relaxed);
            on_two_threads(&steps, |steps| {
                let mut frames = Vec::with_capacity(4096);
                let mut seen = 0u64;
                for k in 0..iters as usize {
                    let (user, status) = steps[k & (steps.len() - 1)];
                    frames.push(Frame {
                        time_ms: base + k as i64,
                        user_id: user,
                        status: Status(status),
                        location: Location::DESK,
                        groups: 1,
                    });
                    if frames.len() == 4096 || k + 1 == iters as usize {
                        registry.apply_frames(&frames, |outcome| {
                            if let Outcome::Changed(change) = outcome {
                                seen = seen.wrapping_add(
                                    change.current.time.0 as u64
                                        ^ u64::from(change.current.user == UserId::Relay(0)),
                                );
                            }
                        });
                        frames.clear();
                    }
                }
                black_box(seen);
            })
        })
    });
    group.finish();
}

fn sweep_10_percent_of_1m(c: &mut Criterion) {
    const ENTRIES: u32 = 1_000_000;
    let mut group = c.benchmark_group("registry");
    group.sample_size(10);
    group.throughput(Throughput::Elements(u64::from(ENTRIES / 10)));
    group.bench_function("sweep_expire_100k_of_1m", |b| {
        b.iter_batched(
            || {
                let clock = ManualClock::new();
                let registry =
                    Registry::with_clock(RegistryConfig::new(TTL), clock.clone()).expect("config");
                // Every tenth user is confirmed only at the start; the rest again at half the TTL.
                for user in 0..ENTRIES {
                    let _ = registry.apply(relay_event(user, 0, 1));
                }
                clock.advance(TTL / 2);
                for user in (0..ENTRIES).filter(|u| u % 10 != 0) {
                    let _ = registry.apply(relay_event(user, 1, 1));
                }
                clock.advance(TTL / 2 + TTL / 32);
                (registry, Vec::with_capacity(ENTRIES as usize / 10))
            },
            |(registry, mut out)| {
                let n = registry.sweep_into(&mut out);
                assert_eq!(n, ENTRIES as usize / 10);
                (registry, out)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, apply_two_threads, sweep_10_percent_of_1m);
criterion_main!(benches);
