//! The writer thread: owns the only write connection and applies every write with group commit.
//!
//! It blocks for one request, drains whatever else is queued (up to [`MAX_BATCH`]), runs the
//! lot in one `BEGIN IMMEDIATE` transaction with a `SAVEPOINT` around each request (but appends,
//! which are refused before they change anything and need none), commits once and only then
//! answers the callers. A request that is refused (`SeqConflict`, `Fenced`, …) is rolled back
//! to its savepoint, or changed nothing, and leaves the others alone; if the transaction itself fails
//! (commit error, lost transaction) every request of the batch gets a `Backend` error, so no
//! caller is ever told `Ok` about something that did not reach the disk.
//!
//! Being the only writer is also what makes event ids (the rowid) increase in commit order.
//!
//! A batch that fails for lack of storage (`StoreError::Unavailable`: a full disk, an I/O error)
//! is recorded in [`Stats`] until a later batch commits, so readiness checks can say why writes
//! fail; the writer itself just goes on serving, and recovers as soon as SQLite can write again.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use cairn_store::{
    Append, CheckpointMark, CreatePlan, Fence, Micros, NewEvent, NewTemplateVersion, ReviewRow,
    StoreError, StoreResult, StoredEvent, TemplateRow, TokenRow,
};
use rusqlite::{params, CachedStatement, Connection, OptionalExtension};
use tokio::sync::oneshot;

use crate::{from_sql, to_sql, Ctx};

/// The most requests committed in one transaction.
pub(crate) const MAX_BATCH: usize = 1024;

/// Plans whose index row the writer remembers (see [`Writer::rows`]); past this, it forgets
/// them all and starts again, so a store that saw 100,000 plans does not keep them in memory.
const MAX_ROWS: usize = 4096;

pub(crate) enum Op {
    Create(CreatePlan),
    PutTemplate(NewTemplateVersion),
    DeleteTemplate {
        name: String,
        at: Micros,
    },
    Append(Append),
    /// A create and its lease's claim in one savepoint.
    CreateLeased {
        create: CreatePlan,
        node: String,
        ttl_ms: u64,
        now: Micros,
    },
    /// A create and an append in one savepoint: both are kept or neither is.
    CreateWith {
        create: CreatePlan,
        append: Append,
    },
    PutSnapshot {
        plan_id: String,
        seq: u64,
        data: Vec<u8>,
    },
    Delete(String),
    Claim {
        plan_id: String,
        node: String,
        ttl_ms: u64,
        now: Micros,
        /// Answer the plan's first event id too (`Leases::claim_incarnation`).
        incarnation: bool,
    },
    Release {
        plan_id: String,
        fence: Fence,
    },
    /// Renews the leases `node` still holds under these tokens (see `Leases::renew`).
    Renew {
        node: String,
        plans: Vec<(String, u64)>,
        ttl_ms: u64,
        now: Micros,
    },
    TakeOver {
        node: String,
        ttl_ms: u64,
        states: Vec<String>,
        limit: usize,
        now: Micros,
    },
    CreateToken(TokenRow),
    RevokeToken {
        id: String,
        at: Micros,
    },
    SetCursor {
        name: String,
        value: u64,
    },
    /// Commit what came before, `wal_checkpoint(TRUNCATE)`, then stop serving: requests after
    /// it are never executed, so none is acknowledged without being in the database file.
    Close,
}

pub(crate) enum Outcome {
    Events(Vec<StoredEvent>),
    /// The created plan's events, then the appended ones.
    Both(Vec<StoredEvent>, Vec<StoredEvent>),
    Done,
    Deleted(bool),
    /// The fence, and the plan's first event id when asked.
    Claimed(Fence, Option<u64>),
    /// The created plan's events and its lease's fence.
    CreatedLeased(Vec<StoredEvent>, Fence),
    /// The template version answered, and whether it was created.
    Template(Box<TemplateRow>, bool),
    TakenOver(Vec<(String, Fence)>),
    /// The plans whose lease was renewed.
    Renewed(Vec<String>),
    /// Whether the WAL checkpoint completed.
    Checkpointed(bool),
}

/// How an append outside a savepoint failed.
enum Unguarded {
    /// Before any change: the rest of the batch stands.
    Refused(StoreError),
    /// After a change that cannot be undone alone: the whole transaction is rolled back.
    Broken(StoreError),
}

pub(crate) struct Request {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<StoreResult<Outcome>>,
}

type Sender = oneshot::Sender<StoreResult<Outcome>>;

pub use cairn_store::WriterStats;

/// The writer's counters (shared with the store, which reports them).
pub(crate) type Stats = cairn_store::WriterCounters;

/// The write connection, shared by the writer thread and by callers that find it idle.
///
/// A request normally goes through the channel to the writer thread, which commits whatever is
/// queued in one transaction (group commit) and answers. That costs two thread hand-offs per
/// request, each a wake-up of a sleeping thread, which on a virtual machine is tens of
/// microseconds: more than the rest of a small append besides its fsync. So a caller that finds
/// nothing queued and nothing being committed commits its request itself, on its own thread,
/// and nobody sleeps or wakes. Under load requests are always queued or in flight, and they go
/// to the writer thread as before, which groups them.
///
/// `pending` counts the requests sent and not yet answered by the thread, plus an inline commit
/// in progress; a caller commits inline only by moving it from 0 to 1, so at most one caller at a
/// time blocks its thread on a commit, only while the writer thread has nothing to do. The
/// connection's mutex orders the two: what the thread takes from the queue waits for the inline
/// commit in progress, and event ids still increase in commit order.
pub(crate) struct Shared {
    writer: std::sync::Mutex<Writer>,
    pending: AtomicUsize,
}

