//! Opening the local store, the one way every command does it.
//!
//! Only the commands that put something in a database (`cairn run`, `cairn serve`, `cairn token
//! create`, `cairn plans register`, `cairn checkpoints import`) create one; every other
//! command refuses a path where none exists, so a mistyped `--db` is reported instead of showing
//! an empty store. Reads open the file read-only without the engine lock, so they work while
//! another process drives it; changes take the lock, and when another process holds it the
//! refusal names that process (from the lock file) and says how to make the change instead.
//!
//! Every store opened for writing is remembered so that a clean exit can fold the write-ahead
//! log into the database file ([`close_all`]): after the command, `cairn.db` alone holds
//! everything.

use std::path::Path;
use std::sync::{Arc, Mutex};

use cairn_store::StoreError;
use cairn_store_sqlite::{lock_holder, SqliteOptions, SqliteStore};

use crate::{exit, Fail};

/// Held strongly: if the last handle were dropped while the runtime winds down, the store's own
/// close would race the end of the process.
static OPENED: Mutex<Vec<Arc<SqliteStore>>> = Mutex::new(Vec::new());

/// Opens (creating if needed) the database for writing; with `engine_lock`, this process
/// drives its plans and no other engine may.
pub fn open_store(db: &Path, engine_lock: bool) -> Result<Arc<SqliteStore>, Fail> {
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            // A store that cannot be used exits 1, like any other store failure.
            return Err(Fail {
                code: exit::FAILED,
                message: format!("directory {} of --db does not exist", dir.display()),
            });
        }
    }
    let store = SqliteStore::open(
        db,
        SqliteOptions {
            engine_lock,
            lock_command: Some(command_name()),
            ..SqliteOptions::default()
        },
    )
    .map(Arc::new)
    .map_err(|e| open_failed(db, e))?;
    OPENED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(store.clone());
    Ok(store)
}

/// Opens an existing database for a change; refuses a missing file.
pub fn open_existing(db: &Path) -> Result<Arc<SqliteStore>, Fail> {
    must_exist(db)?;
    open_store(db, true)
}

/// Opens an existing database for reading only: no lock, nothing written, fine while another
/// process drives it.
pub fn open_read(db: &Path) -> Result<Arc<SqliteStore>, Fail> {
    must_exist(db)?;
    SqliteStore::open_read_only(db)
        .map(Arc::new)
        .map_err(|e| open_failed(db, e))
}

/// Refuses a database path where there is no file, by name.
pub fn must_exist(db: &Path) -> Result<(), Fail> {
    if db.is_file() {
        return Ok(());
    }
    Err(Fail::input(format!(
        "no database at {}; check --db (or CAIRN_DB). Only `cairn run`, `serve`, `token create`, `plans register` and `checkpoints import` create one",
        db.display()
    )))
}

/// Closes every store this process opened for writing, folding the write-ahead log into the
/// database file; writes that come later (a task still winding down) are refused, never
/// acknowledged. For a clean exit, outside the async runtime.
pub fn close_all() {
    let stores: Vec<Arc<SqliteStore>> = OPENED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
        .collect();
    for store in stores {
        if let Err(e) = store.close() {
            tracing::warn!(db = %store.path().display(), error = %e, "cannot fold the write-ahead log into the database file; it stays beside it and is read from there");
        }
    }
}

/// "cairn serve", "cairn run", …: what the lock file says holds it.
fn command_name() -> String {
    match std::env::args().nth(1) {
        Some(sub) => format!("cairn {sub}"),
        None => "cairn".to_owned(),
    }
}

fn open_failed(db: &Path, e: StoreError) -> Fail {
    match e {
        StoreError::Locked(what) => Fail {
            code: exit::FAILED,
            message: locked_message(db, what),
        },
        e => Fail {
            code: exit::FAILED,
            message: format!("cannot open {}: {e}", db.display()),
        },
    }
}

/// Why a change is refused while another process drives the file, and what to do instead.
fn locked_message(db: &Path, what: String) -> String {
    let Some(holder) = lock_holder(db) else {
        return format!("cannot change {}: {what}; wait for it to end", db.display());
    };
    let who = holder.describe();
    let command = holder.command.as_deref().unwrap_or("");
    if command == "cairn serve" {
        let server = holder.address.as_deref().unwrap_or("http://HOST:PORT");
        format!(
            "cannot change {}: {who} drives it; send the change through the server with --server {server} (reads work without it)",
            db.display()
        )
    } else if command == "cairn run" {
        format!(
            "cannot change {}: {who} drives it; press Ctrl-C in its terminal to pause the plan, make the change, then continue with `cairn run --resume PLAN --db {}` (reads work meanwhile)",
            db.display(),
            db.display()
        )
    } else {
        format!(
            "cannot change {}: {who} drives it; wait for it to end or stop it (reads work meanwhile)",
            db.display()
        )
    }
}
