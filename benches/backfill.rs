//! Backfill benchmark, against the fake LaunchDarkly API, in one run:
//! (g) a grid of organisation sizes and API latencies: the whole `audithook backfill`
//!     command (process start, store creation, the fetch) against the seed script's
//!     sequential page-after-page method on the same data, under a route budget of 1,000
//!     requests per second (rate-limit headers as LaunchDarkly sends them), counting 429s.
//!     Each cell runs the command `BENCH_REPEAT` times (default 3; median and range) and the
//!     sequential method once. By default a subset that runs in a few minutes;
//!     `BENCH_GRID=full` runs every size (2,000, 6,000, 20,000, 100,000 entries) at every
//!     latency (20, 50, 100, 200 ms); `BENCH_CELLS=N:MS,...` chosen cells.
//! (b) 6,000 entries under a route budget of 50 requests per 10 s (300 pages: a floor of
//!     about 60 s), counting 429s.
//! (a) and (c), with `BENCH_BIG=1`: 62,000 entries at 100 ms, in process, against the
//!     sequential method (~6 min).
//!
//! Run: `cargo build --release && cargo bench --bench backfill` (the grid runs the release
//! binary `target/release/audithook`).

#[path = "../tests/support/fake_ld.rs"]
mod fake_ld;

use std::sync::Arc;
use std::time::{Duration, Instant};

use audithook::event::{normalise, Channel};
use audithook::metrics::Metrics;
use audithook::sources::launchdarkly::{self, client::LdClient, Options};
use audithook::store::Store;
use fake_ld::{entries, FakeConfig, FakeLd};
use secrecy::SecretString;
use std::sync::atomic::Ordering;

const START: i64 = 1_700_000_000_000;

async fn store_in(dir: &tempfile::TempDir, name: &str) -> (Store, std::path::PathBuf) {
    let db = dir.path().join(name);
    let store = Store::open(
        &format!("sqlite://{}", db.display()),
        Arc::new(Metrics::new()),
    )
    .await
    .expect("store");
    (store, db)
}

fn count(db: &std::path::Path) -> i64 {
    rusqlite::Connection::open(db)
        .and_then(|c| c.query_row("SELECT count(*) FROM events", [], |r| r.get(0)))
        .unwrap_or(-1)
}

/// The seed script's method: one request at a time, `before` = date of the last item.
async fn sequential(fake: &FakeLd, store: &Store) -> u64 {
    let http = reqwest::Client::new();
    let mut before = i64::MAX;
    let mut requests = 0;
    loop {
        let mut url = format!("{}/api/v2/auditlog?limit=20&after=0", fake.base);
        if before != i64::MAX {
            url.push_str(&format!("&before={before}"));
        }
        let body = http
            .get(&url)
            .header("authorization", fake.token())
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        requests += 1;
        let page: serde_json::Value = serde_json::from_slice(&body).expect("page");
        let items = page["items"].as_array().expect("items");
        if items.is_empty() {
            return requests;
        }
        let events: Vec<_> = items
            .iter()
            .filter_map(|i| normalise(i.to_string().as_bytes(), Channel::Rest).ok())
            .collect();
        before = events.iter().map(|e| e.date).min().unwrap_or(0);
        store.insert_many(events).await.expect("insert");
    }
}

/// This process's (user, system) and its waited-for children's (user, system) CPU time, in
/// clock ticks (1/100 s), from `/proc/self/stat`; zeros where it cannot be read.
fn cpu_ticks() -> ((u64, u64), (u64, u64)) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime is field 14 of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    ((at(11), at(12)), (at(13), at(14)))
}

