//! The plan document and its validation.
//!
//! A plan arrives as JSON or YAML of one shape; unknown fields are errors. Validation collects
//! every fault it finds, each naming the step and the field, so a user fixes a file in one pass:
//! first the shape (unknown fields, with a "did you mean"; missing fields; wrong types), then,
//! on what the shape allows, the rules (ids, dependencies, cycles, ranges, templates). A fault
//! in a field hides the rule faults of that same field or step, never those of other steps.
//! Read from text, every fault carries the line and column it is about.
//!
//! A step is named `steps.<step_id>`, or `steps[<index>]` (counting from 0, as JSON paths do)
//! when it has no usable id.

use crate::fast::{HashMap, HashSet};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::document::{self, Located, Pos};
use crate::expr;
use crate::gate::{OnFail, OnRetriesExhausted, OnTimeout, QualityGate};
use crate::suggest::did_you_mean;

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

/// A value read into an `Arc` of its own: serde's `Arc<T>` reads a `Box<T>` first, then
/// moves it into a second allocation (a malloc, a copy and a free more for every step of a
/// decoded snapshot).
pub(crate) fn shared<'de, D, T>(d: D) -> Result<Arc<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Arc::new)
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A plan definition: what to run and in which order.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    #[serde(default)]
    pub query: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub metadata: Value,
    #[serde(default = "default_max_parallel")]
    pub max_parallel: u32,
    // Shared (serde writes and reads an `Arc` as its content), so the definition of a plan's
    // state, a checkpoint's view and the state itself hold the same steps instead of copies.
    // (A plain comment: a doc comment would become the field's description in the OpenAPI
    // document.)
    #[cfg_attr(feature = "utoipa", schema(value_type = Vec<StepDef>))]
    pub steps: Vec<Arc<StepDef>>,
    /// What a failure of the plan does: `fail` (the default) or `rollback` (run the
    /// compensations of what ran, newest first, then fail).
    #[serde(default, skip_serializing_if = "OnFailure::is_fail")]
    pub on_failure: OnFailure,
    /// Values the plan was started with, read by conditions and params as `inputs.*`. Absent
    /// (and an empty object) when the plan has none.
    #[serde(default, skip_serializing_if = "no_inputs")]
    pub inputs: Value,
    /// The template version this plan was made from, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,
}

/// A named template's version, as recorded by a plan made from it.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRef {
    pub name: String,
    pub version: u64,
}

/// Inputs left out of a document: none, or an empty object.
pub fn no_inputs(inputs: &Value) -> bool {
    match inputs {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

/// What a plan's failure does.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The plan fails; nothing is undone.
    #[default]
    Fail,
    /// The plan rolls back (compensations of what ran, newest first), then fails.
    Rollback,
}

impl OnFailure {
    pub fn is_fail(&self) -> bool {
        *self == OnFailure::Fail
    }
}

/// How a step's effect is undone on rollback: a task of its own, run like a step's attempt.
/// Its params are templates over the usual context plus `this` (the compensated step's record:
/// `output`, `error`, `attempts`).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compensate {
    pub action: String,
    pub agent_type: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
    /// Default: 3 attempts ([`Compensate::DEFAULT_RETRY`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl Compensate {
    /// The policy of a compensation without one: three attempts.
    pub const DEFAULT_RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        backoff_ms: 200,
        backoff_factor: 2.0,
    };

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry.unwrap_or(Compensate::DEFAULT_RETRY)
    }
}

/// One step of a plan.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// What the step's scores must satisfy before its output counts, and what happens when
    /// they do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Boxed (in memory only; serde writes a box as its content): absent from most steps,
    // and inline it made every step of every live plan 200 bytes larger.
    pub quality_gate: Option<Box<QualityGate>>,
    /// How the step's effect is undone when the plan rolls back.
    // Boxed like `quality_gate` (168 bytes inline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<Box<Compensate>>,
}

/// How often and how patiently a failing step is tried again.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
    /// Where in the text, counted from 1, when the plan was read from text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
}

impl Fault {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Fault {
        Fault {
            path: path.into(),
            message: message.into(),
            line: None,
            column: None,
        }
    }

    fn at(mut self, pos: Option<Pos>) -> Fault {
        if let Some(p) = pos {
            self.line = Some(p.line);
            self.column = Some(p.column);
        }
        self
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "{}: {}", self.path, self.message)?;
        }
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, " (line {l}, column {c})"),
            (Some(l), None) => write!(f, " (line {l})"),
            _ => Ok(()),
        }
    }
}

/// A fault before it is placed: `doc` is the document path it is about (`steps/2/retry`), and
/// `key` says whether it points at the key of that entry (an unknown field) or its value.
#[derive(Debug)]
struct Found {
    fault: Fault,
    doc: String,
    key: bool,
}

