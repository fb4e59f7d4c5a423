use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chronicle_schemas::{
    chat::{RoomEvent, RoomKind},
    limits::{self, Invalid},
    AggregateKind,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Longest message, in characters (the API contract).
pub const MAX_BODY: usize = 4_000;
/// Most members of a room.
pub const MAX_MEMBERS: usize = 1_000;
/// Most files attached to one message.
pub const MAX_ATTACHMENTS: usize = 10;
/// How many recent messages a room remembers the client ids of, for retries.
pub const MAX_RECENT: usize = 1_000;

/// What can be asked of a room. `by` / `sender_id` / `user_id` is the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomCommand {
    Create {
        room_id: String,
        kind: RoomKind,
        name: Option<String>,
        /// The other members (the creator is always one).
        members: Vec<String>,
        by: String,
    },
    AddMember {
        user_id: String,
        by: String,
    },
    RemoveMember {
        user_id: String,
        by: String,
    },
    /// Sending again with the same `client_msg_id` changes nothing: the first message stands.
    Send {
        message_id: String,
        sender_id: String,
        body: String,
        client_msg_id: String,
        sent_at: DateTime<Utc>,
        /// Files attached: the gateway checked the sender owns them.
        file_ids: Vec<String>,
    },
    /// Read marks never move backwards; a mark past the last message stops at it.
    MarkRead {
        user_id: String,
        up_to_seq: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("no such room")]
    NotFound,
    #[error("the room already exists")]
    RoomExists,
    #[error("only the room's members may do this")]
    NotMember,
    #[error("a direct room has exactly two members, fixed; a group room 1 to {MAX_MEMBERS}")]
    InvalidMembers,
    #[error("a room name is 1 to 100 characters without control characters")]
    InvalidName,
    #[error(
        "a message is 1 to {MAX_BODY} characters without control characters but tab and newlines"
    )]
    InvalidBody,
    #[error("client_msg_id is 1 to 64 visible ASCII characters")]
    InvalidClientMsgId,
    #[error("at most {MAX_ATTACHMENTS} distinct file ids")]
    InvalidFileIds,
    #[error("the members of a direct room cannot change")]
    DirectRoomFixed,
}

chronicle_schemas::domain_rules!(RoomError {
    Self::NotFound => NotFound,
    Self::RoomExists => Conflict("room_exists"),
    Self::NotMember => Forbidden,
    Self::InvalidMembers => Invalid("members"),
    Self::InvalidName => Invalid("name"),
    Self::InvalidBody => Invalid("body"),
    Self::InvalidClientMsgId => Invalid("client_msg_id"),
    Self::InvalidFileIds => Invalid("file_ids"),
    Self::DirectRoomFixed => Conflict("direct_room_fixed"),
});

/// A message body: 1 to [`MAX_BODY`] characters, not blank, no control characters but tab
/// and newlines.
///
/// # Errors
/// [`Invalid`] for `body`.
pub fn check_body(body: &str) -> Result<(), Invalid> {
    limits::text("body", body, 1, MAX_BODY)
}

/// A client's message id: 1 to 64 visible ASCII characters.
///
/// # Errors
/// [`Invalid`] for `client_msg_id`.
pub fn check_client_msg_id(id: &str) -> Result<(), Invalid> {
    if (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(Invalid::new(
            "client_msg_id",
            "1 to 64 visible ASCII characters",
        ))
    }
}

/// A user id as rooms hold it: 1 to 64 characters of `0-9`, `a-z`, `A-Z` and `-` (a UUID).
///
/// # Errors
/// [`Invalid`] for `field`.
pub fn check_user_id(field: &str, id: &str) -> Result<(), Invalid> {
    if (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(())
    } else {
        Err(Invalid::new(field, "a user id"))
    }
}

/// A message's attachments: at most [`MAX_ATTACHMENTS`] distinct ids, each like a user id
/// (a UUID).
///
/// # Errors
/// [`Invalid`] for `file_ids`.
pub fn check_file_ids(ids: &[String]) -> Result<(), Invalid> {
    let distinct: BTreeSet<&String> = ids.iter().collect();
    if ids.len() <= MAX_ATTACHMENTS
        && distinct.len() == ids.len()
        && ids.iter().all(|id| check_user_id("file_ids", id).is_ok())
    {
        Ok(())
    } else {
        Err(Invalid::new(
            "file_ids",
            format!("at most {MAX_ATTACHMENTS} distinct file ids"),
        ))
    }
}

