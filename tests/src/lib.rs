//! The test harness every integration test uses: real servers, nothing mocked.
//!
//! # Layout
//!
//! - [`postgres_cluster`]: ONE PostgreSQL cluster per test binary (initdb takes a second or
//!   two), in a temp dir, stopped by the kernel when the binary exits (engines' pdeathsig).
//!   The event-store schema is migrated once into a template database.
//! - [`TestDb`]: a fresh database per test, cloned from that template.
//! - [`TestNats`]: a `nats-server` per test, random port, temp store, gone on drop.
//! - [`TestApp`]: the whole system in-process (gateway on port 0, relay, projectors) on a
//!   [`TestDb`] and a [`TestNats`], for black-box HTTP tests.
//! - [`Hook`]: a local HTTP endpoint that records what jobs send it (scheduler tests).
//!
//! Tests are independent and run in parallel; nothing here uses a fixed port.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use chronicle::components::{self, Component, Wiring};

mod hook;
mod smtp;
pub use hook::{Answer, Hook};
pub use smtp::SmtpServer;

use chronicle_engines::{NatsOptions, NatsServer, Postgres, PostgresOptions};
use sqlx::{postgres::PgPoolOptions, Connection, PgConnection, PgPool};

const TEMPLATE: &str = "chronicle_template";
const CLUSTER_PREFIX: &str = "chronicle-pg-";
const OWNER_FILE: &str = "owner.pid";

/// Removes cluster dirs left by test binaries that have exited.
///
/// The cluster lives in a `static`, which Rust never drops, so its temp dir outlives the
/// binary (the server itself is stopped by the kernel: engines' pdeathsig). Each binary
/// records its pid; a dir whose pid is gone is garbage.
fn sweep_dead_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(CLUSTER_PREFIX) {
            continue;
        }
        let owner = std::fs::read_to_string(entry.path().join(OWNER_FILE)).ok();
        let alive = match owner.and_then(|pid| pid.trim().parse::<u32>().ok()) {
            Some(pid) => std::path::Path::new(&format!("/proc/{pid}")).exists(),
            // No owner yet: another binary may be between creating it and writing the pid.
            None => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < Duration::from_secs(60)),
        };
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

struct Cluster {
    postgres: Postgres,
    // Kept so the directory lives as long as the cluster.
    _dir: tempfile::TempDir,
}

/// A new directory for a cluster, owned by this binary (see [`sweep_dead_clusters`]), which
/// the `postgres` user can enter; the dead binaries' ones are removed first.
fn cluster_dir() -> tempfile::TempDir {
    sweep_dead_clusters();
    let dir = tempfile::Builder::new()
        .prefix(CLUSTER_PREFIX)
        .tempdir()
        .expect("the temp dir is writable");
    std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
        .expect("write the owner file");
    // The server runs as `postgres` when we are root: it must be able to enter.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod of our own temp dir");
    dir
}

/// The test binary's PostgreSQL cluster, started on first use.
///
/// # Panics
/// When PostgreSQL cannot be started: install it (README's test command does).
pub fn postgres_cluster() -> &'static Postgres {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    &CLUSTER
        .get_or_init(|| {
            let dir = cluster_dir();
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

/// A PostgreSQL cluster of one test's own, for a test that kills and restarts it (the
/// shared cluster serves every other test of the binary), with one migrated database.
pub struct TestPostgres {
    pub postgres: Postgres,
    /// The migrated database's URL.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl TestPostgres {
    /// Starts the cluster and creates and migrates the database `chronicle`.
    ///
    /// # Panics
    /// When PostgreSQL cannot be started: install it (README's test command does).
    pub async fn start() -> Self {
        let dir = cluster_dir();
        let data_dir = dir.path().join("data");
        let postgres = tokio::task::spawn_blocking(move || {
            Postgres::start(PostgresOptions {
                data_dir,
                port: None,
                durable: false,
            })
        })
        .await
        .expect("the start task ends")
        .expect("PostgreSQL starts (is Debian's `postgresql` installed? run scripts/setup)");
        let mut admin = PgConnection::connect(&postgres.url("postgres"))
            .await
            .expect("connect to the cluster");
        sqlx::query("CREATE DATABASE chronicle")
            .execute(&mut admin)
            .await
            .expect("create the database");
        let url = postgres.url("chronicle");
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("connect to the database");
        chronicle_commands::migrate(&pool)
            .await
            .expect("migrations apply");
        pool.close().await;
        Self {
            postgres,
            url,
            _dir: dir,
        }
    }
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
            sqlx::raw_sql(&context_roles_sql())
                .execute(&pool)
                .await
                .expect("the contexts' roles");
            pool.close().await;
        })
        .await;
}

