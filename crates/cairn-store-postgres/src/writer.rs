//! The writer task: group commit of creates and appends on one dedicated connection.
//!
//! It waits for one request, drains whatever else is queued (up to [`MAX_BATCH`]) and runs the
//! lot in one transaction (a request that finds the writer idle runs the same transaction in
//! its caller's task instead: see [`Shared`]):
//! 1. lock the plan rows the batch names (`FOR NO KEY UPDATE`, in the order of their sorted
//!    ids, so writers of several nodes never deadlock) and read their leases (`FOR NO KEY
//!    UPDATE`, in plan key order, as the renewal of a node's leases locks them: a takeover waits for this
//!    transaction, or skips the plan, and never changes a lease under an append in flight; and
//!    a claim or release of the batch writes a lease it already holds, never upgrading a lock
//!    another transaction waits on);
//! 2. decide every request in Rust, in order, against what was read (refusals — `NotFound`,
//!    `SeqConflict`, `Fenced`, `AlreadyExists` — write nothing, and a refused half of a
//!    `create_plan_with` takes its other half with it), so no statement of the transaction is
//!    expected to fail and one refused request never spoils its neighbours (the role savepoints
//!    play in the SQLite writer, without their round trips);
//! 3. insert the new plan rows; then, in one statement, take the batch's event ids from the
//!    counter row (`UPDATE cairn_counter … RETURNING`: its row lock, held until commit,
//!    serialises id assignment, so ids are in commit order), insert every event, update the
//!    plan rows and send one `pg_notify` on the store's commit channel, all set-based over
//!    arrays; the review index and the leases each with one statement more;
//! 4. commit. Only then is anyone answered.
//!    (The store's own listener ignores the hints of its own writer: see `session.rs`.)
//!
//! Lease claims and releases are requests of the same batches: a claim is decided against the
//! lease row read under the batch's locks (renewal by the holder keeps the token, a takeover of
//! an expired or released lease increases it, a live lease of another node is `LeaseHeld`),
//! and every lease the batch changes is written by one statement. So the claims of many plans
//! started at once, and the releases of many plans ending at once, share the appends' commits
//! instead of costing a transaction each.
//!
//! A transaction that fails answers every request of the batch with the error (nothing of it is
//! kept); a deadlock, a serialization failure or a plan id another node created at the same
//! moment is retried a few times first. A lost connection is `Unavailable` and is reopened for
//! the next batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cairn_store::{
    Append, CreatePlan, Fence, Micros, NewEvent, ReviewRow, StoreError, StoreResult, StoredEvent,
};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement};

use crate::session::OwnWriter;
use crate::{from_sql, pg_error, to_sql};

/// The most requests committed in one transaction.
pub(crate) const MAX_BATCH: usize = 1024;
/// A batch naming at most this many plans reads their leases in the round trip that locks the
/// plans (looking each plan up again by name); a larger one reads them by key in a round trip
/// of its own, which costs less than a second lookup of hundreds of plans.
const LEASES_WITH_LOCKS: usize = 16;
/// The context of the `COMMIT` statement (a failure there is never retried).
const COMMIT: &str = "commit";
/// How many times a batch is retried after a deadlock, a serialization failure or a racing
/// create before its requests are answered with the error.
const RETRIES: usize = 3;

pub(crate) enum Op {
    Create(CreatePlan),
    Append(Append),
    /// A create and an append together: both are kept or neither is.
    CreateWith {
        create: CreatePlan,
        append: Append,
    },
    /// A create and its lease's claim for `node`, `ttl` microseconds (`create_plan_leased`).
    CreateLeased {
        create: CreatePlan,
        node: String,
        ttl: i64,
    },
    /// Takes or renews `node`'s lease on a plan for `ttl` microseconds (`Leases::claim`).
    Claim {
        plan_id: String,
        node: String,
        ttl: i64,
        /// Answer the plan's first event id too (`Leases::claim_incarnation`).
        incarnation: bool,
    },
    /// Gives a lease up, when `fence` still holds it (`Leases::release`).
    Release {
        plan_id: String,
        fence: Fence,
    },
}

pub(crate) enum Outcome {
    Events(Vec<StoredEvent>),
    /// The created plan's events, then the appended ones.
    Both(Vec<StoredEvent>, Vec<StoredEvent>),
    /// The fence, and the plan's first event id when asked.
    Claimed(Fence, Option<u64>),
    /// The created plan's events and its lease's fence.
    CreatedLeased(Vec<StoredEvent>, Fence),
    Released,
}

pub(crate) struct Request {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<StoreResult<Outcome>>,
}

pub use cairn_store::WriterStats;

/// The writer's counters (kept in [`Shared`]; the store reports them).
pub(crate) type Stats = cairn_store::WriterCounters;

/// The writer's connection and its statements, prepared once per connection.
struct Conn {
    client: Client,
    lock_plans: Statement,
    read_leases: Statement,
    read_named_leases: Statement,
    new_pks: Statement,
    insert_plans: Statement,
    write_events: Statement,
    put_reviews: Statement,
    put_leases: Statement,
    first_events: Statement,
    /// A transaction was begun and not yet ended (its batch's future was dropped midway):
    /// the next batch rolls it back first.
    open: bool,
}

