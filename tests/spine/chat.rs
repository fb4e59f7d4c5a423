//! Chat over HTTP on real servers (the API contract, Chat; issue 11): rooms and their members, the
//! direct-room race, dense `seq` under concurrent senders, `client_msg_id` retries, read
//! marks and unread counts, history pages, membership enforced, replay.

use std::time::Duration;

use chronicle_tests::{eventually, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{invalid_fields, problem};

const SETTLE: Duration = Duration::from_secs(20);

async fn as_user(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let request = app.http.request(method, app.url(path)).bearer_auth(token);
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    request.send().await.expect("the gateway answers")
}

async fn create_room(app: &TestApp, token: &str, body: Value) -> String {
    let r = as_user(app, token, Method::POST, "/api/v1/rooms", Some(body)).await;
    chronicle_tests::created_id(r).await
}

async fn send(app: &TestApp, token: &str, room: &str, body: &str, client: &str) -> Value {
    let r = as_user(
        app,
        token,
        Method::POST,
        &format!("/api/v1/rooms/{room}/messages"),
        Some(json!({"body": body, "client_msg_id": client})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED, "sending {client}");
    r.json().await.unwrap()
}

/// The history once the read model holds `n` messages.
async fn history(app: &TestApp, token: &str, room: &str, query: &str, n: usize) -> Value {
    eventually("the history", SETTLE, || async {
        let r = as_user(
            app,
            token,
            Method::GET,
            &format!("/api/v1/rooms/{room}/messages{query}"),
            None,
        )
        .await;
        let page: Value = r.json().await.ok()?;
        (page["items"].as_array()?.len() == n).then_some(page)
    })
    .await
}

fn seqs(page: &Value) -> Vec<i64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn members_talk_and_outsiders_are_kept_out_until_added_and_after_removal() {
    let app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let (carol, carol_token) = app.register_and_login("carol").await;
    let room = create_room(
        &app,
        &app.token,
        json!({"kind": "group", "name": "team", "members": [bob]}),
    )
    .await;
    let first = send(&app, &app.token, &room, "hello", "c-1").await;
    assert_eq!(first["seq"], 1);
    assert!(first["id"].is_string() && first["sent_at"].is_string());
    let page = history(&app, &bob_token, &room, "", 1).await;
    assert_eq!(page["items"][0]["body"], "hello");
    assert_eq!(page["items"][0]["sender_id"], app.user_id.as_str());

    let path = format!("/api/v1/rooms/{room}/messages");
    let before = app.event_count().await;
    problem(
        as_user(&app, &carol_token, Method::GET, &path, None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    problem(
        as_user(
            &app,
            &carol_token,
            Method::POST,
            &path,
            Some(json!({"body": "let me in", "client_msg_id": "x"})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(app.event_count().await, before, "a refusal appends nothing");

    let added = as_user(
        &app,
        &bob_token,
        Method::POST,
        &format!("/api/v1/rooms/{room}/members"),
        Some(json!({"user_id": carol})),
    )
    .await;
    assert_eq!(added.status(), StatusCode::OK);
    history(&app, &carol_token, &room, "", 1).await;
    let removed = as_user(
        &app,
        &app.token,
        Method::DELETE,
        &format!("/api/v1/rooms/{room}/members/{carol}"),
        None,
    )
    .await;
    assert_eq!(removed.status(), StatusCode::OK);
    eventually("carol to be out", SETTLE, || async {
        let r = as_user(&app, &carol_token, Method::GET, &path, None).await;
        (r.status() == StatusCode::FORBIDDEN).then_some(())
    })
    .await;

    // Bad input: a NUL in a body, an empty one, a megabyte, a bad client id.
    for (body, client, field) in [
        ("a\u{0}b", "c-2", "body"),
        ("", "c-2", "body"),
        ("ok", "", "client_msg_id"),
    ] {
        let r = as_user(
            &app,
            &app.token,
            Method::POST,
            &path,
            Some(json!({"body": body, "client_msg_id": client})),
        )
        .await;
        assert_eq!(invalid_fields(r).await, [field]);
    }
    let r = as_user(
        &app,
        &app.token,
        Method::POST,
        &path,
        Some(json!({"body": "x".repeat(4_001), "client_msg_id": "c-3"})),
    )
    .await;
    assert_eq!(invalid_fields(r).await, ["body"]);
}

#[tokio::test]
async fn a_direct_room_is_unique_per_pair_even_when_both_create_it_at_once() {
    let app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let attempts = (0..10).map(|i| {
        let (app, bob, bob_token) = (&app, bob.clone(), bob_token.clone());
        async move {
            // Half from each side of the pair.
            let (token, other) = if i % 2 == 0 {
                (app.token.clone(), bob)
            } else {
                (bob_token, app.user_id.clone())
            };
            as_user(
                app,
                &token,
                Method::POST,
                "/api/v1/rooms",
                Some(json!({"kind": "direct", "members": [other]})),
            )
            .await
        }
    });
    let answers = futures::future::join_all(attempts).await;
    let mut created = Vec::new();
    let mut existing = Vec::new();
    for answer in answers {
        match answer.status() {
            StatusCode::CREATED => {
                created.push(answer.json::<Value>().await.unwrap()["id"].clone());
            }
            StatusCode::CONFLICT => {
                let body: Value = answer.json().await.unwrap();
                assert_eq!(body["code"], "direct_room_exists");
                existing.push(body["id"].clone());
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created.len(), 1, "one direct room per pair");
    assert!(existing.iter().all(|id| *id == created[0]), "409 names it");
    let r = as_user(
        &app,
        &app.token,
        Method::POST,
        "/api/v1/rooms",
        Some(json!({"kind": "direct", "members": [app.user_id]})),
    )
    .await;
    assert_eq!(invalid_fields(r).await, ["members"]);
}

#[tokio::test]
async fn twenty_concurrent_senders_get_dense_seqs_and_a_retry_gets_the_first_message() {
    let app = TestApp::spawn().await;
    let room = create_room(&app, &app.token, json!({"kind": "group", "members": []})).await;
    let sends = (0..20).map(|i| {
        let (app, room) = (&app, room.clone());
        async move { send(app, &app.token, &room, &format!("m{i}"), &format!("c{i}")).await }
    });
    let sent = futures::future::join_all(sends).await;
    let mut seqs_sent: Vec<i64> = sent.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    seqs_sent.sort_unstable();
    assert_eq!(seqs_sent, (1..=20).collect::<Vec<_>>());
    let before = app.event_count().await;
    let again = send(&app, &app.token, &room, "m7 again", "c7").await;
    let first = sent.iter().find(|m| m["seq"] == again["seq"]).unwrap();
    assert_eq!(&again, first, "the first message, not a second");
    assert_eq!(app.event_count().await, before);
    let page = history(&app, &app.token, &room, "?limit=200", 20).await;
    assert_eq!(seqs(&page), (1..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn read_marks_move_forward_only_and_unread_counts_follow() {
    let app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let room = create_room(&app, &app.token, json!({"kind": "group", "members": [bob]})).await;
    for i in 0..3 {
        send(&app, &bob_token, &room, &format!("m{i}"), &format!("c{i}")).await;
    }
    send(&app, &app.token, &room, "mine", "mine").await;
    let unread = |expected: i64| {
        let (app, room) = (&app, room.clone());
        async move {
            eventually("the unread count", SETTLE, || async {
                let rooms: Value = app.get("/api/v1/rooms").await.json().await.ok()?;
                let this = rooms["items"]
                    .as_array()?
                    .iter()
                    .find(|r| r["id"] == room.as_str())?
                    .clone();
                // All four messages projected, and the count as expected.
                (this["last_message"]["seq"] == 4 && this["unread_count"] == expected)
                    .then_some(this)
            })
            .await
        }
    };
    let listed = unread(3).await;
    assert_eq!(listed["last_message"]["body"], "mine");
    assert_eq!(listed["kind"], "group");
    assert_eq!(listed["members"].as_array().unwrap().len(), 2);
    let read_path = format!("/api/v1/rooms/{room}/read");
    let read = |up_to: u64| app.post(&read_path, json!({"up_to_seq": up_to}));
    assert_eq!(read(2).await.status(), StatusCode::OK);
    unread(1).await;
    let before = app.event_count().await;
    assert_eq!(read(1).await.status(), StatusCode::OK);
    assert_eq!(app.event_count().await, before, "a mark never moves back");
    assert_eq!(read(99).await.status(), StatusCode::OK);
    unread(0).await;
}

/// Follows `next_cursor` from `first` (a query string) until it is null, as a client written
/// from the API contract's "Pagination" does, keeping its first query and adding the cursor; gives every
/// seq in the order the pages gave them. Bounded, so a loop fails the test instead of hanging.
async fn follow_cursor(app: &TestApp, room: &str, first: &str) -> Vec<i64> {
    let mut seen = Vec::new();
    let mut query = first.to_owned();
    for _ in 0..100 {
        let r = as_user(
            app,
            &app.token,
            Method::GET,
            &format!("/api/v1/rooms/{room}/messages{query}"),
            None,
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK, "{query}");
        let page: Value = r.json().await.unwrap();
        seen.extend(seqs(&page));
        match page["next_cursor"].as_str() {
            None => return seen,
            Some(cursor) => {
                let sep = if first.is_empty() { "?" } else { "&" };
                query = format!("{first}{sep}cursor={cursor}");
            }
        }
    }
    panic!("next_cursor never ended; seqs so far: {seen:?}");
}

#[tokio::test]
async fn following_next_cursor_gives_every_message_once_and_ends() {
    // Regression (issue 29): `cursor` was ignored, so `?limit=3&cursor=<next_cursor>` gave the
    // same page and the same cursor for ever, and `cursor` alone the whole history.
    let app = TestApp::spawn().await;
    let room = create_room(&app, &app.token, json!({"kind": "group", "members": []})).await;
    for i in 1..=8 {
        send(&app, &app.token, &room, &format!("m{i}"), &format!("c{i}")).await;
    }
    history(&app, &app.token, &room, "?limit=200", 8).await;

    // Newest first, page by page; each page in seq order.
    let back = follow_cursor(&app, &room, "?limit=3").await;
    assert_eq!(back, [6, 7, 8, 3, 4, 5, 1, 2]);
    // The default limit, a cursor and nothing else.
    let all = follow_cursor(&app, &room, "").await;
    assert_eq!(all, (1..=8).collect::<Vec<_>>());
    // Oldest first from after_seq, page by page.
    let forward = follow_cursor(&app, &room, "?limit=3&after_seq=0").await;
    assert_eq!(forward, (1..=8).collect::<Vec<_>>());
    // From before_seq backwards.
    let older = follow_cursor(&app, &room, "?limit=2&before_seq=6").await;
    assert_eq!(older, [4, 5, 2, 3, 1]);

    // A cursor alone continues its own direction, whatever else the query kept.
    let first: Value = as_user(
        &app,
        &app.token,
        Method::GET,
        &format!("/api/v1/rooms/{room}/messages?limit=3&after_seq=0"),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = as_user(
        &app,
        &app.token,
        Method::GET,
        &format!("/api/v1/rooms/{room}/messages?cursor={cursor}"),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(seqs(&second), [4, 5, 6, 7, 8]);
    assert!(second["next_cursor"].is_null());

    // A cursor this API did not make is refused, not read as the start.
    let bad = as_user(
        &app,
        &app.token,
        Method::GET,
        &format!("/api/v1/rooms/{room}/messages?cursor=5"),
        None,
    )
    .await;
    problem(bad, StatusCode::BAD_REQUEST, "invalid_cursor").await;
}

#[tokio::test]
async fn history_pages_by_seq_both_ways_and_replays_byte_for_byte() {
    let app = TestApp::spawn().await;
    let room = create_room(&app, &app.token, json!({"kind": "group", "members": []})).await;
    for i in 1..=25 {
        send(&app, &app.token, &room, &format!("m{i}"), &format!("c{i}")).await;
    }
    history(&app, &app.token, &room, "?limit=200", 25).await;
    let latest = history(&app, &app.token, &room, "?limit=10", 10).await;
    assert_eq!(seqs(&latest), (16..=25).collect::<Vec<_>>());
    assert!(latest["next_cursor"].is_string(), "more pages: {latest}");
    let older = history(&app, &app.token, &room, "?limit=10&before_seq=16", 10).await;
    assert_eq!(seqs(&older), (6..=15).collect::<Vec<_>>());
    let oldest = history(&app, &app.token, &room, "?limit=10&before_seq=6", 5).await;
    assert_eq!(seqs(&oldest), (1..=5).collect::<Vec<_>>());
    assert!(oldest["next_cursor"].is_null());
    let newer = history(&app, &app.token, &room, "?limit=3&after_seq=20", 3).await;
    assert_eq!(seqs(&newer), [21, 22, 23]);
    assert!(newer["next_cursor"].is_string(), "more pages: {newer}");

    crate::common::assert_replays_byte_for_byte(
        &app,
        "chat_history",
        &["chat_rooms", "chat_members", "chat_messages"],
        "UPDATE chat.chat_messages SET body = 'damaged'",
        7,
    )
    .await;
}

#[tokio::test]
async fn the_event_stream_of_one_room() {
    let app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let (carol, _) = app.register_and_login("carol").await;
    let room = create_room(
        &app,
        &app.token,
        json!({"kind": "group", "name": "team", "members": [bob]}),
    )
    .await;
    send(&app, &app.token, &room, "hello", "c-1").await;
    send(&app, &app.token, &room, "hello again?", "c-1").await;
    send(&app, &bob_token, &room, "hi\nthere", "b-1").await;
    as_user(
        &app,
        &bob_token,
        Method::POST,
        &format!("/api/v1/rooms/{room}/members"),
        Some(json!({"user_id": carol})),
    )
    .await;
    as_user(
        &app,
        &app.token,
        Method::POST,
        &format!("/api/v1/rooms/{room}/read"),
        Some(json!({"up_to_seq": 2})),
    )
    .await;
    as_user(
        &app,
        &app.token,
        Method::DELETE,
        &format!("/api/v1/rooms/{room}/members/{carol}"),
        None,
    )
    .await;
    let rows: Vec<(i64, String, Value, Value)> = sqlx::query_as(
        "SELECT sequence, event_type, payload, metadata FROM chat.events \
         WHERE aggregate_type = 'room' ORDER BY sequence",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let stream: Vec<Value> = rows
        .iter()
        .map(|(s, event_type, payload, metadata)| {
            let mut payload = payload[event_type].clone();
            for volatile in ["message_id", "sent_at"] {
                if payload.get(volatile).is_some() {
                    payload[volatile] = json!(format!("[{volatile}]"));
                }
            }
            json!({"event": format!("room#{s}"), "type": event_type, "payload": payload, "actor": metadata["actor"]})
        })
        .collect();
    let mut text = serde_json::to_string(&stream)
        .unwrap()
        .replace(&room, "[room]")
        .replace(&app.user_id, "[alice]")
        .replace(&bob, "[bob]")
        .replace(&carol, "[carol]");
    // Members are stored sorted by id, which differs from run to run: sort the names.
    text = text.replace("[\"[bob]\",\"[alice]\"]", "[\"[alice]\",\"[bob]\"]");
    insta::assert_json_snapshot!(serde_json::from_str::<Value>(&text).unwrap());
}

#[tokio::test]
async fn who_may_read_a_history_follows_the_rooms_acknowledged_commands_at_once() {
    // Regression (issue 29): answered from the read model, a non-member asking right after
    // the room was made got 404 `no such room` instead of 403, a member just added got 403,
    // and one just removed could still read.
    let app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let status = |token: String, room: String| {
        let app = &app;
        async move {
            as_user(
                app,
                &token,
                Method::GET,
                &format!("/api/v1/rooms/{room}/messages"),
                None,
            )
            .await
            .status()
        }
    };
    for round in 0..5 {
        let room = create_room(&app, &app.token, json!({"kind": "group", "members": []})).await;
        send(&app, &app.token, &room, "hello", &format!("c{round}")).await;
        assert_eq!(
            status(bob_token.clone(), room.clone()).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(app.token.clone(), room.clone()).await,
            StatusCode::OK
        );
        let added = as_user(
            &app,
            &app.token,
            Method::POST,
            &format!("/api/v1/rooms/{room}/members"),
            Some(json!({"user_id": bob})),
        )
        .await;
        assert_eq!(added.status(), StatusCode::OK);
        assert_eq!(
            status(bob_token.clone(), room.clone()).await,
            StatusCode::OK
        );
        let removed = as_user(
            &app,
            &app.token,
            Method::DELETE,
            &format!("/api/v1/rooms/{room}/members/{bob}"),
            None,
        )
        .await;
        assert_eq!(removed.status(), StatusCode::OK);
        assert_eq!(
            status(bob_token.clone(), room.clone()).await,
            StatusCode::FORBIDDEN
        );
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(
        status(bob_token.clone(), unknown).await,
        StatusCode::NOT_FOUND
    );
}
