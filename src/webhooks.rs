//! Webhooks: the delivery side of the outbox the store writes in each change's transaction.
//!
//! Every pod runs a [`Worker`]: it claims due events (one pod per attempt: PostgreSQL's
//! `FOR UPDATE SKIP LOCKED` and a lease), POSTs each with the Standard Webhooks headers and an
//! HMAC-SHA256 signature, and records the attempt. A non-2xx answer, a timeout or a refused
//! address is retried with growing, jittered back-off for [`RETRY_WINDOW_MS`]; then the event
//! is marked failed. Each attempt resolves the receiver's name again and refuses loopback,
//! private, link-local and metadata addresses unless `--webhook-allow-private`; redirects are
//! not followed, answers are read up to [`MAX_ANSWER_BYTES`] and dropped, and at most
//! [`PER_WEBHOOK`] requests run at once per webhook.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::sync::Semaphore;

use crate::ids::WebhookId;
use crate::state::AppState;
use crate::store::{AttemptOutcome, DueEvent, FinishedAttempt, WebhookRecord};

/// The event types a webhook may subscribe to.
pub const EVENTS: &[&str] = &[
    "message.created",
    "message.updated",
    "member.joined",
    "member.left",
    "room.created",
    "room.updated",
    "notification",
];

/// How long a failing event is retried before it is marked failed.
pub const RETRY_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// One attempt's time limit (connect, send, answer).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an answer is read before the connection is dropped.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Requests in flight at once to one webhook.
pub const PER_WEBHOOK: usize = 8;
// How long a claim holds an event is `--webhook-lease-secs`: past it, another pod may take it
// (the claimer died). An event held here behind a slow receiver's other events is attempted
// only while its claim still outlasts a whole attempt; otherwise it is left for the next claim
// (by any pod), so two pods never attempt one event at once.

/// A new secret: `whsec_` and 32 random bytes in base64.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// The HMAC key of a `whsec_` secret, or why the secret is unusable.
pub fn signing_key(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret
        .strip_prefix("whsec_")
        .ok_or("secret must start with whsec_")?;
    let key = STANDARD
        .decode(b64)
        .map_err(|_| "secret must be whsec_ followed by base64".to_string())?;
    if !(24..=64).contains(&key.len()) {
        return Err("secret must hold 24 to 64 bytes after whsec_".into());
    }
    Ok(key)
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn signature(key: &[u8], id: &str, timestamp: u64, body: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let tag = aws_lc_rs::hmac::sign(&key, format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(tag.as_ref()))
}

/// Addresses a webhook may not reach without `--webhook-allow-private`: loopback, private
/// (RFC 1918, unique-local), link-local (and so cloud metadata at 169.254.169.254), shared
/// (100.64/10), unspecified, broadcast, multicast and documentation ranges.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
        }
    }
}

/// Checks a webhook URL: http or https, a host, and (unless private addresses are allowed)
/// every address it resolves to is public. The error names the problem.
pub async fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("url is not a valid URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("url must be http:// or https://".into());
    }
    let Some(host) = parsed.host_str() else {
        return Err("url must name a host".into());
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("url must not carry credentials; use the signing secret".into());
    }
    if allow_private {
        return Ok(parsed);
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| format!("url's host {host} cannot be resolved"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("url's host {host} cannot be resolved"));
    }
    if let Some(bad) = addrs.iter().find(|a| forbidden(a.ip())) {
        return Err(format!(
            "url's host {host} is a loopback, private or link-local address ({}); \
             set --webhook-allow-private to allow it",
            bad.ip()
        ));
    }
    Ok(parsed)
}

