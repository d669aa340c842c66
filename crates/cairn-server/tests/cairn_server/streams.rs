//! Live streams (SSE, WebSocket) and webhooks, against the real router on a loopback port over a
//! temporary SQLite store. Every wait is bounded; nothing asserts on timing.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use cairn_core::{Format, Plan};
use cairn_engine::config::WebhookConfig;
use cairn_engine::{Engine, EngineOptions};
use cairn_server::webhooks::{cursor_name, signature, spawn_webhooks};
use cairn_server::{Role, ServerOptions};
use cairn_store::Store;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::common::{request, within, TestServer};
use reqwest::Method;
use tokio_tungstenite::tungstenite::Message;

/// The longest any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(60);

struct Server {
    _server: TestServer,
    engine: Engine,
    store: Arc<dyn Store>,
    addr: SocketAddr,
    token: String,
    http: reqwest::Client,
}

async fn server() -> Server {
    server_with(EngineOptions::default()).await
}

async fn server_with(opts: EngineOptions) -> Server {
    let s = TestServer::start(ServerOptions {
        engine: opts,
        ..ServerOptions::default()
    })
    .await;
    let token = s.token("viewer", Role::Viewer).await;
    Server {
        engine: s.engine.clone(),
        store: s.store.clone(),
        addr: s.addr,
        token,
        http: reqwest::Client::new(),
        _server: s,
    }
}

fn plan(id: &str, steps: usize, sleep_ms: u64) -> Plan {
    let mut yaml = format!("plan_id: {id}\nquery: q\nsteps:\n");
    for i in 0..steps {
        yaml.push_str(&format!(
            "  - {{step_id: s{i}, action: a, agent_type: builtin.sleep, params: {{ms: {sleep_ms}}}}}\n"
        ));
    }
    Plan::parse(&yaml, Format::Yaml).unwrap()
}

impl Server {
    /// Waits, bounded, until the plan `id` has settled.
    async fn settled(&self, id: &str) {
        within("a plan to settle", self.engine.wait_settled(id))
            .await
            .unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn run(&self, id: &str, steps: usize, sleep_ms: u64) {
        self.engine
            .register(plan(id, steps, sleep_ms), "t")
            .await
            .unwrap();
        self.engine.start(id, "t", None).await.unwrap();
    }

    /// Every event of a plan, from `GET /v1/plans/{id}/events`.
    async fn plan_events(&self, id: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0u64;
        loop {
            let url = self.url(&format!("/v1/plans/{id}/events?after={after}&limit=1000"));
            // A plan the test did not create answers 404: no events.
            let (_, page) = request(&self.http, Method::GET, &url, Some(&self.token), None).await;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                return all;
            }
            after = items.last().unwrap()["seq"].as_u64().unwrap();
            all.extend(items);
        }
    }

    /// Every event of every plan, straight from the store, as JSON.
    async fn all_events(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for id in ["pa", "pb", "pc"] {
            out.extend(self.plan_events(id).await);
        }
        out.sort_by_key(|e| e["id"].as_u64().unwrap());
        out
    }

    async fn sse(&self, path: &str, last_event_id: Option<u64>) -> SseClient {
        let mut req = self.http.get(self.url(path)).bearer_auth(&self.token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        SseClient {
            resp,
            buf: String::new(),
        }
    }
}

#[derive(Debug)]
struct Frame {
    id: Option<u64>,
    event: String,
    data: Value,
}

struct SseClient {
    resp: reqwest::Response,
    buf: String,
}

impl SseClient {
    /// The next frame that is not a comment, waiting at most [`WAIT`].
    async fn next(&mut self) -> Frame {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if event.is_empty() && data.is_empty() {
                    continue; // keep-alive comment
                }
                return Frame {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap(),
                };
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("no SSE frame in time")
                .unwrap()
                .expect("the stream ended early");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next `n` frames, none of them a lag notice.
    async fn take(&mut self, n: usize) -> Vec<Frame> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let f = self.next().await;
            assert_ne!(f.event, "lagged");
            out.push(f);
        }
        out
    }

