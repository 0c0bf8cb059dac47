//! Attachments: upload into a room (members only, streamed, size-limited), download by
//! members of the room only, and the checks a message makes of the attachments it names.

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::{Json, Router, routing::get, routing::post};
use futures::TryStreamExt;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use super::{ApiPath, ApiQuery, AppState, Caller};
use crate::error::{ApiError, ApiResult};
use crate::ids::{AttachmentId, RoomId};
use crate::model::Attachment;
use crate::store::AttachmentRecord;
use crate::store::blobs::BlobError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/rooms/{id}/attachments",
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/attachments/{id}", get(download))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The file's name; needed for a raw upload (a multipart part carries its own).
    #[param(required = true, min_length = 1)]
    filename: Option<String>,
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::TooLarge(max) => {
                ApiError::TooLarge(format!("the file is larger than {max} bytes"))
            }
            BlobError::Client(m) => {
                ApiError::bad_request(format!("the upload did not complete: {m}"))
            }
            BlobError::Storage(object_store::Error::NotFound { .. }) => {
                ApiError::not_found("no such attachment")
            }
            BlobError::Storage(e) => {
                tracing::warn!(error = %e, "attachment storage failed");
                ApiError::Unavailable("attachment storage is unavailable, try again".into())
            }
        }
    }
}

/// A file name safe to store and to put in a header: no paths, no control characters.
fn clean_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && *c != '"')
        .take(200)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_string();
    if cleaned.is_empty() {
        "file".into()
    } else {
        cleaned
    }
}

fn clean_content_type(value: Option<&str>) -> String {
    value
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .map(|m| m.essence_str().to_string())
        .unwrap_or_else(|| "application/octet-stream".into())
}

#[utoipa::path(post, path = "/api/v1/rooms/{id}/attachments", tag = "attachments",
    params(("id" = uuid::Uuid, Path, description = "room id"), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the file's bytes with its Content-Type (file name in ?filename=; not empty), or multipart/form-data with one `file` part"),
    responses((status = 201, body = Attachment), (status = 403), (status = 404), (status = 413)))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(room): ApiPath<RoomId>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    request: Request,
) -> ApiResult<(StatusCode, Json<Attachment>)> {
    let rules = state.writable_room(room, caller.user.id).await?;
    rules.check(caller.user.muted_until, crate::now_ms())?;
    let max = state.policies.current().max_attachment_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max + 64 * 1024) {
        return Err(ApiError::TooLarge(format!(
            "the file is larger than {max} bytes"
        )));
    }
    let id = AttachmentId::new();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let (filename, content_type, size) =
        if content_type.is_some_and(|c| c.starts_with("multipart/form-data")) {
            let mut form = Multipart::from_request(request, &state)
                .await
                .map_err(|e| ApiError::bad_request(e.body_text()))?;
            loop {
                let field = form
                    .next_field()
                    .await
                    .map_err(|e| ApiError::bad_request(e.body_text()))?
                    .ok_or_else(|| ApiError::bad_request("the form has no `file` part"))?;
                if field.name() != Some("file") {
                    continue;
                }
                let filename = clean_filename(
                    field
                        .file_name()
                        .or(q.filename.as_deref())
                        .unwrap_or("file"),
                );
                let content_type = clean_content_type(field.content_type());
                let size = state.blobs.put(id, field, max).await?;
                break (filename, content_type, size);
            }
        } else {
            let filename = q
                .filename
                .as_deref()
                .filter(|f| !f.is_empty())
                .map(clean_filename)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "give the file name as ?filename=, or send multipart/form-data",
                    )
                })?;
            let content_type = clean_content_type(content_type);
            let size = state
                .blobs
                .put(id, request.into_body().into_data_stream(), max)
                .await?;
            (filename, content_type, size)
        };
    if size == 0 {
        return Err(ApiError::bad_request("the file is empty"));
    }
    let record = AttachmentRecord {
        id,
        room_id: room,
        user_id: caller.user.id,
        filename,
        content_type,
        size: size as i64,
        created_at: crate::now_ms(),
    };
    state.store.insert_attachment(&record).await?;
    Ok((StatusCode::CREATED, Json(Attachment::from(&record))))
}

#[utoipa::path(get, path = "/api/v1/attachments/{id}", tag = "attachments",
    params(("id" = uuid::Uuid, Path, description = "attachment id")),
    responses((status = 200, description = "the bytes"), (status = 404)))]
pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<AttachmentId>,
) -> ApiResult<Response> {
    let not_found = || ApiError::not_found("no such attachment");
    let a = state.store.attachment(id).await?.ok_or_else(not_found)?;
    state
        .store
        .member(a.room_id, caller.user.id)
        .await?
        .ok_or_else(not_found)?;
    let stream = state.blobs.get(id).await?;
    let ascii: String = a
        .filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = format!(
        "attachment; filename=\"{}\"; filename*=UTF-8''{}",
        ascii.replace('\\', "_"),
        utf8_percent_encode(&a.filename, NON_ALPHANUMERIC)
    );
    let mut resp = Response::new(Body::from_stream(
        stream.map_err(|e| std::io::Error::other(e.to_string())),
    ));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&a.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(a.size));
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).unwrap_or(HeaderValue::from_static("attachment")),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_lose_paths_and_control_characters() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\Users\\x\\report.pdf"), "report.pdf");
        assert_eq!(clean_filename("a\"b\r\n.txt"), "ab.txt");
        assert_eq!(clean_filename(".."), "file");
        assert_eq!(clean_filename(""), "file");
        assert_eq!(clean_filename("photo ü.png"), "photo ü.png");
    }

    #[test]
    fn content_types_are_normalised() {
        assert_eq!(
            clean_content_type(Some("image/png; charset=x")),
            "image/png"
        );
        assert_eq!(
            clean_content_type(Some("not a type")),
            "application/octet-stream"
        );
        assert_eq!(clean_content_type(None), "application/octet-stream");
    }
}
