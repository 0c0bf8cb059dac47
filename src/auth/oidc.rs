//! Tokens of the team's OpenID provider: discovery, the provider's key set (JWKS) cached per
//! (issuer, `kid`), and verification with the algorithm each key was published for.
//!
//! The key decides the algorithm, never the token: a token whose header names another
//! algorithm than its key's (HS256 "signed" with an RSA public key, `none`) is refused. Keys
//! stay cached while the provider is unreachable, so tokens signed with known keys keep
//! working through its outages; an unknown `kid` refetches the set at most once per
//! [`REFETCH_EVERY`].

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::telemetry::Metrics;

/// An unknown `kid` fetches the key set again at most this often.
pub const REFETCH_EVERY: Duration = Duration::from_secs(10);
/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 60;
/// How long one request to the provider may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What a verified token says about its holder.
#[derive(Debug, Clone)]
pub struct ExternalClaims {
    pub issuer: String,
    pub subject: String,
    /// The username claim, as the provider sent it.
    pub username: Option<String>,
    /// The `name` claim.
    pub name: Option<String>,
    /// Whether the `groups` claim holds the admin group (None: no admin group is configured).
    pub admin: Option<bool>,
    pub exp: u64,
}

/// A verification key and the one algorithm it verifies.
#[derive(Clone)]
struct Key {
    decoding: DecodingKey,
    algorithm: Algorithm,
}

/// The provider: its settings, endpoints and cached keys. Shared by every request.
pub struct Oidc {
    pub issuer: String,
    audience: String,
    username_claim: String,
    admin_group: Option<String>,
    pub client_id: Option<String>,
    http: reqwest::Client,
    /// The `jwks_uri` of the discovery document, once read.
    jwks_uri: RwLock<Option<String>>,
    /// The origin of the provider's token endpoint, once read (browsers call it to sign in).
    token_origin: RwLock<Option<String>>,
    /// Keys by (issuer, kid).
    keys: RwLock<HashMap<(String, String), Key>>,
    refetch: DefaultDirectRateLimiter,
    /// One fetch of the key set at a time; others wait for its result.
    fetching: tokio::sync::Mutex<()>,
    metrics: Metrics,
}

/// Why discovery failed: a setting that cannot work, or a provider that is down for now.
#[derive(Debug)]
pub enum DiscoveryError {
    /// The issuer answered, but not as an OpenID provider for this URL: a configuration error.
    Misconfigured(String),
    /// The issuer could not be reached or failed (connection, timeout, 5xx): retried.
    Unavailable(String),
}

impl std::fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiscoveryError::Misconfigured(m) | DiscoveryError::Unavailable(m) => f.write_str(m),
        }
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
    token_endpoint: Option<String>,
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    Some(u.origin().ascii_serialization()).filter(|o| o != "null")
}

impl Oidc {
    /// The provider of `--oidc-issuer`, or None when none is configured. Discovery runs now:
    /// an issuer that answers but is not an OpenID provider at that URL is a startup error
    /// naming the setting; one that cannot be reached is a warning, and discovery is retried
    /// in the background with back-off (tokens are refused until it succeeds).
    pub async fn start(config: &Config, metrics: &Metrics) -> anyhow::Result<Option<Arc<Oidc>>> {
        let (Some(issuer), Some(audience)) = (&config.oidc_issuer, &config.oidc_audience) else {
            return Ok(None);
        };
        let oidc = Arc::new(Oidc::new(
            issuer.trim_end_matches('/').to_string(),
            audience.clone(),
            config.oidc_username_claim.clone(),
            config.oidc_admin_group.clone(),
            config.oidc_client_id.clone(),
            metrics.clone(),
        )?);
        match oidc.discover().await {
            Ok(()) => {
                tracing::info!(issuer = %oidc.issuer, "OpenID provider discovered");
            }
            Err(DiscoveryError::Misconfigured(why)) => {
                anyhow::bail!("CONFAB_OIDC_ISSUER (--oidc-issuer): {why}");
            }
            Err(DiscoveryError::Unavailable(why)) => {
                tracing::warn!(
                    issuer = %oidc.issuer,
                    error = %why,
                    "the OpenID provider is not reachable; its tokens are refused until it is \
                     (retrying in the background)"
                );
                let retry = oidc.clone();
                tokio::spawn(async move {
                    let outcome = (|| retry.discover())
                        .retry(
                            ExponentialBuilder::default()
                                .with_min_delay(Duration::from_secs(1))
                                .with_max_delay(Duration::from_secs(60))
                                .with_jitter()
                                .without_max_times(),
                        )
                        .when(|e| matches!(e, DiscoveryError::Unavailable(_)))
                        .notify(|e, after| {
                            tracing::warn!(error = %e, retry_in = ?after, "OpenID discovery failed");
                        })
                        .await;
                    match outcome {
                        Ok(()) => {
                            tracing::info!(issuer = %retry.issuer, "OpenID provider discovered")
                        }
                        Err(e) => tracing::error!(
                            error = %e,
                            "CONFAB_OIDC_ISSUER (--oidc-issuer) is not an OpenID provider; \
                             its tokens are refused"
                        ),
                    }
                });
            }
        }
        Ok(Some(oidc))
    }

