//! Pacing of the feed's retries and of its warnings: a source that keeps failing is retried
//! with a bounded exponential backoff, and its failures are logged at a bounded rate.

use std::time::Duration;

use tokio::time::Instant;

/// Bounded exponential backoff: `first`, doubled on every step, at most `max`.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `first` and never above `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The delay to wait now; the next one is twice as long, up to the bound.
    pub fn step(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    /// A new bound (a reload changed it): the next delay is at most `max`.
    pub fn set_max(&mut self, max: Duration) {
        self.max = max;
        self.next = self.next.min(max);
    }

    /// Back to the first delay, after progress.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Lets one message through per `every`, counting the ones held back meanwhile.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// At most one message per `every`.
    pub fn new(every: Duration) -> Self {
        RateLimit {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a message may be logged now, `n` being how many were held back since
    /// the last one; `None` when this one is to be held back.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now - last < self.every) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let steps: Vec<u64> = (0..5).map(|_| b.step().as_millis() as u64).collect();
        assert_eq!(steps, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(100));
    }

    #[test]
    fn a_new_bound_caps_the_next_delay_and_the_growth() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let steps: Vec<u64> = (0..4).map(|_| b.step().as_millis() as u64).collect();
        assert_eq!(steps, [100, 200, 400, 800]);
        b.set_max(Duration::from_millis(300));
        assert_eq!(b.step(), Duration::from_millis(300), "lowered at once");
        b.set_max(Duration::from_millis(1000));
        let steps: Vec<u64> = (0..3).map(|_| b.step().as_millis() as u64).collect();
        assert_eq!(steps, [300, 600, 1000], "raised: grows to the new bound");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_passes_one_per_period_and_counts_the_rest() {
        let mut limit = RateLimit::new(Duration::from_secs(10));
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(limit.allow(), Some(2));
    }
}