    /// Frames (lag notices skipped) until one has id `last`.
    async fn until_id(&mut self, last: u64) -> Vec<Frame> {
        let mut out = Vec::new();
        loop {
            let f = self.next().await;
            if f.event == "lagged" {
                continue;
            }
            let id = f.id.unwrap();
            out.push(f);
            if id >= last {
                return out;
            }
        }
    }
}

#[tokio::test]
async fn plan_stream_delivers_every_event_in_order_and_resumes_from_last_event_id() {
    let s = server().await;
    s.engine.register(plan("pa", 6, 20), "t").await.unwrap();
    // Connect before the plan starts: its history, then live.
    let mut first = s.sse("/v1/plans/pa/events/stream", None).await;
    s.engine.start("pa", "t", None).await.unwrap();
    let mut seen = first.take(4).await;
    drop(first);
    let k = seen.last().unwrap().id.unwrap();
    // Reconnect while the plan may still run.
    let mut second = s.sse("/v1/plans/pa/events/stream", Some(k)).await;
    s.settled("pa").await;
    let stored = s.plan_events("pa").await;
    let last = stored.last().unwrap()["seq"].as_u64().unwrap();
    let rest = second.until_id(last).await;
    assert_eq!(rest[0].id, Some(k + 1), "resumes right after Last-Event-ID");
    seen.extend(rest);
    let ids: Vec<u64> = seen.iter().map(|f| f.id.unwrap()).collect();
    let want: Vec<u64> = (1..=last).collect();
    assert_eq!(ids, want, "every seq once, in order");
    for (f, e) in seen.iter().zip(&stored) {
        assert_eq!(&f.data, e, "SSE data is the event JSON");
        assert_eq!(f.event, e["type"].as_str().unwrap());
    }
    assert!(seen.iter().any(|f| f.event == "plan_completed"));

    // `?after=` does the same as the header; the stream stays open after the history.
    let mut third = s
        .sse(
            &format!("/v1/plans/pa/events/stream?after={}", last - 2),
            None,
        )
        .await;
    let tail = third.until_id(last).await;
    assert_eq!(
        tail.iter().map(|f| f.id.unwrap()).collect::<Vec<_>>(),
        vec![last - 1, last]
    );
}

#[tokio::test]
async fn all_plans_stream_resumes_by_global_id_across_plans() {
    let s = server().await;
    let mut first = s.sse("/v1/events/stream?after=0", None).await;
    s.run("pa", 4, 10).await;
    s.run("pb", 4, 10).await;
    let mut seen = first.take(5).await;
    drop(first);
    let g = seen.last().unwrap().id.unwrap();
    let mut second = s.sse("/v1/events/stream", Some(g)).await;
    s.settled("pa").await;
    s.settled("pb").await;
    let stored = s.all_events().await;
    let last = stored.last().unwrap()["id"].as_u64().unwrap();
    seen.extend(second.until_id(last).await);
    let got: Vec<u64> = seen.iter().map(|f| f.id.unwrap()).collect();
    let want: Vec<u64> = stored.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(got, want, "every event of both plans once, in global order");
    for (f, e) in seen.iter().zip(&stored) {
        assert_eq!(&f.data, e);
    }
    let plans: HashSet<&str> = seen
        .iter()
        .map(|f| f.data["plan_id"].as_str().unwrap())
        .collect();
    assert_eq!(plans, HashSet::from(["pa", "pb"]));
}

