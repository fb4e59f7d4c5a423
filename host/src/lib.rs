//! What a bounded context plugs into, and what it is handed.
//!
//! A context is one [`Context`] value: its name (its PostgreSQL schema), its routes as the
//! gateway hosts them, its read models, its processes, the contracts of its events, and its
//! group of settings. The list of contexts (`chronicle::contexts::CONTEXTS`) names each
//! one; the component list, the gateway, `/openapi.json`, `compose.yaml`, the command
//! line, `chronicle schemas export` and `chronicle replay` read that list, so a context in
//! a crate of its own is added by naming its descriptor there.
//!
//! It promises a process the same [`Host`] whichever way it is run (`chronicle up`, its own
//! subcommand, the test harness): the pools, NATS, the process's command bus, its fault
//! points and every context's settings.

use std::{future::Future, pin::Pin};

use chronicle_bus::{Faults, SubscriberRef};
use chronicle_commands::{CommandExecutor, Databases};
use chronicle_gateway::ContextSettings;
use chronicle_projections::ReadModel;
use chronicle_schemas::contracts::EventContract;

/// One bounded context, declared once.
#[derive(Clone, Copy)]
pub struct Context {
    /// Its name: its PostgreSQL schema, and the middle of its subjects (`events.<name>.>`).
    pub name: &'static str,
    /// Its routes, problem codes, settings groups and state, as the gateway hosts them.
    pub gateway: chronicle_gateway::Context,
    /// Its read models, each run by a projector of its own.
    pub read_models: &'static [&'static dyn ReadModel],
    /// Its processes besides its projectors (a saga, the scheduler, the alert engine).
    pub processes: &'static [Process],
    /// The contracts of its events (`chronicle schemas export`), when its crate holds them.
    pub contracts: fn() -> Vec<EventContract>,
    /// Its settings from the environment and the command line, when it has any.
    pub settings: Option<SettingsGroup>,
    /// Declares the settings groups its processes read (at their defaults until set).
    pub declare: fn(&mut ContextSettings),
    /// Its own migrations, when it keeps tables beside its event store and its read models
    /// (which its projections make): run in its schema, recorded in a `_sqlx_migrations` of
    /// its own there.
    pub migrations: Option<&'static sqlx::migrate::Migrator>,
}

/// Creates or updates every table of `contexts`: the event store's migrations, each
/// context's schema with its event store (`chronicle_commands::migrate`), then each
/// context's own migrations in its schema.
///
/// # Errors
/// When the database cannot be reached or a migration fails.
pub async fn migrate(
    pool: &sqlx::PgPool,
    contexts: &[Context],
) -> Result<(), sqlx::migrate::MigrateError> {
    use sqlx::Connection as _;
    let names: Vec<&str> = contexts.iter().map(|c| c.name).collect();
    chronicle_commands::migrate(pool, &names).await?;
    for context in contexts {
        if let Some(migrations) = context.migrations {
            // A connection of its own whose path is the context's schema alone, so the
            // migrations' unqualified names (and their record) land there.
            let options = pool
                .connect_options()
                .as_ref()
                .clone()
                .options([("search_path", context.name)]);
            let mut connection = sqlx::PgConnection::connect_with(&options).await?;
            migrations.run(&mut connection).await?;
            connection.close().await?;
        }
    }
    Ok(())
}

/// A process of a context besides its projectors: a role `chronicle up` runs, a service of
/// `compose.yaml`, a subcommand.
#[derive(Debug, Clone, Copy)]
pub struct Process {
    /// Its service name (`alert-engine`, `saga-orders`).
    pub name: &'static str,
    /// The `chronicle` arguments that run it alone (`["alert-engine"]`, `["saga", "orders"]`).
    pub args: &'static [&'static str],
    /// What it does, for `chronicle --help`.
    pub about: &'static str,
    /// How many instances a deployment runs.
    pub replicas: u32,
    /// The durable consumer it reads the log with, if it is a reader of the log, and the
    /// context whose schema keeps its checkpoint and parked events.
    pub reader: Option<Reader>,
    /// The contexts whose stores it reads or writes (its commands' aggregates included),
    /// or `None` for every context (it may run any context's commands). A process run alone
    /// migrates and connects to those stores only.
    pub uses: Option<&'static [&'static str]>,
    /// Starts it, handed `host`, until `shutdown`.
    pub start: fn(&Host, Shutdown) -> anyhow::Result<Task>,
}

/// A process is its name: two with one name would be one service.
impl PartialEq for Process {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Process {}

/// A durable reader of the log (its name is its consumer's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reader {
    pub durable: &'static str,
    pub context: &'static str,
}

impl Reader {
    /// As the status reports and parked events name it.
    pub fn subscriber(&self) -> SubscriberRef {
        SubscriberRef {
            name: self.durable.to_owned(),
            durable: self.durable.to_owned(),
            context: self.context,
        }
    }
}

/// What a process is handed: the same in every way of running it.
#[derive(Clone, Copy)]
pub struct Host<'a> {
    /// The shared pool and one per context, on its own schema.
    pub db: &'a Databases,
    pub nats: &'a async_nats::Client,
    /// The process's command bus (its cache and group commit are shared by its roles).
    pub commands: &'a CommandExecutor,
    /// The fault points armed in this process (none outside the fault harness).
    pub faults: &'a Faults,
    /// Every context's settings, by type.
    pub settings: &'a ContextSettings,
}

/// Resolves when a process is to stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A started process: runs until its shutdown, or fails.
pub type Task = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A context's settings as flags and variables: added to the command line, then read into
/// the context's groups (`chronicle --help` lists them with the rest).
#[derive(Clone, Copy)]
pub struct SettingsGroup {
    /// Adds its arguments to the command line.
    pub augment: fn(clap::Command) -> clap::Command,
    /// Reads them back into the context's settings groups.
    pub apply: fn(&clap::ArgMatches, &mut ContextSettings) -> Result<(), clap::Error>,
}

impl SettingsGroup {
    /// The group `T` (a `clap::Args` struct): its arguments, and [`Configure::configure`].
    pub const fn of<T: clap::Args + Configure>() -> Self {
        Self {
            augment: T::augment_args,
            apply: apply::<T>,
        }
    }
}

/// Settings read from the command line, set into a context's groups.
pub trait Configure: clap::FromArgMatches {
    /// Sets the groups these settings configure.
    fn configure(self, settings: &mut ContextSettings);
}

fn apply<T: Configure>(
    matches: &clap::ArgMatches,
    settings: &mut ContextSettings,
) -> Result<(), clap::Error> {
    T::from_arg_matches(matches)?.configure(settings);
    Ok(())
}

/// `900` (seconds), `500ms`, `90s`, `15m`, `2h`, `15d`: a duration as settings take one.
///
/// # Errors
/// When `text` is not one, or too long to hold.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 900, 90s, 15m, 2h, 15d or 500ms"))?;
    let seconds = |per: u64| {
        number
            .checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{text:?} is too long a duration"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "" | "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86_400),
        other => Err(format!("unknown unit {other:?}: use ms, s, m, h or d")),
    }
}
