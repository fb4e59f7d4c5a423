use std::{collections::HashMap, sync::Arc, time::Duration};

use chronicle_commands::CommandExecutor;
use chronicle_commerce::OrderServices;
use sqlx::PgPool;

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
    /// Usernames made staff at login (`CHRONICLE_STAFF_USERS`; `*` is everyone).
    pub staff_users: Vec<String>,
    /// The readers of the log `GET /api/v1/projections` reports on (projections, sagas):
    /// the component list's, handed in by whoever builds the gateway.
    pub subscribers: Vec<chronicle_bus::SubscriberRef>,
    /// How long a user stays online after their gateway stops refreshing their presence
    /// (it crashed): refreshed every third of it.
    pub presence_ttl: Duration,
    /// How often the hub pings a WebSocket client; one silent for two intervals is dropped.
    pub ws_ping_interval: Duration,
    /// Replicas of the `files` object store bucket when it is created.
    pub file_replicas: usize,
    /// How long a resumable upload may stay unfinished (`CHRONICLE_UPLOAD_TTL`).
    pub upload_ttl: Duration,
    /// Hosts a job's HTTP action may call (`CHRONICLE_SCHEDULER_HTTP_ALLOW`).
    pub scheduler_http_allow: chronicle_scheduler::AllowList,
    /// Hosts alert webhooks may call (`CHRONICLE_NOTIFY_ALLOW`, the scheduler's format).
    pub notify_allow: chronicle_scheduler::AllowList,
    /// How long samples are kept (`CHRONICLE_METRICS_RETENTION`); older queries read the
    /// per-minute rollups.
    pub metrics_retention: Duration,
    /// How often the built-in series are collected and stored (`None`: never).
    pub collect_every: Option<Duration>,
}

impl GatewayConfig {
    /// Defaults for everything but the signing key.
    pub fn new(jwt_secret: Secret) -> Self {
        Self {
            jwt_secret,
            token_ttl: Duration::from_secs(24 * 3600),
            body_limit: 1024 * 1024,
            rate_limit: None,
            cors_origins: Vec::new(),
            handler_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            staff_users: Vec::new(),
            subscribers: chronicle_projections::subscriber_refs(),
            presence_ttl: chronicle_bus::PRESENCE_TTL,
            ws_ping_interval: Duration::from_secs(20),
            file_replicas: 1,
            upload_ttl: Duration::from_secs(24 * 3600),
            scheduler_http_allow: chronicle_scheduler::AllowList::default(),
            notify_allow: chronicle_scheduler::AllowList::default(),
            metrics_retention: Duration::from_secs(15 * 86_400),
            collect_every: Some(Duration::from_secs(10)),
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
    /// The read models' database (the same one as the event store in the default set-up).
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub freshness: Freshness,
    pub auth: Auth,
    /// Shared, not copied: every request and connection holds the state.
    pub config: Arc<GatewayConfig>,
    /// The payment provider orders are charged through.
    pub orders: OrderServices,
    /// The cache in front of post detail and the tag list.
    pub posts: PostCache,
    pub(crate) limiter: Option<RateLimiter>,
    /// The WebSocket hub's live room feed (one per process).
    pub(crate) hub: crate::hub::Hub,
    /// File bytes, opened on first use.
    content: Arc<tokio::sync::OnceCell<chronicle_bus::ContentStore>>,
    /// Upload assemblies running in this process, by upload id: asking to complete an
    /// upload again waits for the one running instead of starting another.
    pub(crate) assemblies: Arc<std::sync::Mutex<HashMap<String, Assembly>>>,
    /// The running SHA-256 of uploads (tus or chunks) this process receives in order, by
    /// upload id, with the offset it stands at.
    pub(crate) running_hashes: Arc<std::sync::Mutex<HashMap<String, (u64, sha2::Sha256)>>>,
    /// Thumbnails being made at once (each holds an image's bytes and pixels).
    pub(crate) thumbnailing: Arc<tokio::sync::Semaphore>,
}

/// The outcome of an upload's assembly, which any number of requests may wait for.
pub(crate) type Assembly = futures::future::Shared<
    futures::future::BoxFuture<'static, Result<(), crate::error::ApiError>>,
>;

impl AppState {
    /// Builds the state and starts listening for projector notifications; orders are
    /// charged through `orders`' payment provider.
    pub fn new(
        commands: CommandExecutor,
        pool: PgPool,
        nats: async_nats::Client,
        config: GatewayConfig,
        orders: OrderServices,
    ) -> Self {
        let posts = PostCache::new(10_000);
        let freshness = crate::freshness::listen(pool.clone(), &posts);
        Self(Arc::new(Shared {
            commands,
            auth: Auth::new(&config.jwt_secret, config.token_ttl),
            limiter: config.rate_limit.map(RateLimiter::new),
            hub: crate::hub::Hub::new(config.presence_ttl),
            content: Arc::default(),
            assemblies: Arc::default(),
            running_hashes: Arc::default(),
            thumbnailing: Arc::new(tokio::sync::Semaphore::new(1)),
            orders,
            posts,
            pool,
            nats,
            freshness,
            config: Arc::new(config),
        }))
    }
}

impl AppState {
    /// The file bytes (the `files` object store bucket).
    ///
    /// # Errors
    /// 503 when JetStream refuses to open it.
    pub(crate) async fn content(
        &self,
    ) -> Result<&chronicle_bus::ContentStore, crate::error::ApiError> {
        self.content
            .get_or_try_init(|| async {
                chronicle_bus::ContentStore::open(
                    &async_nats::jetstream::new(self.nats.clone()),
                    self.config.file_replicas,
                )
                .await
            })
            .await
            .map_err(crate::error::ApiError::internal)
    }
}
