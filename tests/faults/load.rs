//! The mixed load over every context, through both gateways, and what the system
//! acknowledged: only a 2xx counts, and everything a 2xx named must be there at the end.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::Digest;
use tokio_tungstenite::tungstenite::Message;

use crate::rng::Rng;

/// What the system answered with a 2xx.
#[derive(Debug, Default)]
pub struct Acked {
    /// `(aggregate_type, aggregate_id, version)` of every command answered with a version.
    pub versions: Vec<(String, String, i64)>,
    /// Orders placed (directly, and by checking a cart out).
    pub orders: Vec<String>,
    /// Orders placed by checking a cart out.
    pub checkouts: Vec<String>,
    /// Chat messages: id → seq.
    pub messages: BTreeMap<String, i64>,
    /// Files: id → sha256 of the bytes sent.
    pub files: BTreeMap<String, String>,
    /// One-shot jobs created.
    pub jobs: Vec<String>,
    /// Requests sent, and answered with a 2xx.
    pub sent: u64,
    pub ok: u64,
}

/// The gateways, tried in turn: a request that cannot connect to one goes to the next.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    bases: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
}

impl Client {
    pub fn new(bases: Vec<String>) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("a client"),
            bases: Arc::new(bases),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn bases(&self) -> &[String] {
        &self.bases
    }

    /// Sends what `build` makes for a base URL, to each gateway in turn until one answers;
    /// `None` when none did.
    pub async fn send(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Option<reqwest::Response> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.bases.len() {
            let base = &self.bases[(first + i) % self.bases.len()];
            match build(&self.http, base).send().await {
                Ok(response) => return Some(response),
                Err(e) if e.is_connect() => continue,
                Err(_) => return None,
            }
        }
        None
    }

