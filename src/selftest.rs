//! `confab selftest`: proves a deployment works the way a client would: registers a throwaway
//! user, creates a private room, subscribes one socket (optionally on another pod), sends on a
//! second socket, and waits for the ack and the delivery, through the Rust client library
//! (`confab-client`) as an app would. The room is archived afterwards.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use confab_client::protocol::{RoomId, ServerFrame};
use confab_client::{Client, Event, Events, Options, Outgoing};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

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

/// A connection through the client library, as an app would open one.
async fn client(base: &str, token: &str) -> anyhow::Result<(Client, Events)> {
    tokio::time::timeout(WAIT, Client::connect(Options::new(base).token(token)))
        .await
        .with_context(|| format!("no hello from {base} within {WAIT:?}"))?
        .with_context(|| format!("WebSocket to {base}"))
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

    let room: RoomId = room_id.parse().context("room id is not a UUID")?;

    let (receiver, mut events) = client(peer_url.unwrap_or(base), &token).await?;
    tokio::time::timeout(WAIT, receiver.subscribe(room))
        .await
        .context("no subscribed reply")??;
    let (sender, _sender_events) = client(base, &token).await?;
    let started = Instant::now();
    let message = Outgoing {
        client_id: Some(tag.to_string()),
        ..Outgoing::new("selftest")
    };
    let ack = tokio::time::timeout(WAIT, sender.send_with(room, message))
        .await
        .context("no ack")??;
    let got = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Some(Event::Frame(ServerFrame::Message(m))) => return Some(m.into_owned()),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    .with_context(|| format!("the message was not delivered within {WAIT:?}"))?
    .context("the receiving socket ended")?;
    let elapsed = started.elapsed();
    if got.id != ack.id || got.seq != ack.seq {
        bail!(
            "delivered seq {} ({}) does not match acked seq {} ({})",
            got.seq,
            got.id,
            ack.seq,
            ack.id
        );
    }
    sender.close();
    receiver.close();
    let _ = http
        .delete(format!("{base}/api/v1/rooms/{room_id}"))
        .bearer_auth(&token)
        .send()
        .await;
    Ok(format!(
        "selftest ok: message seq {} acked and delivered in {} ms{}",
        ack.seq,
        elapsed.as_millis(),
        if peer_url.is_some() {
            " across pods"
        } else {
            ""
        }
    ))
}
