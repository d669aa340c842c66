//! End-to-end tests of `cairn serve`: every test starts the real binary on a loopback address
//! with its own database, talks HTTP to it, and checks statuses, bodies and what the
//! plans look like afterwards. Also the client mode of `cairn plans|steps … --server`.
//!
//! No assertion is about time: waiting on the server is a bounded polling loop.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::common::{
    cairn_command, example, latch_dir, local, make_token, remote, Api, Auth, Resp, Run, Server,
};

/// One test's server with a token per role.
struct World {
    _dir: TempDir,
    db: PathBuf,
    server: Server,
    api: Api,
    admin: String,
    operator: String,
    viewer: String,
    worker: String,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("cairn.db");
        let server = Server::start(&db, &[]);
        let admin = server.admin.clone().unwrap_or_else(|| {
            panic!(
                "no admin token on stderr:\n{}",
                server.stderr.lock().unwrap()
            )
        });
        let operator = make_token(&db, "olivia", "operator");
        let viewer = make_token(&db, "victor", "viewer");
        let worker = make_token(&db, "wanda", "worker");
        let api = Api::new(&server.base);
        World {
            _dir: dir,
            db,
            server,
            api,
            admin,
            operator,
            viewer,
            worker,
        }
    }

    fn restart(&mut self) {
        let server = Server::start(&self.db, &[]);
        assert!(server.admin.is_none(), "tokens exist: no new admin token");
        self.api = Api::new(&server.base);
        self.server = server;
    }

    /// Releases the latch `name`: its steps, held now or started later, complete.
    fn release(&self, name: &str) {
        std::fs::write(latch_dir(&self.db).join(name), b"").unwrap();
    }

    fn op(&self) -> Auth<'_> {
        Auth(&self.api, Some(&self.operator))
    }
}

/// A step that runs until the test releases the latch `name` ([`World::release`]).
fn latch_step(id: &str, name: &str) -> Value {
    json!({"step_id": id, "action": "hold", "agent_type": "builtin.latch", "params": {"name": name}})
}

fn sleep_step(id: &str, ms: u64) -> Value {
    json!({"step_id": id, "action": "wait", "agent_type": "builtin.sleep", "params": {"ms": ms}})
}

fn echo_step(id: &str) -> Value {
    json!({"step_id": id, "action": "echo", "agent_type": "builtin.echo", "params": {"x": id}})
}

fn plan_doc(id: &str, steps: Vec<Value>) -> Value {
    json!({"plan_id": id, "query": format!("test {id}"), "steps": steps})
}

fn step_ids(plan: &Value) -> Vec<String> {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step_id"].as_str().unwrap().to_owned())
        .collect()
}

fn step_status<'a>(plan: &'a Value, step: &str) -> &'a str {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_id"] == step)
        .and_then(|s| s["status"].as_str())
        .unwrap_or_else(|| panic!("no step {step} in {plan}"))
}

fn assert_contiguous(events: &[Value], plan: &str) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["seq"].as_u64(),
            Some(i as u64 + 1),
            "plan {plan}: event seqs must be contiguous from 1: {:?}",
            events.iter().map(|e| e["seq"].clone()).collect::<Vec<_>>()
        );
    }
}

// ---- 1. the contract, endpoint by endpoint --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_its_contract_statuses() {
    let w = World::new();
    let op = w.op();
    let admin = Auth(&w.api, Some(&w.admin));
    let none = Auth(&w.api, None);

    // health, at the root, without a token
    let h = none.get("/healthz").await.expect(200, "healthz");
    assert_eq!(h.body["status"], "ok");
    none.get("/readyz").await.expect(200, "readyz");
    // unknown routes: 404 with the JSON error body
    none.get("/nope").await.expect(404, "unknown root route");
    op.get("/v1/nope").await.expect(404, "unknown v1 route");

    // register: 201 / 409 / 422
    let p = op
        .register(plan_doc("c1", vec![echo_step("a"), echo_step("b")]))
        .await;
    assert_eq!(p["plan_id"], "c1");
    assert_eq!(p["state"], "idle");
    assert_eq!(p["total_steps"], 2);
    for k in [
        "query",
        "pause_reason",
        "version",
        "current_step_index",
        "completed_steps",
        "failed_steps",
        "skipped_steps",
        "running_steps",
        "steps",
    ] {
        assert!(p.get(k).is_some(), "plan state lacks {k}: {p}");
    }
    let dup = op
        .post("/v1/plans", plan_doc("c1", vec![echo_step("a")]))
        .await
        .expect(409, "duplicate plan_id");
    assert_eq!(dup.code(), "plan_exists");
    op.post(
        "/v1/plans",
        json!({"plan_id": "bad", "steps": [echo_step("a"), echo_step("a")]}),
    )
    .await
    .expect(422, "repeated step id");
    op.post("/v1/plans", json!({"steps": [{"step_id": "x"}]}))
        .await
        .expect(422, "step without action");
    // a generated plan_id
    let gen = op.register(json!({"steps": [echo_step("a")]})).await;
    assert!(gen["plan_id"].as_str().is_some_and(|s| !s.is_empty()));

    // get: 200 / 404
    op.get("/v1/plans/c1").await.expect(200, "get");
    op.get("/v1/plans/nope").await.expect(404, "get unknown");

    // list: pagination, newest first, state filter, bad cursor, bad state, bad limit
    for i in 0..5 {
        op.register(plan_doc(&format!("l{i}"), vec![echo_step("a")]))
            .await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..20 {
        let path = match &cursor {
            Some(c) => format!("/v1/plans?limit=2&cursor={c}"),
            None => "/v1/plans?limit=2".into(),
        };
        let page = op.get(&path).await.expect(200, "list page").body;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|i| i["plan_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "every plan listed once: {seen:?}");
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 7);
    assert_eq!(seen[0], "l4", "newest first: {seen:?}");
    op.get("/v1/plans?cursor=garbage!!")
        .await
        .expect(400, "bad cursor");
    op.get("/v1/plans?state=sleeping")
        .await
        .expect(400, "bad state");
    op.get("/v1/plans?limit=0").await.expect(400, "limit 0");
    op.get("/v1/plans?bogus=1")
        .await
        .expect(400, "unknown param");

    // start / pause / resume / cancel and their 409s
    op.register(plan_doc(
        "c2",
        vec![latch_step("s1", "c2-s1"), latch_step("s2", "c2-s2")],
    ))
    .await;
    op.post_empty("/v1/plans/c2/resume")
        .await
        .expect(409, "resume idle");
    op.post_empty("/v1/plans/c2/pause")
        .await
        .expect(409, "pause idle");
    let st = op
        .post("/v1/plans/c2/start", json!({"reason": "go"}))
        .await
        .expect(200, "start");
    assert_eq!(st.body["state"], "running");
    op.post_empty("/v1/plans/c2/start")
        .await
        .expect(409, "start twice");
    // s1 is held by its latch: the plan is running for as long as the next checks need.
    op.wait_for("c2", "running s1", |p| p["running_steps"] == json!(["s1"]))
        .await;
    op.post_empty("/v1/plans/nope/start")
        .await
        .expect(404, "start unknown");
    // delete while running: 409; as operator: 403
    admin
        .delete("/v1/plans/c2")
        .await
        .expect(409, "delete running");
    op.delete("/v1/plans/c1")
        .await
        .expect(403, "delete as operator");
    // restore while running: 409
    let cps = op
        .get("/v1/plans/c2/checkpoints")
        .await
        .expect(200, "checkpoints")
        .body;
    let first = cps["items"][0]["checkpoint_id"]
        .as_str()
        .expect("an initial checkpoint")
        .to_owned();
    op.post_empty(&format!("/v1/plans/c2/checkpoints/{first}/restore"))
        .await
        .expect(409, "restore while running");
    let p = op
        .post("/v1/plans/c2/pause", json!({"reason": "look"}))
        .await
        .expect(200, "pause");
    assert_eq!(p.body["state"], "paused");
    assert_eq!(p.body["pause_reason"], "operator");
    op.post_empty("/v1/plans/c2/pause")
        .await
        .expect(409, "pause paused");
    w.release("c2-s1");
    w.release("c2-s2");
    op.wait_for("c2", "drained", |p| {
        p["running_steps"] == json!([]) && step_status(p, "s1") == "completed"
    })
    .await;

    // interventions: 201, 409 (state), 409 (version), 422 (malformed), dry_run 200, list
    let v0 = op.plan("c2").await["version"].as_u64().unwrap();
    let dry = op
        .post(
            "/v1/plans/c2/interventions",
            json!({"type": "add_step", "step": echo_step("x"), "dry_run": true}),
        )
        .await
        .expect(200, "dry run");
    assert!(
        !dry.body["diff"].as_array().unwrap().is_empty(),
        "{}",
        dry.text
    );
    assert_eq!(
        op.plan("c2").await["version"].as_u64().unwrap(),
        v0,
        "dry run changes nothing"
    );
    let added = op
        .post(
            "/v1/plans/c2/interventions",
            json!({"type": "add_step", "step": echo_step("x"), "expected_version": v0}),
        )
        .await
        .expect(201, "add_step");
    assert_eq!(added.body["status"], "applied");
    assert_eq!(added.body["plan_version"].as_u64(), Some(v0 + 1));
    assert_eq!(added.body["user"], "olivia");
    op.post(
        "/v1/plans/c2/interventions",
        json!({"type": "skip_step", "step_id": "x", "expected_version": v0}),
    )
    .await
    .expect(409, "stale expected_version");
    op.post(
        "/v1/plans/c2/interventions",
        json!({"type": "skip_step", "step_id": "s1"}),
    )
    .await; // s1 may be done or not: either answer is fine, it must not be a 5xx
    op.post(
        "/v1/plans/c2/interventions",
        json!({"type": "remove_step", "step_id": "no_such_step"}),
    )
    .await
    .expect_one_of(&[409, 422], "remove unknown step");
    op.post(
        "/v1/plans/c2/interventions",
        json!({"type": "teleport_step", "step_id": "x"}),
    )
    .await
    .expect(422, "unknown intervention type");
    op.post("/v1/plans/c2/interventions", json!({"type": "add_step"}))
        .await
        .expect(422, "add_step without a step");
    op.post(
        "/v1/plans/nope/interventions",
        json!({"type": "skip_step", "step_id": "x"}),
    )
    .await
    .expect(404, "intervene on unknown plan");
    let list = op
        .get("/v1/plans/c2/interventions")
        .await
        .expect(200, "interventions")
        .body;
    let items = list["items"].as_array().unwrap();
    assert!(items.iter().any(|i| i["status"] == "applied"));
    assert!(
        items.iter().any(|i| i["status"] == "failed"),
        "refused interventions are recorded too: {list}"
    );
    assert!(list.get("next_cursor").is_some());
    op.get("/v1/plans/nope/interventions")
        .await
        .expect(404, "interventions of unknown plan");

    // checkpoints: create 201, get 200/404, restore 200, fork 201/409, 404s
    let cp = op
        .post("/v1/plans/c2/checkpoints", json!({"label": "mine"}))
        .await
        .expect(201, "manual checkpoint")
        .body;
    let cid = cp["checkpoint_id"].as_str().unwrap().to_owned();
    assert_eq!(cp["label"], "mine");
    let got = op
        .get(&format!("/v1/plans/c2/checkpoints/{cid}"))
        .await
        .expect(200, "get checkpoint")
        .body;
    assert_eq!(got["trigger"], "manual");
    op.get("/v1/plans/c2/checkpoints/cp_nope")
        .await
        .expect(404, "unknown checkpoint");
    op.get("/v1/plans/nope/checkpoints")
        .await
        .expect(404, "checkpoints of unknown plan");
    op.post_empty("/v1/plans/c2/checkpoints/cp_nope/restore")
        .await
        .expect(404, "restore unknown checkpoint");
    let r = op
        .post_empty(&format!("/v1/plans/c2/checkpoints/{first}/restore"))
        .await
        .expect(200, "restore");
    assert_eq!(r.body["state"], "paused");
    assert_eq!(r.body["pause_reason"], "restored");
    let f = op
        .post(
            &format!("/v1/plans/c2/checkpoints/{cid}/fork"),
            json!({"new_plan_id": "c2_fork"}),
        )
        .await
        .expect(201, "fork");
    assert_eq!(f.body["plan_id"], "c2_fork");
    assert_eq!(f.body["state"], "paused");
    op.post(
        &format!("/v1/plans/c2/checkpoints/{cid}/fork"),
        json!({"new_plan_id": "c2_fork"}),
    )
    .await
    .expect(409, "fork onto an existing id");
    op.post_empty("/v1/plans/c2/checkpoints/cp_nope/fork")
        .await
        .expect(404, "fork unknown checkpoint");

    // snapshot
    let snap = op
        .get("/v1/plans/c2/snapshot")
        .await
        .expect(200, "snapshot")
        .body;
    for k in [
        "plan",
        "version",
        "state",
        "pause_reason",
        "current_step_index",
        "completed_steps",
        "failed_steps",
        "skipped_steps",
        "steps",
        "checkpoints",
        "interventions",
        "event_count",
        "taken_at",
    ] {
        assert!(snap.get(k).is_some(), "snapshot lacks {k}");
    }
    op.get("/v1/plans/nope/snapshot")
        .await
        .expect(404, "snapshot unknown");

    // events: after/limit/next_cursor
    let all = op.all_events("c2").await;
    assert!(all.len() >= 5);
    assert_contiguous(&all, "c2");
    let page = op
        .get("/v1/plans/c2/events?after=2&limit=2")
        .await
        .expect(200, "events page")
        .body;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["seq"], 3);
    assert_eq!(page["next_cursor"], "4");
    for e in items {
        for k in ["seq", "plan_id", "type", "at", "actor"] {
            assert!(e.get(k).is_some(), "event lacks {k}: {e}");
        }
    }
    op.get("/v1/plans/c2/events?limit=0")
        .await
        .expect(400, "events limit 0");
    op.get("/v1/plans/c2/events?after=-1")
        .await
        .expect(400, "events negative after");
    op.get("/v1/plans/nope/events")
        .await
        .expect(404, "events unknown");

    // cancel: 200, then 409; delete after: 204, then 404
    let c = op
        .post_empty("/v1/plans/c2/cancel")
        .await
        .expect(200, "cancel");
    assert_eq!(c.body["state"], "cancelled");
    op.post_empty("/v1/plans/c2/cancel")
        .await
        .expect(409, "cancel cancelled");
    op.post_empty("/v1/plans/c2/resume")
        .await
        .expect(409, "resume cancelled");
    admin
        .delete("/v1/plans/c2")
        .await
        .expect(204, "delete cancelled plan");
    op.get("/v1/plans/c2").await.expect(404, "deleted plan");
    admin
        .delete("/v1/plans/c2")
        .await
        .expect(404, "delete twice");

    // tokens: admin only
    let t = admin
        .post("/v1/tokens", json!({"user": "newbie", "role": "viewer"}))
        .await
        .expect(201, "create token")
        .body;
    let secret = t["token"].as_str().unwrap().to_owned();
    let tid = t["id"].as_str().unwrap().to_owned();
    Auth(&w.api, Some(&secret))
        .get("/v1/plans")
        .await
        .expect(200, "the new token works");
    let tl = admin.get("/v1/tokens").await.expect(200, "list tokens");
    assert!(
        !tl.text.contains(&secret),
        "a token list never shows secrets"
    );
    assert!(tl.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == tid.as_str()));
    admin
        .post("/v1/tokens", json!({"user": "x", "role": "emperor"}))
        .await
        .expect(422, "unknown role");
    admin
        .post("/v1/tokens", json!({"user": "", "role": "viewer"}))
        .await
        .expect(422, "empty user");
    op.post("/v1/tokens", json!({"user": "x", "role": "admin"}))
        .await
        .expect(403, "operator creates token");
    op.get("/v1/tokens")
        .await
        .expect(403, "operator lists tokens");
    admin
        .delete(&format!("/v1/tokens/{tid}"))
        .await
        .expect(204, "revoke");
    Auth(&w.api, Some(&secret))
        .get("/v1/plans")
        .await
        .expect(401, "a revoked token is refused at once");
    admin
        .delete(&format!("/v1/tokens/{tid}"))
        .await
        .expect(404, "revoke twice");
}

