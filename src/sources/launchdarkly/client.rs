//! LaunchDarkly REST client for `GET /api/v2/auditlog`: one page per call, paced by the
//! rate-limit headers, retrying 429s, 5xx, timeouts and dropped connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::now_ms;
use crate::sources::{jitter, read_bounded};

/// Page size used for every request (LaunchDarkly's maximum).
pub const PAGE_LIMIT: u32 = 20;
/// Attempts for one page on 5xx, timeouts and dropped connections.
const MAX_ATTEMPTS: u32 = 8;
/// Waits on 429 for one page before giving up.
const MAX_RATE_LIMIT_WAITS: u32 = 100;

/// Why fetching stopped. `Fatal` errors are not retried.
#[derive(Debug, thiserror::Error)]
pub enum LdError {
    #[error("LaunchDarkly rejected LD_API_TOKEN ({status}): check that the token is valid and may read the audit log (a reader role or audit-log access). LaunchDarkly said: {message}")]
    Unauthorized { status: u16, message: String },
    #[error("LaunchDarkly rejected the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("LaunchDarkly did not answer after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: String },
    #[error("LaunchDarkly sent a page that is not valid JSON: {0}")]
    BadPage(String),
    #[error("bad LaunchDarkly URL {0}")]
    BadUrl(String),
    #[error("LaunchDarkly's next link {href} points to {origin}, not LD_BASE_URL's origin {base}; refusing to send LD_API_TOKEN there")]
    ForeignLink {
        href: String,
        origin: String,
        base: String,
    },
    #[error("LaunchDarkly sent a page larger than {MAX_PAGE_BYTES} bytes; refusing to read it into memory")]
    PageTooLarge,
}

/// Largest answer read from LaunchDarkly (a page of 20 entries is a few tens of KB).
pub const MAX_PAGE_BYTES: usize = crate::sources::MAX_ANSWER_BYTES;
/// Longest wait a rate-limit header can ask for: the headers are untrusted input.
pub const MAX_RATE_LIMIT_WAIT_MS: i64 = 60_000;

/// Counters shared by every request of a run.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub rate_limited: AtomicU64,
    pub retries: AtomicU64,
    pub rate_limit_waits: AtomicU64,
    pub pages: AtomicU64,
}

impl Stats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// One page: each item's JSON text exactly as received, and the next link.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<String>,
    pub next: Option<String>,
}

#[derive(Deserialize)]
struct PageIn<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
    #[serde(rename = "_links", default)]
    links: Option<LinksIn>,
}

#[derive(Deserialize)]
struct LinksIn {
    next: Option<LinkIn>,
}

#[derive(Deserialize)]
struct LinkIn {
    href: Option<String>,
}

#[derive(Deserialize)]
struct ErrorIn {
    message: Option<String>,
}

/// The rate-limit budget as LaunchDarkly last reported it, shared by concurrent requests.
#[derive(Debug, Default)]
struct Budget {
    /// Requests left in the current window (the smaller of route and global), minus the
    /// requests sent since.
    remaining: Option<i64>,
    /// When the window resets (epoch ms).
    reset_ms: Option<i64>,
    /// No request before this time (epoch ms), after a 429.
    blocked_until_ms: i64,
    /// Requests sent and not answered yet (the server may not have counted them).
    inflight: i64,
    /// When a request last had to wait for the budget (epoch ms).
    last_wait_ms: i64,
    /// Moving average of response times (ms).
    latency_ms: f64,
}

/// A numeric header as an integer; `None` when absent, not a number, or not finite (`inf`,
/// `NaN`). Huge values saturate rather than wrap.
fn header_i64(h: &HeaderMap, name: &str) -> Option<i64> {
    h.get(name)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(|f| f as i64)
}

/// A client for one LaunchDarkly account.
#[derive(Clone)]
pub struct LdClient {
    http: reqwest::Client,
    base: reqwest::Url,
    token: SecretString,
    budget: Arc<Mutex<Budget>>,
    pub stats: Arc<Stats>,
    /// Longest rate-limit wait accepted (ms).
    max_wait_ms: i64,
}

impl std::fmt::Debug for LdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdClient")
            .field("base", &self.base.as_str())
            .field("token", &"[redacted]")
            .finish()
    }
}

