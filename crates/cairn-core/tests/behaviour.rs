//! Behaviour of the pure core, driven the way the engine drives it: commands go through
//! [`handle`] with an explicit fake clock, and executors are simulated by answering the attempts
//! that a decision's `Start` actions ask for with `Command::Outcome`.
//!
//! The property tests live in `behaviour/properties.rs`, plan validation in
//! `behaviour/validation.rs` (same test binary).

use cairn_core::decide::{self, Command, Ctx, Decision, StepResult};
use cairn_core::event::{checkpoint_id, Event, EventKind};
use cairn_core::intervention::InterventionStatus;
use cairn_core::state::StepRecord;
use cairn_core::{
    expr, idempotency_key, AttemptId, CheckpointTrigger, InterventionRequest, PauseMode,
    PauseReason, Plan, PlanState, PlanStatus, Refusal, RefusalKind, StepStatus,
};
use serde_json::{json, Value};

#[path = "behaviour/gates.rs"]
mod gates;
#[path = "behaviour/properties.rs"]
mod properties;
#[path = "behaviour/rollback.rs"]
mod rollback;
#[path = "behaviour/upgrade.rs"]
mod upgrade;
#[path = "behaviour/validation.rs"]
mod validation;

const PLAN: &str = "p1";
const MS: i64 = 1_000;

/// A plan, its log, and a clock that only moves when a test moves it.
struct Sim {
    st: PlanState,
    log: Vec<Event>,
    now: cairn_core::Timestamp,
}

impl Sim {
    fn new(yaml: &str) -> Sim {
        let definition = Plan::parse(yaml, cairn_core::Format::Yaml).expect("test plan is valid");
        let mut sim = Sim {
            st: PlanState::empty(PLAN),
            log: Vec::new(),
            now: cairn_core::Timestamp::from_micros(1_000_000),
        };
        sim.ok(Command::Register {
            definition,
            origin: None,
        });
        sim
    }

    /// A plan of `ids`, each step a plain echo step in list order.
    fn linear(ids: &[&str]) -> Sim {
        let mut y = String::from("steps:\n");
        for id in ids {
            y += &format!("  - {{step_id: {id}, action: a, agent_type: builtin.echo}}\n");
        }
        Sim::new(&y)
    }

    fn try_cmd(&mut self, c: Command) -> Result<Decision, Refusal> {
        self.try_cmd_as("alice", c)
    }

    fn try_cmd_as(&mut self, actor: &str, c: Command) -> Result<Decision, Refusal> {
        let before = self.st.clone();
        let r = decide::handle(
            &mut self.st,
            c,
            Ctx {
                now: self.now,
                actor,
            },
        );
        match &r {
            Ok(d) => {
                self.log.extend(d.events.iter().cloned());
                // The fold of the whole log is the live state, after every command.
                assert_eq!(PlanState::replay(PLAN, &self.log), self.st);
            }
            Err(_) => assert_eq!(self.st, before, "a refused command changed the state"),
        }
        r
    }

    fn ok(&mut self, c: Command) -> Decision {
        self.try_cmd(c).expect("command accepted")
    }

    fn refused(&mut self, c: Command) -> Refusal {
        let n = self.log.len();
        let r = self.try_cmd(c).expect_err("command refused");
        assert_eq!(self.log.len(), n, "a refused command emitted events");
        r
    }

    fn advance(&mut self, ms: i64) {
        self.now += ms * MS;
    }

    fn start(&mut self) -> Decision {
        self.ok(Command::Start { reason: None })
    }
    fn pause(&mut self, mode: PauseMode) -> Decision {
        self.ok(Command::Pause {
            mode,
            resume_at: None,
            reason: None,
        })
    }
    fn resume(&mut self) -> Decision {
        self.ok(Command::Resume { reason: None })
    }
    fn cancel(&mut self) -> Decision {
        self.ok(Command::Cancel {
            reason: None,
            rollback: false,
        })
    }
    fn tick(&mut self) -> Decision {
        self.ok(Command::Tick)
    }

    fn attempt(&self, step: &str) -> u32 {
        self.rec(step).attempts
    }

    /// The executor of `step`'s current attempt reports `result`.
    fn report(&mut self, step: &str, attempt: u32, result: StepResult) -> Decision {
        self.ok(Command::Outcome {
            attempt: AttemptId::step(step, attempt),
            result,
        })
    }

    fn complete(&mut self, step: &str, output: Value) -> Decision {
        assert_eq!(
            self.status(step),
            StepStatus::Running,
            "{step} is not running"
        );
        let a = self.attempt(step);
        self.report(
            step,
            a,
            StepResult::Completed {
                output,
                scores: None,
            },
        )
    }

    fn fail(&mut self, step: &str, retryable: bool) -> Decision {
        assert_eq!(
            self.status(step),
            StepStatus::Running,
            "{step} is not running"
        );
        let a = self.attempt(step);
        self.report(
            step,
            a,
            StepResult::Failed {
                error: format!("{step} broke"),
                retryable,
            },
        )
    }

    fn intervene(&mut self, body: Value) -> Decision {
        let req = InterventionRequest::from_body(body).expect("well-formed intervention body");
        self.ok(Command::Intervene(req))
    }

    fn status(&self, step: &str) -> StepStatus {
        self.rec(step).status
    }

    fn rec(&self, step: &str) -> &StepRecord {
        &self
            .st
            .step(step)
            .unwrap_or_else(|| panic!("no step {step}"))
            .rec
    }

    fn running(&self) -> Vec<String> {
        self.st.ids_with(StepStatus::Running)
    }

    fn order(&self) -> Vec<&str> {
        self.st
            .steps
            .iter()
            .map(|s| s.def.step_id.as_str())
            .collect()
    }

    fn checkpoints(&self) -> Vec<(u64, CheckpointTrigger)> {
        self.log
            .iter()
            .filter_map(|e| e.checkpoint.as_ref().map(|c| (e.seq, c.trigger)))
            .collect()
    }

    fn last_checkpoint(&self, trigger: CheckpointTrigger) -> u64 {
        self.checkpoints()
            .into_iter()
            .rev()
            .find(|(_, t)| *t == trigger)
            .expect("a checkpoint of that trigger")
            .0
    }

    /// The restore command for the checkpoint at `seq`, materialised from the log as the engine
    /// does it.
    fn restore_cmd(&self, seq: u64) -> Command {
        let target = PlanState::replay(PLAN, self.log.iter().take_while(|e| e.seq <= seq));
        Command::Restore {
            checkpoint_id: checkpoint_id(seq),
            seq,
            target: std::sync::Arc::new(target),
            reason: None,
        }
    }
}

fn types(d: &Decision) -> Vec<&'static str> {
    d.events.iter().map(|e| e.kind.type_name()).collect()
}

fn started(d: &Decision) -> Vec<(String, u32)> {
    d.starts()
        .map(|s| (s.attempt.step_id.clone(), s.attempt.number))
        .collect()
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Running plans
// ---------------------------------------------------------------------------------------------

#[test]
fn a_linear_plan_runs_its_steps_one_after_the_other_and_completes() {
    let mut sim = Sim::linear(&["a", "b", "c"]);
    assert_eq!(sim.st.status, PlanStatus::Idle);
    let d = sim.start();
    assert_eq!(started(&d), vec![("a".to_owned(), 1)]);
    assert_eq!(sim.st.status, PlanStatus::Running);

    let d = sim.complete("a", json!({"n": 1}));
    assert_eq!(started(&d), vec![("b".to_owned(), 1)]);
    assert_eq!(sim.running(), ids(&["b"]));
    assert_eq!(sim.status("c"), StepStatus::Pending);

    let d = sim.complete("b", json!({"n": 2}));
    assert_eq!(started(&d), vec![("c".to_owned(), 1)]);

    let d = sim.complete("c", json!({"n": 3}));
    assert!(started(&d).is_empty());
    assert_eq!(types(&d), vec!["step_completed", "plan_completed"]);
    assert_eq!(sim.st.status, PlanStatus::Completed);
    assert_eq!(sim.rec("b").output, Some(json!({"n": 2})));

    // Initial checkpoint + one per step that ended.
    let triggers: Vec<_> = sim.checkpoints().into_iter().map(|(_, t)| t).collect();
    assert_eq!(
        triggers,
        vec![
            CheckpointTrigger::Initial,
            CheckpointTrigger::Step,
            CheckpointTrigger::Step,
            CheckpointTrigger::Step
        ]
    );
    // seq is contiguous from 1.
    for (i, e) in sim.log.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
    }
}

#[test]
fn a_two_step_plan_run_to_the_end_has_exactly_three_checkpoints() {
    let mut sim = Sim::linear(&["a", "b"]);
    sim.start();
    sim.complete("a", json!(1));
    sim.complete("b", json!(2));
    assert_eq!(sim.st.status, PlanStatus::Completed);
    assert_eq!(
        sim.checkpoints().len(),
        3,
        "a 2-step plan has 3 checkpoints"
    );
}

#[test]
fn max_parallel_bounds_the_number_of_running_steps() {
    let mut y = String::from("max_parallel: 2\nsteps:\n");
    for id in ["a", "b", "c", "d", "e"] {
        y += &format!("  - {{step_id: {id}, action: x, agent_type: t, depends_on: []}}\n");
    }
    let mut sim = Sim::new(&y);
    let d = sim.start();
    assert_eq!(started(&d), vec![("a".into(), 1), ("b".into(), 1)]);
    assert_eq!(sim.running().len(), 2);
    let d = sim.complete("b", json!(null));
    assert_eq!(started(&d), vec![("c".into(), 1)]);
    assert_eq!(sim.running(), ids(&["a", "c"]));
    let d = sim.complete("a", json!(null));
    assert_eq!(started(&d), vec![("d".into(), 1)]);
    sim.complete("c", json!(null));
    assert_eq!(sim.running(), ids(&["d", "e"]));
    sim.complete("d", json!(null));
    assert_eq!(sim.running(), ids(&["e"]));
    let d = sim.complete("e", json!(null));
    assert_eq!(types(&d).last(), Some(&"plan_completed"));
}

