//! An organisation of 60,000 users (and 6,000 spare) with three OAuth clients: it starts
//! quickly, lists every user in 120 pages of 500 with presence and groups, serves the truth,
//! and gives each client its own 20 channels.
//!
//! `measure_60k_users` (ignored) prints timings and the emulator's CPU use at 200 changes/s:
//! `cargo test -p genesys-emulator --release --test emulator scale::measure -- --ignored --nocapture`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use genesys_emulator::{EmulatorConfig, EmulatorHandle};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use crate::common::*;

const USERS: u32 = 60_000;
const SPARE: u32 = 6_000;
const PAGE: &str = "/api/v2/users?pageSize=500&expand=presence&expand=groups";

fn config() -> EmulatorConfig {
    EmulatorConfig::default()
        .users(USERS)
        .spare_users(SPARE)
        .clients(3)
        .change_rate(200.0)
        .shift_change_every(Duration::ZERO)
}

/// The fields of a users page this test reads (typed: parsing 120 pages into `Value`s is
/// most of the time in a debug build).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsersPage {
    entities: Vec<ListedUser>,
    total: u64,
    page_count: u32,
    next_uri: Option<String>,
}

#[derive(Deserialize)]
struct ListedUser {
    id: String,
    presence: Option<ListedPresence>,
    groups: Option<Vec<IgnoredAny>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListedPresence {
    presence_definition: ListedDefinition,
}

#[derive(Deserialize)]
struct ListedDefinition {
    id: String,
}

/// Walks every page of the users listing with `token`, following `nextUri`: the user ids
/// and the number of pages.
async fn walk_listing(emu: &EmulatorHandle, token: &str) -> (HashSet<String>, u32) {
    let mut ids = HashSet::new();
    let mut pages = 0;
    let mut next = Some(PAGE.to_owned());
    while let Some(path) = next.take() {
        let reply = api(emu, token, "GET", &path).await;
        assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
        let page: UsersPage = serde_json::from_slice(&reply.body).expect("a users page");
        pages += 1;
        assert_eq!(page.total, u64::from(USERS), "{path}");
        assert_eq!(page.page_count, 120, "{path}");
        assert_eq!(page.entities.len(), 500, "{path}");
        for user in page.entities {
            let ListedUser {
                id,
                presence,
                groups,
            } = user;
            assert!(
                presence.is_some_and(|p| !p.presence_definition.id.is_empty()),
                "{id} without presence"
            );
            assert!(groups.is_some(), "{id} without groups");
            ids.insert(id);
        }
        next = page.next_uri;
        assert!(pages <= 120, "more pages than pageCount");
    }
    (ids, pages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_thousand_users_three_clients() {
    let started = Instant::now();
    let emu = start(config()).await;
    let startup = started.elapsed();
    let clients = emu.clients();
    assert_eq!(clients.len(), 3);

    let listed = Instant::now();
    let token = token_of(&emu, &clients[1]).await;
    let (ids, pages) = walk_listing(&emu, &token).await;
    let listing = listed.elapsed();
    assert_eq!(pages, 120);
    assert_eq!(ids.len(), USERS as usize);
    let active: HashSet<String> = emu
        .active_user_ids()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ids, active);

    let truth_at = Instant::now();
    let truth = emu.truth();
    let truth_time = truth_at.elapsed();
    assert_eq!(truth.len(), USERS as usize);

    // Each client: 21 channels created, 20 live, none of another client's touched.
    for client in &clients {
        let token = token_of(&emu, client).await;
        for _ in 0..21 {
            create_channel(&emu, &token).await;
        }
    }
    let stats = emu.stats();
    assert_eq!(stats.channels.len(), 60);
    assert_eq!(stats.clients.len(), 3);
    for client in &clients {
        let of = &stats.clients[client.id()];
        assert_eq!(
            (of.channels_created, of.channels),
            (21, 20),
            "{}",
            client.id()
        );
        assert_eq!(
            stats
                .channels
                .iter()
                .filter(|c| c.client_id == client.id())
                .count(),
            20
        );
    }
    assert_eq!(stats.clients[clients[1].id()].api_requests, 120 + 21);
    eprintln!(
        "60k users (debug or release as built): start {startup:?}, 120 pages {listing:?}, \
         truth {truth_time:?}"
    );
    emu.shutdown().await;
}

/// CPU time of this process so far (user + system), from `/proc/self/stat`; `None` off Linux.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel's USER_HZ is 100 on every mainstream Linux.
    Some(Duration::from_millis(ticks * 10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it in release with --ignored --nocapture"]
async fn measure_60k_users() {
    let started = Instant::now();
    let emu = start(config()).await;
    eprintln!("start: {:?}", started.elapsed());
    let token = token_of(&emu, &emu.clients()[0]).await;
    let mut slowest = Duration::ZERO;
    let mut fetching = Duration::ZERO;
    let mut bytes = 0;
    let walk = Instant::now();
    for page in 1..=120 {
        let at = Instant::now();
        let reply = api(&emu, &token, "GET", &format!("{PAGE}&pageNumber={page}")).await;
        assert_eq!(reply.status, 200);
        slowest = slowest.max(at.elapsed());
        fetching += at.elapsed();
        bytes += reply.body.len();
        assert!(matches!(reply.json()["entities"], Value::Array(ref a) if a.len() == 500));
    }
    eprintln!(
        "120 pages of 500: {:?} fetched and parsed, {fetching:?} of it fetching ({} KiB a \
         page), slowest page {slowest:?}",
        walk.elapsed(),
        bytes / 120 / 1024
    );
    let at = Instant::now();
    let truth = emu.truth();
    eprintln!("truth() of {} users: {:?}", truth.len(), at.elapsed());
    let at = Instant::now();
    let reply = request(emu.addr(), "GET", "/emulator/truth", &[], "").await;
    eprintln!(
        "GET /emulator/truth: {:?}, {} bytes",
        at.elapsed(),
        reply.body.len()
    );
    // Idle but for the generator at 200 changes/s (no client connected).
    let cpu = process_cpu();
    let events = emu.stats().events_generated;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let made = emu.stats().events_generated - events;
    if let (Some(before), Some(after)) = (cpu, process_cpu()) {
        let used = after.saturating_sub(before);
        eprintln!(
            "generator at 200/s for 5 s: {made} changes, CPU {used:?} ({:.1}% of a core)",
            used.as_secs_f64() / 5.0 * 100.0
        );
    }
    emu.shutdown().await;
}
