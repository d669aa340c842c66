//! The production wiring of a server, in one place: the remote-worker queue, the engine that
//! sends it the agent types it has no executor for, webhook delivery, the metrics refreshers,
//! authentication and the router's state. `cairn serve` builds its server with
//! [`Server::build`], and so do the in-process tests, so what they exercise is what ships.
//!
//! What stays with the caller: opening the store, reading `cairn.toml`, the first admin token's
//! message, binding the address, and the signal that shuts the server down.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use cairn_engine::config::WebhookConfig;
use cairn_engine::executor::Registry;
use cairn_engine::remote::{RemoteQueue, DEFAULT_LEASE_MS};
use cairn_engine::{Engine, EngineError, EngineOptions};
use cairn_store::Store;
use tokio::task::JoinHandle;

use crate::cluster::{HttpPeers, NodeIdentity, PeerOptions};
use crate::{AppState, Authenticator, ServeOptions};

/// Who a request is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// Every `/v1` request needs a bearer token of the store.
    Tokens,
    /// No token needed: every request is this user, an admin (`cairn serve --no-auth`).
    Open { user: String },
}

/// How a server runs. [`Default`] is `cairn serve`'s defaults with the builtins only.
pub struct ServerOptions {
    /// The engine's options; `remote` is replaced by the server's queue.
    pub engine: EngineOptions,
    /// The agent types with a local executor; the others go to remote workers.
    pub registry: Registry,
    /// Where events are POSTed (`[[webhooks]]` of `cairn.toml`).
    pub webhooks: Vec<WebhookConfig>,
    /// How long a remote worker keeps a task without a heartbeat.
    pub worker_lease_ms: u64,
    pub auth: AuthMode,
    /// How often a quiet event stream (SSE, WebSocket) sends a keep-alive.
    pub stream_keep_alive: Duration,
    /// How often the metrics that are sampled rather than counted (plans by state, queued tasks)
    /// are refreshed.
    pub metrics_every: Duration,
    /// Connection limits and timeouts.
    pub limits: ServeOptions,
    /// Where the other nodes of a shared store reach this one (`http://host:port`), recorded
    /// with its heartbeat; `None` for a server no other node needs to reach.
    pub advertise: Option<String>,
    /// The remote-worker task queue; `None`: one in this process, whose leases last
    /// `worker_lease_ms` (the nodes of a shared database pass the database's queue).
    pub queue: Option<Arc<dyn cairn_engine::queue::TaskQueue>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            engine: EngineOptions::default(),
            registry: Registry::with_builtins(),
            webhooks: Vec::new(),
            worker_lease_ms: DEFAULT_LEASE_MS,
            auth: AuthMode::Tokens,
            stream_keep_alive: crate::streams::KEEP_ALIVE,
            metrics_every: crate::metrics::REFRESH,
            limits: ServeOptions::default(),
            advertise: None,
            queue: None,
        }
    }
}

/// A server wired and running its background work (engine, webhooks, metrics), not yet
/// listening: [`Server::serve`] takes a listener.
pub struct Server {
    engine: Engine,
    remote: RemoteQueue,
    state: AppState,
    limits: ServeOptions,
    background: Vec<JoinHandle<()>>,
}

impl Server {
    /// Opens the engine over `store` (recovering its plans) and starts webhook delivery and the
    /// metrics refreshers.
    pub async fn build(store: Arc<dyn Store>, opts: ServerOptions) -> Result<Server, EngineError> {
        // Agent types with no local executor go to remote workers (`/v1/tasks…`), through the
        // queue given (shared by the nodes of a database) or one in this process.
        let remote = match opts.queue.clone() {
            Some(queue) => RemoteQueue::with_queue(queue),
            None => RemoteQueue::new(opts.worker_lease_ms),
        };
        // A store other processes write as well (it hints at their commits) is shared by
        // several nodes; a store only this process opens has one node, this one.
        let shared = store.commit_hint().is_some();
        let node = NodeIdentity {
            node_id: opts.engine.node_id.clone(),
            lease_ms: opts.engine.lease_ms,
            advertise: opts.advertise.clone().or(opts.engine.advertise.clone()),
        };
        // Commands for plans another node owns go to it over HTTP (a store only this process
        // opens never asks: every plan is this node's).
        let peers: Option<Arc<dyn cairn_engine::cluster::Peers>> = match opts.engine.peers.clone() {
            Some(peers) => Some(peers),
            None if shared => Some(Arc::new(
                HttpPeers::new(store.clone(), &node.node_id, PeerOptions::default())
                    .map_err(|e| EngineError::Store(cairn_store::StoreError::Backend(e)))?,
            )),
            None => None,
        };
        let clustered = peers.is_some() || shared;
        let engine = Engine::open(
            store.clone(),
            opts.registry,
            EngineOptions {
                remote: Some(remote.clone()),
                peers,
                advertise: node.advertise.clone(),
                ..opts.engine
            },
        )
        .await?;
        // The node list (`GET /v1/nodes`) reads heartbeats. The engine of a cluster keeps its
        // own fresh; a lone engine records one when it opens, and the server keeps it fresh.
        let heartbeat = if clustered {
            None
        } else {
            Some(crate::cluster::start_heartbeat(store.clone(), node.clone()).await)
        };
        // Webhook delivery (at-least-once, from per-webhook cursors in the store),
        // each delivered by one node at a time, under a lease on its cursor.
        let webhooks = crate::webhooks::spawn_webhooks_as(
            engine.clone(),
            opts.webhooks,
            crate::webhooks::Deliverer {
                node_id: node.node_id.clone(),
                lease_ms: node.lease_ms,
            },
        );
        crate::metrics::spawn_every(engine.clone(), opts.metrics_every);
        // cairn_tasks_queued{agent_type}: the remote queue lives here, not in the engine's events.
        let queued = {
            let remote = remote.clone();
            let every = opts.metrics_every;
            tokio::spawn(async move {
                loop {
                    for (agent_type, n) in remote.queued_by_type().await {
                        crate::metrics::set_tasks_queued(&agent_type, n);
                    }
                    tokio::time::sleep(every).await;
                }
            })
        };
        let node_metrics =
            crate::metrics::spawn_node(engine.clone(), node.clone(), opts.metrics_every);
        let auth = match &opts.auth {
            AuthMode::Tokens => Authenticator::new(store),
            AuthMode::Open { user } => Authenticator::open(store, user),
        };
        let state = AppState::new(engine.clone(), auth)
            .with_remote(remote.clone())
            .with_keep_alive(opts.stream_keep_alive)
            .with_node(node);
        Ok(Server {
            engine,
            remote,
            state,
            limits: opts.limits,
            background: [webhooks, queued, node_metrics]
                .into_iter()
                .chain(heartbeat)
                .collect(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The remote-worker queue behind `/v1/tasks…`.
    pub fn remote(&self) -> &RemoteQueue {
        &self.remote
    }

    /// What every handler sees.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The whole API over this server's state.
    pub fn router(&self) -> Router {
        crate::router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` resolves: then long-polls answer at once, no new
    /// request is taken, those in flight finish, background work stops and the engine shuts
    /// down.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let remote = self.remote.clone();
        let shutdown = async move {
            shutdown.await;
            // Long-polls answer 204 at once instead of holding the shutdown up.
            remote.close();
        };
        let served = crate::serve_with(listener, self.state, self.limits, shutdown).await;
        for task in self.background {
            task.abort();
        }
        self.engine.shutdown().await;
        served
    }
}
