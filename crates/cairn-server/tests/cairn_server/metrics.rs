//! `/metrics` through the real router: step, plan, store and HTTP metrics.
//!
//! The Prometheus recorder is global to the process, so every test in this binary shares it:
//! each test uses its own agent types (`metrics.echo`, `metrics.fail`: the builtins under names
//! no other module runs) and plan ids, and asserts only on its own series.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use cairn_engine::executor::{Echo, Fail, Registry};
use cairn_server::{Role, ServerOptions};
use serde_json::{json, Value};

use crate::common::{register_and_start, request, TestServer};

struct Server {
    base: String,
    token: String,
    http: reqwest::Client,
    _server: TestServer,
}

async fn server() -> Result<Server> {
    // Agent types of this module's own: the other modules of the binary run the builtins, and
    // the recorder is the process's.
    let registry = Registry::with_builtins();
    registry.register("metrics.echo", Arc::new(Echo));
    registry.register("metrics.fail", Arc::new(Fail));
    // The agent shipped with examples/gated.yaml: it scores its own output.
    let writer = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/agents/writer.py")
        .to_string_lossy()
        .into_owned();
    registry.register(
        "metrics.writer",
        Arc::new(cairn_engine::executor::command::CommandExecutor::new(vec![
            "python3".into(),
            writer,
        ])),
    );
    let s = TestServer::start(ServerOptions {
        registry,
        metrics_every: Duration::from_millis(50),
        ..ServerOptions::default()
    })
    .await;
    let token = s.token("alice", Role::Admin).await;
    Ok(Server {
        base: s.base(),
        token,
        http: reqwest::Client::new(),
        _server: s,
    })
}

