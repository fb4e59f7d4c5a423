//! Samples as they are reported (the API contract, `POST /api/v1/monitoring/samples`): the Prometheus
//! text exposition format or JSON, checked against the limits every stored sample meets.
//!
//! Text is parsed with `prom_text_format_parser`, one line at a time, so that a refusal
//! names its line. A histogram or summary is stored as the series its lines name
//! (`*_bucket` with `le`, `*_sum`, `*_count`), as Prometheus itself stores them. Values that
//! are not finite (`NaN`, `±Inf`, which an empty summary reports) are dropped, not stored:
//! no aggregation could use them.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::Deserialize;

use chronicle_schemas::limits;

/// Longest metric name.
pub const MAX_METRIC_NAME: usize = 200;
/// Longest label name.
pub const MAX_LABEL_NAME: usize = 100;
/// Longest label value, in characters.
pub const MAX_LABEL_VALUE: usize = 1_024;
/// Most labels on one sample (the `source` label included).
pub const MAX_LABELS: usize = 16;
/// Most samples in one request.
pub const MAX_SAMPLES: usize = 10_000;
/// Furthest in the future a sample's time may be (clocks differ a little).
pub const MAX_AHEAD_SECONDS: i64 = 300;
/// Longest source name (`Chronicle-Source`), stored as the `source` label.
pub const MAX_SOURCE: usize = 200;
/// Largest magnitude of a stored value. Sums of many samples (a minute's rollup, a `sum`
/// query) must stay finite in a `double precision` column, or PostgreSQL refuses them with
/// an overflow: one hostile sample would break every later report and query of its series.
pub const MAX_VALUE: f64 = 1e18;

/// One measurement of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    pub at: DateTime<Utc>,
}

/// Why a report was refused: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct SampleError {
    /// `line 3` in text, `sample 3` in JSON (both counted from 1), or `request`.
    pub location: String,
    pub message: String,
}

impl SampleError {
    fn at(location: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            message: message.into(),
        }
    }
}

/// What every sample of one report is checked against.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The time of samples that carry none.
    pub now: DateTime<Utc>,
    /// The oldest time a sample may carry (older ones would be dropped by retention at once).
    pub oldest: DateTime<Utc>,
    /// The `source` label added to each sample (`Chronicle-Source`), unless it has one.
    pub source: Option<String>,
    /// Whether metric names Chronicle keeps for itself ([`RESERVED_PREFIXES`]) are taken:
    /// only by Chronicle's own collector. A reporter writing `chronicle_availability_ratio`
    /// could otherwise raise or silence the operators' alerts.
    pub own_series: bool,
}

/// The metric name prefixes of Chronicle's own series (built-in and business).
pub const RESERVED_PREFIXES: [&str; 2] = ["chronicle_", "business_"];

/// Whether `name` is a metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`, at most 200 characters.
pub fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_METRIC_NAME
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Whether `name` is a label name: `[a-zA-Z_][a-zA-Z0-9_]*`, at most 100 characters, not
/// beginning with `__` (reserved, as in Prometheus).
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_LABEL_NAME
        && !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a `Chronicle-Source` header value.
///
/// # Errors
/// When it is empty, too long or holds control characters.
pub fn check_source(source: &str) -> Result<(), SampleError> {
    limits::text("Chronicle-Source", source, 1, MAX_SOURCE)
        .map_err(|invalid| SampleError::at("Chronicle-Source", invalid.message))
}

/// The samples of a Prometheus text exposition (`text/plain; version=0.0.4`).
///
/// # Errors
/// The first line that is not a comment, a blank line or a valid sample within the limits,
/// by its number; more than [`MAX_SAMPLES`] samples.
pub fn parse_text(text: &str, limits: &Limits) -> Result<Vec<Sample>, SampleError> {
    let mut samples = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let location = format!("line {}", index + 1);
        let trimmed = line.trim();
        // Comments, HELP and TYPE: the series names carry all we store.
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (metrics, error) =
            prom_text_format_parser::parse_scrape(&without_empty_labels(trimmed));
        if error.is_some() {
            return Err(SampleError::at(
                location,
                "not a sample line: `name{label=\"value\",...} value [timestamp_ms]`",
            ));
        }
        for metric in metrics {
            for sample in metric.samples {
                let value: f64 = sample
                    .value
                    .value
                    .parse()
                    .map_err(|_| SampleError::at(&location, "the value is not a number"))?;
                let at = match sample.value.timestamp {
                    None => limits.now,
                    Some(ms) => Utc.timestamp_millis_opt(ms).single().ok_or_else(|| {
                        SampleError::at(&location, "the timestamp is out of range")
                    })?,
                };
                let labels = sample
                    .labels
                    .iter()
                    .map(|l| (l.key.clone(), unescape(&l.value)))
                    .collect::<Vec<_>>();
                if let Some(sample) = checked(&metric.name, labels, value, at, limits, &location)? {
                    samples.push(sample);
                }
                if samples.len() > MAX_SAMPLES {
                    return Err(SampleError::at(
                        "request",
                        format!("more than {MAX_SAMPLES} samples"),
                    ));
                }
            }
        }
    }
    Ok(samples)
}

