//! The time-series store of the monitoring context: samples in, aggregated points out.
//!
//! Samples are not events (the API contract, Monitoring). Each is stored under its series (metric and
//! labels) and folded into that series' per-minute rollup in the same statement, so that once
//! retention removes the samples the rollups still answer avg, min, max, sum and rate. The
//! business series (`business_*`) are not stored here: the `business_metrics` projection
//! derives them from the event log, and queries read them from its table, so a replay
//! rebuilds them like any read model.

use std::collections::BTreeMap;

use crate::{Aggregation, Sample};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// Metric names that the `business_metrics` projection derives from the log.
pub const BUSINESS_PREFIX: &str = "business_";

/// Most series one metric may have. Each distinct set of labels is a series, stored and
/// aggregated on its own: a reporter putting a user id or a timestamp into a label would
/// otherwise grow the store without bound (the cardinality explosion of every TSDB).
pub const MAX_SERIES_PER_METRIC: i64 = 10_000;

/// Why samples were not stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metric {metric} would have more than {MAX_SERIES_PER_METRIC} series")]
    TooManySeries { metric: String },
    #[error("database error while storing samples")]
    Database(#[from] sqlx::Error),
}

/// Stores `samples` (each under its series, created when new) and updates their rollups:
/// the number stored. The samples are stored all or none.
///
/// # Errors
/// [`StoreError::TooManySeries`] when new series would take a metric past
/// [`MAX_SERIES_PER_METRIC`] (nothing is stored); when the database fails.
pub async fn store(pool: &PgPool, samples: &[Sample]) -> Result<u64, StoreError> {
    if samples.is_empty() {
        return Ok(0);
    }
    let metrics: Vec<&str> = samples.iter().map(|s| s.metric.as_str()).collect();
    let labels: Vec<serde_json::Value> = samples
        .iter()
        .map(|s| serde_json::to_value(&s.labels).unwrap_or_default())
        .collect();
    // A soft cap: two reports racing may pass it by what each adds.
    let over: Option<String> = sqlx::query_scalar(
        "SELECT d.m FROM (SELECT DISTINCT m, l FROM UNNEST($1::text[], $2::jsonb[]) AS t(m, l)) d \
         LEFT JOIN monitoring_series s ON s.metric = d.m AND s.labels = d.l \
         GROUP BY d.m \
         HAVING count(*) FILTER (WHERE s.id IS NULL) > 0 \
            AND count(*) FILTER (WHERE s.id IS NULL) \
                + (SELECT count(*) FROM monitoring_series x WHERE x.metric = d.m) > $3 \
         LIMIT 1",
    )
    .bind(&metrics)
    .bind(&labels)
    .bind(MAX_SERIES_PER_METRIC)
    .fetch_optional(pool)
    .await?;
    if let Some(metric) = over {
        return Err(StoreError::TooManySeries { metric });
    }
    let at: Vec<DateTime<Utc>> = samples.iter().map(|s| s.at).collect();
    let values: Vec<f64> = samples.iter().map(|s| s.value).collect();
    // New series first, in their own statement: the next one then sees series another
    // request created meanwhile (READ COMMITTED takes a fresh snapshot per statement).
    sqlx::query(
        "INSERT INTO monitoring_series (metric, labels) \
         SELECT DISTINCT m, l FROM UNNEST($1::text[], $2::jsonb[]) AS t(m, l) \
         ORDER BY 1, 2 ON CONFLICT DO NOTHING",
    )
    .bind(&metrics)
    .bind(&labels)
    .execute(pool)
    .await?;
    // The samples and the rollups they change, in one statement (all or nothing). Rollup
    // rows are written in key order so that concurrent reports cannot deadlock.
    let stored: i64 = sqlx::query_scalar(
        "WITH input AS ( \
             SELECT s.id AS series_id, t.at, t.value \
             FROM UNNEST($1::text[], $2::jsonb[], $3::timestamptz[], $4::float8[]) AS t(metric, labels, at, value) \
             JOIN monitoring_series s ON s.metric = t.metric AND s.labels = t.labels), \
         inserted AS ( \
             INSERT INTO monitoring_samples (series_id, at, value) \
             SELECT series_id, at, value FROM input RETURNING 1), \
         rolled AS ( \
             INSERT INTO monitoring_rollups AS r (series_id, minute, count, sum, min, max, last, last_at) \
             SELECT series_id, date_trunc('minute', at), count(*), sum(value), min(value), max(value), \
                    (array_agg(value ORDER BY at DESC))[1], max(at) \
             FROM input GROUP BY 1, 2 ORDER BY 1, 2 \
             ON CONFLICT (series_id, minute) DO UPDATE SET \
                 count = r.count + excluded.count, sum = r.sum + excluded.sum, \
                 min = least(r.min, excluded.min), max = greatest(r.max, excluded.max), \
                 last = CASE WHEN excluded.last_at >= r.last_at THEN excluded.last ELSE r.last END, \
                 last_at = greatest(r.last_at, excluded.last_at) \
             RETURNING 1) \
         SELECT (SELECT count(*) FROM inserted) + 0 * (SELECT count(*) FROM rolled)",
    )
    .bind(&metrics)
    .bind(&labels)
    .bind(&at)
    .bind(&values)
    .fetch_one(pool)
    .await?;
    Ok(stored as u64)
}

