//! Backfill and catch-up against the fake LaunchDarkly API: exact sets under faults,
//! rate limits, bursts, no next links, a kill and a rerun.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use audithook::metrics::Metrics;
use audithook::sources::launchdarkly::{self, client::LdClient, policy::Policy, Options};
use audithook::store::Store;
use secrecy::SecretString;
use serde_json::Value;

use crate::fake_ld::{entries, FakeConfig, FakeLd};
use crate::helpers::*;

const START: i64 = 1_700_000_000_000;

/// A fresh store on the backend the suite runs against (`AUDITHOOK_TEST_BACKEND`).
async fn open_store() -> (Store, TestDb) {
    let db = TestDb::for_backend().await;
    let store = Store::open(&db.url, Arc::new(Metrics::new()))
        .await
        .unwrap();
    (store, db)
}

fn ids_in(db: &TestDb) -> Vec<String> {
    stored_ids_at(&db.url)
}

fn expected_ids(data: &[Value]) -> HashSet<String> {
    data.iter()
        .map(|e| e["_id"].as_str().unwrap().to_owned())
        .collect()
}

fn client(fake: &FakeLd) -> LdClient {
    LdClient::new(&fake.base, SecretString::from(fake.token().to_owned())).unwrap()
}

/// Asserts the store holds exactly `data`, each once.
fn assert_exact(db: &TestDb, data: &[Value]) {
    assert_ids_exact(&ids_in(db), data);
}

