//! Whole-server outages under the load (issue 17, "server restarts"): nats-server stopped
//! for 8 s or more, then PostgreSQL while commands are probed, each started again by the
//! tender once released.
//!
//! - NATS away: commands still commit (2xx keep coming), the outbox grows, `/health` says
//!   `nats: down` with a 503, `/metrics` shows `chronicle_server_up{server="nats"} 0` and the
//!   outbox depth; once it is back, health is 200 again (the drain, in order and once, is
//!   what the final checks prove).
//! - PostgreSQL away: a command is answered 503 problem+json `unavailable`, never later than
//!   the handler timeout; `/health` says `postgres: down`; commands succeed again once it is
//!   back.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{
    load::{Acked, Cast, Client},
    system::{System, Target},
};

/// The gateways' handler timeout (the default of `CHRONICLE_HANDLER_TIMEOUT_SECONDS`).
const HANDLER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the outages showed.
#[derive(Debug, Default)]
pub struct Seen {
    pub nats_down_for: Duration,
    /// 2xx answers to the load while NATS was away.
    pub committed_without_nats: u64,
    pub outbox_depth_seen: f64,
    pub postgres_down_for: Duration,
    /// Commands sent while PostgreSQL was away, and the slowest answer to one.
    pub refused_without_postgres: usize,
    pub slowest_refusal: Duration,
}

pub async fn run(
    system: &Arc<Mutex<System>>,
    client: &Client,
    cast: &Cast,
    acked: &Arc<Mutex<Acked>>,
) -> Result<Seen, String> {
    let mut seen = Seen::default();

    // NATS, held down until what must be seen meanwhile was seen, and 8 s at least.
    let ok_before = acked.lock().unwrap().ok;
    system
        .lock()
        .unwrap()
        .kill(&Target::Nats(0), Duration::from_secs(3600));
    let started = Instant::now();
    wait_for(client, "/health", |status, body| {
        status == 503 && body["nats"] == "down" && body["postgres"] == "up"
    })
    .await
    .map_err(|e| format!("with NATS away, {e}"))?;
    let metrics = wait_for_text(client, &cast.staff, |text| {
        gauge(text, "chronicle_server_up{server=\"nats\"}") == Some(0.0)
            && gauge(text, "chronicle_outbox_depth").is_some_and(|d| d > 0.0)
    })
    .await
    .map_err(|e| format!("with NATS away, /metrics: {e}"))?;
    seen.outbox_depth_seen = gauge(&metrics, "chronicle_outbox_depth").unwrap_or(0.0);
    // Let the load run against the outage a while.
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(started.elapsed())).await;
    seen.committed_without_nats = acked.lock().unwrap().ok - ok_before;
    system.lock().unwrap().release(&Target::Nats(0));
    if seen.committed_without_nats == 0 {
        return Err("no command committed while NATS was away".into());
    }
    wait_for(client, "/health", |status, _| status == 200)
        .await
        .map_err(|e| format!("after NATS came back, {e}"))?;
    seen.nats_down_for = started.elapsed();

    // PostgreSQL, held down while commands are sent to each gateway for 4 s.
    system
        .lock()
        .unwrap()
        .kill(&Target::Postgres(0), Duration::from_secs(3600));
    let started = Instant::now();
    wait_for(client, "/health", |status, body| {
        status == 503 && body["postgres"] == "down"
    })
    .await
    .map_err(|e| format!("with PostgreSQL away, {e}"))?;
    let sku = &cast.skus[0];
    let probing = Instant::now();
    while probing.elapsed() < Duration::from_secs(4) {
        for base in client.bases() {
            let sent = Instant::now();
            let response = reqwest::Client::new()
                .post(format!("{base}/api/v1/inventory/items/{sku}/receive"))
                .bearer_auth(&cast.staff)
                .json(&json!({"quantity": 1}))
                .timeout(HANDLER_TIMEOUT * 2)
                .send()
                .await
                .map_err(|e| format!("with PostgreSQL away, a command got no answer: {e}"))?;
            let took = sent.elapsed();
            let status = response.status();
            let kind = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status != 503 || kind != "application/problem+json" || body["code"] != "unavailable"
            {
                return Err(format!(
                    "with PostgreSQL away, a command was answered {status} {kind} {body}"
                ));
            }
            if took > HANDLER_TIMEOUT + Duration::from_secs(1) {
                return Err(format!(
                    "with PostgreSQL away, a command took {took:?}, past the handler timeout"
                ));
            }
            seen.refused_without_postgres += 1;
            seen.slowest_refusal = seen.slowest_refusal.max(took);
        }
    }
    system.lock().unwrap().release(&Target::Postgres(0));
    if seen.refused_without_postgres == 0 {
        return Err("no command was answered while PostgreSQL was away".into());
    }
    let back = Instant::now();
    loop {
        if let Some(v) = client.receive(&cast.staff, sku, 1).await {
            if let (Some(id), Some(version)) = (v["id"].as_str(), v["version"].as_i64()) {
                acked.lock().unwrap().versions.push((
                    "inventory_item".into(),
                    id.to_owned(),
                    version,
                ));
            }
            break;
        }
        if back.elapsed() > Duration::from_secs(60) {
            return Err("commands still fail 60 s after PostgreSQL came back".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    seen.postgres_down_for = started.elapsed();
    Ok(seen)
}

/// Polls `path` on every gateway until each answers as `wanted` says (within 20 s).
async fn wait_for(
    client: &Client,
    path: &str,
    wanted: impl Fn(u16, &Value) -> bool,
) -> Result<(), String> {
    let started = Instant::now();
    let http = reqwest::Client::new();
    loop {
        // What each gateway not yet as expected answered last.
        let mut off = Vec::new();
        for base in client.bases() {
            let answer = http
                .get(format!("{base}{path}"))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            match answer {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    if !wanted(status, &body) {
                        off.push(format!("{base}{path}: {status} {body}"));
                    }
                }
                Err(e) => off.push(format!("{base}{path}: {e}")),
            }
        }
        if off.is_empty() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(20) {
            return Err(format!(
                "not as expected within 20 s; last {}",
                off.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `/metrics` on the first gateway until `wanted` holds (within 20 s); the text.
async fn wait_for_text(
    client: &Client,
    token: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let started = Instant::now();
    let base = &client.bases()[0];
    let http = reqwest::Client::new();
    loop {
        let text = match http
            .get(format!("{base}/metrics"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        if wanted(&text) {
            return Ok(text);
        }
        if started.elapsed() > Duration::from_secs(20) {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.starts_with("chronicle_server_up") || l.starts_with("chronicle_outbox")
                })
                .collect();
            return Err(format!("not as expected within 20 s; last {lines:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of the sample `name` (with its labels, as written) in Prometheus text.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
