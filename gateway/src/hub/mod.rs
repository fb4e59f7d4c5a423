//! The WebSocket hub (`GET /ws?token=`, API.md Chat): live room messages and read receipts,
//! recovery with `since_seq`, sending and marking read over the socket, typing.
//!
//! One ordered JetStream consumer per gateway process reads `events.chat.room.>` from the
//! moment the hub starts and fans each event out to the connections subscribed to its room
//! (a `broadcast` channel per room), so a message sent through any gateway instance reaches
//! the clients of every instance, in `seq` order. A subscription first listens to the live
//! feed, then reads the room's head from the event store, sends the backlog up to that head
//! from the `chat_history` read model (waiting for it to catch up), and then only live
//! messages past what it sent: no gap and no duplicate between the two.
//!
//! Each connection has a bounded outbound queue: a client that does not read is dropped with
//! a close frame, it never slows a room. Frames are small and the socket's buffers are sized
//! down from tungstenite's defaults.
//!
//! The same feed carries order events: `order_status` goes to the order's customer on every
//! connection they have. A member removed from a room gets `member_removed` and no more of
//! its messages. The server pings every 20 s and drops a client silent for two intervals.
//!
//! Presence: every connection is recorded in the shared `presence` KV bucket
//! (`chronicle_bus::Presence`), refreshed with each ping, removed when it closes, lapsing by
//! itself when its gateway dies.
//!
//! Presence changes and typing travel on each room's core NATS signal subject
//! (`chat.signal.<room>`), not persisted.
//!
//! Not built yet (issue 11): attachments (they need files, issue 12).

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use axum::{
    extract::{
        ws::{Message, WebSocket, WebSocketUpgrade},
        State,
    },
    response::Response,
};
use chronicle_chat::{Room, RoomCommand, RoomEvent};
use chronicle_commands::CommandContext;
use chronicle_commerce::{Order, OrderEvent};
use chronicle_projections::chat_history::{self, Window};
use chronicle_schemas::Envelope;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, Mutex};

use crate::{error::ApiError, extract::ApiQuery, state::AppState};

/// Frames a connection may have queued before it counts as not reading.
const OUTBOUND: usize = 256;
/// Most backlog messages a subscription sends before it tells the client to page over HTTP.
const MAX_BACKLOG: i64 = 1_000;
/// Largest frame a client may send.
const MAX_FRAME: usize = 16 * 1024;

/// The hub's routes.
pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/ws", axum::routing::get(upgrade))
        .route("/api/v1/users/{id}/presence", axum::routing::get(presence))
}

/// `GET /api/v1/users/{id}/presence`: online while any of the user's connections is live.
async fn presence(
    State(state): State<AppState>,
    _caller: crate::extract::Caller,
    crate::extract::ApiPath(id): crate::extract::ApiPath<String>,
) -> Result<axum::Json<chronicle_bus::PresenceView>, ApiError> {
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(ApiError::not_found("no such user"));
    }
    let presence = state
        .hub
        .presence(&state.nats)
        .await
        .map_err(ApiError::internal)?;
    presence
        .of(&id)
        .await
        .map(axum::Json)
        .map_err(ApiError::internal)
}

/// Records a connection's presence; failures are logged (presence is best effort, the
/// connection itself works without it).
async fn mark_present(state: &AppState, user_id: &str, connection: &str, open: bool) {
    let result = match state.hub.presence(&state.nats).await {
        Ok(presence) if open => presence.refresh(user_id, connection).await,
        Ok(presence) => presence.closed(user_id, connection).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, user_id, "presence not recorded");
    }
}

