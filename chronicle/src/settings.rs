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
    /// The key bearer tokens are signed with (at least 32 bytes). `chronicle up` generates
    /// one under the data dir when unset; the other subcommands require it.
    #[arg(
        long,
        env = "CHRONICLE_JWT_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// How long a login token is valid, in seconds.
    #[arg(
        long,
        env = "CHRONICLE_TOKEN_TTL_SECONDS",
        default_value_t = 86_400,
        global = true
    )]
    pub token_ttl_seconds: u64,
    /// Largest request body, in bytes.
    #[arg(long, env = "CHRONICLE_BODY_LIMIT", default_value_t = 1024 * 1024, global = true)]
    pub body_limit: usize,
    /// Requests per second per user and per client IP; 0 turns rate limiting off.
    #[arg(
        long,
        env = "CHRONICLE_RATE_LIMIT_PER_SECOND",
        default_value_t = 50.0,
        global = true
    )]
    pub rate_limit_per_second: f64,
    /// How many requests may come at once before the rate limit applies.
    #[arg(
        long,
        env = "CHRONICLE_RATE_LIMIT_BURST",
        default_value_t = 100,
        global = true
    )]
    pub rate_limit_burst: u32,
    /// Origins CORS allows, comma-separated; empty allows any.
    #[arg(
        long,
        env = "CHRONICLE_CORS_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub cors_origins: Vec<String>,
    /// Longest a request may take before it is answered 503, in seconds.
    #[arg(
        long,
        env = "CHRONICLE_HANDLER_TIMEOUT_SECONDS",
        default_value_t = 10,
        global = true
    )]
    pub handler_timeout_seconds: u64,
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
    /// The gateway's configuration, with `secret` as the token key.
    pub fn gateway(&self, secret: chronicle_gateway::Secret) -> chronicle_gateway::GatewayConfig {
        chronicle_gateway::GatewayConfig {
            token_ttl: std::time::Duration::from_secs(self.token_ttl_seconds),
            body_limit: self.body_limit,
            rate_limit: (self.rate_limit_per_second > 0.0).then_some(
                chronicle_gateway::RateLimit {
                    per_second: self.rate_limit_per_second,
                    burst: self.rate_limit_burst.max(1),
                },
            ),
            cors_origins: self.cors_origins.clone(),
            handler_timeout: std::time::Duration::from_secs(self.handler_timeout_seconds),
            ..chronicle_gateway::GatewayConfig::new(secret)
        }
    }

    /// The configured token key.
    ///
    /// # Errors
    /// When it is unset or shorter than 32 bytes.
    pub fn jwt_secret(&self) -> anyhow::Result<chronicle_gateway::Secret> {
        match &self.jwt_secret {
            Some(secret) if secret.len() >= 32 => {
                Ok(chronicle_gateway::Secret::new(secret.as_bytes()))
            }
            Some(_) => anyhow::bail!("CHRONICLE_JWT_SECRET must be at least 32 bytes"),
            None => {
                anyhow::bail!("CHRONICLE_JWT_SECRET is not set (only `chronicle up` makes its own)")
            }
        }
    }

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
