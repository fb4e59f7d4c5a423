//! Where a command's time goes, stage by stage: read from the latency histograms the
//! system under load exports at `GET /metrics`, scraped before and after a phase, so that
//! only that phase's samples count.
//!
//! The stages, in the order an event passes them (each a histogram of `chronicle up`):
//!
//! | stage | from → to | histogram |
//! | --- | --- | --- |
//! | `http` | request in → answered | `chronicle_http_request_duration_seconds` (the command routes) |
//! | `command` | decision starts → committed | `chronicle_command_duration_seconds` |
//! | `commit` | events handed to the committer → their group committed | `chronicle_command_commit_seconds` |
//! | `relay` | committed → acknowledged by JetStream | `chronicle_relay_publish_lag_seconds` |
//! | `relay_round` | one round of a relay: outbox read → batch acknowledged → rows deleted | `chronicle_relay_round_seconds` |
//! | `delivery.<subscriber>` | in JetStream → fetched by the subscriber | `chronicle_subscriber_delivery_seconds` |
//! | `apply.<subscriber>` | fetched → what it made committed | `chronicle_subscriber_apply_seconds` |
//! | `fresh_read` | a `?min_version` read's wait for its version | `chronicle_read_fresh_wait_seconds` |
//! | `run_lateness` | a job's due time → its run started (committed) | `chronicle_job_run_lateness_seconds` |
//!
//! Quantiles are interpolated inside the histogram's buckets (as Prometheus'
//! `histogram_quantile` does), so they are as fine as the buckets: a few milliseconds
//! between 1 and 500 ms.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// The text of `GET {base}/metrics`.
///
/// # Errors
/// When the page cannot be fetched.
pub async fn page(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    Ok(http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// One histogram series' cumulative bucket counts, by upper bound.
type Buckets = Vec<(f64, f64)>;

/// The histograms of one scrape: by metric name, then by the series' other labels.
#[derive(Debug, Default)]
pub struct Scrape(BTreeMap<String, BTreeMap<String, Buckets>>);

impl Scrape {
    /// Reads `GET {base}/metrics`.
    ///
    /// # Errors
    /// When the page cannot be fetched.
    pub async fn of(http: &reqwest::Client, base: &str) -> anyhow::Result<Self> {
        Self::of_all(http, &[base]).await
    }

    /// Reads `GET {base}/metrics` of several processes as one: a series they share sums
    /// their samples.
    ///
    /// # Errors
    /// When a page cannot be fetched.
    pub async fn of_all(http: &reqwest::Client, bases: &[&str]) -> anyhow::Result<Self> {
        let mut text = String::new();
        for base in bases {
            text += &page(http, base).await?;
            text.push('\n');
        }
        Ok(Self::parse(&text))
    }

    /// The `*_bucket` lines of a page in the Prometheus text format.
    pub fn parse(text: &str) -> Self {
        let mut scrape = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
            let Some(name) = name.strip_suffix("_bucket") else {
                continue;
            };
            let mut le = None;
            let mut rest = Vec::new();
            for label in labels
                .trim_end_matches('}')
                .split("\",")
                .filter(|l| !l.is_empty())
            {
                let label = label.trim_end_matches('"');
                match label.strip_prefix("le=\"") {
                    Some(bound) => le = Some(bound),
                    None => rest.push(format!("{label}\"")),
                }
            }
            let bound = match le {
                Some("+Inf") => f64::INFINITY,
                Some(bound) => match bound.parse() {
                    Ok(bound) => bound,
                    Err(_) => continue,
                },
                None => continue,
            };
            scrape
                .0
                .entry(name.to_owned())
                .or_default()
                .entry(rest.join(","))
                .or_default()
                .push((bound, value));
        }
        scrape
    }

    /// The buckets of `name` summed over the series whose labels `keep` accepts, less what
    /// `before` had of them: this phase's samples.
    fn since(&self, before: &Self, name: &str, keep: impl Fn(&str) -> bool) -> Buckets {
        let sum = |scrape: &Self| {
            let mut total: BTreeMap<u64, f64> = BTreeMap::new();
            for (labels, buckets) in scrape.0.get(name).into_iter().flatten() {
                if keep(labels) {
                    for (bound, count) in buckets {
                        *total.entry(bound.to_bits()).or_default() += count;
                    }
                }
            }
            total
        };
        let earlier = sum(before);
        let mut buckets: Buckets = sum(self)
            .into_iter()
            .map(|(bits, count)| {
                let bound = f64::from_bits(bits);
                (bound, count - earlier.get(&bits).copied().unwrap_or(0.0))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }

    /// The label values of `label` among the series of `name`.
    fn values_of(&self, name: &str, label: &str) -> Vec<String> {
        let prefix = format!("{label}=\"");
        let mut values: Vec<String> = self
            .0
            .get(name)
            .into_iter()
            .flat_map(|series| series.keys())
            .flat_map(|labels| labels.split(','))
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim_end_matches('"').to_owned())
            .collect();
        values.sort();
        values.dedup();
        values
    }

    /// Every stage of the breakdown over the phase since `before`, as one JSON object:
    /// `{"<stage>": {"samples", "p50_ms", "p99_ms"}}` (stages without samples left out).
    /// `routes` are the route templates of the commands sent.
    pub fn breakdown(&self, before: &Self, routes: &[&str]) -> Value {
        let mut stages = Map::new();
        let mut stage = |key: String, buckets: Buckets| {
            if let Some(summary) = summary(&buckets) {
                stages.insert(key, summary);
            }
        };
        stage(
            "http".into(),
            self.since(before, "chronicle_http_request_duration_seconds", |l| {
                l.contains("method=\"POST\"")
                    && routes.iter().any(|r| l.contains(&format!("route=\"{r}\"")))
            }),
        );
        for (key, name) in [
            ("command", "chronicle_command_duration_seconds"),
            ("commit", "chronicle_command_commit_seconds"),
            ("relay", "chronicle_relay_publish_lag_seconds"),
            ("relay_round", "chronicle_relay_round_seconds"),
            ("run_lateness", "chronicle_job_run_lateness_seconds"),
        ] {
            stage(key.into(), self.since(before, name, |_| true));
        }
        for (key, name) in [
            ("delivery", "chronicle_subscriber_delivery_seconds"),
            ("apply", "chronicle_subscriber_apply_seconds"),
        ] {
            for subscriber in self.values_of(name, "subscriber") {
                let label = format!("subscriber=\"{subscriber}\"");
                stage(
                    format!("{key}.{subscriber}"),
                    self.since(before, name, |l| l.split(',').any(|x| x == label)),
                );
            }
        }
        stage(
            "fresh_read".into(),
            self.since(before, "chronicle_read_fresh_wait_seconds", |_| true),
        );
        Value::Object(stages)
    }
}

/// `{"samples", "p50_ms", "p99_ms"}` of cumulative `buckets`, or `None` without samples.
fn summary(buckets: &Buckets) -> Option<Value> {
    let samples = buckets.last()?.1;
    if samples < 1.0 {
        return None;
    }
    let ms = |q: f64| quantile(buckets, q).map(|s| (s * 100_000.0).round() / 100.0);
    Some(json!({"samples": samples as u64, "p50_ms": ms(0.5), "p99_ms": ms(0.99)}))
}

/// The `q` quantile of cumulative `buckets` (sorted by bound, the last `+Inf`), interpolated
/// linearly inside its bucket; the largest finite bound when it falls in `+Inf`.
pub fn quantile(buckets: &Buckets, q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let share = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lower + (bound - lower) * share);
        }
        (lower, below) = (bound, count);
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# TYPE chronicle_relay_publish_lag_seconds histogram
chronicle_relay_publish_lag_seconds_bucket{le="0.01"} 10
chronicle_relay_publish_lag_seconds_bucket{le="0.02"} 10
chronicle_relay_publish_lag_seconds_bucket{le="+Inf"} 10
chronicle_relay_publish_lag_seconds_sum 0.05
chronicle_relay_publish_lag_seconds_count 10
"#;

    const AFTER: &str = r#"# TYPE chronicle_relay_publish_lag_seconds histogram
chronicle_relay_publish_lag_seconds_bucket{le="0.01"} 10
chronicle_relay_publish_lag_seconds_bucket{le="0.02"} 110
chronicle_relay_publish_lag_seconds_bucket{le="+Inf"} 110
chronicle_subscriber_apply_seconds_bucket{subscriber="orders",le="0.005"} 50
chronicle_subscriber_apply_seconds_bucket{subscriber="orders",le="+Inf"} 100
chronicle_subscriber_apply_seconds_bucket{subscriber="order_saga",le="0.005"} 3
chronicle_subscriber_apply_seconds_bucket{subscriber="order_saga",le="+Inf"} 3
chronicle_http_request_duration_seconds_bucket{route="/api/v1/orders",method="POST",le="0.01"} 4
chronicle_http_request_duration_seconds_bucket{route="/api/v1/orders",method="POST",le="+Inf"} 4
chronicle_http_request_duration_seconds_bucket{route="/api/v1/orders",method="GET",le="0.01"} 9
chronicle_http_request_duration_seconds_bucket{route="/api/v1/orders",method="GET",le="+Inf"} 9
"#;

    #[test]
    fn a_phase_counts_only_its_own_samples_interpolated_in_their_bucket() {
        let (before, after) = (Scrape::parse(BEFORE), Scrape::parse(AFTER));
        let stages = after.breakdown(&before, &["/api/v1/orders"]);
        // The 100 new samples all lie between 10 and 20 ms: the median is half-way.
        assert_eq!(stages["relay"]["samples"], 100);
        assert_eq!(stages["relay"]["p50_ms"], 15.0);
        assert_eq!(stages["relay"]["p99_ms"], 19.9);
        // Half of the orders projector's are at most 5 ms; the rest lie past the last
        // bound, which is as far as a histogram can tell.
        assert_eq!(stages["apply.orders"]["samples"], 100);
        assert_eq!(stages["apply.orders"]["p50_ms"], 5.0);
        assert_eq!(stages["apply.order_saga"]["samples"], 3);
        // Only the command route's POSTs.
        assert_eq!(stages["http"]["samples"], 4);
        assert!(stages.get("commit").is_none(), "{stages}");
    }

    #[test]
    fn the_pages_of_several_processes_read_as_one_sum_their_samples() {
        let lateness = |below_1s: u32, all: u32| {
            format!(
                "chronicle_job_run_lateness_seconds_bucket{{le=\"1\"}} {below_1s}\n\
                 chronicle_job_run_lateness_seconds_bucket{{le=\"2\"}} {all}\n\
                 chronicle_job_run_lateness_seconds_bucket{{le=\"+Inf\"}} {all}\n"
            )
        };
        // Three schedulers: 10 runs started within 1 s, and 10 more between 1 and 2 s.
        let before = Scrape::parse(&(lateness(0, 0) + &lateness(0, 0) + &lateness(0, 0)));
        let after = Scrape::parse(&(lateness(4, 4) + &lateness(6, 10) + &lateness(0, 6)));
        let stages = after.breakdown(&before, &[]);
        assert_eq!(stages["run_lateness"]["samples"], 20);
        assert_eq!(stages["run_lateness"]["p50_ms"], 1000.0);
        assert_eq!(stages["run_lateness"]["p99_ms"], 1980.0);
    }
}