trait ExpectOneOf {
    fn expect_one_of(self, statuses: &[u16], what: &str) -> Resp;
}

impl ExpectOneOf for Resp {
    fn expect_one_of(self, statuses: &[u16], what: &str) -> Resp {
        assert!(
            statuses.contains(&self.status),
            "{what}: expected one of {statuses:?}, got {}: {}",
            self.status,
            self.text
        );
        if self.status >= 400 {
            self.error_shape(what);
        }
        self
    }
}

// ---- 2. the prototype's six scenarios -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prototype_scenarios_over_http() {
    let w = World::new();
    let op = w.op();

    // 1. registration: idle, steps listed in order, nothing run
    let p = op
        .register(plan_doc(
            "reg",
            vec![echo_step("a"), echo_step("b"), echo_step("c")],
        ))
        .await;
    assert_eq!(p["state"], "idle");
    assert_eq!(step_ids(&p), ["a", "b", "c"]);
    assert!(p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["status"] == "pending"));
    op.post_empty("/v1/plans/reg/start")
        .await
        .expect(200, "start");
    let done = op.wait_state("reg", "completed").await;
    assert_eq!(done["completed_steps"], json!(["a", "b", "c"]));
    let cps = op.get("/v1/plans/reg/checkpoints").await.body;
    assert_eq!(
        cps["items"].as_array().unwrap().len(),
        4,
        "a 3-step plan run to the end has 4 checkpoints: {cps}"
    );

    // 2. pause/resume: a paused plan starts no step; its in-flight step completes
    op.register(plan_doc(
        "pr",
        vec![
            latch_step("s1", "pr-s1"),
            sleep_step("s2", 50),
            sleep_step("s3", 50),
        ],
    ))
    .await;
    op.post_empty("/v1/plans/pr/start")
        .await
        .expect(200, "start");
    op.wait_for("pr", "running s1", |p| p["running_steps"] == json!(["s1"]))
        .await;
    let paused = op
        .post_empty("/v1/plans/pr/pause")
        .await
        .expect(200, "pause")
        .body;
    assert_eq!(paused["state"], "paused");
    assert_eq!(paused["running_steps"], json!(["s1"]), "s1 still runs");
    w.release("pr-s1");
    // the in-flight step finishes and is recorded; the plan drains
    let drained = op
        .wait_for("pr", "drained", |p| {
            p["running_steps"] == json!([]) && step_status(p, "s1") == "completed"
        })
        .await;
    assert_eq!(drained["state"], "paused");
    assert_eq!(
        step_status(&drained, "s2"),
        "pending",
        "no step starts while paused"
    );
    let events = op.all_events("pr").await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"plan_drained"), "{kinds:?}");
    let paused_at = kinds.iter().position(|k| *k == "plan_paused").unwrap();
    assert!(
        !kinds[paused_at..].contains(&"step_started"),
        "no step_started after the pause: {kinds:?}"
    );
    op.post_empty("/v1/plans/pr/resume")
        .await
        .expect(200, "resume");
    op.wait_state("pr", "completed").await;
    // and it stayed so until the resume: in the log, nothing started between the pause and
    // the resume.
    let events = op.all_events("pr").await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let resumed_at = kinds.iter().position(|k| *k == "plan_resumed").unwrap();
    assert!(
        !kinds[paused_at..resumed_at].contains(&"step_started"),
        "a step started while paused: {kinds:?}"
    );

    // 3. interventions: skip/add/remove; attribution is the token's user, a `user` field is ignored
    op.register(plan_doc(
        "iv",
        vec![
            latch_step("s1", "iv-s1"),
            echo_step("s2"),
            echo_step("s3"),
            echo_step("s4"),
        ],
    ))
    .await;
    op.post_empty("/v1/plans/iv/start")
        .await
        .expect(200, "start");
    op.post_empty("/v1/plans/iv/pause")
        .await
        .expect(200, "pause");
    w.release("iv-s1");
    let skip = op
        .post(
            "/v1/plans/iv/interventions",
            json!({"type": "skip_step", "step_id": "s2", "user": "mallory", "reason": "not needed"}),
        )
        .await
        .expect(201, "skip")
        .body;
    assert_eq!(skip["user"], "olivia", "the token's user, not the body's");
    assert_eq!(skip["reason"], "not needed");
    let add = op
        .post(
            "/v1/plans/iv/interventions",
            json!({"type": "add_step", "step": echo_step("s2b"), "after": "s2", "user": "mallory"}),
        )
        .await
        .expect(201, "add")
        .body;
    assert_eq!(add["user"], "olivia");
    op.post(
        "/v1/plans/iv/interventions",
        json!({"type": "remove_step", "step_id": "s4"}),
    )
    .await
    .expect(201, "remove");
    let p = op.plan("iv").await;
    assert_eq!(step_ids(&p), ["s1", "s2", "s2b", "s3"]);
    assert_eq!(step_status(&p, "s2"), "skipped");
    assert_eq!(
        p["version"].as_u64(),
        Some(3),
        "two definition changes: {p}"
    );
    op.post(
        "/v1/plans/iv/interventions",
        json!({"type": "skip_step", "step_id": "s2"}),
    )
    .await
    .expect(409, "skip a skipped step");
    let list = op.get("/v1/plans/iv/interventions").await.body;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert!(items.iter().all(|i| i["user"] == "olivia"));
    assert_eq!(items[3]["status"], "failed");
    op.post_empty("/v1/plans/iv/resume")
        .await
        .expect(200, "resume");
    let done = op.wait_state("iv", "completed").await;
    assert_eq!(done["skipped_steps"], json!(["s2"]));
    assert_eq!(done["completed_steps"], json!(["s1", "s2b", "s3"]));

    // 4. checkpoints, restore and fork
    op.register(plan_doc(
        "ck",
        vec![echo_step("a"), echo_step("b"), echo_step("c")],
    ))
    .await;
    op.post_empty("/v1/plans/ck/start")
        .await
        .expect(200, "start");
    op.wait_state("ck", "completed").await;
    let cps = op.get("/v1/plans/ck/checkpoints").await.body["items"]
        .as_array()
        .unwrap()
        .clone();
    // the checkpoint after step a
    assert_eq!(cps.len(), 4, "initial + one per step: {cps:?}");
    let cid = cps[1]["checkpoint_id"].as_str().unwrap();
    let after_a = op
        .get(&format!("/v1/plans/ck/checkpoints/{cid}"))
        .await
        .expect(200, "checkpoint")
        .body;
    assert_eq!(after_a["completed_steps"], json!(["a"]), "{after_a}");
    assert_eq!(after_a["trigger"], "step");
    let r = op
        .post(
            &format!("/v1/plans/ck/checkpoints/{cid}/restore"),
            json!({"reason": "redo b and c"}),
        )
        .await
        .expect(200, "restore completed plan")
        .body;
    assert_eq!(r["state"], "paused");
    assert_eq!(r["pause_reason"], "restored");
    assert_eq!(r["completed_steps"], json!(["a"]));
    let after_restore = op.get("/v1/plans/ck/checkpoints").await.body["items"]
        .as_array()
        .unwrap()
        .len();
    assert!(after_restore >= cps.len(), "history is never erased");
    let f = op
        .post(
            &format!("/v1/plans/ck/checkpoints/{cid}/fork"),
            json!({"new_plan_id": "ck2"}),
        )
        .await
        .expect(201, "fork")
        .body;
    assert_eq!(f["state"], "paused");
    assert_eq!(f["completed_steps"], json!(["a"]));
    op.post_empty("/v1/plans/ck/resume")
        .await
        .expect(200, "resume restored");
    op.post_empty("/v1/plans/ck2/resume")
        .await
        .expect(200, "resume fork");
    op.wait_state("ck", "completed").await;
    op.wait_state("ck2", "completed").await;
    let ev = op.all_events("ck").await;
    assert!(ev.iter().any(|e| e["type"] == "checkpoint_restored"));
    assert_contiguous(&ev, "ck");

    // 5. the snapshot
    let snap = op
        .get("/v1/plans/iv/snapshot")
        .await
        .expect(200, "snapshot")
        .body;
    assert_eq!(snap["plan_id"], "iv");
    assert_eq!(snap["state"], "completed");
    assert_eq!(snap["version"].as_u64(), Some(3));
    assert_eq!(snap["interventions"].as_array().unwrap().len(), 4);
    assert!(snap["checkpoints"].as_array().unwrap().len() >= 3);
    assert_eq!(snap["skipped_steps"], json!(["s2"]));
    assert_eq!(
        snap["event_count"].as_u64(),
        Some(op.all_events("iv").await.len() as u64)
    );
    let def_ids: Vec<&str> = snap["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(def_ids, ["s1", "s2", "s2b", "s3"]);
    assert!(
        snap.to_string().contains("\"output\""),
        "outputs are in the snapshot"
    );

    // 6. cancellation: running → cancelled, terminal, no further step
    op.register(plan_doc(
        "cx",
        vec![latch_step("s1", "cx-s1"), echo_step("s2")],
    ))
    .await;
    op.post_empty("/v1/plans/cx/start")
        .await
        .expect(200, "start");
    let c = op
        .post("/v1/plans/cx/cancel", json!({"reason": "enough"}))
        .await
        .expect(200, "cancel")
        .body;
    assert_eq!(c["state"], "cancelled");
    // The held s1 is told to stop; its late result is recorded and changes nothing.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let ev = loop {
        let ev = op.all_events("cx").await;
        if ev.iter().any(|e| e["type"] == "step_result_ignored") {
            break ev;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "s1's late result was never recorded: {ev:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let p = op.plan("cx").await;
    assert_eq!(p["state"], "cancelled");
    assert_ne!(step_status(&p, "s2"), "completed");
    assert!(
        !ev.iter()
            .any(|e| e["type"] == "step_started" && e["data"]["step_id"] == "s2"),
        "no step starts after a cancel: {ev:?}"
    );
    op.post_empty("/v1/plans/cx/start")
        .await
        .expect(409, "start cancelled");
    let ev = op.all_events("cx").await;
    let cancel = ev.iter().find(|e| e["type"] == "plan_cancelled").unwrap();
    assert_eq!(cancel["actor"], "olivia");
}

// ---- 3. the role matrix --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix() {
    let w = World::new();
    let op = w.op();
    // fixtures every request can point at
    op.register(plan_doc(
        "rm",
        vec![sleep_step("s1", 60_000), echo_step("s2")],
    ))
    .await;
    let cid = op.get("/v1/plans/rm/checkpoints").await.body;
    assert!(cid["items"].as_array().unwrap().is_empty());
    op.register(plan_doc("rm_done", vec![echo_step("a")])).await;
    op.post_empty("/v1/plans/rm_done/start")
        .await
        .expect(200, "start");
    op.wait_state("rm_done", "completed").await;
    let cp = op.get("/v1/plans/rm_done/checkpoints").await.body["items"][0]["checkpoint_id"]
        .as_str()
        .unwrap()
        .to_owned();

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Need {
        Viewer,
        Operator,
        Admin,
    }
    // Each endpoint with the least role it needs. Bodies are deliberately harmless: once past
    // authorization, the answer may be anything but 401/403/5xx.
    let g = Method::GET;
    let p = Method::POST;
    let d = Method::DELETE;
    let cases: Vec<(Method, String, Option<Value>, Need)> = vec![
        (g.clone(), "/v1/plans".into(), None, Need::Viewer),
        (g.clone(), "/v1/plans/rm".into(), None, Need::Viewer),
        (
            g.clone(),
            "/v1/plans/rm/interventions".into(),
            None,
            Need::Viewer,
        ),
        (
            g.clone(),
            "/v1/plans/rm/checkpoints".into(),
            None,
            Need::Viewer,
        ),
        (
            g.clone(),
            format!("/v1/plans/rm_done/checkpoints/{cp}"),
            None,
            Need::Viewer,
        ),
        (
            g.clone(),
            "/v1/plans/rm/snapshot".into(),
            None,
            Need::Viewer,
        ),
        (g.clone(), "/v1/plans/rm/events".into(), None, Need::Viewer),
        (
            p.clone(),
            "/v1/plans".into(),
            Some(plan_doc("rm_new", vec![echo_step("a")])),
            Need::Operator,
        ),
        (
            p.clone(),
            "/v1/plans/rm/start".into(),
            Some(json!({})),
            Need::Operator,
        ),
        (
            p.clone(),
            "/v1/plans/rm/pause".into(),
            Some(json!({})),
            Need::Operator,
        ),
        (
            p.clone(),
            "/v1/plans/rm/resume".into(),
            Some(json!({})),
            Need::Operator,
        ),
        (
            p.clone(),
            "/v1/plans/rm/interventions".into(),
            Some(json!({"type": "skip_step", "step_id": "s2", "dry_run": true})),
            Need::Operator,
        ),
        (
            p.clone(),
            "/v1/plans/rm_done/checkpoints".into(),
            Some(json!({"label": "x"})),
            Need::Operator,
        ),
        (
            p.clone(),
            format!("/v1/plans/rm_done/checkpoints/{cp}/restore"),
            Some(json!({})),
            Need::Operator,
        ),
        (
            p.clone(),
            format!("/v1/plans/rm_done/checkpoints/{cp}/fork"),
            Some(json!({})),
            Need::Operator,
        ),
        (
            p.clone(),
            "/v1/plans/rm_done/cancel".into(),
            Some(json!({})),
            Need::Operator,
        ),
        (
            d.clone(),
            "/v1/plans/no_such_plan".into(),
            None,
            Need::Admin,
        ),
        (g.clone(), "/v1/tokens".into(), None, Need::Admin),
        (
            p.clone(),
            "/v1/tokens".into(),
            Some(json!({"user": "rm_user", "role": "viewer"})),
            Need::Admin,
        ),
        (d.clone(), "/v1/tokens/tok_nope".into(), None, Need::Admin),
    ];
    let roles: [(&str, &str, u8); 4] = [
        ("viewer", &w.viewer, 1),
        ("operator", &w.operator, 2),
        ("admin", &w.admin, 3),
        ("worker", &w.worker, 0),
    ];
    for (method, path, body, need) in &cases {
        let call = |tok: Option<String>, auth_header: Option<String>| {
            let api = w.api.clone();
            let (method, path, body) = (method.clone(), path.clone(), body.clone());
            async move {
                let mut r = api.http.request(method, format!("{}{}", api.base, path));
                if let Some(t) = tok {
                    r = r.bearer_auth(t);
                }
                if let Some(h) = auth_header {
                    r = r.header("authorization", h);
                }
                if let Some(b) = body {
                    r = r.json(&b);
                }
                let resp = r.send().await.unwrap();
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap();
                (status, text)
            }
        };
        let what = format!("{method} {path}");
        let (s, t) = call(None, None).await;
        assert_eq!(s, 401, "{what} without a token: {t}");
        let (s, t) = call(Some("cairn_0000000000000000".into()), None).await;
        assert_eq!(s, 401, "{what} with a wrong token: {t}");
        let (s, t) = call(None, Some(format!("Basic {}", w.admin))).await;
        assert_eq!(s, 401, "{what} with a non-bearer scheme: {t}");
        for (name, token, level) in roles {
            let (s, t) = call(Some(token.to_owned()), None).await;
            let allowed = match need {
                Need::Viewer => level >= 1,
                Need::Operator => level >= 2,
                Need::Admin => level >= 3,
            };
            if allowed {
                assert!(
                    s != 401 && s != 403 && s < 500,
                    "{what} as {name} must be allowed, got {s}: {t}"
                );
            } else {
                assert_eq!(s, 403, "{what} as {name} must be forbidden: {t}");
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["error"]["code"], "forbidden");
            }
        }
    }
    // health needs no token
    Auth(&w.api, None)
        .get("/healthz")
        .await
        .expect(200, "healthz");
    Auth(&w.api, None)
        .get("/readyz")
        .await
        .expect(200, "readyz");
}