/// One grid cell: `n` entries, `latency` per request, the command run `repeat` times
/// (each into a fresh store); returns (audithook's median s, its min and max, sequential
/// s, audithook requests per run, 429s per run).
async fn grid_cell(
    bin: &std::path::Path,
    n: usize,
    latency: Duration,
    repeat: usize,
) -> (f64, (f64, f64), f64, u64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    // A month of history ending now-ish, with a burst of 30 in one millisecond.
    let month = 30 * 24 * 3600 * 1000i64;
    let data = entries(n, START, month / n as i64, &[(n / 3, 30)]);
    let budget = Some((10_000, Duration::from_secs(10)));
    let fake = FakeLd::start(
        &data,
        FakeConfig {
            latency,
            budget,
            ..FakeConfig::default()
        },
    )
    .await;
    let mut times = Vec::new();
    let (mut requests, mut limited) = (0, 0);
    for run in 0..repeat.max(1) {
        let db = dir.path().join(format!("grid-{run}.db"));
        let before = (
            fake.stats().requests.load(Ordering::SeqCst),
            fake.stats().rate_limited.load(Ordering::SeqCst),
        );
        times.push(run_backfill(bin, &fake, &db).await);
        assert_eq!(count(&db), n as i64, "the backfill must store every entry");
        requests = fake.stats().requests.load(Ordering::SeqCst) - before.0;
        limited = fake.stats().rate_limited.load(Ordering::SeqCst) - before.1;
        // Runs wait for the route budget's window to pass, so each starts with a full one.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let (min, max) = (times[0], times[times.len() - 1]);
    // BENCH_SKIP_SEQUENTIAL: audithook's side only (for profiling); the speed-up reads NaN.
    let theirs = if std::env::var("BENCH_SKIP_SEQUENTIAL").is_ok() {
        f64::NAN
    } else {
        let (store, _) = store_in(&dir, "seq.db").await;
        let t = Instant::now();
        sequential(&fake, &store).await;
        let theirs = t.elapsed().as_secs_f64();
        store.close().await;
        theirs
    };
    fake.stop();
    (median, (min, max), theirs, requests, limited)
}

/// Runs the whole `audithook backfill` command into `db`; returns its wall time in seconds.
async fn run_backfill(bin: &std::path::Path, fake: &FakeLd, db: &std::path::Path) -> f64 {
    let cpu0 = cpu_ticks();
    let t = Instant::now();
    // BENCH_WRAP="perf record -g -o perf.data --" runs the command under a profiler.
    let wrap: Vec<String> = std::env::var("BENCH_WRAP")
        .map(|w| w.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = std::process::Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => std::process::Command::new(bin),
    };
    cmd.arg("backfill")
        .env(
            "AUDITHOOK_DATABASE_URL",
            format!("sqlite://{}", db.display()),
        )
        .env("LD_API_TOKEN", fake.token())
        .env("LD_BASE_URL", &fake.base)
        .env(
            "RUST_LOG",
            if std::env::var("BENCH_VERBOSE").is_ok() {
                "info"
            } else {
                "warn"
            },
        );
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run audithook backfill");
    let ours = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if std::env::var("BENCH_VERBOSE").is_ok() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        let ((cu, cs), (su, ss)) = (cpu_ticks().1, cpu_ticks().0);
        let ((cu0, cs0), (su0, ss0)) = (cpu0.1, cpu0.0);
        eprintln!(
            "cpu: audithook {:.2} s user + {:.2} s sys; bench process (fake server) {:.2} s user + {:.2} s sys; wall {ours:.2} s",
            (cu - cu0) as f64 / 100.0,
            (cs - cs0) as f64 / 100.0,
            (su - su0) as f64 / 100.0,
            (ss - ss0) as f64 / 100.0,
        );
    }
    ours
}

