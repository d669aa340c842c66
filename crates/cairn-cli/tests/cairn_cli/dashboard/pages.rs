//! The dashboard's other pages: the review inbox, a plan's checkpoints, `/docs`, the workers
//! page and the cluster page, each clicked through in the browser and checked through the API.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::harness::{skipped, Browser, Serve, WAIT};

/// A `cairn.toml` (in its own folder) with the agent type `scorer`: a command that reports a
/// `coverage` of 0.5 for whatever it is given.
fn scorer_config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cairn.toml"),
        r#"[agents.scorer]
executor = "command"
command = ["sh", "-c", "cat >/dev/null; echo '{\"output\": {\"brief\": \"two of four points\"}, \"scores\": {\"coverage\": 0.5}}'"]
timeout_ms = 20000
"#,
    )
    .unwrap();
    dir
}

/// A `cairn serve` with the `scorer` agent type of [`scorer_config`] (keep the folder while it
/// runs).
fn serve_with_scorer() -> (tempfile::TempDir, Serve) {
    let cfg = scorer_config();
    let path = cfg.path().join("cairn.toml");
    let serve = Serve::start(&["--config", path.to_str().unwrap()]);
    (cfg, serve)
}

fn ids(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_a_review_from_the_inbox_then_the_plan_goes_on() {
    if skipped() {
        return;
    }
    let (_cfg, serve) = serve_with_scorer();
    // otto registers and starts the plan, so the gate keeps him from approving it himself.
    let otto = serve.token("otto", "operator").await;
    for (path, body) in [
        (
            "/v1/plans",
            json!({"plan_id": "gated", "query": "a brief that needs a person",
                   "steps": [
                       {"step_id": "draft", "action": "write", "agent_type": "scorer", "params": {},
                        "quality_gate": {"min_scores": {"coverage": 0.8}, "on_fail": "review",
                                         "review": {"prevent_self_review": true}}},
                       {"step_id": "publish", "action": "publish", "agent_type": "builtin.echo",
                        "params": {"brief": "{{ steps.draft.output.brief }}"}, "depends_on": ["draft"]}]}),
        ),
        ("/v1/plans/gated/start", json!({})),
    ] {
        let (status, v) = serve
            .call(reqwest::Method::POST, path, Some(&otto), Some(body))
            .await;
        assert!((200..300).contains(&status), "{path}: {status} {v}");
    }
    let inbox = serve
        .until("/v1/reviews?state=open", "the review opened", |v| {
            v["items"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    let review = inbox["items"][0].clone();
    let rid = review["review_id"].as_str().unwrap().to_owned();
    // A card's elements are named by plan and review id (a review id is unique within its plan).
    let el = format!("{}-{rid}", review["plan_id"].as_str().unwrap());
    assert_eq!(review["step_id"], "draft");
    let card = format!("#review-{el}");

    // A viewer sees the review and the decision disabled, with the reason.
    let viewer = serve.token("vera", "viewer").await;
    let b = Browser::start("review").await;
    b.sign_in(&serve.base, &viewer).await;
    b.open(&serve.base, "/#/reviews").await;
    let text = b
        .until_text(&card, "the review's card", |t| t.contains("coverage"))
        .await;
    assert!(
        text.contains("0.5") && text.contains("≥ 0.8") && text.contains("gated"),
        "{text}"
    );
    let approve = b.find(&format!("{card} button.approve")).await;
    assert!(
        !approve.is_enabled().await.unwrap(),
        "a viewer may not approve"
    );
    let why = approve.attr("title").await.unwrap().unwrap_or_default();
    assert!(why.contains("operator"), "{why}");
    b.screenshot("viewer").await;

    // As otto: a rejection without a reason is refused on the page, before any request; his
    // approval is refused by the server (he started the plan), and the card says why.
    let sign_in_again = |token: String| {
        let b = &b;
        let card = card.clone();
        async move {
            b.js(
                "sessionStorage.setItem('cairn.token', arguments[0])",
                vec![json!(token)],
            )
            .await;
            b.client.refresh().await.unwrap();
            b.until_text(&card, "the review after signing in again", |t| {
                t.contains("coverage")
            })
            .await;
        }
    };
    sign_in_again(otto.clone()).await;
    b.click(&format!("{card} button.reject")).await;
    b.until_text(&format!("{card} .refusal"), "the missing reason", |t| {
        t.contains("needs a reason")
    })
    .await;
    b.click(&format!("{card} button.approve")).await;
    b.until_text(
        &format!("{card} .refusal"),
        "the self review refused",
        |t| t.contains("may not approve its own review"),
    )
    .await;
    b.screenshot("self_review").await;
    let still = serve.get("/v1/reviews?state=open").await;
    assert_eq!(still["items"][0]["review_id"], rid.as_str(), "still open");

    // Another operator approves it with a reason.
    let ann = serve.token("ann", "operator").await;
    sign_in_again(ann).await;
    b.find(&format!("#reason-{el}"))
        .await
        .send_keys("two points are enough for this one")
        .await
        .unwrap();
    b.screenshot("inbox").await;
    b.click(&format!("{card} button.approve")).await;
    b.until_text("#flash", "the approval confirmed", |t| {
        t.contains("Approved")
    })
    .await;

    // The plan goes on: the review is closed as approved, by ann, and the dependent ran.
    let plan = serve
        .until("/v1/plans/gated", "the plan completed", |v| {
            v["state"] == "completed"
        })
        .await;
    assert_eq!(ids(&plan["completed_steps"]), ["draft", "publish"]);
    let closed = serve.get("/v1/reviews?state=closed").await;
    assert_eq!(closed["items"][0]["review_id"], rid.as_str());
    assert_eq!(closed["items"][0]["outcome"], "approved");
    assert_eq!(closed["items"][0]["votes"][0]["user"], "ann");
    assert_eq!(
        closed["items"][0]["votes"][0]["reason"],
        "two points are enough for this one"
    );
    // The open inbox on the page empties by itself (it follows the event stream).
    b.until_text("#reviews-list", "the inbox emptied", |t| {
        t.contains("No review is waiting")
    })
    .await;
    // The closed ones show how they ended and who voted.
    b.js(
        "const s = document.querySelector('#reviews-state'); s.value = 'closed'; \
         s.dispatchEvent(new Event('change'))",
        vec![],
    )
    .await;
    let closed = b
        .until_text(&card, "the closed review", |t| t.contains("approved"))
        .await;
    assert!(
        closed.contains("ann") && closed.contains("two points are enough"),
        "{closed}"
    );
    let listed = b
        .js(
            "return document.querySelectorAll('#reviews-list .review').length",
            vec![],
        )
        .await;
    assert_eq!(listed, json!(1), "only the closed review is listed");
    b.screenshot("closed").await;
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_a_checkpoint_from_the_tab_and_fork_one() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    let admin = serve.admin.clone().unwrap();
    let step = |id: &str| json!({"step_id": id, "action": "say", "agent_type": "builtin.echo", "params": {"n": id}});
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "cp", "query": "three steps", "steps": [step("a"), step("b"), step("c")]}),
        )
        .await;
    serve.post("/v1/plans/cp/start", json!({})).await;
    serve
        .until("/v1/plans/cp", "the plan completed", |v| {
            v["state"] == "completed"
        })
        .await;
    let list = serve.get("/v1/plans/cp/checkpoints").await;
    let items = list["items"].as_array().unwrap().clone();
    // The checkpoint with exactly one step done.
    let mut target = None;
    for c in &items {
        let cid = c["checkpoint_id"].as_str().unwrap();
        let view = serve.get(&format!("/v1/plans/cp/checkpoints/{cid}")).await;
        if ids(&view["completed_steps"]) == ["a"] {
            target = Some(cid.to_owned());
            break;
        }
    }
    let cid = target.unwrap_or_else(|| panic!("no checkpoint after step a in {list}"));
    let before = serve.get("/v1/plans/cp").await;

    let b = Browser::start("checkpoints").await;
    b.sign_in(&serve.base, &admin).await;
    b.open(&serve.base, "/#/plans/cp/checkpoints").await;
    b.until_text("#cp-body", "the checkpoints listed", |t| t.contains(&cid))
        .await;
    assert_eq!(
        b.js(
            "return document.querySelectorAll('#cp-timeline .cp-dot').length",
            vec![]
        )
        .await,
        json!(items.len()),
        "one dot per checkpoint on the timeline"
    );
    // A checkpoint taken through the API appears on the open page (the plan has ended; the
    // page follows its stream past the end).
    let made = serve
        .post(
            "/v1/plans/cp/checkpoints",
            json!({"label": "taken over the api"}),
        )
        .await;
    b.until_text("#cp-body", "the new checkpoint, live", |t| {
        t.contains("taken over the api")
    })
    .await;
    assert_eq!(
        b.js(
            "return document.querySelectorAll('#cp-timeline .cp-dot').length",
            vec![]
        )
        .await,
        json!(items.len() + 1)
    );
    assert_eq!(made["trigger"], "manual");
    b.click(&format!("#cp-body tr[data-cp='{cid}'] button"))
        .await;
    let detail = b
        .until_text("#cp-detail", "the state at the checkpoint", |t| {
            t.contains("1 completed")
        })
        .await;
    assert!(detail.contains(&cid), "{detail}");
    b.screenshot("selected").await;
    b.click("#cp-restore").await;
    b.find("#dialog-reason")
        .await
        .send_keys("run b and c again")
        .await
        .unwrap();
    b.screenshot("confirm").await;
    b.click("#dialog-confirm").await;
    b.until_text("#flash", "the restore confirmed", |t| {
        t.contains("Restored")
    })
    .await;

    // Over the API: the plan is back at the checkpoint, and the restore is in the log.
    let after = serve.get("/v1/plans/cp").await;
    assert_eq!(ids(&after["completed_steps"]), ["a"], "{after}");
    assert_ne!(after["state"], "completed", "{after}");
    assert!(after["version"].as_u64() > before["version"].as_u64());
    let events = serve.get("/v1/plans/cp/events?limit=1000").await;
    let restored: Vec<&Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "checkpoint_restored")
        .collect();
    assert_eq!(restored.len(), 1, "{events}");
    assert_eq!(restored[0]["data"]["checkpoint_id"], cid.as_str());
    assert_eq!(restored[0]["data"]["reason"], "run b and c again");

    // Fork a new plan from the same checkpoint; the page links to it.
    b.click(&format!("#cp-body tr[data-cp='{cid}'] button"))
        .await;
    b.until_text("#cp-detail", "the checkpoint again", |t| t.contains(&cid))
        .await;
    b.click("#cp-fork").await;
    b.find("#fork-id").await.send_keys("cp-fork").await.unwrap();
    b.click("#dialog-confirm").await;
    b.until_text("#fork-link", "the fork's link", |t| t == "cp-fork")
        .await;
    let fork = serve.get("/v1/plans/cp-fork").await;
    assert_eq!(ids(&fork["completed_steps"]), ["a"], "{fork}");
    b.screenshot("forked").await;
    b.finish().await;
}

