//! One task per live plan: it owns the plan's state, decides every command through the core,
//! makes the resulting events durable before anyone hears of them, then carries out the actions
//! the core decided with them (runs attempts with the invocation the core recorded, stops
//! attempts, arms the plan's timer).
//!
//! Invariants:
//! - Nothing is answered, published or executed before its events are committed.
//! - The actor decides nothing: what to run, stop and wake for comes from the core's actions.
//!   It tracks the attempts it runs by their [`AttemptId`].
//! - Messages that queue up while a commit is in flight are decided together and committed in
//!   one append, so a busy plan costs one commit per batch, not per message.
//! - An attempt stays tracked (in `inflight`) until its outcome is durable: an outcome leaves
//!   the list only when the append that records it succeeds.
//! - If an append fails, the in-memory state is thrown away and reloaded from the store: the
//!   store is the truth. Attempt outcomes of the failed batch are kept by the actor and
//!   committed again after a backoff (they happened; only their record failed), with the next
//!   batch or on their own, and timers wait for the same backoff, so a store that cannot write
//!   (a full disk) is retried calmly until it can, and nothing an executor reported is lost.
//! - If the reload fails too, the actor is *stale*: it decides nothing (commands are refused
//!   with the store's error, reads go to the store) and tries the reload again with the same
//!   backoff until it succeeds. It never drives the plan from a state that drifted from the
//!   store, and it never gives up on attempts whose outcomes it holds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use cairn_core::decide::{Route, Starts, SYSTEM_ACTOR};
use cairn_core::{
    Action, AttemptId, Command, Ctx, Event, PlanState, StartAttempt, StepResult, Timestamp,
};
use cairn_store::{Append, Fence};
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::engine::Inner;
use crate::executor::{ExecError, RunNow, StopSignal, Task};
use crate::remote::Ack;
use crate::EngineError;

/// Most messages decided together before one commit.
const BATCH: usize = 256;

///
/// Kept small (the command and the result are boxed): a mailbox allocates room for 32
/// messages when it is made, so with `Command` inline every live plan's empty mailbox took
/// about 9.6 kB.
pub(crate) enum Msg {
    Command {
        command: Box<Command>,
        actor: String,
        reply: ReplyTo,
    },
    Outcome {
        attempt: AttemptId,
        result: Box<StepResult>,
        /// Answered once the outcome is committed (a remote worker's report waits for it).
        ack: Option<Ack>,
    },
    /// Fork this plan: the new plan and this plan's `plan_forked` are committed together.
    Fork {
        fork: Box<Fork>,
        reply: oneshot::Sender<Result<PlanState, EngineError>>,
    },
    /// A copy of the current state.
    Read {
        reply: oneshot::Sender<Arc<PlanState>>,
    },
    /// Stop driving the plan (engine shutdown). In-flight attempts are left to recovery.
    Stop,
    /// The plan's lease was not renewed (see [`crate::node::renewals`]): another node took it
    /// over, or it was released or deleted. The actor stops at once, deciding nothing more
    /// (its appends would be fenced): the commands waiting are delivered again, to the plan's
    /// owner.
    LeaseLost,
}

/// A fork of the actor's plan, as the engine asks for it (or another node forwards it).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Fork {
    pub(crate) checkpoint_id: String,
    pub(crate) new_plan_id: String,
    /// The new plan's registration (its definition and origin).
    pub(crate) register: Command,
    pub(crate) reason: Option<String>,
    pub(crate) actor: String,
}

