//! Provides each bounded context's connection to PostgreSQL: one pool per context, whose
//! `search_path` is the context's own schema, so the context's unqualified SQL reads and
//! writes its own tables and nothing else names them.
//!
//! Each context's schema holds all of its tables: its event store (events, snapshots,
//! outbox, idempotency records, claims, the relay's position), the records it keeps beside
//! its events, its read models, and where its readers of the log stand.
//!
//! It promises that a context's pool is the only way its code reaches its schema: the test
//! harness connects each pool as a role granted only that schema, so a query of another
//! context's table fails there instead of passing unnoticed.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool,
};

/// The names of the bounded contexts whose code is in the shared crates, each the name of
/// its PostgreSQL schema. The list of contexts (`chronicle::contexts`) is the one that
/// names every context; a context in a crate of its own declares its name there.
pub mod contexts {
    pub const IDENTITY: &str = "identity";
    pub const COMMERCE: &str = "commerce";
    pub const BLOG: &str = "blog";
    pub const CHAT: &str = "chat";
    pub const FILES: &str = "files";
    pub const SCHEDULER: &str = "scheduler";
}

/// The pools of one process: the shared one (migrations and the host's own checks, as the
/// database's owner) and one per context, opened lazily (a process running one role connects only where
/// that role reads).
#[derive(Clone)]
pub struct Databases {
    shared: PgPool,
    contexts: Arc<BTreeMap<&'static str, PgPool>>,
    /// The contexts' names, in the list's order.
    names: Arc<[&'static str]>,
}

impl std::fmt::Debug for Databases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Databases")
            .field("contexts", &self.contexts.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// How long an idle context connection stays open: a process holds a pool per context, so
/// connections one burst opened are given back soon after.
const IDLE: Duration = Duration::from_secs(30);

impl Databases {
    /// Pools on `shared`'s database: `shared` as it is, and one per context of `names` made
    /// from `login(context, options)` (the harness logs each in as its own role; a
    /// deployment returns the options unchanged), each at most `pool_size` connections.
    pub fn new(
        shared: PgPool,
        names: &[&'static str],
        pool_size: u32,
        login: impl Fn(&'static str, PgConnectOptions) -> PgConnectOptions,
    ) -> Self {
        let base = shared.connect_options().as_ref().clone();
        let acquire = shared.options().get_acquire_timeout();
        let contexts = names
            .iter()
            .map(|&context| {
                let options = login(context, base.clone()).options([("search_path", context)]);
                let pool = PgPoolOptions::new()
                    .max_connections(pool_size)
                    .min_connections(0)
                    .idle_timeout(IDLE)
                    .acquire_timeout(acquire)
                    .connect_lazy_with(options);
                (context, pool)
            })
            .collect();
        Self {
            shared,
            contexts: Arc::new(contexts),
            names: names.into(),
        }
    }

    /// The shared pool: the migrations, and the host's health check. No context's tables
    /// are on its path.
    pub fn shared(&self) -> &PgPool {
        &self.shared
    }

    /// The pool of `context` (one of the names it was made with).
    ///
    /// # Panics
    /// When `context` is not a context: a programming error, not an input.
    pub fn of(&self, context: &str) -> &PgPool {
        self.contexts
            .get(context)
            .unwrap_or_else(|| panic!("{context:?} is not a bounded context"))
    }

    /// Every context with its pool, in the order of the names it was made with.
    pub fn contexts(&self) -> impl Iterator<Item = (&'static str, &PgPool)> {
        self.names
            .iter()
            .map(|context| (*context, self.of(context)))
    }

    /// One pool per database: the shared one, then each context's that is on a database of
    /// its own. What is watched once per database (LISTEN: a notification is sent on the
    /// database whose transaction sends it, so a context on another server notifies there).
    pub fn databases(&self) -> Vec<&PgPool> {
        let at = |pool: &PgPool| {
            let options = pool.connect_options();
            (
                options.get_host().to_owned(),
                options.get_port(),
                options.get_database().map(str::to_owned),
            )
        };
        let mut seen = vec![at(&self.shared)];
        let mut pools = vec![&self.shared];
        for (_, pool) in self.contexts() {
            let here = at(pool);
            if !seen.contains(&here) {
                seen.push(here);
                pools.push(pool);
            }
        }
        pools
    }

    /// Closes every pool.
    pub async fn close(&self) {
        for pool in self.contexts.values() {
            pool.close().await;
        }
        self.shared.close().await;
    }
}
