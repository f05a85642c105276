//! The `http` kind (a Logstash `http` input, a generic webhook): one envelope per request
//! as `application/json`, or with `batch` > 1 NDJSON batches (`application/x-ndjson`); and
//! the HTTP side of the `launchdarkly_integration` kind.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};

use super::launchdarkly::Integration;
use super::{classify_failure, read_body, transport_failure, Outcome};
use crate::store::StoredEvent;

/// A client for one destination: its own connection pool and time limit.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("audithook/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Sends a built request and classifies the answer (2xx: delivered, its body drained).
pub async fn post(req: reqwest::RequestBuilder) -> Outcome {
    match req.send().await {
        Ok(mut resp) if resp.status().is_success() => {
            // Drain (bounded) so the connection is reused.
            let _ = read_body(&mut resp, 1 << 20).await;
            Outcome::Delivered
        }
        Ok(resp) => classify_failure(resp).await,
        Err(e) => transport_failure(&e),
    }
}

pub struct Sender {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
}

impl Sender {
    pub fn new(url: reqwest::Url, headers: HeaderMap, timeout: Duration) -> Self {
        Self {
            client: client(timeout),
            url,
            headers,
        }
    }

    pub async fn send(&mut self, events: &[&StoredEvent]) -> Outcome {
        let mut body = Vec::with_capacity(events.iter().map(|e| e.raw.len() + 256).sum());
        let content_type = if events.len() == 1 {
            crate::event::write_envelope(&mut body, &events[0].envelope());
            "application/json"
        } else {
            for e in events {
                crate::event::write_envelope(&mut body, &e.envelope());
                body.push(b'\n');
            }
            "application/x-ndjson"
        };
        let mut headers = self.headers.clone();
        headers
            .entry(CONTENT_TYPE)
            .or_insert(HeaderValue::from_static(content_type));
        post(
            self.client
                .post(self.url.clone())
                .headers(headers)
                .body(body),
        )
        .await
    }
}

/// Sends each LaunchDarkly event as the integration's manifest says, one request per
/// event, as LaunchDarkly does.
pub struct IntegrationSender {
    client: reqwest::Client,
    integration: Arc<Integration>,
    ld_base_url: String,
}

impl IntegrationSender {
    pub fn new(integration: Arc<Integration>, ld_base_url: String, timeout: Duration) -> Self {
        Self {
            client: client(timeout),
            integration,
            ld_base_url,
        }
    }

    /// The request for one event, or why the rendered one cannot be sent.
    fn request(&self, e: &StoredEvent) -> Result<reqwest::RequestBuilder, String> {
        let r = self.integration.render(e, &self.ld_base_url)?;
        let url = reqwest::Url::parse(&r.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                format!(
                    "the endpoint URL rendered to {:?}, not an http(s) URL",
                    self.integration.mask(&r.url)
                )
            })?;
        let mut req = self.client.request(r.method, url);
        for (name, value) in &r.headers {
            let v = HeaderValue::from_str(value)
                .map_err(|_| format!("header {name} rendered to an invalid value"))?;
            req = req.header(name, v);
        }
        Ok(req.body(r.body))
    }

    pub async fn send(&mut self, events: &[&StoredEvent]) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            out.push(match self.request(e) {
                Ok(req) => post(req).await,
                Err(error) => Outcome::Refused {
                    class: "render",
                    status: None,
                    error,
                    body: String::new(),
                },
            });
        }
        out
    }
}
