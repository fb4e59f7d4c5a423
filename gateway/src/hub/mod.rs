//! The WebSocket hub (`GET /ws?token=`, the API contract Chat): live room messages and read receipts,
//! recovery with `since_seq`, sending and marking read over the socket, typing.
//!
//! One live reader of the log per gateway process (`chronicle_bus::LiveSubscriber`, the
//! runtime's reader without a checkpoint) reads the room and order events from the moment
//! the hub starts and fans each event out to the connections subscribed to its room
//! (a `broadcast` channel per room), so a message sent through any gateway instance reaches
//! the clients of every instance, in `seq` order. A subscription first listens to the live
//! feed, then reads the room's head from the event store, sends the backlog up to that head
//! from the `chat_history` read model (or, where it lags, from the room's own events), and
//! then only live messages past what it sent: no gap and no duplicate between the two.
//!
//! A frame is serialized once, when it enters the hub, and the same bytes go to every
//! connection that receives it: fan-out to a thousand members costs a thousand reference
//! counts and socket writes, not a thousand JSON encodings.
//!
//! Each connection has a bounded outbound queue: a client that does not read is dropped with
//! a close frame, it never slows a room. Frames are small and the socket's buffers are sized
//! down from tungstenite's defaults.
//!
//! The same feed carries order events: `order_status` goes to the order's customer on every
//! connection they have. A member removed from a room gets `member_removed` and no more of
//! its messages. The server pings every 20 s and drops a client silent for two intervals.
//!
//! Presence: a process records in the shared `presence` KV bucket (`chronicle_bus::Presence`)
//! that it holds a user's connections when their first one opens here, refreshes that for
//! every user it holds every third of the time to live, and removes it when their last one
//! here closes; when the process dies, its entries lapse by themselves.
//!
//! Presence changes and typing travel on each room's core NATS signal subject
//! (`chat.signal.<room>`), not persisted; a process subscribes to it once per room it has
//! listeners for, and passes each signal on like a live frame.
//!
//! A message may carry `file_ids` (files its sender owned): the room's members may read them.
//!
//! The live reader keeps no checkpoint (a process starts from "now" and a client recovers
//! with `since_seq`); it shares the runtime's reconnect, decoding and metrics
//! (`chronicle_subscriber_*{subscriber="hub"}`).

pub(crate) mod connection;
pub(crate) mod routes;
mod subscription;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_nats::jetstream;
use axum::extract::ws::Utf8Bytes;
use chronicle_chat::{Room, RoomEvent};
use chronicle_commerce::{Order, OrderEvent};
use chronicle_schemas::Envelope;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// Frames a connection may have queued before it counts as not reading; also how far a
/// room's live feed may run ahead of a subscription before it is told it lagged.
const OUTBOUND: usize = 256;

/// The core NATS subject of a room's signals: typing and presence, not persisted.
fn signal_subject(room_id: &str) -> String {
    format!("chat.signal.{room_id}")
}

/// A frame as it goes out: its JSON made once, and what a subscription needs to know of it.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub(crate) kind: LiveKind,
    pub(crate) text: Utf8Bytes,
}

#[derive(Debug, Clone)]
pub(crate) enum LiveKind {
    /// A room message: a subscription skips what its backlog already sent.
    Message { seq: u64 },
    /// A member left the room: that member's subscription ends after this frame.
    MemberRemoved { user_id: Arc<str> },
    /// Anything else (read receipts, signals, order status): passed on as it is.
    Other,
}

impl Live {
    fn other(frame: &impl Serialize) -> Self {
        Self {
            kind: LiveKind::Other,
            text: to_text(frame),
        }
    }
}

/// A frame's JSON text.
pub(crate) fn to_text(frame: &impl Serialize) -> Utf8Bytes {
    serde_json::to_string(frame)
        .unwrap_or_else(|_| r#"{"type":"error","code":"internal"}"#.to_owned())
        .into()
}

/// How the chat routes and the WebSocket hub are configured.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// How long a user stays online after their gateway stops refreshing their presence
    /// (it crashed): refreshed every third of it.
    pub presence_ttl: Duration,
    /// How often the hub pings a WebSocket client; one silent for two intervals is dropped.
    pub ws_ping_interval: Duration,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            presence_ttl: chronicle_bus::PRESENCE_TTL,
            ws_ping_interval: Duration::from_secs(20),
        }
    }
}

