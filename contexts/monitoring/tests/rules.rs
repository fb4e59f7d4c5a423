//! The rule aggregate, given/when/then: an alert goes pending when its condition holds,
//! fires once it has held for `for_seconds`, is acknowledged, resolves when the condition
//! stops, and a later one fires again; a slower engine's evaluation decides nothing. Then
//! random evaluations, and one alert's life as an event stream.

use std::collections::BTreeMap;

use chronicle_monitoring::{
    check_channels, check_spec_limits, default_rules, Aggregation, Channel, Comparison, Rule,
    RuleCommand as C, RuleError, RuleEvent as E, RuleSpec, Severity,
};
use chronicle_scheduler::AllowList;
use chronicle_schemas::testing::{execute, projectable};
use chrono::{DateTime, Utc};
use cqrs_es::test::TestFramework;
use proptest::prelude::*;

type Given = TestFramework<Rule>;

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("a valid time")
}

fn orders_per_minute() -> RuleSpec {
    RuleSpec {
        name: "Orders per minute over 5".into(),
        metric: "business_orders_placed".into(),
        labels: BTreeMap::new(),
        agg: Aggregation::Sum,
        window_seconds: 60,
        op: Comparison::Above,
        threshold: 5.0,
        for_seconds: 30,
        severity: Severity::Warning,
        channels: vec![Channel::Webhook {
            url: "http://127.0.0.1:9/hook".into(),
        }],
    }
}

fn created() -> E {
    E::RuleCreated {
        rule_id: "r1".into(),
        spec: orders_per_minute(),
        created_by: "staff".into(),
        created_at: at(0),
    }
}

fn evaluate(seconds: i64, value: f64) -> C {
    C::Evaluate {
        value: Some(value),
        at: at(seconds),
    }
}

fn pending(seconds: i64, value: f64) -> E {
    E::AlertPending {
        alert_id: "r1.1".into(),
        value,
        at: at(seconds),
    }
}

fn firing(seconds: i64, value: f64) -> E {
    E::AlertFiring {
        alert_id: "r1.1".into(),
        value,
        at: at(seconds),
    }
}

#[test]
fn a_condition_that_holds_makes_an_alert_pending_then_firing_after_for_seconds() {
    Given::with(())
        .given(vec![created()])
        .when(evaluate(10, 7.0))
        .then_expect_events(vec![pending(10, 7.0)]);
    Given::with(())
        .given(vec![created(), pending(10, 7.0)])
        .when(evaluate(30, 8.0))
        .then_expect_events(vec![]);
    Given::with(())
        .given(vec![created(), pending(10, 7.0)])
        .when(evaluate(40, 8.0))
        .then_expect_events(vec![firing(40, 8.0)]);
}

#[test]
fn with_for_seconds_zero_an_alert_fires_at_once() {
    let spec = RuleSpec {
        for_seconds: 0,
        ..orders_per_minute()
    };
    Given::with(())
        .given(vec![E::RuleCreated {
            rule_id: "r1".into(),
            spec,
            created_by: "staff".into(),
            created_at: at(0),
        }])
        .when(evaluate(10, 6.0))
        .then_expect_events(vec![pending(10, 6.0), firing(10, 6.0)]);
}

#[test]
fn a_pending_alert_whose_condition_stops_resolves_without_having_fired() {
    Given::with(())
        .given(vec![created(), pending(10, 7.0)])
        .when(evaluate(20, 1.0))
        .then_expect_events(vec![E::AlertResolved {
            alert_id: "r1.1".into(),
            value: Some(1.0),
            fired: false,
            at: at(20),
        }]);
    // No data is not a condition that holds.
    Given::with(())
        .given(vec![created(), pending(10, 7.0), firing(40, 7.0)])
        .when(C::Evaluate {
            value: None,
            at: at(50),
        })
        .then_expect_events(vec![E::AlertResolved {
            alert_id: "r1.1".into(),
            value: None,
            fired: true,
            at: at(50),
        }]);
}

#[test]
fn only_a_firing_alert_is_acknowledged_and_twice_is_once() {
    let ack = |id: &str| C::Acknowledge {
        alert_id: id.into(),
        by: "staff".into(),
        at: at(50),
    };
    Given::with(())
        .given(vec![created(), pending(10, 7.0), firing(40, 7.0)])
        .when(ack("r1.1"))
        .then_expect_events(vec![E::AlertAcknowledged {
            alert_id: "r1.1".into(),
            by: "staff".into(),
            at: at(50),
        }]);
    Given::with(())
        .given(vec![
            created(),
            pending(10, 7.0),
            firing(40, 7.0),
            E::AlertAcknowledged {
                alert_id: "r1.1".into(),
                by: "staff".into(),
                at: at(45),
            },
        ])
        .when(ack("r1.1"))
        .then_expect_events(vec![]);
    Given::with(())
        .given(vec![created(), pending(10, 7.0)])
        .when(ack("r1.1"))
        .then_expect_error(RuleError::NotFiring("pending"));
    Given::with(())
        .given(vec![created(), pending(10, 7.0), firing(40, 7.0)])
        .when(ack("r1.2"))
        .then_expect_error(RuleError::NoSuchAlert);
    Given::with(())
        .given(vec![
            created(),
            pending(10, 7.0),
            firing(40, 7.0),
            E::AlertResolved {
                alert_id: "r1.1".into(),
                value: Some(1.0),
                fired: true,
                at: at(60),
            },
        ])
        .when(ack("r1.1"))
        .then_expect_error(RuleError::NotFiring("resolved"));
}

