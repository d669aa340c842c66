//! Webhooks: every `[[webhooks]]` entry gets the events it wants POSTed to its URL,
//! at least once and in order.
//!
//! The event log is the outbox: a durable cursor per webhook, named `webhook:<url>`, holds the
//! global id of the last event dealt with. One delivery task per webhook follows the engine's
//! resumable subscription from that cursor, so a restart resumes where it stopped (an event may
//! be delivered again: receivers dedupe by `X-Cairn-Delivery`). A webhook seen for the first
//! time (no cursor yet) starts at the current end of the log: it gets new events only; its
//! starting point is stored at once, so events after it survive a restart.
//!
//! Each request: `POST <url>`, body the event JSON (the same as SSE `data:`), headers
//! `Content-Type: application/json`, `X-Cairn-Event: <type>`, `X-Cairn-Delivery: <global id>`
//! and, with a secret, `X-Cairn-Signature: sha256=<hex HMAC-SHA256 of the body>`. A 2xx answer is
//! a delivery; anything else (or no answer within 10 s) is retried after 200 ms, doubling up to
//! 60 s, 12 attempts in all; then the event is given up (logged as an error) and the next one
//! goes. Delivery runs on its own tasks: the engine never waits for it.

use std::time::{Duration, Instant};

use cairn_core::Event;
use cairn_engine::config::WebhookConfig;
use cairn_engine::{Engine, Notice};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::task::{JoinHandle, JoinSet};

/// Attempts per event before giving up.
pub const MAX_ATTEMPTS: u32 = 12;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the cursor is moved past events a webhook does not want.
const SKIP_FLUSH: Duration = Duration::from_secs(1);

/// The durable cursor name of a webhook.
pub fn cursor_name(url: &str) -> String {
    format!("webhook:{url}")
}

/// `sha256=<hex HMAC-SHA256 of body keyed by secret>`, the `X-Cairn-Signature` value.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Starts one delivery task per webhook. Aborting the returned handle stops them all.
pub fn spawn_webhooks(engine: Engine, webhooks: Vec<WebhookConfig>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhooks disabled: cannot build an HTTP client");
                return;
            }
        };
        // Dropping the set (when this task is aborted) aborts every delivery task.
        let mut tasks = JoinSet::new();
        for hook in webhooks {
            tasks.spawn(deliver_all(engine.clone(), client.clone(), hook));
        }
        while tasks.join_next().await.is_some() {}
    })
}

/// Reads the cursor, creating it at the end of the log for a new webhook.
async fn start_position(engine: &Engine, name: &str) -> u64 {
    let store = engine.store();
    let mut wait = FIRST_BACKOFF;
    loop {
        let got = match store.get_cursor(name).await {
            Ok(Some(c)) => Ok(c),
            Ok(None) => match store.last_event_id().await {
                Ok(last) => store.set_cursor(name, last).await.map(|()| last),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match got {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!(cursor = name, error = %e, "webhook: cannot read its cursor; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn save_cursor(engine: &Engine, name: &str, id: u64) {
    if let Err(e) = engine.store().set_cursor(name, id).await {
        // Not fatal: a later save moves it on; until then a restart redelivers.
        tracing::warn!(cursor = name, error = %e, "webhook: cannot save its cursor");
    }
}

async fn deliver_all(engine: Engine, client: reqwest::Client, hook: WebhookConfig) {
    let name = cursor_name(&hook.url);
    let start = start_position(&engine, &name).await;
    let mut saved = start;
    let mut saved_at = Instant::now();
    let mut sub = engine.subscribe(Some(start));
    while let Some(notice) = sub.next().await {
        let e = match notice {
            Notice::Event(e) => e,
            // The subscription catches up from the store by itself.
            Notice::Lagged { .. } => continue,
        };
        if hook.wants(e.kind.type_name()) {
            deliver(&client, &hook, &e).await;
            save_cursor(&engine, &name, e.id).await;
            saved = e.id;
            saved_at = Instant::now();
        } else if e.id > saved && saved_at.elapsed() >= SKIP_FLUSH {
            save_cursor(&engine, &name, e.id).await;
            saved = e.id;
            saved_at = Instant::now();
        }
    }
}

/// POSTs one event, retrying with backoff. Returns whether it was delivered.
async fn deliver(client: &reqwest::Client, hook: &WebhookConfig, e: &Event) -> bool {
    let body = match serde_json::to_vec(e) {
        Ok(b) => b,
        Err(err) => {
            tracing::error!(event_id = e.id, error = %err, "webhook: cannot serialise the event");
            return false;
        }
    };
    let signature = hook.secret.as_deref().map(|s| signature(s, &body));
    let mut wait = FIRST_BACKOFF;
    for attempt in 1..=MAX_ATTEMPTS {
        let mut req = client
            .post(&hook.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Cairn-Event", e.kind.type_name())
            .header("X-Cairn-Delivery", e.id.to_string())
            .body(body.clone());
        if let Some(sig) = &signature {
            req = req.header("X-Cairn-Signature", sig);
        }
        let why = match req.send().await {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => format!("answered {}", r.status()),
            Err(err) => err.to_string(),
        };
        if attempt == MAX_ATTEMPTS {
            tracing::error!(url = %hook.url, event_id = e.id, attempts = attempt, reason = %why,
                "webhook: giving up on this event");
            break;
        }
        tracing::warn!(url = %hook.url, event_id = e.id, attempt, reason = %why,
            retry_in_ms = wait.as_millis() as u64, "webhook: delivery failed");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_BACKOFF);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_reaches_the_cap() {
        let mut wait = FIRST_BACKOFF;
        let mut total = Duration::ZERO;
        for _ in 1..MAX_ATTEMPTS {
            total += wait;
            wait = (wait * 2).min(MAX_BACKOFF);
        }
        assert_eq!(wait, MAX_BACKOFF);
        assert!(total > Duration::from_secs(60));
    }
}
