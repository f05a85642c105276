//! Carbon Black Cloud audit logs (`../shared/reference/cbc-audit-log-api.md`), through the
//! repeatable `POST .../logs/_search` over `create_time` windows: never the read-once
//! `_queue`, which loses what it answered if audithook dies before committing.
//!
//! A run splits its time range into chunks read concurrently. Each chunk is read oldest
//! first: a search from the chunk's cursor to its end; when more records match than one
//! answer holds, the next search starts at the newest time the answer reached (that
//! millisecond is read again, and deduplication makes it free), so no search pages deep
//! into Carbon Black's capped result window. Only when one millisecond holds more records
//! than one answer does the client page (`start`) within that millisecond. Whether a
//! window's `end` is inclusive is not documented: windows share their edges, which is
//! exact under both readings.
//!
//! Records carry no id. Theirs is derived from the content: the first 128 bits, in hex, of
//! the SHA-256 of the record as canonical JSON (keys sorted, no whitespace). Two records
//! differing in any field (two logins in one millisecond from different addresses) are two
//! events; the same record read twice is one.
//!
//! Progress (each chunk's cursor) is saved after the records before it are committed.

pub mod client;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use self::client::{CbcClient, SearchPage};
use super::SourceError;
use crate::event::{Channel, NewEvent, Source};
use crate::store::Store;

/// Chunks a run is split into at most, and the shortest chunk.
const MAX_CHUNKS: i64 = 64;
const MIN_CHUNK_MS: i64 = 3600 * 1000;
/// Records Carbon Black's searches return for one query at most (`start + rows`).
pub const RESULT_WINDOW: u64 = 10_000;

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub new: u64,
    pub duplicates: u64,
    pub searches: u64,
    pub resumed: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} new, {} already stored, {} searches",
            self.new, self.duplicates, self.searches
        )
    }
}

/// A run's saved progress: the chunks not finished, each as (cursor, end).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Progress {
    pending: Vec<(i64, i64)>,
}

/// Canonical JSON: object keys sorted, recursively.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), canonical(&m[k]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The id derived from a record's content (see the module documentation).
pub fn content_id(record: &Value) -> String {
    let text = canonical(record).to_string();
    let digest = Sha256::digest(text.as_bytes());
    hex::encode(&digest[..16])
}

/// Normalises one audit record (its JSON text as received). Envelope: actor = `actor`,
/// action = `description`, resource = `request_url`; `actor_ip` is kept (in the payload,
/// the summary and the searched text).
pub fn normalise(raw: &str) -> Result<NewEvent, String> {
    let v: Value = serde_json::from_str(raw).map_err(|e| format!("a record is not JSON: {e}"))?;
    let o = v.as_object().ok_or("a record is not a JSON object")?;
    let text = |key: &str| -> Result<String, String> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("a record's `{key}` is {other}, not a string")),
        }
    };
    for key in ["flagged", "verbose"] {
        if !matches!(o.get(key), None | Some(Value::Null | Value::Bool(_))) {
            return Err(format!("a record's `{key}` is not a boolean"));
        }
    }
    let created = text("create_time")?;
    if created.is_empty() {
        return Err("a record has no `create_time`".into());
    }
    let date = super::tfc::parse_time(&created)
        .ok_or_else(|| format!("a record's `create_time` {created:?} is not an ISO 8601 time"))?;
    let actor = text("actor")?;
    let actor_ip = text("actor_ip")?;
    let description = text("description")?;
    let request_url = text("request_url")?;
    let org_key = text("org_key")?;
    let who = match (actor.is_empty(), actor_ip.is_empty()) {
        (false, false) => format!(" ({actor} from {actor_ip})"),
        (false, true) => format!(" ({actor})"),
        (true, false) => format!(" (from {actor_ip})"),
        (true, true) => String::new(),
    };
    let summary = format!("{description}{who}");
    let search = [
        actor.as_str(),
        actor_ip.as_str(),
        description.as_str(),
        request_url.as_str(),
        org_key.as_str(),
    ]
    .join("\n")
    .to_lowercase();
    Ok(NewEvent {
        id: content_id(&v),
        date,
        kind: "audit".into(),
        name: String::new(),
        title: summary.clone(),
        member_id: None,
        member_email: None,
        token_id: None,
        accesses: serde_json::json!([{"action": description, "resource": request_url}]).to_string(),
        resources: String::new(),
        search,
        raw: raw.to_owned(),
        source: Source::Cbc,
        channel: Channel::Rest,
        actor,
        action: description,
        resource: request_url,
        summary,
    })
}

