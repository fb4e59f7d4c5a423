//! The job aggregate, given/when/then: due times start once, failures retry with growing
//! delays and then give up, lost runs are retried once, and the missed-run, overlap and
//! dependency rules. Then random commands with hostile input, and one job's event stream.

use chronicle_scheduler::{
    Action, CommandAction, Fire, Job, JobCommand as C, JobError, JobEvent as E, JobSpec, JobStatus,
    MissedPolicy, Outcome, OverlapPolicy, Schedule, SkipReason, LEASE_GRACE_SECONDS, MAX_RUNNING,
};
use chronicle_schemas::testing::{execute, projectable};
use chrono::{DateTime, Utc};
use cqrs_es::test::TestFramework;
use proptest::prelude::*;

type Given = TestFramework<Job>;

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("a valid time")
}

fn every_second() -> JobSpec {
    JobSpec {
        name: "tick".into(),
        schedule: Schedule::Cron {
            expression: "* * * * * *".into(),
            timezone: "UTC".into(),
        },
        action: Action::Command {
            command: CommandAction::Noop {},
        },
        max_retries: 2,
        depends_on: vec![],
        missed: MissedPolicy::RunOnce,
        overlap: OverlapPolicy::Skip,
        timeout_seconds: 10,
        backoff_seconds: 1,
    }
}

fn once(seconds: i64) -> JobSpec {
    JobSpec {
        schedule: Schedule::Once { at: at(seconds) },
        ..every_second()
    }
}

fn created(spec: JobSpec, next: Option<DateTime<Utc>>) -> E {
    E::JobCreated {
        job_id: "j1".into(),
        owner_id: "alice".into(),
        spec,
        created_at: at(0),
        next_due_at: next,
    }
}

fn fire(now: i64, run_id: &str) -> C {
    C::Fire(Fire {
        run_id: run_id.into(),
        now: at(now),
        missed: false,
        dependencies_ready: true,
        jitter: 0,
        trigger: None,
    })
}

fn started(run_id: &str, due: i64, attempt: u32, now: i64, next: Option<i64>) -> E {
    E::RunStarted {
        run_id: run_id.into(),
        due_at: at(due),
        attempt,
        started_at: at(now),
        lease_until: at(now + 10 + LEASE_GRACE_SECONDS),
        next_due_at: next.map(at),
        event: None,
    }
}

fn state(events: &[E]) -> Job {
    let mut job = Job::default();
    for event in events {
        cqrs_es::Aggregate::apply(&mut job, event.clone());
    }
    job
}

#[test]
fn a_cron_job_is_due_at_its_next_second_and_a_bad_expression_is_refused_with_why() {
    Given::with(())
        .given_no_previous_events()
        .when(C::Create {
            job_id: "j1".into(),
            owner_id: "alice".into(),
            spec: every_second(),
            now: at(0),
        })
        .then_expect_events(vec![created(every_second(), Some(at(1)))]);
    let bad = JobSpec {
        schedule: Schedule::Cron {
            expression: "0 */5 * * * * * *".into(),
            timezone: "UTC".into(),
        },
        ..every_second()
    };
    let refused = Given::with(())
        .given_no_previous_events()
        .when(C::Create {
            job_id: "j1".into(),
            owner_id: "alice".into(),
            spec: bad,
            now: at(0),
        })
        .inspect_result();
    assert!(
        matches!(&refused, Err(JobError::Invalid(i)) if i.field == "schedule.cron" && !i.message.is_empty()),
        "{refused:?}"
    );
    let expire = JobSpec {
        action: Action::Command {
            command: CommandAction::ExpireUnpaidOrder {
                order_id: "o1".into(),
            },
        },
        ..once(10)
    };
    let by_user = Given::with(())
        .given_no_previous_events()
        .when(C::Create {
            job_id: "j1".into(),
            owner_id: "alice".into(),
            spec: expire,
            now: at(0),
        })
        .inspect_result();
    assert!(matches!(by_user, Err(JobError::Invalid(ref i)) if i.field == "action.command"));
}

