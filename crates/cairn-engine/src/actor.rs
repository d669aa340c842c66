//! One task per live plan: it owns the plan's state, decides every command through the core,
//! makes the resulting events durable before anyone hears of them, then acts on them (runs
//! attempts, stops attempts the plan no longer wants, arms timers).
//!
//! Invariants:
//! - Nothing is answered, published or executed before its events are committed.
//! - Messages that queue up while a commit is in flight are decided together and committed in
//!   one append, so a busy plan costs one commit per batch, not per message.
//! - If an append fails, the in-memory state is thrown away and reloaded from the store: the
//!   store is the truth. Attempt outcomes of the failed batch are delivered again after a
//!   backoff (they happened; only their record failed), and timers wait for the same backoff, so
//!   a store that cannot write (a full disk) is retried calmly until it can, and nothing an
//!   executor reported is lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::decide::{dispatches, SYSTEM_ACTOR};
use cairn_core::{expr, handle, idempotency_key, Command, Ctx, Event, PlanState, StepResult};
use cairn_store::{Append, Fence};
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::engine::Inner;
use crate::executor::{ExecError, StopSignal, Task};
use crate::remote::Ack;
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
        /// Answered once the outcome is committed (a remote worker's report waits for it).
        ack: Option<Ack>,
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
    /// After a failed append: how long to wait before trying again (doubles up to
    /// [`MAX_RETRY`]), and until when timers hold off. Cleared by the next successful append.
    retry_delay: Duration,
    hold_until: Option<tokio::time::Instant>,
}

