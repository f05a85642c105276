//! Backfill and catch-up from LaunchDarkly's REST API (`GET /api/v2/auditlog`).
//!
//! The requested range is one time window at first. Its first page gives the density of
//! recent history, and the range is cut at once into one window per worker (see
//! `Job::fan_out`); after that, workers that find nothing to do split the window expected
//! to hold the most entries still to fetch at the midpoint of what it has left, so the range
//! is fetched concurrently whatever its shape, without a first pass to measure it. Each
//! window follows LaunchDarkly's `_links.next` (opaque) while it is present; where the API
//! gives none, it pages by `before`, re-reading the boundary millisecond so entries that share
//! it are not skipped (the store absorbs the repeats). A window requests its next page while
//! the current one is stored. Its progress is recorded only after the page's entries are
//! committed, and saved by one saver task: a killed job resumes where it stopped.

pub mod catchup;
pub mod client;
pub mod policy;

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use self::client::{LdClient, LdError, Page, PAGE_LIMIT};
use self::policy::Policy;
use crate::event::{normalise, Channel, NewEvent};
use crate::now_ms;
use crate::store::{BackfillWindow, Inserted, Store, StoreError};

/// Smallest window span (ms) worth splitting.
const MIN_SPLIT_MS: i64 = 2;
/// Fewest entries expected in a window's remainder for a split to pay (each split costs
/// about one page of overlap).
const MIN_SPLIT_ENTRIES: f64 = 3.0 * PAGE_LIMIT as f64;
/// Pages' worth of time (at the density of the job's first page) each window of the opening
/// fan-out spans; the last takes everything older. With 16 workers, 6.5 pages each puts the
/// first ~2,000 entries in equal shares from the second round of requests (half a page
/// short of 7, so an even history costs 7 requests a window, not 8); a longer
/// history is shared out by splits as workers finish, and an empty old range costs one
/// request.
const FAN_OUT_WINDOW_PAGES: f64 = 6.5;

/// How often a saved job checkpoints the store's write-ahead log (see [`save_loop`]).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(25);

/// What to fetch and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only entries after this time (epoch ms, exclusive); default: everything.
    pub after: Option<i64>,
    /// Only entries before this time (epoch ms, exclusive); default: now.
    pub before: Option<i64>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Keep only entries this policy allows.
    pub policy: Option<Policy>,
    /// Save progress in the store (resumable jobs); catch-up does not.
    pub persist: bool,
    /// Draw a progress bar (on a terminal); otherwise log a line per window.
    pub progress_bar: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            after: None,
            before: None,
            concurrency: 16,
            policy: None,
            persist: true,
            progress_bar: false,
        }
    }
}

/// Why a backfill stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Ld(#[from] LdError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub new: u64,
    pub duplicates: u64,
    pub filtered: u64,
    pub invalid: u64,
    pub requests: u64,
    pub pages: u64,
    pub rate_limited: u64,
    pub retries: u64,
    pub rate_limit_waits: u64,
    pub windows: u64,
    /// Milliseconds in which more entries shared one millisecond than a page holds and the
    /// API gave no next link: entries there may be missing.
    pub truncated_bursts: u64,
    pub elapsed_ms: u64,
    pub resumed: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} new, {} duplicates, {} filtered by policy, {} invalid; {} requests ({} pages, {} answered 429, \
             {} retries, {} rate-limit waits), {} windows, {:.1} s",
            self.new,
            self.duplicates,
            self.filtered,
            self.invalid,
            self.requests,
            self.pages,
            self.rate_limited,
            self.retries,
            self.rate_limit_waits,
            self.windows,
            self.elapsed_ms as f64 / 1000.0
        )?;
        if self.truncated_bursts > 0 {
            write!(
                f,
                "; {} bursts larger than a page without a next link (may be incomplete)",
                self.truncated_bursts
            )?;
        }
        Ok(())
    }
}

/// A window being fetched: others may lower its share (`after`) by splitting it.
struct Active {
    idx: i64,
    before: i64,
    after: AtomicI64,
    oldest: AtomicI64,
    /// Entries per ms over the pages it has fetched (`f64` bits; 0 before the first page).
    /// Over all its pages, not the last: one page can hold a burst in one millisecond,
    /// and splitting by that page's density would cut the rest of the window into windows
    /// that hold nothing.
    density: AtomicU64,
}

