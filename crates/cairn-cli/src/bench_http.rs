//! The HTTP workloads of `cairn bench` (issue: the server's figures): control latency while
//! 1,000 plans run, and GET-state and intervention throughput over loopback. The server runs in
//! this process on 127.0.0.1 with authentication on; the load generator shares the machine's
//! cores with it, so the figures are a floor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_engine::EngineOptions;
use cairn_server::{AppState, Authenticator, Role};
use serde_json::{json, Value};

use crate::bench::{Db, Target};
use crate::Fail;

fn err(e: impl std::fmt::Display) -> Fail {
    Fail::from(anyhow::anyhow!("{e}"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

struct Http {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Http {
    async fn post(&self, path: &str, body: Value) -> Result<(u16, Value), Fail> {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .map_err(err)?;
        let status = r.status().as_u16();
        let v = r.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, v))
    }

    async fn get(&self, path: &str) -> Result<u16, Fail> {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(err)?;
        let status = r.status().as_u16();
        let _ = r.bytes().await;
        Ok(status)
    }
}

fn plan(id: &str, steps: usize, ms: u64) -> Value {
    json!({
        "plan_id": id,
        "query": "bench",
        "steps": (0..steps).map(|j| json!({"step_id": format!("s{j}"), "action": "bench", "agent_type": "builtin.sleep", "params": {"ms": ms}})).collect::<Vec<_>>(),
    })
}

/// An engine over a fresh SQLite file, served on 127.0.0.1 with an admin token.
struct Bench {
    engine: cairn_engine::Engine,
    token: String,
    addr: std::net::SocketAddr,
    stop_tx: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Bench {
    async fn start(target: &Target) -> Result<Bench, Fail> {
        let db = Db::open(target).await?;
        let store = db.store();
        let engine = cairn_engine::Engine::open(
            store.clone(),
            cairn_engine::executor::Registry::with_builtins(),
            EngineOptions::default(),
        )
        .await?;
        let admin = cairn_server::auth::create_token(&*store, "bench", Role::Admin)
            .await
            .map_err(err)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        let state = AppState::new(engine.clone(), Authenticator::new(store.clone()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(cairn_server::serve(listener, state, async move {
            let _ = stop_rx.await;
        }));
        Ok(Bench {
            engine,
            token: admin.token,
            addr,
            stop_tx,
            server,
        })
    }
}

pub async fn run(
    plans: usize,
    requests: usize,
    target: &Target,
    peak_rss: fn() -> f64,
) -> Result<Vec<Value>, Fail> {
    let Bench {
        engine,
        token,
        addr,
        stop_tx,
        server,
    } = Bench::start(target).await?;
    let http = Arc::new(Http {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .map_err(err)?,
        base: format!("http://{addr}/v1"),
        token,
    });

    // Plans that stay busy: 1,000 plans of thirty 1 s sleeping steps (long enough to outlast
    // the measurement on PostgreSQL as well).
    let ids: Vec<String> = (0..plans).map(|i| format!("busy-{i}")).collect();
    let mut set = tokio::task::JoinSet::new();
    for id in ids.clone() {
        let h = http.clone();
        set.spawn(async move {
            let (s, v) = h.post("/plans", plan(&id, 30, 1000)).await?;
            if s != 201 {
                return Err(err(format!("register {id}: {s} {v}")));
            }
            let (s, v) = h.post(&format!("/plans/{id}/start"), json!({})).await?;
            if s != 200 {
                return Err(err(format!("start {id}: {s} {v}")));
            }
            Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(err)??;
    }

    // Control latency, one request at a time, while the plans run.
    let n = requests.min(plans);
    let (mut pause, mut intervene, mut resume, mut cancel) = (vec![], vec![], vec![], vec![]);
    for (k, id) in ids.iter().take(n).enumerate() {
        let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let (s, _) = http.post(&format!("/plans/{id}/pause"), json!({})).await?;
        pause.push(ms(t));
        if s != 200 {
            return Err(err(format!("pause {id}: {s}")));
        }
        let t = Instant::now();
        let (s, v) = http
            .post(
                &format!("/plans/{id}/interventions"),
                json!({"type": "add_step", "step": {"step_id": format!("extra-{k}"), "action": "bench", "agent_type": "builtin.echo"}}),
            )
            .await?;
        intervene.push(ms(t));
        if s != 201 {
            return Err(err(format!("intervene {id}: {s} {v}")));
        }
        let t = Instant::now();
        http.post(&format!("/plans/{id}/resume"), json!({})).await?;
        resume.push(ms(t));
    }

    // GET state throughput: 64 clients for 3 s.
    let get_count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut set = tokio::task::JoinSet::new();
    for c in 0..64 {
        let h = http.clone();
        let count = get_count.clone();
        let ids = ids.clone();
        set.spawn(async move {
            let mut i = c;
            while Instant::now() < deadline {
                let s = h.get(&format!("/plans/{}", ids[i % ids.len()])).await?;
                if s != 200 {
                    return Err(err(format!("get: {s}")));
                }
                count.fetch_add(1, Ordering::Relaxed);
                i += 64;
            }
            Ok::<(), Fail>(())
        });
    }
    let t = Instant::now();
    while let Some(r) = set.join_next().await {
        r.map_err(err)??;
    }
    let get_rps = get_count.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();

    // Intervention throughput: 64 clients, each adding steps to its own paused plan for 3 s.
    let iv_count = Arc::new(AtomicU64::new(0));
    let paused: Vec<String> = ids.iter().rev().take(64).cloned().collect();
    for id in &paused {
        http.post(&format!("/plans/{id}/pause"), json!({})).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut set = tokio::task::JoinSet::new();
    for id in paused.clone() {
        let h = http.clone();
        let count = iv_count.clone();
        set.spawn(async move {
            let mut k = 0u64;
            while Instant::now() < deadline {
                let (s, v) = h
                    .post(
                        &format!("/plans/{id}/interventions"),
                        json!({"type": "add_step", "step": {"step_id": format!("x{k}"), "action": "bench", "agent_type": "builtin.echo"}}),
                    )
                    .await?;
                if s != 201 {
                    return Err(err(format!("intervene {id}: {s} {v}")));
                }
                count.fetch_add(1, Ordering::Relaxed);
                k += 1;
            }
            Ok::<(), Fail>(())
        });
    }
    let t = Instant::now();
    while let Some(r) = set.join_next().await {
        r.map_err(err)??;
    }
    let iv_rps = iv_count.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();

    for id in ids.iter().take(n) {
        let t = Instant::now();
        http.post(&format!("/plans/{id}/cancel"), json!({})).await?;
        cancel.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    engine.shutdown().await;

    let mut out = Vec::new();
    for (name, mut v) in [
        ("pause", pause),
        ("intervention", intervene),
        ("resume", resume),
        ("cancel", cancel),
    ] {
        v.sort_by(f64::total_cmp);
        out.push(json!({
            "workload": format!("http_{name}"), "steps": 0, "wall_s": round(v.iter().sum::<f64>() / 1e3, 3),
            "steps_per_sec": 0, "peak_rss_mb": peak_rss(), "requests": v.len(), "running_plans": plans,
            "p50_ms": round(percentile(&v, 0.5), 3), "p99_ms": round(percentile(&v, 0.99), 3),
        }));
    }
    out.push(json!({
        "workload": "http_get_state", "steps": 0, "wall_s": 3.0, "steps_per_sec": 0, "peak_rss_mb": peak_rss(),
        "clients": 64, "requests_per_sec": round(get_rps, 0), "running_plans": plans,
    }));
    out.push(json!({
        "workload": "http_intervention_rate", "steps": 0, "wall_s": 3.0, "steps_per_sec": 0, "peak_rss_mb": peak_rss(),
        "clients": 64, "requests_per_sec": round(iv_rps, 0), "running_plans": plans,
    }));
    Ok(out)
}

/// SSE fan-out: `subscribers` clients follow `GET /v1/events/stream` while 100 plans of 10 echo
/// steps run; reports events delivered per second across all subscribers and the memory it cost.
pub async fn sse(
    subscribers: usize,
    target: &Target,
    peak_rss: fn() -> f64,
) -> Result<Vec<Value>, Fail> {
    let Bench {
        engine,
        token,
        addr,
        stop_tx,
        server,
    } = Bench::start(target).await?;
    let rss_before = peak_rss();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(subscribers + 16)
        .build()
        .map_err(err)?;
    let base = format!("http://{addr}/v1");
    let plans = 100usize;
    let steps = 10usize;
    // Events per plan: registered, started, 10 x (started + completed), completed.
    let expected = (plans * (3 + 2 * steps)) as u64;
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = tokio::task::JoinSet::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(subscribers);
    for _ in 0..subscribers {
        let client = client.clone();
        let url = format!("{base}/events/stream");
        let token = token.clone();
        let delivered = delivered.clone();
        let ready = ready_tx.clone();
        readers.spawn(async move {
            let mut resp = client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .map_err(err)?;
            let _ = ready.send(()).await;
            let mut seen = 0u64;
            let mut buf = Vec::new();
            while seen < expected {
                let Some(chunk) = resp.chunk().await.map_err(err)? else {
                    break;
                };
                buf.extend_from_slice(&chunk);
                // Count complete frames that carry an event.
                while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                    let frame: Vec<u8> = buf.drain(..end + 2).collect();
                    if frame.starts_with(b"id:") || frame.windows(4).any(|w| w == b"\nid:") {
                        seen += 1;
                    }
                }
            }
            delivered.fetch_add(seen, Ordering::Relaxed);
            Ok::<(), Fail>(())
        });
    }
    drop(ready_tx);
    let mut connected = 0;
    while connected < subscribers && ready_rx.recv().await.is_some() {
        connected += 1;
    }
    let t = Instant::now();
    for i in 0..plans {
        let body = json!({
            "plan_id": format!("fan-{i}"),
            "steps": (0..steps).map(|j| json!({"step_id": format!("s{j}"), "action": "bench", "agent_type": "builtin.echo"})).collect::<Vec<_>>(),
        });
        let r = client
            .post(format!("{base}/plans"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .map_err(err)?;
        if r.status().as_u16() != 201 {
            return Err(err(format!("register: {}", r.status())));
        }
        client
            .post(format!("{base}/plans/fan-{i}/start"))
            .bearer_auth(&token)
            .send()
            .await
            .map_err(err)?;
    }
    while let Some(r) = readers.join_next().await {
        r.map_err(err)??;
    }
    let wall = t.elapsed().as_secs_f64();
    let total = delivered.load(Ordering::Relaxed);
    let _ = stop_tx.send(());
    server.abort();
    engine.shutdown().await;
    Ok(vec![json!({
        "workload": "sse_fanout", "steps": plans * steps, "wall_s": round(wall, 3),
        "steps_per_sec": round((plans * steps) as f64 / wall, 0), "peak_rss_mb": peak_rss(),
        "subscribers": subscribers, "events_per_subscriber": expected,
        "events_delivered": total, "deliveries_per_sec": round(total as f64 / wall, 0),
        "rss_before_subscribers_mb": rss_before,
    })])
}
