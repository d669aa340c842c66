//! What every browser test uses: a `cairn serve` child (the shared `common::Server`), a chromedriver child with one headless
//! Chromium session, bounded waits on the page, screenshots, and the browser console.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::common::{kill_and_reap, latch_dir, Api, Server};

/// How long any wait on the page may take before the test fails (generous: CI is shared).
pub const WAIT: Duration = Duration::from_secs(20);

/// `true` (and a note on stderr) when browser tests are skipped on purpose.
pub fn skipped() -> bool {
    if std::env::var_os("CAIRN_SKIP_BROWSER").is_some_and(|v| v == "1") {
        eprintln!("CAIRN_SKIP_BROWSER=1: browser test skipped");
        return true;
    }
    false
}

/// A running `cairn serve` on a loopback port with its own database: a [`Server`] of the shared
/// test helpers, its temporary directory, and the admin token's HTTP helpers the tests use.
pub struct Serve {
    pub server: Server,
    pub base: String,
    /// The admin token printed at first start (None under `--no-auth`).
    pub admin: Option<String>,
    pub dir: TempDir,
    api: Api,
}

impl Serve {
    /// `cairn serve --bind 127.0.0.1:0 --db …` plus `extra`, in a fresh temporary directory.
    pub fn start(extra: &[&str]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("cairn.db");
        latch_dir(&db);
        let server = Server::start(&db, extra);
        Serve {
            base: server.base.clone(),
            admin: server.admin.clone(),
            api: Api::new(&server.base),
            server,
            dir,
        }
    }

    /// Where `builtin.latch` looks for release files.
    pub fn latch_dir(&self) -> PathBuf {
        latch_dir(&self.dir.path().join("cairn.db"))
    }

    /// Releases the latch `name` (a step `builtin.latch` with `params.name`).
    pub fn release(&self, name: &str) {
        std::fs::write(self.latch_dir().join(name), b"").unwrap();
    }

