//! The cluster surface of one server: `GET /v1/nodes`, the internal forwarding endpoint and its
//! secret, and `HttpPeers` reaching a real server over loopback.

use std::sync::Arc;

use cairn_engine::cluster::{PeerError, Peers};
use cairn_engine::EngineOptions;
use cairn_server::cluster::{HttpPeers, PeerOptions, FORWARD_PATH, SECRET_HEADER};
use cairn_server::{Role, ServerOptions};
use cairn_store::Nodes;
use cairn_store_sqlite::{SqliteOptions, SqliteStore};
use reqwest::{Method, StatusCode};

use crate::common::{request, within, TestServer};

fn node_opts(node_id: &str) -> ServerOptions {
    ServerOptions {
        engine: EngineOptions {
            node_id: node_id.into(),
            lease_ms: 3_000,
            ..EngineOptions::default()
        },
        ..ServerOptions::default()
    }
}

/// Waits until the server's first heartbeat is in the store (it is recorded by a task).
async fn listed(s: &TestServer, node_id: &str) {
    within(&format!("node {node_id} listed"), async {
        loop {
            let nodes = s.store.list_nodes().await.unwrap();
            if nodes.iter().any(|n| n.node_id == node_id) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn nodes_lists_this_node_to_viewers() {
    let s = TestServer::start(node_opts("node-a")).await;
    listed(&s, "node-a").await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/nodes", s.base());
    let viewer = s.token("v", Role::Viewer).await;
    let (status, body) = request(&http, Method::GET, &url, Some(&viewer), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let nodes = body["nodes"].as_array().expect("a node array");
    assert_eq!(nodes.len(), 1, "{body}");
    let n = &nodes[0];
    assert_eq!(n["node_id"], "node-a");
    assert_eq!(n["address"], s.base());
    assert_eq!(n["self"], true);
    assert_eq!(n["alive"], true);
    assert_eq!(n["plans_owned"], 0);
    assert!(
        n["heartbeat_at"].is_string() && n["started_at"].is_string(),
        "{n}"
    );

    // A worker token is not a viewer; no token at all is refused before that.
    let worker = s.token("w", Role::Worker).await;
    let (status, body) = request(&http, Method::GET, &url, Some(&worker), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = request(&http, Method::GET, &url, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn the_forwarding_endpoint_wants_the_cluster_secret() {
    let s = TestServer::start(node_opts("node-a")).await;
    let http = reqwest::Client::new();
    let url = format!("{}{FORWARD_PATH}", s.base());
    let secret = s.store.cluster_secret().await.unwrap();
    let request_body = br#"{"not":"a request this build knows"}"#.to_vec();

    // No secret, a bearer token instead of it, and a wrong one: 401 with a JSON error.
    let admin = s.token("a", Role::Admin).await;
    for (what, header) in [
        ("none", None),
        ("wrong", Some("0".repeat(secret.len()))),
        ("a prefix", Some(secret[..secret.len() - 1].to_owned())),
    ] {
        let mut req = http
            .post(&url)
            .bearer_auth(&admin)
            .body(request_body.clone());
        if let Some(h) = &header {
            req = req.header(SECRET_HEADER, h);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "secret {what}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "unauthorized",
            "secret {what}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(SECRET_HEADER),
            "{body}"
        );
    }

    // The right secret: the engine's own answer, byte for byte.
    let resp = http
        .post(&url)
        .header(SECRET_HEADER, &secret)
        .body(request_body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let got = resp.bytes().await.unwrap();
    assert_eq!(&got[..], &s.engine.serve_forwarded(&request_body).await[..]);
}

#[tokio::test]
async fn http_peers_reach_the_owner_and_say_when_they_cannot() {
    let s = TestServer::start(node_opts("owner")).await;
    listed(&s, "owner").await;
    let peers = HttpPeers::new(s.store.clone(), "asker", PeerOptions::default()).unwrap();
    let request_body = br#"{"kind":"nothing this build knows"}"#.to_vec();

    let got = within(
        "a forwarded request",
        peers.forward("owner", request_body.clone()),
    )
    .await
    .expect("the owner answers");
    assert_eq!(got, s.engine.serve_forwarded(&request_body).await);

    // A node the store does not know.
    let err = peers
        .forward("nobody", request_body.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PeerError::Unreachable { node, .. } if node == "nobody"),
        "{err:?}"
    );

    // A node listed at an address where nothing listens any more.
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    s.store
        .heartbeat("gone", Some(&format!("http://{gone}")), 1)
        .await
        .unwrap();
    let err = within(
        "a refused connection",
        peers.forward("gone", request_body.clone()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, PeerError::Unreachable { node, .. } if node == "gone"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_node_of_another_store_is_refused() {
    let s = TestServer::start(node_opts("owner")).await;
    // Another store: its own secret, and a node list that points at `s`.
    let dir = tempfile::tempdir().unwrap();
    let other = Arc::new(
        SqliteStore::open(&dir.path().join("other.db"), SqliteOptions::default()).unwrap(),
    );
    other.heartbeat("owner", Some(&s.base()), 1).await.unwrap();
    let peers = HttpPeers::new(other, "stranger", PeerOptions::default()).unwrap();
    let err = within("a refused request", peers.forward("owner", b"{}".to_vec()))
        .await
        .unwrap_err();
    match err {
        PeerError::Refused { node, reason } => {
            assert_eq!(node, "owner");
            assert!(reason.contains("401"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn the_forwarding_endpoint_is_not_in_the_public_document() {
    let doc = serde_json::to_value(cairn_server::document()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.contains_key("/v1/nodes"));
    assert!(!paths.contains_key(FORWARD_PATH));
}

// ---- two nodes on one PostgreSQL schema -------------------------------------------------------

/// A webhook receiver on a loopback port: every delivery's `X-Cairn-Delivery` id, in order.
async fn receiver() -> (String, Arc<std::sync::Mutex<Vec<u64>>>) {
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = {
        let got = got.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let got = got.clone();
                async move {
                    let id = headers["x-cairn-delivery"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    got.lock().unwrap().push(id);
                    StatusCode::OK
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), got)
}

/// A node: `cairn serve`'s wiring on its own connection to `schema`, with the webhook `hook`;
/// answers its base URL and engine, and a channel that stops it.
async fn pg_node(
    url: &str,
    schema: &str,
    node_id: &str,
    hook: Option<&str>,
) -> (
    String,
    cairn_engine::Engine,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let store = cairn_store_postgres::PgStore::connect(
        url,
        cairn_store_postgres::PgOptions {
            pool_size: 4,
            schema: Some(schema.to_owned()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    store.hold_node(node_id).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = cairn_server::Server::build(
        Arc::new(store),
        ServerOptions {
            engine: EngineOptions {
                node_id: node_id.into(),
                lease_ms: 1_000,
                ..EngineOptions::default()
            },
            webhooks: hook
                .map(|hook| cairn_engine::config::WebhookConfig {
                    url: hook.to_owned(),
                    events: vec!["step_completed".into()],
                    secret: None,
                })
                .into_iter()
                .collect(),
            advertise: Some(format!("http://{addr}")),
            ..ServerOptions::default()
        },
    )
    .await
    .unwrap();
    let engine = server.engine().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    (format!("http://{addr}"), engine, stop, task)
}

fn echo_plan(id: &str, steps: usize) -> cairn_core::Plan {
    let mut yaml = format!("plan_id: {id}\nquery: q\nsteps:\n");
    for i in 0..steps {
        yaml.push_str(&format!(
            "  - step_id: s{i}\n    action: a\n    agent_type: builtin.echo\n"
        ));
    }
    cairn_core::Plan::parse(&yaml, cairn_core::Format::Yaml).unwrap()
}

/// Waits until the receiver got every id in `want`.
async fn delivered(got: &std::sync::Mutex<Vec<u64>>, want: &std::collections::BTreeSet<u64>) {
    within("every wanted event delivered", async {
        loop {
            let have: std::collections::BTreeSet<u64> =
                got.lock().unwrap().iter().copied().collect();
            if have.is_superset(want) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The global ids of a plan's `step_completed` events.
async fn completed_ids(
    engine: &cairn_engine::Engine,
    plan: &str,
) -> std::collections::BTreeSet<u64> {
    engine
        .events(plan, 0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind.type_name() == "step_completed")
        .map(|e| e.id)
        .collect()
}

/// A schema no other test uses.
fn unique_schema(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    format!(
        "{prefix}_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Commands sent over HTTP to a node that does not drive the plan are carried out by the one
/// that does, through `HttpPeers` and the forwarding endpoint, and answered with its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_to_another_node_is_forwarded_to_the_owner() {
    let Ok(url) = std::env::var("CAIRN_TEST_DATABASE_URL") else {
        eprintln!("skipped: CAIRN_TEST_DATABASE_URL is not set (no PostgreSQL to test with)");
        return;
    };
    let schema = unique_schema("cairn_fwd");
    let (base_a, a, stop_a, task_a) = pg_node(&url, &schema, "fwd-a", None).await;
    let (base_b, b, stop_b, task_b) = pg_node(&url, &schema, "fwd-b", None).await;
    let token = cairn_server::auth::create_token(&**a.store(), "op", Role::Operator)
        .await
        .unwrap()
        .token;
    let http = reqwest::Client::new();
    // Registered and started on a: a drives it, held before its second step.
    let plan = serde_json::json!({"plan_id": "fwd", "query": "q", "steps": [
        {"step_id": "s1", "action": "a", "agent_type": "builtin.echo"},
        {"step_id": "s2", "action": "a", "agent_type": "builtin.echo", "pause_before": true,
         "depends_on": ["s1"]}]});
    let (status, body) = request(
        &http,
        Method::POST,
        &format!("{base_a}/v1/plans"),
        Some(&token),
        Some(&plan),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = request(
        &http,
        Method::POST,
        &format!("{base_a}/v1/plans/fwd/start"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    within("the breakpoint", async {
        loop {
            let (_, v) = request(
                &http,
                Method::GET,
                &format!("{base_b}/v1/plans/fwd"),
                Some(&token),
                None,
            )
            .await;
            if v["state"] == "paused" {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let served_before = a.node_stats();
    let forwarded_before = b.node_stats().forwarded_total;

    // Through b: an intervention and a resume, answered with a's results.
    let skip = serde_json::json!({"type": "skip_step", "step_id": "s2", "reason": "via b"});
    let (status, body) = request(
        &http,
        Method::POST,
        &format!("{base_b}/v1/plans/fwd/interventions"),
        Some(&token),
        Some(&skip),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "applied", "{body}");
    let (status, body) = request(
        &http,
        Method::POST,
        &format!("{base_b}/v1/plans/fwd/resume"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A refusal comes back as the owner's refusal, not as "not owner".
    let (status, body) = request(
        &http,
        Method::POST,
        &format!("{base_b}/v1/plans/fwd/interventions"),
        Some(&token),
        Some(&skip),
    )
    .await;
    assert!(status.is_client_error(), "{status} {body}");
    assert_ne!(body["error"]["code"], "not_owner", "{body}");

    within("the plan completes", a.wait_settled("fwd"))
        .await
        .unwrap();
    let (_, v) = request(
        &http,
        Method::GET,
        &format!("{base_b}/v1/plans/fwd"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(v["state"], "completed", "{v}");
    assert!(b.node_stats().forwarded_total >= forwarded_before + 2);
    assert_eq!(
        a.node_stats().takeovers_total,
        served_before.takeovers_total,
        "no takeover: a was reachable"
    );
    let metrics = cairn_server::metrics::render();
    let served = metrics
        .lines()
        .find(|l| l.starts_with("cairn_cluster_forwards_served_total{node=\"fwd-a\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(served >= 2.0, "{metrics}");
    for (stop, task) in [(stop_a, task_a), (stop_b, task_b)] {
        stop.send(()).unwrap();
        within("a node stops", task).await.unwrap().unwrap();
    }
}

/// Two nodes with the same webhook: while both run, each event is delivered once (one node holds
/// the cursor's lease); once the first node stops, the second takes the lease over and delivers
/// what followed, from the durable cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_is_delivered_by_one_node_at_a_time() {
    let Ok(url) = std::env::var("CAIRN_TEST_DATABASE_URL") else {
        eprintln!("skipped: CAIRN_TEST_DATABASE_URL is not set (no PostgreSQL to test with)");
        return;
    };
    let schema = unique_schema("cairn_hook");
    let (hook, got) = receiver().await;
    let (_, a, stop_a, task_a) = pg_node(&url, &schema, "hook-a", Some(&hook)).await;
    let (_, b, stop_b, task_b) = pg_node(&url, &schema, "hook-b", Some(&hook)).await;

    a.register(echo_plan("p1", 5), "t").await.unwrap();
    a.start("p1", "t", None).await.unwrap();
    within("p1 settles", a.wait_settled("p1")).await.unwrap();
    let first = completed_ids(&a, "p1").await;
    assert_eq!(first.len(), 5);
    delivered(&got, &first).await;
    {
        let got = got.lock().unwrap();
        let mut seen = std::collections::HashSet::new();
        assert!(
            got.iter().all(|id| seen.insert(*id)),
            "an event was delivered twice while both nodes ran: {got:?}"
        );
    }

    // The first node goes; what follows reaches the receiver through the second.
    stop_a.send(()).unwrap();
    within("node a stops", task_a).await.unwrap().unwrap();
    b.register(echo_plan("p2", 5), "t").await.unwrap();
    b.start("p2", "t", None).await.unwrap();
    within("p2 settles", b.wait_settled("p2")).await.unwrap();
    let second = completed_ids(&b, "p2").await;
    assert_eq!(second.len(), 5);
    delivered(&got, &second).await;
    // In order: the first time each id arrives, ids increase.
    let got = got.lock().unwrap().clone();
    let mut firsts = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for id in got {
        if seen.insert(id) {
            firsts.push(id);
        }
    }
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{firsts:?}");
    stop_b.send(()).unwrap();
    within("node b stops", task_b).await.unwrap().unwrap();
}

/// `/metrics` carries this node's share, labelled with its id.
#[tokio::test]
async fn node_metrics_are_labelled_with_the_node_id() {
    let s = TestServer::start(ServerOptions {
        metrics_every: std::time::Duration::from_millis(50),
        ..node_opts("metrics-node")
    })
    .await;
    let http = reqwest::Client::new();
    let want = [
        r#"cairn_node_leases_held{node="metrics-node"}"#,
        r#"cairn_node_takeovers_total{node="metrics-node"} 0"#,
        r#"cairn_node_forwarded_total{node="metrics-node"} 0"#,
        r#"cairn_node_inbox_depth{node="metrics-node"}"#,
        r#"cairn_node_plan_loads_total{node="metrics-node"} 0"#,
        r#"cairn_cluster_nodes{node="metrics-node",alive="true"} 1"#,
    ];
    within("the node's metrics", async {
        loop {
            let text = http
                .get(format!("{}/metrics", s.base()))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if want.iter().all(|w| text.lines().any(|l| l.starts_with(w))) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}
