//! The `jobs` read model: every job with its status, next run and the bucket a scheduler
//! process looks after it by, and every run with its outcome (skipped due times included).
//!
//! A job's row is the job aggregate's own state after each event (`state`), with its
//! status, next run and wake time derived by the domain's code: the read model never
//! evaluates a cron expression or a policy of its own, so it cannot disagree with the job.

use chronicle_scheduler::{bucket, Job, JobEvent, SkipReason};
use chronicle_schemas::Envelope;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde::Serialize;
use sqlx::PgConnection;

use crate::{Projection, ProjectionError};

#[derive(Debug, Clone, Copy, Default)]
pub struct JobsProjection;

impl JobsProjection {
    pub const NAME: &'static str = "jobs";
}

const DDL: &str = "CREATE TABLE IF NOT EXISTS scheduler_jobs (
    job_id      text PRIMARY KEY,
    owner_id    text        NOT NULL,
    name        text        NOT NULL,
    status      text        NOT NULL,
    spec        jsonb       NOT NULL,
    next_run_at timestamptz,
    wake_at     timestamptz,
    bucket      integer     NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    version     bigint      NOT NULL,
    state       jsonb       NOT NULL
);
CREATE INDEX IF NOT EXISTS scheduler_jobs_due ON scheduler_jobs (wake_at, job_id)
    WHERE wake_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS scheduler_jobs_by_owner ON scheduler_jobs (owner_id, created_at DESC, job_id DESC)
    WHERE status <> 'deleted';
CREATE TABLE IF NOT EXISTS scheduler_runs (
    job_id        text        NOT NULL,
    run_id        text        NOT NULL,
    due_at        timestamptz NOT NULL,
    skipped_until timestamptz,
    attempt       bigint      NOT NULL,
    started_at    timestamptz,
    finished_at   timestamptz,
    outcome       text        NOT NULL,
    error         text,
    retry_at      timestamptz,
    sequence      bigint      NOT NULL,
    PRIMARY KEY (job_id, run_id)
);
CREATE INDEX IF NOT EXISTS scheduler_runs_by_job ON scheduler_runs (job_id, sequence DESC)";

/// A job as `GET /api/v1/jobs` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct JobView {
    pub id: String,
    pub owner_id: String,
    pub name: String,
    pub status: String,
    pub spec: serde_json::Value,
    pub next_run_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

/// A run as `GET /api/v1/jobs/{id}/runs` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct RunView {
    pub run_id: String,
    pub due_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_until: Option<DateTime<Utc>>,
    pub attempt: i64,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `running`, `succeeded`, `failed` (retried at `retry_at`), `gave_up`, `skipped`.
    pub outcome: String,
    pub error: Option<String>,
    pub retry_at: Option<DateTime<Utc>>,
}

impl Projection for JobsProjection {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn subjects(&self) -> Vec<String> {
        vec![format!("events.scheduler.{}.>", Job::TYPE)]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["scheduler_jobs", "scheduler_runs"]
    }

    fn ddl(&self) -> &'static str {
        DDL
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        for envelope in events.iter().filter(|e| e.aggregate_type == Job::TYPE) {
            apply_one(conn, envelope).await?;
        }
        Ok(())
    }
}

