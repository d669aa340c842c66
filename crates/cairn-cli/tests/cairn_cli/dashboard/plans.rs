//! The plans list and the plan page (steps: graph, timeline, list, details; controls): list →
//! plan → pause → resume checked over the API, changes made through the API appearing without a
//! reload, the freeze toggle, a viewer's disabled controls, deep links to a step and an attempt,
//! and a 10,000-step plan's page.

use std::time::Instant;

use fantoccini::key::Key;
use serde_json::{json, Value};

use super::harness::{skipped, Browser, Serve};

fn plan_with_latch(id: &str, latch: &str) -> Value {
    json!({"plan_id": id, "query": "walk through the controls",
    "steps": [
        {"step_id": "hold", "action": "wait", "agent_type": "builtin.latch", "params": {"name": latch}},
        {"step_id": "after", "action": "say", "agent_type": "builtin.echo", "params": {"said": "done"}}
    ]})
}

async fn state_of(serve: &Serve, id: &str) -> String {
    serve.get(&format!("/v1/plans/{id}")).await["state"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_then_plan_then_pause_and_resume_as_the_api_sees_it() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    serve
        .post("/v1/plans", plan_with_latch("walk-1", "walk"))
        .await;
    serve.post("/v1/plans/walk-1/start", json!({})).await;
    let admin = serve.admin.clone().unwrap();
    let b = Browser::start("plans_walk").await;
    b.sign_in(&serve.base, &admin).await;
    b.until_text("#plans-body", "the plan listed", |t| t.contains("walk-1"))
        .await;
    b.until_text("#plans-body tr[data-plan='walk-1']", "its progress", |t| {
        t.contains("0/2") && t.contains("running")
    })
    .await;
    b.screenshot("list").await;
    b.click("#plans-body a[href='#/plans/walk-1']").await;
    b.until_text("#plan-header h1", "the plan page", |t| {
        t.contains("running")
    })
    .await;
    // The step held by the latch is running in the list and the graph.
    b.until_text("#steps-body tr[data-step='hold']", "hold running", |t| {
        t.contains("running")
    })
    .await;
    b.find("#graph-svg g.node.running[data-step='hold']").await;

    // Pause at the boundary, through the dialog.
    b.click("#plan-pause").await;
    b.find("#pause-dialog").await;
    b.screenshot("pause-dialog").await;
    b.click("#pause-boundary").await;
    b.click("#pause-dialog-confirm").await;
    serve
        .until("/v1/plans/walk-1", "paused over the API", |v| {
            v["state"] == "paused" && v["pause_reason"] == "operator"
        })
        .await;
    b.until_text("#plan-header h1", "paused on the page", |t| {
        t.contains("paused")
    })
    .await;
    // Cancel asks first; Escape closes the dialog and nothing happens.
    b.click("#plan-cancel").await;
    let reason = b.find("#cancel-reason").await;
    reason.send_keys(&Key::Escape.to_string()).await.unwrap();
    let open: Value = b
        .js(
            "return document.querySelector('#cancel-dialog') !== null",
            vec![],
        )
        .await;
    let deadline = Instant::now() + super::harness::WAIT;
    let mut open = open;
    while open == json!(true) && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        open = b
            .js(
                "return document.querySelector('#cancel-dialog') !== null",
                vec![],
            )
            .await;
    }
    assert_eq!(open, json!(false), "Escape closes the cancel dialog");
    assert_eq!(state_of(&serve, "walk-1").await, "paused");

    b.click("#plan-resume").await;
    serve
        .until("/v1/plans/walk-1", "running again over the API", |v| {
            v["state"] == "running"
        })
        .await;
    // The latch released through the filesystem: the page follows without a reload.
    serve.release("walk");
    b.until_text("#plan-header h1", "completed on the page", |t| {
        t.contains("completed")
    })
    .await;
    b.until_text(
        "#steps-body tr[data-step='after']",
        "after completed",
        |t| t.contains("completed"),
    )
    .await;
    b.find("#timeline-svg rect.bar.completed").await;
    assert_eq!(state_of(&serve, "walk-1").await, "completed");
    b.screenshot("completed").await;
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_through_the_api_appear_without_a_reload_unless_frozen() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&["--no-auth"]);
    serve
        .post("/v1/plans", plan_with_latch("live-1", "live"))
        .await;
    let b = Browser::start("plans_live").await;
    b.open(&serve.base, "/#/plans").await;
    b.until_text("#plans-body", "the first plan", |t| t.contains("live-1"))
        .await;
    b.until_text("#plans-live", "the stream is live", |t| t.contains("live"))
        .await;
    // A new plan appears.
    serve
        .post("/v1/plans", plan_with_latch("live-2", "live"))
        .await;
    b.until_text("#plans-body", "the new plan", |t| t.contains("live-2"))
        .await;
    // A state change appears.
    serve.post("/v1/plans/live-1/start", json!({})).await;
    b.until_text(
        "#plans-body tr[data-plan='live-1']",
        "live-1 running",
        |t| t.contains("running"),
    )
    .await;

    // Frozen: the event is counted, the list is not read again.
    b.click("#plans-freeze").await;
    serve
        .post("/v1/plans", plan_with_latch("live-3", "live"))
        .await;
    b.until_text("#plans-live", "the event counted", |t| {
        t.contains("frozen") && t.contains("event")
    })
    .await;
    let listed = b.text("#plans-body").await;
    assert!(
        !listed.contains("live-3"),
        "a frozen list changed: {listed}"
    );
    b.screenshot("frozen").await;
    b.click("#plans-freeze").await;
    b.until_text("#plans-body", "the list caught up", |t| {
        t.contains("live-3")
    })
    .await;

    // Search by id and filter by state, on the server.
    b.find("#plans-search").await.send_keys("-3").await.unwrap();
    b.until_text("#plans-body", "only live-3", |t| {
        t.contains("live-3") && !t.contains("live-1")
    })
    .await;
    b.find("#plans-search").await.clear().await.unwrap();
    b.js(
        "const s = document.querySelector('#plans-search'); s.dispatchEvent(new Event('input')); \
         const f = document.querySelector('#plans-state'); f.value = 'running'; \
         f.dispatchEvent(new Event('change'));",
        vec![],
    )
    .await;
    b.until_text("#plans-body", "only running plans", |t| {
        t.contains("live-1") && !t.contains("live-2") && !t.contains("live-3")
    })
    .await;

    // On the plan page, a step completing appears without a reload.
    b.click("#plans-body a[href='#/plans/live-1']").await;
    b.until_text("#steps-body tr[data-step='hold']", "hold running", |t| {
        t.contains("running")
    })
    .await;
    serve.release("live");
    b.until_text("#steps-body tr[data-step='hold']", "hold completed", |t| {
        t.contains("completed")
    })
    .await;
    b.until_text("#plan-header h1", "the plan completed", |t| {
        t.contains("completed")
    })
    .await;
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_the_controls_disabled_with_the_reason() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    serve
        .post("/v1/plans", plan_with_latch("seen-1", "seen"))
        .await;
    serve.post("/v1/plans/seen-1/start", json!({})).await;
    let viewer = serve.token("vera", "viewer").await;
    let b = Browser::start("plans_viewer").await;
    b.sign_in(&serve.base, &viewer).await;
    b.open(&serve.base, "/#/plans/seen-1").await;
    b.until_text("#plan-header h1", "the plan page", |t| {
        t.contains("running")
    })
    .await;
    for action in ["start", "pause", "resume", "cancel"] {
        let button = b.find(&format!("#plan-{action}")).await;
        assert_eq!(
            button.prop("disabled").await.unwrap().as_deref(),
            Some("true"),
            "{action} is disabled for a viewer"
        );
        let title = button.attr("title").await.unwrap().unwrap_or_default();
        assert!(title.contains("operator role"), "{action}: {title:?}");
        // The visible reason the button points to.
        let note = button
            .attr("aria-describedby")
            .await
            .unwrap()
            .expect("a disabled control points to its reason");
        let why = b.text(&format!("#{note}")).await;
        assert!(
            why.contains("needs the operator role") && why.contains("viewer"),
            "{action}: {why:?}"
        );
        assert!(b
            .find(&format!("#{note}"))
            .await
            .is_displayed()
            .await
            .unwrap());
    }
    b.screenshot("disabled").await;
    serve.release("seen");
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_links_open_a_step_and_an_attempt_in_sync_everywhere() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&["--no-auth"]);
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "deep-1", "steps": [
                {"step_id": "first", "action": "say", "agent_type": "builtin.echo", "params": {"n": 1}},
                {"step_id": "flaky", "action": "try", "agent_type": "builtin.fail",
                 "params": {"times": 1}, "retry": {"max_attempts": 2, "backoff_ms": 10}},
                {"step_id": "last", "action": "say", "agent_type": "builtin.echo",
                 "params": {"from": "{{ steps.flaky.output.times }}"}, "depends_on": ["first", "flaky"]}
            ]}),
        )
        .await;
    serve.post("/v1/plans/deep-1/start", json!({})).await;
    serve
        .until("/v1/plans/deep-1", "the plan completes", |v| {
            v["state"] == "completed"
        })
        .await;

    let b = Browser::start("plans_deep").await;
    b.open(&serve.base, "/#/plans/deep-1/steps/flaky/attempts/1")
        .await;
    b.until_text("#attempt-detail", "attempt 1 shown", |t| {
        t.contains("Attempt 1") && t.contains("failed")
    })
    .await;
    assert_eq!(b.text("#step-key").await, "deep-1/flaky/1");
    b.until_text("#step-details h2", "the step", |t| t.contains("flaky"))
        .await;
    // In sync: the list row, the graph node, the timeline row and bar.
    b.find("#steps-body tr.selected[data-step='flaky']").await;
    b.find("#graph-svg g.node.selected[data-step='flaky']")
        .await;
    b.find("#timeline-svg g.trow.selected[data-step='flaky'] rect.bar.failed.selected")
        .await;
    b.screenshot("attempt").await;

    // The arrow keys move through the list.
    b.find("#steps-body tr[data-step='flaky'] a")
        .await
        .send_keys(&Key::Down.to_string())
        .await
        .unwrap();
    b.until_text("#step-details h2", "the next step by keyboard", |t| {
        t.contains("last")
    })
    .await;
    let focused = b
        .js("return document.activeElement.textContent", vec![])
        .await;
    assert_eq!(focused, json!("last"), "the focus follows the selection");
    b.find("#steps-body tr[data-step='last'] a")
        .await
        .send_keys(&Key::Up.to_string())
        .await
        .unwrap();
    b.until_text("#step-details h2", "back by keyboard", |t| {
        t.contains("flaky")
    })
    .await;

    // Selecting in the graph moves the selection everywhere and into the URL.
    b.click("#graph-svg g.node[data-step='last']").await;
    b.until_text("#step-details h2", "last selected", |t| t.contains("last"))
        .await;
    b.find("#steps-body tr.selected[data-step='last']").await;
    b.find("#timeline-svg g.trow.selected[data-step='last']")
        .await;
    let hash = b.js("return location.hash", vec![]).await;
    assert_eq!(hash, json!("#/plans/deep-1/steps/last"));
    // The invocation of the attempt carries the rendered params.
    b.click("#attempts a").await;
    b.until_text("#attempt-params", "rendered params", |t| {
        t.contains("\"from\": 1")
    })
    .await;
    let hash = b.js("return location.hash", vec![]).await;
    assert_eq!(hash, json!("#/plans/deep-1/steps/last/attempts/1"));

    // A gated step: its scores against the gate's bounds, the failed criterion, the review.
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "gated-1", "steps": [
                {"step_id": "judged", "action": "write", "agent_type": "builtin.echo",
                 "quality_gate": {"min_scores": {"quality": 0.5}}}
            ]}),
        )
        .await;
    serve.post("/v1/plans/gated-1/start", json!({})).await;
    serve
        .until("/v1/plans/gated-1", "the step waits for review", |v| {
            v["steps"][0]["status"] == "awaiting_review"
        })
        .await;
    b.open(&serve.base, "/#/plans/gated-1/steps/judged/attempts/1")
        .await;
    let shown = b
        .until_text("#attempt-detail", "the gate's verdict", |t| {
            t.contains("Scores against the gate") && t.contains("verdict: failed")
        })
        .await;
    assert!(
        shown.contains("≥ 0.5") && shown.contains("quality"),
        "{shown}"
    );
    assert!(
        shown.contains("awaiting review") && shown.contains("rv-"),
        "{shown}"
    );
    b.screenshot("gate").await;
    b.finish().await;

    // At phone width the page is one column and still shows the step.
    let phone = Browser::sized("plans_deep_phone", 390, 844).await;
    phone.open(&serve.base, "/#/plans/deep-1/steps/flaky").await;
    phone
        .until_text("#step-details h2", "the step on a phone", |t| {
            t.contains("flaky")
        })
        .await;
    let overflow = phone.overflow_px().await;
    assert!(
        overflow <= 1,
        "no sideways scrolling at 390 px ({overflow} px too wide)"
    );
    phone.screenshot("phone").await;
    phone.open(&serve.base, "/#/plans").await;
    phone
        .until_text("#plans-body", "the list on a phone", |t| {
            t.contains("deep-1")
        })
        .await;
    let overflow = phone.overflow_px().await;
    assert!(
        overflow <= 1,
        "the list fits 390 px ({overflow} px too wide)"
    );
    phone.screenshot("phone-list").await;
    phone.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_step_plan_page_opens_and_finds_a_step() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&["--no-auth"]);
    // 100 levels of 100 steps: each step after the first hundred waits for the one 100 before.
    let steps: Vec<Value> = (0..10_000)
        .map(|i| {
            let mut s =
                json!({"step_id": format!("s{i}"), "action": "x", "agent_type": "builtin.echo"});
            s["depends_on"] = if i < 100 {
                json!([])
            } else {
                json!([format!("s{}", i - 100)])
            };
            s
        })
        .collect();
    let plan = json!({"plan_id": "big", "steps": steps});
    assert!(serde_json::to_vec(&plan).unwrap().len() < 1 << 20);
    // Registering 10,000 steps takes about a second in a debug build, more on a loaded
    // machine: this one request gets more time than the harness's client gives.
    let res = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(180))
        .build()
        .unwrap()
        .post(format!("{}/v1/plans", serve.base))
        .json(&plan)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{:?}", res.text().await);

    let mut b = Browser::start("plans_big").await;
    // Drawing a 10,000-step plan from a debug build's server takes seconds; on a loaded
    // machine, more than the harness's usual wait.
    b.patient(std::time::Duration::from_secs(90));
    b.open(&serve.base, "/#/plans").await;
    b.until_text("#plans-body", "the plan listed", |t| t.contains("big"))
        .await;
    let t0 = Instant::now();
    b.open(&serve.base, "/#/plans/big").await;
    b.until_text("#steps-page", "the first page of steps", |t| {
        t.contains("of 10,000")
    })
    .await;
    let first = t0.elapsed();
    eprintln!("10,000-step plan: first screen in {first:?} (debug build, navigation included)");
    let nodes = b
        .js(
            "return document.querySelectorAll('#graph-svg g.node').length",
            vec![],
        )
        .await;
    let rows = b
        .js(
            "return document.querySelectorAll('#steps-body tr').length",
            vec![],
        )
        .await;
    assert!(nodes.as_u64().unwrap() <= 60, "graph nodes drawn: {nodes}");
    assert_eq!(rows, json!(50));
    b.until_text("#graph", "the levels counted", |t| {
        t.contains("10,000 steps in 100 levels")
    })
    .await;
    b.screenshot("first").await;

    // Find a step deep in the plan and select it: details, graph and URL follow.
    b.find("#steps-filter")
        .await
        .send_keys("s9950")
        .await
        .unwrap();
    b.until_text("#steps-page", "one match", |t| t == "1–1 of 1")
        .await;
    b.click("#steps-body a").await;
    b.until_text("#step-details h2", "s9950 selected", |t| {
        t.contains("s9950")
    })
    .await;
    b.find("#graph-svg g.node.selected[data-step='s9950']")
        .await;
    b.find("#graph-svg g.node[data-step='s9850']").await;
    let hash = b.js("return location.hash", vec![]).await;
    assert_eq!(hash, json!("#/plans/big/steps/s9950"));
    // Without the filter the list shows the selected step's page; then the page before.
    b.find("#steps-filter").await.clear().await.unwrap();
    b.js(
        "document.querySelector('#steps-filter').dispatchEvent(new Event('input'))",
        vec![],
    )
    .await;
    b.until_text("#steps-page", "the selected step's page", |t| {
        t == "9,951–10,000 of 10,000"
    })
    .await;
    b.find("#steps-body tr.selected[data-step='s9950']").await;
    b.click_until("#steps-prev", "#steps-page", "the page before", |t| {
        t == "9,901–9,950 of 10,000"
    })
    .await;
    b.screenshot("selected").await;
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_plan_page_keeps_up_until_the_end() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&["--no-auth"]);
    // 240 steps in 8 independent chains of 30, 8 at a time: a steady stream of events.
    let steps: Vec<Value> = (0..240)
        .map(|i| {
            let deps = if i < 8 {
                json!([])
            } else {
                json!([format!("w{}", i - 8)])
            };
            json!({"step_id": format!("w{i}"), "action": "work", "agent_type": "builtin.sleep",
                   "params": {"ms": 15}, "depends_on": deps})
        })
        .collect();
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "busy", "max_parallel": 8, "steps": steps}),
        )
        .await;
    let b = Browser::start("plans_busy").await;
    b.open(&serve.base, "/#/plans/busy/steps/w100").await;
    b.until_text("#step-details h2", "the step shown", |t| t.contains("w100"))
        .await;
    // The keyboard focus on a graph node survives the redraws that follow every refresh.
    b.js(
        "document.querySelector(\"#graph-svg g.node[data-step='w108']\").focus()",
        vec![],
    )
    .await;
    serve.post("/v1/plans/busy/start", json!({})).await;
    b.until_text("#plan-header h1", "running on the page", |t| {
        t.contains("running") || t.contains("completed")
    })
    .await;
    b.screenshot("running").await;
    b.until_text("#plan-progress", "every step done on the page", |t| {
        t.contains("240/240 steps done")
    })
    .await;
    b.until_text("#plan-header h1", "completed on the page", |t| {
        t.contains("completed")
    })
    .await;
    let focused = b
        .js(
            "const a = document.activeElement; \
             return a.closest('#graph') ? a.dataset.step : a.tagName",
            vec![],
        )
        .await;
    assert_eq!(focused, json!("w108"), "the focus stayed on the node");
    // The selected step's details and the timeline's rows caught up too.
    b.until_text("#step-details h2", "w100 completed", |t| {
        t.contains("completed")
    })
    .await;
    let bars = b
        .js(
            "return document.querySelectorAll('#timeline-svg rect.bar.completed').length",
            vec![],
        )
        .await;
    assert_eq!(bars, json!(50), "one completed bar per row of the page");
    // More than 60 steps: the graph is drawn around the selection.
    b.find("#graph-svg g.node.selected[data-step='w100']").await;
    b.find("#graph-svg g.node[data-step='w84']").await;
    b.find("#graph-svg g.node[data-step='w116']").await;
    b.screenshot("done").await;
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_resumes_from_the_last_event_id() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&["--no-auth"]);
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "res-1", "steps": [
                {"step_id": "a", "action": "wait", "agent_type": "builtin.latch", "params": {"name": "ra"}},
                {"step_id": "b", "action": "wait", "agent_type": "builtin.latch", "params": {"name": "rb"}}
            ]}),
        )
        .await;
    serve.post("/v1/plans/res-1/start", json!({})).await;
    let b = Browser::start("plans_resume").await;
    b.open(&serve.base, "/#/plans").await;
    b.until_text("#plans-body", "the plan listed", |t| t.contains("res-1"))
        .await;
    // The page's own `fetch`, wrapped so the test can cut the plan's stream as a network
    // failure would, and see the header each (re)connection sends.
    b.js(
        "window.__streams = []; window.__lastIds = []; \
         const orig = window.fetch.bind(window); \
         window.fetch = (url, init = {}) => { \
           if (String(url).includes('/v1/plans/res-1/events/stream')) { \
             const c = new AbortController(); \
             if (init.signal) init.signal.addEventListener('abort', () => c.abort()); \
             window.__streams.push(c); \
             window.__lastIds.push((init.headers || {})['Last-Event-ID'] || null); \
             return orig(url, { ...init, signal: c.signal }); \
           } \
           return orig(url, init); \
         }; \
         window.__drop = () => { for (const c of window.__streams) c.abort(); window.__streams = []; };",
        vec![],
    )
    .await;
    b.click("#plans-body a[href='#/plans/res-1']").await;
    b.until_text("#steps-body tr[data-step='a']", "a running", |t| {
        t.contains("running")
    })
    .await;
    // Cut the stream, then make events while it is down.
    b.js("window.__drop()", vec![]).await;
    serve.release("ra");
    b.until_text(
        "#steps-body tr[data-step='a']",
        "a completed after the cut",
        |t| t.contains("completed"),
    )
    .await;
    b.until_text("#steps-body tr[data-step='b']", "b running", |t| {
        t.contains("running")
    })
    .await;
    let ids = b.js("return window.__lastIds", vec![]).await;
    let ids: Vec<u64> = ids
        .as_array()
        .expect("the connections seen")
        .iter()
        .map(|v| {
            v.as_str()
                .and_then(|s| s.parse().ok())
                .expect("a Last-Event-ID")
        })
        .collect();
    assert!(ids.len() >= 2, "the stream reconnected: {ids:?}");
    assert!(
        ids[1] >= ids[0] && ids[0] > 0,
        "resumed after the last event seen: {ids:?}"
    );
    // Still live after the reconnection.
    serve.release("rb");
    b.until_text("#plan-header h1", "completed", |t| t.contains("completed"))
        .await;
    b.finish().await;
}

