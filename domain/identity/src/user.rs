use chronicle_schemas::{
    identity::UserEvent,
    limits::{self, Invalid},
    AggregateKind,
};
use cqrs_es::{event_sink::EventSink, Aggregate};
use serde::{Deserialize, Serialize};

/// the API contract: 3–32 characters of `[a-z0-9_]`.
pub fn is_valid_username(username: &str) -> bool {
    (3..=32).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserCommand {
    Register {
        username: String,
        display_name: String,
    },
    /// `actor` is the authenticated caller; only the user may change their own profile.
    ChangeProfile { actor: String, display_name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("this user is already registered")]
    AlreadyRegistered,
    #[error("no such user")]
    NotFound,
    #[error("only the user may change their own profile")]
    Forbidden,
    #[error("username must be 3 to 32 characters of a-z, 0-9 and _")]
    InvalidUsername,
    #[error("display name must be 1 to 64 characters, not blank, without control characters")]
    InvalidDisplayName,
}

chronicle_schemas::domain_rules!(UserError {
    Self::AlreadyRegistered => Conflict("already_registered"),
    Self::NotFound => NotFound,
    Self::Forbidden => Forbidden,
    Self::InvalidUsername => Invalid("username"),
    Self::InvalidDisplayName => Invalid("display_name"),
});

/// A display name: 1 to 64 characters, not blank, no control characters.
///
/// # Errors
/// [`Invalid`] for `display_name`.
pub fn check_display_name(name: &str) -> Result<(), Invalid> {
    limits::text("display_name", name, 1, 64)
}

/// A username: 3 to 32 characters of `a-z`, `0-9` and `_`.
///
/// # Errors
/// [`Invalid`] for `username`.
pub fn check_username(username: &str) -> Result<(), Invalid> {
    if is_valid_username(username) {
        Ok(())
    } else {
        Err(Invalid::new(
            "username",
            "3 to 32 characters of a-z, 0-9 and _",
        ))
    }
}

/// A user account (aggregate type `user`, id = the user's UUID).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    username: String,
    display_name: String,
}

impl User {
    pub fn username(&self) -> &str {
        &self.username
    }
    pub fn display_name(&self) -> &str {
        &self.display_name
    }
    fn registered(&self) -> bool {
        !self.username.is_empty()
    }
}

impl AggregateKind for User {
    const CONTEXT: &'static str = "identity";
}

impl Aggregate for User {
    const TYPE: &'static str = "user";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    /// The aggregate's own id, so the ownership rule can compare it with the actor.
    type Services = String;

    async fn handle(
        &mut self,
        command: Self::Command,
        own_id: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            UserCommand::Register {
                username,
                display_name,
            } => {
                if self.registered() {
                    return Err(UserError::AlreadyRegistered);
                }
                check_username(&username).map_err(|_| UserError::InvalidUsername)?;
                check_display_name(&display_name).map_err(|_| UserError::InvalidDisplayName)?;
                UserEvent::UserRegistered {
                    username,
                    display_name,
                }
            }
            UserCommand::ChangeProfile {
                actor,
                display_name,
            } => {
                if !self.registered() {
                    return Err(UserError::NotFound);
                }
                if &actor != own_id {
                    return Err(UserError::Forbidden);
                }
                check_display_name(&display_name).map_err(|_| UserError::InvalidDisplayName)?;
                if display_name == self.display_name {
                    return Ok(());
                }
                UserEvent::ProfileChanged { display_name }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UserEvent::UserRegistered {
                username,
                display_name,
            } => {
                self.username = username;
                self.display_name = display_name;
            }
            UserEvent::ProfileChanged { display_name } => self.display_name = display_name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    const ME: &str = "0190f0a0-0000-7000-8000-000000000001";

    fn given() -> TestFramework<User> {
        TestFramework::<User>::with(ME.to_owned())
    }

    fn registered() -> UserEvent {
        UserEvent::UserRegistered {
            username: "alice".into(),
            display_name: "Alice".into(),
        }
    }

    #[test]
    fn registering_records_the_username_and_display_name() {
        given()
            .given_no_previous_events()
            .when(UserCommand::Register {
                username: "alice".into(),
                display_name: "Alice".into(),
            })
            .then_expect_events(vec![registered()]);
    }

    #[test]
    fn a_user_registers_once() {
        given()
            .given(vec![registered()])
            .when(UserCommand::Register {
                username: "alice".into(),
                display_name: "Alice".into(),
            })
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[test]
    fn usernames_are_three_to_thirty_two_lowercase_letters_digits_or_underscores() {
        for bad in ["al", "Alice", "a-b", "a b", &"x".repeat(33)] {
            given()
                .given_no_previous_events()
                .when(UserCommand::Register {
                    username: bad.into(),
                    display_name: "X".into(),
                })
                .then_expect_error(UserError::InvalidUsername);
        }
        assert!(is_valid_username("a_1") && is_valid_username(&"x".repeat(32)));
    }

    #[test]
    fn only_the_user_changes_their_profile() {
        given()
            .given(vec![registered()])
            .when(UserCommand::ChangeProfile {
                actor: ME.into(),
                display_name: "Alice B.".into(),
            })
            .then_expect_events(vec![UserEvent::ProfileChanged {
                display_name: "Alice B.".into(),
            }]);
        given()
            .given(vec![registered()])
            .when(UserCommand::ChangeProfile {
                actor: "someone-else".into(),
                display_name: "Mallory".into(),
            })
            .then_expect_error(UserError::Forbidden);
    }

    #[test]
    fn an_unchanged_profile_appends_nothing_and_a_blank_name_is_refused() {
        given()
            .given(vec![registered()])
            .when(UserCommand::ChangeProfile {
                actor: ME.into(),
                display_name: "Alice".into(),
            })
            .then_expect_events(vec![]);
        given()
            .given(vec![registered()])
            .when(UserCommand::ChangeProfile {
                actor: ME.into(),
                display_name: "  ".into(),
            })
            .then_expect_error(UserError::InvalidDisplayName);
    }

    #[test]
    fn an_unknown_user_cannot_change_a_profile() {
        given()
            .given_no_previous_events()
            .when(UserCommand::ChangeProfile {
                actor: ME.into(),
                display_name: "X".into(),
            })
            .then_expect_error(UserError::NotFound);
    }
}
