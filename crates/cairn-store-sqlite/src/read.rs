//! Reads: a small pool of read-only connections and the queries run on them.
//!
//! Every function here runs on a blocking thread (the store calls them through
//! `spawn_blocking`). WAL gives each statement a consistent view while the writer commits.

use std::path::PathBuf;
use std::sync::Mutex;

use cairn_store::{
    CheckpointMark, CheckpointRow, LeaseRow, OpenReviews, Page, PlanRow, ReviewRow, StoreError,
    StoreResult, StoredEvent, TemplateRow, TokenRow,
};
use rusqlite::config::DbConfig;
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension, Row};

use crate::{from_sql, limit_sql, to_sql, Ctx, BUSY_TIMEOUT};

/// Idle read connections kept for reuse; more are opened on demand under load.
const MAX_IDLE: usize = 4;

/// Each read connection's page cache, in KiB (SQLite's `cache_size` takes it negative).
const READ_CACHE_KIB: i64 = -512;

pub(crate) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    pub(crate) fn new(path: PathBuf) -> ReadPool {
        ReadPool {
            path,
            idle: Mutex::new(Vec::with_capacity(MAX_IDLE)),
        }
    }

    /// Runs `f` on an idle connection (opening one when none is idle).
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => self.open()?,
        };
        let result = f(&conn);
        // A backend failure may have left the connection unusable; drop it rather than reuse.
        if !matches!(
            result,
            Err(StoreError::Backend(_) | StoreError::Unavailable(_))
        ) {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
        result
    }

    fn open(&self) -> StoreResult<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)
            .ctx(&format!("open {} for reading", self.path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT).ctx("set busy timeout")?;
        // The query planner stability guarantee: a statement's plan never depends on the values
        // bound to it. Without it SQLite marks the plan id and seq parameters of the event reads
        // as plan-relevant (the partial checkpoint index), and every read with new values
        // re-prepares the cached statement (about as costly as preparing it afresh): one
        // re-prepare per plan load.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .ctx("enable the query planner stability guarantee")?;
        conn.set_prepared_statement_cache_capacity(64);
        // A small page cache per read connection: up to four are open, each kept SQLite's
        // default 2 MB resident, while the file's pages stay in the OS's cache anyway.
        conn.pragma_update(None, "cache_size", READ_CACHE_KIB)
            .ctx("set the page cache size")?;
        Ok(conn)
    }
}

const EVENT_COLS: &str = "id, seq, kind, at, actor, data, cp_trigger, cp_label, format";

fn event(r: &Row<'_>, plan_id: String) -> rusqlite::Result<StoredEvent> {
    let trigger: Option<String> = r.get(6)?;
    Ok(StoredEvent {
        id: from_sql(r.get(0)?),
        plan_id,
        seq: from_sql(r.get(1)?),
        kind: r.get(2)?,
        at: r.get(3)?,
        actor: r.get(4)?,
        data: r.get(5)?,
        format: r.get(8)?,
        checkpoint: match trigger {
            Some(trigger) => Some(CheckpointMark {
                trigger,
                label: r.get(7)?,
            }),
            None => None,
        },
    })
}

fn plan_pk(c: &Connection, plan_id: &str) -> StoreResult<i64> {
    c.prepare_cached("SELECT pk FROM plans WHERE plan_id = ?1")
        .and_then(|mut s| s.query_row([plan_id], |r| r.get(0)).optional())
        .ctx("look up plan")?
        .ok_or_else(|| StoreError::NotFound(plan_id.to_owned()))
}

/// `?, ?, …` for an `IN` list of `n` values, numbered from `first`.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn events(
    c: &Connection,
    plan_id: &str,
    after_seq: u64,
    until_seq: Option<u64>,
    limit: usize,
) -> StoreResult<Vec<StoredEvent>> {
    let pk = plan_pk(c, plan_id)?;
    let until = until_seq.map_or(i64::MAX, to_sql);
    let sql = format!(
        "SELECT {EVENT_COLS} FROM events WHERE plan_pk = ?1 AND seq > ?2 AND seq <= ?3
         ORDER BY seq LIMIT ?4"
    );
    let mut stmt = c.prepare_cached(&sql).ctx("prepare read events")?;
    let rows = stmt
        .query_map(
            params![pk, to_sql(after_seq), until, limit_sql(limit)],
            |r| event(r, plan_id.to_owned()),
        )
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .ctx("read events")?;
    Ok(rows)
}

