//! SQLite backend: one writer thread committing groups of events, a small pool of read
//! connections, WAL journal with `synchronous=FULL` so a committed event survives a crash.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::functions::FunctionFlags;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, ToSql};
use tokio::sync::mpsc;

use super::writer::{gather, Group, WriteReq, Writer};
use super::{
    AckOutcome, BackfillJob, BackfillWindow, Cursor, DeadLetter, DeadLetterIn, DestinationRow,
    DestinationStats, ExportRow, Filter, Inserted, Listed, PageSpec, QueueBatch, Settle, SourceRun,
    StoreError, StoredEvent, EVENT_COLUMNS, EXPORT_COLUMNS, INDEX_BATCH,
};
use crate::event::{NewEvent, Source};
use crate::metrics::Metrics;
use crate::now_ms;

/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 16;

/// Migrations, applied in order; the version is the file's timestamp.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        20261121000000,
        include_str!("../../migrations/sqlite/20261121000000_init.sql"),
    ),
    (
        20261122000000,
        include_str!("../../migrations/sqlite/20261122000000_backfill.sql"),
    ),
    (
        20261122010000,
        include_str!("../../migrations/sqlite/20261122010000_queues.sql"),
    ),
    (
        20261122020000,
        include_str!("../../migrations/sqlite/20261122020000_search.sql"),
    ),
    (
        20261122030000,
        include_str!("../../migrations/sqlite/20261122030000_leases.sql"),
    ),
    (
        20261129000000,
        include_str!("../../migrations/sqlite/20261129000000_reindex_tag_free.sql"),
    ),
    (
        20261129010000,
        include_str!("../../migrations/sqlite/20261129010000_queue_leases.sql"),
    ),
    (
        20261130000000,
        include_str!("../../migrations/sqlite/20261130000000_sources.sql"),
    ),
    (
        20261201000000,
        include_str!("../../migrations/sqlite/20261201000000_destinations.sql"),
    ),
];

const INSERT_SQL: &str =
    "INSERT INTO events (id, date, kind, name, title, member_id, member_email, \
     token_id, accesses, resources, search, channel, received_at, raw, source, actor, action, \
     resource, summary) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19) \
     ON CONFLICT (source, id) DO NOTHING";

/// The file path of a `sqlite://PATH` URL (`sqlite:///abs` is absolute), or `None`.
pub fn path_from_url(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let rest = rest.split('?').next().unwrap_or(rest);
    Some(PathBuf::from(rest))
}

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Writer,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// A connection for small bookkeeping writes (settings, queue positions, leases).
    side: Arc<Mutex<Option<Connection>>>,
    /// A connection for backfill progress, committed without waiting for the disk
    /// (`synchronous=NORMAL`): a commit survives a killed process, and after a power loss
    /// the progress may only be older than the events, which a rerun fetches again and
    /// deduplicates. Saving progress after every page then costs no fsync.
    progress: Arc<Mutex<Option<Connection>>>,
    /// Stops the search indexer.
    indexer_stop: Arc<AtomicBool>,
    /// When the search indexer may work.
    pub(super) gate: Arc<super::writer::IndexerGate>,
    /// Candidates of the first pass of a text search.
    newest_candidates: i64,
    /// Read connections in use at once, at most (`AUDITHOOK_DATABASE_MAX_CONNECTIONS`):
    /// each holds a blocking thread, and each export a snapshot.
    read_permits: Arc<tokio::sync::Semaphore>,
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = open_connection(path)?;
    conn.pragma_update(None, "query_only", "ON")?;
    conn.create_scalar_function(
        "spec_match",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let pattern = ctx
                .get_raw(0)
                .as_str()
                .map_err(|e| rusqlite::Error::UserFunctionError(e.into()))?;
            let resources = ctx
                .get_raw(1)
                .as_str()
                .map_err(|e| rusqlite::Error::UserFunctionError(e.into()))?;
            Ok(resources
                .split('\n')
                .any(|r| crate::event::spec_matches(pattern, r)))
        },
    )?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    // Each migration commits atomically either way; without waiting for the disk, a new
    // store does not pay an fsync per migration before its first event. The first commit
    // after them (synchronous again) makes them durable with it; a power loss before that
    // loses whole migrations, which run again.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let applied = migrate_all(conn);
    conn.pragma_update(None, "synchronous", "FULL")?;
    applied
}

