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
