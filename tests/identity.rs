//! External identity (protocol v1.1): tokens of an OpenID provider. The provider here is a
//! real HTTP server started by the test, publishing a discovery document and a key set (JWKS)
//! of keys the test generates, so that each row of the token matrix is a token signed (or
//! forged) for real.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::ws::Closed;
use common::{Server, Ws, eventually};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const AUDIENCE: &str = "confab-api";
const ADMIN_GROUP: &str = "chat-admins";

/// A signing key of the provider: its private half for the test, its JWK for the key set.
#[derive(Clone)]
struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
    /// The public key as DER, for the forgery that uses it as an HMAC secret.
    public_der: Vec<u8>,
}

impl Signer {
    fn finish(kid: &str, alg: Algorithm, key: EncodingKey, public_der: Vec<u8>) -> Signer {
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, alg).unwrap()).unwrap();
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        Signer {
            kid: kid.into(),
            alg,
            key,
            jwk,
            public_der,
        }
    }

    fn rsa(kid: &str) -> Signer {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).unwrap();
        let pem = pem("PRIVATE KEY", der.as_ref());
        let public = aws_lc_rs::signature::KeyPair::public_key(&pair);
        let public_der = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(public)
            .unwrap()
            .as_ref()
            .to_vec();
        Signer::finish(
            kid,
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            public_der,
        )
    }

    fn ec(kid: &str) -> Signer {
        let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        )
        .unwrap();
        let der = pair.to_pkcs8v1().unwrap();
        Signer::finish(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_der(der.as_ref()),
            Vec::new(),
        )
    }

    fn ed(kid: &str) -> Signer {
        let pair = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
        let der = pair.to_pkcs8v1().unwrap();
        Signer::finish(
            kid,
            Algorithm::EdDSA,
            EncodingKey::from_ed_der(der.as_ref()),
            Vec::new(),
        )
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The provider: discovery and a key set the test can change, counting key-set fetches.
#[derive(Clone)]
struct Idp {
    issuer: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    /// While set, every request is answered 503, as by a provider in an outage.
    down: Arc<AtomicBool>,
}

impl Idp {
    async fn start(signers: &[&Signer]) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Idp::serve(listener, signers)
    }

    fn serve(listener: TcpListener, signers: &[&Signer]) -> Idp {
        let addr: SocketAddr = listener.local_addr().unwrap();
        let issuer = format!("http://{addr}");
        let idp = Idp {
            issuer: issuer.clone(),
            keys: Arc::new(Mutex::new(signers.iter().map(|s| s.jwk.clone()).collect())),
            fetches: Arc::default(),
            down: Arc::default(),
        };
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(|State(idp): State<Idp>| async move {
                    Json(json!({
                        "issuer": idp.issuer,
                        "jwks_uri": format!("{}/jwks", idp.issuer),
                        "authorization_endpoint": format!("{}/auth", idp.issuer),
                        "token_endpoint": format!("{}/token", idp.issuer),
                        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
                    }))
                }),
            )
            .route(
                "/jwks",
                get(|State(idp): State<Idp>| async move {
                    idp.fetches.fetch_add(1, Ordering::SeqCst);
                    let keys = idp.keys.lock().unwrap().clone();
                    // A key this server cannot use sits in the set too, as at real providers.
                    let mut all = vec![json!({"kty": "oct", "kid": "shared", "k": "c2VjcmV0"})];
                    all.extend(keys);
                    Json(json!({ "keys": all }))
                }),
            )
            .layer(axum::middleware::from_fn_with_state(
                idp.clone(),
                |State(idp): State<Idp>,
                 req: axum::extract::Request,
                 next: axum::middleware::Next| async move {
                    if idp.down.load(Ordering::SeqCst) {
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    next.run(req).await
                },
            ))
            .with_state(idp.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        idp
    }

    fn publish(&self, signers: &[&Signer]) {
        *self.keys.lock().unwrap() = signers.iter().map(|s| s.jwk.clone()).collect();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn outage(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    /// The claims of a valid token of subject `sub`.
    fn claims(&self, sub: &str, username: &str) -> Value {
        json!({
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": sub,
            "preferred_username": username,
            "name": format!("{username} (SSO)"),
            "iat": now(),
            "exp": now() + 600,
        })
    }
}

fn config(issuer: &str) -> (confab::config::Config, tempfile::TempDir) {
    let (mut c, dir) = common::embedded();
    c.oidc_issuer = Some(issuer.to_string());
    c.oidc_audience = Some(AUDIENCE.into());
    c.oidc_admin_group = Some(ADMIN_GROUP.into());
    c.oidc_client_id = Some("confab-web".into());
    c.http_rate = 100_000;
    c.http_burst = 100_000;
    (c, dir)
}

async fn confab_for(idp: &Idp) -> Server {
    let (c, dir) = config(&idp.issuer);
    Server::start_with(c, Some(dir)).await
}

/// `GET /users/me` with `token`: the status and the body.
async fn me(s: &Server, token: &str) -> (StatusCode, Value) {
    s.api().with_token(token).get("/api/v1/users/me").await
}

/// Asserts a 401 whose message says `why`, and that never echoes the token.
async fn refused(s: &Server, token: &str, why: &str) {
    let (st, body) = me(s, token).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{why}: {body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(why), "expected '{why}' in '{message}'");
    assert!(!message.contains(token), "the answer echoes the token");
}

#[tokio::test]
async fn the_token_matrix() {
    let rsa = Signer::rsa("rsa-1");
    let ec = Signer::ec("ec-1");
    let ed = Signer::ed("ed-1");
    let idp = Idp::start(&[&rsa, &ec, &ed]).await;
    let s = confab_for(&idp).await;

    // RS256, ES256 and EdDSA tokens of the provider are accepted, each as its own user.
    for (signer, sub) in [(&rsa, "s-rsa"), (&ec, "s-ec"), (&ed, "s-ed")] {
        let (st, body) = me(&s, &signer.sign(&idp.claims(sub, sub))).await;
        assert_eq!(st, StatusCode::OK, "{:?}: {body}", signer.alg);
        assert_eq!(body["username"], sub);
        assert_eq!(
            (&body["external"], &body["bot"]),
            (&json!(true), &json!(false))
        );
    }

    assert_eq!(idp.fetches(), 1, "known keys come from the cache");

    let valid = idp.claims("s-rsa", "s-rsa");
    let with = |patch: Value| {
        let mut c = valid.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    // Wrong audience, another issuer, expired, not yet valid, no subject.
    refused(
        &s,
        &rsa.sign(&with(json!({"aud": "someone-else"}))),
        "audience",
    )
    .await;
    refused(&s, &rsa.sign(&with(json!({"exp": now() - 120}))), "expired").await;
    refused(
        &s,
        &rsa.sign(&with(json!({"nbf": now() + 300}))),
        "not valid yet",
    )
    .await;
    // Within the 60 s leeway, a just-expired token still holds.
    let (st, _) = me(&s, &rsa.sign(&with(json!({"exp": now() - 20})))).await;
    assert_eq!(st, StatusCode::OK);
    // Signed with the provider's key but naming another issuer: it is not this provider's.
    let (st, _) = me(&s, &rsa.sign(&with(json!({"iss": "https://evil.example"})))).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // alg none: a token with no signature at all.
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": "rsa-1"}).to_string()),
        URL_SAFE_NO_PAD.encode(valid.to_string())
    );
    let (st, _) = me(&s, &unsigned).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // HS256 "signed" with the RSA public key as the shared secret, naming the RSA key.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let forged =
        jsonwebtoken::encode(&header, &valid, &EncodingKey::from_secret(&rsa.public_der)).unwrap();
    refused(&s, &forged, "algorithm").await;
    // A good signature by a key the provider does not publish, under a published kid.
    let stranger = Signer::rsa("rsa-1");
    refused(&s, &stranger.sign(&valid), "signature").await;

    // Naming the set's shared (`oct`) key, which is never used: to confab an unknown kid, so
    // the set is fetched again, but at most once per 10 s.
    let before = idp.fetches();
    header.kid = Some("shared".into());
    let forged =
        jsonwebtoken::encode(&header, &valid, &EncodingKey::from_secret(b"secret")).unwrap();
    refused(&s, &forged, "key").await;
    assert_eq!(
        idp.fetches(),
        before + 1,
        "an unknown kid refetches the set"
    );
    let unknown = Signer::rsa("not-published");
    for _ in 0..5 {
        refused(&s, &unknown.sign(&valid), "key").await;
    }
    assert_eq!(idp.fetches(), before + 1, "refetches are rate-limited");
}

#[tokio::test]
async fn the_first_token_creates_the_account_and_later_ones_find_it() {
    let rsa = Signer::rsa("k1");
    let idp = Idp::start(&[&rsa]).await;
    let s = confab_for(&idp).await;
    // A local account already holds "jane".
    s.user("jane").await;

    let first = rsa.sign(&idp.claims("sub-jane", "Jane"));
    let (st, body) = me(&s, &first).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["username"], "jane_2", "made unique with a suffix");
    assert_eq!(body["display_name"], "Jane (SSO)");
    assert_eq!(body["is_admin"], false);
    let id = body["id"].clone();

    // The same subject with another username claim is the same account.
    let (_, again) = me(&s, &rsa.sign(&idp.claims("sub-jane", "Someone Else"))).await;
    assert_eq!((&again["id"], &again["username"]), (&id, &json!("jane_2")));

    // Characters outside [a-z0-9_.-] become '_'.
    let (_, odd) = me(&s, &rsa.sign(&idp.claims("sub-odd", "Élodie Dupont"))).await;
    assert_eq!(odd["username"], "_lodie_dupont");

    // The admin group makes an admin, for as long as the tokens say so.
    let mut claims = idp.claims("sub-jane", "Jane");
    claims["groups"] = json!(["staff", ADMIN_GROUP]);
    let admin = rsa.sign(&claims);
    let (_, body) = me(&s, &admin).await;
    assert_eq!(body["is_admin"], true);
    let (st, _) = s.api().with_token(&admin).get("/api/v1/admin/stats").await;
    assert_eq!(st, StatusCode::OK);
    let (_, body) = me(&s, &first).await;
    assert_eq!(
        body["is_admin"], false,
        "a token without the group withdraws it"
    );
    let (st, _) = s.api().with_token(&first).get("/api/v1/admin/stats").await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // An external account has no password to log in with.
    let (st, _) = s
        .api()
        .post(
            "/api/v1/auth/login",
            json!({"username": "jane_2", "password": ""}),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // The provider's token opens WebSockets, in the handshake and in an `auth` frame.
    let mut ws = Ws::connect(s.addr, Some(&first)).await.unwrap();
    assert_eq!(ws.expect("hello").await["user"]["id"], id);
    let mut ws = Ws::connect(s.addr, None).await.unwrap();
    ws.send(json!({"type": "auth", "token": first})).await;
    assert_eq!(ws.expect("hello").await["user"]["id"], id);

    // It deletes itself without a password; its socket closes with 4001; a new token of the
    // same subject then starts a fresh account.
    let (st, body) = s.api().with_token(&first).delete("/api/v1/users/me").await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(
        ws.expect_close(Duration::from_secs(2)).await,
        Closed::Code(4001)
    );
    let (_, fresh) = me(&s, &rsa.sign(&idp.claims("sub-jane", "Jane"))).await;
    assert_ne!(fresh["id"], id);
    assert_eq!(
        fresh["username"], "jane_3",
        "the deleted account keeps its name"
    );
}

#[tokio::test]
async fn providers_say_how_to_sign_in() {
    let rsa = Signer::rsa("k1");
    let idp = Idp::start(&[&rsa]).await;
    let s = confab_for(&idp).await;
    let (st, body) = s.api().get("/api/v1/auth/providers").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        body,
        json!({"local": true, "oidc": {"issuer": idp.issuer, "client_id": "confab-web"}})
    );

    // Without a provider, and with confab passwords turned off.
    let (mut c, dir) = common::embedded();
    c.local_accounts = false;
    let plain = Server::start_with(c, Some(dir)).await;
    let (_, body) = plain.api().get("/api/v1/auth/providers").await;
    assert_eq!(body, json!({"local": false, "oidc": null}));
    let (st, body) = plain
        .api()
        .post(
            "/api/v1/auth/register",
            json!({"username": "mallory", "password": "correct horse"}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("identity provider")
    );
    let (st, _) = plain
        .api()
        .post(
            "/api/v1/auth/login",
            json!({"username": "mallory", "password": "correct horse"}),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "logins with passwords are off too"
    );
}

#[tokio::test]
async fn rotated_keys_are_fetched_and_retired_keys_stop_working() {
    let old = Signer::rsa("2026-01");
    let idp = Idp::start(&[&old]).await;
    let s = confab_for(&idp).await;
    let claims = idp.claims("sub-1", "rota");
    assert_eq!(me(&s, &old.sign(&claims)).await.0, StatusCode::OK);

    // The provider rotates: a new key signs, the old one is withdrawn.
    let new = Signer::ec("2026-02");
    idp.publish(&[&new]);
    let (st, body) = me(&s, &new.sign(&claims)).await;
    assert_eq!(
        st,
        StatusCode::OK,
        "the new key is fetched on first sight: {body}"
    );
    refused(&s, &old.sign(&claims), "key").await;
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_provider_is_down() {
    let rsa = Signer::rsa("k1");
    let idp = Idp::start(&[&rsa]).await;
    let s = confab_for(&idp).await;
    let token = rsa.sign(&idp.claims("sub-1", "steady"));
    assert_eq!(me(&s, &token).await.0, StatusCode::OK);
    idp.outage();
    assert_eq!(me(&s, &token).await.0, StatusCode::OK);
    let fresh = rsa.sign(&idp.claims("sub-2", "newcomer"));
    assert_eq!(
        me(&s, &fresh).await.0,
        StatusCode::OK,
        "a new user signs in too"
    );
    let (st, _) = s.api().get("/readyz").await;
    assert_eq!(
        st,
        StatusCode::OK,
        "readiness does not depend on the provider"
    );
    // A key the cache does not hold cannot be fetched now, and the metrics say why.
    let (st, _) = me(&s, &Signer::rsa("k2").sign(&idp.claims("sub-3", "late"))).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let metrics = s.metrics().await;
    let fetches = |outcome: &str| {
        common::metric(
            &metrics,
            &format!("confab_oidc_key_set_fetches_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(fetches("ok"), Some(1.0));
    assert_eq!(fetches("unavailable"), Some(1.0));
}

#[tokio::test]
async fn a_provider_down_at_start_is_retried_and_a_wrong_issuer_is_a_startup_error() {
    // Nothing listens yet at the issuer's address: the server starts and refuses its tokens.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let issuer = format!("http://{addr}");
    let (c, dir) = config(&issuer);
    let s = Server::start_with(c, Some(dir)).await;
    let rsa = Signer::rsa("k1");
    let claims = json!({"iss": issuer, "aud": AUDIENCE, "sub": "late", "exp": now() + 600});
    let token = rsa.sign(&claims);
    assert_eq!(me(&s, &token).await.0, StatusCode::UNAUTHORIZED);
    // The provider comes up: discovery is retried in the background and its tokens work.
    let idp = Idp::serve(TcpListener::bind(addr).await.unwrap(), &[&rsa]);
    assert!(
        eventually(Duration::from_secs(15), || async {
            me(&s, &token).await.0 == StatusCode::OK
        })
        .await,
        "the provider's tokens are accepted once it is reachable"
    );
    drop(idp);

    // An issuer that answers, but is not an OpenID provider: a startup error naming the setting.
    let app = Router::new().route("/", get(|| async { "not a provider" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (c, _dir) = config(&other);
    let err = confab::server::run(
        c,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        std::future::pending(),
    )
    .await
    .expect_err("a startup error");
    let text = format!("{err:#}");
    assert!(text.contains("CONFAB_OIDC_ISSUER"), "{text}");
    assert!(text.contains("404"), "{text}");

    // Issuer without audience is refused by the settings check.
    let (mut c, _dir) = common::embedded();
    c.oidc_issuer = Some(other);
    let err = c.validate().unwrap_err();
    assert!(err.contains("CONFAB_OIDC_AUDIENCE"), "{err}");
}
