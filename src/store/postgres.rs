//! Postgres backend, for several audithook instances sharing one database.
//!
//! Each instance runs one writer task that commits whatever requests are queued in one
//! transaction (group commit) with one multi-row `INSERT .. SELECT FROM unnest(..) ON
//! CONFLICT (source, id) DO NOTHING RETURNING source, id`. The transaction first takes an advisory lock, so
//! groups from different instances commit one after another: two instances storing the same
//! events cannot deadlock, and `seq` (arrival order) becomes visible in order, which is what
//! lets a queue reader on any instance advance past a position without skipping a row that
//! a slower transaction was about to commit.

use std::borrow::Cow;
use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::writer::{gather, Group, WriteReq, Writer};
use super::{
    AckOutcome, BackfillJob, BackfillWindow, Cursor, DeadLetter, DestinationRow, DestinationStats,
    ExportRow, Filter, Inserted, Listed, PageSpec, QueueBatch, Settle, SourceRun, StoreError,
    StoredEvent, EVENT_COLUMNS, EXPORT_COLUMNS, INDEX_BATCH,
};
use crate::event::{NewEvent, Source};
use crate::metrics::Metrics;

/// How long a request waits for a pooled connection before the store counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Statements slower than this are logged as warnings.
const SLOW_STATEMENT: Duration = Duration::from_secs(30);
/// How long start-up waits for the first connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Advisory lock serialising event inserts across instances (arbitrary, fixed).
const INSERT_LOCK: i64 = 0x6175_6469_7468_6b01;
/// Advisory lock serialising migrations across instances starting together.
const MIGRATE_LOCK: i64 = 0x6175_6469_7468_6b02;

/// Migrations, applied in order; the version is the file's timestamp.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        20261122100000,
        include_str!("../../migrations/postgres/20261122100000_init.sql"),
    ),
    (
        20261129010000,
        include_str!("../../migrations/postgres/20261129010000_queue_leases.sql"),
    ),
    (
        20261130000000,
        include_str!("../../migrations/postgres/20261130000000_sources.sql"),
    ),
    (
        20261130010000,
        include_str!("../../migrations/postgres/20261130010000_lz4.sql"),
    ),
    (
        20261201000000,
        include_str!("../../migrations/postgres/20261201000000_destinations.sql"),
    ),
];

/// Stored events the search index has not reached.
const LAG_SQL: &str =
    "SELECT coalesce((SELECT max(seq) FROM events), 0) - indexed_seq FROM search_state";

/// The database's clock in epoch milliseconds (instances' clocks may disagree).
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The Postgres store.
pub struct PgStore {
    pool: PgPool,
    writer: Writer,
    /// Stops the search indexer.
    indexer_stop: CancellationToken,
    /// When the search indexer may work.
    pub(super) gate: Arc<super::writer::IndexerGate>,
    /// Candidates of the first pass of a text search.
    newest_candidates: i64,
}

