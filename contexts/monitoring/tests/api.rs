//! The monitoring context through the HTTP API, against real nats-server and PostgreSQL: `/metrics`, samples in both formats, queries,
//! rules, alerts and their notifications.

use std::time::Duration;

use chronicle_tests::{
    assert_replays_byte_for_byte, eventually, problem, Hook, SmtpServer, TestApp, TestOptions,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The lines of `/metrics` that begin with `name{` or `name `.
fn lines<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

#[tokio::test]
async fn metrics_name_every_subscriber_with_its_lag_and_count_requests_by_route_template() {
    let app = TestApp::spawn().await;
    // A request on a route with an id: counted under the template, never the concrete path.
    let id = uuid::Uuid::new_v4().to_string();
    let missing = app.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    assert!(!text.contains(&id), "a concrete id became a label");
    assert!(
        lines(&text, "chronicle_http_requests_total")
            .iter()
            .any(|l| l.contains(r#"route="/api/v1/jobs/{id}""#)
                && l.contains(r#"method="GET""#)
                && l.contains(r#"status="404""#)),
        "{text}"
    );
    // Explicit buckets, the same on every instance.
    assert!(
        lines(&text, "chronicle_http_request_duration_seconds_bucket")
            .iter()
            .any(|l| l.contains(r#"le="0.005""#))
    );
    for subscriber in chronicle::components::subscribers() {
        for metric in [
            "chronicle_subscriber_lag_events",
            "chronicle_subscriber_lag_seconds",
            "chronicle_subscriber_checkpoint",
            "chronicle_subscriber_parked_events",
            "chronicle_subscriber_caught_up",
        ] {
            let label = format!(r#"subscriber="{}""#, subscriber.name);
            assert!(
                lines(&text, metric).iter().any(|l| l.contains(&label)),
                "{metric} lacks {label}"
            );
        }
    }
    // Registering the test user was a command, committed and relayed.
    assert!(lines(&text, "chronicle_commands_total")
        .iter()
        .any(|l| l.contains(r#"aggregate="user""#) && l.contains(r#"outcome="ok""#)));
    assert!(!lines(&text, "chronicle_outbox_depth").is_empty());
    assert!(!lines(&text, "chronicle_relay_published_events_total").is_empty());
    assert!(!lines(&text, "chronicle_commit_group_size_bucket").is_empty());
}

/// The count of histogram `name` (summed over its series whose labels contain `label`).
fn observed(text: &str, name: &str, label: &str) -> f64 {
    lines(text, &format!("{name}_count"))
        .iter()
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn metrics_time_each_stage_from_a_command_to_its_fresh_read() {
    let app = TestApp::spawn().await;
    let before = app.get("/metrics").await.text().await.unwrap();
    // Created, then read back fresh with `?min_version=1`.
    app.create_item("STAGE-1", "Staged", 100, 5).await;
    // The item was committed, relayed, fetched and applied by the inventory projector, and
    // read fresh: each stage has its sample (the delivery and apply ones once the
    // projector's commit is past, which the fresh read waited for).
    let projector = r#"subscriber="inventory""#;
    for (name, label) in [
        ("chronicle_command_commit_seconds", ""),
        ("chronicle_relay_publish_lag_seconds", ""),
        ("chronicle_subscriber_delivery_seconds", projector),
        ("chronicle_subscriber_apply_seconds", projector),
        ("chronicle_read_fresh_wait_seconds", ""),
    ] {
        eventually(name, Duration::from_secs(10), || async {
            let after = app.get("/metrics").await.text().await.unwrap();
            (observed(&after, name, label) > observed(&before, name, label)).then_some(())
        })
        .await;
    }
    // Buckets fine enough between 1 and 500 ms to read a p99 against a 50 ms target.
    let text = app.get("/metrics").await.text().await.unwrap();
    for bound in ["0.03", "0.04", "0.065", "0.08"] {
        let le = format!(r#"le="{bound}""#);
        assert!(
            lines(&text, "chronicle_subscriber_apply_seconds_bucket")
                .iter()
                .any(|l| l.contains(&le)),
            "no bucket {bound}"
        );
    }
}

async fn report_json(app: &TestApp, samples: Value) -> u64 {
    let response = app.post("/api/v1/monitoring/samples", samples).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    body["accepted"].as_u64().unwrap()
}

async fn report_text(app: &TestApp, source: &str, text: &str) -> reqwest::Response {
    app.request(reqwest::Method::POST, "/api/v1/monitoring/samples")
        .header("content-type", "text/plain; version=0.0.4")
        .header("chronicle-source", source)
        .body(text.to_owned())
        .send()
        .await
        .unwrap()
}

async fn query(app: &TestApp, params: &str) -> Value {
    let response = app.get(&format!("/api/v1/monitoring/query?{params}")).await;
    assert_eq!(response.status(), StatusCode::OK, "{params}");
    response.json().await.unwrap()
}

/// The points of the only series of `answer`.
fn points(answer: &Value) -> Vec<(i64, f64)> {
    let series = answer["series"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{answer}");
    series[0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

#[tokio::test]
async fn samples_in_both_formats_are_stored_and_queried_back_with_each_aggregation() {
    let app = TestApp::spawn().await;
    // A minute-aligned start a few minutes ago, so the steps are whole minutes.
    let t0 = (chrono::Utc::now().timestamp() / 60 - 5) * 60;
    let ms = |s: i64| (t0 + s) * 1000;
    // A counter in the text format: 0, 10, 30 (a reset to 5), 25 over the first minute,
    // then 40 and 100 in the second.
    let text = format!(
        "# HELP t_requests_total Requests.\n# TYPE t_requests_total counter\n\
         t_requests_total{{path=\"/a\"}} 0 {}\n\
         t_requests_total{{path=\"/a\"}} 10 {}\n\
         t_requests_total{{path=\"/a\"}} 30 {}\n\
         t_requests_total{{path=\"/a\"}} 5 {}\n\
         t_requests_total{{path=\"/a\"}} 25 {}\n\
         t_requests_total{{path=\"/b\"}} 7 {}\n\
         t_requests_total{{path=\"/a\"}} 40 {}\n\
         t_requests_total{{path=\"/a\"}} 100 {}\n",
        ms(0),
        ms(10),
        ms(20),
        ms(30),
        ms(40),
        ms(40),
        ms(70),
        ms(110)
    );
    let response = report_text(&app, "host-1", &text).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.json::<Value>().await.unwrap()["accepted"], 8);
    // A gauge in JSON: 1, 2, 3, 4 in the first minute, 10 in the second.
    let gauge: Vec<Value> = [(0, 1.0), (15, 2.0), (30, 3.0), (45, 4.0), (60, 10.0)]
        .iter()
        .map(|(s, v)| json!({"metric": "t_queue_depth", "labels": {"queue": "mail"}, "value": v, "at": t0 + s}))
        .collect();
    assert_eq!(report_json(&app, json!(gauge)).await, 5);

    let range = format!("from={t0}&to={}&step=60s", t0 + 120);
    let q = |agg: &str| format!("metric=t_queue_depth&labels=queue:mail&{range}&agg={agg}");
    assert_eq!(
        points(&query(&app, &q("avg")).await),
        [(t0, 2.5), (t0 + 60, 10.0)]
    );
    assert_eq!(
        points(&query(&app, &q("min")).await),
        [(t0, 1.0), (t0 + 60, 10.0)]
    );
    assert_eq!(
        points(&query(&app, &q("max")).await),
        [(t0, 4.0), (t0 + 60, 10.0)]
    );
    assert_eq!(
        points(&query(&app, &q("sum")).await),
        [(t0, 10.0), (t0 + 60, 10.0)]
    );
    let p99 = points(&query(&app, &q("p99")).await);
    assert!((p99[0].1 - 3.97).abs() < 1e-9, "{p99:?}");

    // rate: the increase per second, a drop counted as a reset (10 + 20 + 5 + 20 = 55 in
    // the first minute; 15 + 60 = 75 in the second).
    let rate = query(
        &app,
        &format!("metric=t_requests_total&labels=path:/a,source:host-1&{range}&agg=rate"),
    )
    .await;
    let rate = points(&rate);
    assert!((rate[0].1 - 55.0 / 60.0).abs() < 1e-9, "{rate:?}");
    assert!((rate[1].1 - 75.0 / 60.0).abs() < 1e-9, "{rate:?}");
    // Without a label filter, each series comes back with its labels.
    let both = query(&app, &format!("metric=t_requests_total&{range}&agg=max")).await;
    let labels: Vec<&Value> = both["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["labels"])
        .collect();
    assert_eq!(labels.len(), 2);
    assert!(labels.contains(&&json!({"path": "/b", "source": "host-1"})));
    assert_eq!(both["step_seconds"], 60);

    let known: Value = app.get_json("/api/v1/monitoring/metrics").await;
    let requests = known
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "t_requests_total")
        .expect("listed");
    assert_eq!(requests["labels"], json!(["path", "source"]));

    // Bad parameters are named.
    let bad = app
        .get("/api/v1/monitoring/query?metric=t_queue_depth&agg=median&step=0s")
        .await;
    let body = problem(bad, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["step", "agg"]);
}

#[tokio::test]
async fn a_malformed_line_is_a_400_naming_it_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let response = report_text(
        &app,
        "host-1",
        "t_good 1\n# a comment\nt_bad{x=\"1\" 2\nt_after 3\n",
    )
    .await;
    let body = problem(response, StatusCode::BAD_REQUEST, "malformed_samples").await;
    assert_eq!(body["line"], 3, "{body}");
    assert!(
        body["detail"].as_str().unwrap().starts_with("line 3:"),
        "{body}"
    );
    // A NUL in a label value, a name that is not one, an impossible time: refused too.
    for text in [
        "t{x=\"a\0\"} 1\n",
        "t-x 1\n",
        "t 1 99999999999999999\n",
        // Sums of these would overflow a double in PostgreSQL and break the series.
        "t 1e300\n",
        // Chronicle's own series: a reporter may not raise or silence the default alerts.
        "chronicle_availability_ratio 0\n",
        "business_orders_placed 1000000\n",
    ] {
        let response = report_text(&app, "host-1", text).await;
        problem(response, StatusCode::BAD_REQUEST, "malformed_samples").await;
    }
    let json_bad = app
        .post(
            "/api/v1/monitoring/samples",
            json!([{"metric": "t_good", "value": 1}, {"metric": "t good", "value": 1}]),
        )
        .await;
    let body = problem(json_bad, StatusCode::BAD_REQUEST, "malformed_samples").await;
    assert_eq!(body["location"], "sample 2");
    // (The gateway's own built-in series are stored too; none of the test's.)
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM monitoring.monitoring_samples s JOIN monitoring.monitoring_series m ON m.id = s.series_id \
         WHERE m.metric LIKE 't\\_%'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored, 0);
    // Ten thousand series of one metric are allowed; one more is refused, whole.
    let many: String = (0..10_000)
        .map(|i| format!("t_wide{{user=\"u{i}\"}} 1\n"))
        .collect();
    assert_eq!(
        report_text(&app, "host-1", &many).await.status(),
        StatusCode::ACCEPTED
    );
    let one_more = report_text(&app, "host-1", "t_wide 1\nt_wide{user=\"new\"} 1\n").await;
    problem(
        one_more,
        StatusCode::UNPROCESSABLE_ENTITY,
        "too_many_series",
    )
    .await;
    let known = report_text(&app, "host-1", "t_wide{user=\"u7\"} 2\n").await;
    assert_eq!(
        known.status(),
        StatusCode::ACCEPTED,
        "an existing series still takes samples"
    );
    let anonymous = app
        .http
        .post(app.url("/api/v1/monitoring/samples"))
        .body("t 1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

/// Creates a rule as staff: its id.
async fn create_rule(app: &TestApp, rule: Value) -> String {
    let response = app.post("/api/v1/monitoring/rules", rule.clone()).await;
    assert_eq!(response.status(), StatusCode::CREATED, "{rule}");
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

async fn alerts_of(app: &TestApp, rule_id: &str) -> Vec<Value> {
    let all: Value = app.get_json("/api/v1/monitoring/alerts?limit=1000").await;
    all.as_array()
        .unwrap()
        .iter()
        .filter(|a| a["rule_id"] == rule_id)
        .cloned()
        .collect()
}

/// The `state` of every webhook notification to `path`, in order.
fn notified(hook: &Hook, path: &str) -> Vec<String> {
    hook.bodies(path)
        .iter()
        .map(|b| {
            let body: Value = serde_json::from_str(b).expect("a JSON notification");
            body["state"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// The subject line of every mail.
fn subjects(smtp: &SmtpServer) -> Vec<String> {
    smtp.messages()
        .iter()
        .filter_map(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
        })
        .collect()
}

fn with_smtp(smtp: &SmtpServer) -> TestOptions {
    let mut options = TestOptions::default();
    options.scheduler.notify.smtp_url = Some(smtp.url.clone());
    options
}

#[tokio::test]
async fn a_rule_on_orders_placed_fires_when_orders_are_placed_and_notifies_webhook_and_mail_once() {
    let smtp = SmtpServer::start().await;
    let app = TestApp::spawn_options(with_smtp(&smtp)).await;
    let hook = Hook::start(|_, _| (200, Duration::ZERO)).await;
    app.create_item("M1", "Mug", 500, 100).await;
    let rule = create_rule(
        &app,
        json!({
            "name": "Orders per minute over 2", "metric": "business_orders_placed",
            "agg": "sum", "window_seconds": 60, "op": ">", "threshold": 2,
            "for_seconds": 1, "severity": "critical",
            "channels": [
                {"kind": "webhook", "url": format!("{}/orders-alert", hook.url)},
                {"kind": "email", "to": "ops@example.com"}
            ]
        }),
    )
    .await;
    for _ in 0..3 {
        let placed = app
            .post(
                "/api/v1/orders",
                json!({"lines": [{"sku": "M1", "quantity": 1}]}),
            )
            .await;
        assert_eq!(placed.status(), StatusCode::CREATED);
    }
    let alert = eventually("the alert to fire", Duration::from_secs(20), || async {
        alerts_of(&app, &rule)
            .await
            .into_iter()
            .find(|a| a["state"] == "firing")
    })
    .await;
    assert_eq!(alert["id"], format!("{rule}.1"));
    assert_eq!(alert["value"], 3.0);
    // Pending first, firing once it held for a second.
    let started =
        chrono::DateTime::parse_from_rfc3339(alert["started_at"].as_str().unwrap()).unwrap();
    let fired = chrono::DateTime::parse_from_rfc3339(alert["fired_at"].as_str().unwrap()).unwrap();
    assert!(fired - started >= chrono::Duration::seconds(1), "{alert}");
    eventually(
        "the webhook and the mail",
        Duration::from_secs(20),
        || async {
            (notified(&hook, "/orders-alert").len() == 1 && smtp.messages().len() == 1)
                .then_some(())
        },
    )
    .await;
    let body: Value = serde_json::from_str(&hook.bodies("/orders-alert")[0]).unwrap();
    assert_eq!(body["alert_id"], format!("{rule}.1"));
    assert_eq!(body["rule"], "Orders per minute over 2");
    assert_eq!(body["severity"], "critical");
    assert_eq!(body["value"], 3.0);
    let mail = &smtp.messages()[0];
    assert!(mail.contains("To: ops@example.com"), "{mail}");
    assert!(
        subjects(&smtp)[0].contains("[CRITICAL] Orders per minute over 2 is firing"),
        "{mail}"
    );
    // Many more evaluations while it fires: still one notification each.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(notified(&hook, "/orders-alert"), ["firing"]);
    assert_eq!(smtp.messages().len(), 1);
    assert_replays_byte_for_byte(
        &app,
        "business_metrics",
        &["business_series"],
        "DELETE FROM monitoring.business_series",
        2,
    )
    .await;
}

#[tokio::test]
async fn an_alert_fires_is_acknowledged_resolves_and_fires_again_notified_once_per_transition_by_two_engines(
) {
    let smtp = SmtpServer::start().await;
    let mut app = TestApp::spawn_options(with_smtp(&smtp)).await;
    // A second alert engine, as another process would run it.
    app.start_another(chronicle::components::Component::Process(
        &chronicle_monitoring::ALERT_ENGINE,
    ));
    let hook = Hook::start(|_, _| (200, Duration::ZERO)).await;
    let rule = create_rule(
        &app,
        json!({
            "name": "Queue too deep", "metric": "t_depth", "labels": {"queue": "mail"},
            "agg": "min", "window_seconds": 10, "op": ">", "threshold": 5,
            "for_seconds": 1,
            "channels": [
                {"kind": "webhook", "url": format!("{}/depth", hook.url)},
                {"kind": "email", "to": "ops@example.com"}
            ]
        }),
    )
    .await;
    let depth =
        |value: f64| json!([{"metric": "t_depth", "labels": {"queue": "mail"}, "value": value}]);
    report_json(&app, depth(9.0)).await;
    let first = format!("{rule}.1");
    eventually(
        "the first firing notification",
        Duration::from_secs(20),
        || async { (notified(&hook, "/depth") == ["firing"]).then_some(()) },
    )
    .await;

    // Acknowledged: told once, and nothing more while the condition still holds.
    let ack = app
        .post(
            &format!("/api/v1/monitoring/alerts/{first}/acknowledge"),
            json!({}),
        )
        .await;
    assert_eq!(ack.status(), StatusCode::OK);
    // Read-your-writes (issue 29: the list lagged the acknowledgement): waiting for the
    // version the acknowledgement answered lists the alert as acknowledged at once.
    let version = ack.json::<Value>().await.unwrap()["version"].clone();
    let listed = app
        .get(&format!(
            "/api/v1/monitoring/alerts?state=acknowledged&rule_id={rule}&min_version={version}"
        ))
        .await;
    assert_eq!(listed.status(), StatusCode::OK);
    assert_eq!(listed.headers()["chronicle-consistency"], "fresh");
    let listed: Value = listed.json().await.unwrap();
    assert_eq!(listed[0]["id"], first.as_str(), "{listed}");
    assert_eq!(listed[0]["state"], "acknowledged");
    // The list names the rule, its metric and severity, so a reader need not be staff.
    assert_eq!(listed[0]["rule_name"], "Queue too deep", "{listed}");
    assert_eq!(listed[0]["metric"], "t_depth");
    assert_eq!(listed[0]["severity"], "warning");
    let again = app
        .post(
            &format!("/api/v1/monitoring/alerts/{first}/acknowledge"),
            json!({}),
        )
        .await;
    assert_eq!(again.status(), StatusCode::OK, "twice is once");
    report_json(&app, depth(12.0)).await;
    eventually(
        "the acknowledgement notification",
        Duration::from_secs(20),
        || async { (notified(&hook, "/depth") == ["firing", "acknowledged"]).then_some(()) },
    )
    .await;
    let acked = alerts_of(&app, &rule).await;
    assert_eq!(acked[0]["state"], "acknowledged");
    assert_eq!(acked[0]["acknowledged_by"], app.user_id.as_str());

    // The condition stops: resolved.
    report_json(&app, depth(0.0)).await;
    eventually(
        "the resolution notification",
        Duration::from_secs(20),
        || async {
            (notified(&hook, "/depth") == ["firing", "acknowledged", "resolved"]).then_some(())
        },
    )
    .await;
    let not_firing = app
        .post(
            &format!("/api/v1/monitoring/alerts/{first}/acknowledge"),
            json!({}),
        )
        .await;
    problem(not_firing, StatusCode::CONFLICT, "alert_not_firing").await;

    // Once the 0 has left the window, the condition holds again: a new alert fires.
    let second = format!("{rule}.2");
    eventually(
        "a second alert to fire",
        Duration::from_secs(40),
        || async {
            report_json(&app, depth(9.0)).await;
            alerts_of(&app, &rule)
                .await
                .into_iter()
                .find(|a| a["id"] == second.as_str() && a["state"] == "firing")
        },
    )
    .await;
    eventually("every notification", Duration::from_secs(20), || async {
        (notified(&hook, "/depth").len() == 4 && smtp.messages().len() == 4).then_some(())
    })
    .await;
    // Whatever else two engines evaluated meanwhile, one notification per transition.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        notified(&hook, "/depth"),
        ["firing", "acknowledged", "resolved", "firing"]
    );
    // Mails are separate deliveries: each transition once, in whatever order they landed.
    let mut mails: Vec<String> = subjects(&smtp)
        .iter()
        .map(|m| m.rsplit(" is ").next().unwrap_or_default().to_owned())
        .collect();
    mails.sort();
    assert_eq!(mails, ["acknowledged", "firing", "firing", "resolved"]);
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM monitoring.events WHERE aggregate_type = 'rule' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(&rule)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        events,
        [
            "RuleCreated",
            "AlertPending",
            "AlertFiring",
            "AlertAcknowledged",
            "AlertResolved",
            "AlertPending",
            "AlertFiring"
        ]
    );
    assert_replays_byte_for_byte(
        &app,
        "alerts",
        &["monitoring_rules", "monitoring_alerts"],
        "DELETE FROM monitoring.monitoring_alerts",
        3,
    )
    .await;
}

#[tokio::test]
async fn a_webhook_receiver_that_is_down_is_retried_until_it_answers() {
    let app = TestApp::spawn().await;
    // Down (503) twice, then up.
    let hook = Hook::start(|_, n| (if n <= 2 { 503 } else { 200 }, Duration::ZERO)).await;
    create_rule(
        &app,
        json!({
            "name": "Any depth", "metric": "t_depth2", "agg": "max", "window_seconds": 10,
            "op": ">=", "threshold": 0, "for_seconds": 0,
            "channels": [{"kind": "webhook", "url": format!("{}/flaky", hook.url)}]
        }),
    )
    .await;
    report_json(&app, json!([{"metric": "t_depth2", "value": 1}])).await;
    eventually("the third delivery", Duration::from_secs(30), || async {
        (hook.hits("/flaky").len() == 3).then_some(())
    })
    .await;
    let bodies = hook.bodies("/flaky");
    assert!(
        bodies.iter().all(|b| b == &bodies[0]),
        "the same notification each time"
    );
    // Delivered: not sent again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(hook.hits("/flaky").len(), 3);
}

#[tokio::test]
async fn rules_are_staff_only_checked_against_the_limits_and_the_notify_list() {
    let mut options = TestOptions {
        gateway: Box::new(|g| {
            g.contexts
                .get_mut::<chronicle_gateway::IdentityConfig>()
                .staff_users = vec!["tester".into()]
        }),
        ..TestOptions::default()
    };
    options.alerts.default_rules = true;
    let app = TestApp::spawn_options(options).await;
    let (_, customer) = app.register_and_login("customer").await;
    let rule = json!({"name": "r", "metric": "m", "agg": "avg", "op": ">", "threshold": 1});
    let refused = app
        .post_as(&customer, "/api/v1/monitoring/rules", &rule)
        .await;
    problem(refused, StatusCode::FORBIDDEN, "forbidden").await;
    let elsewhere = app
        .post(
            "/api/v1/monitoring/rules",
            json!({"name": "r", "metric": "m", "agg": "avg", "op": ">", "threshold": 1,
                   "channels": [{"kind": "webhook", "url": "http://internal.example:8080/x"}]}),
        )
        .await;
    let body = problem(
        elsewhere,
        StatusCode::UNPROCESSABLE_ENTITY,
        "url_not_allowed",
    )
    .await;
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("CHRONICLE_NOTIFY_ALLOW"));
    for (bad, field) in [
        (
            json!({"name": "r", "metric": "bad metric", "agg": "avg", "op": ">", "threshold": 1}),
            "metric",
        ),
        (
            json!({"name": "r\u{0}", "metric": "m", "agg": "avg", "op": ">", "threshold": 1}),
            "name",
        ),
        (
            json!({"name": "r", "metric": "m", "agg": "avg", "op": ">", "threshold": 1, "window_seconds": 1}),
            "window_seconds",
        ),
        (
            json!({"name": "r", "metric": "m", "agg": "avg", "op": ">", "threshold": 1e300}),
            "threshold",
        ),
    ] {
        let response = app.post("/api/v1/monitoring/rules", bad.clone()).await;
        let body = problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(body["errors"][0]["field"], field, "{bad}");
    }
    // Created, changed (If-Match), listed, deleted.
    let id = create_rule(&app, rule).await;
    let changed = app
        .request(
            reqwest::Method::PATCH,
            &format!("/api/v1/monitoring/rules/{id}"),
        )
        .header("if-match", "\"1\"")
        .json(&json!({"threshold": 5, "severity": "critical"}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    let stale = app
        .request(
            reqwest::Method::PATCH,
            &format!("/api/v1/monitoring/rules/{id}"),
        )
        .header("if-match", "\"1\"")
        .json(&json!({"threshold": 6}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let listed = eventually(
        "the change in the list",
        Duration::from_secs(10),
        || async {
            let rules: Value = app.get_json("/api/v1/monitoring/rules").await;
            rules
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["id"] == id.as_str() && r["threshold"] == 5.0)
                .cloned()
        },
    )
    .await;
    assert_eq!(listed["severity"], "critical");
    assert_eq!(listed["window_seconds"], 60);
    // The four default rules are installed too.
    let rules: Value = eventually("the default rules", Duration::from_secs(10), || async {
        let rules: Value = app.get_json("/api/v1/monitoring/rules").await;
        (rules.as_array().unwrap().len() >= 5).then_some(rules)
    })
    .await;
    for default in [
        "default-availability",
        "default-response-time",
        "default-error-rate",
        "default-resource-use",
    ] {
        assert!(
            rules.as_array().unwrap().iter().any(|r| r["id"] == default),
            "{default}"
        );
    }
    let deleted = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/monitoring/rules/{id}"),
        )
        .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/monitoring/rules/{id}"),
        )
        .await;
    problem(gone, StatusCode::NOT_FOUND, "not_found").await;
    for path in [
        "/api/v1/monitoring/rules/a%00b",
        "/api/v1/monitoring/alerts/nope/acknowledge",
    ] {
        let response = app.post(path, json!({})).await;
        assert!(response.status().is_client_error(), "{path}");
    }
}

#[tokio::test]
async fn retention_drops_old_samples_and_the_rollups_still_answer() {
    let mut options = TestOptions {
        gateway: Box::new(|g| {
            g.contexts
                .get_mut::<chronicle_monitoring::MonitoringConfig>()
                .retention = Duration::from_secs(3)
        }),
        ..TestOptions::default()
    };
    options.alerts.retention = Duration::from_secs(3);
    options.alerts.purge_every = Duration::from_millis(200);
    let app = TestApp::spawn_options(options).await;
    let now = chrono::Utc::now().timestamp();
    let samples: Vec<Value> = (0..6)
        .map(|i| json!({"metric": "t_old", "value": i, "at": now - 2 + i / 3}))
        .collect();
    assert_eq!(report_json(&app, json!(samples)).await, 6);
    let count = || async {
        app.scalar::< i64>("SELECT count(*) FROM monitoring.monitoring_samples s JOIN monitoring.monitoring_series m ON m.id = s.series_id WHERE m.metric = 't_old'").await
    };
    assert_eq!(count().await, 6);
    eventually(
        "retention to remove the samples",
        Duration::from_secs(15),
        || async { (count().await == 0).then_some(()) },
    )
    .await;
    // The per-minute rollups outlive them: a query from before the retention reads them.
    let from = now - 3600;
    let answer = query(
        &app,
        &format!("metric=t_old&from={from}&to={}&step=1h&agg=sum", now + 60),
    )
    .await;
    let points = points(&answer);
    assert_eq!(points.iter().map(|p| p.1).sum::<f64>(), 15.0);
}

#[tokio::test]
async fn a_step_of_five_minutes_or_more_reads_the_per_minute_rollups() {
    let app = TestApp::spawn().await;
    // Ten minutes of a gauge, two samples a minute (0, 1, 2, ...), from a 5-minute boundary.
    let t0 = (chrono::Utc::now().timestamp() / 300 - 2) * 300;
    let samples: Vec<Value> = (0..20)
        .map(|i| json!({"metric": "t_rolled", "value": i, "at": t0 + i * 30}))
        .collect();
    assert_eq!(report_json(&app, json!(samples)).await, 20);
    // The raw samples go: only the rollups can answer now.
    sqlx::query(
        "DELETE FROM monitoring.monitoring_samples WHERE series_id IN \
         (SELECT id FROM monitoring.monitoring_series WHERE metric = 't_rolled')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let range = format!("metric=t_rolled&from={t0}&to={}", t0 + 600);
    let minutes = query(&app, &format!("{range}&step=60s&agg=sum")).await;
    assert_eq!(
        minutes["series"],
        json!([]),
        "a 1-minute step reads samples"
    );
    for (agg, first, second) in [("sum", 45.0, 145.0), ("max", 9.0, 19.0), ("avg", 4.5, 14.5)] {
        let answer = query(&app, &format!("{range}&step=5m&agg={agg}")).await;
        assert_eq!(
            points(&answer),
            [(t0, first), (t0 + 300, second)],
            "{agg}: {answer}"
        );
    }
}

#[tokio::test]
async fn chronicles_own_series_are_collected_host_routes_and_subscriber_lag() {
    let app = TestApp::spawn_with(|g| {
        g.contexts
            .get_mut::<chronicle_monitoring::MonitoringConfig>()
            .collect_every = Some(Duration::from_millis(300))
    })
    .await;
    for _ in 0..5 {
        let listed = app.get("/api/v1/inventory/items").await;
        assert_eq!(listed.status(), StatusCode::OK);
    }
    // Two commands that succeed and one the domain refuses (the SKU is taken).
    for sku in ["COL-1", "COL-2", "COL-1"] {
        app.post(
            "/api/v1/inventory/items",
            json!({"sku": sku, "name": "Lamp", "price_cents": 100, "initial_stock": 1}),
        )
        .await;
    }
    let known = eventually("the built-in series", Duration::from_secs(20), || async {
        let known: Value = app
            .get("/api/v1/monitoring/metrics")
            .await
            .json()
            .await
            .ok()?;
        let names: Vec<String> = known
            .as_array()?
            .iter()
            .filter_map(|m| m["metric"].as_str().map(str::to_owned))
            .collect();
        let wanted = [
            "chronicle_host_resource_ratio",
            "chronicle_host_network_bytes_per_second",
            "chronicle_http_requests_per_second",
            "chronicle_http_error_ratio",
            "chronicle_http_latency_p99_seconds",
            "chronicle_availability_ratio",
            "chronicle_subscriber_lag_events",
            "chronicle_subscriber_lag_seconds",
            "chronicle_subscriber_parked_events",
            "chronicle_commands_per_second",
        ];
        wanted
            .iter()
            .all(|w| names.iter().any(|n| n == w))
            .then_some(known)
    })
    .await;
    let labels_of = |metric: &str| -> Value {
        known
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["metric"] == metric)
            .map(|m| m["labels"].clone())
            .unwrap()
    };
    assert_eq!(
        labels_of("chronicle_host_resource_ratio"),
        json!(["instance", "resource"])
    );
    assert_eq!(
        labels_of("chronicle_subscriber_lag_events"),
        json!(["instance", "subscriber"])
    );
    assert_eq!(
        labels_of("chronicle_subscriber_parked_events"),
        json!(["instance", "subscriber"])
    );
    assert_eq!(
        labels_of("chronicle_commands_per_second"),
        json!(["instance", "outcome"])
    );
    // Both outcomes were counted: each has a collection with a rate above 0.
    for outcome in ["ok", "refused"] {
        let params =
            format!("metric=chronicle_commands_per_second&labels=outcome:{outcome}&agg=max");
        eventually(outcome, Duration::from_secs(20), || async {
            let ran = query(&app, &params).await;
            let most = ran["series"]
                .as_array()?
                .iter()
                .flat_map(|s| s["points"].as_array().cloned().unwrap_or_default())
                .filter_map(|p| p[1].as_f64())
                .fold(0.0, f64::max);
            (most > 0.0).then_some(())
        })
        .await;
    }
    // No reader parked anything: every subscriber's parked series is 0.
    let parked = query(&app, "metric=chronicle_subscriber_parked_events&agg=max").await;
    let series = parked["series"].as_array().unwrap();
    assert!(!series.is_empty(), "{parked}");
    for s in series {
        assert!(
            s["points"].as_array().unwrap().iter().all(|p| p[1] == 0.0),
            "{parked}"
        );
    }
    // Plausible values: memory in use is a share of the total; the listed route had traffic.
    let memory = query(
        &app,
        "metric=chronicle_host_resource_ratio&labels=resource:memory&agg=max",
    )
    .await;
    let used = points(&memory)[0].1;
    assert!(used > 0.0 && used <= 1.0, "{memory}");
    let route = query(
        &app,
        "metric=chronicle_http_requests_per_second&labels=route:/api/v1/inventory/items&agg=max",
    )
    .await;
    assert!(
        route["series"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["points"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p[1].as_f64().unwrap() > 0.0)),
        "{route}"
    );
}
