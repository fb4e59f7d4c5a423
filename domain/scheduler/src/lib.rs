//! The scheduler bounded context (the API contract, Scheduler): a [`Job`] is due at the times its
//! [`Schedule`] names (a cron expression in a time zone, or one instant), runs its
//! [`Action`] once per due time, retries a failed run with growing delays up to
//! `max_retries`, waits for the jobs it depends on, and follows its missed-run and overlap
//! policies.
//!
//! No I/O and no clock: the scheduler process tells a job what time it is, whether its due
//! time passed while no scheduler ran, whether its dependencies are ready, and what its
//! action did; the job decides what that means and records it. The limits every input must
//! meet live here, for the gateway to run before it builds a command (architecture.md invariant 7).

mod allow;
mod cron;
mod job;

pub use allow::{AllowList, HttpTarget};
pub use chronicle_schemas::scheduler::{
    Action, CommandAction, JobEvent, JobSpec, MissedPolicy, OverlapPolicy, Schedule, SkipReason,
    TriggerEvent,
};
pub use cron::{check_cron, check_timezone, Occurrences};
pub use job::{
    Fire, Job, JobCommand, JobError, JobStatus, Outcome, LEASE_GRACE_SECONDS, MAX_RUNNING,
};

use chronicle_schemas::{
    limits::{self, Invalid},
    scheduler::Channel,
};
use chrono::{DateTime, Duration, SubsecRound, Utc};

/// Longest job name, in characters.
pub const MAX_NAME: usize = 200;
/// Most retries a job may ask for.
pub const MAX_RETRIES: u32 = 25;
/// Most jobs one job may depend on.
pub const MAX_DEPENDENCIES: usize = 16;
/// Longest a run may take: one day.
pub const MAX_TIMEOUT_SECONDS: u32 = 86_400;
/// Longest first retry delay: one hour (retry delays never exceed [`MAX_BACKOFF_SECONDS`]).
pub const MAX_BACKOFF_SECONDS: u32 = 3_600;
/// Furthest ahead a one-shot job may be due: ten years.
pub const MAX_AHEAD_SECONDS: i64 = 10 * 366 * 86_400;
/// Furthest in the past an `at` may lie when the job is created (it then runs at once).
pub const MAX_PAST_SECONDS: i64 = 86_400;
/// Longest URL of an HTTP action.
pub const MAX_URL: usize = 2_048;
/// Longest body of an HTTP action, in characters.
pub const MAX_BODY: usize = 65_536;
/// Longest error recorded for a failed run, in characters (longer ones are cut).
pub const MAX_ERROR: usize = 1_000;
/// Number of buckets jobs are spread over for the scheduler processes to share.
pub const BUCKETS: u16 = 64;
/// Default retry count when a job names none.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Default run timeout.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 60;
/// Default first retry delay.
pub const DEFAULT_BACKOFF_SECONDS: u32 = 1;

/// Most event types one event-triggered job names.
pub const MAX_EVENT_TYPES: usize = 32;

/// The event types of jobs themselves: no job runs for them (a job run for `RunSucceeded`
/// would run for its own runs, forever).
pub const JOB_EVENT_TYPES: [&str; 9] = [
    "JobCreated",
    "JobPaused",
    "JobResumed",
    "JobDeleted",
    "RunStarted",
    "RunSucceeded",
    "RunFailed",
    "RunsSkipped",
    "EventsSkipped",
];

/// Whether `name` is spelled as an event type is: a letter, then up to 63 letters and digits.
fn event_type_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The HTTP methods an action may use.
pub const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

/// A job id, an owner id or a dependency: 1 to 128 characters of `0-9`, `a-z`, `A-Z`,
/// `-`, `_` and `:` (a NATS subject token, and no text to sanitise).
pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':'))
}

/// The bucket of job `job_id` (FNV-1a of its id): which scheduler process looks after it
/// is decided per bucket, never per job, so sharing the work costs one list of numbers.
pub fn bucket(job_id: &str) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in job_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    u16::try_from(hash % u32::from(BUCKETS)).unwrap_or(0)
}

/// The instant `seconds` after `now` (`after_seconds`), when it is 0 to
/// [`MAX_AHEAD_SECONDS`] ahead, to the microsecond (what every store of it keeps).
///
/// # Errors
/// [`Invalid`] for `after_seconds`.
pub fn after(now: DateTime<Utc>, seconds: i64) -> Result<DateTime<Utc>, Invalid> {
    limits::in_range("after_seconds", seconds.into(), 0, MAX_AHEAD_SECONDS.into())?;
    now.checked_add_signed(Duration::seconds(seconds))
        .map(|t| t.trunc_subsecs(6))
        .ok_or_else(|| Invalid::new("after_seconds", "beyond the calendar"))
}

/// An error text as a run records it: control characters replaced, cut to [`MAX_ERROR`].
pub fn error_text(error: &str) -> String {
    let mut text: String = error
        .chars()
        .map(|c| {
            if limits::is_allowed_char(c) && c != '\r' {
                c
            } else {
                ' '
            }
        })
        .take(MAX_ERROR)
        .collect();
    if text.trim().is_empty() {
        text = "failed".to_owned();
    }
    text
}

