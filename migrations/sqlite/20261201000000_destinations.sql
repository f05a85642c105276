-- Forwarding: one row per destination (its cursor on `events.seq`, moved only after the
-- receiver accepted everything up to it), and its dead letters.
--
-- `floor_seq`/`floor_date` start a destination (or a replay) at a time: events with
-- `seq <= floor_seq` (stored before it started) are delivered only when dated at or after
-- `floor_date`; everything stored later is delivered whatever its date.
CREATE TABLE destinations (
    name        TEXT    PRIMARY KEY,
    position    INTEGER NOT NULL,
    floor_seq   INTEGER NOT NULL DEFAULT 0,
    floor_date  INTEGER NOT NULL DEFAULT 0,
    delivered   INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Events a receiver refused (a 4xx other than 408/429): the status and the first 20 KB of
-- the answer. `replay` marks the ones asked to be delivered again.
CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    status      INTEGER,
    error       TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    replay      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX dead_letters_destination ON dead_letters (destination, id);
