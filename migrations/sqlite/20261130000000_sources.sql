-- Several sources in one archive: events are identified by `(source, id)`. Every event
-- stored so far is LaunchDarkly's; what was the `source` column (hook or REST) is the
-- arrival `channel`. The common envelope (`actor`, `action`, `resource`, `summary`) gets
-- columns, filled here for stored events exactly as `event::normalise` fills them: actor =
-- the member's email, else the token's name, else the member's or token's id; action and
-- resource = the first access; summary = the title. SQLite cannot change a UNIQUE
-- constraint in place, so the table is rebuilt; `seq` is kept, so queue positions and the
-- search index (keyed by seq) stay valid.
CREATE TABLE events_v2 (
    seq          INTEGER PRIMARY KEY,
    source       TEXT    NOT NULL,
    id           TEXT    NOT NULL,
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
    channel      TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    resource     TEXT    NOT NULL,
    summary      TEXT    NOT NULL,
    received_at  INTEGER NOT NULL,
    raw          TEXT    NOT NULL,
    UNIQUE (source, id)
);
INSERT INTO events_v2 (seq, source, id, date, kind, name, title, member_id, member_email,
                       token_id, accesses, resources, search, channel, actor, action,
                       resource, summary, received_at, raw)
SELECT seq, 'launchdarkly', id, date, kind, name, title, member_id, member_email, token_id,
       accesses, resources, search, source,
       COALESCE(NULLIF(member_email, ''),
                NULLIF(CASE WHEN json_valid(raw) THEN json_extract(raw, '$.token.name') END, ''),
                NULLIF(member_id, ''), NULLIF(token_id, ''), ''),
       COALESCE(json_extract(accesses, '$[0].action'), ''),
       COALESCE(json_extract(accesses, '$[0].resource'), ''),
       title, received_at, raw
FROM events;
DROP TABLE events;
ALTER TABLE events_v2 RENAME TO events;
-- Event order is (date, id, source): ties on date break on id, then source.
CREATE INDEX events_date_id ON events (date, id, source);
CREATE INDEX events_member ON events (member_id, date) WHERE member_id IS NOT NULL;
CREATE INDEX events_token ON events (token_id, date) WHERE token_id IS NOT NULL;
CREATE INDEX events_source_date ON events (source, date);

-- Position and progress of the Terraform Cloud and Carbon Black Cloud pollers: one row per
-- run (a backfill, or one poll), its window, and its progress as the source's poller
-- defines it (JSON), saved only after what it covers is committed.
CREATE TABLE source_runs (
    id          INTEGER PRIMARY KEY,
    source      TEXT    NOT NULL,
    after_ms    INTEGER NOT NULL,
    before_ms   INTEGER NOT NULL,
    progress    TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX source_runs_open ON source_runs (source, id) WHERE finished_at IS NULL;
