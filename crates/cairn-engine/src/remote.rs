//! Remote workers: a [`RemoteQueue`] is the [`Executor`] of every agent type that has
//! no local executor when a server runs. `execute` queues the attempt per agent type and waits;
//! workers long-poll for tasks ([`RemoteQueue::poll`]), hold a lease by heartbeat
//! ([`RemoteQueue::heartbeat`]) and report [`RemoteQueue::complete`] or [`RemoteQueue::fail`].
//!
//! A lease that is not renewed within `lease_ms` fails the attempt retryably ("worker lease
//! expired"), so the step's retry policy decides whether it is handed out again (same idempotency
//! key, next attempt number). A stop (cancel, immediate pause, rerun) drops a queued attempt at
//! once and is told to the worker holding a leased one in its next heartbeat answer. Late reports
//! for an attempt that is no longer waiting are refused as unknown.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

use crate::executor::{ExecError, ExecOutput, Executor, StopSignal, Task};

/// The default lease: a worker that does not heartbeat within this long loses the task.
pub const DEFAULT_LEASE_MS: u64 = 30_000;

/// A task as handed to a worker: the [`Task`] fields plus the task id and the lease.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct TaskLease {
    pub task_id: String,
    #[serde(flatten)]
    pub task: Task,
    /// Heartbeat more often than this (a third of it is a good period).
    pub lease_ms: u64,
}

/// What a heartbeat answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct HeartbeatAnswer {
    pub lease_ms: u64,
    /// The plan no longer wants this attempt: stop working and report `fail`.
    pub stop: bool,
}

/// Why a worker's call about a task was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// No such task is waiting: never handed out, already reported, stopped, or its lease
    /// expired.
    #[error("task {0} is unknown, already reported, or its lease expired")]
    UnknownTask(String),
    /// Another worker holds the task.
    #[error("task {task_id} is leased to another worker, not {worker_id}")]
    WrongWorker { task_id: String, worker_id: String },
    /// The report was taken but its plan could not record it (the store failed, or did not
    /// answer in time). The worker may report again only if the task is handed out again.
    #[error("the result of task {task_id} could not be recorded: {reason}")]
    NotRecorded { task_id: String, reason: String },
}

type Reply = Result<ExecOutput, ExecError>;

/// Told once the plan's log holds the outcome of a reported task (or why it does not).
pub(crate) type Ack = oneshot::Sender<Result<(), String>>;

/// The longest a worker's report waits for its outcome to be recorded.
const RECORD_WAIT: Duration = Duration::from_secs(30);

struct Entry {
    task: Task,
    /// Order of arrival, to hand out the oldest first across agent types.
    seq: u64,
    /// `None` while queued.
    worker: Option<String>,
    /// The lease deadline, watched by the waiting `execute`.
    deadline: watch::Sender<Option<Instant>>,
    stop: bool,
    /// The attempt's own signal, so a heartbeat sees a stop the moment the engine sends it.
    signal: StopSignal,
    reply: Option<oneshot::Sender<Reply>>,
}

pub use cairn_core::view::WorkerInfo;

#[derive(Default)]
struct State {
    tasks: HashMap<String, Entry>,
    /// Workers seen polling: id → (agent types, last poll in µs).
    workers: HashMap<String, (Vec<String>, i64)>,
    /// agent type → seq → task id, of tasks not handed out yet.
    queued: HashMap<String, BTreeMap<u64, String>>,
    next_seq: u64,
    /// Reports waiting for their outcome to be durable, by (idempotency key, attempt): the
    /// plan's actor takes the ack with the outcome and answers it after the commit.
    acks: HashMap<(String, u32), Ack>,
}

struct Shared {
    lease: Duration,
    state: Mutex<State>,
    /// Woken when a task is queued (or the queue closes).
    arrived: Notify,
    closed: AtomicBool,
}

