use std::collections::BTreeMap;

use chronicle_schemas::{
    limits::Invalid,
    scheduler::{
        Action, CommandAction, JobEvent, JobSpec, MissedPolicy, OverlapPolicy, Schedule,
        SkipReason, TriggerEvent,
    },
    AggregateKind,
};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::{check_spec, check_timezone, error_text, valid_id, Occurrences, MAX_BACKOFF_SECONDS};

/// How long past its timeout a run may go unrecorded before it counts as lost with its
/// scheduler: the scheduler itself records a timeout at the timeout, so only a dead one
/// lets the lease run out.
pub const LEASE_GRACE_SECONDS: i64 = 5;

/// Most runs of one job running at once (overlap policy `allow`): past it, a due time waits
/// as with `queue`.
pub const MAX_RUNNING: usize = 16;

/// What a scheduler asks of a due job: start (or skip) what is due at `now`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fire {
    /// The id the run gets if one starts.
    pub run_id: String,
    pub now: DateTime<Utc>,
    /// The job's pending due time passed while no scheduler ran (the missed-run policy
    /// applies).
    pub missed: bool,
    /// Every job this one depends on has a latest run, and it succeeded.
    pub dependencies_ready: bool,
    /// 0 to 999: where in its range a retry delay falls, should a lost run be retried.
    pub jitter: u16,
    /// For an event-triggered job: the next event it has not run for, if any came.
    #[serde(default)]
    pub trigger: Option<TriggerEvent>,
}

/// How a run ended, as its scheduler saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded,
    Failed(String),
}