/// A `message` frame.
#[derive(Serialize)]
#[serde(tag = "type", rename = "message")]
pub(crate) struct MessageFrame<'a> {
    pub(crate) room_id: &'a str,
    pub(crate) id: &'a str,
    pub(crate) seq: u64,
    pub(crate) sender_id: &'a str,
    pub(crate) body: &'a str,
    pub(crate) sent_at: chrono::DateTime<chrono::Utc>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub(crate) file_ids: &'a [String],
}

impl<'a> MessageFrame<'a> {
    /// The frame of `message` in room `room_id`.
    pub(crate) fn of(
        room_id: &'a str,
        message: &'a chronicle_projections::chat_history::MessageView,
    ) -> Self {
        Self {
            room_id,
            id: &message.id,
            seq: message.seq as u64,
            sender_id: &message.sender_id,
            body: &message.body,
            sent_at: message.sent_at,
            file_ids: &message.file_ids,
        }
    }

    pub(crate) fn live(&self) -> Live {
        Live {
            kind: LiveKind::Message { seq: self.seq },
            text: to_text(self),
        }
    }
}

/// A room's live feed in this process, and the task passing its signals on.
struct RoomFeed {
    live: broadcast::Sender<Live>,
    signals: Option<tokio::task::AbortHandle>,
}

impl Drop for RoomFeed {
    fn drop(&mut self) {
        if let Some(signals) = &self.signals {
            signals.abort();
        }
    }
}

/// Live room events by room id, fed by the process's one consumer.
#[derive(Clone)]
pub struct Hub {
    rooms: Arc<Mutex<HashMap<String, RoomFeed>>>,
    /// Frames for one user wherever they are subscribed (`order_status`).
    users: Arc<Mutex<HashMap<String, broadcast::Sender<Live>>>>,
    /// The shared presence bucket, opened on first use.
    presence: Arc<tokio::sync::OnceCell<chronicle_bus::Presence>>,
    /// How long this process's presence entries last without a refresh.
    presence_ttl: Duration,
    /// This process, as a holder of presence.
    instance: Arc<str>,
    /// Open connections here, by user.
    here: Arc<Mutex<HashMap<String, usize>>>,
    /// One presence change at a time per user (striped), so the last write is the current
    /// count's.
    presence_changes: Arc<Vec<tokio::sync::Mutex<()>>>,
    started: Arc<tokio::sync::OnceCell<()>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hub")
    }
}

/// A receiver of one room's live frames (or of one user's), whose entry in the hub is
/// dropped with its last receiver.
pub(crate) struct Listening {
    hub: Hub,
    key: String,
    /// A room's feed, or a user's.
    user: bool,
    live: Option<broadcast::Receiver<Live>>,
}

impl Listening {
    pub(crate) async fn recv(&mut self) -> Result<Live, broadcast::error::RecvError> {
        match self.live.as_mut() {
            Some(live) => live.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        drop(self.live.take());
        if self.user {
            let mut users = self.hub.lock_users();
            if users
                .get(&self.key)
                .is_some_and(|s| s.receiver_count() == 0)
            {
                users.remove(&self.key);
            }
        } else {
            let mut rooms = self.hub.lock_rooms();
            if rooms
                .get(&self.key)
                .is_some_and(|feed| feed.live.receiver_count() == 0)
            {
                rooms.remove(&self.key);
            }
        }
    }
}

impl Hub {
    /// A hub whose presence entries last `presence_ttl` without a refresh.
    pub(crate) fn new(presence_ttl: Duration) -> Self {
        Self {
            rooms: Arc::default(),
            users: Arc::default(),
            presence: Arc::default(),
            presence_ttl: presence_ttl.max(Duration::from_millis(300)),
            instance: uuid::Uuid::new_v4().to_string().into(),
            here: Arc::default(),
            presence_changes: Arc::new((0..64).map(|_| tokio::sync::Mutex::new(())).collect()),
            started: Arc::default(),
        }
    }

