//! `cairn plans|steps|checkpoints …` on a local store, or over HTTP with `--server`
//! (`remote.rs`).
//!
//! These commands open the store with an engine that records decisions but runs no attempt:
//! a step they start (by resuming a plan, say) runs when `cairn run --resume` drives the plan.

use std::path::PathBuf;

use cairn_core::{InterventionRequest, PauseMode, PlanStatus};
use cairn_engine::{CheckpointExport, Engine, EngineError, EngineOptions};
use clap::Subcommand;
use serde::Serialize;
use serde_json::{json, Value};

use crate::run::user;
use crate::store::{open_existing, open_read};
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
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue a listing from the cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// A plan's state and steps.
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
        #[arg(long, value_name = "SECONDS")]
        resume_after: Option<u64>,
    },
    /// Resumes a paused plan (it runs on `cairn run --resume`).
    Resume {
        plan_id: String,
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Cancels an idle, running or paused plan.
    Cancel {
        plan_id: String,
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Everything about a plan, as JSON.
    Snapshot {
        plan_id: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// A plan's event log.
    Events {
        plan_id: String,
        #[command(flatten)]
        db: DbArgs,
        /// Only events with a greater seq.
        #[arg(long, default_value_t = 0)]
        after: u64,
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
        #[command(flatten)]
        iv: IvArgs,
    },
    /// Run a failed, cancelled or completed step again.
    Retry {
        plan_id: String,
        step_id: String,
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

/// An engine for a change: takes the engine lock (refused, naming the holder, while another
/// process drives the file).
async fn open(db: &DbArgs) -> Result<Engine, Fail> {
    engine_on(open_existing(&db.db)?).await
}

/// An engine for a read: the file opened read-only, no lock, so it works while another process
/// drives it. Reads load no actor and claim no lease.
async fn read(db: &DbArgs) -> Result<Engine, Fail> {
    engine_on(open_read(&db.db)?).await
}

async fn engine_on(store: std::sync::Arc<cairn_store_sqlite::SqliteStore>) -> Result<Engine, Fail> {
    Ok(Engine::open(
        store,
        cairn_engine::executor::Registry::with_builtins(),
        EngineOptions {
            recover: false,
            execute: false,
            ..EngineOptions::default()
        },
    )
    .await?)
}

pub(crate) fn print<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    );
}

fn micros_text(t: Option<i64>) -> String {
    match t {
        None => "-".into(),
        Some(t) => {
            let secs = t / 1_000_000;
            let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
            format!("{h:02}:{m:02}:{s:02}Z")
        }
    }
}

fn status_text<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn show(engine: &Engine, plan_id: &str, as_json: bool) -> Result<(), Fail> {
    let view = engine.view(plan_id).await?;
    if as_json {
        print(&view);
    } else {
        show_view(&view);
    }
    Ok(())
}

/// A plan's state as a table.
pub(crate) fn show_view(view: &cairn_core::view::PlanView) {
    let reason = view
        .pause_reason
        .map(|r| format!(" ({})", status_text(&r)))
        .unwrap_or_default();
    println!(
        "plan {}  {}{}  version {}  step {}/{}",
        view.plan_id,
        view.state.as_str(),
        reason,
        view.version,
        view.current_step_index,
        view.total_steps
    );
    if !view.query.is_empty() {
        println!("query: {}", view.query);
    }
    if let Some(f) = &view.failure {
        println!("failure: {f}");
    }
    println!(
        "{:<24} {:<16} {:<20} {:<15} {:>8} {:>9}  error",
        "STEP", "ACTION", "AGENT", "STATUS", "ATTEMPTS", "ENDED"
    );
    for s in &view.steps {
        println!(
            "{:<24} {:<16} {:<20} {:<15} {:>8} {:>9}  {}",
            s.step_id,
            s.action,
            s.agent_type,
            status_text(&s.status),
            s.attempts,
            micros_text(s.ended_at),
            s.error.as_deref().unwrap_or("")
        );
    }
}

/// `--resume-after SECONDS` as an absolute time in µs since the epoch.
pub(crate) fn resume_at_from(seconds: Option<u64>) -> Result<Option<i64>, Fail> {
    match seconds {
        None => Ok(None),
        Some(0) => Err(Fail::input("--resume-after must be at least 1 second")),
        Some(s) if s > 366 * 24 * 3600 => Err(Fail::input("--resume-after is more than a year")),
        Some(s) => Ok(Some(cairn_engine::now_micros() + (s as i64) * 1_000_000)),
    }
}

fn parse_state(s: &str) -> Result<PlanStatus, Fail> {
    PlanStatus::parse(s).ok_or_else(|| {
        Fail::input(format!(
            "unknown state {s:?}; one of idle, running, paused, completed, failed, cancelled"
        ))
    })
}

pub async fn plans(cmd: PlansCmd) -> Result<u8, Fail> {
    if let Some(client) = crate::remote::client(cmd.db())? {
        return crate::remote::plans(cmd, client).await;
    }
    let user = user();
    match cmd {
        PlansCmd::List {
            db,
            state,
            limit,
            cursor,
        } => {
            let state = state.as_deref().map(parse_state).transpose()?;
            if limit == 0 || limit > 1000 {
                return Err(Fail::input("--limit must be between 1 and 1000"));
            }
            let engine = read(&db).await?;
            let page = engine.list(state, limit, cursor.as_deref()).await?;
            if db.json {
                let items: Vec<Value> = page
                    .items
                    .iter()
                    .map(|r| json!({"plan_id": r.plan_id, "state": r.state, "created_at": r.created_at, "updated_at": r.updated_at, "events": r.last_seq}))
                    .collect();
                print(&json!({"items": items, "next_cursor": page.next_cursor}));
            } else {
                println!("{:<40} {:<10} {:>7}", "PLAN", "STATE", "EVENTS");
                for r in &page.items {
                    println!("{:<40} {:<10} {:>7}", r.plan_id, r.state, r.last_seq);
                }
                if let Some(c) = page.next_cursor {
                    println!("more: --cursor {c}");
                }
            }
        }
        PlansCmd::Show { plan_id, db } => show(&read(&db).await?, &plan_id, db.json).await?,
        PlansCmd::Register { file, db } => {
            let plan = crate::run::read_plan(&file)?;
            let engine = open(&db).await?;
            let state = engine.register(plan, &user).await?;
            show(&engine, &state.plan_id, db.json).await?;
        }
        PlansCmd::Start {
            plan_id,
            db,
            reason,
        } => {
            let engine = open(&db).await?;
            engine.start(&plan_id, &user, reason).await?;
            show(&engine, &plan_id, db.json).await?;
            if !db.json {
                eprintln!("its steps run when a process drives the plan: cairn run --resume {plan_id} --db {}", db.db.display());
            }
        }
        PlansCmd::Pause {
            plan_id,
            db,
            reason,
            immediate,
            resume_after,
        } => {
            let engine = open(&db).await?;
            let mode = if immediate {
                PauseMode::Immediate
            } else {
                PauseMode::Boundary
            };
            let resume_at = resume_at_from(resume_after)?;
            engine
                .pause(&plan_id, mode, resume_at, &user, reason)
                .await?;
            show(&engine, &plan_id, db.json).await?;
        }
        PlansCmd::Resume {
            plan_id,
            db,
            reason,
        } => {
            let engine = open(&db).await?;
            engine.resume(&plan_id, &user, reason).await?;
            show(&engine, &plan_id, db.json).await?;
            if !db.json {
                eprintln!("its steps run when a process drives the plan: cairn run --resume {plan_id} --db {}", db.db.display());
            }
        }
        PlansCmd::Cancel {
            plan_id,
            db,
            reason,
        } => {
            let engine = open(&db).await?;
            engine.cancel(&plan_id, &user, reason).await?;
            show(&engine, &plan_id, db.json).await?;
        }
        PlansCmd::Snapshot { plan_id, db } => print(&read(&db).await?.snapshot(&plan_id).await?),
        PlansCmd::Events {
            plan_id,
            db,
            after,
            limit,
            follow,
        } => {
            if follow {
                return Err(Fail::input(
                    "--follow needs a server to follow: add --server URL (or set CAIRN_SERVER)",
                ));
            }
            let engine = read(&db).await?;
            let events = engine
                .events(&plan_id, after, limit.clamp(1, 10_000))
                .await?;
            if db.json {
                print(&json!({"items": events, "next_cursor": Value::Null}));
            } else {
                for e in events {
                    let data = serde_json::to_value(&e.kind)
                        .ok()
                        .and_then(|v| v.get("data").cloned())
                        .unwrap_or(Value::Null);
                    println!(
                        "{:>5}  {:<22} {:<12} {}{}",
                        e.seq,
                        e.kind.type_name(),
                        e.actor,
                        data,
                        e.checkpoint_id()
                            .map(|c| format!("  [checkpoint {c}]"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        PlansCmd::Delete { plan_id, db } => {
            open(&db).await?.delete(&plan_id).await?;
            if !db.json {
                println!("deleted plan {plan_id}");
            }
        }
    }
    Ok(exit::OK)
}

fn json_arg(text: &str, what: &str) -> Result<Value, Fail> {
    let body = match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Fail::input(format!("cannot read {path}: {e}")))?,
        None => text.to_owned(),
    };
    serde_json::from_str(&body).map_err(|e| Fail::input(format!("{what} is not valid JSON: {e}")))
}

pub async fn steps(cmd: StepsCmd) -> Result<u8, Fail> {
    let (plan_id, mut body, iv) = match cmd {
        StepsCmd::Skip {
            plan_id,
            step_id,
            iv,
        } => (
            plan_id,
            json!({"type": "skip_step", "step_id": step_id}),
            iv,
        ),
        StepsCmd::Retry {
            plan_id,
            step_id,
            iv,
        } => (
            plan_id,
            json!({"type": "retry_step", "step_id": step_id}),
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
    if let Some(r) = &iv.reason {
        body["reason"] = Value::String(r.clone());
    }
    if let Some(v) = iv.expected_version {
        body["expected_version"] = Value::from(v);
    }
    if iv.dry_run {
        body["dry_run"] = Value::Bool(true);
    }
    if let Some(client) = crate::remote::client(&iv.db)? {
        return crate::remote::intervene(client, &plan_id, body, iv.db.json).await;
    }
    let request = InterventionRequest::from_body(body).map_err(|e| Fail::input(e.to_string()))?;
    let engine = open(&iv.db).await?;
    match engine.intervene(&plan_id, request, &user()).await {
        Ok(record) => {
            if iv.db.json {
                print(&record);
            } else {
                println!(
                    "{} {}{}: {} (plan version {})",
                    record.kind,
                    record.step_id.as_deref().unwrap_or(""),
                    if record.dry_run { " (dry run)" } else { "" },
                    if record.dry_run {
                        "would apply"
                    } else {
                        "applied"
                    },
                    record.plan_version
                );
                for c in &record.diff {
                    println!("  {}: {} -> {}", c.path, c.before, c.after);
                }
            }
            Ok(exit::OK)
        }
        Err(EngineError::Refused {
            refusal,
            intervention,
        }) => {
            if iv.db.json {
                if let Some(i) = intervention {
                    print(&i);
                }
            }
            Err(Fail::input(format!("refused: {refusal}")))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn checkpoints(cmd: CheckpointsCmd) -> Result<u8, Fail> {
    if let Some(client) = crate::remote::client(cmd.db())? {
        return crate::remote::checkpoints(cmd, client).await;
    }
    let user = user();
    match cmd {
        CheckpointsCmd::List { plan_id, db } => {
            let list = read(&db).await?.checkpoints(&plan_id).await?;
            if db.json {
                print(&json!({"items": list, "next_cursor": Value::Null}));
            } else {
                println!(
                    "{:<12} {:>6} {:<8} {:<10} label",
                    "CHECKPOINT", "SEQ", "TRIGGER", "AT"
                );
                for c in list {
                    println!(
                        "{:<12} {:>6} {:<8} {:<10} {}",
                        c.checkpoint_id,
                        c.seq,
                        c.trigger.as_str(),
                        micros_text(Some(c.created_at)),
                        c.label.unwrap_or_default()
                    );
                }
            }
        }
        CheckpointsCmd::Show {
            plan_id,
            checkpoint_id,
            db,
        } => print(
            &read(&db)
                .await?
                .checkpoint(&plan_id, &checkpoint_id)
                .await?,
        ),
        CheckpointsCmd::Create { plan_id, label, db } => {
            let c = open(&db)
                .await?
                .create_checkpoint(&plan_id, label, &user, None)
                .await?;
            if db.json {
                print(&c);
            } else {
                println!(
                    "checkpoint {} of plan {plan_id} at seq {}",
                    c.checkpoint_id, c.seq
                );
            }
        }
        CheckpointsCmd::Restore {
            plan_id,
            checkpoint_id,
            reason,
            db,
        } => {
            let engine = open(&db).await?;
            engine
                .restore(&plan_id, &checkpoint_id, &user, reason)
                .await?;
            show(&engine, &plan_id, db.json).await?;
            if !db.json {
                eprintln!("restored to {checkpoint_id}; continue with: cairn run --resume {plan_id} --db {}", db.db.display());
            }
        }
        CheckpointsCmd::Fork {
            plan_id,
            checkpoint_id,
            new_plan_id,
            db,
        } => {
            let engine = open(&db).await?;
            let forked = engine
                .fork(&plan_id, &checkpoint_id, new_plan_id, &user, None)
                .await?;
            show(&engine, &forked.plan_id, db.json).await?;
            if !db.json {
                eprintln!(
                    "forked; run it with: cairn run --resume {} --db {}",
                    forked.plan_id,
                    db.db.display()
                );
            }
        }
        CheckpointsCmd::Export {
            plan_id,
            checkpoint_id,
            output,
            db,
        } => {
            let export = read(&db)
                .await?
                .export_checkpoint(&plan_id, &checkpoint_id)
                .await?;
            let text = serde_json::to_string_pretty(&export)
                .map_err(|e| Fail::from(anyhow::anyhow!("cannot serialise the export: {e}")))?;
            match output {
                Some(path) => {
                    std::fs::write(&path, text + "\n").map_err(|e| Fail {
                        code: exit::FAILED,
                        message: format!("cannot write {}: {e}", path.display()),
                    })?;
                    eprintln!(
                        "exported {checkpoint_id} of plan {plan_id} to {}",
                        path.display()
                    );
                }
                None => println!("{text}"),
            }
        }
        CheckpointsCmd::Import {
            file,
            new_plan_id,
            db,
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Fail::input(format!("cannot read {}: {e}", file.display())))?;
            let export: CheckpointExport = serde_json::from_str(&text).map_err(|e| {
                Fail::input(format!(
                    "{} is not a cairn checkpoint export: {e}",
                    file.display()
                ))
            })?;
            let engine = open(&db).await?;
            let state = engine.import_checkpoint(export, new_plan_id, &user).await?;
            show(&engine, &state.plan_id, db.json).await?;
        }
    }
    Ok(exit::OK)
}
