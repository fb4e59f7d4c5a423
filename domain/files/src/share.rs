use chronicle_schemas::{
    files::ShareEvent,
    limits::{self, Invalid},
    AggregateKind,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::valid_user_id;

/// Longest a share link may live: 30 days.
pub const MAX_SHARE_SECONDS: i64 = 30 * 24 * 3600;

/// What can be asked of a share link. Its id is the SHA-256 of its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareCommand {
    /// `owner_id` shares their live file `file_id` (the gateway checked both) for
    /// `expires_in_seconds`.
    Create {
        file_id: String,
        owner_id: String,
        now: DateTime<Utc>,
        expires_in_seconds: i64,
    },
    /// Revoking twice changes nothing.
    Revoke { by: String, now: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    /// No such link, or not the caller's.
    #[error("no such share")]
    NotFound,
    #[error("the share already exists")]
    Exists,
    #[error("invalid {0}")]
    Invalid(#[from] Invalid),
}

chronicle_schemas::domain_rules!(ShareError {
    Self::NotFound => NotFound,
    Self::Exists => Conflict("share_exists"),
    Self::Invalid(invalid) => Invalid(invalid),
});

/// A link serving one file without authentication, until it expires or is revoked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    file_id: String,
    owner_id: String,
    expires_at: Option<DateTime<Utc>>,
    revoked: bool,
}

/// Why a link does not serve its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unserved {
    NotFound,
    Expired,
    Revoked,
}

impl Share {
    pub fn file_id(&self) -> &str {
        &self.file_id
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    /// The file the link serves at `now`, or why it does not.
    ///
    /// # Errors
    /// [`Unserved`]: no such link, past its expiry, or revoked.
    pub fn serves(&self, now: DateTime<Utc>) -> Result<&str, Unserved> {
        match self.expires_at {
            None => Err(Unserved::NotFound),
            Some(_) if self.revoked => Err(Unserved::Revoked),
            Some(at) if now >= at => Err(Unserved::Expired),
            Some(_) => Ok(&self.file_id),
        }
    }

    fn decide(&self, command: ShareCommand) -> Result<Vec<ShareEvent>, ShareError> {
        match command {
            ShareCommand::Create {
                file_id,
                owner_id,
                now,
                expires_in_seconds,
            } => {
                if self.expires_at.is_some() {
                    return Err(ShareError::Exists);
                }
                if !valid_user_id(&owner_id) {
                    return Err(Invalid::new("owner_id", "a user id").into());
                }
                limits::in_range(
                    "expires_in_seconds",
                    expires_in_seconds.into(),
                    1,
                    MAX_SHARE_SECONDS.into(),
                )?;
                Ok(vec![ShareEvent::ShareCreated {
                    file_id,
                    owner_id,
                    created_at: now,
                    expires_at: now + chrono::Duration::seconds(expires_in_seconds),
                }])
            }
            ShareCommand::Revoke { by, now } => {
                if self.expires_at.is_none() || self.owner_id != by {
                    return Err(ShareError::NotFound);
                }
                if self.revoked {
                    return Ok(vec![]);
                }
                Ok(vec![ShareEvent::ShareRevoked { revoked_at: now }])
            }
        }
    }
}

impl AggregateKind for Share {
    const CONTEXT: &'static str = "files";
}

chronicle_schemas::decided_aggregate!(Share: "share", ShareCommand => ShareEvent, ShareError);

impl Share {
    fn apply_event(&mut self, event: ShareEvent) {
        match event {
            ShareEvent::ShareCreated {
                file_id,
                owner_id,
                expires_at,
                ..
            } => {
                *self = Self {
                    file_id,
                    owner_id,
                    expires_at: Some(expires_at),
                    revoked: false,
                };
            }
            ShareEvent::ShareRevoked { .. } => self.revoked = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use cqrs_es::Aggregate;
    use ShareCommand as C;
    use ShareEvent as E;

    type Given = TestFramework<Share>;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).expect("a valid time")
    }

    fn created() -> E {
        E::ShareCreated {
            file_id: "f1".into(),
            owner_id: "alice".into(),
            created_at: at(0),
            expires_at: at(60),
        }
    }

    fn create(seconds: i64) -> C {
        C::Create {
            file_id: "f1".into(),
            owner_id: "alice".into(),
            now: at(0),
            expires_in_seconds: seconds,
        }
    }

    #[test]
    fn a_share_lives_one_second_to_thirty_days() {
        Given::with(())
            .given_no_previous_events()
            .when(create(60))
            .then_expect_events(vec![created()]);
        Given::with(())
            .given(vec![created()])
            .when(create(60))
            .then_expect_error(ShareError::Exists);
        for seconds in [0, -1, MAX_SHARE_SECONDS + 1, i64::MAX, i64::MIN] {
            assert!(
                matches!(
                    Given::with(()).given_no_previous_events().when(create(seconds)).inspect_result(),
                    Err(ShareError::Invalid(ref i)) if i.field == "expires_in_seconds"
                ),
                "{seconds}"
            );
        }
    }

    #[test]
    fn a_share_serves_until_it_expires_or_its_owner_revokes_it() {
        let mut share = Share::default();
        assert_eq!(share.serves(at(0)), Err(Unserved::NotFound));
        share.apply(created());
        assert_eq!(share.serves(at(59)), Ok("f1"));
        assert_eq!(share.serves(at(60)), Err(Unserved::Expired));
        Given::with(())
            .given(vec![created()])
            .when(C::Revoke {
                by: "mallory".into(),
                now: at(1),
            })
            .then_expect_error(ShareError::NotFound);
        Given::with(())
            .given(vec![created()])
            .when(C::Revoke {
                by: "alice".into(),
                now: at(1),
            })
            .then_expect_events(vec![E::ShareRevoked { revoked_at: at(1) }]);
        Given::with(())
            .given(vec![created(), E::ShareRevoked { revoked_at: at(1) }])
            .when(C::Revoke {
                by: "alice".into(),
                now: at(2),
            })
            .then_expect_events(vec![]);
        share.apply(E::ShareRevoked { revoked_at: at(1) });
        assert_eq!(share.serves(at(2)), Err(Unserved::Revoked));
    }
}
