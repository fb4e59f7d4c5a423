use crate::idempotency::StoredResponse;

/// A database failure and what was being done when it came: the one database error that
/// every part's error wraps (the store's, the relay's, a subscriber's, a projection's, a
/// saga's), so a caller matches one type to tell, say, a deadlock from a data error.
#[derive(Debug, thiserror::Error)]
#[error("database error while {context}")]
pub struct DbError {
    /// What was being done, as a gerund ("appending a group").
    pub context: &'static str,
    #[source]
    pub source: sqlx::Error,
}

/// A failure of the event store itself (the database), as opposed to a refused command.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("stored event {aggregate_type}/{aggregate_id}#{sequence} cannot be decoded")]
    Corrupt {
        aggregate_type: String,
        aggregate_id: String,
        sequence: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("event store read failed")]
    Persistence(#[from] cqrs_es::persist::PersistenceError),
    /// The group this command was committed with failed as a whole.
    #[error("the group commit failed")]
    Group(#[source] std::sync::Arc<StoreError>),
    #[error("the committer task has stopped")]
    CommitterGone,
    #[error(transparent)]
    Fault(#[from] crate::faults::InjectedFault),
}

impl StoreError {
    pub(crate) fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Database(DbError { context, source })
    }
}

/// Why a command did not commit. `E` is the aggregate's own business error.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate refused the command (a business rule); nothing was appended.
    #[error(transparent)]
    Rejected(E),
    /// `If-Match` named a version the aggregate is not at (HTTP 412).
    #[error("expected version {expected}, the aggregate is at {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
    /// Other writers kept winning the race for this aggregate after every retry (HTTP 409).
    #[error("the aggregate was changed concurrently; retries exhausted")]
    Conflict,
    /// A unique value the command claims (a username) belongs to another aggregate.
    #[error("{namespace} {value:?} is already taken")]
    ClaimTaken { namespace: String, value: String },
    /// The idempotency key was used before with a different request (HTTP 422).
    #[error("the idempotency key was already used with a different request")]
    IdempotencyKeyReused,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an idempotency-key lookup found: the first response, or that the key is taken by a
/// different request.
#[derive(Debug)]
pub(crate) enum KeyLookup {
    Fresh,
    Replay(StoredResponse),
    Reused,
}

/// Displays an error with its whole `source()` chain (`a: b: c`), for logs: every
/// component logs failures the same way.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