impl Found {
    fn value(doc: impl Into<String>, path: impl Into<String>, message: impl Into<String>) -> Found {
        Found {
            fault: Fault::new(path, message),
            doc: doc.into(),
            key: false,
        }
    }

    fn key(doc: impl Into<String>, path: impl Into<String>, message: impl Into<String>) -> Found {
        Found {
            key: true,
            ..Found::value(doc, path, message)
        }
    }

    fn place(self, at: &Located) -> Fault {
        let pos = if self.key {
            at.key(&self.doc)
        } else {
            at.value(&self.doc)
        };
        self.fault.at(pos)
    }
}

/// A plan that failed to parse or validate, with every fault found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{}", .faults.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; "))]
pub struct Invalid {
    pub faults: Vec<Fault>,
}

impl Invalid {
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            faults: vec![Fault::new(path, message)],
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
    /// Parses and validates a plan document; every fault found carries its line and column.
    pub fn parse(text: &str, format: Format) -> Result<Plan, Invalid> {
        let read = match format {
            Format::Json => document::json(text).map_err(|e| ("JSON", e)),
            Format::Yaml => document::yaml(text).map_err(|e| ("YAML", e)),
        };
        match read {
            Ok((value, at)) => Plan::build(value, &at),
            Err((kind, e)) => Err(Invalid {
                faults: vec![Fault::new("", format!("not valid {kind}: {}", e.message)).at(e.pos)],
            }),
        }
    }

    /// Parses a plan from a JSON value (an API body) and validates it.
    pub fn from_value(value: Value) -> Result<Plan, Invalid> {
        Plan::build(value, &Located::default())
    }

    fn build(value: Value, at: &Located) -> Result<Plan, Invalid> {
        let mut shape = Vec::new();
        let mut hidden = Vec::new();
        let clean = shape_of_plan(value, &mut shape, &mut hidden);
        let plan = match clean.map(serde_json::from_value::<Plan>) {
            Some(Ok(plan)) => Some(plan),
            Some(Err(e)) => {
                shape.push(Found::value(
                    "",
                    "",
                    format!("not a valid plan document: {e}"),
                ));
                None
            }
            None => None,
        };
        let mut found = shape;
        if let Some(plan) = &plan {
            hidden.extend(found.iter().map(|f| f.doc.clone()));
            found.extend(plan.rule_faults().into_iter().filter(|f| {
                !hidden
                    .iter()
                    .any(|h| f.doc == *h || f.doc.starts_with(&format!("{h}/")))
            }));
        }
        match plan {
            Some(plan) if found.is_empty() => Ok(plan),
            _ => {
                let mut faults: Vec<Fault> = found.into_iter().map(|f| f.place(at)).collect();
                // In the order of the text, when it is known.
                faults.sort_by_key(|f| (f.line, f.column));
                Err(Invalid { faults })
            }
        }
    }

