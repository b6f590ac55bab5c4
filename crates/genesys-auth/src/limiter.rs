//! Client-side pacing, so that our own request rate never earns a 429.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket sized so that no 60-second window holds more than 90% of `per_minute`
/// requests, whichever way the server counts its window (the 10% left over absorbs the
/// difference between when we send and when the server counts): a fifth of the budget may
/// go in a burst, the rest of the 90% refills evenly over the minute. For Genesys's 300 a
/// minute: a burst of 60, then 3.5 a second (210 a minute), at most 270 in any minute.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    capacity: f64,
    refill_per_sec: f64,
    state: parking_lot::Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Requests that may go now; below zero, the requests already promised a later time.
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// `per_minute` of 0 disables pacing.
    pub(crate) fn new(per_minute: u32) -> RateLimiter {
        let budget = f64::from(per_minute) * 0.9;
        let burst = (f64::from(per_minute) / 5.0).floor().max(1.0);
        RateLimiter {
            capacity: burst,
            // Never zero for a budget (zero means no pacing): a budget of 1 to 4 a minute
            // gets its burst of 1 and a tenth of the budget refilled a minute.
            refill_per_sec: (budget - burst).max(f64::from(per_minute) * 0.1) / 60.0,
            state: parking_lot::Mutex::new(Bucket {
                tokens: burst,
                updated: Instant::now(),
            }),
        }
    }

    /// Waits until one request may be sent, then takes it. Each call takes its token at
    /// once, on credit when the bucket is empty, and sleeps until the credit is paid off by
    /// the refill: callers go in the order they called, and no lock is held while one
    /// sleeps. A lock held across the sleep (as a fair async mutex would be) hangs every
    /// request behind a caller whose future stops being polled mid-wait without being
    /// dropped; here such a caller only spends its token.
    pub(crate) async fn acquire(&self) {
        if self.refill_per_sec <= 0.0 {
            return;
        }
        let debt = {
            let mut bucket = self.state.lock();
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * self.refill_per_sec).min(self.capacity);
            bucket.updated = now;
            bucket.tokens -= 1.0;
            -bucket.tokens
        };
        if debt > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(debt / self.refill_per_sec)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_budget_in_any_minute() {
        let limiter = RateLimiter::new(300);
        let start = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..600 {
            limiter.acquire().await;
            sent.push(start.elapsed());
        }
        // Any 60-second window holds at most 300 requests.
        for (i, at) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .take_while(|t| **t < *at + Duration::from_secs(60))
                .count();
            assert!(
                in_window <= 270,
                "{in_window} requests in the minute from {at:?}"
            );
        }
        // The first 60 go out at once, then 3.5 a second: the 600th after about 154 s.
        assert!(sent[59] < Duration::from_millis(1));
        assert!(sent[60] > Duration::from_millis(250));
        let last = sent[599].as_secs_f64();
        assert!((153.0..156.0).contains(&last), "the 600th after {last} s");
    }

    /// A caller whose wait stops being polled (a future kept aside, not dropped) does not
    /// hold up the callers after it. With the bucket behind an async mutex held across the
    /// sleep, the second caller here waited for good.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_no_longer_polled_does_not_hold_the_others_up() {
        let limiter = RateLimiter::new(300);
        for _ in 0..60 {
            limiter.acquire().await;
        }
        let mut parked = Box::pin(limiter.acquire());
        tokio::select! {
            biased;
            _ = &mut parked => panic!("the bucket is empty: the first caller waits"),
            _ = std::future::ready(()) => {}
        }
        let start = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), limiter.acquire())
            .await
            .expect("the second caller goes after its own wait");
        // Behind the parked caller's token: two refills of 1/3.5 s.
        let waited = start.elapsed().as_secs_f64();
        assert!((0.5..0.65).contains(&waited), "waited {waited} s");
        drop(parked);
    }
}