#[test]
fn each_due_time_starts_once() {
    Given::with(())
        .given(vec![created(every_second(), Some(at(1)))])
        .when(fire(0, "r0"))
        .then_expect_error(JobError::NotDue);
    Given::with(())
        .given(vec![created(every_second(), Some(at(1)))])
        .when(fire(1, "r1"))
        .then_expect_events(vec![started("r1", 1, 1, 1, Some(2))]);
    // A second scheduler asking at the same instant finds nothing due.
    Given::with(())
        .given(vec![
            created(every_second(), Some(at(1))),
            started("r1", 1, 1, 1, Some(2)),
            E::RunSucceeded {
                run_id: "r1".into(),
                finished_at: at(1),
            },
        ])
        .when(fire(1, "r1b"))
        .then_expect_error(JobError::NotDue);
    // A one-shot job has no next due time once started.
    Given::with(())
        .given(vec![created(once(5), Some(at(5)))])
        .when(fire(5, "r1"))
        .then_expect_events(vec![started("r1", 5, 1, 5, None)]);
}

#[test]
fn a_failed_run_is_retried_with_growing_delays_then_given_up() {
    let mut job = state(&[created(once(5), Some(at(5)))]);
    execute(&mut job, fire(5, "r1"), &()).unwrap();
    let mut delays = Vec::new();
    let mut now = at(5);
    for attempt in 1..=3u32 {
        let events = execute(
            &mut job,
            C::Finish {
                run_id: format!("r{attempt}"),
                now,
                outcome: Outcome::Failed("HTTP 500".into()),
                jitter: 999,
            },
            &(),
        )
        .unwrap();
        let E::RunFailed { retry_at, .. } = &events[0] else {
            panic!("{events:?}")
        };
        match retry_at {
            Some(retry) => {
                delays.push(*retry - now);
                assert_eq!(job.status(), JobStatus::Retrying);
                assert_eq!(job.next_run_at(), Some(*retry));
                assert_eq!(
                    execute(
                        &mut job,
                        fire((*retry - at(0)).num_seconds() - 1, "early"),
                        &()
                    ),
                    Err(JobError::NotDue)
                );
                now = *retry;
                let events = execute(
                    &mut job,
                    C::Fire(Fire {
                        run_id: format!("r{}", attempt + 1),
                        now,
                        missed: false,
                        dependencies_ready: true,
                        jitter: 0,
                        trigger: None,
                    }),
                    &(),
                )
                .unwrap();
                assert!(
                    matches!(&events[..], [E::RunStarted { attempt: a, due_at, .. }] if *a == attempt + 1 && *due_at == at(5)),
                    "{events:?}"
                );
            }
            None => assert_eq!(attempt, 3, "max_retries 2: three attempts"),
        }
    }
    assert_eq!(delays.len(), 2);
    assert!(delays[1] > delays[0], "{delays:?}");
    assert_eq!(job.status(), JobStatus::Failed);
    assert!(!job.latest_run_succeeded());
}

