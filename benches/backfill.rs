//! Backfill benchmark (issue 4), against the fake LaunchDarkly API with 100 ms latency per
//! request, in one run:
//! (a) 62,000 entries, no rate limit, `audithook backfill`'s method (concurrent windows);
//! (c) the same data with the seed script's sequential page-after-page method
//!     (`before` = date of the last item, one request at a time);
//! (b) 6,000 entries under a route budget of 50 requests per 10 s (300 pages: a floor of
//!     about 60 s), counting 429s.
//!
//! Run: `cargo bench --bench backfill` (`BENCH_SKIP_SEQUENTIAL=1` skips (c), ~5 min).

#[path = "../tests/support/fake_ld.rs"]
mod fake_ld;

use std::sync::Arc;
use std::time::{Duration, Instant};

use audithook::backfill::{self, client::LdClient, Options};
use audithook::event::{normalise, Source};
use audithook::metrics::Metrics;
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
            .filter_map(|i| normalise(i.to_string().as_bytes(), Source::Rest).ok())
            .collect();
        before = events.iter().map(|e| e.date).min().unwrap_or(0);
        store.insert_many(events).await.expect("insert");
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let latency = Duration::from_millis(100);

        // (a) 62,000 entries, no rate limit, bursts included.
        let data = entries(62_000, START, 40_000, &[(1000, 35), (30_000, 50)]);
        let fake = FakeLd::start(&data, FakeConfig { latency, ..FakeConfig::default() }).await;
        let client = LdClient::new(&fake.base, SecretString::from(fake.token().to_owned())).expect("client");
        let (store, db) = store_in(&dir, "a.db").await;
        let t = Instant::now();
        let summary = backfill::run(&store, &client, Options { persist: true, ..Options::default() }).await.expect("backfill");
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
        let summary = backfill::run(&store, &client, Options::default()).await.expect("backfill");
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
