//! `cairn run` and `cairn validate`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::{EventKind, Format, PauseMode, PauseReason, Plan, PlanState, PlanStatus};
use cairn_engine::config::Config;
use cairn_engine::executor::Registry;
use cairn_engine::{Engine, EngineError, EngineOptions, Notice};
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};

use crate::progress::Progress;
use crate::{exit, Fail};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The plan document (JSON or YAML).
    #[arg(required_unless_present = "resume", conflicts_with = "resume")]
    plan_file: Option<PathBuf>,
    /// Continue a paused or interrupted plan of the store instead of registering a new one.
    #[arg(long, value_name = "PLAN_ID")]
    resume: Option<String>,
    /// The SQLite database file.
    #[arg(long, default_value = "cairn.db", env = "CAIRN_DB")]
    db: PathBuf,
    /// The configuration file (default: ./cairn.toml, else cairn.toml beside the plan file).
    #[arg(long, env = "CAIRN_CONFIG")]
    config: Option<PathBuf>,
    /// Register the plan under this id instead of the document's own.
    #[arg(long)]
    plan_id: Option<String>,
    /// No live display, even on a terminal.
    #[arg(long, short)]
    quiet: bool,
    /// Print the final state with every step's output as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// The user named in events this process writes (`--user`, else the OS user).
pub fn user() -> String {
    crate::user()
}

/// Reads and validates a plan file.
pub fn read_plan(path: &Path) -> Result<Plan, Fail> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fail::input(format!("cannot read {}: {e}", path.display())))?;
    let name = path.to_string_lossy();
    Plan::parse(&text, Format::guess(&name, &text)).map_err(|invalid| {
        let mut msg = format!("{} is not a valid plan:", path.display());
        for f in &invalid.faults {
            msg.push_str(&format!("\n  - {f}"));
        }
        Fail::input(msg)
    })
}

pub fn validate(path: &Path) -> Result<u8, Fail> {
    let plan = read_plan(path)?;
    println!(
        "{}: valid plan{} with {} step{}",
        path.display(),
        plan.plan_id
            .as_deref()
            .map(|id| format!(" {id}"))
            .unwrap_or_default(),
        plan.steps.len(),
        if plan.steps.len() == 1 { "" } else { "s" }
    );
    Ok(exit::OK)
}

/// Finds the configuration: the explicit file, else ./cairn.toml, else cairn.toml beside the plan.
pub fn load_config(explicit: Option<&Path>, plan_file: Option<&Path>) -> Result<Config, Fail> {
    find_config(explicit, plan_file).map(|(c, _)| c)
}

/// The configuration and the file it came from, if any.
pub fn find_config(
    explicit: Option<&Path>,
    plan_file: Option<&Path>,
) -> Result<(Config, Option<PathBuf>), Fail> {
    match Config::discover(explicit, plan_file) {
        Ok(Some((path, config))) => Ok((config, Some(path))),
        Ok(None) => Ok((Config::default(), None)),
        Err(e) => Err(Fail::input(e.to_string())),
    }
}

