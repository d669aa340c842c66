//! Quality gates and reviews: every path a verdict can take, every decision a reviewer can make,
//! and every refusal, driven through `handle` like the engine drives it. Each command also checks
//! that the fold of the whole log equals the live state (see `Sim::try_cmd`).

use super::*;
use cairn_core::gate::{GATE_USER, TIMEOUT_USER};
use cairn_core::{ReviewOutcome, ReviewState};

/// A gated step `a` (with `gate` as its `quality_gate` in YAML flow style), then `b`, which
/// renders `a`'s output into its params.
fn gated(gate: &str) -> Sim {
    Sim::new(&format!(
        "steps:\n  - {{step_id: a, action: x, agent_type: t, quality_gate: {gate}}}\n  - {{step_id: b, action: y, agent_type: t, params: {{prev: '{{{{ steps.a.output }}}}'}}}}\n"
    ))
}

impl Sim {
    /// The executor of `step`'s current attempt answers `output` with `scores`.
    fn scored(&mut self, step: &str, scores: Value, output: Value) -> Decision {
        let a = self.attempt(step);
        self.report(
            step,
            a,
            StepResult::Completed {
                output,
                scores: scores.as_object().cloned(),
            },
        )
    }

    fn intervene_as(&mut self, user: &str, body: Value) -> Decision {
        let req = InterventionRequest::from_body(body).expect("well-formed intervention body");
        self.try_cmd_as(user, Command::Intervene(req))
            .expect("interventions are recorded, refused or not")
    }

    fn review(&self, step: &str) -> &cairn_core::Review {
        self.st
            .reviews
            .iter()
            .rev()
            .find(|r| r.step_id == step)
            .unwrap_or_else(|| panic!("no review of {step}"))
    }
}

fn refused_as(d: &Decision, kind: RefusalKind, text: &str) {
    let r = d.refusal.as_ref().expect("refused");
    assert_eq!(r.kind, kind, "{}", r.message);
    assert!(r.message.contains(text), "{:?} lacks {text:?}", r.message);
    assert_eq!(types(d), vec!["intervention_failed"]);
}

fn applied_by<'a>(d: &'a Decision, user: &str) -> &'a cairn_core::Intervention {
    let rec = d
        .events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::InterventionApplied { intervention, .. } if intervention.user == user => {
                Some(intervention)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no intervention by {user} in {:?}", types(d)));
    assert_eq!(rec.status, InterventionStatus::Applied);
    rec
}

#[test]
fn a_passing_gate_completes_the_step_in_the_same_decision() {
    let mut sim = gated("{min_scores: {accuracy: 0.8}, max_scores: {cost: 2}}");
    sim.start();
    let d = sim.scored("a", json!({"accuracy": 0.8, "cost": 2}), json!("draft"));
    assert_eq!(
        types(&d),
        vec!["gate_evaluated", "step_completed", "step_started"]
    );
    let EventKind::GateEvaluated {
        verdict, failed, ..
    } = &d.events[0].kind
    else {
        unreachable!()
    };
    assert_eq!(*verdict, cairn_core::gate::VerdictKind::Passed);
    assert!(failed.is_empty());
    assert_eq!(
        sim.rec("a").scores.as_ref().unwrap().get("accuracy"),
        Some(0.8)
    );
    assert_eq!(started(&d), vec![("b".into(), 1)]);
}

#[test]
fn scores_that_are_not_numbers_fail_the_step_naming_the_score() {
    let mut sim = gated("{min_scores: {accuracy: 0.8}}");
    sim.start();
    let d = sim.scored("a", json!({"accuracy": "high"}), json!("draft"));
    assert_eq!(types(&d), vec!["step_failed", "plan_failed"]);
    let err = sim.rec("a").error.clone().unwrap();
    assert!(err.contains("score `accuracy`"), "{err}");
    // Without a gate too: scores are checked for every step.
    let mut sim = Sim::linear(&["a"]);
    sim.start();
    sim.scored("a", json!({"n": null}), json!(1));
    assert!(sim.rec("a").error.clone().unwrap().contains("score `n`"));
}

