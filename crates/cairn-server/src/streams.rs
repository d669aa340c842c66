//! Live event streams: Server-Sent Events for one plan and for all plans, and a
//! WebSocket that subscribes to a set of plans.
//!
//! - `GET /v1/plans/{id}/events/stream`: frames `id: <seq>`, `event: <type>`, `data: <event
//!   JSON>`. Starts after `Last-Event-ID` (header) or `?after=` (a seq), else from the plan's
//!   first event: the plan's history, then live; once the plan has ended the stream ends after
//!   its last event, unless `?follow=true`. Past events are read from the store page by
//!   page, then the engine's resumable subscription takes over from the global id reached, and
//!   seqs already sent are skipped: no gap, no duplicate.
//! - `GET /v1/events/stream`: frames `id: <global id>`. Starts after `Last-Event-ID` or `?after=`
//!   (a global id), else with live events only.
//! - `GET /v1/ws`: the client sends `{"subscribe": ["plan_a", …] | ["*"], "after": <global id>?}`
//!   (again to change it); the server answers `{"subscribed": {"plans": […], "after": n}}`, then
//!   sends `{"id": <global id>, "event": <event JSON>}` for each event, `{"lagged": {"missed": n}}`
//!   when it fell behind (the events are then replayed from the store, nothing is lost), and
//!   `{"error": {"code", "message"}}` for a message it cannot use or a plan that does not exist
//!   (`plan_not_found`; the socket stays open and the previous subscription holds).
//!   Without `after`, live events only.
//!
//! A slow client never slows the engine: the engine's broadcast buffer is bounded and a lagging
//! subscription catches up from the store; an `event: lagged` frame (data `{"missed": n}`, no
//! `id:`) tells an SSE client so. Keep-alive comments every 15 s.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use cairn_core::Event;
use cairn_engine::{Engine, EngineError, Notice, Subscription};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::AppState;

/// Events read from the store per page while catching up.
const PAGE: usize = 500;
/// Keep-alive comment interval unless the server is told otherwise ([`AppState::keep_alive`]).
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Largest WebSocket message accepted from a client.
const MAX_WS_MESSAGE: usize = 64 * 1024;
/// Most plan ids one WebSocket subscription may name.
const MAX_WS_PLANS: usize = 1_000;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Resume after this position (`seq` for one plan, global id for all plans);
    /// `Last-Event-ID` wins when both are sent.
    #[param(minimum = 0)]
    after: Option<u64>,
    /// Per-plan stream: keep following after the plan has ended (default: the stream ends
    /// after an ended plan's last event).
    #[serde(default)]
    follow: bool,
}

/// The resume point: `Last-Event-ID` wins over `?after=`.
fn resume_point(headers: &HeaderMap, after: Option<u64>) -> ApiResult<Option<u64>> {
    match headers.get("last-event-id") {
        Some(h) => {
            let text = h.to_str().unwrap_or("").trim();
            if text.is_empty() {
                return Ok(after);
            }
            text.parse::<u64>().map(Some).map_err(|_| {
                ApiError::bad_request("Last-Event-ID must be a non-negative integer event id")
            })
        }
        None => Ok(after),
    }
}

fn event_json(e: &Event) -> String {
    serde_json::to_string(e).unwrap_or_else(|_| "{}".to_owned())
}

fn frame(id: u64, e: &Event) -> SseEvent {
    SseEvent::default()
        .id(id.to_string())
        .event(e.kind.type_name())
        .data(event_json(e))
}

fn lagged_frame(missed: u64) -> SseEvent {
    SseEvent::default()
        .event("lagged")
        .data(json!({ "missed": missed }).to_string())
}

fn sse<S>(stream: S, keep_alive: Duration) -> Response
where
    S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
{
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response()
}

/// One plan's events: its stored history after a seq, then live.
struct PlanFeed {
    engine: Engine,
    plan_id: String,
    /// The last seq sent.
    last_seq: u64,
    /// The greatest global id sent or known committed before paging started.
    from_global: u64,
    paging: bool,
    backlog: VecDeque<Event>,
    live: Option<Subscription>,
    /// Keep streaming after the plan has ended.
    follow: bool,
    /// The plan has ended (seen in its state or in an event sent).
    ended: bool,
    /// Whether the plan's state was looked at once paging was done.
    checked: bool,
}

fn ends_plan(e: &Event) -> bool {
    use cairn_core::EventKind as K;
    matches!(
        e.kind,
        K::PlanCompleted {} | K::PlanFailed { .. } | K::PlanCancelled { .. }
    )
}

