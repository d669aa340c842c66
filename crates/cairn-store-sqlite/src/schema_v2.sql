-- Schema version 2: API tokens (hashed) and named cursors (webhook delivery positions).
CREATE TABLE tokens (
    id         TEXT    PRIMARY KEY,
    user       TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    hash       TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

CREATE TABLE cursors (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
