//! Terraform Cloud (HCP Terraform) audit trails: `GET /api/v2/organization/audit-trail`
//! (`../shared/reference/tfc-audit-trails-api.md`).
//!
//! The API pages newest first by page number, with only a `since` bound, and keeps 14
//! days. A run walks every page of `since = after`: the first page alone, then the rest
//! concurrently under the 30 requests/second limit, then any `next_page` past the last one
//! it knew of. Pages shift while they are walked: an event created meanwhile pushes every
//! older one down a place. For pages read in order that only repeats items (deduplicated by
//! id), but two neighbouring pages answered out of order can miss the items that crossed
//! their boundary in between. Each answer carries `total_count`, which only grows while
//! the window is inside retention (the walk stays 10 minutes clear of the 14-day edge), so
//! a boundary is suspect exactly when the later page reports a smaller count than the
//! earlier one; such a boundary is repaired by reading, in order, from the page that now
//! holds the earlier page's last item until the later page's first item is seen.
//!
//! Progress (`covered`: every event newer than it is stored) is saved after the pages it
//! covers are committed and their boundaries verified; a rerun after kill -9 starts at the
//! page the stored count puts that time on, not at page 1.

pub mod client;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use tokio::task::JoinSet;

use self::client::{Page, TfcClient};
use super::SourceError;
use crate::event::{Channel, NewEvent, Source, MAX_ID_LEN};
use crate::store::{Filter, Store};

/// Terraform Cloud keeps audit events this long.
pub const RETENTION_MS: i64 = 14 * 24 * 3600 * 1000;
/// A walk's `since` stays this far inside retention, so no event expires from its window
/// while it runs (an expiry would hide an arrival from `total_count`).
pub const RETENTION_MARGIN_MS: i64 = 10 * 60 * 1000;

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub new: u64,
    pub duplicates: u64,
    pub pages: u64,
    /// Boundaries between pages answered out of order, re-read.
    pub repaired: u64,
    pub resumed: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} new, {} already stored, {} pages, {} page boundaries re-read",
            self.new, self.duplicates, self.pages, self.repaired
        )
    }
}

/// A run's saved progress.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    /// Every event with a later time is stored.
    covered: Option<i64>,
}

/// The fields of an audit-trail event audithook reads.
#[derive(Default, Deserialize)]
struct EventIn<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    auth: Option<AuthIn<'a>>,
    #[serde(borrow, default)]
    resource: Option<ResourceIn<'a>>,
    #[serde(borrow, default)]
    request: Option<RequestIn<'a>>,
}

#[derive(Default, Deserialize)]
struct AuthIn<'a> {
    #[serde(borrow, default)]
    accessor_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    organization_id: Option<Cow<'a, str>>,
}

#[derive(Default, Deserialize)]
struct ResourceIn<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    action: Option<Cow<'a, str>>,
}

#[derive(Default, Deserialize)]
struct RequestIn<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

/// Why an event is refused, naming the field: serde's own message names only a position.
fn explain(raw: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(raw) else {
        return "an event is not JSON".into();
    };
    let Some(o) = v.as_object() else {
        return "an event is not a JSON object".into();
    };
    let id = o
        .get("id")
        .map_or_else(|| "without an id".to_owned(), |i| i.to_string());
    let string_at = |path: &[&str]| -> Option<String> {
        let mut cur = &v;
        for p in path {
            cur = cur.get(p)?;
        }
        (!cur.is_string() && !cur.is_null())
            .then(|| format!("event {id}: `{}` is {cur}, not a string", path.join(".")))
    };
    for parent in ["auth", "resource", "request"] {
        if !matches!(o.get(parent), None | Some(Value::Null | Value::Object(_))) {
            return format!("event {id}: `{parent}` is not an object");
        }
    }
    [
        &["id"][..],
        &["timestamp"],
        &["type"],
        &["auth", "accessor_id"],
        &["auth", "description"],
        &["auth", "type"],
        &["auth", "organization_id"],
        &["resource", "id"],
        &["resource", "type"],
        &["resource", "action"],
        &["request", "id"],
    ]
    .iter()
    .find_map(|p| string_at(p))
    .unwrap_or_else(|| format!("event {id} does not have the documented shape"))
}

