//! `cairn.toml`: agents and webhooks.
//!
//! ```toml
//! [agents.registry]
//! executor = "command"                 # command | http | builtin
//! command = ["python3", "agents/registry.py"]
//! timeout_ms = 60000
//! env = ["OPENAI_API_KEY"]             # cairn's variables the program also gets
//! [agents.social]
//! executor = "http"
//! url = "http://127.0.0.1:9000/run"
//! [agents.search]
//! executor = "builtin"                 # an alias of builtin.echo
//! builtin = "echo"                     # echo | sleep | fail | latch
//! [[webhooks]]
//! url = "http://127.0.0.1:9100/hook"
//! events = ["plan_paused", "intervention_applied"]   # optional: absent = every event
//! secret = "…"                         # optional
//! ```
//!
//! The file is read strictly: an unknown key, a missing one, a value of the wrong type or out of
//! range is an error whose message names the table and the key.
//!
//! A `command` agent whose program is a relative path with a `/` (`./agents/x.py`,
//! `agents/x.py`) is resolved against the configuration file's directory when the file is read
//! with [`Config::load`], and the program runs in that directory, so relative arguments such as
//! `agents/registry.py` work wherever cairn is started from. A bare name (`python3`) is looked up
//! on `PATH`.
//!
//! A `command` agent runs with a clean environment: `PATH`, `HOME`, the task's `CAIRN_*`
//! variables and the variables its `env` list names, never the rest of cairn's own (which may
//! hold an API token).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_core::suggest::{closest, did_you_mean};
use toml::{Table, Value};

use crate::executor::command::CommandExecutor;
use crate::executor::http::HttpExecutor;
use crate::executor::{Executor, Registry};

/// The largest `timeout_ms`: seven days.
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;

/// The file [`Config::discover`] looks for.
pub const FILE_NAME: &str = "cairn.toml";

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub agents: BTreeMap<String, AgentConfig>,
    pub webhooks: Vec<WebhookConfig>,
    /// The directory of the file when read with [`Config::load`] (absolute): relative programs
    /// were resolved against it and `command` agents run in it. `None` after [`Config::parse`].
    pub base_dir: Option<PathBuf>,
}

/// One `[agents.NAME]` table.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentConfig {
    Command {
        command: Vec<String>,
        timeout_ms: Option<u64>,
        /// Names of cairn's environment variables passed on to the program.
        env: Vec<String>,
    },
    Http {
        url: String,
        timeout_ms: Option<u64>,
    },
    /// Another name for one of the builtins.
    Builtin { builtin: BuiltinAgent },
}

/// The builtins an agent type may alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinAgent {
    Echo,
    Sleep,
    Fail,
    Latch,
}

impl BuiltinAgent {
    pub fn name(self) -> &'static str {
        match self {
            BuiltinAgent::Echo => "echo",
            BuiltinAgent::Sleep => "sleep",
            BuiltinAgent::Fail => "fail",
            BuiltinAgent::Latch => "latch",
        }
    }
}

/// One `[[webhooks]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub url: String,
    /// Event type names (`plan_paused`, …); `["*"]` when the file gives none: every event.
    pub events: Vec<String>,
    /// Key of the HMAC-SHA256 of the body sent in `X-Cairn-Signature`.
    pub secret: Option<String>,
}

impl WebhookConfig {
    /// Whether this hook wants events of this type.
    pub fn wants(&self, event_type: &str) -> bool {
        self.events.iter().any(|e| e == "*" || e == event_type)
    }
}

/// A configuration file that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(message.into()))
}