#[derive(Default)]
struct Counters {
    new: AtomicU64,
    duplicates: AtomicU64,
    filtered: AtomicU64,
    invalid: AtomicU64,
    windows: AtomicU64,
    truncated: AtomicU64,
    covered_ms: AtomicU64,
}

struct Job {
    store: Store,
    client: LdClient,
    opts: Options,
    spec: Option<String>,
    job_id: Option<i64>,
    queue: Mutex<VecDeque<BackfillWindow>>,
    active: Mutex<Vec<Arc<Active>>>,
    next_idx: AtomicI64,
    /// Windows' progress not yet saved, the latest state per window. A saver task writes
    /// what has gathered in one transaction, so pages never queue behind one another's
    /// saves. A split records the window it makes before it raises the running window's
    /// lower bound, so the raised bound (or the window done) is never saved before the
    /// window that took over the rest of its range: a kill at any point loses nothing.
    unsaved: Mutex<std::collections::BTreeMap<i64, BackfillWindow>>,
    saver: tokio::sync::Notify,
    /// The answer to a request made before the job started, for the window that asks it.
    opening: Mutex<Option<(String, Result<Page, LdError>)>>,
    /// Set once every worker has stopped: the saver saves what is left and stops.
    workers_done: AtomicBool,
    /// Set once a page has been fetched: until then nothing is split, so a bad token or
    /// request stops the run after one request.
    first_page_ok: AtomicBool,
    /// Windows taken from the queue and not finished.
    pending: std::sync::atomic::AtomicUsize,
    counters: Counters,
    failed: Mutex<Option<BackfillError>>,
    stop: AtomicBool,
    wake: tokio::sync::Notify,
    bar: Option<ProgressBar>,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The first window of a new job: the whole requested range (`before` defaults to now).
fn whole_range(opts: &Options, now: i64) -> BackfillWindow {
    BackfillWindow {
        idx: 0,
        after: opts.after.unwrap_or(0),
        before: opts.before.unwrap_or(now + 1),
        next_href: None,
        done: false,
    }
}

/// A new job's first request, made before the store is open (see [`first_request`]).
pub struct Opening {
    now: i64,
    url: String,
    page: Result<Page, LdError>,
}

/// Makes the first request a new job would make, so that it can run while the store opens
/// and migrates; [`run_opened`] uses its answer if the job is new (a resumed job does not
/// need it: one request spent).
pub async fn first_request(client: &LdClient, opts: &Options) -> Opening {
    let now = now_ms();
    let w = whole_range(opts, now);
    let spec = opts.policy.as_ref().and_then(|p| p.narrowing_spec());
    let url = client.first_page_url(Some(w.after), Some(w.before), spec, PAGE_LIMIT);
    let page = client.get_page(&url).await;
    Opening { now, url, page }
}

/// Runs a backfill of `opts.after..opts.before` into `store`.
pub async fn run(
    store: &Store,
    client: &LdClient,
    opts: Options,
) -> Result<Summary, BackfillError> {
    run_opened(store, client, opts, None).await
}

/// [`run`], with the answer to the job's first request if it was made already.
pub async fn run_opened(
    store: &Store,
    client: &LdClient,
    opts: Options,
    opening: Option<Opening>,
) -> Result<Summary, BackfillError> {
    let _hold = store.hold_indexer();
    let spec = opts
        .policy
        .as_ref()
        .and_then(|p| p.narrowing_spec())
        .map(str::to_owned);
    let now = opening.as_ref().map_or_else(now_ms, |o| o.now);
    let mut resumed = false;
    let (job_id, windows) = if opts.persist {
        match store
            .backfill_open(opts.after, opts.before, spec.as_deref())
            .await?
        {
            Some(job) => {
                resumed = true;
                let left: Vec<BackfillWindow> =
                    job.windows.into_iter().filter(|w| !w.done).collect();
                tracing::info!(
                    job = job.id,
                    windows_left = left.len(),
                    "resuming backfill job"
                );
                (Some(job.id), left)
            }
            None => {
                let id = store
                    .backfill_create(opts.after, opts.before, spec.as_deref())
                    .await?;
                let w = whole_range(&opts, now);
                store.backfill_save_windows(id, vec![w.clone()]).await?;
                (Some(id), vec![w])
            }
        }
    } else {
        (None, vec![whole_range(&opts, now)])
    };
    let total_ms: u64 = windows
        .iter()
        .map(|w| (w.before - w.after).max(0) as u64)
        .sum();
    let bar = (opts.progress_bar && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(total_ms.max(1));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let next_idx = windows.iter().map(|w| w.idx).max().unwrap_or(0) + 1;
    let concurrency = opts.concurrency.max(1);
    let job = Arc::new(Job {
        store: store.clone(),
        client: client.clone(),
        opts,
        spec,
        job_id,
        queue: Mutex::new(windows.into()),
        active: Mutex::new(Vec::new()),
        next_idx: AtomicI64::new(next_idx),
        unsaved: Mutex::new(Default::default()),
        opening: Mutex::new(opening.map(|o| (o.url, o.page))),
        saver: tokio::sync::Notify::new(),
        workers_done: AtomicBool::new(false),
        pending: std::sync::atomic::AtomicUsize::new(0),
        first_page_ok: AtomicBool::new(false),
        counters: Counters::default(),
        failed: Mutex::new(None),
        stop: AtomicBool::new(false),
        wake: tokio::sync::Notify::new(),
        bar,
        started: Instant::now(),
    });
    // A JoinSet aborts its tasks when dropped: a caller that drops this future (catch-up
    // losing its lease, a stop) stops every window at once.
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        workers.spawn(worker(job.clone()));
    }
    let mut saver = tokio::task::JoinSet::new();
    saver.spawn(save_loop(job.clone()));
    while workers.join_next().await.is_some() {}
    job.workers_done.store(true, Ordering::SeqCst);
    job.saver.notify_one();
    while saver.join_next().await.is_some() {}
    // What the last pages recorded (also after a failure: their entries are committed).
    let saved = job.save_recorded().await;
    if let Some(bar) = &job.bar {
        bar.finish_and_clear();
    }
    if let Some(e) = lock(&job.failed).take() {
        return Err(e);
    }
    saved?;
    if let Some(id) = job.job_id {
        job.store.backfill_finish(id).await?;
    }
    let mut summary = job.summary();
    summary.resumed = resumed;
    Ok(summary)
}

impl Job {
    fn summary(&self) -> Summary {
        let c = &self.counters;
        let s = &self.client.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Summary {
            new: get(&c.new),
            duplicates: get(&c.duplicates),
            filtered: get(&c.filtered),
            invalid: get(&c.invalid),
            requests: get(&s.requests),
            pages: get(&s.pages),
            rate_limited: get(&s.rate_limited),
            retries: get(&s.retries),
            rate_limit_waits: get(&s.rate_limit_waits),
            windows: get(&c.windows),
            truncated_bursts: get(&c.truncated),
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            resumed: false,
        }
    }