pub(crate) fn events_of_kind(
    c: &Connection,
    plan_id: &str,
    kinds: &[String],
    after_seq: u64,
    limit: usize,
) -> StoreResult<Vec<StoredEvent>> {
    let pk = plan_pk(c, plan_id)?;
    if kinds.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {EVENT_COLS} FROM events WHERE plan_pk = ?1 AND seq > ?2 AND kind IN ({})
         ORDER BY seq LIMIT ?3",
        placeholders(4, kinds.len())
    );
    let mut values: Vec<rusqlite::types::Value> =
        vec![pk.into(), to_sql(after_seq).into(), limit_sql(limit).into()];
    values.extend(kinds.iter().map(|k| k.clone().into()));
    let mut stmt = c.prepare_cached(&sql).ctx("prepare read events of kind")?;
    let rows = stmt
        .query_map(params_from_iter(values), |r| event(r, plan_id.to_owned()))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .ctx("read events of kind")?;
    Ok(rows)
}

pub(crate) fn all_events(
    c: &Connection,
    after_id: u64,
    limit: usize,
) -> StoreResult<Vec<StoredEvent>> {
    let sql = "SELECT e.id, e.seq, e.kind, e.at, e.actor, e.data, e.cp_trigger, e.cp_label,
                      e.format, p.plan_id
               FROM events e JOIN plans p ON p.pk = e.plan_pk
               WHERE e.id > ?1 ORDER BY e.id LIMIT ?2";
    let mut stmt = c.prepare_cached(sql).ctx("prepare read all events")?;
    let rows = stmt
        .query_map(params![to_sql(after_id), limit_sql(limit)], |r| {
            event(r, r.get(9)?)
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .ctx("read all events")?;
    Ok(rows)
}

/// The highest id ever handed out (AUTOINCREMENT remembers it across deletes).
pub(crate) fn last_event_id(c: &Connection) -> StoreResult<u64> {
    let id: Option<i64> = c
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
        .ctx("read last event id")?;
    Ok(id.map_or(0, from_sql))
}

const PLAN_COLS: &str = "plan_id, state, created_at, updated_at, last_seq, pk";

fn plan_row(r: &Row<'_>) -> rusqlite::Result<(PlanRow, i64)> {
    Ok((
        PlanRow {
            plan_id: r.get(0)?,
            state: r.get(1)?,
            created_at: r.get(2)?,
            updated_at: r.get(3)?,
            last_seq: from_sql(r.get(4)?),
        },
        r.get(5)?,
    ))
}

pub(crate) fn plan(c: &Connection, plan_id: &str) -> StoreResult<Option<PlanRow>> {
    let sql = format!("SELECT {PLAN_COLS} FROM plans WHERE plan_id = ?1");
    let row = c
        .prepare_cached(&sql)
        .and_then(|mut s| s.query_row([plan_id], plan_row).optional())
        .ctx("read plan")?;
    Ok(row.map(|(row, _)| row))
}

/// A listing position: the `(created_at, pk)` of the last plan returned.
pub(crate) use cairn_store::{format_cursor, parse_cursor, KeysetCursor as Cursor};

/// A keyset listing: one page of rows in the order of two key columns (a time and the row's
/// `pk`), resuming after the key of the last row of the previous page. Plans and reviews are
/// listed this way.
struct Keyset<'a> {
    /// What is listed, for error messages ("plans").
    what: &'a str,
    /// The query up to where its `WHERE` goes (columns, tables, joins).
    select: &'a str,
    /// Conditions with one `?` for their value (`state = ?`), applied when the value is given.
    filters: &'a [(&'a str, Option<&'a str>)],
    /// The key columns, time first: `(created_at, pk)`.
    key: (&'a str, &'a str),
    /// Newest first (plans) or oldest first (reviews).
    newest_first: bool,
}

impl Keyset<'_> {
    /// Up to `limit` rows after `after`; `row` reads one row with its key. One row more than
    /// asked tells whether another page follows, and the cursor is the key of the last one.
    fn page<T>(
        &self,
        c: &Connection,
        limit: usize,
        after: Option<Cursor>,
        row: impl FnMut(&Row<'_>) -> rusqlite::Result<(T, Cursor)>,
    ) -> StoreResult<Page<T>> {
        use rusqlite::types::Value;
        let mut clauses = Vec::with_capacity(self.filters.len() + 1);
        let mut values: Vec<Value> = Vec::with_capacity(self.filters.len() + 3);
        for (condition, value) in self.filters {
            if let Some(value) = value {
                values.push((*value).to_owned().into());
                clauses.push(condition.replace('?', &format!("?{}", values.len())));
            }
        }
        let (at_col, pk_col) = self.key;
        let (past, direction) = if self.newest_first {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        if let Some((at, pk)) = after {
            values.push(at.into());
            values.push(pk.into());
            clauses.push(format!(
                "({at_col}, {pk_col}) {past} (?{}, ?{})",
                values.len() - 1,
                values.len()
            ));
        }
        values.push(limit_sql(limit).saturating_add(1).into());
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "{} {filter} ORDER BY {at_col} {direction}, {pk_col} {direction} LIMIT ?{}",
            self.select,
            values.len()
        );
        let what = self.what;
        let mut stmt = c
            .prepare_cached(&sql)
            .ctx(&format!("prepare list {what}"))?;
        let mut rows = stmt
            .query_map(params_from_iter(values), row)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .ctx(&format!("list {what}"))?;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|(_, key)| format_cursor(*key))
        } else {
            None
        };
        Ok(Page {
            items: rows.into_iter().map(|(row, _)| row).collect(),
            next_cursor,
        })
    }
}