// ---- 4. hostile input ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_with_4xx_and_changes_nothing() {
    let mut w = World::new();
    let (api, optok) = (w.api.clone(), w.operator.clone());
    let op = Auth(&api, Some(&optok));
    op.register(plan_doc("h", vec![sleep_step("s1", 100), echo_step("s2")]))
        .await;
    op.post_empty("/v1/plans/h/start")
        .await
        .expect(200, "start");
    op.wait_state("h", "completed").await;
    op.register(plan_doc("hp", vec![echo_step("a"), echo_step("b")]))
        .await;
    let fingerprint = |p: &Value| {
        (
            p["version"].clone(),
            p["last_seq"].clone(),
            p["state"].clone(),
        )
    };
    let before_h = fingerprint(&op.plan("h").await);
    let before_hp = fingerprint(&op.plan("hp").await);
    let tok = Some(w.operator.as_str());

    let paths = [
        "/v1/plans",
        "/v1/plans/hp/start",
        "/v1/plans/hp/pause",
        "/v1/plans/hp/interventions",
        "/v1/plans/hp/checkpoints",
        "/v1/tokens",
    ];
    let deep = "[".repeat(100) + &"]".repeat(100);
    let deep_obj = "{\"a\":".repeat(70) + "1" + &"}".repeat(70);
    let big = format!(
        "{{\"query\": \"{}\", \"steps\": []}}",
        "x".repeat((1 << 20) + 10)
    );
    let bodies: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("application/json", b"{".to_vec(), &[400]),
        ("application/json", b"{\"type\": }".to_vec(), &[400]),
        ("application/json", b"null".to_vec(), &[400, 422]),
        ("application/json", b"[1,2,3]".to_vec(), &[400, 422]),
        ("application/json", b"\"str\"".to_vec(), &[400, 422]),
        ("application/json", deep.clone().into_bytes(), &[400]),
        ("application/json", deep_obj.clone().into_bytes(), &[400]),
        ("application/json", big.clone().into_bytes(), &[413]),
        ("application/json", vec![0xff, 0xfe, 0x00, 0x01], &[400]),
        (
            "text/plain",
            b"{\"reason\": \"x\"}".to_vec(),
            &[400, 415, 422],
        ),
        (
            "application/x-www-form-urlencoded",
            b"a=b".to_vec(),
            &[400, 415, 422],
        ),
        (
            "application/json",
            b"{\"type\": 5, \"step_id\": [1]}".to_vec(),
            &[400, 422],
        ),
        (
            "application/json",
            b"{\"reason\": 17, \"mode\": \"sideways\"}".to_vec(),
            &[400, 422],
        ),
        (
            "application/json",
            b"{\"unknown_field\": true}".to_vec(),
            &[400, 422],
        ),
        (
            "application/json",
            b"{\"steps\": \"not a list\", \"user\": {\"x\": 1}}".to_vec(),
            &[400, 422],
        ),
    ];
    for path in paths {
        for (ct, body, allowed) in &bodies {
            let r = w
                .api
                .raw(Method::POST, path, tok, Some((ct, body.clone())))
                .await;
            let r = match r {
                Ok(r) => r,
                // the server may close the connection on an oversized body: fine, if it stays up
                Err(e) if body.len() > (1 << 20) => {
                    eprintln!("POST {path} (oversized): connection closed: {e}");
                    continue;
                }
                Err(e) => panic!("POST {path}: {e}"),
            };
            let what = format!(
                "POST {path} {ct} {:?}",
                String::from_utf8_lossy(&body[..body.len().min(40)])
            );
            assert!(r.status < 500, "{what}: {} {}", r.status, r.text);
            let admin_only = path == "/v1/tokens";
            if admin_only {
                assert!(
                    r.status == 403 || allowed.contains(&r.status),
                    "{what}: got {} {}",
                    r.status,
                    r.text
                );
            } else {
                assert!(
                    allowed.contains(&r.status),
                    "{what}: expected one of {allowed:?}, got {} {}",
                    r.status,
                    r.text
                );
            }
            r.error_shape(&what);
        }
    }
    assert_eq!(
        fingerprint(&op.plan("hp").await),
        before_hp,
        "malformed bodies change nothing"
    );
    // a whole plan that is hostile in its own ways
    for doc in [
        json!({"plan_id": "x".repeat(500), "steps": [echo_step("a")]}),
        json!({"plan_id": "../../etc/passwd", "steps": [echo_step("a")]}),
        json!({"steps": [echo_step("a")], "max_parallel": -1}),
        json!({"steps": [echo_step("a")], "max_parallel": 1e300}),
        json!({"steps": [{"step_id": "a", "action": "x", "agent_type": "builtin.echo", "depends_on": ["a"]}]}),
        json!({"steps": [{"step_id": "a", "action": "x", "agent_type": "builtin.echo", "when": "((("}]}),
        json!({"steps": [{"step_id": "a b", "action": "x", "agent_type": "builtin.echo"}]}),
        json!({"steps": [{"step_id": "a", "action": "x", "agent_type": "builtin.echo", "retry": {"max_attempts": "3"}}]}),
        json!({"steps": [{"step_id": "a", "action": "x", "agent_type": "builtin.echo", "nope": 1}]}),
    ] {
        let r = op.post("/v1/plans", doc.clone()).await;
        assert_eq!(r.status, 422, "{doc}: {}", r.text);
        r.error_shape("hostile plan");
    }
    // interventions of the wrong shape on a real plan
    for body in [
        json!({"type": "add_step", "step": {"step_id": "hp"}}),
        json!({"type": "add_step", "step": echo_step("z"), "after": "a", "before": "b"}),
        json!({"type": "modify_step", "step_id": "a", "patch": "not an object"}),
        json!({"type": "modify_step", "step_id": "a", "patch": {"step_id": "renamed"}}),
        json!({"type": "reorder_steps", "order": ["a", "a"]}),
        json!({"type": "reorder_steps", "order": "a,b"}),
        json!({"type": "skip_step", "step_id": "x".repeat(10_000)}),
        json!({"type": "skip_step", "step_id": "a", "expected_version": -3}),
        json!({"type": "skip_step", "step_id": "a", "expected_version": "1"}),
        json!({"type": "skip_step", "step_id": "a", "reason": "r".repeat(5000)}),
        json!({"type": "skip_step", "step_id": "a", "dry_run": "yes"}),
    ] {
        let r = op.post("/v1/plans/hp/interventions", body.clone()).await;
        assert!(
            r.status == 409 || r.status == 422 || r.status == 400,
            "{body}: {} {}",
            r.status,
            r.text
        );
        r.error_shape("hostile intervention");
    }
    // Well-formed interventions that are refused are recorded (every request is
    // recorded, including refused ones) as `intervention_failed` events; the definition and its
    // version do not change. Malformed ones leave no trace.
    let after_ivs = op.plan("hp").await;
    assert_eq!(
        after_ivs["version"], before_hp.0,
        "refusals do not bump the version"
    );
    assert_eq!(after_ivs["state"], before_hp.2);
    let from = before_hp.1.as_u64().unwrap();
    for e in op.all_events("hp").await.iter().skip(from as usize) {
        assert_eq!(
            e["type"], "intervention_failed",
            "only refusals were recorded: {e}"
        );
    }
    let before_hp = fingerprint(&after_ivs);
    // unknown and very long ids, odd paths and query strings
    let long = "p".repeat(5000);
    for path in [
        format!("/v1/plans/{long}"),
        format!("/v1/plans/{long}/snapshot"),
        format!("/v1/plans/hp/checkpoints/{long}"),
        "/v1/plans/%00%ff".to_owned(),
        "/v1/plans/..%2F..%2Fetc".to_owned(),
        "/v1/plans/hp/events?after=abc".to_owned(),
        "/v1/plans/hp/events?after=99999999999999999999999".to_owned(),
        format!("/v1/plans?cursor={long}"),
        "/v1/plans?limit=-1".to_owned(),
        "/v1/plans?state=%FF".to_owned(),
    ] {
        let r = op.get(&path).await;
        assert!(
            matches!(r.status, 400 | 404 | 414 | 431),
            "GET {}: {} {}",
            &path[..path.len().min(80)],
            r.status,
            r.text
        );
        if r.status != 414 && r.status != 431 {
            r.error_shape(&path);
        }
    }
    for path in [
        format!("/v1/plans/{long}/start"),
        format!("/v1/plans/{long}/checkpoints/x/fork"),
    ] {
        let r = op.post_empty(&path).await;
        assert!(
            matches!(r.status, 400 | 404 | 414),
            "POST long id: {} {}",
            r.status,
            r.text
        );
    }
    // wrong methods
    let r =
        op.0.call(Method::PUT, "/v1/plans/hp", op.1, Some(json!({})))
            .await;
    assert!(r.status == 405 || r.status == 404, "PUT: {}", r.status);
    r.error_shape("wrong method");
    // raw garbage on the socket, and a half-open request
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let garbage: Vec<Vec<u8>> = vec![
            b"\x00\x01\x02\x03garbage\r\n\r\n".to_vec(),
            b"GET / HTTP/9.9\r\n\r\n".to_vec(),
            b"POST /v1/plans HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".to_vec(),
            b"POST /v1/plans HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
                .to_vec(),
            format!(
                "GET /v1/plans HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
                "h".repeat(200_000)
            )
            .into_bytes(),
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ];
        for g in garbage {
            let mut s = tokio::net::TcpStream::connect(&w.server.addr)
                .await
                .unwrap();
            let _ = s.write_all(&g).await;
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .unwrap_or(Ok(0))
                .unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            if let Some(code) = head
                .strip_prefix("HTTP/1.1 ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse::<u16>().ok())
            {
                assert!(
                    (400..500).contains(&code),
                    "garbage answered {code}: {head}"
                );
            }
        }
        // half-open: headers promising a body that never comes, then the client goes quiet
        let mut half = tokio::net::TcpStream::connect(&w.server.addr)
            .await
            .unwrap();
        half.write_all(
            format!(
                "POST /v1/plans/hp/interventions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"type\": \"skip",
                w.operator
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        // the server keeps answering others meanwhile
        op.get("/v1/plans/hp")
            .await
            .expect(200, "while a request is half-open");
        let _ = half.shutdown().await; // half-close our side
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), half.read(&mut buf))
            .await
            .unwrap_or(Ok(0))
            .unwrap_or(0);
        let head = String::from_utf8_lossy(&buf[..n]);
        if let Some(code) = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse::<u16>().ok())
        {
            assert!(
                (400..500).contains(&code),
                "half-open answered {code}: {head}"
            );
        }
        // many idle connections opened and dropped
        let mut conns = Vec::new();
        for _ in 0..50 {
            conns.push(
                tokio::net::TcpStream::connect(&w.server.addr)
                    .await
                    .unwrap(),
            );
        }
        drop(conns);
    }
    // still up, nothing changed
    assert!(w.server.alive(), "the server survived");
    Auth(&w.api, None)
        .get("/healthz")
        .await
        .expect(200, "healthz after");
    assert_eq!(
        fingerprint(&op.plan("h").await),
        before_h,
        "plan h unchanged"
    );
    assert_eq!(
        fingerprint(&op.plan("hp").await),
        before_hp,
        "plan hp unchanged"
    );
    let list = op.get("/v1/plans?limit=100").await.body;
    let ids: BTreeSet<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["plan_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from(["h", "hp"]), "no plan was created");
}