/// The remote task queue. Cheap to clone; every clone is the same queue.
#[derive(Clone)]
pub struct RemoteQueue {
    shared: Arc<Shared>,
}

impl fmt::Debug for RemoteQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
    /// A queue whose leases last `lease_ms` (at least 1 ms) without a heartbeat.
    pub fn new(lease_ms: u64) -> RemoteQueue {
        RemoteQueue {
            shared: Arc::new(Shared {
                lease: Duration::from_millis(lease_ms.max(1)),
                state: Mutex::new(State::default()),
                arrived: Notify::new(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    pub fn lease_ms(&self) -> u64 {
        self.shared.lease.as_millis() as u64
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than refusing every later call would; keep going.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Tasks of `agent_type` waiting for a worker.
    pub fn queued(&self, agent_type: &str) -> usize {
        self.state().queued.get(agent_type).map_or(0, BTreeMap::len)
    }

    /// Tasks waiting for a worker, by agent type (types ever queued, zeros included).
    pub fn queued_by_type(&self) -> Vec<(String, usize)> {
        self.state()
            .queued
            .iter()
            .map(|(t, q)| (t.clone(), q.len()))
            .collect()
    }

    /// Tasks handed out and not reported yet.
    pub fn leased(&self) -> usize {
        self.state()
            .tasks
            .values()
            .filter(|e| e.worker.is_some())
            .count()
    }

    /// The workers seen polling since the queue started, with the tasks each holds; sorted by id.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let st = self.state();
        let mut out: Vec<WorkerInfo> = st
            .workers
            .iter()
            .map(|(id, (types, at))| {
                let mut tasks: Vec<String> = st
                    .tasks
                    .iter()
                    .filter(|(_, e)| e.worker.as_deref() == Some(id.as_str()))
                    .map(|(t, _)| t.clone())
                    .collect();
                tasks.sort();
                WorkerInfo {
                    worker_id: id.clone(),
                    agent_types: types.clone(),
                    last_poll_at: cairn_core::Timestamp::from_micros(*at),
                    tasks,
                }
            })
            .collect();
        out.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        out
    }

    /// Has any worker polled for `agent_type`?
    pub fn has_worker_for(&self, agent_type: &str) -> bool {
        self.state()
            .workers
            .values()
            .any(|(types, _)| types.iter().any(|t| t == agent_type))
    }

    /// Takes back a task handed to a worker that never got it (its claim could not be
    /// recorded): it waits for a worker again, or ends at once if the plan stopped it meanwhile.
    pub fn unclaim(&self, task_id: &str) {
        let mut st = self.state();
        let Some(entry) = st.tasks.get_mut(task_id) else {
            return;
        };
        if entry.stop || entry.signal.is_stopped() {
            if let Some(tx) = entry.reply.take() {
                let _ = tx.send(Err(ExecError::retryable("stopped before a worker took it")));
            }
            return;
        }
        entry.worker = None;
        entry.deadline.send_replace(None);
        let (agent_type, seq) = (entry.task.agent_type.clone(), entry.seq);
        st.queued
            .entry(agent_type)
            .or_default()
            .insert(seq, task_id.to_owned());
        drop(st);
        self.shared.arrived.notify_waiters();
    }

    /// Wakes every long-poll and makes polls answer `None` from now on (server shutdown).
    /// Tasks already handed out may still be reported.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.arrived.notify_waiters();
    }

    /// Hands the oldest queued task of `agent_types` to `worker_id`, waiting up to `wait` for one.
    pub async fn poll(
        &self,
        worker_id: &str,
        agent_types: &[String],
        wait: Duration,
    ) -> Option<TaskLease> {
        let until = Instant::now() + wait;
        self.state().workers.insert(
            worker_id.to_owned(),
            (agent_types.to_vec(), crate::engine::now_micros()),
        );
        loop {
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            // Register before looking, so a task queued in between still wakes us.
            arrived.as_mut().enable();
            if self.shared.closed.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(lease) = self.take(worker_id, agent_types) {
                return Some(lease);
            }
            tokio::select! {
                _ = &mut arrived => {}
                _ = tokio::time::sleep_until(until) => return None,
            }
        }
    }

    fn take(&self, worker_id: &str, agent_types: &[String]) -> Option<TaskLease> {
        let mut st = self.state();
        let (agent_type, seq) = agent_types
            .iter()
            .filter_map(|t| {
                let first = st.queued.get(t)?.keys().next()?;
                Some((t.clone(), *first))
            })
            .min_by_key(|(_, seq)| *seq)?;
        let queue = st.queued.get_mut(&agent_type)?;
        let task_id = queue.remove(&seq)?;
        if queue.is_empty() {
            st.queued.remove(&agent_type);
        }
        let entry = st.tasks.get_mut(&task_id)?;
        entry.worker = Some(worker_id.to_owned());
        entry
            .deadline
            .send_replace(Some(Instant::now() + self.shared.lease));
        Some(TaskLease {
            task_id,
            task: entry.task.clone(),
            lease_ms: self.lease_ms(),
        })
    }

    /// The entry of a live lease held by `worker_id`.
    fn held<'a>(
        st: &'a mut State,
        task_id: &str,
        worker_id: &str,
    ) -> Result<&'a mut Entry, RemoteError> {
        let entry = st
            .tasks
            .get_mut(task_id)
            .filter(|e| e.worker.is_some())
            .ok_or_else(|| RemoteError::UnknownTask(task_id.to_owned()))?;
        if entry.worker.as_deref() != Some(worker_id) {
            return Err(RemoteError::WrongWorker {
                task_id: task_id.to_owned(),
                worker_id: worker_id.to_owned(),
            });
        }
        // An expired lease whose `execute` has not noticed yet is as good as gone.
        if entry.deadline.borrow().is_some_and(|d| d <= Instant::now()) {
            return Err(RemoteError::UnknownTask(task_id.to_owned()));
        }
        Ok(entry)
    }

    /// Extends the lease; says whether the plan asked the attempt to stop.
    pub fn heartbeat(
        &self,
        task_id: &str,
        worker_id: &str,
    ) -> Result<HeartbeatAnswer, RemoteError> {
        let mut st = self.state();
        let entry = Self::held(&mut st, task_id, worker_id)?;
        entry
            .deadline
            .send_replace(Some(Instant::now() + self.shared.lease));
        Ok(HeartbeatAnswer {
            lease_ms: self.lease_ms(),
            stop: entry.stop || entry.signal.is_stopped(),
        })
    }

    fn resolve(
        &self,
        task_id: &str,
        worker_id: &str,
        reply: Reply,
        ack: Option<Ack>,
    ) -> Result<(), RemoteError> {
        let mut st = self.state();
        Self::held(&mut st, task_id, worker_id)?;
        if let Some(mut entry) = st.tasks.remove(task_id) {
            if let Some(ack) = ack {
                st.acks.insert(
                    (entry.task.idempotency_key.clone(), entry.task.attempt),
                    ack,
                );
            }
            if let Some(tx) = entry.reply.take() {
                let _ = tx.send(reply);
            }
        }
        Ok(())
    }

    /// Reports `reply` and waits until the plan's log holds the outcome: an answered report
    /// survives a crash. A plan that is gone (deleted) leaves the task unknown.
    async fn resolve_recorded(
        &self,
        task_id: &str,
        worker_id: &str,
        reply: Reply,
    ) -> Result<(), RemoteError> {
        let (ack, recorded) = oneshot::channel();
        self.resolve(task_id, worker_id, reply, Some(ack))?;
        match tokio::time::timeout(RECORD_WAIT, recorded).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(reason))) => Err(RemoteError::NotRecorded {
                task_id: task_id.to_owned(),
                reason,
            }),
            // The outcome was dropped unrecorded: its plan stopped being driven (deleted).
            Ok(Err(_)) => Err(RemoteError::UnknownTask(task_id.to_owned())),
            Err(_) => Err(RemoteError::NotRecorded {
                task_id: task_id.to_owned(),
                reason: format!("not recorded within {} s", RECORD_WAIT.as_secs()),
            }),
        }
    }

    /// The ack waiting for the outcome of attempt `attempt` of `idempotency_key`, if a report
    /// waits for it.
    pub(crate) fn take_ack(&self, idempotency_key: &str, attempt: u32) -> Option<Ack> {
        let mut st = self.state();
        if st.acks.is_empty() {
            return None;
        }
        st.acks.remove(&(idempotency_key.to_owned(), attempt))
    }

    /// The worker finished the task (the answer does not wait for the plan to record it; see
    /// [`RemoteQueue::complete_recorded`]).
    pub fn complete(
        &self,
        task_id: &str,
        worker_id: &str,
        output: Value,
        scores: Option<Map<String, Value>>,
    ) -> Result<(), RemoteError> {
        self.resolve(task_id, worker_id, Ok(ExecOutput { output, scores }), None)
    }

    /// The worker failed the task; `retryable: false` when trying again cannot help.
    pub fn fail(
        &self,
        task_id: &str,
        worker_id: &str,
        error: String,
        retryable: bool,
    ) -> Result<(), RemoteError> {
        self.resolve(
            task_id,
            worker_id,
            Err(ExecError {
                message: error,
                retryable,
            }),
            None,
        )
    }

    /// Like [`RemoteQueue::complete`], answering once the outcome is durable in the plan's log.
    pub async fn complete_recorded(
        &self,
        task_id: &str,
        worker_id: &str,
        output: Value,
        scores: Option<Map<String, Value>>,
    ) -> Result<(), RemoteError> {
        self.resolve_recorded(task_id, worker_id, Ok(ExecOutput { output, scores }))
            .await
    }

    /// Like [`RemoteQueue::fail`], answering once the outcome is durable in the plan's log.
    pub async fn fail_recorded(
        &self,
        task_id: &str,
        worker_id: &str,
        error: String,
        retryable: bool,
    ) -> Result<(), RemoteError> {
        self.resolve_recorded(
            task_id,
            worker_id,
            Err(ExecError {
                message: error,
                retryable,
            }),
        )
        .await
    }

    fn enqueue(
        &self,
        task: Task,
        signal: StopSignal,
    ) -> (
        String,
        oneshot::Receiver<Reply>,
        watch::Receiver<Option<Instant>>,
    ) {
        let task_id = format!("task_{}", uuid::Uuid::now_v7().simple());
        let (reply, reply_rx) = oneshot::channel();
        let (deadline, deadline_rx) = watch::channel(None);
        let mut st = self.state();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.queued
            .entry(task.agent_type.clone())
            .or_default()
            .insert(seq, task_id.clone());
        st.tasks.insert(
            task_id.clone(),
            Entry {
                task,
                seq,
                worker: None,
                deadline,
                stop: false,
                signal,
                reply: Some(reply),
            },
        );
        drop(st);
        self.shared.arrived.notify_waiters();
        (task_id, reply_rx, deadline_rx)
    }

    /// Removes a task wherever it is.
    fn remove(&self, task_id: &str) {
        let mut st = self.state();
        if let Some(entry) = st.tasks.remove(task_id) {
            if let Some(queue) = st.queued.get_mut(&entry.task.agent_type) {
                queue.remove(&entry.seq);
                if queue.is_empty() {
                    st.queued.remove(&entry.task.agent_type);
                }
            }
        }
    }

    /// The attempt was asked to stop: true when it was still queued (and is now dropped);
    /// otherwise the holder hears of it in its next heartbeat.
    fn stop(&self, task_id: &str) -> bool {
        let queued = {
            let mut st = self.state();
            match st.tasks.get_mut(task_id) {
                None => return true,
                Some(e) if e.worker.is_none() => true,
                Some(e) => {
                    e.stop = true;
                    false
                }
            }
        };
        if queued {
            self.remove(task_id);
        }
        queued
    }

    /// True (and the task removed) when the lease has really run out.
    fn expire_if_due(&self, task_id: &str) -> bool {
        let due = {
            let st = self.state();
            match st.tasks.get(task_id) {
                None => true,
                Some(e) => e.deadline.borrow().is_some_and(|d| d <= Instant::now()),
            }
        };
        if due {
            self.remove(task_id);
        }
        due
    }
}

