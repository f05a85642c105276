//! `POST /hooks/launchdarkly`: the endpoint of a LaunchDarkly `auditLogEventsHook`.
//!
//! Order of checks: credential in the header, content type, body size, signature over the
//! raw bytes, then parsing. A 2xx goes out only after the event is committed.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;

use crate::auth::HeaderCredential;
use crate::error::{ApiError, Result};
use crate::event::{normalise, Channel};
use crate::store::Inserted;
use crate::AppState;

/// The LaunchDarkly signature header.
pub const SIGNATURE_HEADER: &str = "x-ld-signature";

/// Hook routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/hooks/launchdarkly", post(create_event))
}

/// Answer to a hook delivery.
#[derive(Debug, Serialize)]
pub struct EventOut {
    #[serde(rename = "_id")]
    pub id: String,
    /// `stored` or `duplicate`.
    pub status: &'static str,
}

#[tracing::instrument(name = "hook", skip_all, fields(event_id))]
async fn create_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<EventOut>)> {
    let result = receive(&state, &headers, body).await;
    match &result {
        Ok((_, out)) if out.status == "stored" => {
            state.metrics.events_stored.inc();
        }
        Ok(_) => {
            state.metrics.events_duplicate.inc();
        }
        Err(e) => state.metrics.reject(reject_reason(e)),
    }
    result
}

fn reject_reason(e: &ApiError) -> &'static str {
    match e {
        ApiError::Client { code, .. } => code,
        ApiError::Unavailable(_) => "unavailable",
        ApiError::Internal(_) => "internal",
    }
}

async fn receive(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<EventOut>)> {
    let auth = &state.hook_auth;
    let signature = headers.get(SIGNATURE_HEADER).filter(|_| auth.has_secret());
    match auth.check_header(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
        HeaderCredential::Valid => {}
        HeaderCredential::Invalid => {
            return Err(ApiError::client(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the Authorization header does not carry a valid hook credential (Bearer token or Basic)",
            ))
        }
        HeaderCredential::Absent if signature.is_some() => {}
        HeaderCredential::Absent => {
            return Err(ApiError::client(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing credential: send Authorization: Bearer <AUDITHOOK_HOOK_TOKEN>, HTTP Basic, or X-LD-Signature",
            ))
        }
    }
    check_content_type(headers)?;
    let max = state.cfg.max_body;
    let too_large = || {
        ApiError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than AUDITHOOK_MAX_BODY ({max} bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, max).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            too_large()
        } else {
            ApiError::bad_request(format!("could not read the body: {e}"))
        }
    })?;
    if let Some(sig) = signature {
        if !state.hook_auth.verify_signature(sig.as_bytes(), &bytes) {
            return Err(ApiError::client(
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                "X-LD-Signature is not the HMAC-SHA256 of the body with the configured secret",
            ));
        }
    }
    state.metrics.events_received.inc();
    let event = normalise(&bytes, Channel::Hook)
        .map_err(|e| ApiError::client(StatusCode::BAD_REQUEST, "invalid_event", e.to_string()))?;
    let id = event.id.clone();
    tracing::Span::current().record("event_id", id.as_str());
    match state
        .store
        .insert(event)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
    {
        Inserted::Stored => Ok((
            StatusCode::ACCEPTED,
            Json(EventOut {
                id,
                status: "stored",
            }),
        )),
        Inserted::Duplicate => Ok((
            StatusCode::OK,
            Json(EventOut {
                id,
                status: "duplicate",
            }),
        )),
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<()> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(ApiError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type must be application/json, got {}",
                if ct.is_empty() { "none" } else { ct }
            ),
        ))
    }
}