// ---- 5. 50 concurrent operators ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_operators_lose_no_update() {
    let w = World::new();
    let op = w.op();
    let plans: Vec<String> = (0..5).map(|i| format!("cc{i}")).collect();
    for id in &plans {
        op.register(plan_doc(id, vec![echo_step("base")])).await;
        op.post_empty(&format!("/v1/plans/{id}/start"))
            .await
            .expect(200, "start");
        op.wait_state(id, "completed").await;
        // a completed plan is terminal: use paused plans instead (restore to the initial cp)
        let cp = op.get(&format!("/v1/plans/{id}/checkpoints")).await.body["items"][0]
            ["checkpoint_id"]
            .as_str()
            .unwrap()
            .to_owned();
        op.post_empty(&format!("/v1/plans/{id}/checkpoints/{cp}/restore"))
            .await
            .expect(200, "restore → paused");
    }
    let start_versions: BTreeMap<String, u64> = {
        let mut m = BTreeMap::new();
        for id in &plans {
            m.insert(id.clone(), op.plan(id).await["version"].as_u64().unwrap());
        }
        m
    };
    let mut tasks = Vec::new();
    for client in 0..50usize {
        let api = w.api.clone();
        let token = w.operator.clone();
        let plans = plans.clone();
        tasks.push(tokio::spawn(async move {
            let auth = Auth(&api, Some(&token));
            let mut results = Vec::new(); // (plan, status, version in the answer, step id)
            for round in 0..4usize {
                let plan = &plans[(client + round) % plans.len()];
                let v = auth.plan(plan).await["version"].as_u64().unwrap();
                let step = format!("c{client}_r{round}");
                let r = auth
                    .post(
                        &format!("/v1/plans/{plan}/interventions"),
                        json!({"type": "add_step", "step": echo_step(&step), "expected_version": v}),
                    )
                    .await;
                results.push((plan.clone(), r.status, r.body.clone(), step, v));
            }
            results
        }));
    }
    let mut applied: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    let mut conflicts = 0;
    for t in tasks {
        for (plan, status, body, step, v) in t.await.unwrap() {
            match status {
                201 => {
                    assert_eq!(body["status"], "applied");
                    assert_eq!(
                        body["plan_version"].as_u64(),
                        Some(v + 1),
                        "a 201 bumps the version it was based on exactly once"
                    );
                    applied
                        .entry(plan)
                        .or_default()
                        .push((body["plan_version"].as_u64().unwrap(), step));
                }
                409 => {
                    conflicts += 1;
                    let msg = body["error"]["message"].as_str().unwrap_or("");
                    assert!(
                        msg.contains("version"),
                        "every 409 is a version conflict: {body}"
                    );
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
    }
    eprintln!(
        "applied {}, conflicts {conflicts}",
        applied.values().map(Vec::len).sum::<usize>()
    );
    for id in &plans {
        let list = applied.get(id).cloned().unwrap_or_default();
        let p = op.plan(id).await;
        let v0 = start_versions[id];
        assert_eq!(
            p["version"].as_u64().unwrap(),
            v0 + list.len() as u64,
            "plan {id}: final version = start + number of 201s"
        );
        // versions handed out are distinct and contiguous: no two 201s saw the same version
        let mut versions: Vec<u64> = list.iter().map(|(v, _)| *v).collect();
        versions.sort();
        assert_eq!(
            versions,
            ((v0 + 1)..=(v0 + list.len() as u64)).collect::<Vec<_>>()
        );
        // every applied step is there; nothing else was added
        let ids = step_ids(&p);
        assert_eq!(ids.len(), 1 + list.len(), "plan {id}: step count");
        for (_, step) in &list {
            assert!(ids.contains(step), "plan {id} lost {step}");
        }
        let ivs = op.get(&format!("/v1/plans/{id}/interventions")).await.body;
        let applied_ivs = ivs["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["status"] == "applied")
            .count();
        assert_eq!(applied_ivs, list.len());
        assert_contiguous(&op.all_events(id).await, id);
    }
    assert!(!applied.is_empty());
}

// ---- 6. kill -9 under load, SIGTERM --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_acknowledged_change() {
    let mut w = World::new();
    let plans: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    {
        let op = w.op();
        for id in &plans {
            let steps = (0..6).map(|s| sleep_step(&format!("s{s}"), 150)).collect();
            op.register(plan_doc(id, steps)).await;
            op.post_empty(&format!("/v1/plans/{id}/start"))
                .await
                .expect(200, "start");
        }
    }
    // Load: per plan, a client that pauses, adds a step, resumes, over and over.
    let acked: Arc<Mutex<Vec<(String, String, Value)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (n, id) in plans.iter().enumerate() {
        let api = w.api.clone();
        let token = w.operator.clone();
        let id = id.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..1000usize {
                let base = format!("{}/v1/plans/{id}", api.base);
                let send = |path: String, body: Value| {
                    let http = api.http.clone();
                    let token = token.clone();
                    async move {
                        let r = http
                            .post(path)
                            .bearer_auth(token)
                            .json(&body)
                            .timeout(Duration::from_secs(5))
                            .send()
                            .await
                            .ok()?;
                        let status = r.status().as_u16();
                        let body: Value = r.json().await.ok()?;
                        Some((status, body))
                    }
                };
                let Some((ps, _)) = send(format!("{base}/pause"), json!({})).await else {
                    return;
                };
                if ps < 300 {
                    acked
                        .lock()
                        .unwrap()
                        .push((id.clone(), "pause".into(), Value::Null));
                }
                let step = format!("x{n}_{round}");
                let Some((s, body)) = send(
                    format!("{base}/interventions"),
                    json!({"type": "add_step", "step": echo_step(&step)}),
                )
                .await
                else {
                    return;
                };
                if s < 300 {
                    acked.lock().unwrap().push((id.clone(), "add".into(), body));
                }
                let Some((rs, _)) = send(format!("{base}/resume"), json!({})).await else {
                    return;
                };
                if rs < 300 {
                    acked
                        .lock()
                        .unwrap()
                        .push((id.clone(), "resume".into(), Value::Null));
                }
            }
        }));
    }
    // let the load run until enough was acknowledged, then kill -9 mid-way
    for _ in 0..400 {
        if acked.lock().unwrap().len() >= 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    w.server.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty(), "the load got answers before the kill");
    eprintln!(
        "acknowledged before the kill: {} ({} interventions)",
        acked.len(),
        acked.iter().filter(|a| a.1 == "add").count()
    );
    w.restart();
    let op = w.op();
    // resume whatever the acknowledged operations left paused, then everything finishes
    for id in &plans {
        let p = op.plan(id).await;
        // The client sends pause, add, resume in turn and stops at the first unanswered one: if
        // its last answered request was a pause, nothing was sent after it that could resume.
        let last_ack = acked.iter().rev().find(|(p, _, _)| p == id);
        if let Some((_, kind, _)) = last_ack {
            if kind == "pause" {
                assert_eq!(p["state"], "paused", "plan {id}: acked pause survives: {p}");
            }
        }
        if p["state"] == "paused" {
            op.post_empty(&format!("/v1/plans/{id}/resume"))
                .await
                .expect(200, "resume after restart");
        }
    }
    for id in &plans {
        let p = op
            .wait_for(id, "completed", |p| p["state"] == "completed")
            .await;
        // every acknowledged intervention is there and applied
        let ivs = op.get(&format!("/v1/plans/{id}/interventions")).await.body;
        let have: BTreeSet<String> = ivs["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["intervention_id"].as_str().unwrap().to_owned())
            .collect();
        for (_, _, body) in acked.iter().filter(|(p, k, _)| p == id && k == "add") {
            let iid = body["intervention_id"].as_str().unwrap();
            assert!(have.contains(iid), "plan {id}: acknowledged {iid} lost");
            let step = body["step_id"].as_str().map(str::to_owned).or_else(|| {
                body["payload"]["step"]["step_id"]
                    .as_str()
                    .map(str::to_owned)
            });
            if let Some(step) = step {
                assert!(
                    step_ids(&p).contains(&step),
                    "plan {id}: added step {step} lost"
                );
            }
        }
        let events = op.all_events(id).await;
        assert_contiguous(&events, id);
        // no completed step ran twice
        let mut completed = BTreeSet::new();
        for e in &events {
            if e["type"] == "step_completed" {
                let s = e["data"]["step_id"]
                    .as_str()
                    .or_else(|| e["step_id"].as_str())
                    .unwrap_or("")
                    .to_owned();
                assert!(
                    completed.insert(s.clone()),
                    "plan {id}: {s} completed twice"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_and_a_restart_continues_running_plans() {
    let mut w = World::new();
    {
        let op = w.op();
        let steps = (0..8).map(|s| sleep_step(&format!("s{s}"), 150)).collect();
        op.register(plan_doc("t", steps)).await;
        op.post_empty("/v1/plans/t/start")
            .await
            .expect(200, "start");
        op.wait_for("t", "one step done", |p| {
            !p["completed_steps"].as_array().unwrap().is_empty()
        })
        .await;
    }
    let code = w.server.term();
    assert_eq!(
        code,
        Some(0),
        "SIGTERM exits 0; stderr:\n{}",
        w.server.stderr.lock().unwrap()
    );
    w.restart();
    let op = w.op();
    let p = op.plan("t").await;
    assert_ne!(
        p["state"], "paused",
        "a running plan is not paused by a shutdown"
    );
    let done = op.wait_state("t", "completed").await;
    assert_eq!(done["completed_steps"].as_array().unwrap().len(), 8);
    assert_contiguous(&op.all_events("t").await, "t");
}

#[test]
fn no_auth_on_a_non_loopback_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = local(
        &["serve", "--bind", "0.0.0.0:0", "--no-auth"],
        &dir.path().join("cairn.db"),
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--no-auth"), "{}", out.stderr);
    assert!(!out.stdout.contains("listening"), "it never listened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_on_loopback_lets_everyone_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("cairn.db"), &["--no-auth"]);
    assert!(server.admin.is_none(), "no token is created with --no-auth");
    let api = Api::new(&server.base);
    Auth(&api, None)
        .post("/v1/plans", plan_doc("open", vec![echo_step("a")]))
        .await
        .expect(201, "register without a token");
}

// ---- 7. the client mode of the CLI ---------------------------------------------------------

/// `cairn ARGS` in client mode against `server`: `(exit code, stdout, stderr)`.
fn cli(args: &[&str], server: &str, token: Option<&str>) -> (i32, String, String) {
    remote(args, server, token).parts()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_versions_and_diffs_through_the_server() {
    let w = World::new();
    let base = w.server.base.clone();
    let op = w.op();
    op.post(
        "/v1/plans",
        plan_doc("hist", vec![echo_step("a"), echo_step("b")]),
    )
    .await
    .expect(201, "register");
    op.post(
        "/v1/plans/hist/interventions",
        json!({"type": "remove_step", "step_id": "a"}),
    )
    .await
    .expect(201, "remove a");
    let viewer = Some(w.viewer.as_str());
    let (code, out, err) = cli(&["plans", "versions", "hist", "--json"], &base, viewer);
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["versions"][0]["user"], "olivia");
    assert_eq!(list["versions"][1]["cause"]["type"], "remove_step");
    let (code, out, err) = cli(&["plans", "diff", "hist"], &base, viewer);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("plan hist version 1 → 2\n"), "{out}");
    assert!(out.contains("- step a (was at 1)"), "{out}");
    let (code, out, _) = cli(&["plans", "versions", "hist", "--show", "1"], &base, viewer);
    assert_eq!(code, 0);
    let v1: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v1["definition"]["steps"].as_array().unwrap().len(), 2);
    let (code, _, err) = cli(&["plans", "diff", "hist", "--from", "5"], &base, viewer);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("has no version 5"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_talks_to_the_server() {
    let w = World::new();
    let base = w.server.base.clone();
    let op_tok = Some(w.operator.as_str());
    let dir = tempfile::tempdir().unwrap();
    // register a YAML file and a JSON file
    let yaml = dir.path().join("p.yaml");
    std::fs::write(
        &yaml,
        "plan_id: cli1\nquery: from the cli\nsteps:\n  - step_id: a\n    action: wait\n    agent_type: builtin.sleep\n    params: {ms: 200}\n  - step_id: b\n    action: echo\n    agent_type: builtin.echo\n",
    )
    .unwrap();
    let (code, out, err) = cli(
        &["plans", "register", yaml.to_str().unwrap(), "--json"],
        &base,
        op_tok,
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["plan_id"], "cli1");
    assert_eq!(v["state"], "idle");
    let jsonf = dir.path().join("p.json");
    std::fs::write(&jsonf, plan_doc("cli2", vec![echo_step("a")]).to_string()).unwrap();
    let (code, out, _) = cli(
        &["plans", "register", jsonf.to_str().unwrap()],
        &base,
        op_tok,
    );
    assert_eq!(code, 0);
    assert!(out.contains("plan cli2"), "a table: {out}");
    let (code, _, err) = cli(
        &["plans", "register", jsonf.to_str().unwrap()],
        &base,
        op_tok,
    );
    assert_eq!(code, 2, "a duplicate is refused");
    assert!(err.contains("cli2"), "{err}");

    // show --json is the server's JSON; the table by default
    let (code, out, _) = cli(&["plans", "show", "cli1", "--json"], &base, op_tok);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&out).unwrap();
    let server_view = w.op().plan("cli1").await;
    assert_eq!(shown, server_view);
    let (code, out, _) = cli(&["plans", "show", "cli1"], &base, op_tok);
    assert_eq!(code, 0);
    assert!(out.contains("STEP") && out.contains("idle"), "{out}");
    let (code, out, _) = cli(&["plans", "list", "--json"], &base, op_tok);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // a refused intervention exits 2 with the server's message
    let (code, _, err) = cli(&["steps", "skip", "cli2", "nope"], &base, op_tok);
    assert_eq!(code, 2);
    assert!(err.contains("refused") && err.contains("nope"), "{err}");
    let (code, out, _) = cli(
        &["steps", "skip", "cli1", "b", "--reason", "why not"],
        &base,
        op_tok,
    );
    assert_eq!(code, 0);
    assert!(out.contains("applied"), "{out}");
    let (code, _, err) = cli(&["steps", "skip", "cli1", "b"], &base, op_tok);
    assert_eq!(code, 2, "skipping twice is a conflict");
    // The same words as on a local store: one code path both ways.
    assert!(err.contains("refused: step b is skipped"), "{err}");
    let ivs = w.op().get("/v1/plans/cli1/interventions").await.body;
    assert_eq!(ivs["items"][0]["user"], "olivia");

    // 401 / 403 exit 2 with a hint about CAIRN_TOKEN
    let (code, _, err) = cli(&["plans", "show", "cli1"], &base, None);
    assert_eq!(code, 2);
    assert!(err.contains("CAIRN_TOKEN"), "{err}");
    let (code, _, err) = cli(&["plans", "show", "cli1"], &base, Some("cairn_wrong"));
    assert_eq!(code, 2);
    assert!(err.contains("CAIRN_TOKEN") && err.contains("401"), "{err}");
    let (code, _, err) = cli(&["plans", "start", "cli1"], &base, Some(&w.viewer));
    assert_eq!(code, 2);
    assert!(err.contains("403") && err.contains("CAIRN_TOKEN"), "{err}");
    let (code, _, _) = cli(&["plans", "show", "nope"], &base, op_tok);
    assert_eq!(code, 2, "an unknown plan is bad input");

    // control, checkpoints, follow
    let (code, _, err) = cli(&["plans", "start", "cli1", "--json"], &base, op_tok);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(
        &["plans", "events", "cli1", "--follow", "--json"],
        &base,
        op_tok,
    );
    assert_eq!(code, 0, "{err}");
    let seqs: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(out.contains("plan_completed"), "{out}");
    let (code, out, _) = cli(&["checkpoints", "list", "cli1", "--json"], &base, op_tok);
    assert_eq!(code, 0);
    let cps: Value = serde_json::from_str(&out).unwrap();
    let cid = cps["items"][0]["checkpoint_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, out, _) = cli(
        &[
            "checkpoints",
            "fork",
            "cli1",
            &cid,
            "--new-plan-id",
            "cli1f",
            "--json",
        ],
        &base,
        op_tok,
    );
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["state"],
        "paused"
    );
    let (code, _, _) = cli(&["checkpoints", "restore", "cli1", &cid], &base, op_tok);
    assert_eq!(code, 0);
    let (code, out, _) = cli(&["plans", "snapshot", "cli1"], &base, op_tok);
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<Value>(&out).unwrap()["checkpoints"].is_array());
    let (code, _, _) = cli(&["plans", "cancel", "cli1f"], &base, op_tok);
    assert_eq!(code, 0);
    let (code, _, err) = cli(&["plans", "cancel", "cli1f"], &base, op_tok);
    assert_eq!(code, 2);
    assert!(err.contains("409") || err.contains("cancel"), "{err}");

    // nothing listening: exit 1, saying so
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (code, _, err) = cli(&["plans", "list"], &format!("http://{closed}"), op_tok);
    assert_eq!(code, 1);
    assert!(err.contains("not reachable"), "{err}");
}

/// `cairn plans pause --resume-after 1` over HTTP: the plan pauses now and resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_with_resume_after_resumes_by_itself() {
    let w = World::new();
    let op = w.op();
    // a is held until the pause has answered, so the plan cannot end before it.
    op.register(plan_doc(
        "ra",
        vec![latch_step("a", "ra-a"), echo_step("b")],
    ))
    .await;
    op.post_empty("/v1/plans/ra/start")
        .await
        .expect(200, "start");
    let (code, out, err) = cli(
        &["plans", "pause", "ra", "--resume-after", "1", "--json"],
        &w.server.base,
        Some(&w.operator),
    );
    assert_eq!(code, 0, "{out}{err}");
    let paused: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(paused["state"], "paused");
    let resume_at = paused["resume_at"].as_str().unwrap_or_default();
    assert!(
        resume_at.len() == 27 && resume_at.ends_with('Z'),
        "an RFC 3339 UTC time with microseconds: {paused}"
    );
    w.release("ra-a");
    // Nobody resumes it: the engine's timer does.
    let done = op.wait_state("ra", "completed").await;
    assert_eq!(step_status(&done, "b"), "completed");
    let events = op.all_events("ra").await;
    let resumed = events
        .iter()
        .find(|e| e["type"] == "plan_resumed")
        .expect("a plan_resumed event");
    assert_eq!(resumed["actor"], "cairn", "the timer resumed it: {resumed}");
    let (code, _, err) = cli(
        &["plans", "pause", "ra", "--resume-after", "0"],
        &w.server.base,
        Some(&w.operator),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--resume-after"), "{err}");
}

/// `complete_step` over HTTP and through `cairn steps complete --server`: a failed step is given
/// its result by hand, the plan pauses for the operator, and resumes on that output. A dry run
/// answers `would_apply` with no id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_step_over_http_and_from_the_cli() {
    let w = World::new();
    let op = w.op();
    let fail = json!({"step_id": "a", "action": "x", "agent_type": "builtin.fail", "params": {"times": 9}});
    let b = json!({"step_id": "b", "action": "x", "agent_type": "builtin.echo", "params": {"got": "{{ steps.a.output.n }}"}});
    op.register(plan_doc("cs", vec![fail, b])).await;
    op.post_empty("/v1/plans/cs/start")
        .await
        .expect(200, "start");
    op.wait_state("cs", "failed").await;

    let dry = op
        .post(
            "/v1/plans/cs/interventions",
            json!({"type": "complete_step", "step_id": "a", "output": {"n": 1}, "dry_run": true}),
        )
        .await
        .expect(200, "dry run");
    assert_eq!(dry.body["status"], "would_apply");
    assert_eq!(dry.body["dry_run"], true);
    assert!(dry.body.get("intervention_id").is_none(), "{}", dry.body);
    // A dry run that would be refused answers like a refusal, with the record it would be.
    let would_fail = op
        .post(
            "/v1/plans/cs/interventions",
            json!({"type": "complete_step", "step_id": "zz", "output": 1, "dry_run": true}),
        )
        .await
        .expect(422, "dry run on an unknown step");
    let record = &would_fail.body["error"]["intervention"];
    assert_eq!(record["status"], "would_fail", "{}", would_fail.body);
    assert_eq!(record["dry_run"], true);
    assert!(record.get("intervention_id").is_none(), "{record}");
    op.post(
        "/v1/plans/cs/interventions",
        json!({"type": "complete_step", "step_id": "b"}),
    )
    .await
    .expect(422, "complete_step without an output");
    let recorded = op
        .get("/v1/plans/cs/interventions")
        .await
        .expect(200, "list")
        .body;
    assert!(
        recorded["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status"] != "would_apply" && i["status"] != "would_fail"),
        "dry runs are not recorded: {recorded}"
    );

    let (code, out, err) = cli(
        &[
            "steps",
            "complete",
            "cs",
            "a",
            "--output",
            r#"{"n": 42}"#,
            "--reason",
            "looked it up",
            "--json",
        ],
        &w.server.base,
        Some(&w.operator),
    );
    assert_eq!(code, 0, "{out}{err}");
    let record: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["type"], "complete_step");
    assert_eq!(record["status"], "applied");
    assert_eq!(record["reason"], "looked it up");
    let paused = op.plan("cs").await;
    assert_eq!(paused["state"], "paused", "{paused}");
    assert_eq!(paused["pause_reason"], "intervention");
    let cps = op
        .get("/v1/plans/cs/checkpoints")
        .await
        .expect(200, "checkpoints")
        .body;
    let last = cps["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["trigger"], "intervention", "{cps}");

    op.post_empty("/v1/plans/cs/resume")
        .await
        .expect(200, "resume");
    let done = op.wait_state("cs", "completed").await;
    let events = op.all_events("cs").await;
    let b_done = events
        .iter()
        .find(|e| e["type"] == "step_completed" && e["data"]["step_id"] == "b")
        .expect("b completed");
    assert_eq!(b_done["data"]["output"], json!({"got": 42}), "{done}");
}

// ---- connection limits -------------------------------------------------------------------

/// Reads from `s` until the server closes it (EOF or reset), by `deadline`. True when closed.
fn closed_by(s: &mut std::net::TcpStream, deadline: std::time::Instant) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Sends one whole request on `s` and reads its answer (a `content-length` body): the status
/// and the body.
fn exchange(s: &mut std::net::TcpStream, request: &[u8]) -> (u16, String) {
    use std::io::Write;
    // The server may answer (and close) before it has read all of an oversized request.
    let _ = s.write_all(request);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = text[..end].to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        if text.len() >= end + 4 + len {
            let status = text[9..12].parse().unwrap();
            return (status, text[end + 4..end + 4 + len].to_owned());
        }
    }
}

