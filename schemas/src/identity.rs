//! Events of the identity bounded context. Passwords never appear here: their hashes live
//! in the `credentials` table (architecture.md invariant 6).

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

event_types!(UserEvent: UserRegistered, ProfileChanged);
