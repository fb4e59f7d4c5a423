//! Every projection by name, for the processes and tools that pick them at run time.

use std::future::Future;

use chronicle_bus::Faults;
use chronicle_commands::Databases;

use crate::{
    alerts::AlertsProjection, business::BusinessMetricsProjection,
    chat_history::ChatHistoryProjection, file_metadata::FileMetadataProjection,
    inventory::InventoryProjection, jobs::JobsProjection, orders::OrdersProjection,
    posts::PostsProjection, runtime::durable_name, users::UsersProjection, Projection,
    ProjectionError, Projector, ProjectorConfig, ReplayStats,
};

/// Every projection as a subscriber: `(name, durable consumer)`, for status reports.
pub fn subscriber_refs() -> Vec<chronicle_bus::SubscriberRef> {
    PROJECTIONS
        .iter()
        .map(|name| chronicle_bus::SubscriberRef {
            name: (*name).to_owned(),
            durable: durable_name(name),
            context: context_named(name).expect("a listed projection"),
        })
        .collect()
}

/// The one list of read models: each name (its [`Projection::name`]) with its type. Calls
/// `$then!` with the arguments given, then `;` and the list, so [`PROJECTIONS`] and every
/// lookup by name below are made from it.
macro_rules! with_projections {
    ($then:ident $(, $arg:tt)*) => {
        $then!($($arg),*; "inventory" => InventoryProjection, "orders" => OrdersProjection,
            "posts" => PostsProjection, "users" => UsersProjection,
            "chat_history" => ChatHistoryProjection, "file_metadata" => FileMetadataProjection,
            "jobs" => JobsProjection, "alerts" => AlertsProjection,
            "business_metrics" => BusinessMetricsProjection)
    };
}

macro_rules! names {
    ($($name:literal => $type:ident),*) => {
        &[$($name),*]
    };
    (; $($rest:tt)*) => {
        names!($($rest)*)
    };
}

/// Every read model this crate provides, by [`Projection::name`]: what `chronicle up` runs
/// and `GET /api/v1/projections` reports.
pub const PROJECTIONS: &[&str] = with_projections!(names);

macro_rules! dispatch {
    ($name:expr, $p:ident, $body:expr; $($n:literal => $type:ident),*) => {
        match $name {
            $($n => {
                let $p = $type;
                Some($body)
            })*
            _ => None,
        }
    };
}

/// Evaluates `$body` with `$p` bound to the projection named `$name` (`Some`), or `None`
/// when there is no such projection.
macro_rules! by_name {
    ($name:expr, |$p:ident| $body:expr) => {
        with_projections!(dispatch, ($name), $p, ($body))
    };
}

/// The bounded context of the projection `name` (whose schema holds its tables).
/// `None` when there is no such projection.
pub fn context_named(name: &str) -> Option<&'static str> {
    by_name!(name, |p| p.context())
}

/// The read-model tables of the projection `name`. `None` when there is no such projection.
pub fn tables_named(name: &str) -> Option<&'static [&'static str]> {
    by_name!(name, |p| p.tables())
}

/// Creates the tables of the projection `name`. `None` when there is no such projection.
pub async fn setup_named(name: &str, db: &Databases) -> Option<Result<(), ProjectionError>> {
    by_name!(name, |p| crate::runtime::setup(db.of(p.context()), &p)
        .await)
}

/// Runs the projector of `name` until `shutdown` (see [`Projector::run`]). `None` when there
/// is no such projection.
pub fn run_named(
    name: &str,
    db: &Databases,
    client: async_nats::Client,
    config: ProjectorConfig,
    faults: Faults,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Option<impl Future<Output = Result<(), chronicle_bus::SubscriberError>> + Send + 'static> {
    fn boxed<P: Projection>(
        p: P,
        db: &Databases,
        client: async_nats::Client,
        config: ProjectorConfig,
        faults: Faults,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), chronicle_bus::SubscriberError>> + Send>>
    {
        let pool = db.of(p.context()).clone();
        let projector = Projector::new(p, pool, client, config).with_faults(faults);
        Box::pin(async move { projector.run(shutdown).await })
    }
    by_name!(name, |p| boxed(p, db, client, config, faults, shutdown))
}

/// Rebuilds the projection `name` (see [`replay`](crate::replay)). `None` when there is no
/// such projection.
pub async fn replay_named(
    name: &str,
    db: &Databases,
    client: &async_nats::Client,
    batch_max: usize,
    progress: impl FnMut(u64, u64),
) -> Option<Result<ReplayStats, ProjectionError>> {
    by_name!(name, |p| crate::replay(
        &p,
        db.of(p.context()),
        client,
        batch_max,
        progress
    )
    .await)
}

/// Rebuilds the projection `name` from the event store (`replay --from postgres`; see
/// [`crate::replay_from_store`]). `None` when there is no such projection.
pub async fn replay_named_from_store(
    name: &str,
    db: &Databases,
    client: &async_nats::Client,
    batch_max: usize,
    progress: impl FnMut(u64, u64),
) -> Option<Result<ReplayStats, ProjectionError>> {
    by_name!(name, |p| crate::replay_from_store(
        &p, db, client, batch_max, progress
    )
    .await)
}
