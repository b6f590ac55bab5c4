//! The dashboard's memory: a fixed-size ring of one [`Sample`] per second over a rolling
//! window (15 minutes by default), so that a page load shows the trend at once and
//! `/v1/history` can hand it to other tools.
//!
//! The ring is allocated whole at start and never grows: every sample is a plain `Copy`
//! struct of fixed size (the channel timeline included, at most [`MAX_TIMELINE_CHANNELS`]
//! channels), so its cost is `size_of::<Sample>() × samples`, whatever the load
//! ([`History::byte_size`]; a unit test holds it under 2 MiB for the longest window).
//!
//! A sampler task ([`run_sampler`]) reads the bridge's cumulative counters once per interval
//! and stores what changed since the last reading ([`Reading::sample_since`]): events per
//! second by source, Kafka deliveries per second, the delivery latency p50/p99 of the records
//! acknowledged during that interval, reconnects, resyncs and faults; and the gauges as they
//! are (users by status, queue depth, each channel's state).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use presence_frame::Status;
use presence_kafka::HistogramSnapshot;
use presence_sync::ChannelState;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// How often the sampler takes a sample.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Default of `--history-window`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Shortest `--history-window`.
pub const MIN_WINDOW: Duration = Duration::from_secs(60);

/// Longest `--history-window`: four hours, 14,400 samples, still under 2 MiB.
pub const MAX_WINDOW: Duration = Duration::from_secs(4 * 60 * 60);

/// Channels the timeline keeps (Genesys allows 20 per OAuth client; the bridge plans at most
/// 19, a relay is one). Channels beyond are left off the timeline, not off the bridge.
pub const MAX_TIMELINE_CHANNELS: usize = 20;

/// The statuses charted, in code order; any other code counts as `Unknown`.
const STATUSES: [Status; 11] = Status::ALL;

/// Latency "nothing acknowledged in this interval".
const NO_LATENCY: u32 = u32::MAX;

/// A channel's byte in the timeline: the state in the low bits, [`RECONNECTED`] on top.
const RECONNECTED: u8 = 0x80;

/// The names of the timeline's state codes, by code (`/v1/history`'s `channelStates`).
pub const CHANNEL_STATES: [&str; 7] = [
    "absent",
    "setup",
    "connecting",
    "resyncing",
    "streaming",
    "backoff",
    "stopped",
];

fn state_code(state: ChannelState) -> u8 {
    match state {
        ChannelState::Setup => 1,
        ChannelState::Connecting => 2,
        ChannelState::Resyncing => 3,
        ChannelState::Streaming => 4,
        ChannelState::Backoff => 5,
        ChannelState::Stopped => 6,
    }
}

/// One interval of the bridge's life. Fixed size and `Copy`: the ring's cost is known.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// When it was taken, Unix milliseconds (wall clock, for the charts' time axis).
    pub at_ms: i64,
    /// Events per second over the interval: stream, resync, relay.
    pub events_per_s: [f32; 3],
    /// Users by status at the end of the interval, in [`Status::ALL`] order.
    pub users: [u32; STATUSES.len()],
    /// Records acknowledged by Kafka per second over the interval.
    pub delivered_per_s: f32,
    /// Users with a state waiting for Kafka at the end of the interval.
    pub queue_depth: u32,
    /// Delivery latency p50 and p99 of the records acknowledged during the interval, in
    /// microseconds; `u32::MAX` when none were.
    pub latency_us: [u32; 2],
    /// Reconnects and socket replacements during the interval (every channel, every cause).
    pub reconnects: u16,
    /// Resyncs completed during the interval.
    pub resyncs: u16,
    /// Faults seen during the interval: decode errors, Genesys 429/5xx/401 answers and
    /// network errors, failed resyncs, failed Kafka deliveries.
    pub faults: u16,
    /// Channels in use (at most [`MAX_TIMELINE_CHANNELS`]).
    pub channel_count: u8,
    /// Each channel's state at the end of the interval ([`CHANNEL_STATES`] code), with
    /// `0x80` set when it reconnected during the interval.
    pub channels: [u8; MAX_TIMELINE_CHANNELS],
}

