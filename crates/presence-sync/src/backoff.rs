//! Exponential backoff with full jitter.

use std::time::Duration;

/// A random wait in `0..=min(cap, base * 2^(attempt-1))`; attempt 0 waits nothing.
pub(crate) fn full_jitter(base: Duration, cap: Duration, attempt: u32) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
    base.saturating_mul(factor)
        .min(cap)
        .mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        assert_eq!(full_jitter(base, cap, 0), Duration::ZERO);
        for attempt in 1..40 {
            let ceiling = base
                .saturating_mul(1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX))
                .min(cap);
            for _ in 0..50 {
                assert!(full_jitter(base, cap, attempt) <= ceiling);
            }
        }
    }
}