/// Every item of the paged list at `path` (`…/checkpoints`, `…/interventions`) over the API,
/// oldest first.
async fn all_items(serve: &Serve, path: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = match &cursor {
            Some(c) => serve.get(&format!("{path}?limit=1000&cursor={c}")).await,
            None => serve.get(&format!("{path}?limit=1000")).await,
        };
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return items,
        }
    }
}

/// Every checkpoint of `plan` over the API, oldest first (their seqs).
async fn all_checkpoints(serve: &Serve, plan: &str) -> Vec<u64> {
    all_items(serve, &format!("/v1/plans/{plan}/checkpoints"))
        .await
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect()
}

/// The seqs of the checkpoints listed on the page, in order.
const LISTED: &str =
    "return [...document.querySelectorAll('#cp-body tr[data-cp]')].map((r) => Number(r.cells[2].textContent))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_checkpoints_stay_listed_while_the_plan_takes_more() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&["--no-auth"]);
    // More checkpoints than a page of the tab (1,000): 1,050 quick steps, one held by its
    // latch, then five more.
    let echo = |id: String| json!({"step_id": id, "action": "x", "agent_type": "builtin.echo"});
    let mut steps: Vec<Value> = (0..1050).map(|i| echo(format!("s{i}"))).collect();
    steps.push(
        json!({"step_id": "hold", "action": "wait", "agent_type": "builtin.latch",
                      "params": {"name": "hold"}}),
    );
    steps.extend((0..5).map(|i| echo(format!("t{i}"))));
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "long", "query": "many checkpoints", "steps": steps}),
        )
        .await;
    serve.post("/v1/plans/long/start", json!({})).await;
    let deadline = Instant::now() + WAIT * 6;
    while serve.get("/v1/plans/long").await["running_steps"] != json!(["hold"]) {
        assert!(
            Instant::now() < deadline,
            "the plan never reached its latch"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = all_checkpoints(&serve, "long").await;
    assert!(before.len() > 1000, "{} checkpoints", before.len());

    let b = Browser::start("cp_later").await;
    b.open(&serve.base, "/#/plans/long/checkpoints").await;
    b.click("#cp-more:not([hidden])").await;
    let deadline = Instant::now() + WAIT;
    while b.js(LISTED, vec![]).await != json!(before) {
        assert!(
            Instant::now() < deadline,
            "the later checkpoints never listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The plan goes on and takes more: they join the end of the list, which keeps the pages
    // the user read (it was read again from its first page, dropping them, every 2 s).
    serve.release("hold");
    serve
        .until("/v1/plans/long", "the plan completed", |v| {
            v["state"] == "completed"
        })
        .await;
    let after = all_checkpoints(&serve, "long").await;
    assert!(after.len() > before.len());
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = b.js(LISTED, vec![]).await;
        if listed == json!(after) {
            break;
        }
        if Instant::now() > deadline {
            b.screenshot("timeout").await;
            let n = listed.as_array().map_or(0, Vec::len);
            panic!("{n} checkpoints listed, {} taken", after.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        b.js("return document.getElementById('cp-more').hidden", vec![])
            .await,
        json!(true)
    );
    b.finish().await;
}

/// How many interventions the Audit tab lists.
const AUDIT_ROWS: &str = "return document.querySelectorAll('#audit-body tr.iv').length";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_interventions_stay_listed_when_another_arrives() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&["--no-auth"]);
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "trail", "query": "a long trail", "steps": [
                {"step_id": "a", "action": "say", "agent_type": "builtin.echo"}]}),
        )
        .await;
    // More interventions than a page of the tab (1,000): refused ones are recorded too, and
    // cost the plan nothing.
    for i in 0..1005 {
        let (status, body) = serve
            .call(
                reqwest::Method::POST,
                "/v1/plans/trail/interventions",
                None,
                Some(json!({"type": "skip_step", "step_id": "nope", "reason": format!("try {i}")})),
            )
            .await;
        assert!((400..500).contains(&status), "{status} {body}");
    }
    let total = all_items(&serve, "/v1/plans/trail/interventions")
        .await
        .len();
    assert_eq!(total, 1005, "every refused intervention is in the trail");

    let b = Browser::start("audit_later").await;
    b.open(&serve.base, "/#/plans/trail/audit").await;
    b.find("#audit-more:not([hidden])").await;
    // A double click reads the next page once (twice, it was listed twice).
    b.js(
        "const m = document.getElementById('audit-more'); m.click(); m.click();",
        vec![],
    )
    .await;
    // The tab reads 100 a page: "Later interventions" until every one is listed.
    let deadline = Instant::now() + WAIT * 3;
    while b.js(AUDIT_ROWS, vec![]).await != json!(total) {
        assert!(
            Instant::now() < deadline,
            "the later interventions never listed"
        );
        let more = "const m = document.getElementById('audit-more'); \
                    if (!m.hidden) m.click(); return !m.hidden";
        b.js(more, vec![]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let summary = b.text("#audit-summary").await;
    assert!(summary.starts_with("1005 interventions,"), "{summary}");

    // Another one arrives: it joins the end of the list, which keeps the page the user read
    // (the list was read again from its first page, at most 1,000, dropping it).
    serve
        .post(
            "/v1/plans/trail/interventions",
            json!({"type": "skip_step", "step_id": "a", "reason": "the last word"}),
        )
        .await;
    // The last row's text, not the whole table's: WebDriver reads an element's text on the
    // page's main thread, and reading a thousand rows every 50 ms on a busy machine held back
    // the page's own refresh past the wait.
    b.until_text(
        "#audit-body tr.iv:last-child",
        "the new intervention",
        |t| t.contains("the last word"),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = b.js(AUDIT_ROWS, vec![]).await;
        if listed == json!(total + 1) {
            break;
        }
        if Instant::now() > deadline {
            b.screenshot("timeout").await;
            panic!("{listed} interventions listed, {} recorded", total + 1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        b.js(
            "return document.getElementById('audit-more').hidden",
            vec![]
        )
        .await,
        json!(true)
    );
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_refused_while_the_plan_runs_is_shown_in_the_dialog() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    let admin = serve.admin.clone().unwrap();
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "busy", "query": "held open",
                   "steps": [{"step_id": "hold", "action": "wait", "agent_type": "builtin.latch",
                              "params": {"name": "busy"}}]}),
        )
        .await;
    serve.post("/v1/plans/busy/start", json!({})).await;
    serve
        .until("/v1/plans/busy", "the step running", |v| {
            ids(&v["running_steps"]) == ["hold"]
        })
        .await;
    let b = Browser::start("restore_refused").await;
    b.sign_in(&serve.base, &admin).await;
    b.open(&serve.base, "/#/plans/busy/checkpoints").await;
    b.click("#cp-body tr button").await;
    b.find("#cp-restore").await;
    b.click("#cp-restore").await;
    b.click("#dialog-confirm").await;
    let shown = b
        .until_text("dialog .refusal", "the refusal", |t| t.contains("running"))
        .await;
    assert!(shown.contains("pause it"), "{shown}");
    b.screenshot("refused").await;
    // Escape closes the dialog; the plan is unchanged.
    b.find("#dialog-reason")
        .await
        .send_keys("\u{e00c}")
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while b
        .js("return !!document.querySelector('dialog')", vec![])
        .await
        == json!(true)
    {
        assert!(Instant::now() < deadline, "the dialog did not close");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(serve.get("/v1/plans/busy").await["state"], "running");
    serve.release("busy");
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_lists_the_operations_and_tries_one_with_the_signed_in_token() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    let op = serve.token("olga", "operator").await;
    let b = Browser::start("docs").await;
    b.sign_in(&serve.base, &op).await;
    b.open(&serve.base, "/docs").await;
    b.find("#operations-plans-list_plans").await;
    let spec = serve.get("/openapi.json").await;
    let operations: usize = spec["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    let shown = b
        .js(
            "return document.querySelectorAll('.opblock').length",
            vec![],
        )
        .await;
    assert_eq!(shown, json!(operations), "every operation listed");
    let auth = b.text("#docs-auth").await;
    assert!(auth.contains("signed in"), "{auth}");
    b.screenshot("list").await;
    // "Try it out" on whoami answers olga: the request carried the tab's token.
    b.click("#operations-tokens-whoami .opblock-summary-control")
        .await;
    b.click("#operations-tokens-whoami .try-out__btn").await;
    b.click("#operations-tokens-whoami .execute").await;
    b.until_text(
        "#operations-tokens-whoami .live-responses-table",
        "the answer",
        |t| t.contains("olga"),
    )
    .await;
    b.screenshot("tried").await;
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_page_lists_a_polling_worker_and_a_step_waiting_for_another() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    let admin = serve.admin.clone().unwrap();
    let worker = serve.token("w1", "worker").await;
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "remote", "query": "needs a researcher",
                   "steps": [{"step_id": "dig", "action": "research", "agent_type": "research",
                              "params": {}}]}),
        )
        .await;
    serve.post("/v1/plans/remote/start", json!({})).await;
    serve
        .until("/v1/plans/remote", "the step queued", |v| {
            v["steps"][0]["status"] == "queued"
        })
        .await;
    // A worker polls for another agent type: it is seen, and the step still waits.
    let (status, _) = serve
        .call(
            reqwest::Method::POST,
            "/v1/tasks/poll",
            Some(&worker),
            Some(json!({"worker_id": "summarizer-1", "agent_types": ["summarize"], "wait_ms": 0})),
        )
        .await;
    assert_eq!(status, 204);

    let b = Browser::start("workers").await;
    b.sign_in(&serve.base, &admin).await;
    b.open(&serve.base, "/#/workers").await;
    let row = b
        .until_text(
            "#workers-body tr[data-worker='summarizer-1']",
            "the worker",
            |t| t.contains("summarize"),
        )
        .await;
    assert!(row.contains("none"), "holds no task: {row}");
    let waiting = b
        .until_text(
            "#queued-body tr[data-plan='remote']",
            "the queued step",
            |t| t.contains("dig"),
        )
        .await;
    assert!(
        waiting.contains("a worker of agent type research")
            && waiting.contains("no worker polls for research"),
        "{waiting}"
    );
    let by_type = b
        .until_text(
            "#queued-types-body tr[data-type='research']",
            "the count by agent type",
            |t| t.contains("research"),
        )
        .await;
    assert!(
        by_type.contains("1") && by_type.contains("none"),
        "{by_type}"
    );
    for link in ["/metrics", "/docs", "/openapi.json"] {
        b.find(&format!("main a[href='{link}']")).await;
    }
    b.screenshot("list").await;
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_tab_shows_who_changed_what_and_the_events_tab_pages_and_follows_the_log() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    let admin = serve.admin.clone().unwrap();
    // 30 quick steps, then one held open, then one that waits for it.
    let mut steps: Vec<Value> = (0..30)
        .map(|i| json!({"step_id": format!("s{i:02}"), "action": "say", "agent_type": "builtin.echo", "params": {}}))
        .collect();
    steps.push(
        json!({"step_id": "hold", "action": "wait", "agent_type": "builtin.latch",
                      "params": {"name": "log"}}),
    );
    steps.push(
        json!({"step_id": "later", "action": "say", "agent_type": "builtin.echo",
                      "params": {}, "depends_on": ["hold"]}),
    );
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "log", "query": "a long log", "steps": steps}),
        )
        .await;
    serve.post("/v1/plans/log/start", json!({})).await;
    let v = serve
        .until("/v1/plans/log", "the held step running", |v| {
            ids(&v["running_steps"]) == ["hold"]
        })
        .await;
    serve
        .post(
            "/v1/plans/log/interventions",
            json!({"type": "skip_step", "step_id": "later", "reason": "not needed today",
                   "expected_version": v["version"]}),
        )
        .await;
    // A refused one is in the trail too.
    let (status, _) = serve
        .call(
            reqwest::Method::POST,
            "/v1/plans/log/interventions",
            None,
            Some(
                json!({"type": "skip_step", "step_id": "later", "reason": "again",
                        "expected_version": v["version"]}),
            ),
        )
        .await;
    assert_eq!(status, 409);

    let b = Browser::start("audit_events").await;
    b.sign_in(&serve.base, &admin).await;
    b.open(&serve.base, "/#/plans/log/audit").await;
    let trail = b
        .until_text("#audit-body", "the interventions", |t| {
            t.contains("not needed today")
        })
        .await;
    assert!(
        trail.contains("skip_step") && trail.contains("admin") && trail.contains("applied"),
        "{trail}"
    );
    assert!(trail.contains("failed"), "the refused one: {trail}");
    b.click("#audit-body tr.applied details.iv-diff summary")
        .await;
    let diff = b.text("#audit-body tr.applied table.diff").await;
    assert!(diff.contains("skipped"), "{diff}");
    // Another intervention arrives while the diff is read: it joins the trail, and the diff
    // stays open.
    serve
        .post(
            "/v1/plans/log/interventions",
            json!({"type": "add_step", "reason": "one more at the end",
                   "step": {"step_id": "extra", "action": "say", "agent_type": "builtin.echo",
                            "params": {}, "depends_on": ["hold"]}}),
        )
        .await;
    b.until_text("#audit-body", "the new intervention", |t| {
        t.contains("one more at the end")
    })
    .await;
    assert_eq!(
        b.js(
            "return document.querySelector('#audit-body tr.applied details.iv-diff').open",
            vec![]
        )
        .await,
        json!(true),
        "a new intervention closed the diff being read"
    );
    b.screenshot("audit").await;

    // The events tab opens on the latest page; "First" goes to the plan's first event.
    b.click("a[data-tab='events']").await;
    b.find("#ev-size").await;
    b.js(
        "const s = document.querySelector('#ev-size'); s.value = '50'; \
         s.dispatchEvent(new Event('change'))",
        vec![],
    )
    .await;
    let last_seq = serve.get("/v1/plans/log").await["last_seq"]
        .as_u64()
        .unwrap();
    assert!(last_seq > 60, "{last_seq}");
    b.click("#ev-last").await;
    b.until_text("#ev-where", "the latest page", |t| {
        t.contains(&format!("–{last_seq} of {last_seq}"))
    })
    .await;
    b.click("#ev-first").await;
    b.until_text("#ev-where", "the first page", |t| {
        t.starts_with("events 1–50")
    })
    .await;
    let first = b.text("#ev-body tr:first-child").await;
    assert!(first.contains("plan_registered"), "{first}");
    b.click("#ev-body tr:first-child details summary").await;
    let raw = b.text("#ev-body tr:first-child pre").await;
    assert!(raw.contains("\"seq\": 1"), "{raw}");
    // Back on the latest page, following: the plan's end appears without a reload.
    b.click("#ev-last").await;
    b.until_text("#ev-where", "the latest page again", |t| {
        t.contains(&format!("of {last_seq}"))
    })
    .await;
    // An event's JSON opened there stays open while the plan's next events are added.
    let opened = format!("#ev-body tr[data-seq='{last_seq}'] details");
    b.click(&format!("{opened} summary")).await;
    serve.release("log");
    b.until_text("#ev-body", "the plan's end, live", |t| {
        t.contains("plan_completed")
    })
    .await;
    assert_eq!(
        b.js(
            "return document.querySelector(arguments[0]).open",
            vec![json!(opened)]
        )
        .await,
        json!(true),
        "the events that arrived closed the JSON being read"
    );
    b.screenshot("events").await;
    b.finish().await;
}

