//! The one periodic-task loop: every part of a process that does something on a clock (the
//! files janitor's sweeps, the alert engine's evaluation and purge, the built-in series
//! collector, the idempotency-record purge) runs through it, with the same schedule,
//! shutdown and error handling.
//!
//! It promises: a run is never cut short by shutdown (shutdown is heard between runs); runs
//! never overlap; a run that overruns its period delays the next instead of bunching up the
//! missed ones; a failed run is logged with its whole cause and the next one runs on schedule.

use std::{future::Future, time::Duration};

use crate::ErrorChain;

/// Runs `task` every `period` until `shutdown`, the first time after `first`
/// ([`Duration::ZERO`]: at once).
pub async fn every<E, F, Fut>(
    what: &'static str,
    period: Duration,
    first: Duration,
    shutdown: impl Future<Output = ()>,
    mut task: F,
) where
    E: std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    tokio::pin!(shutdown);
    // tokio's interval panics on a zero period.
    let period = period.max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        if let Err(e) = task().await {
            tracing::warn!(what, error = %ErrorChain(&e), "failed; runs again on schedule");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    };

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("this run fails")]
    struct Fails;

    #[tokio::test(start_paused = true)]
    async fn runs_on_schedule_through_failures_and_stops_between_runs() {
        let runs = Arc::new(AtomicU32::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let counted = runs.clone();
        let task = tokio::spawn(every(
            "test",
            Duration::from_secs(10),
            Duration::ZERO,
            async {
                let _ = stopped.await;
            },
            move || {
                let counted = counted.clone();
                async move {
                    // Every other run fails: the next still comes on schedule.
                    if counted.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                        Err(Fails)
                    } else {
                        Ok(())
                    }
                }
            },
        ));
        tokio::time::sleep(Duration::from_secs(35)).await;
        // At 0, 10, 20 and 30 s.
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        stop.send(()).unwrap();
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4, "no run after shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_run_may_wait_a_while() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let task = tokio::spawn(every(
            "test",
            Duration::from_secs(10),
            Duration::from_secs(25),
            std::future::pending(),
            move || {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), Fails>(())
                }
            },
        ));
        tokio::time::sleep(Duration::from_secs(24)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2, "at 25 and 35 s");
        task.abort();
    }
}
