//! Two aggregates' commands committed as one: [`CommandExecutor::execute_together`].
//!
//! It provides the one write that must not be split: a cart checked out and the order it
//! becomes. Both commands are decided on fresh state (never the cache), and both
//! aggregates' events are appended in ONE transaction of their context's store, each with
//! its own optimistic-concurrency check.
//!
//! It promises both or neither: a crash at any point, a concurrent writer on either
//! aggregate, or a refusal by either leaves no event of the other. With an idempotency key
//! the response is recorded in the same transaction, so a retried request is answered with
//! what the first one made, and never makes it twice.

use chronicle_schemas::limits::{DomainRule, Invalid, Refusal};
use cqrs_es::{event_sink::EventSink, Aggregate};

use crate::{
    cache::cache_key,
    context::backoff,
    store::{AppendOutcome, PendingAppend, Provenance},
    CommandContext, CommandError, CommandExecutor, Committed, Executable, Executed, StoredResponse,
};

/// The refusal of one of two commands run together.
#[derive(Debug, thiserror::Error)]
pub enum Either<E1, E2> {
    #[error(transparent)]
    First(E1),
    #[error(transparent)]
    Second(E2),
}

impl<E1: DomainRule, E2: DomainRule> DomainRule for Either<E1, E2> {
    fn rule_code(&self) -> &'static str {
        match self {
            Self::First(e) => e.rule_code(),
            Self::Second(e) => e.rule_code(),
        }
    }

    fn refusal(&self) -> Refusal {
        match self {
            Self::First(e) => e.refusal(),
            Self::Second(e) => e.refusal(),
        }
    }

    fn invalid_fields(&self) -> Vec<Invalid> {
        match self {
            Self::First(e) => e.invalid_fields(),
            Self::Second(e) => e.invalid_fields(),
        }
    }
}

/// What a pair of commands answers: what was made, or why not (naming the side).
pub type Together<A, B> =
    Result<Executed, CommandError<Either<<A as Aggregate>::Error, <B as Aggregate>::Error>>>;

/// One side of a pair: the aggregate's id, its command and its services.
pub type Side<'a, A> = (
    &'a str,
    <A as Aggregate>::Command,
    &'a <A as Aggregate>::Services,
);

impl CommandExecutor {
    /// Runs `first` and `second` (on aggregates of the same context) and appends both
    /// aggregates' events in one transaction, or neither (see the module). `ctx`'s expected
    /// version (`If-Match`) is the first aggregate's; the response recorded under its
    /// idempotency key is `respond` of the second's commit, which is what is returned.
    ///
    /// # Errors
    /// See [`CommandError`]: a refusal names the side that refused it.
    ///
    /// # Panics
    /// When the two aggregates are of different contexts: one transaction cannot hold both
    /// (a programming error).
    #[tracing::instrument(
        name = "commands together",
        skip_all,
        fields(first = A::TYPE, second = B::TYPE, correlation_id = %ctx.correlation_id)
    )]
    pub async fn execute_together<A, B>(
        &self,
        (first_id, first, first_services): Side<'_, A>,
        (second_id, second, second_services): Side<'_, B>,
        ctx: &CommandContext,
        respond: impl Fn(&Committed) -> StoredResponse,
    ) -> Together<A, B>
    where
        A: Executable,
        B: Executable,
        A::Error: std::error::Error,
        B::Error: std::error::Error,
    {
        assert_eq!(
            <A as chronicle_schemas::AggregateKind>::CONTEXT,
            <B as chronicle_schemas::AggregateKind>::CONTEXT,
            "commands run together append to one context's store"
        );
        let store = self.store_for::<A>();
        if let Some(key) = &ctx.idempotency {
            if let Some(done) = self.replay_either::<A, B>(key).await? {
                return Ok(done);
            }
        }
        let provenance = Provenance {
            correlation_id: ctx.correlation_id,
            causation_id: ctx.causation_id,
            actor: ctx.actor.as_deref(),
        };
        let retries = if ctx.expected_version.is_some() {
            0
        } else {
            ctx.retry.max_retries
        };
        let mut conflicts = 0;
        loop {
            let a = store.load::<A>(first_id).await?;
            let b = store.load::<B>(second_id).await?;
            if let Some(expected) = ctx.expected_version {
                if expected != a.version {
                    return Err(CommandError::VersionMismatch {
                        expected,
                        actual: a.version,
                    });
                }
            }
            let (a_version, b_version) = (a.version, b.version);
            let (mut a_state, mut b_state) = (a.state, b.state);
            let a_sink = EventSink::<A>::default();
            a_state
                .handle(first.clone(), first_services, &a_sink)
                .await
                .map_err(|e| CommandError::Rejected(Either::First(e)))?;
            let b_sink = EventSink::<B>::default();
            b_state
                .handle(second.clone(), second_services, &b_sink)
                .await
                .map_err(|e| CommandError::Rejected(Either::Second(e)))?;
            let (a_events, b_events) = (a_sink.collect().await, b_sink.collect().await);
            let committed = Committed {
                aggregate_id: second_id.to_owned(),
                version: b_version + b_events.len() as u64,
                appended: b_events.len(),
            };
            let a_committed = a_version + a_events.len() as u64;
            let first_append =
                PendingAppend::encode::<A>(first_id, a_version, &a_events, &provenance)?;
            let mut second_append =
                PendingAppend::encode::<B>(second_id, b_version, &b_events, &provenance)?;
            second_append.idempotency = ctx
                .idempotency
                .as_ref()
                .map(|key| (key.clone(), respond(&committed)));
            match store
                .append_together(&[first_append, second_append])
                .await?
            {
                AppendOutcome::Appended => {
                    self.cache
                        .put(cache_key::<A>(first_id), a_state, a_committed)
                        .await;
                    self.cache
                        .put(cache_key::<B>(second_id), b_state, committed.version)
                        .await;
                    return Ok(Executed::Committed(committed));
                }
                AppendOutcome::KeyTaken => {
                    let key = ctx.idempotency.as_ref().expect("only with a key");
                    return match self.replay_either::<A, B>(key).await? {
                        Some(done) => Ok(done),
                        None => Err(CommandError::Conflict),
                    };
                }
                // Commands run together claim nothing: never, and never a panic.
                AppendOutcome::ClaimTaken(_) => return Err(CommandError::Conflict),
                AppendOutcome::Conflict => {
                    self.cache.forget(&cache_key::<A>(first_id)).await;
                    self.cache.forget(&cache_key::<B>(second_id)).await;
                    if let Some(expected) = ctx.expected_version {
                        let actual = store.load::<A>(first_id).await?.version;
                        return Err(CommandError::VersionMismatch { expected, actual });
                    }
                    if conflicts >= retries {
                        return Err(CommandError::Conflict);
                    }
                    tokio::time::sleep(backoff(conflicts)).await;
                    conflicts += 1;
                }
            }
        }
    }

    /// [`replay`](Self::replay) of the second's record, as the pair answers it.
    async fn replay_either<A, B>(
        &self,
        key: &crate::IdempotencyKey,
    ) -> Result<Option<Executed>, CommandError<Either<A::Error, B::Error>>>
    where
        A: Executable,
        B: Executable,
        A::Error: std::error::Error,
        B::Error: std::error::Error,
    {
        match self.replay::<B>(key).await {
            Ok(done) => Ok(done),
            Err(CommandError::IdempotencyKeyReused) => Err(CommandError::IdempotencyKeyReused),
            Err(CommandError::Store(e)) => Err(CommandError::Store(e)),
            // A lookup refuses nothing else.
            Err(_) => Err(CommandError::Conflict),
        }
    }
}