impl Shared {
    pub(crate) fn new(writer: Writer) -> Shared {
        Shared {
            writer: std::sync::Mutex::new(writer),
            pending: AtomicUsize::new(0),
        }
    }

    /// Whether `op` can be committed on this thread: the writer is idle, and `op` is not one
    /// that must go through the thread (`Close`). If so the writer counts as busy until
    /// [`Shared::commit_claimed`] has committed it; if not, the caller calls
    /// [`Shared::queued`] and sends it.
    pub(crate) fn claim_idle(&self, op: &Op) -> bool {
        !matches!(op, Op::Close)
            && self
                .pending
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Commits `op` on this thread, after [`Shared::claim_idle`] said yes.
    pub(crate) fn commit_claimed(&self, op: Op) -> StoreResult<Outcome> {
        let result = match self.writer.lock() {
            Ok(w) => {
                w.stats.inline();
                w.commit_one(op)
            }
            Err(_) => Err(StoreError::Backend(
                "the sqlite writer panicked earlier".into(),
            )),
        };
        self.pending.fetch_sub(1, Ordering::AcqRel);
        result
    }

    /// Counts a request about to be sent to the thread.
    pub(crate) fn queued(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// Serves the requests sent to the thread until every sender is gone.
    pub(crate) fn run(&self, rx: Receiver<Request>) {
        let mut ops: Vec<Op> = Vec::with_capacity(MAX_BATCH);
        let mut senders: Vec<Sender> = Vec::with_capacity(MAX_BATCH);
        let mut results: Vec<StoreResult<Outcome>> = Vec::with_capacity(MAX_BATCH);
        while let Ok(first) = rx.recv() {
            let Ok(w) = self.writer.lock() else {
                // An inline commit panicked with the connection: nothing can be trusted.
                return;
            };
            let mut close = None;
            let mut next = Some(first);
            while let Some(req) = next.take() {
                match req.op {
                    Op::Close => {
                        close = Some(req.reply);
                        break;
                    }
                    op => {
                        ops.push(op);
                        senders.push(req.reply);
                    }
                }
                if ops.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            let taken = ops.len() + usize::from(close.is_some());
            if !ops.is_empty() {
                w.commit_batch(ops.drain(..), &mut results);
            }
            if let Some(reply) = close {
                for (reply, result) in senders.drain(..).zip(results.drain(..)) {
                    let _ = reply.send(result);
                }
                // Requests still queued are dropped unanswered: their callers get an error.
                // `pending` is left above 0, so nobody commits inline after the close either.
                let _ = reply.send(w.checkpoint_wal());
                return;
            }
            drop(w);
            // Before answering: a caller answered may commit its next request itself.
            self.pending.fetch_sub(taken, Ordering::AcqRel);
            for (reply, result) in senders.drain(..).zip(results.drain(..)) {
                // The caller may have stopped waiting; the write stands regardless.
                let _ = reply.send(result);
            }
        }
        // Every handle is gone: leave the database file complete on its own.
        if let Ok(w) = self.writer.lock() {
            let _ = w.checkpoint_wal();
        }
    }
}

pub(crate) struct Writer {
    conn: Connection,
    engine_lock: bool,
    stats: Arc<Stats>,
    /// What this connection last committed of plans' index rows: plan id → (pk, state). An
    /// append then updates its row by pk, and leaves `state` (and so its index) alone when it
    /// did not change. Only a hint: the update still checks the plan id, seq and fence, and an
    /// append it refuses forgets the row and is looked at afresh. Forgotten whole when a
    /// transaction or a savepoint rolls back, and when another connection committed (SQLite's
    /// `data_version`), so it never holds a row this connection did not see committed.
    rows: RefCell<HashMap<String, (i64, Option<String>)>>,
    /// `PRAGMA data_version` at the start of the last batch.
    data_version: Cell<Option<i64>>,
    /// The event inserts of 1 to [`INSERT_ROWS`] rows.
    insert_sql: Vec<String>,
}

impl Writer {
    pub(crate) fn new(conn: Connection, engine_lock: bool, stats: Arc<Stats>) -> Writer {
        Writer {
            conn,
            engine_lock,
            stats,
            rows: RefCell::new(HashMap::new()),
            data_version: Cell::new(None),
            insert_sql: (1..=INSERT_ROWS).map(insert_sql).collect(),
        }
    }

    /// Forgets the remembered rows when another connection (another process on the file) has
    /// committed since the last batch, or when there are too many.
    fn check_rows(&self) {
        let version: Option<i64> = self
            .conn
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .ok();
        if version.is_none() || version != self.data_version.get() {
            self.rows.borrow_mut().clear();
        }
        self.data_version.set(version);
        if self.rows.borrow().len() > MAX_ROWS {
            self.rows.borrow_mut().clear();
        }
    }

    fn forget_rows(&self) {
        self.rows.borrow_mut().clear();
    }

    /// Commits one request at once, on the caller's thread (see [`Shared`]).
    fn commit_one(&self, op: Op) -> StoreResult<Outcome> {
        let mut results = Vec::with_capacity(1);
        self.commit_batch(std::iter::once(op), &mut results);
        results.pop().unwrap_or_else(|| {
            Err(StoreError::Backend(
                "the sqlite writer lost an answer".into(),
            ))
        })
    }

    fn checkpoint_wal(&self) -> StoreResult<Outcome> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .ctx("checkpoint the write-ahead log")?;
        Ok(Outcome::Checkpointed(busy == 0))
    }

    /// Commits `ops` in one transaction, pushing one result per op onto `results` (empty).
    fn commit_batch(
        &self,
        ops: impl ExactSizeIterator<Item = Op>,
        results: &mut Vec<StoreResult<Outcome>>,
    ) {
        let started = Instant::now();
        self.stats.batch(ops.len() as u64);

        if let Err(e) = self
            .exec("BEGIN IMMEDIATE")
            .ctx("begin a write transaction")
        {
            self.note_failure(&e);
            results.extend(ops.map(|_| Err(clone_error(&e))));
            return;
        }
        self.check_rows();

        // Set when the transaction can no longer be trusted: everything is rolled back.
        let mut broken: Option<StoreError> = None;
        let mut events = 0u64;
        {
            let hot = Hot::new(&self.conn);
            for op in ops {
                if broken.is_some() {
                    // Overwritten with the batch's error below.
                    results.push(Err(StoreError::Backend(String::new())));
                    continue;
                }
                let result = self.apply_in_savepoint(op, &hot, &mut broken);
                match &result {
                    Ok(Outcome::Events(evs)) => events += evs.len() as u64,
                    Ok(Outcome::Both(a, b)) => events += (a.len() + b.len()) as u64,
                    _ => {}
                }
                results.push(result);
            }
        }

        let committed = match broken {
            Some(e) => Err(e),
            None => self.exec("COMMIT").ctx("commit"),
        };
        match committed {
            Ok(()) => {
                self.stats.committed(events);
                // A batch whose requests were all refused still commits; a refusal caused by
                // the storage is still news for readiness.
                if let Some(e) = results.iter().find_map(|r| match r {
                    Err(e @ StoreError::Unavailable(_)) => Some(e),
                    _ => None,
                }) {
                    self.note_failure(e);
                }
            }
            Err(e) => {
                // Nothing of this batch is durable: no caller may see `Ok`.
                self.forget_rows();
                if !self.conn.is_autocommit() {
                    let _ = self.exec("ROLLBACK");
                }
                self.note_failure(&e);
                for result in results.iter_mut() {
                    *result = Err(clone_error(&e));
                }
            }
        }
        let busy = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.busy(busy);
    }

    /// Runs one request inside its own savepoint; a refused request is rolled back alone.
    ///
    /// An append, by far the most frequent request, runs without one: everything that can
    /// refuse it is checked before its first change (the seq and the fence by the statement
    /// that makes that change), so a refused append has changed nothing. An append that fails
    /// after its first change (an I/O error, a log that disagrees with its plan row) cannot be
    /// rolled back alone, so it breaks the whole transaction: every request of the batch gets
    /// an error and nothing of it is acknowledged. (A savepoint per append made SQLite copy
    /// every page the append touched into its statement journal, again for each append of the
    /// batch: most of the writer's memory traffic.)
    fn apply_in_savepoint(
        &self,
        op: Op,
        hot: &Hot<'_>,
        broken: &mut Option<StoreError>,
    ) -> StoreResult<Outcome> {
        let op = match op {
            Op::Append(req) => {
                let result = match self.append_unguarded(req, hot) {
                    Ok(events) => Ok(Outcome::Events(events)),
                    Err(Unguarded::Refused(e)) => Err(e),
                    Err(Unguarded::Broken(e)) => {
                        *broken = Some(clone_error(&e));
                        return Err(e);
                    }
                };
                if self.conn.is_autocommit() {
                    let e = match &result {
                        Err(e @ StoreError::Unavailable(_)) => clone_error(e),
                        _ => StoreError::Backend(
                            "the write transaction was rolled back by sqlite".into(),
                        ),
                    };
                    *broken = Some(clone_error(&e));
                    return Err(e);
                }
                return result;
            }
            op => op,
        };
        if let Err(e) = self.exec("SAVEPOINT req").ctx("open a savepoint") {
            *broken = Some(clone_error(&e));
            return Err(e);
        }
        let result = self.apply(op, hot);
        let end = if result.is_ok() {
            self.exec("RELEASE req").ctx("release a savepoint")
        } else {
            // What the request wrote is undone, rows it remembered included.
            self.forget_rows();
            self.exec("ROLLBACK TO req")
                .and_then(|()| self.exec("RELEASE req"))
                .ctx("roll back a savepoint")
        };
        if let Err(e) = end {
            *broken = Some(clone_error(&e));
            return Err(e);
        }
        // SQLite rolls the whole transaction back by itself on some errors (disk full, I/O);
        // the request's own error then says why.
        if self.conn.is_autocommit() {
            let e = match &result {
                Err(e @ StoreError::Unavailable(_)) => clone_error(e),
                _ => StoreError::Backend("the write transaction was rolled back by sqlite".into()),
            };
            *broken = Some(clone_error(&e));
            return Err(e);
        }
        result
    }

    fn create_token(&self, t: &TokenRow) -> StoreResult<()> {
        let taken: bool = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM tokens WHERE id = ?1 OR hash = ?2)")
            .and_then(|mut s| s.query_row(params![t.id, t.hash], |r| r.get(0)))
            .ctx("check a token")?;
        if taken {
            return Err(StoreError::Invalid(format!(
                "token {} already exists",
                t.id
            )));
        }
        self.conn
            .prepare_cached(
                "INSERT INTO tokens (id, user, role, hash, created_at, revoked_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    t.id,
                    t.user,
                    t.role,
                    t.hash,
                    t.created_at,
                    t.revoked_at,
                    t.expires_at
                ])
            })
            .ctx("store a token")
            .map(|_| ())
    }

    /// A new version of a template, or its latest when the content is the same; either way the
    /// name is live afterwards.
    fn put_template(&self, new: NewTemplateVersion) -> StoreResult<(TemplateRow, bool)> {
        let latest = crate::read::template(&self.conn, &new.name, None)?;
        if let Some(latest) = latest.filter(|l| l.content == new.content) {
            self.conn
                .prepare_cached("UPDATE templates SET deleted_at = NULL WHERE name = ?1")
                .and_then(|mut s| s.execute([&new.name]))
                .ctx("revive a template")?;
            return Ok((
                TemplateRow {
                    deleted_at: None,
                    ..latest
                },
                false,
            ));
        }
        let version: i64 = self
            .conn
            .prepare_cached(
                "INSERT INTO templates (name, latest, deleted_at) VALUES (?1, 1, NULL)
                 ON CONFLICT (name) DO UPDATE SET latest = latest + 1, deleted_at = NULL
                 RETURNING latest",
            )
            .and_then(|mut s| s.query_row([&new.name], |r| r.get(0)))
            .ctx("number a template version")?;
        self.conn
            .prepare_cached(
                "INSERT INTO template_versions (name, version, content, created_at, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    new.name,
                    version,
                    new.content,
                    new.created_at,
                    new.created_by
                ])
            })
            .ctx("store a template version")?;
        Ok((
            TemplateRow {
                name: new.name,
                version: version as u64,
                content: new.content,
                created_at: new.created_at,
                created_by: new.created_by,
                deleted_at: None,
            },
            true,
        ))
    }

    fn note_failure(&self, e: &StoreError) {
        if let StoreError::Unavailable(why) = e {
            self.stats.set_unavailable(Some(why.clone()));
        }
    }

    fn exec(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(|_| ())
    }

    fn apply(&self, op: Op, hot: &Hot<'_>) -> StoreResult<Outcome> {
        match op {
            Op::Create(req) => self.create(req, hot).map(Outcome::Events),
            Op::Append(req) => self.append(req, hot).map(Outcome::Events),
            // Inside this request's savepoint: an append that is refused rolls the create back
            // with it.
            Op::CreateLeased {
                create,
                node,
                ttl_ms,
                now,
            } => {
                let plan_id = create.plan_id.clone();
                let created = self.create(create, hot)?;
                let (fence, _) = self.claim(plan_id, node, ttl_ms, now, false)?;
                Ok(Outcome::CreatedLeased(created, fence))
            }
            Op::CreateWith { create, append } => {
                let created = self.create(create, hot)?;
                let appended = self.append(append, hot)?;
                Ok(Outcome::Both(created, appended))
            }
            Op::PutSnapshot { plan_id, seq, data } => self
                .put_snapshot(&plan_id, seq, &data)
                .map(|()| Outcome::Done),
            Op::Delete(plan_id) => self.delete(&plan_id).map(Outcome::Deleted),
            Op::CreateToken(t) => self.create_token(&t).map(|()| Outcome::Done),
            Op::PutTemplate(new) => self
                .put_template(new)
                .map(|(row, created)| Outcome::Template(Box::new(row), created)),
            Op::DeleteTemplate { name, at } => self
                .conn
                .prepare_cached(
                    "UPDATE templates SET deleted_at = ?2 WHERE name = ?1 AND deleted_at IS NULL",
                )
                .and_then(|mut s| s.execute(params![name, at]))
                .ctx("delete a template")
                .map(|n| Outcome::Deleted(n > 0)),
            Op::RevokeToken { id, at } => self
                .conn
                .prepare_cached("UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")
                .and_then(|mut s| s.execute(params![id, at]))
                .ctx("revoke a token")
                .map(|n| Outcome::Deleted(n > 0)),
            Op::SetCursor { name, value } => self
                .conn
                .prepare_cached("INSERT INTO cursors (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
                .and_then(|mut s| s.execute(params![name, to_sql(value)]))
                .ctx("set a cursor")
                .map(|_| Outcome::Done),
            Op::Claim {
                plan_id,
                node,
                ttl_ms,
                now,
                incarnation,
            } => self
                .claim(plan_id, node, ttl_ms, now, incarnation)
                .map(|(fence, first)| Outcome::Claimed(fence, first)),
            Op::Release { plan_id, fence } => {
                self.release(&plan_id, &fence).map(|()| Outcome::Done)
            }
            Op::Renew {
                node,
                plans,
                ttl_ms,
                now,
            } => self
                .renew(&node, &plans, ttl_ms, now)
                .map(Outcome::Renewed),
            Op::TakeOver {
                node,
                ttl_ms,
                states,
                limit,
                now,
            } => self
                .take_over(&node, ttl_ms, &states, limit, now)
                .map(Outcome::TakenOver),
            // Taken out of every batch by `run`; never inside a transaction.
            Op::Close => Err(StoreError::Backend(
                "a WAL checkpoint cannot run inside a transaction".into(),
            )),
        }
    }

    fn plan(&self, plan_id: &str) -> StoreResult<Option<(i64, u64)>> {
        self.conn
            .prepare_cached("SELECT pk, last_seq FROM plans WHERE plan_id = ?1")
            .and_then(|mut s| {
                s.query_row([plan_id], |r| Ok((r.get(0)?, from_sql(r.get(1)?))))
                    .optional()
            })
            .ctx("look up plan")
    }

    /// Why an append matched no plan row: unknown plan, stale seq, or stale fence.
    fn why_refused(&self, req: &Append) -> StoreError {
        let (pk, actual) = match self.plan(&req.plan_id) {
            Ok(Some(found)) => found,
            Ok(None) => return StoreError::NotFound(req.plan_id.clone()),
            Err(e) => return e,
        };
        if actual != req.expected_seq {
            return StoreError::SeqConflict {
                plan_id: req.plan_id.clone(),
                expected: req.expected_seq,
                actual,
            };
        }
        match self.lease(pk) {
            Ok(holder) => StoreError::Fenced {
                plan_id: req.plan_id.clone(),
                owner: holder.map_or_else(|| "(none)".to_owned(), |(node, _, _)| node),
            },
            Err(e) => e,
        }
    }

    fn plan_pk(&self, plan_id: &str) -> StoreResult<i64> {
        match self.plan(plan_id)? {
            Some((pk, _)) => Ok(pk),
            None => Err(StoreError::NotFound(plan_id.to_owned())),
        }
    }

    fn create(&self, req: CreatePlan, hot: &Hot<'_>) -> StoreResult<Vec<StoredEvent>> {
        check_contiguous(&req.events, 0)?;
        let (last_seq, updated_at) = match req.events.last() {
            Some(e) => (e.seq, e.at),
            None => return Err(StoreError::Invalid("a plan starts with events".into())),
        };
        let inserted = hot
            .with(Hot::CREATE, INSERT_PLAN, |s| {
                s.execute(params![
                    req.plan_id,
                    req.state,
                    req.created_at,
                    updated_at,
                    to_sql(last_seq)
                ])
            })
            .ctx("insert plan")?;
        if inserted == 0 {
            return Err(StoreError::AlreadyExists(req.plan_id));
        }
        let pk = self.conn.last_insert_rowid();
        self.remember(&req.plan_id, pk, Some(req.state.clone()));
        let stored = self.insert_events(pk, &req.plan_id, req.events, hot)?;
        self.put_reviews(pk, &req.plan_id, &req.reviews)?;
        Ok(stored)
    }

    /// Remembers that `plan_id`'s row `pk` was just updated by `req`: its state is the one
    /// the append set, else `known` (what the row held), else the remembered one.
    fn remember_update(&self, req: &Append, pk: i64, known: Option<String>) {
        let mut rows = self.rows.borrow_mut();
        match rows.get_mut(&req.plan_id) {
            Some(row) => {
                row.0 = pk;
                match (&req.state, known) {
                    (Some(new), _) if row.1.as_deref() != Some(new.as_str()) => {
                        row.1 = Some(new.clone())
                    }
                    (Some(_), _) => {}
                    (None, Some(known)) => row.1 = Some(known),
                    (None, None) => {}
                }
            }
            None => {
                rows.insert(req.plan_id.clone(), (pk, req.state.clone().or(known)));
            }
        }
    }

    fn remember(&self, plan_id: &str, pk: i64, state: Option<String>) {
        let mut rows = self.rows.borrow_mut();
        match rows.get_mut(plan_id) {
            Some(row) => *row = (pk, state),
            None => {
                rows.insert(plan_id.to_owned(), (pk, state));
            }
        }
    }

    /// Writes review rows of the plan `pk` (inserted, or replacing the row of the same id).
    fn put_reviews(&self, pk: i64, plan_id: &str, reviews: &[ReviewRow]) -> StoreResult<()> {
        if reviews.is_empty() {
            return Ok(());
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "INSERT INTO reviews (plan_pk, review_id, state, opened_at, data)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (plan_pk, review_id) DO UPDATE
                 SET state = excluded.state, opened_at = excluded.opened_at, data = excluded.data",
            )
            .ctx("prepare review upsert")?;
        for r in reviews {
            if r.plan_id != plan_id {
                return Err(StoreError::Invalid(format!(
                    "review {} belongs to plan {}, not {plan_id}",
                    r.review_id, r.plan_id
                )));
            }
            stmt.execute(params![pk, r.review_id, r.state, r.opened_at, r.data])
                .ctx("write review")?;
        }
        Ok(())
    }

    /// An append outside a savepoint (see [`Writer::apply_in_savepoint`]): `Refused` when it
    /// changed nothing, `Broken` when it failed after its first change.
    fn append_unguarded(&self, req: Append, hot: &Hot<'_>) -> Result<Vec<StoredEvent>, Unguarded> {
        check_contiguous(&req.events, req.expected_seq).map_err(Unguarded::Refused)?;
        if let Some(r) = req.reviews.iter().find(|r| r.plan_id != req.plan_id) {
            return Err(Unguarded::Refused(StoreError::Invalid(format!(
                "review {} belongs to plan {}, not {}",
                r.review_id, r.plan_id, req.plan_id
            ))));
        }
        let pk = self.update_plan_row(&req, hot).map_err(|e| match e {
            // Matched no row: nothing was changed.
            e @ (StoreError::NotFound(_)
            | StoreError::SeqConflict { .. }
            | StoreError::Fenced { .. }
            | StoreError::Invalid(_)) => Unguarded::Refused(e),
            e => Unguarded::Broken(e),
        })?;
        let stored = self
            .insert_events(pk, &req.plan_id, req.events, hot)
            .map_err(Unguarded::Broken)?;
        self.put_reviews(pk, &req.plan_id, &req.reviews)
            .map_err(Unguarded::Broken)?;
        Ok(stored)
    }

    fn append(&self, req: Append, hot: &Hot<'_>) -> StoreResult<Vec<StoredEvent>> {
        check_contiguous(&req.events, req.expected_seq)?;
        let pk = self.update_plan_row(&req, hot)?;
        let stored = self.insert_events(pk, &req.plan_id, req.events, hot)?;
        self.put_reviews(pk, &req.plan_id, &req.reviews)?;
        Ok(stored)
    }

    /// The seq check, the fence check and the plan row's update of an append, in one
    /// statement: the plan's pk, or why it matched no row (then nothing was changed).
    ///
    /// The row is updated by its pk (remembered from the plan's last write, or looked up once),
    /// without `RETURNING`: SQLite runs `RETURNING` as a trigger, which made every append's
    /// update open a statement journal (a 64 kB allocation and a copy of each page it
    /// touched) and fill a temporary table. `state` is set only when it changed, so the
    /// `plans_by_state` index is not rewritten by every append.
    fn update_plan_row(&self, req: &Append, hot: &Hot<'_>) -> StoreResult<i64> {
        let (last_seq, updated_at) = match req.events.last() {
            Some(e) => (e.seq, e.at),
            None => return Err(StoreError::Invalid("nothing to append".into())),
        };
        // The remembered row is read in place (an append is one of thousands a second: no
        // copy of its state for each).
        let tried = {
            let rows = self.rows.borrow();
            match rows.get(&req.plan_id) {
                Some((pk, state)) => Some((
                    *pk,
                    self.update_row(req, hot, *pk, state.as_deref(), last_seq, updated_at)?,
                )),
                None => None,
            }
        };
        match tried {
            Some((pk, true)) => {
                self.remember_update(req, pk, None);
                return Ok(pk);
            }
            // Refused, or a remembered row gone stale: looked at afresh below.
            Some((_, false)) => {
                self.rows.borrow_mut().remove(&req.plan_id);
            }
            None => {}
        }
        let (pk, state) = match self.plan_row(&req.plan_id)? {
            Some(row) => row,
            None => return Err(StoreError::NotFound(req.plan_id.clone())),
        };
        if self.update_row(req, hot, pk, Some(&state), last_seq, updated_at)? {
            self.remember_update(req, pk, Some(state));
            return Ok(pk);
        }
        self.rows.borrow_mut().remove(&req.plan_id);
        Err(self.why_refused(req))
    }

    /// The update of [`Writer::update_plan_row`] on the row `pk`, whose state is thought to be
    /// `known_state`: whether it matched (and so was made).
    #[allow(clippy::too_many_arguments)]
    fn update_row(
        &self,
        req: &Append,
        hot: &Hot<'_>,
        pk: i64,
        known_state: Option<&str>,
        last_seq: u64,
        updated_at: Micros,
    ) -> StoreResult<bool> {
        // A released lease fences nothing.
        let (fence_node, fence_token) = match &req.fence {
            Some(f) => (Some(f.node.as_str()), Some(to_sql(f.token))),
            None => (None, None),
        };
        let new_state = req.state.as_deref().filter(|s| known_state != Some(*s));
        // The two statements number their parameters alike (`UPDATE` has no `?3`).
        let (slot, sql) = match new_state {
            Some(_) => (Hot::UPDATE_STATE, UPDATE_STATE),
            None => (Hot::UPDATE, UPDATE),
        };
        let updated = hot
            .with(slot, sql, |s| {
                s.execute(params![
                    to_sql(last_seq),
                    updated_at,
                    new_state,
                    pk,
                    req.plan_id,
                    to_sql(req.expected_seq),
                    fence_node,
                    fence_token,
                    RELEASED
                ])
            })
            .ctx("update plan")?;
        Ok(updated == 1)
    }

    fn plan_row(&self, plan_id: &str) -> StoreResult<Option<(i64, String)>> {
        self.conn
            .prepare_cached("SELECT pk, state FROM plans WHERE plan_id = ?1")
            .and_then(|mut s| {
                s.query_row([plan_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .ctx("look up plan")
    }

    /// Inserts an append's events, up to [`INSERT_ROWS`] rows a statement. One statement for
    /// several rows reads and writes the `AUTOINCREMENT` counter once, not once a row. `OR
    /// FAIL` keeps it without a statement journal (which a statement of several rows that may
    /// abort opens): a row that fails leaves the rows before it, but any failure here breaks
    /// the whole transaction anyway (see [`Writer::apply_in_savepoint`]). The rows of one
    /// statement get consecutive ids, the last being `last_insert_rowid`: this connection is
    /// the only writer of the transaction, and `AUTOINCREMENT` gives each row the one after.
    fn insert_events(
        &self,
        pk: i64,
        plan_id: &str,
        events: Vec<NewEvent>,
        hot: &Hot<'_>,
    ) -> StoreResult<Vec<StoredEvent>> {
        let mut out = Vec::with_capacity(events.len());
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let chunk: Vec<NewEvent> = events.by_ref().take(INSERT_ROWS).collect();
            let n = chunk.len();
            let seqs: Vec<i64> = chunk.iter().map(|e| to_sql(e.seq)).collect();
            let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(n * 9);
            for (e, seq) in chunk.iter().zip(&seqs) {
                let (trigger, label) = match &e.checkpoint {
                    Some(CheckpointMark { trigger, label }) => (Some(trigger), label.as_ref()),
                    None => (None, None),
                };
                args.extend([
                    &pk as &dyn rusqlite::ToSql,
                    seq,
                    &e.kind,
                    &e.at,
                    &e.actor,
                    &e.data,
                    // Kept for the lifetime of `chunk`: owned values are not needed.
                    match trigger {
                        Some(t) => t as &dyn rusqlite::ToSql,
                        None => &rusqlite::types::Null,
                    },
                    match label {
                        Some(l) => l as &dyn rusqlite::ToSql,
                        None => &rusqlite::types::Null,
                    },
                    &e.format,
                ]);
            }
            let inserted = hot
                .with(Hot::INSERT + n - 1, &self.insert_sql[n - 1], |s| {
                    s.execute(&*args)
                })
                .ctx("insert event")?;
            drop(args);
            if inserted != n {
                return Err(StoreError::Backend(format!(
                    "inserted {inserted} of {n} events"
                )));
            }
            let last = self.conn.last_insert_rowid();
            for (i, e) in chunk.into_iter().enumerate() {
                out.push(e.stored(from_sql(last - (n - 1 - i) as i64), plan_id.to_owned()));
            }
        }
        Ok(out)
    }

    fn put_snapshot(&self, plan_id: &str, seq: u64, data: &[u8]) -> StoreResult<()> {
        let pk = self.plan_pk(plan_id)?;
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO snapshots (plan_pk, seq, data) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![pk, to_sql(seq), data]))
            .ctx("insert snapshot")?;
        // Every snapshot is kept (the engine spaces them): reading the state at an old
        // checkpoint replays from the nearest one, never from the start.
        Ok(())
    }

    fn delete(&self, plan_id: &str) -> StoreResult<bool> {
        self.rows.borrow_mut().remove(plan_id);
        let Some((pk, _)) = self.plan(plan_id)? else {
            return Ok(false);
        };
        for sql in [
            "DELETE FROM events WHERE plan_pk = ?1",
            "DELETE FROM snapshots WHERE plan_pk = ?1",
            "DELETE FROM leases WHERE plan_pk = ?1",
            "DELETE FROM reviews WHERE plan_pk = ?1",
            "DELETE FROM plans WHERE pk = ?1",
        ] {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut s| s.execute([pk]))
                .ctx("delete plan")?;
        }
        Ok(true)
    }

    fn lease(&self, pk: i64) -> StoreResult<Option<(String, u64, Micros)>> {
        self.conn
            .prepare_cached("SELECT node, token, expires_at FROM leases WHERE plan_pk = ?1")
            .and_then(|mut s| {
                s.query_row([pk], |r| Ok((r.get(0)?, from_sql(r.get(1)?), r.get(2)?)))
                    .optional()
            })
            .ctx("read lease")
    }

    /// Takes or renews the lease; with `incarnation`, answers the plan's first event id too
    /// (read in the same transaction: see `Leases::claim_incarnation`).
    fn claim(
        &self,
        plan_id: String,
        node: String,
        ttl_ms: u64,
        now: Micros,
        incarnation: bool,
    ) -> StoreResult<(Fence, Option<u64>)> {
        let pk = self.plan_pk(&plan_id)?;
        let expires_at = lease_expiry(now, ttl_ms);
        let token = match self.lease(pk)? {
            None => 1,
            // Renewal (or re-claim after expiry) by the same node keeps the token: its fences
            // stay valid because nobody else drove the plan in between.
            Some((holder, token, _)) if holder == node => token,
            // Under the engine lock no other engine process can be alive on this file, so
            // another node's lease is a leftover from a dead process.
            Some((holder, _, until)) if until > now && !self.engine_lock => {
                return Err(StoreError::LeaseHeld {
                    plan_id,
                    owner: holder,
                    until,
                });
            }
            Some((_, token, _)) => token + 1,
        };
        self.conn
            .prepare_cached(
                "INSERT INTO leases (plan_pk, node, token, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (plan_pk) DO UPDATE
                 SET node = excluded.node, token = excluded.token, expires_at = excluded.expires_at",
            )
            .and_then(|mut s| s.execute(params![pk, node, to_sql(token), expires_at]))
            .ctx("write lease")?;
        let first = if incarnation {
            self.conn
                .prepare_cached("SELECT id FROM events WHERE plan_pk = ?1 AND seq = 1")
                .and_then(|mut s| s.query_row([pk], |r| r.get::<_, i64>(0)).optional())
                .ctx("read the plan's first event id")?
                .map(from_sql)
        } else {
            None
        };
        Ok((Fence { node, token }, first))
    }

    /// Renews each lease still held by `node` under the given token and not released, in one
    /// statement per plan of the batch's transaction.
    fn renew(
        &self,
        node: &str,
        plans: &[(String, u64)],
        ttl_ms: u64,
        now: Micros,
    ) -> StoreResult<Vec<String>> {
        let expires_at = lease_expiry(now, ttl_ms);
        let mut stmt = self
            .conn
            .prepare_cached(
                "UPDATE leases SET expires_at = ?4
                 WHERE plan_pk = (SELECT pk FROM plans WHERE plan_id = ?1)
                   AND node = ?2 AND token = ?3 AND expires_at <> ?5",
            )
            .ctx("renew leases")?;
        let mut renewed = Vec::with_capacity(plans.len());
        for (plan_id, token) in plans {
            let n = stmt
                .execute(params![plan_id, node, to_sql(*token), expires_at, RELEASED])
                .ctx("renew a lease")?;
            if n > 0 {
                renewed.push(plan_id.clone());
            }
        }
        Ok(renewed)
    }

    fn release(&self, plan_id: &str, fence: &Fence) -> StoreResult<()> {
        let Some((pk, _)) = self.plan(plan_id)? else {
            return Ok(());
        };
        // Expire rather than delete, so the next owner's token is still larger.
        self.conn
            .prepare_cached(
                "UPDATE leases SET expires_at = ?4 WHERE plan_pk = ?1 AND node = ?2 AND token = ?3",
            )
            .and_then(|mut s| s.execute(params![pk, fence.node, to_sql(fence.token), RELEASED]))
            .ctx("release lease")?;
        Ok(())
    }
}

