//! `cairn workers list --server URL`: the remote workers a server has seen, the agent types
//! each polls for, when it last polled and the tasks it holds. Workers exist only for a server,
//! so the command needs `--server` (or `CAIRN_SERVER`).

use clap::Subcommand;

use crate::operator::{Access, Operator};
use crate::{exit, DbArgs, Fail};

#[derive(Subcommand)]
pub enum WorkersCmd {
    /// The workers a server has seen: id, agent types, last poll, tasks in hand.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
}

pub async fn workers(cmd: WorkersCmd) -> Result<u8, Fail> {
    let WorkersCmd::List { db } = cmd;
    if db.server.as_deref().is_none_or(str::is_empty) {
        return Err(Fail::input(
            "workers poll a server, so only a server knows them: give --server URL (or set CAIRN_SERVER)",
        ));
    }
    let Operator::Remote(client) = Operator::open(&db, Access::Read).await? else {
        return Err(Fail::input("cairn workers list needs --server URL"));
    };
    let workers = client.workers().await?;
    if db.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&workers).unwrap_or_default()
        );
        return Ok(exit::OK);
    }
    if workers.is_empty() {
        println!("no worker has polled this server yet");
        return Ok(exit::OK);
    }
    let now = cairn_engine::now_micros();
    let width = workers
        .iter()
        .map(|w| w.worker_id.len())
        .max()
        .unwrap_or(0)
        .max("WORKER".len());
    println!(
        "{:<width$}  {:<10}  {:<6}  AGENT TYPES",
        "WORKER", "LAST POLL", "TASKS"
    );
    for w in &workers {
        let ago = (now - w.last_poll_at.as_micros()).max(0) / 1_000_000;
        println!(
            "{:<width$}  {:<10}  {:<6}  {}",
            w.worker_id,
            format!("{ago}s ago"),
            w.tasks.len(),
            w.agent_types.join(", ")
        );
    }
    Ok(exit::OK)
}
