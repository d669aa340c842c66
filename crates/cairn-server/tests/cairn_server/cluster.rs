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
