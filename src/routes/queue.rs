//! `GET /queue/{consumer}?limit=N`: each consumer receives every stored event exactly once,
//! in arrival order (a backfilled event older than what a consumer already has still reaches
//! it), as Carbon Black Cloud's audit-log queue does. Consumers are independent; positions
//! are kept in the store.

use axum::extract::{Path, RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::error::{ApiError, Result};
use crate::event::listing_rep;
use crate::routes::auditlog::parse_limit;
use crate::AppState;

/// Default and largest batch.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// Queue routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/queue/{consumer}", get(get_queue))
}

fn valid_consumer(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[tracing::instrument(skip_all, fields(consumer = %consumer))]
async fn get_queue(
    State(AppState { store, .. }): State<AppState>,
    Path(consumer): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>> {
    if !valid_consumer(&consumer) {
        return Err(ApiError::bad_request(
            "the consumer name must be 1 to 64 characters of letters, digits, `-`, `_` and `.`",
        ));
    }
    let mut limit = DEFAULT_LIMIT;
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        if key == "limit" {
            limit = parse_limit(&value, MAX_LIMIT)?;
        }
    }
    let rows = store
        .queue_take(&consumer, limit)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| listing_rep(&r.raw, r.date, &r.id))
        .collect();
    Ok(Json(
        json!({"consumer": consumer, "count": items.len(), "items": items}),
    ))
}