impl Conn {
    async fn open(config: &tokio_postgres::Config, own: &OwnWriter) -> StoreResult<Conn> {
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| pg_error("connect the writer", e))?;
        tokio::spawn(connection);
        // The hints this connection's commits send are this store's own.
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(|e| pg_error("connect the writer", e))?
            .get(0);
        own.set(pid);
        let prepare = |sql: &'static str| {
            let client = &client;
            async move {
                client
                    .prepare(sql)
                    .await
                    .map_err(|e| pg_error("prepare the writer's statements", e))
            }
        };
        Ok(Conn {
            // Each plan found by its index (a nested loop over the names: `plan_id =
            // ANY($1)` would be a filter that compares every row with every name under the
            // generic plan, milliseconds for a few hundred names) and locked as found, in the
            // order of the names, which every writer sorts.
            lock_plans: prepare(
                "SELECT p.pk, p.plan_id, p.last_seq
                 FROM unnest($1::text[]) AS n(id)
                 CROSS JOIN LATERAL (
                     SELECT pk, plan_id, last_seq FROM plans WHERE plan_id = n.id
                     OFFSET 0 FOR NO KEY UPDATE
                 ) AS p",
            )
            .await?,
            read_leases: prepare(
                "SELECT plan_pk, node, token, released, expires_at, expires_at <= cairn_now()
                 FROM leases WHERE plan_pk = ANY($1::bigint[])
                 ORDER BY plan_pk FOR NO KEY UPDATE",
            )
            .await?,
            // The same for a small batch, sent with `lock_plans` (so by the plans' names: it
            // runs after it, in the same transaction, and finds the plans it locked; a plan
            // another node created in between may have its lease read too, which the batch
            // never uses).
            read_named_leases: prepare(
                "SELECT l.plan_pk, l.node, l.token, l.released, l.expires_at,
                        l.expires_at <= cairn_now()
                 FROM unnest($1::text[]) AS n(id)
                 CROSS JOIN LATERAL (SELECT pk FROM plans WHERE plan_id = n.id OFFSET 0) AS p
                 JOIN leases l ON l.plan_pk = p.pk
                 ORDER BY l.plan_pk FOR NO KEY UPDATE OF l",
            )
            .await?,
            new_pks: prepare(
                "SELECT nextval(pg_get_serial_sequence('plans', 'pk'))
                 FROM generate_series(1, $1::int)",
            )
            .await?,
            insert_plans: prepare(
                "INSERT INTO plans (pk, plan_id, state, created_at, updated_at, last_seq)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[],
                                      $5::bigint[], $6::bigint[])
                 ON CONFLICT (plan_id) DO NOTHING RETURNING pk",
            )
            .await?,
            // The events take the counter's next ids, in the order given, in the statement
            // that inserts them (so it goes in the batch's last round trip); the same
            // statement updates the plans' rows and sends the commit's hint (one statement,
            // not three: each costs the server an execution and the client a request). It
            // answers the last id taken.
            write_events: prepare(
                "WITH c AS (
                     UPDATE cairn_counter SET last_id = last_id + cardinality($1::bigint[])
                     RETURNING last_id
                 ), i AS (
                     INSERT INTO events (id, plan_pk, seq, kind, at, actor, data, cp_trigger,
                                         cp_label, format)
                     SELECT c.last_id - cardinality($1::bigint[]) + u.ord, u.plan_pk, u.seq,
                            u.kind, u.at, u.actor, u.data, u.cp_trigger, u.cp_label, u.format
                     FROM c, unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[],
                                    $5::text[], $6::text[], $7::text[], $8::text[],
                                    $9::int[])
                          WITH ORDINALITY
                          AS u(plan_pk, seq, kind, at, actor, data, cp_trigger, cp_label,
                               format, ord)
                 ), p AS (
                     UPDATE plans p SET last_seq = u.last_seq, updated_at = u.updated_at,
                                        state = COALESCE(u.state, p.state)
                     FROM unnest($10::bigint[], $11::bigint[], $12::bigint[], $13::text[])
                          AS u(pk, last_seq, updated_at, state)
                     WHERE p.pk = u.pk
                 )
                 SELECT last_id, pg_notify($14, '') FROM c",
            )
            .await?,
            put_reviews: prepare(
                "INSERT INTO reviews (plan_pk, review_id, state, opened_at, data)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[],
                                      $5::text[])
                 ON CONFLICT (plan_pk, review_id) DO UPDATE
                 SET state = EXCLUDED.state, opened_at = EXCLUDED.opened_at,
                     data = EXCLUDED.data",
            )
            .await?,
            // One row per lease the batch changed, as the batch left it; a release never
            // moves the expiry later.
            put_leases: prepare(
                "INSERT INTO leases (plan_pk, node, token, expires_at, released)
                 SELECT pk, node, token, cairn_now() + ttl, released
                 FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bool[])
                      AS u(pk, node, token, ttl, released)
                 ON CONFLICT (plan_pk) DO UPDATE SET
                     node = EXCLUDED.node, token = EXCLUDED.token, released = EXCLUDED.released,
                     expires_at = CASE WHEN EXCLUDED.released
                                       THEN LEAST(leases.expires_at, EXCLUDED.expires_at)
                                       ELSE EXCLUDED.expires_at END",
            )
            .await?,
            // The first event of each plan a claim asked it of (`claim_incarnation`).
            first_events: prepare(
                "SELECT plan_pk, id FROM events WHERE plan_pk = ANY($1::bigint[]) AND seq = 1",
            )
            .await?,
            client,
            open: false,
        })
    }
}

/// The writer's connection, shared by the writer task and by callers that find it idle.
///
/// A request normally goes through the channel to the writer task, which commits whatever is
/// queued in one transaction (group commit) and answers. That costs two task hand-offs per
/// request, each the wake-up of a task that may sleep on another thread: on a virtual machine
/// more than the engine's own work on a step. So a caller that finds nothing queued and
/// nothing being committed runs its request's transaction itself, in its own task (as the
/// SQLite store does on its own thread). Under load requests are always queued or in flight,
/// and they go to the writer task as before, which groups them.
///
/// `pending` counts the requests sent and not yet answered by the task, plus an inline commit
/// in progress; a caller commits inline only by moving it from 0 to 1. The connection's mutex
/// orders the two: what the task takes from the queue waits for the inline commit in progress.
pub(crate) struct Shared {
    conn: tokio::sync::Mutex<Option<Conn>>,
    pending: AtomicUsize,
    config: tokio_postgres::Config,
    channel: String,
    stats: Stats,
    own: Arc<OwnWriter>,
}

/// The writer claimed for one inline commit ([`Shared::claim_idle`]). Gives the writer back
/// when the commit ends, or when its caller stops waiting midway. Then the transaction may
/// still be open, holding its plans' rows and perhaps the id counter every node's writer needs:
/// a task rolls it back at once (the next batch would too, but none may come for a while, and
/// the server would end the session only after seconds).
pub(crate) struct Inline {
    shared: Arc<Shared>,
    done: bool,
}

impl Drop for Inline {
    fn drop(&mut self) {
        if !self.done {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let shared = self.shared.clone();
                runtime.spawn(async move {
                    let mut conn = shared.conn.lock().await;
                    if let Some(c) = conn.as_mut().filter(|c| c.open) {
                        if c.client.batch_execute("ROLLBACK").await.is_ok() {
                            c.open = false;
                        }
                    }
                });
            }
        }
        self.shared.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    pub(crate) fn new(
        config: tokio_postgres::Config,
        channel: String,
        own: Arc<OwnWriter>,
    ) -> Shared {
        Shared {
            conn: tokio::sync::Mutex::new(None),
            pending: AtomicUsize::new(0),
            config,
            channel,
            stats: Stats::default(),
            own,
        }
    }