impl Config {
    /// Reads the text of a `cairn.toml`. Relative program paths stay as written (see
    /// [`Config::load`]).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError(format!("not valid TOML: {e}")))?;
        let mut config = Config::default();
        for (key, value) in &table {
            match key.as_str() {
                "agents" => {
                    let Value::Table(agents) = value else {
                        return err(
                            "`agents` must be a table of agent types: [agents.NAME] sections",
                        );
                    };
                    for (name, agent) in agents {
                        check_agent_name(name)?;
                        let ctx = format!("agents.{name}");
                        let Value::Table(agent) = agent else {
                            return err(format!(
                                "{ctx}: must be a table ([agents.{name}] with an `executor` key)"
                            ));
                        };
                        config
                            .agents
                            .insert(name.clone(), parse_agent(&ctx, agent)?);
                    }
                }
                "webhooks" => {
                    let Value::Array(hooks) = value else {
                        return err("`webhooks` must be a list of [[webhooks]] sections");
                    };
                    for (i, hook) in hooks.iter().enumerate() {
                        let ctx = format!("webhooks[{i}]");
                        let Value::Table(hook) = hook else {
                            return err(format!("{ctx}: must be a table ([[webhooks]] section)"));
                        };
                        config.webhooks.push(parse_webhook(&ctx, hook)?);
                    }
                }
                other => {
                    return err(format!(
                        "unknown top-level key `{other}` (known: agents, webhooks){}",
                        did_you_mean(other, ["agents", "webhooks"])
                    ))
                }
            }
        }
        Ok(config)
    }

    /// Reads a `cairn.toml` file: relative program paths are resolved against its directory, which
    /// becomes [`Config::base_dir`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let mut config = Config::parse(&text)
            .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = std::path::absolute(&dir).map_err(|e| {
            ConfigError(format!(
                "{}: cannot resolve the directory {}: {e}",
                path.display(),
                dir.display()
            ))
        })?;
        config.resolve_relative_programs(&dir);
        config.base_dir = Some(dir);
        Ok(config)
    }

    /// Finds the configuration: `explicit` if given (it must exist), else `./cairn.toml` if it
    /// exists, else `cairn.toml` beside the plan file if it exists, else none.
    pub fn discover(
        explicit: Option<&Path>,
        plan_file: Option<&Path>,
    ) -> Result<Option<(PathBuf, Config)>, ConfigError> {
        if let Some(path) = explicit {
            if !path.is_file() {
                return err(format!(
                    "configuration file {} does not exist or is not a file",
                    path.display()
                ));
            }
            return Ok(Some((path.to_path_buf(), Config::load(path)?)));
        }
        let here = PathBuf::from(FILE_NAME);
        if here.is_file() {
            let config = Config::load(&here)?;
            return Ok(Some((here, config)));
        }
        if let Some(dir) = plan_file.and_then(Path::parent) {
            if !dir.as_os_str().is_empty() {
                let beside = dir.join(FILE_NAME);
                if beside.is_file() {
                    let config = Config::load(&beside)?;
                    return Ok(Some((beside, config)));
                }
            }
        }
        Ok(None)
    }

    /// The builtins plus every configured agent.
    pub fn registry(&self) -> Registry {
        let registry = Registry::with_builtins();
        for (name, agent) in &self.agents {
            let executor: Arc<dyn Executor> = match agent {
                AgentConfig::Command {
                    command,
                    timeout_ms,
                    env,
                } => Arc::new(
                    CommandExecutor::new(command.clone())
                        .with_timeout_ms(*timeout_ms)
                        .with_env(env.clone())
                        .with_cwd(self.base_dir.clone()),
                ),
                AgentConfig::Http { url, timeout_ms } => {
                    Arc::new(HttpExecutor::new(url.clone(), *timeout_ms))
                }
                AgentConfig::Builtin { builtin } => {
                    match registry.get(&format!("builtin.{}", builtin.name())) {
                        Some(executor) => executor,
                        None => continue,
                    }
                }
            };
            registry.register(name, executor);
        }
        registry
    }

    fn resolve_relative_programs(&mut self, dir: &Path) {
        for agent in self.agents.values_mut() {
            if let AgentConfig::Command { command, .. } = agent {
                if let Some(program) = command.first_mut() {
                    let p = Path::new(program.as_str());
                    if program.contains('/') && !p.is_absolute() {
                        *program = dir.join(p).to_string_lossy().into_owned();
                    }
                }
            }
        }
    }
}