    /// [`send`](Self::send), then the JSON body of a 2xx.
    pub async fn ok_json(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Option<Value> {
        let response = self.send(build).await?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// Registers `name` (retrying until a gateway takes it) and logs in: (user id, token).
    pub async fn user(&self, name: &str) -> (String, String) {
        let credentials = json!({"username": name, "password": "a fault harness password"});
        let mut registered = false;
        for _ in 0..100 {
            if !registered {
                let body = json!({"username": name, "password": "a fault harness password",
                    "display_name": name});
                registered = self
                    .send(|http, base| {
                        http.post(format!("{base}/api/v1/auth/register"))
                            .json(&body)
                    })
                    .await
                    .is_some_and(|r| r.status().is_success() || r.status() == 409);
            }
            if registered {
                if let Some(login) = self
                    .ok_json(|http, base| {
                        http.post(format!("{base}/api/v1/auth/login"))
                            .json(&credentials)
                    })
                    .await
                {
                    return (
                        login["user_id"].as_str().expect("a user id").to_owned(),
                        login["token"].as_str().expect("a token").to_owned(),
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{name} could not register and log in within 20 s");
    }

    /// Receives `quantity` units of `sku` as `staff`: the answer of a 2xx.
    pub async fn receive(&self, staff: &str, sku: &str, quantity: u64) -> Option<Value> {
        let body = json!({ "quantity": quantity });
        self.ok_json(|http, base| {
            http.post(format!("{base}/api/v1/inventory/items/{sku}/receive"))
                .bearer_auth(staff)
                .json(&body)
        })
        .await
    }

    /// Sends until a 2xx (setup, before any fault).
    pub async fn must(
        &self,
        what: &str,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Value {
        for _ in 0..100 {
            if let Some(value) = self.ok_json(&build).await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{what}: no 2xx within 20 s");
    }
}

/// Who does what.
pub struct Cast {
    pub staff: String,
    pub alice: (String, String),
    pub bob: (String, String),
    pub skus: Vec<String>,
    pub room: String,
}

pub const SKUS: usize = 6;
pub const INITIAL_STOCK: u64 = 10;

/// Users, items and a room, before any fault.
pub async fn prepare(client: &Client) -> Cast {
    let (_, staff) = client.user(crate::system::STAFF).await;
    let alice = client.user("alice").await;
    let bob = client.user("bob").await;
    let mut skus = Vec::new();
    for i in 0..SKUS {
        let sku = format!("FAULT-{i}");
        let body = json!({"sku": sku, "name": format!("Item {i}"), "price_cents": 100,
            "initial_stock": INITIAL_STOCK});
        client
            .must("creating an item", |http, base| {
                http.post(format!("{base}/api/v1/inventory/items"))
                    .bearer_auth(&staff)
                    .json(&body)
            })
            .await;
        skus.push(sku);
    }
    let body = json!({"kind": "group", "name": "faults", "members": [bob.0]});
    let room = client
        .must("creating the room", |http, base| {
            http.post(format!("{base}/api/v1/rooms"))
                .bearer_auth(&alice.1)
                .json(&body)
        })
        .await["id"]
        .as_str()
        .expect("a room id")
        .to_owned();
    Cast {
        staff,
        alice,
        bob,
        skus,
        room,
    }
}

/// Runs the workers until `stop`: orders, stock receipts, posts, chat messages, file
/// uploads, one-shot jobs and carts checked out, each a loop of requests.
pub async fn run(
    client: Client,
    cast: Arc<Cast>,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut workers = Vec::new();
    for (n, worker) in [
        Worker::Orders,
        Worker::Receipts,
        Worker::Posts,
        Worker::Chat,
        Worker::Files,
        Worker::Jobs,
        Worker::Checkout,
    ]
    .into_iter()
    .enumerate()
    {
        let (client, cast, acked, stop) =
            (client.clone(), cast.clone(), acked.clone(), stop.clone());
        let mut rng = Rng::new(seed ^ (n as u64 + 1).wrapping_mul(0x9E37_79B9));
        workers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                worker.once(&client, &cast, &acked, &mut rng, i).await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(20 + rng.below(40))).await;
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a load worker panicked");
    }
}

#[derive(Clone, Copy)]
enum Worker {
    Orders,
    Receipts,
    Posts,
    Chat,
    Files,
    Jobs,
    /// Bob fills his cart and checks it out (he places no order otherwise).
    Checkout,
}

impl Worker {
    async fn once(self, client: &Client, cast: &Cast, acked: &Mutex<Acked>, rng: &mut Rng, i: u64) {
        let record = |value: &Option<Value>, aggregate_type: &str| {
            let mut acked = acked.lock().unwrap();
            acked.sent += 1;
            if let Some(v) = value {
                acked.ok += 1;
                if let (Some(id), Some(version)) = (v["id"].as_str(), v["version"].as_i64()) {
                    acked
                        .versions
                        .push((aggregate_type.to_owned(), id.to_owned(), version));
                }
            }
        };
        match self {
            Self::Orders => {
                let lines: Vec<Value> = (0..1 + rng.below(2))
                    .map(|_| {
                        json!({"sku": cast.skus[rng.below(SKUS as u64) as usize],
                            "quantity": 1 + rng.below(3)})
                    })
                    .collect();
                // Two lines of one item are one line to the domain: keep the items distinct.
                let mut seen = std::collections::BTreeSet::new();
                let lines: Vec<Value> = lines
                    .into_iter()
                    .filter(|l| seen.insert(l["sku"].as_str().unwrap_or_default().to_owned()))
                    .collect();
                let body = json!({ "lines": lines });
                let answer = client
                    .ok_json(|http, base| {
                        http.post(format!("{base}/api/v1/orders"))
                            .bearer_auth(&cast.alice.1)
                            .json(&body)
                    })
                    .await;
                record(&answer, "order");
                if let Some(id) = answer.as_ref().and_then(|v| v["id"].as_str()) {
                    acked.lock().unwrap().orders.push(id.to_owned());
                }
            }
            Self::Receipts => {
                let sku = &cast.skus[rng.below(SKUS as u64) as usize];
                let answer = client.receive(&cast.staff, sku, 1 + rng.below(4)).await;
                record(&answer, "inventory_item");
            }
            Self::Posts => {
                let body = json!({"title": format!("Post {i} under faults"),
                    "body_markdown": format!("Written while things die, number {i}."),
                    "tags": ["faults"]});
                let answer = client
                    .ok_json(|http, base| {
                        http.post(format!("{base}/api/v1/posts"))
                            .bearer_auth(&cast.bob.1)
                            .json(&body)
                    })
                    .await;
                record(&answer, "post");
                if let Some(id) = answer.as_ref().and_then(|v| v["id"].as_str()) {
                    let published = client
                        .ok_json(|http, base| {
                            http.post(format!("{base}/api/v1/posts/{id}/publish"))
                                .bearer_auth(&cast.bob.1)
                        })
                        .await;
                    record(&published, "post");
                }
            }
            Self::Chat => {
                let body = json!({"body": format!("message {i}"),
                    "client_msg_id": format!("fault-{i}")});
                let room = &cast.room;
                let answer = client
                    .ok_json(|http, base| {
                        http.post(format!("{base}/api/v1/rooms/{room}/messages"))
                            .bearer_auth(&cast.alice.1)
                            .json(&body)
                    })
                    .await;
                record(&None, "room");
                if let Some(v) = answer {
                    let mut acked = acked.lock().unwrap();
                    acked.ok += 1;
                    acked.messages.insert(
                        v["id"].as_str().expect("a message id").to_owned(),
                        v["seq"].as_i64().expect("a seq"),
                    );
                }
            }
            Self::Files => {
                let bytes: Vec<u8> = (0..512 + rng.below(4096))
                    .map(|_| rng.below(256) as u8)
                    .collect();
                let sha = hex(&sha2::Sha256::digest(&bytes));
                let answer = client
                    .ok_json(|http, base| {
                        let part = reqwest::multipart::Part::bytes(bytes.clone())
                            .file_name(format!("f{i}.bin"))
                            .mime_str("application/octet-stream")
                            .expect("a mime type");
                        http.post(format!("{base}/api/v1/files"))
                            .bearer_auth(&cast.bob.1)
                            .multipart(reqwest::multipart::Form::new().part("file", part))
                    })
                    .await;
                record(&None, "file");
                if let Some(v) = answer {
                    let mut acked = acked.lock().unwrap();
                    acked.ok += 1;
                    acked
                        .files
                        .insert(v["id"].as_str().expect("a file id").to_owned(), sha);
                }
            }
            Self::Checkout => {
                let sku = &cast.skus[rng.below(SKUS as u64) as usize];
                let body = json!({"quantity": 1 + rng.below(2)});
                let answer = client
                    .ok_json(|http, base| {
                        http.put(format!("{base}/api/v1/cart/items/{sku}"))
                            .bearer_auth(&cast.bob.1)
                            .json(&body)
                    })
                    .await;
                record(&answer, "cart");
                if i % 2 == 1 {
                    // A retry of a lost answer (the client's, or the next gateway's) is the
                    // same checkout: one key per attempt of the worker.
                    let key = format!("fault-checkout-{i}");
                    let answer = client
                        .ok_json(|http, base| {
                            http.post(format!("{base}/api/v1/cart/checkout"))
                                .bearer_auth(&cast.bob.1)
                                .header("idempotency-key", &key)
                                .json(&json!({}))
                        })
                        .await;
                    record(&answer, "order");
                    if let Some(id) = answer.as_ref().and_then(|v| v["id"].as_str()) {
                        let mut acked = acked.lock().unwrap();
                        acked.orders.push(id.to_owned());
                        acked.checkouts.push(id.to_owned());
                    }
                }
            }
            Self::Jobs => {
                let body = json!({"name": format!("fault job {i}"),
                    "schedule": {"after_seconds": 1},
                    "action": {"kind": "command", "command": "noop"},
                    "max_retries": 5});
                let answer = client
                    .ok_json(|http, base| {
                        http.post(format!("{base}/api/v1/jobs"))
                            .bearer_auth(&cast.alice.1)
                            .json(&body)
                    })
                    .await;
                record(&None, "job");
                if let Some(v) = answer {
                    let mut acked = acked.lock().unwrap();
                    acked.ok += 1;
                    acked
                        .jobs
                        .push(v["id"].as_str().expect("a job id").to_owned());
                }
            }
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a WebSocket member of the room saw.
#[derive(Debug, Default)]
pub struct Watched {
    /// Every message seq received, across connections.
    pub seqs: std::collections::BTreeSet<i64>,
    /// Connections made (the first, and one after each drop).
    pub connections: u32,
    /// Gaps seen (7 then 9), each answered by subscribing again from the last seq held.
    pub gaps: u32,
    /// What breaks the contract: a seq again or backwards within one connection, a backlog
    /// cut short.
    pub faults: Vec<String>,
}

impl Watched {
    /// The highest seq n such that every seq from 1 to n has been received.
    fn contiguous(&self) -> i64 {
        let mut n = 0;
        for seq in &self.seqs {
            if *seq != n + 1 {
                break;
            }
            n = *seq;
        }
        n
    }
}

/// Bob, over the WebSocket: subscribes to the room with `since_seq` of the last seq up to
/// which he has every message, and after a drop or a gap connects to a gateway again and
/// does the same, until `stop`.
pub async fn watch(
    bases: Vec<String>,
    token: String,
    room: String,
    watched: Arc<Mutex<Watched>>,
    stop: Arc<AtomicBool>,
) {
    let mut turn = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let base = bases[turn % bases.len()].replace("http://", "ws://");
        turn += 1;
        let since = watched.lock().unwrap().contiguous();
        let Ok(Ok((mut socket, _))) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(format!("{base}/ws?token={token}")),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        watched.lock().unwrap().connections += 1;
        let subscribe = json!({"type": "subscribe", "room_id": room, "since_seq": since});
        if socket
            .send(Message::Text(subscribe.to_string().into()))
            .await
            .is_err()
        {
            continue;
        }
        let mut last = since;
        loop {
            let frame = tokio::select! {
                frame = socket.next() => frame,
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    if stop.load(Ordering::Relaxed) { return; }
                    continue;
                }
            };
            let Some(Ok(frame)) = frame else { break };
            let Message::Text(text) = frame else { continue };
            let Ok(value) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if value["type"] == "message" && value["room_id"] == room.as_str() {
                let seq = value["seq"].as_i64().unwrap_or(-1);
                let mut w = watched.lock().unwrap();
                if seq <= last {
                    let connection = w.connections;
                    w.faults.push(format!(
                        "connection {connection}: seq {seq} after {last} (since_seq {since})"
                    ));
                }
                w.seqs.insert(seq);
                if seq > last + 1 {
                    // Allowed by the contract; the client asks again from what it holds.
                    w.gaps += 1;
                    break;
                }
                last = last.max(seq);
            } else if value["type"] == "subscribed" && value["recovered"] == false {
                watched
                    .lock()
                    .unwrap()
                    .faults
                    .push(format!("the backlog after {since} was cut: {value}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
