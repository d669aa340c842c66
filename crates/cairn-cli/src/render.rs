//! The one renderer of `cairn plans|steps|checkpoints …`: tables for people, and `--json` (the
//! typed value as the HTTP API writes it), the same whether the values came from a local store
//! or from a server.
//!
//! Times in tables are UTC, written `2026-12-01 21:14:29Z` (the trailing `Z` says UTC); JSON
//! carries RFC 3339 with microseconds. Durations read `850ms`, `12.3s`, `4m05s`, `2h07m`.

use std::fmt::Write as _;
use std::io::Write as _;

use cairn_core::versions::{PlanDiff, VersionList};
use cairn_core::view::{CheckpointSummary, Page, PlanSummary, PlanView};
use cairn_core::{Event, Intervention, Review, Timestamp};
use serde::Serialize;
use serde_json::Value;

/// Writes `text` to stdout. A closed stdout (`cairn … | head -1`) ends the output quietly
/// instead of panicking: nobody is left to read the rest.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// `value` as pretty JSON, the form `--json` prints.
pub fn json_text<T: Serialize>(value: &T) -> String {
    match serde_json::to_string_pretty(value) {
        Ok(text) => text + "\n",
        Err(e) => format!("{{\"error\": {:?}}}\n", e.to_string()),
    }
}

pub fn json<T: Serialize>(value: &T) {
    out(&json_text(value));
}

/// A time for a table: `2026-12-01 21:14:29Z` (UTC, to the second).
pub fn time(t: Timestamp) -> String {
    let full = t.to_string();
    match (full.get(..10), full.get(11..19)) {
        (Some(date), Some(clock)) if full.ends_with('Z') => format!("{date} {clock}Z"),
        _ => full,
    }
}

fn opt_time(t: Option<Timestamp>) -> String {
    t.map(time).unwrap_or_else(|| "-".into())
}

/// A duration in microseconds, short: `850ms`, `12.3s`, `4m05s`, `2h07m`.
pub fn duration(micros: i64) -> String {
    let micros = micros.max(0);
    let ms = micros / 1_000;
    let s = micros / 1_000_000;
    if ms < 1_000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{:.1}s", micros as f64 / 1e6)
    } else if s < 3_600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3_600, (s / 60) % 60)
    }
}

/// A serde enum's name (`awaiting_review`), for tables.
fn name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Drops the spaces that padding leaves at the ends of lines.
fn tidy(text: String) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn more(text: &mut String, next_cursor: &Option<String>) {
    if let Some(c) = next_cursor {
        let _ = writeln!(text, "more: --cursor {c}");
    }
}

/// A plan's state and its steps.
pub fn plan(view: &PlanView) -> String {
    let mut t = String::new();
    let reason = view
        .pause_reason
        .map(|r| format!(" ({})", name(&r)))
        .unwrap_or_default();
    let _ = writeln!(
        t,
        "plan {}  {}{}  version {}  step {}/{}",
        view.plan_id,
        view.state.as_str(),
        reason,
        view.version,
        view.current_step_index,
        view.total_steps
    );
    if !view.query.is_empty() {
        let _ = writeln!(t, "query: {}", view.query);
    }
    let _ = writeln!(
        t,
        "created {}  updated {}",
        time(view.created_at),
        time(view.updated_at)
    );
    if let Some(at) = view.resume_at {
        let _ = writeln!(t, "resumes by itself at {}", time(at));
    }
    if let Some(f) = &view.failure {
        let _ = writeln!(t, "failure: {f}");
    }
    let _ = writeln!(
        t,
        "{:<24} {:<16} {:<20} {:<15} {:>8}  {:<20} {:>9}  ERROR",
        "STEP", "ACTION", "AGENT", "STATUS", "ATTEMPTS", "STARTED", "DURATION"
    );
    for s in &view.steps {
        let took = match (s.started_at, s.ended_at) {
            (Some(a), Some(b)) => duration(b - a),
            _ => "-".into(),
        };
        let _ = writeln!(
            t,
            "{:<24} {:<16} {:<20} {:<15} {:>8}  {:<20} {:>9}  {}",
            s.step_id,
            s.action,
            s.agent_type,
            name(&s.status),
            s.attempts,
            opt_time(s.started_at),
            took,
            s.error.as_deref().unwrap_or("")
        );
    }
    rollback_progress(&mut t, view);
    tidy(t)
}