/// Asserts `got` holds exactly the ids of `data`, each once.
fn assert_ids_exact(got: &[String], data: &[Value]) {
    let set: HashSet<String> = got.iter().cloned().collect();
    assert_eq!(got.len(), set.len(), "an entry is stored twice");
    let want = expected_ids(data);
    let missing: Vec<_> = want.difference(&set).take(5).collect();
    let extra: Vec<_> = set.difference(&want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    assert_eq!(got.len(), data.len());
}

/// Backfills `data`, served by a fake with `cfg`, into a fresh store. Returns the summary,
/// the database and the fake.
async fn backfill_fresh(
    data: &[Value],
    cfg: FakeConfig,
    opts: Options,
) -> (launchdarkly::Summary, TestDb, FakeLd) {
    let fake = FakeLd::start(data, cfg).await;
    let (store, db) = open_store().await;
    let summary = launchdarkly::run(&store, &client(&fake), opts)
        .await
        .unwrap();
    store.close().await;
    (summary, db, fake)
}

#[tokio::test]
async fn backfills_every_entry_once_with_a_burst_of_35_in_one_millisecond() {
    let data = entries(1000, START, 1000, &[(100, 35), (600, 21)]);
    let opts = Options {
        concurrency: 8,
        ..Options::default()
    };
    let (summary, db, _fake) = backfill_fresh(&data, FakeConfig::default(), opts).await;
    assert_exact(&db, &data);
    assert_eq!(summary.new, 1000);
    assert_eq!(summary.invalid, 0);
    assert_eq!(summary.truncated_bursts, 0);
    // Stored bytes are LaunchDarkly's bytes.
    for e in [&data[0], &data[7], &data[999]] {
        let raw = stored_raw_at(&db.url, e["_id"].as_str().unwrap());
        assert_eq!(raw, Some(e.to_string()));
    }
}

#[tokio::test]
async fn exact_under_500s_503s_dropped_connections_and_rate_limits() {
    let data = entries(600, START, 250, &[(50, 30)]);
    let cfg = FakeConfig {
        fail_every: Some(7),
        drop_every: Some(11),
        budget: Some((12, Duration::from_millis(400))),
        ..FakeConfig::default()
    };
    let opts = Options {
        concurrency: 6,
        ..Options::default()
    };
    let (summary, db, fake) = backfill_fresh(&data, cfg, opts).await;
    assert_exact(&db, &data);
    assert!(summary.retries > 0, "{summary}");
    assert!(
        fake.stats()
            .faults
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    );
    assert_eq!(summary.new, 600, "{summary}");
}

#[tokio::test]
async fn pages_by_before_when_the_api_gives_no_next_links() {
    let data = entries(500, START, 40, &[(30, 15), (200, 19), (333, 2)]);
    let cfg = FakeConfig {
        next_links: false,
        ..FakeConfig::default()
    };
    let opts = Options {
        concurrency: 4,
        ..Options::default()
    };
    let (summary, db, _fake) = backfill_fresh(&data, cfg, opts).await;
    assert_exact(&db, &data);
    assert_eq!(summary.truncated_bursts, 0);
}

#[tokio::test]
async fn a_burst_larger_than_a_page_without_next_links_is_reported() {
    // 25 entries in one millisecond cannot all be reached by `before`/`after` alone.
    let data = entries(60, START, 10, &[(10, 25)]);
    let cfg = FakeConfig {
        next_links: false,
        ..FakeConfig::default()
    };
    let opts = Options {
        concurrency: 1,
        ..Options::default()
    };
    let (summary, db, _fake) = backfill_fresh(&data, cfg, opts).await;
    assert_eq!(summary.truncated_bursts, 1, "{summary}");
    // Every entry outside the burst, and the 20 of the burst's 25 that one page holds (the
    // highest ids, as LaunchDarkly orders a millisecond): 55 exactly.
    assert_eq!(summary.new, 55, "{summary}");
    let mut burst: Vec<&Value> = data
        .iter()
        .filter(|e| e["date"] == data[10]["date"])
        .collect();
    assert_eq!(burst.len(), 25);
    burst.sort_by(|a, b| a["_id"].as_str().cmp(&b["_id"].as_str()));
    let unreachable: HashSet<&str> = burst[..5]
        .iter()
        .map(|e| e["_id"].as_str().unwrap())
        .collect();
    let want: Vec<Value> = data
        .iter()
        .filter(|e| !unreachable.contains(e["_id"].as_str().unwrap()))
        .cloned()
        .collect();
    assert_exact(&db, &want);
}

#[tokio::test]
async fn bounds_are_exclusive() {
    let data = entries(100, START, 1000, &[]);
    let (after, before) = (START - 60_000, START - 10_000);
    let opts = Options {
        after: Some(after),
        before: Some(before),
        concurrency: 3,
        ..Options::default()
    };
    let (_, db, _fake) = backfill_fresh(&data, FakeConfig::default(), opts).await;
    let want: Vec<Value> = data
        .iter()
        .filter(|e| e["date"].as_i64().unwrap() > after && e["date"].as_i64().unwrap() < before)
        .cloned()
        .collect();
    assert_eq!(want.len(), 49);
    assert_exact(&db, &want);
}

#[tokio::test]
async fn stops_at_once_on_a_bad_token_and_on_400() {
    let data = entries(50, START, 1000, &[]);
    let fake = FakeLd::start(&data, FakeConfig::default()).await;
    let (store, db) = open_store().await;
    let bad = LdClient::new(&fake.base, SecretString::from("wrong".to_owned())).unwrap();
    let err = launchdarkly::run(&store, &bad, Options::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("LD_API_TOKEN") && err.contains("401"), "{err}");
    assert_eq!(
        fake.stats()
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    let fake400 = FakeLd::start(
        &data,
        FakeConfig {
            force: Some((400, "spec is not valid".into())),
            ..FakeConfig::default()
        },
    )
    .await;
    let err = launchdarkly::run(&store, &client(&fake400), Options::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("400") && err.contains("spec is not valid"),
        "{err}"
    );
    store.close().await;
    assert!(ids_in(&db).is_empty());
}

#[tokio::test]
async fn a_policy_keeps_what_the_hook_would_have_delivered() {
    let data = entries(200, START, 1000, &[]);
    let policy = Policy::parse(
        r#"[{"effect":"allow","actions":["*"],"resources":["proj/*:env/production:flag/*"]},
            {"effect":"deny","actions":["createFlag"],"resources":["proj/*:env/*:flag/*"]}]"#,
    )
    .unwrap();
    let want: Vec<Value> = data
        .iter()
        .filter(|e| {
            let a = &e["accesses"][0];
            a["resource"].as_str().unwrap().contains("env/production")
                && a["action"] != "createFlag"
        })
        .cloned()
        .collect();
    let opts = Options {
        policy: Some(policy),
        ..Options::default()
    };
    let (summary, db, _fake) = backfill_fresh(&data, FakeConfig::default(), opts).await;
    assert_exact(&db, &want);
    // Overlapping windows may see an entry twice, so the count of filtered sightings is a floor.
    assert!(summary.filtered as usize >= 200 - want.len(), "{summary}");
}

#[tokio::test]
async fn backfilled_entries_read_like_hook_entries() {
    let data = entries(30, START, 1000, &[]);
    let fake = FakeLd::start(&data, FakeConfig::default()).await;
    let app = spawn_app().await;
    let store = Store::open(&app.url, Arc::new(Metrics::new()))
        .await
        .unwrap();
    launchdarkly::run(&store, &client(&fake), Options::default())
        .await
        .unwrap();
    store.close().await;
    let item: Value = app
        .read(&format!(
            "/api/v2/auditlog/{}",
            data[3]["_id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(item, data[3]);
    let page: Value = app
        .read("/api/v2/auditlog?limit=30")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["_id"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = data.iter().map(|e| e["_id"].as_str().unwrap()).collect();
    assert_eq!(ids, want);
    let r = app
        .client
        .post(format!("{}/preview", app.base))
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({"name": "flag", "event": data[3]["_id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(out["flag"]["key"], "flag-3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_sigkill_then_rerun_stores_each_entry_once() {
    let db = TestDb::for_backend().await;
    sigkill_then_rerun(&db).await;
}

/// `audithook backfill` into `db`, killed with SIGKILL once some but not all entries are in,
/// then run again: the rerun resumes, and the store ends with every entry once, byte for byte.
pub(crate) async fn sigkill_then_rerun(db: &TestDb) {
    let data = entries(3000, START, 100, &[(1000, 40), (2000, 25)]);
    let fake = FakeLd::start(
        &data,
        FakeConfig {
            latency: Duration::from_millis(15),
            ..FakeConfig::default()
        },
    )
    .await;
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_audithook"))
            .args(["backfill", "--concurrency", "4"])
            .env("AUDITHOOK_DATABASE_URL", &db.url)
            .env("LD_API_TOKEN", fake.token())
            .env("LD_BASE_URL", &fake.base)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The store exists (migrated) before the first run, so its progress can be watched.
    db.open().await.close().await;
    let mut child = run();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while stored_ids_at(&db.url).len() < 400 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = stored_ids_at(&db.url).len();
    assert!(
        partial > 0 && partial < 3000,
        "killed after {partial} entries"
    );
    let rerun = run();
    let out = tokio::task::spawn_blocking(move || rerun.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resumed and finished"), "{stderr}");
    assert_ids_exact(&stored_ids_at(&db.url), &data);
    for e in [&data[0], &data[1000], &data[2999]] {
        let id = e["_id"].as_str().unwrap();
        assert_eq!(stored_raw_at(&db.url, id), Some(e.to_string()));
    }
    fake.stop();
}

#[tokio::test]
async fn cli_reports_a_missing_token_and_bad_times() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_audithook"))
        .args(["backfill"])
        .env_remove("LD_API_TOKEN")
        .env(
            "AUDITHOOK_DATABASE_URL",
            "sqlite:///nonexistent-dir-xyz/never.db",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LD_API_TOKEN is not set"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_audithook"))
        .args(["backfill", "--after", "last tuesday"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("neither epoch milliseconds nor an RFC 3339 time"));
}

#[tokio::test]
async fn catch_up_in_serve_fetches_what_the_hook_missed() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let data = entries(80, now - 1000, 1000, &[]);
    let fake = FakeLd::start(&data, FakeConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_for_backend(dir.path()).await;
    cfg.ld_api_token = Some(SecretString::from(fake.token().to_owned()));
    cfg.ld_base_url = fake.base.clone();
    cfg.catchup_interval = Duration::from_millis(200);
    cfg.catchup_overlap = Duration::from_secs(3600);
    let app = spawn_with(cfg, Arc::new(dir)).await;
    // The hook delivered the newest 10 before audithook went down.
    for e in &data[..10] {
        assert!(app.post_event(e.to_string()).await.status().is_success());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while app.stored_ids().len() < 80 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got: HashSet<String> = app.stored_ids().into_iter().collect();
    assert_eq!(got, expected_ids(&data));
    assert!(
        app.metric_value("audithook_catchup_runs_total{result=\"ok\"}")
            .await
            >= 1.0
    );
    // One pass over 80 entries takes at least four pages of 20.
    assert!(app.metric_value("audithook_ld_requests_total").await >= 4.0);
    assert_eq!(app.metric_value("audithook_catchup_lease_held").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_stops_its_pass_at_once_when_the_lease_is_lost() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // A pass of several hundred pages at 100 ms each: far longer than the test.
    let data = entries(20_000, now - 1_000_000, 50, &[]);
    let fake = FakeLd::start(
        &data,
        FakeConfig {
            latency: Duration::from_millis(100),
            ..FakeConfig::default()
        },
    )
    .await;
    let (store, db) = open_store().await;
    let metrics = Arc::new(Metrics::new());
    let stop = tokio_util::sync::CancellationToken::new();
    // Interval 1 s: the lease lasts 3 s and is renewed every second.
    let task = tokio::spawn(audithook::sources::launchdarkly::catchup::run_loop(
        store.clone(),
        fake.base.clone(),
        SecretString::from(fake.token().to_owned()),
        Duration::from_secs(1),
        Duration::from_secs(3600),
        metrics.clone(),
        stop.clone(),
    ));
    let requests = || {
        fake.stats()
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while requests() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "catch-up did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another instance takes the lease (as after a pause longer than the lease).
    exec_sql(
        &db.url,
        "UPDATE leases SET holder = 'intruder', expires_at = 9000000000000000 WHERE name = 'catchup'",
    );
    // Within one renewal (1 s) the pass must stop: no request after that (2.5 s allows for
    // a loaded machine).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after_loss = requests();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(requests(), after_loss, "the pass went on without the lease");
    assert!(
        ids_in(&db).len() < data.len(),
        "the pass finished before the lease was lost"
    );
    let text = {
        let mut out = String::new();
        prometheus_text(&metrics, &mut out);
        out
    };
    assert!(
        text.contains("audithook_catchup_runs_total{result=\"lease_lost\"} 1"),
        "{text}"
    );
    assert!(text.contains("audithook_catchup_lease_held 0"), "{text}");
    stop.cancel();
    task.await.unwrap();
    store.close().await;
}

fn prometheus_text(metrics: &Metrics, out: &mut String) {
    out.push_str(&metrics.render());
}
