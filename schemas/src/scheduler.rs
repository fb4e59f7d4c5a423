//! Events of the scheduler bounded context: jobs (a cron expression in a time zone, or one
//! instant), what they do when due, and every run with its outcome.
//!
//! A job's action is data (a URL, or a command by name), never a credential: an HTTP action
//! has no headers, so nothing secret reaches the log through it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// When a job is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Every time `expression` (seconds optional) matches the wall clock of `timezone`
    /// (an IANA name).
    Cron {
        expression: String,
        timezone: String,
    },
    /// Once, at `at` (`{"after_seconds": N}` becomes this when the job is created).
    Once { at: DateTime<Utc> },
    /// Once for every event of one of `types` (of `context`, when it names one) that comes
    /// after the job's `JobCreated` in the log, in log order.
    OnEvent {
        types: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context: Option<String>,
    },
}

/// The event a run of an event-triggered job is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TriggerEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    pub aggregate_id: String,
    /// Its sequence in the log (the JetStream stream `EVENTS`).
    pub stream_seq: u64,
}

/// What a job does when it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// An HTTP request to a host the operator allows; a 2xx answer is success.
    Http {
        url: String,
        method: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
    /// A Chronicle command, run as the job's owner through the command path the gateway uses.
    Command { command: CommandAction },
    /// An alert notification (monitoring): a JSON POST to a webhook or a mail, retried like
    /// any run. Only system jobs send them; webhooks go only to `CHRONICLE_NOTIFY_ALLOW`.
    Notify {
        channel: Channel,
        subject: String,
        /// The webhook's JSON body, and the text of the mail.
        body: String,
    },
}

/// The commands a job may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum CommandAction {
    /// Does nothing but succeed: a heartbeat job, and the benchmark's action.
    Noop {},
    /// The owner cancels their order `order_id` (refused if it is not theirs).
    CancelOrder { order_id: String },
    /// The order saga's payment deadline: order `order_id` is cancelled if it is still
    /// unpaid. Only system jobs run it.
    ExpireUnpaidOrder { order_id: String },
}

/// What happens to due times that passed while no scheduler ran.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MissedPolicy {
    /// None of them runs; the job goes on from its next due time.
    Skip,
    /// The latest of them runs once; the others are skipped.
    #[default]
    RunOnce,
    /// Each of them runs, oldest first.
    RunAll,
}

/// What happens to a due time that arrives while the job's previous run still runs.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// It is skipped.
    #[default]
    Skip,
    /// It waits, and runs when the previous run ends.
    Queue,
    /// It runs at once, beside the previous run.
    Allow,
}

/// Everything a job's owner chose about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobSpec {
    pub name: String,
    pub schedule: Schedule,
    pub action: Action,
    /// Runs after a failed first attempt, at most.
    pub max_retries: u32,
    /// Jobs whose latest run must have succeeded before this one runs.
    pub depends_on: Vec<String>,
    pub missed: MissedPolicy,
    pub overlap: OverlapPolicy,
    /// How long a run may take before it counts as failed.
    pub timeout_seconds: u32,
    /// The first retry waits about this long; each next one about twice as long.
    pub backoff_seconds: u32,
}

/// Why due times were skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// They passed while no scheduler ran (the job's missed-run policy skips them).
    Missed,
    /// They came while the previous run still ran (overlap policy `skip`).
    Overlap,
}

/// Everything that happens to a job (aggregate type `job`, id = a UUID v7, or a name the
/// system derives, such as `order-payment-<order id>`).
///
/// Every event that moves the job's next due time carries it (`next_due_at`), computed when
/// the command was decided: readers never evaluate a cron expression to follow a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum JobEvent {
    JobCreated {
        job_id: String,
        owner_id: String,
        spec: JobSpec,
        created_at: DateTime<Utc>,
        next_due_at: Option<DateTime<Utc>>,
    },
    JobPaused {
        paused_at: DateTime<Utc>,
    },
    /// Due times that passed while paused are not run: the job goes on from `next_due_at`.
    JobResumed {
        resumed_at: DateTime<Utc>,
        next_due_at: Option<DateTime<Utc>>,
    },
    JobDeleted {
        deleted_at: DateTime<Utc>,
    },
    /// Attempt `attempt` (1 for the first) of the run for due time `due_at` started. A
    /// scheduler that has not finished it by `lease_until` is taken to have died.
    RunStarted {
        run_id: String,
        due_at: DateTime<Utc>,
        attempt: u32,
        started_at: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        next_due_at: Option<DateTime<Utc>>,
        /// The event the run is for (an event-triggered job's runs only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<TriggerEvent>,
    },
    RunSucceeded {
        run_id: String,
        finished_at: DateTime<Utc>,
    },
    /// The run failed; it is tried again at `retry_at`, or, when that is absent, the job
    /// gave up on this due time.
    RunFailed {
        run_id: String,
        finished_at: DateTime<Utc>,
        error: String,
        retry_at: Option<DateTime<Utc>>,
    },
    /// Every due time from `from` to `to` (both included) is skipped, for `reason`.
    RunsSkipped {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        reason: SkipReason,
        next_due_at: Option<DateTime<Utc>>,
    },
    /// The `count` matching events from stream sequence `from_seq` to `to_seq` (both
    /// included) came while the event-triggered job was paused: none of them runs.
    EventsSkipped {
        from_seq: u64,
        to_seq: u64,
        count: u64,
        skipped_at: DateTime<Utc>,
    },
}

event_types!(JobEvent:
    JobCreated,
    JobPaused,
    JobResumed,
    JobDeleted,
    RunStarted,
    RunSucceeded,
    RunFailed,
    RunsSkipped,
    EventsSkipped,
);

// An alert rule's channels (monitoring), and the `notify` action of the job that delivers
// one. Its doc comment is the contract's description: keep it.
/// Where a rule's notifications go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Channel {
    /// A JSON POST to a host `CHRONICLE_NOTIFY_ALLOW` allows.
    Webhook { url: String },
    /// A mail through the SMTP server of `CHRONICLE_SMTP_URL`.
    Email { to: String },
}
