//! Ingest benchmark (issues 2 and 6): distinct ~1.2 KB default-payload events posted over 64
//! connections for 15 s each to
//! (a) `audithook serve` with durable SQLite storage,
//! (c) one `audithook serve` on Postgres, (d) two `audithook serve` processes sharing one
//! Postgres database, the connections split between them (when a server is given), and
//! (b) a do-nothing axum endpoint that only checks the bearer token and parses the JSON,
//! in the same run, each in its own processes. Reports req/s, p50/p99, peak RSS and each
//! case over (b), and checks that every 2xx'd event is in the store afterwards.
//!
//! Run: `cargo bench --bench ingest` (`BENCH_SECONDS`, `BENCH_CONNECTIONS` override;
//! `AUDITHOOK_BENCH_POSTGRES_URL`, else `AUDITHOOK_TEST_POSTGRES_URL`, names the Postgres
//! server; the benchmark creates a fresh database there for each Postgres case).

#[path = "../tests/support/pg.rs"]
mod pg;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::net::TcpStream;

const TOKEN: &str = "bench-hook-token";

fn main() {
    if std::env::var("AUDITHOOK_BENCH_NULL_SERVER").is_ok() {
        return null_server();
    }
    let seconds: u64 = env_or("BENCH_SECONDS", 15);
    let connections: usize = env_or("BENCH_CONNECTIONS", 64);
    let duration = Duration::from_secs(seconds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // (a) SQLite.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bench.db");
    let sqlite_url = format!("sqlite://{}", db.display());
    let (a, rss_a) = run_instances(&rt, &sqlite_url, 1, connections, duration, 0);
    let conn = rusqlite::Connection::open(&db).expect("open bench db");
    let stored_a: HashSet<String> = conn
        .prepare("SELECT id FROM events")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("read ids");

    // (c) and (d) Postgres, one and two instances, when a server is given.
    let pg_admin = std::env::var("AUDITHOOK_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("AUDITHOOK_TEST_POSTGRES_URL"))
        .ok();
    let mut pg_runs = Vec::new();
    if let Some(admin) = &pg_admin {
        for (instances, offset) in [(1usize, 2u64 << 40), (2, 3 << 40)] {
            let (name, url) = rt.block_on(pg::fresh_database(admin, "audithook_bench"));
            let (r, rss) = run_instances(&rt, &url, instances, connections, duration, offset);
            let stored = rt.block_on(pg_ids(&url));
            rt.block_on(pg::drop_database(admin, &name));
            pg_runs.push((instances, r, rss, stored));
        }
    } else {
        println!("(set AUDITHOOK_BENCH_POSTGRES_URL or AUDITHOOK_TEST_POSTGRES_URL for the Postgres cases)");
    }

    // (b) the do-nothing server.
    let port_b = free_port();
    let mut null = Command::new(std::env::current_exe().expect("own path"))
        .env("AUDITHOOK_BENCH_NULL_SERVER", port_b.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("start null server");
    rt.block_on(wait_listening(port_b));
    let b = rt.block_on(load(&[port_b], connections, duration, 1 << 41));
    let rss_b = peak_rss_kib(&null);
    stop(&mut null);

    println!(
        "ingest benchmark: {connections} connections, {seconds} s each, ~{} B events",
        event(0).len()
    );
    println!(
        "{:<40} {:>10} {:>9} {:>9} {:>10} {:>8} {:>6}",
        "", "req/s", "p50 ms", "p99 ms", "peak RSS", "errors", "vs b"
    );
    let mut rows: Vec<(String, &LoadResult, u64)> =
        vec![("(a) audithook, durable SQLite".into(), &a, rss_a)];
    for (instances, r, rss, _) in &pg_runs {
        let label = if *instances == 1 {
            "(c) audithook, Postgres, 1 instance".to_owned()
        } else {
            format!("(d) audithook, Postgres, {instances} instances")
        };
        rows.push((label, r, *rss));
    }
    rows.push(("(b) do-nothing axum (auth + parse)".into(), &b, rss_b));
    for (name, r, rss) in rows {
        println!(
            "{name:<40} {:>10.0} {:>9.2} {:>9.2} {:>7} MB {:>8} {:>6.2}",
            r.rps(),
            r.percentile(0.50),
            r.percentile(0.99),
            rss / 1024,
            r.errors,
            r.rps() / b.rps()
        );
    }
    println!("(peak RSS of several instances is their sum)");
    let mut failed = false;
    let mut check = |name: &str, r: &LoadResult, stored: &HashSet<String>| {
        let missing = r.acked.iter().filter(|id| !stored.contains(*id)).count();
        println!(
            "stored check {name}: {} acknowledged, {} rows in the store, {missing} acknowledged but missing",
            r.acked.len(),
            stored.len()
        );
        failed |= missing > 0 || r.errors > 0;
    };
    check("(a)", &a, &stored_a);
    for (instances, r, _, stored) in &pg_runs {
        check(if *instances == 1 { "(c)" } else { "(d)" }, r, stored);
    }
    if failed {
        eprintln!("FAILED: acknowledged events missing or errors");
        std::process::exit(1);
    }
}

/// Starts `instances` audithook processes on `url`, loads them together (connections spread
/// evenly), stops them; returns the load result and the processes' summed peak RSS.
fn run_instances(
    rt: &tokio::runtime::Runtime,
    url: &str,
    instances: usize,
    connections: usize,
    duration: Duration,
    first_event: u64,
) -> (LoadResult, u64) {
    let mut children = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..instances {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_audithook"))
            .arg("serve")
            .env("AUDITHOOK_LISTEN", format!("127.0.0.1:{port}"))
            .env("AUDITHOOK_DATABASE_URL", url)
            .env("AUDITHOOK_HOOK_TOKEN", TOKEN)
            .env("AUDITHOOK_API_TOKEN", "bench-read-token")
            .env("RUST_LOG", "warn")
            .env_remove("LD_API_TOKEN")
            .stdout(Stdio::null())
            .spawn()
            .expect("start audithook");
        rt.block_on(wait_listening(port));
        children.push(child);
        ports.push(port);
    }
    let result = rt.block_on(load(&ports, connections, duration, first_event));
    let rss = children.iter().map(peak_rss_kib).sum();
    for child in &mut children {
        stop(child);
    }
    (result, rss)
}

async fn pg_ids(url: &str) -> HashSet<String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar("SELECT id FROM events")
        .fetch_all(&mut conn)
        .await
        .expect("read ids")
        .into_iter()
        .collect()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server on port {port} did not start");
}

fn peak_rss_kib(child: &Child) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// A distinct event shaped like LaunchDarkly's default payload (~1.2 KB).
fn event(n: u64) -> String {
    let ms = 1_700_000_000_000u64 + n;
    format!(
        r#"{{"_links":{{"canonical":{{"href":"/api/v2/flags/default/flag-{n}","type":"application/json"}},"parent":{{"href":"/api/v2/auditlog","type":"application/json"}},"self":{{"href":"/api/v2/auditlog/{n:024x}","type":"application/json"}},"site":{{"href":"/default/production/features/flag-{n}","type":"text/html"}}}},"_id":"{n:024x}","_accountId":"5c7d1d9e0e1f2a3b4c5d6e7f","timestamp":{{"milliseconds":{ms},"seconds":{s},"rfc3339":"2023-11-14T22:13:20Z","simple":"2023-11-14 22:13:20"}},"kind":"flag","name":"Flag number {n}","description":"- Turned on the flag","shortDescription":"","comment":"rollout step {n}","member":{{"_links":{{"parent":{{"href":"/api/v2/members","type":"application/json"}},"self":{{"href":"/api/v2/members/569f514183f2164430000002","type":"application/json"}}}},"_id":"569f514183f2164430000002","email":"sandy@example.com","firstName":"Sandy","lastName":"Smith"}},"titleVerb":"turned on the flag","markdownTitle":"[Sandy Smith](mailto:sandy@example.com) turned on the flag [Flag number {n}](https://app.launchdarkly.com/default/production/features/flag-{n}) in `Production`","title":"Sandy Smith turned on the flag Flag number {n} in 'Production'","target":{{"_links":null,"name":"Flag number {n}","resources":["proj/default:env/production:flag/flag-{n}"]}},"accesses":[{{"action":"updateOn","resource":"proj/default:env/production:flag/flag-{n}"}}]}}"#,
        s = ms / 1000
    )
}

struct LoadResult {
    elapsed: Duration,
    latencies_us: Vec<u32>,
    errors: u64,
    acked: Vec<String>,
}

impl LoadResult {
    fn rps(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 * p) as usize).min(self.latencies_us.len() - 1);
        self.latencies_us[i] as f64 / 1000.0
    }
}

