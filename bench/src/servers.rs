//! The servers a benchmark runs on, with docs/benchmarks.md's durability settings.

use std::time::Duration;

use anyhow::Context;
use chronicle_engines::{NatsOptions, NatsServer, Postgres, PostgresOptions};
use sqlx::{postgres::PgPoolOptions, Connection, PgConnection, PgPool};

/// A PostgreSQL cluster with its durability defaults (fsync, synchronous_commit,
/// full_page_writes on), or the one `DATABASE_URL` names.
pub struct Servers {
    admin_url: String,
    base_url: String,
    nats_url: Option<String>,
    _postgres: Option<Postgres>,
    dir: tempfile::TempDir,
}

/// What one measurement runs on: a fresh database and a nats-server of its own.
pub struct Fresh {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    /// Where the two live, for a process of Chronicle's own (E2).
    pub db_url: String,
    pub nats_url: String,
    _server: Option<NatsServer>,
}

impl Servers {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("chronicle-bench-")
            .tempdir()?;
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let nats_url = std::env::var("NATS_URL").ok();
        if let Ok(url) = std::env::var("DATABASE_URL") {
            let base = url
                .rsplit_once('/')
                .map(|(b, _)| b.to_owned())
                .context("DATABASE_URL has no database")?;
            return Ok(Self {
                admin_url: url,
                base_url: base,
                nats_url,
                _postgres: None,
                dir,
            });
        }
        let data_dir = dir.path().join("pg");
        let postgres = tokio::task::spawn_blocking(move || {
            Postgres::start(PostgresOptions {
                data_dir,
                port: None,
                durable: true,
            })
        })
        .await??;
        eprintln!(
            "bench: PostgreSQL (durable defaults) on port {}",
            postgres.port()
        );
        Ok(Self {
            admin_url: postgres.url("postgres"),
            base_url: format!("postgres://postgres@127.0.0.1:{}", postgres.port()),
            nats_url,
            _postgres: Some(postgres),
            dir,
        })
    }

    /// A new migrated database and a new nats-server (`sync_interval: always`).
    pub async fn fresh(&self) -> anyhow::Result<Fresh> {
        let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        let db_url = format!("{}/{name}", self.base_url);
        let pool = PgPoolOptions::new()
            .max_connections(40)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&db_url)
            .await?;
        chronicle::contexts::migrate(&pool).await?;
        let (url, server) = match &self.nats_url {
            Some(url) => (url.clone(), None),
            None => {
                let store_dir = self.dir.path().join(&name);
                let server = tokio::task::spawn_blocking(move || {
                    NatsServer::start(NatsOptions {
                        store_dir,
                        port: None,
                        cluster: None,
                    })
                })
                .await??;
                (server.url(), Some(server))
            }
        };
        let nats = chronicle_bus::connect(&url).await?;
        chronicle_bus::ensure_events_stream(&async_nats::jetstream::new(nats.clone())).await?;
        Ok(Fresh {
            pool,
            nats,
            db_url,
            nats_url: url,
            _server: server,
        })
    }
}
