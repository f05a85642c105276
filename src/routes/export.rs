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
        if apply_filter_param(&mut filter, &key, &value)?
            || crate::routes::events::apply_source_param(&mut filter, &key, &value)?
        {
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
) -> Result<Response> {
    // Each export holds a read snapshot and a connection for as long as it streams: at most
    // AUDITHOOK_MAX_EXPORTS run at once. The permit lives as long as the body does.
    let permit = state.exports.clone().try_acquire_owned().map_err(|_| {
        ApiError::client(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_exports",
            format!(
                "{} exports are running (AUDITHOOK_MAX_EXPORTS); retry when one has finished",
                state.cfg.max_exports
            ),
        )
    })?;
    let rx = export::stream(
        &state.store,
        filter,
        format,
        Some(state.cfg.export_stall_timeout),
        permit,
    );
    // An export that ends without its end mark was cut short (a stall, a failure): the body
    // then ends in an error, so the client sees a broken transfer, never a short file.
    let body = futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Ok(chunk)) if chunk.is_empty() => None,
            Some(Ok(chunk)) => Some((Ok::<_, std::io::Error>(chunk), Some(rx))),
            Some(Err(e)) => {
                tracing::error!(error = %e, "export failed mid-stream");
                Some((Err(std::io::Error::other(e.to_string())), None))
            }
            None => Some((
                Err(std::io::Error::other("the export stopped before its end")),
                None,
            )),
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_DISPOSITION, file),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[tracing::instrument(skip_all)]
async fn get_csv(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response> {
    let (filter, format) = parse_export_query(query.as_deref(), true)?;
    streamed(
        &state,
        filter,
        format,
        "text/csv; charset=utf-8",
        "attachment; filename=\"audithook-export.csv\"",
    )
}

#[tracing::instrument(skip_all)]
async fn get_ndjson(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response> {
    let (filter, format) = parse_export_query(query.as_deref(), false)?;
    streamed(
        &state,
        filter,
        format,
        "application/x-ndjson",
        "attachment; filename=\"audithook-export.ndjson\"",
    )
}