/// Splits `[after, before]` into chunks sharing their edges.
fn chunks(after: i64, before: i64) -> Vec<(i64, i64)> {
    let span = (before - after).max(1);
    let n = (span / MIN_CHUNK_MS).clamp(1, MAX_CHUNKS);
    let step = span / n;
    (0..n)
        .map(|i| {
            let a = after + i * step;
            let b = if i == n - 1 { before } else { a + step };
            (a, b)
        })
        .collect()
}

/// Shared state of a run's workers.
struct RunState {
    run: i64,
    progress: tokio::sync::Mutex<Progress>,
}

impl RunState {
    /// Moves chunk `end`'s cursor to `cursor` (`None`: finished) and saves.
    async fn advance(
        &self,
        store: &Store,
        end: i64,
        cursor: Option<i64>,
    ) -> Result<(), SourceError> {
        let mut p = self.progress.lock().await;
        match cursor {
            Some(c) => {
                for chunk in p.pending.iter_mut().filter(|(_, e)| *e == end) {
                    chunk.0 = chunk.0.max(c);
                }
            }
            None => p.pending.retain(|(_, e)| *e != end),
        }
        store
            .source_run_save(self.run, &super::to_json(&*p), false)
            .await?;
        Ok(())
    }
}

async fn store_results(store: &Store, page: &SearchPage) -> Result<(u64, u64), SourceError> {
    super::store_events(store, &page.events).await
}

/// Reads one chunk `[cursor, end]` to its end; returns (new, duplicates, searches).
async fn read_chunk(
    store: &Store,
    client: &CbcClient,
    state: &RunState,
    mut cursor: i64,
    end: i64,
) -> Result<(u64, u64, u64), SourceError> {
    let (mut new, mut dup, mut searches) = (0, 0, 0);
    loop {
        let page = client.search(cursor, end, 0).await?;
        searches += 1;
        let (n, d) = store_results(store, &page).await?;
        new += n;
        dup += d;
        if page.events.len() as u64 >= page.num_found {
            state.advance(store, end, None).await?;
            return Ok((new, dup, searches));
        }
        let reached = page.events.iter().map(|e| e.date).max().unwrap_or(cursor);
        if reached > cursor {
            cursor = reached;
        } else {
            // One millisecond holds more records than an answer: page within it.
            let (n, d, s) = read_millisecond(store, client, cursor).await?;
            new += n;
            dup += d;
            searches += s;
            cursor += 1;
        }
        state.advance(store, end, Some(cursor)).await?;
    }
}

/// Reads every record of millisecond `ms` by paging (`start`), up to the result window.
async fn read_millisecond(
    store: &Store,
    client: &CbcClient,
    ms: i64,
) -> Result<(u64, u64, u64), SourceError> {
    let (mut new, mut dup, mut searches) = (0, 0, 0);
    let mut start = 0u64;
    loop {
        let page = client.search(ms, ms + 1, start).await?;
        searches += 1;
        let (n, d) = store_results(store, &page).await?;
        new += n;
        dup += d;
        start += page.events.len() as u64;
        if page.events.is_empty() || start >= page.num_found {
            return Ok((new, dup, searches));
        }
        if start + u64::from(client.rows) > RESULT_WINDOW {
            tracing::error!(
                source = "cbc",
                ms,
                found = page.num_found,
                "more records in one millisecond than Carbon Black's search returns ({RESULT_WINDOW}); the rest cannot be read"
            );
            return Ok((new, dup, searches));
        }
    }
}

