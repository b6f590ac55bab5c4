//! Property tests: encode-then-decode round trips, and no input makes a decoder panic.

use presence_frame::{
    EventTime, Frame, FrameBatch, GroupMask, Guid, Location, Payload, Status, UserId,
    decode_notification, encode_message,
};
use proptest::prelude::*;

fn any_frame() -> impl Strategy<Value = Frame> {
    (
        any::<i64>(),
        any::<u32>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
    )
        .prop_map(|(time_ms, user_id, status, location, groups)| Frame {
            time_ms,
            user_id,
            status: Status(status),
            location: Location(location),
            groups,
        })
}

proptest! {
    #[test]
    fn frame_round_trips(frame in any_frame()) {
        prop_assert_eq!(Frame::decode(&frame.encode()), frame);
    }

    #[test]
    fn message_round_trips_and_consumes_everything(frames in prop::collection::vec(any_frame(), 1..64)) {
        let message = encode_message(&frames);
        let batch = FrameBatch::new(&message).expect("valid message");
        prop_assert_eq!(batch.len(), frames.len());
        let decoded: Vec<Frame> = batch.iter().collect();
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn filter_equals_decode_then_filter(frames in prop::collection::vec(any_frame(), 1..64), allowed in any::<u64>()) {
        let message = encode_message(&frames);
        let batch = FrameBatch::new(&message).expect("valid message");
        let want: Vec<Frame> = frames.iter().copied().filter(|f| f.group_mask().passes(GroupMask(allowed))).collect();
        let got: Vec<Frame> = batch.filter(GroupMask(allowed)).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn binary_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        match Payload::classify_binary(&bytes) {
            Ok(Payload::Frames(batch)) => {
                prop_assert_eq!(bytes.len() % 16, 0);
                prop_assert_eq!(batch.iter().count(), bytes.len() / 16);
            }
            Ok(Payload::Json(json)) => {
                let _ = decode_notification(json, EventTime(0));
            }
            Err(_) => prop_assert!(bytes.is_empty() || bytes.len() % 16 != 0),
        }
    }

    #[test]
    fn json_decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_notification(&bytes, EventTime(0));
    }

    #[test]
    fn json_decode_never_panics_on_mutated_notifications(
        cut in 0usize..400,
        flip in 0usize..400,
        byte in any::<u8>(),
    ) {
        let mut text = include_bytes!("data/presence-event.json").to_vec();
        if let Some(b) = text.get_mut(flip) {
            *b = byte;
        }
        text.truncate(cut);
        let _ = decode_notification(&text, EventTime(0));
    }

    #[test]
    fn guid_round_trips(value in any::<u128>()) {
        let guid = Guid(value);
        let text = guid.to_string();
        prop_assert_eq!(Guid::parse(&text), Some(guid));
        prop_assert_eq!(Guid::parse(&text.to_uppercase()), Some(guid));
        prop_assert_eq!(text.parse::<UserId>().ok(), Some(UserId::Genesys(guid)));
    }

    #[test]
    fn relay_ids_round_trip_and_never_collide_with_guids(n in any::<u32>()) {
        let id = UserId::Relay(n);
        prop_assert_eq!(id.to_string().parse::<UserId>().ok(), Some(id));
        prop_assert_ne!(id, UserId::Genesys(Guid(u128::from(n))));
    }

    #[test]
    fn event_time_round_trips_through_rfc3339(ms in -62_135_596_800_000i64..253_402_300_799_999) {
        let time = EventTime(ms);
        prop_assert_eq!(EventTime::parse_rfc3339(&time.to_rfc3339()).ok(), Some(time));
    }
}
