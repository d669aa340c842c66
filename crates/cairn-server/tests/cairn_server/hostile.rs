//! What a hostile or unlucky client does to the server, end to end: the real router on
//! 127.0.0.1:0 over a temporary SQLite store. Bursts of concurrent writes to ended, paused and
//! running plans (never a 5xx, a fork is whole or absent), and malformed requests (always the
//! JSON error).

use std::sync::Arc;
use std::time::Duration;

use cairn_engine::EngineOptions;
use cairn_server::{Role, ServerOptions};
use serde_json::{json, Value};

use crate::common::{post_raw, register_and_start, request, TestServer};

/// Every wait in these tests ends by this deadline.
const BOUND: Duration = Duration::from_secs(60);

struct Server {
    base: String,
    token: String,
    http: reqwest::Client,
    _server: TestServer,
}

impl Server {
    /// A server whose quiet plans are unloaded at once, so every burst races loads and unloads.
    async fn start() -> Server {
        let s = TestServer::start(ServerOptions {
            engine: EngineOptions {
                idle_unload_ms: 0,
                ..EngineOptions::default()
            },
            ..ServerOptions::default()
        })
        .await;
        let token = s.token("admin", Role::Admin).await;
        Server {
            base: s.base(),
            token,
            http: reqwest::Client::builder().timeout(BOUND).build().unwrap(),
            _server: s,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let (status, body) =
            request(&self.http, method, &url, Some(&self.token), body.as_ref()).await;
        (status.as_u16(), body)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Registers a plan with one step of `agent_type` and `params`.
    async fn plan(&self, id: &str, agent_type: &str, params: Value) {
        let (s, b) = self
            .post("/v1/plans", two_steps(id, agent_type, params))
            .await;
        assert_eq!(s, 201, "{b}");
    }

    /// Registers and starts a plan with one step of `agent_type` and `params`.
    async fn run(&self, id: &str, agent_type: &str, params: Value) {
        let plan = two_steps(id, agent_type, params);
        register_and_start(&self.http, &self.base, &self.token, &plan).await;
    }

    async fn wait_state(&self, id: &str, want: &str) {
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            let (_, v) = self.get(&format!("/v1/plans/{id}")).await;
            if v["state"] == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} never {want}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A plan whose step `a` runs `agent_type` with `params`, and `b` echoes after it.
fn two_steps(id: &str, agent_type: &str, params: Value) -> Value {
    json!({"plan_id": id, "query": "q", "steps": [
        {"step_id": "a", "action": "x", "agent_type": agent_type, "params": params},
        {"step_id": "b", "action": "y", "agent_type": "builtin.echo", "depends_on": ["a"]}
    ]})
}

/// Plans in every interesting state: cancelled, completed, paused, running, idle.
async fn plans_in_every_state(s: &Server) -> Vec<&'static str> {
    s.plan("cancelled", "builtin.echo", json!({})).await;
    assert_eq!(s.post("/v1/plans/cancelled/cancel", json!({})).await.0, 200);
    s.run("completed", "builtin.echo", json!({})).await;
    s.wait_state("completed", "completed").await;
    s.run("paused2", "builtin.sleep", json!({"ms": 600_000}))
        .await;
    let (st, b) = s
        .post("/v1/plans/paused2/pause", json!({"mode": "immediate"}))
        .await;
    assert_eq!(st, 200, "{b}");
    s.run("running", "builtin.sleep", json!({"ms": 600_000}))
        .await;
    s.wait_state("running", "running").await;
    s.plan("idle", "builtin.echo", json!({})).await;
    vec!["cancelled", "completed", "paused2", "running", "idle"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_ended_paused_and_running_plans_never_answer_5xx() {
    let s = Arc::new(Server::start().await);
    let plans = plans_in_every_state(&s).await;
    let mut checkpoints = Vec::new();
    for id in &plans {
        let (st, cp) = s
            .post(&format!("/v1/plans/{id}/checkpoints"), json!({}))
            .await;
        assert_eq!(st, 201, "{cp}");
        checkpoints.push(cp["checkpoint_id"].as_str().unwrap().to_owned());
    }
    for round in 0..2 {
        for (id, cp) in plans.iter().zip(&checkpoints) {
            // 300 requests at once: checkpoints, interventions (refused or applied) and forks.
            let mut tasks = Vec::new();
            for i in 0..300 {
                let s = s.clone();
                let (path, body, fork) = match i % 3 {
                    0 => (format!("/v1/plans/{id}/checkpoints"), json!({}), None),
                    1 => (
                        format!("/v1/plans/{id}/interventions"),
                        json!({"type": "modify_params", "step_id": "b", "params": {"i": i}}),
                        None,
                    ),
                    _ => {
                        let new_id = format!("{id}-fork-{round}-{i}");
                        (
                            format!("/v1/plans/{id}/checkpoints/{cp}/fork"),
                            json!({"new_plan_id": new_id}),
                            Some(new_id),
                        )
                    }
                };
                tasks.push(tokio::spawn(async move {
                    let (st, b) = s.post(&path, body).await;
                    (path, st, b, fork)
                }));
            }
            let mut forks = Vec::new();
            for t in tasks {
                let (path, st, b, fork) = tokio::time::timeout(BOUND, t).await.unwrap().unwrap();
                assert!(st < 500, "{path} answered {st}: {b}");
                if let Some(new_id) = fork {
                    forks.push((new_id, st));
                }
            }
            for (new_id, st) in forks {
                let (got, b) = s.get(&format!("/v1/plans/{new_id}")).await;
                if st == 201 {
                    assert_eq!(got, 200, "fork {new_id} answered 201 but is missing: {b}");
                } else {
                    assert_eq!(got, 404, "fork {new_id} answered {st} but exists: {b}");
                }
            }
        }
    }
    // Every fork that exists is recorded in its source's log.
    for id in &plans {
        let (st, ev) = s.get(&format!("/v1/plans/{id}/events?limit=1000")).await;
        assert_eq!(st, 200);
        let recorded = ev["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "plan_forked")
            .count();
        assert_eq!(
            recorded, 200,
            "{id}: {recorded} plan_forked events for 200 forks"
        );
    }
}

impl Server {
    /// POSTs `body` as-is with `Content-Type: application/json`.
    async fn raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let (status, v) = post_raw(&self.http, &url, &self.token, body).await;
        assert!(v.is_object(), "{path}: {status} is not the JSON error: {v}");
        (status.as_u16(), v)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_refused_by_name_and_change_nothing() {
    let s = Server::start().await;
    s.plan("p", "builtin.echo", json!({})).await;

    // A repeated key, at the top or nested, in every kind of body.
    for (path, body, key) in [
        (
            "/v1/plans",
            r#"{"plan_id":"dupA","plan_id":"dupB","query":"q","steps":[{"step_id":"a","action":"x","agent_type":"builtin.echo"}]}"#,
            "plan_id",
        ),
        (
            "/v1/plans",
            r#"{"plan_id":"dupC","query":"q","steps":[{"step_id":"a","step_id":"b","action":"x","agent_type":"builtin.echo"}]}"#,
            "step_id",
        ),
        (
            "/v1/plans",
            r#"{"plan_id":"dupD","query":"q","steps":[{"step_id":"a","action":"x","agent_type":"builtin.echo","params":{"k":1,"k":2}}]}"#,
            "k",
        ),
        (
            "/v1/plans/p/interventions",
            r#"{"type":"skip_step","type":"remove_step","step_id":"b"}"#,
            "type",
        ),
        (
            "/v1/plans/p/checkpoints",
            r#"{"label":"a","label":"b"}"#,
            "label",
        ),
        (
            "/v1/tokens",
            r#"{"user":"a","user":"b","role":"viewer"}"#,
            "user",
        ),
    ] {
        let (st, e) = s.raw(path, body).await;
        assert_eq!(st, 400, "{path} {body}: {e}");
        assert_eq!(e["error"]["code"], "bad_request", "{e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("repeats the key \"{key}\"")),
            "{path}: the message names {key}: {message}"
        );
    }
    for id in ["dupA", "dupB", "dupC", "dupD"] {
        assert_eq!(
            s.get(&format!("/v1/plans/{id}")).await.0,
            404,
            "{id} exists"
        );
    }

    // Blank is not "no body".
    for path in [
        "/v1/plans/p/checkpoints",
        "/v1/plans/p/start",
        "/v1/plans/p/cancel",
    ] {
        for blank in ["\n", "  \n\t"] {
            let (st, e) = s.raw(path, blank).await;
            assert_eq!(st, 400, "{path} {blank:?}: {e}");
            assert_eq!(e["error"]["code"], "bad_request", "{e}");
        }
    }

    // An unknown intervention type is a bad request, not a bad plan.
    let (st, e) = s
        .post(
            "/v1/plans/p/interventions",
            json!({"type": "nope", "step_id": "b"}),
        )
        .await;
    assert_eq!(st, 422, "{e}");
    assert_eq!(e["error"]["code"], "invalid_request", "{e}");

    // Too large: our words, not the framework's.
    let big = format!(
        "{{\"label\":\"{}\"}}",
        "x".repeat(cairn_server::MAX_BODY + 10)
    );
    let (st, e) = s.raw("/v1/plans/p/checkpoints", big).await;
    assert_eq!(st, 413, "{e}");
    assert_eq!(e["error"]["code"], "payload_too_large", "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&cairn_server::MAX_BODY.to_string()) && !message.contains("buffer"),
        "{message}"
    );

    // All-dot ids name path segments, not plans or steps.
    for (path, body) in [
        (
            "/v1/plans",
            json!({"plan_id": "..", "query": "q", "steps": [{"step_id": "a", "action": "x", "agent_type": "builtin.echo"}]}),
        ),
        (
            "/v1/plans",
            json!({"plan_id": "dots", "query": "q", "steps": [{"step_id": ".", "action": "x", "agent_type": "builtin.echo"}]}),
        ),
    ] {
        let (st, e) = s.post(path, body).await;
        assert_eq!(st, 422, "{e}");
    }
    let (st, cp) = s.post("/v1/plans/p/checkpoints", json!({})).await;
    assert_eq!(st, 201, "{cp}");
    let cid = cp["checkpoint_id"].as_str().unwrap();
    let (st, e) = s
        .post(
            &format!("/v1/plans/p/checkpoints/{cid}/fork"),
            json!({"new_plan_id": "."}),
        )
        .await;
    assert_eq!(st, 422, "{e}");
    assert_eq!(s.get("/v1/plans/dots").await.0, 404);

    // Nothing above changed the plan but the one checkpoint taken on purpose.
    let (_, v) = s.get("/v1/plans/p").await;
    assert_eq!(v["state"], "idle", "{v}");
    let (_, cps) = s.get("/v1/plans/p/checkpoints").await;
    assert_eq!(cps["items"].as_array().unwrap().len(), 1, "{cps}");
    let (_, events) = s.get("/v1/plans/p/events").await;
    let kinds: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["plan_registered", "checkpoint_created"], "{events}");
}

/// A server that admits no command answers every one with 429 `overloaded`, a `Retry-After`
/// header and the JSON error body, and changes nothing; reads still answer.
#[tokio::test]
async fn a_command_over_the_limit_is_answered_429_with_retry_after() {
    let s = TestServer::start(ServerOptions {
        engine: EngineOptions {
            max_queued_commands: 0,
            ..EngineOptions::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let token = s.token("admin", Role::Admin).await;
    let http = reqwest::Client::builder().timeout(BOUND).build().unwrap();
    let base = s.base();
    let plan = two_steps("full", "builtin.echo", json!({}));
    let resp = http
        .post(format!("{base}/v1/plans"))
        .bearer_auth(&token)
        .json(&plan)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let resp = http
        .post(format!("{base}/v1/plans/full/start"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert_eq!(body["error"]["retry_after_ms"], 1000, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("overloaded"), "{message}");
    // Nothing was changed, and the plan is still read.
    let (st, v) = request(
        &http,
        reqwest::Method::GET,
        &format!("{base}/v1/plans/full"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(st.as_u16(), 200, "{v}");
    assert_eq!(v["state"], "idle", "{v}");
    assert_eq!(s.engine.node_stats().overloaded_total, 1);
}

/// A flood of commands over HTTP against a small limit: every request is answered 200, 409
/// (the plan's state refused it) or 429 (refused before it reached the plan), never anything
/// else, and the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_commands_over_http_is_answered_or_refused() {
    const FLOOD: usize = 3_000;
    let s = TestServer::start(ServerOptions {
        engine: EngineOptions {
            max_queued_commands: 4,
            ..EngineOptions::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let token = s.token("admin", Role::Admin).await;
    let http = reqwest::Client::builder().timeout(BOUND).build().unwrap();
    let base = s.base();
    for i in 0..4 {
        let plan = two_steps(&format!("busy{i}"), "builtin.sleep", json!({"ms": 600_000}));
        register_and_start(&http, &base, &token, &plan).await;
    }
    let gate = Arc::new(tokio::sync::Semaphore::new(500));
    let mut tasks = Vec::new();
    for n in 0..FLOOD {
        let (http, token, gate) = (http.clone(), token.clone(), gate.clone());
        let verb = if n % 2 == 0 { "pause" } else { "resume" };
        let url = format!("{base}/v1/plans/busy{}/{verb}", n % 4);
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let resp = http
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({}))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            let status = resp.status().as_u16();
            let retry_after = resp.headers().contains_key("retry-after");
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, retry_after, body)
        }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for t in tasks {
        let (status, retry_after, body) = tokio::time::timeout(BOUND, t).await.unwrap().unwrap();
        match status {
            200 | 409 => {}
            429 => {
                assert!(retry_after, "a 429 without Retry-After: {body}");
                assert_eq!(body["error"]["code"], "overloaded", "{body}");
            }
            other => panic!("a command of the flood answered {other}: {body}"),
        }
        *counts.entry(status).or_insert(0usize) += 1;
    }
    let refused = counts.get(&429).copied().unwrap_or(0) as u64;
    assert_eq!(
        s.engine.node_stats().overloaded_total,
        refused,
        "{counts:?}"
    );
    assert_eq!(s.engine.node_stats().commands_queued, 0, "{counts:?}");
    // The server goes on: each plan is still read and cancelled.
    for i in 0..4 {
        let url = format!("{base}/v1/plans/busy{i}/cancel");
        let (st, v) = request(
            &http,
            reqwest::Method::POST,
            &url,
            Some(&token),
            Some(&json!({})),
        )
        .await;
        assert_eq!(st.as_u16(), 200, "{v}");
    }
}
