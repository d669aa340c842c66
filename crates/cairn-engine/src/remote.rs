//! Remote workers, between the engine and a [`TaskQueue`]:
//! - [`RemoteQueue`], what the server (and any other front end) calls for workers: claims,
//!   heartbeats and reports go to the queue, and a report's result goes to the plan *through
//!   the engine* ([`crate::Engine::report_outcome`]), answered once it is durable in the log;
//! - `QueueExecutor`, the thin [`Executor`] of every agent type with no local executor: it
//!   enqueues the attempt's task and only watches it (a stop drops a queued task or flags a
//!   claimed one, a step timeout removes it); it never carries the result;
//! - the engine's expiry sweep (`sweep`): claims whose lease ran out are handed back by
//!   [`TaskQueue::expire`] and their attempts fail retryably ("worker lease expired"), so the
//!   step's retry policy decides whether the step runs again (same idempotency key, next
//!   attempt number).
//!
//! Because the result never waits in a future, a queue kept in a database works the same: any
//! node may take a report and hand it to the engine. Late reports for a task no longer held are
//! refused as unknown. A node that stops driving a plan (shutdown, a lost lease) leaves its
//! remote attempts' tasks in the queue; the plan's next owner sends each attempt again and the
//! queue answers the same task (enqueue is idempotent per attempt), so the worker's report
//! reaches the new owner and the step runs once. Every node runs the expiry sweep; the queue
//! hands each expired task to one of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::StepResult;
use serde_json::{Map, Value};
use tracing::{debug, warn};

use crate::engine::Inner;
use crate::executor::{ExecError, ExecOutput, Executor, StopSignal, Task};
pub use crate::queue::{
    HeartbeatAnswer, MemoryQueue, RemoteError, Stopped, TaskLease, TaskQueue, WorkerInfo,
};

/// The default lease: a worker that does not heartbeat within this long loses the task.
pub const DEFAULT_LEASE_MS: u64 = 30_000;

/// Told once the plan's log holds an outcome (or why it does not).
pub(crate) type Ack = tokio::sync::oneshot::Sender<Result<(), String>>;

/// The longest a worker's report waits for its outcome to be recorded.
const RECORD_WAIT: Duration = Duration::from_secs(30);

/// The remote-worker side of an engine: a [`TaskQueue`] plus the engine it reports to. Cheap to
/// clone; every clone is the same queue. Give the same value to `EngineOptions::remote` (which
/// links it to the engine) and to the front end that serves workers.
#[derive(Clone)]
pub struct RemoteQueue {
    queue: Arc<dyn TaskQueue>,
    /// The engine results are reported to, set when the engine opens.
    engine: Arc<OnceLock<Weak<Inner>>>,
    /// The stop signals of tasks this process enqueued, by task id: a heartbeat sees a stop
    /// the moment the plan sends it, before the queue has heard of it.
    signals: Arc<Mutex<HashMap<String, StopSignal>>>,
    /// How long a task may be gone from the queue, its attempt still waiting for the result,
    /// before the attempt fails as lost.
    lost_after: Duration,
}

impl std::fmt::Debug for RemoteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteQueue")
            .field("lease_ms", &self.lease_ms())
            .finish_non_exhaustive()
    }
}

impl Default for RemoteQueue {
    fn default() -> Self {
        RemoteQueue::new(DEFAULT_LEASE_MS)
    }
}

impl RemoteQueue {
    /// An in-memory queue ([`MemoryQueue`]) whose leases last `lease_ms` (at least 1 ms).
    pub fn new(lease_ms: u64) -> RemoteQueue {
        RemoteQueue::with_queue(Arc::new(MemoryQueue::new(lease_ms)))
    }

    /// Over any [`TaskQueue`] implementation.
    pub fn with_queue(queue: Arc<dyn TaskQueue>) -> RemoteQueue {
        RemoteQueue {
            queue,
            engine: Arc::new(OnceLock::new()),
            signals: Arc::new(Mutex::new(HashMap::new())),
            lost_after: RECORD_WAIT,
        }
    }

    /// How long a task may be gone from the queue while its attempt still waits for a result
    /// before the attempt fails retryably as lost (default 30 s, the longest a report waits to
    /// be recorded, so a report on its way is never overtaken). A task leaves the queue without
    /// its result reaching the plan when the node that expired it died before delivering the
    /// expiry.
    pub fn lost_after(mut self, after: Duration) -> RemoteQueue {
        self.lost_after = after;
        self
    }

    /// The queue itself.
    pub fn queue(&self) -> &Arc<dyn TaskQueue> {
        &self.queue
    }

    pub fn lease_ms(&self) -> u64 {
        self.queue.lease_ms()
    }

