//! What deciding an intervention costs: `add_step` and `skip_step` on a paused plan of 150
//! steps (400 of each) and of 9,000 steps (20 of each), each on a fresh copy of the plan.
//! Prints the mean wall time of each; for figures that do not depend on the machine's load,
//! count instructions instead:
//!
//! ```text
//! cargo build --release -p cairn-core --example intervene
//! valgrind --tool=callgrind target/release/examples/intervene    # then `decide::intervene`, inclusive
//! ```

use std::time::Instant;

use cairn_core::decide::{self, Command, Ctx};
use cairn_core::{Format, InterventionRequest, PauseMode, Plan, PlanState, Timestamp};
use serde_json::json;

fn main() {
    let now = Timestamp::from_micros(1_000_000);
    let ctx = || Ctx {
        now,
        actor: "bench",
    };
    for size in [150usize, 9_000] {
        let mut yaml = String::from("max_parallel: 8\nsteps:\n");
        for j in 0..size {
            yaml += &format!(
                "  - {{step_id: s{j}, action: bench, agent_type: builtin.sleep, params: {{ms: 200}}}}\n"
            );
        }
        let definition = Plan::parse(&yaml, Format::Yaml).expect("the plan is valid");
        let mut plan = PlanState::empty("p");
        let setup = [
            Command::Register {
                definition,
                origin: None,
            },
            Command::Start { reason: None },
            Command::Pause {
                mode: PauseMode::Boundary,
                resume_at: None,
                reason: None,
            },
        ];
        for command in setup {
            decide::handle(&mut plan, command, ctx()).expect("the set-up is accepted");
        }
        let rounds: u32 = if size > 1_000 { 20 } else { 400 };
        for kind in ["add_step", "skip_step"] {
            let mut spent = std::time::Duration::ZERO;
            for k in 0..rounds {
                let body = if kind == "add_step" {
                    json!({"type": kind, "step": {"step_id": format!("extra-{k}"), "action": "bench", "agent_type": "builtin.echo"}})
                } else {
                    json!({"type": kind, "step_id": format!("s{}", size - 1 - k as usize % 100)})
                };
                let request = InterventionRequest::from_body(body).expect("a valid request");
                let mut copy = plan.clone();
                let started = Instant::now();
                let decision = decide::handle(&mut copy, Command::Intervene(request), ctx());
                spent += started.elapsed();
                let decision = decision.expect("the intervention is accepted");
                assert!(decision.refusal.is_none(), "{kind} was refused");
            }
            println!(
                "{size} steps, {kind}: {:.1} µs",
                spent.as_secs_f64() / f64::from(rounds) * 1e6
            );
        }
    }
}
