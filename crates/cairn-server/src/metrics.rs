//! Prometheus metrics (`GET /metrics`), derived off the engine's hot path.
//!
//! Nothing here is called by the engine: [`spawn`] follows the events the engine commits
//! (`Engine::subscribe_local`: in a cluster, this node's own, so no node orders and decodes
//! every other node's events for its counters) and turns them into counters and histograms,
//! and every few seconds reads plan counts and the store's writer counters (its commits'
//! histogram, `cairn_store_commit_seconds`, is read at each scrape). HTTP metrics come
//! from [`track`], a middleware labelled by the matched route (never the raw path, so ids
//! cannot explode the label set).
//!
//! The recorder is process-global ([`handle`] installs it once); the exporter's own HTTP
//! listener is not used (default features off): the API renders the handle at `/metrics`.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_core::{Event, EventKind, Timestamp};
use cairn_engine::{Engine, Notice};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// How often plan counts and store counters are refreshed.
pub const REFRESH: Duration = Duration::from_secs(5);

/// Histogram buckets (seconds) for step, pause and HTTP durations.
const STEP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
const PAUSE_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 604800.0,
];
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Most started attempts remembered for durations; beyond it the oldest plans are forgotten.
const MAX_TRACKED_PLANS: usize = 100_000;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus handle, installing the recorder on first use. If another
/// recorder was installed first, the handle still renders (only what this crate's recorder saw,
/// i.e. nothing) rather than failing.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = [
            ("cairn_step_duration_seconds", STEP_BUCKETS),
            ("cairn_pause_duration_seconds", PAUSE_BUCKETS),
            ("cairn_review_wait_seconds", PAUSE_BUCKETS),
            ("cairn_http_request_duration_seconds", HTTP_BUCKETS),
        ]
        .into_iter()
        .fold(builder, |b, (name, buckets)| {
            b.set_buckets_for_metric(Matcher::Full(name.into()), buckets)
                .expect("bucket lists are not empty")
        });
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "cairn_steps_total",
        "Step attempts that ended, by agent type and outcome"
    );
    describe_histogram!(
        "cairn_step_duration_seconds",
        Unit::Seconds,
        "Time from step_started to step_completed/step_failed"
    );
    describe_histogram!(
        "cairn_pause_duration_seconds",
        Unit::Seconds,
        "Time from plan_paused to plan_resumed"
    );
    describe_counter!(
        "cairn_interventions_total",
        "Interventions recorded, by type and status"
    );
    describe_counter!(
        "cairn_gate_evaluations_total",
        "Quality gate verdicts on step attempts, by agent type and verdict (passed, failed)"
    );
    describe_gauge!("cairn_reviews_open", "Reviews waiting for a decision");
    describe_gauge!(
        "cairn_review_oldest_open_seconds",
        Unit::Seconds,
        "How long the oldest open review has waited (0: none open)"
    );
    describe_histogram!(
        "cairn_review_wait_seconds",
        Unit::Seconds,
        "Time from review_opened to the review's close (approved, rejected, timed out, voided), by outcome"
    );
    describe_counter!("cairn_plans_started_total", "plan_started events");
    describe_counter!(
        "cairn_plans_finished_total",
        "Plans that ended, by final state"
    );
    describe_counter!(
        "cairn_compensations_total",
        "Compensation attempts of rollbacks, by outcome: started, completed, retried (failed, tried again by its policy), failed (for good: the rollback stopped)"
    );
    describe_counter!(
        "cairn_rollbacks_total",
        "Rollbacks, by outcome: started (or continued), completed, failed (a compensation failed for good)"
    );
    describe_counter!("cairn_events_total", "Committed events, by type");
    describe_counter!(
        "cairn_events_lagged_total",
        "Events the metrics follower missed"
    );
    describe_gauge!("cairn_plans", "Plans in the store, by state");
    describe_gauge!(
        "cairn_plan_progress_age_seconds",
        Unit::Seconds,
        "Longest time a running plan has gone without a step starting or ending (0: none running)"
    );
    describe_gauge!(
        "cairn_tasks_queued",
        "Remote tasks waiting for a worker, by agent type"
    );
    describe_counter!("cairn_store_commits_total", "Store transactions committed");
    describe_counter!(
        "cairn_store_appends_total",
        "Store write requests (creates and appends) committed"
    );
    describe_counter!("cairn_store_events_total", "Events written by the store");
    describe_gauge!(
        "cairn_store_batch_size",
        "Mean write requests per store commit"
    );
    describe_gauge!(
        "cairn_store_batch_size_max",
        "Largest write batch committed"
    );
    describe_counter!(
        "cairn_store_inline_commits_total",
        "Store commits made by the request's own task, the writer being idle"
    );
    describe_gauge!(
        "cairn_store_commit_busy_seconds_total",
        Unit::Seconds,
        "Time spent committing (monotonic; a gauge because it is fractional)"
    );
    describe_counter!(
        "cairn_http_requests_total",
        "HTTP requests, by route, method and status"
    );
    describe_counter!(
        "cairn_cluster_forwards_served_total",
        "Commands other nodes forwarded to this node"
    );
    describe_counter!(
        "cairn_cluster_forwards_refused_total",
        "Forwarded requests refused for a wrong or missing cluster secret"
    );
    describe_gauge!(
        "cairn_node_leases_held",
        "Plans this node drives now (each under its lease)"
    );
    describe_counter!(
        "cairn_node_takeovers_total",
        "Plans this node took over after their owner's lease ran out"
    );
    describe_counter!(
        "cairn_node_forwarded_total",
        "Commands this node forwarded to the node owning their plan and got an answer for"
    );
    describe_counter!(
        "cairn_node_forward_failures_total",
        "Forwarding attempts that got no answer (the owner unreachable or refusing)"
    );
    describe_gauge!(
        "cairn_node_inbox_depth",
        "Messages waiting in the mailboxes of this node's plan actors"
    );
    describe_counter!(
        "cairn_node_overloaded_total",
        "Commands refused (429 `overloaded`) because the engine's limit of waiting commands was reached"
    );
    describe_counter!(
        "cairn_node_plan_loads_total",
        "Plans this node read from the store to drive them (a command for a plan not live here)"
    );
    describe_gauge!(
        "cairn_cluster_nodes",
        "Nodes sharing the store as this node sees them, by liveness"
    );
    describe_histogram!(
        "cairn_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency, by route and method"
    );
}