/// Tells the members of `user_id`'s rooms whether they are online now (a `presence` frame
/// on each room's signal subject).
async fn announce_presence(state: &AppState, user_id: &str) {
    let Ok(presence) = state.hub.presence(&state.nats).await else {
        return;
    };
    let Ok(view) = presence.of(user_id).await else {
        return;
    };
    let rooms: Vec<String> =
        sqlx::query_scalar("SELECT room_id FROM chat_members WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(&state.pool)
            .await
            .unwrap_or_default();
    let frame = json!({"type": "presence", "user_id": user_id, "online": view.online}).to_string();
    for room in rooms {
        let _ = state
            .nats
            .publish(signal_subject(&room), frame.clone().into())
            .await;
    }
}

/// The core NATS subject of a room's signals: typing and presence, not persisted.
fn signal_subject(room_id: &str) -> String {
    format!("chat.signal.{room_id}")
}

/// Live room events by room id, fed by the process's one consumer.
#[derive(Clone, Default)]
pub struct Hub {
    rooms: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<Value>>>>>,
    /// Frames for one user wherever they are subscribed (`order_status`).
    users: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<Value>>>>>,
    /// The shared presence bucket, opened on first use.
    presence: Arc<tokio::sync::OnceCell<chronicle_bus::Presence>>,
    started: Arc<tokio::sync::OnceCell<()>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hub")
    }
}

impl Hub {
    /// A receiver of room `room_id`'s live frames (`message`, `read_receipt`).
    async fn listen(&self, room_id: &str) -> broadcast::Receiver<Arc<Value>> {
        let mut rooms = self.rooms.lock().await;
        rooms
            .entry(room_id.to_owned())
            .or_insert_with(|| broadcast::channel(OUTBOUND).0)
            .subscribe()
    }

    /// The presence bucket.
    async fn presence(
        &self,
        nats: &async_nats::Client,
    ) -> Result<&chronicle_bus::Presence, chronicle_bus::BusError> {
        self.presence
            .get_or_try_init(|| async {
                chronicle_bus::Presence::open(&jetstream::new(nats.clone())).await
            })
            .await
    }

    /// A receiver of the frames for user `user_id` (`order_status`).
    async fn listen_user(&self, user_id: &str) -> broadcast::Receiver<Arc<Value>> {
        let mut users = self.users.lock().await;
        users
            .entry(user_id.to_owned())
            .or_insert_with(|| broadcast::channel(64).0)
            .subscribe()
    }

    /// Starts the consumer once per process, and returns once it exists: a message
    /// published after this returns reaches the rooms' listeners.
    async fn start(&self, nats: &async_nats::Client, pool: &sqlx::PgPool) {
        let hub = self.clone();
        let (nats, pool) = (nats.clone(), pool.clone());
        self.started
            .get_or_init(|| async move {
                let first = hub.consumer(&nats, 0).await;
                tokio::spawn(async move { hub.feed(nats, pool, first).await });
            })
            .await;
    }

