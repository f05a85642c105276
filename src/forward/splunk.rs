//! The `splunk_hec` kind: `POST {url}/services/collector/event` with
//! `Authorization: Splunk TOKEN`, a batch of HEC events (one JSON object per line), each
//! `{"time": epoch seconds, "host", "source", "sourcetype", "index", "event": envelope}`.
//!
//! HEC's answer codes: 0 success; 1 (token disabled), 2 (token required), 3 (invalid
//! authorization), 4 (invalid token) and 7 (incorrect index) are configuration the operator
//! must fix, retried without dead-lettering anything; 6 (invalid data format) names the
//! event with `invalid-event-number`: that event is a dead letter and the others are sent
//! again (HEC does not say whether the ones before it were indexed, and sending twice is
//! what at-least-once allows); 9 (server busy) retries.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;

use super::{kept_body, read_body, transport_failure, Outcome, BODY_KEPT};
use crate::store::StoredEvent;

pub struct Sender {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: HeaderValue,
    index: Option<String>,
    host: String,
    headers: HeaderMap,
}

#[derive(Deserialize)]
struct HecAnswer {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    text: Option<String>,
    #[serde(rename = "invalid-event-number", default)]
    invalid_event_number: Option<usize>,
}

impl Sender {
    pub fn new(
        base: &reqwest::Url,
        token: &str,
        index: Option<String>,
        headers: HeaderMap,
        timeout: Duration,
    ) -> Self {
        let mut url = base.clone();
        let path = format!(
            "{}/services/collector/event",
            base.path().trim_end_matches('/')
        );
        url.set_path(&path);
        let mut auth = HeaderValue::from_str(&format!("Splunk {token}"))
            .unwrap_or(HeaderValue::from_static("Splunk"));
        auth.set_sensitive(true);
        Self {
            client: super::http::client(timeout),
            url,
            auth,
            index,
            host: super::syslog::local_hostname(),
            headers,
        }
    }

    /// The HEC body for `events`.
    pub fn body(&self, events: &[&StoredEvent]) -> Vec<u8> {
        let mut body = Vec::with_capacity(events.iter().map(|e| e.raw.len() + 400).sum());
        for e in events {
            body.extend_from_slice(
                format!(
                    "{{\"time\":{}.{:03},\"host\":",
                    e.date.div_euclid(1000),
                    e.date.rem_euclid(1000)
                )
                .as_bytes(),
            );
            let _ = serde_json::to_writer(&mut body, &self.host);
            body.extend_from_slice(b",\"source\":\"audithook\",\"sourcetype\":");
            let _ = serde_json::to_writer(&mut body, &format!("audithook:{}", e.source));
            if let Some(index) = &self.index {
                body.extend_from_slice(b",\"index\":");
                let _ = serde_json::to_writer(&mut body, index);
            }
            body.extend_from_slice(b",\"event\":");
            crate::event::write_envelope(&mut body, &e.envelope());
            body.extend_from_slice(b"}\n");
        }
        body
    }

    pub async fn send(&mut self, events: &[&StoredEvent]) -> Vec<Outcome> {
        let whole = |o: Outcome| vec![o; events.len()];
        let mut headers = self.headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(AUTHORIZATION, self.auth.clone());
        let sent = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(self.body(events))
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => return whole(transport_failure(&e)),
        };
        let status = resp.status().as_u16();
        let after = super::retry_after(&resp);
        let bytes = match read_body(&mut resp, BODY_KEPT).await {
            Ok(b) => b,
            Err(e) => return whole(Outcome::retry("connect", Some(status), e)),
        };
        let body = kept_body(&bytes);
        let answer: Option<HecAnswer> = serde_json::from_slice(&bytes).ok();
        let code = answer.as_ref().and_then(|a| a.code);
        let text = answer
            .as_ref()
            .and_then(|a| a.text.clone())
            .unwrap_or_default();
        let retry = |class: &'static str, error: String| Outcome::Retry {
            class,
            status: Some(status),
            retry_after: after,
            error,
            body: body.clone(),
        };
        if (200..300).contains(&status) {
            return match code {
                Some(0) | None if answer.is_some() => whole(Outcome::Delivered),
                _ => whole(retry(
                    "bad_response",
                    format!("HEC answered {status} without a success code"),
                )),
            };
        }
        match (status, code) {
            (_, Some(1..=4)) | (401 | 403, _) => whole(retry(
                "auth",
                format!("HEC refused the token ({text}): check the destination's token"),
            )),
            (_, Some(7)) => whole(retry(
                "config",
                format!("HEC refused the index ({text}): the token may not write to it"),
            )),
            (400, Some(6)) => {
                let bad = answer.as_ref().and_then(|a| a.invalid_event_number);
                match bad {
                    Some(n) if n < events.len() => (0..events.len())
                        .map(|i| {
                            if i == n {
                                Outcome::Refused {
                                    class: "refused",
                                    status: Some(status),
                                    error: format!("HEC: {text} (event {n} of the batch)"),
                                    body: body.clone(),
                                }
                            } else {
                                Outcome::retry(
                                    "batch_split",
                                    Some(status),
                                    format!("HEC refused event {n} of the batch; sending the others again"),
                                )
                            }
                        })
                        .collect(),
                    _ if events.len() == 1 => whole(Outcome::Refused {
                        class: "refused",
                        status: Some(status),
                        error: format!("HEC: {text}"),
                        body,
                    }),
                    // No event named: send them one by one to find it.
                    _ => whole(retry("batch_split", format!("HEC: {text}"))),
                }
            }
            (408 | 429 | 500..=599, _) if status != 501 => {
                let class = match status {
                    408 => "http_408",
                    429 => "http_429",
                    _ => "http_5xx",
                };
                whole(retry(class, format!("HEC answered {status} ({text})")))
            }
            _ => whole(Outcome::Refused {
                class: "refused",
                status: Some(status),
                error: format!("HEC answered {status} ({text})"),
                body,
            }),
        }
    }
}