#[tokio::test]
async fn a_lagging_client_is_healed_from_the_store() {
    // A live buffer of two events: a client that does not read falls behind at once.
    let s = server_with(EngineOptions {
        stream_buffer: 2,
        ..EngineOptions::default()
    })
    .await;
    s.engine.register(plan("pa", 10, 0), "t").await.unwrap();
    let mut all = s.sse("/v1/events/stream?after=0", None).await;
    let mut one = s.sse("/v1/plans/pa/events/stream", None).await;
    s.engine.start("pa", "t", None).await.unwrap();
    s.run("pb", 10, 0).await;
    s.run("pc", 10, 0).await;
    for id in ["pa", "pb", "pc"] {
        s.settled(id).await;
    }
    let stored = s.all_events().await;
    let last = stored.last().unwrap()["id"].as_u64().unwrap();
    let got: Vec<u64> = all
        .until_id(last)
        .await
        .iter()
        .map(|f| f.id.unwrap())
        .collect();
    let want: Vec<u64> = stored.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(got, want, "nothing lost or repeated despite lag");
    let pa = s.plan_events("pa").await;
    let last_seq = pa.last().unwrap()["seq"].as_u64().unwrap();
    let got: Vec<u64> = one
        .until_id(last_seq)
        .await
        .iter()
        .map(|f| f.id.unwrap())
        .collect();
    assert_eq!(got, (1..=last_seq).collect::<Vec<_>>());
}