/// The unique claim a direct room between `a` and `b` takes (the same for both orders).
pub fn direct_room_claim(a: &str, b: &str) -> (String, String) {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    ("direct_room".to_owned(), format!("{first}|{second}"))
}

/// A recent message, remembered so a retry with its `client_msg_id` gets it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub sender_id: String,
    pub client_msg_id: String,
    pub message_id: String,
    pub seq: u64,
    pub sent_at: DateTime<Utc>,
}

/// One room. Its state does not grow with its history: members, read marks (one per member)
/// and the last [`MAX_RECENT`] messages' ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    room_id: String,
    kind: Option<RoomKind>,
    members: BTreeSet<String>,
    last_seq: u64,
    read: BTreeMap<String, u64>,
    recent: VecDeque<Sent>,
}

impl Room {
    pub fn exists(&self) -> bool {
        self.kind.is_some()
    }
    pub fn kind(&self) -> Option<RoomKind> {
        self.kind
    }
    pub fn is_member(&self, user_id: &str) -> bool {
        self.members.contains(user_id)
    }
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(String::as_str)
    }
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
    pub fn read_mark(&self, user_id: &str) -> u64 {
        self.read.get(user_id).copied().unwrap_or(0)
    }
    /// The message `sender_id` sent with `client_msg_id`, if it is recent.
    pub fn sent(&self, sender_id: &str, client_msg_id: &str) -> Option<&Sent> {
        self.recent
            .iter()
            .rev()
            .find(|s| s.sender_id == sender_id && s.client_msg_id == client_msg_id)
    }

    fn member(&self, user_id: &str) -> Result<(), RoomError> {
        if self.is_member(user_id) {
            Ok(())
        } else {
            Err(RoomError::NotMember)
        }
    }

    fn decide(&self, command: RoomCommand) -> Result<Vec<RoomEvent>, RoomError> {
        use RoomCommand as C;
        use RoomEvent as E;
        if !self.exists() && !matches!(command, C::Create { .. }) {
            return Err(RoomError::NotFound);
        }
        match command {
            C::Create {
                room_id,
                kind,
                name,
                members,
                by,
            } => {
                if self.exists() {
                    return Err(RoomError::RoomExists);
                }
                let mut all: BTreeSet<String> = members.into_iter().collect();
                all.insert(by.clone());
                if all.iter().any(|m| check_user_id("members", m).is_err()) {
                    return Err(RoomError::InvalidMembers);
                }
                let valid = match kind {
                    RoomKind::Direct => all.len() == 2 && name.is_none(),
                    RoomKind::Group => all.len() <= MAX_MEMBERS,
                };
                if !valid {
                    return Err(RoomError::InvalidMembers);
                }
                if let Some(name) = &name {
                    limits::text("name", name, 1, 100).map_err(|_| RoomError::InvalidName)?;
                }
                Ok(vec![E::RoomCreated {
                    room_id,
                    kind,
                    name,
                    members: all.into_iter().collect(),
                    created_by: by,
                }])
            }
            C::AddMember { user_id, by } => {
                self.member(&by)?;
                if self.kind == Some(RoomKind::Direct) {
                    return Err(RoomError::DirectRoomFixed);
                }
                check_user_id("user_id", &user_id).map_err(|_| RoomError::InvalidMembers)?;
                if self.is_member(&user_id) {
                    return Ok(vec![]);
                }
                if self.members.len() >= MAX_MEMBERS {
                    return Err(RoomError::InvalidMembers);
                }
                Ok(vec![E::MemberAdded { user_id, by }])
            }
            C::RemoveMember { user_id, by } => {
                self.member(&by)?;
                if self.kind == Some(RoomKind::Direct) {
                    return Err(RoomError::DirectRoomFixed);
                }
                if !self.is_member(&user_id) {
                    return Ok(vec![]);
                }
                Ok(vec![E::MemberRemoved { user_id, by }])
            }
            C::Send {
                message_id,
                sender_id,
                body,
                client_msg_id,
                sent_at,
                file_ids,
            } => {
                self.member(&sender_id)?;
                check_client_msg_id(&client_msg_id).map_err(|_| RoomError::InvalidClientMsgId)?;
                if self.sent(&sender_id, &client_msg_id).is_some() {
                    return Ok(vec![]);
                }
                check_body(&body).map_err(|_| RoomError::InvalidBody)?;
                check_file_ids(&file_ids).map_err(|_| RoomError::InvalidFileIds)?;
                Ok(vec![E::MessageSent {
                    message_id,
                    seq: self.last_seq + 1,
                    sender_id,
                    body,
                    client_msg_id,
                    sent_at,
                    file_ids,
                }])
            }
            C::MarkRead { user_id, up_to_seq } => {
                self.member(&user_id)?;
                let up_to_seq = up_to_seq.min(self.last_seq);
                if up_to_seq <= self.read_mark(&user_id) {
                    return Ok(vec![]);
                }
                Ok(vec![E::ReadMarked { user_id, up_to_seq }])
            }
        }
    }
}