/// The bridge's cumulative counters and gauges at one moment: what the sampler reads.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    /// Events received: stream, resync, relay.
    pub events: [u64; 3],
    /// Users by status, in [`Status::ALL`] order.
    pub users: [u64; STATUSES.len()],
    /// Records Kafka acknowledged.
    pub delivered: u64,
    /// The publisher's queue depth.
    pub queue_depth: u64,
    /// Delivery latency buckets (not cumulative) and their bounds.
    pub latency: Option<HistogramSnapshot>,
    /// Reconnects, every cause.
    pub reconnects: u64,
    /// Resyncs completed.
    pub resyncs: u64,
    /// Faults (see [`Sample::faults`]).
    pub faults: u64,
    /// Each channel's state and reconnect count.
    pub channels: Vec<(ChannelState, u64)>,
}

fn per_second(now: u64, before: u64, elapsed: Duration) -> f32 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    (now.saturating_sub(before) as f64 / secs) as f32
}

fn small(now: u64, before: u64) -> u16 {
    u16::try_from(now.saturating_sub(before)).unwrap_or(u16::MAX)
}

/// The latency quantiles of what was recorded between two snapshots of one histogram.
fn latency_between(
    now: Option<&HistogramSnapshot>,
    before: Option<&HistogramSnapshot>,
) -> [u32; 2] {
    let Some(now) = now else {
        return [NO_LATENCY; 2];
    };
    let counts: Vec<u64> = match before {
        Some(before) if before.counts.len() == now.counts.len() => now
            .counts
            .iter()
            .zip(&before.counts)
            .map(|(n, b)| n.saturating_sub(*b))
            .collect(),
        _ => now.counts.clone(),
    };
    let delta = HistogramSnapshot {
        bounds: now.bounds,
        count: counts.iter().sum(),
        counts,
        sum: now
            .sum
            .saturating_sub(before.map_or(Duration::ZERO, |b| b.sum)),
    };
    let micros = |q: f64| {
        delta.percentile(q).map_or(NO_LATENCY, |d| {
            u32::try_from(d.as_micros()).unwrap_or(NO_LATENCY - 1)
        })
    };
    [micros(0.50), micros(0.99)]
}

impl Reading {
    /// Reads the running bridge.
    pub fn of(state: &AppState) -> Reading {
        use std::sync::atomic::Ordering::Relaxed;
        let sync = state.sync.stats();
        let client = state.client.stats();
        let kafka = state.publisher.stats();
        let counts = state.registry.counts_by_status();
        let mut users = [0u64; STATUSES.len()];
        for (status, n) in counts.iter() {
            let at = STATUSES
                .iter()
                .position(|s| *s == status)
                .unwrap_or(STATUSES.len() - 1);
            users[at] += n;
        }
        Reading {
            events: [
                sync.stream_events.load(Relaxed),
                sync.resync_events.load(Relaxed),
                sync.relay_events.load(Relaxed),
            ],
            users,
            delivered: kafka.delivered,
            queue_depth: kafka.queue_depth as u64,
            reconnects: sync.reconnects().iter().map(|(_, n)| n).sum(),
            resyncs: sync.resyncs.load(Relaxed),
            faults: sync.decode_errors_total()
                + sync.resync_failures.load(Relaxed)
                + client.rate_limited.load(Relaxed)
                + client.server_errors.load(Relaxed)
                + client.unauthorized.load(Relaxed)
                + client.transport_errors.load(Relaxed)
                + kafka.failed,
            latency: Some(kafka.latency),
            channels: state
                .sync
                .channels()
                .iter()
                .map(|c| (c.state, c.reconnects))
                .collect(),
        }
    }

    /// The sample for the interval from `before` to this reading, `elapsed` long, ending at
    /// `at_ms` (Unix milliseconds).
    pub fn sample_since(&self, before: &Reading, elapsed: Duration, at_ms: i64) -> Sample {
        let mut sample = Sample {
            at_ms,
            queue_depth: u32::try_from(self.queue_depth).unwrap_or(u32::MAX),
            delivered_per_s: per_second(self.delivered, before.delivered, elapsed),
            latency_us: latency_between(self.latency.as_ref(), before.latency.as_ref()),
            reconnects: small(self.reconnects, before.reconnects),
            resyncs: small(self.resyncs, before.resyncs),
            faults: small(self.faults, before.faults),
            channel_count: self.channels.len().min(MAX_TIMELINE_CHANNELS) as u8,
            ..Sample::default()
        };
        for (i, rate) in sample.events_per_s.iter_mut().enumerate() {
            *rate = per_second(self.events[i], before.events[i], elapsed);
        }
        for (out, n) in sample.users.iter_mut().zip(self.users) {
            *out = u32::try_from(n).unwrap_or(u32::MAX);
        }
        for (i, (out, (state, reconnects))) in
            sample.channels.iter_mut().zip(&self.channels).enumerate()
        {
            // A channel that was not there before counts from zero (it was just created).
            let earlier = before.channels.get(i).map_or(0, |(_, n)| *n);
            *out = state_code(*state)
                | if *reconnects > earlier {
                    RECONNECTED
                } else {
                    0
                };
        }
        sample
    }
}