/// At phone width every page of this module fits the screen (nothing wider than the viewport,
/// which would need sideways scrolling of the whole page; wide tables scroll in their box), and
/// a viewer sees every control that would change something disabled, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_phone_as_a_viewer_every_page_fits_and_every_change_is_disabled() {
    if skipped() {
        return;
    }
    let (_cfg, serve) = serve_with_scorer();
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "phone", "query": "a review on a phone",
                   "steps": [{"step_id": "draft", "action": "write", "agent_type": "scorer", "params": {},
                              "quality_gate": {"min_scores": {"coverage": 0.8, "accuracy": 0.9},
                                               "max_scores": {"cost_usd": 1.0}, "on_fail": "review"}}]}),
        )
        .await;
    serve.post("/v1/plans/phone/start", json!({})).await;
    serve
        .until("/v1/reviews?state=open", "the review opened", |v| {
            v["items"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    // A viewer: every page readable, every control that changes something disabled.
    let viewer = serve.token("vic", "viewer").await;
    let b = Browser::sized("phone", 390, 844).await;
    b.sign_in(&serve.base, &viewer).await;
    for (path, ready, label) in [
        ("/#/reviews", "#reviews-list .review", "reviews"),
        (
            "/#/plans/phone/checkpoints",
            "#cp-body tr[data-cp]",
            "checkpoints",
        ),
        ("/#/plans/phone/history", "#history-diff h2", "history"),
        ("/#/plans/phone/audit", "#audit-summary", "audit"),
        ("/#/plans/phone/events", "#ev-body tr", "events"),
        ("/#/workers", "#workers-body tr", "workers"),
    ] {
        b.open(&serve.base, path).await;
        b.find(ready).await;
        if label == "checkpoints" {
            b.click("#cp-body tr[data-cp] button").await;
            for control in ["#cp-restore", "#cp-fork", "#cp-create"] {
                let e = b.find(control).await;
                assert!(
                    !e.is_enabled().await.unwrap(),
                    "{control} enabled for a viewer"
                );
                let why = e.attr("title").await.unwrap().unwrap_or_default();
                assert!(why.contains("needs the operator role"), "{control}: {why}");
            }
            // Reading and exporting stay open to a viewer.
            assert!(b.find("#cp-export").await.is_enabled().await.unwrap());
        }
        if label == "reviews" {
            let reason = b.text("#reviews-role").await;
            assert!(reason.contains("needs the operator role"), "{reason}");
        }
        let width = b.overflow_px().await;
        b.screenshot(label).await;
        assert!(
            width <= 0,
            "{path} is {width} px wider than a phone's screen"
        );
    }
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_with_a_new_attempt_then_approve_the_next_with_a_corrected_output() {
    if skipped() {
        return;
    }
    let (_cfg, serve) = serve_with_scorer();
    let admin = serve.admin.clone().unwrap();
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "again", "query": "rejected once",
                   "steps": [{"step_id": "draft", "action": "write", "agent_type": "scorer", "params": {},
                              "quality_gate": {"min_scores": {"coverage": 0.8}, "on_fail": "review",
                                               "feedback": true}}]}),
        )
        .await;
    serve.post("/v1/plans/again/start", json!({})).await;
    let inbox = serve
        .until("/v1/reviews?state=open", "the review opened", |v| {
            v["items"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    let first = inbox["items"][0]["review_id"].as_str().unwrap().to_owned();
    let b = Browser::start("reject_retry").await;
    b.sign_in(&serve.base, &admin).await;
    b.open(&serve.base, "/#/reviews").await;
    let card = format!("#review-again-{first}");
    b.find(&format!("#reason-again-{first}"))
        .await
        .send_keys("cover the risks too")
        .await
        .unwrap();
    b.click(&format!("#retry-again-{first}")).await;
    b.click(&format!("{card} button.reject")).await;
    b.until_text("#flash", "the rejection confirmed", |t| {
        t.contains("Rejected")
    })
    .await;
    // The step ran again and its second attempt is held in turn: its card appears by itself.
    let inbox = serve
        .until("/v1/reviews?state=open", "the second review", |v| {
            v["items"][0]["attempt"] == 2
        })
        .await;
    let second = inbox["items"][0]["review_id"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    b.until_text(
        &format!("#review-again-{second}"),
        "the second attempt's card",
        |t| t.contains("draft attempt 2"),
    )
    .await;
    let closed = serve.get("/v1/reviews?state=closed").await;
    assert_eq!(closed["items"][0]["review_id"], first.as_str());
    assert_eq!(closed["items"][0]["outcome"], "rejected");
    assert_eq!(closed["items"][0]["votes"][0]["retry"], true);
    assert_eq!(
        closed["items"][0]["votes"][0]["reason"],
        "cover the risks too"
    );
    b.screenshot("second").await;

    // The second attempt is approved with a corrected output: JSON checked on the page first.
    let card = format!("#review-again-{second}");
    b.click(&format!("{card} details.correct summary")).await;
    let editor = format!("#output-again-{second}");
    b.find(&editor).await.clear().await.unwrap();
    b.type_into(&editor, "{\"brief\": ").await;
    b.click(&format!("{card} button.approve")).await;
    b.until_text(&format!("{card} .refusal"), "the JSON refused", |t| {
        t.contains("not JSON")
    })
    .await;
    b.type_into(&editor, "\"all four points, by hand\"}").await;
    b.type_into(&format!("#reason-again-{second}"), "added the risks myself")
        .await;
    b.click(&format!("{card} button.approve")).await;
    b.until_text("#flash", "the approval confirmed", |t| {
        t.contains("Approved")
    })
    .await;
    serve
        .until("/v1/plans/again", "the plan completed", |v| {
            v["state"] == "completed"
        })
        .await;
    let snap = serve.get("/v1/plans/again/snapshot").await;
    assert_eq!(
        snap["steps"][0]["output"],
        json!({"brief": "all four points, by hand"}),
        "{snap}"
    );
    b.finish().await;
}

/// A plan whose one step is always held for review (the scorer scores coverage 0.5 < 0.8).
fn gated_plan(id: &str) -> Value {
    json!({"plan_id": id, "query": "held for review",
           "steps": [{"step_id": "draft", "action": "write", "agent_type": "scorer", "params": {},
                      "quality_gate": {"min_scores": {"coverage": 0.8}, "on_fail": "review"}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_plans_review_with_the_same_id_shows_up_and_a_reason_being_typed_keeps_its_focus() {
    if skipped() {
        return;
    }
    let (_cfg, serve) = serve_with_scorer();
    let admin = serve.admin.clone().unwrap();
    serve.post("/v1/plans", gated_plan("first")).await;
    serve.post("/v1/plans/first/start", json!({})).await;
    let inbox = serve
        .until("/v1/reviews?state=open", "the first review", |v| {
            v["items"].as_array().is_some_and(|a| a.len() == 1)
        })
        .await;
    let first = inbox["items"][0]["review_id"].as_str().unwrap().to_owned();
    let b = Browser::start("typing_kept").await;
    b.sign_in(&serve.base, &admin).await;
    b.open(&serve.base, "/#/reviews").await;
    let reason = format!("reason-first-{first}");
    b.type_into(&format!("#{reason}"), "half of a reason").await;
    assert_eq!(b.focused().await, reason);

    // Another plan's review opens: the inbox reloads by itself and shows its card, while the
    // first card (and the text box being typed in) stays where it is.
    serve.post("/v1/plans", gated_plan("second")).await;
    serve.post("/v1/plans/second/start", json!({})).await;
    let inbox = serve
        .until("/v1/reviews?state=open", "the second review", |v| {
            v["items"].as_array().is_some_and(|a| a.len() == 2)
        })
        .await;
    // Both plans are alike, so their reviews have the same id: only the plan tells them apart.
    assert_eq!(inbox["items"][1]["review_id"], first.as_str(), "{inbox}");
    b.find(&format!("#review-second-{first}")).await;
    b.until_text("#reviews-count", "both reviews counted", |t| t == "2 shown")
        .await;
    assert_eq!(
        b.focused().await,
        reason,
        "the reload took the focus away from the reason being typed"
    );
    b.type_into(&format!("#{reason}"), ", and the rest").await;
    let v = b
        .js(
            "return document.getElementById(arguments[0]).value",
            vec![json!(reason)],
        )
        .await;
    assert_eq!(v, json!("half of a reason, and the rest"));
    b.screenshot("kept").await;
    b.finish().await;
}

/// A running plan whose one step holds until its latch is released (its node keeps the lease).
fn held_plan(id: &str) -> Value {
    json!({"plan_id": id, "query": "held open",
           "steps": [{"step_id": "hold", "action": "hold", "agent_type": "builtin.latch",
                      "params": {"name": id}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_page_shows_this_node_and_follows_its_plans() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&["--node-id", "dash-node"]);
    let admin = serve.admin.clone().unwrap();
    serve.post("/v1/plans", held_plan("first")).await;
    serve.post("/v1/plans/first/start", json!({})).await;
    serve
        .until("/v1/nodes", "the node owns the plan", |v| {
            v["nodes"][0]["plans_owned"] == 1
        })
        .await;

    let b = Browser::start("cluster").await;
    b.sign_in(&serve.base, &admin).await;
    b.open(&serve.base, "/").await;
    b.click("#nav a[href='#/cluster']").await;
    let row = "#nodes-body tr[data-node='dash-node']";
    let text = b
        .until_text(row, "this node's row", |t| t.contains("dash-node"))
        .await;
    assert!(
        text.contains("this node"),
        "marked as the one serving the page: {text}"
    );
    assert!(text.contains("alive"), "{text}");
    assert!(text.contains(&serve.base), "its address: {text}");
    assert!(text.contains("s ago"), "the heartbeat as an age: {text}");
    assert_eq!(b.text(&format!("{row} td.num")).await, "1");
    b.find("#nav a[data-section='cluster'].current").await;
    let summary = b.text("#nodes-summary").await;
    assert!(summary.contains("1 of 1 node alive"), "{summary}");

    // Live: a second plan started elsewhere shows up without a reload.
    serve.post("/v1/plans", held_plan("second")).await;
    serve.post("/v1/plans/second/start", json!({})).await;
    b.until_text(&format!("{row} td.num"), "two plans owned", |t| t == "2")
        .await;
    b.screenshot("nodes").await;
    serve.release("first");
    serve.release("second");
    b.finish().await;
}
