//! The `job_triggers` read model: for every event-triggered job (the API contract, Scheduler, "Jobs
//! triggered by events"), the events of the log it has yet to run for, in log order.
//!
//! It reads the whole log, jobs' events included, so what a job runs for is decided by the
//! log's own order: a job runs for the matching events that come after its `JobCreated`
//! (a new job starts at the log's end), not for those while it is paused (they gather into
//! one skipped span, closed when it resumes, which the scheduler records as one
//! `EventsSkipped`), and an event is forgotten here once the job is done with it (its run
//! succeeded or failed for good, or it was skipped). The scheduler finds its work here;
//! whether a run may start is still the job's to decide (`Fire`), so a row seen twice, or
//! late, never runs twice.
//!
//! Each event is identified by its stream sequence, which only the log knows: it rebuilds
//! from the stream, not from the event stores.

use std::collections::HashSet;

use chronicle_scheduler::{bucket, Job, JobEvent, Schedule};
use chronicle_schemas::Envelope;
use cqrs_es::Aggregate;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::{Definition, Projection, ProjectionError};
use chronicle_commands::contexts;

#[derive(Debug, Clone, Copy, Default)]
pub struct JobTriggersProjection;

const DDL: &str = "CREATE TABLE IF NOT EXISTS scheduler_event_jobs (
    job_id  text PRIMARY KEY,
    types   text[]  NOT NULL,
    context text,
    bucket  integer NOT NULL,
    paused  boolean NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS scheduler_triggers (
    job_id       text    NOT NULL,
    stream_seq   bigint  NOT NULL,
    through_seq  bigint  NOT NULL,
    kind         text    NOT NULL,
    skipped      bigint  NOT NULL DEFAULT 0,
    closed       boolean NOT NULL,
    bucket       integer NOT NULL,
    event_type   text    NOT NULL,
    aggregate_id text    NOT NULL,
    envelope     jsonb,
    run_id       text,
    PRIMARY KEY (job_id, stream_seq)
);
CREATE INDEX IF NOT EXISTS scheduler_triggers_waiting ON scheduler_triggers (bucket, job_id)
    WHERE run_id IS NULL";

/// The next thing an event-triggered job has to do: run for an event, or record the
/// events of a pause as skipped.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Trigger {
    /// The event's stream sequence; a skipped span's first.
    pub stream_seq: i64,
    /// The event's again; a skipped span's last.
    pub through_seq: i64,
    /// `event` or `skipped`.
    pub kind: String,
    /// How many events a skipped span holds.
    pub skipped: i64,
    /// Whether a skipped span is complete (its job resumed).
    pub closed: bool,
    pub event_type: String,
    pub aggregate_id: String,
    /// The event's envelope (what an HTTP action without a body sends).
    pub envelope: Option<serde_json::Value>,
}

/// One event of a batch that may trigger jobs, as columns for one `UNNEST`.
#[derive(Default)]
struct Candidates {
    seq: Vec<i64>,
    event_type: Vec<String>,
    context: Vec<String>,
    aggregate_id: Vec<String>,
    envelope: Vec<serde_json::Value>,
}

impl Projection for JobTriggersProjection {
    const DEFINITION: Definition = Definition::new(
        "job_triggers",
        contexts::SCHEDULER,
        &["scheduler_event_jobs", "scheduler_triggers"],
        DDL,
    )
    .reading_every_event();

