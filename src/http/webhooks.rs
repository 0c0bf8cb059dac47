//! Webhook administration (protocol v1.1), for admins: register an endpoint for some event
//! types, list and remove them, and read the latest delivery attempts. Delivery itself is
//! [`crate::webhooks`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Json, Router, routing::delete, routing::get};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApiJson, ApiPath, ApiQuery, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use crate::ids::WebhookId;
use crate::model::rfc3339;
use crate::store::WebhookRecord;
use crate::webhooks::{EVENTS, check_url, generate_secret, signing_key};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/admin/webhooks", get(list).post(create))
        .route("/api/v1/admin/webhooks/{id}", delete(remove))
        .route("/api/v1/admin/webhooks/{id}/deliveries", get(deliveries))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewWebhook {
    /// Where events are POSTed: http:// or https://. Loopback, private and link-local
    /// addresses are refused unless the server runs with --webhook-allow-private.
    #[schema(max_length = 2048)]
    url: String,
    /// Event types: message.created, message.updated, member.joined, member.left,
    /// room.created, room.updated, notification.
    #[schema(min_items = 1)]
    events: Vec<String>,
    /// `whsec_` and 24-64 bytes in base64; generated when absent.
    secret: Option<String>,
}

/// A webhook as the admin API shows it; `secret` only in the answer that creates it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Webhook {
    id: WebhookId,
    url: String,
    events: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    /// The resource or file that declared it, if any.
    managed_by: Option<String>,
    created_at: String,
}

impl Webhook {
    fn from(h: &WebhookRecord, with_secret: bool) -> Self {
        Webhook {
            id: h.id,
            url: h.url.clone(),
            events: h.event_list(),
            secret: with_secret.then(|| h.secret.clone()),
            managed_by: h.managed_by.clone(),
            created_at: rfc3339(h.created_at),
        }
    }
}

/// Checks a webhook's URL, events and secret; the error names what is wrong.
pub async fn validate(
    state: &AppState,
    url: &str,
    events: &[String],
    secret: Option<&str>,
) -> ApiResult<()> {
    if events.is_empty() {
        return Err(ApiError::bad_request(
            "events must name at least one event type",
        ));
    }
    if let Some(bad) = events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
        return Err(ApiError::BadRequest(format!(
            "events: unknown event type {bad:?}; known: {}",
            EVENTS.join(", ")
        )));
    }
    if let Some(secret) = secret {
        signing_key(secret).map_err(ApiError::BadRequest)?;
    }
    if url.len() > 2048 {
        return Err(ApiError::bad_request("url must be at most 2048 characters"));
    }
    check_url(url, state.config.webhook_allow_private)
        .await
        .map_err(ApiError::BadRequest)?;
    Ok(())
}

#[utoipa::path(post, operation_id = "create_webhook", path = "/api/v1/admin/webhooks", tag = "admin", request_body = NewWebhook,
    responses((status = 201, body = Webhook, description = "the secret is shown only here"),
        (status = 400, description = "a malformed or private URL, an unknown event, a bad secret"),
        (status = 403)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewWebhook>,
) -> ApiResult<(StatusCode, Json<Webhook>)> {
    caller.require_admin()?;
    validate(&state, &body.url, &body.events, body.secret.as_deref()).await?;
    let mut events = body.events;
    events.sort();
    events.dedup();
    let record = WebhookRecord {
        id: WebhookId::new(),
        url: body.url,
        events: serde_json::to_string(&events).expect("strings serialize"),
        secret: body.secret.unwrap_or_else(generate_secret),
        managed_by: None,
        created_at: crate::now_ms(),
    };
    state.store.create_webhook(&record).await?;
    state.hub.webhooks_changed().await?;
    tracing::info!(webhook = %record.id, by = %caller.user.id, "webhook created");
    Ok((StatusCode::CREATED, Json(Webhook::from(&record, true))))
}

#[utoipa::path(get, operation_id = "list_webhooks", path = "/api/v1/admin/webhooks", tag = "admin",
    responses((status = 200, description = "{\"webhooks\": [Webhook]} without secrets"), (status = 403)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let hooks: Vec<Webhook> = state
        .store
        .webhooks()
        .await?
        .iter()
        .map(|h| Webhook::from(h, false))
        .collect();
    Ok(Json(json!({ "webhooks": hooks })))
}

#[utoipa::path(delete, operation_id = "delete_webhook", path = "/api/v1/admin/webhooks/{id}", tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "webhook id")),
    responses((status = 204, description = "removed with its undelivered events"), (status = 403), (status = 404)))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<WebhookId>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if !state.store.delete_webhook(id).await? {
        return Err(ApiError::not_found("no such webhook"));
    }
    state.hub.webhooks_changed().await?;
    tracing::info!(webhook = %id, by = %caller.user.id, "webhook removed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// At most this many (default 50, at most 500).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

#[utoipa::path(get, operation_id = "webhook_deliveries", path = "/api/v1/admin/webhooks/{id}/deliveries", tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "webhook id"), DeliveriesQuery),
    responses((status = 200, description = "{\"deliveries\": [{event_id, event, attempt, status, error, at}]}, newest first"),
        (status = 400), (status = 403), (status = 404)))]
pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<WebhookId>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    if state.store.webhook(id).await?.is_none() {
        return Err(ApiError::not_found("no such webhook"));
    }
    let rows: Vec<Value> = state
        .store
        .webhook_deliveries(id, limit)
        .await?
        .into_iter()
        .map(|d| {
            json!({
                "event_id": d.event_id,
                "event": d.event,
                "attempt": d.attempt,
                "status": d.status,
                "error": d.error,
                "at": rfc3339(d.at),
            })
        })
        .collect();
    Ok(Json(json!({ "deliveries": rows })))
}