#[test]
fn on_fail_retry_reruns_with_feedback_until_the_retries_run_out_then_reviews() {
    let mut sim = gated("{min_scores: {accuracy: 0.8}, on_fail: retry, max_retries: 2}");
    sim.start();
    let d = sim.scored("a", json!({"accuracy": 0.5}), json!("v1"));
    assert_eq!(
        types(&d),
        vec![
            "gate_evaluated",
            "step_failed",
            "intervention_applied",
            "step_started"
        ]
    );
    let iv = applied_by(&d, GATE_USER);
    assert_eq!(iv.kind, "retry_step");
    assert!(iv
        .reason
        .as_deref()
        .unwrap()
        .contains("accuracy 0.5 is not >= 0.8"));
    assert_eq!(started(&d), vec![("a".into(), 2)]);
    let rec = sim.rec("a");
    assert_eq!(
        rec.run, 2,
        "a gate retry is a new run: a new idempotency key"
    );
    assert_eq!(rec.gate_retries, 1);
    let fb = rec
        .gate_feedback
        .clone()
        .expect("feedback for the next attempt");
    assert_eq!(fb.attempt, 1);
    assert_eq!(fb.failed[0].criterion, "min_scores.accuracy");
    assert_eq!(fb.failed[0].score, Some(0.5));
    // The second gate retry, then the default on_retries_exhausted: review.
    sim.scored("a", json!({"accuracy": 0.6}), json!("v2"));
    assert_eq!(sim.attempt("a"), 3);
    assert_eq!(sim.rec("a").gate_feedback.as_ref().unwrap().attempt, 2);
    let d = sim.scored("a", json!({"accuracy": 0.7}), json!("v3"));
    assert_eq!(
        types(&d),
        vec![
            "gate_evaluated",
            "review_opened",
            "plan_paused",
            "plan_drained"
        ]
    );
    assert_eq!(sim.status("a"), StepStatus::AwaitingReview);
    assert_eq!(sim.review("a").attempt, 3);
}

#[test]
fn retries_exhausted_may_fail_the_plan_and_feedback_may_be_off() {
    let mut sim = gated(
        "{min_scores: {accuracy: 0.8}, on_fail: retry, max_retries: 1, feedback: false, on_retries_exhausted: fail}",
    );
    sim.start();
    sim.scored("a", json!({}), json!("v1"));
    assert_eq!(sim.attempt("a"), 2);
    assert_eq!(sim.rec("a").gate_feedback, None);
    let d = sim.scored("a", json!({"accuracy": 0.1}), json!("v2"));
    assert_eq!(
        types(&d),
        vec!["gate_evaluated", "step_failed", "plan_failed"]
    );
    assert_eq!(sim.st.status, PlanStatus::Failed);
    assert!(sim
        .st
        .failure
        .as_deref()
        .unwrap()
        .contains("quality gate failed"));
    // An operator's retry starts the gate afresh.
    sim.intervene(json!({"type": "retry_step", "step_id": "a"}));
    assert_eq!(sim.rec("a").gate_retries, 0);
}

#[test]
fn on_fail_fail_fails_the_step_at_once() {
    let mut sim = gated("{max_scores: {cost: 1}, on_fail: fail}");
    sim.start();
    let d = sim.scored("a", json!({"cost": 3}), json!("v1"));
    assert_eq!(
        types(&d),
        vec!["gate_evaluated", "step_failed", "plan_failed"]
    );
    assert_eq!(sim.rec("a").output, None);
}

