//! Decodes a captured WebSocket message of relay frames and prints the events that pass a
//! group filter. Uses only `presence-frame`.
//!
//! ```text
//! cargo run --example decode_frames                                   # a built-in capture
//! cargo run --example decode_frames -- 0000019ac9d8734b0000002a01010100 0x0f
//! ```
//!
//! The first argument is the message as hex; the second, optional, the allowed group mask
//! (decimal or 0x-hex, all groups by default).

use std::process::ExitCode;

use presence_frame::{FrameBatch, GroupMask};

/// Three frames: user 42 available at a desk (group 0), user 7 busy remote (groups 1 and 3),
/// and relay user 4294967295 offline in no group.
const CAPTURE: &str = "0000019ac9d8734b0000002a010101000000019ac9d8734c0000000702020a000000019ac9d8734dffffffff00000000";

fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return Err(format!(
            "hex input has an odd number of digits ({})",
            text.len()
        ));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("not a hex byte at offset {i}"))
        })
        .collect()
}

fn parse_mask(text: &str) -> Result<GroupMask, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed
        .map(GroupMask)
        .map_err(|e| format!("bad group mask {text:?}: {e}"))
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let message = parse_hex(&args.next().unwrap_or_else(|| CAPTURE.to_string()))?;
    let allowed = args.next().map_or(Ok(GroupMask::ALL), |m| parse_mask(&m))?;

    let batch = FrameBatch::new(&message).map_err(|e| e.to_string())?;
    println!("{} frame(s); allowed groups {:#x}", batch.len(), allowed.0);
    for frame in batch.filter(allowed) {
        let event = frame.to_event();
        println!(
            "{time}  user {user:>10}  {status:<10} {location:<8} groups {groups:#010b}",
            time = event.time.to_rfc3339(),
            user = event.user,
            status = event.state.status.to_string(),
            location = event.state.location.to_string(),
            groups = frame.groups,
        );
    }
    let rejected = batch.len() - batch.filter(allowed).count();
    println!("{rejected} frame(s) filtered out");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
