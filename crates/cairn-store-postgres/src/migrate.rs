//! Schema migrations: embedded SQL files, applied in order, each once, under a
//! transaction-scoped advisory lock so that nodes starting together never run one twice.
//!
//! A migration is never edited once released: a change to the schema is a new file. The
//! numbers are the order; the table `cairn_migrations` records which ran.

use cairn_store::{StoreError, StoreResult};

use crate::backend;

/// Every migration this build knows, in order.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "store", include_str!("../migrations/0001_store.sql")),
    (
        2,
        "task_queue",
        include_str!("../migrations/0002_task_queue.sql"),
    ),
    (
        10,
        "templates",
        include_str!("../migrations/0010_templates.sql"),
    ),
];

/// The advisory lock key migrations take ("cairn" in ASCII).
const LOCK: i64 = 0x63_61_69_72_6e;

pub(crate) async fn run(client: &mut deadpool_postgres::Object) -> StoreResult<()> {
    let tx = client.transaction().await.map_err(backend)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await
        .map_err(backend)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS cairn_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(backend)?;
    let rows = tx
        .query(
            "SELECT version, name FROM cairn_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(backend)?;
    let applied: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    if let Some(newest) = rows.last() {
        let (version, name): (i32, String) = (newest.get(0), newest.get(1));
        let (known, known_name) = MIGRATIONS.last().map_or((0, ""), |m| (m.0, m.1));
        if version > known {
            return Err(StoreError::Invalid(format!(
                "the database was migrated by a newer cairn (schema version {version}, \"{name}\"); \
                 this build knows up to version {known} (\"{known_name}\"): upgrade cairn"
            )));
        }
    }
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await.map_err(backend)?;
        tx.execute(
            "INSERT INTO cairn_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)
}
