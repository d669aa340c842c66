//! The PostgreSQL store: one test binary, one module per area. Tests that need a server read
//! its URL from `CAIRN_TEST_DATABASE_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`);
//! without it each says it is skipped and passes. Each
//! store a test opens lives in a schema of its own, so tests running at once never meet.
//!
//! - `conformance`: the store conformance suite, cluster cases included.
//! - `cluster`: two stores on one database (two nodes), node ids, commit hints, migrations.
//! - `task_queue`: the task queue conformance suite, and two queues on one database as two
//!   nodes.

#[path = "cairn_store_postgres/cluster.rs"]
mod cluster;
#[path = "cairn_store_postgres/conformance.rs"]
mod conformance;
#[path = "cairn_store_postgres/task_queue.rs"]
mod task_queue;

use cairn_store_postgres::{PgOptions, PgStore};

/// The test database's URL, or `None` (after saying why the test is skipped).
pub fn database_url() -> Option<String> {
    match std::env::var("CAIRN_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped: CAIRN_TEST_DATABASE_URL is not set (no PostgreSQL to test with)");
            None
        }
    }
}

/// A schema name no other test uses.
pub fn unique_schema() -> String {
    let mut buf = [0u8; 8];
    getrandom::fill(&mut buf).expect("random bytes");
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    format!("cairn_t_{hex}")
}

/// A store in `schema` of the test database.
pub async fn open(url: &str, schema: &str) -> PgStore {
    PgStore::connect(
        url,
        PgOptions {
            pool_size: 4,
            schema: Some(schema.to_owned()),
            ..PgOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// A store in a fresh schema of its own.
pub async fn fresh(url: &str) -> PgStore {
    open(url, &unique_schema()).await
}
