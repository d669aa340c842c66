//! The `command` and `http` executors and `cairn.toml`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cairn_engine::config::{AgentConfig, BuiltinAgent, Config};
use cairn_engine::executor::command::CommandExecutor;
use cairn_engine::executor::http::HttpExecutor;
use cairn_engine::executor::{ExecError, ExecOutput, Executor, StopSignal, Task};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::common::within;

fn task(params: Value) -> Task {
    Task {
        plan_id: "plan_1".into(),
        step_id: "step_1".into(),
        kind: cairn_core::AttemptKind::Step,
        action: "search".into(),
        agent_type: "registry".into(),
        params,
        attempt: 2,
        run: 1,
        idempotency_key: "plan_1/step_1/1".into(),
        timeout_ms: None,
        query: "market analysis".into(),
        gate_feedback: None,
    }
}

fn sh(script: &str) -> CommandExecutor {
    CommandExecutor::new(vec!["sh".into(), "-c".into(), script.into()])
}

async fn run(ex: &dyn Executor, t: Task) -> Result<ExecOutput, ExecError> {
    within("the executor to answer", ex.execute(t, StopSignal::never())).await
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A FIFO the agent writes its pid to: reading it waits for the agent without sleeping.
fn make_fifo(dir: &Path) -> PathBuf {
    let fifo = dir.join("pid.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    fifo
}

async fn read_pid(fifo: PathBuf) -> u32 {
    use tokio::io::AsyncBufReadExt;
    // Read-write, so the open does not wait for the writer and no EOF comes before it writes.
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&fifo)
        .expect("open fifo");
    let mut line = String::new();
    within(
        "the agent to write its pid",
        tokio::io::BufReader::new(rx).read_line(&mut line),
    )
    .await
    .expect("read fifo");
    line.trim().parse().expect("pid")
}

// ---------------------------------------------------------------------------------------------
// command

#[tokio::test]
async fn command_whole_document_is_the_output() {
    let ex = sh(r#"cat >/dev/null; echo '{"hits": 3, "scores": {"a": 1}}'"#);
    let out = run(&ex, task(json!({}))).await.unwrap();
    // `scores` beside a key other than `output`: the whole document is the output.
    assert_eq!(out.output, json!({"hits": 3, "scores": {"a": 1}}));
    assert_eq!(out.scores, None);
}

#[tokio::test]
async fn command_output_and_scores_envelope() {
    let ex = sh(r#"echo '{"output": {"summary": "ok"}, "scores": {"accuracy": 0.9, "n": 2}}'"#);
    let out = run(&ex, task(json!({}))).await.unwrap();
    assert_eq!(out.output, json!({"summary": "ok"}));
    let scores = out.scores.expect("scores");
    assert_eq!(scores.get("accuracy"), Some(&json!(0.9)));
    assert_eq!(scores.get("n"), Some(&json!(2)));

    let only_output = sh(r#"echo '{"output": [1, 2]}'"#);
    let out = run(&only_output, task(json!({}))).await.unwrap();
    assert_eq!(out.output, json!([1, 2]));
    assert_eq!(out.scores, None);
}

#[tokio::test]
async fn command_scalar_and_empty_outputs() {
    let out = run(&sh("echo 42"), task(json!({}))).await.unwrap();
    assert_eq!(out.output, json!(42));
    let out = run(&sh("true"), task(json!({}))).await.unwrap();
    assert_eq!(out.output, Value::Null);
}

#[tokio::test]
async fn command_reads_the_task_on_stdin() {
    let ex = CommandExecutor::new(vec!["cat".into()]);
    let out = run(&ex, task(json!({"q": "lithium"}))).await.unwrap();
    assert_eq!(out.output["params"], json!({"q": "lithium"}));
    assert_eq!(out.output["step_id"], json!("step_1"));
    assert_eq!(out.output["idempotency_key"], json!("plan_1/step_1/1"));
    assert_eq!(out.output["query"], json!("market analysis"));
}

#[tokio::test]
async fn command_gets_env_vars() {
    let ex = sh(
        r#"printf '{"plan":"%s","step":"%s","attempt":"%s","key":"%s"}' \
        "$CAIRN_PLAN_ID" "$CAIRN_STEP_ID" "$CAIRN_ATTEMPT" "$CAIRN_IDEMPOTENCY_KEY""#,
    );
    let out = run(&ex, task(json!({}))).await.unwrap();
    assert_eq!(
        out.output,
        json!({"plan": "plan_1", "step": "step_1", "attempt": "2", "key": "plan_1/step_1/1"})
    );
}

#[tokio::test]
async fn command_nonzero_exit_is_retryable_with_stderr() {
    let ex = sh("echo 'starting' >&2; echo 'quota exceeded for api.example' >&2; exit 3");
    let e = run(&ex, task(json!({}))).await.unwrap_err();
    assert!(e.retryable, "{e:?}");
    assert!(e.message.contains("code 3"), "{}", e.message);
    assert!(e.message.contains("quota exceeded"), "{}", e.message);
}

#[tokio::test]
async fn command_keeps_the_end_of_long_stderr() {
    let ex = sh(
        "i=0; while [ $i -lt 2000 ]; do echo \"line $i\" >&2; i=$((i+1)); done; \
         echo 'the real cause' >&2; exit 1",
    );
    let e = run(&ex, task(json!({}))).await.unwrap_err();
    assert!(e.message.contains("the real cause"), "{}", e.message);
    assert!(!e.message.contains("line 0\n"), "{}", e.message);
    assert!(e.message.len() < 3000, "{}", e.message.len());
}

#[tokio::test]
async fn command_killed_by_signal_says_so() {
    let e = run(&sh("kill -9 $$"), task(json!({}))).await.unwrap_err();
    assert!(e.retryable);
    assert!(e.message.contains("signal 9"), "{}", e.message);
}

#[tokio::test]
async fn command_not_found_is_fatal() {
    let ex = CommandExecutor::new(vec!["/nonexistent/cairn-test-agent".into()]);
    let e = run(&ex, task(json!({}))).await.unwrap_err();
    assert!(!e.retryable, "{e:?}");
    assert!(
        e.message.contains("/nonexistent/cairn-test-agent"),
        "{}",
        e.message
    );

    let ex = CommandExecutor::new(vec!["cairn-no-such-program-on-path".into()]);
    let e = run(&ex, task(json!({}))).await.unwrap_err();
    assert!(!e.retryable);
    assert!(e.message.contains("cairn-no-such-program-on-path"));
}

#[tokio::test]
async fn command_not_executable_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("agent.sh");
    std::fs::write(&script, "#!/bin/sh\necho 1\n").unwrap();
    let ex = CommandExecutor::new(vec![script.to_string_lossy().into_owned()]);
    let e = run(&ex, task(json!({}))).await.unwrap_err();
    assert!(!e.retryable, "{e:?}");
    assert!(e.message.contains("agent.sh"), "{}", e.message);
}

#[tokio::test]
async fn command_empty_argv_is_fatal() {
    let e = run(&CommandExecutor::new(vec![]), task(json!({})))
        .await
        .unwrap_err();
    assert!(!e.retryable);
}

#[tokio::test]
async fn command_non_json_output_is_fatal() {
    let e = run(&sh("echo 'hello, world'"), task(json!({})))
        .await
        .unwrap_err();
    assert!(!e.retryable);
    assert_eq!(e.message, "agent printed non-JSON output: hello, world");

    let long = format!("echo '{}'", "x".repeat(1000));
    let e = run(&sh(&long), task(json!({}))).await.unwrap_err();
    assert!(e.message.len() < 300, "{}", e.message);
}

#[tokio::test]
async fn command_bad_scores_are_fatal() {
    let e = run(
        &sh(r#"echo '{"output": 1, "scores": {"accuracy": "high"}}'"#),
        task(json!({})),
    )
    .await
    .unwrap_err();
    assert!(!e.retryable);
    assert!(e.message.contains("accuracy"), "{}", e.message);
}

#[tokio::test]
async fn command_output_over_the_cap_fails() {
    let ex = sh("head -c 17000000 /dev/zero | tr '\\0' 'a'");
    let e = run(&ex, task(json!({}))).await.unwrap_err();
    assert!(e.message.contains("16 MiB"), "{}", e.message);
}

#[tokio::test]
async fn command_timeout_kills_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let late = dir.path().join("late");
    let pid_file = dir.path().join("pid");
    let script = format!(
        "echo $$ > '{}'; sleep 1; touch '{}'",
        pid_file.display(),
        late.display()
    );
    // The executor allows a minute, the step 300 ms: the smaller wins.
    let ex = sh(&script).with_timeout_ms(Some(60_000));
    let mut t = task(json!({}));
    t.timeout_ms = Some(300);
    let e = run(&ex, t).await.unwrap_err();
    assert!(e.retryable);
    assert_eq!(e.message, "timed out after 300 ms");
    // Killed and reaped by the time the executor answers.
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!pid_alive(pid), "agent {pid} still alive");
    // And it never got to finish its work: the shell that would touch the file is gone.
    assert!(!late.exists(), "the program ran on after its timeout");
}

#[tokio::test]
async fn command_executor_timeout_applies_without_step_timeout() {
    let ex = sh("sleep 30").with_timeout_ms(Some(200));
    let e = run(&ex, task(json!({}))).await.unwrap_err();
    assert_eq!(e.message, "timed out after 200 ms");
}

#[tokio::test]
async fn command_stop_signal_kills_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = make_fifo(dir.path());
    let ex = sh(&format!("echo $$ > '{}'; sleep 30", fifo.display()));
    let (tx, stop) = StopSignal::new();
    let handle = tokio::spawn(async move { ex.execute(task(json!({})), stop).await });
    let pid = read_pid(fifo).await;
    assert!(pid_alive(pid));
    tx.send(true).unwrap();
    let e = within("the attempt to end", handle)
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.retryable);
    assert_eq!(e.message, "stopped");
    assert!(!pid_alive(pid), "agent {pid} still alive after stop");
}

