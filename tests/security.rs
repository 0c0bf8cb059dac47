//! The security suite: each case is an attack a real client could try, and each is refused.

mod common;

use base64::Engine;
use common::ws::{Closed, WAIT};
use common::{Server, User, Ws, embedded};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRET: &str = "security-suite-secret-security-suite-secret";

async fn server() -> Server {
    let (mut config, dir) = embedded();
    config.jwt_secret = Some(SECRET.into());
    config.admins = vec!["root".into()];
    Server::start_with(config, Some(dir)).await
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(alg: Algorithm, claims: &Value, key: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).unwrap()
}

fn claims(sub: &str, exp: u64) -> Value {
    json!({"sub": sub, "exp": exp, "iat": unix_now() - 10, "jti": "j"})
}

async fn status_with_token(s: &Server, token: &str) -> StatusCode {
    s.api().with_token(token).get("/api/v1/users/me").await.0
}

/// Alice owns a private room and a public one; Bob and Carol share a DM; Mallory is nobody.
struct World {
    s: Server,
    alice: User,
    bob: User,
    carol: User,
    mallory: User,
    private: String,
    public: String,
    dm: String,
}

async fn world() -> World {
    let s = server().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    let mallory = s.user("mallory").await;
    let private = alice.create_room("secret", "private").await;
    let public = alice.create_room("general", "public").await;
    alice
        .post_message(&private, "the launch code is 1234")
        .await;
    alice.post_message(&public, "hello").await;
    let (_, dm) = bob
        .api
        .post("/api/v1/dms", json!({"user_id": carol.id}))
        .await;
    let dm = dm["id"].as_str().unwrap().to_string();
    bob.post_message(&dm, "just between us").await;
    mallory.join(&public).await;
    World {
        s,
        alice,
        bob,
        carol,
        mallory,
        private,
        public,
        dm,
    }
}

// ---- tokens -----------------------------------------------------------------------------

