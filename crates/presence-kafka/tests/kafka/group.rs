//! The consumer group (issue 13): a lone member owns every partition and warm-starts from
//! what the topic holds; a second member takes a share only after the first has handed it
//! over; leaving hands everything back. Against the real broker, with Kafka 4's consumer
//! protocol (KIP-848).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use presence_frame::{EventTime, PresenceEvent, Status, UserId};
use presence_kafka::{GroupConfig, GroupHandler, GroupMember, KafkaPublisher, Publisher};

use crate::common::{broker, random_topic, relay_event};

/// One call the handler got, when it returned.
#[derive(Clone, Debug)]
enum Call {
    Assigned {
        at: Instant,
        partitions: Vec<u32>,
    },
    Revoked {
        at: Instant,
        partitions: Vec<u32>,
        lost: bool,
    },
}

/// Records every call; a revocation takes a while, as a real handover (flush) does.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
    last: Mutex<HashMap<UserId, PresenceEvent>>,
}

impl GroupHandler for Recorder {
    fn assigned(&self, partitions: &[u32], last: Vec<PresenceEvent>) {
        self.last
            .lock()
            .unwrap()
            .extend(last.into_iter().map(|e| (e.user, e)));
        self.calls.lock().unwrap().push(Call::Assigned {
            at: Instant::now(),
            partitions: partitions.to_vec(),
        });
    }

    fn revoked(&self, partitions: &[u32], lost: bool) {
        std::thread::sleep(Duration::from_millis(300));
        self.calls.lock().unwrap().push(Call::Revoked {
            at: Instant::now(),
            partitions: partitions.to_vec(),
            lost,
        });
    }
}

impl Recorder {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_the_partitions_and_hand_them_over_cleanly() {
    let Some(broker) = broker() else { return };
    let config = broker.config("group").partitions(4);
    let publisher = KafkaPublisher::start(config.clone()).await.unwrap();
    // 40 users: each a first state, then a newer one for the even ones; users 30..40 are
    // deleted afterwards (tombstones).
    let now = Instant::now();
    for user in 0..40u32 {
        publisher.publish(
            relay_event(user, 1_000 + i64::from(user), Status::AWAY),
            now,
        );
    }
    for user in (0..40u32).step_by(2) {
        publisher.publish(
            relay_event(user, 5_000 + i64::from(user), Status::BUSY),
            now,
        );
    }
    for user in 30..40u32 {
        publisher.tombstone(UserId::Relay(user), EventTime(9_000), now);
    }
    // A handover's flush: the selected users' records are delivered (the others may wait).
    let first_half = |u: UserId| matches!(u, UserId::Relay(n) if n < 20);
    assert_eq!(
        publisher
            .flush_users(&first_half, Duration::from_secs(20))
            .await,
        0
    );
    let report = publisher.flush(Duration::from_secs(20)).await;
    assert!(report.is_complete(), "{report:?}");

    let group = random_topic("group");
    let a = Arc::new(Recorder::default());
    let member_a = tokio::task::block_in_place(|| {
        GroupMember::start(
            &config,
            4,
            GroupConfig::new(&group, "a"),
            Arc::clone(&a) as Arc<dyn GroupHandler>,
        )
        .unwrap()
    });
    let owned_a = member_a.ownership();
    tokio::task::block_in_place(|| {
        wait_until("a owns every partition", Duration::from_secs(60), || {
            owned_a.owned().len() == 4
        })
    });
    // The warm start: each live user's newest state, the deleted ones absent.
    {
        let last = a.last.lock().unwrap();
        assert_eq!(last.len(), 30, "{:?}", last.keys());
        for user in 0..30u32 {
            let event = &last[&UserId::Relay(user)];
            let (time, status) = if user % 2 == 0 {
                (5_000, Status::BUSY)
            } else {
                (1_000, Status::AWAY)
            };
            assert_eq!(event.time, EventTime(time + i64::from(user)), "user {user}");
            assert_eq!(event.state.status, status, "user {user}");
        }
    }

