//! `decide(state, command) -> events + actions`: the whole behaviour of a plan as a pure
//! function. [`handle`] checks a command against the state, emits the events it implies, applies
//! them to the state through the same fold a replay uses, then lets the scheduler advance the
//! plan (start ready steps, skip steps whose condition is false, pause at breakpoints, complete).
//!
//! It also answers the [`Action`]s the events require: the attempts to start (with the
//! invocation each is sent, rendered here and recorded in its `step_started`), the attempts to
//! stop, and the plan's next timer. The engine carries them out and decides nothing itself.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::action::{Action, StartAttempt};
use crate::attempt::{AttemptId, AttemptKind, Invocation};
use crate::event::{
    CheckpointMark, CheckpointTrigger, Event, EventKind, Micros, Origin, PauseMode,
};
use crate::expr;
use crate::gate::{self, GateAction, OnTimeout, Scores, GATE_USER, TIMEOUT_USER};
use crate::intervention::{
    self, Intervention, InterventionKind, InterventionRequest, InterventionStatus,
};
use crate::plan::{self, Plan};
use crate::review::review_id;
use crate::rollback::{self, RollbackEnd};
use crate::state::{PauseReason, PlanState, PlanStatus, Restored, StepStatus};
use crate::{Refusal, RefusalKind};

/// The actor of events the engine emits by itself (scheduling, timers, recovery).
pub const SYSTEM_ACTOR: &str = "cairn";

/// The longest `reason` any command may carry, in bytes.
pub const MAX_REASON: usize = 4096;

/// What an executor reported for one attempt.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepResult {
    Completed {
        output: Value,
        scores: Option<Map<String, Value>>,
    },
    Failed {
        error: String,
        /// `false` fails the step at once, whatever its retry policy says.
        retryable: bool,
    },
}

/// A shared state in a command, serialised as the state itself.
mod shared_state {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::state::PlanState;

    pub fn serialize<S: Serializer>(state: &Arc<PlanState>, s: S) -> Result<S::Ok, S::Error> {
        PlanState::serialize(state, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<PlanState>, D::Error> {
        PlanState::deserialize(d).map(Arc::new)
    }
}

/// Everything that can happen to a plan. Serialisable so that one engine node can hand a
/// command to the node that owns the plan.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Creates the plan (the state must be empty).
    Register {
        definition: Plan,
        origin: Option<Box<Origin>>,
    },
    Start {
        reason: Option<String>,
    },
    Pause {
        mode: PauseMode,
        resume_at: Option<Micros>,
        reason: Option<String>,
    },
    Resume {
        reason: Option<String>,
    },
    Cancel {
        reason: Option<String>,
        /// Roll back what the plan did before it ends cancelled (absent: false).
        #[serde(default)]
        rollback: bool,
    },
    Intervene(InterventionRequest),
    /// An executor's report on an attempt.
    Outcome {
        attempt: AttemptId,
        result: StepResult,
    },
    Checkpoint {
        label: Option<String>,
        reason: Option<String>,
    },
    /// Restores the state at a checkpoint, folded by the caller from the log (shared: the
    /// core only reads it, and records what differs from the plan's state).
    Restore {
        checkpoint_id: String,
        seq: u64,
        #[serde(with = "shared_state")]
        target: Arc<PlanState>,
        reason: Option<String>,
    },
    /// Records that a new plan was forked from one of this plan's checkpoints (refused when
    /// `new_plan_id` is not a valid id, or is this plan's own). The new plan itself is a
    /// `Register` with an origin, committed in the same transaction by the caller.
    RecordFork {
        checkpoint_id: String,
        new_plan_id: String,
        reason: Option<String>,
    },
    /// Time passed: retries whose backoff ended may start, `resume_at` may have come.
    Tick,
    /// The plan was loaded after a restart: re-run or settle the attempts that were in flight.
    Recover,
    /// Stops the attempts still running of a plan that no longer runs (paused, or ended with
    /// steps in flight): each is recorded as interrupted and goes back to pending, to run again
    /// when the plan continues. What a driver records when it is told to stop at once.
    Interrupt {
        reason: Option<String>,
    },
    /// A remote worker took a queued attempt.
    Claim {
        attempt: AttemptId,
        worker_id: String,
    },
    /// Rolls back a failed or cancelled plan (or continues a rollback that failed). With
    /// `dry_run`, answers the compensations it would run ([`Decision::compensations`]) and
    /// changes nothing.
    Rollback {
        dry_run: bool,
        reason: Option<String>,
    },
}

impl Command {
    /// The operator's reason the command carries, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Command::Start { reason }
            | Command::Pause { reason, .. }
            | Command::Resume { reason }
            | Command::Cancel { reason, .. }
            | Command::Checkpoint { reason, .. }
            | Command::Restore { reason, .. }
            | Command::RecordFork { reason, .. }
            | Command::Interrupt { reason }
            | Command::Rollback { reason, .. } => reason.as_deref(),
            Command::Intervene(request) => request.reason.as_deref(),
            Command::Register { .. }
            | Command::Outcome { .. }
            | Command::Tick
            | Command::Recover
            | Command::Claim { .. } => None,
        }
    }
}

/// Where the deciding process runs the attempts of one agent type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// An executor of this process runs them.
    Local,
    /// The remote-worker queue: they start `queued` until a worker claims them.
    Queue,
    /// Nothing can run them: a step of this type fails (without retry) instead of starting.
    Missing,
}

/// How the deciding process starts the attempts it decides to start.
#[derive(Clone, Copy)]
pub enum Starts<'a> {
    /// It runs every attempt itself.
    Run,
    /// It runs none (it only records decisions): ready steps wait for a process that will.
    None,
    /// It runs some, and hands the agent types for which this answers true to the
    /// remote-worker queue: their attempts start `queued`.
    Queue(&'a dyn Fn(&str) -> bool),
    /// Where each agent type's attempts go (the process says which executors it has).
    Route(&'a dyn Fn(&str) -> Route),
}

impl Starts<'_> {
    fn route(&self, agent_type: &str) -> Route {
        match self {
            Starts::Queue(queued) if queued(agent_type) => Route::Queue,
            Starts::Route(route) => route(agent_type),
            Starts::Queue(_) | Starts::Run | Starts::None => Route::Local,
        }
    }
}

impl std::fmt::Debug for Starts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Starts::Run => "Run",
            Starts::None => "None",
            Starts::Queue(_) => "Queue(..)",
            Starts::Route(_) => "Route(..)",
        })
    }
}

/// The context of one decision: the clock reading and who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub now: Micros,
    pub actor: &'a str,
}