impl Writer {
    /// Takes over the plans in `states` whose lease ran out without being released (a
    /// released lease has `expires_at` = `RELEASED`), increasing each token. One writer does
    /// every write, so no other taker can meet the same rows.
    fn take_over(
        &self,
        node: &str,
        ttl_ms: u64,
        states: &[String],
        limit: usize,
        now: Micros,
    ) -> StoreResult<Vec<(String, Fence)>> {
        if states.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let marks = (0..states.len())
            .map(|i| format!("?{}", i + 4))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT l.plan_pk, p.plan_id, l.token FROM leases l JOIN plans p ON p.pk = l.plan_pk
             WHERE l.expires_at <= ?1 AND l.expires_at <> ?2 AND p.state IN ({marks})
             ORDER BY l.expires_at LIMIT ?3"
        );
        let mut args: Vec<rusqlite::types::Value> = vec![
            now.into(),
            RELEASED.into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ];
        args.extend(states.iter().map(|s| s.clone().into()));
        let expired: Vec<(i64, String, u64)> = {
            let mut stmt = self.conn.prepare(&sql).ctx("find expired leases")?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((r.get(0)?, r.get(1)?, from_sql(r.get(2)?)))
                })
                .ctx("find expired leases")?;
            rows.collect::<Result<_, _>>().ctx("find expired leases")?
        };
        let expires_at = lease_expiry(now, ttl_ms);
        let mut taken = Vec::with_capacity(expired.len());
        let mut update = self
            .conn
            .prepare_cached(
                "UPDATE leases SET node = ?2, token = ?3, expires_at = ?4 WHERE plan_pk = ?1",
            )
            .ctx("take a lease over")?;
        for (pk, plan_id, token) in expired {
            let token = token + 1;
            update
                .execute(params![pk, node, to_sql(token), expires_at])
                .ctx("take a lease over")?;
            taken.push((
                plan_id,
                Fence {
                    node: node.to_owned(),
                    token,
                },
            ));
        }
        Ok(taken)
    }
}