/// Plans newest first; the cursor is the `(created_at, pk)` of the last one returned.
pub(crate) fn list_plans(
    c: &Connection,
    state: Option<&str>,
    id_contains: Option<&str>,
    limit: usize,
    after: Option<Cursor>,
) -> StoreResult<Page<PlanRow>> {
    let select = format!("SELECT {PLAN_COLS} FROM plans");
    let listing = Keyset {
        what: "plans",
        select: &select,
        // instr, not LIKE: no character of an id is ever a wildcard.
        filters: &[("state = ?", state), ("instr(plan_id, ?) > 0", id_contains)],
        key: ("created_at", "pk"),
        newest_first: true,
    };
    listing.page(c, limit, after, |r| {
        let (row, pk) = plan_row(r)?;
        let key = (row.created_at, pk);
        Ok((row, key))
    })
}

/// Reviews oldest opened first; the cursor is the `(opened_at, pk)` of the last one returned.
pub(crate) fn list_reviews(
    c: &Connection,
    state: Option<&str>,
    plan_id: Option<&str>,
    limit: usize,
    after: Option<Cursor>,
) -> StoreResult<Page<ReviewRow>> {
    let listing = Keyset {
        what: "reviews",
        select: "SELECT p.plan_id, r.review_id, r.state, r.opened_at, r.data, r.pk
                 FROM reviews r JOIN plans p ON p.pk = r.plan_pk",
        filters: &[("r.state = ?", state), ("p.plan_id = ?", plan_id)],
        key: ("r.opened_at", "r.pk"),
        newest_first: false,
    };
    listing.page(c, limit, after, |r| {
        let row = ReviewRow {
            plan_id: r.get(0)?,
            review_id: r.get(1)?,
            state: r.get(2)?,
            opened_at: r.get(3)?,
            data: r.get(4)?,
        };
        let key = (row.opened_at, r.get::<_, i64>(5)?);
        Ok((row, key))
    })
}

pub(crate) fn open_reviews(c: &Connection) -> StoreResult<OpenReviews> {
    c.prepare_cached("SELECT COUNT(*), MIN(opened_at) FROM reviews WHERE state = 'open'")
        .and_then(|mut s| {
            s.query_row([], |r| {
                Ok(OpenReviews {
                    count: from_sql(r.get(0)?),
                    oldest_opened_at: r.get(1)?,
                })
            })
        })
        .ctx("count open reviews")
}

pub(crate) fn plans_in_states(c: &Connection, states: &[String]) -> StoreResult<Vec<String>> {
    if states.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT plan_id FROM plans WHERE state IN ({}) ORDER BY pk",
        placeholders(1, states.len())
    );
    let mut stmt = c.prepare_cached(&sql).ctx("prepare plans in states")?;
    let ids = stmt
        .query_map(params_from_iter(states), |r| r.get(0))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
        .ctx("read plans in states")?;
    Ok(ids)
}

pub(crate) fn count_plans_by_state(c: &Connection) -> StoreResult<Vec<(String, u64)>> {
    let mut stmt = c
        .prepare_cached("SELECT state, COUNT(*) FROM plans GROUP BY state ORDER BY state")
        .ctx("prepare count plans by state")?;
    let counts = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .ctx("count plans by state")?;
    Ok(counts
        .into_iter()
        .map(|(s, n)| (s, u64::try_from(n).unwrap_or(0)))
        .collect())
}