/// Normalises one audit-trail event (its JSON text as received) to the store's event.
/// Identity: its `id` (a UUID). Envelope: actor = `auth.description` (else
/// `auth.accessor_id`), action = `resource.action`, resource = `resource.type/resource.id`.
pub fn normalise(raw: &str) -> Result<NewEvent, String> {
    let e: EventIn = serde_json::from_str(raw).map_err(|_| explain(raw))?;
    let s = |c: &Option<Cow<'_, str>>| c.as_deref().unwrap_or("").to_owned();
    let id = match e.id.as_deref() {
        Some(s)
            if !s.trim().is_empty()
                && s.len() <= MAX_ID_LEN
                && !s.chars().any(char::is_control) =>
        {
            s.to_owned()
        }
        Some(_) => {
            return Err("an event's `id` is empty, too long or has control characters".into())
        }
        None => return Err("an event has no `id`".into()),
    };
    let date = match e.timestamp.as_deref() {
        Some(t) => parse_time(t)
            .ok_or_else(|| format!("event {id}: `timestamp` {t:?} is not an RFC 3339 time"))?,
        None => return Err(format!("event {id} has no `timestamp`")),
    };
    let auth = e.auth.unwrap_or_default();
    let res = e.resource.unwrap_or_default();
    let description = s(&auth.description);
    let accessor = s(&auth.accessor_id);
    let actor = if description.is_empty() {
        accessor.clone()
    } else {
        description
    };
    let action = s(&res.action);
    let rtype = s(&res.kind);
    let rid = s(&res.id);
    let resource = match (rtype.is_empty(), rid.is_empty()) {
        (true, true) => String::new(),
        _ => format!("{rtype}/{rid}"),
    };
    let summary = [
        actor.as_str(),
        action.as_str(),
        rtype.as_str(),
        rid.as_str(),
    ]
    .iter()
    .filter(|s| !s.is_empty())
    .copied()
    .collect::<Vec<_>>()
    .join(" ");
    let search = [
        actor.as_str(),
        &accessor,
        &action,
        &resource,
        e.kind.as_deref().unwrap_or(""),
        auth.kind.as_deref().unwrap_or(""),
        auth.organization_id.as_deref().unwrap_or(""),
        e.request
            .as_ref()
            .and_then(|r| r.id.as_deref())
            .unwrap_or(""),
    ]
    .join("\n")
    .to_lowercase();
    let accesses = serde_json::to_string(&[crate::event::Access {
        action: action.clone(),
        resource: resource.clone(),
    }])
    .unwrap_or_else(|_| "[]".into());
    Ok(NewEvent {
        id,
        date,
        kind: rtype,
        name: rid,
        title: summary.clone(),
        member_id: None,
        member_email: None,
        token_id: None,
        accesses,
        resources: String::new(),
        search,
        raw: raw.to_owned(),
        source: Source::Tfc,
        channel: Channel::Rest,
        actor,
        action,
        resource,
        summary,
    })
}

/// An RFC 3339 time as epoch milliseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
        .filter(|ms| (0..=crate::event::MAX_DATE_MS).contains(ms))
}

/// The oldest `since` a walk starting now uses.
pub fn oldest_since(now: i64) -> i64 {
    now - RETENTION_MS + RETENTION_MARGIN_MS
}

/// One page's outcome in a walk.
#[derive(Debug, Clone)]
struct Walked {
    page: u64,
    total_count: u64,
    first_id: Option<String>,
    last: Option<(String, i64)>,
    oldest: Option<i64>,
    next_page: Option<u64>,
}

