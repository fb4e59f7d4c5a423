//! The chat bounded context.
//!
//! # Layout
//!
//! - [`Room`]: a group or direct room: its members, the dense sequence of its messages,
//!   each member's read mark. A message is an event of its room, so `seq` is dense by
//!   construction (optimistic concurrency on the room); the state keeps only the last
//!   [`MAX_RECENT`] messages' client ids (for retries), so message 100,000 costs what message
//!   1 did (with snapshots).
//!
//! Pure: who is asking comes in the command. Uniqueness of a direct room per pair of users
//! is the write side's (a unique claim, [`direct_room_claim`]).

mod room;

pub use chronicle_schemas::chat::{RoomEvent, RoomKind};
pub use room::{
    check_body, check_client_msg_id, check_file_ids, check_user_id, direct_room_claim, Room,
    RoomCommand, RoomError, Sent, MAX_ATTACHMENTS, MAX_BODY, MAX_MEMBERS, MAX_RECENT,
};
