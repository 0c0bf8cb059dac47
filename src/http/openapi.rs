//! The OpenAPI 3 description of the REST API, generated from the handlers' annotations.

use axum::Json;
use utoipa::OpenApi;

use super::{admin, attachments, auth, messages, rooms};

#[derive(OpenApi)]
#[openapi(
    info(title = "confab", description = "Real-time multi-room chat server: REST API. The WebSocket protocol at /ws is described in docs/protocol.md."),
    paths(
        auth::register, auth::login, auth::refresh, auth::logout, auth::me, auth::user, auth::directory,
        rooms::create, rooms::list, rooms::get_room, rooms::update, rooms::archive, rooms::join,
        rooms::leave, rooms::members, rooms::invite, rooms::kick, rooms::direct,
        messages::history, messages::send, messages::read, messages::edit, messages::delete,
        messages::search_room, messages::search_all,
        rooms::mute, rooms::unmute, rooms::set_role, attachments::upload, attachments::download,
        admin::users, admin::rooms, admin::ban, admin::unban, admin::mute, admin::unmute, admin::stats, admin::config,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
