//! `cairn plans|steps|checkpoints … --server URL`: the same commands over the HTTP API
//! (DESIGN §4), authenticated with `--token` / `CAIRN_TOKEN`.
//!
//! Output is the same as on a local store: tables by default, the server's JSON with `--json`.
//! Exit codes: a refusal, bad input or an auth failure (401/403) → 2 with the server's message;
//! the server unreachable or failing → 1.

use std::path::Path;

use cairn_client::{Client, ClientError, PauseOptions};
use cairn_core::view::PlanView;
use serde_json::{json, Value};

use crate::ops::{print, show_view, CheckpointsCmd, PlansCmd};
use crate::{exit, DbArgs, Fail};

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Self {
        match &e {
            ClientError::Api {
                status: 401,
                message,
                ..
            } => Fail::input(format!(
                "{message} (HTTP 401): set CAIRN_TOKEN (or --token) to a valid token; an admin creates one with `cairn token create --user NAME --role operator`"
            )),
            ClientError::Api {
                status: 403,
                message,
                ..
            } => Fail::input(format!(
                "{message} (HTTP 403): the token in CAIRN_TOKEN (or --token) lacks the role this needs"
            )),
            ClientError::Api {
                status: 400..=499,
                message,
                ..
            } => Fail::input(message.clone()),
            _ => Fail {
                code: exit::FAILED,
                message: e.to_string(),
            },
        }
    }
}

/// The client `db` asks for, if it names a server.
pub fn client(db: &DbArgs) -> Result<Option<Client>, Fail> {
    let Some(server) = db.server.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        return Err(Fail::input(format!(
            "--server {server:?} must be a URL like http://127.0.0.1:8080"
        )));
    }
    Ok(Some(Client::new(server, db.token.clone())?))
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
            | PlansCmd::Snapshot { db, .. }
            | PlansCmd::Events { db, .. }
            | PlansCmd::Delete { db, .. } => db,
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

/// Prints a plan's state answered by the server: its JSON, or the table.
fn show(v: &Value, as_json: bool) -> Result<(), Fail> {
    // The server's warnings (agent types nothing will run) go to stderr, whatever the format.
    for w in v["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or_default());
    }
    if as_json {
        print(v);
        return Ok(());
    }
    let view: PlanView = serde_json::from_value(v.clone()).map_err(|e| Fail {
        code: exit::FAILED,
        message: format!("the server's plan state is not what this client expects: {e}"),
    })?;
    show_view(&view);
    Ok(())
}

/// Reads a plan file for `POST /v1/plans`: JSON is sent as written (the server judges it);
/// YAML is parsed and validated here, then sent as JSON.
fn plan_body(path: &Path) -> Result<Value, Fail> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fail::input(format!("cannot read {}: {e}", path.display())))?;
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        return Ok(v);
    }
    let plan = crate::run::read_plan(path)?;
    serde_json::to_value(&plan).map_err(|e| Fail::from(anyhow::anyhow!("{e}")))
}

