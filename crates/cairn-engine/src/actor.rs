//! One task per live plan: it owns the plan's state, decides every command through the core,
//! makes the resulting events durable before anyone hears of them, then acts on them (runs
//! attempts, stops attempts the plan no longer wants, arms timers).
//!
//! Invariants:
//! - Nothing is answered, published or executed before its events are committed.
//! - Messages that queue up while a commit is in flight are decided together and committed in
//!   one append, so a busy plan costs one commit per batch, not per message.
//! - If an append fails, the in-memory state is thrown away and reloaded from the store: the
//!   store is the truth.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::decide::{dispatches, SYSTEM_ACTOR};
use cairn_core::{expr, handle, idempotency_key, Command, Ctx, Event, PlanState, StepResult};
use cairn_store::{Append, Fence};
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::engine::{now_micros, Inner};
use crate::executor::{ExecError, StopSignal, Task};
use crate::EngineError;

/// Most messages decided together before one commit.
const BATCH: usize = 256;

pub(crate) enum Msg {
    Command {
        command: Command,
        actor: String,
        reply: ReplyTo,
    },
    Outcome {
        step_id: String,
        attempt: u32,
        result: StepResult,
    },
    /// A copy of the current state.
    Read {
        reply: oneshot::Sender<Arc<PlanState>>,
    },
    /// Stop driving the plan (engine shutdown). In-flight attempts are left to recovery.
    Stop,
}

pub(crate) struct PlanActor {
    inner: Arc<Inner>,
    state: PlanState,
    fence: Fence,
    rx: mpsc::UnboundedReceiver<Msg>,
    tx: mpsc::UnboundedSender<Msg>,
    /// Attempts running now, by (step id, attempt), with their stop switches.
    inflight: HashMap<(String, u32), watch::Sender<bool>>,
    /// Seq of the newest stored snapshot.
    snapshot_seq: u64,
    /// A shared copy of the current state, made when someone asks and kept until the state
    /// changes: a busy plan's steps never pay for copies nobody reads.
    shared: Option<Arc<PlanState>>,
    lease_renew_at: tokio::time::Instant,
}

impl PlanActor {
    pub(crate) fn new(
        inner: Arc<Inner>,
        state: PlanState,
        fence: Fence,
        snapshot_seq: u64,
        rx: mpsc::UnboundedReceiver<Msg>,
        tx: mpsc::UnboundedSender<Msg>,
    ) -> PlanActor {
        let renew = inner.opts.lease_ms / 3;
        PlanActor {
            inner,
            state,
            fence,
            rx,
            tx,
            inflight: HashMap::new(),
            snapshot_seq,
            shared: None,
            lease_renew_at: tokio::time::Instant::now() + Duration::from_millis(renew),
        }
    }

