use chronicle_commands::CommandBus;
use sqlx::PgPool;

use crate::freshness::Freshness;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub commands: CommandBus,
    /// The read models' database (the same one as the event store in the default set-up).
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub freshness: Freshness,
}

impl AppState {
    /// Builds the state and starts listening for projector notifications.
    pub fn new(commands: CommandBus, pool: PgPool, nats: async_nats::Client) -> Self {
        let freshness = Freshness::listen(pool.clone());
        Self {
            commands,
            pool,
            nats,
            freshness,
        }
    }
}