/// Waits (bounded) until process `pid` is gone or a zombie: killed, whoever reaps it.
async fn wait_dead(pid: u32, what: &str) {
    let dead = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !dead() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} (pid {pid}) still alive"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn command_stop_kills_what_the_program_started() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = make_fifo(dir.path());
    // The shell's child, not the shell, reports its pid: the grandchild of the executor.
    let ex = sh(&format!("sleep 30 & echo $! > '{}'; wait", fifo.display()));
    let (tx, stop) = StopSignal::new();
    let handle = tokio::spawn(async move { ex.execute(task(json!({})), stop).await });
    let pid = read_pid(fifo).await;
    assert!(pid_alive(pid));
    tx.send(true).unwrap();
    assert_eq!(
        within("the attempt to end", handle)
            .await
            .unwrap()
            .unwrap_err()
            .message,
        "stopped"
    );
    wait_dead(pid, "the program's `sleep 30`").await;
}

#[tokio::test]
async fn a_dropped_attempt_kills_the_programs_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = make_fifo(dir.path());
    let ex = sh(&format!("sleep 30 & echo $! > '{}'; wait", fifo.display()));
    // The engine drops an attempt's future on a step timeout and at shutdown.
    let handle =
        tokio::spawn(async move { ex.execute(task(json!({})), StopSignal::never()).await });
    let pid = read_pid(fifo).await;
    assert!(pid_alive(pid));
    handle.abort();
    assert!(handle.await.unwrap_err().is_cancelled());
    wait_dead(pid, "the dropped attempt's `sleep 30`").await;
}