/// 1,000 connections that send nothing, half a request line or half the headers do not stop
/// `/healthz` from answering, and each is closed once the head timeout has passed. An idle
/// keep-alive connection is closed after the idle timeout (not the shorter head timeout), and
/// an event stream outlives the idle timeout on its keep-alive comments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_idle_connections_are_closed_and_healthz_keeps_answering() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let srv = Server::start(
        &db,
        &[
            "--no-auth",
            "--header-timeout",
            "1s",
            "--idle-timeout",
            "3s",
            "--stream-keep-alive",
            "500ms",
        ],
    );
    let addr = srv.addr.clone();
    let held = tokio::task::spawn_blocking(move || {
        (0..1000)
            .map(|i| {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                match i % 3 {
                    1 => s.write_all(b"GET /hea").unwrap(),
                    2 => s
                        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                        .unwrap(),
                    _ => {}
                }
                s
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = http
        .get(format!("{}/healthz", srv.base))
        .send()
        .await
        .expect("/healthz answers while 1,000 slow connections are open");
    assert_eq!(r.status(), 200);
    let closed = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        held.into_iter()
            .map(|mut s| closed_by(&mut s, deadline))
            .filter(|c| *c)
            .count()
    })
    .await
    .unwrap();
    assert_eq!(closed, 1000, "every slow connection is closed");

    // An idle keep-alive connection lives out the idle timeout, then is closed.
    let addr = srv.addr.clone();
    let idle_for = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let (status, body) = exchange(&mut s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 200, "{body}");
        let answered = std::time::Instant::now();
        assert!(closed_by(&mut s, answered + Duration::from_secs(30)));
        answered.elapsed()
    })
    .await
    .unwrap();
    assert!(
        idle_for >= Duration::from_millis(2_500),
        "an idle connection was closed after {idle_for:?}, before the 3 s idle timeout"
    );

    // An event stream of a plan that has not ended sends keep-alive comments, and they keep
    // it open past the idle timeout.
    let r = http
        .post(format!("{}/v1/plans", srv.base))
        .json(&plan_doc("quiet", vec![echo_step("a")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // No overall timeout on this client (the stream is meant to stay open); its head is bounded.
    let stream = tokio::time::timeout(
        Duration::from_secs(30),
        reqwest::Client::new()
            .get(format!("{}/v1/plans/quiet/events/stream", srv.base))
            .send(),
    )
    .await
    .expect("the event stream answers its head")
    .unwrap();
    assert_eq!(stream.status(), 200);
    let started = std::time::Instant::now();
    let mut stream = stream;
    let mut text = String::new();
    let comments = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let chunk = stream
                .chunk()
                .await
                .unwrap()
                .expect("the stream stays open");
            text.push_str(&String::from_utf8_lossy(&chunk));
            let n = text.lines().filter(|l| l.starts_with(':')).count();
            if started.elapsed() > Duration::from_secs(4) {
                return n;
            }
        }
    })
    .await
    .expect("keep-alive comments keep coming");
    assert!(
        comments >= 4,
        "{comments} keep-alive comments in 4 s: {text}"
    );
}

