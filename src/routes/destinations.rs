//! `GET /api/destinations`, `GET /api/destinations/{name}`: each destination's state
//! (cursor, lag in events and seconds, delivered, retrying, dead letters, last error);
//! the second lists the dead letters inline, newest first, a page at a time
//! (`dead_letters_before`, `limit`). `POST /api/destinations/{name}/replay` with
//! `{"after": T}` delivers again every event dated at or after T (then carries on as
//! before), or with `{"dead_letters": true}` retries the dead letters.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::error::{ApiError, Result};
use crate::event::rfc3339_ms;
use crate::forward::Runner;
use crate::AppState;

/// Dead letters listed per page, by default and at most.
pub const DEFAULT_DEAD_LETTERS: usize = 20;
pub const MAX_DEAD_LETTERS: usize = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/destinations", get(list))
        .route("/api/destinations/{name}", get(one))
        .route("/api/destinations/{name}/replay", post(replay))
}

fn runner<'a>(state: &'a AppState, name: &str) -> Result<&'a std::sync::Arc<Runner>> {
    state.forwarding.get(name).ok_or_else(|| {
        ApiError::not_found(format!(
            "no destination named {name:?} (configured: {})",
            if state.forwarding.runners.is_empty() {
                "none; set AUDITHOOK_DESTINATIONS".to_owned()
            } else {
                state
                    .forwarding
                    .runners
                    .iter()
                    .map(|r| r.dest.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ))
    })
}

fn unavailable(e: crate::store::StoreError) -> ApiError {
    ApiError::Unavailable(e.to_string())
}

/// The state of one destination as JSON.
pub async fn state_of(state: &AppState, r: &Runner) -> Result<Value> {
    let d = &r.dest;
    let sources: Vec<String> = d.sources.iter().map(|s| s.as_str().to_owned()).collect();
    let stats = state
        .store
        .destination_stats(&d.name)
        .await
        .map_err(unavailable)?;
    let live = r.live();
    let now = crate::now_ms();
    let time = |t: Option<i64>| t.map(rfc3339_ms);
    let mut out = json!({
        "name": d.name,
        "kind": d.kind.name(),
        "target": d.kind.target(),
        "sources": sources,
        "batch": d.batch,
        "delivering_here": live.delivering,
        "retrying": live.retrying,
        "failures_in_a_row": live.failures_in_a_row,
        "next_attempt": time(live.next_attempt_at),
        "last_success": time(live.last_success_at),
        "last_error": live.last_error.as_ref().map(|e| json!({
            "at": rfc3339_ms(e.at),
            "class": e.class,
            "status": e.status,
            "message": e.message,
            "body": e.body,
        })),
    });
    match stats {
        Some(s) => {
            out["cursor"] = s.row.position.into();
            out["delivered"] = s.row.delivered.into();
            out["lag"] = json!({
                "events": s.lag_events,
                "seconds": s.oldest_pending_at.map_or(0, |o| (now - o).max(0) / 1000),
            });
            out["dead_letters_count"] = s.dead_letters.into();
            out["dead_letters_replaying"] = s.replaying.into();
            out["created"] = rfc3339_ms(s.row.created_at).into();
        }
        None => {
            // Not started yet (the row is created when delivery starts).
            out["cursor"] = Value::Null;
            out["delivered"] = 0.into();
            out["lag"] = json!({"events": 0, "seconds": 0});
            out["dead_letters_count"] = 0.into();
            out["dead_letters_replaying"] = 0.into();
        }
    }
    Ok(out)
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>> {
    let mut items = Vec::new();
    for r in &state.forwarding.runners {
        items.push(state_of(&state, r).await?);
    }
    Ok(Json(json!({ "items": items })))
}

async fn one(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>> {
    let r = runner(&state, &name)?;
    let mut before = None;
    let mut limit = DEFAULT_DEAD_LETTERS;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "dead_letters_before" => {
                before = Some(v.parse::<i64>().ok().filter(|b| *b > 0).ok_or_else(|| {
                    ApiError::bad_request(
                        "`dead_letters_before` must be a dead letter id (a positive integer)",
                    )
                })?)
            }
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=MAX_DEAD_LETTERS).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "`limit` must be an integer from 1 to {MAX_DEAD_LETTERS}"
                        ))
                    })?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`; known: dead_letters_before, limit"
                )))
            }
        }
    }
    let mut out = state_of(&state, r).await?;
    let letters = state
        .store
        .dead_letters_list(&name, before, limit + 1)
        .await
        .map_err(unavailable)?;
    let more = letters.len() > limit;
    let items: Vec<Value> = letters
        .iter()
        .take(limit)
        .map(|d| {
            json!({
                "id": d.id,
                "source": d.source,
                "event_id": d.event_id,
                "status": d.status,
                "error": d.error,
                "body": d.body,
                "time": rfc3339_ms(d.at),
                "replaying": d.replay,
            })
        })
        .collect();
    let mut links = json!({});
    if more {
        if let Some(last) = letters.get(limit - 1) {
            links["next"] = json!({
                "href": format!("/api/destinations/{name}?dead_letters_before={}&limit={limit}", last.id),
                "type": "application/json",
            });
        }
    }
    out["dead_letters"] = json!({ "items": items, "_links": links });
    Ok(Json(out))
}

async fn replay(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: std::result::Result<Json<Value>, JsonRejection>,
) -> Result<axum::response::Response> {
    let r = runner(&state, &name)?;
    let Json(body) = body.map_err(|e| match e {
        JsonRejection::MissingJsonContentType(_) => ApiError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        ),
        other => ApiError::bad_request(format!("invalid replay request: {}", other.body_text())),
    })?;
    let Some(obj) = body.as_object() else {
        return Err(ApiError::bad_request(
            "send {\"after\": T} or {\"dead_letters\": true}",
        ));
    };
    if let Some(k) = obj.keys().find(|k| *k != "after" && *k != "dead_letters") {
        return Err(ApiError::bad_request(format!(
            "unknown field `{k}`; send {{\"after\": T}} or {{\"dead_letters\": true}}"
        )));
    }
    let answer = match (obj.get("after"), obj.get("dead_letters")) {
        (Some(after), None) => {
            let t = match after {
                Value::Number(n) => n.as_i64().ok_or(()),
                Value::String(s) => crate::sources::launchdarkly::parse_time(s).map_err(|_| ()),
                _ => Err(()),
            }
            .map_err(|_| {
                ApiError::bad_request("`after` must be epoch milliseconds or an RFC 3339 time")
            })?;
            let row = state
                .store
                .destination_replay_from(&name, t)
                .await
                .map_err(unavailable)?
                .ok_or_else(|| {
                    ApiError::Unavailable(format!(
                        "destination {name} has not started delivering yet; try again shortly"
                    ))
                })?;
            tracing::info!(destination = %name, after = t, cursor = row.position, "replay from a time asked for");
            json!({"replay": "after", "after": rfc3339_ms(t), "cursor": row.position})
        }
        (None, Some(Value::Bool(true))) => {
            let n = state
                .store
                .dead_letters_replay(&name)
                .await
                .map_err(unavailable)?;
            tracing::info!(destination = %name, dead_letters = n, "dead-letter replay asked for");
            json!({"replay": "dead_letters", "dead_letters": n})
        }
        _ => {
            return Err(ApiError::bad_request(
                "send exactly one of {\"after\": T} and {\"dead_letters\": true}",
            ))
        }
    };
    r.wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}
