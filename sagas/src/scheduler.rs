//! The scheduler (`chronicle scheduler`): runs every job once per due time, with as many
//! processes as one likes and no leader.
//!
//! - **Where the schedule lives.** In the job's events and the `jobs` read model (its
//!   `wake_at` and `bucket`), never in a process's memory: a restart forgets nothing, however
//!   long the interval.
//! - **Who runs what.** Jobs fall into [`BUCKETS`] buckets by id. Each process writes a
//!   heartbeat row (`scheduler_processes`); every process reads the live rows and gives each
//!   bucket to the process with the highest hash of (process, bucket), so all agree without
//!   talking, and a dead process's buckets pass to the others once its heartbeat is stale.
//! - **Exactly once.** A run starts only through the job's `Fire` command, decided on the
//!   job's state and appended with optimistic concurrency: two processes that both believe a
//!   bucket is theirs (for the moment a membership changes) race, one wins, the other finds
//!   nothing due. A run that starts is recorded before its action does anything.
//! - **Timing.** A process finds due jobs by polling the read model for its buckets, then
//!   keeps each job it is running, or that is due again soon, on a timer of its own, so a job
//!   due every second runs at its second and not at the next poll.
//! - **Crashes.** A run carries a lease (its timeout and a margin). A scheduler that dies
//!   mid-run lets the lease run out; whoever holds the bucket then fails the run as lost and
//!   retries it like any failure: one retry, because that, too, goes through `Fire`.
//! - **Missed runs.** A due time is missed when no scheduler was alive at it (the heartbeat
//!   rows record when some process ran); then the job's missed-run policy applies. A due
//!   time that is merely late (the schedulers were busy) always runs.
//!
//! Who runs what is in `membership`, a started run's action and outcome in `action`.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use chronicle_bus::ErrorChain;
use chronicle_commands::{CommandContext, CommandError, CommandExecutor, Executed};
use chronicle_projections::job_triggers::{self, Trigger};
use chronicle_scheduler::{
    AllowList, Fire, Job, JobCommand, JobError, JobSpec, JobStatus, TriggerEvent, BUCKETS,
};
use chronicle_schemas::{AggregateKind, Envelope};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use sqlx::PgPool;
use uuid::Uuid;

mod action;
mod membership;

use membership::View;

/// Tuning of a scheduler process.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Hosts HTTP actions may call (`CHRONICLE_SCHEDULER_HTTP_ALLOW`), checked again before
    /// every call: a host the operator removes is not called any more.
    pub http_allow: AllowList,
    /// How often the read model is asked for due jobs.
    pub poll: Duration,
    /// How often the process writes its heartbeat and reads the others'.
    pub heartbeat: Duration,
    /// A process whose heartbeat is older than this is taken as gone.
    pub alive_for: Duration,
    /// Most jobs one process looks after at once.
    pub max_jobs: usize,
    /// A job due again within this long stays on the process's own timer.
    pub hold: Duration,
    /// Where alert notifications (the `notify` action) may go.
    pub notify: crate::notify::NotifyConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            http_allow: AllowList::default(),
            poll: Duration::from_millis(200),
            heartbeat: Duration::from_millis(500),
            alive_for: Duration::from_secs(3),
            max_jobs: 2_000,
            hold: Duration::from_secs(10),
            notify: crate::notify::NotifyConfig::default(),
        }
    }
}

/// A scheduler process.
pub struct Scheduler {
    core: Arc<Core>,
}

struct Core {
    bus: CommandExecutor,
    pool: PgPool,
    nats: async_nats::Client,
    config: SchedulerConfig,
    http: reqwest::Client,
    notifier: crate::notify::Notifier,
    id: Uuid,
    started_at: DateTime<Utc>,
    view: RwLock<View>,
    /// Jobs this process looks after now.
    inflight: Mutex<HashSet<String>>,
    /// The version this process last wrote to a job, until the read model shows it: a row
    /// older than that is not taken up again.
    written: Mutex<HashMap<String, (i64, Instant)>>,
    /// Where the poll goes on from: the last due row it read, while there were more.
    cursor: Mutex<Option<(DateTime<Utc>, String)>>,
}

/// What a job's timer does next.
enum Next {
    At(tokio::time::Instant),
    Leave,
}