pub(crate) struct PlanActor {
    inner: Arc<Inner>,
    /// Shared with the readers it was answered to; a decision changes it in place when none
    /// still holds it (else on a copy, `Arc::make_mut`), so neither a busy plan's steps nor a
    /// large plan's restore pay for copies nobody reads.
    state: Arc<PlanState>,
    fence: Fence,
    rx: mpsc::UnboundedReceiver<Msg>,
    tx: mpsc::UnboundedSender<Msg>,
    /// Attempts running now, with their stop switches (none for an attempt whose executor
    /// answered at once: its outcome waits in `ready`).
    inflight: HashMap<AttemptId, Option<watch::Sender<bool>>>,
    /// Outcomes of attempts whose executor answered at once ([`crate::executor::Executor::run_now`]),
    /// decided like any reported outcome, before the mailbox is waited on.
    ready: VecDeque<Outcome>,
    /// Those of `inflight` that remote workers run (handed to the task queue).
    remote: HashSet<AttemptId>,
    /// When the plan wants to be woken (the core's latest `SetTimer`).
    timer: Option<Timestamp>,
    /// Seq of the newest stored snapshot.
    snapshot_seq: u64,
    /// After a failed append: how long to wait before trying again (doubles up to
    /// [`MAX_RETRY`]), and until when timers hold off. Cleared by the next successful append.
    retry_delay: Duration,
    hold_until: Option<tokio::time::Instant>,
    /// Outcomes whose commit failed, in report order: committed with the next batch, or by
    /// the retry at `hold_until`. Their attempts stay in `inflight` meanwhile.
    unrecorded: Vec<Outcome>,
    /// The last reload failed: `state` may hold decisions the store never took, so nothing is
    /// decided until a reload succeeds.
    stale: bool,
    /// An append was fenced: another node drives the plan now, and this actor stops.
    fenced: bool,
    /// Actions of a decision committed before the actor existed (a plan registered and started
    /// in one commit), carried out first thing.
    initial: Vec<Action>,
}

/// An attempt's reported result, kept until its commit succeeds.
type Outcome = (AttemptId, StepResult);

/// The longest wait between attempts to commit while the store fails.
const MAX_RETRY: Duration = Duration::from_secs(5);

impl PlanActor {
    pub(crate) fn new(
        inner: Arc<Inner>,
        state: PlanState,
        fence: Fence,
        snapshot_seq: u64,
        rx: mpsc::UnboundedReceiver<Msg>,
        tx: mpsc::UnboundedSender<Msg>,
    ) -> PlanActor {
        // Until the first decision sets it, the timer is the loaded state's next wake.
        let timer = state.next_wake();
        PlanActor {
            timer,
            inner,
            state: Arc::new(state),
            fence,
            rx,
            tx,
            inflight: HashMap::new(),
            ready: VecDeque::new(),
            remote: HashSet::new(),
            snapshot_seq,
            retry_delay: Duration::ZERO,
            hold_until: None,
            unrecorded: Vec::new(),
            stale: false,
            fenced: false,
            initial: Vec::new(),
        }
    }

    /// The actor carries out `actions` (of a decision already committed) before anything else.
    pub(crate) fn with_actions(mut self, actions: Vec<Action>) -> PlanActor {
        self.initial = actions;
        self
    }

    pub(crate) async fn run(mut self) {
        let initial = std::mem::take(&mut self.initial);
        self.act(initial);
        self.drive().await;
        // Whatever is still queued is dropped with the mailbox (its replies tell the senders,
        // who deliver again): it no longer waits anywhere.
        self.rx.close();
        while self.rx.try_recv().is_ok() {
            self.inner.took_msg();
        }
    }