impl Server {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let (status, body) =
            request(&self.http, method, &url, Some(&self.token), body.as_ref()).await;
        anyhow::ensure!(status.is_success(), "{path}: {status} {body}");
        Ok(body)
    }

    /// Registers and starts `plan`.
    async fn run(&self, plan: &Value) {
        register_and_start(&self.http, &self.base, &self.token, plan).await;
    }

    async fn metrics(&self) -> Result<String> {
        Ok(self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .text()
            .await?)
    }

    /// Polls `/metrics` until every wanted series has a value that satisfies its check (the
    /// follower and the refresher are asynchronous).
    async fn metrics_with(&self, wanted: &[(&str, Want)]) -> Result<String> {
        let mut text = String::new();
        for _ in 0..100 {
            text = self.metrics().await?;
            if wanted
                .iter()
                .all(|(series, w)| w.holds(value(&text, series)))
            {
                return Ok(text);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let missing: Vec<_> = wanted
            .iter()
            .filter(|(series, w)| !w.holds(value(&text, series)))
            .map(|(series, w)| format!("{series} {w:?} (is {:?})", value(&text, series)))
            .collect();
        anyhow::bail!("not in /metrics: {missing:#?}\n{text}")
    }
}

/// What a series must show. Series labelled by this test's own agent types are exact; the
/// others are shared by every test in the binary, so only a lower bound holds.
#[derive(Debug, Clone, Copy)]
enum Want {
    Exactly(f64),
    AtLeast(f64),
}

impl Want {
    fn holds(self, v: Option<f64>) -> bool {
        match (self, v) {
            (Want::Exactly(x), Some(v)) => v == x,
            (Want::AtLeast(x), Some(v)) => v >= x,
            (_, None) => false,
        }
    }
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_run_shows_up_in_metrics() -> Result<()> {
    let s = server().await?;
    let plan = json!({
        "plan_id": "metrics-echo",
        "query": "q",
        "steps": [
            {"step_id": "a", "action": "x", "agent_type": "metrics.echo", "params": {"v": 1}},
            {"step_id": "b", "action": "y", "agent_type": "metrics.echo"},
        ]
    });
    s.run(&plan).await;
    let mut state = Value::Null;
    for _ in 0..200 {
        state = s
            .call(reqwest::Method::GET, "/v1/plans/metrics-echo", None)
            .await?;
        if state["state"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state["state"], "completed", "{state}");
    // An unknown URL and an unknown plan: neither may add a label value of its own.
    let r = s
        .http
        .get(format!("{}/no/such/thing", s.base))
        .send()
        .await?;
    assert_eq!(r.status(), 404);

    let text = s
        .metrics_with(&[
            (r#"cairn_steps_total{agent_type="metrics.echo",outcome="completed"}"#, Want::Exactly(2.0)),
            (r#"cairn_step_duration_seconds_count{agent_type="metrics.echo"}"#, Want::Exactly(2.0)),
            (r#"cairn_events_total{type="plan_completed"}"#, Want::AtLeast(1.0)),
            ("cairn_plans_started_total", Want::AtLeast(1.0)),
            (r#"cairn_plans_finished_total{state="completed"}"#, Want::AtLeast(1.0)),
            (r#"cairn_plans{state="completed"}"#, Want::AtLeast(1.0)),
            (r#"cairn_http_requests_total{route="/v1/plans",method="POST",status="201"}"#, Want::AtLeast(1.0)),
            (r#"cairn_http_requests_total{route="/v1/plans/{id}/start",method="POST",status="200"}"#, Want::AtLeast(1.0)),
            (r#"cairn_http_requests_total{route="unmatched",method="GET",status="404"}"#, Want::AtLeast(1.0)),
            ("cairn_store_commits_total", Want::AtLeast(1.0)),
            // Shared by every server of this process (each refresher sets them from its own
            // store, some of them empty): waited for, like the others, not read once.
            ("cairn_store_appends_total", Want::AtLeast(1.0)),
            ("cairn_store_batch_size", Want::AtLeast(f64::MIN_POSITIVE)),
            ("cairn_store_batch_size_max", Want::AtLeast(f64::MIN_POSITIVE)),
            ("cairn_store_commit_busy_seconds_total", Want::AtLeast(f64::MIN_POSITIVE)),
            // Exported on every store (a commit made by a request's own task, either store).
            ("cairn_store_inline_commits_total", Want::AtLeast(0.0)),
            // Read from this server's own store when asked.
            ("cairn_store_commit_seconds_count", Want::AtLeast(1.0)),
        ])
        .await?;
    assert!(text.contains("# TYPE cairn_store_commit_seconds histogram"));
    let count = value(&text, "cairn_store_commit_seconds_count");
    assert_eq!(
        value(&text, r#"cairn_store_commit_seconds_bucket{le="+Inf"}"#),
        count,
        "{text}"
    );
    assert!(value(&text, "cairn_store_commit_seconds_sum").is_some_and(|s| s > 0.0));
    promtool_check_metrics(&text)?;
    assert!(
        value(
            &text,
            r#"cairn_http_requests_total{route="/v1/plans/{id}",method="GET",status="200"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        !text.contains("metrics-echo"),
        "a plan id became a label:\n{text}"
    );
    assert!(text.contains("# TYPE cairn_step_duration_seconds histogram"));
    assert!(text.contains(
        r#"cairn_http_request_duration_seconds_bucket{route="/v1/plans/{id}",method="GET",le="#
    ));
    for series in [
        "cairn_store_commits_total",
        "cairn_store_appends_total",
        "cairn_store_batch_size",
        "cairn_store_batch_size_max",
        "cairn_store_commit_busy_seconds_total",
    ] {
        assert!(
            value(&text, series).is_some_and(|n| n > 0.0),
            "{series} should be > 0:\n{text}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_failures_and_pauses_are_counted() -> Result<()> {
    let s = server().await?;
    let plan = json!({
        "plan_id": "metrics-fail",
        "query": "q",
        "steps": [
            {"step_id": "a", "action": "x", "agent_type": "metrics.fail",
             "params": {"times": 1}, "retry": {"max_attempts": 2, "backoff_ms": 1}},
            {"step_id": "b", "action": "y", "agent_type": "metrics.fail",
             "params": {"times": 5}, "depends_on": ["a"]},
        ]
    });
    s.run(&plan).await;
    s.metrics_with(&[
        (
            r#"cairn_steps_total{agent_type="metrics.fail",outcome="retried"}"#,
            Want::Exactly(1.0),
        ),
        (
            r#"cairn_steps_total{agent_type="metrics.fail",outcome="completed"}"#,
            Want::Exactly(1.0),
        ),
        (
            r#"cairn_steps_total{agent_type="metrics.fail",outcome="failed"}"#,
            Want::Exactly(1.0),
        ),
        (
            r#"cairn_step_duration_seconds_count{agent_type="metrics.fail"}"#,
            Want::Exactly(3.0),
        ),
        (
            r#"cairn_plans_finished_total{state="failed"}"#,
            Want::AtLeast(1.0),
        ),
    ])
    .await?;
    Ok(())
}

#[tokio::test]
async fn tasks_queued_is_a_gauge_per_agent_type() -> Result<()> {
    cairn_server::metrics::set_tasks_queued("test.queued", 3);
    cairn_server::metrics::set_tasks_queued("test.queued", 2);
    let text = cairn_server::metrics::render();
    assert!(
        text.lines()
            .any(|l| l == r#"cairn_tasks_queued{agent_type="test.queued"} 2"#),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_plan_without_progress_raises_the_progress_age() -> Result<()> {
    let s = server().await?;
    // One step that sleeps far longer than this test: the plan runs and makes no progress
    // until it is cancelled.
    let plan = json!({
        "plan_id": "metrics-stuck",
        "query": "q",
        "steps": [{"step_id": "a", "action": "x", "agent_type": "builtin.sleep",
                   "params": {"ms": 600000}}]
    });
    s.run(&plan).await;
    s.metrics_with(&[("cairn_plan_progress_age_seconds", Want::AtLeast(0.5))])
        .await?;
    s.call(
        reqwest::Method::POST,
        "/v1/plans/metrics-stuck/cancel",
        None,
    )
    .await?;
    Ok(())
}

/// Runs promtool (`PROMTOOL`, else `promtool` on the path) with `args` in `dir`, giving it
/// `stdin`: its output, or `None` when it is missing and `CAIRN_SKIP_PROMTOOL=1` says to skip
/// (missing otherwise is an error). promtool is Debian's `prometheus` package.
fn promtool(
    args: &[&str],
    dir: &std::path::Path,
    stdin: &str,
) -> Result<Option<std::process::Output>> {
    use std::io::Write;
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let child = std::process::Command::new(&promtool)
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var("CAIRN_SKIP_PROMTOOL").is_ok_and(|v| v == "1") {
                eprintln!("promtool not found; skipped (CAIRN_SKIP_PROMTOOL=1)");
                return Ok(None);
            }
            anyhow::bail!(
                "{promtool} not found: install Debian's prometheus package \
                 (apt-get install prometheus), set PROMTOOL to its path, or set \
                 CAIRN_SKIP_PROMTOOL=1 to skip this check"
            );
        }
        Err(e) => return Err(e.into()),
    };
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin.as_bytes())?;
    Ok(Some(child.wait_with_output()?))
}

/// The directory of the Prometheus rules.
fn prometheus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus")
}

/// Runs `promtool check metrics` on an exposition.
fn promtool_check_metrics(text: &str) -> Result<()> {
    let Some(out) = promtool(&["check", "metrics"], &prometheus_dir(), text)? else {
        return Ok(());
    };
    // Exit 1: the exposition does not parse; 3: lint findings, which the commit histogram
    // must not be among (the older series' names are left as they are).
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        matches!(out.status.code(), Some(0 | 3)) && !said.contains("cairn_store_commit_seconds"),
        "promtool check metrics: {}\n{said}",
        out.status
    );
    Ok(())
}

/// `deploy/prometheus/alerts.yml` is valid and its unit tests pass. promtool (Debian's
/// `prometheus` package) must be installed: a missing promtool fails this test unless
/// `CAIRN_SKIP_PROMTOOL=1` says to skip it on purpose.
#[test]
fn the_alerting_rules_pass_promtool() -> Result<()> {
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let Some(out) = promtool(&args, &prometheus_dir(), "")? else {
            return Ok(());
        };
        anyhow::ensure!(
            out.status.success(),
            "promtool {}: {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_verdicts_open_reviews_and_review_waits_are_measured() -> Result<()> {
    let s = server().await?;
    // `good` covers 4 of 4 points (passes); `held` covers 2 of 4 and waits for review.
    let gate = json!({"min_scores": {"coverage": 0.8}, "on_fail": "review"});
    let plan = json!({
        "plan_id": "metrics-gated",
        "query": "q",
        "steps": [
            {"step_id": "good", "action": "w", "agent_type": "metrics.writer",
             "params": {"must_cover": ["a", "b", "c", "d"], "start": 4}, "quality_gate": gate},
            {"step_id": "held", "action": "w", "agent_type": "metrics.writer",
             "params": {"must_cover": ["a", "b", "c", "d"], "start": 2}, "quality_gate": gate,
             "depends_on": ["good"]},
        ]
    });
    s.run(&plan).await;
    s.metrics_with(&[
        (
            r#"cairn_gate_evaluations_total{agent_type="metrics.writer",verdict="passed"}"#,
            Want::Exactly(1.0),
        ),
        (
            r#"cairn_gate_evaluations_total{agent_type="metrics.writer",verdict="failed"}"#,
            Want::Exactly(1.0),
        ),
        ("cairn_reviews_open", Want::AtLeast(1.0)),
        ("cairn_review_oldest_open_seconds", Want::AtLeast(0.0)),
    ])
    .await?;
    let inbox = s
        .call(
            reqwest::Method::GET,
            "/v1/reviews?state=open&plan_id=metrics-gated",
            None,
        )
        .await?;
    assert_eq!(inbox["items"][0]["step_id"], "held", "{inbox}");
    s.call(
        reqwest::Method::POST,
        "/v1/plans/metrics-gated/interventions",
        Some(json!({"type": "approve_step", "step_id": "held", "attempt": 1})),
    )
    .await?;
    s.metrics_with(&[(
        r#"cairn_review_wait_seconds_count{outcome="approved"}"#,
        Want::AtLeast(1.0),
    )])
    .await?;
    Ok(())
}

/// Every metric `deploy/prometheus/alerts.yml` reads is one cairn exports: after the plans of
/// the other tests (and this one's own), each name appears at /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerting_rules_read_only_exported_metrics() -> Result<()> {
    let s = server().await?;
    let plan = json!({
        "plan_id": "metrics-alerts",
        "query": "q",
        // A compensation that fails for good, so the rollback counters have their series.
        "on_failure": "rollback",
        "steps": [
            {"step_id": "a", "action": "x", "agent_type": "builtin.echo",
             "compensate": {"action": "undo", "agent_type": "builtin.fail",
                            "params": {"retryable": false}}},
            {"step_id": "b", "action": "x", "agent_type": "builtin.fail",
             "params": {"retryable": false}, "depends_on": ["a"]},
        ]
    });
    s.call(reqwest::Method::POST, "/v1/plans", Some(plan))
        .await?;
    // An intervention before the start, so cairn_interventions_total has a series.
    s.call(
        reqwest::Method::POST,
        "/v1/plans/metrics-alerts/interventions",
        Some(json!({"type": "modify_step", "step_id": "a", "patch": {"params": {"v": 1}}})),
    )
    .await?;
    s.call(
        reqwest::Method::POST,
        "/v1/plans/metrics-alerts/start",
        None,
    )
    .await?;
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus/alerts.yml"),
    )?;
    let mut names: Vec<String> = Vec::new();
    for (i, _) in rules.match_indices("cairn_") {
        let name: String = rules[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    assert!(names.len() >= 6, "{names:?}");
    let mut text = String::new();
    let mut missing: Vec<String> = names.clone();
    for _ in 0..100 {
        text = s.metrics().await?;
        missing.retain(|n| {
            !text
                .lines()
                .any(|l| l.starts_with(n.as_str()) && !l.starts_with('#'))
        });
        if missing.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("alerts.yml reads metrics /metrics does not export: {missing:?}\n{text}")
}