#[test]
fn depends_on_empty_runs_at_once_and_absent_means_after_the_previous_step() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t}
  - {step_id: b, action: x, agent_type: t, depends_on: []}
  - {step_id: c, action: x, agent_type: t}
  - {step_id: d, action: x, agent_type: t, depends_on: [a, c]}
",
    );
    let d = sim.start();
    assert_eq!(started(&d), vec![("a".into(), 1), ("b".into(), 1)]);
    let d = sim.complete("a", json!(null));
    assert!(started(&d).is_empty(), "c waits for b, d waits for c");
    let d = sim.complete("b", json!(null));
    assert_eq!(started(&d), vec![("c".into(), 1)]);
    let d = sim.complete("c", json!(null));
    assert_eq!(started(&d), vec![("d".into(), 1)]);
}

#[test]
fn a_failing_step_is_retried_after_its_backoff_and_fails_the_plan_after_max_attempts() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t, retry: {max_attempts: 3, backoff_ms: 100, backoff_factor: 2.0}}
  - {step_id: b, action: x, agent_type: t}
",
    );
    sim.start();
    let t0 = sim.now;
    let d = sim.fail("a", true);
    assert!(started(&d).is_empty(), "no retry before the backoff");
    assert_eq!(sim.status("a"), StepStatus::Pending);
    assert_eq!(sim.rec("a").retry_at, Some(t0 + 100 * MS));
    assert_eq!(sim.st.next_wake(), Some(t0 + 100 * MS));
    assert_eq!(sim.st.status, PlanStatus::Running);

    sim.advance(99);
    let d = sim.tick();
    assert!(d.events.is_empty(), "still waiting: {:?}", types(&d));
    sim.advance(1);
    let d = sim.tick();
    assert_eq!(started(&d), vec![("a".into(), 2)]);

    let t1 = sim.now;
    sim.fail("a", true);
    assert_eq!(
        sim.rec("a").retry_at,
        Some(t1 + 200 * MS),
        "backoff doubles"
    );
    sim.advance(199);
    assert!(sim.tick().events.is_empty());
    sim.advance(1);
    assert_eq!(started(&sim.tick()), vec![("a".into(), 3)]);

    let d = sim.fail("a", true);
    assert_eq!(types(&d), vec!["step_failed", "plan_failed"]);
    assert_eq!(sim.status("a"), StepStatus::Failed);
    assert_eq!(sim.rec("a").attempts, 3);
    assert_eq!(sim.st.status, PlanStatus::Failed);
    assert_eq!(sim.status("b"), StepStatus::Pending);
    assert!(sim.st.failure.as_deref().unwrap().contains("a broke"));
}

#[test]
fn a_non_retryable_failure_fails_the_plan_at_once_whatever_the_policy() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t, retry: {max_attempts: 5}}
",
    );
    sim.start();
    let d = sim.fail("a", false);
    assert_eq!(types(&d), vec!["step_failed", "plan_failed"]);
    assert_eq!(sim.rec("a").attempts, 1);
    assert_eq!(sim.st.status, PlanStatus::Failed);
}

#[test]
fn steps_in_flight_finish_after_the_plan_failed() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t, depends_on: []}
  - {step_id: b, action: x, agent_type: t, depends_on: []}
",
    );
    sim.start();
    sim.fail("a", false);
    assert_eq!(sim.st.status, PlanStatus::Failed);
    let d = sim.complete("b", json!("late but valid"));
    assert_eq!(types(&d), vec!["step_completed"]);
    assert_eq!(sim.status("b"), StepStatus::Completed);
    assert_eq!(sim.st.status, PlanStatus::Failed);
}

#[test]
fn a_false_condition_skips_the_step_and_its_dependents_still_run() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t}
  - {step_id: b, action: x, agent_type: t, when: 'steps.a.output.hits > 0'}
  - {step_id: c, action: x, agent_type: t}
",
    );
    sim.start();
    let d = sim.complete("a", json!({"hits": 0}));
    assert_eq!(
        types(&d),
        vec!["step_completed", "step_skipped", "step_started"]
    );
    assert_eq!(sim.status("b"), StepStatus::Skipped);
    assert_eq!(started(&d), vec![("c".into(), 1)]);
    sim.complete("c", json!(null));
    assert_eq!(sim.st.status, PlanStatus::Completed);
}

#[test]
fn templates_and_conditions_see_the_outputs_of_earlier_steps() {
    let mut sim = Sim::new(
        "query: market
steps:
  - {step_id: a, action: x, agent_type: t, params: {q: '{{ query }}'}}
  - {step_id: b, action: x, agent_type: t, when: 'steps.a.output.hits > 2', params: {n: '{{ steps.a.output.hits }}', s: 'got {{ steps.a.output.hits }} for {{ query }}'}}
",
    );
    sim.start();
    let a = sim.st.step("a").unwrap().def.params.clone();
    assert_eq!(
        expr::render(&a, &sim.st.template_context()).unwrap(),
        json!({"q": "market"})
    );
    let d = sim.complete("a", json!({"hits": 3}));
    assert_eq!(started(&d), vec![("b".into(), 1)]);
    let ctx = sim.st.template_context();
    assert_eq!(ctx["steps"]["a"]["status"], json!("completed"));
    let b = sim.st.step("b").unwrap().def.params.clone();
    assert_eq!(
        expr::render(&b, &ctx).unwrap(),
        json!({"n": 3, "s": "got 3 for market"})
    );
}

/// A plan's `inputs` are read as `inputs.*` by conditions and params, and stay in the
/// definition; a plan without them sees an empty mapping.
#[test]
fn conditions_and_params_read_the_plan_inputs() {
    let mut sim = Sim::new(
        "inputs: {topic: rust, depth: 2, deep: false}
steps:
  - {step_id: a, action: x, agent_type: t, params: {q: 'about {{ inputs.topic }}', n: '{{ inputs.depth }}'}}
  - {step_id: b, action: x, agent_type: t, when: 'inputs.deep'}
  - {step_id: c, action: x, agent_type: t, when: 'inputs.depth > 1'}
",
    );
    let d = sim.start();
    let a = invocation_started(&d, "a");
    assert_eq!(a.params, json!({"q": "about rust", "n": 2}));
    sim.complete("a", json!(null));
    assert_eq!(sim.status("b"), StepStatus::Skipped);
    assert_eq!(sim.running(), vec!["c".to_owned()]);
    assert_eq!(
        sim.st.definition().inputs,
        json!({"topic": "rust", "depth": 2, "deep": false})
    );

    let mut bare = Sim::new(
        "steps:\n  - {step_id: a, action: x, agent_type: t, params: {q: '{{ inputs.nope }}'}}\n",
    );
    assert_eq!(bare.st.template_context()["inputs"], json!({}));
    let d = bare.start();
    assert!(
        started(&d).is_empty(),
        "an undefined input must not start the step"
    );
    let err = bare.rec("a").error.clone().unwrap_or_default();
    assert!(err.contains("inputs.nope"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Pause, resume, cancel
// ---------------------------------------------------------------------------------------------

fn two_parallel_then_c() -> Sim {
    Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t, depends_on: []}
  - {step_id: b, action: x, agent_type: t, depends_on: []}
  - {step_id: c, action: x, agent_type: t, depends_on: [a, b]}
  - {step_id: d, action: x, agent_type: t, depends_on: []}
",
    )
}

#[test]
fn a_boundary_pause_starts_nothing_new_records_results_in_flight_and_says_when_drained() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t, depends_on: []}
  - {step_id: b, action: x, agent_type: t, depends_on: []}
  - {step_id: c, action: x, agent_type: t}
",
    );
    sim.start();
    assert_eq!(sim.running(), ids(&["a", "b"]));
    let d = sim.pause(PauseMode::Boundary);
    assert_eq!(types(&d), vec!["plan_paused"]);
    assert_eq!(
        d.events[0].checkpoint.as_ref().unwrap().trigger,
        CheckpointTrigger::Pause
    );
    assert_eq!(sim.st.status, PlanStatus::Paused);
    assert_eq!(sim.st.pause_reason, Some(PauseReason::Operator));
    assert!(!sim.st.drained);

    // b finishes: recorded, but c (which follows b) does not start, and the plan is not quiet yet.
    let d = sim.complete("b", json!("b-out"));
    assert_eq!(types(&d), vec!["step_completed"]);
    assert_eq!(sim.status("b"), StepStatus::Completed);
    assert_eq!(sim.status("c"), StepStatus::Pending);

    // When the last one ends, the plan is quiet.
    let d = sim.complete("a", json!("a-out"));
    assert_eq!(types(&d), vec!["step_completed", "plan_drained"]);
    assert!(sim.st.drained);
    assert_eq!(sim.status("c"), StepStatus::Pending);

    let d = sim.resume();
    assert_eq!(types(&d), vec!["plan_resumed", "step_started"]);
    assert_eq!(started(&d), vec![("c".into(), 1)]);
}

#[test]
fn pausing_a_quiet_plan_drains_at_once() {
    let mut sim = Sim::linear(&["a", "b"]);
    sim.start();
    sim.pause(PauseMode::Boundary);
    sim.complete("a", json!(null));
    assert!(sim.st.drained);
    // Pausing again is a conflict.
    let r = sim.refused(Command::Pause {
        mode: PauseMode::Boundary,
        resume_at: None,
        reason: None,
    });
    assert_eq!(r.kind, RefusalKind::Conflict);
}

