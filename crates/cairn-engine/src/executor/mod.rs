//! Executors: what runs a step. An [`Executor`] gets a [`Task`] and returns the step's output (and
//! optional scores) or an error saying whether trying again may help.
//!
//! The [`Registry`] maps agent types to executors: the builtins (`builtin.echo`, `builtin.sleep`,
//! `builtin.fail`, `builtin.latch`) are always there; `cairn.toml` adds `command` and `http` agents; an embedding
//! program registers its own with [`Registry::register`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cairn_core::{AttemptId, AttemptKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::watch;

pub mod command;
pub mod http;
pub mod latch;

/// One attempt of one step, as an executor sees it. Serialised as the JSON a `command` agent reads
/// on stdin and an `http` agent receives as the request body (and how a task queue kept in a
/// database stores it: it reads back the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Task {
    pub plan_id: String,
    pub step_id: String,
    /// What the attempt runs: absent for the step's own action (`step`).
    #[serde(default, skip_serializing_if = "AttemptKind::is_step")]
    pub kind: AttemptKind,
    pub action: String,
    pub agent_type: String,
    /// With `{{ }}` templates already rendered.
    #[cfg_attr(feature = "utoipa", schema(value_type = Object))]
    pub params: Value,
    pub attempt: u32,
    pub run: u32,
    /// `plan_id/step_id/run`: the same for every attempt of a run, so agents can deduplicate.
    pub idempotency_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The plan's query, for agents that want the wider context.
    pub query: String,
    /// Why the previous attempt's result was not accepted: the quality gate's failed criteria
    /// (`{criterion, score, bound}`) and, after a rejection with retry, the reviewer's `note`.
    /// Absent on a first attempt and when the gate gives no feedback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate_feedback: Option<cairn_core::GateFeedback>,
}

impl Task {
    /// The attempt this task is.
    pub fn attempt_id(&self) -> AttemptId {
        AttemptId {
            step_id: self.step_id.clone(),
            kind: self.kind,
            number: self.attempt,
        }
    }
}

/// What a successful attempt produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecOutput {
    pub output: Value,
    pub scores: Option<Map<String, Value>>,
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecError {
    pub message: String,
    /// `false` when trying again cannot help (bad input, misconfiguration).
    pub retryable: bool,
}

impl ExecError {
    pub fn retryable(message: impl Into<String>) -> ExecError {
        ExecError {
            message: message.into(),
            retryable: true,
        }
    }