/// What hyper refuses before the router sees it still answers the JSON error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_answers_the_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let srv = Server::start(&db, &["--no-auth"]);
    let addr = srv.addr.clone();
    tokio::task::spawn_blocking(move || {
        let huge = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(128 * 1024)
        );
        for (request, want, code) in [
            (
                b"\x00\x01 not http at all\r\n\r\n".to_vec(),
                400,
                "bad_request",
            ),
            (
                b"GET / HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
                400,
                "bad_request",
            ),
            (huge.into_bytes(), 431, "headers_too_large"),
        ] {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            let (status, body) = exchange(&mut s, &request);
            assert_eq!(status, want, "{body}");
            let v: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("not the JSON error ({e}): {body:?}"));
            assert_eq!(v["error"]["code"], code, "{v}");
        }
    })
    .await
    .unwrap();
}

// ---- expiring tokens ----------------------------------------------------------------------

/// Waits (bounded) until `token` is refused, and returns the refusal.
async fn refused_once_expired(api: &Api, token: &str) -> Resp {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = api.call(Method::GET, "/v1/plans", Some(token), None).await;
        if r.status != 200 {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the token never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Tokens made with `cairn token create --expires-in` or `POST /v1/tokens {"expires_in"}` say
/// when they expire (RFC 3339 UTC) and are refused with 401 "token expired at …" from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_may_expire() {
    let w = World::new();
    let create = |expires: &str| {
        local(
            &["token", "create", "--user", "tess", "--role", "viewer"]
                .into_iter()
                .chain(["--expires-in", expires, "--json"])
                .collect::<Vec<_>>(),
            &w.db,
        )
        .expect(0, "token create --expires-in")
        .json()
    };
    let week = create("7d");
    let short = create("2s");
    let is_rfc3339_utc = |v: &Value| {
        let s = v.as_str().unwrap_or("");
        s.len() == 27 && s.ends_with('Z') && &s[10..11] == "T" && &s[19..20] == "."
    };
    assert!(is_rfc3339_utc(&week["expires_at"]), "{week}");
    assert!(is_rfc3339_utc(&short["expires_at"]), "{short}");
    let bad = local(
        &[
            "token",
            "create",
            "--user",
            "tess",
            "--role",
            "viewer",
            "--expires-in",
            "soon",
        ],
        &w.db,
    );
    assert_eq!(bad.code, 2, "a bad duration is a usage error");
    assert!(bad.stderr.contains("soon"));

    let admin = Auth(&w.api, Some(&w.admin));
    let made = admin
        .post(
            "/v1/tokens",
            json!({"user": "ann", "role": "viewer", "expires_in": 2}),
        )
        .await
        .expect(201, "an expiring token");
    assert!(is_rfc3339_utc(&made.body["expires_at"]), "{}", made.text);
    admin
        .post(
            "/v1/tokens",
            json!({"user": "ann", "role": "viewer", "expires_in": 0}),
        )
        .await
        .expect(422, "expires_in 0");
    let listed = admin.get("/v1/tokens").await.expect(200, "list");
    assert!(listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["expires_at"] == made.body["expires_at"]));

    for (token, expires_at) in [
        (short["token"].as_str().unwrap(), &short["expires_at"]),
        (
            made.body["token"].as_str().unwrap(),
            &made.body["expires_at"],
        ),
    ] {
        let r = refused_once_expired(&w.api, token)
            .await
            .expect(401, "expired");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "token expired at {}",
                expires_at.as_str().unwrap()
            )),
            "{message}"
        );
    }
    // The week-long token still works.
    w.api
        .call(Method::GET, "/v1/plans", week["token"].as_str(), None)
        .await
        .expect(200, "a token that has not expired");
}

/// Past `--max-connections`, a client waits in the backlog until a connection closes (here the
/// silent ones, at the head timeout), then is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_holds_extra_clients_until_a_slot_frees() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let srv = Server::start(
        &db,
        &[
            "--no-auth",
            "--max-connections",
            "2",
            "--header-timeout",
            "1s",
        ],
    );
    let silent: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(&srv.addr).unwrap())
        .collect();
    let asked = std::time::Instant::now();
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .get(format!("{}/healthz", srv.base))
        .send()
        .await
        .expect("served once a slot frees");
    assert_eq!(r.status(), 200);
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "answered after {waited:?}, while both slots were held by silent connections"
    );
    drop(silent);
}