/// Whether `url` names a Postgres database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl PgStore {
    /// Connects (failing with the server's own reason when it cannot), migrates, and starts
    /// the writer. `max_connections` bounds this instance's pool.
    pub async fn open(
        url: &str,
        options: &super::StoreOptions,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let max_connections = options.max_connections;
        let shown = crate::config::redact_url(url);
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| anyhow::anyhow!("database {shown}: {}", redact_error(&e, url)))?
            // Statements (never their bound values) at debug level; an export streams for
            // seconds by design, so only a statement slower than that is worth a warning.
            .log_statements(log::LevelFilter::Debug)
            .log_slow_statements(log::LevelFilter::Warn, SLOW_STATEMENT);
        // One direct connection first: a pool would only report a timeout, and the user
        // needs to know whether the host, the password or the database name is wrong.
        let first = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect_with(&opts))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "cannot connect to Postgres database {shown}: no answer within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot connect to Postgres database {shown}: {}",
                    redact_error(&e, url)
                )
            })?;
        migrate(first)
            .await
            .map_err(|e| anyhow::anyhow!("migrating {shown}: {}", redact_error(&e, url)))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(opts);
        // The search index's lag is known before the indexer first runs.
        if let Ok(lag) = sqlx::query_scalar::<_, i64>(LAG_SQL).fetch_one(&pool).await {
            metrics.search_unindexed.set(lag.max(0));
        }
        let (writer, rx) = Writer::channel();
        let last_commit = Arc::new(super::writer::IndexerGate::default());
        let indexer_stop = CancellationToken::new();
        if options.background_indexer {
            tokio::spawn(indexer_loop(
                pool.clone(),
                last_commit.clone(),
                indexer_stop.clone(),
                metrics.clone(),
            ));
        }
        tokio::spawn(writer_loop(pool.clone(), rx, metrics, last_commit.clone()));
        Ok(Self {
            pool,
            writer,
            indexer_stop,
            gate: last_commit,
            newest_candidates: options.newest_candidates,
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

    pub(super) async fn get(
        &self,
        source: Source,
        id: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        Ok(sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE source = $1 AND id = $2"
        ))
        .bind(source.as_str())
        .bind(pg_text(id).as_ref())
        .fetch_optional(&self.pool)
        .await?
        .map(|r| row_to_event(&r))
        .transpose()?)
    }

    pub(super) async fn list_newest(
        &self,
        filter: &Filter,
        cursor: Option<&Cursor>,
        page: PageSpec,
    ) -> Result<Listed, StoreError> {
        let text_search = filter.q.is_some() || filter.spec.is_some();
        let newest = |head: &str, candidates: bool| {
            let mut q = SqlBuilder::new(head);
            q.non_text_filter(filter);
            if let Some(cur) = cursor {
                let d = q.arg(Arg::I64(cur.date));
                let i = q.arg(Arg::Text(pg_text(&cur.id).into_owned()));
                let s = q.arg(Arg::Text(pg_text(&cur.source).into_owned()));
                q.sql
                    .push_str(&format!(" AND (date, id, source) < (${d}, ${i}, ${s})"));
            }
            if candidates {
                // Common terms: the newest few thousand events usually hold a page of
                // matches, and then they are the newest matches of all (the candidates are
                // a prefix of the events in this order, so their matches are a prefix).
                let n = q.arg(Arg::I64(self.newest_candidates));
                q.sql.push_str(&format!(
                    " ORDER BY date DESC, id DESC, source DESC LIMIT ${n}) c WHERE true"
                ));
                q.text_filter_exact(filter);
            } else {
                q.text_filter(filter);
            }
            let l = q.arg(Arg::I64(page.limit.min(i64::MAX as usize) as i64));
            let o = q.arg(Arg::I64(page.offset.min(i64::MAX as usize) as i64));
            q.sql.push_str(&format!(
                " ORDER BY date DESC, id DESC, source DESC LIMIT ${l} OFFSET ${o}"
            ));
            q
        };
        if text_search && self.newest_candidates > 0 {
            let q = newest(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM (SELECT {EVENT_COLUMNS}, search, resources \
                     FROM events WHERE true"
                ),
                true,
            );
            let listed = self.fetch_listed(&q, page.max_bytes).await?;
            if listed.rows.len() >= page.limit || listed.cut {
                return Ok(listed);
            }
        }
        // Rare terms: the trigram index plus the events it has not indexed yet.
        let q = newest(
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE true"),
            false,
        );
        self.fetch_listed(&q, page.max_bytes).await
    }

    /// Streams a listing query's rows until `max_bytes` of raw bodies (at least one row).
    async fn fetch_listed(&self, q: &SqlBuilder, max_bytes: usize) -> Result<Listed, StoreError> {
        use futures_util::TryStreamExt;
        let mut stream = q.query().fetch(&self.pool);
        let mut listed = Listed::default();
        let mut bytes = 0usize;
        while let Some(r) = stream.try_next().await? {
            let row = row_to_event(&r)?;
            bytes = bytes.saturating_add(row.raw.len());
            if bytes > max_bytes && !listed.rows.is_empty() {
                listed.cut = true;
                break;
            }
            listed.rows.push(row);
        }
        Ok(listed)
    }

    pub(super) async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub(super) async fn setting_insert_if_absent(
        &self,
        key: &str,
        value: &str,
    ) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                .bind(key)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub(super) fn export(
        &self,
        filter: Filter,
        with_raw: bool,
    ) -> mpsc::Receiver<Result<Vec<ExportRow>, StoreError>> {
        let (tx, rx) = mpsc::channel(2);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let run = async {
                let mut q = SqlBuilder::new(&format!(
                    "SELECT {EXPORT_COLUMNS}, {} FROM events WHERE true",
                    if with_raw { "raw" } else { "NULL::text AS raw" }
                ));
                q.filter(&filter);
                q.sql.push_str(" ORDER BY date, id, source");
                let mut rows = q.query().fetch(&pool);
                let mut batches = super::ExportBatcher::default();
                while let Some(r) = rows.try_next().await? {
                    let row = ExportRow {
                        seq: r.try_get(0)?,
                        id: r.try_get(1)?,
                        date: r.try_get(2)?,
                        kind: r.try_get(3)?,
                        name: r.try_get(4)?,
                        title: r.try_get(5)?,
                        member_id: r.try_get(6)?,
                        member_email: r.try_get(7)?,
                        token_id: r.try_get(8)?,
                        accesses: r.try_get(9)?,
                        source: r.try_get(10)?,
                        actor: r.try_get(11)?,
                        summary: r.try_get(12)?,
                        action: r.try_get(13)?,
                        resource: r.try_get(14)?,
                        raw: r.try_get(15)?,
                    };
                    if let Some(full) = batches.push(row) {
                        if tx.send(Ok(full)).await.is_err() {
                            // The reader went away (client disconnected): stop the query.
                            return Ok(());
                        }
                    }
                }
                if let Some(last) = batches.finish() {
                    let _ = tx.send(Ok(last)).await;
                }
                Ok::<(), StoreError>(())
            };
            if let Err(e) = run.await {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    pub(super) async fn count(&self, filter: &Filter) -> Result<u64, StoreError> {
        let mut q = SqlBuilder::new("SELECT count(*) FROM events WHERE true");
        q.filter(filter);
        let n: i64 = q.query().fetch_one(&self.pool).await?.try_get(0)?;
        Ok(n as u64)
    }

    pub(super) async fn queue_take_leased(
        &self,
        name: &str,
        limit: usize,
        visibility: Option<Duration>,
        sources: &[String],
    ) -> Result<QueueBatch, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The consumer's row is the lock: concurrent takes for one consumer, on any instance,
        // run one after another.
        sqlx::query(&format!(
            "INSERT INTO consumers (name, position, updated_at) VALUES ($1, 0, {NOW_MS}) \
             ON CONFLICT (name) DO NOTHING"
        ))
        .bind(name)
        .execute(&mut *tx)
        .await?;
        let position: i64 =
            sqlx::query_scalar("SELECT position FROM consumers WHERE name = $1 FOR UPDATE")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
        // The database's clock: instances' clocks may disagree.
        let now: i64 = sqlx::query_scalar(&format!("SELECT {NOW_MS}"))
            .fetch_one(&mut *tx)
            .await?;
        // Leases that ran out come first: their events go out again. A batch ends early
        // rather than pass QUEUE_BATCH_BYTES (at least one event).
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        {
            use futures_util::TryStreamExt;
            let sql = "SELECT e.seq, e.id, e.date, e.raw, e.source, e.actor, e.action, \
                 e.resource, e.summary FROM queue_leases l JOIN events e ON e.seq = l.seq \
                 WHERE l.consumer = $1 AND l.expires_at <= $2 ORDER BY l.seq LIMIT $3";
            let mut found = sqlx::query(sql)
                .bind(name)
                .bind(now)
                .bind(limit as i64)
                .fetch(&mut *tx);
            while let Some(r) = found.try_next().await? {
                let row = row_to_event(&r)?;
                bytes += row.raw.len();
                if bytes > super::QUEUE_BATCH_BYTES && !rows.is_empty() {
                    break;
                }
                rows.push(row);
            }
        }
        let expired: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let mut fresh = Vec::new();
        if bytes <= super::QUEUE_BATCH_BYTES {
            use futures_util::TryStreamExt;
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 \
                 AND (cardinality($3::text[]) = 0 OR source = ANY($3)) ORDER BY seq LIMIT $2"
            );
            let mut found = sqlx::query(&sql)
                .bind(position)
                .bind((limit - expired.len()) as i64)
                .bind(sources)
                .fetch(&mut *tx);
            while let Some(r) = found.try_next().await? {
                let row = row_to_event(&r)?;
                bytes += row.raw.len();
                if bytes > super::QUEUE_BATCH_BYTES && !(rows.is_empty() && fresh.is_empty()) {
                    break;
                }
                fresh.push(row);
            }
        }
        if let Some(last) = fresh.last() {
            sqlx::query(&format!(
                "UPDATE consumers SET position = $2, updated_at = {NOW_MS} WHERE name = $1"
            ))
            .bind(name)
            .bind(last.seq)
            .execute(&mut *tx)
            .await?;
        }
        let fresh_seqs: Vec<i64> = fresh.iter().map(|r| r.seq).collect();
        rows.extend(fresh);
        let mut ack = None;
        match visibility {
            Some(v) if !rows.is_empty() => {
                let token = super::ack_token();
                let until = now.saturating_add(v.as_millis() as i64);
                sqlx::query(
                    "UPDATE queue_leases SET token = $3, expires_at = $4 \
                     WHERE consumer = $1 AND seq = ANY($2)",
                )
                .bind(name)
                .bind(&expired)
                .bind(&token)
                .bind(until)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO queue_leases (consumer, seq, token, expires_at) \
                     SELECT $1, s, $3, $4 FROM unnest($2::bigint[]) s",
                )
                .bind(name)
                .bind(&fresh_seqs)
                .bind(&token)
                .bind(until)
                .execute(&mut *tx)
                .await?;
                ack = Some(token);
            }
            _ => {
                // Read-once: redelivered events count as received now.
                sqlx::query("DELETE FROM queue_leases WHERE consumer = $1 AND seq = ANY($2)")
                    .bind(name)
                    .bind(&expired)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(QueueBatch { rows, ack })
    }

    pub(super) async fn queue_ack(
        &self,
        name: &str,
        token: &str,
    ) -> Result<AckOutcome, StoreError> {
        let (settled, held): (i64, i64) = sqlx::query_as(&format!(
            "WITH gone AS (DELETE FROM queue_leases WHERE consumer = $1 AND token = $2 \
             AND expires_at > {NOW_MS} RETURNING 1) \
             SELECT (SELECT count(*) FROM gone), \
             (SELECT count(*) FROM queue_leases WHERE consumer = $1 AND token = $2)"
        ))
        .bind(name)
        .bind(token)
        .fetch_one(&self.pool)
        .await?;
        Ok(if settled > 0 {
            AckOutcome::Settled(settled as u64)
        } else if held > 0 {
            AckOutcome::Expired
        } else {
            AckOutcome::Unknown
        })
    }

    pub(super) async fn newest_date(&self, source: Source) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT max(date) FROM events WHERE source = $1")
                .bind(source.as_str())
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub(super) async fn source_run_open(
        &self,
        source: Source,
    ) -> Result<Option<SourceRun>, StoreError> {
        let row = sqlx::query(
            "SELECT id, after_ms, before_ms, progress FROM source_runs \
             WHERE source = $1 AND finished_at IS NULL ORDER BY id LIMIT 1",
        )
        .bind(source.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|r| {
                Ok::<_, sqlx::Error>(SourceRun {
                    id: r.try_get(0)?,
                    after: r.try_get(1)?,
                    before: r.try_get(2)?,
                    progress: r.try_get(3)?,
                })
            })
            .transpose()?)
    }

    pub(super) async fn source_run_create(
        &self,
        source: Source,
        after: i64,
        before: i64,
        progress: &str,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "INSERT INTO source_runs (source, after_ms, before_ms, progress, created_at) \
             VALUES ($1, $2, $3, $4, {NOW_MS}) RETURNING id"
        ))
        .bind(source.as_str())
        .bind(after)
        .bind(before)
        .bind(progress)
        .fetch_one(&self.pool)
        .await?)
    }

    pub(super) async fn source_run_save(
        &self,
        run: i64,
        progress: &str,
        finished: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE source_runs SET progress = $2, \
             finished_at = CASE WHEN $3 THEN {NOW_MS} ELSE finished_at END WHERE id = $1"
        ))
        .bind(run)
        .bind(progress)
        .bind(finished)
        .execute(&self.pool)
        .await?;
        if finished {
            sqlx::query(&super::PRUNE_SOURCE_RUNS.replace("?1", "$1"))
                .bind(run)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    pub(super) async fn source_position(&self, source: Source) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT max(before_ms) FROM source_runs WHERE source = $1 AND finished_at IS NOT NULL",
        )
        .bind(source.as_str())
        .fetch_one(&self.pool)
        .await?)
    }

    pub(super) async fn lease_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(&format!(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, {NOW_MS} + $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < {NOW_MS} \
             RETURNING holder"
        ))
        .bind(name)
        .bind(holder)
        .bind(ttl.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    pub(super) async fn lease_release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn backfill_open(
        &self,
        after: Option<i64>,
        before: Option<i64>,
        spec: Option<&str>,
    ) -> Result<Option<BackfillJob>, StoreError> {
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM backfill_jobs WHERE finished_at IS NULL \
             AND requested_after IS NOT DISTINCT FROM $1 AND requested_before IS NOT DISTINCT FROM $2 \
             AND spec IS NOT DISTINCT FROM $3 ORDER BY id DESC LIMIT 1",
        )
        .bind(after)
        .bind(before)
        .bind(spec)
        .fetch_optional(&self.pool)
        .await?;
        let Some(id) = id else { return Ok(None) };
        let windows = sqlx::query(
            "SELECT idx, after_ms, before_ms, next_href, done FROM backfill_windows \
             WHERE job_id = $1 ORDER BY idx",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(BackfillWindow {
                idx: r.try_get(0)?,
                after: r.try_get(1)?,
                before: r.try_get(2)?,
                next_href: r.try_get(3)?,
                done: r.try_get(4)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Some(BackfillJob { id, windows }))
    }

    pub(super) async fn backfill_create(
        &self,
        after: Option<i64>,
        before: Option<i64>,
        spec: Option<&str>,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "INSERT INTO backfill_jobs (requested_after, requested_before, spec, created_at) \
             VALUES ($1, $2, $3, {NOW_MS}) RETURNING id"
        ))
        .bind(after)
        .bind(before)
        .bind(spec)
        .fetch_one(&self.pool)
        .await?)
    }

    pub(super) async fn backfill_save_windows(
        &self,
        job: i64,
        windows: Vec<BackfillWindow>,
    ) -> Result<(), StoreError> {
        // One statement: one round trip, one transaction.
        let mut idx = Vec::with_capacity(windows.len());
        let mut after = Vec::with_capacity(windows.len());
        let mut before = Vec::with_capacity(windows.len());
        let mut next_href = Vec::with_capacity(windows.len());
        let mut done = Vec::with_capacity(windows.len());
        for w in windows {
            idx.push(w.idx);
            after.push(w.after);
            before.push(w.before);
            next_href.push(w.next_href);
            done.push(w.done);
        }
        sqlx::query(
            "INSERT INTO backfill_windows (job_id, idx, after_ms, before_ms, next_href, done) \
             SELECT $1, * FROM unnest($2::int8[], $3::int8[], $4::int8[], $5::text[], $6::bool[]) \
             ON CONFLICT (job_id, idx) DO UPDATE SET \
             after_ms = excluded.after_ms, before_ms = excluded.before_ms, \
             next_href = excluded.next_href, done = excluded.done",
        )
        .bind(job)
        .bind(&idx)
        .bind(&after)
        .bind(&before)
        .bind(&next_href)
        .bind(&done)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn backfill_finish(&self, job: i64) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE backfill_jobs SET finished_at = {NOW_MS} WHERE id = $1"
        ))
        .bind(job)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn search_lag(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(LAG_SQL).fetch_one(&self.pool).await?)
    }

    pub(super) async fn index_step(&self, max: i64) -> Result<i64, StoreError> {
        let mut done = 0;
        while done < max {
            match index_batch(&self.pool, max - done).await? {
                Some((n, _)) if n > 0 => done += n,
                _ => break,
            }
        }
        Ok(done)
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        if self.writer.is_closed() {
            return Err(StoreError::Closed);
        }
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn close(&self) {
        self.writer.shutdown().await;
        self.indexer_stop.cancel();
        self.pool.close().await;
    }
}