/// Stores a page's events (all or nothing); returns (new, duplicates).
async fn store_page(store: &Store, page: &Page) -> Result<(u64, u64), SourceError> {
    super::store_events(store, &page.events).await
}

fn walked(page_no: u64, page: &Page) -> Walked {
    Walked {
        page: page_no,
        total_count: page.total_count,
        first_id: page.events.first().map(|e| e.id.clone()),
        last: page.events.last().map(|e| (e.id.clone(), e.date)),
        oldest: page.events.iter().map(|e| e.date).min(),
        next_page: page.next_page,
    }
}

/// Runs (or resumes) the walk of every event after `after` (epoch ms; clamped to what
/// Terraform Cloud keeps), storing each page as it arrives. An unfinished run is resumed
/// first; a new run is started unless the resumed one already covered `after`.
pub async fn run(
    store: &Store,
    client: &TfcClient,
    after: i64,
    concurrency: usize,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<Summary, SourceError> {
    let now = crate::now_ms();
    let floor = oldest_since(now);
    let after = if after < floor {
        if after < floor - 60_000 {
            tracing::info!(
            source = "tfc",
                "Terraform Cloud keeps 14 days: reading from 14 days ago (less 10 minutes, which expire during the walk)"
            );
        }
        floor
    } else {
        after
    };
    let mut summary = Summary::default();
    let _hold = store.hold_indexer();
    if let Some(open) = store.source_run_open(Source::Tfc).await? {
        let saved: Progress = serde_json::from_str(&open.progress).unwrap_or_default();
        tracing::info!(source = "tfc", run = open.id, covered = ?saved.covered, "resuming an unfinished Terraform Cloud run");
        summary.resumed = true;
        let since = open.after.max(floor);
        walk(
            store,
            client,
            open.id,
            since,
            saved.covered,
            concurrency,
            progress,
            &mut summary,
        )
        .await?;
        if open.after <= after {
            return Ok(summary);
        }
    }
    let id = store
        .source_run_create(
            Source::Tfc,
            after,
            now,
            &super::to_json(&Progress::default()),
        )
        .await?;
    walk(
        store,
        client,
        id,
        after,
        None,
        concurrency,
        progress,
        &mut summary,
    )
    .await?;
    Ok(summary)
}

/// Walks run `run` (events after `since`), resuming after `covered` when given, and
/// finishes it.
#[allow(clippy::too_many_arguments)]
async fn walk(
    store: &Store,
    client: &TfcClient,
    run: i64,
    since: i64,
    covered: Option<i64>,
    concurrency: usize,
    bar: Option<&indicatif::ProgressBar>,
    summary: &mut Summary,
) -> Result<(), SourceError> {
    let asked = u64::from(client.page_size);
    // Where to start: every event newer than `covered` is stored, so at least that many
    // come first in the listing.
    let stored_newer = match covered {
        Some(c) => {
            let filter = Filter {
                sources: vec![Source::Tfc.as_str().to_owned()],
                after: Some(c),
                ..Filter::default()
            };
            Some(store.count(&filter).await?)
        }
        None => None,
    };
    let mut start = stored_newer.map_or(1, |n| n / asked + 1);
    let mut first = client.page(since, start).await?;
    summary.pages += 1;
    let size = first.page_size.unwrap_or(asked).max(1);
    if let Some(n) = stored_newer.filter(|_| size != asked) {
        // The server pages by fewer than asked: place the start by its size.
        start = n / size + 1;
        first = client.page(since, start).await?;
        summary.pages += 1;
    }
    // The page starts at offset (start - 1) * size; while that is below the stored count,
    // its first item must be newer than `covered` (events created since only push items
    // down). If it is not, the store holds events newer than `covered` that the API no
    // longer lists: count from the top instead. (At an offset equal to the count, the
    // first item is rightly not newer.)
    if let (Some(c), Some(n)) = (covered, stored_newer) {
        let offset = (start - 1) * size;
        if start > 1 && offset < n && first.events.first().is_some_and(|e| e.date <= c) {
            start = 1;
            first = client.page(since, 1).await?;
            summary.pages += 1;
        }
    }
    if start == 1 && first.total_count == 0 && crate::now_ms() - since > 24 * 3600 * 1000 {
        tracing::warn!(
            source = "tfc",
            "Terraform Cloud answered 200 with no audit events for the whole window: TFC_API_TOKEN may be a user or team token, which sees an empty audit trail; use the organization token or the audit-trail token"
        );
    }
    let (new, dup) = store_page(store, &first).await?;
    summary.new += new;
    summary.duplicates += dup;
    let total_pages = first.total_pages;
    if let Some(bar) = bar {
        bar.set_length(total_pages.saturating_sub(start - 1).max(1));
        bar.inc(1);
    }
    let mut done: BTreeMap<u64, Walked> = BTreeMap::new();
    done.insert(start, walked(start, &first));
    let mut verified = start;
    let mut covered = covered;
    save(store, run, &done, verified, &mut covered, false).await?;
    // The rest of the pages known now, concurrently (the client paces them).
    let mut tasks: JoinSet<Result<(u64, Walked, u64, u64), SourceError>> = JoinSet::new();
    let mut next_to_send = start + 1;
    let last_known = total_pages;
    let in_flight = concurrency.max(1);
    let spawn = |tasks: &mut JoinSet<_>, n: u64| {
        let client = client.clone();
        let store = store.clone();
        tasks.spawn(async move {
            let page = client.page(since, n).await?;
            let (new, dup) = store_page(&store, &page).await?;
            Ok((n, walked(n, &page), new, dup))
        });
    };
    while next_to_send <= last_known && tasks.len() < in_flight {
        spawn(&mut tasks, next_to_send);
        next_to_send += 1;
    }
    while let Some(joined) = tasks.join_next().await {
        let (n, w, new, dup) = joined
            .map_err(|e| SourceError::other(Source::Tfc, format!("page task failed: {e}")))??;
        summary.pages += 1;
        summary.new += new;
        summary.duplicates += dup;
        if let Some(bar) = bar {
            bar.inc(1);
        }
        done.insert(n, w);
        if next_to_send <= last_known {
            spawn(&mut tasks, next_to_send);
            next_to_send += 1;
        }
        // Verify boundaries in order as far as pages are in.
        while let Some(next) = done.get(&(verified + 1)).cloned() {
            let prev = done[&verified].clone();
            if next.total_count < prev.total_count {
                repair(store, client, since, size, &prev, &next, summary).await?;
            }
            verified += 1;
        }
        save(store, run, &done, verified, &mut covered, false).await?;
    }
    // Pages that appeared past the last one known (events created during the walk push
    // the oldest onto new pages): read them in order.
    let mut tail = done[&verified].next_page.filter(|n| *n > verified);
    while let Some(n) = tail {
        let page = client.page(since, n).await?;
        let (new, dup) = store_page(store, &page).await?;
        summary.pages += 1;
        summary.new += new;
        summary.duplicates += dup;
        done.insert(n, walked(n, &page));
        verified = n;
        save(store, run, &done, verified, &mut covered, false).await?;
        tail = page.next_page.filter(|m| *m > n);
    }
    save(store, run, &done, verified, &mut covered, true).await?;
    Ok(())
}

/// Saves the run's progress: the oldest time on the verified pages.
async fn save(
    store: &Store,
    run: i64,
    done: &BTreeMap<u64, Walked>,
    verified: u64,
    covered: &mut Option<i64>,
    finished: bool,
) -> Result<(), SourceError> {
    if let Some(oldest) = done.range(..=verified).filter_map(|(_, w)| w.oldest).min() {
        *covered = Some(covered.map_or(oldest, |c| c.min(oldest)));
    }
    store
        .source_run_save(
            run,
            &super::to_json(&Progress { covered: *covered }),
            finished,
        )
        .await?;
    Ok(())
}

/// Re-reads the boundary between `prev` and `next` (answered out of order while events
/// arrived) in order: from the page that now holds `prev`'s last item until `next`'s
/// first item is seen, so every item between them is stored.
async fn repair(
    store: &Store,
    client: &TfcClient,
    since: i64,
    size: u64,
    prev: &Walked,
    next: &Walked,
    summary: &mut Summary,
) -> Result<(), SourceError> {
    let (Some((last_id, last_date)), Some(first_id)) = (&prev.last, &next.first_id) else {
        return Ok(());
    };
    summary.repaired += 1;
    tracing::debug!(
        source = "tfc",
        page = prev.page,
        "re-reading a page boundary that shifted during the walk"
    );
    // Where `prev`'s last item is now: its offset then, moved down by the events created
    // since (the growth of the count).
    let probe = client.page(since, 1).await?;
    summary.pages += 1;
    let grown = probe.total_count.saturating_sub(prev.total_count);
    let mut page = (prev.page * size - 1 + grown) / size + 1;
    let stored = |p: &Page, summary: &mut Summary| {
        summary.pages += 1;
        let p = p.clone();
        async move { store_page(store, &p).await }
    };
    // Back until the page starts before `prev`'s last item (or holds it) ...
    let mut current;
    let mut steps = 0;
    loop {
        current = client.page(since, page).await?;
        let (new, dup) = stored(&current, summary).await?;
        summary.new += new;
        summary.duplicates += dup;
        let starts_before = current.events.first().is_some_and(|e| e.date > *last_date)
            || current.events.iter().any(|e| &e.id == last_id);
        steps += 1;
        if starts_before || page == 1 || steps > 64 {
            break;
        }
        page -= 1;
    }
    // ... then forward, in order, until `next`'s first item.
    loop {
        if current.events.iter().any(|e| &e.id == first_id) || current.next_page.is_none() {
            return Ok(());
        }
        page += 1;
        current = client.page(since, page).await?;
        let (new, dup) = stored(&current, summary).await?;
        summary.new += new;
        summary.duplicates += dup;
    }
}

/// Warns (at most daily) when polls see no events for a day: a token that answers 200 with
/// no data (a user or team token) looks exactly like a quiet organisation.
static LAST_QUIET_WARNING: AtomicI64 = AtomicI64::new(0);

/// One poll: finishes an unfinished run, then reads from the last position (less
/// `overlap`) to now.
pub async fn poll(
    store: &Store,
    client: &TfcClient,
    overlap: std::time::Duration,
) -> Result<Summary, SourceError> {
    let now = crate::now_ms();
    let after = match store.source_position(Source::Tfc).await? {
        Some(p) => p - overlap.as_millis() as i64,
        None => oldest_since(now),
    };
    let summary = run(store, client, after, 4, None).await?;
    let newest = store.newest_date(Source::Tfc).await?;
    let day = 24 * 3600 * 1000;
    if summary.new == 0
        && newest.is_none_or(|n| now - n > day)
        && now - LAST_QUIET_WARNING.load(Ordering::Relaxed) > day
    {
        LAST_QUIET_WARNING.store(now, Ordering::Relaxed);
        tracing::warn!(
            source = "tfc",
            "no Terraform Cloud audit events for a day: if the organisation was not idle, TFC_API_TOKEN may be a user or team token (they answer 200 with no data); use the organization token or the audit-trail token"
        );
    }
    Ok(summary)
}

/// Polls Terraform Cloud every `interval` until `stop` (one instance of several: the
/// `poll:tfc` lease).
pub async fn poll_loop(
    store: Store,
    client: TfcClient,
    interval: std::time::Duration,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    stop: tokio_util::sync::CancellationToken,
) {
    super::run_poller(
        &store,
        Source::Tfc,
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
