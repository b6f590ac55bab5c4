//! Raw bytes as a binary WebSocket message: classification, batch decode and the group filter
//! must never panic, and the filter must agree with decoding every frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use presence_frame::{EventTime, GroupMask, Payload, decode_notification};

fuzz_target!(|data: &[u8]| {
    let allowed = GroupMask(u64::from(data.first().copied().unwrap_or(0)));
    match Payload::classify_binary(data) {
        Ok(Payload::Frames(batch)) => {
            assert_eq!(batch.len() * 16, data.len());
            let filtered = batch.filter(allowed).count();
            let by_hand = batch.iter().filter(|f| f.group_mask().passes(allowed)).count();
            assert_eq!(filtered, by_hand);
            for frame in batch.iter() {
                let _ = frame.to_event();
            }
        }
        Ok(Payload::Json(json)) => {
            let _ = decode_notification(json, EventTime(0));
        }
        Err(_) => assert!(data.is_empty() || data.len() % 16 != 0),
    }
});