/// What a command produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// Emitted and already applied to the state, in order.
    pub events: Vec<Event>,
    /// The intervention record (for `Intervene`, refused or not; not applied on a dry run).
    pub intervention: Option<Intervention>,
    /// Set when an intervention was refused: its `intervention_failed` event is in `events`.
    pub refusal: Option<Refusal>,
    /// What to do once `events` are durable, in order: stops, then starts, then the timer
    /// (always last, exactly one).
    pub actions: Vec<Action>,
    /// For a rollback (dry run or not): the steps it compensates, in the order it runs them.
    pub compensations: Vec<String>,
}

impl Decision {
    /// The attempts this decision starts.
    pub fn starts(&self) -> impl Iterator<Item = &StartAttempt> {
        self.actions.iter().filter_map(Action::started)
    }
}

struct Emitter<'a> {
    state: &'a mut PlanState,
    now: Micros,
    out: Vec<Event>,
    /// Attempts to run, in the order they were decided.
    starts: Vec<StartAttempt>,
    /// Attempts to tell to stop that stay in flight until they report (a rollback waits for
    /// the steps it stopped).
    stops: Vec<AttemptId>,
}

impl Emitter<'_> {
    fn emit(&mut self, actor: &str, kind: EventKind, checkpoint: Option<CheckpointTrigger>) {
        self.emit_marked(
            actor,
            kind,
            checkpoint.map(|trigger| CheckpointMark {
                trigger,
                label: None,
            }),
        )
    }

    fn emit_marked(&mut self, actor: &str, kind: EventKind, checkpoint: Option<CheckpointMark>) {
        let event = Event {
            id: 0,
            seq: self.state.seq + 1,
            plan_id: self.state.plan_id.clone(),
            at: self.now,
            actor: actor.to_owned(),
            kind,
            checkpoint,
        };
        self.state.apply(&event);
        self.out.push(event);
    }
}

fn conflict(message: String) -> Refusal {
    Refusal::new(RefusalKind::Conflict, message)
}

/// Refuses a reason longer than [`MAX_REASON`] bytes.
pub fn check_reason(reason: Option<&str>) -> Result<(), Refusal> {
    match reason {
        Some(r) if r.len() > MAX_REASON => Err(Refusal::new(
            RefusalKind::Invalid,
            format!("reason is longer than {MAX_REASON} bytes"),
        )),
        _ => Ok(()),
    }
}

/// May the plan be deleted (with its whole log)? Not while it runs: pause or cancel it first.
pub fn check_delete(state: &PlanState) -> Result<(), Refusal> {
    if state.status == PlanStatus::Running {
        return Err(conflict(format!(
            "plan {} is running; pause or cancel it before deleting it",
            state.plan_id
        )));
    }
    Ok(())
}

/// Is `new_plan_id` usable for a plan forked from `source`?
fn check_fork_id(source: &PlanState, new_plan_id: &str) -> Result<(), Refusal> {
    if !plan::valid_id(new_plan_id) {
        return Err(Refusal::new(
            RefusalKind::Invalid,
            format!(
                "new_plan_id {new_plan_id:?} is not a valid id (1 to 128 of A-Z a-z 0-9 _ . -)"
            ),
        ));
    }
    if new_plan_id == source.plan_id {
        return Err(conflict(format!(
            "plan {new_plan_id} already exists: a fork needs a new plan id"
        )));
    }
    Ok(())
}

/// Decides a command, applies its events to `state`, and advances the plan.
///
/// `Err` means the command was refused and nothing changed (no event). A refused intervention is
/// not an `Err`: it is recorded (`intervention_failed`) and reported in [`Decision::refusal`].
pub fn handle(state: &mut PlanState, command: Command, ctx: Ctx<'_>) -> Result<Decision, Refusal> {
    decide(state, command, ctx, Starts::Run)
}

/// [`handle`] for a process that hands some agent types to the remote-worker queue (see
/// [`Starts`]): their attempts start `queued` and run once a worker claims them
/// ([`Command::Claim`]).
pub fn handle_starting(
    state: &mut PlanState,
    command: Command,
    ctx: Ctx<'_>,
    starts: Starts<'_>,
) -> Result<Decision, Refusal> {
    decide(state, command, ctx, starts)
}

/// [`handle`] for a process that records decisions but runs no attempt (an administrative
/// command on a store no driver holds): it starts no step, so the log never shows an attempt
/// that nothing runs. A running plan's ready steps start when a driver takes it over
/// ([`Command::Recover`]), as attempt 1.
pub fn handle_recording(
    state: &mut PlanState,
    command: Command,
    ctx: Ctx<'_>,
) -> Result<Decision, Refusal> {
    decide(state, command, ctx, Starts::None)
}

