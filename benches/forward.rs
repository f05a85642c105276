//! Forwarding benchmark (issue 12).
//!
//! 1. A backlog of `BENCH_EVENTS` (100,000) stored events drained by `audithook serve` to a
//!    fast fake Elasticsearch `_bulk` receiver (batch 1000), then to a fast `http` NDJSON
//!    receiver (batch 1000): events per second from start-up until the destination reports
//!    everything delivered, and the peak RSS of audithook and of the receiver.
//! 2. Hook ingest (64 connections, `BENCH_SECONDS` each) into `audithook serve` with no
//!    destination, with two destinations active (the same two receivers), and with the
//!    http one pointed at a port nothing listens on, in one run: the ratios, and how long
//!    the (live) destinations took to catch up after the load stopped.
//!
//! The receivers run in their own processes on the same machine. Run:
//! `cargo bench --bench forward`.

#[path = "support/ingest_load.rs"]
mod ingest_load;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ingest_load::*;

fn main() {
    if let Ok(spec) = std::env::var("FORWARD_BENCH_RECEIVER") {
        return receiver(&spec);
    }
    let n: u64 = env_or("BENCH_EVENTS", 100_000);
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let connections: usize = env_or("BENCH_CONNECTIONS", 64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("forwarding benchmark: backlog of {n} events (~1.2 KB), batch 1000");
    println!(
        "{:<34} {:>10} {:>9} {:>16} {:>16}",
        "", "events/s", "seconds", "audithook RSS", "receiver RSS"
    );
    for kind in ["elasticsearch", "http"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("bench.db");
        let url = format!("sqlite://{}", db.display());
        rt.block_on(populate(&url, n));
        let (mut rx, rx_port) = start_receiver(&rt, kind);
        let file = dir.path().join("destinations.toml");
        std::fs::write(&file, destination(kind, "bench", rx_port, "from = 0\n")).unwrap();
        let port = free_port();
        let t0 = Instant::now();
        let mut serve = start_serve(&rt, &url, port, Some(&file));
        let delivered = rt.block_on(wait_delivered(
            port,
            &["bench"],
            n,
            Duration::from_secs(600),
        ));
        let elapsed = t0.elapsed();
        let rss = peak_rss_kib(&serve);
        let rx_rss = peak_rss_kib(&rx);
        let received = rt.block_on(received(rx_port));
        stop(&mut serve);
        stop(&mut rx);
        println!(
            "{:<34} {:>10.0} {:>9.2} {:>13} MB {:>13} MB",
            format!("drain to {kind}"),
            n as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64(),
            rss / 1024,
            rx_rss / 1024
        );
        if delivered != n || received != n {
            eprintln!("FAILED: {kind}: {delivered} delivered, {received} received, want {n}");
            std::process::exit(1);
        }
    }

    // Ingest with and without two destinations, in one run.
    let (mut es, es_port) = start_receiver(&rt, "elasticsearch");
    let (mut http, http_port) = start_receiver(&rt, "http");
    let dead_port = free_port();
    let mut results = Vec::new();
    for (label, with, down) in [
        ("no destination", false, false),
        ("two destinations (es + http)", true, false),
        ("two destinations, http one down", true, true),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let file = dir.path().join("destinations.toml");
        std::fs::write(
            &file,
            format!(
                "{}\n{}",
                destination("elasticsearch", "es", es_port, ""),
                destination(
                    "http",
                    "http",
                    if down { dead_port } else { http_port },
                    "max_backoff = \"1s\"\n"
                )
            ),
        )
        .unwrap();
        let port = free_port();
        let mut serve = start_serve(&rt, &url, port, with.then_some(file.as_path()));
        let offset = (results.len() as u64) << 40;
        let r = rt.block_on(load(
            &[port],
            connections,
            Duration::from_secs(seconds),
            offset,
        ));
        let caught_up = if with {
            let t = Instant::now();
            let acked = r.acked.len() as u64;
            let names: &[&str] = if down { &["es"] } else { &["es", "http"] };
            let got = rt.block_on(wait_delivered(port, names, acked, Duration::from_secs(300)));
            assert_eq!(got, acked, "the destinations did not catch up");
            Some(t.elapsed())
        } else {
            None
        };
        let rss = peak_rss_kib(&serve);
        stop(&mut serve);
        results.push((label, r, rss, caught_up));
    }
    stop(&mut es);
    stop(&mut http);
    println!();
    println!("hook ingest, {connections} connections, {seconds} s each:");
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>10} {:>8} {:>18}",
        "", "req/s", "p50 ms", "p99 ms", "peak RSS", "errors", "caught up after"
    );
    let base = results[0].1.rps();
    for (label, r, rss, caught) in &results {
        println!(
            "{label:<34} {:>10.0} {:>9.2} {:>9.2} {:>7} MB {:>8} {:>18}",
            r.rps(),
            r.percentile(0.5),
            r.percentile(0.99),
            rss / 1024,
            r.errors,
            caught.map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
        );
    }
    println!(
        "ingest with two destinations / without: {:.2}; with one of them down / without: {:.2}",
        results[1].1.rps() / base,
        results[2].1.rps() / base
    );
}