impl Scheduler {
    pub fn new(
        bus: CommandExecutor,
        pool: PgPool,
        nats: async_nats::Client,
        config: SchedulerConfig,
    ) -> Self {
        let http = reqwest::Client::builder()
            // A redirect could lead anywhere, past the allow list.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let notifier = crate::notify::Notifier::new(config.notify.clone());
        Self {
            core: Arc::new(Core {
                bus,
                pool,
                nats,
                config,
                http,
                notifier,
                id: Uuid::now_v7(),
                started_at: Utc::now(),
                view: RwLock::default(),
                inflight: Mutex::default(),
                written: Mutex::default(),
                cursor: Mutex::default(),
            }),
        }
    }

    /// This process's id in `scheduler_processes`.
    pub fn id(&self) -> Uuid {
        self.core.id
    }

    /// Runs until `shutdown`. Runs in progress then are left to their leases (another
    /// process retries them), as after a crash.
    ///
    /// # Errors
    /// None so far: a lost database is retried.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let core = self.core;
        tokio::pin!(shutdown);
        let mut drivers = tokio::task::JoinSet::new();
        let mut beat = tokio::time::interval(core.config.heartbeat);
        let mut poll = tokio::time::interval(core.config.poll);
        for timer in [&mut beat, &mut poll] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        // New and resumed jobs are taken up as soon as their events are published, not at
        // the next poll once the read model shows them: a hint only (the poll finds every
        // job whatever happens to these messages, so a hint the full queue drops is no loss).
        let (hint, mut hints) = tokio::sync::mpsc::channel(1024);
        let (stop_hints, hints_stopped) = tokio::sync::oneshot::channel::<()>();
        chronicle_bus::LiveSubscriber::new(
            "scheduler-hints",
            vec![format!("events.{}.{}.>", Job::CONTEXT, Job::TYPE)],
            core.nats.clone(),
            Hints(hint),
        )
        .start(async move {
            let _ = hints_stopped.await;
        })
        .await;
        // Due jobs are read from the jobs projection's table, and events to run for from the
        // job_triggers projection's: on a new database the scheduler may start before those
        // projectors have made them.
        let jobs = chronicle_projections::jobs::JobsProjection;
        if let Err(e) = chronicle_projections::setup(&core.pool, &jobs).await {
            tracing::warn!(error = %ErrorChain(&e), "cannot create the jobs table");
        }
        let triggers = job_triggers::JobTriggersProjection;
        if let Err(e) = chronicle_projections::setup(&core.pool, &triggers).await {
            tracing::warn!(error = %ErrorChain(&e), "cannot create the job triggers tables");
        }
        tracing::info!(id = %core.id, "scheduler started");
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(hint) = hints.recv() => {
                    if let Some(job_id) = core.hinted(&hint) {
                        drivers.spawn(core.clone().drive(job_id));
                    }
                }
                _ = beat.tick() => {
                    if let Err(e) = core.heartbeat().await {
                        tracing::warn!(error = %ErrorChain(&e), "scheduler heartbeat failed");
                    }
                }
                _ = poll.tick() => {
                    match core.due().await {
                        Ok((jobs, more)) => {
                            for job_id in jobs {
                                drivers.spawn(core.clone().drive(job_id));
                            }
                            if more {
                                poll.reset_immediately();
                            }
                        }
                        Err(e) => tracing::warn!(error = %ErrorChain(&e), "reading due jobs failed"),
                    }
                }
                Some(_) = drivers.join_next(), if !drivers.is_empty() => {}
            }
        }
        drivers.shutdown().await;
        let _ = stop_hints.send(());
        let _ = sqlx::query(
            "UPDATE scheduler_processes SET stopped = true, seen_at = $2 WHERE id = $1",
        )
        .bind(core.id)
        .bind(Utc::now())
        .execute(&core.pool)
        .await;
        Ok(())
    }
}

/// 0 to 999, for where a retry delay falls in its range.
fn jitter() -> u16 {
    let bytes = Uuid::new_v4().into_bytes();
    u16::from_be_bytes([bytes[0], bytes[1]]) % 1000
}

impl Core {
    /// The job a published event names, when it is new or resumed, this process's, and not
    /// looked after yet (it is then taken up).
    fn hinted(&self, envelope: &Envelope) -> Option<String> {
        let event_type = envelope.event_type.as_str();
        if !matches!(event_type, "JobCreated" | "JobResumed") {
            return None;
        }
        // A job due later than the hold is the poll's to find when it is due.
        let due = envelope
            .payload
            .get(event_type)?
            .get("next_due_at")?
            .as_str()?;
        let due: DateTime<Utc> = due.parse().ok()?;
        if due > Utc::now() + chrono::Duration::from_std(self.config.hold).unwrap_or_default() {
            return None;
        }
        let job_id = envelope.aggregate_id.clone();
        let taken = self.owns(&job_id)
            && self
                .inflight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(job_id.clone());
        taken.then_some(job_id)
    }

