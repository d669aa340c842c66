//! The `http` executor: POSTs the task JSON to a URL; the JSON reply is the output.
//!
//! The reply is read like a `command` agent's stdout (see [`super::command`]): empty → `null`,
//! `{"output": …, "scores"?: {…}}` → output and scores, any other JSON → the output. 2xx is success;
//! 408, 429 and 5xx and connection errors are failures worth retrying; other 4xx are fatal. Each
//! request carries the headers `Idempotency-Key`, `X-Cairn-Plan-Id`, `X-Cairn-Step-Id` and
//! `X-Cairn-Attempt`.

use std::error::Error as _;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;

use super::command::{
    deadline, effective_timeout, first_chars, parse_agent_output, MAX_OUTPUT_BYTES,
};
use super::{ExecError, ExecOutput, Executor, StopSignal, Task};

/// POSTs each attempt to `url`.
#[derive(Debug, Clone)]
pub struct HttpExecutor {
    pub url: String,
    /// Gives up on a request after this long; the step's own `timeout_ms`, when smaller, wins.
    pub timeout_ms: Option<u64>,
    /// One connection pool per executor.
    client: reqwest::Client,
}

impl HttpExecutor {
    pub fn new(url: impl Into<String>, timeout_ms: Option<u64>) -> HttpExecutor {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        HttpExecutor {
            url: url.into(),
            timeout_ms,
            client,
        }
    }

    /// With a client of the caller's (proxies, TLS roots, default headers).
    pub fn with_client(
        url: impl Into<String>,
        timeout_ms: Option<u64>,
        client: reqwest::Client,
    ) -> HttpExecutor {
        HttpExecutor {
            url: url.into(),
            timeout_ms,
            client,
        }
    }

    async fn call(&self, task: &Task) -> Result<ExecOutput, ExecError> {
        let mut response = self
            .client
            .post(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .header("Idempotency-Key", &task.idempotency_key)
            .header("X-Cairn-Plan-Id", &task.plan_id)
            .header("X-Cairn-Step-Id", &task.step_id)
            .header("X-Cairn-Attempt", task.attempt.to_string())
            .json(task)
            .send()
            .await
            .map_err(|e| ExecError::retryable(format!("POST {}: {}", self.url, chain(&e))))?;
        let status = response.status();

        let mut body = Vec::new();
        let mut too_large = false;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_OUTPUT_BYTES {
                        too_large = true;
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if status.is_success() => {
                    return Err(ExecError::retryable(format!(
                        "POST {}: reading the reply: {}",
                        self.url,
                        chain(&e)
                    )))
                }
                // The status is what matters for a failure; keep what body we have.
                Err(_) => break,
            }
        }

        if status.is_success() {
            if too_large {
                return Err(ExecError::fatal(format!(
                    "POST {}: the reply is larger than the {} MiB output cap",
                    self.url,
                    MAX_OUTPUT_BYTES / (1024 * 1024)
                )));
            }
            return parse_agent_output(&body, "replied with");
        }
        let text = String::from_utf8_lossy(&body);
        let text = text.trim();
        let mut message = format!("POST {}: agent replied {status}", self.url);
        if !text.is_empty() {
            message.push_str(": ");
            message.push_str(&first_chars(text, 500));
        }
        let retryable = status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS;
        Err(ExecError { message, retryable })
    }
}

/// An error with its causes: reqwest's own message alone ("error sending request for url …")
/// hides them, and repeats the URL our message already names.
fn chain(e: &reqwest::Error) -> String {
    let mut s = String::from(if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "bad reply body"
    } else if e.is_redirect() {
        "bad redirect"
    } else {
        "request failed"
    });
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

#[async_trait]
impl Executor for HttpExecutor {
    async fn execute(&self, task: Task, mut stop: StopSignal) -> Result<ExecOutput, ExecError> {
        if stop.is_stopped() {
            return Err(ExecError::retryable("stopped"));
        }
        let timeout = effective_timeout(self.timeout_ms, task.timeout_ms);
        tokio::select! {
            result = self.call(&task) => result,
            _ = deadline(timeout) => Err(ExecError::retryable(format!(
                "timed out after {} ms",
                timeout.unwrap_or_default()
            ))),
            _ = stop.stopped() => Err(ExecError::retryable("stopped")),
        }
    }
}
