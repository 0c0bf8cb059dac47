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
    /// A request body that is not JSON (415; not one of the protocol's original codes, which are about
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
    /// 503 `unavailable` with Retry-After: the server is busy with this kind of work now.
    #[error("{message}")]
    Busy {
        message: String,
        retry_after_ms: u64,
    },
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
            Self::RateLimited { retry_after_ms, .. }
            | Self::SlowMode { retry_after_ms, .. }
            | Self::Busy { retry_after_ms, .. } => Some(*retry_after_ms),
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
            Self::Unavailable(_) | Self::Busy { .. } => "unavailable",
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
            Self::Unavailable(_) | Self::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
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

/// serde names what it expected in Rust's words (`i64`, `struct SendBody`, `a sequence`);
/// a client reads JSON's.
pub fn in_json_words(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("expected ") {
        let (before, after) = rest.split_at(at + "expected ".len());
        out.push_str(before);
        let word_end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ' '))
            .unwrap_or(after.len());
        let phrase = &after[..word_end];
        let (replacement, used) = [
            ("struct ", "an object"),
            ("a sequence", "an array"),
            ("a map", "an object"),
            ("i8", "an integer"),
            ("i16", "an integer"),
            ("i32", "an integer"),
            ("i64", "an integer"),
            ("u8", "a non-negative integer"),
            ("u16", "a non-negative integer"),
            ("u32", "a non-negative integer"),
            ("u64", "a non-negative integer"),
            ("usize", "a non-negative integer"),
            ("f32", "a number"),
            ("f64", "a number"),
        ]
        .iter()
        .find(|(rust, _)| phrase.starts_with(rust))
        .map(|(rust, json)| {
            // A struct's name (and "with N elements") goes with it.
            let used = if *rust == "struct " {
                phrase.len()
            } else {
                rust.len()
            };
            (*json, used)
        })
        .unwrap_or(("", 0));
        out.push_str(replacement);
        rest = &after[used..];
    }
    out.push_str(rest);
    out
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
        if let Some(retry_after_ms) = self.retry_after_ms() {
            let secs = retry_after_ms.div_ceil(1000).max(1);
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::in_json_words;

    #[test]
    fn serde_messages_lose_their_rust_types() {
        for (rust, json) in [
            (
                "invalid type: string \"two\", expected i64",
                "invalid type: string \"two\", expected an integer",
            ),
            (
                "invalid type: sequence, expected struct SendBody with 4 elements",
                "invalid type: sequence, expected an object",
            ),
            (
                "invalid value: integer `-1`, expected u64 at line 1 column 9",
                "invalid value: integer `-1`, expected a non-negative integer at line 1 column 9",
            ),
            (
                "invalid type: map, expected a sequence",
                "invalid type: map, expected an array",
            ),
            ("missing field `body`", "missing field `body`"),
            (
                "unknown variant `x`, expected `public` or `private`",
                "unknown variant `x`, expected `public` or `private`",
            ),
        ] {
            assert_eq!(in_json_words(rust), json);
        }
    }
}