/// The text exposition of every metric.
pub fn render() -> String {
    handle().render()
}

/// `cairn_store_commit_seconds`, the histogram of the store's commits by the time each took
/// (`BEGIN` to the end of `COMMIT`, one observation per batch), in the text exposition
/// format: read from the store's own counters when asked, not recorded sample by sample (the
/// writer counts each batch in a fixed bucket; see [`cairn_store::COMMIT_BUCKETS_US`]).
/// Empty for a store that keeps no counters.
pub fn commit_histogram(stats: Option<&cairn_store::StoreStats>) -> String {
    use std::fmt::Write;
    let Some(stats) = stats else {
        return String::new();
    };
    let mut out = String::from(
        "# HELP cairn_store_commit_seconds Time of each store commit, BEGIN to the end of COMMIT (one per batch)\n\
         # TYPE cairn_store_commit_seconds histogram\n",
    );
    let mut seen = 0u64;
    for (bound, n) in cairn_store::COMMIT_BUCKETS_US
        .iter()
        .zip(&stats.commit_times)
    {
        seen += n;
        let le = *bound as f64 / 1e6;
        let _ = writeln!(
            out,
            "cairn_store_commit_seconds_bucket{{le=\"{le}\"}} {seen}"
        );
    }
    seen += stats.commit_times.last().copied().unwrap_or(0);
    let _ = writeln!(
        out,
        "cairn_store_commit_seconds_bucket{{le=\"+Inf\"}} {seen}"
    );
    let _ = writeln!(out, "cairn_store_commit_seconds_sum {}", stats.busy_seconds);
    let _ = writeln!(out, "cairn_store_commit_seconds_count {seen}");
    out
}

