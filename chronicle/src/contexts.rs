//! The one list of bounded contexts: each declared once, with everything the processes, the
//! gateway and the tools enumerate. The component list ([`crate::components`]), the
//! gateway's routes, `/openapi.json` and its problem codes, `GET /api/v1/projections`,
//! `chronicle replay`, `chronicle schemas export`, the command line's settings,
//! `compose.yaml` and the test harness all read [`CONTEXTS`].
//!
//! A context in a crate of its own (monitoring) is one line here: its descriptor. The
//! others are declared here from their pieces in the shared crates, and their processes
//! are in [`crate::roles`].

use chronicle_commands::contexts as schema;
use chronicle_gateway::{ContextSettings, GatewayConfig, Secret};
use chronicle_host::Process;
use chronicle_projections::{
    carts::CartsProjection, chat_history::ChatHistoryProjection,
    file_metadata::FileMetadataProjection, inventory::InventoryProjection,
    job_triggers::JobTriggersProjection, jobs::JobsProjection, orders::OrdersProjection,
    posts::PostsProjection, users::UsersProjection, Erased, ReadModel,
};
use chronicle_schemas::contracts::EventContract;

pub use chronicle_host::Context;

use crate::roles;

/// Every bounded context, in the order their projectors and processes start.
pub const CONTEXTS: &[Context] = &[
    shared(
        schema::COMMERCE,
        chronicle_gateway::contexts::COMMERCE,
        &[
            &Erased(InventoryProjection),
            &Erased(OrdersProjection),
            &Erased(CartsProjection),
        ],
        &[roles::ORDER_SAGA, roles::CART_SWEEPER],
        |s| {
            s.declare::<chronicle_sagas::OrderSagaConfig>()
                .declare::<chronicle_sagas::CartSweeperConfig>()
                .declare::<crate::PaymentRules>();
        },
    ),
    shared(
        schema::BLOG,
        chronicle_gateway::contexts::BLOG,
        &[&Erased(PostsProjection)],
        &[],
        |_| {},
    ),
    shared(
        schema::IDENTITY,
        chronicle_gateway::contexts::IDENTITY,
        &[&Erased(UsersProjection)],
        &[],
        |_| {},
    ),
    shared(
        schema::CHAT,
        chronicle_gateway::contexts::CHAT,
        &[&Erased(ChatHistoryProjection)],
        &[],
        |_| {},
    ),
    shared(
        schema::FILES,
        chronicle_gateway::contexts::FILES,
        &[&Erased(FileMetadataProjection)],
        &[roles::JANITOR],
        |s| {
            s.declare::<chronicle_sagas::FilesJanitorConfig>();
        },
    ),
    shared(
        schema::SCHEDULER,
        chronicle_gateway::contexts::SCHEDULER,
        &[&Erased(JobsProjection), &Erased(JobTriggersProjection)],
        &[roles::SCHEDULER],
        |s| {
            s.declare::<chronicle_sagas::SchedulerConfig>()
                .declare::<chronicle_sagas::NotifyConfig>();
        },
    ),
    chronicle_monitoring::CONTEXT,
];

/// A context whose code is still in the shared crates: its event contracts are
/// `chronicle-schemas`' own, its settings are groups of `chronicle`'s, and its tables beside
/// its events are made by the shared migrations.
const fn shared(
    name: &'static str,
    gateway: chronicle_gateway::Context,
    read_models: &'static [&'static dyn ReadModel],
    processes: &'static [Process],
    declare: fn(&mut ContextSettings),
) -> Context {
    Context {
        name,
        gateway,
        read_models,
        processes,
        contracts: Vec::new,
        settings: None,
        declare,
        migrations: None,
    }
}

/// Creates or updates every context's tables (see [`chronicle_host::migrate`]).
///
/// # Errors
/// When the database cannot be reached or a migration fails.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    chronicle_host::migrate(pool, CONTEXTS).await
}

/// As [`migrate`], each context in its own store: those of `stores` (a context on a database
/// of its own, `CHRONICLE_<CONTEXT>_DATABASE_URL`) on their databases, the rest on `pool`'s;
/// only the contexts of `uses` when given. `pool`'s database is not reached when none of
/// them is on it.
///
/// # Errors
/// When a database cannot be reached or a migration fails.
pub async fn migrate_stores(
    pool: &sqlx::PgPool,
    stores: &std::collections::BTreeMap<&'static str, sqlx::postgres::PgConnectOptions>,
    uses: Option<&[&'static str]>,
) -> Result<(), sqlx::migrate::MigrateError> {
    let used = |context: &Context| uses.is_none_or(|u| u.contains(&context.name));
    let here: Vec<chronicle_host::Context> = CONTEXTS
        .iter()
        .filter(|c| used(c) && !stores.contains_key(c.name))
        .copied()
        .collect();
    if !here.is_empty() {
        chronicle_host::migrate(pool, &here).await?;
    }
    for context in CONTEXTS.iter().filter(|c| used(c)) {
        let Some(options) = stores.get(context.name) else {
            continue;
        };
        let store = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options.clone())
            .await?;
        let migrated = chronicle_host::migrate(&store, std::slice::from_ref(context)).await;
        store.close().await;
        migrated?;
    }
    Ok(())
}