    fn signals(&self) -> std::sync::MutexGuard<'_, HashMap<String, StopSignal>> {
        self.signals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Resolves once the task has been gone from the queue for `lost_after` (looking every
    /// lease, 1 to 30 s, or sooner when `lost_after` is shorter).
    async fn lost(&self, task_id: &str) {
        let period = Duration::from_millis(self.lease_ms())
            .clamp(Duration::from_secs(1), Duration::from_secs(30))
            .min(self.lost_after)
            .max(Duration::from_millis(10));
        let mut gone_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(period).await;
            match self.queue.is_live(task_id).await {
                Ok(true) => gone_since = None,
                Ok(false) => {
                    let since = *gone_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= self.lost_after {
                        return;
                    }
                }
                Err(e) => debug!(%task_id, error = %e, "cannot look for a task"),
            }
        }
    }

    /// Whether this process's plan asked the task's attempt to stop.
    fn stopped_here(&self, task_id: &str) -> bool {
        self.signals()
            .get(task_id)
            .is_some_and(StopSignal::is_stopped)
    }

    /// Links the queue to the engine that reports results (once; later calls are ignored).
    pub(crate) fn attach(&self, inner: Weak<Inner>) {
        let _ = self.engine.set(inner);
    }

    /// Tasks of `agent_type` waiting for a worker.
    pub async fn queued(&self, agent_type: &str) -> usize {
        self.queued_by_type()
            .await
            .into_iter()
            .find(|(t, _)| t == agent_type)
            .map_or(0, |(_, n)| n)
    }

    /// Tasks waiting for a worker, by agent type. Empty when the queue cannot answer.
    pub async fn queued_by_type(&self) -> Vec<(String, usize)> {
        self.queue.queued_by_type().await.unwrap_or_else(|e| {
            warn!(error = %e, "cannot count queued tasks");
            Vec::new()
        })
    }

    /// Tasks handed out and not reported yet.
    pub async fn leased(&self) -> usize {
        self.workers().await.iter().map(|w| w.tasks.len()).sum()
    }

    /// The workers the queue has seen polling (through any node, for a shared queue), with the
    /// tasks each holds; sorted by id. Empty when the queue cannot answer.
    pub async fn workers(&self) -> Vec<WorkerInfo> {
        self.queue.workers().await.unwrap_or_else(|e| {
            warn!(error = %e, "cannot list workers");
            Vec::new()
        })
    }

    /// Has any worker polled for `agent_type`?
    pub async fn has_worker_for(&self, agent_type: &str) -> bool {
        self.workers()
            .await
            .iter()
            .any(|w| w.agent_types.iter().any(|t| t == agent_type))
    }

    /// Takes back a task handed to a worker that never got it (its claim could not be
    /// recorded): it waits for a worker again, or, if the plan stopped it meanwhile, its
    /// attempt ends as a stopped one.
    pub async fn unclaim(&self, task_id: &str) {
        if self.stopped_here(task_id) {
            let _ = self.queue.stop(task_id).await;
        }
        match self.queue.unclaim(task_id).await {
            Ok(Some(task)) => {
                let result = StepResult::Failed {
                    error: "stopped before a worker took it".into(),
                    retryable: true,
                };
                let _ = self.report(task, result, false).await;
            }
            Ok(None) => {}
            Err(e) => warn!(%task_id, error = %e, "cannot put a task back"),
        }
    }

    /// Takes back a task handed to a worker whose claim the plan refused with `error`. When
    /// the refusal says the attempt no longer waits for a worker (the plan is gone, or the
    /// attempt ended, was recovered as interrupted, or has a claim recorded already), the task
    /// is dropped and its attempt, if still live, fails retryably: put back, it would be handed
    /// out and refused over and over (a task left behind by a node that stopped driving its
    /// plan is such a one). Any other refusal puts it back ([`RemoteQueue::unclaim`]).
    pub async fn refused(&self, task_id: &str, error: &crate::EngineError) {
        let not_waiting = matches!(error, crate::EngineError::PlanNotFound(_))
            || error.refusal_kind() == Some(cairn_core::RefusalKind::Conflict);
        if not_waiting {
            if let Err(e) = self.queue.stop(task_id).await {
                warn!(%task_id, error = %e, "cannot drop a task whose claim was refused");
            }
        }
        self.unclaim(task_id).await;
    }

    /// Wakes every long-poll and makes polls answer `None` from now on (server shutdown).
    /// Tasks already handed out may still be reported.
    pub fn close(&self) {
        self.queue.close();
    }

    /// Hands the oldest queued task of `agent_types` to `worker_id`, waiting up to `wait` for
    /// one. `None` when none came (or the queue cannot answer).
    pub async fn poll(
        &self,
        worker_id: &str,
        agent_types: &[String],
        wait: Duration,
    ) -> Option<TaskLease> {
        self.poll_plans(worker_id, agent_types, None, wait).await
    }