/// What a rollback runs (or would run): its compensations, numbered in order.
pub fn rollback(answer: &cairn_core::view::RollbackAnswer) -> String {
    let mut t = String::new();
    let n = answer.compensations.len();
    let what = if answer.dry_run { "would run" } else { "runs" };
    let _ = writeln!(
        t,
        "rollback of {} {what} {n} compensation{}{}",
        answer.plan.plan_id,
        if n == 1 { "" } else { "s" },
        if n == 0 { "" } else { ", in this order:" }
    );
    for (i, c) in answer.compensations.iter().enumerate() {
        let _ = writeln!(
            t,
            "{:>4}. {:<24} {} ({})",
            i + 1,
            c.step_id,
            c.action,
            c.agent_type
        );
    }
    tidy(t)
}

/// A plan's rollback: where it stands, and each compensation with its status.
fn rollback_progress(t: &mut String, view: &PlanView) {
    let Some(r) = &view.rollback else {
        return;
    };
    let then = match r.then {
        cairn_core::rollback::RollbackEnd::Failed => "failed",
        cairn_core::rollback::RollbackEnd::Cancelled => "cancelled",
    };
    let _ = writeln!(
        t,
        "rollback: {}  {} done, {} pending  (the plan ends {then})",
        name(&r.status),
        r.done.len(),
        r.pending.len()
    );
    let _ = writeln!(
        t,
        "{:<24} {:<16} {:>8}  ERROR",
        "COMPENSATION", "STATUS", "ATTEMPTS"
    );
    for id in r.done.iter().chain(&r.pending) {
        let Some(c) = view
            .steps
            .iter()
            .find(|s| &s.step_id == id)
            .and_then(|s| s.compensation.as_ref())
        else {
            continue;
        };
        let _ = writeln!(
            t,
            "{:<24} {:<16} {:>8}  {}",
            id,
            name(&c.status),
            c.attempts,
            c.error.as_deref().unwrap_or("")
        );
    }
}

/// Progress as `done/total`, done counting completed and skipped steps, plus what failed or
/// runs.
fn progress(p: &cairn_core::view::Progress) -> String {
    let mut text = format!("{}/{}", p.completed + p.skipped, p.total);
    if p.failed > 0 {
        let _ = write!(text, " {} failed", p.failed);
    }
    if p.running > 0 {
        let _ = write!(text, " {} running", p.running);
    }
    text
}

/// A page of plans.
pub fn plans(page: &Page<PlanSummary>) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<40} {:<10} {:<12} {:<20} {:<20}",
        "PLAN", "STATE", "PROGRESS", "CREATED", "UPDATED"
    );
    for p in &page.items {
        let _ = writeln!(
            t,
            "{:<40} {:<10} {:<12} {:<20} {:<20}",
            p.plan_id,
            p.state.as_str(),
            progress(&p.progress),
            time(p.created_at),
            time(p.updated_at)
        );
    }
    more(&mut t, &page.next_cursor);
    tidy(t)
}

/// One event as a line: seq, time, type, actor, data, and the checkpoint it carries.
pub fn event(e: &Event) -> String {
    let data = serde_json::to_value(&e.kind)
        .ok()
        .and_then(|v| v.get("data").cloned())
        .filter(|d| !d.as_object().is_some_and(|o| o.is_empty()))
        .map(|d| d.to_string())
        .unwrap_or_default();
    let line = format!(
        "{:>5}  {:<20}  {:<22} {:<12} {}",
        e.seq,
        time(e.at),
        e.kind.type_name(),
        e.actor,
        data
    );
    let mark = e
        .checkpoint_id()
        .map(|cp| format!("  [checkpoint {cp}]"))
        .unwrap_or_default();
    tidy(line + &mark)
}