/// `err`'s message with the URL's passwords, should they appear, replaced.
fn redact_error(err: &dyn std::fmt::Display, url: &str) -> String {
    let mut msg = err.to_string();
    for secret in crate::config::url_secrets(url) {
        msg = msg.replace(&secret, "***");
    }
    msg
}

async fn migrate(mut conn: sqlx::PgConnection) -> Result<(), sqlx::Error> {
    // Instances starting together migrate one at a time; the others then find it done.
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut conn)
        .await?;
    let result = async {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS _migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut conn)
        .await?;
        for (version, sql) in MIGRATIONS {
            let done: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM _migrations WHERE version = $1)")
                    .bind(version)
                    .fetch_one(&mut conn)
                    .await?;
            if done {
                continue;
            }
            let mut tx = conn.begin().await?;
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query(&format!(
                "INSERT INTO _migrations (version, applied_at) VALUES ($1, {NOW_MS})"
            ))
            .bind(version)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(version, "applied migration");
        }
        Ok::<(), sqlx::Error>(())
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    result
}

/// Postgres text cannot hold U+0000; the derived columns get U+FFFD instead (the raw body,
/// being JSON, never holds a bare NUL).
fn pg_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// JSON text Postgres's `jsonb` accepts: it refuses the escape `\u0000`, so NUL characters
/// in strings become U+FFFD as in the other columns.
fn pg_json(json: &str) -> Cow<'_, str> {
    if !json.contains("\\u0000") {
        return Cow::Borrowed(json);
    }
    fn clean(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => *s = s.replace('\0', "\u{FFFD}"),
            serde_json::Value::Array(items) => items.iter_mut().for_each(clean),
            serde_json::Value::Object(map) => {
                let entries = std::mem::take(map);
                for (k, mut v) in entries {
                    clean(&mut v);
                    map.insert(k.replace('\0', "\u{FFFD}"), v);
                }
            }
            _ => {}
        }
    }
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(mut v) => {
            clean(&mut v);
            Cow::Owned(v.to_string())
        }
        Err(_) => Cow::Borrowed(json),
    }
}

