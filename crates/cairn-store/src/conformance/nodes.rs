//! Conformance of the nodes sharing a store: heartbeats, the plans each owns, the cluster
//! secret ([`crate::Nodes`]).

use super::*;

/// Runs every case of this module, each against a fresh store from `make`.
pub async fn run_all<S: Store, Fut: Future<Output = S>>(make: impl Fn() -> Fut) {
    case("nodes::nodes", Arc::new(make().await), nodes).await;
}

/// Heartbeats register nodes; `list_nodes` counts the live, unreleased leases of each.
pub async fn nodes(store: Arc<dyn Store>) {
    let t = wall_clock();
    assert!(store.list_nodes().await.unwrap().is_empty());
    store
        .heartbeat("node-a", Some("http://127.0.0.1:1"), 5)
        .await
        .unwrap();
    store.heartbeat("node-b", None, 6).await.unwrap();
    for id in ["a1", "a2", "b-released", "b-expired"] {
        store.create_plan(create(id, 1, 1)).await.unwrap();
    }
    store.claim("a1", "node-a", 60_000, t).await.unwrap();
    store.claim("a2", "node-a", 60_000, t).await.unwrap();
    let released = store
        .claim("b-released", "node-b", 60_000, t)
        .await
        .unwrap();
    store.release("b-released", &released).await.unwrap();
    store.claim("b-expired", "node-b", 0, t).await.unwrap();

    let nodes = store.list_nodes().await.unwrap();
    let summary: Vec<_> = nodes
        .iter()
        .map(|n| {
            (
                n.node_id.as_str(),
                n.address.as_deref(),
                n.started_at,
                n.plans_owned,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("node-a", Some("http://127.0.0.1:1"), 5, 2),
            ("node-b", None, 6, 0)
        ]
    );
    let first = nodes[0].heartbeat_at;
    assert!(first > 0);
    // A later heartbeat moves the node's time on and keeps it one row.
    store
        .heartbeat("node-a", Some("http://127.0.0.1:2"), 5)
        .await
        .unwrap();
    let nodes = store.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0].address.as_deref(), Some("http://127.0.0.1:2"));
    assert!(nodes[0].heartbeat_at >= first);

    // One secret, the same at every ask, long enough to sign with.
    let secret = store.cluster_secret().await.unwrap();
    assert!(secret.len() >= 32, "{secret}");
    assert_eq!(store.cluster_secret().await.unwrap(), secret);
}
