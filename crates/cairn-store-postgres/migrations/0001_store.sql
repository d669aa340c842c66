-- The store's tables (filled in by the store's implementation).
CREATE TABLE IF NOT EXISTS cairn_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
