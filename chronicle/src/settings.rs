use anyhow::Context as _;
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use chronicle_host::parse_duration;

/// Chronicle's configuration: defaults in code, overridden by the environment (`CHRONICLE_*`,
/// `DATABASE_URL`, `NATS_URL`) or flags, in one group per concern. Secrets are [`Redacted`].
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    #[command(flatten)]
    pub servers: ServerSettings,
    #[command(flatten)]
    pub gateway: GatewaySettings,
    #[command(flatten)]
    pub orders: OrderSettings,
    #[command(flatten)]
    pub files: FileSettings,
    #[command(flatten)]
    pub scheduler: SchedulerSettings,
    #[command(flatten)]
    pub telemetry: TelemetrySettings,
    #[command(flatten)]
    pub notify: NotifySettings,
    /// The settings of the contexts that declare their own (`chronicle_host::SettingsGroup`),
    /// read from the same command line by `chronicle::contexts::configure`.
    #[arg(skip)]
    pub contexts: chronicle_gateway::ContextSettings,
    /// How long a shutdown waits for in-flight work before it stops anyway.
    #[arg(
        long,
        env = "CHRONICLE_SHUTDOWN_SECONDS",
        default_value_t = 10,
        global = true
    )]
    pub shutdown_seconds: u64,
}

/// What the process reports about itself.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetrySettings {
    /// Where to serve `GET /metrics` besides the gateway's own (for roles run without the
    /// gateway: relay, projectors, sagas, scheduler, alert engine). Unset: not served.
    #[arg(long, env = "CHRONICLE_METRICS_ADDR", global = true)]
    pub metrics_addr: Option<SocketAddr>,
    /// `text` (the default) or `json`: one JSON object per line, for log shippers.
    #[arg(
        long,
        env = "CHRONICLE_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: chronicle_telemetry::LogFormat,
}

/// Where the servers are, and how they are used.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerSettings {
    /// PostgreSQL to use; `chronicle up` starts its own when unset. A context may live on a
    /// database of its own: `CHRONICLE_<CONTEXT>_DATABASE_URL` (`CHRONICLE_CHAT_DATABASE_URL`,
    /// ...); this one serves the rest.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<Redacted>,
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
    /// Most connections in each Postgres pool: the shared one and each context's (opened
    /// as needed; idle ones close after 30 s).
    #[arg(long, env = "CHRONICLE_PG_POOL", default_value_t = 32, global = true)]
    pub pg_pool: u32,
    /// Replicas of the EVENTS stream when this process creates it (3 on a NATS cluster);
    /// an existing stream keeps the operator's choice.
    #[arg(
        long,
        env = "CHRONICLE_STREAM_REPLICAS",
        default_value_t = 1,
        global = true
    )]
    pub stream_replicas: usize,
    /// Under load (its last round published 8 events or more) the relay starts a round at
    /// most this often, to publish fewer, larger JetStream batches, for at most this much
    /// more projection lag. `0ms`: it publishes whatever is waiting the moment the last
    /// round is acknowledged. At most `1s`.
    #[arg(
        long,
        env = "CHRONICLE_RELAY_LINGER",
        default_value = "0ms",
        value_parser = parse_linger,
        global = true
    )]
    pub relay_linger: Duration,
}

