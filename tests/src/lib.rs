//! The test harness every integration test uses: real servers, nothing mocked.
//!
//! # Layout
//!
//! - [`postgres_cluster`]: ONE PostgreSQL cluster per test binary (initdb takes a second or
//!   two), in a temp dir, stopped by the kernel when the binary exits (engines' pdeathsig).
//!   The event-store schema is migrated once into a template database.
//! - [`TestDb`]: a fresh database per test, cloned from that template.
//! - [`TestNats`]: a `nats-server` per test, random port, temp store, gone on drop.
//!
//! Tests are independent and run in parallel; nothing here uses a fixed port.

use std::{sync::OnceLock, time::Duration};

use chronicle_engines::{NatsOptions, NatsServer, Postgres, PostgresOptions};
use sqlx::{postgres::PgPoolOptions, Connection, PgConnection, PgPool};

const TEMPLATE: &str = "chronicle_template";

struct Cluster {
    postgres: Postgres,
    // Kept so the directory lives as long as the cluster.
    _dir: tempfile::TempDir,
}

/// The test binary's PostgreSQL cluster, started on first use.
///
/// # Panics
/// When PostgreSQL cannot be started: install it (README's test command does).
pub fn postgres_cluster() -> &'static Postgres {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    &CLUSTER
        .get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("chronicle-pg-")
                .tempdir()
                .expect("the temp dir is writable");
            // The server runs as `postgres` when we are root: it must be able to enter.
            std::fs::set_permissions(
                dir.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .expect("chmod of our own temp dir");
            let postgres = Postgres::start(PostgresOptions {
                data_dir: dir.path().join("data"),
                port: None,
                durable: false,
            })
            .expect("PostgreSQL starts (is Debian's `postgresql` installed? run scripts/setup)");
            Cluster {
                postgres,
                _dir: dir,
            }
        })
        .postgres
}

/// Logs to the test's captured output when `RUST_LOG` is set (`RUST_LOG=chronicle_bus=debug`).
pub fn init_tracing() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

async fn ensure_template() {
    static READY: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    READY
        .get_or_init(|| async {
            let cluster = postgres_cluster();
            let mut admin = PgConnection::connect(&cluster.url("postgres"))
                .await
                .expect("connect to the test cluster");
            sqlx::query(&format!("CREATE DATABASE {TEMPLATE}"))
                .execute(&mut admin)
                .await
                .expect("create the template database");
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect(&cluster.url(TEMPLATE))
                .await
                .expect("connect to the template");
            chronicle_commands::migrate(&pool)
                .await
                .expect("migrations apply");
            pool.close().await;
        })
        .await;
}

/// A database of its own for one test, with the event-store schema in place.
#[derive(Debug, Clone)]
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// Creates the database (a copy of the migrated template).
    pub async fn new() -> Self {
        init_tracing();
        ensure_template().await;
        let cluster = postgres_cluster();
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&cluster.url("postgres"))
            .await
            .expect("connect to the test cluster");
        sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let url = cluster.url(&name);
        Self { name, url }
    }

    /// A pool on this database.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(20)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

/// A `nats-server` with JetStream for one test.
pub struct TestNats {
    pub server: NatsServer,
    _dir: tempfile::TempDir,
}

impl TestNats {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("chronicle-nats-")
            .tempdir()
            .expect("the temp dir is writable");
        let server = NatsServer::start(NatsOptions {
            store_dir: dir.path().to_path_buf(),
            port: None,
        })
        .expect("nats-server starts (is it installed? run scripts/setup)");
        Self { server, _dir: dir }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to the test nats-server")
    }
}

/// Polls `check` every 10 ms until it returns `Some`, for at most `within`.
///
/// This waits for an asynchronous outcome the test cannot be told about (a projector
/// catching up); it is not a sleep standing in for synchronisation.
///
/// # Panics
/// When `within` passes first, with `what` in the message.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