    /// A connection of `user_id` opened here: `true` when it is their first here (their
    /// presence changed).
    pub(crate) async fn arrived(&self, nats: &async_nats::Client, user_id: &str) -> bool {
        let first = {
            let mut here = self.here.lock().unwrap_or_else(PoisonError::into_inner);
            let count = here.entry(user_id.to_owned()).or_default();
            *count += 1;
            *count == 1
        };
        if first {
            self.record_presence(nats, user_id).await;
        }
        first
    }

    /// A connection of `user_id` here closed: `true` when it was their last here.
    pub(crate) async fn left(&self, nats: &async_nats::Client, user_id: &str) -> bool {
        let last = {
            let mut here = self.here.lock().unwrap_or_else(PoisonError::into_inner);
            let count = here.entry(user_id.to_owned()).or_default();
            *count = count.saturating_sub(1);
            let last = *count == 0;
            if last {
                here.remove(user_id);
            }
            last
        };
        if last {
            self.record_presence(nats, user_id).await;
        }
        last
    }

    /// Makes the bucket say what this process knows of `user_id` now: held here while they
    /// have a connection here. Failures are logged: presence is best effort, connections
    /// work without it, and the next refresh mends it.
    async fn record_presence(&self, nats: &async_nats::Client, user_id: &str) {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(user_id, &mut hasher);
        let stripe = std::hash::Hasher::finish(&hasher) as usize % self.presence_changes.len();
        let _one_at_a_time = self.presence_changes[stripe].lock().await;
        let held = self
            .here
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(user_id);
        let result = match self.presence(nats).await {
            Ok(presence) if held => {
                presence
                    .refresh(user_id, &self.instance, self.presence_ttl)
                    .await
            }
            Ok(presence) => presence.closed(user_id, &self.instance).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(error = %chronicle_bus::ErrorChain(&e), user_id, "presence not recorded");
        }
    }

    /// Refreshes the presence of every user with a connection here, every third of the
    /// time to live, for ever.
    async fn refresh_presence(self, nats: async_nats::Client) {
        let mut ticks = tokio::time::interval(self.presence_ttl / 3);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let users: Vec<String> = self
                .here
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .keys()
                .cloned()
                .collect();
            for user_id in users {
                self.record_presence(&nats, &user_id).await;
            }
        }
    }

    /// A receiver of room `room_id`'s live frames (`message`, `read_receipt`,
    /// `member_removed`, and the room's signals). When it returns, the room's signal subject
    /// is subscribed on the server.
    pub(crate) async fn listen(&self, nats: &async_nats::Client, room_id: &str) -> Listening {
        let listening = |live| Listening {
            hub: self.clone(),
            key: room_id.to_owned(),
            user: false,
            live: Some(live),
        };
        if let Some(feed) = self.lock_rooms().get(room_id) {
            return listening(feed.live.subscribe());
        }
        // The first listener here: the room's signals are subscribed to once for the process.
        let signals = nats.subscribe(signal_subject(room_id)).await.ok();
        let _ = nats.flush().await;
        let mut rooms = self.lock_rooms();
        if let Some(feed) = rooms.get(room_id) {
            // Another listener got there first; ours unsubscribes as it drops.
            return listening(feed.live.subscribe());
        }
        let (live, receiver) = broadcast::channel(OUTBOUND);
        let signals = signals.map(|signals| {
            tokio::spawn(pass_signals_on(signals, live.clone(), room_id.to_owned())).abort_handle()
        });
        rooms.insert(room_id.to_owned(), RoomFeed { live, signals });
        listening(receiver)
    }

