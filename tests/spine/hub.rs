//! The WebSocket hub with a WebSocket client we did not write (tokio-tungstenite): auth at
//! the handshake, live messages in `seq` order, recovery with `since_seq`, sending over the
//! socket, membership enforced, bad frames answered.

use chronicle_tests::ReadJson;
use std::time::Duration;

use chronicle_tests::TestApp;
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(app: &TestApp, token: &str) -> Socket {
    let url = format!("{}/ws?token={token}", app.base.replace("http://", "ws://"));
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("the hub accepts a good token");
    socket
}

async fn frame(socket: &mut Socket) -> Value {
    frame_within(socket, Duration::from_secs(10)).await
}

async fn frame_within(socket: &mut Socket, wait: Duration) -> Value {
    loop {
        let message = tokio::time::timeout(wait, socket.next())
            .await
            .expect("a frame in time")
            .expect("the socket stays open")
            .expect("a readable frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("frames are JSON");
        }
    }
}

async fn put(socket: &mut Socket, value: Value) {
    socket
        .send(Message::text(value.to_string()))
        .await
        .expect("the socket takes a frame");
}

async fn room_with(app: &TestApp, members: &[&str]) -> String {
    let r = app
        .send_json(
            Method::POST,
            "/api/v1/rooms",
            &json!({"kind": "group", "members": members}),
        )
        .await;
    chronicle_tests::created_id(r).await
}

