//! `{{ }}` templates in step params and `when:` conditions, both evaluated by minijinja with
//! strict undefined (a typo is an error, not an empty string) and a fuel limit (a hostile
//! expression cannot spin forever).
//!
//! The context a step sees: `plan_id`, `query`, `metadata`, and `steps.<id>.{status,output}` of
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
    match value {
        Value::String(s) if is_template(s) => {
            if let Err(e) = check_template(s) {
                fault(path, e);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_templates(v, &format!("{path}[{i}]"), fault);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                check_templates(v, &format!("{path}.{k}"), fault);
            }
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
    let ctx = minijinja::Value::from(minijinja::value::Serde(ctx));
    render_value(params, &ctx)
}

fn render_value(value: &Value, ctx: &minijinja::Value) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) if is_template(s) => {
            if let Some(expr) = sole_expression(s) {
                let compiled = env()
                    .compile_expression_owned(expr.to_owned())
                    .map_err(|e| format!("template {s:?}: {e}"))?;
                let out = compiled
                    .eval(ctx.clone())
                    .map_err(|e| format!("template {s:?}: {e}"))?;
                serde_json::to_value(&out).map_err(|e| format!("template {s:?}: {e}"))?
            } else {
                Value::String(
                    env()
                        .render_str(s, ctx.clone())
                        .map_err(|e| format!("template {s:?}: {e}"))?,
                )
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_value(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_value(v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Evaluates a `when:` condition to true or false.
pub fn eval_condition(expr: &str, ctx: &Value) -> Result<bool, String> {
    let compiled = env()
        .compile_expression_owned(expr.to_owned())
        .map_err(|e| e.to_string())?;
    let out = compiled
        .eval(minijinja::Value::from(minijinja::value::Serde(ctx)))
        .map_err(|e| e.to_string())?;
    Ok(out.is_true())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
