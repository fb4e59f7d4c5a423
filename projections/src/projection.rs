use std::future::Future;

use chronicle_schemas::Envelope;
use sqlx::PgConnection;

/// Why a batch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Database(#[from] chronicle_bus::DbError),
    #[error(transparent)]
    Decode(#[from] chronicle_schemas::DecodeError),
    #[error("NATS error while {context}")]
    Nats {
        context: &'static str,
        #[source]
        source: chronicle_bus::NatsError,
    },
    #[error(transparent)]
    Fault(#[from] chronicle_bus::InjectedFault),
    #[error(transparent)]
    Subscriber(#[from] chronicle_bus::SubscriberError),
    /// An event carries a value the read model cannot hold (a count past `bigint`): the
    /// event is parked rather than wrapped into a wrong row.
    #[error("{0}")]
    OutOfRange(String),
    /// A rebuild that cannot be done as asked (the message says why, and what to do).
    #[error("{0}")]
    Refused(String),
}

impl ProjectionError {
    /// A database error while `context` (what was being done), as `map_err` takes it.
    pub fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Database(chronicle_bus::DbError { context, source })
    }
    /// `a + b` (or `a - b` with `negate`) as a `bigint` column can hold it.
    pub(crate) fn counter(a: i64, b: u64, negate: bool) -> Result<i64, Self> {
        let b = i64::try_from(b).ok();
        let result = b.and_then(|b| {
            if negate {
                a.checked_sub(b)
            } else {
                a.checked_add(b)
            }
        });
        result.ok_or_else(|| Self::OutOfRange(format!("a counter at {a} cannot take {b:?} more")))
    }

    /// `value` as a `bigint`.
    pub fn bigint(value: u64) -> Result<i64, Self> {
        i64::try_from(value).map_err(|_| Self::OutOfRange(format!("{value} does not fit a bigint")))
    }

    /// For `map_err`: the NATS failure met while `context`, its source kept.
    pub(crate) fn nats<E: Into<chronicle_bus::NatsError>>(
        context: &'static str,
    ) -> impl FnOnce(E) -> Self {
        move |error| Self::Nats {
            context,
            source: error.into(),
        }
    }
}

/// A read model built from the log.
///
/// Its SQL names tables without a schema: the runtime writes to its context's schema (its
/// context's pool has that schema on its `search_path`), replay runs the same code with a
/// shadow schema first on the `search_path`. So the rebuilt rows come from exactly the code
/// that built the live ones.
pub trait Projection: Send + Sync + 'static {
    /// What the read model is: its name, context, what it reads, its tables and their DDL.
    const DEFINITION: Definition;

    /// Unique name: the checkpoint row, the durable consumer (`projector-<name>`), the CLI.
    fn name(&self) -> &'static str {
        Self::DEFINITION.name
    }

    /// The bounded context it belongs to: its tables, checkpoint and parked events live in
    /// that context's schema (`chronicle_commands::contexts`).
    fn context(&self) -> &'static str {
        Self::DEFINITION.context
    }

    /// The subjects to consume (NATS wildcards allowed).
    fn subjects(&self) -> Vec<String> {
        Self::DEFINITION.subjects()
    }

    /// The tables the projection owns; replay rebuilds and swaps all of them.
    fn tables(&self) -> &'static [&'static str] {
        Self::DEFINITION.tables
    }

    /// DDL creating the tables, idempotent (`CREATE TABLE IF NOT EXISTS ...`), unqualified.
    fn ddl(&self) -> &'static str {
        Self::DEFINITION.ddl
    }

    /// The secondary indexes a rebuild keeps while it fills the tables
    /// ([`Definition::indexed_while_rebuilt`]).
    fn indexed_while_rebuilt(&self) -> &'static [&'static str] {
        Self::DEFINITION.indexed_while_rebuilt
    }

    /// Applies `events` (stream order, each newer than the checkpoint) inside the caller's
    /// transaction. Must be deterministic: same events, same rows.
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [Envelope],
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send + 'a;
}

/// A read model as its projection declares it, once: `Definition::new(name, context,
/// tables, ddl)` with what it reads (`.reading(&[(context, aggregate type), ...])` or
/// `.reading_every_event()`).
#[derive(Debug, Clone, Copy)]
pub struct Definition {
    pub(crate) name: &'static str,
    pub(crate) context: &'static str,
    /// `(context, aggregate type)` of each aggregate whose events it reads; `None`: every
    /// event of the log.
    reads: Option<&'static [(&'static str, &'static str)]>,
    pub(crate) tables: &'static [&'static str],
    ddl: &'static str,
    /// The secondary indexes its `apply` looks rows up by (see [`Self::indexed_while_rebuilt`]).
    pub(crate) indexed_while_rebuilt: &'static [&'static str],
}

impl Definition {
    /// A read model named `name` in `context`, owning `tables` (created by `ddl`), reading
    /// nothing until `reading` says what.
    pub const fn new(
        name: &'static str,
        context: &'static str,
        tables: &'static [&'static str],
        ddl: &'static str,
    ) -> Self {
        Self {
            name,
            context,
            reads: Some(&[]),
            tables,
            ddl,
            indexed_while_rebuilt: &[],
        }
    }

    /// The secondary indexes its `apply` looks rows up by (a `DELETE ... WHERE post_id =
    /// ...` on a table whose key is another column). A rebuild fills the tables with these
    /// and their keys alone, and builds every other index once over the rebuilt rows before
    /// the swap: cheaper than keeping each up to date through every batch, and an update
    /// that leaves the key alone then stays on its page (HOT) instead of leaving a dead row
    /// and an index entry behind each batch. Leaving an index out here that `apply` does
    /// look up by costs a rebuild speed, never rows.
    pub const fn indexed_while_rebuilt(self, indexes: &'static [&'static str]) -> Self {
        Self {
            indexed_while_rebuilt: indexes,
            ..self
        }
    }

    /// Reads the events of these aggregates: `(context, aggregate type)` each.
    pub const fn reading(self, aggregates: &'static [(&'static str, &'static str)]) -> Self {
        Self {
            reads: Some(aggregates),
            ..self
        }
    }

    /// Reads every event of the log.
    pub const fn reading_every_event(self) -> Self {
        Self {
            reads: None,
            ..self
        }
    }

    /// The NATS subjects of what it reads.
    pub fn subjects(&self) -> Vec<String> {
        match self.reads {
            None => vec![format!("{}.>", chronicle_schemas::SUBJECT_ROOT)],
            Some(aggregates) => aggregates
                .iter()
                .map(|(context, kind)| chronicle_schemas::subject_for(context, kind, ">"))
                .collect(),
        }
    }
}