impl AggregateKind for Room {
    const CONTEXT: &'static str = "chat";
}

chronicle_schemas::decided_aggregate!(Room: "room", RoomCommand => RoomEvent, RoomError);

impl Room {
    fn apply_event(&mut self, event: RoomEvent) {
        use RoomEvent as E;
        match event {
            E::RoomCreated {
                room_id,
                kind,
                members,
                ..
            } => {
                self.room_id = room_id;
                self.kind = Some(kind);
                self.members = members.into_iter().collect();
            }
            E::MemberAdded { user_id, .. } => {
                self.members.insert(user_id);
            }
            E::MemberRemoved { user_id, .. } => {
                self.members.remove(&user_id);
                self.read.remove(&user_id);
            }
            E::MessageSent {
                message_id,
                seq,
                sender_id,
                client_msg_id,
                sent_at,
                ..
            } => {
                self.last_seq = seq;
                self.recent.push_back(Sent {
                    sender_id,
                    client_msg_id,
                    message_id,
                    seq,
                    sent_at,
                });
                while self.recent.len() > MAX_RECENT {
                    self.recent.pop_front();
                }
            }
            E::ReadMarked { user_id, up_to_seq } => {
                self.read.insert(user_id, up_to_seq);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::{test::TestFramework, Aggregate};
    use RoomCommand as C;
    use RoomEvent as E;

    type Given = TestFramework<Room>;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).expect("a valid time")
    }

    fn group() -> E {
        E::RoomCreated {
            room_id: "r1".into(),
            kind: RoomKind::Group,
            name: Some("team".into()),
            members: vec!["a".into(), "b".into()],
            created_by: "a".into(),
        }
    }

    fn sent(seq: u64, client: &str) -> E {
        E::MessageSent {
            message_id: format!("m{seq}"),
            seq,
            sender_id: "a".into(),
            body: "hi".into(),
            client_msg_id: client.into(),
            sent_at: at(),
            file_ids: vec![],
        }
    }

    fn send(client: &str, by: &str) -> C {
        C::Send {
            message_id: "m-new".into(),
            sender_id: by.into(),
            body: "hi".into(),
            client_msg_id: client.into(),
            sent_at: at(),
            file_ids: vec![],
        }
    }

    #[test]
    fn a_group_room_includes_its_creator_and_a_direct_room_has_exactly_two() {
        Given::with(())
            .given_no_previous_events()
            .when(C::Create {
                room_id: "r1".into(),
                kind: RoomKind::Group,
                name: Some("team".into()),
                members: vec!["b".into()],
                by: "a".into(),
            })
            .then_expect_events(vec![group()]);
        for members in [
            vec![],
            vec!["b".to_owned(), "c".to_owned()],
            vec!["a".to_owned()],
        ] {
            Given::with(())
                .given_no_previous_events()
                .when(C::Create {
                    room_id: "r2".into(),
                    kind: RoomKind::Direct,
                    name: None,
                    members,
                    by: "a".into(),
                })
                .then_expect_error(RoomError::InvalidMembers);
        }
        Given::with(())
            .given_no_previous_events()
            .when(C::Create {
                room_id: "r1".into(),
                kind: RoomKind::Group,
                name: Some("a\u{0}".into()),
                members: vec![],
                by: "a".into(),
            })
            .then_expect_error(RoomError::InvalidName);
    }

    #[test]
    fn members_add_and_remove_members_and_outsiders_may_not() {
        Given::with(())
            .given(vec![group()])
            .when(C::AddMember {
                user_id: "c".into(),
                by: "b".into(),
            })
            .then_expect_events(vec![E::MemberAdded {
                user_id: "c".into(),
                by: "b".into(),
            }]);
        Given::with(())
            .given(vec![group()])
            .when(C::AddMember {
                user_id: "d".into(),
                by: "x".into(),
            })
            .then_expect_error(RoomError::NotMember);
        Given::with(())
            .given(vec![group()])
            .when(C::AddMember {
                user_id: "b".into(),
                by: "a".into(),
            })
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![group()])
            .when(C::RemoveMember {
                user_id: "b".into(),
                by: "a".into(),
            })
            .then_expect_events(vec![E::MemberRemoved {
                user_id: "b".into(),
                by: "a".into(),
            }]);
        let direct = E::RoomCreated {
            room_id: "d1".into(),
            kind: RoomKind::Direct,
            name: None,
            members: vec!["a".into(), "b".into()],
            created_by: "a".into(),
        };
        Given::with(())
            .given(vec![direct])
            .when(C::AddMember {
                user_id: "c".into(),
                by: "a".into(),
            })
            .then_expect_error(RoomError::DirectRoomFixed);
    }