fn decide(
    state: &mut PlanState,
    command: Command,
    ctx: Ctx<'_>,
    starts: Starts<'_>,
) -> Result<Decision, Refusal> {
    check_reason(command.reason())?;
    let mut intervention = None;
    let mut refusal = None;
    // What is known of the steps at either end grows as they settle (see `Steps`).
    state.steps.refresh();
    let live_before = state.live_attempts();
    // An attempt that reported has stopped by itself: nothing to tell it.
    let reported = match &command {
        Command::Outcome { attempt, .. } => Some(attempt.clone()),
        _ => None,
    };
    let mut em = Emitter {
        state,
        now: ctx.now,
        // Most decisions emit one or two events. (Room for four, what a first push makes, is
        // over a kilobyte: glibc's malloc serves that from outside its fast per-thread cache, and
        // consolidates its free small chunks first, on every step.)
        out: Vec::with_capacity(2),
        starts: Vec::new(),
        stops: Vec::new(),
    };
    let status = em.state.status;
    let actor = ctx.actor;
    // A dry run changes nothing, so the scheduler does not run after it either.
    let dry_run = matches!(&command, Command::Intervene(r) if r.dry_run)
        || matches!(&command, Command::Rollback { dry_run: true, .. });
    let mut compensations = Vec::new();
    match command {
        Command::Register { definition, origin } => {
            if em.state.seq != 0 {
                return Err(conflict(format!(
                    "plan {} already exists",
                    em.state.plan_id
                )));
            }
            em.emit(
                actor,
                EventKind::PlanRegistered { definition, origin },
                None,
            );
        }
        Command::Start { reason } => {
            if status != PlanStatus::Idle {
                return Err(conflict(format!(
                    "plan {} is {}; only an idle plan can be started",
                    em.state.plan_id,
                    status.as_str()
                )));
            }
            em.emit(
                actor,
                EventKind::PlanStarted { reason },
                Some(CheckpointTrigger::Initial),
            );
        }
        Command::Pause {
            mode,
            resume_at,
            reason,
        } => {
            if status != PlanStatus::Running {
                return Err(conflict(format!(
                    "plan {} is {}; only a running plan can be paused",
                    em.state.plan_id,
                    status.as_str()
                )));
            }
            if let Some(t) = resume_at {
                if t <= ctx.now {
                    return Err(Refusal::new(
                        RefusalKind::Invalid,
                        "resume_at must be in the future",
                    ));
                }
            }
            em.emit(
                actor,
                EventKind::PlanPaused {
                    reason: PauseReason::Operator,
                    mode,
                    step_id: None,
                    resume_at,
                    note: reason,
                },
                Some(CheckpointTrigger::Pause),
            );
            if mode == PauseMode::Immediate {
                interrupt_running(&mut em, actor, "immediate pause");
            }
        }
        Command::Resume { reason } => {
            if status != PlanStatus::Paused {
                return Err(conflict(format!(
                    "plan {} is {}; only a paused plan can be resumed",
                    em.state.plan_id,
                    status.as_str()
                )));
            }
            em.emit(actor, EventKind::PlanResumed { reason }, None);
        }
        Command::Cancel { reason, rollback } => {
            if em.state.rolling_back() {
                return Err(conflict(format!(
                    "plan {} is rolling back; pause it to stop starting compensations",
                    em.state.plan_id
                )));
            }
            if status.is_terminal() {
                return Err(conflict(format!(
                    "plan {} is {}; only an idle, running or paused plan can be cancelled",
                    em.state.plan_id,
                    status.as_str()
                )));
            }
            // What a rollback compensates is decided before the cancel ends the steps in flight.
            let order = rollback.then(|| rollback::order(em.state));
            em.emit(
                actor,
                EventKind::PlanCancelled {
                    reason,
                    rollback: order.is_some(),
                },
                None,
            );
            if let Some(order) = order {
                compensations = order.clone();
                start_rollback(&mut em, actor, RollbackEnd::Cancelled, order);
            }
        }
        Command::Intervene(request) => {
            let (record, refused) = intervene(&mut em, actor, request);
            intervention = Some(record);
            refusal = refused;
        }
        Command::Outcome { attempt, result } => outcome(&mut em, attempt, result),
        Command::Checkpoint { label, reason } => {
            if let Some(l) = &label {
                if l.len() > 256 {
                    return Err(Refusal::new(
                        RefusalKind::Invalid,
                        "label is longer than 256 bytes",
                    ));
                }
            }
            em.emit_marked(
                actor,
                EventKind::CheckpointCreated {
                    label: label.clone(),
                    reason,
                },
                Some(CheckpointMark {
                    trigger: CheckpointTrigger::Manual,
                    label,
                }),
            );
        }
        Command::Restore {
            checkpoint_id,
            seq,
            target,
            reason,
        } => {
            if status == PlanStatus::Running {
                return Err(conflict(format!(
                    "plan {} is running; pause it before restoring a checkpoint",
                    em.state.plan_id
                )));
            }
            em.emit(
                actor,
                EventKind::CheckpointRestored {
                    checkpoint_id,
                    seq,
                    reason,
                    restored: Box::new(Restored::between(em.state, &target)),
                },
                None,
            );
        }
        Command::RecordFork {
            checkpoint_id,
            new_plan_id,
            reason,
        } => {
            check_fork_id(em.state, &new_plan_id)?;
            em.emit(
                actor,
                EventKind::PlanForked {
                    checkpoint_id,
                    new_plan_id,
                    reason,
                },
                None,
            )
        }
        Command::Tick => {
            expire_reviews(&mut em);
            if em.state.status == PlanStatus::Paused
                && em.state.resume_at.is_some_and(|t| t <= ctx.now)
            {
                em.emit(
                    SYSTEM_ACTOR,
                    EventKind::PlanResumed {
                        reason: Some("resume_at reached".into()),
                    },
                    None,
                );
            }
        }
        Command::Interrupt { reason } => {
            if status == PlanStatus::Running {
                return Err(conflict(format!(
                    "plan {} is running; pause it before interrupting its steps",
                    em.state.plan_id
                )));
            }
            interrupt_running(&mut em, actor, reason.as_deref().unwrap_or("interrupted"));
        }
        Command::Claim { attempt, worker_id } => {
            let waiting = em.state.is_live(&attempt)
                && em
                    .state
                    .step(&attempt.step_id)
                    .is_some_and(|s| s.rec.status == StepStatus::Queued);
            if !waiting {
                return Err(conflict(format!("{attempt} is not waiting for a worker")));
            }
            em.emit(
                ctx.actor,
                EventKind::StepClaimed {
                    step_id: attempt.step_id,
                    attempt: attempt.number,
                    worker_id,
                },
                None,
            );
        }
        Command::Rollback { dry_run, .. } => {
            let (then, order) = rollback::would_run(em.state).map_err(conflict)?;
            compensations = order.clone();
            if !dry_run {
                start_rollback(&mut em, actor, then, order);
            }
        }
        Command::Recover => {
            if status == PlanStatus::Running {
                for attempt in em.state.live_attempts() {
                    // A step stopped by the rollback ended with the process that ran it.
                    if em.state.rolling_back() && attempt.kind == AttemptKind::Step {
                        em.emit(
                            SYSTEM_ACTOR,
                            EventKind::StepInterrupted {
                                step_id: attempt.step_id,
                                kind: attempt.kind,
                                attempt: attempt.number,
                                cause: "rollback".into(),
                            },
                            None,
                        );
                        continue;
                    }
                    recover(&mut em, attempt, starts);
                }
            } else {
                interrupt_running(
                    &mut em,
                    SYSTEM_ACTOR,
                    "recovery of a plan that was not running",
                );
            }
        }
    }
    if refusal.is_none() && !dry_run {
        resume_after_reviews(&mut em);
        advance(&mut em, starts);
    }
    let actions = actions(&mut em, live_before, reported);
    if compensations.is_empty() {
        if let Some(EventKind::RollbackStarted { order, .. }) = em
            .out
            .iter()
            .map(|e| &e.kind)
            .find(|k| matches!(k, EventKind::RollbackStarted { .. }))
        {
            compensations = order.clone();
        }
    }
    Ok(Decision {
        events: em.out,
        intervention,
        refusal,
        actions,
        compensations,
    })
}