#[tokio::test]
async fn command_runs_with_a_clean_environment() {
    // Cargo gives every test process CARGO_MANIFEST_DIR; an agent gets it only when named.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it");
    let script =
        r#"printf '{"dir":"%s","path":"%s"}' "${CARGO_MANIFEST_DIR-unset}" "${PATH:+set}""#;
    let out = run(&sh(script), task(json!({}))).await.unwrap();
    assert_eq!(out.output, json!({"dir": "unset", "path": "set"}));
    let ex = sh(script).with_env(vec!["CARGO_MANIFEST_DIR".into(), "NOT_SET_ANYWHERE".into()]);
    let out = run(&ex, task(json!({}))).await.unwrap();
    assert_eq!(out.output, json!({"dir": manifest, "path": "set"}));
}

#[test]
fn command_agents_name_the_variables_they_get() {
    let c = Config::parse(
        "[agents.a]\nexecutor = \"command\"\ncommand = [\"x\"]\nenv = [\"OPENAI_API_KEY\", \"LANG\"]\n",
    )
    .unwrap();
    let AgentConfig::Command { env, .. } = &c.agents["a"] else {
        panic!("not a command agent")
    };
    assert_eq!(env, &["OPENAI_API_KEY", "LANG"]);
    for (bad, says) in [
        ("env = \"LANG\"", "`env` must be a list"),
        ("env = [\"\"]", "`env[0]` must be a variable name"),
        ("env = [\"A\", \"B=C\"]", "`env[1]` must be a variable name"),
        ("env = [\"9X\"]", "`env[0]` must be a variable name"),
        ("env = [1]", "`env[0]` must be a variable name"),
    ] {
        let text = format!("[agents.a]\nexecutor = \"command\"\ncommand = [\"x\"]\n{bad}\n");
        let e = Config::parse(&text).unwrap_err().to_string();
        assert!(
            e.starts_with("agents.a: ") && e.contains(says),
            "{bad}: {e}"
        );
    }
    // Only command agents take the list.
    let e =
        Config::parse("[agents.h]\nexecutor = \"http\"\nurl = \"http://127.0.0.1:1/\"\nenv = []\n")
            .unwrap_err()
            .to_string();
    assert!(e.contains("unknown key `env`"), "{e}");
}

