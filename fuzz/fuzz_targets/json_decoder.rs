//! Raw bytes as a Genesys notification: decoding must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use presence_frame::{EventTime, decode_notification};

fuzz_target!(|data: &[u8]| {
    let _ = decode_notification(data, EventTime(0));
});