/// A row of [`EVENT_COLUMNS`].
fn row_to_event(r: &PgRow) -> Result<StoredEvent, sqlx::Error> {
    Ok(StoredEvent {
        seq: r.try_get(0)?,
        id: r.try_get(1)?,
        date: r.try_get(2)?,
        raw: r.try_get(3)?,
        source: r.try_get(4)?,
        actor: r.try_get(5)?,
        action: r.try_get(6)?,
        resource: r.try_get(7)?,
        summary: r.try_get(8)?,
    })
}

/// One bound parameter.
enum Arg {
    I64(i64),
    Text(String),
    Texts(Vec<String>),
}

/// A query with numbered parameters, built from the shared filters.
struct SqlBuilder {
    sql: String,
    args: Vec<Arg>,
}

impl SqlBuilder {
    fn new(head: &str) -> Self {
        Self {
            sql: head.to_owned(),
            args: Vec::new(),
        }
    }

    /// Adds a parameter; returns its number.
    fn arg(&mut self, a: Arg) -> usize {
        self.args.push(a);
        self.args.len()
    }

    /// Appends the shared filters as `AND ...` clauses.
    fn filter(&mut self, f: &Filter) {
        self.non_text_filter(f);
        self.text_filter(f);
    }

    /// `q` and `spec`: the trigram index narrows the events to those holding the end of
    /// each literal, plus the events it has not indexed yet; the exact filters then run on
    /// those. Without a literal of three characters (the trigram minimum) they scan.
    fn text_filter(&mut self, f: &Filter) {
        let narrowing = index_narrowing(f);
        if !narrowing.is_empty() {
            self.sql
                .push_str(" AND seq IN (SELECT seq FROM events_search WHERE true");
            for (column, pattern) in narrowing {
                let n = self.arg(Arg::Text(pattern));
                self.sql.push_str(&format!(" AND {column} LIKE ${n}"));
            }
            self.sql.push_str(
                " UNION ALL SELECT seq FROM events WHERE seq > (SELECT indexed_seq FROM search_state))",
            );
        }
        self.text_filter_exact(f);
    }