#[tokio::test]
async fn command_already_stopped_does_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let ex = sh(&format!("touch '{}'", marker.display()));
    let (tx, stop) = StopSignal::new();
    tx.send(true).unwrap();
    let e = ex.execute(task(json!({})), stop).await.unwrap_err();
    assert_eq!(e.message, "stopped");
    assert!(!marker.exists());
}

#[tokio::test]
async fn command_that_ignores_stdin_still_works() {
    let mut t = task(json!({"big": "y".repeat(1 << 20)}));
    t.step_id = "s".into();
    let out = run(&sh("echo '\"done\"'"), t).await.unwrap();
    assert_eq!(out.output, json!("done"));
}

// ---------------------------------------------------------------------------------------------
// http: a tiny HTTP/1.1 responder on loopback

#[derive(Clone)]
enum Reply {
    Respond(u16, String),
    /// Read the request, then never answer.
    Hang,
}

struct Request {
    head: String,
    body: Vec<u8>,
}

/// Serves every connection with `reply(request body)`; each request is also sent to the channel.
async fn serve(
    reply: impl Fn(&[u8]) -> Reply + Send + Sync + 'static,
) -> (String, mpsc::UnboundedReceiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            let reply = reply.clone();
            tokio::spawn(async move {
                let _ = handle(stream, &*reply, tx).await;
            });
        }
    });
    (format!("http://{addr}/run"), rx)
}