fn checkpoint_row(r: &Row<'_>, plan_id: String) -> rusqlite::Result<CheckpointRow> {
    Ok(CheckpointRow {
        plan_id,
        seq: from_sql(r.get(0)?),
        at: r.get(1)?,
        trigger: r.get(2)?,
        label: r.get(3)?,
    })
}

pub(crate) fn checkpoints(
    c: &Connection,
    plan_id: &str,
    after_seq: u64,
    limit: usize,
) -> StoreResult<Vec<CheckpointRow>> {
    let pk = plan_pk(c, plan_id)?;
    let mut stmt = c
        .prepare_cached(
            "SELECT seq, at, cp_trigger, cp_label FROM events
             WHERE plan_pk = ?1 AND cp_trigger IS NOT NULL AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .ctx("prepare list checkpoints")?;
    let rows = stmt
        .query_map(params![pk, to_sql(after_seq), limit_sql(limit)], |r| {
            checkpoint_row(r, plan_id.to_owned())
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .ctx("list checkpoints")?;
    Ok(rows)
}

pub(crate) fn checkpoint(
    c: &Connection,
    plan_id: &str,
    seq: u64,
) -> StoreResult<Option<CheckpointRow>> {
    let pk = plan_pk(c, plan_id)?;
    c.prepare_cached(
        "SELECT seq, at, cp_trigger, cp_label FROM events
         WHERE plan_pk = ?1 AND cp_trigger IS NOT NULL AND seq = ?2",
    )
    .and_then(|mut s| {
        s.query_row(params![pk, to_sql(seq)], |r| {
            checkpoint_row(r, plan_id.to_owned())
        })
        .optional()
    })
    .ctx("read checkpoint")
}

pub(crate) fn snapshot(
    c: &Connection,
    plan_id: &str,
    at_or_before: u64,
) -> StoreResult<Option<(u64, Vec<u8>)>> {
    let pk = plan_pk(c, plan_id)?;
    c.prepare_cached(
        "SELECT seq, data FROM snapshots WHERE plan_pk = ?1 AND seq <= ?2
         ORDER BY seq DESC LIMIT 1",
    )
    .and_then(|mut s| {
        s.query_row(params![pk, to_sql(at_or_before)], |r| {
            Ok((from_sql(r.get(0)?), r.get(1)?))
        })
        .optional()
    })
    .ctx("read snapshot")
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        id: r.get(0)?,
        user: r.get(1)?,
        role: r.get(2)?,
        hash: r.get(3)?,
        created_at: r.get(4)?,
        revoked_at: r.get(5)?,
        expires_at: r.get(6)?,
    })
}

pub(crate) fn tokens(c: &Connection) -> StoreResult<Vec<TokenRow>> {
    c.prepare_cached(
        "SELECT id, user, role, hash, created_at, revoked_at, expires_at FROM tokens ORDER BY created_at, id",
    )
    .and_then(|mut s| s.query_map([], token_row)?.collect())
    .ctx("list tokens")
}

pub(crate) fn token_by_hash(c: &Connection, hash: &str) -> StoreResult<Option<TokenRow>> {
    c.prepare_cached(
        "SELECT id, user, role, hash, created_at, revoked_at, expires_at FROM tokens WHERE hash = ?1",
    )
    .and_then(|mut s| s.query_row([hash], token_row).optional())
    .ctx("find a token")
}

const TEMPLATE_COLUMNS: &str =
    "v.name, v.version, v.content, v.created_at, v.created_by, t.deleted_at";

fn template_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TemplateRow> {
    Ok(TemplateRow {
        name: r.get(0)?,
        version: r.get::<_, i64>(1)?.max(0) as u64,
        content: r.get(2)?,
        created_at: r.get(3)?,
        created_by: r.get(4)?,
        deleted_at: r.get(5)?,
    })
}

/// Version `version` of `name`, or its latest.
pub(crate) fn template(
    c: &Connection,
    name: &str,
    version: Option<u64>,
) -> StoreResult<Option<TemplateRow>> {
    let sql = format!(
        "SELECT {TEMPLATE_COLUMNS} FROM templates t JOIN template_versions v ON v.name = t.name
         WHERE t.name = ?1 AND v.version = COALESCE(?2, t.latest)"
    );
    let version = version.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    c.prepare_cached(&sql)
        .and_then(|mut s| s.query_row(params![name, version], template_row).optional())
        .ctx("read a template")
}

/// The latest version of each live template by name; the cursor is the last name returned.
pub(crate) fn list_templates(
    c: &Connection,
    limit: usize,
    cursor: Option<&str>,
) -> StoreResult<Page<TemplateRow>> {
    let sql = format!(
        "SELECT {TEMPLATE_COLUMNS} FROM templates t JOIN template_versions v
           ON v.name = t.name AND v.version = t.latest
         WHERE t.deleted_at IS NULL AND (?1 IS NULL OR t.name > ?1)
         ORDER BY t.name LIMIT ?2"
    );
    let mut items: Vec<TemplateRow> = c
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(params![cursor, (limit + 1) as i64], template_row)?
                .collect()
        })
        .ctx("list templates")?;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|t| t.name.clone())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// Every version of `name`, oldest first.
