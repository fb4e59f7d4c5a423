//! Every read model as a value ([`ReadModel`]), for the processes and tools that pick one at
//! run time: the projector role, replay, set-up, status reports and parked events.

use chronicle_bus::{Faults, SubscriberError, SubscriberRef};
use chronicle_commands::Databases;
use futures::future::{BoxFuture, LocalBoxFuture};

use crate::{
    alerts::AlertsProjection, business::BusinessMetricsProjection,
    chat_history::ChatHistoryProjection, file_metadata::FileMetadataProjection,
    inventory::InventoryProjection, jobs::JobsProjection, orders::OrdersProjection,
    posts::PostsProjection, runtime::durable_name, users::UsersProjection, Projection,
    ProjectionError, Projector, ProjectorConfig, ReplayStats,
};

/// What the projector, replay and set-up do with a read model, whatever its type: a
/// [`Projection`] with its type erased ([`Erased`]), so that the read models are one list
/// of values ([`READ_MODELS`]) that others can add to.
pub trait ReadModel: Send + Sync {
    /// Its [`Projection::name`].
    fn name(&self) -> &'static str;

    /// Its [`Projection::context`]: the schema of its tables, checkpoint and parked events.
    fn context(&self) -> &'static str;

    /// Its [`Projection::tables`].
    fn tables(&self) -> &'static [&'static str];

    /// Creates its tables in its context's schema.
    fn setup<'a>(&'a self, db: &'a Databases) -> BoxFuture<'a, Result<(), ProjectionError>>;

    /// Its projector, on its context's pool, until `shutdown` (see [`Projector::run`]).
    fn run(
        &self,
        db: &Databases,
        client: async_nats::Client,
        config: ProjectorConfig,
        faults: Faults,
        shutdown: BoxFuture<'static, ()>,
    ) -> BoxFuture<'static, Result<(), SubscriberError>>;

    /// Rebuilds it from the log (see [`replay`](crate::replay)). A rebuild is awaited where
    /// it is asked for (the `replay` command, a test), so its future is not `Send`.
    fn replay<'a>(
        &'a self,
        db: &'a Databases,
        client: &'a async_nats::Client,
        batch_max: usize,
        progress: &'a mut dyn FnMut(u64, u64),
    ) -> LocalBoxFuture<'a, Result<ReplayStats, ProjectionError>>;

    /// Rebuilds it from the event stores (`replay --from postgres`; see
    /// [`replay_from_store`](crate::replay_from_store)).
    fn replay_from_store<'a>(
        &'a self,
        db: &'a Databases,
        client: &'a async_nats::Client,
        batch_max: usize,
        progress: &'a mut dyn FnMut(u64, u64),
    ) -> LocalBoxFuture<'a, Result<ReplayStats, ProjectionError>>;

    /// It as a reader of the log (its checkpoint's name, its durable consumer, its
    /// context), for status reports and parked events.
    fn subscriber(&self) -> SubscriberRef {
        SubscriberRef {
            name: self.name().to_owned(),
            durable: durable_name(self.name()),
            context: self.context(),
        }
    }
}

/// A [`Projection`] as a [`ReadModel`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Erased<P>(pub P);

impl<P: Projection + Clone> ReadModel for Erased<P> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn context(&self) -> &'static str {
        self.0.context()
    }

    fn tables(&self) -> &'static [&'static str] {
        self.0.tables()
    }

    fn setup<'a>(&'a self, db: &'a Databases) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(crate::runtime::setup(db.of(self.0.context()), &self.0))
    }

    fn run(
        &self,
        db: &Databases,
        client: async_nats::Client,
        config: ProjectorConfig,
        faults: Faults,
        shutdown: BoxFuture<'static, ()>,
    ) -> BoxFuture<'static, Result<(), SubscriberError>> {
        let pool = db.of(self.0.context()).clone();
        let projector = Projector::new(self.0.clone(), pool, client, config).with_faults(faults);
        Box::pin(async move { projector.run(shutdown).await })
    }

    fn replay<'a>(
        &'a self,
        db: &'a Databases,
        client: &'a async_nats::Client,
        batch_max: usize,
        progress: &'a mut dyn FnMut(u64, u64),
    ) -> LocalBoxFuture<'a, Result<ReplayStats, ProjectionError>> {
        let pool = db.of(self.0.context());
        Box::pin(crate::replay(&self.0, pool, client, batch_max, progress))
    }

    fn replay_from_store<'a>(
        &'a self,
        db: &'a Databases,
        client: &'a async_nats::Client,
        batch_max: usize,
        progress: &'a mut dyn FnMut(u64, u64),
    ) -> LocalBoxFuture<'a, Result<ReplayStats, ProjectionError>> {
        Box::pin(crate::replay_from_store(
            &self.0, db, client, batch_max, progress,
        ))
    }
}

/// Every read model this crate provides: what `chronicle up` runs and
/// `GET /api/v1/projections` reports, in that order.
pub const READ_MODELS: &[&dyn ReadModel] = &[
    &Erased(InventoryProjection),
    &Erased(OrdersProjection),
    &Erased(PostsProjection),
    &Erased(UsersProjection),
    &Erased(ChatHistoryProjection),
    &Erased(FileMetadataProjection),
    &Erased(JobsProjection),
    &Erased(AlertsProjection),
    &Erased(BusinessMetricsProjection),
];

/// The read model called `name`, if there is one.
pub fn read_model(name: &str) -> Option<&'static dyn ReadModel> {
    READ_MODELS.iter().copied().find(|m| m.name() == name)
}

/// Every read model as a reader of the log, for status reports.
pub fn subscriber_refs() -> Vec<SubscriberRef> {
    READ_MODELS.iter().map(|m| m.subscriber()).collect()
}