    /// A JSON call as `token` (None: the admin token, or nothing under --no-auth). Panics on a
    /// transport error; answers the status and the body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let r = self
            .api
            .call(method, path, token.or(self.admin.as_deref()), body)
            .await;
        (r.status, r.body)
    }

    /// `call` that must answer 2xx; answers the body.
    pub async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method.clone(), path, None, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}\nserver stderr:\n{}",
            self.server.stderr.lock().unwrap()
        );
        v
    }

    pub async fn get(&self, path: &str) -> Value {
        self.ok(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        self.ok(reqwest::Method::POST, path, Some(body)).await
    }

    /// A token of `role` for `user`, created with the admin token.
    pub async fn token(&self, user: &str, role: &str) -> String {
        let v = self
            .post("/v1/tokens", json!({"user": user, "role": role}))
            .await;
        v["token"].as_str().expect("token in answer").to_owned()
    }

    /// Polls `GET path` until `pred` holds (bounded by [`WAIT`]); answers the last body.
    pub async fn until(&self, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.get(path).await;
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: still {v} after {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A chromedriver child and one headless Chromium session on it.
pub struct Browser {
    driver: Child,
    pub client: Client,
    port: u16,
    /// How long a wait on the page may take ([`WAIT`] unless the test asks for more).
    wait: Duration,
    /// The test's name: screenshots are `target/tmp/dashboard/<name>-<label>.png`.
    name: String,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a 1280×900 headless window.
    pub async fn start(name: &str) -> Browser {
        Browser::sized(name, 1280, 900).await
    }

    pub async fn sized(name: &str, width: u32, height: u32) -> Browser {
        let mut driver = Command::new("chromedriver")
            .args(["--port=0", "--allowed-ips=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start chromedriver ({e}): install Debian's chromium and \
                     chromium-driver (.ci/run does), or set CAIRN_SKIP_BROWSER=1"
                )
            });
        let (tx, rx) = std::sync::mpsc::channel();
        let out = driver.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(rest) = line.split("started successfully on port ").nth(1) {
                        let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                        let _ = tx.send(port.parse::<u16>().unwrap_or(0));
                        sent = true;
                    }
                }
            }
        });
        let port = match rx.recv_timeout(WAIT) {
            Ok(p) if p > 0 => p,
            _ => {
                kill_and_reap(&mut driver);
                panic!("chromedriver did not say its port within {WAIT:?}");
            }
        };
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-extensions", "--disable-background-networking",
                         "--disable-sync", "--disable-default-apps", "--no-proxy-server",
                         format!("--window-size={width},{height}")],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(caps);
        let url = format!("http://127.0.0.1:{port}");
        let client = match tokio::time::timeout(WAIT * 2, builder.connect(&url)).await {
            Ok(Ok(c)) => c,
            other => {
                kill_and_reap(&mut driver);
                panic!("no Chromium session: {other:?}");
            }
        };
        Browser {
            driver,
            client,
            port,
            wait: WAIT,
            name: name.to_owned(),
        }
    }

    /// Lets every later wait on the page take up to `wait` (for pages that are slow by design
    /// of the test, such as a 10,000-step plan drawn by a debug build on a shared machine).
    pub fn patient(&mut self, wait: Duration) {
        self.wait = wait;
    }

    /// Opens `base` + `path` (e.g. `/#/plans`).
    pub async fn open(&self, base: &str, path: &str) {
        self.client
            .goto(&format!("{base}{path}"))
            .await
            .unwrap_or_else(|e| panic!("goto {path}: {e}"));
    }

    /// Signs in through the page with `token`.
    pub async fn sign_in(&self, base: &str, token: &str) {
        self.open(base, "/#/signin").await;
        let input = self.find("#token").await;
        input.send_keys(token).await.unwrap();
        self.click("#signin").await;
        self.wait_for("#plans").await;
    }

    /// The first element matching `css`, waiting for it (bounded).
    pub async fn find(&self, css: &str) -> Element {
        match tokio::time::timeout(
            self.wait,
            self.client.wait().forever().for_element(Locator::Css(css)),
        )
        .await
        {
            Ok(Ok(e)) => e,
            other => {
                self.screenshot("missing").await;
                panic!("no element {css} within {:?}: {other:?}", self.wait);
            }
        }
    }

    pub async fn wait_for(&self, css: &str) -> Element {
        self.find(css).await
    }

    /// Clicks the element `css` (waiting for it). A live page may redraw the element between
    /// finding and clicking it; then the one drawn in its place is clicked (bounded).
    pub async fn click(&self, css: &str) {
        let deadline = Instant::now() + self.wait;
        loop {
            let e = self.find(css).await;
            match e.click().await {
                Ok(_) => return,
                Err(err)
                    if err.to_string().contains("stale element") && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("click {css}: {err}"),
            }
        }
    }

    /// Clicks `css` until the text of `shows` reads as `pred` wants (bounded), for a click whose
    /// effect is the only sign that it landed. A page still laying itself out under load can
    /// move the element between the driver aiming and clicking, and that click lands on what
    /// moved there instead (a full CI run once left the steps list's "Previous" unturned for
    /// 90 s while each run alone passed). Each click waits up to 5 s for its effect before the
    /// next: only for clicks whose effect shows at once (a second landed click would overshoot).
    pub async fn click_until(
        &self,
        css: &str,
        shows: &str,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + self.wait;
        loop {
            self.click(css).await;
            let settle = Instant::now() + Duration::from_secs(5);
            loop {
                let t = self.text(shows).await;
                if pred(&t) {
                    return t;
                }
                if Instant::now() > deadline {
                    self.screenshot("timeout").await;
                    panic!(
                        "{what}: {shows} still reads {t:?} after clicking {css} for {:?}",
                        self.wait
                    );
                }
                if Instant::now() > settle {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The text of `css`.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap_or_default()
    }

    /// Waits until the text of `css` satisfies `pred` (bounded); answers it.
    pub async fn until_text(&self, css: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + self.wait;
        loop {
            let t = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if pred(&t) {
                return t;
            }
            if Instant::now() > deadline {
                self.screenshot("timeout").await;
                panic!("{what}: {css} still reads {t:?} after {:?}", self.wait);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types `text` at the end of the text box `css` and waits until its value shows it, so a
    /// later click acts on what was typed (and a lost keystroke fails here, by name).
    pub async fn type_into(&self, css: &str, text: &str) {
        self.find(css)
            .await
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("typing into {css}: {e}"));
        let deadline = Instant::now() + self.wait;
        loop {
            let v = self
                .js(
                    "const e = document.querySelector(arguments[0]); return e ? e.value : null",
                    vec![json!(css)],
                )
                .await;
            if v.as_str().is_some_and(|v| v.ends_with(text)) {
                return;
            }
            if Instant::now() > deadline {
                self.screenshot("typed").await;
                panic!("{css} reads {v} after typing {text:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The id of the element that has the focus ("" for none or the page's body).
    pub async fn focused(&self) -> String {
        let v = self
            .js(
                "return document.activeElement ? document.activeElement.id : ''",
                vec![],
            )
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` in the page (WebDriver's execute is not bound by the page's CSP).
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("execute {script}: {e}"))
    }

    /// How many CSS pixels the page is wider than the window (0 or less: no sideways scroll).
    pub async fn overflow_px(&self) -> i64 {
        self.js(
            "return document.documentElement.scrollWidth - window.innerWidth",
            vec![],
        )
        .await
        .as_i64()
        .unwrap_or(i64::MAX)
    }

    /// Saves a PNG of the page as `target/tmp/dashboard/<test>-<label>.png`.
    pub async fn screenshot(&self, label: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}-{label}.png", self.name));
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::write(&path, png);
        }
        path
    }

    /// The browser console's messages at level SEVERE (errors and uncaught exceptions) since
    /// the last call, from chromedriver's log endpoint. A request the server refused with a 4xx
    /// is logged by Chromium too; those are left out: the page shows them to the user, and the
    /// tests check what it shows. A 5xx is kept.
    pub async fn console_errors(&self) -> Vec<String> {
        let sid = self
            .client
            .session_id()
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let url = format!("http://127.0.0.1:{}/session/{sid}/se/log", self.port);
        let res = reqwest::Client::new()
            .post(url)
            .json(&json!({"type": "browser"}))
            .timeout(WAIT)
            .send()
            .await;
        let Ok(res) = res else {
            return vec!["the console log could not be read".into()];
        };
        let v: Value = res.json().await.unwrap_or(Value::Null);
        v["value"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|m| m["level"] == "SEVERE")
                    .filter(|m| {
                        let text = m["message"].as_str().unwrap_or("");
                        !(text.contains(
                            "Failed to load resource: the server responded with a status of 4",
                        ))
                    })
                    .map(|m| m["message"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Fails the test when the console has an error; always takes a last screenshot.
    pub async fn finish(self) {
        self.screenshot("end").await;
        let errors = self.console_errors().await;
        let _ = tokio::time::timeout(WAIT, self.client.clone().close()).await;
        drop(self);
        assert!(
            errors.is_empty(),
            "errors in the browser console: {errors:#?}"
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_and_reap(&mut self.driver);
    }
}

/// The Chromium binary: `$CHROMIUM`, else the first of the usual names on the PATH.
fn chromium() -> String {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return p;
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(name);
            if p.is_file() {
                return p.to_string_lossy().into_owned();
            }
        }
    }
    "chromium".into()
}