    #[test]
    fn messages_take_the_next_seq_and_a_retry_changes_nothing() {
        Given::with(())
            .given(vec![group(), sent(1, "c1")])
            .when(send("c2", "a"))
            .then_expect_events(vec![E::MessageSent {
                message_id: "m-new".into(),
                seq: 2,
                sender_id: "a".into(),
                body: "hi".into(),
                client_msg_id: "c2".into(),
                sent_at: at(),
                file_ids: vec![],
            }]);
        Given::with(())
            .given(vec![group(), sent(1, "c1")])
            .when(send("c1", "a"))
            .then_expect_events(vec![]);
        Given::with(())
            .given(vec![group()])
            .when(send("c1", "outsider"))
            .then_expect_error(RoomError::NotMember);
        Given::with(())
            .given(vec![group()])
            .when(C::Send {
                message_id: "m".into(),
                sender_id: "a".into(),
                body: "x".repeat(MAX_BODY + 1),
                client_msg_id: "c".into(),
                sent_at: at(),
                file_ids: vec![],
            })
            .then_expect_error(RoomError::InvalidBody);
    }

    #[test]
    fn read_marks_never_move_backwards_nor_past_the_last_message() {
        let history = vec![group(), sent(1, "c1"), sent(2, "c2")];
        Given::with(())
            .given(history.clone())
            .when(C::MarkRead {
                user_id: "b".into(),
                up_to_seq: 99,
            })
            .then_expect_events(vec![E::ReadMarked {
                user_id: "b".into(),
                up_to_seq: 2,
            }]);
        let mut marked = history;
        marked.push(E::ReadMarked {
            user_id: "b".into(),
            up_to_seq: 2,
        });
        Given::with(())
            .given(marked)
            .when(C::MarkRead {
                user_id: "b".into(),
                up_to_seq: 1,
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn the_state_does_not_grow_with_the_history() {
        let mut room = Room::default();
        room.apply(group());
        for seq in 1..=(MAX_RECENT as u64 * 3) {
            room.apply(sent(seq, &format!("c{seq}")));
        }
        assert_eq!(room.recent.len(), MAX_RECENT);
        assert_eq!(room.last_seq(), MAX_RECENT as u64 * 3);
        assert!(room.sent("a", &format!("c{}", MAX_RECENT * 3)).is_some());
    }

    #[test]
    fn a_message_carries_at_most_ten_distinct_attachments() {
        let with = |file_ids: Vec<String>| C::Send {
            message_id: "m-new".into(),
            sender_id: "a".into(),
            body: "see attached".into(),
            client_msg_id: "att".into(),
            sent_at: at(),
            file_ids,
        };
        let ids = |n: usize| (0..n).map(|i| format!("file-{i}")).collect::<Vec<_>>();
        Given::with(())
            .given(vec![group()])
            .when(with(ids(2)))
            .then_expect_events(vec![E::MessageSent {
                message_id: "m-new".into(),
                seq: 1,
                sender_id: "a".into(),
                body: "see attached".into(),
                client_msg_id: "att".into(),
                sent_at: at(),
                file_ids: ids(2),
            }]);
        for bad in [
            ids(MAX_ATTACHMENTS + 1),
            vec!["f".into(), "f".into()],
            vec!["../x".into()],
        ] {
            Given::with(())
                .given(vec![group()])
                .when(with(bad))
                .then_expect_error(RoomError::InvalidFileIds);
        }
    }
}
