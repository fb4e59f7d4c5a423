//! Monitoring (issue 14) through the HTTP API: `/metrics`, samples in both formats, queries,
//! rules, alerts and their notifications.

use reqwest::StatusCode;

use chronicle_tests::TestApp;

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