/// The actions the decision requires: stop every attempt that was in flight before and no
/// longer is (unless it reported: it stopped by itself), start the attempts decided, and set the
/// plan's next timer.
fn actions(
    em: &mut Emitter<'_>,
    live_before: Vec<AttemptId>,
    reported: Option<AttemptId>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for attempt in live_before {
        if em.state.is_live(&attempt) || reported.as_ref() == Some(&attempt) {
            continue;
        }
        let cause = stop_cause(&em.out, &attempt.step_id);
        actions.push(Action::Stop { attempt, cause });
    }
    for attempt in std::mem::take(&mut em.stops) {
        if em.state.is_live(&attempt) && reported.as_ref() != Some(&attempt) {
            actions.push(Action::Stop {
                attempt,
                cause: "rollback".into(),
            });
        }
    }
    actions.extend(
        std::mem::take(&mut em.starts)
            .into_iter()
            .map(|s| Action::Start(Box::new(s))),
    );
    actions.push(Action::SetTimer {
        at: em.state.next_wake(),
    });
    actions
}

/// Why an attempt is stopped: the cause of its interruption, or the event that ended it.
fn stop_cause(events: &[Event], step_id: &str) -> String {
    let interrupted = events.iter().rev().find_map(|e| match &e.kind {
        EventKind::StepInterrupted {
            step_id: s, cause, ..
        } if s == step_id => Some(cause.clone()),
        _ => None,
    });
    interrupted.unwrap_or_else(|| {
        events
            .first()
            .map_or("no longer wanted", |e| e.kind.type_name())
            .to_owned()
    })
}

fn interrupt_running(em: &mut Emitter<'_>, actor: &str, cause: &str) {
    for attempt in em.state.live_attempts() {
        em.emit(
            actor,
            EventKind::StepInterrupted {
                step_id: attempt.step_id,
                kind: attempt.kind,
                attempt: attempt.number,
                cause: cause.into(),
            },
            None,
        );
    }
}

/// Takes over an attempt that was in flight when the process that ran it stopped: it is sent
/// again with its recorded invocation (the same bytes, the same idempotency key). An attempt
/// whose start recorded none (an older log) is rendered now, and what was rendered is recorded
/// in its `step_recovered`. An attempt that cannot be sent again (nothing runs its agent type,
/// or its template no longer renders) fails as its executor would have failed it.
fn recover(em: &mut Emitter<'_>, attempt: AttemptId, starts: Starts<'_>) {
    let Some(step) = em.state.step(&attempt.step_id) else {
        return;
    };
    let recorded = match attempt.kind {
        AttemptKind::Step => step.rec.invocation.clone(),
        // A compensation's start always records what it was sent.
        AttemptKind::Compensation => step
            .rec
            .compensation
            .as_ref()
            .and_then(|c| c.invocation.clone()),
    };
    let agent_type = recorded
        .as_ref()
        .map_or(&step.def.agent_type, |i| &i.agent_type);
    let route = starts.route(agent_type);
    if matches!(starts, Starts::None) {
        em.emit(
            SYSTEM_ACTOR,
            EventKind::StepRecovered {
                step_id: attempt.step_id,
                kind: attempt.kind,
                attempt: attempt.number,
                queued: false,
                invocation: None,
            },
            None,
        );
        return;
    }
    // What cannot be sent again fails as its executor would have failed it, for good.
    let fail = |em: &mut Emitter<'_>, attempt, error| {
        let result = StepResult::Failed {
            error,
            retryable: false,
        };
        outcome(em, attempt, result);
    };
    if route == Route::Missing {
        fail(em, attempt, no_executor(agent_type));
        return;
    }
    let (invocation, rendered) = match recorded {
        Some(invocation) => (invocation, None),
        None => match invocation_of(em.state, &attempt.step_id) {
            Ok(invocation) => {
                let invocation = Arc::new(invocation);
                (invocation.clone(), Some(invocation))
            }
            Err(error) => return fail(em, attempt, error),
        },
    };
    let queued = route == Route::Queue;
    em.emit(
        SYSTEM_ACTOR,
        EventKind::StepRecovered {
            step_id: attempt.step_id.clone(),
            kind: attempt.kind,
            attempt: attempt.number,
            queued,
            invocation: rendered,
        },
        None,
    );
    let start = start_of(em.state, attempt, invocation, queued);
    em.starts.extend(start);
}

fn no_executor(agent_type: &str) -> String {
    format!("no executor is registered for agent type {agent_type:?}")
}

/// What a new attempt of the step is sent: its action and agent type, and its params with every
/// template rendered against the state now. `Err` names what failed to render.
fn invocation_of(state: &PlanState, step_id: &str) -> Result<Invocation, String> {
    let Some(step) = state.step(step_id) else {
        return Err(format!("no step {step_id}"));
    };
    let def = &step.def;
    let params = if expr::has_templates(&def.params) {
        expr::render(&def.params, &state.template_context())?
    } else {
        def.params.clone()
    };
    Ok(Invocation {
        action: def.action.clone(),
        agent_type: def.agent_type.clone(),
        params,
        gate_feedback: step.rec.gate_feedback.as_deref().cloned(),
    })
}

/// The start of an attempt the state counts as in flight, to send it again exactly as it was
/// first sent (its recorded invocation; rendered now for an attempt recorded before
/// invocations were), e.g. after an append whose outcome was unknown. `None` when `attempt` is
/// not in flight.
pub fn resend(state: &PlanState, attempt: &AttemptId) -> Option<StartAttempt> {
    if !state.is_live(attempt) {
        return None;
    }
    let step = state.step(&attempt.step_id)?;
    if attempt.kind == AttemptKind::Compensation {
        let invocation = step.rec.compensation.as_ref()?.invocation.clone()?;
        return start_of(state, attempt.clone(), invocation, false);
    }
    let invocation = match &step.rec.invocation {
        Some(invocation) => invocation.clone(),
        None => Arc::new(invocation_of(state, &attempt.step_id).ok()?),
    };
    let queued = step.rec.status == StepStatus::Queued;
    start_of(state, attempt.clone(), invocation, queued)
}

/// The start of `attempt` with `invocation`, as the engine needs it.
fn start_of(
    state: &PlanState,
    attempt: AttemptId,
    mut invocation: Arc<Invocation>,
    queued: bool,
) -> Option<StartAttempt> {
    let step = state.step(&attempt.step_id)?;
    // An invocation recorded before the gate's feedback was part of it: that build sent the
    // step record's, which stays unchanged while the attempt is in flight, so it is what the
    // attempt got. (For any invocation recorded since, the two are equal.) Copied only then:
    // otherwise the start shares the invocation its event and the step's record hold.
    if invocation.gate_feedback.is_none() && attempt.kind == AttemptKind::Step {
        if let Some(feedback) = step.rec.gate_feedback.as_deref() {
            Arc::make_mut(&mut invocation).gate_feedback = Some(feedback.clone());
        }
    }
    let (idempotency_key, timeout_ms) = match attempt.kind {
        AttemptKind::Step => (
            crate::idempotency_key(&state.plan_id, &attempt.step_id, step.rec.run),
            step.def.timeout_ms,
        ),
        AttemptKind::Compensation => (
            crate::compensation_key(&state.plan_id, &attempt.step_id, step.rec.run),
            step.def.compensate.as_ref().and_then(|c| c.timeout_ms),
        ),
    };
    Some(StartAttempt {
        idempotency_key,
        run: step.rec.run,
        timeout_ms,
        query: state.query.clone(),
        queued,
        attempt,
        invocation,
    })
}

