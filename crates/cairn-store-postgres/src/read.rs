//! Reads: queries run on pooled connections, each one statement (so each sees one consistent
//! snapshot), prepared once per connection.

use cairn_store::{
    CheckpointMark, CheckpointRow, LeaseRow, OpenReviews, Page, PlanRow, ReviewRow, StoreError,
    StoreResult, StoredEvent, TemplateRow, TokenRow,
};
use deadpool_postgres::Object;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::{backend, from_sql, limit_sql, to_sql};

const EVENT_COLS: &str =
    "e.id, e.seq, e.kind, e.at, e.actor, e.data, e.cp_trigger, e.cp_label, e.format";

fn event(r: &Row, plan_id: String) -> StoredEvent {
    let trigger: Option<String> = r.get(6);
    StoredEvent {
        id: from_sql(r.get(0)),
        plan_id,
        seq: from_sql(r.get(1)),
        kind: r.get(2),
        at: r.get(3),
        actor: r.get(4),
        data: r.get(5),
        format: u32::try_from(r.get::<_, i32>(8)).unwrap_or(1),
        checkpoint: trigger.map(|trigger| CheckpointMark {
            trigger,
            label: r.get(7),
        }),
    }
}

async fn query(c: &Object, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Vec<Row>> {
    let stmt = c.prepare_cached(sql).await.map_err(backend)?;
    c.query(&stmt, params).await.map_err(backend)
}

async fn query_opt(
    c: &Object,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<Option<Row>> {
    let stmt = c.prepare_cached(sql).await.map_err(backend)?;
    c.query_opt(&stmt, params).await.map_err(backend)
}

/// `NotFound` unless the plan exists (asked only when a read found no rows).
async fn must_exist(c: &Object, plan_id: &str) -> StoreResult<()> {
    match query_opt(c, "SELECT 1 FROM plans WHERE plan_id = $1", &[&plan_id]).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound(plan_id.to_owned())),
    }
}

pub(crate) async fn events(
    c: &Object,
    plan_id: &str,
    after_seq: u64,
    until_seq: Option<u64>,
    limit: usize,
) -> StoreResult<Vec<StoredEvent>> {
    let until = until_seq.map_or(i64::MAX, to_sql);
    let sql = format!(
        "SELECT {EVENT_COLS} FROM plans p JOIN events e ON e.plan_pk = p.pk
         WHERE p.plan_id = $1 AND e.seq > $2 AND e.seq <= $3 ORDER BY e.seq LIMIT $4"
    );
    let rows = query(
        c,
        &sql,
        &[&plan_id, &to_sql(after_seq), &until, &limit_sql(limit)],
    )
    .await?;
    if rows.is_empty() {
        must_exist(c, plan_id).await?;
    }
    Ok(rows.iter().map(|r| event(r, plan_id.to_owned())).collect())
}

pub(crate) async fn events_of_kind(
    c: &Object,
    plan_id: &str,
    kinds: &[&str],
    after_seq: u64,
    limit: usize,
) -> StoreResult<Vec<StoredEvent>> {
    let kinds: Vec<&str> = kinds.to_vec();
    let sql = format!(
        "SELECT {EVENT_COLS} FROM plans p JOIN events e ON e.plan_pk = p.pk
         WHERE p.plan_id = $1 AND e.seq > $2 AND e.kind = ANY($3) ORDER BY e.seq LIMIT $4"
    );
    let rows = query(
        c,
        &sql,
        &[&plan_id, &to_sql(after_seq), &kinds, &limit_sql(limit)],
    )
    .await?;
    if rows.is_empty() {
        must_exist(c, plan_id).await?;
    }
    Ok(rows.iter().map(|r| event(r, plan_id.to_owned())).collect())
}

/// Events of every plan after `after_id`. Ids are assigned in commit order (see the crate
/// docs), so what one statement sees is a prefix of the ids that will ever exist.
pub(crate) async fn all_events(
    c: &Object,
    after_id: u64,
    limit: usize,
) -> StoreResult<Vec<StoredEvent>> {
    let sql = format!(
        "SELECT {EVENT_COLS}, (SELECT p.plan_id FROM plans p WHERE p.pk = e.plan_pk)
         FROM events e WHERE e.id > $1 ORDER BY e.id LIMIT $2"
    );
    let rows = query(c, &sql, &[&to_sql(after_id), &limit_sql(limit)]).await?;
    // A plan and its events go together (one snapshot of both): the plan is always found.
    Ok(rows
        .iter()
        .filter_map(|r| Some(event(r, r.get::<_, Option<String>>(9)?)))
        .collect())
}

