//! The live per-step display of `cairn run` on stderr: one row per step with a mark (a spinner
//! while it runs), its elapsed time and attempt. Silent when stderr is not a terminal (logs and
//! CI stay clean).
//!
//! What is shown is a pure function of the plan's state, the clock, the terminal's size and the
//! spinner frame ([`render`]), so it is tested without a terminal. [`Progress`] keeps its own copy
//! of the state (it applies the plan's events as they come) and redraws the whole block in place:
//! it moves the cursor back to the block's first line and clears to the end of the screen, so
//! whatever the terminal echoed below it (a `^C`) is wiped, never left as a stray copy. A plan
//! taller than the terminal keeps every step accounted for: the finished steps fold into one
//! summary row, and if that is not enough the pending steps that do not fit are named on a last
//! row, while running and failed steps always keep rows of their own.

use std::io::{IsTerminal, Write};

use cairn_core::{Event, Micros, PlanState, StepStatus};

/// The spinner's frames, one per tick.
const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// Rows the block may use at least, whatever the terminal says.
const MIN_ROWS: usize = 4;

pub struct Progress {
    live: bool,
    state: PlanState,
    /// Lines of the block on screen now (the cursor is on the line below them).
    drawn: usize,
    frame: usize,
}

/// The mark of a step that is not running (running steps show the spinner).
fn mark(status: StepStatus) -> char {
    match status {
        StepStatus::Pending => '·',
        StepStatus::Queued => '…',
        StepStatus::Running => '▸',
        StepStatus::Completed => '✓',
        StepStatus::Failed => '✗',
        StepStatus::Skipped => '↷',
        StepStatus::AwaitingReview => '?',
        StepStatus::Cancelled => '⊘',
    }
}

impl Progress {
    pub fn new(state: &PlanState, quiet: bool) -> Progress {
        Progress {
            live: !quiet && std::io::stderr().is_terminal(),
            state: state.clone(),
            drawn: 0,
            frame: 0,
        }
    }

    /// Whether anything is drawn (a terminal, not `--quiet`): only then is ticking worth it.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Follows one event of the plan. One that does not follow the known state (a gap after a
    /// lagging subscription) is left out until [`Progress::reset`] brings a fresh state.
    pub fn on_event(&mut self, e: &Event) {
        if e.seq != self.state.seq + 1 {
            return;
        }
        // Drawn at the next tick: a busy plan's events cost no terminal writes of their own.
        self.state.apply(e);
    }

    /// Takes a fresh copy of the state (after a refresh from the engine).
    pub fn reset(&mut self, state: &PlanState) {
        if state.seq >= self.state.seq {
            self.state = state.clone();
        }
    }

    /// Moves the spinners and the elapsed times on.
    pub fn tick(&mut self) {
        self.frame = self.frame.wrapping_add(1);
        self.draw();
    }

    /// Prints a line above the block (or plainly when there is none).
    pub fn println(&mut self, line: &str) {
        if !self.live {
            eprintln!("{line}");
            return;
        }
        let mut text = self.clear();
        text.push_str(line);
        text.push('\n');
        self.drawn = 0;
        write_stderr(&text);
        self.draw();
    }

    /// Draws the final picture of the plan and stops: the block stays on screen.
    pub fn finish(&mut self) {
        self.draw();
        self.live = false;
    }

    /// The escapes that move to the block's first line and erase it and everything below.
    fn clear(&self) -> String {
        if self.drawn == 0 {
            String::new()
        } else {
            format!("\x1b[{}A\r\x1b[J", self.drawn)
        }
    }

    fn draw(&mut self) {
        if !self.live {
            return;
        }
        let (rows, cols) = console::Term::stderr().size();
        let lines = render(
            &self.state,
            now_micros(),
            rows as usize,
            cols as usize,
            self.frame,
        );
        let mut text = self.clear();
        for line in &lines {
            text.push_str(line);
            text.push('\n');
        }
        self.drawn = lines.len();
        write_stderr(&text);
    }
}