/// A page of a plan's log.
pub fn events(page: &Page<Event>) -> String {
    let mut t = format!(
        "{:>5}  {:<20}  {:<22} {:<12} DATA\n",
        "SEQ", "TIME", "TYPE", "ACTOR"
    );
    for e in &page.items {
        t.push_str(&event(e));
    }
    more(&mut t, &page.next_cursor);
    tidy(t)
}

/// A page of checkpoints.
pub fn checkpoints(page: &Page<CheckpointSummary>) -> String {
    let mut t = format!(
        "{:<12} {:>6} {:<8} {:<20} LABEL\n",
        "CHECKPOINT", "SEQ", "TRIGGER", "CREATED"
    );
    for c in &page.items {
        let _ = writeln!(
            t,
            "{:<12} {:>6} {:<8} {:<20} {}",
            c.checkpoint_id,
            c.seq,
            c.trigger.as_str(),
            time(c.created_at),
            c.label.as_deref().unwrap_or("")
        );
    }
    more(&mut t, &page.next_cursor);
    tidy(t)
}

/// A checkpoint just taken.
pub fn checkpoint_created(c: &CheckpointSummary) -> String {
    format!(
        "checkpoint {} of plan {} at seq {}\n",
        c.checkpoint_id, c.plan_id, c.seq
    )
}

/// What an intervention record says happened.
fn outcome(i: &Intervention) -> &'static str {
    match (i.dry_run, name(&i.status).as_str()) {
        (true, "applied") => "would apply",
        (true, _) => "would fail",
        (false, "applied") => "applied",
        (false, _) => "failed",
    }
}

/// An intervention record with its diff.
pub fn intervention(i: &Intervention) -> String {
    let mut t = format!(
        "{}{}{}: {} (plan version {})\n",
        i.kind,
        i.step_id
            .as_deref()
            .map(|s| format!(" {s}"))
            .unwrap_or_default(),
        if i.dry_run { " (dry run)" } else { "" },
        outcome(i),
        i.plan_version
    );
    if let Some(e) = &i.error {
        let _ = writeln!(t, "  error: {e}");
    }
    for c in &i.diff {
        let _ = writeln!(t, "  {}: {} -> {}", c.path, c.before, c.after);
    }
    t
}

/// A page of a plan's interventions.
pub fn interventions(page: &Page<Intervention>) -> String {
    let mut t = format!(
        "{:<14} {:<20} {:<14} {:<20} {:<12} {:<8} REASON\n",
        "INTERVENTION", "CREATED", "TYPE", "STEP", "USER", "STATUS"
    );
    for i in &page.items {
        let why = match (&i.reason, &i.error) {
            (Some(r), Some(e)) => format!("{r} (refused: {e})"),
            (Some(r), None) => r.clone(),
            (None, Some(e)) => format!("(refused: {e})"),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            t,
            "{:<14} {:<20} {:<14} {:<20} {:<12} {:<8} {}",
            i.intervention_id,
            time(i.created_at),
            i.kind,
            i.step_id.as_deref().unwrap_or("-"),
            i.user,
            name(&i.status),
            why
        );
    }
    more(&mut t, &page.next_cursor);
    tidy(t)
}

