//! Attachment bytes in an object store: files under the data dir by default, or an
//! S3-compatible bucket (`s3://bucket/prefix`, credentials and endpoint from the usual `AWS_*`
//! variables). Uploads stream through in parts and stop as soon as they pass the size limit;
//! nothing holds a whole file in memory.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

use crate::ids::AttachmentId;

/// Part size of multipart uploads (S3's minimum is 5 MiB).
const PART: usize = 5 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the upload was interrupted: {0}")]
    Client(String),
    #[error("attachment storage failed: {0}")]
    Storage(#[from] object_store::Error),
}

pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// Where the bytes go, for logs: `file:///…` or `s3://bucket/prefix`.
    pub location: String,
}

fn key(id: AttachmentId) -> ObjectPath {
    ObjectPath::from(format!("attachments/{id}"))
}

impl Blobs {
    /// Opens the store `url` names, or a folder in the data dir when it is unset.
    pub fn open(url: Option<&str>, data_dir: &Path) -> anyhow::Result<Blobs> {
        match url {
            None => {
                let dir = data_dir.join("blobs");
                std::fs::create_dir_all(&dir).with_context(|| {
                    format!("cannot create {} (CONFAB_DATA_DIR)", dir.display())
                })?;
                let store = LocalFileSystem::new_with_prefix(&dir)
                    .context("cannot use the data dir for attachments")?;
                Ok(Blobs {
                    store: Arc::new(store),
                    location: format!("file://{}", dir.display()),
                })
            }
            Some(url) if url.starts_with("s3://") => {
                let rest = &url["s3://".len()..];
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    anyhow::bail!("CONFAB_ATTACHMENTS_URL must name a bucket: s3://bucket/prefix");
                }
                let s3 = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .context(
                        "CONFAB_ATTACHMENTS_URL: cannot configure S3 (check the AWS_* variables)",
                    )?;
                let store: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(PrefixStore::new(s3, prefix.trim_matches('/')))
                };
                Ok(Blobs {
                    store,
                    location: url.to_string(),
                })
            }
            Some(url) if url.starts_with("file://") => {
                let dir = Path::new(&url["file://".len()..]);
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("CONFAB_ATTACHMENTS_URL: cannot create {}", dir.display())
                })?;
                let store = LocalFileSystem::new_with_prefix(dir)
                    .context("CONFAB_ATTACHMENTS_URL: cannot use that folder")?;
                Ok(Blobs {
                    store: Arc::new(store),
                    location: url.to_string(),
                })
            }
            Some(other) => anyhow::bail!(
                "CONFAB_ATTACHMENTS_URL must be s3://bucket/prefix or file:///path, not {other}"
            ),
        }
    }

    /// Streams `body` into the store; stops and discards it past `max` bytes. Returns the size.
    pub async fn put<E: std::fmt::Display>(
        &self,
        id: AttachmentId,
        body: impl Stream<Item = Result<Bytes, E>>,
        max: u64,
    ) -> Result<u64, BlobError> {
        let upload = self.store.put_multipart(&key(id)).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut size = 0u64;
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(BlobError::Client(e.to_string()));
                }
            };
            size += chunk.len() as u64;
            if size > max {
                let _ = writer.abort().await;
                return Err(BlobError::TooLarge(max));
            }
            // Bound what is buffered: at most two parts in flight.
            if let Err(e) = writer.wait_for_capacity(2).await {
                return Err(e.into());
            }
            writer.put(chunk);
        }
        writer.finish().await?;
        Ok(size)
    }

    /// The bytes of an attachment, as a stream.
    pub async fn get(
        &self,
        id: AttachmentId,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        let got = self.store.get(&key(id)).await?;
        Ok(got.into_stream().map_err(BlobError::from).boxed())
    }
}
