//! Jobs triggered by events (the API contract, Scheduler, "Jobs triggered by events"; issue 32):
//! one run per matching event that comes after the job in the log, in log order, with the
//! event's envelope for an HTTP action without a body; retries that never hold back the next
//! event for good; a pause's events recorded as one skipped row; refusals. (Several
//! scheduler processes killed while events stream in: `chronicle/tests/scheduler_processes.rs`.)

use std::time::Duration;

use chronicle_commands::CommandContext;
use chronicle_commerce::{InventoryCommand, InventoryItem};
use chronicle_tests::{eventually, Hook, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{
    assert_replays_byte_for_byte, invalid_fields, inventory, post_receipt, problem, receipt,
};

/// A job run for every `StockReceived` of commerce, calling `path` of `hook`.
fn on_stock(hook: &Hook, path: &str, extra: Value) -> Value {
    let mut job = json!({
        "name": "restocked",
        "schedule": {"on_event": {"types": ["StockReceived"], "context": "commerce"}},
        "action": {"kind": "http", "url": format!("{}{path}", hook.url), "method": "POST"},
        "backoff_seconds": 1,
    });
    if let (Some(job), Value::Object(extra)) = (job.as_object_mut(), extra) {
        job.extend(extra);
    }
    job
}

async fn create(app: &TestApp, job: Value) -> String {
    let r = app.post("/api/v1/jobs", job.clone()).await;
    let id = chronicle_tests::created_id(r).await;
    let seen = app.get(&format!("/api/v1/jobs/{id}?min_version=1")).await;
    assert_eq!(seen.headers()["chronicle-consistency"], "fresh");
    id
}

/// The job's runs, oldest first, once there are `n` and none of them still runs.
async fn settled_runs(app: &TestApp, id: &str, n: usize) -> Vec<Value> {
    eventually(
        &format!("{n} runs of {id}"),
        Duration::from_secs(60),
        || async {
            let page: Value = app
                .get(&format!("/api/v1/jobs/{id}/runs?limit=200"))
                .await
                .json()
                .await
                .ok()?;
            let mut runs = page["items"].as_array()?.clone();
            runs.reverse();
            let settled = runs.iter().all(|r| r["outcome"] != "running");
            (runs.len() == n && settled).then_some(runs)
        },
    )
    .await
}

fn seq(run: &Value) -> u64 {
    run["event"]["stream_seq"].as_u64().unwrap()
}

#[tokio::test]
async fn a_job_runs_once_for_each_later_event_in_log_order_and_gets_its_envelope() {
    let app = TestApp::spawn().await;
    let hook = Hook::start(|_, _| (200, Duration::ZERO)).await;
    app.create_item("EV-1", "Lamp", 100, 1).await;
    // Before the job: never run for.
    post_receipt(&app, "EV-1", 100).await;
    let id = create(&app, on_stock(&hook, "/restocked", json!({}))).await;
    let shown: Value = app.get_json(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(
        shown["schedule"],
        json!({"on_event": {"types": ["StockReceived"], "context": "commerce"}})
    );
    assert_eq!(shown["status"], "scheduled");
    for quantity in 1..=5 {
        post_receipt(&app, "EV-1", quantity).await;
    }
    // Another type, and the same type's name in another aggregate's events: not run for.
    app.create_item("EV-2", "Wick", 100, 1).await;
    let runs = settled_runs(&app, &id, 5).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bodies = hook.bodies("/restocked");
    assert_eq!(bodies.len(), 5, "one call per event, no more");
    // Each call carries its event's envelope, in log order.
    let envelopes: Vec<Value> = bodies
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    let quantities: Vec<u64> = envelopes
        .iter()
        .map(|e| e["payload"]["quantity"].as_u64().unwrap())
        .collect();
    assert_eq!(quantities, [1, 2, 3, 4, 5]);
    for (run, envelope) in runs.iter().zip(&envelopes) {
        assert_eq!(run["outcome"], "succeeded");
        assert_eq!(run["event"]["type"], "StockReceived");
        assert_eq!(run["event"]["aggregate_id"], "EV-1");
        assert_eq!(envelope["event_type"], "StockReceived");
        assert_eq!(envelope["aggregate_id"], "EV-1");
    }
    let seqs: Vec<u64> = runs.iter().map(seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "log order: {seqs:?}");
    let job: Value = app.get_json(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "scheduled", "it waits for the next event");
}

#[tokio::test]
async fn a_failing_event_is_retried_then_recorded_failed_and_the_next_event_runs() {
    let app = TestApp::spawn().await;
    // The first event's two attempts fail; everything after succeeds.
    let hook = Hook::start(|_, n| (if n <= 2 { 500 } else { 200 }, Duration::ZERO)).await;
    app.create_item("EV-3", "Lamp", 100, 1).await;
    let id = create(&app, on_stock(&hook, "/flaky", json!({"max_retries": 1}))).await;
    post_receipt(&app, "EV-3", 1).await;
    post_receipt(&app, "EV-3", 2).await;
    let runs = settled_runs(&app, &id, 3).await;
    let outcomes: Vec<&str> = runs
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "gave_up", "succeeded"], "{runs:?}");
    let attempts: Vec<i64> = runs
        .iter()
        .map(|r| r["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 1]);
    assert_eq!(
        seq(&runs[0]),
        seq(&runs[1]),
        "the retry is for the same event"
    );
    assert!(seq(&runs[2]) > seq(&runs[1]), "then the next event");
    assert_eq!(hook.hits("/flaky").len(), 3);
}

/// Reads job `id` back at the version `answer` (its pause or resume, 200) gave, so that
/// what the client does next reaches the log after it.
async fn read_back(app: &TestApp, id: &str, answer: reqwest::Response) {
    assert_eq!(answer.status(), StatusCode::OK);
    let version = answer.json::<Value>().await.unwrap()["version"].clone();
    let read = app
        .get(&format!("/api/v1/jobs/{id}?min_version={version}"))
        .await;
    assert_eq!(read.headers()["chronicle-consistency"], "fresh");
}

#[tokio::test]
async fn events_while_paused_are_skipped_as_one_row_and_later_ones_run() {
    let app = TestApp::spawn().await;
    let hook = Hook::start(|_, _| (200, Duration::ZERO)).await;
    app.create_item("EV-4", "Lamp", 100, 1).await;
    let id = create(&app, on_stock(&hook, "/paused", json!({}))).await;
    post_receipt(&app, "EV-4", 1).await;
    settled_runs(&app, &id, 1).await;
    // What the pause skips is what comes after it in the log. Each context publishes its
    // own outbox, so a receipt committed just after the pause could still reach the log
    // before it: a client that means "after the pause" reads the pause back first.
    let paused = app
        .send(Method::POST, &format!("/api/v1/jobs/{id}/pause"))
        .await;
    read_back(&app, &id, paused).await;
    for quantity in [2, 3, 4] {
        post_receipt(&app, "EV-4", quantity).await;
    }
    // The three are in the log after the pause (one span, still open).
    let span = "SELECT coalesce(sum(skipped), 0)::bigint FROM scheduler.scheduler_triggers \
                WHERE kind = 'skipped' AND NOT closed";
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while app.scalar::<i64>(span).await != 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if waited.is_err() {
        let triggers: Vec<String> = app
            .scalars("SELECT row_to_json(t)::text FROM scheduler.scheduler_triggers t")
            .await;
        panic!("the pause's span never held the three receipts: {triggers:#?}");
    }
    // A rebuild from the log makes the same triggers.
    assert_replays_byte_for_byte(
        &app,
        "job_triggers",
        &["scheduler_event_jobs", "scheduler_triggers"],
        "DELETE FROM scheduler.scheduler_triggers",
        3,
    )
    .await;
    // As with the pause: the resume is read back before the receipt that should run, or the
    // receipt could reach the log first and be skipped with the others.
    let resumed = app
        .send(Method::POST, &format!("/api/v1/jobs/{id}/resume"))
        .await;
    read_back(&app, &id, resumed).await;
    post_receipt(&app, "EV-4", 5).await;
    let runs = settled_runs(&app, &id, 3).await;
    let outcomes: Vec<&str> = runs
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["succeeded", "skipped", "succeeded"], "{runs:?}");
    assert_eq!(runs[1]["event"]["count"], 3);
    assert!(runs[1]["event"]["from_seq"].as_u64() > Some(seq(&runs[0])));
    assert!(runs[1]["event"]["to_seq"].as_u64() < Some(seq(&runs[2])));
    let quantities: Vec<u64> = hook
        .bodies("/paused")
        .iter()
        .map(|b| {
            serde_json::from_str::<Value>(b).unwrap()["payload"]["quantity"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(quantities, [1, 5]);
}

#[tokio::test]
async fn a_thousand_events_at_once_run_once_each_in_log_order() {
    let app = TestApp::spawn().await;
    let commands = app.db.executor().await;
    let ctx = CommandContext::new();
    commands
        .execute::<InventoryItem>(
            "EV-5",
            InventoryCommand::Create {
                sku: "EV-5".into(),
                name: "Lamp".into(),
                price_cents: 100,
                initial_stock: 0,
            },
            &(),
            &ctx,
        )
        .await
        .unwrap();
    let id = create(
        &app,
        json!({"name": "burst", "schedule": {"on_event": {"types": ["StockReceived"]}},
               "action": {"kind": "command", "command": "noop"}}),
    )
    .await;
    // More than a batch of the projector (500) and of the scheduler's poll (1,000 jobs).
    for _ in 0..1_000 {
        inventory(&commands, "EV-5", receipt(1), &ctx)
            .await
            .unwrap();
    }
    let runs = eventually("1,000 runs", Duration::from_secs(120), || async {
        let runs: Vec<(String, i64)> = sqlx::query_as(
            "SELECT outcome, (event->>'stream_seq')::bigint FROM scheduler.scheduler_runs \
             WHERE job_id = $1 ORDER BY sequence",
        )
        .bind(&id)
        .fetch_all(&app.pool)
        .await
        .ok()?;
        (runs.len() >= 1_000 && runs.iter().all(|(o, _)| o == "succeeded")).then_some(runs)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seqs: Vec<i64> = runs.iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs.len(), 1_000, "one run per event");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in log order, each once"
    );
}

#[tokio::test]
async fn unknown_types_own_events_and_customers_are_refused_and_nothing_is_made() {
    let app = TestApp::spawn_with_staff(&["boss"]).await;
    let (_, boss) = app.register_and_login("boss").await;
    let hook = Hook::start(|_, _| (200, Duration::ZERO)).await;
    let before = app.event_count().await;
    let post = |token: String, job: Value| {
        let app = &app;
        async move {
            app.http
                .post(app.url("/api/v1/jobs"))
                .bearer_auth(token)
                .json(&job)
                .send()
                .await
                .unwrap()
        }
    };
    // A customer: events carry other people's data.
    problem(
        post(app.token.clone(), on_stock(&hook, "/x", json!({}))).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    for (types, context) in [
        (json!(["NoSuchEvent"]), Value::Null),
        (json!(["OrderPaid"]), json!("chat")),
        (json!(["StockReceived", "Nope"]), json!("commerce")),
    ] {
        let job = json!({"name": "x", "schedule": {"on_event": {"types": types, "context": context}},
                         "action": {"kind": "command", "command": "noop"}});
        problem(
            post(boss.clone(), job).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_event_type",
        )
        .await;
    }
    for (schedule, field) in [
        (
            json!({"on_event": {"types": []}}),
            "schedule.on_event.types",
        ),
        (
            json!({"on_event": {"types": ["RunSucceeded"]}}),
            "schedule.on_event.types",
        ),
        (
            json!({"on_event": {"types": ["Order\u{0}Paid"]}}),
            "schedule.on_event.types",
        ),
        (
            json!({"on_event": {"types": ["OrderPaid"], "context": "Commerce"}}),
            "schedule.on_event.context",
        ),
        (
            json!({"on_event": {"types": ["OrderPaid"]}, "cron": "* * * * * *"}),
            "schedule",
        ),
    ] {
        let job = json!({"name": "x", "schedule": schedule, "action": {"kind": "command", "command": "noop"}});
        assert_eq!(invalid_fields(post(boss.clone(), job).await).await, [field]);
    }
    assert_eq!(app.event_count().await, before, "nothing appended");
}