/// The role a context's pool logs in as in tests: granted its own schema (it owns it and
/// every table in it), nothing else. So a query of another context's table fails the test
/// that makes it.
pub fn context_role(context: &str) -> String {
    format!("chronicle_{context}")
}

/// `SELECT {columns} FROM {context}.{table}` of every context's schema, as one query: one
/// store table across the contexts, read as an operator would (the superuser's pool).
pub fn every_context(columns: &str, table: &str) -> String {
    chronicle_commands::contexts::ALL
        .iter()
        .map(|context| format!("SELECT {columns} FROM {context}.{table}"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Creates each context's role (once per cluster) and hands it its schema in the template.
fn context_roles_sql() -> String {
    let mut sql = String::new();
    for context in chronicle_commands::contexts::ALL {
        let role = context_role(context);
        sql.push_str(&format!(
            "DO $$ BEGIN CREATE ROLE {role} LOGIN; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             ALTER SCHEMA {context} OWNER TO {role};
             DO $$ DECLARE t text; BEGIN
               FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = '{context}' LOOP
                 EXECUTE format('ALTER TABLE {context}.%I OWNER TO {role}', t);
               END LOOP; END $$;\n"
        ));
    }
    sql
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
        Self::create(&format!("TEMPLATE {TEMPLATE}")).await
    }

    /// An empty database of its own (no migration run), for a test of the migrations.
    pub async fn empty() -> Self {
        Self::create("").await
    }

    /// `CREATE DATABASE <a new name> <options>`, with the contexts' roles allowed to make
    /// schemas in it (a rebuild makes its shadow schema beside the live one; a database's
    /// privileges are not copied from its template).
    async fn create(options: &str) -> Self {
        init_tracing();
        // The template's set-up also makes the contexts' roles.
        ensure_template().await;
        let cluster = postgres_cluster();
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&cluster.url("postgres"))
            .await
            .expect("connect to the test cluster");
        sqlx::query(&format!("CREATE DATABASE {name} {options}"))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let roles: Vec<String> = chronicle_commands::contexts::ALL
            .iter()
            .map(|c| context_role(c))
            .collect();
        sqlx::query(&format!(
            "GRANT CREATE ON DATABASE {name} TO {}",
            roles.join(", ")
        ))
        .execute(&mut admin)
        .await
        .expect("grant the contexts their shadow schemas");
        let url = cluster.url(&name);
        Self { name, url }
    }

    /// Every context's pool on this database, each logged in as [`context_role`], beside
    /// `shared` (the event store's).
    pub fn databases(&self, shared: PgPool) -> chronicle_commands::Databases {
        chronicle_commands::Databases::new(shared, 10, |context, options| {
            options.username(&context_role(context))
        })
    }

    /// The pool of `context` alone, logged in as its role: for a test of one context's
    /// store or reader on its own.
    pub async fn context_pool(&self, context: &str) -> PgPool {
        self.databases(self.pool().await).of(context).clone()
    }

    /// A command executor of its own on this database, storing each aggregate in its
    /// context's schema as a process of the system does.
    pub async fn executor(&self) -> chronicle_commands::CommandExecutor {
        chronicle_commands::CommandExecutor::for_contexts(
            &self.databases(self.pool().await),
            &chronicle_bus::Faults::default(),
            Default::default(),
        )
    }

    /// A pool on this database, as the superuser (tests read every schema through it).
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
            cluster: None,
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

/// The whole system for one test: gateway on port 0, relay, every projector and the order
/// saga, its own database and nats-server. Everything stops when it is dropped.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub http: reqwest::Client,
    pub db: TestDb,
    pub pool: PgPool,
    pub nats: TestNats,
    /// The default user, registered at spawn, and their bearer token.
    pub user_id: String,
    pub token: String,
    /// The saga's fault points (`saga.between_lines`, `saga.before_commit`, `saga.after_commit`).
    pub saga_faults: chronicle_bus::Faults,
    saga: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    saga_wiring: Arc<Wiring>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How a [`TestApp`] differs from the defaults.
pub struct TestOptions {
    pub gateway: Box<dyn FnOnce(&mut chronicle_gateway::GatewayConfig) + Send>,
    pub saga: chronicle_sagas::OrderSagaConfig,
    /// Runs the saga on a command bus of its own (its own cache and group commit), as a
    /// saga in another process would, instead of the gateway's.
    pub saga_in_its_own_process: bool,
    /// The files janitor's timings (by default it sweeps every 200 ms, with 2 s of grace).
    pub janitor: chronicle_sagas::FilesJanitorConfig,
    /// The scheduler's settings; its HTTP allow list (by default `127.0.0.1`, where tests
    /// serve) is the gateway's too.
    pub scheduler: chronicle_sagas::SchedulerConfig,
    /// The alert engine's timings (by default it evaluates every 200 ms, and installs no
    /// default rules).
    pub alerts: chronicle_sagas::AlertEngineConfig,
    /// How the simulated payment provider answers (by default it charges at once).
    pub payments: chronicle::PaymentRules,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            gateway: Box::new(|_| {}),
            saga: chronicle_sagas::OrderSagaConfig {
                // A crashed saga's event comes back after this.
                ack_wait: Duration::from_secs(2),
                ..chronicle_sagas::OrderSagaConfig::default()
            },
            saga_in_its_own_process: false,
            janitor: chronicle_sagas::FilesJanitorConfig {
                grace: Duration::from_secs(2),
                every: Duration::from_millis(200),
                catch_up: Duration::from_secs(5),
                ..chronicle_sagas::FilesJanitorConfig::default()
            },
            scheduler: chronicle_sagas::SchedulerConfig {
                http_allow: chronicle_scheduler::AllowList::parse("127.0.0.1")
                    .expect("a valid allow list"),
                poll: Duration::from_millis(100),
                notify: chronicle_sagas::NotifyConfig {
                    allow: chronicle_scheduler::AllowList::parse("127.0.0.1")
                        .expect("a valid allow list"),
                    ..chronicle_sagas::NotifyConfig::default()
                },
                ..chronicle_sagas::SchedulerConfig::default()
            },
            alerts: chronicle_sagas::AlertEngineConfig {
                every: Duration::from_millis(200),
                // Tests count events; the tests of the default rules turn them on.
                default_rules: false,
                ..chronicle_sagas::AlertEngineConfig::default()
            },
            payments: chronicle::PaymentRules::default(),
        }
    }
}

