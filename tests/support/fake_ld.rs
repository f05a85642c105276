//! A fake LaunchDarkly REST API (`GET /api/v2/auditlog`) for tests and benchmarks, faithful
//! to the spec in `shared/reference/ld-rest-api-get-audit-log-entries.md`: the raw token in
//! `Authorization`; `limit` 1..=20 (else 400); `before`/`after` exclusive epoch ms; newest
//! first; `_links.next` while more remain (or none, in that mode); rate-limit headers with a
//! reset in epoch milliseconds and 429s over budget; injected 500/503 and dropped connections.

#![allow(dead_code)]

#[path = "loopback.rs"]
mod loopback;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// How the fake behaves.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    pub token: String,
    pub latency: Duration,
    pub next_links: bool,
    /// Route budget: requests per window.
    pub budget: Option<(u64, Duration)>,
    /// Every Nth request answers 500 or 503 (alternately).
    pub fail_every: Option<u64>,
    /// Every Nth request drops the connection mid-response.
    pub drop_every: Option<u64>,
    /// Every request answers this status and message.
    pub force: Option<(u16, String)>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            token: "api-fake-token".into(),
            latency: Duration::ZERO,
            next_links: true,
            budget: None,
            fail_every: None,
            drop_every: None,
            force: None,
        }
    }
}

/// What the fake saw.
#[derive(Default, Debug)]
pub struct FakeStats {
    pub requests: AtomicU64,
    pub ok: AtomicU64,
    pub rate_limited: AtomicU64,
    pub faults: AtomicU64,
}

struct Inner {
    /// (date, id, raw JSON), newest first: date descending, then id descending.
    entries: Vec<(i64, String, String)>,
    cfg: FakeConfig,
    stats: FakeStats,
    window: Mutex<(i64, u64)>,
}

/// A running fake.
pub struct FakeLd {
    pub base: String,
    inner: Arc<Inner>,
    shutdown: tokio_util::sync::CancellationToken,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `n` REST entries (`AuditLogEntryListingRep`), ids unique; dates from `start` going back
/// `step` ms each, except that `bursts` lists (index, size): that many consecutive entries
/// share the date of `index`.
pub fn entries(n: usize, start: i64, step: i64, bursts: &[(usize, usize)]) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    let mut date = start;
    let mut i = 0;
    while i < n {
        let burst = bursts
            .iter()
            .find(|(at, _)| *at == i)
            .map_or(1, |(_, size)| *size);
        for _ in 0..burst.min(n - i) {
            let id = format!(
                "{:024x}",
                0x5e00_0000_0000u64 + i as u64 * 7919 % 1_000_003 * 1000 + i as u64
            );
            let env = if i % 3 == 0 { "production" } else { "test" };
            let resource = format!("proj/default:env/{env}:flag/flag-{}", i % 97);
            out.push(json!({
                "_links": {
                    "canonical": {"href": format!("/api/v2/flags/default/flag-{}", i % 97), "type": "application/json"},
                    "parent": {"href": "/api/v2/auditlog", "type": "application/json"},
                    "self": {"href": format!("/api/v2/auditlog/{id}"), "type": "application/json"},
                    "site": {"href": format!("/default/{env}/features/flag-{}", i % 97), "type": "text/html"}
                },
                "_id": id,
                "_accountId": "5c7d1d9e0e1f2a3b4c5d6e7f",
                "date": date,
                "accesses": [{"action": if i % 5 == 0 { "createFlag" } else { "updateOn" }, "resource": resource}],
                "kind": "flag",
                "name": format!("Flag {}", i % 97),
                "description": "- Turned on the flag",
                "shortDescription": "",
                "comment": if i % 4 == 0 { format!("change #{i}") } else { String::new() },
                "member": {
                    "_links": {"self": {"href": "/api/v2/members/569f514183f2164430000002", "type": "application/json"}},
                    "_id": "569f514183f2164430000002",
                    "email": "sandy@example.com",
                    "firstName": "Sandy",
                    "lastName": "Smith"
                },
                "titleVerb": "turned on the flag",
                "title": format!("Sandy Smith turned on the flag Flag {} in '{env}'", i % 97),
                "target": {"_links": {}, "name": format!("Flag {}", i % 97), "resources": [resource]}
            }));
            i += 1;
        }
        date -= step;
    }
    out
}

impl FakeLd {
    /// Starts the fake on 127.0.0.1:0 serving `entries`.
    pub async fn start(entries: &[Value], cfg: FakeConfig) -> FakeLd {
        let mut rows: Vec<(i64, String, String)> = entries
            .iter()
            .map(|e| {
                (
                    e["date"].as_i64().unwrap(),
                    e["_id"].as_str().unwrap().to_owned(),
                    e.to_string(),
                )
            })
            .collect();
        rows.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
        let inner = Arc::new(Inner {
            entries: rows,
            cfg,
            stats: FakeStats::default(),
            window: Mutex::new((now_ms(), 0)),
        });
        let app = axum::Router::new()
            .route("/api/v2/auditlog", axum::routing::get(list))
            .with_state(inner.clone());
        let (base, shutdown) = loopback::serve(app).await;
        FakeLd {
            base,
            inner,
            shutdown,
        }
    }