    /// Every `inputs.<name>` the plan's conditions and params read, as (path, name), in step
    /// order; the path names the field (`steps.a.when`, `steps.a.params.q`).
    pub fn inputs_read(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            let at = step_path(i, &step.step_id);
            if let Some(when) = &step.when {
                for name in expr::inputs_in_condition(when) {
                    out.push((format!("{at}.when"), name));
                }
            }
            expr::inputs_in_templates(&step.params, &format!("{at}.params"), &mut |path, name| {
                out.push((path.to_owned(), name))
            });
        }
        out
    }

    pub fn step_index(&self, step_id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.step_id == step_id)
    }

    /// Checks every rule a plan must follow; returns all faults at once.
    pub fn validate(&self) -> Result<(), Invalid> {
        let faults: Vec<Fault> = self.rule_faults().into_iter().map(|f| f.fault).collect();
        if faults.is_empty() {
            Ok(())
        } else {
            Err(Invalid { faults })
        }
    }

    fn rule_faults(&self) -> Vec<Found> {
        let mut out = Vec::new();
        if let Some(id) = &self.plan_id {
            if !valid_id(id) {
                out.push(Found::value(
                    "plan_id",
                    "plan_id",
                    format!("{id:?} is not a valid id (1 to 128 of A-Z a-z 0-9 _ . -)"),
                ));
            }
        }
        if self.max_parallel == 0 || self.max_parallel > MAX_PARALLEL {
            out.push(Found::value(
                "max_parallel",
                "max_parallel",
                format!("{} is out of range 1..={MAX_PARALLEL}", self.max_parallel),
            ));
        }
        if self.steps.is_empty() {
            out.push(Found::value(
                "steps",
                "steps",
                "a plan needs at least one step",
            ));
        }
        if self.steps.len() > MAX_STEPS {
            out.push(Found::value(
                "steps",
                "steps",
                format!(
                    "{} steps is more than the {MAX_STEPS} allowed",
                    self.steps.len()
                ),
            ));
        }
        let mut seen: HashSet<&str> = HashSet::default();
        for (i, step) in self.steps.iter().enumerate() {
            // Made only for a fault: nearly every step has none.
            let at = || step_path(i, &step.step_id);
            let doc = || format!("steps/{i}");
            if !valid_id(&step.step_id) {
                out.push(Found::value(
                    format!("{}/step_id", doc()),
                    format!("{}.step_id", at()),
                    format!(
                        "{:?} is not a valid id (1 to 128 of A-Z a-z 0-9 _ . -)",
                        step.step_id
                    ),
                ));
            } else if !seen.insert(&step.step_id) {
                out.push(Found::value(
                    format!("{}/step_id", doc()),
                    format!("{}.step_id", at()),
                    format!("step id {} is used more than once", step.step_id),
                ));
            }
            for f in step.check() {
                out.push(Found::value(
                    format!("{}/{}", doc(), doc_path(&f.path)),
                    format!("{}.{}", at(), f.path),
                    f.message,
                ));
            }
        }
        let ids: Vec<&str> = self.steps.iter().map(|s| s.step_id.as_str()).collect();
        // Where each id is, to look dependencies up in (10,000 steps each naming one would
        // otherwise cost 10^8 comparisons), here and by the search for a cycle.
        let index = step_index(&self.steps);
        for (i, step) in self.steps.iter().enumerate() {
            for (k, dep) in step.depends_on.iter().flatten().enumerate() {
                let doc = format!("steps/{i}/depends_on/{k}");
                let path = format!("{}.depends_on", step_path(i, &step.step_id));
                if dep == &step.step_id {
                    out.push(Found::value(doc, path, "a step cannot depend on itself"));
                } else if !index.contains_key(dep.as_str()) {
                    out.push(Found::value(
                        doc,
                        path,
                        format!(
                            "unknown step {dep:?}{}",
                            did_you_mean(dep, ids.iter().copied().filter(|id| valid_id(id)))
                        ),
                    ));
                }
            }
        }
        // A cycle is reported next to other faults: unknown dependencies are left out of the
        // graph, so they do not hide it; a step naming itself was reported just above.
        if let Some(cycle) = find_cycle(&self.steps, &index).filter(|c| c.len() > 2) {
            let first = self
                .steps
                .iter()
                .position(|s| s.step_id == cycle[0])
                .unwrap_or(0);
            out.push(Found::value(
                format!("steps/{first}/depends_on"),
                "steps",
                format!("the dependencies form a cycle: {}", cycle.join(" -> ")),
            ));
        }
        out
    }
}

/// A fault path relative to a step (`retry.max_attempts`, `params.q[2]`) as a document path.
fn doc_path(path: &str) -> String {
    path.replace(['.', '['], "/").replace(']', "")
}

const PLAN_FIELDS: &[&str] = &[
    "plan_id",
    "query",
    "metadata",
    "max_parallel",
    "steps",
    "on_failure",
    "inputs",
    "template",
];
const COMPENSATE_FIELDS: &[&str] = &["action", "agent_type", "params", "retry", "timeout_ms"];
const STEP_FIELDS: &[&str] = &[
    "step_id",
    "action",
    "agent_type",
    "params",
    "depends_on",
    "when",
    "retry",
    "timeout_ms",
    "pause_before",
    "pause_after",
    "quality_gate",
    "compensate",
];
/// A field and the check of its value's type.
type TypeCheck = (&'static str, fn(&Value) -> Option<String>);

const REQUIRED_STEP_FIELDS: &[&str] = &["step_id", "action", "agent_type"];
const RETRY_FIELDS: &[&str] = &["max_attempts", "backoff_ms", "backoff_factor"];
const GATE_FIELDS: &[&str] = &[
    "min_scores",
    "max_scores",
    "on_fail",
    "max_retries",
    "feedback",
    "on_retries_exhausted",
    "always_review",
    "review",
];
const REVIEW_FIELDS: &[&str] = &[
    "quorum",
    "reviewers",
    "prevent_self_review",
    "timeout_ms",
    "on_timeout",
];

/// Whether `value` reads as a `T`, and if not, why.
fn type_fault<T: DeserializeOwned>(value: &Value) -> Option<String> {
    serde_json::from_value::<T>(value.clone())
        .err()
        .map(|e| e.to_string())
}

/// Reports every key of `map` that is not in `known`, removing it. Returns the known fields that
/// an unknown key looks like a typo of.
fn unknown_fields(
    map: &mut Map<String, Value>,
    known: &[&str],
    doc: &str,
    path: &str,
    out: &mut Vec<Found>,
) -> Vec<&'static str> {
    let mut meant = Vec::new();
    let unknown: Vec<String> = map
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .cloned()
        .collect();
    for key in unknown {
        map.remove(&key);
        let hint = did_you_mean(&key, known.iter().copied());
        if let Some(m) = crate::suggest::closest(&key, known.iter().copied()) {
            if let Some(field) = STEP_FIELDS
                .iter()
                .chain(PLAN_FIELDS)
                .chain(RETRY_FIELDS)
                .find(|f| **f == m)
            {
                meant.push(*field);
            }
        }
        let message = if hint.is_empty() {
            format!("unknown field `{key}` (known: {})", known.join(", "))
        } else {
            format!("unknown field `{key}`{hint}")
        };
        let entry = if doc.is_empty() {
            key.clone()
        } else {
            format!("{doc}/{key}")
        };
        out.push(Found::key(entry, path, message));
    }
    meant
}