#[test]
fn a_review_holds_the_output_pauses_the_plan_and_approval_resumes_it() {
    let mut sim = gated("{min_scores: {accuracy: 0.8}}");
    sim.start();
    let d = sim.scored("a", json!({"accuracy": 0.5}), json!("draft"));
    let seq = d.events[1].seq;
    let review = sim.review("a").clone();
    assert_eq!(review.review_id, format!("rv-{seq}"));
    assert_eq!(review.output, json!("draft"));
    assert_eq!(review.state, ReviewState::Open);
    assert_eq!(review.failed.len(), 1);
    // Dependents and templates never see the held output.
    assert_eq!(sim.rec("a").output, None);
    assert!(sim.st.template_context()["steps"].get("a").is_none());
    assert_eq!(sim.st.status, PlanStatus::Paused);
    assert_eq!(sim.st.pause_reason, Some(PauseReason::ReviewRequired));
    assert_eq!(sim.status("b"), StepStatus::Pending);

    let d = sim.intervene_as(
        "bob",
        json!({"type": "approve_step", "step_id": "a", "attempt": 1, "reason": "fine"}),
    );
    assert_eq!(
        types(&d),
        vec!["intervention_applied", "plan_resumed", "step_started"]
    );
    assert_eq!(sim.status("a"), StepStatus::Completed);
    assert_eq!(sim.rec("a").output, Some(json!("draft")));
    let r = sim.review("a");
    assert_eq!(r.outcome, Some(ReviewOutcome::Approved));
    assert_eq!(r.votes.len(), 1);
    assert_eq!(r.votes[0].user, "bob");
    assert_eq!(started(&d), vec![("b".into(), 1)]);
    // A second decision on the closed review is stale.
    let d = sim.intervene_as("carol", json!({"type": "approve_step", "step_id": "a"}));
    refused_as(&d, RefusalKind::Conflict, "no review of it is open");
    sim.complete("b", json!(null));
    assert_eq!(sim.st.status, PlanStatus::Completed);
}

#[test]
fn always_review_holds_even_a_passing_result() {
    let mut sim = gated("{min_scores: {accuracy: 0.8}, always_review: true}");
    sim.start();
    let d = sim.scored("a", json!({"accuracy": 0.9}), json!("good"));
    assert_eq!(types(&d)[..2], ["gate_evaluated", "review_opened"]);
    assert!(sim.review("a").failed.is_empty());
}

#[test]
fn an_output_override_needs_a_reason_and_replaces_the_output() {
    let mut sim = gated("{min_scores: {accuracy: 0.8}}");
    sim.start();
    sim.scored("a", json!({"accuracy": 0.5}), json!("draft"));
    let d = sim.intervene_as(
        "bob",
        json!({"type": "approve_step", "step_id": "a", "output": "fixed"}),
    );
    refused_as(&d, RefusalKind::Invalid, "needs a reason");
    assert_eq!(sim.status("a"), StepStatus::AwaitingReview);
    let d = sim.intervene_as(
        "bob",
        json!({"type": "approve_step", "step_id": "a", "output": "fixed", "reason": "typo"}),
    );
    let iv = applied_by(&d, "bob");
    assert_eq!(iv.reason.as_deref(), Some("typo"));
    assert_eq!(sim.rec("a").output, Some(json!("fixed")));
    assert_eq!(
        sim.review("a").output,
        json!("draft"),
        "the audit keeps both"
    );
}

#[test]
fn a_rejection_fails_the_step_and_the_plan() {
    let mut sim = gated("{min_scores: {accuracy: 0.8}}");
    sim.start();
    sim.scored("a", json!({"accuracy": 0.5}), json!("draft"));
    let d = sim.intervene_as("bob", json!({"type": "reject_step", "step_id": "a"}));
    refused_as(&d, RefusalKind::Invalid, "needs a reason");
    let d = sim.intervene_as(
        "bob",
        json!({"type": "reject_step", "step_id": "a", "reason": "wrong sources"}),
    );
    assert_eq!(
        types(&d),
        vec!["intervention_applied", "plan_resumed", "plan_failed"]
    );
    assert_eq!(sim.status("a"), StepStatus::Failed);
    assert_eq!(sim.review("a").outcome, Some(ReviewOutcome::Rejected));
    assert!(sim.st.failure.as_deref().unwrap().contains("wrong sources"));
}

