//! The review inbox: keeping the store's review index in step with the plans' states, and
//! reading it back ([`Engine::reviews`]).
//!
//! The core keeps every review of a plan in its state (`PlanState.reviews`). The index across
//! plans is written by the store in the same transaction as the events that changed a review:
//! before a batch of commands the actor takes a [`Fingerprint`] of the plan's reviews (their
//! states and vote counts: the only things that change once a review is open), and after it
//! hands the store the rows of the reviews that are new or differ. A plan with no review pays
//! for an empty vector.

use cairn_core::review::{Review, ReviewState};
use cairn_core::state::PlanState;
use cairn_store::ReviewRow;

use crate::{Engine, EngineError, Page};

/// What can change in a review once it is open: whether it still is, and how many voted.
pub(crate) type Fingerprint = Vec<(ReviewState, usize)>;

pub(crate) fn fingerprint(state: &PlanState) -> Fingerprint {
    state
        .reviews
        .iter()
        .map(|r| (r.state, r.votes.len()))
        .collect()
}

/// The index rows of the reviews that are new since `before` or changed.
pub(crate) fn changed(state: &PlanState, before: &Fingerprint) -> Vec<ReviewRow> {
    state
        .reviews
        .iter()
        .enumerate()
        .filter(|(i, r)| before.get(*i) != Some(&(r.state, r.votes.len())))
        .map(|(_, r)| row(&state.plan_id, r))
        .collect()
}

/// The index rows of every review of a plan (a plan being created).
pub(crate) fn all(state: &PlanState) -> Vec<ReviewRow> {
    state
        .reviews
        .iter()
        .map(|r| row(&state.plan_id, r))
        .collect()
}

fn row(plan_id: &str, r: &Review) -> ReviewRow {
    ReviewRow {
        plan_id: plan_id.to_owned(),
        review_id: r.review_id.clone(),
        state: r.state.as_str().to_owned(),
        opened_at: r.opened_at.as_micros(),
        // A review is plain data (strings, numbers, JSON values): serialising it cannot fail.
        data: serde_json::to_string(r).unwrap_or_default(),
    }
}

/// Which reviews [`Engine::reviews`] lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewFilter {
    /// Only open (or only closed) reviews; `None`: both.
    pub state: Option<ReviewState>,
    /// Only the reviews of this plan.
    pub plan_id: Option<String>,
}

impl Engine {
    /// The review inbox: reviews across every plan, oldest opened first, `limit` at a time
    /// (`cursor`: the `next_cursor` of the previous page). Each review carries its plan, step
    /// and attempt, the scores and failed criteria that held it, the output waiting on it, the
    /// votes so far, its deadline and state. Decide one with [`Engine::intervene`] and an
    /// `approve_step` or `reject_step` intervention.
    ///
    /// Reads the store's review index, never the plans themselves, so a page costs one query.
    pub async fn reviews(
        &self,
        filter: &ReviewFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<Review>, EngineError> {
        let page = self
            .store()
            .list_reviews(
                filter.state.map(ReviewState::as_str),
                filter.plan_id.as_deref(),
                limit,
                cursor,
            )
            .await?;
        let items = page
            .items
            .into_iter()
            .map(|row| {
                serde_json::from_str::<Review>(&row.data).map_err(|e| {
                    EngineError::Corrupt(format!(
                        "review {} of plan {} in the index: {e}",
                        row.review_id, row.plan_id
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            items,
            next_cursor: page.next_cursor,
        })
    }
}
