-- Leases: which instance runs a singleton job (catch-up) until when. With SQLite there is
-- normally one instance; the table keeps the behaviour the same as on Postgres.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);
