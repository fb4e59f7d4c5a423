//! The order saga: what follows an order's events in the other aggregates (stock reserved,
//! committed or released, the coupon redeemed or released, the payment charged or
//! refunded), as commands that are safe to issue again, so a redelivered event changes nothing.
//! Events of unrelated orders are handled side by side (`lanes`); the payment deadline is
//! a job on the scheduler (`deadline`).

use std::{future::Future, sync::Arc, time::Duration};

use chronicle_bus::{
    Faults, Handler, HandlerError, InjectedFault, Subscriber, SubscriberConfig, SubscriberError,
};
use chronicle_commands::{CommandContext, CommandError, CommandExecutor};
use chronicle_commerce::{
    Coupon, CouponCommand, CouponError, InventoryCommand, InventoryError, InventoryItem, Order,
    OrderCommand, OrderEvent, OrderServices, OrderStatus,
};
use chronicle_schemas::{AggregateKind, Envelope};
use cqrs_es::Aggregate;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

mod deadline;
mod lanes;

pub use deadline::deadline_job;
use lanes::lanes;

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
                    // Withdrawn between the order's placement and its reservation.
                    InventoryError::Discontinued(_) => "item_discontinued",
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
