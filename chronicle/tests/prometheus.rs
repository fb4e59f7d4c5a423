//! Prometheus and Grafana against a running `chronicle up` (issue 14): the alert rules pass
//! `promtool`, a real Prometheus scrapes `/metrics`, every metric a rule or a dashboard
//! panel names is among what it scraped, and a parked event makes `ChronicleParkedEvents`
//! fire for real.

mod common;

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use chronicle_tests::{eventually, TestDb, TestNats};
use common::{start_gateway, Running};
use serde_json::Value;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Every `chronicle_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("chronicle_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_alert_rules_pass_promtool() {
    let output = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo("deploy/prometheus/chronicle-rules.yml"))
        .output()
        .expect("promtool (scripts/setup installs Debian's prometheus)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/chronicle-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);
}

#[tokio::test]
async fn prometheus_scrapes_chronicle_finds_every_metric_used_and_fires_on_a_parked_event() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let data = tempfile::tempdir().unwrap();
    let up = common::up_on(&db, &nats, data.path());
    let (_chronicle, base, _) = start_gateway(up);
    let target = base.trim_start_matches("http://").to_owned();

    // Prometheus with the repository's rules, scraping and evaluating every second.
    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(repo("deploy/prometheus/chronicle-rules.yml")).unwrap();
    std::fs::write(dir.path().join("chronicle-rules.yml"), rules).unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [chronicle-rules.yml]\n\
             scrape_configs:\n  - job_name: chronicle\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (scripts/setup installs Debian's prometheus)");
    let _prometheus = Running(Some(child));
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        async move {
            let response = http.get(path).send().await.ok()?;
            response.json::<Value>().await.ok()
        }
    };

    // Some traffic, so the request series have samples.
    for _ in 0..3 {
        let health = http.get(format!("{base}/health")).send().await.unwrap();
        assert!(health.status().is_success());
    }
    // Every metric the rules and the dashboard use is among the names Prometheus scraped.
    let mut used = metric_names(
        &std::fs::read_to_string(repo("deploy/prometheus/chronicle-rules.yml")).unwrap(),
    );
    used.extend(metric_names(
        &std::fs::read_to_string(repo("deploy/grafana/chronicle-dashboard.json")).unwrap(),
    ));
    assert!(used.len() >= 15, "{used:?}");
    let missing = eventually(
        "Prometheus to know every metric used",
        Duration::from_secs(60),
        || {
            let api = api.clone();
            let used = used.clone();
            async move {
                let names = get(format!("{api}/label/__name__/values")).await?;
                let known: BTreeSet<String> = names["data"]
                    .as_array()?
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect();
                let missing: Vec<String> = used.difference(&known).cloned().collect();
                missing.is_empty().then_some(missing)
            }
        },
    )
    .await;
    assert!(missing.is_empty());

    // A poisoned event: the users projector parks it, and the alert fires.
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", uuid::Uuid::new_v4().to_string().as_str());
    headers.insert("Chronicle-Event-Type", "UserRegistered");
    js.publish_with_headers(
        format!("events.identity.user.{}", uuid::Uuid::now_v7()),
        headers,
        b"\x00 not an envelope".to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let alert = eventually(
        "ChronicleParkedEvents to fire",
        Duration::from_secs(90),
        || {
            let api = api.clone();
            async move {
                let alerts = get(format!("{api}/alerts")).await?;
                alerts["data"]["alerts"]
                    .as_array()?
                    .iter()
                    // Every reader of the subject parks it (`job_triggers` reads them all):
                    // the users projection's alert is the one looked for.
                    .find(|a| {
                        a["labels"]["alertname"] == "ChronicleParkedEvents"
                            && a["state"] == "firing"
                            && a["labels"]["subscriber"] == "users"
                    })
                    .cloned()
            }
        },
    )
    .await;
    assert_eq!(alert["labels"]["subscriber"], "users", "{alert}");
    assert_eq!(alert["labels"]["severity"], "warning");
}
