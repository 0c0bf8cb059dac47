//! Who a caller is: argon2id password hashes, HS256 access tokens (JWT) and opaque refresh
//! tokens kept as SHA-256 hashes in token families (a reused refresh token revokes its family).
//!
//! Beside its own tokens it accepts the tokens of the team's OpenID provider ([`oidc`]) and
//! bots' API keys ([`API_KEY_PREFIX`]).
//!
//! This module signs and checks credentials; it does not decide what a user may do in a room.

pub mod oidc;

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::ids::{FamilyId, UserId};
use crate::model::Tokens;
use crate::store::{RefreshOutcome, Store, UserRecord};

/// Every API key starts with this, so that logs and secret scanners recognise one.
pub const API_KEY_PREFIX: &str = "cfk_";

/// API keys do not expire; a socket opened with one is treated as holding a token valid for
/// this long (until the key is revoked).
const API_KEY_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

/// Who presented a credential, and until when it holds.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserRecord,
    /// When the credential expires (Unix seconds).
    pub exp: u64,
    /// The id of the API key used, for a bot.
    pub key: Option<String>,
}

impl Identity {
    pub fn token(user: UserRecord, exp: u64) -> Self {
        Identity {
            user,
            exp,
            key: None,
        }
    }

    pub fn api_key(user: UserRecord, key_id: String) -> Self {
        Identity {
            user,
            exp: crate::now_secs() + API_KEY_LIFETIME_SECS,
            key: Some(key_id),
        }
    }
}

/// A new API key: `cfk_` and 256 random bits, with its id and the hash that is stored.
pub struct NewApiKey {
    pub key_id: String,
    pub api_key: String,
    pub hash: String,
}

impl NewApiKey {
    pub fn generate() -> Self {
        let api_key = format!("{API_KEY_PREFIX}{}", random_token());
        NewApiKey {
            key_id: uuid::Uuid::now_v7().simple().to_string(),
            hash: api_key_hash(&api_key),
            api_key,
        }
    }
}

/// What is stored of an API key: its SHA-256 (keys are random, so no slow hash is needed).
pub fn api_key_hash(key: &str) -> String {
    sha256_hex(key.as_bytes())
}

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct Claims {
    pub sub: UserId,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
}

/// Signs and verifies tokens. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Keys>,
}

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    access_ttl: u64,
    refresh_ttl: u64,
}

/// 32 random bytes, base64url: used for refresh tokens and generated secrets.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn token_hash(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

/// The SHA-256 of `bytes` in lower-case hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The token of an `Authorization: Bearer <token>` header (REST calls and the WebSocket
/// handshake present access tokens the same way).
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Password hashing is deliberately expensive: argon2id holds 19 MiB and tens of milliseconds
/// of CPU per hash. Unbounded, a burst of sign-ins after an outage runs hundreds at once and
/// holds their memory together. Here at most `concurrency` hashes run (each on a blocking
/// thread that keeps its permit until the hash is done, even if the request has gone), at most
/// `queue` requests wait for one, and the rest are answered 503 `unavailable` with Retry-After.
/// Registration, sign-in and account deletion all go through it.
pub struct PasswordHashing {
    permits: Arc<tokio::sync::Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
    queue: usize,
    concurrency: usize,
    refused: Option<prometheus::IntCounter>,
}

