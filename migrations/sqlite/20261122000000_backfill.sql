-- Backfill jobs and their time windows. A window's progress (its next link) is saved only
-- after the page's entries are committed, so a killed job resumes without loss.
CREATE TABLE backfill_jobs (
    id               INTEGER PRIMARY KEY,
    requested_after  INTEGER,
    requested_before INTEGER,
    spec             TEXT,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER
);

CREATE TABLE backfill_windows (
    job_id    INTEGER NOT NULL REFERENCES backfill_jobs (id),
    idx       INTEGER NOT NULL,
    after_ms  INTEGER NOT NULL,
    before_ms INTEGER NOT NULL,
    next_href TEXT,
    done      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
);