/// Removes the task when `execute` ends or is dropped (step timeout, engine shutdown).
struct Guard<'a> {
    queue: &'a RemoteQueue,
    task_id: String,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.queue.remove(&self.task_id);
    }
}

#[async_trait]
impl Executor for RemoteQueue {
    async fn execute(&self, task: Task, mut stop: StopSignal) -> Result<ExecOutput, ExecError> {
        if stop.is_stopped() {
            return Err(ExecError::retryable("stopped before a worker took it"));
        }
        let (task_id, mut reply, mut deadline) = self.enqueue(task, stop.clone());
        let _guard = Guard {
            queue: self,
            task_id: task_id.clone(),
        };
        let mut stop_seen = false;
        loop {
            let due = *deadline.borrow_and_update();
            tokio::select! {
                biased;
                r = &mut reply => {
                    return r.unwrap_or_else(|_| Err(ExecError::retryable("the remote task was dropped")));
                }
                _ = stop.stopped(), if !stop_seen => {
                    stop_seen = true;
                    if self.stop(&task_id) {
                        return Err(ExecError::retryable("stopped before a worker took it"));
                    }
                }
                changed = deadline.changed() => {
                    if changed.is_err() {
                        // The entry is gone without a reply (cannot happen while we hold the
                        // guard, but never spin on it).
                        return Err(ExecError::retryable("the remote task was dropped"));
                    }
                }
                _ = sleep_until_opt(due) => {
                    if self.expire_if_due(&task_id) {
                        return Err(ExecError::retryable("worker lease expired"));
                    }
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(agent_type: &str, attempt: u32) -> Task {
        Task {
            plan_id: "p".into(),
            step_id: "s".into(),
            action: "search".into(),
            agent_type: agent_type.into(),
            params: json!({"q": 1}),
            attempt,
            run: 1,
            idempotency_key: "p/s/1".into(),
            timeout_ms: None,
            query: "q".into(),
            gate_feedback: None,
        }
    }

    fn types(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn poll_hands_out_queued_task_and_complete_resolves() {
        let q = RemoteQueue::new(30_000);
        let q2 = q.clone();
        let exec =
            tokio::spawn(async move { q2.execute(task("research", 1), StopSignal::never()).await });
        let lease = q
            .poll(
                "w1",
                &types(&["other", "research"]),
                Duration::from_secs(10),
            )
            .await
            .expect("a task");
        assert_eq!(lease.task.agent_type, "research");
        assert_eq!(lease.lease_ms, 30_000);
        assert_eq!(q.queued("research"), 0);
        let v = serde_json::to_value(&lease).unwrap();
        for k in [
            "task_id",
            "plan_id",
            "step_id",
            "action",
            "agent_type",
            "params",
            "attempt",
            "idempotency_key",
            "lease_ms",
            "run",
            "query",
        ] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        assert_eq!(
            q.complete(&lease.task_id, "w2", json!(1), None),
            Err(RemoteError::WrongWorker {
                task_id: lease.task_id.clone(),
                worker_id: "w2".into()
            })
        );
        let hb = q.heartbeat(&lease.task_id, "w1").unwrap();
        assert!(!hb.stop);
        q.complete(&lease.task_id, "w1", json!({"found": 3}), None)
            .unwrap();
        let out = exec.await.unwrap().unwrap();
        assert_eq!(out.output, json!({"found": 3}));
        assert!(matches!(
            q.complete(&lease.task_id, "w1", json!(1), None),
            Err(RemoteError::UnknownTask(_))
        ));
        assert_eq!(q.leased(), 0);
    }

    #[tokio::test]
    async fn long_poll_wakes_when_a_task_arrives() {
        let q = RemoteQueue::default();
        let q2 = q.clone();
        let poller = tokio::spawn(async move {
            q2.poll("w", &types(&["research"]), Duration::from_secs(60))
                .await
        });
        // The poller is waiting (nothing queued); now a task arrives.
        tokio::task::yield_now().await;
        let q3 = q.clone();
        let exec =
            tokio::spawn(async move { q3.execute(task("research", 1), StopSignal::never()).await });
        let lease = poller.await.unwrap().expect("woken with the task");
        q.fail(&lease.task_id, "w", "boom".into(), false).unwrap();
        let err = exec.await.unwrap().unwrap_err();
        assert_eq!(err, ExecError::fatal("boom"));
    }

    #[tokio::test]
    async fn poll_times_out_empty_and_close_wakes() {
        let q = RemoteQueue::default();
        assert!(q
            .poll("w", &types(&["research"]), Duration::from_millis(10))
            .await
            .is_none());
        let q2 = q.clone();
        let poller = tokio::spawn(async move {
            q2.poll("w", &types(&["research"]), Duration::from_secs(3600))
                .await
        });
        tokio::task::yield_now().await;
        q.close();
        assert!(poller.await.unwrap().is_none());
    }

    #[tokio::test]
    async fn lease_expiry_fails_retryably() {
        let q = RemoteQueue::new(50);
        let q2 = q.clone();
        let exec =
            tokio::spawn(async move { q2.execute(task("research", 1), StopSignal::never()).await });
        let lease = q
            .poll("w", &types(&["research"]), Duration::from_secs(10))
            .await
            .unwrap();
        let err = exec.await.unwrap().unwrap_err();
        assert_eq!(err, ExecError::retryable("worker lease expired"));
        assert!(matches!(
            q.heartbeat(&lease.task_id, "w"),
            Err(RemoteError::UnknownTask(_))
        ));
    }

    #[tokio::test]
    async fn stop_drops_queued_task_and_reaches_heartbeat_of_leased() {
        let q = RemoteQueue::default();
        let (tx, stop) = StopSignal::new();
        let q2 = q.clone();
        let exec = tokio::spawn(async move { q2.execute(task("research", 1), stop).await });
        while q.queued("research") == 0 {
            tokio::task::yield_now().await;
        }
        tx.send_replace(true);
        let err = exec.await.unwrap().unwrap_err();
        assert!(err.retryable && err.message.contains("stopped"));
        assert_eq!(q.queued("research"), 0);

        let (tx, stop) = StopSignal::new();
        let q2 = q.clone();
        let exec = tokio::spawn(async move { q2.execute(task("research", 2), stop).await });
        let lease = q
            .poll("w", &types(&["research"]), Duration::from_secs(10))
            .await
            .unwrap();
        assert!(!q.heartbeat(&lease.task_id, "w").unwrap().stop);
        tx.send_replace(true);
        let mut answer = q.heartbeat(&lease.task_id, "w").unwrap();
        while !answer.stop {
            tokio::task::yield_now().await;
            answer = q.heartbeat(&lease.task_id, "w").unwrap();
        }
        q.fail(&lease.task_id, "w", "stopped".into(), true).unwrap();
        assert!(exec.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn dropped_execute_removes_the_task() {
        let q = RemoteQueue::default();
        let q2 = q.clone();
        let exec =
            tokio::spawn(async move { q2.execute(task("research", 1), StopSignal::never()).await });
        while q.queued("research") == 0 {
            tokio::task::yield_now().await;
        }
        exec.abort();
        let _ = exec.await;
        assert_eq!(q.queued("research"), 0);
    }
}
