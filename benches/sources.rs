//! Terraform Cloud and Carbon Black Cloud backfills against their fakes, each against the
//! naive method in the same run:
//! (t) a 14-day Terraform Cloud backfill of 100,000 events (100 pages of 1,000) under the
//!     API's 30 requests per second, answers taking 100 to 150 ms: audithook against the
//!     floor that rate sets (100 requests / 30 per second = 3.33 s) and against the
//!     shipper script's method (one page after another until `next_page` is null).
//! (c) a 30-day Carbon Black Cloud backfill of 200,000 records, answers taking 100 ms:
//!     audithook against one search after another (a window per day, paged by `start`,
//!     as Carbon Black's SDK pages: one window for all 30 days would pass the capped result
//!     window).
//! Both store into a fresh SQLite file; each result is checked for the exact count.
//!
//! Run: `cargo bench --bench sources` (`BENCH_TFC_EVENTS`, `BENCH_CBC_RECORDS` change the
//! sizes).

#[path = "../tests/support/fake_cbc.rs"]
mod fake_cbc;
#[path = "../tests/support/fake_tfc.rs"]
mod fake_tfc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use audithook::metrics::Metrics;
use audithook::sources::cbc::{self, client::CbcClient};
use audithook::sources::tfc::{self, client::TfcClient};
use audithook::store::{Filter, Store};
use secrecy::SecretString;
use std::sync::atomic::Ordering;

const DAY: i64 = 24 * 3600 * 1000;

async fn store_in(dir: &tempfile::TempDir, name: &str) -> Store {
    let options = audithook::store::StoreOptions {
        background_indexer: std::env::var_os("BENCH_NO_INDEXER").is_none(),
        ..Default::default()
    };
    Store::open_with_options(
        &format!("sqlite://{}", dir.path().join(name).display()),
        &options,
        Arc::new(Metrics::new()),
    )
    .await
    .expect("store")
}