    pub fn fatal(message: impl Into<String>) -> ExecError {
        ExecError {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Tells a running attempt that the plan no longer wants it (cancel, immediate pause, rerun).
/// Executors that can stop early watch it; the engine ignores late results either way.
#[derive(Debug, Clone)]
pub struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    pub fn new() -> (watch::Sender<bool>, StopSignal) {
        let (tx, rx) = watch::channel(false);
        (tx, StopSignal(rx))
    }

    /// A signal that never fires (tests and one-off runs).
    pub fn never() -> StopSignal {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive forever so `stopped()` never resolves.
        std::mem::forget(tx);
        StopSignal(rx)
    }

    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when the attempt is asked to stop (true) or is no longer tracked by its plan
    /// (false: the engine dropped the sender, because the attempt's outcome is durable or the
    /// plan is no longer driven here).
    pub(crate) async fn ended(&mut self) -> bool {
        loop {
            if *self.0.borrow_and_update() {
                return true;
            }
            if self.0.changed().await.is_err() {
                return *self.0.borrow();
            }
        }
    }

    /// Resolves once the attempt is no longer tracked by its plan (see [`StopSignal::ended`]).
    pub(crate) async fn released(&mut self) {
        while self.0.changed().await.is_ok() {}
    }

    /// The attempt is no longer tracked by its plan: whatever it answers now is not wanted.
    pub(crate) fn is_released(&self) -> bool {
        self.0.has_changed().is_err()
    }

    /// Resolves when the attempt is asked to stop.
    pub async fn stopped(&mut self) {
        while !*self.0.borrow_and_update() {
            if self.0.changed().await.is_err() {
                // The engine dropped the sender without asking to stop: wait forever.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Runs steps of one or more agent types.
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    async fn execute(&self, task: Task, stop: StopSignal) -> Result<ExecOutput, ExecError>;

    /// The attempt's result at once, for an executor that needs no waiting at all (no I/O, no
    /// timer, no lock held by anyone else), like `builtin.echo`: the engine then records the
    /// outcome without running the attempt as a task of its own, which saves a task and a
    /// wake-up per step. The outcome is still committed after the attempt's start, as any
    /// other. Must return quickly and never block. By default the attempt runs as a task
    /// ([`Executor::execute`]): the task is handed back.
    fn run_now(&self, task: Task) -> RunNow {
        RunNow::Later(task)
    }
}

/// What [`Executor::run_now`] answers.
pub enum RunNow {
    /// The attempt ran: its result.
    Done(Result<ExecOutput, ExecError>),
    /// The attempt has to run as a task ([`Executor::execute`]).
    Later(Task),
}

/// Agent type → executor.
#[derive(Clone, Default)]
pub struct Registry {
    agents: Arc<Mutex<HashMap<String, Arc<dyn Executor>>>>,
}

impl Registry {
    /// A registry with the builtins.
    pub fn with_builtins() -> Registry {
        let r = Registry::default();
        r.register("builtin.echo", Arc::new(Echo));
        r.register("builtin.sleep", Arc::new(Sleep));
        r.register("builtin.fail", Arc::new(Fail));
        r.register("builtin.latch", Arc::new(latch::Latch::default()));
        r
    }

    pub fn register(&self, agent_type: &str, executor: Arc<dyn Executor>) {
        if let Ok(mut agents) = self.agents.lock() {
            agents.insert(agent_type.to_owned(), executor);
        }
    }

    pub fn get(&self, agent_type: &str) -> Option<Arc<dyn Executor>> {
        self.agents.lock().ok()?.get(agent_type).cloned()
    }

    pub fn contains(&self, agent_type: &str) -> bool {
        self.get(agent_type).is_some()
    }

    pub fn agent_types(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .agents
            .lock()
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// `builtin.echo`: returns the params as the output.
pub struct Echo;

#[async_trait]
impl Executor for Echo {
    async fn execute(&self, task: Task, _stop: StopSignal) -> Result<ExecOutput, ExecError> {
        Ok(ExecOutput {
            output: task.params,
            scores: None,
        })
    }

    fn run_now(&self, task: Task) -> RunNow {
        RunNow::Done(Ok(ExecOutput {
            output: task.params,
            scores: None,
        }))
    }
}

/// `builtin.sleep`: waits `params.ms` milliseconds, then returns the params.
pub struct Sleep;

#[async_trait]
impl Executor for Sleep {
    async fn execute(&self, task: Task, mut stop: StopSignal) -> Result<ExecOutput, ExecError> {
        let ms = match task.params.get("ms") {
            None => 0,
            Some(v) => v.as_u64().ok_or_else(|| {
                ExecError::fatal("builtin.sleep: params.ms must be a non-negative integer")
            })?,
        };
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(ms)) => Ok(ExecOutput { output: task.params, scores: None }),
            _ = stop.stopped() => Err(ExecError::retryable("builtin.sleep: stopped")),
        }
    }
}

/// `builtin.fail`: fails the first `params.times` attempts of a run (default: always), then
/// returns the params. `params.retryable: false` makes the failures fatal.
#[derive(Default)]
pub struct Fail;

#[async_trait]
impl Executor for Fail {
    async fn execute(&self, task: Task, _stop: StopSignal) -> Result<ExecOutput, ExecError> {
        Fail::answer(task)
    }

    fn run_now(&self, task: Task) -> RunNow {
        RunNow::Done(Fail::answer(task))
    }
}

impl Fail {
    fn answer(task: Task) -> Result<ExecOutput, ExecError> {
        let times = task
            .params
            .get("times")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        let retryable = task
            .params
            .get("retryable")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        // Attempts count across runs; the failures are per plan attempt number, which is what a
        // demo wants: "fail twice, then work".
        if u64::from(task.attempt) <= times {
            let message = task
                .params
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    format!("builtin.fail: attempt {} fails on purpose", task.attempt)
                });
            Err(ExecError { message, retryable })
        } else {
            Ok(ExecOutput {
                output: task.params,
                scores: None,
            })
        }
    }
}