async fn handle(
    mut stream: TcpStream,
    reply: &(dyn Fn(&[u8]) -> Reply + Send + Sync),
    tx: mpsc::UnboundedSender<Request>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..].to_vec();
    let answer = reply(&body);
    let _ = tx.send(Request { head, body });
    match answer {
        Reply::Hang => {
            // Hold the connection open until the client goes away.
            let _ = stream.read(&mut chunk).await;
        }
        Reply::Respond(status, body) => {
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await?;
            stream.shutdown().await?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn http_success_with_envelope() {
    let (url, mut requests) = serve(|body| {
        let task: Value = serde_json::from_slice(body).unwrap();
        Reply::Respond(
            200,
            json!({"output": {"echo": task["params"]}, "scores": {"accuracy": 0.95}}).to_string(),
        )
    })
    .await;
    let ex = HttpExecutor::new(url, Some(10_000));
    let out = run(&ex, task(json!({"q": "cobalt"}))).await.unwrap();
    assert_eq!(out.output, json!({"echo": {"q": "cobalt"}}));
    assert_eq!(out.scores.unwrap().get("accuracy"), Some(&json!(0.95)));
    let req = within("a request to reach the agent", requests.recv())
        .await
        .unwrap();
    assert!(req.head.starts_with("POST /run HTTP/1.1"), "{}", req.head);
    let head = req.head.to_ascii_lowercase();
    assert!(
        head.contains("idempotency-key: plan_1/step_1/1"),
        "{}",
        req.head
    );
    assert!(
        head.contains("content-type: application/json"),
        "{}",
        req.head
    );
    let sent: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(sent["step_id"], json!("step_1"));
    assert_eq!(sent["attempt"], json!(2));
}

#[tokio::test]
async fn http_plain_and_empty_bodies() {
    let (url, _r) = serve(|_| Reply::Respond(200, "[1,2,3]".into())).await;
    let out = run(&HttpExecutor::new(url, None), task(json!({})))
        .await
        .unwrap();
    assert_eq!(out.output, json!([1, 2, 3]));

    let (url, _r) = serve(|_| Reply::Respond(204, String::new())).await;
    let out = run(&HttpExecutor::new(url, None), task(json!({})))
        .await
        .unwrap();
    assert_eq!(out.output, Value::Null);

    let (url, _r) = serve(|_| Reply::Respond(200, "<html>oops</html>".into())).await;
    let e = run(&HttpExecutor::new(url, None), task(json!({})))
        .await
        .unwrap_err();
    assert!(!e.retryable);
    assert!(e.message.contains("non-JSON"), "{}", e.message);
}

#[tokio::test]
async fn http_500_is_retryable() {
    let (url, _r) = serve(|_| Reply::Respond(500, "database on fire".into())).await;
    let e = run(&HttpExecutor::new(url, None), task(json!({})))
        .await
        .unwrap_err();
    assert!(e.retryable, "{e:?}");
    assert!(e.message.contains("500"), "{}", e.message);
    assert!(e.message.contains("database on fire"), "{}", e.message);
}

#[tokio::test]
async fn http_400_is_fatal_but_429_and_408_are_not() {
    let (url, _r) =
        serve(|_| Reply::Respond(400, format!("bad params {}", "z".repeat(2000)))).await;
    let e = run(&HttpExecutor::new(url, None), task(json!({})))
        .await
        .unwrap_err();
    assert!(!e.retryable, "{e:?}");
    assert!(e.message.contains("400"), "{}", e.message);
    assert!(e.message.contains("bad params"), "{}", e.message);
    assert!(e.message.len() < 700, "{}", e.message.len());

    for status in [429, 408] {
        let (url, _r) = serve(move |_| Reply::Respond(status, "slow down".into())).await;
        let e = run(&HttpExecutor::new(url, None), task(json!({})))
            .await
            .unwrap_err();
        assert!(e.retryable, "{status}: {e:?}");
        assert!(e.message.contains(&status.to_string()));
    }
}

#[tokio::test]
async fn http_connection_refused_is_retryable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let e = run(
        &HttpExecutor::new(format!("http://{addr}/run"), Some(5_000)),
        task(json!({})),
    )
    .await
    .unwrap_err();
    assert!(e.retryable, "{e:?}");
    assert!(e.message.contains(&addr.to_string()), "{}", e.message);
}

#[tokio::test]
async fn http_timeout() {
    let (url, mut requests) = serve(|_| Reply::Hang).await;
    let ex = HttpExecutor::new(url, Some(60_000));
    let mut t = task(json!({}));
    t.timeout_ms = Some(300);
    let e = run(&ex, t).await.unwrap_err();
    assert!(e.retryable);
    assert_eq!(e.message, "timed out after 300 ms");
    assert!(within("a request to reach the agent", requests.recv())
        .await
        .is_some());
}

#[tokio::test]
async fn http_stop_signal_aborts_the_request() {
    let (url, mut requests) = serve(|_| Reply::Hang).await;
    let ex = HttpExecutor::new(url, None);
    let (tx, stop) = StopSignal::new();
    let handle = tokio::spawn(async move { ex.execute(task(json!({})), stop).await });
    // The request has reached the agent.
    within("a request to reach the agent", requests.recv())
        .await
        .unwrap();
    tx.send(true).unwrap();
    let e = within("the attempt to end", handle)
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.retryable);
    assert_eq!(e.message, "stopped");
}

// ---------------------------------------------------------------------------------------------
// cairn.toml