    /// The jobs of this process's buckets due within a poll, that it does not look after
    /// already: each is taken up (marked in flight). `true` when there may be more.
    async fn due(&self) -> Result<(Vec<String>, bool), sqlx::Error> {
        let buckets: Vec<i32> = {
            let view = self
                .view
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !view.current(self.config.alive_for) {
                return Ok((Vec::new(), false));
            }
            (0..BUCKETS)
                .filter(|b| view.mine.get(usize::from(*b)).copied().unwrap_or(false))
                .map(i32::from)
                .collect()
        };
        let room = self.config.max_jobs.saturating_sub(
            self.inflight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .len(),
        );
        if buckets.is_empty() || room == 0 {
            return Ok((Vec::new(), false));
        }
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, (_, at)| at.elapsed() < Duration::from_secs(60));
        let after = self
            .cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let (after_at, after_id) = after.unzip();
        let horizon =
            Utc::now() + chrono::Duration::from_std(self.config.poll * 2).unwrap_or_default();
        let limit = room.min(1_000);
        // Pages through the due rows in order: rows this process already handled but the
        // read model does not show yet are passed over, never read again and again.
        let rows: Vec<(String, i64, DateTime<Utc>, serde_json::Value)> = sqlx::query_as(
            "SELECT job_id, version, wake_at, state FROM scheduler_jobs \
             WHERE wake_at <= $2 AND bucket = ANY($1) \
               AND ($4::timestamptz IS NULL OR (wake_at, job_id) > ($4, $5)) \
             ORDER BY wake_at, job_id LIMIT $3",
        )
        .bind(&buckets)
        .bind(horizon)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(after_at)
        .bind(after_id)
        .fetch_all(&self.pool)
        .await?;
        let full = rows.len() == limit;
        *self
            .cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = if full {
            rows.last().map(|(id, _, at, _)| (*at, id.clone()))
        } else {
            None
        };
        let (mut taken, primed) = self.take_up(rows);
        // The read model holds each job's state: the bus need not load it to fire.
        for (job_id, job, version) in primed {
            self.bus.prime::<Job>(&job_id, job, version).await;
        }
        // Event-triggered jobs with an event to run for (or a pause to record). The due
        // jobs above are marked in flight already and must be driven whatever happens here:
        // a job marked and never driven is passed over by every later poll.
        let room = i64::try_from(limit.saturating_sub(taken.len())).unwrap_or(0);
        if room > 0 {
            match job_triggers::waiting(&self.pool, &buckets, room).await {
                Ok(waiting) => {
                    let mut inflight = self
                        .inflight
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    taken.extend(waiting.into_iter().filter(|id| inflight.insert(id.clone())));
                }
                Err(e) => tracing::warn!(
                    error = %ErrorChain(&e),
                    "reading the events jobs wait for failed; the next poll asks again"
                ),
            }
        }
        Ok((taken, full))
    }

    /// Marks the due `rows` this process does not look after yet as in flight: their ids,
    /// and their states as the read model holds them.
    fn take_up(
        &self,
        rows: Vec<(String, i64, DateTime<Utc>, serde_json::Value)>,
    ) -> (Vec<String>, Vec<(String, Job, u64)>) {
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut inflight = self
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut taken = Vec::new();
        let mut primed = Vec::new();
        for (job_id, version, _, state) in rows {
            match written.get(&job_id) {
                // The read model has not caught up with what this process wrote.
                Some((mine, _)) if *mine > version => continue,
                Some(_) => {
                    written.remove(&job_id);
                }
                None => {}
            }
            if inflight.insert(job_id.clone()) {
                if let (Ok(job), Ok(version)) =
                    (serde_json::from_value::<Job>(state), u64::try_from(version))
                {
                    primed.push((job_id.clone(), job, version));
                }
                taken.push(job_id);
            }
        }
        (taken, primed)
    }

    /// Looks after one job until nothing of it is due soon: fires it at each due time,
    /// runs what starts, and leaves it to the poll when its next due time is far.
    async fn drive(self: Arc<Self>, job_id: String) {
        // Runs are tasks of their own: a run recording its outcome must never wait for this
        // loop to poll it while the loop waits on the same job's lock.
        let mut runs = tokio::task::JoinSet::new();
        let mut wake = tokio::time::Instant::now();
        let mut fresh = false;
        let mut leaving = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(wake), if !leaving => {}
                Some(_) = runs.join_next(), if !runs.is_empty() => {}
                else => break,
            }
            if leaving && !runs.is_empty() {
                continue;
            }
            match self.step(&job_id, &mut runs, &mut fresh).await {
                Next::At(at) => {
                    wake = at;
                    leaving = false;
                }
                Next::Leave => {
                    if runs.is_empty() {
                        break;
                    }
                    leaving = true;
                }
            }
        }
        self.inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&job_id);
    }

    fn remember(&self, job_id: &str, version: u64) {
        if let Ok(version) = i64::try_from(version) {
            self.written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(job_id.to_owned(), (version, Instant::now()));
        }
    }

    /// One look at a job: fire it if it is due, and say when to look again.
    async fn step(
        self: &Arc<Self>,
        job_id: &str,
        runs: &mut tokio::task::JoinSet<()>,
        fresh: &mut bool,
    ) -> Next {
        let soon = |d: Duration| Next::At(tokio::time::Instant::now() + d);
        if !self.owns(job_id) {
            return Next::Leave;
        }
        let loaded = if std::mem::take(fresh) {
            self.bus.fresh_state::<Job>(job_id).await
        } else {
            self.bus.state::<Job>(job_id).await
        };
        let job = match loaded {
            Ok(loaded) => loaded.state,
            Err(e) => {
                tracing::warn!(job_id, error = %ErrorChain(&e), "cannot load a job");
                return soon(Duration::from_secs(1));
            }
        };
        let Some(spec) = job.spec().cloned() else {
            return Next::Leave;
        };
        let now = Utc::now();
        // An event-triggered job's next event, from the triggers read model (a pause's
        // events are recorded as skipped first).
        let mut trigger = None;
        if job.is_event_triggered() && job.status() != JobStatus::Paused && job.exists() {
            match self.next_trigger(job_id, &job, now).await {
                Ok(Some(next)) => trigger = Some(next),
                Ok(None) => {}
                Err(next) => return next,
            }
        }
        let wake_at = match (&trigger, job.wake_at()) {
            (Some(_), _) => now,
            (None, Some(wake_at)) => wake_at,
            (None, None) => return Next::Leave,
        };
        if wake_at > now {
            let wait = (wake_at - now).to_std().unwrap_or_default();
            return if wait <= self.config.hold {
                soon(wait)
            } else {
                Next::Leave
            };
        }
        let dependencies_ready = self.dependencies_ready(&spec).await;
        let missed = job
            .next_due()
            .is_some_and(|due| due < now - chrono::Duration::seconds(1) && !self.covered(due));
        let run_id = Uuid::now_v7().to_string();
        let fire = Fire {
            run_id: run_id.clone(),
            now,
            missed,
            dependencies_ready,
            jitter: jitter(),
            trigger: trigger.as_ref().map(|(event, _)| event.clone()),
        };
        let ctx = CommandContext {
            actor: Some(format!("scheduler:{}", self.id)),
            ..CommandContext::new()
        };
        match self
            .bus
            .execute::<Job>(job_id, JobCommand::Fire(fire), &(), &ctx)
            .await
        {
            Ok(executed) => {
                if let Executed::Committed(c) = executed {
                    self.remember(job_id, c.version);
                }
                let started = match self.bus.state::<Job>(job_id).await {
                    Ok(loaded) if loaded.state.is_running(&run_id) => {
                        Some(loaded.state.event_of(&run_id).cloned())
                    }
                    _ => None,
                };
                if let Some(event) = started {
                    tracing::debug!(job_id, run_id, "run started");
                    let lateness = (Utc::now() - wake_at).to_std().unwrap_or_default();
                    metrics::histogram!("chronicle_job_run_lateness_seconds")
                        .record(lateness.as_secs_f64());
                    let owner = job.owner_id().to_owned();
                    // The envelope of the event it runs for: the one just found, or (a
                    // retry) an earlier one's.
                    let envelope = match (event, trigger) {
                        (Some(event), Some((found, envelope)))
                            if found.stream_seq == event.stream_seq =>
                        {
                            envelope
                        }
                        (Some(event), _) => self.envelope_of(job_id, &event).await,
                        (None, _) => None,
                    };
                    runs.spawn(
                        self.clone()
                            .run(job_id.to_owned(), run_id, owner, spec, envelope),
                    );
                }
                // Look again at once: more may be due (catching up), or the next due time.
                Next::At(tokio::time::Instant::now())
            }
            Err(CommandError::Rejected(JobError::NotDue)) => {
                *fresh = true;
                Next::At(tokio::time::Instant::now())
            }
            Err(CommandError::Rejected(JobError::Busy | JobError::Waiting)) => {
                *fresh = true;
                soon(Duration::from_millis(500))
            }
            Err(CommandError::Rejected(JobError::Paused | JobError::NotFound)) => Next::Leave,
            Err(e) => {
                tracing::warn!(job_id, error = %ErrorChain(&e), "cannot fire a job");
                *fresh = true;
                soon(Duration::from_secs(1))
            }
        }
    }

    /// The next event an event-triggered job has to run for, with its envelope. A pause's
    /// events come first, recorded as skipped (then `Err` says to look again at once).
    async fn next_trigger(
        &self,
        job_id: &str,
        job: &Job,
        now: DateTime<Utc>,
    ) -> Result<Option<(TriggerEvent, Option<serde_json::Value>)>, Next> {
        let soon = |d: Duration| Next::At(tokio::time::Instant::now() + d);
        let next = job_triggers::next(&self.pool, job_id, job.events_through())
            .await
            .map_err(|e| {
                tracing::warn!(job_id, error = %ErrorChain(&e), "cannot read a job's triggers");
                soon(Duration::from_secs(1))
            })?;
        let Some(next) = next else {
            return Ok(None);
        };
        let seq = |n: i64| u64::try_from(n).unwrap_or(0);
        if next.kind != "skipped" {
            let event = TriggerEvent {
                event_type: next.event_type,
                aggregate_id: next.aggregate_id,
                stream_seq: seq(next.stream_seq),
            };
            return Ok(Some((event, next.envelope)));
        }
        if !next.closed {
            // Paused again meanwhile: its span is recorded once it resumes.
            return Ok(None);
        }
        let skip = JobCommand::SkipEvents {
            from_seq: seq(next.stream_seq),
            to_seq: seq(next.through_seq),
            count: seq(next.skipped),
            now,
        };
        let ctx = CommandContext {
            actor: Some(format!("scheduler:{}", self.id)),
            ..CommandContext::new()
        };
        match self.bus.execute::<Job>(job_id, skip, &(), &ctx).await {
            Ok(executed) => {
                if let Executed::Committed(c) = executed {
                    self.remember(job_id, c.version);
                }
                Err(Next::At(tokio::time::Instant::now()))
            }
            Err(CommandError::Rejected(JobError::NotFound)) => Err(Next::Leave),
            Err(e) => {
                tracing::warn!(job_id, error = %ErrorChain(&e), "cannot record skipped events");
                Err(soon(Duration::from_secs(1)))
            }
        }
    }

    /// The envelope of `event`, which job `job_id` runs for (while its trigger is kept).
    async fn envelope_of(&self, job_id: &str, event: &TriggerEvent) -> Option<serde_json::Value> {
        let trigger: Option<Trigger> =
            job_triggers::next(&self.pool, job_id, event.stream_seq.saturating_sub(1))
                .await
                .ok()
                .flatten();
        trigger
            .filter(|t| u64::try_from(t.stream_seq).ok() == Some(event.stream_seq))
            .and_then(|t| t.envelope)
    }

    /// Whether every job `spec` depends on has a latest run, and it succeeded.
    async fn dependencies_ready(&self, spec: &JobSpec) -> bool {
        for dependency in &spec.depends_on {
            match self.bus.fresh_state::<Job>(dependency).await {
                Ok(loaded) if loaded.state.latest_run_succeeded() => {}
                _ => return false,
            }
        }
        true
    }
}

/// The scheduler's hints: job events, passed to its loop (dropped when the loop is behind:
/// the poll finds every job anyway).
struct Hints(tokio::sync::mpsc::Sender<Envelope>);

impl chronicle_bus::LiveHandler for Hints {
    async fn handle(&self, event: Envelope) {
        let _ = self.0.try_send(event);
    }
}