/// Every context's name, which is its PostgreSQL schema, in the list's order.
pub fn names() -> Vec<&'static str> {
    CONTEXTS.iter().map(|c| c.name).collect()
}

/// Every context as the gateway hosts it.
pub fn hosted() -> Vec<chronicle_gateway::Context> {
    CONTEXTS.iter().map(|c| c.gateway).collect()
}

/// A gateway's configuration serving every context, with `secret` as its token key, and
/// every context's settings groups at their defaults (its routes' and its processes').
pub fn gateway_config(secret: Secret) -> GatewayConfig {
    let mut config = GatewayConfig::new(secret, hosted());
    for context in CONTEXTS {
        (context.declare)(&mut config.contexts);
    }
    // The event types a job may be triggered by: every context's.
    config
        .contexts
        .get_mut::<chronicle_gateway::JobsConfig>()
        .event_types = contracts()
        .into_iter()
        .map(|c| (c.context.to_owned(), c.event_type))
        .collect();
    config
}

/// Every context's settings from the command line (`matches` of a command that
/// [`augment`]ed), set into `settings`.
///
/// # Errors
/// When a context's settings cannot be read back from `matches`.
pub fn configure(
    matches: &clap::ArgMatches,
    settings: &mut ContextSettings,
) -> Result<(), clap::Error> {
    for group in CONTEXTS.iter().filter_map(|c| c.settings) {
        (group.apply)(matches, settings)?;
    }
    Ok(())
}

/// `command` with every context's settings as flags and variables.
pub fn augment(command: clap::Command) -> clap::Command {
    CONTEXTS
        .iter()
        .filter_map(|c| c.settings)
        .fold(command, |command, group| (group.augment)(command))
}

/// Every context's processes besides its projectors.
pub fn processes() -> impl Iterator<Item = &'static Process> {
    CONTEXTS.iter().flat_map(|c| c.processes.iter())
}

/// The contracts of every context's events, sorted by file name.
pub fn contracts() -> Vec<EventContract> {
    let mut all = chronicle_schemas::contracts::event_contracts();
    all.extend(CONTEXTS.iter().flat_map(|c| (c.contracts)()));
    all.sort_by_key(EventContract::file_name);
    all
}

/// Every read model, context by context.
pub fn read_models() -> impl Iterator<Item = &'static dyn ReadModel> {
    CONTEXTS.iter().flat_map(|c| c.read_models.iter().copied())
}

/// The read model called `name`, if there is one.
pub fn read_model(name: &str) -> Option<&'static dyn ReadModel> {
    read_models().find(|m| m.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_context_has_a_name_of_its_own_fit_for_a_schema_and_a_subject() {
        let mut names = names();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
        for name in names {
            assert!(
                !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    && chronicle_schemas::is_valid_subject_token(name),
                "{name:?}"
            );
        }
    }

    #[test]
    fn each_problem_code_is_declared_by_one_context() {
        let hosted = hosted();
        let declared: usize = hosted.iter().map(|c| c.problems.len()).sum();
        let host = chronicle_gateway::problem_codes(&[]).len();
        assert_eq!(
            host + declared,
            chronicle_gateway::problem_codes(&hosted).len()
        );
    }

    #[test]
    fn every_read_model_lives_in_its_contexts_schema() {
        for context in CONTEXTS {
            for model in context.read_models {
                assert_eq!(model.context(), context.name, "{}", model.name());
            }
        }
    }

    #[test]
    fn every_read_model_reads_events_of_the_contexts_there_are() {
        // A read model that named no aggregate would get a consumer with no filter, which
        // reads every event; one that named a context with a typo would read nothing.
        let contexts = names();
        for model in read_models() {
            let subjects = model.definition().subjects();
            assert!(!subjects.is_empty(), "{} reads nothing", model.name());
            for subject in &subjects {
                let context = subject.split('.').nth(1).unwrap_or_default();
                assert!(
                    context == ">" || contexts.contains(&context),
                    "{} reads {subject}",
                    model.name()
                );
            }
        }
    }

    #[test]
    fn every_process_has_a_name_and_a_command_of_its_own() {
        let mut names: Vec<&str> = processes().map(|p| p.name).collect();
        let mut commands: Vec<&[&str]> = processes().map(|p| p.args).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        commands.sort_unstable();
        commands.dedup();
        assert_eq!((names.len(), commands.len()), (count, count));
        for process in processes() {
            if let Some(reader) = process.reader {
                assert!(
                    CONTEXTS.iter().any(|c| c.name == reader.context),
                    "{}",
                    process.name
                );
            }
        }
    }

    #[test]
    fn a_contexts_settings_reach_its_groups_from_the_command_line() {
        let matches = augment(clap::Command::new("chronicle"))
            .try_get_matches_from(["chronicle", "--alert-every", "3s"])
            .unwrap();
        let mut settings = gateway_config(Secret::new(Vec::new())).contexts;
        configure(&matches, &mut settings).unwrap();
        assert_eq!(
            settings
                .get::<chronicle_monitoring::AlertEngineConfig>()
                .every,
            std::time::Duration::from_secs(3)
        );
    }
}
