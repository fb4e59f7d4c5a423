//! One WebSocket connection: the handshake, the frames a client sends, its subscriptions,
//! and the bounded queue of what goes back.

use chronicle_commands::contexts;
use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    extract::{
        ws::{
            rejection::WebSocketUpgradeRejection, Message, Utf8Bytes, WebSocket, WebSocketUpgrade,
        },
        State,
    },
    response::Response,
};
use chronicle_chat::{Room, RoomCommand};
use chronicle_commands::CommandContext;
use chronicle_projections::chat_history;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::{signal_subject, to_text, OUTBOUND};
use crate::{error::ApiError, extract::ApiQuery, state::AppState};

/// Largest frame a client may send.
const MAX_FRAME: usize = 16 * 1024;
/// Most rooms one connection may be subscribed to at once: each is a task and a listener.
const MAX_SUBSCRIPTIONS: usize = 256;

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// Authenticates at the handshake: a missing or bad token is 401, before any upgrade.
#[utoipa::path(get, path = "/ws", tag = "chat", operation_id = "websocket", summary = "The WebSocket (?token): subscribe, send, read, typing; message, presence, order_status frames", responses((status = 101, description = "Switching Protocols"), crate::schema::Problems))]
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<WsQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let user = query
        .token
        .as_deref()
        .and_then(|token| state.auth.verify(token))
        .ok_or_else(|| ApiError::unauthorized("connect with ?token=<a login token>"))?;
    let ws = ws?;
    // Order status reaches customers through commerce's query of its own read model.
    state
        .hub
        .start(&state.nats, state.db.of(contexts::COMMERCE))
        .await;
    // Client frames are small: a 1 KiB read buffer grows for the rare large one (up to
    // MAX_FRAME) instead of every idle connection holding tungstenite's 128 KiB.
    Ok(ws
        .read_buffer_size(1024)
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
        #[serde(default)]
        file_ids: Vec<String>,
    },
    Read {
        room_id: String,
        up_to_seq: u64,
    },
    Typing {
        room_id: String,
    },
}

/// What goes out on a socket: a frame's JSON text, or the server's ping.
pub(super) enum Outbound {
    Frame(Utf8Bytes),
    Ping,
}

/// A connection's bounded outbound queue. A push that finds it full marks the connection
/// overflowed: the client is not reading, and it is dropped rather than waited for.
///
/// Not a tokio `mpsc`: that allocates a block of 32 slots per channel up front, and an idle
/// connection's queue is empty nearly all its life; this one holds what is queued and no more.
#[derive(Clone)]
pub(super) struct Queue(Arc<Outbox>);

struct Outbox {
    queued: std::sync::Mutex<Queued>,
    /// Something was queued, or the queue closed (the writer waits on it).
    ready: tokio::sync::Notify,
    /// The queue overflowed, or the writer stopped (the connection's loop waits on it).
    overflow: tokio::sync::Notify,
    /// The writer took a frame (a paced push waits on it).
    drained: tokio::sync::Notify,
}

#[derive(Default)]
struct Queued {
    frames: std::collections::VecDeque<Outbound>,
    closed: bool,
}

