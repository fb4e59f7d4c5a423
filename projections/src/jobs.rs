//! The `jobs` read model: every job with its status, next run and the bucket a scheduler
//! process looks after it by, and every run with its outcome (skipped due times included).
//!
//! A job's row is the job aggregate's own state after each event (`state`), with its
//! status, next run and wake time derived by the domain's code: the read model never
//! evaluates a cron expression or a policy of its own, so it cannot disagree with the job.

use chronicle_schemas::AggregateKind;
use std::collections::HashMap;

use chronicle_scheduler::{bucket, Job, JobEvent, SkipReason};
use chronicle_schemas::Envelope;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde::Serialize;
use sqlx::PgConnection;

use crate::{Definition, Projection, ProjectionError};
use chronicle_commands::contexts;

#[derive(Debug, Clone, Copy, Default)]
pub struct JobsProjection;

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
    event         jsonb,
    PRIMARY KEY (job_id, run_id)
);
DO $ddl$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'scheduler_runs' AND column_name = 'event') THEN
        ALTER TABLE scheduler_runs ADD COLUMN event jsonb;
    END IF;
END $ddl$;
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
    /// An event-triggered job's: the event it ran for (`{"type","aggregate_id","stream_seq"}`),
    /// or the events a pause skipped (`{"from_seq","to_seq","count"}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<serde_json::Value>,
}

impl Projection for JobsProjection {
    const DEFINITION: Definition = Definition::new(
        "jobs",
        contexts::SCHEDULER,
        &["scheduler_jobs", "scheduler_runs"],
        DDL,
    )
    .reading(&[(Job::CONTEXT, Job::TYPE)]);

    /// Each job's row is read once per batch and written once per batch (its runs once per
    /// event): a burst of runs costs the read model a few statements, not three per event.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        let events: Vec<&Envelope> = events
            .iter()
            .filter(|e| e.aggregate_type == Job::TYPE)
            .collect();
        if events.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<String> = events.iter().map(|e| e.aggregate_id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        let stored: Vec<(String, serde_json::Value, i64)> = sqlx::query_as(
            "SELECT job_id, state, version FROM scheduler_jobs \
             JOIN unnest($1::text[]) AS k(job_id) USING (job_id)",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await
        .map_err(ProjectionError::db("reading jobs"))?;
        let mut rows: HashMap<String, Row> = HashMap::with_capacity(ids.len());
        for (id, state, version) in stored {
            let job = serde_json::from_value::<Job>(state).map_err(|e| {
                ProjectionError::OutOfRange(format!("job {id}: stored state does not decode: {e}"))
            })?;
            rows.insert(
                id,
                Row {
                    job,
                    version,
                    created_at: None,
                    updated_at: None,
                },
            );
        }
        for envelope in events {
            let id = envelope.aggregate_id.as_str();
            let version = ProjectionError::bigint(envelope.sequence)?;
            let event: JobEvent = envelope.decode()?;
            let row = rows.entry(id.to_owned()).or_insert_with(|| Row {
                job: Job::default(),
                version: 0,
                created_at: Some(envelope.recorded_at),
                updated_at: None,
            });
            if row.version >= version {
                continue;
            }
            row.job.apply(event.clone());
            if row.job.spec().is_none() {
                // An event before its job's creation: nothing to show.
                continue;
            }
            row.version = version;
            row.updated_at = Some(envelope.recorded_at);
            record_run(conn, id, version, event).await?;
        }
        store_jobs(conn, rows).await
    }
}

/// A job's row as a batch leaves it.
struct Row {
    job: Job,
    version: i64,
    /// When the row is new: its first event's time.
    created_at: Option<DateTime<Utc>>,
    /// When the batch changed it: its last event's time.
    updated_at: Option<DateTime<Utc>>,
}

/// Writes the rows a batch changed, in one statement.
async fn store_jobs(
    conn: &mut PgConnection,
    rows: HashMap<String, Row>,
) -> Result<(), ProjectionError> {
    let mut columns = JobColumns::default();
    for (id, row) in rows {
        let (Some(updated_at), Some(spec)) = (row.updated_at, row.job.spec()) else {
            continue;
        };
        let json = |value: Result<serde_json::Value, serde_json::Error>| {
            value.map_err(|e| ProjectionError::OutOfRange(format!("job {id}: {e}")))
        };
        columns.owner_id.push(row.job.owner_id().to_owned());
        columns.name.push(spec.name.clone());
        columns.status.push(row.job.status().as_str().to_owned());
        columns.spec.push(json(serde_json::to_value(spec))?);
        columns.next_run_at.push(row.job.next_run_at());
        columns.wake_at.push(row.job.wake_at());
        columns.bucket.push(i32::from(bucket(&id)));
        columns
            .created_at
            .push(row.created_at.unwrap_or(updated_at));
        columns.updated_at.push(updated_at);
        columns.version.push(row.version);
        columns.state.push(json(serde_json::to_value(&row.job))?);
        columns.job_id.push(id);
    }
    if columns.job_id.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO scheduler_jobs (job_id, owner_id, name, status, spec, next_run_at, wake_at, \
           bucket, created_at, updated_at, version, state) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], \
           $6::timestamptz[], $7::timestamptz[], $8::int[], $9::timestamptz[], $10::timestamptz[], \
           $11::bigint[], $12::jsonb[]) \
         ON CONFLICT (job_id) DO UPDATE SET status = excluded.status, \
           next_run_at = excluded.next_run_at, wake_at = excluded.wake_at, \
           updated_at = excluded.updated_at, version = excluded.version, state = excluded.state",
    )
    .bind(columns.job_id)
    .bind(columns.owner_id)
    .bind(columns.name)
    .bind(columns.status)
    .bind(columns.spec)
    .bind(columns.next_run_at)
    .bind(columns.wake_at)
    .bind(columns.bucket)
    .bind(columns.created_at)
    .bind(columns.updated_at)
    .bind(columns.version)
    .bind(columns.state)
    .execute(&mut *conn)
    .await
    .map_err(ProjectionError::db("storing jobs"))?;
    Ok(())
}