impl TestApp {
    /// The system with the default gateway configuration (rate limiting off) and a logged-in
    /// user whose token [`get`](Self::get), [`post`](Self::post) and
    /// [`request`](Self::request) send.
    pub async fn spawn() -> Self {
        Self::spawn_options(TestOptions::default()).await
    }

    /// As [`spawn`](Self::spawn), with only the users named `staff` made staff at login
    /// (everyone else is a customer).
    pub async fn spawn_with_staff(staff: &[&str]) -> Self {
        let staff: Vec<String> = staff.iter().map(|s| (*s).to_owned()).collect();
        Self::spawn_with(move |config| {
            config
                .contexts
                .get_mut::<chronicle_gateway::IdentityConfig>()
                .staff_users = staff;
        })
        .await
    }

    /// As [`spawn`](Self::spawn), after `configure` has adjusted the gateway's settings.
    pub async fn spawn_with(
        configure: impl FnOnce(&mut chronicle_gateway::GatewayConfig) + Send + 'static,
    ) -> Self {
        Self::spawn_options(TestOptions {
            gateway: Box::new(configure),
            ..TestOptions::default()
        })
        .await
    }

    /// As [`spawn`](Self::spawn), with `options`.
    pub async fn spawn_options(options: TestOptions) -> Self {
        let (db, nats) = (TestDb::new().await, TestNats::start());
        let pool = db.pool().await;
        let databases = db.databases(pool.clone());
        let client = chronicle_bus::connect(&nats.url())
            .await
            .expect("connect to NATS");
        chronicle_bus::ensure_events_stream(&async_nats::jetstream::new(client.clone()))
            .await
            .expect("the EVENTS stream");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let shutdown = move || {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut gateway = chronicle_gateway::GatewayConfig::new(chronicle_gateway::Secret::new(
            format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            )
            .into_bytes(),
        ));
        // Everyone is staff unless a test says otherwise (API.md: `*` is for tests).
        gateway
            .contexts
            .get_mut::<chronicle_gateway::IdentityConfig>()
            .staff_users = vec!["*".to_owned()];
        gateway
            .contexts
            .get_mut::<chronicle_gateway::JobsConfig>()
            .http_allow = options.scheduler.http_allow.clone();
        gateway
            .contexts
            .get_mut::<chronicle_gateway::MonitoringConfig>()
            .notify_allow = options.scheduler.notify.allow.clone();
        (options.gateway)(&mut gateway);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let base = format!("http://{}", listener.local_addr().expect("bound address"));
        let saga_faults = chronicle_bus::Faults::default();
        // The same wiring `chronicle up` builds, with test timings; its fault points are the
        // ones tests arm (on the saga).
        let wiring = Arc::new(Wiring {
            commands: chronicle_commands::CommandExecutor::for_contexts(
                &databases,
                &chronicle_bus::Faults::default(),
                Default::default(),
            ),
            db: databases.clone(),
            nats: client,
            faults: saga_faults.clone(),
            relay: chronicle_bus::RelayConfig {
                poll_interval: Duration::from_millis(50),
                ..Default::default()
            },
            projector: chronicle_projections::ProjectorConfig::default(),
            saga: options.saga,
            janitor: options.janitor,
            scheduler: options.scheduler,
            alerts: options.alerts,
            payments: options.payments,
            gateway,
            http: std::sync::Mutex::new(Some(listener)),
        });
        let saga_wiring = if options.saga_in_its_own_process {
            Arc::new(Wiring {
                commands: chronicle_commands::CommandExecutor::for_contexts(
                    &databases,
                    &chronicle_bus::Faults::default(),
                    Default::default(),
                ),
                db: wiring.db.clone(),
                nats: wiring.nats.clone(),
                faults: wiring.faults.clone(),
                relay: wiring.relay.clone(),
                projector: wiring.projector.clone(),
                saga: wiring.saga.clone(),
                janitor: wiring.janitor.clone(),
                scheduler: wiring.scheduler.clone(),
                alerts: wiring.alerts.clone(),
                payments: wiring.payments.clone(),
                gateway: wiring.gateway.clone(),
                http: std::sync::Mutex::new(None),
            })
        } else {
            wiring.clone()
        };
        let mut tasks = Vec::new();
        for component in components::all() {
            if let Component::Projector(name) = component {
                // Tables first, so a test can query a read model before it has an event.
                chronicle_projections::read_model(name)
                    .expect("a known projection")
                    .setup(&databases)
                    .await
                    .expect("projection tables");
            }
            // The saga runs apart: tests stop it at fault points and start it again.
            if matches!(component, Component::Saga(_)) {
                continue;
            }
            let task = component
                .start(&wiring, shutdown())
                .expect("every component starts");
            tasks.push(tokio::spawn(async move {
                let _ = task.await;
            }));
        }
        let mut app = Self {
            base,
            http: reqwest::Client::new(),
            db,
            pool,
            nats,
            token: String::new(),
            user_id: String::new(),
            saga_faults,
            saga: None,
            saga_wiring,
            stop,
            tasks,
        };
        app.start_saga();
        let (user_id, token) = app.register_and_login("tester").await;
        app.user_id = user_id;
        app.token = token;
        app
    }

