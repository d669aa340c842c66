//! `GET /v1/plans/{id}/versions`, `/versions/{v}` and `/diff`: a plan's definition history
//! through the real router and the Rust client, and the errors for what does not exist.

use cairn_client::Client;
use cairn_server::{Role, ServerOptions};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{request, TestServer};

#[tokio::test]
async fn versions_definitions_and_diffs_after_interventions_and_a_restore() {
    let s = TestServer::start(ServerOptions::default()).await;
    let op = Client::new(&s.base(), Some(s.token("op", Role::Operator).await)).unwrap();
    let viewer_token = s.token("val", Role::Viewer).await;
    let viewer = Client::new(&s.base(), Some(viewer_token.clone())).unwrap();
    op.register(&json!({
        "plan_id": "hist-1",
        "steps": [
            {"step_id": "a", "action": "say", "agent_type": "builtin.echo", "params": {"q": "x"}},
            {"step_id": "b", "action": "say", "agent_type": "builtin.echo"}
        ]
    }))
    .await
    .unwrap();
    let cp = op.create_checkpoint("hist-1", None).await.unwrap();
    op.intervene(
        "hist-1",
        &json!({"type": "modify_step", "step_id": "a", "patch": {"params": {"q": "y"}}}),
    )
    .await
    .unwrap();
    op.intervene(
        "hist-1",
        &json!({"type": "add_step", "step": {"step_id": "c", "action": "say", "agent_type": "builtin.echo"}, "before": "a"}),
    )
    .await
    .unwrap();
    op.restore("hist-1", &cp.checkpoint_id, Some("undo".into()))
        .await
        .unwrap();

    // A viewer reads all of it.
    let list = viewer.plan_versions("hist-1").await.unwrap();
    assert_eq!(list.plan_id, "hist-1");
    let causes: Vec<(u64, &str, &str)> = list
        .versions
        .iter()
        .map(|v| (v.version, v.cause.kind.as_str(), v.user.as_str()))
        .collect();
    assert_eq!(
        causes,
        [
            (1, "registered", "op"),
            (2, "modify_step", "op"),
            (3, "add_step", "op"),
            (4, "restore", "op")
        ]
    );
    assert!(list.versions[1].cause.intervention_id.is_some());

    let v2 = viewer.plan_version("hist-1", 2).await.unwrap();
    assert_eq!(v2.version.version, 2);
    assert_eq!(v2.definition.steps[0].params, json!({"q": "y"}));

    let latest = viewer.plan_diff("hist-1", None, None).await.unwrap();
    assert_eq!((latest.from, latest.to), (3, 4));
    assert_eq!(latest.diff.removed[0].step_id, "c");
    assert_eq!(latest.diff.changed[0].fields[0].path, "params.q");
    let added = viewer.plan_diff("hist-1", Some(2), Some(3)).await.unwrap();
    assert_eq!(added.diff.added[0].step_id, "c");
    assert_eq!(added.diff.added[0].position, 0);

    // The wire form: field names as documented.
    let http = reqwest::Client::new();
    let base = format!("{}/v1/plans/hist-1", s.base());
    let get = |path: String| {
        let http = http.clone();
        let token = viewer_token.clone();
        async move { request(&http, Method::GET, &path, Some(&token), None).await }
    };
    let (status, body) = get(format!("{base}/versions")).await;
    assert_eq!(status, StatusCode::OK);
    let v = &body["versions"][1];
    assert_eq!(v["cause"]["type"], "modify_step");
    assert_eq!(v["cause"]["step_id"], "a");
    assert!(v["seq"].is_u64() && v["at"].is_string(), "{v}");
    let (status, body) = get(format!("{base}/diff?from=1&to=2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["diff"]["changed"][0]["fields"][0],
        json!({"path": "params.q", "before": "x", "after": "y"})
    );

    // What does not exist is a 404 with the error body; what is not a version, a 422.
    for (path, status, code) in [
        (format!("{base}/versions/9"), 404, "version_not_found"),
        (format!("{base}/diff?to=9"), 404, "version_not_found"),
        (format!("{base}/diff?from=7&to=1"), 404, "version_not_found"),
        (
            format!("{}/v1/plans/nope/versions", s.base()),
            404,
            "plan_not_found",
        ),
        (
            format!("{}/v1/plans/nope/diff", s.base()),
            404,
            "plan_not_found",
        ),
        (
            format!("{}/v1/plans/nope/versions/1", s.base()),
            404,
            "plan_not_found",
        ),
        (format!("{base}/versions/two"), 422, "invalid_request"),
        (format!("{base}/versions/0"), 422, "invalid_request"),
        (format!("{base}/diff?from=abc"), 422, "invalid_request"),
        (format!("{base}/diff?to=-1"), 422, "invalid_request"),
    ] {
        let (got, body) = get(path.clone()).await;
        assert_eq!(got.as_u16(), status, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }
    let (_, body) = get(format!("{base}/versions/9")).await;
    assert_eq!(
        body["error"]["message"],
        "plan hist-1 has no version 9 (its versions: 1-4)"
    );
    let (got, _) = request(&http, Method::GET, &format!("{base}/versions"), None, None).await;
    assert_eq!(got, StatusCode::UNAUTHORIZED);
}
