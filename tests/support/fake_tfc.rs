//! A fake Terraform Cloud audit-trail API (`GET /api/v2/organization/audit-trail`) for
//! tests and benchmarks, faithful to `shared/reference/tfc-audit-trails-api.md` including
//! its awkward parts: newest first by page number; `since` (inclusive here, as Grove reads
//! it) in `...SSS Z` or `...SS Z` form; `page[size]` clamped to the server's maximum; only
//! the last 14 days listed; 200 with empty data for a user or team token, 401 for any
//! other; 30 requests per second in a sliding second, 429 with `X-RateLimit-Reset` as
//! float seconds; events created while a client walks the pages (pushing older ones down);
//! answers evaluated after a jittered latency, so concurrent pages are answered out of
//! order; injected 500/503, dropped connections and HTML error pages with status 200.

#![allow(dead_code)]

#[path = "loopback.rs"]
mod loopback;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub const ORG_TOKEN: &str = "org-token.atlasv1.fake";
pub const USER_TOKEN: &str = "user-token.atlasv1.fake";
pub const RETENTION_MS: i64 = 14 * 24 * 3600 * 1000;

#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Base latency of an answer; each answer waits this plus up to half of it more.
    pub latency: Duration,
    /// Requests per sliding second (None: unlimited).
    pub rate_limit: Option<usize>,
    /// The largest `page[size]` honoured.
    pub max_page_size: u64,
    /// Every Nth request creates a new event (now) before it is answered.
    pub arrive_every: Option<u64>,
    /// Every Nth request answers 500 or 503.
    pub fail_every: Option<u64>,
    /// Every Nth request drops the connection mid-answer.
    pub drop_every: Option<u64>,
    /// Every Nth request answers 200 with an HTML error page.
    pub html_every: Option<u64>,
    /// Every answer carries an event whose `timestamp` is a number.
    pub bad_type: bool,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            rate_limit: Some(30),
            max_page_size: 1000,
            arrive_every: None,
            fail_every: None,
            drop_every: None,
            html_every: None,
            bad_type: false,
        }
    }
}

#[derive(Default, Debug)]
pub struct FakeStats {
    pub requests: AtomicU64,
    pub ok: AtomicU64,
    pub rate_limited: AtomicU64,
    pub faults: AtomicU64,
    pub arrived: AtomicU64,
}

struct Inner {
    /// (date, id, raw), newest first (date descending, then id descending).
    events: Mutex<Vec<(i64, String, String)>>,
    cfg: FakeConfig,
    stats: FakeStats,
    window: Mutex<VecDeque<Instant>>,
}

pub struct FakeTfc {
    pub base: String,
    inner: Arc<Inner>,
    shutdown: tokio_util::sync::CancellationToken,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// One audit-trail event as the API lists it (`resource.meta` an object or null, as the
/// reference notes).
pub fn event(i: u64, date: i64) -> Value {
    let id = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        i.wrapping_mul(2_654_435_761) as u32,
        i % 0xffff,
        i % 0xfff,
        (i / 7) % 0xfff,
        i
    );
    let kinds = [
        ("workspace", "update"),
        ("run", "create"),
        ("authentication_token", "create"),
        ("variable", "destroy"),
    ];
    let (rtype, action) = kinds[(i % 4) as usize];
    json!({
        "id": id,
        "version": "0",
        "type": "Resource",
        "timestamp": rfc3339(date),
        "auth": {
            "accessor_id": format!("user-{:016x}", i % 13),
            "description": format!("user{}", i % 13),
            "type": if i % 5 == 0 { "Impersonated" } else { "Client" },
            "impersonator_id": null,
            "organization_id": "org-AGLwRmx1snv34Yts"
        },
        "request": {"id": format!("req-{i}")},
        "resource": {
            "id": format!("{}-{:x}", &rtype[..2], i),
            "type": rtype,
            "action": action,
            "meta": if i % 3 == 0 { json!({"workspace": "ws-prod"}) } else { Value::Null }
        }
    })
}

/// `n` events, newest first, `step` ms apart from `start` back; every `burst`th date is
/// shared by three events.
pub fn events(n: u64, start: i64, step: i64) -> Vec<Value> {
    let mut out = Vec::with_capacity(n as usize);
    let mut date = start;
    for i in 0..n {
        out.push(event(i, date));
        if i % 10 != 3 && i % 10 != 4 {
            date -= step;
        }
    }
    out
}

