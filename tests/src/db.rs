//! The test binary's PostgreSQL cluster, a role per context, and a database per test.

use super::*;

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
    /// The database's URL (migrated unless made by [`start_empty`](Self::start_empty)).
    pub url: String,
    _dir: tempfile::TempDir,
}

impl TestPostgres {
    /// Starts the cluster and creates and migrates the database `chronicle`.
    ///
    /// # Panics
    /// When PostgreSQL cannot be started: install it (README's test command does).
    pub async fn start() -> Self {
        Self::start_with(true).await
    }

    /// Starts the cluster and creates the database `chronicle`, empty: for a store the
    /// system under test makes its tables in (a context on a database of its own).
    ///
    /// # Panics
    /// When PostgreSQL cannot be started.
    pub async fn start_empty() -> Self {
        Self::start_with(false).await
    }

    async fn start_with(migrated: bool) -> Self {
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
        if migrated {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .expect("connect to the database");
            chronicle::contexts::migrate(&pool)
                .await
                .expect("migrations apply");
            pool.close().await;
        }
        Self {
            postgres,
            url,
            _dir: dir,
        }
    }
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
            chronicle::contexts::migrate(&pool)
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
    chronicle::contexts::names()
        .iter()
        .map(|context| format!("SELECT {columns} FROM {context}.{table}"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Creates each context's role (once per cluster) and hands it its schema in the template.
fn context_roles_sql() -> String {
    let mut sql = String::new();
    for context in chronicle::contexts::names() {
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
        let roles: Vec<String> = chronicle::contexts::names()
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
        chronicle_commands::Databases::new(
            shared,
            &chronicle::contexts::names(),
            10,
            |context, options| options.username(&context_role(context)),
        )
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
