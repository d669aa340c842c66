-- Version 1 of cairn's PostgreSQL store: every table of the store. Times are microseconds
-- since the Unix epoch (BIGINT), like every timestamp cairn keeps; lease and heartbeat times are
-- the database's own clock (cairn_now()), never a node's.

-- The database's clock in microseconds: every expiry is judged by it, so nodes whose clocks
-- disagree still agree on which lease has run out. `now()` is the start of the transaction.
CREATE FUNCTION cairn_now() RETURNS BIGINT
    LANGUAGE sql STABLE
    AS $$ SELECT (extract(epoch FROM now()) * 1000000)::BIGINT $$;

-- Small shared values (the cluster secret).
CREATE TABLE IF NOT EXISTS cairn_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- The last global event id handed out. One row: a writing transaction takes its ids with
-- `UPDATE … SET last_id = last_id + n RETURNING last_id`, whose row lock is held until commit,
-- so ids are assigned in commit order and a reader that sees id N has seen every smaller id.
CREATE TABLE cairn_counter (
    one     BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    last_id BIGINT  NOT NULL
);
INSERT INTO cairn_counter (one, last_id) VALUES (true, 0);

-- One index row per plan, so plans can be listed without replaying them.
CREATE TABLE plans (
    pk         BIGSERIAL PRIMARY KEY,
    plan_id    TEXT   NOT NULL UNIQUE,
    state      TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_seq   BIGINT NOT NULL
);
CREATE INDEX plans_by_created ON plans (created_at DESC, pk DESC);
CREATE INDEX plans_by_state ON plans (state, created_at DESC, pk DESC);

-- Every plan's log. `id` comes from cairn_counter (never reused after a delete).
CREATE TABLE events (
    id         BIGINT  PRIMARY KEY,
    plan_pk    BIGINT  NOT NULL,
    seq        BIGINT  NOT NULL,
    kind       TEXT    NOT NULL,
    at         BIGINT  NOT NULL,
    actor      TEXT    NOT NULL,
    data       TEXT    NOT NULL,
    cp_trigger TEXT,
    cp_label   TEXT,
    format     INTEGER NOT NULL
);
CREATE UNIQUE INDEX events_by_plan ON events (plan_pk, seq);
CREATE INDEX checkpoints_by_plan ON events (plan_pk, seq) WHERE cp_trigger IS NOT NULL;

-- Materialised states; only the newest few per plan are kept.
CREATE TABLE snapshots (
    plan_pk BIGINT NOT NULL,
    seq     BIGINT NOT NULL,
    data    BYTEA  NOT NULL,
    PRIMARY KEY (plan_pk, seq)
);

-- Who drives a plan. A released lease keeps its row (marked) so tokens only ever grow and
-- take_over leaves it alone; `expires_at` is by cairn_now().
CREATE TABLE leases (
    plan_pk    BIGINT  PRIMARY KEY,
    node       TEXT    NOT NULL,
    token      BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL,
    released   BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX leases_by_expiry ON leases (expires_at) WHERE NOT released;
CREATE INDEX leases_by_node ON leases (node);

-- The review inbox: written in the same transaction as the events that change a review.
CREATE TABLE reviews (
    pk        BIGSERIAL PRIMARY KEY,
    plan_pk   BIGINT NOT NULL,
    review_id TEXT   NOT NULL,
    state     TEXT   NOT NULL,
    opened_at BIGINT NOT NULL,
    data      TEXT   NOT NULL,
    UNIQUE (plan_pk, review_id)
);
CREATE INDEX reviews_by_opened ON reviews (opened_at, pk);
CREATE INDEX reviews_by_state ON reviews (state, opened_at, pk);

-- API tokens, by hash.
CREATE TABLE tokens (
    id         TEXT   PRIMARY KEY,
    user_name  TEXT   NOT NULL,
    role       TEXT   NOT NULL,
    hash       TEXT   NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    expires_at BIGINT
);

-- Named positions (webhook deliveries), and which node may advance each one until when.
CREATE TABLE cursors (
    name  TEXT   PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE cursor_leases (
    name       TEXT   PRIMARY KEY,
    node       TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);

-- The engine nodes sharing this database; `heartbeat_at` is by cairn_now().
CREATE TABLE nodes (
    node_id      TEXT   PRIMARY KEY,
    address      TEXT,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
