//! The PostgreSQL backend of cairn's [`Store`](cairn_store::Store): one database shared by
//! several engine nodes.
//!
//! Where the SQLite store has one process and one writer, this one has many: every node writes
//! through its own connection pool, and the database is what keeps them apart.
//! - Every append is fenced in its own transaction: by the plan's last seq and by the lease's
//!   owner and token, so a node that lost a plan's lease can write nothing to it.
//! - Leases expire by the database's clock (`now()`), never a node's.
//! - Global event ids are given in commit order (see `schema`), so a reader that sees id N has
//!   seen every id below it that will ever exist: the all-plans stream never skips an event
//!   committed late with a smaller id.
//! - Schema migrations are embedded SQL, applied under a transaction-scoped advisory lock, so
//!   nodes starting together migrate once.

mod migrate;
pub mod queue;

use std::str::FromStr;
use std::time::Duration;

use cairn_store::{StoreError, StoreResult};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

pub use queue::{PgQueue, PgQueueOptions};

/// How a [`PgStore`] connects.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections in the pool.
    pub pool_size: usize,
    /// `statement_timeout` of every connection: a statement running longer is cancelled and
    /// the call fails (never hangs a node).
    pub statement_timeout_ms: u64,
    /// Keep every table in this schema (created if missing) instead of the connection's
    /// default: tests give each case its own, so cases sharing one database never meet.
    pub schema: Option<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 16,
            statement_timeout_ms: 30_000,
            schema: None,
        }
    }
}

/// A store in a PostgreSQL database. Cheap to share (`Arc`); several processes may open the
/// same database.
pub struct PgStore {
    pool: Pool,
    config: tokio_postgres::Config,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`), creates the schema if asked, and
    /// applies the migrations this build knows.
    pub async fn connect(url: &str, opts: PgOptions) -> StoreResult<PgStore> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Invalid(format!("database url {url:?}: {e}")))?;
        if let Some(schema) = &opts.schema {
            if !schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(StoreError::Invalid(format!(
                    "schema name {schema:?}: use letters, digits and _"
                )));
            }
            let (client, conn) = config.connect(NoTls).await.map_err(unreachable)?;
            let task = tokio::spawn(conn);
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await
                .map_err(backend)?;
            drop(client);
            let _ = task.await;
        }
        let mut options = format!("-c statement_timeout={}", opts.statement_timeout_ms);
        if let Some(schema) = &opts.schema {
            options.push_str(&format!(" -c search_path={schema}"));
        }
        config.options(&options);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(1))
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Backend(format!("connection pool: {e}")))?;
        let store = PgStore { pool, config };
        {
            let mut client = store.client().await?;
            migrate::run(&mut client).await?;
        }
        Ok(store)
    }

    /// The connection pool (the task queue and the node's own connections share the store's
    /// settings through it).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The connection settings, for a dedicated connection outside the pool (a node's LISTEN
    /// and its session lock).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// A pooled connection.
    pub async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => unreachable(e),
            other => StoreError::Unavailable(format!("database connection: {other}")),
        })
    }
}

/// The database cannot be reached (connection refused, lost, timed out).
pub(crate) fn unreachable(e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(format!("database: {e}"))
}

/// A statement failed for a reason that is not the caller's.
pub(crate) fn backend(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() {
        return unreachable(e);
    }
    StoreError::Backend(format!("database: {e}"))
}
