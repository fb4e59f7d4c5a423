//! The OpenAPI document (issue 15): served at `/openapi.json` (and listed at `/docs`),
//! snapshotted, and checked against the code both ways: a route is declared with its
//! operation (`.routes(routes!(handler))`), so the only routes the gateway's source declares
//! on their own (`.route(...)`) are the pages outside the API; every operation in the
//! document is served; and every problem `code` the code can answer is in its `Problem`
//! schema.

use std::collections::BTreeSet;

use chronicle_tests::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::Value;

fn source(dir: &str) -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(dir);
    chronicle_tests::files_under(&root, ".rs")
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            (path.display().to_string(), text)
        })
        .collect()
}

/// `(METHOD, path)` of every `.route("path", method(handler)...)` in the gateway's source:
/// routes declared without an OpenAPI operation.
fn declared_routes() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (_, text) in source("gateway/src") {
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(") {
            let call = &rest[at + ".route(".len()..];
            // The call's text up to its closing parenthesis.
            let mut depth = 1;
            let end = call
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(call.len(), |(i, _)| i);
            let call = &call[..end];
            rest = &rest[at + 7..];
            let Some(path) = call.split('"').nth(1) else {
                continue;
            };
            for method in ["get", "post", "put", "patch", "delete", "head", "options"] {
                let used = [
                    format!("{method}("),
                    format!(".{method}("),
                    format!("{method}_route("),
                    format!("routing::{method}("),
                ];
                let after_path = &call[call.find(path).unwrap() + path.len()..];
                let called = after_path.match_indices(method).any(|(i, _)| {
                    let before = after_path[..i].chars().last();
                    let word_start = !before.is_some_and(|c| c.is_alphanumeric() || c == '_');
                    word_start && used.iter().any(|u| after_path[i..].starts_with(u.as_str()))
                });
                if called {
                    routes.insert((method.to_uppercase(), path.to_owned()));
                }
            }
        }
    }
    routes
}

async fn document(app: &TestApp) -> Value {
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

#[tokio::test]
async fn the_document_is_served_snapshotted_and_lists_every_route_of_the_router() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    // Undocumented on purpose: the document itself, its page, the web console.
    let undocumented: BTreeSet<(String, String)> = [
        "/openapi.json",
        "/docs",
        "/",
        "/console/app.js",
        "/console/style.css",
        "/console/vendor/uPlot.esm.js",
        "/console/vendor/uPlot.min.css",
    ]
    .into_iter()
    .map(|path| ("GET".to_owned(), path.to_owned()))
    .collect();
    assert_eq!(declared_routes(), undocumented);
    let ops = documented(&doc);
    assert!(ops.len() >= 75, "{ops:?}");
    // Request bodies are described by their schemas.
    let create_job = &doc["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"];
    assert_eq!(create_job["$ref"], "#/components/schemas/CreateJob");
    let page = app.get("/docs").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("/openapi.json"));
    insta::assert_json_snapshot!(doc);
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    for (method, path) in documented(&doc) {
        let concrete = path
            .split('/')
            .map(|part| if part.starts_with('{') { "x" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        let response = app
            .send(Method::from_bytes(method.as_bytes()).unwrap(), &concrete)
            .await;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            !body.contains("there is no such route"),
            "{method} {path} is not served"
        );
        assert!(status.as_u16() < 500, "{method} {path}: {status} {body}");
    }
}

