//! API errors: every failure becomes `{"code": "...", "message": "..."}` with a fitting status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// Result type of handlers.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// An error a handler returns. Client mistakes carry their own message; internal errors
/// are logged in full and answered with a generic message.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client's request was wrong; `status` is a 4xx.
    #[error("{message}")]
    Client {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// The store cannot take writes or reads right now (the client may retry).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or an unexpected failure.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A 4xx error with a machine-readable code and a message a person can act on.
    pub fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::Client {
            status,
            code,
            message: message.into(),
        }
    }

    /// `400 invalid_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// `401 unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::client(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Client { status, .. } => *status,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The JSON error body.
#[derive(Debug, Serialize)]
pub struct ErrorOut<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Client { code, message, .. } => {
                (status, Json(ErrorOut { code, message })).into_response()
            }
            Self::Unavailable(detail) => {
                tracing::error!(error = %detail, "store unavailable");
                let body = ErrorOut {
                    code: "unavailable",
                    message: "the store is unavailable; retry later",
                };
                (status, [("retry-after", "5")], Json(body)).into_response()
            }
            Self::Internal(e) => {
                tracing::error!(error.cause_chain = ?e, "internal error");
                let body = ErrorOut {
                    code: "internal",
                    message: "internal error; see the server log",
                };
                (status, Json(body)).into_response()
            }
        }
    }
}
