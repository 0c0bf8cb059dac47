//! The REST surface of docs/protocol.md over real HTTP, in the embedded shape.

mod common;

use common::Server;
use reqwest::StatusCode;
use serde_json::json;

fn code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn register_validates_and_refuses_taken_names() {
    let s = Server::embedded().await;
    let api = s.api();
    let (st, body) = api
        .post(
            "/api/v1/auth/register",
            json!({"username": "alice", "password": "password1", "display_name": "Alice"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let u = &body["user"];
    assert_eq!(
        (
            u["username"].as_str(),
            u["display_name"].as_str(),
            u["is_admin"].as_bool()
        ),
        (Some("alice"), Some("Alice"), Some(false))
    );
    assert!(u["id"].as_str().unwrap().parse::<uuid::Uuid>().is_ok());
    assert!(u["created_at"].as_str().unwrap().ends_with('Z'));

    let (st, body) = api
        .post(
            "/api/v1/auth/register",
            json!({"username": "alice", "password": "password2"}),
        )
        .await;
    assert_eq!((st, code(&body)), (StatusCode::CONFLICT, "conflict"));
    for bad in ["al", "Alice", "a b", "x".repeat(33).as_str()] {
        let (st, body) = api
            .post(
                "/api/v1/auth/register",
                json!({"username": bad, "password": "password1"}),
            )
            .await;
        assert_eq!(
            (st, code(&body)),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{bad}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("username")
        );
    }
    let (st, body) = api
        .post(
            "/api/v1/auth/register",
            json!({"username": "bob", "password": "short"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("password")
    );
    // A body missing a field names the field.
    let (st, body) = api
        .post("/api/v1/auth/register", json!({"username": "bob"}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("password"),
        "{body}"
    );
}

#[tokio::test]
async fn malformed_bodies_are_400_not_500() {
    let s = Server::embedded().await;
    let client = reqwest::Client::new();
    for (ctype, body) in [
        ("application/json", "{not json"),
        ("application/json", "[1,2]"),
        ("application/json; charset=utf-8", "{\"username\": 5}"),
    ] {
        let r = client
            .post(s.url("/api/v1/auth/login"))
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{ctype} {body}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(code(&v), "bad_request");
    }
    let alice = s.user("alice").await;
    let (st, _) = alice.api.get("/api/v1/rooms/not-a-uuid").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, body) = alice.api.get("/api/v1/nowhere").await;
    assert_eq!((st, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
}

/// A body that is not JSON is 415; a JSON body of the wrong shape is a 400 whose message names
/// the field in the protocol's words, never a Rust type of the server's.
#[tokio::test]
async fn body_errors_name_the_field_and_never_a_type() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    let client = reqwest::Client::new();
    let send = |ctype: &'static str, body: &'static str| {
        client
            .post(s.url(&format!("/api/v1/rooms/{room}/messages")))
            .bearer_auth(&alice.token)
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    for ctype in ["text/plain", "application/x-www-form-urlencoded"] {
        let r = send(ctype, "{\"body\":\"hi\"}").await.unwrap();
        assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ctype}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(code(&v), "unsupported_media_type");
    }
    for (body, expected) in [
        ("[\"hi\", null, null, null]", "must be a JSON object"),
        ("{\"body\": 5}", "body: invalid type"),
        ("{\"client_id\": \"c1\"}", "missing field `body`"),
        (
            "{\"body\": \"hi\", \"reply_to\": \"two\"}",
            "reply_to: invalid type",
        ),
        (
            "{\"body\": \"hi\", \"attachments\": [1]}",
            "attachments[0]: invalid type",
        ),
    ] {
        let r = send("application/json", body).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let v: serde_json::Value = r.json().await.unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{body}: {message}");
        for leak in ["struct", "SendBody", "Option", "Vec<", "i64"] {
            assert!(!message.contains(leak), "{body}: {message}");
        }
    }
}

#[tokio::test]
async fn login_refresh_and_logout_follow_the_token_rules() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let api = s.api();
    let (st, body) = api
        .post(
            "/api/v1/auth/login",
            json!({"username": "alice", "password": "wrong password"}),
        )
        .await;
    assert_eq!(
        (st, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (st, _) = api
        .post(
            "/api/v1/auth/login",
            json!({"username": "nobody", "password": "whatever1"}),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    let (st, tokens) = api
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": alice.refresh}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900);
    let new_refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(new_refresh, alice.refresh);
    let (st, _) = api
        .with_token(tokens["access_token"].as_str().unwrap())
        .get("/api/v1/users/me")
        .await;
    assert_eq!(st, StatusCode::OK);

    // The spent token again: 401, and the whole family (the new token too) is revoked.
    let (st, _) = api
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": alice.refresh}),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = api
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": new_refresh}),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // Logout revokes a fresh family.
    let again = s.login("alice").await;
    let (st, _) = api
        .post(
            "/api/v1/auth/logout",
            json!({"refresh_token": again.refresh}),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = api
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": again.refresh}),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn endpoints_need_a_valid_access_token() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let (st, body) = s.api().get("/api/v1/users/me").await;
    assert_eq!(
        (st, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (st, _) = s.api().with_token("garbage").get("/api/v1/rooms").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // A token signed with another key, and one with alg "none", are refused.
    let claims = json!({"sub": alice.id, "exp": 4102444800u64, "iat": 1, "jti": "x"});
    let forged = jsonwebtoken_like::hs256(&claims, b"not the server's secret not the server's");
    let (st, _) = s.api().with_token(&forged).get("/api/v1/users/me").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let none = jsonwebtoken_like::unsigned(&claims);
    let (st, _) = s.api().with_token(&none).get("/api/v1/users/me").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    let (st, me) = alice.api.get("/api/v1/users/me").await;
    assert_eq!(
        (st, me["username"].as_str()),
        (StatusCode::OK, Some("alice"))
    );
    let (st, other) = alice.api.get(&format!("/api/v1/users/{}", alice.id)).await;
    assert_eq!(
        (st, other["id"].as_str()),
        (StatusCode::OK, Some(alice.id.as_str()))
    );
    let (st, _) = alice
        .api
        .get(&format!("/api/v1/users/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

/// Token forgery for the tests above, written with the server's own JWT library.
mod jsonwebtoken_like {
    use base64::Engine;
    pub fn hs256(claims: &serde_json::Value, key: &[u8]) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(key),
        )
        .unwrap()
    }
    pub fn unsigned(claims: &serde_json::Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(claims.to_string())
        )
    }
}

#[tokio::test]
async fn admins_are_flagged() {
    let (mut config, dir) = common::embedded();
    config.admins = vec!["root".into()];
    let s = Server::start_with(config, Some(dir)).await;
    let root = s.user("root").await;
    let (_, me) = root.api.get("/api/v1/users/me").await;
    assert_eq!(me["is_admin"], true);
}

#[tokio::test]
async fn rooms_are_created_listed_and_hidden_when_private() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (st, room) = alice
        .api
        .post(
            "/api/v1/rooms",
            json!({"name": "general", "kind": "public", "topic": "hi"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    for field in [
        "id",
        "name",
        "kind",
        "topic",
        "created_at",
        "created_by",
        "member_count",
        "last_seq",
        "archived",
        "managed_by",
    ] {
        assert!(room.get(field).is_some(), "Room lacks {field}: {room}");
    }
    assert_eq!(
        (
            room["role"].as_str(),
            room["member_count"].as_i64(),
            room["managed_by"].is_null()
        ),
        (Some("owner"), Some(1), true)
    );
    let general = room["id"].as_str().unwrap().to_string();
    let secret = alice.create_room("secret", "private").await;

    let (st, body) = alice
        .api
        .post(
            "/api/v1/rooms",
            json!({"name": "general", "kind": "private"}),
        )
        .await;
    assert_eq!((st, code(&body)), (StatusCode::CONFLICT, "conflict"));
    let (st, _) = alice
        .api
        .post(
            "/api/v1/rooms",
            json!({"name": "Bad Name", "kind": "public"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, body) = alice
        .api
        .post("/api/v1/rooms", json!({"name": "ok", "kind": "secretive"}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("kind"));

    // Bob sees the public room (not yet his), never the private one.
    let (_, list) = bob.api.get("/api/v1/rooms").await;
    let ids: Vec<&str> = list["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![general.as_str()]);
    assert!(list["rooms"][0].get("role").is_none());
    for path in [
        format!("/api/v1/rooms/{secret}"),
        format!("/api/v1/rooms/{secret}/messages"),
        format!("/api/v1/rooms/{secret}/members"),
    ] {
        let (st, body) = bob.api.get(&path).await;
        assert_eq!(
            (st, code(&body)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{path}"
        );
    }
    let (st, _) = bob
        .api
        .post(&format!("/api/v1/rooms/{secret}/join"), json!({}))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = bob
        .api
        .post(
            &format!("/api/v1/rooms/{secret}/messages"),
            json!({"body": "x"}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // A public room is readable by anyone, writable by members only.
    let (st, _) = bob
        .api
        .get(&format!("/api/v1/rooms/{general}/messages"))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, body) = bob
        .api
        .post(
            &format!("/api/v1/rooms/{general}/messages"),
            json!({"body": "x"}),
        )
        .await;
    assert_eq!((st, code(&body)), (StatusCode::FORBIDDEN, "forbidden"));

    // Joined: Bob's rooms come first, with his role.
    bob.join(&general).await;
    let (_, list) = bob.api.get("/api/v1/rooms").await;
    assert_eq!(list["rooms"][0]["role"], "member");
    assert_eq!(list["rooms"][0]["member_count"], 2);
}

#[tokio::test]
async fn owners_and_moderators_manage_rooms() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;

    let (st, _) = bob
        .api
        .patch(
            &format!("/api/v1/rooms/{room}"),
            json!({"topic": "mine now"}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, r) = alice
        .api
        .patch(
            &format!("/api/v1/rooms/{room}"),
            json!({"topic": "news", "kind": "private"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (r["topic"].as_str(), r["kind"].as_str()),
        (Some("news"), Some("private"))
    );
    let (st, _) = alice
        .api
        .patch(&format!("/api/v1/rooms/{room}"), json!({"kind": "direct"}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    let (st, _) = bob
        .api
        .delete(&format!("/api/v1/rooms/{room}/members/{}", alice.id))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "members cannot kick");
    let (st, _) = alice
        .api
        .delete(&format!("/api/v1/rooms/{room}/members/{}", bob.id))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    // The room is private now: Bob, no longer a member, cannot see it.
    let (st, _) = bob.api.get(&format!("/api/v1/rooms/{room}")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Invited back, he can.
    let (st, _) = alice
        .api
        .post(
            &format!("/api/v1/rooms/{room}/members"),
            json!({"user_id": bob.id}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, members) = bob.api.get(&format!("/api/v1/rooms/{room}/members")).await;
    assert_eq!(st, StatusCode::OK);
    let m = members["members"].as_array().unwrap();
    assert_eq!(m.len(), 2);
    assert!(m.iter().all(|m| m["user"]["username"].is_string()
        && m["role"].is_string()
        && m["online"] == false));
    let (st, _) = bob
        .api
        .post(
            &format!("/api/v1/rooms/{room}/members"),
            json!({"user_id": alice.id}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "members cannot invite");

    // Archive: owner only; the room becomes read-only, history stays.
    alice.post_message(&room, "before").await;
    let (st, _) = bob.api.delete(&format!("/api/v1/rooms/{room}")).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = alice.api.delete(&format!("/api/v1/rooms/{room}")).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, r) = alice.api.get(&format!("/api/v1/rooms/{room}")).await;
    assert_eq!(r["archived"], true);
    let (st, _) = alice
        .api
        .post(
            &format!("/api/v1/rooms/{room}/messages"),
            json!({"body": "after"}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (_, h) = alice
        .api
        .get(&format!("/api/v1/rooms/{room}/messages"))
        .await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);

    // Leaving.
    let (st, _) = bob
        .api
        .post(&format!("/api/v1/rooms/{room}/leave"), json!({}))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = bob.api.get(&format!("/api/v1/rooms/{room}")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn direct_rooms_are_the_same_every_time() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    let (st, dm) = alice
        .api
        .post("/api/v1/dms", json!({"user_id": bob.id}))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(dm["kind"], "direct");
    let (st, again) = bob
        .api
        .post("/api/v1/dms", json!({"user_id": alice.id}))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(dm["id"], again["id"]);
    let id = dm["id"].as_str().unwrap();
    let (st, _) = carol.api.get(&format!("/api/v1/rooms/{id}")).await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "a DM is private to its two users"
    );
    let (st, _) = alice
        .api
        .post("/api/v1/dms", json!({"user_id": alice.id}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = alice
        .api
        .post("/api/v1/dms", json!({"user_id": uuid::Uuid::now_v7()}))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    bob.post_message(id, "psst").await;
    let (_, list) = alice.api.get("/api/v1/rooms").await;
    let r = list["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(r["unread"], 1);
}

#[tokio::test]
async fn history_pages_back_and_forward() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    for i in 1..=7 {
        alice.post_message(&room, &format!("m{i}")).await;
    }
    let seqs = |v: &serde_json::Value| -> Vec<i64> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect()
    };
    let (_, page) = alice
        .api
        .get(&format!("/api/v1/rooms/{room}/messages?limit=3"))
        .await;
    assert_eq!(
        (seqs(&page), page["has_more"].as_bool()),
        (vec![5, 6, 7], Some(true))
    );
    let (_, page) = alice
        .api
        .get(&format!("/api/v1/rooms/{room}/messages?before=5&limit=3"))
        .await;
    assert_eq!(
        (seqs(&page), page["has_more"].as_bool()),
        (vec![2, 3, 4], Some(true))
    );
    let (_, page) = alice
        .api
        .get(&format!("/api/v1/rooms/{room}/messages?before=2&limit=3"))
        .await;
    assert_eq!(
        (seqs(&page), page["has_more"].as_bool()),
        (vec![1], Some(false))
    );
    let (_, page) = alice
        .api
        .get(&format!("/api/v1/rooms/{room}/messages?after=3&limit=2"))
        .await;
    assert_eq!(
        (seqs(&page), page["has_more"].as_bool()),
        (vec![4, 5], Some(true))
    );
    let (_, page) = alice
        .api
        .get(&format!("/api/v1/rooms/{room}/messages?after=5"))
        .await;
    assert_eq!(
        (seqs(&page), page["has_more"].as_bool()),
        (vec![6, 7], Some(false))
    );
    let (_, page) = alice
        .api
        .get(&format!("/api/v1/rooms/{room}/messages?limit=1000"))
        .await;
    assert_eq!(seqs(&page).len(), 7, "large limits are capped, not refused");
    let m = &page["messages"][0];
    for field in [
        "id",
        "room",
        "seq",
        "user",
        "username",
        "body",
        "created_at",
        "edited_at",
        "deleted",
        "client_id",
        "reply_to",
        "attachments",
    ] {
        assert!(m.get(field).is_some(), "Message lacks {field}: {m}");
    }
    for bad in ["limit=0", "limit=abc", "before=1&after=1", "before=x"] {
        let (st, _) = alice
            .api
            .get(&format!("/api/v1/rooms/{room}/messages?{bad}"))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn sending_over_rest_is_idempotent_and_bounded() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    let path = format!("/api/v1/rooms/{room}/messages");
    let (st, first) = alice
        .api
        .post(&path, json!({"body": "hello", "client_id": "c-1"}))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(
        (first["seq"].as_i64(), first["client_id"].as_str()),
        (Some(1), Some("c-1"))
    );
    let (st, again) = alice
        .api
        .post(&path, json!({"body": "hello (retry)", "client_id": "c-1"}))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (again["id"].clone(), again["body"].clone()),
        (first["id"].clone(), json!("hello"))
    );
    let (st, body) = alice
        .api
        .post(&path, json!({"body": "x".repeat(16_385)}))
        .await;
    assert_eq!(
        (st, code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );
    let (st, _) = alice
        .api
        .post(&path, json!({"body": "x".repeat(16_384)}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "exactly the limit is fine");
    let (st, _) = alice.api.post(&path, json!({"body": "   "})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, m) = alice
        .api
        .post(&path, json!({"body": "re", "reply_to": 1}))
        .await;
    assert_eq!((st, m["reply_to"].as_i64()), (StatusCode::CREATED, Some(1)));
    let (_, h) = alice.api.get(&path).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn read_markers_drive_unread_counts() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    for i in 0..4 {
        alice.post_message(&room, &format!("m{i}")).await;
    }
    let unread = |u: &common::User| {
        let u = u.clone();
        let room = room.clone();
        async move {
            let (_, list) = u.api.get("/api/v1/rooms").await;
            let r = list["rooms"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["id"] == room.as_str())
                .unwrap()
                .clone();
            (
                r["unread"].as_i64().unwrap(),
                r["last_read_seq"].as_i64().unwrap(),
            )
        }
    };
    assert_eq!(unread(&bob).await, (4, 0));
    assert_eq!(
        unread(&alice).await,
        (0, 4),
        "sending moves the sender's marker"
    );
    let (st, _) = bob
        .api
        .post(&format!("/api/v1/rooms/{room}/read"), json!({"seq": 3}))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(unread(&bob).await, (1, 3));
    bob.api
        .post(&format!("/api/v1/rooms/{room}/read"), json!({"seq": 1}))
        .await;
    assert_eq!(unread(&bob).await, (1, 3), "never back");
    let (st, _) = bob
        .api
        .post(
            &format!("/api/v1/rooms/{room}/read"),
            json!({"seq": "three"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let carol = s.user("carol").await;
    let (st, _) = carol
        .api
        .post(&format!("/api/v1/rooms/{room}/read"), json!({"seq": 1}))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let s = Server::embedded().await;
    let r = reqwest::get(s.url("/healthz")).await.unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    let r = reqwest::Client::new()
        .get(s.url("/api/v1/rooms"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["x-request-id"],
        "trace-me-42",
        "the client's id is kept"
    );
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let s = Server::embedded().await;
    let (st, body) = s.api().get("/healthz").await;
    assert_eq!((st, body), (StatusCode::OK, json!({"status": "ok"})));
    let (st, body) = s.api().get("/readyz").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body["checks"]["store"], "ok");
    let (st, doc) = s.api().get("/api/v1/openapi.json").await;
    assert_eq!(st, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/auth/register",
        "/api/v1/rooms/{id}/messages",
        "/api/v1/dms",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    // Metrics are on the metrics port only.
    let (st, _) = s.api().get("/metrics").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let alice = s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    alice.post_message(&room, "hi").await;
    let text = s.metrics().await;
    for name in [
        "confab_ws_connections",
        "confab_messages_committed_total 1",
        "confab_http_requests_total{method=\"POST\",route=\"/api/v1/rooms/{id}/messages\",status=\"201\"} 1",
        "confab_build_info",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
}

#[tokio::test]
async fn the_user_directory_finds_people_by_name_and_shows_nothing_private() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let _bobby = s.user("bobby").await;
    let (st, body) = alice.api.get("/api/v1/users?q=bob").await;
    assert_eq!(st, StatusCode::OK);
    let users = body["users"].as_array().unwrap();
    let names: Vec<&str> = users
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bob", "bobby"]);
    assert_eq!(users[0]["id"], bob.id.as_str());
    assert!(
        users.iter().all(|u| u.get("banned").is_none()
            && u.get("muted").is_none()
            && u.get("password_hash").is_none()),
        "only the public User fields: {body}"
    );
    // Upper case finds the same (usernames are lower case).
    let (_, upper) = alice.api.get("/api/v1/users?q=BOB&limit=1").await;
    assert_eq!(upper["users"].as_array().unwrap().len(), 1);
    // Bad input is named; no token is 401.
    let (st, e) = alice.api.get("/api/v1/users?limit=0").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(e["error"]["message"].as_str().unwrap().contains("limit"));
    let (st, e) = alice.api.get("/api/v1/users?limit=x").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{e}");
    let (st, _) = s.api().get("/api/v1/users?q=bob").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn member_listings_carry_each_members_read_and_delivered_markers() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    for body in ["one", "two", "three"] {
        alice.post_message(&room, body).await;
    }
    let (st, _) = bob
        .api
        .post(&format!("/api/v1/rooms/{room}/read"), json!({"seq": 2}))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let mut ws = bob.connect().await;
    ws.send(json!({"type": "delivered", "room": room, "seq": 3}))
        .await;
    ws.send(json!({"type": "ping"})).await;
    ws.expect("pong").await;
    let (_, body) = alice
        .api
        .get(&format!("/api/v1/rooms/{room}/members"))
        .await;
    let members = body["members"].as_array().unwrap();
    let of = |name: &str| {
        members
            .iter()
            .find(|m| m["user"]["username"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(of("bob")["last_read_seq"], 2);
    assert_eq!(of("bob")["last_delivered_seq"], 3);
    // Sending moves the sender's read marker to its message.
    assert_eq!(of("alice")["last_read_seq"], 3);
}

/// Any search text gives 200 or a 400 naming the problem, on both databases; a NUL (which
/// SQLite's full-text index rejects and PostgreSQL cannot store in text) is a 400.
#[tokio::test]
async fn search_text_with_control_characters_is_a_400_on_both_databases() {
    let pg = common::Postgres::start();
    let (mut pg_config, _unused) = common::embedded();
    pg_config.database_url = Some(pg.url.clone());
    pg_config.jwt_secret = Some("search-test-secret-search-test-secret".into());
    for s in [Server::embedded().await, Server::start(pg_config).await] {
        let alice = s.user("alice").await;
        let room = alice.create_room("general", "public").await;
        alice.post_message(&room, "a launch b").await;
        for path in [
            format!("/api/v1/rooms/{room}/search?q=a%00b"),
            "/api/v1/search?q=a%00b".to_string(),
            "/api/v1/search?q=%01".to_string(),
        ] {
            let (st, body) = alice.api.get(&path).await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{path}: {body}");
            assert!(
                body["error"]["message"].as_str().unwrap().starts_with("q "),
                "{body}"
            );
        }
        for q in [
            "%22",
            "launch%22",
            "*",
            "NEAR(a",
            "a%20AND%20",
            "%E2%80%AE",
            "'",
        ] {
            let (st, body) = alice.api.get(&format!("/api/v1/search?q={q}")).await;
            assert_eq!(st, StatusCode::OK, "{q}: {body}");
        }
        let (st, body) = alice.api.get("/api/v1/search?q=launch").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(body["messages"].as_array().unwrap().len(), 1);
    }
}

/// Display names and topics that hide or reorder text are refused with a 400 naming the field.
#[tokio::test]
async fn names_and_topics_must_be_visible_text() {
    let s = Server::embedded().await;
    let api = s.api();
    for (i, name) in [
        "a\u{0}b",
        "evil\u{202E}gpj.exe",
        "x\u{2066}y",
        "\u{200B}\u{200D}",
        " \u{FEFF} ",
    ]
    .into_iter()
    .enumerate()
    {
        let (st, body) = api
            .post(
                "/api/v1/auth/register",
                json!({"username": format!("user{i}"), "password": "long enough", "display_name": name}),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{name:?}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("display_name"),
            "{body}"
        );
    }
    let (st, _) = api
        .post(
            "/api/v1/auth/register",
            json!({"username": "zoe", "password": "long enough", "display_name": "Zoë 🎉"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let alice = s.user("alice").await;
    let (st, body) = alice
        .api
        .post(
            "/api/v1/rooms",
            json!({"name": "hidden", "kind": "public", "topic": "ok\u{202D}"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("topic")
    );
    let room = alice.create_room("general", "public").await;
    let (st, body) = alice
        .api
        .patch(
            &format!("/api/v1/rooms/{room}"),
            json!({"topic": "tab\there"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("topic")
    );
    let (st, _) = alice
        .api
        .patch(&format!("/api/v1/rooms/{room}"), json!({"topic": ""}))
        .await;
    assert_eq!(st, StatusCode::OK);
}

/// A client that never finishes its request headers, drips them, or keeps an idle keep-alive
/// connection does not hold the connection beyond the header timeout.
#[tokio::test]
async fn slow_and_idle_http_connections_are_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut config, dir) = common::embedded();
    config.http_header_timeout_ms = 400;
    let s = Server::start_with(config, Some(dir)).await;
    // Closed by the server: a read returns end of file (or a reset) well within `within`.
    async fn closed_within(tcp: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue, // a response to a complete request
                Err(_) => return false,
            }
        }
    }
    let long = std::time::Duration::from_secs(3);

    let mut incomplete = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    incomplete.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    assert!(
        closed_within(&mut incomplete, long).await,
        "incomplete request"
    );

    let mut drip = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    drip.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let dripping = async {
        for i in 0..20 {
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            if drip
                .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return true;
            }
        }
        false
    };
    let cut_off = dripping.await || closed_within(&mut drip, long).await;
    assert!(cut_off, "one header at a time");

    let mut idle = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 1024];
    let n = idle.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut idle, long).await, "idle keep-alive");

    // A prompt client is served as before.
    let (st, _) = s.api().get("/healthz").await;
    assert_eq!(st, StatusCode::OK);
    // Each connection cut off is counted, for whoever wonders where clients went.
    let text = s.metrics().await;
    assert_eq!(
        common::metric(&text, "confab_http_header_timeouts_total"),
        Some(3.0)
    );
}

/// Answers chosen so that the OpenAPI document can describe them: an integer may be written
/// `5.0`; limits on text count characters, not bytes; an empty `?filename=` is refused; a direct
/// room cannot be changed or invited into (409), and an admin cannot ban itself (403).
#[tokio::test]
async fn answers_the_api_description_can_state() {
    let (mut config, dir) = common::embedded();
    config.admins = vec!["root".into()];
    let s = Server::start_with(config, Some(dir)).await;
    let root = s.user("root").await;
    let alice = s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    alice.post_message(&room, "one").await;
    let (st, body) = alice
        .api
        .post(&format!("/api/v1/rooms/{room}/read"), json!({"seq": 1.0}))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
    let (st, body) = alice
        .api
        .patch(
            &format!("/api/v1/rooms/{room}"),
            json!({"topic": "é".repeat(1024)}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "1024 characters, 2048 bytes: {body}");
    let (st, _) = alice
        .api
        .patch(
            &format!("/api/v1/rooms/{room}"),
            json!({"topic": "é".repeat(1025)}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let r = alice
        .api
        .client
        .post(format!(
            "{}/api/v1/rooms/{room}/attachments?filename=",
            alice.api.base
        ))
        .bearer_auth(&alice.token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let (st, dm) = alice
        .api
        .post("/api/v1/dms", json!({"user_id": root.id}))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let dm = dm["id"].as_str().unwrap();
    // An admin may change any room, but not a direct one.
    let (st, _) = root
        .api
        .patch(&format!("/api/v1/rooms/{dm}"), json!({"topic": "x"}))
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let carol = s.user("carol").await;
    let (st, _) = root
        .api
        .post(
            &format!("/api/v1/rooms/{dm}/members"),
            json!({"user_id": carol.id}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _) = root
        .api
        .post(&format!("/api/v1/admin/users/{}/ban", root.id), json!({}))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}