impl Queue {
    fn new() -> Self {
        Self(Arc::new(Outbox {
            queued: std::sync::Mutex::default(),
            ready: tokio::sync::Notify::new(),
            overflow: tokio::sync::Notify::new(),
            drained: tokio::sync::Notify::new(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.0
            .queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `outbound`; `false` when the client is not keeping up (or gone).
    pub(super) fn push(&self, outbound: Outbound) -> bool {
        let mut queued = self.lock();
        if queued.closed || queued.frames.len() >= OUTBOUND {
            drop(queued);
            self.0.overflow.notify_one();
            return false;
        }
        queued.frames.push_back(outbound);
        drop(queued);
        self.0.ready.notify_one();
        true
    }

    /// Queues `outbound` once the queue is less than half full, waiting for the writer to
    /// drain it: how a recovery backlog (up to [`MAX_BACKLOG`] frames, more than the queue
    /// holds) goes out at the pace the socket takes it, leaving the other half for live frames
    /// and answers. `false` when the queue closed, or when nothing drained for `patience`: the
    /// client is not reading, and the connection is dropped as on an overflow.
    pub(super) async fn push_paced(&self, outbound: Outbound, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        let mut outbound = Some(outbound);
        loop {
            // Registered before the length is read, so a drain in between is not missed.
            let drained = self.0.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let mut queued = self.lock();
                if queued.closed {
                    return false;
                }
                if queued.frames.len() < OUTBOUND / 2 {
                    if let Some(outbound) = outbound.take() {
                        queued.frames.push_back(outbound);
                    }
                    drop(queued);
                    self.0.ready.notify_one();
                    return true;
                }
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                self.0.overflow.notify_one();
                return false;
            }
        }
    }

    /// Queues a frame made here (an answer, an error).
    pub(super) fn frame(&self, frame: &Value) -> bool {
        self.push(Outbound::Frame(to_text(frame)))
    }

    /// The next frame, waiting for one; `None` once the queue is closed and drained.
    async fn next(&self) -> Option<Outbound> {
        loop {
            {
                let mut queued = self.lock();
                if let Some(outbound) = queued.frames.pop_front() {
                    drop(queued);
                    self.0.drained.notify_waiters();
                    return Some(outbound);
                }
                if queued.closed {
                    return None;
                }
            }
            self.0.ready.notified().await;
        }
    }

    /// The next frame if one is queued.
    fn try_next(&self) -> Option<Outbound> {
        let next = self.lock().frames.pop_front();
        if next.is_some() {
            self.0.drained.notify_waiters();
        }
        next
    }

    /// No more frames: the writer sends what is queued, then the close frame.
    fn close(&self) {
        self.lock().closed = true;
        self.0.ready.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Resolves when a push overflowed (or the writer stopped).
    async fn overflowed(&self) {
        self.0.overflow.notified().await;
    }
}

/// A busy connection is written to at most once per this long: frames arriving meanwhile
/// go out together, in one write call (the client reads them in one too). A connection that
/// has been quiet for this long is written to at once. E2 (1,000 members, 200 messages/s):
/// one write per frame gave p99 delivery 0.6-1.3 s on 2 cores, 10 ms about the same, 25 ms
/// 172-176 ms: the write calls, ours and the clients' reads, were what saturated the cores.
/// With the room's sends batched (the command bus), 25 ms gave 103-112 ms and 15 ms 110-127.
const WRITE_EVERY: Duration = Duration::from_millis(25);

/// Writes what is queued, every waiting frame per flush, and under fan-out at most one flush
/// per [`WRITE_EVERY`]: a member of a busy room costs a write call per burst, not per frame.
async fn write_queued(mut sink: futures::stream::SplitSink<WebSocket, Message>, queue: Queue) {
    let mut flushed = tokio::time::Instant::now() - WRITE_EVERY;
    let written = async {
        while let Some(first) = queue.next().await {
            let mut next = Some(first);
            while let Some(outbound) = next.take() {
                let message = match outbound {
                    Outbound::Frame(text) => Message::Text(text),
                    Outbound::Ping => Message::Ping(Default::default()),
                };
                sink.feed(message).await?;
                next = match queue.try_next() {
                    Some(outbound) => Some(outbound),
                    // Written to a moment ago: what comes in the rest of the interval joins
                    // this write.
                    None if flushed.elapsed() < WRITE_EVERY => {
                        tokio::time::sleep_until(flushed + WRITE_EVERY).await;
                        queue.try_next()
                    }
                    None => None,
                };
            }
            sink.flush().await?;
            flushed = tokio::time::Instant::now();
        }
        sink.send(Message::Close(None)).await
    };
    if written.await.is_err() {
        // The socket failed: the connection's loop stops too.
        queue.close();
        queue.0.overflow.notify_one();
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
    let rooms = chat_history::member_rooms(state.db.of(contexts::CHAT), user_id)
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

/// One client connection until it closes, fails, stops reading, or stops answering pings.
async fn connection(socket: WebSocket, state: AppState, user_id: String) {
    let (sink, mut stream) = socket.split();
    metrics::gauge!("chronicle_ws_connections").increment(1.0);
    let out = Queue::new();
    let writer = tokio::spawn(write_queued(sink, out.clone()));
    // Frames for this user wherever they come from (`order_status`).
    // Received in the connection's own loop: no task of its own per connection.
    let mut personal = state.hub.listen_user(&user_id);
    // Presence (the KV bucket, the rooms query) is awaited boxed here and below: those
    // futures are kilobytes, and an idle connection's task would otherwise carry their space
    // for as long as it lives.
    if Box::pin(state.hub.arrived(&state.nats, &user_id)).await {
        Box::pin(announce_presence(&state, &user_id)).await;
    }
    let mut subscriptions: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    // An idle client is pinged; one that answers nothing for two intervals is gone.
    let ping_every = state
        .config
        .contexts
        .get::<super::ChatConfig>()
        .ws_ping_interval
        .max(Duration::from_millis(50));
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut heard = tokio::time::Instant::now();
    loop {
        let message = tokio::select! {
            message = stream.next() => match message {
                Some(Ok(message)) => message,
                _ => break,
            },
            () = out.overflowed() => {
                tracing::debug!(user_id, "a client is not reading; dropping it");
                metrics::counter!("chronicle_ws_dropped_total", "reason" => "slow_reader").increment(1);
                break;
            }
            frame = personal.recv() => {
                match frame {
                    Ok(frame) => {
                        if !out.push(Outbound::Frame(frame.text)) {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        personal = state.hub.listen_user(&user_id);
                    }
                }
                continue;
            }
            _ = pings.tick() => {
                if heard.elapsed() > ping_every * 2 {
                    tracing::debug!(user_id, "a client stopped answering; dropping it");
                    metrics::counter!("chronicle_ws_dropped_total", "reason" => "unresponsive").increment(1);
                    break;
                }
                if !out.push(Outbound::Ping) {
                    break;
                }
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
            if !out.frame(&answer) {
                break;
            }
        }
        if out.is_closed() {
            break;
        }
    }
    drop(personal);
    metrics::gauge!("chronicle_ws_connections").decrement(1.0);
    if Box::pin(state.hub.left(&state.nats, &user_id)).await {
        Box::pin(announce_presence(&state, &user_id)).await;
    }
    for task in subscriptions.into_values() {
        task.abort();
    }
    out.close();
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
            // A subscription that ended (refused, or its room unknown) holds nothing.
            subscriptions.retain(|_, task| !task.is_finished());
            if subscriptions.len() >= MAX_SUBSCRIPTIONS {
                return Some(error(
                    "too_many_subscriptions",
                    &format!("a connection follows at most {MAX_SUBSCRIPTIONS} rooms"),
                ));
            }
            let task = tokio::spawn(super::subscription::subscription(
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
            file_ids,
        } => Some(send(state, user_id, &room_id, body, client_msg_id, file_ids).await),
        Inbound::Read { room_id, up_to_seq } => {
            let command = RoomCommand::MarkRead {
                user_id: user_id.to_owned(),
                up_to_seq,
            };
            command_on(state, user_id, &room_id, command).await.err()
        }
        Inbound::Typing { room_id } => {
            if let Err(refused) = member_of(state, user_id, &room_id).await {
                return Some(refused);
            }
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

pub(super) fn error(code: &str, detail: &str) -> Value {
    json!({"type": "error", "code": code, "detail": detail})
}

/// Sends a message through the same path as HTTP: an `ack` or an `error` frame.
async fn send(
    state: &AppState,
    user_id: &str,
    room_id: &str,
    body: String,
    client_msg_id: String,
    file_ids: Vec<String>,
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
        file_ids,
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
pub(super) fn problem_frame(problem: &ApiError) -> Value {
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

/// Whether `user_id` is a member of `room_id`, asked of the room itself: else the error
/// frame to answer (`not_found`, `forbidden`, or `unavailable`).
pub(super) async fn member_of(
    state: &AppState,
    user_id: &str,
    room_id: &str,
) -> Result<u64, Value> {
    if uuid::Uuid::parse_str(room_id).is_err() {
        return Err(error("not_found", "no such room"));
    }
    match crate::routes::chat::room(state, room_id).await {
        Ok(room) if !room.is_member(user_id) => {
            Err(error("forbidden", "only the room's members may do that"))
        }
        Ok(room) => Ok(room.last_seq()),
        Err(problem) if problem.code() == "not_found" => Err(problem_frame(&problem)),
        Err(_) => Err(error("unavailable", "try again")),
    }
}
