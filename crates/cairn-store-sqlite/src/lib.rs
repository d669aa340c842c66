//! The SQLite backend of cairn's [`Store`]: one file, WAL, one writer thread with group commit,
//! and a small pool of read connections.
//!
//! Writes (`create_plan`, `append`, `put_snapshot`, `delete_plan`, `claim`, `release`) are sent
//! to a dedicated writer thread ([`writer`]) that takes whatever requests are queued, runs them
//! in one transaction (a savepoint each, so a refused request does not spoil its neighbours),
//! commits once and then answers every caller. A thousand plans appending at once therefore
//! share a handful of fsyncs instead of paying one each. Reads ([`read`]) run on
//! `spawn_blocking` against pooled read-only connections, which WAL lets proceed while the
//! writer commits.
//!
//! Durability: with [`Durability::Full`] (the default) every commit is fsync'd before any caller
//! of that batch gets `Ok`. [`Durability::Relaxed`] (`synchronous=NORMAL`) may lose the last
//! commits on power loss (never on a process crash); use it only for benchmarks that say so.
//!
//! The engine lock: with [`SqliteOptions::engine_lock`] the store takes an exclusive advisory
//! lock on `<db path>.lock` for its whole life, so at most one engine process drives the plans
//! of a database file. Because no other engine can then be alive on this file, **`claim` treats
//! every lease held by another node as expired**: after a `kill -9`, a restarted process takes
//! its plans over at once instead of waiting out the old leases (the old node's fences become
//! stale, as after any takeover). Without the lock, leases follow the ordinary semantics.
//!
//! Cancelling a write future does not cancel the write: once sent, a request is executed and
//! committed (or refused) whether or not anyone still awaits the answer.
//!
//! The lock file also says who holds it (`pid=`, `command=` and, for a server, `address=`
//! lines), so a process refused the lock can tell its user which process to go through
//! ([`lock_holder`]).
//!
//! Read-only stores ([`SqliteStore::open_read_only`]) have no writer thread and take no lock:
//! they read a file another process may be driving, which WAL allows at any time.
//!
//! Storage failures: SQLite errors that mean the file cannot be written or reached (a full disk,
//! an I/O error, a read-only or vanished file, a lock held too long) become
//! [`StoreError::Unavailable`] with a sentence saying which; [`Store::unavailable`] reports the
//! last such failure until a write succeeds again. Nothing of a failed batch is acknowledged,
//! and once space returns the next batch commits as usual.
//!
//! Closing: [`SqliteStore::close`] moves everything from the `-wal` file into the database file
//! and stops taking writes, so the file alone holds every plan; the writer thread also does this
//! when the store is dropped. [`backup`] copies a live database with SQLite's online backup API.
//!
//! The path must name a file: `:memory:` databases are not supported (readers could not see it).

use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use cairn_store::{
    Append, CheckpointRow, CreatePlan, Cursors, EventLog, Fence, LeaseRow, Leases, Micros,
    NewTemplateVersion, NodeRow, Nodes, OpenReviews, Page, PlanIndex, PlanRow, ReviewRow,
    Snapshots, StoreError, StoreResult, StoredEvent, TemplateRow, Templates, TokenRow, Tokens,
};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

mod backup;
mod read;
mod writer;

pub use backup::{backup, BackupReport};

pub use writer::WriterStats;

use read::ReadPool;
use writer::{Op, Outcome, Request};

const SCHEMA_VERSION: i64 = 6;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How hard each commit is pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// WAL with `synchronous=FULL`: every commit is fsync'd before it is acknowledged.
    #[default]
    Full,
    /// WAL with `synchronous=NORMAL`: survives a process crash but may lose the last commits on
    /// power loss. Only for benchmarks that say so.
    Relaxed,
}

/// Reads that may run at once (each on a blocking thread with its own connection).
const READ_SLOTS: usize = 4;

/// How to open a [`SqliteStore`].
#[derive(Debug, Clone, Default)]
pub struct SqliteOptions {
    pub durability: Durability,
    /// Hold an exclusive lock on `<db path>.lock` and take over other nodes' leases at once.
    /// See the module docs.
    pub engine_lock: bool,
    /// What the lock file says holds it besides the pid (e.g. `cairn run`); shown to processes
    /// that are refused the lock.
    pub lock_command: Option<String>,
}

