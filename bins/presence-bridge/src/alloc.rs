//! The process's allocator: mimalloc, tuned for a small resident set.
//!
//! With glibc's allocator a fifth of the bridge's CPU at saturation went to `malloc` and
//! `free`: records are allocated on the dispatcher thread and freed on librdkafka's
//! delivery-report thread, a pattern glibc's per-thread arenas handle badly. mimalloc's
//! `override` feature makes it librdkafka's `malloc` as well. Out of the box it keeps freed
//! memory for a second and backs its pages with transparent huge pages, which took the resident
//! set with 100,000 users from 59 to 141 MiB; transparent huge pages are off at build time
//! (`no_thp`) and [`tune`] returns freed pages at once instead of after a second: the peak,
//! reached while the first snapshot of every user is queued, then stays near 52 MiB (59 to 69
//! MiB with a 10 ms delay), for no CPU cost the load tool could tell from noise.
//! `docs/performance.md` has the figures.

/// mimalloc as the global allocator (and, through `override`, as the C `malloc`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Index of `mi_option_purge_delay` in `mi_option_e` of the mimalloc 3 that `libmimalloc-sys`
/// bundles (the crate names only some options). A test checks it against the option's
/// documented default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory may stay resident before it is returned to the system, in ms.
pub const PURGE_DELAY_MS: std::ffi::c_long = 0;

/// Applies the allocator settings, unless the environment sets them (`MIMALLOC_PURGE_DELAY`
/// wins, for experiments). Call first thing in `main`.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set stores an integer in mimalloc's option table; it may be called
        // from any thread at any time, and the index names an option of the bundled version.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_index_is_the_purge_delay() {
        // mimalloc 3's default purge delay is 1,000 ms (10 ms in mimalloc 2: then this test
        // fails and the index needs checking). Nothing in this test process has set it, unless
        // the environment did.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads an option.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(before, 1_000);
        tune();
        // SAFETY: reads an option.
        let after = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(after, PURGE_DELAY_MS);
    }
}
