//! `cairn nodes`: the engine nodes sharing a store, their heartbeats and the plans each owns.
//!
//! Over `--server`, the node list as that server sees it (itself marked); with
//! `--database-url`, as the PostgreSQL database records it. On a local SQLite
//! store there is one node at most, the process holding the file's lock: its heartbeats live in
//! that process, so the command names it and says how to ask it.

use cairn_core::view::NodeInfo;
use cairn_store::Nodes;
use clap::Args;

use crate::operator::{Access, Operator};
use crate::{exit, DbArgs, Fail};

#[derive(Args)]
pub struct NodesArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Read the node list from this PostgreSQL database (postgres://USER@HOST:5432/DB);
    /// --server, when given too, wins.
    #[arg(long, env = "CAIRN_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// With --database-url: the nodes' lease in milliseconds, which sets when a node counts as
    /// gone (no heartbeat for three leases).
    #[arg(long, default_value_t = crate::serve::DEFAULT_LEASE_MS)]
    lease_ms: u64,
}

pub async fn nodes(args: NodesArgs) -> Result<u8, Fail> {
    let db = args.db;
    let remote = db.server.as_deref().is_some_and(|s| !s.is_empty());
    if let Some(url) = args.database_url.as_deref().filter(|_| !remote) {
        let store = crate::store::open_postgres(url).await?;
        let rows = store
            .list_nodes()
            .await
            .map_err(|e| Fail::from(anyhow::anyhow!("cannot list the nodes: {e}")))?;
        let me = cairn_server::cluster::NodeIdentity {
            node_id: String::new(),
            lease_ms: args.lease_ms,
            advertise: None,
        };
        let list = cairn_server::cluster::node_list(rows, &me, cairn_engine::now_micros());
        print_nodes(&list.nodes, db.json);
        return Ok(exit::OK);
    }
    if db.server.as_deref().is_none_or(str::is_empty) {
        return local_sqlite(&db);
    }
    let Operator::Remote(client) = Operator::open(&db, Access::Read).await? else {
        return Err(Fail::input("cairn nodes needs --server URL"));
    };
    let nodes = client.nodes().await?;
    print_nodes(&nodes, db.json);
    Ok(exit::OK)
}

/// A SQLite store's one node: the process that holds its lock, if any.
fn local_sqlite(db: &DbArgs) -> Result<u8, Fail> {
    crate::store::must_exist(&db.db)?;
    let holder = cairn_store_sqlite::lock_holder(&db.db);
    if db.json {
        println!("{{\"nodes\": []}}");
    }
    match holder {
        Some(h) => {
            let ask = h
                .address
                .as_deref()
                .map(|a| format!("; for its heartbeat and plans: cairn nodes --server {a}"))
                .unwrap_or_default();
            eprintln!(
                "a SQLite store has one node, the process driving it: {}{ask}",
                h.describe()
            );
        }
        None => eprintln!(
            "no process drives {} now (a SQLite store has one node at most: the process that holds its lock)",
            db.db.display()
        ),
    }
    Ok(exit::OK)
}

/// The table (or the JSON document `GET /v1/nodes` answers).
pub fn print_nodes(nodes: &[NodeInfo], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "nodes": nodes }))
                .unwrap_or_default()
        );
        return;
    }
    if nodes.is_empty() {
        println!("no node has sent a heartbeat yet");
        return;
    }
    let now = cairn_engine::now_micros();
    let width = nodes
        .iter()
        .map(|n| n.node_id.len() + 2)
        .max()
        .unwrap_or(0)
        .max("NODE".len());
    println!(
        "{:<width$}  {:<6}  {:<10}  {:<6}  ADDRESS",
        "NODE", "STATE", "HEARTBEAT", "PLANS"
    );
    for n in nodes {
        let ago = (now - n.heartbeat_at.as_micros()).max(0) / 1_000_000;
        let name = if n.is_self {
            format!("{} *", n.node_id)
        } else {
            n.node_id.clone()
        };
        println!(
            "{:<width$}  {:<6}  {:<10}  {:<6}  {}",
            name,
            if n.alive { "alive" } else { "gone" },
            format!("{ago}s ago"),
            n.plans_owned,
            n.address.as_deref().unwrap_or("-")
        );
    }
    if nodes.iter().any(|n| n.is_self) {
        println!("(* the node that answered)");
    }
}
