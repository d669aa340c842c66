//! Templates: a plan document without a `plan_id`, with a JSON Schema of the inputs it takes.
//!
//! A template is pushed as `{name, description?, parameters, plan}`. [`Template::from_value`]
//! checks it whole, every fault with its path: the plan part as the plan validator does
//! (`plan.steps.a.when: …`), the parameters as a JSON Schema, and that every `inputs.<name>` the
//! plan reads is declared in `parameters.properties`. [`Template::instantiate`] validates the
//! inputs against the schema (every failing input named), fills in the schema's defaults and
//! renders the plan the template's version stands for.
//!
//! The store keeps a version's [`Template::canonical`] text: keys sorted at every depth, so a
//! push that differs only in key order or whitespace is the same version.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::diff::{self, Diff, DiffError};
use crate::document;
use crate::expr;
use crate::plan::{self, Fault, Format, Invalid, Plan, TemplateRef};
use crate::time::Timestamp;

/// A template as pushed (and as stored, in canonical form).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Template {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema of the inputs (an object schema; `properties` names each input).
    #[serde(default = "empty_object_schema")]
    pub parameters: Value,
    /// A plan document without `plan_id`.
    pub plan: Value,
}

fn empty_object_schema() -> Value {
    serde_json::json!({"type": "object", "properties": {}})
}

const FIELDS: &[&str] = &["name", "description", "parameters", "plan"];

impl Template {
    /// Reads a template from JSON or YAML text and checks it.
    pub fn parse(text: &str, format: Format) -> Result<Template, Invalid> {
        let read = match format {
            Format::Json => document::json(text).map_err(|e| ("JSON", e)),
            Format::Yaml => document::yaml(text).map_err(|e| ("YAML", e)),
        };
        match read {
            Ok((value, _)) => Template::from_value(value),
            Err((kind, e)) => {
                let mut fault = Fault::new("", format!("not valid {kind}: {}", e.message));
                if let Some(p) = e.pos {
                    fault.line = Some(p.line);
                    fault.column = Some(p.column);
                }
                Err(Invalid {
                    faults: vec![fault],
                })
            }
        }
    }

