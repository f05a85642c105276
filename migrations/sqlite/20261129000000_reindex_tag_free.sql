-- The search index now holds resources without their tags (`proj/a;web:env/b` is indexed as
-- `proj/a:env/b`), as the narrowing literals of `spec` are tag-free. Rows indexed before kept
-- the tags, so a tagged resource could be missed once indexed: rebuild the index from the
-- events. Until the background indexer catches up, the unindexed tail is scanned.
INSERT INTO events_fts (events_fts) VALUES ('delete-all');
UPDATE search_state SET indexed_seq = 0;
