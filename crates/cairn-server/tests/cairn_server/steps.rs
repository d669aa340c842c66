//! `GET /v1/plans/{id}/steps/{step}`, `GET /v1/plans/{id}/attempts` and `GET /v1/plans?id_contains=`:
//! what the dashboard's plan page and plans list read, through the real router and the Rust
//! client.

use cairn_client::{Client, ClientError};
use cairn_core::history::AttemptOutcome;
use cairn_server::{Role, ServerOptions};
use serde_json::json;

use crate::common::{within, TestServer};

async fn server() -> (TestServer, Client) {
    let s = TestServer::start(ServerOptions::default()).await;
    let token = s.token("op", Role::Operator).await;
    let client = Client::new(&s.base(), Some(token)).unwrap();
    (s, client)
}

fn api_status(e: ClientError) -> (u16, String) {
    match e {
        ClientError::Api { status, code, .. } => (status, code),
        other => panic!("not an API refusal: {other:?}"),
    }
}

#[tokio::test]
async fn a_step_answers_every_attempt_with_its_outcome_invocation_and_key() {
    let (s, client) = server().await;
    client
        .register(&json!({
            "plan_id": "detail-1",
            "steps": [
                {"step_id": "a", "action": "flaky", "agent_type": "builtin.fail",
                 "params": {"times": 1}, "retry": {"max_attempts": 2, "backoff_ms": 10}},
                {"step_id": "b", "action": "say", "agent_type": "builtin.echo",
                 "params": {"said": "{{ steps.a.output.times }}"}}
            ]
        }))
        .await
        .unwrap();
    client.start("detail-1", None).await.unwrap();
    within("the plan to settle", s.engine.wait_settled("detail-1"))
        .await
        .unwrap();

    let a = client.step("detail-1", "a").await.unwrap();
    assert_eq!((a.index, a.run), (0, 1));
    assert_eq!(a.idempotency_key, "detail-1/a/1");
    assert_eq!(a.attempts.len(), 2, "{a:?}");
    let (first, second) = (&a.attempts[0], &a.attempts[1]);
    assert_eq!(first.outcome, AttemptOutcome::Failed);
    assert!(
        first.error.is_some() && first.retry_at.is_some(),
        "{first:?}"
    );
    assert!(first.ended_at.is_some());
    assert_eq!(second.outcome, AttemptOutcome::Completed);
    assert_eq!(second.attempt, 2);
    assert_eq!(second.output, Some(json!({"times": 1})));
    let inv = second
        .invocation
        .as_ref()
        .expect("the invocation is recorded");
    assert_eq!(
        (inv.action.as_str(), inv.agent_type.as_str()),
        ("flaky", "builtin.fail")
    );

    // The invocation carries the params as rendered, the definition as written.
    let b = client.step("detail-1", "b").await.unwrap();
    assert_eq!(b.depends_on, ["a"]);
    assert_eq!(
        b.definition.params,
        json!({"said": "{{ steps.a.output.times }}"})
    );
    assert_eq!(
        b.attempts[0].invocation.as_ref().unwrap().params,
        json!({"said": 1})
    );

    let missing = client.step("detail-1", "nope").await.unwrap_err();
    assert_eq!(api_status(missing), (404, "step_not_found".into()));
    let bad = client.step("detail-1", "..").await.unwrap_err();
    assert_eq!(api_status(bad).0, 404);
    let no_plan = client.step("no-such-plan", "a").await.unwrap_err();
    assert_eq!(api_status(no_plan), (404, "plan_not_found".into()));
}

