//! Structural diffs of plan definitions, one format for plans and templates.
//!
//! A [`Diff`] says how one definition becomes another, in the terms a reader thinks in rather
//! than lines of text: the plan-level fields changed, the steps added (with their definition),
//! removed, moved (positions before → after), and per changed step its fields before → after,
//! each named by a dotted path inside the step (`params.query`, `retry.max_attempts`). For
//! templates it also lists the parameters added, removed and changed (see [`parameters`]).
//!
//! [`Diff::apply`] turns the first definition into the second again, so a diff is a complete
//! description: `apply(v1, diff(v1, v2)) == v2`. Applying checks every `before` against the
//! definition it is given and refuses, naming the step or field, when they disagree.
//!
//! Diffs work on the JSON form of a definition, so every field a plan document carries (now or
//! later, e.g. `inputs`) is covered without a list to keep up to date. Objects are compared key
//! by key, down to the first value that is not an object on both sides; arrays (such as
//! `depends_on`) are compared whole. An object with a key that is empty or contains a `.` is
//! compared whole too, so that every path names exactly one place.
//!
//! Which steps "moved": of the steps present in both definitions, the longest run that kept its
//! relative order stays put, and every other one is listed as moved. A step added or removed
//! before others shifts their positions without moving them.

use crate::fast::{map_with_capacity, set_with_capacity, HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::plan::Plan;

/// How one definition becomes another. Empty lists are left out of the JSON.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    /// Plan-level fields changed (`max_parallel`, `query`, `metadata.owner`, `inputs`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<FieldChange>,
    /// Steps only the second definition has, by position in it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<AddedStep>,
    /// Steps only the first definition has, by position in it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<RemovedStep>,
    /// Steps of both whose order changed, by position in the second.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<MovedStep>,
    /// Steps of both whose definition changed, in the second definition's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<ChangedStep>,
    /// Template parameters added, removed or changed (templates only), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<ParameterChange>,
}

/// One field before → after. `before` is absent for a field added, `after` for a field removed;
/// a field present with the value `null` reads as `null`.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    /// Dotted path: inside the plan for a plan-level field, inside the step for a step's.
    pub path: String,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub before: Option<Value>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub after: Option<Value>,
}

/// A step the second definition added.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddedStep {
    pub step_id: String,
    /// Its position in the second definition, from 0.
    pub position: usize,
    /// The step as a step of a plan document.
    #[cfg_attr(feature = "utoipa", schema(value_type = Object))]
    pub definition: Value,
}

/// A step the second definition no longer has.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemovedStep {
    pub step_id: String,
    /// Its position in the first definition, from 0.
    pub position: usize,
    /// The step as it was.
    #[cfg_attr(feature = "utoipa", schema(value_type = Object))]
    pub definition: Value,
}

/// A step whose place in the order changed.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedStep {
    pub step_id: String,
    /// Position in the first definition, from 0.
    pub from: usize,
    /// Position in the second definition, from 0.
    pub to: usize,
}

/// A step of both definitions whose fields changed.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangedStep {
    pub step_id: String,
    /// Paths inside the step (`params.query`, `retry.max_attempts`, `depends_on`).
    pub fields: Vec<FieldChange>,
}

/// A template parameter before → after: absent before when added, absent after when removed.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParameterChange {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Parameter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Parameter>,
}

/// A template parameter: its schema (an entry of the JSON Schema's `properties`) and whether
/// the schema's `required` lists it.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parameter {
    #[cfg_attr(feature = "utoipa", schema(value_type = Object))]
    pub schema: Value,
    #[serde(default)]
    pub required: bool,
}

/// Why a diff does not apply to a definition, naming the step or field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the diff does not apply: {0}")]
pub struct DiffError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, DiffError> {
    Err(DiffError(message.into()))
}