    fn new(
        issuer: String,
        audience: String,
        username_claim: String,
        admin_group: Option<String>,
        client_id: Option<String>,
        metrics: Metrics,
    ) -> anyhow::Result<Oidc> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()?;
        let period = Quota::with_period(REFETCH_EVERY)
            .expect("the refetch period is not zero")
            .allow_burst(NonZeroU32::MIN);
        Ok(Oidc {
            issuer,
            audience,
            username_claim,
            admin_group,
            client_id,
            http,
            jwks_uri: RwLock::new(None),
            token_origin: RwLock::new(None),
            keys: RwLock::new(HashMap::new()),
            refetch: RateLimiter::direct(period),
            fetching: tokio::sync::Mutex::new(()),
            metrics,
        })
    }

    /// The origins a browser signing in reads from: the issuer's (discovery) and the token
    /// endpoint's.
    pub fn browser_origins(&self) -> Vec<String> {
        let mut origins: Vec<String> = origin(&self.issuer).into_iter().collect();
        if let Some(t) = self.token_origin.read().expect("token_origin lock").clone()
            && !origins.contains(&t)
        {
            origins.push(t);
        }
        origins
    }

    /// Whether `token` says it comes from this provider (unverified: it only chooses which
    /// verification the token goes through).
    pub fn claims_issuer(&self, token: &str) -> bool {
        #[derive(Deserialize)]
        struct Iss {
            iss: Option<String>,
        }
        jsonwebtoken::dangerous::insecure_decode_claims::<Iss>(token)
            .ok()
            .and_then(|c| c.iss)
            .is_some_and(|iss| iss.trim_end_matches('/') == self.issuer)
    }

    /// Reads the discovery document and then the key set, counting the outcome.
    async fn discover(&self) -> Result<(), DiscoveryError> {
        let outcome = self.read_discovery().await;
        self.count(&outcome);
        outcome
    }

    fn count(&self, outcome: &Result<(), DiscoveryError>) {
        let label = match outcome {
            Ok(()) => "ok",
            Err(DiscoveryError::Unavailable(_)) => "unavailable",
            Err(DiscoveryError::Misconfigured(_)) => "invalid",
        };
        self.metrics.oidc_fetches.with_label_values(&[label]).inc();
    }

    async fn read_discovery(&self) -> Result<(), DiscoveryError> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let doc: Discovery = self.get_json(&url).await?;
        if doc.issuer.trim_end_matches('/') != self.issuer {
            return Err(DiscoveryError::Misconfigured(format!(
                "the discovery document at {url} names the issuer {}, not {}",
                doc.issuer, self.issuer
            )));
        }
        *self.jwks_uri.write().expect("jwks_uri lock") = Some(doc.jwks_uri);
        *self.token_origin.write().expect("token_origin lock") =
            doc.token_endpoint.as_deref().and_then(origin);
        self.fetch_keys().await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<T, DiscoveryError> {
        let response =
            self.http.get(url).send().await.map_err(|e| {
                DiscoveryError::Unavailable(format!("{url} could not be reached: {e}"))
            })?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(DiscoveryError::Unavailable(format!(
                "{url} answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(DiscoveryError::Misconfigured(format!(
                "{url} answered {status}"
            )));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| DiscoveryError::Unavailable(format!("{url} could not be read: {e}")))?;
        serde_json::from_slice(&body).map_err(|e| {
            DiscoveryError::Misconfigured(format!("{url} did not answer the expected JSON: {e}"))
        })
    }

    /// Fetches the key set and replaces the cached keys with it.
    async fn fetch_keys(&self) -> Result<(), DiscoveryError> {
        let Some(uri) = self.jwks_uri.read().expect("jwks_uri lock").clone() else {
            return Err(DiscoveryError::Unavailable(
                "discovery has not succeeded yet".into(),
            ));
        };
        #[derive(Deserialize)]
        struct KeySet {
            keys: Vec<Value>,
        }
        let set: KeySet = self.get_json(&uri).await?;
        let mut keys = HashMap::new();
        for raw in set.keys {
            // A key this server cannot use (another type, encryption) is left out, not fatal.
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
                continue;
            };
            let (Some(kid), Some(key)) = (jwk.common.key_id.clone(), verification_key(&jwk)) else {
                continue;
            };
            keys.insert((self.issuer.clone(), kid), key);
        }
        tracing::debug!(keys = keys.len(), "OpenID key set fetched");
        *self.keys.write().expect("keys lock") = keys;
        Ok(())
    }

    fn cached(&self, kid: &str) -> Option<Key> {
        self.keys
            .read()
            .expect("keys lock")
            .get(&(self.issuer.clone(), kid.to_string()))
            .cloned()
    }

    /// The key `kid`, refetching the set when it is unknown (at most once per
    /// [`REFETCH_EVERY`]; concurrent callers share one fetch).
    async fn key(&self, kid: &str) -> ApiResult<Key> {
        if let Some(k) = self.cached(kid) {
            return Ok(k);
        }
        let _one = self.fetching.lock().await;
        if let Some(k) = self.cached(kid) {
            return Ok(k);
        }
        if self.refetch.check().is_ok() {
            let fetched = if self.jwks_uri.read().expect("jwks_uri lock").is_some() {
                let fetched = self.fetch_keys().await;
                self.count(&fetched);
                fetched
            } else {
                self.discover().await
            };
            if let Err(e) = fetched {
                tracing::warn!(error = %e, "the OpenID key set could not be fetched");
            }
        }
        self.cached(kid).ok_or_else(|| {
            ApiError::unauthorized("the token is signed with a key the provider does not publish")
        })
    }

    /// Verifies a token of this provider: signature with the algorithm of its key, `iss`,
    /// `aud`, `exp` and `nbf` (with [`LEEWAY_SECS`]).
    pub async fn verify(&self, token: &str) -> ApiResult<ExternalClaims> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| ApiError::unauthorized("the token is not a signed JWT"))?;
        let kid = header
            .kid
            .ok_or_else(|| ApiError::unauthorized("the token names no signing key (kid)"))?;
        let key = self.key(&kid).await?;
        if header.alg != key.algorithm {
            return Err(ApiError::unauthorized(
                "the token's algorithm is not the one of its signing key",
            ));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[self.issuer.as_str(), &format!("{}/", self.issuer)]);
        validation.set_audience(&[self.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(
            token,
            &key.decoding,
            &validation,
        )
        .map_err(|e| ApiError::unauthorized(refusal(e.kind())))?;
        let claims = data.claims;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_string);
        let subject = text("sub")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::unauthorized("the token has no subject (sub)"))?;
        let admin = self
            .admin_group
            .as_ref()
            .map(|group| match claims.get("groups") {
                Some(Value::Array(groups)) => groups.iter().any(|g| g.as_str() == Some(group)),
                Some(Value::String(g)) => g == group,
                _ => false,
            });
        Ok(ExternalClaims {
            issuer: self.issuer.clone(),
            subject,
            username: text(&self.username_claim),
            name: text("name"),
            admin,
            exp: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
        })
    }
}

