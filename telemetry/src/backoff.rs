//! The back-off of the controller's and the agents' watches, after a watch
//! or list fails (an API server restarting, say).
//!
//! kube's default (client-go's reflector: from 0.8 s doubling to 30 s, reset
//! only after 2 min without failures) grows during an outage of a few
//! seconds to waits of 25–30 s, so a node or a rollout resumed up to a
//! minute after the API server was back. Here the step doubles from
//! [`WATCH_BACKOFF_MIN`] to at most [`WATCH_BACKOFF_MAX`] and each wait is
//! between one and two steps (backon's jitter, so thousands of agents do not
//! all come back in the same instant); it starts again from the minimum
//! after any event.

use std::time::Duration;

use backon::ExponentialBuilder;

/// The first step after a failure (a wait of 0.25–0.5 s).
pub const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(250);
/// The largest step (a wait of 2.5–5 s): a watch resumes at most 5 s after
/// the API server is back.
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_millis(2500);

/// The watches' back-off: `kube::runtime::watcher::ExponentialBackoff` is
/// made from it (`.into()`) for `WatchStreamExt::backoff` and
/// `Controller::trigger_backoff`; it starts over from a fresh build.
pub fn watch_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(WATCH_BACKOFF_MIN)
        .with_max_delay(WATCH_BACKOFF_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder;

    use super::*;

    #[test]
    fn grows_to_the_bound_and_starts_over_when_built_again() {
        let mut backoff = watch_backoff().build();
        let waits: Vec<Duration> = backoff.by_ref().take(12).collect();
        assert!(waits[0] >= WATCH_BACKOFF_MIN && waits[0] <= 2 * WATCH_BACKOFF_MIN);
        assert!(
            waits.iter().all(|w| *w <= 2 * WATCH_BACKOFF_MAX),
            "{waits:?}"
        );
        // 0.25, 0.5, 1, 2, then 2.5 s steps: the last waits are 2.5–5 s.
        assert!(
            waits[5..].iter().all(|w| *w >= WATCH_BACKOFF_MAX),
            "{waits:?}"
        );
        let first = watch_backoff().build().next().unwrap_or_default();
        assert!(first <= 2 * WATCH_BACKOFF_MIN, "{first:?}");
    }
}
