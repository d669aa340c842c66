//! Rollback over HTTP through the real router and the Rust client, on the store the suite runs
//! on (SQLite, or PostgreSQL with `CAIRN_TEST_STORE=postgres`): `POST /v1/plans/{id}/rollback`
//! and its dry run, `cancel` with `rollback` while a step runs, the rollback and each
//! compensation in the state, snapshot and step answers, and the refusals.

use cairn_client::{Client, ClientError};
use cairn_core::rollback::{CompensationStatus, RollbackStatus};
use cairn_core::PlanStatus;
use cairn_server::{Role, ServerOptions};
use serde_json::{json, Value};

use crate::common::{request, within, TestServer};

async fn server() -> (TestServer, Client, String) {
    let s = TestServer::start(ServerOptions::default()).await;
    let token = s.token("op", Role::Operator).await;
    let client = Client::new(&s.base(), Some(token.clone())).unwrap();
    (s, client, token)
}

fn refusal(e: ClientError) -> (u16, String, String) {
    match e {
        ClientError::Api {
            status,
            code,
            message,
            ..
        } => (status, code, message),
        other => panic!("not an API refusal: {other:?}"),
    }
}

/// A step of `agent` whose compensation echoes what it was given and `this.output`.
fn step(id: &str, agent: &str, params: Value) -> Value {
    json!({"step_id": id, "action": format!("do_{id}"), "agent_type": agent, "params": params,
           "compensate": {"action": format!("undo_{id}"), "agent_type": "builtin.echo",
                          "params": {"undo": id, "this": "{{ this.output }}"}}})
}

#[tokio::test]
async fn a_failed_plan_is_rolled_back_once_newest_first_after_a_dry_run() {
    let (s, client, _) = server().await;
    client
        .register(&json!({
            "plan_id": "rb-1",
            "steps": [
                step("a", "builtin.echo", json!({"n": 1})),
                step("b", "builtin.echo", json!({"n": 2})),
                {"step_id": "c", "action": "x", "agent_type": "builtin.fail", "params": {"retryable": false}}
            ]
        }))
        .await
        .unwrap();
    // Not failed yet (idle): refused, naming the state.
    let (status, code, message) = refusal(client.rollback("rb-1", true, None).await.unwrap_err());
    assert_eq!((status, code.as_str()), (409, "conflict"), "{message}");
    assert!(
        message.contains("only a failed or cancelled plan"),
        "{message}"
    );
    client.start("rb-1", None).await.unwrap();
    within("the plan to fail", s.engine.wait_settled("rb-1"))
        .await
        .unwrap();
    // The plan failed without rolling back (no `on_failure: rollback`): a dry run lists b, a.
    let dry = client.rollback("rb-1", true, None).await.unwrap();
    assert!(dry.dry_run);
    let order: Vec<&str> = dry
        .compensations
        .iter()
        .map(|c| c.step_id.as_str())
        .collect();
    assert_eq!(order, ["b", "a"]);
    assert_eq!(dry.compensations[0].action, "undo_b");
    assert_eq!(dry.plan.state, PlanStatus::Failed);
    assert!(client.plan("rb-1").await.unwrap().rollback.is_none());
    // The rollback itself.
    let started = client
        .rollback("rb-1", false, Some("undo it".into()))
        .await
        .unwrap();
    assert!(!started.dry_run);
    assert_eq!(started.compensations.len(), 2);
    let state = within("the rollback to end", s.engine.wait_settled("rb-1"))
        .await
        .unwrap();
    assert_eq!(state.status, PlanStatus::Failed);
    let view = client.plan("rb-1").await.unwrap();
    let r = view.rollback.clone().unwrap();
    assert_eq!(r.status, RollbackStatus::Completed);
    assert_eq!(r.done, ["b", "a"]);
    let b = view.steps[1].compensation.clone().unwrap();
    assert_eq!(b.status, CompensationStatus::Completed);
    assert_eq!(b.attempts, 1);
    assert_eq!(b.output, Some(json!({"undo": "b", "this": {"n": 2}})));
    assert!(view.steps[2].compensation.is_none());
    let snap = client.snapshot("rb-1").await.unwrap();
    assert_eq!(snap.rollback.unwrap().status, RollbackStatus::Completed);
    assert_eq!(
        snap.steps[0].compensation.as_ref().unwrap().status,
        CompensationStatus::Completed
    );
    let detail = client.step("rb-1", "a").await.unwrap();
    assert_eq!(
        detail.compensation.unwrap().output,
        Some(json!({"undo": "a", "this": {"n": 1}}))
    );
    // Once is all: again (dry run or not) is refused, naming why.
    for dry_run in [true, false] {
        let (status, code, message) =
            refusal(client.rollback("rb-1", dry_run, None).await.unwrap_err());
        assert_eq!((status, code.as_str()), (409, "conflict"));
        assert!(message.contains("already been rolled back"), "{message}");
    }
}

