//! The back-off of the controller's and the agents' watches, after a watch
//! or list fails (an API server restarting, say).
//!
//! kube's default (client-go's reflector: from 0.8 s doubling to 30 s, reset
//! only after 2 min without failures) grows during an outage of a few
//! seconds to waits of 25–30 s, so a node or a rollout resumed up to a
//! minute after the API server was back. Here the wait doubles from
//! [`WATCH_BACKOFF_MIN`] to at most [`WATCH_BACKOFF_MAX`], each drawn
//! between half and all of it (so thousands of agents do not all come back
//! in the same instant), and starts again from the minimum after any event.

use std::time::Duration;

use kube::runtime::utils::Backoff;

/// The first wait after a failure.
pub const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The longest wait between two attempts: a watch resumes at most this long
/// after the API server is back.
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Exponential back-off with jitter, bounded by [`WATCH_BACKOFF_MAX`]; for
/// `WatchStreamExt::backoff` and `Controller::trigger_backoff`.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self {
            next: WATCH_BACKOFF_MIN,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = jitter(self.next);
        self.next = self.next.saturating_mul(2).min(WATCH_BACKOFF_MAX);
        Some(wait)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_BACKOFF_MIN;
    }
}

/// A wait between half and all of `backoff`.
pub fn jitter(backoff: Duration) -> Duration {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    backoff.mul_f64(0.5 + (random % 1024) as f64 / 2046.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_bound_and_resets() {
        let mut backoff = WatchBackoff::default();
        let waits: Vec<Duration> = backoff.by_ref().take(12).collect();
        assert!(waits[0] >= WATCH_BACKOFF_MIN / 2 && waits[0] <= WATCH_BACKOFF_MIN);
        assert!(waits.iter().all(|w| *w <= WATCH_BACKOFF_MAX), "{waits:?}");
        // 0.5, 1, 2, 4, then 5 s: the last ones are drawn from [2.5, 5] s.
        assert!(
            waits[5..].iter().all(|w| *w >= WATCH_BACKOFF_MAX / 2),
            "{waits:?}"
        );
        backoff.reset();
        let first = backoff.next().unwrap_or_default();
        assert!(first <= WATCH_BACKOFF_MIN, "{first:?}");
    }
}
