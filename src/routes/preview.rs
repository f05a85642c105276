//! `POST /preview`: renders a template like the framework's `npm run preview`.
//!
//! Body: `{"template": SOURCE}` or `{"name": NAME}`; `{"context": {...}}` (used as is) or
//! `{"event": ID}` (a stored event's template context); optional `formVariables`,
//! `filename` (decides JSON escaping for inline sources, as the template file name does in
//! the framework), `endpoint` (render a URL/header template: form variables at top level,
//! `oauth`, `context`) and `oauth`. Answers the rendered bytes as `text/plain`, or `422`
//! with the error, line and column.

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{ApiError, Result};
use crate::render::{self, context::template_context, RenderFailure};
use crate::AppState;

/// Largest preview request body.
const MAX_PREVIEW_BODY: usize = 2 * 1024 * 1024;

/// Preview routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/preview", post(create_preview))
        .layer(DefaultBodyLimit::max(MAX_PREVIEW_BODY))
}

/// A preview request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PreviewIn {
    pub template: Option<String>,
    pub name: Option<String>,
    pub context: Option<Value>,
    pub event: Option<String>,
    pub form_variables: Option<Value>,
    pub filename: Option<String>,
    #[serde(default)]
    pub endpoint: bool,
    pub oauth: Option<Value>,
}

fn rejection(e: JsonRejection) -> ApiError {
    match e {
        JsonRejection::MissingJsonContentType(_) => ApiError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        ),
        JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::client(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the preview request is larger than {MAX_PREVIEW_BODY} bytes"),
            )
        }
        other => ApiError::bad_request(format!("invalid preview request: {}", other.body_text())),
    }
}

fn render_error(e: RenderFailure) -> Response {
    let mut body =
        serde_json::json!({"code": "template_error", "message": e.message, "stage": e.stage});
    if let (Some(line), Some(column)) = (e.line, e.column) {
        body["line"] = line.into();
        body["column"] = column.into();
    }
    (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
}

/// Sets the flag when dropped: the handler's future is dropped when the client goes away or
/// the request times out, and the render then stops at its next check.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Stack of the thread a preview compiles and renders on. Nesting is limited before parsing
/// (see `render::MAX_BLOCK_DEPTH`); the large stack is a second guard.
const RENDER_STACK: usize = 64 * 1024 * 1024;

#[tracing::instrument(skip_all)]
async fn create_preview(
    State(state): State<AppState>,
    input: std::result::Result<Json<PreviewIn>, JsonRejection>,
) -> Result<Response> {
    let Json(input) = input.map_err(rejection)?;
    match run_preview(&state, input).await? {
        Ok(text) => {
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
        }
        Err(e) => Ok(render_error(e)),
    }
}

/// Renders a preview request (the `/preview` route and the UI's template playground):
/// the output, or why the template failed; `Err` for a request that is wrong (`400`,
/// `404`) or a service that is stopping.
pub async fn run_preview(
    state: &AppState,
    input: PreviewIn,
) -> Result<std::result::Result<String, RenderFailure>> {
    let payload = match (input.context, &input.event) {
        (Some(ctx @ Value::Object(_)), None) => ctx,
        (Some(_), None) => return Err(ApiError::bad_request("`context` must be a JSON object")),
        (None, Some(id)) => {
            let row = state
                .store
                .get(crate::event::Source::LaunchDarkly, id)
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
            let row =
                row.ok_or_else(|| ApiError::not_found(format!("no stored event with _id {id:?}")))?;
            let entry = crate::event::stored_entry(&row.raw, &row.id, row.date);
            template_context(&entry, &state.cfg.ld_base_url)
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `context` and `event`",
            ))
        }
    };
    let form_variables = match input.form_variables {
        None => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => {
            return Err(ApiError::bad_request(
                "`formVariables` must be a JSON object",
            ))
        }
    };
    /// The template to render: a source of the request's, or a kept template by name.
    enum Chosen {
        Inline(String),
        Named(String),
    }
    let chosen = match (input.template, input.name) {
        (Some(source), None) => Chosen::Inline(source),
        (None, Some(name)) if state.renderer.has(&name) => Chosen::Named(name),
        (None, Some(name)) => {
            return Err(ApiError::bad_request(format!(
                "no template named {name:?}; known: {}",
                state.renderer.names().join(", ")
            )))
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `template` (source) and `name`",
            ))
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let budget = render::Budget {
        deadline: Some(std::time::Instant::now() + state.cfg.render_timeout),
        limit: state.cfg.render_timeout,
        cancel: Some(stop.clone()),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let renderer = state.renderer.clone();
    let running = state.metrics.renders_running.clone();
    running.inc();
    let (filename, endpoint, oauth) = (input.filename, input.endpoint, input.oauth);
    std::thread::Builder::new()
        .name("audithook-preview".into())
        .stack_size(RENDER_STACK)
        .spawn(move || {
            let out = (|| {
                let inline;
                let (compiled, json_escape) = match &chosen {
                    Chosen::Inline(source) => {
                        inline = renderer.compile(source)?;
                        let escape = filename.as_deref().is_some_and(render::json_escape_wanted);
                        (&inline, escape)
                    }
                    Chosen::Named(name) => {
                        let c = renderer.get(name).ok_or_else(|| RenderFailure {
                            stage: "render",
                            message: format!("no template named {name:?}"),
                            line: None,
                            column: None,
                        })?;
                        (c, c.json_escape)
                    }
                };
                let data = if endpoint {
                    render::endpoint_data(&form_variables, &oauth.unwrap_or(Value::Null), &payload)
                } else {
                    render::body_data(&payload, &form_variables, json_escape)
                };
                renderer.render_within(compiled, &data, &budget)
            })();
            running.dec();
            let _ = tx.send(out);
        })
        .map_err(|e| {
            state.metrics.renders_running.dec();
            ApiError::Internal(anyhow::anyhow!("cannot start a render thread: {e}"))
        })?;
    let shutdown = state.shutdown.clone();
    let out = tokio::select! {
        out = rx => out.map_err(|_| ApiError::Internal(anyhow::anyhow!("the render thread failed")))?,
        _ = shutdown.cancelled() => {
            stop.store(true, Ordering::Relaxed);
            return Err(ApiError::Unavailable("the service is stopping".into()));
        }
    };
    Ok(out)
}
