//! Rollback end to end with the real binary: `cairn serve` with a `command` agent (`ledger`, a
//! small Python program written by the test) that appends a line to a file each time it starts
//! and each time it ends, so the test counts the invocations the agent really saw. A step or a
//! compensation holds on a latch file when its params say `hold: NAME`, and fails on purpose with
//! `fail: true`.
//!
//! - a failing plan rolls back, newest start first, over HTTP and the CLI (`examples/trip.yaml`
//!   with `cairn run`, on builtin agents);
//! - cancel with rollback while a step runs: the step is stopped, and its compensation starts
//!   once its attempt ended, with a null `this.output`;
//! - a compensation that fails for good stops the rollback; `POST …/rollback` continues it,
//!   `cairn steps skip --compensation` skips it and the rollback completes; a second rollback
//!   is refused (409);
//! - `kill -9` of the server mid-rollback: after a restart no completed compensation runs
//!   again and none is lost.
//!
//! Every wait is a bounded poll; steps are held open by latch files, never by sleeps.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::common::{example, local, remote, Api, Auth, Server};

const AGENT: &str = r#"
import json, os, sys, time
task = json.load(sys.stdin)
p = task.get("params") or {}
kind = task.get("kind", "step")
line = "%s %s %s %s" % (kind, task["step_id"], task["attempt"], task["idempotency_key"])
def note(what):
    with open(p["ledger"], "a") as f:
        f.write(what + " " + line + "\n")
note("start")
hold = p.get("hold")
if hold:
    path = os.path.join(os.path.dirname(p["ledger"]), hold)
    # A latch: the test creates the file to release the attempt (and kills the whole process
    # group otherwise); bounded so that a forgotten latch cannot outlive the test.
    for _ in range(6000):
        if os.path.exists(path):
            break
        time.sleep(0.01)
if p.get("fail"):
    sys.stderr.write("refused on purpose")
    sys.exit(1)
note("end")
print(json.dumps({"action": task["action"], "this": p.get("this")}))
"#;

/// A server whose `ledger` agent records its invocations in `dir/ledger`.
struct Saga {
    dir: TempDir,
    db: PathBuf,
    server: Server,
    api: Api,
}

impl Saga {
    fn new() -> Saga {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.py"), AGENT).unwrap();
        std::fs::write(
            dir.path().join("cairn.toml"),
            "[agents.ledger]\nexecutor = \"command\"\ncommand = [\"python3\", \"agent.py\"]\ntimeout_ms = 120000\n",
        )
        .unwrap();
        let db = dir.path().join("cairn.db");
        let server = Saga::serve(&db);
        let api = Api::new(&server.base);
        Saga {
            dir,
            db,
            server,
            api,
        }
    }

    fn serve(db: &Path) -> Server {
        let config = db.parent().unwrap().join("cairn.toml");
        Server::start(db, &["--no-auth", "--config", config.to_str().unwrap()])
    }

    fn kill9_and_restart(&mut self) {
        self.server.kill9();
        self.server = Saga::serve(&self.db);
        self.api = Api::new(&self.server.base);
    }

