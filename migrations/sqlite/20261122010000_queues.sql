-- Per-consumer queue positions: the last `events.seq` (arrival order) each consumer received.
CREATE TABLE consumers (
    name       TEXT PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
