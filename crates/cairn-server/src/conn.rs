//! The accept loop and what each connection may cost the server: a connection that has not sent
//! a complete request head within the head timeout, or sits idle (nothing in flight, nothing read
//! or written) for the idle timeout, is closed; at most `max_connections` are open at once (the
//! rest wait in the kernel's backlog); an accept that fails (out of file descriptors) is retried
//! after a pause instead of spinning.
//!
//! Each connection is served by hyper's HTTP/1.1 connection over a socket wrapper that notes
//! when bytes move, and the router is wrapped to note when a request head is complete (the router
//! was called) and when its answer is ready. A small supervisor per connection compares those
//! marks with the deadlines. Long answers (an SSE stream, a long-poll) are not idle: a long-poll
//! is in flight, and a stream writes a keep-alive comment more often than the idle timeout. A
//! request in flight whose bytes stop moving (a body that never finishes arriving, a client that
//! stops reading) is cut off once it has been quiet for the idle timeout plus the longest
//! long-poll.
//!
//! When hyper itself refuses a request before the router sees it (bytes that are not HTTP, a
//! head too large), it writes a bodiless 400/414/431; the wrapper replaces that answer with the
//! API's JSON error, so every error a client can read is `{"error": {"code", "message"}}`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

/// Limits on connections (the API's contract: a request head within 10 s, idle at most 60 s).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A connection must send a complete request head within this long of opening, and a
    /// request head it has begun must be complete within this long of its first byte.
    pub header_timeout: Duration,
    /// A connection with nothing in flight and no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit, so the connection limit,
/// not the default soft limit (often 1024), decides how many clients the server can hold.
/// Returns the soft limit in force afterwards, when known.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut limit = getrlimit(Resource::Nofile);
        if let (Some(current), Some(maximum)) = (limit.current, limit.maximum) {
            if current < maximum {
                limit.current = Some(maximum);
                if let Err(e) = setrlimit(Resource::Nofile, limit) {
                    tracing::warn!(error = %e, "cannot raise the open-file limit");
                }
            }
        }
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The longest an answer in progress may move no bytes before its connection counts as stalled
/// (on top of the idle timeout): the longest long-poll of `/v1/tasks/poll`. A body that stops
/// arriving, or a client that stops reading, is cut off after that.
const LONGEST_QUIET_ANSWER: Duration = Duration::from_millis(crate::tasks::MAX_WAIT_MS);

/// The largest request head (request line and headers) read; a larger one answers 431.
pub const MAX_HEAD: usize = 64 * 1024;

/// How long the accept loop pauses after a failed accept (out of file descriptors, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` resolves; then takes no new connections, asks
/// open ones to finish their request in progress and close, and returns once all have.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Wait for a free slot before accepting: past the limit, clients wait in the backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (socket, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying shortly");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = socket.set_nodelay(true);
        let router = router.clone();
        let opts = opts.clone();
        let stop = stop_rx.clone();
        connections.spawn(async move {
            serve_connection(socket, router, opts, stop).await;
            drop(permit);
        });
        // Reap finished connection tasks so the set does not grow with every connection served.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// What the supervisor of one connection knows.
struct Marks {
    /// When bytes last moved either way.
    last_io: Instant,
    /// The deadline for the request head being waited for, if one is running.
    head_deadline: Option<Instant>,
    /// Requests whose head is complete and whose answer is not yet ready.
    in_flight: usize,
}

type Shared = Arc<Mutex<Marks>>;

fn lock(m: &Shared) -> std::sync::MutexGuard<'_, Marks> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn serve_connection(
    socket: TcpStream,
    router: Router,
    opts: ServeOptions,
    mut stop: watch::Receiver<bool>,
) {
    let now = Instant::now();
    let marks: Shared = Arc::new(Mutex::new(Marks {
        last_io: now,
        head_deadline: Some(now + opts.header_timeout),
        in_flight: 0,
    }));
    let io = Watched {
        inner: socket,
        marks: marks.clone(),
        header_timeout: opts.header_timeout,
        replacing: None,
    };
    let svc_marks = marks.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        {
            let mut m = lock(&svc_marks);
            m.head_deadline = None;
            m.in_flight += 1;
        }
        let router = router.clone();
        let marks = svc_marks.clone();
        async move {
            let answer = router.oneshot(req).await;
            let mut m = lock(&marks);
            m.in_flight = m.in_flight.saturating_sub(1);
            m.last_io = Instant::now();
            answer
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper's own head timeout (30 s by default once a timer is set) would also run while a
    // kept-alive connection waits for its next request, cutting the idle time short; the
    // supervisor below keeps both deadlines instead.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        let stall = opts.idle_timeout + LONGEST_QUIET_ANSWER;
        let deadline = {
            let m = lock(&marks);
            match m.head_deadline {
                Some(d) => d,
                None if m.in_flight == 0 => m.last_io + opts.idle_timeout,
                None => m.last_io + stall,
            }
        };
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                // The marks may have moved since the deadline was computed: look again.
                let m = lock(&marks);
                let now = Instant::now();
                let head_late = m.head_deadline.is_some_and(|d| d <= now);
                let quiet_for = now.saturating_duration_since(m.last_io);
                let idle = m.head_deadline.is_none()
                    && ((m.in_flight == 0 && quiet_for >= opts.idle_timeout) || quiet_for >= stall);
                if head_late || idle {
                    tracing::debug!(head_late, idle, "closing a slow or idle connection");
                    return;
                }
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The socket, noting when bytes move and when a new request head begins, and putting the API's
/// JSON error in place of hyper's bodiless refusals.
struct Watched {
    inner: TcpStream,
    marks: Shared,
    header_timeout: Duration,
    /// A JSON error being written instead of hyper's refusal, and how much of it is written.
    replacing: Option<(Vec<u8>, usize)>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = Instant::now();
            let mut m = lock(&self.marks);
            m.last_io = now;
            // Bytes with no request in flight begin the next request head.
            if m.in_flight == 0 && m.head_deadline.is_none() {
                m.head_deadline = Some(now + self.header_timeout);
            }
        }
        polled
    }
}

impl Watched {
    /// Writes what is left of the replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.replacing {
            if *written >= bytes.len() {
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.replacing.is_none() {
            self.replacing = replacement(buf).map(|json| (json, 0));
        }
        if self.replacing.is_some() {
            // hyper's own bytes are swallowed once the replacement is out; the connection
            // closes after a refusal, so nothing of the router's follows.
            return match self.poll_replacement(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.len())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            lock(&self.marks).last_io = Instant::now();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_replacement(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_replacement(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

/// The JSON answer for one of hyper's own refusals, or `None` when `head` is not one. hyper's
/// refusals are the only answers without a content type: every error of the router carries
/// `content-type: application/json`.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(head.len());
    let lower = head[..end].to_ascii_lowercase();
    if lower.windows(13).any(|w| w == b"content-type:") {
        return None;
    }
    let (status, code, message) = if head.starts_with(b"HTTP/1.1 400 ") {
        (
            "400 Bad Request",
            "bad_request",
            "the request is not valid HTTP/1.1 (malformed request line or headers)",
        )
    } else if head.starts_with(b"HTTP/1.1 431 ") {
        (
            "431 Request Header Fields Too Large",
            "headers_too_large",
            "the request head is too large",
        )
    } else if head.starts_with(b"HTTP/1.1 414 ") {
        (
            "414 URI Too Long",
            "uri_too_long",
            "the request target is too long",
        )
    } else {
        return None;
    };
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}