    // Once warm, the partitions are paused: the member does not read the topic's new records
    // (this instance's own output) back.
    for user in 0..40u32 {
        publisher.publish(
            relay_event(user, 20_000 + i64::from(user), Status::MEAL),
            now,
        );
    }
    let report = publisher.flush(Duration::from_secs(20)).await;
    assert!(report.is_complete(), "{report:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        member_a
            .stats()
            .records_ignored
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "records fetched after the warm start"
    );

    // A second member: the partitions it gets were handed over by the first before.
    let b = Arc::new(Recorder::default());
    let member_b = tokio::task::block_in_place(|| {
        GroupMember::start(
            &config,
            4,
            GroupConfig::new(&group, "b"),
            Arc::clone(&b) as Arc<dyn GroupHandler>,
        )
        .unwrap()
    });
    let owned_b = member_b.ownership();
    tokio::task::block_in_place(|| {
        wait_until("the partitions are shared", Duration::from_secs(60), || {
            let (ours, theirs) = (owned_a.owned(), owned_b.owned());
            !ours.is_empty() && !theirs.is_empty() && ours.len() + theirs.len() == 4
        })
    });
    let (ours, theirs) = (owned_a.owned(), owned_b.owned());
    assert!(
        ours.iter().all(|p| !theirs.contains(p)),
        "{ours:?} {theirs:?}"
    );
    let revoked_at: HashMap<u32, Instant> = a
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Revoked {
                at,
                partitions,
                lost,
            } => {
                assert!(!lost, "a graceful rebalance loses nothing");
                Some(partitions.into_iter().map(move |p| (p, at)))
            }
            Call::Assigned { .. } => None,
        })
        .flatten()
        .collect();
    for call in b.calls() {
        if let Call::Assigned { at, partitions } = call {
            for p in partitions {
                let handed = revoked_at
                    .get(&p)
                    .unwrap_or_else(|| panic!("b got partition {p} that a never handed over"));
                assert!(
                    *handed <= at,
                    "b started partition {p} before a had handed it over"
                );
            }
        }
    }
    // b warm-started its users from the topic too.
    assert!(!b.last.lock().unwrap().is_empty());

    // b leaves: its partitions are revoked through its handler, and a owns them all again.
    tokio::task::block_in_place(|| member_b.stop());
    assert!(
        b.calls()
            .iter()
            .any(|c| matches!(c, Call::Revoked { partitions, .. } if *partitions == theirs))
    );
    tokio::task::block_in_place(|| {
        wait_until(
            "a owns every partition again",
            Duration::from_secs(60),
            || owned_a.owned().len() == 4,
        )
    });
    tokio::task::block_in_place(|| member_a.stop());
    assert!(owned_a.owned().is_empty(), "leaving revokes everything");
}

/// A handler that panics when partitions are assigned.
struct Panics;

impl GroupHandler for Panics {
    fn assigned(&self, _partitions: &[u32], _last: Vec<PresenceEvent>) {
        panic!("the handler fails (on purpose, in a test)");
    }

    fn revoked(&self, _partitions: &[u32], _lost: bool) {}
}

/// A member whose thread ends on its own (here, the handler panics) says so through
/// `ended`, so that its owner can stop instead of holding partitions nobody serves (the
/// bridge exits with an error then). Without it, such a member looked alive and owned nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_thread_dies_says_it_ended() {
    let Some(broker) = broker() else { return };
    let config = broker.config("group-dies").partitions(2);
    let publisher = KafkaPublisher::start(config.clone()).await.unwrap();
    drop(publisher);
    let member = tokio::task::block_in_place(|| {
        GroupMember::start(
            &config,
            2,
            GroupConfig::new(random_topic("group"), "dies"),
            Arc::new(Panics) as Arc<dyn GroupHandler>,
        )
        .unwrap()
    });
    tokio::time::timeout(Duration::from_secs(60), member.ended())
        .await
        .expect("the member says its thread ended");
    tokio::task::block_in_place(|| member.stop());
}