#[test]
fn an_immediate_pause_interrupts_running_steps_and_ignores_their_late_results() {
    let mut sim = two_parallel_then_c();
    sim.start();
    assert_eq!(sim.running(), ids(&["a", "b", "d"]));
    let d = sim.pause(PauseMode::Immediate);
    assert_eq!(
        types(&d),
        vec![
            "plan_paused",
            "step_interrupted",
            "step_interrupted",
            "step_interrupted",
            "plan_drained"
        ]
    );
    for s in ["a", "b", "d"] {
        assert_eq!(sim.status(s), StepStatus::Pending);
        assert_eq!(sim.rec(s).attempts, 1);
        assert_eq!(
            sim.rec(s).run_attempts,
            0,
            "an interrupted attempt does not count"
        );
    }
    assert!(sim.st.drained);

    // The executor of a did not notice and reports anyway.
    let before = sim.st.clone();
    let d = sim.report(
        "a",
        1,
        StepResult::Completed {
            output: json!("late"),
            scores: None,
        },
    );
    assert_eq!(types(&d), vec!["step_result_ignored"]);
    assert_eq!(sim.status("a"), StepStatus::Pending);
    assert_eq!(sim.rec("a").output, None);
    assert_eq!(sim.st.steps, before.steps);

    // Resume runs them again with a new attempt number.
    let d = sim.resume();
    assert_eq!(
        started(&d),
        vec![("a".into(), 2), ("b".into(), 2), ("d".into(), 2)]
    );
    // The attempt-1 result arriving now is still ignored.
    let d = sim.report(
        "b",
        1,
        StepResult::Failed {
            error: "late".into(),
            retryable: false,
        },
    );
    assert_eq!(types(&d), vec!["step_result_ignored"]);
    assert_eq!(sim.status("b"), StepStatus::Running);
    assert_eq!(sim.st.status, PlanStatus::Running);
}

#[test]
fn resume_at_resumes_a_paused_plan_on_a_tick_once_the_time_has_come() {
    let mut sim = Sim::linear(&["a", "b"]);
    sim.start();
    sim.complete("a", json!(null));
    let at = sim.now + 1_000 * MS;
    sim.ok(Command::Pause {
        mode: PauseMode::Immediate,
        resume_at: Some(at),
        reason: Some("lunch".into()),
    });
    assert_eq!(sim.st.next_wake(), Some(at));
    sim.advance(999);
    assert!(sim.tick().events.is_empty());
    assert_eq!(sim.st.status, PlanStatus::Paused);
    sim.advance(1);
    let d = sim.tick();
    assert_eq!(types(&d), vec!["plan_resumed", "step_started"]);
    assert_eq!(d.events[0].actor, decide::SYSTEM_ACTOR);
    assert_eq!(sim.st.status, PlanStatus::Running);
    assert_eq!(sim.st.resume_at, None);

    // resume_at in the past is malformed.
    let now = sim.now;
    let r = sim.refused(Command::Pause {
        mode: PauseMode::Boundary,
        resume_at: Some(now),
        reason: None,
    });
    assert_eq!(r.kind, RefusalKind::Invalid);
}

#[test]
fn a_retry_waiting_out_its_backoff_does_not_start_while_paused() {
    let mut sim = Sim::new(
        "steps:\n  - {step_id: a, action: x, agent_type: t, retry: {max_attempts: 2, backoff_ms: 10}}\n",
    );
    sim.start();
    sim.fail("a", true);
    sim.pause(PauseMode::Boundary);
    assert_eq!(sim.st.next_wake(), None);
    sim.advance(50);
    assert!(sim.tick().events.is_empty());
    assert_eq!(sim.status("a"), StepStatus::Pending);
    let d = sim.resume();
    assert_eq!(started(&d), vec![("a".into(), 2)]);
}

#[test]
fn cancel_works_from_idle_running_and_paused_and_late_results_change_nothing() {
    let mut idle = Sim::linear(&["a", "b"]);
    idle.cancel();
    assert_eq!(idle.st.status, PlanStatus::Cancelled);
    assert_eq!(idle.status("a"), StepStatus::Cancelled);

    let mut running = Sim::linear(&["a", "b"]);
    running.start();
    let d = running.cancel();
    assert_eq!(types(&d), vec!["plan_cancelled"]);
    assert_eq!(running.status("a"), StepStatus::Cancelled);
    assert_eq!(running.status("b"), StepStatus::Cancelled);
    let before = running.st.steps.clone();
    let d = running.report(
        "a",
        1,
        StepResult::Completed {
            output: json!("late"),
            scores: None,
        },
    );
    assert_eq!(types(&d), vec!["step_result_ignored"]);
    assert_eq!(running.st.steps, before);
    assert_eq!(running.st.status, PlanStatus::Cancelled);

    let mut paused = Sim::linear(&["a", "b"]);
    paused.start();
    paused.pause(PauseMode::Boundary);
    paused.cancel();
    assert_eq!(paused.st.status, PlanStatus::Cancelled);
    assert_eq!(paused.st.pause_reason, None);
}

#[test]
fn lifecycle_commands_in_the_wrong_state_are_conflicts_that_change_nothing() {
    let start = || Command::Start { reason: None };
    let pause = || Command::Pause {
        mode: PauseMode::Boundary,
        resume_at: None,
        reason: None,
    };
    let resume = || Command::Resume { reason: None };
    let cancel = || Command::Cancel {
        reason: None,
        rollback: false,
    };

    let mut sim = Sim::linear(&["a"]);
    // idle
    assert_eq!(sim.refused(pause()).kind, RefusalKind::Conflict);
    assert_eq!(sim.refused(resume()).kind, RefusalKind::Conflict);
    // running
    sim.start();
    assert_eq!(sim.refused(start()).kind, RefusalKind::Conflict);
    assert_eq!(sim.refused(resume()).kind, RefusalKind::Conflict);
    // paused
    sim.pause(PauseMode::Boundary);
    assert_eq!(sim.refused(start()).kind, RefusalKind::Conflict);
    assert_eq!(sim.refused(pause()).kind, RefusalKind::Conflict);
    // completed
    sim.resume();
    sim.complete("a", json!(null));
    assert_eq!(sim.st.status, PlanStatus::Completed);
    for c in [start(), pause(), resume(), cancel()] {
        let r = sim.refused(c);
        assert_eq!(r.kind, RefusalKind::Conflict);
        assert!(r.message.contains("completed"), "{}", r.message);
    }
    // restore while running
    let mut sim = Sim::linear(&["a"]);
    sim.start();
    let cmd = sim.restore_cmd(2);
    assert_eq!(sim.refused(cmd).kind, RefusalKind::Conflict);
    // failed and cancelled
    sim.fail("a", false);
    for c in [start(), pause(), resume(), cancel()] {
        assert_eq!(sim.refused(c).kind, RefusalKind::Conflict);
    }
    let mut sim = Sim::linear(&["a"]);
    sim.cancel();
    for c in [start(), pause(), resume(), cancel()] {
        assert_eq!(sim.refused(c).kind, RefusalKind::Conflict);
    }
}

// ---------------------------------------------------------------------------------------------
// Breakpoints
// ---------------------------------------------------------------------------------------------

#[test]
fn pause_before_pauses_once_and_resume_starts_the_step() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t}
  - {step_id: b, action: x, agent_type: t, pause_before: true}
  - {step_id: c, action: x, agent_type: t}
",
    );
    sim.start();
    let d = sim.complete("a", json!(null));
    assert_eq!(
        types(&d),
        vec!["step_completed", "plan_paused", "plan_drained"]
    );
    assert_eq!(sim.st.pause_reason, Some(PauseReason::Breakpoint));
    assert_eq!(sim.status("b"), StepStatus::Pending);
    let d = sim.resume();
    assert_eq!(started(&d), vec![("b".into(), 1)]);
    let d = sim.complete("b", json!(null));
    assert_eq!(started(&d), vec![("c".into(), 1)]);
}

#[test]
fn pause_after_pauses_when_the_step_completes() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t, pause_after: true}
  - {step_id: b, action: x, agent_type: t}
",
    );
    sim.start();
    let d = sim.complete("a", json!(null));
    assert_eq!(
        types(&d),
        vec!["step_completed", "plan_paused", "plan_drained"]
    );
    assert_eq!(sim.st.pause_reason, Some(PauseReason::Breakpoint));
    assert_eq!(sim.status("b"), StepStatus::Pending);
    let d = sim.resume();
    assert_eq!(started(&d), vec![("b".into(), 1)]);
    sim.complete("b", json!(null));
    assert_eq!(sim.st.status, PlanStatus::Completed);
}

// ---------------------------------------------------------------------------------------------
// Interventions
// ---------------------------------------------------------------------------------------------

/// Asserts the decision recorded a refused intervention of `kind` whose error mentions `text`.
fn assert_refused(sim: &Sim, d: &Decision, kind: RefusalKind, text: &str) {
    let r = d.refusal.as_ref().expect("refused");
    assert_eq!(r.kind, kind, "{}", r.message);
    assert!(r.message.contains(text), "{:?} lacks {text:?}", r.message);
    assert_eq!(types(d), vec!["intervention_failed"]);
    let EventKind::InterventionFailed { intervention } = &d.events[0].kind else {
        unreachable!()
    };
    assert_eq!(intervention.status, InterventionStatus::Failed);
    assert_eq!(intervention.error.as_deref(), Some(r.message.as_str()));
    assert_eq!(intervention.user, "alice");
    assert_eq!(intervention.plan_version, sim.st.version);
    assert!(intervention.diff.is_empty());
}

fn applied(d: &Decision) -> &cairn_core::Intervention {
    assert!(d.refusal.is_none(), "refused: {:?}", d.refusal);
    assert_eq!(types(d)[0], "intervention_applied");
    let rec = d.intervention.as_ref().unwrap();
    assert_eq!(rec.status, InterventionStatus::Applied);
    rec
}

#[test]
fn skip_step_skips_a_pending_step_and_its_dependents_run() {
    let mut sim = Sim::linear(&["a", "b", "c"]);
    sim.start();
    sim.pause(PauseMode::Boundary);
    sim.complete("a", json!(null));
    let d = sim.intervene(json!({"type": "skip_step", "step_id": "b", "reason": "not needed"}));
    let rec = applied(&d);
    assert_eq!(rec.reason.as_deref(), Some("not needed"));
    assert_eq!(rec.plan_version, 1, "skip does not change the definition");
    assert_eq!(sim.status("b"), StepStatus::Skipped);
    let d = sim.resume();
    assert_eq!(started(&d), vec![("c".into(), 1)]);

    // A running step cannot be skipped; an unknown step is malformed.
    let d = sim.intervene(json!({"type": "skip_step", "step_id": "c"}));
    assert_refused(&sim, &d, RefusalKind::Conflict, "running");
    let d = sim.intervene(json!({"type": "skip_step", "step_id": "zz"}));
    assert_refused(&sim, &d, RefusalKind::Invalid, "does not exist");
}

/// BUG (reported): a skip of a step whose own dependencies are not done yet releases its
/// dependents at once, so `c` runs concurrently with `a` in the plain list `a, b, c`.
#[test]

