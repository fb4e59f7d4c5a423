//! The scheduler (issue 13) through the HTTP API, with the scheduler component running as
//! `chronicle up` runs it: one-shot jobs, retries with growing delays, dependencies, pause
//! and resume, refusals. (Several scheduler processes, a killed one, and missed runs after
//! downtime are in `chronicle/tests/scheduler_processes.rs`, with real processes.)

use std::time::Duration;

use chronicle_tests::{eventually, Hook, TestApp};
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{assert_replays_byte_for_byte, invalid_fields, problem};

/// Creates `job`; returns its id once the read model shows it (`?min_version`).
async fn create(app: &TestApp, job: Value) -> String {
    let response = app.post("/api/v1/jobs", job.clone()).await;
    assert_eq!(response.status(), StatusCode::CREATED, "{job}");
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    let seen = app.get(&format!("/api/v1/jobs/{id}?min_version=1")).await;
    assert_eq!(seen.status(), StatusCode::OK);
    assert_eq!(seen.headers()["chronicle-consistency"], "fresh");
    id
}

async fn job(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/api/v1/jobs/{id}"))
        .await
        .json()
        .await
        .unwrap()
}

async fn runs(app: &TestApp, id: &str) -> Vec<Value> {
    let page: Value = app
        .get_json(&format!("/api/v1/jobs/{id}/runs?limit=200"))
        .await;
    let mut runs = page["items"].as_array().unwrap().clone();
    runs.reverse();
    runs
}