    /// An ordered consumer of the room events: from now (`after == 0`), or right after the
    /// stream sequence `after` (a restart resumes where the last one stopped).
    async fn consumer(
        &self,
        nats: &async_nats::Client,
        after: u64,
    ) -> Result<jetstream::consumer::Consumer<jetstream::consumer::pull::OrderedConfig>, Failure>
    {
        let js = jetstream::new(nats.clone());
        let stream = chronicle_bus::ensure_events_stream(&js).await?;
        let deliver_policy = if after == 0 {
            DeliverPolicy::New
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            }
        };
        Ok(stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subjects: vec![
                    format!("events.chat.{}.>", <Room as cqrs_es::Aggregate>::TYPE),
                    format!("events.commerce.{}.>", <Order as cqrs_es::Aggregate>::TYPE),
                ],
                deliver_policy,
                ..Default::default()
            })
            .await?)
    }

    /// Fans the room events out, for ever, resuming after failures where it stopped.
    async fn feed(
        &self,
        nats: async_nats::Client,
        pool: sqlx::PgPool,
        first: Result<
            jetstream::consumer::Consumer<jetstream::consumer::pull::OrderedConfig>,
            Failure,
        >,
    ) {
        let mut last = 0;
        let mut consumer = first;
        loop {
            let result = match consumer {
                Ok(consumer) => self.feed_from(consumer, &pool, &mut last).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "the hub's feed stopped; starting again");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            consumer = self.consumer(&nats, last).await;
        }
    }

    async fn feed_from(
        &self,
        consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::OrderedConfig>,
        pool: &sqlx::PgPool,
        last: &mut u64,
    ) -> Result<(), Failure> {
        let mut messages = consumer.messages().await?;
        while let Some(message) = messages.next().await {
            let message = message?;
            if let Ok(info) = message.info() {
                *last = info.stream_sequence;
            }
            let Ok(envelope) = serde_json::from_slice::<Envelope>(&message.payload) else {
                continue;
            };
            if envelope.aggregate_type == <Order as cqrs_es::Aggregate>::TYPE {
                self.order_status(&envelope, pool).await;
                continue;
            }
            let Ok(event) = envelope.decode::<RoomEvent>() else {
                continue;
            };
            let frame = match event {
                RoomEvent::MessageSent {
                    message_id,
                    seq,
                    sender_id,
                    body,
                    sent_at,
                    ..
                } => json!({"type": "message", "room_id": envelope.aggregate_id, "id": message_id,
                    "seq": seq, "sender_id": sender_id, "body": body, "sent_at": sent_at}),
                RoomEvent::ReadMarked { user_id, up_to_seq } => json!({"type": "read_receipt",
                    "room_id": envelope.aggregate_id, "user_id": user_id, "up_to_seq": up_to_seq}),
                RoomEvent::MemberRemoved { user_id, .. } => json!({"type": "member_removed",
                    "room_id": envelope.aggregate_id, "user_id": user_id}),
                _ => continue,
            };
            let mut rooms = self.rooms.lock().await;
            let unheard = rooms
                .get(&envelope.aggregate_id)
                .is_some_and(|room| room.send(Arc::new(frame)).is_err());
            if unheard {
                // Nobody listens to that room here any more: forget it.
                rooms.remove(&envelope.aggregate_id);
            }
        }
        Ok(())
    }
}

impl Hub {
    /// `order_status` to the order's customer, when an order event changes its status.
    async fn order_status(&self, envelope: &Envelope, pool: &sqlx::PgPool) {
        let Ok(event) = envelope.decode::<OrderEvent>() else {
            return;
        };
        let (status, customer) = match event {
            OrderEvent::OrderPlaced { customer_id, .. } => ("pending", Some(customer_id)),
            OrderEvent::OrderReserved {} => ("reserved", None),
            OrderEvent::OrderRejected { .. } => ("rejected", None),
            OrderEvent::PaymentRequested { .. } => ("paying", None),
            OrderEvent::PaymentFailed { .. } => ("reserved", None),
            OrderEvent::OrderPaid { .. } => ("paid", None),
            OrderEvent::OrderShipped {} => ("shipped", None),
            OrderEvent::OrderCancelled { .. } => ("cancelled", None),
            OrderEvent::LatePaymentCharged { .. } | OrderEvent::PaymentRefunded { .. } => return,
        };
        let customer = match customer {
            Some(customer) => customer,
            // The order was placed before this event: the read model knows its customer.
            None => match sqlx::query_scalar::<_, String>(
                "SELECT customer_id FROM orders WHERE id = $1",
            )
            .bind(&envelope.aggregate_id)
            .fetch_optional(pool)
            .await
            {
                Ok(Some(customer)) => customer,
                _ => return,
            },
        };
        let mut users = self.users.lock().await;
        let frame =
            json!({"type": "order_status", "order_id": envelope.aggregate_id, "status": status});
        let unheard = users
            .get(&customer)
            .is_some_and(|user| user.send(Arc::new(frame)).is_err());
        if unheard {
            users.remove(&customer);
        }
    }
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// Authenticates at the handshake: a missing or bad token is 401, before any upgrade.
async fn upgrade(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<WsQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let user = query
        .token
        .as_deref()
        .and_then(|token| state.auth.verify(token))
        .ok_or_else(|| ApiError::unauthorized("connect with ?token=<a login token>"))?;
    state.hub.start(&state.nats, &state.pool).await;
    Ok(ws
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| connection(socket, state, user.user_id)))
}