/// The HTTP gateway.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewaySettings {
    /// Where the gateway listens.
    #[arg(
        long,
        env = "CHRONICLE_HTTP_ADDR",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub http_addr: SocketAddr,
    /// The key bearer tokens are signed with (at least 32 bytes). `chronicle up` generates
    /// one under the data dir when unset; the other subcommands require it.
    #[arg(
        long,
        env = "CHRONICLE_JWT_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub jwt_secret: Option<Redacted>,
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
    /// `1` (or `true`, `on`) lets staff take a CPU profile of the process
    /// (`GET /debug/profile?seconds=N`, pprof or `&format=svg`); off by default.
    #[arg(
        long,
        env = "CHRONICLE_PROFILING",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        default_value_t = false,
        global = true
    )]
    pub profiling: bool,
    /// Longest a client may take to send a request's headers (or to start its next request
    /// on a kept-alive connection) before the connection is closed, in seconds (1 to 86,400).
    #[arg(
        long,
        env = "CHRONICLE_HEADER_READ_TIMEOUT_SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=86_400),
        global = true
    )]
    pub header_read_timeout_seconds: u64,
    /// Usernames made staff when they log in, comma-separated; `*` makes everyone staff
    /// (for demos and tests). Unset by default; `chronicle users grant` grants it for good.
    #[arg(
        long,
        env = "CHRONICLE_STAFF_USERS",
        value_delimiter = ',',
        global = true
    )]
    pub staff_users: Vec<String>,
    /// How long a user shows online after the gateway holding their connections dies
    /// (it refreshes their presence every third of this while it lives).
    #[arg(
        long,
        env = "CHRONICLE_PRESENCE_TTL",
        default_value = "60s",
        value_parser = parse_duration,
        global = true
    )]
    pub presence_ttl: Duration,
    /// How often the gateway pings a WebSocket client; one silent for two intervals is
    /// dropped.
    #[arg(
        long,
        env = "CHRONICLE_WS_PING_INTERVAL",
        default_value = "20s",
        value_parser = parse_duration,
        global = true
    )]
    pub ws_ping_interval: Duration,
}

/// Orders and carts: the payment deadline, the saga, the simulated payment provider, and
/// when a cart counts as abandoned.
#[derive(Debug, Clone, clap::Args)]
pub struct OrderSettings {
    /// How long a cart with lines may stay untouched before it counts as abandoned (once per
    /// idle spell, in the series `business_carts_abandoned`); the cart keeps its lines.
    #[arg(
        long,
        env = "CHRONICLE_CART_ABANDONED_AFTER",
        default_value = "24h",
        value_parser = parse_duration,
        global = true
    )]
    pub cart_abandoned_after: Duration,
    /// How long an order may stay unpaid before the order saga cancels it: `900`, `90s`,
    /// `15m`, `2h` or `500ms`.
    #[arg(
        long,
        env = "CHRONICLE_ORDER_PAYMENT_TIMEOUT",
        default_value = "15m",
        value_parser = parse_duration,
        global = true
    )]
    pub order_payment_timeout: Duration,
    /// How long JetStream waits for the order saga's ack before it redelivers the event to
    /// another (or a restarted) saga process.
    #[arg(
        long,
        env = "CHRONICLE_SAGA_ACK_WAIT",
        default_value = "30s",
        value_parser = parse_duration,
        global = true
    )]
    pub saga_ack_wait: Duration,
    /// The simulated payment provider declines charges above this many cents.
    #[arg(long, env = "CHRONICLE_PAYMENT_DECLINE_ABOVE_CENTS", global = true)]
    pub payment_decline_above_cents: Option<i64>,
    /// The simulated payment provider never answers charges above this many cents.
    #[arg(long, env = "CHRONICLE_PAYMENT_HANG_ABOVE_CENTS", global = true)]
    pub payment_hang_above_cents: Option<i64>,
    /// How long a charge may take before it fails as `payment_timeout`.
    #[arg(
        long,
        env = "CHRONICLE_PAYMENT_TIMEOUT",
        default_value = "5s",
        value_parser = parse_duration,
        global = true
    )]
    pub payment_timeout: Duration,
}