pub(crate) fn template_versions(c: &Connection, name: &str) -> StoreResult<Vec<TemplateRow>> {
    let sql = format!(
        "SELECT {TEMPLATE_COLUMNS} FROM templates t JOIN template_versions v ON v.name = t.name
         WHERE t.name = ?1 ORDER BY v.version"
    );
    c.prepare_cached(&sql)
        .and_then(|mut s| s.query_map([name], template_row)?.collect())
        .ctx("list template versions")
}

pub(crate) fn cursor(c: &Connection, name: &str) -> StoreResult<Option<u64>> {
    c.prepare_cached("SELECT value FROM cursors WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], |r| r.get::<_, i64>(0)).optional())
        .ctx("read a cursor")
        .map(|v| v.map(|v| v.max(0) as u64))
}

/// A plan's lease as stored.
pub(crate) fn lease(c: &Connection, plan_id: &str) -> StoreResult<Option<LeaseRow>> {
    c.prepare_cached(
        "SELECT l.node, l.token, l.expires_at FROM leases l JOIN plans p ON p.pk = l.plan_pk
         WHERE p.plan_id = ?1",
    )
    .and_then(|mut s| {
        s.query_row([plan_id], |r| {
            let expires_at: i64 = r.get(2)?;
            Ok(LeaseRow {
                plan_id: plan_id.to_owned(),
                owner: r.get(0)?,
                token: crate::from_sql(r.get(1)?),
                expires_at,
                released: expires_at == crate::writer::RELEASED,
            })
        })
        .optional()
    })
    .ctx("read a lease")
}

/// How many unexpired leases each node holds.
pub(crate) fn live_leases_by_owner(
    c: &Connection,
    now: i64,
) -> StoreResult<std::collections::HashMap<String, u64>> {
    let mut s = c
        .prepare_cached("SELECT node, count(*) FROM leases WHERE expires_at > ?1 GROUP BY node")
        .ctx("count leases")?;
    let rows = s
        .query_map([now], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .ctx("count leases")?;
    let mut out = std::collections::HashMap::new();
    for row in rows {
        let (node, n) = row.ctx("count leases")?;
        out.insert(node, n.max(0) as u64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_store::{CreatePlan, EventLog, NewEvent};

    /// A cached read statement is reused as prepared when only its bound values change: reading
    /// the events of one plan after another re-prepares nothing.
    #[tokio::test]
    async fn reading_the_events_of_plan_after_plan_never_re_prepares_the_statement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let store = crate::SqliteStore::open(&path, crate::SqliteOptions::default()).unwrap();
        for i in 0..5 {
            let event = NewEvent {
                seq: 1,
                at: 1,
                actor: "a".into(),
                kind: "plan_registered".into(),
                data: "{}".into(),
                format: 1,
                checkpoint: None,
            };
            store
                .create_plan(CreatePlan {
                    plan_id: format!("p{i}"),
                    created_at: 1,
                    state: "idle".into(),
                    events: vec![event],
                    reviews: vec![],
                })
                .await
                .unwrap();
        }
        let pool = ReadPool::new(path);
        pool.with(|c| {
            for i in 0..5 {
                assert_eq!(events(c, &format!("p{i}"), 0, None, 100)?.len(), 1);
            }
            let sql = format!(
                "SELECT {EVENT_COLS} FROM events WHERE plan_pk = ?1 AND seq > ?2 AND seq <= ?3
         ORDER BY seq LIMIT ?4"
            );
            let stmt = c.prepare_cached(&sql).unwrap();
            assert_eq!(stmt.get_status(rusqlite::StatementStatus::Run), 5);
            assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
            Ok(())
        })
        .unwrap();
    }
}
