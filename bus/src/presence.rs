//! Presence: who is connected, in a JetStream KV bucket (`presence`) every gateway shares.
//!
//! One key per user holds the gateway processes that have a connection of theirs open
//! ("holders"), each with an expiry the holder pushes forward while it lives
//! ([`Presence::refresh`]), and when the user was last seen. A user is online while any
//! holder has not expired: a gateway that crashes stops refreshing, and its entries lapse
//! within their time to live without anyone cleaning up after it. Updates are
//! compare-and-set on the key's revision, so two gateways never lose each other's entries.
//!
//! A holder is a process, not a connection: a user with a hundred connections on one gateway
//! costs one refresh per interval, not a hundred.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::BusError;

/// The KV bucket.
pub const PRESENCE_BUCKET: &str = "presence";
/// How long a holder counts as live without a refresh, by default.
pub const PRESENCE_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Record {
    /// Holder (a gateway process) → when it lapses, if not refreshed (ms since the epoch).
    holders: BTreeMap<String, i64>,
    last_seen: Option<DateTime<Utc>>,
}

/// What `GET /api/v1/users/{id}/presence` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceView {
    pub online: bool,
    pub last_seen: Option<DateTime<Utc>>,
}

/// The presence bucket.
#[derive(Clone)]
pub struct Presence {
    store: kv::Store,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Presence")
    }
}

impl Presence {
    /// Opens (creating if needed) the bucket.
    ///
    /// # Errors
    /// When JetStream refuses.
    pub async fn open(js: &jetstream::Context) -> Result<Self, BusError> {
        let store = match js.get_key_value(PRESENCE_BUCKET).await {
            Ok(store) => store,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: PRESENCE_BUCKET.to_owned(),
                    history: 1,
                    ..Default::default()
                })
                .await
                .map_err(BusError::request("creating the presence bucket"))?,
        };
        Ok(Self { store })
    }

    /// `holder` has a connection of `user_id` open, for `ttl` unless refreshed again.
    ///
    /// # Errors
    /// When the bucket cannot be updated.
    pub async fn refresh(
        &self,
        user_id: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<(), BusError> {
        let now = Utc::now();
        let until = now.timestamp_millis() + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        self.change(user_id, |record| {
            record.holders.insert(holder.to_owned(), until);
            record.last_seen = Some(now);
        })
        .await
    }

    /// `holder` has no connection of `user_id` open any more.
    ///
    /// # Errors
    /// When the bucket cannot be updated.
    pub async fn closed(&self, user_id: &str, holder: &str) -> Result<(), BusError> {
        let now = Utc::now();
        self.change(user_id, |record| {
            record.holders.remove(holder);
            record.last_seen = Some(now);
        })
        .await
    }

    /// Whether `user_id` is online, and when they were last seen.
    ///
    /// # Errors
    /// When the bucket cannot be read.
    pub async fn of(&self, user_id: &str) -> Result<PresenceView, BusError> {
        let record = match self
            .store
            .get(user_id)
            .await
            .map_err(BusError::request("reading presence"))?
        {
            Some(bytes) => serde_json::from_slice::<Record>(&bytes).unwrap_or_default(),
            None => Record::default(),
        };
        let now = Utc::now().timestamp_millis();
        Ok(PresenceView {
            online: record.holders.values().any(|until| *until > now),
            last_seen: record.last_seen,
        })
    }

    /// Applies `edit` to the user's record with compare-and-set, dropping lapsed holders.
    async fn change(&self, user_id: &str, edit: impl Fn(&mut Record)) -> Result<(), BusError> {
        for _ in 0..20 {
            let entry = self
                .store
                .entry(user_id)
                .await
                .map_err(BusError::request("reading presence"))?;
            let (mut record, revision) = match &entry {
                Some(entry) if entry.operation == kv::Operation::Put => (
                    serde_json::from_slice::<Record>(&entry.value).unwrap_or_default(),
                    Some(entry.revision),
                ),
                _ => (Record::default(), None),
            };
            let now = Utc::now().timestamp_millis();
            record.holders.retain(|_, until| *until > now);
            edit(&mut record);
            let value = serde_json::to_vec(&record).unwrap_or_default().into();
            let written = match revision {
                Some(revision) => self.store.update(user_id, value, revision).await.is_ok(),
                None => self.store.create(user_id, value).await.is_ok(),
            };
            if written {
                return Ok(());
            }
        }
        Err(BusError::request("updating presence")(
            "too many concurrent changes",
        ))
    }
}