fn event_line(e: &Value) -> String {
    let get = |k: &str| e.get(k).cloned().unwrap_or(Value::Null);
    let text = |v: Value| match v {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let checkpoint = e
        .get("checkpoint")
        .and_then(|c| c.get("checkpoint_id").or(Some(c)))
        .filter(|c| !c.is_null())
        .map(|c| format!("  [checkpoint {}]", text(c.clone())))
        .unwrap_or_default();
    format!(
        "{:>5}  {:<22} {:<12} {}{}",
        text(get("seq")),
        text(get("type")),
        text(get("actor")),
        match get("data") {
            Value::Null => String::new(),
            d => d.to_string(),
        },
        checkpoint
    )
}

pub async fn plans(cmd: PlansCmd, c: Client) -> Result<u8, Fail> {
    match cmd {
        PlansCmd::List {
            db,
            state,
            limit,
            cursor,
        } => {
            let page = c
                .list_plans(state.as_deref(), Some(limit), cursor.as_deref())
                .await?;
            if db.json {
                print(&json!({"items": page.items, "next_cursor": page.next_cursor}));
            } else {
                println!("{:<40} {:<10} {:>7}", "PLAN", "STATE", "EVENTS");
                for r in &page.items {
                    println!(
                        "{:<40} {:<10} {:>7}",
                        r["plan_id"].as_str().unwrap_or(""),
                        r["state"].as_str().unwrap_or(""),
                        r["last_seq"]
                    );
                }
                if let Some(cur) = page.next_cursor {
                    println!("more: --cursor {cur}");
                }
            }
        }
        PlansCmd::Show { plan_id, db } => show(&c.plan(&plan_id).await?, db.json)?,
        PlansCmd::Register { file, db } => {
            let v = c.register(&plan_body(&file)?).await?;
            show(&v, db.json)?;
        }
        PlansCmd::Start {
            plan_id,
            db,
            reason,
        } => show(&c.start(&plan_id, reason).await?, db.json)?,
        PlansCmd::Pause {
            plan_id,
            db,
            reason,
            immediate,
            resume_after,
        } => {
            let options = PauseOptions {
                reason,
                mode: immediate.then(|| "immediate".to_owned()),
                resume_at: crate::ops::resume_at_from(resume_after)?,
            };
            show(&c.pause(&plan_id, &options).await?, db.json)?;
        }
        PlansCmd::Resume {
            plan_id,
            db,
            reason,
        } => show(&c.resume(&plan_id, reason).await?, db.json)?,
        PlansCmd::Cancel {
            plan_id,
            db,
            reason,
        } => show(&c.cancel(&plan_id, reason).await?, db.json)?,
        PlansCmd::Snapshot { plan_id, .. } => print(&c.snapshot(&plan_id).await?),
        PlansCmd::Events {
            plan_id,
            db,
            after,
            limit,
            follow,
        } => {
            if follow {
                let as_json = db.json;
                c.follow_events(&plan_id, after, |e| {
                    if as_json {
                        println!("{}", serde_json::to_string(e).unwrap_or_default());
                    } else {
                        println!("{}", event_line(e));
                    }
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                    // Stop following once the reader of stdout has gone.
                    !crate::stdout::closed()
                })
                .await?;
                let state = c.plan(&plan_id).await?;
                if !as_json {
                    eprintln!(
                        "plan {plan_id} is {}",
                        state["state"].as_str().unwrap_or("?")
                    );
                }
            } else {
                let page = c
                    .events(&plan_id, after, Some(limit.clamp(1, 1000)))
                    .await?;
                if db.json {
                    print(&json!({"items": page.items, "next_cursor": page.next_cursor}));
                } else {
                    for e in &page.items {
                        println!("{}", event_line(e));
                    }
                    if let Some(cur) = page.next_cursor {
                        println!("more: --after {cur}");
                    }
                }
            }
        }
        PlansCmd::Delete { plan_id, db } => {
            c.delete_plan(&plan_id).await?;
            if !db.json {
                println!("deleted plan {plan_id}");
            }
        }
    }
    Ok(exit::OK)
}

/// `POST /v1/plans/{id}/interventions` with `body`; prints the record or the refusal.
pub async fn intervene(c: Client, plan_id: &str, body: Value, as_json: bool) -> Result<u8, Fail> {
    match c.intervene(plan_id, &body).await {
        Ok(record) => {
            if as_json {
                print(&record);
            } else {
                let dry = record["dry_run"].as_bool().unwrap_or(false);
                println!(
                    "{} {}{}: {} (plan version {})",
                    record["type"].as_str().unwrap_or("intervention"),
                    record["step_id"].as_str().unwrap_or(""),
                    if dry { " (dry run)" } else { "" },
                    if dry { "would apply" } else { "applied" },
                    record["plan_version"]
                );
                for d in record["diff"].as_array().into_iter().flatten() {
                    println!("  {}: {} -> {}", d["path"], d["before"], d["after"]);
                }
            }
            Ok(exit::OK)
        }
        Err(ClientError::Api {
            status: status @ (409 | 422),
            message,
            body,
            ..
        }) => {
            if as_json {
                if let Some(i) = body.get("error").and_then(|e| e.get("intervention")) {
                    print(i);
                }
            }
            Err(Fail::input(format!("refused: {message} (HTTP {status})")))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn checkpoints(cmd: CheckpointsCmd, c: Client) -> Result<u8, Fail> {
    match cmd {
        CheckpointsCmd::List { plan_id, db } => {
            let page = c.checkpoints(&plan_id).await?;
            if db.json {
                print(&json!({"items": page.items, "next_cursor": page.next_cursor}));
            } else {
                println!(
                    "{:<12} {:>6} {:<8} {:<10} label",
                    "CHECKPOINT", "SEQ", "TRIGGER", "STEP"
                );
                for cp in &page.items {
                    println!(
                        "{:<12} {:>6} {:<8} {:<10} {}",
                        cp["checkpoint_id"].as_str().unwrap_or(""),
                        cp["seq"],
                        cp["trigger"].as_str().unwrap_or(""),
                        cp["step_index"],
                        cp["label"].as_str().unwrap_or("")
                    );
                }
            }
        }
        CheckpointsCmd::Show {
            plan_id,
            checkpoint_id,
            ..
        } => print(&c.checkpoint(&plan_id, &checkpoint_id).await?),
        CheckpointsCmd::Create { plan_id, label, db } => {
            let cp = c.create_checkpoint(&plan_id, label).await?;
            if db.json {
                print(&cp);
            } else {
                println!(
                    "checkpoint {} of plan {plan_id} at seq {}",
                    cp["checkpoint_id"].as_str().unwrap_or("?"),
                    cp["seq"]
                );
            }
        }
        CheckpointsCmd::Restore {
            plan_id,
            checkpoint_id,
            reason,
            db,
        } => show(&c.restore(&plan_id, &checkpoint_id, reason).await?, db.json)?,
        CheckpointsCmd::Fork {
            plan_id,
            checkpoint_id,
            new_plan_id,
            db,
        } => show(
            &c.fork(&plan_id, &checkpoint_id, new_plan_id).await?,
            db.json,
        )?,
        CheckpointsCmd::Export { .. } | CheckpointsCmd::Import { .. } => {
            return Err(Fail::input(
                "checkpoint export and import work on the store (--db), not over --server",
            ))
        }
    }
    Ok(exit::OK)
}
