//! Quality gates end to end with the real binary: `cairn serve` with the examples' `writer`
//! agent (`examples/agents/writer.py`, a `command` agent that scores its own brief: `coverage` is
//! the share of `must_cover` it covered, one more point per attempt from `params.start`, and
//! `cost_usd` is 0.02 per attempt). Each path a gate can take: a pass, a retry that reaches the
//! agent with its feedback, retries used up, `on_fail: fail`, reviews decided by their own
//! timeout, and every decision the server refuses.
//!
//! The quorum of two users and `kill -9` with a review open or right after an approval are in
//! `server.rs` (`reviews_over_the_cli_…`, `kill_9_keeps_an_open_review_…`); `cli.rs` runs
//! `examples/gated.yaml` (a gate retry, then review once retries are used up).
//!
//! Every wait is a bounded poll of the server; nothing sleeps to prove that nothing happened.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::common::{example, make_token, remote, Api, Auth, Server};

/// A server of the examples' configuration, its admin, and operators: alice, bob, and carol.
struct Gated {
    _dir: TempDir,
    db: PathBuf,
    server: Server,
    api: Api,
    admin: String,
    alice: String,
    bob: String,
    carol: String,
}

impl Gated {
    fn new() -> Gated {
        let dir = tempfile::tempdir().unwrap();
        let db: PathBuf = dir.path().join("cairn.db");
        let server = Gated::serve(&db);
        let admin = server
            .admin
            .clone()
            .unwrap_or_else(|| panic!("no admin token: {}", server.stderr.lock().unwrap()));
        let api = Api::new(&server.base);
        Gated {
            alice: make_token(&db, "alice", "operator"),
            bob: make_token(&db, "bob", "operator"),
            carol: make_token(&db, "carol", "operator"),
            admin,
            _dir: dir,
            db,
            server,
            api,
        }
    }

    fn serve(db: &Path) -> Server {
        let config = example("cairn.toml");
        Server::start(db, &["--config", config.to_str().unwrap()])
    }

    /// `kill -9` of the server, and a new one on the same database.
    fn kill9_and_restart(&mut self) {
        self.server.kill9();
        self.server = Gated::serve(&self.db);
        self.api = Api::new(&self.server.base);
    }

    /// A token made over the API by the admin.
    async fn token(&self, user: &str, role: &str) -> String {
        let made = Auth(&self.api, Some(&self.admin))
            .post("/v1/tokens", json!({"user": user, "role": role}))
            .await
            .expect(201, "POST /v1/tokens")
            .body;
        made["token"].as_str().unwrap().to_owned()
    }

    fn alice(&self) -> Auth<'_> {
        Auth(&self.api, Some(&self.alice))
    }
    fn bob(&self) -> Auth<'_> {
        Auth(&self.api, Some(&self.bob))
    }
    fn carol(&self) -> Auth<'_> {
        Auth(&self.api, Some(&self.carol))
    }

    /// Registers `draft` (the writer under `gate`, covering `start` of four points at attempt 1)
    /// and `publish` (an echo of the draft's brief) as plan `id`, and alice starts it.
    async fn run(&self, id: &str, start: u32, gate: Value) {
        let op = self.alice();
        op.register(json!({"plan_id": id, "query": "solar panel recycling", "steps": [
            {"step_id": "draft", "action": "write", "agent_type": "writer",
             "params": {"must_cover": ["cost", "supply", "regulation", "risks"], "start": start},
             "quality_gate": gate},
            {"step_id": "publish", "action": "publish", "agent_type": "builtin.echo",
             "params": {"brief": "{{ steps.draft.output.brief }}"}}
        ]}))
        .await;
        op.post_empty(&format!("/v1/plans/{id}/start"))
            .await
            .expect(200, "start");
    }

    /// Waits (bounded) until the plan has ended, and answers its snapshot.
    async fn settled(&self, id: &str) -> Value {
        let op = self.alice();
        op.wait_for(id, "completed, failed or cancelled", |p| {
            ["completed", "failed", "cancelled"].contains(&p["state"].as_str().unwrap_or(""))
        })
        .await;
        op.get(&format!("/v1/plans/{id}/snapshot"))
            .await
            .expect(200, "snapshot")
            .body
    }

    /// Waits (bounded) until `draft` awaits review and the plan is paused for it.
    async fn held(&self, id: &str) -> Value {
        let p = self
            .alice()
            .wait_for(id, "held for review", |p| {
                p["state"] == "paused" && step(p, "draft")["status"] == "awaiting_review"
            })
            .await;
        assert_eq!(p["pause_reason"], "review_required", "{p}");
        p
    }

    async fn events(&self, id: &str) -> Vec<Value> {
        self.alice().all_events(id).await
    }

    /// The plan's reviews (open and closed).
    async fn reviews(&self, id: &str) -> Vec<Value> {
        let mut all = Vec::new();
        for state in ["open", "closed"] {
            let page = self
                .alice()
                .get(&format!("/v1/reviews?state={state}&plan_id={id}"))
                .await
                .expect(200, "reviews")
                .body;
            all.extend(page["items"].as_array().unwrap().iter().cloned());
        }
        all
    }

    /// The plan's audit trail: `(type, user, status)` of each intervention.
    async fn audit(&self, id: &str) -> Vec<(String, String, String)> {
        let page = self
            .alice()
            .get(&format!("/v1/plans/{id}/interventions?limit=100"))
            .await
            .expect(200, "interventions")
            .body;
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let s = |k: &str| i[k].as_str().unwrap_or_default().to_owned();
                (s("type"), s("user"), s("status"))
            })
            .collect()
    }
}