/// What to read: `agg` of `metric`'s series whose labels include `labels`, in buckets of
/// `step_seconds` from `from` (inclusive) to `to` (exclusive).
#[derive(Debug, Clone)]
pub struct SeriesQuery {
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub step_seconds: u32,
    pub agg: Aggregation,
}

/// One series of a query's answer: its labels and `[unix seconds, value]` points, a point
/// per bucket that had samples, at the bucket's start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesPoints {
    pub labels: serde_json::Value,
    pub points: Vec<(i64, f64)>,
}

/// Most series one query returns.
pub const MAX_SERIES: i64 = 1_000;

/// Steps at least this long are answered from the per-minute rollups: a 7-day chart at
/// 30-minute steps reads 10,080 rows per series, not 60,480 samples.
pub const ROLLUP_STEP_SECONDS: u32 = 300;

/// Answers `query`. Samples older than `retention` are gone; a query reaching past it, or
/// with a step of [`ROLLUP_STEP_SECONDS`] or more, reads the per-minute rollups instead (each
/// minute counted in the bucket it starts in; p99 there is taken over the per-minute maxima).
///
/// # Errors
/// When the database fails.
pub async fn query(
    pool: &PgPool,
    query: &SeriesQuery,
    retention: Duration,
) -> Result<Vec<SeriesPoints>, sqlx::Error> {
    let business = query.metric.starts_with(BUSINESS_PREFIX);
    let source = if business {
        // A minute counts when it overlaps the range (at the range's start if it began
        // before it): a window of 10 s still sees the current minute's orders.
        "SELECT 0::bigint AS series_id, greatest(minute, $3) AS at, value::float8 AS value \
         FROM business_series \
         WHERE metric = $1 AND '{}'::jsonb @> $2 AND minute > $3 - interval '1 minute' AND minute < $4"
            .to_owned()
    } else if query.from < Utc::now() - retention || query.step_seconds >= ROLLUP_STEP_SECONDS {
        let value = match query.agg {
            Aggregation::Avg => "r.sum / r.count",
            Aggregation::Min => "r.min",
            Aggregation::Max | Aggregation::P99 => "r.max",
            Aggregation::Sum => "r.sum",
            Aggregation::Rate => "r.last",
        };
        format!(
            "SELECT r.series_id, r.minute AS at, {value} AS value FROM monitoring_rollups r \
             JOIN monitoring_series m ON m.id = r.series_id \
             WHERE m.metric = $1 AND m.labels @> $2 AND r.minute >= $3 AND r.minute < $4"
        )
    } else {
        "SELECT s.series_id, s.at, s.value FROM monitoring_samples s \
         JOIN monitoring_series m ON m.id = s.series_id \
         WHERE m.metric = $1 AND m.labels @> $2 AND s.at >= $3 AND s.at < $4"
            .to_owned()
    };
    let reduce = match query.agg {
        Aggregation::Avg => "avg(value)",
        Aggregation::Min => "min(value)",
        Aggregation::Max => "max(value)",
        Aggregation::Sum => "sum(value)",
        Aggregation::P99 => "percentile_cont(0.99) WITHIN GROUP (ORDER BY value)",
        // A counter's increase in the bucket per second; a drop is a reset, counted from 0.
        Aggregation::Rate => "sum(delta) / $5",
    };
    let sql = format!(
        "WITH points AS ({source}), \
         ranked AS (SELECT series_id, at, value, \
             CASE WHEN lag(value) OVER w IS NULL THEN 0 \
                  WHEN value >= lag(value) OVER w THEN value - lag(value) OVER w \
                  ELSE value END AS delta \
             FROM points WINDOW w AS (PARTITION BY series_id ORDER BY at)), \
         chosen AS (SELECT DISTINCT series_id FROM ranked ORDER BY 1 LIMIT {MAX_SERIES}) \
         SELECT series_id, floor(extract(epoch FROM at - $3) / $5)::bigint AS bucket, \
                ({reduce})::float8 AS v \
         FROM ranked WHERE series_id IN (SELECT series_id FROM chosen) \
         GROUP BY 1, 2 ORDER BY 1, 2"
    );
    let labels = serde_json::to_value(&query.labels).unwrap_or_default();
    let rows: Vec<(i64, i64, Option<f64>)> = match sqlx::query_as(&sql)
        .bind(&query.metric)
        .bind(&labels)
        .bind(query.from)
        .bind(query.to)
        .bind(f64::from(query.step_seconds))
        .fetch_all(pool)
        .await
    {
        Ok(rows) => rows,
        Err(e) if business && is_missing_table(&e) => Vec::new(),
        Err(e) => return Err(e),
    };
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let names: BTreeMap<i64, serde_json::Value> = if business {
        BTreeMap::from([(0, serde_json::json!({}))])
    } else {
        sqlx::query_as::<_, (i64, serde_json::Value)>(
            "SELECT id, labels FROM monitoring_series JOIN unnest($1::bigint[]) AS k(id) USING (id)",
        )
        .bind(&ids)
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect()
    };
    let start = query.from.timestamp();
    let step = i64::from(query.step_seconds);
    let mut series: Vec<SeriesPoints> = Vec::new();
    let mut current: Option<i64> = None;
    for (id, bucket, value) in rows {
        let Some(value) = value.filter(|v| v.is_finite()) else {
            continue;
        };
        if current != Some(id) {
            current = Some(id);
            series.push(SeriesPoints {
                labels: names.get(&id).cloned().unwrap_or_default(),
                points: Vec::new(),
            });
        }
        if let Some(last) = series.last_mut() {
            last.points.push((start + bucket * step, value));
        }
    }
    Ok(series)
}

