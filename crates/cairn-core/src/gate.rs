//! Quality gates: what a step's scores must satisfy before its output counts, and what happens
//! when they do not.
//!
//! - [`QualityGate`]: the `quality_gate` of a step (bounds, `on_fail`, retries, review policy).
//! - [`Scores`]: what an executor reported, name → finite number, checked on the way in.
//! - [`verdict`]: a pure function of a gate and scores, so the same scores always give the same
//!   verdict, live and in replay.
//! - [`next`]: what a verdict leads to (complete, retry, review or fail).
//!
//! The gate is read leniently (no unknown-field refusal) because plan definitions are also read
//! back from the log; the strict checks of a plan document live in `plan.rs`.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Number, Value};

/// The user a gate retry is recorded as (a `retry_step` intervention).
pub const GATE_USER: &str = "system:quality_gate";
/// The user the `on_timeout` decision of an expired review is recorded as.
pub const TIMEOUT_USER: &str = "system:timeout";

/// Longest review timeout: 30 days.
pub const MAX_REVIEW_TIMEOUT_MS: u64 = 30 * 24 * 3_600_000;
/// Most gate retries of one step.
pub const MAX_GATE_RETRIES: u32 = 100;
/// Most reviewers a gate may name, and the highest quorum.
pub const MAX_REVIEWERS: usize = 100;

/// What a failing verdict does.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFail {
    /// A new attempt, recorded as a `retry_step` by `system:quality_gate`.
    Retry,
    /// The step waits for a person.
    #[default]
    Review,
    /// The step fails (the normal failure path).
    Fail,
}

/// What a failing verdict does once the gate retries are used up.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRetriesExhausted {
    #[default]
    Review,
    Fail,
}

/// The decision recorded when a review's timeout expires.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    #[default]
    Reject,
    Approve,
}

fn default_quorum() -> u32 {
    1
}

fn default_max_retries() -> u32 {
    2
}

fn default_true() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Who decides a review, how many must agree, and how long they have.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewPolicy {
    /// Distinct approvals needed (the first rejection closes the review).
    #[serde(default = "default_quorum")]
    pub quorum: u32,
    /// Who may decide; empty: anyone allowed to intervene.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reviewers: Vec<String>,
    /// The user who started the plan may not approve.
    #[serde(default, skip_serializing_if = "is_false")]
    pub prevent_self_review: bool,
    /// The review decides itself (`on_timeout`) this long after it opened; none: it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_timeout: OnTimeout,
}

impl Default for ReviewPolicy {
    fn default() -> Self {
        ReviewPolicy {
            quorum: 1,
            reviewers: Vec::new(),
            prevent_self_review: false,
            timeout_ms: None,
            on_timeout: OnTimeout::Reject,
        }
    }
}

/// A step's `quality_gate`.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityGate {
    /// Lower bounds (inclusive); a missing score fails its criterion.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[cfg_attr(feature = "utoipa", schema(value_type = HashMap<String, f64>))]
    pub min_scores: Map<String, Value>,
    /// Upper bounds (inclusive); a missing score fails its criterion.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    #[cfg_attr(feature = "utoipa", schema(value_type = HashMap<String, f64>))]
    pub max_scores: Map<String, Value>,
    #[serde(default)]
    pub on_fail: OnFail,
    /// Gate retries (apart from the step's `retry` policy, which is about errors).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// A gate retry's task carries `gate_feedback`.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub feedback: bool,
    #[serde(default)]
    pub on_retries_exhausted: OnRetriesExhausted,
    /// Every result waits for a person, whatever the verdict.
    #[serde(default, skip_serializing_if = "is_false")]
    pub always_review: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub review: ReviewPolicy,
}

impl Default for QualityGate {
    fn default() -> Self {
        QualityGate {
            min_scores: Map::new(),
            max_scores: Map::new(),
            on_fail: OnFail::Review,
            max_retries: 2,
            feedback: true,
            on_retries_exhausted: OnRetriesExhausted::Review,
            always_review: false,
            review: ReviewPolicy::default(),
        }
    }
}

impl QualityGate {
    /// Bound `name` of `min_scores` or `max_scores` as a number (validation makes them all
    /// finite numbers; anything else reads as no bound).
    fn bounds(map: &Map<String, Value>) -> impl Iterator<Item = (&str, f64)> {
        map.iter().filter_map(|(k, v)| {
            v.as_f64()
                .filter(|f| f.is_finite())
                .map(|f| (k.as_str(), f))
        })
    }

