//! Export and search benchmark (issue 5) on 1,000,000 stored events (written through the
//! store by a loader), in one run:
//! (a) `GET /export.csv` of everything from `audithook serve` (columns id, date, kind, name,
//!     title, member_email), against (b) the `sqlite3` shell (`-csv`) selecting the same
//!     columns from the same database file; audithook's peak RSS;
//! and p50/p99 latencies of the read API: first page, the 1,000th page, a `q` search, a
//! `spec` filter, a one-day range.
//!
//! Run: `cargo bench --bench export` (`BENCH_EVENTS` overrides the count).
//! On Postgres: `BENCH_DATABASE=postgres cargo bench --bench export`, with the server named
//! by `AUDITHOOK_BENCH_POSTGRES_URL` (else `AUDITHOOK_TEST_POSTGRES_URL`); the benchmark
//! creates a fresh database there, and (b) is `psql`'s `\copy (SELECT ...) TO STDOUT CSV`.

#[path = "../tests/support/pg.rs"]
mod pg;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audithook::event::{normalise, Channel};
use audithook::metrics::Metrics;
use audithook::store::Store;
use futures_util::StreamExt;

const TOKEN: &str = "bench-read-token";
const START: i64 = 1_600_000_000_000;

fn event(i: u64) -> String {
    let env = ["production", "staging", "test"][(i % 3) as usize];
    let flag = i % 5000;
    format!(
        r#"{{"_links":{{"self":{{"href":"/api/v2/auditlog/{i:024x}","type":"application/json"}}}},"_id":"{i:024x}","_accountId":"acct","date":{date},"accesses":[{{"action":"updateOn","resource":"proj/default:env/{env}:flag/flag-{flag}"}}],"kind":"flag","name":"Flag {flag}","description":"- Turned on the flag","shortDescription":"","member":{{"_id":"m{m}","email":"member{m}@example.com","firstName":"Mem","lastName":"Ber{m}"}},"titleVerb":"turned on the flag","title":"Mem Ber{m} turned on the flag Flag {flag} in '{env}'","target":{{"name":"Flag {flag}","resources":["proj/default:env/{env}:flag/flag-{flag}"]}}}}"#,
        date = START + (i as i64) * 3000,
        m = i % 200
    )
}

fn peak_rss_mb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