/// A frame a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Inbound {
    Ping,
    Subscribe {
        room_id: String,
        #[serde(default)]
        since_seq: Option<u64>,
    },
    Unsubscribe {
        room_id: String,
    },
    Send {
        room_id: String,
        body: String,
        client_msg_id: String,
    },
    Read {
        room_id: String,
        up_to_seq: u64,
    },
    Typing {
        room_id: String,
    },
}

/// What goes out on a socket: a JSON frame, or the server's ping.
enum Outbound {
    Frame(Value),
    Ping,
}

/// A connection's bounded outbound queue. A push that finds it full marks the connection
/// overflowed: the client is not reading, and it is dropped rather than waited for.
#[derive(Clone)]
struct Queue {
    tx: mpsc::Sender<Outbound>,
    overflow: Arc<tokio::sync::Notify>,
}

impl Queue {
    /// Queues `outbound`; `false` when the client is not keeping up (or gone).
    fn push(&self, outbound: Outbound) -> bool {
        let pushed = self.tx.try_send(outbound).is_ok();
        if !pushed {
            self.overflow.notify_one();
        }
        pushed
    }
}

/// How often an idle client is pinged; one that answers nothing for two of these is gone.
const PING_EVERY: Duration = Duration::from_secs(20);

/// One client connection until it closes, fails, stops reading, or stops answering pings.
async fn connection(socket: WebSocket, state: AppState, user_id: String) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut queued) = mpsc::channel::<Outbound>(OUTBOUND);
    let overflow = Arc::new(tokio::sync::Notify::new());
    let out = Queue {
        tx,
        overflow: overflow.clone(),
    };
    let writer = tokio::spawn(async move {
        while let Some(outbound) = queued.recv().await {
            let message = match outbound {
                Outbound::Frame(frame) => Message::text(frame.to_string()),
                Outbound::Ping => Message::Ping(Default::default()),
            };
            if sink.send(message).await.is_err() {
                return;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    });
    // Frames for this user wherever they come from (`order_status`).
    // Received in the connection's own loop: no task of its own per connection.
    let mut personal = state.hub.listen_user(&user_id).await;
    let connection_id = uuid::Uuid::new_v4().to_string();
    mark_present(&state, &user_id, &connection_id, true).await;
    announce_presence(&state, &user_id).await;
    let mut subscriptions: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut heard = tokio::time::Instant::now();
    loop {
        let message = tokio::select! {
            message = stream.next() => match message {
                Some(Ok(message)) => message,
                _ => break,
            },
            () = overflow.notified() => {
                tracing::debug!(user_id, "a client is not reading; dropping it");
                break;
            }
            frame = personal.recv() => {
                match frame {
                    Ok(frame) if !out.push(Outbound::Frame((*frame).clone())) => break,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        personal = state.hub.listen_user(&user_id).await;
                    }
                }
                continue;
            }
            _ = pings.tick() => {
                if heard.elapsed() > PING_EVERY * 2 {
                    tracing::debug!(user_id, "a client stopped answering; dropping it");
                    break;
                }
                if !out.push(Outbound::Ping) {
                    break;
                }
                mark_present(&state, &user_id, &connection_id, true).await;
                continue;
            }
        };
        heard = tokio::time::Instant::now();
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => break,
            _ => continue,
        };
        let answer = match serde_json::from_str::<Inbound>(text.as_str()) {
            // Boxed: the command path's futures are large, and an idle connection should not
            // carry their space while it waits for the next frame.
            Ok(frame) => Box::pin(handle(&state, &user_id, frame, &out, &mut subscriptions)).await,
            Err(e) => Some(json!({"type": "error", "code": "bad_frame", "detail": e.to_string()})),
        };
        // A client whose queue is full is not reading: it is dropped, never waited for.
        if let Some(answer) = answer {
            if !out.push(Outbound::Frame(answer)) {
                break;
            }
        }
        if out.tx.is_closed() {
            break;
        }
    }
    mark_present(&state, &user_id, &connection_id, false).await;
    announce_presence(&state, &user_id).await;
    for task in subscriptions.into_values() {
        task.abort();
    }
    drop(out);
    // The close frame goes out if the socket takes it; a client that reads nothing does not
    // hold the connection open.
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(1), writer)
        .await
        .is_err()
    {
        abort.abort();
    }
}

