//! presence-frame micro-benchmarks: batch decode + group filter, single-frame decode, and JSON
//! presence notification decode.
//!
//! Run: `cargo bench --bench frame`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use presence_frame::{
    EventTime, Frame, FrameBatch, GroupMask, Location, Notification, Status, decode_notification,
    encode_message,
};

/// The group filter of the batch benchmarks: groups 0, 2, 4 and 6 of the eight a frame carries.
const ALLOWED: GroupMask = GroupMask(0b0101_0101);

/// 4096 frames (64 KiB) with varied fields. Each user is in one of the eight relay groups
/// (a single random bit of the group byte), so about half pass [`ALLOWED`] in an
/// unpredictable order and the filter's skip path is measured as much as the decode path.
/// (Random group bytes would pass 15 times in 16: a byte misses four given bits one time in
/// sixteen.)
fn message() -> Vec<u8> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let frames: Vec<Frame> = (0..4096u32)
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            Frame {
                time_ms: 1_764_322_997_067 + i64::from(i),
                user_id: (seed >> 32) as u32,
                status: Status((seed % 10) as u8),
                location: Location((seed >> 8) as u8 % 3),
                groups: 1 << ((seed >> 16) % 8),
            }
        })
        .collect();
    encode_message(&frames)
}

fn fold(acc: u64, f: &Frame) -> u64 {
    acc.wrapping_mul(31)
        ^ (f.time_ms as u64)
        ^ (u64::from(f.user_id) << 8)
        ^ (u64::from(f.status.code()) << 40)
        ^ (u64::from(f.location.code()) << 48)
        ^ (u64::from(f.groups) << 56)
}

/// The share of the message's frames that pass `allowed`.
fn pass_ratio(message: &[u8], allowed: GroupMask) -> f64 {
    let batch = FrameBatch::new(message).expect("valid");
    batch.filter(allowed).count() as f64 / batch.len() as f64
}

fn batch(c: &mut Criterion) {
    let message = message();
    let allowed = ALLOWED;
    let ratio = pass_ratio(&message, allowed);
    eprintln!(
        "frame_batch: {:.1}% of the {} frames pass the filter {:#04x}",
        ratio * 100.0,
        message.len() / 16,
        allowed.0
    );
    assert!(
        (0.45..=0.55).contains(&ratio),
        "the batch benchmarks are meant to pass about half the frames, not {ratio:.3}"
    );
    let mut group = c.benchmark_group("frame_batch");
    group.throughput(Throughput::Bytes(message.len() as u64));

    group.bench_function("decode_filter_checksum_64KiB", |b| {
        b.iter(|| {
            let batch = FrameBatch::new(black_box(&message)).expect("valid");
            black_box(
                batch
                    .filter(black_box(allowed))
                    .fold(0u64, |acc, f| fold(acc, &f)),
            )
        })
    });

    let mut out: Vec<Frame> = Vec::with_capacity(4096);
    group.bench_function("decode_filter_into_buffer_64KiB", |b| {
        b.iter(|| {
            out.clear();
            let batch = FrameBatch::new(black_box(&message)).expect("valid");
            out.extend(batch.filter(black_box(allowed)));
            black_box(&out);
        })
    });

    // The naive baseline the target is compared with: an owned event per frame.
    group.bench_function("baseline_event_per_frame_64KiB", |b| {
        b.iter(|| {
            let events: Vec<_> = black_box(&message)
                .chunks(16)
                .map(|c| Frame::decode_slice(c).expect("16 bytes").to_event())
                .filter(|e| e.state.groups.passes(black_box(allowed)))
                .collect();
            black_box(events)
        })
    });
    group.finish();

    let mut single = c.benchmark_group("frame_single");
    single.throughput(Throughput::Elements(1));
    let raw: [u8; 16] = message[..16].try_into().expect("16 bytes");
    single.bench_function("decode", |b| b.iter(|| Frame::decode(black_box(&raw))));
    single.finish();
}

fn json(c: &mut Criterion) {
    let text = br#"{"topicName":"v2.users.9ed7d9f6-0c59-4360-ac54-40dd35eb9c2f.presence","version":"2","eventBody":{"source":"PURECLOUD","presenceDefinition":{"id":"6a3af858-942f-489d-9700-5f9bcdcdae9b","systemPresence":"AVAILABLE"},"primary":true,"message":"","modifiedDate":"2026-11-28T09:03:17.067Z"},"metadata":{"CorrelationId":"290034f4-c3d7-46fd-8342-ee5bc859b7e9"}}"#;
    let mut group = c.benchmark_group("json");
    group.throughput(Throughput::Elements(1));
    group.bench_function("presence_event_decode", |b| {
        b.iter(
            || match decode_notification(black_box(text), EventTime(0)) {
                Ok(Notification::Presence(event)) => black_box(event),
                other => panic!("unexpected {other:?}"),
            },
        )
    });
    group.finish();
}

criterion_group!(benches, batch, json);
criterion_main!(benches);
