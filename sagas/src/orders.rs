use std::{future::Future, sync::Arc, time::Duration};

use chronicle_bus::{
    ErrorChain, Faults, Handler, HandlerError, InjectedFault, Subscriber, SubscriberConfig,
    SubscriberError,
};
use chronicle_commands::{CommandContext, CommandError, CommandExecutor};
use chronicle_commerce::{
    Coupon, CouponCommand, CouponError, InventoryCommand, InventoryError, InventoryItem, Order,
    OrderCommand, OrderEvent, OrderServices, OrderStatus,
};
use chronicle_scheduler::{
    Action, CommandAction, Job, JobCommand, JobError, JobSpec, MissedPolicy, OverlapPolicy,
    Schedule,
};
use chronicle_schemas::{AggregateKind, Envelope};
use cqrs_es::Aggregate;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The actor recorded on every event the saga causes.
const ACTOR: &str = "saga:orders";

/// Why the saga stopped or an event could not be handled yet.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    #[error(transparent)]
    Database(#[from] chronicle_commands::DbError),
    #[error(transparent)]
    Decode(chronicle_schemas::DecodeError),
    /// The payment provider could not be asked (the event is handled again later).
    #[error(transparent)]
    Payment(chronicle_commerce::PaymentFailure),
    /// A command failed for a reason other than a business rule (the store, a lost race
    /// retried too often): the event is handled again later.
    #[error("command on {aggregate} {id} failed")]
    Command {
        aggregate: &'static str,
        id: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Fault(#[from] InjectedFault),
}

impl SagaError {
    fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Database(chronicle_commands::DbError { context, source })
    }
}

/// Tuning of the order saga.
#[derive(Debug, Clone)]
pub struct OrderSagaConfig {
    /// How long an order may stay unpaid after it is placed (`CHRONICLE_ORDER_PAYMENT_TIMEOUT`).
    pub payment_timeout: Duration,
    /// How long JetStream waits for an ack before redelivering (after a crash).
    pub ack_wait: Duration,
}

impl Default for OrderSagaConfig {
    fn default() -> Self {
        Self::with_payment_timeout(Duration::from_secs(15 * 60))
    }
}

impl OrderSagaConfig {
    /// Defaults for everything but the payment timeout.
    pub fn with_payment_timeout(payment_timeout: Duration) -> Self {
        Self {
            payment_timeout,
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// The order saga (process manager), on the shared subscriber runtime: up to 64 events a
/// batch, in lanes that keep the events of one order, item or coupon in stream order and run
/// the rest side by side; the batch's checkpoint commits once every lane is done, and the
/// commands it issues are safe to issue again when an event is handled a second time.
pub struct OrderSaga {
    core: Arc<Core>,
    client: async_nats::Client,
    config: OrderSagaConfig,
}

/// What handling an event and expiring deadlines need.
struct Core {
    bus: CommandExecutor,
    pool: PgPool,
    config: OrderSagaConfig,
    faults: Faults,
    services: OrderServices,
}

/// A command's result as the saga sees it: done, or refused by a business rule (an expected
/// outcome it decides on). Anything else is a [`SagaError`].
type Decided<E> = Result<(), E>;

/// The saga's name as a subscriber (its checkpoint, its line in `/api/v1/projections`) and
/// its durable consumer.
pub const ORDER_SAGA: &str = "saga-orders";

impl OrderSaga {
    pub fn new(
        bus: CommandExecutor,
        pool: PgPool,
        client: async_nats::Client,
        config: OrderSagaConfig,
    ) -> Self {
        Self {
            core: Arc::new(Core {
                bus,
                pool,
                config: config.clone(),
                faults: Faults::default(),
                services: OrderServices::without_payments(),
            }),
            client,
            config,
        }
    }

    /// Fault points: `saga.between_lines` (after reserving an order's first line, before its
    /// second), `saga.before_commit` (an event handled, the checkpoint not yet committed) and
    /// `saga.after_commit` (committed, not yet acked).
    pub fn with_faults(self, faults: Faults) -> Self {
        let core = Arc::try_unwrap(self.core).unwrap_or_else(|_| {
            unreachable!("with_faults is called while building, before the core is shared")
        });
        Self {
            core: Arc::new(Core { faults, ..core }),
            ..self
        }
    }

    /// The payment provider refunds go through (the same provider the gateway charges).
    pub fn with_payments(self, services: OrderServices) -> Self {
        let core = Arc::try_unwrap(self.core).unwrap_or_else(|_| {
            unreachable!("with_payments is called while building, before the core is shared")
        });
        Self {
            core: Arc::new(Core { services, ..core }),
            ..self
        }
    }

    /// The saga as a subscriber: name and consumer `saga-orders`, order events only.
    pub fn subscriber_config(&self) -> SubscriberConfig {
        SubscriberConfig {
            batch_max: 64,
            ack_wait: self.config.ack_wait,
            // A saga step failing for an outside reason (the payment provider away, a command
            // losing races) is retried for about two minutes before it is parked: parking
            // leaves an order unsettled until someone retries it. Events that do not decode
            // are parked at once.
            attempts: 12,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            fault_prefix: "saga",
            ..SubscriberConfig::new(
                ORDER_SAGA,
                ORDER_SAGA,
                vec![format!("events.{}.{}.>", Order::CONTEXT, Order::TYPE)],
            )
        }
    }

    /// Runs until `shutdown` completes or a fault point stops it. Lost connections and
    /// failed commands are retried; an event that keeps failing is parked.
    ///
    /// # Errors
    /// Only [`SubscriberError::Fault`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), SubscriberError> {
        let config = self.subscriber_config();
        let subscriber = Subscriber::new(
            Events(self.core.clone()),
            self.core.pool.clone(),
            self.client,
            config,
        )
        .with_faults(self.core.faults.clone());
        self.core.adopt_old_deadlines().await;
        subscriber.run(shutdown).await
    }
}

/// The saga's [`Handler`].
struct Events(Arc<Core>);

impl From<SagaError> for HandlerError {
    fn from(error: SagaError) -> Self {
        match error {
            SagaError::Fault(f) => HandlerError::Fault(f),
            // An event that does not decode never will: park it at once.
            SagaError::Decode(_) => HandlerError::rejected(error),
            other => HandlerError::failed(other),
        }
    }
}

impl Handler for Events {
    /// The batch in lanes ([`lanes`]): each lane in stream order, the lanes side by side, so
    /// the commands of different orders share the command bus's commit groups instead of
    /// each waiting for the one before. All lanes run to the end; the first failure fails
    /// the batch, which the runtime then handles again one event at a time (every step is
    /// safe to repeat).
    async fn handle(
        &self,
        _conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), HandlerError> {
        let lanes = lanes(&self.0, events).await?;
        let outcomes = futures::future::join_all(lanes.into_iter().map(|lane| async move {
            for envelope in lane {
                let span = tracing::info_span!(
                    "saga",
                    order_id = %envelope.aggregate_id,
                    event = %envelope.event_type,
                    correlation_id = %envelope.correlation_id,
                );
                tracing::Instrument::instrument(self.0.handle(envelope), span).await?;
            }
            Ok::<(), SagaError>(())
        }))
        .await;
        for outcome in outcomes {
            outcome?;
        }
        Ok(())
    }
}

/// Splits a batch into lanes: two events share a lane when they concern the same order, the
/// same item or the same coupon, and keep their stream order in it. So stock and coupon
/// redemptions still go first come, first served, as when the saga handled one event at a
/// time; only work that cannot meet runs side by side.
async fn lanes<'a>(
    core: &Core,
    events: &'a [Envelope],
) -> Result<Vec<Vec<&'a Envelope>>, SagaError> {
    let mut keys = Vec::with_capacity(events.len());
    for envelope in events {
        keys.push(core.touches(envelope).await?);
    }
    Ok(lanes_by_keys(&keys)
        .into_iter()
        .map(|lane| lane.into_iter().map(|i| &events[i]).collect())
        .collect())
}

/// Lanes of positions `0..keys.len()`: positions that share a key, directly or through
/// others, are in one lane, in ascending order.
fn lanes_by_keys(keys: &[Vec<String>]) -> Vec<Vec<usize>> {
    let mut lanes: Vec<Vec<usize>> = Vec::new();
    let mut lane_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (index, touched) in keys.iter().enumerate() {
        let mut joined: Vec<usize> = touched
            .iter()
            .filter_map(|k| lane_of.get(k.as_str()))
            .copied()
            .collect();
        joined.sort_unstable();
        joined.dedup();
        let lane = match joined.split_first() {
            None => {
                lanes.push(Vec::new());
                lanes.len() - 1
            }
            Some((&into, others)) => {
                // The position links lanes: they become one, in order.
                for &other in others {
                    let moved = std::mem::take(&mut lanes[other]);
                    lanes[into].extend(moved);
                }
                lanes[into].sort_unstable();
                for lane in lane_of.values_mut() {
                    if others.contains(lane) {
                        *lane = into;
                    }
                }
                into
            }
        };
        lanes[lane].push(index);
        for key in touched {
            lane_of.insert(key, lane);
        }
    }
    lanes.retain(|lane| !lane.is_empty());
    lanes
}

impl Core {
    /// What handling `envelope` may touch besides its order: the items and the coupon of the
    /// order (from a placement's payload, else from the order). An event that does not decode
    /// touches only its order (handling it parks it).
    async fn touches(&self, envelope: &Envelope) -> Result<Vec<String>, SagaError> {
        let order_id = envelope.aggregate_id.as_str();
        let mut keys = vec![format!("order\u{0}{order_id}")];
        match envelope.decode::<OrderEvent>() {
            Err(_)
            | Ok(
                OrderEvent::OrderReserved {}
                | OrderEvent::OrderPaid { .. }
                | OrderEvent::PaymentRequested { .. }
                | OrderEvent::PaymentFailed { .. }
                | OrderEvent::PaymentRefunded { .. },
            ) => {}
            Ok(OrderEvent::OrderPlaced { lines, coupon, .. }) => {
                keys.extend(lines.iter().map(|l| format!("sku\u{0}{}", l.sku)));
                keys.extend(coupon.iter().map(|c| format!("coupon\u{0}{}", c.code)));
            }
            Ok(_) => {
                let order = self.order(order_id).await?;
                keys.extend(order.lines().iter().map(|l| format!("sku\u{0}{}", l.sku)));
                keys.extend(
                    order
                        .coupon()
                        .iter()
                        .map(|c| format!("coupon\u{0}{}", c.code)),
                );
            }
        }
        Ok(keys)
    }

    async fn handle(&self, envelope: &Envelope) -> Result<(), SagaError> {
        let event: OrderEvent = envelope.decode().map_err(SagaError::Decode)?;
        let order_id = envelope.aggregate_id.as_str();
        match event {
            OrderEvent::OrderPlaced { .. } => {
                self.set_deadline(order_id, envelope).await?;
                self.settle_placed(order_id, envelope).await
            }
            OrderEvent::OrderReserved {} => Ok(()),
            OrderEvent::OrderPaid { .. } => self.clear_deadline(order_id, envelope).await,
            OrderEvent::PaymentRequested { .. }
            | OrderEvent::PaymentFailed { .. }
            | OrderEvent::PaymentRefunded { .. } => Ok(()),
            OrderEvent::LatePaymentCharged { .. } => self.settle_money(order_id, envelope).await,
            OrderEvent::OrderShipped {} => self.commit_stock(order_id, envelope).await,
            OrderEvent::OrderRejected { .. } => {
                self.release_all(order_id, envelope).await?;
                self.clear_deadline(order_id, envelope).await
            }
            OrderEvent::OrderCancelled { .. } => {
                self.release_all(order_id, envelope).await?;
                self.clear_deadline(order_id, envelope).await?;
                self.settle_money(order_id, envelope).await
            }
        }
    }

    /// A cancelled or rejected order holds no money: whatever the provider took for it
    /// (recorded or not: a gateway may have died between the charge and its record) is
    /// recorded, refunded, and the refund recorded. Every step is safe to repeat.
    async fn settle_money(&self, order_id: &str, cause: &Envelope) -> Result<(), SagaError> {
        let order = self.order(order_id).await?;
        if !matches!(
            order.status(),
            OrderStatus::Cancelled | OrderStatus::Rejected
        ) {
            return Ok(());
        }
        let payments = &self.services.payments;
        let mut holding = payments
            .holding(order_id)
            .await
            .map_err(SagaError::Payment)?;
        if let Some(payment_id) = holding.payment_id.clone() {
            let late = OrderCommand::RecordLateCharge {
                payment_id,
                amount_cents: holding.charged_cents,
            };
            self.must(order_id, late, cause).await?;
        }
        if holding.charged_cents > holding.refunded_cents {
            holding = payments
                .refund(order_id)
                .await
                .map_err(SagaError::Payment)?;
        }
        let recorded = self.order(order_id).await?.refunded_cents();
        if let (Some(refund_id), true) = (holding.refund_id, holding.refunded_cents > recorded) {
            let refunded = OrderCommand::RecordRefund {
                refund_id,
                amount_cents: holding.refunded_cents - recorded,
            };
            self.must(order_id, refunded, cause).await?;
            tracing::info!(
                order_id,
                cents = holding.refunded_cents - recorded,
                "refunded"
            );
        }
        Ok(())
    }

    /// Runs an order command that must not be refused (a refusal is a race that handling
    /// the event again settles): a refusal fails the event.
    async fn must(
        &self,
        id: &str,
        command: OrderCommand,
        cause: &Envelope,
    ) -> Result<(), SagaError> {
        match self.command::<Order>(id, command, &(), cause).await? {
            Ok(()) => Ok(()),
            Err(refused) => Err(SagaError::Command {
                aggregate: Order::TYPE,
                id: id.to_owned(),
                source: Box::new(refused),
            }),
        }
    }

    /// `OrderPlaced`: redeem the coupon, reserve each line, confirm; or give everything back
    /// and reject. Safe to run again from the top at any point.
    async fn settle_placed(&self, order_id: &str, cause: &Envelope) -> Result<(), SagaError> {
        let order = self.order(order_id).await?;
        if order.status() != OrderStatus::Pending {
            // Decided already (by an earlier delivery, the customer or the deadline); the
            // events that decided it release what must be released.
            return Ok(());
        }
        if let Some(coupon) = order.coupon() {
            let redeemed = self
                .command::<Coupon>(
                    &coupon.code,
                    CouponCommand::Redeem {
                        order_id: order_id.to_owned(),
                    },
                    &(),
                    cause,
                )
                .await?;
            if let Err(refused) = redeemed {
                let reason = match refused {
                    CouponError::Exhausted => "coupon_exhausted",
                    _ => "coupon_invalid",
                };
                return self.give_up(&order, order_id, reason, cause).await;
            }
        }
        for (index, line) in order.lines().iter().enumerate() {
            if index > 0 {
                self.faults.hit("saga.between_lines")?;
            }
            let reserved = self
                .command::<InventoryItem>(
                    &line.sku,
                    InventoryCommand::Reserve {
                        reservation_id: order_id.to_owned(),
                        quantity: line.quantity,
                    },
                    &(),
                    cause,
                )
                .await?;
            if let Err(refused) = reserved {
                tracing::info!(order_id, sku = line.sku, reason = %refused, "a line cannot be reserved");
                let reason = match refused {
                    InventoryError::NotFound => "unknown_item",
                    _ => "insufficient_stock",
                };
                return self.give_up(&order, order_id, reason, cause).await;
            }
        }
        let confirmed = self
            .command::<Order>(order_id, OrderCommand::ConfirmReserved, &(), cause)
            .await?;
        if let Err(refused) = confirmed {
            // Cancelled while we reserved: its OrderCancelled releases too, but do not leave
            // stock held on the way there.
            tracing::info!(order_id, reason = %refused, "order settled elsewhere while reserving");
            self.release_lines(&order, order_id, cause).await?;
        }
        Ok(())
    }

    /// Releases everything the order may hold, then rejects it with `reason`.
    async fn give_up(
        &self,
        order: &Order,
        order_id: &str,
        reason: &str,
        cause: &Envelope,
    ) -> Result<(), SagaError> {
        self.release_lines(order, order_id, cause).await?;
        self.release_coupon(order, order_id, cause).await?;
        let rejected = self
            .command::<Order>(
                order_id,
                OrderCommand::Reject {
                    reason: reason.to_owned(),
                },
                &(),
                cause,
            )
            .await?;
        if let Err(refused) = rejected {
            tracing::info!(order_id, reason = %refused, "order settled elsewhere before rejection");
        }
        Ok(())
    }

    async fn release_all(&self, order_id: &str, cause: &Envelope) -> Result<(), SagaError> {
        let order = self.order(order_id).await?;
        self.release_lines(&order, order_id, cause).await?;
        self.release_coupon(&order, order_id, cause).await
    }

    /// Releases the order's reservation on every line (a no-op where it holds none).
    async fn release_lines(
        &self,
        order: &Order,
        order_id: &str,
        cause: &Envelope,
    ) -> Result<(), SagaError> {
        for line in order.lines() {
            let released = self
                .command::<InventoryItem>(
                    &line.sku,
                    InventoryCommand::Release {
                        reservation_id: order_id.to_owned(),
                    },
                    &(),
                    cause,
                )
                .await?;
            if let Err(refused) = released {
                tracing::error!(order_id, sku = line.sku, reason = %refused, "cannot release a line");
            }
        }
        Ok(())
    }

    async fn release_coupon(
        &self,
        order: &Order,
        order_id: &str,
        cause: &Envelope,
    ) -> Result<(), SagaError> {
        if let Some(coupon) = order.coupon() {
            let released = self
                .command::<Coupon>(
                    &coupon.code,
                    CouponCommand::Release {
                        order_id: order_id.to_owned(),
                    },
                    &(),
                    cause,
                )
                .await?;
            if let Err(refused) = released {
                tracing::error!(order_id, coupon = coupon.code, reason = %refused, "cannot release a redemption");
            }
        }
        Ok(())
    }

    /// `OrderShipped`: the reserved units leave the warehouse.
    async fn commit_stock(&self, order_id: &str, cause: &Envelope) -> Result<(), SagaError> {
        let order = self.order(order_id).await?;
        for line in order.lines() {
            let committed = self
                .command::<InventoryItem>(
                    &line.sku,
                    InventoryCommand::Commit {
                        reservation_id: order_id.to_owned(),
                    },
                    &(),
                    cause,
                )
                .await?;
            if let Err(refused) = committed {
                tracing::error!(order_id, sku = line.sku, reason = %refused, "cannot commit a shipped line");
            }
        }
        Ok(())
    }

    /// The order as Postgres has it: other processes change orders too (the customer's
    /// gateway, the scheduler's deadline), so this process's cache may be behind them.
    async fn order(&self, order_id: &str) -> Result<Order, SagaError> {
        self.bus
            .fresh_state::<Order>(order_id)
            .await
            .map(|loaded| loaded.state)
            .map_err(|e| SagaError::Command {
                aggregate: Order::TYPE,
                id: order_id.to_owned(),
                source: Box::new(e),
            })
    }

    /// Runs `command` as caused by `cause`: `Ok(Ok(()))` done, `Ok(Err(rule))` refused.
    async fn command<A>(
        &self,
        id: &str,
        command: A::Command,
        services: &A::Services,
        cause: &Envelope,
    ) -> Result<Decided<A::Error>, SagaError>
    where
        A: chronicle_commands::Executable<Error: Sync>,
    {
        self.command_in::<A>(
            id,
            command,
            services,
            caused_by(cause.correlation_id, cause.event_id),
        )
        .await
    }

    async fn command_in<A>(
        &self,
        id: &str,
        command: A::Command,
        services: &A::Services,
        ctx: CommandContext,
    ) -> Result<Decided<A::Error>, SagaError>
    where
        A: chronicle_commands::Executable<Error: Sync>,
    {
        match self.bus.execute::<A>(id, command, services, &ctx).await {
            Ok(_) => Ok(Ok(())),
            Err(CommandError::Rejected(rule)) => Ok(Err(rule)),
            Err(other) => Err(SagaError::Command {
                aggregate: A::TYPE,
                id: id.to_owned(),
                source: Box::new(other),
            }),
        }
    }

    /// `OrderPlaced`: the payment deadline becomes a one-shot job on the scheduler
    /// (`order-payment-<order id>`), due `payment_timeout` after the order was placed. Its
    /// action cancels the order if it is still unpaid. Creating it again changes nothing.
    async fn set_deadline(&self, order_id: &str, placed: &Envelope) -> Result<(), SagaError> {
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
    async fn clear_deadline(&self, order_id: &str, cause: &Envelope) -> Result<(), SagaError> {
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
    async fn adopt_old_deadlines(&self) {
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

/// The context of a command the saga issues because of event `causation_id`.
fn caused_by(correlation_id: Uuid, causation_id: Uuid) -> CommandContext {
    CommandContext {
        correlation_id,
        causation_id: Some(causation_id),
        actor: Some(ACTOR.to_owned()),
        ..CommandContext::new()
    }
}

#[cfg(test)]
mod lane_tests {
    use super::lanes_by_keys;

    fn keys(of: &[&[&str]]) -> Vec<Vec<String>> {
        of.iter()
            .map(|k| k.iter().map(|s| (*s).to_owned()).collect())
            .collect()
    }

    #[test]
    fn orders_that_share_nothing_get_a_lane_each() {
        let lanes = lanes_by_keys(&keys(&[&["o1", "a"], &["o2", "b"], &["o3", "c"]]));
        assert_eq!(lanes, vec![vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn events_of_one_order_item_or_coupon_share_a_lane_in_stream_order() {
        let lanes = lanes_by_keys(&keys(&[
            &["o1", "a"],
            &["o2", "b"],
            &["o3", "a"],
            &["o1"],
            &["o4", "coupon"],
            &["o5", "c", "coupon"],
        ]));
        assert_eq!(lanes, vec![vec![0, 2, 3], vec![1], vec![4, 5]]);
    }

    #[test]
    fn an_event_that_links_two_lanes_merges_them_in_stream_order() {
        let lanes = lanes_by_keys(&keys(&[
            &["o1", "a"],
            &["o2", "b"],
            &["o3", "a", "b"],
            &["o4", "b"],
            &["o5", "d"],
        ]));
        assert_eq!(lanes, vec![vec![0, 1, 2, 3], vec![4]]);
    }

    #[test]
    fn every_position_is_in_exactly_one_lane() {
        // A chain that links every lane at the end.
        let mut of: Vec<Vec<String>> = (0..50).map(|i| vec![format!("k{i}")]).collect();
        of.push((0..50).map(|i| format!("k{i}")).collect());
        let lanes = lanes_by_keys(&of);
        assert_eq!(lanes, vec![(0..51).collect::<Vec<_>>()]);
    }
}