/// Checks everything about `spec` that needs no other aggregate: the limits, the cron
/// expression and time zone, the action's shape. Whether an HTTP action's host is allowed
/// is the caller's [`AllowList`]; whether the jobs it depends on exist is the caller's too.
///
/// # Errors
/// [`Invalid`] naming the first field at fault.
pub fn check_spec(spec: &JobSpec, now: DateTime<Utc>) -> Result<(), Invalid> {
    limits::text("name", &spec.name, 1, MAX_NAME)?;
    match &spec.schedule {
        Schedule::Cron {
            expression,
            timezone,
        } => {
            check_cron(expression)?;
            let tz = check_timezone(timezone)?;
            if Occurrences::new(expression, tz)?.after(now).is_none() {
                return Err(Invalid::new(
                    "schedule.cron",
                    "the expression is never due again",
                ));
            }
        }
        Schedule::OnEvent { types, context } => {
            if types.is_empty() || types.len() > MAX_EVENT_TYPES {
                return Err(Invalid::new(
                    "schedule.on_event.types",
                    format!("1 to {MAX_EVENT_TYPES} event types"),
                ));
            }
            if let Some(bad) = types.iter().find(|t| !event_type_name(t)) {
                return Err(Invalid::new(
                    "schedule.on_event.types",
                    format!("{bad:?} is not an event type's name"),
                ));
            }
            if let Some(own) = types.iter().find(|t| JOB_EVENT_TYPES.contains(&t.as_str())) {
                return Err(Invalid::new(
                    "schedule.on_event.types",
                    format!("{own} is a job's own event: a job cannot be run by jobs' events"),
                ));
            }
            if context.as_deref().is_some_and(|c| {
                c.is_empty()
                    || c.len() > 32
                    || !c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            }) {
                return Err(Invalid::new(
                    "schedule.on_event.context",
                    "a context's name",
                ));
            }
        }
        Schedule::Once { at } => {
            let earliest = now - Duration::seconds(MAX_PAST_SECONDS);
            let latest = now + Duration::seconds(MAX_AHEAD_SECONDS);
            if *at < earliest || *at > latest {
                return Err(Invalid::new(
                    "schedule.at",
                    "from one day ago to ten years ahead",
                ));
            }
        }
    }
    match &spec.action {
        Action::Http { url, method, body } => {
            HttpTarget::parse(url)?;
            if !METHODS.contains(&method.as_str()) {
                return Err(Invalid::new(
                    "action.method",
                    format!("one of {}", METHODS.join(", ")),
                ));
            }
            if let Some(body) = body {
                limits::text("action.body", body, 0, MAX_BODY)?;
            }
        }
        Action::Notify {
            channel,
            subject,
            body,
        } => {
            limits::text("action.subject", subject, 1, MAX_NAME)?;
            limits::text("action.body", body, 0, MAX_BODY)?;
            match channel {
                Channel::Webhook { url } => {
                    HttpTarget::parse(url)?;
                }
                Channel::Email { to } => limits::text("action.to", to, 3, 254)?,
            }
        }
        Action::Command { command } => match command {
            CommandAction::Noop {} => {}
            CommandAction::CancelOrder { order_id }
            | CommandAction::ExpireUnpaidOrder { order_id } => {
                if !valid_id(order_id) {
                    return Err(Invalid::new("action.order_id", "an order id"));
                }
            }
        },
    }
    limits::in_range(
        "max_retries",
        spec.max_retries.into(),
        0,
        MAX_RETRIES.into(),
    )?;
    if spec.depends_on.len() > MAX_DEPENDENCIES {
        return Err(Invalid::new(
            "depends_on",
            format!("at most {MAX_DEPENDENCIES} jobs"),
        ));
    }
    if spec.depends_on.iter().any(|id| !valid_id(id)) {
        return Err(Invalid::new("depends_on", "job ids"));
    }
    let mut unique = spec.depends_on.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != spec.depends_on.len() {
        return Err(Invalid::new("depends_on", "each job once"));
    }
    limits::in_range(
        "timeout_seconds",
        spec.timeout_seconds.into(),
        1,
        MAX_TIMEOUT_SECONDS.into(),
    )?;
    limits::in_range(
        "backoff_seconds",
        spec.backoff_seconds.into(),
        1,
        MAX_BACKOFF_SECONDS.into(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket("a"), bucket("a"));
        let used: std::collections::BTreeSet<u16> =
            (0..1000).map(|i| bucket(&format!("job-{i}"))).collect();
        assert_eq!(
            used.len(),
            usize::from(BUCKETS),
            "1000 ids reach every bucket"
        );
        assert!(used.iter().all(|b| *b < BUCKETS));
    }

    #[test]
    fn ids_are_plain_tokens() {
        assert!(valid_id("018f2b9c-7f00-7000-8000-000000000000"));
        assert!(valid_id("order-payment-abc"));
        assert!(valid_id("system:orders"));
        for bad in ["", "a.b", "a b", "a*", "a\u{0}", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn after_is_bounded_and_never_overflows() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(after(now, 0), Ok(now));
        let fine = now + Duration::nanoseconds(1_234_567);
        assert_eq!(after(fine, 1).unwrap().timestamp_subsec_nanos(), 1_234_000);
        assert!(after(now, -1).is_err());
        assert!(after(now, MAX_AHEAD_SECONDS + 1).is_err());
        assert!(after(now, i64::MAX).is_err());
        assert!(after(now, i64::MIN).is_err());
    }

    #[test]
    fn every_job_event_is_one_no_job_may_run_for() {
        use chronicle_schemas::examples::Examples;
        for event in JobEvent::examples() {
            let name = cqrs_es::DomainEvent::event_type(&event);
            assert!(JOB_EVENT_TYPES.contains(&name.as_str()), "{name}");
        }
    }

    #[test]
    fn errors_are_cut_and_cleaned() {
        assert_eq!(error_text("a\u{0}b\u{1b}[31m"), "a b [31m");
        assert_eq!(error_text(&"x".repeat(5000)).chars().count(), MAX_ERROR);
        assert_eq!(error_text(""), "failed");
    }
}