    /// The events that may trigger jobs are matched against the jobs a batch at a time;
    /// a job's own event is applied where it stands in the log, between them.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        let mut candidates = Candidates::default();
        // The event types some job waits for, read once and again after each of a job's
        // own events (which may add or remove one): with no event-triggered job, the other
        // events cost nothing here.
        let mut watched: Option<HashSet<String>> = None;
        for envelope in events {
            if envelope.aggregate_type == Job::TYPE {
                flush(conn, std::mem::take(&mut candidates)).await?;
                job_event(conn, envelope).await?;
                watched = None;
                continue;
            }
            let types = match &mut watched {
                Some(types) => types,
                none => none.insert(watched_types(conn).await?),
            };
            if !types.contains(&envelope.event_type) {
                continue;
            }
            let seq = envelope.stream_seq.ok_or_else(|| {
                ProjectionError::Refused(
                    "job triggers are built from the log's sequences: rebuild them from the \
                     stream"
                        .to_owned(),
                )
            })?;
            let whole = serde_json::to_value(envelope).map_err(|e| {
                ProjectionError::OutOfRange(format!("an envelope that does not encode: {e}"))
            })?;
            candidates.seq.push(ProjectionError::bigint(seq)?);
            candidates.event_type.push(envelope.event_type.clone());
            candidates.context.push(envelope.context.clone());
            candidates.aggregate_id.push(envelope.aggregate_id.clone());
            candidates.envelope.push(whole);
        }
        flush(conn, candidates).await
    }
}

/// Every event type some job (running or paused) waits for.
async fn watched_types(conn: &mut PgConnection) -> Result<HashSet<String>, ProjectionError> {
    let types: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT unnest(types) FROM scheduler_event_jobs")
            .fetch_all(&mut *conn)
            .await
            .map_err(ProjectionError::db("reading the event types jobs wait for"))?;
    Ok(types.into_iter().collect())
}

/// Matches `candidates` against the jobs: a trigger for each job running, and the open
/// skipped span of each paused job extended (or opened).
async fn flush(conn: &mut PgConnection, candidates: Candidates) -> Result<(), ProjectionError> {
    if candidates.seq.is_empty() {
        return Ok(());
    }
    const HITS: &str = "SELECT j.job_id, j.bucket, j.paused, e.seq, e.type, e.agg, e.env \
         FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::jsonb[]) \
           AS e(seq, type, context, agg, env) \
         JOIN scheduler_event_jobs j ON e.type = ANY(j.types) \
           AND (j.context IS NULL OR j.context = e.context)";
    sqlx::query(&format!(
        "WITH hits AS ({HITS}), \
         spans AS (SELECT job_id, bucket, min(seq) AS first, max(seq) AS last, count(*) AS n \
                   FROM hits WHERE paused GROUP BY job_id, bucket), \
         extended AS (UPDATE scheduler_triggers t SET through_seq = s.last, skipped = t.skipped + s.n \
                      FROM spans s WHERE t.job_id = s.job_id AND t.kind = 'skipped' AND NOT t.closed \
                      RETURNING t.job_id), \
         opened AS (INSERT INTO scheduler_triggers (job_id, stream_seq, through_seq, kind, skipped, \
                      closed, bucket, event_type, aggregate_id) \
                    SELECT job_id, first, last, 'skipped', n, false, bucket, '', '' FROM spans \
                    WHERE job_id NOT IN (SELECT job_id FROM extended) \
                    ON CONFLICT DO NOTHING) \
         INSERT INTO scheduler_triggers (job_id, stream_seq, through_seq, kind, closed, bucket, \
           event_type, aggregate_id, envelope) \
         SELECT job_id, seq, seq, 'event', true, bucket, type, agg, env FROM hits WHERE NOT paused \
         ON CONFLICT DO NOTHING"
    ))
    .bind(candidates.seq)
    .bind(candidates.event_type)
    .bind(candidates.context)
    .bind(candidates.aggregate_id)
    .bind(candidates.envelope)
    .execute(&mut *conn)
    .await
    .map_err(ProjectionError::db("matching events to jobs"))?;
    Ok(())
}