fn skipping_a_step_before_it_could_run_keeps_the_order_around_it() {
    let mut sim = Sim::linear(&["a", "b", "c"]);
    sim.start();
    let d = sim.intervene(json!({"type": "skip_step", "step_id": "b"}));
    assert!(
        started(&d).is_empty(),
        "c must wait for a (c after b after a), but started: {:?}",
        started(&d)
    );
    assert_eq!(
        started(&sim.complete("a", json!(null))),
        vec![("c".into(), 1)]
    );
}

#[test]
fn retry_step_on_the_failed_step_of_a_failed_plan_pauses_it_for_the_operator() {
    let mut sim = Sim::linear(&["a", "b"]);
    sim.start();
    let key1 = idempotency_key(PLAN, "a", sim.rec("a").run);
    sim.fail("a", false);
    assert_eq!(sim.st.status, PlanStatus::Failed);

    let d = sim.intervene(json!({"type": "retry_step", "step_id": "a"}));
    let rec = applied(&d);
    assert!(rec
        .diff
        .iter()
        .any(|c| c.path == "steps.a.status" && c.after == json!("pending")));
    assert_eq!(sim.st.status, PlanStatus::Paused);
    assert_eq!(sim.st.pause_reason, Some(PauseReason::Intervention));
    assert_eq!(sim.st.failure, None);
    assert_eq!(sim.status("a"), StepStatus::Pending);
    assert_eq!(sim.rec("a").run, 2);

    let d = sim.resume();
    assert_eq!(
        started(&d),
        vec![("a".into(), 2)],
        "attempts continue counting"
    );
    assert_ne!(idempotency_key(PLAN, "a", sim.rec("a").run), key1);
    sim.complete("a", json!(null));
    sim.complete("b", json!(null));
    assert_eq!(sim.st.status, PlanStatus::Completed);

    // Retrying a pending step is refused.
    let mut sim = Sim::linear(&["a", "b"]);
    let d = sim.intervene(json!({"type": "retry_step", "step_id": "b"}));
    assert_refused(&sim, &d, RefusalKind::Conflict, "pending");
}

#[test]
fn a_failed_plan_stays_failed_until_all_its_failed_steps_are_retried_or_skipped() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t, depends_on: []}
  - {step_id: b, action: x, agent_type: t, depends_on: []}
  - {step_id: c, action: x, agent_type: t, depends_on: [a, b]}
",
    );
    sim.start();
    sim.fail("a", false);
    sim.fail("b", false);
    assert_eq!(sim.st.status, PlanStatus::Failed);
    applied(&sim.intervene(json!({"type": "retry_step", "step_id": "a"})));
    assert_eq!(sim.st.status, PlanStatus::Failed);
    applied(&sim.intervene(json!({"type": "skip_step", "step_id": "b"})));
    assert_eq!(sim.st.status, PlanStatus::Paused);
    assert_eq!(sim.st.pause_reason, Some(PauseReason::Intervention));
    assert_eq!(started(&sim.resume()), vec![("a".into(), 2)]);
}

#[test]
fn modify_step_patches_a_pending_step_and_bumps_the_version() {
    let mut sim = Sim::linear(&["a", "b"]);
    sim.start();
    let v = sim.st.version;
    let d = sim.intervene(json!({"type": "modify_step", "step_id": "b",
        "patch": {"params": {"q": "new"}, "retry": {"max_attempts": 2}}, "expected_version": v}));
    let rec = applied(&d);
    assert_eq!(rec.plan_version, v + 1);
    let params = rec
        .diff
        .iter()
        .find(|c| c.path == "steps.b.params")
        .expect("params diff");
    assert_eq!(params.before, json!(null));
    assert_eq!(params.after, json!({"q": "new"}));
    assert_eq!(sim.st.version, v + 1);
    let b = &sim.st.step("b").unwrap().def;
    assert_eq!(b.params, json!({"q": "new"}));
    assert_eq!(b.retry_policy().max_attempts, 2);

    let d = sim.intervene(json!({"type": "modify_step", "step_id": "a", "patch": {"action": "y"}}));
    assert_refused(&sim, &d, RefusalKind::Conflict, "running");
    let d =
        sim.intervene(json!({"type": "modify_step", "step_id": "b", "patch": {"step_id": "z"}}));
    assert_refused(&sim, &d, RefusalKind::Invalid, "cannot be modified");
    let d = sim.intervene(
        json!({"type": "modify_step", "step_id": "b", "patch": {"depends_on": ["nope"]}}),
    );
    assert_refused(&sim, &d, RefusalKind::Invalid, "nope");
    let d =
        sim.intervene(json!({"type": "modify_step", "step_id": "b", "patch": {"when": "a =="}}));
    assert_refused(&sim, &d, RefusalKind::Invalid, "when");
    assert_eq!(sim.st.version, v + 1, "refusals do not bump the version");
}

#[test]
fn add_step_inserts_after_before_or_at_the_end() {
    let mut sim = Sim::linear(&["a", "b"]);
    let step = |id: &str| json!({"step_id": id, "action": "x", "agent_type": "t"});
    applied(&sim.intervene(json!({"type": "add_step", "step": step("end")})));
    applied(&sim.intervene(json!({"type": "add_step", "step": step("x"), "after": "a"})));
    applied(&sim.intervene(json!({"type": "add_step", "step": step("y"), "before": "a"})));
    assert_eq!(sim.order(), vec!["y", "a", "x", "b", "end"]);
    assert_eq!(sim.st.version, 4);

    let d = sim.intervene(json!({"type": "add_step", "step": step("a")}));
    assert_refused(&sim, &d, RefusalKind::Conflict, "already exists");
    let d =
        sim.intervene(json!({"type": "add_step", "step": step("q"), "after": "a", "before": "b"}));
    assert_refused(&sim, &d, RefusalKind::Invalid, "not both");
    let d = sim.intervene(json!({"type": "add_step", "step": step("q"), "after": "zz"}));
    assert_refused(&sim, &d, RefusalKind::Invalid, "zz");
    let d = sim.intervene(json!({"type": "add_step", "step": {"step_id": "q", "action": "x"}}));
    assert_refused(&sim, &d, RefusalKind::Invalid, "agent_type");

    // The new steps run in their place.
    assert_eq!(started(&sim.start()), vec![("y".into(), 1)]);
    assert_eq!(
        started(&sim.complete("y", json!(null))),
        vec![("a".into(), 1)]
    );
    assert_eq!(
        started(&sim.complete("a", json!(null))),
        vec![("x".into(), 1)]
    );

    // A terminal plan takes no new step.
    let mut done = Sim::linear(&["a"]);
    done.start();
    done.complete("a", json!(null));
    let d = done.intervene(json!({"type": "add_step", "step": step("n")}));
    assert_refused(&done, &d, RefusalKind::Conflict, "completed");
}

#[test]
fn remove_step_removes_a_pending_step_and_relinks_the_implicit_order() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t}
  - {step_id: b, action: x, agent_type: t}
  - {step_id: c, action: x, agent_type: t}
  - {step_id: d, action: x, agent_type: t, depends_on: [c]}
",
    );
    sim.start();
    let d = sim.intervene(json!({"type": "remove_step", "step_id": "c"}));
    assert_refused(&sim, &d, RefusalKind::Conflict, "d depends on c");
    let d = sim.intervene(json!({"type": "remove_step", "step_id": "a"}));
    assert_refused(&sim, &d, RefusalKind::Conflict, "running");
    let rec = applied(&sim.intervene(json!({"type": "remove_step", "step_id": "b"}))).clone();
    assert!(rec.diff.iter().any(|c| c.path == "order"));
    assert_eq!(sim.order(), vec!["a", "c", "d"]);
    assert_eq!(
        started(&sim.complete("a", json!(null))),
        vec![("c".into(), 1)]
    );
}

#[test]
fn reorder_steps_permutes_pending_steps_but_not_before_an_explicit_dependency() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t}
  - {step_id: b, action: x, agent_type: t}
  - {step_id: c, action: x, agent_type: t}
  - {step_id: d, action: x, agent_type: t, depends_on: [b]}
",
    );
    sim.start();
    let d = sim.intervene(json!({"type": "reorder_steps", "order": ["b", "c"]}));
    assert_refused(&sim, &d, RefusalKind::Invalid, "permutation");
    let d = sim.intervene(json!({"type": "reorder_steps", "order": ["d", "b", "c"]}));
    assert_refused(&sim, &d, RefusalKind::Invalid, "d would come before b");
    applied(&sim.intervene(json!({"type": "reorder_steps", "order": ["c", "b", "d"]})));
    assert_eq!(sim.order(), vec!["a", "c", "b", "d"]);
    assert_eq!(
        started(&sim.complete("a", json!(null))),
        vec![("c".into(), 1)]
    );
    assert_eq!(
        started(&sim.complete("c", json!(null))),
        vec![("b".into(), 1)]
    );
}

#[test]
fn rerun_from_sends_a_step_and_everything_downstream_back_to_pending() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t}
  - {step_id: b, action: x, agent_type: t}
  - {step_id: c, action: x, agent_type: t}
  - {step_id: d, action: x, agent_type: t, depends_on: []}
",
    );
    sim.start();
    sim.complete("a", json!(1));
    sim.complete("d", json!(1));
    sim.complete("b", json!(1));
    sim.complete("c", json!(1));
    assert_eq!(sim.st.status, PlanStatus::Completed);

    let d = sim.intervene(json!({"type": "rerun_from", "step_id": "b"}));
    applied(&d);
    assert_eq!(sim.status("a"), StepStatus::Completed);
    assert_eq!(sim.status("b"), StepStatus::Pending);
    assert_eq!(
        sim.status("c"),
        StepStatus::Pending,
        "c follows b implicitly"
    );
    assert_eq!(sim.status("d"), StepStatus::Completed);
    assert_eq!(sim.rec("b").run, 2);
    assert_eq!(sim.st.status, PlanStatus::Paused);
    assert_eq!(sim.st.pause_reason, Some(PauseReason::Intervention));
    assert_eq!(started(&sim.resume()), vec![("b".into(), 2)]);

    let d = sim.intervene(json!({"type": "rerun_from", "step_id": "c"}));
    assert_refused(&sim, &d, RefusalKind::Conflict, "has ended");
}

