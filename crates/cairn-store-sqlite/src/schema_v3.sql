-- Schema version 3: tokens may expire (NULL: never). Old tokens keep NULL.
ALTER TABLE tokens ADD COLUMN expires_at INTEGER;
