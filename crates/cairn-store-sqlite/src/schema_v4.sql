-- Schema version 4: each event records the log format its data is written in. Events stored
-- before were written in format 1.
ALTER TABLE events ADD COLUMN format INTEGER NOT NULL DEFAULT 1;