/// A field present with `null` is `Some(Null)`, not absent (serde reads `null` as `None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl Diff {
    /// The diff of two plan definitions. Steps are compared as they are and only the ones that
    /// differ are turned into JSON, so a diff costs little more than the comparison.
    pub fn between(before: &Plan, after: &Plan) -> Diff {
        let unique = |p: &Plan| {
            let mut seen = set_with_capacity(p.steps.len());
            p.steps.iter().all(|s| seen.insert(s.step_id.as_str()))
        };
        if !unique(before) || !unique(after) {
            let a = serde_json::to_value(before).unwrap_or(Value::Null);
            let b = serde_json::to_value(after).unwrap_or(Value::Null);
            return Diff::of_documents(&a, &b);
        }
        let top = |p: &Plan| {
            // Every plan-level field, present and future, without the steps.
            let bare = Plan {
                steps: Vec::new(),
                ..p.clone()
            };
            match serde_json::to_value(bare) {
                Ok(Value::Object(mut o)) => {
                    o.remove("steps");
                    o
                }
                _ => Map::new(),
            }
        };
        let mut diff = Diff::default();
        fields(&mut diff.plan, "", &top(before), &top(after), None);
        diff.steps(
            &before.steps,
            &after.steps,
            |s| s.step_id.as_str(),
            |s| serde_json::to_value(s).unwrap_or(Value::Null),
        );
        diff
    }

    /// `before` with this diff applied.
    pub fn apply(&self, before: &Plan) -> Result<Plan, DiffError> {
        let doc = serde_json::to_value(before).map_err(|e| DiffError(e.to_string()))?;
        let after = self.apply_document(&doc)?;
        serde_json::from_value(after).map_err(|e| DiffError(format!("the result is no plan: {e}")))
    }

    /// True when the two definitions are the same.
    pub fn is_empty(&self) -> bool {
        self.plan.is_empty()
            && self.added.is_empty()
            && self.removed.is_empty()
            && self.moved.is_empty()
            && self.changed.is_empty()
            && self.parameters.is_empty()
    }

    /// The diff of two plan documents in their JSON form (an object with a `steps` array of
    /// objects, each with a `step_id`; a template's plan part is one). Anything else is compared
    /// as plan-level fields.
    pub fn of_documents(before: &Value, after: &Value) -> Diff {
        let mut diff = Diff::default();
        let empty = Map::new();
        let a = before.as_object().unwrap_or(&empty);
        let b = after.as_object().unwrap_or(&empty);
        match (identified(a), identified(b)) {
            (Some(sa), Some(sb)) => {
                fields(&mut diff.plan, "", a, b, Some("steps"));
                diff.steps(sa, sb, |s| id(s), Value::clone);
            }
            // Not a steps array of identified steps on both sides: compared as a field.
            _ => fields(&mut diff.plan, "", a, b, None),
        }
        diff
    }

    fn steps<T: PartialEq>(
        &mut self,
        a: &[T],
        b: &[T],
        id: impl Fn(&T) -> &str,
        doc: impl Fn(&T) -> Value,
    ) {
        let pos_a: HashMap<&str, usize> = a.iter().enumerate().map(|(i, s)| (id(s), i)).collect();
        let pos_b: HashMap<&str, usize> = b.iter().enumerate().map(|(i, s)| (id(s), i)).collect();
        for (i, s) in a.iter().enumerate() {
            if !pos_b.contains_key(id(s)) {
                self.removed.push(RemovedStep {
                    step_id: id(s).to_owned(),
                    position: i,
                    definition: doc(s),
                });
            }
        }
        // Steps of both, in the first definition's order, with their position in the second.
        let kept: Vec<(usize, usize)> = a
            .iter()
            .enumerate()
            .filter_map(|(i, s)| pos_b.get(id(s)).map(|&j| (i, j)))
            .collect();
        let stay = longest_increasing(&kept.iter().map(|&(_, j)| j).collect::<Vec<_>>());
        let mut moved: Vec<MovedStep> = kept
            .iter()
            .enumerate()
            .filter(|(k, _)| !stay.contains(k))
            .map(|(_, &(i, j))| MovedStep {
                step_id: id(&a[i]).to_owned(),
                from: i,
                to: j,
            })
            .collect();
        moved.sort_by_key(|m| m.to);
        self.moved = moved;
        for (j, s) in b.iter().enumerate() {
            match pos_a.get(id(s)) {
                None => self.added.push(AddedStep {
                    step_id: id(s).to_owned(),
                    position: j,
                    definition: doc(s),
                }),
                Some(&i) if a[i] != *s => {
                    let mut changes = Vec::new();
                    let empty = Map::new();
                    let (da, db) = (doc(&a[i]), doc(s));
                    fields(
                        &mut changes,
                        "",
                        da.as_object().unwrap_or(&empty),
                        db.as_object().unwrap_or(&empty),
                        None,
                    );
                    if !changes.is_empty() {
                        self.changed.push(ChangedStep {
                            step_id: id(s).to_owned(),
                            fields: changes,
                        });
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// `before` (a plan document in its JSON form) with this diff applied.
    pub fn apply_document(&self, before: &Value) -> Result<Value, DiffError> {
        let Some(top) = before.as_object() else {
            return err("the definition is not a JSON object");
        };
        let mut top = top.clone();
        let steps = take_steps(&mut top);
        let steps_touched = !(self.added.is_empty()
            && self.removed.is_empty()
            && self.moved.is_empty()
            && self.changed.is_empty());
        let new_steps = match steps {
            Some(steps) => Some(self.apply_steps(&steps)?),
            None if steps_touched => return err("the definition has no steps with step_id"),
            None => None,
        };
        for change in &self.plan {
            set(&mut top, &change.path, change, "")?;
        }
        if let Some(steps) = new_steps {
            top.insert("steps".into(), Value::Array(steps));
        }
        Ok(Value::Object(top))
    }

    fn apply_steps(&self, steps: &[Value]) -> Result<Vec<Value>, DiffError> {
        let mut index: HashMap<&str, usize> = map_with_capacity(steps.len());
        for (i, s) in steps.iter().enumerate() {
            if index.insert(id(s), i).is_some() {
                return err(format!("step {} appears twice", id(s)));
            }
        }
        let mut defs: Vec<Option<Value>> = steps.iter().map(|s| Some(s.clone())).collect();
        for r in &self.removed {
            let Some(&i) = index.get(r.step_id.as_str()) else {
                return err(format!("step {} to remove does not exist", r.step_id));
            };
            if defs[i].take().is_none() {
                return err(format!("step {} is removed twice", r.step_id));
            }
        }
        for c in &self.changed {
            let Some(def) = index
                .get(c.step_id.as_str())
                .and_then(|&i| defs[i].as_mut())
            else {
                return err(format!("step {} to change does not exist", c.step_id));
            };
            let Value::Object(obj) = def else {
                return err(format!("step {} is not an object", c.step_id));
            };
            for f in &c.fields {
                set(obj, &f.path, f, &format!("steps.{}.", c.step_id))?;
            }
        }
        let total = steps.len() - self.removed.len() + self.added.len();
        let mut slots: Vec<Option<Value>> = vec![None; total];
        let mut place = |at: usize, what: &str, def: Value| -> Result<(), DiffError> {
            match slots.get_mut(at) {
                Some(slot @ None) => {
                    *slot = Some(def);
                    Ok(())
                }
                Some(Some(_)) => err(format!("step {what} and another both go to position {at}")),
                None => err(format!(
                    "step {what} goes to position {at}, past the end ({total} steps)"
                )),
            }
        };
        let mut moving: HashSet<usize> = set_with_capacity(self.moved.len());
        for m in &self.moved {
            let Some(&i) = index.get(m.step_id.as_str()) else {
                return err(format!("step {} to move does not exist", m.step_id));
            };
            if i != m.from {
                return err(format!(
                    "step {} is at position {i}, not {}",
                    m.step_id, m.from
                ));
            }
            let Some(def) = defs[i].take() else {
                return err(format!("step {} is removed or moved twice", m.step_id));
            };
            moving.insert(i);
            place(m.to, &m.step_id, def)?;
        }
        for a in &self.added {
            if index.contains_key(a.step_id.as_str()) && defs[index[a.step_id.as_str()]].is_some() {
                return err(format!("step {} to add already exists", a.step_id));
            }
            place(a.position, &a.step_id, a.definition.clone())?;
        }
        let mut stay = defs.into_iter().flatten();
        let mut out = Vec::with_capacity(total);
        for slot in slots {
            match slot.or_else(|| stay.next()) {
                Some(def) => out.push(def),
                None => return err("the steps' positions leave a gap"),
            }
        }
        Ok(out)
    }
}

/// The step id of a step document (empty when it has none, which plans never are).
fn id(step: &Value) -> &str {
    step.get("step_id").and_then(Value::as_str).unwrap_or("")
}

/// The `steps` of a plan object when they are an array of objects with distinct string
/// `step_id`s.
fn identified(top: &Map<String, Value>) -> Option<&[Value]> {
    let Some(Value::Array(steps)) = top.get("steps") else {
        return None;
    };
    let mut seen = set_with_capacity(steps.len());
    steps
        .iter()
        .all(|s| {
            s.get("step_id")
                .and_then(Value::as_str)
                .is_some_and(|id| seen.insert(id))
        })
        .then_some(steps.as_slice())
}

/// Takes `steps` out of a plan object when it is an array of objects with distinct string
/// `step_id`s; leaves it in otherwise.
fn take_steps(top: &mut Map<String, Value>) -> Option<Vec<Value>> {
    let Some(Value::Array(steps)) = top.get("steps") else {
        return None;
    };
    let mut seen = set_with_capacity(steps.len());
    let ok = steps.iter().all(|s| {
        s.get("step_id")
            .and_then(Value::as_str)
            .is_some_and(|id| seen.insert(id))
    });
    if !ok {
        return None;
    }
    match top.remove("steps") {
        Some(Value::Array(steps)) => Some(steps),
        _ => None,
    }
}

/// The indexes (into `seq`) of one longest strictly increasing subsequence, O(n log n).
fn longest_increasing(seq: &[usize]) -> HashSet<usize> {
    // tails[k]: index of the smallest tail of an increasing run of length k + 1.
    let mut tails: Vec<usize> = Vec::new();
    let mut prev: Vec<Option<usize>> = vec![None; seq.len()];
    for (i, &x) in seq.iter().enumerate() {
        let k = tails.partition_point(|&t| seq[t] < x);
        prev[i] = k.checked_sub(1).map(|p| tails[p]);
        if k == tails.len() {
            tails.push(i);
        } else {
            tails[k] = i;
        }
    }
    let mut keep = set_with_capacity(tails.len());
    let mut at = tails.last().copied();
    while let Some(i) = at {
        keep.insert(i);
        at = prev[i];
    }
    keep
}

/// Whether an object is compared key by key (every key a usable path segment).
fn walkable(obj: &Map<String, Value>) -> bool {
    obj.keys().all(|k| !k.is_empty() && !k.contains('.'))
}

/// Appends the changes from `a` to `b` (objects at `prefix`), keys of `a` first, then keys only
/// `b` has.
fn fields(
    out: &mut Vec<FieldChange>,
    prefix: &str,
    a: &Map<String, Value>,
    b: &Map<String, Value>,
    skip: Option<&str>,
) {
    let path = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    for (k, va) in a {
        if Some(k.as_str()) == skip {
            continue;
        }
        match b.get(k) {
            None => out.push(FieldChange {
                path: path(k),
                before: Some(va.clone()),
                after: None,
            }),
            Some(vb) if va == vb => {}
            Some(vb) => match (va, vb) {
                (Value::Object(oa), Value::Object(ob)) if walkable(oa) && walkable(ob) => {
                    fields(out, &path(k), oa, ob, None)
                }
                _ => out.push(FieldChange {
                    path: path(k),
                    before: Some(va.clone()),
                    after: Some(vb.clone()),
                }),
            },
        }
    }
    for (k, vb) in b {
        if !a.contains_key(k) && Some(k.as_str()) != skip {
            out.push(FieldChange {
                path: path(k),
                before: None,
                after: Some(vb.clone()),
            });
        }
    }
}

/// Applies one field change inside `obj`, checking its `before`. `context` prefixes the path in
/// errors (`steps.s1.`).
pub(crate) fn set(
    obj: &mut Map<String, Value>,
    path: &str,
    change: &FieldChange,
    context: &str,
) -> Result<(), DiffError> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else {
        return err(format!("{context}: empty path"));
    };
    let mut at = obj;
    for p in parts {
        match at.get_mut(p) {
            Some(Value::Object(o)) => at = o,
            _ => return err(format!("{context}{path}: {context}{p} is not an object")),
        }
    }
    if at.get(last) != change.before.as_ref() {
        return err(format!(
            "{context}{path} is {}, the diff expects {}",
            shown(at.get(last)),
            shown(change.before.as_ref())
        ));
    }
    match &change.after {
        Some(v) => {
            at.insert(last.to_owned(), v.clone());
        }
        None => {
            at.remove(last);
        }
    }
    Ok(())
}

fn shown(v: Option<&Value>) -> String {
    match v {
        None => "absent".into(),
        Some(v) => short(v),
    }
}

/// A value in one line, cut at 80 characters.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        let cut: String = s.chars().take(79).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// The parameters added, removed and changed between two templates' parameter schemas (JSON
/// Schemas of their inputs): each entry of `properties`, with whether `required` lists it.
/// Other keywords of the schemas are not compared.
pub fn parameters(before: &Value, after: &Value) -> Vec<ParameterChange> {
    let a = parameter_map(before);
    let b = parameter_map(after);
    let mut out = Vec::new();
    for (name, pa) in &a {
        match b.iter().find(|(n, _)| n == name) {
            None => out.push(ParameterChange {
                name: name.clone(),
                before: Some(pa.clone()),
                after: None,
            }),
            Some((_, pb)) if pb != pa => out.push(ParameterChange {
                name: name.clone(),
                before: Some(pa.clone()),
                after: Some(pb.clone()),
            }),
            Some(_) => {}
        }
    }
    for (name, pb) in &b {
        if !a.iter().any(|(n, _)| n == name) {
            out.push(ParameterChange {
                name: name.clone(),
                before: None,
                after: Some(pb.clone()),
            });
        }
    }
    out
}

fn parameter_map(schema: &Value) -> Vec<(String, Parameter)> {
    let required: HashSet<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .map(|(name, s)| {
                    (
                        name.clone(),
                        Parameter {
                            schema: s.clone(),
                            required: required.contains(name.as_str()),
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `schema` with parameter changes applied: `properties` and `required` updated, checking each
/// change's `before`.
pub fn apply_parameters(schema: &Value, changes: &[ParameterChange]) -> Result<Value, DiffError> {
    let mut out = match schema {
        Value::Object(o) => o.clone(),
        Value::Null => Map::new(),
        _ => return err("the parameter schema is not a JSON object"),
    };
    let current = parameter_map(schema);
    let mut props = match out.remove("properties") {
        Some(Value::Object(p)) => p,
        _ => Map::new(),
    };
    let mut required: Vec<String> = out
        .remove("required")
        .and_then(|r| serde_json::from_value(r).ok())
        .unwrap_or_default();
    for c in changes {
        let now = current.iter().find(|(n, _)| *n == c.name).map(|(_, p)| p);
        if now != c.before.as_ref() {
            return err(format!("parameter {} is not as the diff expects", c.name));
        }
        required.retain(|r| *r != c.name);
        match &c.after {
            Some(p) => {
                props.insert(c.name.clone(), p.schema.clone());
                if p.required {
                    required.push(c.name.clone());
                }
            }
            None => {
                props.remove(&c.name);
            }
        }
    }
    out.insert("properties".into(), Value::Object(props));
    if !required.is_empty() {
        out.insert(
            "required".into(),
            Value::Array(required.into_iter().map(Value::String).collect()),
        );
    }
    Ok(Value::Object(out))
}

/// One line per change: `~` a field before → after, `+` added, `-` removed, `↕` moved.
impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "no changes");
        }
        for c in &self.plan {
            writeln!(f, "{}", field_line(&c.path, c))?;
        }
        for p in &self.parameters {
            match (&p.before, &p.after) {
                (None, Some(a)) => writeln!(f, "+ parameter {}: {}", p.name, param(a))?,
                (Some(b), None) => writeln!(f, "- parameter {}: {}", p.name, param(b))?,
                (Some(b), Some(a)) => {
                    writeln!(f, "~ parameter {}: {} → {}", p.name, param(b), param(a))?
                }
                (None, None) => {}
            }
        }
        for r in &self.removed {
            writeln!(f, "- step {} (was at {})", r.step_id, r.position + 1)?;
        }
        for a in &self.added {
            writeln!(
                f,
                "+ step {} at {}: {}",
                a.step_id,
                a.position + 1,
                short(&a.definition)
            )?;
        }
        for m in &self.moved {
            writeln!(f, "↕ step {}: {} → {}", m.step_id, m.from + 1, m.to + 1)?;
        }
        for c in &self.changed {
            for field in &c.fields {
                let path = format!("step {} {}", c.step_id, field.path);
                writeln!(f, "{}", field_line(&path, field))?;
            }
        }
        Ok(())
    }
}

fn field_line(path: &str, c: &FieldChange) -> String {
    match (&c.before, &c.after) {
        (None, Some(a)) => format!("+ {path}: {}", short(a)),
        (Some(b), None) => format!("- {path}: {}", short(b)),
        (b, a) => format!("~ {path}: {} → {}", shown(b.as_ref()), shown(a.as_ref())),
    }
}

fn param(p: &Parameter) -> String {
    if p.required {
        format!("{} (required)", short(&p.schema))
    } else {
        short(&p.schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{RetryPolicy, StepDef};
    use proptest::prelude::*;
    use serde_json::json;
    use std::sync::Arc;

    fn step(id: &str) -> StepDef {
        StepDef::new(id, "search", "builtin")
    }

    fn plan(steps: Vec<StepDef>) -> Plan {
        Plan {
            plan_id: Some("p".into()),
            query: "q".into(),
            metadata: Value::Null,
            max_parallel: 8,
            steps: steps.into_iter().map(Arc::new).collect(),
            on_failure: Default::default(),
            inputs: Value::Null,
            template: None,
        }
    }

    #[test]
    fn names_each_kind_of_change() {
        let mut a1 = step("a");
        a1.params = json!({"query": "old", "n": 1});
        a1.retry = Some(RetryPolicy::ONCE);
        let v1 = plan(vec![a1, step("b"), step("c"), step("d")]);
        let mut a2 = step("a");
        a2.params = json!({"query": "new", "n": 1});
        a2.retry = Some(RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::ONCE
        });
        let mut v2 = plan(vec![step("c"), a2, step("e"), step("d")]);
        v2.max_parallel = 2;
        v2.metadata = json!({"owner": "ops"});
        let diff = Diff::between(&v1, &v2);
        assert_eq!(
            diff.plan,
            vec![
                FieldChange {
                    path: "max_parallel".into(),
                    before: Some(json!(8)),
                    after: Some(json!(2)),
                },
                FieldChange {
                    path: "metadata".into(),
                    before: None,
                    after: Some(json!({"owner": "ops"})),
                },
            ]
        );
        assert_eq!(diff.removed.len(), 1);
        assert_eq!(
            (diff.removed[0].step_id.as_str(), diff.removed[0].position),
            ("b", 1)
        );
        assert_eq!(diff.added.len(), 1);
        assert_eq!(
            (diff.added[0].step_id.as_str(), diff.added[0].position),
            ("e", 2)
        );
        assert_eq!(diff.added[0].definition["action"], "search");
        assert_eq!(
            diff.moved,
            vec![MovedStep {
                step_id: "a".into(),
                from: 0,
                to: 1
            }]
        );
        let paths: Vec<&str> = diff.changed[0]
            .fields
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(diff.changed[0].step_id, "a");
        assert_eq!(paths, ["params.query", "retry.max_attempts"]);
        assert_eq!(diff.apply(&v1).unwrap(), v2);
        let text = diff.to_string();
        assert!(text.contains("~ max_parallel: 8 → 2"), "{text}");
        assert!(text.contains("- step b (was at 2)"), "{text}");
        assert!(text.contains("+ step e at 3"), "{text}");
        assert!(text.contains("↕ step a: 1 → 2"), "{text}");
        assert!(
            text.contains("~ step a params.query: \"old\" → \"new\""),
            "{text}"
        );
        // Through JSON and back, nothing is lost.
        let back: Diff = serde_json::from_value(serde_json::to_value(&diff).unwrap()).unwrap();
        assert_eq!(back, diff);
    }

    #[test]
    fn a_null_value_is_not_an_absent_one() {
        let v1 = json!({"steps": [{"step_id": "a", "params": {"x": 1}}]});
        let v2 = json!({"steps": [{"step_id": "a", "params": {"x": null}}]});
        let diff = Diff::of_documents(&v1, &v2);
        let back: Diff = serde_json::from_str(&serde_json::to_string(&diff).unwrap()).unwrap();
        assert_eq!(back.apply_document(&v1).unwrap(), v2);
        let removed = Diff::of_documents(&v2, &v1);
        assert_eq!(removed.changed[0].fields[0].before, Some(Value::Null));
        assert_eq!(removed.apply_document(&v2).unwrap(), v1);
    }

    #[test]
    fn keys_with_dots_are_compared_whole() {
        let v1 = json!({"steps": [{"step_id": "a", "params": {"a.b": 1, "c": 2}}]});
        let v2 = json!({"steps": [{"step_id": "a", "params": {"a.b": 2, "c": 2}}]});
        let diff = Diff::of_documents(&v1, &v2);
        assert_eq!(diff.changed[0].fields[0].path, "params");
        assert_eq!(diff.apply_document(&v1).unwrap(), v2);
    }

    #[test]
    fn a_diff_refuses_a_definition_it_was_not_made_for() {
        let mut s = step("a");
        s.params = json!({"query": "old"});
        let v1 = plan(vec![s.clone(), step("b")]);
        s.params = json!({"query": "new"});
        let v2 = plan(vec![s, step("b")]);
        let diff = Diff::between(&v1, &v2);
        let e = diff.apply(&v2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the diff does not apply: steps.a.params.query is \"new\", the diff expects \"old\""
        );
        let removal = Diff::between(&v1, &plan(vec![step("b")]));
        let e = removal.apply(&plan(vec![step("b")])).unwrap_err();
        assert!(
            e.to_string().contains("step a to remove does not exist"),
            "{e}"
        );
        assert!(Diff::between(&v1, &v1).is_empty());
        assert_eq!(Diff::between(&v1, &v1).to_string(), "no changes\n");
    }

    #[test]
    fn parameters_added_removed_and_changed() {
        let a = json!({"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer"}, "old": {"type": "string"}
        }, "required": ["city"]});
        let b = json!({"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer", "minimum": 1},
            "budget": {"type": "number"}
        }, "required": ["city", "budget"]});
        let changes = parameters(&a, &b);
        let names: Vec<(&str, bool, bool)> = changes
            .iter()
            .map(|c| (c.name.as_str(), c.before.is_some(), c.after.is_some()))
            .collect();
        assert_eq!(
            names,
            [
                ("days", true, true),
                ("old", true, false),
                ("budget", false, true)
            ]
        );
        assert!(changes[2].after.as_ref().unwrap().required);
        let applied = apply_parameters(&a, &changes).unwrap();
        assert!(parameters(&applied, &b).is_empty());
        let diff = Diff {
            parameters: changes,
            ..Diff::default()
        };
        let text = diff.to_string();
        assert!(
            text.contains("+ parameter budget: {\"type\":\"number\"} (required)"),
            "{text}"
        );
        assert!(text.contains("- parameter old"), "{text}");
    }

    fn arb_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (0i64..5).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
            prop::collection::vec((0i64..3).prop_map(Value::from), 0..3).prop_map(Value::from),
        ]
    }

    fn arb_object() -> impl Strategy<Value = Value> {
        arb_leaf().prop_recursive(3, 16, 4, |inner| {
            prop::collection::btree_map(
                prop_oneof![Just("q"), Just("n"), Just("o"), Just("a.b")],
                inner,
                0..4,
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
        })
    }

    fn arb_step(id: String) -> impl Strategy<Value = StepDef> {
        (
            prop_oneof![Just("search"), Just("write")],
            arb_object(),
            prop::option::of(prop::collection::vec("s[0-9]", 0..3)),
            prop::option::of((1u32..4, prop_oneof![Just(100u64), Just(200)])),
            prop::option::of(1u64..3),
            any::<bool>(),
            prop::option::of("x > [0-9]"),
        )
            .prop_map(move |(action, params, deps, retry, timeout, pause, when)| {
                let mut s = step(&id);
                s.action = action.into();
                s.params = match params {
                    Value::Object(_) | Value::Null => params,
                    other => json!({ "v": other }),
                };
                s.depends_on = deps;
                s.retry = retry.map(|(max_attempts, backoff_ms)| RetryPolicy {
                    max_attempts,
                    backoff_ms,
                    backoff_factor: 2.0,
                });
                s.timeout_ms = timeout.map(|t| t * 1_000);
                s.pause_before = pause;
                s.when = when;
                s
            })
    }

    /// A JSON Schema of inputs: some of `x`, `y`, `z`, each typed, some with a default, some
    /// required.
    fn arb_parameters() -> impl Strategy<Value = Value> {
        prop::collection::btree_map(
            prop_oneof![Just("x"), Just("y"), Just("z")],
            (
                prop_oneof![Just("string"), Just("integer")],
                prop::option::of(0i64..3),
                any::<bool>(),
            ),
            0..3,
        )
        .prop_map(|props| {
            let mut properties = Map::new();
            let mut required = Vec::new();
            for (name, (ty, default, req)) in props {
                let mut schema = json!({ "type": ty });
                if let Some(d) = default {
                    schema["default"] = if ty == "string" {
                        json!(d.to_string())
                    } else {
                        json!(d)
                    };
                }
                properties.insert(name.to_owned(), schema);
                if req {
                    required.push(name);
                }
            }
            json!({"type": "object", "properties": properties, "required": required})
        })
    }

    fn arb_plan() -> impl Strategy<Value = Plan> {
        (
            prop::sample::subsequence((0..10).collect::<Vec<u32>>(), 1..10)
                .prop_shuffle()
                .prop_flat_map(|ids| {
                    ids.into_iter()
                        .map(|i| arb_step(format!("s{i}")))
                        .collect::<Vec<_>>()
                }),
            1u32..4,
            prop_oneof![Just(Value::Null), arb_object()],
            "[ab]{0,2}",
            prop_oneof![Just(Value::Null), arb_object()],
        )
            .prop_map(|(steps, max_parallel, metadata, query, inputs)| Plan {
                plan_id: Some("p".into()),
                query,
                metadata: match metadata {
                    Value::Object(_) | Value::Null => metadata,
                    other => json!({ "m": other }),
                },
                max_parallel,
                steps: steps.into_iter().map(Arc::new).collect(),
                on_failure: Default::default(),
                // Absent inputs read back as null, so an empty object is generated as null.
                inputs: match inputs {
                    Value::Object(o) if !o.is_empty() => Value::Object(o),
                    Value::Object(_) | Value::Null => Value::Null,
                    other => json!({ "i": other }),
                },
                template: None,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Applying the diff of v1 → v2 to v1 gives v2, through the diff's JSON too.
        #[test]
        fn applying_a_diff_gives_the_second_definition(v1 in arb_plan(), v2 in arb_plan()) {
            let diff = Diff::between(&v1, &v2);
            prop_assert_eq!(diff.apply(&v1).unwrap(), v2.clone());
            let json = serde_json::to_string(&diff).unwrap();
            let back: Diff = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back.apply(&v1).unwrap(), v2.clone());
            prop_assert_eq!(Diff::between(&v1, &v2).is_empty(), v1 == v2);
        }

        /// For templates too: applying the diff of v1 → v2 (plan part and parameters) to v1
        /// gives v2's plan and v2's parameters, through the diff's JSON too.
        #[test]
        fn applying_a_template_diff_gives_the_second_template(
            v1 in arb_plan(),
            v2 in arb_plan(),
            p1 in arb_parameters(),
            p2 in arb_parameters(),
        ) {
            let template = |p: &Plan, parameters: Value| {
                let mut plan = serde_json::to_value(p).unwrap();
                plan.as_object_mut().unwrap().remove("plan_id");
                crate::template::Template {
                    name: "t".into(),
                    description: None,
                    parameters,
                    plan,
                }
            };
            let (a, b) = (template(&v1, p1), template(&v2, p2));
            let diff = a.diff(&b);
            let back: Diff = serde_json::from_str(&serde_json::to_string(&diff).unwrap()).unwrap();
            for d in [&diff, &back] {
                let applied = a.apply(d).unwrap();
                prop_assert_eq!(&applied.plan, &b.plan);
                prop_assert!(parameters(&applied.parameters, &b.parameters).is_empty());
            }
            prop_assert_eq!(diff.is_empty(), a.plan == b.plan && parameters(&a.parameters, &b.parameters).is_empty());
        }

        /// Moves are kept to those the order needs: reversing n common steps moves n - 1.
        #[test]
        fn only_steps_out_of_order_move(n in 1usize..20) {
            let v1 = plan((0..n).map(|i| step(&format!("s{i}"))).collect());
            let v2 = plan((0..n).rev().map(|i| step(&format!("s{i}"))).collect());
            let diff = Diff::between(&v1, &v2);
            prop_assert_eq!(diff.moved.len(), n - 1);
            prop_assert_eq!(diff.apply(&v1).unwrap(), v2);
        }
    }

    /// Diffs two 1,000-step definitions with edits throughout; prints the time per diff.
    /// `cargo test -p cairn-core --release diff_of_1000_steps -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn diff_of_1000_steps() {
        let steps = |edit: bool| -> Vec<StepDef> {
            (0..1_000)
                .map(|i| {
                    let mut s = step(&format!("step_{i}"));
                    s.params = json!({"query": format!("q{i}"), "opts": {"depth": i % 7}});
                    s.retry = Some(RetryPolicy::ONCE);
                    if edit && i % 10 == 0 {
                        s.params["opts"]["depth"] = json!(99);
                    }
                    s
                })
                .collect()
        };
        let v1 = plan(steps(false));
        let mut edited = steps(true);
        edited.retain(|s| !s.step_id.ends_with('3'));
        edited.swap(10, 500);
        edited.push(step("new"));
        let v2 = plan(edited);
        let runs = 50;
        let started = std::time::Instant::now();
        let mut diff = Diff::default();
        for _ in 0..runs {
            diff = Diff::between(&v1, &v2);
        }
        let per = started.elapsed() / runs;
        println!(
            "diff of two 1,000-step definitions: {per:?} per diff ({} changed, {} removed, {} moved)",
            diff.changed.len(),
            diff.removed.len(),
            diff.moved.len()
        );
        assert_eq!(diff.apply(&v1).unwrap(), v2);
    }
}
