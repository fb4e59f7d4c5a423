//! Cron expressions and time zones: parsed with `croner`, evaluated in the job's IANA time
//! zone (`chrono-tz`), so a daily job at 02:30 runs once on the day the clocks skip 02:30
//! (at the first instant after the gap) and once on the day they pass it twice.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::{
    parser::{CronParser, Seconds, Year},
    Cron,
};

use chronicle_schemas::limits::{self, Invalid};

/// Longest cron expression, in characters.
pub const MAX_CRON: usize = 200;
/// Longest time zone name.
pub const MAX_TIMEZONE: usize = 64;

fn parse(expression: &str) -> Result<Cron, Invalid> {
    limits::text("schedule.cron", expression, 1, MAX_CRON)?;
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| Invalid::new("schedule.cron", e.to_string()))
}

/// A cron expression of five fields, or six with seconds first (`0 */5 * * * *`).
///
/// # Errors
/// [`Invalid`] for `schedule.cron`, with the parser's message.
pub fn check_cron(expression: &str) -> Result<(), Invalid> {
    parse(expression).map(drop)
}

/// An IANA time zone name (`Europe/Berlin`, `UTC`).
///
/// # Errors
/// [`Invalid`] for `timezone`.
pub fn check_timezone(name: &str) -> Result<Tz, Invalid> {
    if name.len() > MAX_TIMEZONE {
        return Err(Invalid::new("timezone", "an IANA time zone name"));
    }
    name.parse::<Tz>()
        .map_err(|_| Invalid::new("timezone", "an IANA time zone name, such as Europe/Berlin"))
}

/// The due times of one cron expression in one time zone.
pub struct Occurrences {
    cron: Cron,
    tz: Tz,
}

impl Occurrences {
    /// # Errors
    /// [`Invalid`] when the expression does not parse.
    pub fn new(expression: &str, tz: Tz) -> Result<Self, Invalid> {
        Ok(Self {
            cron: parse(expression)?,
            tz,
        })
    }

    /// The first due time after `t` (never `t` itself), if there is one.
    pub fn after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The last due time at or before `t`, if there is one.
    pub fn at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The last due time before `t`, if there is one.
    pub fn before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn due_times(expression: &str, tz: &str, from: &str, to: &str) -> Vec<DateTime<Utc>> {
        let occurrences = Occurrences::new(expression, check_timezone(tz).unwrap()).unwrap();
        let (mut t, end) = (utc(from), utc(to));
        let mut all = Vec::new();
        while let Some(next) = occurrences.after(t).filter(|n| *n <= end) {
            all.push(next);
            t = next;
        }
        all
    }

    #[test]
    fn seconds_are_optional_and_a_bad_expression_says_why() {
        assert!(check_cron("0 */5 * * * *").is_ok());
        assert!(check_cron("*/5 * * * *").is_ok());
        let bad = check_cron("61 * * * * *").unwrap_err();
        assert_eq!(bad.field, "schedule.cron");
        assert!(!bad.message.is_empty());
        for bad in ["", "not cron", "* * *", "0 0 0 31 2 * 2030 1", "a\u{0}"] {
            assert!(check_cron(bad).is_err(), "{bad:?}");
        }
        assert!(check_cron(&"* ".repeat(200)).is_err());
        assert!(check_timezone("Europe/Berlin").is_ok());
        assert!(check_timezone("Mars/Olympus").is_err());
        assert!(check_timezone(&"x".repeat(10_000)).is_err());
    }

    #[test]
    fn a_daily_job_runs_once_on_the_day_the_clocks_skip_its_time() {
        // Europe/Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
        let runs = due_times(
            "0 30 2 * * *",
            "Europe/Berlin",
            "2026-03-27T12:00:00Z",
            "2026-03-31T12:00:00Z",
        );
        assert_eq!(runs.len(), 4, "{runs:?}");
        let on_the_day: Vec<_> = runs
            .iter()
            .filter(|t| {
                t.with_timezone(&chrono_tz::Europe::Berlin)
                    .date_naive()
                    .to_string()
                    == "2026-03-29"
            })
            .collect();
        assert_eq!(on_the_day.len(), 1, "{runs:?}");
        assert_eq!(
            *on_the_day[0],
            utc("2026-03-29T01:00:00Z"),
            "03:00 CEST, right after the gap"
        );
    }

    #[test]
    fn a_daily_job_runs_once_on_the_day_the_clocks_pass_its_time_twice() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
        let runs = due_times(
            "0 30 2 * * *",
            "Europe/Berlin",
            "2026-10-23T12:00:00Z",
            "2026-10-27T12:00:00Z",
        );
        assert_eq!(runs.len(), 4, "{runs:?}");
        assert!(
            runs.contains(&utc("2026-10-25T00:30:00Z")),
            "the first 02:30 (CEST)"
        );
        assert!(
            !runs.contains(&utc("2026-10-25T01:30:00Z")),
            "not the second"
        );
    }

    #[test]
    fn an_hourly_job_keeps_real_hours_across_both_transitions() {
        let spring = due_times(
            "0 0 * * * *",
            "America/New_York",
            "2026-03-08T04:30:00Z",
            "2026-03-08T09:30:00Z",
        );
        assert_eq!(spring.len(), 5, "one a real hour: {spring:?}");
        let autumn = due_times(
            "0 0 * * * *",
            "America/New_York",
            "2026-11-01T03:30:00Z",
            "2026-11-01T08:30:00Z",
        );
        assert_eq!(autumn.len(), 5, "one a real hour: {autumn:?}");
        let mut sorted = autumn.clone();
        sorted.dedup();
        assert_eq!(sorted, autumn, "no instant twice");
    }

    #[test]
    fn previous_due_times_are_found_too() {
        let every_second = Occurrences::new("* * * * * *", Tz::UTC).unwrap();
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 10).unwrap();
        assert_eq!(every_second.at_or_before(t), Some(t));
        assert_eq!(
            every_second.before(t),
            Some(t - chrono::Duration::seconds(1))
        );
        assert_eq!(
            every_second.after(t),
            Some(t + chrono::Duration::seconds(1))
        );
    }
}