/// `--max-queued-commands` reaches the engine: with 0, every command is refused with 429
/// `overloaded` and a Retry-After (the CLI says so and fails), while registering and reading,
/// which are not commands, still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_limit_flag_refuses_commands_with_429() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let srv = Server::start(&db, &["--no-auth", "--max-queued-commands", "0"]);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let r = http
        .post(format!("{}/v1/plans", srv.base))
        .json(&plan_doc("full", vec![echo_step("a")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "registering is not a command");
    let r = http
        .post(format!("{}/v1/plans/full/start", srv.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    let (code, out, err) = cli(&["plans", "start", "full"], &srv.base, None);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("overloaded"), "{err}");
    let (code, out, err) = cli(&["plans", "show", "full", "--json"], &srv.base, None);
    assert_eq!(code, 0, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["state"], "idle", "{plan}");
}

/// Every read command prints the same thing on a local store and with `--server`: the same
/// `--json` byte for byte, and the same tables (one code path, one renderer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_command_answers_the_same_locally_and_over_http() {
    let mut w = World::new();
    let op = w.op();
    let mut breakpoint = echo_step("c");
    breakpoint["pause_before"] = json!(true);
    op.register(plan_doc(
        "both",
        vec![echo_step("a"), echo_step("b"), breakpoint, echo_step("d")],
    ))
    .await;
    op.post_empty("/v1/plans/both/start")
        .await
        .expect(200, "start");
    op.wait_for("both", "paused and quiet at the breakpoint", |p| {
        p["state"] == "paused" && p["running_steps"].as_array().is_some_and(|r| r.is_empty())
    })
    .await;
    let remote = |args: &[&str]| cli(args, &w.server.base, Some(&w.operator));
    let (code, out, err) = remote(&["steps", "skip", "both", "c", "--reason", "not needed"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = remote(&["steps", "skip", "both", "a"]);
    assert_eq!(code, 2, "a completed step cannot be skipped: {err}");
    let (code, out, err) = remote(&["checkpoints", "create", "both", "--label", "mine"]);
    assert_eq!(code, 0, "{out}{err}");

    // A second plan, paused with a time to resume by itself.
    op.register(plan_doc(
        "later",
        vec![latch_step("a", "later-a"), echo_step("b")],
    ))
    .await;
    op.post_empty("/v1/plans/later/start")
        .await
        .expect(200, "start later");
    let (code, out, err) = remote(&[
        "plans",
        "pause",
        "later",
        "--resume-at",
        "2099-01-02T03:04:05.000006+01:00",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("resumes by itself at 2099-01-02 02:04:05Z"),
        "plans show says when: {out}"
    );
    // a was held until the pause answered, so the plan could not end first.
    w.release("later-a");
    op.wait_for("later", "quiet", |p| {
        p["running_steps"].as_array().is_some_and(|r| r.is_empty())
    })
    .await;

    let commands: Vec<Vec<&str>> = vec![
        vec!["plans", "list"],
        vec!["plans", "list", "--limit", "1"],
        vec!["plans", "list", "--state", "paused"],
        vec!["plans", "show", "both"],
        vec!["plans", "show", "later"],
        vec!["plans", "events", "both"],
        vec!["plans", "events", "both", "--limit", "4"],
        vec!["plans", "events", "both", "--limit", "4", "--cursor", "4"],
        vec!["plans", "snapshot", "both"],
        vec!["plans", "interventions", "both"],
        vec!["plans", "interventions", "both", "--limit", "1"],
        vec!["checkpoints", "list", "both"],
        vec![
            "checkpoints",
            "list",
            "both",
            "--limit",
            "2",
            "--cursor",
            "2",
        ],
        vec!["checkpoints", "show", "both", "cp-2"],
    ];
    let mut over_http = Vec::new();
    for c in &commands {
        for json in [false, true] {
            let mut args = c.clone();
            if json {
                args.push("--json");
            }
            let (code, out, err) = remote(&args);
            assert_eq!(code, 0, "{args:?}: {err}");
            over_http.push((args, out));
        }
    }
    // The server holds the store while it runs; stop it, then read the same file locally.
    assert_eq!(w.server.term(), Some(0));
    for (args, remote_out) in &over_http {
        let (code, out, err) = local(args, &w.db).parts();
        assert_eq!(code, 0, "{args:?}: {err}");
        // A snapshot says when it was taken; that alone may differ.
        let strip = |text: &str| -> String {
            text.lines()
                .filter(|l| !l.trim_start().starts_with("\"taken_at\""))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            strip(&out),
            strip(remote_out),
            "cairn {} differs locally and over HTTP",
            args.join(" ")
        );
    }

    // What the outputs say, beyond being equal.
    let out = |args: &[&str]| {
        over_http
            .iter()
            .find(|(a, _)| a.as_slice() == args)
            .map(|(_, o)| o.clone())
            .unwrap()
    };
    let list: Value = serde_json::from_str(&out(&["plans", "list", "--json"])).unwrap();
    let both = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["plan_id"] == "both")
        .unwrap();
    assert_eq!(
        both["progress"],
        json!({"total": 4, "completed": 2, "failed": 0, "skipped": 1, "running": 0})
    );
    let created = both["created_at"].as_str().unwrap();
    assert!(created.len() == 27 && created.ends_with('Z'), "{created}");
    let table = out(&["plans", "list"]);
    assert!(
        table.contains("PROGRESS") && table.contains("3/4"),
        "{table}"
    );
    assert!(out(&["plans", "list", "--limit", "1"]).contains("more: --cursor "));
    let events = out(&["plans", "events", "both", "--limit", "4"]);
    assert!(events.contains("more: --cursor 4"), "{events}");
    assert!(events.contains("[checkpoint cp-2]"), "{events}");
    let ivs: Value =
        serde_json::from_str(&out(&["plans", "interventions", "both", "--json"])).unwrap();
    let users: Vec<(&str, &str)> = ivs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["user"].as_str().unwrap(), i["status"].as_str().unwrap()))
        .collect();
    assert_eq!(users, [("olivia", "applied"), ("olivia", "failed")]);
    let page: Value = serde_json::from_str(&out(&[
        "plans",
        "interventions",
        "both",
        "--limit",
        "1",
        "--json",
    ]))
    .unwrap();
    assert!(page["next_cursor"].is_string(), "{page}");
    let snap: Value = serde_json::from_str(&out(&["plans", "snapshot", "both", "--json"])).unwrap();
    assert_eq!(snap["skipped_steps"], json!(["c"]));
    assert_eq!(snap["plan"]["steps"].as_array().unwrap().len(), 4);
}

/// `resume_at` takes an RFC 3339 time (any offset) or, as before, integer microseconds, and
/// every time in the answer is RFC 3339 UTC with microseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_at_takes_rfc3339_and_answers_rfc3339() {
    let w = World::new();
    let op = w.op();
    op.register(plan_doc(
        "ra2",
        vec![sleep_step("a", 20_000), echo_step("b")],
    ))
    .await;
    op.post_empty("/v1/plans/ra2/start")
        .await
        .expect(200, "start");
    let want = "2099-01-01T00:00:00.000000Z";
    for resume_at in [
        json!("2099-01-01T01:00:00+01:00"),
        json!(4_070_908_800_000_000_i64),
    ] {
        let paused = op
            .post("/v1/plans/ra2/pause", json!({"resume_at": resume_at}))
            .await
            .expect(200, "pause with resume_at")
            .body;
        assert_eq!(paused["resume_at"], want, "{paused}");
        for t in [&paused["created_at"], &paused["updated_at"]] {
            let t = t.as_str().unwrap();
            assert!(t.len() == 27 && t.ends_with('Z'), "{t}");
        }
        op.post_empty("/v1/plans/ra2/resume")
            .await
            .expect(200, "resume");
    }
    for bad in [json!("tomorrow"), json!("2099-01-01 00:00"), json!(1.5)] {
        let r = op
            .post("/v1/plans/ra2/pause", json!({"resume_at": bad}))
            .await;
        assert!(
            (400..500).contains(&r.status),
            "resume_at {bad}: {} {}",
            r.status,
            r.body
        );
        r.error_shape("a bad resume_at");
    }
    let events = op.all_events("ra2").await;
    let pause = events
        .iter()
        .find(|e| e["type"] == "plan_paused")
        .expect("plan_paused");
    assert_eq!(pause["data"]["resume_at"], want, "{pause}");
    let at = pause["at"].as_str().unwrap();
    assert!(at.len() == 27 && at.ends_with('Z'), "{at}");
    op.post_empty("/v1/plans/ra2/cancel")
        .await
        .expect(200, "cancel");
}

/// The client crate reads every answer as its typed value (nothing is left as raw JSON), and
/// what it reads writes back as the document the server sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_client_reads_every_answer() {
    use cairn_client::Client;
    let w = World::new();
    let admin = Client::new(&w.server.base, Some(w.admin.clone())).unwrap();
    assert_eq!(admin.healthz().await.unwrap().status, "ok");
    assert_eq!(admin.readyz().await.unwrap().status, "ready");
    let token = admin.create_token("tess", "operator").await.unwrap();
    assert!(token.token.starts_with("cairn_"));
    let tokens = admin.tokens().await.unwrap();
    assert!(tokens
        .items
        .iter()
        .any(|t| t.id == token.id && t.user == "tess"));

    let c = Client::new(&w.server.base, Some(token.token)).unwrap();
    let view = c
        .register(&plan_doc("typed", vec![echo_step("a"), echo_step("b")]))
        .await
        .unwrap();
    assert_eq!(view.plan_id, "typed");
    c.start("typed", Some("go".into())).await.unwrap();
    let done = w.op().wait_state("typed", "completed").await;
    let plan = c.plan("typed").await.unwrap();
    assert_eq!(serde_json::to_value(&plan).unwrap(), done);
    let list = c
        .list_plans(Some("completed"), Some(10), None)
        .await
        .unwrap();
    assert_eq!(list.items[0].progress.completed, 2);
    let events = c.events("typed", 0, Some(3)).await.unwrap();
    assert_eq!(events.items.len(), 3);
    assert_eq!(events.next_cursor.as_deref(), Some("3"));
    let raw = w
        .op()
        .get("/v1/plans/typed/events?after=0&limit=3")
        .await
        .expect(200, "events")
        .body;
    assert_eq!(serde_json::to_value(&events).unwrap(), raw);
    let cps = c.checkpoints("typed", Some(1), None).await.unwrap();
    assert_eq!(cps.items.len(), 1);
    let rest = c
        .checkpoints("typed", Some(100), cps.next_cursor.as_deref())
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 2, "3 checkpoints in all");
    let cp = c
        .checkpoint("typed", &rest.items[1].checkpoint_id)
        .await
        .unwrap();
    assert_eq!(cp.completed_steps, ["a", "b"]);
    let refused = c
        .intervene("typed", &json!({"type": "skip_step", "step_id": "a"}))
        .await
        .unwrap_err();
    let record = refused.refused_intervention().expect("the refused record");
    assert_eq!(record.user, "tess");
    let ivs = c.interventions("typed", None, None).await.unwrap();
    assert_eq!(ivs.items, [record]);
    let snap = c.snapshot("typed").await.unwrap();
    assert_eq!(snap.completed_steps, ["a", "b"]);
    assert_eq!(snap.plan.steps.len(), 2);
}

// ---- quality gates and the review inbox ----------------------------------------------------

/// `examples/cairn.toml`: maps `writer` to `examples/agents/writer.py`.
fn examples_config() -> String {
    example("cairn.toml").to_string_lossy().into_owned()
}

/// A step of the example writer that covers `start` of four points, held for review below 0.8.
fn gated_step(id: &str, start: u32, review: Value) -> Value {
    json!({"step_id": id, "action": "write", "agent_type": "writer",
           "params": {"must_cover": ["a", "b", "c", "d"], "start": start},
           "quality_gate": {"min_scores": {"coverage": 0.8}, "on_fail": "review", "review": review}})
}