fn main() {
    let n: u64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("export.db");
    let postgres = std::env::var("BENCH_DATABASE").is_ok_and(|v| v == "postgres");
    // For Postgres: the server's URL and the fresh database's name, to drop it at the end.
    let mut pg_db: Option<(String, String)> = None;
    let url = if postgres {
        let admin = std::env::var("AUDITHOOK_BENCH_POSTGRES_URL")
            .or_else(|_| std::env::var("AUDITHOOK_TEST_POSTGRES_URL"))
            .expect("BENCH_DATABASE=postgres needs AUDITHOOK_BENCH_POSTGRES_URL");
        let (name, url) = rt.block_on(pg::fresh_database(&admin, "audithook_bench"));
        pg_db = Some((admin, name));
        url
    } else {
        format!("sqlite://{}", db.display())
    };
    println!("backend: {}", if postgres { "postgres" } else { "sqlite" });
    rt.block_on(async {
        let store = Store::open(&url, Arc::new(Metrics::new()))
            .await
            .expect("store");
        let t = Instant::now();
        let mut i = 0;
        while i < n {
            let batch: Vec<_> = (i..(i + 10_000).min(n))
                .map(|k| normalise(event(k).as_bytes(), Channel::Rest).expect("valid"))
                .collect();
            store.insert_many(batch).await.expect("insert");
            i += 10_000;
        }
        store.close().await;
        println!(
            "loaded {n} events through the store in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    });

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_audithook"))
        .arg("serve")
        .env("AUDITHOOK_LISTEN", format!("127.0.0.1:{port}"))
        .env("AUDITHOOK_DATABASE_URL", &url)
        .env("AUDITHOOK_API_TOKEN", TOKEN)
        .env("AUDITHOOK_HOOK_TOKEN", "bench-hook-token")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("serve");
    let base = format!("http://127.0.0.1:{port}");
    rt.block_on(async {
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if client.get(format!("{base}/healthz")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Let the text-search index catch up first, so the export runs on a quiet server.
        let t = Instant::now();
        loop {
            let m = client
                .get(format!("{base}/metrics"))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .unwrap_or_default();
            if m.lines()
                .any(|l| l == "audithook_search_unindexed_events 0")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "search index caught up {:.1} s after start",
            t.elapsed().as_secs_f64()
        );
        // (a) the CSV export over HTTP and (b) the sqlite3 shell, alternately, three times
        // each; the best run of each side is compared (runs vary on a shared machine).
        let columns = "id,date,kind,name,title,member_email";
        let (mut a_runs, mut b_runs, mut bytes, mut b_bytes) = (Vec::new(), Vec::new(), 0usize, None);
        for _ in 0..3 {
            let t = Instant::now();
            let resp = client
                .get(format!("{base}/export.csv?columns={columns}"))
                .header("authorization", TOKEN)
                .send()
                .await
                .expect("export");
            bytes = 0;
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                bytes += chunk.expect("chunk").len();
            }
            a_runs.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let select = "SELECT id, date, kind, name, title, member_email FROM events ORDER BY date, id";
            let out = if postgres {
                Command::new("psql")
                    .arg(&url)
                    .arg("-c")
                    .arg(format!("\\copy ({select}) TO STDOUT WITH (FORMAT csv, HEADER)"))
                    .stdout(Stdio::piped())
                    .output()
            } else {
                Command::new("sqlite3")
                    .arg("-csv")
                    .arg("-header")
                    .arg(&db)
                    .arg(format!("{select};"))
                    .stdout(Stdio::piped())
                    .output()
            };
            if let Some(o) = out.ok().filter(|o| o.status.success()) {
                b_runs.push(t.elapsed().as_secs_f64());
                b_bytes = Some(o.stdout.len());
            }
        }
        let rss = peak_rss_mb(server.id());
        let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let a = best(&a_runs);
        println!(
            "(a) GET /export.csv, {n} events: best {a:.2} s of {a_runs:.2?}, {} MB, audithook peak RSS {rss} MB",
            bytes / 1_000_000
        );
        match b_bytes {
            Some(len) => {
                let b = best(&b_runs);
                let tool = if postgres { "psql \\copy ... CSV, same columns and database" } else { "sqlite3 -csv, same columns and file" };
                println!("(b) {tool}: best {b:.2} s of {b_runs:.2?}, {} MB", len / 1_000_000);
                println!("ratio a/b (best runs): {:.2}", a / b);
            }
            None => println!("(b) comparison shell not available"),
        }

        let cursor_sql = "SELECT date, id FROM events ORDER BY date DESC, id DESC LIMIT 1 OFFSET 9989";
        let cursor = if postgres {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("db");
            let (date, id): (i64, String) = sqlx::query_as(cursor_sql)
                .fetch_one(&mut conn)
                .await
                .expect("cursor");
            format!("{date}_{id}")
        } else {
            let conn = rusqlite::Connection::open(&db).expect("db");
            let (date, id): (i64, String) = conn
                .query_row(cursor_sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("cursor");
            format!("{date}_{id}")
        };
        let day_end = START + (n as i64) * 3000 / 2;
        let cases = [
            ("first page", "/api/v2/auditlog".to_string()),
            ("1,000th page", format!("/api/v2/auditlog?cursor={cursor}")),
            ("q search", "/api/v2/auditlog?q=flag%204242".to_string()),
            (
                "spec filter",
                "/api/v2/auditlog?spec=proj/default:env/staging:flag/flag-77".to_string(),
            ),
            (
                "one-day range",
                format!(
                    "/api/v2/auditlog?after={}&before={day_end}",
                    day_end - 86_400_000
                ),
            ),
        ];
        println!("read API on {n} events (limit 10), 20 requests each:");
        for (name, path) in cases {
            let mut lat = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                let r = client
                    .get(format!("{base}{path}"))
                    .header("authorization", TOKEN)
                    .send()
                    .await
                    .expect("get");
                assert!(r.status().is_success(), "{name}: {}", r.status());
                let _ = r.bytes().await;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat.sort_by(|a, b| a.total_cmp(b));
            println!(
                "  {name:<14} p50 {:>8.2} ms   p99 {:>8.2} ms",
                lat[10], lat[19]
            );
        }
    });
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(server.id().to_string())
        .status();
    let _ = server.wait();
    if let Some((admin, name)) = pg_db {
        rt.block_on(pg::drop_database(&admin, &name));
    }
}
