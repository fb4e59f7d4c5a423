//! The route table and the layers every request passes through.

/// [`Routes`] of `handlers`, each at the method and path its `#[utoipa::path]` names: a
/// route and its OpenAPI operation are written once, together. (The crate using it depends
/// on `axum`, `utoipa` and `utoipa-axum`, whose `routes!` this expands to.)
#[macro_export]
macro_rules! documented {
    ($($handler:path),+ $(,)?) => {
        $crate::Routes::new()$(.routes(utoipa_axum::routes!($handler)))+
    };
}
pub use crate::documented;

mod blog;
mod cart;
pub(crate) mod chat;
mod console;
mod debug;
pub(crate) mod files;
pub(crate) mod files_state;
mod health;
pub(crate) mod identity;
mod incoming;
mod inventory;
pub(crate) mod jobs;
pub(crate) mod openapi;
mod orders;
pub mod page;
pub mod prelude;
mod projections;
pub mod respond;
mod thumbnails;
mod tus;
mod uploads;

use axum::{
    extract::DefaultBodyLimit,
    http::{HeaderName, HeaderValue, Method, Request, StatusCode},
    middleware, Router,
};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{
    error::ApiError,
    protect,
    settings::ContextSettings,
    state::{AppState, ContextStates, GatewayConfig},
};

/// A context's routes with their OpenAPI operations: each `.routes(routes!(handler))` takes
/// the method and path from the handler's `#[utoipa::path]`, so a route is written once and
/// the document cannot lack one the router serves.
pub type Routes = utoipa_axum::router::OpenApiRouter<AppState>;

/// `routes` with `layer` on its handlers alone (a route's own body limit).
pub fn with_layer<L>(
    (schemas, paths, handlers): utoipa_axum::router::UtoipaMethodRouter<AppState>,
    layer: L,
) -> utoipa_axum::router::UtoipaMethodRouter<AppState>
where
    L: tower::Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
    L::Service: tower::Service<Request<axum::body::Body>, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<Request<axum::body::Body>>>::Response:
        axum::response::IntoResponse + 'static,
    <L::Service as tower::Service<Request<axum::body::Body>>>::Future: Send + 'static,
{
    (schemas, paths, handlers.layer(layer))
}

/// One bounded context as the gateway hosts it, declared in the context's own routes
/// module. The gateway serves the contexts its configuration names
/// ([`GatewayConfig::hosted`]); the router, `/openapi.json` and its problem codes, the
/// settings groups and the state read that list.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// Its routes, each with its OpenAPI operation.
    pub routes: fn() -> Routes,
    /// The problem `code`s its routes and its domain answer, beyond the host's own
    /// ([`crate::schema::HOST_PROBLEMS`]). Each code is declared by one context.
    pub problems: &'static [&'static str],
    /// Declares its settings groups ([`ContextSettings::declare`]), if it has any.
    pub settings: fn(&mut ContextSettings),
    /// Adds what it keeps in a gateway process, unless the builder handed it in.
    pub state: fn(&GatewayConfig, &mut ContextStates),
    /// A task each gateway runs while it serves (dropped when it stops), given its state and
    /// its instance name (`host:port`): `None` when it runs none.
    pub beside: fn(&AppState, &str) -> Option<futures::future::BoxFuture<'static, ()>>,
}

/// Each context's routes as the gateway hosts them, by the context's name.
pub mod contexts {
    pub use super::{
        blog::CONTEXT as BLOG, chat::CONTEXT as CHAT, files::CONTEXT as FILES,
        identity::CONTEXT as IDENTITY, jobs::CONTEXT as SCHEDULER, orders::CONTEXT as COMMERCE,
    };
}

/// Every documented route: the host's own (health, metrics, profiles, the readers' status) and each
/// hosted context's, with the document's shared parts (title, security, common schemas)
/// from [`openapi::ApiDoc`].
pub(crate) fn api(hosted: &[Context]) -> Routes {
    use utoipa::OpenApi as _;
    hosted.iter().fold(
        Routes::with_openapi(openapi::ApiDoc::openapi())
            .merge(health::routes())
            .merge(debug::routes())
            .merge(projections::routes()),
        |api, context| api.merge((context.routes)()),
    )
}

