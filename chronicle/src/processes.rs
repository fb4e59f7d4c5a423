//! The components a process runs (chronicle::components), sharing one shutdown signal, and
//! the operator commands (status, parked events, replay, roles).

use std::{future::Future, time::Duration};

use anyhow::{bail, Context};
use chronicle::components::{self, Component, Wiring};
use chronicle::contexts::{read_model, read_models};
use chronicle_bus::{
    await_events_stream, ensure_events_stream_with, Faults, RelayConfig, SubscriberRef,
};
use chronicle_commands::{contexts, CommandExecutor, Databases, EventStore, ExecutorConfig};
use chronicle_gateway::Secret;
use chronicle_projections::{ProjectorConfig, ReplayFrom};
use sqlx::postgres::PgPoolOptions;
use tokio::{sync::watch, task::JoinSet};

use crate::{engines, settings::Settings};

/// Every reader of the log this binary runs (from the component list).
pub fn subscribers() -> Vec<SubscriberRef> {
    components::subscribers()
}

/// The process the command line names by its arguments (`saga orders`).
///
/// # Errors
/// When no process runs with those arguments.
pub fn process_component(args: &[String]) -> anyhow::Result<Component> {
    Component::process(args).with_context(|| {
        format!(
            "unknown command {:?}; the processes are: {}",
            args.join(" "),
            chronicle::contexts::processes()
                .map(|p| p.args.join(" "))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// The projectors named on the command line.
///
/// # Errors
/// When none or an unknown one is named.
pub fn projector_components(name: Option<&str>, all: bool) -> anyhow::Result<Vec<Component>> {
    Ok(projection_names(name, all)?
        .iter()
        .filter_map(|name| Component::projector(name))
        .collect())
}

/// The projections named on the command line.
///
/// # Errors
/// When none or an unknown one is named.
pub fn projection_names(name: Option<&str>, all: bool) -> anyhow::Result<Vec<String>> {
    let known = || {
        read_models()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (name, all) {
        (_, true) => Ok(read_models().map(|m| m.name().to_owned()).collect()),
        (Some(name), false) if read_model(name).is_some() => Ok(vec![name.to_owned()]),
        (Some(name), false) => bail!("unknown projection {name:?}; known: {}", known()),
        (None, false) => bail!("name a projection ({}) or pass --all", known()),
    }
}

struct Connections {
    db: Databases,
    nats: async_nats::Client,
}

/// [`connect_using`] every context's store.
async fn connect(
    settings: &Settings,
    db_url: &str,
    nats_url: &str,
    pool_size: u32,
) -> anyhow::Result<Connections> {
    connect_using(settings, db_url, nats_url, pool_size, None).await
}

/// Connects to NATS and to the stores of the contexts in `uses` (every context when
/// `None`), migrating those stores: a role that uses only contexts on databases of their
/// own never connects to `DATABASE_URL`.
async fn connect_using(
    settings: &Settings,
    db_url: &str,
    nats_url: &str,
    pool_size: u32,
    uses: Option<&[&'static str]>,
) -> anyhow::Result<Connections> {
    // Opened when first used: the migrations of a context on it, or the gateway.
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(db_url)
        .context("DATABASE_URL is not a PostgreSQL URL")?;
    let stores: std::collections::BTreeMap<&'static str, sqlx::postgres::PgConnectOptions> =
        Settings::context_databases(std::env::vars())?
            .into_iter()
            .map(|(context, store)| (context, store.options))
            .collect();
    for (context, store) in &stores {
        tracing::info!(
            context,
            host = store.get_host(),
            port = store.get_port(),
            database = store.get_database(),
            "a context on a database of its own"
        );
    }
    chronicle::contexts::migrate_stores(&pool, &stores, uses)
        .await
        .context("migrating the event stores")?;
    let nats = chronicle_bus::connect(nats_url)
        .await
        .context("connecting to NATS")?;
    // The stream is provisioned before the role starts when JetStream answers, and in the
    // background, tried again until it is, when it cannot (a cluster electing a leader, a
    // server restarting): the role starts and serves meanwhile. The gateway answers
    // (`/health` says NATS is down) and commands commit to the outbox; the relay and the
    // readers of the log retry until the stream is there.
    let js = async_nats::jetstream::new(nats.clone());
    let replicas = settings.servers.stream_replicas;
    if let Err(e) = ensure_events_stream_with(&js, replicas).await {
        tracing::warn!(
            error = %chronicle_bus::ErrorChain(&e),
            "the EVENTS stream cannot be provisioned yet; starting, and trying again meanwhile"
        );
        tokio::spawn(async move {
            if let Err(e) = await_events_stream(&js, replicas, Duration::MAX).await {
                tracing::error!(error = %chronicle_bus::ErrorChain(&e), "the EVENTS stream was not provisioned");
            }
        });
    }
    // Each context's pool on its own schema: in the one database, as the same user, or on
    // the database of its own the settings name.
    let db = Databases::new(
        pool,
        &chronicle::contexts::names(),
        pool_size,
        move |context, options| stores.get(context).cloned().unwrap_or(options),
    );
    Ok(Connections { db, nats })
}

/// `chronicle up`.
///
/// # Errors
/// When a server cannot be started or a process fails.
pub async fn up(settings: Settings) -> anyhow::Result<()> {
    let (embedded, db_url, nats_url) = engines::start(&settings).await?;
    let secret = engines::jwt_secret(&settings)?;
    engines::record_running(&settings.servers.data_dir, &db_url, &nats_url)?;
    let connections = connect(&settings, &db_url, &nats_url, settings.servers.pg_pool).await?;
    let roles = components::all();
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
    let result = run_roles(&settings, Some(secret), connections, roles, casualty).await;
    engines::forget_running(&settings.servers.data_dir);
    // Stops the embedded servers (blocking waits for their exit).
    tokio::task::spawn_blocking(move || drop(embedded))
        .await
        .context("stopping the embedded servers")?;
    result
}

/// `chronicle gateway|relay|project|saga`: the named components alone.
///
/// # Errors
/// When the servers cannot be reached or the process fails.
pub async fn single(settings: Settings, roles: Vec<Component>) -> anyhow::Result<()> {
    let secret = if roles.contains(&Component::Gateway) {
        Some(settings.jwt_secret()?)
    } else {
        None
    };
    let (db_url, nats_url) = settings.urls()?;
    // The stores its roles use, or every store when one of them uses every context.
    let uses: Option<Vec<&'static str>> = roles.iter().try_fold(Vec::new(), |mut all, role| {
        all.extend(role.uses()?);
        Some(all)
    });
    let connections = connect_using(
        &settings,
        &db_url,
        &nats_url,
        settings.servers.pg_pool,
        uses.as_deref(),
    )
    .await?;
    run_roles(
        &settings,
        secret,
        connections,
        roles,
        std::future::pending(),
    )
    .await
}

/// Runs `roles` until a signal, a role's end, or `casualty` (a server this process
/// supervises died, with the reason).
async fn run_roles(
    settings: &Settings,
    secret: Option<Secret>,
    connections: Connections,
    roles: Vec<Component>,
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
    let http = match (&secret, roles.contains(&Component::Gateway)) {
        (Some(_), true) => {
            let listener = tokio::net::TcpListener::bind(settings.gateway.http_addr)
                .await
                .with_context(|| format!("binding {}", settings.gateway.http_addr))?;
            let addr = listener.local_addr().context("reading the bound address")?;
            // On stdout, so scripts and tests can read the port when they asked for 0.
            println!("chronicle: gateway listening on http://{addr}");
            Some(listener)
        }
        (None, true) => bail!("the gateway needs its token key"),
        _ => None,
    };
    let wiring = Wiring {
        commands: CommandExecutor::for_contexts(
            &connections.db,
            &faults,
            ExecutorConfig::default(),
        ),
        db: connections.db.clone(),
        nats: connections.nats.clone(),
        faults,
        relay: RelayConfig {
            linger: settings.servers.relay_linger,
            ..RelayConfig::default()
        },
        projector: ProjectorConfig::default(),
        gateway: settings.gateway(secret.unwrap_or_else(|| Secret::new(Vec::new()))),
        http: std::sync::Mutex::new(http),
    };
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    chronicle_telemetry::install();
    if let Some(addr) = settings.telemetry.metrics_addr {
        let served = chronicle_telemetry::serve(addr, shutdown());
        tasks.spawn(async move { served.await.context("serving /metrics") });
    }
    for role in roles {
        tasks.spawn(role.start(&wiring, shutdown())?);
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
    connections.db.close().await;
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

/// Where `chronicle replay` reads the events it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// The event stores when they can rebuild the read model (they hold every event), else
    /// the stream: a read model that reads events by their stream sequence or of every
    /// context, or whose stores' catch-up the stream no longer holds.
    Auto,
    /// The contexts' event stores in PostgreSQL (binary COPY out of one snapshot per store).
    #[value(alias = "store")]
    Postgres,
    /// The JetStream log, from its first message.
    #[value(alias = "jetstream")]
    Stream,
}

/// `chronicle replay`: each read model of `names` rebuilt from `from` and swapped in, with a
/// progress line on stderr and a JSON line on stdout saying what was replayed, from where
/// and how fast.
///
/// # Errors
/// When the servers cannot be reached or the replay fails.
pub async fn replay(
    settings: Settings,
    names: Vec<String>,
    batch: usize,
    from: Source,
) -> anyhow::Result<()> {
    let (db_url, nats_url) = settings.urls()?;
    let connections = connect(&settings, &db_url, &nats_url, settings.servers.pg_pool).await?;
    let several = names.len() > 1;
    for name in names {
        let model = read_model(&name).with_context(|| format!("unknown projection {name:?}"))?;
        let (db, nats) = (&connections.db, &connections.nats);
        let mut source = match from {
            Source::Auto | Source::Postgres => ReplayFrom::Store,
            Source::Stream => ReplayFrom::Log,
        };
        let replayed = loop {
            let said = source_name(source);
            let started = std::time::Instant::now();
            let mut progress = |done: u64, total: u64| {
                eprint!(
                    "\r{name} (from {said}) {}",
                    progress_bar(done, total, started.elapsed())
                );
            };
            match model.replay(source, db, nats, batch, &mut progress).await {
                // A read model only the log can rebuild is rebuilt from the log, unless the
                // store was asked for by name for this one read model.
                Err(chronicle_projections::ProjectionError::Refused(why))
                    if source == ReplayFrom::Store && (from == Source::Auto || several) =>
                {
                    eprintln!("{name}: {why}; rebuilding it from the stream instead");
                    source = ReplayFrom::Log;
                }
                other => break other,
            }
        };
        let stats = replayed.with_context(|| format!("replaying {name}"))?;
        eprintln!();
        println!(
            "{}",
            serde_json::json!({
                "projection": name,
                "source": source_name(source),
                "events": stats.events,
                "checkpoint": stats.last_sequence,
                "seconds": stats.seconds,
                "events_per_s": if stats.seconds > 0.0 { stats.events as f64 / stats.seconds } else { 0.0 },
            })
        );
    }
    Ok(())
}

/// A replay's progress line: a bar of 30 cells, the events done of all, the share and the
/// rate so far (`[#########.....................] 310000/1000000 events (31%), 251234/s`).
fn progress_bar(done: u64, total: u64, elapsed: std::time::Duration) -> String {
    const CELLS: u64 = 30;
    let total = total.max(done);
    let filled = (done * CELLS).checked_div(total).unwrap_or(CELLS) as usize;
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    format!(
        "[{}{}] {done}/{total} events ({percent}%), {rate:.0}/s",
        "#".repeat(filled),
        ".".repeat(CELLS as usize - filled)
    )
}

/// How `chronicle replay` names a source in what it prints (as `--from` takes it).
fn source_name(source: ReplayFrom) -> &'static str {
    match source {
        ReplayFrom::Store => "postgres",
        ReplayFrom::Log => "stream",
    }
}

/// `chronicle projections status`.
///
/// # Errors
/// When the servers cannot be reached.
pub async fn status(settings: Settings) -> anyhow::Result<()> {
    let (db_url, nats_url) = settings.urls()?;
    let connections = connect(&settings, &db_url, &nats_url, 2).await?;
    let js = async_nats::jetstream::new(connections.nats.clone());
    for subscriber in subscribers() {
        let status = chronicle_bus::status(
            connections.db.of(subscriber.context),
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
    let connections = connect(&settings, &db_url, &nats_url, 2).await?;
    let names = match name {
        Some(name) => vec![subscriber_named(&name)?],
        None => subscribers(),
    };
    for subscriber in names {
        for event in
            chronicle_bus::parked(connections.db.of(subscriber.context), &subscriber.name).await?
        {
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
    let connections = connect(&settings, &db_url, &nats_url, 2).await?;
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
    let connections = connect(&settings, &db_url, &nats_url, 2).await?;
    let store = EventStore::new(connections.db.of(contexts::IDENTITY).clone());
    let user_id = store
        .claim_holder("username", &username)
        .await
        .context("looking the user up")?
        .with_context(|| format!("no user is called {username:?}"))?;
    chronicle_commands::Credentials::new(connections.db.of(contexts::IDENTITY))
        .grant(&user_id, &role)
        .await
        .context("granting the role")?;
    println!("{username} is {role} from their next login");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::progress_bar;
    use std::time::Duration;

    #[test]
    fn the_progress_bar_fills_with_the_share_done() {
        let second = Duration::from_secs(1);
        assert_eq!(
            progress_bar(0, 1_000, second),
            format!("[{}] 0/1000 events (0%), 0/s", ".".repeat(30))
        );
        assert_eq!(
            progress_bar(500, 1_000, second),
            format!(
                "[{}{}] 500/1000 events (50%), 500/s",
                "#".repeat(15),
                ".".repeat(15)
            )
        );
        assert_eq!(
            progress_bar(1_000, 1_000, Duration::from_millis(250)),
            format!("[{}] 1000/1000 events (100%), 4000/s", "#".repeat(30))
        );
        // Nothing to replay, or more done than counted at the start (events came since).
        assert_eq!(
            progress_bar(0, 0, second),
            format!("[{}] 0/0 events (100%), 0/s", "#".repeat(30))
        );
        assert!(progress_bar(1_200, 1_000, second).starts_with(&format!("[{}]", "#".repeat(30))));
    }
}