/// The highest id ever handed out by a committed transaction (kept across deletes).
pub(crate) async fn last_event_id(c: &Object) -> StoreResult<u64> {
    let row = query_opt(c, "SELECT last_id FROM cairn_counter", &[]).await?;
    Ok(row.map_or(0, |r| from_sql(r.get(0))))
}

const PLAN_COLS: &str = "plan_id, state, created_at, updated_at, last_seq, pk";

fn plan_row(r: &Row) -> (PlanRow, i64) {
    (
        PlanRow {
            plan_id: r.get(0),
            state: r.get(1),
            created_at: r.get(2),
            updated_at: r.get(3),
            last_seq: from_sql(r.get(4)),
        },
        r.get(5),
    )
}

pub(crate) async fn plan(c: &Object, plan_id: &str) -> StoreResult<Option<PlanRow>> {
    let sql = format!("SELECT {PLAN_COLS} FROM plans WHERE plan_id = $1");
    Ok(query_opt(c, &sql, &[&plan_id])
        .await?
        .map(|r| plan_row(&r).0))
}

/// A listing position: the `(time, pk)` of the last row returned, written `time.pk` (the same
/// cursors as the SQLite store's).
pub(crate) use cairn_store::{format_cursor, parse_cursor, KeysetCursor as Cursor};

/// A keyset listing: one page of rows in the order of two key columns (a time and the row's
/// `pk`), resuming after the key of the last row of the previous page.
struct Keyset<'a> {
    select: &'a str,
    /// Conditions with one `?` for their value, applied when the value is given.
    filters: &'a [(&'a str, Option<&'a str>)],
    key: (&'a str, &'a str),
    newest_first: bool,
}

impl Keyset<'_> {
    async fn page<T>(
        &self,
        c: &Object,
        limit: usize,
        after: Option<Cursor>,
        row: impl Fn(&Row) -> (T, Cursor),
    ) -> StoreResult<Page<T>> {
        let mut clauses = Vec::new();
        let mut texts: Vec<&str> = Vec::new();
        for (condition, value) in self.filters {
            if let Some(value) = value {
                texts.push(value);
                clauses.push(condition.replace('?', &format!("${}", texts.len())));
            }
        }
        let mut params: Vec<&(dyn ToSql + Sync)> =
            texts.iter().map(|t| t as &(dyn ToSql + Sync)).collect();
        let (at_col, pk_col) = self.key;
        let (past, direction) = if self.newest_first {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        let after_at;
        let after_pk;
        if let Some((at, pk)) = after {
            after_at = at;
            after_pk = pk;
            params.push(&after_at);
            params.push(&after_pk);
            clauses.push(format!(
                "({at_col}, {pk_col}) {past} (${}, ${})",
                params.len() - 1,
                params.len()
            ));
        }
        let fetch = limit_sql(limit).saturating_add(1);
        params.push(&fetch);
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "{} {filter} ORDER BY {at_col} {direction}, {pk_col} {direction} LIMIT ${}",
            self.select,
            params.len()
        );
        let rows = query(c, &sql, &params).await?;
        let mut rows: Vec<(T, Cursor)> = rows.iter().map(row).collect();
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
pub(crate) async fn list_plans(
    c: &Object,
    state: Option<&str>,
    id_contains: Option<&str>,
    limit: usize,
    after: Option<Cursor>,
) -> StoreResult<Page<PlanRow>> {
    let select = format!("SELECT {PLAN_COLS} FROM plans");
    let listing = Keyset {
        select: &select,
        // strpos, not LIKE: no character of an id is ever a wildcard.
        filters: &[
            ("state = ?", state),
            ("strpos(plan_id, ?) > 0", id_contains),
        ],
        key: ("created_at", "pk"),
        newest_first: true,
    };
    listing
        .page(c, limit, after, |r| {
            let (row, pk) = plan_row(r);
            let key = (row.created_at, pk);
            (row, key)
        })
        .await
}

/// Reviews oldest opened first; the cursor is the `(opened_at, pk)` of the last one returned.
pub(crate) async fn list_reviews(
    c: &Object,
    state: Option<&str>,
    plan_id: Option<&str>,
    limit: usize,
    after: Option<Cursor>,
) -> StoreResult<Page<ReviewRow>> {
    let listing = Keyset {
        select: "SELECT p.plan_id, r.review_id, r.state, r.opened_at, r.data, r.pk
                 FROM reviews r JOIN plans p ON p.pk = r.plan_pk",
        filters: &[("r.state = ?", state), ("p.plan_id = ?", plan_id)],
        key: ("r.opened_at", "r.pk"),
        newest_first: false,
    };
    listing
        .page(c, limit, after, |r| {
            let row = ReviewRow {
                plan_id: r.get(0),
                review_id: r.get(1),
                state: r.get(2),
                opened_at: r.get(3),
                data: r.get(4),
            };
            let key = (row.opened_at, r.get::<_, i64>(5));
            (row, key)
        })
        .await
}

pub(crate) async fn open_reviews(c: &Object) -> StoreResult<OpenReviews> {
    let rows = query(
        c,
        "SELECT COUNT(*), MIN(opened_at) FROM reviews WHERE state = 'open'",
        &[],
    )
    .await?;
    let r = rows
        .first()
        .ok_or_else(|| StoreError::Backend("count open reviews: no row".into()))?;
    Ok(OpenReviews {
        count: from_sql(r.get(0)),
        oldest_opened_at: r.get(1),
    })
}

pub(crate) async fn plans_in_states(c: &Object, states: &[&str]) -> StoreResult<Vec<String>> {
    if states.is_empty() {
        return Ok(Vec::new());
    }
    let states: Vec<&str> = states.to_vec();
    let rows = query(
        c,
        "SELECT plan_id FROM plans WHERE state = ANY($1) ORDER BY pk",
        &[&states],
    )
    .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub(crate) async fn count_plans_by_state(c: &Object) -> StoreResult<Vec<(String, u64)>> {
    let rows = query(
        c,
        "SELECT state, COUNT(*) FROM plans GROUP BY state ORDER BY state",
        &[],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), from_sql(r.get(1))))
        .collect())
}