#[test]
fn approve_and_reject_need_an_open_review_and_reject_needs_a_reason() {
    let mut sim = Sim::linear(&["a"]);
    let d = sim.intervene(json!({"type": "approve_step", "step_id": "a"}));
    assert_refused(&sim, &d, RefusalKind::Conflict, "no review of it is open");
    let d = sim.intervene(json!({"type": "reject_step", "step_id": "a", "reason": "bad"}));
    assert_refused(&sim, &d, RefusalKind::Conflict, "no review of it is open");
    let d = sim.intervene(json!({"type": "reject_step", "step_id": "a"}));
    assert_refused(&sim, &d, RefusalKind::Invalid, "reject_step needs a reason");
}

#[test]
fn an_expected_version_mismatch_is_a_recorded_conflict() {
    let mut sim = Sim::linear(&["a", "b"]);
    let v = sim.st.version;
    let d = sim.intervene(json!({"type": "skip_step", "step_id": "b", "expected_version": v + 1}));
    assert_refused(&sim, &d, RefusalKind::Conflict, "expected plan version");
    assert_eq!(sim.status("b"), StepStatus::Pending);
    applied(&sim.intervene(json!({"type": "skip_step", "step_id": "b", "expected_version": v})));
}

#[test]
fn a_cancelled_plan_takes_no_intervention() {
    let mut sim = Sim::linear(&["a", "b"]);
    sim.cancel();
    let d = sim.intervene(json!({"type": "retry_step", "step_id": "a"}));
    assert_refused(&sim, &d, RefusalKind::Conflict, "cancelled");
}

#[test]
fn a_dry_run_changes_nothing_and_answers_with_the_diff() {
    let mut sim = Sim::linear(&["a", "b", "c"]);
    sim.start();
    let before = sim.st.clone();
    let d = sim.intervene(json!({"type": "reorder_steps", "order": ["c", "b"], "dry_run": true}));
    assert!(d.events.is_empty(), "{:?}", types(&d));
    assert_eq!(sim.st, before);
    let rec = d.intervention.as_ref().unwrap();
    assert!(rec.dry_run);
    assert_eq!(rec.status, InterventionStatus::WouldApply);
    // Not recorded, so no id: the JSON answer has none rather than a made-up one.
    let json = serde_json::to_value(rec).unwrap();
    assert_eq!(json["status"], "would_apply");
    assert_eq!(json["dry_run"], true);
    assert!(json.get("intervention_id").is_none(), "{json}");
    assert_eq!(rec.plan_version, before.version + 1);
    let order = rec
        .diff
        .iter()
        .find(|c| c.path == "order")
        .expect("order diff");
    assert_eq!(order.before, json!(["a", "b", "c"]));
    assert_eq!(order.after, json!(["a", "c", "b"]));

    // A dry run that would be refused says why, and records nothing.
    let d = sim.intervene(json!({"type": "skip_step", "step_id": "a", "dry_run": true}));
    assert!(d.events.is_empty());
    assert_eq!(d.refusal.as_ref().unwrap().kind, RefusalKind::Conflict);
    let rec = d.intervention.as_ref().unwrap();
    assert_eq!(rec.status, InterventionStatus::WouldFail);
    assert!(rec.dry_run && rec.intervention_id.is_empty());
    assert!(rec.error.as_deref().unwrap_or("").contains("running"));
    assert_eq!(sim.st, before);
    assert!(sim
        .checkpoints()
        .iter()
        .all(|(_, t)| *t != CheckpointTrigger::Intervention));
}

#[test]
fn every_applied_intervention_is_a_checkpoint_so_restoring_the_latest_keeps_it() {
    let mut sim = Sim::linear(&["a", "b", "c"]);
    sim.start();
    sim.pause(PauseMode::Boundary);
    sim.complete("a", json!("a1"));
    let d = sim.intervene(json!({"type": "skip_step", "step_id": "b"}));
    applied(&d);
    let mark = d.events[0].checkpoint.as_ref().expect("a checkpoint");
    assert_eq!(mark.trigger, CheckpointTrigger::Intervention);
    assert_eq!(mark.trigger.as_str(), "intervention");
    assert_eq!(CheckpointTrigger::parse("intervention"), Some(mark.trigger));
    let latest = *sim.checkpoints().last().unwrap();
    assert_eq!(latest, (d.events[0].seq, CheckpointTrigger::Intervention));
    // Restoring the latest checkpoint keeps the skip.
    let cmd = sim.restore_cmd(latest.0);
    sim.ok(cmd);
    assert_eq!(sim.status("b"), StepStatus::Skipped);

    // Refused interventions and dry runs take none.
    let n = sim.checkpoints().len();
    let d = sim.intervene(json!({"type": "skip_step", "step_id": "a"}));
    assert!(d.refusal.is_some());
    sim.intervene(json!({"type": "skip_step", "step_id": "c", "dry_run": true}));
    assert_eq!(sim.checkpoints().len(), n);
}

#[test]
fn add_step_reads_the_prototypes_insert_after_and_insert_before() {
    let mut sim = Sim::linear(&["a", "b"]);
    let d = sim.intervene(json!({"type": "add_step", "insert_after": "a",
        "step": {"step_id": "x", "action": "x", "agent_type": "t"}}));
    applied(&d);
    let d = sim.intervene(json!({"type": "add_step", "insert_before": "a",
        "step": {"step_id": "y", "action": "x", "agent_type": "t"}}));
    // Recorded under the names of today, so the stored record reads the same either way.
    let payload = serde_json::to_value(&applied(&d).request).unwrap();
    assert_eq!(payload["before"], "a");
    assert_eq!(sim.order(), ["y", "a", "x", "b"]);
}

#[test]
fn add_and_modify_report_every_unknown_field_of_the_step_with_a_suggestion() {
    let mut sim = Sim::linear(&["a", "b"]);
    let d = sim.intervene(
        json!({"type": "add_step", "step": {"step_id": "x", "action": "x",
        "agent_typ": "t", "parms": {}, "retry": {"max_attempt": 2}}}),
    );
    assert_refused(
        &sim,
        &d,
        RefusalKind::Invalid,
        "not a valid step: unknown field `agent_typ`; did you mean `agent_type`?; unknown field `parms`; did you mean `params`?; retry: unknown field `max_attempt`; did you mean `max_attempts`?",
    );
    let d = sim.intervene(json!({"type": "modify_step", "step_id": "b",
        "patch": {"retry": {"backoff": 5}}}));
    assert_refused(
        &sim,
        &d,
        RefusalKind::Invalid,
        "retry: unknown field `backoff`",
    );
}

#[test]
fn complete_step_supplies_a_pending_steps_result_and_its_dependents_run() {
    let mut sim = Sim::linear(&["a", "b", "c"]);
    sim.start();
    sim.pause(PauseMode::Boundary);
    sim.complete("a", json!("a1"));
    let d = sim.intervene(json!({"type": "complete_step", "step_id": "b",
        "output": {"hits": 7}, "reason": "found by hand"}));
    let rec = applied(&d);
    assert_eq!(rec.kind, "complete_step");
    assert_eq!(rec.step_id.as_deref(), Some("b"));
    assert_eq!(rec.reason.as_deref(), Some("found by hand"));
    assert_eq!(rec.plan_version, 1, "the definition does not change");
    assert!(rec
        .diff
        .iter()
        .any(|c| c.path == "steps.b.status" && c.after == json!("completed")));
    assert_eq!(sim.status("b"), StepStatus::Completed);
    assert_eq!(sim.rec("b").output, Some(json!({"hits": 7})));
    assert_eq!(sim.rec("b").attempts, 0, "no attempt ran");
    // Templates see it as they would an agent's answer.
    assert_eq!(
        sim.st.template_context()["steps"]["b"]["output"]["hits"],
        json!(7)
    );
    assert_eq!(started(&sim.resume()), vec![("c".into(), 1)]);
    sim.complete("c", json!(null));
    assert_eq!(sim.st.status, PlanStatus::Completed);
}

#[test]
fn complete_step_on_a_running_step_stops_counting_its_attempt() {
    let mut sim = Sim::linear(&["a", "b"]);
    sim.start();
    let attempt = sim.attempt("a");
    let d = sim.intervene(json!({"type": "complete_step", "step_id": "a", "output": "by hand"}));
    applied(&d);
    // The dependent starts at once in a running plan.
    assert_eq!(started(&d), vec![("b".into(), 1)]);
    assert!(!sim.running().contains(&"a".to_string()));
    // The attempt's late result is recorded as ignored and changes nothing.
    let d = sim.report(
        "a",
        attempt,
        StepResult::Completed {
            output: json!("late"),
            scores: None,
        },
    );
    assert_eq!(types(&d), vec!["step_result_ignored"]);
    assert_eq!(sim.rec("a").output, Some(json!("by hand")));
}

#[test]
fn complete_step_on_the_failed_step_of_a_failed_plan_pauses_it_for_the_operator() {
    let mut sim = Sim::linear(&["a", "b"]);
    sim.start();
    sim.fail("a", false);
    assert_eq!(sim.st.status, PlanStatus::Failed);
    let d = sim.intervene(json!({"type": "complete_step", "step_id": "a", "output": [1, 2]}));
    applied(&d);
    assert_eq!(sim.st.status, PlanStatus::Paused);
    assert_eq!(sim.st.pause_reason, Some(PauseReason::Intervention));
    assert_eq!(sim.rec("a").error, None);
    assert_eq!(started(&sim.resume()), vec![("b".into(), 1)]);
}

#[test]
fn complete_step_is_refused_on_a_step_that_has_ended_and_needs_an_output() {
    let mut sim = Sim::linear(&["a", "b"]);
    sim.start();
    sim.complete("a", json!(1));
    let d = sim.intervene(json!({"type": "complete_step", "step_id": "a", "output": 2}));
    assert_refused(
        &sim,
        &d,
        RefusalKind::Conflict,
        "only a pending, queued, running or failed step",
    );
    let d = sim.intervene(json!({"type": "complete_step", "step_id": "zz", "output": 2}));
    assert_refused(&sim, &d, RefusalKind::Invalid, "does not exist");
    let err = InterventionRequest::from_body(json!({"type": "complete_step", "step_id": "b"}))
        .unwrap_err();
    assert!(err.to_string().contains("output"), "{err}");
    sim.cancel();
    let d = sim.intervene(json!({"type": "complete_step", "step_id": "b", "output": 2}));
    assert_refused(&sim, &d, RefusalKind::Conflict, "cancelled");
}