/// One sample of the JSON format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSample {
    metric: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    value: f64,
    #[serde(default)]
    at: Option<JsonTime>,
}

/// A sample's time: RFC 3339, or seconds since the epoch.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonTime {
    Text(DateTime<Utc>),
    Seconds(f64),
}

/// The samples of a JSON report: `[{"metric","labels":{},"value","at"?}]`.
///
/// # Errors
/// A body that is not that shape, or the first sample outside the limits, by its position.
pub fn parse_json(body: &[u8], limits: &Limits) -> Result<Vec<Sample>, SampleError> {
    let raw: Vec<serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| SampleError::at("request", format!("not a JSON array of samples: {e}")))?;
    if raw.len() > MAX_SAMPLES {
        return Err(SampleError::at(
            "request",
            format!("more than {MAX_SAMPLES} samples"),
        ));
    }
    let mut samples = Vec::with_capacity(raw.len());
    for (index, value) in raw.into_iter().enumerate() {
        let location = format!("sample {}", index + 1);
        let sample: JsonSample =
            serde_json::from_value(value).map_err(|e| SampleError::at(&location, e.to_string()))?;
        let at = match sample.at {
            None => limits.now,
            Some(JsonTime::Text(at)) => at,
            Some(JsonTime::Seconds(s)) => {
                if !s.is_finite() || s.abs() > 1e11 {
                    return Err(SampleError::at(&location, "`at` is out of range"));
                }
                Utc.timestamp_millis_opt((s * 1000.0) as i64)
                    .single()
                    .ok_or_else(|| SampleError::at(&location, "`at` is out of range"))?
            }
        };
        let labels = sample.labels.into_iter().collect();
        if let Some(sample) = checked(&sample.metric, labels, sample.value, at, limits, &location)?
        {
            samples.push(sample);
        }
    }
    Ok(samples)
}

/// `value` of `metric` with `labels` at `at`, if it is within the limits; `None` for a value
/// that is not finite (dropped).
fn checked(
    metric: &str,
    labels: Vec<(String, String)>,
    value: f64,
    at: DateTime<Utc>,
    limits: &Limits,
    location: &str,
) -> Result<Option<Sample>, SampleError> {
    if !limits.own_series && RESERVED_PREFIXES.iter().any(|p| metric.starts_with(p)) {
        return Err(SampleError::at(
            location,
            format!(
                "{metric:?}: names beginning chronicle_ or business_ are Chronicle's own series"
            ),
        ));
    }
    if !is_metric_name(metric) {
        return Err(SampleError::at(
            location,
            format!("{metric:?} is not a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*, at most {MAX_METRIC_NAME} characters)"),
        ));
    }
    let mut map = BTreeMap::new();
    for (key, value) in labels {
        if !is_label_name(&key) {
            return Err(SampleError::at(
                location,
                format!(
                    "{key:?} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*, not beginning with __)"
                ),
            ));
        }
        limits::text(&key, &value, 0, MAX_LABEL_VALUE)
            .map_err(|invalid| SampleError::at(location, format!("label {}", invalid)))?;
        if map.insert(key.clone(), value).is_some() {
            return Err(SampleError::at(
                location,
                format!("label {key:?} appears twice"),
            ));
        }
    }
    if let Some(source) = &limits.source {
        map.entry("source".to_owned())
            .or_insert_with(|| source.clone());
    }
    if map.len() > MAX_LABELS {
        return Err(SampleError::at(
            location,
            format!("more than {MAX_LABELS} labels"),
        ));
    }
    if at > limits.now + Duration::seconds(MAX_AHEAD_SECONDS) {
        return Err(SampleError::at(location, "the time is in the future"));
    }
    if at < limits.oldest {
        return Err(SampleError::at(
            location,
            "the time is older than the retention",
        ));
    }
    if !value.is_finite() {
        return Ok(None);
    }
    if value.abs() > MAX_VALUE {
        return Err(SampleError::at(
            location,
            "the value's magnitude is above 1e18",
        ));
    }
    Ok(Some(Sample {
        metric: metric.to_owned(),
        labels: map,
        value,
        at,
    }))
}

/// `name{} value` as `name value`: an empty label set is valid text format, which the
/// parser does not take.
fn without_empty_labels(line: &str) -> std::borrow::Cow<'_, str> {
    if let Some(open) = line.find('{') {
        let rest = &line[open + 1..];
        let inner = rest.trim_start();
        if inner.starts_with('}') && !line[..open].contains(char::is_whitespace) {
            let close = open + 1 + (rest.len() - inner.len());
            return format!("{}{}", &line[..open], &line[close + 1..]).into();
        }
    }
    line.into()
}