#[test]
fn a_run_whose_scheduler_died_is_failed_once_and_retried_once() {
    let given = vec![created(once(5), Some(at(5))), started("r1", 5, 1, 5, None)];
    let lease_end = 5 + 10 + LEASE_GRACE_SECONDS;
    Given::with(())
        .given(given.clone())
        .when(fire(lease_end - 1, "r2"))
        .then_expect_error(JobError::NotDue);
    let mut job = state(&given);
    let events = execute(&mut job, fire(lease_end, "r2"), &()).unwrap();
    assert!(
        matches!(&events[..], [E::RunFailed { run_id, retry_at: Some(_), error, .. }] if run_id == "r1" && error.starts_with("lost")),
        "{events:?}"
    );
    // Its own scheduler, back late, cannot record an outcome any more.
    assert_eq!(
        execute(
            &mut job,
            C::Finish {
                run_id: "r1".into(),
                now: at(lease_end + 1),
                outcome: Outcome::Succeeded,
                jitter: 0
            },
            &()
        ),
        Err(JobError::NotRunning)
    );
    let retry = job.next_run_at().unwrap();
    let events = execute(
        &mut job,
        C::Fire(Fire {
            run_id: "r2".into(),
            now: retry,
            missed: false,
            dependencies_ready: true,
            jitter: 0,
            trigger: None,
        }),
        &(),
    )
    .unwrap();
    assert!(
        matches!(&events[..], [E::RunStarted { attempt: 2, .. }]),
        "{events:?}"
    );
    assert_eq!(
        execute(
            &mut job,
            C::Fire(Fire {
                run_id: "r3".into(),
                now: retry,
                missed: false,
                dependencies_ready: true,
                jitter: 0,
                trigger: None,
            }),
            &()
        ),
        Err(JobError::NotDue),
        "one retry, not two"
    );
}

fn after_downtime(missed: MissedPolicy) -> Result<Vec<E>, JobError> {
    let spec = JobSpec {
        missed,
        ..every_second()
    };
    let mut job = state(&[created(spec, Some(at(1)))]);
    execute(
        &mut job,
        C::Fire(Fire {
            run_id: "r".into(),
            now: at(30),
            missed: true,
            dependencies_ready: true,
            jitter: 0,
            trigger: None,
        }),
        &(),
    )
}

#[test]
fn due_times_missed_while_no_scheduler_ran_follow_the_policy() {
    assert_eq!(
        after_downtime(MissedPolicy::Skip).unwrap(),
        vec![E::RunsSkipped {
            from: at(1),
            to: at(30),
            reason: SkipReason::Missed,
            next_due_at: Some(at(31)),
        }]
    );
    assert_eq!(
        after_downtime(MissedPolicy::RunOnce).unwrap(),
        vec![
            E::RunsSkipped {
                from: at(1),
                to: at(29),
                reason: SkipReason::Missed,
                next_due_at: Some(at(30)),
            },
            started("r", 30, 1, 30, Some(31)),
        ]
    );
    assert_eq!(
        after_downtime(MissedPolicy::RunAll).unwrap(),
        vec![started("r", 1, 1, 30, Some(2))]
    );
    // Merely late (a scheduler ran): every due time runs, whatever the policy.
    let mut job = state(&[created(
        JobSpec {
            missed: MissedPolicy::Skip,
            ..every_second()
        },
        Some(at(1)),
    )]);
    let events = execute(&mut job, fire(3, "r"), &()).unwrap();
    assert_eq!(events, vec![started("r", 1, 1, 3, Some(2))]);
}

#[test]
fn a_due_time_during_a_run_follows_the_overlap_policy() {
    let during = |overlap: OverlapPolicy| {
        let spec = JobSpec {
            overlap,
            ..every_second()
        };
        let mut job = state(&[created(spec, Some(at(1))), started("r1", 1, 1, 1, Some(2))]);
        execute(&mut job, fire(2, "r2"), &())
    };
    assert_eq!(
        during(OverlapPolicy::Skip).unwrap(),
        vec![E::RunsSkipped {
            from: at(2),
            to: at(2),
            reason: SkipReason::Overlap,
            next_due_at: Some(at(3)),
        }]
    );
    assert_eq!(during(OverlapPolicy::Queue), Err(JobError::Busy));
    // Catching up a backlog (run_all after downtime): the due times that were waiting before
    // the run started wait their turn, whatever the overlap policy.
    let mut job = state(&[
        created(
            JobSpec {
                missed: MissedPolicy::RunAll,
                ..every_second()
            },
            Some(at(1)),
        ),
        started("r1", 1, 1, 30, Some(2)),
    ]);
    assert_eq!(execute(&mut job, fire(30, "r2"), &()), Err(JobError::Busy));
    assert_eq!(
        during(OverlapPolicy::Allow).unwrap(),
        vec![started("r2", 2, 1, 2, Some(3))]
    );
    // `allow` has a bound: a job never has more than MAX_RUNNING runs at once.
    let spec = JobSpec {
        overlap: OverlapPolicy::Allow,
        timeout_seconds: 3600,
        ..every_second()
    };
    let mut job = state(&[created(spec, Some(at(1)))]);
    for second in 1..=MAX_RUNNING as i64 {
        execute(&mut job, fire(second, &format!("r{second}")), &()).unwrap();
    }
    let next = MAX_RUNNING as i64 + 1;
    assert_eq!(
        execute(&mut job, fire(next, "one-too-many"), &()),
        Err(JobError::Busy)
    );
}