// ---------------------------------------------------------------------------------------------
// Checkpoints, restore, recovery
// ---------------------------------------------------------------------------------------------

#[test]
fn restore_brings_back_the_checkpoint_state_paused_and_ignores_late_results() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t}
  - {step_id: b, action: x, agent_type: t}
  - {step_id: c, action: x, agent_type: t}
",
    );
    sim.start();
    sim.complete("a", json!("a1"));
    let cp = sim.last_checkpoint(CheckpointTrigger::Step);
    let at_cp = PlanState::replay(PLAN, sim.log.iter().take_while(|e| e.seq <= cp));
    assert_eq!(at_cp.ids_with(StepStatus::Completed), ids(&["a"]));
    sim.complete("b", json!("b1"));
    assert_eq!(sim.running(), ids(&["c"]));
    let c_attempt = sim.attempt("c");

    // Not while running.
    let cmd = sim.restore_cmd(cp);
    assert_eq!(sim.refused(cmd).kind, RefusalKind::Conflict);

    sim.pause(PauseMode::Boundary);
    let version_before = sim.st.version;
    let cmd = sim.restore_cmd(cp);
    let d = sim.ok(cmd);
    assert_eq!(types(&d), vec!["checkpoint_restored"]);
    assert_eq!(sim.st.status, PlanStatus::Paused);
    assert_eq!(sim.st.pause_reason, Some(PauseReason::Restored));
    assert!(sim.st.version > version_before.max(at_cp.version));
    assert!(sim.st.drained);
    assert_eq!(sim.st.definition().steps, at_cp.definition().steps);
    // Step records are the checkpoint's; attempt numbers keep counting so that no attempt
    // number is ever reused.
    assert_eq!(sim.st.steps.len(), at_cp.steps.len());
    for (now, then) in sim.st.steps.iter().zip(&at_cp.steps) {
        let mut expected = then.clone();
        expected.rec.attempts = now.rec.attempts;
        expected.rec.run = now.rec.run;
        assert_eq!(now, &expected);
        assert!(now.rec.run >= then.rec.run);
        assert!(now.rec.attempts >= then.rec.attempts);
    }
    assert_eq!(sim.attempt("b"), 1);

    // c was running before the restore; its result now changes nothing.
    let d = sim.report(
        "c",
        c_attempt,
        StepResult::Completed {
            output: json!("stale"),
            scores: None,
        },
    );
    assert_eq!(types(&d), vec!["step_result_ignored"]);
    assert_eq!(sim.status("c"), StepStatus::Pending);

    let d = sim.resume();
    assert_eq!(
        started(&d),
        vec![("b".into(), 2)],
        "b runs again, new attempt"
    );
    sim.complete("b", json!("b2"));
    let d = sim.report(
        "c",
        c_attempt,
        StepResult::Completed {
            output: json!("stale"),
            scores: None,
        },
    );
    assert_eq!(
        types(&d),
        vec!["step_result_ignored"],
        "c is running a newer attempt"
    );
    sim.complete("c", json!("c2"));
    assert_eq!(sim.st.status, PlanStatus::Completed);
    assert_eq!(sim.rec("b").output, Some(json!("b2")));
}

#[test]
fn restoring_a_checkpoint_taken_while_steps_ran_makes_them_pending() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t, depends_on: []}
  - {step_id: b, action: x, agent_type: t, depends_on: []}
",
    );
    sim.start();
    sim.ok(Command::Checkpoint {
        label: Some("mid".into()),
        reason: None,
    });
    let cp = sim.last_checkpoint(CheckpointTrigger::Manual);
    sim.complete("a", json!(null));
    sim.cancel();
    // Restore is allowed on a cancelled plan ("allowed unless running").
    let cmd = sim.restore_cmd(cp);
    sim.ok(cmd);
    assert_eq!(sim.status("a"), StepStatus::Pending);
    assert_eq!(sim.status("b"), StepStatus::Pending);
    assert_eq!(sim.rec("a").run_attempts, 0);
    assert_eq!(sim.rec("a").attempts, 1);
    let d = sim.resume();
    assert_eq!(started(&d), vec![("a".into(), 2), ("b".into(), 2)]);
}

#[test]
fn recover_redispatches_running_attempts_with_the_same_attempt_and_key() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t, depends_on: []}
  - {step_id: b, action: x, agent_type: t, depends_on: []}
",
    );
    sim.start();
    sim.complete("b", json!(null));
    let key = idempotency_key(PLAN, "a", sim.rec("a").run);
    // The process restarts: the state is rebuilt from the log, then recovered.
    sim.st = PlanState::replay(PLAN, &sim.log);
    let d = sim.ok(Command::Recover);
    assert_eq!(types(&d), vec!["step_recovered"]);
    assert_eq!(started(&d), vec![("a".into(), 1)]);
    assert_eq!(idempotency_key(PLAN, "a", sim.rec("a").run), key);
    assert_eq!(sim.status("b"), StepStatus::Completed, "never run again");
    sim.complete("a", json!(null));
    assert_eq!(sim.st.status, PlanStatus::Completed);
}

#[test]
fn recover_of_a_paused_plan_interrupts_what_was_in_flight() {
    let mut sim = Sim::linear(&["a", "b"]);
    sim.start();
    sim.pause(PauseMode::Boundary);
    let d = sim.ok(Command::Recover);
    assert_eq!(types(&d), vec!["step_interrupted", "plan_drained"]);
    assert_eq!(sim.status("a"), StepStatus::Pending);
    assert_eq!(started(&sim.resume()), vec![("a".into(), 2)]);
}

/// Fixed bug. A running plan must always have something that moves it on: a running step, a timer, or an
/// end. Restoring the checkpoint taken right after a step failed (the `step` checkpoint of its
/// `step_failed` event, before `plan_failed`) and resuming gives a running plan with a failed
/// step, nothing running and nothing to wait for.
#[test]
fn resuming_after_restoring_to_a_failed_step_does_not_leave_the_plan_stuck() {
    let mut sim = Sim::linear(&["a", "b"]);
    sim.start();
    sim.fail("a", false);
    assert_eq!(sim.st.status, PlanStatus::Failed);
    let cp = sim.last_checkpoint(CheckpointTrigger::Step);
    let cmd = sim.restore_cmd(cp);
    sim.ok(cmd);
    assert_eq!(sim.status("a"), StepStatus::Failed);
    sim.resume();
    let stuck = sim.st.status == PlanStatus::Running
        && sim.st.running_count() == 0
        && sim.st.next_wake().is_none();
    assert!(
        !stuck,
        "running plan with nothing running and no timer: {:?}",
        sim.st
            .steps
            .iter()
            .map(|s| (&s.def.step_id, s.rec.status))
            .collect::<Vec<_>>()
    );
}

/// BUG (reported): a manual checkpoint taken after a cancel holds cancelled steps; restoring it
/// gives a paused plan that resumes into a running plan with nothing it can ever run.
#[test]

fn restoring_a_checkpoint_of_a_cancelled_plan_does_not_leave_it_stuck() {
    let mut sim = Sim::linear(&["a"]);
    sim.cancel();
    sim.ok(Command::Checkpoint {
        label: None,
        reason: None,
    });
    let cp = sim.last_checkpoint(CheckpointTrigger::Manual);
    let cmd = sim.restore_cmd(cp);
    sim.ok(cmd);
    sim.resume();
    assert!(
        sim.st.status != PlanStatus::Running
            || sim.st.running_count() > 0
            || sim.st.next_wake().is_some(),
        "running plan with nothing running and no timer: a is {:?}",
        sim.status("a")
    );
}

/// BUG (reported): a step removed and added back under the same id starts again at attempt 1,
/// run 1, so a late result of the removed step's attempt 1 is taken as the new step's result
/// (and both share the idempotency key `p1/b/1`).
#[test]

fn a_late_result_of_a_removed_step_is_not_taken_for_the_step_added_back_under_its_id() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t}
  - {step_id: b, action: old, agent_type: t, depends_on: []}
",
    );
    sim.start();
    let old_key = idempotency_key(PLAN, "b", sim.rec("b").run);
    sim.pause(PauseMode::Immediate);
    applied(&sim.intervene(json!({"type": "remove_step", "step_id": "b"})));
    applied(&sim.intervene(json!({"type": "add_step",
        "step": {"step_id": "b", "action": "new", "agent_type": "t", "depends_on": []}})));
    sim.resume();
    assert_eq!(sim.status("b"), StepStatus::Running);
    // The executor of the removed step's attempt 1 reports late.
    let d = sim.report(
        "b",
        1,
        StepResult::Completed {
            output: json!("result of the OLD step"),
            scores: None,
        },
    );
    assert_eq!(types(&d), vec!["step_result_ignored"]);
    assert_ne!(
        idempotency_key(PLAN, "b", sim.rec("b").run),
        old_key,
        "the new step b shares the removed step's idempotency key"
    );
}

/// BUG (reported): after a restore, `run` comes back from the checkpoint, so a later retry or
/// rerun hands out an idempotency key an earlier, different run already used.
#[test]

fn idempotency_keys_are_never_reused_by_a_different_run_after_a_restore() {
    let mut sim = Sim::linear(&["a"]);
    sim.start();
    sim.complete("a", json!("run 1"));
    let cp = sim.last_checkpoint(CheckpointTrigger::Step);
    applied(&sim.intervene(json!({"type": "retry_step", "step_id": "a"})));
    sim.resume();
    let key_of_run_2 = idempotency_key(PLAN, "a", sim.rec("a").run);
    sim.complete("a", json!("run 2"));
    let cmd = sim.restore_cmd(cp);
    sim.ok(cmd);
    applied(&sim.intervene(json!({"type": "rerun_from", "step_id": "a"})));
    sim.resume();
    assert_eq!(sim.status("a"), StepStatus::Running);
    assert_ne!(idempotency_key(PLAN, "a", sim.rec("a").run), key_of_run_2);
}