#[test]
fn a_rejection_with_retry_runs_the_step_again_with_the_note() {
    let mut sim = gated("{min_scores: {accuracy: 0.8}, feedback: false}");
    sim.start();
    sim.scored("a", json!({"accuracy": 0.5}), json!("draft"));
    let d = sim.intervene_as(
        "bob",
        json!({"type": "reject_step", "step_id": "a", "attempt": 1, "reason": "cite sources", "retry": true}),
    );
    assert_eq!(started(&d), vec![("a".into(), 2)]);
    let rec = sim.rec("a");
    assert_eq!(rec.run, 2);
    let fb = rec.gate_feedback.clone().unwrap();
    assert_eq!(fb.note.as_deref(), Some("cite sources"));
    assert_eq!(fb.reviewer.as_deref(), Some("bob"));
    assert_eq!(fb.attempt, 1);
    // The new attempt passes: the feedback is spent.
    sim.scored("a", json!({"accuracy": 0.9}), json!("better"));
    assert_eq!(sim.rec("a").gate_feedback, None);
    assert_eq!(sim.rec("a").output, Some(json!("better")));
}

#[test]
fn a_quorum_needs_distinct_approvers_and_each_vote_counts_once() {
    let mut sim = gated("{always_review: true, review: {quorum: 2, reviewers: [ann, bob, cy]}}");
    sim.start();
    sim.scored("a", json!({}), json!("draft"));
    let d = sim.intervene_as("dan", json!({"type": "approve_step", "step_id": "a"}));
    refused_as(&d, RefusalKind::Forbidden, "its reviewers are ann, bob, cy");
    let d = sim.intervene_as("ann", json!({"type": "approve_step", "step_id": "a"}));
    assert_eq!(types(&d), vec!["intervention_applied"]);
    assert_eq!(sim.status("a"), StepStatus::AwaitingReview);
    let d = sim.intervene_as("ann", json!({"type": "approve_step", "step_id": "a"}));
    refused_as(&d, RefusalKind::Conflict, "already voted");
    let d = sim.intervene_as(
        "bob",
        json!({"type": "approve_step", "step_id": "a", "attempt": 7}),
    );
    refused_as(&d, RefusalKind::Conflict, "stale");
    sim.intervene_as("bob", json!({"type": "approve_step", "step_id": "a"}));
    assert_eq!(sim.status("a"), StepStatus::Completed);
    let r = sim.review("a");
    assert_eq!(r.approvals(), 2);
    assert_eq!(r.outcome, Some(ReviewOutcome::Approved));
}

#[test]
fn the_first_rejection_closes_a_quorum_review() {
    let mut sim = gated("{always_review: true, review: {quorum: 2}}");
    sim.start();
    sim.scored("a", json!({}), json!("draft"));
    sim.intervene_as("ann", json!({"type": "approve_step", "step_id": "a"}));
    sim.intervene_as(
        "bob",
        json!({"type": "reject_step", "step_id": "a", "reason": "no"}),
    );
    assert_eq!(sim.review("a").outcome, Some(ReviewOutcome::Rejected));
    assert_eq!(sim.status("a"), StepStatus::Failed);
}

#[test]
fn prevent_self_review_keeps_the_starter_from_approving() {
    let mut sim = gated("{always_review: true, review: {prevent_self_review: true}}");
    sim.start(); // by alice
    assert_eq!(sim.st.started_by.as_deref(), Some("alice"));
    sim.scored("a", json!({}), json!("draft"));
    let d = sim.intervene_as("alice", json!({"type": "approve_step", "step_id": "a"}));
    refused_as(&d, RefusalKind::Forbidden, "prevent_self_review");
    sim.intervene_as("bob", json!({"type": "approve_step", "step_id": "a"}));
    assert_eq!(sim.status("a"), StepStatus::Completed);
}

