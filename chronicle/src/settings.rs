use std::{net::SocketAddr, path::PathBuf};

/// Chronicle's configuration: defaults in code, overridden by the environment or flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Where the gateway listens.
    #[arg(
        long,
        env = "CHRONICLE_HTTP_ADDR",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub http_addr: SocketAddr,
    /// PostgreSQL to use; `chronicle up` starts its own when unset.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// NATS to use; `chronicle up` starts its own when unset.
    #[arg(long, env = "NATS_URL", global = true)]
    pub nats_url: Option<String>,
    /// Where `chronicle up` keeps its own servers' data.
    #[arg(
        long,
        env = "CHRONICLE_DATA_DIR",
        default_value = ".chronicle",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Most connections in the Postgres pool.
    #[arg(long, env = "CHRONICLE_PG_POOL", default_value_t = 32, global = true)]
    pub pg_pool: u32,
    /// How long a shutdown waits for in-flight work before it stops anyway.
    #[arg(
        long,
        env = "CHRONICLE_SHUTDOWN_SECONDS",
        default_value_t = 10,
        global = true
    )]
    pub shutdown_seconds: u64,
}

impl Settings {
    /// The URLs of both servers, or an error naming the missing variable.
    ///
    /// # Errors
    /// When either is unset.
    pub fn urls(&self) -> anyhow::Result<(String, String)> {
        let db = self.database_url.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "DATABASE_URL is not set (only `chronicle up` starts its own PostgreSQL)"
            )
        })?;
        let nats = self.nats_url.clone().ok_or_else(|| {
            anyhow::anyhow!("NATS_URL is not set (only `chronicle up` starts its own nats-server)")
        })?;
        Ok((db, nats))
    }
}
