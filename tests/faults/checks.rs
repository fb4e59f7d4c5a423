//! What must hold once the faults stop and the system has caught up: nothing lost, nothing
//! duplicated, nothing stalled. Each check returns what it counted, or the broken promise.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures::StreamExt;
use serde_json::Value;
use sqlx::PgPool;

use crate::load::{Acked, Client, Watched};

/// A broken promise, with what shows it.
pub type Broken = String;

/// The harness's connections to the stores: the main database, and the database of each
/// context that has one of its own (the split layout), each as the superuser.
pub struct Stores {
    main: PgPool,
    own: BTreeMap<&'static str, PgPool>,
}

impl Stores {
    /// Connects to `main` and to each `(context, url)` of `own`.
    pub async fn connect(main: &str, own: &[(&'static str, String)]) -> Self {
        let pool = |url: String| async move {
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(60))
                .connect(&url)
                .await
                .expect("connect to the harness's database")
        };
        let mut stores = BTreeMap::new();
        for (context, url) in own {
            stores.insert(*context, pool(url.clone()).await);
        }
        Self {
            main: pool(main.to_owned()).await,
            own: stores,
        }
    }

    /// The database holding `context`'s schema.
    pub fn of(&self, context: &str) -> &PgPool {
        self.own.get(context).unwrap_or(&self.main)
    }

    /// `SELECT {columns} FROM <context>.{table}` of every context, each read on its store.
    pub async fn every_context<T>(&self, columns: &str, table: &str) -> Result<Vec<T>, String>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        let mut all = Vec::new();
        for context in chronicle::contexts::names() {
            let rows: Vec<T> = sqlx::query_as(&format!("SELECT {columns} FROM {context}.{table}"))
                .fetch_all(self.of(context))
                .await
                .map_err(|e| format!("reading {context}.{table}: {e}"))?;
            all.extend(rows);
        }
        Ok(all)
    }

    /// Every stored event, as `type:id:sequence`.
    async fn events(&self) -> Result<BTreeSet<String>, String> {
        let stored: Vec<(String, String, i64)> = self
            .every_context("aggregate_type, aggregate_id, sequence", "events")
            .await?;
        Ok(stored
            .iter()
            .map(|(t, id, s)| format!("{t}:{id}:{s}"))
            .collect())
    }
}

