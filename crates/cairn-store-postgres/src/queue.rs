//! The remote-worker task queue in PostgreSQL ([`PgQueue`]): every node of a cluster shares
//! it, so a worker may poll, heartbeat and report to any node.
//!
//! - Tasks live in `cairn_tasks`, one row per live task (queued, or claimed with a lease that
//!   runs out by the database's clock). A claim takes the oldest queued task of the asked agent
//!   types with `FOR UPDATE SKIP LOCKED`, so claims racing on several nodes never hand one task
//!   twice.
//! - Heartbeat, complete and fail are fenced in their statement by the task, its holder and a
//!   live lease: a lease that ran out is as good as gone at once, whichever node is asked.
//! - `expire` deletes the claims whose lease ran out with `DELETE … RETURNING` over rows locked
//!   with `SKIP LOCKED`: with every node sweeping, each expired task is handed to one node.
//! - One live task per attempt (a unique index on plan, step, attempt kind, number and run):
//!   an attempt sent again, by the node that recovered its plan after its first owner died,
//!   answers the task a worker may still be running.
//! - A long poll waits for a wake-up hint (`pg_notify` on enqueue, heard on one dedicated
//!   `LISTEN` connection per queue that reconnects when lost) and polls as well, so a lost hint
//!   costs latency, never a task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn_engine::executor::Task;
use cairn_engine::queue::{
    HeartbeatAnswer, RemoteError, Stopped, TaskLease, TaskQueue, WorkerInfo,
};
use cairn_store::{StoreError, StoreResult};
use deadpool_postgres::{Object, Pool};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{debug, warn};

use crate::{backend, PgStore};

/// How a [`PgQueue`] behaves.
#[derive(Debug, Clone)]
pub struct PgQueueOptions {
    /// How long a claim lasts without a heartbeat (at least 1 ms).
    pub lease_ms: u64,
    /// How often a waiting claim looks for a task when no wake-up hint came (at least 10 ms):
    /// the most a lost hint delays a task.
    pub poll_ms: u64,
}

impl Default for PgQueueOptions {
    fn default() -> Self {
        PgQueueOptions {
            lease_ms: cairn_engine::remote::DEFAULT_LEASE_MS,
            poll_ms: 1_000,
        }
    }
}

/// The [`TaskQueue`] in a PostgreSQL database, shared by every node connected to it. Cheap to
/// clone; every clone is the same queue (and the same listening connection).
#[derive(Clone)]
pub struct PgQueue {
    shared: Arc<Shared>,
}

struct Shared {
    pool: Pool,
    lease_ms: u64,
    poll: Duration,
    /// The NOTIFY channel of this schema's queue.
    channel: String,
    /// The `application_name` of this queue's listening connection.
    name: String,
    /// The wake-ups of waiting claims.
    hints: Arc<Hints>,
    closed: AtomicBool,
    listener: Mutex<Option<JoinHandle<()>>>,
    /// When this queue last forgot long-gone workers.
    pruned: Mutex<Option<Instant>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop_listening();
    }
}

impl Shared {
    fn stop_listening(&self) {
        let handle = self
            .listener
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle {
            handle.abort();
        }
    }
}

/// How waiting claims are woken. A hint names the agent type of the task queued and wakes
/// one claim waiting for that type (not all: each would run a claim for one task); a claim
/// that takes a task passes a wake-up on for each of its types, in case the one it consumed
/// was for another task. Everyone is woken when hints may have been lost (the listener
/// reconnected) and on close.
#[derive(Default)]
struct Hints {
    everyone: Notify,
    by_type: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Hints {
    fn of(&self, agent_type: &str) -> Arc<Notify> {
        self.by_type
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(agent_type.to_owned())
            .or_default()
            .clone()
    }

    fn hint(&self, agent_type: &str) {
        let notify = self
            .by_type
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(agent_type)
            .cloned();
        if let Some(notify) = notify {
            notify.notify_one();
        }
    }
}

/// The longest a NOTIFY channel name may be (PostgreSQL's identifiers).
const MAX_CHANNEL: usize = 63;

/// Expired claims handed back per statement.
const EXPIRE_BATCH: i64 = 256;

/// Workers not seen polling for this long, holding nothing, are forgotten.
const FORGET_WORKERS_AFTER: &str = "1 day";

/// How often the listening connection is checked for life.
const LISTEN_CHECK: Duration = Duration::from_secs(10);

impl PgQueue {
    /// The queue of `store`'s database (and schema), whose leases last `lease_ms`.
    pub async fn new(store: &PgStore, lease_ms: u64) -> StoreResult<PgQueue> {
        PgQueue::with_options(
            store,
            PgQueueOptions {
                lease_ms,
                ..PgQueueOptions::default()
            },
        )
        .await
    }

