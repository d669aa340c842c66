//! Rollback from the plan page: the Roll back button previews the compensations (a dry run),
//! then runs them; the page shows the rollback's progress and each compensation's status.

use serde_json::json;

use super::harness::{skipped, Browser, Serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roll_back_a_failed_plan_from_its_page_after_a_preview() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&["--no-auth"]);
    let undo = |id: &str| json!({"action": format!("undo_{id}"), "agent_type": "builtin.echo", "params": {"undo": id}});
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "rb-1", "steps": [
                {"step_id": "a", "action": "book", "agent_type": "builtin.echo", "params": {}, "compensate": undo("a")},
                {"step_id": "b", "action": "book", "agent_type": "builtin.echo", "params": {}, "compensate": undo("b")},
                {"step_id": "c", "action": "book", "agent_type": "builtin.fail", "params": {"retryable": false}}
            ]}),
        )
        .await;
    serve.post("/v1/plans/rb-1/start", json!({})).await;
    serve
        .until("/v1/plans/rb-1", "failed", |p| p["state"] == "failed")
        .await;
    let b = Browser::start("rollback").await;
    b.open(&serve.base, "/#/plans/rb-1").await;
    b.until_text("#plan-header h1", "failed shown", |t| t.contains("failed"))
        .await;
    // No rollback yet: no panel; the button previews the compensations, newest start first.
    b.click("#plan-rollback").await;
    let preview = b
        .until_text("#rollback-preview", "the preview", |t| t.contains("undo_a"))
        .await;
    let (pb, pa) = (
        preview.find("b: undo_b").unwrap(),
        preview.find("a: undo_a").unwrap(),
    );
    assert!(pb < pa, "b runs before a: {preview}");
    // The preview changed nothing.
    let p = serve.get("/v1/plans/rb-1").await;
    assert!(p.get("rollback").is_none(), "{p}");
    b.screenshot("preview").await;
    b.click("#rollback-dialog-confirm").await;
    let summary = b
        .until_text("#plan-rollback-panel", "the rollback completed", |t| {
            t.contains("completed") && t.contains("2 done · 0 pending")
        })
        .await;
    assert!(summary.contains("the plan ends failed"), "{summary}");
    let rows = b
        .js(
            "return [...document.querySelectorAll('#plan-rollback-panel tbody tr')].map(r => r.dataset.step + ':' + r.dataset.status)",
            vec![],
        )
        .await;
    assert_eq!(rows, json!(["b:completed", "a:completed"]));
    let p = serve.get("/v1/plans/rb-1").await;
    assert_eq!(p["rollback"]["status"], "completed");
    assert_eq!(p["rollback"]["done"], json!(["b", "a"]));
    // Rolled back once: the button says why it is disabled.
    let reason = b
        .until_text("#plan-controls", "the reason shown", |t| {
            t.contains("rolled back")
        })
        .await;
    assert!(reason.contains("Roll back"), "{reason}");
    b.screenshot("rolled_back").await;
    assert!(b.console_errors().await.is_empty());
    b.finish().await;
}
