//! The plan document (DESIGN §1) and its validation.
//!
//! A plan arrives as JSON or YAML of one shape; unknown fields are errors. Validation collects
//! every fault it finds, each naming the step and the field, so a user fixes a file in one pass.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::expr;

/// Most steps one plan may have.
pub const MAX_STEPS: usize = 10_000;
/// Highest `max_parallel`.
pub const MAX_PARALLEL: u32 = 1_024;
const MAX_ATTEMPTS: u32 = 100;
const MAX_BACKOFF_MS: u64 = 24 * 3_600_000;
const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3_600_000;

fn default_max_parallel() -> u32 {
    8
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A plan definition: what to run and in which order.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    #[serde(default)]
    pub query: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub metadata: Value,
    #[serde(default = "default_max_parallel")]
    pub max_parallel: u32,
    pub steps: Vec<StepDef>,
}

/// One step of a plan.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    pub step_id: String,
    pub action: String,
    pub agent_type: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
    /// `None` = after the previous step in the list; `Some(vec![])` = no dependency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub pause_before: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub pause_after: bool,
    /// Accepted by the parser only to refuse it with a clear message until quality gates land.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_gate: Option<Value>,
    /// Accepted by the parser only to refuse it with a clear message until rollback lands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<Value>,
}

/// How often and how patiently a failing step is tried again.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default = "RetryPolicy::default_attempts")]
    pub max_attempts: u32,
    #[serde(default = "RetryPolicy::default_backoff")]
    pub backoff_ms: u64,
    #[serde(default = "RetryPolicy::default_factor")]
    pub backoff_factor: f64,
}

impl RetryPolicy {
    fn default_attempts() -> u32 {
        1
    }
    fn default_backoff() -> u64 {
        200
    }
    fn default_factor() -> f64 {
        2.0
    }

    /// The policy of a step without one: a single attempt.
    pub const ONCE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        backoff_ms: 200,
        backoff_factor: 2.0,
    };

    /// The wait before attempt `next_attempt` (2 for the first retry), in microseconds.
    pub fn backoff_micros(&self, next_attempt: u32) -> i64 {
        let exp = next_attempt.saturating_sub(2).min(64) as i32;
        let ms = self.backoff_ms as f64 * self.backoff_factor.powi(exp);
        let ms = ms.min(MAX_BACKOFF_MS as f64);
        (ms * 1_000.0) as i64
    }
}

/// One thing wrong with a plan: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Dotted path, e.g. `steps.step_2.depends_on`; empty for the document as a whole.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A plan that failed to parse or validate, with every fault found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .faults.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; "))]
pub struct Invalid {
    pub faults: Vec<Fault>,
}

impl Invalid {
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            faults: vec![Fault {
                path: path.into(),
                message: message.into(),
            }],
        }
    }
}

/// Document formats a plan may be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    /// Guesses the format from a file name, falling back to the content.
    pub fn guess(name: &str, text: &str) -> Format {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".json") {
            Format::Json
        } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            Format::Yaml
        } else if text.trim_start().starts_with('{') {
            Format::Json
        } else {
            Format::Yaml
        }
    }
}