fn checkpoint_row(r: &Row, plan_id: String) -> CheckpointRow {
    CheckpointRow {
        plan_id,
        seq: from_sql(r.get(0)),
        at: r.get(1),
        trigger: r.get(2),
        label: r.get(3),
    }
}

pub(crate) async fn checkpoints(
    c: &Object,
    plan_id: &str,
    after_seq: u64,
    limit: usize,
) -> StoreResult<Vec<CheckpointRow>> {
    let rows = query(
        c,
        "SELECT e.seq, e.at, e.cp_trigger, e.cp_label FROM plans p
         JOIN events e ON e.plan_pk = p.pk
         WHERE p.plan_id = $1 AND e.cp_trigger IS NOT NULL AND e.seq > $2
         ORDER BY e.seq LIMIT $3",
        &[&plan_id, &to_sql(after_seq), &limit_sql(limit)],
    )
    .await?;
    if rows.is_empty() {
        must_exist(c, plan_id).await?;
    }
    Ok(rows
        .iter()
        .map(|r| checkpoint_row(r, plan_id.to_owned()))
        .collect())
}

pub(crate) async fn checkpoint(
    c: &Object,
    plan_id: &str,
    seq: u64,
) -> StoreResult<Option<CheckpointRow>> {
    let row = query_opt(
        c,
        "SELECT e.seq, e.at, e.cp_trigger, e.cp_label FROM plans p
         JOIN events e ON e.plan_pk = p.pk
         WHERE p.plan_id = $1 AND e.cp_trigger IS NOT NULL AND e.seq = $2",
        &[&plan_id, &to_sql(seq)],
    )
    .await?;
    if row.is_none() {
        must_exist(c, plan_id).await?;
    }
    Ok(row.map(|r| checkpoint_row(&r, plan_id.to_owned())))
}

pub(crate) async fn snapshot(
    c: &Object,
    plan_id: &str,
    at_or_before: u64,
) -> StoreResult<Option<(u64, Vec<u8>)>> {
    // One statement whether or not the plan has a snapshot yet (a plan loaded for its first
    // command has none): a row for the plan, with the snapshot when there is one.
    let row = query_opt(
        c,
        "SELECT s.seq, s.data FROM plans p
         LEFT JOIN LATERAL (SELECT seq, data FROM snapshots
                            WHERE plan_pk = p.pk AND seq <= $2
                            ORDER BY seq DESC LIMIT 1) s ON true
         WHERE p.plan_id = $1",
        &[&plan_id, &to_sql(at_or_before)],
    )
    .await?
    .ok_or_else(|| StoreError::NotFound(plan_id.to_owned()))?;
    let seq: Option<i64> = row.get(0);
    Ok(seq.map(|seq| (from_sql(seq), row.get(1))))
}