const CONTRACT_EXAMPLE: &str = r#"
[agents.registry]
executor = "command"                 # command | http
command = ["python3", "agents/registry.py"]
timeout_ms = 60000
[agents.social]
executor = "http"
url = "http://127.0.0.1:9000/run"
[[webhooks]]
url = "http://127.0.0.1:9100/hook"
events = ["plan_paused", "intervention_applied"]
secret = "…"                         # HMAC-SHA256 of the body in header X-Cairn-Signature
"#;

#[test]
fn design_example_parses() {
    let c = Config::parse(CONTRACT_EXAMPLE).unwrap();
    assert_eq!(
        c.agents["registry"],
        AgentConfig::Command {
            command: vec!["python3".into(), "agents/registry.py".into()],
            timeout_ms: Some(60_000),
            env: Vec::new(),
        }
    );
    assert_eq!(
        c.agents["social"],
        AgentConfig::Http {
            url: "http://127.0.0.1:9000/run".into(),
            timeout_ms: None
        }
    );
    assert_eq!(c.webhooks.len(), 1);
    assert_eq!(c.webhooks[0].url, "http://127.0.0.1:9100/hook");
    assert_eq!(
        c.webhooks[0].events,
        vec![
            "plan_paused".to_string(),
            "intervention_applied".to_string()
        ]
    );
    assert_eq!(c.webhooks[0].secret.as_deref(), Some("…"));
    assert!(c.webhooks[0].wants("plan_paused"));
    assert!(!c.webhooks[0].wants("plan_started"));
    assert_eq!(c.base_dir, None);

    let r = c.registry();
    for t in [
        "registry",
        "social",
        "builtin.echo",
        "builtin.sleep",
        "builtin.fail",
    ] {
        assert!(r.contains(t), "{t}");
    }
}

#[test]
fn empty_file_is_an_empty_config() {
    let c = Config::parse("").unwrap();
    assert!(c.agents.is_empty() && c.webhooks.is_empty());
    let c = Config::parse("[[webhooks]]\nurl = \"https://hooks.example/x\"\n").unwrap();
    assert!(c.webhooks[0].wants("anything"));
}