/// The longest wait between attempts to commit while the store fails.
const MAX_RETRY: Duration = Duration::from_secs(5);
/// Reloads tried after a failed append before the actor gives the plan up.
const RELOAD_TRIES: u32 = 5;

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
            retry_delay: Duration::ZERO,
            hold_until: None,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut idle_since: Option<tokio::time::Instant> = None;
        loop {
            let wake = self.state.next_wake().map(|t| {
                let wait = (t - self.inner.now()).max(0) as u64;
                let at = tokio::time::Instant::now() + Duration::from_micros(wait);
                self.hold_until.map_or(at, |hold| at.max(hold))
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
                    if !self.decide_and_commit(vec![(Command::Tick, SYSTEM_ACTOR.to_owned(), None)], Vec::new()).await {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(renew_at) => {
                    if !self.renew_lease().await {
                        return;
                    }
                }
                _ = async { tokio::time::sleep_until(unload_at.unwrap_or_else(tokio::time::Instant::now)).await }, if unload_at.is_some() => {
                    if self.idle_and_done()
                        && self.inner.unload_if_quiet(&self.state.plan_id, &self.tx, &mut self.rx)
                    {
                        // What raced in through an old copy of the sender is handed back, not
                        // decided: dropping a command drops its reply, and the sender delivers
                        // it again to the plan's next actor. Deciding it here could commit
                        // after that actor loaded the log.
                        while let Ok(msg) = self.rx.try_recv() {
                            if let Msg::Outcome { step_id, attempt, .. } = msg {
                                // Dropping the outcome drops its ack: a waiting report hears
                                // that nothing was recorded.
                                debug!(plan_id = %self.state.plan_id, %step_id, attempt, "late outcome of an unloaded plan dropped");
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

    /// Nothing left to do until someone asks: ended, or paused with nothing running, and no
    /// timer (`resume_at`, a review's deadline). Such a plan is unloaded (its memory freed, its
    /// lease released) and loaded again from the store by the next command, so idle plans cost
    /// storage, not memory.
    fn idle_and_done(&self) -> bool {
        let quiet = self.state.status.is_terminal()
            || (self.state.status == cairn_core::PlanStatus::Paused && self.state.drained)
            || self.state.status == cairn_core::PlanStatus::Idle;
        quiet && self.inflight.is_empty() && self.state.next_wake().is_none()
    }

    async fn renew_lease(&mut self) -> bool {
        let now = self.inner.now().as_micros();
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
            Err(cairn_store::StoreError::Unavailable(why)) => {
                // The store cannot write, so no other node can take the lease either: keep
                // driving and renew again shortly.
                warn!(plan_id = %self.state.plan_id, error = %why, "cannot renew the plan's lease; trying again");
                self.lease_renew_at = tokio::time::Instant::now() + Duration::from_secs(1);
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
        let mut acks = Vec::new();
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
                ack,
            } => {
                acks.extend(ack);
                work.push((
                    Command::Outcome {
                        step_id,
                        attempt,
                        result,
                    },
                    SYSTEM_ACTOR.to_owned(),
                    None,
                ))
            }
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
        if !work.is_empty() && !self.decide_and_commit(work, acks).await {
            return false;
        }
        if !keep_going {
            self.stop_all();
            self.inner.unload(&self.state.plan_id, &self.tx);
        }
        keep_going
    }

    /// Decides `work` and commits the events. When the append meets a seq conflict (this actor
    /// loaded the log just before another actor's last commit), the plan is reloaded and the
    /// same work decided once more against the fresh state; nothing of the failed append was
    /// stored, so deciding again cannot apply anything twice. Any other failure answers every
    /// caller with an error, backs off (timers hold off too), reloads the plan from the store
    /// and delivers the batch's attempt outcomes again after the backoff: they happened, only
    /// their record failed. `acks` are answered once the outcome is settled: committed, or known
    /// not to be. Returns false when the actor must stop (the plan could not be reloaded).
    async fn decide_and_commit(
        &mut self,
        work: Vec<(Command, String, Option<ReplyTo>)>,
        acks: Vec<Ack>,
    ) -> bool {
        // Kept to be delivered again if the append fails: the attempts really ended.
        let outcomes: Vec<(String, u32, StepResult)> = work
            .iter()
            .filter_map(|(command, _, _)| match command {
                Command::Outcome {
                    step_id,
                    attempt,
                    result,
                } => Some((step_id.clone(), *attempt, result.clone())),
                _ => None,
            })
            .collect();
        let (commands, mut replies): (Vec<(Command, String)>, Vec<Option<ReplyTo>>) = work
            .into_iter()
            .map(|(command, actor, reply)| ((command, actor), reply))
            .unzip();
        let mut again = Some(commands.clone());
        let mut commands = commands;
        loop {
            let Err(e) = self.try_commit(commands, &mut replies).await else {
                self.retry_delay = Duration::ZERO;
                self.hold_until = None;
                for ack in acks {
                    let _ = ack.send(Ok(()));
                }
                return true;
            };
            warn!(plan_id = %self.state.plan_id, error = %e, "append failed; reloading the plan from the store");
            let conflict = matches!(e, cairn_store::StoreError::SeqConflict { .. });
            let err = EngineError::from(e);
            if conflict && again.is_some() {
                if !self.reload().await {
                    Self::refuse(err, acks, replies);
                    return false;
                }
                self.reconcile();
                commands = again.take().unwrap_or_default();
                continue;
            }
            Self::refuse(err, acks, replies);
            self.retry_delay = (self.retry_delay * 2).clamp(Duration::from_millis(100), MAX_RETRY);
            self.hold_until = Some(tokio::time::Instant::now() + self.retry_delay);
            if !self.reload().await {
                return false;
            }
            self.reconcile();
            self.redeliver(outcomes);
            return true;
        }
    }

    /// Answers every caller of a batch whose append failed.
    fn refuse(err: EngineError, acks: Vec<Ack>, replies: Vec<Option<ReplyTo>>) {
        let message = err.to_string();
        for ack in acks {
            let _ = ack.send(Err(message.clone()));
        }
        for reply in replies.into_iter().flatten() {
            let answer = match &err {
                EngineError::StorageUnavailable(why) => {
                    EngineError::StorageUnavailable(why.clone())
                }
                _ => EngineError::Store(cairn_store::StoreError::Backend(message.clone())),
            };
            let _ = reply.send(Err(answer));
        }
    }

    /// Decides the commands in order and commits their events in one append. On success every
    /// reply in `replies` (one per command, if any) is answered; on failure none is, and the
    /// in-memory state is ahead of the store (the caller reloads).
    async fn try_commit(
        &mut self,
        commands: Vec<(Command, String)>,
        replies: &mut [Option<ReplyTo>],
    ) -> Result<(), cairn_store::StoreError> {
        let before = self.state.seq;
        let now = self.inner.now();
        let mut events: Vec<Event> = Vec::new();
        // Each answer names its events by their range in `events`: they move into the append
        // and come back as shared `Arc`s, never copied (a restore's event carries a whole state).
        let mut answers: Vec<(usize, Result<Pending, EngineError>)> = Vec::new();
        let inner = &*self.inner;
        // Agent types with no local executor go to the remote-worker queue, when there is one:
        // their attempts start `queued` until a worker claims them.
        let queued = |agent_type: &str| inner.registry.get(agent_type).is_none();
        for (i, (command, actor)) in commands.into_iter().enumerate() {
            let wants = replies.get(i).is_some_and(Option::is_some);
            let ctx = Ctx { now, actor: &actor };
            // An engine that runs no attempt must not record one: its ready steps start when a
            // driver takes the plan over.
            let result = if !inner.opts.execute {
                cairn_core::decide::handle_recording(&mut self.state, command, ctx)
            } else if inner.opts.remote.is_some() {
                cairn_core::decide::handle_starting(
                    &mut self.state,
                    command,
                    ctx,
                    cairn_core::decide::Starts::Queue(&queued),
                )
            } else {
                handle(&mut self.state, command, ctx)
            };
            let start = events.len();
            match result {
                Ok(decision) => {
                    events.extend(decision.events);
                    if wants {
                        answers.push((
                            i,
                            Ok(Pending {
                                events: start..events.len(),
                                intervention: decision.intervention,
                                refusal: decision.refusal,
                            }),
                        ));
                    }
                }
                Err(refusal) => {
                    if wants {
                        answers.push((i, Err(refusal.into())));
                    }
                }
            }
        }
        let published: Vec<Arc<Event>> = if events.is_empty() {
            Vec::new()
        } else {
            let append = Append {
                plan_id: self.state.plan_id.clone(),
                expected_seq: before,
                fence: Some(self.fence.clone()),
                state: Some(self.state.status.as_str().to_owned()),
                events: events.iter().map(crate::convert::to_new).collect(),
            };
            let stored = self.inner.store.append(append).await?;
            for (e, s) in events.iter_mut().zip(&stored) {
                e.id = s.id;
            }
            self.shared = None;
            let published: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
            self.inner.publish(published.clone());
            published
        };
        if !answers.is_empty() {
            let shared = self.shared();
            for (i, answer) in answers {
                if let Some(reply) = replies.get_mut(i).and_then(Option::take) {
                    let _ = reply.send(answer.map(|p| p.answer(&published, shared.clone())));
                }
            }
        }
        if !published.is_empty() {
            self.act(&published);
            self.maybe_snapshot();
        }
        Ok(())
    }

    /// Replaces the in-memory state with the store's, trying a few times (reads usually work
    /// when writes do not). Gives the plan up when the store cannot be read: the state in
    /// memory may hold decisions that were never committed, and driving on from it would be
    /// wrong; the next command loads the plan afresh.
    async fn reload(&mut self) -> bool {
        let mut wait = Duration::from_millis(50);
        for _ in 0..RELOAD_TRIES {
            match crate::engine::load_state(&*self.inner.store, &self.state.plan_id).await {
                Ok((state, snap)) => {
                    self.state = state;
                    self.snapshot_seq = snap;
                    self.shared = None;
                    return true;
                }
                Err(e) => {
                    warn!(plan_id = %self.state.plan_id, error = %e, "reload failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_RETRY);
                }
            }
        }
        tracing::error!(plan_id = %self.state.plan_id, "cannot reload the plan from the store; it is no longer driven here until it is loaded again");
        self.stop_all();
        self.inner.unload(&self.state.plan_id, &self.tx);
        false
    }

    /// Sends the outcomes of a failed append back to this actor after the backoff, for the
    /// attempts the reloaded state still counts as running.
    fn redeliver(&self, outcomes: Vec<(String, u32, StepResult)>) {
        for (step_id, attempt, result) in outcomes {
            let running = self
                .state
                .step(&step_id)
                .is_some_and(|s| s.rec.status.is_active() && s.rec.attempts == attempt);
            if !running {
                continue;
            }
            let tx = self.tx.clone();
            let delay = self.retry_delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(Msg::Outcome {
                    step_id,
                    attempt,
                    result,
                    ack: None,
                });
            });
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
            let live = state
                .step(step_id)
                .is_some_and(|s| s.rec.status.is_active() && s.rec.attempts == *attempt);
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
                    ack: None,
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
            gate_feedback: step.rec.gate_feedback.clone(),
        };
        let executor = self.inner.executor_for(&def.agent_type);
        let remote = self.inner.opts.remote.clone();
        let (stop_tx, stop) = StopSignal::new();
        self.inflight.insert((step_id.clone(), attempt), stop_tx);
        debug!(plan_id = %task.plan_id, step_id = %step_id, attempt, "dispatch");
        tokio::spawn(async move {
            let key = task.idempotency_key.clone();
            let result = match executor {
                None => Err(ExecError::fatal(format!(
                    "no executor is registered for agent type {:?}",
                    task.agent_type
                ))),
                Some(executor) => {
                    let timeout = task.timeout_ms;
                    // The attempt runs in this task (no second spawn: one wake-up less per
                    // step); a panicking executor is caught and fails the attempt.
                    let run =
                        std::panic::AssertUnwindSafe(executor.execute(task, stop)).catch_unwind();
                    let joined = match timeout {
                        // On timeout the executor's future is dropped, which kills what it owns
                        // (a command agent's child has kill_on_drop).
                        Some(ms) => tokio::time::timeout(Duration::from_millis(ms), run)
                            .await
                            .unwrap_or_else(|_| {
                                Ok(Err(ExecError::retryable(format!(
                                    "timed out after {ms} ms"
                                ))))
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
            // A remote worker's report that waits for this outcome to be durable rides along.
            let ack = remote.and_then(|q| q.take_ack(&key, attempt));
            let _ = tx.send(Msg::Outcome {
                step_id,
                attempt,
                result,
                ack,
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