/// A server of the examples' configuration, with tokens for two operators besides the admin.
fn review_world() -> (TempDir, PathBuf, Server, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let config = examples_config();
    let server = Server::start(&db, &["--config", &config]);
    assert!(server.admin.is_some(), "{}", server.stderr.lock().unwrap());
    let alice = make_token(&db, "alice", "operator");
    let bob = make_token(&db, "bob", "operator");
    (dir, db, server, alice, bob)
}

/// `cairn reviews …` over the server, as JSON.
fn reviews_json(server: &str, token: &str, args: &[&str]) -> Value {
    let mut all = vec!["reviews"];
    all.extend_from_slice(args);
    all.push("--json");
    let (code, out, err) = cli(&all, server, Some(token));
    assert_eq!(code, 0, "cairn {all:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("cairn {all:?}: {e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_over_the_cli_quorum_of_two_users_refusals_and_the_inbox() {
    let (_dir, _db, server, alice, bob) = review_world();
    let base = server.base.clone();
    let api = Api::new(&base);
    let op = Auth(&api, Some(&alice));
    op.register(plan_doc(
        "rq",
        vec![
            gated_step("draft", 2, json!({"quorum": 2})),
            json!({"step_id": "publish", "action": "p", "agent_type": "builtin.echo",
                   "params": {"brief": "{{ steps.draft.output.brief }}"}}),
        ],
    ))
    .await;
    // A second plan whose review stays open, to show the inbox spans plans and filters.
    op.register(plan_doc("other", vec![gated_step("x", 1, json!({}))]))
        .await;
    op.post_empty("/v1/plans/rq/start")
        .await
        .expect(200, "start");
    op.post_empty("/v1/plans/other/start")
        .await
        .expect(200, "start");
    let p = op
        .wait_for("rq", "held for review", |p| {
            p["state"] == "paused" && step_status(p, "draft") == "awaiting_review"
        })
        .await;
    assert_eq!(p["pause_reason"], "review_required", "{p}");
    op.wait_for("other", "held for review", |p| p["state"] == "paused")
        .await;

    // The inbox over HTTP and from the CLI, filtered by state and plan.
    let inbox = op
        .get("/v1/reviews?state=open")
        .await
        .expect(200, "inbox")
        .body;
    let plans: BTreeSet<&str> = inbox["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["plan_id"].as_str().unwrap())
        .collect();
    assert_eq!(plans, BTreeSet::from(["other", "rq"]), "{inbox}");
    let mine = reviews_json(&base, &alice, &["list", "--state", "open", "--plan", "rq"]);
    let items = mine["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{mine}");
    let r = &items[0];
    assert_eq!(r["step_id"], "draft");
    assert_eq!(r["attempt"], 1);
    assert_eq!(r["state"], "open");
    assert_eq!(r["scores"]["coverage"], 0.5);
    assert_eq!(r["failed"][0]["criterion"], "min_scores.coverage", "{r}");
    assert_eq!(r["failed"][0]["bound"], 0.8);
    assert_eq!(r["output"]["covered"], json!(["a", "b"]));
    assert!(r["votes"].as_array().unwrap().is_empty());
    let same = op
        .get("/v1/reviews?state=open&plan_id=rq")
        .await
        .expect(200, "inbox of rq")
        .body;
    assert_eq!(same, mine, "the CLI prints the server's JSON");
    let (code, table, _) = cli(&["reviews", "list", "--plan", "rq"], &base, Some(&alice));
    assert_eq!(code, 0);
    assert!(
        table.contains("coverage 0.5")
            && table.contains("cairn reviews approve rq draft --attempt 1"),
        "{table}"
    );
    op.get("/v1/reviews?state=maybe")
        .await
        .expect(400, "unknown review state");

    // A decision on a stale attempt is refused: 409 over HTTP, exit 2 and the reason from the CLI.
    let stale = op
        .post(
            "/v1/plans/rq/interventions",
            json!({"type": "approve_step", "step_id": "draft", "attempt": 7}),
        )
        .await
        .expect(409, "stale attempt");
    assert_eq!(stale.body["error"]["intervention"]["status"], "failed");
    let (code, _, err) = cli(
        &["reviews", "approve", "rq", "draft", "--attempt", "7"],
        &base,
        Some(&alice),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("refused"), "{err}");
    // Rejecting without a reason is refused before anything is sent.
    let (code, _, err) = cli(
        &["reviews", "reject", "rq", "draft", "--reason", " "],
        &base,
        Some(&alice),
    );
    assert_eq!(code, 2, "{err}");

    // Quorum 2: alice approves (a vote, the review stays open), her second vote is refused,
    // bob's approval closes it and the plan goes on by itself.
    let v = reviews_json(
        &base,
        &alice,
        &[
            "approve",
            "rq",
            "draft",
            "--attempt",
            "1",
            "--reason",
            "fine",
        ],
    );
    assert_eq!(v["status"], "applied", "{v}");
    assert_eq!(v["user"], "alice");
    let still = op.plan("rq").await;
    assert_eq!(step_status(&still, "draft"), "awaiting_review", "{still}");
    let (code, _, err) = cli(
        &["reviews", "approve", "rq", "draft", "--attempt", "1"],
        &base,
        Some(&alice),
    );
    assert_eq!(code, 2, "a second vote by the same user is refused: {err}");
    let v = reviews_json(&base, &bob, &["approve", "rq", "draft", "--attempt", "1"]);
    assert_eq!(v["user"], "bob", "{v}");
    let done = op.wait_state("rq", "completed").await;
    assert_eq!(step_status(&done, "publish"), "completed");
    // A decision on the closed review is refused too.
    let (code, _, err) = cli(
        &[
            "reviews",
            "reject",
            "rq",
            "draft",
            "--attempt",
            "1",
            "--reason",
            "late",
        ],
        &base,
        Some(&bob),
    );
    assert_eq!(code, 2, "{err}");
    let closed = reviews_json(
        &base,
        &alice,
        &["list", "--state", "closed", "--plan", "rq"],
    );
    let r = &closed["items"][0];
    assert_eq!(r["outcome"], "approved", "{closed}");
    let voters: Vec<&str> = r["votes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["user"].as_str().unwrap())
        .collect();
    assert_eq!(voters, ["alice", "bob"]);
    // Every vote and every refusal is in the audit trail.
    let audit = op
        .get("/v1/plans/rq/interventions?limit=100")
        .await
        .expect(200, "audit")
        .body;
    let kinds: Vec<(String, String, String)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "approve_step" || i["type"] == "reject_step")
        .map(|i| {
            (
                i["type"].as_str().unwrap().to_owned(),
                i["user"].as_str().unwrap().to_owned(),
                i["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let applied = kinds.iter().filter(|k| k.2 == "applied").count();
    let refused = kinds.iter().filter(|k| k.2 == "failed").count();
    assert_eq!((applied, refused), (2, 4), "{kinds:?}");

    // The other plan: rejected with --retry, the writer runs again with the note.
    let v = reviews_json(
        &base,
        &bob,
        &["reject", "other", "x", "--reason", "cover more", "--retry"],
    );
    assert_eq!(v["status"], "applied", "{v}");
    let again = op
        .wait_for("other", "a second attempt held", |p| {
            p["state"] == "paused"
                && p["steps"][0]["attempts"] == 2
                && step_status(p, "x") == "awaiting_review"
        })
        .await;
    assert_eq!(again["pause_reason"], "review_required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_an_open_review_open_and_an_acknowledged_approval() {
    let (_dir, db, mut server, alice, _bob) = review_world();
    let api = Api::new(&server.base);
    let op = Auth(&api, Some(&alice));
    op.register(plan_doc(
        "k9",
        vec![gated_step("a", 2, json!({})), gated_step("b", 2, json!({}))],
    ))
    .await;
    op.post_empty("/v1/plans/k9/start")
        .await
        .expect(200, "start");
    op.wait_for("k9", "a held", |p| step_status(p, "a") == "awaiting_review")
        .await;

    // kill -9 while the review is open: after a restart it is still open, still decidable.
    server.kill9();
    let config = examples_config();
    let server2 = Server::start(&db, &["--config", &config]);
    let api = Api::new(&server2.base);
    let op = Auth(&api, Some(&alice));
    let inbox = op
        .get("/v1/reviews?state=open&plan_id=k9")
        .await
        .expect(200, "inbox after restart")
        .body;
    assert_eq!(inbox["items"].as_array().unwrap().len(), 1, "{inbox}");
    assert_eq!(inbox["items"][0]["step_id"], "a");
    let p = op.plan("k9").await;
    assert_eq!(step_status(&p, "a"), "awaiting_review", "{p}");

    // Approve, and kill -9 right after the answer: the approval is kept.
    op.post(
        "/v1/plans/k9/interventions",
        json!({"type": "approve_step", "step_id": "a", "attempt": 1}),
    )
    .await
    .expect(201, "approve");
    let mut server2 = server2;
    server2.kill9();
    let server3 = Server::start(&db, &["--config", &config]);
    let api = Api::new(&server3.base);
    let op = Auth(&api, Some(&alice));
    let p = op.plan("k9").await;
    assert_eq!(step_status(&p, "a"), "completed", "{p}");
    let closed = op
        .get("/v1/reviews?state=closed&plan_id=k9")
        .await
        .expect(200, "closed reviews")
        .body;
    assert_eq!(closed["items"][0]["outcome"], "approved", "{closed}");
    // The plan went on: b is held in turn (or already was), and its review is in the inbox.
    op.wait_for("k9", "b held", |p| step_status(p, "b") == "awaiting_review")
        .await;
    let open = op
        .get("/v1/reviews?state=open&plan_id=k9")
        .await
        .expect(200, "inbox")
        .body;
    assert_eq!(open["items"][0]["step_id"], "b", "{open}");
    drop(server3);
}

/// `cairn nodes`: over --server the serving node, marked, with the id and address given to
/// `cairn serve`; on the SQLite file itself, the process that drives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairn_nodes_lists_the_serving_node() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let server = Server::start(&db, &["--node-id", "node-one", "--lease-ms", "2000"]);
    let admin = server.admin.clone().expect("an admin token");
    let viewer = make_token(&db, "v", "viewer");

    let run = remote(&["nodes", "--json"], &server.base, Some(&viewer)).expect(0, "nodes");
    let v = run.json();
    let nodes = v["nodes"].as_array().expect("a node list");
    assert_eq!(nodes.len(), 1, "{v}");
    assert_eq!(nodes[0]["node_id"], "node-one");
    assert_eq!(nodes[0]["self"], true);
    assert_eq!(nodes[0]["alive"], true);
    assert_eq!(nodes[0]["address"], server.base.as_str());

    let run = remote(&["nodes"], &server.base, Some(&admin)).expect(0, "nodes table");
    assert!(run.stdout.contains("node-one *"), "{}", run.stdout);
    assert!(run.stdout.contains("alive"), "{}", run.stdout);
    assert!(run.stdout.contains(&server.base), "{}", run.stdout);

    // No token: refused with the way to get one.
    let run = remote(&["nodes"], &server.base, None).expect(2, "nodes without a token");
    assert!(run.stderr.contains("CAIRN_TOKEN"), "{}", run.stderr);

    // The file itself: its one node is the serving process.
    let run = local(&["nodes"], &db).expect(0, "nodes on the file");
    assert!(run.stderr.contains("cairn serve"), "{}", run.stderr);
    assert!(run.stderr.contains(&server.base), "{}", run.stderr);
}

/// `cairn serve`'s cluster flags are checked before anything is opened or bound.
#[test]
fn serve_refuses_bad_cluster_flags() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    for (args, needle) in [
        (&["--node-id", "a b"][..], "--node-id"),
        (&["--node-id", ""][..], "--node-id"),
        (&["--lease-ms", "10"][..], "--lease-ms"),
        (&["--advertise", "ftp://example"][..], "--advertise"),
        (
            &["--advertise", "http://127.0.0.1:1/path"][..],
            "--advertise",
        ),
    ] {
        let mut shown = vec!["serve", "--bind", "127.0.0.1:0", "--db", "…"];
        shown.extend(args);
        let run = Run::of(
            cairn_command(&["serve", "--bind", "127.0.0.1:0", "--db"])
                .arg(&db)
                .args(args),
            &shown,
        )
        .expect(2, "a bad flag");
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
    }
    assert!(!db.exists(), "nothing was created");
}