async fn count(store: &Store) -> u64 {
    store.count(&Filter::default()).await.expect("count")
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The shipper script's method: page 1, 2, ... one after another until `next_page` is
/// null, each page stored before the next is asked for.
async fn tfc_naive(client: &TfcClient, store: &Store, since: i64) -> u64 {
    let mut n = 1;
    loop {
        let page = client.page(since, n).await.expect("page");
        store
            .insert_many(page.events.clone())
            .await
            .expect("insert");
        match page.next_page {
            Some(next) => n = next,
            None => return n,
        }
    }
}

/// One search after another: a window per day, paged by `start`.
async fn cbc_naive(client: &CbcClient, store: &Store, after: i64, before: i64) -> u64 {
    let mut searches = 0;
    let mut day = after;
    while day < before {
        let end = (day + DAY).min(before);
        let mut start = 0u64;
        loop {
            let page = client.search(day, end, start).await.expect("search");
            searches += 1;
            start += page.events.len() as u64;
            store
                .insert_many(page.events.clone())
                .await
                .expect("insert");
            if page.events.is_empty() || start >= page.num_found {
                break;
            }
        }
        // The next window starts where this one ended (edges shared, duplicates free).
        day = end;
    }
    searches
}

async fn bench_tfc() {
    let n = env_u64("BENCH_TFC_EVENTS", 100_000);
    let now = fake_tfc::now_ms();
    let data = fake_tfc::events(n, now - 60_000, (13 * DAY) / n as i64);
    let fake = fake_tfc::FakeTfc::start(
        &data,
        fake_tfc::FakeConfig {
            latency: Duration::from_millis(100),
            rate_limit: Some(30),
            ..fake_tfc::FakeConfig::default()
        },
    )
    .await;
    let client = || {
        TfcClient::new(
            &fake.base,
            SecretString::from(fake_tfc::ORG_TOKEN.to_owned()),
            tfc::client::RATE,
        )
        .expect("client")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let pages = n.div_ceil(1000);
    let floor = pages as f64 / 30.0;
    println!("(t) Terraform Cloud: {n} events in 14 days, {pages} pages, 30 requests/s, 100-150 ms answers");
    println!("    floor set by the rate: {pages} requests / 30 per s = {floor:.2} s");

    let store = store_in(&dir, "tfc-audithook.db").await;
    let before_429 = fake.stats().rate_limited.load(Ordering::SeqCst);
    let started = Instant::now();
    let summary = tfc::run(
        &store,
        &client(),
        tfc::oldest_since(fake_tfc::now_ms()),
        env_u64("BENCH_TFC_CONCURRENCY", 32) as usize,
        None,
    )
    .await
    .expect("tfc backfill");
    let ours = started.elapsed().as_secs_f64();
    let got = count(&store).await;
    store.close().await;
    assert_eq!(got, n, "audithook stored {got} of {n}");
    let ours_429 = fake.stats().rate_limited.load(Ordering::SeqCst) - before_429;

    let store = store_in(&dir, "tfc-naive.db").await;
    let started = Instant::now();
    let requests = tfc_naive(&client(), &store, tfc::oldest_since(fake_tfc::now_ms())).await;
    let naive = started.elapsed().as_secs_f64();
    let got_naive = count(&store).await;
    store.close().await;
    assert_eq!(got_naive, n, "the naive method stored {got_naive} of {n}");
    println!(
        "    audithook: {ours:.2} s ({:.0} events/s, {} pages, {} boundaries re-read, {ours_429} 429s) = {:.2}x the floor",
        n as f64 / ours,
        summary.pages,
        summary.repaired,
        ours / floor
    );
    println!(
        "    page after page: {naive:.2} s ({requests} requests) -> audithook {:.1}x faster",
        naive / ours
    );
    fake.stop();
}

async fn bench_cbc() {
    let n = env_u64("BENCH_CBC_RECORDS", 200_000);
    let now = fake_tfc::now_ms();
    let after = now - 30 * DAY;
    let data = fake_cbc::records(n, after + 1, (30 * DAY - 2) / n as i64);
    let fake = fake_cbc::FakeCbc::start(
        &data,
        fake_cbc::FakeConfig {
            latency: Duration::from_millis(100),
            ..fake_cbc::FakeConfig::default()
        },
    )
    .await;
    let distinct = fake.records().len() as u64;
    let client = || {
        CbcClient::new(
            &fake.base,
            fake_cbc::API_ID,
            &SecretString::from(fake_cbc::API_SECRET.to_owned()),
            fake_cbc::ORG_KEY,
        )
        .expect("client")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    println!("(c) Carbon Black Cloud: {distinct} records in 30 days, 100 ms answers, 1,000 rows per search");

    let store = store_in(&dir, "cbc-audithook.db").await;
    let started = Instant::now();
    let summary = cbc::run(&store, &client(), after, now, 16, None)
        .await
        .expect("cbc backfill");
    let ours = started.elapsed().as_secs_f64();
    let got = count(&store).await;
    store.close().await;
    assert_eq!(got, distinct, "audithook stored {got} of {distinct}");

    let store = store_in(&dir, "cbc-naive.db").await;
    let started = Instant::now();
    let searches = cbc_naive(&client(), &store, after, now).await;
    let naive = started.elapsed().as_secs_f64();
    let got_naive = count(&store).await;
    store.close().await;
    assert_eq!(
        got_naive, distinct,
        "the naive method stored {got_naive} of {distinct}"
    );
    println!(
        "    audithook: {ours:.2} s ({:.0} records/s, {} searches)",
        distinct as f64 / ours,
        summary.searches
    );
    println!(
        "    one search after another: {naive:.2} s ({searches} searches) -> audithook {:.1}x faster",
        naive / ours
    );
    fake.stop();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        bench_tfc().await;
        bench_cbc().await;
    });
}
