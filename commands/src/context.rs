//! Provides the vocabulary of one command besides its payload: the [`CommandContext`] a
//! caller sends with it (correlation, actor, `If-Match`, idempotency key, claims, retries),
//! and what comes back when it did not fail ([`Executed`], [`Committed`]). No behaviour lives
//! here beyond the retry backoff every path of the executor shares.

use std::time::Duration;

use uuid::Uuid;

use crate::{idempotency::IdempotencyKey, idempotency::StoredResponse, store::UniqueClaim};

/// How many times a command is re-run after losing an optimistic-concurrency race.
///
/// Re-running is safe for every Chronicle aggregate: `handle` decides from the freshly
/// loaded state, so a retried command is judged on what is true now. It is turned off when
/// the caller pinned a version with `If-Match`: then a lost race is a version mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_retries: 8 }
    }
}

impl RetryPolicy {
    pub const NEVER: Self = Self { max_retries: 0 };
}

/// Everything about a command besides its payload.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    /// Who is asking (a user id, `saga:orders`); recorded in every event's metadata.
    pub actor: Option<String>,
    /// `If-Match`: the version the caller believes the aggregate is at.
    pub expected_version: Option<u64>,
    pub idempotency: Option<IdempotencyKey>,
    pub retry: RetryPolicy,
    /// Unique values the command takes (a username): committed with its events, or the
    /// command fails with [`CommandError::ClaimTaken`] and appends nothing.
    pub claims: Vec<UniqueClaim>,
    /// Decide on state loaded from Postgres, never on the cache. For commands whose `handle`
    /// has an effect outside the store (a payment): a stale cached state could make it act
    /// and only then lose the race.
    pub fresh_state: bool,
}

impl CommandContext {
    /// A context for a new request: a fresh correlation id, default retries.
    pub fn new() -> Self {
        Self {
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            actor: None,
            expected_version: None,
            idempotency: None,
            retry: RetryPolicy::default(),
            claims: Vec::new(),
            fresh_state: false,
        }
    }
}

impl Default for CommandContext {
    fn default() -> Self {
        Self::new()
    }
}

/// A command that committed (possibly with no events, when it changed nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub aggregate_id: String,
    /// The aggregate's version after the command: the sequence of its last event.
    pub version: u64,
    /// How many events the command appended.
    pub appended: usize,
}

/// The result of a command that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Executed {
    Committed(Committed),
    /// The idempotency key was seen before with the same request: its first response.
    Replayed(StoredResponse),
}

/// An aggregate the executor can run commands on: its commands can be re-run after a lost
/// race (`Clone`), its services shared by a batch (`Clone`), and its state cached (`Clone`,
/// `'static`). Every Chronicle aggregate is one; the bounds are written once, here.
pub trait Executable:
    cqrs_es::Aggregate<Command: Clone + Send, Services: Clone, Error: Send + 'static>
    + chronicle_schemas::AggregateKind
    + Clone
    + 'static
{
}

impl<A> Executable for A where
    A: cqrs_es::Aggregate<Command: Clone + Send, Services: Clone, Error: Send + 'static>
        + chronicle_schemas::AggregateKind
        + Clone
        + 'static
{
}

/// Jittered exponential backoff: up to 1, 2, 4 ... 64 ms, so racing processes spread out.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let ceiling_us = 1_000u64 << attempt.min(6);
    let jitter = (Uuid::new_v4().as_u128() % u128::from(ceiling_us)) as u64;
    Duration::from_micros(ceiling_us / 2 + jitter / 2)
}
