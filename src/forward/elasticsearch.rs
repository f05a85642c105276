//! The `elasticsearch` kind: `POST {url}/_bulk` with a `create` action per event and
//! `_id` = `source:id`, so a redelivery cannot duplicate. The answer is read item by item:
//! 201 delivered, 409 (already there) delivered, 408/429/5xx retried alone, any other
//! status a dead letter with the item's error.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use serde::Deserialize;

use super::{classify_failure, kept_body, read_body, transport_failure, Outcome};
use crate::store::StoredEvent;

/// Largest `_bulk` answer read (about 200 bytes per item).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

pub struct Sender {
    client: reqwest::Client,
    url: reqwest::Url,
    index: String,
    headers: HeaderMap,
}

#[derive(Deserialize)]
struct BulkAnswer {
    items: Vec<BulkItem>,
}

/// One item of the answer: `{"create": {...}}` (any other action is not ours).
#[derive(Deserialize)]
struct BulkItem {
    create: Option<ItemResult>,
}

#[derive(Deserialize)]
struct ItemResult {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

impl Sender {
    pub fn new(base: &reqwest::Url, index: String, headers: HeaderMap, timeout: Duration) -> Self {
        let mut url = base.clone();
        let path = format!("{}/_bulk", base.path().trim_end_matches('/'));
        url.set_path(&path);
        Self {
            client: super::http::client(timeout),
            url,
            index,
            headers,
        }
    }

    /// The `_bulk` body for `events`.
    pub fn body(&self, events: &[&StoredEvent]) -> Vec<u8> {
        let mut body = Vec::with_capacity(events.iter().map(|e| e.raw.len() + 400).sum());
        for e in events {
            body.extend_from_slice(b"{\"create\":{\"_index\":");
            let _ = serde_json::to_writer(&mut body, &self.index);
            body.extend_from_slice(b",\"_id\":");
            let _ = serde_json::to_writer(&mut body, &format!("{}:{}", e.source, e.id));
            body.extend_from_slice(b"}}\n");
            crate::event::write_envelope(&mut body, &e.envelope());
            body.push(b'\n');
        }
        body
    }

    pub async fn send(&mut self, events: &[&StoredEvent]) -> Vec<Outcome> {
        let whole = |o: Outcome| vec![o; events.len()];
        let mut headers = self.headers.clone();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        let sent = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(self.body(events))
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => return whole(classify_failure(r).await),
            Err(e) => return whole(transport_failure(&e)),
        };
        let status = resp.status().as_u16();
        let bytes = match read_body(&mut resp, MAX_ANSWER).await {
            Ok(b) => b,
            Err(e) => return whole(Outcome::retry("connect", Some(status), e)),
        };
        let bad = |why: String| {
            whole(Outcome::Retry {
                class: "bad_response",
                status: Some(status),
                retry_after: None,
                error: why,
                body: kept_body(&bytes),
            })
        };
        let answer: BulkAnswer = match serde_json::from_slice(&bytes) {
            Ok(a) => a,
            Err(e) => return bad(format!("the _bulk answer is not Elasticsearch's JSON: {e}")),
        };
        if answer.items.len() != events.len() {
            return bad(format!(
                "the _bulk answer has {} items for {} events",
                answer.items.len(),
                events.len()
            ));
        }
        answer
            .items
            .into_iter()
            .map(|item| {
                let Some(result) = item.create else {
                    return Outcome::retry(
                        "bad_response",
                        Some(status),
                        "a _bulk item has no `create` result".into(),
                    );
                };
                let error_body = result
                    .error
                    .as_ref()
                    .map(|e| kept_body(e.to_string().as_bytes()))
                    .unwrap_or_default();
                match result.status {
                    200..=299 | 409 => Outcome::Delivered,
                    s @ (408 | 429 | 500..=599) if s != 501 => Outcome::Retry {
                        class: if s == 429 {
                            "http_429"
                        } else if s == 408 {
                            "http_408"
                        } else {
                            "http_5xx"
                        },
                        status: Some(s),
                        retry_after: None,
                        error: format!("Elasticsearch answered {s} for the item"),
                        body: error_body,
                    },
                    s => Outcome::Refused {
                        class: "refused",
                        status: Some(s),
                        error: format!("Elasticsearch refused the item with {s}"),
                        body: error_body,
                    },
                }
            })
            .collect()
    }
}