/// Checks the shape of a plan document, reporting every fault, and returns what is left for the
/// rules to check: unknown fields and values of the wrong type removed, steps that cannot be read
/// replaced by placeholders (their faults already said why). `None` when not even that is left.
fn shape_of_plan(value: Value, out: &mut Vec<Found>, hidden: &mut Vec<String>) -> Option<Value> {
    let Value::Object(mut map) = value else {
        out.push(Found::value(
            "",
            "",
            "a plan document must be a mapping with a `steps` list",
        ));
        return None;
    };
    unknown_fields(&mut map, PLAN_FIELDS, "", "", out);
    let mut wrong = |map: &mut Map<String, Value>, key: &str, fault: Option<String>| {
        if let Some(e) = fault {
            out.push(Found::value(key, key, e));
            map.remove(key);
        }
    };
    let plan_id = map.get("plan_id").and_then(type_fault::<Option<String>>);
    wrong(&mut map, "plan_id", plan_id);
    let query = map.get("query").and_then(type_fault::<String>);
    wrong(&mut map, "query", query);
    let max_parallel = map.get("max_parallel").and_then(type_fault::<u32>);
    wrong(&mut map, "max_parallel", max_parallel);
    let on_failure = map.get("on_failure").and_then(type_fault::<OnFailure>);
    wrong(&mut map, "on_failure", on_failure);
    let inputs = map.get("inputs").and_then(|v| match v {
        Value::Object(_) | Value::Null => None,
        _ => Some("must be a mapping of input names to values".to_owned()),
    });
    wrong(&mut map, "inputs", inputs);
    let template = map
        .get("template")
        .and_then(type_fault::<Option<TemplateRef>>);
    wrong(&mut map, "template", template);
    let steps = match map.remove("steps") {
        None => {
            out.push(Found::value(
                "",
                "steps",
                "missing: a plan needs a list of steps",
            ));
            Vec::new()
        }
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let id = item
                    .get("step_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                shape_of_step(item, i, out).unwrap_or_else(|| {
                    hidden.push(format!("steps/{i}"));
                    placeholder_step(&id)
                })
            })
            .collect(),
        Some(_) => {
            out.push(Found::value("steps", "steps", "must be a list of steps"));
            Vec::new()
        }
    };
    map.insert("steps".into(), Value::Array(steps));
    Some(Value::Object(map))
}