#[test]
fn bad_configs_name_the_table_and_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[agents.registry]\nexecutor = \"command\"\n",
            "agents.registry: missing `command` (a list: program and arguments",
        ),
        (
            "[agents.registry]\nexecutor = \"command\"\ncommand = []\n",
            "agents.registry: `command` is empty",
        ),
        (
            "[agents.registry]\nexecutor = \"command\"\ncommand = \"python3 x.py\"\n",
            "agents.registry: `command` must be a list",
        ),
        (
            "[agents.registry]\nexecutor = \"command\"\ncommand = [\"x\", 3]\n",
            "agents.registry: `command[1]` must be a string",
        ),
        (
            "[agents.registry]\nexecutor = \"command\"\ncommand = [\"x\"]\ncomand = [\"y\"]\n",
            "agents.registry: unknown key `comand`; did you mean `command`?",
        ),
        (
            "[agents.registry]\nexecutor = \"command\"\ncommand = [\"x\"]\nurl = \"http://127.0.0.1/\"\n",
            "agents.registry: unknown key `url`",
        ),
        (
            "[agents.registry]\nexecutor = \"grpc\"\n",
            "agents.registry: unknown `executor` \"grpc\"",
        ),
        (
            "[agents.registry]\ncommand = [\"x\"]\n",
            "agents.registry: missing `executor`",
        ),
        (
            "[agents.registry]\nexecuter = \"command\"\ncommand = [\"x\"]\n",
            "agents.registry: unknown key `executer`; did you mean `executor`?",
        ),
        (
            "[agent.registry]\nexecutor = \"command\"\n",
            "unknown top-level key `agent` (known: agents, webhooks); did you mean `agents`?",
        ),
        (
            "[agents.registry]\nexecutor = \"command\"\ncommand = [\"x\"]\ntimeout_ms = 0\n",
            "agents.registry: `timeout_ms` must be",
        ),
        (
            "[agents.registry]\nexecutor = \"command\"\ncommand = [\"x\"]\ntimeout_ms = 604800001\n",
            "agents.registry: `timeout_ms` must be",
        ),
        (
            "[agents.registry]\nexecutor = \"command\"\ncommand = [\"x\"]\ntimeout_ms = \"1s\"\n",
            "agents.registry: `timeout_ms` must be",
        ),
        (
            "[agents.social]\nexecutor = \"http\"\n",
            "agents.social: missing `url`",
        ),
        (
            "[agents.social]\nexecutor = \"http\"\nurl = \"ftp://127.0.0.1/x\"\n",
            "agents.social: `url` must be an http:// or https:// URL",
        ),
        (
            "[agents.social]\nexecutor = \"http\"\nurl = \"not a url\"\n",
            "agents.social: `url` is not a valid",
        ),
        (
            "[agents.social]\nexecutor = \"http\"\nurl = \"http://127.0.0.1/\"\ncommand = [\"x\"]\n",
            "agents.social: unknown key `command`",
        ),
        (
            "[agents.\"bad name\"]\nexecutor = \"builtin\"\nbuiltin = \"echo\"\n",
            "agents.\"bad name\": an agent type must be",
        ),
        (
            "[agents.\"builtin.echo\"]\nexecutor = \"builtin\"\nbuiltin = \"echo\"\n",
            "agents.builtin.echo: agent types starting with `builtin.` are reserved",
        ),
        (
            "[agents.my.agent]\nexecutor = \"builtin\"\nbuiltin = \"echo\"\n",
            "must be quoted",
        ),
        (
            "[agents.demo]\nexecutor = \"builtin\"\nbuiltin = \"shout\"\n",
            "agents.demo: `builtin` must be one of",
        ),
        (
            "[agents.demo]\nexecutor = \"builtin\"\n",
            "agents.demo: missing `builtin`",
        ),
        (
            "[agents.demo]\nexecutor = \"builtin\"\nbuiltin = \"echo\"\ntimeout_ms = 5\n",
            "agents.demo: unknown key `timeout_ms`",
        ),
        ("agents = 3\n", "`agents` must be a table"),
        ("[agents]\nregistry = 3\n", "agents.registry: must be a table"),
        ("[server]\nport = 1\n", "unknown top-level key `server`"),
        ("[[webhooks]]\nevents = [\"plan_paused\"]\n", "webhooks[0]: missing `url`"),
        (
            "[[webhooks]]\nurl = \"http://127.0.0.1/h\"\n[[webhooks]]\nurl = \"http://127.0.0.1/h\"\nsecrets = \"x\"\n",
            "webhooks[1]: unknown key `secrets` (the keys of a webhook are: url, events, secret); did you mean `secret`?",
        ),
        (
            "[[webhooks]]\nurl = \"http://127.0.0.1/h\"\nevents = []\n",
            "webhooks[0]: `events` is empty",
        ),
        (
            "[[webhooks]]\nurl = \"http://127.0.0.1/h\"\nevents = [\"Plan Paused\"]\n",
            "webhooks[0]: `events[0]` must be an event type",
        ),
        (
            "[[webhooks]]\nurl = \"http://127.0.0.1/h\"\nsecret = \"\"\n",
            "webhooks[0]: `secret` is empty",
        ),
        (
            "[[webhooks]]\nurl = \"file:///etc/passwd\"\n",
            "webhooks[0]: `url` must be an http:// or https:// URL",
        ),
        ("[agents.x\n", "not valid TOML"),
    ];
    for (text, expected) in cases {
        match Config::parse(text) {
            Ok(c) => panic!("accepted:\n{text}\n→ {c:?}"),
            Err(e) => assert!(
                e.to_string().contains(expected),
                "for\n{text}\nexpected a message containing {expected:?}, got {:?}",
                e.to_string()
            ),
        }
    }
}

