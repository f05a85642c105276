//! `GET /queue/{consumer}?limit=N`: each consumer receives every stored event exactly once,
//! as the common envelope (`source` filter, repeatable: the consumer's position passes
//! events of other sources, so a consumer keeps one filter), in arrival order (a backfilled event older than what a consumer already has still reaches
//! it), as Carbon Black Cloud's audit-log queue does. Consumers are independent; positions
//! are kept in the store.
//!
//! With `ack=explicit` the batch is leased for `visibility` seconds (1 to 3600, default 30)
//! under the `ack` token of the answer: `POST /queue/{consumer}/ack` with `{"ack": TOKEN}`
//! settles it (`204`); a batch not acknowledged in time is delivered again (before newer
//! events), so a consumer that crashes mid-batch loses nothing. An acknowledgement after
//! the lease ran out answers `409 lease_expired` and settles nothing; an unknown token `404`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::error::{ApiError, Result};
use crate::routes::auditlog::parse_limit;
use crate::store::AckOutcome;
use crate::AppState;

/// Default and largest batch.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
/// Default and largest lease of an `ack=explicit` batch, in seconds.
pub const DEFAULT_VISIBILITY: u64 = 30;
pub const MAX_VISIBILITY: u64 = 3600;

/// Queue routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/queue/{consumer}", get(get_queue))
        .route("/queue/{consumer}/ack", post(post_ack))
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
) -> Result<axum::response::Response> {
    if !valid_consumer(&consumer) {
        return Err(ApiError::bad_request(
            "the consumer name must be 1 to 64 characters of letters, digits, `-`, `_` and `.`",
        ));
    }
    let mut limit = DEFAULT_LIMIT;
    let mut explicit = false;
    let mut visibility = None;
    let mut sources = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "limit" => limit = parse_limit(&value, MAX_LIMIT)?,
            "source" => {
                let source = crate::event::Source::parse(&value).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "parameter `source` must be one of `launchdarkly`, `tfc`, `cbc`, got {value:?}"
                    ))
                })?;
                sources.push(source.as_str().to_owned());
            }
            "ack" => match value.as_ref() {
                "explicit" => explicit = true,
                "auto" => explicit = false,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "parameter `ack` must be `explicit` or `auto`, got {other:?}"
                    )))
                }
            },
            "visibility" => {
                visibility = Some(
                    value
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|v| (1..=MAX_VISIBILITY).contains(v))
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "parameter `visibility` must be whole seconds from 1 to {MAX_VISIBILITY}, got {value:?}"
                            ))
                        })?,
                )
            }
            _ => {}
        }
    }
    if visibility.is_some() && !explicit {
        return Err(ApiError::bad_request(
            "parameter `visibility` applies only with `ack=explicit`",
        ));
    }
    let lease =
        explicit.then(|| std::time::Duration::from_secs(visibility.unwrap_or(DEFAULT_VISIBILITY)));
    let batch = store
        .queue_take_from(&consumer, limit, lease, &sources)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let mut head = json!({"consumer": consumer, "count": batch.rows.len()});
    if let (Some(token), Some(lease)) = (batch.ack, lease) {
        head["ack"] = Value::String(token);
        head["visibility"] = Value::from(lease.as_secs());
    }
    Ok(crate::routes::auditlog::json_body(|out| {
        // `{...head fields..., "items": [...]}`
        let _ = serde_json::to_writer(&mut *out, &head);
        out.pop();
        out.extend_from_slice(b",\"items\":");
        crate::event::write_envelopes(out, &batch.rows);
        out.push(b'}');
    }))
}

/// `POST /queue/{consumer}/ack` body.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AckIn {
    ack: String,
}

#[tracing::instrument(skip_all, fields(consumer = %consumer))]
async fn post_ack(
    State(AppState { store, .. }): State<AppState>,
    Path(consumer): Path<String>,
    body: std::result::Result<Json<AckIn>, JsonRejection>,
) -> Result<StatusCode> {
    if !valid_consumer(&consumer) {
        return Err(ApiError::bad_request(
            "the consumer name must be 1 to 64 characters of letters, digits, `-`, `_` and `.`",
        ));
    }
    let Json(body) = body.map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be {{\"ack\": TOKEN}} as JSON: {}",
            e.body_text()
        ))
    })?;
    match store
        .queue_ack(&consumer, &body.ack)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
    {
        AckOutcome::Settled(_) => Ok(StatusCode::NO_CONTENT),
        AckOutcome::Expired => Err(ApiError::client(
            StatusCode::CONFLICT,
            "lease_expired",
            "the batch's lease ran out before this acknowledgement: its events are delivered again",
        )),
        AckOutcome::Unknown => Err(ApiError::not_found(format!(
            "consumer {consumer:?} holds no batch with this ack token (already acknowledged, or redelivered after its lease ran out)"
        ))),
    }
}
