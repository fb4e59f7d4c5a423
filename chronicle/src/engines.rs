//! `chronicle up`'s own servers, for when no URLs are configured.

use std::os::unix::fs::PermissionsExt;

use anyhow::Context;
use chronicle_engines::{NatsOptions, NatsServer, Postgres, PostgresOptions};
use sqlx::{Connection, PgConnection};

use crate::settings::Settings;

/// The servers `chronicle up` started; dropping this stops them.
pub struct Embedded {
    // Dropped in this order: NATS first, then PostgreSQL.
    _nats: Option<NatsServer>,
    _postgres: Option<Postgres>,
}

/// Starts nats-server and/or PostgreSQL under the data dir for whichever URL is unset, and
/// returns the URLs to use.
///
/// # Errors
/// When a server cannot be installed-found, initialised or started.
pub async fn start(settings: &Settings) -> anyhow::Result<(Embedded, String, String)> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating {}", settings.data_dir.display()))?;
    let data_dir = settings
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", settings.data_dir.display()))?;
    // PostgreSQL runs as `postgres` when we are root: it must be able to enter our dir.
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", data_dir.display()))?;

    let (nats, nats_url) = match &settings.nats_url {
        Some(url) => (None, url.clone()),
        None => {
            let options = NatsOptions {
                store_dir: data_dir.join("nats"),
                port: None,
            };
            let server = tokio::task::spawn_blocking(move || NatsServer::start(options))
                .await
                .context("the nats-server start task panicked")?
                .context("starting nats-server")?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let (postgres, db_url) = match &settings.database_url {
        Some(url) => (None, url.clone()),
        None => {
            let options = PostgresOptions {
                data_dir: data_dir.join("pg"),
                port: None,
                durable: true,
            };
            let server = tokio::task::spawn_blocking(move || Postgres::start(options))
                .await
                .context("the postgres start task panicked")?
                .context("starting PostgreSQL")?;
            let mut admin = PgConnection::connect(&server.url("postgres"))
                .await
                .context("connecting to the embedded PostgreSQL")?;
            let exists: Option<(i32,)> =
                sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = 'chronicle'")
                    .fetch_optional(&mut admin)
                    .await
                    .context("looking for the chronicle database")?;
            if exists.is_none() {
                sqlx::query("CREATE DATABASE chronicle")
                    .execute(&mut admin)
                    .await
                    .context("creating the chronicle database")?;
            }
            let url = server.url("chronicle");
            (Some(server), url)
        }
    };
    Ok((
        Embedded {
            _nats: nats,
            _postgres: postgres,
        },
        db_url,
        nats_url,
    ))
}
