//! The live per-step display of `cairn run` on stderr: one line per step with a spinner while it
//! runs and a mark when it ends. Silent when stderr is not a terminal (logs and CI stay clean).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use cairn_core::{Event, EventKind, PlanState, StepStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    multi: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
    width: usize,
}

fn mark(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Pending => "·",
        StepStatus::Running => "▸",
        StepStatus::Completed => "✓",
        StepStatus::Failed => "✗",
        StepStatus::Skipped => "↷",
        StepStatus::AwaitingReview => "?",
        StepStatus::Cancelled => "⊘",
    }
}

impl Progress {
    pub fn new(state: &PlanState, quiet: bool) -> Progress {
        let live = !quiet && std::io::stderr().is_terminal();
        let mut p = Progress {
            multi: live.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            bars: HashMap::new(),
            width: state
                .steps
                .iter()
                .map(|s| s.def.step_id.len())
                .max()
                .unwrap_or(4)
                .min(40),
        };
        for s in &state.steps {
            p.add_bar(
                &s.def.step_id,
                &s.def.action,
                &s.def.agent_type,
                s.rec.status,
            );
        }
        p
    }

    fn add_bar(&mut self, step_id: &str, action: &str, agent: &str, status: StepStatus) {
        let Some(multi) = &self.multi else { return };
        let bar = multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("  {prefix} {spinner:.cyan} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(format!("{step_id:<w$}", w = self.width));
        bar.set_message(format!("{}  {action} ({agent})", mark(status)));
        if status == StepStatus::Running {
            bar.enable_steady_tick(Duration::from_millis(100));
        }
        self.bars.insert(step_id.to_owned(), bar);
    }

    fn set(&self, step_id: &str, text: String, running: bool) {
        if let Some(bar) = self.bars.get(step_id) {
            bar.set_message(text);
            if running {
                bar.enable_steady_tick(Duration::from_millis(100));
            } else {
                bar.disable_steady_tick();
                bar.tick();
            }
        }
    }

    pub fn on_event(&mut self, e: &Event, state: &PlanState) {
        if self.multi.is_none() {
            return;
        }
        let step_line = |id: &str| {
            state
                .step(id)
                .map(|s| (s.def.action.clone(), s.def.agent_type.clone()))
                .unwrap_or_default()
        };
        match &e.kind {
            EventKind::StepStarted {
                step_id, attempt, ..
            } => {
                let (action, agent) = step_line(step_id);
                let extra = if *attempt > 1 {
                    format!("  attempt {attempt}")
                } else {
                    String::new()
                };
                self.set(
                    step_id,
                    format!("{}  {action} ({agent}){extra}", mark(StepStatus::Running)),
                    true,
                );
            }
            EventKind::StepCompleted { step_id, .. } => {
                let (action, agent) = step_line(step_id);
                self.set(
                    step_id,
                    format!("{}  {action} ({agent})", mark(StepStatus::Completed)),
                    false,
                );
            }
            EventKind::StepFailed {
                step_id,
                error,
                retry_at,
                ..
            } => {
                let (action, agent) = step_line(step_id);
                let what = if retry_at.is_some() {
                    format!("↻  {action} ({agent})  will retry: {}", short(error))
                } else {
                    format!(
                        "{}  {action} ({agent})  {}",
                        mark(StepStatus::Failed),
                        short(error)
                    )
                };
                self.set(step_id, what, false);
            }
            EventKind::StepSkipped { step_id, reason } => {
                let (action, agent) = step_line(step_id);
                self.set(
                    step_id,
                    format!(
                        "{}  {action} ({agent})  skipped: {reason}",
                        mark(StepStatus::Skipped)
                    ),
                    false,
                );
            }
            EventKind::StepInterrupted { step_id, .. } => {
                let (action, agent) = step_line(step_id);
                self.set(
                    step_id,
                    format!(
                        "{}  {action} ({agent})  interrupted",
                        mark(StepStatus::Pending)
                    ),
                    false,
                );
            }
            EventKind::InterventionApplied { .. } | EventKind::CheckpointRestored { .. } => {
                for s in &state.steps {
                    if !self.bars.contains_key(&s.def.step_id) {
                        self.add_bar(
                            &s.def.step_id,
                            &s.def.action,
                            &s.def.agent_type,
                            s.rec.status,
                        );
                    }
                }
            }
            EventKind::PlanCancelled { .. } => {
                for s in &state.steps {
                    if s.rec.status == StepStatus::Cancelled {
                        self.set(
                            &s.def.step_id,
                            format!(
                                "{}  {} ({})  cancelled",
                                mark(StepStatus::Cancelled),
                                s.def.action,
                                s.def.agent_type
                            ),
                            false,
                        );
                    }
                }
            }
            _ => {}
        }
    }

    /// Prints a line above the bars (or plainly when there are none).
    pub fn println(&self, line: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&mut self) {
        // Finished bars keep their last line on screen: the final picture of the plan.
        for bar in self.bars.values() {
            bar.finish();
        }
        self.multi = None;
    }
}

fn short(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > 80 {
        format!("{}…", line.chars().take(80).collect::<String>())
    } else {
        line.to_owned()
    }
}
