//! The web client and the admin panel: a few static files compiled into the binary and served
//! at `/`, `/admin` and `/assets/…`. The pages are plain ES modules with no build step; they talk
//! to the same REST API and WebSocket as any other client.
//!
//! Pages get their own Content-Security-Policy (same-origin scripts, styles, sockets and images,
//! `blob:` images for attachment previews, nothing external); the API keeps `default-src 'none'`.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Router, routing::get};

use super::AppState;
use crate::auth::sha256_hex;
use crate::error::ApiError;

/// The policy for the pages: nothing leaves the origin, nothing inline runs.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' blob: data:; connect-src 'self'; manifest-src 'self'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../web/index.html"),
    },
    Asset {
        name: "admin.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../web/admin.html"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../web/style.css"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/api.js"),
    },
    Asset {
        name: "dom.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/dom.js"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/app.js"),
    },
    Asset {
        name: "admin.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/admin.js"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../../web/icon.svg"),
    },
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|h: HeaderMap| async move { serve("index.html", &h) }),
        )
        .route(
            "/admin",
            get(|h: HeaderMap| async move { serve("admin.html", &h) }),
        )
        .route(
            "/assets/{name}",
            get(|Path(name): Path<String>, h: HeaderMap| async move { serve(&name, &h) }),
        )
}

/// One file with its type, an ETag from its content and `no-cache` (revalidate every time, so a
/// new binary's files are picked up at once); a matching `If-None-Match` gets 304.
fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return ApiError::not_found("no such file").into_response();
    };
    let etag = format!("\"{}\"", &sha256_hex(asset.body.as_bytes())[..16]);
    let common = [
        (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    let etag_value = HeaderValue::from_str(&etag).expect("hex etag is a header value");
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if matches {
        return (
            StatusCode::NOT_MODIFIED,
            common,
            [(header::ETAG, etag_value)],
        )
            .into_response();
    }
    (
        common,
        [
            (header::ETAG, etag_value),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
        ],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

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