    /// `q` and `spec` on the `search` and `resources` columns of whatever table is in scope.
    fn text_filter_exact(&mut self, f: &Filter) {
        if let Some(q) = &f.q {
            // `search` is lower-cased text.
            let n = self.arg(Arg::Text(format!(
                "%{}%",
                escape_like(&pg_text(&q.to_lowercase()))
            )));
            self.sql.push_str(&format!(" AND search LIKE ${n}"));
        }
        if let Some(spec) = &f.spec {
            let n = self.arg(Arg::Text(spec_regex(spec)));
            self.sql.push_str(&format!(" AND resources ~ ${n}"));
        }
    }

    /// The filters other than `q` and `spec`.
    fn non_text_filter(&mut self, f: &Filter) {
        if let Some(before) = f.before {
            let n = self.arg(Arg::I64(before));
            self.sql.push_str(&format!(" AND date < ${n}"));
        }
        if let Some(after) = f.after {
            let n = self.arg(Arg::I64(after));
            self.sql.push_str(&format!(" AND date > ${n}"));
        }
        let texts = |v: &[String]| Arg::Texts(v.iter().map(|s| pg_text(s).into_owned()).collect());
        if !f.sources.is_empty() {
            let n = self.arg(texts(&f.sources));
            self.sql.push_str(&format!(" AND source = ANY(${n})"));
        }
        if !f.actors.is_empty() {
            let n = self.arg(texts(&f.actors));
            self.sql.push_str(&format!(" AND actor = ANY(${n})"));
        }
        if !f.members.is_empty() {
            let n = self.arg(texts(&f.members));
            self.sql.push_str(&format!(
                " AND (member_id = ANY(${n}) OR member_email = ANY(${n}))"
            ));
        }
        if !f.tokens.is_empty() {
            let n = self.arg(texts(&f.tokens));
            self.sql.push_str(&format!(" AND token_id = ANY(${n})"));
        }
        if !f.kinds.is_empty() {
            let n = self.arg(texts(&f.kinds));
            self.sql.push_str(&format!(" AND kind = ANY(${n})"));
        }
        if !f.actions.is_empty() {
            let n = self.arg(texts(&f.actions));
            self.sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM jsonb_array_elements(accesses::jsonb) a WHERE a->>'action' = ANY(${n}))"
            ));
        }
    }

    fn query(&self) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let mut q = sqlx::query(&self.sql);
        for a in &self.args {
            q = match a {
                Arg::I64(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.as_str()),
                Arg::Texts(v) => q.bind(v.as_slice()),
            };
        }
        q
    }
}

/// Characters of each literal the index lookup uses: a trigram common to most events has a
/// long posting list, and the end of a literal (for a resource specifier, the resource key)
/// is its most specific part.
const NARROW_CHARS: usize = 6;

/// `(column, LIKE pattern)` pairs that narrow `q` and `spec` through the trigram index:
/// the last few characters of each literal of at least three characters.
fn index_narrowing(f: &Filter) -> Vec<(&'static str, String)> {
    let mut literals: Vec<(&'static str, String)> = Vec::new();
    if let Some(q) = &f.q {
        literals.push(("search", pg_text(&q.to_lowercase()).into_owned()));
    }
    if let Some(spec) = &f.spec {
        let stripped = crate::event::strip_tags(spec);
        literals.extend(
            stripped
                .split('*')
                .map(|p| ("resources", pg_text(p).into_owned())),
        );
    }
    literals
        .into_iter()
        .filter_map(|(column, literal)| {
            let chars: Vec<char> = literal.chars().collect();
            (chars.len() >= 3).then(|| {
                let tail: String = chars[chars.len().saturating_sub(NARROW_CHARS)..]
                    .iter()
                    .collect();
                (column, format!("%{}%", escape_like(&tail)))
            })
        })
        .collect()
}

/// `s` with LIKE's wildcards and escape character escaped.
fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A regular expression over newline-separated, tag-free resource lines that matches
/// exactly where [`crate::event::spec_matches`] does: the glob (`*` is any run within one
/// resource) matches a whole resource or a prefix of it that ends before a `:`.
pub(crate) fn spec_regex(spec: &str) -> String {
    let stripped = crate::event::strip_tags(spec);
    let pattern = pg_text(&stripped);
    let mut re = String::from("(^|\n)");
    for c in pattern.chars() {
        if c == '*' {
            re.push_str("[^\n]*");
        } else if c.is_ascii() && !c.is_ascii_alphanumeric() {
            re.push('\\');
            re.push(c);
        } else {
            re.push(c);
        }
    }
    re.push_str("(:[^\n]*)?(\n|$)");
    re
}

/// The resource lines as the `resources` column keeps them (tags removed).
fn resources_column(resources: &str) -> String {
    let lines: Vec<Cow<'_, str>> = resources
        .split('\n')
        .map(crate::event::strip_tags)
        .collect();
    pg_text(&lines.join("\n")).into_owned()
}

/// Groups in flight at once: while one commits (holding the insert lock, then waiting for
/// the WAL flush), the next is encoded, sent and parsed, and waits for the lock on the
/// server. The lock still commits groups one after another, so `seq` order is commit order.
const GROUPS_IN_FLIGHT: usize = 2;

/// The writer: takes every request queued, commits them in one transaction, answers each.
async fn writer_loop(
    pool: PgPool,
    mut rx: mpsc::Receiver<WriteReq>,
    metrics: Arc<Metrics>,
    last_commit: Arc<super::writer::IndexerGate>,
) {
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        // A slot first, then the group: what queues meanwhile joins it.
        while in_flight.len() >= GROUPS_IN_FLIGHT {
            in_flight.join_next().await;
        }
        let Some(first) = rx.recv().await else { break };
        let mut group: Group = Vec::new();
        let stop = gather(first, &mut rx, &mut group);
        if !group.is_empty() {
            let (pool, metrics, last_commit) = (pool.clone(), metrics.clone(), last_commit.clone());
            in_flight.spawn(async move {
                commit_group(&pool, &mut group, &metrics).await;
                last_commit.committed();
            });
        }
        if let Some(ack) = stop {
            while in_flight.join_next().await.is_some() {}
            let _ = ack.send(());
            return;
        }
    }
    while in_flight.join_next().await.is_some() {}
}