impl PlanFeed {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.backlog.pop_front() {
                if e.seq <= self.last_seq {
                    continue;
                }
                self.last_seq = e.seq;
                self.from_global = self.from_global.max(e.id);
                self.ended |= ends_plan(&e);
                return Some(frame(e.seq, &e));
            }
            if self.paging {
                match self.engine.events(&self.plan_id, self.last_seq, PAGE).await {
                    Ok(events) => {
                        if events.len() < PAGE {
                            self.paging = false;
                        }
                        self.backlog.extend(events);
                    }
                    Err(e) => {
                        tracing::warn!(plan_id = %self.plan_id, error = %e, "event stream ended: cannot read events");
                        return None;
                    }
                }
                continue;
            }
            if !self.follow {
                if !self.checked {
                    self.checked = true;
                    self.ended |= self
                        .engine
                        .state(&self.plan_id)
                        .await
                        .is_ok_and(|s| s.status.is_terminal());
                }
                // An ended plan's stream ends once everything stored so far has been sent.
                if self.ended {
                    match self.engine.events(&self.plan_id, self.last_seq, PAGE).await {
                        Ok(events) if !events.is_empty() => {
                            self.backlog.extend(events);
                            continue;
                        }
                        _ => return None,
                    }
                }
            }
            // Every event of the plan with a global id up to `from_global` has been read from
            // the store: the subscription replays anything after it, then goes live.
            let sub = self.live.get_or_insert_with(|| {
                self.engine
                    .subscribe_plan(&self.plan_id, Some(self.from_global))
            });
            match sub.next().await? {
                Notice::Event(e) => {
                    if e.seq <= self.last_seq {
                        continue;
                    }
                    self.last_seq = e.seq;
                    self.ended |= ends_plan(&e);
                    return Some(frame(e.seq, &e));
                }
                Notice::Lagged { missed, .. } => return Some(lagged_frame(missed)),
            }
        }
    }
}

/// `GET /v1/plans/{id}/events/stream`: server-sent events of one plan. `id:` is the event's
/// `seq`, `event:` its type, `data:` the event JSON. Resumes after `Last-Event-ID` or `after`.
#[utoipa::path(get, operation_id = "stream_plan_events", path = "/v1/plans/{id}/events/stream", tag = "events",
    params(("id" = String, Path, description = "Plan id"),
           ("Last-Event-ID" = Option<String>, Header, description = "Resume after this seq (a non-negative integer)"),
           StreamQuery),
    responses(
        (status = 200, description = "An SSE stream of the plan's events", content_type = "text/event-stream", body = crate::openapi::SseFrame),
        (status = 400, description = "A malformed `Last-Event-ID` or query", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such plan", body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn plan_stream(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> ApiResult<Response> {
    p.require(Role::Viewer)?;
    let after = resume_point(&headers, q.after)?.unwrap_or(0);
    if !cairn_core::plan::valid_id(&id)
        || s.engine
            .store()
            .get_plan(&id)
            .await
            .map_err(EngineError::from)?
            .is_none()
    {
        return Err(EngineError::PlanNotFound(id.chars().take(140).collect()).into());
    }
    // Taken before the first page is read: every event with a greater global id is either read
    // by the paging or replayed by the subscription.
    let committed = s
        .engine
        .store()
        .last_event_id()
        .await
        .map_err(EngineError::from)?;
    let feed = PlanFeed {
        engine: s.engine.clone(),
        plan_id: id,
        last_seq: after,
        from_global: committed,
        paging: true,
        backlog: VecDeque::new(),
        live: None,
        follow: q.follow,
        ended: false,
        checked: false,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let item = feed.next().await?;
        Some((Ok(item), feed))
    });
    Ok(sse(stream, s.keep_alive))
}

