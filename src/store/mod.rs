//! The store: one write path (group commit, dedupe by `(source, id)`) and one query path
//! for every reader. No SQL outside this module.

pub mod postgres;
pub mod sqlite;
mod writer;

pub use writer::IndexerHold;

use crate::event::{NewEvent, Source};
use crate::metrics::Metrics;
use std::sync::Arc;

/// Whether an insert stored a new event or found it already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Stored,
    Duplicate,
}

/// A store failure. Always the server's side: the client may retry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("the store is shut down")]
    Closed,
    #[error("{0}")]
    Other(String),
}

/// A position in event order (`date` descending, then `id`, then `source` descending):
/// rows strictly after it in that order are returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub date: i64,
    pub id: String,
    pub source: String,
}

impl Cursor {
    /// The position of `row`.
    pub fn of(row: &StoredEvent) -> Cursor {
        Cursor {
            date: row.date,
            id: row.id.clone(),
            source: row.source.clone(),
        }
    }
}

/// The columns a [`StoredEvent`] is read from, in its fields' order.
pub(crate) const EVENT_COLUMNS: &str =
    "seq, id, date, raw, source, actor, action, resource, summary";

/// The columns an [`ExportRow`] is read from (then `raw` or NULL).
pub(crate) const EXPORT_COLUMNS: &str = "seq, id, date, kind, name, title, member_id, \
     member_email, token_id, accesses, source, actor, summary, action, resource";

/// Filters shared by every reader.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Sources (any of; none = every source).
    pub sources: Vec<String>,
    /// Actors, as the envelope's `actor` (any of).
    pub actors: Vec<String>,
    /// Only entries with `date < before`.
    pub before: Option<i64>,
    /// Only entries with `date > after`.
    pub after: Option<i64>,
    /// Case-insensitive text search.
    pub q: Option<String>,
    /// Resource specifier with `*` globs.
    pub spec: Option<String>,
    /// Members, by id or email (any of).
    pub members: Vec<String>,
    /// Token ids (any of).
    pub tokens: Vec<String>,
    /// Event kinds (any of).
    pub kinds: Vec<String>,
    /// Access actions (entries with any access doing any of these).
    pub actions: Vec<String>,
}

/// One stored event with the columns exports use; `raw` only when asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRow {
    pub seq: i64,
    pub source: String,
    pub id: String,
    pub date: i64,
    pub kind: String,
    pub name: String,
    pub title: String,
    pub member_id: Option<String>,
    pub member_email: Option<String>,
    pub token_id: Option<String>,
    /// Accesses as JSON (`[{"action":..,"resource":..}]`).
    pub accesses: String,
    pub actor: String,
    pub summary: String,
    pub action: String,
    pub resource: String,
    pub raw: Option<String>,
}

/// Which slice of a newest-first listing to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSpec {
    /// Matching events to skip first (after the cursor), as LaunchDarkly's `offset`.
    pub offset: usize,
    /// Events to return at most.
    pub limit: usize,
    /// Bytes of raw bodies to return at most: rows stop before the one that would pass it
    /// (the first row is always returned), so memory follows bytes, not rows.
    pub max_bytes: usize,
}

/// A page of a listing: the rows, and whether the byte budget cut it short.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listed {
    pub rows: Vec<StoredEvent>,
    /// True when more rows matched than `max_bytes` let through.
    pub cut: bool,
}

/// One stored event as readers see it: the envelope's columns and the raw body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: i64,
    pub id: String,
    pub date: i64,
    pub raw: String,
    pub source: String,
    pub actor: String,
    pub action: String,
    pub resource: String,
    pub summary: String,
}

impl StoredEvent {
    /// The event as the common envelope.
    pub fn envelope(&self) -> crate::event::Envelope<'_> {
        crate::event::Envelope {
            source: &self.source,
            id: &self.id,
            date: self.date,
            actor: &self.actor,
            action: &self.action,
            resource: &self.resource,
            summary: &self.summary,
            raw: &self.raw,
        }
    }
}

/// A run of a Terraform Cloud or Carbon Black Cloud poller (a backfill or one poll): its
/// window and its progress, which the source's poller defines (JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRun {
    pub id: i64,
    pub after: i64,
    pub before: i64,
    pub progress: String,
}