/// The shape of step `index`; see [`shape_of_plan`]. `None` when the step cannot be read at all.
fn shape_of_step(item: Value, index: usize, out: &mut Vec<Found>) -> Option<Value> {
    let doc = format!("steps/{index}");
    let id = item
        .get("step_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let at = step_path(index, &id);
    let Value::Object(mut map) = item else {
        out.push(Found::value(
            doc,
            at,
            "a step must be a mapping with step_id, action and agent_type",
        ));
        return None;
    };
    let meant = unknown_fields(&mut map, STEP_FIELDS, &doc, &at, out);
    let mut readable = true;
    for field in REQUIRED_STEP_FIELDS {
        match map.get(*field) {
            None => {
                readable = false;
                // A misspelt field already says what is missing.
                if !meant.contains(field) {
                    out.push(Found::value(
                        doc.clone(),
                        at.clone(),
                        format!("missing field `{field}`"),
                    ));
                }
            }
            Some(v) => {
                if let Some(e) = type_fault::<String>(v) {
                    readable = false;
                    out.push(Found::value(
                        format!("{doc}/{field}"),
                        format!("{at}.{field}"),
                        e,
                    ));
                }
            }
        }
    }
    let checks: &[TypeCheck] = &[
        ("depends_on", type_fault::<Option<Vec<String>>>),
        ("when", type_fault::<Option<String>>),
        ("timeout_ms", type_fault::<Option<u64>>),
        ("pause_before", type_fault::<bool>),
        ("pause_after", type_fault::<bool>),
    ];
    for (field, check) in checks {
        if let Some(e) = map.get(*field).and_then(check) {
            out.push(Found::value(
                format!("{doc}/{field}"),
                format!("{at}.{field}"),
                e,
            ));
            map.remove(*field);
        }
    }
    shape_of_retry(&mut map, &doc, &at, out);
    match map.get_mut("compensate") {
        None | Some(Value::Null) => {}
        Some(Value::Object(comp)) => {
            let cdoc = format!("{doc}/compensate");
            let cpath = format!("{at}.compensate");
            unknown_fields(comp, COMPENSATE_FIELDS, &cdoc, &cpath, out);
            let mut readable = true;
            for field in ["action", "agent_type"] {
                match comp.get(field) {
                    None => {
                        readable = false;
                        out.push(Found::value(
                            cdoc.clone(),
                            cpath.clone(),
                            format!("missing field `{field}`"),
                        ));
                    }
                    Some(v) => {
                        if let Some(e) = type_fault::<String>(v) {
                            readable = false;
                            out.push(Found::value(
                                format!("{cdoc}/{field}"),
                                format!("{cpath}.{field}"),
                                e,
                            ));
                        }
                    }
                }
            }
            if let Some(e) = comp.get("timeout_ms").and_then(type_fault::<Option<u64>>) {
                out.push(Found::value(
                    format!("{cdoc}/timeout_ms"),
                    format!("{cpath}.timeout_ms"),
                    e,
                ));
                comp.remove("timeout_ms");
            }
            shape_of_retry(comp, &cdoc, &cpath, out);
            if !readable {
                map.remove("compensate");
            }
        }
        Some(_) => {
            out.push(Found::value(
                format!("{doc}/compensate"),
                format!("{at}.compensate"),
                "must be a mapping: {action, agent_type, params, retry, timeout_ms}",
            ));
            map.remove("compensate");
        }
    }
    match map.get_mut("quality_gate") {
        None | Some(Value::Null) => {}
        Some(Value::Object(gate)) => shape_of_gate(
            gate,
            &format!("{doc}/quality_gate"),
            &format!("{at}.quality_gate"),
            out,
        ),
        Some(_) => {
            out.push(Found::value(
                format!("{doc}/quality_gate"),
                format!("{at}.quality_gate"),
                "must be a mapping: {min_scores, max_scores, on_fail, max_retries, feedback, on_retries_exhausted, always_review, review}",
            ));
            map.remove("quality_gate");
        }
    }
    readable.then_some(Value::Object(map))
}

/// The shape of the `retry` of a step or of a compensation (`map` holds it); see
/// [`shape_of_plan`].
fn shape_of_retry(map: &mut Map<String, Value>, doc: &str, at: &str, out: &mut Vec<Found>) {
    match map.get_mut("retry") {
        None | Some(Value::Null) => {}
        Some(Value::Object(retry)) => {
            let rdoc = format!("{doc}/retry");
            let rpath = format!("{at}.retry");
            unknown_fields(retry, RETRY_FIELDS, &rdoc, &rpath, out);
            let checks: &[TypeCheck] = &[
                ("max_attempts", type_fault::<u32>),
                ("backoff_ms", type_fault::<u64>),
                ("backoff_factor", type_fault::<f64>),
            ];
            for (field, check) in checks {
                if let Some(e) = retry.get(*field).and_then(check) {
                    out.push(Found::value(
                        format!("{rdoc}/{field}"),
                        format!("{rpath}.{field}"),
                        e,
                    ));
                    retry.remove(*field);
                }
            }
        }
        Some(_) => {
            out.push(Found::value(
                format!("{doc}/retry"),
                format!("{at}.retry"),
                "must be a mapping: {max_attempts, backoff_ms, backoff_factor}",
            ));
            map.remove("retry");
        }
    }
}

/// The shape of a step's `quality_gate`; see [`shape_of_plan`].
fn shape_of_gate(gate: &mut Map<String, Value>, gdoc: &str, gpath: &str, out: &mut Vec<Found>) {
    unknown_fields(gate, GATE_FIELDS, gdoc, gpath, out);
    for field in ["min_scores", "max_scores"] {
        match gate.get_mut(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(bounds)) => {
                let bad: Vec<String> = bounds
                    .iter()
                    .filter(|(_, v)| !v.as_f64().is_some_and(f64::is_finite))
                    .map(|(k, _)| k.clone())
                    .collect();
                for name in bad {
                    if let Some(v) = bounds.remove(&name) {
                        out.push(Found::value(
                            format!("{gdoc}/{field}/{name}"),
                            format!("{gpath}.{field}.{name}"),
                            format!("the bound must be a finite number, not {v}"),
                        ));
                    }
                }
            }
            Some(_) => {
                out.push(Found::value(
                    format!("{gdoc}/{field}"),
                    format!("{gpath}.{field}"),
                    "must be a mapping of score names to numbers, e.g. {accuracy: 0.8}",
                ));
                gate.remove(field);
            }
        }
    }
    let checks: &[TypeCheck] = &[
        ("on_fail", type_fault::<OnFail>),
        ("max_retries", type_fault::<u32>),
        ("feedback", type_fault::<bool>),
        ("on_retries_exhausted", type_fault::<OnRetriesExhausted>),
        ("always_review", type_fault::<bool>),
    ];
    for (field, check) in checks {
        if let Some(e) = gate.get(*field).and_then(check) {
            out.push(Found::value(
                format!("{gdoc}/{field}"),
                format!("{gpath}.{field}"),
                e,
            ));
            gate.remove(*field);
        }
    }
    match gate.get_mut("review") {
        None | Some(Value::Null) => {}
        Some(Value::Object(review)) => {
            let rdoc = format!("{gdoc}/review");
            let rpath = format!("{gpath}.review");
            unknown_fields(review, REVIEW_FIELDS, &rdoc, &rpath, out);
            let checks: &[TypeCheck] = &[
                ("quorum", type_fault::<u32>),
                ("reviewers", type_fault::<Vec<String>>),
                ("prevent_self_review", type_fault::<bool>),
                ("timeout_ms", type_fault::<Option<u64>>),
                ("on_timeout", type_fault::<OnTimeout>),
            ];
            for (field, check) in checks {
                if let Some(e) = review.get(*field).and_then(check) {
                    out.push(Found::value(
                        format!("{rdoc}/{field}"),
                        format!("{rpath}.{field}"),
                        e,
                    ));
                    review.remove(*field);
                }
            }
        }
        Some(_) => {
            out.push(Found::value(
                format!("{gdoc}/review"),
                format!("{gpath}.review"),
                "must be a mapping: {quorum, reviewers, prevent_self_review, timeout_ms, on_timeout}",
            ));
            gate.remove("review");
        }
    }
}