fn migrate_all(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    for (version, sql) in MIGRATIONS {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let done: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM _migrations WHERE version = ?1)",
            [version],
            |r| r.get(0),
        )?;
        if !done {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO _migrations (version, applied_at) VALUES (?1, ?2)",
                params![version, now_ms()],
            )?;
            tracing::info!(version, "applied migration");
        }
        tx.commit()?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens the file (creating it and its directory if needed), migrates it and starts the writer.
    pub async fn open(
        path: &Path,
        options: &super::StoreOptions,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let path = path.to_path_buf();
        let writer_conn = tokio::task::spawn_blocking({
            let path = path.clone();
            move || -> anyhow::Result<Connection> {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        anyhow::anyhow!("cannot create directory {}: {e}", dir.display())
                    })?;
                }
                let mut conn = open_connection(&path).map_err(|e| {
                    anyhow::anyhow!("cannot open SQLite database {}: {e}", path.display())
                })?;
                migrate(&mut conn)
                    .map_err(|e| anyhow::anyhow!("migrating {}: {e}", path.display()))?;
                Ok(conn)
            }
        })
        .await??;
        // The search index's lag is known before the indexer first runs.
        let lag: i64 = writer_conn
            .query_row(
                "SELECT coalesce(max(seq), 0) - (SELECT indexed_seq FROM search_state) FROM events",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        metrics.search_unindexed.set(lag.max(0));
        let (writer, rx) = Writer::channel();
        let last_commit = Arc::new(super::writer::IndexerGate::default());
        let indexer_stop = Arc::new(AtomicBool::new(false));
        if options.background_indexer {
            let (path, last_commit, stop, metrics) = (
                path.clone(),
                last_commit.clone(),
                indexer_stop.clone(),
                metrics.clone(),
            );
            std::thread::Builder::new()
                .name("audithook-indexer".into())
                .spawn(move || indexer_loop(&path, &last_commit, &stop, &metrics))?;
        }
        let gate = last_commit.clone();
        let writer_last_commit = last_commit.clone();
        std::thread::Builder::new()
            .name("audithook-writer".into())
            .spawn(move || writer_loop(writer_conn, rx, &metrics, &writer_last_commit))?;
        Ok(Self {
            path,
            writer,
            readers: Arc::new(Mutex::new(Vec::new())),
            side: Arc::new(Mutex::new(None)),
            progress: Arc::new(Mutex::new(None)),
            indexer_stop,
            gate,
            newest_candidates: options.newest_candidates,
            read_permits: Arc::new(tokio::sync::Semaphore::new(
                options.max_connections.max(1) as usize
            )),
        })
    }

    pub(super) async fn insert(&self, event: NewEvent) -> Result<Inserted, StoreError> {
        self.writer.insert(event).await
    }

    pub(super) async fn insert_many(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Inserted>, StoreError> {
        self.writer.insert_many(events).await
    }

    /// Runs `f` on a pooled read connection in the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        let path = self.path.clone();
        let permit = self
            .read_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let idle = pool.lock().map(|mut p| p.pop()).unwrap_or(None);
            let conn = match idle {
                Some(c) => c,
                None => open_reader(&path)?,
            };
            let out = f(&conn);
            if out.is_ok() {
                if let Ok(mut p) = pool.lock() {
                    if p.len() < MAX_IDLE_READERS {
                        p.push(conn);
                    }
                }
            }
            Ok(out?)
        })
        .await
        .map_err(|e| StoreError::Other(format!("read task failed: {e}")))?
    }

    pub(super) async fn get(
        &self,
        source: Source,
        id: String,
    ) -> Result<Option<StoredEvent>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE source = ?1 AND id = ?2"
            ))?
            .query_row(params![source.as_str(), id], row_to_event)
            .optional()
        })
        .await
    }

    pub(super) async fn list_newest(
        &self,
        filter: Filter,
        cursor: Option<Cursor>,
        page: PageSpec,
    ) -> Result<Listed, StoreError> {
        let candidates = self.newest_candidates;
        self.read(move |c| {
            let text_search = filter.q.is_some() || filter.spec.is_some();
            if !text_search {
                return newest(c, &filter, cursor.as_ref(), page, Scope::All);
            }
            // Common terms: the newest few thousand candidates usually hold a page of
            // matches, and then they are the newest matches of all (the candidates are a
            // prefix of the events in this order, so their matches are a prefix of all).
            if candidates > 0 {
                let listed = newest(
                    c,
                    &filter,
                    cursor.as_ref(),
                    page,
                    Scope::NewestCandidates(candidates),
                )?;
                if listed.rows.len() >= page.limit || listed.cut {
                    return Ok(listed);
                }
            }
            // Rare terms: the trigram index, plus the events it has not indexed yet.
            let Some(matcher) = fts_match(&filter) else {
                return newest(c, &filter, cursor.as_ref(), page, Scope::All);
            };
            let indexed: i64 =
                c.query_row("SELECT indexed_seq FROM search_state", [], |r| r.get(0))?;
            newest(
                c,
                &filter,
                cursor.as_ref(),
                page,
                Scope::Indexed { matcher, indexed },
            )
        })
        .await
    }

    pub(super) async fn setting(&self, key: String) -> Result<Option<String>, StoreError> {
        self.read(move |c| {
            c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
        })
        .await
    }

    /// Runs `f` on the bookkeeping connection in the blocking pool.
    async fn side<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.on(self.side.clone(), false, f).await
    }

    /// Runs `f` on the backfill-progress connection in the blocking pool.
    async fn progress<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.on(self.progress.clone(), true, f).await
    }

    async fn on<T, F>(
        &self,
        slot: Arc<Mutex<Option<Connection>>>,
        relaxed: bool,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let side = slot;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = side.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                let conn = open_connection(&path)?;
                if relaxed {
                    conn.pragma_update(None, "synchronous", "NORMAL")?;
                }
                *guard = Some(conn);
            }
            match guard.as_mut() {
                Some(conn) => Ok(f(conn)?),
                None => Err(StoreError::Closed),
            }
        })
        .await
        .map_err(|e| StoreError::Other(format!("store task failed: {e}")))?
    }

    pub(super) async fn setting_insert_if_absent(
        &self,
        key: String,
        value: String,
    ) -> Result<String, StoreError> {
        self.side(move |conn| {
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                [&key, &value],
            )?;
            conn.query_row("SELECT value FROM settings WHERE key = ?1", [&key], |r| {
                r.get(0)
            })
        })
        .await
    }

    pub(super) fn export(
        &self,
        filter: Filter,
        with_raw: bool,
    ) -> mpsc::Receiver<Result<Vec<ExportRow>, StoreError>> {
        let (tx, rx) = mpsc::channel(2);
        let path = self.path.clone();
        let permits = self.read_permits.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let Ok(_permit) = handle.block_on(permits.acquire_owned()) else {
                let _ = tx.blocking_send(Err(StoreError::Closed));
                return;
            };
            let run = || -> Result<(), StoreError> {
                let conn = open_reader(&path)?;
                let mut sql = format!("SELECT {EXPORT_COLUMNS}");
                sql.push_str(if with_raw { ", raw" } else { ", NULL" });
                sql.push_str(" FROM events WHERE 1 = 1");
                let mut args: Vec<Box<dyn ToSql>> = Vec::new();
                push_filter(&filter, &mut sql, &mut args);
                sql.push_str(" ORDER BY date, id, source");
                let mut stmt = conn.prepare(&sql)?;
                let mut rows = stmt.query(params_from_iter(args.iter()))?;
                let mut batches = super::ExportBatcher::default();
                while let Some(r) = rows.next()? {
                    let row = ExportRow {
                        seq: r.get(0)?,
                        id: r.get(1)?,
                        date: r.get(2)?,
                        kind: r.get(3)?,
                        name: r.get(4)?,
                        title: r.get(5)?,
                        member_id: r.get(6)?,
                        member_email: r.get(7)?,
                        token_id: r.get(8)?,
                        accesses: r.get(9)?,
                        source: r.get(10)?,
                        actor: r.get(11)?,
                        summary: r.get(12)?,
                        action: r.get(13)?,
                        resource: r.get(14)?,
                        raw: r.get(15)?,
                    };
                    if let Some(full) = batches.push(row) {
                        if tx.blocking_send(Ok(full)).is_err() {
                            // The reader went away (client disconnected): stop the query.
                            return Ok(());
                        }
                    }
                }
                if let Some(last) = batches.finish() {
                    let _ = tx.blocking_send(Ok(last));
                }
                Ok(())
            };
            if let Err(e) = run() {
                let _ = tx.blocking_send(Err(e));
            }
        });
        rx
    }

    pub(super) async fn count(&self, filter: Filter) -> Result<u64, StoreError> {
        self.read(move |c| {
            let mut sql = String::from("SELECT count(*) FROM events WHERE 1 = 1");
            let mut args: Vec<Box<dyn ToSql>> = Vec::new();
            push_filter(&filter, &mut sql, &mut args);
            c.query_row(&sql, params_from_iter(args.iter()), |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
        })
        .await
    }

    pub(super) async fn queue_take_leased(
        &self,
        name: String,
        limit: usize,
        visibility: Option<std::time::Duration>,
        sources: Vec<String>,
    ) -> Result<QueueBatch, StoreError> {
        self.side(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now = now_ms();
            // Leases that ran out come first: their events go out again.
            let expired: Vec<i64> = tx
                .prepare_cached(
                    "SELECT seq FROM queue_leases WHERE consumer = ?1 AND expires_at <= ?2 \
                     ORDER BY seq LIMIT ?3",
                )?
                .query_map(params![name, now, limit as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut rows = Vec::with_capacity(limit.min(64));
            let mut bytes = 0usize;
            let mut expired_taken = Vec::new();
            {
                let mut one = tx.prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1"
                ))?;
                for seq in &expired {
                    let row = one.query_row([seq], row_to_event)?;
                    bytes += row.raw.len();
                    if bytes > super::QUEUE_BATCH_BYTES && !rows.is_empty() {
                        break;
                    }
                    expired_taken.push(*seq);
                    rows.push(row);
                }
            }
            let expired = expired_taken;
            let position: i64 = tx
                .query_row("SELECT position FROM consumers WHERE name = ?1", [&name], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            let mut fresh = Vec::new();
            if bytes <= super::QUEUE_BATCH_BYTES {
                let mut args: Vec<Box<dyn ToSql>> =
                    vec![Box::new(position), Box::new((limit - expired.len()) as i64)];
                let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?1");
                push_in("source", &sources, &mut sql, &mut args);
                sql.push_str(" ORDER BY seq LIMIT ?2");
                let mut stmt = tx.prepare_cached(&sql)?;
                let found = stmt.query_map(params_from_iter(args.iter()), row_to_event)?;
                for row in found {
                    let row = row?;
                    bytes += row.raw.len();
                    if bytes > super::QUEUE_BATCH_BYTES && !(rows.is_empty() && fresh.is_empty()) {
                        break;
                    }
                    fresh.push(row);
                }
            }
            if let Some(last) = fresh.last() {
                tx.execute(
                    "INSERT INTO consumers (name, position, updated_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
                    params![name, last.seq, now],
                )?;
            }
            let fresh_seqs: Vec<i64> = fresh.iter().map(|r| r.seq).collect();
            rows.extend(fresh);
            let mut ack = None;
            match visibility {
                Some(v) if !rows.is_empty() => {
                    let token = super::ack_token();
                    let until = now.saturating_add(v.as_millis() as i64);
                    let mut re = tx.prepare_cached(
                        "UPDATE queue_leases SET token = ?3, expires_at = ?4 WHERE consumer = ?1 AND seq = ?2",
                    )?;
                    for seq in &expired {
                        re.execute(params![name, seq, token, until])?;
                    }
                    let mut new = tx.prepare_cached(
                        "INSERT INTO queue_leases (consumer, seq, token, expires_at) VALUES (?1, ?2, ?3, ?4)",
                    )?;
                    for seq in &fresh_seqs {
                        new.execute(params![name, seq, token, until])?;
                    }
                    ack = Some(token);
                }
                _ => {
                    // Read-once: redelivered events count as received now.
                    let mut done = tx.prepare_cached(
                        "DELETE FROM queue_leases WHERE consumer = ?1 AND seq = ?2",
                    )?;
                    for seq in &expired {
                        done.execute(params![name, seq])?;
                    }
                }
            }
            tx.commit()?;
            Ok(QueueBatch { rows, ack })
        })
        .await
    }

    pub(super) async fn queue_ack(
        &self,
        name: String,
        token: String,
    ) -> Result<AckOutcome, StoreError> {
        self.side(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now = now_ms();
            let settled = tx.execute(
                "DELETE FROM queue_leases WHERE consumer = ?1 AND token = ?2 AND expires_at > ?3",
                params![name, token, now],
            )?;
            let outcome = if settled > 0 {
                AckOutcome::Settled(settled as u64)
            } else {
                let held: i64 = tx.query_row(
                    "SELECT count(*) FROM queue_leases WHERE consumer = ?1 AND token = ?2",
                    params![name, token],
                    |r| r.get(0),
                )?;
                if held > 0 {
                    AckOutcome::Expired
                } else {
                    AckOutcome::Unknown
                }
            };
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    pub(super) async fn newest_date(&self, source: Source) -> Result<Option<i64>, StoreError> {
        self.read(move |c| {
            c.query_row(
                "SELECT max(date) FROM events WHERE source = ?1",
                [source.as_str()],
                |r| r.get(0),
            )
        })
        .await
    }

    pub(super) async fn source_run_open(
        &self,
        source: Source,
    ) -> Result<Option<SourceRun>, StoreError> {
        self.read(move |c| {
            c.query_row(
                "SELECT id, after_ms, before_ms, progress FROM source_runs \
                 WHERE source = ?1 AND finished_at IS NULL ORDER BY id LIMIT 1",
                [source.as_str()],
                |r| {
                    Ok(SourceRun {
                        id: r.get(0)?,
                        after: r.get(1)?,
                        before: r.get(2)?,
                        progress: r.get(3)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    pub(super) async fn source_run_create(
        &self,
        source: Source,
        after: i64,
        before: i64,
        progress: String,
    ) -> Result<i64, StoreError> {
        self.progress(move |c| {
            c.execute(
                "INSERT INTO source_runs (source, after_ms, before_ms, progress, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![source.as_str(), after, before, progress, now_ms()],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    pub(super) async fn source_run_save(
        &self,
        run: i64,
        progress: String,
        finished: bool,
    ) -> Result<(), StoreError> {
        self.progress(move |c| {
            c.execute(
                "UPDATE source_runs SET progress = ?2, \
                 finished_at = CASE WHEN ?3 THEN ?4 ELSE finished_at END WHERE id = ?1",
                params![run, progress, finished, now_ms()],
            )?;
            if finished {
                c.execute(super::PRUNE_SOURCE_RUNS, [run])?;
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn source_position(&self, source: Source) -> Result<Option<i64>, StoreError> {
        self.read(move |c| {
            c.query_row(
                "SELECT max(before_ms) FROM source_runs WHERE source = ?1 AND finished_at IS NOT NULL",
                [source.as_str()],
                |r| r.get(0),
            )
        })
        .await
    }

    pub(super) async fn lease_acquire(
        &self,
        name: String,
        holder: String,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        self.side(move |conn| {
            let now = now_ms();
            conn.query_row(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE leases.holder = excluded.holder OR leases.expires_at < ?4 \
                 RETURNING holder",
                params![name, holder, now + ttl.as_millis() as i64, now],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
        })
        .await
    }

    pub(super) async fn lease_release(
        &self,
        name: String,
        holder: String,
    ) -> Result<(), StoreError> {
        self.side(move |conn| {
            conn.execute(
                "DELETE FROM leases WHERE name = ?1 AND holder = ?2",
                params![name, holder],
            )?;
            Ok(())
        })
        .await
    }

    pub(super) async fn backfill_open(
        &self,
        after: Option<i64>,
        before: Option<i64>,
        spec: Option<String>,
    ) -> Result<Option<BackfillJob>, StoreError> {
        self.progress(move |conn| {
            let id: Option<i64> = conn
                .query_row(
                    "SELECT id FROM backfill_jobs WHERE finished_at IS NULL AND requested_after IS ?1 \
                     AND requested_before IS ?2 AND spec IS ?3 ORDER BY id DESC LIMIT 1",
                    params![after, before, spec],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(id) = id else { return Ok(None) };
            let mut stmt = conn.prepare(
                "SELECT idx, after_ms, before_ms, next_href, done FROM backfill_windows WHERE job_id = ?1 ORDER BY idx",
            )?;
            let windows = stmt
                .query_map([id], |r| {
                    Ok(BackfillWindow {
                        idx: r.get(0)?,
                        after: r.get(1)?,
                        before: r.get(2)?,
                        next_href: r.get(3)?,
                        done: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(BackfillJob { id, windows }))
        })
        .await
    }

    pub(super) async fn backfill_create(
        &self,
        after: Option<i64>,
        before: Option<i64>,
        spec: Option<String>,
    ) -> Result<i64, StoreError> {
        self.progress(move |conn| {
            conn.execute(
                "INSERT INTO backfill_jobs (requested_after, requested_before, spec, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![after, before, spec, now_ms()],
            )?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    pub(super) async fn checkpoint(&self) -> Result<(), StoreError> {
        self.progress(|conn| {
            // Busy (another checkpoint running) is not an error: the next call catches up.
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        })
        .await
    }

    pub(super) async fn backfill_save_windows(
        &self,
        job: i64,
        windows: Vec<BackfillWindow>,
    ) -> Result<(), StoreError> {
        self.progress(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO backfill_windows (job_id, idx, after_ms, before_ms, next_href, done) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (job_id, idx) DO UPDATE SET \
                     after_ms = excluded.after_ms, before_ms = excluded.before_ms, \
                     next_href = excluded.next_href, done = excluded.done",
                )?;
                for w in windows {
                    stmt.execute(params![job, w.idx, w.after, w.before, w.next_href, w.done])?;
                }
            }
            tx.commit()
        })
        .await
    }

    pub(super) async fn backfill_finish(&self, job: i64) -> Result<(), StoreError> {
        self.progress(move |conn| {
            conn.execute(
                "UPDATE backfill_jobs SET finished_at = ?2 WHERE id = ?1",
                params![job, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    pub(super) async fn search_lag(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT coalesce(max(seq), 0) - (SELECT indexed_seq FROM search_state) FROM events",
                [],
                |r| r.get(0),
            )
        })
        .await
    }

    pub(super) async fn index_step(&self, max: i64) -> Result<i64, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || -> Result<i64, StoreError> {
            let mut conn = open_connection(&path)?;
            let mut done = 0;
            while done < max {
                let (n, _) = index_batch(&mut conn, max - done)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            Ok(done)
        })
        .await
        .map_err(|e| StoreError::Other(format!("index task failed: {e}")))?
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        if self.writer.is_closed() {
            return Err(StoreError::Closed);
        }
        self.read(|c| c.query_row("SELECT count(*) FROM settings", [], |r| r.get::<_, i64>(0)))
            .await?;
        Ok(())
    }

    pub(super) async fn close(&self) {
        self.writer.shutdown().await;
        if let Ok(mut p) = self.readers.lock() {
            p.clear();
        }
        if let Ok(mut s) = self.side.lock() {
            s.take();
        }
        if let Ok(mut s) = self.progress.lock() {
            s.take();
        }
        self.indexer_stop.store(true, Ordering::SeqCst);
    }
}

/// Which events a newest-first query considers.
enum Scope {
    All,
    /// The newest N events passing the non-text filters.
    NewestCandidates(i64),
    /// Events the index matches, and every event after `indexed`.
    Indexed {
        matcher: String,
        indexed: i64,
    },
}

/// A page of the events matching `filter`, newest first, strictly after `cursor`.
fn newest(
    c: &Connection,
    filter: &Filter,
    cursor: Option<&Cursor>,
    page: PageSpec,
    scope: Scope,
) -> rusqlite::Result<Listed> {
    let mut args: Vec<Box<dyn ToSql>> = Vec::new();
    let mut base = String::from("1 = 1");
    push_filter_parts(filter, &mut base, &mut args, Parts::NonText);
    if let Some(cur) = cursor {
        args.push(Box::new(cur.date));
        let d = args.len();
        args.push(Box::new(cur.id.clone()));
        args.push(Box::new(cur.source.clone()));
        base.push_str(&format!(
            " AND (date, id, source) < (?{d}, ?{}, ?{})",
            d + 1,
            d + 2
        ));
    }
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE ");
    match scope {
        Scope::All => sql.push_str(&base),
        Scope::NewestCandidates(n) => {
            args.push(Box::new(n));
            sql.push_str(&format!(
                "seq IN (SELECT seq FROM events WHERE {base} ORDER BY date DESC, id DESC, source DESC LIMIT ?{})",
                args.len()
            ));
        }
        Scope::Indexed { matcher, indexed } => {
            args.push(Box::new(matcher));
            let m = args.len();
            args.push(Box::new(indexed));
            sql.push_str(&format!(
                "seq IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?{m} \
                 UNION ALL SELECT seq FROM events WHERE seq > ?{}) AND {base}",
                m + 1
            ));
        }
    }
    push_filter_parts(filter, &mut sql, &mut args, Parts::Text);
    args.push(Box::new(page.limit.min(i64::MAX as usize) as i64));
    args.push(Box::new(page.offset.min(i64::MAX as usize) as i64));
    sql.push_str(&format!(
        " ORDER BY date DESC, id DESC, source DESC LIMIT ?{} OFFSET ?{}",
        args.len() - 1,
        args.len()
    ));
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(args.iter()), row_to_event)?;
    let mut listed = Listed::default();
    let mut bytes = 0usize;
    for row in rows {
        let row = row?;
        bytes = bytes.saturating_add(row.raw.len());
        if bytes > page.max_bytes && !listed.rows.is_empty() {
            listed.cut = true;
            break;
        }
        listed.rows.push(row);
    }
    Ok(listed)
}

/// Characters of each literal the index query uses: reading a trigram's postings costs
/// in proportion to how common it is, so a short, specific part narrows best.
const MATCH_CHARS: usize = 8;

/// The full-text query narrowing `q` and `spec`, when they have a literal of at least three
/// characters (the trigram minimum). Each literal contributes its last few characters (for a
/// resource specifier, the most specific part: the resource key); the exact filters then run
/// on the candidates.
fn fts_match(f: &Filter) -> Option<String> {
    let mut literals: Vec<(&str, String)> = Vec::new();
    if let Some(q) = f.q.as_deref() {
        literals.push(("search", q.to_lowercase()));
    }
    if let Some(spec) = &f.spec {
        let stripped = crate::event::strip_tags(spec);
        literals.extend(stripped.split('*').map(|p| ("resources", p.to_owned())));
    }
    let terms: Vec<String> = literals
        .into_iter()
        // FTS5 query strings end at a NUL; such a literal is left to the exact filter.
        .filter(|(_, literal)| !literal.contains('\0'))
        .filter_map(|(column, literal)| {
            let chars: Vec<char> = literal.chars().collect();
            (chars.len() >= 3).then(|| {
                let tail: String = chars[chars.len().saturating_sub(MATCH_CHARS)..]
                    .iter()
                    .collect();
                format!("{column} : \"{}\"", tail.replace('"', "\"\""))
            })
        })
        .collect();
    (!terms.is_empty()).then(|| terms.join(" AND "))
}

/// Which filters to append.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parts {
    All,
    Text,
    NonText,
}

/// Appends the shared filters as `AND ...` clauses with numbered parameters.
fn push_filter(f: &Filter, sql: &mut String, args: &mut Vec<Box<dyn ToSql>>) {
    push_filter_parts(f, sql, args, Parts::All);
}

fn push_filter_parts(f: &Filter, sql: &mut String, args: &mut Vec<Box<dyn ToSql>>, parts: Parts) {
    let text = parts != Parts::NonText;
    let non_text = parts != Parts::Text;
    if let Some(before) = f.before.filter(|_| non_text) {
        args.push(Box::new(before));
        sql.push_str(&format!(" AND date < ?{}", args.len()));
    }
    if let Some(after) = f.after.filter(|_| non_text) {
        args.push(Box::new(after));
        sql.push_str(&format!(" AND date > ?{}", args.len()));
    }
    if let Some(q) = f.q.as_ref().filter(|_| text) {
        args.push(Box::new(q.to_lowercase()));
        sql.push_str(&format!(" AND instr(search, ?{}) > 0", args.len()));
    }
    if let Some(spec) = f.spec.as_ref().filter(|_| text) {
        args.push(Box::new(spec.clone()));
        sql.push_str(&format!(" AND spec_match(?{}, resources)", args.len()));
    }
    let marks = |values: &[String], args: &mut Vec<Box<dyn ToSql>>| {
        let mut m = Vec::with_capacity(values.len());
        for v in values {
            args.push(Box::new(v.clone()));
            m.push(format!("?{}", args.len()));
        }
        m.join(", ")
    };
    if !non_text {
        return;
    }
    push_in("source", &f.sources, sql, args);
    push_in("actor", &f.actors, sql, args);
    if !f.members.is_empty() {
        let m = marks(&f.members, args);
        sql.push_str(&format!(
            " AND (member_id IN ({m}) OR member_email IN ({m}))"
        ));
    }
    if !f.tokens.is_empty() {
        let m = marks(&f.tokens, args);
        sql.push_str(&format!(" AND token_id IN ({m})"));
    }
    if !f.kinds.is_empty() {
        let m = marks(&f.kinds, args);
        sql.push_str(&format!(" AND kind IN ({m})"));
    }
    if !f.actions.is_empty() {
        let m = marks(&f.actions, args);
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM json_each(events.accesses) WHERE json_extract(value, '$.action') IN ({m}))"
        ));
    }
}

/// Appends ` AND column IN (...)` unless `values` is empty.
fn push_in(column: &str, values: &[String], sql: &mut String, args: &mut Vec<Box<dyn ToSql>>) {
    if values.is_empty() {
        return;
    }
    let mut marks = Vec::with_capacity(values.len());
    for v in values {
        args.push(Box::new(v.clone()));
        marks.push(format!("?{}", args.len()));
    }
    sql.push_str(&format!(" AND {column} IN ({})", marks.join(", ")));
}

/// A row of [`EVENT_COLUMNS`].
fn row_to_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        seq: r.get(0)?,
        id: r.get(1)?,
        date: r.get(2)?,
        raw: r.get(3)?,
        source: r.get(4)?,
        actor: r.get(5)?,
        action: r.get(6)?,
        resource: r.get(7)?,
        summary: r.get(8)?,
    })
}

/// The writer: takes every request queued, commits them in one transaction, answers each.
fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<WriteReq>,
    metrics: &Metrics,
    last_commit: &super::writer::IndexerGate,
) {
    let mut group: Group = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let stop = gather(first, &mut rx, &mut group);
        if !group.is_empty() {
            commit_group(&mut conn, &mut group, metrics);
            last_commit.committed();
        }
        if let Some(ack) = stop {
            let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
            let _ = ack.send(());
            return;
        }
    }
}

fn commit_group(conn: &mut Connection, group: &mut Group, metrics: &Metrics) {
    let received_at = now_ms();
    let total: usize = group.iter().map(|(e, _)| e.len()).sum();
    match insert_all(conn, group.iter().map(|(e, _)| e.as_slice()), received_at) {
        Ok(outcomes) => {
            metrics.commit_group_size.observe(total as f64);
            for ((_, reply), out) in group.drain(..).zip(outcomes) {
                let _ = reply.send(Ok(out));
            }
        }
        Err(e) if group.len() > 1 => {
            // One request's failure must not fail the others: commit each on its own.
            tracing::warn!(error = %e, "group commit failed; retrying requests one by one");
            for (events, reply) in group.drain(..) {
                let out = insert_all(conn, std::iter::once(events.as_slice()), received_at)
                    .map(|mut v| v.pop().unwrap_or_default())
                    .map_err(StoreError::from);
                if out.is_ok() {
                    metrics.commit_group_size.observe(events.len() as f64);
                }
                let _ = reply.send(out);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "commit failed");
            for (_, reply) in group.drain(..) {
                let _ = reply.send(Err(StoreError::Other(e.to_string())));
            }
        }
    }
}

fn insert_all<'a>(
    conn: &mut Connection,
    requests: impl Iterator<Item = &'a [NewEvent]>,
    received_at: i64,
) -> rusqlite::Result<Vec<Vec<Inserted>>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::new();
    {
        let mut stmt = tx.prepare_cached(INSERT_SQL)?;
        for events in requests {
            let mut out = Vec::with_capacity(events.len());
            for e in events {
                let n = stmt.execute(params![
                    e.id,
                    e.date,
                    e.kind,
                    e.name,
                    e.title,
                    e.member_id,
                    e.member_email,
                    e.token_id,
                    e.accesses,
                    e.resources,
                    e.search,
                    e.channel.as_str(),
                    received_at,
                    e.raw,
                    e.source.as_str(),
                    e.actor,
                    e.action,
                    e.resource,
                    e.summary,
                ])?;
                out.push(if n == 1 {
                    Inserted::Stored
                } else {
                    Inserted::Duplicate
                });
            }
            outcomes.push(out);
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Fills the trigram index in batches, staying out of the writer's way: it works only when
/// no group has committed for 100 ms, so ingest under load keeps the machine.
fn indexer_loop(
    path: &Path,
    last_commit: &super::writer::IndexerGate,
    stop: &AtomicBool,
    metrics: &Metrics,
) {
    let mut conn = match open_connection(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "search indexer cannot open the database");
            return;
        }
    };
    // The index can be rebuilt from the events, and a lost batch rolls back together with
    // its progress marker, so its commits need not wait for the disk.
    let _ = conn.pragma_update(None, "synchronous", "NORMAL");
    while !stop.load(Ordering::SeqCst) {
        if last_commit.should_wait() {
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        match index_batch(&mut conn, INDEX_BATCH) {
            Ok((indexed, lag)) => {
                metrics.search_unindexed.set(lag);
                if indexed == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "search indexing failed; retrying");
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
}

/// Indexes the next batch of at most `max` events; returns how many were indexed and how
/// many remain. Resources are indexed without their tags (`proj/a;web:env/b` as
/// `proj/a:env/b`), as the narrowing literals are taken from the tag-free specifier.
fn index_batch(conn: &mut Connection, max: i64) -> rusqlite::Result<(i64, i64)> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let from: i64 = tx.query_row("SELECT indexed_seq FROM search_state", [], |r| r.get(0))?;
    let mut last = from;
    let mut n = 0;
    {
        let mut read = tx.prepare_cached(
            "SELECT seq, search, resources FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let mut write = tx.prepare_cached(
            "INSERT INTO events_fts (rowid, search, resources) VALUES (?1, ?2, ?3)",
        )?;
        let mut rows = read.query(params![from, max])?;
        let mut bytes = 0usize;
        while let Some(r) = rows.next()? {
            let seq: i64 = r.get(0)?;
            let search: String = r.get(1)?;
            let resources: String = r.get(2)?;
            write.execute(params![
                seq,
                search,
                crate::event::strip_tags_lines(&resources).as_ref()
            ])?;
            last = seq;
            n += 1;
            // Short transactions: the writer, queues and bookkeeping wait for this one.
            bytes += search.len() + resources.len();
            if bytes >= super::INDEX_BATCH_BYTES {
                break;
            }
        }
    }
    if n > 0 {
        tx.execute("UPDATE search_state SET indexed_seq = ?1", [last])?;
    }
    let max: i64 = tx.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))?;
    tx.commit()?;
    Ok((n, (max - last).max(0)))
}

fn destination_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DestinationRow> {
    Ok(DestinationRow {
        name: r.get(0)?,
        position: r.get(1)?,
        floor_seq: r.get(2)?,
        floor_date: r.get(3)?,
        delivered: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

const DESTINATION_COLUMNS: &str =
    "name, position, floor_seq, floor_date, delivered, created_at, updated_at";

/// The cursor and floor that start a destination at `from` (None: after the newest event).
fn destination_start(c: &Connection, from: Option<i64>) -> rusqlite::Result<(i64, i64, i64)> {
    let max: i64 = c.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))?;
    let Some(from) = from else {
        return Ok((max, 0, 0));
    };
    let first: Option<i64> = c.query_row(
        "SELECT min(seq) FROM events WHERE date >= ?1",
        [from],
        |r| r.get(0),
    )?;
    Ok((first.map_or(max, |f| f - 1), max, from))
}

fn dead_letter_params(d: &DeadLetterIn) -> (Option<i64>, &str, &str) {
    (d.status.map(i64::from), &d.error, &d.body)
}

impl SqliteStore {
    pub(super) async fn destination_open(
        &self,
        name: String,
        from: Option<i64>,
    ) -> Result<DestinationRow, StoreError> {
        self.progress(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let existing = tx
                .query_row(
                    &format!("SELECT {DESTINATION_COLUMNS} FROM destinations WHERE name = ?1"),
                    [&name],
                    destination_row,
                )
                .optional()?;
            if let Some(row) = existing {
                return Ok(row);
            }
            let (position, floor_seq, floor_date) = destination_start(&tx, from)?;
            let now = now_ms();
            let row = tx.query_row(
                &format!(
                    "INSERT INTO destinations (name, position, floor_seq, floor_date, delivered, \
                     created_at, updated_at) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5) \
                     RETURNING {DESTINATION_COLUMNS}"
                ),
                params![name, position, floor_seq, floor_date, now],
                destination_row,
            )?;
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    pub(super) async fn destination_get(
        &self,
        name: String,
    ) -> Result<Option<DestinationRow>, StoreError> {
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {DESTINATION_COLUMNS} FROM destinations WHERE name = ?1"),
                [&name],
                destination_row,
            )
            .optional()
        })
        .await
    }

    pub(super) async fn destination_read(
        &self,
        row: DestinationRow,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?1 \
                 AND (seq > ?2 OR date >= ?3) ORDER BY seq LIMIT ?4"
            ))?;
            let mut rows = stmt.query(params![
                row.position,
                row.floor_seq,
                row.floor_date,
                limit as i64
            ])?;
            let mut out = Vec::new();
            let mut bytes = 0usize;
            while let Some(r) = rows.next()? {
                let event = row_to_event(r)?;
                bytes += event.raw.len();
                if bytes > max_bytes && !out.is_empty() {
                    break;
                }
                out.push(event);
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn destination_settle(
        &self,
        name: String,
        settle: Settle,
    ) -> Result<bool, StoreError> {
        self.progress(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now = now_ms();
            let moved = tx.execute(
                "UPDATE destinations SET position = ?3, delivered = delivered + ?4, \
                 updated_at = ?5 WHERE name = ?1 AND position = ?2",
                params![
                    name,
                    settle.from,
                    settle.to,
                    settle.delivered + settle.replayed_ok.len() as i64,
                    now
                ],
            )?;
            if moved == 0 {
                return Ok(false);
            }
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO dead_letters (destination, seq, status, error, body, at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for d in &settle.dead {
                    let (status, error, body) = dead_letter_params(d);
                    insert.execute(params![name, d.seq, status, error, body, now])?;
                }
                let mut delete = tx.prepare_cached(
                    "DELETE FROM dead_letters WHERE id = ?1 AND destination = ?2",
                )?;
                for id in &settle.replayed_ok {
                    delete.execute(params![id, name])?;
                }
                let mut update = tx.prepare_cached(
                    "UPDATE dead_letters SET status = ?3, error = ?4, body = ?5, at = ?6, \
                     replay = 0 WHERE id = ?1 AND destination = ?2",
                )?;
                for (id, d) in &settle.replayed_dead {
                    let (status, error, body) = dead_letter_params(d);
                    update.execute(params![id, name, status, error, body, now])?;
                }
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    pub(super) async fn destination_replay_from(
        &self,
        name: String,
        after: i64,
    ) -> Result<Option<DestinationRow>, StoreError> {
        self.progress(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let (position, floor_seq, floor_date) = destination_start(&tx, Some(after))?;
            let row = tx
                .query_row(
                    &format!(
                        "UPDATE destinations SET position = ?2, floor_seq = ?3, floor_date = ?4, \
                         updated_at = ?5 WHERE name = ?1 RETURNING {DESTINATION_COLUMNS}"
                    ),
                    params![name, position, floor_seq, floor_date, now_ms()],
                    destination_row,
                )
                .optional()?;
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    pub(super) async fn dead_letters_replay(&self, name: String) -> Result<u64, StoreError> {
        self.progress(move |c| {
            let n = c.execute(
                "UPDATE dead_letters SET replay = 1 WHERE destination = ?1",
                [&name],
            )?;
            Ok(n as u64)
        })
        .await
    }

    pub(super) async fn dead_letters_replaying(
        &self,
        name: String,
        limit: usize,
    ) -> Result<Vec<(i64, StoredEvent)>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT e.seq, e.id, e.date, e.raw, e.source, e.actor, e.action, e.resource, \
                 e.summary, d.id FROM dead_letters d JOIN events e ON e.seq = d.seq \
                 WHERE d.destination = ?1 AND d.replay = 1 ORDER BY d.id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![name, limit as i64], |r| {
                Ok((r.get(9)?, row_to_event(r)?))
            })?;
            rows.collect()
        })
        .await
    }

    pub(super) async fn dead_letters_list(
        &self,
        name: String,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT d.id, d.seq, coalesce(e.source, ''), coalesce(e.id, ''), d.status, \
                 d.error, d.body, d.at, d.replay FROM dead_letters d \
                 LEFT JOIN events e ON e.seq = d.seq \
                 WHERE d.destination = ?1 AND d.id < ?2 ORDER BY d.id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![name, before.unwrap_or(i64::MAX), limit as i64],
                |r| {
                    Ok(DeadLetter {
                        id: r.get(0)?,
                        seq: r.get(1)?,
                        source: r.get(2)?,
                        event_id: r.get(3)?,
                        status: r.get::<_, Option<i64>>(4)?.map(|s| s as u16),
                        error: r.get(5)?,
                        body: r.get(6)?,
                        at: r.get(7)?,
                        replay: r.get(8)?,
                    })
                },
            )?;
            rows.collect()
        })
        .await
    }

    pub(super) async fn destination_stats(
        &self,
        name: String,
    ) -> Result<Option<DestinationStats>, StoreError> {
        self.read(move |c| {
            // One snapshot: the cursor, the delivered count and the dead letters agree.
            let tx = c.unchecked_transaction()?;
            let c = &*tx;
            let Some(row) = c
                .query_row(
                    &format!("SELECT {DESTINATION_COLUMNS} FROM destinations WHERE name = ?1"),
                    [&name],
                    destination_row,
                )
                .optional()?
            else {
                return Ok(None);
            };
            // SQLite's `seq` has no gaps (rows are never deleted and a duplicate takes no
            // number), so the lag is a subtraction, not a scan of the backlog.
            let (lag_events, oldest_pending_at): (i64, Option<i64>) = c.query_row(
                "SELECT coalesce(max(seq), 0) - ?1, \
                 (SELECT received_at FROM events WHERE seq > ?1 ORDER BY seq LIMIT 1) FROM events",
                [row.position],
                |r| Ok((r.get::<_, i64>(0)?.max(0), r.get(1)?)),
            )?;
            let (dead_letters, replaying) = c.query_row(
                "SELECT count(*), coalesce(sum(replay), 0) FROM dead_letters WHERE destination = ?1",
                [&name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(Some(DestinationStats {
                row,
                lag_events,
                oldest_pending_at,
                dead_letters,
                replaying,
            }))
        })
        .await
    }
}