/// A batch handed to a queue consumer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueBatch {
    /// In arrival order.
    pub rows: Vec<StoredEvent>,
    /// The ack token, when the batch was leased (`ack=explicit`) and is not empty.
    pub ack: Option<String>,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The batch's events (this many) are settled.
    Settled(u64),
    /// The lease ran out first: the events are (or will be) delivered again.
    Expired,
    /// No lease has this token (never issued, already settled, or re-leased after expiring).
    Unknown,
}

/// A fresh ack token: 128 random bits, hex.
pub(crate) fn ack_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// One time window of a backfill job: entries with `after < date < before`, and the next
/// link to follow (saved only after the previous page's entries were committed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillWindow {
    pub idx: i64,
    pub after: i64,
    pub before: i64,
    pub next_href: Option<String>,
    pub done: bool,
}

/// An unfinished backfill job and its windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillJob {
    pub id: i64,
    pub windows: Vec<BackfillWindow>,
}

/// How a store is opened. [`StoreOptions::default`] is what `serve` uses.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Connections a Postgres pool keeps at most (SQLite: read connections at once).
    pub max_connections: u32,
    /// Whether the background search indexer runs. Tests turn it off and drive the index
    /// with [`Store::index_step`], to check every filter with the index empty, partial and
    /// complete.
    pub background_indexer: bool,
    /// Candidates the first pass of a `q`/`spec` search looks at (the newest events passing
    /// the other filters) before the index is consulted; `0` skips that pass.
    pub newest_candidates: i64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: Store::DEFAULT_MAX_CONNECTIONS,
            background_indexer: true,
            newest_candidates: NEWEST_CANDIDATES,
        }
    }
}