/// The ring of samples. Allocated whole at creation; [`push`](History::push) overwrites the
/// oldest once full.
#[derive(Debug)]
pub struct History {
    samples: Box<[Sample]>,
    /// Where the next sample goes.
    next: usize,
    /// Samples held (up to `samples.len()`).
    len: usize,
    interval: Duration,
}

impl History {
    /// A ring for `window` at one sample per `interval` (at least one sample).
    pub fn new(window: Duration, interval: Duration) -> History {
        let n = (window.as_millis() / interval.as_millis().max(1)).max(1) as usize;
        History {
            samples: vec![Sample::default(); n].into_boxed_slice(),
            next: 0,
            len: 0,
            interval,
        }
    }

    /// How many samples the ring holds when full.
    pub fn capacity(&self) -> usize {
        self.samples.len()
    }

    /// How many samples it holds now.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the ring takes, all of it allocated at creation: the samples (channel timeline
    /// included) and the struct itself.
    pub fn byte_size(&self) -> usize {
        std::mem::size_of::<History>() + std::mem::size_of_val(&*self.samples)
    }

    /// Adds a sample, dropping the oldest when full.
    pub fn push(&mut self, sample: Sample) {
        let capacity = self.samples.len();
        self.samples[self.next] = sample;
        self.next = (self.next + 1) % capacity;
        self.len = (self.len + 1).min(capacity);
    }

    /// The samples held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Sample> + '_ {
        let capacity = self.samples.len();
        let start = (self.next + capacity - self.len) % capacity;
        (0..self.len).map(move |i| &self.samples[(start + i) % capacity])
    }

    /// What `/v1/history` returns: the samples taken after `since_ms` (all when `None`),
    /// column by column.
    pub fn to_json(&self, since_ms: Option<i64>) -> HistoryJson {
        let samples: Vec<&Sample> = self
            .iter()
            .filter(|s| since_ms.is_none_or(|since| s.at_ms > since))
            .collect();
        let column = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(|s| f(s)).collect();
        let rate = |r: f32| (f64::from(r) * 100.0).round() / 100.0;
        let latency_ms = |i: usize| -> Vec<Option<f64>> {
            samples
                .iter()
                .map(|s| {
                    (s.latency_us[i] != NO_LATENCY).then(|| f64::from(s.latency_us[i]) / 1000.0)
                })
                .collect()
        };
        let channel_count = samples
            .iter()
            .map(|s| usize::from(s.channel_count))
            .max()
            .unwrap_or(0);
        HistoryJson {
            interval_ms: self.interval.as_millis() as u64,
            capacity: self.capacity(),
            t: samples.iter().map(|s| s.at_ms).collect(),
            events_per_second: EventsJson {
                stream: column(&|s| rate(s.events_per_s[0])),
                resync: column(&|s| rate(s.events_per_s[1])),
                relay: column(&|s| rate(s.events_per_s[2])),
            },
            users_by_status: STATUSES
                .iter()
                .enumerate()
                .map(|(i, status)| StatusJson {
                    status: status.to_string(),
                    code: status.code(),
                    values: samples.iter().map(|s| s.users[i]).collect(),
                })
                .collect(),
            kafka: KafkaJson {
                delivered_per_second: column(&|s| rate(s.delivered_per_s)),
                queue_depth: samples.iter().map(|s| s.queue_depth).collect(),
                latency_p50_ms: latency_ms(0),
                latency_p99_ms: latency_ms(1),
            },
            markers: MarkersJson {
                reconnects: samples.iter().map(|s| s.reconnects).collect(),
                resyncs: samples.iter().map(|s| s.resyncs).collect(),
                faults: samples.iter().map(|s| s.faults).collect(),
            },
            channel_states: CHANNEL_STATES,
            channels: (0..channel_count)
                .map(|index| ChannelJson {
                    index,
                    state: samples
                        .iter()
                        .map(|s| s.channels[index] & !RECONNECTED)
                        .collect(),
                    reconnected: samples
                        .iter()
                        .map(|s| u8::from(s.channels[index] & RECONNECTED != 0))
                        .collect(),
                })
                .collect(),
        }
    }
}

