//! One JSON line per measurement, in docs/benchmarks.md's format.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Measurement {
    pub system: &'static str,
    pub workload: &'static str,
    /// What variant of the system ran (`load-from-postgres`, `cache+snapshots`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<&'static str>,
    pub concurrency: usize,
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

impl Measurement {
    pub fn new(
        system: &'static str,
        workload: &'static str,
        concurrency: usize,
        ops: u64,
        elapsed: Duration,
    ) -> Self {
        let seconds = elapsed.as_secs_f64();
        Self {
            system,
            workload,
            label: None,
            concurrency,
            ops,
            seconds: round(seconds, 3),
            ops_per_s: round(ops as f64 / seconds, 0),
            p50_ms: None,
            p99_ms: None,
        }
    }

    pub fn label(mut self, label: &'static str) -> Self {
        self.label = Some(label);
        self
    }

    /// Latency percentiles from per-operation durations.
    pub fn latencies(mut self, mut samples: Vec<Duration>) -> Self {
        if !samples.is_empty() {
            samples.sort_unstable();
            let at = |q: f64| {
                let index =
                    ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
                round(samples[index].as_secs_f64() * 1_000.0, 3)
            };
            self.p50_ms = Some(at(0.50));
            self.p99_ms = Some(at(0.99));
        }
        self
    }

    pub fn print(&self) {
        println!(
            "{}",
            serde_json::to_string(self).expect("a measurement serializes")
        );
    }
}

fn round(value: f64, digits: i32) -> f64 {
    let factor = 10f64.powi(digits);
    (value * factor).round() / factor
}
