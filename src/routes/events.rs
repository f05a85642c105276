//! `GET /api/events` and `GET /api/events/{source}/{id}`: every source's events as the
//! common envelope, newest first, with exact cursor paging across sources.

use axum::extract::{Path, RawQuery, State};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use serde_json::Value;

use crate::error::{ApiError, Result};
use crate::event::Source;
use crate::routes::auditlog::{apply_filter_param, json_body, parse_limit, read_page};
use crate::store::{Cursor, Filter};
use crate::AppState;

/// Path of the listing route.
pub const LIST_PATH: &str = "/api/events";
/// Default and largest page size.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// Routes of the read API over every source.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(LIST_PATH, get(list_events))
        .route("/api/events/{source}/{id}", get(get_event))
}

/// Applies `source` (a source's name; `400` naming the parameter otherwise) and `actor`;
/// returns whether `key` was one of them.
pub fn apply_source_param(filter: &mut Filter, key: &str, value: &str) -> Result<bool> {
    match key {
        "source" => {
            let source = Source::parse(value).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "parameter `source` must be one of `launchdarkly`, `tfc`, `cbc`, got {value:?}"
                ))
            })?;
            filter.sources.push(source.as_str().to_owned());
        }
        "actor" => {
            if !value.is_empty() {
                filter.actors.push(value.to_owned());
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// An opaque cursor: the last row's position, base64url.
pub fn encode_cursor(c: &Cursor) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}\n{}\n{}", c.date, c.source, c.id))
}

fn decode_cursor(v: &str) -> Option<Cursor> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(v.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(3, '\n');
    let date = parts.next()?.parse().ok()?;
    let source = Source::parse(parts.next()?)?;
    let id = parts.next()?.to_owned();
    Some(Cursor {
        date,
        id,
        source: source.as_str().to_owned(),
    })
}

/// A listing request's parameters.
pub struct Params {
    pub filter: Filter,
    pub limit: usize,
    pub cursor: Option<Cursor>,
    /// The parameters as given (but `cursor`), for links.
    pub passthrough: Vec<(String, String)>,
}

/// Parses `/api/events`' query (the UI's archive reads through it too).
pub fn parse_params(query: Option<&str>) -> Result<Params> {
    let mut p = Params {
        filter: Filter::default(),
        limit: DEFAULT_LIMIT,
        cursor: None,
        passthrough: Vec::new(),
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            k if apply_source_param(&mut p.filter, k, &value)? => {}
            k if apply_filter_param(&mut p.filter, k, &value)? => {}
            "limit" => p.limit = parse_limit(&value, MAX_LIMIT)?,
            "cursor" => {
                p.cursor = Some(decode_cursor(&value).ok_or_else(|| {
                    ApiError::bad_request(
                        "parameter `cursor` is not one this server issued; follow `_links.next` as given",
                    )
                })?);
                continue;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`; /api/events takes source, after, before, q, \
                     actor, action, spec, member, token, kind, limit and cursor"
                )))
            }
        }
        p.passthrough.push((key.into_owned(), value.into_owned()));
    }
    Ok(p)
}

fn link(params: &[(String, String)], cursor: Option<&Cursor>) -> Value {
    crate::routes::auditlog::link_with(LIST_PATH, params, cursor.map(encode_cursor))
}

#[tracing::instrument(skip_all)]
async fn list_events(
    State(AppState { store, .. }): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<axum::response::Response> {
    let params = parse_params(query.as_deref())?;
    let (rows, more) = read_page(
        &store,
        &params.filter,
        params.cursor.as_ref(),
        0,
        params.limit,
    )
    .await?;
    let mut links = serde_json::Map::new();
    links.insert(
        "self".into(),
        link(&params.passthrough, params.cursor.as_ref()),
    );
    if more {
        if let Some(last) = rows.last() {
            links.insert(
                "next".into(),
                link(&params.passthrough, Some(&Cursor::of(last))),
            );
        }
    }
    Ok(json_body(|out| {
        out.extend_from_slice(b"{\"items\":");
        crate::event::write_envelopes(out, &rows);
        out.extend_from_slice(b",\"_links\":");
        let _ = serde_json::to_writer(&mut *out, &links);
        out.push(b'}');
    }))
}

#[tracing::instrument(skip_all, fields(source = %source, event_id = %id))]
async fn get_event(
    State(AppState { store, .. }): State<AppState>,
    Path((source, id)): Path<(String, String)>,
) -> Result<axum::response::Response> {
    let src = Source::parse(&source).ok_or_else(|| {
        ApiError::not_found(format!(
            "no source {source:?}; sources are `launchdarkly`, `tfc` and `cbc`"
        ))
    })?;
    let row = store
        .get(src, &id)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .ok_or_else(|| ApiError::not_found(format!("no {source} event with id {id:?}")))?;
    Ok(json_body(|out| {
        crate::event::write_envelope(out, &row.envelope())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_foreign_text() {
        let c = Cursor {
            date: 1_700_000_000_123,
            id: "a\nb".into(),
            source: "tfc".into(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&c)), Some(c));
        assert_eq!(decode_cursor("1700_abc"), None);
        assert_eq!(
            decode_cursor(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("1\nnope\nx")),
            None
        );
    }
}