    /// Claims the writer for a commit in the caller's task when it is idle (nothing queued,
    /// nothing being committed); `None` otherwise, and the caller counts its request with
    /// [`Shared::queued`] and sends it.
    pub(crate) fn claim_idle(self: &Arc<Self>) -> Option<Inline> {
        self.pending
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Inline {
                shared: self.clone(),
                done: false,
            })
    }

    /// Commits `op` in the caller's task, after [`Shared::claim_idle`] said yes.
    pub(crate) async fn commit_claimed(&self, mut inline: Inline, op: Op) -> StoreResult<Outcome> {
        let mut conn = self.conn.lock().await;
        self.stats.inline();
        let mut results = self.serve(&mut conn, vec![op]).await;
        inline.done = true;
        // The connection is free before the count says so.
        drop(conn);
        drop(inline);
        results.pop().unwrap_or_else(|| {
            Err(StoreError::Backend(
                "the postgres writer lost an answer".into(),
            ))
        })
    }

    /// The writer's counters.
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Counts a request about to be sent to the writer task.
    pub(crate) fn queued(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// Commits one batch, counting it and the time it took.
    async fn serve(&self, conn: &mut Option<Conn>, ops: Vec<Op>) -> Vec<StoreResult<Outcome>> {
        let started = Instant::now();
        self.stats.batch(ops.len() as u64);
        let results = self.commit(conn, &ops).await;
        let busy = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.busy(busy);
        results
    }

    /// Commits a batch (retrying transient failures), answering each request.
    async fn commit(&self, conn: &mut Option<Conn>, ops: &[Op]) -> Vec<StoreResult<Outcome>> {
        let stats = &self.stats;
        let mut attempt = 0;
        loop {
            attempt += 1;
            if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
                *conn = None;
                match Conn::open(&self.config, &self.own).await {
                    Ok(c) => *conn = Some(c),
                    Err(e) => return fail(ops, e, stats),
                }
            }
            let Some(c) = conn.as_mut() else {
                return fail(
                    ops,
                    StoreError::Unavailable("the writer has no connection".into()),
                    stats,
                );
            };
            match transaction(c, &self.channel, ops).await {
                Ok((results, events)) => {
                    stats.committed(events);
                    return results;
                }
                Err(Failure::Retry(_)) if attempt <= RETRIES => {
                    if c.client.is_closed() {
                        *conn = None;
                    }
                    continue;
                }
                Err(Failure::Retry(e)) | Err(Failure::Fail(e)) => {
                    if matches!(e, StoreError::Unavailable(_)) || c.client.is_closed() {
                        // Reopen for the next batch: the connection may be half-broken.
                        *conn = None;
                    }
                    return fail(ops, e, stats);
                }
            }
        }
    }
}

/// Serves requests until every sender is gone.
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        // Waits for an inline commit in progress; whatever is queued meanwhile joins the batch.
        let mut conn = shared.conn.lock().await;
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        let taken = batch.len();
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.drain(..).map(|r| (r.op, r.reply)).unzip();
        let results = shared.serve(&mut conn, ops).await;
        drop(conn);
        // Before answering: a caller answered may commit its next request itself.
        shared.pending.fetch_sub(taken, Ordering::AcqRel);
        for (reply, result) in replies.into_iter().zip(results) {
            // The caller may have stopped waiting; the write stands regardless.
            let _ = reply.send(result);
        }
    }
}

fn fail(ops: &[Op], e: StoreError, stats: &Stats) -> Vec<StoreResult<Outcome>> {
    if let StoreError::Unavailable(why) = &e {
        stats.set_unavailable(Some(why.clone()));
    }
    ops.iter().map(|_| Err(clone_error(&e))).collect()
}

/// The error every request of a failed batch gets: storage failures keep their kind (the
/// caller may retry once the database is back), anything else is a backend failure.
fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(msg) => StoreError::Unavailable(msg.clone()),
        StoreError::Backend(msg) => StoreError::Backend(msg.clone()),
        other => StoreError::Backend(other.to_string()),
    }
}

enum Failure {
    /// Worth running the whole batch again (a deadlock, a serialization failure, a racing
    /// create): nothing of it was kept.
    Retry(StoreError),
    Fail(StoreError),
}

/// Maps a failed statement of the batch: deadlocks and serialization failures are retried, and
/// so is a connection lost before `COMMIT` was sent (nothing of the batch was kept). A
/// connection lost during `COMMIT` is not: whether it committed is unknown, so the callers
/// hear `Unavailable` (a retried append that did commit is then refused as `SeqConflict`).
fn db(context: &'static str) -> impl Fn(tokio_postgres::Error) -> Failure {
    classify(context, context != COMMIT)
}

/// [`db`] for the statements sent together with `COMMIT` (see [`transaction`]): a connection
/// lost while any of them was in flight leaves it unknown whether the batch committed.
fn db_with_commit(context: &'static str) -> impl Fn(tokio_postgres::Error) -> Failure {
    classify(context, false)
}

fn classify(context: &'static str, retry_lost: bool) -> impl Fn(tokio_postgres::Error) -> Failure {
    move |e| {
        let code = e.code().map(|c| c.code().to_owned());
        let lost = e.is_closed()
            || e.as_db_error().is_none()
            || code
                .as_deref()
                .is_some_and(|c| c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03"));
        let transient = matches!(
            e.code(),
            Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
        ) || (lost && retry_lost);
        let e = pg_error(context, e);
        if transient {
            Failure::Retry(e)
        } else {
            Failure::Fail(e)
        }
    }
}

/// A plan as the batch sees it while deciding.
struct PlanState {
    pk: i64,
    last_seq: u64,
}

/// The rows one accepted request writes.
#[derive(Default)]
struct Writes {
    new_plans: Vec<(i64, String, String, Micros, Micros, u64)>,
    /// (pk, plan_id, event, which half: 0 create, 1 append)
    events: Vec<(i64, String, NewEvent, u8)>,
    /// (pk, last_seq, updated_at, state)
    updates: Vec<(i64, u64, Micros, Option<String>)>,
    reviews: Vec<(i64, ReviewRow)>,
    /// The fence a claim took.
    claimed: Option<Fence>,
    /// The key of the plan claimed.
    claimed_pk: i64,
}

/// Checks what needs no database: events present, contiguous, free of NUL characters (which
/// PostgreSQL's text refuses), reviews of the plan itself.
fn check(events: &[NewEvent], after: u64, plan_id: &str, reviews: &[ReviewRow]) -> StoreResult<()> {
    if events.is_empty() {
        return Err(StoreError::Invalid(if after == 0 {
            "a plan starts with events".into()
        } else {
            "nothing to append".into()
        }));
    }
    for (i, e) in events.iter().enumerate() {
        let want = after.saturating_add(i as u64 + 1);
        if e.seq != want {
            return Err(StoreError::Invalid(format!(
                "event {i} has seq {}, expected {want} (seqs must continue the log without gaps)",
                e.seq
            )));
        }
        let texts = [
            Some(e.actor.as_str()),
            Some(e.kind.as_str()),
            Some(e.data.as_str()),
            e.checkpoint.as_ref().map(|c| c.trigger.as_str()),
            e.checkpoint.as_ref().and_then(|c| c.label.as_deref()),
        ];
        if texts.iter().flatten().any(|t| t.contains('\0')) {
            return Err(StoreError::Invalid(format!(
                "event {i} contains a NUL character, which the store cannot keep"
            )));
        }
    }
    if plan_id.contains('\0') {
        return Err(StoreError::Invalid(
            "a plan id contains a NUL character".into(),
        ));
    }
    for r in reviews {
        if r.plan_id != plan_id {
            return Err(StoreError::Invalid(format!(
                "review {} belongs to plan {}, not {plan_id}",
                r.review_id, r.plan_id
            )));
        }
        if r.review_id.contains('\0') || r.state.contains('\0') || r.data.contains('\0') {
            return Err(StoreError::Invalid(format!(
                "review {} contains a NUL character, which the store cannot keep",
                r.review_id
            )));
        }
    }
    Ok(())
}

/// A plan's lease as the batch sees it while deciding.
#[derive(Clone)]
struct Lease {
    node: String,
    token: u64,
    released: bool,
    expires_at: Micros,
    /// Ran out by the database's clock (when the batch read it).
    expired: bool,
}

/// A lease the batch changes: its state after the batch, and for how long from now it runs
/// (0 for a release: it has run out).
struct LeaseWrite {
    node: String,
    token: u64,
    ttl: i64,
    released: bool,
}

struct Decider<'a> {
    plans: HashMap<String, PlanState>,
    leases: HashMap<i64, Lease>,
    /// The leases changed so far, by plan key, in the order first changed.
    lease_writes: HashMap<i64, LeaseWrite>,
    lease_order: Vec<i64>,
    new_pks: &'a mut std::vec::IntoIter<i64>,
}

