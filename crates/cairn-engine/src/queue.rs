//! The remote-worker task queue as a contract: [`TaskQueue`] (enqueue, claim, heartbeat,
//! complete, fail, expire, and the few calls around them), and [`MemoryQueue`], the in-process
//! implementation `cairn serve` uses.
//!
//! A queue only keeps tasks and their leases. It never hears an attempt's result: `complete`
//! and `fail` hand the claimed [`Task`] back to the caller, which reports the outcome to the
//! plan through the engine (`Engine::report_outcome`), so a queue kept in a database, on
//! another node or after a restart works the same as this one. Expiry is the same: `expire`
//! hands back the tasks whose lease ran out and the engine fails those attempts retryably, so
//! the step's retry policy runs them again under the same idempotency key.
//!
//! [`conformance`] holds the behaviour every implementation must show.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::AttemptKind;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::executor::Task;

pub mod conformance;

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

/// Why a call about a task was refused.
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
    /// The queue itself cannot be reached (a queue kept in a database that does not answer).
    #[error("task queue unavailable: {0}")]
    Unavailable(String),
}

/// What [`TaskQueue::stop`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Stopped {
    /// The task was still waiting for a worker: it is gone, and here it is.
    Dropped(Box<Task>),
    /// A worker holds it: its next heartbeat answers `stop: true`.
    Flagged,
    /// No such task (reported, expired or removed already).
    Gone,
}

/// The workers seen polling.
pub use cairn_core::view::WorkerInfo;

/// The remote-worker queue. Object safe: the engine holds an `Arc<dyn TaskQueue>`.
///
/// Semantics every implementation keeps (checked by [`conformance`]):
/// - a task is claimed by one worker at a time, the oldest first across the asked types;
/// - a claim's lease lasts `lease_ms()`; a heartbeat by the holder extends it; a lease that
///   ran out is as good as gone for its holder at once, and `expire` hands the task back (same
///   task, same idempotency key);
/// - heartbeat, complete and fail by anyone but the holder are refused (`WrongWorker`), and
///   about a task no one holds (`UnknownTask`); complete and fail end the task;
/// - one live task per attempt: enqueuing an attempt again answers its live task's id.
#[async_trait]
pub trait TaskQueue: Send + Sync + 'static {
    /// How long a claim lasts without a heartbeat.
    fn lease_ms(&self) -> u64;

    /// Queues an attempt's task for a worker of its agent type; answers the task id.
    ///
    /// Idempotent per attempt: while a task of the same attempt (plan, step, attempt kind,
    /// number and run) is queued or claimed, enqueuing it again queues nothing and answers that
    /// task's id. So a plan recovered elsewhere (its node died) that sends the attempt again
    /// waits for the task a worker may still be running, whose report then reaches it.
    async fn enqueue(&self, task: Task) -> Result<String, RemoteError>;

    /// Hands the oldest queued task of `agent_types` to `worker_id`, waiting up to `wait` for
    /// one (`None` when none came, or the queue closed). Remembers the worker as seen.
    async fn claim(
        &self,
        worker_id: &str,
        agent_types: &[String],
        wait: Duration,
    ) -> Result<Option<TaskLease>, RemoteError> {
        self.claim_of_plans(worker_id, agent_types, None, wait)
            .await
    }

    /// [`TaskQueue::claim`], only of tasks of the plans `plan_ids` names when it names some
    /// (`None`: of any plan): a worker that serves one plan's steps takes no other plan's.
    async fn claim_of_plans(
        &self,
        worker_id: &str,
        agent_types: &[String],
        plan_ids: Option<&[String]>,
        wait: Duration,
    ) -> Result<Option<TaskLease>, RemoteError>;

    /// Puts a claimed task back in the queue (its claim could not be recorded). A task the
    /// plan stopped meanwhile is dropped and handed back instead.
    async fn unclaim(&self, task_id: &str) -> Result<Option<Task>, RemoteError>;

    /// Extends the holder's lease; says whether the plan asked the attempt to stop.
    async fn heartbeat(
        &self,
        task_id: &str,
        worker_id: &str,
    ) -> Result<HeartbeatAnswer, RemoteError>;

    /// The holder finished the task: it leaves the queue, and its attempt is handed back for
    /// the caller to report the result.
    async fn complete(&self, task_id: &str, worker_id: &str) -> Result<Task, RemoteError>;

    /// The holder failed the task: as [`TaskQueue::complete`].
    async fn fail(&self, task_id: &str, worker_id: &str) -> Result<Task, RemoteError>;

    /// Removes every claimed task whose lease ran out and hands them back (their attempts are
    /// to be failed retryably).
    async fn expire(&self) -> Result<Vec<Task>, RemoteError>;

    /// The plan no longer wants the task's attempt.
    async fn stop(&self, task_id: &str) -> Result<Stopped, RemoteError>;

    /// Forgets a task wherever it is (its attempt ended another way: a step timeout).
    async fn remove(&self, task_id: &str) -> Result<(), RemoteError>;

    /// Whether the task is still queued or claimed (a claim whose lease ran out counts until
    /// `expire` hands it back).
    async fn is_live(&self, task_id: &str) -> Result<bool, RemoteError>;

    /// Makes claims answer `None` from now on and wakes the waiting ones (shutdown). Claimed
    /// tasks may still be reported.
    fn close(&self);

    /// The workers seen claiming, with the tasks each holds, sorted by id.
    async fn workers(&self) -> Result<Vec<WorkerInfo>, RemoteError>;

    /// Tasks waiting for a worker, by agent type.
    async fn queued_by_type(&self) -> Result<Vec<(String, usize)>, RemoteError>;
}