    /// The contexts' pools the app's components use (each logged in as its context's role).
    pub fn databases(&self) -> &chronicle_commands::Databases {
        &self.saga_wiring.db
    }

    /// The wiring of another process on the same servers: its own command bus (cache and
    /// group commit) and fault points, the app's settings, and `http` for a gateway.
    fn another_process(&self, http: Option<tokio::net::TcpListener>) -> Wiring {
        let wiring = &self.saga_wiring;
        Wiring {
            commands: chronicle_commands::CommandExecutor::for_contexts(
                &wiring.db,
                &chronicle_bus::Faults::default(),
                Default::default(),
            ),
            db: wiring.db.clone(),
            nats: wiring.nats.clone(),
            faults: chronicle_bus::Faults::default(),
            relay: wiring.relay.clone(),
            projector: wiring.projector.clone(),
            saga: wiring.saga.clone(),
            janitor: wiring.janitor.clone(),
            scheduler: wiring.scheduler.clone(),
            alerts: wiring.alerts.clone(),
            payments: wiring.payments.clone(),
            gateway: wiring.gateway.clone(),
            http: std::sync::Mutex::new(http),
        }
    }

    /// Starts another instance of `component` (not the gateway: see
    /// [`spawn_second_gateway`](Self::spawn_second_gateway)) on the same servers, with a
    /// command bus of its own, as another process would run it. It stops with the app.
    pub fn start_another(&mut self, component: Component) {
        let other = self.another_process(None);
        let mut stopped = self.stop.subscribe();
        let task = component
            .start(&other, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .expect("the component starts");
        self.tasks.push(tokio::spawn(async move {
            let _ = task.await;
        }));
    }

    /// Starts a second gateway on the same servers, as another instance (another process:
    /// its own command bus, its own hub) would run: its base URL. It stops with the app.
    pub async fn spawn_second_gateway(&mut self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let base = format!("http://{}", listener.local_addr().expect("bound address"));
        let second = self.another_process(Some(listener));
        let mut stopped = self.stop.subscribe();
        let task = Component::Gateway
            .start(&second, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .expect("a second gateway starts");
        self.tasks.push(tokio::spawn(async move {
            let _ = task.await;
        }));
        base
    }

    /// Starts the order saga (again, after [`saga_stopped`](Self::saga_stopped)): a new
    /// instance on the same durable consumer, as a restarted process would be.
    pub fn start_saga(&mut self) {
        let mut stopped = self.stop.subscribe();
        let saga = Component::Saga("orders")
            .start(&self.saga_wiring, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .expect("the order saga starts");
        self.saga = Some(tokio::spawn(saga));
    }

    /// Waits for the running saga to stop (at an armed fault point) and returns how it ended.
    ///
    /// # Panics
    /// When no saga runs or it panicked.
    pub async fn saga_stopped(&mut self) -> anyhow::Result<()> {
        self.saga
            .take()
            .expect("a saga is running")
            .await
            .expect("the saga does not panic")
    }

    /// `POST /api/v1/auth/register` for `username` with `password`.
    pub async fn register(&self, username: &str, password: &str) -> reqwest::Response {
        self.http
            .post(self.url("/api/v1/auth/register"))
            .json(&serde_json::json!({"username": username, "password": password, "display_name": username}))
            .send()
            .await
            .expect("the gateway answers")
    }

    /// `POST /api/v1/auth/login` for `username` with `password`.
    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.http
            .post(self.url("/api/v1/auth/login"))
            .json(&serde_json::json!({"username": username, "password": password}))
            .send()
            .await
            .expect("the gateway answers")
    }

    /// Registers `username` (password `correct horse`) and logs in: `(user_id, token)`.
    pub async fn register_and_login(&self, username: &str) -> (String, String) {
        let registered = self.register(username, "correct horse").await;
        assert_eq!(
            registered.status(),
            reqwest::StatusCode::CREATED,
            "registering {username}"
        );
        let login: serde_json::Value = self
            .login(username, "correct horse")
            .await
            .json()
            .await
            .expect("a login answer");
        (
            login["user_id"].as_str().expect("a user id").to_owned(),
            login["token"].as_str().expect("a token").to_owned(),
        )
    }

    /// A request with the default user's token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("the gateway answers")
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.request(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .expect("the gateway answers")
    }

    /// How many events the store holds (the default user's registration included).
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM ({}) e",
            every_context("1", "events")
        ))
        .fetch_one(&self.pool)
        .await
        .expect("count events")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
        if let Some(saga) = &self.saga {
            saga.abort();
        }
    }
}