#[test]
fn dependencies_pause_resume_and_delete() {
    let given = vec![created(once(5), Some(at(5)))];
    Given::with(())
        .given(given.clone())
        .when(C::Fire(Fire {
            run_id: "r1".into(),
            now: at(5),
            missed: false,
            dependencies_ready: false,
            jitter: 0,
            trigger: None,
        }))
        .then_expect_error(JobError::Waiting);
    Given::with(())
        .given(given.clone())
        .when(C::Pause {
            by: "mallory".into(),
            now: at(1),
        })
        .then_expect_error(JobError::NotFound);
    let paused = vec![
        created(every_second(), Some(at(1))),
        E::JobPaused { paused_at: at(1) },
    ];
    Given::with(())
        .given(paused.clone())
        .when(fire(5, "r"))
        .then_expect_error(JobError::Paused);
    Given::with(())
        .given(paused)
        .when(C::Resume {
            by: "alice".into(),
            now: at(50),
        })
        .then_expect_events(vec![E::JobResumed {
            resumed_at: at(50),
            next_due_at: Some(at(51)),
        }]);
    let deleted = vec![
        created(once(5), Some(at(5))),
        started("r1", 5, 1, 5, None),
        E::JobDeleted { deleted_at: at(6) },
    ];
    Given::with(())
        .given(deleted.clone())
        .when(fire(7, "r2"))
        .then_expect_error(JobError::NotFound);
    // The run that was running still gets its outcome, and is not retried.
    Given::with(())
        .given(deleted)
        .when(C::Finish {
            run_id: "r1".into(),
            now: at(7),
            outcome: Outcome::Failed("boom".into()),
            jitter: 0,
        })
        .then_expect_events(vec![E::RunFailed {
            run_id: "r1".into(),
            finished_at: at(7),
            error: "boom".into(),
            retry_at: None,
        }]);
}

fn command() -> impl Strategy<Value = C> {
    let by = prop_oneof![Just("alice".to_owned()), Just("mallory".to_owned())];
    let run = prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("c".to_owned())
    ];
    prop_oneof![
        (
            0i64..120,
            run.clone(),
            any::<bool>(),
            any::<bool>(),
            any::<u16>()
        )
            .prop_map(
                |(now, run_id, missed, dependencies_ready, jitter)| C::Fire(Fire {
                    run_id,
                    now: at(now),
                    missed,
                    dependencies_ready,
                    jitter,
                    trigger: None,
                })
            ),
        (0i64..120, run, any::<bool>(), ".{0,20}", any::<u16>()).prop_map(
            |(now, run_id, ok, error, jitter)| C::Finish {
                run_id,
                now: at(now),
                outcome: if ok {
                    Outcome::Succeeded
                } else {
                    Outcome::Failed(error)
                },
                jitter,
            }
        ),
        (0i64..120, by.clone()).prop_map(|(now, by)| C::Pause { by, now: at(now) }),
        (0i64..120, by).prop_map(|(now, by)| C::Resume { by, now: at(now) }),
    ]
}