/// Is `id` a valid plan or step id: `[A-Za-z0-9_.-]{1,128}`?
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        // `.` and `..` (any all-dot id) would name a path segment, not a plan or step.
        && !id.bytes().all(|b| b == b'.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl Plan {
    /// Parses and validates a plan document.
    pub fn parse(text: &str, format: Format) -> Result<Plan, Invalid> {
        let value: Value = match format {
            Format::Json => serde_json::from_str(text)
                .map_err(|e| Invalid::one("", format!("not valid JSON: {e}")))?,
            Format::Yaml => {
                // YAML is read typed: its scalars are only strings, numbers or booleans in the
                // light of the field they fill (`action: y` is the string "y").
                return match serde_saphyr::from_str::<Plan>(text) {
                    Ok(plan) => plan.validate().map(|()| plan),
                    Err(e) => {
                        let message = e.to_string();
                        let first = message
                            .find("line ")
                            .map(|i| &message[i..])
                            .and_then(|t| t.split(':').next())
                            .unwrap_or("")
                            .to_owned();
                        Err(Plan::locate_unknown_field(
                            serde_saphyr::from_str::<Value>(text).ok(),
                            &first,
                        )
                        .unwrap_or_else(|| {
                            Invalid::one("", format!("not a valid plan document: {e}"))
                        }))
                    }
                };
            }
        };
        Plan::from_value(value)
    }

    /// For a YAML document that failed to parse: the faults naming the step of an unknown field,
    /// if that is what is wrong.
    fn locate_unknown_field(value: Option<Value>, where_: &str) -> Option<Invalid> {
        let invalid = Plan::from_value(value?).err()?;
        let faults: Vec<Fault> = invalid
            .faults
            .into_iter()
            .filter(|f| f.message.contains("unknown field"))
            .map(|f| Fault {
                path: f.path,
                message: format!("{} ({where_})", f.message),
            })
            .collect();
        (!faults.is_empty()).then_some(Invalid { faults })
    }

    /// Parses a plan from a JSON value (an API body) and validates it. Steps are read one by one
    /// so a fault in a step's shape (an unknown field, a wrong type) names the step.
    pub fn from_value(value: Value) -> Result<Plan, Invalid> {
        let Value::Object(mut map) = value else {
            return Err(Invalid::one(
                "",
                "a plan document must be a mapping with a `steps` list",
            ));
        };
        let steps = map.remove("steps");
        map.insert("steps".into(), Value::Array(Vec::new()));
        let mut faults = Vec::new();
        let header = serde_json::from_value::<Plan>(Value::Object(map))
            .map_err(|e| {
                faults.push(Fault {
                    path: String::new(),
                    message: format!("not a valid plan document: {e}"),
                })
            })
            .ok();
        let mut parsed = Vec::new();
        match steps {
            None => faults.push(Fault {
                path: "steps".into(),
                message: "missing: a plan needs a list of steps".into(),
            }),
            Some(Value::Array(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    let id = item
                        .get("step_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .unwrap_or_default();
                    match serde_json::from_value::<StepDef>(item) {
                        Ok(step) => parsed.push(step),
                        Err(e) => faults.push(Fault {
                            path: step_path(i, &id),
                            message: format!("not a valid step: {e}"),
                        }),
                    }
                }
            }
            Some(_) => faults.push(Fault {
                path: "steps".into(),
                message: "must be a list of steps".into(),
            }),
        }
        match header {
            Some(mut plan) if faults.is_empty() => {
                plan.steps = parsed;
                plan.validate()?;
                Ok(plan)
            }
            _ => Err(Invalid { faults }),
        }
    }

    pub fn step_index(&self, step_id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.step_id == step_id)
    }

    /// Checks everything DESIGN §1 asks of a plan; returns all faults at once.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut faults = Vec::new();
        let mut fault = |path: String, message: String| faults.push(Fault { path, message });
        if let Some(id) = &self.plan_id {
            if !valid_id(id) {
                fault(
                    "plan_id".into(),
                    format!("{id:?} is not a valid id (1 to 128 of A-Z a-z 0-9 _ . -)"),
                );
            }
        }
        if self.max_parallel == 0 || self.max_parallel > MAX_PARALLEL {
            fault(
                "max_parallel".into(),
                format!("{} is out of range 1..={MAX_PARALLEL}", self.max_parallel),
            );
        }
        if self.steps.is_empty() {
            fault("steps".into(), "a plan needs at least one step".into());
        }
        if self.steps.len() > MAX_STEPS {
            fault(
                "steps".into(),
                format!(
                    "{} steps is more than the {MAX_STEPS} allowed",
                    self.steps.len()
                ),
            );
        }
        let mut seen: HashSet<&str> = HashSet::new();
        for (i, step) in self.steps.iter().enumerate() {
            let at = step_path(i, &step.step_id);
            if !valid_id(&step.step_id) {
                fault(
                    format!("{at}.step_id"),
                    format!(
                        "{:?} is not a valid id (1 to 128 of A-Z a-z 0-9 _ . -)",
                        step.step_id
                    ),
                );
            } else if !seen.insert(&step.step_id) {
                fault(
                    format!("{at}.step_id"),
                    format!("step id {} is used more than once", step.step_id),
                );
            }
            for f in step.check() {
                fault(format!("{at}.{}", f.path), f.message);
            }
        }
        let ids: HashSet<&str> = self.steps.iter().map(|s| s.step_id.as_str()).collect();
        for (i, step) in self.steps.iter().enumerate() {
            for dep in step.depends_on.iter().flatten() {
                if dep == &step.step_id {
                    fault(
                        format!("{}.depends_on", step_path(i, &step.step_id)),
                        "a step cannot depend on itself".into(),
                    );
                } else if !ids.contains(dep.as_str()) {
                    fault(
                        format!("{}.depends_on", step_path(i, &step.step_id)),
                        format!("unknown step {dep:?}"),
                    );
                }
            }
        }
        if faults.is_empty() {
            if let Some(cycle) = find_cycle(&self.steps) {
                faults.push(Fault {
                    path: "steps".into(),
                    message: format!("the dependencies form a cycle: {}", cycle.join(" -> ")),
                });
            }
        }
        if faults.is_empty() {
            Ok(())
        } else {
            Err(Invalid { faults })
        }
    }
}