/// `scheduler_jobs` rows as columns, for one `UNNEST`.
#[derive(Default)]
struct JobColumns {
    job_id: Vec<String>,
    owner_id: Vec<String>,
    name: Vec<String>,
    status: Vec<String>,
    spec: Vec<serde_json::Value>,
    next_run_at: Vec<Option<DateTime<Utc>>>,
    wake_at: Vec<Option<DateTime<Utc>>>,
    bucket: Vec<i32>,
    created_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
    version: Vec<i64>,
    state: Vec<serde_json::Value>,
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
            event,
            ..
        } => {
            let event = event
                .map(|e| {
                    serde_json::to_value(e).map_err(|e| ProjectionError::OutOfRange(e.to_string()))
                })
                .transpose()?;
            sqlx::query(
                "INSERT INTO scheduler_runs (job_id, run_id, due_at, attempt, started_at, outcome, sequence, event) \
                 VALUES ($1, $2, $3, $4, $5, 'running', $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(job_id)
            .bind(run_id)
            .bind(due_at)
            .bind(i64::from(attempt))
            .bind(started_at)
            .bind(version)
            .bind(event)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        }
        JobEvent::EventsSkipped {
            from_seq,
            to_seq,
            count,
            skipped_at,
        } => {
            sqlx::query(
                "INSERT INTO scheduler_runs (job_id, run_id, due_at, attempt, outcome, error, sequence, event) \
                 VALUES ($1, $2, $3, 0, 'skipped', $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(job_id)
            .bind(format!("skipped-{version}"))
            .bind(skipped_at)
            .bind(format!("paused: {count} events came while the job was paused"))
            .bind(version)
            .bind(serde_json::json!({"from_seq": from_seq, "to_seq": to_seq, "count": count}))
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
    after: Option<(DateTime<Utc>, &str)>,
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
           outcome, error, retry_at, event FROM scheduler_runs \
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