    fn http(&self) -> Auth<'_> {
        Auth(&self.api, None)
    }

    fn ledger_path(&self) -> String {
        self.dir.path().join("ledger").to_str().unwrap().to_owned()
    }

    /// The ledger's lines so far.
    fn ledger(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("ledger"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// How many lines start with `prefix` (`"end compensation b"`).
    fn count(&self, prefix: &str) -> usize {
        self.ledger()
            .iter()
            .filter(|l| l.starts_with(&format!("{prefix} ")))
            .count()
    }

    /// Waits (bounded) until the ledger has a line starting with `prefix`.
    async fn wait_ledger(&self, prefix: &str) {
        for _ in 0..1200 {
            if self.count(prefix) > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the ledger never had {prefix:?}: {:?}", self.ledger());
    }

    fn release(&self, latch: &str) {
        std::fs::write(self.dir.path().join(latch), b"go").unwrap();
    }

    /// A step of the ledger agent with a compensation, both with extra params.
    fn step(&self, id: &str, params: Value, comp: Value) -> Value {
        let mut p = json!({"ledger": self.ledger_path()});
        p.as_object_mut()
            .unwrap()
            .extend(params.as_object().unwrap().clone());
        let mut c = json!({"ledger": self.ledger_path(), "this": "{{ this.output }}"});
        c.as_object_mut()
            .unwrap()
            .extend(comp.as_object().unwrap().clone());
        json!({
            "step_id": id, "action": format!("do_{id}"), "agent_type": "ledger", "params": p,
            "compensate": {"action": format!("undo_{id}"), "agent_type": "ledger", "params": c,
                           "retry": {"max_attempts": 2, "backoff_ms": 10}}
        })
    }

    async fn events_of(&self, id: &str) -> Vec<String> {
        self.http()
            .all_events(id)
            .await
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["type"].as_str().unwrap_or(""),
                    e["data"]["step_id"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    async fn rolled_back(&self, id: &str, status: &str) -> Value {
        self.http()
            .wait_for(id, &format!("rollback {status}"), |p| {
                p["rollback"]["status"] == status && p["running_steps"] == json!([])
            })
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plan_rolls_back_newest_first_over_http_and_the_cli() {
    let s = Saga::new();
    let plan = json!({
        "plan_id": "trip1", "on_failure": "rollback",
        "steps": [
            s.step("flight", json!({}), json!({})),
            s.step("hotel", json!({}), json!({})),
            {"step_id": "car", "action": "rent", "agent_type": "ledger",
             "params": {"ledger": s.ledger_path(), "fail": true}, "retry": {"max_attempts": 1}},
        ]
    });
    s.http().register(plan).await;
    s.http()
        .post_empty("/v1/plans/trip1/start")
        .await
        .expect(200, "start");
    let p = s.rolled_back("trip1", "completed").await;
    assert_eq!(p["state"], "failed");
    assert_eq!(p["rollback"]["done"], json!(["hotel", "flight"]));
    assert_eq!(p["rollback"]["pending"], json!([]));
    let hotel = &p["steps"][1]["compensation"];
    assert_eq!(hotel["status"], "completed");
    assert_eq!(hotel["attempts"], 1);
    // The compensation read the booking it undoes as `this.output`.
    assert_eq!(hotel["output"]["this"]["action"], "do_hotel");
    assert!(p["steps"][2].get("compensation").is_none());
    // Each compensation ran once, hotel before flight.
    let comps: Vec<String> = s
        .ledger()
        .into_iter()
        .filter(|l| l.starts_with("end compensation"))
        .collect();
    assert_eq!(comps.len(), 2, "{comps:?}");
    assert!(
        comps[0].contains(" hotel 1 trip1/hotel/compensate/1"),
        "{comps:?}"
    );
    assert!(
        comps[1].contains(" flight 1 trip1/flight/compensate/1"),
        "{comps:?}"
    );
    // The snapshot and the step answer carry it too.
    let snap = s
        .http()
        .get("/v1/plans/trip1/snapshot")
        .await
        .expect(200, "snapshot")
        .body;
    assert_eq!(snap["rollback"]["status"], "completed");
    assert_eq!(snap["steps"][0]["compensation"]["status"], "completed");
    let step = s
        .http()
        .get("/v1/plans/trip1/steps/flight")
        .await
        .expect(200, "step")
        .body;
    assert_eq!(step["compensation"]["status"], "completed");
    // Rolled back once: a second rollback, and its dry run, are refused naming why.
    for body in [json!({}), json!({"dry_run": true})] {
        let r = s
            .http()
            .post("/v1/plans/trip1/rollback", body)
            .await
            .expect(409, "second rollback");
        assert!(r.text.contains("already been rolled back"), "{}", r.text);
    }
    let run = remote(&["plans", "rollback", "trip1"], &s.server.base, None).expect(2, "again");
    assert!(
        run.stderr.contains("already been rolled back"),
        "{}",
        run.stderr
    );
    // `cairn plans show` prints the rollback's progress, the same over the server and locally.
    let shown = remote(&["plans", "show", "trip1"], &s.server.base, None)
        .expect(0, "plans show")
        .stdout;
    assert!(
        shown.contains("rollback: completed  2 done, 0 pending"),
        "{shown}"
    );
    assert!(shown.contains("COMPENSATION"), "{shown}");
    // The counters (the metrics follower reads the log after the commit: a bounded poll).
    let wanted = [
        "cairn_compensations_total{outcome=\"started\"} 2",
        "cairn_compensations_total{outcome=\"completed\"} 2",
        "cairn_rollbacks_total{outcome=\"started\"} 1",
        "cairn_rollbacks_total{outcome=\"completed\"} 1",
    ];
    let mut metrics = String::new();
    for _ in 0..600 {
        metrics = s.http().get("/metrics").await.expect(200, "metrics").text;
        if wanted.iter().all(|l| metrics.contains(l)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for line in wanted {
        assert!(metrics.contains(line), "no {line:?} in:\n{metrics}");
    }
    // A plan that does not exist is not found; a bad body is refused.
    let r = s
        .http()
        .post("/v1/plans/nope/rollback", json!({}))
        .await
        .expect(404, "unknown plan");
    assert_eq!(r.code(), "plan_not_found");
    let r = s
        .http()
        .post("/v1/plans/trip1/rollback", json!({"dry_run": "yes"}))
        .await;
    assert!(r.status == 400 || r.status == 422, "{}", r.text);
}

#[test]
fn the_trip_example_rolls_back_with_cairn_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let trip = example("trip.yaml");
    let run = local(&["run", trip.to_str().unwrap()], &db).expect(1, "cairn run trip.yaml");
    assert!(
        run.stderr
            .contains("rolling back 2 steps, in this order: hotel, flight"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("rolled back: compensated hotel, flight"),
        "{}",
        run.stderr
    );
    let list = local(&["plans", "list", "--json"], &db)
        .expect(0, "list")
        .json();
    let id = list["items"][0]["plan_id"].as_str().unwrap().to_owned();
    let snap = local(&["plans", "snapshot", &id], &db)
        .expect(0, "snapshot")
        .json();
    assert_eq!(snap["rollback"]["done"], json!(["hotel", "flight"]));
    assert_eq!(
        snap["steps"][1]["compensation"]["output"],
        json!({"cancel": "HO-LIS", "nights": 2})
    );
    // Locally too, a plan rolled back once is refused.
    let again = local(&["plans", "rollback", &id, "--dry-run"], &db).expect(2, "again");
    assert!(
        again.stderr.contains("already been rolled back"),
        "{}",
        again.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_rollback_stops_the_running_step_and_compensates_it_once_it_ended() {
    let s = Saga::new();
    let plan = json!({
        "plan_id": "c1",
        "steps": [
            s.step("a", json!({}), json!({})),
            s.step("b", json!({"hold": "never"}), json!({})),
            s.step("c", json!({}), json!({})),
        ]
    });
    s.http().register(plan).await;
    s.http()
        .post_empty("/v1/plans/c1/start")
        .await
        .expect(200, "start");
    s.wait_ledger("start step b").await;
    // The dry run lists b (in flight) then a, and changes nothing.
    let dry = remote(
        &["plans", "cancel", "c1", "--rollback", "--dry-run", "--json"],
        &s.server.base,
        None,
    )
    .expect(0, "dry run")
    .json();
    assert_eq!(dry["dry_run"], true);
    let order: Vec<&str> = dry["compensations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["b", "a"]);
    assert_eq!(dry["compensations"][0]["action"], "undo_b");
    assert_eq!(s.http().plan("c1").await["state"], "running");
    assert!(s.http().plan("c1").await.get("rollback").is_none());
    let run = remote(
        &[
            "plans",
            "cancel",
            "c1",
            "--rollback",
            "--reason",
            "trip called off",
        ],
        &s.server.base,
        None,
    )
    .expect(0, "cancel --rollback");
    assert!(
        run.stdout
            .contains("rollback of c1 runs 2 compensations, in this order:"),
        "{}",
        run.stdout
    );
    let p = s.rolled_back("c1", "completed").await;
    assert_eq!(p["state"], "cancelled");
    assert_eq!(p["rollback"]["done"], json!(["b", "a"]));
    // b's compensation saw a null output; a's saw a's.
    assert_eq!(p["steps"][1]["compensation"]["output"]["this"], Value::Null);
    assert_eq!(
        p["steps"][0]["compensation"]["output"]["this"]["action"],
        "do_a"
    );
    // b was cancelled, never finished, and its compensation started only after its attempt
    // ended (recorded interrupted by the rollback).
    assert_eq!(p["steps"][1]["status"], "cancelled");
    assert_eq!(p["steps"][2]["status"], "cancelled");
    assert_eq!(s.count("end step b"), 0);
    assert_eq!(s.count("start step c"), 0);
    let events = s.events_of("c1").await;
    let ended = events
        .iter()
        .position(|e| e == "step_interrupted b")
        .unwrap_or_else(|| panic!("{events:?}"));
    let comp = events
        .iter()
        .position(|e| e == "compensation_started b")
        .unwrap_or_else(|| panic!("{events:?}"));
    let started = events
        .iter()
        .position(|e| e == "rollback_started ")
        .unwrap();
    assert!(started < ended && ended < comp, "{events:?}");
    assert_eq!(s.count("end compensation b"), 1);
    assert_eq!(s.count("end compensation a"), 1);
    // Cancelling again, with or without rollback, is refused.
    let r = s
        .http()
        .post("/v1/plans/c1/cancel", json!({"rollback": true}))
        .await
        .expect(409, "cancel again");
    assert_eq!(r.code(), "conflict");
    // dry_run needs rollback.
    s.http()
        .post("/v1/plans/c1/cancel", json!({"dry_run": true}))
        .await
        .expect(422, "dry_run alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_compensation_stops_the_rollback_which_continues_when_asked_or_skipped() {
    let s = Saga::new();
    let plan = json!({
        "plan_id": "f1", "on_failure": "rollback",
        "steps": [
            s.step("a", json!({}), json!({})),
            s.step("b", json!({}), json!({"fail": true})),
            {"step_id": "c", "action": "x", "agent_type": "ledger",
             "params": {"ledger": s.ledger_path(), "fail": true}, "retry": {"max_attempts": 1}},
        ]
    });
    s.http().register(plan).await;
    s.http()
        .post_empty("/v1/plans/f1/start")
        .await
        .expect(200, "start");
    let p = s.rolled_back("f1", "failed").await;
    assert_eq!(p["state"], "failed");
    assert_eq!(p["rollback"]["pending"], json!(["b", "a"]));
    assert_eq!(p["steps"][1]["compensation"]["status"], "failed");
    assert_eq!(p["steps"][1]["compensation"]["attempts"], 2);
    assert_eq!(s.count("start compensation b"), 2);
    assert_eq!(s.count("start compensation a"), 0);
    // The dry run lists what continuing would run.
    let dry = remote(
        &["plans", "rollback", "f1", "--dry-run"],
        &s.server.base,
        None,
    )
    .expect(0, "dry run");
    assert!(
        dry.stdout
            .contains("would run 2 compensations, in this order:"),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("1. b"), "{}", dry.stdout);
    // `POST …/rollback` continues from b: it fails twice more and stops again.
    let r = s
        .http()
        .post("/v1/plans/f1/rollback", json!({"reason": "try b again"}))
        .await
        .expect(200, "continue");
    assert_eq!(r.body["dry_run"], false);
    assert_eq!(r.body["compensations"][0]["step_id"], "b");
    let p = s
        .http()
        .wait_for("f1", "the second stop", |p| {
            p["rollback"]["status"] == "failed" && p["steps"][1]["compensation"]["attempts"] == 4
        })
        .await;
    assert_eq!(p["state"], "failed");
    // Skipping b's compensation continues the rollback with a, which completes it.
    remote(
        &[
            "steps",
            "skip",
            "f1",
            "b",
            "--compensation",
            "--reason",
            "undone by hand",
        ],
        &s.server.base,
        None,
    )
    .expect(0, "skip --compensation");
    let p = s.rolled_back("f1", "completed").await;
    assert_eq!(p["state"], "failed");
    assert_eq!(p["steps"][1]["compensation"]["status"], "skipped");
    assert_eq!(p["rollback"]["done"], json!(["a"]));
    assert_eq!(s.count("end compensation a"), 1);
    assert_eq!(s.count("start compensation b"), 4);
    // Skipping a compensation that has not failed is refused.
    s.http()
        .post(
            "/v1/plans/f1/interventions",
            json!({"type": "skip_step", "step_id": "a", "compensation": true}),
        )
        .await
        .expect(409, "skip a completed compensation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_rollback_runs_no_compensation_twice_and_loses_none() {
    let mut s = Saga::new();
    let plan = json!({
        "plan_id": "k1", "on_failure": "rollback",
        "steps": [
            s.step("a", json!({}), json!({})),
            s.step("b", json!({}), json!({"hold": "release_b"})),
            s.step("c", json!({}), json!({})),
            {"step_id": "d", "action": "x", "agent_type": "ledger",
             "params": {"ledger": s.ledger_path(), "fail": true}, "retry": {"max_attempts": 1}},
        ]
    });
    s.http().register(plan).await;
    s.http()
        .post_empty("/v1/plans/k1/start")
        .await
        .expect(200, "start");
    // c's compensation completes; b's is held open: kill -9 now.
    s.wait_ledger("start compensation b").await;
    assert_eq!(s.count("end compensation c"), 1);
    s.kill9_and_restart();
    let p = s.http().plan("k1").await;
    assert_eq!(p["state"], "running");
    assert_eq!(p["rollback"]["status"], "running");
    assert_eq!(p["rollback"]["done"], json!(["c"]));
    s.release("release_b");
    let p = s.rolled_back("k1", "completed").await;
    assert_eq!(p["state"], "failed");
    assert_eq!(p["rollback"]["done"], json!(["c", "b", "a"]));
    // c ran once; b was sent again after the restart with the same idempotency key and ended
    // once it was released; a ran once.
    assert_eq!(s.count("start compensation c"), 1, "{:?}", s.ledger());
    assert_eq!(s.count("end compensation a"), 1, "{:?}", s.ledger());
    assert_eq!(s.count("start compensation a"), 1, "{:?}", s.ledger());
    assert!(s.count("end compensation b") >= 1, "{:?}", s.ledger());
    let b_keys: Vec<String> = s
        .ledger()
        .into_iter()
        .filter(|l| l.starts_with("start compensation b"))
        .collect();
    assert!(
        b_keys.iter().all(|l| l.ends_with(" k1/b/compensate/1")),
        "{b_keys:?}"
    );
    let events = s.events_of("k1").await;
    let completed = |step: &str| {
        events
            .iter()
            .filter(|e| **e == format!("compensation_completed {step}"))
            .count()
    };
    assert_eq!((completed("a"), completed("b"), completed("c")), (1, 1, 1));
}
