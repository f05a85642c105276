//! Terraform Cloud against the fake audit-trail API: exact sets while pages shift, under
//! faults and rate limits, after kill -9 and a rerun; the wrong token; bad answers; the
//! envelope; polling inside `serve`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use audithook::event::Source;
use audithook::metrics::Metrics;
use audithook::sources::tfc::{self, client::TfcClient};
use audithook::store::Store;
use secrecy::SecretString;
use serde_json::Value;

use crate::fake_tfc::{self, FakeConfig, FakeTfc, ORG_TOKEN, USER_TOKEN};
use crate::helpers::*;

const HOUR: i64 = 3600 * 1000;

/// Ids of the stored events of `source`, in arrival order.
pub fn ids_of(url: &str, source: &str) -> Vec<String> {
    query_strings(
        url,
        &format!("SELECT id FROM events WHERE source = '{source}' ORDER BY seq"),
    )
}

/// Asserts `got` is exactly `want`, each once.
pub fn assert_exact(got: &[String], want: &[String]) {
    let set: HashSet<&String> = got.iter().collect();
    assert_eq!(got.len(), set.len(), "an event is stored twice");
    let want_set: HashSet<&String> = want.iter().collect();
    let missing: Vec<_> = want_set.difference(&set).take(5).collect();
    let extra: Vec<_> = set.difference(&want_set).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?} (of {}), extra {extra:?}",
        want.len()
    );
    assert_eq!(got.len(), want.len());
}

fn client(fake: &FakeTfc, page_size: u32) -> TfcClient {
    TfcClient::new(&fake.base, SecretString::from(ORG_TOKEN.to_owned()), 30)
        .unwrap()
        .with_page_size(page_size)
}

async fn open(db: &TestDb) -> Store {
    Store::open(&db.url, Arc::new(Metrics::new()))
        .await
        .unwrap()
}

