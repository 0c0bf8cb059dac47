use confab_client::{Client, Event, Options, protocol::ServerFrame};
use serde_json::{Value, json};

/// Signs up, opens a room, and sends a message that the same client receives.
pub async fn run(url: &str) -> Result<i64, confab_client::Error> {
    let username = format!("demo{}", std::process::id());
    let password = "correct horse battery";
    let http = reqwest::Client::new();
    http.post(format!("{url}/api/v1/auth/register"))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await?;
    let login = json!({ "username": username, "password": password });
    let (url_, http_) = (url.to_string(), http.clone());
    // The token function signs in again whenever a token is needed or about to expire.
    let options = Options::new(url).get_token(move || {
        let (url, http, login) = (url_.clone(), http_.clone(), login.clone());
        async move {
            let answer: Value = http
                .post(format!("{url}/api/v1/auth/login"))
                .json(&login)
                .send()
                .await?
                .json()
                .await?;
            Ok(answer["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_string())
        }
    });
    let (chat, mut events) = Client::connect(options).await?;

    let room: Value = chat
        .api(
            reqwest::Method::POST,
            "/api/v1/rooms",
            Some(json!({ "name": username, "kind": "public" })),
        )
        .await?;
    let room = room["id"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .expect("a room id");
    chat.subscribe(room).await?;
    let ack = chat.send(room, "hi").await?; // resolves after the server's ack
    println!("acked {}", ack.seq);

    while let Some(event) = events.recv().await {
        if let Event::Frame(ServerFrame::Message(m)) = event {
            println!("{} {}", m.seq, m.body);
            break;
        }
    }
    chat.close();
    Ok(ack.seq)
}

#[tokio::main]
async fn main() {
    let url = std::env::var("CONFAB_URL").unwrap_or_else(|_| "http://localhost:8080".into());
    if let Err(e) = run(&url).await {
        eprintln!("quickstart: {e}");
        std::process::exit(1);
    }
}