    /// [`RemoteQueue::poll`], only of tasks of the plans `plan_ids` names when it names some.
    pub async fn poll_plans(
        &self,
        worker_id: &str,
        agent_types: &[String],
        plan_ids: Option<&[String]>,
        wait: Duration,
    ) -> Option<TaskLease> {
        self.queue
            .claim_of_plans(worker_id, agent_types, plan_ids, wait)
            .await
            .unwrap_or_else(|e| {
                warn!(error = %e, "cannot claim a task");
                None
            })
    }

    /// Extends the lease; says whether the plan asked the attempt to stop.
    pub async fn heartbeat(
        &self,
        task_id: &str,
        worker_id: &str,
    ) -> Result<HeartbeatAnswer, RemoteError> {
        let mut answer = self.queue.heartbeat(task_id, worker_id).await?;
        answer.stop |= self.stopped_here(task_id);
        Ok(answer)
    }

    /// The worker finished the task. The answer does not wait for the plan to record it; see
    /// [`RemoteQueue::complete_recorded`].
    pub async fn complete(
        &self,
        task_id: &str,
        worker_id: &str,
        output: Value,
        scores: Option<Map<String, Value>>,
    ) -> Result<(), RemoteError> {
        let task = self.queue.complete(task_id, worker_id).await?;
        self.report(task, StepResult::Completed { output, scores }, false)
            .await
    }

    /// The worker failed the task; `retryable: false` when trying again cannot help.
    pub async fn fail(
        &self,
        task_id: &str,
        worker_id: &str,
        error: String,
        retryable: bool,
    ) -> Result<(), RemoteError> {
        let task = self.queue.fail(task_id, worker_id).await?;
        self.report(task, StepResult::Failed { error, retryable }, false)
            .await
    }

    /// Like [`RemoteQueue::complete`], answering once the outcome is durable in the plan's log:
    /// an answered report survives a crash. A plan that is gone leaves the task unknown.
    pub async fn complete_recorded(
        &self,
        task_id: &str,
        worker_id: &str,
        output: Value,
        scores: Option<Map<String, Value>>,
    ) -> Result<(), RemoteError> {
        let task = self.queue.complete(task_id, worker_id).await?;
        let result = StepResult::Completed { output, scores };
        self.report_recorded(task_id, task, result).await
    }

    /// Like [`RemoteQueue::fail`], answering once the outcome is durable in the plan's log.
    pub async fn fail_recorded(
        &self,
        task_id: &str,
        worker_id: &str,
        error: String,
        retryable: bool,
    ) -> Result<(), RemoteError> {
        let task = self.queue.fail(task_id, worker_id).await?;
        let result = StepResult::Failed { error, retryable };
        self.report_recorded(task_id, task, result).await
    }

    async fn report_recorded(
        &self,
        task_id: &str,
        task: Task,
        result: StepResult,
    ) -> Result<(), RemoteError> {
        match tokio::time::timeout(RECORD_WAIT, self.report(task, result, true)).await {
            Ok(Err(RemoteError::UnknownTask(_))) => {
                Err(RemoteError::UnknownTask(task_id.to_owned()))
            }
            Ok(Err(RemoteError::NotRecorded { reason, .. })) => Err(RemoteError::NotRecorded {
                task_id: task_id.to_owned(),
                reason,
            }),
            Ok(other) => other,
            Err(_) => Err(RemoteError::NotRecorded {
                task_id: task_id.to_owned(),
                reason: format!("not recorded within {} s", RECORD_WAIT.as_secs()),
            }),
        }
    }

    /// Hands an attempt's result to its plan through the engine; with `wait`, answers once it
    /// is committed.
    async fn report(&self, task: Task, result: StepResult, wait: bool) -> Result<(), RemoteError> {
        let not_recorded = |reason: String| RemoteError::NotRecorded {
            task_id: task.idempotency_key.clone(),
            reason,
        };
        let Some(inner) = self.engine.get().and_then(Weak::upgrade) else {
            return Err(not_recorded("no engine takes results".into()));
        };
        let engine = crate::Engine::from_inner(inner);
        let (ack, recorded) = tokio::sync::oneshot::channel();
        let delivered = engine
            .deliver_outcome(&task.plan_id, task.attempt_id(), result, Some(ack))
            .await;
        match delivered {
            Ok(()) => {}
            Err(crate::EngineError::PlanNotFound(_)) => {
                return Err(RemoteError::UnknownTask(task.idempotency_key.clone()))
            }
            Err(e) => return Err(not_recorded(e.to_string())),
        }
        if !wait {
            return Ok(());
        }
        match recorded.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(not_recorded(reason)),
            // The outcome was dropped unrecorded: its plan stopped being driven (deleted).
            Err(_) => Err(RemoteError::UnknownTask(task.idempotency_key.clone())),
        }
    }
}