    /// Checks a template document; every fault found at once.
    pub fn from_value(value: Value) -> Result<Template, Invalid> {
        let Value::Object(map) = value else {
            return Err(Invalid::one(
                "",
                "a template must be a mapping with `name`, `parameters` and `plan`",
            ));
        };
        let mut faults = Vec::new();
        for key in map.keys() {
            if !FIELDS.contains(&key.as_str()) {
                faults.push(Fault::new(
                    key.clone(),
                    format!(
                        "unknown field `{key}`{}",
                        crate::suggest::did_you_mean(key, FIELDS.iter().copied())
                    ),
                ));
            }
        }
        let name = match map.get("name") {
            Some(Value::String(n)) if plan::valid_id(n) => n.clone(),
            Some(Value::String(n)) => {
                faults.push(Fault::new(
                    "name",
                    format!("{n:?} is not a valid name (1 to 128 of A-Z a-z 0-9 _ . -)"),
                ));
                String::new()
            }
            Some(_) => {
                faults.push(Fault::new("name", "must be a string"));
                String::new()
            }
            None => {
                faults.push(Fault::new("name", "missing: a template needs a name"));
                String::new()
            }
        };
        let description = match map.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => {
                faults.push(Fault::new("description", "must be a string"));
                None
            }
        };
        let parameters = map
            .get("parameters")
            .cloned()
            .unwrap_or_else(empty_object_schema);
        let declared = check_parameters(&parameters, &mut faults);
        let plan = map.get("plan").cloned().unwrap_or(Value::Null);
        match &plan {
            Value::Object(p) => {
                for key in ["plan_id", "template", "inputs"] {
                    if p.contains_key(key) {
                        faults.push(Fault::new(
                            format!("plan.{key}"),
                            match key {
                                "plan_id" => "a template's plan has no plan_id: each plan made from it gets its own",
                                "inputs" => "a template's plan has no inputs: they are given to each plan made of it (declare them in parameters)",
                                _ => "a template's plan cannot name a template",
                            },
                        ));
                    }
                }
                let mut body = p.clone();
                body.remove("plan_id");
                body.remove("template");
                body.remove("inputs");
                if let Some(declared) = &declared {
                    undeclared_inputs(&body, declared, &mut faults);
                }
                if let Err(invalid) = Plan::from_value(Value::Object(body)) {
                    faults.extend(invalid.faults.into_iter().map(|f| Fault {
                        path: if f.path.is_empty() {
                            "plan".into()
                        } else {
                            format!("plan.{}", f.path)
                        },
                        ..f
                    }));
                }
            }
            Value::Null => faults.push(Fault::new("plan", "missing: a template needs a plan")),
            _ => faults.push(Fault::new("plan", "must be a plan document (a mapping)")),
        }
        if faults.is_empty() {
            Ok(Template {
                name,
                description,
                parameters,
                plan,
            })
        } else {
            Err(Invalid { faults })
        }
    }

    /// The text a version is stored as: sorted keys at every depth, no whitespace.
    pub fn canonical(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        sorted(&value).to_string()
    }

    /// Reads a stored version back (its canonical text).
    pub fn from_canonical(text: &str) -> Result<Template, String> {
        serde_json::from_str(text).map_err(|e| format!("stored template is unreadable: {e}"))
    }

    /// The inputs this template declares, in the order of `parameters.properties`.
    pub fn input_names(&self) -> Vec<String> {
        self.parameters
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The inputs with the schema's defaults filled in, checked against the schema: every
    /// failing input is a fault at `inputs.<path>`.
    pub fn resolve_inputs(&self, inputs: Value) -> Result<Value, Invalid> {
        let mut inputs = match inputs {
            Value::Null => Map::new(),
            Value::Object(m) => m,
            _ => {
                return Err(Invalid::one(
                    "inputs",
                    "must be a mapping of input names to values",
                ))
            }
        };
        if let Some(props) = self.parameters.get("properties").and_then(Value::as_object) {
            for (name, schema) in props {
                if let Some(default) = schema.get("default") {
                    if !inputs.contains_key(name) {
                        inputs.insert(name.clone(), default.clone());
                    }
                }
            }
        }
        let inputs = Value::Object(inputs);
        let validator = jsonschema::validator_for(&self.parameters)
            .map_err(|e| Invalid::one("parameters", format!("not a valid JSON Schema: {e}")))?;
        let mut faults: Vec<Fault> = Vec::new();
        for error in validator.iter_errors(&inputs) {
            let at = pointer_to_path(error.instance_path().as_str());
            match error.kind() {
                jsonschema::error::ValidationErrorKind::Required { property } => {
                    let name = property
                        .as_str()
                        .map_or(property.to_string(), str::to_owned);
                    faults.push(Fault::new(
                        format!("{at}.{name}"),
                        "missing: this input is required",
                    ));
                }
                jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                    for name in unexpected {
                        faults.push(Fault::new(
                            format!("{at}.{name}"),
                            "not an input of this template",
                        ));
                    }
                }
                _ => faults.push(Fault::new(at, error.to_string())),
            }
        }
        if faults.is_empty() {
            Ok(inputs)
        } else {
            faults.sort_by(|a, b| a.path.cmp(&b.path));
            faults.dedup();
            Err(Invalid { faults })
        }
    }

    /// The plan this template's `version` makes from `inputs` (defaults applied, validated
    /// against the schema), with `plan_id` when given.
    pub fn instantiate(
        &self,
        version: u64,
        inputs: Value,
        plan_id: Option<String>,
    ) -> Result<Plan, Invalid> {
        let inputs = self.resolve_inputs(inputs)?;
        let mut body = match &self.plan {
            Value::Object(p) => p.clone(),
            _ => return Err(Invalid::one("plan", "the template has no plan")),
        };
        if let Some(id) = plan_id {
            body.insert("plan_id".into(), Value::String(id));
        }
        body.insert("inputs".into(), inputs);
        body.insert(
            "template".into(),
            serde_json::to_value(TemplateRef {
                name: self.name.clone(),
                version,
            })
            .unwrap_or(Value::Null),
        );
        Plan::from_value(Value::Object(body))
    }
}