/// Who holds the engine lock of a database, as its lock file says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: Option<u32>,
    pub command: Option<String>,
    /// Where the holder can be reached (a server's URL), once it has said so.
    pub address: Option<String>,
}

impl LockHolder {
    /// "cairn serve (pid 42, at http://127.0.0.1:8080)", with what is known.
    pub fn describe(&self) -> String {
        let mut out = self
            .command
            .clone()
            .unwrap_or_else(|| "another cairn process".to_owned());
        let mut details = Vec::new();
        if let Some(pid) = self.pid {
            details.push(format!("pid {pid}"));
        }
        if let Some(address) = &self.address {
            details.push(format!("at {address}"));
        }
        if !details.is_empty() {
            out.push_str(&format!(" ({})", details.join(", ")));
        }
        out
    }
}

/// Who holds the engine lock of the database at `db`, if the lock is held now. `None` when the
/// lock is free (or the lock file cannot be read).
pub fn lock_holder(db: &Path) -> Option<LockHolder> {
    let path = lock_path(db);
    let file = OpenOptions::new().read(true).write(true).open(&path).ok()?;
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => {
            // Free: nobody holds it, whatever the file says about a past holder.
            let _ = fs4::FileExt::unlock(&file);
            None
        }
        Err(_) => Some(read_holder(&path)),
    }
}

fn read_holder(lock_path: &Path) -> LockHolder {
    let text = std::fs::read_to_string(lock_path).unwrap_or_default();
    let mut holder = LockHolder::default();
    for line in text.lines() {
        match line.split_once('=') {
            Some(("pid", v)) => holder.pid = v.trim().parse().ok(),
            Some(("command", v)) if !v.trim().is_empty() => {
                holder.command = Some(v.trim().to_owned())
            }
            Some(("address", v)) if !v.trim().is_empty() => {
                holder.address = Some(v.trim().to_owned())
            }
            _ => {}
        }
    }
    holder
}

/// A [`Store`] in one SQLite file. Dropping it stops the writer thread after the batch in hand
/// (blocking the dropping thread for that long) and releases the engine lock.
pub struct SqliteStore {
    // Declared (and so dropped) before `writer` would be, but `Drop` takes both explicitly.
    tx: Option<mpsc::Sender<Request>>,
    /// The write connection, which a caller finding the writer idle uses itself.
    shared: Option<Arc<writer::Shared>>,
    writer: Option<JoinHandle<()>>,
    readers: Arc<ReadPool>,
    /// Reads running at once. Without a bound, a burst of reads (10,000 plans loading) would
    /// start as many blocking threads as tokio allows, each with its own stack and allocator
    /// arena, for no gain on a disk that serves a few at a time.
    read_slots: Arc<tokio::sync::Semaphore>,
    stats: Arc<writer::Stats>,
    path: PathBuf,
    /// The lock file, held to keep the advisory lock (released when the store is dropped), and
    /// what it says about its holder.
    engine_lock: Option<(File, String)>,
    /// The nodes that sent a heartbeat (this process's engines: a SQLite store has one
    /// process), and the secret they would share.
    nodes: std::sync::Mutex<std::collections::BTreeMap<String, NodeEntry>>,
    secret: String,
}