#[test]
fn a_review_times_out_on_its_own_clock_even_while_paused() {
    let mut sim = gated("{always_review: true, review: {timeout_ms: 60000}}");
    sim.start();
    sim.scored("a", json!({}), json!("draft"));
    let deadline = sim.review("a").deadline.unwrap();
    assert_eq!(sim.st.status, PlanStatus::Paused);
    assert_eq!(sim.st.next_wake(), Some(deadline));
    sim.advance(59_999);
    assert!(sim.tick().events.is_empty());
    sim.advance(1);
    let d = sim.tick();
    let iv = applied_by(&d, TIMEOUT_USER);
    assert_eq!(iv.kind, "reject_step");
    assert_eq!(sim.review("a").outcome, Some(ReviewOutcome::TimedOut));
    assert_eq!(sim.review("a").votes[0].user, TIMEOUT_USER);
    assert_eq!(sim.status("a"), StepStatus::Failed);
    assert_eq!(sim.st.status, PlanStatus::Failed);
    assert_eq!(sim.st.next_wake(), None);
}

#[test]
fn on_timeout_approve_completes_the_step() {
    let mut sim =
        gated("{always_review: true, review: {quorum: 2, timeout_ms: 1000, on_timeout: approve}}");
    sim.start();
    sim.scored("a", json!({}), json!("draft"));
    sim.intervene_as("ann", json!({"type": "approve_step", "step_id": "a"}));
    sim.advance(1_000);
    let d = sim.tick();
    applied_by(&d, TIMEOUT_USER);
    assert_eq!(sim.status("a"), StepStatus::Completed);
    assert_eq!(sim.rec("a").output, Some(json!("draft")));
    assert_eq!(started(&d), vec![("b".into(), 1)]);
}

#[test]
fn cancel_voids_open_reviews() {
    let mut sim = gated("{always_review: true}");
    sim.start();
    sim.scored("a", json!({}), json!("draft"));
    sim.cancel();
    assert_eq!(sim.review("a").outcome, Some(ReviewOutcome::Voided));
    assert!(!sim.st.has_open_review());
}

#[test]
fn modify_of_a_step_under_review_voids_it_and_starts_a_new_run() {
    let mut sim = gated("{always_review: true}");
    sim.start();
    sim.scored("a", json!({}), json!("draft"));
    let d = sim
        .intervene(json!({"type": "modify_step", "step_id": "a", "patch": {"params": {"k": 1}}}));
    assert_eq!(sim.review("a").outcome, Some(ReviewOutcome::Voided));
    // The plan was paused only for the review: it resumes and the step runs again.
    assert!(types(&d).contains(&"plan_resumed"), "{:?}", types(&d));
    assert_eq!(started(&d), vec![("a".into(), 2)]);
    assert_eq!(sim.rec("a").run, 2);
}

#[test]
fn skip_and_remove_of_a_step_under_review_void_it() {
    let mut sim = gated("{always_review: true}");
    sim.start();
    sim.scored("a", json!({}), json!("draft"));
    sim.intervene(json!({"type": "skip_step", "step_id": "a"}));
    assert_eq!(sim.review("a").outcome, Some(ReviewOutcome::Voided));
    assert_eq!(sim.status("b"), StepStatus::Running);

    let mut sim = Sim::new(
        "steps:\n  - {step_id: a, action: x, agent_type: t}\n  - {step_id: g, action: x, agent_type: t, depends_on: [], quality_gate: {always_review: true}}\n",
    );
    sim.start();
    sim.scored("g", json!({}), json!("draft"));
    sim.intervene(json!({"type": "remove_step", "step_id": "g"}));
    assert_eq!(sim.review("g").outcome, Some(ReviewOutcome::Voided));
    assert!(sim.st.step("g").is_none());
}

#[test]
fn a_restore_never_carries_an_open_review() {
    let mut sim = gated("{always_review: true}");
    sim.start();
    sim.scored("a", json!({}), json!("draft"));
    // The review's own commit is a checkpoint: restoring it brings the step back pending.
    let seq = sim.last_checkpoint(CheckpointTrigger::Step);
    let cmd = sim.restore_cmd(seq);
    sim.ok(cmd);
    assert_eq!(sim.status("a"), StepStatus::Pending);
    assert_eq!(sim.rec("a").run, 2);
    assert!(!sim.st.has_open_review());
    assert_eq!(sim.review("a").outcome, Some(ReviewOutcome::Voided));
    let d = sim.resume();
    assert_eq!(started(&d), vec![("a".into(), 2)]);
}