/// Stands in for a step whose own faults were reported, so the other steps can still be checked
/// against its id (the rule faults of the step itself are hidden).
fn placeholder_step(id: &str) -> Value {
    serde_json::json!({"step_id": id, "action": "-", "agent_type": "-"})
}

pub(crate) fn step_path(index: usize, id: &str) -> String {
    if valid_id(id) {
        format!("steps.{id}")
    } else {
        format!("steps[{index}]")
    }
}

impl StepDef {
    /// A step that runs `action` with an agent of `agent_type`, with no params and every option
    /// at its default (no dependencies, condition, retry policy, timeout, pauses, gate or
    /// compensation).
    pub fn new(
        step_id: impl Into<String>,
        action: impl Into<String>,
        agent_type: impl Into<String>,
    ) -> StepDef {
        StepDef {
            step_id: step_id.into(),
            action: action.into(),
            agent_type: agent_type.into(),
            params: Value::Null,
            depends_on: None,
            when: None,
            retry: None,
            timeout_ms: None,
            pause_before: false,
            pause_after: false,
            quality_gate: None,
            compensate: None,
        }
    }

    /// Reads one step given on its own (an intervention's), reporting every fault of its shape
    /// at once, with paths relative to the step.
    pub fn from_value(value: &Value) -> Result<StepDef, Invalid> {
        let mut found = Vec::new();
        let id = value
            .get("step_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let prefix = step_path(0, id);
        let clean = shape_of_step(value.clone(), 0, &mut found);
        let faults: Vec<Fault> = found
            .into_iter()
            .map(|f| {
                let path = f.fault.path.strip_prefix(&prefix).unwrap_or(&f.fault.path);
                Fault::new(path.trim_start_matches('.'), f.fault.message)
            })
            .collect();
        match clean {
            Some(v) if faults.is_empty() => {
                serde_json::from_value(v).map_err(|e| Invalid::one("", e.to_string()))
            }
            _ => Err(Invalid { faults }),
        }
    }

    /// Faults of the step on its own (paths relative to the step).
    pub fn check(&self) -> Vec<Fault> {
        let mut out = Vec::new();
        let mut fault = |path: &str, message: String| out.push(Fault::new(path, message));
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
            check_retry(retry, "retry", &mut fault);
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
        if let Some(gate) = &self.quality_gate {
            for (path, message) in gate.check() {
                fault(&format!("quality_gate.{path}"), message);
            }
        }
        if let Some(comp) = &self.compensate {
            if comp.action.trim().is_empty() {
                fault("compensate.action", "must not be empty".into());
            }
            if !valid_id(&comp.agent_type) {
                fault(
                    "compensate.agent_type",
                    format!(
                        "{:?} is not a valid agent type (1 to 128 of A-Z a-z 0-9 _ . -)",
                        comp.agent_type
                    ),
                );
            }
            if let Some(retry) = &comp.retry {
                check_retry(retry, "compensate.retry", &mut fault);
            }
            if let Some(t) = comp.timeout_ms {
                if t == 0 || t > MAX_TIMEOUT_MS {
                    fault(
                        "compensate.timeout_ms",
                        format!("{t} is out of range 1..={MAX_TIMEOUT_MS} (7 days)"),
                    );
                }
            }
            expr::check_templates(&comp.params, "compensate.params", &mut |path, e| {
                fault(path, format!("template does not parse: {e}"))
            });
        }
        out
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry.unwrap_or(RetryPolicy::ONCE)
    }
}

/// Faults of a retry policy at `path` (`retry`, `compensate.retry`).
fn check_retry(retry: &RetryPolicy, path: &str, fault: &mut dyn FnMut(&str, String)) {
    if retry.max_attempts == 0 || retry.max_attempts > MAX_ATTEMPTS {
        fault(
            &format!("{path}.max_attempts"),
            format!("{} is out of range 1..={MAX_ATTEMPTS}", retry.max_attempts),
        );
    }
    if retry.backoff_ms > MAX_BACKOFF_MS {
        fault(
            &format!("{path}.backoff_ms"),
            format!("{} is more than one day", retry.backoff_ms),
        );
    }
    if !(1.0..=10.0).contains(&retry.backoff_factor) {
        fault(
            &format!("{path}.backoff_factor"),
            format!("{} is out of range 1.0..=10.0", retry.backoff_factor),
        );
    }
}

/// The ids of the steps `steps[index]` waits for.
pub fn effective_deps(steps: &[Arc<StepDef>], index: usize) -> Vec<&str> {
    match &steps[index].depends_on {
        Some(deps) => deps.iter().map(String::as_str).collect(),
        None if index == 0 => Vec::new(),
        None => vec![steps[index - 1].step_id.as_str()],
    }
}

/// Each step's position by id (of two steps with one id, the later).
fn step_index(steps: &[Arc<StepDef>]) -> HashMap<&str, usize> {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.step_id.as_str(), i))
        .collect()
}

