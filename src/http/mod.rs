//! The REST API and the router. Each feature module exposes `router()`; they are merged once
//! here with the operations endpoints and the WebSocket route.
//!
//! Handlers check access and shape answers; they never touch SQL (that is `store`) or sockets
//! (that is `hub`).

pub mod admin;
pub mod attachments;
pub mod auth;
pub mod messages;
pub mod openapi;
pub mod ops;
pub mod rooms;
pub mod web;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use governor::middleware::NoOpMiddleware;
use tower_governor::GovernorError;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::{KeyExtractor, PeerIpKeyExtractor, SmartIpKeyExtractor};

use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use axum::{Router, routing::get};
use serde::de::DeserializeOwned;

use crate::auth::Auth;
use crate::bus::Bus;
use crate::commit::GroupCommit;
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::hub::Hub;
use crate::ids::{RoomId, UserId};
use crate::model::User;
use crate::moderation::SendRules;
use crate::policy::Policies;
use crate::store::blobs::Blobs;
use crate::store::{MemberRecord, RoomRecord, Store, UserRecord};
use crate::telemetry::Metrics;

/// Cheap handles shared by every request and connection.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub hub: Arc<Hub>,
    pub writer: GroupCommit,
    pub auth: Auth,
    pub metrics: Metrics,
    pub admins: Arc<HashSet<String>>,
    pub blobs: Arc<Blobs>,
    pub policies: Arc<Policies>,
    /// Whether this pod holds the controller Lease (always true outside Kubernetes): jobs that
    /// must run once per installation, like retention, run only here.
    pub leader: Arc<AtomicBool>,
    /// What `--config-dir` (or the controller) applied last, for `GET /api/v1/admin/config`.
    pub config_status: Arc<std::sync::RwLock<Option<serde_json::Value>>>,
    pub draining: Arc<AtomicBool>,
    pub started: Instant,
}

impl AppState {
    pub fn is_admin(&self, username: &str) -> bool {
        self.admins.contains(username)
    }
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
    pub fn user_json(&self, u: &UserRecord) -> User {
        User::from_record(u, self.is_admin(&u.username))
    }

    /// The room if `user` may read it, with the user's membership. A private or direct room
    /// the user is not in is `not_found`: its existence is never disclosed.
    pub async fn readable_room(
        &self,
        room: RoomId,
        user: UserId,
    ) -> ApiResult<(RoomRecord, Option<MemberRecord>)> {
        let not_found = || ApiError::not_found("no such room");
        let r = self.store.room(room).await?.ok_or_else(not_found)?;
        let member = self.store.member(room, user).await?;
        if r.kind != "public" && member.is_none() {
            return Err(not_found());
        }
        Ok((r, member))
    }

    /// Makes `user` a member of `room` with `role`. When they were not one before, their
    /// sockets on every pod are told (`room_joined`), whoever added them and however.
    pub async fn add_member(
        &self,
        room: RoomId,
        user: UserId,
        role: &str,
    ) -> crate::store::StoreResult<bool> {
        let added = self.store.add_member(room, user, role).await?;
        if added {
            self.hub.member_added(room, user);
        }
        Ok(added)
    }

    /// Takes `user`'s slow-mode slot in `room` if the rules impose one: the last check before a
    /// message is submitted, so that a message refused for another reason costs no slot.
    pub fn slow_mode(&self, rules: &SendRules, room: RoomId, user: UserId) -> ApiResult<()> {
        let Some(interval) = rules.slow_mode() else {
            return Ok(());
        };
        self.hub
            .slow_mode(room, user, interval)
            .map_err(|ms| ApiError::SlowMode {
                message: format!("slow mode: one message every {} s", interval.as_secs()),
                retry_after_ms: ms,
            })
    }

    /// The rules `user` posts under in a room it belongs to; `forbidden` for a readable room
    /// it is not in. Callers still `check` them (mutes, read-only, archived).
    pub async fn writable_room(&self, room: RoomId, user: UserId) -> ApiResult<SendRules> {
        let (r, member) = self.readable_room(room, user).await?;
        let member = member.ok_or_else(|| ApiError::forbidden("join the room first"))?;
        Ok(SendRules::new(&r, &member))
    }
}

/// The authenticated caller of a REST endpoint (`Authorization: Bearer <access token>`).
pub struct Caller {
    pub user: UserRecord,
    pub is_admin: bool,
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl AppState {
    /// Verifies an access token and loads its user.
    pub async fn authenticate(&self, token: &str) -> ApiResult<(UserRecord, crate::auth::Claims)> {
        let claims = self.auth.verify_access(token)?;
        let user = self
            .store
            .user(claims.sub)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the user no longer exists"))?;
        if user.banned_at(crate::now_ms()) {
            return Err(ApiError::forbidden("the user is banned"));
        }
        Ok((user, claims))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized("missing Authorization: Bearer <access token>")
        })?;
        let (user, _) = state.authenticate(token).await?;
        let is_admin = state.is_admin(&user.username);
        Ok(Caller { user, is_admin })
    }
}

/// A JSON body whose rejection is a 400 naming the problem (never axum's 415/422 text).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> ApiResult<Self> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|j| ApiJson(j.0))
            .map_err(|r| match r.status() {
                axum::http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(r.body_text()),
                _ => ApiError::bad_request(r.body_text()),
            })
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
fn rate_limit(period: Duration, burst: u32, trust_forwarded: bool, metrics: Metrics) -> RateLimit {
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

/// The public router: REST, WebSocket and the health endpoints.
pub fn router(state: AppState) -> Router {
    let c = &state.config;
    let general = rate_limit(
        Duration::from_secs(1) / c.http_rate,
        c.http_burst,
        c.trust_forwarded_for,
        state.metrics.clone(),
    );
    let credentials = rate_limit(
        Duration::from_secs(60) / c.auth_rate_per_minute,
        c.auth_burst,
        c.trust_forwarded_for,
        state.metrics.clone(),
    );
    let app = Router::new()
        .merge(auth::credentials_router().layer(credentials))
        .merge(ops::router())
        .merge(auth::router())
        .merge(rooms::router())
        .merge(messages::router())
        .merge(admin::router())
        .merge(attachments::router())
        .merge(web::router())
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .route("/ws", get(crate::ws::upgrade))
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