pub(crate) async fn lease(c: &Object, plan_id: &str) -> StoreResult<Option<LeaseRow>> {
    let row = query_opt(
        c,
        "SELECT l.node, l.token, l.expires_at, l.released FROM plans p
         JOIN leases l ON l.plan_pk = p.pk WHERE p.plan_id = $1",
        &[&plan_id],
    )
    .await?;
    Ok(row.map(|r| LeaseRow {
        plan_id: plan_id.to_owned(),
        owner: r.get(0),
        token: from_sql(r.get(1)),
        expires_at: r.get(2),
        released: r.get(3),
    }))
}

const TOKEN_COLS: &str = "id, user_name, role, hash, created_at, revoked_at, expires_at";

fn token_row(r: &Row) -> TokenRow {
    TokenRow {
        id: r.get(0),
        user: r.get(1),
        role: r.get(2),
        hash: r.get(3),
        created_at: r.get(4),
        revoked_at: r.get(5),
        expires_at: r.get(6),
    }
}

const TEMPLATE_COLS: &str =
    "v.name, v.version, v.content, v.created_at, v.created_by, t.deleted_at";

fn template_row(r: &Row) -> TemplateRow {
    TemplateRow {
        name: r.get(0),
        version: from_sql(r.get(1)),
        content: r.get(2),
        created_at: r.get(3),
        created_by: r.get(4),
        deleted_at: r.get(5),
    }
}

/// Version `version` of `name`, or its latest.
pub(crate) async fn template(
    c: &Object,
    name: &str,
    version: Option<u64>,
) -> StoreResult<Option<TemplateRow>> {
    let sql = format!(
        "SELECT {TEMPLATE_COLS} FROM templates t JOIN template_versions v ON v.name = t.name
         WHERE t.name = $1 AND v.version = COALESCE($2, t.latest)"
    );
    let version = version.map(to_sql);
    Ok(query_opt(c, &sql, &[&name, &version])
        .await?
        .map(|r| template_row(&r)))
}

/// The latest version of each live template by name; the cursor is the last name returned.
pub(crate) async fn list_templates(
    c: &Object,
    limit: usize,
    cursor: Option<&str>,
) -> StoreResult<Page<TemplateRow>> {
    let sql = format!(
        "SELECT {TEMPLATE_COLS} FROM templates t JOIN template_versions v
           ON v.name = t.name AND v.version = t.latest
         WHERE t.deleted_at IS NULL AND ($1::TEXT IS NULL OR t.name COLLATE \"C\" > $1)
         ORDER BY t.name COLLATE \"C\" LIMIT $2"
    );
    let mut items: Vec<TemplateRow> = query(c, &sql, &[&cursor, &limit_sql(limit + 1)])
        .await?
        .iter()
        .map(template_row)
        .collect();
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|t| t.name.clone())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// Every version of `name`, oldest first.
pub(crate) async fn template_versions(c: &Object, name: &str) -> StoreResult<Vec<TemplateRow>> {
    let sql = format!(
        "SELECT {TEMPLATE_COLS} FROM templates t JOIN template_versions v ON v.name = t.name
         WHERE t.name = $1 ORDER BY v.version"
    );
    Ok(query(c, &sql, &[&name])
        .await?
        .iter()
        .map(template_row)
        .collect())
}

pub(crate) async fn tokens(c: &Object) -> StoreResult<Vec<TokenRow>> {
    let sql = format!("SELECT {TOKEN_COLS} FROM tokens ORDER BY created_at, id");
    Ok(query(c, &sql, &[]).await?.iter().map(token_row).collect())
}

pub(crate) async fn token_by_hash(c: &Object, hash: &str) -> StoreResult<Option<TokenRow>> {
    let sql = format!("SELECT {TOKEN_COLS} FROM tokens WHERE hash = $1");
    Ok(query_opt(c, &sql, &[&hash]).await?.map(|r| token_row(&r)))
}
