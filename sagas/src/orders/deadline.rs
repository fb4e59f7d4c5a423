//! The payment deadline: a one-shot job on the scheduler per placed order, created when the
//! order is placed and deleted once it is settled.

use chronicle_bus::ErrorChain;
use chronicle_commands::CommandContext;
use chronicle_scheduler::{
    Action, CommandAction, Job, JobCommand, JobError, JobSpec, MissedPolicy, OverlapPolicy,
    Schedule,
};
use chronicle_schemas::Envelope;
use cqrs_es::Aggregate;
use uuid::Uuid;

use super::{caused_by, Core, SagaError};

impl Core {
    /// `OrderPlaced`: the payment deadline becomes a one-shot job on the scheduler
    /// (`order-payment-<order id>`), due `payment_timeout` after the order was placed. Its
    /// action cancels the order if it is still unpaid. Creating it again changes nothing.
    pub(super) async fn set_deadline(
        &self,
        order_id: &str,
        placed: &Envelope,
    ) -> Result<(), SagaError> {
        let due = placed.recorded_at
            + chrono::Duration::from_std(self.config.payment_timeout)
                .unwrap_or(chrono::Duration::MAX);
        self.create_deadline(
            order_id,
            due,
            caused_by(placed.correlation_id, placed.event_id),
        )
        .await
    }

    async fn create_deadline(
        &self,
        order_id: &str,
        due: chrono::DateTime<chrono::Utc>,
        ctx: CommandContext,
    ) -> Result<(), SagaError> {
        let create = JobCommand::Create {
            job_id: deadline_job(order_id),
            owner_id: DEADLINE_OWNER.to_owned(),
            spec: JobSpec {
                name: format!("payment deadline of order {order_id}"),
                schedule: Schedule::Once { at: due },
                action: Action::Command {
                    command: CommandAction::ExpireUnpaidOrder {
                        order_id: order_id.to_owned(),
                    },
                },
                max_retries: chronicle_scheduler::MAX_RETRIES,
                depends_on: Vec::new(),
                // A deadline that passed while no scheduler ran still cancels, once.
                missed: MissedPolicy::RunOnce,
                overlap: OverlapPolicy::Skip,
                timeout_seconds: chronicle_scheduler::DEFAULT_TIMEOUT_SECONDS,
                backoff_seconds: chronicle_scheduler::DEFAULT_BACKOFF_SECONDS,
            },
            now: chrono::Utc::now(),
        };
        match self
            .command_in::<Job>(&deadline_job(order_id), create, &(), ctx)
            .await?
        {
            Ok(()) | Err(JobError::Exists) => Ok(()),
            Err(refused) => Err(SagaError::Command {
                aggregate: Job::TYPE,
                id: deadline_job(order_id),
                source: Box::new(refused),
            }),
        }
    }

    /// Paid, rejected or cancelled: the deadline's job goes (were it to run, it would find
    /// the order settled and do nothing).
    pub(super) async fn clear_deadline(
        &self,
        order_id: &str,
        cause: &Envelope,
    ) -> Result<(), SagaError> {
        let delete = JobCommand::Delete {
            by: DEADLINE_OWNER.to_owned(),
            now: chrono::Utc::now(),
        };
        match self
            .command::<Job>(&deadline_job(order_id), delete, &(), cause)
            .await?
        {
            Ok(()) | Err(JobError::NotFound) => Ok(()),
            Err(refused) => Err(SagaError::Command {
                aggregate: Job::TYPE,
                id: deadline_job(order_id),
                source: Box::new(refused),
            }),
        }
    }

    /// Deadlines the saga polled for itself before the scheduler existed
    /// (`saga_order_deadlines`) become jobs, once; a failure leaves them for the next start.
    pub(super) async fn adopt_old_deadlines(&self) {
        let rows: Vec<(String, chrono::DateTime<chrono::Utc>, Uuid, Uuid)> = match sqlx::query_as(
            "SELECT order_id, due_at, correlation_id, causation_id FROM saga_order_deadlines",
        )
        .fetch_all(&self.pool)
        .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "old payment deadlines not read");
                return;
            }
        };
        for (order_id, due, correlation_id, causation_id) in rows {
            let adopted = self
                .create_deadline(&order_id, due, caused_by(correlation_id, causation_id))
                .await;
            let removed = match adopted {
                Ok(()) => sqlx::query("DELETE FROM saga_order_deadlines WHERE order_id = $1")
                    .bind(&order_id)
                    .execute(&self.pool)
                    .await
                    .map(drop)
                    .map_err(SagaError::db("removing an adopted deadline")),
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                tracing::warn!(order_id, error = %ErrorChain(&e), "an old payment deadline not adopted yet");
            }
        }
    }
}

/// The owner of the payment deadline jobs.
const DEADLINE_OWNER: &str = "system:orders";

/// The job that is order `order_id`'s payment deadline.
pub fn deadline_job(order_id: &str) -> String {
    format!("order-payment-{order_id}")
}