    async fn drive(&mut self) {
        let mut idle_since: Option<tokio::time::Instant> = None;
        loop {
            if self.fenced {
                return;
            }
            // Outcomes at hand first: no mailbox, no wake-up. (The lease is renewed by the
            // engine's renewal task, however long a chain of such steps runs.)
            if let Some((attempt, result)) = self.ready.pop_front() {
                // A chain of such steps whose appends the store commits on this thread (the
                // SQLite writer idle) never waits for anything: it must still give the other
                // tasks of this thread their turn, once its cooperative budget is spent (every
                // 128 steps or so; a yield per step cost `plans` a third of its throughput).
                tokio::task::consume_budget().await;
                let outcome = Msg::Outcome {
                    attempt,
                    result: Box::new(result),
                    ack: None,
                };
                if !self.batch(outcome).await {
                    return;
                }
                continue;
            }
            let wake = if self.stale { None } else { self.timer }.map(|t| {
                let wait = (t - self.inner.now()).max(0) as u64;
                let at = tokio::time::Instant::now() + Duration::from_micros(wait);
                self.hold_until.map_or(at, |hold| at.max(hold))
            });
            // A failed commit is tried again at the end of its backoff, traffic or not.
            let retry_at = self
                .hold_until
                .filter(|_| self.stale || !self.unrecorded.is_empty());
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
                    self.inner.took_msg();
                    if !self.batch(msg).await {
                        return;
                    }
                }
                _ = async { tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)).await }, if wake.is_some() => {
                    self.decide_and_commit(vec![(Command::Tick, SYSTEM_ACTOR.to_owned(), None)], Vec::new()).await;
                }
                _ = async { tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)).await }, if retry_at.is_some() => {
                    // Boxed, as the other rare paths are (a fork, a reload): every live
                    // plan's task is as large as its largest future.
                    Box::pin(self.retry()).await;
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
                            self.inner.took_msg();
                            if let Msg::Outcome { attempt, .. } = msg {
                                // Dropping the outcome drops its ack: a waiting report hears
                                // that nothing was recorded.
                                debug!(plan_id = %self.state.plan_id, %attempt, "late outcome of an unloaded plan dropped");
                            }
                        }
                        // Bounded: a store that does not answer leaves the lease to run out.
                        let _ = tokio::time::timeout(
                            Duration::from_millis(self.inner.opts.lease_ms.max(1)),
                            self.inner.store.release(&self.state.plan_id, &self.fence),
                        )
                        .await;
                        self.inner.release_done(&self.state.plan_id);
                        return;
                    }
                }
            }
        }
    }

    /// Nothing left to do until someone asks: ended, or paused with nothing running, and no
    /// timer (`resume_at`, a review's deadline). Such a plan is unloaded (its memory freed, its
    /// lease released) and loaded again from the store by the next command, so idle plans cost
    /// storage, not memory.
    fn idle_and_done(&self) -> bool {
        let quiet = self.state.status.is_terminal()
            || (self.state.status == cairn_core::PlanStatus::Paused && self.state.drained)
            || self.state.status == cairn_core::PlanStatus::Idle;
        quiet
            && self.inflight.is_empty()
            && self.unrecorded.is_empty()
            // The core's latest `SetTimer` (a retry, `resume_at`, a review deadline): no need
            // to recompute the state's next wake on every turn of the loop.
            && self.timer.is_none()
    }

    /// Takes `first` and whatever else is queued (outcomes at hand, then the mailbox), decides
    /// them all, commits once. Outcomes whose earlier commit failed ride along. Returns false
    /// when the actor must stop.
    async fn batch(&mut self, first: Msg) -> bool {
        // Sized to what is waiting (a vector of these grows to room for four, over a kilobyte,
        // which glibc's malloc serves from outside its fast per-thread cache: see the core's `decide`).
        let waiting = 1 + self.ready.len() + self.rx.len();
        let mut work: Vec<(Command, String, Option<ReplyTo>)> =
            Vec::with_capacity(waiting.min(BATCH));
        let mut keep_going = true;
        let mut lost = false;
        let mut reads = Vec::new();
        let mut acks = Vec::new();
        let mut forks = Vec::new();
        let mut push = |msg: Msg, work: &mut Vec<_>| match msg {
            Msg::Command {
                command,
                actor,
                reply,
            } => work.push((*command, actor, Some(reply))),
            Msg::Outcome {
                attempt,
                result,
                ack,
            } => {
                acks.extend(ack);
                work.push((
                    Command::Outcome {
                        attempt,
                        result: *result,
                    },
                    SYSTEM_ACTOR.to_owned(),
                    None,
                ))
            }
            Msg::Read { reply } => reads.push(reply),
            Msg::Fork { fork, reply } => forks.push((fork, reply)),
            Msg::Stop => keep_going = false,
            Msg::LeaseLost => lost = true,
        };
        push(first, &mut work);
        while work.len() < BATCH {
            let Some((attempt, result)) = self.ready.pop_front() else {
                break;
            };
            push(
                Msg::Outcome {
                    attempt,
                    result: Box::new(result),
                    ack: None,
                },
                &mut work,
            );
        }
        while work.len() < BATCH {
            match self.rx.try_recv() {
                Ok(msg) => {
                    self.inner.took_msg();
                    push(msg, &mut work)
                }
                Err(_) => break,
            }
        }
        if lost {
            // Nothing more is decided here: the replies dropped with `work` send the commands
            // to the plan's next actor (on its owner), the acks dropped tell waiting reports
            // that nothing was recorded, and the new owner recovers the attempts running here.
            warn!(plan_id = %self.state.plan_id, "the plan's lease was lost; stop driving it");
            drop((work, reads, acks, forks));
            self.fenced = true;
            self.stop_all();
            self.inner.unload(&self.state.plan_id, &self.tx);
            return false;
        }
        if self.stale {
            // Nothing is decided from a state that may have drifted from the store: commands
            // hear why, outcomes wait with the others, reads (their replies dropped) go to the
            // store.
            drop(reads);
            self.hold(work, acks);
        } else {
            if !reads.is_empty() {
                let shared = Arc::clone(&self.state);
                for reply in reads {
                    let _ = reply.send(shared.clone());
                }
            }
            if !self.unrecorded.is_empty() && !work.is_empty() {
                let earlier =
                    std::mem::take(&mut self.unrecorded)
                        .into_iter()
                        .map(|(attempt, result)| {
                            let command = Command::Outcome { attempt, result };
                            (command, SYSTEM_ACTOR.to_owned(), None)
                        });
                work.splice(0..0, earlier);
            }
            if !work.is_empty() {
                self.decide_and_commit(work, acks).await;
            }
        }
        // A fork commits on its own: its append also creates the new plan.
        for (fork, reply) in forks {
            let _ = reply.send(Box::pin(self.fork(*fork)).await);
        }
        if !keep_going {
            self.stop_all();
            self.inner.unload(&self.state.plan_id, &self.tx);
        }
        keep_going
    }

    /// While stale: refuses the commands of `work` with the store's error and keeps its
    /// outcomes for the retry.
    fn hold(&mut self, work: Vec<(Command, String, Option<ReplyTo>)>, acks: Vec<Ack>) {
        let mut replies = Vec::new();
        for (command, _, reply) in work {
            if let Command::Outcome { attempt, result } = command {
                self.unrecorded.push((attempt, result));
            }
            replies.push(reply);
        }
        let err = EngineError::StorageUnavailable(format!(
            "plan {} is being reloaded from the store after a failed write",
            self.state.plan_id
        ));
        Self::refuse(err, acks, replies);
    }

    /// The end of a backoff after a failed commit: reloads the plan if the last reload failed,
    /// then commits the outcomes still held (with a tick, so ready steps whose start was not
    /// recorded start now).
    async fn retry(&mut self) {
        if self.stale && !self.reload(&[]).await {
            self.back_off();
            return;
        }
        let work = std::mem::take(&mut self.unrecorded)
            .into_iter()
            .map(|(attempt, result)| {
                let command = Command::Outcome { attempt, result };
                (command, SYSTEM_ACTOR.to_owned(), None)
            })
            .chain(std::iter::once((
                Command::Tick,
                SYSTEM_ACTOR.to_owned(),
                None,
            )))
            .collect();
        self.decide_and_commit(work, Vec::new()).await;
    }

    /// Doubles the wait before the next try (100 ms up to [`MAX_RETRY`]); timers hold off as
    /// long.
    fn back_off(&mut self) {
        self.retry_delay = (self.retry_delay * 2).clamp(Duration::from_millis(100), MAX_RETRY);
        self.hold_until = Some(tokio::time::Instant::now() + self.retry_delay);
    }

    /// Decides `work` and commits the events. When the append meets a seq conflict (this actor
    /// loaded the log just before another actor's last commit), the plan is reloaded and the
    /// same work decided once more against the fresh state; nothing of the failed append was
    /// stored, so deciding again cannot apply anything twice. Any other failure answers every
    /// caller with an error, backs off (timers hold off too), reloads the plan from the store
    /// and keeps the batch's attempt outcomes to commit again after the backoff: they happened,
    /// only their record failed. A reload that fails leaves the actor stale until a later one
    /// succeeds. `acks` are answered once the outcome is settled: committed, or known not to be
    /// yet.
    async fn decide_and_commit(
        &mut self,
        work: Vec<(Command, String, Option<ReplyTo>)>,
        acks: Vec<Ack>,
    ) {
        // Kept to be committed again if the append fails: the attempts really ended.
        let outcomes: Vec<Outcome> = work
            .iter()
            .filter_map(|(command, _, _)| match command {
                Command::Outcome { attempt, result } => Some((attempt.clone(), result.clone())),
                _ => None,
            })
            .collect();
        // Exactly as long as `work` (`unzip` would make room for at least four of each).
        let mut commands: Vec<(Command, String)> = Vec::with_capacity(work.len());
        let mut replies: Vec<Option<ReplyTo>> = Vec::with_capacity(work.len());
        for (command, actor, reply) in work {
            commands.push((command, actor));
            replies.push(reply);
        }
        // What to decide once more after a seq conflict: the commands themselves, except that
        // an outcome (whose output may be large) is only marked here and taken from `outcomes`
        // then, so a batch copies each outcome once, not twice. (Outcomes are always decided
        // as the system: see `batch` and `retry`.)
        let mut again: Option<Vec<Option<(Command, String)>>> = Some(
            commands
                .iter()
                .map(|(command, actor)| match command {
                    Command::Outcome { .. } => None,
                    other => Some((other.clone(), actor.clone())),
                })
                .collect(),
        );
        let mut commands = commands;
        loop {
            let Err(e) = self.try_commit(commands, &mut replies, &outcomes).await else {
                self.retry_delay = Duration::ZERO;
                self.hold_until = None;
                for ack in acks {
                    let _ = ack.send(Ok(()));
                }
                return;
            };
            warn!(plan_id = %self.state.plan_id, error = %e, "append failed; reloading the plan from the store");
            if matches!(e, cairn_store::StoreError::Fenced { .. }) {
                // Another node took the plan over: it recovers the attempts running here (they
                // run again there, at least once), and nothing more is decided here.
                warn!(plan_id = %self.state.plan_id, error = %e, "the plan's lease was taken over; stop driving it");
                Self::refuse(EngineError::from(e), acks, replies);
                self.fenced = true;
                self.stop_all();
                self.inner.unload(&self.state.plan_id, &self.tx);
                return;
            }
            let conflict = matches!(e, cairn_store::StoreError::SeqConflict { .. });
            let err = EngineError::from(e);
            if conflict && again.is_some() {
                if self.reload(&outcomes).await {
                    let mut held = outcomes.iter().cloned();
                    commands = again
                        .take()
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|kept| {
                            kept.or_else(|| {
                                let (attempt, result) = held.next()?;
                                let command = Command::Outcome { attempt, result };
                                Some((command, SYSTEM_ACTOR.to_owned()))
                            })
                        })
                        .collect();
                    continue;
                }
            } else {
                self.reload(&outcomes).await;
            }
            Self::refuse(err, acks, replies);
            self.unrecorded.extend(outcomes);
            self.back_off();
            return;
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
                EngineError::NotOwner { plan_id, owner } => EngineError::NotOwner {
                    plan_id: plan_id.clone(),
                    owner: owner.clone(),
                },
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
        outcomes: &[Outcome],
    ) -> Result<(), cairn_store::StoreError> {
        let before = self.state.seq;
        let now = self.inner.now();
        let mut events: Vec<Event> = Vec::new();
        // Each answer names its events by their range in `events`: they move into the append
        // and come back as shared `Arc`s, never copied (a registration carries a whole plan).
        let mut answers: Vec<(usize, Result<Pending, EngineError>)> = Vec::new();
        let mut actions: Vec<Action> = Vec::new();
        let reviews_before = crate::reviews::fingerprint(&self.state);
        let inner = &*self.inner;
        // The core is told which agent types this process can run: those with an executor here,
        // the others on the remote-worker queue when there is one (their attempts start
        // `queued` until a worker claims them); with neither, the core fails their steps.
        let route = |agent_type: &str| route(inner, agent_type);
        for (i, (command, actor)) in commands.into_iter().enumerate() {
            let wants = replies.get(i).is_some_and(Option::is_some);
            let ctx = Ctx { now, actor: &actor };
            // An engine that runs no attempt must not record one: its ready steps start when a
            // driver takes the plan over.
            let starts = if inner.opts.execute {
                Starts::Route(&route)
            } else {
                Starts::None
            };
            let result = cairn_core::decide::handle_starting(
                Arc::make_mut(&mut self.state),
                command,
                ctx,
                starts,
            );
            let start = events.len();
            match result {
                Ok(decision) => {
                    // The first decision's events are taken as they are, not copied.
                    if events.is_empty() {
                        events = decision.events;
                    } else {
                        events.extend(decision.events);
                    }
                    actions.extend(decision.actions);
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
                reviews: crate::reviews::changed(&self.state, &reviews_before),
            };
            let stored = self.inner.store.append(append).await?;
            for (e, s) in events.iter_mut().zip(&stored) {
                e.id = s.id;
            }
            // Before publishing: whoever sees these events and then shuts the engine down
            // finds the snapshot they were due written (see `Engine::shutdown`).
            self.maybe_snapshot();
            let published: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
            self.inner.publish(published.clone());
            published
        };
        if !answers.is_empty() {
            let shared = Arc::clone(&self.state);
            for (i, answer) in answers {
                if let Some(reply) = replies.get_mut(i).and_then(Option::take) {
                    let _ = reply.send(answer.map(|p| p.answer(&published, shared.clone())));
                }
            }
        }
        // The outcomes are durable now (or recorded nothing): their attempts are done.
        for (attempt, _) in outcomes {
            self.inflight.remove(attempt);
            self.remote.remove(attempt);
        }
        self.act(actions);
        Ok(())
    }

    /// Forks the plan: decides the new plan's registration and this plan's `plan_forked` (the
    /// core refuses a bad new id), then commits both in one store transaction, so no fork exists
    /// that the source's log does not record, and no record names a plan that does not exist.
    /// Decided on a copy of the state: a failed commit leaves the actor's state as it was. A seq
    /// conflict (a stale load) reloads and decides once more.
    async fn fork(&mut self, fork: Fork) -> Result<PlanState, EngineError> {
        let mut retried = false;
        loop {
            let now = self.inner.now();
            let ctx = Ctx {
                now,
                actor: &fork.actor,
            };
            let inner = &*self.inner;
            let route = |agent_type: &str| route(inner, agent_type);
            let mut source = PlanState::clone(&self.state);
            let recorded = cairn_core::decide::handle_starting(
                &mut source,
                Command::RecordFork {
                    checkpoint_id: fork.checkpoint_id.clone(),
                    new_plan_id: fork.new_plan_id.clone(),
                    reason: fork.reason.clone(),
                },
                ctx,
                if inner.opts.execute {
                    Starts::Route(&route)
                } else {
                    Starts::None
                },
            )?;
            let mut forked = PlanState::empty(&fork.new_plan_id);
            let registered = cairn_core::handle(&mut forked, fork.register.clone(), ctx)?;
            let create = cairn_store::CreatePlan {
                plan_id: fork.new_plan_id.clone(),
                created_at: now.as_micros(),
                state: forked.status.as_str().to_owned(),
                events: registered
                    .events
                    .iter()
                    .map(crate::convert::to_new)
                    .collect(),
                // A fork never carries an open review; its closed ones stay its source's.
                reviews: Vec::new(),
            };
            let append = Append {
                plan_id: self.state.plan_id.clone(),
                expected_seq: self.state.seq,
                fence: Some(self.fence.clone()),
                state: Some(source.status.as_str().to_owned()),
                events: recorded.events.iter().map(crate::convert::to_new).collect(),
                // Recording a fork changes none of the source's reviews.
                reviews: Vec::new(),
            };
            match self.inner.store.create_plan_with(create, append).await {
                Ok((created, appended)) => {
                    let ids = created.iter().chain(&appended).map(|s| s.id);
                    let published: Vec<Arc<Event>> = registered
                        .events
                        .into_iter()
                        .chain(recorded.events)
                        .zip(ids)
                        .map(|(mut e, id)| {
                            e.id = id;
                            Arc::new(e)
                        })
                        .collect();
                    self.state = Arc::new(source);
                    self.maybe_snapshot();
                    self.inner.publish(published);
                    self.act(recorded.actions);
                    return Ok(forked);
                }
                Err(cairn_store::StoreError::SeqConflict { .. }) if !retried => {
                    retried = true;
                    if !self.reload(&[]).await {
                        return Err(EngineError::StorageUnavailable(format!(
                            "plan {} could not be reloaded from the store",
                            self.state.plan_id
                        )));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Replaces the in-memory state with the store's. On failure the actor is stale (see the
    /// module's invariants) and the caller schedules another try. After a reload, attempts the
    /// store counts as active that nothing here runs or holds an outcome of (their start, or
    /// their recovery, was decided by a batch whose append failed, or a reload moved the state
    /// back) are sent again, as recovery after a restart would: same attempt, same invocation,
    /// same key. `held` are outcomes in hand besides those kept for a retry.
    async fn reload(&mut self, held: &[Outcome]) -> bool {
        // Boxed: a load's future is large, and rare here.
        match Box::pin(crate::engine::load_state(
            &*self.inner.store,
            &self.state.plan_id,
        ))
        .await
        {
            Ok((state, snap)) => {
                self.state = Arc::new(state);
                self.snapshot_seq = snap;
                self.stale = false;
                self.timer = self.state.next_wake();
                self.reconcile();
                let orphans: Vec<AttemptId> = self
                    .state
                    .live_attempts()
                    .into_iter()
                    .filter(|attempt| {
                        !self.inflight.contains_key(attempt)
                            && !self
                                .unrecorded
                                .iter()
                                .chain(held)
                                .any(|(a, _)| a == attempt)
                    })
                    .collect();
                for attempt in orphans {
                    if let Some(start) = cairn_core::decide::resend(&self.state, &attempt) {
                        debug!(plan_id = %self.state.plan_id, %attempt, "attempt sent again after a reload");
                        self.dispatch(start);
                    }
                }
                true
            }
            Err(e) => {
                warn!(plan_id = %self.state.plan_id, error = %e, "reload failed; nothing is decided until one succeeds");
                self.stale = true;
                false
            }
        }
    }

    /// Carries out the core's actions, in order.
    fn act(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Stop { attempt, cause } => {
                    // The entry stays until the attempt reports, so its late result is still
                    // recorded.
                    if let Some(Some(stop)) = self.inflight.get(&attempt) {
                        debug!(plan_id = %self.state.plan_id, %attempt, %cause, "stop");
                        let _ = stop.send(true);
                    }
                }
                Action::Start(start) => self.dispatch(*start),
                Action::SetTimer { at } => self.timer = at,
            }
        }
    }

    /// After a reload from the store: asks every attempt the stored state does not count as in
    /// flight to stop (the decisions that started or kept it were never committed).
    fn reconcile(&mut self) {
        for (attempt, stop) in &self.inflight {
            if let Some(stop) = stop.as_ref().filter(|_| !self.state.is_live(attempt)) {
                let _ = stop.send(true);
            }
        }
    }

    /// This node stops driving the plan (shutdown, a lost lease): stops the attempts running
    /// here. A remote worker's attempt is released, not stopped: its task stays with the
    /// queue, and the plan's next owner, sending the attempt again, is answered that task
    /// (the worker's report reaches the new owner; the step runs once).
    fn stop_all(&mut self) {
        for (attempt, stop) in self.inflight.drain() {
            if let Some(stop) = stop.filter(|_| !self.remote.contains(&attempt)) {
                let _ = stop.send(true);
            }
        }
        self.ready.clear();
        self.remote.clear();
    }

    /// Runs one attempt as the core decided it: the task is built from the recorded invocation.
    fn dispatch(&mut self, start: StartAttempt) {
        if !self.inner.opts.execute {
            return;
        }
        let StartAttempt {
            attempt,
            invocation,
            run,
            idempotency_key,
            timeout_ms,
            query,
            queued: _,
        } = start;
        // The task owns its copy (the log's event and the step's record share the original).
        let invocation = std::sync::Arc::unwrap_or_clone(invocation);
        let task = Task {
            plan_id: self.state.plan_id.clone(),
            step_id: attempt.step_id.clone(),
            kind: attempt.kind,
            action: invocation.action,
            agent_type: invocation.agent_type,
            params: invocation.params,
            attempt: attempt.number,
            run,
            idempotency_key,
            timeout_ms,
            query,
            // Recorded with the invocation, so an attempt re-sent after a crash carries it too.
            gate_feedback: invocation.gate_feedback,
        };
        let executor = self.inner.executor_for(&task.agent_type);
        // An executor that answers at once is not given a task of its own: its outcome is
        // decided next, like a reported one (a panic fails the attempt, as in a task).
        let task = match &executor {
            Some(executor) => {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    executor.run_now(task)
                }));
                match ran {
                    Ok(RunNow::Later(task)) => task,
                    Ok(RunNow::Done(result)) => {
                        debug!(plan_id = %self.state.plan_id, %attempt, "ran at once");
                        self.inflight.insert(attempt.clone(), None);
                        self.ready.push_back((attempt, step_result(result)));
                        return;
                    }
                    Err(_) => {
                        let failed = Err(ExecError::retryable("the executor panicked".to_owned()));
                        self.inflight.insert(attempt.clone(), None);
                        self.ready.push_back((attempt, step_result(failed)));
                        return;
                    }
                }
            }
            None => task,
        };
        let tx = self.tx.clone();
        let inner = self.inner.clone();
        let (stop_tx, stop) = StopSignal::new();
        let tracked = stop.clone();
        self.inflight.insert(attempt.clone(), Some(stop_tx));
        if executor.is_some() && route(&self.inner, &task.agent_type) == Route::Queue {
            self.remote.insert(attempt.clone());
        }
        debug!(plan_id = %task.plan_id, %attempt, "dispatch");
        tokio::spawn(async move {
            let result = match executor {
                // The core routes only agent types this process has to it; this is an executor
                // unregistered between the decision and now.
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
            let result = step_result(result);
            // An attempt no longer tracked has its outcome durable already (a remote worker's
            // report came through the engine) or its plan is not driven here: nothing to send.
            if tracked.is_released() {
                return;
            }
            let _ = inner.post(
                &tx,
                Msg::Outcome {
                    attempt,
                    result: Box::new(result),
                    ack: None,
                },
            );
        });
    }

    /// Stores a snapshot every `snapshot_every` events (more apart for a large plan: see
    /// [`crate::folds::snapshot_spacing`]). (Not after a restore: its event records only what
    /// differs from the state before it, so replaying it from that state costs little.)
    fn maybe_snapshot(&mut self) {
        let every = self.inner.opts.snapshot_every;
        if every == 0
            || self.state.seq
                < self.snapshot_seq + crate::folds::snapshot_spacing(every, self.state.steps.len())
        {
            return;
        }
        let Ok(bytes) = crate::snapshot::encode(&self.state) else {
            return;
        };
        self.snapshot_seq = self.state.seq;
        let store = self.inner.store.clone();
        let plan_id = self.state.plan_id.clone();
        let seq = self.state.seq;
        self.inner.snapshot_writes.spawn(async move {
            if let Err(e) = store.put_snapshot(&plan_id, seq, bytes).await {
                debug!(%plan_id, error = %e, "snapshot not stored");
            }
        });
    }
}

/// An executor's answer as the core records it.
fn step_result(result: Result<crate::executor::ExecOutput, ExecError>) -> StepResult {
    match result {
        Ok(out) => StepResult::Completed {
            output: out.output,
            scores: out.scores,
        },
        Err(e) => StepResult::Failed {
            error: e.message,
            retryable: e.retryable,
        },
    }
}

/// Where this process runs an agent type's attempts: an executor here, else the remote-worker
/// queue when there is one, else nowhere (the core then fails the step).
pub(crate) fn route(inner: &Inner, agent_type: &str) -> Route {
    if inner.registry.get(agent_type).is_some() {
        Route::Local
    } else if inner.opts.remote.is_some() {
        Route::Queue
    } else {
        Route::Missing
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