#[test]
fn an_evaluation_older_than_the_last_transition_decides_nothing() {
    // A second engine measured before the first one's evaluation made the alert fire.
    Given::with(())
        .given(vec![created(), pending(10, 7.0), firing(40, 7.0)])
        .when(evaluate(39, 0.0))
        .then_expect_events(vec![]);
    Given::with(())
        .given(vec![created(), pending(10, 7.0)])
        .when(evaluate(10, 9.0))
        .then_expect_events(vec![]);
}

#[test]
fn changing_or_deleting_a_rule_resolves_its_open_alert() {
    let changed = RuleSpec {
        threshold: 100.0,
        ..orders_per_minute()
    };
    Given::with(())
        .given(vec![created(), pending(10, 7.0), firing(40, 7.0)])
        .when(C::Change {
            spec: changed.clone(),
            by: "staff".into(),
            now: at(50),
        })
        .then_expect_events(vec![
            E::AlertResolved {
                alert_id: "r1.1".into(),
                value: None,
                fired: true,
                at: at(50),
            },
            E::RuleChanged {
                spec: changed,
                changed_by: "staff".into(),
                changed_at: at(50),
            },
        ]);
    Given::with(())
        .given(vec![
            created(),
            E::RuleDeleted {
                deleted_by: "staff".into(),
                deleted_at: at(5),
            },
        ])
        .when(evaluate(10, 9.0))
        .then_expect_error(RuleError::NotFound);
}

#[test]
fn specs_outside_the_limits_are_refused_with_the_field() {
    let cases: Vec<(RuleSpec, &str)> = vec![
        (
            RuleSpec {
                name: String::new(),
                ..orders_per_minute()
            },
            "name",
        ),
        (
            RuleSpec {
                name: "a\0b".into(),
                ..orders_per_minute()
            },
            "name",
        ),
        (
            RuleSpec {
                metric: "bad metric".into(),
                ..orders_per_minute()
            },
            "metric",
        ),
        (
            RuleSpec {
                window_seconds: 5,
                ..orders_per_minute()
            },
            "window_seconds",
        ),
        (
            RuleSpec {
                for_seconds: 100_000,
                ..orders_per_minute()
            },
            "for_seconds",
        ),
        (
            RuleSpec {
                threshold: f64::NAN,
                ..orders_per_minute()
            },
            "threshold",
        ),
        (
            RuleSpec {
                threshold: 1e300,
                ..orders_per_minute()
            },
            "threshold",
        ),
        (
            RuleSpec {
                channels: vec![Channel::Email {
                    to: "no-at-sign".into(),
                }],
                ..orders_per_minute()
            },
            "channels.to",
        ),
        (
            RuleSpec {
                channels: vec![Channel::Webhook {
                    url: "http://user:pw@127.0.0.1/".into(),
                }],
                ..orders_per_minute()
            },
            "channels.url",
        ),
        (
            RuleSpec {
                labels: BTreeMap::from([("__name__".to_owned(), "x".to_owned())]),
                ..orders_per_minute()
            },
            "labels",
        ),
    ];
    for (spec, field) in cases {
        let error = check_spec_limits(&spec).unwrap_err();
        assert_eq!(error.field, field, "{spec:?}");
        let refused = execute(
            &mut Rule::default(),
            C::Create {
                rule_id: "r1".into(),
                spec,
                by: "staff".into(),
                now: at(0),
            },
            &(),
        );
        assert!(matches!(refused, Err(RuleError::Invalid(_))));
    }
}

#[test]
fn webhooks_go_only_to_hosts_the_notify_list_allows() {
    let spec = orders_per_minute();
    assert!(check_channels(&spec, &AllowList::parse("127.0.0.1").unwrap()).is_ok());
    let refused = check_channels(&spec, &AllowList::parse("hooks.example").unwrap()).unwrap_err();
    assert!(
        refused.message.contains("CHRONICLE_NOTIFY_ALLOW"),
        "{refused}"
    );
}

#[test]
fn the_default_rules_are_the_seeds_four_and_within_the_limits() {
    let defaults = default_rules();
    assert_eq!(defaults.len(), 4);
    for (id, spec) in defaults {
        check_spec_limits(&spec).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(chronicle_monitoring::valid_id(id));
    }
}