struct Entry {
    task: Task,
    /// Order of arrival, to hand out the oldest first across agent types.
    seq: u64,
    /// `None` while queued.
    worker: Option<String>,
    /// The lease deadline while claimed.
    deadline: Option<Instant>,
    stop: bool,
}

#[derive(Default)]
struct State {
    tasks: HashMap<String, Entry>,
    /// Workers seen polling: id → (agent types, last poll in µs).
    workers: HashMap<String, (Vec<String>, i64)>,
    /// agent type → seq → task id, of tasks not handed out yet.
    queued: HashMap<String, BTreeMap<u64, String>>,
    /// The live task of each attempt.
    by_attempt: HashMap<AttemptKey, String>,
    next_seq: u64,
}

/// What makes two tasks the same attempt: plan, step, attempt kind, number and run.
type AttemptKey = (String, String, AttemptKind, u32, u32);

fn attempt_key(task: &Task) -> AttemptKey {
    (
        task.plan_id.clone(),
        task.step_id.clone(),
        task.kind,
        task.attempt,
        task.run,
    )
}

impl State {
    /// Removes a task wherever it is.
    fn forget(&mut self, task_id: &str) -> Option<Entry> {
        let entry = self.tasks.remove(task_id)?;
        self.unqueue(&entry.task.agent_type, entry.seq);
        self.by_attempt.remove(&attempt_key(&entry.task));
        Some(entry)
    }

    fn unqueue(&mut self, entry_type: &str, seq: u64) {
        if let Some(queue) = self.queued.get_mut(entry_type) {
            queue.remove(&seq);
            if queue.is_empty() {
                self.queued.remove(entry_type);
            }
        }
    }

    /// The entry of a live lease held by `worker_id`.
    fn held(&mut self, task_id: &str, worker_id: &str) -> Result<&mut Entry, RemoteError> {
        let entry = self
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
        // An expired lease that `expire` has not swept yet is as good as gone.
        if entry.deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(RemoteError::UnknownTask(task_id.to_owned()));
        }
        Ok(entry)
    }
}