impl Template {
    /// The structural diff from this template to `other`, in the format of plan diffs: its
    /// plan's fields and steps, and its parameters added, removed and changed.
    pub fn diff(&self, other: &Template) -> Diff {
        let mut diff = Diff::of_documents(&self.plan, &other.plan);
        diff.parameters = diff::parameters(&self.parameters, &other.parameters);
        diff
    }

    /// This template with `diff` applied (every `before` checked), the other way of
    /// [`Template::diff`]: `a.apply(&a.diff(&b))` has `b`'s plan and parameters.
    pub fn apply(&self, diff: &Diff) -> Result<Template, DiffError> {
        Ok(Template {
            plan: diff.apply_document(&self.plan)?,
            parameters: diff::apply_parameters(&self.parameters, &diff.parameters)?,
            ..self.clone()
        })
    }
}

/// The diff between two versions of a template (`GET /v1/templates/{name}/diff`).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateDiff {
    pub name: String,
    pub from: u64,
    pub to: u64,
    pub diff: Diff,
}

/// One stored version of a template, as clients read it.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateVersion {
    pub name: String,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema of the inputs.
    pub parameters: Value,
    /// The plan document (without `plan_id`).
    pub plan: Value,
    pub created_at: Timestamp,
    pub created_by: String,
    /// When the template was deleted (it then makes no new plans); absent while it is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Timestamp>,
}

/// A version as listed: who pushed it and when.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: u64,
    pub created_at: Timestamp,
    pub created_by: String,
}

/// A template's latest version and the list of all its versions, oldest first.
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateDetail {
    pub latest: TemplateVersion,
    pub versions: Vec<VersionInfo>,
}

/// What a push answers: the version, and whether the push made it (`false`: the content was
/// that of the latest version already).
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pushed {
    #[serde(flatten)]
    pub version: TemplateVersion,
    pub created: bool,
}

impl TemplateVersion {
    /// A stored version read back: `content` is its canonical text.
    pub fn of(
        template: Template,
        version: u64,
        created_at: i64,
        created_by: String,
        deleted_at: Option<i64>,
    ) -> TemplateVersion {
        TemplateVersion {
            name: template.name,
            version,
            description: template.description,
            parameters: template.parameters,
            plan: template.plan,
            created_at: Timestamp::from_micros(created_at),
            created_by,
            deleted_at: deleted_at.map(Timestamp::from_micros),
        }
    }

    /// The template this version holds.
    pub fn template(&self) -> Template {
        Template {
            name: self.name.clone(),
            description: self.description.clone(),
            parameters: self.parameters.clone(),
            plan: self.plan.clone(),
        }
    }
}

/// Reports every `inputs.<name>` a step's `when` or `params` reads that `declared` lacks. Read
/// from the document rather than a parsed plan, so a plan with other faults is checked too.
fn undeclared_inputs(plan: &Map<String, Value>, declared: &[String], faults: &mut Vec<Fault>) {
    let Some(Value::Array(steps)) = plan.get("steps") else {
        return;
    };
    let mut report = |path: &str, input: String| {
        if !declared.contains(&input) {
            faults.push(Fault::new(
                format!("plan.{path}"),
                format!("reads `inputs.{input}`, which is not declared in parameters.properties"),
            ));
        }
    };
    for (i, step) in steps.iter().enumerate() {
        let id = step.get("step_id").and_then(Value::as_str).unwrap_or("");
        let at = plan::step_path(i, id);
        if let Some(Value::String(when)) = step.get("when") {
            for input in expr::inputs_in_condition(when) {
                report(&format!("{at}.when"), input);
            }
        }
        if let Some(params) = step.get("params") {
            expr::inputs_in_templates(params, &format!("{at}.params"), &mut report);
        }
    }
}