#[tokio::test]
async fn every_problem_code_the_code_answers_is_in_the_document() {
    let mut codes = BTreeSet::new();
    let quoted = |text: &str| -> Vec<String> {
        text.split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .map(str::to_owned)
            .collect()
    };
    // The domain crates, and the contexts in crates of their own.
    for (_, text) in source("domain").into_iter().chain(source("contexts")) {
        for part in text.split("fn rule_code(&self)").skip(1) {
            codes.extend(quoted(part.split("fn refusal").next().unwrap()));
        }
        for part in text.split("fn code(&self) -> &'static str {").skip(1) {
            codes.extend(quoted(part.split("\n    }").next().unwrap()));
        }
        // `domain_rules!` rows: `pattern => Kind` or `pattern => Kind(arguments)`.
        for table in text.split("domain_rules!(").skip(1) {
            let table = table.split("\n});").next().unwrap();
            for row in table.split("=> ").skip(1) {
                let kind: String = row.chars().take_while(char::is_ascii_alphabetic).collect();
                let arguments: Vec<String> = row
                    .split(')')
                    .next()
                    .unwrap()
                    .split('"')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect();
                codes.insert(match (kind.as_str(), arguments.as_slice()) {
                    ("NotFound", []) => "not_found".to_owned(),
                    ("Forbidden", []) => "forbidden".to_owned(),
                    ("Invalid", [_, code]) => code.clone(),
                    ("Invalid", _) => "validation_failed".to_owned(),
                    (_, [code]) => code.clone(),
                    _ => panic!("a domain_rules! row this test does not read: {row}"),
                });
            }
        }
    }
    for (file, text) in source("gateway/src").into_iter().chain(source("contexts")) {
        for marker in [
            "ApiError::new(",
            "ApiError::bad_request(",
            "ApiError::unprocessable(",
            "Self::new(",
            "Self::bad_request(",
            "Self::unprocessable(",
        ] {
            for part in text.split(marker).skip(1) {
                let head: String = part.chars().take(120).collect();
                if let Some(code) = quoted(&head).first() {
                    codes.insert(code.clone());
                }
            }
        }
        if file.ends_with("error.rs") {
            for part in text.split("=> \"").skip(1) {
                let code: String = part.chars().take_while(|c| *c != '"').collect();
                if code.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    codes.insert(code);
                }
            }
        }
    }
    // What a client sees: the served document's enumeration of `Problem.code`, assembled
    // from the host's codes and each context's.
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let listed: BTreeSet<String> = doc["components"]["schemas"]["Problem"]["properties"]["code"]
        ["enum"]
        .as_array()
        .expect("Problem.code is an enumeration")
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let missing: Vec<_> = codes.difference(&listed).collect();
    assert!(missing.is_empty(), "codes the document lacks: {missing:?}");
    let unanswered: Vec<_> = listed.difference(&codes).collect();
    assert!(
        unanswered.is_empty(),
        "codes the document lists that no code answers: {unanswered:?}"
    );
    assert!(listed.len() >= 60);
    assert_eq!(
        listed.into_iter().collect::<Vec<_>>(),
        chronicle_gateway::problem_codes(&chronicle::contexts::hosted()),
        "the same, sorted, as the gateway declares them"
    );
}

/// The fields an operation's documented answer names (`200: {"a","b"?}` or `200:
/// [{"a"}]`), without the optional ones (`?`): what a real answer must carry.
fn documented_fields(
    doc: &Value,
    method: &str,
    template: &str,
    status: u16,
) -> Option<(bool, Vec<String>)> {
    let description = doc["paths"][template][method.to_lowercase()]["responses"]
        [status.to_string()]["description"]
        .as_str()?;
    let text = description.split_once(": ")?.1;
    let list = text.starts_with("[{");
    let object = if list { &text[1..] } else { text };
    if !object.starts_with('{') {
        return None;
    }
    let inner = &object[1..object.find('}')?];
    let fields = inner
        .split(',')
        .filter(|f| !f.ends_with('?') && !f.contains(':') && f.starts_with('"'))
        .map(|f| f.trim_matches('"').to_owned())
        .filter(|f| !f.is_empty() && f != "...")
        .collect();
    Some((list, fields))
}