/// Waits until the relay has published everything, every projection and saga has no lag,
/// every acknowledged order is decided and every acknowledged job has run: what "nothing
/// stalled" means. `Err` names what is still behind after `within`.
pub async fn caught_up(
    stores: &Stores,
    client: &Client,
    token: &str,
    acked: &Acked,
    within: Duration,
) -> Result<Duration, Broken> {
    let started = Instant::now();
    loop {
        let behind = behind(stores, client, token, acked).await;
        match behind {
            None => return Ok(started.elapsed()),
            Some(what) if started.elapsed() > within => {
                return Err(format!("stalled: after {within:?}, {what}"))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

async fn behind(stores: &Stores, client: &Client, token: &str, acked: &Acked) -> Option<String> {
    let outbox: i64 = match stores.every_context::<(i64,)>("count(*)", "outbox").await {
        Ok(counts) => counts.iter().map(|(n,)| n).sum(),
        Err(e) => return Some(format!("PostgreSQL: {e}")),
    };
    if outbox > 0 {
        return Some(format!("{outbox} outbox rows unpublished"));
    }
    let Some(projections) = client
        .ok_json(|http, base| {
            http.get(format!("{base}/api/v1/projections"))
                .bearer_auth(token)
        })
        .await
    else {
        return Some("no gateway answers GET /api/v1/projections".into());
    };
    let lagging: Vec<String> = projections
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["lag_events"].as_i64() != Some(0))
        .map(|p| format!("{} lags {} events", p["name"], p["lag_events"]))
        .collect();
    if !lagging.is_empty() {
        return Some(lagging.join(", "));
    }
    let pending: Result<i64, _> = sqlx::query_scalar(
        "SELECT count(*) FROM unnest($1::text[]) AS o(id) \
         WHERE NOT EXISTS (SELECT 1 FROM commerce.orders WHERE orders.id = o.id AND status <> 'pending')",
    )
    .bind(&acked.orders)
    .fetch_one(stores.of("commerce"))
    .await;
    let pending = match pending {
        Ok(n) => n,
        Err(e) => return Some(format!("reading the orders: {e}")),
    };
    if pending != 0 {
        return Some(format!("{pending} acknowledged orders not decided"));
    }
    let jobs: Result<i64, _> = sqlx::query_scalar(
        "SELECT count(*) FROM unnest($1::text[]) AS j(id) \
         WHERE NOT EXISTS (SELECT 1 FROM scheduler.scheduler_jobs s WHERE s.job_id = j.id AND s.status = 'done')",
    )
    .bind(&acked.jobs)
    .fetch_one(stores.of("scheduler"))
    .await;
    let jobs = match jobs {
        Ok(n) => n,
        Err(e) => return Some(format!("reading the jobs: {e}")),
    };
    if jobs != 0 {
        return Some(format!(
            "{jobs} acknowledged jobs not done: {}",
            jobs_not_done(stores, &acked.jobs).await
        ));
    }
    None
}

/// What the read model and the store say of the acknowledged jobs not done (the first
/// five), so that a stall can be told apart: a job the read model lacks, one whose runs
/// never started, one whose run started and never ended.
async fn jobs_not_done(stores: &Stores, jobs: &[String]) -> String {
    // Its id, and the read model's status and wake time and the store's events, if any.
    type Row = (String, Option<String>, Option<String>, Option<String>);
    let rows: Result<Vec<Row>, _> = sqlx::query_as(
        "SELECT j.id, s.status, s.wake_at::text, \
                    (SELECT string_agg(e.event_type || '@' || e.sequence, ' ' ORDER BY e.sequence) \
                     FROM scheduler.events e WHERE e.aggregate_id = j.id) \
             FROM unnest($1::text[]) AS j(id) \
             LEFT JOIN scheduler.scheduler_jobs s ON s.job_id = j.id \
             WHERE s.status IS DISTINCT FROM 'done' LIMIT 5",
    )
    .bind(jobs)
    .fetch_all(stores.of("scheduler"))
    .await;
    match rows {
        Ok(rows) => rows
            .into_iter()
            .map(|(id, status, wake_at, events)| {
                format!(
                    "{id} (read model: {}, wake_at {}; events: {})",
                    status.as_deref().unwrap_or("absent"),
                    wake_at.as_deref().unwrap_or("none"),
                    events.as_deref().unwrap_or("none")
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(e) => format!("(reading them failed: {e})"),
    }
}

/// Every command answered with a version is in the events table at that version; every
/// acknowledged chat message is in the room's history at its seq; every acknowledged file
/// is there with the bytes sent. The number of acknowledgements checked.
pub async fn acknowledged_are_stored(
    stores: &Stores,
    client: &Client,
    token_of_member: &str,
    token_of_owner: &str,
    room: &str,
    acked: &Acked,
) -> Result<usize, Broken> {
    // Each context's store read on its own (a context may be on a database of its own).
    let stored = stores.events().await?;
    let missing: Vec<&(String, String, i64)> = acked
        .versions
        .iter()
        .filter(|(t, id, v)| !stored.contains(&format!("{t}:{id}:{v}")))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "lost: {} acknowledged commands are not in the events table, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        ));
    }

    let mut history = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = client
            .ok_json(|http, base| {
                http.get(format!(
                    "{base}/api/v1/rooms/{room}/messages?after_seq={after}&limit=100"
                ))
                .bearer_auth(token_of_member)
            })
            .await
            .ok_or("the room's history could not be read")?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        let Some(last) = items.last() else { break };
        after = last["seq"].as_i64().unwrap_or(i64::MAX);
        for item in items {
            history.insert(
                item["id"].as_str().unwrap_or_default().to_owned(),
                item["seq"].as_i64().unwrap_or(-1),
            );
        }
    }
    let seqs: Vec<i64> = history.values().copied().collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    if sorted != (1..=sorted.len() as i64).collect::<Vec<_>>() {
        return Err("the room's seqs are not dense from 1".into());
    }
    for (id, seq) in &acked.messages {
        if history.get(id) != Some(seq) {
            return Err(format!(
                "lost: message {id} acknowledged at seq {seq} is {:?} in the history",
                history.get(id)
            ));
        }
    }

    for (id, sha) in &acked.files {
        let response = client
            .send(|http, base| {
                http.get(format!("{base}/api/v1/files/{id}/content"))
                    .bearer_auth(token_of_owner)
            })
            .await
            .ok_or_else(|| format!("no gateway answers for file {id}"))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "lost: acknowledged file {id} cannot be downloaded: {status} {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        use sha2::Digest;
        let got = crate::load::hex(&sha2::Sha256::digest(&bytes));
        if &got != sha {
            return Err(format!("file {id} holds other bytes than were sent"));
        }
    }
    Ok(acked.versions.len() + acked.messages.len() + acked.files.len())
}

/// Every event of every context's store is in the stream exactly once, nothing else is there,
/// and each aggregate's events are in its order. The number of events checked.
pub async fn stream_matches_store(
    stores: &Stores,
    nats: &async_nats::Client,
) -> Result<usize, Broken> {
    let stored_ids = stores.events().await?;
    let js = jetstream::new(nats.clone());
    let stream = chronicle_bus::ensure_events_stream(&js)
        .await
        .map_err(|e| e.to_string())?;
    let total = stream
        .get_info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .messages;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut last_of: HashMap<(String, String), i64> = HashMap::new();
    for _ in 0..total {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .map_err(|_| "the stream stopped delivering".to_owned())?
            .ok_or("the stream ended")?
            .map_err(|e| e.to_string())?;
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned())
            .ok_or("a message without Nats-Msg-Id")?;
        let seq = message.info().map_err(|e| e.to_string())?.stream_sequence;
        if let Some(first) = seen.insert(id.clone(), seq) {
            return Err(format!(
                "duplicated: {id} is in the stream at {first} and {seq}"
            ));
        }
        let envelope: Value =
            serde_json::from_slice(&message.payload).map_err(|e| e.to_string())?;
        let key = (
            envelope["aggregate_type"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            envelope["aggregate_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        let sequence = envelope["sequence"].as_i64().unwrap_or(-1);
        let before = last_of.insert(key.clone(), sequence).unwrap_or(0);
        if sequence != before + 1 {
            return Err(format!(
                "out of order: {key:?} event {sequence} follows {before} in the stream (at {seq})"
            ));
        }
    }
    let streamed: BTreeSet<String> = seen.into_keys().collect();
    if stored_ids != streamed {
        let lost: Vec<_> = stored_ids.difference(&streamed).take(5).collect();
        let extra: Vec<_> = streamed.difference(&stored_ids).take(5).collect();
        return Err(format!(
            "the stream and the events table differ: {} stored, {} streamed; not streamed {lost:?}, not stored {extra:?}",
            stored_ids.len(),
            streamed.len()
        ));
    }
    Ok(stored_ids.len())
}

/// Every reader's checkpoint, by name (each in its context's schema).
pub async fn checkpoints(stores: &Stores) -> BTreeMap<String, i64> {
    stores
        .every_context::<(String, i64)>("name, checkpoint", "projection_checkpoints")
        .await
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// The rows of every read model, each table's rows as sorted JSON text.
pub async fn read_models(stores: &Stores) -> BTreeMap<String, Vec<String>> {
    let mut all = BTreeMap::new();
    for model in chronicle::contexts::read_models() {
        let (name, context) = (model.name(), model.context());
        for table in model.tables() {
            let rows: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT to_jsonb(t)::text FROM {context}.{table} t ORDER BY 1"
            ))
            .fetch_all(stores.of(context))
            .await
            .unwrap_or_else(|e| panic!("reading {table}: {e}"));
            all.insert(format!("{name}/{table}"), rows);
        }
    }
    all
}

/// Where two dumps of the read models differ, table by table.
pub fn differences(
    live: &BTreeMap<String, Vec<String>>,
    rebuilt: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (table, rows) in live {
        let other = rebuilt.get(table).cloned().unwrap_or_default();
        if *rows != other {
            let a: BTreeSet<&String> = rows.iter().collect();
            let b: BTreeSet<&String> = other.iter().collect();
            out.push(format!(
                "{table}: {} live rows, {} rebuilt; only live: {:?}; only rebuilt: {:?}",
                rows.len(),
                other.len(),
                a.difference(&b).take(2).collect::<Vec<_>>(),
                b.difference(&a).take(2).collect::<Vec<_>>()
            ));
        }
    }
    out
}

/// Stock never negative, each reservation made once, each order decided once, each job
/// run succeeded once, and nothing parked. The number of aggregates checked.
pub async fn invariants(stores: &Stores, acked: &Acked) -> Result<usize, Broken> {
    let pool = stores.of("commerce");
    let negative: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT sku, on_hand, reserved, available FROM commerce.inventory_items \
         WHERE on_hand < 0 OR reserved < 0 OR available < 0",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| e.to_string())?;
    if !negative.is_empty() {
        return Err(format!("negative stock: {negative:?}"));
    }
    let twice: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, payload->'StockReserved'->>'reservation_id', count(*) FROM commerce.events \
         WHERE aggregate_type = 'inventory_item' AND event_type = 'StockReserved' \
         GROUP BY 1, 2 HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| e.to_string())?;
    if !twice.is_empty() {
        return Err(format!(
            "a saga step applied twice (reservations): {twice:?}"
        ));
    }
    let decided_twice: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, count(*) FROM commerce.events \
         WHERE aggregate_type = 'order' AND event_type IN ('OrderReserved', 'OrderRejected') \
         GROUP BY 1 HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| e.to_string())?;
    if !decided_twice.is_empty() {
        return Err(format!("orders decided twice: {decided_twice:?}"));
    }
    // Checkout is one step: every checked-out cart made exactly one order, and every order
    // of a customer who checks out (bob places no other) came from exactly one checkout.
    let checkouts: Vec<(String, i64, i64)> = sqlx::query_as(
        "WITH c AS (SELECT payload->'CheckedOut'->>'order_id' AS order_id FROM commerce.events \
                    WHERE aggregate_type = 'cart' AND event_type = 'CheckedOut'), \
              o AS (SELECT aggregate_id AS order_id FROM commerce.events \
                    WHERE aggregate_type = 'order' AND event_type = 'OrderPlaced' \
                      AND payload->'OrderPlaced'->>'customer_id' IN \
                          (SELECT aggregate_id FROM commerce.events WHERE aggregate_type = 'cart')) \
         SELECT order_id, (SELECT count(*) FROM c WHERE c.order_id = ids.order_id), \
                (SELECT count(*) FROM o WHERE o.order_id = ids.order_id) \
         FROM (SELECT order_id FROM c UNION SELECT order_id FROM o) AS ids",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| e.to_string())?;
    let split: Vec<&(String, i64, i64)> = checkouts
        .iter()
        .filter(|(_, c, o)| (*c, *o) != (1, 1))
        .collect();
    if !split.is_empty() {
        return Err(format!(
            "checkouts without exactly one order, or orders without exactly one checkout \
             (order, checkouts, orders): {:?}",
            &split[..split.len().min(5)]
        ));
    }
    let placed: BTreeSet<&str> = checkouts.iter().map(|(id, _, _)| id.as_str()).collect();
    let lost: Vec<&String> = acked
        .checkouts
        .iter()
        .filter(|id| !placed.contains(id.as_str()))
        .collect();
    if !lost.is_empty() {
        return Err(format!("acknowledged checkouts with no order: {lost:?}"));
    }
    let runs: Vec<(String, i64)> = sqlx::query_as(
        "SELECT j.id, (SELECT count(*) FROM scheduler.events e WHERE e.aggregate_type = 'job' \
                         AND e.aggregate_id = j.id AND e.event_type = 'RunSucceeded') \
         FROM unnest($1::text[]) AS j(id)",
    )
    .bind(&acked.jobs)
    .fetch_all(stores.of("scheduler"))
    .await
    .map_err(|e| e.to_string())?;
    let wrong: Vec<&(String, i64)> = runs.iter().filter(|(_, n)| *n != 1).collect();
    if !wrong.is_empty() {
        return Err(format!(
            "one-shot jobs that did not succeed exactly once: {:?}",
            &wrong[..wrong.len().min(5)]
        ));
    }
    let parked: Vec<(String, i64, String)> = stores
        .every_context("subscriber, stream_seq, error", "parked_events")
        .await?;
    if !parked.is_empty() {
        return Err(format!("parked events: {parked:?}"));
    }
    Ok(acked.orders.len() + acked.jobs.len() + checkouts.len())
}

/// Every acknowledged message reached the WebSocket member, and the contract held on
/// every connection.
pub fn websocket_complete(watched: &Watched, acked: &Acked) -> Result<usize, Broken> {
    if !watched.faults.is_empty() {
        return Err(format!(
            "the WebSocket contract broke: {:?}",
            watched.faults
        ));
    }
    let missed: Vec<i64> = acked
        .messages
        .values()
        .filter(|seq| !watched.seqs.contains(seq))
        .copied()
        .collect();
    if !missed.is_empty() {
        return Err(format!(
            "the WebSocket member missed {} acknowledged messages: seqs {:?}",
            missed.len(),
            &missed[..missed.len().min(10)]
        ));
    }
    Ok(acked.messages.len())
}
