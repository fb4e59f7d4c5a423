//! Cursor pagination (the API contract): `?limit=` 1–200 (default 50), `?cursor=` opaque, answers
//! `{"items": [...], "next_cursor": "..." | null}`.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, FieldError};

/// The sort key of a list ordered by a time, then an id: what
/// [`PageRequest::after_time_and_id`] reads back from the next cursor.
pub fn time_and_id(at: DateTime<Utc>, id: &str) -> String {
    format!(
        "{}|{id}",
        at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    )
}

/// A list response.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// The same page with each item turned into what the response shows.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

/// What a cursor carries: the sort key of the last item given out.
#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    after: String,
}

/// `?limit=&cursor=`, for lists that take nothing else.
#[derive(Debug, Deserialize)]
pub struct PageParams {
    limit: Option<i64>,
    cursor: Option<String>,
}

/// A validated page request.
#[derive(Debug)]
pub struct PageRequest {
    pub limit: i64,
    /// The sort key the page starts after (exclusive), from the cursor.
    pub after: Option<String>,
}

impl PageRequest {
    /// # Errors
    /// 422 on a limit out of range, 400 `invalid_cursor` on a cursor this API did not make.
    pub fn new(limit: Option<i64>, cursor: Option<&str>) -> Result<Self, ApiError> {
        let limit = limit.unwrap_or(50);
        if !(1..=200).contains(&limit) {
            return Err(ApiError::validation(vec![FieldError::new(
                "limit",
                "must be between 1 and 200",
            )]));
        }
        let after = cursor
            .map(|cursor| {
                URL_SAFE_NO_PAD
                    .decode(cursor)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<Cursor>(&bytes).ok())
                    .map(|c| c.after)
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_cursor",
                            "the cursor is not one this API gave out",
                        )
                    })
            })
            .transpose()?;
        Ok(Self { limit, after })
    }

    /// The time and id the page starts after, for a list keyed by [`time_and_id`].
    ///
    /// # Errors
    /// 400 `invalid_cursor` when the cursor holds no such key.
    pub fn after_time_and_id(&self) -> Result<Option<(DateTime<Utc>, &str)>, ApiError> {
        self.after
            .as_deref()
            .map(|after| {
                let (at, id) = after.split_once('|')?;
                let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
                Some((at, id))
            })
            .map(|parsed| {
                parsed.ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_cursor",
                        "the cursor is not one this API gave out",
                    )
                })
            })
            .transpose()
    }

    /// The page of a list ordered by a time, then an id ([`time_and_id`]):
    /// `query(after, fetch)` reads up to `fetch` rows after the cursor's time and id, and
    /// `key` gives a row's.
    ///
    /// # Errors
    /// 400 `invalid_cursor` for a cursor that holds no such key; the query's failure as an
    /// internal error.
    pub async fn by_time_and_id<'a, T, E, Fut>(
        &'a self,
        query: impl FnOnce(Option<(DateTime<Utc>, &'a str)>, i64) -> Fut,
        key: impl Fn(&T) -> (DateTime<Utc>, &str),
    ) -> Result<Page<T>, ApiError>
    where
        Fut: std::future::Future<Output = Result<Vec<T>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let rows = query(self.after_time_and_id()?, self.fetch())
            .await
            .map_err(ApiError::internal)?;
        Ok(self.page(rows, |row| {
            let (at, id) = key(row);
            time_and_id(at, id)
        }))
    }

    /// The page `params` ask for (see [`new`](Self::new)).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn from_params(params: &PageParams) -> Result<Self, ApiError> {
        Self::new(params.limit, params.cursor.as_deref())
    }

    /// How many rows to fetch: one more than the limit tells whether a next page exists.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// The page of the fetched `items`, with a cursor after the last one given out when
    /// more exist. `key` is the sort key the query pages by.
    pub fn page<T>(&self, mut items: Vec<T>, key: impl Fn(&T) -> String) -> Page<T> {
        let next_cursor = if items.len() as i64 > self.limit {
            items.truncate(self.limit as usize);
            items.last().map(|last| cursor(key(last)))
        } else {
            None
        };
        Page { items, next_cursor }
    }
}

/// The opaque cursor that [`PageRequest::new`] reads back as `after`: for lists whose next
/// page is not simply "after the last item" (a history paged backwards, say).
pub fn cursor(after: String) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Cursor { after }).unwrap_or_default())
}