fn intervene(
    em: &mut Emitter<'_>,
    actor: &str,
    request: InterventionRequest,
) -> (Intervention, Option<Refusal>) {
    let mut record = Intervention {
        intervention_id: format!("iv-{}", em.state.seq + 1),
        plan_id: em.state.plan_id.clone(),
        kind: request.kind.type_name().to_owned(),
        step_id: request.kind.step_id(),
        request: request.kind.clone(),
        user: actor.to_owned(),
        reason: request.reason.clone(),
        created_at: em.now,
        status: InterventionStatus::Applied,
        error: None,
        plan_version: em.state.version,
        diff: Vec::new(),
        dry_run: request.dry_run,
    };
    let checked = match request.expected_version {
        Some(v) if v != em.state.version => Err(conflict(format!(
            "expected plan version {v}, but the plan is at version {}",
            em.state.version
        ))),
        _ => {
            let mut copy = em.state.clone();
            let by = intervention::By {
                user: actor,
                reason: request.reason.as_deref(),
                upgrade: request.upgrade.as_deref(),
            };
            intervention::mutate(&mut copy, &request.kind, em.now, &by).map(|()| {
                // An attempt the intervention ended (completed by hand, rerun) keeps no record
                // of what it was sent, as when it ends any other way.
                for s in &mut copy.steps {
                    if !s.rec.status.is_active() {
                        s.rec.invocation = None;
                    }
                }
                copy
            })
        }
    };
    match checked {
        Ok(after) => {
            record.diff = intervention::diff(em.state, &after);
            record.plan_version = after.version;
            if request.dry_run {
                record.intervention_id.clear();
                record.status = InterventionStatus::WouldApply;
            } else {
                // The applied intervention is a checkpoint of its own: restoring the latest
                // checkpoint then never silently undoes an operator's change.
                // The result is recorded as facts, so replay never re-runs the rules.
                let effect = crate::log::Effect::between(em.state, &after);
                em.emit(
                    actor,
                    EventKind::InterventionApplied {
                        intervention: Box::new(record.clone()),
                        effect: Some(Box::new(effect)),
                    },
                    Some(CheckpointTrigger::Intervention),
                );
                // Everything the intervention did is in its effect (only the log position and
                // time moved beyond it).
                debug_assert_eq!(
                    *em.state,
                    PlanState {
                        seq: em.state.seq,
                        updated_at: em.state.updated_at,
                        ..after
                    },
                    "an intervention's effect must reproduce what it did"
                );
            }
            (record, None)
        }
        Err(refusal) => {
            record.status = if request.dry_run {
                record.intervention_id.clear();
                InterventionStatus::WouldFail
            } else {
                InterventionStatus::Failed
            };
            record.error = Some(refusal.message.clone());
            if !request.dry_run {
                em.emit(
                    actor,
                    EventKind::InterventionFailed {
                        intervention: Box::new(record.clone()),
                    },
                    None,
                );
            }
            (record, Some(refusal))
        }
    }
}

fn outcome(em: &mut Emitter<'_>, id: AttemptId, result: StepResult) {
    if id.kind == AttemptKind::Compensation {
        return compensation_outcome(em, id, result);
    }
    if em.state.rolling_back() && em.state.is_live(&id) {
        return ended_by_rollback(em, id, &result);
    }
    let live = em.state.status != PlanStatus::Cancelled && em.state.is_live(&id);
    let kind = id.kind;
    let attempt = id.number;
    let step_id = id.step_id;
    let live = if live { em.state.step(&step_id) } else { None };
    let Some(step) = live else {
        let (outcome, error) = match &result {
            StepResult::Completed { .. } => ("completed", None),
            StepResult::Failed { error, .. } => ("failed", Some(error.clone())),
        };
        em.emit(
            SYSTEM_ACTOR,
            EventKind::StepResultIgnored {
                step_id,
                kind,
                attempt,
                outcome: outcome.into(),
                error,
            },
            None,
        );
        return;
    };
    let pause_after = step.def.pause_after;
    let policy = step.def.retry_policy();
    let run_attempts = step.rec.run_attempts;
    let gate = step.def.quality_gate.clone();
    let gate_retries = step.rec.gate_retries;
    // Scores are checked here, once for every executor: a score that is not a finite number
    // is the agent's fault and fails the step, naming the score.
    let result = match result {
        StepResult::Completed { output, scores } => match scores.map(Scores::check).transpose() {
            Ok(scores) => Ok((output, scores)),
            Err(e) => Err((format!("the agent reported invalid scores: {e}"), false)),
        },
        StepResult::Failed { error, retryable } => Err((error, retryable)),
    };
    match result {
        Ok((output, scores)) if gate.is_some() => {
            let gate = gate.unwrap_or_default();
            judge(
                em,
                step_id,
                attempt,
                output,
                scores.unwrap_or_default(),
                &gate,
                gate_retries,
            )
        }
        Ok((output, scores)) => {
            em.emit(
                SYSTEM_ACTOR,
                EventKind::StepCompleted {
                    step_id: step_id.clone(),
                    attempt,
                    output,
                    scores,
                },
                Some(CheckpointTrigger::Step),
            );
            if pause_after && em.state.status == PlanStatus::Running {
                em.emit(
                    SYSTEM_ACTOR,
                    EventKind::PlanPaused {
                        reason: PauseReason::Breakpoint,
                        mode: PauseMode::Boundary,
                        step_id: Some(step_id),
                        resume_at: None,
                        note: Some("pause_after".into()),
                    },
                    Some(CheckpointTrigger::Pause),
                );
            }
        }
        Err((error, retryable)) => {
            if retryable && run_attempts < policy.max_attempts {
                let retry_at = em.now + policy.backoff_micros(run_attempts + 1);
                em.emit(
                    SYSTEM_ACTOR,
                    EventKind::StepFailed {
                        step_id,
                        attempt,
                        error,
                        retry_at: Some(retry_at),
                    },
                    None,
                );
            } else {
                fail_step(em, step_id, attempt, error);
            }
        }
    }
}

