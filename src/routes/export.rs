//! `GET /export.csv` and `GET /export.ndjson`: the archive, streamed oldest first.
//!
//! Filters as the read API (`after`, `before`, `q`, `spec`, `member`, `token`) plus `kind`
//! and `action` (repeatable); CSV takes `columns=` (comma-separated) or `preset=ld-audit`.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::{ApiError, Result};
use crate::export::{self, Format};
use crate::routes::auditlog::apply_filter_param;
use crate::store::Filter;
use crate::AppState;

/// Export routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/export.csv", get(get_csv))
        .route("/export.ndjson", get(get_ndjson))
}

/// Parses the export query: filters, and for CSV `columns`/`preset`.
pub fn parse_export_query(query: Option<&str>, csv: bool) -> Result<(Filter, Format)> {
    let mut filter = Filter::default();
    let (mut columns, mut preset) = (None, None);
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if apply_filter_param(&mut filter, &key, &value)? {
            continue;
        }
        match key.as_ref() {
            "columns" if csv => columns = Some(value.into_owned()),
            "preset" if csv => preset = Some(value.into_owned()),
            "columns" | "preset" => {
                return Err(ApiError::bad_request(format!(
                    "parameter `{key}` applies to /export.csv only"
                )))
            }
            _ => {}
        }
    }
    let format = if csv {
        Format::csv(columns.as_deref(), preset.as_deref()).map_err(ApiError::bad_request)?
    } else {
        Format::Ndjson
    };
    Ok((filter, format))
}

fn streamed(
    state: &AppState,
    filter: Filter,
    format: Format,
    content_type: &'static str,
    file: &'static str,
) -> Response {
    let rx = export::stream(&state.store, filter, format);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Some(Ok(chunk)) => Some((Ok::<_, std::io::Error>(chunk), rx)),
            Some(Err(e)) => {
                tracing::error!(error = %e, "export failed mid-stream");
                Some((Err(std::io::Error::other(e.to_string())), rx))
            }
            None => None,
        }
    });
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_DISPOSITION, file),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[tracing::instrument(skip_all)]
async fn get_csv(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response> {
    let (filter, format) = parse_export_query(query.as_deref(), true)?;
    Ok(streamed(
        &state,
        filter,
        format,
        "text/csv; charset=utf-8",
        "attachment; filename=\"audithook-export.csv\"",
    ))
}

#[tracing::instrument(skip_all)]
async fn get_ndjson(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response> {
    let (filter, format) = parse_export_query(query.as_deref(), false)?;
    Ok(streamed(
        &state,
        filter,
        format,
        "application/x-ndjson",
        "attachment; filename=\"audithook-export.ndjson\"",
    ))
}