/// `GET /metrics`: Prometheus metrics in the text exposition format.
#[utoipa::path(get, operation_id = "metrics", path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String)))]
pub async fn endpoint(axum::extract::State(s): axum::extract::State<crate::AppState>) -> Response {
    let mut text = render();
    text.push_str(&commit_histogram(s.engine.store().stats().as_ref()));
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

/// Sets `cairn_tasks_queued{agent_type}`: called by the remote worker queue whenever the
/// number of tasks waiting for `agent_type` changes.
pub fn set_tasks_queued(agent_type: &str, n: usize) {
    handle();
    gauge!("cairn_tasks_queued", "agent_type" => agent_type.to_owned()).set(n as f64);
}

/// `cairn_cluster_forwards_served_total{node}`: a command another node forwarded here.
pub fn forward_served(node: &str) {
    handle();
    counter!("cairn_cluster_forwards_served_total", "node" => node.to_owned()).increment(1);
}

/// `cairn_cluster_forwards_refused_total{node}`: a forwarded request refused for a wrong or
/// missing cluster secret.
pub fn forward_refused(node: &str) {
    handle();
    counter!("cairn_cluster_forwards_refused_total", "node" => node.to_owned()).increment(1);
}

/// Reads this node's share of the cluster once, labelled with its id: from the engine,
/// `cairn_node_leases_held`, `cairn_node_takeovers_total`, `cairn_node_forwarded_total`,
/// `cairn_node_forward_failures_total`, `cairn_node_inbox_depth`, `cairn_node_overloaded_total`
/// and `cairn_node_plan_loads_total`; from the store's node
/// list, `cairn_cluster_nodes{node, alive}` (the nodes it sees, by liveness).
pub async fn refresh_node(engine: &Engine, me: &crate::cluster::NodeIdentity) {
    handle();
    let node = me.node_id.clone();
    let stats = engine.node_stats();
    gauge!("cairn_node_leases_held", "node" => node.clone()).set(stats.leases_held as f64);
    counter!("cairn_node_takeovers_total", "node" => node.clone()).absolute(stats.takeovers_total);
    counter!("cairn_node_forwarded_total", "node" => node.clone()).absolute(stats.forwarded_total);
    counter!("cairn_node_forward_failures_total", "node" => node.clone())
        .absolute(stats.forward_failures_total);
    gauge!("cairn_node_inbox_depth", "node" => node.clone()).set(stats.inbox_depth as f64);
    counter!("cairn_node_overloaded_total", "node" => node.clone())
        .absolute(stats.overloaded_total);
    counter!("cairn_node_plan_loads_total", "node" => node.clone())
        .absolute(stats.plan_loads_total);
    let rows = match engine.store().list_nodes().await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::debug!(error = %e, "the node list is not available from this store");
            return;
        }
    };
    let list = crate::cluster::node_list(rows, me, cairn_engine::now_micros());
    let alive = list.nodes.iter().filter(|n| n.alive).count();
    gauge!("cairn_cluster_nodes", "node" => node.clone(), "alive" => "true").set(alive as f64);
    gauge!("cairn_cluster_nodes", "node" => node, "alive" => "false")
        .set((list.nodes.len() - alive) as f64);
}

/// Refreshes [`refresh_node`]'s gauges every `every`, for as long as the task runs.
pub fn spawn_node(
    engine: Engine,
    me: crate::cluster::NodeIdentity,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            refresh_node(&engine, &me).await;
        }
    })
}