async fn grid() {
    let bin = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/audithook");
    if !bin.exists() {
        eprintln!(
            "SKIPPED the grid: build {} first (cargo build --release)",
            bin.display()
        );
        return;
    }
    let full = std::env::var("BENCH_GRID").is_ok_and(|v| v == "full");
    let cells: Vec<(usize, u64)> = if full {
        [2_000, 6_000, 20_000, 100_000]
            .iter()
            .flat_map(|n| [20, 50, 100, 200].map(|l| (*n, l)))
            .collect()
    } else if let Ok(list) = std::env::var("BENCH_CELLS") {
        // `N:MS,N:MS`: chosen cells.
        list.split(',')
            .filter_map(|c| c.split_once(':'))
            .filter_map(|(n, l)| Some((n.parse().ok()?, l.parse().ok()?)))
            .collect()
    } else {
        vec![
            (2_000, 20),
            (2_000, 200),
            (6_000, 50),
            (20_000, 20),
            (20_000, 100),
        ]
    };
    let repeat: usize = std::env::var("BENCH_REPEAT")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    println!("(g) whole `audithook backfill` command (median of {repeat} runs, min-max) vs the sequential method (one run), same data, route budget 1,000 req/s");
    println!(
        "| entries | latency | audithook | (min-max) | sequential | speed-up | requests | 429s |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (n, ms) in cells {
        let (ours, (min, max), theirs, requests, limited) =
            grid_cell(&bin, n, Duration::from_millis(ms), repeat).await;
        println!(
            "| {n} | {ms} ms | {ours:.2} s | {min:.2}-{max:.2} s | {theirs:.2} s | **{:.1}x** | {requests} | {limited} ({:.2}%) |",
            theirs / ours,
            100.0 * limited as f64 / requests.max(1) as f64
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        grid().await;
        if std::env::var("BENCH_CELLS").is_ok() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let latency = Duration::from_millis(100);
        if std::env::var("BENCH_BIG").is_ok() {

        // (a) 62,000 entries, no rate limit, bursts included.
        let data = entries(62_000, START, 40_000, &[(1000, 35), (30_000, 50)]);
        let fake = FakeLd::start(&data, FakeConfig { latency, ..FakeConfig::default() }).await;
        let client = LdClient::new(&fake.base, SecretString::from(fake.token().to_owned())).expect("client");
        let (store, db) = store_in(&dir, "a.db").await;
        let t = Instant::now();
        let summary = launchdarkly::run(&store, &client, Options { persist: true, ..Options::default() }).await.expect("backfill");
        let a_secs = t.elapsed().as_secs_f64();
        store.close().await;
        let a_count = count(&db);
        println!("(a) audithook backfill, 62,000 entries, 100 ms latency, concurrency 16: {a_secs:.1} s, {} requests, {a_count} stored", summary.requests);
        println!("    summary: {summary}");
        assert_eq!(a_count, 62_000, "backfill must store every entry");

        // (c) sequential, same data.
        let c_secs = if std::env::var("BENCH_SKIP_SEQUENTIAL").is_ok() {
            None
        } else {
            let (store, db) = store_in(&dir, "c.db").await;
            let t = Instant::now();
            let requests = sequential(&fake, &store).await;
            let secs = t.elapsed().as_secs_f64();
            store.close().await;
            println!("(c) sequential page-after-page (seed script method): {secs:.1} s, {requests} requests, {} stored", count(&db));
            Some(secs)
        };
        fake.stop();
        if let Some(c) = c_secs {
            println!("speed-up (c)/(a): {:.1}x", c / a_secs);
        }
        }

        // (b) 6,000 entries under 50 requests per 10 s.
        let data = entries(6_000, START, 40_000, &[(100, 30)]);
        let fake = FakeLd::start(
            &data,
            FakeConfig { latency, budget: Some((50, Duration::from_secs(10))), ..FakeConfig::default() },
        )
        .await;
        let client = LdClient::new(&fake.base, SecretString::from(fake.token().to_owned())).expect("client");
        let (store, db) = store_in(&dir, "b.db").await;
        let t = Instant::now();
        let summary = launchdarkly::run(&store, &client, Options::default()).await.expect("backfill");
        let b_secs = t.elapsed().as_secs_f64();
        store.close().await;
        let requests = fake.stats().requests.load(Ordering::SeqCst);
        let limited = fake.stats().rate_limited.load(Ordering::SeqCst);
        println!(
            "(b) 6,000 entries under 50 requests/10 s: {b_secs:.1} s (floor ~60 s: {:.2}x), {requests} requests, {limited} answered 429 ({:.2}%), {} stored, {} rate-limit waits",
            b_secs / 60.0,
            100.0 * limited as f64 / requests as f64,
            count(&db),
            summary.rate_limit_waits
        );
        println!("    summary: {summary}");
        assert_eq!(count(&db), 6_000);
    });
}