    pub fn stats(&self) -> &FakeStats {
        &self.inner.stats
    }

    pub fn token(&self) -> &str {
        &self.inner.cfg.token
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "message": message})),
    )
        .into_response()
}

async fn list(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let cfg = &inner.cfg;
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
    let n = inner.stats.requests.fetch_add(1, Ordering::SeqCst) + 1;
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(cfg.token.as_str()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Invalid access token",
        );
    }
    if let Some((status, message)) = &cfg.force {
        return error(StatusCode::from_u16(*status).unwrap(), "forced", message);
    }
    // Rate limit: a fixed window per route.
    let mut limit_headers = Vec::new();
    if let Some((budget, window)) = cfg.budget {
        let now = now_ms();
        let (remaining, reset, over) = {
            let mut w = inner.window.lock().unwrap();
            if now >= w.0 + window.as_millis() as i64 {
                *w = (now, 0);
            }
            w.1 += 1;
            let reset = w.0 + window.as_millis() as i64;
            (budget.saturating_sub(w.1), reset, w.1 > budget)
        };
        limit_headers.push(("x-ratelimit-route-remaining", remaining.to_string()));
        limit_headers.push(("x-ratelimit-global-remaining", "100000".to_string()));
        limit_headers.push(("x-ratelimit-reset", reset.to_string()));
        if over {
            inner.stats.rate_limited.fetch_add(1, Ordering::SeqCst);
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Rate limit exceeded",
            );
            let secs = ((reset - now).max(0) + 999) / 1000;
            r.headers_mut().insert(
                "retry-after",
                HeaderValue::from_str(&secs.to_string()).unwrap(),
            );
            for (k, v) in &limit_headers {
                r.headers_mut()
                    .insert(*k, HeaderValue::from_str(v).unwrap());
            }
            return r;
        }
    }
    if cfg.fail_every.is_some_and(|k| n % k == 0) {
        inner.stats.faults.fetch_add(1, Ordering::SeqCst);
        let status = if n % 2 == 0 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return error(status, "internal", "injected failure");
    }
    let drop_connection = cfg.drop_every.is_some_and(|k| n % k == 0);

    let (mut limit, mut before, mut after, mut cursor) =
        (10usize, i64::MAX, i64::MIN, None::<(i64, String)>);
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "limit" => match v.parse::<usize>() {
                Ok(l) if (1..=20).contains(&l) => limit = l,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "limit must be between 1 and 20",
                    )
                }
            },
            "before" => match v.parse() {
                Ok(b) => before = b,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "before must be a Unix time in ms",
                    )
                }
            },
            "after" => match v.parse() {
                Ok(a) => after = a,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "after must be a Unix time in ms",
                    )
                }
            },
            "_c" => {
                let (d, id) = v.split_once('.').unwrap();
                cursor = Some((d.parse().unwrap(), id.to_owned()));
            }
            _ => {}
        }
    }
    let start = inner.entries.partition_point(|(d, id, _)| match &cursor {
        Some((cd, cid)) => (*d, id.as_str()) >= (*cd, cid.as_str()),
        None => *d >= before,
    });
    let mut page: Vec<&(i64, String, String)> = Vec::with_capacity(limit + 1);
    for row in &inner.entries[start..] {
        if row.0 >= before {
            continue;
        }
        if row.0 <= after || page.len() > limit {
            break;
        }
        page.push(row);
    }
    let more = page.len() > limit;
    page.truncate(limit);
    let mut body = String::from("{\"items\":[");
    for (i, row) in page.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&row.2);
    }
    body.push_str(
        "],\"_links\":{\"self\":{\"href\":\"/api/v2/auditlog\",\"type\":\"application/json\"}",
    );
    if more && cfg.next_links {
        let last = page.last().unwrap();
        let mut q = form_urlencoded::Serializer::new(String::new());
        if after != i64::MIN {
            q.append_pair("after", &after.to_string());
        }
        if before != i64::MAX {
            q.append_pair("before", &before.to_string());
        }
        q.append_pair("limit", &limit.to_string());
        q.append_pair("_c", &format!("{}.{}", last.0, last.1));
        body.push_str(&format!(
            ",\"next\":{{\"href\":\"/api/v2/auditlog?{}\",\"type\":\"application/json\"}}",
            q.finish()
        ));
    }
    body.push_str("}}");
    inner.stats.ok.fetch_add(1, Ordering::SeqCst);
    let body = if drop_connection {
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
    let mut r = (StatusCode::OK, [("content-type", "application/json")], body).into_response();
    for (k, v) in &limit_headers {
        r.headers_mut()
            .insert(*k, HeaderValue::from_str(v).unwrap());
    }
    r
}
