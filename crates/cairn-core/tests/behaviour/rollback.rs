//! Rollback with compensations: which steps, in which order, retries, a failed rollback and its
//! continuation, dry runs, and replay of all of it.

use super::*;
use cairn_core::attempt::AttemptKind;
use cairn_core::rollback::{CompensationStatus, RollbackStatus};
use cairn_core::Action;

fn comp(step: &str, number: u32) -> AttemptId {
    AttemptId {
        step_id: step.into(),
        kind: AttemptKind::Compensation,
        number,
    }
}

/// The compensation attempts a decision starts, as (step, params).
fn comp_starts(d: &Decision) -> Vec<(String, Value)> {
    d.starts()
        .filter(|s| s.attempt.kind == AttemptKind::Compensation)
        .map(|s| (s.attempt.step_id.clone(), s.invocation.params.clone()))
        .collect()
}

const TRIP: &str = "on_failure: rollback
steps:
  - {step_id: flight, action: book, agent_type: t, compensate: {action: cancel, agent_type: t, params: {ref: '{{ this.output.ref }}'}}}
  - {step_id: hotel, action: book, agent_type: t, compensate: {action: cancel, agent_type: t, params: {ref: '{{ this.output.ref }}'}, retry: {max_attempts: 2, backoff_ms: 10}}}
  - {step_id: note, action: write, agent_type: t}
  - {step_id: pay, action: pay, agent_type: t, compensate: {action: refund, agent_type: t}}
";

#[test]
fn a_failing_plan_rolls_back_newest_first_then_fails() {
    let mut sim = Sim::new(TRIP);
    sim.start();
    sim.complete("flight", json!({"ref": "F1"}));
    sim.complete("hotel", json!({"ref": "H1"}));
    sim.complete("note", json!({}));
    let d = sim.fail("pay", false);
    // pay failed for good: its outcome is known, so it is not compensated.
    assert_eq!(d.compensations, ["hotel", "flight"]);
    assert_eq!(sim.st.status, PlanStatus::Running);
    let r = sim.st.rollback.clone().unwrap();
    assert_eq!(r.status, RollbackStatus::Running);
    assert_eq!(r.pending, ["hotel", "flight"]);
    let starts = comp_starts(&d);
    assert_eq!(starts, [("hotel".to_owned(), json!({"ref": "H1"}))]);
    let start = d.starts().next().unwrap();
    assert_eq!(start.idempotency_key, "p1/hotel/compensate/1");
    assert_eq!(start.invocation.action, "cancel");

    let d = sim.ok(Command::Outcome {
        attempt: comp("hotel", 1),
        result: StepResult::Completed {
            output: json!("ok"),
            scores: None,
        },
    });
    assert_eq!(
        comp_starts(&d),
        [("flight".to_owned(), json!({"ref": "F1"}))]
    );
    let d = sim.ok(Command::Outcome {
        attempt: comp("flight", 1),
        result: StepResult::Completed {
            output: json!("ok"),
            scores: None,
        },
    });
    assert!(comp_starts(&d).is_empty());
    assert_eq!(sim.st.status, PlanStatus::Failed);
    let r = sim.st.rollback.clone().unwrap();
    assert_eq!(r.status, RollbackStatus::Completed);
    assert_eq!(r.done, ["hotel", "flight"]);
    assert!(r.pending.is_empty());
    let types: Vec<&str> = sim.log.iter().map(|e| e.kind.type_name()).collect();
    assert!(
        types.ends_with(&[
            "plan_failed",
            "rollback_started",
            "compensation_started",
            "compensation_completed",
            "compensation_started",
            "compensation_completed",
            "rollback_completed",
        ]),
        "{types:?}"
    );
    // Rolled back once: a second rollback is refused.
    let refusal = sim.refused(Command::Rollback {
        dry_run: false,
        reason: None,
    });
    assert_eq!(refusal.kind, RefusalKind::Conflict);
}