/// A resolver for the delivery client that drops forbidden addresses, so that every new
/// connection is checked where it goes (no rebinding a public name to a private address).
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| !forbidden(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "{} resolves to no public address (loopback, private and link-local \
                     addresses are refused)",
                    name.as_str()
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What one attempt came to.
struct Attempt {
    status: Option<i64>,
    error: Option<String>,
}

impl Attempt {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// The delay before attempt `n + 1` after `n` failures: 5 s doubling to an hour, jittered.
fn retry_delay(failures: i64) -> Duration {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(5))
        .with_max_delay(Duration::from_secs(3600))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build();
    let n = usize::try_from(failures.max(1) - 1).unwrap_or(0).min(64);
    delays.nth(n).unwrap_or(Duration::from_secs(3600))
}

/// The next state of an event whose attempt failed at `now`.
pub fn after_failure(created_at: i64, failures: i64, now: i64) -> AttemptOutcome {
    if now - created_at >= RETRY_WINDOW_MS {
        AttemptOutcome::Failed
    } else {
        let delay = i64::try_from(retry_delay(failures).as_millis()).unwrap_or(i64::MAX / 2);
        AttemptOutcome::RetryAt(now + delay)
    }
}

/// Delivers due events, on every pod.
pub struct Worker {
    state: AppState,
    http: reqwest::Client,
    allow_private: bool,
    /// Per webhook: a bound on requests in flight, and how many of its events this pod holds.
    slots: std::sync::Mutex<HashMap<WebhookId, (Arc<Semaphore>, usize)>>,
}

/// Events one pod attempts at once, over all webhooks.
const IN_FLIGHT: usize = 512;
/// A webhook with this many events held here gets no more until some finish, so one slow
/// receiver never fills the pod's attempts (nor outlives the claims' lease).
const HELD_PER_WEBHOOK: usize = 32 * PER_WEBHOOK;
/// The worker writes to the store at most this often while events are flowing: each write
/// records what finished since the last one and claims the next events, in one transaction.
/// (One transaction per claim and another per batch of answers, as before, cost SQLite's
/// single writer a commit each and cut ingest to a third: docs/BENCHMARKS.md, "Webhooks".)
const ROUND: Duration = Duration::from_millis(50);
/// While the message writer is behind (more than a batch queued), the worker writes at most
/// this often and claims at most [`PRESSED_CLAIM`] events: committing messages comes first,
/// deliveries catch up when it is over.
const PRESSED_ROUND: Duration = Duration::from_millis(500);
const PRESSED_CLAIM: usize = 4 * PER_WEBHOOK;
/// With nothing in flight, how often the worker asks for due events.
const IDLE_POLL: Duration = Duration::from_millis(200);

impl Worker {
    pub fn new(state: AppState) -> anyhow::Result<Arc<Worker>> {
        let allow_private = state.config.webhook_allow_private;
        let mut builder = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("confab-webhooks/", env!("CARGO_PKG_VERSION")));
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(PublicOnly));
        }
        Ok(Arc::new(Worker {
            http: builder.build()?,
            allow_private,
            state,
            slots: std::sync::Mutex::default(),
        }))
    }

    /// Runs until the process ends: in rounds, records the attempts that finished and claims
    /// due events while it has room (one transaction), and attempts each in its own task.
    pub async fn run(self: Arc<Self>) {
        let mut in_flight: tokio::task::JoinSet<Option<FinishedAttempt>> =
            tokio::task::JoinSet::new();
        let mut finished: Vec<FinishedAttempt> = Vec::new();
        let mut last_prune = 0;
        let mut last_round = tokio::time::Instant::now() - PRESSED_ROUND;
        loop {
            while let Some(done) = in_flight.try_join_next() {
                finished.extend(done.ok().flatten());
            }
            let now = crate::now_ms();
            if now - last_prune > 600_000
                && self.state.leader.load(std::sync::atomic::Ordering::Relaxed)
            {
                last_prune = now;
                // Delivered and failed events, and attempts, are kept this long for
                // `…/deliveries` (--webhook-retention-hours).
                let keep_ms = (self.state.config.webhook_retention_hours * 3_600_000) as i64;
                if let Err(e) = self.state.store.prune_webhooks(now - keep_ms).await {
                    tracing::warn!(error = %e, "pruning webhook events failed");
                }
            }
            let pressed = self.state.writer.behind();
            let (round, most) = if pressed {
                (PRESSED_ROUND, PRESSED_CLAIM)
            } else {
                (ROUND, IN_FLIGHT)
            };
            let room = most.saturating_sub(in_flight.len());
            let next_round = last_round + round;
            let time = tokio::time::Instant::now() >= next_round;
            // A round is due when its time has come and there is something to record or room
            // to claim into; a full batch of answers does not wait for the time.
            let go = (time && (!finished.is_empty() || room > 0)) || finished.len() >= 500;
            if !go {
                if in_flight.is_empty() {
                    tokio::time::sleep(IDLE_POLL.min(next_round - tokio::time::Instant::now()))
                        .await;
                } else {
                    // Until the round is due, or sooner when an attempt ends.
                    let wait =
                        next_round.max(tokio::time::Instant::now() + Duration::from_millis(1));
                    if let Ok(Some(done)) =
                        tokio::time::timeout_at(wait, in_flight.join_next()).await
                    {
                        finished.extend(done.ok().flatten());
                    }
                }
                continue;
            }
            last_round = tokio::time::Instant::now();
            let lease_ms = (self.state.config.webhook_lease_secs * 1000) as i64;
            // The last moment an attempt of these claims may start: it must end (at most
            // ATTEMPT_TIMEOUT, and the answer's read as long again) before the lease does.
            let start_by = now + lease_ms - 2 * ATTEMPT_TIMEOUT.as_millis() as i64 - 1000;
            let busy = self.busy();
            let due = match self
                .state
                .store
                .claim_webhook_events(&finished, now, lease_ms, room as i64, &busy)
                .await
            {
                Ok(due) => {
                    finished.clear();
                    due
                }
                Err(e) => {
                    // The answers are recorded with the next round; if they never are, their
                    // leases run out and the events are attempted again: at least once.
                    tracing::warn!(error = %e, "claiming webhook events failed");
                    if finished.len() > 4 * IN_FLIGHT {
                        finished.clear();
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if due.is_empty() {
                if in_flight.is_empty() {
                    // An idle worker asks for due events a few times a second, not in a loop.
                    last_round = tokio::time::Instant::now() + IDLE_POLL - round;
                }
                continue;
            }
            let hooks: HashMap<WebhookId, WebhookRecord> = match self.state.store.webhooks().await {
                Ok(h) => h.into_iter().map(|h| (h.id, h)).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "reading webhooks failed");
                    continue;
                }
            };
            for event in due {
                let Some(hook) = hooks.get(&event.webhook_id).cloned() else {
                    continue; // removed after the claim: its events went with it
                };
                let slot = self.hold(hook.id);
                let this = self.clone();
                in_flight.spawn(async move {
                    let finished = {
                        let _permit = slot.acquire().await.expect("never closed");
                        if crate::now_ms() > start_by {
                            // Waited too long behind this webhook's other events: the claim
                            // would lapse mid-attempt. The next claim (any pod's) takes it.
                            None
                        } else {
                            Some(this.attempt(event, &hook).await)
                        }
                    };
                    this.release(hook.id);
                    finished
                });
            }
        }
    }

    /// Webhooks with as many events held here as they may have.
    fn busy(&self) -> Vec<WebhookId> {
        self.slots
            .lock()
            .expect("slots lock")
            .iter()
            .filter(|(_, (_, held))| *held >= HELD_PER_WEBHOOK)
            .map(|(id, _)| *id)
            .collect()
    }

    fn hold(&self, id: WebhookId) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().expect("slots lock");
        let entry = slots
            .entry(id)
            .or_insert_with(|| (Arc::new(Semaphore::new(PER_WEBHOOK)), 0));
        entry.1 += 1;
        entry.0.clone()
    }

    fn release(&self, id: WebhookId) {
        let mut slots = self.slots.lock().expect("slots lock");
        if let Some(entry) = slots.get_mut(&id) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                slots.remove(&id);
            }
        }
    }

    /// One attempt, and what to record of it.
    async fn attempt(&self, event: DueEvent, hook: &WebhookRecord) -> FinishedAttempt {
        let started = std::time::Instant::now();
        let result = self.post(hook, &event).await;
        let metrics = &self.state.metrics;
        metrics
            .webhook_attempt_seconds
            .observe(started.elapsed().as_secs_f64());
        let now = crate::now_ms();
        let outcome = if result.ok() {
            AttemptOutcome::Delivered
        } else {
            after_failure(event.created_at, event.attempts, now)
        };
        let label = match outcome {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::RetryAt(_) => "retry",
            AttemptOutcome::Failed => "failed",
        };
        metrics.webhook_deliveries.with_label_values(&[label]).inc();
        if outcome == AttemptOutcome::Failed {
            tracing::warn!(webhook = %hook.id, event = %event.id, "webhook event failed for good");
        }
        FinishedAttempt {
            event,
            outcome,
            status: result.status,
            error: result.error,
            at: now,
        }
    }

    async fn post(&self, hook: &WebhookRecord, event: &DueEvent) -> Attempt {
        let failed = |error: String| Attempt {
            status: None,
            error: Some(error),
        };
        let key = match signing_key(&hook.secret) {
            Ok(k) => k,
            Err(e) => return failed(e),
        };
        let url = match reqwest::Url::parse(&hook.url) {
            Ok(u) => u,
            Err(e) => return failed(format!("invalid url: {e}")),
        };
        // A literal address never goes through the resolver: check it here.
        if !self.allow_private
            && let Some(ip) = url.host_str().and_then(|h| {
                h.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .ok()
            })
            && forbidden(ip)
        {
            return failed(format!("{ip} is a loopback, private or link-local address"));
        }
        let timestamp = crate::now_secs();
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature(&key, &event.id, timestamp, &event.body),
            )
            .body(event.body.clone())
            .send()
            .await;
        let mut response = match response {
            Ok(r) => r,
            Err(e) => {
                let why = if e.is_timeout() {
                    "timed out".to_string()
                } else {
                    let mut text = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        text = format!("{text}: {s}");
                        source = s.source();
                    }
                    text
                };
                return failed(why);
            }
        };
        let status = i64::from(response.status().as_u16());
        // Read a bounded part of the answer (so the connection can be reused), drop the rest.
        let mut read = 0;
        let drained = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
            while let Ok(Some(chunk)) = response.chunk().await {
                read += chunk.len();
                if read > MAX_ANSWER_BYTES {
                    break;
                }
            }
        })
        .await;
        let error = if drained.is_err() {
            Some("the answer's body did not end in time".to_string())
        } else if (300..400).contains(&status) {
            Some("redirects are not followed".to_string())
        } else {
            None
        };
        Attempt {
            status: Some(status),
            error,
        }
    }
}