/// Whether the selected step's "Definition" section is open.
const DEFINITION_OPEN: &str = "const d = [...document.querySelectorAll('#step-details details')]\
    .find((x) => x.querySelector('summary').textContent === 'Definition'); return !!(d && d.open)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_section_opened_in_the_step_details_stays_open_while_the_plan_moves_on() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&["--no-auth"]);
    let latch = |id: &str| {
        json!({"step_id": id, "action": "wait", "agent_type": "builtin.latch",
               "params": {"name": id}, "depends_on": []})
    };
    serve
        .post(
            "/v1/plans",
            json!({"plan_id": "reading", "query": "read while it runs",
                   "steps": [latch("a"), latch("b"),
                             {"step_id": "c", "action": "say", "agent_type": "builtin.echo",
                              "params": {"said": "both done"}, "depends_on": ["a", "b"]}]}),
        )
        .await;
    serve.post("/v1/plans/reading/start", json!({})).await;
    serve
        .until("/v1/plans/reading", "a and b running", |v| {
            v["running_steps"] == json!(["a", "b"])
        })
        .await;
    let b = Browser::start("details_open").await;
    b.open(&serve.base, "/#/plans/reading/steps/c").await;
    b.until_text("#step-details h2", "c's details", |t| t.contains("c"))
        .await;
    b.click("#step-details > details > summary").await;
    assert_eq!(b.js(DEFINITION_OPEN, vec![]).await, json!(true));

    // b ends: events about another step (c now waits for a alone) leave the section open.
    serve.release("b");
    b.find("#steps-body tr[data-step=b] .state.completed").await;
    assert_eq!(
        b.js(DEFINITION_OPEN, vec![]).await,
        json!(true),
        "an event about another step closed the section being read"
    );
    // a ends and c runs: c's own news redraws its details, and the section stays open.
    serve.release("a");
    b.find("#steps-body tr[data-step=c] .state.completed").await;
    b.until_text("#step-details h2", "c completed", |t| {
        t.contains("completed")
    })
    .await;
    assert_eq!(
        b.js(DEFINITION_OPEN, vec![]).await,
        json!(true),
        "the step's own news closed the section being read"
    );
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_focused_plan_link_keeps_the_focus_when_the_list_is_read_again() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&["--no-auth"]);
    for id in ["near-1", "near-2"] {
        serve.post("/v1/plans", plan_with_latch(id, "near")).await;
    }
    let b = Browser::start("plans_focus").await;
    b.open(&serve.base, "/#/plans").await;
    b.until_text("#plans-live", "the stream is live", |t| t.contains("live"))
        .await;
    let link = "#plans-body tr[data-plan='near-2'] a";
    b.find(link).await;
    b.js(
        "document.querySelector(arguments[0]).focus()",
        vec![json!(link)],
    )
    .await;
    // Another plan starts: the list is read again and drawn anew.
    serve.post("/v1/plans/near-1/start", json!({})).await;
    b.until_text(
        "#plans-body tr[data-plan='near-1']",
        "near-1 running",
        |t| t.contains("running"),
    )
    .await;
    let focused = b
        .js(
            "const a = document.activeElement; return a ? a.getAttribute('href') : null",
            vec![],
        )
        .await;
    assert_eq!(
        focused,
        json!("#/plans/near-2"),
        "reading the list again took the focus away"
    );
    serve.release("near");
    b.finish().await;
}