/// Middleware: `cairn_http_requests_total{route, method, status}`,
/// `cairn_http_request_duration_seconds{route, method}` and one info log line per request.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    counter!("cairn_http_requests_total",
        "route" => route.clone(), "method" => method.clone(), "status" => status.to_string())
    .increment(1);
    histogram!("cairn_http_request_duration_seconds",
        "route" => route.clone(), "method" => method.clone())
    .record(elapsed.as_secs_f64());
    tracing::info!(
        target: "cairn_server::http",
        %method,
        %route,
        status,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// Starts the tasks that derive metrics from `engine`: one follows the events it commits, one
/// refreshes plan counts and store counters every [`REFRESH`]. They stop when the engine's
/// event stream closes. The subscription is taken before this returns, so every event
/// committed afterwards is counted.
pub fn spawn(engine: Engine) {
    spawn_every(engine, REFRESH)
}

/// [`spawn`] with another refresh period (tests).
pub fn spawn_every(engine: Engine, every: Duration) {
    handle();
    let mut sub = engine.subscribe_local();
    let refresher = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut warned = false;
            loop {
                tick.tick().await;
                refresh(&engine, &mut warned).await;
            }
        })
    };
    tokio::spawn(async move {
        let mut f = Follower::new(engine);
        f.seed_running().await;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                notice = sub.next() => match notice {
                    Some(Notice::Event(e)) => f.observe(&e).await,
                    Some(Notice::Lagged { missed, .. }) => {
                        counter!("cairn_events_lagged_total").increment(missed);
                    }
                    None => break,
                },
                _ = tick.tick() => f.publish_progress_age(cairn_engine::now()),
            }
        }
        refresher.abort();
    });
}

/// Reads plan counts and store counters once.
pub async fn refresh(engine: &Engine, warned: &mut bool) {
    handle().run_upkeep();
    let store = engine.store();
    match store.count_plans_by_state().await {
        Ok(counts) => {
            let counts: HashMap<String, u64> = counts.into_iter().collect();
            // Every plan state, so the gauge has every series even at zero.
            for st in cairn_core::PlanStatus::ALL.map(cairn_core::PlanStatus::as_str) {
                let n = counts.get(st).copied().unwrap_or(0);
                gauge!("cairn_plans", "state" => st).set(n as f64);
            }
        }
        Err(e) => {
            if !*warned {
                tracing::warn!(error = %e, "cairn_plans is not available from this store");
                *warned = true;
            }
        }
    }
    match store.open_reviews().await {
        Ok(open) => {
            gauge!("cairn_reviews_open").set(open.count as f64);
            let age = open.oldest_opened_at.map_or(0.0, |at| {
                seconds(Timestamp::from_micros(at), cairn_engine::now())
            });
            gauge!("cairn_review_oldest_open_seconds").set(age);
        }
        Err(e) => tracing::debug!(error = %e, "open reviews not available from this store"),
    }
    if let Some(s) = store.stats() {
        counter!("cairn_store_commits_total").absolute(s.commits);
        counter!("cairn_store_appends_total").absolute(s.requests);
        counter!("cairn_store_events_total").absolute(s.events);
        let mean = if s.commits == 0 {
            0.0
        } else {
            s.requests as f64 / s.commits as f64
        };
        gauge!("cairn_store_batch_size").set(mean);
        gauge!("cairn_store_batch_size_max").set(s.max_batch as f64);
        gauge!("cairn_store_commit_busy_seconds_total").set(s.busy_seconds);
        counter!("cairn_store_inline_commits_total").absolute(s.inline_commits);
    }
}

/// Per-plan memory of the follower: only what live work needs. A plan that is registered and
/// idle, or has ended, has none (its entry is dropped as soon as it is empty), so the
/// follower's memory follows the plans that run, not the history.
#[derive(Default)]
struct PlanMemo {
    /// (step id, attempt) → `at` of its step_started and the agent type the attempt was sent
    /// to (from the invocation `step_started` records).
    started: HashMap<(String, u32), (Timestamp, Option<String>)>,
    /// `at` of the plan_paused still open.
    paused_at: Option<Timestamp>,
    /// While the plan runs: when it last made progress (started, resumed, a step started or
    /// ended). `None` while it is not running.
    progress_at: Option<Timestamp>,
    /// Ids of the plan's reviews known open, for `cairn_review_wait_seconds` when they close.
    open_reviews: Vec<String>,
}