/// Raw bytes one queue batch holds at most (at least one event): a batch ends early rather
/// than build a huge answer, and the next read carries on.
pub const QUEUE_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Text the search indexer indexes in one transaction, at most (after the row that passes
/// it): large events must not hold the write lock for seconds.
pub(crate) const INDEX_BATCH_BYTES: usize = 1024 * 1024;

/// Rows an export hands to its encoder at once, at most.
pub(crate) const EXPORT_BATCH: usize = 512;
/// Bytes of rows an export hands over at once, at most (a batch closes once past it), so a
/// slow reader of large events holds a few MiB, not `EXPORT_BATCH` events.
pub(crate) const EXPORT_BATCH_BYTES: usize = 2 * 1024 * 1024;

/// Deletes the finished runs of run `?1`'s source older than its last ten: a poll a minute
/// would otherwise add half a million rows a year (the position is the newest's end).
pub(crate) const PRUNE_SOURCE_RUNS: &str = "DELETE FROM source_runs WHERE finished_at IS NOT NULL \
     AND source = (SELECT source FROM source_runs WHERE id = ?1) \
     AND id < (SELECT min(id) FROM (SELECT id FROM source_runs WHERE finished_at IS NOT NULL \
     AND source = (SELECT source FROM source_runs WHERE id = ?1) ORDER BY id DESC LIMIT 10) AS newest)";

/// Events the search indexer indexes per transaction (short, so a writer waking up waits
/// little).
pub(crate) const INDEX_BATCH: i64 = 500;

/// Gathers export rows into the batches an export hands over: at most [`EXPORT_BATCH`]
/// rows, closed once past [`EXPORT_BATCH_BYTES`].
#[derive(Default)]
pub(crate) struct ExportBatcher {
    batch: Vec<ExportRow>,
    bytes: usize,
}

impl ExportBatcher {
    /// Adds `row`; returns the batch it closed, if it closed one.
    pub(crate) fn push(&mut self, row: ExportRow) -> Option<Vec<ExportRow>> {
        self.bytes += row.size();
        self.batch.push(row);
        if self.batch.len() < EXPORT_BATCH && self.bytes < EXPORT_BATCH_BYTES {
            return None;
        }
        self.bytes = 0;
        Some(std::mem::replace(
            &mut self.batch,
            Vec::with_capacity(EXPORT_BATCH),
        ))
    }

    /// The last, partial batch, if any.
    pub(crate) fn finish(self) -> Option<Vec<ExportRow>> {
        (!self.batch.is_empty()).then_some(self.batch)
    }
}

impl ExportRow {
    /// About how many bytes the row holds.
    pub(crate) fn size(&self) -> usize {
        self.raw.as_ref().map_or(0, String::len)
            + self.accesses.len()
            + self.name.len()
            + self.title.len()
            + self.id.len()
            + self.actor.len()
            + self.summary.len()
            + self.action.len()
            + self.resource.len()
            + 64
    }
}

/// Candidates the first pass of a text search looks at, by default: common terms find a
/// page among the newest few thousand events, and then they are the newest matches of all.
pub const NEWEST_CANDIDATES: i64 = 2000;

/// The store. Each method dispatches on the backend.
#[derive(Clone)]
pub enum Store {
    Sqlite(Arc<sqlite::SqliteStore>),
    Postgres(Arc<postgres::PgStore>),
}

impl Store {
    /// Opens (creating if needed) and migrates the store named by `url`.
    /// Connections a Postgres pool keeps at most, unless configured.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;

    /// [`Store::open_with`] with the default pool size.
    pub async fn open(url: &str, metrics: Arc<Metrics>) -> anyhow::Result<Store> {
        Self::open_with(url, Self::DEFAULT_MAX_CONNECTIONS, metrics).await
    }

    /// `max_connections` bounds a Postgres pool.
    pub async fn open_with(
        url: &str,
        max_connections: u32,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Store> {
        let options = StoreOptions {
            max_connections,
            ..StoreOptions::default()
        };
        Self::open_with_options(url, &options, metrics).await
    }

    /// Opens the store named by `url` with explicit options.
    pub async fn open_with_options(
        url: &str,
        options: &StoreOptions,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Store> {
        if let Some(path) = sqlite::path_from_url(url) {
            let store = sqlite::SqliteStore::open(&path, options, metrics).await?;
            return Ok(Store::Sqlite(Arc::new(store)));
        }
        if postgres::is_postgres_url(url) {
            let store = postgres::PgStore::open(url, options, metrics).await?;
            return Ok(Store::Postgres(Arc::new(store)));
        }
        anyhow::bail!(
            "database {}: unsupported URL; expected sqlite://PATH or postgres://...",
            crate::config::redact_url(url)
        )
    }

    /// Stores one event unless an event with its `(source, id)` is already stored. Returns once
    /// the event is committed.
    pub async fn insert(&self, event: NewEvent) -> Result<Inserted, StoreError> {
        match self {
            Store::Sqlite(s) => s.insert(event).await,
            Store::Postgres(s) => s.insert(event).await,
        }
    }

    /// Stores many events in one transaction; one outcome per event, in order.
    pub async fn insert_many(&self, events: Vec<NewEvent>) -> Result<Vec<Inserted>, StoreError> {
        match self {
            Store::Sqlite(s) => s.insert_many(events).await,
            Store::Postgres(s) => s.insert_many(events).await,
        }
    }

    /// One event by its identity.
    pub async fn get(&self, source: Source, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get(source, id.to_owned()).await,
            Store::Postgres(s) => s.get(source, id).await,
        }
    }

    /// Up to `limit` events matching `filter`, newest first, strictly after `cursor`.
    pub async fn list_newest(
        &self,
        filter: &Filter,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let page = PageSpec {
            offset: 0,
            limit,
            max_bytes: usize::MAX,
        };
        Ok(self.list_page(filter, cursor, page).await?.rows)
    }

    /// A page of the events matching `filter`, newest first, strictly after `cursor`,
    /// skipping `page.offset`, bounded by `page.limit` rows and `page.max_bytes` bytes.
    pub async fn list_page(
        &self,
        filter: &Filter,
        cursor: Option<&Cursor>,
        page: PageSpec,
    ) -> Result<Listed, StoreError> {
        match self {
            Store::Sqlite(s) => s.list_newest(filter.clone(), cursor.cloned(), page).await,
            Store::Postgres(s) => s.list_newest(filter, cursor, page).await,
        }
    }

    /// A small named value (generated credentials and the like).
    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => s.setting(key.to_owned()).await,
            Store::Postgres(s) => s.setting(key).await,
        }
    }

    /// Sets `key` to `value` unless it already has a value; returns the value now kept.
    pub async fn setting_insert_if_absent(
        &self,
        key: &str,
        value: &str,
    ) -> Result<String, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.setting_insert_if_absent(key.to_owned(), value.to_owned())
                    .await
            }
            Store::Postgres(s) => s.setting_insert_if_absent(key, value).await,
        }
    }

    /// Streams the events matching `filter`, oldest first (`date`, then `_id`), in batches
    /// through a bounded channel: memory stays constant, and dropping the receiver stops the
    /// query.
    pub fn export(
        &self,
        filter: Filter,
        with_raw: bool,
    ) -> tokio::sync::mpsc::Receiver<Result<Vec<ExportRow>, StoreError>> {
        match self {
            Store::Sqlite(s) => s.export(filter, with_raw),
            Store::Postgres(s) => s.export(filter, with_raw),
        }
    }

    /// How many events match `filter`.
    pub async fn count(&self, filter: &Filter) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.count(filter.clone()).await,
            Store::Postgres(s) => s.count(filter).await,
        }
    }

    /// The next events consumer `name` has not received (arrival order, at most `limit`);
    /// they then count as received for it. Concurrent calls never return the same event.
    pub async fn queue_take(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(self.queue_take_leased(name, limit, None).await?.rows)
    }

    /// Like [`Store::queue_take`], with explicit acknowledgement when `visibility` is given:
    /// the batch is leased for that long under a new ack token and delivered again if not
    /// acknowledged in time. Leases that expired are delivered first, in arrival order. In
    /// the default mode (no `visibility`) what is answered counts as received.
    pub async fn queue_take_leased(
        &self,
        name: &str,
        limit: usize,
        visibility: Option<std::time::Duration>,
    ) -> Result<QueueBatch, StoreError> {
        self.queue_take_from(name, limit, visibility, &[]).await
    }

    /// Like [`Store::queue_take_leased`], with only events of `sources` (none = all)
    /// delivered: the consumer's position passes the others. A consumer keeps one filter.
    pub async fn queue_take_from(
        &self,
        name: &str,
        limit: usize,
        visibility: Option<std::time::Duration>,
        sources: &[String],
    ) -> Result<QueueBatch, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.queue_take_leased(name.to_owned(), limit, visibility, sources.to_vec())
                    .await
            }
            Store::Postgres(s) => s.queue_take_leased(name, limit, visibility, sources).await,
        }
    }

    /// Settles the batch leased under `token` for consumer `name`.
    pub async fn queue_ack(&self, name: &str, token: &str) -> Result<AckOutcome, StoreError> {
        match self {
            Store::Sqlite(s) => s.queue_ack(name.to_owned(), token.to_owned()).await,
            Store::Postgres(s) => s.queue_ack(name, token).await,
        }
    }

    /// The date of the newest stored event of `source`.
    pub async fn newest_date(&self, source: Source) -> Result<Option<i64>, StoreError> {
        match self {
            Store::Sqlite(s) => s.newest_date(source).await,
            Store::Postgres(s) => s.newest_date(source).await,
        }
    }

    /// The oldest unfinished run of `source`'s poller, to resume.
    pub async fn source_run_open(&self, source: Source) -> Result<Option<SourceRun>, StoreError> {
        match self {
            Store::Sqlite(s) => s.source_run_open(source).await,
            Store::Postgres(s) => s.source_run_open(source).await,
        }
    }

    /// Records a new run of `source`'s poller over `after..=before`; returns its id.
    pub async fn source_run_create(
        &self,
        source: Source,
        after: i64,
        before: i64,
        progress: &str,
    ) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.source_run_create(source, after, before, progress.to_owned())
                    .await
            }
            Store::Postgres(s) => s.source_run_create(source, after, before, progress).await,
        }
    }

    /// Saves a run's progress (after what it covers is committed), and finishes it when
    /// `finished`.
    pub async fn source_run_save(
        &self,
        run: i64,
        progress: &str,
        finished: bool,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.source_run_save(run, progress.to_owned(), finished).await,
            Store::Postgres(s) => s.source_run_save(run, progress, finished).await,
        }
    }

    /// The end of the latest finished run of `source`'s poller: everything up to it that
    /// the vendor kept is stored.
    pub async fn source_position(&self, source: Source) -> Result<Option<i64>, StoreError> {
        match self {
            Store::Sqlite(s) => s.source_position(source).await,
            Store::Postgres(s) => s.source_position(source).await,
        }
    }

    /// The latest unfinished backfill job started with the same request, to resume.
    pub async fn backfill_open(
        &self,
        after: Option<i64>,
        before: Option<i64>,
        spec: Option<&str>,
    ) -> Result<Option<BackfillJob>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.backfill_open(after, before, spec.map(str::to_owned))
                    .await
            }
            Store::Postgres(s) => s.backfill_open(after, before, spec).await,
        }
    }

    /// Records a new backfill job; returns its id.
    pub async fn backfill_create(
        &self,
        after: Option<i64>,
        before: Option<i64>,
        spec: Option<&str>,
    ) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.backfill_create(after, before, spec.map(str::to_owned))
                    .await
            }
            Store::Postgres(s) => s.backfill_create(after, before, spec).await,
        }
    }

    /// Saves windows' progress, all in one transaction.
    pub async fn backfill_save_windows(
        &self,
        job: i64,
        windows: Vec<BackfillWindow>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.backfill_save_windows(job, windows).await,
            Store::Postgres(s) => s.backfill_save_windows(job, windows).await,
        }
    }

    /// Marks a job finished.
    pub async fn backfill_finish(&self, job: i64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.backfill_finish(job).await,
            Store::Postgres(s) => s.backfill_finish(job).await,
        }
    }

    /// Takes or renews lease `name` for `holder` until `ttl` from now, unless another
    /// holder's lease on it is still running; returns whether `holder` now holds it.
    pub async fn lease_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.lease_acquire(name.to_owned(), holder.to_owned(), ttl)
                    .await
            }
            Store::Postgres(s) => s.lease_acquire(name, holder, ttl).await,
        }
    }

    /// Gives lease `name` up, if `holder` holds it.
    pub async fn lease_release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.lease_release(name.to_owned(), holder.to_owned()).await,
            Store::Postgres(s) => s.lease_release(name, holder).await,
        }
    }

    /// Moves what the write-ahead log holds into the database file without blocking
    /// writers (SQLite's passive checkpoint; nothing on Postgres). A bulk load calls it
    /// between pages, so closing the store after it has little left to copy.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.checkpoint().await,
            Store::Postgres(_) => Ok(()),
        }
    }

    /// Holds the background search indexer off while the returned value lives: a bulk load
    /// (backfill, poll) runs at full speed, and the indexer catches up afterwards (until
    /// then, searches scan the events it has not reached).
    pub fn hold_indexer(&self) -> IndexerHold {
        IndexerHold::new(match self {
            Store::Sqlite(s) => s.gate.clone(),
            Store::Postgres(s) => s.gate.clone(),
        })
    }

    /// Which backend this is (`sqlite` or `postgres`).
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Stored events the text-search index has not reached yet (they are scanned instead).
    pub async fn search_lag(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.search_lag().await,
            Store::Postgres(s) => s.search_lag().await,
        }
    }

    /// Indexes at most `max` of the events the search index has not reached; returns how
    /// many it indexed. The background indexer does this on its own; tests call it to put
    /// the index in a known state.
    pub async fn index_step(&self, max: i64) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.index_step(max).await,
            Store::Postgres(s) => s.index_step(max).await,
        }
    }

    /// Whether the store answers (reads and the writer).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.ping().await,
            Store::Postgres(s) => s.ping().await,
        }
    }

    /// Commits what is queued and stops the writer. Later writes fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }
}

