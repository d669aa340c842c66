//! Online backups: a consistent copy of a database that another process may be writing.
//!
//! SQLite's backup API copies every page inside one read transaction of the source, so the copy
//! is the database as of one commit, whatever the writers do meanwhile; WAL lets that read run
//! beside them, so no lock is needed. The copy is written next to its destination under a
//! temporary name, checked, synced and only then renamed into place: a failed backup never
//! leaves a half-written file under the name asked for.

use std::path::Path;

use cairn_store::{StoreError, StoreResult};
use rusqlite::{Connection, OpenFlags};

use crate::{Ctx, BUSY_TIMEOUT, SCHEMA_VERSION};

/// What a backup copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupReport {
    pub plans: u64,
    pub events: u64,
    pub bytes: u64,
}

/// Copies the database at `src` to the new file `out` (which must not exist yet).
pub fn backup(src: &Path, out: &Path) -> StoreResult<BackupReport> {
    if !src.is_file() {
        return Err(StoreError::Invalid(format!(
            "there is no database at {}",
            src.display()
        )));
    }
    if out.exists() {
        return Err(StoreError::Invalid(format!(
            "{} already exists; name a new file (a backup never overwrites)",
            out.display()
        )));
    }
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(StoreError::Invalid(format!(
            "directory {} does not exist",
            dir.display()
        )));
    }
    let source = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ctx(&format!("open {} for reading", src.display()))?;
    source.busy_timeout(BUSY_TIMEOUT).ctx("set busy timeout")?;
    let version: i64 = source
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .ctx(&format!("read {}", src.display()))?;
    if version == 0 || version > SCHEMA_VERSION {
        return Err(StoreError::Invalid(format!(
            "{} is not a cairn database this build can read",
            src.display()
        )));
    }

    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".to_owned());
    let temp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let result = copy(&source, &temp).and_then(|report| {
        std::fs::rename(&temp, out)
            .map_err(|e| StoreError::Invalid(format!("cannot create {}: {e}", out.display())))?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(report)
    });
    if result.is_err() {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = temp.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
    result
}

fn copy(source: &Connection, temp: &Path) -> StoreResult<BackupReport> {
    let mut dest = Connection::open(temp).ctx(&format!("create {}", temp.display()))?;
    {
        let backup = rusqlite::backup::Backup::new(source, &mut dest).ctx("start the backup")?;
        // All pages in one step: one read transaction, so one consistent commit.
        match backup.step(-1).ctx("copy the database")? {
            rusqlite::backup::StepResult::Done => {}
            other => {
                return Err(StoreError::Unavailable(format!(
                    "the backup did not finish ({other:?}); try again"
                )))
            }
        }
    }
    let check: String = dest
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .ctx("check the copy")?;
    if check != "ok" {
        return Err(StoreError::Backend(format!(
            "the copy failed its integrity check: {check}"
        )));
    }
    let plans: i64 = dest
        .query_row("SELECT count(*) FROM plans", [], |r| r.get(0))
        .ctx("count the plans of the copy")?;
    let events: i64 = dest
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .ctx("count the events of the copy")?;
    // The copy keeps WAL mode; fold its log in so the one file is the whole backup.
    dest.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .ctx("checkpoint the copy")?;
    drop(dest);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(temp)
        .map_err(|e| StoreError::Backend(format!("reopen {}: {e}", temp.display())))?;
    file.sync_all()
        .map_err(|e| StoreError::Unavailable(format!("sync {}: {e}", temp.display())))?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(BackupReport {
        plans: crate::from_sql(plans),
        events: crate::from_sql(events),
        bytes,
    })
}
