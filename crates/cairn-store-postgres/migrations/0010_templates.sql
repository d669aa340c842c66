-- Named templates. `templates` has one row per name (its latest version and when it was
-- deleted); `template_versions` keeps every version, never changed once written. A push locks
-- the name's row, so two nodes pushing the same name at once number their versions in turn.
CREATE TABLE templates (
    name       TEXT PRIMARY KEY,
    latest     BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE TABLE template_versions (
    name       TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    -- The template's canonical JSON text, kept byte for byte: an identical push compares equal.
    content    TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT   NOT NULL,
    PRIMARY KEY (name, version)
);
