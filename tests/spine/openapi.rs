//! The OpenAPI document (issue 15): served at `/openapi.json` (and listed at `/docs`),
//! snapshotted, and checked against the code both ways: every route the router's source
//! declares is in it, every operation in it is served, and every problem `code` the code can
//! answer is in its `Problem` schema.

use std::collections::BTreeSet;

use chronicle_tests::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::Value;

fn source(dir: &str) -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(dir);
    let mut files = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push((
                    path.display().to_string(),
                    std::fs::read_to_string(&path).unwrap(),
                ));
            }
        }
    }
    files
}

/// `(METHOD, path)` of every `.route("path", method(handler)...)` in the gateway's source.
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
    let mut declared = declared_routes();
    // The document's own routes are not in it.
    declared.remove(&("GET".into(), "/openapi.json".into()));
    declared.remove(&("GET".into(), "/docs".into()));
    assert!(declared.len() >= 75, "{declared:?}");
    let ops = documented(&doc);
    let missing: Vec<_> = declared.difference(&ops).collect();
    assert!(missing.is_empty(), "routes the document lacks: {missing:?}");
    let extra: Vec<_> = ops.difference(&declared).collect();
    assert!(extra.is_empty(), "operations no route serves: {extra:?}");
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
            .request(Method::from_bytes(method.as_bytes()).unwrap(), &concrete)
            .send()
            .await
            .unwrap();
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

#[test]
fn every_problem_code_the_code_answers_is_in_the_document() {
    let mut codes = BTreeSet::new();
    let quoted = |text: &str| -> Vec<String> {
        text.split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .map(str::to_owned)
            .collect()
    };
    for (_, text) in source("domain") {
        for part in text.split("fn rule_code(&self)").skip(1) {
            codes.extend(quoted(part.split("fn refusal").next().unwrap()));
        }
        for part in text.split("fn code(&self) -> &'static str {").skip(1) {
            codes.extend(quoted(part.split("\n    }").next().unwrap()));
        }
    }
    for (file, text) in source("gateway/src") {
        for marker in ["ApiError::new(", "ApiError::bad_request(", "Self::new("] {
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
    let listed: BTreeSet<String> = chronicle_gateway::PROBLEM_CODES
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    let missing: Vec<_> = codes.difference(&listed).collect();
    assert!(missing.is_empty(), "codes the document lacks: {missing:?}");
    assert!(listed.len() >= 60);
}
