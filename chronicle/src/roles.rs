//! The processes of the contexts whose code is still in the shared crates: commerce's order
//! saga and cart sweeper, the files janitor, the scheduler. Each is a [`Process`] in its context's entry of
//! the list ([`crate::contexts`]), started on what every process is handed ([`Host`]).

use anyhow::Context as _;
use chronicle_commands::contexts;
use chronicle_host::{Host, Process, Reader, Shutdown, Task};
use chronicle_sagas::{
    CartSweeper, CartSweeperConfig, FilesJanitor, FilesJanitorConfig, NotifyConfig, OrderSaga,
    OrderSagaConfig, Scheduler, SchedulerConfig, ORDER_SAGA as ORDER_SAGA_DURABLE,
};

use crate::payments::{PaymentRules, SimulatedPayments};

/// The order saga (commerce): one, a second would only take turns with the first.
pub const ORDER_SAGA: Process = Process {
    name: "saga-orders",
    args: &["saga", "orders"],
    about: "The order saga (process manager): reserves, confirms or rejects, releases, \
            commits, cancels unpaid orders at their deadline, refunds",
    replicas: 1,
    reader: Some(Reader {
        durable: ORDER_SAGA_DURABLE,
        context: contexts::COMMERCE,
    }),
    // Orders, stock and coupons, and the payment deadline's job.
    uses: Some(&[contexts::COMMERCE, contexts::SCHEDULER]),
    start: start_order_saga,
};

/// The cart sweeper (commerce): counts carts left untouched with lines abandoned.
pub const CART_SWEEPER: Process = Process {
    name: "cart-sweeper",
    args: &["cart-sweeper"],
    about: "The cart sweeper: counts a cart abandoned once it held lines untouched for \
            CHRONICLE_CART_ABANDONED_AFTER",
    replicas: 1,
    reader: None,
    uses: Some(&[contexts::COMMERCE]),
    start: start_cart_sweeper,
};

/// The files janitor: removes bytes no file refers to and abandoned uploads' chunks.
pub const JANITOR: Process = Process {
    name: "janitor",
    args: &["janitor"],
    about: "The files janitor: removes bytes no file refers to and abandoned uploads' chunks",
    replicas: 1,
    reader: None,
    uses: Some(&[contexts::FILES]),
    start: start_janitor,
};

/// A scheduler process: three by default, they share the jobs.
pub const SCHEDULER: Process = Process {
    name: "scheduler",
    args: &["scheduler"],
    about: "A scheduler process: runs jobs at their due times (run several: they share the work)",
    replicas: 3,
    reader: None,
    // A job's command may be any context's.
    uses: None,
    start: start_scheduler,
};

fn start_order_saga(host: &Host, shutdown: Shutdown) -> anyhow::Result<Task> {
    let commerce = host.db.of(contexts::COMMERCE);
    let saga = OrderSaga::new(
        host.commands.clone(),
        commerce.clone(),
        host.nats.clone(),
        host.settings.get::<OrderSagaConfig>().clone(),
    )
    // Refunds go through the simulated provider the gateways charge.
    .with_payments(SimulatedPayments::services(
        commerce.clone(),
        host.settings.get::<PaymentRules>().clone(),
    ))
    .with_faults(host.faults.clone());
    Ok(Box::pin(async move {
        saga.run(shutdown).await.context("the order saga")
    }))
}

fn start_cart_sweeper(host: &Host, shutdown: Shutdown) -> anyhow::Result<Task> {
    let sweeper = CartSweeper::new(
        host.db.of(contexts::COMMERCE).clone(),
        host.commands.clone(),
        host.settings.get::<CartSweeperConfig>().clone(),
    );
    Ok(Box::pin(async move {
        sweeper.run(shutdown).await.context("the cart sweeper")
    }))
}

fn start_janitor(host: &Host, shutdown: Shutdown) -> anyhow::Result<Task> {
    let janitor = FilesJanitor::new(
        host.db.of(contexts::FILES).clone(),
        host.nats.clone(),
        host.commands.clone(),
        host.settings.get::<FilesJanitorConfig>().clone(),
    );
    Ok(Box::pin(async move {
        janitor.run(shutdown).await.context("the files janitor")
    }))
}

fn start_scheduler(host: &Host, shutdown: Shutdown) -> anyhow::Result<Task> {
    let scheduler = Scheduler::new(
        host.commands.clone(),
        host.db.of(contexts::SCHEDULER).clone(),
        host.nats.clone(),
        SchedulerConfig {
            // Alert notifications go where the notifier's settings allow.
            notify: host.settings.get::<NotifyConfig>().clone(),
            ..host.settings.get::<SchedulerConfig>().clone()
        },
    );
    Ok(Box::pin(scheduler.run(shutdown)))
}
