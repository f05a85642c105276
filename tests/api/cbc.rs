//! Carbon Black Cloud against the fake audit-log API: exact sets under both readings of a
//! window's end, with distinct records in one millisecond and more in one millisecond than
//! an answer holds, under faults and 429s, after kill -9 and a rerun; never the read-once
//! queue; the content-derived id; the envelope; bad answers; start-up errors.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use audithook::event::Source;
use audithook::metrics::Metrics;
use audithook::sources::cbc::{self, client::CbcClient};
use audithook::store::Store;
use secrecy::SecretString;
use serde_json::Value;

use crate::fake_cbc::{self, FakeCbc, FakeConfig, API_ID, API_SECRET, ORG_KEY};
use crate::helpers::*;
use crate::tfc::{assert_exact, ids_of};

const START: i64 = 1_700_000_000_000;
const DAY: i64 = 24 * 3600 * 1000;

fn client(fake: &FakeCbc, rows: u32) -> CbcClient {
    CbcClient::new(
        &fake.base,
        API_ID,
        &SecretString::from(API_SECRET.to_owned()),
        ORG_KEY,
    )
    .unwrap()
    .with_rows(rows)
}

/// The ids the records should get.
fn expected(fake: &FakeCbc) -> Vec<String> {
    fake.records()
        .iter()
        .map(|r| cbc::normalise(r).unwrap().id)
        .collect()
}

/// 3,000 records over ten days, with three distinct records in every tenth millisecond,
/// and 120 distinct records in one millisecond (more than an answer of 50 holds).
fn history() -> Vec<Value> {
    let mut data = fake_cbc::records(3000, START, 10 * DAY / 3000);
    for i in 0..120 {
        data.push(fake_cbc::record(50_000 + i, START + 5 * DAY + 17));
    }
    data
}

async fn open(db: &TestDb) -> Store {
    Store::open(&db.url, Arc::new(Metrics::new()))
        .await
        .unwrap()
}