/// Files: when the janitor removes what nothing needs.
#[derive(Debug, Clone, clap::Args)]
pub struct FileSettings {
    /// How long bytes stay after their last file is deleted (or their last claim), and an
    /// abandoned upload's chunks after its expiry, before the janitor removes them.
    #[arg(
        long,
        env = "CHRONICLE_FILES_GRACE",
        default_value = "10m",
        value_parser = parse_duration,
        global = true
    )]
    pub files_grace: Duration,
    /// How often the files janitor sweeps.
    #[arg(
        long,
        env = "CHRONICLE_FILES_SWEEP_INTERVAL",
        default_value = "60s",
        value_parser = parse_duration,
        global = true
    )]
    pub files_sweep_interval: Duration,
    /// How long a resumable upload (chunks or tus) may stay unfinished.
    #[arg(
        long,
        env = "CHRONICLE_UPLOAD_TTL",
        default_value = "24h",
        value_parser = parse_duration,
        global = true
    )]
    pub upload_ttl: Duration,
}

impl FileSettings {
    pub fn janitor(&self) -> chronicle_sagas::FilesJanitorConfig {
        chronicle_sagas::FilesJanitorConfig {
            grace: self.files_grace,
            every: self.files_sweep_interval,
            ..Default::default()
        }
    }
}

/// The scheduler: what its HTTP actions may call.
#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerSettings {
    /// Hosts a job's HTTP action may call: comma-separated host names or IPs, each with an
    /// optional `:port` (empty: none). Any other URL is refused when the job is created.
    #[arg(
        long,
        env = "CHRONICLE_SCHEDULER_HTTP_ALLOW",
        default_value = "",
        value_parser = parse_allow_list,
        global = true
    )]
    pub scheduler_http_allow: chronicle_scheduler::AllowList,
}

impl SchedulerSettings {
    pub fn scheduler(&self) -> chronicle_sagas::SchedulerConfig {
        chronicle_sagas::SchedulerConfig {
            http_allow: self.scheduler_http_allow.clone(),
            ..Default::default()
        }
    }
}

/// Where notifications (alert mail and webhooks) may go: the notifier's, which the scheduler
/// runs and the monitoring context's rules name.
#[derive(Debug, Clone, clap::Args)]
pub struct NotifySettings {
    /// Hosts alert webhooks may call (the format of CHRONICLE_SCHEDULER_HTTP_ALLOW).
    #[arg(
        long,
        env = "CHRONICLE_NOTIFY_ALLOW",
        default_value = "",
        value_parser = parse_allow_list,
        global = true
    )]
    pub notify_allow: chronicle_scheduler::AllowList,
    /// The SMTP server alert mail goes through: `smtp://host:port`, `smtps://...`, or
    /// `smtp://...?tls=required`, with `user:password@` when it wants them.
    #[arg(
        long,
        env = "CHRONICLE_SMTP_URL",
        global = true,
        hide_env_values = true
    )]
    pub smtp_url: Option<Redacted>,
    /// The sender of alert mail.
    #[arg(
        long,
        env = "CHRONICLE_SMTP_FROM",
        default_value = "Chronicle <chronicle@localhost>",
        global = true
    )]
    pub smtp_from: String,
}

impl NotifySettings {
    pub fn notify(&self) -> chronicle_sagas::NotifyConfig {
        chronicle_sagas::NotifyConfig {
            allow: self.notify_allow.clone(),
            smtp_url: self.smtp_url.as_ref().map(|u| u.expose().to_owned()),
            from: self.smtp_from.clone(),
        }
    }
}

/// A relay linger: a duration of at most a second (the relay adds it to an `Instant`, and
/// a longer one would only hold events back).
fn parse_linger(text: &str) -> Result<Duration, String> {
    let linger = parse_duration(text)?;
    if linger > Duration::from_secs(1) {
        return Err(format!("{text:?} is longer than the relay may linger (1s)"));
    }
    Ok(linger)
}

fn parse_allow_list(list: &str) -> Result<chronicle_scheduler::AllowList, String> {
    chronicle_scheduler::AllowList::parse(list)
}

/// A configuration value that must not be printed (a key, a URL with a password): `Debug`
/// shows a placeholder, so logging the settings never leaks it.
#[derive(Clone)]
pub struct Redacted(String);