/// `connections` keep-alive HTTP/1.1 connections spread over `ports`, each posting distinct
/// events back to back.
async fn load(
    ports: &[u16],
    connections: usize,
    duration: Duration,
    first_event: u64,
) -> LoadResult {
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(first_event));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let counter = counter.clone();
        let port = ports[c % ports.len()];
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            stream.set_nodelay(true).ok();
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let (mut lat, mut errors, mut acked) = (Vec::new(), 0u64, Vec::new());
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let body = event(n);
                let req = hyper::Request::post("/hooks/launchdarkly")
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .body(Full::new(Bytes::from(body)))
                    .expect("request");
                let t = Instant::now();
                match sender.send_request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        lat.push(t.elapsed().as_micros() as u32);
                        if ok {
                            acked.push(format!("{n:024x}"));
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (lat, errors, acked)
        }));
    }
    let mut result = LoadResult {
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
        errors: 0,
        acked: Vec::new(),
    };
    for t in tasks {
        let (lat, errors, acked) = t.await.expect("load task");
        result.latencies_us.extend(lat);
        result.errors += errors;
        result.acked.extend(acked);
    }
    result.elapsed = start.elapsed();
    result.latencies_us.sort_unstable();
    result
}

/// The comparison endpoint: checks the bearer token and parses the JSON, nothing else.
fn null_server() {
    use axum::http::{HeaderMap, StatusCode};
    let port: u16 = env_or("AUDITHOOK_BENCH_NULL_SERVER", 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        async fn hook(headers: HeaderMap, body: Bytes) -> StatusCode {
            let expected = format!("Bearer {TOKEN}");
            if headers.get("authorization").map(|v| v.as_bytes()) != Some(expected.as_bytes()) {
                return StatusCode::UNAUTHORIZED;
            }
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(_) => StatusCode::ACCEPTED,
                Err(_) => StatusCode::BAD_REQUEST,
            }
        }
        let app = axum::Router::new().route("/hooks/launchdarkly", axum::routing::post(hook));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let mut s =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("signal");
                s.recv().await;
            })
            .await
            .expect("serve");
    });
}