async fn with_status(app: &TestApp, id: &str, status: &str, within: Duration) -> Value {
    eventually(&format!("job {id} {status}"), within, || async {
        let job = job(app, id).await;
        (job["status"] == status).then_some(job)
    })
    .await
}

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_one_shot_job_runs_once() {
    let app = TestApp::spawn().await;
    let hook = Hook::start(|_, _| (200, Duration::ZERO)).await;
    let id = create(
        &app,
        json!({"name": "ping", "schedule": {"after_seconds": 1},
               "action": {"kind": "http", "url": format!("{}/ping", hook.url), "method": "POST",
                          "body": {"hello": "world"}}}),
    )
    .await;
    let pending = job(&app, &id).await;
    assert_eq!(pending["status"], "scheduled", "{pending}");
    assert!(pending["next_run_at"].is_string());
    // Shown as it was asked for: `after_seconds` is the instant it named.
    assert_eq!(
        pending["schedule"]["at"], pending["next_run_at"],
        "{pending}"
    );
    assert_eq!(pending["timezone"], "UTC");
    assert_eq!(
        pending["action"]["url"],
        format!("{}/ping", hook.url).as_str()
    );
    assert_eq!(pending["action"]["body"], r#"{"hello":"world"}"#);
    assert_eq!(pending["max_retries"], 3);
    assert_eq!(pending["missed"], "run_once");
    let done = with_status(&app, &id, "done", Duration::from_secs(10)).await;
    assert!(done["next_run_at"].is_null(), "{done}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(hook.hits("/ping").len(), 1);
    let runs = runs(&app, &id).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["outcome"], "succeeded");
    assert_eq!(runs[0]["attempt"], 1);
    assert!(time(&runs[0]["started_at"]) >= time(&runs[0]["due_at"]));
    let listed: Value = app.get("/api/v1/jobs").await.json().await.unwrap();
    assert_eq!(listed["items"][0]["id"], id.as_str(), "{listed}");
}

#[tokio::test]
async fn a_failing_http_action_is_retried_with_growing_delays_then_gives_up() {
    let app = TestApp::spawn().await;
    let hook = Hook::start(|_, _| (500, Duration::ZERO)).await;
    let id = create(
        &app,
        json!({"name": "flaky", "schedule": {"after_seconds": 0}, "max_retries": 3,
               "backoff_seconds": 1,
               "action": {"kind": "http", "url": format!("{}/fail", hook.url), "method": "GET"}}),
    )
    .await;
    with_status(&app, &id, "failed", Duration::from_secs(20)).await;
    let runs = runs(&app, &id).await;
    let outcomes: Vec<&str> = runs
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["failed", "failed", "failed", "gave_up"],
        "{runs:?}"
    );
    let attempts: Vec<i64> = runs
        .iter()
        .map(|r| r["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    assert!(
        runs.iter()
            .all(|r| r["error"] == "HTTP 500 Internal Server Error"),
        "{runs:?}"
    );
    let waits: Vec<i64> = runs
        .windows(2)
        .map(|w| (time(&w[1]["started_at"]) - time(&w[0]["finished_at"])).num_milliseconds())
        .collect();
    assert!(
        waits.windows(2).all(|w| w[1] > w[0]),
        "growing delays: {waits:?}"
    );
    assert!(waits[0] >= 500, "{waits:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        hook.hits("/fail").len(),
        4,
        "max_retries 3: four calls, no more"
    );
}

#[tokio::test]
async fn a_dependent_job_runs_only_after_its_dependency_succeeded() {
    let app = TestApp::spawn().await;
    let hook =
        Hook::start(|path, _| (if path == "/broken" { 503 } else { 200 }, Duration::ZERO)).await;
    let first = create(
        &app,
        json!({"name": "extract", "schedule": {"after_seconds": 2},
               "action": {"kind": "http", "url": format!("{}/extract", hook.url)}}),
    )
    .await;
    let then = create(
        &app,
        json!({"name": "load", "schedule": {"after_seconds": 0}, "depends_on": [first],
               "action": {"kind": "http", "url": format!("{}/load", hook.url)}}),
    )
    .await;
    let broken = create(
        &app,
        json!({"name": "broken", "schedule": {"after_seconds": 0}, "max_retries": 0,
               "action": {"kind": "http", "url": format!("{}/broken", hook.url)}}),
    )
    .await;
    let never = create(
        &app,
        json!({"name": "after broken", "schedule": {"after_seconds": 0}, "depends_on": [broken],
               "action": {"kind": "http", "url": format!("{}/never", hook.url)}}),
    )
    .await;
    with_status(&app, &then, "done", Duration::from_secs(15)).await;
    let first_runs = runs(&app, &first).await;
    let then_runs = runs(&app, &then).await;
    assert_eq!(then_runs.len(), 1);
    assert!(
        time(&then_runs[0]["started_at"]) >= time(&first_runs[0]["finished_at"]),
        "{first_runs:?} then {then_runs:?}"
    );
    with_status(&app, &broken, "failed", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(hook.hits("/never").is_empty());
    assert!(runs(&app, &never).await.is_empty());
    assert_eq!(job(&app, &never).await["status"], "scheduled");
}

#[tokio::test]
async fn pause_stops_runs_and_resume_restarts_them() {
    let app = TestApp::spawn().await;
    let id = create(
        &app,
        json!({"name": "tick", "schedule": {"cron": "* * * * * *"},
               "action": {"kind": "command", "command": "noop"}}),
    )
    .await;
    let shown = job(&app, &id).await;
    assert_eq!(shown["schedule"], json!({"cron": "* * * * * *"}), "{shown}");
    assert_eq!(
        shown["action"],
        json!({"kind": "command", "command": "noop"})
    );
    eventually("two runs", Duration::from_secs(10), || async {
        (runs(&app, &id).await.len() >= 2).then_some(())
    })
    .await;
    let paused = app
        .post(&format!("/api/v1/jobs/{id}/pause"), json!({}))
        .await;
    assert_eq!(paused.status(), StatusCode::OK);
    with_status(&app, &id, "paused", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = runs(&app, &id).await.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(runs(&app, &id).await.len(), before, "no run while paused");
    let resumed = app
        .post(&format!("/api/v1/jobs/{id}/resume"), json!({}))
        .await;
    assert_eq!(resumed.status(), StatusCode::OK);
    eventually("runs again", Duration::from_secs(10), || async {
        (runs(&app, &id).await.len() >= before + 2).then_some(())
    })
    .await;
    // Every due second ran once.
    let all = runs(&app, &id).await;
    let mut due: Vec<&str> = all.iter().map(|r| r["due_at"].as_str().unwrap()).collect();
    let n = due.len();
    due.dedup();
    assert_eq!(due.len(), n, "{all:?}");
    let deleted = app
        .send(Method::DELETE, &format!("/api/v1/jobs/{id}"))
        .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    eventually("gone", Duration::from_secs(5), || async {
        (app.get(&format!("/api/v1/jobs/{id}")).await.status() == StatusCode::NOT_FOUND)
            .then_some(())
    })
    .await;
    // The read model rebuilt from the log is the one the projector built, byte for byte.
    assert_replays_byte_for_byte(
        &app,
        "jobs",
        &["scheduler_jobs", "scheduler_runs"],
        "WITH gone AS (DELETE FROM scheduler.scheduler_runs WHERE outcome = 'succeeded') \
         UPDATE scheduler.scheduler_jobs SET status = 'x'",
        3,
    )
    .await;
}

#[tokio::test]
async fn bad_jobs_are_refused_with_why_and_change_nothing() {
    let app = TestApp::spawn().await;
    let before = app.event_count().await;
    let noop = json!({"kind": "command", "command": "noop"});
    let bad_cron = app
        .post(
            "/api/v1/jobs",
            json!({"name": "x", "schedule": {"cron": "61 * * * * *"}, "action": noop}),
        )
        .await;
    let body = problem(
        bad_cron,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "schedule.cron", "{body}");
    assert!(!body["errors"][0]["message"].as_str().unwrap().is_empty());
    let outside = app
        .post(
            "/api/v1/jobs",
            json!({"name": "x", "schedule": {"after_seconds": 1},
                   "action": {"kind": "http", "url": "http://169.254.169.254/latest/meta-data"}}),
        )
        .await;
    problem(outside, StatusCode::UNPROCESSABLE_ENTITY, "url_not_allowed").await;
    for (job, field) in [
        (
            json!({"name": "a\u{0}b", "schedule": {"after_seconds": 1}, "action": noop}),
            "name",
        ),
        (
            json!({"name": "x", "schedule": {"after_seconds": 1e30}, "action": noop}),
            "",
        ),
        (
            json!({"name": "x", "schedule": {"after_seconds": -1}, "action": noop}),
            "schedule.after_seconds",
        ),
        (
            json!({"name": "x", "schedule": {"after_seconds": 1, "cron": "* * * * * *"}, "action": noop}),
            "schedule",
        ),
        (
            json!({"name": "x", "schedule": {"cron": "* * * * * *"}, "timezone": "Mars/Olympus", "action": noop}),
            "timezone",
        ),
        (
            json!({"name": "x", "schedule": {"after_seconds": 1}, "max_retries": 9_999_999_999i64, "action": noop}),
            "max_retries",
        ),
        (
            json!({"name": "x", "schedule": {"after_seconds": 1}, "timeout_seconds": 0, "action": noop}),
            "timeout_seconds",
        ),
        (
            json!({"name": "x", "schedule": {"after_seconds": 1}, "depends_on": ["nope"], "action": noop}),
            "depends_on",
        ),
        (
            json!({"name": "x", "schedule": {"after_seconds": 1}, "action": {"kind": "command", "command": "expire_unpaid_order", "order_id": "o"}}),
            "action.command",
        ),
        (
            json!({"name": "x", "schedule": {"after_seconds": 1}, "action": {"kind": "http", "url": "http://user:pw@127.0.0.1/"}}),
            "action.url",
        ),
    ] {
        let response = app.post("/api/v1/jobs", job.clone()).await;
        if field.is_empty() {
            assert!(
                response.status().is_client_error(),
                "{job}: {}",
                response.status()
            );
        } else {
            assert_eq!(invalid_fields(response).await, [field], "{job}");
        }
    }
    // Another user's job is as good as absent.
    let mine = create(
        &app,
        json!({"name": "mine", "schedule": {"after_seconds": 3600}, "action": noop}),
    )
    .await;
    let (_, other) = app.register_and_login("mallory").await;
    for (method, path) in [
        (Method::GET, format!("/api/v1/jobs/{mine}")),
        (Method::GET, format!("/api/v1/jobs/{mine}/runs")),
        (Method::POST, format!("/api/v1/jobs/{mine}/pause")),
        (Method::DELETE, format!("/api/v1/jobs/{mine}")),
    ] {
        let response = app
            .http
            .request(method.clone(), app.url(&path))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {path}");
    }
    // Ids that are no job's are 404 on every route, whatever they hold.
    for id in ["%00", "a%00b", &"x".repeat(10_000), "..", "a.b"] {
        for (method, path) in [
            (Method::GET, format!("/api/v1/jobs/{id}")),
            (Method::GET, format!("/api/v1/jobs/{id}/runs")),
            (Method::POST, format!("/api/v1/jobs/{id}/resume")),
            (Method::DELETE, format!("/api/v1/jobs/{id}")),
        ] {
            let response = app.request(method.clone(), &path).send().await.unwrap();
            assert!(
                [StatusCode::NOT_FOUND, StatusCode::URI_TOO_LONG].contains(&response.status()),
                "{method} {}: {}",
                &path[..path.len().min(40)],
                response.status()
            );
        }
    }
    let depends_on_theirs = app.post_as(&other, "/api/v1/jobs", &json!({"name": "x", "schedule": {"after_seconds": 1}, "depends_on": [mine], "action": noop})).await;
    assert_eq!(invalid_fields(depends_on_theirs).await, ["depends_on"]);
    assert_eq!(
        app.event_count().await,
        before + 2,
        "the one job and mallory's registration"
    );
}

/// Regression (the fault suite, twice): the poll marks the due jobs it reads as its own,
/// then reads the events that event-triggered jobs wait for. When that second read failed
/// (PostgreSQL killed between the two), the poll gave up with the due jobs still marked,
/// and every later poll passed them over: they never ran. Here the second read fails for
/// good (its table is gone), and a job due beyond the hint's reach (the poll's to find)
/// must still run.
#[tokio::test]
async fn a_due_job_runs_though_reading_what_triggered_jobs_wait_for_fails() {
    let app = TestApp::spawn().await;
    sqlx::query("ALTER TABLE scheduler.scheduler_triggers RENAME TO scheduler_triggers_gone")
        .execute(&app.pool)
        .await
        .unwrap();
    // Due after the scheduler's hold (10 s), so no hint takes it up: the poll does.
    let id = create(
        &app,
        json!({"name": "polled", "schedule": {"after_seconds": 11},
               "action": {"kind": "command", "command": "noop"}}),
    )
    .await;
    with_status(&app, &id, "done", Duration::from_secs(40)).await;
}