/// Fixed bug: the scheduler ran after a dry-run intervention, so a dry run sent once a retry's
/// backoff had passed (before the engine's timer ticked) started that retry.
#[test]
fn a_dry_run_emits_nothing_even_when_a_retry_is_due() {
    let mut sim = Sim::new(
        "steps:\n  - {step_id: a, action: x, agent_type: t, retry: {max_attempts: 2, backoff_ms: 10}}\n  - {step_id: b, action: x, agent_type: t}\n",
    );
    sim.start();
    sim.fail("a", true);
    sim.advance(20);
    let before = sim.st.clone();
    let d = sim.intervene(json!({"type": "skip_step", "step_id": "b", "dry_run": true}));
    assert!(d.events.is_empty(), "dry run emitted {:?}", types(&d));
    assert_eq!(sim.st, before);
}

/// A process with a remote-worker queue: the agent types it has no executor for start
/// `queued`, count against `max_parallel`, and run once a worker's claim is recorded.
#[test]
fn remote_steps_are_queued_until_a_worker_claims_them() {
    let definition = Plan::parse(
        "max_parallel: 2\nsteps:\n  - {step_id: a, action: x, agent_type: research, depends_on: []}\n  - {step_id: b, action: x, agent_type: builtin.echo, depends_on: []}\n  - {step_id: c, action: x, agent_type: research, depends_on: []}\n",
        cairn_core::Format::Yaml,
    )
    .unwrap();
    let mut st = PlanState::empty(PLAN);
    let mut log: Vec<Event> = Vec::new();
    let remote = |t: &str| t == "research";
    let mut run = |st: &mut PlanState, c: Command, actor: &str| {
        let before = st.clone();
        let r = decide::handle_starting(
            st,
            c,
            Ctx {
                now: cairn_core::Timestamp::from_micros(5),
                actor,
            },
            decide::Starts::Queue(&remote),
        );
        match &r {
            Ok(d) => log.extend(d.events.iter().cloned()),
            Err(_) => assert_eq!(*st, before, "a refused command changed the state"),
        }
        assert_eq!(PlanState::replay(PLAN, &log), *st);
        r
    };
    run(
        &mut st,
        Command::Register {
            definition,
            origin: None,
        },
        "op",
    )
    .unwrap();
    let d = run(&mut st, Command::Start { reason: None }, "op").unwrap();
    // a is queued, b runs here, c waits: two are active (max_parallel 2).
    assert_eq!(st.step("a").unwrap().rec.status, StepStatus::Queued);
    assert_eq!(st.step("b").unwrap().rec.status, StepStatus::Running);
    assert_eq!(st.step("c").unwrap().rec.status, StepStatus::Pending);
    assert!(d.events.iter().any(|e| matches!(
        &e.kind,
        EventKind::StepStarted { step_id, queued: true, .. } if step_id == "a"
    )));
    let view = cairn_core::view::PlanView::of(&st);
    assert_eq!(view.queued_steps, vec!["a".to_string()]);
    assert_eq!(view.running_steps, vec!["b".to_string()]);
    assert_eq!(
        view.steps[0].waiting_for.as_deref(),
        Some("a worker of agent type research")
    );
    // A claim for another attempt, or for a step that is not queued, is refused.
    let stale = Command::Claim {
        attempt: AttemptId::step("a", 2),
        worker_id: "w1".into(),
    };
    assert_eq!(
        run(&mut st, stale, "w").unwrap_err().kind,
        RefusalKind::Conflict
    );
    let not_queued = Command::Claim {
        attempt: AttemptId::step("b", 1),
        worker_id: "w1".into(),
    };
    assert!(run(&mut st, not_queued, "w").is_err());
    let d = run(
        &mut st,
        Command::Claim {
            attempt: AttemptId::step("a", 1),
            worker_id: "w1".into(),
        },
        "worker-token-user",
    )
    .unwrap();
    assert_eq!(st.step("a").unwrap().rec.status, StepStatus::Running);
    assert_eq!(d.events[0].actor, "worker-token-user");
    assert!(
        matches!(&d.events[0].kind, EventKind::StepClaimed { worker_id, .. } if worker_id == "w1")
    );
    // A second claim of the same attempt is refused: one worker gets it.
    let again = Command::Claim {
        attempt: AttemptId::step("a", 1),
        worker_id: "w2".into(),
    };
    assert!(run(&mut st, again, "w").is_err());
    // Its outcome completes it like any attempt's; c is handed to the queue next.
    let done = |step: &str| Command::Outcome {
        attempt: AttemptId::step(step, 1),
        result: StepResult::Completed {
            output: json!(1),
            scores: None,
        },
    };
    run(&mut st, done("a"), "cairn").unwrap();
    assert_eq!(st.step("c").unwrap().rec.status, StepStatus::Queued);
    // A queued attempt can end without a worker (stopped, or the lease expired): its failure
    // is recorded like a running one's.
    run(&mut st, done("b"), "cairn").unwrap();
    run(
        &mut st,
        Command::Cancel {
            reason: None,
            rollback: false,
        },
        "op",
    )
    .unwrap();
    assert_eq!(st.step("c").unwrap().rec.status, StepStatus::Cancelled);
    assert_eq!(st.status, PlanStatus::Cancelled);
}

/// Logs written before the queue had a status read as before: `queued` defaults to false.
#[test]
fn a_step_started_event_without_queued_reads_as_running() {
    let kind =
        EventKind::from_parts("step_started", r#"{"step_id":"a","attempt":1,"run":1}"#).unwrap();
    assert!(matches!(kind, EventKind::StepStarted { queued: false, .. }));
    assert!(!kind.data_json().contains("queued"));
    let kind = EventKind::from_parts("step_recovered", r#"{"step_id":"a","attempt":1}"#).unwrap();
    assert!(matches!(
        kind,
        EventKind::StepRecovered { queued: false, .. }
    ));
}

// ---------------------------------------------------------------------------------------------
// Actions: the core decides what runs, what stops and when the plan wakes
// ---------------------------------------------------------------------------------------------

fn invocation_started(d: &Decision, step: &str) -> cairn_core::Invocation {
    let from_event = d
        .events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::StepStarted {
                step_id,
                invocation,
                ..
            } if step_id == step => invocation.clone(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no recorded start of {step}: {:?}", types(d)));
    let action = d
        .starts()
        .find(|s| s.attempt.step_id == step)
        .unwrap_or_else(|| panic!("no start action for {step}"));
    assert_eq!(
        action.invocation, from_event,
        "the action sends what the log records"
    );
    (*from_event).clone()
}

/// A start records what the agent receives: the action, the agent type and the params with the
/// templates rendered against the outputs the step may see; the start action carries the same.
#[test]
fn a_start_records_the_rendered_invocation_and_its_action_sends_it() {
    let mut sim = Sim::new(
        "query: find things
steps:
  - {step_id: a, action: search, agent_type: builtin.echo}
  - {step_id: b, action: summarise, agent_type: llm, timeout_ms: 500, params: {n: '{{ steps.a.output.hits }}', q: 'about {{ query }}', fixed: [1]}}
",
    );
    let d = sim.start();
    let a = invocation_started(&d, "a");
    assert_eq!(
        (a.action.as_str(), a.agent_type.as_str(), &a.params),
        ("search", "builtin.echo", &Value::Null)
    );
    let d = sim.complete("a", json!({"hits": 3}));
    let b = invocation_started(&d, "b");
    assert_eq!(b.action, "summarise");
    assert_eq!(b.agent_type, "llm");
    assert_eq!(
        b.params,
        json!({"n": 3, "q": "about find things", "fixed": [1]})
    );
    assert_eq!(sim.rec("b").invocation.as_deref(), Some(&b));
    let start = d.starts().next().unwrap();
    assert_eq!(start.attempt, AttemptId::step("b", 1));
    assert_eq!(start.idempotency_key, idempotency_key(PLAN, "b", 1));
    assert_eq!((start.run, start.timeout_ms), (1, Some(500)));
    assert_eq!(start.query, "find things");
    assert!(!start.queued);
    // Once the attempt ended, its record keeps no copy of what it was sent.
    sim.complete("b", json!("done"));
    assert_eq!(sim.rec("b").invocation, None);
}

/// A template that cannot render fails its step without starting it (no retry can help), with
/// a message that names the undefined name; the plan fails with it.
#[test]
fn a_template_that_cannot_render_fails_the_step_naming_the_undefined_name() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: builtin.echo}
  - {step_id: b, action: x, agent_type: builtin.echo, retry: {max_attempts: 3}, params: {y: '{{ steps.a.output.nope }}'}}
",
    );
    sim.start();
    let d = sim.complete("a", json!({"hits": 1}));
    assert_eq!(
        types(&d),
        vec!["step_completed", "step_failed", "plan_failed"]
    );
    assert!(started(&d).is_empty());
    assert_eq!(sim.status("b"), StepStatus::Failed);
    assert_eq!(sim.attempt("b"), 0, "no attempt started");
    let error = sim.rec("b").error.clone().unwrap_or_default();
    assert!(
        error.contains("`steps.a.output.nope` is undefined"),
        "{error}"
    );
    assert_eq!(sim.st.status, PlanStatus::Failed);
}

