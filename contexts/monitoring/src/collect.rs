//! Chronicle's own series (the API contract, Monitoring, "Built-in series"), collected by every
//! gateway every `collect_every` and stored like reported samples, labelled with the
//! gateway's `instance`:
//!
//! - host: `chronicle_host_resource_ratio{resource=cpu|memory|disk}` (0–1) and
//!   `chronicle_host_network_bytes_per_second{direction=receive|transmit}` (`sysinfo`);
//! - requests, from this process's own metrics since the last collection, per route template
//!   that had any (idle routes store nothing) and for `route="all"` (always): `chronicle_http_requests_per_second`,
//!   `chronicle_http_error_ratio` (5xx share), `chronicle_http_latency_p99_seconds` (from the
//!   histogram buckets), and `chronicle_availability_ratio` (the non-5xx share of all);
//! - the commands this process ran, per second by outcome (`ok`, `refused`, `conflict`,
//!   `error`): `chronicle_commands_per_second{outcome}`;
//! - every subscriber's lag and what it parked: `chronicle_subscriber_lag_events`,
//!   `chronicle_subscriber_lag_seconds` and `chronicle_subscriber_parked_events`.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use crate::{Limits, Sample};
use chrono::{DateTime, Utc};
use sysinfo::{Disks, Networks, System};

use chronicle_gateway::AppState;

/// Collects until the task is dropped (the gateway aborts it when it stops).
pub(crate) async fn run(state: AppState, every: Duration, instance: String) {
    let collector = tokio::sync::Mutex::new(Collector::new(instance));
    chronicle_bus::periodic::every(
        "built-in series",
        every,
        Duration::ZERO,
        std::future::pending(),
        || async {
            let samples = collector.lock().await.collect(&state).await;
            crate::series::store(state.db.of(crate::NAME), &samples)
                .await
                .map(|_| ())
        },
    )
    .await;
}

/// Counts of one route since the process started, from its own registry.
#[derive(Debug, Default, Clone)]
struct RouteCounts {
    requests: f64,
    errors: f64,
    /// Cumulative count per bucket bound (`le`), the `+Inf` bucket as infinity.
    buckets: BTreeMap<OrderedBound, f64>,
}

/// A bucket bound that orders (bounds are finite or +Inf, never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedBound(f64);
impl Eq for OrderedBound {}
impl PartialOrd for OrderedBound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrderedBound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

struct Collector {
    instance: String,
    system: System,
    disks: Disks,
    networks: Networks,
    last: Option<(Instant, Counters)>,
}

/// What this process counted since it started, from its own registry.
#[derive(Debug, Default)]
struct Counters {
    routes: HashMap<String, RouteCounts>,
    /// Commands run, per outcome.
    commands: BTreeMap<String, f64>,
}

impl Collector {
    fn new(instance: String) -> Self {
        let mut system = System::new();
        system.refresh_cpu_usage();
        Self {
            instance,
            system,
            disks: Disks::new_with_refreshed_list(),
            networks: Networks::new_with_refreshed_list(),
            last: None,
        }
    }

    async fn collect(&mut self, state: &AppState) -> Vec<Sample> {
        let now = Utc::now();
        let started = Instant::now();
        let mut out = Vec::new();
        let elapsed = self
            .last
            .as_ref()
            .map(|(at, _)| started.duration_since(*at));
        self.host(now, elapsed, &mut out);
        let counted = counters_now();
        if let Some((at, before)) = &self.last {
            let seconds = started.duration_since(*at).as_secs_f64().max(0.001);
            if !counted.routes.is_empty() {
                self.requests(now, seconds, &before.routes, &counted.routes, &mut out);
            }
            self.commands(now, seconds, &before.commands, &counted.commands, &mut out);
        }
        self.last = Some((started, counted));
        self.subscribers(state, now, &mut out).await;
        out
    }

    fn sample(
        &self,
        now: DateTime<Utc>,
        metric: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) -> Option<Sample> {
        value.is_finite().then(|| Sample {
            metric: metric.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .chain([("instance".to_owned(), self.instance.clone())])
                .collect(),
            value,
            at: now,
        })
    }

