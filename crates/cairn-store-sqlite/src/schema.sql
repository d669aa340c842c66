-- Schema version 1 of cairn's SQLite store. Applied once, inside a transaction, when
-- PRAGMA user_version is 0; later versions add files of their own.

-- One index row per plan, so plans can be listed without replaying them.
CREATE TABLE plans (
    pk         INTEGER PRIMARY KEY,
    plan_id    TEXT    NOT NULL UNIQUE,
    state      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL
);
CREATE INDEX plans_by_created ON plans (created_at DESC, pk DESC);
CREATE INDEX plans_by_state ON plans (state, created_at DESC, pk DESC);

-- Every plan's log. `id` is the global id: AUTOINCREMENT so it is never reused after a delete,
-- since global stream consumers resume by id.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    plan_pk    INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    data       TEXT    NOT NULL,
    cp_trigger TEXT,
    cp_label   TEXT
);
CREATE UNIQUE INDEX events_by_plan ON events (plan_pk, seq);
-- A checkpoint is a mark on an event: two short columns plus an entry here, never a state copy.
CREATE INDEX checkpoints_by_plan ON events (plan_pk, seq) WHERE cp_trigger IS NOT NULL;

-- Materialised states; only the newest few per plan are kept.
CREATE TABLE snapshots (
    plan_pk INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    data    BLOB    NOT NULL,
    PRIMARY KEY (plan_pk, seq)
) WITHOUT ROWID;

-- Who drives a plan. A released lease keeps its row (expired) so tokens only ever grow.
CREATE TABLE leases (
    plan_pk    INTEGER PRIMARY KEY,
    node       TEXT    NOT NULL,
    token      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