impl Decider<'_> {
    fn create(&mut self, req: &CreatePlan, w: &mut Writes) -> StoreResult<()> {
        check(&req.events, 0, &req.plan_id, &req.reviews)?;
        if self.plans.contains_key(&req.plan_id) {
            return Err(StoreError::AlreadyExists(req.plan_id.clone()));
        }
        let pk = self
            .new_pks
            .next()
            .ok_or_else(|| StoreError::Backend("the writer ran out of plan keys".into()))?;
        let last = req.events.last().map_or((0, 0), |e| (e.seq, e.at));
        w.new_plans.push((
            pk,
            req.plan_id.clone(),
            req.state.clone(),
            req.created_at,
            last.1,
            last.0,
        ));
        w.events.extend(
            req.events
                .iter()
                .map(|e| (pk, req.plan_id.clone(), e.clone(), 0)),
        );
        w.reviews
            .extend(req.reviews.iter().map(|r| (pk, r.clone())));
        self.plans.insert(
            req.plan_id.clone(),
            PlanState {
                pk,
                last_seq: last.0,
            },
        );
        Ok(())
    }

    fn append(&mut self, req: &Append, w: &mut Writes) -> StoreResult<()> {
        check(&req.events, req.expected_seq, &req.plan_id, &req.reviews)?;
        let Some(plan) = self.plans.get_mut(&req.plan_id) else {
            return Err(StoreError::NotFound(req.plan_id.clone()));
        };
        if plan.last_seq != req.expected_seq {
            return Err(StoreError::SeqConflict {
                plan_id: req.plan_id.clone(),
                expected: req.expected_seq,
                actual: plan.last_seq,
            });
        }
        if let Some(fence) = &req.fence {
            let lease = self.leases.get(&plan.pk);
            // A released lease fences nothing: its holder gave the plan up.
            let held = lease
                .is_some_and(|l| !l.released && l.node == fence.node && l.token == fence.token);
            if !held {
                return Err(StoreError::Fenced {
                    plan_id: req.plan_id.clone(),
                    owner: lease.map_or_else(|| "(none)".to_owned(), |l| l.node.clone()),
                });
            }
        }
        let last = req.events.last().map_or((0, 0), |e| (e.seq, e.at));
        plan.last_seq = last.0;
        let pk = plan.pk;
        w.events.extend(
            req.events
                .iter()
                .map(|e| (pk, req.plan_id.clone(), e.clone(), 1)),
        );
        w.updates.push((pk, last.0, last.1, req.state.clone()));
        w.reviews
            .extend(req.reviews.iter().map(|r| (pk, r.clone())));
        Ok(())
    }

    /// Renewal by the holder (even after expiry or release) keeps the token; a claim over an
    /// expired or released lease of another node increases it; a live lease of another node is
    /// `LeaseHeld`.
    fn claim(&mut self, plan_id: &str, node: &str, ttl: i64, w: &mut Writes) -> StoreResult<()> {
        let Some(plan) = self.plans.get(plan_id) else {
            return Err(StoreError::NotFound(plan_id.to_owned()));
        };
        let pk = plan.pk;
        let token = match self.leases.get(&pk) {
            None => 1,
            Some(l) if l.node == node => l.token,
            Some(l) if l.released || l.expired => l.token + 1,
            Some(l) => {
                return Err(StoreError::LeaseHeld {
                    plan_id: plan_id.to_owned(),
                    owner: l.node.clone(),
                    until: l.expires_at,
                })
            }
        };
        let expired = ttl <= 0;
        self.leases.insert(
            pk,
            Lease {
                node: node.to_owned(),
                token,
                released: false,
                // Only `expired` is read again within the batch.
                expires_at: Micros::MAX,
                expired,
            },
        );
        self.write_lease(
            pk,
            LeaseWrite {
                node: node.to_owned(),
                token,
                ttl,
                released: false,
            },
        );
        w.claimed = Some(Fence {
            node: node.to_owned(),
            token,
        });
        w.claimed_pk = pk;
        Ok(())
    }

    /// Marks the lease released and run out, when `fence` still holds it; nothing otherwise.
    fn release(&mut self, plan_id: &str, fence: &Fence) {
        let Some(pk) = self.plans.get(plan_id).map(|p| p.pk) else {
            return;
        };
        let Some(lease) = self.leases.get_mut(&pk) else {
            return;
        };
        if lease.node != fence.node || lease.token != fence.token {
            return;
        }
        lease.released = true;
        lease.expired = true;
        let (node, token) = (lease.node.clone(), lease.token);
        self.write_lease(
            pk,
            LeaseWrite {
                node,
                token,
                ttl: 0,
                released: true,
            },
        );
    }

    fn write_lease(&mut self, pk: i64, write: LeaseWrite) {
        if self.lease_writes.insert(pk, write).is_none() {
            self.lease_order.push(pk);
        }
    }
}

/// New plan rows, column by column (bound as arrays and `unnest`ed).
#[derive(Default)]
struct PlanCols {
    pk: Vec<i64>,
    plan_id: Vec<String>,
    state: Vec<String>,
    created_at: Vec<i64>,
    updated_at: Vec<i64>,
    last_seq: Vec<i64>,
}