    /// The queue of `store`'s database (and schema) with these options. Starts its listening
    /// connection in the background (it needs a tokio runtime).
    pub async fn with_options(store: &PgStore, opts: PgQueueOptions) -> StoreResult<PgQueue> {
        let client = store.client().await?;
        let schema: Option<String> = client
            .query_one("SELECT current_schema()::text", &[])
            .await
            .map_err(backend)?
            .get(0);
        drop(client);
        let schema = schema.ok_or_else(|| {
            StoreError::Invalid(
                "the connection has no current schema (its search_path names none that exists)"
                    .into(),
            )
        })?;
        // NOTIFY reaches the whole database: the channel names the schema, so queues in other
        // schemas (tests) are not woken by this one.
        let mut channel = format!("cairn_tasks_{schema}");
        while channel.len() > MAX_CHANNEL {
            channel.pop();
        }
        let hints = Arc::new(Hints::default());
        let name = format!("cairn-task-queue-{}", uuid::Uuid::now_v7().simple());
        let mut config = store.config().clone();
        config.application_name(&name);
        let listener = tokio::spawn(listen(config, channel.clone(), hints.clone()));
        Ok(PgQueue {
            shared: Arc::new(Shared {
                pool: store.pool().clone(),
                lease_ms: opts.lease_ms.max(1),
                poll: Duration::from_millis(opts.poll_ms.max(10)),
                channel,
                name,
                hints,
                closed: AtomicBool::new(false),
                listener: Mutex::new(Some(listener)),
                pruned: Mutex::new(None),
            }),
        })
    }

    /// The NOTIFY channel this queue's enqueues hint on.
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// The `application_name` of this queue's listening connection (unique per queue), to
    /// find it in `pg_stat_activity`.
    pub fn listener_name(&self) -> &str {
        &self.shared.name
    }

    async fn client(&self) -> Result<Object, RemoteError> {
        self.shared
            .pool
            .get()
            .await
            .map_err(|e| RemoteError::Unavailable(format!("database connection: {e}")))
    }

    /// One attempt at a claim; the first of a poll also records the worker as seen (in the same
    /// statement).
    async fn take(
        &self,
        worker_id: &str,
        agent_types: &[String],
        plan_ids: Option<&[String]>,
        first: bool,
    ) -> Result<Option<TaskLease>, RemoteError> {
        const SEEN: &str = "INSERT INTO cairn_workers (worker_id, agent_types, last_poll_at)
             VALUES ($1, $2, now())
             ON CONFLICT (worker_id) DO UPDATE
                 SET agent_types = EXCLUDED.agent_types, last_poll_at = EXCLUDED.last_poll_at";
        const NEXT: &str = "SELECT task_id FROM cairn_tasks
             WHERE worker_id IS NULL AND agent_type = ANY($2)
               AND ($4::text[] IS NULL OR plan_id = ANY($4::text[]))
             ORDER BY seq
             LIMIT 1
             FOR UPDATE SKIP LOCKED";
        const TAKE: &str = "UPDATE cairn_tasks t
             SET worker_id = $1, lease_until = now() + $3::bigint * interval '1 millisecond'
             FROM next
             WHERE t.task_id = next.task_id
             RETURNING t.task_id, t.task";
        let sql = if first {
            format!("WITH seen AS ({SEEN}), next AS ({NEXT}) {TAKE}")
        } else {
            format!("WITH next AS ({NEXT}) {TAKE}")
        };
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await.map_err(db)?;
        let row = client
            .query_opt(&stmt, &[&worker_id, &agent_types, &self.lease(), &plan_ids])
            .await
            .map_err(db)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let task_id: String = row.get(0);
        let task = decode(&task_id, row.get(1))?;
        Ok(Some(TaskLease {
            task_id,
            task,
            lease_ms: self.shared.lease_ms,
        }))
    }

    fn lease(&self) -> i64 {
        i64::try_from(self.shared.lease_ms).unwrap_or(i64::MAX)
    }

    /// Why a fenced call about `task_id` by `worker_id` found no live lease to act on.
    async fn refusal(&self, client: &Object, task_id: &str, worker_id: &str) -> RemoteError {
        let holder = client
            .query_opt(
                "SELECT worker_id FROM cairn_tasks WHERE task_id = $1",
                &[&task_id],
            )
            .await;
        match holder {
            Ok(Some(row)) => match row.get::<_, Option<String>>(0) {
                Some(holder) if holder != worker_id => RemoteError::WrongWorker {
                    task_id: task_id.to_owned(),
                    worker_id: worker_id.to_owned(),
                },
                // Queued, or held by this worker under a lease that ran out.
                _ => RemoteError::UnknownTask(task_id.to_owned()),
            },
            Ok(None) => RemoteError::UnknownTask(task_id.to_owned()),
            Err(e) => db(e),
        }
    }

