//! Events of the chat bounded context: rooms, their members, their messages, read marks.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A group room (any member adds and removes members) or a direct room (exactly two
/// members, one per pair of users, fixed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    Group,
    Direct,
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Group => "group",
            Self::Direct => "direct",
        }
    }
}

/// Everything that happens in a room (aggregate type `room`, id = a UUID v7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum RoomEvent {
    RoomCreated {
        room_id: String,
        kind: RoomKind,
        name: Option<String>,
        /// The members, the creator included, sorted.
        members: Vec<String>,
        created_by: String,
    },
    MemberAdded {
        user_id: String,
        by: String,
    },
    MemberRemoved {
        user_id: String,
        by: String,
    },
    /// A message; `seq` is dense and increasing within the room (1, 2, ...).
    MessageSent {
        message_id: String,
        seq: u64,
        sender_id: String,
        body: String,
        client_msg_id: String,
        sent_at: DateTime<Utc>,
        /// Files attached (ids of files the sender owned when sending); absent when none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        file_ids: Vec<String>,
    },
    /// `user_id` has read everything up to `up_to_seq`.
    ReadMarked {
        user_id: String,
        up_to_seq: u64,
    },
}

event_types!(RoomEvent: RoomCreated, MemberAdded, MemberRemoved, MessageSent, ReadMarked);
