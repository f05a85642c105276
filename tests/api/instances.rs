//! Several instances on one Postgres database, as behind a load balancer: two real
//! `audithook serve` processes. Also Postgres failures: at start (clear message, non-zero
//! exit, no password shown) and while running (503, failing health, recovery).
//! Each case needs `AUDITHOOK_TEST_POSTGRES_URL` and is skipped, with a message, without it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

use crate::fake_ld::{entries, FakeConfig, FakeLd};
use crate::helpers::{hook_payload, stored_ids_at, take_queue, TestDb, API_TOKEN, HOOK_TOKEN};

/// One `audithook serve` process.
struct Instance {
    child: Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Instance {
    /// Starts `audithook serve` on a free port with `db_url` and waits until it is healthy.
    async fn start(db_url: &str, env: &[(&str, &str)]) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.path().join("serve.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_audithook"));
        cmd.arg("serve")
            .env("AUDITHOOK_LISTEN", format!("127.0.0.1:{port}"))
            .env("AUDITHOOK_DATABASE_URL", db_url)
            .env("AUDITHOOK_HOOK_TOKEN", HOOK_TOKEN)
            .env("AUDITHOOK_API_TOKEN", API_TOKEN)
            .env("AUDITHOOK_TEMPLATES", dir.path().join("none"))
            .env("RUST_LOG", "info")
            .env_remove("LD_API_TOKEN")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // An empty value removes the variable.
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let mut inst = Instance {
            child: cmd.spawn().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/healthz", inst.base)).send().await {
                if r.status() == 200 {
                    return inst;
                }
            }
            if let Some(status) = inst.child.try_wait().unwrap() {
                panic!("serve exited with {status}: {}", inst.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "not healthy: {}",
                inst.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One metric's value from `/metrics` (0 when absent).
    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process as an orchestrator would (SIGTERM) and waits for it.
    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn post(client: &reqwest::Client, base: &str, body: &str) -> u16 {
    client
        .post(format!("{base}/hooks/launchdarkly"))
        .bearer_auth(HOOK_TOKEN)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `(rows, distinct ids)` in the events table.
async fn stored_counts(url: &str) -> (i64, i64) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_as("SELECT count(*), count(DISTINCT id) FROM events")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_receiving_the_same_events_store_each_once() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let (a, b) = tokio::join!(Instance::start(&db.url, &[]), Instance::start(&db.url, &[]));
    let client = reqwest::Client::new();
    // Each event goes to both instances at once, as when LaunchDarkly's retry reaches the
    // other instance while the first delivery is still in flight.
    let outcomes: Vec<(u16, u16)> = futures_util::stream::iter(0..300)
        .map(|i| {
            let (client, a, b) = (client.clone(), a.base.clone(), b.base.clone());
            async move {
                let body = hook_payload(&format!("evt{i:04}"), 1_700_000_000_000 + i).to_string();
                tokio::join!(post(&client, &a, &body), post(&client, &b, &body))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (sa, sb) in &outcomes {
        let mut pair = [*sa, *sb];
        pair.sort();
        assert_eq!(pair, [200, 202], "one stored (202), one duplicate (200)");
    }
    let stored_by_a = outcomes.iter().filter(|(sa, _)| *sa == 202).count();
    assert!(
        stored_by_a > 0 && stored_by_a < 300,
        "both instances stored some"
    );
    assert_eq!(stored_counts(&db.url).await, (300, 300));
    // Either instance reads what the other stored.
    let r = client
        .get(format!("{}/api/v2/auditlog?limit=20", b.base))
        .header("authorization", API_TOKEN)
        .send()
        .await
        .unwrap();
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 20);
    assert_eq!(page["items"][0]["_id"], "evt0299");
    drop((a, b));
    db.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_queue_served_by_two_instances_delivers_each_event_once() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let (a, b) = tokio::join!(Instance::start(&db.url, &[]), Instance::start(&db.url, &[]));
    let client = reqwest::Client::new();
    let total = 400;
    let producing = Arc::new(AtomicBool::new(true));
    // Events arrive through both instances while consumers read the queue through both.
    let producer = {
        let (client, a, b, producing) = (
            client.clone(),
            a.base.clone(),
            b.base.clone(),
            producing.clone(),
        );
        tokio::spawn(async move {
            futures_util::stream::iter(0..total)
                .map(|i| {
                    let (client, base) = (
                        client.clone(),
                        if i % 2 == 0 { a.clone() } else { b.clone() },
                    );
                    async move {
                        let body =
                            hook_payload(&format!("q{i:04}"), 1_700_000_000_000 + i).to_string();
                        assert_eq!(post(&client, &base, &body).await, 202);
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<()>>()
                .await;
            producing.store(false, Ordering::SeqCst);
        })
    };
    let consumers: Vec<_> = [&a.base, &b.base, &a.base, &b.base]
        .into_iter()
        .map(|base| {
            let (client, base, producing) = (client.clone(), base.clone(), producing.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut empty_after_done = 0;
                while empty_after_done < 3 {
                    let done = !producing.load(Ordering::SeqCst);
                    let batch = take_queue(&client, &base, "shared", 7).await;
                    if batch.is_empty() {
                        if done {
                            empty_after_done += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    got.extend(batch);
                }
                got
            })
        })
        .collect();
    producer.await.unwrap();
    let mut delivered = Vec::new();
    for c in consumers {
        delivered.extend(c.await.unwrap());
    }
    let distinct: HashSet<&String> = delivered.iter().collect();
    assert_eq!(distinct.len(), total as usize, "every event delivered");
    assert_eq!(delivered.len(), total as usize, "no event delivered twice");
    drop((a, b));
    db.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_runs_in_one_instance_and_fails_over() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // 60 entries from the last minute: within the first catch-up's reach.
    let fake = FakeLd::start(&entries(60, now - 1_000, 900, &[]), FakeConfig::default()).await;
    let env = [
        ("LD_API_TOKEN", fake.token()),
        ("LD_BASE_URL", fake.base.as_str()),
        ("AUDITHOOK_CATCHUP_INTERVAL", "1s"),
    ];
    let (mut a, mut b) = tokio::join!(
        Instance::start(&db.url, &env),
        Instance::start(&db.url, &env)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while stored_counts(&db.url).await.0 < 60 {
        assert!(
            Instant::now() < deadline,
            "catch-up did not store the entries"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several intervals with both running.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let held = (
        a.metric("audithook_catchup_lease_held").await,
        b.metric("audithook_catchup_lease_held").await,
    );
    let requests = (
        a.metric("audithook_ld_requests_total").await,
        b.metric("audithook_ld_requests_total").await,
    );
    let runs = (
        a.metric("audithook_catchup_runs_total").await,
        b.metric("audithook_catchup_runs_total").await,
    );
    let (holder, standby) = match held {
        (1.0, 0.0) => (&mut a, &mut b),
        (0.0, 1.0) => (&mut b, &mut a),
        other => panic!("exactly one instance must hold the lease, got {other:?}"),
    };
    let (holder_runs, standby_runs, standby_requests) = if held.0 == 1.0 {
        (runs.0, runs.1, requests.1)
    } else {
        (runs.1, runs.0, requests.0)
    };
    assert!(
        holder_runs >= 2.0,
        "the holder runs every interval: {runs:?}"
    );
    assert_eq!(standby_runs, 0.0, "the standby does not run catch-up");
    assert_eq!(
        standby_requests, 0.0,
        "the standby sends LaunchDarkly nothing"
    );
    // The fake counts a request when it arrives, the holder when its pass ends: the fake's
    // count, read first, cannot exceed what the holder has reported plus the pass under way
    // (a pass with nothing new costs about as many requests as the passes before it).
    let seen = fake.stats().requests.load(Ordering::Relaxed) as f64;
    let reported = holder.metric("audithook_ld_requests_total").await
        + standby.metric("audithook_ld_requests_total").await;
    let runs_now = holder.metric("audithook_catchup_runs_total").await;
    let per_pass = (reported / runs_now.max(1.0)).ceil();
    assert!(
        seen > 0.0 && seen <= reported + 2.0 * per_pass + 2.0,
        "LaunchDarkly saw {seen} requests; the instances report {reported} over {runs_now} passes"
    );

    // The holder dies without handing over; the standby takes over within a lease time.
    holder.kill();
    let deadline = Instant::now() + Duration::from_secs(15);
    while standby.metric("audithook_catchup_runs_total").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the standby did not take over: {}",
            standby.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(standby.metric("audithook_catchup_lease_held").await, 1.0);
    // A graceful stop hands the lease back at once.
    standby.terminate();
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM leases")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(leases, 0);
    conn.close().await.unwrap();
    drop((a, b));
    fake.stop();
    db.remove().await;
}

#[tokio::test]
async fn unreachable_or_misconfigured_database_fails_start_with_a_clear_message() {
    let run = |url: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_audithook"))
            .arg("serve")
            .env("AUDITHOOK_LISTEN", "127.0.0.1:0")
            .env("AUDITHOOK_DATABASE_URL", url)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Nothing listens on port 1.
    let (code, err) = run("postgres://app:s3cret-pw@127.0.0.1:1/audit");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot connect to Postgres database postgres://app:***@127.0.0.1:1/audit"),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");
    assert!(!err.contains("s3cret-pw"), "{err}");
    let (code, err) = run("postgres://db.invalid/audit?password=s3cret-pw&sslmode=nonsense");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("password=***"), "{err}");
    assert!(err.contains("sslmode") || err.contains("ssl_mode"), "{err}");
    assert!(!err.contains("s3cret-pw"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_audithook"))
        .arg("serve")
        .env("AUDITHOOK_DATABASE_URL", "postgres://app@127.0.0.1:1/audit")
        .env("AUDITHOOK_DATABASE_MAX_CONNECTIONS", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 is not in 2..=1000"));

    let Some(admin) = crate::helpers::postgres_url() else {
        return;
    };
    let (base, _) = admin.rsplit_once('/').unwrap();
    let (scheme_user, host) = base.rsplit_once('@').unwrap();
    let (scheme, user) = scheme_user.rsplit_once("//").unwrap();
    let user = user.split(':').next().unwrap();
    let wrong = format!("{scheme}//{user}:wrong-s3cret@{host}/postgres");
    let (code, err) = run(&wrong);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("wrong-s3cret"), "{err}");
    let (code, err) = run(&format!("{base}/no_such_database"));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("database \"no_such_database\" does not exist"),
        "{err}"
    );
}

/// A TCP proxy to Postgres that can cut every connection and refuse new ones, as a lost
/// database server or network would.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (target, cut) = (target.clone(), cut2.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Proxy { port, up, cut }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_lost_while_running_answers_503_and_recovers_without_restart() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    // The store's URL points at the proxy instead of the server.
    let (scheme_user, rest) = db.url.rsplit_once('@').unwrap();
    let (host_port, dbname) = rest.split_once('/').unwrap();
    let proxy = Proxy::start(host_port.to_owned()).await;
    let via_proxy = format!("{scheme_user}@127.0.0.1:{}/{dbname}", proxy.port);
    let app = Instance::start(&via_proxy, &[]).await;
    let client = reqwest::Client::new();
    let health = || {
        let client = client.clone();
        let url = format!("{}/healthz", app.base);
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    let body = |id: &str| hook_payload(id, 1_700_000_000_000).to_string();
    assert_eq!(post(&client, &app.base, &body("before")).await, 202);

    proxy.down();
    let started = Instant::now();
    let r = client
        .post(format!("{}/hooks/launchdarkly", app.base))
        .bearer_auth(HOOK_TOKEN)
        .header("content-type", "application/json")
        .body(body("during"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["code"], "unavailable");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(health().await, 503);
    let read = client
        .get(format!("{}/api/v2/auditlog", app.base))
        .header("authorization", API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 503);

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    while health().await != 200 {
        assert!(Instant::now() < deadline, "no recovery: {}", app.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // LaunchDarkly's retry of the refused delivery is stored now.
    assert_eq!(post(&client, &app.base, &body("during")).await, 202);
    assert_eq!(post(&client, &app.base, &body("after")).await, 202);
    assert_eq!(post(&client, &app.base, &body("before")).await, 200);
    assert_eq!(stored_counts(&db.url).await, (3, 3));
    let log = app.log_text();
    assert!(
        log.contains("audithook:***@127.0.0.1"),
        "the log names the database: {log}"
    );
    assert!(
        !log.contains(":audithook@"),
        "no password in the log: {log}"
    );
    drop(app);
    db.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_into_postgres_killed_and_rerun_stores_each_entry_once() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    crate::backfill::sigkill_then_rerun(&db).await;
    db.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_agree_on_generated_tokens() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let env = [("AUDITHOOK_HOOK_TOKEN", ""), ("AUDITHOOK_API_TOKEN", "")];
    let (a, b) = tokio::join!(
        Instance::start(&db.url, &env),
        Instance::start(&db.url, &env)
    );
    let generated = |var: &str| -> Vec<String> {
        [a.log_text(), b.log_text()]
            .iter()
            .flat_map(|log| {
                log.lines()
                    .filter_map(|l| l.split(&format!("generated {var}=")).nth(1))
                    .map(|rest| rest.split(' ').next().unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let hook = generated("AUDITHOOK_HOOK_TOKEN");
    let read = generated("AUDITHOOK_API_TOKEN");
    assert_eq!(
        (hook.len(), read.len()),
        (1, 1),
        "each token printed once in all"
    );
    let client = reqwest::Client::new();
    let body = hook_payload("gen1", 1_700_000_000_000).to_string();
    let send = |base: &str, token: &str| {
        client
            .post(format!("{base}/hooks/launchdarkly"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    // The printed token works on both instances; the read token does not post.
    assert_eq!(send(&a.base, &hook[0]).await.unwrap().status(), 202);
    assert_eq!(send(&b.base, &hook[0]).await.unwrap().status(), 200);
    assert_eq!(send(&b.base, &read[0]).await.unwrap().status(), 401);
    for base in [&a.base, &b.base] {
        let r = client
            .get(format!("{base}/api/v2/auditlog/gen1"))
            .header("authorization", &read[0])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    drop((a, b));
    db.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_source_is_polled_by_one_instance_and_fails_over() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let now = crate::fake_tfc::now_ms();
    let tfc = crate::fake_tfc::FakeTfc::start(
        &crate::fake_tfc::events(300, now - 60_000, 60_000),
        crate::fake_tfc::FakeConfig::default(),
    )
    .await;
    let cbc = crate::fake_cbc::FakeCbc::start(
        &crate::fake_cbc::records(200, now - 3_600_000, 10_000),
        crate::fake_cbc::FakeConfig::default(),
    )
    .await;
    let env = [
        ("TFC_API_TOKEN", crate::fake_tfc::ORG_TOKEN),
        ("TFC_BASE_URL", tfc.base.as_str()),
        ("CBC_API_ID", crate::fake_cbc::API_ID),
        ("CBC_API_SECRET", crate::fake_cbc::API_SECRET),
        ("CBC_ORG_KEY", crate::fake_cbc::ORG_KEY),
        ("CBC_BASE_URL", cbc.base.as_str()),
        ("AUDITHOOK_POLL_INTERVAL", "1s"),
    ];
    let (a, b) = tokio::join!(
        Instance::start(&db.url, &env),
        Instance::start(&db.url, &env)
    );
    let want = 300 + cbc.records().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_ids_at(&db.url).len() < want {
        assert!(
            Instant::now() < deadline,
            "the pollers did not store everything"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several intervals with both running: each source polled from one instance only.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for source in ["tfc", "cbc"] {
        let held = format!("audithook_source_lease_held{{source=\"{source}\"}}");
        let requests = format!("audithook_source_requests_total{{source=\"{source}\"}}");
        let (ha, hb) = (a.metric(&held).await, b.metric(&held).await);
        assert_eq!(ha + hb, 1.0, "{source}: {ha} + {hb}");
        let standby = if ha == 1.0 { &b } else { &a };
        assert_eq!(
            standby.metric(&requests).await,
            0.0,
            "{source}: the standby polled"
        );
    }
    assert_eq!(stored_ids_at(&db.url).len(), want);
    // The TFC holder dies; the other instance takes over and stores what arrives next.
    let held = "audithook_source_lease_held{source=\"tfc\"}";
    let (mut holder, standby) = if a.metric(held).await == 1.0 {
        (a, b)
    } else {
        (b, a)
    };
    holder.kill();
    tfc.arrive();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_ids_at(&db.url).len() < want + 1 {
        assert!(
            Instant::now() < deadline,
            "no failover: {}",
            standby.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(standby.metric(held).await, 1.0);
    drop(standby);
    tfc.stop();
    cbc.stop();
    db.remove().await;
}

/// Ids in arrival (`seq`) order.
fn ids_by_seq(url: &str) -> Vec<String> {
    crate::helpers::query_strings(url, "SELECT id FROM events ORDER BY seq")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_backlog_and_restarted_forwarding_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("a.db").display());
    // A backlog: 400 events stored before the destination exists.
    let first = Instance::start(&db_url, &[]).await;
    let client = reqwest::Client::new();
    for i in 0..400 {
        let body = hook_payload(&format!("k-{i:04}"), 1_700_000_000_000 + i).to_string();
        assert_eq!(post(&client, &first.base, &body).await, 202);
    }
    drop(first);
    let rx = crate::fake_receivers::HttpReceiver::start().await;
    rx.state.delay_ms.store(15, Ordering::SeqCst);
    let file = dir.path().join("destinations.toml");
    std::fs::write(
        &file,
        format!(
            "[[destinations]]\nname = \"slow\"\nkind = \"http\"\nurl = \"{}/\"\nbatch = 10\nfrom = 0\n",
            rx.base
        ),
    )
    .unwrap();
    let file = file.display().to_string();
    let env = [("AUDITHOOK_DESTINATIONS", file.as_str())];
    let mut inst = Instance::start(&db_url, &env).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while rx.envelope_ids().len() < 150 {
        assert!(Instant::now() < deadline, "{}", inst.log_text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    inst.kill();
    let before = rx.envelope_ids().len();
    assert!(before < 400, "the kill came too late to test anything");
    let inst = Instance::start(&db_url, &env).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let want = ids_by_seq(&db_url);
    assert_eq!(want.len(), 400);
    loop {
        let got = rx.envelope_ids();
        let mut unique = got.clone();
        unique.sort();
        unique.dedup();
        if unique.len() == 400 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", inst.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let got = rx.envelope_ids();
    // Nothing lost; at most the request in flight at the kill (one batch) sent twice; in
    // arrival order but for that resend.
    let duplicates = got.len() - 400;
    assert!(duplicates <= 10, "{duplicates} duplicates");
    let mut seen = HashSet::new();
    let firsts: Vec<String> = got
        .iter()
        .filter(|i| seen.insert((*i).clone()))
        .cloned()
        .collect();
    assert_eq!(firsts, want);
    drop(inst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_each_event_once_per_destination() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let rx = crate::fake_receivers::HttpReceiver::start().await;
    let es = crate::fake_receivers::FakeEs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("destinations.toml");
    std::fs::write(
        &file,
        format!(
            "[[destinations]]\nname = \"hook\"\nkind = \"http\"\nurl = \"{}/\"\n\n[[destinations]]\nname = \"es\"\nkind = \"elasticsearch\"\nurl = \"{}\"\nindex = \"audit\"\nbatch = 50\n",
            rx.base, es.base
        ),
    )
    .unwrap();
    let file = file.display().to_string();
    let env = [("AUDITHOOK_DESTINATIONS", file.as_str())];
    let (a, b) = tokio::join!(
        Instance::start(&db.url, &env),
        Instance::start(&db.url, &env)
    );
    let client = reqwest::Client::new();
    for i in 0..200 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let body = hook_payload(&format!("two-{i:04}"), 1_700_000_000_000 + i).to_string();
        assert_eq!(post(&client, base, &body).await, 202);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while rx.envelope_ids().len() < 200 || es.state.docs.lock().unwrap().len() < 200 {
        assert!(
            Instant::now() < deadline,
            "{}\n{}",
            a.log_text(),
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Each event once to each destination, in arrival order.
    assert_eq!(rx.envelope_ids(), ids_by_seq(&db.url));
    let es_items: usize = es.state.bulks.lock().unwrap().iter().map(Vec::len).sum();
    assert_eq!(es_items, 200);
    for name in ["hook", "es"] {
        let held = format!("audithook_destination_lease_held{{destination=\"{name}\"}}");
        assert_eq!(a.metric(&held).await + b.metric(&held).await, 1.0, "{name}");
    }
    drop((a, b));
    db.remove().await;
}
