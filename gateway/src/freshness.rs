//! Read-your-writes: `?min_version=N` waits up to 2 s for a read model to reach N.
//!
//! One listener per gateway process turns projector notifications into a counter on a
//! `watch` channel; a waiting request re-reads its row each time the counter moves (and at
//! least every 100 ms, in case a notification was missed while the listener reconnected).

use std::{future::Future, time::Duration};

use chronicle_projections::{posts::POSTS_CHANNEL, PROJECTION_CHANNEL};
use sqlx::{postgres::PgListener, PgPool};
use tokio::sync::watch;

use crate::cache::PostCache;

/// How long a `min_version` read waits before answering `stale` (the API contract).
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// Wakes readers when a projection commits.
#[derive(Clone, Debug)]
pub struct Freshness {
    updates: watch::Receiver<u64>,
}

impl Freshness {
    /// Readers waiting on what `sender` is bumped for (one bump per projector commit, see
    /// [`listen`]).
    pub fn new(updates: watch::Receiver<u64>) -> Self {
        Self { updates }
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
        let started = tokio::time::Instant::now();
        let deadline = started + MAX_WAIT;
        let waited = || {
            metrics::histogram!("chronicle_read_fresh_wait_seconds")
                .record(started.elapsed().as_secs_f64());
        };
        loop {
            updates.borrow_and_update();
            let value = read().await?;
            if value.as_ref().is_some_and(|v| version_of(v) >= min_version) {
                waited();
                return Ok((value, true));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                waited();
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

/// What the listener heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notice<'a> {
    Message {
        channel: &'a str,
        payload: &'a str,
    },
    /// The connection was lost and LISTEN is in place again: notifications sent in between
    /// were missed, so anything may have changed.
    Lost,
}

/// Listens on the Postgres `channels`, all on ONE connection, for as long as `on` returns
/// `true`. One connection keeps the order in which a transaction sent its notifications: a
/// projector's post invalidation is handled before the commit notice that wakes a
/// `min_version` reader, so that reader never finds the cache older than the read model.
///
/// `PgListener::recv` reconnects silently and never tells that notifications were lost,
/// so this uses `try_recv`, which reports the lost connection as `Ok(None)`.
pub(crate) fn spawn_listener(
    pool: PgPool,
    channels: &'static [&'static str],
    mut on: impl FnMut(Notice<'_>) -> bool + Send + 'static,
) {
    tokio::spawn(async move {
        let mut reconnected = false;
        // A closed pool is a process shutting down: nothing more to listen for.
        while !pool.is_closed() {
            match PgListener::connect_with(&pool).await {
                Ok(mut listener) => match listener.listen_all(channels.iter().copied()).await {
                    Ok(()) => {
                        if reconnected && !on(Notice::Lost) {
                            return;
                        }
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(n)) => {
                                    let notice = Notice::Message {
                                        channel: n.channel(),
                                        payload: n.payload(),
                                    };
                                    if !on(notice) {
                                        return;
                                    }
                                }
                                Ok(None) => {
                                    tracing::warn!(
                                        ?channels,
                                        "listener connection lost; reconnecting"
                                    );
                                    break;
                                }
                                Err(_) if pool.is_closed() => return,
                                Err(e) => {
                                    tracing::warn!(error = %e, ?channels, "listener failed; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, ?channels, "cannot LISTEN"),
                },
                Err(e) => tracing::warn!(error = %e, ?channels, "listener cannot connect"),
            }
            reconnected = true;
            // Until LISTEN is back, nothing is known: drop what may be stale now as well.
            if !on(Notice::Lost) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// The listener of a gateway process, one per database (`pools`: a context on a database of
/// its own notifies there): projector commits wake `min_version` readers, post changes drop
/// cached posts, a lost connection does both.
pub(crate) fn listen(pools: Vec<PgPool>, posts: &PostCache) -> Freshness {
    let (tx, rx) = watch::channel(0u64);
    for pool in pools {
        hear(pool, tx.clone(), posts);
    }
    Freshness::new(rx)
}

/// The listener on one database, feeding the process's one counter and cache.
fn hear(pool: PgPool, tx: watch::Sender<u64>, posts: &PostCache) {
    let posts = posts.downgrade();
    spawn_listener(pool, &[POSTS_CHANNEL, PROJECTION_CHANNEL], move |notice| {
        let cache = posts.upgrade();
        match notice {
            Notice::Message { channel, payload } if channel == POSTS_CHANNEL => {
                if let Some(cache) = &cache {
                    cache.invalidate(Some(payload));
                }
            }
            Notice::Message { .. } => tx.send_modify(|n| *n += 1),
            Notice::Lost => {
                if let Some(cache) = &cache {
                    cache.invalidate(None);
                }
                tx.send_modify(|n| *n += 1);
            }
        }
        cache.is_some() || !tx.is_closed()
    });
}
