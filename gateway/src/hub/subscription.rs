//! One room followed by one connection: the backlog a client missed (`since_seq`), then
//! the room's live frames, with no gap and no duplicate between the two.

use chronicle_commands::contexts;
use std::time::Duration;

use chronicle_chat::{Room, RoomEvent};
use chronicle_projections::chat_history::{self, Window};
use serde_json::json;
use tokio::sync::broadcast;

use super::{
    connection::{error, member_of, Outbound, Queue},
    LiveKind, MessageFrame,
};
use crate::state::AppState;

/// Most backlog messages a subscription sends before it tells the client to page over HTTP.
const MAX_BACKLOG: i64 = 1_000;

/// One room for one connection: membership checked on the room itself (not a read model
/// that may lag), the backlog past `since_seq` up to the room's head (paced by the socket: a
/// backlog is bigger than the outbound queue), then live frames (messages past what was
/// sent, read receipts, signals).
pub(super) async fn subscription(
    state: AppState,
    room_id: String,
    user_id: String,
    since_seq: u64,
    out: Queue,
) {
    if uuid::Uuid::parse_str(&room_id).is_err() {
        out.frame(&error("not_found", "no such room"));
        return;
    }
    // Listening starts before the head is read: what comes after the head arrives live.
    let mut live = state.hub.listen(&state.nats, &room_id).await;
    let head = match member_of(&state, &user_id, &room_id).await {
        Ok(head) => head,
        Err(refused) => {
            out.frame(&refused);
            return;
        }
    };
    let mut sent = since_seq;
    let mut recovered = true;
    // A client that takes no frame for as long as it may leave pings unanswered is gone.
    let patience = state
        .config
        .contexts
        .get::<super::ChatConfig>()
        .ws_ping_interval
        .max(Duration::from_millis(50))
        * 2;
    if head > since_seq {
        let wanted = (head - since_seq) as i64;
        recovered = wanted <= MAX_BACKLOG;
        let from = if recovered {
            since_seq
        } else {
            head - MAX_BACKLOG as u64
        };
        let Ok(backlog) = backlog(&state, &room_id, from, head).await else {
            out.frame(&error(
                "unavailable",
                "the room's messages could not be read; subscribe again",
            ));
            return;
        };
        for message in backlog {
            let frame = MessageFrame::of(&room_id, &message);
            sent = frame.seq;
            if !out
                .push_paced(Outbound::Frame(frame.live().text), patience)
                .await
            {
                return;
            }
        }
    }
    let subscribed =
        json!({"type": "subscribed", "room_id": room_id, "head_seq": head, "recovered": recovered});
    if !out.frame(&subscribed) {
        return;
    }
    loop {
        match live.recv().await {
            Ok(frame) => {
                let last = match &frame.kind {
                    LiveKind::Message { seq } if *seq <= sent => continue,
                    LiveKind::Message { seq } => {
                        sent = *seq;
                        false
                    }
                    // Removed from the room: this frame, then no more of its messages.
                    LiveKind::MemberRemoved { user_id: removed } => **removed == *user_id,
                    LiveKind::Other => false,
                };
                if !out.push(Outbound::Frame(frame.text)) || last {
                    return;
                }
            }
            // Fell behind the room: the client re-subscribes with its last seq.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                out.frame(&error("lagged", "re-subscribe with since_seq"));
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The messages `from < seq <= head`: from the history read model when it holds them all
/// (one indexed read), else from the room's own events, which a command's acknowledgement
/// already guarantees (a projector that is down or behind never cuts a recovery).
/// `Err` when neither can be read.
async fn backlog(
    state: &AppState,
    room_id: &str,
    from: u64,
    head: u64,
) -> Result<Vec<chat_history::MessageView>, ()> {
    let wanted = (head - from) as i64;
    if let Ok(got) = chat_history::messages(
        state.db.of(contexts::CHAT),
        room_id,
        Window::After(from as i64),
        wanted,
    )
    .await
    {
        if got.len() as i64 >= wanted {
            return Ok(got);
        }
    }
    // Message `seq` s is the room's s-th `MessageSent`, after at least its `RoomCreated`, so
    // its event sequence is above s: the events past sequence `from` hold every message
    // past `from` (and perhaps many before it, which are read but not kept).
    let wanted_seqs = from + 1..=head;
    let events = state
        .commands
        .store_for::<Room>()
        .events_of::<Room>(
            room_id,
            from,
            "MessageSent",
            |event| matches!(event, RoomEvent::MessageSent { seq, .. } if wanted_seqs.contains(seq)),
            wanted as usize,
        )
        .await
        .map_err(
            |e| tracing::warn!(error = %e, room_id, "backlog not read from the room's events"),
        )?;
    Ok(events
        .into_iter()
        .filter_map(|(_, event)| chat_history::MessageView::sent(event))
        .collect())
}
