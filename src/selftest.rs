//! `confab selftest`: proves a deployment works the way a client would: registers a throwaway
//! user, creates a private room, subscribes one socket (optionally on another pod), sends on a
//! second socket, and waits for the ack and the delivery. The room is archived afterwards.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn post(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<Value> {
    let mut req = http.post(&url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("POST {url}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn socket(base: &str, token: &str) -> anyhow::Result<Socket> {
    let ws_url = format!(
        "{}/ws?token={token}",
        base.trim_end_matches('/').replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .with_context(|| format!("WebSocket to {base}"))?;
    expect(&mut ws, "hello").await?;
    Ok(ws)
}

async fn expect(ws: &mut Socket, kind: &str) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .with_context(|| format!("no {kind} frame within {WAIT:?}"))?;
        match frame {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t)?;
                match v["type"].as_str() {
                    Some(k) if k == kind => return Ok(v),
                    Some("error") => bail!("server error while waiting for {kind}: {v}"),
                    _ => {}
                }
            }
            Some(Ok(Message::Close(c))) => bail!("socket closed while waiting for {kind}: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("socket failed while waiting for {kind}: {e}"),
            None => bail!("socket ended while waiting for {kind}"),
        }
    }
}

/// Runs the round trip; returns a one-line report.
pub async fn run(url: &str, peer_url: Option<&str>) -> anyhow::Result<String> {
    let base = url.trim_end_matches('/');
    let http = reqwest::Client::builder().timeout(WAIT).build()?;
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let tag = &tag[tag.len() - 10..];
    let username = format!("selftest-{tag}");
    let password = crate::auth::random_token();
    post(
        &http,
        format!("{base}/api/v1/auth/register"),
        None,
        json!({"username": username, "password": password}),
    )
    .await
    .context("register (is registration closed by policy?)")?;
    let tokens = post(
        &http,
        format!("{base}/api/v1/auth/login"),
        None,
        json!({"username": username, "password": password}),
    )
    .await?;
    let token = tokens["access_token"]
        .as_str()
        .context("login returned no access_token")?
        .to_string();
    let room = post(
        &http,
        format!("{base}/api/v1/rooms"),
        Some(&token),
        json!({"name": format!("selftest-{tag}"), "kind": "private"}),
    )
    .await?;
    let room_id = room["id"].as_str().context("room without id")?.to_string();

    let mut receiver = socket(peer_url.unwrap_or(base), &token).await?;
    receiver
        .send(Message::Text(
            json!({"type": "subscribe", "room": room_id})
                .to_string()
                .into(),
        ))
        .await?;
    expect(&mut receiver, "subscribed").await?;
    let mut sender = socket(base, &token).await?;
    let started = Instant::now();
    sender
        .send(Message::Text(
            json!({"type": "message", "room": room_id, "body": "selftest", "client_id": tag})
                .to_string()
                .into(),
        ))
        .await?;
    let ack = expect(&mut sender, "ack").await?;
    let got = expect(&mut receiver, "message").await?;
    let elapsed = started.elapsed();
    if got["id"] != ack["id"] || got["seq"] != ack["seq"] {
        bail!("delivered {got} does not match acked {ack}");
    }
    let _ = http
        .delete(format!("{base}/api/v1/rooms/{room_id}"))
        .bearer_auth(&token)
        .send()
        .await;
    Ok(format!(
        "selftest ok: message seq {} acked and delivered in {} ms{}",
        ack["seq"],
        elapsed.as_millis(),
        if peer_url.is_some() {
            " across pods"
        } else {
            ""
        }
    ))
}
