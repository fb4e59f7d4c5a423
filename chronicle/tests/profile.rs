//! `GET /debug/profile` on a running `chronicle up` (issue 35): staff only, its bounds
//! refused with the fields named, one profile at a time, and what it returns is a CPU
//! profile in Google's pprof format (decoded here with the schema pprof defines, as
//! `go tool pprof` reads it) whose samples name Chronicle's own functions, or a flame graph.
//! (Off unless `CHRONICLE_PROFILING=1`: `spine`'s `gateway` tests ask a gateway without it.)

mod common;
#[allow(dead_code)] // its users only
#[path = "common/gateways.rs"]
mod gateways;

use chronicle_tests::{invalid_fields, problem, send_as, TestDb, TestNats};
use pprof::protos::Message as _;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn staff_take_a_cpu_profile_of_a_running_chronicle_as_pprof_or_a_flame_graph() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let data = tempfile::tempdir().unwrap();
    let mut up = common::up_on(&db, &nats, data.path());
    up.env("CHRONICLE_PROFILING", "1")
        .env("CHRONICLE_STAFF_USERS", "boss")
        .env("CHRONICLE_RATE_LIMIT_PER_SECOND", "0");
    let (_chronicle, base, _) = common::start_gateway(up);
    let http = reqwest::Client::new();
    let (_, boss) = gateways::user(&http, &base, "boss").await;
    let (_, eve) = gateways::user(&http, &base, "eve").await;
    let ask = |token: String, query: &str| {
        let (http, url) = (http.clone(), format!("{base}/debug/profile?{query}"));
        async move { send_as(&http, Method::GET, url, &token, None).await }
    };

    problem(
        ask(eve.clone(), "seconds=1").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    for (query, field) in [
        ("seconds=0", "seconds"),
        ("seconds=61", "seconds"),
        ("seconds=1&format=png", "format"),
    ] {
        assert_eq!(
            invalid_fields(ask(boss.clone(), query).await).await,
            [field],
            "{query}"
        );
    }

    // Work for the profile to see: items created and read back while it samples.
    let busy = {
        let (http, base, boss) = (http.clone(), base.clone(), boss.clone());
        tokio::spawn(async move {
            for i in 0.. {
                let item = json!({"sku": format!("P-{i}"), "name": "Pepper", "price_cents": 5,
                    "initial_stock": 1});
                let url = format!("{base}/api/v1/inventory/items");
                send_as(&http, Method::POST, url, &boss, Some(&item)).await;
                let url = format!("{base}/api/v1/inventory/items?limit=50");
                send_as(&http, Method::GET, url, &boss, None).await;
            }
        })
    };
    // Two at once, each of 3 s: one is taken, the other refused while it runs.
    let (a, b) = tokio::join!(
        ask(boss.clone(), "seconds=3"),
        ask(boss.clone(), "seconds=3")
    );
    let (taken, refused) = if a.status() == StatusCode::OK {
        (a, b)
    } else {
        (b, a)
    };
    problem(refused, StatusCode::CONFLICT, "profile_in_progress").await;
    assert_eq!(taken.status(), StatusCode::OK);
    assert_eq!(taken.headers()["content-type"], "application/octet-stream");
    let profile = pprof::protos::Profile::decode(taken.bytes().await.unwrap()).expect("pprof");
    assert!(!profile.sample.is_empty(), "no samples in 3 s of work");
    assert_eq!(profile.sample_type.len(), 2, "samples and CPU time");
    let ours = profile
        .string_table
        .iter()
        .filter(|name| {
            name.contains("chronicle_gateway::") || name.contains("chronicle_commands::")
        })
        .count();
    assert!(
        ours > 0,
        "no Chronicle function among {} names",
        profile.string_table.len()
    );

    let graph = ask(boss.clone(), "seconds=1&format=svg").await;
    assert_eq!(graph.status(), StatusCode::OK);
    assert_eq!(graph.headers()["content-type"], "image/svg+xml");
    let svg = graph.text().await.unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("</svg>"),
        "{}",
        &svg[..svg.len().min(200)]
    );
    busy.abort();
}