impl PlanMemo {
    fn is_empty(&self) -> bool {
        self.started.is_empty()
            && self.paused_at.is_none()
            && self.progress_at.is_none()
            && self.open_reviews.is_empty()
    }
}

struct Follower {
    engine: Engine,
    plans: HashMap<String, PlanMemo>,
}

fn seconds(from: Timestamp, to: Timestamp) -> f64 {
    (to - from).max(0) as f64 / 1e6
}

impl Follower {
    fn new(engine: Engine) -> Follower {
        Follower {
            engine,
            plans: HashMap::new(),
        }
    }

    /// The agent type of a step as its plan's current definition says, for events that do not
    /// carry it (a skip, an attempt started before this process, or in a log written before
    /// `step_started` recorded its invocation).
    async fn agent_type(&self, plan_id: &str, step_id: &str) -> String {
        match self.engine.state(plan_id).await {
            Ok(state) => state
                .steps
                .iter()
                .find(|s| s.def.step_id == step_id)
                .map(|s| s.def.agent_type.clone()),
            Err(_) => None,
        }
        .unwrap_or_else(|| "unknown".to_owned())
    }

    /// Drops the plan's memo when nothing is left in it.
    fn tidy(&mut self, plan_id: &str) {
        if self.plans.get(plan_id).is_some_and(PlanMemo::is_empty) {
            self.plans.remove(plan_id);
        }
    }

    /// Plans already running when this process started have made no progress it saw: their
    /// clock starts now, so `cairn_plan_progress_age_seconds` is at most this process's age
    /// for them.
    async fn seed_running(&mut self) {
        let running = cairn_core::PlanStatus::Running.as_str();
        match self.engine.store().plans_in_states(&[running]).await {
            Ok(ids) => {
                let now = cairn_engine::now();
                for id in ids {
                    self.memo(&id).progress_at.get_or_insert(now);
                }
            }
            Err(e) => tracing::warn!(error = %e, "running plans unknown to the metrics follower"),
        }
        // Reviews opened before this process started: their wait is observed when they close.
        let mut cursor: Option<String> = None;
        loop {
            let page = match self
                .engine
                .store()
                .list_reviews(Some("open"), None, 1000, cursor.as_deref())
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::debug!(error = %e, "open reviews unknown to the metrics follower");
                    break;
                }
            };
            for r in page.items {
                self.memo(&r.plan_id).open_reviews.push(r.review_id);
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
    }

    /// Observes `cairn_review_wait_seconds` for the plan's tracked reviews that have closed,
    /// reading the plan's state (only plans with an open review pay for this).
    async fn reviews_closed(&mut self, plan_id: &str) {
        let Ok(state) = self.engine.state(plan_id).await else {
            return;
        };
        let Some(memo) = self.plans.get_mut(plan_id) else {
            return;
        };
        memo.open_reviews.retain(|id| {
            let Some(r) = state.reviews.iter().find(|r| &r.review_id == id) else {
                return false;
            };
            if r.is_open() {
                return true;
            }
            if let Some(closed) = r.closed_at {
                let outcome = r.outcome.map_or("closed", |o| o.as_str());
                histogram!("cairn_review_wait_seconds", "outcome" => outcome)
                    .record(seconds(r.opened_at, closed));
            }
            false
        });
    }

    /// Sets `cairn_plan_progress_age_seconds`: the longest a running plan has gone without
    /// progress, as of `now`.
    fn publish_progress_age(&self, now: Timestamp) {
        let oldest = self.plans.values().filter_map(|m| m.progress_at).min();
        gauge!("cairn_plan_progress_age_seconds").set(oldest.map_or(0.0, |at| seconds(at, now)));
    }

    /// Records progress of a plan that runs.
    fn progressed(&mut self, plan_id: &str, at: Timestamp) {
        if let Some(m) = self.plans.get_mut(plan_id) {
            if let Some(p) = m.progress_at.as_mut() {
                *p = (*p).max(at);
            }
        }
    }