/// What can be asked of a job. Commands a user sends carry `by`: only the owner may act.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobCommand {
    /// `owner_id` creates the job (the gateway checked the HTTP allow list and the jobs it
    /// depends on).
    Create {
        job_id: String,
        owner_id: String,
        spec: JobSpec,
        now: DateTime<Utc>,
    },
    Pause {
        by: String,
        now: DateTime<Utc>,
    },
    Resume {
        by: String,
        now: DateTime<Utc>,
    },
    Delete {
        by: String,
        now: DateTime<Utc>,
    },
    Fire(Fire),
    /// The `count` matching events from `from_seq` to `to_seq` came while the
    /// event-triggered job was paused: recorded as skipped, none of them runs.
    SkipEvents {
        from_seq: u64,
        to_seq: u64,
        count: u64,
        now: DateTime<Utc>,
    },
    /// Run `run_id` ended with `outcome`; `jitter` (0 to 999) places a retry's delay.
    Finish {
        run_id: String,
        now: DateTime<Utc>,
        outcome: Outcome,
        jitter: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// No such job, deleted, or not the caller's.
    #[error("no such job")]
    NotFound,
    #[error("the job already exists")]
    Exists,
    #[error("invalid {0}")]
    Invalid(#[from] Invalid),
    #[error("the job is paused")]
    Paused,
    #[error("nothing is due")]
    NotDue,
    /// A run is running and the overlap policy makes the due time wait.
    #[error("the previous run still runs")]
    Busy,
    #[error("a job this one depends on has not succeeded yet")]
    Waiting,
    /// The run is not running (it finished, or was taken as lost).
    #[error("no such run is running")]
    NotRunning,
}

chronicle_schemas::domain_rules!(JobError {
    Self::NotFound => NotFound,
    Self::Exists => Conflict("job_exists"),
    Self::Invalid(invalid) => Invalid(invalid),
    Self::Paused => Conflict("job_paused"),
    Self::NotDue => Conflict("job_not_due"),
    Self::Busy => Conflict("job_busy"),
    Self::Waiting => Conflict("job_waiting"),
    Self::NotRunning => Conflict("run_not_running"),
});

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Due again at its next run time.
    Scheduled,
    Running,
    /// A failed run waits for its retry.
    Retrying,
    Paused,
    /// A one-shot job that ran, or a cron expression with no due time left.
    Done,
    /// Its last run failed and it gave up, and nothing is due any more.
    Failed,
    Deleted,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Paused => "paused",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Deleted => "deleted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Running {
    due_at: DateTime<Utc>,
    attempt: u32,
    started_at: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<TriggerEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Retry {
    due_at: DateTime<Utc>,
    attempt: u32,
    at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<TriggerEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Finished {
    succeeded: bool,
    gave_up: bool,
}

/// A job: its owner's choices and where its runs stand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    owner_id: String,
    spec: Option<JobSpec>,
    paused: bool,
    deleted: bool,
    next_due: Option<DateTime<Utc>>,
    retries: Vec<Retry>,
    running: BTreeMap<String, Running>,
    last_finished: Option<Finished>,
    /// The latest due time a run started for: a resumed cron job goes on after it, even when
    /// the clock that resumes it is behind the one that fired it.
    #[serde(default)]
    latest_started_due: Option<DateTime<Utc>>,
    /// An event-triggered job: the stream sequence of the last event it is done with (its
    /// run succeeded, or failed for good, or it was skipped). It runs only for later ones.
    #[serde(default)]
    events_through: u64,
}

impl Job {
    pub fn exists(&self) -> bool {
        self.spec.is_some() && !self.deleted
    }

    pub fn owner_id(&self) -> &str {
        &self.owner_id
    }

    pub fn spec(&self) -> Option<&JobSpec> {
        self.spec.as_ref()
    }

    /// The next due time not yet started.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.next_due
    }

    /// When the job next runs: its next due time or its next retry, whichever is first.
    pub fn next_run_at(&self) -> Option<DateTime<Utc>> {
        if !self.exists() || self.paused {
            return None;
        }
        let retry = self.retries.iter().map(|r| r.at).min();
        [self.next_due, retry].into_iter().flatten().min()
    }

    /// When a scheduler should next look at the job: its next run, or the end of a running
    /// run's lease (a run not finished by then is taken as lost).
    pub fn wake_at(&self) -> Option<DateTime<Utc>> {
        if !self.exists() || self.paused {
            return None;
        }
        let lease = self.running.values().map(|r| r.lease_until).min();
        [self.next_run_at(), lease].into_iter().flatten().min()
    }

    /// Whether its latest finished run succeeded (what a job depending on it waits for).
    pub fn latest_run_succeeded(&self) -> bool {
        self.last_finished.as_ref().is_some_and(|f| f.succeeded)
    }

    /// Whether run `run_id` is running.
    pub fn is_running(&self, run_id: &str) -> bool {
        self.running.contains_key(run_id)
    }

    /// The event run `run_id` is for (a running run of an event-triggered job).
    pub fn event_of(&self, run_id: &str) -> Option<&TriggerEvent> {
        self.running.get(run_id).and_then(|r| r.event.as_ref())
    }

    /// Whether it runs for events rather than at times.
    pub fn is_event_triggered(&self) -> bool {
        self.spec
            .as_ref()
            .is_some_and(|s| matches!(s.schedule, Schedule::OnEvent { .. }))
    }

    /// The stream sequence of the last event an event-triggered job is done with.
    pub fn events_through(&self) -> u64 {
        self.events_through
    }

    pub fn status(&self) -> JobStatus {
        if self.spec.is_none() || self.deleted {
            JobStatus::Deleted
        } else if self.paused {
            JobStatus::Paused
        } else if !self.running.is_empty() {
            JobStatus::Running
        } else if !self.retries.is_empty() {
            JobStatus::Retrying
        } else if self.next_due.is_some() || self.is_event_triggered() {
            // An event-triggered job waits for its next event.
            JobStatus::Scheduled
        } else if self.last_finished.as_ref().is_some_and(|f| f.gave_up) {
            JobStatus::Failed
        } else {
            JobStatus::Done
        }
    }

    fn live_spec(&self) -> Result<&JobSpec, JobError> {
        match &self.spec {
            Some(spec) if !self.deleted => Ok(spec),
            _ => Err(JobError::NotFound),
        }
    }

    fn owned_by(&self, by: &str) -> Result<&JobSpec, JobError> {
        let spec = self.live_spec()?;
        if self.owner_id == by {
            Ok(spec)
        } else {
            Err(JobError::NotFound)
        }
    }

    /// The due times of the job's schedule (`None` for a one-shot job).
    fn occurrences(spec: &JobSpec) -> Result<Option<Occurrences>, Invalid> {
        match &spec.schedule {
            Schedule::Cron {
                expression,
                timezone,
            } => Ok(Some(Occurrences::new(
                expression,
                check_timezone(timezone)?,
            )?)),
            Schedule::Once { .. } | Schedule::OnEvent { .. } => Ok(None),
        }
    }

    /// The first due time after `t`: a cron job's next, none for a one-shot job.
    fn due_after(spec: &JobSpec, t: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, Invalid> {
        Ok(Self::occurrences(spec)?.and_then(|o| o.after(t)))
    }

    /// When the retry of a run that failed on attempt `attempt` at `now` is due, if any is
    /// left: `backoff_seconds × 2^(attempt-1)`, at most an hour, times 0.5 to 1 by `jitter`
    /// (so each delay is longer than the one before until the cap).
    fn retry_at(&self, attempt: u32, now: DateTime<Utc>, jitter: u16) -> Option<DateTime<Utc>> {
        let spec = self.spec.as_ref()?;
        if self.deleted || attempt > spec.max_retries {
            return None;
        }
        let doubling = 1u64 << attempt.saturating_sub(1).min(30);
        let base_ms = (u64::from(spec.backoff_seconds) * 1000)
            .saturating_mul(doubling)
            .min(u64::from(MAX_BACKOFF_SECONDS) * 1000);
        let factor = 500 + u64::from(jitter.min(999)) / 2;
        let delay_ms = i64::try_from(base_ms * factor / 1000).unwrap_or(i64::MAX);
        now.checked_add_signed(Duration::milliseconds(delay_ms))
    }

    fn decide(&self, command: JobCommand) -> Result<Vec<JobEvent>, JobError> {
        match command {
            JobCommand::Create {
                job_id,
                owner_id,
                spec,
                now,
            } => {
                if self.spec.is_some() {
                    return Err(JobError::Exists);
                }
                if !valid_id(&job_id) {
                    return Err(Invalid::new("id", "a job id").into());
                }
                if !valid_id(&owner_id) {
                    return Err(Invalid::new("owner_id", "a user id").into());
                }
                check_spec(&spec, now)?;
                let system_only = matches!(
                    spec.action,
                    Action::Command {
                        command: CommandAction::ExpireUnpaidOrder { .. }
                    } | Action::Notify { .. }
                );
                if system_only && !owner_id.starts_with("system:") {
                    return Err(
                        Invalid::new("action.command", "not a command users may schedule").into(),
                    );
                }
                if spec.depends_on.contains(&job_id) {
                    return Err(Invalid::new("depends_on", "not the job itself").into());
                }
                let next_due_at = match &spec.schedule {
                    Schedule::Once { at } => Some(*at),
                    Schedule::Cron { .. } => Self::due_after(&spec, now)?,
                    Schedule::OnEvent { .. } => None,
                };
                Ok(vec![JobEvent::JobCreated {
                    job_id,
                    owner_id,
                    spec,
                    created_at: now,
                    next_due_at,
                }])
            }
            JobCommand::Pause { by, now } => {
                self.owned_by(&by)?;
                Ok(if self.paused {
                    vec![]
                } else {
                    vec![JobEvent::JobPaused { paused_at: now }]
                })
            }
            JobCommand::Resume { by, now } => {
                let spec = self.owned_by(&by)?;
                if !self.paused {
                    return Ok(vec![]);
                }
                // Due times that passed while paused are not owed: a cron job goes on from
                // now; a one-shot job still due runs.
                let next_due_at = match spec.schedule {
                    Schedule::Once { .. } | Schedule::OnEvent { .. } => self.next_due,
                    Schedule::Cron { .. } => {
                        Self::due_after(spec, self.latest_started_due.map_or(now, |d| d.max(now)))?
                    }
                };
                Ok(vec![JobEvent::JobResumed {
                    resumed_at: now,
                    next_due_at,
                }])
            }
            JobCommand::Delete { by, now } => {
                self.owned_by(&by)?;
                Ok(vec![JobEvent::JobDeleted { deleted_at: now }])
            }
            JobCommand::Fire(fire) => self.fire(fire),
            JobCommand::SkipEvents {
                from_seq,
                to_seq,
                count,
                now,
            } => {
                self.live_spec()?;
                if !self.is_event_triggered() || to_seq <= self.events_through {
                    return Ok(vec![]);
                }
                Ok(vec![JobEvent::EventsSkipped {
                    from_seq: from_seq.max(self.events_through + 1),
                    to_seq,
                    count,
                    skipped_at: now,
                }])
            }
            JobCommand::Finish {
                run_id,
                now,
                outcome,
                jitter,
            } => {
                if self.spec.is_none() {
                    return Err(JobError::NotFound);
                }
                let run = self.running.get(&run_id).ok_or(JobError::NotRunning)?;
                Ok(vec![match outcome {
                    Outcome::Succeeded => JobEvent::RunSucceeded {
                        run_id,
                        finished_at: now,
                    },
                    Outcome::Failed(error) => JobEvent::RunFailed {
                        run_id,
                        finished_at: now,
                        error: error_text(&error),
                        retry_at: self.retry_at(run.attempt, now, jitter),
                    },
                }])
            }
        }
    }

    fn fire(&self, fire: Fire) -> Result<Vec<JobEvent>, JobError> {
        let spec = self.live_spec()?.clone();
        if self.paused {
            return Err(JobError::Paused);
        }
        let now = fire.now;
        let occurrences = Self::occurrences(&spec)?;
        let mut job = self.clone();
        let mut events = Vec::new();
        let mut record = |job: &mut Job, event: JobEvent| {
            job.apply_event(event.clone());
            events.push(event);
        };
        // Runs whose scheduler died: failed, and retried like any failure.
        let lost: Vec<(String, u32)> = job
            .running
            .iter()
            .filter(|(_, r)| r.lease_until <= now)
            .map(|(id, r)| (id.clone(), r.attempt))
            .collect();
        for (run_id, attempt) in lost {
            let retry_at = job.retry_at(attempt, now, fire.jitter);
            record(
                &mut job,
                JobEvent::RunFailed {
                    run_id,
                    finished_at: now,
                    error: "lost: its scheduler stopped before the run finished".to_owned(),
                    retry_at,
                },
            );
        }
        let or_refuse = |events: Vec<JobEvent>, refusal: JobError| {
            if events.is_empty() {
                Err(refusal)
            } else {
                Ok(events)
            }
        };
        let retry = job
            .retries
            .iter()
            .filter(|r| r.at <= now)
            .min_by_key(|r| r.at)
            .cloned();
        let fresh = job.next_due.filter(|d| *d <= now);
        let busy = !job.running.is_empty()
            && (spec.overlap != OverlapPolicy::Allow || job.running.len() >= MAX_RUNNING);
        let lease_until =
            now + Duration::seconds(i64::from(spec.timeout_seconds) + LEASE_GRACE_SECONDS);
        let after = |t: DateTime<Utc>| occurrences.as_ref().and_then(|o| o.after(t));
        let last_due = |due: DateTime<Utc>| {
            occurrences
                .as_ref()
                .and_then(|o| o.at_or_before(now))
                .map_or(due, |last| last.max(due))
        };
        match (retry, fresh) {
            (Some(retry), fresh) if fresh.is_none_or(|f| retry.at <= f) => {
                if busy {
                    return or_refuse(events, JobError::Busy);
                }
                if !fire.dependencies_ready {
                    return or_refuse(events, JobError::Waiting);
                }
                let next_due_at = job.next_due;
                record(
                    &mut job,
                    JobEvent::RunStarted {
                        run_id: fire.run_id,
                        due_at: retry.due_at,
                        attempt: retry.attempt,
                        started_at: now,
                        lease_until,
                        next_due_at,
                        event: retry.event,
                    },
                );
                Ok(events)
            }
            // An event-triggered job runs for its events one at a time, in log order: the
            // next only once the one before is done with (retries included).
            (None, None) => match fire.trigger {
                Some(trigger)
                    if job.is_event_triggered() && trigger.stream_seq > job.events_through =>
                {
                    if !job.running.is_empty() || !job.retries.is_empty() {
                        return or_refuse(events, JobError::Busy);
                    }
                    if !fire.dependencies_ready {
                        return or_refuse(events, JobError::Waiting);
                    }
                    record(
                        &mut job,
                        JobEvent::RunStarted {
                            run_id: fire.run_id,
                            due_at: now,
                            attempt: 1,
                            started_at: now,
                            lease_until,
                            next_due_at: None,
                            event: Some(trigger),
                        },
                    );
                    Ok(events)
                }
                _ => or_refuse(events, JobError::NotDue),
            },
            (_, Some(due)) => {
                // A due time that came while a run ran overlaps it; one that was waiting
                // before the run started (a backlog being caught up) waits its turn.
                let overlaps = job.running.values().any(|r| due >= r.started_at);
                if busy {
                    if spec.overlap == OverlapPolicy::Skip && overlaps {
                        record(
                            &mut job,
                            JobEvent::RunsSkipped {
                                from: due,
                                to: last_due(due),
                                reason: SkipReason::Overlap,
                                next_due_at: after(now),
                            },
                        );
                        return Ok(events);
                    }
                    return or_refuse(events, JobError::Busy);
                }
                if !fire.dependencies_ready {
                    return or_refuse(events, JobError::Waiting);
                }
                let due = if fire.missed && spec.missed != MissedPolicy::RunAll {
                    let last = last_due(due);
                    if spec.missed == MissedPolicy::Skip {
                        record(
                            &mut job,
                            JobEvent::RunsSkipped {
                                from: due,
                                to: last,
                                reason: SkipReason::Missed,
                                next_due_at: after(now),
                            },
                        );
                        return Ok(events);
                    }
                    if last > due {
                        let to = occurrences
                            .as_ref()
                            .and_then(|o| o.before(last))
                            .map_or(due, |t| t.max(due));
                        record(
                            &mut job,
                            JobEvent::RunsSkipped {
                                from: due,
                                to,
                                reason: SkipReason::Missed,
                                next_due_at: Some(last),
                            },
                        );
                    }
                    last
                } else {
                    due
                };
                record(
                    &mut job,
                    JobEvent::RunStarted {
                        run_id: fire.run_id,
                        due_at: due,
                        attempt: 1,
                        started_at: now,
                        lease_until,
                        next_due_at: after(due),
                        event: None,
                    },
                );
                Ok(events)
            }
            (Some(_), None) => unreachable!("a retry with no fresh due time is taken above"),
        }
    }

    fn apply_event(&mut self, event: JobEvent) {
        match event {
            JobEvent::JobCreated {
                owner_id,
                spec,
                next_due_at,
                ..
            } => {
                *self = Self {
                    owner_id,
                    spec: Some(spec),
                    next_due: next_due_at,
                    ..Self::default()
                };
            }
            JobEvent::JobPaused { .. } => self.paused = true,
            JobEvent::JobResumed { next_due_at, .. } => {
                self.paused = false;
                self.next_due = next_due_at;
            }
            JobEvent::JobDeleted { .. } => {
                self.deleted = true;
                self.retries.clear();
            }
            JobEvent::RunStarted {
                run_id,
                due_at,
                attempt,
                started_at,
                lease_until,
                next_due_at,
                event,
            } => {
                match &event {
                    // A retry of an event's run is the retry of that event.
                    Some(event) => self.retries.retain(|r| {
                        r.event.as_ref().map(|e| e.stream_seq) != Some(event.stream_seq)
                    }),
                    None => self.retries.retain(|r| r.due_at != due_at),
                }
                self.latest_started_due = self.latest_started_due.max(Some(due_at));
                self.running.insert(
                    run_id,
                    Running {
                        due_at,
                        attempt,
                        started_at,
                        lease_until,
                        event,
                    },
                );
                self.next_due = next_due_at;
            }
            JobEvent::RunSucceeded { run_id, .. } => {
                if let Some(run) = self.running.remove(&run_id) {
                    self.done_with(run.event.as_ref());
                    self.last_finished = Some(Finished {
                        succeeded: true,
                        gave_up: false,
                    });
                }
            }
            JobEvent::RunFailed {
                run_id, retry_at, ..
            } => {
                if let Some(run) = self.running.remove(&run_id) {
                    match retry_at {
                        Some(at) => self.retries.push(Retry {
                            due_at: run.due_at,
                            attempt: run.attempt.saturating_add(1),
                            at,
                            event: run.event,
                        }),
                        // Failed for good: the job goes on to its next event.
                        None => self.done_with(run.event.as_ref()),
                    }
                    self.last_finished = Some(Finished {
                        succeeded: false,
                        gave_up: retry_at.is_none(),
                    });
                }
            }
            JobEvent::RunsSkipped { next_due_at, .. } => self.next_due = next_due_at,
            JobEvent::EventsSkipped { to_seq, .. } => {
                self.events_through = self.events_through.max(to_seq);
            }
        }
    }
}

impl Job {
    /// The job is done with `event` (its run's): later events may run.
    fn done_with(&mut self, event: Option<&TriggerEvent>) {
        if let Some(event) = event {
            self.events_through = self.events_through.max(event.stream_seq);
        }
    }
}

impl AggregateKind for Job {
    const CONTEXT: &'static str = "scheduler";
}

chronicle_schemas::decided_aggregate!(Job: "job", JobCommand => JobEvent, JobError);