async fn commit_group(pool: &PgPool, group: &mut Group, metrics: &Metrics) {
    let total: usize = group.iter().map(|(e, _)| e.len()).sum();
    let all: Vec<&NewEvent> = group.iter().flat_map(|(e, _)| e.iter()).collect();
    match insert_all(pool, &all).await {
        Ok(stored) => {
            metrics.commit_group_size.observe(total as f64);
            let mut stored = stored;
            for (events, reply) in group.drain(..) {
                let _ = reply.send(Ok(outcomes(&events, &mut stored)));
            }
        }
        Err(e) if group.len() > 1 && !is_connection_error(&e) => {
            // One request's failure must not fail the others: commit each on its own.
            tracing::warn!(error = %e, "group commit failed; retrying requests one by one");
            for (events, reply) in group.drain(..) {
                let refs: Vec<&NewEvent> = events.iter().collect();
                let out = insert_all(pool, &refs)
                    .await
                    .map(|mut stored| {
                        metrics.commit_group_size.observe(events.len() as f64);
                        outcomes(&events, &mut stored)
                    })
                    .map_err(StoreError::from);
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

/// Each event's outcome, given the identities its transaction stored: the first of several
/// events carrying one identity stored it, the others are duplicates.
fn outcomes(events: &[NewEvent], stored: &mut HashSet<(String, String)>) -> Vec<Inserted> {
    events
        .iter()
        .map(|e| {
            if stored.remove(&(e.source.as_str().to_owned(), pg_text(&e.id).into_owned())) {
                Inserted::Stored
            } else {
                Inserted::Duplicate
            }
        })
        .collect()
}

fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
    )
}

/// Inserts the events in one transaction; returns the identities newly stored.
async fn insert_all(
    pool: &PgPool,
    events: &[&NewEvent],
) -> Result<HashSet<(String, String)>, sqlx::Error> {
    let n = events.len();
    let mut id = Vec::with_capacity(n);
    let mut src = Vec::with_capacity(n);
    let mut actor = Vec::with_capacity(n);
    let mut action = Vec::with_capacity(n);
    let mut resource = Vec::with_capacity(n);
    let mut summary = Vec::with_capacity(n);
    let mut date = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut name = Vec::with_capacity(n);
    let mut title = Vec::with_capacity(n);
    let mut member_id = Vec::with_capacity(n);
    let mut member_email = Vec::with_capacity(n);
    let mut token_id = Vec::with_capacity(n);
    let mut accesses = Vec::with_capacity(n);
    let mut resources = Vec::with_capacity(n);
    let mut search = Vec::with_capacity(n);
    let mut channel = Vec::with_capacity(n);
    let mut raw = Vec::with_capacity(n);
    let mut seen = HashSet::with_capacity(n);
    // Borrowed unless a NUL had to be replaced; the raw body, being JSON, never holds one.
    for e in events {
        let key = pg_text(&e.id);
        // Within one statement, a repeated identity is simply a duplicate.
        if !seen.insert((e.source, key.clone())) {
            continue;
        }
        id.push(key);
        src.push(e.source.as_str());
        actor.push(pg_text(&e.actor));
        action.push(pg_text(&e.action));
        resource.push(pg_text(&e.resource));
        summary.push(pg_text(&e.summary));
        date.push(e.date);
        kind.push(pg_text(&e.kind));
        name.push(pg_text(&e.name));
        title.push(pg_text(&e.title));
        member_id.push(e.member_id.as_deref().map(pg_text));
        member_email.push(e.member_email.as_deref().map(pg_text));
        token_id.push(e.token_id.as_deref().map(pg_text));
        accesses.push(pg_json(&e.accesses));
        resources.push(resources_column(&e.resources));
        search.push(pg_text(&e.search));
        channel.push(e.channel.as_str());
        raw.push(e.raw.as_str());
    }
    // One statement, so one round trip and its own transaction. The lock is taken before
    // any row is produced (a cross join yields nothing until both sides have), so before the
    // first sequence number is drawn, and it is held until the statement commits.
    let stored: Vec<(String, String)> = sqlx::query_as(&format!(
        "INSERT INTO events (id, date, kind, name, title, member_id, member_email, token_id, \
         accesses, resources, search, channel, received_at, raw, source, actor, action, \
         resource, summary) \
         SELECT id, date, kind, name, title, member_id, member_email, token_id, accesses, \
         resources, search, channel, {NOW_MS}, raw, source, actor, action, resource, summary \
         FROM (SELECT pg_advisory_xact_lock($14)) AS insert_lock, \
         unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], \
         $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
         $15::text[], $16::text[], $17::text[], $18::text[], $19::text[]) \
         AS t (id, date, kind, name, title, member_id, member_email, token_id, accesses, \
         resources, search, channel, raw, source, actor, action, resource, summary) \
         ON CONFLICT (source, id) DO NOTHING RETURNING source, id"
    ))
    .bind(&id)
    .bind(&date)
    .bind(&kind)
    .bind(&name)
    .bind(&title)
    .bind(&member_id)
    .bind(&member_email)
    .bind(&token_id)
    .bind(&accesses)
    .bind(&resources)
    .bind(&search)
    .bind(&channel)
    .bind(&raw)
    .bind(INSERT_LOCK)
    .bind(&src)
    .bind(&actor)
    .bind(&action)
    .bind(&resource)
    .bind(&summary)
    .fetch_all(pool)
    .await?;
    Ok(stored.into_iter().collect())
}

/// Fills the trigram index in batches while this instance's writer is idle (no group
/// committed for 100 ms). Instances share the work: a batch locks the `search_state` row
/// with SKIP LOCKED, so while one instance indexes the others wait for the next round.
async fn indexer_loop(
    pool: PgPool,
    last_commit: Arc<super::writer::IndexerGate>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let pause = |ms: u64| {
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => false,
                _ = stop.cancelled() => true,
            }
        }
    };
    loop {
        if last_commit.should_wait() {
            if pause(100).await {
                return;
            }
            continue;
        }
        let wait = match index_batch(&pool, INDEX_BATCH).await {
            Ok(Some((indexed, lag))) => {
                metrics.search_unindexed.set(lag);
                if indexed == 0 {
                    200
                } else {
                    0
                }
            }
            // Another instance holds the batch.
            Ok(None) => 200,
            Err(e) => {
                tracing::warn!(error = %e, "search indexing failed; retrying");
                1000
            }
        };
        if pause(wait).await {
            return;
        }
    }
}

