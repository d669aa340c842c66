//! Several nodes on one store, as HTTP sees it: how a node reaches the owner of a plan
//! ([`HttpPeers`]), the internal endpoint where the owner answers (`POST
//! /v1/cluster/forward`), and the node list (`GET /v1/nodes`).
//!
//! The forwarding endpoint is not part of the public API (it is left out of the OpenAPI
//! document): its body is a request the engine alone writes and reads, and it is authenticated
//! by the cluster secret every node reads from the store, not by a bearer token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cairn_core::view::{NodeInfo, NodeList};
use cairn_core::Timestamp;
use cairn_engine::cluster::{PeerError, Peers};
use cairn_store::Nodes;
use subtle::ConstantTimeEq;
use tokio::sync::{Mutex, OnceCell};

use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// The header carrying the cluster secret on a forwarded request.
pub const SECRET_HEADER: &str = "x-cairn-cluster-secret";

/// The path of the internal forwarding endpoint.
pub const FORWARD_PATH: &str = "/v1/cluster/forward";

/// Largest forwarded request accepted: a request wraps at most one API body (≤ 1 MiB) in a
/// small envelope.
pub const MAX_FORWARD_BODY: usize = 4 * crate::MAX_BODY;

/// A node is listed as alive while its latest heartbeat is at most this many lease periods old.
pub const ALIVE_LEASES: u64 = 3;

/// This node, as the server knows it.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub node_id: String,
    /// The lease length, which also sets the heartbeat period and what "alive" means.
    pub lease_ms: u64,
    /// Where the other nodes reach this one (`http://host:port`).
    pub advertise: Option<String>,
}

/// How [`HttpPeers`] reaches the others.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// Giving up on opening a connection: a node that does not accept one this fast on a LAN
    /// is as good as gone.
    pub connect_timeout: Duration,
    /// Giving up on an answer: the owner carries the command out before answering, which is a
    /// commit, rarely more.
    pub request_timeout: Duration,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// [`Peers`] over HTTP: the owner's address comes from the store's node list (cached, read
/// again when a node is missing or cannot be reached), the request is POSTed to its
/// [`FORWARD_PATH`] with the cluster secret, and its body is the answer.
pub struct HttpPeers {
    /// This node (named in its logs).
    node_id: String,
    store: Arc<dyn Nodes>,
    client: reqwest::Client,
    /// Node id → address, as last read from the store.
    addresses: Mutex<HashMap<String, String>>,
    secret: OnceCell<String>,
}

impl std::fmt::Debug for HttpPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPeers").finish_non_exhaustive()
    }
}

impl HttpPeers {
    pub fn new(
        store: Arc<dyn Nodes>,
        node_id: &str,
        opts: PeerOptions,
    ) -> Result<HttpPeers, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .timeout(opts.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build an HTTP client for the other nodes: {e}"))?;
        Ok(HttpPeers {
            node_id: node_id.to_owned(),
            store,
            client,
            addresses: Mutex::new(HashMap::new()),
            secret: OnceCell::new(),
        })
    }

    async fn secret(&self, owner: &str) -> Result<&str, PeerError> {
        self.secret
            .get_or_try_init(|| self.store.cluster_secret())
            .await
            .map(String::as_str)
            .map_err(|e| PeerError::Unreachable {
                node: owner.to_owned(),
                reason: format!("cannot read the cluster secret: {e}"),
            })
    }

    /// The owner's address: from the cache, else from the store's node list (which refreshes
    /// the whole cache).
    async fn address(&self, owner: &str, fresh: bool) -> Result<String, PeerError> {
        let mut addresses = self.addresses.lock().await;
        if !fresh {
            if let Some(a) = addresses.get(owner) {
                return Ok(a.clone());
            }
        }
        let nodes = self
            .store
            .list_nodes()
            .await
            .map_err(|e| PeerError::Unreachable {
                node: owner.to_owned(),
                reason: format!("cannot read the node list: {e}"),
            })?;
        *addresses = nodes
            .into_iter()
            .filter_map(|n| Some((n.node_id, n.address?)))
            .collect();
        addresses
            .get(owner)
            .cloned()
            .ok_or_else(|| PeerError::Unreachable {
                node: owner.to_owned(),
                reason: "the node is not listed with an address".into(),
            })
    }