/// 2,000 events over the last 13 days, plus 3 older than 14 days that the API no longer
/// lists.
fn history() -> Vec<Value> {
    let now = fake_tfc::now_ms();
    let mut data = fake_tfc::events(2000, now - HOUR, 13 * 24 * HOUR / 2000);
    for i in 0..3 {
        data.push(fake_tfc::event(
            900_000 + i,
            now - 15 * 24 * HOUR - i as i64,
        ));
    }
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_stored_once_while_pages_shift_under_faults() {
    let data = history();
    let fake = FakeTfc::start(
        &data,
        FakeConfig {
            latency: Duration::from_millis(20),
            max_page_size: 1000,
            // Events are created during the walk (pushing older ones down a place), and
            // answers come back out of order.
            arrive_every: Some(3),
            fail_every: Some(7),
            drop_every: Some(11),
            html_every: Some(13),
            ..FakeConfig::default()
        },
    )
    .await;
    let db = TestDb::for_backend().await;
    let store = open(&db).await;
    let c = client(&fake, 50);
    let summary = tfc::run(&store, &c, 0, 8, None).await.unwrap();
    assert!(summary.pages >= 40, "{summary}");
    // Answers came back out of order while events arrived: boundaries were re-read.
    assert!(summary.repaired > 0, "{summary}");
    assert!(
        fake.stats()
            .faults
            .load(std::sync::atomic::Ordering::SeqCst)
            > 3
    );
    // Every event that existed when the walk began is stored, once; those created during
    // the walk are the next poll's.
    let stored = ids_of(&db.url, "tfc");
    let before: Vec<String> = data[..2000]
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let set: HashSet<&String> = stored.iter().collect();
    assert_eq!(set.len(), stored.len(), "an event is stored twice");
    let missing: Vec<_> = before
        .iter()
        .filter(|id| !set.contains(id))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "missing {missing:?}; {summary}");
    // The next poll brings the rest: exactly what the API lists, nothing older than 14 days.
    let polled = tfc::poll(&store, &c, Duration::from_secs(300))
        .await
        .unwrap();
    assert!(!polled.resumed);
    assert_exact(&ids_of(&db.url, "tfc"), &fake.listed_ids());
    // Byte for byte as the API sent it.
    let id = data[1234]["id"].as_str().unwrap();
    assert_eq!(stored_raw_at(&db.url, id), fake.raw(id));
    store.close().await;
    db.remove().await;
    fake.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_waited_out_with_its_float_reset() {
    let data = history();
    let fake = FakeTfc::start(
        &data,
        FakeConfig {
            rate_limit: Some(5),
            ..FakeConfig::default()
        },
    )
    .await;
    let db = TestDb::for_backend().await;
    let store = open(&db).await;
    // Paced faster than the fake's 5/s: the 429s' fractional resets are waited out.
    let c = TfcClient::new(&fake.base, SecretString::from(ORG_TOKEN.to_owned()), 50)
        .unwrap()
        .with_page_size(100);
    let started = std::time::Instant::now();
    let summary = tfc::run(&store, &c, 0, 4, None).await.unwrap();
    assert!(
        fake.stats()
            .rate_limited
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    );
    assert_exact(&ids_of(&db.url, "tfc"), &fake.listed_ids());
    assert_eq!(summary.new, 2000);
    // 20 pages at 5 per second take about 4 s; a busy retry would not.
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    store.close().await;
    db.remove().await;
    fake.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_page_fails_naming_source_path_and_problem_and_commits_nothing() {
    let data = history();
    let fake = FakeTfc::start(
        &data,
        FakeConfig {
            bad_type: true,
            ..FakeConfig::default()
        },
    )
    .await;
    let db = TestDb::for_backend().await;
    let store = open(&db).await;
    let mut c = client(&fake, 100);
    c.fetcher.max_backoff = Duration::from_millis(20);
    let err = tfc::run(&store, &c, 0, 4, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("tfc: /api/v2/organization/audit-trail: "),
        "{err}"
    );
    assert!(err.contains("`timestamp` is 5, not a string"), "{err}");
    assert!(ids_of(&db.url, "tfc").is_empty());
    assert_eq!(store.source_position(Source::Tfc).await.unwrap(), None);
    store.close().await;
    db.remove().await;
    fake.stop();
}

fn backfill_cmd(db: &TestDb, fake: &FakeTfc, token: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_audithook"));
    cmd.args(["backfill", "--source", "tfc"])
        .env("AUDITHOOK_DATABASE_URL", &db.url)
        .env("TFC_API_TOKEN", token)
        .env("TFC_BASE_URL", &fake.base)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_backfill_then_rerun_stores_every_event_once() {
    let now = fake_tfc::now_ms();
    let data = fake_tfc::events(6000, now - HOUR, 12 * 24 * HOUR / 6000);
    let fake = FakeTfc::start(
        &data,
        FakeConfig {
            latency: Duration::from_millis(30),
            max_page_size: 100,
            ..FakeConfig::default()
        },
    )
    .await;
    let db = TestDb::for_backend().await;
    db.open().await.close().await;
    // Saved progress is the in-order prefix of finished pages, so a kill can leave it up to
    // `--concurrency` pages behind what is stored: 8 keeps that well inside the bound below
    // (at the default 16 the rerun re-read up to 21 pages more than were left).
    let mut child = backfill_cmd(&db, &fake, ORG_TOKEN)
        .args(["--concurrency", "8"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ids_of(&db.url, "tfc").len() < 1500 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = ids_of(&db.url, "tfc").len();
    assert!(partial > 0 && partial < 6000, "killed after {partial}");
    // Pages answered (429s aside: the killed run's requests still count in the API's
    // window when the rerun starts).
    let requests_before = fake.stats().ok.load(std::sync::atomic::Ordering::SeqCst);
    let out = backfill_cmd(&db, &fake, ORG_TOKEN).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resumed and finished"), "{stderr}");
    assert_exact(&ids_of(&db.url, "tfc"), &fake.listed_ids());
    // The rerun started near where the killed run stopped, not at page 1.
    let rerun = fake.stats().ok.load(std::sync::atomic::Ordering::SeqCst) - requests_before;
    let pages_left = (6000 - partial as u64) / 100 + 1;
    assert!(
        rerun <= pages_left + 20,
        "{rerun} requests for {pages_left} pages left ({partial} stored before): {stderr}"
    );
    db.remove().await;
    fake.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_are_named_or_warned_about() {
    let fake = FakeTfc::start(&history(), FakeConfig::default()).await;
    let db = TestDb::sqlite();
    // A user or team token: 200 with no data, and a warning.
    let out = backfill_cmd(&db, &fake, USER_TOKEN).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("may be a user or team token"), "{stderr}");
    assert!(stderr.contains("0 new"), "{stderr}");
    // Not a token at all: 401, named.
    let out = backfill_cmd(&db, &fake, "nope").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "tfc: /api/v2/organization/audit-trail: the API rejected TFC_API_TOKEN (401)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("nope"), "the token leaked: {stderr}");
    // No token at all.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_audithook"))
        .args(["backfill", "--source", "tfc"])
        .env("AUDITHOOK_DATABASE_URL", &db.url)
        .env_remove("TFC_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TFC_API_TOKEN is not set"));
    // A malformed base URL stops `serve` at start-up, naming the variable.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_audithook"))
        .args(["serve"])
        .env("AUDITHOOK_DATABASE_URL", &db.url)
        .env("AUDITHOOK_LISTEN", "127.0.0.1:0")
        .env("TFC_API_TOKEN", ORG_TOKEN)
        .env("TFC_BASE_URL", "app.terraform.io")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TFC_BASE_URL is not a URL"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fake.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_polls_and_the_envelope_maps_the_event() {
    let data = history();
    let fake = FakeTfc::start(&data, FakeConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_for_backend(dir.path()).await;
    cfg.tfc_api_token = Some(SecretString::from(ORG_TOKEN.to_owned()));
    cfg.tfc_base_url = fake.base.clone();
    cfg.poll_interval = Duration::from_secs(1);
    let url = cfg.database_url.clone();
    let app = spawn_with(cfg, Arc::new(dir)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ids_of(&url, "tfc").len() < 2000 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_exact(&ids_of(&url, "tfc"), &fake.listed_ids());
    // Created after the first poll: the next poll brings it.
    fake.arrive();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ids_of(&url, "tfc").len() < 2001 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_exact(&ids_of(&url, "tfc"), &fake.listed_ids());
    let e = &data[5];
    let id = e["id"].as_str().unwrap();
    let r = app.read(&format!("/api/events/tfc/{id}")).await;
    assert_eq!(r.status(), 200);
    let env: Value = r.json().await.unwrap();
    let date = chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    assert_eq!(
        env,
        serde_json::json!({
            "source": "tfc",
            "id": id,
            "date": date,
            "time": e["timestamp"],
            "actor": e["auth"]["description"],
            "action": e["resource"]["action"],
            "resource": format!("{}/{}", e["resource"]["type"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap()),
            "summary": format!("{} {} {} {}", e["auth"]["description"].as_str().unwrap(), e["resource"]["action"].as_str().unwrap(), e["resource"]["type"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap()),
            "raw": e,
        })
    );
    // LaunchDarkly's API lists LaunchDarkly's events only.
    assert!(app.item_ids("/api/v2/auditlog?limit=1000").await.is_empty());
    assert_eq!(
        app.read(&format!("/api/v2/auditlog/{id}")).await.status(),
        404
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("audithook_source_requests_total{source=\"tfc\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("audithook_source_events_new_total{source=\"tfc\"} 2001"),
        "{metrics}"
    );
    assert!(
        metrics.contains("audithook_source_lease_held{source=\"tfc\"} 1"),
        "{metrics}"
    );
    app.stop().await;
    fake.stop();
}
