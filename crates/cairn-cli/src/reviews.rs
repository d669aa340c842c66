//! `cairn reviews list|approve|reject`: the review inbox of quality gates, on a local store or
//! a server, through the same [`Operator`] as the other commands. A decision is an
//! `approve_step` or `reject_step` intervention on the step's plan, recorded in its audit trail
//! like any other; a refused one (a stale attempt, a closed review, a second vote, a user who
//! may not decide) exits 2 with the reason.

use cairn_core::view::Page;
use cairn_core::{Review, ReviewState};
use cairn_engine::ReviewFilter;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::operator::{Access, Operator};
use crate::{exit, render, DbArgs, Fail};

#[derive(Subcommand, Debug)]
pub enum ReviewsCmd {
    /// Reviews across plans, oldest opened first: what each step's gate held and why.
    List {
        #[command(flatten)]
        db: DbArgs,
        /// Only open or only closed reviews (default: both).
        #[arg(long, value_parser = ["open", "closed"])]
        state: Option<String>,
        /// Only the reviews of this plan.
        #[arg(long = "plan", value_name = "PLAN_ID")]
        plan_id: Option<String>,
        /// Reviews per page (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue a listing from the cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Approve the attempt under review: the step completes with its output (never run again),
    /// or with --output in its place (a --reason is then required). With a quorum, each
    /// approval is a vote of its user.
    Approve {
        plan_id: String,
        step_id: String,
        /// The attempt you reviewed; refused if another one is under review now.
        #[arg(long)]
        attempt: Option<u32>,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: Option<String>,
        /// Replace the attempt's output: any JSON value, or @FILE.
        #[arg(long)]
        output: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Reject the attempt under review: the step fails, or with --retry runs again with your
    /// --reason in its task's gate_feedback.
    Reject {
        plan_id: String,
        step_id: String,
        /// The attempt you reviewed; refused if another one is under review now.
        #[arg(long)]
        attempt: Option<u32>,
        /// Why (required; the agent sees it with --retry).
        #[arg(long)]
        reason: String,
        /// Run the step again instead of failing it.
        #[arg(long)]
        retry: bool,
        #[command(flatten)]
        db: DbArgs,
    },
}

impl ReviewsCmd {
    fn db(&self) -> &DbArgs {
        match self {
            ReviewsCmd::List { db, .. }
            | ReviewsCmd::Approve { db, .. }
            | ReviewsCmd::Reject { db, .. } => db,
        }
    }
}

impl Operator {
    /// The review inbox (see `Engine::reviews` and `GET /v1/reviews`).
    pub async fn reviews(
        &self,
        filter: &ReviewFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<Review>, Fail> {
        match self {
            Operator::Local { engine, .. } => engine
                .reviews(filter, limit, cursor)
                .await
                .map_err(crate::operator::cursor_fail),
            Operator::Remote(c) => Ok(c
                .reviews(
                    filter.state.map(ReviewState::as_str),
                    filter.plan_id.as_deref(),
                    Some(limit),
                    cursor,
                )
                .await?),
        }
    }
}

pub async fn run(cmd: ReviewsCmd) -> Result<u8, Fail> {
    let access = match &cmd {
        ReviewsCmd::List { .. } => Access::Read,
        _ => Access::Change,
    };
    // Arguments are checked before the store or the server is touched.
    let decision = match &cmd {
        ReviewsCmd::List { .. } => None,
        ReviewsCmd::Approve {
            plan_id,
            step_id,
            attempt,
            reason,
            output,
            ..
        } => {
            let mut body = json!({"type": "approve_step", "step_id": step_id});
            if let Some(a) = attempt {
                body["attempt"] = Value::from(*a);
            }
            if let Some(r) = reason {
                body["reason"] = Value::String(r.clone());
            }
            if let Some(o) = output {
                body["output"] = crate::ops::json_arg(o, "--output")?;
            }
            Some((plan_id.clone(), body))
        }
        ReviewsCmd::Reject {
            plan_id,
            step_id,
            attempt,
            reason,
            retry,
            ..
        } => {
            if reason.trim().is_empty() {
                return Err(Fail::input("--reason must say why the attempt is rejected"));
            }
            let mut body = json!({"type": "reject_step", "step_id": step_id, "reason": reason});
            if let Some(a) = attempt {
                body["attempt"] = Value::from(*a);
            }
            if *retry {
                body["retry"] = Value::Bool(true);
            }
            Some((plan_id.clone(), body))
        }
    };
    let db = cmd.db().clone();
    let op = Operator::open(&db, access).await?;
    if let ReviewsCmd::List {
        state,
        plan_id,
        limit,
        cursor,
        ..
    } = cmd
    {
        let filter = ReviewFilter {
            state: state.as_deref().and_then(ReviewState::parse),
            plan_id,
        };
        let page = op
            .reviews(&filter, crate::ops::limit(limit)?, cursor.as_deref())
            .await?;
        if db.json {
            render::json(&page);
        } else {
            render::out(&render::reviews(&page));
        }
        return Ok(exit::OK);
    }
    let Some((plan_id, body)) = decision else {
        return Ok(exit::OK);
    };
    match op.intervene(&plan_id, body).await? {
        Ok(record) => {
            if db.json {
                render::json(&record);
            } else {
                render::out(&render::intervention(&record));
            }
            // On a local store nothing drives the plan: say how to go on once it runs again.
            if op.is_local() && !db.json {
                let view = op.plan(&plan_id).await?;
                if view.state == cairn_core::PlanStatus::Running {
                    crate::ops::drive_hint(&op, &db, &view);
                }
            }
            Ok(exit::OK)
        }
        Err(refused) => {
            if db.json {
                if let Some(i) = &refused.record {
                    render::json(i);
                }
            }
            Err(Fail::input(format!("refused: {}", refused.message)))
        }
    }
}