/// What one of a job's own events changes: which jobs listen, which are paused, and which
/// events they are done with.
async fn job_event(conn: &mut PgConnection, envelope: &Envelope) -> Result<(), ProjectionError> {
    let job = envelope.aggregate_id.as_str();
    let (sql, what) = match envelope.decode::<JobEvent>()? {
        JobEvent::JobCreated { spec, .. } => {
            let Schedule::OnEvent { types, context } = spec.schedule else {
                return Ok(());
            };
            sqlx::query(
                "INSERT INTO scheduler_event_jobs (job_id, types, context, bucket) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(job)
            .bind(types)
            .bind(context)
            .bind(i32::from(bucket(job)))
            .execute(&mut *conn)
            .await
            .map_err(ProjectionError::db("adding an event-triggered job"))?;
            return Ok(());
        }
        JobEvent::JobPaused { .. } => (
            "UPDATE scheduler_event_jobs SET paused = true WHERE job_id = $1",
            "pausing a job's triggers",
        ),
        // The span of events it skipped is complete: the scheduler may record it.
        JobEvent::JobResumed { .. } => (
            "WITH resumed AS (UPDATE scheduler_event_jobs SET paused = false WHERE job_id = $1) \
             UPDATE scheduler_triggers SET closed = true \
             WHERE job_id = $1 AND kind = 'skipped' AND NOT closed",
            "resuming a job's triggers",
        ),
        JobEvent::JobDeleted { .. } => (
            "WITH gone AS (DELETE FROM scheduler_event_jobs WHERE job_id = $1) \
             DELETE FROM scheduler_triggers WHERE job_id = $1",
            "removing a job's triggers",
        ),
        JobEvent::RunStarted {
            run_id,
            event: Some(event),
            ..
        } => {
            sqlx::query(
                "UPDATE scheduler_triggers SET run_id = $2 WHERE job_id = $1 AND stream_seq = $3",
            )
            .bind(job)
            .bind(run_id)
            .bind(ProjectionError::bigint(event.stream_seq)?)
            .execute(&mut *conn)
            .await
            .map_err(ProjectionError::db("marking a trigger's run"))?;
            return Ok(());
        }
        // Done with the event: its run succeeded, or failed with no retry left.
        JobEvent::RunSucceeded { run_id, .. }
        | JobEvent::RunFailed {
            run_id,
            retry_at: None,
            ..
        } => {
            sqlx::query("DELETE FROM scheduler_triggers WHERE job_id = $1 AND run_id = $2")
                .bind(job)
                .bind(run_id)
                .execute(&mut *conn)
                .await
                .map_err(ProjectionError::db("forgetting a trigger"))?;
            return Ok(());
        }
        JobEvent::EventsSkipped { to_seq, .. } => {
            sqlx::query("DELETE FROM scheduler_triggers WHERE job_id = $1 AND through_seq <= $2")
                .bind(job)
                .bind(ProjectionError::bigint(to_seq)?)
                .execute(&mut *conn)
                .await
                .map_err(ProjectionError::db("forgetting skipped triggers"))?;
            return Ok(());
        }
        JobEvent::RunStarted { .. } | JobEvent::RunFailed { .. } | JobEvent::RunsSkipped { .. } => {
            return Ok(())
        }
    };
    sqlx::query(sql)
        .bind(job)
        .execute(&mut *conn)
        .await
        .map_err(ProjectionError::db(what))?;
    Ok(())
}

/// Jobs of `buckets` with an event to run for or a pause to record, up to `limit`.
///
/// # Errors
/// Database failures.
pub async fn waiting(
    pool: &PgPool,
    buckets: &[i32],
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT job_id FROM scheduler_triggers \
         WHERE bucket = ANY($1) AND run_id IS NULL AND (kind = 'event' OR closed) LIMIT $2",
    )
    .bind(buckets)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The first thing job `job_id` has to do after the event at `after_seq`.
///
/// # Errors
/// Database failures.
pub async fn next(
    pool: &PgPool,
    job_id: &str,
    after_seq: u64,
) -> Result<Option<Trigger>, sqlx::Error> {
    sqlx::query_as(
        "SELECT stream_seq, through_seq, kind, skipped, closed, event_type, aggregate_id, envelope \
         FROM scheduler_triggers WHERE job_id = $1 AND through_seq > $2 \
         ORDER BY stream_seq LIMIT 1",
    )
    .bind(job_id)
    .bind(i64::try_from(after_seq).unwrap_or(i64::MAX))
    .fetch_optional(pool)
    .await
}
