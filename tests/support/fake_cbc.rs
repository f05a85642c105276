//! A fake Carbon Black Cloud audit-log API for tests and benchmarks, faithful to
//! `shared/reference/cbc-audit-log-api.md` including its awkward parts: records without
//! ids, distinct records in one millisecond; `POST .../logs/_search` with `criteria.
//! create_time` `{start, end}` (end inclusive or exclusive, as configured: the reference
//! leaves it open), sorted ascending, `rows`/`start` paging with a capped result window
//! (`start + rows` over 10,000 answers 400); the read-once `GET .../logs/_queue` (records
//! answered are gone); `X-Auth-Token: SECRET/ID` (else 401); 429 with `Retry-After` over a
//! per-second budget; injected 500/503/502/504, dropped connections, HTML pages with 200.

#![allow(dead_code)]

#[path = "loopback.rs"]
mod loopback;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub const API_ID: &str = "ABCD123456";
pub const API_SECRET: &str = "ABCDEFGHIJKLMNO123456789";
pub const ORG_KEY: &str = "ABCD1234";
/// Largest `start + rows` a search serves.
pub const RESULT_WINDOW: u64 = 10_000;

#[derive(Clone, Debug)]
pub struct FakeConfig {
    pub latency: Duration,
    /// Whether `create_time.end` is inclusive.
    pub end_inclusive: bool,
    /// Searches per sliding second (None: unlimited); over it, 429 with Retry-After: 1.
    pub rate_limit: Option<usize>,
    pub fail_every: Option<u64>,
    pub drop_every: Option<u64>,
    pub html_every: Option<u64>,
    /// Every Nth search answers with a record whose `flagged` is a string.
    pub bad_type_every: Option<u64>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            end_inclusive: true,
            rate_limit: None,
            fail_every: None,
            drop_every: None,
            html_every: None,
            bad_type_every: None,
        }
    }
}

#[derive(Default, Debug)]
pub struct FakeStats {
    pub searches: AtomicU64,
    pub queue_reads: AtomicU64,
    pub rate_limited: AtomicU64,
    pub faults: AtomicU64,
    pub max_start: AtomicU64,
}

struct Inner {
    /// (create_time ms, raw JSON), oldest first, ties in a fixed order.
    records: Vec<(i64, String)>,
    /// The read-once queue: indexes into `records` not yet handed out.
    queue: Mutex<VecDeque<usize>>,
    cfg: FakeConfig,
    stats: FakeStats,
    window: Mutex<VecDeque<Instant>>,
}

pub struct FakeCbc {
    pub base: String,
    inner: Arc<Inner>,
    shutdown: tokio_util::sync::CancellationToken,
}

pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// One audit record as the API answers it.
pub fn record(i: u64, ms: i64) -> Value {
    let descriptions = [
        "Logged in successfully",
        "Updated policy Standard",
        "Created API key audit-reader",
        "Connector DEFGHIJKLM logged in successfully",
    ];
    json!({
        "org_key": ORG_KEY,
        "actor_ip": format!("10.{}.{}.{}", i % 7, (i / 7) % 250, i % 250),
        "actor": format!("user{}@example.com", i % 11),
        "request_url": if i % 3 == 0 { Value::Null } else { json!(format!("/appservices/v6/orgs/{ORG_KEY}/policies/{i}")) },
        "description": descriptions[(i % 4) as usize],
        "create_time": iso(ms),
        "flagged": i % 17 == 0,
        "verbose": false
    })
}

/// `n` records, oldest first, from `start` in steps of `step` ms, with every tenth
/// millisecond holding three distinct records.
pub fn records(n: u64, start: i64, step: i64) -> Vec<Value> {
    let mut out = Vec::with_capacity(n as usize);
    let mut ms = start;
    for i in 0..n {
        out.push(record(i, ms));
        if i % 10 != 1 && i % 10 != 2 {
            ms += step;
        }
    }
    out
}

fn parse_iso(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}

impl FakeCbc {
    pub async fn start(records: &[Value], cfg: FakeConfig) -> FakeCbc {
        let mut rows: Vec<(i64, String)> = records
            .iter()
            .map(|r| {
                (
                    parse_iso(r["create_time"].as_str().unwrap()).unwrap(),
                    r.to_string(),
                )
            })
            .collect();
        rows.sort();
        rows.dedup();
        let queue = (0..rows.len()).collect();
        let inner = Arc::new(Inner {
            records: rows,
            queue: Mutex::new(queue),
            cfg,
            stats: FakeStats::default(),
            window: Mutex::new(VecDeque::new()),
        });
        let app = axum::Router::new()
            .route(
                "/audit_log/v1/orgs/{org}/logs/_search",
                axum::routing::post(search),
            )
            .route(
                "/audit_log/v1/orgs/{org}/logs/_queue",
                axum::routing::get(read_queue),
            )
            .with_state(inner.clone());
        let (base, shutdown) = loopback::serve(app).await;
        FakeCbc {
            base,
            inner,
            shutdown,
        }
    }