    /// Ends the holder's task (complete or fail) and hands it back.
    async fn resolve(&self, task_id: &str, worker_id: &str) -> Result<Task, RemoteError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "DELETE FROM cairn_tasks
                 WHERE task_id = $1 AND worker_id = $2 AND lease_until > now()
                 RETURNING task",
            )
            .await
            .map_err(db)?;
        match client
            .query_opt(&stmt, &[&task_id, &worker_id])
            .await
            .map_err(db)?
        {
            Some(row) => decode(task_id, row.get(0)),
            None => Err(self.refusal(&client, task_id, worker_id).await),
        }
    }

    /// Forgets workers not seen for a day that hold nothing; at most once a minute per queue.
    async fn forget_old_workers(&self, client: &Object) {
        {
            let mut pruned = self
                .shared
                .pruned
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if pruned.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
                return;
            }
            *pruned = Some(Instant::now());
        }
        let sql = format!(
            "DELETE FROM cairn_workers w
             WHERE last_poll_at < now() - interval '{FORGET_WORKERS_AFTER}'
               AND NOT EXISTS (SELECT 1 FROM cairn_tasks t WHERE t.worker_id = w.worker_id)"
        );
        if let Err(e) = client.execute(&sql, &[]).await {
            debug!(error = %e, "cannot forget old workers");
        }
    }
}

/// A database failure as the queue reports it.
fn db(e: tokio_postgres::Error) -> RemoteError {
    RemoteError::Unavailable(format!("database: {e}"))
}

/// The stored task back as a [`Task`].
fn decode(task_id: &str, json: String) -> Result<Task, RemoteError> {
    serde_json::from_str(&json).map_err(|e| {
        RemoteError::Unavailable(format!(
            "task {task_id} is stored in a form this build cannot read: {e}"
        ))
    })
}

#[async_trait]
impl TaskQueue for PgQueue {
    fn lease_ms(&self) -> u64 {
        self.shared.lease_ms
    }