async fn send_http(app: &TestApp, room: &str, body: &str) -> Value {
    let r = app
        .post(
            &format!("/api/v1/rooms/{room}/messages"),
            json!({"body": body, "client_msg_id": body.replace(' ', "-")}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_bad_token_is_refused_before_the_upgrade() {
    let app = TestApp::spawn().await;
    for query in ["", "?token=nonsense"] {
        let url = format!("{}/ws{query}", app.base.replace("http://", "ws://"));
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401);
            }
            other => panic!("expected 401, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_subscriber_gets_every_new_message_in_seq_order() {
    let app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let room = room_with(&app, &[&bob]).await;
    let mut socket = connect(&app, &bob_token).await;
    put(&mut socket, json!({"type": "subscribe", "room_id": room})).await;
    let subscribed = frame(&mut socket).await;
    assert_eq!(
        subscribed,
        json!({"type": "subscribed", "room_id": room, "head_seq": 0, "recovered": true})
    );
    for i in 1..=5 {
        send_http(&app, &room, &format!("m{i}")).await;
    }
    for seq in 1..=5 {
        let message = frame(&mut socket).await;
        assert_eq!(message["type"], "message");
        assert_eq!(message["seq"], seq);
        assert_eq!(message["body"], format!("m{seq}"));
        assert_eq!(message["sender_id"], app.user_id.as_str());
    }
    // The hub reads the log like the subscribers, and reports under the same metric names.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(r#"chronicle_subscriber_checkpoint{subscriber="hub"}"#)),
        "{metrics}"
    );
    assert!(metrics
        .lines()
        .any(|l| l.starts_with("chronicle_ws_connections ")));
}

#[tokio::test]
async fn recovery_sends_exactly_the_missed_messages_then_live_ones() {
    let app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let room = room_with(&app, &[&bob]).await;
    for i in 1..=5 {
        send_http(&app, &room, &format!("m{i}")).await;
    }
    let mut socket = connect(&app, &bob_token).await;
    put(
        &mut socket,
        json!({"type": "subscribe", "room_id": room, "since_seq": 2}),
    )
    .await;
    for seq in 3..=5 {
        assert_eq!(frame(&mut socket).await["seq"], seq);
    }
    assert_eq!(
        frame(&mut socket).await,
        json!({"type": "subscribed", "room_id": room, "head_seq": 5, "recovered": true})
    );
    // Sent over the socket: acked, and delivered to the subscription, once.
    put(
        &mut socket,
        json!({"type": "send", "room_id": room, "body": "from bob", "client_msg_id": "b-1"}),
    )
    .await;
    let mut got = [frame(&mut socket).await, frame(&mut socket).await];
    got.sort_by_key(|f| f["type"].as_str().unwrap_or_default().to_owned());
    assert_eq!(got[0]["type"], "ack");
    assert_eq!(got[0]["client_msg_id"], "b-1");
    assert_eq!(got[0]["seq"], 6);
    assert_eq!(got[1]["type"], "message");
    assert_eq!(got[1]["seq"], 6);
    assert_eq!(got[1]["id"], got[0]["id"]);
    send_http(&app, &room, "m7").await;
    assert_eq!(frame(&mut socket).await["seq"], 7, "no gap, no duplicate");
}

#[tokio::test]
async fn outsiders_cannot_subscribe_and_a_bad_frame_leaves_the_connection_usable() {
    let app = TestApp::spawn().await;
    let (_, carol_token) = app.register_and_login("carol").await;
    let room = room_with(&app, &[]).await;
    let mut socket = connect(&app, &carol_token).await;
    put(&mut socket, json!({"type": "subscribe", "room_id": room})).await;
    let refused = frame(&mut socket).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    put(
        &mut socket,
        json!({"type": "send", "room_id": room, "body": "let me in", "client_msg_id": "x"}),
    )
    .await;
    assert_eq!(frame(&mut socket).await["code"], "forbidden");
    socket.send(Message::text("{not json")).await.unwrap();
    assert_eq!(frame(&mut socket).await["code"], "bad_frame");
    put(&mut socket, json!({"type": "teleport"})).await;
    assert_eq!(frame(&mut socket).await["code"], "bad_frame");
    put(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(frame(&mut socket).await, json!({"type": "pong"}));
}

/// Waits until the connection is being served (its user feed is registered).
async fn ready(socket: &mut Socket) {
    put(socket, json!({"type": "ping"})).await;
    assert_eq!(frame(socket).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn a_message_sent_through_one_gateway_reaches_a_client_of_another() {
    let mut app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let room = room_with(&app, &[&bob]).await;
    let second = app.spawn_second_gateway().await;
    let url = format!(
        "{}/ws?token={bob_token}",
        second.replace("http://", "ws://")
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    put(&mut socket, json!({"type": "subscribe", "room_id": room})).await;
    assert_eq!(frame(&mut socket).await["type"], "subscribed");
    for i in 1..=3 {
        send_http(&app, &room, &format!("via the first {i}")).await;
    }
    for seq in 1..=3 {
        let message = frame(&mut socket).await;
        assert_eq!(
            (message["type"].as_str(), message["seq"].as_i64()),
            (Some("message"), Some(seq))
        );
    }
}

#[tokio::test]
async fn the_customer_sees_an_order_change_status_live() {
    let app = TestApp::spawn().await;
    app.create_item("W", "Widget", 100, 5).await;
    let mut socket = connect(&app, &app.token).await;
    ready(&mut socket).await;
    let placed: Value = app
        .post(
            "/api/v1/orders",
            json!({"lines": [{"sku": "W", "quantity": 1}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = placed["id"].as_str().unwrap();
    assert_eq!(
        frame(&mut socket).await,
        json!({"type": "order_status", "order_id": id, "status": "pending"})
    );
    assert_eq!(
        frame(&mut socket).await,
        json!({"type": "order_status", "order_id": id, "status": "reserved"})
    );
}

#[tokio::test]
async fn a_member_removed_gets_no_more_of_the_rooms_messages() {
    let app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let room = room_with(&app, &[&bob]).await;
    let mut socket = connect(&app, &bob_token).await;
    put(&mut socket, json!({"type": "subscribe", "room_id": room})).await;
    assert_eq!(frame(&mut socket).await["type"], "subscribed");
    let removed = app
        .send(
            Method::DELETE,
            &format!("/api/v1/rooms/{room}/members/{bob}"),
        )
        .await;
    assert_eq!(removed.status(), StatusCode::OK);
    assert_eq!(
        frame(&mut socket).await,
        json!({"type": "member_removed", "room_id": room, "user_id": bob})
    );
    send_http(&app, &room, "not for bob").await;
    // The next frame bob gets is the answer to his ping, not the message.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ready(&mut socket).await;
}

async fn presence_of(app: &TestApp, user_id: &str) -> Value {
    app.get(&format!("/api/v1/users/{user_id}/presence"))
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_user_is_online_while_any_connection_is_open() {
    let app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    assert_eq!(
        presence_of(&app, &bob).await,
        json!({"online": false, "last_seen": null})
    );
    let mut first = connect(&app, &bob_token).await;
    let mut second = connect(&app, &bob_token).await;
    ready(&mut first).await;
    ready(&mut second).await;
    let online = presence_of(&app, &bob).await;
    assert_eq!(online["online"], true);
    assert!(online["last_seen"].is_string());
    first.close(None).await.unwrap();
    // Closing one of two connections leaves the user online; closing both does not. (The
    // first close is over once the server has closed that socket too.)
    while let Some(Ok(_)) = first.next().await {}
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(presence_of(&app, &bob).await["online"], true);
    second.close(None).await.unwrap();
    chronicle_tests::eventually("bob to go offline", Duration::from_secs(10), || async {
        (presence_of(&app, &bob).await["online"] == false).then_some(())
    })
    .await;
}

#[tokio::test]
async fn room_members_see_each_other_come_and_go_and_type() {
    let app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let room = room_with(&app, &[&bob]).await;
    // Bob's membership is in the read model that presence announcements use.
    chronicle_tests::eventually(
        "the room in bob's list",
        Duration::from_secs(10),
        || async {
            let rooms: Value = app
                .http
                .get(app.url("/api/v1/rooms"))
                .bearer_auth(&bob_token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (rooms["items"].as_array()?.len() == 1).then_some(())
        },
    )
    .await;
    let mut alice = connect(&app, &app.token).await;
    put(&mut alice, json!({"type": "subscribe", "room_id": room})).await;
    assert_eq!(frame(&mut alice).await["type"], "subscribed");

    let mut bobs = connect(&app, &bob_token).await;
    ready(&mut bobs).await;
    assert_eq!(
        frame(&mut alice).await,
        json!({"type": "presence", "user_id": bob, "online": true, "room_id": room})
    );
    put(&mut bobs, json!({"type": "typing", "room_id": room})).await;
    assert_eq!(
        frame(&mut alice).await,
        json!({"type": "typing", "user_id": bob, "room_id": room})
    );
    bobs.close(None).await.unwrap();
    assert_eq!(
        frame(&mut alice).await,
        json!({"type": "presence", "user_id": bob, "online": false, "room_id": room})
    );
}

/// A client that does not read is dropped; the room's other members keep receiving, in order.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_never_slows_the_room() {
    let app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let (carol, carol_token) = app.register_and_login("carol").await;
    let room = room_with(&app, &[&bob, &carol]).await;
    let mut slow = connect(&app, &bob_token).await;
    put(&mut slow, json!({"type": "subscribe", "room_id": room})).await;
    assert_eq!(frame(&mut slow).await["type"], "subscribed");
    let mut fast = connect(&app, &carol_token).await;
    put(&mut fast, json!({"type": "subscribe", "room_id": room})).await;
    assert_eq!(frame(&mut fast).await["type"], "subscribed");
    // Carol reads until she has every message the sender says it sent.
    let (last_sent, mut told) = tokio::sync::watch::channel(None::<i64>);
    let reader = tokio::spawn(async move {
        let mut seqs: Vec<i64> = Vec::new();
        loop {
            if let Some(last) = *told.borrow_and_update() {
                if seqs.last() >= Some(&last) {
                    return seqs;
                }
            }
            tokio::select! {
                message = tokio::time::timeout(Duration::from_secs(20), fast.next()) => {
                    match message {
                        Ok(Some(Ok(Message::Text(text)))) => {
                            let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                            if frame["type"] == "message" {
                                seqs.push(frame["seq"].as_i64().unwrap());
                            }
                        }
                        Ok(Some(Ok(_))) => {}
                        _ => return seqs,
                    }
                }
                _ = told.changed() => {}
            }
        }
    });
    // Big messages until the hub gives up on bob (he reads nothing): his presence drops.
    let body = "x".repeat(4_000);
    let mut sent = 0;
    let mut dropped = false;
    while sent < 4_000 && !dropped {
        sent += 1;
        let r = app
            .post(
                &format!("/api/v1/rooms/{room}/messages"),
                json!({"body": body, "client_msg_id": format!("c{sent}")}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        if sent % 50 == 0 {
            let presence: Value = app.get_json(&format!("/api/v1/users/{bob}/presence")).await;
            dropped = presence["online"] == false;
        }
    }
    assert!(dropped, "bob was not dropped after {sent} messages");
    // Carol got every message, in order; bob's socket ends once what was buffered is read.
    last_sent.send(Some(sent)).unwrap();
    let seqs = reader.await.unwrap();
    assert_eq!(seqs, (1..=sent).collect::<Vec<i64>>());
    let mut ended = false;
    for _ in 0..100_000 {
        match tokio::time::timeout(Duration::from_secs(5), slow.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => continue,
            _ => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "the slow connection was closed");
    let _ = carol;
}

/// A frame past 16 KiB closes that connection (and only that one).
#[tokio::test]
async fn an_oversized_frame_closes_its_connection_only() {
    let app = TestApp::spawn().await;
    let mut big = connect(&app, &app.token).await;
    let mut other = connect(&app, &app.token).await;
    ready(&mut big).await;
    let _ = big.send(Message::text("x".repeat(20 * 1024))).await;
    let mut closed = false;
    while let Ok(next) = tokio::time::timeout(Duration::from_secs(5), big.next()).await {
        match next {
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                closed = true;
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    assert!(closed, "the oversized frame ended its connection");
    ready(&mut other).await;
}

#[tokio::test]
async fn a_connection_outlives_the_handler_timeout_and_a_silent_client_is_dropped() {
    let app = TestApp::spawn_with(|config| {
        config.handler_timeout = Duration::from_millis(500);
        config
            .contexts
            .get_mut::<chronicle_gateway::ChatConfig>()
            .ws_ping_interval = Duration::from_millis(700);
    })
    .await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let (carol, carol_token) = app.register_and_login("carol").await;
    // Bob reads (his client answers the pings); carol's client never reads again after the
    // handshake, so it answers nothing.
    let mut live = connect(&app, &bob_token).await;
    let silent = connect(&app, &carol_token).await;
    chronicle_tests::eventually("carol online", Duration::from_secs(5), || async {
        (presence_of(&app, &carol).await["online"] == true).then_some(())
    })
    .await;
    let mut reading = tokio::spawn(async move {
        let mut pings = 0;
        let started = tokio::time::Instant::now();
        while started.elapsed() < Duration::from_millis(3_500) {
            match tokio::time::timeout(Duration::from_secs(1), live.next()).await {
                Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
                Ok(Some(Ok(_))) | Err(_) => {}
                Ok(other) => panic!("the live connection ended: {other:?}"),
            }
        }
        (live, pings)
    });
    // Carol's connection is dropped after two silent intervals: she goes offline while her
    // socket is still open on her side.
    chronicle_tests::eventually("carol dropped", Duration::from_secs(5), || async {
        (presence_of(&app, &carol).await["online"] == false).then_some(())
    })
    .await;
    let (mut live, pings) = (&mut reading).await.unwrap();
    assert!(pings >= 3, "the server pings every interval: {pings}");
    // Seven times the handler timeout later: bob's connection still works.
    put(&mut live, json!({"type": "ping"})).await;
    loop {
        let answer = frame(&mut live).await;
        if answer["type"] == "pong" {
            break;
        }
    }
    assert_eq!(presence_of(&app, &bob).await["online"], true);
    drop(silent);
}

#[tokio::test]
async fn a_file_attached_over_the_socket_reaches_the_members_frames() {
    let app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let room = room_with(&app, &[&bob]).await;
    let uploaded: Value = app
        .http
        .post(app.url("/api/v1/files"))
        .bearer_auth(&bob_token)
        .multipart(reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(b"minutes".to_vec()).file_name("minutes.txt"),
        ))
        .read_json()
        .await;
    let file = uploaded["id"].as_str().unwrap().to_owned();
    let mut listener = connect(&app, &app.token).await;
    put(&mut listener, json!({"type": "subscribe", "room_id": room})).await;
    assert_eq!(frame(&mut listener).await["type"], "subscribed");
    let mut sender = connect(&app, &bob_token).await;
    put(
        &mut sender,
        json!({"type": "send", "room_id": room, "body": "attached", "client_msg_id": "a-1",
            "file_ids": [file]}),
    )
    .await;
    let ack = frame(&mut sender).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    // Bob's presence comes and goes on the same socket; the message is what counts.
    let message = loop {
        let next = frame(&mut listener).await;
        if next["type"] == "message" {
            break next;
        }
    };
    assert_eq!(message["file_ids"], json!([file]));
    // Someone else's file: an error frame, nothing sent.
    put(
        &mut listener,
        json!({"type": "send", "room_id": room, "body": "mine?", "client_msg_id": "a-2",
            "file_ids": [file]}),
    )
    .await;
    let refused = loop {
        let next = frame(&mut listener).await;
        if next["type"] != "presence" {
            break next;
        }
    };
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "validation_failed");
}

/// Hostile frames from a connected user who is no member of the room (issue 17): each is
/// answered with an error frame or ignored, none reaches the room's members, nothing is
/// appended, and the connection keeps working. Typing needs membership too.
#[tokio::test]
async fn hostile_frames_are_refused_one_by_one_and_reach_no_member() {
    let app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let (_, carol_token) = app.register_and_login("carol").await;
    let room = room_with(&app, &[&bob]).await;
    let mut bobs = connect(&app, &bob_token).await;
    put(&mut bobs, json!({"type": "subscribe", "room_id": room})).await;
    assert_eq!(frame(&mut bobs).await["type"], "subscribed");
    let events = app.event_count().await;

    let mut carols = connect(&app, &carol_token).await;
    ready(&mut carols).await;
    // Ignored: not a text frame.
    carols
        .send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    let nested = format!("{}{}", "[".repeat(8_000), "]".repeat(8_000));
    let bad_frames = [
        "null".to_owned(),
        "[]".to_owned(),
        "17".to_owned(),
        nested,
        json!({"type": "subscribe", "room_id": room, "since_seq": -1}).to_string(),
        format!(r#"{{"type":"subscribe","room_id":"{room}","since_seq":18446744073709551616}}"#),
        format!(r#"{{"type":"subscribe","room_id":"{room}","since_seq":1e30}}"#),
        json!({"type": "read", "room_id": room, "up_to_seq": "all"}).to_string(),
        json!({"type": "subscribe", "room_id": room, "as_user": "bob"}).to_string(),
        json!({"type": "send", "room_id": room, "body": "x"}).to_string(),
        json!({"type": "typing", "room_id": 7}).to_string(),
    ];
    for bad in &bad_frames {
        carols.send(Message::text(bad.as_str())).await.unwrap();
        let answer = frame(&mut carols).await;
        assert_eq!(
            (answer["type"].as_str(), answer["code"].as_str()),
            (Some("error"), Some("bad_frame")),
            "{}: {answer}",
            &bad[..bad.len().min(80)]
        );
    }
    let not_a_room = [">", "chat.signal.>", "*", "../../etc/passwd", "a\u{0}b", ""];
    for room_id in not_a_room {
        for kind in ["subscribe", "typing"] {
            put(&mut carols, json!({"type": kind, "room_id": room_id})).await;
            let answer = frame(&mut carols).await;
            assert_eq!(answer["code"], "not_found", "{kind} {room_id:?}: {answer}");
        }
    }
    let outsider = [
        json!({"type": "subscribe", "room_id": room, "since_seq": 0}),
        json!({"type": "typing", "room_id": room}),
        json!({"type": "send", "room_id": room, "body": "a\u{0}b", "client_msg_id": "n"}),
        json!({"type": "send", "room_id": room, "body": "hi", "client_msg_id": "m"}),
        json!({"type": "read", "room_id": room, "up_to_seq": u64::MAX}),
    ];
    for hostile in outsider {
        put(&mut carols, hostile.clone()).await;
        let answer = frame(&mut carols).await;
        assert_eq!(answer["code"], "forbidden", "{hostile}: {answer}");
    }
    put(&mut carols, json!({"type": "ping"})).await;
    assert_eq!(frame(&mut carols).await, json!({"type": "pong"}));
    assert_eq!(app.event_count().await, events, "nothing was appended");

    // Bob got none of it: the next frame he sees is the next real message.
    let sent = send_http(&app, &room, "after the barrage").await;
    let next = frame(&mut bobs).await;
    assert_eq!(
        (next["type"].as_str(), next["seq"].clone()),
        (Some("message"), sent["seq"].clone()),
        "{next}"
    );
    // A member's own bad input is refused the same way, and changes nothing.
    for body in ["a\u{0}b".to_owned(), "x".repeat(4001), String::new()] {
        put(
            &mut bobs,
            json!({"type": "send", "room_id": room, "body": body, "client_msg_id": "bad"}),
        )
        .await;
        let answer = frame(&mut bobs).await;
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["code"], "validation_failed", "{answer}");
    }
    let history: Value = app
        .get_json(&format!("/api/v1/rooms/{room}/messages"))
        .await;
    assert_eq!(history["items"].as_array().unwrap().len(), 1, "{history}");
}

/// One connection may follow at most 256 rooms at once; refused subscriptions hold no place.
#[tokio::test]
async fn a_connection_follows_at_most_256_rooms() {
    let app = TestApp::spawn().await;
    let mut socket = connect(&app, &app.token).await;
    for _ in 0..300 {
        let unknown = uuid::Uuid::now_v7().to_string();
        put(
            &mut socket,
            json!({"type": "subscribe", "room_id": unknown}),
        )
        .await;
        assert_eq!(frame(&mut socket).await["code"], "not_found");
    }
    for i in 0..=256 {
        let room = room_with(&app, &[]).await;
        put(&mut socket, json!({"type": "subscribe", "room_id": room})).await;
        let answer = frame(&mut socket).await;
        if i < 256 {
            assert_eq!(answer["type"], "subscribed", "room {i}: {answer}");
        } else {
            assert_eq!(answer["code"], "too_many_subscriptions", "{answer}");
        }
    }
    put(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(frame(&mut socket).await, json!({"type": "pong"}));
}

/// Bytes no WebSocket client would send (an unmasked frame, a reserved opcode, a length of
/// 2^63, text that is not UTF-8, fragments adding up past 16 KiB) end that connection
/// within seconds, and only that one.
#[tokio::test]
async fn protocol_garbage_ends_its_connection_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let mut other = connect(&app, &app.token).await;
    ready(&mut other).await;
    /// A client frame, masked with a zero key (the payload goes as it is).
    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![first];
        if payload.len() < 126 {
            frame.push(0x80 | payload.len() as u8);
        } else {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(payload);
        frame
    }
    let mut fragments = masked(0x01, &[b'x'; 1024]);
    for _ in 0..20 {
        fragments.extend(masked(0x00, &[b'x'; 1024]));
    }
    fragments.extend(masked(0x80, b"x"));
    let garbage: [(&str, Vec<u8>); 5] = [
        ("unmasked", vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o']),
        ("reserved opcode", masked(0x83, b"{}")),
        (
            "2^63 bytes long",
            [vec![0x81, 0xFF, 0x7F], vec![0xFF; 7], vec![0; 4]].concat(),
        ),
        ("not UTF-8", masked(0x81, &[0xFF, 0xFE, 0xFD])),
        ("fragments past 16 KiB", fragments),
    ];
    let address = app.base.trim_start_matches("http://").to_owned();
    for (what, bytes) in garbage {
        let mut tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
        let handshake = format!(
            "GET /ws?token={} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            app.token
        );
        tcp.write_all(handshake.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tcp.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let _ = tcp.write_all(&bytes).await;
        // The server closes: the read side ends (after a close frame, perhaps) or resets.
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buffer = [0u8; 4096];
            loop {
                match tcp.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "{what}: the connection stayed open");
    }
    ready(&mut other).await;
    let health = app.get("/health").await;
    assert_eq!(health.status(), StatusCode::OK);
}

/// Sends messages `seqs` (bodies of 500 characters) to `room` over HTTP, 16 at a time.
async fn send_many(app: &TestApp, room: &str, count: usize, tag: &str) {
    let body = "y".repeat(500);
    futures::stream::iter(0..count)
        .map(|i| {
            let body = body.clone();
            async move {
                let r = app
                    .post(
                        &format!("/api/v1/rooms/{room}/messages"),
                        json!({"body": body, "client_msg_id": format!("{tag}-{i}")}),
                    )
                    .await;
                assert_eq!(r.status(), StatusCode::CREATED);
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

/// Waits until the room's history read model holds `n` messages.
async fn history_holds(app: &TestApp, room: &str, n: i64) {
    chronicle_tests::eventually("the history", Duration::from_secs(60), || async {
        let page: Value = app
            .get(&format!("/api/v1/rooms/{room}/messages?limit=1"))
            .await
            .json()
            .await
            .ok()?;
        (page["items"][0]["seq"].as_i64()? >= n).then_some(())
    })
    .await;
}

/// Subscribes with `since_seq`, reads nothing for a moment (the server's queue fills, and
/// the recovery must wait for the socket rather than drop the client), then reads everything
/// up to `last_seq`. `live` more messages are sent once the first backlog frame arrives (the
/// head was read by then): they arrive during the recovery. Gives the `message` seqs before
/// `subscribed`, the `subscribed` frame, and the seqs after it.
async fn recover_while_sending(
    app: &TestApp,
    token: &str,
    room: &str,
    since_seq: u64,
    live: usize,
    last_seq: u64,
) -> (Vec<u64>, Value, Vec<u64>) {
    let mut socket = connect(app, token).await;
    put(
        &mut socket,
        json!({"type": "subscribe", "room_id": room, "since_seq": since_seq}),
    )
    .await;
    let (started, start) = tokio::sync::oneshot::channel::<()>();
    let reading = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut started = Some(started);
        let (mut before, mut after, mut subscribed) = (Vec::new(), Vec::new(), Value::Null);
        while subscribed.is_null() || after.last().max(before.last()) < Some(&last_seq) {
            // Generous: 30 tests share two cores here, and a lost frame fails all the same.
            let next = frame_within(&mut socket, Duration::from_secs(30)).await;
            if let Some(started) = started.take() {
                let _ = started.send(());
            }
            match next["type"].as_str() {
                Some("message") if subscribed.is_null() => {
                    before.push(next["seq"].as_u64().unwrap())
                }
                Some("message") => after.push(next["seq"].as_u64().unwrap()),
                Some("subscribed") => subscribed = next,
                _ => panic!("unexpected frame during recovery: {next}"),
            }
        }
        (before, subscribed, after)
    };
    let tag = format!("live-{since_seq}");
    let sending = async {
        start.await.expect("the first frame arrives");
        send_many(app, room, live, &tag).await;
    };
    let (_, got) = tokio::join!(sending, reading);
    got
}

#[tokio::test]
async fn recovering_a_backlog_of_1000_completes_while_live_messages_arrive() {
    // Regression (issue 29): the backlog was pushed into the connection's 256-frame queue
    // faster than the socket drained it, and the 257th frame dropped the client as a slow
    // reader (close 1005, no `subscribed`); its re-subscribe failed the same way for ever.
    let app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let room = room_with(&app, &[&bob]).await;
    send_many(&app, &room, 1_006, "backlog").await;
    history_holds(&app, &room, 1_006).await;

    // 1,000 missed: all of them, then the live ones sent meanwhile, each once, in order.
    let (before, subscribed, after) =
        recover_while_sending(&app, &bob_token, &room, 6, 40, 1_046).await;
    assert_eq!(
        subscribed,
        json!({"type": "subscribed", "room_id": room, "head_seq": 1_006, "recovered": true})
    );
    assert_eq!(before, (7..=1_006).collect::<Vec<_>>(), "the backlog");
    assert_eq!(
        after,
        (1_007..=1_046).collect::<Vec<_>>(),
        "then live, no gap, no duplicate"
    );
    history_holds(&app, &room, 1_046).await;

    // 1,045 missed: the newest 1,000, said to be cut, then live ones.
    let (before, subscribed, after) =
        recover_while_sending(&app, &bob_token, &room, 1, 40, 1_086).await;
    assert_eq!(
        subscribed,
        json!({"type": "subscribed", "room_id": room, "head_seq": 1_046, "recovered": false})
    );
    assert_eq!(before, (47..=1_046).collect::<Vec<_>>());
    assert_eq!(after, (1_047..=1_086).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_client_that_reads_nothing_of_its_backlog_is_still_dropped() {
    let app = TestApp::spawn_with(|config| {
        config
            .contexts
            .get_mut::<chronicle_gateway::ChatConfig>()
            .ws_ping_interval = Duration::from_millis(700);
    })
    .await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let room = room_with(&app, &[&bob]).await;
    send_many(&app, &room, 1_000, "backlog").await;
    history_holds(&app, &room, 1_000).await;
    let mut silent = connect(&app, &bob_token).await;
    put(
        &mut silent,
        json!({"type": "subscribe", "room_id": room, "since_seq": 0}),
    )
    .await;
    chronicle_tests::eventually("bob online", Duration::from_secs(5), || async {
        (presence_of(&app, &bob).await["online"] == true).then_some(())
    })
    .await;
    // Bob's client reads nothing more: the recovery does not hold his connection open.
    chronicle_tests::eventually("bob dropped", Duration::from_secs(10), || async {
        (presence_of(&app, &bob).await["online"] == false).then_some(())
    })
    .await;
    drop(silent);
}

#[tokio::test]
async fn a_recovery_the_history_read_model_lacks_comes_from_the_rooms_events() {
    // The history read model may be behind (its projector down or catching up) or, as here,
    // missing rows for good: a recovery then reads the room's own events, which every
    // acknowledged message is in, and the client gets the whole backlog with
    // `recovered: true` (a fault run once told a client its 1-message backlog was cut
    // while the projector was down).
    let app = TestApp::spawn().await;
    let (bob, bob_token) = app.register_and_login("bob").await;
    let room = room_with(&app, &[&bob]).await;
    for i in 1..=5 {
        send_http(&app, &room, &format!("m{i}")).await;
    }
    history_holds(&app, &room, 5).await;
    sqlx::query("DELETE FROM chat.chat_messages WHERE room_id = $1 AND seq > 1")
        .bind(&room)
        .execute(&app.pool)
        .await
        .unwrap();
    for since in [0, 3] {
        let mut socket = connect(&app, &bob_token).await;
        put(
            &mut socket,
            json!({"type": "subscribe", "room_id": room, "since_seq": since}),
        )
        .await;
        for seq in since + 1..=5 {
            let message = frame(&mut socket).await;
            assert_eq!(
                (message["type"].as_str(), message["seq"].as_u64()),
                (Some("message"), Some(seq)),
                "{message}"
            );
            assert_eq!(message["body"], format!("m{seq}"));
        }
        assert_eq!(
            frame(&mut socket).await,
            json!({"type": "subscribed", "room_id": room, "head_seq": 5, "recovered": true})
        );
    }
}