/// Event rows, column by column.
#[derive(Default)]
struct EventCols<'a> {
    plan_pk: Vec<i64>,
    seq: Vec<i64>,
    kind: Vec<&'a str>,
    at: Vec<i64>,
    actor: Vec<&'a str>,
    data: Vec<&'a str>,
    cp_trigger: Vec<Option<&'a str>>,
    cp_label: Vec<Option<&'a str>>,
    format: Vec<i32>,
}

impl EventCols<'_> {
    fn with_capacity(n: usize) -> Self {
        EventCols {
            plan_pk: Vec::with_capacity(n),
            seq: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            at: Vec::with_capacity(n),
            actor: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
            cp_trigger: Vec::with_capacity(n),
            cp_label: Vec::with_capacity(n),
            format: Vec::with_capacity(n),
        }
    }
}

/// Where an event of the batch is answered (see [`transaction_in`]), and its plan's key.
struct Placed {
    answer: usize,
    /// In the second half of a `CreateWith` (the append's events).
    second: bool,
    index: usize,
    pk: i64,
}

fn placed_event<'a>(answers: &'a [StoreResult<Outcome>], p: &Placed) -> Option<&'a StoredEvent> {
    match answers.get(p.answer)? {
        Ok(Outcome::Events(v)) | Ok(Outcome::CreatedLeased(v, _)) => v.get(p.index),
        Ok(Outcome::Both(a, b)) => if p.second { b } else { a }.get(p.index),
        _ => None,
    }
}

/// Lease rows, column by column.
#[derive(Default)]
struct LeaseCols {
    pk: Vec<i64>,
    node: Vec<String>,
    token: Vec<i64>,
    ttl: Vec<i64>,
    released: Vec<bool>,
}

/// Review rows, column by column.
#[derive(Default)]
struct ReviewCols {
    plan_pk: Vec<i64>,
    review_id: Vec<String>,
    state: Vec<String>,
    opened_at: Vec<i64>,
    data: Vec<String>,
}

/// One attempt at the batch, in one transaction: the answers and the number of events
/// committed. A small batch takes two round trips: `BEGIN` with the plans' rows locked, their
/// leases and (for creates) new plan keys; then the writes (the events take their ids as they
/// are inserted), the notification and `COMMIT`, each lot sent together. A batch naming more
/// than [`LEASES_WITH_LOCKS`] plans reads the leases in a round trip between the two. A
/// batch that fails is rolled back here (a statement that failed before `COMMIT` aborted the
/// transaction, and `COMMIT` then rolled it back; one that failed before `COMMIT` was sent
/// left it open).
async fn transaction(
    c: &mut Conn,
    channel: &str,
    ops: &[Op],
) -> Result<(Vec<StoreResult<Outcome>>, u64), Failure> {
    if c.open {
        // The last batch's future was dropped midway: its transaction is still open.
        c.client
            .batch_execute("ROLLBACK")
            .await
            .map_err(db("roll back an unfinished transaction"))?;
        c.open = false;
    }
    c.open = true;
    let result = transaction_in(c, channel, ops).await;
    // Harmless when `COMMIT` already ended it (a warning, not an error).
    if result.is_err() && c.client.batch_execute("ROLLBACK").await.is_err() {
        // Still open: the next batch tries again (a closed connection is replaced first).
        return result;
    }
    c.open = false;
    result
}