fn destination(kind: &str, name: &str, port: u16, extra: &str) -> String {
    match kind {
        "elasticsearch" => format!(
            "[[destinations]]\nname = \"{name}\"\nkind = \"elasticsearch\"\nurl = \"http://127.0.0.1:{port}\"\nindex = \"audit\"\nbatch = 1000\n{extra}"
        ),
        _ => format!(
            "[[destinations]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/\"\nbatch = 1000\n{extra}"
        ),
    }
}

/// Stores `n` distinct events straight through the store, in batches, and indexes them for
/// search (as they would be by the time a new destination drains them).
async fn populate(url: &str, n: u64) {
    let metrics = std::sync::Arc::new(audithook::metrics::Metrics::new());
    let options = audithook::store::StoreOptions {
        background_indexer: false,
        ..Default::default()
    };
    let store = audithook::store::Store::open_with_options(url, &options, metrics)
        .await
        .expect("open store");
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + 1000).min(n))
            .map(|k| {
                audithook::event::normalise(event(k).as_bytes(), audithook::event::Channel::Hook)
                    .expect("event")
            })
            .collect();
        i += batch.len() as u64;
        store.insert_many(batch).await.expect("insert");
    }
    while store.index_step(10_000).await.expect("index") > 0 {}
    store.close().await;
}

fn start_serve(
    rt: &tokio::runtime::Runtime,
    url: &str,
    port: u16,
    destinations: Option<&std::path::Path>,
) -> Child {
    let mut cmd = serve_command(url, port);
    if let Some(d) = destinations {
        cmd.env("AUDITHOOK_DESTINATIONS", d);
    }
    let child = cmd.spawn().expect("start audithook");
    rt.block_on(wait_listening(port));
    child
}

/// Polls `/api/destinations/NAME` until each of `names` has delivered `want` (or the time
/// runs out); returns the smallest count delivered.
async fn wait_delivered(port: u16, names: &[&str], want: u64, limit: Duration) -> u64 {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + limit;
    loop {
        let mut least = u64::MAX;
        for name in names {
            let v: serde_json::Value = match client
                .get(format!("http://127.0.0.1:{port}/api/destinations/{name}"))
                .header("authorization", "bench-read-token")
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => serde_json::Value::Null,
            };
            least = least.min(v["delivered"].as_u64().unwrap_or(0));
        }
        if least >= want || Instant::now() > deadline {
            return least;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start_receiver(rt: &tokio::runtime::Runtime, kind: &str) -> (Child, u16) {
    let port = free_port();
    let child = Command::new(std::env::current_exe().expect("own path"))
        .env("FORWARD_BENCH_RECEIVER", format!("{kind}:{port}"))
        .stdout(Stdio::null())
        .spawn()
        .expect("start receiver");
    rt.block_on(wait_listening(port));
    (child, port)
}

async fn received(port: u16) -> u64 {
    reqwest::get(format!("http://127.0.0.1:{port}/count"))
        .await
        .expect("count")
        .text()
        .await
        .expect("count")
        .trim()
        .parse()
        .expect("count")
}

/// A fast receiver: Elasticsearch `_bulk` (every item 201, as Elasticsearch answers) or an
/// NDJSON `http` endpoint; `GET /count` answers the events received.
fn receiver(spec: &str) {
    use axum::body::Bytes;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let (kind, port) = spec.split_once(':').expect("kind:port");
    let port: u16 = port.parse().expect("port");
    let es = kind == "elasticsearch";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let ingest = move |body: Bytes| {
            let c = c.clone();
            async move {
                let lines = body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
                if !es {
                    c.fetch_add(lines as u64, Ordering::Relaxed);
                    return ([("content-type", "application/json")], "{}".to_owned());
                }
                let items = lines / 2;
                let mut out = String::with_capacity(40 + items * 90);
                out.push_str("{\"took\":1,\"errors\":false,\"items\":[");
                for i in 0..items {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str("{\"create\":{\"_index\":\"audit\",\"_version\":1,\"result\":\"created\",\"status\":201}}");
                }
                out.push_str("]}");
                c.fetch_add(items as u64, Ordering::Relaxed);
                ([("content-type", "application/json")], out)
            }
        };
        let c = count.clone();
        let app = axum::Router::new()
            .route("/count", axum::routing::get(move || {
                let c = c.clone();
                async move { c.load(Ordering::Relaxed).to_string() }
            }))
            .route("/_bulk", axum::routing::post(ingest.clone()))
            .route("/", axum::routing::post(ingest));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        serve_until_term(listener, app).await;
    });
}
