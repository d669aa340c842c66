//! `/v1/tasks…` end to end: the real router on 127.0.0.1:0 over a temporary SQLite store, a
//! worker and an operator token, a plan whose agent type has no local executor.

use cairn_engine::Engine;
use cairn_server::{Role, ServerOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{post_raw, register_and_start, request, within, TestServer};

struct Server {
    base: String,
    worker: String,
    operator: String,
    http: reqwest::Client,
    engine: Engine,
    server: TestServer,
}

impl Server {
    async fn start(lease_ms: u64) -> Server {
        let s = TestServer::start(ServerOptions {
            worker_lease_ms: lease_ms,
            ..ServerOptions::default()
        })
        .await;
        let worker = s.token("w", Role::Worker).await;
        let operator = s.token("op", Role::Operator).await;
        Server {
            base: format!("{}/v1", s.base()),
            worker,
            operator,
            http: reqwest::Client::new(),
            engine: s.engine.clone(),
            server: s,
        }
    }

    async fn post(&self, token: Option<&str>, path: &str, body: Value) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.base);
        request(&self.http, Method::POST, &url, token, Some(&body)).await
    }

    async fn raw(&self, token: &str, path: &str, body: &'static str) -> StatusCode {
        let url = format!("{}{path}", self.base);
        post_raw(&self.http, &url, token, body).await.0
    }

    async fn plan_state(&self, id: &str) -> Value {
        let url = format!("{}/plans/{id}", self.base);
        request(&self.http, Method::GET, &url, Some(&self.operator), None)
            .await
            .1
    }

    /// Registers and starts a plan with one `research` step.
    async fn plan(&self, id: &str, retry: Value) {
        let mut step = json!({"step_id": "a", "action": "search", "agent_type": "research", "params": {"topic": "rust"}});
        if !retry.is_null() {
            step["retry"] = retry;
        }
        let plan = json!({"plan_id": id, "query": "q", "steps": [step]});
        register_and_start(&self.http, &self.server.base(), &self.operator, &plan).await;
    }

    async fn poll(&self, worker_id: &str) -> Value {
        let (s, task) = self
            .post(
                Some(&self.worker),
                "/tasks/poll",
                json!({"worker_id": worker_id, "agent_types": ["research"], "wait_ms": 30000}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{task}");
        task
    }

    /// The plan's state over HTTP once the engine has settled it.
    async fn settled(&self, id: &str) -> Value {
        within("a plan to settle", self.engine.wait_settled(id))
            .await
            .unwrap();
        self.plan_state(id).await
    }
}

#[tokio::test]
async fn a_worker_polls_heartbeats_and_completes_the_plan() {
    let srv = Server::start(30_000).await;
    // Nothing queued yet: 204 at once.
    let (s, _) = srv
        .post(
            Some(&srv.worker),
            "/tasks/poll",
            json!({"worker_id": "w1", "agent_types": ["research"], "wait_ms": 0}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    srv.plan("p1", Value::Null).await;
    let task = srv.poll("w1").await;
    for k in [
        "task_id",
        "plan_id",
        "step_id",
        "action",
        "agent_type",
        "params",
        "attempt",
        "idempotency_key",
        "lease_ms",
    ] {
        assert!(task.get(k).is_some(), "{k} missing from {task}");
    }
    assert_eq!(task["plan_id"], "p1");
    assert_eq!(task["params"], json!({"topic": "rust"}));
    assert_eq!(task["lease_ms"], 30000);
    let id = task["task_id"].as_str().unwrap();
    let (s, hb) = srv
        .post(
            Some(&srv.worker),
            &format!("/tasks/{id}/heartbeat"),
            json!({"worker_id": "w1"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(hb, json!({"lease_ms": 30000, "stop": false}));
    // Another worker may not touch it.
    let (s, e) = srv
        .post(
            Some(&srv.worker),
            &format!("/tasks/{id}/complete"),
            json!({"worker_id": "w2", "output": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    // Scores must be numbers.
    let (s, _) = srv
        .post(
            Some(&srv.worker),
            &format!("/tasks/{id}/complete"),
            json!({"worker_id": "w1", "output": 1, "scores": {"q": "high"}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = srv
        .post(
            Some(&srv.worker),
            &format!("/tasks/{id}/complete"),
            json!({"worker_id": "w1", "output": {"found": 3}, "scores": {"q": 0.9}}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let st = srv.settled("p1").await;
    assert_eq!(st["state"], "completed", "{st}");
    // A second report is about an unknown task.
    let (s, e) = srv
        .post(
            Some(&srv.worker),
            &format!("/tasks/{id}/complete"),
            json!({"worker_id": "w1", "output": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(e["error"]["code"], "task_not_found");
}

#[tokio::test]
async fn a_failure_report_fails_the_step() {
    let srv = Server::start(30_000).await;
    srv.plan("p2", Value::Null).await;
    let task = srv.poll("w").await;
    let id = task["task_id"].as_str().unwrap();
    let (s, _) = srv
        .post(
            Some(&srv.worker),
            &format!("/tasks/{id}/fail"),
            json!({"worker_id": "w", "error": "no results", "retryable": false}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let st = srv.settled("p2").await;
    assert_eq!(st["state"], "failed", "{st}");
}

#[tokio::test]
async fn roles_tokens_and_bad_bodies_are_refused() {
    let srv = Server::start(30_000).await;
    let body = json!({"worker_id": "w", "agent_types": ["research"], "wait_ms": 0});
    let (s, e) = srv
        .post(Some(&srv.operator), "/tasks/poll", body.clone())
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    let (s, _) = srv.post(None, "/tasks/poll", body.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = srv.post(Some("cairn_nope"), "/tasks/poll", body).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A worker may not touch plans.
    let (s, _) = srv
        .post(
            Some(&srv.worker),
            "/plans",
            json!({"plan_id": "x", "steps": []}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    assert_eq!(
        srv.raw(&srv.worker, "/tasks/poll", "{not json").await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        srv.raw(&srv.worker, "/tasks/poll", "").await,
        StatusCode::BAD_REQUEST
    );
    for bad in [
        json!({"agent_types": ["research"]}),
        json!({"worker_id": "w", "agent_types": []}),
        json!({"worker_id": "", "agent_types": ["research"]}),
        json!({"worker_id": "x".repeat(129), "agent_types": ["research"]}),
        json!({"worker_id": "w", "agent_types": [""]}),
        json!({"worker_id": "w", "agent_types": vec!["t"; 65]}),
        json!({"worker_id": "w", "agent_types": "research"}),
        json!({"worker_id": "w", "agent_types": ["research"], "wait_ms": -1}),
        json!({"worker_id": "w", "agent_types": ["research"], "extra": 1}),
        json!({"worker_id": "w", "agent_types": ["research"], "plan_ids": []}),
        json!({"worker_id": "w", "agent_types": ["research"], "plan_ids": [""]}),
        json!({"worker_id": "w", "agent_types": ["research"], "plan_ids": "p1"}),
        json!({"worker_id": "w", "agent_types": ["research"], "plan_ids": vec!["p"; 1001]}),
    ] {
        let (s, e) = srv
            .post(Some(&srv.worker), "/tasks/poll", bad.clone())
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad} → {e}");
        assert!(e["error"]["code"].is_string());
    }
    // Unknown tasks, then malformed reports (checked before the task is looked up).
    let long = format!("/tasks/{}/complete", "x".repeat(300));
    for (path, body, want) in [
        (
            "/tasks/task_nope/heartbeat",
            json!({"worker_id": "w"}),
            StatusCode::NOT_FOUND,
        ),
        (
            "/tasks/task_nope/fail",
            json!({"worker_id": "w", "error": "x"}),
            StatusCode::NOT_FOUND,
        ),
        (
            &long,
            json!({"worker_id": "w", "output": 1}),
            StatusCode::NOT_FOUND,
        ),
        (
            "/tasks/task_nope/fail",
            json!({"worker_id": "w", "error": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/tasks/task_nope/heartbeat",
            json!({"worker": "w"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (s, e) = srv.post(Some(&srv.worker), path, body.clone()).await;
        assert_eq!(s, want, "{path} {body} → {e}");
    }
}

#[tokio::test]
async fn an_expired_lease_redelivers_the_step() {
    let srv = Server::start(200).await;
    srv.plan("p3", json!({"max_attempts": 2, "backoff_ms": 1}))
        .await;
    let first = srv.poll("w1").await;
    assert_eq!(first["attempt"], 1);
    // w1 goes silent; the step comes back as attempt 2 with the same idempotency key.
    let second = srv.poll("w2").await;
    assert_eq!(second["attempt"], 2);
    assert_eq!(second["idempotency_key"], first["idempotency_key"]);
    let late = first["task_id"].as_str().unwrap();
    let (s, _) = srv
        .post(
            Some(&srv.worker),
            &format!("/tasks/{late}/heartbeat"),
            json!({"worker_id": "w1"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let id = second["task_id"].as_str().unwrap();
    let (s, _) = srv
        .post(
            Some(&srv.worker),
            &format!("/tasks/{id}/complete"),
            json!({"worker_id": "w2", "output": "ok"}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let st = srv.settled("p3").await;
    assert_eq!(st["state"], "completed", "{st}");
}

/// A report is answered only once its outcome is in the plan's log: the events read right after
/// the 204 hold it, for `complete` and for `fail`.
#[tokio::test]
async fn a_report_is_answered_once_its_outcome_is_durable() {
    let srv = Server::start(30_000).await;
    for (i, report) in ["complete", "fail"].into_iter().enumerate() {
        let plan = format!("durable{i}");
        srv.plan(&plan, Value::Null).await;
        let task = srv.poll("w").await;
        let id = task["task_id"].as_str().unwrap();
        let body = if report == "complete" {
            json!({"worker_id": "w", "output": {"n": 1}})
        } else {
            json!({"worker_id": "w", "error": "no", "retryable": false})
        };
        let (s, e) = srv
            .post(Some(&srv.worker), &format!("/tasks/{id}/{report}"), body)
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{e}");
        // Straight from the store, no waiting.
        let events = srv.engine.events(&plan, 0, 1_000).await.unwrap();
        let want = if report == "complete" {
            "step_completed"
        } else {
            "step_failed"
        };
        assert!(
            events.iter().any(|e| e.kind.type_name() == want),
            "{report}: no {want} in the log when the 204 came: {:?}",
            events
                .iter()
                .map(|e| e.kind.type_name())
                .collect::<Vec<_>>()
        );
    }
}

/// A task whose plan was deleted while a worker held it is unknown: `complete` answers 404
/// `task_not_found`, not a 204 for a result nobody records.
#[tokio::test]
async fn completing_a_task_of_a_deleted_plan_is_task_not_found() {
    let srv = Server::start(30_000).await;
    srv.plan("gone", Value::Null).await;
    let task = srv.poll("w").await;
    let id = task["task_id"].as_str().unwrap();
    let (s, e) = srv
        .post(Some(&srv.operator), "/plans/gone/pause", json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    // Deleting takes the admin role, which this harness's tokens lack: delete through the engine
    // the server serves.
    srv.engine.delete("gone").await.unwrap();
    let (s, e) = srv
        .post(
            Some(&srv.worker),
            &format!("/tasks/{id}/complete"),
            json!({"worker_id": "w", "output": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    assert_eq!(e["error"]["code"], "task_not_found", "{e}");
}

/// `GET /v1/workers` counts the tasks waiting for a worker by agent type, and lists a worker
/// once it has polled, with the task it holds.
#[tokio::test]
async fn workers_lists_the_queued_tasks_by_agent_type_and_the_workers_seen() {
    let srv = Server::start(30_000).await;
    let workers = || async {
        let resp = srv
            .http
            .get(format!("{}/workers", srv.base))
            .bearer_auth(&srv.operator)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json::<Value>().await.unwrap()
    };
    let v = workers().await;
    assert_eq!(v["items"], json!([]), "{v}");
    assert_eq!(v["queued"], json!([]), "{v}");
    srv.plan("wq", Value::Null).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let v = loop {
        let v = workers().await;
        if v["queued"] != json!([]) {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "never queued: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(v["queued"], json!([{"agent_type": "research", "tasks": 1}]));
    let task = srv.poll("w-1").await;
    let v = workers().await;
    assert_eq!(v["queued"], json!([]), "claimed: {v}");
    assert_eq!(v["items"][0]["worker_id"], "w-1");
    assert_eq!(v["items"][0]["agent_types"], json!(["research"]));
    assert_eq!(v["items"][0]["tasks"], json!([task["task_id"]]));
}

#[tokio::test]
async fn a_poll_naming_plans_takes_only_their_tasks() {
    let srv = Server::start(30_000).await;
    srv.plan("older", Value::Null).await;
    srv.plan("mine", Value::Null).await;
    let only = |ids: Value, wait_ms: u64| json!({"worker_id": "w1", "agent_types": ["research"], "plan_ids": ids, "wait_ms": wait_ms});
    // The oldest task of the agent type is `older`'s; a poll naming `mine` gets `mine`'s.
    let (s, task) = srv
        .post(
            Some(&srv.worker),
            "/tasks/poll",
            only(json!(["mine"]), 30_000),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{task}");
    assert_eq!(task["plan_id"], "mine");
    // Nothing more of `mine`: 204, and `older`'s task is still there for anyone.
    let (s, _) = srv
        .post(
            Some(&srv.worker),
            "/tasks/poll",
            only(json!(["mine", "absent"]), 0),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(srv.poll("w2").await["plan_id"], "older");
}
