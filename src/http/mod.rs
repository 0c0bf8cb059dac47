//! The REST API. Each feature module exposes `router()`; they are merged once here with the
//! operations endpoints, and [`crate::app`] puts the result beside the WebSocket route.
//!
//! Handlers read the request, call the chat operations ([`crate::chat`]) or the store, and
//! shape the answer; they never touch SQL (that is `store`) or sockets (that is `hub`). The
//! extractors here turn every malformed request into a 4xx in the protocol's words.

pub mod account;
pub mod admin;
pub mod attachments;
pub mod auth;
pub mod blocks;
pub mod bots;
pub mod messages;
pub mod openapi;
pub mod ops;
pub mod rooms;
pub mod updates;
pub mod web;
pub mod webhooks;

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::{Router, routing::get};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};
use crate::store::UserRecord;

pub use crate::state::AppState;

/// The authenticated caller of a REST endpoint (`Authorization: Bearer <access token>`).
pub struct Caller {
    pub user: UserRecord,
    pub is_admin: bool,
}

impl Caller {
    /// Ok for a global admin; `forbidden` for anyone else.
    pub fn require_admin(&self) -> ApiResult<()> {
        if self.is_admin {
            Ok(())
        } else {
            Err(ApiError::forbidden("administrators only"))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let token = crate::auth::bearer(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized("missing Authorization: Bearer <access token>")
        })?;
        let user = state.authenticate(token).await?.user;
        let is_admin = state.is_admin(&user);
        Ok(Caller { user, is_admin })
    }
}

/// A JSON body. A request without a JSON `Content-Type` is 415; a body that is not valid JSON,
/// not an object, or not the expected shape is a 400 that names the field in the protocol's
/// words (never a Rust type).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> ApiResult<Self> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as JSON, with Content-Type: application/json".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| match r.status() {
                axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::TooLarge("the request body is too large".into())
                }
                _ => ApiError::bad_request("the request body could not be read"),
            })?;
        decode_json(&bytes).map(ApiJson)
    }
}

/// Whether a request says its body is JSON (`application/json`, or a `+json` type).
pub fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|m| {
            m.type_() == "application"
                && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"))
        })
}

/// An optional JSON body: none, only whitespace, or `null` give the default.
pub fn optional_json<T: DeserializeOwned + Default>(bytes: &[u8]) -> ApiResult<T> {
    let text = bytes.trim_ascii();
    if text.is_empty() || text == b"null" {
        Ok(T::default())
    } else {
        decode_json(text)
    }
}

/// Decodes a JSON request body into `T`, with errors that name the field and never a type.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    integral_numbers(&mut value);
    if !value.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let problem = crate::error::in_json_words(&e.into_inner().to_string());
        ApiError::bad_request(if path == "." {
            problem
        } else {
            format!("{path}: {problem}")
        })
    })
}

/// JSON has one number type: `5.0` is the integer 5 to a client (and to JSON Schema), so it is
/// read as one wherever an integer is expected.
fn integral_numbers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(fields) => fields.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

/// Path parameters whose rejection is a 400 naming the bad segment.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|r| ApiError::bad_request(r.body_text()))
    }
}

/// Query parameters whose rejection is a 400 naming the bad parameter.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|r| ApiError::bad_request(r.body_text()))
    }
}

/// Feeds arbitrary bytes to every REST body type and its validation, as the handlers do.
/// For the `rest_body` fuzz target; any panic here is a bug a client could trigger.
#[doc(hidden)]
pub fn fuzz_bodies(data: &[u8]) {
    auth::fuzz(data);
    rooms::fuzz(data);
    messages::fuzz(data);
    admin::fuzz(data);
}

/// The REST API, the operations endpoints and the web client (the WebSocket route is
/// [`crate::ws::router`]; [`crate::app`] assembles both with the middleware).
pub fn router(state: &AppState) -> Router<AppState> {
    let c = &state.config;
    let credentials = crate::app::rate_limit(
        Duration::from_secs(60) / c.auth_rate_per_minute,
        c.auth_burst,
        c.trust_forwarded_for,
        state.metrics.clone(),
    );
    Router::new()
        .merge(auth::credentials_router().layer(credentials))
        .merge(ops::router())
        .merge(auth::router())
        .merge(rooms::router())
        .merge(messages::router())
        .merge(updates::router())
        .merge(blocks::router())
        .merge(account::router())
        .merge(admin::router())
        .merge(bots::router())
        .merge(webhooks::router())
        .merge(attachments::router())
        .merge(web::router())
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .route("/api/v1/asyncapi.json", get(asyncapi_json))
}

/// The AsyncAPI document of the WebSocket protocol (built once).
async fn asyncapi_json() -> impl axum::response::IntoResponse {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOC.get_or_init(crate::asyncapi::document_text).clone(),
    )
}