    async fn post(
        &self,
        owner: &str,
        address: &str,
        secret: &str,
        request: Vec<u8>,
    ) -> Result<Vec<u8>, PeerError> {
        let url = format!("{}{FORWARD_PATH}", address.trim_end_matches('/'));
        let unreachable = |reason: String| PeerError::Unreachable {
            node: owner.to_owned(),
            reason,
        };
        let answer = self
            .client
            .post(&url)
            .header(SECRET_HEADER, secret)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(request)
            .send()
            .await
            .map_err(|e| unreachable(format!("{url}: {e}")))?;
        let status = answer.status();
        let body = answer
            .bytes()
            .await
            .map_err(|e| unreachable(format!("{url}: reading the answer: {e}")))?;
        if status.is_success() {
            return Ok(body.to_vec());
        }
        let detail = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        // A node starting or shutting down answers 503; a proxy in the way, 502/504: none of
        // them says the owner refused, so the engine may wait and take over.
        if status.is_server_error() {
            return Err(unreachable(format!("{url} answered {status}: {detail}")));
        }
        Err(PeerError::Refused {
            node: owner.to_owned(),
            reason: format!("{url} answered {status}: {detail}"),
        })
    }
}

#[async_trait]
impl Peers for HttpPeers {
    async fn forward(&self, owner: &str, request: Vec<u8>) -> Result<Vec<u8>, PeerError> {
        let answer = self.try_forward(owner, request).await;
        if let Err(e) = &answer {
            tracing::debug!(node = %self.node_id, error = %e, "a forwarded request got no answer");
        }
        answer
    }
}

impl HttpPeers {
    async fn try_forward(&self, owner: &str, request: Vec<u8>) -> Result<Vec<u8>, PeerError> {
        let secret = self.secret(owner).await?.to_owned();
        let address = self.address(owner, false).await?;
        match self.post(owner, &address, &secret, request.clone()).await {
            Err(PeerError::Unreachable { node, reason }) => {
                // The cached address may be stale (the node restarted elsewhere under the same
                // id): read the list again, and try once more only if it moved (the same
                // address again could carry a command out twice after a timeout).
                let again = self.address(owner, true).await?;
                if again == address {
                    return Err(PeerError::Unreachable { node, reason });
                }
                self.post(owner, &again, &secret, request).await
            }
            answered => answered,
        }
    }
}

/// The cluster secret, read once from the store.
#[derive(Clone, Default)]
pub struct SecretCache(Arc<OnceCell<String>>);

impl SecretCache {
    async fn get(&self, store: &dyn Nodes) -> Result<&str, cairn_store::StoreError> {
        self.0
            .get_or_try_init(|| store.cluster_secret())
            .await
            .map(String::as_str)
    }
}

/// `POST /v1/cluster/forward`: a request another node's engine made for a plan this node
/// owns. Needs the cluster secret in [`SECRET_HEADER`], compared in constant time; no bearer
/// token. Internal: not in the OpenAPI document.
pub async fn forward(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let store = s.engine.store().clone();
    let secret = match s.cluster_secret.get(&*store).await {
        Ok(secret) => secret,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the cluster secret");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "cannot read the cluster secret right now",
            )
            .into_response();
        }
    };
    let sent = headers
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let same: bool = sent.ct_eq(secret.as_bytes()).into();
    if sent.is_empty() || !same {
        crate::metrics::forward_refused(&s.node.node_id);
        return ApiError::unauthorized(format!(
            "a forwarded request needs the cluster secret in {SECRET_HEADER}; this endpoint is for cairn nodes of the same database"
        ))
        .into_response();
    }
    crate::metrics::forward_served(&s.node.node_id);
    let answer = s.engine.serve_forwarded(&body).await;
    ([(CONTENT_TYPE, "application/json")], answer).into_response()
}