fn spec() -> impl Strategy<Value = JobSpec> {
    (
        prop_oneof![
            Just("*/2 * * * * *".to_owned()),
            Just("0 0 * * * *".to_owned()),
            ".{0,12}"
        ],
        prop_oneof![
            Just("UTC".to_owned()),
            Just("Europe/Berlin".to_owned()),
            ".{0,8}"
        ],
        prop_oneof![Just(0u32), Just(3), any::<u32>()],
        prop_oneof![Just(10u32), Just(0), any::<u32>()],
        any::<bool>(),
        prop_oneof![
            Just(MissedPolicy::Skip),
            Just(MissedPolicy::RunOnce),
            Just(MissedPolicy::RunAll)
        ],
        prop_oneof![
            Just(OverlapPolicy::Skip),
            Just(OverlapPolicy::Queue),
            Just(OverlapPolicy::Allow)
        ],
    )
        .prop_map(
            |(expression, timezone, max_retries, timeout_seconds, cron, missed, overlap)| JobSpec {
                schedule: if cron {
                    Schedule::Cron {
                        expression,
                        timezone,
                    }
                } else {
                    Schedule::Once { at: at(3) }
                },
                max_retries,
                timeout_seconds,
                missed,
                overlap,
                ..every_second()
            },
        )
}

proptest! {
    #[test]
    fn no_due_time_starts_twice_and_retries_stay_bounded(
        spec in spec(),
        commands in proptest::collection::vec(command(), 0..80),
    ) {
        let mut job = Job::default();
        let create = C::Create { job_id: "j1".into(), owner_id: "alice".into(), spec, now: at(0) };
        let Ok(events) = execute(&mut job, create, &()) else { return Ok(()) };
        let max_retries = job.spec().unwrap().max_retries;
        for event in &events {
            prop_assert!(projectable(&serde_json::to_value(event).unwrap()).is_ok());
        }
        let mut started = std::collections::BTreeSet::new();
        for command in commands {
            let Ok(events) = execute(&mut job, command, &()) else { continue };
            for event in events {
                prop_assert!(projectable(&serde_json::to_value(&event).unwrap()).is_ok());
                if let E::RunStarted { due_at, attempt, .. } = event {
                    prop_assert!(started.insert((due_at, attempt)), "{due_at} attempt {attempt} twice");
                    prop_assert!(attempt <= max_retries + 1);
                }
            }
        }
    }
}

#[test]
fn the_event_stream_of_one_job() {
    let mut job = Job::default();
    let mut stream = Vec::new();
    let spec = JobSpec {
        name: "nightly report".into(),
        schedule: Schedule::Cron {
            expression: "0 30 2 * * *".into(),
            timezone: "Europe/Berlin".into(),
        },
        action: Action::Http {
            url: "https://hooks.example.com/report".into(),
            method: "POST".into(),
            body: Some("{\"full\":true}".into()),
        },
        ..every_second()
    };
    let day = 86_400;
    let commands = vec![
        C::Create {
            job_id: "j1".into(),
            owner_id: "alice".into(),
            spec,
            now: at(0),
        },
        fire(day, "r1"),
        C::Finish {
            run_id: "r1".into(),
            now: at(day + 1),
            outcome: Outcome::Failed("HTTP 503".into()),
            jitter: 500,
        },
        fire(day + 2, "r2"),
        C::Finish {
            run_id: "r2".into(),
            now: at(day + 3),
            outcome: Outcome::Succeeded,
            jitter: 0,
        },
        C::Pause {
            by: "alice".into(),
            now: at(day + 4),
        },
        C::Resume {
            by: "alice".into(),
            now: at(3 * day),
        },
        C::Delete {
            by: "alice".into(),
            now: at(3 * day + 1),
        },
    ];
    for command in commands {
        let events = execute(&mut job, command, &()).expect("accepted");
        stream.extend(events.iter().map(|e| serde_json::to_value(e).unwrap()));
    }
    insta::assert_json_snapshot!(stream);
}

