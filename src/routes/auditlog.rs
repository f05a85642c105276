//! `GET /api/v2/auditlog` and `GET /api/v2/auditlog/{id}`: LaunchDarkly-compatible reads.
//!
//! Parameters as LaunchDarkly's API takes them (`before`, `after` exclusive epoch ms, `q`,
//! `spec`, repeatable `member` and `token`, `limit`), items newest first, `_links.next`
//! while more remain. The next link carries an opaque `cursor` so that entries sharing one
//! millisecond are paged exactly.

use axum::extract::{Path, RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::error::{ApiError, Result};
use crate::event::{listing_rep, Source};
use crate::store::{Cursor, Filter, PageSpec};
use crate::AppState;

/// Path of the listing route.
pub const LIST_PATH: &str = "/api/v2/auditlog";
/// Default page size, as LaunchDarkly's.
pub const DEFAULT_LIMIT: usize = 10;
/// Largest page size.
pub const MAX_LIMIT: usize = 1000;
/// Largest `offset`.
pub const MAX_OFFSET: usize = 100_000_000;
/// Raw bytes of entries one page holds at most (at least one entry): with large events a
/// page ends early and `_links.next` carries on, so a reader's memory follows bytes, not rows.
pub const PAGE_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Read routes of the LaunchDarkly-compatible API.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(LIST_PATH, get(list_entries))
        .route("/api/v2/auditlog/{id}", get(get_entry))
}

/// Parsed listing parameters.
#[derive(Debug, Default)]
pub struct ListParams {
    pub filter: Filter,
    pub limit: usize,
    /// Matching entries to skip first, as LaunchDarkly's list endpoints take `offset`.
    pub offset: usize,
    pub cursor: Option<Cursor>,
    /// The parameters as received, except `cursor`, to build links from.
    pub passthrough: Vec<(String, String)>,
}

fn parse_ms(name: &str, value: &str) -> Result<i64> {
    value.trim().parse::<i64>().map_err(|_| {
        ApiError::bad_request(format!(
            "parameter `{name}` must be a Unix time in milliseconds, got {value:?}"
        ))
    })
}

/// Parses a `limit` parameter: an integer from 1 to `max`.
pub fn parse_limit(value: &str, max: usize) -> Result<usize> {
    value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "parameter `limit` must be an integer from 1 to {max}, got {value:?}"
            ))
        })
}

/// Applies one of the filters every reader shares (`before`, `after`, `q`, `spec`,
/// `member`, `token`, `kind`, `action`); returns whether `key` was one.
pub fn apply_filter_param(filter: &mut Filter, key: &str, value: &str) -> Result<bool> {
    let text = || (!value.is_empty()).then(|| value.to_owned());
    match key {
        "before" => filter.before = Some(parse_ms("before", value)?),
        "after" => filter.after = Some(parse_ms("after", value)?),
        "q" => filter.q = text(),
        "spec" => filter.spec = text(),
        "member" => filter.members.extend(text()),
        "token" => filter.tokens.extend(text()),
        "kind" => filter.kinds.extend(text()),
        "action" => filter.actions.extend(text()),
        _ => return Ok(false),
    }
    Ok(true)
}

/// Parses the query string of `GET /api/v2/auditlog`. Unknown parameters are ignored, as
/// LaunchDarkly's clients may send more than we use.
pub fn parse_list_params(query: Option<&str>) -> Result<ListParams> {
    let mut p = ListParams {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            k if apply_filter_param(&mut p.filter, k, &value)? => {}
            "limit" => p.limit = parse_limit(&value, MAX_LIMIT)?,
            "offset" => {
                p.offset = value
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n <= MAX_OFFSET)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "parameter `offset` must be an integer from 0 to {MAX_OFFSET}, got {value:?}"
                        ))
                    })?;
            }
            "cursor" => {
                p.cursor = Some(parse_cursor(&value).ok_or_else(|| {
                    ApiError::bad_request("parameter `cursor` is not one this server issued; follow `_links.next` as given")
                })?);
                continue;
            }
            _ => {}
        }
        p.passthrough.push((key.into_owned(), value.into_owned()));
    }
    Ok(p)
}

fn parse_cursor(v: &str) -> Option<Cursor> {
    let (date, id) = v.split_once('_')?;
    Some(Cursor {
        date: date.parse().ok()?,
        id: id.to_owned(),
        source: Source::LaunchDarkly.as_str().to_owned(),
    })
}

fn link(path: &str, params: &[(String, String)], cursor: Option<&Cursor>) -> Value {
    link_with(path, params, cursor.map(|c| format!("{}_{}", c.date, c.id)))
}

/// A `{href, type}` link to `path` with `params` and, when given, the encoded `cursor`.
pub fn link_with(path: &str, params: &[(String, String)], cursor: Option<String>) -> Value {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    if let Some(c) = cursor {
        ser.append_pair("cursor", &c);
    }
    let query = ser.finish();
    let href = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    };
    json!({"href": href, "type": "application/json"})
}

#[tracing::instrument(skip_all)]
async fn list_entries(
    State(AppState { store, .. }): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<axum::response::Response> {
    let mut params = parse_list_params(query.as_deref())?;
    // LaunchDarkly's API: LaunchDarkly's events only.
    params.filter.sources = vec![Source::LaunchDarkly.as_str().to_owned()];
    let (rows, more) = read_page(
        &store,
        &params.filter,
        params.cursor.as_ref(),
        params.offset,
        params.limit,
    )
    .await?;
    let mut links = serde_json::Map::new();
    links.insert(
        "self".into(),
        link(LIST_PATH, &params.passthrough, params.cursor.as_ref()),
    );
    if more {
        if let Some(last) = rows.last() {
            let next = Cursor::of(last);
            // The cursor already stands past the skipped entries.
            let rest: Vec<(String, String)> = params
                .passthrough
                .iter()
                .filter(|(k, _)| k != "offset")
                .cloned()
                .collect();
            links.insert("next".into(), link(LIST_PATH, &rest, Some(&next)));
        }
    }
    Ok(json_body(|out| {
        out.extend_from_slice(b"{\"items\":");
        crate::event::write_listing_items(out, rows);
        out.extend_from_slice(b",\"_links\":");
        let _ = serde_json::to_writer(&mut *out, &links);
        out.push(b'}');
    }))
}

/// Up to `limit` events of a newest-first listing (at most [`PAGE_MAX_BYTES`] of them),
/// and whether more remain.
pub async fn read_page(
    store: &crate::store::Store,
    filter: &Filter,
    cursor: Option<&Cursor>,
    offset: usize,
    limit: usize,
) -> Result<(Vec<crate::store::StoredEvent>, bool)> {
    let page = PageSpec {
        offset,
        limit: limit + 1,
        max_bytes: PAGE_MAX_BYTES,
    };
    let listed = store
        .list_page(filter, cursor, page)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let mut rows = listed.rows;
    let more = rows.len() > limit || listed.cut;
    rows.truncate(limit);
    Ok((rows, more))
}

/// A JSON answer written straight into its body.
pub fn json_body(write: impl FnOnce(&mut Vec<u8>)) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut out = Vec::new();
    write(&mut out);
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        out,
    )
        .into_response()
}

#[tracing::instrument(skip_all, fields(event_id = %id))]
async fn get_entry(
    State(AppState { store, .. }): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let row = store
        .get(Source::LaunchDarkly, &id)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let row =
        row.ok_or_else(|| ApiError::not_found(format!("no audit-log entry with _id {id:?}")))?;
    Ok(Json(listing_rep(&row.raw, row.date, &row.id)))
}