    async fn enqueue(&self, task: Task) -> Result<String, RemoteError> {
        let json = serde_json::to_string(&task)
            .map_err(|e| RemoteError::Unavailable(format!("the task cannot be serialized: {e}")))?;
        let task_id = format!("task_{}", uuid::Uuid::now_v7().simple());
        let client = self.client().await?;
        // One statement: the row and its hint commit together (a NOTIFY is sent on commit).
        // A live task of the same attempt answers its own id (the no-op update returns it).
        let stmt = client
            .prepare_cached(
                "WITH queued AS (
                     INSERT INTO cairn_tasks
                         (task_id, agent_type, plan_id, step_id, kind, attempt, run, task)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (plan_id, step_id, kind, attempt, run) DO UPDATE
                         SET run = EXCLUDED.run
                     RETURNING task_id, agent_type
                 )
                 SELECT task_id, pg_notify($9, agent_type)::text FROM queued",
            )
            .await
            .map_err(db)?;
        let row = client
            .query_one(
                &stmt,
                &[
                    &task_id,
                    &task.agent_type,
                    &task.plan_id,
                    &task.step_id,
                    &task.kind.as_str(),
                    &i64::from(task.attempt),
                    &i64::from(task.run),
                    &json,
                    &self.shared.channel,
                ],
            )
            .await
            .map_err(db)?;
        Ok(row.get(0))
    }

    /// A claim restricted to some plans may be woken by a hint for a task of another plan (and
    /// take nothing): the waiter that task was for then finds it within the poll period, the
    /// bound a lost hint already has.
    async fn claim_of_plans(
        &self,
        worker_id: &str,
        agent_types: &[String],
        plan_ids: Option<&[String]>,
        wait: Duration,
    ) -> Result<Option<TaskLease>, RemoteError> {
        let until = cairn_engine::queue::wait_until(wait);
        let hints = &self.shared.hints;
        let by_type: Vec<Arc<Notify>> = agent_types.iter().map(|t| hints.of(t)).collect();
        let mut first = true;
        loop {
            // Register before looking, so a hint heard in between still wakes us.
            let everyone = hints.everyone.notified();
            tokio::pin!(everyone);
            everyone.as_mut().enable();
            let mut mine: Vec<_> = by_type.iter().map(|n| Box::pin(n.notified())).collect();
            for notified in &mut mine {
                notified.as_mut().enable();
            }
            if self.shared.closed.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let failed = match self.take(worker_id, agent_types, plan_ids, first).await {
                Ok(Some(lease)) => {
                    // Pass the wake-ups on: a hint this claim consumed may have been for a
                    // task it did not take (it took another), which another waiter may take.
                    drop(mine);
                    for t in agent_types {
                        hints.hint(t);
                    }
                    return Ok(Some(lease));
                }
                Ok(None) => {
                    first = false;
                    None
                }
                // The database did not answer: look again while the wait lasts (answering at
                // once would have the worker poll again at once), then say why.
                Err(e) => Some(e),
            };
            let now = Instant::now();
            if now >= until {
                return failed.map_or(Ok(None), Err);
            }
            // Look again on a hint, or after the poll period in case a hint was lost.
            let look_again = (now + self.shared.poll).min(until);
            let hinted = async {
                if !mine.is_empty() {
                    futures_util::future::select_all(mine).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = &mut everyone => {}
                _ = hinted => {}
                _ = tokio::time::sleep_until(look_again) => {}
            }
        }
    }

    async fn unclaim(&self, task_id: &str) -> Result<Option<Task>, RemoteError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let Some(row) = tx
            .query_opt(
                "SELECT stop FROM cairn_tasks WHERE task_id = $1 FOR UPDATE",
                &[&task_id],
            )
            .await
            .map_err(db)?
        else {
            return Ok(None);
        };
        if row.get::<_, bool>(0) {
            let row = tx
                .query_one(
                    "DELETE FROM cairn_tasks WHERE task_id = $1 RETURNING task",
                    &[&task_id],
                )
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            return decode(task_id, row.get(0)).map(Some);
        }
        tx.execute(
            "UPDATE cairn_tasks SET worker_id = NULL, lease_until = NULL WHERE task_id = $1",
            &[&task_id],
        )
        .await
        .map_err(db)?;
        tx.execute(
            "SELECT pg_notify($1, agent_type) FROM cairn_tasks WHERE task_id = $2",
            &[&self.shared.channel, &task_id],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(None)
    }

    async fn heartbeat(
        &self,
        task_id: &str,
        worker_id: &str,
    ) -> Result<HeartbeatAnswer, RemoteError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE cairn_tasks SET lease_until = now() + $3::bigint * interval '1 millisecond'
                 WHERE task_id = $1 AND worker_id = $2 AND lease_until > now()
                 RETURNING stop",
            )
            .await
            .map_err(db)?;
        match client
            .query_opt(&stmt, &[&task_id, &worker_id, &self.lease()])
            .await
            .map_err(db)?
        {
            Some(row) => Ok(HeartbeatAnswer {
                lease_ms: self.shared.lease_ms,
                stop: row.get(0),
            }),
            None => Err(self.refusal(&client, task_id, worker_id).await),
        }
    }

    async fn complete(&self, task_id: &str, worker_id: &str) -> Result<Task, RemoteError> {
        self.resolve(task_id, worker_id).await
    }

    async fn fail(&self, task_id: &str, worker_id: &str) -> Result<Task, RemoteError> {
        self.resolve(task_id, worker_id).await
    }

    async fn expire(&self) -> Result<Vec<Task>, RemoteError> {
        let client = self.client().await?;
        // Rows another node is expiring (or a holder is heartbeating) are locked: skipped
        // here, so each expired task is handed to one sweeper.
        let stmt = client
            .prepare_cached(
                "WITH due AS (
                     SELECT task_id FROM cairn_tasks
                     WHERE worker_id IS NOT NULL AND lease_until <= now()
                     ORDER BY lease_until
                     LIMIT $1
                     FOR UPDATE SKIP LOCKED
                 )
                 DELETE FROM cairn_tasks t USING due
                 WHERE t.task_id = due.task_id
                 RETURNING t.task_id, t.task",
            )
            .await
            .map_err(db)?;
        let mut expired = Vec::new();
        loop {
            let rows = client.query(&stmt, &[&EXPIRE_BATCH]).await.map_err(db)?;
            let full = rows.len() as i64 == EXPIRE_BATCH;
            for row in rows {
                let task_id: String = row.get(0);
                match decode(&task_id, row.get(1)) {
                    Ok(task) => expired.push(task),
                    // Gone from the table already; nothing can report it.
                    Err(e) => warn!(error = %e, "an expired task cannot be read"),
                }
            }
            if !full {
                break;
            }
        }
        self.forget_old_workers(&client).await;
        Ok(expired)
    }

    async fn stop(&self, task_id: &str) -> Result<Stopped, RemoteError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let Some(row) = tx
            .query_opt(
                "SELECT worker_id IS NOT NULL FROM cairn_tasks WHERE task_id = $1 FOR UPDATE",
                &[&task_id],
            )
            .await
            .map_err(db)?
        else {
            return Ok(Stopped::Gone);
        };
        let stopped = if row.get::<_, bool>(0) {
            tx.execute(
                "UPDATE cairn_tasks SET stop = true WHERE task_id = $1",
                &[&task_id],
            )
            .await
            .map_err(db)?;
            Stopped::Flagged
        } else {
            let row = tx
                .query_one(
                    "DELETE FROM cairn_tasks WHERE task_id = $1 RETURNING task",
                    &[&task_id],
                )
                .await
                .map_err(db)?;
            Stopped::Dropped(Box::new(decode(task_id, row.get(0))?))
        };
        tx.commit().await.map_err(db)?;
        Ok(stopped)
    }

    async fn remove(&self, task_id: &str) -> Result<(), RemoteError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM cairn_tasks WHERE task_id = $1", &[&task_id])
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn is_live(&self, task_id: &str) -> Result<bool, RemoteError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM cairn_tasks WHERE task_id = $1)",
                &[&task_id],
            )
            .await
            .map_err(db)?;
        Ok(row.get(0))
    }

    fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.hints.everyone.notify_waiters();
        self.shared.stop_listening();
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, RemoteError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT w.worker_id, w.agent_types,
                        (extract(epoch FROM w.last_poll_at) * 1000000)::bigint,
                        coalesce(
                            array_agg(t.task_id ORDER BY t.task_id COLLATE \"C\")
                                FILTER (WHERE t.task_id IS NOT NULL),
                            '{}')
                 FROM cairn_workers w
                 LEFT JOIN cairn_tasks t ON t.worker_id = w.worker_id
                 GROUP BY w.worker_id
                 ORDER BY w.worker_id COLLATE \"C\"",
                &[],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|row| WorkerInfo {
                worker_id: row.get(0),
                agent_types: row.get(1),
                last_poll_at: cairn_core::Timestamp::from_micros(row.get(2)),
                tasks: row.get(3),
            })
            .collect())
    }

    async fn queued_by_type(&self) -> Result<Vec<(String, usize)>, RemoteError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT agent_type, count(*) FROM cairn_tasks
                 WHERE worker_id IS NULL
                 GROUP BY agent_type
                 ORDER BY agent_type COLLATE \"C\"",
                &[],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|row| {
                let n: i64 = row.get(1);
                (row.get(0), usize::try_from(n).unwrap_or(0))
            })
            .collect())
    }
}