/// The step's attempt failed for good: the step fails, and with it a running or paused plan.
fn fail_step(em: &mut Emitter<'_>, step_id: String, attempt: u32, error: String) {
    em.emit(
        SYSTEM_ACTOR,
        EventKind::StepFailed {
            step_id: step_id.clone(),
            attempt,
            error: error.clone(),
            retry_at: None,
        },
        Some(CheckpointTrigger::Step),
    );
    if em.state.status.is_active() {
        fail_plan(em, step_id, error);
    }
}

/// The plan fails because `step_id` did. Every review still open is voided in the same event:
/// a plan that has ended asks nobody for a decision, and its timers no longer run.
fn fail_plan(em: &mut Emitter<'_>, step_id: String, error: String) {
    let voided_reviews = em
        .state
        .reviews
        .iter()
        .filter(|r| r.is_open())
        .map(|r| r.review_id.clone())
        .collect();
    // What a rollback compensates is decided before the failure ends the steps in flight.
    let rolls_back =
        em.state.on_failure == plan::OnFailure::Rollback && em.state.rollback.is_none();
    let order = if rolls_back {
        rollback::order(em.state)
    } else {
        Vec::new()
    };
    em.emit(
        SYSTEM_ACTOR,
        EventKind::PlanFailed {
            step_id,
            error,
            voided_reviews,
        },
        None,
    );
    if rolls_back {
        start_rollback(em, SYSTEM_ACTOR, RollbackEnd::Failed, order);
    }
}

/// Starts (or continues) a rollback over `order`: attempts of steps still in flight are told
/// to stop, and no compensation starts before every one of them has ended (its report, or its
/// lost lease, records it interrupted: its outcome is unknown and its compensation sees a null
/// `this.output`); then the plan runs the compensations one at a time.
fn start_rollback(em: &mut Emitter<'_>, actor: &str, then: RollbackEnd, order: Vec<String>) {
    em.stops.extend(
        em.state
            .live_attempts()
            .into_iter()
            .filter(|a| a.kind == AttemptKind::Step),
    );
    em.emit(actor, EventKind::RollbackStarted { then, order }, None);
}

/// The report of a step's attempt stopped by a rollback: the attempt has ended, with an outcome
/// the rollback does not use (its compensation sees a null `this.output`). It is recorded
/// interrupted, and the result it brought is kept in the log as ignored.
fn ended_by_rollback(em: &mut Emitter<'_>, id: AttemptId, result: &StepResult) {
    let (outcome, error) = match result {
        StepResult::Completed { .. } => ("completed", None),
        StepResult::Failed { error, .. } => ("failed", Some(error.clone())),
    };
    em.emit(
        SYSTEM_ACTOR,
        EventKind::StepInterrupted {
            step_id: id.step_id.clone(),
            kind: id.kind,
            attempt: id.number,
            cause: "rollback".into(),
        },
        None,
    );
    em.emit(
        SYSTEM_ACTOR,
        EventKind::StepResultIgnored {
            step_id: id.step_id,
            kind: id.kind,
            attempt: id.number,
            outcome: outcome.into(),
            error,
        },
        None,
    );
}