async fn apply_one(conn: &mut PgConnection, envelope: &Envelope) -> Result<(), ProjectionError> {
    let id = envelope.aggregate_id.as_str();
    let version = ProjectionError::bigint(envelope.sequence)?;
    let event: JobEvent = envelope.decode()?;
    let stored: Option<(serde_json::Value, i64)> =
        sqlx::query_as("SELECT state, version FROM scheduler_jobs WHERE job_id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(ProjectionError::db("reading a job"))?;
    let mut job = match &stored {
        Some((_, stored_version)) if *stored_version >= version => return Ok(()),
        Some((state, _)) => serde_json::from_value::<Job>(state.clone()).map_err(|e| {
            ProjectionError::OutOfRange(format!("job {id}: stored state does not decode: {e}"))
        })?,
        None => Job::default(),
    };
    job.apply(event.clone());
    let Some(spec) = job.spec() else {
        // An event before its job's creation: nothing to show.
        return Ok(());
    };
    let state = serde_json::to_value(&job)
        .map_err(|e| ProjectionError::OutOfRange(format!("job {id}: {e}")))?;
    let spec_json = serde_json::to_value(spec)
        .map_err(|e| ProjectionError::OutOfRange(format!("job {id}: {e}")))?;
    sqlx::query(
        "INSERT INTO scheduler_jobs (job_id, owner_id, name, status, spec, next_run_at, wake_at, \
           bucket, created_at, updated_at, version, state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11) \
         ON CONFLICT (job_id) DO UPDATE SET status = $4, next_run_at = $6, wake_at = $7, \
           updated_at = $9, version = $10, state = $11",
    )
    .bind(id)
    .bind(job.owner_id())
    .bind(&spec.name)
    .bind(job.status().as_str())
    .bind(spec_json)
    .bind(job.next_run_at())
    .bind(job.wake_at())
    .bind(i32::from(bucket(id)))
    .bind(envelope.recorded_at)
    .bind(version)
    .bind(state)
    .execute(&mut *conn)
    .await
    .map_err(ProjectionError::db("storing a job"))?;
    record_run(conn, id, version, event).await
}

async fn record_run(
    conn: &mut PgConnection,
    job_id: &str,
    version: i64,
    event: JobEvent,
) -> Result<(), ProjectionError> {
    let db = ProjectionError::db("storing a run");
    match event {
        JobEvent::RunStarted {
            run_id,
            due_at,
            attempt,
            started_at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO scheduler_runs (job_id, run_id, due_at, attempt, started_at, outcome, sequence) \
                 VALUES ($1, $2, $3, $4, $5, 'running', $6) ON CONFLICT DO NOTHING",
            )
            .bind(job_id)
            .bind(run_id)
            .bind(due_at)
            .bind(i64::from(attempt))
            .bind(started_at)
            .bind(version)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        }
        JobEvent::RunSucceeded {
            run_id,
            finished_at,
        } => {
            sqlx::query(
                "UPDATE scheduler_runs SET outcome = 'succeeded', finished_at = $3 \
                 WHERE job_id = $1 AND run_id = $2",
            )
            .bind(job_id)
            .bind(run_id)
            .bind(finished_at)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        }
        JobEvent::RunFailed {
            run_id,
            finished_at,
            error,
            retry_at,
        } => {
            sqlx::query(
                "UPDATE scheduler_runs SET outcome = $3, finished_at = $4, error = $5, retry_at = $6 \
                 WHERE job_id = $1 AND run_id = $2",
            )
            .bind(job_id)
            .bind(run_id)
            .bind(if retry_at.is_some() { "failed" } else { "gave_up" })
            .bind(finished_at)
            .bind(error)
            .bind(retry_at)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        }
        JobEvent::RunsSkipped {
            from, to, reason, ..
        } => {
            let why = match reason {
                SkipReason::Missed => "missed: no scheduler ran at its due time",
                SkipReason::Overlap => "overlap: the previous run still ran",
            };
            sqlx::query(
                "INSERT INTO scheduler_runs (job_id, run_id, due_at, skipped_until, attempt, outcome, error, sequence) \
                 VALUES ($1, $2, $3, $4, 0, 'skipped', $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(job_id)
            .bind(format!("skipped-{version}"))
            .bind(from)
            .bind(to)
            .bind(why)
            .bind(version)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        }
        JobEvent::JobCreated { .. }
        | JobEvent::JobPaused { .. }
        | JobEvent::JobResumed { .. }
        | JobEvent::JobDeleted { .. } => {}
    }
    Ok(())
}

const JOB_COLUMNS: &str =
    "job_id AS id, owner_id, name, status, spec, next_run_at, created_at, updated_at, version";

/// Job `id`, deleted ones included (their status says so).
///
/// # Errors
/// Database failures.
pub async fn get(pool: &sqlx::PgPool, id: &str) -> Result<Option<JobView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM scheduler_jobs WHERE job_id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The live jobs of `owner_id`, newest first, after `(created_at, id)`.
///
/// # Errors
/// Database failures.
pub async fn jobs_of(
    pool: &sqlx::PgPool,
    owner_id: &str,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<JobView>, sqlx::Error> {
    let (at, id) = after.unzip();
    sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM scheduler_jobs \
         WHERE owner_id = $1 AND status <> 'deleted' \
           AND ($2::timestamptz IS NULL OR (created_at, job_id) < ($2, $3)) \
         ORDER BY created_at DESC, job_id DESC LIMIT $4"
    ))
    .bind(owner_id)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The runs of job `job_id`, newest first, before the run recorded at `before` (the job's
/// version at its start or skip).
///
/// # Errors
/// Database failures.
pub async fn runs_of(
    pool: &sqlx::PgPool,
    job_id: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<(i64, RunView)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        sequence: i64,
        #[sqlx(flatten)]
        run: RunView,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT sequence, run_id, due_at, skipped_until, attempt, started_at, finished_at, \
           outcome, error, retry_at FROM scheduler_runs \
         WHERE job_id = $1 AND ($2::bigint IS NULL OR sequence < $2) \
         ORDER BY sequence DESC LIMIT $3",
    )
    .bind(job_id)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.sequence, r.run)).collect())
}