/// Indexes the next batch; returns how many were indexed and how many remain, or `None`
/// when another instance is indexing.
async fn index_batch(pool: &PgPool, max: i64) -> Result<Option<(i64, i64)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let from: Option<i64> = sqlx::query_scalar(
        "SELECT indexed_seq FROM search_state WHERE id = 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(from) = from else {
        return Ok(None);
    };
    // Sequence numbers become visible in order (inserts hold the insert lock until they
    // commit), so every event up to the highest one read here is visible now.
    let (n, last): (i64, Option<i64>) = sqlx::query_as(
        "WITH batch AS (INSERT INTO events_search (seq, search, resources) \
         SELECT seq, search, resources FROM (SELECT seq, search, resources, \
         sum(octet_length(search) + octet_length(resources)) OVER (ORDER BY seq) AS upto, \
         octet_length(search) + octet_length(resources) AS own \
         FROM (SELECT seq, search, resources FROM events WHERE seq > $1 ORDER BY seq LIMIT $2) w) b \
         WHERE upto - own < $3 ORDER BY seq \
         RETURNING seq) SELECT count(*), max(seq) FROM batch",
    )
    .bind(from)
    .bind(max)
    .bind(super::INDEX_BATCH_BYTES as i64)
    .fetch_one(&mut *tx)
    .await?;
    let last = last.unwrap_or(from);
    if n > 0 {
        sqlx::query("UPDATE search_state SET indexed_seq = $1 WHERE id = 1")
            .bind(last)
            .execute(&mut *tx)
            .await?;
    }
    let max: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM events")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some((n, (max - last).max(0))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_regex_escapes_and_anchors() {
        assert_eq!(
            spec_regex("proj/*;ops:env/a.b"),
            "(^|\n)proj\\/[^\n]*\\:env\\/a\\.b(:[^\n]*)?(\n|$)"
        );
    }

    #[test]
    fn like_escapes_wildcards() {
        assert_eq!(escape_like(r"50%_a\b"), r"50\%\_a\\b");
    }

    #[test]
    fn password_is_redacted_from_messages() {
        let url = "postgres://app:s3cret@db/audit";
        assert_eq!(
            redact_error(&"bad s3cret here", url),
            "bad *** here".to_owned()
        );
        assert!(crate::config::url_secrets("postgres://app@db/x").is_empty());
        let slash = "postgres://app:pa/ss?x@db/audit";
        assert_eq!(
            redact_error(&"password for pa/ss?x refused", slash),
            "password for *** refused"
        );
    }
}

fn destination_row(r: &PgRow) -> Result<DestinationRow, sqlx::Error> {
    Ok(DestinationRow {
        name: r.try_get(0)?,
        position: r.try_get(1)?,
        floor_seq: r.try_get(2)?,
        floor_date: r.try_get(3)?,
        delivered: r.try_get(4)?,
        created_at: r.try_get(5)?,
        updated_at: r.try_get(6)?,
    })
}

const DESTINATION_COLUMNS: &str =
    "name, position, floor_seq, floor_date, delivered, created_at, updated_at";

/// The cursor and floor that start a destination at `from` (None: after the newest event).
async fn destination_start(
    c: &mut sqlx::PgConnection,
    from: Option<i64>,
) -> Result<(i64, i64, i64), sqlx::Error> {
    let max: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0)::bigint FROM events")
        .fetch_one(&mut *c)
        .await?;
    let Some(from) = from else {
        return Ok((max, 0, 0));
    };
    let first: Option<i64> = sqlx::query_scalar("SELECT min(seq) FROM events WHERE date >= $1")
        .bind(from)
        .fetch_one(&mut *c)
        .await?;
    Ok((first.map_or(max, |f| f - 1), max, from))
}

impl PgStore {
    pub(super) async fn destination_open(
        &self,
        name: &str,
        from: Option<i64>,
    ) -> Result<DestinationRow, StoreError> {
        if let Some(row) = self.destination_get(name).await? {
            return Ok(row);
        }
        let mut tx = self.pool.begin().await?;
        let (position, floor_seq, floor_date) = destination_start(&mut tx, from).await?;
        sqlx::query(&format!(
            "INSERT INTO destinations (name, position, floor_seq, floor_date, delivered, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, 0, {NOW_MS}, {NOW_MS}) \
             ON CONFLICT (name) DO NOTHING"
        ))
        .bind(name)
        .bind(position)
        .bind(floor_seq)
        .bind(floor_date)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.destination_get(name)
            .await?
            .ok_or_else(|| StoreError::Other(format!("destination {name} vanished")))
    }