/// `/v1/history`'s body (documented in `docs/history.md`): one array per series, all the
/// length of `t`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryJson {
    interval_ms: u64,
    capacity: usize,
    t: Vec<i64>,
    events_per_second: EventsJson,
    users_by_status: Vec<StatusJson>,
    kafka: KafkaJson,
    markers: MarkersJson,
    channel_states: [&'static str; 7],
    channels: Vec<ChannelJson>,
}

#[derive(Debug, Serialize)]
struct EventsJson {
    stream: Vec<f64>,
    resync: Vec<f64>,
    relay: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct StatusJson {
    status: String,
    code: u8,
    values: Vec<u32>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct KafkaJson {
    delivered_per_second: Vec<f64>,
    queue_depth: Vec<u32>,
    latency_p50_ms: Vec<Option<f64>>,
    latency_p99_ms: Vec<Option<f64>>,
}

#[derive(Debug, Serialize)]
struct MarkersJson {
    reconnects: Vec<u16>,
    resyncs: Vec<u16>,
    faults: Vec<u16>,
}

#[derive(Debug, Serialize)]
struct ChannelJson {
    index: usize,
    state: Vec<u8>,
    reconnected: Vec<u8>,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Samples the bridge into `state.history` every [`SAMPLE_INTERVAL`] until `stop`.
pub async fn run_sampler(state: Arc<AppState>, stop: CancellationToken) {
    let mut before = Reading::of(&state);
    let mut then = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval_at(then + SAMPLE_INTERVAL, SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let now = tokio::time::Instant::now();
        let reading = Reading::of(&state);
        let sample = reading.sample_since(&before, now - then, unix_ms());
        state.history.lock().push(sample);
        before = reading;
        then = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static BOUNDS: [Duration; 3] = [
        Duration::from_millis(1),
        Duration::from_millis(10),
        Duration::from_millis(100),
    ];

    fn histogram(counts: [u64; 4]) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: &BOUNDS,
            count: counts.iter().sum(),
            counts: counts.to_vec(),
            sum: Duration::from_millis(5 * counts.iter().sum::<u64>()),
        }
    }

    #[test]
    fn a_sample_holds_what_changed_over_its_interval() {
        let before = Reading {
            events: [100, 0, 0],
            delivered: 50,
            latency: Some(histogram([10, 0, 0, 0])),
            reconnects: 3,
            resyncs: 1,
            faults: 7,
            channels: vec![(ChannelState::Streaming, 2), (ChannelState::Streaming, 0)],
            ..Reading::default()
        };
        let mut now = Reading {
            events: [300, 50, 0],
            delivered: 150,
            queue_depth: 12,
            // 100 acknowledged in the interval, all between 1 and 10 ms.
            latency: Some(histogram([10, 100, 0, 0])),
            reconnects: 4,
            resyncs: 2,
            faults: 9,
            channels: vec![(ChannelState::Resyncing, 3), (ChannelState::Streaming, 0)],
            ..Reading::default()
        };
        now.users[1] = 40; // Available
        now.users[8] = 60; // On Queue
        let s = now.sample_since(&before, Duration::from_secs(2), 1_000);
        assert_eq!(s.events_per_s, [100.0, 25.0, 0.0]);
        assert_eq!(s.delivered_per_s, 50.0);
        assert_eq!(s.queue_depth, 12);
        assert_eq!((s.reconnects, s.resyncs, s.faults), (1, 1, 2));
        // The interval's own deliveries: p50 half way through (1 ms, 10 ms].
        assert_eq!(s.latency_us, [5_500, 9_910]);
        assert_eq!(s.channel_count, 2);
        assert_eq!(s.channels[0], 3 | RECONNECTED, "resyncing, reconnected");
        assert_eq!(s.channels[1], 4, "streaming, quiet");
        assert_eq!(s.channels[2], 0, "absent");
        // Nothing acknowledged in an interval: no latency, not zero.
        let later = now.sample_since(&now, Duration::from_secs(1), 2_000);
        assert_eq!(later.latency_us, [NO_LATENCY; 2]);
        assert_eq!(later.channels[0], 3);
    }

    #[test]
    fn the_ring_keeps_the_newest_window_oldest_first() {
        let mut history = History::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(history.capacity(), 5);
        assert!(history.is_empty());
        for at in 1..=8 {
            history.push(Sample {
                at_ms: at,
                ..Sample::default()
            });
        }
        assert_eq!(history.len(), 5);
        let times: Vec<i64> = history.iter().map(|s| s.at_ms).collect();
        assert_eq!(times, [4, 5, 6, 7, 8]);
        let json = serde_json::to_value(history.to_json(Some(6))).expect("json");
        assert_eq!(json["t"], serde_json::json!([7, 8]));
        assert_eq!(json["usersByStatus"].as_array().map(Vec::len), Some(11));
    }

    #[test]
    fn the_json_has_one_value_per_sample_in_every_series() {
        let mut history = History::new(DEFAULT_WINDOW, SAMPLE_INTERVAL);
        let mut channels = [0u8; MAX_TIMELINE_CHANNELS];
        channels[0] = 4;
        channels[1] = 2 | RECONNECTED;
        history.push(Sample {
            at_ms: 1_700_000_000_000,
            events_per_s: [12.345, 0.0, 0.0],
            latency_us: [2_500, NO_LATENCY],
            channel_count: 2,
            channels,
            ..Sample::default()
        });
        let json = serde_json::to_value(history.to_json(None)).expect("json");
        assert_eq!(json["intervalMs"], 1000);
        assert_eq!(json["capacity"], 900);
        assert_eq!(
            json["eventsPerSecond"]["stream"],
            serde_json::json!([12.35])
        );
        assert_eq!(json["kafka"]["latencyP50Ms"], serde_json::json!([2.5]));
        assert_eq!(json["kafka"]["latencyP99Ms"], serde_json::json!([null]));
        assert_eq!(json["channels"][1]["state"], serde_json::json!([2]));
        assert_eq!(json["channels"][1]["reconnected"], serde_json::json!([1]));
        assert_eq!(json["channelStates"][2], "connecting");
    }

    /// The history's whole cost, allocated at start: the figure `docs/performance.md` quotes.
    #[test]
    fn the_history_costs_a_fixed_amount_well_under_2_mib() {
        let default = History::new(DEFAULT_WINDOW, SAMPLE_INTERVAL);
        let longest = History::new(MAX_WINDOW, SAMPLE_INTERVAL);
        let sample = std::mem::size_of::<Sample>();
        println!(
            "Sample: {sample} bytes; default window ({} samples): {} bytes; longest ({} samples): {} bytes",
            default.capacity(),
            default.byte_size(),
            longest.capacity(),
            longest.byte_size()
        );
        // A full default ring, busy numbers, 19 channels: the transient cost of one
        // `/v1/history` answer.
        let mut full = History::new(DEFAULT_WINDOW, SAMPLE_INTERVAL);
        for i in 0..full.capacity() as i64 {
            full.push(Sample {
                at_ms: 1_795_000_000_000 + 1_000 * i,
                events_per_s: [123_456.78, 1_234.5, 0.0],
                users: [10_000; 11],
                delivered_per_s: 99_999.99,
                queue_depth: 12_345,
                latency_us: [7_812, 45_123],
                channel_count: 19,
                channels: [4; MAX_TIMELINE_CHANNELS],
                ..Sample::default()
            });
        }
        let body = serde_json::to_string(&full.to_json(None)).expect("json");
        println!(
            "/v1/history, full default ring, 19 channels: {} bytes",
            body.len()
        );
        assert!(body.len() < 512 * 1024, "{}", body.len());
        assert!(sample <= 112, "a sample grew to {sample} bytes");
        assert_eq!(default.capacity(), 900);
        assert!(default.byte_size() <= 101_000, "{}", default.byte_size());
        assert!(
            longest.byte_size() < 2 * 1024 * 1024,
            "{}",
            longest.byte_size()
        );
    }
}
