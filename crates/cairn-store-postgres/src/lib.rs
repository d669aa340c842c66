//! The PostgreSQL backend of cairn's [`Store`](cairn_store::Store): one database shared by
//! several engine nodes.
//!
//! Where the SQLite store has one process and one writer, this one has many: every node writes
//! through its own connections, and the database is what keeps them apart.
//! - Every append is fenced in the transaction that writes it: by the plan's last seq and by the
//!   lease's owner, token and release mark, read under row locks (`FOR NO KEY UPDATE` on the
//!   plan, then on the lease, each in key order), so a node that lost or released a plan's lease
//!   can write nothing to it, and a takeover waits for an append in flight (or skips the plan)
//!   rather than slipping in under it. Claims and releases are decided and written by the same
//!   transactions (group commit); the renewal of a node's leases is one statement that locks
//!   them in the same order.
//! - Leases, cursor leases and heartbeats are timed by the database's clock (`now()`, through
//!   the SQL function `cairn_now()`): the `now` argument of [`Leases::claim`] and
//!   [`Leases::take_over`] is ignored, so nodes whose clocks disagree still agree on which lease
//!   has run out.
//! - Global event ids are given in commit order: every transaction that inserts events takes
//!   its ids from one counter row (`UPDATE cairn_counter SET last_id = last_id + n`), whose row
//!   lock is held until commit, so a reader that sees id N has seen every id below it that will
//!   ever exist: the all-plans stream never skips an event committed late with a smaller id.
//! - Group commit (`writer.rs`): creates and appends go to one writer task per store, which
//!   validates a whole batch under its row locks and writes it with a handful of set-based
//!   statements and one commit.
//! - Commit hints (`session.rs`): one dedicated connection per store `LISTEN`s on
//!   `cairn_commits` (`cairn_commits_<schema>` for a store in a schema of its own); every
//!   transaction that inserts events runs `pg_notify` once, and the hints of the store's own
//!   writer (told apart by its backend process id) wake nothing: its commits reach its engine
//!   directly.
//!   [`PgStore::hold_node`] takes a session advisory lock on the same connection, so a node id
//!   is used by one live process at a time.
//! - Schema migrations are embedded SQL, applied under a transaction-scoped advisory lock, so
//!   nodes starting together migrate once.
//! - A refused or lost connection is [`StoreError::Unavailable`]; the engine retries calmly. A
//!   connection lost during `COMMIT` leaves the outcome unknown: the caller hears
//!   `Unavailable`, and a retry of an append that did commit is refused as `SeqConflict`.

