//! `chronicle up`'s own servers, for when no URLs are configured.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use anyhow::Context;
use chronicle_engines::{NatsOptions, NatsServer, Postgres, PostgresOptions};
use sqlx::{Connection, PgConnection};

use crate::settings::Settings;

/// The token key of `chronicle up`: the configured one, else the one kept in
/// `<data dir>/jwt-secret` (created on first start, readable by its owner only).
///
/// # Errors
/// When the configured key is too short or the file cannot be read or written.
pub fn jwt_secret(settings: &Settings) -> anyhow::Result<chronicle_gateway::Secret> {
    if settings.gateway.jwt_secret.is_some() {
        return settings.jwt_secret();
    }
    let path = settings.servers.data_dir.join("jwt-secret");
    if let Ok(existing) = std::fs::read(&path) {
        anyhow::ensure!(
            existing.len() >= 32,
            "{} is shorter than 32 bytes",
            path.display()
        );
        return Ok(chronicle_gateway::Secret::new(existing));
    }
    std::fs::create_dir_all(&settings.servers.data_dir)
        .with_context(|| format!("creating {}", settings.servers.data_dir.display()))?;
    let mut bytes = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, text.as_bytes())?;
    Ok(chronicle_gateway::Secret::new(text.into_bytes()))
}

/// The servers `chronicle up` started; dropping this stops them.
pub struct Embedded {
    // Dropped in this order: NATS first, then PostgreSQL.
    nats: Option<NatsServer>,
    postgres: Option<Postgres>,
}

impl Embedded {
    /// Which server has exited, and how, if one has.
    pub fn casualty(&mut self) -> Option<String> {
        if let Some(status) = self.nats.as_mut().and_then(NatsServer::exit_status) {
            return Some(format!("nats-server exited ({status})"));
        }
        if let Some(status) = self.postgres.as_mut().and_then(Postgres::exit_status) {
            return Some(format!("PostgreSQL exited ({status})"));
        }
        None
    }
}

/// Starts nats-server and/or PostgreSQL under the data dir for whichever URL is unset, and
/// returns the URLs to use.
///
/// # Errors
/// When a server cannot be installed-found, initialised or started.
pub async fn start(settings: &Settings) -> anyhow::Result<(Embedded, String, String)> {
    std::fs::create_dir_all(&settings.servers.data_dir)
        .with_context(|| format!("creating {}", settings.servers.data_dir.display()))?;
    let data_dir = settings
        .servers
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", settings.servers.data_dir.display()))?;
    // PostgreSQL runs as `postgres` when we are root: it must be able to enter our dir.
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", data_dir.display()))?;

    let (nats, nats_url) = match &settings.servers.nats_url {
        Some(url) => (None, url.clone()),
        None => {
            let options = NatsOptions {
                store_dir: data_dir.join("nats"),
                port: None,
                cluster: None,
            };
            let server = tokio::task::spawn_blocking(move || NatsServer::start(options))
                .await
                .context("the nats-server start task panicked")?
                .context("starting nats-server")?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let (postgres, db_url) = match &settings.servers.database_url {
        Some(url) => (None, url.expose().to_owned()),
        None => {
            let wanted = data_dir.join("pg");
            let cluster = chronicle_engines::cluster_dir_for(&wanted);
            if cluster != wanted {
                // Printed, not only logged: the user looks for their data here.
                println!(
                    "chronicle: PostgreSQL keeps its data in {} (the postgres user cannot enter {})",
                    cluster.display(),
                    data_dir.display()
                );
                if let Some(parent) = cluster.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
                        .with_context(|| format!("chmod {}", parent.display()))?;
                }
            }
            let options = PostgresOptions {
                data_dir: cluster,
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
    Ok((Embedded { nats, postgres }, db_url, nats_url))
}

/// The file in the data dir where a running `chronicle up` leaves its servers' URLs, so
/// `chronicle users grant`, `projections status` and friends find them with no variables.
fn running_file(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("running.json")
}

/// Records the URLs `chronicle up` is using (readable by its owner only: the database URL
/// may carry a password).
///
/// # Errors
/// When the file cannot be written.
pub fn record_running(
    data_dir: &std::path::Path,
    db_url: &str,
    nats_url: &str,
) -> anyhow::Result<()> {
    let path = running_file(data_dir);
    let _ = std::fs::remove_file(&path);
    let body = serde_json::json!({"database_url": db_url, "nats_url": nats_url});
    write_private(&path, body.to_string().as_bytes())
}

/// Creates `path` (it must not exist) readable by its owner only, holding `bytes`.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Forgets the URLs recorded by [`record_running`].
pub fn forget_running(data_dir: &std::path::Path) {
    let _ = std::fs::remove_file(running_file(data_dir));
}

/// The `(database, nats)` URLs of a `chronicle up` running on `data_dir`, if any.
pub fn running_urls(data_dir: &std::path::Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(running_file(data_dir)).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((
        value["database_url"].as_str()?.to_owned(),
        value["nats_url"].as_str()?.to_owned(),
    ))
}