impl Redacted {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Redacted {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where one context's schema lives when it is not on `DATABASE_URL`.
#[derive(Clone)]
pub struct ContextDatabase {
    pub options: sqlx::postgres::PgConnectOptions,
}

impl std::fmt::Debug for ContextDatabase {
    // The options hold the password: the host and database only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextDatabase")
            .field("host", &self.options.get_host())
            .field("port", &self.options.get_port())
            .field("database", &self.options.get_database())
            .finish()
    }
}

impl Settings {
    /// How the simulated payment provider answers.
    pub fn payments(&self) -> chronicle::PaymentRules {
        chronicle::PaymentRules {
            decline_above_cents: self.orders.payment_decline_above_cents,
            hang_above_cents: self.orders.payment_hang_above_cents,
            timeout: self.orders.payment_timeout,
        }
    }

    /// The gateway's configuration, with `secret` as the token key, and every context's
    /// settings groups (its routes' and its processes').
    pub fn gateway(&self, secret: chronicle_gateway::Secret) -> chronicle_gateway::GatewayConfig {
        let mut config = chronicle_gateway::GatewayConfig {
            token_ttl: std::time::Duration::from_secs(self.gateway.token_ttl_seconds),
            body_limit: self.gateway.body_limit,
            rate_limit: (self.gateway.rate_limit_per_second > 0.0).then_some(
                chronicle_gateway::RateLimit {
                    per_second: self.gateway.rate_limit_per_second,
                    burst: self.gateway.rate_limit_burst.max(1),
                },
            ),
            cors_origins: self.gateway.cors_origins.clone(),
            handler_timeout: std::time::Duration::from_secs(self.gateway.handler_timeout_seconds),
            header_read_timeout: std::time::Duration::from_secs(
                self.gateway.header_read_timeout_seconds,
            ),
            profiling: self.gateway.profiling,
            subscribers: crate::processes::subscribers(),
            ..chronicle::contexts::gateway_config(secret)
        };
        config
            .contexts
            .get_mut::<chronicle_gateway::JobsConfig>()
            .http_allow = self.scheduler.scheduler_http_allow.clone();
        config
            .contexts
            .set(chronicle_gateway::IdentityConfig {
                staff_users: self
                    .gateway
                    .staff_users
                    .iter()
                    .map(|u| u.trim().to_owned())
                    .filter(|u| !u.is_empty())
                    .collect(),
            })
            .set(chronicle_gateway::ChatConfig {
                presence_ttl: self.gateway.presence_ttl,
                ws_ping_interval: self.gateway.ws_ping_interval,
            })
            .set(chronicle_gateway::FilesConfig {
                replicas: self.servers.stream_replicas,
                upload_ttl: self.files.upload_ttl,
            })
            .set(chronicle_sagas::OrderSagaConfig {
                ack_wait: self.orders.saga_ack_wait,
                ..chronicle_sagas::OrderSagaConfig::with_payment_timeout(
                    self.orders.order_payment_timeout,
                )
            })
            .set(self.payments())
            .set(chronicle_sagas::CartSweeperConfig::abandoned_after(
                self.orders.cart_abandoned_after,
            ))
            .set(self.files.janitor())
            .set(self.scheduler.scheduler())
            .set(self.notify.notify())
            .extend(self.contexts.clone());
        config
    }

    /// The configured token key.
    ///
    /// # Errors
    /// When it is unset or shorter than 32 bytes.
    pub fn jwt_secret(&self) -> anyhow::Result<chronicle_gateway::Secret> {
        match &self.gateway.jwt_secret {
            Some(secret) if secret.expose().len() >= 32 => {
                Ok(chronicle_gateway::Secret::new(secret.expose().as_bytes()))
            }
            Some(_) => anyhow::bail!("CHRONICLE_JWT_SECRET must be at least 32 bytes"),
            None => {
                anyhow::bail!("CHRONICLE_JWT_SECRET is not set (only `chronicle up` makes its own)")
            }
        }
    }

