//! `{{ }}` templates in step params and `when:` conditions, both evaluated by minijinja with
//! strict undefined (a typo is an error, not an empty string) and a fuel limit (a hostile
//! expression cannot spin forever).
//!
//! The context a step sees: `plan_id`, `query`, `metadata`, `inputs`, and `steps.<id>.{status,output}` of
//! every step that has ended.

use std::sync::OnceLock;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// Instructions one evaluation may spend.
const FUEL: u64 = 50_000;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        env
    })
}

/// Does this string contain template syntax at all? Plain strings are passed through untouched.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// If the whole string is one `{{ expression }}`, that expression.
fn sole_expression(s: &str) -> Option<&str> {
    let t = s.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    Some(inner.trim())
}

/// Checks the syntax of a `when:` expression.
pub fn check_condition(expr: &str) -> Result<(), String> {
    if expr.trim().is_empty() {
        return Err("empty expression".into());
    }
    env()
        .compile_expression_owned(expr.to_owned())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn check_template(src: &str) -> Result<(), String> {
    let mut local = Environment::new();
    local.set_undefined_behavior(UndefinedBehavior::Strict);
    local
        .template_from_str(src)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Reports, through `fault(path, message)`, every string in `value` whose template syntax is bad.
pub fn check_templates(value: &Value, path: &str, fault: &mut dyn FnMut(&str, String)) {
    // One path, grown and cut back while walking: a plan's validation walks every step's
    // params, and a path made for every value (nearly all of them plain) was most of its cost.
    fn walk(value: &Value, path: &mut String, fault: &mut dyn FnMut(&str, String)) {
        match value {
            Value::String(s) if is_template(s) => {
                if let Err(e) = check_template(s) {
                    fault(path, e);
                }
            }
            Value::Array(items) => {
                let len = path.len();
                for (i, v) in items.iter().enumerate() {
                    use std::fmt::Write as _;
                    let _ = write!(path, "[{i}]");
                    walk(v, path, fault);
                    path.truncate(len);
                }
            }
            Value::Object(map) => {
                let len = path.len();
                for (k, v) in map {
                    path.push('.');
                    path.push_str(k);
                    walk(v, path, fault);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    // Whether any string within is a template: nearly all params hold none, and then no path
    // is made at all (its allocation was most of a plain step's check).
    fn any_template(value: &Value) -> bool {
        match value {
            Value::String(s) => is_template(s),
            Value::Array(items) => items.iter().any(any_template),
            Value::Object(map) => map.values().any(any_template),
            _ => false,
        }
    }
    match value {
        Value::String(s) if is_template(s) => {
            if let Err(e) = check_template(s) {
                fault(path, e);
            }
        }
        Value::Array(_) | Value::Object(_) if any_template(value) => {
            walk(value, &mut path.to_owned(), fault)
        }
        _ => {}
    }
}

/// Does any string in `value` hold a template?
pub fn has_templates(value: &Value) -> bool {
    match value {
        Value::String(s) => is_template(s),
        Value::Array(items) => items.iter().any(has_templates),
        Value::Object(map) => map.values().any(has_templates),
        _ => false,
    }
}

/// Renders every template string in `params`. A string that is a single `{{ expression }}`
/// keeps the expression's JSON type (a number stays a number, an object an object).
pub fn render(params: &Value, ctx: &Value) -> Result<Value, String> {
    if !has_templates(params) {
        return Ok(params.clone());
    }
    let json = ctx;
    let ctx = minijinja::Value::from(minijinja::value::Serde(ctx));
    render_value(params, &ctx, json)
}

fn render_value(value: &Value, ctx: &minijinja::Value, json: &Value) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) if is_template(s) => {
            let failed = |e: String| format!("template {s:?}: {e}");
            if let Some(expr) = sole_expression(s) {
                let compiled = env()
                    .compile_expression_owned(expr.to_owned())
                    .map_err(|e| failed(e.to_string()))?;
                let out = compiled
                    .eval(ctx.clone())
                    .map_err(|e| failed(explain(&e, expr, json)))?;
                // Strict undefined only errors when an undefined value is used; a sole
                // expression hands its value straight back, so look for one here.
                if holds_undefined(&out) {
                    return Err(failed(undefined_message(expr, json)));
                }
                serde_json::to_value(&out).map_err(|e| failed(e.to_string()))?
            } else {
                Value::String(
                    env()
                        .render_str(s, ctx.clone())
                        .map_err(|e| failed(explain(&e, &template_code(s), json)))?,
                )
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_value(v, ctx, json))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_value(v, ctx, json)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Evaluates a `when:` condition to true or false. An undefined value is an error here too, also
/// when the condition is nothing but a name (`when: "steps.a.output.ok"` with no `ok`).
pub fn eval_condition(expr: &str, ctx: &Value) -> Result<bool, String> {
    let compiled = env()
        .compile_expression_owned(expr.to_owned())
        .map_err(|e| e.to_string())?;
    let out = compiled
        .eval(minijinja::Value::from(minijinja::value::Serde(ctx)))
        .map_err(|e| explain(&e, expr, ctx))?;
    if holds_undefined(&out) {
        return Err(undefined_message(expr, ctx));
    }
    Ok(out.is_true())
}

/// The `inputs.<name>` names a `when:` expression reads (each name once, in order).
pub fn inputs_in_condition(expr: &str) -> Vec<String> {
    inputs_of(dotted_names(expr))
}

/// The `inputs.<name>` names the templates in `value` read, with the path of each string.
pub fn inputs_in_templates(value: &Value, path: &str, found: &mut dyn FnMut(&str, String)) {
    match value {
        Value::String(s) if is_template(s) => {
            for name in inputs_of(dotted_names(&template_code(s))) {
                found(path, name);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                inputs_in_templates(v, &format!("{path}[{i}]"), found);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                inputs_in_templates(v, &format!("{path}.{k}"), found);
            }
        }
        _ => {}
    }
}

fn inputs_of(names: Vec<Vec<&str>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for path in names {
        if let ["inputs", name, ..] = path.as_slice() {
            if !out.iter().any(|n| n == name) {
                out.push((*name).to_owned());
            }
        }
    }
    out
}

/// Is `value` undefined, or a list or map holding an undefined value?
fn holds_undefined(value: &minijinja::Value) -> bool {
    use minijinja::value::ValueKind;
    match value.kind() {
        ValueKind::Undefined => true,
        ValueKind::Seq | ValueKind::Map => value.try_iter().is_ok_and(|mut keys| {
            keys.any(|k| {
                let item = if value.kind() == ValueKind::Map {
                    value.get_item(&k).unwrap_or_default()
                } else {
                    k
                };
                holds_undefined(&item)
            })
        }),
        _ => false,
    }
}

/// A minijinja error as a message; an undefined-value error names the undefined name.
fn explain(error: &minijinja::Error, source: &str, ctx: &Value) -> String {
    if error.kind() == minijinja::ErrorKind::UndefinedError {
        undefined_message(source, ctx)
    } else {
        error.to_string()
    }
}

/// Names the first dotted name in `source` that `ctx` does not define, with the keys that are
/// there, so a typo in an output field reads as one.
fn undefined_message(source: &str, ctx: &Value) -> String {
    for path in dotted_names(source) {
        let mut at = ctx;
        for (i, segment) in path.iter().enumerate() {
            let next = match at {
                Value::Object(map) => map.get(*segment),
                Value::Array(items) => segment.parse::<usize>().ok().and_then(|n| items.get(n)),
                _ => None,
            };
            match next {
                Some(v) => at = v,
                None => {
                    let name = path[..=i].join(".");
                    return match (i, at) {
                        (0, _) => format!(
                            "`{name}` is undefined (defined: plan_id, query, metadata, inputs, steps)"
                        ),
                        (_, Value::Object(map)) if !map.is_empty() => {
                            let keys: Vec<&str> = map.keys().map(String::as_str).take(12).collect();
                            format!(
                                "`{name}` is undefined ({} has {})",
                                path[..i].join("."),
                                keys.join(", ")
                            )
                        }
                        _ => format!(
                            "`{name}` is undefined ({} is {})",
                            path[..i].join("."),
                            kind_of(at)
                        ),
                    };
                }
            }
        }
    }
    "undefined value".into()
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an empty mapping",
    }
}

/// The code inside a template's `{{ }}` and `{% %}` blocks, the text around them left out.
fn template_code(template: &str) -> String {
    let mut code = String::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{").into_iter().chain(rest.find("{%")).min() {
        let close = if rest[open..].starts_with("{{") {
            "}}"
        } else {
            "%}"
        };
        let body = &rest[open + 2..];
        let end = body.find(close).unwrap_or(body.len());
        code.push_str(&body[..end]);
        code.push(' ');
        rest = &body[(end + 2).min(body.len())..];
    }
    code
}

/// The dotted names (`steps.a.output.x`) an expression or template reads, skipping string
/// literals, keywords, filter and test names and function calls.
fn dotted_names(source: &str) -> Vec<Vec<&str>> {
    const KEYWORDS: &[&str] = &[
        "and", "or", "not", "in", "is", "if", "else", "true", "false", "none", "True", "False",
        "None", "for", "endfor", "endif", "elif", "set", "loop",
    ];
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut previous = "";
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' || c == b'\'' {
            let end = source[i + 1..]
                .find(c as char)
                .map_or(bytes.len(), |j| i + j + 2);
            i = end;
            previous = "";
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'.')
            {
                i += 1;
            }
            let name = source[start..i].trim_end_matches('.');
            let called = source[i..].trim_start().starts_with('(');
            let after_dot = start > 0 && bytes[start - 1] == b'.';
            let first = name.split('.').next().unwrap_or("");
            if !called
                && !after_dot
                && previous != "|"
                && previous != "is"
                && !KEYWORDS.contains(&first)
            {
                out.push(name.split('.').collect());
            }
            previous = if first == "is" || (first == "not" && previous == "is") {
                "is"
            } else {
                ""
            };
            continue;
        }
        if !c.is_ascii_whitespace() {
            previous = if c == b'|' { "|" } else { "" };
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bad_templates_are_reported_by_path_however_deep_and_plain_values_by_none() {
        let check = |value: Value| {
            let mut found = Vec::new();
            check_templates(&value, "params", &mut |path, _| found.push(path.to_owned()));
            found
        };
        assert!(
            check(json!({"n": 1, "q": "plain", "deep": {"k": [1, "x", {"y": null}]}})).is_empty()
        );
        assert!(
            check(json!({"q": "{{ inputs.topic }}"})).is_empty(),
            "a good template"
        );
        assert_eq!(
            check(json!({"a": 1, "deep": {"k": [1, "{{ nope", {"y": "{{ also"}]}, "q": "{{ bad"})),
            ["params.deep.k[1]", "params.deep.k[2].y", "params.q"]
        );
        assert_eq!(check(json!(["ok", "{{ x"])), ["params[1]"]);
        assert_eq!(check(json!("{{ x")), ["params"]);
    }

    #[test]
    fn a_sole_expression_keeps_its_type() {
        let ctx = json!({"query": "q", "steps": {"a": {"output": {"hits": 3, "list": [1, 2]}}}});
        let out = render(
            &json!({"n": "{{ steps.a.output.hits }}", "l": "{{ steps.a.output.list }}", "s": "find {{ query }}!"}),
            &ctx,
        )
        .unwrap();
        assert_eq!(out, json!({"n": 3, "l": [1, 2], "s": "find q!"}));
    }

    #[test]
    fn undefined_is_an_error() {
        let err = render(&json!("{{ steps.nope.output }}"), &json!({"steps": {}})).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
        assert!(eval_condition("steps.x.output > 1", &json!({"steps": {}})).is_err());
    }

    #[test]
    fn an_undefined_name_in_a_sole_expression_is_an_error_naming_it() {
        let ctx = json!({"query": "q", "steps": {"s1": {"output": {"hits": 3}}}});
        let err = render(&json!({"y": "{{ nope }}"}), &ctx).unwrap_err();
        assert!(err.contains("`nope` is undefined"), "{err}");
        let err = render(&json!({"y": "{{ steps.s1.output.nope }}"}), &ctx).unwrap_err();
        assert!(
            err.contains("`steps.s1.output.nope` is undefined (steps.s1.output has hits)"),
            "{err}"
        );
        let err = render(&json!("n={{ steps.s1.output.nope }}"), &ctx).unwrap_err();
        assert!(err.contains("`steps.s1.output.nope` is undefined"), "{err}");
        let err = render(&json!("{{ [query, nope] }}"), &ctx).unwrap_err();
        assert!(err.contains("`nope` is undefined"), "{err}");
        let err = render(&json!("{{ {'a': steps.s1.output.nope} }}"), &ctx).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
        // What is defined still renders, and an explicit default is not an error.
        assert_eq!(
            render(&json!("{{ steps.s1.output.nope | default(0) }}"), &ctx).unwrap(),
            json!(0)
        );
        assert_eq!(
            render(&json!("{{ steps.s1.output.hits is defined }}"), &ctx).unwrap(),
            json!(true)
        );
    }

    #[test]
    fn an_undefined_name_in_a_condition_is_an_error_naming_it() {
        let ctx = json!({"steps": {"a": {"output": {"hits": 1}}}});
        let err = eval_condition("steps.a.output.ok", &ctx).unwrap_err();
        assert!(err.contains("`steps.a.output.ok` is undefined"), "{err}");
        let err = eval_condition("nope", &ctx).unwrap_err();
        assert!(err.contains("`nope` is undefined"), "{err}");
        let err = eval_condition("steps.a.output.hitz > 0", &ctx).unwrap_err();
        assert!(err.contains("`steps.a.output.hitz` is undefined"), "{err}");
        assert!(!eval_condition("steps.a.output.ok is defined", &ctx).unwrap());
        assert!(eval_condition("steps.a.output.hits | default(0) > 0", &ctx).unwrap());
    }

    #[test]
    fn conditions_are_truthy() {
        let ctx = json!({"steps": {"a": {"output": {"hits": 0}}}});
        assert!(!eval_condition("steps.a.output.hits > 0", &ctx).unwrap());
        assert!(eval_condition("steps.a.output.hits == 0", &ctx).unwrap());
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let err = render(
            &json!(
                "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
            ),
            &json!({}),
        )
        .unwrap_err();
        assert!(err.contains("fuel"), "{err}");
    }
}
