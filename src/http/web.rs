//! The web client and the admin panel: a few static files compiled into the binary and served
//! at `/`, `/admin` and `/assets/…`. The pages are plain ES modules with no build step; they talk
//! to the same REST API and WebSocket as any other client.
//!
//! Pages get their own Content-Security-Policy (same-origin scripts, styles, sockets and images,
//! `blob:` images for attachment previews, nothing external but the OpenID provider's endpoints
//! the sign-in reads); the API keeps `default-src 'none'`.

use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Router, routing::get};

use super::AppState;
use crate::auth::sha256_hex;
use crate::error::ApiError;

/// The policy for the pages: nothing leaves the origin but requests to the OpenID provider
/// (its discovery document and token endpoint, for sign-in with PKCE), nothing inline runs.
pub fn page_csp(state: &AppState) -> String {
    let mut connect = String::from("'self'");
    if let Some(oidc) = state.oidc.as_ref().filter(|o| o.client_id.is_some()) {
        for origin in oidc.browser_origins() {
            connect.push(' ');
            connect.push_str(&origin);
        }
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; \
         img-src 'self' blob: data:; connect-src {connect}; manifest-src 'self'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
    )
}

struct Asset {
    name: &'static str,
    body: &'static str,
}

/// One file of `web/`, embedded under its own name.
macro_rules! asset {
    ($name:literal) => {
        Asset {
            name: $name,
            body: include_str!(concat!("../../web/", $name)),
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("index.html"),
    asset!("admin.html"),
    asset!("style.css"),
    asset!("api.js"),
    asset!("dom.js"),
    asset!("app.js"),
    asset!("admin.js"),
    asset!("icon.svg"),
    // The protocol client the pages use: the same file as the `confab-client` package.
    Asset {
        name: "confab-client.js",
        body: include_str!("../../clients/js/src/index.js"),
    },
];

/// Each asset's ETag (from its content), computed once: the files never change in a binary.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let tag = format!("\"{}\"", &sha256_hex(a.body.as_bytes())[..16]);
            HeaderValue::from_str(&tag).expect("hex etag is a header value")
        })
        .collect()
});

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|State(s): State<AppState>, h: HeaderMap| async move {
                serve(&s, "index.html", &h)
            }),
        )
        .route(
            "/admin",
            get(|State(s): State<AppState>, h: HeaderMap| async move {
                serve(&s, "admin.html", &h)
            }),
        )
        .route(
            "/assets/{name}",
            get(
                |State(s): State<AppState>, Path(name): Path<String>, h: HeaderMap| async move {
                    serve(&s, &name, &h)
                },
            ),
        )
}

/// One file with its type, an ETag from its content and `no-cache` (revalidate every time, so a
/// new binary's files are picked up at once); a matching `If-None-Match` gets 304.
fn serve(state: &AppState, name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return ApiError::not_found("no such file").into_response();
    };
    let etag = ETAGS[i].clone();
    let csp = HeaderValue::from_str(&page_csp(state))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    let common = [
        (header::CONTENT_SECURITY_POLICY, csp),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().as_bytes() == etag.as_bytes()));
    if matches {
        return (StatusCode::NOT_MODIFIED, common, [(header::ETAG, etag)]).into_response();
    }
    (
        common,
        [
            (header::ETAG, etag),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(name)),
            ),
        ],
        ASSETS[i].body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_its_own_type() {
        for a in ASSETS {
            assert_ne!(
                content_type(a.name),
                "application/octet-stream",
                "{} has no content type",
                a.name
            );
        }
    }

    #[test]
    fn every_page_names_only_assets_that_exist() {
        for page in ["index.html", "admin.html"] {
            let body = ASSETS.iter().find(|a| a.name == page).unwrap().body;
            for part in body.split("/assets/").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
                    .collect();
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "{page} refers to /assets/{name}, which is not embedded"
                );
            }
        }
    }
}
