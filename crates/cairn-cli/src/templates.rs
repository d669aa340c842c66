//! `cairn templates push|list|show|diff|run|delete`: versioned plan templates, on a local store or a
//! server, through the same [`Operator`] as the other commands.
//!
//! `run` reads `--input name=value` by the template's parameter schema: a value of an input
//! declared `"type": "string"` is taken as it is; any other is read as JSON when it parses
//! (`depth=3` is the number 3, `deep=true` the boolean) and as a string otherwise.

use std::fmt::Write as _;
use std::path::PathBuf;

use cairn_core::template::{Pushed, TemplateDetail, TemplateDiff, TemplateVersion};
use cairn_core::view::{Page, PlanView};
use cairn_core::{Format, Template};
use cairn_engine::{Instantiate, TemplateError};
use clap::Subcommand;
use serde_json::{Map, Value};

use crate::operator::{Access, Operator};
use crate::{exit, render, DbArgs, Fail};

#[derive(Subcommand, Debug)]
pub enum TemplatesCmd {
    /// Push a template file (JSON or YAML): a new version, or none when it is the same as the
    /// latest.
    Push {
        file: PathBuf,
        #[command(flatten)]
        db: DbArgs,
    },
    /// The latest version of each template, by name.
    List {
        #[command(flatten)]
        db: DbArgs,
        /// Templates per page (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue a listing from the cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// A template's latest version (or --version V) and its versions.
    Show {
        name: String,
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Make a plan of a template and start it (unless --no-start).
    Run {
        name: String,
        /// An input, `name=value` (repeatable; overrides --inputs).
        #[arg(long = "input", value_name = "NAME=VALUE")]
        input: Vec<String>,
        /// All inputs as a JSON object, or @FILE holding one.
        #[arg(long)]
        inputs: Option<String>,
        /// The version to use (default: the latest).
        #[arg(long)]
        version: Option<u64>,
        /// The new plan's id (default: a fresh one).
        #[arg(long = "plan-id")]
        plan_id: Option<String>,
        /// Register the plan without starting it.
        #[arg(long)]
        no_start: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// What changed in a template between two versions: + added, - removed, ~ changed
    /// (before → after), ↕ moved, and its parameters.
    Diff {
        name: String,
        /// The version to compare from (default: the one before --to).
        #[arg(long, value_name = "V")]
        from: Option<u64>,
        /// The version to compare to (default: the latest).
        #[arg(long, value_name = "V")]
        to: Option<u64>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Delete a template (admin over --server): no new plans are made of it; its versions are
    /// kept.
    Delete {
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

impl From<TemplateError> for Fail {
    fn from(e: TemplateError) -> Self {
        match e {
            TemplateError::InvalidTemplate(invalid) => faults("not a valid template:", &invalid),
            TemplateError::InvalidInputs(invalid) => faults("the inputs do not fit:", &invalid),
            TemplateError::Engine(e) => e.into(),
            other => Fail::input(other.to_string()),
        }
    }
}

fn faults(head: &str, invalid: &cairn_core::Invalid) -> Fail {
    let mut msg = head.to_owned();
    for f in &invalid.faults {
        let _ = write!(msg, "\n  - {f}");
    }
    Fail::input(msg)
}

impl Operator {
    async fn push_template(&self, template: Template) -> Result<Pushed, Fail> {
        match self {
            Operator::Local { engine, user } => Ok(engine.store_template(template, user).await?),
            Operator::Remote(c) => Ok(c
                .push_template(&serde_json::to_value(&template).unwrap_or(Value::Null))
                .await?),
        }
    }

    async fn templates(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<TemplateVersion>, Fail> {
        match self {
            Operator::Local { engine, .. } => Ok(engine.templates(limit, cursor).await?),
            Operator::Remote(c) => Ok(c.list_templates(Some(limit), cursor).await?),
        }
    }

    async fn template(&self, name: &str) -> Result<TemplateDetail, Fail> {
        match self {
            Operator::Local { engine, .. } => Ok(engine.template(name).await?),
            Operator::Remote(c) => Ok(c.template(name).await?),
        }
    }

    async fn template_version(&self, name: &str, version: u64) -> Result<TemplateVersion, Fail> {
        match self {
            Operator::Local { engine, .. } => {
                Ok(engine.template_version(name, Some(version)).await?)
            }
            Operator::Remote(c) => Ok(c.template_version(name, version).await?),
        }
    }

    async fn instantiate(&self, name: &str, req: Instantiate) -> Result<PlanView, Fail> {
        match self {
            Operator::Local { engine, user } => {
                let state = engine.instantiate(name, req, user).await?;
                Ok(PlanView::of(&state))
            }
            Operator::Remote(c) => Ok(c
                .instantiate_template(
                    name,
                    &req.inputs,
                    req.version,
                    req.plan_id.as_deref(),
                    req.start != Some(false),
                )
                .await?),
        }
    }

    async fn template_diff(
        &self,
        name: &str,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<TemplateDiff, Fail> {
        match self {
            Operator::Local { engine, .. } => Ok(engine.template_diff(name, from, to).await?),
            Operator::Remote(c) => Ok(c.template_diff(name, from, to).await?),
        }
    }

    async fn delete_template(&self, name: &str) -> Result<(), Fail> {
        match self {
            Operator::Local { engine, .. } => Ok(engine.delete_template(name).await?),
            Operator::Remote(c) => Ok(c.delete_template(name).await?),
        }
    }
}

/// Reads and checks a template file.
fn read_template(path: &std::path::Path) -> Result<Template, Fail> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fail::input(format!("cannot read {}: {e}", path.display())))?;
    let name = path.to_string_lossy();
    Template::parse(&text, Format::guess(&name, &text)).map_err(|invalid| {
        faults(
            &format!("{} is not a valid template:", path.display()),
            &invalid,
        )
    })
}

/// The inputs of `run`: `--inputs` first, then each `--input` over it, each value read by the
/// type its parameter declares.
fn read_inputs(
    template: &TemplateVersion,
    inputs: Option<&str>,
    pairs: &[String],
) -> Result<Value, Fail> {
    let mut out = match inputs {
        None => Map::new(),
        Some(text) => match crate::ops::json_arg(text, "--inputs")? {
            Value::Object(m) => m,
            _ => {
                return Err(Fail::input(
                    "--inputs must be a JSON object of input names to values",
                ))
            }
        },
    };
    let props = template
        .parameters
        .get("properties")
        .and_then(Value::as_object);
    for pair in pairs {
        let Some((name, raw)) = pair.split_once('=') else {
            return Err(Fail::input(format!("--input {pair:?} must be NAME=VALUE")));
        };
        let declared = props.and_then(|p| p.get(name));
        let is_string = declared
            .and_then(|s| s.get("type"))
            .is_some_and(|t| t == "string");
        let value = if is_string {
            Value::String(raw.to_owned())
        } else {
            serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
        };
        out.insert(name.to_owned(), value);
    }
    Ok(Value::Object(out))
}

pub async fn run(cmd: TemplatesCmd) -> Result<u8, Fail> {
    match cmd {
        TemplatesCmd::Push { file, db } => {
            // The file is checked before the store or the server is touched.
            let template = read_template(&file)?;
            let op = Operator::open(&db, Access::Create).await?;
            let pushed = op.push_template(template).await?;
            if db.json {
                render::json(&pushed);
            } else if pushed.created {
                println!(
                    "pushed {} version {}",
                    pushed.version.name, pushed.version.version
                );
            } else {
                println!(
                    "{} version {} is the same; no new version",
                    pushed.version.name, pushed.version.version
                );
            }
            Ok(exit::OK)
        }
        TemplatesCmd::List { db, limit, cursor } => {
            let limit = crate::ops::limit(limit)?;
            let op = Operator::open(&db, Access::Read).await?;
            let page = op.templates(limit, cursor.as_deref()).await?;
            if db.json {
                render::json(&page);
            } else {
                render::out(&list_text(&page));
            }
            Ok(exit::OK)
        }
        TemplatesCmd::Show { name, version, db } => {
            let op = Operator::open(&db, Access::Read).await?;
            let detail = op.template(&name).await?;
            let shown = match version {
                Some(v) => op.template_version(&name, v).await?,
                None => detail.latest.clone(),
            };
            if db.json {
                match version {
                    Some(_) => render::json(&shown),
                    None => render::json(&detail),
                }
            } else {
                render::out(&show_text(&shown, &detail));
            }
            Ok(exit::OK)
        }
        TemplatesCmd::Run {
            name,
            input,
            inputs,
            version,
            plan_id,
            no_start,
            db,
        } => {
            let op = Operator::open(&db, Access::Change).await?;
            let template = match version {
                Some(v) => op.template_version(&name, v).await?,
                None => op.template(&name).await?.latest,
            };
            let inputs = read_inputs(&template, inputs.as_deref(), &input)?;
            let view = op
                .instantiate(
                    &name,
                    Instantiate {
                        inputs,
                        version: Some(template.version),
                        plan_id,
                        start: Some(!no_start),
                    },
                )
                .await?;
            for w in &view.warnings {
                eprintln!("warning: {w}");
            }
            if db.json {
                render::json(&view);
            } else {
                render::out(&render::plan(&view));
                if !no_start {
                    crate::ops::drive_hint(&op, &db, &view);
                }
            }
            Ok(exit::OK)
        }
        TemplatesCmd::Diff { name, from, to, db } => {
            if from == Some(0) || to == Some(0) {
                return Err(Fail::input("versions count from 1"));
            }
            let op = Operator::open(&db, Access::Read).await?;
            let diff = op.template_diff(&name, from, to).await?;
            if db.json {
                render::json(&diff);
            } else {
                render::out(&format!(
                    "template {} version {} → {}\n{}",
                    diff.name, diff.from, diff.to, diff.diff
                ));
            }
            Ok(exit::OK)
        }
        TemplatesCmd::Delete { name, db } => {
            let op = Operator::open(&db, Access::Change).await?;
            op.delete_template(&name).await?;
            if !db.json {
                println!("deleted template {name} (its versions are kept)");
            }
            Ok(exit::OK)
        }
    }
}

fn list_text(page: &Page<TemplateVersion>) -> String {
    if page.items.is_empty() {
        return "no templates\n".into();
    }
    let mut out = format!(
        "{:<32} {:>7}  {:<21} DESCRIPTION\n",
        "NAME", "VERSION", "PUSHED"
    );
    for t in &page.items {
        let _ = writeln!(
            out,
            "{:<32} {:>7}  {:<21} {}",
            t.name,
            t.version,
            render::time(t.created_at),
            t.description.as_deref().unwrap_or("")
        );
    }
    if let Some(c) = &page.next_cursor {
        let _ = writeln!(out, "more: --cursor {c}");
    }
    out
}

fn show_text(t: &TemplateVersion, detail: &TemplateDetail) -> String {
    let mut out = format!("template {} version {}", t.name, t.version);
    if t.deleted_at.is_some() {
        out.push_str(" (deleted)");
    }
    out.push('\n');
    if let Some(d) = &t.description {
        let _ = writeln!(out, "  {d}");
    }
    let _ = writeln!(
        out,
        "pushed {} by {}",
        render::time(t.created_at),
        t.created_by
    );
    let required: Vec<&str> = t
        .parameters
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.push_str("inputs:\n");
    match t.parameters.get("properties").and_then(Value::as_object) {
        Some(props) if !props.is_empty() => {
            for (name, schema) in props {
                let kind = schema
                    .get("type")
                    .map(|k| k.to_string().trim_matches('"').to_owned())
                    .or_else(|| schema.get("enum").map(|e| format!("one of {e}")))
                    .unwrap_or_else(|| "any".into());
                let mut line = format!("  {name}: {kind}");
                if required.contains(&name.as_str()) {
                    line.push_str(", required");
                }
                if let Some(d) = schema.get("default") {
                    let _ = write!(line, ", default {d}");
                }
                if let Some(d) = schema.get("description").and_then(Value::as_str) {
                    let _ = write!(line, " ({d})");
                }
                let _ = writeln!(out, "{line}");
            }
        }
        _ => out.push_str("  (none)\n"),
    }
    let steps = t
        .plan
        .get("steps")
        .and_then(Value::as_array)
        .map(|s| {
            s.iter()
                .filter_map(|s| s.get("step_id").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let _ = writeln!(out, "steps: {steps}");
    let versions: Vec<String> = detail
        .versions
        .iter()
        .map(|v| format!("{} ({})", v.version, render::time(v.created_at)))
        .collect();
    let _ = writeln!(out, "versions: {}", versions.join(", "));
    out
}