/// Why a token was refused, in general terms (never echoing the token).
fn refusal(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidAudience => "the token is for another audience",
        ErrorKind::InvalidIssuer => "the token is from another issuer",
        ErrorKind::InvalidSignature => "the token's signature is invalid",
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not the one of its signing key",
        ErrorKind::MissingRequiredClaim(_) => {
            "the token lacks a required claim (exp, iss, aud, sub)"
        }
        _ => "the token is invalid",
    }
}

/// The verification key of a published JWK and the one algorithm it is for; None for keys
/// that do not sign (encryption keys, shared secrets) or that this server cannot use.
fn verification_key(jwk: &Jwk) -> Option<Key> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return None;
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        // Shared secrets (`oct`) are never accepted from a key set.
        _ => return None,
    };
    let algorithm = match jwk.common.key_algorithm {
        Some(declared) => {
            let name = serde_json::to_value(declared).ok()?;
            let alg = Algorithm::from_str(name.as_str()?).ok()?;
            // The declared algorithm must belong to the key's family.
            let family_ok = match by_type {
                Algorithm::RS256 => matches!(
                    alg,
                    Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512
                ),
                other => alg == other,
            };
            if !family_ok {
                return None;
            }
            alg
        }
        None => by_type,
    };
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        decoding,
        algorithm,
    })
}

/// The usernames a new external account tries, in order: the claim lowercased with
/// characters outside `[a-z0-9_.-]` replaced by `_` (cut to 32, padded to 3), then the same
/// with `_2`, `_3`, … so that it is unique.
pub fn username_candidates(claim: Option<&str>) -> Vec<String> {
    let mut base: String = claim
        .unwrap_or("")
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if base.is_empty() {
        base = "user".into();
    }
    while base.len() < 3 {
        base.push('_');
    }
    let fit = |s: &str, room: usize| s.chars().take(32 - room).collect::<String>();
    let mut names = vec![fit(&base, 0)];
    for n in 2..=50 {
        let suffix = format!("_{n}");
        names.push(format!("{}{suffix}", fit(&base, suffix.len())));
    }
    // Past fifty namesakes, a random suffix.
    let suffix = format!("_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    names.push(format!("{}{suffix}", fit(&base, suffix.len())));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_sanitised_and_made_unique() {
        let names = username_candidates(Some("Jane Doe@Example.com"));
        assert_eq!(names[0], "jane_doe_example.com");
        assert_eq!(names[1], "jane_doe_example.com_2");
        assert!(
            names.iter().all(|n| crate::validate::username(n)),
            "{names:?}"
        );
        assert_eq!(username_candidates(Some("Al"))[0], "al_");
        assert_eq!(username_candidates(None)[0], "user");
        assert_eq!(username_candidates(Some("ÉLODIE"))[0], "_lodie");
        let long = username_candidates(Some(&"x".repeat(80)));
        assert!(
            long.iter()
                .all(|n| n.len() <= 32 && crate::validate::username(n))
        );
        assert_ne!(long[0], long[1]);
    }
}
