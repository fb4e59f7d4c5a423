//! The OpenAPI 3.1 document of every route, generated from the handlers' annotations
//! (`utoipa`), served at `/openapi.json`, with a page that lists it at `/docs`.
//!
//! A route and its operation are declared together (`.routes(routes!(handler))`, see
//! [`super::Routes`]); [`ApiDoc`] holds only what the whole document shares.
//! `tests/spine/openapi.rs` fails when an operation is not served, or a problem `code` the
//! code can answer is not in the document's enumeration of problem codes. The shapes the
//! routes' annotations name live in [`crate::schema`].

use axum::{
    http::header,
    response::{Html, IntoResponse},
};
use utoipa::{
    openapi::{
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
        OpenApi as Document,
    },
    Modify, OpenApi,
};

use crate::schema::{FieldProblem, FileForm, IdStatusVersion, IdVersion, Page, Problem};

/// Names every operation `<tag>_<action>` (`chat_send`, `files_tus_append`): an
/// `operationId` is unique in the document (the specification requires it, and generated
/// clients name their functions by it) and stable across releases, so a handler's name alone,
/// shared by several contexts (`list`, `get`), is prefixed with its context's tag.
struct OperationIds;

impl Modify for OperationIds {
    fn modify(&self, openapi: &mut Document) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                let tag = operation
                    .tags
                    .as_ref()
                    .and_then(|tags| tags.first())
                    .cloned()
                    .unwrap_or_default();
                if let Some(id) = &mut operation.operation_id {
                    if !id.starts_with(&format!("{tag}_")) {
                        *id = format!("{tag}_{id}");
                    }
                }
            }
        }
    }
}

/// The `Problem` schema's `code` lists every code an answer may carry
/// ([`super::problem_codes`]): a client can match on them, and a validator of answers
/// (schemathesis) fails on one it does not know.
fn enumerate_problem_codes(document: &mut Document, hosted: &[super::Context]) {
    use utoipa::openapi::{schema::Schema, RefOr};
    let code = document
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("Problem"))
        .and_then(|problem| match problem {
            RefOr::T(Schema::Object(problem)) => problem.properties.get_mut("code"),
            _ => None,
        });
    if let Some(RefOr::T(Schema::Object(code))) = code {
        code.enum_values = Some(
            super::problem_codes(hosted)
                .into_iter()
                .map(Into::into)
                .collect(),
        );
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chronicle",
        description = "An event-sourced CQRS platform: identity, shop, blog, chat, files, scheduler, monitoring. \
                       Send `Authorization: Bearer <token>` (POST /api/v1/auth/login gives one); \
                       commands take `Idempotency-Key` and `If-Match`, reads `?min_version`.",
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(Problem, FieldProblem, IdVersion, IdStatusVersion, Page, FileForm)),
)]
pub struct ApiDoc;

/// The document of the `hosted` contexts' routes and the host's own, as JSON: built once,
/// when the gateway's state is.
pub(crate) fn document_json(hosted: &[super::Context]) -> axum::body::Bytes {
    let mut document = super::api(hosted).into_openapi();
    OperationIds.modify(&mut document);
    enumerate_problem_codes(&mut document, hosted);
    serde_json::to_vec(&document)
        .expect("an OpenAPI document serializes")
        .into()
}

/// This module's routes.
pub(super) fn routes() -> axum::Router<crate::state::AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs))
}

async fn openapi_json(
    axum::extract::State(state): axum::extract::State<crate::state::AppState>,
) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.clone(),
    )
}

/// A page listing every operation of `/openapi.json`, without anything fetched from
/// elsewhere.
async fn docs() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(DOCS_PAGE))
}

const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Chronicle API</title>
<style>body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem}
code{background:#f3f3f3;padding:0 .2em}h2{margin-top:2rem;text-transform:capitalize}
.op{margin:.4rem 0}.m{display:inline-block;width:5.5rem;font-weight:600;text-transform:uppercase}</style></head>
<body><h1>Chronicle API</h1><p>The machine-readable document is <a href="/openapi.json"><code>/openapi.json</code></a> (OpenAPI 3.1).</p>
<div id="ops">Loading…</div>
<script type="module">
const doc = await (await fetch("/openapi.json")).json();
const byTag = {};
for (const [path, item] of Object.entries(doc.paths)) for (const [method, op] of Object.entries(item)) {
  (byTag[op.tags?.[0] ?? "other"] ??= []).push({path, method, op});
}
const root = document.getElementById("ops"); root.textContent = "";
for (const [tag, ops] of Object.entries(byTag)) {
  const h = document.createElement("h2"); h.textContent = tag; root.append(h);
  for (const {path, method, op} of ops) {
    const div = document.createElement("div"); div.className = "op";
    const m = document.createElement("span"); m.className = "m"; m.textContent = method;
    const p = document.createElement("code"); p.textContent = path;
    div.append(m, p, " — " + (op.summary ?? ""));
    root.append(div);
  }
}
</script></body></html>"#;