#[tokio::test]
async fn builtin_aliases_work_through_the_registry() {
    let c = Config::parse(
        "[agents.search]\nexecutor = \"builtin\"\nbuiltin = \"echo\"\n\
         [agents.flaky]\nexecutor = \"builtin\"\nbuiltin = \"fail\"\n\
         [agents.slow]\nexecutor = \"builtin\"\nbuiltin = \"sleep\"\n",
    )
    .unwrap();
    assert_eq!(
        c.agents["search"],
        AgentConfig::Builtin {
            builtin: BuiltinAgent::Echo
        }
    );
    let r = c.registry();
    let out = run(&*r.get("search").unwrap(), task(json!({"q": 1})))
        .await
        .unwrap();
    assert_eq!(out.output, json!({"q": 1}));
    let mut t = task(json!({"times": 5}));
    t.attempt = 1;
    assert!(run(&*r.get("flaky").unwrap(), t).await.is_err());
    let out = run(&*r.get("slow").unwrap(), task(json!({"ms": 1})))
        .await
        .unwrap();
    assert_eq!(out.output, json!({"ms": 1}));
}

#[tokio::test]
async fn load_resolves_relative_programs_against_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("agents")).unwrap();
    let script = dir.path().join("agents/run.sh");
    std::fs::write(&script, "#!/bin/sh\necho '{\"output\": \"from script\"}'\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.path().join("data.json"),
        "{\"output\": \"relative arg\"}\n",
    )
    .unwrap();
    let path = dir.path().join("cairn.toml");
    std::fs::write(
        &path,
        "[agents.a]\nexecutor = \"command\"\ncommand = [\"./agents/run.sh\"]\n\
         [agents.b]\nexecutor = \"command\"\ncommand = [\"agents/run.sh\"]\n\
         [agents.c]\nexecutor = \"command\"\ncommand = [\"cat\", \"data.json\"]\n",
    )
    .unwrap();
    let c = Config::load(&path).unwrap();
    let base = c.base_dir.clone().unwrap();
    assert!(base.is_absolute());
    let AgentConfig::Command { command, .. } = &c.agents["a"] else {
        panic!()
    };
    assert!(Path::new(&command[0]).is_absolute(), "{command:?}");
    let AgentConfig::Command { command, .. } = &c.agents["c"] else {
        panic!()
    };
    assert_eq!(command[0], "cat", "bare names stay for PATH lookup");
    let r = c.registry();
    for (agent, expected) in [
        ("a", "from script"),
        ("b", "from script"),
        ("c", "relative arg"),
    ] {
        // A script written a moment ago can be "busy" while another test thread forks.
        let mut result = run(&*r.get(agent).unwrap(), task(json!({}))).await;
        for _ in 0..5 {
            match &result {
                Err(e) if e.message.contains("busy") => {
                    result = run(&*r.get(agent).unwrap(), task(json!({}))).await
                }
                _ => break,
            }
        }
        let out = result.unwrap_or_else(|e| panic!("{agent}: {e:?}"));
        assert_eq!(out.output, json!(expected), "{agent}");
    }

    // Errors from a file name it.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[agents.x]\nexecutor = \"http\"\n").unwrap();
    let e = Config::load(&bad).unwrap_err().to_string();
    assert!(
        e.contains("bad.toml") && e.contains("agents.x: missing `url`"),
        "{e}"
    );
}

#[test]
fn discover_finds_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.yaml");
    std::fs::write(&plan, "steps: []\n").unwrap();

    // The tests run in the crate directory, which has no cairn.toml.
    assert!(Config::discover(None, Some(&plan)).unwrap().is_none());
    assert!(Config::discover(None, None).unwrap().is_none());

    let beside = dir.path().join("cairn.toml");
    std::fs::write(
        &beside,
        "[agents.s]\nexecutor = \"builtin\"\nbuiltin = \"sleep\"\n",
    )
    .unwrap();
    let (path, c) = Config::discover(None, Some(&plan)).unwrap().unwrap();
    assert_eq!(path, beside);
    assert!(c.agents.contains_key("s"));

    let explicit = dir.path().join("other.toml");
    std::fs::write(&explicit, "").unwrap();
    let (path, c) = Config::discover(Some(&explicit), Some(&plan))
        .unwrap()
        .unwrap();
    assert_eq!(path, explicit);
    assert!(c.agents.is_empty());

    let missing = dir.path().join("missing.toml");
    let e = Config::discover(Some(&missing), Some(&plan)).unwrap_err();
    assert!(e.to_string().contains("missing.toml"), "{e}");
}