/// When a claim that waits `wait` gives up (a wait too long to add to the clock waits a year:
/// longer than anything runs).
pub fn wait_until(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// The in-process [`TaskQueue`]: tasks per agent type in arrival order, leases on tokio's
/// clock, long polls woken by a `Notify`. Cheap to clone; every clone is the same queue.
#[derive(Clone)]
pub struct MemoryQueue {
    shared: Arc<Shared>,
}

struct Shared {
    lease: Duration,
    state: Mutex<State>,
    /// Woken when a task is queued (or the queue closes).
    arrived: Notify,
    closed: AtomicBool,
}

impl MemoryQueue {
    /// A queue whose leases last `lease_ms` (at least 1 ms) without a heartbeat.
    pub fn new(lease_ms: u64) -> MemoryQueue {
        MemoryQueue {
            shared: Arc::new(Shared {
                lease: Duration::from_millis(lease_ms.max(1)),
                state: Mutex::new(State::default()),
                arrived: Notify::new(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than refusing every later call would; keep going.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Tasks handed out and not reported yet.
    pub fn leased(&self) -> usize {
        self.state()
            .tasks
            .values()
            .filter(|e| e.worker.is_some())
            .count()
    }

    /// Tasks of `agent_type` waiting for a worker.
    pub fn queued(&self, agent_type: &str) -> usize {
        self.state().queued.get(agent_type).map_or(0, BTreeMap::len)
    }

    /// Tasks waiting for a worker, by agent type (types ever queued, zeros included).
    pub fn queued_now(&self) -> Vec<(String, usize)> {
        self.state()
            .queued
            .iter()
            .map(|(t, q)| (t.clone(), q.len()))
            .collect()
    }

    /// The workers seen polling since the queue started, with the tasks each holds.
    pub fn workers_now(&self) -> Vec<WorkerInfo> {
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

    fn take(
        &self,
        worker_id: &str,
        agent_types: &[String],
        plan_ids: Option<&[String]>,
    ) -> Option<TaskLease> {
        let mut st = self.state();
        let wanted = |task_id: &String| {
            plan_ids.is_none_or(|ids| {
                st.tasks
                    .get(task_id)
                    .is_some_and(|e| ids.contains(&e.task.plan_id))
            })
        };
        let (agent_type, seq) = agent_types
            .iter()
            .filter_map(|t| {
                let (first, _) = st.queued.get(t)?.iter().find(|(_, id)| wanted(id))?;
                Some((t.clone(), *first))
            })
            .min_by_key(|(_, seq)| *seq)?;
        let task_id = st.queued.get(&agent_type)?.get(&seq)?.clone();
        st.unqueue(&agent_type, seq);
        let lease = self.shared.lease;
        let entry = st.tasks.get_mut(&task_id)?;
        entry.worker = Some(worker_id.to_owned());
        entry.deadline = Some(Instant::now() + lease);
        Some(TaskLease {
            task_id,
            task: entry.task.clone(),
            lease_ms: self.lease_ms(),
        })
    }

    fn resolve(&self, task_id: &str, worker_id: &str) -> Result<Task, RemoteError> {
        let mut st = self.state();
        st.held(task_id, worker_id)?;
        st.forget(task_id)
            .map(|e| e.task)
            .ok_or_else(|| RemoteError::UnknownTask(task_id.to_owned()))
    }
}

#[async_trait]
impl TaskQueue for MemoryQueue {
    fn lease_ms(&self) -> u64 {
        self.shared.lease.as_millis() as u64
    }

    async fn enqueue(&self, task: Task) -> Result<String, RemoteError> {
        let key = attempt_key(&task);
        let mut st = self.state();
        if let Some(live) = st.by_attempt.get(&key) {
            return Ok(live.clone());
        }
        let task_id = format!("task_{}", uuid::Uuid::now_v7().simple());
        st.by_attempt.insert(key, task_id.clone());
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
                deadline: None,
                stop: false,
            },
        );
        drop(st);
        self.shared.arrived.notify_waiters();
        Ok(task_id)
    }

    async fn claim_of_plans(
        &self,
        worker_id: &str,
        agent_types: &[String],
        plan_ids: Option<&[String]>,
        wait: Duration,
    ) -> Result<Option<TaskLease>, RemoteError> {
        let until = wait_until(wait);
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
                return Ok(None);
            }
            if let Some(lease) = self.take(worker_id, agent_types, plan_ids) {
                return Ok(Some(lease));
            }
            tokio::select! {
                _ = &mut arrived => {}
                _ = tokio::time::sleep_until(until) => return Ok(None),
            }
        }
    }

    async fn unclaim(&self, task_id: &str) -> Result<Option<Task>, RemoteError> {
        let mut st = self.state();
        let Some(entry) = st.tasks.get_mut(task_id) else {
            return Ok(None);
        };
        if entry.stop {
            return Ok(st.forget(task_id).map(|e| e.task));
        }
        entry.worker = None;
        entry.deadline = None;
        let (agent_type, seq) = (entry.task.agent_type.clone(), entry.seq);
        st.queued
            .entry(agent_type)
            .or_default()
            .insert(seq, task_id.to_owned());
        drop(st);
        self.shared.arrived.notify_waiters();
        Ok(None)
    }

    async fn heartbeat(
        &self,
        task_id: &str,
        worker_id: &str,
    ) -> Result<HeartbeatAnswer, RemoteError> {
        let lease = self.shared.lease;
        let mut st = self.state();
        let entry = st.held(task_id, worker_id)?;
        entry.deadline = Some(Instant::now() + lease);
        Ok(HeartbeatAnswer {
            lease_ms: lease.as_millis() as u64,
            stop: entry.stop,
        })
    }

    async fn complete(&self, task_id: &str, worker_id: &str) -> Result<Task, RemoteError> {
        self.resolve(task_id, worker_id)
    }

    async fn fail(&self, task_id: &str, worker_id: &str) -> Result<Task, RemoteError> {
        self.resolve(task_id, worker_id)
    }

    async fn expire(&self) -> Result<Vec<Task>, RemoteError> {
        let now = Instant::now();
        let mut st = self.state();
        let due: Vec<String> = st
            .tasks
            .iter()
            .filter(|(_, e)| e.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        Ok(due
            .into_iter()
            .filter_map(|id| st.forget(&id).map(|e| e.task))
            .collect())
    }

    async fn stop(&self, task_id: &str) -> Result<Stopped, RemoteError> {
        let mut st = self.state();
        let Some(entry) = st.tasks.get_mut(task_id) else {
            return Ok(Stopped::Gone);
        };
        if entry.worker.is_some() {
            entry.stop = true;
            return Ok(Stopped::Flagged);
        }
        Ok(st
            .forget(task_id)
            .map_or(Stopped::Gone, |e| Stopped::Dropped(Box::new(e.task))))
    }

    async fn remove(&self, task_id: &str) -> Result<(), RemoteError> {
        self.state().forget(task_id);
        Ok(())
    }

    async fn is_live(&self, task_id: &str) -> Result<bool, RemoteError> {
        Ok(self.state().tasks.contains_key(task_id))
    }

    fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.arrived.notify_waiters();
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, RemoteError> {
        Ok(self.workers_now())
    }

    async fn queued_by_type(&self) -> Result<Vec<(String, usize)>, RemoteError> {
        Ok(self.queued_now())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_memory_queue_passes_the_task_queue_conformance_suite() {
        super::conformance::run_all(|lease_ms| async move { super::MemoryQueue::new(lease_ms) })
            .await;
    }
}
