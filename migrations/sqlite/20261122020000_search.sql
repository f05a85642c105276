-- Trigram full-text index over the searched text and the resource specifiers, so rare `q`
-- and `spec` terms do not scan the table. Contentless: its rowid is `events.seq`. A
-- background indexer fills it in batches when the writer is idle; `search_state` records
-- how far it got (events with a higher seq are scanned instead).
CREATE VIRTUAL TABLE events_fts USING fts5(search, resources, content = '', tokenize = 'trigram');
CREATE TABLE search_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_seq INTEGER NOT NULL
);
INSERT INTO search_state (id, indexed_seq) VALUES (1, 0);