async fn exact_under(end_inclusive: bool) {
    let fake = FakeCbc::start(
        &history(),
        FakeConfig {
            end_inclusive,
            latency: Duration::from_millis(2),
            ..FakeConfig::default()
        },
    )
    .await;
    let want = expected(&fake);
    assert_eq!(want.len(), 3120, "the fixture holds distinct records only");
    let db = TestDb::for_backend().await;
    let store = open(&db).await;
    let summary = cbc::run(
        &store,
        &client(&fake, 50),
        START - 1,
        START + 11 * DAY,
        4,
        None,
    )
    .await
    .unwrap();
    assert_exact(&ids_of(&db.url, "cbc"), &want);
    assert_eq!(summary.new, 3120, "{summary}");
    // Never paged deep into the capped result window, never read the queue.
    assert!(fake.stats().max_start.load(Ordering::SeqCst) <= 100);
    assert_eq!(fake.stats().queue_reads.load(Ordering::SeqCst), 0);
    // A rerun of the same range stores nothing new: the ids are the content's.
    let again = cbc::run(
        &store,
        &client(&fake, 50),
        START - 1,
        START + 11 * DAY,
        4,
        None,
    )
    .await
    .unwrap();
    assert_eq!(again.new, 0, "{again}");
    assert_exact(&ids_of(&db.url, "cbc"), &want);
    store.close().await;
    db.remove().await;
    fake.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_once_when_window_ends_are_inclusive() {
    exact_under(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_once_when_window_ends_are_exclusive() {
    exact_under(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_and_429s_are_retried_to_an_exact_set() {
    let fake = FakeCbc::start(
        &history(),
        FakeConfig {
            rate_limit: Some(40),
            fail_every: Some(11),
            drop_every: Some(17),
            html_every: Some(19),
            bad_type_every: Some(23),
            ..FakeConfig::default()
        },
    )
    .await;
    let db = TestDb::for_backend().await;
    let store = open(&db).await;
    cbc::run(
        &store,
        &client(&fake, 100),
        START - 1,
        START + 11 * DAY,
        8,
        None,
    )
    .await
    .unwrap();
    assert!(fake.stats().faults.load(Ordering::SeqCst) > 5);
    assert!(fake.stats().rate_limited.load(Ordering::SeqCst) > 0);
    assert_exact(&ids_of(&db.url, "cbc"), &expected(&fake));
    store.close().await;
    db.remove().await;
    fake.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_answer_fails_naming_source_path_and_problem() {
    let fake = FakeCbc::start(
        &history(),
        FakeConfig {
            bad_type_every: Some(1),
            ..FakeConfig::default()
        },
    )
    .await;
    let db = TestDb::for_backend().await;
    let store = open(&db).await;
    let mut c = client(&fake, 100);
    c.fetcher.max_backoff = Duration::from_millis(20);
    let err = cbc::run(&store, &c, START - 1, START + DAY, 1, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "cbc: /audit_log/v1/orgs/{ORG_KEY}/logs/_search: no usable answer after 10 attempts"
        )),
        "{err}"
    );
    assert!(err.contains("`flagged` is not a boolean"), "{err}");
    assert!(ids_of(&db.url, "cbc").is_empty());
    assert_eq!(store.source_position(Source::Cbc).await.unwrap(), None);
    store.close().await;
    db.remove().await;
    fake.stop();
}

fn backfill_cmd(db: &TestDb, fake: &FakeCbc) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_audithook"));
    cmd.args([
        "backfill",
        "--source",
        "cbc",
        "--after",
        &(START - 1).to_string(),
        "--before",
        &(START + 11 * DAY).to_string(),
        "--concurrency",
        "2",
    ])
    .env("AUDITHOOK_DATABASE_URL", &db.url)
    .env("CBC_API_ID", API_ID)
    .env("CBC_API_SECRET", API_SECRET)
    .env("CBC_ORG_KEY", ORG_KEY)
    .env("CBC_BASE_URL", &fake.base)
    .env("RUST_LOG", "info")
    .env("NO_COLOR", "1");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_backfill_then_rerun_stores_every_record_once() {
    let data = fake_cbc::records(20_000, START, 10 * DAY / 20_000);
    let fake = FakeCbc::start(
        &data,
        FakeConfig {
            latency: Duration::from_millis(40),
            ..FakeConfig::default()
        },
    )
    .await;
    let db = TestDb::for_backend().await;
    db.open().await.close().await;
    let mut child = backfill_cmd(&db, &fake)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ids_of(&db.url, "cbc").len() < 4000 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = ids_of(&db.url, "cbc").len();
    assert!(partial > 0 && partial < 20_000, "killed after {partial}");
    let searches_before = fake.stats().searches.load(Ordering::SeqCst);
    let out = backfill_cmd(&db, &fake).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resumed and finished"), "{stderr}");
    assert_exact(&ids_of(&db.url, "cbc"), &expected(&fake));
    // The rerun read what was left (and its chunks' overlap), not everything again.
    let rerun = fake.stats().searches.load(Ordering::SeqCst) - searches_before;
    let left = (20_000 - partial as u64) / 1000 + 1;
    assert!(rerun <= left + 70, "{rerun} searches for {left} pages left");
    db.remove().await;
    fake.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_errors_name_the_variable() {
    let db = TestDb::sqlite();
    let serve = |vars: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_audithook"));
        cmd.args(["serve"])
            .env("AUDITHOOK_DATABASE_URL", &db.url)
            .env("AUDITHOOK_LISTEN", "127.0.0.1:0");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = serve(&[("CBC_API_ID", API_ID), ("CBC_ORG_KEY", ORG_KEY)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("CBC_API_SECRET, CBC_BASE_URL not set"),
        "{err}"
    );
    let (code, err) = serve(&[
        ("CBC_API_ID", API_ID),
        ("CBC_API_SECRET", API_SECRET),
        ("CBC_ORG_KEY", ORG_KEY),
        ("CBC_BASE_URL", "http://defense.conferdeploy.net"),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("CBC_BASE_URL must be https://"), "{err}");
    assert!(!err.contains(API_SECRET), "the secret leaked: {err}");
    let (code, err) = serve(&[
        ("CBC_API_ID", API_ID),
        ("CBC_API_SECRET", API_SECRET),
        ("CBC_ORG_KEY", "ABCD/../x"),
        ("CBC_BASE_URL", "https://defense.conferdeploy.net"),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("CBC_ORG_KEY must be letters and digits"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_polls_and_the_envelope_maps_the_record() {
    let now = fake_tfc_now();
    let data = fake_cbc::records(500, now - DAY, DAY / 1000);
    let fake = FakeCbc::start(&data, FakeConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_for_backend(dir.path()).await;
    cfg.cbc_api_id = Some(API_ID.into());
    cfg.cbc_api_secret = Some(SecretString::from(API_SECRET.to_owned()));
    cfg.cbc_org_key = Some(ORG_KEY.into());
    cfg.cbc_base_url = Some(fake.base.clone());
    cfg.poll_interval = Duration::from_secs(1);
    let url = cfg.database_url.clone();
    let app = spawn_with(cfg, Arc::new(dir)).await;
    let want = expected(&fake);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ids_of(&url, "cbc").len() < want.len() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_exact(&ids_of(&url, "cbc"), &want);
    assert_eq!(fake.stats().queue_reads.load(Ordering::SeqCst), 0);
    let raw = &fake.records()[7];
    let rec: Value = serde_json::from_str(raw).unwrap();
    let id = cbc::normalise(raw).unwrap().id;
    let env: Value = app
        .read(&format!("/api/events/cbc/{id}"))
        .await
        .json()
        .await
        .unwrap();
    let summary = format!(
        "{} ({} from {})",
        rec["description"].as_str().unwrap(),
        rec["actor"].as_str().unwrap(),
        rec["actor_ip"].as_str().unwrap()
    );
    assert_eq!(env["source"], "cbc");
    assert_eq!(env["id"], id.as_str());
    assert_eq!(env["time"], rec["create_time"]);
    assert_eq!(env["actor"], rec["actor"]);
    assert_eq!(env["action"], rec["description"]);
    assert_eq!(env["resource"], rec["request_url"].as_str().unwrap_or(""));
    assert_eq!(env["summary"], summary.as_str());
    assert_eq!(env["raw"], rec);
    assert_eq!(env["raw"]["actor_ip"], rec["actor_ip"]);
    // Found by the actor's address too.
    let ip = rec["actor_ip"].as_str().unwrap();
    let found: Value = app
        .read(&format!("/api/events?source=cbc&q={ip}&limit=1000"))
        .await
        .json()
        .await
        .unwrap();
    assert!(found["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == id.as_str()));
    app.stop().await;
    fake.stop();
}

fn fake_tfc_now() -> i64 {
    crate::fake_tfc::now_ms()
}
