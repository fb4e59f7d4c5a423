//! A bounded context on a database of its own (issue 34): `CHRONICLE_CHAT_DATABASE_URL`
//! moves chat's schema to a second PostgreSQL cluster while every other context stays on
//! `DATABASE_URL`. The real binary, two real clusters and a real nats-server: chat's events
//! are stored only there, both stores publish into the one `EVENTS` stream exactly once and
//! in each aggregate's order, the read models of both work, and a rebuild from the stores
//! (`replay --from postgres`, which merges them) equals what the projectors built, the
//! business series that read both contexts included.

mod common;
#[allow(dead_code)] // its users only
#[path = "common/gateways.rs"]
mod gateways;

use std::{collections::BTreeMap, process::Command, time::Duration};

use chronicle_tests::{eventually, every_context, TestDb, TestNats, TestPostgres};
use futures::StreamExt;
use serde_json::{json, Value};
use sqlx::PgPool;

/// Runs a `chronicle` subcommand on the split layout; its status and output.
fn chronicle(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the chronicle binary runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

/// Every row of `table`, as text, in order: what a rebuild must give back.
async fn rows(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(&format!("SELECT t::text FROM {table} t ORDER BY t::text"))
        .fetch_all(pool)
        .await
        .unwrap()
}

/// `GET {url}` as `token`: the JSON answer, if there is one.
async fn get(http: &reqwest::Client, url: String, token: &str) -> Option<Value> {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// `POST {url}` with `body` as `token`: the status and the JSON answer.
async fn post(
    http: &reqwest::Client,
    url: String,
    token: &str,
    body: Value,
) -> (reqwest::StatusCode, Value) {
    let answer =
        chronicle_tests::send_as(http, reqwest::Method::POST, url, token, Some(&body)).await;
    let status = answer.status();
    (status, answer.json().await.unwrap_or(Value::Null))
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_on_a_cluster_of_its_own_publishes_into_the_one_log_and_rebuilds_from_both_stores() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let chat_store = TestPostgres::start_empty().await;
    let data = tempfile::tempdir().unwrap();
    let split = [
        ("CHRONICLE_STAFF_USERS", "*"),
        ("CHRONICLE_CHAT_DATABASE_URL", chat_store.url.as_str()),
        // Blog shares chat's cluster: two contexts on one database of their own.
        ("CHRONICLE_BLOG_DATABASE_URL", chat_store.url.as_str()),
    ];
    let (_running, base) = gateways::start_with("up", &db, &nats, data.path(), &split);
    let http = reqwest::Client::new();
    let health = get(&http, format!("{base}/health"), "").await.unwrap();
    assert_eq!(health["postgres"], "up", "{health}");

    // Commerce on the one database, chat on its own: an order, and a room of 250 messages
    // (more than a page of history).
    let (_, alice) = gateways::user(&http, &base, "alice").await;
    let (bob_id, bob) = gateways::user(&http, &base, "bob").await;
    let (status, item) = post(
        &http,
        format!("{base}/api/v1/inventory/items"),
        &alice,
        json!({"sku": "SPLIT-1", "name": "Lamp", "price_cents": 700, "initial_stock": 10}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{item}");
    let (status, order) = post(
        &http,
        format!("{base}/api/v1/orders"),
        &bob,
        json!({"lines": [{"sku": "SPLIT-1", "quantity": 2}]}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{order}");
    let (status, room) = post(
        &http,
        format!("{base}/api/v1/rooms"),
        &alice,
        json!({"kind": "group", "name": "split", "members": [bob_id]}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{room}");
    let room = room["id"].as_str().expect("a room id").to_owned();
    const MESSAGES: usize = 250;
    for i in 0..MESSAGES {
        let (status, sent) = post(
            &http,
            format!("{base}/api/v1/rooms/{room}/messages"),
            if i % 2 == 0 { &alice } else { &bob },
            json!({"body": format!("message {i}"), "client_msg_id": format!("split-{i}")}),
        )
        .await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{sent}");
    }

    // Both read models answer: the order is reserved by the saga, and the history, paged
    // back by next_cursor as a client would, holds every message once, in order.
    let order_id = order["id"].as_str().unwrap().to_owned();
    eventually("the order reserved", Duration::from_secs(30), || async {
        let seen = get(&http, format!("{base}/api/v1/orders/{order_id}"), &bob).await?;
        (seen["status"] == "reserved").then_some(())
    })
    .await;
    let history = eventually("the whole history", Duration::from_secs(30), || async {
        let mut seqs = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let url = match &next {
                Some(cursor) => {
                    format!("{base}/api/v1/rooms/{room}/messages?limit=100&cursor={cursor}")
                }
                None => format!("{base}/api/v1/rooms/{room}/messages?limit=100"),
            };
            let page = get(&http, url, &bob).await?;
            seqs.extend(
                page["items"]
                    .as_array()?
                    .iter()
                    .filter_map(|m| m["seq"].as_i64()),
            );
            match page["next_cursor"].as_str() {
                Some(cursor) => next = Some(cursor.to_owned()),
                None => break,
            }
        }
        (seqs.len() == MESSAGES).then_some(seqs)
    })
    .await;
    let mut sorted = history.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, (1..=MESSAGES as i64).collect::<Vec<_>>());

    // The gateway listens on every database, not the main one alone: a post changed after
    // it was cached is served changed (blog's projector notifies on chat's cluster, where
    // blog lives, and that notice drops the cached post).
    let (status, draft) = post(
        &http,
        format!("{base}/api/v1/posts"),
        &alice,
        json!({"title": "First", "body_markdown": "Hello", "tags": []}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{draft}");
    let post_id = draft["id"].as_str().unwrap().to_owned();
    let publish = format!("{base}/api/v1/posts/{post_id}/publish");
    let (status, published) = post(&http, publish, &alice, json!({})).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{published}");
    let one_post = format!("{base}/api/v1/posts/{post_id}");
    let version = published["version"].as_u64().unwrap();
    let cached = get(&http, format!("{one_post}?min_version={version}"), &bob)
        .await
        .unwrap();
    assert_eq!(cached["title"], "First", "{cached}");
    let changed = chronicle_tests::send_as(
        &http,
        reqwest::Method::PATCH,
        &one_post,
        &alice,
        Some(&json!({"title": "Second"})),
    )
    .await;
    assert_eq!(changed.status(), reqwest::StatusCode::OK);
    eventually(
        "the changed post served",
        Duration::from_secs(10),
        || async {
            let seen = get(&http, one_post.clone(), &bob).await?;
            (seen["title"] == "Second").then_some(())
        },
    )
    .await;

    // Chat's events are in its own store only; the other contexts' in the one database.
    let main = db.pool().await;
    let chat = PgPool::connect(&chat_store.url).await.unwrap();
    let chat_events = count(&chat, "SELECT count(*) FROM chat.events").await;
    assert!(chat_events > MESSAGES as i64, "{chat_events} chat events");
    let chat_here = count(
        &main,
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'chat' AND tablename = 'events'",
    )
    .await;
    if chat_here > 0 {
        assert_eq!(count(&main, "SELECT count(*) FROM chat.events").await, 0);
    }
    let main_events = count(
        &main,
        &format!(
            "SELECT coalesce(sum(n), 0)::bigint FROM ({}) c(n) ",
            every_context("count(*)", "events")
        ),
    )
    .await;
    assert!(main_events > 0);

    // The one log: once both outboxes are empty, the stream holds every stored event once
    // (Nats-Msg-Id makes the relays of both stores exactly once). The system's own
    // processes append meanwhile (jobs), so the three counts are read together until they
    // agree.
    let js = async_nats::jetstream::new(nats.client().await);
    let stream = js.get_stream("EVENTS").await.unwrap();
    let total = |table: &'static str| {
        let (main, chat) = (main.clone(), chat.clone());
        async move {
            count(
                &main,
                &format!(
                    "SELECT coalesce(sum(n), 0)::bigint FROM ({}) c(n)",
                    every_context("count(*)", table)
                ),
            )
            .await
                + count(
                    &chat,
                    &format!(
                        "SELECT (SELECT count(*) FROM chat.{table}) + (SELECT count(*) FROM blog.{table})"
                    ),
                )
                .await
        }
    };
    let (stored, in_log) = eventually(
        "every stored event in the log",
        Duration::from_secs(30),
        || async {
            let pending = total("outbox").await;
            let stored = total("events").await;
            let in_log = stream.get_info().await.ok()?.state.messages as i64;
            (pending == 0 && stored == in_log).then_some((stored, in_log))
        },
    )
    .await;
    assert_eq!(stored, in_log);

    // Each chat aggregate's events are in the log in their order, 1, 2, 3...
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: "events.chat.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen = 0;
    while seen < chat_events {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the chat events are in the log")
            .unwrap()
            .unwrap();
        let headers = message.headers.as_ref().unwrap();
        let sequence: u64 = headers
            .get("Chronicle-Aggregate-Sequence")
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        let aggregate = message.subject.to_string();
        let before = last.insert(aggregate.clone(), sequence).unwrap_or(0);
        assert_eq!(sequence, before + 1, "{aggregate} out of order");
        seen += 1;
    }

    // Rebuilt from the two stores, merged: equal to what the projectors built.
    let urls = [
        ("DATABASE_URL", db.url.as_str()),
        ("NATS_URL", &nats.url()),
        ("CHRONICLE_CHAT_DATABASE_URL", chat_store.url.as_str()),
        ("CHRONICLE_DATA_DIR", data.path().to_str().unwrap()),
    ];
    eventually(
        "the projectors caught up",
        Duration::from_secs(30),
        || async {
            let readers = get(&http, format!("{base}/api/v1/projections"), &alice).await?;
            readers
                .as_array()?
                .iter()
                .all(|r| r["lag_events"] == 0)
                .then_some(())
        },
    )
    .await;
    let built_chat = rows(&chat, "chat.chat_messages").await;
    let built_business = rows(&main, "monitoring.business_series").await;
    assert_eq!(built_chat.len(), MESSAGES);
    // `replay` reads the stores by default and says so; `--from postgres` asks for them.
    let (ok, said) = chronicle(&["replay", "chat_history"], &urls);
    assert!(ok, "replay chat_history: {said}");
    assert!(said.contains(r#""source":"postgres""#), "{said}");
    let (ok, said) = chronicle(&["replay", "business_metrics", "--from", "postgres"], &urls);
    assert!(ok, "replay business_metrics --from postgres: {said}");
    assert!(said.contains(r#""source":"postgres""#), "{said}");
    // A read model only the log can rebuild (it reads every context) is rebuilt from the
    // stream by default, saying why; asked for by name from the stores, it is refused.
    let (ok, said) = chronicle(&["replay", "job_triggers"], &urls);
    assert!(ok, "replay job_triggers: {said}");
    assert!(said.contains(r#""source":"stream""#), "{said}");
    assert!(
        said.contains("rebuilding it from the stream instead"),
        "{said}"
    );
    let (ok, said) = chronicle(&["replay", "job_triggers", "--from", "postgres"], &urls);
    assert!(
        !ok,
        "job_triggers cannot be rebuilt from the stores: {said}"
    );
    assert_eq!(rows(&chat, "chat.chat_messages").await, built_chat);
    assert_eq!(
        rows(&main, "monitoring.business_series").await,
        built_business,
        "the series of orders (one store) and messages (the other) rebuild alike"
    );

    // A role connects only to the stores of the contexts it uses: chat's projector runs
    // with DATABASE_URL pointing at a port nothing listens on.
    let nowhere = format!(
        "postgres://postgres@127.0.0.1:{}/nowhere",
        chronicle_tests::free_port()
    );
    let mut projector = Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .args(["project", "chat_history"])
        .env("DATABASE_URL", &nowhere)
        .env("NATS_URL", nats.url())
        .env("CHRONICLE_CHAT_DATABASE_URL", &chat_store.url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Longer than a pool waits for a connection (5 s): a role that reached for the main
    // database would have given up and exited by then.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let exited = projector.try_wait().unwrap();
    let _ = projector.kill();
    let output = projector.wait_with_output().unwrap();
    assert!(
        exited.is_none(),
        "chat's projector stopped ({exited:?}): {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The operators' commands work on the split layout too, and a variable naming no
    // context is refused, saying which are.
    let (ok, said) = chronicle(&["projections", "status"], &urls);
    assert!(ok && said.contains("chat_history"), "{said}");
    let mut wrong = urls.to_vec();
    wrong.push(("CHRONICLE_CHATS_DATABASE_URL", chat_store.url.as_str()));
    let (ok, said) = chronicle(&["projections", "status"], &wrong);
    assert!(
        !ok && said.contains("CHRONICLE_CHATS_DATABASE_URL names no context")
            && said.contains("CHRONICLE_CHAT_DATABASE_URL"),
        "{said}"
    );
}