/// Event rows inserted by one statement at most.
const INSERT_ROWS: usize = 8;

/// A plan's row, created.
const INSERT_PLAN: &str = "INSERT INTO plans (plan_id, state, created_at, updated_at, last_seq)
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (plan_id) DO NOTHING";

/// An append's update of its plan's row when the plan's state changed: the seq and the fence
/// checked by the same statement (see [`Writer::update_plan_row`]).
const UPDATE_STATE: &str = "UPDATE plans SET last_seq = ?1, updated_at = ?2, state = ?3
     WHERE pk = ?4 AND plan_id = ?5 AND last_seq = ?6
       AND (?7 IS NULL OR EXISTS (SELECT 1 FROM leases
            WHERE leases.plan_pk = ?4 AND node = ?7 AND token = ?8
              AND expires_at <> ?9))";

/// [`UPDATE_STATE`] when the state did not change: the same parameters, `?3` (the state) unused.
const UPDATE: &str = "UPDATE plans SET last_seq = ?1, updated_at = ?2
     WHERE pk = ?4 AND plan_id = ?5 AND last_seq = ?6
       AND (?7 IS NULL OR EXISTS (SELECT 1 FROM leases
            WHERE leases.plan_pk = ?4 AND node = ?7 AND token = ?8
              AND expires_at <> ?9))";

