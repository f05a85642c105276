//! The Terraform Cloud audit-trail client: one page per call, paced under the API's 30
//! requests per second, retried through [`Fetcher`].

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{rfc3339_ms, NewEvent, Source};
use crate::sources::{base_url, Fetcher, SourceError};

/// The audit-trail path.
pub const PATH: &str = "/api/v2/organization/audit-trail";
/// Events per page (the documented default and the largest the API is known to take).
pub const PAGE_SIZE: u32 = 1000;
/// The API's rate limit: requests per second.
pub const RATE: u32 = 30;

/// One page: its events normalised (all or none), and the paging.
#[derive(Debug, Clone)]
pub struct Page {
    pub events: Vec<NewEvent>,
    pub total_count: u64,
    pub total_pages: u64,
    pub next_page: Option<u64>,
    /// The page size the server used (it may hold a smaller maximum than asked for).
    pub page_size: Option<u64>,
}

#[derive(Deserialize)]
struct PageIn<'a> {
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
    pagination: Pagination,
}

#[derive(Deserialize)]
struct Pagination {
    #[serde(default)]
    page_size: Option<u64>,
    next_page: Option<u64>,
    total_pages: u64,
    total_count: u64,
}

/// A client for one Terraform Cloud organisation (the token decides which).
#[derive(Clone)]
pub struct TfcClient {
    pub fetcher: Fetcher,
    base: reqwest::Url,
    token: SecretString,
    pub page_size: u32,
}

impl std::fmt::Debug for TfcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TfcClient")
            .field("base", &self.base.as_str())
            .field("token", &"[redacted]")
            .finish()
    }
}

impl TfcClient {
    /// A client for `base` (TFC_BASE_URL) with TFC_API_TOKEN, kept under `rate` requests
    /// per second.
    pub fn new(base: &str, token: SecretString, rate: u32) -> Result<Self, SourceError> {
        let base =
            base_url("TFC_BASE_URL", base).map_err(|e| SourceError::other(Source::Tfc, e))?;
        Ok(Self {
            fetcher: Fetcher::new(
                Source::Tfc,
                "TFC_API_TOKEN",
                Some((rate as usize, std::time::Duration::from_secs(1))),
            )?,
            base,
            token,
            page_size: PAGE_SIZE,
        })
    }

    /// The same client with another page size (tests use small pages).
    pub fn with_page_size(mut self, size: u32) -> Self {
        self.page_size = size.clamp(1, PAGE_SIZE);
        self
    }

    /// Page `number` of the events after `since` (epoch ms), newest first.
    pub async fn page(&self, since: i64, number: u64) -> Result<Page, SourceError> {
        let mut url = self
            .base
            .join(PATH)
            .map_err(|e| SourceError::other(Source::Tfc, e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("since", &rfc3339_ms(since))
            .append_pair("page[number]", &number.to_string())
            .append_pair("page[size]", &self.page_size.to_string());
        let auth = format!("Bearer {}", self.token.expose_secret());
        self.fetcher
            .fetch(
                PATH,
                |http| {
                    http.get(url.clone())
                        .header("authorization", &auth)
                        .header("accept", "application/vnd.api+json")
                },
                parse_page,
            )
            .await
    }
}

/// Parses and normalises a whole page; any malformed event fails the page.
pub fn parse_page(body: &[u8]) -> Result<Page, String> {
    let page: PageIn = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let events = page
        .data
        .iter()
        .map(|raw| super::normalise(raw.get()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page {
        events,
        total_count: page.pagination.total_count,
        total_pages: page.pagination.total_pages,
        next_page: page.pagination.next_page,
        page_size: page.pagination.page_size.filter(|s| *s > 0),
    })
}
