//! The OpenAPI 3 description of the REST API, generated from the handlers' annotations.

use axum::Json;
use utoipa::OpenApi;

use super::{account, admin, attachments, auth, blocks, bots, messages, rooms, updates, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(title = "confab", description = "Real-time multi-room chat server: REST API. The WebSocket protocol at /ws is described in docs/protocol.md."),
    paths(
        auth::providers, auth::register, auth::login, auth::refresh, auth::logout, auth::me, auth::user, auth::directory,
        rooms::create, rooms::list, rooms::get_room, rooms::update, rooms::archive, rooms::join,
        rooms::leave, rooms::members, rooms::invite, rooms::kick, rooms::direct,
        messages::history, messages::send, messages::read, messages::edit, messages::delete,
        messages::search_room, messages::search_all,
        blocks::list, blocks::block, blocks::unblock,
        account::export_me, account::delete_me, account::delete_user, account::export_room,
        updates::react, updates::unreact, updates::pins, updates::pin, updates::unpin, updates::changes, updates::thread,
        rooms::mute, rooms::unmute, rooms::set_role, attachments::upload, attachments::download,
        admin::users, admin::rooms, admin::ban, admin::unban, admin::mute, admin::unmute, admin::stats, admin::config,
        bots::create, bots::list, bots::add_key, bots::revoke_key, bots::remove,
        webhooks::create, webhooks::list, webhooks::remove, webhooks::deliveries,
    ),
    modifiers(&BearerAuth, &ErrorAnswers, &Patterns),
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

/// The error answers every operation can give, declared on every operation with the one
/// error body (`{"error": {"code", "message"}}`): 400 for a malformed request, 401 and 403 where
/// a token is needed, 404 where the path names something, 413 and 415 where a body is sent,
/// 429 (the per-address rate limit covers every route) and 503.
struct ErrorAnswers;

impl utoipa::Modify for ErrorAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, RefOr, ResponseBuilder, Type};
        let components = openapi.components.get_or_insert_with(Default::default);
        let text = || ObjectBuilder::new().schema_type(Type::String);
        components.schemas.insert(
            "Error".into(),
            RefOr::T(
                ObjectBuilder::new()
                    .property(
                        "error",
                        ObjectBuilder::new()
                            .property("code", text())
                            .property("message", text())
                            .required("code")
                            .required("message"),
                    )
                    .required("error")
                    .into(),
            ),
        );
        let secured_by_default = openapi.security.as_ref().is_some_and(|s| !s.is_empty());
        for (path, item) in openapi.paths.paths.iter_mut() {
            let names_something = path.contains('{');
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let secured = match &op.security {
                    Some(s) => s.iter().any(|r| r != &Default::default()),
                    None => secured_by_default,
                };
                let has_body = op.request_body.is_some();
                let has_path_params = names_something
                    || op
                        .parameters
                        .iter()
                        .flatten()
                        .any(|p| p.parameter_in == ParameterIn::Path);
                let mut codes = vec![(
                    "400",
                    "the request is malformed: the message names the problem",
                )];
                if secured {
                    codes.push(("401", "no valid access token"));
                    codes.push(("403", "the caller may not do this"));
                }
                if has_path_params {
                    codes.push(("404", "no such resource, or one the caller may not see"));
                }
                if has_body {
                    codes.push(("413", "the body is too large"));
                    codes.push((
                        "415",
                        "the body is not JSON (Content-Type: application/json)",
                    ));
                }
                codes.push((
                    "429",
                    "too many requests; Retry-After says when to try again",
                ));
                codes.push((
                    "503",
                    "the database is unavailable or the server is draining",
                ));
                for (code, description) in codes {
                    op.responses
                        .responses
                        .entry(code.into())
                        .or_insert_with(|| ResponseBuilder::new().description(description).into());
                }
                for (code, response) in op.responses.responses.iter_mut() {
                    if !code.starts_with('4') && !code.starts_with('5') {
                        continue;
                    }
                    if let RefOr::T(r) = response {
                        if r.description.is_empty() {
                            r.description = "an error: the message names the problem".into();
                        }
                        r.content.insert(
                            "application/json".into(),
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("Error")))
                                .build(),
                        );
                    }
                }
            }
        }
    }
}

/// The patterns of names and text, from the constants the server checks them with
/// ([`crate::validate`]), so the document and the server cannot drift apart.
struct Patterns;

impl utoipa::Modify for Patterns {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use crate::validate::{ROOM_NAME, SEARCH_TEXT, SHOWN_TEXT, SHOWN_TEXT_OR_EMPTY, USERNAME};
        use utoipa::openapi::{RefOr, Schema};
        fn set(schema: &mut RefOr<Schema>, pattern: &str) {
            if let RefOr::T(Schema::Object(o)) = schema {
                o.pattern = Some(pattern.into());
            }
        }
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, property, pattern) in [
            ("RegisterBody", "username", USERNAME),
            ("RegisterBody", "display_name", SHOWN_TEXT),
            ("CreateRoomBody", "name", ROOM_NAME),
            ("CreateRoomBody", "topic", SHOWN_TEXT_OR_EMPTY),
            ("UpdateRoomBody", "topic", SHOWN_TEXT_OR_EMPTY),
        ] {
            let Some(RefOr::T(Schema::Object(body))) = components.schemas.get_mut(name) else {
                panic!("the OpenAPI document has no {name}");
            };
            let field = body
                .properties
                .get_mut(property)
                .unwrap_or_else(|| panic!("{name} has no {property}"));
            match field {
                // An optional field is `oneOf: [null, string]` in OpenAPI 3.1.
                RefOr::T(Schema::OneOf(one)) => one.items.iter_mut().for_each(|s| set(s, pattern)),
                other => set(other, pattern),
            }
        }
        for item in openapi.paths.paths.values_mut() {
            let Some(op) = item.get.as_mut() else {
                continue;
            };
            if !op
                .operation_id
                .as_deref()
                .is_some_and(|id| id.starts_with("search"))
            {
                continue;
            }
            for p in op.parameters.iter_mut().flatten() {
                if p.name == "q"
                    && let Some(schema) = p.schema.as_mut()
                {
                    set(schema, SEARCH_TEXT);
                }
            }
        }
    }
}

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
