//! Where one import's time went: waiting on the provider, or wrapping
//! material here. Each import's log line reports both, so that a
//! benchmark can tell our share from the cloud's.
//!
//! The counters are task-local to the import's own future, not fields of
//! the provider, because imports of one provider run concurrently: a
//! shared counter would mix the time of every import in flight.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

tokio::task_local! {
    static CLOCK: ImportClock;
}

#[derive(Default)]
struct ImportClock {
    api: Cell<Duration>,
    wrap: Cell<Duration>,
}

/// Time spent by one import.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportTimes {
    /// Waiting on the provider's API, including polls for its own work.
    pub api: Duration,
    /// Wrapping material for the provider.
    pub wrap: Duration,
}

/// Runs `import`, counting the time reported through [`api_time`] and
/// [`wrap_time`] while it runs.
pub async fn timed<F: Future>(import: F) -> (F::Output, ImportTimes) {
    CLOCK
        .scope(ImportClock::default(), async {
            let output = import.await;
            let times = CLOCK.with(|clock| ImportTimes {
                api: clock.api.get(),
                wrap: clock.wrap.get(),
            });
            (output, times)
        })
        .await
}

/// Adds time spent waiting on the provider; outside [`timed`] it is not
/// counted.
pub fn api_time(spent: Duration) {
    let _ = CLOCK.try_with(|clock| clock.api.set(clock.api.get() + spent));
}

/// Adds time spent wrapping material; outside [`timed`] it is not counted.
pub fn wrap_time(spent: Duration) {
    let _ = CLOCK.try_with(|clock| clock.wrap.set(clock.wrap.get() + spent));
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::join;

    #[tokio::test]
    async fn concurrent_imports_count_their_own_time() {
        let one = timed(async {
            api_time(Duration::from_millis(5));
            tokio::task::yield_now().await;
            wrap_time(Duration::from_millis(1));
        });
        let two = timed(async {
            tokio::task::yield_now().await;
            api_time(Duration::from_millis(7));
        });
        let ((_, a), (_, b)) = join(one, two).await;
        assert_eq!(a.api, Duration::from_millis(5));
        assert_eq!(a.wrap, Duration::from_millis(1));
        assert_eq!(b.api, Duration::from_millis(7));
        assert_eq!(b.wrap, Duration::ZERO);
        // Not counted, and no panic, outside an import.
        api_time(Duration::from_secs(1));
    }
}
