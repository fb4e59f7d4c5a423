//! The identity bounded context.
//!
//! # Layout
//!
//! - [`User`]: one person's account: registered once, profile changed by its owner only.
//!
//! Pure: the aggregate decides from its state and the command. Who is asking comes in the
//! command (`actor`), so the ownership rule is the aggregate's, not a hidden route's. Uniqueness
//! of usernames and password storage are the write side's job (unique claims, the
//! credentials table); passwords never reach this crate.

mod user;

pub use chronicle_schemas::identity::UserEvent;
pub use user::{
    check_display_name, check_username, is_valid_username, User, UserCommand, UserError,
};