/// One value for a rule: `agg` of the matching series over the `window` ending at `now`,
/// combined across series (avg of their averages, the smallest minimum, the largest maximum
/// and p99, sums and rates added). `None` when there were no samples.
///
/// # Errors
/// When the database fails.
pub async fn evaluate(
    pool: &PgPool,
    metric: &str,
    labels: &BTreeMap<String, String>,
    agg: Aggregation,
    window_seconds: u32,
    now: DateTime<Utc>,
    retention: Duration,
) -> Result<Option<f64>, sqlx::Error> {
    let query = SeriesQuery {
        metric: metric.to_owned(),
        labels: labels.clone(),
        from: now - Duration::seconds(i64::from(window_seconds)),
        to: now + Duration::milliseconds(1),
        step_seconds: window_seconds.max(1),
        agg,
    };
    let series = self::query(pool, &query, retention).await?;
    let values: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .collect();
    if values.is_empty() {
        return Ok(None);
    }
    Ok(Some(match agg {
        Aggregation::Avg => values.iter().sum::<f64>() / values.len() as f64,
        Aggregation::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
        Aggregation::Max | Aggregation::P99 => {
            values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        }
        Aggregation::Sum | Aggregation::Rate => values.iter().sum(),
    }))
}

/// A metric name the store knows, with the label keys its series use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct KnownMetric {
    pub metric: String,
    pub labels: Vec<String>,
}

/// Every metric name with samples or rollups, and every business series.
///
/// # Errors
/// When the database fails.
pub async fn metrics(pool: &PgPool) -> Result<Vec<KnownMetric>, sqlx::Error> {
    let mut known: Vec<KnownMetric> = sqlx::query_as(
        "SELECT s.metric, coalesce(array_agg(DISTINCT k.key) FILTER (WHERE k.key IS NOT NULL), '{}') AS labels \
         FROM monitoring_series s LEFT JOIN LATERAL jsonb_object_keys(s.labels) AS k(key) ON true \
         GROUP BY s.metric",
    )
    .fetch_all(pool)
    .await?;
    let business: Vec<String> =
        match sqlx::query_scalar("SELECT DISTINCT metric FROM business_series")
            .fetch_all(pool)
            .await
        {
            Ok(names) => names,
            // The projector has not created its table yet: no business series so far.
            Err(e) if is_missing_table(&e) => Vec::new(),
            Err(e) => return Err(e),
        };
    known.extend(business.into_iter().map(|metric| KnownMetric {
        metric,
        labels: Vec::new(),
    }));
    known.sort_by(|a, b| a.metric.cmp(&b.metric));
    Ok(known)
}

fn is_missing_table(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.code().as_deref() == Some("42P01"))
}

/// Removes samples older than `samples_before` and rollups older than `rollups_before`, a
/// batch at a time: how many of each went.
///
/// # Errors
/// When the database fails.
pub async fn purge(
    pool: &PgPool,
    samples_before: DateTime<Utc>,
    rollups_before: DateTime<Utc>,
) -> Result<(u64, u64), sqlx::Error> {
    let samples = delete_before(pool, "monitoring_samples", "at", samples_before).await?;
    let rollups = delete_before(pool, "monitoring_rollups", "minute", rollups_before).await?;
    Ok((samples, rollups))
}

/// Deletes the rows of `table` whose `column` is before `before`, 50,000 at a time (short
/// transactions: reports keep coming in meanwhile).
async fn delete_before(
    pool: &PgPool,
    table: &'static str,
    column: &'static str,
    before: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    const BATCH: i64 = 50_000;
    let sql = format!(
        "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} WHERE {column} < $1 LIMIT $2)"
    );
    let mut removed = 0;
    loop {
        let n = sqlx::query(&sql)
            .bind(before)
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        removed += n;
        if n < BATCH as u64 {
            return Ok(removed);
        }
    }
}