#[test]
fn compensations_retry_by_policy_and_a_failed_one_stops_the_rollback_until_continued() {
    let mut sim = Sim::new(TRIP);
    sim.start();
    sim.complete("flight", json!({"ref": "F1"}));
    sim.complete("hotel", json!({"ref": "H1"}));
    sim.complete("note", json!({}));
    sim.fail("pay", false);
    let broke = |n: u32| Command::Outcome {
        attempt: comp("hotel", n),
        result: StepResult::Failed {
            error: "desk closed".into(),
            retryable: true,
        },
    };
    let d = sim.ok(broke(1));
    assert!(comp_starts(&d).is_empty(), "waits for its backoff");
    sim.advance(10);
    let d = sim.tick();
    assert_eq!(comp_starts(&d).len(), 1);
    // Two attempts allowed: the second failure stops the rollback.
    sim.ok(broke(2));
    assert_eq!(sim.st.status, PlanStatus::Failed);
    let r = sim.st.rollback.clone().unwrap();
    assert_eq!(r.status, RollbackStatus::Failed);
    assert_eq!(r.pending, ["hotel", "flight"]);
    let c = sim.rec("hotel").compensation.clone().unwrap();
    assert_eq!(c.status, CompensationStatus::Failed);
    assert_eq!(c.attempts, 2);
    // A dry run lists what continuing would run and changes nothing.
    let n = sim.log.len();
    let d = sim.ok(Command::Rollback {
        dry_run: true,
        reason: None,
    });
    assert_eq!(d.compensations, ["hotel", "flight"]);
    assert_eq!(sim.log.len(), n);
    // Continuing runs the failed compensation again (attempt 3, same key), then the rest.
    let d = sim.ok(Command::Rollback {
        dry_run: false,
        reason: None,
    });
    let start = d.starts().next().unwrap();
    assert_eq!(start.attempt, comp("hotel", 3));
    assert_eq!(start.idempotency_key, "p1/hotel/compensate/1");
    for step in ["hotel", "flight"] {
        let n = sim.rec(step).compensation.as_ref().unwrap().attempts;
        sim.ok(Command::Outcome {
            attempt: comp(step, n),
            result: StepResult::Completed {
                output: json!(null),
                scores: None,
            },
        });
    }
    assert_eq!(sim.st.status, PlanStatus::Failed);
    assert_eq!(
        sim.st.rollback.as_ref().unwrap().status,
        RollbackStatus::Completed
    );
}

#[test]
fn a_step_in_flight_is_stopped_and_compensated_with_a_null_output() {
    let mut sim = Sim::new(
        "on_failure: rollback
steps:
  - {step_id: a, action: x, agent_type: t, depends_on: [], compensate: {action: undo, agent_type: t, params: {out: '{{ this.output }}'}}}
  - {step_id: b, action: x, agent_type: t, depends_on: []}
",
    );
    sim.start();
    let d = sim.fail("b", false);
    let stops: Vec<&Action> = d
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Stop { .. }))
        .collect();
    assert_eq!(stops.len(), 1, "{:?}", d.actions);
    // The rollback waits for the stopped attempt to end.
    assert!(comp_starts(&d).is_empty(), "{:?}", d.actions);
    assert_eq!(sim.rec("a").status, StepStatus::Running);
    assert_eq!(sim.st.status, PlanStatus::Running);
    // Its report ends it (interrupted: the outcome is not used), and only then does the
    // compensation start, with a null `this.output` even though the attempt completed.
    let d = sim.report(
        "a",
        1,
        StepResult::Completed {
            output: json!(1),
            scores: None,
        },
    );
    assert_eq!(comp_starts(&d), [("a".to_owned(), json!({"out": null}))]);
    assert_eq!(sim.rec("a").status, StepStatus::Pending);
    assert_eq!(
        sim.rec("a").compensation.as_ref().unwrap().status,
        CompensationStatus::Running
    );
    assert!(!d.actions.iter().any(|a| matches!(a, Action::Stop { .. })));
}