/// Fails the attempts of claims whose lease ran out, every quarter lease (5 ms to 1 s), until
/// the engine is gone. A queue shared by several nodes hands each expired task to one of them,
/// so a failure that could not be delivered (the plan's owner did not answer) is kept and
/// delivered again on the next sweeps: no other node will.
pub(crate) async fn sweep(remote: RemoteQueue) {
    let period = Duration::from_millis(remote.lease_ms() / 4)
        .clamp(Duration::from_millis(5), Duration::from_secs(1));
    let mut undelivered: Vec<Task> = Vec::new();
    loop {
        tokio::time::sleep(period).await;
        if remote.engine.get().and_then(Weak::upgrade).is_none() {
            return;
        }
        let mut due = std::mem::take(&mut undelivered);
        match remote.queue.expire().await {
            Ok(expired) => due.extend(expired),
            Err(e) => warn!(error = %e, "cannot expire task leases"),
        }
        for task in due {
            debug!(plan_id = %task.plan_id, step_id = %task.step_id, attempt = task.attempt, "worker lease expired");
            let result = StepResult::Failed {
                error: "worker lease expired".into(),
                retryable: true,
            };
            match remote.report(task.clone(), result, false).await {
                Ok(()) => {}
                // The plan is gone: nothing waits for this attempt.
                Err(RemoteError::UnknownTask(_)) => {}
                Err(e) => {
                    warn!(plan_id = %task.plan_id, step_id = %task.step_id, attempt = task.attempt, error = %e, "the expiry of a task was not delivered; trying again");
                    undelivered.push(task);
                }
            }
        }
    }
}

/// The [`Executor`] of agent types served by remote workers: enqueues the attempt's task and
/// watches it until the attempt's outcome is durable. It never carries the result: that goes
/// from the worker's report through the engine to the plan. What it answers itself is only an
/// attempt stopped before a worker took it, or a queue that refused the task.
pub(crate) struct QueueExecutor {
    remote: RemoteQueue,
}

impl QueueExecutor {
    pub(crate) fn new(remote: &RemoteQueue) -> QueueExecutor {
        QueueExecutor {
            remote: remote.clone(),
        }
    }
}

/// Removes the task when the attempt ends another way (a step timeout drops the future, or the
/// plan stopped it), and its stop signal when the attempt ends at all.
///
/// An attempt released without a stop keeps its task (`keep`): either its outcome came through
/// the engine (the report ended the task already), or its plan is no longer driven here (this
/// node lost the plan's lease, or shuts down). In the second case the plan's next owner sends
/// the attempt again, which answers the same live task, so a worker still running it reports
/// to whichever node and the result reaches the new owner.
struct Guard {
    remote: RemoteQueue,
    task_id: String,
    keep: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.remote.signals().remove(&self.task_id);
        if self.keep {
            return;
        }
        let queue = self.remote.queue.clone();
        let task_id = std::mem::take(&mut self.task_id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = queue.remove(&task_id).await;
            });
        }
    }
}

#[async_trait]
impl Executor for QueueExecutor {
    async fn execute(&self, task: Task, mut stop: StopSignal) -> Result<ExecOutput, ExecError> {
        if stop.is_stopped() {
            return Err(ExecError::retryable("stopped before a worker took it"));
        }
        let queue = &self.remote.queue;
        let task_id = queue
            .enqueue(task)
            .await
            .map_err(|e| ExecError::retryable(e.to_string()))?;
        self.remote.signals().insert(task_id.clone(), stop.clone());
        let mut guard = Guard {
            remote: self.remote.clone(),
            task_id: task_id.clone(),
            keep: false,
        };
        // Until asked to stop; then until the attempt is no longer tracked. Or until the task
        // left the queue and its result never came: the attempt fails retryably.
        let stopped = tokio::select! {
            stopped = stop.ended() => stopped,
            () = self.remote.lost(&task_id) => {
                warn!(%task_id, "a task left the queue but its result never reached the plan");
                return Err(ExecError::retryable(
                    "the task left the queue but its result never came",
                ));
            }
        };
        if !stopped {
            guard.keep = true;
        } else {
            match queue.stop(&task_id).await {
                Ok(Stopped::Dropped(_)) => {
                    return Err(ExecError::retryable("stopped before a worker took it"))
                }
                // A worker holds it (its heartbeat says stop) or has reported: its result
                // comes through the engine.
                Ok(Stopped::Flagged | Stopped::Gone) => {}
                Err(e) => warn!(%task_id, error = %e, "cannot stop a task"),
            }
            stop.released().await;
        }
        // The attempt's outcome is durable (or its plan is no longer driven here): the
        // engine sends nothing for this answer.
        Err(ExecError::retryable("reported through the engine"))
    }
}