#[tokio::test]
async fn jwt_with_alg_none_is_refused() {
    let s = server().await;
    let alice = s.user("alice").await;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims(&alice.id, unix_now() + 600).to_string())
    );
    assert_eq!(status_with_token(&s, &none).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn jwt_signed_with_another_key_is_refused() {
    let s = server().await;
    let alice = s.user("alice").await;
    let forged = sign(
        Algorithm::HS256,
        &claims(&alice.id, unix_now() + 600),
        b"another-key-another-key-another-key!",
    );
    assert_eq!(
        status_with_token(&s, &forged).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn jwt_with_another_algorithm_is_refused_even_with_the_right_key() {
    let s = server().await;
    let alice = s.user("alice").await;
    let hs512 = sign(
        Algorithm::HS512,
        &claims(&alice.id, unix_now() + 600),
        SECRET.as_bytes(),
    );
    assert_eq!(
        status_with_token(&s, &hs512).await,
        StatusCode::UNAUTHORIZED
    );
    // The control: the same claims with the configured algorithm work.
    let good = sign(
        Algorithm::HS256,
        &claims(&alice.id, unix_now() + 600),
        SECRET.as_bytes(),
    );
    assert_eq!(status_with_token(&s, &good).await, StatusCode::OK);
}

#[tokio::test]
async fn expired_jwt_is_refused_over_rest_and_websocket() {
    let s = server().await;
    let alice = s.user("alice").await;
    let expired = sign(
        Algorithm::HS256,
        &claims(&alice.id, unix_now() - 5),
        SECRET.as_bytes(),
    );
    let (st, body) = s.api().with_token(&expired).get("/api/v1/users/me").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    let err = Ws::connect(s.addr, Some(&expired))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, confab_client::Error::Handshake(401)));
}

#[tokio::test]
async fn jwt_for_a_user_that_does_not_exist_is_refused() {
    let s = server().await;
    let ghost = sign(
        Algorithm::HS256,
        &claims(&uuid::Uuid::now_v7().to_string(), unix_now() + 600),
        SECRET.as_bytes(),
    );
    assert_eq!(
        status_with_token(&s, &ghost).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn jwt_with_a_tampered_payload_is_refused() {
    let w = world().await;
    // Mallory swaps her id for Alice's in her own token, keeping the signature.
    let parts: Vec<&str> = w.mallory.token.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    payload["sub"] = json!(w.alice.id);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(payload.to_string()),
        parts[2]
    );
    assert_eq!(
        status_with_token(&w.s, &tampered).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_token_without_the_bearer_scheme_is_refused() {
    let s = server().await;
    let alice = s.user("alice").await;
    let r = reqwest::Client::new()
        .get(s.url("/api/v1/users/me"))
        .header("authorization", format!("Token {}", alice.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_auth_frame_with_a_forged_token_gets_no_hello() {
    let s = server().await;
    let alice = s.user("alice").await;
    let forged = sign(
        Algorithm::HS256,
        &claims(&alice.id, unix_now() + 600),
        b"another-key-another-key-another-key!",
    );
    let mut ws = Ws::connect(s.addr, None).await.unwrap();
    ws.send(json!({"type": "auth", "token": forged})).await;
    assert_eq!(ws.expect("error").await["code"], "unauthorized");
    ws.send(json!({"type": "subscribe", "room": uuid::Uuid::now_v7()}))
        .await;
    assert_eq!(
        ws.expect("error").await["code"],
        "unauthorized",
        "nothing works before auth"
    );
}

#[tokio::test]
async fn a_reused_refresh_token_revokes_its_whole_family() {
    let s = server().await;
    let alice = s.user("alice").await;
    let (_, fresh) = s
        .api()
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": alice.refresh}),
        )
        .await;
    // A thief replays the old token: refused, and the legitimate new one dies with it.
    let (st, _) = s
        .api()
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": alice.refresh}),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = s
        .api()
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": fresh["refresh_token"]}),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn refresh_tokens_cannot_be_guessed_or_swapped_for_access_tokens() {
    let s = server().await;
    let alice = s.user("alice").await;
    for bogus in [json!("made-up"), json!(alice.token), json!("")] {
        let (st, _) = s
            .api()
            .post("/api/v1/auth/refresh", json!({"refresh_token": bogus}))
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{bogus}");
    }
    // And a refresh token is no access token.
    assert_eq!(
        status_with_token(&s, &alice.refresh).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_logged_out_refresh_token_is_dead() {
    let s = server().await;
    let alice = s.user("alice").await;
    s.api()
        .post(
            "/api/v1/auth/logout",
            json!({"refresh_token": alice.refresh}),
        )
        .await;
    let (st, _) = s
        .api()
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": alice.refresh}),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn login_does_not_tell_unknown_users_from_wrong_passwords() {
    let s = server().await;
    s.user("alice").await;
    let (st1, b1) = s
        .api()
        .post(
            "/api/v1/auth/login",
            json!({"username": "alice", "password": "wrong password"}),
        )
        .await;
    let (st2, b2) = s
        .api()
        .post(
            "/api/v1/auth/login",
            json!({"username": "nobody", "password": "wrong password"}),
        )
        .await;
    assert_eq!(
        (st1, st2),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(b1, b2);
}

// ---- rooms and messages by id (IDOR) ---------------------------------------------------------

#[tokio::test]
async fn a_private_room_is_invisible_to_outsiders_everywhere() {
    let w = world().await;
    let m = &w.mallory.api;
    let p = &w.private;
    for path in [
        format!("/api/v1/rooms/{p}"),
        format!("/api/v1/rooms/{p}/messages"),
        format!("/api/v1/rooms/{p}/members"),
        format!("/api/v1/rooms/{p}/search?q=launch"),
    ] {
        let (st, body) = m.get(&path).await;
        assert_eq!(
            (st, body["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{path}"
        );
    }
    // Exactly the answer for a room that does not exist.
    let (_, missing) = m
        .get(&format!("/api/v1/rooms/{}", uuid::Uuid::now_v7()))
        .await;
    let (_, hidden) = m.get(&format!("/api/v1/rooms/{p}")).await;
    assert_eq!(missing, hidden);
    let (_, list) = m.get("/api/v1/rooms").await;
    assert!(!list.to_string().contains(p.as_str()));
}

#[tokio::test]
async fn outsiders_cannot_write_into_a_private_room() {
    let w = world().await;
    let m = &w.mallory.api;
    let p = &w.private;
    let attempts = [
        m.post(
            &format!("/api/v1/rooms/{p}/messages"),
            json!({"body": "hi"}),
        )
        .await
        .0,
        m.post(&format!("/api/v1/rooms/{p}/join"), json!({}))
            .await
            .0,
        m.post(&format!("/api/v1/rooms/{p}/read"), json!({"seq": 1}))
            .await
            .0,
        m.post(
            &format!("/api/v1/rooms/{p}/members"),
            json!({"user_id": w.mallory.id}),
        )
        .await
        .0,
        m.patch(&format!("/api/v1/rooms/{p}"), json!({"topic": "pwned"}))
            .await
            .0,
        m.delete(&format!("/api/v1/rooms/{p}")).await.0,
        m.patch(
            &format!("/api/v1/rooms/{p}/messages/1"),
            json!({"body": "pwned"}),
        )
        .await
        .0,
        m.delete(&format!("/api/v1/rooms/{p}/messages/1")).await.0,
    ];
    assert!(
        attempts.iter().all(|s| *s == StatusCode::NOT_FOUND),
        "{attempts:?}"
    );
    let (_, h) = w
        .alice
        .api
        .get(&format!("/api/v1/rooms/{p}/messages"))
        .await;
    assert_eq!(
        h["messages"][0]["body"], "the launch code is 1234",
        "nothing changed"
    );
}

#[tokio::test]
async fn a_direct_room_belongs_to_its_two_users_only() {
    let w = world().await;
    let (st, _) = w
        .mallory
        .api
        .get(&format!("/api/v1/rooms/{}/messages", w.dm))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = w
        .alice
        .api
        .post(
            &format!("/api/v1/rooms/{}/members", w.dm),
            json!({"user_id": w.alice.id}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = w
        .carol
        .api
        .post(
            &format!("/api/v1/rooms/{}/members", w.dm),
            json!({"user_id": w.mallory.id}),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "a DM member cannot invite a third"
    );
}

#[tokio::test]
async fn members_cannot_edit_or_delete_other_peoples_messages() {
    let w = world().await;
    let pub_ = &w.public;
    let (st, _) = w
        .mallory
        .api
        .patch(
            &format!("/api/v1/rooms/{pub_}/messages/1"),
            json!({"body": "alice is wrong"}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = w
        .mallory
        .api
        .delete(&format!("/api/v1/rooms/{pub_}/messages/1"))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let mut ws = w.mallory.connect().await;
    ws.send(json!({"type": "edit", "room": pub_, "seq": 1, "body": "x"}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "forbidden");
    ws.send(json!({"type": "delete", "room": pub_, "seq": 1}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "forbidden");
    let (_, h) = w
        .alice
        .api
        .get(&format!("/api/v1/rooms/{pub_}/messages"))
        .await;
    assert_eq!(
        (
            h["messages"][0]["body"].as_str(),
            h["messages"][0]["deleted"].as_bool()
        ),
        (Some("hello"), Some(false))
    );
}

#[tokio::test]
async fn members_cannot_moderate() {
    let w = world().await;
    let pub_ = &w.public;
    let m = &w.mallory.api;
    let attempts = [
        m.delete(&format!("/api/v1/rooms/{pub_}/members/{}", w.alice.id))
            .await
            .0,
        m.post(
            &format!("/api/v1/rooms/{pub_}/members/{}/mute", w.alice.id),
            json!({}),
        )
        .await
        .0,
        m.delete(&format!(
            "/api/v1/rooms/{pub_}/members/{}/mute",
            w.mallory.id
        ))
        .await
        .0,
        m.patch(&format!("/api/v1/rooms/{pub_}"), json!({"read_only": true}))
            .await
            .0,
        m.delete(&format!("/api/v1/rooms/{pub_}")).await.0,
    ];
    assert!(
        attempts.iter().all(|s| *s == StatusCode::FORBIDDEN),
        "{attempts:?}"
    );
}

#[tokio::test]
async fn search_never_reaches_into_rooms_the_caller_cannot_read() {
    let w = world().await;
    let (_, r) = w.mallory.api.get("/api/v1/search?q=launch").await;
    assert_eq!(r["messages"], json!([]));
    let (_, r) = w.mallory.api.get("/api/v1/search?q=between").await;
    assert_eq!(r["messages"], json!([]), "nor into other people's DMs");
    let (_, r) = w.carol.api.get("/api/v1/search?q=between").await;
    assert_eq!(
        r["messages"].as_array().unwrap().len(),
        1,
        "the control: Carol finds her DM"
    );
}

// ---- administration ---------------------------------------------------------------------------

#[tokio::test]
async fn admin_endpoints_refuse_normal_users() {
    let w = world().await;
    let m = &w.mallory.api;
    let target = &w.alice.id;
    let attempts = [
        m.get("/api/v1/admin/users").await.0,
        m.get("/api/v1/admin/rooms").await.0,
        m.get("/api/v1/admin/stats").await.0,
        m.post(&format!("/api/v1/admin/users/{target}/ban"), json!({}))
            .await
            .0,
        m.delete(&format!("/api/v1/admin/users/{target}/ban"))
            .await
            .0,
        m.post(&format!("/api/v1/admin/users/{target}/mute"), json!({}))
            .await
            .0,
        m.delete(&format!("/api/v1/admin/users/{target}/mute"))
            .await
            .0,
    ];
    assert!(
        attempts.iter().all(|s| *s == StatusCode::FORBIDDEN),
        "{attempts:?}"
    );
    let (st, _) = w.s.api().get("/api/v1/admin/users").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    w.alice.post_message(&w.public, "still here").await;
}

#[tokio::test]
async fn registering_an_admins_name_in_another_case_does_not_make_an_admin() {
    let s = server().await;
    let (st, _) = s
        .api()
        .post(
            "/api/v1/auth/register",
            json!({"username": "ROOT", "password": "password1"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = s
        .api()
        .post(
            "/api/v1/auth/register",
            json!({"username": "root ", "password": "password1"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

// ---- moderation holds -----------------------------------------------------------------------

#[tokio::test]
async fn a_muted_user_cannot_send_by_any_route() {
    let w = world().await;
    w.alice
        .api
        .post(
            &format!("/api/v1/rooms/{}/members/{}/mute", w.public, w.mallory.id),
            json!({}),
        )
        .await;
    let (st, _) = w
        .mallory
        .api
        .post(
            &format!("/api/v1/rooms/{}/messages", w.public),
            json!({"body": "x"}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let mut ws = w.mallory.subscribed(&w.public).await;
    ws.say(&w.public, "x", "c1").await;
    assert_eq!(ws.expect("error").await["code"], "muted");
    // Editing an old message is sending too.
    let (st, _) = w
        .mallory
        .api
        .patch(
            &format!("/api/v1/rooms/{}/messages/1", w.public),
            json!({"body": "x"}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_banned_user_is_locked_out_everywhere() {
    let w = world().await;
    let root = w.s.user("root").await;
    let mut ws = w.mallory.subscribed(&w.public).await;
    root.api
        .post(
            &format!("/api/v1/admin/users/{}/ban", w.mallory.id),
            json!({}),
        )
        .await;
    assert_eq!(ws.expect_close(WAIT).await, Closed::Code(4003));
    let (st, _) = w
        .mallory
        .api
        .post(
            &format!("/api/v1/rooms/{}/messages", w.public),
            json!({"body": "x"}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(Ws::connect(w.s.addr, Some(&w.mallory.token)).await.is_err());
    let mut late = Ws::connect(w.s.addr, None).await.unwrap();
    late.send(json!({"type": "auth", "token": w.mallory.token}))
        .await;
    assert_eq!(late.expect("error").await["code"], "forbidden");
}

#[tokio::test]
async fn a_kicked_user_cannot_come_back_by_socket() {
    let w = world().await;
    let p = &w.private;
    w.alice
        .api
        .post(
            &format!("/api/v1/rooms/{p}/members"),
            json!({"user_id": w.bob.id}),
        )
        .await;
    let mut ws = w.bob.subscribed(p).await;
    w.alice
        .api
        .delete(&format!("/api/v1/rooms/{p}/members/{}", w.bob.id))
        .await;
    ws.expect("kicked").await;
    ws.say(p, "let me in", "c1").await;
    assert_eq!(ws.expect("error").await["code"], "not_found");
    ws.send(json!({"type": "subscribe", "room": p})).await;
    assert_eq!(ws.expect("error").await["code"], "not_found");
    ws.send(json!({"type": "typing", "room": p, "active": true}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "not_found");
}

#[tokio::test]
async fn sockets_cannot_subscribe_or_act_in_rooms_they_cannot_read() {
    let w = world().await;
    let mut ws = w.mallory.connect().await;
    for frame in [
        json!({"type": "subscribe", "room": w.private}),
        json!({"type": "subscribe", "room": w.dm, "since": 0}),
        json!({"type": "read", "room": w.private, "seq": 1}),
        json!({"type": "delivered", "room": w.dm, "seq": 1}),
        json!({"type": "typing", "room": w.private, "active": true}),
    ] {
        ws.send(frame.clone()).await;
        let e = ws.expect("error").await;
        assert_eq!(e["code"], "not_found", "{frame}");
    }
    ws.expect_none("message", std::time::Duration::from_millis(200))
        .await;
}

// ---- hostile input -------------------------------------------------------------------------

#[tokio::test]
async fn oversized_frames_close_1009() {
    let s = server().await;
    let alice = s.user("alice").await;
    let mut ws = alice.connect().await;
    ws.send_text(&"x".repeat(65_537)).await;
    assert_eq!(ws.expect_close(WAIT).await, Closed::Code(1009));
}

#[tokio::test]
async fn malformed_frames_are_answered_and_the_socket_survives() {
    let s = server().await;
    let alice = s.user("alice").await;
    let mut ws = alice.connect().await;
    for bad in [
        "",
        "{",
        "[]",
        "null",
        "{\"type\":42}",
        "{\"type\":\"message\"}",
        "{\"type\":\"subscribe\",\"room\":\"../../etc/passwd\"}",
        "{\"type\":\"read\",\"room\":\"00000000-0000-0000-0000-000000000000\",\"seq\":\"x\"}",
    ] {
        ws.send_text(bad).await;
        assert_eq!(ws.expect("error").await["code"], "bad_request", "{bad}");
    }
    ws.send(json!({"type": "ping"})).await;
    ws.expect("pong").await;
}

#[tokio::test]
async fn oversized_message_bodies_are_too_large() {
    let w = world().await;
    let (st, body) = w
        .mallory
        .api
        .post(
            &format!("/api/v1/rooms/{}/messages", w.public),
            json!({"body": "x".repeat(20_000)}),
        )
        .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large"))
    );
    let mut ws = w.mallory.connect().await;
    ws.say(&w.public, &"é".repeat(8_193), "big").await; // 16,386 bytes in 8,193 characters
    assert_eq!(ws.expect("error").await["code"], "too_large");
}

#[tokio::test]
async fn huge_request_bodies_are_refused_without_a_500() {
    let s = server().await;
    let r = reqwest::Client::new()
        .post(s.url("/api/v1/auth/register"))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"username\":\"{}\",\"password\":\"password1\"}}",
            "a".repeat(3 * 1024 * 1024)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn injection_shaped_input_is_just_text() {
    let w = world().await;
    let (st, _) =
        w.s.api()
            .post(
                "/api/v1/auth/register",
                json!({"username": "x'; DROP TABLE users;--", "password": "password1"}),
            )
            .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = w
        .alice
        .api
        .post(
            "/api/v1/rooms",
            json!({"name": "r\"); DELETE FROM rooms;--", "kind": "public"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, r) = w
        .alice
        .api
        .get("/api/v1/search?q=%27%29%20OR%201%3D1%20--")
        .await;
    assert_eq!((st, r["messages"].clone()), (StatusCode::OK, json!([])));
    let (st, r) = w.alice.api.get("/api/v1/admin/users?q=%25").await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{r}");
    let body = "<script>alert(1)</script>'; DROP TABLE messages;--";
    let m = w.alice.post_message(&w.public, body).await;
    let (_, h) = w
        .alice
        .api
        .get(&format!(
            "/api/v1/rooms/{}/messages?after={}",
            w.public,
            m["seq"].as_i64().unwrap() - 1
        ))
        .await;
    assert_eq!(
        h["messages"][0]["body"], body,
        "stored and returned verbatim, as data"
    );
}

#[tokio::test]
async fn path_ids_that_are_not_uuids_are_bad_requests() {
    let w = world().await;
    for path in [
        "/api/v1/rooms/1",
        "/api/v1/rooms/..%2F..%2Fadmin",
        "/api/v1/users/%00",
    ] {
        let (st, _) = w.alice.api.get(path).await;
        assert!(
            st == StatusCode::BAD_REQUEST || st == StatusCode::NOT_FOUND,
            "{path}: {st}"
        );
        assert_ne!(st, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let (st, _) = w
        .alice
        .api
        .patch(
            &format!("/api/v1/rooms/{}/messages/abc", w.public),
            json!({"body": "x"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "a seq that is not a number");
}

#[tokio::test]
async fn a_foreign_origin_cannot_open_a_socket() {
    let s = server().await;
    let alice = s.user("alice").await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let attempt = |origin: &str| {
        let mut req = format!("ws://{}/ws?token={}", s.addr, alice.token)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    match attempt("https://evil.example").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("a foreign origin was let in: {:?}", other.map(|_| ())),
    }
    // The server's own origin is fine.
    assert!(attempt(&format!("http://{}", s.addr)).await.is_ok());
}

#[tokio::test]
async fn listed_origins_are_let_in() {
    let (mut config, dir) = embedded();
    config.allowed_origins = vec!["https://chat.example.com".into()];
    let s = Server::start_with(config, Some(dir)).await;
    let alice = s.user("alice").await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/ws?token={}", s.addr, alice.token)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("origin", "https://chat.example.com".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
}

#[tokio::test]
async fn too_many_sockets_per_user_are_refused() {
    let (mut config, dir) = embedded();
    config.max_connections_per_user = 2;
    let s = Server::start_with(config, Some(dir)).await;
    let alice = s.user("alice").await;
    let _a = alice.connect().await;
    let _b = alice.connect().await;
    match Ws::connect(s.addr, Some(&alice.token)).await {
        Err(confab_client::Error::Handshake(status)) => assert_eq!(status, 429),
        other => panic!("a third socket was let in: {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn too_many_subscriptions_per_socket_are_refused() {
    let (mut config, dir) = embedded();
    config.max_subscriptions = 2;
    let s = Server::start_with(config, Some(dir)).await;
    let alice = s.user("alice").await;
    let mut ws = alice.connect().await;
    for name in ["r1", "r2"] {
        let room = alice.create_room(name, "public").await;
        ws.subscribe(&room, None).await;
    }
    let third = alice.create_room("r3", "public").await;
    ws.send(json!({"type": "subscribe", "room": third})).await;
    assert_eq!(ws.expect("error").await["code"], "forbidden");
}

#[tokio::test]
async fn answers_carry_security_headers() {
    let s = server().await;
    for path in ["/healthz", "/api/v1/rooms", "/api/v1/nowhere"] {
        let r = reqwest::get(s.url(path)).await.unwrap();
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert!(h.contains_key("content-security-policy"), "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
    }
}

// ---- v1.1 message features ----------------------------------------------------------------

#[tokio::test]
async fn outsiders_cannot_react_pin_page_threads_or_read_changes_of_a_private_room() {
    let w = world().await;
    let private = &w.private;
    let dm = &w.dm;
    for room in [private, dm] {
        for (method, path) in [
            (
                Method::PUT,
                format!("/api/v1/rooms/{room}/messages/1/reactions/%F0%9F%91%8D"),
            ),
            (
                Method::DELETE,
                format!("/api/v1/rooms/{room}/messages/1/reactions/%F0%9F%91%8D"),
            ),
            (Method::PUT, format!("/api/v1/rooms/{room}/pins/1")),
            (Method::GET, format!("/api/v1/rooms/{room}/pins")),
            (Method::GET, format!("/api/v1/rooms/{room}/changes")),
            (Method::GET, format!("/api/v1/rooms/{room}/threads/1")),
        ] {
            let (st, body) = w.mallory.api.call(method.clone(), &path, None).await;
            assert_eq!(st, StatusCode::NOT_FOUND, "{method} {path}: {body}");
            assert!(!body.to_string().contains("launch code"), "{body}");
        }
    }
    // The same over the socket: an error, nothing learned, the socket open.
    let mut ws = w.mallory.connect().await;
    ws.send(json!({"type": "react", "room": private, "seq": 1, "emoji": "👍", "active": true}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "not_found");
    ws.send(json!({"type": "subscribe", "room": private, "since": 0, "since_rev": 0}))
        .await;
    assert_eq!(ws.expect("error").await["code"], "not_found");
    ws.send(json!({"type": "ping"})).await;
    ws.expect("pong").await;
    let (_, h) = w
        .alice
        .api
        .get(&format!("/api/v1/rooms/{private}/messages"))
        .await;
    assert_eq!(h["messages"][0]["reactions"], json!([]));
}

#[tokio::test]
async fn a_thread_cannot_be_rooted_in_another_room_and_members_cannot_pin() {
    let w = world().await;
    let public = &w.public;
    // Seq 1 of the public room exists; a reply naming a root that only exists elsewhere fails.
    w.alice.post_message(&w.private, "second secret").await;
    let (st, body) = w
        .mallory
        .api
        .post(
            &format!("/api/v1/rooms/{public}/messages"),
            json!({"body": "sneaky", "thread": 2}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    let (st, _) = w
        .mallory
        .api
        .put(&format!("/api/v1/rooms/{public}/pins/1"))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "members do not pin");
    let (_, pins) = w
        .alice
        .api
        .get(&format!("/api/v1/rooms/{public}/pins"))
        .await;
    assert_eq!(pins["messages"], json!([]));
}

#[tokio::test]
async fn oversized_and_malformed_emoji_are_refused_without_a_trace() {
    let w = world().await;
    let public = &w.public;
    let long_family = "👨‍👩‍👧‍👦".repeat(3);
    let long_code = format!(":{}:", "a".repeat(33));
    for emoji in [
        long_family.as_str(),
        long_code.as_str(),
        "%00",
        "%E2%80%AE",
        "%20",
        "a",
        "%F0%9F%91",
    ] {
        let path = format!("/api/v1/rooms/{public}/messages/1/reactions/{emoji}");
        let (st, body) = w.mallory.api.put(&path).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{emoji}: {body}");
        assert!(
            !body.to_string().contains("Utf8") && !body.to_string().contains("String"),
            "no Rust type names: {body}"
        );
    }
    let (_, h) = w
        .alice
        .api
        .get(&format!("/api/v1/rooms/{public}/messages"))
        .await;
    assert_eq!(
        (&h["messages"][0]["reactions"], &h["messages"][0]["rev"]),
        (&json!([]), &json!(1))
    );
}

// ---- bots and API keys --------------------------------------------------------------------

#[tokio::test]
async fn bot_administration_is_for_admins_only_and_keys_cannot_be_forged() {
    let w = world().await;
    let root = w.s.user("root").await;
    let (st, created) = root
        .api
        .post("/api/v1/admin/bots", json!({"username": "helper"}))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let bot = created["user"]["id"].as_str().unwrap().to_string();
    let key = created["api_key"].as_str().unwrap().to_string();
    let key_id = created["key_id"].as_str().unwrap().to_string();

    // A member, and a bot without the admin right, are refused every bot endpoint.
    let bot_api = w.s.api().with_token(&key);
    for m in [&w.mallory.api, &bot_api] {
        let attempts = [
            m.get("/api/v1/admin/bots").await.0,
            m.post(
                "/api/v1/admin/bots",
                json!({"username": "evil-bot", "admin": true}),
            )
            .await
            .0,
            m.post(&format!("/api/v1/admin/bots/{bot}/keys"), json!({}))
                .await
                .0,
            m.delete(&format!("/api/v1/admin/bots/{bot}/keys/{key_id}"))
                .await
                .0,
            m.delete(&format!("/api/v1/admin/bots/{bot}")).await.0,
        ];
        assert!(
            attempts.iter().all(|s| *s == StatusCode::FORBIDDEN),
            "{attempts:?}"
        );
    }
    let (st, _) = w.s.api().get("/api/v1/admin/bots").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Near misses of a real key are refused: truncated, one character changed, the key id,
    // the prefix alone.
    let mut changed = key.clone();
    let last = changed.pop().unwrap();
    changed.push(if last == 'A' { 'B' } else { 'A' });
    for forged in [
        &key[..key.len() - 1],
        changed.as_str(),
        key_id.as_str(),
        &format!("cfk_{key_id}"),
        "cfk_",
    ] {
        let (st, body) = w.s.api().with_token(forged).get("/api/v1/users/me").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{forged}: {body}");
    }

    // Malformed bodies and ids are 4xx in the protocol's words.
    let (st, body) = root
        .api
        .post("/api/v1/admin/bots", json!({"username": 7}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(!body.to_string().contains("i64") && !body.to_string().contains("String"));
    let (st, _) = root
        .api
        .post("/api/v1/admin/bots", json!({"username": "x\u{202e}yz"}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = root
        .api
        .post(
            "/api/v1/admin/bots",
            json!({"username": "fine-bot", "display_name": "\u{0007}"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = root.api.delete("/api/v1/admin/bots/not-a-uuid").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // A person is not a bot: the bot endpoints do not touch people.
    let (st, _) = root
        .api
        .delete(&format!("/api/v1/admin/bots/{}", w.alice.id))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    w.alice.post_message(&w.public, "still here").await;
}