#[test]
fn a_retried_attempts_feedback_is_recorded_with_its_start_and_recovery_resends_it() {
    let mut sim = gated("{min_scores: {accuracy: 0.8}, on_fail: retry}");
    sim.start();
    let d = sim.scored("a", json!({"accuracy": 0.5}), json!("v1"));
    // What is sent is what the start records (`invocation_started` checks both).
    let recorded = invocation_started(&d, "a");
    let feedback = recorded
        .gate_feedback
        .clone()
        .expect("the start records the feedback");
    assert_eq!(feedback.attempt, 1);
    assert_eq!(feedback.failed[0].criterion, "min_scores.accuracy");
    // After a crash, the attempt is sent again with the same invocation, feedback included.
    let d = sim.ok(Command::Recover);
    let resent = d.starts().next().expect("a is sent again");
    assert_eq!((resent.attempt.number, &*resent.invocation), (2, &recorded));
    // A rejection with retry: the reviewer's note is recorded with the next start.
    let mut sim = gated("{always_review: true}");
    sim.start();
    sim.scored("a", json!({}), json!("draft"));
    let d = sim.intervene_as(
        "bob",
        json!({"type": "reject_step", "step_id": "a", "retry": true, "reason": "cite sources"}),
    );
    let feedback = invocation_started(&d, "a").gate_feedback.expect("feedback");
    assert_eq!(feedback.note.as_deref(), Some("cite sources"));
    assert_eq!(feedback.reviewer.as_deref(), Some("bob"));
}

/// A start recorded by a build whose invocations had no feedback: its attempt got the step
/// record's, and recovery sends that again.
#[test]
fn recovery_of_a_retried_attempt_recorded_without_feedback_sends_the_records() {
    let mut sim = gated("{min_scores: {accuracy: 0.8}, on_fail: retry}");
    sim.start();
    sim.scored("a", json!({"accuracy": 0.5}), json!("v1"));
    let expect = sim.rec("a").gate_feedback.clone().expect("feedback");
    for e in &mut sim.log {
        if let EventKind::StepStarted {
            invocation: Some(i),
            ..
        } = &mut e.kind
        {
            std::sync::Arc::make_mut(i).gate_feedback = None;
        }
    }
    sim.st = PlanState::replay(PLAN, &sim.log);
    assert_eq!(
        sim.rec("a").invocation.as_ref().unwrap().gate_feedback,
        None
    );
    let d = sim.ok(Command::Recover);
    let resent = d.starts().next().expect("a is sent again");
    assert_eq!(resent.invocation.gate_feedback, Some(*expect));
}

/// A gated step `g` and a step `o` beside it, both started at once.
fn gated_beside_another() -> Sim {
    let mut sim = Sim::new(
        "steps:\n  - {step_id: g, action: x, agent_type: t, quality_gate: {always_review: true, review: {timeout_ms: 1000}}}\n  - {step_id: o, action: x, agent_type: t, depends_on: []}\n",
    );
    sim.start();
    assert_eq!(sim.running(), ids(&["g", "o"]));
    sim
}

#[test]
fn a_plan_that_fails_voids_its_open_reviews_in_the_same_event() {
    let mut sim = gated_beside_another();
    sim.scored("g", json!({}), json!("draft"));
    let review_id = sim.review("g").review_id.clone();
    assert_eq!(sim.st.pause_reason, Some(PauseReason::ReviewRequired));
    // o was running when the review opened; it fails for good, and so does the plan.
    let d = sim.fail("o", false);
    assert_eq!(types(&d), vec!["step_failed", "plan_failed"]);
    let EventKind::PlanFailed { voided_reviews, .. } = &d.events[1].kind else {
        unreachable!()
    };
    assert_eq!(voided_reviews, &vec![review_id]);
    assert_eq!(sim.st.status, PlanStatus::Failed);
    assert!(!sim.st.has_open_review());
    assert_eq!(sim.review("g").outcome, Some(ReviewOutcome::Voided));
    // The held output is dropped: g is pending, as a new run, and no deadline wakes the plan.
    assert_eq!(sim.status("g"), StepStatus::Pending);
    assert_eq!(sim.rec("g").run, 2);
    assert_eq!(sim.rec("g").output, None);
    assert_eq!(sim.st.next_wake(), None);
    // Nobody can decide it any more.
    let d = sim.intervene_as("bob", json!({"type": "approve_step", "step_id": "g"}));
    assert!(d.refusal.is_some());
    // Reopened, the plan runs g again.
    sim.intervene(json!({"type": "retry_step", "step_id": "o"}));
    let d = sim.resume();
    assert_eq!(started(&d), vec![("g".into(), 2), ("o".into(), 2)]);
}