/// The settings groups of the `hosted` contexts, at their defaults.
pub(crate) fn context_settings(hosted: &[Context]) -> ContextSettings {
    let mut settings = ContextSettings::default();
    for context in hosted {
        (context.settings)(&mut settings);
    }
    settings
}

/// Adds what each hosted context keeps in a gateway process.
pub(crate) fn context_states(config: &GatewayConfig, states: &mut ContextStates) {
    for context in &config.hosted {
        (context.state)(config, states);
    }
}

/// Every problem `code` an answer may carry, sorted: the host's and every hosted context's.
pub fn problem_codes(hosted: &[Context]) -> Vec<&'static str> {
    let mut codes: Vec<&'static str> = crate::schema::HOST_PROBLEMS
        .iter()
        .chain(hosted.iter().flat_map(|c| c.problems))
        .copied()
        .collect();
    codes.sort_unstable();
    codes.dedup();
    codes
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.is_empty() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::HEAD,
        ])
        .allow_headers([
            HeaderName::from_static("authorization"),
            HeaderName::from_static("content-type"),
            HeaderName::from_static("if-match"),
            HeaderName::from_static("idempotency-key"),
            // tus 1.0 (the API contract, Files), for browser clients such as tus-js-client.
            HeaderName::from_static("tus-resumable"),
            HeaderName::from_static("upload-length"),
            HeaderName::from_static("upload-offset"),
            HeaderName::from_static("upload-metadata"),
            HeaderName::from_static("upload-checksum"),
            HeaderName::from_static("upload-defer-length"),
        ])
        .expose_headers([
            HeaderName::from_static("etag"),
            HeaderName::from_static("location"),
            HeaderName::from_static("retry-after"),
            HeaderName::from_static("chronicle-consistency"),
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("tus-resumable"),
            HeaderName::from_static("tus-version"),
            HeaderName::from_static("tus-extension"),
            HeaderName::from_static("tus-max-size"),
            HeaderName::from_static("tus-checksum-algorithm"),
            HeaderName::from_static("upload-offset"),
            HeaderName::from_static("upload-length"),
            HeaderName::from_static("upload-expires"),
            HeaderName::from_static("upload-metadata"),
            HeaderName::from_static("chronicle-file-id"),
        ])
}

/// The whole HTTP API.
///
/// Layers, outermost first: request id (set, then echoed on the response), a tracing span
/// per request carrying that id (so every log line of the request has it), CORS, rate
/// limiting, the handler timeout, every error made problem+json, the handler run as a task
/// of its own (so no disconnect or timeout cancels it half way), the body limit.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let trace = TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
        let id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
    });
    let (documented, _) = api(&state.config.hosted).split_for_parts();
    let routes = Router::new()
        .merge(documented)
        .merge(openapi::routes())
        .merge(console::routes())
        .fallback(|| async { ApiError::not_found("there is no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .layer(middleware::from_fn(protect::run_to_completion))
        .layer(middleware::from_fn(crate::error::every_error_is_a_problem))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            protect::timeout,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            protect::rate_limit,
        ))
        .layer(middleware::from_fn(crate::observe::record))
        .with_state(state.clone());
    // CORS answers every OPTIONS itself; an OPTIONS that is not a preflight (tus discovery,
    // the API contract Files) goes to the routes.
    let with_cors = routes.clone().layer(cors(&state.config.cors_origins));
    Router::new()
        .fallback(move |request: Request<axum::body::Body>| {
            use tower::ServiceExt;
            let through_cors = request.method() != Method::OPTIONS
                || request
                    .headers()
                    .contains_key("access-control-request-method");
            let service = if through_cors {
                with_cors.clone()
            } else {
                routes.clone()
            };
            async move { service.oneshot(request).await }
        })
        .layer(trace)
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}