/// The statements of appends and creates, each taken from the connection's statement cache
/// once per transaction and kept until it ends. The cache hashes a statement's SQL text to find
/// it and again to put it back, for every use: for the multi-row event inserts (about a
/// kilobyte of SQL) that was a tenth of the writer's work in a batch of appends.
struct Hot<'c> {
    conn: &'c Connection,
    stmts: RefCell<[Option<CachedStatement<'c>>; Hot::SLOTS]>,
}

impl<'c> Hot<'c> {
    const CREATE: usize = 0;
    const UPDATE_STATE: usize = 1;
    const UPDATE: usize = 2;
    /// The insert of `n` events is `INSERT + n - 1`.
    const INSERT: usize = 3;
    const SLOTS: usize = Hot::INSERT + INSERT_ROWS;

    fn new(conn: &'c Connection) -> Hot<'c> {
        Hot {
            conn,
            stmts: RefCell::new(Default::default()),
        }
    }

    /// Runs `f` with the statement of `slot`, prepared from `sql` on its first use.
    fn with<R>(
        &self,
        slot: usize,
        sql: &str,
        f: impl FnOnce(&mut CachedStatement<'c>) -> rusqlite::Result<R>,
    ) -> rusqlite::Result<R> {
        let mut stmts = self.stmts.borrow_mut();
        let stmt = match &mut stmts[slot] {
            Some(stmt) => stmt,
            empty => empty.insert(self.conn.prepare_cached(sql)?),
        };
        f(stmt)
    }
}

/// The insert of `n` event rows (1 to [`INSERT_ROWS`]).
fn insert_sql(n: usize) -> String {
    let mut sql = String::from(
        "INSERT OR FAIL INTO events (plan_pk, seq, kind, at, actor, data, cp_trigger, cp_label, \
         format) VALUES ",
    );
    for i in 0..n {
        let b = i * 9;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{})",
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5,
            b + 6,
            b + 7,
            b + 8,
            b + 9
        ));
    }
    sql
}