    pub fn stats(&self) -> &FakeStats {
        &self.inner.stats
    }

    /// Every distinct record (raw JSON), oldest first.
    pub fn records(&self) -> Vec<String> {
        self.inner.records.iter().map(|r| r.1.clone()).collect()
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

fn authorised(headers: &HeaderMap, org: &str) -> bool {
    org == ORG_KEY
        && headers.get("x-auth-token").and_then(|v| v.to_str().ok())
            == Some(format!("{API_SECRET}/{API_ID}").as_str())
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"success": false, "message": message})),
    )
        .into_response()
}

async fn read_queue(
    State(inner): State<Arc<Inner>>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorised(&headers, &org) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    inner.stats.queue_reads.fetch_add(1, Ordering::SeqCst);
    let taken: Vec<usize> = {
        let mut q = inner.queue.lock().unwrap();
        let n = q.len().min(100);
        q.drain(..n).collect()
    };
    let results: Vec<&str> = taken.iter().map(|i| inner.records[*i].1.as_str()).collect();
    let remaining = inner.queue.lock().unwrap().len();
    let body = format!(
        "{{\"num_found\":{},\"num_available\":{},\"results\":[{}]}}",
        results.len(),
        remaining + results.len(),
        results.join(",")
    );
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

async fn search(
    State(inner): State<Arc<Inner>>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let cfg = &inner.cfg;
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
    if !authorised(&headers, &org) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let n = inner.stats.searches.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(limit) = cfg.rate_limit {
        let now = Instant::now();
        let mut w = inner.window.lock().unwrap();
        while w
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            w.pop_front();
        }
        if w.len() >= limit {
            inner.stats.rate_limited.fetch_add(1, Ordering::SeqCst);
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
            return r;
        }
        w.push_back(now);
    }
    if cfg.fail_every.is_some_and(|k| n % k == 0) {
        inner.stats.faults.fetch_add(1, Ordering::SeqCst);
        let status = [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::GATEWAY_TIMEOUT,
        ][(n % 4) as usize];
        return error(status, "injected failure");
    }
    if cfg.html_every.is_some_and(|k| n % k == 0) {
        inner.stats.faults.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::OK,
            [("content-type", "text/html")],
            "<html><body>Service temporarily unavailable</body></html>",
        )
            .into_response();
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Malformed JSON");
    };
    let rows = req["rows"].as_u64().unwrap_or(10);
    let start = req["start"].as_u64().unwrap_or(0);
    if rows > RESULT_WINDOW || start + rows > RESULT_WINDOW {
        return error(
            StatusCode::BAD_REQUEST,
            "Result window is too large, start + rows must be less than or equal to 10000",
        );
    }
    inner.stats.max_start.fetch_max(start, Ordering::SeqCst);
    let ct = &req["criteria"]["create_time"];
    let (lo, hi) = match (ct["start"].as_str(), ct["end"].as_str()) {
        (Some(a), Some(b)) => match (parse_iso(a), parse_iso(b)) {
            (Some(a), Some(b)) => (a, b),
            _ => return error(StatusCode::BAD_REQUEST, "Invalid create_time"),
        },
        _ => (i64::MIN, i64::MAX),
    };
    let matching: Vec<&str> = inner
        .records
        .iter()
        .filter(|r| r.0 >= lo && (r.0 < hi || (cfg.end_inclusive && r.0 == hi)))
        .map(|r| r.1.as_str())
        .collect();
    let found = matching.len();
    let mut results: Vec<&str> = matching
        .into_iter()
        .skip(start as usize)
        .take(rows as usize)
        .collect();
    let bad;
    if cfg.bad_type_every.is_some_and(|k| n % k == 0) && !results.is_empty() {
        bad = r#"{"org_key":"ABCD1234","actor":"x","create_time":"2024-01-01T00:00:00.000Z","flagged":"yes"}"#;
        results.push(bad);
    }
    let body = format!(
        "{{\"num_found\":{found},\"num_available\":{found},\"results\":[{}]}}",
        results.join(",")
    );
    let body = if cfg.drop_every.is_some_and(|k| n % k == 0) {
        inner.stats.faults.fetch_add(1, Ordering::SeqCst);
        let half = body.as_bytes()[..body.len() / 2].to_vec();
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
            Ok(half),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "dropped",
            )),
        ];
        Body::from_stream(futures_util::stream::iter(chunks))
    } else {
        Body::from(body)
    };
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}