fn write_stderr(text: &str) {
    let mut err = std::io::stderr().lock();
    // A display that cannot be written is no reason to stop the plan.
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

fn now_micros() -> Micros {
    cairn_engine::now()
}

/// The block for a terminal of `rows` × `cols`: at most `rows - 1` lines (the cursor keeps the
/// last one), none longer than `cols - 1` characters (so none wraps).
pub fn render(
    state: &PlanState,
    now: Micros,
    rows: usize,
    cols: usize,
    frame: usize,
) -> Vec<String> {
    let budget = rows.saturating_sub(1).max(MIN_ROWS);
    let width = state
        .steps
        .iter()
        .map(|s| s.def.step_id.chars().count())
        .max()
        .unwrap_or(4)
        .min(40);
    let row = |i: usize| step_row(state, i, now, width, frame);
    let all: Vec<usize> = (0..state.steps.len()).collect();
    let mut lines: Vec<String> = if all.len() <= budget {
        all.into_iter().map(row).collect()
    } else {
        let (done, rest): (Vec<usize>, Vec<usize>) = all
            .into_iter()
            .partition(|&i| state.steps[i].rec.status.satisfies());
        let mut lines = Vec::new();
        if !done.is_empty() {
            lines.push(done_summary(state, &done));
        }
        let room = budget - lines.len();
        if rest.len() <= room {
            lines.extend(rest.into_iter().map(row));
        } else {
            // One row names what does not fit; steps that are not waiting their turn (running,
            // failed, awaiting review) come first, then pending steps in plan order.
            let slots = room.saturating_sub(1);
            let (busy, waiting): (Vec<usize>, Vec<usize>) = rest
                .into_iter()
                .partition(|&i| state.steps[i].rec.status != StepStatus::Pending);
            let mut shown: Vec<usize> = busy.iter().copied().take(slots).collect();
            let left = slots - shown.len();
            shown.extend(waiting.iter().copied().take(left));
            shown.sort_unstable();
            let hidden: Vec<&str> = busy
                .iter()
                .chain(&waiting)
                .filter(|i| !shown.contains(i))
                .map(|&i| state.steps[i].def.step_id.as_str())
                .collect();
            lines.extend(shown.into_iter().map(row));
            lines.push(format!("  · {} more: {}", hidden.len(), hidden.join(", ")));
        }
        lines
    };
    let max = cols.saturating_sub(1).max(20);
    for line in &mut lines {
        if line.chars().count() > max {
            *line = format!("{}…", line.chars().take(max - 1).collect::<String>());
        }
    }
    lines
}

/// "✓ 12 steps done (11 completed, 1 skipped)".
fn done_summary(state: &PlanState, done: &[usize]) -> String {
    let skipped = done
        .iter()
        .filter(|&&i| state.steps[i].rec.status == StepStatus::Skipped)
        .count();
    let completed = done.len() - skipped;
    let mut line = format!(
        "  {} {} step{} done",
        mark(StepStatus::Completed),
        done.len(),
        if done.len() == 1 { "" } else { "s" }
    );
    if skipped > 0 {
        line.push_str(&format!(" ({completed} completed, {skipped} skipped)"));
    }
    line
}

/// One step: mark, id, action and agent, then elapsed time, attempt and what is worth knowing.
fn step_row(state: &PlanState, i: usize, now: Micros, width: usize, frame: usize) -> String {
    let s = &state.steps[i];
    let rec = &s.rec;
    let glyph = if rec.status == StepStatus::Running {
        SPINNER[frame % SPINNER.len()]
    } else if rec.status == StepStatus::Pending && rec.retry_at.is_some() {
        '↻'
    } else {
        mark(rec.status)
    };
    let id: String = s.def.step_id.chars().take(width).collect();
    let mut line = format!(
        "  {glyph} {id:<width$}  {} ({})",
        s.def.action, s.def.agent_type
    );
    if rec.attempts > 0 {
        let elapsed = match (rec.status, rec.started_at, rec.ended_at) {
            (StepStatus::Running, Some(start), _) => Some(now - start),
            (_, Some(start), Some(end)) if end >= start => Some(end - start),
            _ => None,
        };
        if let Some(e) = elapsed {
            line.push_str(&format!("  {}", duration(e)));
        }
        let max = s.def.retry_policy().max_attempts;
        if max > 1 {
            line.push_str(&format!("  attempt {}/{max}", rec.run_attempts.max(1)));
        } else {
            line.push_str(&format!("  attempt {}", rec.attempts));
        }
    }
    match rec.status {
        StepStatus::Pending => {
            if let Some(at) = rec.retry_at {
                line.push_str(&format!(
                    "  retry in {}: {}",
                    duration((at - now).max(0)),
                    short(rec.error.as_deref().unwrap_or(""))
                ));
            } else if rec.attempts > 0 {
                line.push_str("  interrupted");
            }
        }
        StepStatus::Failed | StepStatus::Skipped | StepStatus::Cancelled => {
            if let Some(e) = rec.error.as_deref() {
                line.push_str(&format!("  {}", short(e)));
            } else if rec.status == StepStatus::Cancelled {
                line.push_str("  cancelled");
            }
        }
        StepStatus::AwaitingReview => line.push_str("  awaiting review"),
        StepStatus::Queued => line.push_str(&format!(
            "  waiting for a worker of agent type {}",
            s.def.agent_type
        )),
        StepStatus::Running | StepStatus::Completed => {}
    }
    line
}

/// "0.4s", "12s", "3m05s", "2h10m".
fn duration(micros: i64) -> String {
    let ms = micros.max(0) / 1000;
    let secs = ms / 1000;
    if secs < 10 {
        format!("{}.{}s", secs, (ms % 1000) / 100)
    } else if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
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

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::{handle, Command, Ctx, Format, Plan, StepResult};

    const T0: Micros = Micros::from_micros(1_000_000_000_000);

    /// A plan of `n` steps, `s0`…, each depending on the one before when `chain` (else all
    /// independent), started at T0.
    fn started(n: usize, chain: bool) -> PlanState {
        let mut doc = String::from("plan_id: p\nmax_parallel: 3\nsteps:\n");
        for i in 0..n {
            // Without `depends_on` a step follows the one before it.
            let deps = if chain || i == 0 {
                String::new()
            } else {
                ", depends_on: []".to_owned()
            };
            doc.push_str(&format!(
                "  - {{step_id: s{i}, action: work, agent_type: builtin.echo, retry: {{max_attempts: 3}}{deps}}}\n"
            ));
        }
        let plan = Plan::parse(&doc, Format::Yaml).expect("plan");
        let mut state = PlanState::empty("p");
        let ctx = Ctx {
            now: T0,
            actor: "t",
        };
        handle(
            &mut state,
            Command::Register {
                definition: plan,
                origin: None,
            },
            ctx,
        )
        .expect("register");
        handle(&mut state, Command::Start { reason: None }, ctx).expect("start");
        state
    }

    fn complete(state: &mut PlanState, step: &str, at: Micros) {
        let attempt = state.step(step).expect("step").rec.attempts;
        handle(
            state,
            Command::Outcome {
                attempt: cairn_core::AttemptId::step(step, attempt),
                result: StepResult::Completed {
                    output: serde_json::Value::Null,
                    scores: None,
                },
            },
            Ctx {
                now: at,
                actor: "t",
            },
        )
        .expect("outcome");
    }

    fn spinners(line: &str) -> bool {
        line.chars().any(|c| SPINNER.contains(&c))
    }

    #[test]
    fn a_short_plan_has_one_row_per_step_with_spinners_only_on_running_steps() {
        let mut state = started(5, true);
        complete(&mut state, "s0", T0 + 1_500_000);
        let lines = render(&state, T0 + 4_000_000, 40, 120, 3);
        assert_eq!(lines.len(), 5, "{lines:#?}");
        assert!(
            lines[0].contains("✓ s0") && lines[0].contains("1.5s"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("attempt 1/3"), "{}", lines[0]);
        // s1 started when s0 completed, 2.5 s before `now`.
        assert!(
            spinners(&lines[1]) && lines[1].contains("2.5s"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("attempt 1/3"), "{}", lines[1]);
        for l in &lines[2..] {
            assert!(!spinners(l) && l.contains("· s"), "{l}");
            assert!(
                !l.contains("attempt"),
                "a step that never ran has no attempt: {l}"
            );
        }
        assert!(!spinners(&lines[0]));
    }

    #[test]
    fn a_plan_taller_than_the_terminal_folds_done_steps_into_a_summary_row() {
        let mut state = started(60, true);
        for i in 0..45 {
            complete(&mut state, &format!("s{i}"), T0 + (i as i64 + 1) * 1000);
        }
        let lines = render(&state, T0 + 60_000, 40, 100, 0);
        assert!(lines.len() <= 39, "{} lines", lines.len());
        assert_eq!(lines[0], "  ✓ 45 steps done");
        // The running step and every pending one have a row: 1 summary + 15 steps.
        assert_eq!(lines.len(), 16, "{lines:#?}");
        assert!(
            spinners(&lines[1]) && lines[1].contains("s45"),
            "{}",
            lines[1]
        );
        assert!(lines[15].contains("s59"), "{}", lines[15]);
    }

    #[test]
    fn steps_that_do_not_fit_are_named_and_running_ones_always_shown() {
        // 60 independent steps, 3 running (max_parallel), none done, in a 10-row terminal.
        let state = started(60, false);
        let lines = render(&state, T0 + 1000, 10, 400, 0);
        assert_eq!(lines.len(), 9, "{lines:#?}");
        let running: Vec<&String> = lines.iter().filter(|l| spinners(l)).collect();
        assert_eq!(running.len(), 3, "{lines:#?}");
        let last = lines.last().unwrap();
        assert!(last.starts_with("  · 52 more: "), "{last}");
        assert!(last.contains("s59"));
        // Every step is accounted for: a row of its own or a name on the last row.
        for i in 0..60 {
            let id = format!("s{i}");
            let own = lines[..8]
                .iter()
                .any(|l| l.split_whitespace().nth(1) == Some(id.as_str()));
            let named = last
                .trim_start_matches("  · 52 more: ")
                .split(", ")
                .any(|n| n.trim_end_matches('…') == id);
            assert!(own || named, "{id} is missing");
        }
    }

    #[test]
    fn no_line_is_wider_than_the_terminal() {
        let state = started(3, false);
        for cols in [30, 50, 80] {
            for l in render(&state, T0, 24, cols, 0) {
                assert!(l.chars().count() < cols, "{l:?} in {cols} columns");
            }
        }
    }

    #[test]
    fn redrawing_replaces_the_block_instead_of_adding_to_it() {
        let state = started(3, false);
        let mut p = Progress {
            live: false,
            state,
            drawn: 0,
            frame: 0,
        };
        assert_eq!(p.clear(), "");
        p.drawn = 3;
        // Back to the block's first line, then erase it and everything below (a `^C` included).
        assert_eq!(p.clear(), "\x1b[3A\r\x1b[J");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(400_000), "0.4s");
        assert_eq!(duration(12_300_000), "12s");
        assert_eq!(duration(185_000_000), "3m05s");
        assert_eq!(duration(7_800_000_000), "2h10m");
    }
}
