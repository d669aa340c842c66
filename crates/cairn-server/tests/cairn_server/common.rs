//! The one server harness of this test binary: a temporary SQLite store and the production
//! wiring (`cairn_server::Server::build`, as `cairn serve` does), listening on 127.0.0.1:0. Plus
//! bounded waits that fail naming what did not happen.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_engine::Engine;
use cairn_server::auth::create_token;
use cairn_server::{Role, ServerOptions};
use cairn_store::Store;
use cairn_store_sqlite::{SqliteOptions, SqliteStore};

/// The longest any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// A running server and what its tests reach into.
pub struct TestServer {
    /// Holds the database file for as long as the server lives.
    pub _dir: tempfile::TempDir,
    pub store: Arc<dyn Store>,
    pub engine: Engine,
    pub addr: SocketAddr,
}

impl TestServer {
    /// A server over a fresh store in a temporary directory.
    pub async fn start(opts: ServerOptions) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("cairn.db"), SqliteOptions::default()).unwrap(),
        );
        let server = cairn_server::Server::build(store.clone(), opts)
            .await
            .expect("the server builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let engine = server.engine().clone();
        tokio::spawn(server.serve(listener, std::future::pending::<()>()));
        TestServer {
            _dir: dir,
            store,
            engine,
            addr,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A new token of `user` with `role`.
    pub async fn token(&self, user: &str, role: Role) -> String {
        create_token(&*self.store, user, role).await.unwrap().token
    }
}

/// Awaits `fut`, failing the test naming `what` if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}