    fn host(&mut self, now: DateTime<Utc>, elapsed: Option<Duration>, out: &mut Vec<Sample>) {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        self.networks.refresh(true);
        let cpu = f64::from(self.system.global_cpu_usage()) / 100.0;
        let memory = ratio(self.system.used_memory(), self.system.total_memory());
        let disk = self
            .disks
            .iter()
            .map(|d| {
                ratio(
                    d.total_space().saturating_sub(d.available_space()),
                    d.total_space(),
                )
            })
            .fold(0.0, f64::max);
        let metric = "chronicle_host_resource_ratio";
        out.extend(self.sample(now, metric, &[("resource", "cpu")], cpu));
        out.extend(self.sample(now, metric, &[("resource", "memory")], memory));
        out.extend(self.sample(now, metric, &[("resource", "disk")], disk));
        if let Some(elapsed) = elapsed {
            let seconds = elapsed.as_secs_f64().max(0.001);
            let (rx, tx) = self.networks.iter().fold((0u64, 0u64), |(r, t), (_, n)| {
                (r + n.received(), t + n.transmitted())
            });
            let metric = "chronicle_host_network_bytes_per_second";
            out.extend(self.sample(
                now,
                metric,
                &[("direction", "receive")],
                rx as f64 / seconds,
            ));
            out.extend(self.sample(
                now,
                metric,
                &[("direction", "transmit")],
                tx as f64 / seconds,
            ));
        }
    }

    fn requests(
        &self,
        now: DateTime<Utc>,
        seconds: f64,
        before: &HashMap<String, RouteCounts>,
        after: &HashMap<String, RouteCounts>,
        out: &mut Vec<Sample>,
    ) {
        let mut all = RouteCounts::default();
        for (route, counts) in after {
            let delta = delta(before.get(route), counts);
            all.requests += delta.requests;
            all.errors += delta.errors;
            for (bound, n) in &delta.buckets {
                *all.buckets.entry(*bound).or_default() += n;
            }
            // A route with no request since the last collection adds nothing: idle routes
            // would otherwise fill the store with zeros (`route="all"` is always stored).
            if delta.requests > 0.0 {
                self.route_series(now, route, seconds, &delta, out);
            }
        }
        self.route_series(now, "all", seconds, &all, out);
        if all.requests > 0.0 {
            out.extend(self.sample(
                now,
                "chronicle_availability_ratio",
                &[],
                1.0 - all.errors / all.requests,
            ));
        }
    }

    /// Commands per second by outcome, for every outcome this process has seen (0 when none
    /// since the last collection: a chart of refusals drops to zero rather than stopping).
    fn commands(
        &self,
        now: DateTime<Utc>,
        seconds: f64,
        before: &BTreeMap<String, f64>,
        after: &BTreeMap<String, f64>,
        out: &mut Vec<Sample>,
    ) {
        for (outcome, total) in after {
            let before = before.get(outcome).copied().unwrap_or(0.0);
            let ran = if *total >= before {
                total - before
            } else {
                *total
            };
            out.extend(self.sample(
                now,
                "chronicle_commands_per_second",
                &[("outcome", outcome)],
                ran / seconds,
            ));
        }
    }

    fn route_series(
        &self,
        now: DateTime<Utc>,
        route: &str,
        seconds: f64,
        d: &RouteCounts,
        out: &mut Vec<Sample>,
    ) {
        let labels = [("route", route)];
        out.extend(self.sample(
            now,
            "chronicle_http_requests_per_second",
            &labels,
            d.requests / seconds,
        ));
        if d.requests > 0.0 {
            out.extend(self.sample(
                now,
                "chronicle_http_error_ratio",
                &labels,
                d.errors / d.requests,
            ));
            if let Some(p99) = quantile(&d.buckets, 0.99) {
                out.extend(self.sample(now, "chronicle_http_latency_p99_seconds", &labels, p99));
            }
        }
    }

