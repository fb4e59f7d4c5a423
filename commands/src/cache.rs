//! Provides the aggregate cache: the last state and version of aggregates this process
//! wrote or read, kept between commands so a hot aggregate is not loaded from Postgres for
//! each one.
//!
//! It promises nothing about freshness: another process may have written since. The
//! executor treats an entry as a guess, checked by the append's optimistic concurrency (a
//! stale entry ends in a conflict and a retry on state loaded from Postgres), and decides any
//! refusal or no-op made on cached state again on fresh state.

use std::{any::Any, sync::Arc};

use cqrs_es::Aggregate;

/// A cached aggregate: its state and version, type-erased so one cache serves every type
/// (the key carries the type).
type Cached = Arc<dyn Any + Send + Sync>;

/// The cache, or none (capacity 0: every command loads its aggregate from Postgres).
pub(crate) struct AggregateCache(Option<moka::future::Cache<String, Cached>>);

impl AggregateCache {
    pub(crate) fn new(capacity: u64) -> Self {
        Self((capacity > 0).then(|| moka::future::Cache::new(capacity)))
    }

    /// The state and version held for `key`, if any.
    pub(crate) async fn get<A: Aggregate + Clone + 'static>(&self, key: &str) -> Option<(A, u64)> {
        let entry = self.0.as_ref()?.get(key).await?;
        entry
            .downcast_ref::<(A, u64)>()
            .map(|(state, version)| (state.clone(), *version))
    }

    /// Holds `state` at `version` for `key`.
    pub(crate) async fn put<A: Aggregate + 'static>(&self, key: String, state: A, version: u64) {
        if let Some(cache) = &self.0 {
            let entry: Cached = Arc::new((state, version));
            cache.insert(key, entry).await;
        }
    }

    /// Holds `state` at `version` for `key` unless an entry at the same or a newer version is
    /// held already.
    pub(crate) async fn put_if_newer<A: Aggregate + 'static>(
        &self,
        key: String,
        state: A,
        version: u64,
    ) {
        let Some(cache) = &self.0 else { return };
        if let Some(entry) = cache.get(&key).await {
            if entry
                .downcast_ref::<(A, u64)>()
                .is_some_and(|(_, held)| *held >= version)
            {
                return;
            }
        }
        let entry: Cached = Arc::new((state, version));
        cache.insert(key, entry).await;
    }

    /// Drops what is held for `key` (it lost a race: it is behind).
    pub(crate) async fn forget(&self, key: &str) {
        if let Some(cache) = &self.0 {
            cache.invalidate(key).await;
        }
    }
}

/// The cache key of an aggregate: the type is part of it, so one cache serves every type.
pub(crate) fn cache_key<A: Aggregate>(id: &str) -> String {
    format!("{}\u{0}{id}", A::TYPE)
}