    /// Faults of the gate's values (paths relative to the gate); the shape is checked by the
    /// plan reader.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (field, map) in [
            ("min_scores", &self.min_scores),
            ("max_scores", &self.max_scores),
        ] {
            for (name, v) in map {
                let path = format!("{field}.{name}");
                if !valid_score_name(name) {
                    out.push((
                        path.clone(),
                        format!(
                            "{name:?} is not a valid score name (1 to 128 of A-Z a-z 0-9 _ . -)"
                        ),
                    ));
                }
                match v.as_f64() {
                    Some(f) if f.is_finite() => {}
                    _ => out.push((path, format!("the bound must be a finite number, not {v}"))),
                }
            }
        }
        for (name, min) in QualityGate::bounds(&self.min_scores) {
            if let Some(max) = self.max_scores.get(name).and_then(Value::as_f64) {
                if max.is_finite() && min > max {
                    out.push((
                        format!("min_scores.{name}"),
                        format!("{min} is above max_scores.{name} ({max}): no score can pass"),
                    ));
                }
            }
        }
        if self.max_retries > MAX_GATE_RETRIES {
            out.push((
                "max_retries".into(),
                format!(
                    "{} is out of range 0..={MAX_GATE_RETRIES}",
                    self.max_retries
                ),
            ));
        }
        let r = &self.review;
        if r.quorum == 0 || r.quorum as usize > MAX_REVIEWERS {
            out.push((
                "review.quorum".into(),
                format!("{} is out of range 1..={MAX_REVIEWERS}", r.quorum),
            ));
        } else if !r.reviewers.is_empty() && r.quorum as usize > r.reviewers.len() {
            out.push((
                "review.quorum".into(),
                format!(
                    "{} approvals can never be reached with {} reviewer(s)",
                    r.quorum,
                    r.reviewers.len()
                ),
            ));
        }
        if r.reviewers.len() > MAX_REVIEWERS {
            out.push((
                "review.reviewers".into(),
                format!(
                    "{} reviewers is more than the {MAX_REVIEWERS} allowed",
                    r.reviewers.len()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, user) in r.reviewers.iter().enumerate() {
            if !crate::plan::valid_id(user) {
                out.push((
                    format!("review.reviewers[{i}]"),
                    format!("{user:?} is not a valid user name (1 to 128 of A-Z a-z 0-9 _ . -)"),
                ));
            } else if !seen.insert(user.as_str()) {
                out.push((
                    format!("review.reviewers[{i}]"),
                    format!("{user} is named more than once"),
                ));
            }
        }
        if let Some(t) = r.timeout_ms {
            if t == 0 || t > MAX_REVIEW_TIMEOUT_MS {
                out.push((
                    "review.timeout_ms".into(),
                    format!("{t} is out of range 1..={MAX_REVIEW_TIMEOUT_MS} (30 days)"),
                ));
            }
        }
        out
    }
}

/// Is `name` usable as a score name: `[A-Za-z0-9_.-]{1,128}`?
pub fn valid_score_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// What an executor reported about its output: name → finite number, in the order reported.
///
/// Built from an executor's map by [`Scores::check`], which refuses anything else. Read back
/// from the log leniently: logs written before scores were typed may hold a value that is not
/// a number, which is left out rather than making the plan unreadable.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "utoipa", schema(value_type = HashMap<String, f64>))]
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(transparent)]
pub struct Scores(Map<String, Value>);

impl Scores {
    /// Checks an executor's scores: every value must be a finite number. The error names the
    /// first score that is not.
    pub fn check(map: Map<String, Value>) -> Result<Scores, String> {
        for (name, v) in &map {
            match v {
                Value::Number(n) if n.as_f64().is_some_and(f64::is_finite) => {}
                other => return Err(format!("score `{name}` is {other}, not a finite number")),
            }
        }
        Ok(Scores(map))
    }

    /// Scores from finite numbers (non-finite ones are left out: JSON cannot carry them).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, f64)>) -> Scores {
        Scores(
            pairs
                .into_iter()
                .filter_map(|(k, v)| Number::from_f64(v).map(|n| (k.to_owned(), Value::Number(n))))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).and_then(Value::as_f64)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0
            .iter()
            .filter_map(|(k, v)| v.as_f64().map(|f| (k.as_str(), f)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The scores as a JSON object (what templates see as `steps.<id>.scores`).
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Scores {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Scores, D::Error> {
        let map = Map::<String, Value>::deserialize(deserializer)?;
        Ok(Scores(
            map.into_iter()
                .filter(|(_, v)| v.as_f64().is_some_and(f64::is_finite))
                .collect(),
        ))
    }
}

/// One criterion a verdict found unmet.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedCriterion {
    /// `min_scores.<name>` or `max_scores.<name>`.
    pub criterion: String,
    /// The score reported; none when the executor reported no such score.
    pub score: Option<f64>,
    pub bound: f64,
}

impl std::fmt::Display for FailedCriterion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, op) = match self.criterion.split_once('.') {
            Some(("max_scores", name)) => (name, "<="),
            Some((_, name)) => (name, ">="),
            None => (self.criterion.as_str(), "?"),
        };
        match self.score {
            Some(s) => write!(f, "{name} {s} is not {op} {}", self.bound),
            None => write!(f, "{name} is missing (needs {op} {})", self.bound),
        }
    }
}