    fn lock_rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoomFeed>> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_users(&self) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<Live>>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The presence bucket.
    pub(crate) async fn presence(
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
    pub(crate) fn listen_user(&self, user_id: &str) -> Listening {
        let live = self
            .lock_users()
            .entry(user_id.to_owned())
            .or_insert_with(|| broadcast::channel(64).0)
            .subscribe();
        Listening {
            hub: self.clone(),
            key: user_id.to_owned(),
            user: true,
            live: Some(live),
        }
    }

    /// Starts the hub's reader of the log once per process, and returns once its consumer
    /// exists: a message published after this returns reaches the rooms' listeners.
    /// `pool` is commerce's, where an order's customer is looked up.
    pub(crate) async fn start(&self, nats: &async_nats::Client, pool: &sqlx::PgPool) {
        let hub = self.clone();
        let (nats, pool) = (nats.clone(), pool.clone());
        self.started
            .get_or_init(|| async move {
                tokio::spawn(hub.clone().refresh_presence(nats.clone()));
                let subjects = vec![
                    format!("events.chat.{}.>", <Room as cqrs_es::Aggregate>::TYPE),
                    format!("events.commerce.{}.>", <Order as cqrs_es::Aggregate>::TYPE),
                ];
                // The hub is a reader of the log like the subscribers, under the same
                // metrics; it lives as long as the process.
                chronicle_bus::LiveSubscriber::new("hub", subjects, nats, Feed { hub, pool })
                    .start(std::future::pending())
                    .await;
            })
            .await;
    }

    /// Passes `live` to the room's listeners in this process, if it has any.
    fn to_room(&self, room_id: &str, live: Live) {
        let mut rooms = self.lock_rooms();
        let unheard = rooms
            .get(room_id)
            .is_some_and(|room| room.live.send(live).is_err());
        if unheard {
            // Nobody listens to that room here any more: forget it.
            rooms.remove(room_id);
        }
    }

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
            // Nobody is connected here: no one to tell, and no reason to look the order up.
            None if self.lock_users().is_empty() => return,
            // The order was placed before this event: the read model knows its customer.
            None => match chronicle_projections::orders::customer_of(pool, &envelope.aggregate_id)
                .await
            {
                Ok(Some(customer)) => customer,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(
                        order = %envelope.aggregate_id,
                        error = %chronicle_commands::ErrorChain(&e),
                        "cannot look up an order's customer for its status frame"
                    );
                    return;
                }
            },
        };
        let frame = Live::other(
            &json!({"type": "order_status", "order_id": envelope.aggregate_id, "status": status}),
        );
        let mut users = self.lock_users();
        let unheard = users
            .get(&customer)
            .is_some_and(|user| user.send(frame).is_err());
        if unheard {
            users.remove(&customer);
        }
    }
}

/// The hub's handler of room and order events: each becomes the frame of the room's or the
/// customer's listeners in this process.
struct Feed {
    hub: Hub,
    /// Commerce's pool (the orders read model).
    pool: sqlx::PgPool,
}

impl chronicle_bus::LiveHandler for Feed {
    async fn handle(&self, envelope: Envelope) {
        if envelope.aggregate_type == <Order as cqrs_es::Aggregate>::TYPE {
            self.hub.order_status(&envelope, &self.pool).await;
        } else if let Some(live) = room_frame(&envelope) {
            self.hub.to_room(&envelope.aggregate_id, live);
        }
    }
}

/// The live frame of a room event, if it has one.
fn room_frame(envelope: &Envelope) -> Option<Live> {
    let room_id = envelope.aggregate_id.as_str();
    Some(match envelope.decode::<RoomEvent>().ok()? {
        sent @ RoomEvent::MessageSent { .. } => {
            let message = chronicle_projections::chat_history::MessageView::sent(sent)?;
            MessageFrame::of(room_id, &message).live()
        }
        RoomEvent::ReadMarked { user_id, up_to_seq } => Live::other(&json!({
            "type": "read_receipt", "room_id": room_id, "user_id": user_id,
            "up_to_seq": up_to_seq})),
        RoomEvent::MemberRemoved { user_id, .. } => Live {
            text: to_text(&json!({"type": "member_removed", "room_id": room_id,
                "user_id": user_id})),
            kind: LiveKind::MemberRemoved {
                user_id: user_id.into(),
            },
        },
        _ => return None,
    })
}

/// Passes a room's signals (typing, presence) to its listeners in this process, each made
/// into a frame once, with the room's id.
async fn pass_signals_on(
    mut signals: async_nats::Subscriber,
    live: broadcast::Sender<Live>,
    room_id: String,
) {
    while let Some(message) = signals.next().await {
        if let Ok(mut frame) = serde_json::from_slice::<Value>(&message.payload) {
            frame["room_id"] = json!(room_id);
            let _ = live.send(Live::other(&frame));
        }
    }
}