/// A node's address, start time and latest heartbeat.
type NodeEntry = (Option<String>, Micros, Micros);

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies the schema and starts the
    /// writer thread.
    pub fn open(path: &Path, opts: SqliteOptions) -> StoreResult<SqliteStore> {
        let engine_lock = if opts.engine_lock {
            let file = take_engine_lock(path)?;
            let command = opts.lock_command.clone().unwrap_or_default();
            write_holder(&file, &command, None);
            Some((file, command))
        } else {
            None
        };
        let mut conn = Connection::open(path).ctx(&format!("open {}", path.display()))?;
        configure_writer(&conn, opts.durability)?;
        migrate(&mut conn)?;

        let stats = Arc::new(writer::Stats::default());
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(writer::Shared::new(writer::Writer::new(
            conn,
            opts.engine_lock,
            stats.clone(),
        )));
        let w = shared.clone();
        let handle = std::thread::Builder::new()
            .name("cairn-sqlite-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| backend("start the sqlite writer thread", e))?;
        Ok(SqliteStore {
            tx: Some(tx),
            shared: Some(shared),
            writer: Some(handle),
            readers: Arc::new(ReadPool::new(path.to_path_buf())),
            read_slots: Arc::new(tokio::sync::Semaphore::new(READ_SLOTS)),
            stats,
            path: path.to_path_buf(),
            engine_lock,
            nodes: Default::default(),
            secret: random_secret()?,
        })
    }

    /// Opens an existing database for reading only: no writer thread, no lock, nothing
    /// created. Safe while another process drives the file. Every write answers `Invalid`.
    /// A database of an older schema is upgraded first when no engine holds it.
    pub fn open_read_only(path: &Path) -> StoreResult<SqliteStore> {
        if !path.is_file() {
            return Err(StoreError::Unavailable(format!(
                "there is no database at {}",
                path.display()
            )));
        }
        let read_version = || -> StoreResult<(i64, i64)> {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .ctx(&format!("open {} for reading", path.display()))?;
            conn.busy_timeout(BUSY_TIMEOUT).ctx("set busy timeout")?;
            let version = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .ctx(&format!("read the schema version of {}", path.display()))?;
            let tables = conn
                .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
                .ctx(&format!("read the tables of {}", path.display()))?;
            Ok((version, tables))
        };
        let writable = || {
            SqliteStore::open(
                path,
                SqliteOptions {
                    engine_lock: true,
                    ..SqliteOptions::default()
                },
            )
        };
        let (version, tables) = match read_version() {
            Ok(found) => found,
            // A process killed while creating the file can leave a log that only a writer may
            // recover; when no engine holds the file, opening it for writing does, once.
            Err(first) => match writable() {
                Ok(store) => {
                    drop(store);
                    read_version()?
                }
                Err(_) => return Err(first),
            },
        };
        if version == 0 && tables == 0 {
            // An empty file: a process was killed creating the store before its first commit.
            // Opening it for writing creates the schema (nothing else could be in it).
            drop(writable()?);
        } else if version == 0 {
            return Err(StoreError::Backend(format!(
                "{} is not a cairn database",
                path.display()
            )));
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::Backend(format!(
                "database schema version {version} is newer than this build understands \
                 ({SCHEMA_VERSION})"
            )));
        }
        if version < SCHEMA_VERSION {
            // Opening for writing applies the missing migrations; it needs the lock, which only
            // a process of an older build could hold now.
            drop(SqliteStore::open(
                path,
                SqliteOptions {
                    engine_lock: true,
                    ..SqliteOptions::default()
                },
            )?);
        }
        Ok(SqliteStore {
            tx: None,
            shared: None,
            writer: None,
            readers: Arc::new(ReadPool::new(path.to_path_buf())),
            read_slots: Arc::new(tokio::sync::Semaphore::new(READ_SLOTS)),
            stats: Arc::new(writer::Stats::default()),
            path: path.to_path_buf(),
            engine_lock: None,
            nodes: Default::default(),
            secret: random_secret()?,
        })
    }

    /// Records in the lock file where the holder can be reached (a server's URL), for the
    /// messages of processes that are refused the lock. No-op without the engine lock.
    pub fn announce_address(&self, address: &str) {
        if let Some((file, command)) = &self.engine_lock {
            write_holder(file, command, Some(address));
        }
    }

    /// Closes the store for writing: commits the writes queued before this call, moves every
    /// committed change from the `-wal` file into the database file, empties the `-wal` file
    /// (`wal_checkpoint(TRUNCATE)`) and stops the writer thread, so the database file alone
    /// holds everything. Later writes fail (none is acknowledged); reads go on working. Returns
    /// whether the checkpoint completed (readers of other processes may hold it back).
    ///
    /// Blocks until the writer thread has done it: call it from synchronous code (a clean exit),
    /// never from inside an async runtime.
    pub fn close(&self) -> StoreResult<bool> {
        let (reply, answer) = oneshot::channel();
        let sent = match (&self.tx, &self.shared) {
            (Some(tx), Some(shared)) => {
                // Counted and never answered as a request: nobody commits inline after it.
                shared.queued();
                tx.send(Request {
                    op: Op::Close,
                    reply,
                })
                .is_ok()
            }
            _ => return Ok(false),
        };
        if !sent {
            return Err(StoreError::Backend(
                "the sqlite writer thread has stopped".into(),
            ));
        }
        match answer.blocking_recv() {
            Ok(Ok(Outcome::Checkpointed(done))) => Ok(done),
            Ok(Ok(_)) => Err(unexpected("close")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Backend(
                "the sqlite writer thread stopped before answering".into(),
            )),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters of the writer thread, for metrics and benchmarks.
    pub fn stats(&self) -> WriterStats {
        self.stats.snapshot()
    }

    /// What checkpoints cost on disk: `(checkpoints, bytes)`, where bytes are the pages of the
    /// partial checkpoint index (from the `dbstat` table) plus the checkpoint columns stored in
    /// the event rows (with one header byte each). For benchmarks.
    pub async fn checkpoint_storage(&self) -> StoreResult<(u64, u64)> {
        self.read(|conn| {
            let count: i64 = conn
                .query_row(
                    "SELECT count(*) FROM events WHERE cp_trigger IS NOT NULL",
                    [],
                    |r| r.get(0),
                )
                .ctx("count checkpoints")?;
            let columns: i64 = conn
                .query_row(
                    "SELECT coalesce(sum(length(cp_trigger) + coalesce(length(cp_label), 0) + 2), 0) FROM events WHERE cp_trigger IS NOT NULL",
                    [],
                    |r| r.get(0),
                )
                .ctx("measure checkpoint columns")?;
            let index: i64 = conn
                .query_row(
                    "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = 'checkpoints_by_plan'",
                    [],
                    |r| r.get(0),
                )
                .ctx("measure the checkpoint index")?;
            Ok((count as u64, (columns + index) as u64))
        })
        .await
    }

    async fn write(&self, op: Op) -> StoreResult<Outcome> {
        let (Some(tx), Some(shared)) = (&self.tx, &self.shared) else {
            return Err(StoreError::Invalid(format!(
                "{} was opened read-only",
                self.path.display()
            )));
        };
        // Nothing queued and nothing being committed: commit here, without waking the writer
        // thread and being woken by it (see `writer::Shared`).
        if shared.claim_idle(&op) {
            return shared.commit_claimed(op);
        }
        let (reply, answer) = oneshot::channel();
        shared.queued();
        if tx.send(Request { op, reply }).is_err() {
            return Err(StoreError::Backend(
                "the sqlite writer thread has stopped".into(),
            ));
        }
        answer.await.map_err(|_| {
            StoreError::Backend("the sqlite writer thread stopped before answering".into())
        })?
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        let _slot = self
            .read_slots
            .acquire()
            .await
            .map_err(|e| backend("wait for a sqlite read slot", e))?;
        tokio::task::spawn_blocking(move || pool.with(f))
            .await
            .map_err(|e| backend("run a sqlite read", e))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop once the batch in hand is committed.
        self.tx.take();
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
    }
}

fn unexpected(what: &str) -> StoreError {
    StoreError::Backend(format!(
        "the sqlite writer answered {what} with the wrong kind"
    ))
}

#[async_trait]
impl EventLog for SqliteStore {
    async fn create_plan(&self, req: CreatePlan) -> StoreResult<Vec<StoredEvent>> {
        match self.write(Op::Create(req)).await? {
            Outcome::Events(evs) => Ok(evs),
            _ => Err(unexpected("create_plan")),
        }
    }

    async fn create_plan_leased(
        &self,
        req: CreatePlan,
        node: &str,
        ttl_ms: u64,
        now: Micros,
    ) -> StoreResult<(Vec<StoredEvent>, Option<Fence>)> {
        let op = Op::CreateLeased {
            create: req,
            node: node.to_owned(),
            ttl_ms,
            now,
        };
        match self.write(op).await? {
            Outcome::CreatedLeased(evs, fence) => Ok((evs, Some(fence))),
            _ => Err(unexpected("create_plan_leased")),
        }
    }

    async fn append(&self, req: Append) -> StoreResult<Vec<StoredEvent>> {
        match self.write(Op::Append(req)).await? {
            Outcome::Events(evs) => Ok(evs),
            _ => Err(unexpected("append")),
        }
    }

    async fn create_plan_with(
        &self,
        create: CreatePlan,
        append: Append,
    ) -> StoreResult<(Vec<StoredEvent>, Vec<StoredEvent>)> {
        match self.write(Op::CreateWith { create, append }).await? {
            Outcome::Both(created, appended) => Ok((created, appended)),
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
        let plan_id = plan_id.to_owned();
        self.read(move |c| read::events(c, &plan_id, after_seq, until_seq, limit))
            .await
    }

    async fn read_events_of_kind(
        &self,
        plan_id: &str,
        kinds: &[&str],
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        let plan_id = plan_id.to_owned();
        let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
        self.read(move |c| read::events_of_kind(c, &plan_id, &kinds, after_seq, limit))
            .await
    }

    async fn read_all_events(&self, after_id: u64, limit: usize) -> StoreResult<Vec<StoredEvent>> {
        self.read(move |c| read::all_events(c, after_id, limit))
            .await
    }

    async fn last_event_id(&self) -> StoreResult<u64> {
        self.read(read::last_event_id).await
    }

    async fn list_checkpoints(
        &self,
        plan_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<CheckpointRow>> {
        let plan_id = plan_id.to_owned();
        self.read(move |c| read::checkpoints(c, &plan_id, after_seq, limit))
            .await
    }

    async fn get_checkpoint(&self, plan_id: &str, seq: u64) -> StoreResult<Option<CheckpointRow>> {
        let plan_id = plan_id.to_owned();
        self.read(move |c| read::checkpoint(c, &plan_id, seq)).await
    }

    async fn delete_plan(&self, plan_id: &str) -> StoreResult<bool> {
        match self.write(Op::Delete(plan_id.to_owned())).await? {
            Outcome::Deleted(found) => Ok(found),
            _ => Err(unexpected("delete_plan")),
        }
    }

    fn stats(&self) -> Option<cairn_store::StoreStats> {
        Some(self.stats.snapshot().into())
    }

    fn unavailable(&self) -> Option<String> {
        self.stats.unavailable()
    }
}

#[async_trait]
impl PlanIndex for SqliteStore {
    async fn get_plan(&self, plan_id: &str) -> StoreResult<Option<PlanRow>> {
        let plan_id = plan_id.to_owned();
        self.read(move |c| read::plan(c, &plan_id)).await
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
        let state = state.map(str::to_owned);
        self.read(move |c| read::list_plans(c, state.as_deref(), None, limit, after))
            .await
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
        let state = state.map(str::to_owned);
        let part = id_contains.to_owned();
        self.read(move |c| read::list_plans(c, state.as_deref(), Some(&part), limit, after))
            .await
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
        let state = state.map(str::to_owned);
        let plan_id = plan_id.map(str::to_owned);
        self.read(move |c| {
            read::list_reviews(c, state.as_deref(), plan_id.as_deref(), limit, after)
        })
        .await
    }

    async fn open_reviews(&self) -> StoreResult<OpenReviews> {
        self.read(read::open_reviews).await
    }

    async fn plans_in_states(&self, states: &[&str]) -> StoreResult<Vec<String>> {
        let states: Vec<String> = states.iter().map(|s| (*s).to_owned()).collect();
        self.read(move |c| read::plans_in_states(c, &states)).await
    }

    async fn count_plans_by_state(&self) -> StoreResult<Vec<(String, u64)>> {
        self.read(read::count_plans_by_state).await
    }
}

impl SqliteStore {
    /// A claim through the writer, answering the plan's first event id too when `incarnation`
    /// asks for it (read in the claim's own transaction).
    async fn claim_through_writer(
        &self,
        plan_id: &str,
        node: &str,
        ttl_ms: u64,
        now: Micros,
        incarnation: bool,
    ) -> StoreResult<(Fence, Option<u64>)> {
        let op = Op::Claim {
            plan_id: plan_id.to_owned(),
            node: node.to_owned(),
            ttl_ms,
            now,
            incarnation,
        };
        match self.write(op).await? {
            Outcome::Claimed(fence, first) => Ok((fence, first)),
            _ => Err(unexpected("claim")),
        }
    }
}

#[async_trait]
impl Leases for SqliteStore {
    async fn claim(
        &self,
        plan_id: &str,
        node: &str,
        ttl_ms: u64,
        now: Micros,
    ) -> StoreResult<Fence> {
        Ok(self
            .claim_through_writer(plan_id, node, ttl_ms, now, false)
            .await?
            .0)
    }

    async fn claim_incarnation(
        &self,
        plan_id: &str,
        node: &str,
        ttl_ms: u64,
        now: Micros,
    ) -> StoreResult<(Fence, Option<u64>)> {
        self.claim_through_writer(plan_id, node, ttl_ms, now, true)
            .await
    }

    async fn release(&self, plan_id: &str, fence: &Fence) -> StoreResult<()> {
        let op = Op::Release {
            plan_id: plan_id.to_owned(),
            fence: fence.clone(),
        };
        match self.write(op).await? {
            Outcome::Done => Ok(()),
            _ => Err(unexpected("release")),
        }
    }

    /// One request to the writer for every plan: the renewals share a transaction (and its
    /// commit) with whatever else is queued.
    async fn renew(
        &self,
        node: &str,
        plans: &[(String, u64)],
        ttl_ms: u64,
        now: Micros,
    ) -> StoreResult<Vec<String>> {
        if plans.is_empty() {
            return Ok(Vec::new());
        }
        let op = Op::Renew {
            node: node.to_owned(),
            plans: plans.to_vec(),
            ttl_ms,
            now,
        };
        match self.write(op).await? {
            Outcome::Renewed(renewed) => Ok(renewed),
            _ => Err(unexpected("renew")),
        }
    }

    async fn lease(&self, plan_id: &str) -> StoreResult<Option<LeaseRow>> {
        let plan_id = plan_id.to_owned();
        self.read(move |c| read::lease(c, &plan_id)).await
    }

    /// Several engines of one process may share a store (each with its own node id): a plan
    /// whose engine stopped without releasing its lease is taken over once the lease runs out.
    async fn take_over(
        &self,
        node: &str,
        ttl_ms: u64,
        states: &[&str],
        limit: usize,
        now: Micros,
    ) -> StoreResult<Vec<(String, Fence)>> {
        let op = Op::TakeOver {
            node: node.to_owned(),
            ttl_ms,
            states: states.iter().map(|s| (*s).to_owned()).collect(),
            limit,
            now,
        };
        match self.write(op).await? {
            Outcome::TakenOver(taken) => Ok(taken),
            _ => Err(unexpected("take_over")),
        }
    }
}

#[async_trait]
impl Snapshots for SqliteStore {
    async fn put_snapshot(&self, plan_id: &str, seq: u64, data: Vec<u8>) -> StoreResult<()> {
        let op = Op::PutSnapshot {
            plan_id: plan_id.to_owned(),
            seq,
            data,
        };
        match self.write(op).await? {
            Outcome::Done => Ok(()),
            _ => Err(unexpected("put_snapshot")),
        }
    }

    async fn get_snapshot(
        &self,
        plan_id: &str,
        at_or_before: u64,
    ) -> StoreResult<Option<(u64, Vec<u8>)>> {
        let plan_id = plan_id.to_owned();
        self.read(move |c| read::snapshot(c, &plan_id, at_or_before))
            .await
    }
}

#[async_trait]
impl Tokens for SqliteStore {
    async fn create_token(&self, token: TokenRow) -> StoreResult<()> {
        match self.write(Op::CreateToken(token)).await? {
            Outcome::Done => Ok(()),
            _ => Err(StoreError::Backend("unexpected writer answer".into())),
        }
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenRow>> {
        self.read(read::tokens).await
    }

    async fn revoke_token(&self, id: &str, at: Micros) -> StoreResult<bool> {
        match self
            .write(Op::RevokeToken {
                id: id.to_owned(),
                at,
            })
            .await?
        {
            Outcome::Deleted(found) => Ok(found),
            _ => Err(StoreError::Backend("unexpected writer answer".into())),
        }
    }

    async fn token_by_hash(&self, hash: &str) -> StoreResult<Option<TokenRow>> {
        let hash = hash.to_owned();
        self.read(move |c| read::token_by_hash(c, &hash)).await
    }
}

#[async_trait]
impl Templates for SqliteStore {
    async fn put_template_version(
        &self,
        new: NewTemplateVersion,
    ) -> StoreResult<(TemplateRow, bool)> {
        match self.write(Op::PutTemplate(new)).await? {
            Outcome::Template(row, created) => Ok((*row, created)),
            _ => Err(unexpected("put_template_version")),
        }
    }

    async fn get_template(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> StoreResult<Option<TemplateRow>> {
        let name = name.to_owned();
        self.read(move |c| read::template(c, &name, version)).await
    }

    async fn list_templates(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<TemplateRow>> {
        if limit == 0 {
            return Err(StoreError::Invalid("limit must be at least 1".into()));
        }
        let cursor = cursor.map(str::to_owned);
        self.read(move |c| read::list_templates(c, limit, cursor.as_deref()))
            .await
    }

    async fn template_versions(&self, name: &str) -> StoreResult<Vec<TemplateRow>> {
        let name = name.to_owned();
        self.read(move |c| read::template_versions(c, &name)).await
    }

    async fn delete_template(&self, name: &str, at: Micros) -> StoreResult<bool> {
        match self
            .write(Op::DeleteTemplate {
                name: name.to_owned(),
                at,
            })
            .await?
        {
            Outcome::Deleted(found) => Ok(found),
            _ => Err(unexpected("delete_template")),
        }
    }
}

#[async_trait]
impl Cursors for SqliteStore {
    async fn get_cursor(&self, name: &str) -> StoreResult<Option<u64>> {
        let name = name.to_owned();
        self.read(move |c| read::cursor(c, &name)).await
    }

    async fn set_cursor(&self, name: &str, value: u64) -> StoreResult<()> {
        match self
            .write(Op::SetCursor {
                name: name.to_owned(),
                value,
            })
            .await?
        {
            Outcome::Done => Ok(()),
            _ => Err(StoreError::Backend("unexpected writer answer".into())),
        }
    }
}

#[async_trait]
impl Nodes for SqliteStore {
    async fn heartbeat(
        &self,
        node_id: &str,
        address: Option<&str>,
        started_at: Micros,
    ) -> StoreResult<()> {
        let now = now_micros();
        let mut nodes = self
            .nodes
            .lock()
            .map_err(|_| StoreError::Backend("the node table's lock is poisoned".into()))?;
        nodes.insert(
            node_id.to_owned(),
            (address.map(str::to_owned), started_at, now),
        );
        Ok(())
    }

    async fn list_nodes(&self) -> StoreResult<Vec<NodeRow>> {
        let owned = self
            .read(move |c| read::live_leases_by_owner(c, now_micros()))
            .await?;
        let nodes = self
            .nodes
            .lock()
            .map_err(|_| StoreError::Backend("the node table's lock is poisoned".into()))?;
        Ok(nodes
            .iter()
            .map(|(id, (address, started_at, heartbeat_at))| NodeRow {
                node_id: id.clone(),
                address: address.clone(),
                started_at: *started_at,
                heartbeat_at: *heartbeat_at,
                plans_owned: owned.get(id).copied().unwrap_or(0),
            })
            .collect())
    }

    async fn cluster_secret(&self) -> StoreResult<String> {
        Ok(self.secret.clone())
    }
}

fn now_micros() -> Micros {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as Micros)
        .unwrap_or(0)
}

/// 32 random bytes, hex: the secret of a store only one process opens (it lives as long as the
/// store is open; nothing else needs it).
fn random_secret() -> StoreResult<String> {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf).map_err(|e| StoreError::Backend(format!("random bytes: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

// ---- opening -------------------------------------------------------------------------------

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Rewrites the lock file with the holder's pid, command and address. Best effort: the lock
/// itself is what excludes other engines; this text only improves their error messages.
fn write_holder(file: &File, command: &str, address: Option<&str>) {
    let mut text = format!("pid={}\n", std::process::id());
    if !command.is_empty() {
        text.push_str(&format!("command={command}\n"));
    }
    if let Some(address) = address {
        text.push_str(&format!("address={address}\n"));
    }
    let mut f = file;
    let _ = f
        .set_len(0)
        .and_then(|()| f.rewind())
        .and_then(|()| f.write_all(text.as_bytes()));
}

fn take_engine_lock(db: &Path) -> StoreResult<File> {
    let lock_path = lock_path(db);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| backend(&format!("open lock file {}", lock_path.display()), e))?;
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => Ok(file),
        Err(fs4::TryLockError::WouldBlock) => Err(StoreError::Locked(format!(
            "{} drives the plans in {}",
            read_holder(&lock_path).describe(),
            db.display()
        ))),
        Err(fs4::TryLockError::Error(e)) => {
            Err(backend(&format!("lock {}", lock_path.display()), e))
        }
    }
}

fn configure_writer(conn: &Connection, durability: Durability) -> StoreResult<()> {
    conn.busy_timeout(BUSY_TIMEOUT).ctx("set busy timeout")?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .ctx("switch to WAL")?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "switch to WAL: the database stayed in {mode} mode"
        )));
    }
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Relaxed => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)
        .ctx("set synchronous")?;
    conn.set_prepared_statement_cache_capacity(64);
    // Half of SQLite's default page cache. The writer's working set is small (the rightmost
    // pages of the event table and its indexes, the rows of the plans it updates); the rest of
    // a full cache is pages written once and never read again (an event table's leaves), kept
    // resident until evicted. A page read back comes from the WAL or the OS's cache.
    conn.pragma_update(None, "cache_size", WRITE_CACHE_KIB)
        .ctx("set the page cache size")?;
    Ok(())
}

/// The writer's page cache, in KiB (SQLite's `cache_size` takes it negative).
const WRITE_CACHE_KIB: i64 = -1024;

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .ctx("read schema version")?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "database schema version {version} is newer than this build understands \
             ({SCHEMA_VERSION})"
        )));
    }
    // Each step upgrades one version, in its own transaction.
    let steps: [(i64, &str); 6] = [
        (1, include_str!("schema.sql")),
        (2, include_str!("schema_v2.sql")),
        (3, include_str!("schema_v3.sql")),
        (4, include_str!("schema_v4.sql")),
        (5, include_str!("schema_v5.sql")),
        (6, include_str!("schema_v6.sql")),
    ];
    for (to, sql) in steps {
        if version >= to {
            continue;
        }
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .ctx("begin migration")?;
        tx.execute_batch(sql)
            .ctx(&format!("apply schema version {to}"))?;
        tx.pragma_update(None, "user_version", to)
            .ctx("record schema version")?;
        tx.commit().ctx("commit migration")?;
    }
    Ok(())
}