fn step_path(index: usize, id: &str) -> String {
    if valid_id(id) {
        format!("steps.{id}")
    } else {
        format!("steps[{index}]")
    }
}

impl StepDef {
    /// Faults of the step on its own (paths relative to the step).
    pub fn check(&self) -> Vec<Fault> {
        let mut out = Vec::new();
        let mut fault = |path: &str, message: String| {
            out.push(Fault {
                path: path.into(),
                message,
            })
        };
        if self.action.trim().is_empty() {
            fault("action", "must not be empty".into());
        }
        if !valid_id(&self.agent_type) {
            fault(
                "agent_type",
                format!(
                    "{:?} is not a valid agent type (1 to 128 of A-Z a-z 0-9 _ . -)",
                    self.agent_type
                ),
            );
        }
        if let Some(retry) = &self.retry {
            if retry.max_attempts == 0 || retry.max_attempts > MAX_ATTEMPTS {
                fault(
                    "retry.max_attempts",
                    format!("{} is out of range 1..={MAX_ATTEMPTS}", retry.max_attempts),
                );
            }
            if retry.backoff_ms > MAX_BACKOFF_MS {
                fault(
                    "retry.backoff_ms",
                    format!("{} is more than one day", retry.backoff_ms),
                );
            }
            if !(1.0..=10.0).contains(&retry.backoff_factor) {
                fault(
                    "retry.backoff_factor",
                    format!("{} is out of range 1.0..=10.0", retry.backoff_factor),
                );
            }
        }
        if let Some(t) = self.timeout_ms {
            if t == 0 || t > MAX_TIMEOUT_MS {
                fault(
                    "timeout_ms",
                    format!("{t} is out of range 1..={MAX_TIMEOUT_MS} (7 days)"),
                );
            }
        }
        if let Some(when) = &self.when {
            if let Err(e) = expr::check_condition(when) {
                fault("when", format!("does not parse: {e}"));
            }
        }
        expr::check_templates(&self.params, "params", &mut |path, e| {
            fault(path, format!("template does not parse: {e}"))
        });
        if self.quality_gate.is_some() {
            fault(
                "quality_gate",
                "quality gates are not supported yet (they arrive with the quality-gate release); remove the field".into(),
            );
        }
        if self.compensate.is_some() {
            fault(
                "compensate",
                "compensations are not supported yet (they arrive with the rollback release); remove the field".into(),
            );
        }
        out
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry.unwrap_or(RetryPolicy::ONCE)
    }
}

/// The ids of the steps `steps[index]` waits for.
pub fn effective_deps(steps: &[StepDef], index: usize) -> Vec<&str> {
    match &steps[index].depends_on {
        Some(deps) => deps.iter().map(String::as_str).collect(),
        None if index == 0 => Vec::new(),
        None => vec![steps[index - 1].step_id.as_str()],
    }
}