    /// The URLs of both servers: the configured ones, else those of a `chronicle up` running
    /// on the same data dir, or an error naming the missing variable.
    ///
    /// # Errors
    /// When either is unset.
    pub fn urls(&self) -> anyhow::Result<(String, String)> {
        Ok((self.database_url()?, self.nats_url()?))
    }

    /// NATS to use: `NATS_URL`, else the running `chronicle up`'s.
    ///
    /// # Errors
    /// When neither is there.
    pub fn nats_url(&self) -> anyhow::Result<String> {
        let running = crate::engines::running_urls(&self.servers.data_dir);
        self.servers
            .nats_url
            .clone()
            .or_else(|| running.map(|r| r.1))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "NATS_URL is not set (only `chronicle up` starts its own nats-server)"
                )
            })
    }

    /// The contexts on a database of their own: `CHRONICLE_<CONTEXT>_DATABASE_URL` (e.g.
    /// `CHRONICLE_CHAT_DATABASE_URL`) moves that context's schema (its event store, outbox,
    /// read models, everything it keeps) to that PostgreSQL; `DATABASE_URL` serves the
    /// rest. Read from the environment (`vars`), one variable per context of the list.
    ///
    /// # Errors
    /// When a variable of that shape names no context, or its URL does not parse.
    pub fn context_databases(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<std::collections::BTreeMap<&'static str, ContextDatabase>> {
        let names = chronicle::contexts::names();
        let mut stores = std::collections::BTreeMap::new();
        for (key, value) in vars {
            let Some(context) = key
                .strip_prefix("CHRONICLE_")
                .and_then(|k| k.strip_suffix("_DATABASE_URL"))
            else {
                continue;
            };
            // Empty is unset (`CHRONICLE_CHAT_DATABASE_URL=` in an env file).
            if value.is_empty() {
                continue;
            }
            let lower = context.to_ascii_lowercase();
            let Some(&name) = names.iter().find(|n| **n == lower) else {
                anyhow::bail!(
                    "{key} names no context; a context on a database of its own is one of: {}",
                    names
                        .iter()
                        .map(|n| format!("CHRONICLE_{}_DATABASE_URL", n.to_ascii_uppercase()))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            let options = value
                .parse::<sqlx::postgres::PgConnectOptions>()
                .with_context(|| format!("{key} is not a PostgreSQL URL"))?;
            stores.insert(name, ContextDatabase { options });
        }
        Ok(stores)
    }

    fn database_url(&self) -> anyhow::Result<String> {
        let running = crate::engines::running_urls(&self.servers.data_dir);
        let db = self
            .servers
            .database_url
            .as_ref()
            .map(|url| url.expose().to_owned())
            .or_else(|| running.as_ref().map(|r| r.0.clone()))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "DATABASE_URL is not set (only `chronicle up` starts its own PostgreSQL)"
                )
            })?;
        Ok(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_on_a_database_of_its_own_is_named_by_its_variable() {
        let vars = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let stores = Settings::context_databases(vars(&[
            (
                "CHRONICLE_CHAT_DATABASE_URL",
                "postgres://u:secret@pg-chat:5433/chat",
            ),
            ("DATABASE_URL", "postgres://u@pg/main"),
            ("CHRONICLE_HTTP_ADDR", "127.0.0.1:0"),
        ]))
        .unwrap();
        assert_eq!(stores.keys().copied().collect::<Vec<_>>(), ["chat"]);
        let chat = &stores["chat"];
        assert_eq!(
            (
                chat.options.get_host(),
                chat.options.get_port(),
                chat.options.get_database()
            ),
            ("pg-chat", 5433, Some("chat"))
        );
        assert!(!format!("{chat:?}").contains("secret"), "{chat:?}");
        let typo = Settings::context_databases(vars(&[(
            "CHRONICLE_CHATS_DATABASE_URL",
            "postgres://u@pg/chat",
        )]))
        .unwrap_err()
        .to_string();
        assert!(
            typo.contains("CHRONICLE_CHATS_DATABASE_URL names no context"),
            "{typo}"
        );
        assert!(typo.contains("CHRONICLE_MONITORING_DATABASE_URL"), "{typo}");
        let bad = Settings::context_databases(vars(&[("CHRONICLE_BLOG_DATABASE_URL", "nope")]));
        assert!(bad.is_err());
        let unset = Settings::context_databases(vars(&[("CHRONICLE_BLOG_DATABASE_URL", "")]));
        assert!(unset.unwrap().is_empty(), "empty is unset");
    }

    /// hyper adds the timeout to an `Instant`: a value past a day is refused at start-up,
    /// not a panic at the first connection.
    #[test]
    fn a_header_read_timeout_out_of_range_is_refused() {
        use clap::Parser;
        #[derive(Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            settings: Settings,
        }
        for bad in ["0", "86401", "18446744073709551615", "-1", "ten"] {
            let parsed = Cli::try_parse_from(["chronicle", "--header-read-timeout-seconds", bad]);
            assert!(parsed.is_err(), "{bad} was taken");
        }
        let cli = Cli::parse_from(["chronicle", "--header-read-timeout-seconds", "5"]);
        assert_eq!(cli.settings.gateway.header_read_timeout_seconds, 5);
    }

    /// The relay adds its linger to an `Instant`: a value past a second is refused at
    /// start-up, not a panic under load.
    #[test]
    fn a_relay_linger_out_of_range_is_refused() {
        use clap::Parser;
        #[derive(Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            settings: Settings,
        }
        for bad in [
            "2s",
            "1001ms",
            "18446744073709551615ms",
            "-1",
            "ten",
            "5\0ms",
        ] {
            let parsed = Cli::try_parse_from(["chronicle", "--relay-linger", bad]);
            assert!(parsed.is_err(), "{bad} was taken");
        }
        let linger = |args: &[&str]| {
            let mut all = vec!["chronicle"];
            all.extend(args);
            Cli::parse_from(all).settings.servers.relay_linger
        };
        assert_eq!(linger(&[]), Duration::ZERO);
        assert_eq!(
            linger(&["--relay-linger", "25ms"]),
            Duration::from_millis(25)
        );
        assert_eq!(linger(&["--relay-linger", "1"]), Duration::from_secs(1));
    }

    #[test]
    fn profiling_is_off_unless_turned_on_as_a_shell_would() {
        use clap::Parser;
        #[derive(Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            settings: Settings,
        }
        let profiling = |value: Option<&str>| {
            let mut args = vec!["chronicle"];
            args.extend(value.map(|v| ["--profiling", v]).into_iter().flatten());
            Cli::try_parse_from(args).map(|cli| cli.settings.gateway.profiling)
        };
        assert!(!profiling(None).unwrap());
        for on in ["1", "true", "on", "yes"] {
            assert!(profiling(Some(on)).unwrap(), "{on}");
        }
        for off in ["0", "false", "off", "no"] {
            assert!(!profiling(Some(off)).unwrap(), "{off}");
        }
        assert!(profiling(Some("maybe")).is_err());
    }

    #[test]
    fn secrets_never_print() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            settings: Settings,
        }
        let cli = Cli::parse_from([
            "chronicle",
            "--jwt-secret",
            "a-very-secret-signing-key-of-32-bytes!",
            "--database-url",
            "postgres://chronicle:hunter2@db/chronicle",
        ]);
        let printed = format!("{:?}", cli.settings);
        assert!(!printed.contains("very-secret"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(cli.settings.jwt_secret().is_ok());
    }

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        assert_eq!(parse_duration("900"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("15 minutes").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("99999999999999999999").is_err());
        assert!(parse_duration("18446744073709551615h").is_err());
    }
}