#[tokio::test]
async fn attempts_page_through_the_steps_in_plan_order() {
    let (s, client) = server().await;
    let steps: Vec<_> = (0..5)
        .map(|i| json!({"step_id": format!("s{i}"), "action": "x", "agent_type": "builtin.echo"}))
        .collect();
    client
        .register(&json!({"plan_id": "spans", "steps": steps}))
        .await
        .unwrap();
    client.start("spans", None).await.unwrap();
    within("the plan to settle", s.engine.wait_settled("spans"))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let page = client
            .attempts("spans", Some(2), cursor.as_deref())
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        for item in page.items {
            assert_eq!(item.attempts.len(), 1, "{item:?}");
            assert_eq!(item.attempts[0].outcome, AttemptOutcome::Completed);
            assert!(item.attempts[0].ended_at >= Some(item.attempts[0].started_at));
            seen.push((item.index, item.step_id));
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let want: Vec<(usize, String)> = (0..5).map(|i| (i, format!("s{i}"))).collect();
    assert_eq!(seen, want);

    // Named steps, in plan order whatever the order asked; unknown ids left out.
    let base = s.base();
    let token = s.token("viewer", Role::Viewer).await;
    let http = reqwest::Client::new();
    let named: serde_json::Value = http
        .get(format!("{base}/v1/plans/spans/attempts?steps=s3,nope,s1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = named["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["s1", "s3"]);
    assert_eq!(named["items"][0]["attempts"][0]["outcome"], "completed");
    let typed = client.attempts_of("spans", &["s4", "s0"]).await.unwrap();
    let ids: Vec<&str> = typed.iter().map(|i| i.step_id.as_str()).collect();
    assert_eq!(ids, ["s0", "s4"]);
    let both = http
        .get(format!("{base}/v1/plans/spans/attempts?steps=s1&limit=2"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), 400);

    // Past the end: an empty last page. A cursor that is not a position: 400.
    let past = client.attempts("spans", None, Some("99")).await.unwrap();
    assert!(past.items.is_empty() && past.next_cursor.is_none());
    let bad = client.attempts("spans", None, Some("x")).await.unwrap_err();
    assert_eq!(api_status(bad), (400, "bad_request".into()));
    let zero = client.attempts("spans", Some(0), None).await.unwrap_err();
    assert_eq!(api_status(zero).0, 400);
}

#[tokio::test]
async fn plans_are_searched_by_a_part_of_their_id() {
    let (_s, client) = server().await;
    for id in ["nightly-1", "daily-1", "nightly-2"] {
        client
            .register(&json!({"plan_id": id, "steps": [
                {"step_id": "a", "action": "x", "agent_type": "builtin.echo"}]}))
            .await
            .unwrap();
    }
    let found = client
        .search_plans("ightly", None, None, None)
        .await
        .unwrap();
    let ids: Vec<&str> = found.items.iter().map(|p| p.plan_id.as_str()).collect();
    assert_eq!(ids, ["nightly-2", "nightly-1"]);
    let idle = client
        .search_plans("-1", Some("idle"), Some(1), None)
        .await
        .unwrap();
    assert_eq!(idle.items.len(), 1);
    assert_eq!(idle.items[0].plan_id, "daily-1");
    let next = client
        .search_plans("-1", Some("idle"), Some(1), idle.next_cursor.as_deref())
        .await
        .unwrap();
    assert_eq!(next.items[0].plan_id, "nightly-1");
    let long = client
        .search_plans(&"x".repeat(129), None, None, None)
        .await
        .unwrap_err();
    assert_eq!(api_status(long), (400, "bad_request".into()));
}

#[tokio::test]
async fn interventions_end_attempts_with_what_they_did() {
    let (s, client) = server().await;
    client
        .register(&json!({
            "plan_id": "ended-1",
            "steps": [
                {"step_id": "hold", "action": "wait", "agent_type": "builtin.latch",
                 "params": {"name": "steps-ended-1-never-released"}},
                {"step_id": "judged", "action": "write", "agent_type": "builtin.echo",
                 "quality_gate": {"min_scores": {"quality": 0.5}}}
            ]
        }))
        .await
        .unwrap();
    client.start("ended-1", None).await.unwrap();
    within("the held step to run", async {
        while client
            .step("ended-1", "hold")
            .await
            .unwrap()
            .attempts
            .is_empty()
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let running = client.step("ended-1", "hold").await.unwrap();
    assert_eq!(running.attempts[0].outcome, AttemptOutcome::Running);
    assert_eq!(running.attempts[0].ended_at, None);

    // Completed by hand while it runs: the attempt ends so, with the given output.
    client
        .intervene(
            "ended-1",
            &json!({"type": "complete_step", "step_id": "hold", "output": {"by": "hand"},
                    "reason": "done elsewhere"}),
        )
        .await
        .unwrap();
    let held = client.step("ended-1", "hold").await.unwrap();
    assert_eq!(held.attempts.len(), 1);
    assert_eq!(held.attempts[0].outcome, AttemptOutcome::CompletedByHand);
    assert!(held.attempts[0].ended_at.is_some());
    assert_eq!(held.attempts[0].output, Some(json!({"by": "hand"})));

    // The gated step then fails its gate (no score) and waits for review; approved, its
    // attempt reads approved, with the failed criterion kept.
    within("the review", async {
        while client.step("ended-1", "judged").await.unwrap().status
            != cairn_core::StepStatus::AwaitingReview
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let judged = client.step("ended-1", "judged").await.unwrap();
    let a = &judged.attempts[0];
    assert_eq!(a.outcome, AttemptOutcome::AwaitingReview);
    assert_eq!(a.verdict, Some(cairn_core::gate::VerdictKind::Failed));
    assert_eq!(a.failed[0].criterion, "min_scores.quality");
    assert!(a.review_id.as_deref().is_some_and(|r| r.starts_with("rv-")));
    client
        .intervene(
            "ended-1",
            &json!({"type": "approve_step", "step_id": "judged", "reason": "fine"}),
        )
        .await
        .unwrap();
    let approved = client.step("ended-1", "judged").await.unwrap();
    assert_eq!(approved.attempts[0].outcome, AttemptOutcome::Approved);
    assert_eq!(approved.status, cairn_core::StepStatus::Completed);
    drop(s);
}