fn command() -> impl Strategy<Value = C> {
    prop_oneof![
        (
            0i64..600,
            prop_oneof![
                Just(None),
                (-10.0f64..20.0).prop_map(Some),
                Just(Some(f64::NAN)),
                Just(Some(f64::INFINITY))
            ]
        )
            .prop_map(|(s, value)| C::Evaluate { value, at: at(s) }),
        (0i64..600, 1u64..4).prop_map(|(s, n)| C::Acknowledge {
            alert_id: format!("r1.{n}"),
            by: "staff".into(),
            at: at(s),
        }),
    ]
}

proptest! {
    #[test]
    fn alerts_pass_through_their_states_in_order_and_every_event_is_projectable(
        commands in proptest::collection::vec(command(), 0..60),
    ) {
        let mut rule = Rule::default();
        let create = C::Create { rule_id: "r1".into(), spec: orders_per_minute(), by: "staff".into(), now: at(0) };
        execute(&mut rule, create, &()).expect("a valid rule");
        let mut fired = 0u64;
        let mut raised = 0u64;
        for command in commands {
            let Ok(events) = execute(&mut rule, command, &()) else { continue };
            for event in &events {
                prop_assert!(projectable(&serde_json::to_value(event).unwrap()).is_ok());
                match event {
                    E::AlertPending { alert_id, value, .. } => {
                        raised += 1;
                        prop_assert_eq!(alert_id, &format!("r1.{raised}"));
                        prop_assert!(value.is_finite() && *value > 5.0);
                    }
                    E::AlertFiring { alert_id, .. } => {
                        fired += 1;
                        prop_assert_eq!(alert_id, &format!("r1.{raised}"));
                    }
                    _ => {}
                }
            }
            prop_assert!(fired <= raised);
            let open = rule.open_alert().map(|o| o.id.clone());
            let latest = format!("r1.{raised}");
            prop_assert!(open.is_none_or(|id| id == latest));
        }
    }
}

#[test]
fn the_event_stream_of_one_alerts_life() {
    let mut rule = Rule::default();
    let mut stream = Vec::new();
    let commands = vec![
        C::Create {
            rule_id: "r1".into(),
            spec: orders_per_minute(),
            by: "staff".into(),
            now: at(0),
        },
        evaluate(10, 7.0),
        evaluate(20, 8.0),
        evaluate(40, 9.0),
        C::Acknowledge {
            alert_id: "r1.1".into(),
            by: "staff".into(),
            at: at(45),
        },
        evaluate(50, 2.0),
        evaluate(60, 12.0),
        evaluate(90, 12.0),
    ];
    for command in commands {
        let events = execute(&mut rule, command, &()).expect("accepted");
        stream.extend(events.iter().map(|e| serde_json::to_value(e).unwrap()));
    }
    insta::assert_json_snapshot!(stream);
}

mod samples {
    use chronicle_monitoring::{
        is_label_name, is_metric_name, parse_json, parse_text, Limits, MAX_LABELS,
    };
    use chronicle_schemas::limits::is_allowed_char;
    use chrono::{Duration, TimeZone, Utc};
    use proptest::prelude::*;

    fn limits() -> Limits {
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap();
        Limits {
            now,
            oldest: now - Duration::days(15),
            source: Some("s".into()),
            own_series: false,
        }
    }

    /// Lines that are nearly exposition lines: names, braces, quotes, escapes, numbers,
    /// control characters and non-ASCII in every place.
    fn line() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("m".to_owned()),
            Just("metric_total".to_owned()),
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just("=".to_owned()),
            Just(",".to_owned()),
            Just("\"".to_owned()),
            Just("\\".to_owned()),
            Just(" ".to_owned()),
            Just("le".to_owned()),
            Just("1".to_owned()),
            Just("-1e300".to_owned()),
            Just("NaN".to_owned()),
            Just("+Inf".to_owned()),
            Just("1796212800000".to_owned()),
            Just("# TYPE m counter".to_owned()),
            Just("\u{0}".to_owned()),
            Just("é".to_owned()),
            any::<char>().prop_map(String::from),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn any_text_is_refused_with_a_line_or_gives_samples_within_the_limits(
            lines in proptest::collection::vec(line(), 0..8)
        ) {
            let text = lines.join("\n");
            match parse_text(&text, &limits()) {
                Ok(samples) => {
                    for s in samples {
                        prop_assert!(is_metric_name(&s.metric));
                        prop_assert!(s.value.is_finite() && s.value.abs() <= 1e18);
                        prop_assert!(s.labels.len() <= MAX_LABELS);
                        for (k, v) in &s.labels {
                            prop_assert!(k == "source" || is_label_name(k));
                            prop_assert!(v.chars().all(is_allowed_char));
                        }
                    }
                }
                Err(e) => prop_assert!(
                    e.location.starts_with("line ") || e.location == "request",
                    "{e}"
                ),
            }
        }

        #[test]
        fn any_json_is_refused_or_gives_samples_within_the_limits(body in any::<Vec<u8>>()) {
            if let Ok(samples) = parse_json(&body, &limits()) {
                for s in samples {
                    prop_assert!(is_metric_name(&s.metric));
                    prop_assert!(s.value.is_finite());
                }
            }
        }
    }
}