    fn fail(&self, e: BackfillError) {
        let mut f = lock(&self.failed);
        if f.is_none() {
            *f = Some(e);
        }
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    /// Splits the window with the most left to fetch; the older half goes to the queue.
    fn split_one(&self) -> bool {
        if !self.first_page_ok.load(Ordering::SeqCst) {
            return false;
        }
        if let Some(limit) = self.client.sustainable_parallelism() {
            if lock(&self.active).len() as f64 >= limit {
                return false;
            }
        }
        // Split the window expected to hold the most entries still to fetch, judged by the
        // entries per ms over the pages it has read, and only where enough is left to pay for the
        // split. A window whose first page has not come back is not split: it may well be
        // empty (old history often is), and its answer is one round trip away.
        {
            let active = lock(&self.active);
            let best = active
                .iter()
                .filter_map(|a| {
                    let span = a.oldest.load(Ordering::SeqCst) - a.after.load(Ordering::SeqCst);
                    let density = f64::from_bits(a.density.load(Ordering::Relaxed));
                    let expected = span as f64 * density;
                    (span >= MIN_SPLIT_MS && expected >= MIN_SPLIT_ENTRIES).then_some((expected, a))
                })
                .max_by(|x, y| x.0.total_cmp(&y.0));
            let Some((_, a)) = best else { return false };
            let after = a.after.load(Ordering::SeqCst);
            let mid = after + (a.oldest.load(Ordering::SeqCst) - after) / 2;
            let idx = self.next_idx.fetch_add(1, Ordering::SeqCst);
            let new_window = BackfillWindow {
                idx,
                after,
                before: mid,
                next_href: None,
                done: false,
            };
            // Recorded first; the running window keeps dates >= mid from now on, and its own
            // progress records its new lower bound with its next page.
            self.record(&new_window);
            a.after.store(mid - 1, Ordering::SeqCst);
            lock(&self.queue).push_back(new_window);
        }
        true
    }

    /// After the job's very first page (entries `o..=n`, more to come), cuts the rest of
    /// that window into one window per worker at once instead of waiting for splits: the
    /// running window and each new one span [`FAN_OUT_WINDOW_PAGES`] pages' worth of time
    /// at the first page's density, and the last new window takes everything older. A small
    /// organisation's history is then fetched by every worker from the second round of
    /// requests.
    fn fan_out(&self, active: &Active, o: i64, n: i64) {
        let workers = self.opts.concurrency.max(1);
        if workers < 2 {
            return;
        }
        // Time one page covers: the first page's span, per interval between its entries.
        let page_span = (n - o).max(1) as f64 * PAGE_LIMIT as f64 / (PAGE_LIMIT - 1) as f64;
        let window_span = page_span * FAN_OUT_WINDOW_PAGES;
        // Under the lock splits take: nothing splits this window meanwhile.
        let _active = lock(&self.active);
        let floor = active.after.load(Ordering::SeqCst);
        let first_upper = (n as f64 - window_span) as i64;
        if first_upper <= floor + MIN_SPLIT_MS {
            return;
        }
        let mut upper = first_upper;
        let mut made = Vec::new();
        for i in 0..workers - 1 {
            let last = i == workers - 2;
            let lower = if last {
                floor
            } else {
                (upper as f64 - window_span).max(floor as f64) as i64
            };
            made.push(BackfillWindow {
                idx: self.next_idx.fetch_add(1, Ordering::SeqCst),
                after: lower,
                before: upper,
                next_href: None,
                done: false,
            });
            if lower <= floor {
                break;
            }
            upper = lower + 1;
        }
        for w in &made {
            self.record(w);
        }
        // Then the running window ends at `first_upper` (dates >= it stay with it).
        active.after.store(first_upper - 1, Ordering::SeqCst);
        lock(&self.queue).extend(made);
        self.wake.notify_waiters();
    }

    /// Records a window's progress for the saver (nothing when the job is not saved).
    fn record(&self, w: &BackfillWindow) {
        if self.job_id.is_some() {
            lock(&self.unsaved).insert(w.idx, w.clone());
            self.saver.notify_one();
        }
    }

    /// Saves what has been recorded, in one transaction.
    async fn save_recorded(&self) -> Result<(), BackfillError> {
        let Some(job) = self.job_id else {
            return Ok(());
        };
        let windows: Vec<BackfillWindow> = std::mem::take(&mut *lock(&self.unsaved))
            .into_values()
            .collect();
        if !windows.is_empty() {
            self.store.backfill_save_windows(job, windows).await?;
        }
        Ok(())
    }

    fn progress(&self) {
        if let Some(bar) = &self.bar {
            let s = self.summary();
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            bar.set_position(self.counters.covered_ms.load(Ordering::Relaxed));
            bar.set_message(format!(
                "{} stored ({} new), {} pages, {:.1} req/s, {} rate-limit waits",
                s.new + s.duplicates,
                s.new,
                s.pages,
                s.requests as f64 / secs,
                s.rate_limit_waits + s.rate_limited
            ));
        }
    }

    /// Normalises one page: the events the policy keeps, and the oldest and newest dates in
    /// the page (of every valid entry, kept or not).
    fn parse_page(&self, items: &[String]) -> (Vec<NewEvent>, Option<(i64, i64)>) {
        let mut events = Vec::with_capacity(items.len());
        let mut range: Option<(i64, i64)> = None;
        for item in items {
            match normalise(item.as_bytes(), Channel::Rest) {
                Ok(ev) => {
                    range = Some(range.map_or((ev.date, ev.date), |(o, n)| {
                        (o.min(ev.date), n.max(ev.date))
                    }));
                    if let Some(policy) = &self.opts.policy {
                        let value: serde_json::Value =
                            serde_json::from_str(item).unwrap_or_default();
                        if !policy.keeps(&value) {
                            self.counters.filtered.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    events.push(ev);
                }
                Err(e) => {
                    self.counters.invalid.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "skipping an entry LaunchDarkly sent");
                }
            }
        }
        (events, range)
    }

    /// Stores one page's events, then records the window's progress (never before: a
    /// killed job resumes at a page whose entries are all committed).
    async fn store_page(
        &self,
        events: Vec<NewEvent>,
        w: &BackfillWindow,
    ) -> Result<(), BackfillError> {
        if !events.is_empty() {
            for outcome in self.store.insert_many(events).await? {
                match outcome {
                    Inserted::Stored => self.counters.new.fetch_add(1, Ordering::Relaxed),
                    Inserted::Duplicate => self.counters.duplicates.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
        self.record(w);
        self.progress();
        Ok(())
    }

    /// Fetches one window to its end (or until its share is taken by a split). The next
    /// page is requested while the current one is being stored, so a window costs one
    /// round trip per page, not a round trip plus a commit.
    async fn run_window(&self, mut w: BackfillWindow) -> Result<(), BackfillError> {
        let active = Arc::new(Active {
            idx: w.idx,
            before: w.before,
            after: AtomicI64::new(w.after),
            oldest: AtomicI64::new(w.before),
            density: AtomicU64::new(0),
        });
        lock(&self.active).push(active.clone());
        let mut url = match &w.next_href {
            Some(href) => self.client.resolve(href)?,
            None => self.client.first_page_url(
                Some(w.after),
                Some(w.before),
                self.spec.as_deref(),
                PAGE_LIMIT,
            ),
        };
        let opened = {
            let mut opening = lock(&self.opening);
            match opening.take() {
                Some((u, page)) if u == url => Some(page),
                other => {
                    *opening = other;
                    None
                }
            }
        };
        let mut fetched = if self.stop.load(Ordering::SeqCst) {
            None
        } else if let Some(page) = opened {
            Some(page)
        } else {
            Some(self.client.get_page(&url).await)
        };
        // Entries fetched, and the newest date among them, for the window's density.
        let (mut seen, mut newest) = (0usize, i64::MIN);
        let result = loop {
            let page = match fetched.take() {
                None => break Ok(()),
                Some(page) => page?,
            };
            let opening = !self.first_page_ok.swap(true, Ordering::SeqCst);
            let (events, range) = self.parse_page(&page.items);
            let oldest = range.map(|(o, _)| o);
            if let Some((o, n)) = range {
                seen += page.items.len();
                newest = newest.max(n);
                let d = seen.saturating_sub(1).max(1) as f64 / (newest - o).max(1) as f64;
                active.density.store(d.to_bits(), Ordering::Relaxed);
            }
            if opening && (page.next.is_some() || page.items.len() >= PAGE_LIMIT as usize) {
                if let Some((o, n)) = range {
                    self.fan_out(&active, o, n);
                }
            }
            let bound = active.after.load(Ordering::SeqCst);
            if let Some(o) = oldest {
                let prev = active.oldest.swap(o.max(bound), Ordering::SeqCst);
                let gained = (prev - o.max(bound)).max(0) as u64;
                self.counters
                    .covered_ms
                    .fetch_add(gained, Ordering::Relaxed);
            }
            // Where to go next: the API's link, or our own `before` paging without one.
            let next = match (&page.next, oldest) {
                (_, None) => None,
                (_, Some(o)) if o <= bound => None,
                (Some(href), _) => Some(self.client.resolve(href)?),
                (None, _) if page.items.len() < PAGE_LIMIT as usize => None,
                (None, Some(o)) => {
                    // Re-read the boundary millisecond unless the whole page is that
                    // millisecond (more entries share it than a page holds).
                    let all_one_ms = range.is_some_and(|(o, n)| o == n);
                    let before = if all_one_ms {
                        self.counters.truncated.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(ms = o, "more entries share one millisecond than a page holds and the API gives no next link; some may be missing");
                        o
                    } else {
                        o + 1
                    };
                    Some(self.client.first_page_url(
                        Some(bound),
                        Some(before),
                        self.spec.as_deref(),
                        PAGE_LIMIT,
                    ))
                }
            };
            // A link back to this very page would loop: the window ends here.
            let next = next.filter(|n| *n != url);
            w.after = bound;
            w.next_href = next.clone();
            w.done = next.is_none();
            let ahead = async {
                match &next {
                    Some(n) if !self.stop.load(Ordering::SeqCst) => {
                        Some(self.client.get_page(n).await)
                    }
                    _ => None,
                }
            };
            let (stored, ahead) = tokio::join!(self.store_page(events, &w), ahead);
            stored?;
            fetched = ahead;
            if let Some(n) = next {
                url = n;
            }
        };
        lock(&self.active).retain(|a| !Arc::ptr_eq(a, &active));
        let left = (active.oldest.load(Ordering::SeqCst) - active.after.load(Ordering::SeqCst))
            .max(0) as u64;
        self.counters.covered_ms.fetch_add(left, Ordering::Relaxed);
        if result.is_ok() {
            self.counters.windows.fetch_add(1, Ordering::Relaxed);
            if self.bar.is_none() && self.opts.persist {
                let s = self.summary();
                tracing::info!(
                    window = active.idx,
                    after = active.after.load(Ordering::SeqCst),
                    before = active.before,
                    new = s.new,
                    duplicates = s.duplicates,
                    requests = s.requests,
                    "backfill window done"
                );
            }
        }
        self.wake.notify_waiters();
        result
    }
}

/// Saves recorded progress as it gathers: one transaction at a time, each taking every
/// window recorded since the last.
async fn save_loop(job: Arc<Job>) {
    let mut checkpointed = Instant::now();
    loop {
        if let Err(e) = job.save_recorded().await {
            return job.fail(e);
        }
        // Off the pages' path, the log is copied into the database as it grows, so the
        // store's close at the end has little left to copy.
        if job.job_id.is_some() && checkpointed.elapsed() >= CHECKPOINT_EVERY {
            checkpointed = Instant::now();
            if let Err(e) = job.store.checkpoint().await {
                return job.fail(e.into());
            }
        }
        if job.workers_done.load(Ordering::SeqCst) {
            return;
        }
        job.saver.notified().await;
    }
}

async fn worker(job: Arc<Job>) {
    loop {
        if job.stop.load(Ordering::SeqCst) {
            return;
        }
        let next = {
            let mut q = lock(&job.queue);
            let w = q.pop_front();
            if w.is_some() {
                job.pending.fetch_add(1, Ordering::SeqCst);
            }
            w
        };
        let window = match next {
            Some(w) => w,
            None => {
                if job.split_one() {
                    continue;
                }
                if job.pending.load(Ordering::SeqCst) == 0 && lock(&job.queue).is_empty() {
                    job.wake.notify_waiters();
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), job.wake.notified()).await;
                continue;
            }
        };
        let result = job.run_window(window).await;
        job.pending.fetch_sub(1, Ordering::SeqCst);
        job.wake.notify_waiters();
        if let Err(e) = result {
            return job.fail(e);
        }
    }
}

/// Parses a time given as epoch milliseconds or RFC 3339.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.trim().parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|d| d.timestamp_millis())
        .map_err(|_| format!("{s:?} is neither epoch milliseconds nor an RFC 3339 time"))
}

/// Parses a duration such as `10m`, `1h`, `30s`, `500ms` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10m, 1h, 30s"))?;
    let ms = match unit.trim() {
        "" | "s" => n * 1000,
        "ms" => n,
        "m" | "min" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return Err(format!("{s:?} has an unknown unit; use ms, s, m, h or d")),
    };
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations() {
        assert_eq!(parse_time("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert!(parse_time("yesterday").is_err());
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("5 parsecs").is_err());
    }
}