fn check_agent_name(name: &str) -> Result<(), ConfigError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if name.is_empty() || name.len() > 128 || !ok_chars {
        return err(format!(
            "agents.{name:?}: an agent type must be 1 to 128 characters of A-Z a-z 0-9 _ . -"
        ));
    }
    if name.starts_with("builtin.") {
        return err(format!(
            "agents.{name}: agent types starting with `builtin.` are reserved for the builtins \
             (alias one with executor = \"builtin\" under another name)"
        ));
    }
    Ok(())
}

/// Every key an `[agents.NAME]` table may have, whatever its executor.
const AGENT_KEYS: &[&str] = &["executor", "command", "url", "builtin", "timeout_ms"];

fn parse_agent(ctx: &str, t: &Table) -> Result<AgentConfig, ConfigError> {
    // A misspelt key (`executer`) is reported as what it is before what it leaves missing.
    for key in t.keys() {
        if !AGENT_KEYS.contains(&key.as_str()) && !t[key].is_table() {
            if let Some(meant) = closest(key, AGENT_KEYS.iter().copied()) {
                return err(format!(
                    "{ctx}: unknown key `{key}`; did you mean `{meant}`?"
                ));
            }
        }
    }
    let Some(executor) = t.get("executor") else {
        let mut message = format!("{ctx}: missing `executor` (one of: command, http, builtin)");
        if t.values().any(Value::is_table) {
            message.push_str(
                "; an agent type with a dot in its name must be quoted: [agents.\"my.agent\"]",
            );
        }
        return err(message);
    };
    let Value::String(executor) = executor else {
        return err(format!(
            "{ctx}: `executor` must be a string: \"command\", \"http\" or \"builtin\""
        ));
    };
    let allowed: &[&str] = match executor.as_str() {
        "command" => &["executor", "command", "timeout_ms", "env"],
        "http" => &["executor", "url", "timeout_ms"],
        "builtin" => &["executor", "builtin"],
        other => {
            return err(format!(
                "{ctx}: unknown `executor` \"{other}\" (one of: command, http, builtin)"
            ))
        }
    };
    check_keys(ctx, t, allowed, &format!("executor = \"{executor}\""))?;
    match executor.as_str() {
        "command" => {
            let what = "a list: program and arguments, e.g. [\"python3\", \"agent.py\"]";
            let Some(command) = t.get("command") else {
                return err(format!("{ctx}: missing `command` ({what})"));
            };
            let Value::Array(items) = command else {
                return err(format!("{ctx}: `command` must be {what}"));
            };
            if items.is_empty() {
                return err(format!("{ctx}: `command` is empty ({what})"));
            }
            let mut argv = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let Value::String(s) = item else {
                    return err(format!("{ctx}: `command[{i}]` must be a string ({what})"));
                };
                if s.contains('\0') {
                    return err(format!("{ctx}: `command[{i}]` contains a NUL character"));
                }
                argv.push(s.clone());
            }
            if argv[0].is_empty() {
                return err(format!("{ctx}: `command[0]` (the program) is empty"));
            }
            Ok(AgentConfig::Command {
                command: argv,
                timeout_ms: timeout_ms(ctx, t)?,
                env: env_names(ctx, t)?,
            })
        }
        "http" => {
            let Some(url) = t.get("url") else {
                return err(format!(
                    "{ctx}: missing `url` (the http:// or https:// address to POST steps to)"
                ));
            };
            Ok(AgentConfig::Http {
                url: http_url(ctx, "url", url)?,
                timeout_ms: timeout_ms(ctx, t)?,
            })
        }
        _ => {
            let what = "one of: \"echo\", \"sleep\", \"fail\", \"latch\"";
            let Some(builtin) = t.get("builtin") else {
                return err(format!("{ctx}: missing `builtin` ({what})"));
            };
            let builtin = match builtin.as_str() {
                Some("echo") | Some("builtin.echo") => BuiltinAgent::Echo,
                Some("sleep") | Some("builtin.sleep") => BuiltinAgent::Sleep,
                Some("fail") | Some("builtin.fail") => BuiltinAgent::Fail,
                Some("latch") | Some("builtin.latch") => BuiltinAgent::Latch,
                _ => return err(format!("{ctx}: `builtin` must be {what}, not {builtin}")),
            };
            Ok(AgentConfig::Builtin { builtin })
        }
    }
}

