//! The event contracts against real events (issue 15): every event a flow through every
//! context stores is valid against the JSON Schema `chronicle schemas export` writes for
//! its type and version, and every aggregate type it touched has a schema.

use std::{collections::BTreeSet, time::Duration};

use chronicle::contexts::contracts as event_contracts;
use chronicle_tests::{eventually, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::post_file;

async fn created(app: &TestApp, path: &str, body: Value) -> Value {
    let response = app.post(path, body.clone()).await;
    assert!(
        response.status().is_success(),
        "{path} {body}: {}",
        response.status()
    );
    response.json().await.unwrap_or(Value::Null)
}

#[tokio::test]
async fn every_stored_event_of_a_flow_through_every_context_matches_its_schema() {
    let app = TestApp::spawn().await;
    let (bob, _) = app.register_and_login("bob").await;
    // Identity, commerce (item, coupon, orders paid and cancelled), through the saga.
    app.request(
        reqwest::Method::PATCH,
        &format!("/api/v1/users/{}", app.user_id),
    )
    .json(&json!({"display_name": "Tess"}))
    .send()
    .await
    .unwrap();
    created(
        &app,
        "/api/v1/inventory/items",
        json!({"sku": "C-1", "name": "Cup", "price_cents": 900, "initial_stock": 10}),
    )
    .await;
    created(
        &app,
        "/api/v1/coupons",
        json!({"code": "TENOFF", "percent_off": 10, "max_redemptions": 5}),
    )
    .await;
    let paid = created(
        &app,
        "/api/v1/orders",
        json!({"lines": [{"sku": "C-1", "quantity": 2}], "coupon_code": "TENOFF"}),
    )
    .await;
    let paid = paid["id"].as_str().unwrap().to_owned();
    let cancelled = created(
        &app,
        "/api/v1/orders",
        json!({"lines": [{"sku": "C-1", "quantity": 1}]}),
    )
    .await;
    let cancelled = cancelled["id"].as_str().unwrap().to_owned();
    for order in [&paid, &cancelled] {
        eventually("the saga to reserve", Duration::from_secs(20), || async {
            let o: Value = app
                .get(&format!("/api/v1/orders/{order}"))
                .await
                .json()
                .await
                .ok()?;
            (o["status"] == "reserved").then_some(())
        })
        .await;
    }
    let total = {
        let o: Value = app.get_json(&format!("/api/v1/orders/{paid}")).await;
        o["total_cents"].as_i64().unwrap()
    };
    created(
        &app,
        &format!("/api/v1/orders/{paid}/pay"),
        json!({"amount_cents": total}),
    )
    .await;
    created(
        &app,
        &format!("/api/v1/orders/{cancelled}/cancel"),
        json!({}),
    )
    .await;
    // The catalog edited, a cart filled, changed, emptied and checked out.
    let edited = app
        .send_json(
            reqwest::Method::PATCH,
            "/api/v1/inventory/items/C-1",
            &json!({"name": "Mug", "price_cents": 950, "description": "Stoneware"}),
        )
        .await;
    assert_eq!(edited.status(), StatusCode::OK);
    created(
        &app,
        "/api/v1/inventory/items",
        json!({"sku": "C-2", "name": "Saucer", "price_cents": 300, "initial_stock": 3}),
    )
    .await;
    for (method, path, body) in [
        ("PUT", "/api/v1/cart/items/C-2", json!({"quantity": 1})),
        ("DELETE", "/api/v1/cart/items/C-2", Value::Null),
        ("PUT", "/api/v1/cart/items/C-1", json!({"quantity": 1})),
        ("DELETE", "/api/v1/cart", Value::Null),
        ("PUT", "/api/v1/cart/items/C-1", json!({"quantity": 2})),
        ("POST", "/api/v1/cart/checkout", json!({})),
        (
            "POST",
            "/api/v1/inventory/items/C-2/discontinue",
            Value::Null,
        ),
    ] {
        let mut request = app.request(method.parse().unwrap(), path);
        if !body.is_null() {
            request = request.json(&body);
        }
        let answer = request.send().await.unwrap();
        assert!(
            answer.status().is_success(),
            "{method} {path}: {}",
            answer.status()
        );
    }
    // Blog: a post, published, commented, the comment deleted.
    let post = created(
        &app,
        "/api/v1/posts",
        json!({"title": "Hello", "body_markdown": "**hi**", "tags": ["a"]}),
    )
    .await;
    let post = post["id"].as_str().unwrap().to_owned();
    created(&app, &format!("/api/v1/posts/{post}/publish"), json!({})).await;
    let comment = created(
        &app,
        &format!("/api/v1/posts/{post}/comments"),
        json!({"body": "Nice"}),
    )
    .await;
    let comment = comment["id"].as_str().unwrap().to_owned();
    let deleted = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/posts/{post}/comments/{comment}"),
        )
        .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    // Chat: a room, a message, a read mark.
    let room = created(
        &app,
        "/api/v1/rooms",
        json!({"kind": "group", "name": "Team", "members": [bob]}),
    )
    .await;
    let room = room["id"].as_str().unwrap().to_owned();
    created(
        &app,
        &format!("/api/v1/rooms/{room}/messages"),
        json!({"body": "hi", "client_msg_id": "m1"}),
    )
    .await;
    created(
        &app,
        &format!("/api/v1/rooms/{room}/read"),
        json!({"up_to_seq": 1}),
    )
    .await;
    // Files: one stored, shared.
    let file = post_file(
        &app.http,
        &app.base,
        &app.token,
        b"hello".to_vec(),
        "a.txt",
        "text/plain",
    )
    .await;
    assert_eq!(file.status(), StatusCode::CREATED);
    let file: Value = file.json().await.unwrap();
    created(
        &app,
        &format!("/api/v1/files/{}/shares", file["id"].as_str().unwrap()),
        json!({"expires_in_seconds": 60}),
    )
    .await;
    // Scheduler: a one-shot job that runs.
    let job = created(&app, "/api/v1/jobs", json!({"name": "once", "schedule": {"after_seconds": 0}, "action": {"kind": "command", "command": "noop"}})).await;
    let job = job["id"].as_str().unwrap().to_owned();
    eventually("the job to run", Duration::from_secs(20), || async {
        let runs: Value = app
            .get(&format!("/api/v1/jobs/{job}/runs"))
            .await
            .json()
            .await
            .ok()?;
        (runs["items"][0]["outcome"] == "succeeded").then_some(())
    })
    .await;
    // Monitoring: a rule that fires at once.
    let rule = created(&app, "/api/v1/monitoring/rules", json!({"name": "any", "metric": "c_depth", "agg": "max", "window_seconds": 10, "op": ">=", "threshold": 0})).await;
    let rule = rule["id"].as_str().unwrap().to_owned();
    created(
        &app,
        "/api/v1/monitoring/samples",
        json!([{"metric": "c_depth", "value": 1}]),
    )
    .await;
    eventually("the alert to fire", Duration::from_secs(20), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM monitoring.events WHERE aggregate_id = $1 AND event_type = 'AlertFiring'",
        )
        .bind(&rule)
        .fetch_one(&app.pool)
        .await
        .ok()?;
        (n == 1).then_some(())
    })
    .await;

    let validators: Vec<(String, String, jsonschema::Validator)> = event_contracts()
        .into_iter()
        .map(|c| {
            let validator = jsonschema::validator_for(&c.schema)
                .unwrap_or_else(|e| panic!("{}: not a valid schema: {e}", c.file_name()));
            (c.event_type, c.version, validator)
        })
        .collect();
    let events: Vec<(String, String, String, Value)> = sqlx::query_as(&format!(
        "SELECT aggregate_type, event_type, event_version, payload::jsonb FROM ({}) e \
         ORDER BY aggregate_type, aggregate_id, sequence",
        chronicle_tests::every_context("*", "events")
    ))
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut types = BTreeSet::new();
    for (aggregate_type, event_type, version, stored) in &events {
        types.insert(aggregate_type.clone());
        let payload = &stored[event_type.as_str()];
        let (_, _, validator) = validators
            .iter()
            .find(|(t, v, _)| t == event_type && v == version)
            .unwrap_or_else(|| panic!("no schema for {event_type} v{version}"));
        let errors: Vec<String> = validator
            .iter_errors(payload)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{event_type} v{version} {payload}: {errors:?}"
        );
    }
    let touched: Vec<&str> = types.iter().map(String::as_str).collect();
    assert_eq!(
        touched,
        [
            "cart",
            "comment",
            "coupon",
            "file",
            "inventory_item",
            "job",
            "order",
            "post",
            "room",
            "rule",
            "share",
            "user"
        ],
        "{} events",
        events.len()
    );
}

#[test]
fn every_event_type_and_version_has_examples_that_match_its_schema() {
    for contract in event_contracts() {
        let name = contract.file_name();
        let examples = contract.schema["examples"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no examples"));
        assert!(!examples.is_empty(), "{name} has no examples");
        let validator = jsonschema::validator_for(&contract.schema)
            .unwrap_or_else(|e| panic!("{name}: not a valid schema: {e}"));
        for example in examples {
            let errors: Vec<String> = validator
                .iter_errors(example)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{name}: {example}: {errors:?}");
        }
    }
}
