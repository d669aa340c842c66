-- Schema version 6: named templates. `templates` has one row per name (its latest version and
-- whether it was deleted); `template_versions` keeps every version, never changed once written.
-- Databases of earlier versions had no templates, so both tables start empty.
CREATE TABLE templates (
    name       TEXT    PRIMARY KEY,
    latest     INTEGER NOT NULL,
    deleted_at INTEGER
);
CREATE TABLE template_versions (
    name       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    content    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT    NOT NULL,
    PRIMARY KEY (name, version)
);