#[test]
fn cancel_with_rollback_waits_for_the_step_in_flight_then_ends_it_cancelled() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t, compensate: {action: undo, agent_type: t, params: {out: '{{ this.output }}'}}}
  - {step_id: b, action: x, agent_type: t, compensate: {action: undo, agent_type: t, params: {out: '{{ this.output }}'}}}
  - {step_id: c, action: x, agent_type: t}
",
    );
    sim.start();
    sim.complete("a", json!("A"));
    let d = sim.ok(Command::Cancel {
        reason: None,
        rollback: true,
    });
    assert_eq!(d.compensations, ["b", "a"]);
    assert!(comp_starts(&d).is_empty());
    assert!(d.actions.iter().any(|a| matches!(a, Action::Stop { .. })));
    assert_eq!(sim.rec("b").status, StepStatus::Running);
    // The stopped attempt reports "stopped": b is compensated first, with a null output.
    let d = sim.report(
        "b",
        1,
        StepResult::Failed {
            error: "stopped".into(),
            retryable: true,
        },
    );
    assert_eq!(comp_starts(&d), [("b".to_owned(), json!({"out": null}))]);
    for (step, n) in [("b", 1), ("a", 1)] {
        let d = sim.ok(Command::Outcome {
            attempt: comp(step, n),
            result: StepResult::Completed {
                output: json!(null),
                scores: None,
            },
        });
        if step == "b" {
            assert_eq!(comp_starts(&d), [("a".to_owned(), json!({"out": "A"}))]);
        }
    }
    assert_eq!(sim.st.status, PlanStatus::Cancelled);
    assert_eq!(
        sim.st.rollback.as_ref().unwrap().status,
        RollbackStatus::Completed
    );
    assert_eq!(sim.rec("b").status, StepStatus::Cancelled);
    assert_eq!(sim.rec("c").status, StepStatus::Cancelled);
}

#[test]
fn recovery_during_a_rollback_ends_the_stopped_step_instead_of_sending_it_again() {
    let mut sim = Sim::new(
        "on_failure: rollback
steps:
  - {step_id: a, action: x, agent_type: t, depends_on: [], compensate: {action: undo, agent_type: t}}
  - {step_id: b, action: x, agent_type: t, depends_on: []}
",
    );
    sim.start();
    sim.fail("b", false);
    assert_eq!(sim.rec("a").status, StepStatus::Running);
    let d = sim.ok(Command::Recover);
    assert!(d
        .starts()
        .all(|s| s.attempt.kind == AttemptKind::Compensation));
    assert_eq!(comp_starts(&d).len(), 1);
    assert_eq!(sim.rec("a").status, StepStatus::Pending);
}

