//! A client-side rate limiter per EC2 action and region.
//!
//! EC2 throttles each action with its own token bucket per account and
//! region. Retrying after `RequestLimitExceeded` works, but a large fleet
//! then spends its time in backoff storms. Pacing requests to the same
//! buckets client-side means they are never hit in the first place.
//!
//! The limiter runs on tokio's clock, so tests with a paused clock measure
//! paced work in virtual time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::Action;

/// One token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Bucket size (requests that may be sent back to back).
    pub burst: f64,
    /// Refill rate in requests per second.
    pub per_second: f64,
}

impl Bucket {
    /// A bucket of `burst` requests refilled at `per_second`.
    pub const fn new(burst: f64, per_second: f64) -> Self {
        Self { burst, per_second }
    }

    /// The shortest time `n` requests can take through this bucket, starting full.
    pub fn minimum_time(&self, n: u64) -> Duration {
        let beyond = (n as f64 - self.burst).max(0.0);
        Duration::from_secs_f64(beyond / self.per_second)
    }
}

/// The bucket sizes to pace each action to.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    enabled: bool,
    overrides: HashMap<Action, Bucket>,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self::aws()
    }
}

impl RateLimits {
    /// AWS's published EC2 buckets (per account and region).
    pub fn aws() -> Self {
        Self {
            enabled: true,
            overrides: HashMap::new(),
        }
    }

    /// No pacing at all (for local endpoints such as moto).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            overrides: HashMap::new(),
        }
    }

    /// Whether any pacing happens.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Replaces the bucket of one action.
    #[must_use]
    pub fn with(mut self, action: Action, bucket: Bucket) -> Self {
        self.overrides.insert(action, bucket);
        self
    }

    /// The bucket `action` is paced to, or `None` when disabled.
    pub fn bucket(&self, action: Action) -> Option<Bucket> {
        if !self.enabled {
            return None;
        }
        Some(
            self.overrides
                .get(&action)
                .copied()
                .unwrap_or_else(|| aws_bucket(action)),
        )
    }
}

/// The published bucket of an action: paginated/filtered describes share the
/// non-mutating bucket; a handful of mutating actions have their own; the
/// rest share the mutating default.
pub fn aws_bucket(action: Action) -> Bucket {
    use Action::*;
    match action {
        // KMS allows far more, but one key is checked once per run.
        a if a.is_describe() || a == DescribeKey => Bucket::new(100.0, 20.0),
        CreateSnapshot | CreateSnapshots | DeleteSnapshot | DeregisterImage | CreateVolume
        | DeleteVolume => Bucket::new(100.0, 5.0),
        CopyImage => Bucket::new(100.0, 1.0),
        CreateTags => Bucket::new(100.0, 10.0),
        _ => Bucket::new(50.0, 5.0),
    }
}

#[derive(Debug)]
struct State {
    /// Tokens left; negative means requests already scheduled into the future.
    tokens: f64,
    last: Instant,
}

/// Paces calls per `(action, region)` to [`RateLimits`].
#[derive(Debug, Default)]
pub struct RateLimiter {
    limits: RateLimits,
    state: Mutex<HashMap<(Action, String), State>>,
}

impl RateLimiter {
    /// A limiter for the given limits.
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// Waits until one `action` request may be sent to `region`.
    ///
    /// Each caller reserves its slot under the lock and sleeps outside it,
    /// so concurrent callers are served in arrival order without a
    /// thundering herd.
    pub async fn acquire(&self, action: Action, region: &str) {
        let delay = self.reserve(action, region);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    fn reserve(&self, action: Action, region: &str) -> Duration {
        let Some(bucket) = self.limits.bucket(action) else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        // A poisoned lock only means another task panicked mid-update of a
        // plain number; the data is still usable.
        let mut map = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = map.entry((action, region.to_owned())).or_insert(State {
            tokens: bucket.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(st.last).as_secs_f64();
        st.tokens = (st.tokens + elapsed * bucket.per_second).min(bucket.burst);
        st.last = now;
        st.tokens -= 1.0;
        if st.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-st.tokens / bucket.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill_rate() {
        let limiter = RateLimiter::new(
            RateLimits::aws().with(Action::DeleteSnapshot, Bucket::new(10.0, 5.0)),
        );
        let start = Instant::now();
        for _ in 0..10 {
            limiter.acquire(Action::DeleteSnapshot, "us-east-1").await;
        }
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the burst goes out at once"
        );
        for _ in 0..10 {
            limiter.acquire(Action::DeleteSnapshot, "us-east-1").await;
        }
        let took = start.elapsed().as_secs_f64();
        assert!(
            (took - 2.0).abs() < 0.01,
            "10 more at 5/s take 2 s, took {took}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_are_per_action_and_region() {
        let limiter =
            RateLimiter::new(RateLimits::aws().with(Action::DeleteSnapshot, Bucket::new(1.0, 1.0)));
        let start = Instant::now();
        limiter.acquire(Action::DeleteSnapshot, "us-east-1").await;
        limiter.acquire(Action::DeleteSnapshot, "eu-west-1").await;
        limiter
            .acquire(Action::DescribeSnapshots, "us-east-1")
            .await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        limiter.acquire(Action::DeleteSnapshot, "us-east-1").await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_never_exceed_the_bucket() {
        let bucket = Bucket::new(100.0, 5.0);
        let limiter = std::sync::Arc::new(RateLimiter::new(RateLimits::aws()));
        let start = Instant::now();
        let mut sent = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..300 {
            let l = limiter.clone();
            handles.push(tokio::spawn(async move {
                l.acquire(Action::DeleteSnapshot, "r").await;
                Instant::now()
            }));
        }
        for h in handles {
            sent.push(h.await.unwrap().duration_since(start).as_secs_f64());
        }
        sent.sort_by(f64::total_cmp);
        // Replay the send times through AWS's bucket: it must never run dry.
        let (mut tokens, mut last) = (bucket.burst, 0.0);
        for t in &sent {
            tokens = (tokens + (t - last) * bucket.per_second).min(bucket.burst);
            last = *t;
            tokens -= 1.0;
            assert!(tokens > -1e-6, "throttled at t={t}");
        }
        let total = sent.last().copied().unwrap_or_default();
        assert!(
            (total - bucket.minimum_time(300).as_secs_f64()).abs() < 0.01,
            "took {total}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_never_waits() {
        let limiter = RateLimiter::new(RateLimits::disabled());
        let start = Instant::now();
        for _ in 0..1000 {
            limiter.acquire(Action::CopyImage, "r").await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn published_buckets() {
        assert_eq!(
            aws_bucket(Action::DescribeSnapshots),
            Bucket::new(100.0, 20.0)
        );
        assert_eq!(aws_bucket(Action::DeleteSnapshot), Bucket::new(100.0, 5.0));
        assert_eq!(aws_bucket(Action::CopySnapshot), Bucket::new(50.0, 5.0));
        assert_eq!(aws_bucket(Action::CopyImage), Bucket::new(100.0, 1.0));
        assert_eq!(aws_bucket(Action::CreateTags), Bucket::new(100.0, 10.0));
    }
}