impl FakeTfc {
    pub async fn start(events: &[Value], cfg: FakeConfig) -> FakeTfc {
        let mut rows: Vec<(i64, String, String)> = events
            .iter()
            .map(|e| {
                let date = chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap())
                    .unwrap()
                    .timestamp_millis();
                (date, e["id"].as_str().unwrap().to_owned(), e.to_string())
            })
            .collect();
        rows.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
        let inner = Arc::new(Inner {
            events: Mutex::new(rows),
            cfg,
            stats: FakeStats::default(),
            window: Mutex::new(VecDeque::new()),
        });
        let app = axum::Router::new()
            .route("/api/v2/organization/audit-trail", axum::routing::get(list))
            .with_state(inner.clone());
        let (base, shutdown) = loopback::serve(app).await;
        FakeTfc {
            base,
            inner,
            shutdown,
        }
    }

    pub fn stats(&self) -> &FakeStats {
        &self.inner.stats
    }

    /// Every event's id the API lists now (within retention).
    pub fn listed_ids(&self) -> Vec<String> {
        let floor = now_ms() - RETENTION_MS;
        let events = self.inner.events.lock().unwrap();
        events
            .iter()
            .filter(|e| e.0 >= floor)
            .map(|e| e.1.clone())
            .collect()
    }

    /// The raw JSON of event `id`.
    pub fn raw(&self, id: &str) -> Option<String> {
        let events = self.inner.events.lock().unwrap();
        events.iter().find(|e| e.1 == id).map(|e| e.2.clone())
    }

    /// Creates a new event now.
    pub fn arrive(&self) {
        arrive(&self.inner);
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

fn arrive(inner: &Inner) {
    let n = inner.stats.arrived.fetch_add(1, Ordering::SeqCst);
    let e = event(1_000_000 + n, now_ms());
    let row = (
        now_ms(),
        e["id"].as_str().unwrap().to_owned(),
        e.to_string(),
    );
    let mut events = inner.events.lock().unwrap();
    let at = events.partition_point(|x| (x.0, &x.1) > (row.0, &row.1));
    events.insert(at, row);
}

fn errors(status: StatusCode, title: &str, detail: &str) -> Response {
    (
        status,
        axum::Json(
            json!({"errors": [{"status": status.as_u16(), "title": title, "detail": detail}]}),
        ),
    )
        .into_response()
}

fn parse_since(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}

async fn list(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let cfg = &inner.cfg;
    let n = inner.stats.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let user_token = auth == format!("Bearer {USER_TOKEN}");
    if auth != format!("Bearer {ORG_TOKEN}") && !user_token {
        return errors(StatusCode::UNAUTHORIZED, "unauthorized", "");
    }
    let mut limit_headers = vec![("x-ratelimit-limit", "30".to_owned())];
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
            let reset = Duration::from_secs(1) - now.duration_since(*w.front().unwrap());
            drop(w);
            inner.stats.rate_limited.fetch_add(1, Ordering::SeqCst);
            let mut r = errors(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
                "You have exceeded the API's rate limit.",
            );
            r.headers_mut().insert(
                "x-ratelimit-reset",
                HeaderValue::from_str(&format!("{:.3}", reset.as_secs_f64())).unwrap(),
            );
            r.headers_mut()
                .insert("x-ratelimit-limit", HeaderValue::from_static("30"));
            return r;
        }
        w.push_back(now);
        let reset = Duration::from_secs(1) - now.duration_since(*w.front().unwrap());
        limit_headers.push(("x-ratelimit-reset", format!("{:.3}", reset.as_secs_f64())));
    }
    // Limits are counted on arrival; the answer then takes its time (and concurrent
    // answers are evaluated in no particular order).
    if !cfg.latency.is_zero() {
        let extra = rand::random::<u64>() % (cfg.latency.as_millis() as u64 / 2 + 1);
        tokio::time::sleep(cfg.latency + Duration::from_millis(extra)).await;
    }
    if cfg.fail_every.is_some_and(|k| n % k == 0) {
        inner.stats.faults.fetch_add(1, Ordering::SeqCst);
        let status = if n % 2 == 0 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return errors(status, "internal", "injected failure");
    }
    if cfg.html_every.is_some_and(|k| n % k == 0) {
        inner.stats.faults.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::OK,
            [("content-type", "text/html")],
            "<!DOCTYPE html><html><body><h1>We're sorry, but something went wrong.</h1></body></html>",
        )
            .into_response();
    }
    if cfg.arrive_every.is_some_and(|k| n % k == 0) {
        arrive(&inner);
    }
    let (mut number, mut size, mut since) = (1u64, 1000u64, i64::MIN);
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "page[number]" => match v.parse::<u64>() {
                Ok(p) if p >= 1 => number = p,
                _ => {
                    return errors(
                        StatusCode::BAD_REQUEST,
                        "bad request",
                        "invalid page number",
                    )
                }
            },
            "page[size]" => match v.parse::<u64>() {
                Ok(s) if s >= 1 => size = s.min(cfg.max_page_size),
                _ => return errors(StatusCode::BAD_REQUEST, "bad request", "invalid page size"),
            },
            "since" => match parse_since(&v) {
                Some(t) => since = t,
                None => return errors(StatusCode::BAD_REQUEST, "bad request", "invalid since"),
            },
            _ => {}
        }
    }
    let floor = now_ms() - RETENTION_MS;
    let (body, total_count) = {
        let events = inner.events.lock().unwrap();
        let listed: Vec<&(i64, String, String)> = if user_token {
            Vec::new()
        } else {
            events
                .iter()
                .filter(|e| e.0 >= since && e.0 >= floor)
                .collect()
        };
        let total = listed.len() as u64;
        let offset = (number - 1).saturating_mul(size) as usize;
        let page: Vec<&str> = listed
            .iter()
            .skip(offset)
            .take(size as usize)
            .map(|e| e.2.as_str())
            .collect();
        let mut data = page.join(",");
        if cfg.bad_type && !data.is_empty() {
            data.push_str(r#",{"id":"bad","timestamp":5}"#);
        }
        (data, total)
    };
    let total_pages = total_count.div_ceil(size);
    let next = (number < total_pages).then_some(number + 1);
    let prev = (number > 1).then(|| number - 1);
    let body = format!(
        "{{\"data\":[{body}],\"pagination\":{}}}",
        json!({
            "current_page": number,
            "page_size": size,
            "prev_page": prev,
            "next_page": next,
            "total_pages": total_pages,
            "total_count": total_count
        })
    );
    inner.stats.ok.fetch_add(1, Ordering::SeqCst);
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
    let mut r = (
        StatusCode::OK,
        [("content-type", "application/vnd.api+json")],
        body,
    )
        .into_response();
    for (k, v) in &limit_headers {
        r.headers_mut()
            .insert(*k, HeaderValue::from_str(v).unwrap());
    }
    r
}
