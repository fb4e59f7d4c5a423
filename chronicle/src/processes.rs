//! Gateway, relay and projectors as tasks that share one shutdown signal.

use std::{future::Future, pin::Pin, time::Duration};

use anyhow::{bail, Context};
use chronicle_bus::SubscriberRef;
use chronicle_bus::{ensure_events_stream, Faults, Relay, RelayConfig};
use chronicle_commands::{CommandBus, EventStore};
use chronicle_gateway::{AppState, Secret};
use chronicle_projections::{replay_named, run_named, ProjectorConfig, PROJECTIONS};
use chronicle_sagas::{OrderSaga, OrderSagaConfig, ORDER_SAGA};
use sqlx::{postgres::PgPoolOptions, PgPool};
use tokio::{sync::watch, task::JoinSet};

use crate::{engines, settings::Settings};

/// What a process runs.
#[derive(Debug, Clone)]
pub enum Role {
    /// The gateway, with its token key.
    Gateway(Secret),
    Relay,
    Projectors(Vec<String>),
    /// The order saga.
    OrderSaga,
}

/// Every reader of the log this binary runs: the projections and the sagas, for status
/// reports and parked-event requests.
pub fn subscribers() -> Vec<SubscriberRef> {
    let mut all = chronicle_projections::subscriber_refs();
    all.push(SubscriberRef {
        name: ORDER_SAGA.to_owned(),
        durable: ORDER_SAGA.to_owned(),
    });
    all
}

/// The saga named on the command line.
///
/// # Errors
/// When there is no saga of that name.
pub fn saga_role(name: &str) -> anyhow::Result<Role> {
    match name {
        "orders" => Ok(Role::OrderSaga),
        other => bail!("unknown saga {other:?}; known: orders"),
    }
}

/// The projections named on the command line.
///
/// # Errors
/// When none or an unknown one is named.
pub fn projection_names(name: Option<&str>, all: bool) -> anyhow::Result<Vec<String>> {
    match (name, all) {
        (_, true) => Ok(PROJECTIONS.iter().map(|s| s.to_string()).collect()),
        (Some(name), false) if PROJECTIONS.contains(&name) => Ok(vec![name.to_owned()]),
        (Some(name), false) => bail!(
            "unknown projection {name:?}; known: {}",
            PROJECTIONS.join(", ")
        ),
        (None, false) => bail!(
            "name a projection ({}) or pass --all",
            PROJECTIONS.join(", ")
        ),
    }
}

struct Connections {
    pool: PgPool,
    nats: async_nats::Client,
}

async fn connect(db_url: &str, nats_url: &str, pool_size: u32) -> anyhow::Result<Connections> {
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(Duration::from_secs(5))
        .connect(db_url)
        .await
        .context("connecting to PostgreSQL")?;
    chronicle_commands::migrate(&pool)
        .await
        .context("migrating the event store")?;
    let nats = chronicle_bus::connect(nats_url)
        .await
        .context("connecting to NATS")?;
    ensure_events_stream(&async_nats::jetstream::new(nats.clone()))
        .await
        .context("provisioning the EVENTS stream")?;
    Ok(Connections { pool, nats })
}

/// `chronicle up`.
///
/// # Errors
/// When a server cannot be started or a process fails.
pub async fn up(settings: Settings) -> anyhow::Result<()> {
    let (embedded, db_url, nats_url) = engines::start(&settings).await?;
    let secret = engines::jwt_secret(&settings)?;
    engines::record_running(&settings.data_dir, &db_url, &nats_url)?;
    let connections = connect(&db_url, &nats_url, settings.pg_pool).await?;
    let roles = vec![
        Role::Relay,
        Role::Projectors(PROJECTIONS.iter().map(|s| s.to_string()).collect()),
        Role::OrderSaga,
        Role::Gateway(secret),
    ];
    // Supervision: if an embedded server dies, everything stops with its cause rather
    // than serving on a dead engine.
    let embedded = std::sync::Arc::new(std::sync::Mutex::new(embedded));
    let watched = embedded.clone();
    let casualty = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let dead = watched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .casualty();
            if let Some(dead) = dead {
                return dead;
            }
        }
    };
    let result = run_roles(&settings, connections, roles, casualty).await;
    engines::forget_running(&settings.data_dir);
    // Stops the embedded servers (blocking waits for their exit).
    tokio::task::spawn_blocking(move || drop(embedded))
        .await
        .context("stopping the embedded servers")?;
    result
}

