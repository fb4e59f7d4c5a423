//! The monitoring context's settings (`CHRONICLE_METRICS_RETENTION`, ...), as flags and
//! variables: `chronicle --help` lists them with the rest, and they configure the routes,
//! the collection of Chronicle's own series and the alert engine. Where notifications may
//! go is the notifier's (`CHRONICLE_NOTIFY_ALLOW`, `CHRONICLE_SMTP_*`), shared with the
//! scheduler that delivers them.

use std::time::Duration;

use chronicle_gateway::ContextSettings;
use chronicle_host::{parse_duration, Configure};

use crate::{AlertEngineConfig, MonitoringConfig};

/// Samples' retention, alert evaluation, and the built-in series.
#[derive(Debug, Clone, clap::Args)]
pub struct MonitoringSettings {
    /// How long samples are kept; per-minute rollups stay for `CHRONICLE_ROLLUP_RETENTION`.
    #[arg(
        long,
        env = "CHRONICLE_METRICS_RETENTION",
        default_value = "15d",
        value_parser = parse_duration,
        global = true
    )]
    pub metrics_retention: Duration,
    /// How long per-minute rollups of samples are kept.
    #[arg(
        long,
        env = "CHRONICLE_ROLLUP_RETENTION",
        default_value = "400d",
        value_parser = parse_duration,
        global = true
    )]
    pub rollup_retention: Duration,
    /// How often each gateway collects Chronicle's own series (host, requests per route,
    /// subscriber lag); 0 turns it off.
    #[arg(
        long,
        env = "CHRONICLE_COLLECT_EVERY",
        default_value = "10s",
        value_parser = parse_duration,
        global = true
    )]
    pub collect_every: Duration,
    /// How often the alert engine evaluates every rule.
    #[arg(
        long,
        env = "CHRONICLE_ALERT_EVERY",
        default_value = "10s",
        value_parser = parse_duration,
        global = true
    )]
    pub alert_every: Duration,
}

impl Configure for MonitoringSettings {
    fn configure(self, settings: &mut ContextSettings) {
        settings
            .set(MonitoringConfig {
                retention: self.metrics_retention,
                collect_every: (!self.collect_every.is_zero()).then_some(self.collect_every),
            })
            .set(AlertEngineConfig {
                every: self.alert_every,
                retention: self.metrics_retention,
                rollup_retention: self.rollup_retention,
                ..AlertEngineConfig::default()
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    #[test]
    fn the_flags_set_the_routes_and_the_alert_engine() {
        let command = MonitoringSettings::augment_args(clap::Command::new("chronicle"));
        let matches = command
            .try_get_matches_from([
                "chronicle",
                "--metrics-retention",
                "2d",
                "--collect-every",
                "0",
                "--alert-every",
                "500ms",
            ])
            .unwrap();
        let mut settings = ContextSettings::default();
        MonitoringSettings::from_arg_matches(&matches)
            .unwrap()
            .configure(&mut settings);
        let routes = settings.get::<MonitoringConfig>();
        assert_eq!(routes.retention, Duration::from_secs(2 * 86_400));
        assert_eq!(routes.collect_every, None, "0 turns collection off");
        let engine = settings.get::<AlertEngineConfig>();
        assert_eq!(engine.every, Duration::from_millis(500));
        assert_eq!(engine.retention, Duration::from_secs(2 * 86_400));
        assert_eq!(engine.rollup_retention, Duration::from_secs(400 * 86_400));
        assert!(engine.default_rules);
    }
}
