//! The one list of bounded contexts: each declared once, with everything the processes, the
//! gateway and the tools enumerate. The component list ([`crate::components`]), the
//! gateway's routes, `/openapi.json` and its problem codes, `GET /api/v1/projections`,
//! `chronicle replay`, `compose.yaml` and the test harness all read [`CONTEXTS`].

use chronicle_commands::contexts as schema;
use chronicle_monitoring::{alerts::AlertsProjection, business::BusinessMetricsProjection};
use chronicle_projections::{
    chat_history::ChatHistoryProjection, file_metadata::FileMetadataProjection,
    inventory::InventoryProjection, jobs::JobsProjection, orders::OrdersProjection,
    posts::PostsProjection, users::UsersProjection, Erased, ReadModel,
};
use chronicle_schemas::contracts::EventContract;

use crate::components::Component;

/// One bounded context.
pub struct Context {
    /// Its name: its PostgreSQL schema, and the middle of its subjects (`events.<name>.>`).
    pub name: &'static str,
    /// Its routes, problem codes, settings and state, as the gateway hosts them.
    pub gateway: chronicle_gateway::Context,
    /// Its read models, each run by a projector of its own.
    pub read_models: &'static [&'static dyn ReadModel],
    /// Its processes besides its projectors (a saga, the scheduler, the alert engine).
    pub processes: &'static [Component],
    /// The contracts of its events, when its crate holds them (the other contexts' events
    /// are in `chronicle-schemas`).
    pub contracts: fn() -> Vec<EventContract>,
}

/// Every bounded context, in the order their projectors and processes start.
pub const CONTEXTS: &[Context] = &[
    Context {
        name: schema::COMMERCE,
        gateway: chronicle_gateway::contexts::COMMERCE,
        read_models: &[&Erased(InventoryProjection), &Erased(OrdersProjection)],
        processes: &[Component::Saga("orders")],
        contracts: Vec::new,
    },
    Context {
        name: schema::BLOG,
        gateway: chronicle_gateway::contexts::BLOG,
        read_models: &[&Erased(PostsProjection)],
        processes: &[],
        contracts: Vec::new,
    },
    Context {
        name: schema::IDENTITY,
        gateway: chronicle_gateway::contexts::IDENTITY,
        read_models: &[&Erased(UsersProjection)],
        processes: &[],
        contracts: Vec::new,
    },
    Context {
        name: schema::CHAT,
        gateway: chronicle_gateway::contexts::CHAT,
        read_models: &[&Erased(ChatHistoryProjection)],
        processes: &[],
        contracts: Vec::new,
    },
    Context {
        name: schema::FILES,
        gateway: chronicle_gateway::contexts::FILES,
        read_models: &[&Erased(FileMetadataProjection)],
        processes: &[Component::Janitor],
        contracts: Vec::new,
    },
    Context {
        name: schema::SCHEDULER,
        gateway: chronicle_gateway::contexts::SCHEDULER,
        read_models: &[&Erased(JobsProjection)],
        processes: &[Component::Scheduler],
        contracts: Vec::new,
    },
    Context {
        name: schema::MONITORING,
        gateway: chronicle_monitoring::ROUTES,
        read_models: &[
            &Erased(AlertsProjection),
            &Erased(BusinessMetricsProjection),
        ],
        processes: &[Component::AlertEngine],
        contracts: chronicle_monitoring::contracts,
    },
];

/// Every context as the gateway hosts it.
pub fn hosted() -> Vec<chronicle_gateway::Context> {
    CONTEXTS.iter().map(|c| c.gateway).collect()
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
    fn the_contexts_are_the_schemas_the_store_has_each_once() {
        let mut names: Vec<&str> = CONTEXTS.iter().map(|c| c.name).collect();
        names.sort_unstable();
        let mut schemas = schema::ALL.to_vec();
        schemas.sort_unstable();
        assert_eq!(names, schemas);
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
}
