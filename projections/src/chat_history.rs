//! The `chat_history` read model: rooms with their members and last message, each member's
//! read mark, and every message by room and `seq` (cursor pages both ways, unread counts).

use chronicle_chat::{Room, RoomEvent};
use chronicle_files::{File, FileEvent};
use chronicle_schemas::AggregateKind;
use chronicle_schemas::Envelope;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::{Definition, Projection, ProjectionError};
use chronicle_commands::contexts;

/// A room as `GET /api/v1/rooms` lists it for one user.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct RoomView {
    pub id: String,
    pub kind: String,
    pub name: Option<String>,
    pub members: Vec<String>,
    pub last_message: Option<serde_json::Value>,
    pub unread_count: i64,
    #[serde(skip)]
    pub updated_at: DateTime<Utc>,
}

/// A message as `GET /api/v1/rooms/{id}/messages` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct MessageView {
    pub id: String,
    pub seq: i64,
    pub sender_id: String,
    pub body: String,
    pub sent_at: DateTime<Utc>,
    /// The files attached and not deleted since.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub file_ids: Vec<String>,
}

impl MessageView {
    /// The message a `MessageSent` event records; `None` for any other event. (From the
    /// event, `file_ids` are the files attached when it was sent, deleted or not.)
    pub fn sent(event: RoomEvent) -> Option<Self> {
        match event {
            RoomEvent::MessageSent {
                message_id,
                seq,
                sender_id,
                body,
                sent_at,
                file_ids,
                ..
            } => Some(Self {
                id: message_id,
                seq: i64::try_from(seq).ok()?,
                sender_id,
                body,
                sent_at,
                file_ids,
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ChatHistoryProjection;

const DDL: &str = "CREATE TABLE IF NOT EXISTS chat_rooms (
    id           text PRIMARY KEY,
    kind         text        NOT NULL,
    name         text,
    created_by   text        NOT NULL,
    last_seq     bigint      NOT NULL DEFAULT 0,
    last_message jsonb,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    version      bigint      NOT NULL
);
CREATE TABLE IF NOT EXISTS chat_members (
    room_id   text        NOT NULL,
    user_id   text        NOT NULL,
    read_seq  bigint      NOT NULL DEFAULT 0,
    joined_at timestamptz NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX IF NOT EXISTS chat_members_by_user ON chat_members (user_id);
CREATE TABLE IF NOT EXISTS chat_messages (
    room_id   text        NOT NULL,
    seq       bigint      NOT NULL,
    id        text        NOT NULL,
    sender_id text        NOT NULL,
    body      text        NOT NULL,
    sent_at   timestamptz NOT NULL,
    PRIMARY KEY (room_id, seq)
);
ALTER TABLE chat_messages ADD COLUMN IF NOT EXISTS file_ids text[] NOT NULL DEFAULT '{}';
CREATE TABLE IF NOT EXISTS chat_attachments (
    file_id text   NOT NULL,
    room_id text   NOT NULL,
    seq     bigint NOT NULL,
    PRIMARY KEY (file_id, room_id, seq)
)";

impl Projection for ChatHistoryProjection {
    const DEFINITION: Definition = Definition::new(
        "chat_history",
        contexts::CHAT,
        &[
            "chat_rooms",
            "chat_members",
            "chat_messages",
            "chat_attachments",
        ],
        DDL,
    )
    .reading(&[(Room::CONTEXT, Room::TYPE), (File::CONTEXT, File::TYPE)]);

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        for envelope in events.iter() {
            if envelope.aggregate_type == File::TYPE {
                if let FileEvent::FileDeleted { .. } = envelope.decode::<FileEvent>()? {
                    sqlx::query(
                        "WITH gone AS (DELETE FROM chat_attachments WHERE file_id = $1 \
                           RETURNING room_id, seq) \
                         UPDATE chat_messages m SET file_ids = array_remove(m.file_ids, $1) \
                         FROM gone WHERE m.room_id = gone.room_id AND m.seq = gone.seq",
                    )
                    .bind(&envelope.aggregate_id)
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("detaching a deleted file"))?;
                }
                continue;
            }
            if envelope.aggregate_type != Room::TYPE {
                continue;
            }
            let room = envelope.aggregate_id.as_str();
            let version = ProjectionError::bigint(envelope.sequence)?;
            let at = envelope.recorded_at;
            let event: RoomEvent = envelope.decode()?;
            if let RoomEvent::RoomCreated {
                kind,
                name,
                members,
                created_by,
                ..
            } = &event
            {
                let created = sqlx::query(
                    "INSERT INTO chat_rooms (id, kind, name, created_by, created_at, updated_at, version) \
                     VALUES ($1, $2, $3, $4, $5, $5, $6) ON CONFLICT (id) DO NOTHING",
                )
                .bind(room)
                .bind(kind.as_str())
                .bind(name)
                .bind(created_by)
                .bind(at)
                .bind(version)
                .execute(&mut *conn)
                .await
                .map_err(ProjectionError::db("inserting a room"))?;
                if created.rows_affected() == 1 {
                    sqlx::query(
                        "INSERT INTO chat_members (room_id, user_id, joined_at) \
                         SELECT $1, m, $3 FROM UNNEST($2::text[]) AS m ON CONFLICT DO NOTHING",
                    )
                    .bind(room)
                    .bind(members)
                    .bind(at)
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("inserting room members"))?;
                }
                continue;
            }
            // Every later event moves the room's version once; a replayed one changes nothing.
            let fresh = sqlx::query(
                "UPDATE chat_rooms SET version = $2, updated_at = $3 WHERE id = $1 AND version < $2",
            )
            .bind(room)
            .bind(version)
            .bind(at)
            .execute(&mut *conn)
            .await
            .map_err(ProjectionError::db("moving a room's version"))?;
            if fresh.rows_affected() == 0 {
                continue;
            }
            match event {
                RoomEvent::RoomCreated { .. } => {}
                RoomEvent::MemberAdded { user_id, .. } => {
                    sqlx::query(
                        "INSERT INTO chat_members (room_id, user_id, joined_at) VALUES ($1, $2, $3) \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(room)
                    .bind(user_id)
                    .bind(at)
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("adding a member"))?;
                }
                RoomEvent::MemberRemoved { user_id, .. } => {
                    sqlx::query("DELETE FROM chat_members WHERE room_id = $1 AND user_id = $2")
                        .bind(room)
                        .bind(user_id)
                        .execute(&mut *conn)
                        .await
                        .map_err(ProjectionError::db("removing a member"))?;
                }
                RoomEvent::MessageSent {
                    message_id,
                    seq,
                    sender_id,
                    body,
                    sent_at,
                    file_ids,
                    ..
                } => {
                    let seq = ProjectionError::bigint(seq)?;
                    let last = serde_json::json!({
                        "id": message_id, "seq": seq, "sender_id": sender_id,
                        "body": body, "sent_at": sent_at,
                    });
                    sqlx::query(
                        "WITH m AS (INSERT INTO chat_messages (room_id, seq, id, sender_id, body, sent_at, file_ids) \
                           VALUES ($1, $2, $3, $4, $5, $6, $8) ON CONFLICT DO NOTHING), \
                         a AS (INSERT INTO chat_attachments (file_id, room_id, seq) \
                           SELECT f, $1, $2 FROM UNNEST($8::text[]) AS f ON CONFLICT DO NOTHING) \
                         UPDATE chat_rooms SET last_seq = $2, last_message = $7 WHERE id = $1",
                    )
                    .bind(room)
                    .bind(seq)
                    .bind(&message_id)
                    .bind(&sender_id)
                    .bind(&body)
                    .bind(sent_at)
                    .bind(last)
                    .bind(&file_ids)
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("storing a message"))?;
                }
                RoomEvent::ReadMarked { user_id, up_to_seq } => {
                    sqlx::query(
                        "UPDATE chat_members SET read_seq = GREATEST(read_seq, $3) \
                         WHERE room_id = $1 AND user_id = $2",
                    )
                    .bind(room)
                    .bind(user_id)
                    .bind(ProjectionError::bigint(up_to_seq)?)
                    .execute(&mut *conn)
                    .await
                    .map_err(ProjectionError::db("moving a read mark"))?;
                }
            }
        }
        Ok(())
    }
}

/// The ids of every room `user_id` is a member of.
///
/// # Errors
/// When the database fails.
pub async fn member_rooms(pool: &PgPool, user_id: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT room_id FROM chat_members WHERE user_id = $1")
        .bind(user_id)
        .fetch_all(pool)
        .await
}

/// The rooms `user_id` is a member of (at most `limit`), most recently active first, with
/// their unread counts (messages of others past the member's read mark).
///
/// # Errors
/// When the database fails.
pub async fn rooms_of(
    pool: &PgPool,
    user_id: &str,
    limit: i64,
) -> Result<Vec<RoomView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.id, r.kind, r.name, \
           ARRAY(SELECT user_id FROM chat_members WHERE room_id = r.id ORDER BY user_id) AS members, \
           r.last_message, \
           (SELECT count(*) FROM chat_messages c WHERE c.room_id = r.id AND c.seq > m.read_seq \
              AND c.sender_id <> m.user_id) AS unread_count, \
           r.updated_at \
         FROM chat_members m JOIN chat_rooms r ON r.id = m.room_id \
         WHERE m.user_id = $1 ORDER BY r.updated_at DESC, r.id LIMIT $2",
    )
    .bind(user_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Which messages of a room to read.
#[derive(Debug, Clone, Copy)]
pub enum Window {
    /// The newest, up to the limit.
    Latest,
    /// Older than this `seq`, the newest of them first in the page's end.
    Before(i64),
    /// Newer than this `seq`.
    After(i64),
}

/// Up to `limit` messages of `room_id` in `window`, in `seq` order.
///
/// # Errors
/// When the database fails.
pub async fn messages(
    pool: &PgPool,
    room_id: &str,
    window: Window,
    limit: i64,
) -> Result<Vec<MessageView>, sqlx::Error> {
    let (sql, bound) = match window {
        Window::Latest => (
            "SELECT * FROM (SELECT id, seq, sender_id, body, sent_at, file_ids FROM chat_messages \
             WHERE room_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3) m ORDER BY seq",
            i64::MAX,
        ),
        Window::Before(seq) => (
            "SELECT * FROM (SELECT id, seq, sender_id, body, sent_at, file_ids FROM chat_messages \
             WHERE room_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3) m ORDER BY seq",
            seq,
        ),
        Window::After(seq) => (
            "SELECT id, seq, sender_id, body, sent_at, file_ids FROM chat_messages \
             WHERE room_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            seq,
        ),
    };
    sqlx::query_as(sql)
        .bind(room_id)
        .bind(bound)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// The version the read model has of room `room_id` (for `min_version` reads).
///
/// # Errors
/// When the database fails.
pub async fn room_version(pool: &PgPool, room_id: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM chat_rooms WHERE id = $1")
        .bind(room_id)
        .fetch_optional(pool)
        .await
}

/// The rooms where file `file_id` is attached to a message (at most `limit`).
///
/// # Errors
/// Database failures.
pub async fn attachment_rooms(
    pool: &PgPool,
    file_id: &str,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT DISTINCT room_id FROM chat_attachments WHERE file_id = $1 LIMIT $2")
        .bind(file_id)
        .bind(limit)
        .fetch_all(pool)
        .await
}