/// `GET /v1/events/stream`: server-sent events of every plan; `id:` is the event's global id.
/// Without `Last-Event-ID` or `after`, only events committed from now on.
#[utoipa::path(get, operation_id = "stream_events", path = "/v1/events/stream", tag = "events",
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this global id (a non-negative integer)"),
           StreamQuery),
    responses(
        (status = 200, description = "An SSE stream of every plan's events", content_type = "text/event-stream", body = crate::openapi::SseFrame),
        (status = 400, description = "A malformed `Last-Event-ID` or query", body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn all_stream(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> ApiResult<Response> {
    p.require(Role::Viewer)?;
    let after = match resume_point(&headers, q.after)? {
        Some(id) => id,
        None => s
            .engine
            .store()
            .last_event_id()
            .await
            .map_err(EngineError::from)?,
    };
    let sub = s.engine.subscribe(Some(after));
    let stream = futures_util::stream::unfold(sub, |mut sub| async move {
        let item = match sub.next().await? {
            Notice::Event(e) => frame(e.id, &e),
            Notice::Lagged { missed, .. } => lagged_frame(missed),
        };
        Some((Ok(item), sub))
    });
    Ok(sse(stream, s.keep_alive))
}

/// `GET /v1/ws` (the token may also come as `?token=`: see [`crate::auth::middleware`]).
/// Send `{"subscribe": [plan ids or "*"], "after": id}`; receive event JSON frames.
#[utoipa::path(get, operation_id = "websocket", path = "/v1/ws", tag = "events",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade", body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn ws(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    p.require(Role::Viewer)?;
    Ok(upgrade
        .max_message_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| ws_session(s.engine, socket, s.keep_alive))
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeMsg {
    subscribe: Vec<String>,
    #[serde(default)]
    after: Option<u64>,
}

/// Which plans a WebSocket follows: `None` = all.
struct WsSub {
    plans: Option<HashSet<String>>,
    sub: Subscription,
}

fn ws_error(code: &str, message: impl Into<String>) -> Value {
    json!({"error": {"code": code, "message": message.into()}})
}

async fn send(socket: &mut WebSocket, v: Value) -> bool {
    socket
        .send(Message::Text(v.to_string().into()))
        .await
        .is_ok()
}

/// Parses a client message into the plans to follow (`None` = all) and the resume point.
#[allow(clippy::type_complexity)]
fn parse_subscribe(text: &str) -> Result<(Option<HashSet<String>>, Option<u64>), Value> {
    let msg: SubscribeMsg = serde_json::from_str(text).map_err(|e| {
        ws_error(
            "bad_request",
            format!(
                "expected {{\"subscribe\": [plan ids] or [\"*\"], \"after\": global id?}}: {e}"
            ),
        )
    })?;
    if msg.subscribe.is_empty() {
        return Err(ws_error(
            "bad_request",
            "subscribe needs at least one plan id, or \"*\" for all plans",
        ));
    }
    if msg.subscribe.len() > MAX_WS_PLANS {
        return Err(ws_error(
            "bad_request",
            format!("subscribe names at most {MAX_WS_PLANS} plans"),
        ));
    }
    if msg.subscribe.iter().any(|p| p == "*") {
        return Ok((None, msg.after));
    }
    if let Some(bad) = msg
        .subscribe
        .iter()
        .find(|p| !cairn_core::plan::valid_id(p))
    {
        return Err(ws_error(
            "bad_request",
            format!(
                "{:?} is not a plan id",
                bad.chars().take(140).collect::<String>()
            ),
        ));
    }
    Ok((Some(msg.subscribe.into_iter().collect()), msg.after))
}

/// The error frame for the first named plan that does not exist (or cannot be checked).
async fn unknown_plan(engine: &Engine, plans: Option<&HashSet<String>>) -> Option<Value> {
    let mut names: Vec<&String> = plans?.iter().collect();
    names.sort();
    for id in names {
        match engine.store().get_plan(id).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Some(ws_error(
                    "plan_not_found",
                    format!("plan {id} not found; nothing was subscribed"),
                ))
            }
            Err(e) => {
                tracing::warn!(error = %e, "ws: cannot look plans up");
                return Some(ws_error(
                    "unavailable",
                    "cannot read the plans right now; try again",
                ));
            }
        }
    }
    None
}

async fn next_notice(sub: &mut Option<WsSub>) -> Option<Notice> {
    match sub {
        Some(s) => loop {
            let n = s.sub.next().await?;
            if let Notice::Event(e) = &n {
                if let Some(plans) = &s.plans {
                    if !plans.contains(&e.plan_id) {
                        continue;
                    }
                }
            }
            return Some(n);
        },
        None => std::future::pending().await,
    }
}

async fn ws_session(engine: Engine, mut socket: WebSocket, keep_alive: Duration) {
    let mut current: Option<WsSub> = None;
    let mut ping = tokio::time::interval(keep_alive);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = socket.recv() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        if !send(&mut socket, ws_error("bad_request", "send JSON text messages, not binary")).await {
                            return;
                        }
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                match parse_subscribe(text.as_str()) {
                    Ok((plans, after)) => {
                        // Every plan named must exist; the subscription in force stays if not.
                        if let Some(err) = unknown_plan(&engine, plans.as_ref()).await {
                            if !send(&mut socket, err).await {
                                return;
                            }
                            continue;
                        }
                        let after = match after {
                            Some(a) => a,
                            None => match engine.store().last_event_id().await {
                                Ok(id) => id,
                                Err(e) => {
                                    tracing::warn!(error = %e, "ws: cannot read the last event id");
                                    if !send(&mut socket, ws_error("unavailable", "cannot read the event log right now; try again")).await {
                                        return;
                                    }
                                    continue;
                                }
                            },
                        };
                        let mut listed: Vec<&String> = plans.iter().flatten().collect();
                        listed.sort();
                        let ack = json!({"subscribed": {"plans": if plans.is_some() { json!(listed) } else { json!(["*"]) }, "after": after}});
                        current = Some(WsSub { plans, sub: engine.subscribe(Some(after)) });
                        if !send(&mut socket, ack).await {
                            return;
                        }
                    }
                    Err(err) => {
                        if !send(&mut socket, err).await {
                            return;
                        }
                    }
                }
            }
            notice = next_notice(&mut current) => {
                let msg = match notice {
                    Some(Notice::Event(e)) => json!({"id": e.id, "event": &*e}),
                    Some(Notice::Lagged { missed, .. }) => json!({"lagged": {"missed": missed}}),
                    None => {
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                };
                if !send(&mut socket, msg).await {
                    return;
                }
            }
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
}
