//! `cairn plans|steps|checkpoints …`: the arguments, and what each command does with an
//! [`Operator`] (a local store or a server, with one code path for both) and the one renderer
//! ([`crate::render`]).

use std::path::PathBuf;

use cairn_core::view::PlanView;
use cairn_core::{PauseMode, PlanStatus, Timestamp};
use cairn_engine::CheckpointExport;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::operator::{Access, Operator};
use crate::render;
use crate::{exit, DbArgs, Fail};

#[derive(Subcommand, Debug)]
pub enum PlansCmd {
    /// Plans, newest first.
    List {
        #[command(flatten)]
        db: DbArgs,
        /// Only plans in this state (idle, running, paused, completed, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Plans per page (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue a listing from the cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// A plan's state and steps (and when a paused plan resumes by itself).
    Show {
        plan_id: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Register a plan file (JSON or YAML); it starts idle.
    Register {
        file: PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Marks an idle plan running (it runs on `cairn run --resume`).
    Start {
        plan_id: String,
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Pauses a running plan.
    Pause {
        plan_id: String,
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        reason: Option<String>,
        /// Interrupt running steps instead of letting them finish.
        #[arg(long)]
        immediate: bool,
        /// Resume by itself after this many seconds.
        #[arg(long, value_name = "SECONDS", conflicts_with = "resume_at")]
        resume_after: Option<u64>,
        /// Resume by itself at this time (RFC 3339, e.g. 2026-12-01T21:14:29Z).
        #[arg(long, value_name = "TIME")]
        resume_at: Option<String>,
    },
    /// Resumes a paused plan (it runs on `cairn run --resume`).
    Resume {
        plan_id: String,
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Cancels an idle, running or paused plan; with --rollback, first undoes what it did by
    /// running the compensations of its steps, newest start first.
    Cancel {
        plan_id: String,
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        reason: Option<String>,
        /// Roll back what the plan did: steps still running are stopped, then every step that
        /// ran and has a `compensate` is compensated, one at a time; the plan ends cancelled.
        #[arg(long)]
        rollback: bool,
        /// With --rollback: list the compensations it would run, in order, and change nothing.
        #[arg(long, requires = "rollback")]
        dry_run: bool,
    },
    /// Rolls back a failed or cancelled plan (or continues a rollback that stopped on a
    /// failed compensation): runs the compensations of its steps, newest start first.
    Rollback {
        plan_id: String,
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        reason: Option<String>,
        /// List the compensations it would run, in order, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Everything about a plan, as JSON.
    Snapshot {
        plan_id: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// A plan's event log, oldest first.
    Events {
        plan_id: String,
        #[command(flatten)]
        db: DbArgs,
        /// Only events with a greater seq.
        #[arg(long, default_value_t = 0, conflicts_with = "cursor")]
        after: u64,
        /// Continue from the cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
        /// Events per page (1 to 1000).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Keep printing events as they happen until the plan completes, fails or is cancelled
        /// (with --server).
        #[arg(long)]
        follow: bool,
    },
    /// Deletes a plan that is not running, with its whole history.
    Delete {
        plan_id: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// A plan's interventions (applied and refused), oldest first, with who made them.
    Interventions {
        plan_id: String,
        #[command(flatten)]
        db: DbArgs,
        /// Interventions per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue from the cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Every version of a plan's definition, with what made it (registration, intervention,
    /// restore), who and when.
    Versions {
        plan_id: String,
        #[command(flatten)]
        db: DbArgs,
        /// Print the definition at this version (as JSON) instead of the list.
        #[arg(long, value_name = "V")]
        show: Option<u64>,
    },
    /// What changed in a plan's definition between two versions: + added, - removed,
    /// ~ changed (before → after), ↕ moved.
    Diff {
        plan_id: String,
        #[command(flatten)]
        db: DbArgs,
        /// The version to compare from (default: the one before --to).
        #[arg(long, value_name = "V")]
        from: Option<u64>,
        /// The version to compare to (default: the latest).
        #[arg(long, value_name = "V")]
        to: Option<u64>,
    },
    /// Move a plan made from a template to another version of that template: the versions'
    /// diff is applied to the steps that have not started (refused, naming the step, where it
    /// would change, remove or move one that has).
    Upgrade {
        plan_id: String,
        /// The template version to move to.
        #[arg(long, value_name = "V")]
        template_version: u64,
        #[command(flatten)]
        iv: IvArgs,
    },
}

/// Options every intervention takes.
#[derive(clap::Args, Debug)]
pub struct IvArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Why (recorded in the audit trail).
    #[arg(long)]
    reason: Option<String>,
    /// Refuse unless the plan is at this version.
    #[arg(long)]
    expected_version: Option<u64>,
    /// Validate and print the diff without changing anything.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand, Debug)]
pub enum StepsCmd {
    /// Skip a pending, failed or awaiting_review step.
    Skip {
        plan_id: String,
        step_id: String,
        /// Skip the step's compensation that stopped a rollback; the rollback goes on.
        #[arg(long)]
        compensation: bool,
        #[command(flatten)]
        iv: IvArgs,
    },
    /// Run a failed, cancelled or completed step again.
    Retry {
        plan_id: String,
        step_id: String,
        /// Run the step's compensation that stopped a rollback again; the rollback goes on.
        #[arg(long)]
        compensation: bool,
        #[command(flatten)]
        iv: IvArgs,
    },
    /// Merge-patch a pending or failed step: --patch '{"params": {"q": "new"}}'.
    Modify {
        plan_id: String,
        step_id: String,
        /// A JSON object, or @FILE.
        #[arg(long)]
        patch: String,
        #[command(flatten)]
        iv: IvArgs,
    },
    /// Add a step: --step '{"step_id": "s9", "action": "a", "agent_type": "builtin.echo"}'.
    Add {
        plan_id: String,
        /// The step as a JSON object, or @FILE.
        #[arg(long)]
        step: String,
        #[arg(long, conflicts_with = "before")]
        after: Option<String>,
        #[arg(long)]
        before: Option<String>,
        #[command(flatten)]
        iv: IvArgs,
    },
    /// Remove a pending step no other step explicitly depends on.
    Remove {
        plan_id: String,
        step_id: String,
        #[command(flatten)]
        iv: IvArgs,
    },
    /// Reorder the pending steps: give all of them, in the new order.
    Reorder {
        plan_id: String,
        #[arg(required = true)]
        order: Vec<String>,
        #[command(flatten)]
        iv: IvArgs,
    },
    /// Run a step that has ended, and everything downstream of it, again.
    Rerun {
        plan_id: String,
        step_id: String,
        #[command(flatten)]
        iv: IvArgs,
    },
    /// Supply the result of a pending, queued, running or failed step by hand: the step completes
    /// with --output as if its agent had answered (a running attempt is stopped).
    Complete {
        plan_id: String,
        step_id: String,
        /// The step's output: any JSON value, or @FILE.
        #[arg(long)]
        output: String,
        #[command(flatten)]
        iv: IvArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum CheckpointsCmd {
    /// A plan's checkpoints, oldest first.
    List {
        plan_id: String,
        #[command(flatten)]
        db: DbArgs,
        /// Checkpoints per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue from the cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// A checkpoint with the state it implies.
    Show {
        plan_id: String,
        checkpoint_id: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Take a manual checkpoint.
    Create {
        plan_id: String,
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Restore a plan that is not running to a checkpoint (it ends up paused).
    Restore {
        plan_id: String,
        checkpoint_id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// A new paused plan whose state equals the checkpoint.
    Fork {
        plan_id: String,
        checkpoint_id: String,
        #[arg(long)]
        new_plan_id: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Write a checkpoint, with the state it implies, to a JSON file (or stdout).
    Export {
        plan_id: String,
        checkpoint_id: String,
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Create a paused plan from an exported checkpoint file.
    Import {
        file: PathBuf,
        #[arg(long)]
        new_plan_id: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// `--limit` of a listing: 1 to 1000, as over HTTP.
pub(crate) fn limit(limit: usize) -> Result<usize, Fail> {
    if limit == 0 || limit > 1000 {
        return Err(Fail::input("--limit must be between 1 and 1000"));
    }
    Ok(limit)
}

/// Prints a plan's state: its JSON, or the table.
/// A rollback's answer: its compensations in order, then (unless a dry run) the plan's state;
/// on a local store, how to run the compensations.
fn show_rollback(op: &Operator, db: &DbArgs, answer: &cairn_core::view::RollbackAnswer) {
    if db.json {
        render::json(answer);
        return;
    }
    render::out(&render::rollback(answer));
    if !answer.dry_run {
        render::out(&render::plan(&answer.plan));
        if !answer.compensations.is_empty() && op.is_local() {
            eprintln!(
                "its compensations run when a process drives the plan: {}",
                resume_command(&answer.plan, db)
            );
        }
    }
}

fn show(view: &PlanView, as_json: bool) {
    // The server's warnings (agent types nothing will run) go to stderr, whatever the format.
    for w in &view.warnings {
        eprintln!("warning: {w}");
    }
    if as_json {
        render::json(view);
    } else {
        render::out(&render::plan(view));
    }
}

/// After a local command that leaves steps to run: how to run them.
pub(crate) fn drive_hint(op: &Operator, db: &DbArgs, view: &PlanView) {
    if op.is_local() && !db.json {
        eprintln!(
            "its steps run when a process drives the plan: {}",
            resume_command(view, db)
        );
    }
}

/// The `cairn run --resume` command that drives `view`'s plan on `db`, with the configuration it
/// needs: `$CAIRN_CONFIG` when set; none when `./cairn.toml` (found by `run` itself) exists or
/// every agent type is a builtin; otherwise a `--config` for the user to fill in, so the hint
/// never fails for want of an executor.
pub(crate) fn resume_command(view: &PlanView, db: &DbArgs) -> String {
    let mut cmd = format!(
        "cairn run --resume {} --db {}",
        view.plan_id,
        db.db.display()
    );
    let needs_agents = view
        .steps
        .iter()
        .any(|s| !s.agent_type.starts_with("builtin."));
    match std::env::var("CAIRN_CONFIG") {
        Ok(path) if !path.is_empty() => cmd.push_str(&format!(" --config {path}")),
        _ if needs_agents && !std::path::Path::new("cairn.toml").is_file() => {
            cmd.push_str(" --config CAIRN_TOML (the file that maps its agent types)")
        }
        _ => {}
    }
    cmd
}

/// `--resume-after SECONDS` or `--resume-at TIME` as the moment to resume.
pub(crate) fn resume_at_from(
    seconds: Option<u64>,
    at: Option<&str>,
) -> Result<Option<Timestamp>, Fail> {
    if let Some(text) = at {
        let t: Timestamp = text
            .parse()
            .map_err(|e| Fail::input(format!("--resume-at: {e}")))?;
        return Ok(Some(t));
    }
    match seconds {
        None => Ok(None),
        Some(0) => Err(Fail::input("--resume-after must be at least 1 second")),
        Some(s) if s > 366 * 24 * 3600 => Err(Fail::input("--resume-after is more than a year")),
        Some(s) => Ok(Some(cairn_engine::now() + (s as i64) * 1_000_000)),
    }
}

fn parse_state(s: &str) -> Result<PlanStatus, Fail> {
    PlanStatus::parse(s).ok_or_else(|| {
        Fail::input(format!(
            "unknown state {s:?}; one of {}",
            PlanStatus::names()
        ))
    })
}

impl PlansCmd {
    pub fn db(&self) -> &DbArgs {
        match self {
            PlansCmd::List { db, .. }
            | PlansCmd::Show { db, .. }
            | PlansCmd::Register { db, .. }
            | PlansCmd::Start { db, .. }
            | PlansCmd::Pause { db, .. }
            | PlansCmd::Resume { db, .. }
            | PlansCmd::Cancel { db, .. }
            | PlansCmd::Rollback { db, .. }
            | PlansCmd::Snapshot { db, .. }
            | PlansCmd::Events { db, .. }
            | PlansCmd::Delete { db, .. }
            | PlansCmd::Interventions { db, .. }
            | PlansCmd::Versions { db, .. }
            | PlansCmd::Diff { db, .. } => db,
            PlansCmd::Upgrade { iv, .. } => &iv.db,
        }
    }
}

impl CheckpointsCmd {
    pub fn db(&self) -> &DbArgs {
        match self {
            CheckpointsCmd::List { db, .. }
            | CheckpointsCmd::Show { db, .. }
            | CheckpointsCmd::Create { db, .. }
            | CheckpointsCmd::Restore { db, .. }
            | CheckpointsCmd::Fork { db, .. }
            | CheckpointsCmd::Export { db, .. }
            | CheckpointsCmd::Import { db, .. } => db,
        }
    }
}

pub async fn plans(cmd: PlansCmd) -> Result<u8, Fail> {
    let cmd = match cmd {
        PlansCmd::Upgrade {
            plan_id,
            template_version,
            iv,
        } => {
            let body = json!({"type": "upgrade", "template_version": template_version});
            return send_intervention(plan_id, body, iv).await;
        }
        other => other,
    };
    // Arguments are checked before the store or the server is touched.
    if let PlansCmd::Events {
        follow: true, db, ..
    } = &cmd
    {
        if db.server.as_deref().is_none_or(str::is_empty) {
            return Err(Fail::input(
                "--follow needs a server to follow: add --server URL (or set CAIRN_SERVER)",
            ));
        }
    }
    let access = match &cmd {
        PlansCmd::List { .. }
        | PlansCmd::Show { .. }
        | PlansCmd::Snapshot { .. }
        | PlansCmd::Events { .. }
        | PlansCmd::Interventions { .. }
        | PlansCmd::Versions { .. }
        | PlansCmd::Diff { .. } => Access::Read,
        PlansCmd::Register { .. } => Access::Create,
        _ => Access::Change,
    };
    let op = Operator::open(cmd.db(), access).await?;
    match cmd {
        PlansCmd::List {
            db,
            state,
            limit: n,
            cursor,
        } => {
            let state = state.as_deref().map(parse_state).transpose()?;
            let page = op.plans(state, limit(n)?, cursor.as_deref()).await?;
            if db.json {
                render::json(&page);
            } else {
                render::out(&render::plans(&page));
            }
        }
        PlansCmd::Show { plan_id, db } => show(&op.plan(&plan_id).await?, db.json),
        PlansCmd::Register { file, db } => {
            let plan = crate::run::read_plan(&file)?;
            show(&op.register(plan).await?, db.json);
        }
        PlansCmd::Start {
            plan_id,
            db,
            reason,
        } => {
            let view = op.start(&plan_id, reason).await?;
            show(&view, db.json);
            drive_hint(&op, &db, &view);
        }
        PlansCmd::Pause {
            plan_id,
            db,
            reason,
            immediate,
            resume_after,
            resume_at,
        } => {
            let mode = if immediate {
                PauseMode::Immediate
            } else {
                PauseMode::Boundary
            };
            let resume_at = resume_at_from(resume_after, resume_at.as_deref())?;
            show(&op.pause(&plan_id, mode, resume_at, reason).await?, db.json);
        }
        PlansCmd::Resume {
            plan_id,
            db,
            reason,
        } => {
            let view = op.resume(&plan_id, reason).await?;
            show(&view, db.json);
            drive_hint(&op, &db, &view);
        }
        PlansCmd::Cancel {
            plan_id,
            db,
            reason,
            rollback: false,
            ..
        } => show(&op.cancel(&plan_id, reason).await?, db.json),
        PlansCmd::Cancel {
            plan_id,
            db,
            reason,
            rollback: true,
            dry_run,
        } => {
            let answer = op.cancel_and_rollback(&plan_id, dry_run, reason).await?;
            show_rollback(&op, &db, &answer);
        }
        PlansCmd::Rollback {
            plan_id,
            db,
            reason,
            dry_run,
        } => {
            let answer = op.rollback(&plan_id, dry_run, reason).await?;
            show_rollback(&op, &db, &answer);
        }
        PlansCmd::Snapshot { plan_id, .. } => render::json(&op.snapshot(&plan_id).await?),
        PlansCmd::Events {
            plan_id,
            db,
            after,
            cursor,
            limit: n,
            follow,
        } => {
            let after = match cursor.as_deref() {
                Some(c) => c
                    .parse()
                    .map_err(|_| Fail::input(format!("invalid cursor {c:?}")))?,
                None => after,
            };
            if follow {
                return follow_events(&op, &plan_id, after, db.json).await;
            }
            let page = op.events(&plan_id, after, limit(n)?).await?;
            if db.json {
                render::json(&page);
            } else {
                render::out(&render::events(&page));
            }
        }
        PlansCmd::Delete { plan_id, db } => {
            op.delete(&plan_id).await?;
            if !db.json {
                render::out(&format!("deleted plan {plan_id}\n"));
            }
        }
        PlansCmd::Interventions {
            plan_id,
            db,
            limit: n,
            cursor,
        } => {
            let page = op
                .interventions(&plan_id, limit(n)?, cursor.as_deref())
                .await?;
            if db.json {
                render::json(&page);
            } else {
                render::out(&render::interventions(&page));
            }
        }
        PlansCmd::Versions { plan_id, db, show } => match show {
            Some(v) => render::json(&op.plan_version(&plan_id, v).await?),
            None => {
                let list = op.plan_versions(&plan_id).await?;
                if db.json {
                    render::json(&list);
                } else {
                    render::out(&render::versions(&list));
                }
            }
        },
        PlansCmd::Diff {
            plan_id,
            db,
            from,
            to,
        } => {
            if from == Some(0) || to == Some(0) {
                return Err(Fail::input("versions count from 1"));
            }
            let diff = op.plan_diff(&plan_id, from, to).await?;
            if db.json {
                render::json(&diff);
            } else {
                render::out(&render::plan_diff(&diff));
            }
        }
        // Sent above, before a store was opened.
        PlansCmd::Upgrade { .. } => {}
    }
    Ok(exit::OK)
}

/// `plans events --follow` (over a server): events as they happen until the plan ends.
async fn follow_events(
    op: &Operator,
    plan_id: &str,
    after: u64,
    as_json: bool,
) -> Result<u8, Fail> {
    let Operator::Remote(c) = op else {
        return Err(Fail::input(
            "--follow needs a server to follow: add --server URL (or set CAIRN_SERVER)",
        ));
    };
    c.follow_events(plan_id, after, |e| {
        if as_json {
            render::out(&(serde_json::to_string(e).unwrap_or_default() + "\n"));
        } else {
            render::out(&render::event(e));
        }
        true
    })
    .await?;
    if !as_json {
        let state = c.plan(plan_id).await?;
        eprintln!("plan {plan_id} is {}", state.state.as_str());
    }
    Ok(exit::OK)
}

pub(crate) fn json_arg(text: &str, what: &str) -> Result<Value, Fail> {
    let body = match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Fail::input(format!("cannot read {path}: {e}")))?,
        None => text.to_owned(),
    };
    serde_json::from_str(&body).map_err(|e| Fail::input(format!("{what} is not valid JSON: {e}")))
}

pub async fn steps(cmd: StepsCmd) -> Result<u8, Fail> {
    let (plan_id, body, iv) = match cmd {
        StepsCmd::Skip {
            plan_id,
            step_id,
            compensation,
            iv,
        } => (
            plan_id,
            with_compensation(
                json!({"type": "skip_step", "step_id": step_id}),
                compensation,
            ),
            iv,
        ),
        StepsCmd::Retry {
            plan_id,
            step_id,
            compensation,
            iv,
        } => (
            plan_id,
            with_compensation(
                json!({"type": "retry_step", "step_id": step_id}),
                compensation,
            ),
            iv,
        ),
        StepsCmd::Remove {
            plan_id,
            step_id,
            iv,
        } => (
            plan_id,
            json!({"type": "remove_step", "step_id": step_id}),
            iv,
        ),
        StepsCmd::Rerun {
            plan_id,
            step_id,
            iv,
        } => (
            plan_id,
            json!({"type": "rerun_from", "step_id": step_id}),
            iv,
        ),
        StepsCmd::Complete {
            plan_id,
            step_id,
            output,
            iv,
        } => {
            let output = json_arg(&output, "--output")?;
            (
                plan_id,
                json!({"type": "complete_step", "step_id": step_id, "output": output}),
                iv,
            )
        }
        StepsCmd::Modify {
            plan_id,
            step_id,
            patch,
            iv,
        } => {
            let patch = json_arg(&patch, "--patch")?;
            (
                plan_id,
                json!({"type": "modify_step", "step_id": step_id, "patch": patch}),
                iv,
            )
        }
        StepsCmd::Add {
            plan_id,
            step,
            after,
            before,
            iv,
        } => {
            let step = json_arg(&step, "--step")?;
            let mut body = json!({"type": "add_step", "step": step});
            if let Some(a) = after {
                body["after"] = Value::String(a);
            }
            if let Some(b) = before {
                body["before"] = Value::String(b);
            }
            (plan_id, body, iv)
        }
        StepsCmd::Reorder { plan_id, order, iv } => (
            plan_id,
            json!({"type": "reorder_steps", "order": order}),
            iv,
        ),
    };
    send_intervention(plan_id, body, iv).await
}

/// Sends the intervention `body` with the options every intervention takes; prints the record
/// (or the refusal, exiting non-zero).
async fn send_intervention(plan_id: String, mut body: Value, iv: IvArgs) -> Result<u8, Fail> {
    if let Some(r) = &iv.reason {
        body["reason"] = Value::String(r.clone());
    }
    if let Some(v) = iv.expected_version {
        body["expected_version"] = Value::from(v);
    }
    if iv.dry_run {
        body["dry_run"] = Value::Bool(true);
    }
    let op = Operator::open(&iv.db, Access::Change).await?;
    match op.intervene(&plan_id, body).await? {
        Ok(record) => {
            if iv.db.json {
                render::json(&record);
            } else {
                render::out(&render::intervention(&record));
            }
            Ok(exit::OK)
        }
        Err(refused) => {
            if iv.db.json {
                if let Some(i) = &refused.record {
                    render::json(i);
                }
            }
            Err(Fail::input(format!("refused: {}", refused.message)))
        }
    }
}

pub async fn checkpoints(cmd: CheckpointsCmd) -> Result<u8, Fail> {
    let access = match &cmd {
        CheckpointsCmd::List { .. }
        | CheckpointsCmd::Show { .. }
        | CheckpointsCmd::Export { .. } => Access::Read,
        CheckpointsCmd::Import { .. } => Access::Create,
        _ => Access::Change,
    };
    let op = Operator::open(cmd.db(), access).await?;
    match cmd {
        CheckpointsCmd::List {
            plan_id,
            db,
            limit: n,
            cursor,
        } => {
            let page = op
                .checkpoints(&plan_id, limit(n)?, cursor.as_deref())
                .await?;
            if db.json {
                render::json(&page);
            } else {
                render::out(&render::checkpoints(&page));
            }
        }
        CheckpointsCmd::Show {
            plan_id,
            checkpoint_id,
            ..
        } => render::json(&op.checkpoint(&plan_id, &checkpoint_id).await?),
        CheckpointsCmd::Create { plan_id, label, db } => {
            let c = op.create_checkpoint(&plan_id, label).await?;
            if db.json {
                render::json(&c);
            } else {
                render::out(&render::checkpoint_created(&c));
            }
        }
        CheckpointsCmd::Restore {
            plan_id,
            checkpoint_id,
            reason,
            db,
        } => {
            show(
                &op.restore(&plan_id, &checkpoint_id, reason).await?,
                db.json,
            );
            if op.is_local() && !db.json {
                let view = op.plan(&plan_id).await?;
                eprintln!(
                    "restored to {checkpoint_id}; continue with: {}",
                    resume_command(&view, &db)
                );
            }
        }
        CheckpointsCmd::Fork {
            plan_id,
            checkpoint_id,
            new_plan_id,
            db,
        } => {
            let forked = op.fork(&plan_id, &checkpoint_id, new_plan_id).await?;
            show(&forked, db.json);
            if op.is_local() && !db.json {
                eprintln!("forked; run it with: {}", resume_command(&forked, &db));
            }
        }
        CheckpointsCmd::Export {
            plan_id,
            checkpoint_id,
            output,
            ..
        } => {
            let (engine, _) = op.engine("checkpoint export")?;
            let export = engine.export_checkpoint(&plan_id, &checkpoint_id).await?;
            let text = render::json_text(&export);
            match output {
                Some(path) => {
                    std::fs::write(&path, text).map_err(|e| Fail {
                        code: exit::FAILED,
                        message: format!("cannot write {}: {e}", path.display()),
                    })?;
                    eprintln!(
                        "exported {checkpoint_id} of plan {plan_id} to {}",
                        path.display()
                    );
                }
                None => render::out(&text),
            }
        }
        CheckpointsCmd::Import {
            file,
            new_plan_id,
            db,
        } => {
            let (engine, user) = op.engine("checkpoint import")?;
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Fail::input(format!("cannot read {}: {e}", file.display())))?;
            let export: CheckpointExport = serde_json::from_str(&text).map_err(|e| {
                Fail::input(format!(
                    "{} is not a cairn checkpoint export: {e}",
                    file.display()
                ))
            })?;
            let state = engine.import_checkpoint(export, new_plan_id, user).await?;
            show(&PlanView::of(&state), db.json);
        }
    }
    Ok(exit::OK)
}

/// `--compensation` on `steps skip|retry`: the intervention acts on the step's compensation.
fn with_compensation(mut body: Value, compensation: bool) -> Value {
    if compensation {
        body["compensation"] = json!(true);
    }
    body
}
