//! Read-your-writes: `?min_version=N` waits up to 2 s for a read model to reach N.
//!
//! One listener per gateway process turns projector notifications into a counter on a
//! `watch` channel; a waiting request re-reads its row each time the counter moves (and at
//! least every 100 ms, in case a notification was missed while the listener reconnected).

use std::{future::Future, time::Duration};

use chronicle_projections::PROJECTION_CHANNEL;
use sqlx::{postgres::PgListener, PgPool};
use tokio::sync::watch;

/// How long a `min_version` read waits before answering `stale` (API.md).
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// Wakes readers when a projection commits.
#[derive(Clone, Debug)]
pub struct Freshness {
    updates: watch::Receiver<u64>,
}

impl Freshness {
    /// Starts the listener task on `pool`'s database.
    pub fn listen(pool: PgPool) -> Self {
        let (tx, rx) = watch::channel(0u64);
        spawn_listener(pool, PROJECTION_CHANNEL, move |_| {
            tx.send_modify(|n| *n += 1);
            !tx.is_closed()
        });
        Self { updates: rx }
    }

    /// Calls `read` until it returns a value whose version (by `version_of`) is at least
    /// `min_version`, or [`MAX_WAIT`] passes. Returns the last value read and whether it
    /// was fresh.
    ///
    /// # Errors
    /// Whatever `read` fails with.
    pub async fn wait_for<T, E, F, Fut>(
        &self,
        min_version: u64,
        version_of: impl Fn(&T) -> u64,
        mut read: F,
    ) -> Result<(Option<T>, bool), E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let mut updates = self.updates.clone();
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            updates.borrow_and_update();
            let value = read().await?;
            if value.as_ref().is_some_and(|v| version_of(v) >= min_version) {
                return Ok((value, true));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok((value, false));
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(wait, updates.changed()).await;
        }
    }
}

/// The answer of a single-aggregate read: the value, and with `?min_version` whether the read
/// model had reached it (`Chronicle-Consistency: fresh` or `stale`).
#[derive(Debug)]
pub struct Read<T> {
    pub value: Option<T>,
    pub consistency: Option<&'static str>,
}

impl Freshness {
    /// `read` once, or with `min_version` until fresh (see [`wait_for`](Self::wait_for)).
    ///
    /// # Errors
    /// Whatever `read` fails with.
    pub async fn read<T, E, F, Fut>(
        &self,
        min_version: Option<u64>,
        version_of: impl Fn(&T) -> u64,
        mut read: F,
    ) -> Result<Read<T>, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        Ok(match min_version {
            None => Read {
                value: read().await?,
                consistency: None,
            },
            Some(min) => {
                let (value, fresh) = self.wait_for(min, version_of, read).await?;
                Read {
                    value,
                    consistency: Some(if fresh { "fresh" } else { "stale" }),
                }
            }
        })
    }
}

/// Listens on the Postgres `channel` for as long as `on` returns `true`. `on` gets each
/// notification's payload, and `None` after the connection was lost and made again (when
/// notifications may have been missed).
pub(crate) fn spawn_listener(
    pool: PgPool,
    channel: &'static str,
    mut on: impl FnMut(Option<&str>) -> bool + Send + 'static,
) {
    tokio::spawn(async move {
        loop {
            match PgListener::connect_with(&pool).await {
                Ok(mut listener) => {
                    if listener.listen(channel).await.is_ok() {
                        while let Ok(notification) = listener.recv().await {
                            if !on(Some(notification.payload())) {
                                return;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, channel, "listener cannot connect"),
            }
            if !on(None) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}