#[tokio::test]
async fn cancel_with_rollback_waits_for_the_running_step_and_compensates_it_with_a_null_output() {
    let (s, client, token) = server().await;
    client
        .register(&json!({
            "plan_id": "rb-2",
            "steps": [
                step("a", "builtin.echo", json!({"n": 1})),
                step("b", "builtin.sleep", json!({"ms": 600000})),
                step("c", "builtin.echo", json!({}))
            ]
        }))
        .await
        .unwrap();
    client.start("rb-2", None).await.unwrap();
    within("b to run", async {
        loop {
            let v = client.plan("rb-2").await.unwrap();
            if v.running_steps == ["b"] {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let http = reqwest::Client::new();
    // dry_run without rollback is refused; with it, b (running) comes first.
    let (status, body) = request(
        &http,
        reqwest::Method::POST,
        &format!("{}/v1/plans/rb-2/cancel", s.base()),
        Some(&token),
        Some(&json!({"dry_run": true})),
    )
    .await;
    assert_eq!(status.as_u16(), 422, "{body}");
    let dry = client
        .cancel_and_rollback("rb-2", true, None)
        .await
        .unwrap();
    let order: Vec<&str> = dry
        .compensations
        .iter()
        .map(|c| c.step_id.as_str())
        .collect();
    assert_eq!(order, ["b", "a"]);
    assert_eq!(dry.plan.state, PlanStatus::Running);
    let answer = client
        .cancel_and_rollback("rb-2", false, Some("called off".into()))
        .await
        .unwrap();
    assert_eq!(answer.compensations.len(), 2);
    let state = within("the rollback to end", s.engine.wait_settled("rb-2"))
        .await
        .unwrap();
    assert_eq!(state.status, PlanStatus::Cancelled);
    let view = client.plan("rb-2").await.unwrap();
    let r = view.rollback.clone().unwrap();
    assert_eq!(r.status, RollbackStatus::Completed);
    assert_eq!(r.done, ["b", "a"]);
    // b's attempt was stopped: its outcome is unknown, so its compensation saw null.
    assert_eq!(
        view.steps[1].compensation.clone().unwrap().output,
        Some(json!({"undo": "b", "this": null}))
    );
    assert_eq!(
        view.steps[1].status,
        cairn_core::StepStatus::Cancelled,
        "{view:?}"
    );
    assert_eq!(view.steps[2].status, cairn_core::StepStatus::Cancelled);
    // The stopped attempt ended (interrupted by the rollback) before b's compensation started.
    let events = client.events("rb-2", 0, Some(1000)).await.unwrap().items;
    let pos = |t: &str, step: Option<&str>| {
        events
            .iter()
            .position(|e| {
                e.kind.type_name() == t
                    && step.is_none_or(|s| {
                        serde_json::to_value(&e.kind).unwrap()["data"]["step_id"] == s
                    })
            })
            .unwrap_or_else(|| panic!("no {t}"))
    };
    assert!(pos("rollback_started", None) < pos("step_interrupted", Some("b")));
    assert!(pos("step_interrupted", Some("b")) < pos("compensation_started", Some("b")));
    // A cancelled plan rolled back cannot be cancelled or rolled back again.
    let (status, _, _) = refusal(
        client
            .cancel_and_rollback("rb-2", false, None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 409);
}