/// A plan's versions: one line each, with what made it, who and when.
pub fn versions(list: &VersionList) -> String {
    let mut t = format!(
        "{:<8} {:<6} {:<20} {:<12} {:<14} DETAIL\n",
        "VERSION", "SEQ", "AT", "USER", "CAUSE"
    );
    for v in &list.versions {
        let c = &v.cause;
        let mut detail = Vec::new();
        if let Some(i) = &c.intervention_id {
            detail.push(i.clone());
        }
        if let Some(s) = &c.step_id {
            detail.push(format!("step {s}"));
        }
        if let Some(p) = &c.source_plan_id {
            detail.push(format!("from plan {p}"));
        }
        if let Some(cp) = &c.checkpoint_id {
            detail.push(cp.clone());
        }
        if let Some(r) = &c.reason {
            detail.push(format!("({r})"));
        }
        let _ = writeln!(
            t,
            "{:<8} {:<6} {:<20} {:<12} {:<14} {}",
            v.version,
            v.seq,
            time(v.at),
            v.user,
            c.kind,
            detail.join(" ")
        );
    }
    tidy(t)
}

/// A diff between two versions: a heading, then one line per change (`+` added, `-` removed,
/// `~` changed before → after, `↕` moved).
pub fn plan_diff(d: &PlanDiff) -> String {
    format!(
        "plan {} version {} → {}\n{}",
        d.plan_id, d.from, d.to, d.diff
    )
}

/// A page of reviews: one line each (plan, step, attempt, state or outcome, votes against the
/// quorum, deadline, why the gate held it), then each review's scores and output.
pub fn reviews(page: &Page<Review>) -> String {
    let mut t = format!(
        "{:<10} {:<24} {:<16} {:>7} {:<10} {:<6} {:<20} HELD BECAUSE\n",
        "REVIEW", "PLAN", "STEP", "ATTEMPT", "STATE", "VOTES", "OPENED"
    );
    for r in &page.items {
        let state = match r.outcome {
            Some(o) => o.as_str().to_owned(),
            None => r.state.as_str().to_owned(),
        };
        let why = if r.failed.is_empty() {
            "every result is reviewed".to_owned()
        } else {
            r.failed
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        };
        let _ = writeln!(
            t,
            "{:<10} {:<24} {:<16} {:>7} {:<10} {:<6} {:<20} {}",
            r.review_id,
            r.plan_id,
            r.step_id,
            r.attempt,
            state,
            format!("{}/{}", r.approvals(), r.quorum),
            time(r.opened_at),
            why
        );
    }
    for r in page.items.iter().filter(|r| r.is_open()) {
        let _ = writeln!(
            t,
            "\n{} {} {} (attempt {}):",
            r.review_id, r.plan_id, r.step_id, r.attempt
        );
        let _ = writeln!(
            t,
            "  scores: {}",
            serde_json::to_string(&r.scores).unwrap_or_default()
        );
        if let Some(d) = r.deadline {
            let _ = writeln!(t, "  deadline: {}", time(d));
        }
        for v in &r.votes {
            let _ = writeln!(
                t,
                "  vote: {} {} {}",
                v.user,
                name(&v.decision),
                v.reason.as_deref().unwrap_or("")
            );
        }
        let _ = writeln!(t, "  output: {}", short_json(&r.output, 400));
        let _ = writeln!(
            t,
            "  decide: cairn reviews approve {} {} --attempt {}   |   cairn reviews reject {} {} --attempt {} --reason WHY [--retry]",
            r.plan_id, r.step_id, r.attempt, r.plan_id, r.step_id, r.attempt
        );
    }
    more(&mut t, &page.next_cursor);
    tidy(t)
}

/// Compact JSON, cut at about `max` characters.
fn short_json(v: &Value, max: usize) -> String {
    let text = serde_json::to_string(v).unwrap_or_default();
    if text.chars().count() <= max {
        return text;
    }
    let cut: String = text.chars().take(max).collect();
    format!("{cut}… (--json shows all)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_to_the_second() {
        assert_eq!(
            time(Timestamp::from_micros(1_796_159_669_123_456)),
            "2026-12-01 21:14:29Z"
        );
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration(850_000), "850ms");
        assert_eq!(duration(12_345_000), "12.3s");
        assert_eq!(duration(245_000_000), "4m05s");
        assert_eq!(duration(7_620_000_000), "2h07m");
        assert_eq!(duration(-5), "0ms");
    }
}