#[tokio::test]
async fn stream_refusals() {
    let s = server().await;
    let url = s.url("/v1/plans/nope/events/stream");
    let (status, body) = request(&s.http, Method::GET, &url, Some(&s.token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "plan_not_found");

    // `?token=` is for the WebSocket only.
    let with_query = format!("/v1/events/stream?token={}", s.token);
    for path in [
        "/v1/events/stream",
        "/v1/plans/nope/events/stream",
        "/v1/ws",
        &with_query,
    ] {
        let (status, _) = request(&s.http, Method::GET, &s.url(path), None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let resp = s
        .http
        .get(s.url("/v1/events/stream"))
        .bearer_auth(&s.token)
        .header("Last-Event-ID", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no WebSocket message in time")
            .expect("socket closed")
            .unwrap();
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

async fn ws_send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
}

#[tokio::test]
async fn websocket_subscribe_after_and_errors() {
    let s = server().await;
    s.run("pa", 3, 0).await;
    s.run("pb", 3, 0).await;
    s.settled("pa").await;
    s.settled("pb").await;
    let stored = s.all_events().await;

    // Without a token the handshake is refused.
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", s.addr)).await;
    assert!(refused.is_err());

    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?token={}", s.addr, s.token))
            .await
            .unwrap();
    ws_send(&mut ws, "hello").await;
    let err = ws_next(&mut ws).await;
    assert_eq!(err["error"]["code"], "bad_request", "{err}");

    // One plan, from the beginning.
    ws_send(&mut ws, r#"{"subscribe": ["pa"], "after": 0}"#).await;
    let ack = ws_next(&mut ws).await;
    assert_eq!(ack["subscribed"]["plans"], json!(["pa"]));
    let want: Vec<&Value> = stored.iter().filter(|e| e["plan_id"] == "pa").collect();
    for e in &want {
        let m = ws_next(&mut ws).await;
        assert_eq!(m["id"], e["id"]);
        assert_eq!(&&m["event"], e);
    }

    // A bad message is answered with an error; the socket stays usable.
    ws_send(&mut ws, r#"{"subscribe": []}"#).await;
    let err = ws_next(&mut ws).await;
    assert_eq!(err["error"]["code"], "bad_request", "{err}");
    ws_send(&mut ws, r#"{"subscribe": "pa"}"#).await;
    let err = ws_next(&mut ws).await;
    assert_eq!(err["error"]["code"], "bad_request", "{err}");

    // Resume after a global id, all plans.
    let mid = stored[stored.len() / 2]["id"].as_u64().unwrap();
    ws_send(
        &mut ws,
        &format!(r#"{{"subscribe": ["*"], "after": {mid}}}"#),
    )
    .await;
    let ack = ws_next(&mut ws).await;
    assert_eq!(ack["subscribed"]["plans"], json!(["*"]));
    for e in stored.iter().filter(|e| e["id"].as_u64().unwrap() > mid) {
        let m = ws_next(&mut ws).await;
        assert_eq!(&m["event"], e);
    }

    // Then live: a new plan's events arrive.
    s.run("pc", 2, 0).await;
    loop {
        let m = ws_next(&mut ws).await;
        assert_eq!(m["event"]["plan_id"], "pc");
        if m["event"]["type"] == "plan_completed" {
            break;
        }
    }
}

/// The requests a receiver accepted: headers and body.
type Deliveries = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A webhook receiver on a loopback port: answers 500 to the first `fail` requests.
#[derive(Clone, Default)]
struct Receiver {
    fail: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    got: Deliveries,
}

impl Receiver {
    async fn start(&self) -> String {
        let me = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let me = me.clone();
                async move {
                    if me
                        .fail
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        me.failed.fetch_add(1, Ordering::SeqCst);
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    me.got.lock().unwrap().push((headers, body.to_vec()));
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}/hook")
    }

    fn delivered_ids(&self) -> BTreeSet<u64> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(h, _)| h["x-cairn-delivery"].to_str().unwrap().parse().unwrap())
            .collect()
    }

    /// Waits (bounded) until every id in `want` was delivered.
    async fn wait_for(&self, want: &BTreeSet<u64>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.delivered_ids().is_superset(want) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "webhook deliveries missing: {:?}",
                want.difference(&self.delivered_ids()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits (bounded) until the delivery task stored its starting cursor.
async fn wait_cursor(store: &Arc<dyn Store>, url: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.get_cursor(&cursor_name(url)).await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no webhook cursor");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ids_of(events: &[Value], types: &[&str]) -> BTreeSet<u64> {
    events
        .iter()
        .filter(|e| types.iter().any(|t| *t == "*" || e["type"] == *t))
        .map(|e| e["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn webhook_delivers_wanted_events_signed_and_retries() {
    let s = server().await;
    let rx = Receiver::default();
    let url = rx.start().await;
    let types = ["step_completed", "plan_completed"];
    let hook = WebhookConfig {
        url: url.clone(),
        events: types.iter().map(|t| t.to_string()).collect(),
        secret: Some("s3cret".into()),
    };
    let task = spawn_webhooks(s.engine.clone(), vec![hook]);
    wait_cursor(&s.store, &url).await;
    // The first delivery is refused twice, then accepted.
    rx.fail.store(2, Ordering::SeqCst);
    s.run("pa", 3, 0).await;
    s.settled("pa").await;
    let stored = s.all_events().await;
    let want = ids_of(&stored, &types);
    assert_eq!(want.len(), 4);
    rx.wait_for(&want).await;
    assert_eq!(
        rx.failed.load(Ordering::SeqCst),
        2,
        "two refusals were retried"
    );
    for (h, body) in rx.got.lock().unwrap().iter() {
        let event: Value = serde_json::from_slice(body).unwrap();
        let ty = event["type"].as_str().unwrap();
        assert!(types.contains(&ty), "unwanted {ty} delivered");
        assert_eq!(h["x-cairn-event"], ty);
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(
            h["x-cairn-delivery"].to_str().unwrap(),
            event["id"].to_string()
        );
        assert_eq!(
            h["x-cairn-signature"].to_str().unwrap(),
            signature("s3cret", body)
        );
        let stored_e = stored.iter().find(|e| e["id"] == event["id"]).unwrap();
        assert_eq!(&event, stored_e, "the body is the event JSON");
    }
    task.abort();
}

#[tokio::test]
async fn webhook_restart_loses_nothing() {
    let s = server().await;
    let rx = Receiver::default();
    let url = rx.start().await;
    let hook = WebhookConfig {
        url: url.clone(),
        events: vec!["*".into()],
        secret: None,
    };
    let task = spawn_webhooks(s.engine.clone(), vec![hook.clone()]);
    wait_cursor(&s.store, &url).await;
    s.run("pa", 3, 5).await;
    s.settled("pa").await;
    // Stop mid-way (or after): whatever was not confirmed is delivered after the restart.
    let deadline = tokio::time::Instant::now() + WAIT;
    while rx.delivered_ids().is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    let _ = task.await;
    // Events while no delivery task runs.
    s.run("pb", 3, 0).await;
    s.settled("pb").await;
    let task = spawn_webhooks(s.engine.clone(), vec![hook]);
    s.run("pc", 2, 0).await;
    s.settled("pc").await;
    let stored = s.all_events().await;
    rx.wait_for(&ids_of(&stored, &["*"])).await;
    // Per webhook, in order: the first time each id arrives, ids increase.
    let mut firsts = Vec::new();
    let mut seen = HashSet::new();
    for (h, _) in rx.got.lock().unwrap().iter() {
        let id: u64 = h["x-cairn-delivery"].to_str().unwrap().parse().unwrap();
        if seen.insert(id) {
            firsts.push(id);
        }
    }
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{firsts:?}");
    task.abort();
}

impl SseClient {
    /// Frames until the server ends the stream (within [`WAIT`]).
    async fn rest(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        loop {
            if self.buf.contains("\n\n") {
                out.push(self.next().await);
                continue;
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("the stream neither ended nor sent anything in time")
                .unwrap();
            match chunk {
                Some(c) => self.buf.push_str(std::str::from_utf8(&c).unwrap()),
                None => return out,
            }
        }
    }
}

/// A per-plan stream ends after an ended plan's last event (whether the plan ended before the
/// stream began or while it was live), unless the client asks to follow.
#[tokio::test]
async fn an_ended_plans_stream_ends_after_its_last_event_unless_following() {
    let s = server().await;
    // Ends while the stream is live.
    s.engine.register(plan("pe", 2, 20), "t").await.unwrap();
    let mut live = s.sse("/v1/plans/pe/events/stream", None).await;
    s.engine.start("pe", "t", None).await.unwrap();
    let frames: Vec<Frame> = live.rest().await;
    s.settled("pe").await;
    let stored = s.plan_events("pe").await;
    let last = stored.last().unwrap()["seq"].as_u64().unwrap();
    assert_eq!(
        frames.iter().filter_map(|f| f.id).collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>(),
        "every event, then the end"
    );
    assert_eq!(frames.last().unwrap().event, "plan_completed");

    // Ended before the stream began: its history, then the end.
    let mut past = s.sse("/v1/plans/pe/events/stream", None).await;
    assert_eq!(past.rest().await.len() as u64, last);

    // Following: the stream stays open, and a later event of the ended plan comes through.
    let mut follow = s.sse("/v1/plans/pe/events/stream?follow=true", None).await;
    follow.until_id(last).await;
    s.engine
        .create_checkpoint("pe", Some("after".into()), "t", None)
        .await
        .unwrap();
    let next = follow.next().await;
    assert_eq!(next.id, Some(last + 1));
    assert_eq!(next.event, "checkpoint_created");
}

/// Subscribing a WebSocket to a plan that does not exist answers an error frame and keeps the
/// subscription in force.
#[tokio::test]
async fn websocket_subscription_to_an_unknown_plan_answers_an_error_frame() {
    let s = server().await;
    s.run("pk", 1, 0).await;
    s.settled("pk").await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?token={}", s.addr, s.token))
            .await
            .unwrap();
    ws_send(&mut ws, r#"{"subscribe": ["pk"], "after": 0}"#).await;
    let ack = ws_next(&mut ws).await;
    assert_eq!(ack["subscribed"]["plans"], json!(["pk"]), "{ack}");
    let first = ws_next(&mut ws).await;
    assert_eq!(first["event"]["plan_id"], "pk", "{first}");
    ws_send(&mut ws, r#"{"subscribe": ["pk", "nope"]}"#).await;
    let err = loop {
        let m = ws_next(&mut ws).await;
        if m.get("error").is_some() {
            break m;
        }
        assert_eq!(
            m["event"]["plan_id"], "pk",
            "only pk's events before the answer: {m}"
        );
    };
    assert_eq!(err["error"]["code"], "plan_not_found", "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("nope"));
    // The old subscription holds: a new event of pk still arrives.
    s.engine
        .create_checkpoint("pk", None, "t", None)
        .await
        .unwrap();
    loop {
        let m = ws_next(&mut ws).await;
        if m["event"]["type"] == "checkpoint_created" {
            assert_eq!(m["event"]["plan_id"], "pk");
            break;
        }
    }
}