/// One frame from a client: the answer to send back, if any.
async fn handle(
    state: &AppState,
    user_id: &str,
    frame: Inbound,
    out: &Queue,
    subscriptions: &mut HashMap<String, tokio::task::JoinHandle<()>>,
) -> Option<Value> {
    match frame {
        Inbound::Ping => Some(json!({"type": "pong"})),
        Inbound::Subscribe { room_id, since_seq } => {
            if let Some(task) = subscriptions.remove(&room_id) {
                task.abort();
            }
            let task = tokio::spawn(subscription(
                state.clone(),
                room_id.clone(),
                user_id.to_owned(),
                since_seq.unwrap_or(0),
                out.clone(),
            ));
            subscriptions.insert(room_id, task);
            None
        }
        Inbound::Unsubscribe { room_id } => {
            if let Some(task) = subscriptions.remove(&room_id) {
                task.abort();
            }
            None
        }
        Inbound::Send {
            room_id,
            body,
            client_msg_id,
        } => Some(send(state, user_id, &room_id, body, client_msg_id).await),
        Inbound::Read { room_id, up_to_seq } => {
            let command = RoomCommand::MarkRead {
                user_id: user_id.to_owned(),
                up_to_seq,
            };
            command_on(state, user_id, &room_id, command).await.err()
        }
        Inbound::Typing { room_id } => {
            // Not persisted: a core NATS message the room's listeners pass on.
            let _ = state
                .nats
                .publish(
                    signal_subject(&room_id),
                    json!({"type": "typing", "room_id": room_id, "user_id": user_id})
                        .to_string()
                        .into(),
                )
                .await;
            None
        }
    }
}

fn error(code: &str, detail: &str) -> Value {
    json!({"type": "error", "code": code, "detail": detail})
}

/// Sends a message through the same path as HTTP: an `ack` or an `error` frame.
async fn send(
    state: &AppState,
    user_id: &str,
    room_id: &str,
    body: String,
    client_msg_id: String,
) -> Value {
    if uuid::Uuid::parse_str(room_id).is_err() {
        return error("not_found", "no such room");
    }
    let ctx = actor_context(user_id);
    match crate::routes::chat::send_message(
        state,
        &ctx,
        room_id,
        user_id,
        body,
        client_msg_id.clone(),
    )
    .await
    {
        Ok(sent) => json!({"type": "ack", "client_msg_id": client_msg_id,
            "id": sent.message_id, "seq": sent.seq}),
        Err(problem) => problem_frame(&problem),
    }
}

/// The context of a command a connection's user sends.
fn actor_context(user_id: &str) -> CommandContext {
    CommandContext {
        actor: Some(user_id.to_owned()),
        ..CommandContext::new()
    }
}

/// An `error` frame with a problem's code and detail.
fn problem_frame(problem: &ApiError) -> Value {
    json!({"type": "error", "code": problem.code(), "detail": problem.detail()})
}

/// Runs a room command for `user_id`; a refusal becomes an `error` frame with its code.
async fn command_on(
    state: &AppState,
    user_id: &str,
    room_id: &str,
    command: RoomCommand,
) -> Result<(), Value> {
    if uuid::Uuid::parse_str(room_id).is_err() {
        return Err(error("not_found", "no such room"));
    }
    state
        .commands
        .execute::<Room>(room_id, command, &(), &actor_context(user_id))
        .await
        .map(|_| ())
        .map_err(|e| problem_frame(&ApiError::from(e)))
}