/// The process says which agent types it can run; a step of a type nothing runs fails (without
/// retry) instead of starting, and one handed to the queue starts `queued`.
#[test]
fn the_process_routes_agent_types_and_a_missing_one_fails_its_step() {
    let definition = Plan::parse(
        "steps:
  - {step_id: a, action: x, agent_type: here, depends_on: []}
  - {step_id: b, action: x, agent_type: remote, depends_on: []}
  - {step_id: c, action: x, agent_type: nowhere, retry: {max_attempts: 5}}
",
        cairn_core::Format::Yaml,
    )
    .unwrap();
    let route = |t: &str| match t {
        "here" => decide::Route::Local,
        "remote" => decide::Route::Queue,
        _ => decide::Route::Missing,
    };
    let mut st = PlanState::empty(PLAN);
    let ctx = Ctx {
        now: cairn_core::Timestamp::from_micros(5),
        actor: "op",
    };
    let starts = decide::Starts::Route(&route);
    decide::handle_starting(
        &mut st,
        Command::Register {
            definition,
            origin: None,
        },
        ctx,
        starts,
    )
    .unwrap();
    let d = decide::handle_starting(&mut st, Command::Start { reason: None }, ctx, starts).unwrap();
    let queued: Vec<(String, bool)> = d
        .starts()
        .map(|s| (s.attempt.step_id.clone(), s.queued))
        .collect();
    assert_eq!(queued, vec![("a".into(), false), ("b".into(), true)]);
    assert_eq!(st.step("b").unwrap().rec.status, StepStatus::Queued);
    let outcome = |step: &str| Command::Outcome {
        attempt: AttemptId::step(step, 1),
        result: StepResult::Completed {
            output: json!(1),
            scores: None,
        },
    };
    decide::handle_starting(&mut st, outcome("a"), ctx, starts).unwrap();
    let d = decide::handle_starting(&mut st, outcome("b"), ctx, starts).unwrap();
    assert!(d.starts().next().is_none());
    let c = &st.step("c").unwrap().rec;
    assert_eq!((c.status, c.attempts), (StepStatus::Failed, 0));
    assert_eq!(
        c.error.as_deref(),
        Some("no executor is registered for agent type \"nowhere\"")
    );
    assert_eq!(st.status, PlanStatus::Failed);
}

/// A recovered attempt is sent exactly what its start recorded, even when the outputs its
/// params were rendered from changed since: same params, same idempotency key.
#[test]
fn recovery_resends_the_recorded_invocation_even_after_its_inputs_changed() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: builtin.echo}
  - {step_id: b, action: x, agent_type: t, params: {got: '{{ steps.a.output.n }}'}}
",
    );
    sim.start();
    let sent = invocation_started(&sim.complete("a", json!({"n": 1})), "b");
    assert_eq!(sent.params, json!({"got": 1}));
    // a is run again while b is still out: its output is gone (and will differ).
    sim.intervene(json!({"type": "retry_step", "step_id": "a"}));
    assert_eq!(sim.status("b"), StepStatus::Running);
    assert_eq!(sim.rec("a").output, None);
    // The process restarts.
    sim.st = PlanState::replay(PLAN, &sim.log);
    let d = sim.ok(Command::Recover);
    let resent = d
        .starts()
        .find(|s| s.attempt.step_id == "b")
        .expect("b is sent again");
    assert_eq!(*resent.invocation, sent, "what the first attempt was sent");
    assert_eq!(resent.attempt, AttemptId::step("b", 1));
    assert_eq!(resent.idempotency_key, idempotency_key(PLAN, "b", 1));
    // The recorded invocation is not written again.
    assert!(d.events.iter().all(|e| !matches!(
        &e.kind,
        EventKind::StepRecovered {
            invocation: Some(_),
            ..
        }
    )));
}

/// A log written before starts recorded their invocation: recovery renders the params as it
/// always did, records what it rendered in `step_recovered`, and sends that.
#[test]
fn recovery_of_an_attempt_started_by_an_older_build_renders_and_records_it() {
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: builtin.echo}
  - {step_id: b, action: go, agent_type: t, params: {got: '{{ steps.a.output.n }}'}}
",
    );
    sim.start();
    sim.complete("a", json!({"n": 7}));
    // The same log as an older build wrote it: no invocation on the starts.
    let mut old = sim.log.clone();
    for e in &mut old {
        if let EventKind::StepStarted { invocation, .. } = &mut e.kind {
            *invocation = None;
        }
    }
    let text: Vec<String> = old
        .iter()
        .map(|e| e.kind.data_json())
        .filter(|d| d.contains("\"run\""))
        .collect();
    assert!(text.iter().all(|d| !d.contains("invocation")), "{text:?}");
    sim.log = old;
    sim.st = PlanState::replay(PLAN, &sim.log);
    assert_eq!(sim.rec("b").invocation, None);
    let d = sim.ok(Command::Recover);
    let resent = d.starts().next().expect("b is sent again");
    let expect = cairn_core::Invocation {
        action: "go".into(),
        agent_type: "t".into(),
        params: json!({"got": 7}),
        gate_feedback: None,
    };
    assert_eq!(*resent.invocation, expect);
    assert!(d.events.iter().any(|e| matches!(
        &e.kind,
        EventKind::StepRecovered { invocation: Some(i), .. } if **i == expect
    )));
    assert_eq!(sim.rec("b").invocation.as_deref(), Some(&expect));
}

/// Attempts the plan no longer wants are stopped by action, with the cause; the attempt that
/// reported is not; the timer follows retries and `resume_at`.
#[test]
fn stops_and_timers_are_decided_by_the_core() {
    let stops = |d: &Decision| -> Vec<(AttemptId, String)> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                cairn_core::Action::Stop { attempt, cause } => {
                    Some((attempt.clone(), cause.clone()))
                }
                _ => None,
            })
            .collect()
    };
    let timer = |d: &Decision| match d.actions.last() {
        Some(cairn_core::Action::SetTimer { at }) => *at,
        other => panic!("a decision ends with its timer, not {other:?}"),
    };
    let mut sim = Sim::new(
        "steps:
  - {step_id: a, action: x, agent_type: t, depends_on: []}
  - {step_id: b, action: x, agent_type: t, depends_on: [], retry: {max_attempts: 2, backoff_ms: 100}}
",
    );
    let d = sim.start();
    assert_eq!(timer(&d), None);
    let d = sim.fail("b", true);
    assert!(
        stops(&d).is_empty(),
        "the attempt that reported is not stopped"
    );
    let retry_at = sim.rec("b").retry_at.expect("a retry is due");
    assert_eq!(timer(&d), Some(retry_at));
    sim.advance(100);
    let d = sim.tick();
    assert_eq!(started(&d), vec![("b".to_owned(), 2)]);
    assert_eq!(timer(&d), None);
    let d = sim.pause(PauseMode::Immediate);
    assert_eq!(
        stops(&d),
        vec![
            (AttemptId::step("a", 1), "immediate pause".to_owned()),
            (AttemptId::step("b", 2), "immediate pause".to_owned())
        ]
    );
    let d = sim.resume();
    assert_eq!(started(&d), vec![("a".into(), 2), ("b".into(), 3)]);
    let d = sim.cancel();
    assert_eq!(
        stops(&d),
        vec![
            (AttemptId::step("a", 2), "plan_cancelled".to_owned()),
            (AttemptId::step("b", 3), "plan_cancelled".to_owned())
        ]
    );
    assert_eq!(timer(&d), None);

    let mut sim = Sim::linear(&["a"]);
    sim.start();
    let at = sim.now + 60_000 * MS;
    let d = sim.ok(Command::Pause {
        mode: PauseMode::Boundary,
        resume_at: Some(at),
        reason: None,
    });
    assert!(stops(&d).is_empty(), "a boundary pause lets steps finish");
    assert_eq!(timer(&d), Some(at));
}

/// Every command that carries an operator's reason refuses one longer than 4096 bytes, naming
/// it, and changes nothing.
#[test]
fn a_reason_longer_than_4096_bytes_is_refused_by_every_command() {
    let long = || Some("r".repeat(4097));
    let mut sim = Sim::linear(&["a"]);
    let ok = Some("r".repeat(4096));
    let commands = [
        Command::Start { reason: long() },
        Command::Checkpoint {
            label: None,
            reason: long(),
        },
        Command::Cancel {
            reason: long(),
            rollback: false,
        },
        Command::RecordFork {
            checkpoint_id: "cp-1".into(),
            new_plan_id: "f".into(),
            reason: long(),
        },
    ];
    for c in commands {
        let r = sim.refused(c);
        assert_eq!(r.kind, RefusalKind::Invalid);
        assert_eq!(r.message, "reason is longer than 4096 bytes");
    }
    sim.ok(Command::Start { reason: ok });
    for c in [
        Command::Pause {
            mode: PauseMode::Boundary,
            resume_at: None,
            reason: long(),
        },
        Command::Interrupt { reason: long() },
    ] {
        assert_eq!(sim.refused(c).kind, RefusalKind::Invalid);
    }
    let mut request =
        InterventionRequest::from_body(json!({"type": "skip_step", "step_id": "a"})).unwrap();
    request.reason = long();
    assert_eq!(
        sim.refused(Command::Intervene(request)).message,
        "reason is longer than 4096 bytes"
    );
    sim.pause(PauseMode::Boundary);
    assert_eq!(
        sim.refused(Command::Resume { reason: long() }).kind,
        RefusalKind::Invalid
    );
    let restore = match sim.restore_cmd(1) {
        Command::Restore {
            checkpoint_id,
            seq,
            target,
            ..
        } => Command::Restore {
            checkpoint_id,
            seq,
            target,
            reason: long(),
        },
        _ => unreachable!(),
    };
    assert_eq!(sim.refused(restore).kind, RefusalKind::Invalid);
}

/// The delete rule and the fork's new id are decided by the core.
#[test]
fn delete_and_fork_rules_live_in_the_core() {
    let mut sim = Sim::linear(&["a"]);
    decide::check_delete(&sim.st).expect("an idle plan may be deleted");
    sim.start();
    let r = decide::check_delete(&sim.st).unwrap_err();
    assert_eq!(r.kind, RefusalKind::Conflict);
    assert_eq!(
        r.message,
        "plan p1 is running; pause or cancel it before deleting it"
    );
    sim.pause(PauseMode::Boundary);
    decide::check_delete(&sim.st).expect("a paused plan may be deleted");
    let fork = |id: &str| Command::RecordFork {
        checkpoint_id: "cp-2".into(),
        new_plan_id: id.into(),
        reason: None,
    };
    let r = sim.refused(fork("."));
    assert_eq!(r.kind, RefusalKind::Invalid);
    assert!(
        r.message.contains("new_plan_id \".\" is not a valid id"),
        "{}",
        r.message
    );
    assert_eq!(sim.refused(fork("p1")).kind, RefusalKind::Conflict);
    let d = sim.ok(fork("p2"));
    assert_eq!(types(&d), vec!["plan_forked"]);
}