/// The nodes sharing this server's store, with their heartbeats and the plans each owns.
#[utoipa::path(get, operation_id = "list_nodes", path = "/v1/nodes", tag = "operations",
    summary = "The nodes sharing the store",
    responses((status = 200, description = "Every node known to the store, this one marked `self`; `alive` while its latest heartbeat is at most three lease periods old", body = NodeList)),
    security(("bearer" = [])))]
pub async fn nodes(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<NodeList>> {
    p.require(Role::Viewer)?;
    let rows = s
        .engine
        .store()
        .list_nodes()
        .await
        .map_err(|e| ApiError::from(cairn_engine::EngineError::from(e)))?;
    Ok(Json(node_list(rows, &s.node, cairn_engine::now_micros())))
}

/// The node list as answered: `self` marks `me`, `alive` compares heartbeats with `now`.
pub fn node_list(rows: Vec<cairn_store::NodeRow>, me: &NodeIdentity, now: i64) -> NodeList {
    let window = (ALIVE_LEASES * me.lease_ms).saturating_mul(1_000) as i64;
    let mut nodes: Vec<NodeInfo> = rows
        .into_iter()
        .map(|n| NodeInfo {
            is_self: n.node_id == me.node_id,
            alive: now.saturating_sub(n.heartbeat_at) <= window,
            node_id: n.node_id,
            address: n.address,
            started_at: Timestamp::from_micros(n.started_at),
            heartbeat_at: Timestamp::from_micros(n.heartbeat_at),
            plans_owned: n.plans_owned,
        })
        .collect();
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    NodeList { nodes }
}

/// Records this node's heartbeat now, then every third of a lease for as long as the returned
/// task runs (the store's node list, `GET /v1/nodes` and the other nodes' [`HttpPeers`] read
/// it). A failed heartbeat is logged and tried again at the next tick.
pub async fn start_heartbeat(
    store: Arc<dyn Nodes>,
    me: NodeIdentity,
) -> tokio::task::JoinHandle<()> {
    let started_at = cairn_engine::now_micros();
    let every = Duration::from_millis((me.lease_ms / 3).max(100));
    let first = store
        .heartbeat(&me.node_id, me.advertise.as_deref(), started_at)
        .await;
    if let Err(e) = &first {
        tracing::warn!(node = %me.node_id, error = %e, "cannot record this node's heartbeat; retrying");
    }
    tokio::spawn(async move {
        let mut failing = first.is_err();
        loop {
            tokio::time::sleep(every).await;
            match store
                .heartbeat(&me.node_id, me.advertise.as_deref(), started_at)
                .await
            {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(node = %me.node_id, error = %e, "cannot record this node's heartbeat; retrying");
                }
                Err(_) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, heartbeat_at: i64) -> cairn_store::NodeRow {
        cairn_store::NodeRow {
            node_id: id.into(),
            address: Some(format!("http://127.0.0.1/{id}")),
            started_at: 0,
            heartbeat_at,
            plans_owned: 2,
        }
    }

    #[test]
    fn alive_means_a_heartbeat_within_three_leases() {
        let me = NodeIdentity {
            node_id: "b".into(),
            lease_ms: 1_000,
            advertise: None,
        };
        let now = 10_000_000;
        let list = node_list(
            vec![
                row("c", now - 3_000_001),
                row("b", now),
                row("a", now - 3_000_000),
            ],
            &me,
            now,
        );
        let got: Vec<(&str, bool, bool)> = list
            .nodes
            .iter()
            .map(|n| (n.node_id.as_str(), n.is_self, n.alive))
            .collect();
        assert_eq!(
            got,
            [("a", false, true), ("b", true, true), ("c", false, false)]
        );
    }
}