/// The `expires_at` of a released lease (older databases mark them the same way).
pub(crate) const RELEASED: i64 = i64::MIN;

/// `events` must be non-empty and run `after + 1, after + 2, …`.
fn check_contiguous(events: &[NewEvent], after: u64) -> StoreResult<()> {
    if events.is_empty() {
        return Err(StoreError::Invalid("no events".into()));
    }
    for (i, e) in events.iter().enumerate() {
        let want = after.saturating_add(i as u64 + 1);
        if e.seq != want {
            return Err(StoreError::Invalid(format!(
                "event {i} has seq {}, expected {want} (seqs must continue the log without gaps)",
                e.seq
            )));
        }
    }
    Ok(())
}

/// The error every request of a failed batch gets: storage failures keep their kind (the
/// caller may retry once space returns), anything else is a backend failure.
fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(msg) => StoreError::Unavailable(msg.clone()),
        StoreError::Backend(msg) => StoreError::Backend(msg.clone()),
        other => StoreError::Backend(other.to_string()),
    }
}

/// When a lease taken or renewed at `now` for `ttl_ms` runs out (saturating, never wrapping).
fn lease_expiry(now: Micros, ttl_ms: u64) -> Micros {
    now.saturating_add(i64::try_from(ttl_ms.saturating_mul(1000)).unwrap_or(i64::MAX))
}