/// The listening connection: LISTENs on `channel` and wakes waiting claims on every hint;
/// reconnects (with a backoff up to 5 s) whenever the connection is lost, and wakes the claims
/// then too, since hints sent meanwhile were not heard. Runs until aborted.
async fn listen(config: tokio_postgres::Config, channel: String, hints: Arc<Hints>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen_once(&config, &channel, &hints).await {
            Ok(()) => debug!(%channel, "the task queue's listening connection ended"),
            Err(e) => {
                warn!(%channel, error = %e, "the task queue's listening connection failed; waiting claims poll until it is back")
            }
        }
        hints.everyone.notify_waiters();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One listening connection, until it ends or fails (a check every [`LISTEN_CHECK`] that goes
/// unanswered until the next one counts as failed).
async fn listen_once(
    config: &tokio_postgres::Config,
    channel: &str,
    hints: &Hints,
) -> Result<(), String> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
    // The connection does its work only while polled: its messages are polled alongside every
    // request made on it.
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let sql = format!("LISTEN \"{}\"", channel.replace('"', "\"\""));
    let mut pending: Option<std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>>> =
        Some(Box::pin(client.batch_execute(&sql)));
    let mut listening = false;
    let mut check = tokio::time::interval(LISTEN_CHECK);
    check.tick().await;
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(n))) => hints.hint(n.payload()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Ok(()),
            },
            done = async { pending.as_mut().expect("guarded").await }, if pending.is_some() => {
                pending = None;
                done.map_err(|e| e.to_string())?;
                if !listening {
                    listening = true;
                    debug!(%channel, "the task queue listens");
                    // Tasks queued before we listened sent hints no one heard.
                    hints.everyone.notify_waiters();
                }
            }
            _ = check.tick() => {
                if pending.is_some() {
                    return Err(format!(
                        "no answer within {} s",
                        LISTEN_CHECK.as_secs()
                    ));
                }
                pending = Some(Box::pin(client.batch_execute("SELECT 1")));
            }
        }
    }
}
