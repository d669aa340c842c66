-- Schema version 5: the review inbox, an index of every plan's reviews. Rows are written in the
-- same transaction as the events that open, decide or void a review; `data` is the review as a
-- JSON document. Databases of earlier versions had no reviews, so the table starts empty.
CREATE TABLE reviews (
    pk        INTEGER PRIMARY KEY,
    plan_pk   INTEGER NOT NULL,
    review_id TEXT    NOT NULL,
    state     TEXT    NOT NULL,
    opened_at INTEGER NOT NULL,
    data      TEXT    NOT NULL,
    UNIQUE (plan_pk, review_id)
);
CREATE INDEX reviews_by_opened ON reviews (opened_at, pk);
CREATE INDEX reviews_by_state ON reviews (state, opened_at, pk);
