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
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;

#[path = "support/ingest_load.rs"]
mod ingest_load;

use ingest_load::*;

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
        let child = serve_command(url, port).spawn().expect("start audithook");
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
        serve_until_term(listener, app).await;
    });
}