/// A label value as the text format escapes it (`\\`, `\"`, `\n`), unescaped.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap();
        Limits {
            now,
            oldest: now - Duration::days(15),
            source: Some("host-1".into()),
            own_series: false,
        }
    }

    #[test]
    fn text_with_types_histograms_escapes_and_timestamps_gives_every_series() {
        let text = "# HELP http_requests_total Requests.\n\
                    # TYPE http_requests_total counter\n\
                    http_requests_total{method=\"post\",code=\"200\"} 1027 1796212800000\n\
                    \n\
                    # TYPE latency_seconds histogram\n\
                    latency_seconds_bucket{le=\"0.1\"} 3\n\
                    latency_seconds_bucket{le=\"+Inf\"} 5\n\
                    latency_seconds_sum 0.7\n\
                    latency_seconds_count 5\n\
                    quoted{path=\"a\\\"b\\\\c\\nd\"} -2.5e3\n\
                    summary_quantile{quantile=\"0.5\"} NaN\n";
        let samples = parse_text(text, &limits()).unwrap();
        let names: Vec<&str> = samples.iter().map(|s| s.metric.as_str()).collect();
        assert_eq!(
            names,
            [
                "http_requests_total",
                "latency_seconds_bucket",
                "latency_seconds_bucket",
                "latency_seconds_sum",
                "latency_seconds_count",
                "quoted"
            ],
            "NaN is dropped"
        );
        assert_eq!(samples[0].value, 1027.0);
        assert_eq!(samples[0].at.timestamp_millis(), 1_796_212_800_000);
        assert_eq!(samples[0].labels["code"], "200");
        assert_eq!(samples[0].labels["source"], "host-1");
        assert_eq!(samples[2].labels["le"], "+Inf");
        assert_eq!(samples[5].labels["path"], "a\"b\\c\nd");
        assert_eq!(samples[5].value, -2500.0);
        assert_eq!(samples[1].at, limits().now);
    }

    #[test]
    fn chronicles_own_series_are_refused_from_reporters() {
        let error = parse_text("ok 1\nchronicle_availability_ratio 0\n", &limits()).unwrap_err();
        assert_eq!(error.location, "line 2");
        let json = br#"[{"metric":"business_orders_placed","value":1e6}]"#;
        assert_eq!(
            parse_json(json, &limits()).unwrap_err().location,
            "sample 1"
        );
        let own = Limits {
            own_series: true,
            ..limits()
        };
        assert_eq!(parse_text("chronicle_x 1\n", &own).unwrap().len(), 1);
    }

    #[test]
    fn empty_label_values_and_empty_braces_are_samples() {
        let samples = parse_text("a{x=\"\"} 1\nb{} 2\n", &limits()).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].labels["x"], "");
    }

    #[test]
    fn a_malformed_line_is_named_by_its_number() {
        for (text, line) in [
            ("ok 1\nbroken{ 2\n", "line 2"),
            ("ok 1\n\n# c\nno_value\n", "line 4"),
            ("a{x=\"1\"} one\n", "line 1"),
            ("ok 1\n9starts_with_digit 1\n", "line 2"),
            ("a{__reserved=\"1\"} 1\n", "line 1"),
            ("a{x=\"1\",x=\"2\"} 1\n", "line 1"),
            ("a{x=\"nul\0\"} 1\n", "line 1"),
            ("a 1 99999999999999999\n", "line 1"),
            ("a 1e300\n", "line 1"),
        ] {
            let error = parse_text(text, &limits()).unwrap_err();
            assert_eq!(error.location, line, "{text:?}: {error}");
        }
    }

    #[test]
    fn json_samples_take_rfc3339_or_epoch_seconds_and_name_the_bad_one() {
        let body = br#"[{"metric":"cpu","labels":{"host":"a"},"value":0.5},
                         {"metric":"cpu","value":1,"at":"2026-12-02T11:59:00Z"},
                         {"metric":"cpu","value":2,"at":1796212700}]"#;
        let samples = parse_json(body, &limits()).unwrap();
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].labels["host"], "a");
        assert_eq!(samples[1].at.timestamp(), 1_796_212_740);
        assert_eq!(samples[2].at.timestamp(), 1_796_212_700);
        let bad = br#"[{"metric":"cpu","value":1},{"metric":"bad name","value":1}]"#;
        assert_eq!(parse_json(bad, &limits()).unwrap_err().location, "sample 2");
        let future = br#"[{"metric":"cpu","value":1,"at":"2027-01-01T00:00:00Z"}]"#;
        assert_eq!(
            parse_json(future, &limits()).unwrap_err().location,
            "sample 1"
        );
        let not_array = br#"{"metric":"cpu"}"#;
        assert_eq!(
            parse_json(not_array, &limits()).unwrap_err().location,
            "request"
        );
    }

    #[test]
    fn too_many_labels_or_samples_are_refused() {
        let labels: Vec<String> = (0..16).map(|i| format!("l{i}=\"v\"")).collect();
        let text = format!("a{{{}}} 1\n", labels.join(","));
        assert!(
            parse_text(&text, &limits()).is_err(),
            "16 labels and source"
        );
        let text = "a 1\n".repeat(MAX_SAMPLES + 1);
        assert_eq!(
            parse_text(&text, &limits()).unwrap_err().location,
            "request"
        );
    }
}
