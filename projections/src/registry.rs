//! A read model as a value ([`ReadModel`]), for the processes and tools that pick one at run
//! time: the projector role, replay, set-up, status reports and parked events. The list of
//! them is each context's, in `chronicle::contexts`.

use chronicle_bus::{Faults, SubscriberError, SubscriberRef};
use chronicle_commands::Databases;
use futures::future::{BoxFuture, LocalBoxFuture};

use crate::{
    projection::Definition, runtime::durable_name, Projection, ProjectionError, Projector,
    ProjectorConfig, ReplayStats,
};

/// What the projector, replay and set-up do with a read model, whatever its type: a
/// [`Projection`] with its type erased ([`Erased`]), so that the read models are values a
/// context can list.
pub trait ReadModel: Send + Sync {
    /// Its [`Projection::DEFINITION`].
    fn definition(&self) -> Definition;

    /// Its [`Projection::name`].
    fn name(&self) -> &'static str {
        self.definition().name
    }

    /// Its [`Projection::context`]: the schema of its tables, checkpoint and parked events.
    fn context(&self) -> &'static str {
        self.definition().context
    }

    /// Its [`Projection::tables`].
    fn tables(&self) -> &'static [&'static str] {
        self.definition().tables
    }

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

    /// Rebuilds it from the log (see [`replay`](crate::replay)) or from the event stores
    /// (`replay --from postgres`; see [`replay_from_store`](crate::replay_from_store)). A
    /// rebuild is awaited where it is asked for (the `replay` command, a test), so its future
    /// is not `Send`.
    fn replay<'a>(
        &'a self,
        from: ReplayFrom,
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

/// Where a rebuild reads the events it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// The JetStream log.
    Log,
    /// The contexts' PostgreSQL event stores.
    Store,
}

/// A [`Projection`] as a [`ReadModel`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Erased<P>(pub P);

impl<P: Projection + Clone> ReadModel for Erased<P> {
    fn definition(&self) -> Definition {
        P::DEFINITION
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
        from: ReplayFrom,
        db: &'a Databases,
        client: &'a async_nats::Client,
        batch_max: usize,
        progress: &'a mut dyn FnMut(u64, u64),
    ) -> LocalBoxFuture<'a, Result<ReplayStats, ProjectionError>> {
        match from {
            ReplayFrom::Log => {
                let pool = db.of(self.0.context());
                Box::pin(crate::replay(&self.0, pool, client, batch_max, progress))
            }
            ReplayFrom::Store => Box::pin(crate::replay_from_store(
                &self.0, db, client, batch_max, progress,
            )),
        }
    }
}
