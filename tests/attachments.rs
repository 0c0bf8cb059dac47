//! Attachments: upload, size limit, members-only download, messages that carry them; on local
//! files and on a real S3-protocol server (moto).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::services::free_port;
use common::{Server, User, embedded};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn upload(
    u: &User,
    room: &str,
    name: &str,
    ctype: &str,
    bytes: Vec<u8>,
) -> (StatusCode, Value) {
    let r = u
        .api
        .client
        .post(format!(
            "{}/api/v1/rooms/{room}/attachments?filename={name}",
            u.api.base
        ))
        .bearer_auth(&u.token)
        .header("content-type", ctype)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let st = r.status();
    (st, r.json().await.unwrap_or(Value::Null))
}

async fn download(u: &User, url: &str) -> reqwest::Response {
    u.api
        .client
        .get(format!("{}{url}", u.api.base))
        .bearer_auth(&u.token)
        .send()
        .await
        .unwrap()
}

/// Upload, attach, read back, and the access rules: the same on every storage backend.
async fn round_trip(s: &Server) {
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let mallory = s.user("mallory").await;
    let room = alice.create_room("general", "public").await;
    bob.join(&room).await;
    let png: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let (st, a) = upload(&alice, &room, "cat%20photo.png", "image/png", png.clone()).await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    let url = a["url"].as_str().unwrap().to_string();
    assert_eq!(
        url,
        format!("/api/v1/attachments/{}", a["id"].as_str().unwrap())
    );
    assert_eq!(
        (
            a["filename"].as_str(),
            a["content_type"].as_str(),
            a["size"].as_u64(),
            a["room"].as_str()
        ),
        (
            Some("cat photo.png"),
            Some("image/png"),
            Some(70_000),
            Some(room.as_str())
        )
    );

    // A message carries it; everyone sees the Attachment object.
    let mut b = bob.subscribed(&room).await;
    let (st, m) = alice
        .api
        .post(
            &format!("/api/v1/rooms/{room}/messages"),
            json!({"body": "look", "attachments": [a["id"]]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    let live = b.expect("message").await;
    assert_eq!(live["attachments"][0]["id"], a["id"]);
    let (_, h) = bob.api.get(&format!("/api/v1/rooms/{room}/messages")).await;
    assert_eq!(h["messages"][0]["attachments"][0]["url"], url.as_str());

    // Members download the same bytes with safe headers.
    let r = download(&bob, &url).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let cd = r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cd.starts_with("attachment;") && cd.contains("cat photo.png"),
        "{cd}"
    );
    assert_eq!(r.bytes().await.unwrap().to_vec(), png);

    // Non-members get 404 (even for a public room), and cannot attach someone else's file.
    assert_eq!(
        download(&mallory, &url).await.status(),
        StatusCode::NOT_FOUND
    );
    let (st, _) = upload(&mallory, &room, "x.txt", "text/plain", b"x".to_vec()).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    mallory.join(&room).await;
    let (st, body) = mallory
        .api
        .post(
            &format!("/api/v1/rooms/{room}/messages"),
            json!({"body": "mine", "attachments": [a["id"]]}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn attachments_round_trip_on_local_files() {
    let s = Server::embedded().await;
    round_trip(&s).await;
}

#[tokio::test]
async fn uploads_over_the_limit_are_413_and_leave_nothing() {
    let (mut config, dir) = embedded();
    config.max_attachment_bytes = 100_000;
    let blobs = dir.path().join("blobs");
    let s = Server::start_with(config, Some(dir)).await;
    let alice = s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    let (st, body) = upload(
        &alice,
        &room,
        "big.bin",
        "application/octet-stream",
        vec![7u8; 100_001],
    )
    .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large"))
    );
    // A chunked upload without Content-Length is stopped mid-stream too.
    let chunks = futures::stream::iter((0..40).map(|_| Ok::<_, std::io::Error>(vec![1u8; 8192])));
    let r = alice
        .api
        .client
        .post(format!(
            "{}/api/v1/rooms/{room}/attachments?filename=stream.bin",
            alice.api.base
        ))
        .bearer_auth(&alice.token)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (st, _) = upload(
        &alice,
        &room,
        "ok.bin",
        "application/octet-stream",
        vec![7u8; 100_000],
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "exactly the limit is fine");
    let files: Vec<_> = walk(&blobs);
    assert_eq!(
        files.len(),
        1,
        "only the accepted file is stored: {files:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn multipart_uploads_and_bad_requests() {
    let s = Server::embedded().await;
    let alice = s.user("alice").await;
    let room = alice.create_room("general", "public").await;
    let boundary = "XyZ";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"../../notes.txt\"\r\nContent-Type: text/plain\r\n\r\nhello notes\r\n--{boundary}--\r\n"
    );
    let r = alice
        .api
        .client
        .post(format!(
            "{}/api/v1/rooms/{room}/attachments",
            alice.api.base
        ))
        .bearer_auth(&alice.token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let a: Value = r.json().await.unwrap();
    assert_eq!(
        (
            a["filename"].as_str(),
            a["content_type"].as_str(),
            a["size"].as_u64()
        ),
        (Some("notes.txt"), Some("text/plain"), Some(11))
    );
    // Raw upload without a file name, and an empty file, are bad requests.
    let r = alice
        .api
        .client
        .post(format!(
            "{}/api/v1/rooms/{room}/attachments",
            alice.api.base
        ))
        .bearer_auth(&alice.token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let (st, _) = upload(&alice, &room, "empty", "text/plain", vec![]).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = alice
        .api
        .get(&format!("/api/v1/attachments/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

/// A moto S3 server on a free port, stopped when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Moto {
        let port = free_port();
        let bin = std::env::var("CONFAB_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let mut child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{bin} must be installed (scripts/test installs moto[server]): {e}")
            });
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "moto did not start"
            );
            assert!(child.try_wait().unwrap().is_none(), "moto exited");
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn attachments_round_trip_on_s3() {
    let moto = Moto::start();
    // Create the bucket (moto does not check signatures).
    let r = reqwest::Client::new()
        .put(format!("{}/confab-test", moto.endpoint))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    let dir = tempfile::tempdir().unwrap();
    let (mut child, s) = common::spawn_binary(
        &[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--attachments-url",
            "s3://confab-test/uploads",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT", moto.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    round_trip(&s).await;
    // The bytes are in the bucket, under the prefix.
    let listing = http
        .get(format!("{}/confab-test?list-type=2", moto.endpoint))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains("<Key>uploads/attachments/"), "{listing}");
    child.kill().await.unwrap();
}