/// Refuses a plan whose agent types have no executor, before anything starts.
pub fn check_agents<'a>(
    steps: impl IntoIterator<Item = &'a cairn_core::StepDef>,
    registry: &Registry,
) -> Result<(), Fail> {
    let mut missing: Vec<(&str, &str)> = steps
        .into_iter()
        .filter(|s| !registry.contains(&s.agent_type))
        .map(|s| (s.step_id.as_str(), s.agent_type.as_str()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    missing.sort_by_key(|(_, a)| *a);
    let mut msg = String::from("no executor is configured for:");
    for (step, agent) in &missing {
        msg.push_str(&format!("\n  - step {step}: agent type {agent:?}"));
    }
    let agent = missing[0].1;
    msg.push_str(&format!(
        "\nconfigure each in cairn.toml (next to the plan or in the current directory, or pass --config), e.g.\n\n  [agents.{agent}]\n  executor = \"command\"            # or \"http\" with url = \"http://127.0.0.1:9000/run\"\n  command = [\"python3\", \"agents/{agent}.py\"]\n\nor use a builtin agent type: builtin.echo, builtin.sleep, builtin.fail"
    ));
    Err(Fail::input(msg))
}

pub use crate::store::open_store;

pub async fn run(args: RunArgs) -> Result<u8, Fail> {
    let (config, config_path) = find_config(args.config.as_deref(), args.plan_file.as_deref())?;
    let registry = config.registry();
    // What `cairn run --resume` needs besides the plan id, for the hints printed below: the
    // store, and the configuration if one was used (it may have been found next to the plan).
    let resume_flags = match &config_path {
        Some(p) => format!("--db {} --config {}", args.db.display(), p.display()),
        None => format!("--db {}", args.db.display()),
    };
    let plan = match &args.plan_file {
        Some(path) => {
            let mut plan = read_plan(path)?;
            if let Some(id) = &args.plan_id {
                plan.plan_id = Some(id.clone());
                plan.validate().map_err(|e| Fail::input(e.to_string()))?;
            }
            check_agents(plan.steps.iter().map(|s| &**s), &registry)?;
            Some(plan)
        }
        None => None,
    };
    let store = open_store(&args.db, true)?;
    let engine = Engine::open(
        store,
        registry.clone(),
        EngineOptions {
            recover: false,
            ..EngineOptions::default()
        },
    )
    .await?;
    let user = user();
    let plan_id = match plan {
        Some(plan) => {
            let id = plan.plan_id.clone();
            match engine.register(plan, &user).await {
                Ok(state) => state.plan_id,
                Err(EngineError::PlanExists(_)) => {
                    let id = id.unwrap_or_default();
                    let existing = engine.state(&id).await?;
                    return Err(Fail::input(format!(
                        "plan {id} already exists in {} ({}); continue it with `cairn run --resume {id} {resume_flags}`, or run the file again under another id with --plan-id",
                        args.db.display(),
                        existing.status.as_str(),
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => args.resume.clone().unwrap_or_default(),
    };
    let result = drive(&engine, &plan_id, &args, &registry, &user, &resume_flags).await;
    engine.shutdown().await;
    result
}

async fn drive(
    engine: &Engine,
    plan_id: &str,
    args: &RunArgs,
    registry: &Registry,
    user: &str,
    resume_flags: &str,
) -> Result<u8, Fail> {
    let started = Instant::now();
    // Listen for Ctrl-C before any step can start, so none is ever missed. Agents run in process
    // groups of their own: the terminal's SIGINT reaches cairn only, and cairn decides.
    let mut interrupts = signal(SignalKind::interrupt()).map_err(|e| Fail {
        code: exit::FAILED,
        message: format!("cannot listen for Ctrl-C: {e}"),
    })?;
    let state = engine.state(plan_id).await?;
    check_agents(state.steps.iter().map(|s| &*s.def), registry)?;
    let mut sub = engine.subscribe_plan(plan_id, None);
    // The newest event the loop below has shown. A plan of instant steps may settle before the
    // loop first looks at it: its events are still shown (the rollback's lines among them)
    // before the loop ends.
    let mut shown = state.seq;
    engine.recover_plan(plan_id).await?;
    let state = engine.state(plan_id).await?;
    let mut progress = Progress::new(&state, args.quiet);
    let db = args.db.display().to_string();
    match state.status {
        PlanStatus::Idle => {
            progress.println(&format!(
                "plan {plan_id}: {} steps, store {db}",
                state.steps.len()
            ));
            engine.start(plan_id, user, None).await?;
        }
        PlanStatus::Paused if args.resume.is_some() => {
            progress.println(&format!("plan {plan_id}: resuming"));
            engine.resume(plan_id, user, None).await?;
        }
        PlanStatus::Running => {
            progress.println(&format!("plan {plan_id}: continuing after an interruption"))
        }
        _ => {}
    }
    let mut pausing = false;
    let mut said_waiting = false;
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    // The state as the loop knows it; refreshed when an event may settle the plan (and, once
    // the plan has ended, at each event: the steps still in flight report one by one).
    let mut known = engine.state(plan_id).await?;
    progress.reset(&known);
    let state = loop {
        if settled(&known) && shown >= known.seq {
            break known;
        }
        if known.status.is_terminal() && !said_waiting {
            said_waiting = true;
            let running = running_steps(&known);
            progress.println(&format!(
                "plan {plan_id} {}; waiting for the step{} still in flight to finish and be recorded ({}); Ctrl-C stops {} now",
                known.status.as_str(),
                if running.len() == 1 { "" } else { "s" },
                running.join(", "),
                if running.len() == 1 { "it" } else { "them" },
            ));
        }
        tokio::select! {
            notice = sub.next() => match notice {
                Some(Notice::Event(e)) => {
                    shown = shown.max(e.seq);
                    progress.on_event(&e);
                    if let EventKind::ReviewOpened { step_id, attempt, failed, .. } = &e.kind {
                        progress.println(&review_hint(plan_id, step_id, *attempt, failed, &db));
                    }
                    if let Some(line) = rollback_line(plan_id, &e.kind) {
                        progress.println(&line);
                    }
                    if cairn_engine::may_settle(&e.kind) || known.status.is_terminal() {
                        known = engine.state(plan_id).await?;
                        progress.reset(&known);
                    }
                }
                Some(Notice::Lagged { .. }) => {
                    // What was missed cannot be shown: the state says where it ended.
                    known = engine.state(plan_id).await?;
                    shown = shown.max(known.seq);
                    progress.reset(&known);
                }
                None => return Err(Fail { code: exit::FAILED, message: "the engine stopped".into() }),
            },
            _ = ticker.tick(), if progress.is_live() => progress.tick(),
            _ = interrupts.recv() => {
                if !pausing {
                    pausing = true;
                    match engine.pause(plan_id, PauseMode::Boundary, None, user, Some("Ctrl-C".into())).await {
                        Ok(s) => {
                            let running = s.running_count();
                            progress.println(&format!(
                                "pausing plan {plan_id} (durable); {running} running step{} will finish first; Ctrl-C again to stop now",
                                if running == 1 { "" } else { "s" }
                            ));
                            known = s;
                            progress.reset(&known);
                            continue;
                        }
                        // The plan no longer runs (it failed, or a breakpoint paused it) and
                        // only its steps in flight are awaited: Ctrl-C stops them at once.
                        Err(EngineError::Refused { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                let (state, cut) = stop_now(engine, plan_id, user).await?;
                progress.reset(&state);
                progress.finish();
                if !cut.is_empty() {
                    eprintln!(
                        "interrupted: stopped {}, which will run again when the plan continues",
                        cut.join(", ")
                    );
                }
                return Ok(report(&state, started.elapsed().as_secs_f64(), &db, resume_flags));
            }
        }
    };
    progress.finish();
    if args.json {
        let view = cairn_core::view::PlanView::of(&state);
        let outputs: serde_json::Map<String, serde_json::Value> = state
            .steps
            .iter()
            .filter_map(|s| Some((s.def.step_id.clone(), s.rec.output.clone()?)))
            .collect();
        let mut doc = serde_json::to_value(&view).unwrap_or_default();
        doc["outputs"] = serde_json::Value::Object(outputs);
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
    Ok(report(
        &state,
        started.elapsed().as_secs_f64(),
        &db,
        resume_flags,
    ))
}

/// Stops at once: the steps still running are recorded as interrupted and go back to pending,
/// durably, so none is shown running while nothing runs it, and stopping them kills their
/// agents' process groups. They run again when the plan continues. Answers the new state and
/// the steps it stopped.
async fn stop_now(
    engine: &Engine,
    plan_id: &str,
    user: &str,
) -> Result<(Arc<PlanState>, Vec<String>), Fail> {
    let cut = running_steps(&*engine.state(plan_id).await?);
    let state = match engine
        .interrupt(plan_id, user, Some("Ctrl-C: stopped at once".into()))
        .await
    {
        Ok(state) => state,
        // Still running (the pause did not land): an immediate pause interrupts as well.
        Err(EngineError::Refused { .. }) => {
            engine
                .pause(
                    plan_id,
                    PauseMode::Immediate,
                    None,
                    user,
                    Some("Ctrl-C".into()),
                )
                .await?
        }
        Err(e) => return Err(e.into()),
    };
    Ok((state, cut))
}

/// The line `cairn run` prints when a quality gate holds a step for review.
fn review_hint(
    plan_id: &str,
    step_id: &str,
    attempt: u32,
    failed: &[cairn_core::FailedCriterion],
    db: &str,
) -> String {
    let why = if failed.is_empty() {
        "every result of this step is reviewed".to_owned()
    } else {
        failed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    format!(
        "step {step_id} (attempt {attempt}) awaits review: {why}\n  {}",
        decide_commands(plan_id, step_id, attempt, db)
    )
}

/// The commands that decide the review of `step_id`'s `attempt`.
fn decide_commands(plan_id: &str, step_id: &str, attempt: u32, db: &str) -> String {
    format!(
        "approve: cairn reviews approve {plan_id} {step_id} --attempt {attempt} --db {db}\n  \
         reject:  cairn reviews reject {plan_id} {step_id} --attempt {attempt} --reason WHY [--retry] --db {db}"
    )
}

/// Nothing more will happen without an operator: the plan ended or paused, and no step of it
/// is still in flight (a failed plan's other steps finish and are recorded first).
fn settled(state: &PlanState) -> bool {
    cairn_core::view::is_settled(state) && state.running_count() == 0
}

fn running_steps(state: &PlanState) -> Vec<String> {
    state
        .steps
        .iter()
        .filter(|s| s.rec.status == cairn_core::StepStatus::Running)
        .map(|s| s.def.step_id.clone())
        .collect()
}

/// A line about the rollback for `cairn run`'s output: it started (with its compensations in
/// order), a compensation ended, the rollback ended.
fn rollback_line(plan_id: &str, kind: &EventKind) -> Option<String> {
    Some(match kind {
        EventKind::RollbackStarted { order, .. } if order.is_empty() => {
            format!("plan {plan_id}: rolling back; nothing to compensate")
        }
        EventKind::RollbackStarted { order, .. } => format!(
            "plan {plan_id}: rolling back {} step{}, in this order: {}",
            order.len(),
            if order.len() == 1 { "" } else { "s" },
            order.join(", ")
        ),
        EventKind::CompensationStarted {
            step_id, attempt, ..
        } => format!(
            "  compensating {step_id} ({}){}",
            match kind {
                EventKind::CompensationStarted { invocation, .. } => invocation.action.as_str(),
                _ => "",
            },
            if *attempt > 1 {
                format!(", attempt {attempt}")
            } else {
                String::new()
            }
        ),
        EventKind::CompensationCompleted { step_id, .. } => format!("  compensated {step_id}"),
        EventKind::CompensationFailed {
            step_id,
            error,
            retry_at: Some(_),
            ..
        } => format!("  compensation of {step_id} failed ({error}); it will be tried again"),
        EventKind::CompensationFailed { step_id, error, .. } => {
            format!("  compensation of {step_id} failed for good: {error}")
        }
        EventKind::RollbackCompleted { .. } => format!("plan {plan_id}: rolled back"),
        EventKind::RollbackFailed { step_id, .. } => format!(
            "plan {plan_id}: the rollback stopped at {step_id}; retry or skip that compensation (`cairn steps retry|skip {plan_id} {step_id} --compensation`) or continue with `cairn plans rollback {plan_id}`"
        ),
        _ => return None,
    })
}

/// What the plan's rollback did, if it had one: the steps compensated, or where it stopped and
/// how to go on. Answers whether there was one.
fn report_rollback(state: &PlanState, db: &str) -> bool {
    let Some(r) = &state.rollback else {
        return false;
    };
    let id = &state.plan_id;
    match r.status {
        cairn_core::rollback::RollbackStatus::Failed => {
            let next = r.pending.first().map(String::as_str).unwrap_or("?");
            eprintln!(
                "its rollback stopped: the compensation of {next} failed ({} still to compensate: {})",
                r.pending.len(),
                r.pending.join(", ")
            );
            eprintln!(
                "retry or skip it (`cairn steps retry|skip {id} {next} --compensation --db {db}`), or try the rest again with `cairn plans rollback {id} --db {db}`; then `cairn run --resume {id} --db {db}` runs them"
            );
        }
        _ if r.done.is_empty() => eprintln!("rolled back: nothing to compensate"),
        _ => eprintln!("rolled back: compensated {}", r.done.join(", ")),
    }
    true
}

fn report(state: &PlanState, secs: f64, db: &str, resume_flags: &str) -> u8 {
    let id = &state.plan_id;
    let done = state
        .steps
        .iter()
        .filter(|s| s.rec.status.satisfies())
        .count();
    let total = state.steps.len();
    match state.status {
        PlanStatus::Completed => {
            eprintln!("plan {id} completed: {done}/{total} steps in {secs:.2}s");
            exit::OK
        }
        PlanStatus::Failed => {
            eprintln!(
                "plan {id} failed: {}",
                state.failure.as_deref().unwrap_or("a step failed")
            );
            if report_rollback(state, db) {
                return exit::FAILED;
            }
            if let Some(step) = state
                .steps
                .iter()
                .find(|s| s.rec.status == cairn_core::StepStatus::Failed)
            {
                eprintln!(
                    "retry it with `cairn steps retry {id} {} --db {db}` (or skip it), then `cairn run --resume {id} {resume_flags}`",
                    step.def.step_id
                );
            }
            exit::FAILED
        }
        PlanStatus::Cancelled => {
            eprintln!("plan {id} was cancelled ({done}/{total} steps done)");
            report_rollback(state, db);
            exit::CANCELLED
        }
        _ if state.pause_reason == Some(PauseReason::ReviewRequired) => {
            let open: Vec<_> = state.reviews.iter().filter(|r| r.is_open()).collect();
            eprintln!(
                "plan {id} paused after {done}/{total} steps: {} step{} await{} review",
                open.len(),
                if open.len() == 1 { "" } else { "s" },
                if open.len() == 1 { "s" } else { "" },
            );
            for r in &open {
                eprintln!("  {}", decide_commands(id, &r.step_id, r.attempt, db));
            }
            eprintln!(
                "once the last review is decided the plan runs again; continue it with: cairn run --resume {id} {resume_flags}"
            );
            exit::PAUSED
        }
        _ => {
            let why = state
                .pause_reason
                .map(|r| {
                    serde_json::to_value(r)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            eprintln!(
                "plan {id} paused ({why}) after {done}/{total} steps; resume with: cairn run --resume {id} {resume_flags}"
            );
            exit::PAUSED
        }
    }
}