#[tokio::test]
async fn the_documented_answers_name_fields_the_real_answers_have() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let mut checked = 0;
    let mut wrong = Vec::new();
    let call = |method: &str, template: &str, path: String, body: Option<Value>| {
        let app = &app;
        let doc = &doc;
        let method = method.to_owned();
        let template = template.to_owned();
        async move {
            let mut request = app.request(Method::from_bytes(method.as_bytes()).unwrap(), &path);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            let mut problems = Vec::new();
            let mut done = false;
            if let Some((list, fields)) = documented_fields(doc, &method, &template, status) {
                let sample = if list {
                    answer.get(0).cloned().unwrap_or(Value::Null)
                } else {
                    answer.clone()
                };
                if !sample.is_null() {
                    done = true;
                    for field in fields {
                        if sample.get(&field).is_none() {
                            problems.push(format!(
                                "{method} {template} {status}: no {field:?} in {answer}"
                            ));
                        }
                    }
                }
            }
            (answer, problems, done)
        }
    };
    macro_rules! run {
        ($m:expr, $t:expr, $p:expr, $b:expr) => {{
            let (answer, problems, done) = call($m, $t, $p, $b).await;
            wrong.extend(problems);
            checked += usize::from(done);
            answer
        }};
    }
    use serde_json::json;
    let me = app.user_id.clone();
    run!(
        "GET",
        "/api/v1/users/{id}",
        format!("/api/v1/users/{me}"),
        None
    );
    run!(
        "PATCH",
        "/api/v1/users/{id}",
        format!("/api/v1/users/{me}"),
        Some(json!({"display_name": "D"}))
    );
    run!(
        "POST",
        "/api/v1/auth/login",
        "/api/v1/auth/login".into(),
        Some(json!({"username": "tester", "password": "correct horse"}))
    );
    run!(
        "POST",
        "/api/v1/inventory/items",
        "/api/v1/inventory/items".into(),
        Some(json!({"sku": "O-1", "name": "O", "price_cents": 100, "initial_stock": 9}))
    );
    run!(
        "POST",
        "/api/v1/inventory/items/{sku}/receive",
        "/api/v1/inventory/items/O-1/receive".into(),
        Some(json!({"quantity": 1}))
    );
    run!(
        "GET",
        "/api/v1/inventory/items/{sku}",
        "/api/v1/inventory/items/O-1?min_version=2".into(),
        None
    );
    run!(
        "GET",
        "/api/v1/inventory/items",
        "/api/v1/inventory/items".into(),
        None
    );
    run!(
        "POST",
        "/api/v1/coupons",
        "/api/v1/coupons".into(),
        Some(json!({"code": "OFF5", "percent_off": 5, "max_redemptions": 3}))
    );
    run!(
        "GET",
        "/api/v1/coupons/{code}",
        "/api/v1/coupons/OFF5".into(),
        None
    );
    let order = run!(
        "POST",
        "/api/v1/orders",
        "/api/v1/orders".into(),
        Some(json!({"lines": [{"sku": "O-1", "quantity": 1}]}))
    );
    let order = order["id"].as_str().unwrap_or_default().to_owned();
    run!(
        "GET",
        "/api/v1/orders/{id}",
        format!("/api/v1/orders/{order}?min_version=2"),
        None
    );
    run!("GET", "/api/v1/orders", "/api/v1/orders".into(), None);
    run!(
        "POST",
        "/api/v1/orders/{id}/cancel",
        format!("/api/v1/orders/{order}/cancel"),
        None
    );
    let post = run!(
        "POST",
        "/api/v1/posts",
        "/api/v1/posts".into(),
        Some(json!({"title": "T", "body_markdown": "b", "tags": ["x"]}))
    );
    let post = post["id"].as_str().unwrap_or_default().to_owned();
    run!(
        "PATCH",
        "/api/v1/posts/{id}",
        format!("/api/v1/posts/{post}"),
        Some(json!({"title": "T2"}))
    );
    run!(
        "POST",
        "/api/v1/posts/{id}/publish",
        format!("/api/v1/posts/{post}/publish"),
        None
    );
    run!(
        "GET",
        "/api/v1/posts/{id}",
        format!("/api/v1/posts/{post}?min_version=3"),
        None
    );
    run!(
        "POST",
        "/api/v1/posts/{id}/comments",
        format!("/api/v1/posts/{post}/comments"),
        Some(json!({"body": "c"}))
    );
    run!(
        "GET",
        "/api/v1/posts/{id}/comments",
        format!("/api/v1/posts/{post}/comments"),
        None
    );
    run!("GET", "/api/v1/posts", "/api/v1/posts".into(), None);
    run!("GET", "/api/v1/tags", "/api/v1/tags".into(), None);
    let room = run!(
        "POST",
        "/api/v1/rooms",
        "/api/v1/rooms".into(),
        Some(json!({"kind": "group", "name": "R", "members": []}))
    );
    let room = room["id"].as_str().unwrap_or_default().to_owned();
    run!(
        "POST",
        "/api/v1/rooms/{id}/messages",
        format!("/api/v1/rooms/{room}/messages"),
        Some(json!({"body": "hi", "client_msg_id": "c1"}))
    );
    run!(
        "GET",
        "/api/v1/rooms/{id}/messages",
        format!("/api/v1/rooms/{room}/messages"),
        None
    );
    run!("GET", "/api/v1/rooms", "/api/v1/rooms".into(), None);
    run!(
        "GET",
        "/api/v1/users/{id}/presence",
        format!("/api/v1/users/{me}/presence"),
        None
    );
    let job = run!(
        "POST",
        "/api/v1/jobs",
        "/api/v1/jobs".into(),
        Some(
            json!({"name": "j", "schedule": {"after_seconds": 3600}, "action": {"kind": "command", "command": "noop"}})
        )
    );
    let job = job["id"].as_str().unwrap_or_default().to_owned();
    run!(
        "GET",
        "/api/v1/jobs/{id}",
        format!("/api/v1/jobs/{job}?min_version=1"),
        None
    );
    run!("GET", "/api/v1/jobs", "/api/v1/jobs".into(), None);
    run!(
        "POST",
        "/api/v1/jobs/{id}/pause",
        format!("/api/v1/jobs/{job}/pause"),
        None
    );
    run!(
        "POST",
        "/api/v1/jobs/{id}/resume",
        format!("/api/v1/jobs/{job}/resume"),
        None
    );
    run!(
        "POST",
        "/api/v1/monitoring/samples",
        "/api/v1/monitoring/samples".into(),
        Some(json!([{"metric": "o_m", "value": 1}]))
    );
    run!(
        "GET",
        "/api/v1/monitoring/query",
        "/api/v1/monitoring/query?metric=o_m".into(),
        None
    );
    run!(
        "GET",
        "/api/v1/monitoring/metrics",
        "/api/v1/monitoring/metrics".into(),
        None
    );
    let rule = run!(
        "POST",
        "/api/v1/monitoring/rules",
        "/api/v1/monitoring/rules".into(),
        Some(json!({"name": "r", "metric": "o_m", "agg": "max", "op": ">", "threshold": 100}))
    );
    let rule = rule["id"].as_str().unwrap_or_default().to_owned();
    run!(
        "PATCH",
        "/api/v1/monitoring/rules/{id}",
        format!("/api/v1/monitoring/rules/{rule}"),
        Some(json!({"threshold": 200}))
    );
    run!(
        "GET",
        "/api/v1/projections",
        "/api/v1/projections".into(),
        None
    );
    run!(
        "POST",
        "/api/v1/projections/{name}/retry",
        "/api/v1/projections/users/retry".into(),
        Some(json!({}))
    );
    let file = crate::common::post_file(
        &app.http,
        &app.base,
        &app.token,
        b"doc".to_vec(),
        "d.txt",
        "text/plain",
    )
    .await;
    let file: Value = file.json().await.unwrap();
    let file = file["id"].as_str().unwrap_or_default().to_owned();
    run!(
        "GET",
        "/api/v1/files/{id}",
        format!("/api/v1/files/{file}"),
        None
    );
    run!("GET", "/api/v1/files", "/api/v1/files".into(), None);
    run!(
        "POST",
        "/api/v1/files/{id}/shares",
        format!("/api/v1/files/{file}/shares"),
        Some(json!({"expires_in_seconds": 60}))
    );
    run!(
        "POST",
        "/api/v1/files/uploads",
        "/api/v1/files/uploads".into(),
        Some(
            json!({"name": "u.bin", "size": 10, "sha256": "a".repeat(64), "content_type": "application/octet-stream"})
        )
    );
    assert!(
        wrong.is_empty(),
        "documented fields the real answers lack:\n{}",
        wrong.join("\n")
    );
    assert!(checked >= 30, "only {checked} answers were checked");
}