    async fn subscribers(&self, state: &AppState, now: DateTime<Utc>, out: &mut Vec<Sample>) {
        let js = async_nats::jetstream::new(state.nats.clone());
        for subscriber in &state.config.subscribers {
            let status = tokio::time::timeout(
                Duration::from_secs(1),
                chronicle_bus::status(
                    state.db.of(subscriber.context),
                    &js,
                    &subscriber.name,
                    &subscriber.durable,
                ),
            )
            .await;
            let Ok(Ok(status)) = status else {
                continue;
            };
            let labels = [("subscriber", status.name.as_str())];
            out.extend(self.sample(
                now,
                "chronicle_subscriber_lag_events",
                &labels,
                status.lag_events as f64,
            ));
            out.extend(self.sample(
                now,
                "chronicle_subscriber_lag_seconds",
                &labels,
                status.lag_seconds,
            ));
            out.extend(self.sample(
                now,
                "chronicle_subscriber_parked_events",
                &labels,
                status.parked as f64,
            ));
        }
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// `after - before`, per counter (a counter that went down was reset: `after` itself).
fn delta(before: Option<&RouteCounts>, after: &RouteCounts) -> RouteCounts {
    let diff = |b: f64, a: f64| if a >= b { a - b } else { a };
    let Some(before) = before else {
        return after.clone();
    };
    RouteCounts {
        requests: diff(before.requests, after.requests),
        errors: diff(before.errors, after.errors),
        buckets: after
            .buckets
            .iter()
            .map(|(bound, a)| {
                (
                    *bound,
                    diff(before.buckets.get(bound).copied().unwrap_or(0.0), *a),
                )
            })
            .collect(),
    }
}

/// The upper bound of the first bucket holding the `q` quantile (cumulative buckets); the
/// largest finite bound when it falls in `+Inf`.
fn quantile(buckets: &BTreeMap<OrderedBound, f64>, q: f64) -> Option<f64> {
    let total = buckets.iter().next_back().map(|(_, n)| *n)?;
    if total <= 0.0 {
        return None;
    }
    let finite_max = buckets
        .keys()
        .map(|b| b.0)
        .filter(|b| b.is_finite())
        .fold(None, |m: Option<f64>, b| Some(m.map_or(b, |m| m.max(b))));
    buckets
        .iter()
        .find(|(_, n)| **n >= q * total)
        .map(|(bound, _)| {
            if bound.0.is_finite() {
                bound.0
            } else {
                finite_max.unwrap_or(0.0)
            }
        })
}

/// This process's request counts per route template and command counts per outcome, read
/// from its own registry.
fn counters_now() -> Counters {
    let text = chronicle_telemetry::render();
    let now = Utc::now();
    let limits = Limits {
        now,
        oldest: now - chrono::Duration::days(1),
        source: None,
        own_series: true,
    };
    let Ok(samples) = crate::parse_text(&text, &limits) else {
        return Counters::default();
    };
    let mut counted = Counters::default();
    for sample in samples {
        if sample.metric == "chronicle_commands_total" {
            if let Some(outcome) = sample.labels.get("outcome") {
                *counted.commands.entry(outcome.clone()).or_default() += sample.value;
            }
            continue;
        }
        let Some(route) = sample.labels.get("route") else {
            continue;
        };
        let counts = counted.routes.entry(route.clone()).or_default();
        match sample.metric.as_str() {
            "chronicle_http_requests_total" => {
                counts.requests += sample.value;
                if sample
                    .labels
                    .get("status")
                    .is_some_and(|s| s.starts_with('5'))
                {
                    counts.errors += sample.value;
                }
            }
            "chronicle_http_request_duration_seconds_bucket" => {
                let bound = match sample.labels.get("le").map(String::as_str) {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => match le.parse() {
                        Ok(le) => le,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                *counts.buckets.entry(OrderedBound(bound)).or_default() += sample.value;
            }
            _ => {}
        }
    }
    counted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_p99_is_the_bound_of_the_bucket_reaching_99_percent() {
        let buckets: BTreeMap<OrderedBound, f64> = [
            (0.01, 90.0),
            (0.1, 98.0),
            (1.0, 100.0),
            (f64::INFINITY, 100.0),
        ]
        .into_iter()
        .map(|(b, n)| (OrderedBound(b), n))
        .collect();
        assert_eq!(quantile(&buckets, 0.99), Some(1.0));
        assert_eq!(quantile(&buckets, 0.5), Some(0.01));
        let slow: BTreeMap<OrderedBound, f64> = [(0.01, 0.0), (f64::INFINITY, 10.0)]
            .into_iter()
            .map(|(b, n)| (OrderedBound(b), n))
            .collect();
        assert_eq!(
            quantile(&slow, 0.99),
            Some(0.01),
            "beyond the last finite bound"
        );
        assert_eq!(quantile(&BTreeMap::new(), 0.99), None);
    }

    #[test]
    fn a_counter_that_went_down_was_reset() {
        let before = RouteCounts {
            requests: 10.0,
            errors: 2.0,
            buckets: BTreeMap::new(),
        };
        let after = RouteCounts {
            requests: 3.0,
            errors: 3.0,
            buckets: BTreeMap::new(),
        };
        let d = delta(Some(&before), &after);
        assert_eq!((d.requests, d.errors), (3.0, 1.0));
    }
}
