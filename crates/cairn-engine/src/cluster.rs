//! Several engine nodes sharing one store: how a node reaches the node that owns a plan.
//!
//! A plan is driven by the node holding its lease. A command for a plan another node owns is
//! carried out by that node and answered with its result: the engine turns it into a
//! forwarding request (a JSON document it alone reads and writes), hands it to [`Peers`], and
//! the owner's engine answers it with [`crate::Engine::serve_forwarded`]. How the bytes travel
//! (HTTP between `cairn serve` nodes, a channel between two engines in one test process) is
//! the transport's business, never the engine's.

use async_trait::async_trait;

/// Why a forwarding request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The node is not known, or cannot be reached now (gone, restarting, a timeout). The
    /// engine waits for its lease to run out and takes the plan over.
    #[error("node {node} cannot be reached: {reason}")]
    Unreachable { node: String, reason: String },
    /// The node answered but refused to serve the request (a bad secret, a build that does
    /// not know the request).
    #[error("node {node} refused a forwarded request: {reason}")]
    Refused { node: String, reason: String },
}

/// The way to the other nodes of a cluster.
#[async_trait]
pub trait Peers: Send + Sync + std::fmt::Debug + 'static {
    /// Delivers `request` (made by the engine) to node `owner`, whose engine answers it with
    /// [`crate::Engine::serve_forwarded`], and returns the bytes it answered.
    async fn forward(&self, owner: &str, request: Vec<u8>) -> Result<Vec<u8>, PeerError>;
}