mod migrate;
pub mod queue;
mod read;
mod session;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_store::{
    Append, CheckpointRow, CreatePlan, Cursors, EventLog, Fence, LeaseRow, Leases, Micros,
    NewTemplateVersion, NodeRow, Nodes, OpenReviews, Page, PlanIndex, PlanRow, ReviewRow,
    Snapshots, StoreError, StoreResult, StoredEvent, TemplateRow, Templates, TokenRow, Tokens,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

pub use queue::{PgQueue, PgQueueOptions};
pub use writer::WriterStats;

/// The channel every transaction that inserts events notifies (at commit, coalesced), for a
/// store in the default schema. A store in a schema of its own notifies
/// `cairn_commits_<schema>`: stores of different schemas (different clusters, or tests) never
/// wake each other.
pub const COMMIT_CHANNEL: &str = "cairn_commits";

/// The commit channel of the stores in `namespace` (a schema name as PostgreSQL folds it).
fn commit_channel(namespace: &str) -> String {
    if namespace == "public" {
        COMMIT_CHANNEL.to_owned()
    } else {
        format!("{COMMIT_CHANNEL}_{namespace}")
    }
}

/// The longest schema name accepted: its commit channel must stay within PostgreSQL's 63-byte
/// identifiers.
const MAX_SCHEMA_LEN: usize = 48;

/// How long the writer's connection may sit idle inside a transaction before the server ends
/// it (and releases its locks).
const WRITER_IDLE_MS: u64 = 5_000;

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
/// same database. Dropping it stops its writer and closes its dedicated connection (releasing
/// the node id it held).
pub struct PgStore {
    pool: Pool,
    config: tokio_postgres::Config,
    writes: mpsc::UnboundedSender<writer::Request>,
    /// The writer's connection, which a caller finding the writer idle uses itself.
    shared: Arc<writer::Shared>,
    hint: Arc<Notify>,
    session: mpsc::Sender<session::Command>,
    session_state: Arc<session::State>,
    /// What advisory-lock keys are namespaced by (the schema), so stores in different schemas
    /// of one database never meet.
    namespace: String,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`), creates the schema if asked, and
    /// applies the migrations this build knows. Starts the writer task and the dedicated
    /// connection (hints, node lock).
    pub async fn connect(url: &str, opts: PgOptions) -> StoreResult<PgStore> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Invalid(format!("database url {url:?}: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if let Some(schema) = &opts.schema {
            if schema.is_empty()
                || schema.len() > MAX_SCHEMA_LEN
                || !schema
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(StoreError::Invalid(format!(
                    "schema name {schema:?}: use 1 to {MAX_SCHEMA_LEN} letters, digits and _"
                )));
            }
            let (client, conn) = config.connect(NoTls).await.map_err(unreachable)?;
            let task = tokio::spawn(conn);
            let created = client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await;
            if let Err(e) = created {
                // Two stores creating one schema at once: one of them loses the race on the
                // catalog's unique index, and the schema exists all the same.
                if e.code() != Some(&SqlState::UNIQUE_VIOLATION) {
                    return Err(pg_error("create the schema", e));
                }
            }
            drop(client);
            let _ = task.await;
        }
        let mut options = format!("-c statement_timeout={}", opts.statement_timeout_ms);
        if let Some(schema) = &opts.schema {
            options.push_str(&format!(" -c search_path={schema}"));
        }
        config.options(&options);
        // PostgreSQL folds unquoted names to lower case: `Foo` and `foo` are one schema.
        let namespace = opts
            .schema
            .as_deref()
            .unwrap_or("public")
            .to_ascii_lowercase();
        // Every connection is named after its role and schema, so an operator (or a test) can
        // tell them apart in pg_stat_activity.
        if config.get_application_name().is_none() {
            config.application_name(format!("cairn-pool:{namespace}"));
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
        {
            let mut client = pool_client(&pool).await?;
            migrate::run(&mut client).await?;
        }
        let (writes, rx) = mpsc::unbounded_channel();
        let mut writer_config = config.clone();
        writer_config.application_name(format!("cairn-writer:{namespace}"));
        // An answered write survives a crash of the server, whatever its default. And a writer
        // that stops in the middle of a transaction (its process frozen, not dead) holds the
        // id counter every node's writer needs: the server ends such a session after a few
        // idle seconds, so one hung node stalls the others' commits that long at most.
        // The writer's statements run on their generic plans, made once per connection: left
        // to choose, the server plans each of them again at every execution, since the plan
        // for a given batch's arrays always looks cheaper than the generic one (which
        // assumes ten elements), and the planning was over a third of its work on a commit.
        // Each statement's generic plan finds its rows through their index (the plans by
        // name or key, the leases and first events by plan key) once a table holds more than
        // a few pages (a smaller one is scanned whole).
        writer_config.options(format!(
            "{options} -c synchronous_commit=on -c idle_in_transaction_session_timeout={WRITER_IDLE_MS} -c plan_cache_mode=force_generic_plan"
        ));
        let channel = commit_channel(&namespace);
        let own = Arc::new(session::OwnWriter::default());
        let shared = Arc::new(writer::Shared::new(
            writer_config,
            channel.clone(),
            own.clone(),
        ));
        tokio::spawn(writer::run(shared.clone(), rx));
        let hint = Arc::new(Notify::new());
        let session_state = Arc::new(session::State::default());
        let (session, commands) = mpsc::channel(16);
        let (ready, listening) = oneshot::channel();
        let mut session_config = config.clone();
        session_config.application_name(format!("cairn-session:{namespace}"));
        // Both ends probe the connection when it is quiet: a node cut off by the network loses
        // its node lock (and notices it lost its hints) within about half a minute, not hours.
        session_config.keepalives_idle(Duration::from_secs(10));
        session_config.options(format!(
            "{options} -c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"
        ));
        tokio::spawn(session::run(
            session_config,
            channel,
            commands,
            hint.clone(),
            session_state.clone(),
            own,
            ready,
        ));
        // Commits after `connect` returns are hinted: the first LISTEN is in place.
        listening
            .await
            .map_err(|_| StoreError::Backend("the store's session task stopped".into()))??;
        Ok(PgStore {
            pool,
            config,
            writes,
            shared,
            hint,
            session,
            session_state,
            namespace,
        })
    }

    /// The connection pool (the task queue and the node's own connections share the store's
    /// settings through it).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The connection settings, for a dedicated connection outside the pool.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// A pooled connection.
    pub async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        pool_client(&self.pool).await
    }

    /// Marks `node_id` as this process's for as long as the store lives: a session advisory
    /// lock on the store's dedicated connection (retaken after a reconnect). While another live
    /// process holds the same id: `Locked("node id X is in use by another live node")`. A killed
    /// process's connection closes, so a restarted node of the same id gets it at once.
    pub async fn hold_node(&self, node_id: &str) -> StoreResult<()> {
        let (reply, answer) = oneshot::channel();
        let key = format!("cairn-node:{}:{node_id}", self.namespace);
        self.session
            .send(session::Command::HoldNode {
                node_id: node_id.to_owned(),
                key,
                reply,
            })
            .await
            .map_err(|_| StoreError::Backend("the store's session task stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the store's session task stopped".into()))?
    }

    /// What the writer has done since the store was opened.
    pub fn writer_stats(&self) -> WriterStats {
        self.shared.stats().snapshot()
    }

    async fn write(&self, op: writer::Op) -> StoreResult<writer::Outcome> {
        // Nothing queued and nothing being committed: commit here, without waking the writer
        // task and being woken by it (see `writer::Shared`).
        // Boxed: a transaction's future is large, and every write's future (a thousand
        // appends in flight under load, when the writer is never idle) would carry its room.
        if let Some(inline) = self.shared.claim_idle() {
            return Box::pin(self.shared.commit_claimed(inline, op)).await;
        }
        let (reply, answer) = oneshot::channel();
        self.shared.queued();
        self.writes
            .send(writer::Request { op, reply })
            .map_err(|_| StoreError::Backend("the store's writer task stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the store's writer task stopped".into()))?
    }
}

async fn pool_client(pool: &Pool) -> StoreResult<deadpool_postgres::Object> {
    pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => unreachable(e),
        other => StoreError::Unavailable(format!("database connection: {other}")),
    })
}

/// The database cannot be reached (connection refused, lost, timed out).
pub(crate) fn unreachable(e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(format!("database: {e}"))
}

/// A statement failed for a reason that is not the caller's.
pub(crate) fn backend(e: tokio_postgres::Error) -> StoreError {
    pg_error("database", e)
}

/// A driver error as a [`StoreError`]: a lost or refused connection, a server shutting down,
/// a full disk, a cancelled statement, a serialization failure or deadlock (all worth retrying
/// once the cause is gone) are `Unavailable`; the rest are `Backend`.
pub(crate) fn pg_error(context: &str, e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::Unavailable(format!("{context}: the connection is closed: {e}"));
    }
    let Some(db) = e.as_db_error() else {
        // I/O and protocol errors: the connection is gone or unusable.
        return StoreError::Unavailable(format!("{context}: {e}"));
    };
    let code = db.code().code();
    let why = match code {
        c if c.starts_with("08") => "the connection failed",
        c if c.starts_with("53") => {
            "the database server is out of resources (disk, memory, connections)"
        }
        "57P01" | "57P02" | "57P03" => "the database server is shutting down or starting up",
        "57014" => "a statement took longer than the statement timeout",
        "40001" => "a serialization failure (retry)",
        "40P01" => "a deadlock was detected (retry)",
        "25006" => "the database is read-only",
        _ => return StoreError::Backend(format!("{context}: {}", db.message())),
    };
    StoreError::Unavailable(format!("{why}; {context}: {}", db.message()))
}

/// u64 → BIGINT; values beyond i64 are clamped (they only ever act as bounds).
pub(crate) fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// BIGINT → u64; negatives (never written by this crate) read as 0.
pub(crate) fn from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A lease length in microseconds, clamped so `cairn_now() + ttl` never overflows.
fn ttl_micros(ttl_ms: u64) -> i64 {
    to_sql(ttl_ms.saturating_mul(1000)).min(i64::MAX / 4)
}

fn unexpected(what: &str) -> StoreError {
    StoreError::Backend(format!("{what}: unexpected answer from the writer"))
}

#[async_trait]
impl EventLog for PgStore {
    async fn create_plan(&self, req: CreatePlan) -> StoreResult<Vec<StoredEvent>> {
        match self.write(writer::Op::Create(req)).await? {
            writer::Outcome::Events(events) => Ok(events),
            _ => Err(unexpected("create_plan")),
        }
    }

    /// The plan and its lease in one transaction (the writer's).
    async fn create_plan_leased(
        &self,
        req: CreatePlan,
        node: &str,
        ttl_ms: u64,
        _now: Micros,
    ) -> StoreResult<(Vec<StoredEvent>, Option<Fence>)> {
        match self
            .write(writer::Op::CreateLeased {
                create: req,
                node: node.to_owned(),
                ttl: ttl_micros(ttl_ms),
            })
            .await?
        {
            writer::Outcome::CreatedLeased(events, fence) => Ok((events, Some(fence))),
            _ => Err(unexpected("create_plan_leased")),
        }
    }

    async fn append(&self, req: Append) -> StoreResult<Vec<StoredEvent>> {
        match self.write(writer::Op::Append(req)).await? {
            writer::Outcome::Events(events) => Ok(events),
            _ => Err(unexpected("append")),
        }
    }

    async fn create_plan_with(
        &self,
        create: CreatePlan,
        append: Append,
    ) -> StoreResult<(Vec<StoredEvent>, Vec<StoredEvent>)> {
        match self
            .write(writer::Op::CreateWith { create, append })
            .await?
        {
            writer::Outcome::Both(created, appended) => Ok((created, appended)),
            _ => Err(unexpected("create_plan_with")),
        }
    }

    async fn read_events(
        &self,
        plan_id: &str,
        after_seq: u64,
        until_seq: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        let c = self.client().await?;
        read::events(&c, plan_id, after_seq, until_seq, limit).await
    }

    async fn read_events_of_kind(
        &self,
        plan_id: &str,
        kinds: &[&str],
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        let c = self.client().await?;
        read::events_of_kind(&c, plan_id, kinds, after_seq, limit).await
    }

    async fn read_all_events(&self, after_id: u64, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        let c = self.client().await?;
        read::all_events(&c, after_id, limit).await
    }

    async fn last_event_id(&self) -> StoreResult<u64> {
        let c = self.client().await?;
        read::last_event_id(&c).await
    }

    async fn list_checkpoints(
        &self,
        plan_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<CheckpointRow>> {
        let c = self.client().await?;
        read::checkpoints(&c, plan_id, after_seq, limit).await
    }

    async fn get_checkpoint(&self, plan_id: &str, seq: u64) -> StoreResult<Option<CheckpointRow>> {
        let c = self.client().await?;
        read::checkpoint(&c, plan_id, seq).await
    }

    async fn delete_plan(&self, plan_id: &str) -> StoreResult<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        let pk: Option<i64> = tx
            .query_opt(
                "SELECT pk FROM plans WHERE plan_id = $1 FOR UPDATE",
                &[&plan_id],
            )
            .await
            .map_err(backend)?
            .map(|r| r.get(0));
        let Some(pk) = pk else {
            return Ok(false);
        };
        for sql in [
            "DELETE FROM events WHERE plan_pk = $1",
            "DELETE FROM snapshots WHERE plan_pk = $1",
            "DELETE FROM leases WHERE plan_pk = $1",
            "DELETE FROM reviews WHERE plan_pk = $1",
            "DELETE FROM plans WHERE pk = $1",
        ] {
            tx.execute(sql, &[&pk]).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    fn stats(&self) -> Option<cairn_store::StoreStats> {
        Some(self.shared.stats().snapshot().into())
    }

    fn unavailable(&self) -> Option<String> {
        self.shared
            .stats()
            .unavailable()
            .or_else(|| self.session_state.problem())
    }

    fn commit_hint(&self) -> Option<Arc<Notify>> {
        Some(self.hint.clone())
    }

    fn want_commit_hints(&self, on: bool) {
        // The session listens only while they are.
        self.session_state.wanted.set(on);
    }
}

#[async_trait]
impl PlanIndex for PgStore {
    async fn get_plan(&self, plan_id: &str) -> StoreResult<Option<PlanRow>> {
        let c = self.client().await?;
        read::plan(&c, plan_id).await
    }

    async fn list_plans(
        &self,
        state: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<PlanRow>> {
        if limit == 0 {
            return Err(StoreError::Invalid("limit must be at least 1".into()));
        }
        let after = cursor.map(read::parse_cursor).transpose()?;
        let c = self.client().await?;
        read::list_plans(&c, state, None, limit, after).await
    }

    async fn search_plans(
        &self,
        state: Option<&str>,
        id_contains: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<PlanRow>> {
        if limit == 0 {
            return Err(StoreError::Invalid("limit must be at least 1".into()));
        }
        let after = cursor.map(read::parse_cursor).transpose()?;
        let c = self.client().await?;
        read::list_plans(&c, state, Some(id_contains), limit, after).await
    }

    async fn plans_in_states(&self, states: &[&str]) -> StoreResult<Vec<String>> {
        let c = self.client().await?;
        read::plans_in_states(&c, states).await
    }

    async fn count_plans_by_state(&self) -> StoreResult<Vec<(String, u64)>> {
        let c = self.client().await?;
        read::count_plans_by_state(&c).await
    }

    async fn list_reviews(
        &self,
        state: Option<&str>,
        plan_id: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<ReviewRow>> {
        if limit == 0 {
            return Err(StoreError::Invalid("limit must be at least 1".into()));
        }
        let after = cursor.map(read::parse_cursor).transpose()?;
        let c = self.client().await?;
        read::list_reviews(&c, state, plan_id, limit, after).await
    }

    async fn open_reviews(&self) -> StoreResult<OpenReviews> {
        let c = self.client().await?;
        read::open_reviews(&c).await
    }
}

impl PgStore {
    /// A claim through the writer (claims share the appends' transactions: see `writer.rs`),
    /// answering the plan's first event id too when `incarnation` asks for it: read by the
    /// claim's own transaction, after the plan row it claims was locked (so it is that plan's,
    /// not a later one's under the same id).
    async fn claim_through_writer(
        &self,
        plan_id: &str,
        node: &str,
        ttl_ms: u64,
        incarnation: bool,
    ) -> StoreResult<(Fence, Option<u64>)> {
        match self
            .write(writer::Op::Claim {
                plan_id: plan_id.to_owned(),
                node: node.to_owned(),
                ttl: ttl_micros(ttl_ms),
                incarnation,
            })
            .await?
        {
            writer::Outcome::Claimed(fence, first) => Ok((fence, first)),
            _ => Err(unexpected("claim")),
        }
    }
}

/// Leases are timed by the database's clock: the `now` arguments are ignored.
#[async_trait]
impl Leases for PgStore {
    async fn claim(
        &self,
        plan_id: &str,
        node: &str,
        ttl_ms: u64,
        _now: Micros,
    ) -> StoreResult<Fence> {
        Ok(self
            .claim_through_writer(plan_id, node, ttl_ms, false)
            .await?
            .0)
    }

    async fn claim_incarnation(
        &self,
        plan_id: &str,
        node: &str,
        ttl_ms: u64,
        _now: Micros,
    ) -> StoreResult<(Fence, Option<u64>)> {
        self.claim_through_writer(plan_id, node, ttl_ms, true).await
    }

    async fn release(&self, plan_id: &str, fence: &Fence) -> StoreResult<()> {
        match self
            .write(writer::Op::Release {
                plan_id: plan_id.to_owned(),
                fence: fence.clone(),
            })
            .await?
        {
            writer::Outcome::Released => Ok(()),
            _ => Err(unexpected("release")),
        }
    }

    /// One statement for every plan, whatever their number. It locks the leases it renews in
    /// the order of their plan's key, as the writer does, so it never deadlocks with an append
    /// in flight: it waits for that append's commit instead (and for a takeover in flight, which
    /// changes the node and token, so that lease is then left out).
    async fn renew(
        &self,
        node: &str,
        plans: &[(String, u64)],
        ttl_ms: u64,
        _now: Micros,
    ) -> StoreResult<Vec<String>> {
        if plans.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, tokens): (Vec<&str>, Vec<i64>) = plans
            .iter()
            .map(|(id, token)| (id.as_str(), to_sql(*token)))
            .unzip();
        let c = self.client().await?;
        let stmt = c
            .prepare_cached(
                // Each plan's key is looked up by its id (one index probe each) before the
                // leases are joined on key and token together: however stale the table
                // statistics, no join pairs every lease of the node with every plan asked.
                "WITH asked AS MATERIALIZED (
                     SELECT (SELECT pk FROM plans WHERE plan_id = r.plan_id) AS pk,
                            r.plan_id, r.token
                     FROM unnest($3::text[], $4::bigint[]) AS r(plan_id, token)
                 ), held AS (
                     SELECT l.plan_pk, a.plan_id
                     FROM asked a JOIN leases l ON l.plan_pk = a.pk AND l.token = a.token
                     WHERE l.node = $1 AND NOT l.released
                     ORDER BY l.plan_pk
                     FOR NO KEY UPDATE OF l
                 )
                 UPDATE leases l SET expires_at = cairn_now() + $2
                 FROM held WHERE l.plan_pk = held.plan_pk
                 RETURNING held.plan_id",
            )
            .await
            .map_err(backend)?;
        let rows = c
            .query(&stmt, &[&node, &ttl_micros(ttl_ms), &ids, &tokens])
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn lease(&self, plan_id: &str) -> StoreResult<Option<LeaseRow>> {
        let c = self.client().await?;
        read::lease(&c, plan_id).await
    }

    async fn take_over(
        &self,
        node: &str,
        ttl_ms: u64,
        states: &[&str],
        limit: usize,
        _now: Micros,
    ) -> StoreResult<Vec<(String, Fence)>> {
        if states.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let c = self.client().await?;
        let states: Vec<&str> = states.to_vec();
        // Leases another transaction holds (a takeover by another node, an append, claim or
        // renewal in flight) are skipped, never waited for.
        let stmt = c
            .prepare_cached(
                "WITH cand AS (
                     SELECT l.plan_pk FROM leases l JOIN plans p ON p.pk = l.plan_pk
                     WHERE p.state = ANY($3) AND NOT l.released
                       AND l.expires_at <= cairn_now()
                     ORDER BY l.expires_at, l.plan_pk
                     LIMIT $4
                     FOR UPDATE OF l SKIP LOCKED
                 )
                 UPDATE leases l SET node = $1, token = l.token + 1,
                                     expires_at = cairn_now() + $2, released = false
                 FROM cand, plans p
                 WHERE l.plan_pk = cand.plan_pk AND p.pk = l.plan_pk
                 RETURNING p.plan_id, l.token",
            )
            .await
            .map_err(backend)?;
        let rows = c
            .query(
                &stmt,
                &[&node, &ttl_micros(ttl_ms), &states, &limit_sql(limit)],
            )
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    Fence {
                        node: node.to_owned(),
                        token: from_sql(r.get(1)),
                    },
                )
            })
            .collect())
    }
}

#[async_trait]
impl Snapshots for PgStore {
    async fn put_snapshot(&self, plan_id: &str, seq: u64, data: Vec<u8>) -> StoreResult<()> {
        let c = self.client().await?;
        // One prepared statement, its own transaction (one round trip, not six): the plan's
        // row is held (`FOR KEY SHARE`) while the snapshot goes in, so a delete of the plan
        // (which locks the row first) waits for it, and a plan deleted first is not found
        // (no orphan rows either way). Every snapshot is kept (the engine spaces them):
        // reading the state at an old checkpoint replays from the nearest one, never from the
        // start.
        let stmt = c
            .prepare_cached(
                "INSERT INTO snapshots (plan_pk, seq, data)
                 SELECT pk, $2, $3 FROM plans WHERE plan_id = $1 FOR KEY SHARE
                 ON CONFLICT (plan_pk, seq) DO UPDATE SET data = EXCLUDED.data
                 RETURNING plan_pk",
            )
            .await
            .map_err(backend)?;
        c.query_opt(&stmt, &[&plan_id, &to_sql(seq), &data])
            .await
            .map_err(backend)?
            .map(|_| ())
            .ok_or_else(|| StoreError::NotFound(plan_id.to_owned()))
    }

    async fn get_snapshot(
        &self,
        plan_id: &str,
        at_or_before: u64,
    ) -> StoreResult<Option<(u64, Vec<u8>)>> {
        let c = self.client().await?;
        read::snapshot(&c, plan_id, at_or_before).await
    }
}

#[async_trait]
impl Tokens for PgStore {
    async fn create_token(&self, t: TokenRow) -> StoreResult<()> {
        let c = self.client().await?;
        // Without a conflict target: a taken id and a taken hash both insert nothing.
        let n = c
            .execute(
                "INSERT INTO tokens (id, user_name, role, hash, created_at, revoked_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                &[
                    &t.id,
                    &t.user,
                    &t.role,
                    &t.hash,
                    &t.created_at,
                    &t.revoked_at,
                    &t.expires_at,
                ],
            )
            .await
            .map_err(backend)?;
        if n == 0 {
            return Err(StoreError::Invalid(format!(
                "token {} already exists",
                t.id
            )));
        }
        Ok(())
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenRow>> {
        let c = self.client().await?;
        read::tokens(&c).await
    }

    async fn revoke_token(&self, id: &str, at: Micros) -> StoreResult<bool> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &at],
            )
            .await
            .map_err(backend)?;
        Ok(n > 0)
    }

    async fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRow>> {
        let c = self.client().await?;
        read::token_by_hash(&c, hash).await
    }
}

#[async_trait]
impl Templates for PgStore {
    async fn put_template_version(
        &self,
        new: NewTemplateVersion,
    ) -> StoreResult<(TemplateRow, bool)> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(backend)?;
        // The name's row, created (with no version yet) the first time, then locked: pushes of
        // one name number their versions one after the other.
        tx.execute(
            "INSERT INTO templates (name, latest) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING",
            &[&new.name],
        )
        .await
        .map_err(backend)?;
        let latest: i64 = tx
            .query_one(
                "SELECT latest FROM templates WHERE name = $1 FOR UPDATE",
                &[&new.name],
            )
            .await
            .map_err(backend)?
            .get(0);
        let same = tx
            .query_opt(
                "SELECT version, content, created_at, created_by FROM template_versions
                 WHERE name = $1 AND version = $2",
                &[&new.name, &latest],
            )
            .await
            .map_err(backend)?
            .filter(|r| r.get::<_, &str>(1) == new.content);
        tx.execute(
            "UPDATE templates SET deleted_at = NULL, latest = $2 WHERE name = $1",
            &[&new.name, &(latest + i64::from(same.is_none()))],
        )
        .await
        .map_err(backend)?;
        let answer = if let Some(r) = same {
            (
                TemplateRow {
                    name: new.name,
                    version: from_sql(r.get(0)),
                    content: r.get(1),
                    created_at: r.get(2),
                    created_by: r.get(3),
                    deleted_at: None,
                },
                false,
            )
        } else {
            let version = latest + 1;
            tx.execute(
                "INSERT INTO template_versions (name, version, content, created_at, created_by)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &new.name,
                    &version,
                    &new.content,
                    &new.created_at,
                    &new.created_by,
                ],
            )
            .await
            .map_err(backend)?;
            (
                TemplateRow {
                    name: new.name,
                    version: from_sql(version),
                    content: new.content,
                    created_at: new.created_at,
                    created_by: new.created_by,
                    deleted_at: None,
                },
                true,
            )
        };
        tx.commit().await.map_err(backend)?;
        Ok(answer)
    }

    async fn get_template(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> StoreResult<Option<TemplateRow>> {
        let c = self.client().await?;
        read::template(&c, name, version).await
    }

    async fn list_templates(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<TemplateRow>> {
        if limit == 0 {
            return Err(StoreError::Invalid("limit must be at least 1".into()));
        }
        let c = self.client().await?;
        read::list_templates(&c, limit, cursor).await
    }

    async fn template_versions(&self, name: &str) -> StoreResult<Vec<TemplateRow>> {
        let c = self.client().await?;
        read::template_versions(&c, name).await
    }

    async fn delete_template(&self, name: &str, at: Micros) -> StoreResult<bool> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE templates SET deleted_at = $2
                 WHERE name = $1 AND deleted_at IS NULL AND latest > 0",
                &[&name, &at],
            )
            .await
            .map_err(backend)?;
        Ok(n > 0)
    }
}

#[async_trait]
impl Cursors for PgStore {
    async fn get_cursor(&self, name: &str) -> StoreResult<Option<u64>> {
        let c = self.client().await?;
        Ok(
            c.query_opt("SELECT value FROM cursors WHERE name = $1", &[&name])
                .await
                .map_err(backend)?
                .map(|r| from_sql(r.get(0))),
        )
    }

    async fn set_cursor(&self, name: &str, value: u64) -> StoreResult<()> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO cursors (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            &[&name, &to_sql(value)],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }

    /// By the database's clock.
    async fn lease_cursor(&self, name: &str, node: &str, ttl_ms: u64) -> StoreResult<bool> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "INSERT INTO cursor_leases (name, node, expires_at)
                 VALUES ($1, $2, cairn_now() + $3)
                 ON CONFLICT (name) DO UPDATE
                 SET node = EXCLUDED.node, expires_at = EXCLUDED.expires_at
                 WHERE cursor_leases.node = EXCLUDED.node
                    OR cursor_leases.expires_at <= cairn_now()
                 RETURNING 1",
                &[&name, &node, &ttl_micros(ttl_ms)],
            )
            .await
            .map_err(backend)?;
        Ok(row.is_some())
    }
}

#[async_trait]
impl Nodes for PgStore {
    /// By the database's clock. A heartbeat without an address keeps the one known (the engine
    /// and the HTTP server of one node both beat, and only the server knows where it listens).
    async fn heartbeat(
        &self,
        node_id: &str,
        address: Option<&str>,
        started_at: Micros,
    ) -> StoreResult<()> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO nodes (node_id, address, started_at, heartbeat_at)
             VALUES ($1, $2, $3, cairn_now())
             ON CONFLICT (node_id) DO UPDATE
             SET address = COALESCE(EXCLUDED.address, nodes.address),
                 started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at",
            &[&node_id, &address, &started_at],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn list_nodes(&self) -> StoreResult<Vec<NodeRow>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT n.node_id, n.address, n.started_at, n.heartbeat_at,
                        (SELECT count(*) FROM leases l WHERE l.node = n.node_id
                           AND NOT l.released AND l.expires_at > cairn_now())
                 FROM nodes n ORDER BY n.node_id",
                &[],
            )
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| NodeRow {
                node_id: r.get(0),
                address: r.get(1),
                started_at: r.get(2),
                heartbeat_at: r.get(3),
                plans_owned: from_sql(r.get(4)),
            })
            .collect())
    }

    async fn cluster_secret(&self) -> StoreResult<String> {
        let c = self.client().await?;
        let mut buf = [0u8; 32];
        getrandom::fill(&mut buf).map_err(|e| StoreError::Backend(format!("random bytes: {e}")))?;
        let candidate: String = buf.iter().map(|b| format!("{b:02x}")).collect();
        // The first node to ask creates it; every later ask reads the one stored.
        c.execute(
            "INSERT INTO cairn_meta (key, value) VALUES ('cluster_secret', $1)
             ON CONFLICT (key) DO NOTHING",
            &[&candidate],
        )
        .await
        .map_err(backend)?;
        let row = c
            .query_one(
                "SELECT value FROM cairn_meta WHERE key = 'cluster_secret'",
                &[],
            )
            .await
            .map_err(backend)?;
        Ok(row.get(0))
    }
}