async fn transaction_in(
    c: &Conn,
    channel: &str,
    ops: &[Op],
) -> Result<(Vec<StoreResult<Outcome>>, u64), Failure> {
    // The plans named, in a stable order.
    let mut names: Vec<&str> = Vec::new();
    let mut creates = 0i32;
    for op in ops {
        match op {
            Op::Create(c) => {
                names.push(&c.plan_id);
                creates += 1;
            }
            Op::Append(a) => names.push(&a.plan_id),
            Op::CreateWith { create, append } => {
                names.push(&create.plan_id);
                names.push(&append.plan_id);
                creates += 1;
            }
            Op::CreateLeased { create, .. } => {
                names.push(&create.plan_id);
                creates += 1;
            }
            Op::Claim { plan_id, .. } | Op::Release { plan_id, .. } => names.push(plan_id),
        }
    }
    names.sort_unstable();
    names.dedup();

    let tx = &c.client;
    let early = names.len() <= LEASES_WITH_LOCKS;
    // Sent together, in this order: one round trip.
    let ((), rows, early_leases, new_pks) = futures_util::future::try_join4(
        async {
            tx.batch_execute("BEGIN")
                .await
                .map_err(db("begin a write transaction"))
        },
        async {
            tx.query(&c.lock_plans, &[&names])
                .await
                .map_err(db("lock plans"))
        },
        async {
            if !early {
                return Ok(Vec::new());
            }
            tx.query(&c.read_named_leases, &[&names])
                .await
                .map_err(db("read leases"))
        },
        async {
            if creates == 0 {
                return Ok(Vec::new());
            }
            Ok(tx
                .query(&c.new_pks, &[&creates])
                .await
                .map_err(db("allocate plan keys"))?
                .iter()
                .map(|r| r.get::<_, i64>(0))
                .collect::<Vec<i64>>())
        },
    )
    .await?;
    let mut plans = HashMap::with_capacity(rows.len());
    let mut pks = Vec::with_capacity(rows.len());
    for r in &rows {
        let pk: i64 = r.get(0);
        pks.push(pk);
        plans.insert(
            r.get::<_, String>(1),
            PlanState {
                pk,
                last_seq: from_sql(r.get(2)),
            },
        );
    }
    let lease_rows = if early || pks.is_empty() {
        early_leases
    } else {
        tx.query(&c.read_leases, &[&pks])
            .await
            .map_err(db("read leases"))?
    };
    let mut leases = HashMap::with_capacity(lease_rows.len());
    for r in &lease_rows {
        leases.insert(
            r.get::<_, i64>(0),
            Lease {
                node: r.get(1),
                token: from_sql(r.get(2)),
                released: r.get(3),
                expires_at: r.get(4),
                expired: r.get(5),
            },
        );
    }
    let mut new_pks = new_pks.into_iter();
    let mut decider = Decider {
        plans,
        leases,
        lease_writes: HashMap::new(),
        lease_order: Vec::new(),
        new_pks: &mut new_pks,
    };

    // Decide each request in order.
    let mut decided: Vec<StoreResult<Writes>> = Vec::with_capacity(ops.len());
    for op in ops {
        let mut w = Writes::default();
        let result = match op {
            Op::Create(req) => decider.create(req, &mut w),
            Op::Append(req) => decider.append(req, &mut w),
            Op::CreateWith { create, append } => match decider.create(create, &mut w) {
                Err(e) => Err(e),
                Ok(()) => match decider.append(append, &mut w) {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        // The create half goes with the refused append.
                        decider.plans.remove(&create.plan_id);
                        Err(e)
                    }
                },
            },
            Op::CreateLeased { create, node, ttl } => match decider.create(create, &mut w) {
                Err(e) => Err(e),
                Ok(()) => decider.claim(&create.plan_id, node, *ttl, &mut w),
            },
            Op::Claim {
                plan_id, node, ttl, ..
            } => decider.claim(plan_id, node, *ttl, &mut w),
            Op::Release { plan_id, fence } => {
                decider.release(plan_id, fence);
                Ok(())
            }
        };
        decided.push(result.map(|()| w));
    }

    // The leases changed, one row each, as the batch left them.
    let mut lease_cols = LeaseCols::default();
    for pk in std::mem::take(&mut decider.lease_order) {
        if let Some(l) = decider.lease_writes.remove(&pk) {
            lease_cols.pk.push(pk);
            lease_cols.node.push(l.node);
            lease_cols.token.push(to_sql(l.token));
            lease_cols.ttl.push(l.ttl);
            lease_cols.released.push(l.released);
        }
    }

    // Gather the rows to write.
    let mut plan_cols = PlanCols::default();
    let mut n_events = 0usize;
    for w in decided.iter().flatten() {
        for (pk, id, state, created, updated, last) in &w.new_plans {
            plan_cols.pk.push(*pk);
            plan_cols.plan_id.push(id.clone());
            plan_cols.state.push(state.clone());
            plan_cols.created_at.push(*created);
            plan_cols.updated_at.push(*updated);
            plan_cols.last_seq.push(to_sql(*last));
        }
        n_events += w.events.len();
    }
    if !plan_cols.pk.is_empty() {
        let inserted = tx
            .query(
                &c.insert_plans,
                &[
                    &plan_cols.pk,
                    &plan_cols.plan_id,
                    &plan_cols.state,
                    &plan_cols.created_at,
                    &plan_cols.updated_at,
                    &plan_cols.last_seq,
                ],
            )
            .await
            .map_err(db("insert plans"))?;
        if inserted.len() != plan_cols.pk.len() {
            // Another node created one of these ids since the batch looked: run the batch
            // again, which will see it and refuse the create.
            return Err(Failure::Retry(StoreError::Unavailable(
                "a plan id was created by another node at the same moment".into(),
            )));
        }
    }

    // Events in request order. Each carries its place among them (in `placed`) until the
    // insert answers the ids it took (see `insert_events`); where each one is answered, and its
    // plan's key.
    let mut placed: Vec<Placed> = Vec::with_capacity(n_events);
    let mut answers: Vec<StoreResult<Outcome>> = Vec::with_capacity(ops.len());
    let mut updates: HashMap<i64, (u64, Micros, Option<String>)> = HashMap::new();
    let mut update_order: Vec<i64> = Vec::new();
    let mut reviews: HashMap<(i64, String), usize> = HashMap::new();
    let mut review_rows: Vec<(i64, ReviewRow)> = Vec::new();
    // Claims that asked for their plan's first event id: (answer index, plan key).
    let mut incarnations: Vec<(usize, i64)> = Vec::new();
    for (op, result) in ops.iter().zip(decided) {
        let w = match result {
            Ok(w) => w,
            Err(e) => {
                answers.push(Err(e));
                continue;
            }
        };
        let mut halves: (Vec<StoredEvent>, Vec<StoredEvent>) = Default::default();
        for (pk, plan_id, e, half) in w.events {
            let stored = e.stored(placed.len() as u64, plan_id);
            let list = if half == 0 {
                &mut halves.0
            } else {
                &mut halves.1
            };
            placed.push(Placed {
                answer: answers.len(),
                second: half != 0,
                index: list.len(),
                pk,
            });
            list.push(stored);
        }
        for (pk, last_seq, at, state) in w.updates {
            let entry = updates.entry(pk).or_insert_with(|| {
                update_order.push(pk);
                (last_seq, at, None)
            });
            entry.0 = last_seq;
            entry.1 = at;
            if state.is_some() {
                entry.2 = state;
            }
        }
        for (pk, r) in w.reviews {
            // One row per review: a later change in the batch replaces an earlier one.
            match reviews.get(&(pk, r.review_id.clone())) {
                Some(&i) => review_rows[i] = (pk, r),
                None => {
                    reviews.insert((pk, r.review_id.clone()), review_rows.len());
                    review_rows.push((pk, r));
                }
            }
        }
        answers.push(match op {
            Op::Create(_) => Ok(Outcome::Events(halves.0)),
            Op::Append(_) => Ok(Outcome::Events(halves.1)),
            Op::CreateWith { .. } => Ok(Outcome::Both(halves.0, halves.1)),
            Op::Claim { incarnation, .. } => {
                if *incarnation {
                    incarnations.push((answers.len(), w.claimed_pk));
                }
                w.claimed
                    .map(|fence| Outcome::Claimed(fence, None))
                    .ok_or_else(|| StoreError::Backend("a claim took no lease".into()))
            }
            Op::CreateLeased { .. } => w
                .claimed
                .map(|fence| Outcome::CreatedLeased(halves.0, fence))
                .ok_or_else(|| StoreError::Backend("a claim took no lease".into())),
            Op::Release { .. } => Ok(Outcome::Released),
        });
    }

    // The rest of the transaction's statements depend on nothing they answer one another, so
    // they are sent together (pipelined: one round trip, not one each) and run in this order;
    // the first failure is the one answered (the later ones fail because it aborted the
    // transaction). The commit waits for them all.
    let mut update_cols: (Vec<i64>, Vec<i64>, Vec<i64>, Vec<Option<String>>) = Default::default();
    for pk in &update_order {
        if let Some((last_seq, at, state)) = updates.remove(pk) {
            update_cols.0.push(*pk);
            update_cols.1.push(to_sql(last_seq));
            update_cols.2.push(at);
            update_cols.3.push(state);
        }
    }
    let mut review_cols = ReviewCols::default();
    for (pk, r) in review_rows {
        review_cols.plan_pk.push(pk);
        review_cols.review_id.push(r.review_id);
        review_cols.state.push(r.state);
        review_cols.opened_at.push(r.opened_at);
        review_cols.data.push(r.data);
    }
    let incarnation_pks: Vec<i64> = incarnations.iter().map(|(_, pk)| *pk).collect();
    // The event columns borrow the answers' events (no copy of their data).
    let mut ev = EventCols::with_capacity(n_events);
    for p in &placed {
        let e = placed_event(&answers, p).ok_or_else(|| {
            Failure::Fail(StoreError::Backend(
                "an event lost its place in the batch".into(),
            ))
        })?;
        ev.plan_pk.push(p.pk);
        ev.seq.push(to_sql(e.seq));
        ev.kind.push(&e.kind);
        ev.at.push(e.at);
        ev.actor.push(&e.actor);
        ev.data.push(&e.data);
        ev.cp_trigger
            .push(e.checkpoint.as_ref().map(|c| c.trigger.as_str()));
        ev.cp_label
            .push(e.checkpoint.as_ref().and_then(|c| c.label.as_deref()));
        ev.format.push(i32::try_from(e.format).unwrap_or(i32::MAX));
    }
    type Pending<'a> = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<Vec<tokio_postgres::Row>, Failure>> + Send + 'a,
        >,
    >;
    let mut pipeline: Vec<Pending<'_>> = Vec::new();
    // Which of the pipeline's answers is the first events' (read last).
    let mut first_events_at = None;
    // The plans' rows change only with events (an append without any is refused in `check`),
    // so the events' statement updates them.
    if n_events > 0 {
        pipeline.push(Box::pin(async {
            tx.query(
                &c.write_events,
                &[
                    &ev.plan_pk,
                    &ev.seq,
                    &ev.kind,
                    &ev.at,
                    &ev.actor,
                    &ev.data,
                    &ev.cp_trigger,
                    &ev.cp_label,
                    &ev.format,
                    &update_cols.0,
                    &update_cols.1,
                    &update_cols.2,
                    &update_cols.3,
                    &channel,
                ],
            )
            .await
            .map_err(db_with_commit("insert events"))
        }));
    }
    if !review_cols.plan_pk.is_empty() {
        pipeline.push(Box::pin(async {
            tx.execute(
                &c.put_reviews,
                &[
                    &review_cols.plan_pk,
                    &review_cols.review_id,
                    &review_cols.state,
                    &review_cols.opened_at,
                    &review_cols.data,
                ],
            )
            .await
            .map(|_| Vec::new())
            .map_err(db_with_commit("write reviews"))
        }));
    }
    if !lease_cols.pk.is_empty() {
        pipeline.push(Box::pin(async {
            tx.execute(
                &c.put_leases,
                &[
                    &lease_cols.pk,
                    &lease_cols.node,
                    &lease_cols.token,
                    &lease_cols.ttl,
                    &lease_cols.released,
                ],
            )
            .await
            .map(|_| Vec::new())
            .map_err(db_with_commit("write leases"))
        }));
    }
    if !incarnation_pks.is_empty() {
        // After the batch's own events: a plan created in this batch has its first one now.
        first_events_at = Some(pipeline.len());
        pipeline.push(Box::pin(async {
            tx.query(&c.first_events, &[&incarnation_pks])
                .await
                .map_err(db_with_commit("read first events"))
        }));
    }
    pipeline.push(Box::pin(async {
        tx.batch_execute("COMMIT")
            .await
            .map(|()| Vec::new())
            .map_err(db(COMMIT))
    }));
    let mut answered = futures_util::future::try_join_all(pipeline).await?;
    if n_events > 0 {
        // The insert's answer, the last id it took: the ids run up to it in request order.
        let last: i64 = answered
            .first()
            .and_then(|rows| rows.first())
            .map(|r| r.get(0))
            .ok_or_else(|| Failure::Fail(StoreError::Backend("the insert took no ids".into())))?;
        let first = last - i64::try_from(n_events).unwrap_or(i64::MAX) + 1;
        for answer in answers.iter_mut().flatten() {
            let (a, b): (&mut [StoredEvent], &mut [StoredEvent]) = match answer {
                Outcome::Events(v) | Outcome::CreatedLeased(v, _) => (v, &mut []),
                Outcome::Both(a, b) => (a, b),
                Outcome::Claimed(..) | Outcome::Released => (&mut [], &mut []),
            };
            for e in a.iter_mut().chain(b.iter_mut()) {
                e.id = from_sql(first + i64::try_from(e.id).unwrap_or(i64::MAX));
            }
        }
    }
    if let Some(at) = first_events_at {
        let firsts: HashMap<i64, i64> = std::mem::take(&mut answered[at])
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for (i, pk) in incarnations {
            if let Some(Ok(Outcome::Claimed(_, first))) = answers.get_mut(i) {
                *first = firsts.get(&pk).map(|id| from_sql(*id));
            }
        }
    }
    Ok((answers, n_events as u64))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cairn_store::conformance;
    use cairn_store::{EventLog, PlanIndex};

    use super::*;
    use crate::{PgOptions, PgStore};

    async fn store() -> Option<PgStore> {
        let Ok(url) = std::env::var("CAIRN_TEST_DATABASE_URL") else {
            eprintln!("skipped: CAIRN_TEST_DATABASE_URL is not set (no PostgreSQL to test with)");
            return None;
        };
        let mut buf = [0u8; 8];
        getrandom::fill(&mut buf).unwrap();
        let schema: String = buf.iter().map(|b| format!("{b:02x}")).collect();
        let opts = PgOptions {
            pool_size: 2,
            schema: Some(format!("cairn_t_{schema}")),
            ..PgOptions::default()
        };
        Some(PgStore::connect(&url, opts).await.unwrap())
    }

    /// A plan with one event.
    fn create(plan_id: &str) -> CreatePlan {
        conformance::create(plan_id, 1, 1)
    }

    /// One event after `expected_seq`.
    fn step(plan_id: &str, expected_seq: u64, fence: Option<Fence>) -> Append {
        Append {
            fence,
            ..conformance::append(plan_id, expected_seq, 1)
        }
    }

    fn append(plan_id: &str, expected_seq: u64, fence: Option<Fence>) -> Op {
        Op::Append(step(plan_id, expected_seq, fence))
    }

    /// One batch of `n` plans' fenced appends with a stale one, a wrong fence, a claim of a
    /// held lease, a release and an unknown plan among them is decided request by request, as
    /// requests one at a time would be: with few plans the leases are read in the round trip
    /// that locks the plans, with many in one of their own. (A current-thread runtime: the
    /// writer task cannot run until every request is queued, so they make one batch.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_of_few_plans_and_one_of_many_decide_each_request_alike() {
        let Some(store) = store().await else { return };
        for n in [3, LEASES_WITH_LOCKS + 24] {
            let name = |i: usize| format!("n{n}-{i}");
            let mut fences = Vec::new();
            for i in 0..n {
                let (_, fence) = store
                    .create_plan_leased(create(&name(i)), "node-a", 60_000, 1)
                    .await
                    .unwrap();
                fences.push(fence.expect("the lease is taken with the plan"));
            }
            let before = store.writer_stats();
            let mut ops: Vec<Op> = (0..n)
                .map(|i| append(&name(i), 1, Some(fences[i].clone())))
                .collect();
            // Seen before its plan's append above commits in the same batch: a conflict.
            ops.push(append(&name(0), 1, Some(fences[0].clone())));
            let stale = Fence {
                node: "node-a".into(),
                token: fences[1].token + 1,
            };
            ops.push(append(&name(1), 2, Some(stale)));
            ops.push(Op::Claim {
                plan_id: name(2),
                node: "node-b".into(),
                ttl: 60_000_000,
                incarnation: false,
            });
            ops.push(Op::Release {
                plan_id: name(n - 1),
                fence: fences[n - 1].clone(),
            });
            ops.push(append("nobody", 1, None));
            let total = ops.len();
            let mut answers = Vec::new();
            for op in ops {
                let (reply, answer) = oneshot::channel();
                store.shared.queued();
                store.writes.send(Request { op, reply }).unwrap();
                answers.push(answer);
            }
            let mut results = Vec::new();
            for answer in answers {
                let result = tokio::time::timeout(Duration::from_secs(10), answer)
                    .await
                    .expect("the writer answers within 10 s")
                    .unwrap();
                results.push(result);
            }
            let after = store.writer_stats();
            assert_eq!(after.requests - before.requests, total as u64, "n = {n}");
            assert_eq!(after.commits - before.commits, 1, "one batch, n = {n}");
            let mut results = results.into_iter();
            let mut ids = Vec::new();
            for i in 0..n {
                match results.next() {
                    Some(Ok(Outcome::Events(events))) => {
                        assert_eq!((events[0].plan_id.as_str(), events[0].seq), (&*name(i), 2));
                        ids.push(events[0].id);
                    }
                    other => panic!("n = {n}, plan {i}: {:?}", other.map(|r| r.err())),
                }
            }
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in request order");
            let rest: Vec<Option<StoreError>> = results.map(|r| r.err()).collect();
            assert!(
                matches!(
                    &rest[0],
                    Some(StoreError::SeqConflict {
                        expected: 1,
                        actual: 2,
                        ..
                    })
                ),
                "{:?}",
                rest[0]
            );
            assert!(
                matches!(&rest[1], Some(StoreError::Fenced { .. })),
                "{:?}",
                rest[1]
            );
            assert!(
                matches!(&rest[2], Some(StoreError::LeaseHeld { .. })),
                "{:?}",
                rest[2]
            );
            assert!(rest[3].is_none(), "the release: {:?}", rest[3]);
            assert!(
                matches!(&rest[4], Some(StoreError::NotFound(_))),
                "{:?}",
                rest[4]
            );
            for i in 0..n {
                assert_eq!(store.get_plan(&name(i)).await.unwrap().unwrap().last_seq, 2);
            }
        }
    }

    /// A write that finds the writer idle is committed by its caller; writes that come while
    /// it is committed wait in the queue and are committed together after it, by the task.
    #[tokio::test(flavor = "current_thread")]
    async fn a_lone_write_commits_inline_and_writes_behind_it_share_one_batch() {
        let Some(store) = store().await else { return };
        let store = Arc::new(store);
        for i in 0..4 {
            store.create_plan(create(&format!("p{i}"))).await.unwrap();
        }
        let before = store.writer_stats();
        let lone = step("p0", 1, None);
        store.append(lone).await.unwrap();
        let after = store.writer_stats();
        assert_eq!(after.inline_commits - before.inline_commits, 1);
        assert_eq!(after.commits - before.commits, 1);

        // The connection held: the first of three writes claims it inline and waits for it,
        // the other two find the writer busy and queue.
        let held = store.shared.conn.lock().await;
        let mut tasks = Vec::new();
        for i in 1..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let req = step(&format!("p{i}"), 1, None);
                store.append(req).await
            }));
        }
        tokio::time::timeout(Duration::from_secs(10), async {
            while store.shared.pending.load(Ordering::Acquire) < 3 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("three writes pending within 10 s");
        drop(held);
        for task in tasks {
            let events = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("answered within 10 s")
                .unwrap()
                .unwrap();
            assert_eq!(events[0].seq, 2);
        }
        let end = store.writer_stats();
        assert_eq!(end.inline_commits - after.inline_commits, 1);
        assert_eq!(
            end.commits - after.commits,
            2,
            "one inline, one batch of two"
        );
        assert_eq!(end.requests - after.requests, 3);
        assert_eq!(store.shared.pending.load(Ordering::Acquire), 0);
    }

    /// An inline commit whose caller stops waiting midway leaves no transaction open: it is
    /// rolled back at once, without another write coming (the server would otherwise end the
    /// session after seconds, the id counter held meanwhile if the insert had been sent).
    #[tokio::test(flavor = "current_thread")]
    async fn an_inline_commit_dropped_midway_is_rolled_back_at_once() {
        use futures_util::FutureExt;
        let Some(store) = store().await else { return };
        store.create_plan(create("p")).await.unwrap();
        let req = step("p", 1, None);
        // Polled once: it has sent `BEGIN` and the lock, and waits for their answer.
        assert!(store.append(req).now_or_never().is_none());
        let app = format!("cairn-writer:{}", store.namespace);
        let client = store.pool().get().await.unwrap();
        let state = |expected: &'static str| {
            let (client, app) = (&client, &app);
            async move {
                loop {
                    let row = client
                        .query_opt(
                            "SELECT state FROM pg_stat_activity WHERE application_name = $1",
                            &[app],
                        )
                        .await
                        .unwrap();
                    if row.map(|r| r.get::<_, String>(0)).as_deref() == Some(expected) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(3), state("idle"))
            .await
            .expect("the writer's session is idle, not in a transaction, within 3 s");
        assert_eq!(store.shared.pending.load(Ordering::Acquire), 0);
        // The plan was left as it was, and the next write goes through.
        assert_eq!(store.get_plan("p").await.unwrap().unwrap().last_seq, 1);
        let again = step("p", 1, None);
        store.append(again).await.unwrap();
    }

    /// The writer's statements run on their generic plans: the server plans each once per
    /// connection, not again at every execution (`pg_prepared_statements` counts both kinds,
    /// PostgreSQL 14 and later).
    #[tokio::test(flavor = "current_thread")]
    async fn the_writers_statements_are_planned_once_per_connection() {
        let Some(store) = store().await else { return };
        // More executions than the five after which the server would weigh a generic plan.
        for i in 0..8 {
            let id = format!("p{i}");
            store.create_plan(create(&id)).await.unwrap();
            store.append(step(&id, 1, None)).await.unwrap();
        }
        let guard = store.shared.conn.lock().await;
        let conn = guard
            .as_ref()
            .expect("the writer is connected after its commits");
        let row = conn
            .client
            .query_one(
                "SELECT coalesce(sum(generic_plans), 0)::bigint,
                        coalesce(sum(custom_plans), 0)::bigint
                 FROM pg_prepared_statements",
                &[],
            )
            .await
            .unwrap();
        let (generic, custom): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(custom, 0, "no statement planned for its parameters");
        assert!(
            generic >= 16,
            "the statements ran on generic plans: {generic}"
        );
    }
}