fn on_paid() -> JobSpec {
    JobSpec {
        schedule: Schedule::OnEvent {
            types: vec!["OrderPaid".into()],
            context: Some("commerce".into()),
        },
        max_retries: 1,
        ..every_second()
    }
}

fn trigger(seq: u64) -> chronicle_schemas::scheduler::TriggerEvent {
    chronicle_schemas::scheduler::TriggerEvent {
        event_type: "OrderPaid".into(),
        aggregate_id: format!("order-{seq}"),
        stream_seq: seq,
    }
}

fn fire_for(now: i64, run_id: &str, seq: Option<u64>) -> C {
    C::Fire(Fire {
        run_id: run_id.into(),
        now: at(now),
        missed: false,
        dependencies_ready: true,
        jitter: 0,
        trigger: seq.map(trigger),
    })
}

fn started_for(run_id: &str, now: i64, attempt: u32, seq: u64) -> E {
    E::RunStarted {
        run_id: run_id.into(),
        due_at: at(now),
        attempt,
        started_at: at(now),
        lease_until: at(now + 10 + LEASE_GRACE_SECONDS),
        next_due_at: None,
        event: Some(trigger(seq)),
    }
}

/// After `history`, the events up to `done_with` never run again, and the next one does.
fn runs_only_after(history: Vec<E>, done_with: &[u64], next: u64, now: i64) {
    for seq in done_with {
        Given::with(())
            .given(history.clone())
            .when(fire_for(now, "r-next", Some(*seq)))
            .then_expect_error(JobError::NotDue);
    }
    Given::with(())
        .given(history)
        .when(fire_for(now, "r-next", Some(next)))
        .then_expect_events(vec![started_for("r-next", now, 1, next)]);
}

#[test]
fn an_event_triggered_job_runs_for_each_later_event_once_in_order() {
    let created = created(on_paid(), None);
    assert_eq!(
        state(std::slice::from_ref(&created)).status(),
        JobStatus::Scheduled
    );
    assert_eq!(
        state(std::slice::from_ref(&created)).wake_at(),
        None,
        "no time wakes it"
    );
    // Nothing came: nothing is due.
    Given::with(())
        .given(vec![created.clone()])
        .when(fire_for(1, "r1", None))
        .then_expect_error(JobError::NotDue);
    Given::with(())
        .given(vec![created.clone()])
        .when(fire_for(1, "r1", Some(40)))
        .then_expect_events(vec![started_for("r1", 1, 1, 40)]);
    // While it runs, the next event waits its turn.
    Given::with(())
        .given(vec![created.clone(), started_for("r1", 1, 1, 40)])
        .when(fire_for(2, "r2", Some(41)))
        .then_expect_error(JobError::Busy);
    let done = E::RunSucceeded {
        run_id: "r1".into(),
        finished_at: at(2),
    };
    let after = vec![created.clone(), started_for("r1", 1, 1, 40), done];
    assert_eq!(state(&after).events_through(), 40);
    // The event it is done with, or an earlier one, never runs again.
    runs_only_after(after, &[40, 12], 41, 3);
}

