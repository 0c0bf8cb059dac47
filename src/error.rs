//! The API error type: every REST failure and every WebSocket `error` frame is one of these.
//! Internal errors are logged with their cause and reach the client only as a generic message.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// A request body that is not JSON (415; not one of PROTOCOL.md's codes, which are about
    /// what a JSON request says).
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_ms: u64,
    },
    #[error("{0}")]
    Muted(String),
    #[error("{message}")]
    SlowMode {
        message: String,
        retry_after_ms: u64,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::BadRequest(m.into())
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::Forbidden(m.into())
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::NotFound(m.into())
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::Conflict(m.into())
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::Unauthorized(m.into())
    }

    /// How long the client should wait, for errors that say so.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_ms, .. } | Self::SlowMode { retry_after_ms, .. } => {
                Some(*retry_after_ms)
            }
            _ => None,
        }
    }

    /// The protocol's error code, shared by REST bodies and WebSocket `error` frames.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::TooLarge(_) => "too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::RateLimited { .. } => "rate_limited",
            Self::Muted(_) => "muted",
            Self::SlowMode { .. } => "slow_mode",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } | Self::SlowMode { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Muted(_) => StatusCode::FORBIDDEN,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The text a client may see: never the cause of an internal error.
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "internal error".into()
            }
            other => other.to_string(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => ApiError::Conflict(what),
            StoreError::NotFound => ApiError::NotFound("not found".into()),
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "store unavailable");
                ApiError::Unavailable("the database is unavailable, try again".into())
            }
            StoreError::Other(e) => ApiError::Internal(e.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = json!({"error": {"code": self.code(), "message": self.public_message()}});
        let mut resp = (status, Json(body)).into_response();
        if let Self::RateLimited { retry_after_ms, .. } | Self::SlowMode { retry_after_ms, .. } =
            &self
        {
            let secs = retry_after_ms.div_ceil(1000).max(1);
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        resp
    }
}