/// Updates the backlog gauges every few seconds (queue depth and the oldest due event's age),
/// and reads the webhooks again every half minute (in case a change notice was lost with the
/// bus).
pub async fn watch_backlog(state: AppState) {
    let mut round = 0_u32;
    loop {
        round = round.wrapping_add(1);
        if round.is_multiple_of(6)
            && let Err(e) = state.store.reload_webhooks().await
        {
            tracing::warn!(error = %e, "reloading webhooks failed");
        }
        if let Ok((due, oldest)) = state.store.webhook_backlog().await {
            state.metrics.webhook_queue_depth.set(due);
            let age = oldest.map_or(0.0, |t| ((crate::now_ms() - t).max(0)) as f64 / 1000.0);
            state.metrics.webhook_oldest_due_seconds.set(age);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_forbidden() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(forbidden(bad.parse().unwrap()), "{bad}");
        }
        for good in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(!forbidden(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_named() {
        let s = generate_secret();
        assert_eq!(signing_key(&s).unwrap().len(), 32);
        assert!(signing_key("nope").unwrap_err().contains("whsec_"));
        assert!(signing_key("whsec_!!!").unwrap_err().contains("base64"));
        assert!(
            signing_key("whsec_c2hvcnQ=")
                .unwrap_err()
                .contains("24 to 64")
        );
    }

    #[test]
    fn back_off_grows_and_gives_up_after_the_window() {
        let first = retry_delay(1);
        assert!(first <= Duration::from_secs(10), "{first:?}");
        let later = retry_delay(12);
        assert!(later >= Duration::from_secs(1800), "{later:?}");
        assert!(retry_delay(40) <= Duration::from_secs(7200));
        assert!(matches!(after_failure(0, 3, 1000), AttemptOutcome::RetryAt(t) if t > 1000));
        assert_eq!(
            after_failure(0, 30, RETRY_WINDOW_MS),
            AttemptOutcome::Failed
        );
    }
}
