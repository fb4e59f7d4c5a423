//! Events of the identity bounded context. Passwords never appear here: their hashes live
//! in the `credentials` table (DESIGN.md invariant 6).

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum UserEvent {
    /// A user signed up; `username` is unique (claimed in the same transaction).
    UserRegistered {
        username: String,
        display_name: String,
    },
    /// The user changed their public profile.
    ProfileChanged { display_name: String },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UserRegistered { .. } => "UserRegistered",
            Self::ProfileChanged { .. } => "ProfileChanged",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