    fn memo(&mut self, plan_id: &str) -> &mut PlanMemo {
        if !self.plans.contains_key(plan_id) && self.plans.len() >= MAX_TRACKED_PLANS {
            // Forget an arbitrary plan: a bound, not a policy; only durations suffer.
            if let Some(k) = self.plans.keys().next().cloned() {
                self.plans.remove(&k);
            }
        }
        self.plans.entry(plan_id.to_owned()).or_default()
    }

    async fn step_ended(&mut self, e: &Event, step_id: &str, attempt: u32, outcome: &'static str) {
        self.progressed(&e.plan_id, e.at);
        let started = self
            .plans
            .get_mut(&e.plan_id)
            .and_then(|m| m.started.remove(&(step_id.to_owned(), attempt)));
        self.tidy(&e.plan_id);
        let (at, agent) = match started {
            Some((at, Some(agent))) => (Some(at), agent),
            Some((at, None)) => (Some(at), self.agent_type(&e.plan_id, step_id).await),
            None => (None, self.agent_type(&e.plan_id, step_id).await),
        };
        counter!("cairn_steps_total", "agent_type" => agent.clone(), "outcome" => outcome)
            .increment(1);
        if outcome != "interrupted" {
            if let Some(at) = at {
                histogram!("cairn_step_duration_seconds", "agent_type" => agent)
                    .record(seconds(at, e.at));
            }
        }
    }