/// A cycle in the effective dependency graph, as a path of step ids, if there is one;
/// `index` is where each step is by id ([`step_index`]).
fn find_cycle(steps: &[Arc<StepDef>], index: &HashMap<&str, usize>) -> Option<Vec<String>> {
    // A step's n-th effective dependency, without collecting them (this runs on every
    // validation, and so on every intervention).
    let dep = |node: usize, n: usize| -> Option<&str> {
        match &steps[node].depends_on {
            Some(deps) => deps.get(n).map(String::as_str),
            None if node > 0 && n == 0 => Some(steps[node - 1].step_id.as_str()),
            None => None,
        }
    };
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut mark = vec![0u8; steps.len()];
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for start in 0..steps.len() {
        if mark[start] != 0 {
            continue;
        }
        stack.clear();
        stack.push((start, 0));
        mark[start] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(dep) = dep(node, *next) {
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
    fn inputs_read_names_each_input_with_its_field() {
        let plan = yaml(
            "inputs: {topic: x}\nsteps:\n  - {step_id: a, action: x, agent_type: t, when: 'inputs.deep and steps.b.output', params: {q: '{{ inputs.topic }} {{ inputs.topic }}', l: ['{{ inputs.n + 1 }}', plain]}}\n  - {step_id: b, action: x, agent_type: t, params: {s: '{{ query }} {{ metadata.inputs }}'}}\n",
        )
        .unwrap();
        assert_eq!(plan.inputs, serde_json::json!({"topic": "x"}));
        let mut read = plan.inputs_read();
        read.sort();
        assert_eq!(
            read,
            vec![
                ("steps.a.params.l[0]".to_owned(), "n".to_owned()),
                ("steps.a.params.q".to_owned(), "topic".to_owned()),
                ("steps.a.when".to_owned(), "deep".to_owned()),
            ]
        );
    }

    #[test]
    fn inputs_must_be_a_mapping_and_a_template_ref_well_formed() {
        let msg = yaml("inputs: [1]\ntemplate: {name: t}\nsteps:\n  - {step_id: a, action: x, agent_type: t}\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("inputs: must be a mapping"), "{msg}");
        assert!(msg.contains("template: missing field `version`"), "{msg}");
        let plan = yaml(
            "template: {name: t, version: 2}\nsteps:\n  - {step_id: a, action: x, agent_type: t}\n",
        )
        .unwrap();
        assert_eq!(
            plan.template,
            Some(TemplateRef {
                name: "t".into(),
                version: 2
            })
        );
        let out = serde_json::to_value(&plan).unwrap();
        assert!(out.get("inputs").is_none(), "{out}");
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
        assert!(msg.contains("steps.a: unknown field `colour`"), "{msg}");
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
    fn compensations_and_on_failure_are_read() {
        let plan = yaml(
            "on_failure: rollback\nsteps:\n  - {step_id: a, action: x, agent_type: t, compensate: {action: u, agent_type: t2, params: {r: '{{ this.output }}'}, timeout_ms: 5}}\n",
        )
        .unwrap();
        assert_eq!(plan.on_failure, OnFailure::Rollback);
        let comp = plan.steps[0].compensate.as_ref().unwrap();
        assert_eq!(comp.action, "u");
        assert_eq!(comp.agent_type, "t2");
        assert_eq!(comp.timeout_ms, Some(5));
        assert_eq!(
            comp.retry_policy().max_attempts,
            3,
            "three attempts by default"
        );
        // Written back, a plan without either field reads as it always did.
        let plain = yaml("steps:\n  - {step_id: a, action: x, agent_type: t}\n").unwrap();
        let text = serde_json::to_string(&plain).unwrap();
        assert!(
            !text.contains("on_failure") && !text.contains("compensate"),
            "{text}"
        );
    }

    #[test]
    fn compensation_faults_name_their_field() {
        let msg = faults(
            "on_failure: undo\nsteps:\n  - {step_id: a, action: x, agent_type: t, compensate: {action: u, agentt_type: t, retry: {max_attempts: 0}}}\n  - {step_id: b, action: x, agent_type: t, compensate: {action: '', agent_type: 'bad type', timeout_ms: 0, params: {x: '{{ nope( }}'}}}\n  - {step_id: c, action: x, agent_type: t, compensate: undo}\n",
        );
        for needle in [
            "on_failure",
            "steps.a.compensate: unknown field `agentt_type`",
            "steps.a.compensate: missing field `agent_type`",
            "steps.b.compensate.action: must not be empty",
            "steps.b.compensate.agent_type",
            "steps.b.compensate.timeout_ms",
            "steps.b.compensate.params.x",
            "steps.c.compensate: must be a mapping",
        ] {
            assert!(msg.contains(needle), "{needle} not in {msg}");
        }
        let msg = faults(
            "steps:\n  - {step_id: a, action: x, agent_type: t, compensate: {action: u, agent_type: t, retry: {max_attempts: 0, backoff_factor: 20}}}\n",
        );
        assert!(
            msg.contains("steps.a.compensate.retry.max_attempts"),
            "{msg}"
        );
        assert!(
            msg.contains("steps.a.compensate.retry.backoff_factor"),
            "{msg}"
        );
    }

    #[test]
    fn quality_gates_are_read_and_every_fault_names_its_field() {
        let plan = yaml(
            "steps:\n  - step_id: a\n    action: x\n    agent_type: t\n    quality_gate:\n      min_scores: {accuracy: 0.8}\n      on_fail: retry\n      review: {quorum: 2, reviewers: [ann, bob], timeout_ms: 60000, on_timeout: approve}\n",
        )
        .unwrap();
        let gate = plan.steps[0].quality_gate.as_ref().unwrap();
        assert_eq!(gate.on_fail, OnFail::Retry);
        assert_eq!(gate.max_retries, 2);
        assert_eq!(gate.review.quorum, 2);
        assert_eq!(gate.review.on_timeout, OnTimeout::Approve);
        let msg = faults(
            r#"
steps:
  - step_id: a
    action: x
    agent_type: t
    quality_gate:
      min_scores: {accuracy: high, recall: 0.9}
      max_scores: {recall: 0.5}
      on_fail: retyr
      feedbak: true
      review: {quorum: 0, reviewers: ["no one"], timeout_ms: 0, on_timeout: maybe, qorum: 1}
  - step_id: b
    action: x
    agent_type: t
    quality_gate: [accuracy]
"#,
        );
        for want in [
            "steps.a.quality_gate.min_scores.accuracy: the bound must be a finite number, not \"high\" (line 7",
            "steps.a.quality_gate.on_fail: unknown variant `retyr`",
            "steps.a.quality_gate: unknown field `feedbak`; did you mean `feedback`?",
            "steps.a.quality_gate.review.on_timeout: unknown variant `maybe`",
            "steps.a.quality_gate.review: unknown field `qorum`; did you mean `quorum`?",
            "steps.b.quality_gate: must be a mapping",
        ] {
            assert!(msg.contains(want), "want {want:?} in {msg}");
        }
        // Rule faults show once the shape is right.
        let msg = faults(
            "steps:\n  - {step_id: a, action: x, agent_type: t, quality_gate: {min_scores: {recall: 0.9}, max_scores: {recall: 0.5}, review: {quorum: 0, reviewers: ['no one'], timeout_ms: 0}}}\n",
        );
        for want in [
            "steps.a.quality_gate.min_scores.recall: 0.9 is above max_scores.recall (0.5)",
            "steps.a.quality_gate.review.quorum: 0 is out of range",
            "steps.a.quality_gate.review.reviewers[0]: \"no one\" is not a valid user name",
            "steps.a.quality_gate.review.timeout_ms: 0 is out of range",
        ] {
            assert!(msg.contains(want), "want {want:?} in {msg}");
        }
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
        assert!(msg.contains("line 2, column 56"), "{msg}");
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