/// Which inputs `parameters` declares (`None` when it is not an object schema, reported).
fn check_parameters(parameters: &Value, faults: &mut Vec<Fault>) -> Option<Vec<String>> {
    let Value::Object(schema) = parameters else {
        faults.push(Fault::new(
            "parameters",
            "must be a JSON Schema of the inputs (a mapping)",
        ));
        return None;
    };
    if let Some(t) = schema.get("type") {
        if t != "object" {
            faults.push(Fault::new(
                "parameters.type",
                format!("the inputs are a mapping: the type must be \"object\", not {t}"),
            ));
        }
    }
    if let Err(e) = jsonschema::validator_for(parameters) {
        faults.push(Fault::new(
            "parameters",
            format!("not a valid JSON Schema: {e}"),
        ));
        return None;
    }
    match schema.get("properties") {
        None => Some(Vec::new()),
        Some(Value::Object(props)) => {
            // A default the schema itself refuses would make every instantiation fail.
            for (name, prop) in props {
                if let (Some(default), Ok(v)) =
                    (prop.get("default"), jsonschema::validator_for(prop))
                {
                    if let Some(e) = v.iter_errors(default).next() {
                        faults.push(Fault::new(
                            format!("parameters.properties.{name}.default"),
                            format!("the default does not fit its own schema: {e}"),
                        ));
                    }
                }
            }
            Some(props.keys().cloned().collect())
        }
        Some(_) => {
            faults.push(Fault::new(
                "parameters.properties",
                "must be a mapping of input names to their schemas",
            ));
            None
        }
    }
}

/// `/a/0/b` as `inputs.a[0].b`.
fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::from("inputs");
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            out.push('.');
            out.push_str(&segment);
        }
    }
    out
}

/// `value` with the keys of every mapping sorted, except the order of the inputs in
/// `parameters.properties`: it is the order of the start form's fields, so it counts.
fn sorted(value: &Value) -> Value {
    let mut out = sort_keys(value, true);
    if let Some(Value::Object(props)) = value.get("parameters").and_then(|p| p.get("properties")) {
        let kept: Map<String, Value> = props
            .iter()
            .map(|(k, v)| (k.clone(), sort_keys(v, true)))
            .collect();
        if let Some(Value::Object(p)) = out.get_mut("parameters") {
            p.insert("properties".into(), Value::Object(kept));
        }
    }
    out
}

