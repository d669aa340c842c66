//! `/v1/templates`: push (new and identical), refusals with every fault named, instantiation
//! with defaults and a pinned version, deletion, and the roles of each route.

use cairn_server::{Role, ServerOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{request, within, TestServer};

fn research(description: &str) -> Value {
    json!({
        "name": "research",
        "description": description,
        "parameters": {
            "type": "object",
            "required": ["topic"],
            "properties": {
                "topic": {"type": "string", "minLength": 1},
                "depth": {"type": "integer", "minimum": 1, "maximum": 5, "default": 2},
                "deep": {"type": "boolean", "default": false}
            },
            "additionalProperties": false
        },
        "plan": {
            "query": "research",
            "steps": [
                {"step_id": "search", "action": "search", "agent_type": "builtin.echo",
                 "params": {"q": "{{ inputs.topic }}", "n": "{{ inputs.depth }}"}},
                {"step_id": "dig", "action": "dig", "agent_type": "builtin.echo", "when": "inputs.deep"}
            ]
        }
    })
}

fn faults(body: &Value) -> Vec<String> {
    body["error"]["faults"]
        .as_array()
        .unwrap_or_else(|| panic!("no faults in {body}"))
        .iter()
        .map(|f| {
            format!(
                "{}: {}",
                f["path"].as_str().unwrap(),
                f["message"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_list_show_instantiate_and_delete() {
    let s = TestServer::start(ServerOptions::default()).await;
    let http = reqwest::Client::new();
    let op = s.token("olga", Role::Operator).await;
    let base = format!("{}/v1/templates", s.base());

    // A new template is version 1 (201); the same content again, keys in another order, makes
    // none (200); a change makes version 2.
    let (status, body) =
        request(&http, Method::POST, &base, Some(&op), Some(&research("v1"))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (body["version"].as_u64(), body["created"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(body["created_by"], "olga");
    let reordered: serde_json::Map<String, Value> = ["plan", "parameters", "description", "name"]
        .iter()
        .map(|k| (k.to_string(), research("v1")[k].clone()))
        .collect();
    let (status, body) = request(
        &http,
        Method::POST,
        &base,
        Some(&op),
        Some(&Value::Object(reordered)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["version"].as_u64(), body["created"].as_bool()),
        (Some(1), Some(false))
    );
    let (status, body) =
        request(&http, Method::POST, &base, Some(&op), Some(&research("v2"))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["version"], 2);

    let (status, list) = request(&http, Method::GET, &base, Some(&op), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["version"], 2);
    let (status, detail) = request(
        &http,
        Method::GET,
        &format!("{base}/research"),
        Some(&op),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["latest"]["description"], "v2");
    assert_eq!(
        detail["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
    let (status, v1) = request(
        &http,
        Method::GET,
        &format!("{base}/research/versions/1"),
        Some(&op),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v1}");
    assert_eq!(v1["description"], "v1");
    for missing in ["research/versions/9", "research/versions/x", "nope"] {
        let (status, body) = request(
            &http,
            Method::GET,
            &format!("{base}/{missing}"),
            Some(&op),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{missing}: {body}");
    }

    // Instantiate the latest with defaults; the plan records its template and inputs and runs.
    let (status, plan) = request(
        &http,
        Method::POST,
        &format!("{base}/research/instantiate"),
        Some(&op),
        Some(&json!({"inputs": {"topic": "rust"}, "plan_id": "r-1"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{plan}");
    assert_eq!(plan["plan_id"], "r-1");
    assert_eq!(plan["template"], json!({"name": "research", "version": 2}));
    assert_eq!(
        plan["inputs"],
        json!({"topic": "rust", "depth": 2, "deep": false})
    );
    assert_ne!(plan["state"], "idle", "started by default");
    let settled = within("r-1 to settle", s.engine.wait_settled("r-1"))
        .await
        .unwrap();
    assert_eq!(settled.status, cairn_core::PlanStatus::Completed);
    // builtin.echo answers its rendered params.
    let search = settled.step("search").unwrap();
    assert_eq!(search.rec.output, Some(json!({"q": "rust", "n": 2})));
    assert_eq!(
        settled.step("dig").unwrap().rec.status,
        cairn_core::StepStatus::Skipped
    );

    // A pinned version, not started.
    let (status, plan) = request(
        &http,
        Method::POST,
        &format!("{base}/research/instantiate"),
        Some(&op),
        Some(&json!({"inputs": {"topic": "go", "deep": true}, "version": 1, "start": false})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{plan}");
    assert_eq!(plan["template"]["version"], 1);
    assert_eq!(plan["state"], "idle");

    // Bad inputs: every failing input named, nothing registered.
    let (status, body) = request(
        &http,
        Method::POST,
        &format!("{base}/research/instantiate"),
        Some(&op),
        Some(&json!({"inputs": {"depth": 0, "deep": "yes", "colour": "red"}, "plan_id": "bad"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_inputs");
    let paths: Vec<String> = faults(&body)
        .iter()
        .map(|f| f.split(':').next().unwrap().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "inputs.colour",
            "inputs.deep",
            "inputs.depth",
            "inputs.topic"
        ],
        "{body}"
    );
    let (status, _) = request(
        &http,
        Method::GET,
        &format!("{}/v1/plans/bad", s.base()),
        Some(&op),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An unknown field of the request body is refused too.
    let (status, body) = request(
        &http,
        Method::POST,
        &format!("{base}/research/instantiate"),
        Some(&op),
        Some(&json!({"input": {"topic": "x"}})),
    )
    .await;
    assert!(status.is_client_error(), "{status} {body}");

    // Delete (admin): hidden from the list and from new plans, every version kept.
    let admin = s.token("ada", Role::Admin).await;
    let (status, _) = request(
        &http,
        Method::DELETE,
        &format!("{base}/research"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, list) = request(&http, Method::GET, &base, Some(&op), None).await;
    assert!(list["items"].as_array().unwrap().is_empty(), "{list}");
    let (status, body) = request(
        &http,
        Method::POST,
        &format!("{base}/research/instantiate"),
        Some(&op),
        Some(&json!({"inputs": {"topic": "x"}})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deleted"),
        "{body}"
    );
    let (status, v1) = request(
        &http,
        Method::GET,
        &format!("{base}/research/versions/1"),
        Some(&op),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(v1["deleted_at"].is_string(), "{v1}");
    let (status, _) = request(
        &http,
        Method::DELETE,
        &format!("{base}/research"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "deleted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_templates_are_refused_naming_each_fault() {
    let s = TestServer::start(ServerOptions::default()).await;
    let http = reqwest::Client::new();
    let op = s.token("olga", Role::Operator).await;
    let base = format!("{}/v1/templates", s.base());

    let mut undeclared = research("x");
    undeclared["plan"]["steps"][0]["params"]["region"] = json!("{{ inputs.region }}");
    undeclared["plan"]["steps"][1]["when"] = json!("inputs.lang == 'en'");
    let (status, body) = request(&http, Method::POST, &base, Some(&op), Some(&undeclared)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_template");
    let all = faults(&body);
    assert_eq!(
        all,
        [
            "plan.steps.search.params.region: reads `inputs.region`, which is not declared in parameters.properties",
            "plan.steps.dig.when: reads `inputs.lang`, which is not declared in parameters.properties",
        ]
    );

    let mut bad_plan = research("x");
    bad_plan["plan"]["steps"][1]["depends_on"] = json!(["nope"]);
    bad_plan["plan"]["steps"][0]["timeout_ms"] = json!(0);
    let (status, body) = request(&http, Method::POST, &base, Some(&op), Some(&bad_plan)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let all = faults(&body);
    assert!(
        all.iter()
            .any(|f| f.starts_with("plan.steps.dig.depends_on: unknown step \"nope\"")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|f| f.starts_with("plan.steps.search.timeout_ms:")),
        "{all:?}"
    );

    let (status, body) = request(
        &http,
        Method::POST,
        &base,
        Some(&op),
        Some(&json!({"name": "t"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(faults(&body), ["plan: missing: a template needs a plan"]);
    let (_, list) = request(&http, Method::GET, &base, Some(&op), None).await;
    assert!(
        list["items"].as_array().unwrap().is_empty(),
        "nothing stored: {list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_read_operators_write_admins_delete() {
    let s = TestServer::start(ServerOptions::default()).await;
    let http = reqwest::Client::new();
    let viewer = s.token("vic", Role::Viewer).await;
    let op = s.token("olga", Role::Operator).await;
    let worker = s.token("wes", Role::Worker).await;
    let base = format!("{}/v1/templates", s.base());

    let (status, _) = request(
        &http,
        Method::POST,
        &base,
        Some(&viewer),
        Some(&research("x")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = request(&http, Method::POST, &base, Some(&op), Some(&research("x"))).await;
    assert_eq!(status, StatusCode::CREATED);
    for url in [
        base.clone(),
        format!("{base}/research"),
        format!("{base}/research/versions/1"),
    ] {
        let (status, body) = request(&http, Method::GET, &url, Some(&viewer), None).await;
        assert_eq!(status, StatusCode::OK, "{url}: {body}");
        let (status, _) = request(&http, Method::GET, &url, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{url}");
        let (status, _) = request(&http, Method::GET, &url, Some(&worker), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{url} as a worker");
    }
    let run = format!("{base}/research/instantiate");
    let body = json!({"inputs": {"topic": "x"}, "start": false});
    let (status, _) = request(&http, Method::POST, &run, Some(&viewer), Some(&body)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = request(&http, Method::POST, &run, Some(&op), Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = request(
        &http,
        Method::DELETE,
        &format!("{base}/research"),
        Some(&op),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "deleting takes an admin");
}

/// `GET /v1/templates/{name}/diff` and the `upgrade` intervention over HTTP: the diff in the
/// plans' format (parameters too), 404/422 for unknown versions or a bad query; an upgrade
/// refused with 409 naming the started step (the failed record in the body), then applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_diffs_and_upgrades() {
    let s = TestServer::start(ServerOptions::default()).await;
    let http = reqwest::Client::new();
    let op = s.token("olga", Role::Operator).await;
    let viewer = s.token("vic", Role::Viewer).await;
    let base = format!("{}/v1/templates", s.base());
    let hold = |action: &str| json!({"step_id": "hold", "action": action, "agent_type": "builtin.sleep", "params": {"ms": 600_000}});
    let mut v1 = research("v1");
    v1["plan"]["steps"]
        .as_array_mut()
        .unwrap()
        .insert(0, hold("hold"));
    let mut v2 = v1.clone();
    v2["parameters"]["properties"]["lang"] = json!({"type": "string", "default": "en"});
    v2["plan"]["steps"][1]["params"]["lang"] = json!("{{ inputs.lang }}");
    let mut v3 = v2.clone();
    v3["plan"]["steps"][0] = hold("hold_longer");
    for v in [&v1, &v2, &v3] {
        let (status, body) = request(&http, Method::POST, &base, Some(&op), Some(v)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    let (status, body) = request(
        &http,
        Method::GET,
        &format!("{base}/research/diff?from=1&to=2"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["from"].as_u64(), body["to"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(body["diff"]["changed"][0]["step_id"], "search");
    assert_eq!(
        body["diff"]["changed"][0]["fields"][0]["path"],
        "params.lang"
    );
    assert_eq!(body["diff"]["parameters"][0]["name"], "lang");
    assert!(body["diff"]["parameters"][0].get("before").is_none());
    // Defaults: the latest against the one before.
    let (_, body) = request(
        &http,
        Method::GET,
        &format!("{base}/research/diff"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(
        (body["from"].as_u64(), body["to"].as_u64()),
        (Some(2), Some(3))
    );
    for (query, want, code) in [
        (
            "from=9",
            StatusCode::NOT_FOUND,
            "template_version_not_found",
        ),
        ("to=0", StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (
            "from=two",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
    ] {
        let (status, body) = request(
            &http,
            Method::GET,
            &format!("{base}/research/diff?{query}"),
            Some(&viewer),
            None,
        )
        .await;
        assert_eq!(status, want, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
    }
    let (status, body) = request(
        &http,
        Method::GET,
        &format!("{base}/nope/diff"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // A plan of version 1, started in the same call.
    let (status, plan) = request(
        &http,
        Method::POST,
        &format!("{base}/research/instantiate"),
        Some(&op),
        Some(&json!({"inputs": {"topic": "rust"}, "version": 1, "plan_id": "up"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{plan}");
    assert_eq!(plan["state"], "running");
    let ivs = format!("{}/v1/plans/up/interventions", s.base());
    // Version 3 changes the running step: 409, naming it.
    let (status, body) = request(
        &http,
        Method::POST,
        &ivs,
        Some(&op),
        Some(&json!({"type": "upgrade", "template_version": 3})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("step hold is running"), "{message}");
    assert_eq!(body["error"]["intervention"]["status"], "failed");
    // A viewer may not; a malformed one is a 400 naming the field.
    let (status, _) = request(
        &http,
        Method::POST,
        &ivs,
        Some(&viewer),
        Some(&json!({"type": "upgrade", "template_version": 2})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = request(
        &http,
        Method::POST,
        &ivs,
        Some(&op),
        Some(&json!({"type": "upgrade", "version": 2})),
    )
    .await;
    assert!(status.is_client_error(), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("version"),
        "{body}"
    );
    // Version 2: a dry run (200), then applied (201) with the expected version.
    let (status, body) = request(
        &http,
        Method::POST,
        &ivs,
        Some(&op),
        Some(&json!({"type": "upgrade", "template_version": 2, "dry_run": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "would_apply");
    let (status, body) = request(
        &http,
        Method::POST,
        &ivs,
        Some(&op),
        Some(&json!({"type": "upgrade", "template_version": 2, "expected_version": 1, "user": "mallory"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["user"], "olga");
    assert_eq!(body["plan_version"], 2);
    let (_, snap) = request(
        &http,
        Method::GET,
        &format!("{}/v1/plans/up/snapshot", s.base()),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(snap["plan"]["template"]["version"], 2);
    assert_eq!(snap["plan"]["inputs"]["lang"], "en");
    let (_, versions) = request(
        &http,
        Method::GET,
        &format!("{}/v1/plans/up/versions", s.base()),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(versions["versions"][1]["cause"]["type"], "upgrade");
    within(
        "cancel",
        request(
            &http,
            Method::POST,
            &format!("{}/v1/plans/up/cancel", s.base()),
            Some(&op),
            Some(&json!({})),
        ),
    )
    .await;
}