/// A gate's judgement of one attempt's scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub passed: bool,
    /// Every unmet criterion, minimum bounds first, each in the gate's order.
    pub failed: Vec<FailedCriterion>,
}

/// `passed` or `failed`, as recorded in `gate_evaluated`.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    Passed,
    Failed,
}

impl Verdict {
    pub fn kind(&self) -> VerdictKind {
        if self.passed {
            VerdictKind::Passed
        } else {
            VerdictKind::Failed
        }
    }

    /// The unmet criteria in one line, e.g. `accuracy 0.5 is not >= 0.8; cost_usd is missing`.
    pub fn summary(&self) -> String {
        self.failed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Judges scores against a gate. Pure: the same gate and scores always give the same verdict.
pub fn verdict(gate: &QualityGate, scores: &Scores) -> Verdict {
    let mut failed = Vec::new();
    for (name, bound) in QualityGate::bounds(&gate.min_scores) {
        let score = scores.get(name);
        if score.is_none_or(|s| s < bound) {
            failed.push(FailedCriterion {
                criterion: format!("min_scores.{name}"),
                score,
                bound,
            });
        }
    }
    for (name, bound) in QualityGate::bounds(&gate.max_scores) {
        let score = scores.get(name);
        if score.is_none_or(|s| s > bound) {
            failed.push(FailedCriterion {
                criterion: format!("max_scores.{name}"),
                score,
                bound,
            });
        }
    }
    Verdict {
        passed: failed.is_empty(),
        failed,
    }
}

/// What a verdict leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateAction {
    Complete,
    Retry,
    Review,
    Fail,
}

/// What a gate does with a verdict, given the gate retries already used in this run.
pub fn next(gate: &QualityGate, verdict: &Verdict, gate_retries: u32) -> GateAction {
    if verdict.passed {
        return if gate.always_review {
            GateAction::Review
        } else {
            GateAction::Complete
        };
    }
    match gate.on_fail {
        OnFail::Review => GateAction::Review,
        OnFail::Fail => GateAction::Fail,
        OnFail::Retry if gate_retries < gate.max_retries => GateAction::Retry,
        OnFail::Retry => match gate.on_retries_exhausted {
            OnRetriesExhausted::Review => GateAction::Review,
            OnRetriesExhausted::Fail => GateAction::Fail,
        },
    }
}

/// What a retried attempt's task carries about why the previous one was not accepted.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateFeedback {
    /// The attempt judged.
    pub attempt: u32,
    /// The criteria it did not meet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedCriterion>,
    /// A reviewer's note (a rejection with retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Who rejected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewer: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gate(v: Value) -> QualityGate {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let g = gate(json!({}));
        assert_eq!(g, QualityGate::default());
        assert_eq!(g.on_fail, OnFail::Review);
        assert_eq!(g.max_retries, 2);
        assert!(g.feedback);
        assert_eq!(g.review.quorum, 1);
        assert_eq!(g.review.on_timeout, OnTimeout::Reject);
        assert_eq!(
            serde_json::to_value(&g).unwrap(),
            json!({"on_fail": "review", "max_retries": 2, "on_retries_exhausted": "review"})
        );
    }

    #[test]
    fn a_missing_score_fails_its_criterion_and_bounds_are_inclusive() {
        let g = gate(
            json!({"min_scores": {"accuracy": 0.8, "coverage": 0.6}, "max_scores": {"cost": 2}}),
        );
        let s = Scores::check(
            json!({"accuracy": 0.8, "cost": 2})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
        let v = verdict(&g, &s);
        assert!(!v.passed);
        assert_eq!(
            v.failed,
            vec![FailedCriterion {
                criterion: "min_scores.coverage".into(),
                score: None,
                bound: 0.6
            }]
        );
        assert_eq!(v.summary(), "coverage is missing (needs >= 0.6)");
        let s = Scores::from_pairs([("accuracy", 0.9), ("coverage", 0.6), ("cost", 2.5)]);
        let v = verdict(&g, &s);
        assert_eq!(v.summary(), "cost 2.5 is not <= 2");
    }

    #[test]
    fn scores_that_are_not_finite_numbers_are_named() {
        let e =
            Scores::check(json!({"a": 1, "b": "high"}).as_object().unwrap().clone()).unwrap_err();
        assert!(e.contains("score `b`"), "{e}");
        let e = Scores::check(json!({"c": null}).as_object().unwrap().clone()).unwrap_err();
        assert!(e.contains("score `c` is null"), "{e}");
    }

    #[test]
    fn old_score_maps_read_and_keep_their_numbers() {
        let s: Scores = serde_json::from_value(json!({"n": 2, "x": 0.5, "bad": "text"})).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), json!({"n": 2, "x": 0.5}));
    }

    /// A `step_completed` written before scores were typed (log format 1, any JSON values in
    /// the map) still reads; the gate's events round-trip through the current format.
    #[test]
    fn stored_scores_and_gate_events_read_back() {
        use crate::event::EventKind;
        use crate::log::{decode, encode};
        let old = decode(
            "step_completed",
            1,
            r#"{"step_id":"s","attempt":1,"output":"o","scores":{"a":1,"b":"x","c":0.25}}"#,
        )
        .unwrap();
        let EventKind::StepCompleted { scores, .. } = old else {
            panic!("{old:?}")
        };
        assert_eq!(
            serde_json::to_value(scores.unwrap()).unwrap(),
            json!({"a": 1, "c": 0.25})
        );
        let failed = vec![FailedCriterion {
            criterion: "min_scores.a".into(),
            score: Some(0.5),
            bound: 0.8,
        }];
        for kind in [
            EventKind::GateEvaluated {
                step_id: "s".into(),
                attempt: 2,
                scores: Scores::from_pairs([("a", 0.5)]),
                verdict: VerdictKind::Failed,
                failed: failed.clone(),
            },
            EventKind::ReviewOpened {
                review_id: "rv-9".into(),
                step_id: "s".into(),
                attempt: 2,
                scores: Scores::from_pairs([("a", 0.5)]),
                failed,
                deadline: Some(crate::Timestamp::from_micros(5_000_000)),
                output: json!({"draft": true}),
                quorum: 2,
            },
        ] {
            let e = encode(&kind);
            assert_eq!(decode(e.kind, e.format, &e.data).unwrap(), kind);
        }
    }

    #[test]
    fn what_a_verdict_leads_to() {
        let pass = Verdict {
            passed: true,
            failed: vec![],
        };
        let fail = Verdict {
            passed: false,
            failed: vec![],
        };
        let mut g = QualityGate::default();
        assert_eq!(next(&g, &pass, 0), GateAction::Complete);
        assert_eq!(next(&g, &fail, 0), GateAction::Review);
        g.always_review = true;
        assert_eq!(next(&g, &pass, 0), GateAction::Review);
        g.on_fail = OnFail::Retry;
        assert_eq!(next(&g, &fail, 1), GateAction::Retry);
        assert_eq!(next(&g, &fail, 2), GateAction::Review);
        g.on_retries_exhausted = OnRetriesExhausted::Fail;
        assert_eq!(next(&g, &fail, 2), GateAction::Fail);
        g.on_fail = OnFail::Fail;
        assert_eq!(next(&g, &fail, 0), GateAction::Fail);
    }

    #[test]
    fn rule_faults_name_the_field() {
        let g = gate(json!({
            "min_scores": {"a": 0.9, "b c": 1},
            "max_scores": {"a": 0.5},
            "max_retries": 1000,
            "review": {"quorum": 3, "reviewers": ["ann", "ann", "bad user"], "timeout_ms": 0}
        }));
        let faults: Vec<String> = g
            .check()
            .into_iter()
            .map(|(p, m)| format!("{p}: {m}"))
            .collect();
        let all = faults.join("\n");
        assert!(
            all.contains("min_scores.b c: \"b c\" is not a valid score name"),
            "{all}"
        );
        assert!(
            all.contains("min_scores.a: 0.9 is above max_scores.a"),
            "{all}"
        );
        assert!(all.contains("max_retries: 1000 is out of range"), "{all}");
        assert!(
            all.contains("review.reviewers[1]: ann is named more than once"),
            "{all}"
        );
        assert!(all.contains("review.reviewers[2]"), "{all}");
        assert!(
            all.contains("review.timeout_ms: 0 is out of range"),
            "{all}"
        );
    }
}