fn parse_webhook(ctx: &str, t: &Table) -> Result<WebhookConfig, ConfigError> {
    check_keys(ctx, t, &["url", "events", "secret"], "a webhook")?;
    let Some(url) = t.get("url") else {
        return err(format!(
            "{ctx}: missing `url` (the http:// or https:// address events are POSTed to)"
        ));
    };
    let url = http_url(ctx, "url", url)?;
    let events = match t.get("events") {
        None => vec!["*".to_owned()],
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return err(format!(
                    "{ctx}: `events` is empty (list event types such as \"plan_paused\", or \
                     leave `events` out to receive every event)"
                ));
            }
            let mut events = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let name = item.as_str().unwrap_or_default();
                let well_formed = name == "*"
                    || (!name.is_empty()
                        && name.len() <= 64
                        && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
                if !well_formed {
                    return err(format!(
                        "{ctx}: `events[{i}]` must be an event type such as \"plan_paused\" \
                         (snake_case) or \"*\", not {item}"
                    ));
                }
                events.push(name.to_owned());
            }
            events
        }
        Some(_) => {
            return err(format!(
                "{ctx}: `events` must be a list of event types, e.g. [\"plan_paused\"]"
            ))
        }
    };
    let secret = match t.get("secret") {
        None => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::String(_)) => {
            return err(format!(
                "{ctx}: `secret` is empty (leave it out to send unsigned events)"
            ))
        }
        Some(_) => return err(format!("{ctx}: `secret` must be a string")),
    };
    Ok(WebhookConfig {
        url,
        events,
        secret,
    })
}

fn check_keys(ctx: &str, t: &Table, allowed: &[&str], kind: &str) -> Result<(), ConfigError> {
    for key in t.keys() {
        if !allowed.contains(&key.as_str()) {
            return err(format!(
                "{ctx}: unknown key `{key}` (the keys of {kind} are: {}){}",
                allowed.join(", "),
                did_you_mean(key, allowed.iter().copied())
            ));
        }
    }
    Ok(())
}

fn timeout_ms(ctx: &str, t: &Table) -> Result<Option<u64>, ConfigError> {
    match t.get("timeout_ms") {
        None => Ok(None),
        Some(Value::Integer(n)) if *n >= 1 && (*n as u64) <= MAX_TIMEOUT_MS => Ok(Some(*n as u64)),
        Some(v) => err(format!(
            "{ctx}: `timeout_ms` must be a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS} \
             (7 days), not {v}"
        )),
    }
}

/// The `env` list of a command agent: names of environment variables.
fn env_names(ctx: &str, t: &Table) -> Result<Vec<String>, ConfigError> {
    let what = "a list of environment variable names, e.g. [\"OPENAI_API_KEY\", \"LANG\"]";
    let items = match t.get("env") {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return err(format!("{ctx}: `env` must be {what}")),
    };
    let mut names = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let name = item.as_str().unwrap_or_default();
        let well_formed = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !well_formed {
            return err(format!(
                "{ctx}: `env[{i}]` must be a variable name (letters, digits and _), not {item}"
            ));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

fn http_url(ctx: &str, key: &str, v: &Value) -> Result<String, ConfigError> {
    let Value::String(s) = v else {
        return err(format!(
            "{ctx}: `{key}` must be a string: an http:// or https:// URL"
        ));
    };
    match reqwest::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(s.clone()),
        Ok(u) if !matches!(u.scheme(), "http" | "https") => err(format!(
            "{ctx}: `{key}` must be an http:// or https:// URL, not a {}: URL (\"{s}\")",
            u.scheme()
        )),
        Ok(_) => err(format!("{ctx}: `{key}` has no host: \"{s}\"")),
        Err(e) => err(format!(
            "{ctx}: `{key}` is not a valid http:// or https:// URL (\"{s}\"): {e}"
        )),
    }
}
