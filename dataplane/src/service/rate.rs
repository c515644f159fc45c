//! A token bucket over all requests to the control service: a client (or a runaway
//! controller) cannot make the gateway spend more than a bounded share of its control
//! core. Requests over the rate are refused at once, never queued.

use std::sync::Mutex;
use std::time::Instant;

/// `per_second` requests a second on average, bursts of up to `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_second: f64::from(per_second.max(1)),
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                last: Instant::now(),
            }),
        }
    }

    /// Takes a token if one is there.
    pub fn try_acquire(&self) -> bool {
        self.try_acquire_at(Instant::now())
    }

    fn try_acquire_at(&self, now: Instant) -> bool {
        // A poisoned lock only means another request panicked mid-update; the bucket's
        // two numbers are still meaningful.
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} requests/s with bursts of {}",
            self.per_second, self.burst
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(10, 3);
        let t0 = Instant::now();
        assert!(
            (0..3).all(|_| limiter.try_acquire_at(t0)),
            "the burst is available"
        );
        assert!(!limiter.try_acquire_at(t0), "then nothing");
        // 10 per second: one token every 100 ms, never more than the burst.
        assert!(!limiter.try_acquire_at(t0 + Duration::from_millis(50)));
        assert!(limiter.try_acquire_at(t0 + Duration::from_millis(150)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| limiter.try_acquire_at(later)).count(), 3);
    }
}
