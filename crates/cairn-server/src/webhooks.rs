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
//!
//! Several nodes sharing one store deliver each webhook from one node at a time: a node takes
//! a lease on the webhook's cursor (`Cursors::lease_cursor`) before delivering, renews it while
//! it delivers (a third of the lease, and before each cursor move), and stops at once when it
//! loses it. The others wait, asking every third of a lease; when the holder stops renewing (it
//! died), one of them takes the lease and resumes from the durable cursor. At the handover an
//! event may be delivered twice, never skipped.

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

/// Who delivers: the node whose name goes on the cursor leases, and how long a lease lasts.
#[derive(Debug, Clone)]
pub struct Deliverer {
    pub node_id: String,
    pub lease_ms: u64,
}

impl Default for Deliverer {
    fn default() -> Self {
        let engine = cairn_engine::EngineOptions::default();
        Deliverer {
            node_id: engine.node_id,
            lease_ms: engine.lease_ms,
        }
    }
}

/// Starts one delivery task per webhook, as the only node of its store. Aborting the returned
/// handle stops them all.
pub fn spawn_webhooks(engine: Engine, webhooks: Vec<WebhookConfig>) -> JoinHandle<()> {
    spawn_webhooks_as(engine, webhooks, Deliverer::default())
}

/// [`spawn_webhooks`] for node `me` of a store several nodes share: each webhook is delivered
/// while `me` holds the lease on its cursor.
pub fn spawn_webhooks_as(
    engine: Engine,
    webhooks: Vec<WebhookConfig>,
    me: Deliverer,
) -> JoinHandle<()> {
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
            tasks.spawn(deliver_leased(
                engine.clone(),
                client.clone(),
                hook,
                me.clone(),
            ));
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

/// Takes the webhook's cursor lease for `me` (or renews it): `Some(granted)`, or `None` when
/// the store cannot say.
async fn lease(engine: &Engine, name: &str, me: &Deliverer) -> Option<bool> {
    match engine
        .store()
        .lease_cursor(name, &me.node_id, me.lease_ms)
        .await
    {
        Ok(granted) => Some(granted),
        Err(e) => {
            tracing::warn!(cursor = name, error = %e, "webhook: cannot take or renew its lease");
            None
        }
    }
}

/// Delivers the webhook whenever `me` holds its cursor lease, until the engine's event stream
/// ends.
async fn deliver_leased(
    engine: Engine,
    client: reqwest::Client,
    hook: WebhookConfig,
    me: Deliverer,
) {
    let name = cursor_name(&hook.url);
    let every = Duration::from_millis((me.lease_ms / 3).max(50));
    let mut standing_by = false;
    loop {
        if lease(&engine, &name, &me).await != Some(true) {
            if !standing_by {
                tracing::info!(cursor = %name, node = %me.node_id, "webhook: another node delivers it; standing by");
                standing_by = true;
            }
            tokio::time::sleep(every).await;
            continue;
        }
        standing_by = false;
        // Renewed in the background too, for a delivery retrying longer than a lease: lost
        // when a renewal is refused, or when none succeeded for two thirds of a lease (the
        // store did not answer: the lease may run out before it does).
        let renewer = {
            let (engine, name, me) = (engine.clone(), name.clone(), me.clone());
            async move {
                let mut granted_at = Instant::now();
                loop {
                    tokio::time::sleep(every).await;
                    match lease(&engine, &name, &me).await {
                        Some(true) => granted_at = Instant::now(),
                        Some(false) => return,
                        None if granted_at.elapsed() >= every * 2 => return,
                        None => {}
                    }
                }
            }
        };
        let ended = tokio::select! {
            ended = deliver_all(&engine, &client, &hook, &me) => ended,
            () = renewer => false,
        };
        if ended {
            // The event stream ended: the engine shut down.
            return;
        }
        tracing::warn!(cursor = %name, node = %me.node_id, "webhook: lost its lease; the node that takes it resumes from the cursor");
    }
}

/// Delivers from the durable cursor while the lease holds: renewed before each cursor move, so
/// a node that lost it never moves the cursor under the new holder. Answers `true` when the
/// engine's event stream ended, `false` when the lease was lost.
async fn deliver_all(
    engine: &Engine,
    client: &reqwest::Client,
    hook: &WebhookConfig,
    me: &Deliverer,
) -> bool {
    let name = cursor_name(&hook.url);
    let start = start_position(engine, &name).await;
    let mut saved = start;
    let mut saved_at = Instant::now();
    let mut sub = engine.subscribe(Some(start));
    while let Some(notice) = sub.next().await {
        let e = match notice {
            Notice::Event(e) => e,
            // The subscription catches up from the store by itself.
            Notice::Lagged { .. } => continue,
        };
        let wanted = hook.wants(e.kind.type_name());
        if wanted {
            deliver(client, hook, &e).await;
        }
        if wanted || (e.id > saved && saved_at.elapsed() >= SKIP_FLUSH) {
            if lease(engine, &name, me).await == Some(false) {
                return false;
            }
            save_cursor(engine, &name, e.id).await;
            saved = e.id;
            saved_at = Instant::now();
        }
    }
    true
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