    pub(crate) async fn run(mut self) {
        let mut idle_since: Option<tokio::time::Instant> = None;
        loop {
            let wake = self.state.next_wake().map(|t| {
                let wait = (t - crate::engine::now()).max(0) as u64;
                tokio::time::Instant::now() + Duration::from_micros(wait)
            });
            let renew_at = self.lease_renew_at;
            // An ended plan is unloaded at once; a quiet one after a while, so an operator's
            // next command (resume after restore, say) finds it still loaded.
            let unload_at = if self.idle_and_done() {
                let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                let linger = if self.state.status.is_terminal() {
                    Duration::ZERO
                } else {
                    Duration::from_millis(self.inner.opts.idle_unload_ms)
                };
                Some(since + linger)
            } else {
                idle_since = None;
                None
            };
            tokio::select! {
                msg = self.rx.recv() => {
                    let Some(msg) = msg else { return };
                    if !self.batch(msg).await {
                        return;
                    }
                }
                _ = async { tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)).await }, if wake.is_some() => {
                    self.decide_and_commit(vec![(Command::Tick, SYSTEM_ACTOR.to_owned(), None)]).await;
                }
                _ = tokio::time::sleep_until(renew_at) => {
                    if !self.renew_lease().await {
                        return;
                    }
                }
                _ = async { tokio::time::sleep_until(unload_at.unwrap_or_else(tokio::time::Instant::now)).await }, if unload_at.is_some() => {
                    if self.idle_and_done() && self.inner.unload(&self.state.plan_id, &self.tx) {
                        // Answer anything that raced in before the unload, then stop.
                        while let Ok(msg) = self.rx.try_recv() {
                            if !self.batch(msg).await {
                                break;
                            }
                        }
                        let _ = self
                            .inner
                            .store
                            .release(&self.state.plan_id, &self.fence)
                            .await;
                        return;
                    }
                }
            }
        }
    }

    fn shared(&mut self) -> Arc<PlanState> {
        self.shared
            .get_or_insert_with(|| Arc::new(self.state.clone()))
            .clone()
    }

    /// Nothing left to do until someone asks: ended, or paused with nothing running and no
    /// timer. Such a plan is unloaded (its memory freed, its lease released) and loaded again
    /// from the store by the next command, so idle plans cost storage, not memory.
    fn idle_and_done(&self) -> bool {
        let quiet = self.state.status.is_terminal()
            || (self.state.status == cairn_core::PlanStatus::Paused
                && self.state.drained
                && self.state.resume_at.is_none())
            || self.state.status == cairn_core::PlanStatus::Idle;
        quiet && self.inflight.is_empty()
    }

    async fn renew_lease(&mut self) -> bool {
        let now = now_micros();
        match self
            .inner
            .store
            .claim(
                &self.state.plan_id,
                &self.fence.node,
                self.inner.opts.lease_ms,
                now,
            )
            .await
        {
            Ok(fence) => {
                self.fence = fence;
                self.lease_renew_at = tokio::time::Instant::now()
                    + Duration::from_millis(self.inner.opts.lease_ms / 3);
                true
            }
            Err(e) => {
                warn!(plan_id = %self.state.plan_id, error = %e, "lost the plan's lease; stop driving it");
                self.stop_all();
                self.inner.unload(&self.state.plan_id, &self.tx);
                false
            }
        }
    }

    /// Takes `first` and whatever else is queued, decides them all, commits once.
    /// Returns false when the actor must stop.
    async fn batch(&mut self, first: Msg) -> bool {
        let mut work: Vec<(Command, String, Option<ReplyTo>)> = Vec::new();
        let mut keep_going = true;
        let mut reads = Vec::new();
        let mut push = |msg: Msg, work: &mut Vec<_>| match msg {
            Msg::Command {
                command,
                actor,
                reply,
            } => work.push((command, actor, Some(reply))),
            Msg::Outcome {
                step_id,
                attempt,
                result,
            } => work.push((
                Command::Outcome {
                    step_id,
                    attempt,
                    result,
                },
                SYSTEM_ACTOR.to_owned(),
                None,
            )),
            Msg::Read { reply } => reads.push(reply),
            Msg::Stop => keep_going = false,
        };
        push(first, &mut work);
        while work.len() < BATCH {
            match self.rx.try_recv() {
                Ok(msg) => push(msg, &mut work),
                Err(_) => break,
            }
        }
        if !reads.is_empty() {
            let shared = self.shared();
            for reply in reads {
                let _ = reply.send(shared.clone());
            }
        }
        for (command, _, _) in &work {
            if let Command::Outcome {
                step_id, attempt, ..
            } = command
            {
                self.inflight.remove(&(step_id.clone(), *attempt));
            }
        }
        if !work.is_empty() {
            self.decide_and_commit(work).await;
        }
        if !keep_going {
            self.stop_all();
            self.inner.unload(&self.state.plan_id, &self.tx);
        }
        keep_going
    }

    async fn decide_and_commit(&mut self, work: Vec<(Command, String, Option<ReplyTo>)>) {
        let before = self.state.seq;
        let now = crate::engine::now();
        let mut events: Vec<Event> = Vec::new();
        // Each answer names its events by their range in `events`: they move into the append
        // and come back as shared `Arc`s, never copied (a restore's event carries a whole state).
        let mut answers: Vec<(ReplyTo, Result<Pending, EngineError>)> = Vec::new();
        for (command, actor, reply) in work {
            let result = handle(&mut self.state, command, Ctx { now, actor: &actor });
            let start = events.len();
            match result {
                Ok(decision) => {
                    events.extend(decision.events);
                    if let Some(reply) = reply {
                        answers.push((
                            reply,
                            Ok(Pending {
                                events: start..events.len(),
                                intervention: decision.intervention,
                                refusal: decision.refusal,
                            }),
                        ));
                    }
                }
                Err(refusal) => {
                    if let Some(reply) = reply {
                        answers.push((reply, Err(refusal.into())));
                    }
                }
            }
        }
        if events.is_empty() {
            let shared = self.shared();
            for (reply, answer) in answers {
                let _ = reply.send(answer.map(|p| p.answer(&[], shared.clone())));
            }
            return;
        }
        let append = Append {
            plan_id: self.state.plan_id.clone(),
            expected_seq: before,
            fence: Some(self.fence.clone()),
            state: Some(self.state.status.as_str().to_owned()),
            events: events.iter().map(crate::convert::to_new).collect(),
        };
        match self.inner.store.append(append).await {
            Ok(stored) => {
                for (e, s) in events.iter_mut().zip(&stored) {
                    e.id = s.id;
                }
                self.shared = None;
                let published: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
                self.inner.publish(published.clone());
                if !answers.is_empty() {
                    let shared = self.shared();
                    for (reply, answer) in answers {
                        let _ = reply.send(answer.map(|p| p.answer(&published, shared.clone())));
                    }
                }
                self.act(&published);
                self.maybe_snapshot();
            }
            Err(e) => {
                warn!(plan_id = %self.state.plan_id, error = %e, "append failed; reloading the plan from the store");
                let err = EngineError::from(e);
                let message = err.to_string();
                for (reply, _) in answers {
                    let _ = reply.send(Err(EngineError::Store(cairn_store::StoreError::Backend(
                        message.clone(),
                    ))));
                }
                match crate::engine::load_state(&*self.inner.store, &self.state.plan_id).await {
                    Ok((state, snap)) => {
                        self.state = state;
                        self.snapshot_seq = snap;
                        self.shared = None;
                    }
                    Err(e) => warn!(plan_id = %self.state.plan_id, error = %e, "reload failed"),
                }
                self.reconcile();
            }
        }
    }

    /// Runs the attempts the events ask for and stops the ones the state no longer counts.
    fn act(&mut self, events: &[Arc<Event>]) {
        self.reconcile();
        let starts: Vec<(String, u32)> = events
            .iter()
            .flat_map(|e| dispatches(std::slice::from_ref(e.as_ref())))
            .map(|(s, a)| (s.to_owned(), a))
            .collect();
        for (step_id, attempt) in starts {
            self.dispatch(&step_id, attempt);
        }
    }

    /// Asks every attempt the state no longer counts as running to stop. Entries stay until the
    /// attempt reports, so its late result is still recorded.
    fn reconcile(&mut self) {
        let state = &self.state;
        for ((step_id, attempt), stop) in &self.inflight {
            let live = state.step(step_id).is_some_and(|s| {
                s.rec.status == cairn_core::StepStatus::Running && s.rec.attempts == *attempt
            });
            if !live {
                let _ = stop.send(true);
            }
        }
    }

    fn stop_all(&mut self) {
        for (_, stop) in self.inflight.drain() {
            let _ = stop.send(true);
        }
    }

    fn dispatch(&mut self, step_id: &str, attempt: u32) {
        if !self.inner.opts.execute {
            return;
        }
        let Some(step) = self.state.step(step_id) else {
            return;
        };
        let plan_id = self.state.plan_id.clone();
        let def = &step.def;
        let params = if expr::has_templates(&def.params) {
            expr::render(&def.params, &self.state.template_context())
        } else {
            Ok(def.params.clone())
        };
        let tx = self.tx.clone();
        let step_id = step_id.to_owned();
        let params = match params {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Msg::Outcome {
                    step_id,
                    attempt,
                    result: StepResult::Failed {
                        error: e,
                        retryable: false,
                    },
                });
                return;
            }
        };
        let task = Task {
            idempotency_key: idempotency_key(&plan_id, &step_id, step.rec.run),
            plan_id,
            step_id: step_id.clone(),
            action: def.action.clone(),
            agent_type: def.agent_type.clone(),
            params,
            attempt,
            run: step.rec.run,
            timeout_ms: def.timeout_ms,
            query: self.state.query.clone(),
        };
        let executor = self.inner.executor_for(&def.agent_type);
        let (stop_tx, stop) = StopSignal::new();
        self.inflight.insert((step_id.clone(), attempt), stop_tx);
        debug!(plan_id = %task.plan_id, step_id = %step_id, attempt, "dispatch");
        tokio::spawn(async move {
            let result = match executor {
                None => Err(ExecError::fatal(format!(
                    "no executor for agent type {:?}: configure it in cairn.toml ([agents.{}] executor = \"command\" or \"http\")",
                    task.agent_type, task.agent_type
                ))),
                Some(executor) => {
                    let timeout = task.timeout_ms;
                    // The attempt runs in this task (no second spawn: one wake-up less per
                    // step); a panicking executor is caught and fails the attempt.
                    let run = std::panic::AssertUnwindSafe(executor.execute(task, stop))
                        .catch_unwind();
                    let joined = match timeout {
                        // On timeout the executor's future is dropped, which kills what it owns
                        // (a command agent's child has kill_on_drop).
                        Some(ms) => tokio::time::timeout(Duration::from_millis(ms), run)
                            .await
                            .unwrap_or_else(|_| {
                                Ok(Err(ExecError::retryable(format!("timed out after {ms} ms"))))
                            }),
                        None => run.await,
                    };
                    joined.unwrap_or_else(|_| {
                        Err(ExecError::retryable("the executor panicked".to_owned()))
                    })
                }
            };
            let result = match result {
                Ok(out) => StepResult::Completed {
                    output: out.output,
                    scores: out.scores,
                },
                Err(e) => StepResult::Failed {
                    error: e.message,
                    retryable: e.retryable,
                },
            };
            let _ = tx.send(Msg::Outcome {
                step_id,
                attempt,
                result,
            });
        });
    }

    /// Stores a snapshot every `snapshot_every` events. (Not after a restore: its event already
    /// carries the whole state, so replaying it costs what reading a snapshot would.)
    fn maybe_snapshot(&mut self) {
        let every = self.inner.opts.snapshot_every;
        if every == 0 || self.state.seq < self.snapshot_seq + every {
            return;
        }
        let Ok(bytes) = serde_json::to_vec(&self.state) else {
            return;
        };
        self.snapshot_seq = self.state.seq;
        let store = self.inner.store.clone();
        let plan_id = self.state.plan_id.clone();
        let seq = self.state.seq;
        tokio::spawn(async move {
            if let Err(e) = store.put_snapshot(&plan_id, seq, bytes).await {
                debug!(%plan_id, error = %e, "snapshot not stored");
            }
        });
    }
}

type ReplyTo = oneshot::Sender<Result<Answer, EngineError>>;

/// What a command's caller gets once its events are committed.
pub(crate) struct Answer {
    /// The events the command produced, with their global ids.
    pub(crate) events: Vec<Arc<Event>>,
    pub(crate) intervention: Option<cairn_core::Intervention>,
    pub(crate) refusal: Option<cairn_core::Refusal>,
    /// The plan's state after them.
    pub(crate) state: Arc<PlanState>,
}

/// An answer waiting for its commit.
struct Pending {
    events: std::ops::Range<usize>,
    intervention: Option<cairn_core::Intervention>,
    refusal: Option<cairn_core::Refusal>,
}

impl Pending {
    fn answer(self, published: &[Arc<Event>], state: Arc<PlanState>) -> Answer {
        Answer {
            events: published
                .get(self.events)
                .map(<[_]>::to_vec)
                .unwrap_or_default(),
            intervention: self.intervention,
            refusal: self.refusal,
            state,
        }
    }
}
