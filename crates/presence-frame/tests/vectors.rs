//! Every canonical vector of `data/frame-vectors.json` (a copy of the project's shared vectors).

use presence_frame::{Error, Frame, FrameBatch, GroupMask, Location, Payload, Status};
use serde_json::Value;

fn vectors() -> Value {
    let text = include_str!("data/frame-vectors.json");
    serde_json::from_str(text).expect("vectors file is valid JSON")
}

fn hex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex length");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn field(v: &Value, name: &str) -> i64 {
    v[name].as_i64().unwrap_or_else(|| panic!("field {name}"))
}

#[test]
fn frames_decode_to_their_values_and_reencode() {
    let vectors = vectors();
    let frames = vectors["frames"].as_array().expect("frames");
    assert!(frames.len() >= 8);
    for case in frames {
        let name = case["name"].as_str().expect("name");
        let bytes = hex(case["hex"].as_str().expect("hex"));
        let want = &case["decoded"];
        let frame = Frame::decode_slice(&bytes).expect(name);
        assert_eq!(frame.time_ms, field(want, "timestamp_ms"), "{name}");
        assert_eq!(i64::from(frame.user_id), field(want, "user_id"), "{name}");
        assert_eq!(
            i64::from(frame.status.code()),
            field(want, "status"),
            "{name}"
        );
        assert_eq!(
            i64::from(frame.location.code()),
            field(want, "location"),
            "{name}"
        );
        assert_eq!(i64::from(frame.groups), field(want, "group_mask"), "{name}");

        // Encoding writes the same bytes, except that the reserved byte is always zero.
        let mut expected = bytes.clone();
        expected[15] = 0;
        assert_eq!(frame.encode().to_vec(), expected, "{name}");
    }
}

#[test]
fn unknown_codes_are_kept_not_dropped() {
    let frame = Frame::decode_slice(&hex("0000019ac9d8734f000003e8c8008000")).expect("frame");
    assert_eq!(frame.status, Status(200));
    assert!(!frame.status.is_known());
    assert_eq!(frame.status.to_string(), "unknown(200)");
    assert_eq!(Location(9).to_string(), "unknown(9)");
    assert_eq!(Status::UNKNOWN.to_string(), "Unknown");
}

#[test]
fn messages_split_into_frames_or_fail_naming_the_length() {
    let vectors = vectors();
    for case in vectors["messages"].as_array().expect("messages") {
        let name = case["name"].as_str().expect("name");
        let bytes = hex(case["hex"].as_str().expect("hex"));
        if let Some(count) = case["frames"].as_u64() {
            let batch = FrameBatch::new(&bytes).expect(name);
            assert_eq!(batch.len() as u64, count, "{name}");
            assert_eq!(batch.iter().count() as u64, count, "{name}");
            // The batch view and one-by-one decoding agree.
            for (i, frame) in batch.iter().enumerate() {
                assert_eq!(
                    Frame::decode_slice(&bytes[i * 16..i * 16 + 16]).ok(),
                    Some(frame)
                );
            }
        } else if let Some(message) = case["error"].as_str() {
            let err = FrameBatch::new(&bytes).expect_err(name);
            assert!(
                matches!(err, Error::BadLength { len } if len == bytes.len()),
                "{name}"
            );
            assert!(
                err.to_string().contains(message),
                "{name}: {err} vs {message}"
            );
        } else if case["json"].as_bool() == Some(true) {
            assert!(
                matches!(Payload::classify_binary(&bytes), Ok(Payload::Json(_))),
                "{name}"
            );
        } else {
            panic!("vector {name} has no expectation");
        }
    }
}

#[test]
fn filter_vectors() {
    let vectors = vectors();
    for case in vectors["filter"].as_array().expect("filter") {
        let mask = case["group_mask"].as_u64().expect("mask");
        let allowed = case["allowed"].as_u64().expect("allowed");
        let passes = case["passes"].as_bool().expect("passes");
        assert_eq!(GroupMask(mask).passes(GroupMask(allowed)), passes, "{case}");

        // The batch filter agrees with the scalar one on a frame carrying that mask.
        let frame = Frame {
            time_ms: 1,
            user_id: 1,
            status: Status::AVAILABLE,
            location: Location::DESK,
            groups: mask as u8,
        };
        let message = frame.encode();
        let batch = FrameBatch::new(&message).expect("one frame");
        assert_eq!(
            batch.filter(GroupMask(allowed)).count(),
            usize::from(passes),
            "{case}"
        );
    }
}