/// One room for one connection: membership checked on the room itself (not a read model
/// that may lag), the backlog past `since_seq` up to the room's head, then live messages
/// past what was sent.
async fn subscription(
    state: AppState,
    room_id: String,
    user_id: String,
    since_seq: u64,
    out: Queue,
) {
    if uuid::Uuid::parse_str(&room_id).is_err() {
        out.push(Outbound::Frame(error("not_found", "no such room")));
        return;
    }
    // Listening starts before the head is read: what comes after the head arrives live.
    let mut live = state.hub.listen(&room_id).await;
    let mut typing = state.nats.subscribe(signal_subject(&room_id)).await.ok();
    // The server knows of the subscription before the client hears `subscribed`.
    let _ = state.nats.flush().await;
    let loaded = state
        .commands
        .store()
        .load_from_snapshot::<Room>(&room_id)
        .await;
    let head = match loaded {
        Ok(loaded) if !loaded.state.exists() => {
            out.push(Outbound::Frame(error("not_found", "no such room")));
            return;
        }
        Ok(loaded) if !loaded.state.is_member(&user_id) => {
            out.push(Outbound::Frame(error(
                "forbidden",
                "only the room's members may subscribe",
            )));
            return;
        }
        Ok(loaded) => loaded.state.last_seq(),
        Err(_) => {
            out.push(Outbound::Frame(error("unavailable", "try again")));
            return;
        }
    };
    let mut sent = since_seq;
    let mut recovered = true;
    if head > since_seq {
        let wanted = (head - since_seq) as i64;
        recovered = wanted <= MAX_BACKLOG;
        let from = if recovered {
            since_seq
        } else {
            head - MAX_BACKLOG as u64
        };
        let backlog = wait_for_backlog(&state, &room_id, from, head).await;
        for message in backlog {
            sent = message.seq as u64;
            let frame = json!({"type": "message", "room_id": room_id, "id": message.id,
                "seq": message.seq, "sender_id": message.sender_id, "body": message.body,
                "sent_at": message.sent_at});
            if !out.push(Outbound::Frame(frame)) {
                return;
            }
        }
    }
    let subscribed =
        json!({"type": "subscribed", "room_id": room_id, "head_seq": head, "recovered": recovered});
    if !out.push(Outbound::Frame(subscribed)) {
        return;
    }
    loop {
        let typing_next = async {
            match typing.as_mut() {
                Some(sub) => sub.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = live.recv() => match frame {
                Ok(frame) => {
                    if frame["type"] == "message" {
                        let seq = frame["seq"].as_u64().unwrap_or(0);
                        if seq <= sent {
                            continue;
                        }
                        sent = seq;
                    }
                    let removed = frame["type"] == "member_removed" && frame["user_id"] == user_id.as_str();
                    if !out.push(Outbound::Frame((*frame).clone())) || removed {
                        // Removed from the room: no more of its messages.
                        return;
                    }
                }
                // Fell behind the room: the client re-subscribes with its last seq.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    out.push(Outbound::Frame(error("lagged", "re-subscribe with since_seq")));
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            Some(message) = typing_next => {
                if let Ok(mut frame) = serde_json::from_slice::<Value>(&message.payload) {
                    frame["room_id"] = json!(room_id);
                    if !out.push(Outbound::Frame(frame)) {
                        return;
                    }
                }
            }
        }
    }
}

/// The messages `from < seq <= head` once the read model holds them all (waiting up to 2 s,
/// then what it has).
async fn wait_for_backlog(
    state: &AppState,
    room_id: &str,
    from: u64,
    head: u64,
) -> Vec<chat_history::MessageView> {
    let wanted = (head - from) as i64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let got = chat_history::messages(&state.pool, room_id, Window::After(from as i64), wanted)
            .await
            .unwrap_or_default();
        if got.len() as i64 >= wanted || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