#[test]
fn a_failed_compensation_is_retried_or_skipped_by_an_operator_and_the_rollback_continues() {
    let plan = TRIP.replace(
        "retry: {max_attempts: 2, backoff_ms: 10}",
        "retry: {max_attempts: 1}",
    );
    let mut sim = Sim::new(&plan);
    sim.start();
    sim.complete("flight", json!({"ref": "F1"}));
    sim.complete("hotel", json!({"ref": "H1"}));
    sim.complete("note", json!({}));
    sim.fail("pay", false);
    let broke = |n: u32| Command::Outcome {
        attempt: comp("hotel", n),
        result: StepResult::Failed {
            error: "desk closed".into(),
            retryable: true,
        },
    };
    sim.ok(broke(1));
    assert_eq!(sim.st.status, PlanStatus::Failed);
    assert_eq!(
        sim.st.rollback.as_ref().unwrap().status,
        RollbackStatus::Failed
    );
    // Only the failed compensation can be acted on.
    let d = sim.ok(Command::Intervene(
        InterventionRequest::from_body(
            json!({"type": "skip_step", "step_id": "flight", "compensation": true}),
        )
        .unwrap(),
    ));
    assert!(d.refusal.is_some());
    // Retried: a new attempt under the same key.
    let d = sim.intervene(json!({"type": "retry_step", "step_id": "hotel", "compensation": true}));
    assert_eq!(sim.st.status, PlanStatus::Running);
    let start = d.starts().next().unwrap();
    assert_eq!(start.attempt, comp("hotel", 2));
    assert_eq!(start.idempotency_key, "p1/hotel/compensate/1");
    sim.ok(broke(2));
    assert_eq!(
        sim.st.rollback.as_ref().unwrap().status,
        RollbackStatus::Failed
    );
    // Skipped: the rollback goes on with flight and completes.
    let d = sim.intervene(json!({"type": "skip_step", "step_id": "hotel", "compensation": true}));
    assert_eq!(
        comp_starts(&d),
        [("flight".to_owned(), json!({"ref": "F1"}))]
    );
    assert_eq!(
        sim.rec("hotel").compensation.as_ref().unwrap().status,
        CompensationStatus::Skipped
    );
    sim.ok(Command::Outcome {
        attempt: comp("flight", 1),
        result: StepResult::Completed {
            output: json!("ok"),
            scores: None,
        },
    });
    assert_eq!(sim.st.status, PlanStatus::Failed);
    let r = sim.st.rollback.as_ref().unwrap();
    assert_eq!(r.status, RollbackStatus::Completed);
    assert_eq!(r.done, ["flight"]);
    // The log replays to the same state (checked after every command by `Sim`), and through the
    // recorded effects, never by re-running the intervention's rules.
    assert_eq!(PlanState::replay(PLAN, &sim.log), sim.st);
}

#[test]
fn a_cancelled_plan_rolls_back_on_request_and_ends_cancelled() {
    // An unknown outcome reads as a null `this.output`.
    let plan = TRIP
        .trim_start_matches("on_failure: rollback\n")
        .replace("this.output.ref", "this.output");
    let mut sim = Sim::new(&plan);
    sim.start();
    sim.complete("flight", json!({"ref": "F1"}));
    sim.cancel();
    assert!(sim.st.rollback.is_none());
    let d = sim.ok(Command::Rollback {
        dry_run: false,
        reason: None,
    });
    // hotel was running when the plan was cancelled: its outcome is unknown.
    assert_eq!(d.compensations, ["hotel", "flight"]);
    assert_eq!(
        comp_starts(&d),
        [("hotel".to_owned(), json!({"ref": null}))]
    );
    assert_eq!(sim.st.status, PlanStatus::Running);
    // Cancel is refused while rolling back; pause works and starts no compensation.
    sim.refused(Command::Cancel {
        reason: None,
        rollback: false,
    });
    sim.pause(PauseMode::Boundary);
    let d = sim.ok(Command::Outcome {
        attempt: comp("hotel", 1),
        result: StepResult::Completed {
            output: json!("x"),
            scores: None,
        },
    });
    assert!(comp_starts(&d).is_empty());
    assert_eq!(sim.st.status, PlanStatus::Paused);
    assert!(sim.st.drained);
    let d = sim.resume();
    assert_eq!(comp_starts(&d).len(), 1);
    sim.ok(Command::Outcome {
        attempt: comp("flight", 1),
        result: StepResult::Completed {
            output: json!("x"),
            scores: None,
        },
    });
    assert_eq!(sim.st.status, PlanStatus::Cancelled);
    assert_eq!(
        sim.st.rollback.as_ref().unwrap().status,
        RollbackStatus::Completed
    );
}

