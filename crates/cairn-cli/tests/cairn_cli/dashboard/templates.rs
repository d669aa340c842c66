//! The Templates page: the list, a template's versions, and the start form generated from the
//! parameter schema (typed fields, required marks, defaults); a refused start shows every
//! failing input; a good one opens the new plan.

use serde_json::json;

use super::harness::{skipped, Browser, Serve};

fn research(description: &str) -> serde_json::Value {
    json!({
        "name": "research",
        "description": description,
        "parameters": {
            "type": "object",
            "required": ["topic", "style"],
            "properties": {
                "topic": {"type": "string", "description": "what to research"},
                "depth": {"type": "integer", "minimum": 1, "maximum": 5, "default": 2},
                "deep": {"type": "boolean", "default": true},
                "style": {"enum": ["brief", "detailed"]}
            }
        },
        "plan": {"steps": [
            {"step_id": "search", "action": "search", "agent_type": "builtin.echo",
             "params": {"q": "{{ inputs.topic }}", "n": "{{ inputs.depth }}", "s": "{{ inputs.style }}"}},
            {"step_id": "dig", "action": "dig", "agent_type": "builtin.echo", "when": "inputs.deep"}
        ]}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_a_plan_from_a_template_form() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&[]);
    serve.post("/v1/templates", research("first")).await;
    serve.post("/v1/templates", research("second")).await;
    let admin = serve.admin.clone().expect("an admin token");
    let b = Browser::start("templates").await;
    b.sign_in(&serve.base, &admin).await;
    b.click("#nav a[data-section=templates]").await;
    b.until_text("#templates-body", "the template listed", |t| {
        t.contains("research") && t.contains("second")
    })
    .await;
    b.click("#templates-body a").await;
    b.until_text("#template-versions", "both versions", |t| {
        t.contains("version 2") && t.contains("version 1")
    })
    .await;
    // The versions compared side by side: the one before the shown one against it by default.
    b.until_text("#template-diff", "the diff of the two versions", |t| {
        t.contains("Version 1 → 2")
    })
    .await;

    // The form follows the schema: types, required marks, defaults.
    let kinds = b
        .js(
            "return ['topic','depth','deep','style'].map(n => { const e = document.getElementById('input-' + n); \
             return [e.tagName, e.type, e.type === 'checkbox' ? String(e.checked) : e.value]; });",
            vec![],
        )
        .await;
    assert_eq!(
        kinds,
        json!([
            ["INPUT", "text", ""],
            ["INPUT", "number", "2"],
            ["INPUT", "checkbox", "true"],
            ["SELECT", "select-one", ""]
        ])
    );
    let required = b
        .js(
            "return [...document.querySelectorAll('#start-form label')].filter(l => l.querySelector('abbr.required')).map(l => l.dataset.input);",
            vec![],
        )
        .await;
    assert_eq!(required, json!(["topic", "style"]));
    b.screenshot("form").await;

    // The server's refusal lists every failing input (the depth is past its maximum).
    b.find("#input-topic")
        .await
        .send_keys("moss")
        .await
        .unwrap();
    b.js(
        "const d = document.getElementById('input-depth'); d.value = '9'; \
         const s = document.getElementById('input-style'); s.value = s.options[1].value;",
        vec![],
    )
    .await;
    b.click("#start").await;
    b.until_text("#start-error", "the refusal", |t| {
        t.contains("inputs.depth")
    })
    .await;

    b.js(
        "document.getElementById('input-depth').value = '3';",
        vec![],
    )
    .await;
    b.find("#start-plan-id")
        .await
        .send_keys("from-form")
        .await
        .unwrap();
    b.click("#start").await;
    b.until_text("#main", "the new plan's page", |t| t.contains("from-form"))
        .await;
    assert_eq!(
        b.js("return location.hash;", vec![]).await,
        json!("#/plans/from-form")
    );
    let plan = serve
        .until("/v1/plans/from-form", "the plan completes", |v| {
            v["state"] == "completed"
        })
        .await;
    assert_eq!(plan["template"], json!({"name": "research", "version": 2}));
    assert_eq!(
        plan["inputs"],
        json!({"topic": "moss", "depth": 3, "deep": true, "style": "brief"})
    );
    b.screenshot("started").await;
    assert!(b.console_errors().await.is_empty());
    b.finish().await;
}
