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
use cairn_store_postgres::{PgOptions, PgStore};
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

/// A database URL as messages show it: the password, if any, replaced by `***`.
pub fn redact_url(url: &str) -> String {
    if let Ok(mut parsed) = reqwest::Url::parse(url) {
        if parsed.password().is_some() && parsed.set_password(Some("***")).is_ok() {
            return parsed.to_string();
        }
        return url.to_owned();
    }
    // The key=value form: `host=… password=secret …`.
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` with every trace of `url`'s password replaced (the URL itself by its redacted form).
fn scrub(text: &str, url: &str) -> String {
    let shown = redact_url(url);
    let mut out = text.replace(url, &shown);
    let password = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
        .or_else(|| {
            url.split_whitespace().find_map(|kv| {
                kv.split_once('=')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("password"))
                    .map(|(_, v)| v.to_owned())
            })
        });
    if let Some(p) = password.filter(|p| !p.is_empty() && p != "***") {
        out = out.replace(&p, "***");
    }
    out
}

/// Connects to the PostgreSQL database at `url` (applying the migrations this build knows).
/// A malformed URL exits 2, an unreachable or refusing database 1; both name the URL, its
/// password redacted.
pub async fn open_postgres(url: &str) -> Result<Arc<PgStore>, Fail> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.contains('=')) {
        return Err(Fail::input(format!(
            "--database-url {:?} is not a PostgreSQL URL like postgres://USER@HOST:5432/DB",
            redact_url(url)
        )));
    }
    PgStore::connect(url, PgOptions::default())
        .await
        .map(Arc::new)
        .map_err(|e| {
            let shown = redact_url(url);
            match e {
                StoreError::Invalid(m) => {
                    // The store's message names the URL too: say it once.
                    let why = m.rsplit_once("\": ").map_or(m.as_str(), |(_, why)| why);
                    Fail::input(format!("--database-url {shown}: {}", scrub(why, url)))
                }
                other => Fail {
                    code: exit::FAILED,
                    message: format!(
                        "cannot open the database at {shown}: {}",
                        scrub(&other.to_string(), url)
                    ),
                },
            }
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_shows() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/cairn"),
            "postgres://app:***@db:5432/cairn"
        );
        assert_eq!(
            redact_url("postgres://app@db/cairn"),
            "postgres://app@db/cairn"
        );
        assert_eq!(
            redact_url("host=db user=app password=s3cret dbname=cairn"),
            "host=db user=app password=*** dbname=cairn"
        );
        let url = "postgres://app:s3cret@db/cairn";
        assert_eq!(
            scrub(
                "could not reach postgres://app:s3cret@db/cairn (s3cret)",
                url
            ),
            "could not reach postgres://app:***@db/cairn (***)"
        );
    }
}