/// `chronicle gateway|relay|project`.
///
/// # Errors
/// When the servers cannot be reached or the process fails.
pub async fn single(settings: Settings, role: Role) -> anyhow::Result<()> {
    let (db_url, nats_url) = settings.urls()?;
    let connections = connect(&db_url, &nats_url, settings.pg_pool).await?;
    run_roles(&settings, connections, vec![role], std::future::pending()).await
}

type Task = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

fn projector_task(
    name: &str,
    connections: &Connections,
    faults: Faults,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Task> {
    let Some(run) = run_named(
        name,
        connections.pool.clone(),
        connections.nats.clone(),
        ProjectorConfig::default(),
        faults,
        shutdown,
    ) else {
        bail!("unknown projection {name:?}");
    };
    let name = name.to_owned();
    Ok(Box::pin(async move {
        run.await.with_context(|| format!("{name} projector"))
    }))
}

/// Runs `roles` until a signal, a role's end, or `casualty` (a server this process
/// supervises died, with the reason).
async fn run_roles(
    settings: &Settings,
    connections: Connections,
    roles: Vec<Role>,
    casualty: impl Future<Output = String>,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let shutdown = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let faults = Faults::from_env();
    // One bus per process: gateway and saga share its aggregate cache and its group commit.
    let commands =
        CommandBus::new(EventStore::new(connections.pool.clone()).with_faults(faults.clone()));
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    for role in roles {
        match role {
            Role::Relay => {
                let relay = Relay::new(
                    connections.pool.clone(),
                    connections.nats.clone(),
                    RelayConfig::default(),
                )
                .with_faults(faults.clone());
                let stop = shutdown();
                tasks.spawn(async move { relay.run(stop).await.context("relay") });
            }
            Role::Projectors(names) => {
                for name in names {
                    tasks.spawn(projector_task(
                        &name,
                        &connections,
                        faults.clone(),
                        shutdown(),
                    )?);
                }
            }
            Role::OrderSaga => {
                let saga = OrderSaga::new(
                    commands.clone(),
                    connections.pool.clone(),
                    connections.nats.clone(),
                    OrderSagaConfig {
                        ack_wait: settings.saga_ack_wait,
                        ..OrderSagaConfig::with_payment_timeout(settings.order_payment_timeout)
                    },
                )
                .with_faults(faults.clone());
                let stop = shutdown();
                tasks.spawn(async move { saga.run(stop).await.context("order saga") });
            }
            Role::Gateway(secret) => {
                let listener = tokio::net::TcpListener::bind(settings.http_addr)
                    .await
                    .with_context(|| format!("binding {}", settings.http_addr))?;
                let addr = listener.local_addr().context("reading the bound address")?;
                let state = AppState::new(
                    commands.clone(),
                    connections.pool.clone(),
                    connections.nats.clone(),
                    settings.gateway(secret),
                );
                // On stdout, so scripts and tests can read the port when they asked for 0.
                println!("chronicle: gateway listening on http://{addr}");
                let stop = shutdown();
                tasks.spawn(async move {
                    chronicle_gateway::serve(listener, state, stop)
                        .await
                        .context("gateway")
                });
            }
        }
    }
    tracing::info!("chronicle is running; Ctrl-C stops it");
    let first_exit = tokio::select! {
        () = signal() => None,
        Some(done) = tasks.join_next() => Some(done),
        dead = casualty => Some(Ok(Err(anyhow::anyhow!(dead)))),
    };
    let _ = stop_tx.send(true);
    let mut failure = match first_exit {
        Some(Ok(Ok(()))) => None,
        Some(Ok(Err(e))) => Some(e),
        Some(Err(join)) => Some(anyhow::anyhow!(join).context("a process panicked")),
        None => None,
    };
    let drain = async {
        while let Some(done) = tasks.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::error!(error = format!("{e:#}"), "process ended with an error");
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(settings.shutdown_seconds), drain)
        .await
        .is_err()
    {
        tracing::warn!("shutdown timed out; stopping the rest");
        tasks.abort_all();
    }
    connections.pool.close().await;
    tracing::info!("chronicle stopped");
    match failure.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// `chronicle replay`.
///
/// # Errors
/// When the servers cannot be reached or the replay fails.
pub async fn replay(settings: Settings, names: Vec<String>, batch: usize) -> anyhow::Result<()> {
    let (db_url, nats_url) = settings.urls()?;
    let connections = connect(&db_url, &nats_url, settings.pg_pool).await?;
    for name in names {
        let progress = |done: u64, total: u64| {
            let percent = (done * 100).checked_div(total).unwrap_or(100);
            eprint!("\r{name}: {done}/{total} events ({percent}%)");
        };
        let stats = replay_named(&name, &connections.pool, &connections.nats, batch, progress)
            .await
            .with_context(|| format!("unknown projection {name:?}"))?
            .with_context(|| format!("replaying {name}"))?;
        eprintln!();
        println!(
            "{}",
            serde_json::json!({
                "projection": name,
                "events": stats.events,
                "checkpoint": stats.last_sequence,
                "seconds": stats.seconds,
                "events_per_s": if stats.seconds > 0.0 { stats.events as f64 / stats.seconds } else { 0.0 },
            })
        );
    }
    Ok(())
}

/// `chronicle projections status`.
///
/// # Errors
/// When the servers cannot be reached.
pub async fn status(settings: Settings) -> anyhow::Result<()> {
    let (db_url, nats_url) = settings.urls()?;
    let connections = connect(&db_url, &nats_url, 2).await?;
    let js = async_nats::jetstream::new(connections.nats.clone());
    for subscriber in subscribers() {
        let status = chronicle_bus::status(
            &connections.pool,
            &js,
            &subscriber.name,
            &subscriber.durable,
        )
        .await?;
        println!("{}", serde_json::to_string(&status)?);
    }
    Ok(())
}

/// The subscriber named on the command line (a projection, or a saga as `saga-orders`).
fn subscriber_named(name: &str) -> anyhow::Result<SubscriberRef> {
    let all = subscribers();
    let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    let known = names.join(", ");
    all.iter()
        .find(|s| s.name == name)
        .cloned()
        .with_context(|| format!("unknown projection or saga {name:?}; known: {known}"))
}

/// `chronicle projections parked [name]`: one JSON line per parked event.
///
/// # Errors
/// When the servers cannot be reached or the name is unknown.
pub async fn parked(settings: Settings, name: Option<String>) -> anyhow::Result<()> {
    let (db_url, nats_url) = settings.urls()?;
    let connections = connect(&db_url, &nats_url, 2).await?;
    let names = match name {
        Some(name) => vec![subscriber_named(&name)?],
        None => subscribers(),
    };
    for subscriber in names {
        for event in chronicle_bus::parked(&connections.pool, &subscriber.name).await? {
            let mut line = serde_json::to_value(&event)?;
            line["subscriber"] = subscriber.name.clone().into();
            println!("{line}");
        }
    }
    Ok(())
}

/// `chronicle projections retry <name> [--seq N]`: the running subscriber re-applies its
/// parked events.
///
/// # Errors
/// When the servers cannot be reached, the name is unknown or nothing runs it.
pub async fn retry(settings: Settings, name: String, seq: Option<u64>) -> anyhow::Result<()> {
    let subscriber = subscriber_named(&name)?;
    let (db_url, nats_url) = settings.urls()?;
    let connections = connect(&db_url, &nats_url, 2).await?;
    let outcome = chronicle_bus::request_retry(&connections.nats, &subscriber.name, seq)
        .await
        .with_context(|| format!("retrying the parked events of {name}"))?;
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(())
}

/// `chronicle users grant <username> <role>`.
///
/// # Errors
/// When Postgres cannot be reached, the role is unknown or no such user exists.
pub async fn grant(settings: Settings, username: String, role: String) -> anyhow::Result<()> {
    anyhow::ensure!(
        role == "staff",
        "unknown role {role:?}; the role to grant is staff"
    );
    let (db_url, nats_url) = settings.urls()?;
    let connections = connect(&db_url, &nats_url, 2).await?;
    let user_id: Option<String> = sqlx::query_scalar(
        "SELECT aggregate_id FROM unique_claims WHERE namespace = 'username' AND value = $1",
    )
    .bind(&username)
    .fetch_optional(&connections.pool)
    .await
    .context("looking the user up")?;
    let user_id = user_id.with_context(|| format!("no user is called {username:?}"))?;
    sqlx::query("INSERT INTO user_roles (user_id, role) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(&user_id)
        .bind(&role)
        .execute(&connections.pool)
        .await
        .context("granting the role")?;
    println!("{username} is {role} from their next login");
    Ok(())
}
