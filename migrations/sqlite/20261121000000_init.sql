-- Events: the body exactly as received plus the columns readers filter and sort on.
-- `seq` is arrival order (queues); `date` + `id` is event order (readers, paging).
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    date         INTEGER NOT NULL,
    kind         TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    title        TEXT    NOT NULL,
    member_id    TEXT,
    member_email TEXT,
    token_id     TEXT,
    accesses     TEXT    NOT NULL,
    resources    TEXT    NOT NULL,
    search       TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    received_at  INTEGER NOT NULL,
    raw          TEXT    NOT NULL
);
CREATE INDEX events_date_id ON events (date, id);
CREATE INDEX events_member ON events (member_id, date) WHERE member_id IS NOT NULL;
CREATE INDEX events_token ON events (token_id, date) WHERE token_id IS NOT NULL;

-- Generated credentials (as SHA-256 digests) and other small state.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