/// A step of a plan view or of a snapshot's definition, by id.
fn step<'a>(view: &'a Value, id: &str) -> &'a Value {
    view["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps in {view}"))
        .iter()
        .find(|s| s["step_id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {view}"))
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// The `brief` in the output of a step of a snapshot.
fn brief(snapshot: &Value, step_id: &str) -> String {
    let output = &step(snapshot, step_id)["output"];
    output["brief"]
        .as_str()
        .unwrap_or_else(|| panic!("no brief in the output of {step_id}: {output}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_gate_completes_the_step_with_its_scores_and_opens_no_review() {
    let g = Gated::new();
    g.run(
        "pass",
        4,
        json!({"min_scores": {"coverage": 0.8}, "max_scores": {"cost_usd": 1.0}}),
    )
    .await;
    let done = g.settled("pass").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert!(brief(&done, "publish").contains("risks: covered"), "{done}");
    assert_eq!(
        step(&done, "draft")["scores"],
        json!({"coverage": 1.0, "cost_usd": 0.02})
    );

    let events = g.events("pass").await;
    let judged = of_type(&events, "gate_evaluated");
    assert_eq!(judged.len(), 1, "{events:?}");
    let d = &judged[0]["data"];
    assert_eq!(
        (&d["step_id"], &d["attempt"], &d["verdict"]),
        (&json!("draft"), &json!(1), &json!("passed")),
        "{d}"
    );
    assert_eq!(d["scores"], json!({"coverage": 1.0, "cost_usd": 0.02}));
    assert!(d["failed"].as_array().is_none_or(|f| f.is_empty()), "{d}");
    // The verdict comes before the completion it allows, and nothing waits for a person.
    let pos = |kind: &str| events.iter().position(|e| e["type"] == kind).unwrap();
    assert!(pos("gate_evaluated") < pos("step_completed"));
    assert!(of_type(&events, "review_opened").is_empty(), "{events:?}");
    assert!(g.reviews("pass").await.is_empty());
    assert!(
        g.audit("pass").await.is_empty(),
        "no intervention by the gate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_retry_reaches_the_agent_with_its_feedback_and_the_next_attempt_passes() {
    let g = Gated::new();
    // Attempt 1 covers 3 of 4 points (0.75 < 0.8); attempt 2 covers all four.
    g.run(
        "retry",
        3,
        json!({"min_scores": {"coverage": 0.8}, "on_fail": "retry", "max_retries": 2}),
    )
    .await;
    let done = g.settled("retry").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(step(&done, "draft")["attempts"], 2, "{done}");

    let events = g.events("retry").await;
    let verdicts: Vec<(u64, &str)> = of_type(&events, "gate_evaluated")
        .iter()
        .map(|e| {
            (
                e["data"]["attempt"].as_u64().unwrap(),
                e["data"]["verdict"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(verdicts, [(1, "failed"), (2, "passed")]);
    let failed = of_type(&events, "step_failed");
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(
        failed[0]["data"]["error"],
        "quality gate failed: coverage 0.75 is not >= 0.8"
    );
    // The retry is an intervention by the gate, in the audit trail.
    assert_eq!(
        g.audit("retry").await,
        [(
            "retry_step".to_owned(),
            "system:quality_gate".to_owned(),
            "applied".to_owned()
        )]
    );
    // The agent read the feedback on stdin: its second brief says what it addressed, and only
    // the accepted brief reached the dependent.
    let published = brief(&done, "publish");
    assert!(
        published.contains("(attempt 2)")
            && published.contains("Addressed: min_scores.coverage was 0.75, needs 0.8"),
        "{published}"
    );
    assert!(g.reviews("retry").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_gate_retries_are_used_up_on_retries_exhausted_decides() {
    let g = Gated::new();
    // Attempt 1 covers 1 of 4 (0.25), attempt 2 covers 2 (0.5): both fail the gate.
    g.run(
        "spent",
        1,
        json!({"min_scores": {"coverage": 0.8}, "on_fail": "retry", "max_retries": 1,
               "on_retries_exhausted": "fail"}),
    )
    .await;
    let done = g.settled("spent").await;
    assert_eq!(done["state"], "failed", "{done}");
    let draft = step(&done, "draft");
    assert_eq!(draft["status"], "failed", "{done}");
    assert_eq!(draft["attempts"], 2);
    assert_eq!(
        draft["error"],
        "quality gate failed: coverage 0.5 is not >= 0.8"
    );
    assert_ne!(step(&done, "publish")["status"], "completed");
    let events = g.events("spent").await;
    assert_eq!(of_type(&events, "gate_evaluated").len(), 2);
    assert!(of_type(&events, "review_opened").is_empty());
    let retries: Vec<_> = g
        .audit("spent")
        .await
        .into_iter()
        .filter(|(t, u, _)| t == "retry_step" && u == "system:quality_gate")
        .collect();
    assert_eq!(retries.len(), 1, "one gate retry, then no more");

    // The same gate with `on_retries_exhausted: review` holds the last attempt for a person.
    g.run(
        "spent_review",
        1,
        json!({"min_scores": {"coverage": 0.8}, "on_fail": "retry", "max_retries": 1,
               "on_retries_exhausted": "review"}),
    )
    .await;
    g.held("spent_review").await;
    let reviews = g.reviews("spent_review").await;
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    assert_eq!(reviews[0]["attempt"], 2);
    assert_eq!(reviews[0]["scores"]["coverage"], 0.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_fail_fail_fails_the_step_with_the_gates_reason() {
    let g = Gated::new();
    // Full coverage, but the attempt costs 0.02 and the gate allows 0.01.
    g.run(
        "strict",
        4,
        json!({"min_scores": {"coverage": 0.8}, "max_scores": {"cost_usd": 0.01},
               "on_fail": "fail"}),
    )
    .await;
    let done = g.settled("strict").await;
    assert_eq!(done["state"], "failed", "{done}");
    let draft = step(&done, "draft");
    assert_eq!(draft["attempts"], 1, "no retry: {done}");
    assert_eq!(
        draft["error"],
        "quality gate failed: cost_usd 0.02 is not <= 0.01"
    );
    // The failed output reached nobody.
    assert!(step(&done, "draft")["output"].is_null(), "{done}");
    assert_ne!(step(&done, "publish")["status"], "completed");
    let events = g.events("strict").await;
    let judged = of_type(&events, "gate_evaluated");
    assert_eq!(judged.len(), 1);
    assert_eq!(
        judged[0]["data"]["failed"],
        json!([{"criterion": "max_scores.cost_usd", "score": 0.02, "bound": 0.01}])
    );
    let plan_failed = of_type(&events, "plan_failed");
    assert_eq!(plan_failed.len(), 1, "{events:?}");
    assert_eq!(plan_failed[0]["data"]["step_id"], "draft");
    assert!(g.reviews("strict").await.is_empty());
    assert!(g.audit("strict").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_nobody_decides_is_decided_by_its_timeout() {
    let g = Gated::new();
    // A passing result that a person must see anyway, approved when nobody does within 300 ms.
    g.run(
        "late_ok",
        4,
        json!({"min_scores": {"coverage": 0.8}, "always_review": true,
               "review": {"timeout_ms": 300, "on_timeout": "approve"}}),
    )
    .await;
    // A failing result, rejected (the default) when nobody decides within 300 ms.
    g.run(
        "late_no",
        2,
        json!({"min_scores": {"coverage": 0.8}, "on_fail": "review",
               "review": {"timeout_ms": 300}}),
    )
    .await;

    let ok = g.settled("late_ok").await;
    assert_eq!(ok["state"], "completed", "{ok}");
    assert!(brief(&ok, "publish").contains("risks: covered"));
    let no = g.settled("late_no").await;
    assert_eq!(no["state"], "failed", "{no}");
    let draft = step(&no, "draft");
    assert_eq!(draft["status"], "failed");
    assert!(
        draft["error"]
            .as_str()
            .unwrap()
            .starts_with("rejected by system:timeout"),
        "{draft}"
    );

    for (id, verb) in [("late_ok", "approve_step"), ("late_no", "reject_step")] {
        let reviews = g.reviews(id).await;
        assert_eq!(reviews.len(), 1, "{reviews:?}");
        let r = &reviews[0];
        assert_eq!(r["state"], "closed", "{r}");
        assert_eq!(r["outcome"], "timed_out", "{r}");
        assert!(
            r["deadline"].is_string(),
            "a review with a timeout has a deadline: {r}"
        );
        assert_eq!(r["votes"].as_array().unwrap().len(), 1, "{r}");
        assert_eq!(r["votes"][0]["user"], "system:timeout", "{r}");
        assert_eq!(
            g.audit(id).await,
            [(
                verb.to_owned(),
                "system:timeout".to_owned(),
                "applied".to_owned()
            )],
            "plan {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_each_decision_the_review_does_not_allow() {
    let g = Gated::new();
    // alice starts the plan; only alice and bob may decide; alice may not approve her own.
    g.run(
        "guarded",
        2,
        json!({"min_scores": {"coverage": 0.8},
               "review": {"reviewers": ["alice", "bob"], "prevent_self_review": true}}),
    )
    .await;
    g.held("guarded").await;
    let before = g.alice().plan("guarded").await;
    let path = "/v1/plans/guarded/interventions";
    let approve = json!({"type": "approve_step", "step_id": "draft", "attempt": 1});

    // Someone not among the reviewers (an operator all the same).
    let r = g
        .carol()
        .post(path, approve.clone())
        .await
        .expect(403, "carol");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("carol may not decide review"),
        "{}",
        r.text
    );
    assert_eq!(r.body["error"]["intervention"]["status"], "failed");
    assert_eq!(r.body["error"]["intervention"]["user"], "carol");
    // The user who started the plan, approving her own.
    let r = g
        .alice()
        .post(path, approve.clone())
        .await
        .expect(403, "self");
    assert!(r.text.contains("prevent_self_review"), "{}", r.text);
    // An approval that replaces the output must say why.
    let r = g
        .bob()
        .post(
            path,
            json!({"type": "approve_step", "step_id": "draft", "attempt": 1,
                   "output": {"brief": "mine"}}),
        )
        .await
        .expect(422, "output without a reason");
    assert!(r.text.contains("needs a reason"), "{}", r.text);
    // The same from the CLI: refused, exit 2, the reason on stderr.
    let run = remote(
        &[
            "reviews",
            "approve",
            "guarded",
            "draft",
            "--attempt",
            "1",
            "--output",
            r#"{"brief": "mine"}"#,
        ],
        &g.server.base,
        Some(&g.bob),
    )
    .expect(2, "cairn reviews approve --output without --reason");
    assert!(run.stderr.contains("needs a reason"), "{}", run.stderr);
    // So must a rejection.
    let r = g
        .bob()
        .post(
            path,
            json!({"type": "reject_step", "step_id": "draft", "attempt": 1}),
        )
        .await
        .expect(422, "reject without a reason");
    assert!(r.text.contains("needs a reason"), "{}", r.text);
    // A decision about an attempt that is not under review.
    let r = g
        .bob()
        .post(
            path,
            json!({"type": "approve_step", "step_id": "draft", "attempt": 2}),
        )
        .await
        .expect(409, "stale attempt");
    assert!(r.text.contains("stale"), "{}", r.text);

    // None of it changed the plan, the review has no vote, and every refusal is audited.
    let after = g.alice().plan("guarded").await;
    assert_eq!(after["version"], before["version"], "{after}");
    assert_eq!(step(&after, "draft")["status"], "awaiting_review");
    let open = g.reviews("guarded").await;
    assert_eq!(open[0]["state"], "open");
    assert!(open[0]["votes"].as_array().unwrap().is_empty(), "{open:?}");
    let refused: Vec<(String, String)> = g
        .audit("guarded")
        .await
        .into_iter()
        .filter(|(_, _, status)| status == "failed")
        .map(|(t, u, _)| (t, u))
        .collect();
    let expect = |t: &str, u: &str| (t.to_owned(), u.to_owned());
    assert_eq!(
        refused,
        [
            expect("approve_step", "carol"),
            expect("approve_step", "alice"),
            expect("approve_step", "bob"),
            expect("approve_step", "bob"),
            expect("reject_step", "bob"),
            expect("approve_step", "bob"),
        ]
    );

    // bob may: his replacement, with a reason, is what the dependent gets; both are kept.
    g.bob()
        .post(
            path,
            json!({"type": "approve_step", "step_id": "draft", "attempt": 1,
                   "output": {"brief": "rewritten by bob"}, "reason": "tightened it"}),
        )
        .await
        .expect(201, "bob approves with his output");
    let done = g.settled("guarded").await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(brief(&done, "publish"), "rewritten by bob");
    let closed = g.reviews("guarded").await;
    assert_eq!(closed[0]["outcome"], "approved", "{closed:?}");
    assert_eq!(closed[0]["votes"][0]["output"]["brief"], "rewritten by bob");
    assert!(
        closed[0]["output"]["brief"]
            .as_str()
            .unwrap()
            .contains("(attempt 1)"),
        "the attempt's own output is kept beside the replacement: {closed:?}"
    );

    // The review is closed: any further decision is refused.
    for (who, body) in [
        (g.bob(), approve.clone()),
        (
            g.alice(),
            json!({"type": "reject_step", "step_id": "draft", "attempt": 1, "reason": "late"}),
        ),
        (g.bob(), json!({"type": "approve_step", "step_id": "draft"})),
    ] {
        let r = who.post(path, body).await.expect(409, "closed review");
        assert!(r.text.contains("no review of it is open"), "{}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_of_two_api_token_users_is_closed_by_the_first_rejection() {
    let g = Gated::new();
    let dora = g.token("dora", "operator").await;
    let eve = g.token("eve", "operator").await;
    let (dora, eve) = (Auth(&g.api, Some(&dora)), Auth(&g.api, Some(&eve)));
    g.run(
        "two",
        2,
        json!({"min_scores": {"coverage": 0.8}, "review": {"quorum": 2}}),
    )
    .await;
    g.held("two").await;
    let path = "/v1/plans/two/interventions";
    let v = dora
        .post(
            path,
            json!({"type": "approve_step", "step_id": "draft", "attempt": 1}),
        )
        .await
        .expect(201, "dora approves")
        .body;
    assert_eq!(v["user"], "dora", "the vote is the token's user: {v}");
    // One approval of two: still open, still held.
    let open = g.reviews("two").await;
    assert_eq!(open[0]["state"], "open", "{open:?}");
    assert_eq!(open[0]["votes"].as_array().unwrap().len(), 1);
    assert_eq!(
        step(&g.alice().plan("two").await, "draft")["status"],
        "awaiting_review"
    );
    // eve rejects: the first rejection closes it, whatever the approvals so far.
    eve.post(
        path,
        json!({"type": "reject_step", "step_id": "draft", "attempt": 1,
               "reason": "misses regulation"}),
    )
    .await
    .expect(201, "eve rejects");
    let done = g.settled("two").await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(
        step(&done, "draft")["error"],
        "rejected by eve: misses regulation"
    );
    let closed = g.reviews("two").await;
    assert_eq!(closed[0]["outcome"], "rejected", "{closed:?}");
    let voters: Vec<(&str, &str)> = closed[0]["votes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["user"].as_str().unwrap(), v["decision"].as_str().unwrap()))
        .collect();
    assert_eq!(voters, [("dora", "approve"), ("eve", "reject")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_timeout_outlives_a_kill_9_of_the_server() {
    let mut g = Gated::new();
    g.run(
        "lasting",
        4,
        json!({"always_review": true,
               "review": {"timeout_ms": 4000, "on_timeout": "approve"}}),
    )
    .await;
    g.held("lasting").await;
    let opened = g.reviews("lasting").await;
    assert_eq!(opened[0]["state"], "open", "{opened:?}");
    let deadline = opened[0]["deadline"].clone();
    assert!(deadline.is_string(), "{opened:?}");

    // The server dies with the review open; the one after it keeps the same deadline and
    // decides at it, once.
    g.kill9_and_restart();
    let done = g.settled("lasting").await;
    assert_eq!(done["state"], "completed", "{done}");
    let closed = g.reviews("lasting").await;
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0]["outcome"], "timed_out", "{closed:?}");
    assert_eq!(
        closed[0]["deadline"], deadline,
        "the deadline is the one recorded"
    );
    assert_eq!(closed[0]["votes"].as_array().unwrap().len(), 1);
    assert_eq!(closed[0]["votes"][0]["user"], "system:timeout");
    assert_eq!(
        g.audit("lasting").await,
        [(
            "approve_step".to_owned(),
            "system:timeout".to_owned(),
            "applied".to_owned()
        )]
    );
    let events = g.events("lasting").await;
    assert_eq!(of_type(&events, "gate_evaluated").len(), 1, "not run again");
    assert!(brief(&done, "publish").contains("(attempt 1)"));
}
