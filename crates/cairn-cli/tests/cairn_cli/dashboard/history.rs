//! The History tab: the versions of a plan's definition with their causes, and the diff
//! between two chosen versions side by side, after interventions and a restore made over the API.

use serde_json::json;

use super::harness::{skipped, Browser, Serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_the_versions_and_shows_the_diff_of_two_chosen_ones() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    let echo = |id: &str, say: &str| json!({"step_id": id, "action": "echo", "agent_type": "builtin.echo", "params": {"say": say}});
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "hist", "steps": [echo("a", "one"), echo("b", "two")]}),
        )
        .await;
    let cp = serve
        .post("/v1/plans/hist/checkpoints", json!({"label": "start"}))
        .await;
    let cp = cp["checkpoint_id"].as_str().unwrap().to_owned();
    serve
        .post(
            "/v1/plans/hist/interventions",
            json!({"type": "modify_step", "step_id": "a", "patch": {"params": {"say": "uno"}},
                   "reason": "in Italian"}),
        )
        .await;
    serve
        .post(
            "/v1/plans/hist/interventions",
            json!({"type": "add_step", "step": echo("c", "three"), "after": "b"}),
        )
        .await;
    serve
        .post(
            &format!("/v1/plans/hist/checkpoints/{cp}/restore"),
            json!({}),
        )
        .await;

    let b = Browser::start("history").await;
    b.sign_in(&serve.base, serve.admin.as_deref().unwrap())
        .await;
    b.open(&serve.base, "/#/plans/hist/history").await;
    let rows = b
        .until_text("#history-body", "four versions", |t| t.contains("restore"))
        .await;
    for cause in [
        "registered",
        "modify_step",
        "add_step",
        "restore",
        "in Italian",
    ] {
        assert!(rows.contains(cause), "{cause} missing from {rows}");
    }
    // By default: the latest version (the restore) against the one before.
    let diff = b
        .until_text("#history-diff", "the default diff", |t| {
            t.contains("Version 3 → 4")
        })
        .await;
    assert!(diff.contains("step c (was 3)"), "{diff}");
    assert!(diff.contains("step a params.say"), "{diff}");
    // Choose 1 → 2: only the modification, before | after.
    b.js(
        "const f = document.querySelector('#history-from'); f.value = '1'; f.dispatchEvent(new Event('change'));\
         const t = document.querySelector('#history-to'); t.value = '2'; t.dispatchEvent(new Event('change'));",
        vec![],
    )
    .await;
    let diff = b
        .until_text("#history-diff", "the chosen diff", |t| {
            t.contains("Version 1 → 2")
        })
        .await;
    let cells = b
        .js(
            "return [...document.querySelectorAll('#history-changes tbody tr')].map(r => \
             [...r.cells].map(c => c.textContent.trim()));",
            vec![],
        )
        .await;
    assert_eq!(
        cells,
        json!([["~", "step a params.say", "\"one\"", "\"uno\""]]),
        "{diff}"
    );
    // 1 → 4: the restore brought version 1 back.
    b.js(
        "const t = document.querySelector('#history-to'); t.value = '4'; t.dispatchEvent(new Event('change'));",
        vec![],
    )
    .await;
    b.until_text("#history-diff", "no difference", |t| {
        t.contains("Version 1 → 4") && t.contains("the same")
    })
    .await;
    b.finish().await;
}