/// A destination's row: its cursor and where it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationRow {
    pub name: String,
    /// Every event with `seq <= position` is settled (delivered, dead-lettered or filtered).
    pub position: i64,
    /// Events with `seq <= floor_seq` are delivered only when dated at or after `floor_date`
    /// (a destination started, or replayed, from a time).
    pub floor_seq: i64,
    pub floor_date: i64,
    /// Events delivered since the destination was created.
    pub delivered: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A refusal to record as a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterIn {
    pub seq: i64,
    /// The receiver's HTTP status (none for a non-HTTP refusal).
    pub status: Option<u16>,
    pub error: String,
    /// The first 20 KB of the receiver's answer.
    pub body: String,
}

/// A dead letter as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: i64,
    pub seq: i64,
    pub source: String,
    pub event_id: String,
    pub status: Option<u16>,
    pub error: String,
    pub body: String,
    pub at: i64,
    pub replay: bool,
}

/// A destination's state for `/api/destinations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationStats {
    pub row: DestinationRow,
    /// Stored events past the cursor (before the destination's filters).
    pub lag_events: i64,
    /// When the oldest of them was stored (epoch ms).
    pub oldest_pending_at: Option<i64>,
    pub dead_letters: i64,
    /// Dead letters waiting to be delivered again.
    pub replaying: i64,
}

