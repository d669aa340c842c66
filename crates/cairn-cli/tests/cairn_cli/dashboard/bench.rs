//! The dashboard's performance figures (BENCHMARKS.md): a benchmark, never a timed assertion.
//! Every test here is `#[ignore]`d; run them on a release build:
//!
//! ```text
//! cargo test --release -p cairn-cli --test cairn_cli dashboard::bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! Each prints one JSON line per figure (`{"figure": …, …}`). The pages mark
//! `performance.mark('cairn:ready')` once their first screen is painted (app.js) and count the
//! events they received and the refreshes they made in `window.cairnStats` (api.js); the figures
//! are read from those. `CAIRN_BENCH_MINUTES` (default 1) is how long the live figure runs.
//! Everything is bounded: a page that never becomes ready fails the run instead of hanging it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::harness::{skipped, Browser, Serve, WAIT};

/// Loads of a page per first-screen figure; the median is reported.
const LOADS: usize = 7;

fn minutes() -> f64 {
    std::env::var("CAIRN_BENCH_MINUTES")
        .ok()
        .and_then(|m| m.parse::<f64>().ok())
        .filter(|m| *m > 0.0)
        .unwrap_or(1.0)
}

fn figure(v: Value) {
    println!("{v}");
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Registers `plan` with a client that waits long enough for a large one.
async fn register(serve: &Serve, plan: &Value) {
    let res = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
        .post(format!("{}/v1/plans", serve.base))
        .json(plan)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{:?}", res.text().await);
}

/// Opens `path` in a fresh document and answers the milliseconds from navigation start to the
/// page's `cairn:ready` mark.
async fn ready_ms(b: &Browser, base: &str, path: &str) -> f64 {
    b.client.goto("about:blank").await.unwrap();
    b.open(base, path).await;
    let deadline = Instant::now() + WAIT * 3;
    loop {
        let v = b
            .js(
                "const m = performance.getEntriesByName('cairn:ready'); \
                 return m.length ? m[0].startTime : null",
                vec![],
            )
            .await;
        if let Some(ms) = v.as_f64() {
            if ms > 5000.0 {
                // A slow load: which requests waited, and for what (resource timing).
                let slow = b
                    .js(
                        "return performance.getEntriesByType('resource')\
                         .filter((r) => r.duration > 1000).map((r) => ({name: r.name, \
                         start: r.startTime, connect: r.connectStart, request: r.requestStart, \
                         response: r.responseStart, end: r.responseEnd}))",
                        vec![],
                    )
                    .await;
                eprintln!("{path}: ready after {ms} ms; slow requests: {slow}");
            }
            return ms;
        }
        assert!(Instant::now() < deadline, "{path}: never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn first_screen(b: &Browser, base: &str, path: &str, check: &str, want: &str) -> Vec<f64> {
    let mut times = Vec::new();
    for _ in 0..LOADS {
        times.push(ready_ms(b, base, path).await);
        // What was ready is the real first screen, not a placeholder.
        let t = b.text(check).await;
        assert!(t.contains(want), "{path}: {check} reads {t:?} when ready");
    }
    times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --release -- --ignored --nocapture"]
async fn first_screen_of_the_plans_list_and_of_a_ten_thousand_step_plan() {
    if skipped() {
        return;
    }
    let serve = Serve::start(&["--no-auth"]);
    let t0 = Instant::now();
    for i in 0..1000 {
        let steps: Vec<Value> = (0..5)
            .map(|j| json!({"step_id": format!("s{j}"), "action": "x", "agent_type": "builtin.echo"}))
            .collect();
        serve
            .post(
                "/v1/plans",
                json!({"plan_id": format!("p{i:04}"), "steps": steps}),
            )
            .await;
    }
    eprintln!("1,000 plans registered in {:?}", t0.elapsed());
    // 100 levels of 100 steps, as the browser test of the same plan.
    let steps: Vec<Value> = (0..10_000)
        .map(|i| {
            let deps = if i < 100 {
                json!([])
            } else {
                json!([format!("s{}", i - 100)])
            };
            json!({"step_id": format!("s{i}"), "action": "x", "agent_type": "builtin.echo",
                   "depends_on": deps})
        })
        .collect();
    register(&serve, &json!({"plan_id": "big", "steps": steps})).await;

    let b = Browser::start("bench_first").await;
    let list = first_screen(&b, &serve.base, "/#/plans", "#plans-page", "1–50").await;
    figure(
        json!({"figure": "first_screen_ms", "page": "plans list", "plans": 1001,
                  "median": median(list.clone()), "loads": list}),
    );
    let plan = first_screen(&b, &serve.base, "/#/plans/big", "#steps-page", "of 10,000").await;
    figure(
        json!({"figure": "first_screen_ms", "page": "plan", "steps": 10_000,
                  "median": median(plan.clone()), "loads": plan, "target": 1000}),
    );
    b.finish().await;
}

/// The sum of the server's `cairn_events_total` (every committed event, by type).
async fn server_events(serve: &Serve) -> u64 {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", serve.base))
        .timeout(WAIT)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("cairn_events_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn page_stats(b: &Browser) -> (u64, u64, u64) {
    let v = b
        .js(
            "const s = window.cairnStats || {}; \
             return [s.events || 0, s.refreshes || 0, \
                     (performance.memory && performance.memory.usedJSHeapSize) || 0]",
            vec![],
        )
        .await;
    let n = |i: usize| v[i].as_f64().unwrap_or(0.0) as u64;
    (n(0), n(1), n(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --release -- --ignored --nocapture"]
async fn open_pages_keep_up_with_a_thousand_running_plans() {
    if skipped() {
        return;
    }
    let window = Duration::from_secs_f64(minutes() * 60.0);
    // Every plan is a chain of sleeps that lasts past the window, so all 1,000 run throughout.
    let sleep_ms = 2000u64;
    let chain = window.as_millis() as u64 / sleep_ms + 10;
    let serve = Serve::start(&["--no-auth"]);
    let chain_plan = |id: String, chains: u64, len: u64, ms: u64| {
        let mut steps = Vec::new();
        for c in 0..chains {
            for j in 0..len {
                let mut s = json!({"step_id": format!("c{c}s{j}"), "action": "x",
                                   "agent_type": "builtin.sleep", "params": {"ms": ms}});
                // A step without `depends_on` waits for the one before it: say it.
                s["depends_on"] = if j > 0 {
                    json!([format!("c{c}s{}", j - 1)])
                } else {
                    json!([])
                };
                steps.push(s);
            }
        }
        json!({"plan_id": id, "steps": steps, "max_parallel": chains})
    };
    let t0 = Instant::now();
    for i in 0..1000 {
        register(&serve, &chain_plan(format!("p{i:04}"), 1, chain, sleep_ms)).await;
    }
    // The plan whose page is open: 100 chains at once, at most 50 steps each (the server takes
    // bodies up to 1 MiB), their sleeps longer in a long run so that it lasts as long.
    let busy_len = chain.min(50);
    let busy_ms = sleep_ms * chain / busy_len;
    register(&serve, &chain_plan("busy".into(), 100, busy_len, busy_ms)).await;
    eprintln!("plans registered in {:?}", t0.elapsed());

    let list = Browser::start("bench_live_list").await;
    list.open(&serve.base, "/#/plans").await;
    list.until_text("#plans-page", "the list", |t| t.contains("1–50"))
        .await;
    let plan = Browser::start("bench_live_plan").await;
    plan.open(&serve.base, "/#/plans/busy").await;
    plan.until_text("#steps-page", "the steps", |t| t.contains("of "))
        .await;

    let s0 = server_events(&serve).await;
    let (l0, lr0, _) = page_stats(&list).await;
    let (p0, pr0, _) = page_stats(&plan).await;
    let busy0 = serve.get("/v1/plans/busy").await["last_seq"]
        .as_u64()
        .unwrap_or(0);
    let start = Instant::now();
    // Waves of 100 plans a second; the busy plan first.
    serve.post("/v1/plans/busy/start", json!({})).await;
    for wave in 0..10 {
        for i in wave * 100..(wave + 1) * 100 {
            serve
                .post(&format!("/v1/plans/p{i:04}/start"), json!({}))
                .await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut heap = Vec::new();
    while start.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(10).min(window.saturating_sub(start.elapsed())))
            .await;
        let (_, _, lh) = page_stats(&list).await;
        let (_, _, ph) = page_stats(&plan).await;
        heap.push(json!({"s": start.elapsed().as_secs(), "list": lh, "plan": ph}));
    }
    let secs = start.elapsed().as_secs_f64();
    let s1 = server_events(&serve).await;
    let busy1 = serve.get("/v1/plans/busy").await["last_seq"]
        .as_u64()
        .unwrap_or(0);
    let (l1, lr1, lh) = page_stats(&list).await;
    let (p1, pr1, ph) = page_stats(&plan).await;
    // A few seconds more: what the pages have not caught up with by then, they lag behind.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (l2, _, _) = page_stats(&list).await;
    let (p2, _, _) = page_stats(&plan).await;
    let rate = |n: u64| (n as f64 / secs * 10.0).round() / 10.0;
    figure(
        json!({"figure": "events_per_second", "page": "plans list", "plans": 1000,
                  "seconds": secs.round(), "server_rate": rate(s1 - s0),
                  "page_rate": rate(l1 - l0), "server_events": s1 - s0,
                  "page_events": l1 - l0, "page_events_5s_later": l2 - l0,
                  "refreshes": lr1 - lr0}),
    );
    figure(
        json!({"figure": "events_per_second", "page": "plan", "steps": 100 * busy_len, "sleep_ms": busy_ms,
                  "seconds": secs.round(), "plan_rate": rate(busy1 - busy0),
                  "page_rate": rate(p1 - p0), "plan_events": busy1 - busy0,
                  "page_events": p1 - p0, "page_events_5s_later": p2 - p0,
                  "refreshes": pr1 - pr0}),
    );
    figure(
        json!({"figure": "js_heap_bytes", "minutes": minutes(), "list": lh, "plan": ph,
                  "samples": heap}),
    );
    list.finish().await;
    plan.finish().await;
}