impl PasswordHashing {
    /// `concurrency` 0 means one per core.
    pub fn new(concurrency: usize, queue: usize, refused: Option<prometheus::IntCounter>) -> Self {
        let concurrency = if concurrency == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            concurrency
        };
        PasswordHashing {
            permits: Arc::new(tokio::sync::Semaphore::new(concurrency)),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            queue,
            concurrency,
            refused,
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> ApiResult<T> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let (place, ahead) = crate::Waiting::enter(&self.waiting);
                if ahead >= self.queue {
                    drop(place);
                    if let Some(c) = &self.refused {
                        c.inc();
                    }
                    // About how long the queue ahead takes to drain (~50 ms a hash).
                    let ms = (self.queue as u64 * 50 / self.concurrency as u64).max(1000);
                    return Err(ApiError::Busy {
                        message: "too many sign-ins at once; try again shortly".into(),
                        retry_after_ms: ms,
                    });
                }
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| ApiError::Internal(e.into()))?
            }
        };
        tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await
        .map_err(|e| ApiError::Internal(e.into()))
    }

    /// Hashes a password with argon2id off the async runtime.
    pub async fn hash(&self, password: String) -> ApiResult<String> {
        self.run(move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("argon2: {e}")))
        })
        .await?
    }

    /// Whether `password` matches the stored PHC string (an error only when refused as busy).
    pub async fn verify(&self, password: String, hash: String) -> ApiResult<bool> {
        self.run(move || {
            Argon2::default()
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok()
        })
        .await
    }
}

impl Auth {
    pub fn new(secret: &[u8], access_ttl: u64, refresh_ttl: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        Auth {
            inner: Arc::new(Keys {
                encoding: EncodingKey::from_secret(secret),
                decoding: DecodingKey::from_secret(secret),
                validation,
                access_ttl,
                refresh_ttl,
            }),
        }
    }

    pub fn access_ttl(&self) -> u64 {
        self.inner.access_ttl
    }

    /// A signed access token and its claims.
    pub fn issue_access(&self, user: UserId) -> ApiResult<(String, Claims)> {
        let iat = crate::now_secs();
        let claims = Claims {
            sub: user,
            iat,
            exp: iat + self.inner.access_ttl,
            jti: uuid::Uuid::now_v7().to_string(),
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.inner.encoding,
        )
        .map_err(|e| ApiError::Internal(e.into()))?;
        Ok((token, claims))
    }

    /// Checks signature, algorithm and expiry.
    pub fn verify_access(&self, token: &str) -> ApiResult<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.inner.decoding, &self.inner.validation)
            .map(|d| d.claims)
            .map_err(|e| {
                let why = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the access token expired",
                    _ => "the access token is invalid",
                };
                ApiError::unauthorized(why)
            })
    }

    /// A fresh token pair at login: its refresh token starts a new family.
    pub async fn issue_pair(&self, store: &dyn Store, user: UserId) -> ApiResult<Tokens> {
        let refresh = random_token();
        store
            .insert_refresh(
                &token_hash(&refresh),
                FamilyId::new(),
                user,
                self.refresh_expiry(crate::now_ms()),
            )
            .await?;
        self.tokens(user, refresh)
    }

    /// When a refresh token issued at `now` expires (ms).
    fn refresh_expiry(&self, now: i64) -> i64 {
        now + (self.inner.refresh_ttl as i64) * 1000
    }

    /// The answer to login and refresh: a new access token with the given refresh token.
    fn tokens(&self, user: UserId, refresh: String) -> ApiResult<Tokens> {
        let (access, _) = self.issue_access(user)?;
        Ok(Tokens {
            access_token: access,
            refresh_token: refresh,
            token_type: "Bearer",
            expires_in: self.inner.access_ttl,
        })
    }

    /// Spends a refresh token. Reuse of a spent token revokes its whole family.
    pub async fn refresh(
        &self,
        store: &dyn Store,
        refresh_token: &str,
    ) -> ApiResult<(UserId, Tokens)> {
        let next = random_token();
        let now = crate::now_ms();
        match store
            .spend_refresh(
                &token_hash(refresh_token),
                now,
                (&token_hash(&next), self.refresh_expiry(now)),
            )
            .await?
        {
            RefreshOutcome::Valid { user, .. } => Ok((user, self.tokens(user, next)?)),
            RefreshOutcome::Reused => Err(ApiError::unauthorized(
                "the refresh token was already used; its session is revoked",
            )),
            RefreshOutcome::Invalid => Err(ApiError::unauthorized("the refresh token is invalid")),
        }
    }

    pub async fn logout(&self, store: &dyn Store, refresh_token: &str) -> ApiResult<()> {
        store.revoke_family_of(&token_hash(refresh_token)).await?;
        Ok(())
    }
}
