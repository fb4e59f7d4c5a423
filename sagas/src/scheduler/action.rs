//! A started run: its action performed within the job's timeout, and its outcome recorded.

use std::{sync::Arc, time::Duration};

use chronicle_bus::ErrorChain;
use chronicle_commands::{CommandContext, CommandError, Executed};
use chronicle_commerce::{Canceller, Order, OrderCommand, OrderError};
use chronicle_scheduler::{Action, CommandAction, Job, JobCommand, JobSpec, Outcome, Schedule};
use chrono::Utc;
use uuid::Uuid;

use super::{jitter, Core};

impl Core {
    /// Runs one started run: its action within the timeout, then its outcome recorded.
    /// `event`: the envelope of the event an event-triggered job's run is for.
    pub(super) async fn run(
        self: Arc<Self>,
        job_id: String,
        run_id: String,
        owner: String,
        spec: JobSpec,
        event: Option<serde_json::Value>,
    ) {
        let timeout = Duration::from_secs(u64::from(spec.timeout_seconds));
        let trigger = match spec.schedule {
            Schedule::OnEvent { .. } => "event",
            Schedule::Cron { .. } | Schedule::Once { .. } => "time",
        };
        let outcome = match tokio::time::timeout(
            timeout,
            self.perform(
                &job_id,
                &run_id,
                &owner,
                &spec.action,
                timeout,
                event.as_ref(),
            ),
        )
        .await
        {
            Ok(Ok(())) => Outcome::Succeeded,
            Ok(Err(error)) => Outcome::Failed(error),
            Err(_) => Outcome::Failed(format!("timed out after {} s", spec.timeout_seconds)),
        };
        let ctx = CommandContext {
            actor: Some(format!("scheduler:{}", self.id)),
            ..CommandContext::new()
        };
        let mut delay = Duration::from_millis(100);
        for _ in 0..8 {
            let finish = JobCommand::Finish {
                run_id: run_id.clone(),
                now: Utc::now(),
                outcome: outcome.clone(),
                jitter: jitter(),
            };
            match self.bus.execute::<Job>(&job_id, finish, &(), &ctx).await {
                Ok(executed) => {
                    if let Executed::Committed(c) = executed {
                        self.remember(&job_id, c.version);
                    }
                    tracing::debug!(job_id, run_id, ?outcome, "run finished");
                    let label = match outcome {
                        Outcome::Succeeded => "succeeded",
                        Outcome::Failed(_) => "failed",
                    };
                    metrics::counter!("chronicle_job_runs_total", "outcome" => label, "trigger" => trigger)
                        .increment(1);
                    return;
                }
                Err(CommandError::Rejected(refused)) => {
                    // Taken as lost meanwhile (this process stalled past the lease).
                    tracing::warn!(job_id, run_id, reason = %refused, "a run's outcome was refused");
                    return;
                }
                Err(e) => {
                    tracing::warn!(job_id, run_id, error = %ErrorChain(&e), "cannot record a run's outcome; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }

    /// Does what the job says, as its owner; for an event-triggered job's run, about
    /// `event` (an HTTP action with no body of its own sends its envelope; a command is
    /// caused by it).
    pub(super) async fn perform(
        &self,
        job_id: &str,
        run_id: &str,
        owner: &str,
        action: &Action,
        timeout: Duration,
        event: Option<&serde_json::Value>,
    ) -> Result<(), String> {
        match action {
            Action::Http { url, method, body } => {
                self.config.http_allow.check(url).map_err(|e| e.message)?;
                let method = reqwest::Method::from_bytes(method.as_bytes())
                    .map_err(|_| format!("not an HTTP method: {method}"))?;
                let mut request = self
                    .http
                    .request(method, url)
                    .timeout(timeout)
                    .header("Chronicle-Job-Id", job_id)
                    .header("Chronicle-Run-Id", run_id);
                if let (None, Some(event)) = (body, event) {
                    request = request
                        .header("Content-Type", "application/json")
                        .body(event.to_string());
                }
                if let Some(body) = body {
                    let json = serde_json::from_str::<serde_json::Value>(body).is_ok();
                    request = request
                        .header(
                            "Content-Type",
                            if json {
                                "application/json"
                            } else {
                                "text/plain; charset=utf-8"
                            },
                        )
                        .body(body.clone());
                }
                let response = request
                    .send()
                    .await
                    .map_err(|e| format!("HTTP request failed: {}", ErrorChain(&e)))?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {status}"))
                }
            }
            Action::Command { command } => self.command(owner, run_id, command, event).await,
            Action::Notify {
                channel,
                subject,
                body,
            } => self.notifier.send(channel, subject, body, timeout).await,
        }
    }

    /// Runs `command` as `owner`: in the run's correlation, or, for a run about an event,
    /// in the event's, caused by it.
    pub(super) async fn command(
        &self,
        owner: &str,
        run_id: &str,
        command: &CommandAction,
        event: Option<&serde_json::Value>,
    ) -> Result<(), String> {
        let id = |field: &str| {
            event
                .and_then(|e| e.get(field))
                .and_then(serde_json::Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
        };
        let ctx = CommandContext {
            correlation_id: id("correlation_id")
                .or_else(|| Uuid::parse_str(run_id).ok())
                .unwrap_or_else(Uuid::now_v7),
            causation_id: id("event_id"),
            actor: Some(owner.to_owned()),
            ..CommandContext::new()
        };
        match command {
            CommandAction::Noop {} => Ok(()),
            CommandAction::CancelOrder { order_id } => {
                let cancel = OrderCommand::Cancel {
                    by: Canceller::Customer(owner.to_owned()),
                };
                match self.bus.execute::<Order>(order_id, cancel, &(), &ctx).await {
                    Ok(_) => Ok(()),
                    Err(CommandError::Rejected(refused)) => {
                        Err(format!("the order refused: {refused}"))
                    }
                    Err(e) => Err(ErrorChain(&e).to_string()),
                }
            }
            CommandAction::ExpireUnpaidOrder { order_id } => {
                let cancel = OrderCommand::Cancel {
                    by: Canceller::PaymentTimeout,
                };
                match self.bus.execute::<Order>(order_id, cancel, &(), &ctx).await {
                    Ok(_) => {
                        tracing::info!(order_id, "unpaid at its deadline: cancelled");
                        Ok(())
                    }
                    // Paid, cancelled or rejected before its deadline: nothing to do.
                    Err(CommandError::Rejected(
                        OrderError::InvalidState { .. } | OrderError::NotFound,
                    )) => Ok(()),
                    Err(CommandError::Rejected(refused)) => {
                        Err(format!("the order refused: {refused}"))
                    }
                    Err(e) => Err(ErrorChain(&e).to_string()),
                }
            }
        }
    }
}
