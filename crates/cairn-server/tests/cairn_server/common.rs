//! The one server harness of this test binary: a temporary SQLite store and the production
//! wiring (`cairn_server::Server::build`, as `cairn serve` does), listening on 127.0.0.1:0; the
//! requests every module sends (JSON in, status and JSON out; a plan registered and started).
//! Plus bounded waits that fail naming what did not happen.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_engine::Engine;
use cairn_server::auth::create_token;
use cairn_server::{Role, ServerOptions};
use cairn_store::Store;
use cairn_store_sqlite::{SqliteOptions, SqliteStore};
use reqwest::{Method, StatusCode};
use serde_json::Value;

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
    /// A server over a fresh store: a SQLite file in a temporary directory, or with
    /// `CAIRN_TEST_STORE=postgres` a schema of its own in `CAIRN_TEST_DATABASE_URL`.
    pub async fn start(opts: ServerOptions) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let store = fresh_store(dir.path()).await;
        // Bound first, so the node's heartbeat carries the address it is reached at.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let opts = ServerOptions {
            advertise: opts.advertise.or_else(|| Some(format!("http://{addr}"))),
            ..opts
        };
        let server = cairn_server::Server::build(store.clone(), opts)
            .await
            .expect("the server builds");
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

/// The store the tests run on: SQLite in `dir` by default; with `CAIRN_TEST_STORE=postgres`,
/// PostgreSQL at `CAIRN_TEST_DATABASE_URL` in a fresh schema (the run fails without the URL: a
/// run asked for PostgreSQL must not pass on SQLite).
pub async fn fresh_store(dir: &std::path::Path) -> Arc<dyn Store> {
    match std::env::var("CAIRN_TEST_STORE").as_deref() {
        Ok("postgres") => {
            let url = std::env::var("CAIRN_TEST_DATABASE_URL")
                .expect("CAIRN_TEST_STORE=postgres needs CAIRN_TEST_DATABASE_URL");
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).unwrap();
            let schema = format!(
                "cairn_srv_{}",
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            let store = cairn_store_postgres::PgStore::connect(
                &url,
                cairn_store_postgres::PgOptions {
                    pool_size: 4,
                    schema: Some(schema),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
            Arc::new(store)
        }
        Ok("sqlite") | Err(_) => {
            Arc::new(SqliteStore::open(&dir.join("cairn.db"), SqliteOptions::default()).unwrap())
        }
        Ok(other) => panic!("CAIRN_TEST_STORE={other:?}: use sqlite or postgres"),
    }
}

/// Awaits `fut`, failing the test naming `what` if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// One request to `url` as `token`'s user (none: anonymous), with `body` as JSON. Answers the
/// status and the body read by [`answer`].
pub async fn request(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut req = http.request(method, url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    answer(req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"))).await
}

/// POSTs `body` to `url` as it is, labelled `application/json` (a malformed body on purpose).
pub async fn post_raw(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let req = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body);
    answer(req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"))).await
}

/// A response's status and body: its JSON, `null` when empty, the text itself when not JSON.
async fn answer(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// Registers the plan document `plan` and starts it as `token`'s user, asserting that both are
/// accepted. `base` is the server's `http://127.0.0.1:PORT`.
pub async fn register_and_start(http: &reqwest::Client, base: &str, token: &str, plan: &Value) {
    let id = plan["plan_id"].as_str().expect("the plan names its id");
    let url = format!("{base}/v1/plans");
    let (status, body) = request(http, Method::POST, &url, Some(token), Some(plan)).await;
    assert_eq!(status, StatusCode::CREATED, "registering {id}: {body}");
    let url = format!("{base}/v1/plans/{id}/start");
    let (status, body) = request(http, Method::POST, &url, Some(token), None).await;
    assert_eq!(status, StatusCode::OK, "starting {id}: {body}");
}