#[test]
fn a_failing_event_is_retried_then_given_up_and_the_next_event_runs() {
    let created = created(on_paid(), None);
    let failed = |run: &str, retry: Option<i64>| E::RunFailed {
        run_id: run.into(),
        finished_at: at(2),
        error: "HTTP 500".into(),
        retry_at: retry.map(at),
    };
    let history = vec![created, started_for("r1", 1, 1, 7)];
    let failing = Given::with(())
        .given(history.clone())
        .when(C::Finish {
            run_id: "r1".into(),
            now: at(2),
            outcome: Outcome::Failed("HTTP 500".into()),
            jitter: 0,
        })
        .inspect_result()
        .unwrap();
    let retry_at = match &failing[..] {
        [E::RunFailed {
            retry_at: Some(at), ..
        }] => *at,
        other => panic!("{other:?}"),
    };
    let mut history = [history, vec![failing[0].clone()]].concat();
    // While the retry waits, a later event does not jump the queue.
    Given::with(())
        .given(history.clone())
        .when(fire_for(2, "r2", Some(8)))
        .then_expect_error(JobError::Busy);
    // The retry runs for the same event (its due time the first attempt's), attempt 2.
    let now = retry_at.timestamp() - 1_800_000_000 + 1;
    let mut retried = started_for("r2", now, 2, 7);
    if let E::RunStarted { due_at, .. } = &mut retried {
        *due_at = at(1);
    }
    Given::with(())
        .given(history.clone())
        .when(fire_for(now, "r2", Some(8)))
        .then_expect_events(vec![retried.clone()]);
    history.push(retried);
    // It fails again: no retry left (max_retries 1); the job is done with event 7.
    history.push(failed("r2", None));
    assert_eq!(state(&history).events_through(), 7);
    assert_eq!(state(&history).status(), JobStatus::Scheduled);
    Given::with(())
        .given(history)
        .when(fire_for(now + 1, "r3", Some(8)))
        .then_expect_events(vec![started_for("r3", now + 1, 1, 8)]);
}

#[test]
fn events_that_came_while_paused_are_skipped_once_and_only_later_ones_run() {
    let created = created(on_paid(), None);
    let paused = E::JobPaused { paused_at: at(1) };
    Given::with(())
        .given(vec![created.clone(), paused.clone()])
        .when(fire_for(2, "r1", Some(5)))
        .then_expect_error(JobError::Paused);
    let resumed = E::JobResumed {
        resumed_at: at(3),
        next_due_at: None,
    };
    let history = vec![created, paused, resumed];
    let skip = |from_seq, to_seq| C::SkipEvents {
        from_seq,
        to_seq,
        count: 3,
        now: at(4),
    };
    let skipped = E::EventsSkipped {
        from_seq: 5,
        to_seq: 9,
        count: 3,
        skipped_at: at(4),
    };
    Given::with(())
        .given(history.clone())
        .when(skip(5, 9))
        .then_expect_events(vec![skipped.clone()]);
    let after = [history, vec![skipped]].concat();
    // Told again: nothing more.
    Given::with(())
        .given(after.clone())
        .when(skip(5, 9))
        .then_expect_events(vec![]);
    runs_only_after(after, &[5, 9], 10, 5);
}

#[test]
fn an_event_triggered_job_names_real_event_types_and_never_its_own() {
    for (types, context) in [
        (vec![], None),
        (vec!["".to_owned()], None),
        (vec!["Order Paid".to_owned()], None),
        (vec!["RunSucceeded".to_owned()], None),
        (vec!["JobCreated".to_owned()], Some("scheduler")),
        (vec!["OrderPaid".to_owned()], Some("Commerce")),
        ((0..33).map(|i| format!("Type{i}")).collect(), None),
    ] {
        let spec = JobSpec {
            schedule: Schedule::OnEvent {
                types: types.clone(),
                context: context.map(str::to_owned),
            },
            ..every_second()
        };
        let refused = Given::with(())
            .given_no_previous_events()
            .when(C::Create {
                job_id: "j1".into(),
                owner_id: "alice".into(),
                spec,
                now: at(0),
            })
            .inspect_result();
        assert!(
            matches!(refused, Err(JobError::Invalid(ref i)) if i.field.starts_with("schedule.on_event")),
            "{types:?} {context:?}: {refused:?}"
        );
    }
}

#[test]
fn an_event_waits_for_the_jobs_it_depends_on() {
    let history = vec![created(on_paid(), None)];
    let mut waiting = fire_for(1, "r1", Some(3));
    if let C::Fire(fire) = &mut waiting {
        fire.dependencies_ready = false;
    }
    Given::with(())
        .given(history.clone())
        .when(waiting)
        .then_expect_error(JobError::Waiting);
    // Once they are ready, the same event runs: it was not passed over.
    runs_only_after(history, &[], 3, 2);
}
