//! The Carbon Black Cloud audit-log search client: `POST
//! /audit_log/v1/orgs/{org_key}/logs/_search`, `X-Auth-Token: SECRET/ID`, retried through
//! [`Fetcher`] (429s wait for `Retry-After`).

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{rfc3339_ms, NewEvent, Source};
use crate::sources::{base_url, Fetcher, SourceError};

/// Records asked for per search.
pub const ROWS: u32 = 1000;

/// One search answer: its records normalised (all or none), and how many matched.
#[derive(Debug, Clone)]
pub struct SearchPage {
    pub events: Vec<NewEvent>,
    pub num_found: u64,
}

#[derive(Deserialize)]
struct SearchIn<'a> {
    #[serde(borrow)]
    results: Vec<&'a RawValue>,
    num_found: u64,
}

/// A client for one organisation's audit log.
#[derive(Clone)]
pub struct CbcClient {
    pub fetcher: Fetcher,
    base: reqwest::Url,
    org_key: String,
    /// `SECRET/ID`.
    auth: SecretString,
    pub rows: u32,
}

impl std::fmt::Debug for CbcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CbcClient")
            .field("base", &self.base.as_str())
            .field("org_key", &self.org_key)
            .field("auth", &"[redacted]")
            .finish()
    }
}

/// Whether `url`'s host is this machine (plain HTTP is accepted only there).
fn loopback(url: &reqwest::Url) -> bool {
    url.host_str().is_some_and(|h| {
        h == "localhost"
            || h.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

impl CbcClient {
    /// A client for CBC_BASE_URL with CBC_API_ID, CBC_API_SECRET and CBC_ORG_KEY. The base
    /// URL must be `https://` (as Carbon Black's SDK insists), except on loopback.
    pub fn new(
        base: &str,
        api_id: &str,
        api_secret: &SecretString,
        org_key: &str,
    ) -> Result<Self, SourceError> {
        let base =
            base_url("CBC_BASE_URL", base).map_err(|e| SourceError::other(Source::Cbc, e))?;
        if base.scheme() != "https" && !loopback(&base) {
            return Err(SourceError::other(
                Source::Cbc,
                format!(
                    "CBC_BASE_URL must be https:// (the API key would travel in clear), got {}",
                    base.as_str()
                ),
            ));
        }
        if org_key.is_empty() || !org_key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(SourceError::other(
                Source::Cbc,
                format!(
                    "CBC_ORG_KEY must be letters and digits (such as ABCD1234), got {org_key:?}"
                ),
            ));
        }
        Ok(Self {
            fetcher: Fetcher::new(Source::Cbc, "CBC_API_SECRET/CBC_API_ID", None)?,
            base,
            org_key: org_key.to_owned(),
            auth: SecretString::from(format!("{}/{api_id}", api_secret.expose_secret())),
            rows: ROWS,
        })
    }

    /// The same client asking for `rows` records per search (tests use few).
    pub fn with_rows(mut self, rows: u32) -> Self {
        self.rows = rows.clamp(1, ROWS);
        self
    }

    /// Records with `start_ms <= create_time <= end_ms` (whether `end` is inclusive is
    /// Carbon Black's to decide), oldest first, from the `start`th.
    pub async fn search(
        &self,
        start_ms: i64,
        end_ms: i64,
        start: u64,
    ) -> Result<SearchPage, SourceError> {
        let path = format!("/audit_log/v1/orgs/{}/logs/_search", self.org_key);
        let url = self
            .base
            .join(&path)
            .map_err(|e| SourceError::other(Source::Cbc, e.to_string()))?;
        let body = serde_json::json!({
            "criteria": {"create_time": {"start": rfc3339_ms(start_ms), "end": rfc3339_ms(end_ms)}},
            "sort": [{"field": "create_time", "order": "ASC"}],
            "rows": self.rows,
            "start": start,
        });
        self.fetcher
            .fetch(
                &path,
                |http| {
                    http.post(url.clone())
                        .header("x-auth-token", self.auth.expose_secret())
                        .json(&body)
                },
                parse_search,
            )
            .await
    }
}

/// Parses and normalises a whole answer; any malformed record fails it.
pub fn parse_search(body: &[u8]) -> Result<SearchPage, String> {
    let page: SearchIn = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let events = page
        .results
        .iter()
        .map(|raw| super::normalise(raw.get()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SearchPage {
        events,
        num_found: page.num_found,
    })
}