#[test]
fn a_plan_that_fails_with_no_review_open_records_none() {
    let mut sim = gated_beside_another();
    let d = sim.fail("o", false);
    let encoded = cairn_core::log::encode(&d.events[1].kind);
    assert_eq!(encoded.kind, "plan_failed");
    assert!(!encoded.data.contains("voided_reviews"), "{}", encoded.data);
}

#[test]
fn a_gate_that_asks_for_review_after_its_plan_failed_fails_the_step_instead() {
    let mut sim = gated_beside_another();
    sim.fail("o", false);
    assert_eq!(sim.st.status, PlanStatus::Failed);
    // g was still running; its result comes in after the plan ended.
    let d = sim.scored("g", json!({}), json!("draft"));
    assert_eq!(types(&d), vec!["gate_evaluated", "step_failed"]);
    assert!(sim.st.reviews.is_empty());
    assert_eq!(sim.status("g"), StepStatus::Failed);
    let error = sim.rec("g").error.clone().unwrap();
    assert!(
        error.contains("no review opens in a plan that is failed"),
        "{error}"
    );
}

#[test]
fn steps_running_when_a_review_opens_finish_and_resume_continues_other_branches() {
    let mut sim = Sim::new(
        "steps:\n  - {step_id: g, action: x, agent_type: t, quality_gate: {always_review: true}}\n  - {step_id: d, action: x, agent_type: t, depends_on: [g]}\n  - {step_id: o, action: x, agent_type: t, depends_on: []}\n  - {step_id: o2, action: x, agent_type: t, depends_on: [o]}\n",
    );
    sim.start();
    assert_eq!(sim.running(), ids(&["g", "o"]));
    sim.scored("g", json!({}), json!("draft"));
    assert_eq!(sim.st.pause_reason, Some(PauseReason::ReviewRequired));
    // o was running: it finishes, and nothing new starts while paused.
    let d = sim.complete("o", json!(1));
    assert!(started(&d).is_empty());
    assert_eq!(types(&d), vec!["step_completed", "plan_drained"]);
    // An operator's resume runs the other branch; g's dependent waits.
    let d = sim.resume();
    assert_eq!(started(&d), vec![("o2".into(), 1)]);
    sim.complete("o2", json!(2));
    assert_eq!(sim.st.status, PlanStatus::Running);
    assert_eq!(sim.status("d"), StepStatus::Pending);
    let d = sim.intervene_as("bob", json!({"type": "approve_step", "step_id": "g"}));
    assert_eq!(started(&d), vec![("d".into(), 1)]);
}

#[test]
fn a_gate_may_be_added_by_modify_step_and_is_validated() {
    let mut sim = Sim::linear(&["a", "b"]);
    let d = sim.intervene(json!({"type": "modify_step", "step_id": "a", "patch": {"quality_gate": {"on_fail": "sometimes"}}}));
    let r = d.refusal.as_ref().expect("refused");
    assert!(r.message.contains("quality_gate.on_fail"), "{}", r.message);
    applied(&sim.intervene(json!({"type": "modify_step", "step_id": "a", "patch": {"quality_gate": {"min_scores": {"q": 1}, "on_fail": "fail"}}})));
    sim.start();
    sim.scored("a", json!({"q": 0}), json!(null));
    assert_eq!(sim.st.status, PlanStatus::Failed);
}