/// The record a compensation's templates read as `this`: the compensated step's output (null
/// when its outcome is unknown), error and attempts.
fn this_of(step: &crate::state::Step) -> Value {
    let output = if step.rec.status == StepStatus::Completed {
        step.rec.output.clone().unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    serde_json::json!({
        "step_id": step.def.step_id,
        "status": step.rec.status,
        "output": output,
        "error": step.rec.error,
        "attempts": step.rec.attempts,
    })
}

/// What a compensation attempt of `step_id` is sent.
fn compensation_invocation(state: &PlanState, step_id: &str) -> Result<Invocation, String> {
    let step = state
        .step(step_id)
        .ok_or_else(|| format!("no step {step_id}"))?;
    let comp = step
        .def
        .compensate
        .as_ref()
        .ok_or_else(|| format!("step {step_id} has no compensate"))?;
    let params = if expr::has_templates(&comp.params) {
        let mut ctx = state.template_context();
        if let Value::Object(m) = &mut ctx {
            m.insert("this".into(), this_of(step));
        }
        expr::render(&comp.params, &ctx)?
    } else {
        comp.params.clone()
    };
    Ok(Invocation {
        action: comp.action.clone(),
        agent_type: comp.agent_type.clone(),
        params,
        gate_feedback: None,
    })
}

/// Runs the rollback on: one compensation at a time, the next once the one before completed;
/// when none is left, the plan takes its final state.
fn advance_rollback(em: &mut Emitter<'_>, starts: Starts<'_>) {
    if em.state.running_count() > 0 {
        return;
    }
    let Some(r) = &em.state.rollback else {
        return;
    };
    let then = r.then;
    let Some(next) = r.pending.first().cloned() else {
        em.emit(SYSTEM_ACTOR, EventKind::RollbackCompleted { then }, None);
        return;
    };
    if matches!(starts, Starts::None) {
        return;
    }
    let Some(step) = em.state.step(&next) else {
        return;
    };
    let comp = step.rec.compensation.clone().unwrap_or_default();
    if comp.retry_at.is_some_and(|t| t > em.now) {
        return;
    }
    let attempt = comp.attempts + 1;
    let id = AttemptId {
        step_id: next.clone(),
        kind: AttemptKind::Compensation,
        number: attempt,
    };
    let agent_type = step
        .def
        .compensate
        .as_ref()
        .map(|c| c.agent_type.clone())
        .unwrap_or_default();
    let route = starts.route(&agent_type);
    let invocation = match (route, compensation_invocation(em.state, &next)) {
        (Route::Missing, _) => Err(no_executor(&agent_type)),
        (_, result) => result,
    };
    match invocation {
        Ok(invocation) => {
            let invocation = Arc::new(invocation);
            em.emit(
                SYSTEM_ACTOR,
                EventKind::CompensationStarted {
                    step_id: next,
                    attempt,
                    invocation: invocation.clone(),
                },
                None,
            );
            em.starts.extend(start_of(em.state, id, invocation, false));
        }
        // What cannot be sent fails the compensation for good, as its executor would.
        Err(error) => {
            em.emit(
                SYSTEM_ACTOR,
                EventKind::CompensationFailed {
                    step_id: next.clone(),
                    attempt,
                    error: error.clone(),
                    retry_at: None,
                },
                None,
            );
            em.emit(
                SYSTEM_ACTOR,
                EventKind::RollbackFailed {
                    step_id: next,
                    error,
                    then,
                },
                None,
            );
        }
    }
}

/// A compensation attempt reported: it completes, is tried again by its policy, or stops the
/// rollback.
fn compensation_outcome(em: &mut Emitter<'_>, id: AttemptId, result: StepResult) {
    let live = em.state.is_live(&id);
    let step = if live {
        em.state.step(&id.step_id)
    } else {
        None
    };
    let Some(step) = step else {
        let (outcome, error) = match &result {
            StepResult::Completed { .. } => ("completed", None),
            StepResult::Failed { error, .. } => ("failed", Some(error.clone())),
        };
        em.emit(
            SYSTEM_ACTOR,
            EventKind::StepResultIgnored {
                step_id: id.step_id,
                kind: id.kind,
                attempt: id.number,
                outcome: outcome.into(),
                error,
            },
            None,
        );
        return;
    };
    let policy = step
        .def
        .compensate
        .as_ref()
        .map_or(plan::Compensate::DEFAULT_RETRY, |c| c.retry_policy());
    let run_attempts = step.rec.compensation.as_ref().map_or(0, |c| c.run_attempts);
    let then = em
        .state
        .rollback
        .as_ref()
        .map_or(RollbackEnd::Failed, |r| r.then);
    match result {
        StepResult::Completed { output, .. } => em.emit(
            SYSTEM_ACTOR,
            EventKind::CompensationCompleted {
                step_id: id.step_id,
                attempt: id.number,
                output,
            },
            Some(CheckpointTrigger::Step),
        ),
        StepResult::Failed { error, retryable } => {
            if retryable && run_attempts < policy.max_attempts {
                let retry_at = em.now + policy.backoff_micros(run_attempts + 1);
                em.emit(
                    SYSTEM_ACTOR,
                    EventKind::CompensationFailed {
                        step_id: id.step_id,
                        attempt: id.number,
                        error,
                        retry_at: Some(retry_at),
                    },
                    None,
                );
            } else {
                em.emit(
                    SYSTEM_ACTOR,
                    EventKind::CompensationFailed {
                        step_id: id.step_id.clone(),
                        attempt: id.number,
                        error: error.clone(),
                        retry_at: None,
                    },
                    None,
                );
                em.emit(
                    SYSTEM_ACTOR,
                    EventKind::RollbackFailed {
                        step_id: id.step_id,
                        error,
                        then,
                    },
                    None,
                );
            }
        }
    }
}

/// A gated step's attempt succeeded: its gate judges the scores (`gate_evaluated`), and the
/// verdict completes the step, retries it, holds it for review or fails it, all in the same
/// decision, so a passing gate costs no extra commit.
fn judge(
    em: &mut Emitter<'_>,
    step_id: String,
    attempt: u32,
    output: Value,
    scores: Scores,
    gate: &gate::QualityGate,
    gate_retries: u32,
) {
    let verdict = gate::verdict(gate, &scores);
    em.emit(
        SYSTEM_ACTOR,
        EventKind::GateEvaluated {
            step_id: step_id.clone(),
            attempt,
            scores: scores.clone(),
            verdict: verdict.kind(),
            failed: verdict.failed.clone(),
        },
        None,
    );
    let mut why = format!("quality gate failed: {}", verdict.summary());
    let mut action = gate::next(gate, &verdict, gate_retries);
    // An attempt that ran on after its plan failed: nobody is asked to review a plan that has
    // ended, so the verdict fails the step instead (`retry_step` runs it again).
    if action == GateAction::Review && em.state.status.is_terminal() {
        action = GateAction::Fail;
        why = format!(
            "{why}; no review opens in a plan that is {}",
            em.state.status.as_str()
        );
    }
    match action {
        GateAction::Complete => {
            let pause_after = em.state.step(&step_id).is_some_and(|s| s.def.pause_after);
            em.emit(
                SYSTEM_ACTOR,
                EventKind::StepCompleted {
                    step_id: step_id.clone(),
                    attempt,
                    output,
                    scores: Some(scores),
                },
                Some(CheckpointTrigger::Step),
            );
            if pause_after && em.state.status == PlanStatus::Running {
                em.emit(
                    SYSTEM_ACTOR,
                    EventKind::PlanPaused {
                        reason: PauseReason::Breakpoint,
                        mode: PauseMode::Boundary,
                        step_id: Some(step_id),
                        resume_at: None,
                        note: Some("pause_after".into()),
                    },
                    Some(CheckpointTrigger::Pause),
                );
            }
        }
        GateAction::Retry => {
            em.emit(
                SYSTEM_ACTOR,
                EventKind::StepFailed {
                    step_id: step_id.clone(),
                    attempt,
                    error: why.clone(),
                    retry_at: None,
                },
                None,
            );
            let request = InterventionRequest {
                kind: InterventionKind::RetryStep {
                    step_id,
                    compensation: false,
                },
                expected_version: None,
                reason: Some(why),
                dry_run: false,
                upgrade: None,
            };
            intervene(em, GATE_USER, request);
        }
        GateAction::Review => {
            let deadline = gate
                .review
                .timeout_ms
                .map(|ms| em.now + (ms as i64).saturating_mul(1_000));
            em.emit(
                SYSTEM_ACTOR,
                EventKind::ReviewOpened {
                    review_id: review_id(em.state.seq + 1),
                    step_id: step_id.clone(),
                    attempt,
                    scores,
                    failed: verdict.failed,
                    deadline,
                    output,
                    quorum: gate.review.quorum.max(1),
                },
                Some(CheckpointTrigger::Step),
            );
            if em.state.status == PlanStatus::Running {
                em.emit(
                    SYSTEM_ACTOR,
                    EventKind::PlanPaused {
                        reason: PauseReason::ReviewRequired,
                        mode: PauseMode::Boundary,
                        step_id: Some(step_id),
                        resume_at: None,
                        note: None,
                    },
                    Some(CheckpointTrigger::Pause),
                );
            }
        }
        GateAction::Fail => fail_step(em, step_id, attempt, why),
    }
}

/// Records the `on_timeout` decision, by `system:timeout`, of every open review whose deadline
/// has come.
fn expire_reviews(em: &mut Emitter<'_>) {
    let expired: Vec<(String, u32, OnTimeout, Option<u64>)> = em
        .state
        .reviews
        .iter()
        .filter(|r| r.is_open() && r.deadline.is_some_and(|d| d <= em.now))
        .map(|r| {
            let policy = em
                .state
                .step(&r.step_id)
                .and_then(|s| s.def.quality_gate.as_ref())
                .map(|g| (g.review.on_timeout, g.review.timeout_ms))
                .unwrap_or((OnTimeout::Reject, None));
            (r.step_id.clone(), r.attempt, policy.0, policy.1)
        })
        .collect();
    for (step_id, attempt, on_timeout, timeout_ms) in expired {
        let kind = match on_timeout {
            OnTimeout::Approve => InterventionKind::ApproveStep {
                step_id,
                attempt: Some(attempt),
                output: None,
            },
            OnTimeout::Reject => InterventionKind::RejectStep {
                step_id,
                attempt: Some(attempt),
                retry: false,
            },
        };
        let reason = match timeout_ms {
            Some(ms) => format!("no decision within {ms} ms"),
            None => "no decision before the deadline".to_owned(),
        };
        let request = InterventionRequest {
            kind,
            expected_version: None,
            reason: Some(reason),
            dry_run: false,
            upgrade: None,
        };
        intervene(em, TIMEOUT_USER, request);
    }
}

/// A plan paused because a review was required resumes by itself once no review is open.
fn resume_after_reviews(em: &mut Emitter<'_>) {
    if em.state.status == PlanStatus::Paused
        && em.state.pause_reason == Some(PauseReason::ReviewRequired)
        && !em.state.has_open_review()
    {
        em.emit(
            SYSTEM_ACTOR,
            EventKind::PlanResumed {
                reason: Some("the last open review closed".into()),
            },
            None,
        );
    }
}

/// Starts what can start, skips what its condition rules out, stops at breakpoints, completes
/// a finished plan, and says when a paused plan has drained. With `start_steps` false it stops
/// before the ready steps: what to do with them is left to the process that will run them.
fn advance(em: &mut Emitter<'_>, starts: Starts<'_>) {
    if em.state.rolling_back() {
        match em.state.status {
            PlanStatus::Running => advance_rollback(em, starts),
            PlanStatus::Paused if !em.state.drained && em.state.running_count() == 0 => {
                em.emit(SYSTEM_ACTOR, EventKind::PlanDrained {}, None);
            }
            _ => {}
        }
        return;
    }
    'rescan: loop {
        match em.state.status {
            PlanStatus::Running => {}
            PlanStatus::Paused => {
                if !em.state.drained && em.state.running_count() == 0 {
                    em.emit(SYSTEM_ACTOR, EventKind::PlanDrained {}, None);
                }
                return;
            }
            _ => return,
        }
        // Only the live steps are looked at: the settled ones before them are completed, the
        // fresh ones after them pending, none of them in flight or failed (see `Steps`).
        let live = em.state.steps.live();
        let all_satisfy = live.end == em.state.steps.len()
            && em.state.steps[live.clone()]
                .iter()
                .all(|s| s.rec.status.satisfies());
        if all_satisfy {
            em.emit(SYSTEM_ACTOR, EventKind::PlanCompleted {}, None);
            return;
        }
        // A failed step fails the plan. Outcomes fail it at once; this catches a plan resumed
        // with a failed step it got back from a checkpoint (restore, fork), which would
        // otherwise run forever with nothing to run.
        if let Some(s) = em.state.steps[live]
            .iter()
            .find(|s| s.rec.status == StepStatus::Failed)
        {
            let step_id = s.def.step_id.clone();
            let error = s.rec.error.clone().unwrap_or_else(|| "failed".into());
            fail_plan(em, step_id, error);
            return;
        }
        if matches!(starts, Starts::None) {
            return;
        }
        let mut running = em.state.running_count();
        let max = em.state.max_parallel as usize;
        if running >= max {
            return;
        }
        // Every ready step past the first `max - running` would wait anyway: each one taken
        // below either starts (one more running), or rescans, or ends the decision. Of the
        // fresh steps only the first can be ready.
        let ready: Vec<usize> = {
            let map = em.state.satisfied();
            em.state
                .steps
                .maybe_ready()
                .filter(|&i| {
                    let rec = &em.state.steps[i].rec;
                    rec.status == StepStatus::Pending
                        && rec.retry_at.is_none_or(|t| t <= em.now)
                        && em.state.deps_satisfied(i, &map)
                })
                .take(max - running)
                .collect()
        };
        for i in ready {
            if running >= max {
                return;
            }
            let step = &em.state.steps[i];
            let step_id = step.def.step_id.clone();
            if let Some(when) = step.def.when.clone() {
                match expr::eval_condition(&when, &em.state.template_context()) {
                    Ok(true) => {}
                    Ok(false) => {
                        em.emit(
                            SYSTEM_ACTOR,
                            EventKind::StepSkipped {
                                step_id,
                                reason: format!("condition `{when}` is false"),
                            },
                            Some(CheckpointTrigger::Step),
                        );
                        continue 'rescan;
                    }
                    Err(e) => {
                        fail_unstarted(em, i, format!("condition `{when}` failed: {e}"));
                        return;
                    }
                }
            }
            let step = &em.state.steps[i];
            if step.def.pause_before && !step.rec.breakpoint_passed {
                em.emit(
                    SYSTEM_ACTOR,
                    EventKind::PlanPaused {
                        reason: PauseReason::Breakpoint,
                        mode: PauseMode::Boundary,
                        step_id: Some(step_id),
                        resume_at: None,
                        note: Some("pause_before".into()),
                    },
                    Some(CheckpointTrigger::Pause),
                );
                continue 'rescan;
            }
            let route = starts.route(&step.def.agent_type);
            if route == Route::Missing {
                let error = no_executor(&step.def.agent_type);
                fail_unstarted(em, i, error);
                return;
            }
            // The params are rendered now, against the outputs the step may see, and recorded
            // with the start: a template that cannot render fails the step instead.
            let invocation = match invocation_of(em.state, &step_id) {
                Ok(invocation) => Arc::new(invocation),
                Err(error) => {
                    fail_unstarted(em, i, error);
                    return;
                }
            };
            let step = &em.state.steps[i];
            let attempt = AttemptId::step(step_id, step.rec.attempts + 1);
            let run = step.rec.run;
            let queued = route == Route::Queue;
            em.emit(
                SYSTEM_ACTOR,
                EventKind::StepStarted {
                    step_id: attempt.step_id.clone(),
                    kind: AttemptKind::Step,
                    attempt: attempt.number,
                    run,
                    queued,
                    invocation: Some(invocation.clone()),
                },
                None,
            );
            let start = start_of(em.state, attempt, invocation, queued);
            em.starts.extend(start);
            running += 1;
        }
        return;
    }
}

/// Fails `steps[index]` before any attempt of it starts (its condition, template or agent type
/// cannot be used), without retry: trying again cannot help. The plan fails with it.
fn fail_unstarted(em: &mut Emitter<'_>, index: usize, error: String) {
    // Steps start only in a running plan, so `fail_step` fails the plan too.
    let step = &em.state.steps[index];
    let (step_id, attempt) = (step.def.step_id.clone(), step.rec.attempts);
    fail_step(em, step_id, attempt, error);
}
