//! Liveness and readiness. Readiness fails while draining or when the store or the bus does not
//! answer, so that load balancers send clients elsewhere.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing::get};
use serde_json::json;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Whether the pod is ready (store and bus answer within 2 s, not draining), with the checks;
/// also sets the `confab_ready` gauge.
pub async fn readiness(state: &AppState) -> (bool, serde_json::Value) {
    let limit = Duration::from_secs(2);
    let store = match tokio::time::timeout(limit, state.store.ping()).await {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "timeout".to_string(),
    };
    let bus = match tokio::time::timeout(limit, state.bus.ping()).await {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "timeout".to_string(),
    };
    let draining = state.is_draining();
    let ready = store == "ok" && bus == "ok" && !draining;
    state.metrics.ready.set(i64::from(ready));
    (
        ready,
        json!({"store": store, "bus": bus, "draining": draining}),
    )
}

async fn readyz(State(state): State<AppState>) -> Response {
    let (ready, checks) = readiness(&state).await;
    if ready {
        (
            StatusCode::OK,
            Json(json!({"status": "ok", "checks": checks})),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "checks": checks})),
        )
            .into_response()
    }
}