    async fn observe(&mut self, e: &Event) {
        counter!("cairn_events_total", "type" => e.kind.type_name()).increment(1);
        // A review closes by a decision, a timeout, a cancel or a change to its step: any event
        // but an attempt starting may be one, so a plan with an open review is looked at.
        let may_close_review = !matches!(
            e.kind,
            EventKind::StepStarted { .. }
                | EventKind::StepClaimed { .. }
                | EventKind::GateEvaluated { .. }
                | EventKind::ReviewOpened { .. }
        );
        if may_close_review
            && self
                .plans
                .get(&e.plan_id)
                .is_some_and(|m| !m.open_reviews.is_empty())
        {
            self.reviews_closed(&e.plan_id).await;
            self.tidy(&e.plan_id);
        }
        match &e.kind {
            EventKind::GateEvaluated {
                step_id,
                attempt,
                verdict,
                ..
            } => {
                let known = self
                    .plans
                    .get(&e.plan_id)
                    .and_then(|m| m.started.get(&(step_id.clone(), *attempt)))
                    .and_then(|(_, agent)| agent.clone());
                let agent = match known {
                    Some(agent) => agent,
                    None => self.agent_type(&e.plan_id, step_id).await,
                };
                let verdict = match verdict {
                    cairn_core::gate::VerdictKind::Passed => "passed",
                    cairn_core::gate::VerdictKind::Failed => "failed",
                };
                counter!("cairn_gate_evaluations_total",
                    "agent_type" => agent, "verdict" => verdict)
                .increment(1);
            }
            EventKind::ReviewOpened { review_id, .. } => {
                self.memo(&e.plan_id).open_reviews.push(review_id.clone());
            }
            EventKind::PlanRegistered { .. } => {
                // A registered plan is idle: nothing to remember until it starts.
                self.plans.remove(&e.plan_id);
            }
            EventKind::PlanStarted { .. } => {
                counter!("cairn_plans_started_total").increment(1);
                self.memo(&e.plan_id).progress_at = Some(e.at);
            }
            EventKind::PlanPaused { .. } => {
                let memo = self.memo(&e.plan_id);
                memo.paused_at = Some(e.at);
                memo.progress_at = None;
            }
            EventKind::PlanResumed { .. } => {
                let memo = self.memo(&e.plan_id);
                memo.progress_at = Some(e.at);
                if let Some(at) = memo.paused_at.take() {
                    histogram!("cairn_pause_duration_seconds").record(seconds(at, e.at));
                }
            }
            EventKind::PlanCompleted {}
            | EventKind::PlanFailed { .. }
            | EventKind::PlanCancelled { .. } => {
                if let Some(status) = e.kind.plan_status_after() {
                    self.finished(&e.plan_id, status.as_str());
                }
            }
            EventKind::StepStarted {
                step_id,
                attempt,
                invocation,
                ..
            } => {
                let agent = invocation.as_ref().map(|i| i.agent_type.clone());
                self.memo(&e.plan_id)
                    .started
                    .insert((step_id.clone(), *attempt), (e.at, agent));
                self.progressed(&e.plan_id, e.at);
            }
            EventKind::StepCompleted {
                step_id, attempt, ..
            } => self.step_ended(e, step_id, *attempt, "completed").await,
            EventKind::StepFailed {
                step_id,
                attempt,
                retry_at,
                ..
            } => {
                let outcome = if retry_at.is_some() {
                    "retried"
                } else {
                    "failed"
                };
                self.step_ended(e, step_id, *attempt, outcome).await
            }
            EventKind::StepInterrupted {
                step_id, attempt, ..
            } => self.step_ended(e, step_id, *attempt, "interrupted").await,
            EventKind::StepSkipped { step_id, .. } => {
                self.progressed(&e.plan_id, e.at);
                let agent = self.agent_type(&e.plan_id, step_id).await;
                counter!("cairn_steps_total", "agent_type" => agent, "outcome" => "skipped")
                    .increment(1);
            }
            EventKind::InterventionApplied { intervention, .. }
            | EventKind::InterventionFailed { intervention } => {
                let status = intervention.status.as_str();
                counter!("cairn_interventions_total",
                    "type" => intervention.kind.clone(), "status" => status)
                .increment(1);
            }
            EventKind::RollbackStarted { .. } => {
                counter!("cairn_rollbacks_total", "outcome" => "started").increment(1);
            }
            EventKind::RollbackCompleted { .. } => {
                counter!("cairn_rollbacks_total", "outcome" => "completed").increment(1);
            }
            EventKind::RollbackFailed { .. } => {
                counter!("cairn_rollbacks_total", "outcome" => "failed").increment(1);
            }
            EventKind::CompensationStarted { .. } => {
                counter!("cairn_compensations_total", "outcome" => "started").increment(1);
            }
            EventKind::CompensationCompleted { .. } => {
                counter!("cairn_compensations_total", "outcome" => "completed").increment(1);
            }
            EventKind::CompensationFailed { retry_at, .. } => {
                let outcome = if retry_at.is_some() {
                    "retried"
                } else {
                    "failed"
                };
                counter!("cairn_compensations_total", "outcome" => outcome).increment(1);
            }
            EventKind::CheckpointRestored { .. } => {
                if let Some(m) = self.plans.get_mut(&e.plan_id) {
                    m.started.clear();
                }
                self.tidy(&e.plan_id);
            }
            _ => {}
        }
    }