#[test]
fn a_plan_without_rollback_fails_as_before_and_a_running_one_cannot_be_rolled_back() {
    let mut sim = Sim::new(TRIP.trim_start_matches("on_failure: rollback\n"));
    sim.start();
    let r = sim.refused(Command::Rollback {
        dry_run: true,
        reason: None,
    });
    assert_eq!(r.kind, RefusalKind::Conflict);
    sim.complete("flight", json!({}));
    sim.fail("hotel", false);
    assert_eq!(sim.st.status, PlanStatus::Failed);
    assert!(sim.st.rollback.is_none());
}

#[test]
fn recovery_resends_the_compensation_in_flight_and_never_a_completed_one() {
    let mut sim = Sim::new(TRIP);
    sim.start();
    sim.complete("flight", json!({"ref": "F1"}));
    sim.complete("hotel", json!({"ref": "H1"}));
    sim.complete("note", json!({}));
    sim.fail("pay", false);
    sim.ok(Command::Outcome {
        attempt: comp("hotel", 1),
        result: StepResult::Completed {
            output: json!("ok"),
            scores: None,
        },
    });
    // The process dies with flight's compensation in flight; a new one replays and recovers.
    let mut st = PlanState::replay(PLAN, &sim.log);
    let d = decide::handle(
        &mut st,
        Command::Recover,
        Ctx {
            now: sim.now,
            actor: "cairn",
        },
    )
    .unwrap();
    let starts: Vec<_> = d.starts().collect();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].attempt, comp("flight", 1));
    assert_eq!(starts[0].invocation.params, json!({"ref": "F1"}));
    assert_eq!(starts[0].idempotency_key, "p1/flight/compensate/1");
}

#[test]
fn cancel_with_rollback_compensates_what_ran_and_ends_cancelled() {
    let plan = TRIP
        .trim_start_matches("on_failure: rollback\n")
        .replace("this.output.ref", "this.output");
    let mut sim = Sim::new(&plan);
    sim.start();
    sim.complete("flight", json!({"ref": "F1"}));
    let d = sim.ok(Command::Cancel {
        reason: Some("trip called off".into()),
        rollback: true,
    });
    // hotel was running: it is stopped, and compensated first (it started last).
    assert_eq!(d.compensations, ["hotel", "flight"]);
    assert!(d
        .actions
        .iter()
        .any(|a| matches!(a, Action::Stop { attempt, .. } if attempt.step_id == "hotel")));
    assert!(
        comp_starts(&d).is_empty(),
        "waits for hotel's attempt to end"
    );
    assert_eq!(sim.st.status, PlanStatus::Running);
    let d = sim.report(
        "hotel",
        1,
        StepResult::Failed {
            error: "stopped".into(),
            retryable: true,
        },
    );
    assert_eq!(
        comp_starts(&d),
        [("hotel".to_owned(), json!({"ref": null}))]
    );
    for step in ["hotel", "flight"] {
        sim.ok(Command::Outcome {
            attempt: comp(step, 1),
            result: StepResult::Completed {
                output: json!("undone"),
                scores: None,
            },
        });
    }
    assert_eq!(sim.st.status, PlanStatus::Cancelled);
    let r = sim.st.rollback.as_ref().unwrap();
    assert_eq!(r.status, RollbackStatus::Completed);
    assert_eq!(r.done, ["hotel", "flight"]);
    assert_eq!(
        sim.rec("flight").compensation.as_ref().unwrap().output,
        Some(json!("undone"))
    );
}

#[test]
fn an_immediate_pause_interrupts_a_compensation_and_resume_sends_it_again() {
    let mut sim = Sim::new(TRIP);
    sim.start();
    sim.complete("flight", json!({"ref": "F1"}));
    sim.complete("hotel", json!({"ref": "H1"}));
    sim.complete("note", json!({}));
    sim.fail("pay", false);
    let d = sim.pause(PauseMode::Immediate);
    assert!(d
        .actions
        .iter()
        .any(|a| matches!(a, Action::Stop { attempt, .. } if *attempt == comp("hotel", 1))));
    assert_eq!(
        sim.rec("hotel").compensation.as_ref().unwrap().status,
        CompensationStatus::Pending
    );
    assert!(sim.st.drained);
    let d = sim.resume();
    let start = d.starts().next().unwrap();
    assert_eq!(start.attempt, comp("hotel", 2));
    assert_eq!(start.idempotency_key, "p1/hotel/compensate/1");
}

