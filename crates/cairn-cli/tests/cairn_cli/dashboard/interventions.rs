//! Interventions from the page: each test holds a step open with `builtin.latch`, acts through
//! the Order tab and the intervention dialog as a person does (dry-run preview, reason, apply),
//! and checks the result over the API.

use serde_json::{json, Value};

use super::harness::{skipped, Browser, Serve, WAIT};

fn latch(id: &str) -> Value {
    json!({"step_id": id, "action": "hold", "agent_type": "builtin.latch", "params": {"name": id}})
}

fn echo(id: &str) -> Value {
    json!({"step_id": id, "action": "echo", "agent_type": "builtin.echo", "params": {"say": id}})
}

/// A started plan whose first step `a` is held open (running) and whose other steps wait.
async fn held_plan(serve: &Serve, id: &str, rest: &[&str]) {
    let mut steps = vec![latch("a")];
    steps.extend(rest.iter().map(|s| echo(s)));
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": id, "query": "interventions from the page", "steps": steps}),
        )
        .await;
    serve
        .post(&format!("/v1/plans/{id}/start"), json!({}))
        .await;
    serve
        .until(&format!("/v1/plans/{id}"), "step a running", |v| {
            v["running_steps"] == json!(["a"])
        })
        .await;
}

fn status_of(view: &Value, step: &str) -> String {
    view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_id"] == step)
        .map(|s| s["status"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

fn order_of(view: &Value) -> Vec<String> {
    view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Signs in as admin and opens the plan's Order tab.
async fn open_order(serve: &Serve, name: &str, plan: &str) -> Browser {
    open_order_in(Browser::start(name).await, serve, plan).await
}

async fn open_order_in(b: Browser, serve: &Serve, plan: &str) -> Browser {
    b.sign_in(&serve.base, serve.admin.as_deref().unwrap())
        .await;
    b.open(&serve.base, &format!("/#/plans/{plan}/order")).await;
    b.find("#order-list li[data-step]").await;
    b
}

/// Waits (bounded) until `script` answers true in the page.
async fn until_js(b: &Browser, script: &str, what: &str) {
    until_js_within(b, script, what, WAIT).await
}

async fn until_js_within(b: &Browser, script: &str, what: &str, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    while b.js(script, vec![]).await != json!(true) {
        if std::time::Instant::now() > deadline {
            b.screenshot("timeout").await;
            panic!("{what}: not within {within:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Types `reason` into the dialog and applies.
async fn apply_with(b: &Browser, reason: &str) {
    b.find("#iv-reason").await.send_keys(reason).await.unwrap();
    b.until_text("#iv-hint", "apply enabled", |t| t.is_empty())
        .await;
    b.click("#iv-apply").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_shows_its_dry_run_preview_then_skips_the_step() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    held_plan(&serve, "iv-skip", &["b", "c"]).await;
    let b = open_order(&serve, "iv_skip", "iv-skip").await;
    b.click("#order-list li[data-step=b]").await;
    b.click("#order-actions button[data-action=skip_step]")
        .await;
    let preview = b
        .until_text("#iv-diff", "the dry run's diff", |t| t.contains("Step b"))
        .await;
    assert!(
        preview.contains("pending") && preview.contains("skipped"),
        "{preview}"
    );
    // The preview changed nothing.
    let v = serve.get("/v1/plans/iv-skip").await;
    assert_eq!(status_of(&v, "b"), "pending");
    b.screenshot("preview").await;
    apply_with(&b, "not needed today").await;
    b.until_text("#flash", "success said", |t| t.contains("applied"))
        .await;
    let v = serve
        .until("/v1/plans/iv-skip", "b skipped", |v| {
            status_of(v, "b") == "skipped"
        })
        .await;
    assert_eq!(status_of(&v, "c"), "pending");
    let ivs = serve.get("/v1/plans/iv-skip/interventions").await;
    let last = ivs["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["type"], "skip_step");
    assert_eq!(last["reason"], "not needed today");
    // The page follows: b is listed with the steps that keep their place.
    b.until_text("#order-others", "b moved out of the pending list", |t| {
        t.contains("b") && t.contains("skipped")
    })
    .await;
    b.finish().await;
}

/// HTML5 drag and drop is not driven by WebDriver's pointer actions in Chromium (tried with
/// chromedriver 156: press, move, release over the target leaves the order as it was), so
/// the test dispatches the events a real drag makes (dragstart, dragover, drop, dragend) with
/// one DataTransfer, at the target's upper half (drop before it).
const DRAG: &str = r#"
const [from, to] = arguments;
const src = document.querySelector(`#order-list li[data-step="${from}"]`);
const dst = document.querySelector(`#order-list li[data-step="${to}"]`);
const dt = new DataTransfer();
const r = dst.getBoundingClientRect();
const at = { bubbles: true, cancelable: true, dataTransfer: dt, clientX: r.left + 10, clientY: r.top + 2 };
src.dispatchEvent(new DragEvent('dragstart', at));
dst.dispatchEvent(new DragEvent('dragenter', at));
dst.dispatchEvent(new DragEvent('dragover', at));
dst.dispatchEvent(new DragEvent('drop', at));
src.dispatchEvent(new DragEvent('dragend', at));
return [...document.querySelectorAll('#order-list li[data-step]')].map((li) => li.dataset.step);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorder_by_drag_and_drop_then_the_order_over_the_api() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    held_plan(&serve, "iv-dnd", &["b", "c", "d"]).await;
    let b = open_order(&serve, "iv_dnd", "iv-dnd").await;
    let shown = b.js(DRAG, vec![json!("d"), json!("b")]).await;
    assert_eq!(shown, json!(["d", "b", "c"]));
    b.until_text("#order-count", "draft noted", |t| t.contains("not saved"))
        .await;
    b.screenshot("dragged").await;
    // Nothing is sent before Save and Apply.
    assert_eq!(
        order_of(&serve.get("/v1/plans/iv-dnd").await),
        ["a", "b", "c", "d"]
    );
    b.click("#order-save").await;
    let preview = b
        .until_text("#iv-diff", "the reorder's preview", |t| {
            t.contains("position")
        })
        .await;
    assert!(preview.contains("d: position 4 → 2"), "{preview}");
    b.screenshot("preview").await;
    apply_with(&b, "d is more urgent").await;
    b.until_text("#flash", "success said", |t| t.contains("applied"))
        .await;
    let v = serve.get("/v1/plans/iv-dnd").await;
    assert_eq!(order_of(&v), ["a", "d", "b", "c"]);
    assert_eq!(v["version"], 2);
    b.until_text("#order-count", "draft cleared", |t| {
        !t.contains("not saved")
    })
    .await;
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorder_from_the_keyboard_with_alt_arrows() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    held_plan(&serve, "iv-keys", &["b", "c", "d"]).await;
    let b = open_order(&serve, "iv_keys", "iv-keys").await;
    // Alt+ArrowUp twice on c (modifiers stay down within one send_keys).
    let c = b.find("#order-list li[data-step=c]").await;
    c.send_keys("\u{E00A}\u{E013}\u{E000}").await.unwrap();
    let moved = b.find("#order-list li[data-step=c]").await;
    moved.send_keys("\u{E00A}\u{E013}\u{E000}").await.unwrap();
    let focused = b
        .js("return document.activeElement.dataset.step || ''", vec![])
        .await;
    assert_eq!(focused, "c", "the focus stays on the moved step");
    let shown = b
        .js(
            "return [...document.querySelectorAll('#order-list li[data-step]')].map((li) => li.dataset.step)",
            vec![],
        )
        .await;
    assert_eq!(shown, json!(["c", "b", "d"]));
    // Save from the keyboard too: the dialog's Escape closes it without a change.
    b.click("#order-save").await;
    b.until_text("#iv-diff", "preview", |t| t.contains("position"))
        .await;
    b.find("#iv-reason")
        .await
        .send_keys("\u{E00C}")
        .await
        .unwrap();
    until_js(
        &b,
        "return !document.querySelector('dialog')",
        "Escape closes the dialog",
    )
    .await;
    assert_eq!(
        order_of(&serve.get("/v1/plans/iv-keys").await),
        ["a", "b", "c", "d"]
    );
    b.click("#order-save").await;
    b.until_text("#iv-diff", "preview", |t| t.contains("position"))
        .await;
    apply_with(&b, "c first").await;
    b.until_text("#flash", "success said", |t| t.contains("applied"))
        .await;
    assert_eq!(
        order_of(&serve.get("/v1/plans/iv-keys").await),
        ["a", "c", "b", "d"]
    );
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_by_hand_with_an_output_typed_in_the_editor() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    held_plan(&serve, "iv-done", &["b"]).await;
    // At a phone's width: the dialog and its editor must fit.
    let b = open_order_in(
        Browser::sized("iv_complete_phone", 390, 844).await,
        &serve,
        "iv-done",
    )
    .await;
    // a is running: listed with the steps that keep their place.
    b.click("#order-others li[data-step=a]").await;
    b.click("#order-actions button[data-action=complete_step]")
        .await;
    let editor = b.find("#iv-editor").await;
    editor.clear().await.unwrap();
    editor.send_keys("{\"answer\": ").await.unwrap();
    b.until_text("#iv-parse", "the parse error shown while typing", |t| {
        t.starts_with("Not JSON")
    })
    .await;
    editor.send_keys("42}").await.unwrap();
    let preview = b
        .until_text("#iv-diff", "the preview of the completion", |t| {
            t.contains("completed") && t.contains("42")
        })
        .await;
    assert!(preview.contains("running"), "{preview}");
    b.screenshot("preview").await;
    apply_with(&b, "answered by phone").await;
    b.until_text("#flash", "success said", |t| t.contains("applied"))
        .await;
    let snap = serve
        .until("/v1/plans/iv-done/snapshot", "a completed by hand", |v| {
            status_of(v, "a") == "completed"
        })
        .await;
    let a = snap["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_id"] == "a")
        .unwrap();
    assert_eq!(a["output"], json!({"answer": 42}));
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_is_shown_when_the_plan_moved_then_applies_against_the_fresh_plan() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    held_plan(&serve, "iv-race", &["b", "c"]).await;
    let b = open_order(&serve, "iv_conflict", "iv-race").await;
    b.click("#order-list li[data-step=b]").await;
    b.click("#order-actions button[data-action=skip_step]")
        .await;
    b.until_text("#iv-diff", "the dry run", |t| t.contains("Plan version 1"))
        .await;
    // Someone else changes the plan between the preview and Apply.
    serve
        .post(
            "/v1/plans/iv-race/interventions",
            json!({"type": "add_step", "after": "c", "step": echo("e"), "reason": "meanwhile"}),
        )
        .await;
    apply_with(&b, "skip b").await;
    let said = b
        .until_text("#iv-conflict", "the conflict", |t| {
            t.contains("Someone else changed the plan")
        })
        .await;
    assert!(said.contains("version 1 to 2"), "{said}");
    b.until_text("#iv-diff", "the preview against the fresh plan", |t| {
        t.contains("Plan version 2")
    })
    .await;
    b.screenshot("conflict").await;
    // Nothing was skipped by the refused Apply.
    assert_eq!(
        status_of(&serve.get("/v1/plans/iv-race").await, "b"),
        "pending"
    );
    b.until_text("#iv-hint", "apply enabled again", |t| t.is_empty())
        .await;
    b.click("#iv-apply").await;
    b.until_text("#flash", "success said", |t| t.contains("applied"))
        .await;
    serve
        .until("/v1/plans/iv-race", "b skipped", |v| {
            status_of(v, "b") == "skipped"
        })
        .await;
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modify_shows_the_servers_validation_and_a_viewer_sees_disabled_actions() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    held_plan(&serve, "iv-mod", &["b"]).await;
    let b = open_order(&serve, "iv_modify", "iv-mod").await;
    b.click("#order-list li[data-step=b]").await;
    b.click("#order-actions button[data-action=modify_step]")
        .await;
    let editor = b.find("#iv-editor").await;
    b.until_text("#iv-parse", "nothing changed yet", |t| {
        t.contains("nothing changed")
    })
    .await;
    let text = editor.prop("value").await.unwrap().unwrap_or_default();
    assert!(text.contains("\"say\": \"b\""), "{text}");
    // A field the server refuses: its message is shown, and Apply stays off.
    editor.clear().await.unwrap();
    editor
        .send_keys(r#"{"action": "echo", "agent_type": "builtin.echo", "params": {"say": "hi"}, "timeout_ms": -5}"#)
        .await
        .unwrap();
    b.until_text("#iv-preview", "the server's refusal", |t| {
        t.contains("The server refuses this")
    })
    .await;
    b.screenshot("refused").await;
    editor.clear().await.unwrap();
    editor
        .send_keys(r#"{"action": "echo", "agent_type": "builtin.echo", "params": {"say": "hi"}}"#)
        .await
        .unwrap();
    b.until_text("#iv-diff", "the params change", |t| t.contains("params"))
        .await;
    apply_with(&b, "say hi").await;
    b.until_text("#flash", "success said", |t| t.contains("applied"))
        .await;
    let snap = serve.get("/v1/plans/iv-mod/snapshot").await;
    let step = snap["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_id"] == "b")
        .unwrap()
        .clone();
    assert_eq!(step["params"], json!({"say": "hi"}));
    b.finish().await;

    // A viewer sees the same controls, disabled, with the reason.
    let viewer = serve.token("vera", "viewer").await;
    let b = Browser::start("iv_viewer").await;
    b.sign_in(&serve.base, &viewer).await;
    b.open(&serve.base, "/#/plans/iv-mod/order").await;
    b.click("#order-list li[data-step=b]").await;
    let skip = b.find("#order-actions button[data-action=skip_step]").await;
    assert_eq!(
        skip.prop("disabled").await.unwrap().as_deref(),
        Some("true")
    );
    let title = skip.attr("title").await.unwrap().unwrap_or_default();
    assert!(title.contains("needs the operator role"), "{title}");
    let reason = b.text("#order-actions .reason").await;
    assert!(reason.contains("needs the operator role"), "{reason}");
    let save = b.find("#order-save").await;
    assert_eq!(
        save.prop("disabled").await.unwrap().as_deref(),
        Some("true")
    );
    let why = b.text("#order-why").await;
    assert!(why.contains("needs the operator role"), "{why}");
    b.screenshot("viewer").await;
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_tab_of_a_10000_step_plan_shows_a_window_and_reorders() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    let steps: Vec<Value> = (0..10_000).map(|i| echo(&format!("s{i}"))).collect();
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "iv-big", "query": "ten thousand steps", "steps": steps}),
        )
        .await;
    let b = Browser::start("iv_big").await;
    b.sign_in(&serve.base, serve.admin.as_deref().unwrap())
        .await;
    let t0 = std::time::Instant::now();
    b.open(&serve.base, "/#/plans/iv-big/order").await;
    b.find("#order-list li[data-step=s0]").await;
    eprintln!(
        "the 10,000-step Order tab listed its first step after {:?}",
        t0.elapsed()
    );
    let shown = b
        .js(
            "return document.querySelectorAll('#order-list li[data-step]').length",
            vec![],
        )
        .await;
    assert_eq!(
        shown,
        json!(300),
        "a window of the pending steps, not all 10,000"
    );
    let more = b.text("#order-list li.more").await;
    assert!(more.contains("9700"), "{more}");
    // Move s1 below s2 from the keyboard, save and apply.
    b.find("#order-list li[data-step=s1]")
        .await
        .send_keys("\u{E00A}\u{E015}\u{E000}")
        .await
        .unwrap();
    // And s299, at the end of the window, to the top by its position.
    b.click("#order-list li[data-step=s299]").await;
    let to = b.find("#order-to").await;
    to.clear().await.unwrap();
    to.send_keys("1\u{E007}").await.unwrap();
    b.until_text("#order-list li[data-step]", "s299 first", |t| {
        t.contains("s299")
    })
    .await;
    b.click("#order-save").await;
    let preview = b
        .until_text("#iv-diff", "the reorder's preview", |t| {
            t.contains("position")
        })
        .await;
    assert!(preview.contains("299 steps change place"), "{preview}");
    assert!(preview.contains("and 249 more"), "{preview}");
    apply_with(&b, "s299 and s2 first").await;
    // Applying to 10,000 steps (a checkpoint of them all) takes a debug build seconds, more on
    // a loaded machine: a longer bound than the harness's.
    until_js_within(
        &b,
        "return (document.getElementById('flash').textContent || '').includes('applied')",
        "success said",
        WAIT * 6,
    )
    .await;
    let v = serve.get("/v1/plans/iv-big").await;
    assert_eq!(order_of(&v)[..5], ["s299", "s0", "s2", "s1", "s3"]);
    b.screenshot("after").await;
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_a_step_after_another_then_remove_it() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    held_plan(&serve, "iv-add", &["b", "c"]).await;
    let b = open_order(&serve, "iv_add", "iv-add").await;
    b.click("#order-list li[data-step=b]").await;
    b.click("#order-actions button[data-action=add_after]")
        .await;
    // The editor starts from a copy of b under a fresh id; a step without an id is refused
    // before the server is asked.
    let editor = b.find("#iv-editor").await;
    let text = editor.prop("value").await.unwrap().unwrap_or_default();
    assert!(text.contains("\"step_id\": \"b-new\""), "{text}");
    editor.clear().await.unwrap();
    editor
        .send_keys(r#"{"action": "echo", "agent_type": "builtin.echo"}"#)
        .await
        .unwrap();
    b.until_text("#iv-parse", "the missing id named", |t| {
        t.contains("step_id")
    })
    .await;
    editor.clear().await.unwrap();
    editor
        .send_keys(
            r#"{"step_id": "b2", "action": "echo", "agent_type": "builtin.echo", "params": {}}"#,
        )
        .await
        .unwrap();
    let preview = b
        .until_text("#iv-diff", "the new step previewed", |t| {
            t.contains("New step b2")
        })
        .await;
    assert!(preview.contains("inserted at position 3"), "{preview}");
    apply_with(&b, "one more check").await;
    b.until_text("#flash", "success said", |t| t.contains("applied"))
        .await;
    let v = serve.get("/v1/plans/iv-add").await;
    assert_eq!(order_of(&v), ["a", "b", "b2", "c"]);

    b.click("#order-list li[data-step=b2]").await;
    b.click("#order-actions button[data-action=remove_step]")
        .await;
    b.until_text("#iv-diff", "the removal previewed", |t| {
        t.contains("Step b2 is removed")
    })
    .await;
    apply_with(&b, "not needed after all").await;
    b.until_text("#flash", "success said", |t| t.contains("applied"))
        .await;
    let v = serve.get("/v1/plans/iv-add").await;
    assert_eq!(order_of(&v), ["a", "b", "c"]);
    b.until_text("#order-actions", "the removed step noted", |t| {
        t.contains("no longer in the plan")
    })
    .await;
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_a_failed_step_reopens_the_failed_plan() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "iv-retry", "query": "fails once", "steps": [
                {"step_id": "f", "action": "try", "agent_type": "builtin.fail",
                 "params": {"times": 1, "retryable": false}},
                echo("g")]}),
        )
        .await;
    serve.post("/v1/plans/iv-retry/start", json!({})).await;
    serve
        .until("/v1/plans/iv-retry", "the plan failed", |v| {
            v["state"] == "failed"
        })
        .await;
    let b = open_order(&serve, "iv_retry", "iv-retry").await;
    b.click("#order-others li[data-step=f]").await;
    // A failed plan's definition is settled: adding is refused on the page, with the reason.
    let add = b.find("#order-actions button[data-action=add_after]").await;
    assert_eq!(add.prop("disabled").await.unwrap().as_deref(), Some("true"));
    let why = b.text("#order-actions details.reason").await;
    assert!(why.contains("unavailable"), "{why}");
    b.click("#order-actions button[data-action=retry_step]")
        .await;
    let preview = b
        .until_text("#iv-diff", "the retry previewed", |t| {
            t.contains("runs again")
        })
        .await;
    assert!(
        preview.contains("failed") && preview.contains("paused"),
        "{preview}"
    );
    apply_with(&b, "the flake is fixed").await;
    b.until_text("#flash", "success said", |t| t.contains("applied"))
        .await;
    let v = serve.get("/v1/plans/iv-retry").await;
    assert_eq!(v["state"], "paused");
    assert_eq!(status_of(&v, "f"), "pending");
    serve.post("/v1/plans/iv-retry/resume", json!({})).await;
    serve
        .until("/v1/plans/iv-retry", "the plan completed", |v| {
            v["state"] == "completed"
        })
        .await;
    // A completed plan runs again from a step: it and what follows it. (The page is opened
    // afresh through another route: the same URL would not reload it.)
    b.open(&serve.base, "/#/plans/iv-retry").await;
    b.open(&serve.base, "/#/plans/iv-retry/order").await;
    b.click("#order-fixed li[data-step=f]").await;
    b.click("#order-actions button[data-action=rerun_from]")
        .await;
    let preview = b
        .until_text("#iv-diff", "the rerun previewed", |t| {
            t.contains("Step g runs again")
        })
        .await;
    assert!(preview.contains("Step f runs again"), "{preview}");
    apply_with(&b, "run it all again").await;
    b.until_text("#flash", "success said", |t| t.contains("applied"))
        .await;
    let ivs = serve.get("/v1/plans/iv-retry/interventions").await;
    let last = ivs["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["type"], "rerun_from");
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_being_typed_keeps_its_focus_while_the_plan_moves_on() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    // a and b run side by side, each held by its latch; c, d and e wait for both.
    let mut a = latch("a");
    a["depends_on"] = json!([]);
    let mut b_step = latch("b");
    b_step["depends_on"] = json!([]);
    let mut c = echo("c");
    c["depends_on"] = json!(["a", "b"]);
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "moving", "query": "events while typing",
                   "steps": [a, b_step, c, echo("d"), echo("e")]}),
        )
        .await;
    serve.post("/v1/plans/moving/start", json!({})).await;
    serve
        .until("/v1/plans/moving", "a and b running", |v| {
            v["running_steps"] == json!(["a", "b"])
        })
        .await;
    let b = open_order(&serve, "iv_typing", "moving").await;
    b.click("#order-list li[data-step=d]").await;
    b.find("#order-to").await.clear().await.unwrap();
    b.type_into("#order-to", "3").await;
    assert_eq!(b.focused().await, "order-to");

    // b ends: the plan's events redraw the lists (b moves among the steps that ended), and the
    // selected step's panel, which shows nothing that changed, is left as it is.
    serve.release("b");
    b.find("#order-others li[data-step=b] .state.completed")
        .await;
    assert_eq!(
        b.focused().await,
        "order-to",
        "the plan's events took the focus away from the position being typed"
    );
    let typed = b
        .js("return document.getElementById('order-to').value", vec![])
        .await;
    assert_eq!(typed, json!("3"));
    // Enter moves d to the third place of the pending steps (c, e, d).
    b.find("#order-to")
        .await
        .send_keys("\u{E007}")
        .await
        .unwrap();
    until_js(
        &b,
        "return [...document.querySelectorAll('#order-list li[data-step]')].map((l) => l.dataset.step).join() === 'c,e,d'",
        "d moved to the third place",
    )
    .await;
    serve.release("a");
    b.finish().await;
}
