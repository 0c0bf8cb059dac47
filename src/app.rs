//! The application assembled: the REST routes ([`crate::http`]) and the WebSocket route
//! ([`crate::ws`]) under one router with the middleware every request passes (per-IP rate
//! limit, request metrics and ids, security headers), and the metrics router for its own port.
//! Neither `http` nor `ws` knows of the other; only this module sees both.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Router, routing::get};
use governor::middleware::NoOpMiddleware;
use tower_governor::GovernorError;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::{KeyExtractor, PeerIpKeyExtractor, SmartIpKeyExtractor};

use crate::error::ApiError;
use crate::state::AppState;
use crate::telemetry::Metrics;

/// Counts and times every request by route template (bounded cardinality).
async fn track_http(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let span = tracing::info_span!("http_request", %method, %route, %request_id, status = tracing::field::Empty);
    let started = Instant::now();
    let resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    span.record("status", resp.status().as_u16());
    state
        .metrics
        .http_seconds
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .http_requests
        .with_label_values(&[&method, &route, resp.status().as_str()])
        .inc();
    resp
}

async fn fallback() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// The client address rate limits are keyed on: the peer, or (behind a trusted proxy) the
/// address the proxy reports.
#[derive(Clone, Copy)]
pub struct ClientIp {
    trust_forwarded: bool,
}

impl KeyExtractor for ClientIp {
    type Key = IpAddr;
    fn extract<T>(&self, req: &axum::http::Request<T>) -> Result<IpAddr, GovernorError> {
        if self.trust_forwarded {
            SmartIpKeyExtractor.extract(req)
        } else {
            PeerIpKeyExtractor.extract(req)
        }
    }
}

type RateLimit = GovernorLayer<ClientIp, NoOpMiddleware, axum::body::Body>;

/// A per-client-IP limit of `burst` requests, one more every `period`.
pub(crate) fn rate_limit(
    period: Duration,
    burst: u32,
    trust_forwarded: bool,
    metrics: Metrics,
) -> RateLimit {
    let config = GovernorConfigBuilder::default()
        .period(period)
        .burst_size(burst)
        .key_extractor(ClientIp { trust_forwarded })
        .finish()
        .expect("rate limit settings are validated at startup");
    // Forget idle clients now and then, so the table does not grow with every address seen.
    let limiter = Arc::downgrade(config.limiter());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let Some(l) = limiter.upgrade() else { break };
            l.retain_recent();
        }
    });
    GovernorLayer::new(config).error_handler(move |e| match e {
        GovernorError::TooManyRequests { wait_time, .. } => {
            metrics.rate_limited.with_label_values(&["http"]).inc();
            ApiError::RateLimited {
                message: "too many requests; slow down".into(),
                retry_after_ms: wait_time.max(1) * 1000,
            }
            .into_response()
        }
        GovernorError::UnableToExtractKey => {
            ApiError::bad_request("cannot tell the client address").into_response()
        }
        GovernorError::Other { msg, .. } => {
            ApiError::Internal(anyhow::anyhow!("rate limiter: {msg:?}")).into_response()
        }
    })
}

/// Headers every answer carries unless a handler set its own.
fn security_headers(router: Router) -> Router {
    use axum::http::{HeaderName, HeaderValue, header};
    use tower_http::set_header::SetResponseHeaderLayer;
    let headers: [(HeaderName, &'static str); 5] = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
        (header::CACHE_CONTROL, "no-store"),
    ];
    headers.into_iter().fold(router, |r, (name, value)| {
        r.layer(SetResponseHeaderLayer::if_not_present(
            name,
            HeaderValue::from_static(value),
        ))
    })
}

/// The public router: REST, WebSocket and the health endpoints, behind the general rate
/// limit, request metrics, request ids and the security headers.
pub fn router(state: AppState) -> Router {
    let c = &state.config;
    let general = rate_limit(
        Duration::from_secs(1) / c.http_rate,
        c.http_burst,
        c.trust_forwarded_for,
        state.metrics.clone(),
    );
    let app = crate::http::router(&state)
        .merge(crate::ws::router())
        .fallback(fallback)
        .layer(general)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            track_http,
        ))
        // A request id for logs and traces: the client's, or a fresh one; echoed back.
        .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
        .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(
            tower_http::request_id::MakeRequestUuid,
        ))
        .with_state(state);
    security_headers(app)
}

/// The metrics router, served on its own port.
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    m.render(),
                )
            }
        }),
    )
}