/// Runs (or resumes) a read of `[after, before]` (epoch ms). An unfinished run is finished
/// first; a new run follows unless the resumed one already covered the range.
pub async fn run(
    store: &Store,
    client: &CbcClient,
    after: i64,
    before: i64,
    concurrency: usize,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<Summary, SourceError> {
    let mut summary = Summary::default();
    let _hold = store.hold_indexer();
    if let Some(open) = store.source_run_open(Source::Cbc).await? {
        let saved: Progress = serde_json::from_str(&open.progress).unwrap_or_default();
        tracing::info!(
            source = "cbc",
            run = open.id,
            chunks = saved.pending.len(),
            "resuming an unfinished Carbon Black Cloud run"
        );
        summary.resumed = true;
        read_run(
            store,
            client,
            open.id,
            saved,
            concurrency,
            bar,
            &mut summary,
        )
        .await?;
        if open.after <= after && open.before >= before {
            return Ok(summary);
        }
    }
    let progress = Progress {
        pending: chunks(after, before),
    };
    let id = store
        .source_run_create(Source::Cbc, after, before, &super::to_json(&progress))
        .await?;
    read_run(store, client, id, progress, concurrency, bar, &mut summary).await?;
    Ok(summary)
}

async fn read_run(
    store: &Store,
    client: &CbcClient,
    run: i64,
    progress: Progress,
    concurrency: usize,
    bar: Option<&indicatif::ProgressBar>,
    summary: &mut Summary,
) -> Result<(), SourceError> {
    let todo = progress.pending.clone();
    if let Some(bar) = bar {
        bar.set_length(todo.len() as u64);
    }
    let state = Arc::new(RunState {
        run,
        progress: tokio::sync::Mutex::new(progress),
    });
    let mut tasks: JoinSet<Result<(u64, u64, u64), SourceError>> = JoinSet::new();
    let mut queue = todo.into_iter();
    let spawn = |tasks: &mut JoinSet<_>, (cursor, end): (i64, i64)| {
        let (store, client, state) = (store.clone(), client.clone(), state.clone());
        tasks.spawn(async move { read_chunk(&store, &client, &state, cursor, end).await });
    };
    for chunk in queue.by_ref().take(concurrency.max(1)) {
        spawn(&mut tasks, chunk);
    }
    let mut failed = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((new, dup, searches))) => {
                summary.new += new;
                summary.duplicates += dup;
                summary.searches += searches;
                if let Some(bar) = bar {
                    bar.inc(1);
                }
                if failed.is_none() {
                    if let Some(chunk) = queue.next() {
                        spawn(&mut tasks, chunk);
                    }
                }
            }
            Ok(Err(e)) => {
                // Let the other chunks save their progress, then report.
                failed.get_or_insert(e);
            }
            Err(e) => {
                failed.get_or_insert(SourceError::other(
                    Source::Cbc,
                    format!("chunk task failed: {e}"),
                ));
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let done = state.progress.lock().await;
    store
        .source_run_save(run, &super::to_json(&*done), true)
        .await?;
    Ok(())
}

/// How far back the first poll reads when nothing was read before: the three days Carbon
/// Black seeds a new API key's queue with.
pub const FIRST_POLL_MS: i64 = 3 * 24 * 3600 * 1000;

/// One poll: from the last position (less `overlap`) to now.
pub async fn poll(
    store: &Store,
    client: &CbcClient,
    overlap: std::time::Duration,
) -> Result<Summary, SourceError> {
    let now = crate::now_ms();
    let after = match store.source_position(Source::Cbc).await? {
        Some(p) => p - overlap.as_millis() as i64,
        None => now - FIRST_POLL_MS,
    };
    run(store, client, after, now, 4, None).await
}

/// Polls Carbon Black Cloud every `interval` until `stop` (one instance of several: the
/// `poll:cbc` lease).
pub async fn poll_loop(
    store: Store,
    client: CbcClient,
    interval: std::time::Duration,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    stop: tokio_util::sync::CancellationToken,
) {
    super::run_poller(
        &store,
        Source::Cbc,
        &client.fetcher,
        interval,
        &metrics,
        &stop,
        || async {
            poll(&store, &client, super::POLL_OVERLAP)
                .await
                .map(|s| s.new)
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_content_not_key_order() {
        let a = r#"{"actor":"a@x","create_time":"2024-04-17T19:18:37.480Z","actor_ip":"10.0.0.1"}"#;
        let b = r#"{"actor_ip":"10.0.0.1","actor":"a@x","create_time":"2024-04-17T19:18:37.480Z"}"#;
        let c = r#"{"actor":"a@x","create_time":"2024-04-17T19:18:37.480Z","actor_ip":"10.0.0.2"}"#;
        let (a, b, c) = (
            normalise(a).unwrap(),
            normalise(b).unwrap(),
            normalise(c).unwrap(),
        );
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(a.id.len(), 32);
        assert_eq!(a.date, 1_713_381_517_480);
    }

    #[test]
    fn chunks_share_edges_and_cover_the_range() {
        let c = chunks(0, 10 * MIN_CHUNK_MS + 7);
        assert_eq!(c.len(), 10);
        assert_eq!(c[0].0, 0);
        assert_eq!(c.last().unwrap().1, 10 * MIN_CHUNK_MS + 7);
        for w in c.windows(2) {
            assert_eq!(w[0].1, w[1].0);
        }
        assert_eq!(chunks(5, 6), vec![(5, 6)]);
    }
}
