use std::{sync::Arc, time::Duration};

use chronicle_commands::{CommandExecutor, Databases};

use crate::{
    auth::{Auth, Secret},
    cache::PostCache,
    freshness::Freshness,
    protect::RateLimiter,
};

/// Rate limiting: a token bucket per user and per client IP.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests per second each bucket refills.
    pub per_second: f64,
    /// Requests a bucket holds: how many may come at once.
    pub burst: u32,
}

/// The gateway's own settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The HMAC key bearer tokens are signed with.
    pub jwt_secret: Secret,
    /// How long a token is valid.
    pub token_ttl: Duration,
    /// Largest request body accepted (413 above it).
    pub body_limit: usize,
    /// `None` turns rate limiting off.
    pub rate_limit: Option<RateLimit>,
    /// Origins allowed by CORS; empty allows any origin (bearer tokens, no cookies).
    pub cors_origins: Vec<String>,
    /// Longest a handler may take before the client gets 503 (min_version waits 2 s).
    pub handler_timeout: Duration,
    /// Longest a client may take to send a request's headers, or to start the next request
    /// on a kept-alive connection: a connection past it is closed (a trickling client holds
    /// nothing for long).
    pub header_read_timeout: Duration,
    /// Whether staff may take a CPU profile of the process (`GET /debug/profile`).
    pub profiling: bool,
    /// The readers of the log `GET /api/v1/projections` reports on (projections, sagas):
    /// the component list's, handed in by whoever builds the gateway.
    pub subscribers: Vec<chronicle_bus::SubscriberRef>,
    /// The contexts this gateway serves: their routes, problem codes, settings and state.
    pub hosted: Vec<crate::routes::Context>,
    /// What the hosted contexts' routes are configured with: one group per context, each
    /// declared beside that context's routes, kept by its type.
    pub contexts: crate::settings::ContextSettings,
}

impl GatewayConfig {
    /// Defaults for everything but the signing key, serving the `hosted` contexts (each
    /// context's settings group at its defaults).
    pub fn new(jwt_secret: Secret, hosted: Vec<crate::routes::Context>) -> Self {
        Self {
            jwt_secret,
            token_ttl: Duration::from_secs(24 * 3600),
            body_limit: 1024 * 1024,
            rate_limit: None,
            cors_origins: Vec::new(),
            handler_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            profiling: false,
            subscribers: Vec::new(),
            contexts: crate::routes::context_settings(&hosted),
            hosted,
        }
    }
}

/// What every handler shares: one pointer, so the clone axum makes for every extractor and
/// middleware of every request is one atomic increment (the fields behind it hold a dozen
/// handles, and the token validation's sets, that a field-by-field clone copied each time).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state behind [`AppState`].
pub struct Shared {
    pub commands: CommandExecutor,
    /// The shared pool (the event store, the health check) and each context's own: a
    /// context's routes read through [`Databases::of`] with their context's name.
    pub db: Databases,
    pub nats: async_nats::Client,
    pub freshness: Freshness,
    pub auth: Auth,
    /// Shared, not copied: every request and connection holds the state.
    pub config: Arc<GatewayConfig>,
    /// What each context keeps in this process (its caches, its work in flight, the
    /// services it was handed), by type.
    pub contexts: ContextStates,
    pub(crate) limiter: Option<RateLimiter>,
    /// `/openapi.json`, built from the hosted contexts' routes.
    pub(crate) openapi: axum::body::Bytes,
    /// The WebSocket hub's live room feed (one per process).
    pub(crate) hub: crate::hub::Hub,
}

impl AppState {
    /// Builds the state and starts listening for projector notifications. `contexts` holds
    /// what the caller hands the contexts (the payment provider orders are charged
    /// through); each context adds what it keeps in a process.
    pub fn new(
        commands: CommandExecutor,
        db: Databases,
        nats: async_nats::Client,
        config: GatewayConfig,
        mut contexts: ContextStates,
    ) -> Self {
        crate::routes::context_states(&config, &mut contexts);
        let databases = db.databases().into_iter().cloned().collect();
        let freshness = crate::freshness::listen(databases, contexts.get::<PostCache>());
        Self(Arc::new(Shared {
            commands,
            auth: Auth::new(&config.jwt_secret, config.token_ttl),
            limiter: config.rate_limit.map(RateLimiter::new),
            openapi: crate::routes::openapi::document_json(&config.hosted),
            hub: crate::hub::Hub::new(config.contexts.get::<crate::hub::ChatConfig>().presence_ttl),
            contexts,
            db,
            nats,
            freshness,
            config: Arc::new(config),
        }))
    }
}

/// What each context keeps in a gateway process, one value per type: the gateway's state
/// names no context's.
#[derive(Default)]
pub struct ContextStates(
    std::collections::HashMap<std::any::TypeId, Box<dyn std::any::Any + Send + Sync>>,
);

impl ContextStates {
    /// Keeps `value` (replacing a value of its type).
    pub fn insert<T: std::any::Any + Send + Sync>(&mut self, value: T) -> &mut Self {
        self.0.insert(std::any::TypeId::of::<T>(), Box::new(value));
        self
    }

    /// Keeps `value` unless a value of its type is kept already.
    pub fn insert_default<T: std::any::Any + Send + Sync>(
        &mut self,
        value: impl FnOnce() -> T,
    ) -> &mut Self {
        self.0
            .entry(std::any::TypeId::of::<T>())
            .or_insert_with(|| Box::new(value()));
        self
    }

    /// The value of type `T`.
    ///
    /// # Panics
    /// When none is kept: each context keeps its own when the state is built, and what the
    /// builder hands in is its to give.
    pub fn get<T: std::any::Any + Send + Sync>(&self) -> &T {
        self.0
            .get(&std::any::TypeId::of::<T>())
            .and_then(|value| value.downcast_ref())
            .unwrap_or_else(|| {
                panic!(
                    "the gateway's state keeps no {}",
                    std::any::type_name::<T>()
                )
            })
    }
}