/// How a batch of a destination settled: the cursor moves from `from` to `to` (only if no
/// replay moved it meanwhile), with what was delivered and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settle {
    pub from: i64,
    pub to: i64,
    pub delivered: i64,
    pub dead: Vec<DeadLetterIn>,
    /// Dead letters that were replayed: delivered now (deleted) ...
    pub replayed_ok: Vec<i64>,
    /// ... or refused again (their status and body updated, no longer marked for replay).
    pub replayed_dead: Vec<(i64, DeadLetterIn)>,
}

impl Store {
    /// The row of destination `name`, created if absent: a new destination starts at the
    /// newest stored event (`from` = None), or at the events dated at or after `from`.
    pub async fn destination_open(
        &self,
        name: &str,
        from: Option<i64>,
    ) -> Result<DestinationRow, StoreError> {
        match self {
            Store::Sqlite(s) => s.destination_open(name.to_owned(), from).await,
            Store::Postgres(s) => s.destination_open(name, from).await,
        }
    }

    /// The row of destination `name`, if it has one.
    pub async fn destination_get(&self, name: &str) -> Result<Option<DestinationRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.destination_get(name.to_owned()).await,
            Store::Postgres(s) => s.destination_get(name).await,
        }
    }

    /// Up to `limit` events past `row`'s cursor in arrival order (those its floor skips
    /// left out), ending early past `max_bytes` (at least one).
    pub async fn destination_read(
        &self,
        row: &DestinationRow,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        match self {
            Store::Sqlite(s) => s.destination_read(row.clone(), limit, max_bytes).await,
            Store::Postgres(s) => s.destination_read(row, limit, max_bytes).await,
        }
    }

    /// Records how a batch settled, in one transaction. Returns false (and changes nothing)
    /// when the cursor is no longer at `settle.from` (a replay moved it).
    pub async fn destination_settle(&self, name: &str, settle: Settle) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.destination_settle(name.to_owned(), settle).await,
            Store::Postgres(s) => s.destination_settle(name, settle).await,
        }
    }

    /// Moves destination `name` back to the events dated at or after `after` (those stored
    /// later are delivered as before). Returns the new row, or None for an unknown name.
    pub async fn destination_replay_from(
        &self,
        name: &str,
        after: i64,
    ) -> Result<Option<DestinationRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.destination_replay_from(name.to_owned(), after).await,
            Store::Postgres(s) => s.destination_replay_from(name, after).await,
        }
    }

    /// Marks every dead letter of `name` for delivery again; returns how many.
    pub async fn dead_letters_replay(&self, name: &str) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.dead_letters_replay(name.to_owned()).await,
            Store::Postgres(s) => s.dead_letters_replay(name).await,
        }
    }

    /// Up to `limit` dead letters of `name` marked for replay, oldest first, with their
    /// events.
    pub async fn dead_letters_replaying(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<(i64, StoredEvent)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.dead_letters_replaying(name.to_owned(), limit).await,
            Store::Postgres(s) => s.dead_letters_replaying(name, limit).await,
        }
    }

    /// Dead letters of `name`, newest first, with ids below `before` (a page).
    pub async fn dead_letters_list(
        &self,
        name: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        match self {
            Store::Sqlite(s) => s.dead_letters_list(name.to_owned(), before, limit).await,
            Store::Postgres(s) => s.dead_letters_list(name, before, limit).await,
        }
    }

    /// Destination `name`'s state.
    pub async fn destination_stats(
        &self,
        name: &str,
    ) -> Result<Option<DestinationStats>, StoreError> {
        match self {
            Store::Sqlite(s) => s.destination_stats(name.to_owned()).await,
            Store::Postgres(s) => s.destination_stats(name).await,
        }
    }
}