impl LdClient {
    /// A client for `base` (e.g. `https://app.launchdarkly.com`) with an API access token.
    pub fn new(base: &str, token: SecretString) -> Result<Self, LdError> {
        let base =
            reqwest::Url::parse(base).map_err(|e| LdError::BadUrl(format!("{base}: {e}")))?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("audithook/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| LdError::BadUrl(e.to_string()))?;
        Ok(Self {
            http,
            base,
            token,
            budget: Arc::default(),
            stats: Arc::default(),
            max_wait_ms: MAX_RATE_LIMIT_WAIT_MS,
        })
    }

    /// The same client with another longest rate-limit wait (tests shorten it).
    pub fn with_max_rate_limit_wait(mut self, wait: Duration) -> Self {
        self.max_wait_ms = wait.as_millis().min(i64::MAX as u128) as i64;
        self
    }

    /// The URL of the first page of `[after, before]` (both exclusive), with `spec` if given.
    pub fn first_page_url(
        &self,
        after: Option<i64>,
        before: Option<i64>,
        spec: Option<&str>,
        limit: u32,
    ) -> String {
        let mut url = self
            .base
            .join("/api/v2/auditlog")
            .unwrap_or_else(|_| self.base.clone());
        {
            let mut q = url.query_pairs_mut();
            if let Some(b) = before {
                q.append_pair("before", &b.to_string());
            }
            if let Some(a) = after {
                q.append_pair("after", &a.to_string());
            }
            if let Some(s) = spec {
                q.append_pair("spec", s);
            }
            q.append_pair("limit", &limit.to_string());
        }
        url.to_string()
    }

    /// Resolves a next link (an opaque, usually relative, href) against the base URL. The
    /// token goes only to LD_BASE_URL's origin: a link to another origin is refused.
    pub fn resolve(&self, href: &str) -> Result<String, LdError> {
        let url = self
            .base
            .join(href)
            .map_err(|e| LdError::BadUrl(format!("{href}: {e}")))?;
        if url.origin() != self.base.origin() {
            return Err(LdError::ForeignLink {
                href: href.chars().take(200).collect(),
                origin: url.origin().ascii_serialization(),
                base: self.base.origin().ascii_serialization(),
            });
        }
        Ok(url.to_string())
    }

    /// Waits until the budget allows one more request, then takes it.
    async fn acquire(&self) {
        loop {
            let wait_ms = {
                let mut b = self.budget.lock().unwrap_or_else(|p| p.into_inner());
                let now = now_ms();
                let wait = if b.blocked_until_ms > now {
                    Some(b.blocked_until_ms - now)
                } else {
                    match (b.remaining, b.reset_ms) {
                        (Some(rem), Some(reset)) if rem <= 0 && reset > now => Some(reset - now),
                        (Some(_), Some(reset)) if reset <= now => {
                            // The window has reset: the budget is unknown until the next answer.
                            b.remaining = None;
                            b.reset_ms = None;
                            None
                        }
                        (Some(rem), _) => {
                            b.remaining = Some(rem - 1);
                            None
                        }
                        _ => None,
                    }
                };
                match wait {
                    None => b.inflight += 1,
                    Some(_) => b.last_wait_ms = now,
                }
                wait
            };
            match wait_ms {
                None => return,
                Some(ms) => {
                    Stats::bump(&self.stats.rate_limit_waits);
                    tokio::time::sleep(Duration::from_millis(ms as u64) + jitter(50)).await;
                }
            }
        }
    }

    /// Records the budget a response reports.
    fn observe(&self, headers: &HeaderMap) {
        let route = header_i64(headers, "x-ratelimit-route-remaining");
        let global = header_i64(headers, "x-ratelimit-global-remaining");
        let remaining = match (route, global) {
            (Some(r), Some(g)) => Some(r.min(g)),
            (r, g) => r.or(g),
        };
        let mut b = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        // An untrusted reset further away than the longest wait is taken as that wait.
        let reset = header_i64(headers, "x-ratelimit-reset").map(|r| r.min(now + self.max_wait_ms));
        // Requests still in flight may not be counted in this answer yet: assume they are not.
        let remaining = remaining.map(|r| r - b.inflight.max(0));
        match (remaining, reset) {
            (Some(rem), Some(reset)) if reset > now => {
                if b.reset_ms == Some(reset) {
                    // Same window: answers arrive out of order, keep the lowest count.
                    b.remaining = Some(b.remaining.map_or(rem, |cur| cur.min(rem)));
                } else if b.reset_ms.is_none_or(|cur| reset > cur) {
                    b.remaining = Some(rem);
                    b.reset_ms = Some(reset);
                }
            }
            (Some(rem), None) => b.remaining = Some(rem),
            _ => {}
        }
    }

    /// Marks one request answered (or failed) after `took`.
    fn answered(&self, took: Duration) {
        let mut b = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        b.inflight -= 1;
        let ms = took.as_secs_f64() * 1000.0;
        b.latency_ms = if b.latency_ms == 0.0 {
            ms
        } else {
            0.8 * b.latency_ms + 0.2 * ms
        };
    }

    /// How many requests in flight the rate-limit budget sustains until its reset
    /// (`None`: no limit in sight). More concurrent windows than this only add requests.
    pub fn sustainable_parallelism(&self) -> Option<f64> {
        let b = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        if b.blocked_until_ms > now || now - b.last_wait_ms < 10_000 {
            return Some(1.0);
        }
        match (b.remaining, b.reset_ms) {
            (Some(r), Some(reset)) if reset > now => {
                let per_ms = r.max(0) as f64 / (reset - now) as f64;
                Some((per_ms * b.latency_ms.max(1.0)).max(1.0))
            }
            _ => None,
        }
    }

    /// Blocks every request until the later of `X-Ratelimit-Reset` and `Retry-After`, at
    /// most [`MAX_RATE_LIMIT_WAIT_MS`] from now (the headers are untrusted: `1e18`, `inf`,
    /// negative values neither overflow nor hang).
    fn back_off_429(&self, headers: &HeaderMap) -> Duration {
        let now = now_ms();
        let reset = header_i64(headers, "x-ratelimit-reset").filter(|r| *r > now);
        let retry_after = header_i64(headers, "retry-after")
            .map(|s| now.saturating_add(s.max(0).saturating_mul(1000)));
        let asked = reset
            .into_iter()
            .chain(retry_after)
            .max()
            .unwrap_or(now + 1000);
        let until = asked.min(now + self.max_wait_ms);
        if asked > until {
            tracing::warn!(
                asked_ms = asked.saturating_sub(now),
                waiting_ms = self.max_wait_ms,
                "LaunchDarkly asked for a longer rate-limit wait than audithook accepts; waiting at most a minute"
            );
        }
        let mut b = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        b.blocked_until_ms = b.blocked_until_ms.max(until);
        b.remaining = Some(0);
        b.reset_ms = Some(until);
        Duration::from_millis((until - now).max(0) as u64) + jitter(250)
    }

    /// Fetches one page, pacing and retrying as needed.
    pub async fn get_page(&self, url: &str) -> Result<Page, LdError> {
        let mut attempts = 0;
        let mut waits_429 = 0;
        loop {
            self.acquire().await;
            Stats::bump(&self.stats.requests);
            let sent_at = std::time::Instant::now();
            let sent = self
                .http
                .get(url)
                .header("authorization", self.token.expose_secret())
                .send()
                .await;
            self.answered(sent_at.elapsed());
            let failure = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    self.observe(&headers);
                    match status {
                        s if s.is_success() => match read_bounded(resp).await {
                            Ok(body) => {
                                return parse_page(&body)
                                    .inspect(|_| Stats::bump(&self.stats.pages))
                            }
                            Err(None) => return Err(LdError::PageTooLarge),
                            Err(Some(e)) => format!("reading the page: {e}"),
                        },
                        StatusCode::TOO_MANY_REQUESTS => {
                            Stats::bump(&self.stats.rate_limited);
                            waits_429 += 1;
                            if waits_429 > MAX_RATE_LIMIT_WAITS {
                                return Err(LdError::GaveUp {
                                    attempts: waits_429,
                                    last: "429 Too Many Requests".into(),
                                });
                            }
                            let wait = self.back_off_429(&headers);
                            tracing::debug!(
                                wait_ms = wait.as_millis() as u64,
                                "rate limited (429); waiting"
                            );
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                            let message = error_message(resp).await;
                            return Err(LdError::Unauthorized {
                                status: status.as_u16(),
                                message,
                            });
                        }
                        s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
                            format!("HTTP {s}")
                        }
                        s => {
                            let message = error_message(resp).await;
                            return Err(LdError::Rejected {
                                status: s.as_u16(),
                                message,
                            });
                        }
                    }
                }
                Err(e) => format!("request failed: {e}"),
            };
            attempts += 1;
            if attempts >= MAX_ATTEMPTS {
                return Err(LdError::GaveUp {
                    attempts,
                    last: failure,
                });
            }
            Stats::bump(&self.stats.retries);
            tracing::debug!(attempt = attempts, error = %failure, "retrying page");
            tokio::time::sleep(crate::sources::backoff(attempts)).await;
        }
    }
}

async fn error_message(mut resp: reqwest::Response) -> String {
    // An error answer is read only as far as a message needs.
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > 64 * 1024 {
            break;
        }
    }
    serde_json::from_slice::<ErrorIn>(&body)
        .ok()
        .and_then(|e| e.message)
        .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect())
}

fn parse_page(body: &[u8]) -> Result<Page, LdError> {
    let page: PageIn = serde_json::from_slice(body).map_err(|e| LdError::BadPage(e.to_string()))?;
    Ok(Page {
        items: page.items.iter().map(|r| r.get().to_owned()).collect(),
        next: page
            .links
            .and_then(|l| l.next)
            .and_then(|n| n.href)
            .filter(|h| !h.is_empty()),
    })
}