    pub(super) async fn destination_get(
        &self,
        name: &str,
    ) -> Result<Option<DestinationRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {DESTINATION_COLUMNS} FROM destinations WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(destination_row).transpose()?)
    }

    pub(super) async fn destination_read(
        &self,
        row: &DestinationRow,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        use futures_util::TryStreamExt;
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 \
             AND (seq > $2 OR date >= $3) ORDER BY seq LIMIT $4"
        );
        let mut found = sqlx::query(&sql)
            .bind(row.position)
            .bind(row.floor_seq)
            .bind(row.floor_date)
            .bind(limit as i64)
            .fetch(&self.pool);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(r) = found.try_next().await? {
            let event = row_to_event(&r)?;
            bytes += event.raw.len();
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(event);
        }
        Ok(out)
    }

    pub(super) async fn destination_settle(
        &self,
        name: &str,
        settle: Settle,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(&format!(
            "UPDATE destinations SET position = $3, delivered = delivered + $4, \
             updated_at = {NOW_MS} WHERE name = $1 AND position = $2"
        ))
        .bind(name)
        .bind(settle.from)
        .bind(settle.to)
        .bind(settle.delivered + settle.replayed_ok.len() as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            return Ok(false);
        }
        for d in &settle.dead {
            sqlx::query(&format!(
                "INSERT INTO dead_letters (destination, seq, status, error, body, at) \
                 VALUES ($1, $2, $3, $4, $5, {NOW_MS})"
            ))
            .bind(name)
            .bind(d.seq)
            .bind(d.status.map(i32::from))
            .bind(&d.error)
            .bind(&d.body)
            .execute(&mut *tx)
            .await?;
        }
        if !settle.replayed_ok.is_empty() {
            sqlx::query("DELETE FROM dead_letters WHERE destination = $1 AND id = ANY($2)")
                .bind(name)
                .bind(&settle.replayed_ok)
                .execute(&mut *tx)
                .await?;
        }
        for (id, d) in &settle.replayed_dead {
            sqlx::query(&format!(
                "UPDATE dead_letters SET status = $3, error = $4, body = $5, at = {NOW_MS}, \
                 replay = false WHERE id = $1 AND destination = $2"
            ))
            .bind(id)
            .bind(name)
            .bind(d.status.map(i32::from))
            .bind(&d.error)
            .bind(&d.body)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn destination_replay_from(
        &self,
        name: &str,
        after: i64,
    ) -> Result<Option<DestinationRow>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (position, floor_seq, floor_date) = destination_start(&mut tx, Some(after)).await?;
        let row = sqlx::query(&format!(
            "UPDATE destinations SET position = $2, floor_seq = $3, floor_date = $4, \
             updated_at = {NOW_MS} WHERE name = $1 RETURNING {DESTINATION_COLUMNS}"
        ))
        .bind(name)
        .bind(position)
        .bind(floor_seq)
        .bind(floor_date)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row.as_ref().map(destination_row).transpose()?)
    }

    pub(super) async fn dead_letters_replay(&self, name: &str) -> Result<u64, StoreError> {
        let n = sqlx::query("UPDATE dead_letters SET replay = true WHERE destination = $1")
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n)
    }

    pub(super) async fn dead_letters_replaying(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<(i64, StoredEvent)>, StoreError> {
        let rows = sqlx::query(
            "SELECT e.seq, e.id, e.date, e.raw, e.source, e.actor, e.action, e.resource, \
             e.summary, d.id FROM dead_letters d JOIN events e ON e.seq = d.seq \
             WHERE d.destination = $1 AND d.replay ORDER BY d.id LIMIT $2",
        )
        .bind(name)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push((r.try_get(9)?, row_to_event(r)?));
        }
        Ok(out)
    }

    pub(super) async fn dead_letters_list(
        &self,
        name: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.id, d.seq, coalesce(e.source, ''), coalesce(e.id, ''), d.status, \
             d.error, d.body, d.at, d.replay FROM dead_letters d \
             LEFT JOIN events e ON e.seq = d.seq \
             WHERE d.destination = $1 AND d.id < $2 ORDER BY d.id DESC LIMIT $3",
        )
        .bind(name)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(DeadLetter {
                id: r.try_get(0)?,
                seq: r.try_get(1)?,
                source: r.try_get(2)?,
                event_id: r.try_get(3)?,
                status: r.try_get::<Option<i32>, _>(4)?.map(|s| s as u16),
                error: r.try_get(5)?,
                body: r.try_get(6)?,
                at: r.try_get(7)?,
                replay: r.try_get(8)?,
            });
        }
        Ok(out)
    }

    pub(super) async fn destination_stats(
        &self,
        name: &str,
    ) -> Result<Option<DestinationStats>, StoreError> {
        // One snapshot: the cursor, the delivered count and the dead letters agree.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&format!(
            "SELECT {DESTINATION_COLUMNS} FROM destinations WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row.as_ref().map(destination_row).transpose()? else {
            return Ok(None);
        };
        // Counted on the primary key alone (an index-only scan): `seq` has gaps here
        // (a duplicate insert takes a number), so it cannot be subtracted.
        let (lag_events, oldest_pending_at): (i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM events WHERE seq > $1), \
             (SELECT received_at FROM events WHERE seq > $1 ORDER BY seq LIMIT 1)",
        )
        .bind(row.position)
        .fetch_one(&mut *tx)
        .await?;
        let (dead_letters, replaying): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE replay) FROM dead_letters WHERE destination = $1",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(DestinationStats {
            row,
            lag_events,
            oldest_pending_at,
            dead_letters,
            replaying,
        }))
    }
}