// ---- small shared helpers ------------------------------------------------------------------

pub(crate) fn backend(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{context}: {e}"))
}

/// A rusqlite error as a [`StoreError`]: failures of the storage itself (full, unwritable,
/// unreachable, held too long) are `Unavailable` with a sentence saying why; the rest are
/// `Backend`.
pub(crate) fn sqlite_error(context: &str, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    let why = match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => "the disk holding the database is full",
        Some(ErrorCode::SystemIoFailure) => "the database cannot be written (I/O error)",
        Some(ErrorCode::ReadOnly) => "the database cannot be written (it is read-only)",
        Some(ErrorCode::CannotOpen) => "the database file cannot be opened",
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
            "the database is busy (another connection holds it)"
        }
        Some(ErrorCode::OutOfMemory) => "sqlite ran out of memory",
        _ => return backend(context, e),
    };
    StoreError::Unavailable(format!("{why}; {context}: {e}"))
}

/// Attaches a context to a rusqlite error.
pub(crate) trait Ctx<T> {
    fn ctx(self, context: &str) -> StoreResult<T>;
}

impl<T> Ctx<T> for rusqlite::Result<T> {
    fn ctx(self, context: &str) -> StoreResult<T> {
        self.map_err(|e| sqlite_error(context, e))
    }
}

/// u64 → SQLite integer; values beyond i64 are clamped (they only ever act as bounds).
pub(crate) fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// SQLite integer → u64; negatives (never written by this crate) read as 0.
pub(crate) fn from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