    fn finished(&mut self, plan_id: &str, state: &'static str) {
        counter!("cairn_plans_finished_total", "state" => state).increment(1);
        self.plans.remove(plan_id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use cairn_engine::executor::Registry;
    use cairn_engine::{Engine, EngineOptions, Notice, Subscription};
    use cairn_store_sqlite::{SqliteOptions, SqliteStore};
    use serde_json::json;

    use super::Follower;

    /// Feeds the follower the committed events until one of type `until` for `plan`.
    async fn follow(f: &mut Follower, sub: &mut Subscription, plan: &str, until: &str) {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match sub.next().await {
                    Some(Notice::Event(e)) => {
                        f.observe(&e).await;
                        if e.plan_id == plan && e.kind.type_name() == until {
                            return;
                        }
                    }
                    Some(Notice::Lagged { .. }) => panic!("the follower lagged"),
                    None => panic!("the engine stopped"),
                }
            }
        })
        .await
        .expect("the event came within 20 s");
    }

    fn plan(id: &str, agent: &str, params: serde_json::Value) -> cairn_core::Plan {
        serde_json::from_value(json!({
            "plan_id": id, "query": "q",
            "steps": [
                {"step_id": "a", "action": "x", "agent_type": agent, "params": params},
                {"step_id": "b", "action": "y", "agent_type": "builtin.echo"},
            ]
        }))
        .expect("a valid plan")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_follower_remembers_live_work_only() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SqliteStore::open(&dir.path().join("m.db"), SqliteOptions::default())
            .expect("the store opens");
        let engine = Engine::open(
            Arc::new(store),
            Registry::with_builtins(),
            EngineOptions::default(),
        )
        .await
        .expect("the engine opens");
        let mut sub = engine.subscribe(None);
        let mut f = Follower::new(engine.clone());

        // Registered and left idle: nothing remembered, however many.
        for i in 0..50 {
            let id = format!("idle-{i}");
            engine
                .register(plan(&id, "builtin.echo", json!({})), "t")
                .await
                .expect("registered");
            follow(&mut f, &mut sub, &id, "plan_registered").await;
        }
        assert!(f.plans.is_empty(), "{} plans remembered", f.plans.len());

        // A running attempt is remembered with the agent type its start recorded.
        engine
            .register(plan("live", "builtin.sleep", json!({"ms": 600_000})), "t")
            .await
            .expect("registered");
        engine.start("live", "t", None).await.expect("started");
        follow(&mut f, &mut sub, "live", "step_started").await;
        assert_eq!(f.plans.len(), 1);
        let memo = &f.plans["live"];
        assert_eq!(
            memo.started
                .get(&("a".to_owned(), 1))
                .and_then(|s| s.1.as_deref()),
            Some("builtin.sleep")
        );
        assert!(memo.progress_at.is_some());

        // Once it ends, it is forgotten.
        engine.cancel("live", "t", None).await.expect("cancelled");
        follow(&mut f, &mut sub, "live", "plan_cancelled").await;
        assert!(f.plans.is_empty(), "{} plans remembered", f.plans.len());

        // A step that never started still has its agent type, from the definition.
        assert_eq!(f.agent_type("idle-3", "a").await, "builtin.echo");
        assert_eq!(f.agent_type("idle-3", "nope").await, "unknown");
        engine.shutdown().await;
    }

    /// The commit histogram counts cumulatively, its `+Inf` bucket and count include the
    /// batches beyond the last bound, and its sum is the writer's busy time.
    #[test]
    fn the_commit_histogram_is_cumulative_and_counts_every_batch() {
        assert_eq!(super::commit_histogram(None), "");
        let mut stats = cairn_store::StoreStats {
            busy_seconds: 12.5,
            ..Default::default()
        };
        stats.commit_times[0] = 2; // at most 50 µs
        stats.commit_times[15] = 3; // at most 1 ms
        stats.commit_times[cairn_store::COMMIT_BUCKETS_US.len()] = 1; // over 10 s
        let text = super::commit_histogram(Some(&stats));
        let series = |s: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(s)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{s} missing:\n{text}"))
        };
        assert!(text.contains("# TYPE cairn_store_commit_seconds histogram\n"));
        assert_eq!(
            series(r#"cairn_store_commit_seconds_bucket{le="0.00005"}"#),
            2.0
        );
        assert_eq!(
            series(r#"cairn_store_commit_seconds_bucket{le="0.0008"}"#),
            2.0
        );
        assert_eq!(
            series(r#"cairn_store_commit_seconds_bucket{le="0.001"}"#),
            5.0
        );
        assert_eq!(series(r#"cairn_store_commit_seconds_bucket{le="10"}"#), 5.0);
        assert_eq!(
            series(r#"cairn_store_commit_seconds_bucket{le="+Inf"}"#),
            6.0
        );
        assert_eq!(series("cairn_store_commit_seconds_count"), 6.0);
        assert_eq!(series("cairn_store_commit_seconds_sum"), 12.5);
        let buckets = text.lines().filter(|l| l.contains("_bucket{")).count();
        assert_eq!(buckets, cairn_store::COMMIT_BUCKETS_US.len() + 1);
    }
}
