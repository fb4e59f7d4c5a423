//! A gateway process killed (SIGKILL) under chat load (issue 11): every message it
//! acknowledged, over HTTP or over its WebSocket, is in the room's history with the seq it
//! was given; retrying the unacknowledged ones through another gateway never makes a second
//! copy of any; the seqs stay dense; and the users it held go offline by themselves.

mod common;
#[path = "common/gateways.rs"]
mod gateways;

use chronicle_tests::ReadJson;
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use chronicle_tests::{eventually, TestDb, TestNats};
use futures::{SinkExt, StreamExt};
use gateways::{start, user};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Every message of the room, oldest first, through `base`.
async fn history(http: &reqwest::Client, base: &str, token: &str, room: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page: Value = http
            .get(format!(
                "{base}/api/v1/rooms/{room}/messages?after_seq={after}&limit=100"
            ))
            .bearer_auth(token)
            .read_json()
            .await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            return all;
        }
        after = items.last().unwrap()["seq"].as_i64().unwrap();
        all.extend(items);
    }
}

/// What a sender was told: client_msg_id → (id, seq).
type Acked = Arc<Mutex<BTreeMap<String, (String, i64)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_under_chat_load_loses_no_acknowledged_message() {
    let (db, nats) = (TestDb::new().await, TestNats::start());
    let data = tempfile::tempdir().unwrap();
    let (_main, main) = start("up", &db, &nats, data.path());
    let (mut doomed, doomed_base) = start("gateway", &db, &nats, data.path());
    let http = reqwest::Client::new();
    let (_alice, alice) = user(&http, &main, "alice").await;
    let (bob_id, bob) = user(&http, &main, "bob").await;
    let room: Value = http
        .post(format!("{main}/api/v1/rooms"))
        .bearer_auth(&alice)
        .json(&json!({"kind": "group", "members": [bob_id]}))
        .read_json()
        .await;
    let room = room["id"].as_str().expect("a room").to_owned();

    // Bob is connected only to the gateway that dies.
    let ws = doomed_base.replace("http://", "ws://");
    let (mut bobs_socket, _) = tokio_tungstenite::connect_async(format!("{ws}/ws?token={bob}"))
        .await
        .unwrap();
    let presence = |http: reqwest::Client, main: String, alice: String, bob_id: String| async move {
        let view: Value = http
            .get(format!("{main}/api/v1/users/{bob_id}/presence"))
            .bearer_auth(&alice)
            .read_json()
            .await;
        view["online"].as_bool()
    };
    eventually(
        "bob online through the doomed gateway",
        Duration::from_secs(10),
        || {
            let check = presence(http.clone(), main.clone(), alice.clone(), bob_id.clone());
            async move { (check.await == Some(true)).then_some(()) }
        },
    )
    .await;

    // Load on the doomed gateway: four HTTP senders, and bob sending over his socket.
    let acked: Acked = Arc::default();
    let attempted = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let mut senders = Vec::new();
    for sender in 0..4 {
        let (http, base, room, token) = (
            http.clone(),
            doomed_base.clone(),
            room.clone(),
            alice.clone(),
        );
        let (acked, attempted) = (acked.clone(), attempted.clone());
        senders.push(tokio::spawn(async move {
            for n in 0.. {
                let id = format!("http-{sender}-{n}");
                attempted.lock().unwrap().insert(id.clone());
                let sent = http
                    .post(format!("{base}/api/v1/rooms/{room}/messages"))
                    .bearer_auth(&token)
                    .json(&json!({"body": id, "client_msg_id": id}))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                let Ok(response) = sent else { return };
                if response.status() != 201 {
                    return;
                }
                let Ok(message) = response.json::<Value>().await else {
                    return;
                };
                let seq = message["seq"].as_i64().expect("a seq");
                let message_id = message["id"].as_str().expect("an id").to_owned();
                acked.lock().unwrap().insert(id, (message_id, seq));
            }
        }));
    }
    let socket_sender = {
        let (acked, attempted, room) = (acked.clone(), attempted.clone(), room.clone());
        tokio::spawn(async move {
            for n in 0.. {
                let id = format!("ws-{n}");
                attempted.lock().unwrap().insert(id.clone());
                let frame =
                    json!({"type": "send", "room_id": room, "body": id, "client_msg_id": id});
                if bobs_socket
                    .send(Message::text(frame.to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
                // The ack for this frame (other frames, presence and the like, pass by).
                loop {
                    let Ok(Some(Ok(message))) =
                        tokio::time::timeout(Duration::from_secs(5), bobs_socket.next()).await
                    else {
                        return;
                    };
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    if frame["type"] == "ack" && frame["client_msg_id"] == id.as_str() {
                        let seq = frame["seq"].as_i64().expect("a seq");
                        let message_id = frame["id"].as_str().expect("an id").to_owned();
                        acked.lock().unwrap().insert(id, (message_id, seq));
                        break;
                    }
                    assert_ne!(frame["type"], "error", "{frame}");
                }
            }
        })
    };
    // Let the load run, then kill the gateway in the middle of it.
    eventually("the load under way", Duration::from_secs(20), || {
        let count = acked.lock().unwrap().len();
        async move { (count >= 150).then_some(()) }
    })
    .await;
    let mut doomed = doomed.0.take().expect("the doomed gateway runs");
    doomed.kill().expect("SIGKILL the gateway");
    doomed.wait().unwrap();
    for sender in senders {
        sender.await.unwrap();
    }
    socket_sender.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    let attempted = attempted.lock().unwrap().clone();
    eprintln!(
        "killed with {} of {} attempts acknowledged",
        acked.len(),
        attempted.len()
    );
    assert!(
        acked.keys().any(|id| id.starts_with("ws-")),
        "the socket sent some"
    );

    // Everything acknowledged is in the history (the surviving gateway's read model), with
    // the id and seq its sender was given.
    let stored = eventually(
        "the acknowledged messages in history",
        Duration::from_secs(20),
        || {
            let (http, main, alice, room) =
                (http.clone(), main.clone(), alice.clone(), room.clone());
            let acked = acked.clone();
            async move {
                let stored = history(&http, &main, &alice, &room).await;
                let bodies: BTreeSet<&str> =
                    stored.iter().filter_map(|m| m["body"].as_str()).collect();
                acked
                    .keys()
                    .all(|id| bodies.contains(id.as_str()))
                    .then_some(stored)
            }
        },
    )
    .await;
    for message in &stored {
        let body = message["body"].as_str().unwrap();
        if let Some((id, seq)) = acked.get(body) {
            assert_eq!(message["id"].as_str(), Some(id.as_str()), "{message}");
            assert_eq!(message["seq"].as_i64(), Some(*seq), "{message}");
        }
    }

    // Retrying every attempt through the surviving gateway adds exactly the ones that never
    // made it: the same client_msg_id never gives a second message.
    for id in &attempted {
        let (token, via_socket) = if id.starts_with("ws-") {
            (&bob, true)
        } else {
            (&alice, false)
        };
        let response = chronicle_tests::send_as(
            &http,
            reqwest::Method::POST,
            format!("{main}/api/v1/rooms/{room}/messages"),
            token,
            Some(&json!({"body": id, "client_msg_id": id})),
        )
        .await;
        assert!(
            response.status().is_success(),
            "{id}: {}",
            response.status()
        );
        let message: Value = response.json().await.unwrap();
        if let Some((first, seq)) = acked.get(id) {
            assert_eq!(
                message["id"].as_str(),
                Some(first.as_str()),
                "{id} (socket: {via_socket})"
            );
            assert_eq!(message["seq"].as_i64(), Some(*seq));
        }
    }
    let stored = eventually(
        "every attempt in history once",
        Duration::from_secs(20),
        || {
            let (http, main, alice, room) =
                (http.clone(), main.clone(), alice.clone(), room.clone());
            let wanted = attempted.len();
            async move {
                let stored = history(&http, &main, &alice, &room).await;
                (stored.len() >= wanted).then_some(stored)
            }
        },
    )
    .await;
    let bodies: Vec<&str> = stored.iter().filter_map(|m| m["body"].as_str()).collect();
    let distinct: BTreeSet<&str> = bodies.iter().copied().collect();
    assert_eq!(bodies.len(), distinct.len(), "no message twice");
    assert_eq!(distinct.len(), attempted.len());
    let seqs: Vec<i64> = stored.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as i64).collect::<Vec<_>>(),
        "dense seqs"
    );

    // Bob's only connection died with its gateway: he goes offline without anyone closing it.
    eventually(
        "bob offline after his gateway died",
        Duration::from_secs(15),
        || {
            let check = presence(http.clone(), main.clone(), alice.clone(), bob_id.clone());
            async move { (check.await == Some(false)).then_some(()) }
        },
    )
    .await;
}
