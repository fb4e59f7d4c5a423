//! Tracing over OTLP (issue 15): with `OTEL_EXPORTER_OTLP_ENDPOINT` set, `chronicle up`
//! exports its spans, and one trace runs from the HTTP request through the command, the
//! relay's publish (the context in the outbox row, then in the NATS header), the order
//! saga and the projector, to the command the saga issues. The export is received here, as
//! OTLP/HTTP JSON, and the span tree checked.

mod common;
#[path = "common/gateways.rs"]
#[allow(dead_code)] // only `user` is used here
mod gateways;

use chronicle_tests::ReadJson;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chronicle_tests::{eventually, TestDb, TestNats};
use common::start_gateway;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
struct Span {
    trace: String,
    id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
}

fn spans_of(export: &Value) -> Vec<Span> {
    let mut spans = Vec::new();
    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let attributes = span["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        let value = &a["value"];
                        let text = value["stringValue"]
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| value.to_string());
                        (a["key"].as_str().unwrap_or_default().to_owned(), text)
                    })
                    .collect();
                spans.push(Span {
                    trace: span["traceId"].as_str().unwrap_or_default().to_owned(),
                    id: span["spanId"].as_str().unwrap_or_default().to_owned(),
                    parent: span["parentSpanId"].as_str().unwrap_or_default().to_owned(),
                    name: span["name"].as_str().unwrap_or_default().to_owned(),
                    attributes,
                });
            }
        }
    }
    spans
}

/// Whether `ancestor` is `span` or above it in `spans`.
fn descends(spans: &HashMap<String, Span>, span: &Span, ancestor: &Span) -> bool {
    let mut current = Some(span);
    while let Some(s) = current {
        if s.id == ancestor.id {
            return true;
        }
        current = spans.get(&s.parent);
    }
    false
}

#[tokio::test]
async fn one_trace_runs_from_the_request_through_the_relay_and_the_saga_to_its_commands() {
    // The OTLP receiver: every export, as JSON.
    let exports: Arc<Mutex<Vec<Value>>> = Arc::default();
    let received = exports.clone();
    let receiver = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let received = received.clone();
            async move {
                if let Ok(export) = serde_json::from_slice::<Value>(&body) {
                    received.lock().unwrap().push(export);
                }
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let (db, nats) = (TestDb::new().await, TestNats::start());
    let data = tempfile::tempdir().unwrap();
    let mut up = common::up_on(&db, &nats, data.path());
    up.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200");
    let (_chronicle, base, _) = start_gateway(up);
    let http = reqwest::Client::new();
    let (_, token) = gateways::user(&http, &base, "tracy").await;
    let item = chronicle_tests::send_as(
        &http,
        reqwest::Method::POST,
        format!("{base}/api/v1/inventory/items"),
        &token,
        Some(&json!({"sku": "T-1", "name": "Tea", "price_cents": 300, "initial_stock": 5})),
    )
    .await;
    assert!(item.status().is_success());
    let placed: Value = http
        .post(format!("{base}/api/v1/orders"))
        .bearer_auth(&token)
        .json(&json!({"lines": [{"sku": "T-1", "quantity": 2}]}))
        .read_json()
        .await;
    let order = placed["id"].as_str().unwrap().to_owned();

    let (all, request) = eventually("the order's trace", Duration::from_secs(60), || async {
        let spans: Vec<Span> = exports.lock().unwrap().iter().flat_map(spans_of).collect();
        let request = spans
            .iter()
            .find(|s| {
                s.name == "request"
                    && s.attributes.get("path").map(String::as_str) == Some("/api/v1/orders")
                    && s.attributes.get("method").map(String::as_str) == Some("POST")
            })?
            .clone();
        let in_trace: Vec<&Span> = spans.iter().filter(|s| s.trace == request.trace).collect();
        let saga_command = in_trace.iter().any(|s| {
            s.name == "command"
                && s.attributes.get("aggregate").map(String::as_str) == Some("inventory_item")
        });
        let handled_by = |name: &str| {
            in_trace.iter().any(|s| {
                s.name == "subscriber.handle"
                    && s.attributes.get("subscriber").map(String::as_str) == Some(name)
            })
        };
        // A span is exported when it ends: the saga's ends after the commands it issues.
        (saga_command && handled_by("orders") && handled_by("saga-orders"))
            .then(|| (spans.clone(), request))
    })
    .await;
    let trace: HashMap<String, Span> = all
        .iter()
        .filter(|s| s.trace == request.trace)
        .map(|s| (s.id.clone(), s.clone()))
        .collect();
    let is = |s: &Span, name: &str, key: &str, value: &str| {
        s.name == name && s.attributes.get(key).map(String::as_str) == Some(value)
    };
    // Each step is found as a descendant of the one before: the order's own event (not
    // the saga's later ones on the same order) and what followed from it.
    let command = trace
        .values()
        .find(|s| {
            is(s, "command", "aggregate", "order")
                && descends(&trace, s, &request)
                && s.attributes.get("id") == Some(&order)
                && !trace
                    .values()
                    .any(|sub| sub.name == "subscriber.handle" && descends(&trace, s, sub))
        })
        .unwrap_or_else(|| panic!("no command span under the request in {trace:#?}"))
        .clone();
    // The relay's publish of the command's event (a publish retried as single messages
    // after a refused batch has a span per attempt).
    let relays: Vec<&Span> = trace
        .values()
        .filter(|s| s.name == "relay.publish" && s.parent == command.id)
        .collect();
    assert!(
        !relays.is_empty(),
        "no relay publish under the command in {trace:#?}"
    );
    let under_a_publish = |s: &Span| relays.iter().any(|r| r.id == s.parent);
    let saga = trace
        .values()
        .find(|s| is(s, "subscriber.handle", "subscriber", "saga-orders") && under_a_publish(s))
        .unwrap_or_else(|| panic!("no saga span under the publish in {trace:#?}"))
        .clone();
    let projector = trace
        .values()
        .find(|s| is(s, "subscriber.handle", "subscriber", "orders") && under_a_publish(s))
        .unwrap_or_else(|| panic!("no projector span under the publish in {trace:#?}"));
    let reserve = trace
        .values()
        .find(|s| is(s, "command", "aggregate", "inventory_item") && descends(&trace, s, &saga))
        .unwrap_or_else(|| panic!("no saga command under the saga in {trace:#?}"));
    // The whole chain, from the saga's command up to the request.
    assert!(descends(&trace, reserve, &request));
    assert!(descends(&trace, projector, &request));
}