fn sort_keys(value: &Value, sort: bool) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            if sort {
                keys.sort();
            }
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sort_keys(&map[k], sort)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| sort_keys(v, sort)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn research() -> Value {
        json!({
            "name": "research",
            "description": "look something up",
            "parameters": {
                "type": "object",
                "required": ["topic"],
                "properties": {
                    "topic": {"type": "string", "minLength": 1},
                    "depth": {"type": "integer", "minimum": 1, "maximum": 5, "default": 2},
                    "deep": {"type": "boolean", "default": false},
                    "style": {"enum": ["brief", "long"], "default": "brief"}
                },
                "additionalProperties": false
            },
            "plan": {
                "query": "research",
                "steps": [
                    {"step_id": "search", "action": "search", "agent_type": "builtin.echo",
                     "params": {"q": "{{ inputs.topic }}", "n": "{{ inputs.depth }}"}},
                    {"step_id": "dig", "action": "dig", "agent_type": "builtin.echo",
                     "when": "inputs.deep", "params": {"style": "{{ inputs.style }}"}}
                ]
            }
        })
    }

    fn messages(e: Invalid) -> Vec<String> {
        e.faults.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_template_instantiates_with_defaults_and_records_its_version() {
        let t = Template::from_value(research()).unwrap();
        assert_eq!(t.input_names(), ["topic", "depth", "deep", "style"]);
        let plan = t
            .instantiate(3, json!({"topic": "rust"}), Some("r-1".into()))
            .unwrap();
        assert_eq!(plan.plan_id.as_deref(), Some("r-1"));
        assert_eq!(
            plan.inputs,
            json!({"topic": "rust", "depth": 2, "deep": false, "style": "brief"})
        );
        assert_eq!(
            plan.template,
            Some(TemplateRef {
                name: "research".into(),
                version: 3
            })
        );
        assert_eq!(plan.steps.len(), 2);
    }

    #[test]
    fn every_failing_input_is_named() {
        let t = Template::from_value(research()).unwrap();
        let err = t
            .instantiate(
                1,
                json!({"depth": 9, "deep": "yes", "style": "epic", "colour": 1}),
                None,
            )
            .unwrap_err();
        let paths: Vec<&str> = err.faults.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "inputs.colour",
                "inputs.deep",
                "inputs.depth",
                "inputs.style",
                "inputs.topic"
            ],
            "{:?}",
            messages(err.clone())
        );
        let all = messages(err).join("\n");
        assert!(
            all.contains("inputs.topic: missing: this input is required"),
            "{all}"
        );
        assert!(
            all.contains("inputs.colour: not an input of this template"),
            "{all}"
        );
        assert!(Template::from_value(research())
            .unwrap()
            .instantiate(1, json!([1]), None)
            .unwrap_err()
            .to_string()
            .contains("inputs: must be a mapping"));
    }

    #[test]
    fn undeclared_inputs_and_plan_faults_are_refused_with_paths() {
        let mut doc = research();
        doc["plan"]["steps"][0]["params"]["extra"] =
            json!("{{ inputs.region }} {{ inputs.topic }}");
        doc["plan"]["steps"][1]["when"] = json!("inputs.lang == 'en'");
        doc["plan"]["steps"][1]["retry"] = json!({"max_attempts": 0});
        doc["plan"]["plan_id"] = json!("fixed");
        doc["plan"]["inputs"] = json!({"topic": "x"});
        let all = messages(Template::from_value(doc).unwrap_err());
        for want in [
            "plan.steps.search.params.extra: reads `inputs.region`, which is not declared",
            "plan.plan_id: a template's plan has no plan_id",
            "plan.inputs: a template's plan has no inputs",
            "plan.steps.dig.retry.max_attempts:",
        ] {
            assert!(all.iter().any(|m| m.starts_with(want)), "{want} in {all:?}");
        }
        // Alone, an undeclared input in a condition is the only fault.
        let mut doc = research();
        doc["plan"]["steps"][1]["when"] = json!("inputs.lang == 'en'");
        let all = messages(Template::from_value(doc).unwrap_err());
        assert_eq!(
            all,
            ["plan.steps.dig.when: reads `inputs.lang`, which is not declared in parameters.properties"]
        );
    }

    #[test]
    fn bad_template_documents_are_refused_whole() {
        let all = messages(
            Template::from_value(json!({
                "name": "no spaces",
                "parameters": {"type": "array", "properties": {"a": {"type": "integer", "default": "x"}}},
                "plan": {"steps": []},
                "descripton": "typo"
            }))
            .unwrap_err(),
        );
        for want in [
            "descripton: unknown field `descripton`; did you mean `description`?",
            "name: \"no spaces\" is not a valid name",
            "parameters.type: the inputs are a mapping",
            "parameters.properties.a.default: the default does not fit its own schema",
            "plan.steps: a plan needs at least one step",
        ] {
            assert!(all.iter().any(|m| m.starts_with(want)), "{want} in {all:?}");
        }
        let bad_schema = Template::from_value(json!({
            "name": "t", "parameters": {"type": "object", "properties": {"a": {"type": 5}}},
            "plan": {"steps": [{"step_id": "a", "action": "x", "agent_type": "t"}]}
        }))
        .unwrap_err()
        .to_string();
        assert!(
            bad_schema.contains("parameters: not a valid JSON Schema"),
            "{bad_schema}"
        );
    }

    #[test]
    fn canonical_text_ignores_key_order() {
        let a = Template::from_value(research()).unwrap();
        let text = serde_json::to_string_pretty(&research()).unwrap();
        // The same document with its keys in another order.
        let mut reordered: Map<String, Value> = Map::new();
        let original: Map<String, Value> = serde_json::from_str(&text).unwrap();
        for k in ["plan", "parameters", "name", "description"] {
            reordered.insert(k.into(), original[k].clone());
        }
        let b = Template::from_value(Value::Object(reordered)).unwrap();
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(Template::from_canonical(&a.canonical()).unwrap(), a);
        // The inputs keep their order (the start form's), so reordering them is a change.
        let stored = Template::from_canonical(&a.canonical()).unwrap();
        assert_eq!(stored.input_names(), ["topic", "depth", "deep", "style"]);
        let mut swapped = research();
        let props = swapped["parameters"]["properties"]
            .as_object()
            .unwrap()
            .clone();
        let mut reversed = Map::new();
        for (k, v) in props.iter().rev() {
            reversed.insert(k.clone(), v.clone());
        }
        swapped["parameters"]["properties"] = Value::Object(reversed);
        assert_ne!(
            Template::from_value(swapped).unwrap().canonical(),
            a.canonical()
        );
        let mut changed = research();
        changed["description"] = json!("other");
        assert_ne!(
            Template::from_value(changed).unwrap().canonical(),
            a.canonical()
        );
    }

    #[test]
    fn a_template_diff_names_steps_and_parameters_and_applies_back() {
        let a = Template::from_value(research()).unwrap();
        let mut doc = research();
        doc["parameters"]["properties"]["lang"] = json!({"type": "string", "default": "en"});
        doc["parameters"]["properties"]
            .as_object_mut()
            .unwrap()
            .remove("style");
        doc["parameters"]["required"] = json!(["topic", "depth"]);
        doc["plan"]["steps"][1]["params"] = json!({"lang": "{{ inputs.lang }}"});
        doc["plan"]["steps"].as_array_mut().unwrap().insert(
            0,
            json!({"step_id": "plan", "action": "think", "agent_type": "builtin.echo"}),
        );
        doc["plan"]["max_parallel"] = json!(2);
        let b = Template::from_value(doc).unwrap();
        let d = a.diff(&b);
        assert_eq!(d.added.len(), 1);
        assert_eq!(d.added[0].step_id, "plan");
        assert_eq!(d.changed.len(), 1);
        assert_eq!(d.changed[0].step_id, "dig");
        assert_eq!(d.plan[0].path, "max_parallel");
        let names: Vec<(&str, bool, bool)> = d
            .parameters
            .iter()
            .map(|p| (p.name.as_str(), p.before.is_some(), p.after.is_some()))
            .collect();
        assert_eq!(
            names,
            [
                ("depth", true, true),
                ("style", true, false),
                ("lang", false, true)
            ]
        );
        let back = a.apply(&d).unwrap();
        assert_eq!(back.plan, b.plan);
        assert!(diff::parameters(&back.parameters, &b.parameters).is_empty());
        assert!(a.diff(&a).is_empty());
        // A diff made for another template does not apply, naming what differs.
        let err = b.apply(&d).unwrap_err().to_string();
        assert!(err.contains("does not apply"), "{err}");
    }

    #[test]
    fn yaml_templates_parse() {
        let t = Template::parse(
            "name: t\nparameters:\n  type: object\n  properties:\n    who: {type: string, default: world}\nplan:\n  steps:\n    - {step_id: a, action: greet, agent_type: builtin.echo, params: {to: '{{ inputs.who }}'}}\n",
            Format::Yaml,
        )
        .unwrap();
        assert_eq!(
            t.instantiate(1, Value::Null, None).unwrap().inputs,
            json!({"who": "world"})
        );
        let err = Template::parse("name: [", Format::Yaml)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid YAML"), "{err}");
    }
}