/// A cycle in the effective dependency graph, as a path of step ids, if there is one.
pub fn find_cycle(steps: &[StepDef]) -> Option<Vec<String>> {
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.step_id.as_str(), i))
        .collect();
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut mark = vec![0u8; steps.len()];
    for start in 0..steps.len() {
        if mark[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let deps = effective_deps(steps, node);
            if *next < deps.len() {
                let dep = deps[*next];
                *next += 1;
                let Some(&d) = index.get(dep) else { continue };
                match mark[d] {
                    0 => {
                        mark[d] = 1;
                        stack.push((d, 0));
                    }
                    1 => {
                        let from = stack.iter().position(|&(n, _)| n == d).unwrap_or(0);
                        let mut cycle: Vec<String> = stack[from..]
                            .iter()
                            .map(|&(n, _)| steps[n].step_id.clone())
                            .collect();
                        cycle.push(steps[d].step_id.clone());
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                mark[node] = 2;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Result<Plan, Invalid> {
        Plan::parse(text, Format::Yaml)
    }

    #[test]
    fn parses_the_design_example_without_gate_and_compensation() {
        let plan = yaml(
            r#"
plan_id: research_001
query: Market analysis
metadata: {owner: team-a}
steps:
  - step_id: step_1
    action: search
    agent_type: registry
    params: {q: "{{ query }}"}
  - step_id: step_2
    action: analyze
    agent_type: environmental
    depends_on: [step_1]
    when: "steps.step_1.output.hits > 0"
    retry: {max_attempts: 3, backoff_ms: 200, backoff_factor: 2.0}
    timeout_ms: 30000
    pause_after: true
"#,
        )
        .unwrap();
        assert_eq!(plan.max_parallel, 8);
        assert_eq!(plan.steps[1].retry_policy().max_attempts, 3);
        assert_eq!(effective_deps(&plan.steps, 1), vec!["step_1"]);
    }

    #[test]
    fn json_and_yaml_give_the_same_plan() {
        let j = Plan::parse(
            r#"{"query":"q","steps":[{"step_id":"a","action":"x","agent_type":"builtin.echo"}]}"#,
            Format::Json,
        )
        .unwrap();
        let y = yaml("query: q\nsteps:\n  - {step_id: a, action: x, agent_type: builtin.echo}\n")
            .unwrap();
        assert_eq!(j, y);
    }

    fn faults(text: &str) -> String {
        yaml(text).unwrap_err().to_string()
    }

    #[test]
    fn names_every_fault() {
        let msg = faults(
            r#"
steps:
  - {step_id: a, action: x, agent_type: t}
  - {step_id: a, action: x, agent_type: t}
  - {step_id: "bad id", action: x, agent_type: t}
  - {step_id: c, action: "", agent_type: t, depends_on: [nope], timeout_ms: 0}
"#,
        );
        assert!(
            msg.contains("steps.a.step_id: step id a is used more than once"),
            "{msg}"
        );
        assert!(msg.contains("steps[2].step_id"), "{msg}");
        assert!(msg.contains("steps.c.action: must not be empty"), "{msg}");
        assert!(
            msg.contains("steps.c.timeout_ms: 0 is out of range"),
            "{msg}"
        );
        assert!(
            msg.contains("steps.c.depends_on: unknown step \"nope\""),
            "{msg}"
        );
    }

    #[test]
    fn unknown_fields_are_errors() {
        let msg = faults("steps:\n  - {step_id: a, action: x, agent_type: t, colour: red}\n");
        assert!(
            msg.contains("steps.a: not a valid step: unknown field `colour`"),
            "{msg}"
        );
        let msg = faults("stepz: []\n");
        assert!(msg.contains("stepz"), "{msg}");
    }

    #[test]
    fn cycles_are_found_including_implicit_edges() {
        let msg = faults(
            "steps:\n  - {step_id: a, action: x, agent_type: t, depends_on: [b]}\n  - {step_id: b, action: x, agent_type: t}\n",
        );
        assert!(msg.contains("cycle: a -> b -> a"), "{msg}");
    }

    #[test]
    fn bad_templates_and_conditions_are_refused() {
        let msg = faults(
            "steps:\n  - {step_id: a, action: x, agent_type: t, when: 'steps.a ==', params: {q: '{{ query'}}\n",
        );
        assert!(msg.contains("steps.a.when: does not parse"), "{msg}");
        assert!(
            msg.contains("steps.a.params.q: template does not parse"),
            "{msg}"
        );
    }

    #[test]
    fn quality_gates_and_compensations_are_refused_with_a_reason() {
        let msg = faults(
            "steps:\n  - {step_id: a, action: x, agent_type: t, quality_gate: {on_fail: review}, compensate: {action: u, agent_type: t}}\n",
        );
        assert!(msg.contains("quality gates are not supported yet"), "{msg}");
        assert!(msg.contains("compensations are not supported yet"), "{msg}");
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        let msg = faults(
            "max_parallel: 0\nsteps:\n  - {step_id: a, action: x, agent_type: t, retry: {max_attempts: 0, backoff_factor: 0.5}}\n",
        );
        assert!(msg.contains("max_parallel: 0 is out of range"), "{msg}");
        assert!(msg.contains("retry.max_attempts"), "{msg}");
        assert!(msg.contains("retry.backoff_factor"), "{msg}");
        let msg = faults("steps:\n  - {step_id: a, action: x, agent_type: t, timeout_ms: -5}\n");
        assert!(msg.contains("line 2 column 56"), "{msg}");
    }

    #[test]
    fn backoff_grows_by_the_factor() {
        let p = RetryPolicy {
            max_attempts: 5,
            backoff_ms: 100,
            backoff_factor: 2.0,
        };
        assert_eq!(p.backoff_micros(2), 100_000);
        assert_eq!(p.backoff_micros(3), 200_000);
        assert_eq!(p.backoff_micros(4), 400_000);
    }
}