mod order {
    use super::*;
    use proptest::prelude::*;

    /// A plan of `n` independent steps, each with a compensation, that rolls back on failure.
    fn parallel(n: usize, max_parallel: u32) -> Sim {
        let mut y = format!("on_failure: rollback\nmax_parallel: {max_parallel}\nsteps:\n");
        for i in 0..n {
            y += &format!(
                "  - {{step_id: s{i}, action: a, agent_type: t, depends_on: [], compensate: {{action: undo, agent_type: t}}}}\n"
            );
        }
        Sim::new(&y)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the interleaving of parallel steps, the rollback compensates every step that
        /// completed or was in flight, newest start first, one at a time, each once; and the
        /// log replays to the live state throughout (checked by `Sim` after every command).
        #[test]
        fn compensations_run_in_reverse_start_order(
            n in 2usize..7,
            max_parallel in 1u32..4,
            picks in proptest::collection::vec(0usize..16, 1..12),
        ) {
            let mut sim = parallel(n, max_parallel);
            sim.start();
            let (last, rest) = picks.split_last().unwrap();
            for pick in rest {
                let running = sim.running();
                if running.len() < 2 {
                    break;
                }
                let step = running[pick % running.len()].clone();
                sim.complete(&step, json!(step));
            }
            let running = sim.running();
            let failing = running[last % running.len()].clone();
            // Expected: steps completed or still running, by their start in the log, newest first.
            let mut expected: Vec<(u64, String)> = sim
                .st
                .steps
                .iter()
                .filter(|s| s.def.step_id != failing)
                .filter(|s| matches!(s.rec.status, StepStatus::Completed | StepStatus::Running))
                .map(|s| {
                    let seq = sim
                        .log
                        .iter()
                        .rev()
                        .find(|e| matches!(&e.kind, EventKind::StepStarted { step_id, .. } if *step_id == s.def.step_id))
                        .map(|e| e.seq)
                        .unwrap();
                    (seq, s.def.step_id.clone())
                })
                .collect();
            expected.sort_by_key(|e| std::cmp::Reverse(e.0));
            let expected: Vec<String> = expected.into_iter().map(|e| e.1).collect();
            let d = sim.fail(&failing, false);
            prop_assert_eq!(&d.compensations, &expected);
            // The steps still running are told to stop; no compensation starts before the last
            // of them reported.
            let mut d = d;
            for step in sim.running() {
                prop_assert!(comp_starts(&d).is_empty());
                let attempt = sim.attempt(&step);
                d = sim.report(&step, attempt, StepResult::Failed { error: "stopped".into(), retryable: true });
            }
            let mut ran = Vec::new();
            loop {
                let starts: Vec<AttemptId> = d
                    .starts()
                    .filter(|s| s.attempt.kind == AttemptKind::Compensation)
                    .map(|s| s.attempt.clone())
                    .collect();
                prop_assert!(starts.len() <= 1, "one compensation at a time");
                let Some(attempt) = starts.into_iter().next() else { break };
                ran.push(attempt.step_id.clone());
                d = sim.ok(Command::Outcome {
                    attempt,
                    result: StepResult::Completed { output: json!(null), scores: None },
                });
            }
            prop_assert_eq!(&ran, &expected);
            prop_assert_eq!(sim.st.status, PlanStatus::Failed);
            let r = sim.st.rollback.as_ref().unwrap();
            prop_assert_eq!(r.status, RollbackStatus::Completed);
            prop_assert_eq!(&r.done, &expected);
        }
    }
}
